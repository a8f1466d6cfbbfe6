//! Managed-show accounting next to every Cuebot release mode: the simulator is pinned to
//! Cuebot's writes statement by statement, and the scheduler keeps the five rollups equal to
//! SUM(proc) under releases, restarts, lost listeners, show flips and a second instance.

use crate::support::{self, count, host, job, org, wait_for, Org, Schema, TestDb};
use cue_scheduler::ops::metrics::Metrics;
use cue_scheduler::pipeline::Pipeline;
use cue_scheduler::config::settings::Settings;
use cue_scheduler::sim::completer::Completer;
use cue_scheduler::sim::cuebot::{Cuebot, Mode, Write};
use cue_scheduler::sim::fake_rqd::{loopback_address, FakeRqd};
use cue_scheduler::sim::farm::LayerSpec;
use cue_scheduler::sim::workloads::Rng;
use parking_lot::Mutex;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rollup rows that differ from SUM(proc): invariants.sql's accounting checks, "(lagging ok)"
/// rows included (those are exactly what the scheduler must keep exact).
fn rollup_violations(db: &TestDb) -> Vec<String> {
    db.violations()
}

/// A farm of `hosts` 4-core hosts and one managed show with jobs whose layers reserve 0.5 core
/// (a fractional reservation), 1 core and 2 cores.
struct Farm {
    db: TestDb,
    org: Org,
    rqd: FakeRqd,
    jobs: Vec<String>,
}

fn farm(test: &str, schema: Schema, block: u8, hosts: usize, frames_per_layer: usize) -> Option<Farm> {
    let db = TestDb::new(test, schema)?;
    let mut f = db.farm();
    let o = org(&mut f, 1_000_000);
    let names: Vec<String> = (0..hosts).map(|i| loopback_address(block, i)).collect();
    let specs: Vec<_> = names.iter().map(|n| host(n, &o.general_alloc, "general", 4, 16)).collect();
    f.hosts(&specs).expect("hosts");
    let mut jobs = Vec::new();
    for j in 0..2 {
        let range = format!("1-{frames_per_layer}");
        let mut half = LayerSpec::new("half", &range, "general");
        half.cores_min = 50;
        half.threadable = false;
        half.mem_min_kib = 1_048_576;
        let mut one = LayerSpec::new("one", &range, "general");
        one.mem_min_kib = 1_048_576;
        let mut two = LayerSpec::new("two", &range, "general");
        two.cores_min = 200;
        two.threadable = true;
        two.mem_min_kib = 8 * 1_048_576;
        let ids = f.job(&job(&o, &format!("showa-acct{j}-alice"), vec![half, one, two])).expect("job");
        jobs.push(ids.job_id);
    }
    let rqd = FakeRqd::start(&names).expect("fake rqd");
    Some(Farm { db, org: o, rqd, jobs })
}

fn settings(db: &TestDb, rqd_port: u16) -> Settings {
    let mut s = support::settings(db, rqd_port);
    // Mode (c) needs the periodic reconcile; a short one keeps the tests short.
    s.accounting.recompute_interval = Duration::from_secs(1);
    s.accounting.coalesce_window = Duration::from_millis(20);
    s
}

/// Every launch is finished by the completer after `run` (± jitter), with a few failures.
fn wire_completions(f: &Farm, completer: &Arc<Completer>, run: Duration, failure_rate: f64) {
    let rng = Arc::new(Mutex::new(Rng::new(11)));
    let c = Arc::clone(completer);
    f.rqd.on_launch(move |_host, rf| {
        let mut rng = rng.lock();
        let jitter = Duration::from_millis(rng.range(0, (run.as_millis() as i64 / 2).max(1)) as u64);
        let exit = if rng.chance(failure_rate) { 1 } else { 0 };
        c.schedule(Instant::now() + run + jitter, rf.get_frame_id(), rf.get_resource_id(), exit);
    });
}

fn completer(f: &Farm, cuebot: Arc<Cuebot>, threads: usize) -> Arc<Completer> {
    let (server, name) = (f.db.server.clone(), f.db.name.clone());
    Arc::new(
        Completer::start(threads, cuebot, Some(f.rqd.handle()), move || server.connect(&name), None).expect("completer"),
    )
}

fn finished(db: &TestDb) -> bool {
    let mut c = db.client();
    count(&mut c, "SELECT count(*) FROM frame WHERE str_state IN ('WAITING', 'RUNNING')") == 0
}

/// Waits for the rollups to equal SUM(proc); returns the violations left after `timeout`.
fn settle(db: &TestDb, timeout: Duration) -> Vec<String> {
    let mut last = Vec::new();
    wait_for(timeout, || {
        last = rollup_violations(db);
        last.is_empty()
    });
    last
}

fn stop_completer(f: &Farm, c: Arc<Completer>) -> cue_scheduler::sim::completer::CompleterReport {
    f.rqd.on_launch(|_, _| {}); // drops the hook's handle on the completer
    match Arc::try_unwrap(c) {
        Ok(c) => c.stop(),
        Err(_) => panic!("completer still shared"),
    }
}

// ------------------------------------------------------------------------------------------
// The simulator is Cuebot: each mode's statements, in order.
// ------------------------------------------------------------------------------------------

fn expected_writes(mode: Mode, managed: bool) -> Vec<&'static str> {
    let mut w = vec!["load", "begin", "stop", "detach", "commit", "begin", "delete", "host"];
    let managed_path = managed && matches!(mode, Mode::Notify | Mode::Silent);
    if managed_path {
        if mode == Mode::Notify {
            w.push("notify:acct_release");
        }
    } else {
        w.extend(["dec:subscription", "dec:layer_resource", "dec:job_resource", "dec:folder_resource", "dec:point"]);
    }
    w.extend(["commit", "report"]);
    w
}

