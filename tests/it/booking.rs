//! End-to-end booking through the real pipeline.

use crate::support::{self, count, host, job, org, wait_for, wait_settled, Schema, TestDb};
use cue_scheduler::ops::metrics::Metrics;
use cue_scheduler::pipeline::Pipeline;
use cue_scheduler::sim::fake_rqd::{loopback_address, Behaviour, FakeRqd};
use cue_scheduler::sim::farm::LayerSpec;
use grpcio::RpcStatusCode;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const GIB: i64 = 1_048_576;

struct Scenario {
    db: TestDb,
    rqd: FakeRqd,
    hosts: Vec<String>,
}

/// Three general hosts (one also tagged `fx`) and jobs with eligible and ineligible layers.
/// Eligible: render (8 frames, 1 core, 2 GiB), comp (2 chunks, threadable 2 cores, 4 GiB),
/// fx (2 frames, tag fx). Ineligible: huge (1000 GiB), wrongtag, and a paused job.
fn standard(test: &str, schema: Schema, block: u8) -> Option<Scenario> {
    let db = TestDb::new(test, schema)?;
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    let hosts: Vec<String> = (0..3).map(|i| loopback_address(block, i)).collect();
    farm.hosts(&[
        host(&hosts[0], &o.general_alloc, "general", 16, 32),
        host(&hosts[1], &o.general_alloc, "general", 16, 64).tag("fx", "MANUAL"),
        host(&hosts[2], &o.general_alloc, "general", 4, 8),
    ])
    .expect("hosts");
    let mut render = LayerSpec::new("render", "1-8", "general");
    render.command = "render -s #FRAME_START# -e #FRAME_END# -l #LAYER# -j #JOB# #ZFRAME#".into();
    let mut comp = LayerSpec::new("comp", "1-4", "general | fx");
    comp.chunk = 2;
    comp.threadable = true;
    comp.cores_min = 200;
    comp.mem_min_kib = 4 * GIB;
    let fx = LayerSpec::new("fx", "1-2", "fx");
    let mut spec = job(&o, "showa-sh01-alice_render", vec![render, comp, fx]);
    spec.uid = Some(1234);
    spec.env = vec![("STUDIO".into(), "demo".into()), ("CUE_SHOW".into(), "overridden".into())];
    farm.job(&spec).expect("job");
    let mut huge = LayerSpec::new("huge", "1", "general");
    huge.mem_min_kib = 1000 * GIB;
    let wrong = LayerSpec::new("wrongtag", "1-3", "nosuchtag");
    farm.job(&job(&o, "showa-sh02-bob_misc", vec![huge, wrong])).expect("job");
    let mut paused = job(&o, "showa-sh03-carol_paused", vec![LayerSpec::new("render", "1-3", "general")]);
    paused.paused = true;
    farm.job(&paused).expect("job");
    let rqd = FakeRqd::start(&hosts).expect("fake rqd");
    Some(Scenario { db, rqd, hosts })
}

fn frame_states(db: &TestDb) -> HashMap<String, (String, String)> {
    let mut client = db.client();
    client
        .query("SELECT f.str_name || '@' || j.str_name, f.pk_frame, f.str_state FROM frame f JOIN job j USING (pk_job)", &[])
        .expect("frames")
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get::<_, String>(1), r.get::<_, String>(2))))
        .collect()
}

