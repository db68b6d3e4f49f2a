"""Array conversion for the NumPy front: dtype and rank checks, contiguity, half-type storage."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from .._checks import ACTIVATION_DTYPES, HALF_DTYPES, bad_activation_dtype, shape_error
from ..errors import DTypeError


def activation(value: Any, name: str, ndim: int) -> Tuple[NDArray[Any], str, np.dtype[Any]]:
    """Returns (C-contiguous storage array, dtype name, original dtype) for a float array.

    float16 / bfloat16 are passed to the core as uint16 views of the same memory.
    """
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    dtype_name = array.dtype.name
    if dtype_name not in ACTIVATION_DTYPES:
        raise bad_activation_dtype(name, array.dtype)
    expect_ndim(array, name, ndim)
    dtype = array.dtype
    array = np.ascontiguousarray(array)
    if dtype_name in HALF_DTYPES:
        array = array.view(np.uint16)
    return array, dtype_name, dtype


def restore(storage: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """Views a core output as the activation dtype it stands for."""
    return storage.view(dtype) if storage.dtype != dtype else storage


def expect_ndim(array: NDArray[Any], name: str, ndim: int) -> None:
    if array.ndim != ndim:
        raise shape_error(name, array.shape, ndim, "array")


def float_array(value: Any, name: str, dtype: DTypeLike, ndim: int) -> NDArray[Any]:
    """A C-contiguous float array of `dtype` (any float input is accepted and cast)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise DTypeError(f"{name}: got dtype {array.dtype}, expected a float array")
    expect_ndim(array, name, ndim)
    return np.ascontiguousarray(array, dtype=dtype)