fn names(trace: &[Write]) -> Vec<String> {
    trace
        .iter()
        .map(|w| match w {
            Write::LoadProc => "load".into(),
            Write::Begin => "begin".into(),
            Write::StopFrame => "stop".into(),
            Write::DetachProc => "detach".into(),
            Write::DeleteProc => "delete".into(),
            Write::RestoreHost => "host".into(),
            Write::Decrement(t) => format!("dec:{t}"),
            Write::Notify { channel, .. } => format!("notify:{channel}"),
            Write::Update(what) => format!("update:{what}"),
            Write::Commit => "commit".into(),
            Write::Rollback => "rollback".into(),
            Write::HostReport => "report".into(),
        })
        .collect()
}

/// Core units in the five rollups of the farm's first job (sub, layer "half", job, folder, point).
fn rollups(db: &TestDb, o: &Org, job_id: &str) -> [i64; 5] {
    let mut c = db.client();
    let q = |c: &mut postgres::Client, sql: &str, a: &str, b: &str| -> i64 { c.query_one(sql, &[&a, &b]).expect(sql).get(0) };
    [
        q(&mut c, "SELECT int_cores::bigint FROM subscription WHERE pk_show = $1 AND pk_alloc = $2", &o.show_id, &o.general_alloc),
        q(&mut c, "SELECT sum(lr.int_cores)::bigint FROM layer_resource lr JOIN layer l USING (pk_layer) WHERE l.pk_job = $1 AND $2 <> ''", job_id, "x"),
        q(&mut c, "SELECT int_cores::bigint FROM job_resource WHERE pk_job = $1 AND $2 <> ''", job_id, "x"),
        q(&mut c, "SELECT int_cores::bigint FROM folder_resource WHERE pk_folder = $1 AND $2 <> ''", &o.folder_id, "x"),
        q(&mut c, "SELECT int_cores::bigint FROM point WHERE pk_show = $1 AND pk_dept = $2", &o.show_id, &o.dept_id),
    ]
}

fn pin_mode(schema: Schema, block: u8, mode: Mode) {
    let test = format!("acct_pin_{}", mode.name());
    let Some(f) = farm(&test, schema, block, 1, 1) else { return };
    // Book with the real pipeline, then stop it: only the simulated Cuebot writes afterwards.
    let pipeline = Pipeline::start(settings(&f.db, f.rqd.port), Arc::new(Metrics::new())).expect("start");
    assert!(wait_for(Duration::from_secs(20), || f.rqd.launch_count() >= 3), "booked {}", f.rqd.launch_count());
    pipeline.shutdown(Duration::from_secs(5));
    let mut listener = f.db.client();
    listener.batch_execute("LISTEN acct_release; LISTEN acct_limit_change").expect("listen");
    let launches = f.rqd.launches();
    let half = launches.iter().find(|l| l.run_frame.get_frame_name().ends_with("-one")).expect("a 1-core frame ran");
    let job_id = half.run_frame.get_job_id().to_string();
    let before = rollups(&f.db, &f.org, &job_id);
    let mut client = f.db.client();
    let cuebot = Cuebot::new(mode);
    cuebot.record();
    let rf = &half.run_frame;
    cuebot
        .complete_frame(&mut client, rf.get_frame_id(), rf.get_resource_id(), cue_scheduler::sim::cuebot::Completion { exit_status: 0, run_secs: 1, max_rss_kib: 0 })
        .expect("release");
    let trace = cuebot.take_trace();
    assert_eq!(names(&trace), expected_writes(mode, true), "mode {} on a managed show", mode.name());
    let after = rollups(&f.db, &f.org, &job_id);
    let decremented = matches!(mode, Mode::Dec2025 | Mode::Pr2533);
    let want: [i64; 5] = if decremented { before.map(|v| v - 100) } else { before };
    assert_eq!(after, want, "rollups after a {} release (before {before:?})", mode.name());
    let heard: Vec<(String, String)> = listener
        .notifications()
        .timeout_iter(Duration::from_millis(300))
        .map(|n| Ok((n.channel().to_string(), n.payload().to_string())))
        .collect()
        .expect("notifications");
    if mode == Mode::Notify {
        let mut c = f.db.client();
        let row = c
            .query_one(
                "SELECT h.pk_alloc::text, j.pk_folder::text, j.pk_dept::text, l.pk_layer::text FROM host h, job j, layer l
                 WHERE h.str_name = $1 AND j.pk_job = $2 AND l.pk_job = j.pk_job AND l.str_name = 'one'",
                &[&half.host, &job_id],
            )
            .expect("ids");
        let (alloc, folder, dept, layer): (String, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
        // Cuebot's payload: whole cores, negated.
        let payload = format!(
            "{{\"show\":\"{}\",\"alloc\":\"{alloc}\",\"folder\":\"{folder}\",\"job\":\"{job_id}\",\"layer\":\"{layer}\",\"dept\":\"{dept}\",\"cores\":-1,\"gpus\":0}}",
            f.org.show_id
        );
        assert_eq!(heard, vec![("acct_release".to_string(), payload)]);
    } else {
        assert_eq!(heard, vec![], "mode {} sends no notification", mode.name());
    }
    // The same Cuebot on a show that is not managed: the five decrements in every mode.
    let second = launches.iter().find(|l| l.run_frame.get_frame_name().ends_with("-half")).expect("another frame ran");
    let mut c = f.db.client();
    c.execute("UPDATE show SET b_scheduler_managed = false WHERE pk_show = $1", &[&f.org.show_id]).expect("unmanage");
    let fresh = Cuebot::new(mode); // its cache has not seen the show yet
    fresh.record();
    let rf = &second.run_frame;
    fresh
        .complete_frame(&mut client, rf.get_frame_id(), rf.get_resource_id(), cue_scheduler::sim::cuebot::Completion { exit_status: 0, run_secs: 1, max_rss_kib: 0 })
        .expect("release");
    assert_eq!(names(&fresh.take_trace()), expected_writes(mode, false), "mode {} on an unmanaged show", mode.name());
}

#[test]
fn simulator_pins_each_cuebot_mode_project_schema() {
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        pin_mode(Schema::Project, 40 + i as u8, mode);
    }
}

