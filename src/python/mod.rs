//! pyo3 bindings: the private `moeroute._core` module. Converts NumPy arrays to slices, releases
//! the GIL around every kernel, and maps core errors to moeroute's Python exceptions.

mod arrays;
mod buffer_pool;
mod cuda;
mod errors;
mod losses;
mod ops;
mod routing;

use pyo3::prelude::*;

use crate::threads;

/// Sets the number of threads moeroute's kernels run on.
#[pyfunction]
fn set_num_threads(num_threads: usize) -> PyResult<()> {
    Ok(threads::set_num_threads(num_threads)?)
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
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(uses_openmp_team, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_pool::set_buffer_cache_limit, m)?)?;
    m.add_function(wrap_pyfunction!(buffer_pool::buffer_cache_info, m)?)?;
    m.add_class::<buffer_pool::PooledBuffer>()?;
    routing::register(m)?;
    ops::register(m)?;
    losses::register(m)?;
    cuda::register(m)?;
    Ok(())
}
