//! Dispatch threads: take booked frames off the launch channel and call RQD's LaunchFrame,
//! outside any transaction. A failed launch is compensated in the database (frame WAITING with
//! exit 299, proc gone, host and rollups restored), followed by a best-effort kill, and the
//! host is backed off for `checkout_timeout`. After the shutdown deadline, queued frames are
//! compensated instead of launched, so a stop never leaves a booking without a launch.

use crate::pipeline::context::Context;
use crate::pipeline::pass::Launch;
use crate::rqd::{LaunchError, COMPENSATION_KILL_MESSAGE};
use crossbeam::channel::Receiver;
use crate::limits;
use crate::pipeline::recovery::PendingCompensation;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub fn run_dispatcher(ctx: &Context, launches: Receiver<Launch>) {
    while let Some(launch) = ctx.recv_beating(&launches) {
        let past_deadline = ctx.drain_deadline.lock().is_some_and(|deadline| Instant::now() > deadline);
        if past_deadline {
            info!("shutdown deadline passed: compensating frame {} instead of launching it", launch.frame_id);
            compensate(ctx, &launch);
            continue;
        }
        let waited = launch.booked_at.elapsed();
        if waited > Duration::from_millis(limits::LAUNCH_QUEUE_AGE_MAX_MS) {
            // The stranded sweep of any instance may take bookings this old for lost ones.
            warn!("frame {} waited {waited:?} to be launched; compensating it instead", launch.frame_id);
            compensate(ctx, &launch);
            continue;
        }
        let result = if ctx.settings.dry_run { Ok(()) } else { ctx.rqd.launch(&launch.host_name, &launch.run_frame) };
        match result {
            Ok(()) => {
                ctx.metrics.frames_dispatched_total.with_label_values(&[&launch.show_name]).inc();
                ctx.frames_launched.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => launch_failed(ctx, &launch, &e),
        }
    }
}

fn launch_failed(ctx: &Context, launch: &Launch, error: &LaunchError) {
    ctx.metrics.launch_failures_total.with_label_values(&[&error.label()]).inc();
    warn!(
        "launch of frame {} ({}) on host {} failed: {error}; compensating and backing the host off for {:?}",
        launch.frame_name, launch.frame_id, launch.host_name, ctx.settings.cache.checkout_timeout
    );
    ctx.cache.back_off(&launch.host_id, ctx.settings.cache.checkout_timeout);
    compensate(ctx, launch);
    if let Err(kill_error) = ctx.rqd.kill(&launch.host_name, &launch.frame_id, COMPENSATION_KILL_MESSAGE) {
        debug!("best-effort kill of frame {} on {} failed: {kill_error}", launch.frame_id, launch.host_name);
    }
}

fn compensate(ctx: &Context, launch: &Launch) {
    match crate::pipeline::recovery::compensate(ctx, &launch.frame_id, launch.version, &launch.proc_id) {
        Ok(true) => {}
        Ok(false) => info!("frame {} had already moved on; nothing to compensate", launch.frame_id),
        Err(e) => {
            ctx.count_error("compensation");
            warn!(
                "compensation of frame {} proc {} on host {} failed: {e}; retrying with back-off",
                launch.frame_id, launch.proc_id, launch.host_name
            );
            ctx.compensation_retries.push(PendingCompensation::new(&launch.frame_id, launch.version, &launch.proc_id, &launch.host_name));
            ctx.metrics.compensation_retries_pending.set(ctx.compensation_retries.len() as i64);
        }
    }
}
