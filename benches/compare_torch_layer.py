"""Benchmark moeroute's MoE layer against plain PyTorch eager, part (B) of compare_torch.py:
a whole MoE layer (router, SwiGLU experts, combine) forward + backward at equal weights, in
float32 and bfloat16, at a fine-grained shape S and a large-expert shape L: moeroute.torch.MoE
against (a) the per-expert loop with index_add_, (b) the grouped-matmul formulation transformer
libraries ship (softmax + topk, stable argsort, gather, grouped_mm, scatter back, weighted sum)
and (c) the compute floor: the two grouped-matmul stages alone on pre-gathered rows; then
moeroute's layer stage by stage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

import harness
import moeroute
from harness import (Formulation, compare_fields, distinct_logits, leaf, normal, paired_ratio,
                     print_table, quartiles, run_once, timing_entry)
from moeroute.torch import MoE, permute_shared
from moeroute.torch.experts import matmul_dtype

GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Agreement (see harness.compare): |got - want| <= RTOL * (|want| + RMS(want)) elementwise, since
# sums (matmuls, combine, weight gradients) err relative to the size of their terms, not of each
# result element; and RMS(got - want) <= RMS_TOL * RMS(want). bfloat16 results are checked against
# float32 on the same values: bfloat16 rounding alone gives RMS errors ~5e-3 and rare
# weight-gradient elements ~0.2 RMS off (in every formulation alike), so its elementwise bound only
# catches gross errors.
RTOL = {"float32": 1e-4, "bfloat16": 0.5}
RMS_TOL = {"bfloat16": 2e-2}


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
        xps = timed("permute fwd", lambda: permute_shared(xl, plan, uses))
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
    samples = harness.measure([floor_f, ours_f, grouped_f], rounds)
    loop_samples = harness.measure([ours_f, loop_f], repeat)
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


def print_layers(args: argparse.Namespace, layers: list[dict]) -> None:
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


def bench_layers(args: argparse.Namespace) -> list[dict]:
    layers = []
    for name in args.shapes:
        for dtype in args.layer_dtypes:
            divisor = args.token_divisor
            if dtype == "bfloat16":
                divisor *= args.bf16_token_divisor or BF16_TOKEN_DIVISOR[name]
            layers.append(bench_layer(SHAPES[name], divisor, dtype, args.repeat,
                                      args.breakdown, args.layer_seconds))
    return layers


def layer_targets(layers: list[dict]) -> list[str]:
    lines = []
    for r in layers:
        s = r["shape"]
        scaled = f" (T/{r['token_divisor']})" if r["token_divisor"] > 1 else ""
        for key, v in r["verdicts"].items():
            what = (f"moeroute/floor {r['floor_ratio']:.3f} <= {v['target']:g}" if key == "floor"
                    else f"(b)/moeroute {r['grouped_speedup']:.2f} >= {v['target']:g}")
            lines.append(f"{'PASS' if v['passed'] else 'MISS'}  (B) {s['name']}{scaled} "
                         f"{r['dtype']}: {what}")
    return lines


def layer_mismatches(layers: list[dict]) -> list[str]:
    return [line for r in layers for pair, fields in r["agreement"].items()
            for line in harness.mismatch_lines(f"(B) {r['shape']['name']} {r['dtype']} {pair}",
                                               fields)]


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=9,
                   help="(B) the fewest timed rounds per layer configuration")
    p.add_argument("--layer-seconds", type=float, default=40.0,
                   help="(B) cheap configurations get more rounds, up to about this many seconds "
                        "(and at most 5x --repeat)")
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


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.small:
        args.token_divisor = max(args.token_divisor, 16)
    args.shapes = args.shapes.upper().split(",")
    args.layer_dtypes = args.layer_dtypes.split(",")
    if any(s not in SHAPES for s in args.shapes):
        p.error(f"--shapes: choose among {', '.join(SHAPES)}")
    if any(d not in DTYPES for d in args.layer_dtypes):
        p.error(f"--layer-dtypes: choose among {', '.join(DTYPES)}")
    if min(args.repeat, args.token_divisor, args.bf16_token_divisor or 1) < 1:
        p.error("repeats, calls and divisors must be >= 1")
    if "B" in args.parts and GROUPED_MM is None:
        raise SystemExit(f"torch {torch.__version__} has no grouped_mm")


PART = harness.Part("B", "layers", list, add_options, check_args, bench_layers, print_layers,
                    small="layer shapes at T/16", targets=layer_targets,
                    mismatches=layer_mismatches)


if __name__ == "__main__":
    sys.exit(harness.torch_main(__doc__, [PART]))