#[test]
fn simulator_pins_each_cuebot_mode_real_schema() {
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        pin_mode(Schema::Real, 44 + i as u8, mode);
    }
}

#[test]
fn simulator_cap_changes_notify_only_for_managed_shows_in_mode_b() {
    let Some(f) = farm("acct_caps", Schema::Project, 48, 1, 1) else { return };
    let mut listener = f.db.client();
    listener.batch_execute("LISTEN acct_limit_change").expect("listen");
    let mut c = f.db.client();
    for mode in Mode::ALL {
        let cuebot = Cuebot::new(mode);
        cuebot.set_subscription_burst(&mut c, &f.org.show_id, &f.org.general_alloc, 123_400).expect("burst");
        cuebot.set_job_max_cores(&mut c, &f.jobs[0], 5_000).expect("job max");
        cuebot.set_folder_max_cores(&mut c, &f.org.folder_id, -5).expect("folder max");
        let heard: Vec<String> = listener
            .notifications()
            .timeout_iter(Duration::from_millis(200))
            .map(|n| Ok(n.payload().to_string()))
            .collect()
            .expect("notifications");
        if mode == Mode::Notify {
            assert_eq!(
                heard,
                vec![
                    format!("{{\"vertex\":\"sub\",\"show\":\"{}\",\"alloc\":\"{}\",\"burst\":1234}}", f.org.show_id, f.org.general_alloc),
                    format!("{{\"vertex\":\"job\",\"id\":\"{}\",\"max_cores\":50}}", f.jobs[0]),
                    format!("{{\"vertex\":\"folder\",\"id\":\"{}\",\"max_cores\":-1}}", f.org.folder_id),
                ]
            );
        } else {
            assert_eq!(heard, Vec::<String>::new(), "mode {}", mode.name());
        }
    }
    assert_eq!(count(&mut c, &format!("SELECT int_max_cores::bigint FROM folder_resource WHERE pk_folder = '{}'", f.org.folder_id)), -1);
    // Cuebot's job move (updateParent): folder and department follow the destination folder.
    let mut seed = f.db.farm();
    let dept2 = seed.dept("Compositing").expect("dept");
    let folder2 = seed.folder(&f.org.show_id, &dept2, "moved").expect("folder");
    Cuebot::new(Mode::Notify).move_job(&mut c, &f.jobs[0], &folder2).expect("move");
    let row = c.query_one("SELECT pk_folder::text, pk_dept::text FROM job WHERE pk_job = $1", &[&f.jobs[0]]).expect("job");
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), (folder2, dept2));
}

// ------------------------------------------------------------------------------------------
// End to end: the scheduler books, the simulated Cuebot releases, the rollups stay exact.
// ------------------------------------------------------------------------------------------

/// A completion report cut off between Cuebot's two release transactions leaves the frame
/// stopped and its proc detached but booked. A resent report releases it through Cuebot's
/// stale-report path; an unreported one waits for Cuebot's orphan sweep (ping older than 300 s).
#[test]
fn simulator_releases_detached_procs_like_cuebot() {
    let Some(f) = farm("acct_detached", Schema::Real, 91, 1, 2) else { return };
    let pipeline = Pipeline::start(settings(&f.db, f.rqd.port), Arc::new(Metrics::new())).expect("start");
    assert!(wait_for(Duration::from_secs(20), || f.rqd.launch_count() >= 2), "booked {}", f.rqd.launch_count());
    pipeline.shutdown(Duration::from_secs(5));
    let launches = f.rqd.launches();
    let mut c = f.db.client();
    let idle = |c: &mut postgres::Client| -> i64 { c.query_one("SELECT int_cores_idle::bigint FROM host", &[]).expect("idle").get(0) };
    let procs = |c: &mut postgres::Client| -> i64 { c.query_one("SELECT count(*) FROM proc", &[]).expect("procs").get(0) };
    let (idle_before, procs_before) = (idle(&mut c), procs(&mut c));
    let ids: Vec<String> = launches[..2].iter().map(|l| l.run_frame.get_resource_id().to_string()).collect();
    let cores: i64 = c.query_one("SELECT sum(int_cores_reserved)::bigint FROM proc WHERE pk_proc = ANY($1)", &[&ids]).expect("cores").get(0);
    // Cuebot's first transaction committed (frame stopped, proc detached); the second never ran.
    for l in &launches[..2] {
        let frame = l.run_frame.get_frame_id();
        c.execute("UPDATE frame SET str_state = 'SUCCEEDED', int_version = int_version + 1 WHERE pk_frame = $1", &[&frame]).expect("stop");
        c.execute("UPDATE proc SET pk_frame = NULL WHERE pk_frame = $1", &[&frame]).expect("detach");
    }
    let cuebot = Cuebot::new(Mode::Pr2533);
    let done = cue_scheduler::sim::cuebot::Completion { exit_status: 0, run_secs: 1, max_rss_kib: 0 };
    let first = &launches[0].run_frame;
    cuebot.complete_frame(&mut c, first.get_frame_id(), first.get_resource_id(), done).expect("resent report");
    assert_eq!(procs(&mut c), procs_before - 1, "the resent report releases its detached proc");
    // The other proc's ping is fresh: Cuebot's sweep leaves it until it is 300 s old.
    assert_eq!(cuebot.clear_orphaned_procs(&mut c, Duration::from_secs(300)).expect("sweep"), 0);
    assert_eq!(cuebot.clear_orphaned_procs(&mut c, Duration::ZERO).expect("sweep"), 1);
    assert_eq!(cuebot.clear_orphaned_procs(&mut c, Duration::ZERO).expect("sweep"), 0);
    assert_eq!(procs(&mut c), procs_before - 2);
    assert_eq!(idle(&mut c), idle_before + cores, "both releases restored the host");
    assert_eq!(rollup_violations(&f.db), Vec::<String>::new());
}

