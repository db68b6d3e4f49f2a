"""`python -m moeroute demo`: trains a small MoE classifier on scikit-learn's digits, on the CPU; with
`--expert-parallel` under torchrun, its experts split over the processes (gloo)."""

from __future__ import annotations

import argparse
import datetime
import os
import random
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .torch import MoE, aux_loss

NUM_CLASSES = 10


class Block(nn.Module):
    """Pre-norm residual block whose MLP is a moeroute MoE layer: x + moe(norm(x))."""

    def __init__(self, hidden: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.moe = MoE(hidden, experts, top_k, ffn_size=2 * hidden, activation="gelu", capacity_factor=1.25,
                       load_balancing_coef=0.01, z_loss_coef=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.moe(self.norm(x))


class DigitsMoE(nn.Module):
    """64 pixels -> Linear(64, H) -> residual MoE blocks -> LayerNorm -> Linear(H, 10)."""

    def __init__(self, hidden: int = 64, experts: int = 8, top_k: int = 2, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(64, hidden)
        self.blocks = nn.ModuleList(Block(hidden, experts, top_k) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


# --------------------------------------------------------------- expert-parallel mode (torchrun)

class ExpertParallelRun:
    """This process's place in the run: rank, world size, and the collectives the demo needs."""

    def __init__(self) -> None:
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise SystemExit("--expert-parallel runs under torchrun, one process per share of the experts: "
                             "torchrun --nproc-per-node 2 -m moeroute demo --expert-parallel")
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.replicated: List[nn.Parameter] = []

    def shard(self, model: nn.Module) -> None:
        """Replaces every MoE block's layer with this rank's expert-parallel copy (the same full
        model is built on every rank from the same seed)."""
        from .torch.distributed import parameter_groups, shard_moe

        for i, block in enumerate(model.blocks):  # type: ignore[arg-type]
            block.moe = shard_moe(block.moe, global_stats=(i == 0))
        self.replicated = [p for _, p in parameter_groups(model)["replicated"]]

    def my_share(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a batch's indices."""
        return idx.tensor_split(self.world)[self.rank]

    def average_replicated_gradients(self) -> None:
        """The replicated parameters' gradients summed over the ranks (each rank's loss is already
        divided by the world size, so the sum is the gradient of the mean loss); the experts'
        gradients already are the sums over the ranks of their tokens' gradients."""
        grads = [p.grad for p in self.replicated if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for g, part in zip(grads, torch.split(flat, [g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def mean(self, values: List[float]) -> List[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def total(self, values: List[float]) -> List[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        dist.destroy_process_group()


def start(enabled: bool) -> Optional[ExpertParallelRun]:
    return ExpertParallelRun() if enabled else None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m moeroute demo", description=__doc__)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="moeroute_demo_expert_load.png", help="where to save the expert-load plot")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: these matmuls are tiny, and more threads "
                             "only add contention, badly so on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (1 epoch, 5 steps), for tests")
    parser.add_argument("--expert-parallel", action="store_true",
                        help="under torchrun: split every MoE layer's experts over the processes (gloo, CPU), "
                             "each training on its share of every batch")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_data(seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits (8x8 images as 64 features in [0, 1]), split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.2, random_state=seed, stratify=y)
    as_x = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ep: Optional[ExpertParallelRun] = None) -> float:
    """Test accuracy (with expert parallelism, each rank scores its share and the counts are summed)."""
    model.eval()
    if ep is not None:
        share = ep.my_share(torch.arange(len(y)))
        x, y = x[share], y[share]
    with torch.no_grad():
        correct = float((model(x).argmax(dim=1) == y).sum().item())
    model.train()
    if ep is not None:
        return ep.total([correct])[0] / ep.total([float(len(y))])[0]
    return correct / len(y)


def eta(started: float, done: int, total: int) -> str:
    """The time the remaining epochs should take, at the pace so far (e.g. "0:42")."""
    seconds = round((time.perf_counter() - started) / done * (total - done))
    return f"{seconds // 60}:{seconds % 60:02d}"


def train(model: DigitsMoE, data, epochs: int, batch: int, max_steps: int, gen: torch.Generator,
          ep: Optional[ExpertParallelRun] = None) -> List[np.ndarray]:
    """AdamW on full mini-batches; prints one line per epoch; returns layer 1's kept picks per expert per step.
    With expert parallelism each rank trains on its share of every batch (the same batches)."""
    say = print if ep is None or ep.rank == 0 else (lambda *a, **k: None)
    x_train, y_train, x_test, y_test = data
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * (len(x_train) // batch))
    first = model.blocks[0].moe
    load: List[np.ndarray] = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x_train), generator=gen)
        sums: Dict[str, float] = {"task": 0.0, "aux": 0.0, "lb": 0.0, "drop": 0.0}
        steps = 0
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start:start + batch]
            if ep is not None:
                idx = ep.my_share(idx)
            task = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            aux = aux_loss(model)
            opt.zero_grad()
            ((task + aux) / (1 if ep is None else ep.world)).backward()
            if ep is not None:
                ep.average_replicated_gradients()
            opt.step()
            sched.step()
            load.append(first.stats.tokens_per_expert.numpy().copy())
            sums["task"] += task.item()
            sums["aux"] += aux.item()
            sums["lb"] += first.losses["load_balancing"].item()
            sums["drop"] += first.stats.num_dropped / (batch * first.top_k)
            steps += 1
            if len(load) >= max_steps:
                break
        m = {name: value / steps for name, value in sums.items()}
        if ep is not None:
            m = dict(zip(m, ep.mean(list(m.values()))))
        acc = accuracy(model, x_test, y_test, ep)
        say(f"epoch {epoch:3d}/{epochs}  loss {m['task'] + m['aux']:.4f} (task {m['task']:.4f} + aux {m['aux']:.4f})"
              f"  layer-1 balance loss {m['lb']:.3f}  dropped {100 * m['drop']:4.1f}%"
              f"  test acc {100 * acc:5.1f}%  eta {eta(started, epoch, epochs)}", flush=True)
        if len(load) >= max_steps:
            break
    return load


def first_layer_plan(model: DigitsMoE, x: torch.Tensor):
    """The RoutingPlan of the first MoE layer for the batch x (eval mode: as in model(x))."""
    block = model.blocks[0]
    model.eval()
    with torch.no_grad():
        plan = block.moe.plan(block.moe.router(block.norm(model.inp(x))))
    model.train()
    return plan


def specialization(plan, labels: np.ndarray, experts: int) -> np.ndarray:
    """(E, 10) counts: test tokens of each class that each expert receives as a kept pick."""
    ids = plan.expert_ids.numpy()
    kept = plan.dest.numpy() >= 0
    table = np.zeros((experts, NUM_CLASSES), np.int64)
    token, _slot = np.nonzero(kept)
    np.add.at(table, (ids[kept], labels[token]), 1)
    return table


def print_specialization(table: np.ndarray) -> None:
    print("\nexpert specialization (layer 1, test set): kept picks per class")
    print("expert " + "".join(f"{c:>5d}" for c in range(NUM_CLASSES)) + "  total  dominant class")
    for e, row in enumerate(table):
        total = int(row.sum())
        dom = int(row.argmax())
        dominant = f"{dom} ({100.0 * row[dom] / total:.0f}% of its picks)" if total else "-"
        print(f"{e:>6d} " + "".join(f"{n:>5d}" for n in row) + f"  {total:>5d}  {dominant}")


def print_balance(plan, tokens: int) -> None:
    kept = plan.tokens_per_expert.numpy()
    picks = tokens * plan.num_slots
    print(f"\nload balance (layer 1, test set, {tokens} tokens, top-{plan.num_slots}, capacity {plan.capacity} per expert):")
    print("  tokens per expert (kept):     " + " ".join(f"{int(n):>4d}" for n in kept))
    print("  assigned (before capacity):   " + " ".join(f"{int(n):>4d}" for n in plan.assigned_per_expert.numpy()))
    print(f"  min/max ratio {kept.min() / max(kept.max(), 1):.2f}  (1.00 is perfectly balanced)")
    print(f"  dropped picks {plan.num_dropped} of {picks} ({100.0 * plan.num_dropped / picks:.1f}%)")


def plot_load(load: List[np.ndarray], path: str, batch: int, top_k: int, capacity: int) -> None:
    """Saves a line per expert: kept picks per training step (moving average), with the balanced
    level and the capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import plot_expert_load

    experts = len(load[0])
    fig = plot_expert_load(load, capacity=capacity, balanced=batch * top_k / experts)
    fig.axes[0].set_title(f"moeroute demo: layer-1 expert load ({batch} tokens x top-{top_k} per step)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    ep = start(args.expert_parallel)
    try:
        return _run(args, started, ep)
    finally:
        if ep is not None:
            ep.close()


def _run(args: argparse.Namespace, started: float, ep: Optional[ExpertParallelRun]) -> int:
    gen = seed_everything(args.seed)
    data = load_data(args.seed)
    epochs, max_steps, batch = (1, 5, 64) if args.quick else (args.epochs, 10**9, 64)
    model = DigitsMoE()
    if ep is not None:
        ep.shard(model)
    first = model.blocks[0].moe
    if ep is not None and ep.rank == 0:
        print(f"expert parallelism: {ep.world} processes (gloo, CPU), each holding {first.num_experts // ep.world} "
              f"of the {first.num_experts} experts of every MoE layer and training on 1/{ep.world} of every batch")
    if ep is None or ep.rank == 0:
        print(f"moeroute demo: digits, {len(data[0])} train / {len(data[2])} test images; H=64, "
              f"{len(model.blocks)} MoE blocks of E={first.num_experts}, top-{first.top_k}, capacity factor 1.25; "
              f"{sum(p.numel() for p in model.parameters())} parameters{'' if ep is None else ' on this rank'}; "
              f"torch threads: {torch.get_num_threads()}")
    load = train(model, data, epochs, batch, max_steps, gen, ep)
    x_test, y_test = data[2], data[3]
    final = accuracy(model, x_test, y_test, ep)
    if ep is not None and ep.rank != 0:
        return 0  # (rank 0 reports)
    print(f"\nfinal test accuracy: {100 * final:.1f}% ({len(y_test)} images)")
    plan = first_layer_plan(model, x_test)
    print_specialization(specialization(plan, y_test.numpy(), first.num_experts))
    print_balance(plan, len(y_test))
    world = 1 if ep is None else ep.world  # (with expert parallelism: each rank's capacity, over the world)
    capacity = first.plan(torch.zeros(batch // world, first.num_experts)).capacity * world  # per training batch
    out = os.path.abspath(args.out)
    plot_load(load, out, batch, first.top_k, capacity)
    print(f"\nexpert-load plot saved to {out}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
