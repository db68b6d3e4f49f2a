"""GPU benchmark: moeroute's CUDA ops vs the fastest torch-eager formulation and the copy bandwidth."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import moeroute
from harness import distinct_logits, print_table

DEVICE = "cuda"
CONFIGS = ((64, 2), (256, 8))  # (E, k)
TOKENS, QUICK_TOKENS, HIDDEN = 65536, 8192, 4096
DTYPE = torch.bfloat16  # activations; router logits are float32
ROTATE_BYTES = 256 * 2**20  # small inputs get copies totalling this (> 4x the 50-60 MB L2)
MAX_SETS = 8
WARMUP = 3
BATCH = 10  # calls per timing
COPY_TARGET = 0.80  # permute and combine: >= 80% of the copy bandwidth
ROUTE_TARGET = 5.0  # route: >= 5x faster than torch eager
# Agreement: |ours - torch| <= rtol * (|torch| + RMS(torch)), by the dtype of the op's inputs; integers
# exactly. bfloat16: loose enough for torch's own bfloat16 sums (index_add rounds each of its k
# additions), tight enough to catch a wrong row or weight.
RTOL = {torch.float32: 1e-4, torch.bfloat16: 2**-4}

Fields = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------- inputs

@dataclass
class InputSet:
    """One routing problem: logits, moeroute's dropless plan of them, and that plan's indices in
    the form torch's formulations use (built outside the timed region: this favours torch)."""

    logits: torch.Tensor  # [T, E] float32
    grad_weights: torch.Tensor  # [T, k] float32
    plan: moeroute.RoutingPlan
    src: torch.Tensor  # [R] int64, token of each row
    dest: torch.Tensor  # [T * k] int64, row of each (token, slot)
    row_weights: torch.Tensor  # [R] bfloat16, combine weight of each row


@dataclass
class Shared:
    """The activations, one copy each: far larger than the L2."""

    x: torch.Tensor  # [T, H]
    yp: torch.Tensor  # [R, H], also the gradient of xp
    grad_y: torch.Tensor  # [T, H]


def make_set(tokens: int, experts: int, k: int, gen: torch.Generator) -> InputSet:
    logits = distinct_logits(gen, tokens, experts)  # on the generator's device
    plan = moeroute.route(logits, k)
    dest = plan.dest.flatten().long()
    order = torch.empty_like(dest)
    order[dest] = torch.arange(dest.numel(), device=DEVICE)
    return InputSet(logits=logits, grad_weights=torch.randn(tokens, k, device=DEVICE, generator=gen),
                    plan=plan, src=plan.src.long(), dest=dest,
                    row_weights=plan.weights.flatten()[order].to(DTYPE))


def make_inputs(tokens: int, experts: int, k: int) -> tuple[list[InputSet], Shared]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    count = min(MAX_SETS, max(1, math.ceil(ROTATE_BYTES / (tokens * experts * 4))))
    sets = [make_set(tokens, experts, k, gen) for _ in range(count)]

    def activations(rows: int) -> torch.Tensor:
        return torch.randn(rows, HIDDEN, device=DEVICE, generator=gen, dtype=DTYPE)
    return sets, Shared(x=activations(tokens), yp=activations(tokens * k), grad_y=activations(tokens))


# ------------------------------------------------------------------------------- formulations

def route_fields(plan: moeroute.RoutingPlan) -> Fields:
    return {name: getattr(plan, name) for name in
            ("expert_ids", "weights", "probs", "dest", "src", "expert_offsets")}


