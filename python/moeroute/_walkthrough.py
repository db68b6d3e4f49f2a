"""`python -m moeroute`: routes a realistic batch through the whole pipeline, prints what happened
and how long each stage took, and checks the results against a plain NumPy computation."""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import numpy as np

import moeroute

T_ = TypeVar("T_")


def timed(stages: Dict[str, float], name: str, fn: Callable[[], T_], repeat: int = 5) -> T_:
    """Runs fn once to warm up, then `repeat` times; records the median time."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    stages[name] = float(np.median(times))
    return result


def numpy_route(logits: np.ndarray, k: int, capacity: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized NumPy version of route(logits, k, capacity=C) with the defaults (softmax,
    normalize='topk', slot priority): returns expert_ids, kept-pick weights and dest."""
    t, e = logits.shape
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    # Stable sort on -probs keeps the lower expert first among ties.
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(probs, ids, axis=1)
    weights = picked / picked.sum(axis=1, keepdims=True)
    # Slot priority: rank of each pick among its expert's picks in (slot, token) order.
    order = ids.T.reshape(-1)
    rank_in_order = np.empty_like(order)
    for expert in range(e):
        where = np.flatnonzero(order == expert)
        rank_in_order[where] = np.arange(where.size)
    kept = (rank_in_order < capacity).reshape(k, t).T
    # Rows: kept picks of each expert in ascending token order.
    dest = np.full((t, k), -1, np.int64)
    for expert in range(e):
        tok, slot = np.nonzero((ids == expert) & kept)
        dest[tok, slot] = expert * capacity + np.arange(tok.size)
    return ids, np.where(kept, weights, 0.0), dest


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moeroute", description=__doc__,
        epilog="python -m moeroute demo [--help]: train a small MoE classifier on the digits dataset with "
               'moeroute.torch.MoE (needs pip install "moeroute[demo]").')
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t, h, e, k = args.tokens, args.hidden, args.experts, args.top_k

    rng = np.random.default_rng(args.seed)
    # Realistic router logits: tokens cluster around a few directions, so some experts are popular.
    centers = rng.standard_normal((8, e)) * 0.6
    logits = (centers[rng.integers(0, 8, t)] + rng.standard_normal((t, e))).astype(np.float32)
    x = rng.standard_normal((t, h)).astype(np.float32)
    expert_scale = (1.0 + np.arange(e, dtype=np.float32) / e)[:, None]

    print(f"moeroute {moeroute.__version__}: T={t} tokens, H={h}, E={e} experts, k={k}, "
          f"capacity_factor={args.capacity_factor}, {moeroute.get_num_threads()} threads")
    stages: Dict[str, float] = {}
    plan = timed(stages, "route", lambda: moeroute.route(logits, k, capacity_factor=args.capacity_factor))
    xp = timed(stages, "permute", lambda: moeroute.permute(x, plan))

    def experts() -> np.ndarray:
        # A stand-in expert per segment: expert e multiplies its rows by 1 + e/E.
        yp: np.ndarray = np.empty_like(xp)
        for expert in range(e):
            lo, hi = plan.expert_offsets[expert], plan.expert_offsets[expert + 1]
            yp[lo:hi] = xp[lo:hi] * expert_scale[expert]
        return yp

    yp = timed(stages, "experts (NumPy)", experts)
    y = timed(stages, "combine", lambda: moeroute.combine(yp, plan))

    print(plan)
    counts = plan.tokens_per_expert
    print(f"tokens per expert (kept): min {counts.min()}, mean {counts.mean():.1f}, max {counts.max()}; "
          f"capacity {plan.capacity}")
    print(f"assigned per expert (before capacity): max {plan.assigned_per_expert.max()} on expert "
          f"{int(plan.assigned_per_expert.argmax())}")
    print(f"dropped picks: {plan.num_dropped} of {t * k} ({100.0 * plan.num_dropped / (t * k):.2f}%)")
    print(f"load-balancing loss {moeroute.losses.load_balancing_loss(plan):.4f} (1.0 is perfectly balanced), "
          f"z-loss {moeroute.losses.z_loss(logits):.3f}")
    print("stage times (median of 5 warm runs):")
    for name, seconds in stages.items():
        print(f"  {name:<16} {seconds * 1e3:8.2f} ms")

    assert plan.capacity is not None  # (routed with a capacity factor)
    ids, weights, dest = numpy_route(logits, k, plan.capacity)
    picks_ok = np.array_equal(ids, plan.expert_ids) and np.array_equal(dest, plan.dest)
    weights_ok = np.allclose(weights, plan.weights, rtol=1e-5, atol=1e-6)
    ref_y = np.zeros((t, h), np.float64)
    for slot in range(k):
        kept = dest[:, slot] >= 0
        expert = ids[kept, slot]
        ref_y[kept] += weights[kept, slot, None] * x[kept] * expert_scale[expert]
    y_ok = np.allclose(y, ref_y, rtol=1e-4, atol=1e-5)
    print(f"check against NumPy: picks and rows {'ok' if picks_ok else 'MISMATCH'}, "
          f"weights {'ok' if weights_ok else 'MISMATCH'}, output {'ok' if y_ok else 'MISMATCH'}")
    return 0 if picks_ok and weights_ok and y_ok else 1
