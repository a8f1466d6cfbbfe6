//! Scheduling policy `smart` through the real pipeline and database (issue 11): a host held for
//! a wide frame is not refilled with narrow frames (where `legacy` refills it and the wide frame
//! starves), and a show over its fair share leaves freed cores to a show short of its own.

use crate::support::{self, count, host, job, org, wait_for, wait_settled, Org, Schema, TestDb};
use cue_scheduler::matching::policy::{self, PolicyName};
use cue_scheduler::ops::metrics::Metrics;
use cue_scheduler::pipeline::Pipeline;
use cue_scheduler::sim::cuebot::{complete_frame, Completion, Released};
use cue_scheduler::sim::fake_rqd::{loopback_address, FakeRqd};
use cue_scheduler::sim::farm::{JobSpec, LayerSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GIB: i64 = 1_048_576;

/// Two 4-core hosts and a high-priority narrow layer of 30 one-core frames whose history says
/// they run 100 s.
fn wide_farm(test: &str, block: u8) -> (TestDb, Org, Vec<String>) {
    let db = TestDb::new(test, Schema::Project).expect("db");
    let mut f = db.farm();
    let org = org(&mut f, 100_000);
    let names: Vec<String> = (0..2).map(|i| loopback_address(block, i)).collect();
    f.hosts(&names.iter().map(|n| host(n, &org.general_alloc, "general", 4, 16)).collect::<Vec<_>>()).expect("hosts");
    let mut narrow = LayerSpec::new("narrow", "1-30", "general");
    narrow.mem_min_kib = GIB;
    let mut spec = job(&org, "narrow-job", vec![narrow]);
    spec.priority = 100;
    let ids = f.job(&spec).expect("narrow job");
    // Runtime history: five frames of the layer finished, each after 100 s (the frame triggers
    // keep the stat counts).
    let mut client = db.client();
    client
        .execute(
            "UPDATE frame SET str_state = 'SUCCEEDED', ts_started = now() - interval '200 s', ts_stopped = now() - interval '100 s'
             WHERE pk_frame IN (SELECT pk_frame FROM frame WHERE pk_job = $1 ORDER BY int_dispatch_order DESC LIMIT 5)",
            &[&ids.job_id],
        )
        .expect("history");
    (db, org, names)
}

/// The low-priority job of one 4-core frame. Submitted once the narrow frames fill both hosts:
/// under smart a job whose frames may need a hold is read first, and on an empty farm its frame
/// would simply take a free host.
fn submit_wide(db: &TestDb, org: &Org) {
    let mut wide = LayerSpec::new("wide", "1", "general");
    wide.threadable = true;
    wide.cores_min = 400;
    wide.mem_min_kib = 2 * GIB;
    let mut spec = job(org, "wide-job", vec![wide]);
    spec.priority = 1;
    db.farm().job(&spec).expect("wide job");
}

/// Completes the first `n` frames launched on `host` the way Cuebot does.
fn finish_on(db: &TestDb, rqd: &FakeRqd, host: &str, n: usize) {
    let mut client = db.client();
    for launch in rqd.launches().into_iter().filter(|l| l.host == host).take(n) {
        let done = Completion { exit_status: 0, run_secs: 100, max_rss_kib: 0 };
        let released = complete_frame(&mut client, launch.run_frame.get_frame_id(), launch.run_frame.get_resource_id(), done).expect("complete");
        assert_eq!(released, Released::Frame { state: "SUCCEEDED".into() });
    }
}

fn launches_on(rqd: &FakeRqd, host: &str, layer: &str) -> usize {
    rqd.launches().iter().filter(|l| l.host == host && l.run_frame.get_frame_name().ends_with(&format!("-{layer}"))).count()
}

/// Runs the wide-frame scenario under `policy`: fill both hosts, then finish every frame on
/// one host (the held one under smart). Returns (wide launched on that host, narrow frames
/// launched there, the hold seen, status page).
fn wide_scenario(test: &str, block: u8, name: PolicyName) -> (bool, usize, Option<String>, String) {
    let (db, org, hosts) = wide_farm(test, block);
    let rqd = FakeRqd::start(&hosts).expect("fake rqd");
    let mut settings = support::settings(&db, rqd.port);
    settings.scheduling.name = name;
    settings.scheduling.reservation_after = Duration::ZERO;
    let pipeline = Pipeline::start(settings, Arc::new(Metrics::new())).expect("start");
    assert!(wait_for(Duration::from_secs(10), || rqd.launch_count() >= 8), "both hosts filled with narrow frames");
    submit_wide(&db, &org);
    // Under smart the wide frame gets a host held within a retry period.
    let held = wait_for(Duration::from_secs(5), || !pipeline.ctx.policy.holds().is_empty());
    let held_host = pipeline.ctx.policy.holds().values().next().map(|h| h.host_name.clone());
    let target = held_host.clone().unwrap_or_else(|| hosts[0].clone());
    assert_eq!(held, name == PolicyName::Smart, "a hold exists only under smart");
    let status = policy::render_status(&pipeline.ctx.policy, Instant::now());
    let narrow_before = launches_on(&rqd, &target, "narrow");
    assert_eq!(narrow_before, 4);
    finish_on(&db, &rqd, &target, 4);
    wait_for(Duration::from_secs(5), || launches_on(&rqd, &target, "wide") == 1);
    wait_settled(Duration::from_secs(5), Duration::from_millis(700), || rqd.launch_count() as i64);
    let wide = launches_on(&rqd, &target, "wide") == 1;
    let narrow_after = launches_on(&rqd, &target, "narrow") - narrow_before;
    if name == PolicyName::Smart {
        let outcome = |o: &str| pipeline.ctx.metrics.reservations_total.with_label_values(&[o]).get();
        assert_eq!((outcome("made"), outcome("booked"), outcome("expired")), (1, 1, 0), "one hold made and let go when its frame booked");
        assert!(pipeline.ctx.policy.holds().is_empty(), "the hold is dropped once the frame books");
    }
    pipeline.shutdown(Duration::from_secs(5));
    assert_eq!(db.violations(), Vec::<String>::new());
    (wide, narrow_after, held_host, status)
}

#[test]
fn a_held_host_drains_for_the_wide_frame_where_legacy_refills_it() {
    let (wide, narrow, held, status) = wide_scenario("policy_wide_smart", 91, PolicyName::Smart);
    let held = held.expect("a host is held");
    assert!(status.contains(&format!("hold host={held}")) && status.contains("layer=wide") && status.contains("cores=4"), "{status}");
    assert!(wide, "the wide frame books on the held host once its frames finish");
    assert_eq!(narrow, 0, "no narrow frame (expected to run 100 s) backfills the held host");

    let (wide, narrow, held, _) = wide_scenario("policy_wide_legacy", 92, PolicyName::Legacy);
    assert_eq!(held, None);
    assert!(!wide, "legacy: the freed cores go to the higher-priority narrow frames");
    assert_eq!(narrow, 4, "legacy refills the freed host with narrow frames");
}

/// showb with its subscription, and a job of 60 one-core frames for it (not submitted).
fn second_show(farm: &mut cue_scheduler::sim::farm::Farm, org: &Org, size: i64, burst: i64) -> JobSpec {
    let show_id = farm.show("showb", true).expect("show");
    let folder_id = farm.folder(&show_id, &org.dept_id, "showb").expect("folder");
    farm.subscription(&show_id, &org.general_alloc, size, burst).expect("subscription");
    let mut layer = LayerSpec::new("render", "1-60", "general");
    layer.mem_min_kib = GIB;
    JobSpec { show_id, show_name: "showb".into(), folder_id, ..job(org, "showb-job", vec![layer]) }
}

#[test]
fn a_show_over_its_share_leaves_freed_cores_to_a_show_short_of_its_own() {
    let db = TestDb::new("policy_fair", Schema::Project).expect("db");
    let mut f = db.farm();
    // showa: 16 cores subscribed; showb: 48; both may burst to the whole 64-core pool (one
    // freed core is under 5 % of it: fair share holds).
    let org = org(&mut f, 6_400);
    f.client.execute("UPDATE subscription SET int_size = 1600 WHERE pk_show = $1", &[&org.show_id]).expect("size");
    let names: Vec<String> = (0..2).map(|i| loopback_address(93, i)).collect();
    f.hosts(&names.iter().map(|n| host(n, &org.general_alloc, "general", 32, 64)).collect::<Vec<_>>()).expect("hosts");
    let mut layer = LayerSpec::new("render", "1-100", "general");
    layer.mem_min_kib = GIB;
    f.job(&job(&org, "showa-job", vec![layer])).expect("showa job");
    // showb's subscription exists from the start (clusters are discovered at start-up), its
    // job comes once showa fills the pool.
    let showb = second_show(&mut f, &org, 4_800, 6_400);
    let rqd = FakeRqd::start(&names).expect("fake rqd");
    let mut settings = support::settings(&db, rqd.port);
    settings.scheduling.name = PolicyName::Smart;
    let pipeline = Pipeline::start(settings, Arc::new(Metrics::new())).expect("start");
    assert!(wait_for(Duration::from_secs(20), || rqd.launch_count() == 64), "showa alone takes the whole pool");
    f.job(&showb).expect("showb job");
    // Let showb's passes find no room (its demand is noted) and the subscriptions be re-read.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut client = db.client();
    let running = |client: &mut postgres::Client, show: &str| {
        count(client, &format!("SELECT count(*) FROM frame f JOIN job j ON j.pk_job = f.pk_job JOIN show s ON s.pk_show = j.pk_show WHERE f.str_state = 'RUNNING' AND s.str_name = '{show}'"))
    };
    // Finish ten of showa's frames one at a time: each freed core goes to showb, short of its 48.
    for launch in rqd.launches().into_iter().take(10) {
        let done = Completion { exit_status: 0, run_secs: 1, max_rss_kib: 0 };
        complete_frame(&mut client, launch.run_frame.get_frame_id(), launch.run_frame.get_resource_id(), done).expect("complete");
        let before = rqd.launch_count();
        wait_for(Duration::from_secs(5), || rqd.launch_count() > before);
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_settled(Duration::from_secs(5), Duration::from_millis(1_000), || rqd.launch_count() as i64);
    let (a, b) = (running(&mut client, "showa"), running(&mut client, "showb"));
    let limited = pipeline.ctx.metrics.fair_share_limited_total.get();
    pipeline.shutdown(Duration::from_secs(5));
    assert_eq!(db.violations(), Vec::<String>::new());
    assert_eq!(a + b, 64, "the pool stays full");
    assert!(b >= 9, "showb (entitled to 48 of 64 cores) got the freed cores: showa {a}, showb {b}");
    assert!(limited > 0, "showa's passes were held to its share");
}
