"""moeroute's ops as torch custom ops (namespace `moeroute`): CPU kernels on the tensors' memory,
fake implementations for torch.compile, and autograd through moeroute's own backward kernels."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from .. import _core
from . import _cuda
from ._convert import accumulation_dtype, from_storage, index_array, to_storage

Tensor = torch.Tensor
# The plan ops' outputs, in moeroute.plan.ARRAY_FIELDS order (float outputs first: torch's opcheck
# sums a custom op's outputs in order into one accumulator).
PlanTensors = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def call(op, impl, *args):
    """Runs the custom op `op` under torch.compile; in eager mode the same implementation `impl`,
    directly, or through an autograd.Function with the op's own backward when autograd has to
    record the call (the dispatcher costs far more per call than the kernels at small sizes)."""
    if torch.compiler.is_compiling():
        return op(*args)
    record = False
    for a in args:
        kind = type(a)
        if kind in _OPTION_TYPES:  # (before isinstance, which is slow for torch.Tensor)
            continue
        if kind is Tensor or kind is _PARAMETER:
            record = record or a.requires_grad
        elif isinstance(a, Tensor):
            return op(*args)  # fake / functional tensors of a tracer (e.g. in opcheck)
    if record and torch.is_grad_enabled():
        return _EAGER_AUTOGRAD.get(op, op)(*args)
    return impl(*args)


_PARAMETER = torch.nn.Parameter
# The types of the ops' non-tensor arguments.
_OPTION_TYPES = frozenset({int, float, bool, str, type(None)})


_EAGER_AUTOGRAD: dict = {}


def _register_autograd(op, impl, backward, setup_context) -> None:
    """Registers the op's autograd, and the equivalent autograd.Function for eager calls."""
    op.register_autograd(backward, setup_context=setup_context)

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Eager.__name__ = Eager.__qualname__ = f"{op._name.split('::')[-1]}_eager"
    _EAGER_AUTOGRAD[op] = Eager.apply


