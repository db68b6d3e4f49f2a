//! Maps each core error variant to its Python class in `moeroute.errors`.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::error::Error;
use crate::threads::Cancelled;

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
/// interpreter. While a large kernel runs, the calling thread runs the interpreter's pending
/// signal handlers every `threads::POLL_INTERVAL` (see `check_signals`): the exception one raises
/// (KeyboardInterrupt for Ctrl-C) stops the kernel and is raised instead of its result.
pub fn run_kernel<R: Send>(py: Python<'_>, work: usize, kernel: impl FnOnce() -> crate::Result<R> + Send) -> PyResult<R> {
    let (outcome, raised) = py.detach(|| {
        let raised = RefCell::new(None);
        let outcome = crate::threads::install(work, &|| check_signals(&raised), || catch_unwind(AssertUnwindSafe(kernel)));
        (outcome, raised.into_inner())
    });
    kernel_result(py, outcome, raised)
}

/// `run_kernel` for kernels written with `threads::for_each_task`: their tasks run on the
/// process's OpenMP team when it has one (PyTorch's), see `threads::install_tasks`.
pub fn run_task_kernel<R: Send>(py: Python<'_>, work: usize, kernel: impl FnOnce() -> crate::Result<R> + Send) -> PyResult<R> {
    let (outcome, raised) = py.detach(|| {
        let raised = RefCell::new(None);
        let outcome = crate::threads::install_tasks(work, &|| check_signals(&raised), || catch_unwind(AssertUnwindSafe(kernel)));
        (outcome, raised.into_inner())
    });
    kernel_result(py, outcome, raised)
}

/// Attaches to the interpreter for a moment and runs its pending signal handlers (only the main
/// thread runs them; elsewhere this does nothing). Whether one raised: its exception is kept in
/// `raised`, and the kernel stops.
fn check_signals(raised: &RefCell<Option<PyErr>>) -> bool {
    match Python::attach(|py| py.check_signals()) {
        Ok(()) => false,
        Err(err) => {
            *raised.borrow_mut() = Some(err);
            true
        }
    }
}

/// The kernel's result as Python sees it. An exception a signal handler raised during the call wins:
/// the kernel stopped (its outputs are dropped here), or finished too late to notice.
fn kernel_result<R>(py: Python<'_>, outcome: crate::Result<std::thread::Result<crate::Result<R>>>, raised: Option<PyErr>) -> PyResult<R> {
    if let Some(err) = raised {
        return Err(err);
    }
    match outcome? {
        Ok(result) => Ok(result?),
        Err(panic) if panic.is::<Cancelled>() => Err(PyKeyboardInterrupt::new_err("moeroute kernel cancelled")),
        Err(panic) => {
            let what = super::panics::describe(panic.as_ref());
            let cls = py.import("moeroute.errors")?.getattr("MoerouteError")?.cast_into::<PyType>()?;
            Err(PyErr::from_type(cls, format!("internal error in moeroute (please report it): {what}")))
        }
    }
}
