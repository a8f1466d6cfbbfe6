//! One cluster pass through the matcher: jobs in parallel on the matcher pool, the layers of a
//! job in order, and for each layer the bounded host loop of scheduler-behaviour.md §3.8:
//! check out a host, plan as many frames as fit, book them in one guarded transaction, check
//! the host back in with the values the database returned, and queue the launches.

use crate::booking::{Batch, BatchFrame, BatchOutcome, BatchPlan, BookOutcome, BookedFrame, Cap, PlannedFrame};
use crate::host_cache::IdleValues;
use crate::context::Context;
use crate::db;
use crate::frameset::{self, PreparedCommand, TokenInput};
use crate::host_cache::{GroupKey, Search};
use crate::matcher::{self, ScoreCaps};
use crate::model::{Cluster, ClusterKind, Frame, Host, Job, LayerWork, CORE_UNITS_PER_CORE};
use crate::queries::{self, read_host_row, HostRow};
use crate::rqd::{build_run_frame, Reservation};
use crate::protos::rqd::RunFrame;
use crate::host_cache::HostId;
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
    /// Allocation clusters: subscription room (core units) when the pass was read.
    pub alloc_headroom: Option<i64>,
}

/// What a pass achieved.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassResult {
    pub frames_booked: u64,
    /// A cap of the cluster's allocation was hit: the cluster should sleep.
    pub subscription_full: bool,
}

impl std::ops::Add for PassResult {
    type Output = PassResult;
    fn add(self, other: PassResult) -> PassResult {
        PassResult {
            frames_booked: self.frames_booked + other.frames_booked,
            subscription_full: self.subscription_full || other.subscription_full,
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
    // §3.9 step 3: the allocation's room, shared by every job's plan and shrinking with it, so
    // a pass plans no more than the subscription can take (the booking guard stays the truth).
    let budget = AtomicI64::new(pass.alloc_headroom.unwrap_or(i64::MAX));
    // Planning goes job by job in priority order, so a higher-priority job gets hosts and
    // budget first; it only touches the cache. Booking leftovers runs jobs in parallel.
    let mut plans: Vec<JobPlan> = jobs.iter().filter_map(|layers| plan_job(ctx, pass, layers, &budget)).collect();
    let booked = book_planned(ctx, pass, &mut plans, launches);
    plans
        .par_iter_mut()
        .map(|plan| finish_job(ctx, pass, plan, launches))
        .reduce(PassResult::default, |a, b| a + b)
        + booked
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
struct JobPlan<'a> {
    job: Arc<Job>,
    states: Vec<LayerState<'a>>,
    assignments: Vec<Assignment>,
    booked_units: i64,
    stop_job: bool,
}

fn plan_job<'a>(ctx: &Context, pass: &Pass, layers: &'a [LayerWork], budget: &AtomicI64) -> Option<JobPlan<'a>> {
    let job = Arc::clone(&layers.first()?.job);
    if ctx.job_backed_off(&backoff_key(pass, &job)) {
        debug!("job {} skipped: no host fitted any of its layers recently (job_back_off_duration)", job.name);
        return None;
    }
    ctx.metrics.jobs_processed_total.with_label_values(&[&pass.cluster.show_name]).inc();
    // DECISIONS.md #5: the layer whose next frame comes first goes first.
    let mut ordered: Vec<&LayerWork> = layers.iter().collect();
    ordered.sort_by_key(|w| (w.frames.first().map_or(i64::MAX, |f| f.dispatch_order), w.layer.dispatch_order));
    // §3.3 job cap: a running sum over all candidate frames, before the per-layer cut.
    let mut budget_sum = job.cores_in_use;
    let mut states = Vec::with_capacity(ordered.len());
    for work in ordered {
        let unit = min_frame_units(work);
        let mut frames: Vec<Frame> = Vec::new();
        for frame in &work.frames {
            if job.max_cores > 0 && budget_sum + unit > job.max_cores {
                break;
            }
            budget_sum += unit;
            frames.push(frame.clone());
        }
        if let Some(state) = prepare_layer(ctx, pass, work, frames) {
            states.push(state);
        }
    }
    let mut plan = JobPlan { job, states, assignments: Vec::new(), booked_units: 0, stop_job: false };
    if plan.states.iter().all(|s| !s.work.layer.has_limits) && !ctx.stopping() {
        plan_hosts(ctx, &mut plan, budget);
    }
    Some(plan)
}

