//! Matching rules through the real pipeline and database (issue 3 scenarios).

use crate::support::{self, count, host, job, org, wait_for, wait_settled, Org, Schema, TestDb};
use cue_scheduler::matching::host_cache::Strategy;
use cue_scheduler::matching::matcher::Weights;
use cue_scheduler::ops::metrics::Metrics;
use cue_scheduler::pipeline::Pipeline;
use cue_scheduler::config::settings::Settings;
use cue_scheduler::sim::fake_rqd::{loopback_address, FakeRqd};
use cue_scheduler::sim::farm::{HostSpec, JobSpec, LayerSpec};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const GIB: i64 = 1_048_576;

struct Farm {
    db: TestDb,
    org: Org,
    hosts: Vec<String>,
}

fn farm(test: &str, block: u8, burst: i64, hosts: impl Fn(&Org, &[String]) -> Vec<HostSpec>, n_hosts: usize) -> Farm {
    let db = TestDb::new(test, Schema::Project).expect("db");
    let mut f = db.farm();
    let org = org(&mut f, burst);
    let names: Vec<String> = (0..n_hosts).map(|i| loopback_address(block, i)).collect();
    f.hosts(&hosts(&org, &names)).expect("hosts");
    Farm { db, org, hosts: names }
}

fn seed(farm: &Farm, spec: &JobSpec) {
    farm.db.farm().job(spec).expect("job");
}

/// Runs the pipeline until the number of running frames stops changing; returns the
/// launches seen per (frame name, host) and the pipeline's metrics.
fn run(farm: &Farm, tweak: impl FnOnce(&mut Settings)) -> (Vec<(String, String, i32)>, Arc<Metrics>) {
    let rqd = FakeRqd::start(&farm.hosts).expect("fake rqd");
    let mut settings = support::settings(&farm.db, rqd.port);
    tweak(&mut settings);
    let pipeline = Pipeline::start(settings, Arc::new(Metrics::new())).expect("start");
    wait_for(Duration::from_secs(5), || rqd.launch_count() > 0);
    wait_settled(Duration::from_secs(10), Duration::from_millis(700), || rqd.launch_count() as i64);
    let metrics = Arc::clone(&pipeline.ctx.metrics);
    pipeline.shutdown(Duration::from_secs(5));
    assert_eq!(farm.db.violations(), Vec::<String>::new());
    let launches = rqd
        .launches()
        .into_iter()
        .map(|l| (l.run_frame.get_frame_name().to_string(), l.host, l.run_frame.get_num_cores()))
        .collect();
    (launches, metrics)
}

fn running(farm: &Farm) -> i64 {
    count(&mut farm.db.client(), "SELECT count(*) FROM frame WHERE str_state = 'RUNNING'")
}

#[test]
fn gpu_layer_lands_only_on_gpu_hosts_and_cpu_work_avoids_them_under_epvm() {
    let f = farm("gpu", 21, 100_000, |o, h| {
        let mut gpu = host(&h[0], &o.general_alloc, "general", 16, 64);
        gpu.gpus = 2;
        gpu.gpu_mem_kib = 16 * GIB;
        vec![gpu, host(&h[1], &o.general_alloc, "general", 16, 64)]
    }, 2);
    let mut gpu_layer = LayerSpec::new("sim", "1-4", "general");
    gpu_layer.gpus_min = 1;
    gpu_layer.gpu_mem_min_kib = 4 * GIB;
    let cpu_layer = LayerSpec::new("cpu", "1-2", "general");
    seed(&f, &job(&f.org, "showa-gpu", vec![gpu_layer, cpu_layer]));
    let (launches, _) = run(&f, |s| {
        s.strategy = Strategy::Epvm {
            max_candidates: 500,
            weights: Weights { cores: 1.0, mem: 1.0, gpus: 2.0, gpu_mem: 1.0, gpu_count_reservation: 2.0, gpu_mem_reservation: 2.0 },
        }
    });
    let gpu_frames: Vec<_> = launches.iter().filter(|l| l.0.ends_with("-sim")).collect();
    assert_eq!(gpu_frames.len(), 2, "2 GPUs: two GPU frames run, two wait: {launches:?}");
    assert!(gpu_frames.iter().all(|l| l.1 == f.hosts[0]), "GPU frames only on the GPU host");
    let cpu_frames: Vec<_> = launches.iter().filter(|l| l.0.ends_with("-cpu")).collect();
    assert_eq!(cpu_frames.len(), 2);
    assert!(cpu_frames.iter().all(|l| l.1 == f.hosts[1]), "E-PVM keeps CPU work off the GPU host: {cpu_frames:?}");
}

