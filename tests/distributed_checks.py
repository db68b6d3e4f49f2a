"""The checks tests/test_distributed.py runs inside real process groups (gloo, CPU): each rank of
a torch.multiprocessing group runs every check of its world size and writes, per check, "ok" or the
traceback. Every check compares a sharded layer with the full single-process layer applied to the
same tokens on the same rank (the obviously-correct reference), forward and backward."""

from __future__ import annotations

import datetime
import json
import os
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

import moeroute
from moeroute.errors import ArgumentError
from moeroute.torch import MoE
from moeroute.torch import distributed as ep

Tensor = torch.Tensor
CHECKS: Dict[str, Callable[["Ctx"], None]] = {}
# Checks that only make sense for some world sizes.
WORLDS: Dict[str, Tuple[int, ...]] = {}


def check(*worlds: int) -> Callable[[Callable[["Ctx"], None]], Callable[["Ctx"], None]]:
    def register(fn: Callable[["Ctx"], None]) -> Callable[["Ctx"], None]:
        CHECKS[fn.__name__] = fn
        if worlds:
            WORLDS[fn.__name__] = worlds
        return fn
    return register


def names_for(world: int) -> List[str]:
    return [n for n in CHECKS if world in WORLDS.get(n, (world,))]


class Ctx:
    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world


