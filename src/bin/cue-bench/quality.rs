//! The `quality` workload: a farm simulator that runs skewed, contended work to completion once
//! per scheduling policy (`scheduler.policy`) and compares how well each schedules it.
//!
//! Every run uses the real `cue-scheduler` binary, a freshly recreated database (the project
//! schema), fake RQDs (real grpcio servers on loopback addresses) whose frames end on time, and
//! the faithful Cuebot release path (`Completer` + `Cuebot` in mode (b)). The jobs, their
//! arrival times and every frame run's length and outcome come from one seed, so the policies
//! see the same work. Measures come from the fake RQD's launch hook and the completer's done
//! hook, in real elapsed seconds.

use super::Args;
use cue_scheduler::protos::rqd::RunFrame;
use cue_scheduler::sim::completer::{Completer, CompleterReport};
use cue_scheduler::sim::cuebot::{Cuebot, Mode, Released};
use cue_scheduler::sim::fake_rqd::{loopback_address, FakeRqd};
use cue_scheduler::sim::farm::{self, Farm, JobIds, Server};
use cue_scheduler::sim::plot::{self, Axis, Series, Side};
use cue_scheduler::sim::percentile;
use cue_scheduler::sim::procs::{self, Usage};
use cue_scheduler::sim::workloads::{self, LayerKind, PlannedJob, QualityOrg, QualityShape, QUALITY_HOST_CORES, QUALITY_SHOWS};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SHOWS: usize = QUALITY_SHOWS.len();
const DB: &str = "bench_quality";
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// A higher-priority frame ready this long and still unlaunched when a job starts is passed over.
const INVERSION_READY: Duration = Duration::from_secs(1);
const COMPLETER_THREADS: usize = 12;
/// Loopback block of the simulated hosts (127.83.x.y).
const ADDRESS_BLOCK: u8 = 83;
/// GPUs of a GPU host (every frame fits an empty host of the farm).
const HOST_GPUS: i64 = 2;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// Where a frame id sits in the plan.
#[derive(Clone, Copy, Debug)]
struct FrameRef {
    job: usize,
    layer: usize,
    number: i64,
}

/// One frame run, from its launch to its release.
struct Run {
    job: usize,
    layer: usize,
    number: i64,
    show: usize,
    kind: LayerKind,
    /// Core units RQD was asked for.
    units: i64,
    ready: Instant,
    launch: Instant,
    end: Option<Instant>,
}

impl Run {
    fn wait(&self) -> f64 {
        self.launch.duration_since(self.ready).as_secs_f64()
    }
    fn runtime(&self) -> Option<f64> {
        self.end.map(|e| e.duration_since(self.launch).as_secs_f64())
    }
}

#[derive(Clone, Debug, Default)]
struct JobTrack {
    submit: Option<Instant>,
    first_launch: Option<Instant>,
    /// Frames SUCCEEDED or DEAD.
    finished: i64,
    last_end: Option<Instant>,
}

/// Everything the hooks record, under one lock.
#[derive(Default)]
struct Tracker {
    frames: HashMap<String, FrameRef>,
    /// Ready-but-unlaunched frames: frame id → when it became ready.
    pending: HashMap<String, Instant>,
    /// Frame id → index of its open run.
    running: HashMap<String, usize>,
    attempts: HashMap<String, u32>,
    jobs: Vec<JobTrack>,
    runs: Vec<Run>,
    /// Core units each show has running.
    in_use: [i64; SHOWS],
    /// Ready-but-unlaunched frames per show, licensed frames (which wait on their licence, not
    /// on cores) left out: a show with only those does not compete for cores.
    contending: [i64; SHOWS],
    /// Core units of those frames, per show.
    waiting_units: [i64; SHOWS],
    jobs_submitted: usize,
    frames_finished: i64,
    inversions: u64,
    unknown_launches: u64,
    ignored_releases: u64,
}

/// The shared state of one policy's run.
struct Sim {
    plan: Arc<Vec<PlannedJob>>,
    seed: u64,
    failure_rate: f64,
    tracker: Mutex<Tracker>,
    stop: AtomicBool,
}

/// One sample of the farm, every `SAMPLE_EVERY`.
#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    in_use: [i64; SHOWS],
    contending: [bool; SHOWS],
    /// Core units of each show's ready, unlaunched, unlicensed frames.
    waiting: [i64; SHOWS],
}

impl Sample {
    fn busy(&self) -> i64 {
        self.in_use.iter().sum()
    }
}

/// The figures of one policy's run.
struct Outcome {
    policy: String,
    utilisation: f64,
    makespan: f64,
    job_wait: [f64; 3],
    turnaround: [f64; 2],
    wide_wait_p99: f64,
    wide_wait_max: f64,
    longest_narrow_runtime: f64,
    share_deviation: f64,
    share_deviation_sizes: f64,
    contended_samples: usize,
    inversions: u64,
    longest_fitting_wait: f64,
    launched: usize,
    dead: i64,
    wall_secs: f64,
    usage: Usage,
    violations: Vec<String>,
    notes: Vec<String>,
    /// (seconds, % of the farm's cores running frames)
    utilisation_series: Vec<(f64, f64)>,
    /// Per show: (seconds, % of the busy cores it holds).
    share_series: Vec<Vec<(f64, f64)>>,
    /// Every frame run's wait, sorted.
    waits: Vec<f64>,
}

