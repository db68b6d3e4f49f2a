"""dispatch and combine for expert parallelism: a rank's tokens, permuted by its local plan, go to
the ranks holding their experts with all_to_all_single and arrive regrouped by local expert; the
experts' outputs go back the same way and are combined. Both directions are differentiable, the
backward of each being the other's exchange."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, TypeVar, cast

import torch

from ...errors import ArgumentError, DTypeError, ShapeError
from ...plan import RoutingPlan
from .. import _custom_ops
from ._collectives import all_to_all, group_size_and_rank
from ._regroup import regroup_impl

Tensor = torch.Tensor
_F = TypeVar("_F", bound=Callable[..., Any])


def eager(fn: _F) -> _F:
    """torch.compile runs fn eagerly (a graph break): the exchanges' split sizes are host values
    and the collectives run outside the traced graph."""
    return cast(_F, torch.compiler.disable(fn))  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class DispatchHandle:
    """What `combine` needs to send the expert outputs back, made by `dispatch`.

    Attributes:
        plan: this rank's RoutingPlan (its rows are what was sent; combine uses dest and weights).
        group: the process group (None: the default group); world_size W and rank.
        num_local_experts: L = E / W; this rank holds experts [rank * L, (rank + 1) * L).
        counts: (W, L) int64, rows received from each source rank for each local expert.
        expert_offsets: (L + 1,) int64, local expert l's rows are [offsets[l], offsets[l + 1]) of
            dispatch's output.
        sent_splits, received_splits: rows sent to / received from each rank (host ints).
        host_reads: 1 when the split sizes were read from the device (exchanged counts), else 0.
    """
    plan: RoutingPlan[Tensor]
    group: Any
    world_size: int
    rank: int
    num_local_experts: int
    counts: Tensor
    expert_offsets: Tensor
    sent_splits: List[int]
    received_splits: List[int]
    host_reads: int

    @property
    def rows_sent(self) -> int:
        return sum(self.sent_splits)

    @property
    def rows_received(self) -> int:
        return sum(self.received_splits)


def exchange_layout(plan: RoutingPlan[Tensor], group: Any = None, static_capacity: bool = False) -> DispatchHandle:
    """The split sizes and counts of an exchange of this plan's rows (see dispatch)."""
    world, rank = group_size_and_rank(group)
    experts = plan.num_experts
    if experts % world:
        raise ArgumentError(f"plan: num_experts = {experts} is not divisible by the group's size {world}; "
                            "expert parallelism gives each rank num_experts / world_size experts")
    local = experts // world
    device = plan.expert_offsets.device
    if static_capacity:
        capacity = plan.capacity
        if capacity is None:
            raise ArgumentError("static_capacity: got True for a dropless plan, expected a plan with a capacity "
                                "(the same on every rank)")
        counts = torch.full((world, local), capacity, dtype=torch.int64, device=device)
        offsets = torch.arange(local + 1, dtype=torch.int64, device=device) * (world * capacity)
        splits = [local * capacity] * world
        return DispatchHandle(plan, group, world, rank, local, counts, offsets, splits, list(splits), 0)
    sizes = plan.expert_offsets.diff()
    received = torch.empty_like(sizes)
    all_to_all(received, sizes, None, None, group, "exchange of the rows per expert")
    counts = received.view(world, local)
    host = torch.cat([sizes.view(world, local).sum(1), counts.sum(1)]).tolist()  # the one host read
    offsets = torch.cat([counts.new_zeros(1), counts.sum(0).cumsum(0)])
    return DispatchHandle(plan, group, world, rank, local, counts, offsets, host[:world], host[world:], 1)


def to_experts(xp: Tensor, handle: DispatchHandle) -> Tensor:
    """The plan's rows (R, H) sent to their experts' ranks; returns the received rows (M, H) grouped
    by local expert. Not differentiable (dispatch is)."""
    send = xp.narrow(0, 0, handle.rows_sent).contiguous()
    received = xp.new_empty((handle.rows_received, xp.shape[1]))
    all_to_all(received, send, handle.received_splits, handle.sent_splits, handle.group, "dispatch (all-to-all of rows)")
    return regroup_impl(received, handle.counts)


def to_sources(rows: Tensor, handle: DispatchHandle) -> Tensor:
    """The inverse of to_experts: (M, H) local-expert-major rows back to their ranks, returned as
    the plan's rows (R, H) (rows past the sent ones, unused padding, are zeros)."""
    by_source = regroup_impl(rows.contiguous(), handle.counts.t())
    out = rows.new_empty((handle.plan.num_rows, rows.shape[1]))
    sent = handle.rows_sent
    all_to_all(out.narrow(0, 0, sent), by_source, handle.sent_splits, handle.received_splits, handle.group,
               "combine (all-to-all of rows)")
    if sent < out.shape[0]:
        out.narrow(0, sent, out.shape[0] - sent).zero_()
    return out


