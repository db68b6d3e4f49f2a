"""Auxiliary router losses: Switch load balancing, ST-MoE z-loss, Shazeer's importance and load losses."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._arrays import float_array, integer, is_torch
from .errors import ArgumentError, LogitsError, ShapeError
from .plan import RoutingPlan


def _torch_losses():
    from .torch import _losses
    return _losses


def load_balancing_loss(plan: RoutingPlan) -> float:
    """Switch Transformer's loss: E * sum_e f_e * P_e, f_e = assigned_per_expert[e] / (T * k),
    P_e = mean over tokens of probs[:, e]. 1.0 when perfectly balanced; 0.0 for T = 0.
    With a plan of tensors: a differentiable 0-d tensor (gradient through probs)."""
    if is_torch(plan.probs):
        return _torch_losses().load_balancing_loss(plan)
    t, e, k = plan.num_tokens, plan.num_experts, plan.top_k
    if t == 0:
        return 0.0
    f = plan.assigned_per_expert.astype(np.float64) / (t * k)
    p = plan.probs.astype(np.float64).mean(axis=0)
    return float(e * np.dot(f, p))


def z_loss(logits: Any) -> float:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits[t])**2 (float64 math; a
    differentiable tensor for tensor logits)."""
    if is_torch(logits):
        return _torch_losses().z_loss(logits)
    x = float_array(logits, "logits", np.float64, ndim=2)
    if x.shape[0] == 0:
        return 0.0
    if np.isnan(x).any():
        raise LogitsError("logits: NaN value")
    m = x.max(axis=1, keepdims=True)
    finite_m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        lse = np.log(np.exp(x - finite_m).sum(axis=1)) + finite_m[:, 0]
    return float(np.mean(lse * lse))


def _cv_squared(values: np.ndarray) -> float:
    """Squared coefficient of variation: population variance / mean**2 (0 when the mean is 0)."""
    mean = values.mean() if values.size else 0.0
    if mean == 0:
        return 0.0
    return float(values.var() / (mean * mean))


def importance_loss(plan: RoutingPlan) -> float:
    """Shazeer et al. 2017: CV^2 of each expert's importance, the sum of its gate weights."""
    if is_torch(plan.weights):
        return _torch_losses().importance_loss(plan)
    ids = plan.expert_ids.reshape(-1)
    used = ids >= 0
    importance = np.bincount(ids[used], weights=plan.weights.reshape(-1)[used].astype(np.float64),
                             minlength=plan.num_experts)
    return _cv_squared(importance)


def noisy_load_probs(clean_logits: Any, noise_std: Any, noisy_logits: Any, k: int) -> np.ndarray:
    """Shazeer's smooth estimate of P(expert e is in token t's top k under fresh noise):
    Phi((clean[t,e] - kth_excluding(noisy[t], k, e)) / noise_std[t,e]).

    Args:
        clean_logits: (T, E) logits before noise.
        noise_std: positive scalar or array broadcastable to (T, E).
        noisy_logits: (T, E) the logits top-k was taken on.
        k: experts per token.

    Returns:
        (T, E) float64 probabilities (a differentiable tensor for tensor inputs).
    """
    if is_torch(clean_logits):
        return _torch_losses().noisy_load_probs(clean_logits, noise_std, noisy_logits, integer(k, "k"))
    clean = float_array(clean_logits, "clean_logits", np.float64, ndim=2)
    noisy = float_array(noisy_logits, "noisy_logits", np.float64, ndim=2)
    if noisy.shape != clean.shape:
        raise ShapeError(f"noisy_logits: got shape {list(noisy.shape)}, expected {list(clean.shape)} (clean_logits)")
    k = integer(k, "k")
    if not 1 <= k <= max(clean.shape[1], 1):
        raise ArgumentError(f"k: got {k}, expected an integer in [1, {clean.shape[1]}] (the number of experts)")
    std = np.asarray(noise_std, dtype=np.float64)
    try:
        std = np.ascontiguousarray(np.broadcast_to(std, clean.shape))
    except ValueError:
        raise ShapeError(f"noise_std: got shape {list(std.shape)}, expected a scalar or a shape broadcastable to {list(clean.shape)}") from None
    return _core.noisy_load_probs(clean, noisy, std, k)


def noisy_load_loss(clean_logits: Any, noise_std: Any, noisy_logits: Any, k: int) -> float:
    """Shazeer et al. 2017's load loss: CV^2 over experts of sum_t noisy_load_probs[t, e]."""
    if is_torch(clean_logits):
        return _torch_losses().noisy_load_loss(clean_logits, noise_std, noisy_logits, integer(k, "k"))
    probs = noisy_load_probs(clean_logits, noise_std, noisy_logits, k)
    return _cv_squared(probs.sum(axis=0))


__all__ = ["load_balancing_loss", "z_loss", "importance_loss", "noisy_load_probs", "noisy_load_loss"]