def torch_layout(ids: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor,
                 counts: str) -> Fields:
    """dest, src and expert_offsets of a dropless plan: a stable sort of the flattened expert ids,
    the segment bounds from bincount + cumsum or from searchsorted on the sorted ids."""
    experts = probs.shape[1]
    sorted_ids, order = torch.sort(ids.flatten(), stable=True)  # row -> token * k + slot
    if counts == "bincount":
        offsets = F.pad(torch.cumsum(torch.bincount(sorted_ids, minlength=experts), 0), (1, 0))
    else:
        offsets = torch.searchsorted(sorted_ids, torch.arange(experts + 1, device=ids.device))
    dest = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=ids.device))
    return {"expert_ids": ids, "weights": weights, "probs": probs, "dest": dest.view(ids.shape),
            "src": order // ids.shape[1], "expert_offsets": offsets}


def softmax_topk(logits: torch.Tensor, k: int, counts: str) -> Fields:
    """softmax, top-k of the probs, divided by their sum (Mixtral, Qwen-MoE)."""
    probs = torch.softmax(logits, dim=-1)
    top, ids = torch.topk(probs, k, dim=-1)
    return torch_layout(ids, top / top.sum(dim=-1, keepdim=True), probs, counts)


def topk_softmax(logits: torch.Tensor, k: int, counts: str) -> Fields:
    """top-k of the logits, softmax over the k picks (the same weights), probs apart."""
    top, ids = torch.topk(logits, k, dim=-1)
    return torch_layout(ids, torch.softmax(top, dim=-1), torch.softmax(logits, dim=-1), counts)


TORCH_ROUTES = {
    "softmax+topk+argsort+bincount": lambda logits, k: softmax_topk(logits, k, "bincount"),
    "softmax+topk+argsort+searchsorted": lambda logits, k: softmax_topk(logits, k, "searchsorted"),
    "topk+softmax(k)+argsort+searchsorted": lambda logits, k: topk_softmax(logits, k, "searchsorted"),
}


def with_backward(route: Callable[[torch.Tensor], Fields]) -> Callable[[InputSet], Fields]:
    """route forward, then the gradient of its weights to the logits."""
    def run(s: InputSet) -> Fields:
        logits = s.logits.detach().requires_grad_()
        fields = route(logits)
        (grad,) = torch.autograd.grad(fields["weights"], logits, s.grad_weights)
        return {**fields, "grad_logits": grad}
    return run


@dataclass
class Op:
    """An op: moeroute's call, torch's formulations of it, the bytes it must read and write."""

    name: str
    ours: Callable[[InputSet], Fields]
    torch: dict[str, Callable[[InputSet], Fields]]
    bytes: int
    target: str = ""  # "copy": >= COPY_TARGET of the copy bandwidth; "speedup": >= ROUTE_TARGET
    rtol: float = RTOL[torch.float32]


def route_ops(tokens: int, experts: int, k: int) -> list[Op]:
    # Bytes: logits, probs; expert_ids, weights, dest, src; offsets. Backward: probs, grad_logits;
    # grad_weights, expert_ids, dest.
    moved = tokens * experts * 4 * 2 + tokens * k * 4 * 4 + (experts + 1) * 8
    backward = tokens * experts * 4 * 2 + tokens * k * 4 * 3
    ours = lambda logits: route_fields(moeroute.route(logits, k))  # noqa: E731
    return [
        Op("route", lambda s: ours(s.logits),
           {name: (lambda s, f=f: f(s.logits, k)) for name, f in TORCH_ROUTES.items()}, moved, "speedup"),
        Op("route fwd+bwd", with_backward(ours),
           {name: with_backward(lambda logits, f=f: f(logits, k)) for name, f in TORCH_ROUTES.items()},
           moved + backward),
    ]


def activation_ops(tokens: int, k: int, a: Shared) -> list[Op]:
    rows, h, b = tokens * k, HIDDEN, a.x.element_size()

    def gathered(s: InputSet, t: torch.Tensor) -> torch.Tensor:  # [T, k, H]: t[dest]
        return t.index_select(0, s.dest).view(tokens, k, h)

    def bf16_weights(s: InputSet) -> torch.Tensor:
        return s.plan.weights.to(DTYPE)

    return [
        Op("permute", lambda s: {"xp": moeroute.permute(a.x, s.plan)},
           {"index_select": lambda s: {"xp": a.x.index_select(0, s.src)},
            "x[src]": lambda s: {"xp": a.x[s.src]}},
           2 * rows * h * b + rows * 4, "copy", RTOL[DTYPE]),
        Op("combine", lambda s: {"y": moeroute.combine(a.yp, s.plan)},
           {"gather+bmm": lambda s: {"y": torch.bmm(bf16_weights(s).view(tokens, 1, k),
                                                    gathered(s, a.yp)).view(tokens, h)},
            "gather+mul+sum": lambda s: {"y": (gathered(s, a.yp) * bf16_weights(s)[..., None]).sum(1)},
            "index_add": lambda s: {"y": a.yp.new_zeros(tokens, h).index_add_(
                0, s.src, a.yp * s.row_weights[:, None])}},
           rows * h * b + tokens * h * b + tokens * k * 8, "copy", RTOL[DTYPE]),
        Op("permute_backward", lambda s: {"grad_x": moeroute.permute_backward(a.yp, s.plan)},
           {"gather+sum": lambda s: {"grad_x": gathered(s, a.yp).sum(1)},
            "index_add": lambda s: {"grad_x": a.yp.new_zeros(tokens, h).index_add_(0, s.src, a.yp)}},
           rows * h * b + tokens * h * b + tokens * k * 4, rtol=RTOL[DTYPE]),
        Op("combine_backward", lambda s: dict(zip(("grad_yp", "grad_weights"),
                                                  moeroute.combine_backward(a.grad_y, a.yp, s.plan))),
           {"gather*w, gather+bmm": lambda s: {
               "grad_yp": a.grad_y.index_select(0, s.src) * s.row_weights[:, None],
               "grad_weights": torch.bmm(gathered(s, a.yp), a.grad_y.view(tokens, h, 1)).view(tokens, k)},
            "gather*w, gather+mul+sum": lambda s: {
               "grad_yp": a.grad_y.index_select(0, s.src) * s.row_weights[:, None],
               "grad_weights": (gathered(s, a.yp) * a.grad_y[:, None, :]).sum(-1, dtype=torch.float32)}},
           2 * rows * h * b + tokens * h * b + tokens * k * 12 + rows * 4, rtol=RTOL[DTYPE]),
    ]


# ------------------------------------------------------------------------------ measurement

def time_ms(fn: Callable[[InputSet], Fields], sets: list[InputSet], repeat: int) -> float:
    """Median CUDA-event time per call of fn, each timing spanning BATCH back-to-back calls on the
    input sets in turn (as in a model, where the host queues work ahead of the GPU), after warm-up."""
    for i in range(WARMUP):
        fn(sets[i % len(sets)])
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeat)]
    for i, (start, end) in enumerate(events):
        start.record()
        for j in range(BATCH):
            fn(sets[(i * BATCH + j) % len(sets)])
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) / BATCH for start, end in events)


