//! cue-demo: a whole farm on one machine. Seeds a demo farm in PostgreSQL, serves every host
//! with a fake RQD (a real grpcio server) that "runs" each frame for a simulated time and then
//! completes it in the database the way Cuebot does, runs the real `cue-scheduler` binary
//! until the farm drains, shows progress, and ends with a summary and an SVG plot.

use argh::FromArgs;
use cue_scheduler::sim::cuebot::{self, Completion};
use cue_scheduler::sim::fake_rqd::{loopback_address, FakeRqd, FakeRqdHandle};
use cue_scheduler::sim::farm::{self, Farm, Server};
use cue_scheduler::sim::plot::{self, Series};
use cue_scheduler::sim::procs;
use cue_scheduler::sim::workloads::{self, Rng};
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// mean simulated frame run time in seconds (default 1.0)
    #[argh(option, default = "1.0")]
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
}

/// A frame run the fake RQD will complete: (due, frame id, proc id).
type Due = Reverse<(Instant, String, String)>;

struct Sim {
    queue: Mutex<BinaryHeap<Due>>,
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

    let sim = Arc::new(Sim {
        queue: Mutex::new(BinaryHeap::new()),
        waiting_since: Mutex::new(HashMap::new()),
        book_latencies: Mutex::new(Vec::new()),
        rng: Mutex::new(Rng::new(7)),
        frame_secs: args.frame_secs,
    });
    let rqd = FakeRqd::start(&addresses)?;
    let started = Instant::now();
    {
        let sim = Arc::clone(&sim);
        rqd.on_launch(move |_host, run_frame| {
            let now = Instant::now();
            let since = sim.waiting_since.lock().remove(run_frame.get_frame_id()).unwrap_or(started);
            sim.book_latencies.lock().push(now.duration_since(since).as_secs_f64());
            let secs = sim.frame_secs * (0.5 + sim.rng.lock().range(0, 1000) as f64 / 1000.0);
            let due = now + Duration::from_secs_f64(secs);
            sim.queue.lock().push(Reverse((due, run_frame.get_frame_id().to_string(), run_frame.get_resource_id().to_string())));
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let completer = {
        let (sim, rqd, stop, conn) = (Arc::clone(&sim), rqd.handle(), Arc::clone(&stop), server.connect(db)?);
        let failure_rate = args.failure_rate;
        std::thread::Builder::new()
            .name("demo-completer".into())
            .spawn(move || complete_frames(&sim, &rqd, &stop, conn, failure_rate))
            .map_err(|e| e.to_string())?
    };
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let config = Path::new(&args.out).join("scheduler.yaml");
    std::fs::write(&config, demo_config(&server, db, port, rqd.port)).map_err(|e| e.to_string())?;
    let log = Path::new(&args.out).join("scheduler.log");
    let env = vec![("OPENSCHEDULER_DATABASE__DB_PASS".to_string(), server.password.clone().unwrap_or_default())];
    let mut child = procs::start_scheduler(&procs::scheduler_binary(), &config, &log, &env)
        .map_err(|e| format!("start {}: {e}", procs::scheduler_binary().display()))?;
    println!("scheduler started (pid {}), metrics on http://127.0.0.1:{port}/metrics, log {}", child.id(), log.display());
    let samples = watch(&mut farm, total_cores, total_frames, started, Duration::from_secs(args.timeout_secs));
    let usage = procs::stop(&mut child, Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    let _ = completer.join();
    summarize(&mut farm, &sim, &samples, started, usage, args, total_cores)
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

/// Completes due frames: Cuebot's release writes, then the fake RQD frees its cores.
fn complete_frames(sim: &Sim, rqd: &FakeRqdHandle, stop: &AtomicBool, mut client: postgres::Client, failure_rate: f64) {
    while !stop.load(Ordering::SeqCst) {
        let due = {
            let mut queue = sim.queue.lock();
            match queue.peek() {
                Some(Reverse((when, _, _))) if *when <= Instant::now() => queue.pop(),
                _ => None,
            }
        };
        let Some(Reverse((_, frame_id, proc_id))) = due else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let failed = sim.rng.lock().chance(failure_rate);
        let done = Completion { exit_status: if failed { 1 } else { 0 }, run_secs: 1, max_rss_kib: 1_048_576 };
        match cuebot::complete_frame(&mut client, &frame_id, &proc_id, done) {
            Ok(cuebot::Released::Frame { state }) if state == "WAITING" => {
                sim.waiting_since.lock().insert(frame_id.clone(), Instant::now());
            }
            Ok(_) => {}
            Err(e) => eprintln!("\ncue-demo: completing frame {frame_id}: {e}"),
        }
        rqd.finish(&frame_id);
    }
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

fn summarize(farm: &mut Farm, sim: &Sim, samples: &[Sample], started: Instant, usage: procs::Usage, args: &Args, total_cores: i64) -> Result<(), String> {
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
    println!("  scheduler: {:.2} s CPU, peak RSS {:.1} MB, exit code {:?}", usage.cpu_secs, usage.max_rss_kib as f64 / 1024.0, usage.exit_code);
    if violations.is_empty() {
        println!("  database consistent (host idle, procs, stats and rollups all agree)");
    } else {
        println!("  database INCONSISTENT: {} violations, e.g. {}", violations.len(), violations[0]);
    }
    let util: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.1)).collect();
    let waiting: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.2)).collect();
    let running: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.3)).collect();
    let max_wait = waiting.iter().map(|p| p.1).fold(1.0, f64::max);
    let max_run = running.iter().map(|p| p.1).fold(1.0, f64::max);
    let svg = plot::svg(
        &format!("cue-scheduler demo: {} hosts, {} frames", args.hosts, total),
        &[
            Series { name: "farm utilisation", colour: "#1f77b4", points: &util, max: 100.0, unit: "%" },
            Series { name: "waiting frames (queue depth)", colour: "#d62728", points: &waiting, max: max_wait, unit: "" },
            Series { name: "running frames", colour: "#2ca02c", points: &running, max: max_run, unit: "" },
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
    Ok(())
}