/// Runs every policy of `--policies` and prints the table, the per-policy lines, the plots and
/// the targets; an error when a database was left inconsistent or (`--assert-targets`) a target
/// was missed.
pub fn run(args: &Args, server: &Server) -> Result<(), String> {
    let shape = QualityShape::new(args.shrink);
    let plan = Arc::new(workloads::quality_plan(&shape, args.quality_seed));
    let policies = policies(&args.policies)?;
    let frames: i64 = plan.iter().map(PlannedJob::frames).sum();
    eprintln!(
        "cue-bench: quality farm: {} hosts ({} cores, {} with {HOST_GPUS} GPUs), {} jobs / {frames} frames arriving over {:.0} s (seed {})",
        shape.hosts,
        shape.farm_cores(),
        shape.gpu_hosts,
        plan.len(),
        shape.window_secs,
        args.quality_seed
    );
    let mut outcomes = Vec::new();
    for policy in &policies {
        eprintln!("cue-bench: quality, policy {policy} …");
        outcomes.push(run_policy(args, server, &shape, &plan, policy)?);
    }
    print_report(&outcomes);
    for path in write_plots(&args.out, &outcomes)? {
        println!("plot: {}", path.display());
    }
    let targets = targets(&outcomes);
    for line in &targets.lines {
        println!("{line}");
    }
    let inconsistent: Vec<&str> = outcomes.iter().filter(|o| !o.violations.is_empty()).map(|o| o.policy.as_str()).collect();
    if !inconsistent.is_empty() {
        return Err(format!("quality: the database was inconsistent after the {} run(s)", inconsistent.join(", ")));
    }
    if args.assert_targets && !targets.passed {
        return Err(format!("quality: targets not met ({})", targets.failed.join("; ")));
    }
    Ok(())
}

fn policies(list: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = list.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Err("--policies: name at least one policy".into());
    }
    match names.iter().find(|p| !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')) {
        Some(bad) => Err(format!("--policies: `{bad}` is not a policy name")),
        None => Ok(names),
    }
}

// ---------------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------------

/// Stops the scheduler when dropped, so no error path leaves it running.
struct Scheduler {
    child: Option<Child>,
    usage: Usage,
}