def copy_ms(rows: int, repeat: int) -> float:
    """dst.copy_(src) of an [R, H] activation tensor."""
    src = torch.randn(rows, HIDDEN, device=DEVICE, dtype=DTYPE)
    dst = torch.empty_like(src)
    return time_ms(lambda _: dst.copy_(src), [None], repeat)


def disagreement(got: torch.Tensor, want: torch.Tensor, rtol: float) -> str | None:
    """None if got matches want: integers exactly, floats within rtol (see RTOL)."""
    got = got.reshape(want.shape)
    if not want.is_floating_point():
        bad = got.long() != want.long()
    else:
        g, w = got.float(), want.float()
        bad = (g - w).abs() > rtol * (w.abs() + w.square().mean().sqrt())
    count = int(bad.sum())
    return f"{count} of {bad.numel()} elements differ" if count else None


def check(op: Op, s: InputSet) -> list[str]:
    """Mismatches between moeroute and each torch formulation on one input set."""
    ours = op.ours(s)
    lines = []
    for name, formulation in op.torch.items():
        for key, want in formulation(s).items():
            why = disagreement(ours[key], want, op.rtol)
            if why:
                lines.append(f"{op.name}: {key} vs {name}: {why}")
    return lines


@dataclass
class Result:
    """An op's timings (the Op itself is not kept: its closures hold the activations)."""

    name: str
    bytes: int
    target: str
    ms: float
    torch_ms: dict[str, float]

    @property
    def best_torch(self) -> str:
        return min(self.torch_ms, key=self.torch_ms.get)

    @property
    def gbs(self) -> float:
        return self.bytes / self.ms / 1e6