def close(a: Tensor, b: Tensor, what: str, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


def tokens_of(rank: int, n: int, h: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(1000 * seed + rank)
    return torch.randn(n, h, generator=g).to(dtype)


def full_layer(seed: int, **kw: Any) -> MoE:
    torch.manual_seed(seed)  # the same full layer on every rank
    return MoE(**kw)


def compare(ctx: Ctx, full: MoE, sharded: MoE, x: Tensor, tol: float = 1e-5, group: Any = None) -> None:
    """Forward and backward of the sharded layer against the full one on this rank's tokens:
    output, stats, aux losses, the tokens' and router's gradients (this rank's), and the local
    experts' gradients against the sum over the group of the full layer's."""
    g = torch.Generator().manual_seed(77 + ctx.rank)
    x_full = x.clone().requires_grad_()
    x_sharded = x.clone().requires_grad_()
    y_full, y_sharded = full(x_full), sharded(x_sharded)
    close(y_sharded, y_full, "output", tol)
    assert full.stats is not None and sharded.stats is not None
    for field in ("tokens_per_expert", "assigned_per_expert"):
        assert torch.equal(getattr(full.stats, field), getattr(sharded.stats, field)), field
    assert full.stats.num_dropped == sharded.stats.num_dropped
    assert full.stats.capacity == sharded.stats.capacity
    assert set(full.losses) == set(sharded.losses)
    close(sharded.aux_loss, full.aux_loss, "aux_loss", tol)
    grad_y = torch.randn(y_full.shape, generator=g).to(x.dtype)
    ((y_full * grad_y).sum() + full.aux_loss).backward()
    ((y_sharded * grad_y).sum() + sharded.aux_loss).backward()
    assert x_full.grad is not None and x_sharded.grad is not None
    close(x_sharded.grad, x_full.grad, "grad of the tokens", tol)
    close(sharded.router.weight.grad, full.router.weight.grad, "grad of the router", tol)  # type: ignore[arg-type]
    eps = sharded.expert_parallel
    assert eps is not None
    first, count = eps.first_expert, eps.num_local_experts
    summed = {}  # the sum over the ranks of each rank's full-layer gradient of every expert
    for name, p in full.experts.named_parameters():
        summed[name] = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(summed[name], group=group)
    for name, p in sharded.experts.named_parameters():
        if isinstance(sharded.experts, ep.LocalModuleExperts):
            reference = summed[name]  # (the same names: experts.<global index>....)
        else:
            reference = summed[name][first:first + count]
        assert p.grad is not None, name
        close(p.grad, reference, f"grad of {name}", tol)


# ------------------------------------------------------------------------------ the checks

@check()
def dropless_uneven_tokens(ctx: Ctx) -> None:
    kw = dict(hidden_size=16, num_experts=2 * ctx.world, top_k=2, ffn_size=12, load_balancing_coef=0.01, z_loss_coef=1e-3)
    full = full_layer(1, **kw)
    sharded = ep.shard_moe(full)
    for step in range(2):
        full.zero_grad(), sharded.zero_grad()
        compare(ctx, full, sharded, tokens_of(ctx.rank, 7 + 5 * ctx.rank + step, 16, step))
    assert sharded.expert_parallel is not None and sharded.expert_parallel.last_handle is not None
    assert sharded.expert_parallel.last_handle.host_reads == 1


@check()
def dropless_rank_without_tokens(ctx: Ctx) -> None:
    full = full_layer(2, hidden_size=8, num_experts=ctx.world, top_k=1, ffn_size=8, activation="gelu")
    sharded = ep.shard_moe(full)
    compare(ctx, full, sharded, tokens_of(ctx.rank, 0 if ctx.rank == 0 else 9, 8, 2))


@check()
def capacity_each_priority_static(ctx: Ctx) -> None:
    for priority in ("slot", "token", "score"):
        full = full_layer(3, hidden_size=8, num_experts=2 * ctx.world, top_k=2, ffn_size=8, capacity_factor=0.75,
                          priority=priority)
        sharded = ep.shard_moe(full, same_num_tokens=True)
        compare(ctx, full, sharded, tokens_of(ctx.rank, 24, 8, 3))
        assert full.stats is not None and full.stats.num_dropped > 0 or ctx.world > 2  # drops do happen
        handle = sharded.expert_parallel.last_handle  # type: ignore[union-attr]
        assert handle is not None and handle.host_reads == 0, "static capacity reads nothing on the host"


@check()
def capacity_factor_uneven_tokens_exchanges_counts(ctx: Ctx) -> None:
    full = full_layer(4, hidden_size=8, num_experts=2 * ctx.world, top_k=2, ffn_size=8, capacity_factor=1.0)
    sharded = ep.shard_moe(full)  # no same_num_tokens: each rank's own capacity, counts exchanged
    compare(ctx, full, sharded, tokens_of(ctx.rank, 6 + 7 * ctx.rank, 8, 4))
    assert sharded.expert_parallel.last_handle.host_reads == 1  # type: ignore[union-attr]


@check()
def fixed_capacity_rank_without_tokens(ctx: Ctx) -> None:
    full = full_layer(5, hidden_size=8, num_experts=2 * ctx.world, top_k=2, ffn_size=8, capacity=3, priority="score")
    sharded = ep.shard_moe(full)  # capacity=3 on every rank: static split sizes
    compare(ctx, full, sharded, tokens_of(ctx.rank, 0 if ctx.rank == ctx.world - 1 else 11, 8, 5))
    assert sharded.expert_parallel.last_handle.host_reads == 0  # type: ignore[union-attr]


@check()
def pad_to(ctx: Ctx) -> None:
    full = full_layer(6, hidden_size=8, num_experts=2 * ctx.world, top_k=2, ffn_size=8, pad_to=4)
    sharded = ep.shard_moe(full)
    compare(ctx, full, sharded, tokens_of(ctx.rank, 5 + 3 * ctx.rank, 8, 6))
    handle = sharded.expert_parallel.last_handle  # type: ignore[union-attr]
    assert handle is not None and bool((handle.counts % 4 == 0).all()), "segments stay multiples of pad_to"


@check()
def expert_choice(ctx: Ctx) -> None:
    full = full_layer(7, hidden_size=8, num_experts=ctx.world, routing="expert", capacity_factor=1.0, ffn_size=8)
    sharded = ep.shard_moe(full, same_num_tokens=True)
    compare(ctx, full, sharded, tokens_of(ctx.rank, 10, 8, 7))


@check()
def all_tokens_to_one_remote_expert(ctx: Ctx) -> None:
    e = 2 * ctx.world
    full = full_layer(8, hidden_size=8, num_experts=e, top_k=1, ffn_size=8)
    with torch.no_grad():
        full.router.weight.zero_()
        full.router.weight[e - 1] = 1.0  # every token's only pick: the last expert, on the last rank
    sharded = ep.shard_moe(full)
    x = tokens_of(ctx.rank, 12, 8, 8).abs() + 0.1
    compare(ctx, full, sharded, x)
    assert full.stats is not None and int(full.stats.tokens_per_expert[e - 1]) == 12


@check()
def bfloat16(ctx: Ctx) -> None:
    full = full_layer(9, hidden_size=16, num_experts=2 * ctx.world, top_k=2, ffn_size=16).to(torch.bfloat16)
    sharded = ep.shard_moe(full)
    assert sharded.router.weight.dtype == torch.bfloat16 and sharded.experts.w_up.dtype == torch.bfloat16
    compare(ctx, full, sharded, tokens_of(ctx.rank, 9 + ctx.rank, 16, 9, torch.bfloat16), tol=2e-2)


@check()
def bias_update_uses_the_group_load(ctx: Ctx) -> None:
    kw = dict(hidden_size=8, num_experts=2 * ctx.world, top_k=2, ffn_size=8, bias_update_rate=0.05)
    sharded = ep.shard_moe(full_layer(10, **kw))
    everyone = full_layer(10, **kw)  # the full layer on all ranks' tokens at once: the group's load
    sizes = [4 + 3 * r for r in range(ctx.world)]
    for step in range(3):
        xs = [tokens_of(r, sizes[r], 8, 20 + step) for r in range(ctx.world)]
        sharded(xs[ctx.rank])
        everyone(torch.cat(xs))
        assert torch.equal(sharded.expert_bias, everyone.expert_bias), f"step {step}"
    biases = [torch.empty_like(sharded.expert_bias) for _ in range(ctx.world)]
    dist.all_gather(biases, sharded.expert_bias)
    assert all(torch.equal(b, biases[0]) for b in biases), "the bias is the same on every rank"
    assert bool((sharded.expert_bias != 0).any())


@check()
def global_stats(ctx: Ctx) -> None:
    kw = dict(hidden_size=8, num_experts=2 * ctx.world, top_k=2, ffn_size=8)
    sharded = ep.shard_moe(full_layer(11, **kw), global_stats=True)
    everyone = full_layer(11, **kw)
    xs = [tokens_of(r, 5 + r, 8, 11) for r in range(ctx.world)]
    sharded(xs[ctx.rank])
    everyone(torch.cat(xs))
    assert sharded.stats is not None and everyone.stats is not None
    assert torch.equal(sharded.stats.tokens_per_expert, everyone.stats.tokens_per_expert)
    assert torch.equal(sharded.stats.assigned_per_expert, everyone.stats.assigned_per_expert)


@check()
def module_experts_keep_their_names(ctx: Ctx) -> None:
    torch.manual_seed(12)
    e = 2 * ctx.world
    full = MoE(8, e, 2, experts=[nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 8)) for _ in range(e)])
    sharded = ep.shard_moe(full)
    first = 2 * ctx.rank
    names = {n for n, _ in sharded.named_parameters()}
    assert names == {"router.weight"} | {f"experts.experts.{i}.{k}" for i in (first, first + 1)
                                         for k in ("0.weight", "0.bias", "2.weight", "2.bias")}, names
    compare(ctx, full, sharded, tokens_of(ctx.rank, 7, 8, 12))