/// Back-off is per (cluster, job): another cluster's hosts may fit the same job.
fn backoff_key(pass: &Pass, job: &Job) -> String {
    format!("{}|{}", pass.cluster, job.id)
}

/// The per-layer host loop for whatever the batch did not book.
fn finish_job(ctx: &Context, pass: &Pass, plan: &mut JobPlan, launches: &Sender<Launch>) -> PassResult {
    let mut result = PassResult::default();
    for state in &mut plan.states {
        if plan.stop_job || ctx.stopping() {
            break;
        }
        let outcome = run_layer(ctx, pass, state, &mut plan.booked_units, launches);
        result = result + outcome.result;
        plan.stop_job = outcome.stop_job;
    }
    let tried = plan.states.iter().any(|s| s.attempts > 0);
    if tried && result.frames_booked == 0 && plan.states.iter().all(|s| !s.matched && !s.saw_reserved) {
        debug!("job {}: no host of cluster {} fits any layer; backing it off", plan.job.name, pass.cluster);
        ctx.back_off_job(&backoff_key(pass, &plan.job));
    }
    result
}

/// A layer of a job being matched: its launchable frames, its host groups, attempts so far.
struct LayerState<'a> {
    work: &'a LayerWork,
    frames: Vec<(Frame, PreparedCommand)>,
    keys: Vec<GroupKey>,
    attempts: usize,
    /// Some checkout found a host for this layer in this pass.
    matched: bool,
    /// A search found nothing only because fitting hosts were checked out by other matchers.
    saw_reserved: bool,
}

/// Commands prepared and host groups loaded; `None` when the layer cannot be matched now.
fn prepare_layer<'a>(ctx: &Context, pass: &Pass, work: &'a LayerWork, frames: Vec<Frame>) -> Option<LayerState<'a>> {
    let frames = prepare(ctx, work, frames);
    if frames.is_empty() {
        return None;
    }
    let keys = group_keys(&pass.cluster, work);
    if keys.is_empty() {
        warn!("layer {} of job {} shares no tag with cluster {}; skipped", work.layer.name, work.job.name, pass.cluster);
        return None;
    }
    if let Err(e) = ensure_groups(ctx, &keys) {
        error!("cluster {}: cannot read hosts for layer {} of job {}: {e}", pass.cluster, work.layer.name, work.job.name);
        ctx.count_error("host_cache");
        return None;
    }
    Some(LayerState { work, frames, keys, attempts: 0, matched: false, saw_reserved: false })
}

/// One host picked for one layer in the batch plan.
struct Assignment {
    layer: usize,
    host: Host,
    planned: Vec<PlannedFrame>,
}

/// Plans hosts for every layer of the job: as many hosts as each layer's fetched frames
/// need, within its attempt budget and the job's cap. Hosts stay checked out until booked.
fn plan_hosts(ctx: &Context, plan: &mut JobPlan, budget: &AtomicI64) {
    let job = Arc::clone(&plan.job);
    let mut planned_units = 0i64;
    'layers: for (index, state) in plan.states.iter_mut().enumerate() {
        let mut unplanned: Vec<(Frame, PreparedCommand)> = state.frames.clone();
        while !unplanned.is_empty() && state.attempts < ctx.settings.attempts_per_layer {
            if job.max_cores > 0 && job.cores_in_use + planned_units + min_frame_units(state.work) > job.max_cores {
                break 'layers;
            }
            state.attempts += 1;
            ctx.metrics.host_attempts_total.inc();
            let Some(host) = checkout(ctx, state, job.cores_in_use + planned_units) else {
                state.saw_reserved |= reserved_hosts_fit(ctx, state, job.cores_in_use + planned_units);
                ctx.metrics.checkout_outcome_total.with_label_values(&["no_match"]).inc();
                ctx.metrics.no_candidate_iterations_total.inc();
                break;
            };
            state.matched = true;
            let mut planned = plan_on_host(ctx, state.work, &host, &unplanned, planned_units);
            take_from_budget(budget, &mut planned);
            if planned.is_empty() {
                ctx.cache.invalidate(&host.id);
                ctx.metrics.checkout_outcome_total.with_label_values(&["no_progress"]).inc();
                break;
            }
            planned_units += planned.iter().map(|f| f.cores).sum::<i64>();
            unplanned.retain(|(f, _)| !planned.iter().any(|p| p.frame_id == f.id));
            plan.assignments.push(Assignment { layer: index, host, planned });
        }
    }
}

