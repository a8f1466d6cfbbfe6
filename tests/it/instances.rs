//! Several instances on one farm, as separate processes (issue 10): standing ownership of host
//! pools, failover after kill -9, fencing of a frozen instance, joining, overlapping static
//! flags. Fake RQDs record every launch; no frame may launch twice and the invariants must hold.

use crate::support::{count, wait_for, Schema, TestDb};
use cue_scheduler::pipeline::ownership::{self, StatusView};
use cue_scheduler::sim::fake_rqd::{loopback_address, FakeRqd};
use cue_scheduler::sim::farm::{Farm, HostSpec, LayerSpec};
use cue_scheduler::sim::procs;
use cue_scheduler::sim::workloads::{self, Org};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cue-scheduler");

struct Fleet {
    db: TestDb,
    org: Org,
    rqd: FakeRqd,
    name: String,
    instances: Vec<Running>,
}

struct Running {
    child: Child,
    port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metric(&self, name: &str, filter: Option<&str>) -> f64 {
        procs::http_get(self.port, "/metrics").map(|(_, page)| procs::metric_sum(&page, name, filter)).unwrap_or(-1.0)
    }
}

/// The pid in an instance id `host:pid[.n]` (0 if it has none).
fn pid_of(id: &str) -> u32 {
    id.rsplit(':').next().and_then(|p| p.split('.').next()).and_then(|p| p.parse().ok()).unwrap_or(0)
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child of this test.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Three allocations (`alloc0..2`, 2 hosts of 4 cores each), one managed show subscribed to all.
fn fleet(name: &str) -> Fleet {
    let db = TestDb::new(name, Schema::Project).expect("db");
    let mut farm = db.farm();
    let org = workloads::org(&mut farm, "showa", 3, 10_000).expect("org");
    let mut names = Vec::new();
    let mut specs = Vec::new();
    for (a, (alloc_id, tag)) in org.allocs.iter().enumerate() {
        for h in 0..2 {
            let address = loopback_address(40 + a as u8, h);
            specs.push(HostSpec::new(&address, alloc_id, tag, 4, 16));
            names.push(address);
        }
    }
    farm.hosts(&specs).expect("hosts");
    let rqd = FakeRqd::start(&names).expect("fake rqd");
    Fleet { db, org, rqd, name: name.to_string(), instances: Vec::new() }
}

impl Fleet {
    fn farm(&self) -> Farm {
        self.db.farm()
    }

    fn start(&mut self, flags: &[&str]) -> usize {
        let n = self.instances.len();
        let port = procs::free_port().expect("port");
        let text = format!(
            "database:\n  db_host: {}\n  db_port: {}\n  db_name: {}\n  db_user: {}\nqueue:\n  metrics_port: {port}\n  cluster_empty_sleep: 200ms\n  cluster_saturated_sleep: 200ms\nrqd:\n  grpc_port: {}\nscheduler:\n  facility: lax\n",
            self.db.server.host, self.db.server.port, self.db.name, self.db.server.user, self.rqd.port
        );
        let config = std::env::temp_dir().join(format!("cue-scheduler-{}-{n}-{}.yaml", self.name, std::process::id()));
        std::fs::write(&config, text).expect("write config");
        let log = std::env::temp_dir().join(format!("cue-scheduler-{}-{n}-{}.log", self.name, std::process::id()));
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(flags)
            .env("OPENSCHEDULER_DATABASE__DB_PASS", self.db.server.password.clone().unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        self.instances.push(Running { child, port, config, log });
        n
    }

    fn status(&self) -> StatusView {
        let mut client = self.db.client();
        ownership::read_status(&mut client, "").unwrap_or_default()
    }

    /// Allocation tag -> pid of its owner.
    fn owners(&self) -> BTreeMap<String, u32> {
        let status = self.status();
        let mut out = BTreeMap::new();
        for instance in &status.instances {
            let pid = pid_of(&instance.id);
            for unit in &instance.units {
                out.insert(unit.name.trim_start_matches("lax.").to_string(), pid);
            }
        }
        out
    }

    fn live_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.status().instances.iter().map(|i| pid_of(&i.id)).collect();
        pids.sort();
        pids
    }

    /// Waits until every allocation has an owner among `pids` and each of them owns one.
    fn wait_one_each(&self, pids: &[u32], timeout: Duration) -> bool {
        wait_for(timeout, || {
            let owners = self.owners();
            owners.len() == 3 && pids.iter().all(|p| owners.values().filter(|o| *o == p).count() == 1)
        })
    }

    fn job(&self, name: &str, tags: &str, frames: usize) {
        let mut farm = self.farm();
        let layer = LayerSpec::new("render", &format!("1-{frames}"), tags);
        farm.job(&workloads::job_spec(&self.org, name, 100_000, vec![layer])).expect("job");
    }

    /// The manual-tag cluster of `showa` on tag `alloc0`, as the pass query takes it.
    fn manual_cluster(&self) -> cue_scheduler::model::Cluster {
        cue_scheduler::model::Cluster {
            facility_id: self.org.facility_id.clone(),
            facility_name: "lax".into(),
            show_id: self.org.show_id.clone(),
            show_name: "showa".into(),
            kind: cue_scheduler::model::ClusterKind::Manual,
            tags: vec!["alloc0".into()],
            alloc_id: None,
        }
    }

    fn running_of(&self, job: &str) -> i64 {
        let mut client = self.db.client();
        client
            .query_one("SELECT count(*) FROM proc p JOIN job j ON j.pk_job = p.pk_job WHERE j.str_name = $1", &[&job])
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    }

    fn logs(&self) -> String {
        self.instances.iter().map(|i| std::fs::read_to_string(&i.log).unwrap_or_default()).collect::<Vec<_>>().join("\n----\n")
    }

    fn stop_all(&mut self) {
        for instance in &mut self.instances {
            signal(instance.pid(), libc::SIGCONT);
            procs::stop(&mut instance.child, Duration::from_secs(30));
            let _ = std::fs::remove_file(&instance.config);
        }
    }
}

/// Three instances with no flags split the three pools one each, serve their own frames, and
/// never launch a frame twice; `cue-scheduler status` lists them from the database alone; a
/// balanced split does not move.
#[test]
fn three_instances_split_the_pools_and_launch_each_frame_once() {
    let mut fleet = fleet("inst_split");
    for _ in 0..3 {
        fleet.start(&[]);
    }
    let pids: Vec<u32> = fleet.instances.iter().map(Running::pid).collect();
    let split = fleet.wait_one_each(&pids, Duration::from_secs(20));
    for j in 0..3 {
        fleet.job(&format!("showa-split{j}"), "alloc0 | alloc1 | alloc2", 8);
    }
    let mut client = fleet.db.client();
    let drained = wait_for(Duration::from_secs(30), || count(&mut client, "SELECT count(*) FROM proc") == 24);
    let rebalanced = |f: &Fleet| -> f64 { f.instances.iter().map(|i| i.metric("scheduler_ownership_changes_total", Some("rebalanced"))).sum() };
    let before = rebalanced(&fleet);
    std::thread::sleep(Duration::from_secs(3));
    let after = rebalanced(&fleet);
    let shares: Vec<f64> = fleet.instances.iter().map(|i| i.metric("scheduler_frames_dispatched_total", None)).collect();
    let live: Vec<f64> = fleet.instances.iter().map(|i| i.metric("scheduler_instances_live", None)).collect();
    let status_out = Command::new(BIN)
        .arg("--config")
        .arg(&fleet.instances[0].config)
        .arg("status")
        .env("OPENSCHEDULER_DATABASE__DB_PASS", fleet.db.server.password.clone().unwrap_or_default())
        .output()
        .expect("status");
    let status_json = procs::http_get(fleet.instances[1].port, "/status").expect("/status");
    fleet.stop_all();
    let logs = fleet.logs();
    assert!(split, "pools not split one each: {:?}\n{logs}", fleet.owners());
    assert!(drained, "frames never all ran: {}\n{logs}", count(&mut client, "SELECT count(*) FROM proc"));
    assert_eq!(fleet.rqd.duplicate_launches(), Vec::<String>::new());
    assert_eq!(fleet.rqd.launch_count(), 24);
    assert_eq!(before, after, "ownership moved while balanced");
    assert!(shares.iter().all(|s| *s > 0.0), "every instance booked its pool's frames: {shares:?}");
    assert_eq!(live, vec![3.0; 3]);
    let text = String::from_utf8_lossy(&status_out.stdout);
    assert!(status_out.status.success() && text.starts_with("3 live instance(s)"), "{text}");
    for pid in &pids {
        assert!(text.contains(&format!(":{pid} ")), "status lists {pid}: {text}");
    }
    assert_eq!(status_json.0, 200);
    assert!(status_json.1.contains("\"live_instances\":3") && status_json.1.contains("\"peers\":[{"), "{}", status_json.1);
    assert_eq!(fleet.db.violations(), Vec::<String>::new());
}

/// kill -9: the dead instance's pool is owned and booking again in seconds. A joiner takes a
/// share. SIGSTOP: peers fence the frozen instance (its sessions terminated) and serve its pool;
/// after SIGCONT it rejoins without double-booking anything.
#[test]
fn failover_join_and_fencing_keep_every_pool_served_once() {
    let mut fleet = fleet("inst_failover");
    for _ in 0..3 {
        fleet.start(&[]);
    }
    let pids: Vec<u32> = fleet.instances.iter().map(Running::pid).collect();
    assert!(fleet.wait_one_each(&pids, Duration::from_secs(20)), "no split: {:?}\n{}", fleet.owners(), fleet.logs());

    // kill -9 the owner of alloc0, then a job only alloc0's hosts can run.
    let victim = fleet.owners()["alloc0"];
    let index = fleet.instances.iter().position(|i| i.pid() == victim).expect("victim");
    let killed_at = Instant::now();
    signal(victim, libc::SIGKILL);
    let _ = fleet.instances[index].child.wait();
    fleet.job("showa-after-kill", "alloc0", 4);
    let resumed = wait_for(Duration::from_secs(15), || fleet.running_of("showa-after-kill") > 0);
    let resume_secs = killed_at.elapsed().as_secs_f64();
    eprintln!("failover: first booking on the dead instance's pool {resume_secs:.1} s after kill -9");
    assert!(resumed, "alloc0 not served after kill -9: {:?}\n{}", fleet.owners(), fleet.logs());

    // A joiner takes one pool of the instance that holds two.
    let joined_at = Instant::now();
    let joiner = fleet.start(&[]);
    let joiner_pid = fleet.instances[joiner].pid();
    let took = wait_for(Duration::from_secs(15), || fleet.owners().values().any(|p| *p == joiner_pid));
    eprintln!("join: a share taken {:.1} s after start", joined_at.elapsed().as_secs_f64());
    assert!(took, "joiner owns nothing: {:?}\n{}", fleet.owners(), fleet.logs());

    // SIGSTOP one that owns a pool: it is fenced and its pool served by the others.
    let owners = fleet.owners();
    let (frozen_tag, frozen) = owners.iter().find(|(_, p)| **p != joiner_pid).map(|(t, p)| (t.clone(), *p)).expect("an owner");
    let stopped_at = Instant::now();
    signal(frozen, libc::SIGSTOP);
    let suffix = format!(":{frozen}]");
    let mut client = fleet.db.client();
    let fenced = wait_for(Duration::from_secs(35), || {
        count(&mut client, &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%{suffix}'")) == 0
    });
    eprintln!("fencing: the frozen instance's sessions ended {:.1} s after SIGSTOP", stopped_at.elapsed().as_secs_f64());
    assert!(fenced, "frozen instance never fenced\n{}", fleet.logs());
    fleet.job("showa-while-frozen", &frozen_tag, 4);
    let served = wait_for(Duration::from_secs(15), || fleet.running_of("showa-while-frozen") > 0 && fleet.owners().get(&frozen_tag).is_some_and(|p| *p != frozen));
    assert!(served, "{frozen_tag} not served while its owner is frozen: {:?}\n{}", fleet.owners(), fleet.logs());

    // SIGCONT: it rejoins; more work drains; nothing launched twice.
    signal(frozen, libc::SIGCONT);
    let rejoined = wait_for(Duration::from_secs(15), || fleet.live_pids().contains(&frozen));
    assert!(rejoined, "woken instance never rejoined\n{}", fleet.logs());
    fleet.job("showa-after-wake", "alloc0 | alloc1 | alloc2", 6);
    let all = wait_for(Duration::from_secs(20), || fleet.running_of("showa-after-wake") == 6);
    let fenced_total: f64 = fleet.instances.iter().filter(|i| i.pid() != victim).map(|i| i.metric("scheduler_fenced_total", None).max(0.0)).sum();
    fleet.stop_all();
    let logs = fleet.logs();
    assert!(all, "work after the wake-up did not drain\n{logs}");
    assert!(fenced_total >= 1.0, "nobody counted the fencing\n{logs}");
    assert!(logs.contains("fenced it"), "{logs}");
    assert_eq!(fleet.rqd.duplicate_launches(), Vec::<String>::new(), "a frame launched twice");
    assert_eq!(fleet.db.violations(), Vec::<String>::new());
}

/// Static flags that overlap (`alloc0,alloc1` and `alloc1,alloc2`): each instance serves only
/// pools its flags name, and the shared pool has exactly one owner.
#[test]
fn overlapping_static_flags_are_settled_by_ownership() {
    let mut fleet = fleet("inst_static");
    let a = fleet.start(&["--alloc_tags", "showa:alloc0,showa:alloc1"]);
    let b = fleet.start(&["--alloc_tags", "showa:alloc1,showa:alloc2"]);
    let (pa, pb) = (fleet.instances[a].pid(), fleet.instances[b].pid());
    let settled = wait_for(Duration::from_secs(20), || {
        let owners = fleet.owners();
        owners.get("alloc0") == Some(&pa) && owners.get("alloc2") == Some(&pb) && owners.contains_key("alloc1")
    });
    fleet.job("showa-static", "alloc0 | alloc1 | alloc2", 24);
    let mut client = fleet.db.client();
    let drained = wait_for(Duration::from_secs(30), || count(&mut client, "SELECT count(*) FROM proc") == 24);
    let owners = fleet.owners();
    fleet.stop_all();
    let logs = fleet.logs();
    assert!(settled, "{owners:?}\n{logs}");
    assert!(drained, "{logs}");
    assert_eq!(fleet.rqd.duplicate_launches(), Vec::<String>::new());
    assert_eq!(fleet.db.violations(), Vec::<String>::new());
}

/// The pass query's job slots: two instances sharing a cluster are handed different jobs of
/// the same priority first (their ranks' slots), and a lone instance sees plain FIFO order.
#[test]
fn instances_sharing_a_cluster_prefer_different_jobs() {
    use cue_scheduler::db::queries;
    let fleet = fleet("inst_slots");
    // 40 jobs: each slot of two holds at least 4 of them but with odds of about 1 in 10^8.
    for j in 0..40 {
        fleet.job(&format!("showa-slot{j:02}"), "alloc0", 2);
    }
    let cluster = fleet.manual_cluster();
    let mut client = fleet.db.client();
    let statement = client.prepare(&queries::pass_sql(true)).expect("prepare");
    let epoch = |c: &mut postgres::Client| c.query_one("SELECT extract(epoch FROM now())::bigint / 10", &[]).expect("epoch").get::<_, i64>(0);
    let jobs = |c: &mut postgres::Client, share: (i64, i64)| -> Vec<String> {
        let work = queries::fetch_pass(c, &statement, &cluster, &queries::PassBounds { jobs_max: 4, frames_per_layer: 10, share, aging_secs: None, hold_after_secs: None }, &[]).expect("pass").work;
        let mut names: Vec<String> = work.iter().map(|w| w.job.name.clone()).collect();
        names.dedup();
        names
    };
    // Retry once if the slots rotated between the two reads (every 10 s).
    let (a, b) = loop {
        let before = epoch(&mut client);
        let a = jobs(&mut client, (2, 0));
        let b = jobs(&mut client, (2, 1));
        if epoch(&mut client) == before {
            break (a, b);
        }
    };
    let alone = jobs(&mut client, (1, 0));
    assert_eq!((a.len(), b.len()), (4, 4), "{a:?} {b:?}");
    assert!(a.iter().all(|j| !b.contains(j)), "ranks 0 and 1 were handed the same jobs: {a:?} {b:?}");
    let fifo: Vec<String> = (0..4).map(|j| format!("showa-slot{j:02}")).collect();
    assert_eq!(alone, fifo, "a lone instance keeps FIFO order");
    assert_eq!(jobs(&mut client, (5, 9)).len(), 4, "an out-of-range rank is clamped, never an error");
}

/// Policy `smart` reads a starving job first: nothing running and started longer ago than
/// `scheduler.aging_after`, it goes before the higher-priority jobs that would otherwise fill
/// every pass's job limit. Without aging (legacy) the order is Cuebot's; a job with a frame
/// running is not starving.
#[test]
fn a_starving_job_is_read_before_higher_priorities_under_aging() {
    use cue_scheduler::db::queries;
    let fleet = fleet("inst_aging");
    for j in 0..6 {
        fleet.job(&format!("showa-busy{j}"), "alloc0", 2);
    }
    fleet.job("showa-old", "alloc0", 2);
    let mut client = fleet.db.client();
    client
        .batch_execute(
            "UPDATE job_resource SET int_priority = 200 WHERE pk_job IN (SELECT pk_job FROM job WHERE str_name LIKE 'showa-busy%');
             UPDATE job_resource SET int_priority = 50 WHERE pk_job = (SELECT pk_job FROM job WHERE str_name = 'showa-old');
             UPDATE job SET ts_started = now() - interval '10 minutes' WHERE str_name = 'showa-old';",
        )
        .expect("priorities");
    let cluster = fleet.manual_cluster();
    let statement = client.prepare(&queries::pass_sql(true)).expect("prepare");
    let first = |c: &mut postgres::Client, aging_secs: Option<f64>| -> Vec<String> {
        let bounds = queries::PassBounds { jobs_max: 4, frames_per_layer: 10, share: (1, 0), aging_secs, hold_after_secs: None };
        let work = queries::fetch_pass(c, &statement, &cluster, &bounds, &[]).expect("pass").work;
        let mut names: Vec<String> = work.iter().map(|w| w.job.name.clone()).collect();
        names.dedup();
        names
    };
    let legacy = first(&mut client, None);
    assert_eq!(legacy.len(), 4);
    assert!(!legacy.contains(&"showa-old".to_string()), "Cuebot's order reads the four busy jobs: {legacy:?}");
    let aged = first(&mut client, Some(30.0));
    assert_eq!(aged.first().map(String::as_str), Some("showa-old"), "{aged:?}");
    assert_eq!(aged.len(), 4);
    assert!(!first(&mut client, Some(3_600.0)).contains(&"showa-old".to_string()), "younger than aging_after: not starving");
    client
        .execute("UPDATE job_stat SET int_running_count = 1 WHERE pk_job = (SELECT pk_job FROM job WHERE str_name = 'showa-old')", &[])
        .expect("running");
    assert!(!first(&mut client, Some(30.0)).contains(&"showa-old".to_string()), "a job with a frame running is not starving");
}

/// Policy `smart` also reads first a job whose frames may need a host hold (a layer of more
/// than one core or with a GPU, frames waiting) once it started longer ago than
/// `scheduler.reservation_after`, oldest first: only a pass that reads such a frame can hold a
/// host for it. Starving jobs take at most half of a pass's job slots, so higher-priority and
/// new work is still read; without the bound the order is Cuebot's.
#[test]
fn jobs_that_may_need_a_hold_are_read_first_within_half_the_slots() {
    use cue_scheduler::db::queries;
    let fleet = fleet("inst_hold_first");
    for j in 0..4 {
        fleet.job(&format!("showa-busy{j}"), "alloc0", 2);
    }
    for j in 0..4 {
        fleet.job(&format!("showa-wide{j}"), "alloc0", 2);
    }
    let mut client = fleet.db.client();
    client
        .batch_execute(
            "UPDATE job_resource SET int_priority = 200 WHERE pk_job IN (SELECT pk_job FROM job WHERE str_name LIKE 'showa-busy%');
             UPDATE job_resource SET int_priority = 50 WHERE pk_job IN (SELECT pk_job FROM job WHERE str_name LIKE 'showa-wide%');
             UPDATE layer SET b_threadable = true, int_cores_min = 1600, int_cores_max = 1600
               WHERE pk_job IN (SELECT pk_job FROM job WHERE str_name LIKE 'showa-wide%' AND str_name <> 'showa-wide3');
             UPDATE job SET ts_started = now() - make_interval(mins => 10 - substr(str_name, 11)::int)
               WHERE str_name LIKE 'showa-wide%';",
        )
        .expect("priorities, wide layers and ages");
    let cluster = fleet.manual_cluster();
    let statement = client.prepare(&queries::pass_sql(true)).expect("prepare");
    let first = |c: &mut postgres::Client, hold_after_secs: Option<f64>| -> Vec<String> {
        let bounds = queries::PassBounds { jobs_max: 4, frames_per_layer: 10, share: (1, 0), aging_secs: None, hold_after_secs };
        let work = queries::fetch_pass(c, &statement, &cluster, &bounds, &[]).expect("pass").work;
        let mut names: Vec<String> = work.iter().map(|w| w.job.name.clone()).collect();
        names.dedup();
        names
    };
    let busy = |names: &[String]| names.iter().filter(|n| n.starts_with("showa-busy")).count();
    let legacy = first(&mut client, None);
    assert_eq!((legacy.len(), busy(&legacy)), (4, 4), "Cuebot's order reads the busy jobs: {legacy:?}");
    // wide0 started 10 minutes ago, wide1 9, wide2 8; wide3's layer is one core.
    let smart = first(&mut client, Some(10.0));
    assert_eq!(smart[..2], ["showa-wide0", "showa-wide1"], "the two oldest in the two aged slots: {smart:?}");
    assert_eq!(busy(&smart), 2, "the other half in Cuebot's order: {smart:?}");
    assert_eq!(busy(&first(&mut client, Some(3_600.0))), 4, "younger than reservation_after: not read first");
    client
        .execute("UPDATE layer_stat SET int_waiting_count = 0 WHERE pk_layer IN (SELECT pk_layer FROM layer l JOIN job j USING (pk_job) WHERE j.str_name = 'showa-wide0')", &[])
        .expect("nothing waiting");
    let smart = first(&mut client, Some(10.0));
    assert_eq!(smart[..2], ["showa-wide1", "showa-wide2"], "a job with no frame waiting is not read for a hold: {smart:?}");
}

/// One ownership session as an instance opens it: `application_name` ends in `[id]`.
fn ownership_session(db: &TestDb, id: &str) -> postgres::Client {
    let mut settings = db.db_settings();
    settings.instance = id.into();
    cue_scheduler::db::connect_as(&settings, "test ownership session", "cue-scheduler ownership").expect("connect")
}

/// Calls an advisory-lock function in its two-key form, as the ownership thread does; true
/// for a granted try (or a blocking lock, which returns void once granted).
fn advisory(client: &mut postgres::Client, function: &str, ns: i32, key: u32) -> bool {
    let row = client.query_one(&format!("SELECT {function}($1::int4, $2::int4)::text"), &[&ns, &(key as i32)]).expect(function);
    row.get::<_, String>(0) != "false"
}

fn backend_pid(client: &mut postgres::Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).expect("pid").get(0)
}

/// The lock protocol with two real sessions interleaved by hand, read back the way every
/// instance reads it: a session waiting for a pool is never taken for its owner; fencing the
/// owner hands the pool to the waiter at once; the fenced instance, back, cannot take it again.
#[test]
fn ownership_locks_interleaved_by_hand() {
    use cue_scheduler::limits::{OWNERSHIP_MEMBER_NS, OWNERSHIP_UNIT_NS};
    use ownership::{key32, read_locks};
    let db = TestDb::new("own_interleaved", Schema::Project).expect("db");
    let unit = key32("alloc-under-test");
    let (mut a, mut b, mut observer) = (ownership_session(&db, "host-a:1"), ownership_session(&db, "host-b:2"), db.client());
    let (a_pid, b_pid) = (backend_pid(&mut a), backend_pid(&mut b));
    assert!(advisory(&mut a, "pg_try_advisory_lock", OWNERSHIP_MEMBER_NS, key32("host-a:1")));
    assert!(advisory(&mut b, "pg_try_advisory_lock", OWNERSHIP_MEMBER_NS, key32("host-b:2")));
    assert!(advisory(&mut a, "pg_try_advisory_lock", OWNERSHIP_UNIT_NS, unit));
    // B cannot take the pool A owns.
    assert!(!advisory(&mut b, "pg_try_advisory_lock", OWNERSHIP_UNIT_NS, unit));
    let view = read_locks(&mut observer).expect("read locks");
    assert_eq!(view.owners.get(&unit), Some(&a_pid));
    let members: Vec<&str> = view.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(members, vec!["host-a:1", "host-b:2"]);
    // B now waits for the pool (a blocking request, as a move would make).
    let waiter = std::thread::spawn(move || {
        let granted = advisory(&mut b, "pg_advisory_lock", OWNERSHIP_UNIT_NS, unit);
        (granted, b)
    });
    let waiting = wait_for(Duration::from_secs(3), || {
        count(&mut observer, &format!("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid = {b_pid}")) == 1
    });
    assert!(waiting, "B's request is queued behind A's lock");
    let view = read_locks(&mut observer).expect("read locks");
    assert_eq!(view.owners.get(&unit), Some(&a_pid), "a waiter is never read as the owner");
    // Fence A (what a peer does to an instance idle past the fence time).
    let terminated: bool = observer.query_one("SELECT pg_terminate_backend($1)", &[&a_pid]).expect("terminate").get(0);
    assert!(terminated);
    let (granted, mut b) = waiter.join().expect("waiter thread");
    assert!(granted, "the waiter gets the pool as soon as the owner's session ends");
    let view = read_locks(&mut observer).expect("read locks");
    assert_eq!(view.owners.get(&unit), Some(&b_pid));
    let members: Vec<&str> = view.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(members, vec!["host-b:2"], "the fenced instance is no longer a member");
    // A wakes and reconnects: its membership is free to take again, the pool is not.
    let mut a = ownership_session(&db, "host-a:1");
    assert!(advisory(&mut a, "pg_try_advisory_lock", OWNERSHIP_MEMBER_NS, key32("host-a:1")));
    assert!(!advisory(&mut a, "pg_try_advisory_lock", OWNERSHIP_UNIT_NS, unit), "a fenced owner cannot take its pool back");
    // B lets go: A can take it.
    assert!(advisory(&mut b, "pg_advisory_unlock", OWNERSHIP_UNIT_NS, unit));
    assert!(advisory(&mut a, "pg_try_advisory_lock", OWNERSHIP_UNIT_NS, unit));
}