fn run_standard(test: &str, schema: Schema, block: u8) {
    let Some(s) = standard(test, schema, block) else {
        eprintln!("{test}: real schema not available, skipped");
        return;
    };
    let pipeline = Pipeline::start(support::settings(&s.db, s.rqd.port), Arc::new(Metrics::new())).expect("start");
    let launched = wait_for(Duration::from_secs(20), || s.rqd.launch_count() >= 12);
    wait_settled(Duration::from_secs(5), Duration::from_millis(600), || s.rqd.launch_count() as i64);
    let metrics = Arc::clone(&pipeline.ctx.metrics);
    pipeline.shutdown(Duration::from_secs(5));
    let waiting: Vec<String> = frame_states(&s.db).into_iter().filter(|(_, (_, st))| st == "WAITING").map(|(k, _)| k).collect();
    assert!(launched, "only {} launches; waiting: {waiting:?}", s.rqd.launch_count());

    let launches = s.rqd.launches();
    let mut per_frame: HashMap<String, usize> = HashMap::new();
    for l in &launches {
        *per_frame.entry(l.run_frame.get_frame_id().to_string()).or_default() += 1;
    }
    assert!(per_frame.values().all(|n| *n == 1), "a frame was launched twice: {per_frame:?}");
    let states = frame_states(&s.db);
    let running: Vec<&String> = states.iter().filter(|(_, (_, st))| st == "RUNNING").map(|(k, _)| k).collect();
    assert_eq!(running.len(), 12, "running: {running:?}");
    assert_eq!(launches.len(), 12);
    for name in ["0001-huge@showa-sh02-bob_misc", "0002-wrongtag@showa-sh02-bob_misc", "0001-render@showa-sh03-carol_paused"] {
        assert_eq!(states[name].1, "WAITING", "{name}");
    }
    // fx frames only on the fx host.
    for l in &launches {
        if l.run_frame.get_frame_name().ends_with("-fx") {
            assert_eq!(l.host, s.hosts[1], "fx frame on a host without the fx tag");
        }
    }
    check_run_frames(&s, &launches);
    assert_eq!(s.db.violations(), Vec::<String>::new());
    assert_eq!(metrics.frames_dispatched_total.with_label_values(&["showa"]).get(), 12);
}

