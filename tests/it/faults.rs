//! Faults that must not strand a booking (issue 12, item 4): a connection dropped exactly at
//! COMMIT (in both directions), a booking left behind by a process that died before launching
//! it, and an RQD that accepts a frame and loses it.

use crate::support::{self, host, job, org, wait_for, Org, Schema, TestDb};
use cue_scheduler::db::booking::{BatchPlan, BookOutcome, Booker, PlannedFrame};
use cue_scheduler::ops::metrics::Metrics;
use cue_scheduler::pipeline::Pipeline;
use cue_scheduler::sim::fake_rqd::{loopback_address, Behaviour, FakeRqd};
use cue_scheduler::sim::farm::{JobIds, LayerSpec};
use cue_scheduler::sim::proxy::{CommitCutter, CUT_AFTER_COMMIT, CUT_INSTEAD_OF_COMMIT};
use std::sync::Arc;
use std::time::Duration;

fn cut_commit(mode: u8, test: &str) {
    let Some(db) = TestDb::new(test, Schema::Real) else { return };
    let mut f = db.farm();
    let o = org(&mut f, 1_000_000);
    let hosts = f.hosts(&[host("cut-h", &o.general_alloc, "general", 8, 32)]).expect("hosts");
    let ids = f.job(&job(&o, "showa-cut", vec![LayerSpec::new("render", "1-4", "general")])).expect("job");
    let proxy = CommitCutter::start(db.server.port).expect("proxy");
    let mut settings = db.db_settings();
    settings.connection_string = settings.connection_string.replace(&format!("port={}", db.server.port), &format!("port={}", proxy.port));
    let mut booker = Booker::new(settings, true);
    let plan = render_plan(&o, &ids, &hosts["cut-h"], "cut-h", &["0001-render", "0002-render"]);
    // A first booking through the proxy warms the connection (prepared statements).
    let warm = booker.book(&render_plan(&o, &ids, &hosts["cut-h"], "cut-h", &["0003-render"])).expect("warm");
    assert!(matches!(warm, BookOutcome::Booked { .. }));
    proxy.arm(mode);
    let outcome = booker.book(&plan).expect("the lost COMMIT is settled, not an error");
    let mut c = db.client();
    let procs: i64 = c.query_one("SELECT count(*) FROM proc", &[]).expect("procs").get(0);
    match (mode, outcome) {
        (CUT_AFTER_COMMIT, BookOutcome::Booked { frames, .. }) => {
            assert_eq!(frames.len(), 2, "both committed frames come back to be launched");
            assert_eq!(procs, 3);
        }
        (CUT_INSTEAD_OF_COMMIT, BookOutcome::NothingStarted) => assert_eq!(procs, 1, "nothing committed"),
        (_, other) => panic!("mode {mode}: unexpected {other:?} with {procs} procs"),
    }
    assert_eq!(db.violations(), Vec::<String>::new());
}

/// One-core frames of the job's `render` layer on one host.
fn render_plan<'a>(o: &'a Org, ids: &'a JobIds, host_id: &'a str, host_name: &'a str, frames: &[&str]) -> BatchPlan<'a> {
    BatchPlan {
        host_id,
        host_name,
        show_id: &o.show_id,
        job_id: &ids.job_id,
        layer_id: &ids.layers["render"],
        layer_limited: false,
        mem: 1_048_576,
        gpus: 0,
        gpu_mem: 0,
        mem_used_initial: 262_144,
        update_stat_on_book: false,
        frames: frames.iter().map(|n| PlannedFrame { frame_id: ids.frames[*n].clone(), version: 0, cores: 100 }).collect(),
    }
}

#[test]
fn a_connection_cut_after_commit_launches_what_committed() {
    cut_commit(CUT_AFTER_COMMIT, "fault_cut_after");
}

#[test]
fn a_connection_cut_before_commit_books_nothing() {
    cut_commit(CUT_INSTEAD_OF_COMMIT, "fault_cut_before");
}

fn quick_recovery(s: &mut cue_scheduler::config::settings::Settings) {
    s.recovery.first_sweep_delay = Duration::from_millis(200);
    s.recovery.sweep_interval = Duration::from_millis(500);
    s.recovery.grace = Duration::from_secs(1);
    s.recovery.unreachable_grace = Duration::from_secs(2);
}