#[test]
fn threadable_layer_on_all_mode_host_takes_idle_cores_within_layer_max() {
    let f = farm("allmode", 22, 100_000, |o, h| {
        h.iter()
            .map(|name| {
                let mut spec = host(name, &o.general_alloc, "general", 8, 32);
                spec.thread_mode = 1;
                spec
            })
            .collect()
    }, 2);
    let mut wide = LayerSpec::new("wide", "1", "general");
    wide.threadable = true;
    let mut capped = LayerSpec::new("capped", "1", "general");
    capped.threadable = true;
    capped.cores_max = 300;
    let single = LayerSpec::new("single", "1-2", "general");
    seed(&f, &job(&f.org, "showa-all", vec![wide, capped, single]));
    let (launches, _) = run(&f, |_| {});
    let cores: HashMap<String, i32> = launches.iter().map(|l| (l.0.clone(), l.2)).collect();
    assert_eq!(cores.get("0001-wide"), Some(&800), "ALL host: every idle core");
    assert_eq!(cores.get("0001-capped"), Some(&300), "capped at the layer max");
    assert!(!cores.contains_key("0001-single"), "non-threadable never on ALL hosts: {launches:?}");
}

#[test]
fn layer_limit_caps_running_frames() {
    let f = farm("limit", 23, 100_000, |o, h| h.iter().map(|n| host(n, &o.general_alloc, "general", 16, 64)).collect(), 3);
    let ids = f.db.farm().job(&job(&f.org, "showa-limited", vec![LayerSpec::new("lic", "1-10", "general")])).expect("job");
    let mut client = f.db.client();
    client
        .execute("INSERT INTO limit_record (pk_limit_record, str_name, int_max_value) VALUES ('lim-1', 'nuke', 3)", &[])
        .expect("limit");
    client
        .execute("INSERT INTO layer_limit (pk_layer_limit, pk_layer, pk_limit_record) VALUES ('ll-1', $1, 'lim-1')", &[&ids.layers["lic"]])
        .expect("layer limit");
    let (launches, _) = run(&f, |_| {});
    assert_eq!(launches.len(), 3, "limit of 3: {launches:?}");
    assert_eq!(running(&f), 3);
}

#[test]
fn delayed_layer_waits_for_its_start_time() {
    let f = farm("delay", 24, 100_000, |o, h| h.iter().map(|n| host(n, &o.general_alloc, "general", 16, 64)).collect(), 1);
    let mut later = LayerSpec::new("later", "1-2", "general");
    later.start_after_secs = Some(2.5);
    seed(&f, &job(&f.org, "showa-delay", vec![later]));
    let rqd = FakeRqd::start(&f.hosts).expect("fake rqd");
    let pipeline = Pipeline::start(support::settings(&f.db, rqd.port), Arc::new(Metrics::new())).expect("start");
    std::thread::sleep(Duration::from_millis(1500));
    let early = rqd.launch_count();
    let later_ok = wait_for(Duration::from_secs(10), || rqd.launch_count() == 2);
    pipeline.shutdown(Duration::from_secs(5));
    assert_eq!(early, 0, "nothing starts before ts_start_after");
    assert!(later_ok, "frames start once the time has passed");
}

#[test]
fn manual_tag_reaches_only_tagged_hosts_and_ignore_tags_is_obeyed() {
    let f = farm("manual", 25, 100_000, |o, h| {
        vec![
            host(&h[0], &o.general_alloc, "general", 16, 64).tag("fx", "MANUAL"),
            host(&h[1], &o.general_alloc, "general", 16, 64),
            host(&h[2], &o.general_alloc, "general", 16, 64).tag("retired", "MANUAL"),
        ]
    }, 3);
    seed(&f, &job(&f.org, "showa-fx", vec![LayerSpec::new("fx", "1-4", "fx"), LayerSpec::new("old", "1-2", "retired")]));
    let (launches, _) = run(&f, |s| s.tunables.selection.ignore_tags = vec!["retired".into()]);
    assert_eq!(launches.len(), 4, "{launches:?}");
    assert!(launches.iter().all(|l| l.1 == f.hosts[0] && l.0.ends_with("-fx")), "{launches:?}");
}

