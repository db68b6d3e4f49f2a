"""Benchmark moeroute's PyTorch front against plain PyTorch eager, all in one run:

(A) each op forward + backward on CPU tensors (route, permute, combine) against the fastest of a
    few PyTorch-eager formulations of the same op;
(B) a whole MoE layer (router, SwiGLU experts, combine) forward + backward at equal weights:
    moeroute.torch.MoE against (a) the per-expert loop with index_add_, (b) the grouped-matmul
    formulation transformer libraries ship (softmax + topk, stable argsort, gather, grouped_mm,
    scatter back, weighted sum) and (c) the compute floor: the two grouped-matmul stages alone;
(C) the per-call overhead of the torch front over the raw Rust kernel at a tiny size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import moeroute
from compare import cpu_model  # benches/compare.py, beside this script
from moeroute import _core
from moeroute.torch import MoE
from moeroute.torch._ops import permute_shared
from moeroute.torch.experts import matmul_dtype

GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Agreement: |got - want| <= RTOL * (|want| + RMS(want)) elementwise, since sums (matmuls,
# combine, weight gradients) err relative to the size of their terms, not of each result element;
# and RMS(got - want) <= RMS_TOL * RMS(want). bfloat16 results are checked against float32 on the
# same values: bfloat16 rounding alone gives RMS errors ~5e-3 and rare weight-gradient elements
# ~0.2 RMS off (in every formulation alike), so its elementwise bound only catches gross errors.
RTOL = {"float32": 1e-4, "bfloat16": 0.5}
RMS_TOL = {"bfloat16": 2e-2}
OVERHEAD_TARGET_US = 30.0  # torch front us - raw kernel us, per op call


# -------------------------------------------------------------------------------------- timing

@dataclass
class Formulation:
    """One way to compute something: `run(*setup())`, of which only `run` is timed."""

    name: str
    run: Callable[..., Any]
    setup: Callable[[], tuple] = tuple


def run_once(f: Formulation) -> tuple[float, Any]:
    """(wall ms, result) of one call; the result stays alive until the clock stops."""
    args = f.setup()
    start = time.perf_counter()
    result = f.run(*args)
    return (time.perf_counter() - start) * 1e3, result


def measure(formulations: Sequence[Formulation], repeat: int) -> dict[str, list[float]]:
    """Wall-time samples (ms) of each formulation, taken in rounds of one call each, the order
    reversed every other round: the noise and drift of a shared machine fall on all of them alike,
    and neighbours in the list always run back to back (sample i of each is one round's).
    The caller has warmed every formulation up."""
    samples: dict[str, list[float]] = {f.name: [] for f in formulations}
    for i in range(repeat):
        for f in formulations if i % 2 == 0 else formulations[::-1]:
            ms, result = run_once(f)
            del result
            samples[f.name].append(ms)
    return samples


def timing_entry(samples: list[float]) -> dict:
    return {"median_ms": statistics.median(samples), "samples_ms": samples}


def paired_ratio(num: list[float], den: list[float]) -> dict:
    """num / den from paired samples (taken in the same rounds): the median of the per-round
    ratios, which cancels the machine's drift between rounds, with its quartiles."""
    ratios = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2],
            "of_medians": statistics.median(num) / statistics.median(den), "ratios": ratios}


