//! cue-bench: runs the real `cue-scheduler` binary in dry-run mode against deterministic farms
//! in a real PostgreSQL and prints one results table (issue 4). Not a test: it asserts nothing
//! but the cap checks of the saturation workload, and prints figures.
//!
//! PostgreSQL figures come from `pg_stat_statements` (statements and execution time of the
//! scheduler's sessions), `pg_stat_database` (rows read) and /proc (CPU of every postgres
//! process but the benchmark's own poller). Scheduler CPU and peak RSS come from wait4().

use argh::FromArgs;
use cue_scheduler::sim::completer::Completer;
use cue_scheduler::sim::cuebot::{Cuebot, Mode};
use cue_scheduler::sim::farm::{self, Farm, Server};
use cue_scheduler::sim::procs::{self, Usage};
use cue_scheduler::sim::workloads::{self, DrainShape};
use postgres::Client;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[path = "cue-bench/chaos.rs"]
mod chaos;
#[path = "cue-bench/instances.rs"]
mod instances;
#[path = "cue-bench/quality.rs"]
mod quality;
use std::time::{Duration, Instant};

/// Benchmark the scheduler on the issue-4 workloads.
#[derive(FromArgs)]
struct Args {
    /// workloads, comma-separated: drain, saturation, latency, scale, accounting, chaos, failover,
    /// quality (default drain,saturation,latency)
    #[argh(option, default = "String::from(\"drain,saturation,latency\")")]
    workload: String,
    /// scheduler processes on the same farm (drain and saturation); a list (1,3) runs each
    /// count in turn, so the table compares them from one invocation
    #[argh(option, default = "String::from(\"1\")")]
    instances: String,
    /// schemas: project, real or both (real needs ../shared/cuebot/schema.sql)
    #[argh(option, default = "String::from(\"both\")")]
    schema: String,
    /// shrink every farm by this factor (CI uses 24: 50 hosts, 250 frames)
    #[argh(option, default = "1")]
    shrink: usize,
    /// seconds before a run is given up (quality: seconds after its arrival window ends)
    #[argh(option, default = "120")]
    timeout_secs: u64,
    /// also print the N statements with the most execution time per run
    #[argh(option, default = "0")]
    top: usize,
    /// seconds of fault injection in the chaos workload
    #[argh(option, default = "40")]
    chaos_secs: u64,
    /// directory for configs and scheduler logs
    #[argh(option, default = "String::from(\"bench-out\")")]
    out: String,
    /// quality: scheduling policies to compare (scheduler.policy), one run each (default legacy,smart)
    #[argh(option, default = "String::from(\"legacy,smart\")")]
    policies: String,
    /// quality: seed of the jobs, their arrival times and every frame run (default 2026)
    #[argh(option, default = "2026")]
    quality_seed: u64,
    /// quality: exit non-zero unless the smart policy meets its targets against legacy
    #[argh(switch)]
    assert_targets: bool,
}

struct Row {
    workload: String,
    schema: String,
    instances: usize,
    eligible: usize,
    booked: i64,
    wall_secs: f64,
    pg_exec_ms: f64,
    pg_cpu_secs: f64,
    statements: f64,
    rows_read: f64,
    usage: Vec<Usage>,
    wasted_attempts: f64,
    note: String,
}

const POLL: &str = "/* cue-bench */ SELECT COALESCE(sum(int_running_count), 0)::bigint FROM job_stat";

fn main() {
    let args: Args = argh::from_env();
    if let Err(e) = run(&args) {
        eprintln!("cue-bench: {e}");
        std::process::exit(1);
    }
}

fn schemas(args: &Args) -> Vec<(&'static str, String)> {
    let real = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/cuebot/schema.sql");
    let mut out = Vec::new();
    if args.schema == "project" || args.schema == "both" {
        out.push(("project", farm::PROJECT_SCHEMA.to_string()));
    }
    if args.schema == "real" || args.schema == "both" {
        match std::fs::read_to_string(&real) {
            Ok(sql) => out.push(("real", sql)),
            Err(_) => eprintln!("cue-bench: {} not found; real-schema runs skipped", real.display()),
        }
    }
    out
}

