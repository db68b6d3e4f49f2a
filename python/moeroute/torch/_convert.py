"""Zero-copy conversion between CPU torch tensors and the NumPy storage arrays the core reads and
writes (float16 / bfloat16 travel as 16-bit integer views of the same memory)."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ..errors import DTypeError, ShapeError

_ACTIVATION_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
_HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def check_cpu(t: torch.Tensor, name: str) -> None:
    if not t.is_cpu:
        raise DTypeError(f"{name}: got a tensor on {t.device}, expected a CPU tensor")


def check_device(t: torch.Tensor, name: str) -> None:
    """CPU and CUDA tensors are supported."""
    if not (t.is_cpu or t.is_cuda):
        raise DTypeError(f"{name}: got a tensor on {t.device}, expected a CPU or CUDA tensor")


def check_same_device(t: torch.Tensor, name: str, other: torch.Tensor, other_name: str) -> None:
    if not (t.is_cpu and other.is_cpu) and t.device != other.device:  # (device objects are slow)
        raise DTypeError(f"{name}: got a tensor on {t.device}, expected the device of {other_name} ({other.device})")


def activation_name(t: torch.Tensor, name: str) -> str:
    """The dtype name of a float activation tensor (DTypeError otherwise)."""
    dtype_name = _ACTIVATION_DTYPES.get(t.dtype)
    if dtype_name is None:
        raise DTypeError(f"{name}: got dtype {t.dtype}, expected float32, float64, float16 or bfloat16")
    return dtype_name


def to_storage(t: torch.Tensor, name: str, ndim: int) -> Tuple[np.ndarray, str]:
    """(NumPy array sharing t's memory, dtype name) for a CPU float tensor; non-contiguous tensors
    are made contiguous first (the only copy)."""
    dtype_name = _ACTIVATION_DTYPES.get(t.dtype)
    if dtype_name is None or not t.is_cpu or t.dim() != ndim:  # (one test when valid)
        check_cpu(t, name)
        activation_name(t, name)
        raise ShapeError(f"{name}: got shape {list(t.shape)}, expected a {ndim}-D tensor")
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if dtype_name in _HALF_DTYPES:
        return t.view(torch.int16).numpy().view(np.uint16), dtype_name
    return t.numpy(), dtype_name


def index_array(t: torch.Tensor, name: str) -> np.ndarray:
    """A NumPy view of an int32 / int64 / float index or weight tensor of the plan."""
    if t.is_cpu and not t.requires_grad and t.is_contiguous():  # (a plan's own fields)
        return t.numpy()
    check_cpu(t, name)
    return t.detach().contiguous().numpy()


def from_storage(a: np.ndarray, dtype_name: str) -> torch.Tensor:
    """The tensor sharing memory with a core output array (an empty one: a new empty tensor,
    since NumPy gives empty arrays all-zero strides, which torch's grouped_mm rejects)."""
    half = _HALF_DTYPES.get(dtype_name)
    t = torch.from_numpy(a.view(np.int16)).view(half) if half is not None else torch.from_numpy(a)
    return t if a.size else t.new_empty(t.shape)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
