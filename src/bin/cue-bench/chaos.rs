//! The fault-injection run (issue 12): three scheduler processes book one farm while a
//! faithful Cuebot (mode b) releases frames, moves jobs between folders and changes caps and
//! limits; meanwhile instances are killed with SIGKILL and restarted, COMMITs are cut by a
//! proxy, RQDs refuse, hang past the deadline or accept and lose frames, and (when the run owns
//! its PostgreSQL, `CHAOS_PGDATA`) the database restarts. Caps are sampled during the run, not
//! only at the end. It fails (exit 1) on any violation.

use cue_scheduler::sim::completer::Completer;
use cue_scheduler::sim::cuebot::{Cuebot, Mode};
use cue_scheduler::sim::fake_rqd::{loopback_address, Behaviour, FakeRqd};
use cue_scheduler::sim::farm::{self, Farm, HostSpec, LayerSpec, Server};
use cue_scheduler::sim::procs;
use cue_scheduler::sim::proxy::{CommitCutter, CUT_AFTER_COMMIT};
use cue_scheduler::sim::workloads::{self, Rng};
use grpcio::RpcStatusCode;
use parking_lot::Mutex;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: usize = 36;
const JOBS: usize = 12;
const FRAMES_PER_LAYER: usize = 40;
const INSTANCES: usize = 3;

#[derive(Default)]
struct Tally {
    kills: AtomicU64,
    pg_restarts: AtomicU64,
    commit_cuts: AtomicU64,
    moves: AtomicU64,
    cap_changes: AtomicU64,
    limit_changes: AtomicU64,
    samples: AtomicU64,
    violations: Mutex<Vec<String>>,
}

fn sql(client: &mut postgres::Client, query: &str) -> Result<Vec<postgres::Row>, String> {
    client.query(query, &[]).map_err(|e| format!("{query}: {e}"))
}