def per_call_us(fns: dict[str, Callable[[], Any]], calls: int,
                repeat: int) -> dict[str, list[float]]:
    """Per function, `repeat` samples of the mean wall time (us) of one call in a batch of
    `calls`; the functions' batches alternate, so sample i of each saw the same machine."""
    for fn in fns.values():
        for _ in range(max(calls // 10, 10)):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) * 1e6 / calls)
    return samples


# ---------------------------------------------------------------------------------- agreement

def as_float64(t: Any) -> np.ndarray:
    if isinstance(t, (list, tuple)):
        t = torch.stack(list(t))
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def compare(got: Any, want: Any, rtol: float, rms_tol: float | None = None) -> dict:
    """How far got is from want: max |diff| / RMS(want), RMS(diff) / RMS(want), and a one-line
    mismatch summary, None if they agree: |diff| <= rtol * (|want| + RMS(want)) elementwise and,
    with rms_tol, RMS(diff) <= rms_tol * RMS(want). Integers (rtol 0) must match exactly."""
    a, b = as_float64(got), as_float64(want)
    if a.size != b.size:
        return {"max_rel_rms": math.inf, "rms_rel": math.inf,
                "mismatch": f"shape {list(a.shape)} vs {list(b.shape)}"}
    a = a.reshape(b.shape)
    rms = float(np.sqrt(np.mean(np.square(b)))) if b.size else 0.0
    diff = np.abs(a - b)
    scale = rms if rms > 0 else 1.0
    worst = float(diff.max(initial=0.0)) / scale
    rms_rel = float(np.sqrt(np.mean(np.square(diff)))) / scale if b.size else 0.0
    bad = diff > rtol * (np.abs(b) + rms)
    why = None
    if bad.any():
        first = np.unravel_index(np.argmax(bad), bad.shape)
        why = (f"{int(bad.sum())} of {bad.size} elements differ by > {rtol:g} * (|ref| + RMS) "
               f"(max |diff| / RMS {worst:.3g}); first at {tuple(map(int, first))}: "
               f"{a[first]:.6g} vs {b[first]:.6g}")
    elif rms_tol is not None and rms_rel > rms_tol:
        why = f"RMS(diff) / RMS(ref) {rms_rel:.3g} > {rms_tol:g}"
    return {"max_rel_rms": worst, "rms_rel": rms_rel, "mismatch": why}


def compare_fields(got: dict, want: dict, rtol: float, rms_tol: float | None = None) -> dict:
    """compare() per field of want; integer fields exactly."""
    out = {}
    for name, ref in want.items():
        is_float = not isinstance(ref, torch.Tensor) or ref.is_floating_point()
        out[name] = compare(got[name], ref, rtol if is_float else 0.0,
                            rms_tol if is_float else None)
    return out


def mismatch_lines(where: str, fields: dict) -> list[str]:
    return [f"{where} {name}: {f['mismatch']}" for name, f in fields.items() if f["mismatch"]]


# ------------------------------------------------------------------------------- allocator

def reuse_freed_memory() -> str:
    """Makes glibc's malloc keep freed memory for reuse: every block comes from its heap
    (mallopt M_MMAP_MAX = 0) and the heap is never trimmed (M_TRIM_THRESHOLD = max), as
    PyTorch's CPU tuning advice gets by preloading jemalloc / tcmalloc. By default glibc maps
    each block over 32 MiB afresh and unmaps it on free, so every large tensor pays its page
    faults anew: at S that is ~250,000 faults and 0.6 s of kernel time per floor call, varying
    from call to call, which makes timings noisy and measures the OS rather than the layer.
    The same for every formulation; returns what was done, for the report."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_max = -1, -4
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    return "reuse (glibc mallopt)" if ok else "system (mallopt unavailable)"


# ------------------------------------------------------------------------------ huge pages

THP_ENV = "THP_MEM_ALLOC_ENABLE"


def kernel_thp_mode() -> str:
    """The kernel's transparent-huge-page mode (always / madvise / never), or "unknown"."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            text = fh.read()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else "unknown"


def huge_page_kib() -> int | None:
    """KiB of this process's memory on transparent huge pages (Linux), else None."""
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def apply_torch_hugepages(choice: str) -> None:
    """--torch-hugepages on: PyTorch's own THP_MEM_ALLOC_ENABLE=1, which makes its CPU allocator
    align blocks of 2 MiB or more to 2 MiB and madvise them onto transparent huge pages (the
    kernel's default "madvise" mode gives them only to memory asked for so; NumPy asks for its
    large arrays by itself). Gathers (moeroute's, and (b)'s index_select / index_copy) read and
    write rows all over [T*k, H] tensors: on 4 KiB pages that is a TLB miss every couple of rows.
    The same for every formulation. PyTorch reads the variable once, at its first CPU allocation,
    which importing torch already made, so a choice that differs from the environment re-runs
    this script with the variable set or removed."""
    want = "1" if choice == "on" else None
    if os.environ.get(THP_ENV) == want:
        return
    env = dict(os.environ)
    if want is None:
        env.pop(THP_ENV, None)
    else:
        env[THP_ENV] = want
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


# ------------------------------------------------------------------------------------- inputs

def distinct_logits(gen: torch.Generator, tokens: int, experts: int) -> torch.Tensor:
    """[T, E] float32 logits whose rows are random permutations of E distinct values
    (i - E/2) / 16: exact in bfloat16 for E <= 512 and far apart, so top-k is unambiguous and
    torch.topk's unspecified tie order cannot cause a false disagreement."""
    grid = (torch.arange(experts, dtype=torch.float32) - experts // 2) / 16
    order = torch.rand(tokens, experts, generator=gen).argsort(dim=1)
    return grid[order]


def normal(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


# ------------------------------------------------------------------------- (A) ops fwd + bwd

@dataclass
class OpInputs:
    """Tensors every op runs on, and index layouts derived from moeroute's plan for torch's
    permute / combine (O(T*k), built outside the timed region: this favours torch)."""

    logits: torch.Tensor  # [T, E] float32
    grad_weights: torch.Tensor  # [T, k] float32
    x: torch.Tensor  # [T, H]
    grad_xp: torch.Tensor  # [R, H]
    yp: torch.Tensor  # [R, H]
    grad_y: torch.Tensor  # [T, H]
    plan: Any  # moeroute.route(logits, k) (tensors), dropless
    src: torch.Tensor  # [R] int64: token of each row
    dest: torch.Tensor  # [T*k] int64: row of each (token, slot)
    order: torch.Tensor  # [R] int64: token * k + slot of each row
    weights: torch.Tensor  # [T, k] float32, the plan's combine weights
    top_k: int


def make_op_inputs(args: argparse.Namespace, seed: int = 0) -> OpInputs:
    gen = torch.Generator().manual_seed(seed)
    t, h, e, k = args.tokens, args.hidden, args.experts, args.top_k
    logits = distinct_logits(gen, t, e)
    plan = moeroute.route(logits, k)
    dest = plan.dest.flatten().long()
    order = torch.empty_like(dest)
    order[dest] = torch.arange(dest.numel())
    return OpInputs(
        logits=logits, grad_weights=normal(gen, t, k), x=normal(gen, t, h),
        grad_xp=normal(gen, t * k, h), yp=normal(gen, t * k, h), grad_y=normal(gen, t, h),
        plan=plan, src=plan.src.long(), dest=dest, order=order,
        weights=plan.weights.clone(), top_k=k)


def plan_fields(ids, weights, probs, src, dest, offsets) -> dict:
    return {"expert_ids": ids, "weights": weights, "probs": probs, "src": src,
            "dest": dest.reshape(ids.shape), "expert_offsets": offsets}


def torch_plan_indices(ids: torch.Tensor, experts: int) -> tuple[torch.Tensor, ...]:
    """(src, dest, expert_offsets) of a dropless plan: stable sort of the flattened expert ids."""
    with torch.no_grad():
        flat = ids.flatten()
        order = torch.argsort(flat, stable=True)  # row -> token * k + slot
        dest = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
        counts = torch.bincount(flat, minlength=experts)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return order // ids.shape[1], dest, offsets


def route_formulations(inp: OpInputs) -> list[Formulation]:
    k, experts = inp.top_k, inp.logits.shape[1]
    gw = inp.grad_weights

    def moeroute_run(logits):
        plan = moeroute.route(logits, k)
        (grad,) = torch.autograd.grad(plan.weights, logits, gw)
        return {**plan_fields(plan.expert_ids, plan.weights, plan.probs, plan.src, plan.dest,
                              plan.expert_offsets), "grad_logits": grad}

    def softmax_topk(logits):  # HF Mixtral / Qwen-MoE: softmax, top-k of probs, renormalize
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        picked, ids = torch.topk(probs, k, dim=-1)
        weights = picked / picked.sum(dim=-1, keepdim=True)
        (grad,) = torch.autograd.grad(weights, logits, gw)
        return {**plan_fields(ids, weights, probs, *torch_plan_indices(ids, experts)),
                "grad_logits": grad}

    def topk_softmax(logits):  # top-k of logits, softmax over the k picks (the same weights)
        top, ids = torch.topk(logits, k, dim=-1)
        weights = torch.softmax(top, dim=-1, dtype=torch.float32)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        (grad,) = torch.autograd.grad(weights, logits, gw)
        return {**plan_fields(ids, weights, probs, *torch_plan_indices(ids, experts)),
                "grad_logits": grad}

    setup = lambda: (leaf(inp.logits),)  # noqa: E731
    return [Formulation("moeroute", moeroute_run, setup),
            Formulation("softmax+topk+renorm+argsort", softmax_topk, setup),
            Formulation("topk+softmax(k)+argsort", topk_softmax, setup)]


def permute_formulations(inp: OpInputs) -> list[Formulation]:
    plan, src, g = inp.plan, inp.src, inp.grad_xp

    def grads(xp, x):
        return {"xp": xp, "grad_x": torch.autograd.grad(xp, x, g)[0]}

    setup = lambda: (leaf(inp.x),)  # noqa: E731
    return [Formulation("moeroute", lambda x: grads(moeroute.permute(x, plan), x), setup),
            Formulation("index_select", lambda x: grads(x.index_select(0, src), x), setup),
            Formulation("x[src]", lambda x: grads(x[src], x), setup)]


def combine_formulations(inp: OpInputs) -> list[Formulation]:
    plan, dest, src, order, g = inp.plan, inp.dest, inp.src, inp.order, inp.grad_y
    tokens, k = inp.weights.shape

    def grads(y, yp, w):
        grad_yp, grad_w = torch.autograd.grad(y, (yp, w), g)
        return {"y": y, "grad_yp": grad_yp, "grad_weights": grad_w}

    def picked(yp):
        return yp.index_select(0, dest).view(tokens, k, -1)

    def bmm(yp, w):
        return grads(torch.bmm(w.view(tokens, 1, k), picked(yp)).view(tokens, -1), yp, w)

    def mul_sum(yp, w):
        return grads((picked(yp) * w[:, :, None]).sum(1), yp, w)

    def index_add(yp, w):
        rows = yp * w.flatten().index_select(0, order)[:, None]
        return grads(yp.new_zeros(tokens, yp.shape[1]).index_add(0, src, rows), yp, w)

    setup = lambda: (leaf(inp.yp), leaf(inp.weights))  # noqa: E731
    return [Formulation("moeroute", lambda yp, w: grads(moeroute.combine(yp, plan, w), yp, w),
                        setup),
            Formulation("gather+bmm", bmm, setup),
            Formulation("gather+mul+sum", mul_sum, setup),
            Formulation("row-weights+index_add", index_add, setup)]


def bench_ops(args: argparse.Namespace) -> dict:
    inp = make_op_inputs(args)
    results = {}
    for op, build in (("route", route_formulations), ("permute", permute_formulations),
                      ("combine", combine_formulations)):
        formulations = build(inp)
        ours = run_once(formulations[0])[1]  # also the warm-up
        checks = {}
        for f in formulations[1:]:
            _, theirs = run_once(f)  # also the warm-up
            checks[f.name] = compare_fields(ours, theirs, RTOL["float32"])
            del theirs
        del ours
        samples = measure(formulations, args.op_repeat)
        ours_ms = statistics.median(samples["moeroute"])
        torch_names = [f.name for f in formulations[1:]]
        best = min(torch_names, key=lambda n: statistics.median(samples[n]))
        results[op] = {
            "moeroute": timing_entry(samples["moeroute"]),
            "torch": {n: {**timing_entry(samples[n]), "agreement": checks[n]}
                      for n in torch_names},
            "best_torch": best,
            "speedup": statistics.median(samples[best]) / ours_ms,
        }
    return results


def print_ops(args: argparse.Namespace, ops: dict) -> None:
    print(f"(A) ops, forward + backward, float32 tensors: T={args.tokens} H={args.hidden} "
          f"E={args.experts} k={args.top_k} R={args.tokens * args.top_k}; median of "
          f"{args.op_repeat} after warm-up")
    rows = []
    for op, r in ops.items():
        for i, (name, t) in enumerate(r["torch"].items()):
            ok = all(f["mismatch"] is None for f in t["agreement"].values())
            worst = max(f["max_rel_rms"] for f in t["agreement"].values())
            rows.append((op if i == 0 else "", f"{r['moeroute']['median_ms']:.2f}" if i == 0
                         else "", name + (" *" if name == r["best_torch"] else ""),
                         f"{t['median_ms']:.2f}", f"{t['median_ms'] / r['moeroute']['median_ms']:.2f}",
                         f"{worst:.1e} {'ok' if ok else 'MISMATCH'}"))
    print_table(("op", "moeroute ms", "torch formulation", "torch ms", "torch/moeroute",
                 "max|diff|/RMS"), rows)
    print("route: plan + grad of weights to logits; permute: xp + grad to x; combine: y + grads "
          "to yp and weights.\n* = fastest torch formulation; torch/moeroute > 1: moeroute faster.\n")


# ------------------------------------------------------------------------ (B) the MoE layer

@dataclass(frozen=True)
class LayerShape:
    name: str
    tokens: int
    hidden: int
    ffn: int
    experts: int
    top_k: int

    def scaled(self, divisor: int) -> LayerShape:
        """The shape at T / divisor, but T >= 2 E."""
        return LayerShape(self.name, max(self.tokens // divisor, 2 * self.experts), self.hidden,
                          self.ffn, self.experts, self.top_k)

    def expert_flops(self) -> float:
        """Multiply-adds * 2 of the experts' forward + backward (3 matmuls, 3x for backward)."""
        return 2.0 * 9 * self.tokens * self.top_k * self.hidden * self.ffn


SHAPES = {"S": LayerShape("S", 16384, 512, 256, 64, 4),
          "L": LayerShape("L", 4096, 1024, 2816, 8, 2)}
# moeroute ms / floor ms must be <= "floor"; (b) ms / moeroute ms must be >= "grouped".
LAYER_TARGETS = {"S": {"floor": 1.08, "grouped": 1.1}, "L": {"floor": 1.03}}
# bfloat16 shapes run at T / this by default: torch's bfloat16 matmuls run at ~1-3 GFLOP/s on
# CPUs without AVX512-BF16 / AMX (~50x below float32), which full shapes cannot afford here.
BF16_TOKEN_DIVISOR = {"S": 16, "L": 64}
PARAMS = ("router", "w_gate", "w_up", "w_down")


@dataclass
class LayerInputs:
    """Equal weights and inputs for every formulation, in the benchmarked dtype."""

    shape: LayerShape
    dtype: torch.dtype
    layer: MoE  # moeroute's layer, holding the weights every formulation copies
    params: dict[str, torch.Tensor]  # detached copies of the layer's weights
    x: torch.Tensor  # [T, H]
    grad_y: torch.Tensor  # [T, H]
    xp: torch.Tensor  # [R, H], x permuted by moeroute's plan (the floor's input)
    offs: torch.Tensor  # [E] int32 cumulative segment ends of that plan
    grad_yp: torch.Tensor  # [R, H]


def make_layer_inputs(shape: LayerShape, dtype: torch.dtype, seed: int = 0) -> LayerInputs:
    """moeroute's MoE with its own init for the experts and an identity router on the first E
    input columns, which hold tie-free logits (see distinct_logits): routing is unambiguous in
    both dtypes, so every formulation picks the same experts."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t, h, e = shape.tokens, shape.hidden, shape.experts
    if e > h:
        raise SystemExit(f"shape {shape.name}: needs E <= H for the tie-free router")
    layer = MoE(h, e, shape.top_k, ffn_size=shape.ffn, activation="swiglu")
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[:, :e] = torch.eye(e)
    layer = layer.to(dtype)
    x = torch.randn(t, h, generator=gen)
    x[:, :e] = distinct_logits(gen, t, e)
    x = x.to(dtype)
    experts = layer.experts
    params = {"router": layer.router.weight, "w_gate": experts.w_gate, "w_up": experts.w_up,
              "w_down": experts.w_down}
    with torch.no_grad():
        plan = moeroute.route(layer.router(x).float(), shape.top_k)
        xp = moeroute.permute(x, plan)
    return LayerInputs(shape=shape, dtype=dtype, layer=layer,
                       params={n: p.detach().clone() for n, p in params.items()},
                       x=x, grad_y=normal(gen, t, h, dtype=dtype), xp=xp,
                       offs=plan.expert_offsets[1:].to(torch.int32),
                       grad_yp=normal(gen, xp.shape[0], h, dtype=dtype))


def swiglu_experts(rows: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
                   offs: torch.Tensor) -> torch.Tensor:
    """The two grouped-matmul stages: silu(rows @ w_gate) * (rows @ w_up), then @ w_down, in the
    dtype moeroute's experts compute in (float32 for bfloat16 on a CPU without native bfloat16
    matmuls), so that (b), (c) and moeroute's layer do the same expert arithmetic."""
    dtype = rows.dtype
    compute = matmul_dtype(dtype, rows.device)
    rows, wg, wu, wd = rows.to(compute), wg.to(compute), wu.to(compute), wd.to(compute)
    hidden = F.silu(GROUPED_MM(rows, wg, offs=offs)) * GROUPED_MM(rows, wu, offs=offs)
    return GROUPED_MM(hidden, wd, offs=offs).to(dtype)


def router_weights(x: torch.Tensor, wr: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k expert ids, renormalized weights in x's dtype): softmax in float32, as HF's MoEs."""
    probs = torch.softmax(F.linear(x, wr), dim=-1, dtype=torch.float32)
    picked, ids = torch.topk(probs, k, dim=-1)
    return ids, (picked / picked.sum(dim=-1, keepdim=True)).to(x.dtype)


def loop_layer(x, wr, wg, wu, wd, k: int) -> torch.Tensor:
    """(a) The common loop over experts (HF Mixtral's sparse MoE block): wg, wu, wd are lists of
    E per-expert weights, as an nn.ModuleList of experts holds them."""
    ids, weights = router_weights(x, wr, k)
    out = torch.zeros_like(x)
    for e in range(len(wg)):
        tok, slot = torch.where(ids == e)
        if tok.numel() == 0:
            continue
        rows = x.index_select(0, tok)
        y = (F.silu(rows @ wg[e]) * (rows @ wu[e])) @ wd[e]
        out.index_add_(0, tok, y * weights[tok, slot, None])
    return out


def grouped_layer(x, wr, wg, wu, wd, k: int) -> torch.Tensor:
    """(b) Grouped matmul: stable argsort of the flattened expert ids, gather the rows,
    grouped_mm experts, scatter back to [T*k] order and a weighted sum over the k picks."""
    tokens, experts = x.shape[0], wg.shape[0]
    ids, weights = router_weights(x, wr, k)
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)  # row -> token * k + slot
    offs = torch.cumsum(torch.bincount(flat, minlength=experts), 0).to(torch.int32)
    yp = swiglu_experts(x.index_select(0, order // k), wg, wu, wd, offs)
    y = torch.empty_like(yp).index_copy(0, order, yp)  # rows back to token * k + slot order
    return (y.view(tokens, k, -1) * weights[:, :, None]).sum(dim=1)


def grads_dict(y: torch.Tensor, grads: Sequence[torch.Tensor], experts: int | None = None) -> dict:
    """The output and gradients by name: x, router, then w_gate, w_up, w_down, each one stacked
    [E, ...] tensor, or (with `experts`) E per-expert tensors, kept as a list."""
    out = {"y": y, "grad_x": grads[0], "router": grads[1]}
    rest = grads[2:]
    if experts is None:
        return {**out, **dict(zip(PARAMS[1:], rest))}
    return {**out, **{n: list(rest[i * experts:(i + 1) * experts])
                      for i, n in enumerate(PARAMS[1:])}}


def per_expert(w: torch.Tensor) -> list[torch.Tensor]:
    return [leaf(w[e].clone()) for e in range(w.shape[0])]


def layer_formulations(inp: LayerInputs) -> list[Formulation]:
    """moeroute, (a), (b), (c): each returns the output and the gradients of the input and of
    every weight (torch.autograd.grad, so nothing accumulates between calls)."""
    k, p, layer, gy, experts = inp.shape.top_k, inp.params, inp.layer, inp.grad_y, inp.shape.experts
    ours_params = [layer.router.weight, layer.experts.w_gate, layer.experts.w_up,
                   layer.experts.w_down]

    def moeroute_run(x):
        y = layer(x)
        return grads_dict(y, torch.autograd.grad(y, (x, *ours_params), gy))

    def loop_run(x, wr, wg, wu, wd):
        y = loop_layer(x, wr, wg, wu, wd, k)
        grads = torch.autograd.grad(y, (x, wr, *wg, *wu, *wd), gy, materialize_grads=True)
        return grads_dict(y, grads, experts)

    def grouped_run(x, wr, wg, wu, wd):
        y = grouped_layer(x, wr, wg, wu, wd, k)
        return grads_dict(y, torch.autograd.grad(y, (x, wr, wg, wu, wd), gy))

    def floor_run(xp, wg, wu, wd):
        yp = swiglu_experts(xp, wg, wu, wd, inp.offs)
        return torch.autograd.grad(yp, (xp, wg, wu, wd), inp.grad_yp)

    def loop_setup():
        return (leaf(inp.x), leaf(p["router"]), *(per_expert(p[n]) for n in PARAMS[1:]))

    return [
        Formulation("moeroute", moeroute_run, lambda: (leaf(inp.x),)),
        Formulation("(a) loop", loop_run, loop_setup),
        Formulation("(b) grouped", grouped_run,
                    lambda: (leaf(inp.x), *(leaf(p[n]) for n in PARAMS))),
        Formulation("(c) floor", floor_run,
                    lambda: (leaf(inp.xp), *(leaf(p[n]) for n in PARAMS[1:]))),
    ]


def float32_reference(inp: LayerInputs) -> dict:
    """(a) in float32 on the same values (the layer's inputs and weights upcast): the reference
    the bfloat16 results are checked against."""
    x, wr = leaf(inp.x.float()), leaf(inp.params["router"].float())
    ws = [per_expert(inp.params[n].float()) for n in PARAMS[1:]]
    y = loop_layer(x, wr, *ws, inp.shape.top_k)
    grads = torch.autograd.grad(y, (x, wr, *(w for group in ws for w in group)),
                                inp.grad_y.float(), materialize_grads=True)
    return grads_dict(y, grads, inp.shape.experts)


def layer_breakdown(inp: LayerInputs, repeat: int) -> dict[str, float]:
    """Median ms of each stage of moeroute's layer, forward and backward, run stage by stage on
    detached inputs (the sum is close to, not exactly, the whole layer)."""
    layer, k, gy = inp.layer, inp.shape.top_k, inp.grad_y
    ffn = layer.experts
    stages: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        stages.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
        return out

    def one_pass():  # its tensors are freed on return, as the whole layer's are between calls
        x = leaf(inp.x)
        # As the layer: the gate and permute's input rows, as one autograd node where the layer
        # fuses them (see moeroute.torch._gate); otherwise the rows are x itself.
        logits, _, _, rows = timed("router linear fwd", lambda: layer.router_logits(x))
        lg = leaf(logits.detach().float())
        plan = timed("route fwd", lambda: moeroute.route(lg, k))
        xl = leaf(rows.detach())
        # As the layer: one view of the permuted rows per matmul that reads them (see
        # MoE.forward), whose gradients permute's backward sums while gathering.
        uses = ffn.row_uses(xl.dtype, xl.device)
        xps = timed("permute fwd", lambda: permute_shared(xl, plan.src, plan.dest, uses))
        xpl = [leaf(xp) for xp in xps]
        yp = timed("experts fwd", lambda: ffn(xpl[0], plan.expert_offsets, *xpl[1:]))
        ypl, wl = leaf(yp), leaf(plan.weights)
        y = timed("combine fwd", lambda: moeroute.combine(ypl, plan, wl))
        g_yp, g_w = timed("combine bwd", lambda: torch.autograd.grad(y, (ypl, wl), gy))
        g_xps = timed("experts bwd", lambda: torch.autograd.grad(
            yp, (*xpl, ffn.w_gate, ffn.w_up, ffn.w_down), g_yp)[:uses])
        (g_rows,) = timed("permute bwd", lambda: torch.autograd.grad(xps, xl, g_xps))
        g_logits = timed("route bwd", lambda: torch.autograd.grad(plan.weights, lg, g_w)[0])
        g_logits = g_logits.to(logits.dtype)
        if rows is x:  # autograd adds the two gradients of x
            timed("router linear bwd", lambda: torch.autograd.grad(
                logits, (x, layer.router.weight), g_logits)[0] + g_rows)
        else:  # the fused node adds permute's gradient itself
            timed("router linear bwd", lambda: torch.autograd.grad(
                (logits, rows), (x, layer.router.weight), (g_logits, g_rows)))

    one_pass()  # warm-up
    stages.clear()
    for _ in range(repeat):
        one_pass()
    return {name: statistics.median(v) for name, v in stages.items()}


def layer_verdicts(shape_name: str, floor_ratio: float, grouped_speedup: float) -> dict:
    targets = LAYER_TARGETS.get(shape_name, {})
    out = {}
    if "floor" in targets:
        out["floor"] = {"target": targets["floor"], "passed": floor_ratio <= targets["floor"]}
    if "grouped" in targets:
        out["grouped"] = {"target": targets["grouped"],
                          "passed": grouped_speedup >= targets["grouped"]}
    return out


def bench_layer(full: LayerShape, divisor: int, dtype_name: str, repeat: int,
                breakdown: bool, seconds: float) -> dict:
    shape = full.scaled(divisor)
    inp = make_layer_inputs(shape, DTYPES[dtype_name])
    formulations = layer_formulations(inp)
    rtol, rms_tol = RTOL[dtype_name], RMS_TOL.get(dtype_name)
    results, warm_ms = {}, {}
    for f in formulations:  # the agreement check, which is also the warm-up
        warm_ms[f.name], results[f.name] = run_once(f)
    results.pop("(c) floor")
    if dtype_name == "float32":  # against (a), the plain loop
        ref, ref_name, checked = results["(a) loop"], "(a)", ("moeroute", "(b) grouped")
    else:  # each against (a) in float32 on the same values
        ref, ref_name = float32_reference(inp), "(a) f32"
        checked = ("moeroute", "(b) grouped", "(a) loop")
    agreement = {f"{name.split()[0]} vs {ref_name}": compare_fields(results[name], ref, rtol,
                                                                   rms_tol)
                 for name in checked}
    del results, ref
    ours_f, loop_f, grouped_f, floor_f = formulations
    # The targeted ratios: rounds of the floor, moeroute and (b), moeroute beside each. Cheap
    # shapes get more rounds (up to `seconds` of them, at most 5x repeat): the spread of one
    # round's ratio is a few percent on a shared machine. (a), often far slower, gets `repeat`
    # rounds of its own beside moeroute.
    round_ms = sum(warm_ms[f.name] for f in (floor_f, ours_f, grouped_f))
    rounds = min(max(repeat, int(seconds * 1e3 / max(round_ms, 1e-3))), 5 * repeat)
    samples = measure([floor_f, ours_f, grouped_f], rounds)
    loop_samples = measure([ours_f, loop_f], repeat)
    samples["(a) loop"] = loop_samples["(a) loop"]
    med = {name: statistics.median(v) for name, v in samples.items()}
    floor = paired_ratio(samples["moeroute"], samples["(c) floor"])
    grouped = paired_ratio(samples["(b) grouped"], samples["moeroute"])
    loop = paired_ratio(loop_samples["(a) loop"], loop_samples["moeroute"])
    entry = {
        "shape": shape.__dict__, "token_divisor": full.tokens // shape.tokens,
        "dtype": dtype_name, "rtol": rtol,
        "rms_tol": rms_tol, "rounds": rounds, "loop_rounds": repeat,
        "timings": {name: timing_entry(v) for name, v in samples.items()},
        "floor_ratio": floor["median"], "floor_ratio_detail": floor,
        "grouped_speedup": grouped["median"], "grouped_speedup_detail": grouped,
        "loop_speedup": loop["median"],
        "floor_gflops": shape.expert_flops() / med["(c) floor"] / 1e6,
        "agreement": agreement,
    }
    entry["verdicts"] = layer_verdicts(shape.name, entry["floor_ratio"], entry["grouped_speedup"])
    if breakdown:
        entry["breakdown_ms"] = layer_breakdown(inp, max(repeat // 2, 1))
    return entry


def quartiles(detail: dict, digits: int) -> str:
    return f"[{detail['q1']:.{digits}f}-{detail['q3']:.{digits}f}]"


def print_layers(layers: list[dict]) -> None:
    print("(B) MoE layer (router + SwiGLU experts + combine), forward + backward (grads of "
          "input and all weights), equal weights;\nmedians over timed rounds after warm-up "
          "(rounds: moeroute, floor and (b) / moeroute and (a))")
    rows = []
    for r in layers:
        s, t = r["shape"], r["timings"]
        v = r["verdicts"]

        def mark(key, relation):
            return (f" ({relation}{v[key]['target']:g} {'PASS' if v[key]['passed'] else 'MISS'})"
                    if key in v else "")
        rows.append((
            s["name"], f"T={s['tokens']} H={s['hidden']} F={s['ffn']} E={s['experts']} "
            f"k={s['top_k']}" + (f" (T/{r['token_divisor']})" if r["token_divisor"] > 1 else ""),
            r["dtype"],
            *(f"{t[n]['median_ms']:.0f}" for n in ("moeroute", "(c) floor", "(b) grouped",
                                                    "(a) loop")),
            f"{r['floor_ratio']:.3f} {quartiles(r['floor_ratio_detail'], 3)}{mark('floor', '<=')}",
            f"{r['grouped_speedup']:.2f} {quartiles(r['grouped_speedup_detail'], 2)}"
            f"{mark('grouped', '>=')}",
            f"{r['loop_speedup']:.2f}", f"{r['floor_gflops']:.1f}",
            f"{r['rounds']} / {r['loop_rounds']}"))
    print_table(("shape", "", "dtype", "moeroute ms", "floor ms", "(b) ms", "(a) ms",
                 "moeroute/floor", "(b)/moeroute", "(a)/moeroute", "floor GFLOP/s", "rounds"),
                rows)
    print("Ratios: median over rounds of the per-round ratio [quartiles]; each round runs every "
          "formulation once, back to back.")
    print("(a) per-expert loop + index_add_; (b) softmax+topk, stable argsort, gather, grouped_mm, "
          "index_copy back + weighted sum;\n(c) floor: the grouped_mm SwiGLU stages alone on "
          "pre-gathered rows (input and weight grads). Ratios > 1 in (b)/moeroute and "
          "(a)/moeroute:\nmoeroute faster. T/n: run at fewer tokens than the named shape "
          "(bfloat16 by default: (a)'s per-expert bfloat16 matmuls\nare slow on CPUs without AVX512-BF16 / "
          "AMX; moeroute's experts, (b) and (c) compute in float32 there).")
    print("\nAgreement, checked once before timing: per field, max |diff| / RMS(ref) and "
          "RMS(diff) / RMS(ref);\nbfloat16 results against (a) in float32 on the same values.")
    rows = []
    for r in layers:
        tol = f"rtol {r['rtol']:g}" + (f", rms {r['rms_tol']:g}" if r["rms_tol"] else "")
        for pair, fields in r["agreement"].items():
            bad = any(f["mismatch"] for f in fields.values())
            rows.append((r["shape"]["name"], r["dtype"], pair,
                         *(f"{f['max_rel_rms']:.1e} / {f['rms_rel']:.1e}" for f in fields.values()),
                         f"{'MISMATCH' if bad else 'ok'} ({tol})"))
    fields = list(layers[0]["agreement"].values())[0] if layers else {}
    print_table(("shape", "dtype", "pair", *fields, ""), rows)
    with_breakdown = [r for r in layers if "breakdown_ms" in r]
    if with_breakdown:
        print("\nmoeroute's layer stage by stage (ms, median; each stage timed alone on detached "
              "inputs):")
        names = list(with_breakdown[0]["breakdown_ms"])
        rows = [(n, *(f"{r['breakdown_ms'][n]:.1f}" for r in with_breakdown)) for n in names]

        def total(r, experts):
            return sum(v for n, v in r["breakdown_ms"].items() if n.startswith("experts") == experts)
        rows += [("sum of stages", *(f"{total(r, True) + total(r, False):.1f}"
                                     for r in with_breakdown)),
                 ("  of which not experts", *(f"{total(r, False):.1f}" for r in with_breakdown)),
                 ("layer, timed whole", *(f"{r['timings']['moeroute']['median_ms']:.1f}"
                                          for r in with_breakdown)),
                 ("floor, timed whole", *(f"{r['timings']['(c) floor']['median_ms']:.1f}"
                                          for r in with_breakdown))]
        print_table(("stage", *(f"{r['shape']['name']} {r['dtype']}" for r in with_breakdown)),
                    rows)
    print()


# ----------------------------------------------------------------- (C) per-call overhead

def bench_overhead(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(0)
    t, h, e, k = args.overhead_tokens, args.overhead_hidden, args.overhead_experts, 2
    logits = distinct_logits(gen, t, e)
    plan = moeroute.route(logits, k)
    x, yp = normal(gen, t, h), normal(gen, t * k, h)
    x_rg, yp_rg, lg_rg, w_rg = leaf(x), leaf(yp), leaf(logits), leaf(plan.weights)
    logits_np, x_np, yp_np = logits.numpy(), x.numpy(), yp.numpy()
    plan_np = moeroute.route(logits_np, k)
    src_np, dest_np, w_np = plan.src.numpy(), plan.dest.numpy(), plan.weights.numpy()
    route_args = ("softmax", "topk", 1.0, None, None, None, None, None, 0, 1, "slot", 1)
    cases = {
        "route": (lambda: moeroute.route(logits, k),
                  lambda: _core.route(logits_np, "float32", k, *route_args),
                  lambda: moeroute.route(logits_np, k),
                  lambda: moeroute.route(lg_rg, k)),
        "permute": (lambda: moeroute.permute(x, plan),
                    lambda: _core.permute(x_np, "float32", src_np),
                    lambda: moeroute.permute(x_np, plan_np),
                    lambda: moeroute.permute(x_rg, plan)),
        "combine": (lambda: moeroute.combine(yp, plan),
                    lambda: _core.combine(yp_np, "float32", dest_np, w_np),
                    lambda: moeroute.combine(yp_np, plan_np),
                    lambda: moeroute.combine(yp_rg, plan, w_rg)),
    }
    out = {}
    for op, (front, raw, numpy_front, with_grad) in cases.items():
        samples = per_call_us({"torch": front, "raw": raw, "numpy": numpy_front,
                               "torch_grad": with_grad}, args.overhead_calls, args.overhead_repeat)

        def added(name):  # median of the paired differences with the raw kernel's batches
            return statistics.median(a - b for a, b in zip(samples[name], samples["raw"]))
        out[op] = {**{f"{n}_us": statistics.median(v) for n, v in samples.items()},
                   "added_us": added("torch"), "added_grad_us": added("torch_grad"),
                   "added_best_us": min(samples["torch"]) - min(samples["raw"]),
                   "numpy_added_us": added("numpy"), "target_us": OVERHEAD_TARGET_US,
                   "passed": added("torch") <= OVERHEAD_TARGET_US, "samples_us": samples}
    return out


def print_overhead(args: argparse.Namespace, overhead: dict) -> None:
    print(f"(C) per-call overhead of the torch front, T={args.overhead_tokens} "
          f"H={args.overhead_hidden} E={args.overhead_experts} k=2 float32; median of "
          f"{args.overhead_repeat} batches of {args.overhead_calls} calls")
    rows = [(op, f"{r['raw_us']:.1f}", f"{r['numpy_us']:.1f}", f"{r['torch_us']:.1f}",
             f"{r['added_us']:.1f} (<={r['target_us']:g} {'PASS' if r['passed'] else 'MISS'})",
             f"{r['added_best_us']:.1f}", f"{r['torch_grad_us']:.1f}",
             f"{r['added_grad_us']:.1f}")
            for op, r in overhead.items()]
    print_table(("op", "raw _core us", "numpy front us", "torch front us", "torch added us",
                 "added, best batches", "torch, requires_grad us", "added us"), rows)
    print("raw = moeroute._core on the equivalent NumPy arrays; added = median of paired batch "
          "differences torch front - raw\n(forward call only); best batches: fastest torch batch - "
          "fastest raw batch; requires_grad: inputs that\nrequire grad, so autograd records the "
          "call (an autograd.Function in eager mode).\n")


# ---------------------------------------------------------------------------------- reporting

def print_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def target_lines(ops: dict, layers: list[dict], overhead: dict) -> list[str]:
    lines = []
    for r in layers:
        s = r["shape"]
        scaled = f" (T/{r['token_divisor']})" if r["token_divisor"] > 1 else ""
        for key, v in r["verdicts"].items():
            what = (f"moeroute/floor {r['floor_ratio']:.3f} <= {v['target']:g}" if key == "floor"
                    else f"(b)/moeroute {r['grouped_speedup']:.2f} >= {v['target']:g}")
            lines.append(f"{'PASS' if v['passed'] else 'MISS'}  (B) {s['name']}{scaled} "
                         f"{r['dtype']}: {what}")
    for op, r in overhead.items():
        lines.append(f"{'PASS' if r['passed'] else 'MISS'}  (C) {op}: torch front adds "
                     f"{r['added_us']:.1f} us <= {r['target_us']:g} us")
    return lines


def environment(args: argparse.Namespace, threads: int) -> dict:
    return {
        "threads": threads, "cpu_count": os.cpu_count(), "cpu": cpu_model(),
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__,
        "moeroute": getattr(moeroute, "__version__", None),
        "loadavg_start": load_average(),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
    }


def all_mismatches(ops: dict, layers: list[dict]) -> list[str]:
    lines = []
    for op, r in ops.items():
        for name, t in r["torch"].items():
            lines += mismatch_lines(f"(A) {op}: moeroute vs {name}", t["agreement"])
    for r in layers:
        for pair, fields in r["agreement"].items():
            lines += mismatch_lines(f"(B) {r['shape']['name']} {r['dtype']} {pair}", fields)
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--allocator", choices=("reuse", "system"), default="reuse",
                   help="reuse (default): glibc malloc keeps freed memory, so large tensors do "
                        "not page-fault afresh on every call (see reuse_freed_memory); system: "
                        "leave malloc as it is")
    p.add_argument("--torch-hugepages", choices=("on", "off"), default="on",
                   help="on (default): PyTorch's THP_MEM_ALLOC_ENABLE=1, large tensors on "
                        "transparent huge pages (see apply_torch_hugepages); off: 4 KiB pages "
                        "unless the kernel's THP mode is 'always'")
    p.add_argument("--parts", default="A,B,C", help="which parts to run (default A,B,C)")
    p.add_argument("--small", action="store_true",
                   help="quick preset: ops at T=2048 H=512, layer shapes at T/16")
    p.add_argument("--repeat", type=int, default=9,
                   help="(B) the fewest timed rounds per layer configuration")
    p.add_argument("--layer-seconds", type=float, default=40.0,
                   help="(B) cheap configurations get more rounds, up to about this many seconds "
                        "(and at most 5x --repeat)")
    p.add_argument("--op-repeat", type=int, default=9, help="timed runs per op formulation")
    p.add_argument("--tokens", type=int, default=16384, help="(A) T")
    p.add_argument("--hidden", type=int, default=2048, help="(A) H")
    p.add_argument("--experts", type=int, default=64, help="(A) E")
    p.add_argument("--top-k", type=int, default=2, help="(A) k")
    p.add_argument("--shapes", default="S,L", help=f"(B) among {','.join(SHAPES)}")
    p.add_argument("--layer-dtypes", default="float32,bfloat16",
                   help=f"(B) among {','.join(DTYPES)}")
    p.add_argument("--token-divisor", type=int, default=1,
                   help="(B) run the layer shapes at T / this")
    p.add_argument("--bf16-token-divisor", type=int, default=None,
                   help="(B) bfloat16 layer shapes at T / this (default "
                        f"{', '.join(f'{k}: {v}' for k, v in BF16_TOKEN_DIVISOR.items())}: CPUs "
                        "without AVX512-BF16 / AMX run torch's bfloat16 matmuls ~50x slower "
                        "than float32)")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="(B) skip timing moeroute's layer stage by stage")
    p.add_argument("--overhead-tokens", type=int, default=64, help="(C) T")
    p.add_argument("--overhead-hidden", type=int, default=64, help="(C) H")
    p.add_argument("--overhead-experts", type=int, default=8, help="(C) E")
    p.add_argument("--overhead-calls", type=int, default=500, help="(C) calls per batch")
    p.add_argument("--overhead-repeat", type=int, default=21, help="(C) batches per function")
    args = p.parse_args(argv)
    if args.small:
        args.tokens, args.hidden = min(args.tokens, 2048), min(args.hidden, 512)
        args.token_divisor = max(args.token_divisor, 16)
    args.parts = args.parts.upper().split(",")
    args.shapes = args.shapes.upper().split(",")
    args.layer_dtypes = args.layer_dtypes.split(",")
    if not set(args.parts) <= {"A", "B", "C"}:
        p.error("--parts: choose among A, B, C")
    if any(s not in SHAPES for s in args.shapes):
        p.error(f"--shapes: choose among {', '.join(SHAPES)}")
    if any(d not in DTYPES for d in args.layer_dtypes):
        p.error(f"--layer-dtypes: choose among {', '.join(DTYPES)}")
    if min(args.repeat, args.op_repeat, args.overhead_repeat, args.overhead_calls,
           args.token_divisor, args.bf16_token_divisor or 1) < 1:
        p.error("repeats, calls and divisors must be >= 1")
    if not 1 <= args.top_k <= args.experts:
        p.error("need 1 <= --top-k <= --experts")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:  # run as a script: the environment can still be set for torch
        apply_torch_hugepages(args.torch_hugepages)
    if GROUPED_MM is None:
        raise SystemExit(f"torch {torch.__version__} has no grouped_mm")
    allocator = reuse_freed_memory() if args.allocator == "reuse" else "system"
    threads = moeroute.get_num_threads()
    torch.set_num_threads(threads)
    env = environment(args, threads)
    env["allocator"] = allocator
    env["torch_hugepages"] = f"{THP_ENV}={os.environ.get(THP_ENV, 'unset')}"
    env["kernel_thp_mode"] = kernel_thp_mode()
    print(f"threads: {threads} (moeroute and torch), cpu_count: {env['cpu_count']}, "
          f"cpu: {env['cpu']}, {env['platform']}")
    print(f"python {env['python']}, numpy {env['numpy']}, torch {env['torch']}, "
          f"moeroute {env['moeroute']}, allocator: {allocator}, torch huge pages: "
          f"{env['torch_hugepages']} (kernel THP mode: {env['kernel_thp_mode']})\n")
    start = time.perf_counter()

    ops = {}
    if "A" in args.parts:
        ops = bench_ops(args)
        print_ops(args, ops)
    layers = []
    if "B" in args.parts:
        for name in args.shapes:
            for dtype in args.layer_dtypes:
                divisor = args.token_divisor
                if dtype == "bfloat16":
                    divisor *= args.bf16_token_divisor or BF16_TOKEN_DIVISOR[name]
                layers.append(bench_layer(SHAPES[name], divisor, dtype, args.repeat,
                                          args.breakdown, args.layer_seconds))
        print_layers(layers)
    overhead = {}
    if "C" in args.parts:
        overhead = bench_overhead(args)
        print_overhead(args, overhead)

    env["loadavg_end"] = load_average()
    env["huge_page_kib_end"] = huge_page_kib()
    targets = target_lines(ops, layers, overhead)
    if targets:
        print("Targets:")
        print("\n".join(f"  {line}" for line in targets))
    bad = all_mismatches(ops, layers)
    if bad:
        print("NUMERICAL DISAGREEMENT:")
        print("\n".join(f"  {line}" for line in bad))
    print(f"total {time.perf_counter() - start:.0f} s; load average (1, 5, 15 min) at start "
          f"{env['loadavg_start']}, at end {env['loadavg_end']}; memory on huge pages at the end: "
          f"{env['huge_page_kib_end']} KiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "ops": ops, "layers": layers, "overhead": overhead,
                       "targets": targets, "mismatches": bad}, fh, indent=2)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
