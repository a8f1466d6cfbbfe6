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
