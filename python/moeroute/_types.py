"""Type-checking aids (no run-time role): ArrayT, the array type of a plan and of the data used with
it — np.ndarray (NumPy plans) or torch.Tensor (tensor plans) — without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray

    # RoutingPlan[np.ndarray] holds NumPy arrays (routed from NumPy logits), RoutingPlan[torch.Tensor]
    # tensors; a function typed (x: ArrayT, plan: RoutingPlan[ArrayT]) -> ArrayT returns the kind of
    # data it is given.
    ArrayT = TypeVar("ArrayT", NDArray[Any], torch.Tensor)
else:  # (at run time a plain TypeVar: RoutingPlan[...] only needs one to be generic)
    ArrayT = TypeVar("ArrayT")

__all__ = ["ArrayT"]
