"""The auxiliary losses on tensors, differentiable (probs and weights carry moeroute's autograd)."""

from __future__ import annotations

import torch

from ..errors import ArgumentError, ShapeError
from ..plan import RoutingPlan


def _cv_squared(values: torch.Tensor) -> torch.Tensor:
    mean = values.mean() if values.numel() else values.new_zeros(())
    safe = torch.where(mean == 0, torch.ones_like(mean), mean)
    return torch.where(mean == 0, torch.zeros_like(mean), values.var(unbiased=False) / (safe * safe))


def load_balancing_loss(plan: RoutingPlan) -> torch.Tensor:
    t, e, k = plan.num_tokens, plan.num_experts, plan.top_k
    if t == 0:
        return plan.probs.new_zeros(())
    f = plan.assigned_per_expert.to(plan.probs.dtype) / (t * k)
    return e * torch.dot(f, plan.probs.mean(dim=0))


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2:
        raise ShapeError(f"logits: got shape {list(logits.shape)}, expected a 2-D tensor")
    x = logits if logits.dtype == torch.float64 else logits.float()
    if x.shape[0] == 0:
        return x.new_zeros(())
    return torch.logsumexp(x, dim=1).square().mean()


def importance_loss(plan: RoutingPlan) -> torch.Tensor:
    ids = plan.expert_ids.reshape(-1).long()
    used = ids >= 0
    weights = plan.weights.reshape(-1)
    importance = weights.new_zeros(plan.num_experts).index_add(0, ids[used], weights[used])
    return _cv_squared(importance)


def noisy_load_probs(clean: torch.Tensor, noise_std, noisy: torch.Tensor, k: int) -> torch.Tensor:
    if clean.dim() != 2 or noisy.shape != clean.shape:
        raise ShapeError(f"noisy_logits: got shape {list(noisy.shape)}, expected {list(clean.shape)} (clean_logits, 2-D)")
    e = clean.shape[1]
    if not 1 <= k <= max(e, 1):
        raise ArgumentError(f"k: got {k}, expected an integer in [1, {e}] (the number of experts)")
    top = torch.topk(noisy, min(k + 1, e), dim=1).values
    kth = top[:, k - 1:k]
    nxt = top[:, k:k + 1] if k < e else torch.full_like(kth, float("-inf"))
    threshold = torch.where(noisy >= kth, nxt, kth)
    return torch.special.ndtr((clean - threshold) / noise_std)


def noisy_load_loss(clean: torch.Tensor, noise_std, noisy: torch.Tensor, k: int) -> torch.Tensor:
    return _cv_squared(noisy_load_probs(clean, noise_std, noisy, k).sum(dim=0))
