"""Compare moeroute's CPU ops with a memory-copy floor and the fastest PyTorch-eager formulation."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

import harness
import moeroute
from harness import Formulation, distinct_logits, normal

try:
    import torch
except ImportError:  # the torch columns are skipped
    torch = None

DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# Relative tolerance of the agreement checks, by the coarser dtype of the two results compared.
# The absolute tolerance is that times the reference's RMS: sums (combine, dot products) err
# relative to the size of their terms, not of the result. Integer results must match exactly.
RTOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}
FLOOR_TARGETS = {"permute": 1.1, "combine": 1.1}  # moeroute ms / copy-floor ms must be <= this
TORCH_TARGETS = {"route": 4.0, "combine": 8.0}  # torch ms / moeroute ms must be >= this
# The arrays each op returns, compared field by field between moeroute and torch.
RESULT_FIELDS = {
    "route": ("expert_ids", "weights", "probs", "src", "dest", "expert_offsets"),
    "permute": ("xp",),
    "combine": ("y",),
    "permute_backward": ("grad_x",),
    "combine_backward": ("grad_yp", "grad_weights"),
    "route_backward": ("grad_logits",),
}


# -------------------------------------------------------------------------------------- inputs

@dataclass
class Inputs:
    """The NumPy arrays every op is timed on; activations in the benchmarked dtype."""

    logits: np.ndarray  # [T, E]
    x: np.ndarray  # [T, H]
    yp: np.ndarray  # [R, H]
    grad_xp: np.ndarray  # [R, H]
    grad_y: np.ndarray  # [T, H]
    grad_weights: np.ndarray  # [T, k] float32
    plan: Any  # moeroute.route(logits, k): dropless, no padding rows
    top_k: int


def make_inputs(args: argparse.Namespace, dtype: np.dtype, seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    rows = args.tokens * args.top_k
    logits = distinct_logits(rng, args.tokens, args.experts, dtype)
    return Inputs(
        logits=logits,
        x=normal(rng, args.tokens, args.hidden, dtype=dtype),
        yp=normal(rng, rows, args.hidden, dtype=dtype),
        grad_xp=normal(rng, rows, args.hidden, dtype=dtype),
        grad_y=normal(rng, args.tokens, args.hidden, dtype=dtype),
        grad_weights=normal(rng, args.tokens, args.top_k),
        plan=moeroute.route(logits, args.top_k),
        top_k=args.top_k,
    )


def copy_floor(inp: Inputs) -> Formulation:
    """The memory floor: a contiguous copy of an [R, H] array, output allocation included."""
    return Formulation("np.copy", lambda: np.copy(inp.yp))


def moeroute_formulations(inp: Inputs) -> dict[str, Formulation]:
    plan, mr = inp.plan, moeroute
    ops = {
        "route": lambda: mr.route(inp.logits, inp.top_k),
        "permute": lambda: mr.permute(inp.x, plan),
        "combine": lambda: mr.combine(inp.yp, plan),
        "permute_backward": lambda: mr.permute_backward(inp.grad_xp, plan),
        "combine_backward": lambda: mr.combine_backward(inp.grad_y, inp.yp, plan),
        "route_backward": lambda: mr.route_backward(inp.grad_weights, plan, inp.logits),
    }
    return {op: Formulation("moeroute", run) for op, run in ops.items()}


# --------------------------------------------------------------------------- PyTorch baselines

def to_torch(a: np.ndarray) -> torch.Tensor:
    """A tensor of the same data (bit-exact for bfloat16, which torch.from_numpy does not know)."""
    a = np.require(a, requirements=["C", "W"])  # copies only read-only or strided arrays
    if a.dtype == DTYPES["bfloat16"]:
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


@dataclass
class TorchInputs:
    """The inputs as tensors, plus index and weight layouts derived from moeroute's plan.

    The layouts are O(T*k) and built once outside the timed region, so only the O(R*H) work of
    each op is timed: this favours torch.
    """

    logits: torch.Tensor
    x: torch.Tensor
    yp: torch.Tensor
    grad_xp: torch.Tensor
    grad_y: torch.Tensor
    grad_weights: torch.Tensor  # [T, k] float32
    src: torch.Tensor  # [R] int64: token of each row
    dest: torch.Tensor  # [T*k] int64: row of each (token, slot)
    weights: torch.Tensor  # [T, k], activation dtype
    row_weights: torch.Tensor  # [R], activation dtype: weight of the pick each row holds
    top_k: int

    @classmethod
    def from_inputs(cls, inp: Inputs) -> TorchInputs:
        plan = inp.plan
        if plan.num_dropped or (plan.src < 0).any():
            raise SystemExit("the torch baselines assume a dropless plan without padding rows")
        row_weights = np.empty(plan.num_rows, np.float32)
        row_weights[plan.dest.ravel()] = plan.weights.ravel()
        act = to_torch(inp.x).dtype
        return cls(
            logits=to_torch(inp.logits),
            x=to_torch(inp.x),
            yp=to_torch(inp.yp),
            grad_xp=to_torch(inp.grad_xp),
            grad_y=to_torch(inp.grad_y),
            grad_weights=to_torch(inp.grad_weights),
            src=to_torch(plan.src.astype(np.int64)),
            dest=to_torch(plan.dest.ravel().astype(np.int64)),
            weights=to_torch(plan.weights).to(act),
            row_weights=to_torch(row_weights).to(act),
            top_k=inp.top_k,
        )

    def picked_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """rows[dest] as [T, k, H]: each token's k rows of a permuted buffer."""
        return rows.index_select(0, self.dest).view(self.x.shape[0], self.top_k, -1)

    def sum_into_tokens(self, rows: torch.Tensor) -> torch.Tensor:
        """out[t] = the sum of rows[r] over the rows r with src[r] == t."""
        return torch.zeros_like(self.x).index_add_(0, self.src, rows)

    def weighted_token_rows(self) -> torch.Tensor:
        """grad_y[src[r]] * row_weights[r]: combine's gradient w.r.t. its input rows."""
        return self.grad_y.index_select(0, self.src) * self.row_weights[:, None]