fn run(args: &Args) -> Result<(), String> {
    let server = Server::from_env()?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("create {}: {e}", args.out))?;
    let mut rows = Vec::new();
    let mut latency_lines = Vec::new();
    for workload in args.workload.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        for (schema, sql) in schemas(args) {
            eprintln!("cue-bench: {workload} on the {schema} schema …");
            match workload {
                "latency" => latency_lines.push(latency(args, &server, schema, &sql)?),
                "accounting" => latency_lines.extend(accounting(args, &server, schema, &sql)?),
                "chaos" => latency_lines.extend(chaos::run(args.chaos_secs, &args.out, &server, schema, &sql)?),
                "failover" => latency_lines.extend(instances::failover(args, &server, schema, &sql)?),
                // The quality runs always use the project schema: once, whatever --schema says.
                "quality" if schema == "real" && args.schema == "both" => {}
                "quality" => quality::run(args, &server)?,
                _ => {
                    for n in instance_counts(args)? {
                        rows.push(throughput(args, &server, workload, schema, &sql, n)?);
                    }
                }
            }
        }
    }
    println!("{}", table(&rows));
    for line in latency_lines {
        println!("{line}");
    }
    Ok(())
}

/// Upstream's stress farm shape (4 layers × 5 frames per job, 8 manual tags), shrunk.
fn drain_shape(hosts: usize, jobs: usize, shrink: usize) -> DrainShape {
    DrainShape {
        hosts: (hosts / shrink).max(8),
        jobs: (jobs / shrink).max(2),
        layers_per_job: 4,
        frames_per_layer: 5,
        manual_tags: 8,
        host_name: workloads::plain_host_name,
    }
}

/// Polls `done` every `poll` until it holds or `timeout` passes; returns whether it held.
fn wait_until(timeout: Duration, poll: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(poll);
    }
    done()
}

fn instance_counts(args: &Args) -> Result<Vec<usize>, String> {
    args.instances
        .split(',')
        .map(|n| n.trim().parse::<usize>().ok().filter(|n| (1..=16).contains(n)).ok_or_else(|| format!("--instances: `{n}` is not a count from 1 to 16")))
        .collect()
}

fn prepare(server: &Server, name: &str, schema_sql: &str) -> Result<Farm, String> {
    server.recreate_database(name)?;
    farm::load_schema(server, name, schema_sql)?;
    Ok(Farm::new(server.connect(name)?))
}

/// Resets the statistics right before the schedulers start.
fn settle_and_reset(client: &mut Client) -> Result<(), String> {
    let steps = [
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        "UPDATE host_stat SET ts_ping = now()",
        "VACUUM ANALYZE",
        "SELECT pg_stat_statements_reset()",
        "SELECT pg_stat_reset()",
    ];
    for step in steps {
        client.batch_execute(step).map_err(|e| format!("{step} (is pg_stat_statements preloaded?): {}", db_message(&e)))?;
    }
    Ok(())
}

fn db_message(e: &postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_string())
}