def plan_layout(num_tokens: int, num_experts: int, k: int, capacity: Optional[int],
                capacity_factor: Optional[float], min_capacity: int, capacity_multiple: int,
                pad_to: int) -> Tuple[Optional[int], int]:
    """(capacity or None, rows): the static layout of a route (the core's rule, in Python so that
    torch.compile can trace it; the kernel itself also checks the int32 row limit)."""
    if capacity is None and capacity_factor is None:
        rows = num_tokens * k + (num_experts * (pad_to - 1) if pad_to > 1 else 0)
        return None, rows
    c = capacity if capacity is not None else math.ceil(capacity_factor * num_tokens * k / num_experts)
    c = max(c, min_capacity)
    c = -(-c // capacity_multiple) * capacity_multiple
    return c, num_experts * c


def _plan_tensors(fields: tuple) -> PlanTensors:
    """The plan's tensors (sharing memory) from the core's plan tuple (arrays, then the capacity)."""
    from_numpy = torch.from_numpy
    return tuple([from_numpy(a) for a in fields[:8]])  # type: ignore[return-value]


def _fake_plan(logits: Tensor, slots: int, rows: int) -> PlanTensors:
    t, e = logits.shape
    acc = accumulation_dtype(logits.dtype)
    i32, i64 = torch.int32, torch.int64
    return (logits.new_empty((t, slots), dtype=acc), logits.new_empty((t, e), dtype=acc),
            logits.new_empty((t, slots), dtype=i32), logits.new_empty((t, slots), dtype=i32),
            logits.new_empty((rows,), dtype=i32), logits.new_empty((e + 1,), dtype=i64),
            logits.new_empty((e,), dtype=i64), logits.new_empty((e,), dtype=i64))


# ----------------------------------------------------------------------------------- route

def _route(logits: Tensor, options: tuple, packed: bool) -> PlanTensors:
    """route_impl's work; `packed` (eager calls autograd does not record): on CUDA, the plan's
    fields are views of three allocations instead of nine (custom ops must not return aliases)."""
    if logits.is_cuda:
        (k, score, normalize, scale, bias, num_groups, topk_groups, capacity, capacity_factor, min_capacity,
         capacity_multiple, priority, pad_to) = options
        t, e = logits.shape
        _, rows = plan_layout(int(t), int(e), k, capacity, capacity_factor, min_capacity, capacity_multiple, pad_to)
        return _cuda.route(logits, rows, *options, packed=packed)  # type: ignore[return-value]
    storage, dtype_name = to_storage(logits, "logits", 2)
    bias = options[4]
    if bias is not None:  # the core takes the bias as a list of floats
        options = options[:4] + (index_array(bias.to(torch.float64), "bias").tolist(),) + options[5:]
    return _plan_tensors(_core.route(storage, dtype_name, *options))


def route_impl(logits: Tensor, k: int, score: str, normalize: str, scale: float, bias: Optional[Tensor],
               num_groups: Optional[int], topk_groups: Optional[int], capacity: Optional[int],
               capacity_factor: Optional[float], min_capacity: int, capacity_multiple: int,
               priority: str, pad_to: int) -> PlanTensors:
    return _route(logits, (k, score, normalize, scale, bias, num_groups, topk_groups, capacity, capacity_factor,
                           min_capacity, capacity_multiple, priority, pad_to), packed=False)


route = torch.library.custom_op("moeroute::route", mutates_args=())(route_impl)


def route_eager_impl(logits: Tensor, *options) -> PlanTensors:
    """route_impl for eager calls autograd does not record (see _route)."""
    return _route(logits, options, packed=True)


@route.register_fake
def _(logits, k, score, normalize, scale, bias, num_groups, topk_groups, capacity, capacity_factor,
      min_capacity, capacity_multiple, priority, pad_to):
    t, e = logits.shape
    _, rows = plan_layout(int(t), int(e), k, capacity, capacity_factor, min_capacity,
                          capacity_multiple, pad_to)
    return _fake_plan(logits, k, rows)


def _route_setup(ctx, inputs, output) -> None:
    logits, _, score, normalize, scale = inputs[:5]
    _, probs, expert_ids, dest = output[:4]
    ctx.save_for_backward(probs, expert_ids, dest)
    ctx.options = (score, normalize, scale, logits.dtype)


def _route_backward(ctx, grad_weights, grad_probs, *unused):
    probs, expert_ids, dest = ctx.saved_tensors
    score, normalize, scale, dtype = ctx.options
    if grad_weights is None:
        grad_weights = torch.zeros(expert_ids.shape, dtype=probs.dtype, device=probs.device)
    grad_logits = call(route_backward, route_backward_impl, grad_weights, grad_probs, probs, expert_ids, dest, score,
                       normalize, scale)
    return (grad_logits.to(dtype),) + (None,) * 13


_register_autograd(route, route_impl, _route_backward, _route_setup)


def route_backward_impl(grad_weights: Tensor, grad_probs: Optional[Tensor], probs: Tensor, expert_ids: Tensor,
                   dest: Tensor, score: str, normalize: str, scale: float) -> Tensor:
    if probs.is_cuda:
        return _cuda.route_backward(grad_weights, grad_probs, probs, expert_ids, dest, score, normalize, scale)
    acc = probs.dtype
    gp = None if grad_probs is None else index_array(grad_probs.to(acc), "grad_probs")
    grad = _core.route_backward(index_array(grad_weights.to(acc), "grad_weights"), gp, index_array(probs, "plan.probs"),
                                index_array(expert_ids, "plan.expert_ids"), index_array(dest, "plan.dest"),
                                score, normalize, scale, acc == torch.float64)
    return torch.from_numpy(grad)


route_backward = torch.library.custom_op("moeroute::route_backward", mutates_args=())(route_backward_impl)


@route_backward.register_fake
def _(grad_weights, grad_probs, probs, expert_ids, dest, score, normalize, scale):
    return torch.empty_like(probs)


# --------------------------------------------------------------------------- expert choice

def expert_choice_impl(logits: Tensor, capacity: Optional[int], capacity_factor: float) -> PlanTensors:
    if logits.is_cuda:
        t, e = logits.shape
        return _cuda.expert_choice(logits, capacity, capacity_factor, int(e) * _ec_capacity(int(t), int(e), capacity,  # type: ignore[return-value]
                                                                                            capacity_factor))
    storage, dtype_name = to_storage(logits, "logits", 2)
    return _plan_tensors(_core.expert_choice(storage, dtype_name, capacity, capacity_factor))


expert_choice = torch.library.custom_op("moeroute::expert_choice", mutates_args=())(expert_choice_impl)


def _ec_capacity(t: int, e: int, capacity: Optional[int], capacity_factor: float) -> int:
    return capacity if capacity is not None else math.ceil(t * capacity_factor / e)


@expert_choice.register_fake
def _(logits, capacity, capacity_factor):
    t, e = logits.shape
    return _fake_plan(logits, int(e), int(e) * _ec_capacity(int(t), int(e), capacity, capacity_factor))


def _expert_choice_setup(ctx, inputs, output) -> None:
    _, probs, expert_ids, dest = output[:4]
    ctx.save_for_backward(probs, expert_ids, dest)
    ctx.options = ("softmax", "none", 1.0, inputs[0].dtype)


def _expert_choice_backward(ctx, *grads):
    return _route_backward(ctx, *grads)[:3]


_register_autograd(expert_choice, expert_choice_impl, _expert_choice_backward, _expert_choice_setup)


# -------------------------------------------------------------------------------- permute

def permute_impl(x: Tensor, src: Tensor, dest: Tensor) -> Tensor:
    if x.is_cuda:
        return _cuda.permute(x, src)
    storage, dtype_name = to_storage(x, "x", 2)
    return from_storage(_core.permute(storage, dtype_name, index_array(src, "plan.src")), dtype_name)


permute = torch.library.custom_op("moeroute::permute", mutates_args=())(permute_impl)


@permute.register_fake
def _(x, src, dest):
    return x.new_empty((src.shape[0], x.shape[1]))


def permute_backward_impl(grad_xp: Tensor, dest: Tensor) -> Tensor:
    if grad_xp.is_cuda:
        return _cuda.combine(grad_xp, dest, None)
    return _permute_backward_cpu([grad_xp], dest)


def _permute_backward_cpu(grads, dest: Tensor) -> Tensor:
    """grad_x from the gradients of one or more uses of the permuted rows (summed per slot)."""
    storages = [to_storage(g, "grad_xp", 2) for g in grads]
    dtype_name = storages[0][1]
    grad_x = _core.permute_backward(storages[0][0], dtype_name, index_array(dest, "plan.dest"),
                                    *(storage for storage, _ in storages[1:]))
    return from_storage(grad_x, dtype_name)


permute_backward = torch.library.custom_op("moeroute::permute_backward", mutates_args=())(permute_backward_impl)


@permute_backward.register_fake
def _(grad_xp, dest):
    return grad_xp.new_empty((dest.shape[0], grad_xp.shape[1]))


def _permute_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[2])


