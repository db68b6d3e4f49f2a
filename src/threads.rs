//! The rayon thread pool every kernel runs in: sized by `set_num_threads`, RAYON_NUM_THREADS or the
//! CPU count. Kernels split work into fixed-size chunks, so results never depend on the thread count.
//! A long kernel's calling thread polls (e.g. for Ctrl-C) while it runs; once the poll says stop,
//! tasks not yet started are skipped and the kernel unwinds with `Cancelled`.

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// The most threads `set_num_threads` accepts on a machine with fewer CPUs (see `max_threads`):
/// more than the kernels can use on all but the largest servers (which may go up to their CPU
/// count), few enough that starting them takes well under a second (10^6 took minutes).
pub const MAX_THREADS: usize = 512;

fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The most threads kernels may run on: MAX_THREADS, or the CPU count where that is larger.
pub fn max_threads() -> usize {
    MAX_THREADS.max(cpu_count())
}

/// RAYON_NUM_THREADS (at most `max_threads()`), else the CPU count.
fn default_num_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map(|n| n.min(max_threads()))
        .unwrap_or_else(cpu_count)
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

/// Sets INLINE for an inline run, and restores it when the run ends, panics included.
struct InlineGuard(bool);
impl InlineGuard {
    fn enter() -> Self {
        InlineGuard(INLINE.replace(true))
    }
}
impl Drop for InlineGuard {
    fn drop(&mut self) {
        INLINE.set(self.0);
    }
}

/// How often the calling thread of a kernel of more than POLL_WORK elements calls its `poll`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Elements of work above which a kernel is polled (see `install`). Below it a kernel takes at
/// most tens of milliseconds (the slowest, expert choice, about 30 ns per element), and runs
/// exactly as it would unpolled: no timed wait, no clock reads.
pub const POLL_WORK: usize = 1 << 20;

/// The payload a kernel unwinds with when its poll said stop (see `install`). It is raised with
/// `resume_unwind`, so no panic hook sees it; the caller of `install` catches it.
#[derive(Debug)]
pub struct Cancelled;

/// A kernel call, as seen by the thread that runs the kernel.
struct Call<'a> {
    /// Set once the poll says stop: tasks not yet started are skipped.
    cancel: &'a AtomicBool,
    /// On the calling thread when it runs the kernel itself (team and inline runs): the poll,
    /// called between tasks once it is due.
    poll: Option<&'a dyn Fn() -> bool>,
    next_poll: Cell<Instant>,
}

impl Call<'_> {
    fn poll_if_due(&self) {
        let Some(poll) = self.poll else { return };
        if self.cancel.load(Ordering::Relaxed) || Instant::now() < self.next_poll.get() {
            return;
        }
        if poll() {
            self.cancel.store(true, Ordering::Relaxed);
        }
        self.next_poll.set(Instant::now() + POLL_INTERVAL);
    }
}

thread_local! {
    /// The call whose kernel this thread runs (None on other threads, and inside a task).
    static CALL: Cell<Option<NonNull<Call<'static>>>> = const { Cell::new(None) };
}