#[test]
fn paused_capped_and_over_burst_work_gets_nothing() {
    let f = farm("caps", 26, 300, |o, h| h.iter().map(|n| host(n, &o.general_alloc, "general", 16, 64)).collect(), 2);
    let mut paused = job(&f.org, "showa-paused", vec![LayerSpec::new("p", "1-3", "general")]);
    paused.paused = true;
    seed(&f, &paused);
    let mut capped = job(&f.org, "showa-capped", vec![LayerSpec::new("c", "1-6", "general")]);
    capped.max_cores = 200;
    capped.priority = 10;
    seed(&f, &capped);
    seed(&f, &job(&f.org, "showa-open", vec![LayerSpec::new("o", "1-6", "general")]));
    let (launches, metrics) = run(&f, |_| {});
    let by_job = |suffix: &str| launches.iter().filter(|l| l.0.ends_with(suffix)).count();
    assert_eq!(by_job("-p"), 0, "paused job gets nothing");
    assert_eq!(by_job("-c"), 2, "job max 2 cores: two 1-core frames, never more");
    assert_eq!(launches.len(), 3, "subscription burst of 3 cores: 3 frames in all: {launches:?}");
    let mut client = f.db.client();
    assert_eq!(count(&mut client, "SELECT max(int_cores)::bigint FROM subscription"), 300);
    assert!(metrics.accounting_limit_exceeded_total.with_label_values(&["subscription"]).get() >= 1);
}

/// §3.8 pre-check: a pass that has booked its subscription's room skips its other layers.
/// None of them checks out a host to be refused by the cap (every host attempt books).
#[test]
fn a_pass_that_fills_its_subscription_asks_no_more_of_the_database() {
    let f = farm("subfull", 87, 300, |o, h| h.iter().map(|n| host(n, &o.general_alloc, "general", 16, 64)).collect(), 2);
    for j in 0..6 {
        seed(&f, &job(&f.org, &format!("showa-j{j}"), vec![LayerSpec::new("r", "1-4", "general")]));
    }
    let (launches, metrics) = run(&f, |_| {});
    assert_eq!(launches.len(), 3, "subscription burst of 3 cores: {launches:?}");
    let outcome = |label: &str| metrics.checkout_outcome_total.with_label_values(&[label]).get();
    assert_eq!(outcome("no_progress") + outcome("dispatch_error"), 0, "a host attempt booked nothing");
    assert!(outcome("booked") >= 1);
    assert!(metrics.accounting_limit_exceeded_total.with_label_values(&["subscription"]).get() >= 1, "the pre-check counts");
}

/// Discovery: a show not managed by the scheduler (Cuebot books it) is never touched, and a
/// HOSTNAME tag forms its own cluster that reaches only that host.
#[test]
fn unmanaged_shows_are_left_to_cuebot_and_hostname_tags_form_clusters() {
    let f = farm("discovery", 27, 100_000, |o, h| {
        vec![
            host(&h[0], &o.general_alloc, "general", 8, 32).tag(&h[0], "HOSTNAME"),
            host(&h[1], &o.general_alloc, "general", 8, 32),
        ]
    }, 2);
    seed(&f, &job(&f.org, "showa-pinned", vec![LayerSpec::new("pin", "1-3", &f.hosts[0])]));
    let mut farm = f.db.farm();
    let other = farm.show("cuebot_show", false).expect("show");
    let folder = farm.folder(&other, &f.org.dept_id, "cuebot_show").expect("folder");
    farm.subscription(&other, &f.org.general_alloc, 100_000, 100_000).expect("subscription");
    let mut theirs = job(&f.org, "cuebot_show-job", vec![LayerSpec::new("render", "1-4", "general")]);
    theirs.show_id = other;
    theirs.show_name = "cuebot_show".into();
    theirs.folder_id = folder;
    seed(&f, &theirs);
    let (launches, _) = run(&f, |_| {});
    assert_eq!(launches.len(), 3, "{launches:?}");
    assert!(launches.iter().all(|l| l.0.ends_with("-pin") && l.1 == f.hosts[0]), "{launches:?}");
    let mut client = f.db.client();
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM frame f JOIN job j USING (pk_job) WHERE j.str_name = 'cuebot_show-job' AND f.str_state = 'WAITING'"),
        4
    );
}