def _permute_backward(ctx, grad_xp):
    (dest,) = ctx.saved_tensors
    return call(permute_backward, permute_backward_impl, grad_xp, dest), None, None


_register_autograd(permute, permute_impl, _permute_backward, _permute_setup)


def permute_shared(x: Tensor, src: Tensor, dest: Tensor, uses: int) -> Tuple[Tensor, ...]:
    """`uses` tensors holding permute(x): the permuted rows and views of them, one per use (e.g.
    an expert's gate and up projections). Their gradients reach permute's backward separately,
    and its kernel sums them while it gathers, instead of autograd first adding the [R, H]
    gradients in a pass of its own. Under torch.compile, on CUDA, or without autograd, the same
    tensor is returned `uses` times."""
    if uses > 1 and not torch.compiler.is_compiling() and not x.is_cuda and x.requires_grad and torch.is_grad_enabled():
        return _PermuteShared.apply(x, src, dest, uses)
    return (call(permute, permute_impl, x, src, dest),) * uses


class _PermuteShared(torch.autograd.Function):
    """permute with one output per use of the rows (the first, and views of it)."""

    @staticmethod
    def forward(ctx, x, src, dest, uses):
        xp = permute_impl(x, src, dest)
        ctx.save_for_backward(dest)
        return (xp, *(xp.view_as(xp) for _ in range(uses - 1)))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        (dest,) = ctx.saved_tensors
        given = [g for g in grads if g is not None]
        return (_permute_backward_cpu(given, dest) if given else None), None, None, None


# -------------------------------------------------------------------------------- combine

def _weights_array(weights: Tensor, yp: Tensor) -> np.ndarray:
    return index_array(weights.to(accumulation_dtype(yp.dtype)), "weights")


def combine_impl(yp: Tensor, dest: Tensor, src: Tensor, weights: Tensor) -> Tensor:
    if yp.is_cuda:
        return _cuda.combine(yp, dest, weights)
    storage, dtype_name = to_storage(yp, "yp", 2)
    y = _core.combine(storage, dtype_name, index_array(dest, "plan.dest"), _weights_array(weights, yp))
    return from_storage(y, dtype_name)


combine = torch.library.custom_op("moeroute::combine", mutates_args=())(combine_impl)


@combine.register_fake
def _(yp, dest, src, weights):
    return yp.new_empty((dest.shape[0], yp.shape[1]))


def combine_backward_impl(grad_y: Tensor, yp: Tensor, dest: Tensor, src: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    if yp.is_cuda:
        return _cuda.combine_backward(grad_y, yp, dest, src, weights)
    yp_storage, dtype_name = to_storage(yp, "yp", 2)
    gy_storage, _ = to_storage(grad_y.to(yp.dtype), "grad_y", 2)
    grad_yp, grad_w = _core.combine_backward(gy_storage, yp_storage, dtype_name, index_array(dest, "plan.dest"),
                                             index_array(src, "plan.src"), _weights_array(weights, yp))
    return from_storage(grad_yp, dtype_name), torch.from_numpy(grad_w).to(weights.dtype)


combine_backward = torch.library.custom_op("moeroute::combine_backward", mutates_args=())(combine_backward_impl)


@combine_backward.register_fake
def _(grad_y, yp, dest, src, weights):
    return torch.empty_like(yp), torch.empty_like(weights)


def _combine_setup(ctx, inputs, output) -> None:
    yp, dest, src, weights = inputs
    ctx.save_for_backward(yp, dest, src, weights)


def _combine_backward(ctx, grad_y):
    yp, dest, src, weights = ctx.saved_tensors
    grad_yp, grad_w = call(combine_backward, combine_backward_impl, grad_y, yp, dest, src, weights)
    return grad_yp, None, None, grad_w


_register_autograd(combine, combine_impl, _combine_backward, _combine_setup)
