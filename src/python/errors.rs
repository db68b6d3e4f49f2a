//! Maps each core error variant to its Python class in `moeroute.errors`.

use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::error::Error;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let class = match err {
            Error::Shape { .. } => "ShapeError",
            Error::DType { .. } => "DTypeError",
            Error::Argument { .. } => "ArgumentError",
            Error::Logits { .. } => "LogitsError",
            Error::Plan { .. } => "PlanError",
            Error::IndexOverflow { .. } => "IndexOverflowError",
            Error::Cuda { .. } => "CudaError",
        };
        let message = err.to_string();
        Python::attach(|py| {
            match py.import("moeroute.errors").and_then(|m| m.getattr(class)).and_then(|c| Ok(c.cast_into::<PyType>()?)) {
                Ok(cls) => PyErr::from_type(cls, message),
                Err(import_error) => import_error,
            }
        })
    }
}

/// Runs a kernel of about `work` elements without the GIL, in moeroute's thread pool (on the
/// calling thread when small); a panic (a bug) becomes a MoerouteError instead of crashing the
/// interpreter.
pub fn run_kernel<R: Send>(py: Python<'_>, work: usize, kernel: impl FnOnce() -> crate::Result<R> + Send) -> PyResult<R> {
    let outcome = py.detach(|| {
        crate::threads::install(work, || std::panic::catch_unwind(std::panic::AssertUnwindSafe(kernel)))
    })?;
    kernel_result(py, outcome)
}

/// `run_kernel` for kernels written with `threads::for_each_task`: their tasks run on the
/// process's OpenMP team when it has one (PyTorch's), see `threads::install_tasks`.
pub fn run_task_kernel<R: Send>(py: Python<'_>, work: usize, kernel: impl FnOnce() -> crate::Result<R> + Send) -> PyResult<R> {
    let outcome = py.detach(|| {
        crate::threads::install_tasks(work, || std::panic::catch_unwind(std::panic::AssertUnwindSafe(kernel)))
    })?;
    kernel_result(py, outcome)
}

fn kernel_result<R>(py: Python<'_>, outcome: std::thread::Result<crate::Result<R>>) -> PyResult<R> {
    match outcome {
        Ok(result) => Ok(result?),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let cls = py.import("moeroute.errors")?.getattr("MoerouteError")?.cast_into::<PyType>()?;
            Err(PyErr::from_type(cls, format!("internal error in moeroute (please report it): {what}")))
        }
    }
}
