//! Kernel arguments and launches on a caller's stream.

use std::ffi::c_void;

use cudarc::driver::{result, sys};

use super::context::{cuda_error, Device};
use crate::error::Result;

/// A kernel's parameters, each stored in its own 8-byte slot (the driver copies
/// size-of-parameter bytes from each slot's address).
#[derive(Default)]
pub struct Args {
    slots: Vec<u64>,
}

impl Args {
    pub fn new() -> Self {
        Self::default()
    }
    /// A device pointer (0 for a null pointer).
    pub fn ptr(mut self, p: u64) -> Self {
        self.slots.push(p);
        self
    }
    /// A device pointer, or a null pointer for None (a kernel's optional input or output).
    pub fn opt_ptr(self, p: Option<u64>) -> Self {
        self.ptr(p.unwrap_or(0))
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.slots.push(v as u32 as u64);
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.slots.push(v as u64);
        self
    }
    pub fn f32(mut self, v: f32) -> Self {
        self.slots.push(v.to_bits() as u64);
        self
    }
    pub fn f64(mut self, v: f64) -> Self {
        self.slots.push(v.to_bits());
        self
    }
}

/// Where and how a kernel runs.
pub struct Launch<'a> {
    pub device: &'a Device,
    pub stream: u64,
}

impl Launch<'_> {
    /// Launches `name` with a 1-D grid of `grid` blocks of `block` threads.
    pub fn run(&self, name: &'static str, grid: u64, block: u32, shared_bytes: u32, args: Args) -> Result<()> {
        if grid == 0 {
            return Ok(());
        }
        let grid = u32::try_from(grid).ok().filter(|&g| g <= i32::MAX as u32).ok_or_else(|| cuda_error(format!("{name}: grid of {grid} blocks is too large")))?;
        let function = self.device.function(name)?;
        let mut slots = args.slots;
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        // SAFETY: `function` is a kernel of a loaded module; `params` holds one pointer per
        // parameter of that kernel, in order, each to a slot at least as large as the parameter,
        // alive until the call returns (the driver copies them). Device pointers were given by
        // the caller for memory that stays allocated (torch's allocator) until the stream reaches
        // the kernel; the stream belongs to this device's primary context.
        unsafe {
            result::launch_kernel(function, (grid, 1, 1), (block, 1, 1), shared_bytes, self.stream as sys::CUstream, &mut params)
        }
        .map_err(|e| cuda_error(format!("launching {name}: {e:?}")))
    }
}