fn write_config(args: &Args, server: &Server, db: &str, tag: &str, port: u16) -> Result<PathBuf, String> {
    let path = Path::new(&args.out).join(format!("{tag}.yaml"));
    let text = format!(
        "logging:\n  level: info\ndatabase:\n  db_host: {}\n  db_port: {}\n  db_name: {db}\n  db_user: {}\n  pool_size: 8\n\
         rqd:\n  dry_run_mode: true\nqueue:\n  metrics_port: {port}\n  monitor_interval: 5s\nscheduler:\n  facility: lax\n",
        server.host, server.port, server.user
    );
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

fn start_instances(args: &Args, server: &Server, db: &str, tag: &str, n: usize) -> Result<Vec<procs::Instance>, String> {
    let env = vec![("OPENSCHEDULER_DATABASE__DB_PASS".to_string(), server.password.clone().unwrap_or_default())];
    let mut instances = Vec::new();
    for i in 0..n {
        let port = procs::free_port().map_err(|e| format!("free port: {e}"))?;
        let config = write_config(args, server, db, &format!("{tag}-{i}"), port)?;
        let log = Path::new(&args.out).join(format!("{tag}-{i}.log"));
        let child = procs::start_scheduler(&procs::scheduler_binary(), &config, &log, &env)
            .map_err(|e| format!("start {}: {e}", procs::scheduler_binary().display()))?;
        instances.push(procs::Instance { child, metrics_port: port });
    }
    Ok(instances)
}

fn poll_running(client: &mut Client) -> i64 {
    client.query_one(POLL, &[]).map(|r| r.get::<_, i64>(0)).unwrap_or(-1)
}

fn throughput(args: &Args, server: &Server, workload: &str, schema: &str, sql: &str, n: usize) -> Result<Row, String> {
    let db = format!("bench_{workload}_{schema}");
    let mut farm = prepare(server, &db, sql)?;
    let shrink = args.shrink.max(1);
    let eligible = match workload {
        "drain" | "scale" => {
            let (hosts, jobs) = if workload == "drain" { (1200, 300) } else { (10_000, 5_000) };
            workloads::seed_drain(&mut farm, &drain_shape(hosts, jobs, shrink), 42)?
        }
        "saturation" => workloads::seed_saturation(&mut farm, (400 / shrink).max(8), (150 / shrink).max(4), 7)?,
        other => return Err(format!("unknown workload `{other}`")),
    };
    // The jobs wait paused until every instance has joined and the pools are split, so the
    // clock measures the farm draining, the same way for 1 and for N instances.
    farm.client.batch_execute("UPDATE job SET b_paused = true").map_err(|e| db_message(&e))?;
    settle_and_reset(&mut farm.client)?;
    let mut poller = server.connect(&db)?;
    let poller_pid: i32 = poller.query_one("SELECT pg_backend_pid()", &[]).map_err(|e| e.to_string())?.get(0);
    let mut instances = start_instances(args, server, &db, &format!("{workload}-{schema}-x{n}"), n)?;
    let joined = instances::wait_split(&mut poller, n, Duration::from_secs(30));
    let (rows_before, cpu_before) = (rows_read(&mut poller)?, procs::postgres_cpu_secs(&[poller_pid]));
    poller.batch_execute("/* cue-bench */ UPDATE job SET b_paused = false").map_err(|e| db_message(&e))?;
    let started = Instant::now();
    let (booked, wall) = wait_for_drain(&mut poller, workload, eligible, started, Duration::from_secs(args.timeout_secs));
    let cpu_after = procs::postgres_cpu_secs(&[poller_pid]);
    let pages: Vec<String> = instances.iter().map(|i| procs::http_get(i.metrics_port, "/metrics").map(|(_, p)| p).unwrap_or_default()).collect();
    for (i, page) in pages.iter().enumerate() {
        // Kept beside the logs for a closer look at a run.
        let _ = std::fs::write(Path::new(&args.out).join(format!("{workload}-{schema}-x{n}-{i}.metrics")), page);
    }
    // A wasted attempt: a host checked out whose booking booked nothing (another booker took the
    // host's room or the frames first, or a guard refused). Searches that found no host
    // ("no_match") touch no host and are not counted.
    let outcome = |page: &String, label: &str| procs::metric_sum(page, "scheduler_checkout_outcome_total", Some(&format!("\"{label}\"")));
    let wasted_of = |page: &String| outcome(page, "no_progress") + outcome(page, "dispatch_error");
    let wasted: f64 = pages.iter().map(wasted_of).sum();
    let shares: Vec<String> = pages
        .iter()
        .map(|page| {
            let conflicts = procs::metric_sum(page, "scheduler_booking_conflicts_total", None);
            // `+ 0.0` turns the -0.0 an empty sum starts from into 0.
            format!(
                "{:.0}/{:.0}/{:.0}/{:.0}",
                procs::metric_sum(page, "scheduler_frames_dispatched_total", None) + 0.0,
                wasted_of(page) + 0.0,
                procs::metric_sum(page, "scheduler_attempts_wasted_by_others_total", None) + 0.0,
                conflicts + 0.0
            )
        })
        .collect();
    let (statements, exec_ms) = statement_stats(&mut poller)?;
    if args.top > 0 {
        print_top_statements(&mut poller, args.top, booked)?;
    }
    let rows = rows_read(&mut poller)? - rows_before;
    let usage: Vec<Usage> = instances.iter_mut().map(|i| procs::stop(&mut i.child, Duration::from_secs(30))).collect();
    let mut note = if workload == "saturation" { cap_check(&mut poller)? } else { String::new() };
    if n > 1 {
        note = format!("{note}{}booked/wasted/wasted by others/frames lost per instance {}{}", if note.is_empty() { "" } else { "; " }, shares.join(", "), if joined { "" } else { " (pools not split before the start)" });
    }
    if workload != "saturation" && booked < eligible as i64 {
        note = format!("{note}{}{}", if note.is_empty() { "" } else { "; " }, left_waiting(&mut poller)?);
    }
    Ok(Row {
        workload: workload.into(),
        schema: schema.into(),
        instances: n,
        eligible,
        booked,
        wall_secs: wall,
        pg_exec_ms: exec_ms,
        pg_cpu_secs: cpu_after - cpu_before,
        statements,
        rows_read: rows,
        usage,
        wasted_attempts: wasted,
        note,
    })
}

/// Waits until every eligible frame runs (drain, scale) or the count stops moving for 2 s
/// (saturation); returns (frames running, seconds until the last one was booked).
fn wait_for_drain(poller: &mut Client, workload: &str, eligible: usize, started: Instant, timeout: Duration) -> (i64, f64) {
    let mut last = -1;
    let mut last_change = started.elapsed().as_secs_f64();
    loop {
        std::thread::sleep(Duration::from_millis(25));
        let running = poll_running(poller);
        let now = started.elapsed().as_secs_f64();
        if running != last {
            last = running;
            last_change = now;
        }
        if workload != "saturation" && running >= eligible as i64 {
            return (running, now);
        }
        if (workload == "saturation" && running > 0 && now - last_change > 2.0) || started.elapsed() > timeout {
            return (running, last_change);
        }
    }
}

/// What a drain left waiting, and whether anything could still take it: per layer with WAITING
/// frames, how many hosts carry one of its tags and how many of those have the room one frame
/// needs (cores and memory) now. Frames here never end, so "no host has room" is a packing dead
/// end; a layer with a host that has room is a scheduler that stopped booking.
fn left_waiting(client: &mut Client) -> Result<String, String> {
    let rows = client
        .query(
            "/* cue-bench */
             WITH w AS (
               SELECT l.pk_layer, l.str_tags, l.int_cores_min, l.int_mem_min, count(*) AS n
               FROM frame f JOIN layer l ON l.pk_layer = f.pk_layer
               WHERE f.str_state = 'WAITING' GROUP BY 1, 2, 3, 4)
             SELECT w.n::bigint,
                    (SELECT count(DISTINCT h.pk_host) FROM host h JOIN host_tag t ON t.pk_host = h.pk_host
                     WHERE t.str_tag = ANY(string_to_array(replace(w.str_tags, ' ', ''), '|')))::bigint,
                    (SELECT count(DISTINCT h.pk_host) FROM host h JOIN host_tag t ON t.pk_host = h.pk_host
                     WHERE t.str_tag = ANY(string_to_array(replace(w.str_tags, ' ', ''), '|'))
                       AND h.str_lock_state = 'OPEN' AND h.int_cores_idle >= w.int_cores_min
                       AND h.int_mem_idle >= w.int_mem_min)::bigint
             FROM w LIMIT 100",
            &[],
        )
        .map_err(|e| format!("left waiting: {e}"))?;
    let layers: Vec<(i64, i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let totals = client
        .query_one("/* cue-bench */ SELECT count(*)::bigint, count(DISTINCT pk_layer)::bigint FROM frame WHERE str_state = 'WAITING'", &[])
        .map_err(|e| format!("left waiting: {e}"))?;
    let (frames, all_layers): (i64, i64) = (totals.get(0), totals.get(1));
    let with_room = layers.iter().filter(|l| l.2 > 0).count();
    Ok(format!(
        "left waiting: {frames} frames of {all_layers} layers; of {} layers checked, {with_room} have a host with room now (0: a packing dead end, as frames never end here)",
        layers.len()
    ))
}

fn rows_read(client: &mut Client) -> Result<f64, String> {
    let row = client
        .query_one(
            "/* cue-bench */ SELECT (tup_returned + tup_fetched)::float8 FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .map_err(|e| format!("pg_stat_database: {e}"))?;
    Ok(row.get(0))
}

/// (statements, execution ms) of everything but the benchmark's own queries.
fn statement_stats(client: &mut Client) -> Result<(f64, f64), String> {
    let row = client
        .query_one(
            "/* cue-bench */ SELECT COALESCE(sum(calls), 0)::float8, COALESCE(sum(total_exec_time), 0)::float8
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = current_database() AND query NOT LIKE '%cue-bench%' AND query NOT LIKE '%pg_stat_%'",
            &[],
        )
        .map_err(|e| format!("pg_stat_statements: {e}"))?;
    Ok((row.get(0), row.get(1)))
}

fn print_top_statements(client: &mut Client, n: usize, frames: i64) -> Result<(), String> {
    let rows = client
        .query(
            "/* cue-bench */ SELECT calls::float8, total_exec_time::float8, rows::float8,
                    regexp_replace(left(query, 110), '\\s+', ' ', 'g')
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = current_database() AND query NOT LIKE '%cue-bench%'
             ORDER BY total_exec_time DESC LIMIT $1",
            &[&(n as i64)],
        )
        .map_err(|e| format!("top statements: {}", db_message(&e)))?;
    eprintln!("  top statements (per frame: calls, exec ms, rows):");
    for row in rows {
        let (calls, ms, rows_out, text): (f64, f64, f64, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let f = frames.max(1) as f64;
        eprintln!("  {:8.3} {:8.3} {:8.2}  {text}", calls / f, ms / f, rows_out / f);
    }
    Ok(())
}

/// Cap violations after a saturation run: subscriptions over burst, jobs over max cores.
fn cap_check(client: &mut Client) -> Result<String, String> {
    let row = client
        .query_one(
            "/* cue-bench */ SELECT
               (SELECT count(*) FROM subscription s WHERE (SELECT COALESCE(sum(p.int_cores_reserved), 0) FROM proc p
                  JOIN host h ON h.pk_host = p.pk_host WHERE p.pk_show = s.pk_show AND h.pk_alloc = s.pk_alloc) > s.int_burst),
               (SELECT count(*) FROM job_resource jr WHERE (SELECT COALESCE(sum(p.int_cores_reserved), 0) FROM proc p
                  WHERE p.pk_job = jr.pk_job) > jr.int_max_cores),
               (SELECT COALESCE(sum(int_cores), 0)::bigint FROM subscription),
               (SELECT COALESCE(sum(int_burst), 0)::bigint FROM subscription)",
            &[],
        )
        .map_err(|e| format!("cap check: {e}"))?;
    let (subs, jobs, booked, burst): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(format!("cap violations: {subs} subscriptions, {jobs} jobs; booked {} of {} burst cores", booked / 100, burst / 100))
}

fn latency(args: &Args, server: &Server, schema: &str, sql: &str) -> Result<String, String> {
    let db = format!("bench_latency_{schema}");
    let mut farm = prepare(server, &db, sql)?;
    let shrink = args.shrink.max(1);
    let shape = DrainShape { hosts: (1200 / shrink).max(8), jobs: 0, layers_per_job: 1, frames_per_layer: 5, manual_tags: 8, host_name: workloads::plain_host_name };
    workloads::seed_drain(&mut farm, &shape, 42)?;
    let org_row = farm
        .client
        .query_one("SELECT f.pk_facility::text, s.pk_show::text, d.pk_dept::text, fo.pk_folder::text FROM facility f, show s, dept d, folder fo", &[])
        .map_err(|e| e.to_string())?;
    let org = workloads::Org {
        facility_id: org_row.get(0),
        show_id: org_row.get(1),
        show_name: "stress".into(),
        dept_id: org_row.get(2),
        folder_id: org_row.get(3),
        allocs: vec![],
    };
    settle_and_reset(&mut farm.client)?;
    let mut instances = start_instances(args, server, &db, &format!("latency-{schema}"), 1)?;
    let port = instances[0].metrics_port;
    let ready = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        procs::http_get(port, "/readyz").map(|(s, _)| s == 200).unwrap_or(false)
    });
    if !ready {
        return Err("scheduler never became ready".into());
    }
    let jobs = 20 / shrink.min(10);
    farm.client.batch_execute("SELECT pg_stat_statements_reset()").map_err(|e| e.to_string())?;
    let window = Instant::now();
    for j in 0..jobs {
        let mut layer = cue_scheduler::sim::farm::LayerSpec::new("render", "1-5", "alloc0 | alloc1 | alloc2");
        layer.mem_min_kib = 2 * 1_048_576;
        farm.job(&workloads::job_spec(&org, &format!("latency-job{j:02}"), 10_000_000, vec![layer]))?;
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(2));
    let window_secs = window.elapsed().as_secs_f64();
    let (statements, _) = statement_stats(&mut farm.client)?;
    let usage = procs::stop(&mut instances[0].child, Duration::from_secs(30));
    let mut latencies: Vec<f64> = farm
        .client
        .query(
            "SELECT extract(epoch FROM min(f.ts_started) - j.ts_started)::float8 FROM job j JOIN frame f ON f.pk_job = j.pk_job
             WHERE j.str_name LIKE 'latency-job%' AND f.ts_started IS NOT NULL GROUP BY j.pk_job",
            &[],
        )
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.get::<_, f64>(0))
        .collect();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |p: f64| cue_scheduler::sim::percentile(&latencies, p);
    Ok(format!(
        "first-dispatch latency ({schema} schema): {} of {jobs} jobs dispatched; p50 {:.3} s, p99 {:.3} s, max {:.3} s; \
         {:.1} statements/s while mostly idle; scheduler CPU {:.2} s, peak RSS {:.1} MB",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        statements / window_secs,
        usage.cpu_secs,
        usage.max_rss_kib as f64 / 1024.0
    ))
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | schema | inst | booked / eligible | wall s | frames/s | PG exec ms/frame | PG CPU ms/frame | stmts/frame | rows read/frame | sched CPU s | peak RSS MB | wasted attempts | note |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let frames = r.booked.max(1) as f64;
        let cpu: f64 = r.usage.iter().map(|u| u.cpu_secs).sum();
        let rss = r.usage.iter().map(|u| u.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} / {} ({:.1}%) | {:.2} | {:.0} | {:.3} | {:.3} | {:.2} | {:.0} | {:.2} | {:.1} | {:.0} | {} |",
            r.workload,
            r.schema,
            r.instances,
            r.booked,
            r.eligible,
            100.0 * r.booked as f64 / r.eligible.max(1) as f64,
            r.wall_secs,
            r.booked as f64 / r.wall_secs.max(1e-9),
            r.pg_exec_ms / frames,
            1000.0 * r.pg_cpu_secs / frames,
            r.statements / frames,
            r.rows_read / frames,
            cpu,
            rss,
            r.wasted_attempts,
            r.note
        );
    }
    out
}

