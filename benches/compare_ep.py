"""Expert parallelism: moeroute's dispatch + combine (forward and backward) against the floor, the
all_to_all_single of the same bytes alone, and a torchtitan-style formulation (argsort, count
exchange, all-to-all, index permutes, index_add combine), all measured in the same run.

Run with torchrun (gloo on CPU; NCCL with --device cuda, one process per GPU):

    torchrun --nproc-per-node 2 benches/compare_ep.py
    torchrun --nproc-per-node 4 benches/compare_ep.py --tokens 1024

Each rank routes its own tokens (T, H, E over all ranks, top-k) and the experts are the identity,
so what is timed is the exchange alone: permute, the all-to-all, the regroup and back, combine,
and the backward of all of it. Rank 0 prints the medians of its samples (every sample is one
lockstep round of all ranks). `host reads` counts the device-to-host reads of split sizes per
forward (0 in the static capacity regime).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

warnings.filterwarnings("ignore", category=FutureWarning)  # (torch.distributed.nn's all_to_all_single)
sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

import moeroute  # noqa: E402
from moeroute.torch import distributed as ep  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per rank")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=0, help="E over all ranks (default 4 per rank)")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=1.25, help="for the capacity (static) row")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--allocator", default="reuse", choices=["reuse", "system"],
                        help="reuse: glibc keeps freed memory (harness.reuse_freed_memory), so large tensors do "
                             "not page-fault afresh on every call; the same for every formulation")
    parser.add_argument("--json", default=None)
    return parser.parse_args()


# ----------------------------------------------------------------------------- the formulations

def moeroute_dropless(x: torch.Tensor, plan) -> torch.Tensor:
    rows, handle = ep.dispatch(x, plan)
    y = ep.combine(rows, handle)
    y.backward(torch.ones_like(y))
    return y


def moeroute_static(x: torch.Tensor, plan) -> torch.Tensor:
    rows, handle = ep.dispatch(x, plan, static_capacity=True)
    y = ep.combine(rows, handle)
    y.backward(torch.ones_like(y))
    return y


def titan(x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, experts: int, world: int) -> torch.Tensor:
    """torchtitan's formulation: sort the picks by expert, exchange the counts, all-to-all the rows
    (differentiable all_to_all_single), permute the received rows into local-expert order with an
    index, and back: unpermute, all-to-all, scatter-add each pick's weighted row into its token."""
    t, k = expert_ids.shape
    local = experts // world
    flat = expert_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=experts)
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts)
    host = torch.cat([counts.view(world, local).sum(1), received.view(world, local).sum(1)]).tolist()  # host read
    send, recv = host[:world], host[world:]
    rows = x[order // k]
    got = dist_fn.all_to_all_single(rows.new_empty((sum(recv), x.shape[1])), rows, recv, send)
    # local-expert order of the received rows (source-major blocks): an argsort of their expert
    received_experts = torch.repeat_interleave(torch.arange(world * local, device=x.device) % local, received)
    perm = torch.argsort(received_experts, stable=True)
    grouped = got[perm]
    out = grouped  # (identity experts)
    back = torch.empty_like(out).index_copy(0, perm, out)  # unpermute
    returned = dist_fn.all_to_all_single(back.new_empty((sum(send), x.shape[1])), back, send, recv)
    y = x.new_zeros((t, x.shape[1])).index_add(0, order // k, returned * weights.reshape(-1)[order].unsqueeze(1).to(x.dtype))
    y.backward(torch.ones_like(y))
    return y


def floor(x: torch.Tensor, send: list, recv: list) -> torch.Tensor:
    """The same bytes moved alone: two all-to-alls forward (there and back), two backward."""
    h = x.shape[1]
    rows = x.detach()[:sum(send)].contiguous() if x.shape[0] >= sum(send) else x.new_empty((sum(send), h))
    out = None
    for _ in range(2):
        got = rows.new_empty((sum(recv), h))
        dist.all_to_all_single(got, rows, recv, send)
        back = rows.new_empty((sum(send), h))
        dist.all_to_all_single(back, got, send, recv)
        out = back
    return out


def main() -> int:
    args = parse_args()
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(args.device, rank % max(torch.cuda.device_count(), 1)) if args.device == "cuda" else torch.device("cpu")
    if args.device == "cuda":
        torch.cuda.set_device(device)
    else:  # each rank its share of the cores, for torch and moeroute alike
        threads = max(1, (os.cpu_count() or 1) // world)
        torch.set_num_threads(threads)
        moeroute.set_num_threads(threads)
    allocator = harness.reuse_freed_memory() if args.allocator == "reuse" else "system"
    experts = args.experts or 4 * world
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(rank)
    x0 = torch.randn(args.tokens, args.hidden, generator=gen).to(device=device, dtype=dtype)
    logits = harness.distinct_logits(gen, args.tokens, experts).to(device)
    plan = moeroute.torch.route(logits, args.top_k)
    plan_c = moeroute.torch.route(logits, args.top_k, capacity_factor=args.capacity_factor)

    def leaf():
        return (x0.clone().requires_grad_(),)

    handle = ep.exchange_layout(plan)
    handle_c = ep.exchange_layout(plan_c, static_capacity=True)
    ids, weights = plan.expert_ids, plan.weights

    # Agreement before timing: moeroute and torchtitan's formulation give the same y and grad x.
    xa, xb = leaf()[0], leaf()[0]
    ya, yb = moeroute_dropless(xa, plan), titan(xb, ids, weights, experts, world)
    agree = harness.compare(ya.detach(), yb.detach(), rtol=1e-5 if dtype == torch.float32 else 2e-2)
    agree_grad = harness.compare(xa.grad, xb.grad, rtol=1e-5 if dtype == torch.float32 else 2e-2)

    forms = [
        harness.Formulation("floor", lambda: floor(x0, handle.sent_splits, handle.received_splits)),
        harness.Formulation("moeroute", lambda x: moeroute_dropless(x, plan), leaf),
        harness.Formulation("titan", lambda x: titan(x, ids, weights, experts, world), leaf),
        harness.Formulation("floor static", lambda: floor(x0, handle_c.sent_splits, handle_c.received_splits)),
        harness.Formulation("moeroute static", lambda x: moeroute_static(x, plan_c), leaf),
    ]
    for f in forms:
        harness.run_once(f)
    samples = harness.measure(forms, args.repeat)
    if rank != 0:
        dist.barrier()
        dist.destroy_process_group()
        return 0
    bytes_moved = 4 * handle.rows_sent * args.hidden * x0.element_size()
    print(f"expert parallelism, dispatch + combine forward and backward: {world} ranks ({args.device}, "
          f"{dist.get_backend()}), per rank T={args.tokens} H={args.hidden}, E={experts} ({experts // world} per rank), "
          f"top-{args.top_k}, {args.dtype}; {torch.get_num_threads()} thread(s) per rank; allocator {allocator}; "
          f"rank 0's medians of {args.repeat} rounds; load average {harness.load_average()}")
    print(f"agreement with the torchtitan formulation (rank 0): y {agree['mismatch'] or 'ok'}, "
          f"grad x {agree_grad['mismatch'] or 'ok'}")
    vs_floor = harness.paired_ratio(samples["moeroute"], samples["floor"])
    vs_titan = harness.paired_ratio(samples["titan"], samples["moeroute"])
    static_floor = harness.paired_ratio(samples["moeroute static"], samples["floor static"])
    med = {k: harness.statistics.median(v) for k, v in samples.items()}
    rows = [
        ("dropless", f"{med['moeroute']:.2f}", f"{med['floor']:.2f}",
         f"{vs_floor['median']:.2f} {harness.quartiles(vs_floor, 2)}", "<= 1.25",
         f"{med['titan']:.2f}", f"{vs_titan['median']:.2f} {harness.quartiles(vs_titan, 2)}", ">= 1.3",
         f"{handle.host_reads} / 1"),
        (f"capacity {args.capacity_factor} (static)", f"{med['moeroute static']:.2f}", f"{med['floor static']:.2f}",
         f"{static_floor['median']:.2f} {harness.quartiles(static_floor, 2)}", "<= 1.25", "-", "-", "-",
         f"{handle_c.host_reads} / -"),
    ]
    harness.print_table(("regime", "ms", "floor ms", "x floor [q1-q3]", "target", "titan ms", "titan/ours [q1-q3]",
                         "target", "host reads (ours / titan)"), rows)
    print(f"(floor: 4 all_to_all_single of the same rows, {bytes_moved / 2**20:.1f} MiB sent per rank in all)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": harness.environment(torch.get_num_threads()), "world": world,
                       "args": vars(args), "samples_ms": samples, "x_floor": vs_floor, "titan_over_ours": vs_titan,
                       "static_x_floor": static_floor}, fh)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
