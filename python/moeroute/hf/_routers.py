"""Replacement routers for transformers' MoE families: each computes its family's routing (scores,
top-k, weights) with one moeroute.route call and returns what the original router returns."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..torch import route

RouterOutput = Tuple[Tensor, Tensor, Tensor]
Forward = Callable[..., RouterOutput]

# How exactly a replacement computes what its original does (tests/test_hf.py checks each class):
# - The router logits are computed by the same torch calls, so they, and the aux losses computed
#   from them, are the same bits. The index is int64, the weights have the original's dtype.
# - The picks are the original's, in its slot order (descending selection key, as
#   torch.topk(sorted=True) returns them; the DeepSeek-V3 kind's original uses sorted=False, an
#   unspecified order), except: among exactly equal selection keys moeroute takes the lower expert
#   index, where torch.topk's choice is unspecified (on the CPU often not the lower index); and
#   keys within a few float32 ulps of each other can be ordered differently, since moeroute's
#   float32 exp (softmax, sigmoid) can differ from torch's in the last bits. Exact ties are common
#   in bfloat16 logits; tied picks get equal weights, but a different expert.
# - The weights agree within float32 rounding (then the original's cast). The DeepSeek-V3 kind's
#   original divides by sum + 1e-20: the same float32 value as moeroute's sum whenever the sum of
#   the k picked sigmoid scores is at least 2.3e-13 (below that, every picked logit is under -29).
# - Top-k of the logits then softmax over the k picks (GPT-OSS, Granite, Aria) is
#   normalize="topk" on the softmax over all E: the same picks, since softmax is monotonic, and
#   the same weights up to rounding. Logits more than about 87 below the row's maximum have a
#   float32 softmax under 1.2e-38 (subnormal or 0, in both), where distinct logits can round to
#   equal scores that moeroute ties (lower index) while torch.topk ranks the logits; that matters
#   only when k exceeds the experts above that, and their weights are below 1.2e-38 either way.
# - The DeepSeek-V3 kind scores a group by the sum of its 2 best keys, moeroute by its
#   max(1, k // topk_group) best: a router is replaced only where they agree (or where no group
#   is dropped: n_group == 1 or topk_group == n_group); others stay as they are.


@dataclass(frozen=True)
class RouterKind:
    """One router semantics shared by several families.

    Attributes:
        name: a short name for the logs ("softmax-topk", "sigmoid-group", ...).
        forward: the replacement forward, `forward(router, hidden_states, ...)`, returning the
            original's `(router_logits, top_k_weights, top_k_index)`.
        unsupported: `unsupported(router)` gives why this router instance cannot be computed exactly
            by moeroute.route (then it stays as it is), or None.
        route_options: which moeroute.route options the family's semantics map onto (for the docs).
    """

    name: str
    forward: Forward
    unsupported: Callable[[Any], Optional[str]]
    route_options: str


def _always(router: Any) -> Optional[str]:
    return None


def _picks(logits: Tensor, k: int, **options: Any) -> Tuple[Tensor, Tensor]:
    """moeroute.route over the last dimension of logits of any leading shape: (weights (..., k)
    float32 (float64 for float64 logits), differentiable w.r.t. the logits; expert ids (..., k)
    int64, slot 0 the best pick, ties to the lower expert index)."""
    num_experts = logits.shape[-1]
    plan = route(logits.reshape(-1, num_experts), k, **options)
    shape = (*logits.shape[:-1], k)
    return plan.weights.reshape(shape), plan.expert_ids.long().reshape(shape)


# --- softmax over all experts, top-k, renormalized over the k picks ---------------------------------


def _mixtral_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """Mixtral, MiniMax: softmax(logits.float()), top-k, divided by their sum; weights stay float32."""
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = F.linear(hidden_states, self.weight)
    weights, index = _picks(router_logits, self.top_k, normalize="topk")
    return router_logits, weights, index


def _qwen_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """Qwen2/3-MoE, Qwen3-Next, OLMoE, ...: softmax in float32, top-k, divided by their sum when
    config.norm_topk_prob; weights cast to the logits' dtype."""
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = F.linear(hidden_states, self.weight)
    weights, index = _picks(router_logits, self.top_k, normalize="topk" if self.norm_topk_prob else "none")
    return router_logits, weights.to(router_logits.dtype), index