/// A schema without show.b_scheduler_managed (pre-V45 Cuebot): discovering every cluster is
/// refused unless the operator names clusters or confirms Cuebot books nothing.
#[test]
fn explicit_cluster_mode_refuses_to_discover_everything() {
    let f = farm("explicit", 28, 100_000, |o, h| vec![host(&h[0], &o.general_alloc, "general", 8, 32)], 1);
    seed(&f, &job(&f.org, "showa-old", vec![LayerSpec::new("render", "1-2", "general")]));
    f.db.client().batch_execute("ALTER TABLE show DROP COLUMN b_scheduler_managed").expect("drop column");
    let rqd = FakeRqd::start(&f.hosts).expect("fake rqd");
    let refused = Pipeline::start(support::settings(&f.db, rqd.port), Arc::new(Metrics::new()));
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("--cuebot-booking-off") && message.contains("dispatcher.exclusion_list"), "{message}");
    let mut named = support::settings(&f.db, rqd.port);
    named.tunables.selection.alloc_tags = vec![("showa".into(), "general".into())];
    let pipeline = Pipeline::start(named, Arc::new(Metrics::new())).expect("explicit clusters start");
    let booked = wait_for(Duration::from_secs(10), || rqd.launch_count() == 2);
    pipeline.shutdown(Duration::from_secs(5));
    assert!(booked, "explicit alloc cluster books on the old schema");
    let mut confirmed = support::settings(&f.db, rqd.port);
    confirmed.cuebot_booking_off = true;
    Pipeline::start(confirmed, Arc::new(Metrics::new())).expect("confirmed discovery starts").shutdown(Duration::from_secs(5));
}

/// The wake probe: with every sleep and scan interval at a minute, a job submitted while its
/// cluster sleeps on "no work" is still dispatched within seconds, and a cluster sleeping as
/// saturated wakes when a finished frame frees its host.
#[test]
fn new_work_and_freed_capacity_wake_sleeping_clusters() {
    let f = farm("wake", 29, 100_000, |o, h| vec![host(&h[0], &o.general_alloc, "general", 1, 16)], 1);
    let rqd = FakeRqd::start(&f.hosts).expect("fake rqd");
    let mut settings = support::settings(&f.db, rqd.port);
    settings.tunables.cluster_empty_sleep = Duration::from_secs(60);
    settings.tunables.cluster_saturated_sleep = Duration::from_secs(60);
    settings.tunables.active_scan_interval = Duration::from_secs(60);
    settings.tunables.monitoring_interval = Duration::from_secs(60);
    let pipeline = Pipeline::start(settings, Arc::new(Metrics::new())).expect("start");
    std::thread::sleep(Duration::from_millis(500)); // the only cluster has found nothing: asleep
    seed(&f, &job(&f.org, "showa-late", vec![LayerSpec::new("render", "1-2", "general")]));
    let first = wait_for(Duration::from_secs(10), || rqd.launch_count() == 1);
    std::thread::sleep(Duration::from_millis(500)); // one core: the second frame waits, cluster asleep
    let before_release = rqd.launch_count();
    let launched = rqd.launches();
    let done = &launched[0].run_frame;
    let mut client = f.db.client();
    let released = cue_scheduler::sim::cuebot::complete_frame(
        &mut client,
        done.get_frame_id(),
        done.get_resource_id(),
        cue_scheduler::sim::cuebot::Completion { exit_status: 0, run_secs: 1, max_rss_kib: 0 },
    )
    .expect("complete");
    let second = wait_for(Duration::from_secs(10), || rqd.launch_count() == 2);
    pipeline.shutdown(Duration::from_secs(5));
    assert!(first, "a new job is dispatched although its cluster sleeps for a minute");
    assert_eq!(before_release, 1, "no room for the second frame before the release");
    assert_eq!(released, cue_scheduler::sim::cuebot::Released::Frame { state: "SUCCEEDED".into() });
    assert!(second, "the freed core is used although the cluster sleeps as saturated");
    assert_eq!(f.db.violations(), Vec::<String>::new());
}
