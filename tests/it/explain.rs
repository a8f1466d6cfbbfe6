//! `cue-scheduler explain`: one seeded scenario per reason, run in-process (text and JSON) and
//! once through the real binary. Each scenario also checks a reason that must NOT appear.

use crate::support::{host, job, org, Org, Schema, TestDb};
use cue_scheduler::config::cli::ExplainArgs;
use cue_scheduler::config::Config;
use cue_scheduler::explain;
use cue_scheduler::sim::farm::{Farm, HostSpec, JobSpec, LayerSpec};
use std::process::Command;

const GIB: i64 = 1_048_576;

fn config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.database.db_host = db.server.host.clone();
    config.database.db_port = db.server.port;
    config.database.db_user = db.server.user.clone();
    config.database.db_pass = db.server.password.clone().unwrap_or_default();
    config.database.db_name = db.name.clone();
    config.database.pool_size = 2;
    config.scheduler.facility = Some("lax".into());
    config
}

fn args(job: &str, layer: Option<&str>, json: bool) -> ExplainArgs {
    ExplainArgs { job: job.into(), layer: layer.map(str::to_string), json }
}

/// (text, json) of a successful explain.
fn explain_with(config: &Config, job: &str, layer: Option<&str>) -> (String, String) {
    let text = explain::run(config, &args(job, layer, false)).unwrap_or_else(|e| panic!("explain {job}: {e}"));
    let json = explain::run(config, &args(job, layer, true)).unwrap_or_else(|e| panic!("explain --json {job}: {e}"));
    assert!(json.trim_start().starts_with('{') && json.trim_end().ends_with('}'), "{json}");
    (text, json)
}

fn explain(db: &TestDb, job: &str, layer: Option<&str>) -> (String, String) {
    explain_with(&config(db), job, layer)
}

/// Asserts `reason` appears in both outputs.
fn has(out: &(String, String), reason: &str) {
    assert!(out.0.contains(&format!("- {reason}: ")), "text lacks {reason}:\n{}", out.0);
    assert!(out.1.contains(&format!("\"reason\":\"{reason}\"")), "json lacks {reason}:\n{}", out.1);
}

/// Asserts `reason` appears in neither output.
fn lacks(out: &(String, String), reason: &str) {
    assert!(!out.0.contains(&format!("- {reason}: ")), "text has {reason}:\n{}", out.0);
    assert!(!out.1.contains(&format!("\"reason\":\"{reason}\"")), "json has {reason}:\n{}", out.1);
}

fn dispatchable(out: &(String, String)) {
    assert!(out.0.contains("DISPATCHABLE") && !out.0.contains("NOT DISPATCHING"), "{}", out.0);
    assert!(out.1.contains("\"dispatchable\":true") && !out.1.contains("\"dispatchable\":false"), "{}", out.1);
}