/// Keeps the planned frames whose cores still fit the pass's allocation budget, and takes
/// their cores from it.
fn take_from_budget(budget: &AtomicI64, planned: &mut Vec<PlannedFrame>) {
    let mut taken = 0;
    let _ = budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |room| {
        let mut left = room;
        let mut keep = 0;
        for frame in planned.iter() {
            if frame.cores > left {
                break;
            }
            left -= frame.cores;
            keep += 1;
        }
        taken = keep;
        Some(left)
    });
    planned.truncate(taken);
}

/// Books every planned assignment: the whole pass in one transaction; if anything conflicts,
/// each job in its own; if that conflicts too, each host on its own (`book_on_host`).
fn book_planned(ctx: &Context, pass: &Pass, plans: &mut [JobPlan], launches: &Sender<Launch>) -> PassResult {
    let mut result = PassResult::default();
    if plans.iter().all(|p| p.assignments.is_empty()) {
        return result;
    }
    let batch = |plans: &[&JobPlan]| Batch {
        show_id: &pass.cluster.show_id,
        mem_used_initial: ctx.settings.mem_reserved_min_kib,
        update_stat_on_book: ctx.settings.update_stat_on_book,
        frames: plans.iter().flat_map(|p| batch_frames(p)).collect(),
    };
    let all: Vec<&JobPlan> = plans.iter().filter(|p| !p.assignments.is_empty()).collect();
    if all.len() > 1 {
        if let Ok(BatchOutcome::Booked { frames, hosts, db_time }) = ctx.with_booker(|b| b.book_batch(&batch(&all))) {
            for plan in plans.iter_mut() {
                result.frames_booked += apply_batch(ctx, pass, plan, &frames, &hosts, db_time, launches);
            }
            return result;
        }
        ctx.metrics.booking_conflicts_total.with_label_values(&["pass_batch"]).inc();
    }
    for plan in plans.iter_mut().filter(|p| !p.assignments.is_empty()) {
        match ctx.with_booker(|b| b.book_batch(&batch(&[&*plan]))) {
            Ok(BatchOutcome::Booked { frames, hosts, db_time }) => {
                result.frames_booked += apply_batch(ctx, pass, plan, &frames, &hosts, db_time, launches);
            }
            Ok(BatchOutcome::Conflict) | Err(_) => {
                ctx.metrics.booking_conflicts_total.with_label_values(&["job_batch"]).inc();
                result = result + book_each_host(ctx, pass, plan, launches);
            }
        }
    }
    result
}

/// Checks the plan's hosts back in with the database's values and launches its frames.
#[allow(clippy::too_many_arguments)]
fn apply_batch(
    ctx: &Context,
    pass: &Pass,
    plan: &mut JobPlan,
    booked: &[BookedFrame],
    hosts: &[(String, IdleValues)],
    db_time: f64,
    launches: &Sender<Launch>,
) -> u64 {
    let mut launched = 0;
    for assignment in std::mem::take(&mut plan.assignments) {
        match hosts.iter().find(|(id, _)| **id == *assignment.host.id) {
            Some((_, idle)) => ctx.cache.checkin(&assignment.host.id, *idle, db_time),
            None => ctx.cache.invalidate(&assignment.host.id),
        }
        let state = &mut plan.states[assignment.layer];
        let mine: Vec<BookedFrame> =
            booked.iter().filter(|b| assignment.planned.iter().any(|p| p.frame_id == b.frame_id)).cloned().collect();
        let lost = assignment.planned.len() - mine.len();
        if lost > 0 {
            // Taken by another booker meanwhile (SKIP LOCKED or no longer WAITING): dropped.
            ctx.metrics.booking_conflicts_total.with_label_values(&["frame_taken"]).inc_by(lost as u64);
            state.frames.retain(|(f, _)| !assignment.planned.iter().any(|p| p.frame_id == f.id) || mine.iter().any(|b| b.frame_id == f.id));
        }
        launched += launch_booked(ctx, pass, state.work, &assignment.host, &mine, &mut state.frames, &mut plan.booked_units, launches);
        let outcome = if mine.is_empty() { "no_progress" } else { "booked" };
        ctx.metrics.checkout_outcome_total.with_label_values(&[outcome]).inc();
    }
    launched
}

