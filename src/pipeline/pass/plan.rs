//! Planning: which hosts each job's layers get, in priority order, within the allocation's
//! budget. Touches only the host cache (checkouts); nothing here writes to the database.

use super::*;
use crate::matching::policy::{HoldCheck, HoldMap};

pub(super) fn plan_job<'a>(ctx: &Context, pass: &Pass, layers: &'a [LayerWork], budget: &AtomicI64) -> Option<JobPlan<'a>> {
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
    let mut deferred = false;
    let serving = ctx.serving();
    for work in ordered {
        // Another slot's layer that its instance can serve is left to it for a moment: this
        // instance takes it after `STEAL_AFTER_MS` times its turn (that instance, and the
        // helpers before this one, may have no room).
        let turn = serving.turn(job.slot, &work.layer.tags, min_frame_units(work));
        if turn > 0 && ctx.leave_to_owner(&work.layer.id, turn) {
            debug!("layer {} of job {}: left to the instance whose slot the job is in", work.layer.name, job.name);
            deferred = true;
            continue;
        }
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
    let mut plan = JobPlan { job, states, assignments: Vec::new(), booked_units: 0, stop_job: false, deferred };
    if plan.states.iter().all(|s| !s.work.layer.has_limits) && !ctx.stopping() {
        plan_hosts(ctx, &mut plan, budget);
    }
    Some(plan)
}

/// Commands prepared and host groups loaded; `None` when the layer cannot be matched now.
pub(super) fn prepare_layer<'a>(ctx: &Context, pass: &Pass, work: &'a LayerWork, frames: Vec<Frame>) -> Option<LayerState<'a>> {
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
    Some(LayerState { work, frames, keys, attempts: 0, matched: false, saw_reserved: false, lost_frames: false })
}

/// Plans hosts for every layer of the job: as many hosts as each layer's fetched frames
/// need, within its attempt budget and the job's cap. Hosts stay checked out until booked.
pub(super) fn plan_hosts(ctx: &Context, plan: &mut JobPlan, budget: &AtomicI64) {
    let job = Arc::clone(&plan.job);
    let mut planned_units = 0i64;
    'layers: for (index, state) in plan.states.iter_mut().enumerate() {
        let mut unplanned: Vec<(Frame, PreparedCommand)> = state.frames.clone();
        while !unplanned.is_empty() && state.attempts < ctx.settings.attempts_per_layer {
            if job.max_cores > 0 && job.cores_in_use + planned_units + min_frame_units(state.work) > job.max_cores {
                break 'layers;
            }
            // The pass's budget cannot hold a frame: no host to check out (finishing decides
            // whether the subscription is full).
            if budget.load(Ordering::SeqCst) < min_frame_units(state.work) {
                break;
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
pub(super) fn take_from_budget(budget: &AtomicI64, planned: &mut Vec<PlannedFrame>) {
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

/// Checks out the best host for the layer's next frame. When the cache has none, groups not
/// read for `limits::GROUP_REFETCH_MIN_MS` are re-read once and the search repeated.
pub(super) fn checkout(ctx: &Context, state: &LayerState, job_cores_in_use: i64) -> Option<Host> {
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

pub(super) fn refetch_groups(ctx: &Context, keys: &[GroupKey]) -> Result<(), db::DbError> {
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
pub(super) fn reserved_hosts_fit(ctx: &Context, state: &LayerState, job_cores_in_use: i64) -> bool {
    let job = &state.work.job;
    let holds = held_hosts(ctx);
    let search = Search {
        layer: &state.work.layer,
        job_os: job.os.as_deref(),
        caps: ScoreCaps::default(),
        policy: Some(&ctx.settings.policy),
        job_remaining_units: (job.max_cores > 0).then(|| job.max_cores - job_cores_in_use),
        holds: hold_check(ctx, holds.as_deref(), &state.work.layer.id),
    };
    ctx.cache.any_reserved_fit(&state.keys, &search)
}

pub(super) fn search_cache(ctx: &Context, state: &LayerState, job_cores_in_use: i64) -> Option<Host> {
    let job = &state.work.job;
    let caps = ScoreCaps { job_max_cores: job.max_cores, job_cores_in_use, ..ScoreCaps::default() };
    let job_remaining_units = (job.max_cores > 0).then(|| job.max_cores - job_cores_in_use);
    let holds = held_hosts(ctx);
    let search = Search {
        layer: &state.work.layer,
        job_os: job.os.as_deref(),
        caps,
        policy: Some(&ctx.settings.policy),
        job_remaining_units,
        holds: hold_check(ctx, holds.as_deref(), &state.work.layer.id),
    };
    let checkout = ctx.cache.checkout(&state.keys, &search, &ctx.settings.strategy)?;
    if let Some(score) = checkout.score {
        ctx.metrics.placement_score_chosen.observe(score);
    }
    Some(checkout.host)
}

/// Policy `smart` with hosts held: the holds (`None` otherwise, so checkouts skip the check).
fn held_hosts(ctx: &Context) -> Option<Arc<HoldMap>> {
    ctx.policy.smart().then(|| ctx.policy.holds()).filter(|holds| !holds.is_empty())
}

fn hold_check<'a>(ctx: &Context, holds: Option<&'a HoldMap>, layer_id: &'a str) -> Option<HoldCheck<'a>> {
    holds.map(|holds| HoldCheck { holds, layer_id, estimate_secs: ctx.policy.estimate(layer_id), now: Instant::now() })
}

/// Prepares commands; frames whose name or range cannot be used are dropped for good.
pub(super) fn prepare(ctx: &Context, work: &LayerWork, frames: Vec<Frame>) -> Vec<(Frame, PreparedCommand)> {
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
pub(super) fn group_keys(cluster: &Cluster, work: &LayerWork) -> Vec<GroupKey> {
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

/// Frames of the layer that fit on `host`, in order, with their reservations.
pub(super) fn plan_on_host(ctx: &Context, work: &LayerWork, host: &Host, frames: &[(Frame, PreparedCommand)], job_booked_units: i64) -> Vec<PlannedFrame> {
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