@check()
def state_dicts_and_parameter_groups(ctx: Ctx) -> None:
    kw = dict(hidden_size=8, num_experts=2 * ctx.world, top_k=2, ffn_size=8, bias_update_rate=0.1)
    full = full_layer(13, **kw)
    sharded = ep.shard_moe(full)
    assert set(sharded.state_dict()) == set(full.state_dict())
    gathered = ep.gather_full_state_dict(sharded)
    assert set(gathered) == set(full.state_dict())
    for k, v in full.state_dict().items():
        assert torch.equal(gathered[k], v), k
    torch.manual_seed(99 + ctx.rank)  # a directly built sharded layer, random experts, then loaded
    direct = MoE(**kw, expert_parallel_group=dist.group.WORLD)
    assert direct.experts.w_up.shape[0] == 2
    ep.load_full_state_dict(direct, full.state_dict())
    compare(ctx, full, direct, tokens_of(ctx.rank, 6, 8, 13))
    model = nn.Sequential(nn.Linear(8, 8), sharded)
    groups = ep.parameter_groups(model)
    assert [n for n, _ in groups["expert"]] == ["1.experts.w_gate", "1.experts.w_up", "1.experts.w_down"]
    assert [n for n, _ in groups["replicated"]] == ["0.weight", "0.bias", "1.router.weight"]