/// The fallback: each planned host booked on its own, exactly as the per-layer loop would.
fn book_each_host(ctx: &Context, pass: &Pass, plan: &mut JobPlan, launches: &Sender<Launch>) -> PassResult {
    let mut result = PassResult::default();
    for assignment in std::mem::take(&mut plan.assignments) {
        if plan.stop_job {
            ctx.cache.invalidate(&assignment.host.id);
            continue;
        }
        let state = &mut plan.states[assignment.layer];
        let step = book_on_host(ctx, pass, state.work, &assignment.host, &mut state.frames, &mut plan.booked_units, launches);
        ctx.metrics.checkout_outcome_total.with_label_values(&[step.outcome_label]).inc();
        result.frames_booked += step.booked;
        result.subscription_full |= step.subscription_full && pass.cluster.kind == ClusterKind::Alloc;
        plan.stop_job |= step.stop_job;
    }
    result
}

fn batch_frames(plan: &JobPlan) -> Vec<BatchFrame> {
    let job = &plan.job;
    plan.assignments
        .iter()
        .flat_map(|a| {
            let layer = &plan.states[a.layer].work.layer;
            a.planned.iter().map(move |p| BatchFrame {
                frame_id: p.frame_id.clone(),
                version: p.version,
                cores: p.cores,
                layer_id: layer.id.clone(),
                layer_limited: layer.has_limits,
                job_id: job.id.clone(),
                host_id: a.host.id.to_string(),
                host_name: a.host.name.clone(),
                mem: layer.mem_min,
                gpus: layer.gpus_min,
                gpu_mem: layer.gpu_mem_min,
            })
        })
        .collect()
}

/// Checks out the best host for the layer's next frame. When the cache has none, groups not
/// read for `limits::GROUP_REFETCH_MIN_MS` are re-read once and the search repeated.
fn checkout(ctx: &Context, state: &LayerState, job_cores_in_use: i64) -> Option<Host> {
    if let Some(host) = search_cache(ctx, state, job_cores_in_use) {
        return Some(host);
    }
    let stale = ctx.cache.groups_older_than(&state.keys, std::time::Duration::from_millis(crate::limits::GROUP_REFETCH_MIN_MS));
    if stale.is_empty() {
        return None;
    }
    if let Err(e) = refetch_groups(ctx, &stale) {
        ctx.count_error("host_cache");
        warn!("cannot re-read host groups for layer {}: {e}", state.work.layer.name);
        return None;
    }
    search_cache(ctx, state, job_cores_in_use)
}

fn refetch_groups(ctx: &Context, keys: &[GroupKey]) -> Result<(), db::DbError> {
    let mut client = db::get(&ctx.pool, "re-read host group")?;
    for key in keys {
        let rows = fetch_group(&mut client, key)?;
        if ctx.cache.apply_group(key, rows) {
            ctx.wake_backed_off_jobs();
        }
    }
    Ok(())
}

/// Whether a host that is checked out (or backed off) right now would fit the layer.
fn reserved_hosts_fit(ctx: &Context, state: &LayerState, job_cores_in_use: i64) -> bool {
    let job = &state.work.job;
    let search = Search {
        layer: &state.work.layer,
        job_os: job.os.as_deref(),
        caps: ScoreCaps::default(),
        policy: Some(&ctx.settings.policy),
        job_remaining_units: (job.max_cores > 0).then(|| job.max_cores - job_cores_in_use),
    };
    ctx.cache.any_reserved_fit(&state.keys, &search)
}

fn search_cache(ctx: &Context, state: &LayerState, job_cores_in_use: i64) -> Option<Host> {
    let job = &state.work.job;
    let caps = ScoreCaps { job_max_cores: job.max_cores, job_cores_in_use, ..ScoreCaps::default() };
    let job_remaining_units = (job.max_cores > 0).then(|| job.max_cores - job_cores_in_use);
    let search = Search {
        layer: &state.work.layer,
        job_os: job.os.as_deref(),
        caps,
        policy: Some(&ctx.settings.policy),
        job_remaining_units,
    };
    let checkout = ctx.cache.checkout(&state.keys, &search, &ctx.settings.strategy)?;
    if let Some(score) = checkout.score {
        ctx.metrics.placement_score_chosen.observe(score);
    }
    Some(checkout.host)
}

