//! Several instances (issue 10): waiting for the pools to be split, and the `failover` workload
//! (kill -9 mid-drain, a joiner, SIGSTOP and SIGCONT), with the invariants checked after.

use super::{db_message, drain_shape, left_waiting, poll_running, prepare, settle_and_reset, start_instances, wait_until, Args};
use cue_scheduler::pipeline::ownership;
use cue_scheduler::sim::farm::{Farm, LayerSpec, Server};
use cue_scheduler::sim::procs;
use cue_scheduler::sim::workloads;
use postgres::Client;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Waits until `n` instances are live and every pool with a candidate is owned, each instance
/// owning one when there are enough pools. Returns whether that happened in time.
pub fn wait_split(client: &mut Client, n: usize, timeout: Duration) -> bool {
    wait(timeout, || {
        let Ok(status) = ownership::read_status(client, "") else { return false };
        let units = status.unowned.len() + status.instances.iter().map(|i| i.units.len()).sum::<usize>();
        status.instances.len() == n && status.unowned.is_empty() && status.instances.iter().all(|i| !i.units.is_empty() || units < n)
    })
}

fn wait(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    wait_until(timeout, Duration::from_millis(20), done)
}

/// Pid of an instance id `host:pid[.n]`.
fn pid_of(id: &str) -> u32 {
    id.rsplit(':').next().and_then(|p| p.split('.').next()).and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// Pool name -> owner pid.
fn owners(client: &mut Client) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    if let Ok(status) = ownership::read_status(client, "") {
        for instance in &status.instances {
            for unit in &instance.units {
                out.insert(unit.name.clone(), pid_of(&instance.id));
            }
        }
    }
    out
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child of this process.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Seconds until a one-frame job on `tag` has a proc, or NaN after `timeout`.
fn probe(client: &mut Client, farm: &mut Farm, org: &workloads::Org, name: &str, tag: &str, from: Instant, timeout: Duration) -> Result<f64, String> {
    farm.job(&workloads::job_spec(org, name, 100_000, vec![LayerSpec::new("probe", "1-1", tag)]))?;
    let booked = wait(timeout, || {
        client
            .query_one("/* cue-bench */ SELECT count(*) FROM proc p JOIN job j ON j.pk_job = p.pk_job WHERE j.str_name = $1", &[&name])
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false)
    });
    Ok(if booked { from.elapsed().as_secs_f64() } else { f64::NAN })
}