_Move = Callable[[Tensor, DispatchHandle], Tensor]


class _Exchange(torch.autograd.Function):
    """One direction of the exchange (`there`), whose backward is the other (`back`)."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, handle: DispatchHandle, there: _Move, back: _Move) -> Tensor:
        ctx.handle, ctx.back = handle, back
        return there(rows, handle)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None, None]:
        return ctx.back(grad.contiguous(), ctx.handle), None, None, None


def _exchange(rows: Tensor, handle: DispatchHandle, there: _Move, back: _Move) -> Tensor:
    if rows.requires_grad and torch.is_grad_enabled():
        out: Tensor = _Exchange.apply(rows, handle, there, back)
        return out
    return there(rows, handle)


def _check_tokens(x: Tensor, plan: RoutingPlan[Tensor]) -> None:
    if not isinstance(x, Tensor):
        raise DTypeError(f"x: got {type(x).__name__}, expected a (num_tokens, H) tensor")
    if not isinstance(plan, RoutingPlan):
        raise DTypeError(f"plan: got {type(plan).__name__}, expected a RoutingPlan of tensors")
    if x.dim() != 2 or x.shape[0] != plan.num_tokens:
        raise ShapeError(f"x: got shape {list(x.shape)}, expected ({plan.num_tokens}, H) (the plan's num_tokens)")


@eager
def dispatch(x: Tensor, plan: RoutingPlan[Tensor], group: Any = None, *,
             static_capacity: bool = False) -> Tuple[Tensor, DispatchHandle]:
    """Sends this rank's tokens to the ranks holding their experts.

    Every rank of `group` calls it with its own tokens and its own plan over all E experts
    (E divisible by the group's size W); rank r holds experts [r * E / W, (r + 1) * E / W).

    Args:
        x: (num_tokens, H) tokens of this rank (any activation dtype; a rank may have none).
        plan: the RoutingPlan of these tokens (moeroute.torch.route etc.), over all E experts.
        group: a torch.distributed process group (None: the default group).
        static_capacity: True when every rank's plan has the same capacity C (e.g. `capacity=C`,
            or capacity_factor with the same number of tokens on every rank): the split sizes are
            then known without exchanging counts (no host synchronisation). False (default): the
            rows per expert are exchanged first (one small all-to-all) and read on the host once.

    Returns:
        (rows, handle): rows (M, H), the rows this rank's L = E / W experts must process, grouped
        by local expert (expert l's rows are [handle.expert_offsets[l], ...[l + 1])), each local
        expert's rows ordered by source rank, then as in that rank's plan (padding rows included);
        and the DispatchHandle that `combine` takes. Differentiable w.r.t. x (the backward sends
        the rows' gradients back).

    Raises:
        ArgumentError (E not divisible by W; static_capacity with a dropless plan; torch.distributed
        not initialized), ShapeError / DTypeError for x, CollectiveError when an exchange fails.
    """
    _check_tokens(x, plan)
    handle = exchange_layout(plan, group, static_capacity)
    xp = _custom_ops.call(_custom_ops.permute, _custom_ops.permute_impl, x, plan.src, plan.dest)
    return _exchange(xp, handle, to_experts, to_sources), handle


@eager
def combine(expert_rows: Tensor, handle: DispatchHandle, weights: Optional[Tensor] = None) -> Tensor:
    """The inverse of dispatch: the local experts' outputs go back to their tokens' ranks, where
    each token gets the weighted sum of its experts' outputs (moeroute.combine of the plan).

    Args:
        expert_rows: (M, H) outputs of the local experts, in dispatch's row order.
        handle: dispatch's handle.
        weights: (num_tokens, k) combine weights (default: the plan's weights).

    Returns:
        (num_tokens, H): this rank's combined tokens. Differentiable w.r.t. expert_rows and the
        weights (the backward sends the rows' gradients to the experts' ranks).
    """
    if not isinstance(expert_rows, Tensor) or expert_rows.dim() != 2 or expert_rows.shape[0] != handle.rows_received:
        got = list(expert_rows.shape) if isinstance(expert_rows, Tensor) else type(expert_rows).__name__
        raise ShapeError(f"expert_rows: got {got}, expected ({handle.rows_received}, H) (dispatch's rows)")
    plan = handle.plan
    yp = _exchange(expert_rows, handle, to_sources, to_experts)
    w = plan.weights if weights is None else weights
    y: Tensor = _custom_ops.call(_custom_ops.combine, _custom_ops.combine_impl, yp, plan.dest, plan.src, w)
    return y
