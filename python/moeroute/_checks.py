"""Checks shared by the NumPy and torch fronts (one of each): scalar arguments, the number of picks,
row counts and weight shapes against a plan, and the activation dtypes and their accumulation
dtype. Framework-neutral: arrays and tensors are read through their shape / dtype name only."""

from __future__ import annotations

import operator
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Set, Tuple

import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError

if TYPE_CHECKING:
    import torch
    from typing_extensions import TypeGuard

# The activation dtypes, by name; half types travel to the CPU core as 16-bit integer views.
ACTIVATION_DTYPES = ("float32", "float64", "float16", "bfloat16")
HALF_DTYPES = ("float16", "bfloat16")
ACTIVATION_EXPECTED = "float32, float64, float16 or bfloat16"


def accumulation_name(dtype_name: str) -> str:
    """The dtype kernels accumulate an activation dtype in (and plans hold weights in): float64 for
    float64, float32 for the rest."""
    return "float64" if dtype_name == "float64" else "float32"


def bad_activation_dtype(name: str, dtype: Any) -> DTypeError:
    return DTypeError(f"{name}: got dtype {dtype}, expected {ACTIVATION_EXPECTED}")


def expect_rows(name: str, shape: Sequence[int], rows: int, what: str) -> None:
    """A (rows, H) activation: its first dimension must be `rows` (what: where that number comes from)."""
    if shape[0] != rows:
        raise ShapeError(f"{name}: got shape {list(shape)}, expected [{rows}, H] ({what})")


def expect_weights_shape(shape: Sequence[int], plan_shape: Sequence[int]) -> None:
    """Given combine weights must be (T, S), the shape of the plan's expert_ids."""
    if tuple(shape) != tuple(plan_shape):
        raise ShapeError(f"weights: got shape {list(shape)}, expected {list(plan_shape)} (T, S)")


def expect_picks_shape(weights_shape: Sequence[int], ids_shape: Sequence[int]) -> None:
    """plan_from_topk's weights must have the shape of its expert_ids, (T, k)."""
    if tuple(weights_shape) != tuple(ids_shape):
        raise ShapeError(f"weights: got shape {list(weights_shape)}, expected {list(ids_shape)} (T, k: the shape of "
                         f"expert_ids)")


def expect_logits_shape(shape: Sequence[int], plan_shape: Sequence[int]) -> None:
    """route_backward's logits must be the plan's (T, E)."""
    if tuple(shape) != tuple(plan_shape):
        raise ShapeError(f"logits: got shape {list(shape)}, expected {list(plan_shape)} (the plan's T, E)")


def shape_error(name: str, shape: Sequence[int], ndim: int, kind: str) -> ShapeError:
    if name == "logits" and ndim == 2:  # the common mistake: tokens with leading dimensions
        hint = f"; for tokens with leading dimensions use logits.reshape(-1, {shape[-1]})" if len(shape) > 2 else ""
        return ShapeError(f"logits: got shape {list(shape)}, expected a 2-D {kind} (T, E){hint}")
    dims = ", ".join("_" for _ in range(ndim))
    return ShapeError(f"{name}: got shape {list(shape)}, expected a {ndim}-D {kind} [{dims}]")


_TENSOR_TYPES: Set[type] = set()


def is_torch(value: Any) -> TypeGuard[torch.Tensor]:
    """Whether value is a torch.Tensor, told without importing torch (its type's module and a
    tensor method); the tensor types seen are remembered, so later calls are one set lookup."""
    kind = type(value)
    if kind in _TENSOR_TYPES:
        return True
    if kind.__module__.startswith("torch") and hasattr(value, "data_ptr"):
        _TENSOR_TYPES.add(kind)
        return True
    return False


# ------------------------------------------------------------------------------- scalar checks

# The largest integer option the core takes (a 64-bit size).
INT_LIMIT = 2**63 - 1


def integer(value: Any, name: str, minimum: Optional[int] = None) -> int:
    """An int (Python or NumPy integer, not bool), optionally at least `minimum`, and at most
    INT_LIMIT."""
    if isinstance(value, (bool, np.bool_)):
        raise DTypeError(f"{name}: got {value!r}, expected an integer")
    try:
        result = operator.index(value)
    except TypeError:
        raise DTypeError(f"{name}: got {value!r} of type {type(value).__name__}, expected an integer") from None
    if minimum is not None and result < minimum:
        raise ArgumentError(f"{name}: got {result}, expected an integer >= {minimum}")
    if result > INT_LIMIT:
        low = "" if minimum is None else f" >= {minimum} and"
        raise ArgumentError(f"{name}: got {result}, expected an integer{low} <= {INT_LIMIT}")
    return result


def optional_integer(value: Any, name: str, minimum: Optional[int] = None) -> Optional[int]:
    return None if value is None else integer(value, name, minimum)


def real(value: Any, name: str) -> float:
    """A real number (int or float, not bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DTypeError(f"{name}: got {value!r} of type {type(value).__name__}, expected a number")
    return float(value)


def choice(value: Any, name: str, options: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        expected = ", ".join(repr(o) for o in options)
        raise ArgumentError(f"{name}: got {value!r}, expected one of {expected}")
    return value


def check_top_k(k: int, num_experts: int, name: str = "k") -> None:
    """k picks per token must be in [1, E] (E = 0 allows none)."""
    if not 1 <= k <= max(num_experts, 1):
        raise ArgumentError(f"{name}: got {k}, expected an integer in [1, {num_experts}] (the number of experts)")


# Checked mode of the CUDA ops (the CPU ops always check): see moeroute.set_checks.
_CUDA_CHECKS = [os.environ.get("MOEROUTE_CHECKS", "0").strip() not in ("", "0")]


def set_checks(enabled: bool) -> None:
    """Turns the checked mode of the CUDA ops on or off (default: off, or MOEROUTE_CHECKS=1). On,
    each CUDA op checks its inputs on the device as the CPU ops always do (NaN logits, rows of all
    -inf, a non-finite bias, plan indices out of range or not one to one) and raises the same
    error, at the cost of one host synchronisation per op (so it cannot be captured in a CUDA
    graph). The CPU ops are not affected; without a CUDA device it changes nothing."""
    if not isinstance(enabled, (bool, np.bool_)):
        raise DTypeError(f"enabled: got {enabled!r}, expected True or False")
    _CUDA_CHECKS[0] = bool(enabled)


def get_checks() -> bool:
    """Whether the CUDA ops run in checked mode (see set_checks)."""
    return _CUDA_CHECKS[0]