/// The `failover` workload: the drain farm with 3 instances; mid-drain one is killed with
/// SIGKILL, a fourth joins, and one is frozen with SIGSTOP for the fencing and then woken.
pub fn failover(args: &Args, server: &Server, schema: &str, sql: &str) -> Result<Vec<String>, String> {
    let db = format!("bench_failover_{schema}");
    let mut farm = prepare(server, &db, sql)?;
    let shape = drain_shape(1200, 300, args.shrink.max(1));
    let eligible = workloads::seed_drain(&mut farm, &shape, 42)?;
    // The probe jobs need the organisation rows the drain made.
    let org = org_of(&mut farm.client)?;
    farm.client.batch_execute("UPDATE job SET b_paused = true").map_err(|e| db_message(&e))?;
    settle_and_reset(&mut farm.client)?;
    let mut poller = server.connect(&db)?;
    let mut instances = start_instances(args, server, &db, &format!("failover-{schema}"), 3)?;
    let split = wait_split(&mut poller, 3, Duration::from_secs(30));
    poller.batch_execute("/* cue-bench */ UPDATE job SET b_paused = false").map_err(|e| db_message(&e))?;
    let started = Instant::now();
    // Mid-drain: a third of the frames running.
    wait(Duration::from_secs(args.timeout_secs), || poll_running(&mut poller) >= (eligible / 3) as i64);
    let at_kill = poll_running(&mut poller);
    let before = owners(&mut poller);
    let (victim_pool, victim) = before.iter().next().map(|(p, o)| (p.clone(), *o)).ok_or("no pool owned")?;
    let victim_tag = victim_pool.trim_start_matches("lax.").to_string();
    let killed_at = Instant::now();
    signal(victim, libc::SIGKILL);
    let resume = probe(&mut poller, &mut farm, &org, "failover-probe-kill", &victim_tag, killed_at, Duration::from_secs(30))?;
    let drained = wait(Duration::from_secs(args.timeout_secs), || poll_running(&mut poller) > eligible as i64);
    // What the survivors left, read now (before the joiner and the freeze change the farm).
    let left = if drained { String::new() } else { format!(" ({})", left_waiting(&mut poller)?) };
    let drain_secs = started.elapsed().as_secs_f64();

    // A joiner: time until it owns a pool.
    let joined_at = Instant::now();
    let mut joiner = start_instances(args, server, &db, &format!("failover-join-{schema}"), 1)?;
    let joiner_pid = joiner[0].child.id();
    let join = if wait(Duration::from_secs(30), || owners(&mut poller).values().any(|p| *p == joiner_pid)) { joined_at.elapsed().as_secs_f64() } else { f64::NAN };

    // SIGSTOP an owner that is not the joiner: time until its sessions are terminated, and
    // until a job on its pool runs elsewhere.
    let current = owners(&mut poller);
    let (frozen_pool, frozen) = current.iter().find(|(_, p)| **p != joiner_pid).map(|(n, p)| (n.clone(), *p)).ok_or("no owner to freeze")?;
    let frozen_tag = frozen_pool.trim_start_matches("lax.").to_string();
    let stopped_at = Instant::now();
    signal(frozen, libc::SIGSTOP);
    let pattern = format!("%:{frozen}]");
    let fenced = wait(Duration::from_secs(60), || {
        poller
            .query_one("/* cue-bench */ SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1", &[&pattern])
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    });
    let fence = if fenced { stopped_at.elapsed().as_secs_f64() } else { f64::NAN };
    let frozen_probe = probe(&mut poller, &mut farm, &org, "failover-probe-frozen", &frozen_tag, stopped_at, Duration::from_secs(60))?;
    signal(frozen, libc::SIGCONT);
    let woke_at = Instant::now();
    let rejoin = if wait(Duration::from_secs(30), || {
        ownership::read_status(&mut poller, "").map(|s| s.instances.iter().any(|i| pid_of(&i.id) == frozen)).unwrap_or(false)
    }) {
        woke_at.elapsed().as_secs_f64()
    } else {
        f64::NAN
    };
    let after_wake = probe(&mut poller, &mut farm, &org, "failover-probe-woken", &frozen_tag, woke_at, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(2));

    for instance in instances.iter_mut().chain(joiner.iter_mut()) {
        signal(instance.child.id(), libc::SIGCONT);
        procs::stop(&mut instance.child, Duration::from_secs(30));
    }
    let twice: i64 = poller
        .query_one("/* cue-bench */ SELECT count(*) FROM (SELECT pk_frame FROM proc GROUP BY 1 HAVING count(*) > 1) t", &[])
        .map(|r| r.get(0))
        .map_err(|e| db_message(&e))?;
    let violations = Farm::new(server.connect(&db)?).violations(&super::chaos::invariants_sql())?;
    let verdict = if violations.is_empty() && twice == 0 && split && drained {
        "invariants clean, no frame booked twice".to_string()
    } else {
        format!("split {split}, drained {drained}{left}, frames booked twice {twice}, violations: {}", violations.join("; "))
    };
    let line = format!(
        "failover ({schema}, {} hosts, {eligible} frames, 3 instances): kill -9 at {at_kill} running -> first booking on its pool {resume:.2} s later; drain done {drain_secs:.1} s; \
         joiner owned a pool {join:.2} s after start; SIGSTOP -> fenced {fence:.1} s, its pool booking {frozen_probe:.1} s; SIGCONT -> rejoined {rejoin:.2} s, its pool booking {after_wake:.2} s; {verdict}",
        shape.hosts
    );
    eprintln!("{line}");
    if !verdict.starts_with("invariants clean") {
        return Err(line);
    }
    Ok(vec![line])
}

/// The organisation rows `seed_drain` made (show `stress`).
fn org_of(client: &mut Client) -> Result<workloads::Org, String> {
    let row = client
        .query_one(
            "SELECT s.pk_show::text, f.pk_facility::text, d.pk_dept::text, fo.pk_folder::text
             FROM show s, facility f, dept d, folder fo WHERE s.str_name = 'stress' AND f.str_name = 'lax' AND fo.pk_show = s.pk_show AND fo.pk_dept = d.pk_dept LIMIT 1",
            &[],
        )
        .map_err(|e| db_message(&e))?;
    Ok(workloads::Org {
        show_id: row.get(0),
        facility_id: row.get(1),
        dept_id: row.get(2),
        folder_id: row.get(3),
        show_name: "stress".into(),
        allocs: Vec::new(),
    })
}