/// Makes `call` this thread's current call until dropped, then restores the previous one.
struct CallGuard(Option<NonNull<Call<'static>>>);
impl CallGuard {
    fn enter(call: Option<&Call<'_>>) -> Self {
        // The lifetime is erased for the thread-local; `current_call` gives it back only while
        // this guard, which borrows the call, lives.
        CallGuard(CALL.replace(call.map(|c| NonNull::from(c).cast::<Call<'static>>())))
    }
}
impl Drop for CallGuard {
    fn drop(&mut self) {
        CALL.set(self.0);
    }
}

/// This thread's current call. Used only inside a kernel (the caller's borrow ends before the
/// kernel returns).
fn current_call<'x>() -> Option<&'x Call<'x>> {
    // SAFETY: CALL holds a pointer only while the CallGuard that set it lives on this thread, and
    // that guard borrows the Call; callers (the kernel's `for_each_task` and its tasks) run
    // inside the kernel, so within the guard's life, and do not keep the reference past it.
    CALL.get().map(|p| unsafe { p.as_ref() })
}

/// Unwinds with `Cancelled` (see `install`).
fn cancelled() -> ! {
    std::panic::resume_unwind(Box::new(Cancelled))
}

/// Runs `f` on this thread as a call whose `poll` runs here between tasks.
fn run_here_polled<R>(poll: &dyn Fn() -> bool, f: impl FnOnce() -> R) -> R {
    let cancel = AtomicBool::new(false);
    let call = Call { cancel: &cancel, poll: Some(poll), next_poll: Cell::new(Instant::now() + POLL_INTERVAL) };
    let _call = CallGuard::enter(Some(&call));
    f()
}

/// Whether a kernel run in the pool has returned (or unwound).
#[derive(Default)]
struct Done {
    done: Mutex<bool>,
    changed: Condvar,
}

impl Done {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }

    /// Waits at most `timeout` for `set`; whether it was set.
    fn wait(&self, timeout: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, _) = self.changed.wait_timeout_while(done, timeout, |d| !*d).unwrap_or_else(PoisonError::into_inner);
        *done
    }
}

/// Sets a `Done` when dropped: when the kernel returns or unwinds.
struct SetOnDrop<'a>(&'a Done);
impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// Runs `f` on a thread of `pool`; meanwhile the calling thread calls `poll` every POLL_INTERVAL
/// until it says stop.
fn run_in_pool<R: Send>(pool: &rayon::ThreadPool, poll: &dyn Fn() -> bool, f: impl FnOnce() -> R + Send) -> R {
    let cancel = AtomicBool::new(false);
    let done = Done::default();
    let mut out = None;
    pool.in_place_scope(|scope| {
        let (cancel, done, out) = (&cancel, &done, &mut out);
        scope.spawn(move |_| {
            let _done = SetOnDrop(done);
            let call = Call { cancel, poll: None, next_poll: Cell::new(Instant::now()) };
            let _call = CallGuard::enter(Some(&call));
            *out = Some(f());
        });
        // A panic of `f` is re-raised by the scope once the loop ends (`done` is set either way).
        while !done.wait(POLL_INTERVAL) {
            if !cancel.load(Ordering::Relaxed) && poll() {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    });
    out.expect("the pool ran the kernel")
}

/// Runs `f` inside moeroute's thread pool or, for `work` <= INLINE_WORK elements (and in a forked
/// child), on the calling thread alone. Kernels split work in fixed chunks either way, so the
/// results are the same.
///
/// For `work` > POLL_WORK elements, the calling thread calls `poll` about every POLL_INTERVAL
/// while `f` runs; once it returns true, `for_each_task` starts no more tasks
/// and, when they have stopped, unwinds out of `f` with the payload `Cancelled` (the outputs are
/// simply dropped). `f` may also return normally when the poll said stop too late for any task
/// to see it: the poll records why it stopped, and the caller acts on that.
pub fn install<R: Send>(work: usize, poll: &dyn Fn() -> bool, f: impl FnOnce() -> R + Send) -> Result<R> {
    if work <= INLINE_WORK || !threads_usable() {
        let (_inline, _no_team) = (InlineGuard::enter(), TeamGuard::enter(0));
        return Ok(if work <= POLL_WORK { f() } else { run_here_polled(poll, f) });
    }
    let pool = pool()?;
    // On one of the pool's own threads (not a call from Python), waiting for a job queued behind
    // this thread could deadlock: `install` runs `f` right here, unpolled.
    if work <= POLL_WORK || pool.current_thread_index().is_some() {
        // No call of its own: a pool thread may run `f` while it waits inside another call's
        // tasks (work stealing), and `f` must not see that call's cancel flag.
        return Ok(pool.install(|| {
            let _plain = CallGuard::enter(None);
            f()
        }));
    }
    Ok(run_in_pool(&pool, poll, f))
}

thread_local! {
    /// In a task kernel run with an OpenMP team (see `install_tasks`): the team's size, else 0.
    static TEAM: Cell<usize> = const { Cell::new(0) };
}

/// Sets TEAM for a team run, and restores it when the run ends, panics included.
struct TeamGuard(usize);
impl TeamGuard {
    fn enter(threads: usize) -> Self {
        TeamGuard(TEAM.replace(threads))
    }
}
impl Drop for TeamGuard {
    fn drop(&mut self) {
        TEAM.set(self.0);
    }
}

/// `install` for kernels whose parallel work goes through `for_each_task` / `for_each_chunk_mut`:
/// when the process has an OpenMP runtime (PyTorch's), `f` runs on the calling thread and its
/// tasks on the OpenMP team, with moeroute's thread count; the calling thread, one of the team,
/// polls between its tasks (for `work` > POLL_WORK). The results are the same either way.
pub fn install_tasks<R: Send>(work: usize, poll: &dyn Fn() -> bool, f: impl FnOnce() -> R + Send) -> Result<R> {
    if work > INLINE_WORK && threads_usable() && crate::openmp::available() {
        let _team = TeamGuard::enter(num_threads()?);
        return Ok(if work <= POLL_WORK { f() } else { run_here_polled(poll, f) });
    }
    install(work, poll, f)
}

/// Runs task(i) exactly once for every i in 0..num_tasks: on the OpenMP team inside
/// `install_tasks`, in moeroute's pool inside `install`, in order on this thread in an inline run.
///
/// Inside a polled call (see `install`) the calling thread polls before each of its tasks, and
/// once the poll has said stop no task starts; when the started ones have returned, this unwinds
/// with `Cancelled` instead of returning.
pub fn for_each_task(num_tasks: usize, task: impl Fn(usize) + Sync + Send) {
    let Some(call) = current_call() else {
        return run_tasks(num_tasks, task);
    };
    let cancel = call.cancel;
    if cancel.load(Ordering::Relaxed) {
        cancelled();
    }
    run_tasks(num_tasks, |i| {
        if let Some(call) = current_call() {
            call.poll_if_due(); // polls on the calling thread only (elsewhere no poll is set)
        }
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        // A for_each_task inside the task runs plainly: only this outer one stops and unwinds.
        let _plain = CallGuard::enter(None);
        task(i)
    });
    if cancel.load(Ordering::Relaxed) {
        cancelled();
    }
}

fn run_tasks(num_tasks: usize, task: impl Fn(usize) + Sync + Send) {
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

/// What `set_num_threads` accepts.
pub fn num_threads_range() -> String {
    format!("an integer from 1 to {} (the most threads moeroute starts)", max_threads())
}

/// Replaces the pool with one of `num_threads` threads (1 to `max_threads()`).
pub fn set_num_threads(num_threads: usize) -> Result<()> {
    if num_threads == 0 || num_threads > max_threads() {
        return Err(Error::Argument { arg: "num_threads", got: num_threads.to_string(), expected: num_threads_range() });
    }
    let pool = build_pool(num_threads)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    Ok(())
}

/// The number of threads kernels run on.
pub fn num_threads() -> Result<usize> {
    Ok(pool()?.current_num_threads())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::AtomicUsize;

    /// Runs `num_tasks` tasks of about 1 ms under `install` with `poll`; (tasks run, whether the
    /// kernel unwound with Cancelled).
    fn run(num_tasks: usize, poll: &dyn Fn() -> bool) -> (usize, bool) {
        let ran = AtomicUsize::new(0);
        let outcome = install(POLL_WORK + 1, poll, || {
            catch_unwind(AssertUnwindSafe(|| {
                for_each_task(num_tasks, |_| {
                    std::thread::sleep(Duration::from_millis(1));
                    ran.fetch_add(1, Ordering::Relaxed);
                })
            }))
        })
        .unwrap();
        let cancelled = match outcome {
            Ok(()) => false,
            Err(payload) => {
                assert!(payload.is::<Cancelled>(), "a panic other than Cancelled");
                true
            }
        };
        (ran.into_inner(), cancelled)
    }

    #[test]
    fn a_poll_that_says_stop_stops_the_tasks_and_unwinds() {
        let polls = AtomicUsize::new(0);
        let start = Instant::now();
        let (ran, cancelled) = run(100_000, &|| polls.fetch_add(1, Ordering::Relaxed) >= 1);
        assert!(cancelled);
        assert!(ran < 100_000 && polls.load(Ordering::Relaxed) == 2, "{ran} tasks, {polls:?} polls");
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    }

    #[test]
    fn a_poll_that_never_says_stop_runs_every_task() {
        let polls = AtomicUsize::new(0);
        let (ran, cancelled) = run(300, &|| {
            polls.fetch_add(1, Ordering::Relaxed);
            false
        });
        assert!(!cancelled && ran == 300);
    }

    #[test]
    fn small_kernels_are_not_polled() {
        let polled = AtomicBool::new(false);
        let ran = AtomicUsize::new(0);
        install(POLL_WORK, &|| polled.swap(true, Ordering::Relaxed), || {
            for_each_task(100, |_| {
                std::thread::sleep(Duration::from_millis(1));
                ran.fetch_add(1, Ordering::Relaxed);
            })
        })
        .unwrap();
        assert!(!polled.into_inner() && ran.into_inner() == 100);
    }

    #[test]
    fn thread_counts_beyond_the_limit_are_refused() {
        for bad in [0, max_threads() + 1, 1_000_000, usize::MAX] {
            let err = set_num_threads(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("got {bad}, expected an integer from 1 to {}", max_threads())), "{err}");
        }
        assert!(max_threads() >= MAX_THREADS);
    }
}
