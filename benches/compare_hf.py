"""Benchmark moeroute as a Hugging Face transformers experts backend, in one run: a
Qwen3-MoE-shaped causal LM built from a config with random weights (no downloads; by default
hidden 1024, 4 layers, 64 experts, top-8, expert width 256, 8 query / 2 key-value heads of 128,
vocabulary 1000 so that the LM head stays small), run with each experts implementation in turn:
`moeroute` (registered by `import moeroute.hf`; skipped, with the reason, where that import
fails), and transformers' own `grouped_mm`, `batched_mm` and `eager`. Every backend runs on the
same model object (`model.set_experts_implementation(name)`), so all use the same weights.

    python benches/compare_hf.py                    # ~3 min on 2 idle cores, ~10 on busy ones
    python benches/compare_hf.py --quick            # a smoke run on a small model
    python benches/compare_hf.py --device cuda --dtype bfloat16
    python benches/compare_hf.py --backends moeroute,grouped_mm --repeat 5

What is timed (wall clock, the device synchronized at the end of each timed call):

- train: one training step, forward + backward of the LM loss (labels = the inputs) on a
  [batch, seq] batch of random tokens (default 4 x 128), gradients set to None beforehand
  (untimed), no optimizer step (it does not depend on the experts backend). tokens/s =
  batch * seq / step time.
- moe: the time inside the sparse MoE blocks (router + experts) during those same training
  steps, forward and backward. Each block gets a forward pre-hook and a forward hook (its forward
  is the time between them) and a full backward pre-hook and a full backward hook: PyTorch calls
  the first when the gradient of the block's output is ready and the second when the gradient of
  its input is, and in between autograd runs exactly the block's backward, gradient accumulation
  into its weights included (the block's input, the post-attention norm's output, feeds nothing
  else, and no other node of the graph is ready in that interval). A step's MoE time is the sum
  of both intervals over all blocks. On CUDA every hook first synchronizes the device, so that
  the block's kernels fall inside its interval (this serializes the step a little). The hooks
  (two autograd identity nodes per block and four clock reads) stay installed during the whole
  training-step measurement, for every backend alike, so the step times include their cost too:
  microseconds against a step of a second.
- prefill: a forward without gradients of a [batch, seq] prompt (default 4 x 256) with
  use_cache=True and logits_to_keep=1, as `generate` prefills. tokens/s = batch * seq / time.
- decode bN: the latency of one decoding step at batch N (default 1 and 16): `model(token,
  cache=..., use_cache=True)` for --decode-tokens successive [N, 1] tokens, without gradients,
  starting from a copy of a KV cache of a --decode-prompt token prompt prefilled once (untimed,
  with grouped_mm) for every backend alike. The tokens fed are drawn beforehand (teacher forced,
  not sampled), so every backend does exactly the same work; generate's sampling and stopping
  logic, the same for every backend, is left out. ms/token = time of the steps / their number.

Rounds: every timed round runs each backend once, back to back, the order reversed every other
round (harness.measure), so the machine's drift falls on all alike; each table cell is the
median with its quartiles [q1-q3]. `eager` (a Python loop over 64 experts, and a full-size
weight gradient per expert in the backward) is several times slower in training and prefill, so
there it takes part only in the first --eager-repeat rounds (in every round of decode).
`batched_mm` gathers a copy of the expert weights for every (token, pick), ~3 MB each here: at
the training and prefill batches that is tens of GB, so it is skipped (and says so) wherever that
estimate exceeds --memory-fraction of the free memory; it runs in decode. Before timing, each
backend's first call (its warm-up) is checked against the reference (eager, else grouped_mm):
logits, the loss and the gradients of a few parameters.

Ratios are medians of the per-round ratios with their quartiles (harness.paired_ratio). Targets
(issue 12): MoE-block time in the training step grouped_mm / moeroute >= 1.2; whole training step
best HF backend / moeroute >= 1.05; decode latency per token moeroute / best HF backend <= 1.0 at
each batch. Each target line says met or missed, whether the target lies inside the ratio's
quartile range (then one run cannot tell: the result is within the run-to-run noise), and whether
the two sides' quartile ranges of time overlap. Then a markdown table for the README.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import harness
from harness import Formulation, compare, paired_ratio, quartiles

try:
    import transformers
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise SystemExit(f"compare_hf.py needs transformers with Qwen3-MoE ({exc}); "
                     "install moeroute[hf]")

HF_BACKENDS = ("grouped_mm", "batched_mm", "eager")
ALL_BACKENDS = ("moeroute", *HF_BACKENDS)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The model and the workloads: the default run, and --quick (a smoke run). An option given on the
# command line wins over both.
PRESETS = {
    "full": dict(hidden=1024, layers=4, experts=64, top_k=8, expert_ffn=256, heads=8, kv_heads=2,
                 head_dim=128, vocab=1000, train_batch=4, train_seq=128, prefill_batch=4,
                 prefill_seq=256, decode_batches="1,16", decode_prompt=64, decode_tokens=8,
                 repeat=9, eager_repeat=3),
    "quick": dict(hidden=256, layers=2, experts=16, top_k=4, expert_ffn=128, heads=4, kv_heads=2,
                  head_dim=64, vocab=500, train_batch=2, train_seq=64, prefill_batch=2,
                  prefill_seq=64, decode_batches="1,4", decode_prompt=16, decode_tokens=4,
                  repeat=3, eager_repeat=2),
}
# Agreement of each backend's warm-up results with the reference's (see harness.compare):
# |diff| <= RTOL * (|ref| + RMS(ref)) elementwise and RMS(diff) <= RMS_TOL * RMS(ref). float32
# differs by summation order only. Half precision rounds every stage (eager even accumulates its
# output in it, with index_add_), and routing ties can pick different experts for a token: the
# weight gradients of an expert that few tokens reach then differ by a few RMS in rare elements,
# and by ~6% RMS overall (grouped_mm and batched_mm from eager alike, in bfloat16 at --quick), so
# there only the RMS bound and gross errors count.
RTOL = {"float32": 1e-3, "bfloat16": 10.0, "float16": 10.0}
RMS_TOL = {"float32": 1e-4, "bfloat16": 0.15, "float16": 0.15}
TARGETS = {"moe": 1.2, "train": 1.05, "decode": 1.0}


# ------------------------------------------------------------------------------------ the model

def build_model(args: argparse.Namespace) -> Qwen3MoeForCausalLM:
    config = Qwen3MoeConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        intermediate_size=4 * args.expert_ffn,  # dense MLP width; every layer is sparse here
        moe_intermediate_size=args.expert_ffn, num_experts=args.experts,
        num_experts_per_tok=args.top_k, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    model = Qwen3MoeForCausalLM._from_config(config, attn_implementation="sdpa")
    return model.to(device=args.device, dtype=DTYPES[args.dtype])


def moe_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The sparse MoE blocks: the modules holding both the router (gate) and the experts."""
    return [m for m in model.modules()
            if hasattr(m, "experts") and hasattr(m, "gate") and hasattr(m.experts, "num_experts")]


