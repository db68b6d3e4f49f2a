"""The torch.distributed collectives expert parallelism uses, each turning a failure (a peer that
never joins, a timeout, a closed connection) into a CollectiveError that says what was exchanged."""

from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.distributed as dist

from ...errors import ArgumentError, MoerouteError

Tensor = torch.Tensor


class CollectiveError(MoerouteError, RuntimeError):
    """A collective over the expert-parallel group did not complete (a rank that did not call the
    layer, a timeout of the process group, a lost peer)."""


def group_size_and_rank(group: Any, arg: str = "group") -> "tuple[int, int]":
    """(world size, this process's rank) in `group` (None: the default group); ArgumentError when
    torch.distributed is not initialized or this process is not in the group."""
    if not dist.is_available() or not dist.is_initialized():
        raise ArgumentError(f"{arg}: torch.distributed is not initialized; call "
                            "torch.distributed.init_process_group first (torchrun sets up its environment)")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ArgumentError(f"{arg}: this process (global rank {dist.get_rank()}) is not a member of the group")
    return dist.get_world_size(group), rank


def _failed(what: str, err: BaseException) -> CollectiveError:
    return CollectiveError(f"expert parallelism: the {what} over the process group did not complete: {err} "
                           "(every rank of the group must call the layer, or dispatch / combine, the same number "
                           "of times; the process group's timeout bounds the wait)")


def all_to_all(output: Tensor, input: Tensor, output_splits: Optional[List[int]], input_splits: Optional[List[int]],
               group: Any, what: str) -> None:
    """torch.distributed.all_to_all_single(output, input, ...) on `group`."""
    try:
        dist.all_to_all_single(output, input, output_splits, input_splits, group=group)
    except RuntimeError as err:
        raise _failed(what, err) from err


def all_gather(tensor: Tensor, world_size: int, group: Any, what: str) -> Tensor:
    """The tensors of every rank stacked along a new first dimension (same shape on every rank)."""
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    try:
        dist.all_gather(parts, tensor.contiguous(), group=group)
    except RuntimeError as err:
        raise _failed(what, err) from err
    return torch.stack(parts)


def all_reduce_sum(tensor: Tensor, group: Any, what: str) -> Tensor:
    """The sum over the group (in place on `tensor`, which is returned)."""
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    except RuntimeError as err:
        raise _failed(what, err) from err
    return tensor


def all_gather_object(obj: object, world_size: int, group: Any, what: str) -> List[Any]:
    out: List[Any] = [None] * world_size
    try:
        dist.all_gather_object(out, obj, group=group)
    except RuntimeError as err:
        raise _failed(what, err) from err
    return out