@check()
def dispatch_combine_gradcheck_float64(ctx: Ctx) -> None:
    e, n, h = 2 * ctx.world, 4, 3
    g = torch.Generator().manual_seed(14 + ctx.rank)
    logits = torch.randn(n, e, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.arange(1, 2 * e + 1, dtype=torch.float64)

    for static in (False, True):
        def f(x: Tensor, logits: Tensor) -> Tensor:
            plan = moeroute.torch.route(logits, 2, capacity=3 if static else None)
            rows, handle = ep.dispatch(x, plan, static_capacity=static)
            local = scale[handle.rank * handle.num_local_experts:][:handle.num_local_experts]
            sizes = handle.expert_offsets.diff()
            out = rows * torch.repeat_interleave(local, sizes).unsqueeze(1) + rows.square()
            return ep.combine(out, handle)
        assert torch.autograd.gradcheck(f, (x, logits), eps=1e-6, atol=1e-6)


@check()
def regroup_matches_its_definition(ctx: Ctx) -> None:
    g = torch.Generator().manual_seed(15)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        counts = torch.randint(0, 4, (3, 5), generator=g)
        rows = torch.randn(int(counts.sum()), 6, generator=g).to(dtype)
        blocks = list(rows.split(counts.flatten().tolist()))
        expected = torch.cat([blocks[a * 5 + b] for b in range(5) for a in range(3)])
        assert torch.equal(ep.regroup(rows, counts), expected)
        assert torch.equal(ep.regroup(expected, counts.t()), rows)
    for bad, err in ((torch.tensor([[1, 1]]), ArgumentError), (torch.tensor([[-1, 4]]), ArgumentError),
                     (torch.ones(3, dtype=torch.int64), moeroute.errors.ShapeError),
                     (torch.ones(1, 3, dtype=torch.int32), moeroute.errors.DTypeError)):
        try:
            ep.regroup(torch.zeros(3, 2), bad)
        except err as e:
            assert "counts" in str(e), e
        else:
            raise AssertionError(f"no {err.__name__} for counts {bad}")


@check(4)
def subgroups(ctx: Ctx) -> None:
    halves = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mine = halves[ctx.rank // 2]
    full = full_layer(16, hidden_size=8, num_experts=4, top_k=2, ffn_size=8)
    sharded = ep.shard_moe(full, mine)
    assert sharded.expert_parallel is not None and sharded.expert_parallel.first_expert == 2 * (ctx.rank % 2)
    compare(ctx, full, sharded, tokens_of(ctx.rank, 6 + ctx.rank, 8, 16), group=mine)


@check(3, 4)
def experts_not_divisible(ctx: Ctx) -> None:
    e = ctx.world + 1
    for build in (lambda: ep.shard_moe(MoE(8, e, 1)), lambda: MoE(8, e, 1, expert_parallel_group=dist.group.WORLD)):
        try:
            build()
        except ArgumentError as err:
            assert str(e) in str(err) and str(ctx.world) in str(err), err
        else:
            raise AssertionError("no ArgumentError")


@check()
def mismatched_layers_fail_on_every_rank(ctx: Ctx) -> None:
    layer = ep.shard_moe(full_layer(17, hidden_size=8, num_experts=2 * ctx.world, top_k=1 if ctx.rank == 0 else 2))
    try:
        layer(tokens_of(ctx.rank, 4, 8, 17))
    except ArgumentError as err:
        assert "top_k" in str(err), err
    else:
        raise AssertionError("no ArgumentError")
    # same_num_tokens promised, broken: the capacities differ, named before any exchange of rows
    layer = ep.shard_moe(full_layer(18, hidden_size=8, num_experts=2 * ctx.world, capacity_factor=1.0),
                         same_num_tokens=True)
    try:
        layer(tokens_of(ctx.rank, 4 + 4 * ctx.rank, 8, 18))
    except ArgumentError as err:
        assert "capacity" in str(err) and "same number of tokens" in str(err), err
    else:
        raise AssertionError("no ArgumentError")


@check(2)
def collective_that_cannot_complete_times_out(ctx: Ctx) -> None:
    short = dist.new_group([0, 1], timeout=datetime.timedelta(seconds=3))
    layer = ep.shard_moe(full_layer(19, hidden_size=8, num_experts=2, top_k=1), short)
    if ctx.rank == 0:  # rank 1 never calls the layer
        started = time.perf_counter()
        try:
            layer(tokens_of(0, 4, 8, 19))
        except ep.CollectiveError as err:
            assert time.perf_counter() - started < 30 and "did not complete" in str(err), err
        else:
            raise AssertionError("no CollectiveError")
    dist.barrier()  # (the default group still works)


# ------------------------------------------------------------------------------ the worker

def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    ctx = Ctx(rank, world)
    results: Dict[str, str] = {}
    for name in names_for(world):
        started = time.perf_counter()
        try:
            CHECKS[name](ctx)
            results[name] = "ok"
        except BaseException:  # noqa: BLE001  (reported to the test)
            results[name] = traceback.format_exc()
        results[name + ":seconds"] = f"{time.perf_counter() - started:.2f}"
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.barrier()
    dist.destroy_process_group()
