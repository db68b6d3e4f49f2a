//! moeroute: Mixture-of-Experts routing — gating, capacity, expert choice, permute and combine, with
//! backward passes — as CPU kernels on plain slices, CUDA kernels launched through cudarc, plus pyo3 bindings (feature `python`).

pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod openmp;
pub mod routing;
pub mod threads;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
