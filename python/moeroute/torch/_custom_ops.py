"""moeroute's ops as torch custom ops (namespace `moeroute`): each runs the CPU backend (_cpu) or
the CUDA backend (_cuda) by the device of its input, has a fake implementation for torch.compile,
and autograd through moeroute's own backward kernels. `call` / `call_route` run them in eager mode
without the dispatcher's per-call cost."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Tuple, TypeVar

import torch

from .. import _core
from ..options import ROUTE_OPTION_NAMES, PicksOptions, RouteOptions, picks_options, route_options
from ..plan import FIELD_NAMES, PLAN_FIELDS
from . import _cpu, _cuda
from ._convert import empty_picks_plan, empty_plan

Tensor = torch.Tensor
# The plan ops' outputs: one tensor per field of moeroute.plan.PLAN_FIELDS, in its order.
PlanTensors = Tuple[(Tensor,) * len(PLAN_FIELDS)]  # type: ignore[misc]


def call(op: Any, impl: Callable[..., Any], *args: Any) -> Any:
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


def _backend(t: Tensor):
    return _cuda if t.is_cuda else _cpu


# ----------------------------------------------------------------------------------- route
# The op takes route's options as named scalar arguments (a custom op's schema has no objects);
# eager calls pass the RouteOptions itself.

def route_op_impl(logits: Tensor, k: int, score: str, normalize: str, scale: float, bias: Optional[Tensor],
                  num_groups: Optional[int], topk_groups: Optional[int], capacity: Optional[int],
                  capacity_factor: Optional[float], min_capacity: int, capacity_multiple: int,
                  priority: str, pad_to: int) -> PlanTensors:
    # (checked: the op may be called directly, as torch.ops.moeroute.route; cached per value)
    options = route_options(k, score, normalize, scale, None, num_groups, topk_groups, capacity, capacity_factor,
                            min_capacity, capacity_multiple, priority, pad_to)
    options.check_experts(logits.shape[1], logits.dtype == torch.float64)
    return _backend(logits).route(logits, options, bias)[0]


route = torch.library.custom_op("moeroute::route", mutates_args=())(route_op_impl)
# (_route_setup reads the op's inputs by these names, in the order of its schema.)
assert tuple(inspect.signature(route_op_impl).parameters)[1:] == ROUTE_OPTION_NAMES


@route.register_fake
def _(logits, k, score, normalize, scale, bias, num_groups, topk_groups, capacity, capacity_factor,
      min_capacity, capacity_multiple, priority, pad_to):
    t, e = logits.shape
    options = RouteOptions.trusted(
        k=k, score=score, normalize=normalize, scale=scale, bias=None, num_groups=num_groups, topk_groups=topk_groups,
        capacity=capacity, capacity_factor=capacity_factor, min_capacity=min_capacity,
        capacity_multiple=capacity_multiple, priority=priority, pad_to=pad_to)
    _, rows = _core.route_layout(int(t), int(e), options)
    return empty_plan(logits, k, rows)


def _save_route(ctx, logits: Tensor, score: str, normalize: str, scale: float, output) -> None:
    fields = dict(zip(FIELD_NAMES, output))
    ctx.save_for_backward(fields["probs"], fields["expert_ids"], fields["dest"])
    ctx.options = (score, normalize, scale, logits.dtype)


def _route_setup(ctx, inputs, output) -> None:
    named = dict(zip(("logits",) + ROUTE_OPTION_NAMES, inputs))
    _save_route(ctx, named["logits"], named["score"], named["normalize"], named["scale"], output)


def _grad_logits(ctx, grad_weights, grad_probs) -> Tensor:
    probs, expert_ids, dest = ctx.saved_tensors
    score, normalize, scale, dtype = ctx.options
    if grad_weights is None:
        grad_weights = torch.zeros(expert_ids.shape, dtype=probs.dtype, device=probs.device)
    grad_logits = call(route_backward, route_backward_impl, grad_weights, grad_probs, probs, expert_ids, dest, score,
                       normalize, scale)
    return grad_logits.to(dtype)


def _route_backward(ctx, grad_weights, grad_probs, *unused):
    return (_grad_logits(ctx, grad_weights, grad_probs),) + (None,) * len(ROUTE_OPTION_NAMES)


route.register_autograd(_route_backward, setup_context=_route_setup)


class _RouteEager(torch.autograd.Function):
    """The route op's autograd for eager calls that autograd records (options as one object)."""

    @staticmethod
    def forward(ctx, logits, options, bias):
        output, _ = _backend(logits).route(logits, options, bias)
        _save_route(ctx, logits, options.score, options.normalize, options.scale, output)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_weights, grad_probs, *unused):
        return _grad_logits(ctx, grad_weights, grad_probs), None, None