/// A 1-core proc of (host, show, layer, job, frame), as a booking inserts it.
const INSERT_PROC: &str = "INSERT INTO proc (pk_proc, pk_host, pk_show, pk_layer, pk_job, pk_frame, int_cores_reserved, int_mem_reserved,
                                         int_mem_pre_reserved, int_mem_used, int_gpus_reserved, int_gpu_mem_reserved,
                                         int_gpu_mem_pre_reserved, b_local)
                       VALUES (gen_random_uuid()::text, $1, $2, $3, $4, $5, 100, 1048576, 1048576, 0, 0, 0, 0, false)";

/// (frame, layer, host): the job's first frame and a host to book it on.
fn first_frame(c: &mut postgres::Client, job: &str) -> (String, String, String) {
    let row = c
        .query_one(
            "SELECT f.pk_frame::text, f.pk_layer::text, h.pk_host::text FROM frame f, host h WHERE f.pk_job = $1 ORDER BY f.pk_frame LIMIT 1",
            &[&job],
        )
        .expect("frame and host");
    (row.get(0), row.get(1), row.get(2))
}

/// Another frame of the job than `frame`.
fn other_frame(c: &mut postgres::Client, job: &str, frame: &str) -> String {
    c.query_one("SELECT pk_frame::text FROM frame WHERE pk_job = $1 AND pk_frame <> $2 ORDER BY pk_frame LIMIT 1", &[&job, &frame])
        .expect("second frame")
        .get(0)
}

/// The argument at the top of `db/accounting.rs`, proved with two sessions interleaved on
/// purpose. A booking that has inserted its proc but not yet added its delta is not in the
/// reconcile's SUM; its delta then waits for the reconcile's lock and lands on the reconciled
/// value. A booking that already holds the row makes the reconcile skip it without waiting.
fn reconcile_against_a_booking_in_flight(schema: Schema, block: u8) {
    use cue_scheduler::db::accounting::{reconcile, Keys};
    let Some(f) = farm(&format!("acct_inflight_{block}"), schema, block, 1, 2) else { return };
    let job = f.jobs[0].clone();
    let mut c = f.db.client();
    let (frame, layer, host) = first_frame(&mut c, &job);
    let used = |c: &mut postgres::Client| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT (SELECT int_cores::bigint FROM job_resource WHERE pk_job = $1),
                        (SELECT COALESCE(sum(int_cores_reserved), 0)::bigint FROM proc WHERE pk_job = $1)",
                &[&job],
            )
            .expect("job row and SUM(proc)");
        (r.get(0), r.get(1))
    };
    // A release nobody decremented: the job row reads 500 too many.
    c.execute("UPDATE job_resource SET int_cores = int_cores + 500 WHERE pk_job = $1", &[&job]).expect("drift");
    let keys = Keys { jobs: [job.clone()].into_iter().collect(), ..Keys::default() };
    // 1. The booking has inserted its proc, not yet its delta.
    let mut other = f.db.client();
    let mut booking = other.transaction().expect("begin booking");
    booking.execute(INSERT_PROC, &[&host, &f.org.show_id, &layer, &job, &frame]).expect("proc");
    let mut reconciler = f.db.client();
    let done = reconcile(&mut reconciler, &keys).expect("reconcile");
    assert!(done.skipped.is_empty(), "nobody held the job row");
    assert_eq!(used(&mut c), (0, 0), "the reconcile set the row to SUM(proc) without the uncommitted proc");
    booking.execute("UPDATE job_resource SET int_cores = int_cores + 100 WHERE pk_job = $1", &[&job]).expect("delta");
    booking.commit().expect("commit booking");
    assert_eq!(used(&mut c), (100, 100), "the booking's delta landed on the reconciled value");
    // 2. The booking already holds the row: the reconcile skips it at once, and the next one
    //    (after the booking committed) is exact.
    c.execute("UPDATE job_resource SET int_cores = int_cores + 500 WHERE pk_job = $1", &[&job]).expect("drift");
    let frame2 = other_frame(&mut c, &job, &frame);
    let mut booking = other.transaction().expect("begin booking");
    booking.execute(INSERT_PROC, &[&host, &f.org.show_id, &layer, &job, &frame2]).expect("proc");
    booking.execute("UPDATE job_resource SET int_cores = int_cores + 100 WHERE pk_job = $1", &[&job]).expect("delta");
    let started = Instant::now();
    let done = reconcile(&mut reconciler, &keys).expect("reconcile");
    assert!(started.elapsed() < Duration::from_secs(1), "the reconcile did not wait for the held row");
    assert!(done.skipped.jobs.contains(&job), "the held row comes back to be tried again");
    booking.commit().expect("commit booking");
    let done = reconcile(&mut reconciler, &done.skipped).expect("reconcile again");
    assert!(done.skipped.is_empty());
    assert_eq!(used(&mut c), (200, 200), "exact once the booking committed");
}

