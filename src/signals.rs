//! Process signals as flags. Handlers only store to atomics (async-signal-safe); the main
//! thread polls them every `limits::SHUTDOWN_POLL_MS`.

use std::sync::atomic::{AtomicBool, Ordering};

static TERMINATE: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);
static TOGGLE_DEBUG: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    match signal {
        libc::SIGTERM | libc::SIGINT => TERMINATE.store(true, Ordering::SeqCst),
        libc::SIGHUP => RELOAD.store(true, Ordering::SeqCst),
        libc::SIGUSR1 | libc::SIGUSR2 => TOGGLE_DEBUG.store(true, Ordering::SeqCst),
        _ => {}
    }
}

/// Installs the handlers for SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2.
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: the handler only touches atomics; sigaction is given a zeroed, filled struct.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
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
