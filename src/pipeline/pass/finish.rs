//! Finishing: the per-layer host loop (scheduler-behaviour.md §3.8) for whatever the batch
//! did not book, one job per rayon task.

use super::*;

/// The per-layer host loop for whatever the batch did not book.
pub(super) fn finish_job(ctx: &Context, pass: &Pass, plan: &mut JobPlan, launches: &Sender<Launch>) -> PassResult {
    let mut result = PassResult::default();
    for state in &mut plan.states {
        if plan.stop_job || ctx.stopping() {
            break;
        }
        let outcome = run_layer(ctx, pass, state, &mut plan.booked_units, launches);
        result = result + outcome.result;
        plan.stop_job = outcome.stop_job;
    }
    // Ownership not proven lately (the host cache refused every checkout): nothing was learnt
    // about the job, so it is not backed off, and the cluster looks again soon.
    let lapsed = !ctx.serving().is_valid();
    result.contended = lapsed || plan.deferred || plan.states.iter().any(|s| (s.saw_reserved && !s.frames.is_empty()) || s.lost_frames);
    let tried = plan.states.iter().any(|s| s.attempts > 0);
    if !lapsed && tried && result.frames_booked == 0 && plan.states.iter().all(|s| !s.matched && !s.saw_reserved) {
        debug!("job {}: no host of cluster {} fits any layer; backing it off", plan.job.name, pass.cluster);
        ctx.back_off_job(&backoff_key(pass, &plan.job));
    }
    result
}

/// The per-layer host loop (§3.8), continuing from the attempts already made.
pub(super) fn run_layer(ctx: &Context, pass: &Pass, state: &mut LayerState, job_booked_units: &mut i64, launches: &Sender<Launch>) -> LayerOutcome {
    let mut outcome = LayerOutcome { result: PassResult::default(), stop_job: false };
    let job = Arc::clone(&state.work.job);
    while !state.frames.is_empty() && state.attempts < ctx.settings.attempts_per_layer && !ctx.stopping() {
        // §3.8 pre-check: job at cap.
        if job.max_cores > 0 && job.cores_in_use + *job_booked_units + min_frame_units(state.work) > job.max_cores {
            ctx.metrics.job_cap_precheck_skip_total.inc();
            outcome.stop_job = true;
            break;
        }
        // §3.8 pre-check: subscription over burst. The room is what the pass read, less what
        // it booked since (or what a refusal reported), so once the pass has filled the
        // subscription its other layers stop here instead of each being refused by the guard.
        let room = pass.alloc_room.load(Ordering::SeqCst);
        if room < min_frame_units(state.work) {
            ctx.metrics.accounting_limit_exceeded_total.with_label_values(&[Cap::Subscription.table()]).inc();
            debug!(
                "layer {} of job {} skipped: subscription pre-check ({room} core units left on the allocation)",
                state.work.layer.name, job.name
            );
            outcome.result.subscription_full = true;
            break;
        }
        // Policy `smart`: the show reached its fair share while another show is short of its.
        if pass.fair_budget.as_ref().is_some_and(|budget| budget.load(Ordering::SeqCst) < min_frame_units(state.work)) {
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
        state.lost_frames |= step.lost_frames;
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
