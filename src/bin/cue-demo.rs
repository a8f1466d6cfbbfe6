//! cue-demo: a whole farm on one machine. Seeds a demo farm in PostgreSQL, serves every host
//! with a fake RQD (a real grpcio server) that "runs" each frame for a simulated time and then
//! completes it in the database the way Cuebot does, runs the real `cue-scheduler` binary
//! until the farm drains, shows progress, and ends with a summary and an SVG plot.

use argh::FromArgs;
use cue_scheduler::sim::completer::{Completer, CompleterReport};
use cue_scheduler::sim::cuebot::{Cuebot, Mode, Released};
use cue_scheduler::sim::fake_rqd::{loopback_address, FakeRqd};
use cue_scheduler::sim::farm::{self, Farm, Server};
use cue_scheduler::sim::plot::{self, Axis, Series, Side};
use cue_scheduler::sim::percentile;
use cue_scheduler::sim::procs;
use cue_scheduler::sim::workloads::{self, Rng};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Run the cue-scheduler demo farm.
#[derive(FromArgs)]
struct Args {
    /// simulated hosts (default 200)
    #[argh(option, default = "200")]
    hosts: usize,
    /// jobs to submit (default 40)
    #[argh(option, default = "40")]
    jobs: usize,
    /// mean simulated frame run time in seconds (default 10.0: about 1,500 frames run at once
    /// on the default farm, so about 150 end each second; each release is Cuebot's own
    /// statements, about 2.5 ms of PostgreSQL CPU, and on 2 cores 1-second frames end faster
    /// than any faithful Cuebot can release them)
    #[argh(option, default = "10.0")]
    frame_secs: f64,
    /// fraction of frame runs that fail (exit 1; retried by Cuebot's rule) (default 0.05)
    #[argh(option, default = "0.05")]
    failure_rate: f64,
    /// give up after this many seconds (default 300)
    #[argh(option, default = "300")]
    timeout_secs: u64,
    /// output directory for the plot, config and scheduler log (default demo-out)
    #[argh(option, default = "String::from(\"demo-out\")")]
    out: String,
    /// how the simulated Cuebot releases finished frames: notify (mid-2026, the default),
    /// silent (notifications off), pr2533 (decrements every show) or dec2025
    #[argh(option, default = "String::from(\"notify\")")]
    cuebot_mode: String,
    /// threads applying Cuebot's release writes (default 24)
    #[argh(option, default = "24")]
    completer_threads: usize,
}

struct Sim {
    waiting_since: Mutex<HashMap<String, Instant>>,
    book_latencies: Mutex<Vec<f64>>,
    rng: Mutex<Rng>,
    frame_secs: f64,
}

