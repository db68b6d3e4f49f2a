"""The one place that knows both fronts: `moeroute.route`, `permute`, ... and the losses pick the
NumPy front (moeroute.numpy) or the torch front (moeroute.torch, imported on first use, so only
torch users pay for importing torch) by the type of their data argument."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union, cast, overload

from . import numpy as _numpy
from ._checks import is_torch
from ._types import ArrayT
from .options import DispatchRoute, RouteOptions, route_function
from .plan import RoutingPlan, expect_plan

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike, NDArray

# Types: each function is overloaded (or generic in ArrayT, np.ndarray or torch.Tensor) so that
# NumPy data give NumPy results and tensors give tensors; the implementations take Any.

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


def route_with_options(logits: ArrayT, options: RouteOptions) -> RoutingPlan[ArrayT]:
    """`route` with its options built once: `route_with_options(logits, RouteOptions(k, ...))`."""
    plan: RoutingPlan[ArrayT] = _front(logits).route_with_options(logits, options)
    return plan


route = cast(DispatchRoute, route_function(route_with_options, __name__))


def expert_choice(logits: ArrayT, *, capacity_factor: float = 1.0,
                  capacity: Optional[int] = None) -> RoutingPlan[ArrayT]:
    plan: RoutingPlan[ArrayT] = _front(logits).expert_choice(logits, capacity_factor=capacity_factor,
                                                            capacity=capacity)
    return plan


@overload
def plan_from_topk(expert_ids: torch.Tensor, weights: torch.Tensor, num_experts: int, *,
                   capacity: Optional[int] = None, capacity_factor: Optional[float] = None, min_capacity: int = 0,
                   capacity_multiple: int = 1, priority: str = "slot",
                   pad_to: int = 1) -> RoutingPlan[torch.Tensor]: ...
@overload
def plan_from_topk(expert_ids: ArrayLike, weights: ArrayLike, num_experts: int, *, capacity: Optional[int] = None,
                   capacity_factor: Optional[float] = None, min_capacity: int = 0, capacity_multiple: int = 1,
                   priority: str = "slot", pad_to: int = 1) -> RoutingPlan[NDArray[Any]]: ...
def plan_from_topk(expert_ids: Any, weights: Any, num_experts: int, *, capacity: Optional[int] = None,
                   capacity_factor: Optional[float] = None, min_capacity: int = 0, capacity_multiple: int = 1,
                   priority: str = "slot", pad_to: int = 1) -> Any:
    return _front(weights).plan_from_topk(expert_ids, weights, num_experts, capacity=capacity,
                                          capacity_factor=capacity_factor, min_capacity=min_capacity,
                                          capacity_multiple=capacity_multiple, priority=priority, pad_to=pad_to)


def permute(x: ArrayT, plan: RoutingPlan[ArrayT]) -> ArrayT:
    xp: ArrayT = _front(x).permute(x, plan)
    return xp


@overload
def combine(yp: torch.Tensor, plan: RoutingPlan[torch.Tensor],
            weights: Optional[torch.Tensor] = None) -> torch.Tensor: ...
@overload
def combine(yp: NDArray[Any], plan: RoutingPlan[NDArray[Any]], weights: Optional[ArrayLike] = None) -> NDArray[Any]: ...
def combine(yp: Any, plan: RoutingPlan[Any], weights: Any = None) -> Any:
    return _front(yp).combine(yp, plan, weights)


def permute_backward(grad_xp: ArrayT, plan: RoutingPlan[ArrayT]) -> ArrayT:
    grad_x: ArrayT = _front(grad_xp).permute_backward(grad_xp, plan)
    return grad_x


@overload
def combine_backward(grad_y: torch.Tensor, yp: torch.Tensor, plan: RoutingPlan[torch.Tensor],
                     weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]: ...
@overload
def combine_backward(grad_y: NDArray[Any], yp: NDArray[Any], plan: RoutingPlan[NDArray[Any]],
                     weights: Optional[ArrayLike] = None) -> Tuple[NDArray[Any], NDArray[Any]]: ...
def combine_backward(grad_y: Any, yp: Any, plan: RoutingPlan[Any], weights: Any = None) -> Any:
    return _front(yp).combine_backward(grad_y, yp, plan, weights)


@overload
def route_backward(grad_weights: torch.Tensor, plan: RoutingPlan[torch.Tensor],
                   logits: torch.Tensor) -> torch.Tensor: ...
@overload
def route_backward(grad_weights: ArrayLike, plan: RoutingPlan[NDArray[Any]], logits: NDArray[Any]) -> NDArray[Any]: ...
def route_backward(grad_weights: Any, plan: RoutingPlan[Any], logits: Any) -> Any:
    return _front(logits).route_backward(grad_weights, plan, logits)


@overload
def load_balancing_loss(plan: RoutingPlan[torch.Tensor]) -> torch.Tensor: ...
@overload
def load_balancing_loss(plan: RoutingPlan[NDArray[Any]]) -> float: ...
def load_balancing_loss(plan: RoutingPlan[Any]) -> Any:
    return _front(expect_plan(plan).probs).load_balancing_loss(plan)


@overload
def z_loss(logits: torch.Tensor) -> torch.Tensor: ...
@overload
def z_loss(logits: NDArray[Any]) -> float: ...
def z_loss(logits: Any) -> Any:
    return _front(logits).z_loss(logits)


@overload
def importance_loss(plan: RoutingPlan[torch.Tensor]) -> torch.Tensor: ...
@overload
def importance_loss(plan: RoutingPlan[NDArray[Any]]) -> float: ...
def importance_loss(plan: RoutingPlan[Any]) -> Any:
    return _front(expect_plan(plan).weights).importance_loss(plan)


@overload
def noisy_load_probs(clean_logits: torch.Tensor, noise_std: Union[float, torch.Tensor], noisy_logits: torch.Tensor,
                     k: int) -> torch.Tensor: ...
@overload
def noisy_load_probs(clean_logits: NDArray[Any], noise_std: ArrayLike, noisy_logits: ArrayLike,
                     k: int) -> NDArray[Any]: ...
def noisy_load_probs(clean_logits: Any, noise_std: Any, noisy_logits: Any, k: int) -> Any:
    return _front(clean_logits).noisy_load_probs(clean_logits, noise_std, noisy_logits, k)


@overload
def noisy_load_loss(clean_logits: torch.Tensor, noise_std: Union[float, torch.Tensor], noisy_logits: torch.Tensor,
                    k: int) -> torch.Tensor: ...
@overload
def noisy_load_loss(clean_logits: NDArray[Any], noise_std: ArrayLike, noisy_logits: ArrayLike, k: int) -> float: ...
def noisy_load_loss(clean_logits: Any, noise_std: Any, noisy_logits: Any, k: int) -> Any:
    return _front(clean_logits).noisy_load_loss(clean_logits, noise_std, noisy_logits, k)


def plan_as_tensors(plan: RoutingPlan[Any], device: str) -> RoutingPlan[torch.Tensor]:
    """A NumPy plan's arrays as tensors on `device` (RoutingPlan.load of a saved torch plan)."""
    tensors: RoutingPlan[torch.Tensor] = _torch().plan_as_tensors(plan, device)
    return tensors


# Each dispatcher documents what its NumPy twin does (the torch twin does the same on tensors).
for _name in ("expert_choice", "plan_from_topk", "permute", "combine", "permute_backward", "combine_backward", "route_backward",
              "load_balancing_loss", "z_loss", "importance_loss", "noisy_load_probs", "noisy_load_loss"):
    globals()[_name].__doc__ = getattr(_numpy, _name).__doc__
del _name
