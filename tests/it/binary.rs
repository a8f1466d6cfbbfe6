//! The `cue-scheduler` binary itself: flags, configuration errors, a dry run on a seeded farm.

use crate::support::{count, host, job, org, Schema, TestDb};
use cue_scheduler::sim::farm::LayerSpec;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_cue-scheduler");

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("cue-scheduler-test-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let path = write_config("badkey", "queue:\n  dispatch_frames_per_layer_limt: 5\n");
    let out = Command::new(BIN).arg("--config").arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("queue.dispatch_frames_per_layer_limt"), "{stderr}");
    assert!(stderr.contains("dispatch_frames_per_layer_limit"), "suggestion missing: {stderr}");
}

#[test]
fn bad_value_and_bad_flag_exit_2() {
    let path = write_config("badvalue", "queue:\n  cluster_empty_sleep: soon\n");
    let out = Command::new(BIN).arg("--config").arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue.cluster_empty_sleep"));
    let out = Command::new(BIN).arg("--no-such-flag").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["--alloc_tags", "nocolon", "--facility", "lax"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid format: expected 'show:tag', got 'nocolon'"));
}

#[test]
fn version_prints_version_and_revision() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("cue-scheduler 0."), "{text}");
}

/// The binary, pointed at a database with the real (else project) schema, books a seeded
/// farm in dry-run mode and exits 0 by itself (empty_job_cycles_before_quiting).
#[test]
fn binary_books_a_seeded_farm_and_quits() {
    let db = TestDb::new("binary", Schema::Real).or_else(|| TestDb::new("binary", Schema::Project)).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    let hosts: Vec<_> = (0..4).map(|i| host(&format!("render{i:02}"), &o.general_alloc, "general", 8, 32)).collect();
    farm.hosts(&hosts).expect("hosts");
    for j in 0..3 {
        farm.job(&job(&o, &format!("showa-bin{j}"), vec![LayerSpec::new("render", "1-5", "general")])).expect("job");
    }
    let config = format!(
        "database:\n  db_host: {}\n  db_port: {}\n  db_name: {}\n  db_user: {}\nrqd:\n  dry_run_mode: true\n\
         queue:\n  metrics_port: 0\n  cluster_empty_sleep: 100ms\n  empty_job_cycles_before_quiting: 6\n  active_scan_interval: 10s\n\
         scheduler:\n  facility: lax\n",
        db.server.host, db.server.port, db.name, db.server.user
    );
    let path = write_config("binary", &config);
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("OPENSCHEDULER_DATABASE__DB_PASS", db.server.password.clone().unwrap_or_default())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("scheduler did not quit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut client = db.client();
    assert_eq!(count(&mut client, "SELECT count(*) FROM frame WHERE str_state = 'RUNNING'"), 15);
    assert_eq!(db.violations(), Vec::<String>::new());
}

/// Runs the binary and kills it if it has not exited within `timeout_s` seconds; returns the
/// exit code (None when it had to be killed) and stderr.
fn run_bounded(args: &[&std::ffi::OsStr], envs: &[(&str, &str)], timeout_s: u64) -> (Option<i32>, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let err_path = std::env::temp_dir().join(format!("cue-scheduler-test-stderr-{}-{run}", std::process::id()));
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_s);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&err_path).unwrap_or_default())
}

/// Issue 9 item 5: values the hostile campaign used exit 2 at start-up, naming the key, instead
/// of starting 100,000 threads or overflowing a clock later. The database port is 1, so a
/// configuration that is wrongly accepted fails with exit 1 (unreachable database) instead.
#[test]
fn out_of_range_config_values_exit_2_naming_the_key() {
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("queue:\n  worker_threads: 100000\n", "queue.worker_threads"),
        ("queue:\n  worker_threads: 18446744073709551615\n", "queue.worker_threads"),
        ("queue:\n  cluster_empty_sleep: 18446744073709551615s\n", "queue.cluster_empty_sleep"),
        ("queue:\n  job_back_off_duration: 18446744073709551615s\n", "queue.job_back_off_duration"),
        ("host_cache:\n  group_idle_timeout: 18446744073709551615s\n", "host_cache.group_idle_timeout"),
        ("queue:\n  stream:\n    cluster_buffer_size: 18446744073709551615\n", "queue.stream.cluster_buffer_size"),
    ];
    for (i, (yaml, key)) in cases.iter().enumerate() {
        let path = write_config(&format!("range{i}"), &format!("database:\n  db_port: 1\n{yaml}"));
        let (code, stderr) = run_bounded(&["--config".as_ref(), path.as_os_str()], &[], 20);
        assert_eq!(code, Some(2), "{yaml}: {stderr}");
        assert!(stderr.contains(&format!("bad value for `{key}`")), "{yaml}: {stderr}");
    }
}

/// `--config /dev/zero` or a FIFO fails at once with exit 2 instead of reading forever or
/// blocking for a writer.
#[test]
fn config_that_is_not_a_regular_file_fails_fast() {
    let fifo = std::env::temp_dir().join(format!("cue-scheduler-test-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c_path = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: mkfifo on a NUL-terminated path in the temporary directory.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    for path in [std::path::Path::new("/dev/zero"), fifo.as_path()] {
        let started = std::time::Instant::now();
        let (code, stderr) = run_bounded(&["--config".as_ref(), path.as_os_str()], &[], 10);
        assert_eq!(code, Some(2), "{}: {stderr}", path.display());
        assert!(stderr.contains("not a regular file"), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(5), "{}: {:?}", path.display(), started.elapsed());
    }
    let _ = std::fs::remove_file(&fifo);
}

/// An empty configuration file is warned about, naming the database the defaults point at,
/// before the scheduler tries it.
#[test]
fn empty_config_file_is_warned_about() {
    let path = write_config("empty", "");
    let (code, stderr) = run_bounded(&["--config".as_ref(), path.as_os_str()], &[("OPENSCHEDULER_DATABASE__DB_PORT", "1")], 20);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("has no settings"), "{stderr}");
    assert!(stderr.contains("database `test` on localhost:1"), "{stderr}");
    let warned = stderr.find("has no settings").unwrap_or(usize::MAX);
    assert!(warned < stderr.find("cannot connect").unwrap_or(0), "warning comes first: {stderr}");
}