fn check_run_frames(s: &Scenario, launches: &[cue_scheduler::sim::fake_rqd::Recorded]) {
    let mut client = s.db.client();
    for l in launches {
        let rf = &l.run_frame;
        let row = client
            .query_one(
                "SELECT p.pk_proc::text, p.int_cores_reserved, f.str_host::text, h.str_name::text, p.int_mem_reserved
                 FROM proc p JOIN frame f ON f.pk_frame = p.pk_frame JOIN host h ON h.pk_host = p.pk_host
                 WHERE p.pk_frame = $1",
                &[&rf.get_frame_id()],
            )
            .expect("proc of launched frame");
        let (proc_id, cores, str_host, host_name, mem): (String, i64, String, String, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert_eq!(rf.get_resource_id(), proc_id);
        assert_eq!(i64::from(rf.get_num_cores()), cores);
        assert_eq!(str_host, host_name);
        assert_eq!(l.host, host_name, "launched on a different host than booked");
        let env = rf.get_environment();
        assert_eq!(env["CUE_THREADS"], (cores / 100).max(1).to_string());
        assert_eq!(env["CUE_MEMORY"], mem.to_string());
        assert_eq!(env["CUE_FRAME"], rf.get_frame_name());
        assert_eq!(env["CUE_FRAME_ID"], rf.get_frame_id());
        assert_eq!(env["CUE_SHOW"], "showa", "CUE_* overrides job_env");
        assert_eq!(env["STUDIO"], "demo");
        assert_eq!(rf.get_soft_memory_limit(), (mem as f64 * 1.6) as i64);
        assert_eq!(rf.get_hard_memory_limit(), mem * 2);
        assert_eq!(rf.get_log_dir(), "/tmp/cue-logs");
        assert_eq!(rf.get_user_name(), "alice");
        assert!(rf.has_uid() && rf.get_uid() == 1234);
        assert!(rf.get_start_time() > 1_700_000_000_000);
        if rf.get_frame_name() == "0005-render" {
            assert_eq!(rf.get_command(), "render -s 5 -e 5 -l render -j showa-sh01-alice_render 0005");
            assert_eq!(env["CUE_THREADABLE"], "0");
            assert_eq!(cores, 100, "non-threadable frames reserve one core");
        }
        if rf.get_frame_name() == "0003-comp" {
            assert_eq!(env["CUE_RANGE"], "1-4");
            assert_eq!(env["CUE_CHUNK"], "2");
            assert_eq!(env["CUE_IFRAME"], "3");
            assert_eq!(env["CUE_THREADABLE"], "1");
            assert!(cores >= 200 && cores % 100 == 0, "threadable: whole cores, at least the minimum ({cores})");
        }
    }
}

#[test]
fn end_to_end_books_every_eligible_frame_once() {
    run_standard("e2e", Schema::Project, 11);
}

#[test]
fn end_to_end_on_the_real_cuebot_schema() {
    run_standard("e2e", Schema::Real, 12);
}

/// Two scheduler instances on one farm: demand far over supply and a burst below the hosts'
/// capacity. No frame may start twice, no host or subscription may go over.
fn two_instances(schema: Schema, block: u8) {
    let Some(db) = TestDb::new("twoinst", schema) else { return };
    let mut farm = db.farm();
    let o = org(&mut farm, 4_000);
    let hosts: Vec<String> = (0..6).map(|i| loopback_address(block, i)).collect();
    let specs: Vec<_> = hosts.iter().map(|h| host(h, &o.general_alloc, "general", 8, 16)).collect();
    farm.hosts(&specs).expect("hosts");
    for j in 0..4 {
        let layers = (0..2).map(|l| LayerSpec::new(&format!("l{l}"), "1-20", "general")).collect();
        farm.job(&job(&o, &format!("showa-race{j}"), layers)).expect("job");
    }
    let rqd = FakeRqd::start(&hosts).expect("fake rqd");
    let a = Pipeline::start(support::settings(&db, rqd.port), Arc::new(Metrics::new())).expect("start a");
    let b = Pipeline::start(support::settings(&db, rqd.port), Arc::new(Metrics::new())).expect("start b");
    let mut client = db.client();
    wait_for(Duration::from_secs(20), || count(&mut client, "SELECT count(*) FROM proc") >= 40);
    wait_settled(Duration::from_secs(5), Duration::from_millis(800), || rqd.launch_count() as i64);
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
    let launches = rqd.launches();
    let mut per_frame: HashMap<String, usize> = HashMap::new();
    for l in &launches {
        *per_frame.entry(l.run_frame.get_frame_id().to_string()).or_default() += 1;
    }
    assert!(per_frame.values().all(|n| *n == 1), "a frame was launched twice");
    let running = count(&mut client, "SELECT count(*) FROM frame WHERE str_state = 'RUNNING'");
    assert_eq!(running, 40, "burst of 40 cores, 1 core per frame: exactly 40 running");
    assert_eq!(launches.len(), 40);
    assert_eq!(count(&mut client, "SELECT max(int_cores)::bigint FROM subscription"), 4_000);
    assert_eq!(count(&mut client, "SELECT count(*) FROM host WHERE int_cores_idle < 0 OR int_mem_idle < 0"), 0);
    assert_eq!(db.violations(), Vec::<String>::new());
}

#[test]
fn two_instances_never_double_book() {
    two_instances(Schema::Project, 13);
}

#[test]
fn two_instances_never_double_book_on_the_real_schema() {
    two_instances(Schema::Real, 14);
}

/// RQD failures after commit: UNAVAILABLE on one host, a hang past the deadline on the other.
/// Both frames go back to WAITING with exit 299, procs gone, hosts and rollups restored, a kill
/// sent, and the hosts backed off.
#[test]
fn rqd_failure_compensates_and_backs_off() {
    let db = TestDb::new("rqdfail", Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    let hosts: Vec<String> = (0..2).map(|i| loopback_address(15, i)).collect();
    let ids = farm
        .hosts(&[host(&hosts[0], &o.general_alloc, "general", 1, 8), host(&hosts[1], &o.general_alloc, "general", 1, 8)])
        .expect("hosts");
    farm.job(&job(&o, "showa-fail", vec![LayerSpec::new("render", "1-2", "general")])).expect("job");
    let rqd = FakeRqd::start(&hosts).expect("fake rqd");
    rqd.set_behaviour(&hosts[0], Behaviour::Fail(RpcStatusCode::UNAVAILABLE, "connection refused".into()));
    rqd.set_behaviour(&hosts[1], Behaviour::Hang);
    let mut settings = support::settings(&db, rqd.port);
    settings.rqd_timeout = Duration::from_millis(300);
    let pipeline = Pipeline::start(settings, Arc::new(Metrics::new())).expect("start");
    let ctx = Arc::clone(&pipeline.ctx);
    let compensated = wait_for(Duration::from_secs(15), || ctx.frames_compensated.load(Ordering::SeqCst) >= 2);
    let backed_off: Vec<bool> = hosts.iter().map(|h| ctx.cache.is_reserved(&ids[h])).collect();
    pipeline.shutdown(Duration::from_secs(5));
    assert!(compensated, "compensations: {}", ctx.frames_compensated.load(Ordering::SeqCst));
    assert_eq!(backed_off, [true, true], "both hosts backed off after their failures");
    let mut client = db.client();
    assert_eq!(count(&mut client, "SELECT count(*) FROM proc"), 0);
    assert_eq!(count(&mut client, "SELECT count(*) FROM frame WHERE str_state = 'WAITING' AND int_exit_status = 299"), 2);
    assert_eq!(count(&mut client, "SELECT count(*) FROM host WHERE int_cores_idle <> int_cores OR int_mem_idle <> int_mem"), 0);
    assert_eq!(count(&mut client, "SELECT sum(int_cores)::bigint FROM subscription"), 0);
    assert_eq!(count(&mut client, "SELECT sum(int_waiting_count)::bigint FROM job_stat"), 2);
    let killed: Vec<String> = rqd.kills().into_iter().map(|(h, _)| h).collect();
    assert!(killed.contains(&hosts[0]) && killed.contains(&hosts[1]), "kills: {killed:?}");
    assert!(ctx.metrics.launch_failures_total.with_label_values(&["unavailable"]).get() >= 1);
    assert!(ctx.metrics.launch_failures_total.with_label_values(&["deadline_exceeded"]).get() >= 1);
    assert_eq!(ctx.metrics.frames_dispatched_total.with_label_values(&["showa"]).get(), 0);
    assert_eq!(db.violations(), Vec::<String>::new());
}

/// Dry run books in the database and calls no RQD.
#[test]
fn dry_run_books_without_calling_rqd() {
    let db = TestDb::new("dryrun", Schema::Project).expect("db");
    let mut farm = db.farm();
    let o = org(&mut farm, 100_000);
    let hosts: Vec<String> = (0..2).map(|i| loopback_address(16, i)).collect();
    farm.hosts(&[host(&hosts[0], &o.general_alloc, "general", 4, 8), host(&hosts[1], &o.general_alloc, "general", 4, 8)])
        .expect("hosts");
    farm.job(&job(&o, "showa-dry", vec![LayerSpec::new("render", "1-6", "general")])).expect("job");
    let rqd = FakeRqd::start(&hosts).expect("fake rqd");
    let mut settings = support::settings(&db, rqd.port);
    settings.dry_run = true;
    let pipeline = Pipeline::start(settings, Arc::new(Metrics::new())).expect("start");
    let mut client = db.client();
    let all = wait_for(Duration::from_secs(10), || count(&mut client, "SELECT count(*) FROM proc") == 6);
    let metrics = Arc::clone(&pipeline.ctx.metrics);
    pipeline.shutdown(Duration::from_secs(5));
    assert!(all);
    assert_eq!(rqd.launch_count(), 0);
    assert_eq!(metrics.frames_dispatched_total.with_label_values(&["showa"]).get(), 6);
    assert_eq!(db.violations(), Vec::<String>::new());
}
