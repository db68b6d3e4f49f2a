"""Benchmark moeroute's PyTorch ops against plain PyTorch eager, part (A) of compare_torch.py:
each op forward + backward on CPU tensors (route, permute, combine) against the fastest of a few
PyTorch-eager formulations of the same op, every result checked against moeroute's first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from typing import Any

import torch

import harness
import moeroute
from harness import Formulation, compare_fields, distinct_logits, leaf, normal, print_table

RTOL = 1e-4  # float32; see harness.compare


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
        ours = harness.run_once(formulations[0])[1]  # also the warm-up
        checks = {}
        for f in formulations[1:]:
            _, theirs = harness.run_once(f)  # also the warm-up
            checks[f.name] = compare_fields(ours, theirs, RTOL)
            del theirs
        del ours
        samples = harness.measure(formulations, args.op_repeat)
        ours_ms = statistics.median(samples["moeroute"])
        torch_names = [f.name for f in formulations[1:]]
        best = min(torch_names, key=lambda n: statistics.median(samples[n]))
        results[op] = {
            "moeroute": harness.timing_entry(samples["moeroute"]),
            "torch": {n: {**harness.timing_entry(samples[n]), "agreement": checks[n]}
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


def ops_mismatches(ops: dict) -> list[str]:
    return [line for op, r in ops.items() for name, t in r["torch"].items()
            for line in harness.mismatch_lines(f"(A) {op}: moeroute vs {name}", t["agreement"])]


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--op-repeat", type=int, default=9, help="timed runs per op formulation")
    p.add_argument("--tokens", type=int, default=16384, help="(A) T")
    p.add_argument("--hidden", type=int, default=2048, help="(A) H")
    p.add_argument("--experts", type=int, default=64, help="(A) E")
    p.add_argument("--top-k", type=int, default=2, help="(A) k")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.small:
        args.tokens, args.hidden = min(args.tokens, 2048), min(args.hidden, 512)
    if args.op_repeat < 1:
        p.error("repeats, calls and divisors must be >= 1")
    if not 1 <= args.top_k <= args.experts:
        p.error("need 1 <= --top-k <= --experts")


PART = harness.Part("A", "ops", dict, add_options, check_args, bench_ops, print_ops,
                    small="ops at T=2048 H=512", mismatches=ops_mismatches)


if __name__ == "__main__":
    sys.exit(harness.torch_main(__doc__, [PART]))