impl Scheduler {
    fn stop(&mut self) -> Usage {
        if let Some(mut child) = self.child.take() {
            self.usage = procs::stop(&mut child, Duration::from_secs(30));
        }
        self.usage
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_policy(args: &Args, server: &Server, shape: &QualityShape, plan: &Arc<Vec<PlannedJob>>, policy: &str) -> Result<Outcome, String> {
    server.recreate_database(DB)?;
    farm::load_schema(server, DB, farm::PROJECT_SCHEMA)?;
    let mut farm = Farm::new(server.connect(DB)?);
    let addresses: Vec<String> = (0..shape.hosts).map(|i| loopback_address(ADDRESS_BLOCK, i)).collect();
    let org = Arc::new(workloads::seed_quality_farm(&mut farm, shape, &addresses)?);
    let sim = Arc::new(Sim {
        plan: Arc::clone(plan),
        seed: args.quality_seed,
        failure_rate: shape.failure_rate,
        tracker: Mutex::new(Tracker { jobs: vec![JobTrack::default(); plan.len()], ..Tracker::default() }),
        stop: AtomicBool::new(false),
    });
    let rqd = FakeRqd::start(&addresses)?;
    let completer = Arc::new(start_completer(server, &sim, &rqd)?);
    {
        let (sim, completer) = (Arc::clone(&sim), Arc::clone(&completer));
        rqd.on_launch(move |_host, run_frame| launched(&sim, &completer, run_frame));
    }
    let mut scheduler = start_scheduler(args, server, policy, rqd.port)?;
    let t0 = Instant::now();
    let submitter = {
        let (server, org, sim) = (server.clone(), Arc::clone(&org), Arc::clone(&sim));
        std::thread::Builder::new()
            .name("quality-submitter".into())
            .spawn(move || submit_all(&server, &org, &sim, t0))
            .map_err(|e| format!("start the submitter: {e}"))?
    };
    let deadline = t0 + Duration::from_secs_f64(shape.window_secs) + Duration::from_secs(args.timeout_secs);
    let watched = watch(&sim, policy, shape.farm_cores() * 100, t0, deadline, submitter);
    sim.stop.store(true, Ordering::SeqCst);
    // Let the accounting listener reconcile the last releases before the scheduler stops.
    std::thread::sleep(Duration::from_millis(500));
    let usage = scheduler.stop();
    rqd.on_launch(|_, _| {});
    let report = match Arc::try_unwrap(completer) {
        Ok(completer) => completer.stop(),
        Err(_) => CompleterReport::default(),
    };
    let samples = watched?;
    let violations = farm.violations(include_str!("../../../tests/sql/invariants.sql"))?;
    let dead: i64 = farm
        .client
        .query_one("SELECT count(*) FROM frame WHERE str_state = 'DEAD'", &[])
        .map_err(|e| format!("count dead frames: {e}"))?
        .get(0);
    let tracker = sim.tracker.lock();
    let mut notes = run_notes(&tracker, &report, rqd.duplicate_launches().len());
    if !violations.is_empty() {
        notes.push(format!("{} invariant violations, e.g. {}", violations.len(), violations[0]));
    }
    write_runs(&args.out, policy, plan, &tracker, t0)?;
    let end = RunEnd { wall_secs: t0.elapsed().as_secs_f64(), usage, dead, violations, notes };
    Ok(outcome(policy, shape, plan, &tracker, &samples, end))
}

/// Every frame run of the policy's run as CSV (`quality-<policy>-runs.csv`, seconds from the
/// run's start), for looking into which frames waited and why.
fn write_runs(dir: &str, policy: &str, plan: &[PlannedJob], tracker: &Tracker, t0: Instant) -> Result<(), String> {
    let secs = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let mut csv = String::from("job,show,priority,layer,kind,frame,cores,ready_s,launch_s,end_s,wait_s\n");
    for r in &tracker.runs {
        let priority = plan.get(r.job).map_or(0, |j| j.priority);
        let end = r.end.map(|e| format!("{:.3}", secs(e))).unwrap_or_default();
        let _ = writeln!(
            csv,
            "{},{},{priority},{},{},{},{},{:.3},{:.3},{end},{:.3}",
            r.job,
            QUALITY_SHOWS[r.show].0,
            r.layer,
            r.kind.name(),
            r.number,
            r.units / 100,
            secs(r.ready),
            secs(r.launch),
            r.wait()
        );
    }
    let path = Path::new(dir).join(format!("quality-{policy}-runs.csv"));
    std::fs::write(&path, csv).map_err(|e| format!("write {}: {e}", path.display()))
}

fn start_completer(server: &Server, sim: &Arc<Sim>, rqd: &FakeRqd) -> Result<Completer, String> {
    let done_sim = Arc::clone(sim);
    let on_done = Box::new(move |frame_id: &str, released: &Released| done_sim.tracker.lock().released(frame_id, released, Instant::now()));
    let server = server.clone();
    Completer::start(COMPLETER_THREADS, Arc::new(Cuebot::new(Mode::Notify)), Some(rqd.handle()), move || server.connect(DB), Some(on_done))
}

fn scheduler_config(server: &Server, metrics_port: u16, rqd_port: u16, policy: &str) -> String {
    format!(
        "logging:\n  level: info\ndatabase:\n  db_host: {}\n  db_port: {}\n  db_name: {DB}\n  db_user: {}\n  pool_size: 10\n\
         rqd:\n  grpc_port: {rqd_port}\n  dry_run_mode: false\n\
         queue:\n  metrics_port: {metrics_port}\n  cluster_empty_sleep: 2s\n  cluster_saturated_sleep: 1s\n  monitor_interval: 10s\n\
         host_cache:\n  monitoring_interval: 2s\nscheduler:\n  facility: lax\n  policy: {policy}\n",
        server.host, server.port, server.user
    )
}

/// Starts the scheduler with `policy` and waits until it is ready.
fn start_scheduler(args: &Args, server: &Server, policy: &str, rqd_port: u16) -> Result<Scheduler, String> {
    let port = procs::free_port().map_err(|e| format!("free port: {e}"))?;
    let config = Path::new(&args.out).join(format!("quality-{policy}.yaml"));
    std::fs::write(&config, scheduler_config(server, port, rqd_port, policy)).map_err(|e| format!("write {}: {e}", config.display()))?;
    let log = Path::new(&args.out).join(format!("quality-{policy}.log"));
    let env = vec![("OPENSCHEDULER_DATABASE__DB_PASS".to_string(), server.password.clone().unwrap_or_default())];
    let binary = procs::scheduler_binary();
    let child = procs::start_scheduler(&binary, &config, &log, &env).map_err(|e| format!("start {}: {e}", binary.display()))?;
    let mut scheduler = Scheduler { child: Some(child), usage: Usage::default() };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(Ok(Some(status))) = scheduler.child.as_mut().map(Child::try_wait) {
            return Err(format!("policy {policy}: cue-scheduler exited at start-up ({status}): {}", log_tail(&log)));
        }
        if procs::http_get(port, "/readyz").map(|(s, _)| s == 200).unwrap_or(false) {
            return Ok(scheduler);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("policy {policy}: cue-scheduler not ready after 30 s (log {})", log.display()))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

// ---------------------------------------------------------------------------------------------
// Submitting
// ---------------------------------------------------------------------------------------------

/// Submits every planned job at its arrival time (seconds after `t0`).
fn submit_all(server: &Server, org: &QualityOrg, sim: &Sim, t0: Instant) -> Result<(), String> {
    let mut farm = Farm::new(server.connect(DB)?);
    for (index, job) in sim.plan.iter().enumerate() {
        if sim.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let due = t0 + Duration::from_secs_f64(job.at_secs);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        submit(&mut farm, org, sim, index, job)?;
    }
    Ok(())
}

fn layer_name(index: usize, kind: LayerKind) -> String {
    format!("l{index}-{}", kind.name())
}

/// Inserts one job and its licence attachments in one transaction (so no frame of a licensed
/// layer is seen before its limit), registering its frames just before the commit.
fn submit(farm: &mut Farm, org: &QualityOrg, sim: &Sim, index: usize, job: &PlannedJob) -> Result<(), String> {
    farm.client.batch_execute("BEGIN").map_err(|e| format!("begin job: {e}"))?;
    let inserted = insert_job(farm, org, index, job).and_then(|ids| sim.tracker.lock().submitted(&sim.plan, index, &ids, Instant::now()));
    match inserted {
        Ok(()) => farm.client.batch_execute("COMMIT").map_err(|e| format!("commit job {index}: {e}")),
        Err(e) => {
            let _ = farm.client.batch_execute("ROLLBACK");
            Err(e)
        }
    }
}

fn insert_job(farm: &mut Farm, org: &QualityOrg, index: usize, job: &PlannedJob) -> Result<JobIds, String> {
    let show = org.shows.get(job.show).ok_or_else(|| format!("job {index}: no show {}", job.show))?;
    let layers = job.layers.iter().enumerate().map(|(i, l)| l.spec(&layer_name(i, l.kind), &org.alloc_tag)).collect();
    let mut spec = workloads::job_spec(show, &format!("{}-q{index:04}", show.show_name), 10_000_000, layers);
    spec.priority = job.priority;
    let ids = farm.job(&spec)?;
    for (i, layer) in job.layers.iter().enumerate() {
        if layer.kind == LayerKind::Licensed {
            let name = layer_name(i, layer.kind);
            let layer_id = ids.layers.get(&name).ok_or_else(|| format!("job {index}: layer {name} not inserted"))?;
            farm.layer_limit(layer_id, &org.limit_id)?;
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// The hooks
// ---------------------------------------------------------------------------------------------

/// The fake RQD accepted a launch: record it and schedule the frame's end.
fn launched(sim: &Sim, completer: &Completer, run_frame: &RunFrame) {
    let now = Instant::now();
    let recorded = sim.tracker.lock().launched(&sim.plan, run_frame, now);
    let (secs, failed) = match recorded {
        Some((frame, attempt)) => match sim.plan.get(frame.job).and_then(|j| j.layers.get(frame.layer)) {
            Some(layer) => workloads::quality_run(sim.seed, frame.job, frame.layer, frame.number, attempt, layer, sim.failure_rate),
            None => (1.0, false),
        },
        // Not a frame of the plan: finish it anyway so nothing waits on it.
        None => (1.0, false),
    };
    completer.schedule(now + Duration::from_secs_f64(secs), run_frame.get_frame_id(), run_frame.get_resource_id(), i32::from(failed));
}

impl Tracker {
    fn submitted(&mut self, plan: &[PlannedJob], index: usize, ids: &JobIds, now: Instant) -> Result<(), String> {
        let job = plan.get(index).ok_or_else(|| format!("job {index} is not in the plan"))?;
        for (l, layer) in job.layers.iter().enumerate() {
            let name = layer_name(l, layer.kind);
            for number in 1..=layer.frames {
                let frame_name = format!("{number:04}-{name}");
                let id = ids.frames.get(&frame_name).ok_or_else(|| format!("job {index}: frame {frame_name} not inserted"))?;
                self.frames.insert(id.clone(), FrameRef { job: index, layer: l, number });
                self.pending.insert(id.clone(), now);
                if layer.kind != LayerKind::Licensed {
                    self.contending[job.show] += 1;
                    self.waiting_units[job.show] += layer.kind.reserved_units();
                }
            }
        }
        if let Some(track) = self.jobs.get_mut(index) {
            track.submit = Some(now);
        }
        self.jobs_submitted += 1;
        Ok(())
    }

    /// Records a launch; returns the frame and its attempt number (0 first).
    fn launched(&mut self, plan: &[PlannedJob], run_frame: &RunFrame, now: Instant) -> Option<(FrameRef, u32)> {
        let frame_id = run_frame.get_frame_id();
        let Some(frame) = self.frames.get(frame_id).copied() else {
            self.unknown_launches += 1;
            return None;
        };
        let job = plan.get(frame.job)?;
        let kind = job.layers.get(frame.layer)?.kind;
        let ready = match self.pending.remove(frame_id) {
            Some(ready) => {
                if kind != LayerKind::Licensed {
                    self.contending[job.show] -= 1;
                    self.waiting_units[job.show] -= kind.reserved_units();
                }
                ready
            }
            None => now,
        };
        let units = i64::from(run_frame.get_num_cores());
        self.in_use[job.show] += units;
        let attempt = self.attempts.entry(frame_id.to_string()).or_insert(0);
        let this_attempt = *attempt;
        *attempt += 1;
        if self.jobs.get(frame.job).is_some_and(|t| t.first_launch.is_none()) {
            if self.passed_over(plan, frame.job, run_frame, now) {
                self.inversions += 1;
            }
            if let Some(track) = self.jobs.get_mut(frame.job) {
                track.first_launch = Some(now);
            }
        }
        self.running.insert(frame_id.to_string(), self.runs.len());
        self.runs.push(Run { job: frame.job, layer: frame.layer, number: frame.number, show: job.show, kind, units, ready, launch: now, end: None });
        Some((frame, this_attempt))
    }

    /// A priority inversion at job `started`'s first launch: another job of its show with a
    /// higher priority has a frame ready for `INVERSION_READY`, unlaunched, that would have fitted
    /// where this frame went (no more cores, no more GPUs, not licensed).
    fn passed_over(&self, plan: &[PlannedJob], started: usize, run_frame: &RunFrame, now: Instant) -> bool {
        let Some(job) = plan.get(started) else { return false };
        let (cores, gpus) = (i64::from(run_frame.get_num_cores()), i64::from(run_frame.get_num_gpus()));
        self.pending.iter().any(|(frame_id, ready)| {
            let Some(frame) = self.frames.get(frame_id) else { return false };
            let Some(other) = plan.get(frame.job) else { return false };
            let Some(layer) = other.layers.get(frame.layer) else { return false };
            frame.job != started
                && other.show == job.show
                && other.priority > job.priority
                && now.duration_since(*ready) >= INVERSION_READY
                && layer.kind != LayerKind::Licensed
                && layer.kind.reserved_units() <= cores
                && layer.kind.gpus() <= gpus
        })
    }

    /// Cuebot released a frame run (the completer's done hook).
    fn released(&mut self, frame_id: &str, released: &Released, now: Instant) {
        let Some(index) = self.running.remove(frame_id) else { return };
        let Some(run) = self.runs.get_mut(index) else { return };
        run.end = Some(now);
        let (job, show, kind) = (run.job, run.show, run.kind);
        self.in_use[show] -= run.units;
        match released {
            Released::Frame { state } if state == "WAITING" => {
                self.pending.insert(frame_id.to_string(), now);
                if kind != LayerKind::Licensed {
                    self.contending[show] += 1;
                    self.waiting_units[show] += kind.reserved_units();
                }
            }
            Released::Frame { .. } => {
                self.frames_finished += 1;
                if let Some(track) = self.jobs.get_mut(job) {
                    track.finished += 1;
                    track.last_end = Some(now);
                }
            }
            Released::Ignored => self.ignored_releases += 1,
        }
    }

    fn sample(&self, secs: f64) -> Sample {
        Sample { secs, in_use: self.in_use, contending: self.contending.map(|n| n > 0), waiting: self.waiting_units }
    }
}

// ---------------------------------------------------------------------------------------------
// Watching
// ---------------------------------------------------------------------------------------------

/// Samples the farm until every planned frame finished; an error on a timeout or when the
/// submitter failed.
fn watch(sim: &Sim, policy: &str, farm_units: i64, t0: Instant, deadline: Instant, submitter: JoinHandle<Result<(), String>>) -> Result<Vec<Sample>, String> {
    let total: i64 = sim.plan.iter().map(PlannedJob::frames).sum();
    let mut submitter = Some(submitter);
    let mut samples = Vec::new();
    let mut last_print = Instant::now();
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        if submitter.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(handle) = submitter.take() {
                handle.join().map_err(|_| "the submitter panicked".to_string())??;
            }
        }
        let (sample, finished, line) = {
            let t = sim.tracker.lock();
            let sample = t.sample(t0.elapsed().as_secs_f64());
            let line = format!(
                "  [{:6.1}s] {policy}: {}/{} jobs submitted, {} frames ready, {} running, {}/{total} finished, {:.0}% of cores busy",
                sample.secs,
                t.jobs_submitted,
                sim.plan.len(),
                t.pending.len(),
                t.running.len(),
                t.frames_finished,
                100.0 * sample.busy() as f64 / farm_units as f64
            );
            (sample, t.frames_finished, line)
        };
        samples.push(sample);
        if last_print.elapsed() >= Duration::from_secs(10) {
            eprintln!("{line}");
            last_print = Instant::now();
        }
        if submitter.is_none() && finished >= total {
            return Ok(samples);
        }
        if Instant::now() > deadline {
            return Err(format!("quality, policy {policy}: {finished} of {total} frames finished when the run was given up ({line})"));
        }
    }
}

fn run_notes(tracker: &Tracker, report: &CompleterReport, duplicates: usize) -> Vec<String> {
    let mut notes = Vec::new();
    if tracker.unknown_launches > 0 {
        notes.push(format!("{} launches of frames not in the plan", tracker.unknown_launches));
    }
    if tracker.ignored_releases > 0 {
        notes.push(format!("{} releases ignored by Cuebot", tracker.ignored_releases));
    }
    if duplicates > 0 {
        notes.push(format!("{duplicates} duplicate launches"));
    }
    if let Some(e) = report.errors.first() {
        notes.push(format!("{} release errors, e.g. {e}", report.errors.len()));
    }
    notes.push(format!("releases applied p99 {:.3} s after their frames' ends", report.lateness_percentile(0.99)));
    notes
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

/// What a run ended with, besides the tracker and the samples.
struct RunEnd {
    wall_secs: f64,
    usage: Usage,
    dead: i64,
    violations: Vec<String>,
    notes: Vec<String>,
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn max_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::NAN, f64::max)
}

fn is_wide(kind: LayerKind) -> bool {
    kind.reserved_units() >= 1600
}

fn is_narrow(kind: LayerKind) -> bool {
    kind.reserved_units() == 100 && kind.gpus() == 0
}

/// Every frame kind of this farm fits an empty host; kept as a test so the figure stays honest
/// if the mix changes.
fn fits_empty_host(kind: LayerKind) -> bool {
    kind.reserved_units() <= QUALITY_HOST_CORES * 100 && kind.gpus() <= HOST_GPUS
}

/// Σ cores × run time ÷ (farm cores × makespan), and the makespan (last end − first submit).
fn utilisation(tracker: &Tracker, farm_cores: i64) -> (f64, f64) {
    let first_submit = tracker.jobs.iter().filter_map(|j| j.submit).min();
    let last_end = tracker.runs.iter().filter_map(|r| r.end).max();
    let (Some(first), Some(last)) = (first_submit, last_end) else { return (f64::NAN, f64::NAN) };
    let makespan = last.saturating_duration_since(first).as_secs_f64();
    let core_secs: f64 = tracker.runs.iter().filter_map(|r| Some(r.units as f64 / 100.0 * r.runtime()?)).sum();
    (core_secs / (farm_cores as f64 * makespan).max(1e-9), makespan)
}

/// Shares under contention: the samples where at least two shows wait for cores, among those
/// shows.
///
/// A contender's entitlement is its weighted max-min fair share of the cores the contenders
/// hold: shares in proportion to subscription size, except that no show is entitled to more
/// than it asks for (the cores it holds plus those its waiting frames need); what such a show
/// leaves goes to the others by size (water-filling). The size-only figure, which ignores
/// demand, is kept beside it.
#[derive(Default)]
struct Contention {
    /// Samples counted.
    samples: usize,
    /// Per show: Σ share, Σ entitlement, samples it was among the contenders.
    share: [f64; SHOWS],
    entitled: [f64; SHOWS],
    counted: [usize; SHOWS],
    /// Σ |share − entitlement| over the (sample, show) pairs.
    deviation: f64,
    /// The same with entitlements by size alone.
    deviation_sizes: f64,
}

/// Weighted max-min shares of `total` (fractions of it): each show gets `total` in proportion
/// to `weights`, but never more than its `demands`; what capped shows leave is shared again.
fn water_fill(weights: &[f64], demands: &[f64], total: f64) -> Vec<f64> {
    let mut given = vec![0.0; weights.len()];
    let mut open: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
    let mut left = total;
    while !open.is_empty() && left > 1e-9 {
        let weight: f64 = open.iter().map(|&i| weights[i]).sum();
        let capped: Vec<usize> = open.iter().copied().filter(|&i| demands[i] - given[i] <= left * weights[i] / weight).collect();
        if capped.is_empty() {
            for &i in &open {
                given[i] += left * weights[i] / weight;
            }
            break;
        }
        for &i in &capped {
            left -= (demands[i] - given[i]).max(0.0);
            given[i] = given[i].max(demands[i]);
        }
        open.retain(|i| !capped.contains(i));
    }
    given.iter().map(|g| if total > 0.0 { g / total } else { 0.0 }).collect()
}

impl Contention {
    fn of(samples: &[Sample]) -> Contention {
        let mut c = Contention::default();
        for sample in samples {
            let shows: Vec<usize> = (0..SHOWS).filter(|&s| sample.contending[s]).collect();
            let used: i64 = shows.iter().map(|&s| sample.in_use[s]).sum();
            if shows.len() < 2 || used <= 0 {
                continue;
            }
            let sizes: f64 = shows.iter().map(|&s| QUALITY_SHOWS[s].1).sum();
            let weights: Vec<f64> = shows.iter().map(|&s| QUALITY_SHOWS[s].1).collect();
            let demands: Vec<f64> = shows.iter().map(|&s| (sample.in_use[s] + sample.waiting[s]) as f64).collect();
            let fair = water_fill(&weights, &demands, used as f64);
            for (k, &s) in shows.iter().enumerate() {
                let (share, entitled) = (sample.in_use[s] as f64 / used as f64, fair[k]);
                c.share[s] += share;
                c.entitled[s] += entitled;
                c.counted[s] += 1;
                c.deviation += (share - entitled).abs();
                c.deviation_sizes += (share - QUALITY_SHOWS[s].1 / sizes).abs();
            }
            c.samples += 1;
        }
        c
    }

    /// The mean of |share − entitlement| over the counted (sample, show) pairs (NaN if none).
    fn mean_deviation(&self) -> f64 {
        self.mean_of(self.deviation)
    }

    /// The same against entitlements by subscription size alone.
    fn mean_deviation_sizes(&self) -> f64 {
        self.mean_of(self.deviation_sizes)
    }

    fn mean_of(&self, sum: f64) -> f64 {
        let pairs: usize = self.counted.iter().sum();
        if pairs == 0 {
            f64::NAN
        } else {
            sum / pairs as f64
        }
    }

    /// "alpha 35% (entitled 55%)" per show that was ever among the contenders.
    fn describe(&self) -> String {
        let parts: Vec<String> = (0..SHOWS)
            .filter(|&s| self.counted[s] > 0)
            .map(|s| {
                let n = self.counted[s] as f64;
                format!("{} {:.0}% (entitled {:.0}%)", QUALITY_SHOWS[s].0, 100.0 * self.share[s] / n, 100.0 * self.entitled[s] / n)
            })
            .collect();
        format!("mean share of the contenders' cores under contention: {}", if parts.is_empty() { "no contention".into() } else { parts.join(", ") })
    }
}

fn outcome(policy: &str, shape: &QualityShape, plan: &[PlannedJob], tracker: &Tracker, samples: &[Sample], end: RunEnd) -> Outcome {
    let (utilisation, makespan) = utilisation(tracker, shape.farm_cores());
    let job_waits = sorted(tracker.jobs.iter().filter_map(|j| Some(j.first_launch?.duration_since(j.submit?).as_secs_f64())).collect());
    let turnarounds = sorted(
        tracker
            .jobs
            .iter()
            .zip(plan.iter().map(PlannedJob::frames))
            .filter(|(j, frames)| j.finished >= *frames)
            .filter_map(|(j, _)| Some(j.last_end?.duration_since(j.submit?).as_secs_f64()))
            .collect(),
    );
    let wide_waits = sorted(tracker.runs.iter().filter(|r| is_wide(r.kind)).map(Run::wait).collect());
    let contention = Contention::of(samples);
    let mut notes = end.notes;
    notes.insert(0, contention.describe());
    let per_show: Vec<String> = (0..SHOWS)
        .map(|show| {
            let waits = sorted(tracker.runs.iter().filter(|r| r.show == show && is_wide(r.kind)).map(Run::wait).collect());
            format!("{} {:.1} s ({} frames)", QUALITY_SHOWS[show].0, percentile(&waits, 0.99), waits.len())
        })
        .collect();
    notes.insert(1, format!("wide-frame wait p99 by show: {}", per_show.join(", ")));
    let farm_units = (shape.farm_cores() * 100) as f64;
    let utilisation_series = samples.iter().map(|s| (s.secs, 100.0 * s.busy() as f64 / farm_units)).collect();
    let share_series = (0..SHOWS)
        .map(|show| samples.iter().filter(|s| s.busy() > 0).map(|s| (s.secs, 100.0 * s.in_use[show] as f64 / s.busy() as f64)).collect())
        .collect();
    Outcome {
        policy: policy.to_string(),
        utilisation,
        makespan,
        job_wait: [percentile(&job_waits, 0.5), percentile(&job_waits, 0.95), percentile(&job_waits, 0.99)],
        turnaround: [percentile(&turnarounds, 0.5), percentile(&turnarounds, 0.99)],
        wide_wait_p99: percentile(&wide_waits, 0.99),
        wide_wait_max: max_of(wide_waits.iter().copied()),
        longest_narrow_runtime: max_of(tracker.runs.iter().filter(|r| is_narrow(r.kind)).filter_map(Run::runtime)),
        share_deviation: contention.mean_deviation(),
        share_deviation_sizes: contention.mean_deviation_sizes(),
        contended_samples: contention.samples,
        inversions: tracker.inversions,
        longest_fitting_wait: max_of(tracker.runs.iter().filter(|r| fits_empty_host(r.kind)).map(Run::wait)),
        launched: tracker.runs.len(),
        dead: end.dead,
        wall_secs: end.wall_secs,
        usage: end.usage,
        violations: end.violations,
        notes,
        utilisation_series,
        share_series,
        waits: sorted(tracker.runs.iter().map(Run::wait).collect()),
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn print_report(outcomes: &[Outcome]) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| policy | utilisation | makespan s | job wait p50 / p95 / p99 s | turnaround p50 / p99 s | wide wait p99 / max s | share deviation (by size alone) | inversions | longest wait (fits an empty host) s | frames launched | frames dead | wall s | sched CPU s | database |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let database = if o.violations.is_empty() { "consistent".to_string() } else { format!("{} violations", o.violations.len()) };
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.1} | {:.2} / {:.2} / {:.2} | {:.1} / {:.1} | {:.2} / {:.2} | {:.3} ({:.3}; {} samples) | {} | {:.2} | {} | {} | {:.1} | {:.1} | {} |",
            o.policy,
            o.utilisation,
            o.makespan,
            o.job_wait[0],
            o.job_wait[1],
            o.job_wait[2],
            o.turnaround[0],
            o.turnaround[1],
            o.wide_wait_p99,
            o.wide_wait_max,
            o.share_deviation,
            o.share_deviation_sizes,
            o.contended_samples,
            o.inversions,
            o.longest_fitting_wait,
            o.launched,
            o.dead,
            o.wall_secs,
            o.usage.cpu_secs,
            database
        );
    }
    println!("{out}");
    for o in outcomes {
        println!(
            "quality policy={} utilisation={:.3} wide_wait_p99_s={:.2} longest_narrow_runtime_s={:.2} share_deviation={:.3} job_wait_p99_s={:.2} inversions={}",
            o.policy, o.utilisation, o.wide_wait_p99, o.longest_narrow_runtime, o.share_deviation, o.job_wait[2], o.inversions
        );
    }
    for o in outcomes {
        println!("notes {}: {}", o.policy, o.notes.join("; "));
    }
}

fn write_svg(dir: &str, name: &str, svg: String) -> Result<PathBuf, String> {
    let path = Path::new(dir).join(name);
    std::fs::write(&path, svg).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// A CDF of sorted values as (value, % at or below), thinned to at most ~1000 points.
fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    let step = n.div_ceil(1000).max(1);
    let mut points: Vec<(f64, f64)> = sorted.iter().enumerate().step_by(step).map(|(i, w)| (*w, 100.0 * (i + 1) as f64 / n as f64)).collect();
    if let Some(last) = sorted.last() {
        points.push((*last, 100.0));
    }
    points
}

fn write_plots(dir: &str, outcomes: &[Outcome]) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    let colour = |i: usize| COLOURS[i % COLOURS.len()];
    let names: Vec<String> = outcomes.iter().map(|o| o.policy.clone()).collect();
    let series: Vec<Series> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| Series { name: &names[i], colour: colour(i), points: &o.utilisation_series, side: Side::Left })
        .collect();
    let svg = plot::svg("quality: farm utilisation per policy", Axis { label: "cores running frames (% of the farm)", max: 100.0 }, None, &series);
    paths.push(write_svg(dir, "quality-utilisation.svg", svg)?);
    for o in outcomes {
        let show_names: Vec<String> = QUALITY_SHOWS.iter().map(|(name, size, _)| format!("{name} (entitled {:.0}%)", size * 100.0)).collect();
        let series: Vec<Series> = o
            .share_series
            .iter()
            .enumerate()
            .map(|(i, points)| Series { name: &show_names[i], colour: colour(i + 2), points, side: Side::Left })
            .collect();
        let title = format!("quality, {}: each show's share of the busy cores", o.policy);
        let svg = plot::svg(&title, Axis { label: "share of busy cores (%)", max: 100.0 }, None, &series);
        paths.push(write_svg(dir, &format!("quality-share-{}.svg", o.policy), svg)?);
    }
    let cdfs: Vec<Vec<(f64, f64)>> = outcomes.iter().map(|o| cdf(&o.waits)).collect();
    let series: Vec<Series> =
        outcomes.iter().enumerate().map(|(i, _)| Series { name: &names[i], colour: colour(i), points: &cdfs[i], side: Side::Left }).collect();
    let svg = plot::svg_with_x("quality: frame wait (ready → launched), CDF", "wait (s)", Axis { label: "frame runs waiting at most this long (%)", max: 100.0 }, None, &series);
    paths.push(write_svg(dir, "quality-waits.svg", svg)?);
    Ok(paths)
}

