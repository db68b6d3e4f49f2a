"""The demo's expert-parallel mode (`torchrun --nproc-per-node N -m moeroute demo --expert-parallel`):
every MoE layer's experts split over the N processes (gloo, CPU), each process training on its share
of every batch; replicated parameters' gradients averaged over the processes, experts' not."""

from __future__ import annotations

import datetime
import os
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn


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
