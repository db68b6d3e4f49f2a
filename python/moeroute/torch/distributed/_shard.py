"""Sharding an MoE layer's experts over an expert-parallel group: shard_moe (a rank's copy of a
full layer), the local module experts (named as in the full layer), the full state_dict gathered
from the ranks or loaded into them, and which parameters are replicated and which are experts."""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from ...errors import ArgumentError, DTypeError
from ..experts import ModuleExperts, StackedFFN, segment_loop
from ..moe import MoE
from ._collectives import all_gather_object, group_size_and_rank
from ._layer import ExpertParallel

Tensor = torch.Tensor


class LocalModuleExperts(nn.Module):
    """A rank's slice of ModuleExperts: experts first_expert .. first_expert + L - 1, held under
    their full-layer names (`experts.<global index>`), each run on its own segment."""

    def __init__(self, experts: Sequence[nn.Module], first_expert: int) -> None:
        super().__init__()
        self.first_expert = first_expert
        self.experts = nn.ModuleDict({str(first_expert + i): m for i, m in enumerate(experts)})

    def forward(self, xp: Tensor, expert_offsets: Tensor) -> Tensor:
        modules = list(self.experts.values())
        return segment_loop(xp, expert_offsets, lambda e, seg: modules[e](seg), xp.shape[1])

    def expert(self, e: int, rows: Tensor) -> Tensor:
        """Local expert e (global index first_expert + e) alone on some rows."""
        out: Tensor = list(self.experts.values())[e](rows)
        return out


def local_experts(experts: nn.Module, first: int, count: int) -> nn.Module:
    """Experts [first, first + count) of a full layer's experts, as copies holding its values."""
    if isinstance(experts, StackedFFN):
        weight = experts.w_up
        local = StackedFFN(count, experts.hidden_size, experts.ffn_size, experts.activation, dtype=weight.dtype)
        local.to(weight.device)
        with torch.no_grad():
            for name, p in local.named_parameters():
                p.copy_(getattr(experts, name)[first:first + count])
        return local
    if isinstance(experts, ModuleExperts):
        return LocalModuleExperts([copy.deepcopy(experts.experts[i]) for i in range(first, first + count)], first)
    raise ArgumentError(f"layer.experts: got {type(experts).__name__}, expected StackedFFN (the default) or "
                        "ModuleExperts (a list of expert modules) to shard")


def shard_moe(layer: MoE, group: Any = None, *, same_num_tokens: bool = False, global_stats: bool = False) -> MoE:
    """This rank's expert-parallel copy of a full MoE layer (the full layer is left unchanged).

    Args:
        layer: a full (not sharded) moeroute.torch.MoE, the same on every rank of the group.
        group: a torch.distributed process group (None: the default group); any subgroup works.
        same_num_tokens: promise that every rank calls the layer with the same number of tokens,
            so that a capacity_factor gives every rank the same capacity: the exchange then needs no
            counts (no host synchronisation). Checked at the first forward (and at every forward
            in checked mode, moeroute.set_checks(True)).
        global_stats: `stats` sums the routing statistics over the group (default: this rank's).

    Returns:
        A MoE with the router, noise, bias and every option replicated, and only this rank's
        experts: rank r of W holds experts [r * E / W, (r + 1) * E / W), under the full layer's
        parameter names (stacked expert tensors of E / W experts holding the full layer's
        values; module experts under their full-layer indices). Its forward gives this rank's
        tokens the full layer's output, statistics and gradients (see docs/expert-parallel.md).

    Raises:
        ArgumentError: E not divisible by W (naming both), torch.distributed not initialized, a
            layer already sharded, or experts of a kind that cannot be split.
    """
    if not isinstance(layer, MoE):
        raise DTypeError(f"layer: got {type(layer).__name__}, expected a moeroute.torch.MoE")
    if layer.expert_parallel is not None:
        raise ArgumentError("layer: got a layer that is already expert-parallel, expected a full layer")
    ep = ExpertParallel(group, layer.num_experts, same_num_tokens, global_stats)
    local = local_experts(layer.experts, ep.first_expert, ep.num_local_experts)
    sharded = copy.deepcopy(layer, memo={id(layer.experts): layer.experts})  # (the experts are not copied)
    sharded.experts = local
    sharded.expert_parallel = ep
    return sharded