#[test]
fn a_reconcile_never_loses_a_booking_in_flight() {
    reconcile_against_a_booking_in_flight(Schema::Project, 92);
    reconcile_against_a_booking_in_flight(Schema::Real, 93);
}

/// Folders and points are set to the sum of their jobs' rows, not to SUM(proc): the same
/// argument, proved the same way. A booking of the folder's other job that has written its job
/// row but not yet the folder is not in the sum, and its folder delta lands on the derived value;
/// a booking that holds the folder makes the reconcile skip it; a job reconciled on its own
/// brings its folder and point with it (`add_parents`).
fn folder_derivation_against_a_booking_in_flight(schema: Schema, block: u8) {
    use cue_scheduler::db::accounting::{add_parents, reconcile, Keys};
    let Some(f) = farm(&format!("acct_derive_{block}"), schema, block, 1, 2) else { return };
    let (job0, job1) = (f.jobs[0].clone(), f.jobs[1].clone());
    let mut c = f.db.client();
    let folder: String = c.query_one("SELECT pk_folder::text FROM job WHERE pk_job = $1", &[&job0]).expect("folder").get(0);
    let same: String = c.query_one("SELECT pk_folder::text FROM job WHERE pk_job = $1", &[&job1]).expect("folder").get(0);
    assert_eq!(folder, same, "both jobs in one folder");
    let (frame, layer, host) = first_frame(&mut c, &job1);
    // (folder row, SUM(proc) of the folder's jobs)
    let used = |c: &mut postgres::Client| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT (SELECT int_cores::bigint FROM folder_resource WHERE pk_folder = $1),
                        (SELECT COALESCE(sum(p.int_cores_reserved), 0)::bigint FROM proc p JOIN job j ON j.pk_job = p.pk_job
                          WHERE j.pk_folder = $1 AND NOT p.b_local)",
                &[&folder],
            )
            .expect("folder row and SUM(proc)");
        (r.get(0), r.get(1))
    };
    let folder_keys = Keys { folders: [folder.clone()].into_iter().collect(), ..Keys::default() };
    let mut reconciler = f.db.client();
    // 1. The folder drifted; a booking of job1 has written its proc and job row, not the folder.
    c.execute("UPDATE folder_resource SET int_cores = int_cores + 700 WHERE pk_folder = $1", &[&folder]).expect("drift");
    let mut other = f.db.client();
    let mut booking = other.transaction().expect("begin booking");
    booking.execute(INSERT_PROC, &[&host, &f.org.show_id, &layer, &job1, &frame]).expect("proc");
    booking.execute("UPDATE job_resource SET int_cores = int_cores + 100 WHERE pk_job = $1", &[&job1]).expect("job delta");
    let done = reconcile(&mut reconciler, &folder_keys).expect("reconcile");
    assert!(done.skipped.is_empty(), "nobody held the folder row");
    assert_eq!(used(&mut c), (0, 0), "the folder is the sum of its jobs' committed rows");
    booking.execute("UPDATE folder_resource SET int_cores = int_cores + 100 WHERE pk_folder = $1", &[&folder]).expect("folder delta");
    booking.commit().expect("commit booking");
    assert_eq!(used(&mut c), (100, 100), "the booking's folder delta landed on the derived value");
    // 2. A booking that holds the folder: skipped at once, exact on the next try.
    c.execute("UPDATE folder_resource SET int_cores = int_cores + 700 WHERE pk_folder = $1", &[&folder]).expect("drift");
    let frame2 = other_frame(&mut c, &job1, &frame);
    let mut booking = other.transaction().expect("begin booking");
    booking.execute(INSERT_PROC, &[&host, &f.org.show_id, &layer, &job1, &frame2]).expect("proc");
    booking.execute("UPDATE job_resource SET int_cores = int_cores + 100 WHERE pk_job = $1", &[&job1]).expect("job delta");
    booking.execute("UPDATE folder_resource SET int_cores = int_cores + 100 WHERE pk_folder = $1", &[&folder]).expect("folder delta");
    let started = Instant::now();
    let done = reconcile(&mut reconciler, &folder_keys).expect("reconcile");
    assert!(started.elapsed() < Duration::from_secs(1), "the reconcile did not wait for the held row");
    assert!(done.skipped.folders.contains(&folder), "the held folder comes back to be tried again");
    booking.commit().expect("commit booking");
    let done = reconcile(&mut reconciler, &done.skipped).expect("reconcile again");
    assert!(done.skipped.is_empty());
    assert_eq!(used(&mut c), (200, 200), "exact once the booking committed");
    // 3. A managed release of job1 (the proc goes, no rollup writes): reconciling the job alone
    //    brings its folder and point along, and every rollup is exact again.
    c.execute("DELETE FROM proc WHERE pk_frame = $1", &[&frame2]).expect("managed release");
    let mut keys = Keys { jobs: [job1.clone()].into_iter().collect(), ..Keys::default() };
    add_parents(&mut reconciler, &mut keys).expect("parents");
    assert!(keys.folders.contains(&folder) && keys.points.len() == 1, "the job's folder and point are due with it");
    let done = reconcile(&mut reconciler, &keys).expect("reconcile");
    assert!(done.skipped.is_empty());
    assert_eq!(used(&mut c), (100, 100));
    c.execute("DELETE FROM proc WHERE pk_frame = $1", &[&frame]).expect("managed release");
    let mut keys = Keys { jobs: [job1.clone()].into_iter().collect(), layers: [layer.clone()].into_iter().collect(), ..Keys::default() };
    keys.subs.insert((f.org.show_id.clone(), f.org.general_alloc.clone()));
    add_parents(&mut reconciler, &mut keys).expect("parents");
    reconcile(&mut reconciler, &keys).expect("reconcile");
    assert_eq!(rollup_violations(&f.db), Vec::<String>::new());
}

