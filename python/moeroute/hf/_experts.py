"""The "moeroute" experts backend of transformers' ExpertsInterface: the router's picks become a
moeroute plan (plan_from_topk), the tokens are permuted into expert segments, the experts run as
grouped matmuls over the segments, and combine sums each token's expert outputs with the routing
weights (float32 accumulation, deterministic)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from transformers.integrations.moe import ExpertsInterface, _default_apply_gate

from ..torch.experts import grouped_matmul, segment_loop
from ..torch.ops import combine, permute, plan_from_topk

Tensor = torch.Tensor

# The name users pass as `experts_implementation`.
NAME = "moeroute"


def moeroute_experts_forward(self: Any, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
    """The experts module's forward (`self` is a transformers experts module decorated with
    `use_experts_implementation`): hidden_states (N, H), top_k_index / top_k_weights (N, k)
    -> (N, H). Honours the flags the decorator sets: has_gate, has_bias, is_transposed,
    is_concatenated, has_post_expert_norm, the module's own _apply_gate and act_fn; ids >= num_experts
    (expert-parallel sentinels) contribute nothing."""
    plan = plan_from_topk(top_k_index, top_k_weights, self.num_experts)
    offsets = plan.expert_offsets
    rows = permute(hidden_states, plan)
    if self.has_gate:
        up = _grouped_linear(rows, self.gate_up_proj, offsets, _bias(self, "gate_up_proj_bias"), self.is_transposed)
        hidden = _gate(self, up)
    else:
        up = _grouped_linear(rows, self.up_proj, offsets, _bias(self, "up_proj_bias"), self.is_transposed)
        hidden = self.act_fn(up)
    out = _grouped_linear(hidden, self.down_proj, offsets, _bias(self, "down_proj_bias"), self.is_transposed)
    if self.has_post_expert_norm:
        out = self.post_expert_norm(out)
    y: Tensor = combine(out.to(hidden_states.dtype), plan)
    return y


def _bias(module: Any, name: str) -> Optional[Tensor]:
    bias: Optional[Tensor] = getattr(module, name) if module.has_bias else None
    return bias


def _grouped_linear(rows: Tensor, weight: Tensor, offsets: Tensor, bias: Optional[Tensor],
                    is_transposed: bool) -> Tensor:
    """rows (R, in) through each expert's linear layer on its segment: weight (E, in, out) when
    is_transposed, else (E, out, in); bias (E, out). Rows past the last segment come out as zeros
    (plus nothing: they are never combined)."""
    w = weight if is_transposed else weight.transpose(-2, -1)
    rows = rows.to(weight.dtype)
    if _few_rows_without_autograd(rows, weight):
        # (e.g. decoding: most experts have no row; torch's CPU grouped matmul visits every expert)
        out = segment_loop(rows, offsets, lambda e, segment: segment @ w[e], w.shape[-1])
    else:
        out = grouped_matmul(rows, w, offsets)
    if bias is not None:
        out = out + bias[_row_experts(offsets, out.shape[0])]
    return out


def _few_rows_without_autograd(rows: Tensor, weight: Tensor) -> bool:
    """Whether to run only the experts that have rows, one matmul each: on the CPU (where reading
    the segment offsets costs nothing), in eager mode, without autograd (the loop's backward would
    build a full-size weight gradient per expert), and with fewer rows than experts."""
    return (rows.device.type == "cpu" and rows.shape[0] < weight.shape[0] and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad)))


def _row_experts(offsets: Tensor, num_rows: int) -> Tensor:
    """The expert of each row (rows past the last segment: the last expert; they are unused)."""
    rows = torch.arange(num_rows, device=offsets.device, dtype=offsets.dtype)
    expert = torch.searchsorted(offsets[1:], rows, right=True)
    return expert.clamp_(max=offsets.shape[0] - 2)


def _gate(module: Any, gate_up: Tensor) -> Tensor:
    """The module's own _apply_gate, or transformers' default SwiGLU-style gate on the layout the
    decorator declares: [gate; up] halves (is_concatenated) or interleaved gate / up columns."""
    if type(module)._apply_gate is not _default_apply_gate or module.is_concatenated:
        gated: Tensor = module._apply_gate(gate_up)
        return gated
    out: Tensor = module.act_fn(gate_up[..., ::2]) * gate_up[..., 1::2]
    return out


def register() -> None:
    """Adds the backend to transformers' ExpertsInterface under NAME."""
    ExpertsInterface.register(NAME, moeroute_experts_forward)