def bench_config(experts: int, k: int, tokens: int, repeat: int) -> tuple[float, list[Result], list[str]]:
    """(copy bandwidth GB/s, each op's timings, mismatches) at one (E, k)."""
    copy_gbs = 2 * tokens * k * HIDDEN * DTYPE.itemsize / copy_ms(tokens * k, repeat) / 1e6
    sets, shared = make_inputs(tokens, experts, k)
    ops = route_ops(tokens, experts, k) + activation_ops(tokens, k, shared)
    mismatches = [line for op in ops for line in check(op, sets[0])]
    results = [Result(op.name, op.bytes, op.target, time_ms(op.ours, sets, repeat),
                      {name: time_ms(f, sets, repeat) for name, f in op.torch.items()}) for op in ops]
    return copy_gbs, results, mismatches


# -------------------------------------------------------------------------------- reporting

def verdict(r: Result, copy_gbs: float) -> str:
    if r.target == "copy":
        return f">= {COPY_TARGET:.0%} copy: {'PASS' if r.gbs >= COPY_TARGET * copy_gbs else 'MISS'}"
    if r.target == "speedup":
        speedup = r.torch_ms[r.best_torch] / r.ms
        return f">= {ROUTE_TARGET:g}x torch: {'PASS' if speedup >= ROUTE_TARGET else 'MISS'}"
    return ""


def table_rows(experts: int, k: int, copy_gbs: float, results: list[Result]) -> list[tuple[str, ...]]:
    config = f"E={experts} k={k}"
    rows = [(config, "copy [R,H]", "", f"{copy_gbs:.0f}", "100%", "", "", "", "")]
    for r in results:
        best = r.best_torch
        rows.append(("", r.name, f"{r.ms:.3f}", f"{r.gbs:.0f}", f"{r.gbs / copy_gbs:.0%}", best,
                     f"{r.torch_ms[best]:.3f}", f"{r.torch_ms[best] / r.ms:.2f}", verdict(r, copy_gbs)))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help=f"smoke run at T={QUICK_TOKENS}")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per formulation (median)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(f"compare_cuda.py needs a CUDA GPU, and torch {torch.__version__} sees none "
                         "(torch.cuda.is_available() is False)")
    tokens = QUICK_TOKENS if args.quick else TOKENS
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"moeroute {moeroute.__version__}")
    print(f"T={tokens} H={HIDDEN} {str(DTYPE).removeprefix('torch.')} activations, float32 logits, "
          f"dropless softmax top-k routing; median of {args.repeat} CUDA-event timings, each "
          f"over {BATCH} back-to-back calls, after {WARMUP} warm-ups\n")
    rows, mismatches = [], []
    for experts, k in CONFIGS:
        torch.cuda.reset_peak_memory_stats()
        copy_gbs, results, bad = bench_config(experts, k, tokens, args.repeat)
        rows += table_rows(experts, k, copy_gbs, results)
        mismatches += [f"E={experts} k={k} {line}" for line in bad]
        print(f"E={experts} k={k}: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        torch.cuda.empty_cache()
    print()
    print_table(("config", "op", "moeroute ms", "GB/s", "% copy", "fastest torch", "torch ms",
                 "torch/moeroute", "target"), rows)
    print("GB/s: bytes each op must read + write / time; copy: dst.copy_(src) of [R=T*k, H]. "
          "torch/moeroute > 1: moeroute faster.")
    if mismatches:
        print("\nNUMERICAL DISAGREEMENT (checked before timing):")
        print("\n".join(f"  {line}" for line in mismatches))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