/// The smart policy's targets against legacy.
struct Targets {
    lines: Vec<String>,
    failed: Vec<String>,
    passed: bool,
}

fn targets(outcomes: &[Outcome]) -> Targets {
    let find = |name: &str| outcomes.iter().find(|o| o.policy == name);
    let (Some(smart), Some(legacy)) = (find("smart"), find("legacy")) else {
        let why = "targets need a `legacy` and a `smart` run (--policies legacy,smart)".to_string();
        return Targets { lines: vec![format!("targets: not checked: {why}")], failed: vec![why], passed: false };
    };
    let checks = [
        (
            "smart wide_wait_p99 <= 2 x smart longest_narrow_runtime",
            smart.wide_wait_p99 <= 2.0 * smart.longest_narrow_runtime,
            format!("{:.2} s <= 2 x {:.2} s = {:.2} s", smart.wide_wait_p99, smart.longest_narrow_runtime, 2.0 * smart.longest_narrow_runtime),
        ),
        (
            "smart utilisation >= legacy utilisation - 0.03",
            smart.utilisation >= legacy.utilisation - 0.03,
            format!("{:.3} >= {:.3} - 0.03 = {:.3}", smart.utilisation, legacy.utilisation, legacy.utilisation - 0.03),
        ),
        (
            "smart share_deviation <= 0.10",
            smart.share_deviation <= 0.10,
            if smart.contended_samples == 0 {
                "no sample had two shows waiting for cores, nothing to measure".to_string()
            } else {
                format!("{:.3} <= 0.10 over {} samples", smart.share_deviation, smart.contended_samples)
            },
        ),
        (
            "smart job_wait_p99 <= legacy job_wait_p99",
            smart.job_wait[2] <= legacy.job_wait[2],
            format!("{:.2} s <= {:.2} s", smart.job_wait[2], legacy.job_wait[2]),
        ),
    ];
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    for (name, ok, figures) in checks {
        lines.push(format!("target {}: {name}: {figures}", if ok { "PASS" } else { "FAIL" }));
        if !ok {
            failed.push(format!("{name}: {figures}"));
        }
    }
    Targets { passed: failed.is_empty(), lines, failed }
}

#[cfg(test)]
mod tests {
    use super::water_fill;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn water_fill_caps_shows_at_their_demand_and_shares_the_rest_by_size() {
        // Everyone asks for more than the pool: shares by size.
        assert!(close(&water_fill(&[0.5, 0.3, 0.2], &[1000.0, 1000.0, 1000.0], 100.0), &[0.5, 0.3, 0.2]));
        // The largest show asks for 10 cores of 100: the other two split the 90 by size, 3:2.
        assert!(close(&water_fill(&[0.5, 0.3, 0.2], &[10.0, 1000.0, 1000.0], 100.0), &[0.1, 0.54, 0.36]));
        // Capping one show pushes the next over its demand in a second round.
        assert!(close(&water_fill(&[0.5, 0.3, 0.2], &[10.0, 40.0, 1000.0], 100.0), &[0.1, 0.4, 0.5]));
        // Size 0 is entitled to nothing (what only it asks for stays unshared); an empty pool
        // to nothing at all.
        assert!(close(&water_fill(&[0.0, 1.0], &[50.0, 50.0], 100.0), &[0.0, 0.5]));
        assert!(close(&water_fill(&[0.5, 0.5], &[0.0, 0.0], 0.0), &[0.0, 0.0]));
    }
}