def _qwen_vl_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """Qwen3-VL-MoE, Qwen3.5-MoE: as Qwen3-MoE but always divided by the sum of the k picks."""
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = F.linear(hidden_states, self.weight)
    weights, index = _picks(router_logits, self.top_k, normalize="topk")
    return router_logits, weights.to(router_logits.dtype), index


def _hunyuan_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """HunYuan-V1-MoE: logits from its `wg` Linear (in float32 when `wg` is float32), softmax,
    top-k, divided by their sum, cast to the logits' dtype."""
    hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])
    if self.wg.weight.dtype == torch.float32:
        hidden_states = hidden_states.float()
    router_logits = self.wg(hidden_states)
    weights, index = _picks(router_logits, self.top_k, normalize="topk")
    return router_logits, weights.to(router_logits.dtype), index


def _jamba_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """Jamba: softmax in float32, top-k, not renormalized, cast to the hidden states' dtype."""
    router_logits = F.linear(hidden_states, self.weight)
    weights, index = _picks(router_logits, self.top_k, normalize="none")
    return router_logits, weights.to(hidden_states.dtype), index


def _ernie_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """Ernie-4.5-MoE: float32 logits (autocast off), softmax, top-k of softmax + the selection-only
    e_score_correction_bias, weights divided by max(sum of the k picks, config.moe_norm_min) (that
    division in torch, so the clamp is exact), cast to the hidden states' dtype."""
    with torch.autocast(device_type=hidden_states.device.type, enabled=False):
        router_logits = F.linear(hidden_states.float(), self.weight.float())
        bias = self.moe_statics.e_score_correction_bias.reshape(-1)
        weights, index = _picks(router_logits, self.top_k, normalize="none", bias=bias)
        weights = weights / torch.clamp(weights.sum(dim=-1, keepdim=True), min=self.norm_min)
    return router_logits, weights.to(hidden_states.dtype), index


# --- sigmoid scores, selection-only bias, group-limited top-k (DeepSeek-V3 and its followers) -------


def _group_options(router: Any) -> Dict[str, int]:
    """moeroute's group options for a DeepSeek-V3-style router: none when every group stays."""
    num_groups, topk_groups = int(router.num_group), int(router.topk_group)
    if num_groups <= 1 or topk_groups == num_groups:
        return {}
    return {"num_groups": num_groups, "topk_groups": topk_groups}


def _deepseek_unsupported(router: Any) -> Optional[str]:
    """The DeepSeek-V3 router scores a group by the sum of its 2 best keys; moeroute by the sum of
    its max(1, k // topk_groups) best. They agree when that is 2, or when every group stays."""
    num_experts, k = int(router.num_experts), int(router.top_k)
    num_groups, topk_groups = int(router.num_group), int(router.topk_group)
    if num_groups < 1 or num_experts % num_groups or not 1 <= topk_groups <= num_groups or not 1 <= k <= num_experts:
        return (f"n_group={num_groups}, topk_group={topk_groups} with {num_experts} experts and top-{k} is not "
                f"a valid group limit")
    if not _group_options(router):
        return None
    per_group = max(1, k // topk_groups)
    if per_group != 2:
        return (f"its groups are scored by the sum of their 2 best scores, moeroute's by the sum of their "
                f"max(1, top_k // topk_group) = {per_group} best (top_k={k}, topk_group={topk_groups})")
    if k > topk_groups * (num_experts // num_groups):
        return f"top_k={k} exceeds the {topk_groups * (num_experts // num_groups)} experts its kept groups hold"
    return None


def _deepseek_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """DeepSeek-V3, GLM-4-MoE, Dots1, ...: float32 logits, sigmoid scores, e_score_correction_bias
    only for the selection, groups scored by their 2 best keys, top-k, divided by their sum when
    config.norm_topk_prob, times routed_scaling_factor; weights in the logits' dtype (float32, or
    bfloat16 under a bfloat16 autocast, where the original computes them in bfloat16 and moeroute
    in float32, so it selects on scores rounded to bfloat16 and moeroute on float32 scores). (The
    original divides by sum + 1e-20, the same float32 value whenever the sum is at least 2.3e-13.)"""
    hidden_states = hidden_states.view(-1, self.hidden_dim)
    router_logits = F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))
    weights, index = _picks(router_logits, self.top_k, score="sigmoid",
                            normalize="topk" if self.norm_topk_prob else "none",
                            scale=float(self.routed_scaling_factor), bias=self.e_score_correction_bias,
                            **_group_options(self))
    return router_logits, weights.to(router_logits.dtype), index