struct LayerOutcome {
    result: PassResult,
    stop_job: bool,
}

/// Prepares commands; frames whose name or range cannot be used are dropped for good.
fn prepare(ctx: &Context, work: &LayerWork, frames: Vec<Frame>) -> Vec<(Frame, PreparedCommand)> {
    let mut ready = Vec::with_capacity(frames.len());
    for frame in frames {
        if ctx.is_unlaunchable(&frame.id) {
            continue;
        }
        let input = TokenInput {
            command: &work.layer.command,
            range: &work.layer.range,
            chunk_size: work.layer.chunk_size,
            frame_name: &frame.name,
            layer_name: &work.layer.name,
            job_name: &work.job.name,
        };
        match frameset::prepare_command(&input) {
            Ok(command) => ready.push((frame, command)),
            Err(e) => {
                if ctx.mark_unlaunchable(&frame.id) {
                    warn!(
                        "frame {} ({}) of job {} layer {} cannot be launched and is left WAITING: {e}",
                        frame.name, frame.id, work.job.name, work.layer.name
                    );
                    ctx.count_error("prepare");
                }
            }
        }
    }
    ready
}

/// Host groups to probe for a layer: the cluster's tags that the layer also carries.
fn group_keys(cluster: &Cluster, work: &LayerWork) -> Vec<GroupKey> {
    let mut keys: Vec<GroupKey> = cluster
        .tags
        .iter()
        .filter(|tag| work.layer.tags.iter().any(|t| t == *tag))
        .map(|tag| GroupKey { facility_id: cluster.facility_id.clone(), show_id: cluster.show_id.clone(), tag: tag.clone() })
        .collect();
    keys.sort();
    keys
}

/// Fetches absent or expired groups from the database into the cache.
pub fn ensure_groups(ctx: &Context, keys: &[GroupKey]) -> Result<(), db::DbError> {
    let missing = ctx.cache.groups_to_fetch(keys);
    if missing.is_empty() {
        return Ok(());
    }
    let mut client = db::get(&ctx.pool, "fetch host group")?;
    for key in missing {
        let rows = fetch_group(&mut client, &key)?;
        if ctx.cache.apply_group(&key, rows) {
            ctx.wake_backed_off_jobs();
        }
    }
    Ok(())
}

pub fn fetch_group(client: &mut postgres::Client, key: &GroupKey) -> Result<Vec<HostRow>, db::DbError> {
    let rows = client
        .query(queries::GROUP_HOSTS_SQL, &[&key.facility_id, &key.show_id, &key.tag])
        .map_err(db::DbError::query("fetch host group"))?;
    rows.iter().map(read_host_row).collect()
}

/// The per-layer host loop (§3.8), continuing from the attempts already made.
fn run_layer(ctx: &Context, pass: &Pass, state: &mut LayerState, job_booked_units: &mut i64, launches: &Sender<Launch>) -> LayerOutcome {
    let mut outcome = LayerOutcome { result: PassResult::default(), stop_job: false };
    let job = Arc::clone(&state.work.job);
    while !state.frames.is_empty() && state.attempts < ctx.settings.attempts_per_layer && !ctx.stopping() {
        // §3.8 pre-check: job at cap.
        if job.max_cores > 0 && job.cores_in_use + *job_booked_units + min_frame_units(state.work) > job.max_cores {
            ctx.metrics.job_cap_precheck_skip_total.inc();
            outcome.stop_job = true;
            break;
        }
        state.attempts += 1;
        ctx.metrics.host_attempts_total.inc();
        let Some(host) = checkout(ctx, state, job.cores_in_use + *job_booked_units) else {
            state.saw_reserved |= reserved_hosts_fit(ctx, state, job.cores_in_use + *job_booked_units);
            ctx.metrics.checkout_outcome_total.with_label_values(&["no_match"]).inc();
            ctx.metrics.no_candidate_iterations_total.inc();
            break;
        };
        state.matched = true;
        let step = book_on_host(ctx, pass, state.work, &host, &mut state.frames, job_booked_units, launches);
        ctx.metrics.checkout_outcome_total.with_label_values(&[step.outcome_label]).inc();
        outcome.result.frames_booked += step.booked;
        if step.subscription_full {
            outcome.result.subscription_full = pass.cluster.kind == ClusterKind::Alloc;
            break;
        }
        if step.stop_job {
            outcome.stop_job = true;
            break;
        }
        if step.stop_layer {
            break;
        }
    }
    if state.frames.is_empty() {
        ctx.metrics.candidates_per_layer.observe(state.attempts as f64);
    }
    outcome
}

