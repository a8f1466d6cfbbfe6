//! Process plumbing for the demo and the benchmarks: run scheduler instances as child
//! processes, stop them with SIGTERM and collect their CPU time and peak RSS, read PostgreSQL
//! servers' CPU from /proc, fetch a metrics page over plain HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `cue-scheduler` binary next to the running executable.
pub fn scheduler_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cue-scheduler"));
    exe.with_file_name("cue-scheduler")
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for a benchmark).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Instance {
    pub child: Child,
    pub metrics_port: u16,
}

/// Starts `cue-scheduler --config config`, stderr to `log`.
pub fn start_scheduler(binary: &Path, config: &Path, log: &Path, env: &[(String, String)]) -> std::io::Result<Child> {
    let log_file = std::fs::File::create(log)?;
    let mut command = Command::new(binary);
    command.arg("--config").arg(config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn()
}

/// Resources a stopped child used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub max_rss_kib: i64,
    pub exit_code: Option<i32>,
}

/// Sends SIGTERM and waits (up to `timeout`, then SIGKILL) collecting the child's rusage.
pub fn stop(child: &mut Child, timeout: Duration) -> Usage {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain syscalls on our own child's pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our child; status and usage are valid out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            return Usage { cpu_secs: secs(usage.ru_utime) + secs(usage.ru_stime), max_rss_kib: usage.ru_maxrss, exit_code };
        }
        if rc < 0 {
            return Usage::default();
        }
        if std::time::Instant::now() > deadline {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU seconds used so far by every process named `postgres` except `exclude` pids.
pub fn postgres_cpu_secs(exclude: &[i32]) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    let mut total = 0u64;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if exclude.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        if !head.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state is field 0; utime and stime are fields 11 and 12.
        if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
            total += u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / ticks.max(1.0)
}

fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds used so far by one PostgreSQL cluster (its postmaster and every child), found
/// from one of its backends' pid; other clusters on the machine are not counted.
pub fn cluster_cpu_secs(backend_pid: i32, exclude: &[i32]) -> f64 {
    let Some(postmaster) = parent_pid(backend_pid) else { return 0.0 };
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    let mut total = 0u64;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if exclude.contains(&pid) || (pid != postmaster && parent_pid(pid) != Some(postmaster)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
            total += u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
        }
        if pid == postmaster {
            // Children that exited (backends of closed connections) count in the postmaster's
            // cutime/cstime once reaped.
            if let (Some(u), Some(s)) = (fields.get(13), fields.get(14)) {
                total += u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total as f64 / ticks.max(1.0)
}

/// CPU seconds used so far by the given processes (PostgreSQL backends, say); a process that
/// has exited counts nothing.
pub fn pids_cpu_secs(pids: &[i32]) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
            total += u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / ticks.max(1.0)
}

/// GET http://127.0.0.1:port/path; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Sum of every sample of `metric` (all label sets) in a Prometheus text page.
pub fn metric_sum(page: &str, metric: &str, label_filter: Option<&str>) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter(|l| label_filter.is_none_or(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
