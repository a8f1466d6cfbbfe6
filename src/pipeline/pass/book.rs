//! Booking: everything planned in one guarded transaction, falling back per job and per
//! host on conflict; hosts checked back in with the database's values; launches queued.

use super::*;

/// Books every planned assignment: the whole pass in one transaction; if anything conflicts,
/// each job in its own; if that conflicts too, each host on its own (`book_on_host`).
pub(super) fn book_planned(ctx: &Context, pass: &Pass, plans: &mut [JobPlan], launches: &Sender<Launch>) -> PassResult {
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
    let planned_ids = |plans: &[&JobPlan]| plans.iter().flat_map(|p| p.assignments.iter().flat_map(|a| a.planned.iter().map(|f| f.frame_id.clone()))).collect();
    if all.len() > 1 {
        let _flight = ctx.booking(planned_ids(&all));
        if let Ok(BatchOutcome::Booked { frames, hosts, db_time }) = ctx.with_booker(|b| b.book_batch(&batch(&all))) {
            ctx.note_booked(frames.iter().map(|f| f.frame_id.as_str()));
            for plan in plans.iter_mut() {
                result.frames_booked += apply_batch(ctx, pass, plan, &frames, &hosts, db_time, launches);
            }
            return result;
        }
        ctx.metrics.booking_conflicts_total.with_label_values(&["pass_batch"]).inc();
    }
    for plan in plans.iter_mut().filter(|p| !p.assignments.is_empty()) {
        let flight = ctx.booking(planned_ids(&[&*plan]));
        match ctx.with_booker(|b| b.book_batch(&batch(&[&*plan]))) {
            Ok(BatchOutcome::Booked { frames, hosts, db_time }) => {
                ctx.note_booked(frames.iter().map(|f| f.frame_id.as_str()));
                result.frames_booked += apply_batch(ctx, pass, plan, &frames, &hosts, db_time, launches);
            }
            Ok(BatchOutcome::Conflict) | Err(_) => {
                // Each host's booking below holds its own frames.
                drop(flight);
                ctx.metrics.booking_conflicts_total.with_label_values(&["job_batch"]).inc();
                result = result + book_each_host(ctx, pass, plan, launches);
            }
        }
    }
    result
}

/// Checks the plan's hosts back in with the database's values and launches its frames.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply_batch(
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
            let lost_ids = assignment.planned.iter().filter(|p| !mine.iter().any(|b| b.frame_id == p.frame_id)).map(|p| p.frame_id.as_str());
            count_lost_elsewhere(ctx, lost_ids, mine.is_empty());
            state.lost_frames = true;
            state.frames.retain(|(f, _)| !assignment.planned.iter().any(|p| p.frame_id == f.id) || mine.iter().any(|b| b.frame_id == f.id));
        }
        launched += launch_booked(ctx, pass, state.work, &assignment.host, &mine, &mut state.frames, &mut plan.booked_units, launches);
        let outcome = if mine.is_empty() { "no_progress" } else { "booked" };
        ctx.metrics.checkout_outcome_total.with_label_values(&[outcome]).inc();
    }
    launched
}

/// The fallback: each planned host booked on its own, exactly as the per-layer loop would.
pub(super) fn book_each_host(ctx: &Context, pass: &Pass, plan: &mut JobPlan, launches: &Sender<Launch>) -> PassResult {
    let mut result = PassResult::default();
    for assignment in std::mem::take(&mut plan.assignments) {
        if plan.stop_job {
            ctx.cache.invalidate(&assignment.host.id);
            continue;
        }
        let state = &mut plan.states[assignment.layer];
        let step = book_on_host(ctx, pass, state.work, &assignment.host, &mut state.frames, &mut plan.booked_units, launches);
        state.lost_frames |= step.lost_frames;
        ctx.metrics.checkout_outcome_total.with_label_values(&[step.outcome_label]).inc();
        result.frames_booked += step.booked;
        result.subscription_full |= step.subscription_full && pass.cluster.kind == ClusterKind::Alloc;
        plan.stop_job |= step.stop_job;
    }
    result
}