/// Frames of the layer that fit on `host`, in order, with their reservations.
fn plan_on_host(ctx: &Context, work: &LayerWork, host: &Host, frames: &[(Frame, PreparedCommand)], job_booked_units: i64) -> Vec<PlannedFrame> {
    let job = &work.job;
    let layer = &work.layer;
    let mut simulated = host.clone();
    let mut remaining_units = (job.max_cores > 0).then(|| job.max_cores - job.cores_in_use - job_booked_units);
    let mut planned = Vec::new();
    for (frame, _) in frames.iter().take(ctx.settings.frames_per_layer) {
        // §3.9 step 1: stop when the job's remaining cores cannot hold another frame.
        if remaining_units.is_some_and(|units| units < min_frame_units(work)) {
            break;
        }
        let Ok(cores) = matcher::reserve_cores(&simulated, layer, remaining_units, &ctx.settings.policy) else { break };
        planned.push(PlannedFrame { frame_id: frame.id.clone(), version: frame.version, cores });
        simulated.cores_idle -= cores;
        simulated.mem_idle -= layer.mem_min;
        simulated.gpus_idle -= layer.gpus_min;
        simulated.gpu_mem_idle -= layer.gpu_mem_min;
        if let Some(units) = remaining_units.as_mut() {
            *units -= cores;
        }
    }
    planned
}

/// Turns booked frames into launches on the dispatch channel; removes them from `frames`.
#[allow(clippy::too_many_arguments)]
fn launch_booked(
    ctx: &Context,
    pass: &Pass,
    work: &LayerWork,
    host: &Host,
    booked: &[BookedFrame],
    frames: &mut Vec<(Frame, PreparedCommand)>,
    job_booked_units: &mut i64,
    launches: &Sender<Launch>,
) -> u64 {
    let (job, layer) = (&work.job, &work.layer);
    let elapsed = pass.fetched_at.elapsed().as_secs_f64();
    let mut launched = 0;
    for b in booked {
        let Some(index) = frames.iter().position(|(f, _)| f.id == b.frame_id) else { continue };
        let (frame, command) = frames.remove(index);
        *job_booked_units += b.cores;
        launched += 1;
        ctx.metrics.time_to_book_seconds.observe(frame.age_secs + elapsed);
        let reservation = Reservation {
            proc_id: &b.proc_id,
            cores: b.cores,
            soft_limit_multiplier: ctx.settings.soft_memory_multiplier,
            hard_limit_multiplier: ctx.settings.hard_memory_multiplier,
        };
        let run_frame = build_run_frame(job, layer, &frame, &command, &reservation);
        debug!(
            "booked frame {} ({}) job {} layer {} on host {} with {} core units, proc {}",
            frame.name, frame.id, job.name, layer.name, host.name, b.cores, b.proc_id
        );
        let launch = Launch {
            host_id: Arc::clone(&host.id),
            host_name: host.name.clone(),
            show_name: pass.cluster.show_name.clone(),
            frame_id: frame.id.clone(),
            frame_name: frame.name.clone(),
            version: b.version,
            proc_id: b.proc_id.clone(),
            run_frame,
            booked_at: std::time::Instant::now(),
        };
        ctx.frames_booked.fetch_add(1, Ordering::Relaxed);
        // The dispatchers outlive the matchers, so a send only fails if they died; the
        // booking is then compensated here so nothing stays booked unlaunched.
        if let Err(failed) = launches.send(launch) {
            let launch = failed.into_inner();
            error!("dispatch threads are gone; compensating frame {}", launch.frame_id);
            let _ = ctx.with_booker(|b| b.compensate(&launch.frame_id, launch.version, &launch.proc_id, ctx.settings.update_stat_on_book));
        }
    }
    launched
}

