//! The rayon thread pool every kernel runs in: sized by `set_num_threads`, RAYON_NUM_THREADS or the
//! CPU count. Kernels split work into fixed-size chunks, so results never depend on the thread count.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// The process moeroute was loaded in (0 until `claim_process`). A child forked from it has none
/// of its threads (rayon's workers are gone, an OpenMP team is left in an undefined state), so
/// there kernels run on the calling thread instead of waiting forever for workers.
static OWNER_PROCESS: AtomicU32 = AtomicU32::new(0);

/// Records the current process as the one whose threads kernels may use (called when the Python
/// module loads).
pub fn claim_process() {
    OWNER_PROCESS.store(std::process::id(), Ordering::Relaxed);
}

/// Whether kernels may use worker threads here: not in a child forked after `claim_process`.
fn threads_usable() -> bool {
    let owner = OWNER_PROCESS.load(Ordering::Relaxed);
    owner == 0 || owner == std::process::id()
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

/// Runs `f` inside moeroute's thread pool or, for `work` <= INLINE_WORK elements (and in a forked
/// child), on the calling thread alone. Kernels split work in fixed chunks either way, so the
/// results are the same.
pub fn install<R: Send>(work: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    if work <= INLINE_WORK || !threads_usable() {
        INLINE.with(|i| i.set(true));
        let _guard = InlineGuard;
        return Ok(f());
    }
    Ok(pool()?.install(f))
}

thread_local! {
    /// In a task kernel run with an OpenMP team (see `install_tasks`): the team's size, else 0.
    static TEAM: Cell<usize> = const { Cell::new(0) };
}

/// Resets TEAM when the team run ends, panics included.
struct TeamGuard;
impl Drop for TeamGuard {
    fn drop(&mut self) {
        TEAM.with(|t| t.set(0));
    }
}

/// `install` for kernels whose parallel work goes through `for_each_task` / `for_each_chunk_mut`:
/// when the process has an OpenMP runtime (PyTorch's), `f` runs on the calling thread and its
/// tasks on the OpenMP team, with moeroute's thread count. The results are the same either way.
pub fn install_tasks<R: Send>(work: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    if work > INLINE_WORK && threads_usable() && crate::openmp::available() {
        let threads = num_threads()?;
        TEAM.with(|t| t.set(threads));
        let _guard = TeamGuard;
        return Ok(f());
    }
    install(work, f)
}

/// Runs task(i) exactly once for every i in 0..num_tasks: on the OpenMP team inside
/// `install_tasks`, in moeroute's pool inside `install`, in order on this thread in an inline run.
pub fn for_each_task(num_tasks: usize, task: impl Fn(usize) + Sync + Send) {
    let team = TEAM.with(|t| t.get());
    if team > 0 && crate::openmp::run(num_tasks, team, &task) {
        return;
    }
    if team > 0 || INLINE.with(|i| i.get()) {
        (0..num_tasks).for_each(task);
        return;
    }
    use rayon::prelude::*;
    (0..num_tasks).into_par_iter().for_each(task);
}

/// task(i) for every i in 0..num_tasks, run as `for_each_task` runs tasks; the results in task
/// order.
pub fn map_tasks<R: Send>(num_tasks: usize, task: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    let mut results: Vec<Option<R>> = (0..num_tasks).map(|_| None).collect();
    let slots = DisjointChunks::new(&mut results, 1);
    for_each_task(num_tasks, |i| {
        // SAFETY: for_each_task runs each index exactly once, so slot i is taken once.
        let slot = unsafe { slots.take(i) };
        slot[0] = Some(task(i));
    });
    results.into_iter().map(|r| r.expect("for_each_task ran every task")).collect()
}

/// `out` cut into chunks of `chunk` elements (the last one shorter); task(i, chunk i) runs once
/// for every chunk, as `for_each_task` runs tasks.
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], chunk: usize, task: impl Fn(usize, &mut [T]) + Sync + Send) {
    let chunks = DisjointChunks::new(out, chunk);
    for_each_task(chunks.count(), |i| {
        // SAFETY: for_each_task runs each index exactly once, so chunk i is taken once.
        task(i, unsafe { chunks.take(i) })
    });
}

/// A mutably borrowed slice cut into chunks of `chunk` elements (the last one shorter) that
/// parallel tasks take one each, for kernels that write several outputs per task.
pub struct DisjointChunks<'a, T> {
    base: *mut T,
    len: usize,
    chunk: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only take disjoint chunks (see `take`) of Send elements.
unsafe impl<T: Send> Send for DisjointChunks<'_, T> {}
// SAFETY: as for Send: sharing it lets each task take its own chunk, never the same one.
unsafe impl<T: Send> Sync for DisjointChunks<'_, T> {}

impl<'a, T> DisjointChunks<'a, T> {
    pub fn new(out: &'a mut [T], chunk: usize) -> Self {
        assert!(chunk > 0, "DisjointChunks: zero chunk length");
        Self { base: out.as_mut_ptr(), len: out.len(), chunk, _borrow: std::marker::PhantomData }
    }

    /// The number of chunks.
    pub fn count(&self) -> usize {
        self.len.div_ceil(self.chunk)
    }

    /// Chunk i.
    ///
    /// # Safety
    /// Each chunk may be taken at most once while this value lives (e.g. by task i of
    /// `for_each_task`), so that no two live slices overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn take(&self, i: usize) -> &'a mut [T] {
        let start = i * self.chunk;
        assert!(start < self.len, "DisjointChunks: chunk {i} out of range");
        // SAFETY: [start, start + n) lies inside the slice borrowed for 'a; the caller takes each
        // chunk at most once, and chunks are disjoint.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(start), self.chunk.min(self.len - start)) }
    }
}

/// The minimum length of each piece a kernel's parallel iterator is split into: 1 in the pool,
/// unbounded (no split: the calling thread does every chunk in order) in an inline run.
pub fn min_len() -> usize {
    // (Also unbounded in a team run: there rayon iterators the kernel has not moved to
    // for_each_task run in order on the calling thread rather than in rayon's global pool.)
    if INLINE.with(|i| i.get()) || TEAM.with(|t| t.get()) > 0 {
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
