"""Zero-copy conversion between CPU torch tensors and the NumPy storage arrays the core reads and
writes (float16 / bfloat16 travel as 16-bit integer views of the same memory)."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from .._checks import ACTIVATION_DTYPES, HALF_DTYPES, accumulation_name, bad_activation_dtype, shape_error
from ..errors import DeviceError, DTypeError
from ..plan import PLAN_FIELDS, field_shapes

# The activation dtypes (moeroute._checks) as torch dtypes: name of each, and its accumulation dtype.
_ACTIVATION_DTYPES = {getattr(torch, name): name for name in ACTIVATION_DTYPES}
_HALF_DTYPES = {name: getattr(torch, name) for name in HALF_DTYPES}
_ACCUMULATION: Dict[torch.dtype, torch.dtype] = {dtype: getattr(torch, accumulation_name(name)) for dtype, name in _ACTIVATION_DTYPES.items()}


def check_cpu(t: torch.Tensor, name: str) -> None:
    if not t.is_cpu:
        raise DeviceError(f"{name}: got a tensor on {t.device}, expected a CPU tensor")


def check_device(t: torch.Tensor, name: str) -> None:
    """Dense tensors on the CPU or a CUDA device are supported."""
    if not (t.is_cpu or t.is_cuda):
        raise DeviceError(f"{name}: got a tensor on {t.device}, expected a CPU or CUDA tensor")
    if t.layout is not torch.strided:
        raise DTypeError(f"{name}: got a {t.layout} tensor, expected a dense (torch.strided) tensor")


def check_same_device(t: torch.Tensor, name: str, other: torch.Tensor, other_name: str) -> None:
    if not (t.is_cpu and other.is_cpu) and t.device != other.device:  # (device objects are slow)
        raise DeviceError(f"{name}: got a tensor on {t.device}, expected the device of {other_name} ({other.device})")


def activation_name(t: torch.Tensor, name: str) -> str:
    """The dtype name of a float activation tensor (DTypeError otherwise)."""
    dtype_name = _ACTIVATION_DTYPES.get(t.dtype)
    if dtype_name is None:
        raise bad_activation_dtype(name, t.dtype)
    return dtype_name


def check_activation(t: torch.Tensor, name: str, ndim: int = 2) -> None:
    """A float activation tensor of `ndim` dimensions on the CPU or a CUDA device."""
    check_device(t, name)
    activation_name(t, name)
    if t.dim() != ndim:
        raise shape_error(name, t.shape, ndim, "tensor")


def to_storage(t: torch.Tensor, name: str, ndim: int) -> Tuple[np.ndarray, str]:
    """(NumPy array sharing t's memory, dtype name) for a CPU float tensor; non-contiguous tensors
    are made contiguous first (the only copy)."""
    dtype_name = _ACTIVATION_DTYPES.get(t.dtype)
    if dtype_name is None or not t.is_cpu or t.dim() != ndim:  # (one test when valid)
        check_cpu(t, name)
        activation_name(t, name)
        raise shape_error(name, t.shape, ndim, "tensor")
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    try:
        if dtype_name in _HALF_DTYPES:
            return t.view(torch.int16).numpy().view(np.uint16), dtype_name
        return t.numpy(), dtype_name
    except RuntimeError:  # a lazily negated / conjugated view: NumPy needs its values materialised
        check_device(t, name)
        return to_storage(t.resolve_neg().resolve_conj(), name, ndim)


def index_array(t: torch.Tensor, name: str) -> np.ndarray:
    """A NumPy view of an int32 / int64 / float index or weight tensor of the plan."""
    if t.is_cpu and not t.requires_grad and t.is_contiguous() and t.layout is torch.strided:  # (a plan's own fields)
        try:
            return t.numpy()
        except RuntimeError:  # a lazily negated view
            pass
    check_cpu(t, name)
    if t.layout is not torch.strided:
        raise DTypeError(f"{name}: got a {t.layout} tensor, expected a dense (torch.strided) tensor")
    return t.detach().resolve_neg().resolve_conj().contiguous().numpy()


def from_storage(a: np.ndarray, dtype_name: str) -> torch.Tensor:
    """The tensor sharing memory with a core output array (an empty one: a new empty tensor,
    since NumPy gives empty arrays all-zero strides, which torch's grouped_mm rejects)."""
    half = _HALF_DTYPES.get(dtype_name)
    t = torch.from_numpy(a.view(np.int16)).view(half) if half is not None else torch.from_numpy(a)
    return t if a.size else t.new_empty(t.shape)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an activation dtype accumulates in (float64 for float64, float32 for the rest)."""
    return _ACCUMULATION.get(dtype, torch.float32)


def empty_plan(logits: torch.Tensor, slots: int, rows: int) -> Tuple[torch.Tensor, ...]:
    """Uninitialised tensors of a plan's fields (moeroute.plan.PLAN_FIELDS: dtypes and shapes) on
    the logits' device, each allocated on its own (also fake tensors, for torch.compile)."""
    t, e = logits.shape
    return _empty_fields(logits, t, e, slots, rows)


def empty_picks_plan(weights: torch.Tensor, num_experts: int, rows: int) -> Tuple[torch.Tensor, ...]:
    """The same for plan_from_topk's plan of (T, k) given weights over num_experts experts."""
    t, k = weights.shape
    return _empty_fields(weights, t, num_experts, k, rows)


def _empty_fields(like: torch.Tensor, t: int, e: int, slots: int, rows: int) -> Tuple[torch.Tensor, ...]:
    dtypes = plan_dtypes(like.dtype)
    shapes = field_shapes(t, e, slots, rows)
    return tuple(like.new_empty(shape, dtype=dtypes[f.kind]) for f, shape in zip(PLAN_FIELDS, shapes))


def plan_dtypes(logits_dtype: torch.dtype) -> Dict[str, torch.dtype]:
    """The torch dtype of each field kind of a plan routed from logits (or built from given
    weights) of this dtype."""
    return {"float": accumulation_dtype(logits_dtype), "int32": torch.int32, "int64": torch.int64}