#[test]
fn folders_and_points_follow_their_jobs_rows_exactly() {
    folder_derivation_against_a_booking_in_flight(Schema::Project, 94);
    folder_derivation_against_a_booking_in_flight(Schema::Real, 95);
}

fn drain_under(mode: Mode, schema: Schema, block: u8) {
    let test = format!("acct_e2e_{}", mode.name());
    let Some(f) = farm(&test, schema, block, 4, 12) else { return };
    let cuebot = Arc::new(Cuebot::new(mode));
    let completer = completer(&f, cuebot, 4);
    wire_completions(&f, &completer, Duration::from_millis(150), 0.1);
    let pipeline = Pipeline::start(settings(&f.db, f.rqd.port), Arc::new(Metrics::new())).expect("start");
    let drained = wait_for(Duration::from_secs(60), || finished(&f.db));
    let left = settle(&f.db, Duration::from_secs(3));
    let metrics = Arc::clone(&pipeline.ctx.metrics);
    pipeline.shutdown(Duration::from_secs(5));
    let report = stop_completer(&f, completer);
    assert!(drained, "mode {}: the farm did not drain", mode.name());
    assert_eq!(report.errors, Vec::<String>::new(), "Cuebot's releases failed");
    assert_eq!(left, Vec::<String>::new(), "mode {}: rollups differ from SUM(proc)", mode.name());
    let drift = metrics.accounting_drift_corrected_total.with_label_values(&["job_resource", "core_units"]).get();
    match mode {
        // Every managed release was announced: nothing to call drift.
        Mode::Notify | Mode::Dec2025 | Mode::Pr2533 => assert_eq!(drift, 0, "mode {}", mode.name()),
        // Nobody announces mode (c)'s releases: the periodic reconcile repairs them, counted.
        Mode::Silent => assert!(drift > 0, "mode (c) corrections are counted as drift"),
    }
}

#[test]
fn drains_exactly_under_every_cuebot_mode_project_schema() {
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        drain_under(mode, Schema::Project, 50 + i as u8);
    }
}

#[test]
fn drains_exactly_under_every_cuebot_mode_real_schema() {
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        drain_under(mode, Schema::Real, 54 + i as u8);
    }
}

/// Two instances book while Cuebot releases for 20 s; samples during the run must converge to
/// zero within 1 s of any quiet moment, and the end state is exact.
#[test]
fn two_instances_and_sustained_releases_stay_exact() {
    let Some(f) = farm("acct_sustained", Schema::Real, 58, 10, 400) else { return };
    let completer = completer(&f, Arc::new(Cuebot::new(Mode::Notify)), 4);
    wire_completions(&f, &completer, Duration::from_millis(300), 0.05);
    let a = Pipeline::start(settings(&f.db, f.rqd.port), Arc::new(Metrics::new())).expect("start a");
    let b = Pipeline::start(settings(&f.db, f.rqd.port), Arc::new(Metrics::new())).expect("start b");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    // Stop booking (pause every job), let the running frames finish, then all must be exact.
    let mut c = f.db.client();
    c.execute("UPDATE job SET b_paused = true", &[]).expect("pause");
    wait_for(Duration::from_secs(10), || completer.pending() == 0);
    let released = completer.released();
    let left = settle(&f.db, Duration::from_secs(5));
    let (ma, mb) = (Arc::clone(&a.ctx.metrics), Arc::clone(&b.ctx.metrics));
    let leaders = ma.accounting_leader.get() + mb.accounting_leader.get();
    // The leader stops first: the other instance takes over and reconciles from then on.
    let (first, second) = if ma.accounting_leader.get() == 1 { (a, b) } else { (b, a) };
    let survivor = Arc::clone(&second.ctx.metrics);
    first.shutdown(Duration::from_secs(5));
    let took_over = wait_for(Duration::from_secs(5), || survivor.accounting_leader.get() == 1);
    second.shutdown(Duration::from_secs(5));
    let report = stop_completer(&f, completer);
    assert_eq!(leaders, 1, "exactly one instance reconciles");
    assert!(took_over, "the other instance took over as accounting leader");
    assert!(survivor.accounting_full_reconciles_total.with_label_values(&["takeover"]).get() >= 1);
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert!(released >= 200, "only {released} releases in 20 s");
    assert_eq!(report.errors, Vec::<String>::new(), "Cuebot's releases failed");
    assert_eq!(left, Vec::<String>::new(), "rollups differ from SUM(proc) after {released} releases");
    let lag = |m: &Metrics| m.accounting_reconcile_lag_seconds.get_sample_count();
    assert!(lag(&ma) + lag(&mb) > 0, "releases were reconciled from notifications");
    for m in [&ma, &mb] {
        for table in cue_scheduler::db::accounting::TABLES {
            assert_eq!(m.accounting_drift_corrected_total.with_label_values(&[table, "core_units"]).get(), 0, "unexplained drift on {table}");
        }
    }
}