def torch_route_weights(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """(ids, weights, probs): softmax in float32, top-k, renormalized by the picked probs."""
    probs = torch.softmax(logits.float(), dim=-1)
    ids = torch.topk(probs.detach(), k, dim=-1).indices
    picked = probs.gather(1, ids)
    return ids, picked / picked.sum(dim=-1, keepdim=True), probs


def torch_route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """The whole dropless plan, in RESULT_FIELDS["route"] order."""
    tokens, experts = logits.shape
    with torch.no_grad():
        ids, weights, probs = torch_route_weights(logits, k)
        flat_ids = ids.flatten()
        order = torch.argsort(flat_ids, stable=True)  # row -> token * k + slot
        dest = torch.empty_like(order)
        dest[order] = torch.arange(order.numel())
        counts = torch.bincount(flat_ids, minlength=experts)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return ids, weights, probs, order // k, dest.view(tokens, k), offsets


def torch_route_backward(t: TorchInputs) -> Formulation:
    """Autograd of torch_route_weights; setup runs the (untimed) forward that records the graph."""

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        logits = t.logits.detach().requires_grad_()
        return torch_route_weights(logits, t.top_k)[1], logits

    def backward(weights: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(weights, logits, t.grad_weights)[0]

    return Formulation("autograd, backward only", backward, forward)


def torch_formulations(t: TorchInputs) -> dict[str, list[Formulation]]:
    """Straightforward PyTorch-eager ways to compute each op; the fastest one is the baseline."""
    tokens, k = t.weights.shape
    w = t.weights
    return {
        "route": [Formulation("softmax+topk+argsort+bincount", lambda: torch_route(t.logits, k))],
        "permute": [Formulation("index_select", lambda: t.x.index_select(0, t.src))],
        "combine": [
            Formulation("gather+bmm", lambda: torch.bmm(
                w.view(tokens, 1, k), t.picked_rows(t.yp)).view(tokens, -1)),
            Formulation("zeros+index_add_", lambda: t.sum_into_tokens(
                t.yp * t.row_weights[:, None])),
            Formulation("gather+einsum", lambda: torch.einsum(
                "tk,tkh->th", w, t.picked_rows(t.yp))),
        ],
        "permute_backward": [
            Formulation("zeros+index_add_", lambda: t.sum_into_tokens(t.grad_xp)),
            Formulation("gather+sum", lambda: t.picked_rows(t.grad_xp).sum(1)),
        ],
        "combine_backward": [
            Formulation("gather+mul+sum", lambda: (
                t.weighted_token_rows(), (t.picked_rows(t.yp) * t.grad_y[:, None]).sum(-1))),
            Formulation("gather+bmm", lambda: (
                t.weighted_token_rows(),
                torch.bmm(t.picked_rows(t.yp), t.grad_y[:, :, None]).view(tokens, k))),
        ],
        "route_backward": [torch_route_backward(t)],
    }


# ---------------------------------------------------------------------------------- agreement

def result_arrays(op: str, result: Any) -> tuple:
    """The arrays an op returned, in RESULT_FIELDS order."""
    if op == "route" and not isinstance(result, tuple):
        return tuple(getattr(result, field) for field in RESULT_FIELDS["route"])
    return result if isinstance(result, tuple) else (result,)


def float_dtype(a: Any) -> str | None:
    """The dtype name of a floating-point array or tensor, None for integers."""
    if harness.is_tensor(a):
        return str(a.dtype).replace("torch.", "") if a.is_floating_point() else None
    return a.dtype.name if a.dtype.name in RTOL or a.dtype.kind == "f" else None


def field_mismatch(ours: Any, theirs: Any) -> str | None:
    """None if two results agree (floats to RTOL of the coarser dtype, see harness.compare;
    integers exactly), else a one-line summary."""
    floats = [d for d in (float_dtype(ours), float_dtype(theirs)) if d is not None]
    rtol = max((RTOL.get(d, RTOL["float32"]) for d in floats), default=0.0)
    return harness.compare(ours, theirs, rtol)["mismatch"]


def disagreement(op: str, ours: Any, theirs: Any) -> str | None:
    """None if torch's result matches moeroute's, else the fields that differ and how."""
    pairs = zip(RESULT_FIELDS[op], result_arrays(op, ours), result_arrays(op, theirs))
    problems = [f"{field}: {why}" for field, a, b in pairs if (why := field_mismatch(a, b))]
    return "; ".join(problems) or None


# ------------------------------------------------------------------------------------ running

def timed_alone(f: Formulation, repeat: int) -> dict:
    """Median wall time (ms) of f alone over `repeat` calls after one warm-up call, and the
    samples (see harness.run_once: allocating the result is timed, freeing it is not)."""
    return harness.timing_entry(harness.measure_alone(f, repeat))


def compare_with_torch(op: str, ours_result: Any, ours_ms: float, candidates: list[Formulation],
                       repeat: int) -> dict:
    """Check every candidate once against moeroute's result, then time it; keep the fastest."""
    timed = {}
    for f in candidates:
        mismatch = disagreement(op, ours_result, f.run(*f.setup()))
        timed[f.name] = {**timed_alone(f, repeat), "mismatch": mismatch}
    best = min(timed, key=lambda name: timed[name]["median_ms"])
    entry = {"impl": best, "median_ms": timed[best]["median_ms"],
             "speedup": timed[best]["median_ms"] / ours_ms, "candidates": timed}
    if op in TORCH_TARGETS:
        entry.update(target=TORCH_TARGETS[op], passed=entry["speedup"] >= TORCH_TARGETS[op])
    return entry


def bench_dtype(args: argparse.Namespace, dtype_name: str) -> dict:
    inp = make_inputs(args, DTYPES[dtype_name])
    floor = timed_alone(copy_floor(inp), args.repeat)
    baselines = torch_formulations(TorchInputs.from_inputs(inp)) if torch is not None else {}
    ops = {}
    for op, f in moeroute_formulations(inp).items():
        entry = timed_alone(f, args.repeat)
        entry["floor_ratio"] = entry["median_ms"] / floor["median_ms"]
        if op in FLOOR_TARGETS:
            entry.update(floor_target=FLOOR_TARGETS[op],
                         floor_passed=entry["floor_ratio"] <= FLOOR_TARGETS[op])
        if baselines:
            entry["torch"] = compare_with_torch(op, f.run(), entry["median_ms"], baselines[op],
                                                args.repeat)
        ops[op] = entry
    return {"dtype": dtype_name, "floor": floor, "ops": ops}


# ---------------------------------------------------------------------------------- reporting

COLUMNS = ("op", "dtype", "ms", "x floor", "floor target", "torch ms", "torch/ours",
           "torch target", "torch formulation")


def verdict(entry: dict, target_key: str, passed_key: str, relation: str) -> str:
    if target_key not in entry:
        return ""
    return f"{relation}{entry[target_key]:g}x {'PASS' if entry[passed_key] else 'MISS'}"


def torch_cells(t: dict | None) -> tuple[str, ...]:
    if t is None:
        return ("-", "-", "", "-")
    flag = " MISMATCH" if t["candidates"][t["impl"]]["mismatch"] else ""
    return (f"{t['median_ms']:.2f}", f"{t['speedup']:.2f}", verdict(t, "target", "passed", ">="),
            t["impl"] + flag)


def table_rows(result: dict) -> list[tuple[str, ...]]:
    dtype = result["dtype"]
    floor_ms = f"{result['floor']['median_ms']:.2f}"
    rows = [("copy floor [R,H]", dtype, floor_ms, "1.00", "", "", "", "", "")]
    for op, e in result["ops"].items():
        ours = (op, dtype, f"{e['median_ms']:.2f}", f"{e['floor_ratio']:.2f}",
                verdict(e, "floor_target", "floor_passed", "<="))
        rows.append(ours + torch_cells(e.get("torch")))
    return rows


def mismatches(results: list[dict]) -> list[str]:
    return [f"{r['dtype']} {op} vs torch {name}: {c['mismatch']}"
            for r in results for op, e in r["ops"].items()
            for name, c in e.get("torch", {}).get("candidates", {}).items() if c["mismatch"]]


def environment(args: argparse.Namespace, threads: int) -> dict:
    return {
        "tokens": args.tokens, "hidden": args.hidden, "experts": args.experts,
        "top_k": args.top_k, "rows": args.tokens * args.top_k, "repeat": args.repeat,
        **harness.environment(threads),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median)")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help=f"comma-separated, among {', '.join(DTYPES)}")
    args = p.parse_args(argv)
    args.dtypes = args.dtypes.split(",")
    if any(d not in DTYPES for d in args.dtypes):
        p.error(f"--dtypes {','.join(args.dtypes)}: choose among {', '.join(DTYPES)}")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if not 1 <= args.top_k <= args.experts <= 512:
        p.error("need 1 <= --top-k <= --experts <= 512 (tie-free logits exact in bfloat16)")
    return args


def print_header(env: dict) -> None:
    print(f"T={env['tokens']} H={env['hidden']} E={env['experts']} k={env['top_k']} "
          f"R={env['rows']}, median of {env['repeat']} runs after 1 warm-up")
    with_torch = " and torch" if env["torch"] else ""
    print(f"threads: {env['threads']} (moeroute{with_torch}), cpu_count: {env['cpu_count']}, "
          f"cpu: {env['cpu']}, {env['platform']}")
    print(f"python {env['python']}, numpy {env['numpy']}, "
          f"torch {env['torch'] or 'not importable (torch columns skipped)'}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = moeroute.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    env = environment(args, threads)
    print_header(env)

    results = [bench_dtype(args, dtype) for dtype in args.dtypes]
    harness.print_table(COLUMNS, [row for result in results for row in table_rows(result)])
    print("\nx floor = moeroute ms / copy-floor ms; torch/ours = fastest torch-eager ms / "
          "moeroute ms; torch route_backward times the backward call only.")

    bad = mismatches(results)
    if bad:
        print("\nNUMERICAL DISAGREEMENT between moeroute and torch:")
        print("\n".join(f"  {line}" for line in bad))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "results": results, "mismatches": bad}, fh, indent=2)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
