"""The torch front: moeroute's ops on tensors (CPU or CUDA), differentiable. Checks the tensors,
runs the `moeroute::` custom ops (_custom_ops) and wraps their outputs in a RoutingPlan of
tensors. `moeroute.route` etc. come here for tensors; this front never imports the NumPy one."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch

from .. import _core
from .._checks import (expect_logits_shape, expect_picks_shape, expect_rows, expect_weights_shape, integer,
                       optional_integer, real, shape_error)
from ..errors import DTypeError
from ..options import RouteOptions, picks_options, route_function
from ..plan import FIELD_NAMES, RoutingPlan, expect_plan, expect_routed_plan
from . import _custom_ops as ops
from ._convert import check_activation, check_device, check_same_device

Tensor = torch.Tensor
# The plans of this front: tensors.
TensorPlan = RoutingPlan[Tensor]
# Combine weights given explicitly: float32 or float64 (cast to the accumulation dtype), as in NumPy.
_WEIGHT_DTYPES = (torch.float32, torch.float64)


def route_with_options(logits: Tensor, options: RouteOptions) -> TensorPlan:
    """`route` with its options built once (see moeroute.RouteOptions)."""
    check_activation(logits, "logits")
    options.check_experts(logits.shape[1], logits.dtype == torch.float64)
    bias = options.bias
    if bias is not None:  # (tested first: isinstance(Tensor) is slow, even for None)
        if isinstance(bias, Tensor):
            check_same_device(bias, "bias", logits, "logits")
        else:
            bias = torch.tensor(bias, dtype=torch.float64)  # (a copy: the options hold a read-only array)
    outputs, capacity = ops.call_route(logits, options, bias)
    return RoutingPlan._of(outputs, capacity, options.score, options.normalize, options.scale)


route = route_function(route_with_options, __name__)


def expert_choice(logits: Tensor, *, capacity_factor: float = 1.0, capacity: Optional[int] = None) -> TensorPlan:
    """moeroute.expert_choice for tensor logits (the plan holds tensors on the logits' device)."""
    capacity = optional_integer(capacity, "capacity", 0)
    capacity_factor = real(capacity_factor, "capacity_factor")
    check_activation(logits, "logits")
    outputs: Tuple[Tensor, ...] = ops.call(ops.expert_choice, ops.expert_choice_impl, logits, capacity,
                                           capacity_factor)
    t, e = logits.shape
    return RoutingPlan._of(outputs, _expert_choice_capacity(int(t), int(e), capacity, capacity_factor),
                           "softmax", "none", 1.0)


@ops.constant_result
def _expert_choice_capacity(num_tokens: int, num_experts: int, capacity: Optional[int],
                            capacity_factor: float) -> int:
    """The core's expert-choice capacity (a constant to torch.compile)."""
    return _core.expert_choice_layout(num_tokens, num_experts, capacity, capacity_factor)[0]


def plan_from_topk(expert_ids: Tensor, weights: Tensor, num_experts: int, *, capacity: Optional[int] = None,
                   capacity_factor: Optional[float] = None, min_capacity: int = 0, capacity_multiple: int = 1,
                   priority: str = "slot", pad_to: int = 1) -> TensorPlan:
    """moeroute.plan_from_topk for tensors (CPU or CUDA): the plan of picks made elsewhere, e.g. a
    model's own router's top-k. Differentiable with respect to `weights` (through plan.weights
    and plan.probs); expert_ids may be any integer dtype (int64, as torch.topk gives, or int32)."""
    options = picks_options(capacity, capacity_factor, min_capacity, capacity_multiple, priority, pad_to)
    num_experts = integer(num_experts, "num_experts", 1)
    if not isinstance(expert_ids, Tensor) or expert_ids.dtype.is_floating_point or expert_ids.dtype.is_complex \
            or expert_ids.dtype == torch.bool:
        raise DTypeError(f"expert_ids: got {getattr(expert_ids, 'dtype', type(expert_ids).__name__)}, expected an "
                         f"integer tensor")
    check_device(expert_ids, "expert_ids")
    if expert_ids.dim() != 2:
        raise shape_error("expert_ids", expert_ids.shape, 2, "tensor")
    check_activation(weights, "weights")
    check_same_device(expert_ids, "expert_ids", weights, "weights")
    expect_picks_shape(weights.shape, expert_ids.shape)
    outputs: Tuple[Tensor, ...] = ops.call(ops.plan_from_topk, ops.plan_from_topk_impl, expert_ids, weights,
                                           num_experts, *options)
    capacity = None
    if options.capacity is not None or options.capacity_factor is not None:  # (else dropless: no capacity)
        t, k = weights.shape
        capacity = ops.picks_capacity(int(t), int(k), num_experts, *options)
    return RoutingPlan._of(outputs, capacity, "given", "none", 1.0)


def permute(x: Tensor, plan: TensorPlan) -> Tensor:
    """moeroute.permute for tensors: xp[r] = x[plan.src[r]], padding rows 0."""
    plan = expect_plan(plan, tensors=True)
    _expect_activation(x, "x", plan, plan.num_tokens, "T = plan.num_tokens")
    xp: Tensor = ops.call(ops.permute, ops.permute_impl, x, plan.src, plan.dest)
    return xp


def permute_shared(x: Tensor, plan: TensorPlan, uses: int) -> Tuple[Tensor, ...]:
    """permute(x, plan) once, as `uses` tensors, one per use of the rows (e.g. an expert's gate and
    up projections): on CPU with autograd, the first and views of it, whose gradients permute's
    backward sums while it gathers (instead of autograd adding the [R, H] gradients in a pass of
    its own); elsewhere the same tensor `uses` times."""
    plan = expect_plan(plan, tensors=True)
    _expect_activation(x, "x", plan, plan.num_tokens, "T = plan.num_tokens")
    return ops.permute_shared(x, plan.src, plan.dest, uses)


def _expect_activation(t: Tensor, name: str, plan: TensorPlan, rows: int, what: str) -> None:
    """A (rows, H) float activation on the plan's device (what: where `rows` comes from)."""
    check_activation(t, name)
    check_same_device(t, name, plan.dest, "plan")
    expect_rows(name, t.shape, rows, what)


def _weights(weights: Optional[Tensor], plan: TensorPlan) -> Tensor:
    """The combine weights: the plan's own, or checked (T, S) weights on the plan's device."""
    if weights is None:
        return plan.weights
    if not isinstance(weights, Tensor):
        raise DTypeError(f"weights: got {type(weights).__name__}, expected a tensor (or None: the plan's)")
    if weights.dtype not in _WEIGHT_DTYPES:
        raise DTypeError(f"weights: got dtype {weights.dtype}, expected float32 or float64")
    check_same_device(weights, "weights", plan.dest, "plan")
    expect_weights_shape(weights.shape, plan.expert_ids.shape)
    return weights


def combine(yp: Tensor, plan: TensorPlan, weights: Optional[Tensor] = None) -> Tensor:
    """moeroute.combine for tensors: y[t] = sum over kept slots of w[t,s] * yp[dest[t,s]]."""
    plan = expect_plan(plan, tensors=True)
    _expect_activation(yp, "yp", plan, plan.num_rows, "R = plan.num_rows")
    y: Tensor = ops.call(ops.combine, ops.combine_impl, yp, plan.dest, plan.src, _weights(weights, plan))
    return y


def permute_backward(grad_xp: Tensor, plan: TensorPlan) -> Tensor:
    """moeroute.permute_backward for tensors: grad_x[t] = sum over kept slots of grad_xp[dest[t,s]]."""
    plan = expect_plan(plan, tensors=True)
    _expect_activation(grad_xp, "grad_xp", plan, plan.num_rows, "R = plan.num_rows")
    grad_x: Tensor = ops.call(ops.permute_backward, ops.permute_backward_impl, grad_xp, plan.dest)
    return grad_x


def combine_backward(grad_y: Tensor, yp: Tensor, plan: TensorPlan,
                     weights: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """moeroute.combine_backward for tensors: (grad_yp, grad_weights)."""
    plan = expect_plan(plan, tensors=True)
    check_activation(yp, "yp")
    check_activation(grad_y, "grad_y")
    check_same_device(yp, "yp", plan.dest, "plan")
    check_same_device(grad_y, "grad_y", plan.dest, "plan")
    expect_rows("yp", yp.shape, plan.num_rows, "R = plan.num_rows")
    expect_rows("grad_y", grad_y.shape, plan.num_tokens, "T = plan.num_tokens")
    if grad_y.dtype != yp.dtype:
        raise DTypeError(f"grad_y: got dtype {grad_y.dtype}, expected the dtype of yp ({yp.dtype})")
    w = _weights(weights, plan)
    grads: Tuple[Tensor, Tensor] = ops.call(ops.combine_backward, ops.combine_backward_impl, grad_y, yp, plan.dest,
                                            plan.src, w.detach())
    return grads


def route_backward(grad_weights: Tensor, plan: TensorPlan, logits: Tensor) -> Tensor:
    """moeroute.route_backward for tensors: the gradient of the plan's weights w.r.t. the logits."""
    plan = expect_plan(plan, tensors=True)
    expect_routed_plan(plan)
    check_activation(logits, "logits")
    expect_logits_shape(logits.shape, plan.probs.shape)
    if not isinstance(grad_weights, Tensor) or not grad_weights.dtype.is_floating_point:
        raise DTypeError(f"grad_weights: got {getattr(grad_weights, 'dtype', type(grad_weights).__name__)}, "
                         f"expected a float tensor")
    grad: Tensor = ops.call(ops.route_backward, ops.route_backward_impl, grad_weights, None, plan.probs.detach(),
                    plan.expert_ids, plan.dest, plan.score, plan.normalize, plan.scale)
    return grad.to(logits.dtype)


def plan_as_tensors(plan: RoutingPlan[Any], device: Union[str, torch.device, int] = "cpu") -> TensorPlan:
    """The same plan with its arrays as tensors on `device` (copies; a tensor plan is moved)."""
    arrays = [_tensor(getattr(plan, name)).to(device) for name in FIELD_NAMES]
    return RoutingPlan._of(arrays, plan.capacity, plan.score, plan.normalize, plan.scale)


def _tensor(array: Any) -> Tensor:
    return array if isinstance(array, Tensor) else torch.tensor(array)  # (a copy: plan arrays are read-only)