struct HostStep {
    booked: u64,
    outcome_label: &'static str,
    subscription_full: bool,
    stop_job: bool,
    stop_layer: bool,
}

/// Plans, books and queues frames of one layer on one checked-out host.
fn book_on_host(
    ctx: &Context,
    pass: &Pass,
    work: &LayerWork,
    host: &Host,
    frames: &mut Vec<(Frame, PreparedCommand)>,
    job_booked_units: &mut i64,
    launches: &Sender<Launch>,
) -> HostStep {
    let mut step = HostStep { booked: 0, outcome_label: "no_progress", subscription_full: false, stop_job: false, stop_layer: false };
    let job = &work.job;
    let layer = &work.layer;
    let planned = plan_on_host(ctx, work, host, frames, *job_booked_units);
    if planned.is_empty() {
        ctx.cache.invalidate(&host.id);
        step.stop_layer = true;
        return step;
    }
    let plan = BatchPlan {
        host_id: &host.id,
        host_name: &host.name,
        show_id: &job.show_id,
        job_id: &job.id,
        layer_id: &layer.id,
        layer_limited: layer.has_limits,
        mem: layer.mem_min,
        gpus: layer.gpus_min,
        gpu_mem: layer.gpu_mem_min,
        mem_used_initial: ctx.settings.mem_reserved_min_kib,
        update_stat_on_book: ctx.settings.update_stat_on_book,
        frames: planned,
    };
    let mut plan = plan;
    let mut result = ctx.with_booker(|booker| booker.book(&plan));
    // A cap refused the whole batch but had room for part of it: retry once with what fits.
    if let Ok(BookOutcome::Refused { cap, headroom: Some(headroom) }) = &result {
        let mut used = 0;
        let fitting = plan.frames.iter().take_while(|f| {
            used += f.cores;
            used <= *headroom
        }).count();
        if fitting > 0 && fitting < plan.frames.len() {
            debug!("{} cap left room for {fitting} of {} frames on {}; retrying", cap.table(), plan.frames.len(), host.name);
            plan.frames.truncate(fitting);
            result = ctx.with_booker(|booker| booker.book(&plan));
        }
    }
    let planned_ids: Vec<String> = plan.frames.iter().map(|f| f.frame_id.clone()).collect();
    let conflict = |reason: &str| ctx.metrics.booking_conflicts_total.with_label_values(&[reason]).inc();
    match result {
        Ok(BookOutcome::Booked { frames: booked, idle, db_time }) => {
            ctx.cache.checkin(&host.id, idle, db_time);
            let lost = planned_ids.len() - booked.len();
            if lost > 0 {
                ctx.metrics.booking_conflicts_total.with_label_values(&["frame_taken"]).inc_by(lost as u64);
            }
            launch_booked(ctx, pass, work, host, &booked, frames, job_booked_units, launches);
            // Frames planned but not started were taken by another booker: drop them.
            frames.retain(|(f, _)| !planned_ids.contains(&f.id));
            step.booked = booked.len() as u64;
            step.outcome_label = if booked.is_empty() { "no_progress" } else { "booked" };
        }
        Ok(BookOutcome::NothingStarted) => {
            ctx.cache.invalidate(&host.id);
            conflict("frame_taken");
            frames.retain(|(f, _)| !planned_ids.contains(&f.id));
            if work.layer.has_limits {
                step.stop_layer = true;
            }
        }
        Ok(BookOutcome::HostExhausted) => {
            ctx.cache.invalidate(&host.id);
            conflict("host_exhausted");
        }
        Ok(BookOutcome::Refused { cap, .. }) => {
            ctx.cache.invalidate(&host.id);
            ctx.metrics.accounting_limit_exceeded_total.with_label_values(&[cap.table()]).inc();
            debug!("booking of layer {} of job {} on host {} refused: {} cap reached", layer.name, job.name, host.name, cap.table());
            match cap {
                Cap::Subscription => step.subscription_full = true,
                Cap::Job | Cap::Folder => step.stop_job = true,
            }
        }
        Err(e) => {
            ctx.cache.invalidate(&host.id);
            ctx.count_error("booking");
            error!("booking layer {} of job {} on host {} failed: {e}", layer.name, job.name, host.name);
            step.outcome_label = "dispatch_error";
            step.stop_layer = true;
        }
    }
    step
}