/// Managed-show accounting at scale (issue 8): the cost of a full reconcile with 10,000 hosts and
/// 100,000 procs, and the extra PostgreSQL CPU per released frame that 1 and 3 listening
/// instances add at a sustained release rate, with their reconcile lag.
fn accounting(args: &Args, server: &Server, schema: &str, sql: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let db = format!("bench_accounting_{schema}");
    let mut farm = prepare(server, &db, sql)?;
    let shape = drain_shape(10_000, 5_000, args.shrink.max(1));
    let eligible = workloads::seed_drain(&mut farm, &shape, 42)?;
    settle_and_reset(&mut farm.client)?;
    // Book the whole farm with one instance (dry run: procs, no RQD).
    let mut poller = server.connect(&db)?;
    let started = Instant::now();
    let mut booker = start_instances(args, server, &db, &format!("accounting-book-{schema}"), 1)?;
    let (booked, _) = wait_for_drain(&mut poller, "drain", eligible, started, Duration::from_secs(args.timeout_secs.max(300)));
    procs::stop(&mut booker[0].child, Duration::from_secs(30));
    let hosts: i64 = poller.query_one("SELECT count(*) FROM host", &[]).map_err(|e| e.to_string())?.get(0);
    out.push(format!("accounting ({schema} schema): {hosts} hosts, {booked} procs booked"));
    let poller_pid: i32 = poller.query_one("SELECT pg_backend_pid()", &[]).map_err(|e| e.to_string())?.get(0);
    let shows: Vec<String> = poller
        .query("SELECT pk_show::text FROM show WHERE b_scheduler_managed", &[])
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut client = server.connect(&db)?;
    let full = |client: &mut Client, what: &str| -> Result<String, String> {
        let cpu = procs::cluster_cpu_secs(poller_pid, &[poller_pid]);
        let t = Instant::now();
        let keys = cue_scheduler::db::accounting::drift_keys(client, &shows).map_err(|e| e.to_string())?;
        let found = t.elapsed().as_secs_f64();
        let done = cue_scheduler::db::accounting::reconcile(client, &keys).map_err(|e| e.to_string())?;
        Ok(format!(
            "  full reconcile, {what}: {:.0} ms ({:.0} ms to find {} drifted rows, {} corrected), PostgreSQL CPU {:.0} ms",
            t.elapsed().as_secs_f64() * 1000.0,
            found * 1000.0,
            keys.len(),
            done.corrections.len(),
            (procs::cluster_cpu_secs(poller_pid, &[poller_pid]) - cpu) * 1000.0
        ))
    };
    out.push(full(&mut client, "nothing drifted")?);
    // Mode (c): 5% of the procs released with no rollup writes and no notification.
    let silent = (booked / 20).max(1);
    client
        .batch_execute(&format!(
            "WITH gone AS (DELETE FROM proc WHERE pk_proc IN (SELECT pk_proc FROM proc ORDER BY pk_proc LIMIT {silent})
                           RETURNING pk_host, pk_frame, int_cores_reserved c, int_mem_reserved m, int_gpus_reserved g, int_gpu_mem_reserved gm),
                  h AS (SELECT pk_host, sum(c) c, sum(m) m, sum(g) g, sum(gm) gm FROM gone GROUP BY pk_host),
                  hu AS (UPDATE host SET int_cores_idle = int_cores_idle + h.c, int_mem_idle = int_mem_idle + h.m,
                                         int_gpus_idle = int_gpus_idle + h.g, int_gpu_mem_idle = int_gpu_mem_idle + h.gm
                         FROM h WHERE host.pk_host = h.pk_host RETURNING 1)
             UPDATE frame SET str_state = 'SUCCEEDED', int_exit_status = 0, ts_stopped = now(), int_version = int_version + 1
             FROM gone WHERE frame.pk_frame = gone.pk_frame"
        ))
        .map_err(|e| format!("silent releases: {}", db_message(&e)))?;
    out.push(full(&mut client, &format!("after {silent} silent (mode c) releases"))?);
    // Releases at a sustained rate with 0, 1 and 3 listening instances; nothing else books.
    client.batch_execute("UPDATE job SET b_paused = true").map_err(|e| e.to_string())?;
    let rate = 500.0;
    let window = Duration::from_secs(10);
    let per_run = (rate * window.as_secs_f64()) as usize;
    let mut baseline: Option<f64> = None;
    for listeners in [0usize, 1, 3] {
        let mut instances = start_instances(args, server, &db, &format!("accounting-listen{listeners}-{schema}"), listeners)?;
        std::thread::sleep(Duration::from_secs(3)); // connected, start-up reconcile done
        let idle_cpu = {
            let cpu = procs::cluster_cpu_secs(poller_pid, &[poller_pid]);
            std::thread::sleep(window);
            procs::cluster_cpu_secs(poller_pid, &[poller_pid]) - cpu
        };
        let victims: Vec<(String, String)> = poller
            .query(
                "SELECT pk_frame::text, pk_proc::text FROM proc WHERE pk_frame IS NOT NULL ORDER BY pk_proc DESC LIMIT $1",
                &[&(per_run as i64)],
            )
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let (srv, name) = (server.clone(), db.clone());
        let completer = Completer::start(8, Arc::new(Cuebot::new(Mode::Notify)), None, move || srv.connect(&name), None)?;
        poller.batch_execute("SELECT pg_stat_statements_reset()").map_err(|e| e.to_string())?;
        // The accounting connections' own backends (listener, reconciler, drift reader): the
        // reconciliation's cost measured directly, free of the noise of everything else.
        let accounting_backends: Vec<(i32, String)> = poller
            .query(
                "/* cue-bench */ SELECT pid, application_name::text FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name LIKE 'cue-scheduler accounting%' ORDER BY 2",
                &[],
            )
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let accounting_pids: Vec<i32> = accounting_backends.iter().map(|b| b.0).collect();
        let backend_cpu: Vec<f64> = accounting_pids.iter().map(|pid| procs::pids_cpu_secs(&[*pid])).collect();
        let accounting_cpu = procs::pids_cpu_secs(&accounting_pids);
        let cpu = procs::cluster_cpu_secs(poller_pid, &[poller_pid]);
        let t0 = Instant::now() + Duration::from_millis(100);
        for (i, (frame, proc_id)) in victims.iter().enumerate() {
            completer.schedule(t0 + Duration::from_secs_f64(i as f64 / rate), frame, proc_id, 0);
        }
        std::thread::sleep(window + Duration::from_millis(100));
        while completer.pending() > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500)); // the last reconciles
        let busy_secs = t0.elapsed().as_secs_f64();
        let busy_cpu = procs::cluster_cpu_secs(poller_pid, &[poller_pid]) - cpu;
        let accounting_cpu = procs::pids_cpu_secs(&accounting_pids) - accounting_cpu;
        let backend_cpu: Vec<f64> = accounting_pids.iter().zip(&backend_cpu).map(|(pid, before)| procs::pids_cpu_secs(&[*pid]) - before).collect();
        let report = completer.stop();
        let per_backend: Vec<String> = accounting_backends
            .iter()
            .zip(&backend_cpu)
            .map(|((_, name), secs)| format!("{name} {:.3}", 1000.0 * secs / report.released.max(1) as f64))
            .collect();
        if !per_backend.is_empty() {
            eprintln!("  accounting backends, ms of CPU per release: {}", per_backend.join(", "));
        }
        if args.top > 0 {
            print_top_statements(&mut poller, args.top, report.released as i64)?;
        }
        let idle_scaled = idle_cpu * busy_secs / window.as_secs_f64();
        let release_cpu = busy_cpu - idle_scaled;
        let mut lag = Vec::new();
        for i in &instances {
            if let Ok((_, page)) = procs::http_get(i.metrics_port, "/metrics") {
                lag.push(histogram_quantiles(&page, "scheduler_accounting_reconcile_lag_seconds"));
            }
        }
        for i in instances.iter_mut() {
            procs::stop(&mut i.child, Duration::from_secs(30));
        }
        let achieved = report.released as f64 / busy_secs;
        let line = match baseline {
            None => {
                baseline = Some(release_cpu);
                format!(
                    "  {} releases at {achieved:.0}/s, no listener: Cuebot's own release costs {:.3} ms PostgreSQL CPU each (release p99 {:.3} s late; each took p50 {:.1} ms / p99 {:.1} ms)",
                    report.released,
                    1000.0 * release_cpu / report.released.max(1) as f64,
                    report.lateness_percentile(0.99),
                    report.release_percentile(0.5) * 1000.0,
                    report.release_percentile(0.99) * 1000.0
                )
            }
            Some(base) => {
                let extra = (release_cpu - base * report.released as f64 / per_run.max(1) as f64) / report.released.max(1) as f64;
                let lags: Vec<String> = lag.iter().map(|(p50, p99)| format!("p50 {:.3} s / p99 {:.3} s", p50, p99)).collect();
                format!(
                    "  {} releases at {achieved:.0}/s, {listeners} listening instance(s): extra PostgreSQL CPU {:.3} ms per released frame (whole cluster, less the run without listeners: noisy), the accounting backends' own {:.3} ms; reconcile lag {}; releases took p50 {:.1} ms / p99 {:.1} ms",
                    report.released,
                    1000.0 * extra,
                    1000.0 * accounting_cpu / report.released.max(1) as f64,
                    lags.join(", "),
                    report.release_percentile(0.5) * 1000.0,
                    report.release_percentile(0.99) * 1000.0
                )
            }
        };
        eprintln!("{line}");
        out.push(line);
    }
    Ok(out)
}

/// (p50, p99) of a Prometheus histogram, interpolated within buckets.
fn histogram_quantiles(page: &str, name: &str) -> (f64, f64) {
    let mut buckets: Vec<(f64, f64)> = page
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let q = |p: f64| {
        let target = p * total;
        let mut prev = (0.0, 0.0);
        for &(bound, count) in &buckets {
            if count >= target {
                if !bound.is_finite() {
                    return prev.0;
                }
                let span = (count - prev.1).max(1e-9);
                return prev.0 + (bound - prev.0) * ((target - prev.1) / span);
            }
            prev = (bound, count);
        }
        f64::NAN
    };
    (q(0.5), q(0.99))
}