# --- top-k of the logits, softmax over the k picks --------------------------------------------------
# softmax over the k largest logits = softmax over all E, renormalized over its k largest: the same
# picks (softmax is monotonic) and the same weights up to float rounding, so normalize="topk".


def _gpt_oss_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """GPT-OSS: logits with the router's bias, top-k of the logits, softmax over the k picks in the
    logits' dtype."""
    router_logits = F.linear(hidden_states, self.weight, self.bias)
    weights, index = _picks(router_logits, self.top_k, normalize="topk")
    return router_logits, weights.to(router_logits.dtype), index


def _granite_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """GraniteMoE (and -Shared, -Hybrid, -SWA): float32 logits, top-k of them, softmax over the k
    picks, cast to the hidden states' dtype."""
    router_logits = F.linear(hidden_states, self.weight).float()
    weights, index = _picks(router_logits, self.top_k, normalize="topk")
    return router_logits, weights.type_as(hidden_states), index


def _aria_forward(self: Any, hidden_states: Tensor) -> RouterOutput:
    """Aria: top-k of the logits, softmax over the k picks in the logits' dtype."""
    router_logits = F.linear(hidden_states, self.weight)
    weights, index = _picks(router_logits, self.top_k, normalize="topk")
    return router_logits, weights.to(router_logits.dtype), index


MIXTRAL = RouterKind("softmax-topk", _mixtral_forward, _always, 'score="softmax", normalize="topk"; float32 weights')
QWEN = RouterKind("softmax-topk", _qwen_forward, _always,
                  'score="softmax", normalize="topk" if norm_topk_prob else "none"; weights in the logits\' dtype')
QWEN_VL = RouterKind("softmax-topk", _qwen_vl_forward, _always,
                     'score="softmax", normalize="topk"; weights in the logits\' dtype')
HUNYUAN = RouterKind("softmax-topk", _hunyuan_forward, _always,
                     'score="softmax", normalize="topk"; weights in the logits\' dtype')
JAMBA = RouterKind("softmax-topk", _jamba_forward, _always, 'score="softmax", normalize="none"')
ERNIE = RouterKind("softmax-bias", _ernie_forward, _always,
                   'score="softmax", bias=e_score_correction_bias, normalize="none", then / max(sum, moe_norm_min)')
DEEPSEEK = RouterKind("sigmoid-group", _deepseek_forward, _deepseek_unsupported,
                      'score="sigmoid", bias=e_score_correction_bias, num_groups=n_group, topk_groups=topk_group, '
                      'normalize="topk" if norm_topk_prob else "none", scale=routed_scaling_factor')
GPT_OSS = RouterKind("logits-topk-softmax", _gpt_oss_forward, _always,
                     'score="softmax", normalize="topk" (softmax over the k picks)')
GRANITE = RouterKind("logits-topk-softmax", _granite_forward, _always,
                     'score="softmax", normalize="topk" (softmax over the k picks)')
ARIA = RouterKind("logits-topk-softmax", _aria_forward, _always,
                  'score="softmax", normalize="topk" (softmax over the k picks)')

# (transformers module, router class) -> kind. Every class here has the forward of its kind's
# original, line for line, in transformers 5.24 (tests/test_hf.py checks each against moeroute).
ROUTERS: Dict[Tuple[str, str], RouterKind] = {}


def _register(kind: RouterKind, *classes: str) -> None:
    for dotted in classes:
        family, name = dotted.split(":")
        ROUTERS[(f"transformers.models.{family}.modeling_{family}", name)] = kind


_register(MIXTRAL, "mixtral:MixtralTopKRouter", "minimax:MiniMaxTopKRouter")
_register(QWEN, "qwen2_moe:Qwen2MoeTopKRouter", "qwen3_moe:Qwen3MoeTopKRouter", "qwen3_next:Qwen3NextTopKRouter",
          "olmoe:OlmoeTopKRouter", "flex_olmo:FlexOlmoTopKRouter", "mellum:MellumTopKRouter",
          "qwen3_omni_moe:Qwen3OmniMoeThinkerTextTopKRouter", "qwen3_omni_moe:Qwen3OmniMoeTalkerTextTopKRouter",
          "qwen4_exp:Qwen4ExpTextTopKRouter")
