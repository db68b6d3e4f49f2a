"""The torch front of moeroute's ops: calls the `moeroute::` custom ops and wraps their outputs in a
RoutingPlan of tensors. Reached through moeroute.route / permute / combine / ... with tensors."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import DTypeError, ShapeError
from ..plan import RoutingPlan
from . import _ops
from ._convert import activation_name, check_device, check_same_device


def check_activation(t: torch.Tensor, name: str, ndim: int = 2) -> None:
    check_device(t, name)
    activation_name(t, name)
    if t.dim() != ndim:
        dims = ", ".join("_" for _ in range(ndim))
        raise ShapeError(f"{name}: got shape {list(t.shape)}, expected a {ndim}-D tensor [{dims}]")


def route(logits: torch.Tensor, options: tuple) -> RoutingPlan:
    """The plan of checked route options (see moeroute.ops._route_options) for tensor logits."""
    (k, score, normalize, scale, bias, num_groups, topk_groups, capacity, capacity_factor,
     min_capacity, capacity_multiple, priority, pad_to) = options
    if bias is not None:  # (tested first: isinstance(Tensor) is slow, even for None)
        if isinstance(bias, torch.Tensor):
            check_same_device(bias, "bias", logits, "logits")
        else:
            options = options[:4] + (torch.as_tensor(bias, dtype=torch.float64),) + options[5:]
    outputs = _ops.call(_ops.route, _ops.route_eager_impl, logits, *options)
    dropless = capacity is None and capacity_factor is None
    # The capacity layout has E segments of C rows.
    resolved = None if dropless else outputs[4].shape[0] // max(logits.shape[1], 1)
    return RoutingPlan._of(outputs, resolved, score, normalize, scale)


def expert_choice(logits: torch.Tensor, capacity: Optional[int], capacity_factor: float) -> RoutingPlan:
    check_activation(logits, "logits")
    outputs = _ops.call(_ops.expert_choice, _ops.expert_choice_impl, logits, capacity, capacity_factor)
    return RoutingPlan._of(outputs, int(outputs[4].shape[0]) // max(int(logits.shape[1]), 1), "softmax", "none", 1.0)


def _expect_rows(name: str, t: torch.Tensor, rows: int, what: str) -> None:
    if t.shape[0] != rows:
        raise ShapeError(f"{name}: got shape {list(t.shape)}, expected [{rows}, H] ({what})")


def permute(x: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
    check_activation(x, "x")
    check_same_device(x, "x", plan.src, "plan")
    _expect_rows("x", x, plan.num_tokens, "T = plan.num_tokens")
    return _ops.call(_ops.permute, _ops.permute_impl, x, plan.src, plan.dest)


def combine(yp: torch.Tensor, plan: RoutingPlan, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    check_activation(yp, "yp")
    check_same_device(yp, "yp", plan.dest, "plan")
    _expect_rows("yp", yp, plan.num_rows, "R = plan.num_rows")
    return _ops.call(_ops.combine, _ops.combine_impl, yp, plan.dest, plan.src, _weights(weights, plan))


def _weights(weights: Optional[torch.Tensor], plan: RoutingPlan) -> torch.Tensor:
    """The combine weights: the plan's own, or checked (T, S) weights on the plan's device."""
    if weights is None:
        return plan.weights
    if not isinstance(weights, torch.Tensor):
        raise DTypeError(f"weights: got {type(weights).__name__}, expected a tensor (or None: the plan's)")
    check_same_device(weights, "weights", plan.dest, "plan")
    if weights.shape != plan.expert_ids.shape:
        raise ShapeError(f"weights: got shape {list(weights.shape)}, expected {list(plan.expert_ids.shape)} (T, S)")
    return weights


def permute_backward(grad_xp: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
    check_activation(grad_xp, "grad_xp")
    check_same_device(grad_xp, "grad_xp", plan.dest, "plan")
    _expect_rows("grad_xp", grad_xp, plan.num_rows, "R = plan.num_rows")
    return _ops.call(_ops.permute_backward, _ops.permute_backward_impl, grad_xp, plan.dest)


def combine_backward(grad_y: torch.Tensor, yp: torch.Tensor, plan: RoutingPlan,
                     weights: Optional[torch.Tensor] = None):
    check_activation(yp, "yp")
    check_activation(grad_y, "grad_y")
    check_same_device(yp, "yp", plan.dest, "plan")
    check_same_device(grad_y, "grad_y", plan.dest, "plan")
    _expect_rows("yp", yp, plan.num_rows, "R = plan.num_rows")
    _expect_rows("grad_y", grad_y, plan.num_tokens, "T = plan.num_tokens")
    w = _weights(weights, plan)
    return _ops.call(_ops.combine_backward, _ops.combine_backward_impl, grad_y, yp, plan.dest, plan.src, w.detach())


def route_backward(grad_weights: torch.Tensor, plan: RoutingPlan, logits: torch.Tensor) -> torch.Tensor:
    check_activation(logits, "logits")
    if tuple(logits.shape) != tuple(plan.probs.shape):
        raise ShapeError(f"logits: got shape {list(logits.shape)}, expected {list(plan.probs.shape)} (the plan's T, E)")
    grad = _ops.call(_ops.route_backward, _ops.route_backward_impl, grad_weights, None, plan.probs.detach(),
                     plan.expert_ids, plan.dest, plan.score, plan.normalize, plan.scale)
    return grad.to(logits.dtype)
