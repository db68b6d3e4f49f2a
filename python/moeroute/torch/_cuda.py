"""moeroute's ops on CUDA tensors: torch allocates every output and the scratch workspace on the
input's device, and the Rust core launches the kernels on torch's current stream (no host
synchronisation, so the ops can be captured in CUDA graphs)."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .. import _core
from .._checks import _CUDA_CHECKS
from . import _device_checks as checks
from ..options import PicksOptions, RouteOptions
from ..plan import FIELD_NAMES, PLAN_FIELDS, field_shapes
from ._convert import accumulation_dtype, activation_name, empty_picks_plan, empty_plan, plan_dtypes

Tensor = torch.Tensor


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream(t: Tensor) -> Tuple[int, int]:
    """(device index, handle of torch's current stream on that device)."""
    index = t.get_device()
    if _raw_stream is not None:  # the handle without building a torch.cuda.Stream object
        return index, _raw_stream(index)
    return index, torch.cuda.current_stream(index).cuda_stream


def _plan_outputs(logits: Tensor, slots: int, rows: int, workspace_bytes: int) -> Tuple[Tuple[Tensor, ...], Tensor]:
    """(the plan's tensors, the workspace), each allocated on its own."""
    return empty_plan(logits, slots, rows), torch.empty(workspace_bytes, dtype=torch.uint8, device=logits.device)


def _packed_plan_outputs(logits: Tensor, slots: int, rows: int, workspace_bytes: int) -> Tuple[Tuple[Tensor, ...], Tensor]:
    """The same as views of one allocation per field kind (float, int32 followed by the workspace,
    int64): each allocation costs the host about as much as a kernel launch. The fields share
    storage, so this is for eager calls only (custom ops must not return aliased outputs)."""
    t, e = logits.shape
    dtypes = plan_dtypes(logits.dtype)
    shapes = field_shapes(t, e, slots, rows)
    numels = [math.prod(shape) for shape in shapes]
    outputs: List[Optional[Tensor]] = [None] * len(PLAN_FIELDS)
    workspace = None
    for kind, dtype in dtypes.items():
        members = [i for i, f in enumerate(PLAN_FIELDS) if f.kind == kind]
        sizes = [numels[i] for i in members]
        used = sum(sizes)
        extra = 0
        if kind == "int32":  # the workspace follows, 256-byte aligned
            used = -(-used // 64) * 64
            extra = -(-workspace_bytes // 4)
        block = torch.empty(used + extra, dtype=dtype, device=logits.device)
        for i, part in zip(members, block[:sum(sizes)].split(sizes)):  # type: ignore[no-untyped-call]
            outputs[i] = part.view(shapes[i])
        if kind == "int32":
            workspace = block[used:]
    return tuple(outputs), workspace  # type: ignore[return-value, arg-type]


def route(logits: Tensor, options: RouteOptions, bias: Optional[Tensor],
          packed: bool = False) -> Tuple[Tuple[Tensor, ...], Optional[int]]:
    """(the plan's tensors, its capacity or None)."""
    logits = logits.detach().contiguous()
    dtype_name = activation_name(logits, "logits")
    t, e = logits.shape
    if _CUDA_CHECKS[0]:
        checks.logits(logits)
        checks.bias(bias)
    capacity, rows = _core.route_layout(t, e, options)
    allocate = _packed_plan_outputs if packed else _plan_outputs
    workspace_bytes = _core.cuda_route_workspace(dtype_name, t, e, options.k, options.num_groups)
    outputs, ws = allocate(logits, options.k, rows, workspace_bytes)
    bias_ptr = None
    if bias is not None:
        bias = bias.detach().to(device=logits.device, dtype=accumulation_dtype(logits.dtype)).contiguous()
        bias_ptr = bias.data_ptr()
    device, stream = _stream(logits)
    _core.cuda_route(device, stream, logits.data_ptr(), dtype_name, t, e, options, bias_ptr,
                     tuple(o.data_ptr() for o in outputs),  # type: ignore[arg-type]  # (8 of them)
                     ws.data_ptr(), ws.numel() * ws.element_size())
    return outputs, capacity


def expert_choice(logits: Tensor, capacity: Optional[int], capacity_factor: float) -> Tuple[Tensor, ...]:
    logits = logits.detach().contiguous()
    dtype_name = activation_name(logits, "logits")
    t, e = logits.shape
    if _CUDA_CHECKS[0]:
        checks.logits(logits)
    _, rows = _core.expert_choice_layout(t, e, capacity, capacity_factor)
    outputs, ws = _plan_outputs(logits, e, rows, _core.cuda_expert_choice_workspace(dtype_name, t, e))
    device, stream = _stream(logits)
    _core.cuda_expert_choice(device, stream, logits.data_ptr(), dtype_name, t, e, capacity, capacity_factor,
                             tuple(o.data_ptr() for o in outputs),  # type: ignore[arg-type]  # (8 of them)
                             ws.data_ptr(), ws.numel())
    return outputs


_PROBS = FIELD_NAMES.index("probs")


def plan_from_topk(expert_ids: Tensor, weights: Tensor, num_experts: int, options: PicksOptions) -> Tuple[Tensor, ...]:
    weights = weights.detach().contiguous()
    ids = expert_ids.detach().to(device=weights.device, dtype=torch.int64).contiguous()
    dtype_name = activation_name(weights, "weights")
    t, k = weights.shape
    _, rows = _core.plan_from_topk_layout(t, k, num_experts, options)
    outputs = empty_picks_plan(weights, num_experts, rows)
    outputs[_PROBS].zero_()  # (the import kernel adds the picks' weights into it)
    ws = torch.empty(_core.cuda_plan_from_topk_workspace(t, k, num_experts), dtype=torch.uint8, device=weights.device)
    device, stream = _stream(weights)
    _core.cuda_plan_from_topk(device, stream, ids.data_ptr(), weights.data_ptr(), dtype_name, t, k, num_experts, options,
                              tuple(o.data_ptr() for o in outputs),  # type: ignore[arg-type]  # (8 of them)
                              ws.data_ptr(), ws.numel())
    return outputs


def permute(x: Tensor, src: Tensor) -> Tensor:
    x, src = x.detach().contiguous(), src.contiguous()
    if _CUDA_CHECKS[0]:
        checks.src(src, x.shape[0])
    xp = torch.empty((src.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
    device, stream = _stream(x)
    _core.cuda_permute(device, stream, activation_name(x, "x"), x.data_ptr(), x.shape[0], x.shape[1],
                       src.data_ptr(), xp.data_ptr(), xp.shape[0])
    return xp


def combine(yp: Tensor, dest: Tensor, weights: Tensor) -> Tensor:
    """y[t] = Σ_s w[t,s] · yp[dest[t,s]]."""
    yp, dest = yp.detach().contiguous(), dest.contiguous()
    if _CUDA_CHECKS[0]:
        checks.dest(dest, yp.shape[0])
    w = weights.detach().to(accumulation_dtype(yp.dtype)).contiguous()
    y = torch.empty((dest.shape[0], yp.shape[1]), dtype=yp.dtype, device=yp.device)
    device, stream = _stream(yp)
    _core.cuda_combine(device, stream, activation_name(yp, "yp"), yp.data_ptr(), yp.shape[0], yp.shape[1],
                       dest.data_ptr(), dest.shape[1], w.data_ptr(), y.data_ptr(), y.shape[0])
    return y


def permute_backward(grad_xp: Tensor, dest: Tensor) -> Tensor:
    """grad_x[t] = Σ_s grad_xp[dest[t,s]]."""
    grad_xp, dest = grad_xp.detach().contiguous(), dest.contiguous()
    if _CUDA_CHECKS[0]:
        checks.dest(dest, grad_xp.shape[0])
    grad_x = torch.empty((dest.shape[0], grad_xp.shape[1]), dtype=grad_xp.dtype, device=grad_xp.device)
    device, stream = _stream(grad_xp)
    _core.cuda_permute_backward(device, stream, activation_name(grad_xp, "grad_xp"), grad_xp.data_ptr(),
                                grad_xp.shape[0], grad_xp.shape[1], dest.data_ptr(), dest.shape[1],
                                grad_x.data_ptr(), grad_x.shape[0])
    return grad_x


def combine_backward(grad_y: Tensor, yp: Tensor, dest: Tensor, src: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    yp, dest, src = yp.detach().contiguous(), dest.contiguous(), src.contiguous()
    if _CUDA_CHECKS[0]:
        checks.dest(dest, yp.shape[0])
        checks.src(src, grad_y.shape[0])
        checks.one_to_one(dest, src)
    grad_y = grad_y.detach().to(yp.dtype).contiguous()
    acc = accumulation_dtype(yp.dtype)
    w = weights.detach().to(acc).contiguous()
    grad_yp = torch.empty_like(yp)
    grad_w = torch.zeros(dest.shape, dtype=acc, device=yp.device)
    device, stream = _stream(yp)
    _core.cuda_combine_backward(device, stream, activation_name(yp, "yp"), grad_y.data_ptr(), grad_y.shape[0],
                                yp.data_ptr(), yp.shape[0], yp.shape[1], dest.data_ptr(), src.data_ptr(),
                                dest.shape[1], w.data_ptr(), grad_yp.data_ptr(), grad_w.data_ptr())
    return grad_yp, grad_w.to(weights.dtype)


def route_backward(grad_weights: Tensor, grad_probs: Optional[Tensor], probs: Tensor, expert_ids: Tensor,
                   dest: Tensor, score: str, normalize: str, scale: float) -> Tensor:
    probs = probs.detach().contiguous()
    acc = probs.dtype
    gw = grad_weights.detach().to(acc).contiguous()
    gp = None if grad_probs is None else grad_probs.detach().to(acc).contiguous()
    ids, dest = expert_ids.contiguous(), dest.contiguous()
    if _CUDA_CHECKS[0]:
        checks.expert_ids(ids, probs.shape[1])
    out = torch.empty_like(probs)
    device, stream = _stream(probs)
    t, e = probs.shape
    _core.cuda_route_backward(device, stream, activation_name(probs, "plan.probs"), t, e, ids.shape[1], gw.data_ptr(),
                              None if gp is None else gp.data_ptr(), probs.data_ptr(), ids.data_ptr(), dest.data_ptr(),
                              score, normalize, scale, out.data_ptr())
    return out
