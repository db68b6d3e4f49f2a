"""The rich notebook display (`_repr_html_`) of a RoutingPlan and of the MoE layer's RoutingStats:
a summary (sizes, capacity, dropped picks, the key options) over an inline-SVG bar chart of the
picks each expert kept and dropped, with its capacity line, and the per-expert counts in a table.

Plain HTML with inline CSS and SVG: no JavaScript, no external resources, every text escaped; the
arrays may be NumPy arrays or torch tensors on any device (copied to the host)."""

from __future__ import annotations

import html
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

# At most this many bars: beyond it, the chart shows the MAX_BARS most loaded experts.
MAX_BARS = 64
# At most this many experts in the counts table (the rest summarized in one line).
MAX_TABLE_ROWS = 256

KEPT_COLOR = "#4c78a8"
DROPPED_COLOR = "#e45756"
CAPACITY_COLOR = "currentColor"  # (black on a light page, light on a dark one)

_BOX = ("font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Helvetica,Arial,sans-serif;"
        "font-size:13px;line-height:1.4;border:1px solid #8884;border-radius:6px;padding:8px 12px;"
        "margin:4px 0;display:inline-block;max-width:100%;overflow-x:auto")
_CELL = "padding:1px 10px 1px 0;text-align:left;border:none;white-space:nowrap"
_NUM = "padding:1px 8px;text-align:right;border:none;font-variant-numeric:tabular-nums"


