"""Benchmark what moeroute's PyTorch front adds per call, part (C) of compare_torch.py: route,
permute and combine on tiny CPU tensors, against the raw Rust kernel (moeroute._core) on the
equivalent NumPy arrays, the NumPy front, and the torch front with inputs that require grad.
Its output has the same format as `compare_torch.py --parts C`, so that two builds of the package
can be measured back to back (e.g. one of them with PYTHONPATH set to the other's install).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import harness
import moeroute
# The one private import of benches/: the raw extension is the baseline the torch front's
# per-call overhead is measured against. Its calls follow the core's signatures (python/moeroute/
# _core.pyi), not the public API's.
from moeroute import _core
from harness import distinct_logits, leaf, normal, print_table

OVERHEAD_TARGET_US = 30.0  # torch front us - raw kernel us, per op call


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
    options = moeroute.RouteOptions(k)  # route's defaults; no bias (the core's 4th argument)
    cases = {
        "route": (lambda: moeroute.route(logits, k),
                  lambda: _core.route(logits_np, "float32", options, None),
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
        samples = harness.per_call_us({"torch": front, "raw": raw, "numpy": numpy_front,
                                       "torch_grad": with_grad},
                                      args.overhead_calls, args.overhead_repeat)

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


def overhead_targets(overhead: dict) -> list[str]:
    return [f"{'PASS' if r['passed'] else 'MISS'}  (C) {op}: torch front adds "
            f"{r['added_us']:.1f} us <= {r['target_us']:g} us" for op, r in overhead.items()]


# --overhead-NAME: (default, what it sets)
OPTIONS = {"tokens": (64, "T"), "hidden": (64, "H"), "experts": (8, "E"),
           "calls": (500, "calls per batch"), "repeat": (21, "batches per function")}


def add_options(p: argparse.ArgumentParser) -> None:
    for name, (default, what) in OPTIONS.items():
        p.add_argument(f"--overhead-{name}", type=int, default=default, help=f"(C) {what}")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.overhead_repeat, args.overhead_calls) < 1:
        p.error("repeats, calls and divisors must be >= 1")


PART = harness.Part("C", "overhead", dict, add_options, check_args, bench_overhead,
                    print_overhead, targets=overhead_targets)


if __name__ == "__main__":
    sys.exit(harness.torch_main(__doc__, [PART]))
