//! One cluster pass through the matcher: jobs in parallel on the matcher pool, the layers of a
//! job in order, and for each layer the bounded host loop of scheduler-behaviour.md §3.8:
//! check out a host, plan as many frames as fit, book them in one guarded transaction, check
//! the host back in with the values the database returned, and queue the launches.

mod book;
mod finish;
mod plan;
mod reserve;

use book::*;
use finish::*;
use plan::*;
pub use plan::{ensure_groups, fetch_group};

use crate::db::booking::{Batch, BatchFrame, BatchOutcome, BatchPlan, BookOutcome, BookedFrame, Cap, PlannedFrame};
use crate::matching::host_cache::IdleValues;
use crate::pipeline::context::Context;
use crate::db;
use crate::rqd::frameset::{self, PreparedCommand, TokenInput};
use crate::matching::host_cache::{GroupKey, Search};
use crate::matching::matcher::{self, ScoreCaps};
use crate::model::{Cluster, ClusterKind, Frame, Host, Job, LayerWork, CORE_UNITS_PER_CORE};
use crate::db::queries::{self, read_host_row, HostRow};
use crate::rqd::{build_run_frame, Reservation};
use crate::protos::rqd::RunFrame;
use crate::matching::host_cache::HostId;
use crossbeam::channel::Sender;
use rayon::prelude::*;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A booked frame on its way to RQD.
pub struct Launch {
    pub host_id: HostId,
    pub host_name: String,
    pub show_name: String,
    pub frame_id: String,
    pub frame_name: String,
    /// `int_version` after the booking.
    pub version: i32,
    pub proc_id: String,
    pub run_frame: RunFrame,
    /// When the booking committed: a launch that waited longer than
    /// `limits::LAUNCH_QUEUE_AGE_MAX_MS` is compensated instead (the stranded-booking sweep of
    /// any instance relies on that bound).
    pub booked_at: std::time::Instant,
}

/// A pass handed from the fetcher to a matcher.
pub struct Pass {
    pub cluster: Cluster,
    pub work: Vec<LayerWork>,
    pub fetched_at: Instant,
    /// Allocation clusters: the subscription room left to this pass, in core units: what the
    /// pass query read, less what the pass has booked since, or what a refusal reported
    /// (`i64::MAX` elsewhere). A hint: once it cannot hold a layer's smallest frame, the per-layer loop
    /// stops asking the database, which would refuse at the subscription cap.
    pub alloc_room: AtomicI64,
    /// Policy `smart`, allocation clusters: the most core units the show may book in this pass
    /// while another show is short of its fair share (`None`: no such limit). It shrinks as the
    /// pass books, in the planning and in the per-layer host loop.
    pub fair_budget: Option<AtomicI64>,
}

/// What a pass achieved.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassResult {
    pub frames_booked: u64,
    /// A cap of the cluster's allocation was hit: the cluster should sleep.
    pub subscription_full: bool,
    /// Some layer lost to another booker: it found no host only because fitting hosts were
    /// checked out by another pass of ours (back within milliseconds), or its frames were
    /// taken by another pass or instance. The cluster should look again soon rather than
    /// sleep as saturated.
    pub contended: bool,
}

impl std::ops::Add for PassResult {
    type Output = PassResult;
    fn add(self, other: PassResult) -> PassResult {
        PassResult {
            frames_booked: self.frames_booked + other.frames_booked,
            subscription_full: self.subscription_full || other.subscription_full,
            contended: self.contended || other.contended,
        }
    }
}

/// Processes a pass in three steps: plan every job in priority order (host checkouts), book
/// everything planned in one transaction (falling back to one transaction per job, then per
/// host, if anything conflicts), then run the per-layer host loop for what is left, jobs in
/// parallel on the current rayon pool.
pub fn run_pass(ctx: &Context, pass: &Pass, launches: &Sender<Launch>) -> PassResult {
    let mut jobs: Vec<&[LayerWork]> = Vec::new();
    let mut start = 0;
    for i in 1..=pass.work.len() {
        if i == pass.work.len() || pass.work[i].job.id != pass.work[start].job.id {
            jobs.push(&pass.work[start..i]);
            start = i;
        }
    }
    if ctx.policy.smart() {
        jobs = aged_first(ctx, jobs);
        if !ctx.policy.holds().is_empty() {
            reserve::load_pass_estimates(ctx, pass);
        }
    }
    // §3.9 step 3: the allocation's room, shared by every job's plan and shrinking with it, so
    // a pass plans no more than the subscription can take (the booking guard stays the truth).
    let fair = pass.fair_budget.as_ref().map_or(i64::MAX, |b| b.load(Ordering::SeqCst));
    let budget = AtomicI64::new(pass.alloc_room.load(Ordering::SeqCst).min(fair));
    // Planning goes job by job in priority order, so a higher-priority job gets hosts and
    // budget first; it only touches the cache. Booking leftovers runs jobs in parallel.
    let mut plans: Vec<JobPlan> = jobs.iter().filter_map(|layers| plan_job(ctx, pass, layers, &budget)).collect();
    if let Some(fair_budget) = &pass.fair_budget {
        // What the plans took from the pass budget, the fair-share budget loses too.
        let planned: i64 = plans.iter().flat_map(|p| &p.assignments).flat_map(|a| &a.planned).map(|f| f.cores).sum();
        fair_budget.fetch_sub(planned, Ordering::SeqCst);
    }
    let booked = book_planned(ctx, pass, &mut plans, launches);
    let result = plans
        .par_iter_mut()
        .map(|plan| finish_job(ctx, pass, plan, launches))
        .reduce(PassResult::default, |a, b| a + b)
        + booked;
    if ctx.policy.smart() {
        after_pass(ctx, pass, &plans);
    }
    result
}

