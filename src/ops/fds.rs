//! File-descriptor headroom. gRPC's C core aborts the whole process when it cannot get a
//! descriptor for its pollers (`epoll_create1`, then an eventfd), so the scheduler never lets a
//! flood of HTTP clients take the last descriptors, and never creates a gRPC channel without
//! room for it: short of descriptors, a launch fails as an ordinary launch error instead.

use crate::limits;

/// The soft `RLIMIT_NOFILE`; `None` when infinite or unreadable.
fn soft_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Descriptors still free under `limit`: the limit minus the entries of `/proc/self/fd`. `0`
/// when that directory cannot even be opened (which itself takes a descriptor); `u64::MAX`
/// when it cannot be read for another reason.
fn headroom_under(limit: u64) -> u64 {
    match std::fs::read_dir("/proc/self/fd") {
        // The directory's own descriptor is among the entries; it is closed again on return.
        Ok(entries) => limit.saturating_sub(entries.count().saturating_sub(1) as u64),
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) => 0,
        Err(_) => u64::MAX,
    }
}

/// Descriptors still free under the soft `RLIMIT_NOFILE` (`u64::MAX` when unlimited).
pub fn headroom() -> u64 {
    soft_limit().map_or(u64::MAX, headroom_under)
}

/// Whether a new HTTP connection may take a descriptor.
pub fn room_for_http() -> bool {
    match soft_limit() {
        None => true,
        Some(limit) => headroom_under(limit) > limits::FDS_RESERVED_FOR_PIPELINE_MIN.max(limit / 8),
    }
}

/// Whether a new gRPC channel (a socket, and possibly a poller) can be made safely.
pub fn room_for_grpc_channel() -> bool {
    headroom() > limits::FDS_NEEDED_FOR_GRPC_CHANNEL
}