def host(array: Any) -> np.ndarray:
    """A NumPy array of a plan field: a NumPy array as it is, a tensor (any device) copied to the host."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _framework(array: Any) -> str:
    if isinstance(array, np.ndarray):
        return f"NumPy {array.dtype}"
    dtype = str(getattr(array, "dtype", "")).replace("torch.", "")
    return f"torch {dtype} on {getattr(array, 'device', 'cpu')}"


def plan_html(plan: Any) -> str:
    """The HTML display of a RoutingPlan (NumPy or torch, any device)."""
    kept = host(plan.tokens_per_expert).astype(np.int64)
    assigned = host(plan.assigned_per_expert).astype(np.int64)
    expert_ids, dest = host(plan.expert_ids), host(plan.dest)
    dropped = int(((expert_ids >= 0) & (dest < 0)).sum())
    picks = int((expert_ids >= 0).sum())
    t, s, e, rows = plan.num_tokens, plan.num_slots, plan.num_experts, plan.num_rows
    facts = [
        ("tokens", f"{t:,}"),
        ("experts", f"{e:,}"),
        ("slots per token", f"{s}"),
        ("rows (permuted)", f"{rows:,}" + (f" ({rows - int(kept.sum()):,} padding)" if rows > kept.sum() else "")),
        ("capacity", _capacity_text(plan.capacity)),
        ("dropped picks", _dropped_text(dropped, picks)),
        ("load max / mean", _imbalance_text(kept)),
        ("score", plan.score),
        ("normalize", plan.normalize),
        ("scale", f"{plan.scale:g}"),
        ("weights", _framework(plan.weights)),
    ]
    return _render("RoutingPlan", facts, kept, assigned, plan.capacity)


def stats_html(stats: Any) -> str:
    """The HTML display of a moeroute.torch.RoutingStats (what an MoE layer's last forward did)."""
    kept = host(stats.tokens_per_expert).astype(np.int64)
    assigned = host(stats.assigned_per_expert).astype(np.int64)
    capacity = getattr(stats, "capacity", None)
    picks = int(assigned.sum())
    facts = [
        ("experts", f"{kept.shape[0]:,}"),
        ("picks", f"{picks:,} assigned, {int(kept.sum()):,} kept"),
        ("capacity", _capacity_text(capacity)),
        ("dropped picks", _dropped_text(int(stats.num_dropped), picks)),
        ("load max / mean", _imbalance_text(kept)),
        ("counts", _framework(stats.tokens_per_expert)),
    ]
    return _render("RoutingStats (last forward)", facts, kept, assigned, capacity)


def _capacity_text(capacity: Optional[int]) -> str:
    return "dropless" if capacity is None else f"{int(capacity):,} rows per expert"


def _dropped_text(dropped: int, picks: int) -> str:
    if picks == 0:
        return f"{dropped:,} of 0 picks"
    return f"{dropped:,} of {picks:,} picks ({100.0 * dropped / picks:.1f}%)"


def _imbalance_text(kept: np.ndarray) -> str:
    mean = float(kept.mean()) if kept.size else 0.0
    if mean == 0.0:
        return "- (no kept picks)"
    return f"{float(kept.max()) / mean:.2f} (1.00 is balanced)"


def _render(title: str, facts: Sequence[Tuple[str, str]], kept: np.ndarray, assigned: np.ndarray,
            capacity: Optional[int]) -> str:
    rows = "".join(f"<tr><th style='{_CELL};font-weight:600'>{html.escape(name)}</th>"
                   f"<td style='{_CELL}'>{html.escape(value)}</td></tr>" for name, value in facts)
    summary = f"<table style='border-collapse:collapse;margin:0 24px 4px 0;color:inherit;font-size:inherit'>{rows}</table>"
    chart = _chart(kept, assigned, capacity)
    return (f"<div class='moeroute-repr' style=\"{_BOX}\">"
            f"<div style='font-weight:700;font-size:14px;margin-bottom:4px'>{html.escape(title)}</div>"
            f"<div style='display:flex;flex-wrap:wrap;align-items:flex-start'>{summary}{chart}</div>"
            f"{_counts_table(kept, assigned)}</div>")


def _chart(kept: np.ndarray, assigned: np.ndarray, capacity: Optional[int]) -> str:
    """Inline SVG: per expert a bar of kept picks with the dropped picks stacked above it, and a
    dashed capacity line; for more than MAX_BARS experts, the MAX_BARS most loaded ones."""
    num = kept.shape[0]
    if num == 0:
        return "<div style='color:#888'>no experts</div>"
    shown = np.arange(num)
    note = ""
    if num > MAX_BARS:
        shown = np.sort(np.argsort(-assigned, kind="stable")[:MAX_BARS])
        note = (f"the {MAX_BARS} most loaded of {num:,} experts shown")
    k, a = kept[shown], np.maximum(assigned[shown], kept[shown])
    slot = float(min(44.0, max(7.0, 480.0 / len(shown))))
    left, top, plot_h, bottom = 44.0, 16.0, 120.0, 30.0
    width = left + slot * len(shown) + 96.0
    height = top + plot_h + bottom
    ymax = float(max(int(a.max()), int(capacity or 0), 1))

    def y(value: Any) -> float:
        return top + plot_h * (1.0 - float(value) / ymax)

    parts: List[str] = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
        f"viewBox='0 0 {width:.0f} {height:.0f}' role='img' style='font-size:10px;overflow:visible' "
        f"aria-label='tokens per expert'>",
        f"<line x1='{left:.1f}' y1='{top + plot_h:.1f}' x2='{left + slot * len(shown):.1f}' "
        f"y2='{top + plot_h:.1f}' stroke='#888' stroke-width='1'/>",
        _text(left - 4, top + 4, f"{int(ymax):,}", "end"),
        _text(left - 4, top + plot_h, "0", "end"),
        _text(8, top + plot_h / 2, "picks", "middle", rotate=True),
    ]
    if capacity is not None:
        yc = y(capacity)
        parts.append(f"<line x1='{left:.1f}' y1='{yc:.1f}' x2='{left + slot * len(shown):.1f}' y2='{yc:.1f}' "
                     f"stroke='{CAPACITY_COLOR}' stroke-width='1.2' stroke-dasharray='4 3'/>")
        parts.append(_text(left + slot * len(shown) + 4, yc + 3, f"capacity {int(capacity):,}", "start"))
    bar_w = max(slot * 0.78, slot - 3.0) if slot < 12 else slot * 0.78
    label_every = max(1, int(np.ceil(22.0 / slot)))
    for i, (expert, n_kept, n_assigned) in enumerate(zip(shown, k, a)):
        x = left + slot * i + (slot - bar_w) / 2
        tip = html.escape(f"expert {int(expert)}: {int(n_assigned):,} assigned, {int(n_kept):,} kept, "
                          f"{int(n_assigned - n_kept):,} dropped")
        parts.append(f"<g><title>{tip}</title>")
        if n_kept > 0:
            parts.append(f"<rect x='{x:.1f}' y='{y(n_kept):.1f}' width='{bar_w:.1f}' "
                         f"height='{y(0) - y(n_kept):.1f}' fill='{KEPT_COLOR}'/>")
        if n_assigned > n_kept:
            parts.append(f"<rect x='{x:.1f}' y='{y(n_assigned):.1f}' width='{bar_w:.1f}' "
                         f"height='{y(n_kept) - y(n_assigned):.1f}' fill='{DROPPED_COLOR}'/>")
        parts.append("</g>")
        cx = left + slot * (i + 0.5)
        if slot >= 26:  # the kept count above the bar, the dropped count inside its red part
            parts.append(_text(cx, y(n_assigned) - 3, f"{int(n_kept):,}", "middle"))
            if y(n_kept) - y(n_assigned) >= 13:
                parts.append(_text(cx, (y(n_kept) + y(n_assigned)) / 2 + 3.5, f"{int(n_assigned - n_kept):,}",
                                   "middle", fill="#fff"))
        if i % label_every == 0:
            parts.append(_text(cx, top + plot_h + 12, f"{int(expert)}", "middle"))
    parts.append(_text(left + slot * len(shown) / 2, top + plot_h + 25, "expert", "middle"))
    legend_x = left + slot * len(shown) + 6
    parts.append(f"<rect x='{legend_x:.1f}' y='{top + plot_h - 26:.1f}' width='9' height='9' fill='{KEPT_COLOR}'/>")
    parts.append(_text(legend_x + 13, top + plot_h - 18, "kept", "start"))
    if capacity is not None:
        parts.append(f"<rect x='{legend_x:.1f}' y='{top + plot_h - 12:.1f}' width='9' height='9' "
                     f"fill='{DROPPED_COLOR}'/>")
        parts.append(_text(legend_x + 13, top + plot_h - 4, "dropped", "start"))
    parts.append("</svg>")
    svg = "".join(parts)
    if note:
        svg = f"<div>{svg}<div style='color:#888;font-size:11px'>{html.escape(note)}</div></div>"
    return svg