def call_route(logits: Tensor, options: RouteOptions, bias: Optional[Tensor]) -> Tuple[PlanTensors, Optional[int]]:
    """(the plan's tensors, its capacity or None): route in the way `call` runs the other ops.
    Eager calls autograd does not record get, on CUDA, the plan's fields as views of three
    allocations instead of nine (custom ops must not return aliases)."""
    compiling = torch.compiler.is_compiling()
    if compiling or (type(logits) is not Tensor and type(logits) is not _PARAMETER and isinstance(logits, Tensor)):
        fields = options.fields()  # (under torch.compile, or fake / functional tensors of a tracer)
        fields["bias"] = bias
        return route(logits, **fields), _layout_capacity(logits, options, compiling)
    if logits.requires_grad and torch.is_grad_enabled():
        return _RouteEager.apply(logits, options, bias), _layout_capacity(logits, options, compiling)
    if logits.is_cuda:
        return _cuda.route(logits, options, bias, packed=True)
    return _cpu.route(logits, options, bias)


def _layout_capacity(logits: Tensor, options: RouteOptions, compiling: bool) -> Optional[int]:
    """The capacity of a route's plan, as the core's layout rule gives it."""
    if options.dropless:
        return None
    t, e = logits.shape
    if compiling:
        return _capacity(int(t), int(e), **options.fields())
    return _core.route_layout(int(t), int(e), options)[0]


_F = TypeVar("_F", bound=Callable[..., Any])


def constant_result(fn: _F) -> _F:
    """Marks `fn` as torch.compile's `assume_constant_result` does (dynamo calls it while tracing
    and uses its result as a constant), without importing torch._dynamo, which the decorator does
    and which costs seconds at import; tests/test_torch_moe.py's compiled layers check it works."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@constant_result
def _capacity(num_tokens: int, num_experts: int, **fields) -> Optional[int]:
    """The core's capacity, a constant to torch.compile (which cannot trace into the extension)."""
    fields["bias"] = None
    return _core.route_layout(num_tokens, num_experts, RouteOptions.trusted(**fields))[0]


def route_backward_impl(grad_weights: Tensor, grad_probs: Optional[Tensor], probs: Tensor, expert_ids: Tensor,
                        dest: Tensor, score: str, normalize: str, scale: float) -> Tensor:
    return _backend(probs).route_backward(grad_weights, grad_probs, probs, expert_ids, dest, score, normalize, scale)


route_backward = torch.library.custom_op("moeroute::route_backward", mutates_args=())(route_backward_impl)


@route_backward.register_fake
def _(grad_weights, grad_probs, probs, expert_ids, dest, score, normalize, scale):
    return torch.empty_like(probs)


# --------------------------------------------------------------------------- expert choice

def expert_choice_impl(logits: Tensor, capacity: Optional[int], capacity_factor: float) -> PlanTensors:
    return _backend(logits).expert_choice(logits, capacity, capacity_factor)


expert_choice = torch.library.custom_op("moeroute::expert_choice", mutates_args=())(expert_choice_impl)


@expert_choice.register_fake
def _(logits, capacity, capacity_factor):
    t, e = logits.shape
    _, rows = _core.expert_choice_layout(int(t), int(e), capacity, capacity_factor)
    return empty_plan(logits, int(e), rows)


def _expert_choice_setup(ctx, inputs, output) -> None:
    _save_route(ctx, inputs[0], "softmax", "none", 1.0, output)


def _expert_choice_backward(ctx, grad_weights, grad_probs, *unused):
    return _grad_logits(ctx, grad_weights, grad_probs), None, None


_register_autograd(expert_choice, expert_choice_impl, _expert_choice_backward, _expert_choice_setup)