#[test]
fn a_killed_listener_is_replaced_and_nothing_is_lost() {
    let Some(f) = farm("acct_kill_listener", Schema::Project, 59, 4, 40) else { return };
    let completer = completer(&f, Arc::new(Cuebot::new(Mode::Notify)), 3);
    wire_completions(&f, &completer, Duration::from_millis(100), 0.0);
    let mut s = settings(&f.db, f.rqd.port);
    s.accounting.recompute_interval = Duration::from_secs(3600); // only the reconnect may heal
    let pipeline = Pipeline::start(s, Arc::new(Metrics::new())).expect("start");
    let mut admin = f.db.client();
    let mut killed = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        killed += admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name LIKE 'cue-scheduler accounting listener%' AND datname = current_database()",
                &[],
            )
            .expect("terminate")
            .len();
    }
    let drained = wait_for(Duration::from_secs(60), || finished(&f.db));
    let left = settle(&f.db, Duration::from_secs(3));
    let metrics = Arc::clone(&pipeline.ctx.metrics);
    pipeline.shutdown(Duration::from_secs(5));
    stop_completer(&f, completer);
    assert!(killed >= 2, "the listener's backend was found and killed ({killed})");
    assert!(drained);
    assert_eq!(left, Vec::<String>::new());
    assert!(metrics.accounting_full_reconciles_total.with_label_values(&["reconnect"]).get() >= 1);
    assert_eq!(metrics.accounting_listener_up.get(), 1, "listening again");
}

#[test]
fn releases_while_stopped_are_healed_within_10s_of_start() {
    let Some(f) = farm("acct_offline", Schema::Real, 60, 4, 10) else { return };
    let pipeline = Pipeline::start(settings(&f.db, f.rqd.port), Arc::new(Metrics::new())).expect("start");
    assert!(wait_for(Duration::from_secs(20), || f.rqd.launch_count() >= 8));
    std::thread::sleep(Duration::from_millis(300));
    pipeline.shutdown(Duration::from_secs(5));
    // Cuebot releases everything while no scheduler listens.
    let cuebot = Cuebot::new(Mode::Notify);
    let mut c = f.db.client();
    for l in f.rqd.launches() {
        let rf = &l.run_frame;
        cuebot
            .complete_frame(&mut c, rf.get_frame_id(), rf.get_resource_id(), cue_scheduler::sim::cuebot::Completion { exit_status: 0, run_secs: 1, max_rss_kib: 0 })
            .expect("release");
    }
    let stale = rollup_violations(&f.db);
    assert!(stale.iter().any(|v| v.contains("(lagging ok)")), "the releases left managed rollups stale: {stale:?}");
    // Book nothing new after the restart: only the healing is measured.
    c.execute("UPDATE job SET b_paused = true", &[]).expect("pause");
    let mut s = settings(&f.db, f.rqd.port);
    s.accounting.recompute_interval = Duration::from_secs(3600); // the start-up reconcile alone
    let started = Instant::now();
    let pipeline = Pipeline::start(s, Arc::new(Metrics::new())).expect("restart");
    let healed = wait_for(Duration::from_secs(10), || {
        rollup_violations(&f.db).is_empty()
    });
    let took = started.elapsed();
    let metrics = Arc::clone(&pipeline.ctx.metrics);
    pipeline.shutdown(Duration::from_secs(5));
    assert!(healed, "not healed within 10 s of the start");
    assert!(metrics.accounting_full_reconciles_total.with_label_values(&["startup"]).get() >= 1);
    eprintln!("healed {} stale rows in {took:?}", stale.len());
}

/// Mid-run, the booked show stops being managed and another one becomes managed, with Cuebot's
/// faithful 30 s flag cache: for half a minute Cuebot still releases each the old way.
#[test]
fn shows_flipped_both_ways_mid_run_change_hands_without_drift() {
    let Some(f) = farm("acct_flip", Schema::Project, 61, 6, 60) else { return };
    // A second show, unmanaged at first, with its own folder and work.
    let mut seed = f.db.farm();
    let showb = seed.show("showb", false).expect("showb");
    let folder_b = seed.folder(&showb, &f.org.dept_id, "showb").expect("folder");
    seed.subscription(&showb, &f.org.general_alloc, 1_000_000, 1_000_000).expect("sub");
    let mut spec = job(&f.org, "showb-flip-bob", vec![LayerSpec::new("render", "1-60", "general")]);
    spec.show_id = showb.clone();
    spec.show_name = "showb".into();
    spec.folder_id = folder_b;
    let job_b = seed.job(&spec).expect("job b").job_id;
    let cuebot = Arc::new(Cuebot::new(Mode::Notify));
    let completer = completer(&f, Arc::clone(&cuebot), 3);
    wire_completions(&f, &completer, Duration::from_millis(400), 0.0);
    let mut c = f.db.client();
    // Cuebot looks showb up (an admin raises its job cap) and caches "not managed".
    cuebot.set_job_max_cores(&mut c, &job_b, 200_000).expect("cap");
    let mut s = settings(&f.db, f.rqd.port);
    s.tunables.cluster_reload_interval = Duration::from_secs(1);
    let pipeline = Pipeline::start(s, Arc::new(Metrics::new())).expect("start");
    std::thread::sleep(Duration::from_secs(3));
    // The operator's flips (cueadmin -scheduler-managed showa off / showb on).
    c.batch_execute(&format!(
        "UPDATE show SET b_scheduler_managed = false WHERE pk_show = '{}'; UPDATE show SET b_scheduler_managed = true WHERE pk_show = '{showb}'",
        f.org.show_id
    ))
    .expect("flip");
    // showb is booked once the scheduler reloads its clusters.
    let b_booked = wait_for(Duration::from_secs(15), || {
        let mut c = f.db.client();
        count(&mut c, &format!("SELECT count(*) FROM frame f JOIN job j USING (pk_job) WHERE j.pk_show = '{showb}' AND f.str_state <> 'WAITING'")) > 0
    });
    // Releases of both shows go on across Cuebot's 30 s cache window.
    std::thread::sleep(Duration::from_secs(32));
    let metrics = Arc::clone(&pipeline.ctx.metrics);
    pipeline.shutdown(Duration::from_secs(5));
    wait_for(Duration::from_secs(10), || completer.pending() == 0);
    let report = stop_completer(&f, completer);
    let left = settle(&f.db, Duration::from_secs(5));
    assert!(b_booked, "the newly managed show was scheduled");
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(left, Vec::<String>::new(), "drift after the flips");
    let drift: u64 = cue_scheduler::db::accounting::TABLES
        .iter()
        .map(|t| metrics.accounting_drift_corrected_total.with_label_values(&[t, "core_units"]).get())
        .sum();
    assert_eq!(drift, 0, "both hand-overs were exact without repair");
}

