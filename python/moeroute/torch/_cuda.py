"""moeroute's ops on CUDA tensors: torch allocates every output and the scratch workspace on the
input's device, and the Rust core launches the kernels on torch's current stream (no host
synchronisation, so the ops can be captured in CUDA graphs)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _core
from ._convert import accumulation_dtype, activation_name

Tensor = torch.Tensor


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream(t: Tensor) -> Tuple[int, int]:
    """(device index, handle of torch's current stream on that device)."""
    index = t.get_device()
    if _raw_stream is not None:  # the handle without building a torch.cuda.Stream object
        return index, _raw_stream(index)
    return index, torch.cuda.current_stream(index).cuda_stream


def _plan_outputs(logits: Tensor, slots: int, rows: int, workspace_bytes: int) -> Tuple[Tuple[Tensor, ...], Tensor]:
    """(the plan's eight tensors, the workspace), each allocated on its own."""
    t, e = logits.shape
    acc = accumulation_dtype(logits.dtype)
    dev = logits.device
    i32, i64 = torch.int32, torch.int64
    outputs = (torch.empty((t, slots), dtype=acc, device=dev), torch.empty((t, e), dtype=acc, device=dev),
               torch.empty((t, slots), dtype=i32, device=dev), torch.empty((t, slots), dtype=i32, device=dev),
               torch.empty((rows,), dtype=i32, device=dev), torch.empty((e + 1,), dtype=i64, device=dev),
               torch.empty((e,), dtype=i64, device=dev), torch.empty((e,), dtype=i64, device=dev))
    return outputs, torch.empty(workspace_bytes, dtype=torch.uint8, device=dev)


def _packed_plan_outputs(logits: Tensor, slots: int, rows: int, workspace_bytes: int) -> Tuple[Tuple[Tensor, ...], Tensor]:
    """The same as views of three allocations (floats; int32 fields + workspace; int64 counts):
    each allocation costs the host about as much as a kernel launch. The fields share storage, so
    this is for eager calls only (custom ops must not return aliased outputs)."""
    t, e = logits.shape
    dev = logits.device
    floats = torch.empty(t * slots + t * e, dtype=accumulation_dtype(logits.dtype), device=dev)
    fields = 2 * t * slots + rows
    head = -(-fields // 64) * 64  # the workspace starts 256-byte aligned
    ints = torch.empty(head + -(-workspace_bytes // 4), dtype=torch.int32, device=dev)
    longs = torch.empty(3 * e + 1, dtype=torch.int64, device=dev)
    weights, probs = floats.split([t * slots, t * e])
    expert_ids, dest, src, ws = ints.split([t * slots, t * slots, rows, ints.numel() - fields])
    offsets, tokens, assigned = longs.split([e + 1, e, e])
    outputs = (weights.view(t, slots), probs.view(t, e), expert_ids.view(t, slots), dest.view(t, slots), src,
               offsets, tokens, assigned)
    return outputs, ws[head - fields:]


def route(logits: Tensor, rows: int, k: int, score: str, normalize: str, scale: float, bias: Optional[Tensor],
          num_groups: Optional[int], topk_groups: Optional[int], capacity: Optional[int],
          capacity_factor: Optional[float], min_capacity: int, capacity_multiple: int, priority: str,
          pad_to: int, packed: bool = False) -> Tuple[Tensor, ...]:
    logits = logits.detach().contiguous()
    dtype_name = activation_name(logits, "logits")
    t, e = logits.shape
    allocate = _packed_plan_outputs if packed else _plan_outputs
    outputs, ws = allocate(logits, k, rows, _core.cuda_route_workspace(dtype_name, t, e, k, num_groups))
    bias_ptr = 0
    if bias is not None:
        bias = bias.detach().to(device=logits.device, dtype=accumulation_dtype(logits.dtype)).contiguous()
        bias_ptr = bias.data_ptr()
    device, stream = _stream(logits)
    _core.cuda_route(device, stream, logits.data_ptr(), dtype_name, t, e, k, score, normalize, scale, bias_ptr,
                     num_groups, topk_groups, capacity, capacity_factor, min_capacity, capacity_multiple, priority,
                     pad_to, tuple(o.data_ptr() for o in outputs), ws.data_ptr(), ws.numel() * ws.element_size())
    return outputs


def expert_choice(logits: Tensor, capacity: Optional[int], capacity_factor: float, rows: int) -> Tuple[Tensor, ...]:
    logits = logits.detach().contiguous()
    dtype_name = activation_name(logits, "logits")
    t, e = logits.shape
    outputs, ws = _plan_outputs(logits, e, rows, _core.cuda_route_workspace(dtype_name, t, e, 0, None))
    device, stream = _stream(logits)
    _core.cuda_expert_choice(device, stream, logits.data_ptr(), dtype_name, t, e, capacity, capacity_factor,
                             tuple(o.data_ptr() for o in outputs), ws.data_ptr(), ws.numel())
    return outputs


def permute(x: Tensor, src: Tensor) -> Tensor:
    x, src = x.detach().contiguous(), src.contiguous()
    xp = torch.empty((src.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
    device, stream = _stream(x)
    _core.cuda_permute(device, stream, activation_name(x, "x"), x.data_ptr(), x.shape[0], x.shape[1],
                       src.data_ptr(), xp.data_ptr(), xp.shape[0])
    return xp


def combine(rows: Tensor, dest: Tensor, weights: Optional[Tensor]) -> Tensor:
    """y[t] = Σ_s w[t,s] · rows[dest[t,s]]; weights None means 1 (permute's backward pass)."""
    rows, dest = rows.detach().contiguous(), dest.contiguous()
    w_ptr = 0
    if weights is not None:
        weights = weights.detach().to(accumulation_dtype(rows.dtype)).contiguous()
        w_ptr = weights.data_ptr()
    y = torch.empty((dest.shape[0], rows.shape[1]), dtype=rows.dtype, device=rows.device)
    device, stream = _stream(rows)
    _core.cuda_combine(device, stream, activation_name(rows, "yp"), rows.data_ptr(), rows.shape[0], rows.shape[1],
                       dest.data_ptr(), dest.shape[1], w_ptr, y.data_ptr(), y.shape[0])
    return y


def combine_backward(grad_y: Tensor, yp: Tensor, dest: Tensor, src: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    yp, dest, src = yp.detach().contiguous(), dest.contiguous(), src.contiguous()
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
    out = torch.empty_like(probs)
    device, stream = _stream(probs)
    t, e = probs.shape
    _core.cuda_route_backward(device, stream, acc == torch.float64, t, e, ids.shape[1], gw.data_ptr(),
                              0 if gp is None else gp.data_ptr(), probs.data_ptr(), ids.data_ptr(), dest.data_ptr(),
                              score, normalize, scale, out.data_ptr())
    return out