def sharded_layers(model: nn.Module) -> List[Tuple[str, MoE]]:
    """(prefix, layer) of every expert-parallel MoE in model, prefix ending with '.' (or empty)."""
    return [(f"{name}." if name else "", m) for name, m in model.named_modules()
            if isinstance(m, MoE) and m.expert_parallel is not None]


def parameter_groups(model: nn.Module) -> Dict[str, List[Tuple[str, nn.Parameter]]]:
    """Which parameters of a model with expert-parallel MoE layers are which.

    Returns:
        {"expert": [(name, parameter), ...], "replicated": [...]}: "expert" holds the local
        experts' parameters of every sharded MoE (different on each rank of its group: average
        their gradients only over ranks that hold the same experts, the expert-data-parallel
        group); "replicated" everything else (routers, noise projections, other layers: average
        over the data-parallel group as usual). Buffers (expert_bias) are not parameters; the
        layer keeps the bias equal on every rank of its group itself.
    """
    expert_ids = {id(p) for _, layer in sharded_layers(model) for p in layer.experts.parameters()}
    groups: Dict[str, List[Tuple[str, nn.Parameter]]] = {"expert": [], "replicated": []}
    for name, p in model.named_parameters():
        groups["expert" if id(p) in expert_ids else "replicated"].append((name, p))
    return groups


def _expert_keys(prefix: str, state: Mapping[str, Any]) -> List[str]:
    return [k for k in state if k.startswith(prefix + "experts.")]


def gather_full_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """The full model's state_dict, on every rank: each sharded MoE's experts gathered from the
    ranks of its group (a collective: every rank must call it). Load it into an unsharded model
    (a full MoE) with load_state_dict, or into a sharded one with load_full_state_dict."""
    state = model.state_dict()
    for prefix, layer in sharded_layers(model):
        ep = layer.expert_parallel
        assert ep is not None
        keys = _expert_keys(prefix, state)
        local = {k: state[k].detach().cpu() for k in keys}
        parts = all_gather_object(local, ep.world_size, ep.group, "gather of the experts' state")
        for k in keys:
            del state[k]
        if isinstance(layer.experts, StackedFFN):
            for k in keys:
                state[k] = torch.cat([p[k] for p in parts]).to(layer.router.weight.device)
        else:
            for p in parts:
                state.update({k: v.to(layer.router.weight.device) for k, v in p.items()})
    return state


def load_full_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Loads a full model's state_dict (e.g. torch.load of a single-process checkpoint) into a
    model whose MoE layers are sharded: each rank takes its own experts' slices. Strict: a
    missing or unexpected key raises (torch's RuntimeError)."""
    state = dict(state_dict)
    for prefix, layer in sharded_layers(model):
        ep = layer.expert_parallel
        assert ep is not None
        first, count = ep.first_expert, ep.num_local_experts
        if isinstance(layer.experts, StackedFFN):
            for name, _ in layer.experts.named_parameters():
                key = f"{prefix}experts.{name}"
                if key in state:
                    full = state[key]
                    if full.shape[0] != layer.num_experts:
                        raise ArgumentError(f"state_dict[{key!r}]: got {full.shape[0]} experts, expected the full "
                                            f"layer's {layer.num_experts}")
                    state[key] = full[first:first + count]
        else:
            mine = {str(i) for i in range(first, first + count)}
            for key in _expert_keys(prefix, state):
                index = key[len(prefix + "experts.experts."):].split(".")[0]
                if index not in mine:
                    del state[key]
    model.load_state_dict(state, strict=True)
