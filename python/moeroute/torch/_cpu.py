"""moeroute's ops on CPU tensors, the twin of _cuda.py: the Rust core reads and writes the tensors'
memory through zero-copy NumPy views (half types as 16-bit integer views)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .. import _core
from ..options import PicksOptions, RouteOptions
from ._convert import accumulation_dtype, from_storage, index_array, to_storage

Tensor = torch.Tensor


def _plan_tensors(fields: _core.PlanTuple) -> Tuple[Tensor, ...]:
    """The plan's tensors (sharing memory) from the core's plan tuple (arrays, then the capacity)."""
    from_numpy = torch.from_numpy
    return tuple([from_numpy(a) for a in fields[:-1]])


def route(logits: Tensor, options: RouteOptions, bias: Optional[Tensor]) -> Tuple[Tuple[Tensor, ...], Optional[int]]:
    """(the plan's tensors, its capacity or None); `bias` (the options' own, as a tensor) goes to
    the core as float64."""
    storage, dtype_name = to_storage(logits, "logits", 2)
    bias_array = None if bias is None else index_array(bias.to(torch.float64), "bias")
    fields = _core.route(storage, dtype_name, options, bias_array)
    return _plan_tensors(fields), fields[-1]


def expert_choice(logits: Tensor, capacity: Optional[int], capacity_factor: float) -> Tuple[Tensor, ...]:
    storage, dtype_name = to_storage(logits, "logits", 2)
    return _plan_tensors(_core.expert_choice(storage, dtype_name, capacity, capacity_factor))


def plan_from_topk(expert_ids: Tensor, weights: Tensor, num_experts: int, options: PicksOptions) -> Tuple[Tensor, ...]:
    storage, dtype_name = to_storage(weights, "weights", 2)
    ids = index_array(expert_ids.to(torch.int64), "expert_ids")
    return _plan_tensors(_core.plan_from_topk(ids, storage, dtype_name, num_experts, options))


def permute(x: Tensor, src: Tensor) -> Tensor:
    storage, dtype_name = to_storage(x, "x", 2)
    return from_storage(_core.permute(storage, dtype_name, index_array(src, "plan.src")), dtype_name)


def permute_backward(grads: Sequence[Tensor], dest: Tensor) -> Tensor:
    """grad_x from the gradients of one or more uses of the permuted rows (summed per slot)."""
    storages = [to_storage(g, "grad_xp", 2) for g in grads]
    dtype_name = storages[0][1]
    grad_x = _core.permute_backward(storages[0][0], dtype_name, index_array(dest, "plan.dest"),
                                    *(storage for storage, _ in storages[1:]))
    return from_storage(grad_x, dtype_name)


def _weights_array(weights: Tensor, yp: Tensor) -> np.ndarray:
    return index_array(weights.to(accumulation_dtype(yp.dtype)), "weights")


def combine(yp: Tensor, dest: Tensor, weights: Tensor) -> Tensor:
    storage, dtype_name = to_storage(yp, "yp", 2)
    y = _core.combine(storage, dtype_name, index_array(dest, "plan.dest"), _weights_array(weights, yp))
    return from_storage(y, dtype_name)


def combine_backward(grad_y: Tensor, yp: Tensor, dest: Tensor, src: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    yp_storage, dtype_name = to_storage(yp, "yp", 2)
    gy_storage, _ = to_storage(grad_y.to(yp.dtype), "grad_y", 2)
    grad_yp, grad_w = _core.combine_backward(gy_storage, yp_storage, dtype_name, index_array(dest, "plan.dest"),
                                             index_array(src, "plan.src"), _weights_array(weights, yp))
    return from_storage(grad_yp, dtype_name), torch.from_numpy(grad_w).to(weights.dtype)


def route_backward(grad_weights: Tensor, grad_probs: Optional[Tensor], probs: Tensor, expert_ids: Tensor,
                   dest: Tensor, score: str, normalize: str, scale: float) -> Tensor:
    acc = probs.dtype
    gp = None if grad_probs is None else index_array(grad_probs.to(acc), "grad_probs")
    grad = _core.route_backward(index_array(grad_weights.to(acc), "grad_weights"), gp, index_array(probs, "plan.probs"),
                                index_array(expert_ids, "plan.expert_ids"), index_array(dest, "plan.dest"),
                                score, normalize, scale)
    return torch.from_numpy(grad)