pub(super) fn batch_frames(plan: &JobPlan) -> Vec<BatchFrame> {
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

/// Turns booked frames into launches on the dispatch channel; removes them from `frames`.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch_booked(
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
    if !booked.is_empty() && ctx.policy.smart() {
        release_holds(ctx, layer, host, booked.len());
    }
    for b in booked {
        let Some(index) = frames.iter().position(|(f, _)| f.id == b.frame_id) else { continue };
        let (frame, command) = frames.remove(index);
        *job_booked_units += b.cores;
        pass.alloc_room.fetch_sub(b.cores, Ordering::SeqCst);
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

/// Policy `smart`: the layer booked `frames` frames on `host`, so as many of its holds are let
/// go (the one on that host first).
fn release_holds(ctx: &Context, layer: &crate::model::Layer, host: &Host, frames: usize) {
    for _ in 0..frames {
        let Some(hold) = ctx.policy.booked(&layer.id, &host.id) else { break };
        ctx.metrics.reservations_total.with_label_values(&["booked"]).inc();
        let place = if hold.host_id == host.id { "on the held host".to_string() } else { format!("on {} (not the held host {})", host.name, hold.host_name) };
        info!(
            "layer {} of job {} booked {place} {:.0} s after the hold was made (expected {:.0} s)",
            layer.name,
            hold.job_name,
            hold.made_at.elapsed().as_secs_f64(),
            hold.due.saturating_duration_since(hold.made_at).as_secs_f64()
        );
    }
    ctx.metrics.reservations_held.set(ctx.policy.holds().len() as i64);
}

/// Frames lost to a booker other than this instance (another instance, or Cuebot): those this
/// instance did not book itself lately. A host attempt that booked nothing and lost a frame that
/// way is a wasted attempt another booker caused.
fn count_lost_elsewhere<'a>(ctx: &Context, lost: impl Iterator<Item = &'a str>, attempt_wasted: bool) {
    let elsewhere = lost.filter(|id| !ctx.taken_here(id)).count() as u64;
    if elsewhere > 0 {
        ctx.metrics.frames_lost_elsewhere_total.inc_by(elsewhere);
        if attempt_wasted {
            ctx.metrics.attempts_wasted_by_others_total.inc();
        }
    }
}

pub(super) struct HostStep {
    pub(super) booked: u64,
    pub(super) outcome_label: &'static str,
    pub(super) subscription_full: bool,
    pub(super) stop_job: bool,
    pub(super) stop_layer: bool,
    /// Some planned frames were taken by another booker.
    pub(super) lost_frames: bool,
}

/// Plans, books and queues frames of one layer on one checked-out host.
pub(super) fn book_on_host(
    ctx: &Context,
    pass: &Pass,
    work: &LayerWork,
    host: &Host,
    frames: &mut Vec<(Frame, PreparedCommand)>,
    job_booked_units: &mut i64,
    launches: &Sender<Launch>,
) -> HostStep {
    let mut step = HostStep { booked: 0, outcome_label: "no_progress", subscription_full: false, stop_job: false, stop_layer: false, lost_frames: false };
    let job = &work.job;
    let layer = &work.layer;
    let mut planned = plan_on_host(ctx, work, host, frames, *job_booked_units);
    if let Some(fair_budget) = &pass.fair_budget {
        take_from_budget(fair_budget, &mut planned);
    }
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
    let _flight = ctx.booking(plan.frames.iter().map(|f| f.frame_id.clone()).collect());
    let mut result = ctx.with_booker(|booker| booker.book(&plan));
    if let Ok(BookOutcome::Refused { cap, headroom }) = &result {
        if *cap == Cap::Subscription && pass.cluster.kind == ClusterKind::Alloc {
            // What the locked subscription row had left: the pass's room from now on.
            pass.alloc_room.store(headroom.unwrap_or(0).max(0), Ordering::SeqCst);
        }
        // The cap refused the whole batch but had room for part of it: retry once with what fits.
        if let Some(headroom) = headroom {
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
    }
    let planned_ids: Vec<String> = plan.frames.iter().map(|f| f.frame_id.clone()).collect();
    let conflict = |reason: &str| ctx.metrics.booking_conflicts_total.with_label_values(&[reason]).inc();
    match result {
        Ok(BookOutcome::Booked { frames: booked, idle, db_time }) => {
            ctx.note_booked(booked.iter().map(|b| b.frame_id.as_str()));
            ctx.cache.checkin(&host.id, idle, db_time);
            let lost = planned_ids.len() - booked.len();
            if lost > 0 {
                ctx.metrics.booking_conflicts_total.with_label_values(&["frame_taken"]).inc_by(lost as u64);
                step.lost_frames = true;
                let lost_ids = planned_ids.iter().filter(|id| !booked.iter().any(|b| b.frame_id == **id)).map(String::as_str);
                count_lost_elsewhere(ctx, lost_ids, booked.is_empty());
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
            step.lost_frames = true;
            count_lost_elsewhere(ctx, planned_ids.iter().map(String::as_str), true);
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
