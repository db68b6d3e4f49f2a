"""The auxiliary router losses, each formula written once for both fronts: a front passes its
arrays (already in the dtype it computes in) and `ops`, its few primitives (NumPy's or torch's),
and gets a 0-d result of its own kind (a float64 number, or a differentiable tensor)."""

from __future__ import annotations

from typing import Any, Protocol


class Primitives(Protocol):
    """What the formulas need of an array library."""

    def zero(self, like: Any) -> Any:
        """A 0-d zero of like's kind and dtype."""

    def column_means(self, x: Any) -> Any:
        """(n, m) -> (m,): the mean over rows."""

    def column_sums(self, x: Any) -> Any:
        """(n, m) -> (m,): the sum over rows."""

    def dot(self, a: Any, b: Any) -> Any: ...

    def mean(self, x: Any) -> Any: ...

    def variance(self, x: Any) -> Any:
        """The population variance (divided by n)."""

    def where(self, condition: Any, number: float, value: Any) -> Any:
        """`number` where condition (0-d), else value."""

    def row_logsumexp(self, x: Any) -> Any:
        """(n, m) -> (n,): log(sum(exp(x[i]))), stable; -inf for a row of -inf."""

    def per_expert_sum(self, expert_ids: Any, weights: Any, num_experts: int) -> Any:
        """(T, S) ids (-1: unused slot) and weights -> (E,): the sum of each expert's weights."""


def cv_squared(ops: Primitives, values: Any) -> Any:
    """Squared coefficient of variation: population variance / mean**2 (0 when the mean is 0)."""
    mean = ops.mean(values) if values.shape[0] else ops.zero(values)
    is_zero = mean == 0
    safe = ops.where(is_zero, 1.0, mean)
    return ops.where(is_zero, 0.0, ops.variance(values) / (safe * safe))


def load_balancing(ops: Primitives, assigned: Any, probs: Any, slots: int) -> Any:
    """Switch Transformer: E * sum_e f_e * P_e, f_e = assigned[e] / (T * S), P_e = mean_t probs[t, e];
    0 for T = 0 or S = 0. `assigned` and `probs` are in the dtype the loss is computed in."""
    t, e = probs.shape
    if t == 0 or slots == 0:  # (no picks: nothing to balance)
        return ops.zero(probs)
    return e * ops.dot(assigned / (t * slots), ops.column_means(probs))


def z_loss(ops: Primitives, logits: Any) -> Any:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits[t])**2; 0 for T = 0."""
    if logits.shape[0] == 0:
        return ops.zero(logits)
    lse = ops.row_logsumexp(logits)
    return ops.mean(lse * lse)


def importance(ops: Primitives, expert_ids: Any, weights: Any, num_experts: int) -> Any:
    """Shazeer et al. 2017: CV^2 of each expert's importance, the sum of its gate weights."""
    return cv_squared(ops, ops.per_expert_sum(expert_ids, weights, num_experts))


def noisy_load(ops: Primitives, load_probs: Any) -> Any:
    """Shazeer et al. 2017's load loss: CV^2 over experts of sum_t load_probs[t, e]."""
    return cv_squared(ops, ops.column_sums(load_probs))
