//! The rayon thread pool every kernel runs in: sized by `set_num_threads`, RAYON_NUM_THREADS or the
//! CPU count. Kernels split work into fixed-size chunks, so results never depend on the thread count.

use std::cell::Cell;
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

fn default_num_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn build_pool(num_threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(num_threads)
        .thread_name(|i| format!("moeroute-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Argument {
            arg: "num_threads",
            got: num_threads.to_string(),
            expected: format!("a thread count the OS can start ({e})"),
        })
}

fn pool() -> Result<Arc<rayon::ThreadPool>> {
    if let Some(pool) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Ok(pool.clone());
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(build_pool(default_num_threads())?);
    }
    Ok(slot.as_ref().expect("pool was just set").clone())
}

/// Elements of work at or below which a kernel runs on the calling thread: waking the pool's
/// sleeping threads costs more than such a kernel (tens of microseconds).
pub const INLINE_WORK: usize = 1 << 15;

thread_local! {
    /// Whether this thread is running a small kernel by itself (see `min_len`).
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Resets INLINE when the inline run ends, panics included.
struct InlineGuard;
impl Drop for InlineGuard {
    fn drop(&mut self) {
        INLINE.with(|i| i.set(false));
    }
}

/// Runs `f` inside moeroute's thread pool or, for `work` <= INLINE_WORK elements, on the calling
/// thread alone. Kernels split work in fixed chunks either way, so the results are the same.
pub fn install<R: Send>(work: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    if work <= INLINE_WORK {
        INLINE.with(|i| i.set(true));
        let _guard = InlineGuard;
        return Ok(f());
    }
    Ok(pool()?.install(f))
}

/// The minimum length of each piece a kernel's parallel iterator is split into: 1 in the pool,
/// unbounded (no split: the calling thread does every chunk in order) in an inline run.
pub fn min_len() -> usize {
    if INLINE.with(|i| i.get()) {
        usize::MAX
    } else {
        1
    }
}

/// Replaces the pool with one of `num_threads` threads.
pub fn set_num_threads(num_threads: usize) -> Result<()> {
    if num_threads == 0 {
        return Err(Error::Argument {
            arg: "num_threads",
            got: "0".into(),
            expected: "an integer >= 1".into(),
        });
    }
    let pool = build_pool(num_threads)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    Ok(())
}

/// The number of threads kernels run on.
pub fn num_threads() -> Result<usize> {
    Ok(pool()?.current_num_threads())
}
