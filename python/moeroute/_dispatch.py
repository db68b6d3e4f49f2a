"""The one place that knows both fronts: `moeroute.route`, `permute`, ... and the losses pick the
NumPy front (moeroute.numpy) or the torch front (moeroute.torch, imported on first use, so only
torch users pay for importing torch) by the type of their data argument."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Optional, Tuple

from . import numpy as _numpy
from ._checks import is_torch
from .options import RouteOptions, route_function
from .plan import RoutingPlan, expect_plan

_TORCH: Optional[ModuleType] = None


def _torch() -> ModuleType:
    """moeroute.torch, imported on first use."""
    global _TORCH
    if _TORCH is None:
        import moeroute.torch as front
        _TORCH = front
    return _TORCH


def _front(data: Any) -> ModuleType:
    return _torch() if is_torch(data) else _numpy


def route_with_options(logits: Any, options: RouteOptions) -> RoutingPlan:
    """`route` with its options built once: `route_with_options(logits, RouteOptions(k, ...))`."""
    return _front(logits).route_with_options(logits, options)


route = route_function(route_with_options, __name__)


def expert_choice(logits: Any, *, capacity_factor: float = 1.0, capacity: Optional[int] = None) -> RoutingPlan:
    return _front(logits).expert_choice(logits, capacity_factor=capacity_factor, capacity=capacity)


def permute(x: Any, plan: RoutingPlan) -> Any:
    return _front(x).permute(x, plan)


def combine(yp: Any, plan: RoutingPlan, weights: Any = None) -> Any:
    return _front(yp).combine(yp, plan, weights)


def permute_backward(grad_xp: Any, plan: RoutingPlan) -> Any:
    return _front(grad_xp).permute_backward(grad_xp, plan)


def combine_backward(grad_y: Any, yp: Any, plan: RoutingPlan, weights: Any = None) -> Tuple[Any, Any]:
    return _front(yp).combine_backward(grad_y, yp, plan, weights)


def route_backward(grad_weights: Any, plan: RoutingPlan, logits: Any) -> Any:
    return _front(logits).route_backward(grad_weights, plan, logits)


def load_balancing_loss(plan: RoutingPlan) -> Any:
    return _front(expect_plan(plan).probs).load_balancing_loss(plan)


def z_loss(logits: Any) -> Any:
    return _front(logits).z_loss(logits)


def importance_loss(plan: RoutingPlan) -> Any:
    return _front(expect_plan(plan).weights).importance_loss(plan)


def noisy_load_probs(clean_logits: Any, noise_std: Any, noisy_logits: Any, k: int) -> Any:
    return _front(clean_logits).noisy_load_probs(clean_logits, noise_std, noisy_logits, k)


def noisy_load_loss(clean_logits: Any, noise_std: Any, noisy_logits: Any, k: int) -> Any:
    return _front(clean_logits).noisy_load_loss(clean_logits, noise_std, noisy_logits, k)


def plan_as_tensors(plan: RoutingPlan, device: str) -> RoutingPlan:
    """A NumPy plan's arrays as tensors on `device` (RoutingPlan.load of a saved torch plan)."""
    return _torch().plan_as_tensors(plan, device)


# Each dispatcher documents what its NumPy twin does (the torch twin does the same on tensors).
for _name in ("expert_choice", "permute", "combine", "permute_backward", "combine_backward", "route_backward",
              "load_balancing_loss", "z_loss", "importance_loss", "noisy_load_probs", "noisy_load_loss"):
    globals()[_name].__doc__ = getattr(_numpy, _name).__doc__
del _name
