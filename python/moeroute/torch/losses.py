"""The auxiliary router losses on tensor plans and tensors, differentiable (probs and weights carry
moeroute's autograd): the formulas of moeroute._loss_formulas with torch's primitives; the noisy
top-k load estimate in torch ops."""

from __future__ import annotations

from typing import Union

import torch

from .. import _loss_formulas as formulas
from .._checks import check_top_k, integer
from ..errors import ShapeError
from ..plan import RoutingPlan

Tensor = torch.Tensor
# The plans of this front: tensors.
TensorPlan = RoutingPlan[Tensor]


class _Torch:
    """torch's primitives for the loss formulas."""

    @staticmethod
    def zero(like: Tensor) -> Tensor:
        return like.new_zeros(())

    @staticmethod
    def column_means(x: Tensor) -> Tensor:
        return x.mean(dim=0)

    @staticmethod
    def column_sums(x: Tensor) -> Tensor:
        return x.sum(dim=0)

    dot = staticmethod(torch.dot)

    @staticmethod
    def mean(x: Tensor) -> Tensor:
        return x.mean()

    @staticmethod
    def variance(x: Tensor) -> Tensor:
        return x.var(unbiased=False)

    @staticmethod
    def where(condition: Tensor, number: float, value: Tensor) -> Tensor:
        return torch.where(condition, torch.full_like(value, number), value)

    @staticmethod
    def row_logsumexp(x: Tensor) -> Tensor:
        return torch.logsumexp(x, dim=1)

    @staticmethod
    def per_expert_sum(expert_ids: Tensor, weights: Tensor, num_experts: int) -> Tensor:
        ids = expert_ids.reshape(-1).long()
        used = ids >= 0
        flat = weights.reshape(-1)
        return flat.new_zeros(num_experts).index_add(0, ids[used], flat[used])


_OPS = _Torch()


def load_balancing_loss(plan: TensorPlan) -> Tensor:
    """Switch Transformer's loss (see moeroute.losses.load_balancing_loss), a 0-d tensor
    differentiable through plan.probs."""
    probs = plan.probs
    loss: Tensor = formulas.load_balancing(_OPS, plan.assigned_per_expert.to(probs.dtype), probs, plan.num_slots)
    return loss


def z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits[t])**2 (float32 math, float64
    for float64 logits)."""
    if logits.dim() != 2:
        raise ShapeError(f"logits: got shape {list(logits.shape)}, expected a 2-D tensor")
    loss: Tensor = formulas.z_loss(_OPS, logits if logits.dtype == torch.float64 else logits.float())
    return loss


def importance_loss(plan: TensorPlan) -> Tensor:
    """Shazeer et al. 2017: CV^2 of each expert's importance, the sum of its gate weights."""
    loss: Tensor = formulas.importance(_OPS, plan.expert_ids, plan.weights, plan.num_experts)
    return loss


def noisy_load_probs(clean_logits: Tensor, noise_std: Union[float, Tensor], noisy_logits: Tensor, k: int) -> Tensor:
    """Shazeer's smooth estimate of P(expert e is in token t's top k under fresh noise), as in
    moeroute.losses.noisy_load_probs, differentiable."""
    clean, noisy = clean_logits, noisy_logits
    if clean.dim() != 2 or noisy.shape != clean.shape:
        raise ShapeError(f"noisy_logits: got shape {list(noisy.shape)}, expected {list(clean.shape)} (clean_logits, 2-D)")
    k = integer(k, "k")
    e = clean.shape[1]
    check_top_k(k, e)
    top = torch.topk(noisy, min(k + 1, e), dim=1).values
    kth = top[:, k - 1:k]
    nxt = top[:, k:k + 1] if k < e else torch.full_like(kth, float("-inf"))
    threshold = torch.where(noisy >= kth, nxt, kth)
    probs: Tensor = torch.special.ndtr((clean - threshold) / noise_std)
    return probs


def noisy_load_loss(clean_logits: Tensor, noise_std: Union[float, Tensor], noisy_logits: Tensor, k: int) -> Tensor:
    """Shazeer et al. 2017's load loss: CV^2 over experts of sum_t noisy_load_probs[t, e]."""
    loss: Tensor = formulas.noisy_load(_OPS, noisy_load_probs(clean_logits, noise_std, noisy_logits, k))
    return loss


__all__ = ["load_balancing_loss", "z_loss", "importance_loss", "noisy_load_probs", "noisy_load_loss"]
