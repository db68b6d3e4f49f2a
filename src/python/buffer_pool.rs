//! A bounded cache of large output buffers. NumPy outputs are built on pooled allocations; when
//! an array dies its buffer returns to the pool, so the next call of the same size reuses memory
//! whose pages are already mapped instead of page-faulting a fresh allocation (on these sizes the
//! faults cost as much as the op itself).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::Mutex;

use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::{Element, PyArrayDyn};
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;

/// Allocations are aligned for any SIMD load.
const ALIGN: usize = 64;
/// Default bound on the bytes the pool keeps cached.
const DEFAULT_LIMIT: usize = 1 << 30;

/// One heap allocation of `bytes` bytes, owned exclusively by whoever holds it.
struct Allocation {
    ptr: NonNull<u8>,
    bytes: usize,
}

// SAFETY: an Allocation is a uniquely owned heap block (like a Box<[u8]>); nothing else aliases it.
unsafe impl Send for Allocation {}
// SAFETY: shared references to an Allocation expose no interior mutability.
unsafe impl Sync for Allocation {}

impl Allocation {
    fn layout(bytes: usize) -> Layout {
        Layout::from_size_align(bytes, ALIGN).expect("ALIGN is a power of two and sizes fit isize")
    }

    /// A zero-filled block (calloc-like: fresh pages are mapped lazily, no extra pass).
    fn new(bytes: usize) -> PyResult<Self> {
        if bytes == 0 {
            return Ok(Self { ptr: NonNull::<[u8; ALIGN]>::dangling().cast(), bytes });
        }
        if bytes > isize::MAX as usize - ALIGN {
            return Err(PyMemoryError::new_err(format!("cannot allocate {bytes} bytes")));
        }
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = unsafe { alloc_zeroed(Self::layout(bytes)) };
        NonNull::new(ptr)
            .map(|ptr| Self { ptr, bytes })
            .ok_or_else(|| PyMemoryError::new_err(format!("cannot allocate {bytes} bytes")))
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            // SAFETY: ptr came from alloc_zeroed with this very layout and is freed only here.
            unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.bytes)) };
        }
    }
}

struct Pool {
    /// Cached blocks, most recently returned last.
    free: Vec<Allocation>,
    cached_bytes: usize,
    limit: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: Vec::new(), cached_bytes: 0, limit: DEFAULT_LIMIT });

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cached block of exactly `bytes` bytes, or a new one. Its contents are arbitrary old data
/// of a previous output: callers overwrite every element.
fn take(bytes: usize) -> PyResult<Allocation> {
    {
        let mut pool = pool();
        if let Some(i) = pool.free.iter().rposition(|a| a.bytes == bytes) {
            let block = pool.free.swap_remove(i);
            pool.cached_bytes -= block.bytes;
            return Ok(block);
        }
    }
    Allocation::new(bytes)
}

/// Keeps `block` for reuse if it fits the limit (evicting the oldest blocks), else frees it.
fn give_back(block: Allocation) {
    let mut pool = pool();
    if block.bytes == 0 || block.bytes > pool.limit {
        return;
    }
    while pool.cached_bytes + block.bytes > pool.limit {
        let oldest = pool.free.remove(0);
        pool.cached_bytes -= oldest.bytes;
    }
    pool.cached_bytes += block.bytes;
    pool.free.push(block);
}

/// The base object of a pooled NumPy array: returns its block to the pool when the array dies.
#[pyclass(frozen, module = "moeroute._core")]
pub struct PooledBuffer {
    block: Mutex<Option<Allocation>>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(block) = self.block.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            give_back(block);
        }
    }
}

/// A new C-contiguous array of `shape` on a pooled block. Its contents are arbitrary: the caller
/// must write every element before handing it to Python code.
pub fn output<'py, T: Element>(py: Python<'py>, shape: &[usize]) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let bytes = elements.and_then(|n| n.checked_mul(std::mem::size_of::<T>()));
    let Some(bytes) = bytes else {
        return Err(PyMemoryError::new_err(format!("an array of shape {shape:?} is too large")));
    };
    let block = take(bytes)?;
    let data = block.ptr.as_ptr() as *const T;
    let container = Bound::new(py, PooledBuffer { block: Mutex::new(Some(block)) })?;
    // SAFETY: `data` points to `bytes` = prod(shape) * size_of::<T>() bytes aligned to 64 (or is a
    // dangling aligned pointer for zero elements), initialized (zeroed or old output data, and
    // every bit pattern is a valid T for the float/int element types used here), and kept alive
    // by `container`, which NumPy holds as the array's base object.
    let array = unsafe {
        let view = ArrayViewD::from_shape_ptr(IxDyn(shape), data);
        PyArrayDyn::borrow_from_array(&view, container.into_any())
    };
    Ok(array)
}

/// Sets the most bytes of freed output buffers moeroute keeps for reuse (0 disables the cache);
/// the binding (python/mod.rs) checks the Python argument.
pub fn set_buffer_cache_limit(limit_bytes: usize) {
    let evicted: Vec<Allocation> = {
        let mut pool = pool();
        pool.limit = limit_bytes;
        let mut evicted = Vec::new();
        while pool.cached_bytes > limit_bytes {
            let oldest = pool.free.remove(0);
            pool.cached_bytes -= oldest.bytes;
            evicted.push(oldest);
        }
        evicted
    };
    drop(evicted);
}

/// (bytes cached now, limit in bytes) of the output buffer cache.
#[pyfunction]
pub fn buffer_cache_info() -> (usize, usize) {
    let pool = pool();
    (pool.cached_bytes, pool.limit)
}