fn main() {
    let args: Args = argh::from_env();
    if let Err(e) = run(&args) {
        eprintln!("cue-demo: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    if !(args.frame_secs.is_finite() && args.frame_secs > 0.0 && args.frame_secs <= 3600.0) {
        return Err(format!("--frame-secs {}: a number of seconds above 0 and at most 3600", args.frame_secs));
    }
    if !(0.0..=1.0).contains(&args.failure_rate) {
        return Err(format!("--failure-rate {}: a fraction from 0 to 1", args.failure_rate));
    }
    if args.hosts == 0 {
        return Err("--hosts 0: the farm needs at least one host".into());
    }
    let server = Server::from_env()?;
    let db = "cue_demo";
    std::fs::create_dir_all(&args.out).map_err(|e| format!("create {}: {e}", args.out))?;
    server.recreate_database(db)?;
    farm::load_schema(&server, db, farm::PROJECT_SCHEMA)?;
    let mut farm = Farm::new(server.connect(db)?);
    let addresses: Vec<String> = (0..args.hosts).map(|i| loopback_address(77, i)).collect();
    let total_frames = workloads::seed_demo(&mut farm, &addresses, args.jobs, 2026)?;
    let total_cores: i64 = farm.client.query_one("SELECT sum(int_cores)::bigint FROM host", &[]).map_err(|e| e.to_string())?.get(0);
    println!("demo farm: {} hosts ({} cores), {} jobs, {} frames; simulated frames run ~{:.1} s, {:.0}% fail", args.hosts, total_cores / 100, args.jobs, total_frames, args.frame_secs, args.failure_rate * 100.0);

    let mode = Mode::parse(&args.cuebot_mode).ok_or_else(|| format!("--cuebot-mode: unknown mode `{}` (notify, silent, pr2533, dec2025)", args.cuebot_mode))?;
    let sim = Arc::new(Sim {
        waiting_since: Mutex::new(HashMap::new()),
        book_latencies: Mutex::new(Vec::new()),
        rng: Mutex::new(Rng::new(7)),
        frame_secs: args.frame_secs,
    });
    let rqd = FakeRqd::start(&addresses)?;
    let started = Instant::now();
    // Cuebot's release writes, applied when each frame's simulated run ends.
    let on_done = {
        let sim = Arc::clone(&sim);
        Box::new(move |frame_id: &str, released: &Released| {
            if matches!(released, Released::Frame { state } if state == "WAITING") {
                sim.waiting_since.lock().insert(frame_id.to_string(), Instant::now());
            }
        })
    };
    let (conn_server, conn_db) = (server.clone(), db.to_string());
    let completer = Arc::new(Completer::start(
        args.completer_threads,
        Arc::new(Cuebot::new(mode)),
        Some(rqd.handle()),
        move || conn_server.connect(&conn_db),
        Some(on_done),
    )?);
    {
        let (sim, completer) = (Arc::clone(&sim), Arc::clone(&completer));
        let failure_rate = args.failure_rate;
        rqd.on_launch(move |_host, run_frame| {
            let now = Instant::now();
            let since = sim.waiting_since.lock().remove(run_frame.get_frame_id()).unwrap_or(started);
            sim.book_latencies.lock().push(now.duration_since(since).as_secs_f64());
            let (secs, failed) = {
                let mut rng = sim.rng.lock();
                (sim.frame_secs * (0.5 + rng.range(0, 1000) as f64 / 1000.0), rng.chance(failure_rate))
            };
            let due = now + Duration::from_secs_f64(secs);
            completer.schedule(due, run_frame.get_frame_id(), run_frame.get_resource_id(), if failed { 1 } else { 0 });
        });
    }
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let config = Path::new(&args.out).join("scheduler.yaml");
    std::fs::write(&config, demo_config(&server, db, port, rqd.port)).map_err(|e| e.to_string())?;
    let log = Path::new(&args.out).join("scheduler.log");
    let env = vec![("OPENSCHEDULER_DATABASE__DB_PASS".to_string(), server.password.clone().unwrap_or_default())];
    let mut child = procs::start_scheduler(&procs::scheduler_binary(), &config, &log, &env)
        .map_err(|e| format!("start {}: {e}", procs::scheduler_binary().display()))?;
    println!("scheduler started (pid {}), metrics on http://127.0.0.1:{port}/metrics, log {}", child.id(), log.display());
    let samples = watch(&mut farm, total_cores, total_frames, started, Duration::from_secs(args.timeout_secs));
    // Let the accounting listener reconcile the last releases before the scheduler stops.
    std::thread::sleep(Duration::from_millis(500));
    let usage = procs::stop(&mut child, Duration::from_secs(30));
    rqd.on_launch(|_, _| {});
    let report = match Arc::try_unwrap(completer) {
        Ok(completer) => completer.stop(),
        Err(_) => CompleterReport::default(),
    };
    summarize(&mut farm, &sim, &samples, started, usage, args, total_cores, &report, mode)
}

fn demo_config(server: &Server, db: &str, metrics_port: u16, rqd_port: u16) -> String {
    format!(
        "logging:\n  level: info\ndatabase:\n  db_host: {}\n  db_port: {}\n  db_name: {db}\n  db_user: {}\n  pool_size: 10\n\
         rqd:\n  grpc_port: {rqd_port}\n  dry_run_mode: false\n\
         queue:\n  metrics_port: {metrics_port}\n  cluster_empty_sleep: 5s\n  cluster_saturated_sleep: 1s\n  monitor_interval: 10s\n\
         host_cache:\n  monitoring_interval: 2s\nscheduler:\n  facility: lax\n",
        server.host, server.port, server.user
    )
}

/// (seconds, utilisation %, waiting frames, running frames)
type Sample = (f64, f64, f64, f64);

fn watch(farm: &mut Farm, total_cores: i64, total_frames: usize, started: Instant, timeout: Duration) -> Vec<Sample> {
    let mut samples = Vec::new();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last_print = Instant::now() - Duration::from_secs(10);
    let mut last_done = 0i64;
    let mut last_t = 0.0;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let row = farm.client.query_one(
            "SELECT count(*) FILTER (WHERE str_state = 'WAITING'), count(*) FILTER (WHERE str_state = 'RUNNING'),
                    count(*) FILTER (WHERE str_state = 'SUCCEEDED'), count(*) FILTER (WHERE str_state = 'DEAD'),
                    (SELECT COALESCE(sum(int_cores - int_cores_idle), 0)::bigint FROM host)
             FROM frame",
            &[],
        );
        let Ok(row) = row else { continue };
        let (waiting, running, done, dead, used): (i64, i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let t = started.elapsed().as_secs_f64();
        let util = 100.0 * used as f64 / total_cores.max(1) as f64;
        samples.push((t, util, waiting as f64, running as f64));
        if last_print.elapsed() >= Duration::from_millis(if tty { 250 } else { 2000 }) {
            let rate = (done + dead - last_done) as f64 / (t - last_t).max(1e-3);
            let line = format!("[{t:6.1}s] waiting {waiting:5}  running {running:5}  done {done:5}  dead {dead:4}  util {util:5.1}%  {rate:6.1} frames/s");
            if tty {
                print!("\r{line}");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
            last_print = Instant::now();
            last_done = done + dead;
            last_t = t;
        }
        if (done + dead) as usize >= total_frames || started.elapsed() > timeout {
            if tty {
                println!();
            }
            return samples;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    farm: &mut Farm,
    sim: &Sim,
    samples: &[Sample],
    started: Instant,
    usage: procs::Usage,
    args: &Args,
    total_cores: i64,
    completions: &CompleterReport,
    mode: Mode,
) -> Result<(), String> {
    let elapsed = started.elapsed().as_secs_f64();
    let row = farm
        .client
        .query_one("SELECT count(*) FILTER (WHERE str_state = 'SUCCEEDED'), count(*) FILTER (WHERE str_state = 'DEAD'), count(*) FROM frame", &[])
        .map_err(|e| e.to_string())?;
    let (done, dead, total): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let mut latencies = sim.book_latencies.lock().clone();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let busy: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let mean_util = busy.iter().sum::<f64>() / busy.len().max(1) as f64;
    let peak_util = busy.iter().copied().fold(0.0, f64::max);
    let violations = farm.violations(include_str!("../../tests/sql/invariants.sql"))?;
    println!("\nsummary after {elapsed:.1} s:");
    println!("  frames: {done} succeeded, {dead} dead (failed past their retries), {} not finished, of {total}", total - done - dead);
    println!("  launches: {}  ({:.1} frames/s)", latencies.len(), latencies.len() as f64 / elapsed.max(1e-3));
    println!(
        "  time to book (waiting -> launched): p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!("  farm utilisation ({} cores): mean {mean_util:.1}%, peak {peak_util:.1}%", total_cores / 100);
    println!(
        "  simulated Cuebot ({} release mode): {} releases, each applied p50 {:.3} s / p99 {:.3} s / max {:.3} s after its frame's simulated end",
        mode.name(),
        completions.released,
        completions.lateness_percentile(0.5),
        completions.lateness_percentile(0.99),
        completions.lateness_secs.last().copied().unwrap_or(0.0)
    );
    println!(
        "  Cuebot's release transactions took p50 {:.1} ms / p99 {:.1} ms (waits on the scheduler's locks included)",
        completions.release_percentile(0.5) * 1000.0,
        completions.release_percentile(0.99) * 1000.0
    );
    if let Some(e) = completions.errors.first() {
        println!("  simulated Cuebot: {} releases failed, e.g. {e}", completions.errors.len());
    }
    println!("  scheduler: {:.2} s CPU, peak RSS {:.1} MB, exit code {:?}", usage.cpu_secs, usage.max_rss_kib as f64 / 1024.0, usage.exit_code);
    if violations.is_empty() {
        println!("  database consistent (host idle, procs, stats and rollups all agree)");
    } else {
        println!("  database INCONSISTENT: {} violations, e.g. {}", violations.len(), violations[0]);
    }
    let util: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.1)).collect();
    let waiting: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.2)).collect();
    let running: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.3)).collect();
    let max_frames = waiting.iter().chain(running.iter()).map(|p| p.1).fold(1.0, f64::max);
    let svg = plot::svg(
        &format!("cue-scheduler demo: {} hosts, {} frames", args.hosts, total),
        Axis { label: "farm utilisation (% of cores booked)", max: 100.0 },
        Some(Axis { label: "frames", max: max_frames }),
        &[
            Series { name: "farm utilisation", colour: "#1f77b4", points: &util, side: Side::Left },
            Series { name: "waiting frames (queue depth)", colour: "#d62728", points: &waiting, side: Side::Right },
            Series { name: "running frames", colour: "#2ca02c", points: &running, side: Side::Right },
        ],
    );
    let path = Path::new(&args.out).join("farm.svg");
    std::fs::write(&path, svg).map_err(|e| format!("write {}: {e}", path.display()))?;
    println!("  plot: {}", path.display());
    if done + dead < total {
        return Err(format!("the farm did not drain within {} s", args.timeout_secs));
    }
    if !violations.is_empty() {
        return Err("database inconsistent after the run".into());
    }
    if !completions.errors.is_empty() {
        return Err("the simulated Cuebot's releases failed".into());
    }
    Ok(())
}