/// A farm with the standard organisation and two general hosts (8 cores, 16 GiB).
fn farm(test: &str) -> (TestDb, Farm, Org) {
    let db = TestDb::new(test, Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    farm.hosts(&[host("gen-01", &o.general_alloc, "general", 8, 16), host("gen-02", &o.general_alloc, "general", 8, 16)])
        .expect("hosts");
    (db, farm, o)
}

fn simple_job(o: &Org, name: &str) -> JobSpec {
    job(o, name, vec![LayerSpec::new("render", "1-4", "general")])
}

fn exec(db: &TestDb, sql: &str) {
    db.client().batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[test]
fn dispatchable_layers_list_clusters_and_fitting_hosts() {
    let (db, mut farm, o) = farm("explain_ok");
    farm.hosts(&[host("fx-01", &o.general_alloc, "general", 16, 32).tag("fx", "MANUAL")]).expect("fx host");
    let mut comp = LayerSpec::new("comp", "1-2", "general | fx");
    comp.threadable = true;
    comp.cores_min = 200;
    let layers = vec![LayerSpec::new("render", "1-4", "general"), comp, LayerSpec::new("done", "1-2", "general")];
    let ids = farm.job(&job(&o, "showa-ok", layers)).expect("job");
    exec(&db, &format!("UPDATE frame SET str_state = 'SUCCEEDED' WHERE pk_layer = '{}'", ids.layers["done"]));
    let out = explain(&db, "showa-ok", None);
    dispatchable(&out);
    assert_eq!(out.1.matches("\"reasons\":[]").count(), 2, "{}", out.1);
    assert!(out.0.contains("lax:showa:general (alloc)") && out.0.contains("lax:showa:fx (manual)"), "{}", out.0);
    assert!(out.0.contains("3 checked, 3 fit now: fx-01, gen-01, gen-02"), "{}", out.0);
    assert!(out.0.contains("1 more layer has no WAITING frame"), "{}", out.0);
    assert!(out.1.contains("\"layers_without_waiting_frames\":1"), "{}", out.1);
    assert!(!out.0.contains("layer done"), "{}", out.0);

    // Only the done layer, asked for by name.
    let done = explain(&db, "showa-ok", Some("done"));
    has(&done, "no_waiting_frames");
    assert!(!done.0.contains("layer render"), "{}", done.0);

    // This scheduler's configuration leaves every serving cluster out.
    let mut ignoring = config(&db);
    ignoring.scheduler.ignore_tags = vec!["general".into(), "fx".into()];
    let out = explain_with(&ignoring, "showa-ok", None);
    has(&out, "no_cluster");
    lacks(&out, "no_host_with_tags");
    lacks(&out, "no_host_fits");
    assert!(out.0.contains("ignored by scheduler.ignore_tags"), "{}", out.0);

    let mut elsewhere = config(&db);
    elsewhere.scheduler.facility = Some("cloud".into());
    let out = explain_with(&elsewhere, "showa-ok", None);
    has(&out, "facility_not_scheduled");
    lacks(&out, "no_cluster");
}

#[test]
fn paused_and_not_pending_jobs() {
    let (db, mut farm, o) = farm("explain_paused");
    let mut spec = simple_job(&o, "showa-paused");
    spec.paused = true;
    farm.job(&spec).expect("job");
    let out = explain(&db, "showa-paused", None);
    has(&out, "job_paused");
    lacks(&out, "job_not_pending");
    lacks(&out, "no_host_fits");
    assert!(out.0.contains("2 fit now"), "hosts still fit: {}", out.0);

    exec(&db, "UPDATE job SET str_state = 'FINISHED', b_paused = false");
    let out = explain(&db, "showa-paused", None);
    has(&out, "job_not_pending");
    lacks(&out, "job_paused");
    assert!(out.0.contains("FINISHED"), "{}", out.0);
}

#[test]
fn no_host_carries_the_tags_in_scope() {
    let (db, mut farm, o) = farm("explain_notags");
    // A host with the tag on an allocation the show does not subscribe to.
    let other = farm.alloc(&o.facility_id, "lax.other", "other").expect("alloc");
    farm.hosts(&[host("far-01", &other, "other", 8, 16).tag("farfx", "MANUAL")]).expect("host");
    let layers = vec![LayerSpec::new("nowhere", "1", "nosuchtag"), LayerSpec::new("far", "1", "farfx")];
    farm.job(&job(&o, "showa-notags", layers)).expect("job");
    let out = explain(&db, "showa-notags", Some("far"));
    has(&out, "no_host_with_tags");
    lacks(&out, "no_host_fits");
    lacks(&out, "subscription_burst");
    assert!(out.0.contains("(1 host carries them elsewhere)"), "{}", out.0);
    assert!(out.0.contains("clusters: (none)"), "{}", out.0);
    let out = explain(&db, "showa-notags", Some("nowhere"));
    has(&out, "no_host_with_tags");
    assert!(out.1.contains("\"hosts_elsewhere\":0"), "{}", out.1);
}

/// One manual tag (and one host) per rule a host can fail.
fn miss_hosts(o: &Org) -> Vec<HostSpec> {
    let tagged = |name: &str, tag: &str| host(name, &o.general_alloc, "general", 8, 16).tag(tag, "MANUAL");
    let mut thread = tagged("m-thr", "t_thr");
    thread.thread_mode = 1;
    let mut gpumem = tagged("m-gmem", "t_gmem");
    gpumem.gpus = 1;
    gpumem.gpu_mem_kib = GIB;
    let mut locked = tagged("m-lock", "t_lock");
    locked.lock_state = "LOCKED".into();
    let mut down = tagged("m-down", "t_down");
    down.state = "DOWN".into();
    let mut near_a = host("near-a", &o.general_alloc, "general", 8, 8).tag("t_near", "MANUAL");
    near_a.lock_state = "LOCKED".into();
    let near_b = host("near-b", &o.general_alloc, "general", 8, 8).tag("t_near", "MANUAL");
    vec![
        tagged("m-mem", "t_mem"),
        thread,
        tagged("m-gpu", "t_gpu"),
        gpumem,
        tagged("m-cores", "t_cores"),
        locked,
        down,
        tagged("m-stale", "t_stale"),
        near_a,
        near_b,
    ]
}

fn miss_layers() -> Vec<LayerSpec> {
    let layer = |name: &str, tag: &str| LayerSpec::new(name, "1-2", tag);
    let mut mem = layer("mem", "t_mem");
    mem.mem_min_kib = 64 * GIB;
    let mut gpu = layer("gpu", "t_gpu");
    gpu.gpus_min = 1;
    let mut gmem = layer("gmem", "t_gmem");
    gmem.gpus_min = 1;
    gmem.gpu_mem_min_kib = 4 * GIB;
    let mut cores = layer("cores", "t_cores");
    cores.threadable = true;
    cores.cores_min = 1600;
    let mut near = layer("near", "t_near");
    near.mem_min_kib = 12 * GIB;
    vec![mem, layer("thr", "t_thr"), gpu, gmem, cores, layer("lock", "t_lock"), layer("down", "t_down"), layer("stale", "t_stale"), near]
}

#[test]
fn nearest_miss_names_what_the_host_lacks() {
    let (db, mut farm, o) = farm("explain_misses");
    farm.hosts(&miss_hosts(&o)).expect("hosts");
    farm.job(&job(&o, "showa-misses", miss_layers())).expect("job");
    exec(&db, "UPDATE host_stat SET ts_ping = now() - interval '1 hour' WHERE pk_host = (SELECT pk_host FROM host WHERE str_name = 'm-stale')");
    let mut windows = simple_job(&o, "showa-windows");
    windows.os = Some("windows".into());
    farm.job(&windows).expect("job");
    let cases = [
        ("mem", "memory", "m-mem"),
        ("thr", "thread_mode", "m-thr"),
        ("gpu", "gpus", "m-gpu"),
        ("gmem", "gpu_memory", "m-gmem"),
        ("cores", "cores", "m-cores"),
        ("lock", "locked", "m-lock"),
        ("down", "not_up", "m-down"),
        ("stale", "stale_ping", "m-stale"),
    ];
    let all_misses = ["memory", "thread_mode", "gpus", "gpu_memory", "cores", "locked", "not_up", "stale_ping", "os"];
    for (layer, miss, host_name) in cases {
        let out = explain(&db, "showa-misses", Some(layer));
        has(&out, "no_host_fits");
        lacks(&out, "subscription_burst");
        lacks(&out, "no_host_with_tags");
        assert!(out.1.contains(&format!("\"nearest\":{{\"host\":\"{host_name}\"")), "{layer}: {}", out.1);
        for other in all_misses.iter().filter(|m| **m != miss) {
            assert!(!out.1.contains(&format!("\"miss\":\"{other}\"")), "{layer}: unexpected miss {other}: {}", out.1);
        }
        assert!(out.1.contains(&format!("\"miss\":\"{miss}\"")), "{layer}: {}", out.1);
    }
    // Two hosts lack memory; one is also locked: the other is the nearest miss.
    let out = explain(&db, "showa-misses", Some("near"));
    assert!(out.0.contains("nearest: near-b fails on memory (7.5 GiB idle, needs 12.0 GiB)"), "{}", out.0);
    assert!(!out.1.contains("\"miss\":\"locked\""), "{}", out.1);
    let out = explain(&db, "showa-windows", None);
    has(&out, "no_host_fits");
    assert!(out.0.contains("OS (host runs linux, job needs windows)"), "{}", out.0);
}

#[test]
fn subscription_burst_reached_or_frozen() {
    let (db, mut farm, o) = farm("explain_burst");
    farm.job(&simple_job(&o, "showa-burst")).expect("job");
    let general = &o.general_alloc;
    exec(&db, &format!("UPDATE subscription SET int_burst = 1000, int_cores = 950 WHERE pk_alloc = '{general}'"));
    let out = explain(&db, "showa-burst", None);
    has(&out, "subscription_burst");
    lacks(&out, "no_host_fits");
    assert!(out.0.contains("lax.general 9.50/10 cores booked"), "{}", out.0);
    assert!(out.0.contains("0 fit now"), "{}", out.0);

    exec(&db, &format!("UPDATE subscription SET int_burst = 0, int_cores = 0 WHERE pk_alloc = '{general}'"));
    let out = explain(&db, "showa-burst", None);
    has(&out, "subscription_burst");
    assert!(out.0.contains("lax.general burst 0 (frozen)"), "{}", out.0);

    exec(&db, &format!("UPDATE subscription SET int_burst = 1000, int_cores = 900 WHERE pk_alloc = '{general}'"));
    dispatchable(&explain(&db, "showa-burst", None));
}

#[test]
fn job_max_cores_uses_cuebots_strict_rule() {
    let (db, mut farm, o) = farm("explain_jobmax");
    farm.job(&simple_job(&o, "showa-jobmax")).expect("job");
    // 0 in use + 100 per frame < 100 is false: blocked at exactly the frame minimum.
    exec(&db, "UPDATE job_resource SET int_max_cores = 100");
    let out = explain(&db, "showa-jobmax", None);
    has(&out, "job_max_cores");
    lacks(&out, "folder_max_cores");
    lacks(&out, "no_host_fits");
    assert!(out.1.contains("\"cores\":0,\"frame_min\":100,\"max_cores\":100"), "{}", out.1);
    exec(&db, "UPDATE job_resource SET int_max_cores = 101");
    dispatchable(&explain(&db, "showa-jobmax", None));
    exec(&db, "UPDATE job_resource SET int_max_gpus = 0");
    let out = explain(&db, "showa-jobmax", None);
    has(&out, "job_max_gpus");
    lacks(&out, "job_max_cores");
}

#[test]
fn folder_max_cores_reached() {
    let (db, mut farm, o) = farm("explain_folder");
    farm.job(&simple_job(&o, "showa-folder")).expect("job");
    exec(&db, "UPDATE folder_resource SET int_max_cores = 500, int_cores = 500");
    let out = explain(&db, "showa-folder", None);
    has(&out, "folder_max_cores");
    lacks(&out, "job_max_cores");
    assert!(out.0.contains("folder showa at its max cores (5 of 5)"), "{}", out.0);
    exec(&db, "UPDATE folder_resource SET int_cores = 400");
    dispatchable(&explain(&db, "showa-folder", None));
}

#[test]
fn layer_limit_full_unless_any_limit_has_room() {
    let (db, mut farm, o) = farm("explain_limit");
    let ids = farm.job(&simple_job(&o, "showa-limit")).expect("job");
    let layer = &ids.layers["render"];
    exec(
        &db,
        &format!(
            "INSERT INTO limit_record (pk_limit_record, str_name, int_max_value) VALUES ('L1', 'nuke', 2);
             INSERT INTO layer_limit (pk_layer_limit, pk_layer, pk_limit_record) VALUES ('LL1', '{layer}', 'L1');
             UPDATE layer_stat SET int_running_count = 2 WHERE pk_layer = '{layer}';"
        ),
    );
    let out = explain(&db, "showa-limit", None);
    has(&out, "layer_limit");
    lacks(&out, "no_host_fits");
    assert!(out.0.contains("nuke 2/2 running"), "{}", out.0);
    exec(
        &db,
        &format!(
            "INSERT INTO limit_record (pk_limit_record, str_name, int_max_value) VALUES ('L2', 'katana', 5);
             INSERT INTO layer_limit (pk_layer_limit, pk_layer, pk_limit_record) VALUES ('LL2', '{layer}', 'L2');"
        ),
    );
    dispatchable(&explain(&db, "showa-limit", None));
}

#[test]
fn start_delayed_prints_the_time() {
    let (db, mut farm, o) = farm("explain_delay");
    let mut later = LayerSpec::new("later", "1-2", "general");
    later.start_after_secs = Some(3600.0);
    farm.job(&job(&o, "showa-delay", vec![LayerSpec::new("now", "1-2", "general"), later])).expect("job");
    let out = explain(&db, "showa-delay", Some("later"));
    has(&out, "start_delayed");
    assert!(out.0.contains("start delayed until 20") && out.0.contains("Z ("), "{}", out.0);
    assert!(out.1.contains("\"until\":\"20"), "{}", out.1);
    let out = explain(&db, "showa-delay", Some("now"));
    lacks(&out, "start_delayed");
    dispatchable(&out);
}

#[test]
fn show_and_point_reasons() {
    let (db, mut farm, o) = farm("explain_show");
    farm.job(&simple_job(&o, "showa-show")).expect("job");
    exec(&db, "UPDATE show SET b_scheduler_managed = false");
    let out = explain(&db, "showa-show", None);
    has(&out, "show_not_managed");
    lacks(&out, "show_inactive");
    exec(&db, "UPDATE show SET b_scheduler_managed = true, b_active = false");
    let out = explain(&db, "showa-show", None);
    has(&out, "show_inactive");
    lacks(&out, "show_not_managed");
    exec(&db, "UPDATE show SET b_active = true; DELETE FROM point");
    let out = explain(&db, "showa-show", None);
    has(&out, "no_point");
    lacks(&out, "show_inactive");
    assert!(out.0.contains("no point row for department Lighting in show showa"), "{}", out.0);
    exec(&db, "INSERT INTO point (pk_point, pk_dept, pk_show) SELECT 'P', pk_dept, pk_show FROM folder");
    exec(&db, "UPDATE layer_stat SET int_waiting_count = 0");
    let out = explain(&db, "showa-show", None);
    has(&out, "waiting_count_stale");
    lacks(&out, "no_point");
}

#[test]
fn job_lookup_errors_are_one_line() {
    let (db, mut farm, o) = farm("explain_lookup");
    let first = farm.job(&simple_job(&o, "showa-dup")).expect("job");
    let config = config(&db);
    let err = explain::run(&config, &args("showa-nosuchjob", None, false)).expect_err("unknown job");
    assert!(err.contains("showa-nosuchjob") && !err.contains('\n'), "{err}");
    let err = explain::run(&config, &args("showa-dup", Some("nolayer"), false)).expect_err("unknown layer");
    assert!(err.contains("nolayer"), "{err}");

    exec(&db, &format!("UPDATE job SET str_state = 'FINISHED', str_visible_name = NULL WHERE pk_job = '{}'", first.job_id));
    let second = farm.job(&simple_job(&o, "showa-dup")).expect("second job");
    let out = explain(&db, "showa-dup", None);
    assert!(out.1.contains(&format!("\"id\":\"{}\"", second.job_id)), "the PENDING one: {}", out.1);
    lacks(&out, "job_not_pending");

    exec(&db, &format!("UPDATE job SET str_state = 'FINISHED', str_visible_name = NULL WHERE pk_job = '{}'", second.job_id));
    let err = explain::run(&config, &args("showa-dup", None, false)).expect_err("ambiguous");
    assert!(err.contains("2 jobs are named `showa-dup`") && err.contains(&first.job_id) && err.contains(&second.job_id), "{err}");

    let mut unreachable = config.clone();
    unreachable.database.db_port = 1;
    let err = explain::run(&unreachable, &args("showa-dup", None, false)).expect_err("no database");
    assert!(err.contains("connect") && !err.contains('\n'), "{err}");
}

#[test]
fn binary_explains_a_paused_job() {
    let (db, mut farm, o) = farm("explain_binary");
    let mut spec = simple_job(&o, "showa-bin-paused");
    spec.paused = true;
    farm.job(&spec).expect("job");
    let text = format!(
        "database:\n  db_host: {}\n  db_port: {}\n  db_name: {}\n  db_user: {}\nscheduler:\n  facility: lax\n",
        db.server.host, db.server.port, db.name, db.server.user
    );
    let path = std::env::temp_dir().join(format!("cue-scheduler-test-explain-{}.yaml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cue-scheduler"))
            .arg("--config")
            .arg(&path)
            .args(["explain", "--job", "showa-bin-paused"])
            .args(extra)
            .env("OPENSCHEDULER_DATABASE__DB_PASS", db.server.password.clone().unwrap_or_default())
            .output()
            .expect("run binary");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("- job_paused: the job is paused"), "{stdout}");
    let (code, stdout, stderr) = run(&["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"reason\":\"job_paused\"") && stdout.trim_start().starts_with('{'), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_cue-scheduler"))
        .arg("--config")
        .arg(&path)
        .args(["explain", "--job", "showa-no-such-job"])
        .env("OPENSCHEDULER_DATABASE__DB_PASS", db.server.password.clone().unwrap_or_default())
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("showa-no-such-job"));
    let _ = std::fs::remove_file(&path);
}

/// Issue 9, item 3: layers with negative requirements (rows as a broken client may write them)
/// are never booked — they would make idle capacity out of nothing — and explain names them.
#[test]
fn negative_requirements_are_refused_and_named() {
    let (db, mut f, o) = farm("explain_negative");
    let mut gpus = LayerSpec::new("negative_gpus", "1-2", "general");
    gpus.gpus_min = -1;
    let mut mem = LayerSpec::new("negative_mem", "1-2", "general");
    mem.mem_min_kib = i64::MIN;
    let good = LayerSpec::new("fine", "1-2", "general");
    f.job(&job(&o, "showa-negative", vec![gpus, mem, good])).expect("job");
    let out = explain(&db, "showa-negative", Some("negative_gpus"));
    has(&out, "invalid_requirements");
    let out = explain(&db, "showa-negative", Some("negative_mem"));
    has(&out, "invalid_requirements");
    lacks(&explain(&db, "showa-negative", Some("fine")), "invalid_requirements");
    // The pipeline books the good layer only (dry run: in the database, no RQD), and no idle
    // value goes past the host's total.
    let mut settings = crate::support::settings(&db, 1);
    settings.dry_run = true;
    let pipeline = cue_scheduler::pipeline::Pipeline::start(settings, std::sync::Arc::new(cue_scheduler::ops::metrics::Metrics::new())).expect("start");
    let running = |f: &mut Farm| -> Vec<String> {
        f.client
            .query("SELECT str_name::text FROM frame WHERE str_state = 'RUNNING' ORDER BY 1", &[])
            .expect("frames")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    crate::support::wait_for(std::time::Duration::from_secs(10), || running(&mut f).len() >= 2);
    std::thread::sleep(std::time::Duration::from_millis(500));
    pipeline.shutdown(std::time::Duration::from_secs(5));
    let launched = running(&mut f);
    assert!(launched.iter().all(|n| n.ends_with("-fine")), "only the sane layer ran: {launched:?}");
    assert_eq!(launched.len(), 2);
    let over: i64 = f
        .client
        .query_one(
            "SELECT count(*) FROM host WHERE int_cores_idle > int_cores OR int_mem_idle > int_mem OR int_gpus_idle > int_gpus
                OR int_gpu_mem_idle > int_gpu_mem",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(over, 0, "no phantom capacity");
    assert_eq!(db.violations(), Vec::<String>::new());
}

/// Issue 9, item 4: thirty frames whose numbers are outside the layer's range come first in
/// dispatch order; the ten good frames behind them are booked anyway, and explain names the
/// bad ones.
#[test]
fn unlaunchable_frames_first_in_order_do_not_starve_the_layer() {
    let (db, mut f, o) = farm("explain_unlaunchable");
    let ids = f.job(&job(&o, "showa-badrange", vec![LayerSpec::new("render", "1-40", "general")])).expect("job");
    // Frames 1-30 get numbers outside the range, keeping their dispatch order (first).
    for n in 1..=30 {
        let name = format!("{n:04}-render");
        f.client
            .execute("UPDATE frame SET int_number = 1000 + $2::bigint, str_name = $3 WHERE pk_frame = $1", &[&ids.frames[&name], &(n as i64), &format!("{:04}-render", 1000 + n)])
            .expect("break frame");
    }
    let out = explain(&db, "showa-badrange", Some("render"));
    assert!(out.0.contains("unlaunchable frames, skipped and never booked: 30"), "{}", out.0);
    assert!(out.1.contains("\"unlaunchable_frames\":[\"1001-render\""), "{}", out.1);
    lacks(&out, "only_unlaunchable_frames");
    let mut settings = crate::support::settings(&db, 1);
    settings.dry_run = true;
    let pipeline = cue_scheduler::pipeline::Pipeline::start(settings, std::sync::Arc::new(cue_scheduler::ops::metrics::Metrics::new())).expect("start");
    let good = |f: &mut Farm| -> i64 {
        f.client
            .query_one("SELECT count(*) FROM frame WHERE str_state = 'RUNNING' AND int_number <= 40", &[])
            .expect("count")
            .get(0)
    };
    let booked = crate::support::wait_for(std::time::Duration::from_secs(15), || good(&mut f) == 10);
    pipeline.shutdown(std::time::Duration::from_secs(5));
    assert!(booked, "the ten good frames were booked ({} running)", good(&mut f));
    let bad_running: i64 = f.client.query_one("SELECT count(*) FROM frame WHERE str_state = 'RUNNING' AND int_number > 1000", &[]).expect("count").get(0);
    assert_eq!(bad_running, 0, "no unlaunchable frame stays booked");
    assert_eq!(db.violations(), Vec::<String>::new());
}

/// Serves a canned `/policy` page to `n` requests, as a running scheduler would.
fn fake_policy_page(page: String, n: usize) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(n) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}", page.len());
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn policy_section_names_the_share_the_hold_and_what_the_job_waits_for() {
    let (db, mut farm, o) = farm("explain_policy");
    // showa: 4 cores subscribed, 12 booked; showb: 12 subscribed, none booked, waiting work.
    exec(&db, &format!("UPDATE subscription SET int_size = 400, int_cores = 1200 WHERE pk_show = '{}' AND pk_alloc = '{}'", o.show_id, o.general_alloc));
    // The pool is busy (fair share is not enforced while cores sit idle).
    exec(&db, "UPDATE host SET int_cores_idle = 0");
    let showb = farm.show("showb", true).expect("show");
    let folder = farm.folder(&showb, &o.dept_id, "showb").expect("folder");
    farm.subscription(&showb, &o.general_alloc, 1200, 1600).expect("subscription");
    let ids = farm.job(&simple_job(&o, "showa-job")).expect("job");
    farm.job(&JobSpec { show_id: showb, show_name: "showb".into(), folder_id: folder, ..simple_job(&o, "showb-job") }).expect("job");
    let layer_id = ids.layers["render"].clone();
    let page = format!(
        "policy name=smart\nhold host=gen-01 layer_id={layer_id} layer=render job_id={} job=showa-job frame=0001-render cores=8 held_for_s=4.0 due_in_s=12.5\n\
         hold host=gen-02 layer_id=x layer=other job_id=someone-else job=other frame=0001-other cores=8 held_for_s=1.0 due_in_s=3.0\n",
        ids.job_id
    );
    let mut config = config(&db);
    config.scheduler.policy = "smart".into();
    config.queue.metrics_port = fake_policy_page(page, 2);
    config.queue.metrics_address = "127.0.0.1".into();
    let out = explain_with(&config, "showa-job", None);
    for expected in [
        "scheduling policy smart",
        // showb waits for 4 cores (its job's 4 one-core frames), so it is entitled to those 4
        // and showa to the other 12 of the 16-core pool; showb has none of its 4 yet.
        "share on lax.general: 12 cores booked of 12 entitled (4 subscribed), 1.00 of its share; held to its share",
        "reservation: host gen-01 held for frame 0001-render of layer render (8 cores) for 4 s; expected free in 12 s",
        "waiting for: fair_share, reservation_pending",
    ] {
        assert!(out.0.contains(expected), "text lacks `{expected}`:\n{}", out.0);
    }
    assert!(!out.0.contains("gen-02 held"), "another job's hold is not shown:\n{}", out.0);
    assert!(out.1.contains("\"waiting_for\":[\"fair_share\",\"reservation_pending\"]"), "{}", out.1);
    // No scheduler answering: the holds are unknown, the share is still read from the database.
    let mut config = config.clone();
    config.queue.metrics_port = 1;
    let out = explain_with(&config, "showa-job", None);
    assert!(out.0.contains("reservations: unknown (no scheduler answered on 127.0.0.1:1"), "{}", out.0);
    assert!(out.0.contains("waiting for: fair_share\n"), "{}", out.0);
}