/// Cuebot booked a frame with a fraction of a core (50 units) before the show was handed to
/// the scheduler; its managed release announces `"cores":0`. The reconcile still comes out exact.
#[test]
fn a_fractional_reservation_comes_out_exact() {
    let Some(f) = farm("acct_fraction", Schema::Real, 62, 2, 2) else { return };
    let mut c = f.db.client();
    let host_id: String = c.query_one("SELECT pk_host::text FROM host ORDER BY str_name LIMIT 1", &[]).expect("host").get(0);
    let frame_id: String = c
        .query_one("SELECT f.pk_frame::text FROM frame f JOIN layer l USING (pk_layer) WHERE l.str_name = 'half' ORDER BY f.str_name LIMIT 1", &[])
        .expect("frame")
        .get(0);
    let cuebot = Cuebot::new(Mode::Notify);
    let proc_id = cuebot.book_frame(&mut c, &frame_id, &host_id, 50).expect("Cuebot books").expect("booked");
    assert_eq!(rollup_violations(&f.db), Vec::<String>::new(), "Cuebot's booking is exact");
    let mut s = settings(&f.db, f.rqd.port);
    s.dry_run = true; // only accounting is under test
    let pipeline = Pipeline::start(s, Arc::new(Metrics::new())).expect("start");
    std::thread::sleep(Duration::from_millis(500)); // listening
    let mut listener = f.db.client();
    listener.batch_execute("LISTEN acct_release").expect("listen");
    let released = Instant::now();
    cuebot
        .complete_frame(&mut c, &frame_id, &proc_id, cue_scheduler::sim::cuebot::Completion { exit_status: 0, run_secs: 1, max_rss_kib: 0 })
        .expect("release");
    let payload: String = listener.notifications().timeout_iter(Duration::from_secs(2)).next().expect("listen").expect("a notification").payload().to_string();
    let exact = wait_for(Duration::from_secs(1), || rollup_violations(&f.db).is_empty());
    let took = released.elapsed();
    pipeline.shutdown(Duration::from_secs(5));
    assert!(payload.contains("\"cores\":0,"), "Cuebot announces whole cores: {payload}");
    assert!(exact, "exact within 1 s of the release: {:?}", rollup_violations(&f.db));
    eprintln!("fractional release reconciled in {took:?}");
}

/// A raised cap (`acct_limit_change`) and a reconciled release wake the clusters they affect:
/// the waiting work books within a second although the cluster sleeps for a minute.
#[test]
fn cap_changes_and_releases_wake_sleeping_clusters_within_a_second() {
    let Some(f) = farm("acct_wake", Schema::Project, 65, 2, 6) else { return };
    let mut c = f.db.client();
    // One job only, capped at one core: one frame runs, the rest wait on the cap.
    c.execute("UPDATE job SET b_paused = true WHERE pk_job = $1", &[&f.jobs[1]]).expect("pause");
    c.execute("UPDATE job_resource SET int_max_cores = 100 WHERE pk_job = $1", &[&f.jobs[0]]).expect("cap");
    let cuebot = Cuebot::new(Mode::Notify);
    let mut s = settings(&f.db, f.rqd.port);
    s.tunables.cluster_empty_sleep = Duration::from_secs(60);
    s.tunables.cluster_saturated_sleep = Duration::from_secs(60);
    s.tunables.active_scan_interval = Duration::from_secs(60);
    s.accounting.recompute_interval = Duration::from_secs(3600);
    let pipeline = Pipeline::start(s, Arc::new(Metrics::new())).expect("start");
    assert!(wait_for(Duration::from_secs(10), || f.rqd.launch_count() == 1), "one frame under the cap");
    std::thread::sleep(Duration::from_secs(1)); // the cluster has gone to sleep
    assert_eq!(f.rqd.launch_count(), 1);
    // The admin raises the cap to two cores: one more frame within a second.
    let raised = Instant::now();
    cuebot.set_job_max_cores(&mut c, &f.jobs[0], 200).expect("raise");
    let woke = wait_for(Duration::from_secs(1), || f.rqd.launch_count() == 2);
    let after_raise = raised.elapsed();
    // A frame ends (managed release: no rollup writes); once reconciled, the freed room is used.
    let first = f.rqd.launches()[0].run_frame.clone();
    let released = Instant::now();
    cuebot
        .complete_frame(&mut c, first.get_frame_id(), first.get_resource_id(), cue_scheduler::sim::cuebot::Completion { exit_status: 0, run_secs: 1, max_rss_kib: 0 })
        .expect("release");
    let refilled = wait_for(Duration::from_secs(1), || f.rqd.launch_count() == 3);
    let after_release = released.elapsed();
    pipeline.shutdown(Duration::from_secs(5));
    assert!(woke, "a raised cap booked waiting work within 1 s ({after_raise:?})");
    assert!(refilled, "a release booked waiting work within 1 s ({after_release:?})");
    eprintln!("woken by the cap change after {after_raise:?}, by the release after {after_release:?}");
}