def expert_weight_elems(model: torch.nn.Module) -> int:
    """Elements of one expert's weights (all its projections), from the first block."""
    experts = moe_blocks(model)[0].experts
    return sum(p[0].numel() for p in experts.parameters() if p.dim() == 3)


# The name of the cache argument: transformers 5.x renamed past_key_values to cache.
CACHE_ARG = ("cache" if "cache" in inspect.signature(Qwen3MoeForCausalLM.forward).parameters
             else "past_key_values")


def output_cache(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


@dataclass
class Backend:
    """One column: an experts implementation on a model (the shared one, or a patched copy)."""

    name: str
    model: torch.nn.Module
    implementation: str

    def select(self) -> torch.nn.Module:
        if self.model.config._experts_implementation != self.implementation:
            self.model.set_experts_implementation(self.implementation)
        return self.model


class MoeClock:
    """Forward and backward hooks on every MoE block, summing the time spent inside them; see the
    module docstring."""

    def __init__(self, models: list[torch.nn.Module], cuda: bool):
        self.cuda = cuda
        self.total_s = 0.0
        self._start: dict[int, float] = {}
        self._handles = []
        for model in models:
            for block in moe_blocks(model):
                self._handles += [
                    block.register_forward_pre_hook(self._begin),
                    block.register_forward_hook(self._end),
                    block.register_full_backward_pre_hook(self._begin),
                    block.register_full_backward_hook(self._end),
                ]

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _begin(self, module, *_):
        self._start[id(module)] = self._now()

    def _end(self, module, *_):
        self.total_s += self._now() - self._start.pop(id(module))

    def take_ms(self) -> float:
        """The time accumulated since the last call, in ms."""
        ms, self.total_s = self.total_s * 1e3, 0.0
        return ms

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# ------------------------------------------------------------------------------- workloads

@dataclass
class Workload:
    """One row: `prepare(backend)` (untimed) returns the arguments of `step` (timed)."""

    key: str
    title: str
    unit: str  # "tokens/s" (higher is better) or "ms/token" (lower is better)
    per_call: float  # tokens per call (tokens/s) or steps per call (ms/token)
    prepare: Callable[[Backend], tuple]
    step: Callable[..., Any]
    gathered_rows: int  # (token, pick) pairs per layer, for batched_mm's memory estimate
    keeps_gathers: bool  # training keeps every layer's gathered weights for the backward
    check: Callable[[Backend, Any], dict[str, torch.Tensor]]  # what the agreement check compares
    eager_every_round: bool = False  # else eager runs in the first --eager-repeat rounds only
    skipped: dict[str, str] = field(default_factory=dict)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_workloads(args: argparse.Namespace, model: torch.nn.Module, clock_holder: dict,
                   moe_ms: dict[str, list[float]]) -> list[Workload]:
    gen = torch.Generator().manual_seed(args.seed + 1)

    def tokens(batch: int, seq: int) -> torch.Tensor:
        return torch.randint(0, args.vocab, (batch, seq), generator=gen).to(args.device)

    device = args.device
    train_ids = tokens(args.train_batch, args.train_seq)
    prefill_ids = tokens(args.prefill_batch, args.prefill_seq)
    names = {id(p): n for n, p in model.named_parameters()}
    first, last = moe_blocks(model)[0], moe_blocks(model)[-1]
    watched = {  # parameter names whose gradients the agreement check compares
        "grad embed": model.model.embed_tokens.weight,
        "grad router[0]": first.gate.weight,
        **{f"grad experts[0].{n}": p for n, p in first.experts.named_parameters()},
        **{f"grad experts[-1].{n}": p for n, p in last.experts.named_parameters()},
        "grad q_proj[-1]": model.model.layers[-1].self_attn.q_proj.weight,
    }
    watched = {label: names[id(p)] for label, p in watched.items()}

    def train_prepare(b: Backend) -> tuple:
        m = b.select()
        m.train()
        m.zero_grad(set_to_none=True)
        return (b, m)

    def train_step(b: Backend, m: torch.nn.Module) -> torch.Tensor:
        loss = m(train_ids, labels=train_ids).loss
        loss.backward()
        synchronize(device)
        clock = clock_holder.get("clock")
        if clock is not None:
            moe_ms.setdefault(b.name, []).append(clock.take_ms())
        return loss.detach()

    def train_check(b: Backend, loss: torch.Tensor) -> dict:
        params = dict(b.model.named_parameters())  # a patched copy keeps the names
        out = {"loss": loss.float().reshape(1)}
        for label, name in watched.items():
            p = params[name]
            out[label] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        return out

    def prefill_prepare(b: Backend) -> tuple:
        m = b.select()
        m.eval()
        return (m,)

    @torch.no_grad()
    def prefill_step(m: torch.nn.Module) -> torch.Tensor:
        logits = m(prefill_ids, use_cache=True, logits_to_keep=1).logits
        synchronize(device)
        return logits

    workloads = [
        Workload("train", f"training step, tokens/s ({args.train_batch}x{args.train_seq})",
                 "tokens/s", args.train_batch * args.train_seq, train_prepare, train_step,
                 args.train_batch * args.train_seq * args.top_k, True, train_check),
        Workload("prefill", f"prefill, tokens/s ({args.prefill_batch}x{args.prefill_seq})",
                 "tokens/s", args.prefill_batch * args.prefill_seq, prefill_prepare, prefill_step,
                 args.prefill_batch * args.prefill_seq * args.top_k, False,
                 lambda b, logits: {"logits": logits}),
    ]

    for batch in args.decode_batches:
        prompt = tokens(batch, args.decode_prompt)
        fed = tokens(batch, args.decode_tokens)
        reference = Backend("grouped_mm", model, "grouped_mm")
        with torch.no_grad():
            m = reference.select()
            m.eval()
            cache = output_cache(m(prompt, use_cache=True))

        def decode_prepare(b: Backend, cache=cache) -> tuple:
            m = b.select()
            m.eval()
            return (m, copy.deepcopy(cache))

        @torch.no_grad()
        def decode_step(m: torch.nn.Module, cache: Any, fed=fed) -> torch.Tensor:
            logits = []
            for i in range(fed.shape[1]):
                out = m(fed[:, i:i + 1], use_cache=True, **{CACHE_ARG: cache})
                cache = output_cache(out)
                logits.append(out.logits[:, -1])
            synchronize(device)
            return torch.stack(logits, dim=1)

        workloads.append(Workload(
            f"decode_b{batch}", f"decode, ms/token, batch {batch} (after {args.decode_prompt})",
            "ms/token", args.decode_tokens, decode_prepare, decode_step, batch * args.top_k, False,
            lambda b, logits: {"logits": logits}, eager_every_round=True))
    return workloads


def free_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def batched_mm_skip(w: Workload, args: argparse.Namespace, elems: int) -> str | None:
    """Why batched_mm cannot run w here (its per-(token, pick) weight copies would not fit), or
    None."""
    per_layer = w.gathered_rows * elems * torch.empty((), dtype=DTYPES[args.dtype]).element_size()
    need = per_layer * (2 * args.layers if w.keeps_gathers else 1)
    budget = args.memory_fraction * free_memory_bytes(args.device)
    if need <= budget:
        return None
    return (f"its per-(token, pick) copies of the expert weights would take ~{need / 2**30:.1f} "
            f"GiB, over {args.memory_fraction:g} of the free {args.device} memory")


# -------------------------------------------------------------------------------- measuring

def summary(values: list[float]) -> dict:
    q = (statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1
         else [values[0]] * 3)
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def as_unit(w: Workload, ms: list[float]) -> list[float]:
    """Samples in the workload's unit: tokens/s or ms per decoding step."""
    if w.unit == "tokens/s":
        return [w.per_call * 1e3 / t for t in ms]
    return [t / w.per_call for t in ms]


def bench_workload(w: Workload, backends: list[Backend], args: argparse.Namespace,
                   reference: str, moe_ms: dict[str, list[float]]) -> dict:
    rtol, rms_tol = RTOL[args.dtype], RMS_TOL[args.dtype]
    running = [b for b in backends if b.name not in w.skipped]
    forms = [Formulation(b.name, w.step, (lambda b=b: w.prepare(b))) for b in running]
    results: dict[str, Any] = {}
    print(f"  {w.key}: warm-up and agreement check ({', '.join(b.name for b in running)})",
          file=sys.stderr, flush=True)
    for b, f in zip(running, forms):
        _, out = harness.run_once(f)
        results[b.name] = w.check(b, out)
        del out
    ref_name = reference if reference in results else running[0].name
    agreement = {}
    for name, got in results.items():
        if name != ref_name:
            agreement[name] = {k: compare(v, results[ref_name][k], rtol, rms_tol)
                               for k, v in got.items()}
    results.clear()
    moe_ms.clear()
    slow = [f for f in forms if f.name == "eager" and not w.eager_every_round]
    fast = [f for f in forms if f not in slow]
    first = min(args.eager_repeat, args.repeat) if slow else 0
    samples = harness.measure(fast + slow, first) if first else {f.name: [] for f in forms}
    rest = harness.measure(fast, args.repeat - first) if fast and args.repeat > first else {}
    for name, more in rest.items():
        samples[name] += more
    entry = {"title": w.title, "unit": w.unit, "per_call": w.per_call, "skipped": w.skipped,
             "reference": ref_name, "agreement": agreement,
             "samples_ms": samples,
             "stats": {n: summary(as_unit(w, s)) for n, s in samples.items()}}
    if moe_ms:
        entry["moe_samples_ms"] = {n: list(v) for n, v in moe_ms.items()}
        entry["moe_stats"] = {n: summary(v) for n, v in moe_ms.items()}
        entry["moe_share"] = {n: statistics.median(a / b for a, b in zip(v, samples[n]))
                              for n, v in moe_ms.items()}
    return entry


def best_hf(entry: dict, key: str = "samples_ms") -> str | None:
    """The HF backend with the lowest median time in entry, or None."""
    times = {n: statistics.median(s) for n, s in entry[key].items() if n in HF_BACKENDS and s}
    return min(times, key=times.get) if times else None


def overlap(a: list[float], b: list[float]) -> bool:
    """Whether the quartile ranges of two sample sets overlap."""
    sa, sb = summary(a), summary(b)
    return sa["q1"] <= sb["q3"] and sb["q1"] <= sa["q3"]


def verdict(label: str, num_name: str, num: list[float], den_name: str, den: list[float],
            target: float, at_least: bool) -> dict:
    """num / den per round against the target (>= if at_least, else <=)."""
    r = paired_ratio(num, den)
    met = r["median"] >= target if at_least else r["median"] <= target
    return {"label": label, "ratio": f"{num_name} / {den_name}", "target": target,
            "at_least": at_least, "median": r["median"], "q1": r["q1"], "q3": r["q3"],
            "rounds": len(r["ratios"]), "met": met,
            "target_inside_iqr": r["q1"] <= target <= r["q3"],
            "times_overlap": overlap(num[:len(r["ratios"])], den[:len(r["ratios"])])}


def bench_hf(args: argparse.Namespace) -> dict:
    load_start = harness.load_average()
    torch.manual_seed(args.seed)
    print(f"transformers {transformers.__version__}, device {args.device}, dtype {args.dtype}")
    status = {}
    if "moeroute" in args.backends:
        try:
            import moeroute.hf  # noqa: F401  (registers the "moeroute" experts implementation)
        except Exception as exc:  # noqa: BLE001 - any failure: report it and run the others
            status["moeroute"] = (f"skipped: `import moeroute.hf` failed "
                                  f"({type(exc).__name__}: {exc})")
        else:
            if "moeroute" not in ALL_EXPERTS_FUNCTIONS:
                status["moeroute"] = ("skipped: `import moeroute.hf` did not register "
                                      "'moeroute' in transformers' ALL_EXPERTS_FUNCTIONS")
    names = [n for n in args.backends if n not in status]
    if not names:
        raise SystemExit("no backend left to run: " + "; ".join(status.values()))
    for name, why in status.items():
        print(f"{name}: {why}")

    start = time.perf_counter()
    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen3-MoE, hidden {args.hidden}, {args.layers} layers, {args.experts} experts, "
          f"top-{args.top_k}, expert width {args.expert_ffn}, {args.heads} query / "
          f"{args.kv_heads} key-value heads of {args.head_dim}, vocabulary {args.vocab}: "
          f"{n_params / 1e6:.0f}M parameters, random weights (seed {args.seed}), built in "
          f"{time.perf_counter() - start:.1f} s")
    backends = [Backend(n, model, n) for n in names]
    if args.with_patch and "moeroute" in names:
        patch = getattr(sys.modules.get("moeroute.hf"), "patch", None)
        if patch is None:
            status["moeroute+patch"] = "skipped: moeroute.hf has no patch()"
        else:  # patch works in place: on a copy, with the same weights
            backends.append(Backend("moeroute+patch", patch(copy.deepcopy(model)), "moeroute"))
    print(f"backends: {', '.join(b.name for b in backends)}; {args.repeat} rounds "
          f"(eager: {min(args.eager_repeat, args.repeat)})\n")

    clock_holder: dict = {}
    moe_ms: dict[str, list[float]] = {}
    workloads = make_workloads(args, model, clock_holder, moe_ms)
    elems = expert_weight_elems(model)
    reference = "eager" if "eager" in names else "grouped_mm"
    entries = {}
    for w in workloads:
        if "batched_mm" in names:
            why = batched_mm_skip(w, args, elems)
            if why:
                w.skipped["batched_mm"] = why
        if w.key == "train":
            models = list({id(b.model): b.model for b in backends}.values())
            clock_holder["clock"] = MoeClock(models, args.device.startswith("cuda"))
        try:
            entries[w.key] = bench_workload(w, backends, args, reference, moe_ms)
        finally:
            if "clock" in clock_holder:
                clock_holder.pop("clock").remove()
                for b in backends:
                    b.model.zero_grad(set_to_none=True)
    return {"status": status, "backends": [b.name for b in backends], "parameters": n_params,
            "threads": torch.get_num_threads(), "load": [load_start, harness.load_average()],
            "config": {k: getattr(args, k) for k in PRESETS["full"]}, "workloads": entries,
            "targets": targets_of(entries)}


