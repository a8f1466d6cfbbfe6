//! The binary as a daemon: HTTP endpoints, SIGTERM during busy dispatch, SIGHUP.

use crate::support::{count, host, job, org, wait_for, Schema, TestDb};
use cue_scheduler::sim::fake_rqd::{loopback_address, Behaviour, FakeRqd};
use cue_scheduler::sim::farm::LayerSpec;
use cue_scheduler::sim::procs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cue-scheduler");

fn config(db: &TestDb, name: &str, extra: &str) -> (PathBuf, u16) {
    let port = procs::free_port().expect("port");
    let text = format!(
        "database:\n  db_host: {}\n  db_port: {}\n  db_name: {}\n  db_user: {}\nqueue:\n  metrics_port: {port}\n  cluster_empty_sleep: 200ms\n  cluster_saturated_sleep: 200ms\nscheduler:\n  facility: lax\n{extra}",
        db.server.host, db.server.port, db.name, db.server.user
    );
    let path = std::env::temp_dir().join(format!("cue-scheduler-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    (path, port)
}

fn spawn(db: &TestDb, config: &PathBuf, log: &str) -> Child {
    let log = std::fs::File::create(std::env::temp_dir().join(log)).expect("log");
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env("OPENSCHEDULER_DATABASE__DB_PASS", db.server.password.clone().unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn")
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

#[test]
fn health_readiness_and_404() {
    let db = TestDb::new("daemon_http", Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    farm.hosts(&[host("h1", &o.general_alloc, "general", 4, 8)]).expect("hosts");
    let (path, port) = config(&db, "http", "rqd:\n  dry_run_mode: true\n");
    let mut child = spawn(&db, &path, "cue-scheduler-http.log");
    let ready = wait_for(Duration::from_secs(15), || procs::http_get(port, "/readyz").map(|(s, _)| s == 200).unwrap_or(false));
    let health = procs::http_get(port, "/healthz").expect("healthz");
    let missing = procs::http_get(port, "/nope").expect("404");
    let metrics = procs::http_get(port, "/metrics").expect("metrics");
    let usage = procs::stop(&mut child, Duration::from_secs(20));
    assert!(ready, "/readyz never answered 200");
    assert_eq!(health.0, 200);
    assert_eq!(missing.0, 404);
    assert_eq!(metrics.0, 200);
    for name in [
        "scheduler_jobs_queried_total",
        "scheduler_job_query_duration_seconds_bucket",
        "scheduler_clusters_active",
        "scheduler_active_scan_duration_seconds_count",
    ] {
        assert!(metrics.1.contains(name), "metrics lack {name}");
    }
    assert_eq!(usage.exit_code, Some(0));
}

/// Without a database the binary exits 1 quickly, with the server's message and no secrets.
#[test]
fn unreachable_database_fails_fast_with_exit_1() {
    let db = TestDb::new("daemon_nodb", Schema::Project).expect("db");
    let (path, _) = config(&db, "nodb", "rqd:\n  dry_run_mode: true\n");
    let text = std::fs::read_to_string(&path).expect("read").replace(&format!("db_port: {}", db.server.port), "db_port: 1");
    std::fs::write(&path, text).expect("write");
    let started = Instant::now();
    let out = Command::new(BIN).arg("--config").arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "unreachable database is an operating error");
    assert!(started.elapsed() < Duration::from_secs(15), "fails fast");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert!(!stderr.contains("password="), "no connection string in messages");
}

/// SIGTERM while launches hang on two hosts: the process exits 0 within the drain deadline,
/// every booked frame is either launched (proc + RUNNING) or compensated (WAITING, exit 299),
/// and the database is consistent.
#[test]
fn sigterm_during_busy_dispatch_leaves_the_database_consistent() {
    let db = TestDb::new("daemon_term", Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    let names: Vec<String> = (0..4).map(|i| loopback_address(31, i)).collect();
    let specs: Vec<_> = names.iter().map(|n| host(n, &o.general_alloc, "general", 4, 16)).collect();
    farm.hosts(&specs).expect("hosts");
    for j in 0..3 {
        farm.job(&job(&o, &format!("showa-term{j}"), vec![LayerSpec::new("render", "1-8", "general")])).expect("job");
    }
    let rqd = FakeRqd::start(&names).expect("fake rqd");
    rqd.set_behaviour(&names[0], Behaviour::Hang);
    rqd.set_behaviour(&names[1], Behaviour::Hang);
    let extra = format!("rqd:\n  grpc_port: {}\n  launch_timeout: 3s\n  dispatch_threads: 2\n", rqd.port);
    let (path, _) = config(&db, "term", &extra);
    let mut child = spawn(&db, &path, "cue-scheduler-term.log");
    let mut client = db.client();
    let busy = wait_for(Duration::from_secs(15), || count(&mut client, "SELECT count(*) FROM proc") >= 16);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    signal(&child, libc::SIGTERM);
    let usage = procs::stop(&mut child, Duration::from_secs(40));
    let took = started.elapsed();
    assert!(busy, "the farm never got busy");
    assert_eq!(usage.exit_code, Some(0));
    assert!(took < Duration::from_secs(25), "stopped in {took:?}, past the drain deadline");
    let procs_left = count(&mut client, "SELECT count(*) FROM proc");
    let launched = rqd.launch_count() as i64;
    assert_eq!(procs_left, launched, "every remaining booking was launched");
    assert_eq!(count(&mut client, "SELECT count(*) FROM frame WHERE str_state = 'RUNNING'"), launched);
    assert!(count(&mut client, "SELECT count(*) FROM frame WHERE int_exit_status = 299") >= 1, "hung launches compensated");
    assert_eq!(db.violations(), Vec::<String>::new());
}

/// SIGHUP re-reads the file: a new log level and cluster_empty_sleep are applied and logged.
#[test]
fn sighup_reloads_and_logs_what_changed() {
    let db = TestDb::new("daemon_hup", Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    farm.hosts(&[host("h1", &o.general_alloc, "general", 4, 8)]).expect("hosts");
    let (path, port) = config(&db, "hup", "rqd:\n  dry_run_mode: true\n");
    let log_name = format!("cue-scheduler-hup-{}.log", std::process::id());
    let mut child = spawn(&db, &path, &log_name);
    assert!(wait_for(Duration::from_secs(15), || procs::http_get(port, "/readyz").map(|(s, _)| s == 200).unwrap_or(false)));
    let text = std::fs::read_to_string(&path).expect("read").replace("cluster_empty_sleep: 200ms", "cluster_empty_sleep: 7s")
        + "logging:\n  level: debug\n";
    std::fs::write(&path, text).expect("write");
    signal(&child, libc::SIGHUP);
    let log_path = std::env::temp_dir().join(&log_name);
    let logged = wait_for(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.contains("SIGHUP: queue.cluster_empty_sleep: 200ms -> 7s") && log.contains("SIGHUP: logging.level")
    });
    let usage = procs::stop(&mut child, Duration::from_secs(20));
    assert!(logged, "{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    assert_eq!(usage.exit_code, Some(0));
}

/// SIGHUP with an out-of-range value (issue 9 item 5): the reload is refused, naming the key,
/// and the running configuration stays in effect; the process keeps answering and stops cleanly.
#[test]
fn sighup_refuses_an_out_of_range_value_and_keeps_running() {
    let db = TestDb::new("daemon_hup_range", Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    farm.hosts(&[host("h1", &o.general_alloc, "general", 4, 8)]).expect("hosts");
    let (path, port) = config(&db, "hup_range", "rqd:\n  dry_run_mode: true\n");
    let log_name = format!("cue-scheduler-hup-range-{}.log", std::process::id());
    let mut child = spawn(&db, &path, &log_name);
    assert!(wait_for(Duration::from_secs(15), || procs::http_get(port, "/readyz").map(|(s, _)| s == 200).unwrap_or(false)));
    let text = std::fs::read_to_string(&path)
        .expect("read")
        .replace("cluster_empty_sleep: 200ms", "cluster_empty_sleep: 18446744073709551615s");
    std::fs::write(&path, text).expect("write");
    signal(&child, libc::SIGHUP);
    let log_path = std::env::temp_dir().join(&log_name);
    let refused = wait_for(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.contains("SIGHUP: configuration not reloaded") && log.contains("queue.cluster_empty_sleep")
    });
    std::thread::sleep(Duration::from_millis(500));
    let health = procs::http_get(port, "/healthz");
    let usage = procs::stop(&mut child, Duration::from_secs(20));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(refused, "{log}");
    assert!(!log.contains("SIGHUP: queue.cluster_empty_sleep"), "the bad value was applied: {log}");
    assert_eq!(health.map(|(s, _)| s).ok(), Some(200), "{log}");
    assert_eq!(usage.exit_code, Some(0), "{log}");
}

/// SIGUSR1 and SIGUSR2 toggle debug logging, SIGINT stops the process cleanly (exit 0).
#[test]
fn sigusr_toggles_debug_and_sigint_stops() {
    let db = TestDb::new("daemon_usr", Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    farm.hosts(&[host("h1", &o.general_alloc, "general", 4, 8)]).expect("hosts");
    let (path, port) = config(&db, "usr", "rqd:\n  dry_run_mode: true\n");
    let log_name = format!("cue-scheduler-usr-{}.log", std::process::id());
    let mut child = spawn(&db, &path, &log_name);
    assert!(wait_for(Duration::from_secs(15), || procs::http_get(port, "/readyz").map(|(s, _)| s == 200).unwrap_or(false)));
    let log_path = std::env::temp_dir().join(&log_name);
    let logged = |text: &str| {
        let text = text.to_string();
        let log_path = log_path.clone();
        wait_for(Duration::from_secs(10), move || std::fs::read_to_string(&log_path).unwrap_or_default().contains(&text))
    };
    signal(&child, libc::SIGUSR1);
    let on = logged("debug logging on");
    signal(&child, libc::SIGUSR2);
    let off = logged("debug logging off");
    signal(&child, libc::SIGINT);
    // Wait for the process to stop by itself (procs::stop would send SIGTERM).
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if status.is_none() {
        procs::stop(&mut child, Duration::from_secs(5));
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(on && off, "{log}");
    assert!(log.contains("termination signal received"), "{log}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
}
