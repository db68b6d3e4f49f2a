"""The router's linear gate and the token rows that permute reads, as one autograd node: its
backward adds the gate's input gradient into permute's gradient with one BLAS accumulate
(addmm_), instead of autograd adding the two [T, H] gradients of the tokens in a pass of its own."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def gate_and_rows(tokens: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
    """(F.linear(tokens, weight), tokens for permute to read). On CPU in eager mode when autograd
    wants the tokens' gradient, both come from the fused node; otherwise they are exactly those
    two (with tokens that need no gradient, the rows must not need one either: permute's and the
    experts' input gradients would be computed for nothing).

    The second output must be read by permute alone (as MoE.forward does): the fused backward
    accumulates into permute's gradient of it in place, which is safe only because that gradient
    is a fresh tensor no one else holds."""
    fuse = torch.is_grad_enabled() and tokens.requires_grad and tokens.is_cpu
    if not fuse or torch.compiler.is_compiling():
        return F.linear(tokens, weight), tokens
    fused: Tuple[Tensor, Tensor] = _GateAndRows.apply(tokens, weight)
    return fused


class _GateAndRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tokens: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
        ctx.save_for_backward(tokens, weight)
        return F.linear(tokens, weight), tokens.view_as(tokens)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_logits: Optional[Tensor],
                 grad_rows: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        tokens, weight = ctx.saved_tensors
        need_tokens, need_weight = ctx.needs_input_grad
        grad_tokens = grad_weight = None
        if need_weight and grad_logits is not None:
            grad_weight = grad_logits.t().mm(tokens)
        if need_tokens:
            if grad_logits is None:
                grad_tokens = grad_rows
            elif grad_rows is None:
                grad_tokens = grad_logits.mm(weight)
            elif grad_rows.is_contiguous() and grad_rows.dtype == grad_logits.dtype:
                grad_tokens = grad_rows.addmm_(grad_logits, weight)  # (see gate_and_rows)
            else:
                grad_tokens = torch.addmm(grad_rows, grad_logits, weight)
        return grad_tokens, grad_weight