/// A process booked and died before launching (kill -9 between COMMIT and LaunchFrame): the
/// next instance finds the booking, compensates it, and books and launches the frame again.
#[test]
fn a_booking_left_by_a_dead_process_is_compensated_and_rebooked() {
    let Some(db) = TestDb::new("fault_dead_booker", Schema::Real) else { return };
    let mut f = db.farm();
    let o = org(&mut f, 1_000_000);
    let name = loopback_address(63, 0);
    let hosts = f.hosts(&[host(&name, &o.general_alloc, "general", 8, 32)]).expect("hosts");
    let ids = f.job(&job(&o, "showa-dead", vec![LayerSpec::new("render", "1", "general")])).expect("job");
    // "The dead process": a committed booking that nobody launched.
    let mut booker = Booker::new(db.db_settings(), true);
    let plan = render_plan(&o, &ids, &hosts[&name], &name, &["0001-render"]);
    assert!(matches!(booker.book(&plan).expect("book"), BookOutcome::Booked { .. }));
    let rqd = FakeRqd::start(std::slice::from_ref(&name)).expect("rqd");
    let mut s = support::settings(&db, rqd.port);
    quick_recovery(&mut s);
    let started = std::time::Instant::now();
    let pipeline = Pipeline::start(s, Arc::new(Metrics::new())).expect("start");
    let relaunched = wait_for(Duration::from_secs(15), || rqd.launch_count() >= 1);
    let took = started.elapsed();
    let recovered = pipeline.ctx.metrics.stranded_bookings_recovered_total.get();
    pipeline.shutdown(Duration::from_secs(5));
    assert!(relaunched, "the frame was compensated and launched again");
    assert_eq!(recovered, 1);
    eprintln!("stranded booking recovered and relaunched {took:?} after start-up");
    assert_eq!(db.violations(), Vec::<String>::new());
}

/// An RQD that accepts frames and loses them: the sweep notices the frames are not running
/// there and compensates them; the frames run elsewhere in the end.
#[test]
fn frames_an_rqd_accepted_and_lost_are_recovered() {
    let Some(db) = TestDb::new("fault_vanish", Schema::Project) else { return };
    let mut f = db.farm();
    let o = org(&mut f, 1_000_000);
    let names: Vec<String> = (0..2).map(|i| loopback_address(64, i)).collect();
    f.hosts(&[host(&names[0], &o.general_alloc, "general", 8, 32), host(&names[1], &o.general_alloc, "general", 2, 32)]).expect("hosts");
    f.job(&job(&o, "showa-vanish", vec![LayerSpec::new("render", "1-10", "general")])).expect("job");
    let rqd = FakeRqd::start(&names).expect("rqd");
    rqd.set_behaviour(&names[0], Behaviour::Vanish);
    let mut s = support::settings(&db, rqd.port);
    quick_recovery(&mut s);
    let pipeline = Pipeline::start(s, Arc::new(Metrics::new())).expect("start");
    assert!(wait_for(Duration::from_secs(10), || rqd.launch_count() >= 8), "launched {}", rqd.launch_count());
    // The big host loses everything it is given; stop giving it work once it has been caught.
    let caught = wait_for(Duration::from_secs(15), || pipeline.ctx.metrics.stranded_bookings_recovered_total.get() >= 1);
    let mut c = db.client();
    c.execute("UPDATE host SET str_lock_state = 'LOCKED' WHERE str_name = $1", &[&names[0]]).expect("lock");
    // Frames the vanishing host held are all recovered within a sweep or two.
    let recovered_all = wait_for(Duration::from_secs(15), || {
        let mut c = db.client();
        c.query_one("SELECT count(*) FROM proc p JOIN host h USING (pk_host) WHERE h.str_name = $1", &[&names[0]])
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    });
    let recovered = pipeline.ctx.metrics.stranded_bookings_recovered_total.get();
    pipeline.shutdown(Duration::from_secs(5));
    assert!(caught && recovered_all, "recovered {recovered} lost frames");
    assert_eq!(db.violations(), Vec::<String>::new());
}