def targets_of(entries: dict) -> list[dict]:
    out = []
    train = entries.get("train")
    if train and "moeroute" in train["samples_ms"]:
        moe = train.get("moe_samples_ms", {})
        if "grouped_mm" in moe:
            out.append(verdict("MoE blocks in the training step (fwd + bwd), time",
                               "grouped_mm", moe["grouped_mm"], "moeroute", moe["moeroute"],
                               TARGETS["moe"], True))
        best = best_hf(train)
        if best:
            out.append(verdict("whole training step, time", best, train["samples_ms"][best],
                               "moeroute", train["samples_ms"]["moeroute"], TARGETS["train"],
                               True))
    for key, e in entries.items():
        if key.startswith("decode") and "moeroute" in e["samples_ms"]:
            best = best_hf(e)
            if best:
                out.append(verdict(f"decode latency per token, batch {key[len('decode_b'):]}",
                                   "moeroute", e["samples_ms"]["moeroute"], best,
                                   e["samples_ms"][best], TARGETS["decode"], False))
    return out


# ------------------------------------------------------------------------------------ report

def num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def cell(s: dict) -> str:
    return f"{num(s['median'])} [{num(s['q1'])}-{num(s['q3'])}]"


def ratio_cell(v: dict) -> str:
    sign = ">=" if v["at_least"] else "<="
    return (f"{v['ratio']} {v['median']:.2f} {quartiles(v, 2)} (target {sign} {v['target']:g}: "
            f"{'met' if v['met'] else 'missed'})")


