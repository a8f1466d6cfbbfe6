//! Process signals as flags, registered with `signal-hook` (its handlers only store to the
//! atomics, which is async-signal-safe); the main thread polls them every
//! `limits::SHUTDOWN_POLL_MS`. SIGTERM and SIGINT stop the scheduler, SIGHUP reloads the
//! configuration, SIGUSR1 and SIGUSR2 toggle debug logging.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

static TERMINATE: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);
static RELOAD: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);
static TOGGLE_DEBUG: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Installs the handlers for SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2.
pub fn install() -> std::io::Result<()> {
    let flags: [(i32, &Arc<AtomicBool>); 5] = [
        (SIGTERM, &TERMINATE),
        (SIGINT, &TERMINATE),
        (SIGHUP, &RELOAD),
        (SIGUSR1, &TOGGLE_DEBUG),
        (SIGUSR2, &TOGGLE_DEBUG),
    ];
    for (signal, flag) in flags {
        signal_hook::flag::register(signal, Arc::clone(flag))?;
    }
    Ok(())
}

pub fn terminate_requested() -> bool {
    TERMINATE.load(Ordering::SeqCst)
}

/// Asks the process to stop, as SIGTERM would (used by `empty_job_cycles_before_quitting`).
pub fn request_terminate() {
    TERMINATE.store(true, Ordering::SeqCst);
}

pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

pub fn take_toggle_debug() -> bool {
    TOGGLE_DEBUG.swap(false, Ordering::SeqCst)
}