_register(QWEN_VL, "qwen3_vl_moe:Qwen3VLMoeTextTopKRouter", "qwen3_5_moe:Qwen3_5MoeTopKRouter")
_register(HUNYUAN, "hunyuan_v1_moe:HunYuanMoEV1Gate")
_register(JAMBA, "jamba:JambaTopKRouter")
_register(ERNIE, "ernie4_5_moe:Ernie4_5_MoeTopKRouter", "ernie4_5_vl_moe:Ernie4_5_VLMoeMoeTopKRouter")
_register(DEEPSEEK, "deepseek_v3:DeepseekV3TopkRouter", "glm4_moe:Glm4MoeTopkRouter", "dots1:Dots1TopkRouter",
          "glm4_moe_lite:Glm4MoeLiteTopkRouter", "glm4v_moe:Glm4vMoeTextTopkRouter", "glm5_next:Glm5NextTextTopkRouter",
          "glm_moe_dsa:GlmMoeDsaTopkRouter", "deepseek_v32:DeepseekV32TopkRouter", "kimi_linear:KimiLinearTopkRouter",
          "exaone_moe:ExaoneMoeTopkRouter", "solar_open:SolarOpenTopkRouter", "mimo_v2_flash:MiMoV2FlashTopkRouter",
          "bailing_hybrid:BailingHybridTopkRouter", "nemotron_h:NemotronHTopkRouter",
          "dots3_note:Dots3NoteTextTopkRouter",
          "hy_v4:HYV4TopkRouter", "hy_v4_vl:HYV4VLTopkRouter", "axk1:AXK1TopkRouter")
_register(GPT_OSS, "gpt_oss:GptOssTopKRouter")
_register(GRANITE, "granitemoe:GraniteMoeTopKRouter", "granitemoeshared:GraniteMoeSharedTopKRouter",
          "granitemoehybrid:GraniteMoeHybridTopKRouter", "granitemoe_swa:GraniteMoeSWATopKRouter")
_register(ARIA, "aria:AriaTextTopKRouter")


class MoerouteRouter(nn.Module):
    """Base of the patched router classes: a patched router is an instance of its original class
    (same parameters, buffers, state_dict keys and isinstance checks) whose forward runs moeroute.
    Pickles and deep-copies as a patched router again."""

    moeroute_original: type
    moeroute_kind: RouterKind

    def __reduce_ex__(self, protocol: Any) -> Any:
        reduced = list(super().__reduce_ex__(protocol))
        reduced[0], reduced[1] = _new_patched, (self.moeroute_original,)
        return tuple(reduced)


_PATCHED: Dict[type, type] = {}


def patched_class(original: type) -> type:
    """The patched twin of a recognised router class (made once): a subclass whose forward is its
    kind's. Raises KeyError for a class moeroute does not recognise."""
    patched = _PATCHED.get(original)
    if patched is None:
        kind = kind_of_class(original)
        if kind is None:
            raise KeyError(f"{original.__module__}.{original.__qualname__} is not a router moeroute recognises")
        namespace = {"forward": kind.forward, "moeroute_original": original, "moeroute_kind": kind,
                     "__module__": __name__, "__doc__": f"{original.__name__} computed with moeroute.route "
                                                        f"({kind.route_options})."}
        patched = _PATCHED[original] = type(f"Moeroute{original.__name__}", (MoerouteRouter, original), namespace)
    return patched


def _new_patched(original: type) -> Any:
    """Unpickling: an empty patched router of `original`'s twin (its state is set afterwards)."""
    return object.__new__(patched_class(original))


def kind_of_class(cls: type) -> Optional[RouterKind]:
    """The kind of a router class, by identity: the class transformers defines under that name in
    that module (a subclass, or a class of the same name elsewhere, is not recognised)."""
    kind = ROUTERS.get((cls.__module__, cls.__qualname__))
    if kind is None:
        return None
    module = importlib.import_module(cls.__module__)
    return kind if getattr(module, cls.__qualname__, None) is cls else None


def replace(module: nn.Module) -> Optional[str]:
    """Patches one router in place (its class becomes the patched twin). Returns None when done
    (or already patched), else why not: not a recognised router, or a configuration moeroute.route
    cannot compute exactly (it then stays as it is)."""
    if isinstance(module, MoerouteRouter):
        return None
    kind = kind_of_class(type(module))
    if kind is None:
        return "not a router moeroute recognises"
    reason = kind.unsupported(module)
    if reason is not None:
        return reason
    module.__class__ = patched_class(type(module))
    return None


def restore(module: nn.Module) -> None:
    """Undoes `replace`: the router runs its original forward again."""
    if isinstance(module, MoerouteRouter):
        module.__class__ = module.moeroute_original