# ------------------------------------------------------------------------- plan from top-k
# The layout options as named scalars, in PicksOptions' order; differentiable w.r.t. weights.

def plan_from_topk_impl(expert_ids: Tensor, weights: Tensor, num_experts: int, capacity: Optional[int],
                        capacity_factor: Optional[float], min_capacity: int, capacity_multiple: int, priority: str,
                        pad_to: int) -> PlanTensors:
    # (checked: the op may be called directly, as torch.ops.moeroute.plan_from_topk)
    options = picks_options(capacity, capacity_factor, min_capacity, capacity_multiple, priority, pad_to)
    return _backend(weights).plan_from_topk(expert_ids, weights, num_experts, options)


plan_from_topk = torch.library.custom_op("moeroute::plan_from_topk", mutates_args=())(plan_from_topk_impl)
assert tuple(inspect.signature(plan_from_topk_impl).parameters)[3:] == PicksOptions._fields


@plan_from_topk.register_fake
def _(expert_ids, weights, num_experts, capacity, capacity_factor, min_capacity, capacity_multiple, priority, pad_to):
    t, k = weights.shape
    options = PicksOptions(capacity, capacity_factor, min_capacity, capacity_multiple, priority, pad_to)
    _, rows = _core.plan_from_topk_layout(int(t), int(k), num_experts, options)
    return empty_picks_plan(weights, num_experts, rows)


def _plan_from_topk_setup(ctx, inputs, output) -> None:
    fields = dict(zip(FIELD_NAMES, output))
    ctx.save_for_backward(fields["expert_ids"], fields["dest"])
    ctx.weights_dtype = inputs[1].dtype


def _plan_from_topk_backward(ctx, grad_weights, grad_probs, *unused):
    """plan.weights is the given weights where kept (0 elsewhere), and plan.probs[t, e] the sum of
    token t's given weights for expert e: their gradients flow back to the given weights."""
    expert_ids, dest = ctx.saved_tensors
    grad = None
    if grad_weights is not None:
        grad = torch.where(dest >= 0, grad_weights, grad_weights.new_zeros(()))
    if grad_probs is not None:
        used = expert_ids >= 0
        picked = grad_probs.gather(1, expert_ids.clamp(min=0).to(torch.int64))
        from_probs = torch.where(used, picked, picked.new_zeros(()))
        grad = from_probs if grad is None else grad + from_probs
    if grad is not None:
        grad = grad.to(ctx.weights_dtype)
    return (None, grad) + (None,) * (1 + len(PicksOptions._fields))


_register_autograd(plan_from_topk, plan_from_topk_impl, _plan_from_topk_backward, _plan_from_topk_setup)


@constant_result
def picks_capacity(num_tokens: int, top_k: int, num_experts: int, *options: Any) -> Optional[int]:
    """The capacity of plan_from_topk's plan (a constant to torch.compile)."""
    return _core.plan_from_topk_layout(num_tokens, top_k, num_experts, PicksOptions(*options))[0]


# -------------------------------------------------------------------------------- permute

def permute_impl(x: Tensor, src: Tensor, dest: Tensor) -> Tensor:
    return _backend(x).permute(x, src)


permute = torch.library.custom_op("moeroute::permute", mutates_args=())(permute_impl)


@permute.register_fake
def _(x, src, dest):
    return x.new_empty((src.shape[0], x.shape[1]))


def permute_backward_impl(grad_xp: Tensor, dest: Tensor) -> Tensor:
    if grad_xp.is_cuda:
        return _cuda.permute_backward(grad_xp, dest)
    return _cpu.permute_backward([grad_xp], dest)


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
        return (_cpu.permute_backward(given, dest) if given else None), None, None, None


# -------------------------------------------------------------------------------- combine

def combine_impl(yp: Tensor, dest: Tensor, src: Tensor, weights: Tensor) -> Tensor:
    return _backend(yp).combine(yp, dest, weights)


combine = torch.library.custom_op("moeroute::combine", mutates_args=())(combine_impl)


@combine.register_fake
def _(yp, dest, src, weights):
    return yp.new_empty((dest.shape[0], yp.shape[1]))


def combine_backward_impl(grad_y: Tensor, yp: Tensor, dest: Tensor, src: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    return _backend(yp).combine_backward(grad_y, yp, dest, src, weights)


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

