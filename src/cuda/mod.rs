//! The CUDA backend: the driver (loaded at run time through cudarc), the embedded PTX kernels and
//! the host side of every op, launched on the caller's stream with caller-allocated memory.

pub mod context;
pub mod launch;
pub mod ops;

pub use context::{device, driver_available, Device};
