"""Where a CUDA route's time goes: eager time per call, host time per call, GPU time (CUDA-graph
replay) and the kernels' own times (torch.profiler), for moeroute and the fastest torch-eager
formulation (benches/compare_cuda.py), at T=65536, and moeroute.route's host time beside that of
the nine torch.empty calls its plan allocates. Needs a CUDA GPU. Public API only: the host cost
of the package's private layers is not split out here."""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import moeroute

TOKENS = 65536
CONFIGS = ((64, 2), (256, 8))  # (E, k)


def event_us(fn, n: int = 30) -> float:
    """Mean GPU time per call over n back-to-back calls (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n * 1000


def host_us(fn, n: int = 100) -> float:
    """Mean host time per call, the GPU left to run behind."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = (time.perf_counter() - begin) / n * 1e6
    torch.cuda.synchronize()
    return elapsed


def graph_us(fn) -> float:
    """GPU time per call with the launches captured in a CUDA graph (no host overhead)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return event_us(graph.replay)


def torch_route(logits: torch.Tensor, k: int):
    """softmax, top-k, normalize, stable sort by expert, searchsorted offsets, dest by scatter."""
    probs = torch.softmax(logits, -1)
    top, ids = torch.topk(probs, k, -1)
    weights = top / top.sum(-1, keepdim=True)
    sorted_ids, order = torch.sort(ids.flatten(), stable=True)
    offsets = torch.searchsorted(sorted_ids, torch.arange(logits.shape[1] + 1, device=logits.device))
    dest = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=logits.device))
    return weights, dest, order // k, offsets


def kernel_table(fn) -> str:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=32)


def host_parts(logits: torch.Tensor, k: int) -> dict:
    """Host time of moeroute.route, and of the nine torch.empty calls that an unpacked plan (the
    custom op's) allocates."""
    t = logits.shape[0]
    return {
        "moeroute.route": host_us(lambda: moeroute.route(logits, k)),
        "9 x torch.empty": host_us(lambda: [torch.empty((t, k), dtype=torch.int32, device=logits.device)
                                            for _ in range(9)]),
    }


def main() -> int:
    if not torch.cuda.is_available():
        print("profile_cuda_route.py needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 1
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, moeroute {moeroute.__version__}")
    torch.manual_seed(0)
    for experts, k in CONFIGS:
        logits = torch.randn(TOKENS, experts, device="cuda")
        for name, fn in (("moeroute", lambda: moeroute.route(logits, k)), ("torch", lambda: torch_route(logits, k))):
            print(f"E={experts} k={k} {name}: eager {event_us(fn):.1f} us/call, host {host_us(fn):.1f} us/call, "
                  f"GPU (graph replay) {graph_us(fn):.1f} us/call")
        print(kernel_table(lambda: moeroute.route(logits, k)))
        for part, us in host_parts(logits, k).items():
            print(f"  host {part}: {us:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
