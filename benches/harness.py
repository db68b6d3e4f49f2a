"""What the Python benchmarks in benches/ share: timing, paired ratios, agreement checks, input
makers, table printing, the allocator and huge-page settings, the environment report, and the
runner of the PyTorch benchmarks (compare_torch*.py), which are made of parts (see Part).

Imported by the scripts beside it (`import harness`; running `python benches/<script>.py` puts
benches/ on the path). Nothing here imports torch at module level: compare.py runs without torch.
The functions that take or make tensors import it when called, and tell tensors from arrays by
`sys.modules` (a tensor exists only once torch has been imported).
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
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

import moeroute


def _torch():
    """The torch module if something imported it, else None (a tensor needs it imported)."""
    return sys.modules.get("torch")


def is_tensor(value: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor)


# -------------------------------------------------------------------------------------- timing

@dataclass
class Formulation:
    """One way to compute something: `run(*setup())`, of which only `run` is timed."""

    name: str
    run: Callable[..., Any]
    setup: Callable[[], tuple] = tuple


def run_once(f: Formulation) -> tuple[float, Any]:
    """(wall ms, result) of one call; the result stays alive until the clock stops: allocating it
    is timed, freeing it is not."""
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
    started = last_report = time.perf_counter()
    for i in range(repeat):
        for f in formulations if i % 2 == 0 else formulations[::-1]:
            ms, result = run_once(f)
            del result
            samples[f.name].append(ms)
        now = time.perf_counter()
        if now - last_report >= PROGRESS_EVERY_S and i + 1 < repeat:  # long runs say how far they are
            last_report = now
            left = round((now - started) / (i + 1) * (repeat - i - 1))
            print(f"  ... round {i + 1}/{repeat} of {', '.join(f.name for f in formulations)}, "
                  f"eta {left // 60}:{left % 60:02d}", file=sys.stderr, flush=True)
    return samples


# A measurement running longer than this reports its progress on stderr (the results stay on stdout).
PROGRESS_EVERY_S = 10.0


def measure_alone(f: Formulation, repeat: int) -> list[float]:
    """`repeat` wall-time samples (ms) of f alone, after one warm-up call."""
    run_once(f)
    return measure([f], repeat)[f.name]


def timing_entry(samples: list[float]) -> dict:
    return {"median_ms": statistics.median(samples), "samples_ms": samples}


def paired_ratio(num: list[float], den: list[float]) -> dict:
    """num / den from paired samples (taken in the same rounds): the median of the per-round
    ratios, which cancels the machine's drift between rounds, with its quartiles."""
    ratios = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2],
            "of_medians": statistics.median(num) / statistics.median(den), "ratios": ratios}


def quartiles(detail: dict, digits: int) -> str:
    """A paired_ratio's quartiles as "[q1-q3]"."""
    return f"[{detail['q1']:.{digits}f}-{detail['q3']:.{digits}f}]"


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
    """A float64 NumPy copy of an array, a tensor, or a list / tuple of tensors (stacked)."""
    if isinstance(t, (list, tuple)) and t and is_tensor(t[0]):
        t = _torch().stack(list(t))
    if is_tensor(t):
        return t.detach().cpu().to(_torch().float64).numpy()
    return np.asarray(t, dtype=np.float64)


def compare(got: Any, want: Any, rtol: float, rms_tol: float | None = None) -> dict:
    """How far got is from want: max |diff| / RMS(want), RMS(diff) / RMS(want), and a one-line
    mismatch summary, None if they agree: |diff| <= rtol * (|want| + RMS(want)) elementwise and,
    with rms_tol, RMS(diff) <= rms_tol * RMS(want). Integers (rtol 0) must match exactly; a NaN
    agrees with nothing."""
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
    bad = ~(diff <= rtol * (np.abs(b) + rms))
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
    """compare() per field of want; integer tensor fields exactly."""
    out = {}
    for name, ref in want.items():
        is_float = not is_tensor(ref) or ref.is_floating_point()
        out[name] = compare(got[name], ref, rtol if is_float else 0.0,
                            rms_tol if is_float else None)
    return out


def mismatch_lines(where: str, fields: dict) -> list[str]:
    return [f"{where} {name}: {f['mismatch']}" for name, f in fields.items() if f["mismatch"]]


# ------------------------------------------------------------------------------------- inputs
# Each maker takes a NumPy Generator (and makes arrays) or a torch.Generator (and makes tensors,
# on the generator's device).