/// Policy `smart`: jobs whose oldest waiting frame waited past `scheduler.aging_after` go
/// first, longest wait first; the rest keep Cuebot's order.
fn aged_first<'a>(ctx: &Context, jobs: Vec<&'a [LayerWork]>) -> Vec<&'a [LayerWork]> {
    let waits: Vec<f64> = jobs
        .iter()
        .map(|layers| layers.iter().flat_map(|w| w.frames.iter().map(|f| f.age_secs)).fold(0.0, f64::max))
        .collect();
    crate::matching::policy::age_order(&waits, ctx.policy.settings.aging_after).into_iter().map(|i| jobs[i]).collect()
}

/// Policy `smart`, after a pass: records unmet demand for fair share, keeps the holds of
/// layers still waiting, and tries for a hold for a frame that waited too long and fits no
/// host's idle room.
fn after_pass(ctx: &Context, pass: &Pass, plans: &[JobPlan]) {
    let now = Instant::now();
    let left: Vec<&LayerState> = plans.iter().flat_map(|p| &p.states).filter(|s| !s.frames.is_empty()).collect();
    if let Some(alloc) = &pass.cluster.alloc_id {
        let unmet: i64 = left.iter().map(|s| s.frames.len() as i64 * min_frame_units(s.work)).sum();
        let unmatched_min = left.iter().filter(|s| !s.matched).map(|s| min_frame_units(s.work)).min().unwrap_or(i64::MAX);
        ctx.policy.note_pass(alloc, &pass.cluster.show_id, unmet, unmatched_min, now);
    }
    // A show held to its fair share does not hold hosts for frames it may not book.
    let fair_room = pass.fair_budget.as_ref().map_or(i64::MAX, |b| b.load(Ordering::SeqCst));
    for state in left {
        ctx.policy.seen(&state.work.layer.id, now);
        // A layer that booked some frames this pass may still have frames that waited too long.
        if !state.saw_reserved && fair_room >= min_frame_units(state.work) {
            reserve::refresh(ctx, &state.work.layer.id, now);
            reserve::consider(ctx, state, now);
        }
    }
}

/// Minimum core units one frame of the layer can reserve anywhere.
fn min_frame_units(work: &LayerWork) -> i64 {
    if work.layer.threadable && work.layer.cores_min > CORE_UNITS_PER_CORE {
        work.layer.cores_min
    } else {
        CORE_UNITS_PER_CORE
    }
}

/// One job of a pass: its layers in dispatch order and the hosts planned for them.
pub(super) struct JobPlan<'a> {
    job: Arc<Job>,
    states: Vec<LayerState<'a>>,
    assignments: Vec<Assignment>,
    booked_units: i64,
    stop_job: bool,
    /// Layers were left to the instance whose slot the job is in (the pass should look again
    /// soon rather than sleep).
    deferred: bool,
}

/// Back-off is per (cluster, job): another cluster's hosts may fit the same job.
fn backoff_key(pass: &Pass, job: &Job) -> String {
    format!("{}|{}", pass.cluster, job.id)
}

/// A layer of a job being matched: its launchable frames, its host groups, attempts so far.
pub(super) struct LayerState<'a> {
    work: &'a LayerWork,
    frames: Vec<(Frame, PreparedCommand)>,
    keys: Vec<GroupKey>,
    attempts: usize,
    /// Some checkout found a host for this layer in this pass.
    matched: bool,
    /// A search found nothing only because fitting hosts were checked out by other matchers.
    saw_reserved: bool,
    /// Frames planned for this layer were taken by another booker.
    lost_frames: bool,
}

/// One host picked for one layer in the batch plan.
pub(super) struct Assignment {
    layer: usize,
    host: Host,
    planned: Vec<PlannedFrame>,
}

pub(super) struct LayerOutcome {
    result: PassResult,
    stop_job: bool,
}