pub fn run(secs: u64, out: &str, server: &Server, schema: &str, schema_sql: &str) -> Result<Vec<String>, String> {
    let db = format!("bench_chaos_{schema}");
    server.recreate_database(&db)?;
    farm::load_schema(server, &db, schema_sql)?;
    let mut f = Farm::new(server.connect(&db)?);
    let org = workloads::org(&mut f, "chaos", 1, 60)?; // a 60-core burst: the cap is reached
    let (alloc, tag) = org.allocs[0].clone();
    let dept2 = f.dept("Compositing")?;
    let folder2 = f.folder(&org.show_id, &dept2, "chaos-comp")?;
    let addresses: Vec<String> = (0..HOSTS).map(|i| loopback_address(90, i)).collect();
    let mut rng = Rng::new(1212);
    let hosts: Vec<HostSpec> = addresses.iter().map(|a| HostSpec::new(a, &alloc, &tag, *rng.pick(&[4i64, 8]), 32)).collect();
    f.hosts(&hosts)?;
    let mut jobs = Vec::new();
    let mut limited_layers = Vec::new();
    for j in 0..JOBS {
        let mut render = LayerSpec::new("render", &format!("1-{FRAMES_PER_LAYER}"), &tag);
        render.mem_min_kib = 2 * 1_048_576;
        let mut lic = LayerSpec::new("licensed", &format!("1-{}", FRAMES_PER_LAYER / 2), &tag);
        lic.mem_min_kib = 1_048_576;
        let ids = f.job(&workloads::job_spec(&org, &format!("chaos-job{j:02}"), 2_000, vec![render, lic]))?;
        limited_layers.push(ids.layers["licensed"].clone());
        jobs.push(ids.job_id);
    }
    let mut admin = server.connect(&db)?;
    admin
        .execute("INSERT INTO limit_record (pk_limit_record, str_name, int_max_value) VALUES ('CHAOS-LIMIT', 'licence', 6)", &[])
        .map_err(|e| e.to_string())?;
    for (i, layer) in limited_layers.iter().enumerate() {
        admin
            .execute(
                "INSERT INTO layer_limit (pk_layer_limit, pk_layer, pk_limit_record) VALUES ($1, $2, 'CHAOS-LIMIT')",
                &[&format!("CHAOS-LL{i}"), layer],
            )
            .map_err(|e| e.to_string())?;
    }
    let total_frames: i64 = sql(&mut admin, "SELECT count(*) FROM frame")?[0].get(0);

    // RQDs: most accept; some refuse, one hangs past the deadline, two accept and lose frames.
    let rqd = FakeRqd::start(&addresses)?;
    rqd.set_behaviour(&addresses[0], Behaviour::Fail(RpcStatusCode::UNKNOWN, "Exception calling application: Not launching, host is locked".into()));
    rqd.set_behaviour(&addresses[1], Behaviour::Fail(RpcStatusCode::UNAVAILABLE, "connection refused".into()));
    rqd.set_behaviour(&addresses[2], Behaviour::Hang);
    rqd.set_behaviour(&addresses[3], Behaviour::Vanish);
    rqd.set_behaviour(&addresses[4], Behaviour::Vanish);
    let cuebot = Arc::new(Cuebot::new(Mode::Notify));
    let (srv, name) = (server.clone(), db.clone());
    let completer = Arc::new(Completer::start(6, Arc::clone(&cuebot), Some(rqd.handle()), move || srv.connect(&name), None)?);
    {
        let (completer, rng) = (Arc::clone(&completer), Arc::new(Mutex::new(Rng::new(5))));
        rqd.on_launch(move |_, rf| {
            let (ms, failed) = {
                let mut r = rng.lock();
                (r.range(300, 1200) as u64, r.chance(0.05))
            };
            completer.schedule(Instant::now() + Duration::from_millis(ms), rf.get_frame_id(), rf.get_resource_id(), if failed { 1 } else { 0 });
        });
    }
    // The instances reach PostgreSQL through the COMMIT-cutting proxy.
    let proxy = CommitCutter::start(server.port).map_err(|e| format!("proxy: {e}"))?;
    let env = vec![("OPENSCHEDULER_DATABASE__DB_PASS".to_string(), server.password.clone().unwrap_or_default())];
    let config = |i: usize| -> Result<std::path::PathBuf, String> {
        let path = Path::new(out).join(format!("chaos-{i}.yaml"));
        let text = format!(
            "logging:\n  level: info\ndatabase:\n  db_host: 127.0.0.1\n  db_port: {}\n  db_name: {db}\n  db_user: {}\n  pool_size: 6\n\
             rqd:\n  grpc_port: {}\n  launch_timeout: 2s\nqueue:\n  metrics_port: 0\n  cluster_empty_sleep: 1s\n  cluster_saturated_sleep: 500ms\n\
             accounting:\n  recompute_interval: 5s\nscheduler:\n  facility: lax\n",
            proxy.port, server.user, rqd.port
        );
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Ok(path)
    };
    let start = |i: usize, generation: usize| -> Result<Child, String> {
        let log = Path::new(out).join(format!("chaos-{i}-{generation}.log"));
        procs::start_scheduler(&procs::scheduler_binary(), &config(i)?, &log, &env).map_err(|e| e.to_string())
    };
    let mut children = Children((0..INSTANCES).map(|i| start(i, 0)).collect::<Result<_, _>>()?);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (tally, stop, srv, name) = (Arc::clone(&tally), Arc::clone(&stop), server.clone(), db.clone());
        std::thread::spawn(move || sample_caps(&srv, &name, &tally, &stop))
    };
    let started = Instant::now();
    let mut generation = 1;
    let mut restart_due: Vec<(usize, Instant)> = Vec::new();
    let pgdata = std::env::var("CHAOS_PGDATA").ok();
    let mut tick = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        tick += 1;
        if admin.is_closed() {
            if let Ok(c) = server.connect(&db) {
                admin = c;
            }
        }
        let now = Instant::now();
        for (i, _) in restart_due.iter().filter(|(_, at)| *at <= now) {
            children.0[*i] = start(*i, generation)?;
            generation += 1;
        }
        restart_due.retain(|(_, at)| *at > now);
        if tick.is_multiple_of(6) {
            let i = rng.range(0, INSTANCES as i64 - 1) as usize;
            if !restart_due.iter().any(|(j, _)| *j == i) {
                let _ = children.0[i].kill(); // SIGKILL
                let _ = children.0[i].wait();
                tally.kills.fetch_add(1, Ordering::Relaxed);
                restart_due.push((i, now + Duration::from_secs(2)));
            }
        }
        if tick.is_multiple_of(3) {
            let job = rng.pick(&jobs).clone();
            let folder = if rng.chance(0.5) { folder2.clone() } else { org.folder_id.clone() };
            match cuebot.move_job(&mut admin, &job, &folder) {
                Ok(()) => {
                    tally.moves.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => eprintln!("chaos: job move failed: {e}"),
            }
        }
        if tick.is_multiple_of(4) {
            let job = rng.pick(&jobs).clone();
            let ok = match rng.range(0, 3) {
                0 => cuebot.set_job_max_cores(&mut admin, &job, rng.range(4, 20) as i32 * 100),
                1 => cuebot.set_folder_max_cores(&mut admin, &folder2, rng.range(10, 40) as i32 * 100),
                _ => cuebot.set_subscription_burst(&mut admin, &org.show_id, &alloc, rng.range(30, 80) * 100),
            };
            match ok {
                Ok(()) => {
                    tally.cap_changes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => eprintln!("chaos: cap change failed: {e}"),
            }
        }
        if tick.is_multiple_of(5) {
            let max = rng.range(3, 9) as i32;
            if admin.execute("UPDATE limit_record SET int_max_value = $1 WHERE pk_limit_record = 'CHAOS-LIMIT'", &[&max]).is_ok() {
                tally.limit_changes.fetch_add(1, Ordering::Relaxed);
            }
        }
        if tick.is_multiple_of(7) {
            proxy.arm(CUT_AFTER_COMMIT);
            tally.commit_cuts.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(dir), true) = (&pgdata, tick == secs / 2) {
            restart_postgres(dir)?;
            tally.pg_restarts.fetch_add(1, Ordering::Relaxed);
            admin = server.connect(&db)?;
        }
    }
    // Faults stop; every instance runs; the farm drains and every stranded booking is settled.
    for (i, _) in restart_due.drain(..) {
        children.0[i] = start(i, generation)?;
        generation += 1;
    }
    admin.execute("UPDATE subscription SET int_burst = 1000000 WHERE pk_show = $1", &[&org.show_id]).map_err(|e| e.to_string())?;
    admin.execute("UPDATE job_resource SET int_max_cores = 100000", &[]).map_err(|e| e.to_string())?;
    for host in &addresses[..5] {
        rqd.set_behaviour(host, Behaviour::Accept);
    }
    let settle_started = Instant::now();
    let drained = wait(Duration::from_secs(240), || {
        let left: i64 = admin.query_one("SELECT count(*) FROM frame WHERE str_state IN ('WAITING', 'RUNNING')", &[]).map(|r| r.get(0)).unwrap_or(1);
        left == 0 && completer.pending() == 0
    });
    let settle_secs = settle_started.elapsed().as_secs_f64();
    // A completion report lost between Cuebot's two release transactions leaves its proc
    // detached (no frame) but booked. Cuebot's maintenance releases such procs once their ping is
    // 300 s old; run that sweep now rather than wait, while the instances still listen.
    let cuebot_orphans = cuebot.clear_orphaned_procs(&mut admin, Duration::ZERO)?;
    // Let the listeners reconcile the last releases, then stop.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let samples_violations = sampler.join().map_err(|_| "sampler panicked".to_string())?;
    let usage: Vec<procs::Usage> = children.0.iter_mut().map(|c| procs::stop(c, Duration::from_secs(30))).collect();
    // Stranded bookings the sweeps recovered, and how old each was when it was recovered.
    let mut recovery_ages: Vec<f64> = Vec::new();
    let mut compensated = 0.0;
    for entry in std::fs::read_dir(out).map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("chaos-") && name.ends_with(".log") {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            for line in String::from_utf8_lossy(&bytes).lines() {
                if let Some(age) = line.split("was booked ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<f64>().ok()) {
                    recovery_ages.push(age);
                }
                if line.contains("stopped: frames booked") {
                    if let Some(n) = line.rsplit("compensated ").next().and_then(|n| n.trim().parse::<f64>().ok()) {
                        compensated += n;
                    }
                }
            }
        }
    }
    recovery_ages.sort_by(|a, b| a.total_cmp(b));
    let recovered = recovery_ages.len();
    let recovery_max = recovery_ages.last().copied().unwrap_or(0.0);
    rqd.on_launch(|_, _| {});
    let completer = Arc::try_unwrap(completer).map_err(|_| "completer still shared".to_string());
    let report = completer.map(|c| c.stop()).unwrap_or_default();
    let mut check = server.connect(&db)?;
    let invariants = Farm::new(server.connect(&db)?).violations(&invariants_sql())?;
    let unlaunched: i64 = check
        .query_one("SELECT count(*) FROM proc", &[])
        .map(|r| r.get(0))
        .map_err(|e| e.to_string())?;
    let duplicates = rqd.duplicate_launches().len();
    let launches = rqd.launch_count();
    let succeeded: i64 = sql(&mut check, "SELECT count(*) FROM frame WHERE str_state = 'SUCCEEDED'")?[0].get(0);
    let mut violations = tally.violations.lock().clone();
    violations.extend(samples_violations);
    violations.extend(invariants.iter().map(|v| format!("invariant: {v}")));
    if duplicates > 0 {
        violations.push(format!("{duplicates} launches of a frame that was already running"));
    }
    if unlaunched > 0 {
        violations.push(format!("{unlaunched} procs left after the farm drained (a booking without a launch)"));
        // Say what each one is, so a failure in CI can be diagnosed from its log alone.
        let rows = check
            .query(
                "SELECT p.pk_proc::text, COALESCE(p.pk_frame::text, '(none)'), COALESCE(f.str_state::text, '-'),
                        COALESCE(f.int_version, -1), h.str_name::text, round(extract(epoch FROM now() - p.ts_booked))::bigint,
                        round(extract(epoch FROM now() - p.ts_ping))::bigint
                 FROM proc p JOIN host h ON h.pk_host = p.pk_host LEFT JOIN frame f ON f.pk_frame = p.pk_frame
                 ORDER BY p.ts_booked LIMIT 10",
                &[],
            )
            .map_err(|e| e.to_string())?;
        for r in &rows {
            let (proc_id, frame, state, version, host, booked, ping): (String, String, String, i32, String, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
            violations.push(format!(
                "left proc {proc_id}: frame {frame} ({state}, version {version}) on {host}, booked {booked} s ago, pinged {ping} s ago"
            ));
        }
    }
    if !drained {
        violations.push("the farm did not drain after the faults stopped".into());
    }
    if !report.errors.is_empty() {
        violations.push(format!("{} of Cuebot's releases failed, e.g. {}", report.errors.len(), report.errors[0]));
    }
    let lines = vec![
        format!("chaos ({schema} schema): {HOSTS} hosts, {total_frames} frames, {INSTANCES} instances, {secs} s of faults"),
        "| faults injected | count |".to_string(),
        "|---|---|".to_string(),
        format!("| kill -9 of an instance (restarted 2 s later) | {} |", tally.kills.load(Ordering::Relaxed)),
        format!("| connection cut after COMMIT | {} |", tally.commit_cuts.load(Ordering::Relaxed)),
        format!("| PostgreSQL restart | {} ({} completion reports lost meanwhile, as Cuebot loses them; {cuebot_orphans} procs they left detached released by Cuebot's orphan sweep) |", tally.pg_restarts.load(Ordering::Relaxed), report.lost),
        format!("| job moved between folders (and departments) | {} |", tally.moves.load(Ordering::Relaxed)),
        format!("| cap changed (job, folder, subscription burst) | {} |", tally.cap_changes.load(Ordering::Relaxed)),
        format!("| limit changed | {} |", tally.limit_changes.load(Ordering::Relaxed)),
        "| RQDs refusing (UNKNOWN, UNAVAILABLE), hanging, losing frames | 2, 1, 2 hosts |".to_string(),
        format!(
            "| **result** | {launches} launches, {succeeded} of {total_frames} frames succeeded, {} Cuebot releases; {} cap samples; stranded bookings recovered by the sweeps: {recovered}, the oldest {recovery_max:.0} s after it was booked; compensations at stop: {compensated:.0}; drained {settle_secs:.1} s after the faults stopped; scheduler CPU {:.1} s; violations: {} |",
            report.released,
            tally.samples.load(Ordering::Relaxed),
            usage.iter().map(|u| u.cpu_secs).sum::<f64>(),
            violations.len()
        ),
    ];
    for line in &lines {
        eprintln!("{line}");
    }
    if !violations.is_empty() {
        for v in violations.iter().take(20) {
            eprintln!("violation: {v}");
        }
        return Err(format!("chaos: {} violations", violations.len()));
    }
    Ok(lines)
}

