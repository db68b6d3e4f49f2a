"""moeroute.plot: matplotlib figures of routing over training — tokens per expert per step (lines or
a heatmap, with the capacity and the balanced level) and dropped picks per step — and of one
plan's tokens per expert. matplotlib is an optional extra: pip install "moeroute[plot]".

Each function takes what you record during training — a list of plans, of `MoE.stats`
(RoutingStats), of per-expert count arrays / tensors, or a (steps, E) array — draws on `ax` (a
new figure when None) and returns the matplotlib Figure. None of them picks a backend."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ._html import host

_INSTALL = ('moeroute.plot needs matplotlib, an optional extra: pip install "moeroute[plot]" '
            '(or pip install "moeroute[demo]", which includes it)')


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    return plt


def _axes(ax: Any, figsize: Tuple[float, float]) -> Tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = _pyplot().subplots(figsize=figsize)
    return fig, ax


def _counts(step: Any, field: str) -> np.ndarray:
    """One step's per-expert counts: a plan's or RoutingStats' `field`, or the array / tensor itself."""
    return host(getattr(step, field, step)).astype(np.float64).reshape(-1)


def load_matrix(load_per_step: Any, field: str = "tokens_per_expert") -> np.ndarray:
    """(steps, E) float64 counts from a (steps, E) array / tensor or a sequence of steps (plans,
    RoutingStats, or (E,) arrays / tensors); `field` picks kept ("tokens_per_expert") or
    before-capacity ("assigned_per_expert") counts from plans and stats."""
    if isinstance(load_per_step, np.ndarray) or hasattr(load_per_step, "detach"):
        counts = host(load_per_step).astype(np.float64)
        if counts.ndim != 2:
            raise ValueError(f"load_per_step: got shape {list(counts.shape)}, expected (steps, E)")
        return counts
    steps = [_counts(step, field) for step in load_per_step]
    if not steps:
        raise ValueError("load_per_step: no steps to plot")
    sizes = {s.shape[0] for s in steps}
    if len(sizes) != 1:
        raise ValueError(f"load_per_step: steps have different numbers of experts {sorted(sizes)}")
    return np.stack(steps)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The mean over each `window` consecutive rows of a (steps, ...) array ('valid' mode: steps -
    window + 1 rows)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1:
        return values
    csum = np.cumsum(np.concatenate([np.zeros((1,) + values.shape[1:]), values]), axis=0)
    averaged: np.ndarray = (csum[window:] - csum[:-window]) / window
    return averaged


def _capacity_of(steps: Any, capacity: Optional[float]) -> Optional[float]:
    """The capacity given, or else the one recorded in the last plan / RoutingStats (if any)."""
    if capacity is not None or isinstance(steps, np.ndarray) or hasattr(steps, "detach"):
        return capacity
    try:
        last = steps[-1]
    except (TypeError, IndexError, KeyError):
        return None
    return getattr(last, "capacity", None)


