//! Panics (bugs) in the Python module: the hook keeps their messages for the MoerouteError that
//! reports them instead of printing them to the interpreter's stderr.

use std::any::Any;
use std::sync::{Mutex, Once};

/// The messages (with locations) of the latest panics, oldest first.
static RECENT: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// How many messages RECENT keeps: a kernel's panic may be followed by the one that carries it
/// back to the calling thread (e.g. from an OpenMP thread).
const KEEP: usize = 4;

/// Replaces the process's panic hook (for this library's code: each Rust library linked into
/// the interpreter has its own) with one that records the message instead of printing it. Called
/// when the module loads; `cargo test` builds no Python module and keeps the printing hook.
pub fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= KEEP {
                recent.remove(0);
            }
            recent.push(info.to_string().replace('\n', " "));
        }))
    });
}

/// What a caught panic says: the messages the hook kept since the last report (with their
/// locations), else the payload's text.
pub fn describe(payload: &(dyn Any + Send)) -> String {
    let recent = std::mem::take(&mut *RECENT.lock().unwrap_or_else(|e| e.into_inner()));
    if !recent.is_empty() {
        return recent.join("; ");
    }
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