/// The scheduler processes; killed if the run ends early (an error), never left behind.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn invariants_sql() -> String {
    let shared = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/cuebot/invariants.sql");
    std::fs::read_to_string(shared).unwrap_or_else(|_| include_str!("../../../tests/sql/invariants.sql").to_string())
}

fn wait(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    super::wait_until(timeout, Duration::from_millis(250), done)
}

fn restart_postgres(pgdata: &str) -> Result<(), String> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path().join("bin/pg_ctl"))
        .find(|p| p.exists())
        .ok_or("no pg_ctl")?;
    let owner = std::env::var("CHAOS_PGUSER").unwrap_or_else(|_| "postgres".into());
    // As root the cluster belongs to another user (initdb refuses root); otherwise to us.
    // SAFETY: a plain syscall.
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", &owner, "--"]).arg(bin);
        c
    } else {
        std::process::Command::new(bin)
    };
    let status = command
        .args(["-D", pgdata, "-m", "fast", "-w", "restart"])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("pg_ctl restart failed: {status}"));
    }
    Ok(())
}

/// Every 250 ms: no limit, burst, job or folder cap over its value. A cap an admin lowered
/// below what already runs is not a violation unless usage grew past it.
fn sample_caps(server: &Server, db: &str, tally: &Tally, stop: &AtomicBool) -> Vec<String> {
    let mut client: Option<postgres::Client> = None;
    let mut violations = Vec::new();
    let mut last: std::collections::HashMap<String, (i64, i64)> = std::collections::HashMap::new();
    const CHECKS: &str = "
        SELECT 'limit ' || lr.str_name, (SELECT COALESCE(sum(ls.int_running_count), 0) FROM layer_limit ll JOIN layer_stat ls USING (pk_layer)
                                         WHERE ll.pk_limit_record = lr.pk_limit_record)::bigint, lr.int_max_value::bigint
        FROM limit_record lr
        UNION ALL
        SELECT 'subscription ' || s.pk_subscription, (SELECT COALESCE(sum(p.int_cores_reserved), 0) FROM proc p JOIN host h USING (pk_host)
                                                      WHERE p.pk_show = s.pk_show AND h.pk_alloc = s.pk_alloc)::bigint, s.int_burst::bigint
        FROM subscription s
        UNION ALL
        SELECT 'job ' || jr.pk_job, (SELECT COALESCE(sum(p.int_cores_reserved), 0) FROM proc p WHERE p.pk_job = jr.pk_job)::bigint, jr.int_max_cores::bigint
        FROM job_resource jr
        UNION ALL
        SELECT 'folder ' || fr.pk_folder, (SELECT COALESCE(sum(p.int_cores_reserved), 0) FROM proc p JOIN job j USING (pk_job) WHERE j.pk_folder = fr.pk_folder)::bigint,
               fr.int_max_cores::bigint
        FROM folder_resource fr WHERE fr.int_max_cores >= 0";
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(250));
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = server.connect(db).ok(); // the database may be restarting
        }
        let Some(c) = client.as_mut() else { continue };
        let Ok(rows) = c.query(CHECKS, &[]) else { continue };
        tally.samples.fetch_add(1, Ordering::Relaxed);
        for row in rows {
            let (what, used, cap): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
            // A cap an admin lowered between two samples still allowed what started before;
            // usage must have grown past every cap in force since the last sample.
            let (before, cap_before) = last.insert(what.clone(), (used, cap)).unwrap_or((0, cap));
            if used > cap.max(cap_before) && used > before {
                violations.push(format!("{what}: {used} in use over its cap {cap} (was {before}, cap before {cap_before})"));
            }
        }
    }
    violations
}