def distinct_logits(gen: Any, tokens: int, experts: int, dtype: Any = None) -> Any:
    """[T, E] logits whose rows are random permutations of E distinct values (i - E/2) / 16:
    exact in bfloat16 for E <= 512 and far apart, so top-k is unambiguous and torch.topk's
    unspecified tie order cannot cause a false disagreement. float32 unless `dtype` (arrays)."""
    if isinstance(gen, np.random.Generator):
        grid = np.tile(np.arange(experts, dtype=np.float32) - experts // 2, (tokens, 1))
        return (gen.permuted(grid, axis=1) / 16).astype(dtype or np.float32)
    torch = _torch()
    grid = (torch.arange(experts, dtype=torch.float32, device=gen.device) - experts // 2) / 16
    order = torch.rand(tokens, experts, generator=gen, device=gen.device).argsort(dim=1)
    return grid[order]


def normal(gen: Any, *shape: int, dtype: Any = None) -> Any:
    """Standard-normal values drawn in float32, then cast to `dtype`."""
    if isinstance(gen, np.random.Generator):
        return gen.standard_normal(shape, dtype=np.float32).astype(dtype or np.float32)
    torch = _torch()
    return torch.randn(*shape, generator=gen, device=gen.device).to(dtype or torch.float32)


def leaf(t: Any) -> Any:
    """A detached tensor of the same data that requires grad."""
    return t.detach().requires_grad_()


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
    large arrays by itself). Gathers (moeroute's, and the PyTorch formulations' index_select /
    index_copy) read and write rows all over [T*k, H] tensors: on 4 KiB pages that is a TLB miss
    every couple of rows. The same for every formulation. PyTorch reads the variable once, at its
    first CPU allocation, which importing torch already made, so a choice that differs from the
    environment re-runs the script (sys.argv) with the variable set or removed."""
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


# ------------------------------------------------------------------------ environment, report

def print_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            models = (line.split(":", 1)[1] for line in fh if line.startswith("model name"))
            return next(models).strip()
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment(threads: int) -> dict:
    """The machine and the versions, for the report (torch: None where it is not imported)."""
    torch = _torch()
    return {
        "threads": threads, "cpu_count": os.cpu_count(), "cpu": cpu_model(),
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__ if torch is not None else None,
        "moeroute": getattr(moeroute, "__version__", None),
    }


# ------------------------------------------------------------- the PyTorch benchmarks' runner

@dataclass
class Part:
    """One part of the PyTorch benchmark (compare_torch_ops / _layer / _overhead): its options,
    its run, its report. `key` names its results in the JSON file, `empty` makes them when the
    part is not run; `small` says what --small does to it (None: nothing)."""

    letter: str
    key: str
    empty: Callable[[], Any]
    add_options: Callable[[argparse.ArgumentParser], None]
    check_args: Callable[[argparse.ArgumentParser, argparse.Namespace], None]
    run: Callable[[argparse.Namespace], Any]
    report: Callable[[argparse.Namespace, Any], None]
    small: str | None = None
    targets: Callable[[Any], list[str]] = field(default=lambda result: [])
    mismatches: Callable[[Any], list[str]] = field(default=lambda result: [])


def torch_parse_args(doc: str, parts: Sequence[Part],
                     argv: list[str] | None = None) -> argparse.Namespace:
    """The options of the given parts, with --json, --allocator, --torch-hugepages (and --parts,
    --small where they apply)."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--allocator", choices=("reuse", "system"), default="reuse",
                   help="reuse (default): glibc malloc keeps freed memory, so large tensors do "
                        "not page-fault afresh on every call (see harness.reuse_freed_memory); "
                        "system: leave malloc as it is")
    p.add_argument("--torch-hugepages", choices=("on", "off"), default="on",
                   help="on (default): PyTorch's THP_MEM_ALLOC_ENABLE=1, large tensors on "
                        "transparent huge pages (see harness.apply_torch_hugepages); off: 4 KiB "
                        "pages unless the kernel's THP mode is 'always'")
    letters = [part.letter for part in parts]
    if len(parts) > 1:
        p.add_argument("--parts", default=",".join(letters),
                       help=f"which parts to run (default {','.join(letters)})")
    smalls = [part.small for part in parts if part.small]
    if smalls:
        p.add_argument("--small", action="store_true",
                       help=f"quick preset: {', '.join(smalls)}")
    for part in parts:
        part.add_options(p)
    args = p.parse_args(argv)
    args.parts = args.parts.upper().split(",") if len(parts) > 1 else letters
    if not set(args.parts) <= set(letters):
        p.error(f"--parts: choose among {', '.join(letters)}")
    for part in parts:
        part.check_args(p, args)
    return args


def torch_main(doc: str, parts: Sequence[Part], argv: list[str] | None = None) -> int:
    """Runs the chosen parts in one process: the environment header, each part's results, the
    targets, any numerical disagreement and the total; --json saves every number. Exits 1 on a
    disagreement."""
    import torch

    args = torch_parse_args(doc, parts, argv)
    if argv is None:  # run as a script: the environment can still be set for torch
        apply_torch_hugepages(args.torch_hugepages)
    allocator = reuse_freed_memory() if args.allocator == "reuse" else "system"
    threads = moeroute.get_num_threads()
    torch.set_num_threads(threads)
    env = environment(threads)
    env["loadavg_start"] = load_average()
    env["args"] = {k: v for k, v in vars(args).items() if k != "json"}
    env["allocator"] = allocator
    env["torch_hugepages"] = f"{THP_ENV}={os.environ.get(THP_ENV, 'unset')}"
    env["kernel_thp_mode"] = kernel_thp_mode()
    print(f"threads: {threads} (moeroute and torch), cpu_count: {env['cpu_count']}, "
          f"cpu: {env['cpu']}, {env['platform']}")
    print(f"python {env['python']}, numpy {env['numpy']}, torch {env['torch']}, "
          f"moeroute {env['moeroute']}, allocator: {allocator}, torch huge pages: "
          f"{env['torch_hugepages']} (kernel THP mode: {env['kernel_thp_mode']})\n")
    start = time.perf_counter()

    results = {part.key: part.empty() for part in parts}
    for part in parts:
        if part.letter in args.parts:
            results[part.key] = part.run(args)
            part.report(args, results[part.key])

    env["loadavg_end"] = load_average()
    env["huge_page_kib_end"] = huge_page_kib()
    targets = [line for part in parts for line in part.targets(results[part.key])]
    if targets:
        print("Targets:")
        print("\n".join(f"  {line}" for line in targets))
    bad = [line for part in parts for line in part.mismatches(results[part.key])]
    if bad:
        print("NUMERICAL DISAGREEMENT:")
        print("\n".join(f"  {line}" for line in bad))
    print(f"total {time.perf_counter() - start:.0f} s; load average (1, 5, 15 min) at start "
          f"{env['loadavg_start']}, at end {env['loadavg_end']}; memory on huge pages at the end: "
          f"{env['huge_page_kib_end']} KiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, **results, "targets": targets, "mismatches": bad},
                      fh, indent=2)
    return 1 if bad else 0
