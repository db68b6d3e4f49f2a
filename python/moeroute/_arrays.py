"""Argument conversion for the NumPy front: dtype and rank checks, contiguity, half-type storage."""

from __future__ import annotations

import operator
from typing import Any, Optional, Tuple

import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError

ACTIVATION_DTYPES = ("float32", "float64", "float16", "bfloat16")
_HALF = ("float16", "bfloat16")


def activation(value: Any, name: str, ndim: int) -> Tuple[np.ndarray, str, np.dtype]:
    """Returns (C-contiguous storage array, dtype name, original dtype) for a float array.

    float16 / bfloat16 are passed to the core as uint16 views of the same memory.
    """
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    dtype_name = array.dtype.name
    if dtype_name not in ACTIVATION_DTYPES:
        raise DTypeError(
            f"{name}: got dtype {array.dtype}, expected float32, float64, float16 or bfloat16"
        )
    expect_ndim(array, name, ndim)
    dtype = array.dtype
    array = np.ascontiguousarray(array)
    if dtype_name in _HALF:
        array = array.view(np.uint16)
    return array, dtype_name, dtype


_TENSOR_TYPES: set = set()


def is_torch(value: Any) -> bool:
    """Whether value is a torch.Tensor (without importing torch when it is not loaded); the tensor
    types seen are remembered (a set lookup instead of string and attribute tests per call)."""
    kind = type(value)
    if kind in _TENSOR_TYPES:
        return True
    if kind.__module__.startswith("torch") and hasattr(value, "data_ptr"):
        _TENSOR_TYPES.add(kind)
        return True
    return False


def restore(storage: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Views a core output as the activation dtype it stands for."""
    return storage.view(dtype) if storage.dtype != dtype else storage


def accumulation_dtype(dtype_name: str) -> np.dtype:
    """float64 for float64 activations, float32 for the rest."""
    return np.dtype(np.float64 if dtype_name == "float64" else np.float32)


def expect_ndim(array: np.ndarray, name: str, ndim: int) -> None:
    if array.ndim != ndim:
        dims = ", ".join("_" for _ in range(ndim))
        raise ShapeError(f"{name}: got shape {list(array.shape)}, expected a {ndim}-D array [{dims}]")


def float_array(value: Any, name: str, dtype: np.dtype, ndim: int) -> np.ndarray:
    """A C-contiguous float array of `dtype` (any float input is accepted and cast)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise DTypeError(f"{name}: got dtype {array.dtype}, expected a float array")
    expect_ndim(array, name, ndim)
    return np.ascontiguousarray(array, dtype=dtype)


def integer(value: Any, name: str, minimum: Optional[int] = None) -> int:
    """An int (Python or NumPy integer, not bool), optionally at least `minimum`."""
    if isinstance(value, (bool, np.bool_)):
        raise DTypeError(f"{name}: got {value!r}, expected an integer")
    try:
        result = operator.index(value)
    except TypeError:
        raise DTypeError(f"{name}: got {value!r} of type {type(value).__name__}, expected an integer") from None
    if minimum is not None and result < minimum:
        raise ArgumentError(f"{name}: got {result}, expected an integer >= {minimum}")
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