def plot_expert_load(load_per_step: Any, ax: Any = None, capacity: Optional[float] = None, *,
                     balanced: Optional[float] = None, smooth: Optional[int] = None, kind: str = "lines",
                     field: str = "tokens_per_expert", labels: Optional[Sequence[str]] = None) -> Any:
    """Tokens per expert over training steps: one line per expert, or a heatmap (experts x steps).

    Args:
        load_per_step: a (steps, E) array / tensor, or a sequence (one per step) of plans,
            `MoE.stats` (RoutingStats) or (E,) count arrays / tensors.
        ax: the matplotlib Axes to draw on (default: a new 9 x 4.5 in figure).
        capacity: draws a dotted line at this many rows per expert (default: the capacity of the
            last step, for plans and RoutingStats; none for a dropless layer).
        balanced: draws a dashed line at this level (e.g. tokens * top_k / E); default: the mean load.
        smooth: moving-average window in steps (default: min(10, steps // 5), at least 1).
        kind: "lines" or "heatmap".
        field: "tokens_per_expert" (kept picks) or "assigned_per_expert" (before capacity), for
            plans and RoutingStats.
        labels: one legend label per expert (default "expert e").

    Returns the Figure.
    """
    if kind not in ("lines", "heatmap"):
        raise ValueError(f"kind: got {kind!r}, expected 'lines' or 'heatmap'")
    counts = load_matrix(load_per_step, field)
    capacity = _capacity_of(load_per_step, capacity)
    num_steps, num_experts = counts.shape
    window = max(1, min(10, num_steps // 5)) if smooth is None else max(1, int(smooth))
    window = min(window, num_steps)
    smoothed = moving_average(counts, window)
    steps = np.arange(window, num_steps + 1)
    what = "kept" if field == "tokens_per_expert" else "assigned"
    per_step = f"tokens {what} per step" + (f" ({window}-step mean)" if window > 1 else "")
    if kind == "heatmap":
        fig, ax = _axes(ax, (9, max(2.5, min(8.0, 0.25 * num_experts + 1.5))))
        image = ax.imshow(smoothed.T, aspect="auto", interpolation="nearest", cmap="viridis", origin="lower",
                          extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, num_experts - 0.5))
        bar = fig.colorbar(image, ax=ax)
        bar.set_label(per_step)
        if capacity is not None:
            bar.ax.axhline(capacity, color="w", ls=":", lw=1.5)
        ax.set_ylabel("expert")
        ax.set_xlabel("training step")
        return fig
    fig, ax = _axes(ax, (9, 4.5))
    for e in range(num_experts):
        ax.plot(steps, smoothed[:, e], label=labels[e] if labels is not None else f"expert {e}", lw=1.4)
    level = float(counts.mean()) if balanced is None else float(balanced)
    ax.axhline(level, color="k", ls="--", lw=1, label="balanced")
    if capacity is not None:
        ax.axhline(capacity, color="k", ls=":", lw=1, label="capacity")
    ax.set_xlabel("training step")
    ax.set_ylabel(per_step)
    top = max(float(smoothed.max()) if smoothed.size else 0.0, level, float(capacity or 0.0), 1.0)
    ax.set_ylim(0, 1.08 * top)  # from 0, with the capacity line inside the axes
    if num_experts <= 16:
        ax.legend(ncol=5, fontsize=8, loc="lower right")
    return fig


def plot_drops(dropped_per_step: Any, ax: Any = None, picks: Optional[Any] = None, *,
               smooth: Optional[int] = None) -> Any:
    """Dropped picks per training step (raw, and a moving average).

    Args:
        dropped_per_step: a sequence of plans or `MoE.stats` (RoutingStats), or of counts.
        ax: the matplotlib Axes (default: a new 9 x 3 in figure).
        picks: the picks per step (a number, or one per step) to plot the dropped fraction in %
            instead of counts; default for plans and RoutingStats: the picks they assigned.
        smooth: moving-average window (default min(10, steps // 5), at least 1).

    Returns the Figure.
    """
    steps_in = list(dropped_per_step)
    if not steps_in:
        raise ValueError("dropped_per_step: no steps to plot")
    dropped = np.array([float(getattr(s, "num_dropped", s)) for s in steps_in])
    if picks is None and all(hasattr(s, "assigned_per_expert") for s in steps_in):
        picks = np.array([host(s.assigned_per_expert).sum() for s in steps_in], dtype=np.float64)
    values, label = dropped, "dropped picks"
    if picks is not None:
        total = np.broadcast_to(np.asarray(picks, dtype=np.float64), dropped.shape)
        values = np.divide(100.0 * dropped, total, out=np.zeros_like(dropped), where=total > 0)
        label = "dropped picks (%)"
    window = max(1, min(10, len(values) // 5)) if smooth is None else max(1, int(smooth))
    window = min(window, len(values))
    fig, ax = _axes(ax, (9, 3))
    x = np.arange(1, len(values) + 1)
    ax.plot(x, values, color="#e45756", alpha=0.35 if window > 1 else 1.0, lw=1, label="per step")
    if window > 1:
        ax.plot(np.arange(window, len(values) + 1), moving_average(values, window), color="#e45756", lw=1.8,
                label=f"{window}-step mean")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("training step")
    ax.set_ylabel(label)
    ax.set_ylim(bottom=0)
    return fig


def plot_tokens_per_expert(plan: Any, ax: Any = None, capacity: Optional[float] = None) -> Any:
    """One step's bar chart: kept picks per expert with the dropped ones stacked above, and the
    capacity line. `plan`: a plan, a RoutingStats, or an (E,) count array (then all kept)."""
    kept = _counts(plan, "tokens_per_expert")
    assigned = _counts(plan, "assigned_per_expert") if hasattr(plan, "assigned_per_expert") else kept
    if capacity is None:
        capacity = getattr(plan, "capacity", None)
    fig, ax = _axes(ax, (max(4.0, min(12.0, 0.35 * kept.shape[0] + 2)), 3))
    experts = np.arange(kept.shape[0])
    ax.bar(experts, kept, color="#4c78a8", label="kept")
    ax.bar(experts, np.maximum(assigned - kept, 0), bottom=kept, color="#e45756", label="dropped")
    if capacity is not None:
        ax.axhline(capacity, color="k", ls="--", lw=1, label="capacity")
    ax.set_xlabel("expert")
    ax.set_ylabel("picks")
    ax.legend(fontsize=8, loc="upper right")
    return fig
