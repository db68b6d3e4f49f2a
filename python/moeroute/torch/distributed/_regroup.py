"""moeroute::regroup, the custom op that reorders rows held as a grid of blocks from a-major to
b-major (an all-to-all's received rows, source-rank-major, into local-expert-major segments): the
Rust core's kernel on the CPU, the CUDA kernel on the GPU; a fake for torch.compile; its backward
is the same op with the counts transposed."""

from __future__ import annotations

from typing import Any

import torch

from ... import _core
from ..._checks import _CUDA_CHECKS
from ...errors import ArgumentError, DeviceError, DTypeError, ShapeError
from .._convert import activation_name, from_storage, index_array, to_storage
from .._cuda import _stream

Tensor = torch.Tensor


def _check(rows: Tensor, counts: Tensor) -> None:
    if not isinstance(rows, Tensor):
        raise DTypeError(f"rows: got {type(rows).__name__}, expected a (N, H) float tensor")
    if not isinstance(counts, Tensor) or counts.dtype != torch.int64:
        got = counts.dtype if isinstance(counts, Tensor) else type(counts).__name__
        raise DTypeError(f"counts: got {got}, expected an int64 tensor of shape (A, B)")
    if rows.dim() != 2:
        raise ShapeError(f"rows: got shape {list(rows.shape)}, expected (N, H)")
    if counts.dim() != 2:
        raise ShapeError(f"counts: got shape {list(counts.shape)}, expected (A, B)")
    if counts.device != rows.device:
        raise DeviceError(f"counts: got a tensor on {counts.device}, expected rows' device ({rows.device})")


def regroup_impl(rows: Tensor, counts: Tensor) -> Tensor:
    if rows.is_cuda:
        return _cuda_regroup(rows, counts)
    storage, dtype_name = to_storage(rows, "rows", 2)
    return from_storage(_core.regroup(storage, dtype_name, index_array(counts.contiguous(), "counts")), dtype_name)


def _cuda_regroup(rows: Tensor, counts: Tensor) -> Tensor:
    rows, counts = rows.detach().contiguous(), counts.contiguous()
    if _CUDA_CHECKS[0]:  # checked mode: the CPU core's checks, one host read
        negative, total = torch.stack([(counts < 0).sum(), counts.sum()]).tolist()
        if negative or total != rows.shape[0]:
            raise ArgumentError(f"counts: got counts summing to {total} ({negative} negative), expected counts "
                                f">= 0 summing to the number of rows, {rows.shape[0]}")
    a, b = counts.shape
    out = torch.empty_like(rows)
    workspace = torch.empty(_core.cuda_regroup_workspace(a, b), dtype=torch.uint8, device=rows.device)
    device, stream = _stream(rows)
    _core.cuda_regroup(device, stream, activation_name(rows, "rows"), rows.data_ptr(), rows.shape[0], rows.shape[1],
                       counts.data_ptr(), a, b, workspace.data_ptr(), out.data_ptr())
    return out


regroup_op = torch.library.custom_op("moeroute::regroup", mutates_args=())(regroup_impl)


@regroup_op.register_fake
def _(rows: Tensor, counts: Tensor) -> Tensor:
    return torch.empty_like(rows)


def _setup(ctx: Any, inputs: Any, output: Any) -> None:
    ctx.save_for_backward(inputs[1])


def _backward(ctx: Any, grad: Tensor) -> Any:
    (counts,) = ctx.saved_tensors
    return regroup(grad, counts.t()), None


regroup_op.register_autograd(_backward, setup_context=_setup)


def regroup(rows: Tensor, counts: Tensor) -> Tensor:
    """Rows held as a grid of blocks, reordered from a-major to b-major.

    Args:
        rows: (N, H) float tensor (any of the four activation dtypes), CPU or CUDA: the blocks
            (a, b) in a-major order, block (a, b) holding counts[a, b] rows.
        counts: (A, B) int64 tensor on rows' device, every count >= 0, summing to N.

    Returns:
        (N, H) tensor of rows' dtype: the same rows with the blocks in b-major order
        ((0, 0), (1, 0), ..., (A-1, 0), (0, 1), ...). regroup(out, counts.t()) gives rows back.
        Differentiable (the backward is that inverse).

    Raises:
        DTypeError / ShapeError for a wrong tensor; ArgumentError for negative counts or counts
        not summing to N (always on the CPU; on CUDA in checked mode, moeroute.set_checks(True)).

    In expert parallelism: the rows an all-to-all received, source-rank-major with blocks
    (source rank, local expert), become local-expert-major segments with counts=(W, L).
    """
    _check(rows, counts)
    if torch.compiler.is_compiling() or (rows.requires_grad and torch.is_grad_enabled()):
        out: Tensor = regroup_op(rows, counts)
        return out
    return regroup_impl(rows, counts)
