//! The process's OpenMP thread team (PyTorch's libgomp, when torch is loaded), found at run time.
//! Kernels called between torch ops run their tasks on it: torch's OpenMP workers spin for
//! milliseconds after each torch op, so a second pool (rayon's) would share the cores with them
//! instead of using them.

#[cfg(target_os = "linux")]
use std::ffi::c_char;
use std::ffi::{c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`:
/// runs fn(data) on a team of num_threads threads (the caller is one of them) and returns when
/// all have returned. libgomp's entry point for `#pragma omp parallel`; LLVM's libomp has it too.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

#[cfg(target_os = "linux")]
extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// glibc's RTLD_DEFAULT: search every object loaded into the global namespace.
#[cfg(target_os = "linux")]
const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

/// GOMP_parallel's address, or null if no loaded object exports it.
#[cfg(target_os = "linux")]
fn find_gomp_parallel() -> usize {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads loader tables.
    unsafe { dlsym(RTLD_DEFAULT, c"GOMP_parallel".as_ptr()) as usize }
}

/// Elsewhere moeroute keeps to its own pool.
#[cfg(not(target_os = "linux"))]
fn find_gomp_parallel() -> usize {
    0
}

/// GOMP_parallel's address once found (0: not found yet; looked up again, since torch may be
/// imported after moeroute's first call).
static GOMP_PARALLEL: AtomicUsize = AtomicUsize::new(0);

fn gomp_parallel() -> Option<GompParallel> {
    let mut address = GOMP_PARALLEL.load(Ordering::Relaxed);
    if address == 0 {
        address = find_gomp_parallel();
        if address == 0 {
            return None;
        }
        GOMP_PARALLEL.store(address, Ordering::Relaxed);
    }
    // SAFETY: a non-null address of the exported symbol GOMP_parallel, whose C signature is
    // GompParallel in every OpenMP runtime that exports it (libgomp, LLVM libomp, Intel iomp).
    Some(unsafe { std::mem::transmute::<usize, GompParallel>(address) })
}

/// Whether an OpenMP runtime is loaded (e.g. by PyTorch) and not turned off with the environment
/// variable MOEROUTE_NO_OPENMP=1.
pub fn available() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let disabled = *DISABLED.get_or_init(|| std::env::var_os("MOEROUTE_NO_OPENMP").is_some_and(|v| v != "0"));
    !disabled && gomp_parallel().is_some()
}

/// What the team's threads share: the next task to take, and the task body.
struct Work<'a> {
    next: AtomicUsize,
    num_tasks: usize,
    task: &'a (dyn Fn(usize) + Sync),
    panicked: AtomicBool,
}

extern "C" fn team_thread(data: *mut c_void) {
    // SAFETY: `data` is the &Work that `run` passed to GOMP_parallel, which does not return (so
    // the Work stays alive) until every team thread has returned from this function.
    let work = unsafe { &*(data as *const Work) };
    loop {
        let i = work.next.fetch_add(1, Ordering::Relaxed);
        if i >= work.num_tasks {
            return;
        }
        // A panic must not unwind into C: record it, skip the task, and let `run` re-raise it.
        if catch_unwind(AssertUnwindSafe(|| (work.task)(i))).is_err() {
            work.panicked.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs task(i) exactly once for every i in 0..num_tasks on an OpenMP team of `num_threads`
/// threads (the caller included). Returns false, running nothing, when no OpenMP runtime is
/// loaded. Panics (after every task has finished) if a task panicked.
pub fn run(num_tasks: usize, num_threads: usize, task: &(dyn Fn(usize) + Sync)) -> bool {
    let Some(parallel) = gomp_parallel() else {
        return false;
    };
    let work = Work { next: AtomicUsize::new(0), num_tasks, task, panicked: AtomicBool::new(false) };
    let threads = num_threads.clamp(1, num_tasks.max(1)) as c_uint;
    // SAFETY: team_thread matches the callback type, and `work` outlives the call, which returns
    // only after every team thread is done with it (the end of a parallel region is a barrier,
    // which also makes the tasks' writes visible to the caller).
    unsafe { parallel(team_thread, &work as *const Work as *mut c_void, threads, 0) };
    assert!(!work.panicked.load(Ordering::Relaxed), "a kernel task panicked on an OpenMP thread");
    true
}
