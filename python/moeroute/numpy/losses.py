"""The auxiliary router losses on NumPy plans and arrays (float64 math, Python floats out): the
formulas of moeroute._loss_formulas with NumPy's primitives; the noisy top-k load estimate runs in
the core."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import _core
from .. import _loss_formulas as formulas
from .._checks import check_top_k, integer
from ..errors import LogitsError, ShapeError
from ..plan import RoutingPlan
from ._convert import float_array

# The plans of this front: NumPy arrays.
NumpyPlan = RoutingPlan[NDArray[Any]]


class _NumPy:
    """NumPy's primitives for the loss formulas."""

    @staticmethod
    def zero(like: Any) -> Any:
        return np.float64(0.0)

    @staticmethod
    def column_means(x: NDArray[Any]) -> Any:
        return x.mean(axis=0)

    @staticmethod
    def column_sums(x: NDArray[Any]) -> Any:
        return x.sum(axis=0)

    dot = staticmethod(np.dot)

    @staticmethod
    def mean(x: NDArray[Any]) -> Any:
        return x.mean()

    @staticmethod
    def variance(x: NDArray[Any]) -> Any:
        return x.var()

    @staticmethod
    def where(condition: Any, number: float, value: Any) -> Any:
        return number if condition else value

    @staticmethod
    def row_logsumexp(x: NDArray[Any]) -> Any:
        m = x.max(axis=1, keepdims=True)
        finite_m = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return np.log(np.exp(x - finite_m).sum(axis=1)) + finite_m[:, 0]

    @staticmethod
    def per_expert_sum(expert_ids: NDArray[Any], weights: NDArray[Any], num_experts: int) -> NDArray[Any]:
        ids = expert_ids.reshape(-1)
        used = ids >= 0
        return np.bincount(ids[used], weights=weights.reshape(-1)[used].astype(np.float64), minlength=num_experts)


_OPS = _NumPy()


def load_balancing_loss(plan: NumpyPlan) -> float:
    """Switch Transformer's loss: E * sum_e f_e * P_e, f_e = assigned_per_expert[e] / (T * k),
    P_e = mean over tokens of probs[:, e]. 1.0 when perfectly balanced; 0.0 for T = 0.
    With a plan of tensors: a differentiable 0-d tensor (gradient through probs)."""
    return float(formulas.load_balancing(_OPS, plan.assigned_per_expert.astype(np.float64),
                                         plan.probs.astype(np.float64), plan.num_slots))


def z_loss(logits: ArrayLike) -> float:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits[t])**2 (float64 math; a
    differentiable tensor for tensor logits)."""
    x = float_array(logits, "logits", np.float64, ndim=2)
    if np.isnan(x).any():
        raise LogitsError("logits: NaN value")
    return float(formulas.z_loss(_OPS, x))


def importance_loss(plan: NumpyPlan) -> float:
    """Shazeer et al. 2017: CV^2 of each expert's importance, the sum of its gate weights."""
    return float(formulas.importance(_OPS, plan.expert_ids, plan.weights, plan.num_experts))


def noisy_load_probs(clean_logits: ArrayLike, noise_std: ArrayLike, noisy_logits: ArrayLike, k: int) -> NDArray[Any]:
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
    clean = float_array(clean_logits, "clean_logits", np.float64, ndim=2)
    noisy = float_array(noisy_logits, "noisy_logits", np.float64, ndim=2)
    if noisy.shape != clean.shape:
        raise ShapeError(f"noisy_logits: got shape {list(noisy.shape)}, expected {list(clean.shape)} (clean_logits)")
    k = integer(k, "k")
    check_top_k(k, clean.shape[1])
    std = np.asarray(noise_std, dtype=np.float64)
    try:
        std = np.ascontiguousarray(np.broadcast_to(std, clean.shape))
    except ValueError:
        raise ShapeError(f"noise_std: got shape {list(std.shape)}, expected a scalar or a shape broadcastable to {list(clean.shape)}") from None
    return _core.noisy_load_probs(clean, noisy, std, k)


def noisy_load_loss(clean_logits: ArrayLike, noise_std: ArrayLike, noisy_logits: ArrayLike, k: int) -> float:
    """Shazeer et al. 2017's load loss: CV^2 over experts of sum_t noisy_load_probs[t, e]."""
    return float(formulas.noisy_load(_OPS, noisy_load_probs(clean_logits, noise_std, noisy_logits, k)))


__all__ = ["load_balancing_loss", "z_loss", "importance_loss", "noisy_load_probs", "noisy_load_loss"]
