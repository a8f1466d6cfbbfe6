//! The release binary against hostile HTTP clients and a dying thread (issue 9, items 1 and 6).
//! Each attack runs against a scheduler that is booking; /healthz must answer within a second
//! during and after it, the process must stay alive, and booking must go on.

use crate::support::{host, job, org, wait_for, Schema, TestDb};
use cue_scheduler::sim::fake_rqd::{loopback_address, FakeRqd};
use cue_scheduler::sim::farm::LayerSpec;
use cue_scheduler::sim::procs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cue-scheduler");

struct Daemon {
    db: TestDb,
    child: Child,
    port: u16,
    rqd: FakeRqd,
}

/// A scheduler with work that trickles in: a job of 400 one-core frames on 4 one-core hosts
/// whose frames the fake RQD never finishes, so booking progress is visible as new launches
/// only when we add hosts. Instead we watch `scheduler_host_attempts_total` and launches.
fn daemon(test: &str, block: u8, nofile: Option<u64>) -> Daemon {
    let db = TestDb::new(test, Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 1_000_000);
    let hosts: Vec<String> = (0..4).map(|i| loopback_address(block, i)).collect();
    farm.hosts(&hosts.iter().map(|h| host(h, &o.general_alloc, "general", 2, 8)).collect::<Vec<_>>()).expect("hosts");
    farm.job(&job(&o, "showa-hostile", vec![LayerSpec::new("render", "1-400", "general")])).expect("job");
    // The fake RQD also serves the address of the host `books_new_work` adds later.
    let rqd = FakeRqd::start(&[hosts.clone(), vec![loopback_address(block, 10)]].concat()).expect("rqd");
    let port = procs::free_port().expect("port");
    let text = format!(
        "database:\n  db_host: {}\n  db_port: {}\n  db_name: {}\n  db_user: {}\nrqd:\n  grpc_port: {}\nqueue:\n  metrics_port: {port}\n  cluster_empty_sleep: 200ms\n  cluster_saturated_sleep: 200ms\nscheduler:\n  facility: lax\n",
        db.server.host, db.server.port, db.name, db.server.user, rqd.port
    );
    let path: PathBuf = std::env::temp_dir().join(format!("cue-scheduler-{test}-{}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    let log = std::fs::File::create(std::env::temp_dir().join(format!("cue-scheduler-{test}.log"))).expect("log");
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(&path)
        .env("OPENSCHEDULER_DATABASE__DB_PASS", db.server.password.clone().unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(limit) = nofile {
        // SAFETY: setrlimit in the child between fork and exec touches only the child.
        unsafe {
            command.pre_exec(move || {
                let rl = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command.spawn().expect("spawn");
    let d = Daemon { db, child, port, rqd };
    assert!(
        wait_for(Duration::from_secs(15), || procs::http_get(d.port, "/readyz").map(|(s, _)| s == 200).unwrap_or(false)),
        "{test}: never ready"
    );
    d
}

/// /healthz answered 200 within a second.
fn healthy(port: u16) -> bool {
    let started = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200") && started.elapsed() < Duration::from_secs(1)
}

fn alive(child: &mut Child) -> bool {
    match child.try_wait() {
        Ok(None) => true,
        other => {
            eprintln!("the scheduler is not running: {other:?}");
            false
        }
    }
}

impl Daemon {
    /// Booking goes on: a new host added now gets frames within a few seconds.
    fn books_new_work(&mut self, name: &str) -> bool {
        let mut farm = self.db.farm();
        let alloc: String = farm.client.query_one("SELECT pk_alloc::text FROM alloc WHERE str_tag = 'general'", &[]).expect("alloc").get(0);
        farm.hosts(&[host(name, &alloc, "general", 2, 8)]).expect("host");
        let before = self.rqd.launches().iter().filter(|l| l.host == name).count();
        wait_for(Duration::from_secs(20), || self.rqd.launches().iter().filter(|l| l.host == name).count() > before)
    }

    fn stop(mut self) -> Option<i32> {
        procs::stop(&mut self.child, Duration::from_secs(20)).exit_code
    }
}

impl Drop for Daemon {
    /// A failed assertion must not leave the scheduler running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_request_announcing_a_huge_body_is_refused_and_the_process_lives() {
    let mut d = daemon("hostile_body", 70, None);
    for length in ["1000000000000", "5000000000", "99999999999999999999999999"] {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
        write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\npartial body").expect("send");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 413"), "413 for Content-Length {length}");
        assert!(healthy(d.port), "/healthz after Content-Length {length}");
    }
    // A client that announces 5 GB and holds the connection open does not block anyone.
    let mut held = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
    held.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000000\r\n\r\n").expect("send");
    assert!(healthy(d.port), "/healthz while a 5 GB request is held open");
    assert!(alive(&mut d.child), "the process survived");
    assert!(d.books_new_work(&loopback_address(70, 10)), "booking continued");
    drop(held);
    assert_eq!(d.stop(), Some(0), "SIGTERM is not held up by a client");
}

#[test]
fn slow_and_oversized_requests_do_not_stall_the_endpoint() {
    let mut d = daemon("hostile_slow", 71, None);
    // Slowloris: a byte every 300 ms, never finishing the head.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\n").expect("send");
        slow.push(s);
    }
    assert!(healthy(d.port), "/healthz during a slowloris");
    // Headers over the cap.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
    let big = format!("GET /healthz HTTP/1.1\r\nX-Junk: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = s.write_all(big.as_bytes());
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"), "oversized head refused: {:?}", String::from_utf8_lossy(&buf[..buf.len().min(40)]));
    // The idle connections are closed by the read timeout.
    std::thread::sleep(Duration::from_millis(cue_scheduler::limits::HTTP_READ_TIMEOUT_MS + 500));
    let mut closed = 0;
    for s in slow.iter_mut() {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(closed, slow.len(), "idle connections are closed after the read timeout");
    assert!(healthy(d.port));
    assert!(d.books_new_work(&loopback_address(71, 10)), "booking continued");
    assert_eq!(d.stop(), Some(0));
}

/// 1,100 idle connections. Under the 1,024-descriptor limit the connection cap keeps
/// descriptors free: /healthz answers within a second during the flood. Under a 96-descriptor
/// limit the HTTP server would take the last descriptors, and gRPC aborts the process when it
/// cannot make its pollers: the server stops accepting while few are free, and the process
/// must stay alive, lose no thread, and recover once the flood ends.
fn flood(test: &str, block: u8, nofile: u64, healthy_during: bool) {
    let mut d = daemon(test, block, Some(nofile));
    let mut flood = Vec::new();
    let mut refused_in_a_row = 0;
    for _ in 0..1_100 {
        match TcpStream::connect_timeout(&([127, 0, 0, 1], d.port).into(), Duration::from_millis(200)) {
            Ok(s) => {
                flood.push(s);
                refused_in_a_row = 0;
            }
            // The listen backlog is full (the server is keeping its descriptors): more
            // attempts only wait out their timeouts.
            Err(_) => {
                refused_in_a_row += 1;
                if refused_in_a_row >= 10 {
                    break;
                }
            }
        }
    }
    if healthy_during {
        assert!(healthy(d.port), "{test}: /healthz during the flood");
    }
    assert!(alive(&mut d.child), "{test}: alive during the flood");
    drop(flood);
    assert!(wait_for(Duration::from_secs(5), || healthy(d.port)), "{test}: /healthz after the flood");
    assert!(d.books_new_work(&loopback_address(block, 10)), "{test}: booking continued after the flood");
    let log = String::from_utf8_lossy(&std::fs::read(std::env::temp_dir().join(format!("cue-scheduler-{test}.log"))).unwrap_or_default()).to_string();
    assert!(!log.contains(" died ("), "{test}: no thread died");
    if !healthy_during {
        assert!(log.contains("pausing accepts"), "{test}: the server kept the last descriptors");
    }
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn an_idle_connection_flood_does_not_lock_out_health_checks() {
    flood("hostile_flood", 72, 1_024, true);
}

#[test]
fn descriptor_exhaustion_does_not_kill_the_listener_or_the_scheduler() {
    // 96: the scheduler itself needs about 60 at rest (connections for the fetcher, bookers,
    // pool, accounting and ownership, gRPC's pollers, the log); the flood takes the rest.
    flood("hostile_fds", 75, 96, false);
}

/// A pipeline thread that panics: /readyz turns 503 naming it, the death is counted, and the
/// process exits 70 so that systemd restarts it (test hook, debug builds only).
#[test]
fn a_dead_thread_is_not_hidden_behind_a_healthy_process() {
    for thread in ["job-fetcher", "matcher-0", "dispatch-0", "cache-refresh"] {
        let mut d2 = daemon_with_panic(thread);
        let exited = wait_for(Duration::from_secs(15), || !alive(&mut d2.child));
        let code = d2.child.wait().ok().and_then(|s| s.code());
        let log = std::fs::read_to_string(std::env::temp_dir().join("cue-scheduler-hostile_panic2.log")).unwrap_or_default();
        assert!(exited, "{thread}: the process stopped");
        assert_eq!(code, Some(70), "{thread}: exit status 70");
        assert!(log.contains(&format!("thread {thread} died")), "{thread}: the death is logged");
    }
}

fn daemon_with_panic(thread: &str) -> Daemon {
    // The hook fires as soon as the thread starts: readiness is never reached, so do not wait.
    let db = TestDb::new("hostile_panic2", Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 1_000_000);
    farm.hosts(&[host(&loopback_address(74, 0), &o.general_alloc, "general", 2, 8)]).expect("hosts");
    let rqd = FakeRqd::start(&[loopback_address(74, 0)]).expect("rqd");
    let port = procs::free_port().expect("port");
    let text = format!(
        "database:\n  db_host: {}\n  db_port: {}\n  db_name: {}\n  db_user: {}\nrqd:\n  grpc_port: {}\nqueue:\n  metrics_port: {port}\nscheduler:\n  facility: lax\n",
        db.server.host, db.server.port, db.name, db.server.user, rqd.port
    );
    let path: PathBuf = std::env::temp_dir().join(format!("cue-scheduler-panic-{}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    let log = std::fs::File::create(std::env::temp_dir().join("cue-scheduler-hostile_panic2.log")).expect("log");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("CUE_SCHEDULER_TEST_PANIC_THREAD", thread)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    Daemon { db, child, port, rqd }
}