def target_line(v: dict) -> str:
    sign = ">=" if v["at_least"] else "<="
    noise = ("the target lies inside the ratio's quartile range: within the run-to-run noise"
             if v["target_inside_iqr"] else "the target lies outside the ratio's quartile range")
    times = ("the two sides' quartile ranges of time overlap" if v["times_overlap"]
             else "their quartile ranges of time do not overlap")
    return (f"{'MET   ' if v['met'] else 'MISSED'} {v['label']}: {v['ratio']} {v['median']:.3f} "
            f"{quartiles(v, 3)} {sign} {v['target']:g} ({v['rounds']} rounds); {noise}; {times}")


def print_hf(args: argparse.Namespace, result: dict) -> None:
    entries, names = result["workloads"], result["backends"]
    targets = {v["label"].split(",")[0]: v for v in result["targets"]}
    shown = [n for n in ALL_BACKENDS if n in names or n in result["status"]]
    shown += [n for n in names if n not in shown]
    header = ["measure", *shown, "ratio"]
    rows = []
    for key, e in entries.items():
        cells = []
        for n in shown:
            if n in e["stats"]:
                cells.append(cell(e["stats"][n]))
            elif n in e["skipped"] or n in result["status"]:
                cells.append("skipped")
            else:
                cells.append("-")
        if key == "train":
            v = targets.get("whole training step")
            ratio = ratio_cell(v) if v else _info_ratio(e, best_first=True)
        elif key.startswith("decode"):
            v = next((t for t in result["targets"]
                      if t["label"].endswith(f"batch {key[len('decode_b'):]}")), None)
            ratio = ratio_cell(v) if v else _info_ratio(e, best_first=False)
        else:
            ratio = _info_ratio(e, best_first=True)
        rows.append([e["title"], *cells, ratio])
        if key == "train" and "moe_stats" in e:
            cells = [cell(e["moe_stats"][n]) + f" ({100 * e['moe_share'][n]:.0f}%)"
                     if n in e["moe_stats"] else ("skipped" if n in e["skipped"] or
                                                  n in result["status"] else "-")
                     for n in shown]
            v = targets.get("MoE blocks in the training step (fwd + bwd)")
            rows.append(["MoE blocks in the training step, ms (share of step)", *cells,
                         ratio_cell(v) if v else "-"])
    print("\nMedian [quartiles]; tokens/s: higher is better, ms: lower is better. "
          f"{args.dtype} on {args.device}, {result['parameters'] / 1e6:.0f}M parameters.\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    notes = [f"{n}: {why}" for n, why in result["status"].items()]
    for key, e in entries.items():
        notes += [f"{n} in {key}: skipped, {why}" for n, why in e["skipped"].items()]
    loads = [l[0] for l in result["load"] if l]
    if loads and max(loads) > result["threads"] + 0.5:
        notes.append(f"The 1-minute load average was {' and '.join(f'{l:g}' for l in loads)} at "
                     f"the start and end, above the {result['threads']} threads used: other "
                     "processes competed for the cores, and the rounds they slowed (often several "
                     "times over) widen the quartiles.")
    if notes:
        print("\n" + "\n".join(notes))
    print("\nAgreement of each backend's warm-up results with the reference (max |diff| / "
          "RMS(ref), RMS(diff) / RMS(ref)):")
    arow = []
    for key, e in entries.items():
        for n, fields in e["agreement"].items():
            worst = max(fields.values(), key=lambda f: f["max_rel_rms"])
            bad = [k for k, f in fields.items() if f["mismatch"]]
            arow.append((key, f"{n} vs {e['reference']}",
                         f"{worst['max_rel_rms']:.1e}",
                         f"{max(f['rms_rel'] for f in fields.values()):.1e}",
                         "MISMATCH: " + ", ".join(bad) if bad else "ok"))
    if arow:
        harness.print_table(("workload", "pair", "worst max", "worst RMS", ""), arow)
    print()


def _info_ratio(e: dict, best_first: bool) -> str:
    """best HF / moeroute (or the reverse) per round, without a target."""
    best = best_hf(e)
    if best is None or "moeroute" not in e["samples_ms"]:
        return "-"
    a, b = e["samples_ms"][best], e["samples_ms"]["moeroute"]
    r = paired_ratio(a, b) if best_first else paired_ratio(b, a)
    label = f"{best} / moeroute" if best_first else f"moeroute / {best}"
    return f"{label} {r['median']:.2f} {quartiles(r, 2)}"


def hf_targets(result: dict) -> list[str]:
    lines = [target_line(v) for v in result["targets"]]
    if not lines:
        lines = ["(no target measured: moeroute did not run; "
                 + "; ".join(f"{n}: {w}" for n, w in result["status"].items()) + ")"]
    return lines


def hf_mismatches(result: dict) -> list[str]:
    return [line for key, e in result["workloads"].items()
            for n, fields in e["agreement"].items()
            for line in harness.mismatch_lines(f"{key} {n} vs {e['reference']}", fields)]


# ----------------------------------------------------------------------------------- options

def add_options(p: argparse.ArgumentParser) -> None:
    full = PRESETS["full"]
    p.add_argument("--quick", action="store_true",
                   help="smoke run: " + ", ".join(f"{k}={v}" for k, v in PRESETS["quick"].items()
                                                  if v != full[k]))
    p.add_argument("--backends", default=",".join(ALL_BACKENDS),
                   help=f"among {','.join(ALL_BACKENDS)} (default all)")
    p.add_argument("--with-patch", action="store_true",
                   help="also run moeroute.hf.patch(model) (moeroute's router too) on a copy of "
                        "the model, as column moeroute+patch")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-fraction", type=float, default=0.4,
                   help="batched_mm is skipped where its weight copies would need more than this "
                        "fraction of the free memory (default 0.4)")
    sizes = [("hidden", "hidden size"), ("layers", "decoder layers (all sparse)"),
             ("experts", "experts per layer"), ("top_k", "experts per token"),
             ("expert_ffn", "moe_intermediate_size"), ("heads", "query heads"),
             ("kv_heads", "key-value heads"), ("head_dim", "head dimension"),
             ("vocab", "vocabulary"), ("train_batch", "training batch"),
             ("train_seq", "training sequence length"), ("prefill_batch", "prefill batch"),
             ("prefill_seq", "prefill length"),
             ("decode_prompt", "tokens in the cache before decoding"),
             ("decode_tokens", "decoding steps timed per call"),
             ("repeat", "timed rounds"), ("eager_repeat", "of which eager runs in the first")]
    for key, what in sizes:
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                       help=f"{what} (default {full[key]}, --quick {PRESETS['quick'][key]})")
    p.add_argument("--decode-batches", default=None,
                   help=f"decoding batch sizes (default {full['decode_batches']}, --quick "
                        f"{PRESETS['quick']['decode_batches']})")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    preset = PRESETS["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or not set(args.backends) <= set(ALL_BACKENDS):
        p.error(f"--backends: choose among {', '.join(ALL_BACKENDS)}")
    args.backends = [b for b in ALL_BACKENDS if b in args.backends]  # eager last
    try:
        args.decode_batches = [int(b) for b in str(args.decode_batches).split(",") if b]
    except ValueError:
        p.error("--decode-batches: comma-separated integers")
    ints = [getattr(args, k) for k, v in PRESETS["full"].items() if isinstance(v, int)]
    if min([*ints, *args.decode_batches]) < 1:
        p.error("sizes, batches and repeats must be >= 1")
    if args.top_k > args.experts:
        p.error("--top-k must not exceed --experts")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")


PART = harness.Part("H", "hf", dict, add_options, check_args, bench_hf, print_hf,
                    targets=hf_targets, mismatches=hf_mismatches)


if __name__ == "__main__":
    sys.exit(harness.torch_main(__doc__, [PART]))
