//! pyo3 bindings: the private `moeroute._core` module. Converts NumPy arrays to slices, releases
//! the GIL around every kernel, and maps core errors to moeroute's Python exceptions.

mod arrays;
mod buffer_pool;
mod cuda;
mod errors;
mod losses;
mod ops;
mod panics;
mod regroup;
mod routing;

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;

use crate::error::Error;
use crate::threads;

/// An integer argument (a Python int, or any object with `__index__`) in lo..=hi. Out of range
/// (negative or beyond 64 bits included) it is an ArgumentError naming `arg` and `expected`; not
/// an integer, a DTypeError.
fn int_arg(value: &Bound<'_, PyAny>, arg: &'static str, lo: i64, hi: i64, expected: impl Fn() -> String) -> PyResult<i64> {
    let out_of_range = |got: String| Error::Argument { arg, got, expected: expected() };
    match value.extract::<i64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        Ok(n) => Err(out_of_range(n.to_string()).into()),
        Err(err) if err.is_instance_of::<PyOverflowError>(value.py()) => Err(out_of_range(value.str()?.to_string()).into()),
        Err(_) => Err(Error::DType { arg, got: value.get_type().name()?.to_string(), expected: "an int".into() }.into()),
    }
}

/// Sets the number of threads moeroute's kernels run on: 1 to 512, or to the CPU count where that
/// is larger (ArgumentError otherwise).
#[pyfunction]
fn set_num_threads(num_threads: &Bound<'_, PyAny>) -> PyResult<()> {
    let max = i64::try_from(threads::max_threads()).unwrap_or(i64::MAX);
    let n = int_arg(num_threads, "num_threads", 1, max, threads::num_threads_range)?;
    Ok(threads::set_num_threads(n as usize)?)
}

/// Sets the most bytes of freed output buffers moeroute keeps for reuse (0 disables the cache).
#[pyfunction]
fn set_buffer_cache_limit(limit_bytes: &Bound<'_, PyAny>) -> PyResult<()> {
    let n = int_arg(limit_bytes, "limit_bytes", 0, i64::MAX, || {
        format!("an integer from 0 to {} (bytes; 0 disables the cache)", i64::MAX)
    })?;
    buffer_pool::set_buffer_cache_limit(usize::try_from(n).unwrap_or(usize::MAX));
    Ok(())
}

/// The number of threads moeroute's kernels run on.
#[pyfunction]
fn get_num_threads() -> PyResult<usize> {
    Ok(threads::num_threads()?)
}

/// Whether large kernels run their tasks on the process's OpenMP team (loaded by PyTorch) instead
/// of moeroute's own threads; MOEROUTE_NO_OPENMP=1 turns it off.
#[pyfunction]
fn uses_openmp_team() -> bool {
    crate::openmp::available()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    threads::claim_process();
    panics::install_quiet_hook();
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(uses_openmp_team, m)?)?;
    m.add_function(wrap_pyfunction!(set_buffer_cache_limit, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_pool::buffer_cache_info, m)?)?;
    m.add_class::<buffer_pool::PooledBuffer>()?;
    routing::register(m)?;
    ops::register(m)?;
    regroup::register(m)?;
    losses::register(m)?;
    cuda::register(m)?;
    Ok(())
}
