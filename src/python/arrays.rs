//! NumPy array access: typed read-only slices of inputs, zero-filled outputs, and the storage
//! of half types (float16 / bfloat16 arrive as uint16 views and leave the same way).

use half::{bf16, f16, slice::HalfBitsSliceExt};
use numpy::ndarray::IxDyn;
use numpy::{Element, IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::cpu::indices::{snapshot, SharedIndex};
use crate::dtype::{Activation, DType};
use crate::error::Error;

/// An activation type and the NumPy element type it is stored as.
pub trait Stored: Activation {
    type Storage: Element + Copy + Send + Sync;
    fn view(s: &[Self::Storage]) -> &[Self];
    fn view_mut(s: &mut [Self::Storage]) -> &mut [Self];
}

macro_rules! stored_as_itself {
    ($t:ty) => {
        impl Stored for $t {
            type Storage = $t;
            fn view(s: &[$t]) -> &[$t] {
                s
            }
            fn view_mut(s: &mut [$t]) -> &mut [$t] {
                s
            }
        }
    };
}
stored_as_itself!(f32);
stored_as_itself!(f64);

macro_rules! stored_as_bits {
    ($t:ty) => {
        impl Stored for $t {
            type Storage = u16;
            fn view(s: &[u16]) -> &[$t] {
                s.reinterpret_cast()
            }
            fn view_mut(s: &mut [u16]) -> &mut [$t] {
                s.reinterpret_cast_mut()
            }
        }
    };
}
stored_as_bits!(f16);
stored_as_bits!(bf16);

/// Calls `$body` with `$A` bound to the activation type named by `$dtype` (a `DType`).
macro_rules! with_activation {
    ($dtype:expr, $A:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                type $A = f32;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $A = f64;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $A = half::f16;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $A = half::bf16;
                $body
            }
        }
    };
}
pub(crate) use with_activation;

/// Calls `$body` with `$F` bound to the accumulation type of `$dtype` (a `DType`): f64 for
/// float64, f32 for the others.
macro_rules! with_accum {
    ($dtype:expr, $F:ident => $body:expr) => {
        if $dtype == $crate::dtype::DType::F64 {
            type $F = f64;
            $body
        } else {
            type $F = f32;
            $body
        }
    };
}
pub(crate) use with_accum;

/// The name of an argument's dtype ("float32", ...), or its type when it has no dtype.
pub fn dtype_of(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype").map(|d| d.to_string()).unwrap_or_else(|_| obj.get_type().to_string())
}

/// The accumulation dtype (float32 or float64) of an array argument; a DType error naming `arg`
/// for any other.
pub fn accum_dtype(obj: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<DType> {
    Ok(DType::parse_accum(&dtype_of(obj), arg)?)
}

/// A read-only, C-contiguous input array of element type `T`.
pub fn input<'py, T: Element>(obj: &Bound<'py, PyAny>, arg: &'static str) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let array = obj.extract::<PyReadonlyArrayDyn<'py, T>>().map_err(|_| {
        PyErr::from(Error::DType {
            arg,
            got: format!("dtype {}", dtype_of(obj)),
            expected: format!("a NumPy array of dtype {}", std::any::type_name::<T>()),
        })
    })?;
    if !array.is_c_contiguous() {
        return Err(Error::Shape { arg, got: array.shape().to_vec(), expected: "a C-contiguous array".into() }.into());
    }
    Ok(array)
}

/// The slice of a C-contiguous array (checked by `input`).
pub fn slice<'a, T: Element>(array: &'a PyReadonlyArrayDyn<'_, T>, arg: &'static str) -> PyResult<&'a [T]> {
    array.as_slice().map_err(|_| {
        Error::Shape { arg, got: array.shape().to_vec(), expected: "a C-contiguous array".into() }.into()
    })
}

/// A private copy of a plan's index array, read once: another Python thread may write the array
/// while the kernel runs without the GIL, so kernels check and index memory with this copy, never
/// with the array itself (see `cpu::indices::snapshot`).
pub fn index_snapshot<T: Element + SharedIndex>(array: &PyReadonlyArrayDyn<'_, T>, arg: &'static str) -> PyResult<Vec<T>> {
    if !array.is_c_contiguous() {
        return Err(Error::Shape { arg, got: array.shape().to_vec(), expected: "a C-contiguous array".into() }.into());
    }
    // SAFETY: a C-contiguous array's data pointer is valid for reads of its `len` elements while
    // `array` (which keeps the array alive) is borrowed.
    Ok(unsafe { snapshot(array.data().cast_const(), array.len()) })
}

/// Checks an array's shape against the expected one; `None` entries match any size.
pub fn expect_shape(arg: &'static str, got: &[usize], expected: &[Option<usize>]) -> PyResult<()> {
    let ok = got.len() == expected.len() && got.iter().zip(expected).all(|(g, e)| e.is_none_or(|e| *g == e));
    if ok {
        return Ok(());
    }
    let dims: Vec<String> = expected.iter().map(|e| e.map_or("_".to_string(), |v| v.to_string())).collect();
    Err(Error::Shape { arg, got: got.to_vec(), expected: format!("[{}]", dims.join(", ")) }.into())
}

/// A new output array from the buffer pool; the kernel writing it must set every element.
pub fn output<'py, T: Element>(py: Python<'py>, shape: &[usize]) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    super::buffer_pool::output(py, shape)
}

/// The mutable slice of an output array this module just created (C-contiguous, unshared).
pub fn output_slice<'a, T: Element>(guard: &'a mut PyReadwriteArrayDyn<'_, T>) -> PyResult<&'a mut [T]> {
    let shape = guard.shape().to_vec();
    guard.as_slice_mut().map_err(|_| {
        Error::Shape { arg: "output", got: shape, expected: "a C-contiguous array".into() }.into()
    })
}

/// An owned vector as a NumPy array of `shape` (no copy; one array object, not a reshaped view).
pub fn from_vec<'py, T: Element>(py: Python<'py>, v: Vec<T>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    let array = numpy::ndarray::Array::from_shape_vec(IxDyn(shape), v).map_err(|e| {
        Error::Shape { arg: "output", got: shape.to_vec(), expected: format!("a shape holding the values ({e})") }
    })?;
    Ok(array.into_pyarray(py).into_any())
}