def _text(x: float, y: float, text: str, anchor: str, rotate: bool = False, fill: str = "currentColor") -> str:
    transform = f" transform='rotate(-90 {x:.1f} {y:.1f})'" if rotate else ""
    return (f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}' fill='{fill}'{transform}>"
            f"{html.escape(text)}</text>")


def _counts_table(kept: np.ndarray, assigned: np.ndarray) -> str:
    """The per-expert counts (kept, assigned, dropped), folded in a <details> element."""
    num = kept.shape[0]
    if num == 0:
        return ""
    shown = min(num, MAX_TABLE_ROWS)

    def cells(values: np.ndarray) -> str:
        return "".join(f"<td style='{_NUM}'>{int(v):,}</td>" for v in values[:shown])

    more = f"<td style='{_NUM}'>… {num - shown:,} more</td>" if num > shown else ""
    head = "".join(f"<th style='{_NUM}'>{i}</th>" for i in range(shown))
    rows = [("expert", head + (f"<th style='{_NUM}'></th>" if more else "")),
            ("kept", cells(kept) + more),
            ("assigned", cells(assigned) + more),
            ("dropped", cells(assigned - kept) + more)]
    body = "".join(f"<tr><th style='{_CELL};font-weight:600'>{name}</th>{cols}</tr>" for name, cols in rows)
    return (f"<details style='margin-top:4px'><summary style='cursor:pointer'>tokens per expert "
            f"(kept / assigned / dropped)</summary><div style='overflow-x:auto'>"
            f"<table style='border-collapse:collapse;font-size:12px;color:inherit'>{body}</table></div></details>")
