"""The expert-parallel forward of moeroute.torch.MoE: the layer's routing on this rank's tokens,
dispatch to the ranks holding the experts, this rank's experts, combine; a configuration check
across the ranks at the first forward; the selection bias updated from the load summed over the
group; routing statistics of this rank or of the whole group."""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch

from ..._checks import _CUDA_CHECKS
from ...errors import ArgumentError
from ._collectives import all_gather, all_reduce_sum, group_size_and_rank
from ._exchange import DispatchHandle, combine, dispatch, eager

if TYPE_CHECKING:
    from ..moe import MoE

Tensor = torch.Tensor


class ExpertParallel:
    """A sharded MoE layer's place in its expert-parallel group (`layer.expert_parallel`).

    Attributes:
        group: the torch.distributed process group (None: the default group).
        world_size, rank: W and this process's rank in the group.
        num_local_experts: L = num_experts / W; first_expert = rank * L.
        same_num_tokens: every rank calls the layer with the same number of tokens, so a
            capacity_factor gives every rank the same capacity and the exchange needs no counts.
        global_stats: layer.stats sums the routing statistics over the group (else this rank's).
        last_handle: the DispatchHandle of the last forward (its host_reads, splits, counts).
    """

    def __init__(self, group: Any, num_experts: int, same_num_tokens: bool = False,
                 global_stats: bool = False) -> None:
        world, rank = group_size_and_rank(group, "expert_parallel_group")
        if num_experts % world:
            raise ArgumentError(f"num_experts: got {num_experts}, expected a multiple of the expert-parallel group's "
                                f"size {world} (each rank holds num_experts / world_size experts)")
        self.group, self.world_size, self.rank = group, world, rank
        self.num_local_experts = num_experts // world
        self.first_expert = rank * self.num_local_experts
        self.same_num_tokens = bool(same_num_tokens)
        self.global_stats = bool(global_stats)
        self.checked = False
        self.last_handle: Optional[DispatchHandle] = None

    def __deepcopy__(self, memo: Dict[int, Any]) -> "ExpertParallel":
        new = copy.copy(self)  # the same process group: a copy of the layer sits on the same ranks
        new.last_handle = None
        return new

    def __reduce__(self) -> Any:
        raise ArgumentError("an expert-parallel MoE holds a process group and cannot be pickled: save its "
                            "state_dict, or moeroute.torch.distributed.gather_full_state_dict(model) for the full layer")

    def static_capacity(self, layer: "MoE") -> bool:
        """Whether the exchange's split sizes are known without exchanging counts: a capacity that
        is the same on every rank (fixed with `capacity`, or same_num_tokens)."""
        options = layer.route_options
        if layer.routing == "token" and options.dropless:
            return False
        return options.capacity is not None or self.same_num_tokens

    def forward(self, layer: "MoE", x: Tensor) -> Tensor:
        layer._check_input(x)
        shape = x.shape
        tokens = x.reshape(-1, layer.hidden_size)
        layer._check_rows(tokens.shape[0])
        return _forward(self, layer, tokens).reshape(shape)


@eager
def _forward(ep: ExpertParallel, layer: "MoE", tokens: Tensor) -> Tensor:
    static = ep.static_capacity(layer)
    logits, clean, noise_std, rows = layer.router_logits(tokens)
    plan = layer.plan(logits)
    if not ep.checked or (static and ep.same_num_tokens and _CUDA_CHECKS[0]):
        check_configuration(ep, layer, plan.capacity if static else None)
        ep.checked = True
    expert_rows, handle = dispatch(rows, plan, ep.group, static_capacity=static)
    ep.last_handle = handle
    out = layer.experts(expert_rows, handle.expert_offsets)
    y = combine(out, handle)
    load, stats = _group_counts(ep, layer, plan)
    layer._record(plan, clean, logits, noise_std, load=load, stats=stats)
    return y


def _group_counts(ep: ExpertParallel, layer: "MoE", plan: Any) -> Tuple[Optional[Tensor], Any]:
    """(the picks per expert summed over the group, for the bias update; the group's statistics
    when global_stats), from one all-reduce, which every rank makes whether or not it trains (so
    a rank in eval mode never leaves the others waiting)."""
    if layer.bias_update_rate <= 0 and not ep.global_stats:
        return None, None
    experts = layer.num_experts
    dropped = plan.assigned_per_expert.new_full((1,), plan.num_dropped)
    counts = torch.cat([plan.assigned_per_expert, plan.tokens_per_expert, dropped]).to(torch.int64)
    total = all_reduce_sum(counts, ep.group, "all-reduce of the routing counts")
    load = total[:experts] if layer.bias_update_rate > 0 else None
    stats = None
    if ep.global_stats:
        from ..moe import RoutingStats
        stats = RoutingStats(total[experts:2 * experts], total[:experts], int(total[-1]), plan.capacity)
    return load, stats


def _fingerprint_fields(ep: ExpertParallel, layer: "MoE", capacity: Optional[int]) -> List[Tuple[str, str]]:
    """The facts every rank's layer must agree on, by name (their values as text)."""
    options = layer.route_options
    fields = [("num_experts", str(layer.num_experts)), ("hidden_size", str(layer.hidden_size)),
              ("top_k", str(layer.top_k)), ("routing", layer.routing),
              ("dtype", str(layer.router.weight.dtype)), ("device type", layer.router.weight.device.type)]
    fields += [(name, repr(value)) for name, value in options.fields().items() if name != "bias"]
    fields += [("bias_update_rate", repr(layer.bias_update_rate)), ("noisy_gating", str(layer.noise is not None)),
               ("global_stats", str(ep.global_stats)), ("same_num_tokens", str(ep.same_num_tokens)),
               ("experts", _experts_signature(layer.experts)),
               ("capacity of this forward", str(capacity))]
    return fields


def _experts_signature(experts: torch.nn.Module) -> str:
    """The kind of the local experts and the shapes of their parameters (names relative to the
    first local expert, so equal on every rank of a consistent group)."""
    shapes = [f"{_relative(name)}:{tuple(p.shape)}" for name, p in experts.named_parameters()]
    return type(experts).__name__ + ";" + ",".join(sorted(set(shapes)))


def _relative(name: str) -> str:
    parts = name.split(".")
    return ".".join("#" if part.isdigit() else part for part in parts)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=7).digest(), "little")


def check_configuration(ep: ExpertParallel, layer: "MoE", capacity: Optional[int]) -> None:
    """ArgumentError on every rank, naming the differing facts, when the ranks' layers differ in a
    way that would make their collectives mismatch (one all-gather of a few hashes)."""
    fields = _fingerprint_fields(ep, layer, capacity)
    mine = torch.tensor([_hash(value) for _, value in fields], dtype=torch.int64, device=layer.router.weight.device)
    everyone = all_gather(mine, ep.world_size, ep.group, "configuration check of the expert-parallel layer").cpu()
    differ = (everyone != everyone[ep.rank]).any(dim=0).tolist()
    if not any(differ):
        return
    problems = []
    for i, ((name, value), bad) in enumerate(zip(fields, differ)):
        if bad:
            other = [r for r in range(ep.world_size) if everyone[r, i] != everyone[ep.rank, i]]
            problems.append(f"{name} (this rank, {ep.rank}: {value}; differs on ranks {other})")
    expected = ("the same layer on every rank" if capacity is None else
                "the same layer on every rank, and with same_num_tokens the same number of tokens")
    raise ArgumentError(f"expert_parallel_group: the ranks' MoE layers differ: {'; '.join(problems)}; expected {expected}")
