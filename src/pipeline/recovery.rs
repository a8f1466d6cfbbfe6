//! No booking is left without a launch or a compensation.
//!
//! Three ways a committed booking can end up with nothing running behind it, and what settles
//! each:
//! - **A compensation that failed** (database unreachable for a moment): it is retried here with
//!   back-off until it succeeds or the frame is no longer ours (Cuebot or RQD moved it on).
//! - **A COMMIT whose connection dropped**: the booker re-reads whether it committed
//!   (`booking::Booker::resolve`) and then launches or forgets it.
//! - **A process that died between COMMIT and launch** (kill -9, a crash, a power cut), or an
//!   RQD that accepted a frame and lost it: the *stranded sweep* below, at start-up and every
//!   `STRANDED_SWEEP_INTERVAL_SECS`, in every instance. It uses only what Cuebot's tables and RQD
//!   hold: a proc whose `ts_ping` never moved past `ts_booked` (no host report ever mentioned
//!   it) for `STRANDED_GRACE_SECS`, whose host's RQD does not list its frame in ReportStatus
//!   (or, when the RQD cannot be asked, for `STRANDED_UNREACHABLE_GRACE_SECS`), is compensated
//!   exactly as a failed launch is, and a best-effort kill is sent.
//!
//! Cuebot's own orphan-proc cleanup is not waited for: for managed shows it does not decrement
//! the rollups. The sweep is off in dry-run mode, where nothing is launched by design.

use crate::pipeline::context::Context;
use crate::db::{self, DbError};
use crate::limits;
use crate::ops::logging::escape;
use crate::rqd::COMPENSATION_KILL_MESSAGE;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A compensation to retry.
#[derive(Clone, Debug)]
pub struct PendingCompensation {
    pub frame_id: String,
    pub version: i32,
    pub proc_id: String,
    pub host_name: String,
    attempts: u32,
    next: Instant,
}

impl PendingCompensation {
    pub fn new(frame_id: &str, version: i32, proc_id: &str, host_name: &str) -> PendingCompensation {
        PendingCompensation {
            frame_id: frame_id.to_string(),
            version,
            proc_id: proc_id.to_string(),
            host_name: host_name.to_string(),
            attempts: 1,
            next: Instant::now() + Duration::from_millis(limits::COMPENSATION_RETRY_FIRST_MS),
        }
    }
}

/// Failed compensations, retried by the recovery thread.
#[derive(Default)]
pub struct Retries {
    queue: parking_lot::Mutex<VecDeque<PendingCompensation>>,
}

impl Retries {
    pub fn push(&self, pending: PendingCompensation) {
        let mut queue = self.queue.lock();
        if queue.len() >= limits::COMPENSATION_RETRIES_MAX {
            if let Some(dropped) = queue.pop_front() {
                error!(
                    "compensation retry queue full: frame {} proc {} is left to the stranded sweep",
                    dropped.frame_id, dropped.proc_id
                );
            }
        }
        queue.push_back(pending);
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take_due(&self) -> Vec<PendingCompensation> {
        let now = Instant::now();
        let mut queue = self.queue.lock();
        let (due, wait): (Vec<_>, Vec<_>) = queue.drain(..).partition(|p| p.next <= now);
        queue.extend(wait);
        due
    }
}

/// Compensates one booking; `Ok(true)` when it undid it, `Ok(false)` when it was no longer ours.
pub fn compensate(ctx: &Context, frame_id: &str, version: i32, proc_id: &str) -> Result<bool, DbError> {
    let result = ctx.with_booker(|booker| booker.compensate(frame_id, version, proc_id, ctx.settings.update_stat_on_book));
    if let Ok(true) = result {
        ctx.metrics.compensations_total.inc();
        ctx.frames_compensated.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// The recovery thread: compensation retries, and the stranded sweep.
pub fn run(ctx: &Context) {
    let sweep_on = !ctx.settings.dry_run;
    let mut next_sweep = limits::deadline_after(ctx.settings.recovery.first_sweep_delay);
    while !ctx.stopping() {
        std::thread::sleep(Duration::from_millis(limits::SHUTDOWN_POLL_MS));
        ctx.beat();
        ctx.test_panic_hook();
        retry_due(ctx);
        ctx.metrics.compensation_retries_pending.set(ctx.compensation_retries.len() as i64);
        if sweep_on && Instant::now() >= next_sweep {
            next_sweep = limits::deadline_after(ctx.settings.recovery.sweep_interval);
            match sweep(ctx) {
                Ok(0) => {}
                Ok(n) => info!("stranded sweep: compensated {n} bookings that were never launched"),
                Err(e) => {
                    ctx.count_error("recovery");
                    warn!("stranded sweep failed, will try again: {e}");
                }
            }
        }
    }
    // One last try for what is queued; anything left is found by the next sweep of any instance.
    let left: Vec<PendingCompensation> = ctx.compensation_retries.queue.lock().drain(..).collect();
    for pending in left {
        let _ = compensate(ctx, &pending.frame_id, pending.version, &pending.proc_id);
    }
}

fn retry_due(ctx: &Context) {
    for mut pending in ctx.compensation_retries.take_due() {
        match compensate(ctx, &pending.frame_id, pending.version, &pending.proc_id) {
            Ok(done) => {
                info!(
                    "compensation of frame {} proc {} {} after {} attempts",
                    pending.frame_id,
                    pending.proc_id,
                    if done { "succeeded" } else { "was not needed (the frame moved on)" },
                    pending.attempts + 1
                );
                if let Err(e) = ctx.rqd.kill(&pending.host_name, &pending.frame_id, COMPENSATION_KILL_MESSAGE) {
                    debug!("best-effort kill of frame {} on {} failed: {e}", pending.frame_id, escape(&pending.host_name));
                }
            }
            Err(e) => {
                pending.attempts += 1;
                let shift = pending.attempts.min(16);
                let pause = (limits::COMPENSATION_RETRY_FIRST_MS << shift).min(limits::COMPENSATION_RETRY_LAST_MS);
                pending.next = Instant::now() + Duration::from_millis(pause);
                debug!("compensation of frame {} failed again ({e}); next try in {pause} ms", pending.frame_id);
                ctx.compensation_retries.push(pending);
            }
        }
    }
}

/// Candidates: procs of the shows this scheduler books whose frame is RUNNING and whose ping
/// never moved past the booking, older than the grace.
fn candidates_sql(managed_mode: bool) -> String {
    let managed = if managed_mode { "(s.b_scheduler_managed OR p.pk_show = ANY($2::text[]))" } else { "p.pk_show = ANY($2::text[])" };
    format!(
        "SELECT p.pk_proc::text, p.pk_frame::text, f.int_version::bigint, h.str_name::text,
                extract(epoch FROM now() - p.ts_booked)::float8
         FROM proc p JOIN frame f ON f.pk_frame = p.pk_frame JOIN host h ON h.pk_host = p.pk_host
              JOIN show s ON s.pk_show = p.pk_show
         WHERE f.str_state = 'RUNNING' AND NOT p.b_local AND p.ts_ping <= p.ts_booked
           AND p.ts_booked < now() - make_interval(secs => $1::float8) AND {managed}
         ORDER BY p.ts_booked LIMIT {}",
        limits::STRANDED_SWEEP_ROWS_MAX
    )
}

/// One sweep; returns how many bookings it compensated.
pub fn sweep(ctx: &Context) -> Result<u64, DbError> {
    let started = Instant::now();
    let grace = ctx.settings.recovery.grace.as_secs_f64();
    let rows = {
        let mut client = db::get(&ctx.pool, "stranded sweep")?;
        let shows: Vec<String> = ctx.show_ids();
        client.query(&candidates_sql(ctx.managed_mode), &[&grace, &shows]).map_err(DbError::query("stranded sweep"))?
    };
    // host -> [(proc, frame, version, age)]
    let mut by_host: BTreeMap<String, Vec<(String, String, i32, f64)>> = BTreeMap::new();
    for row in &rows {
        let version: i64 = row.try_get(2).map_err(|e| DbError::BadRow { context: "stranded sweep", message: e.to_string() })?;
        let Ok(version) = i32::try_from(version) else { continue };
        by_host.entry(row.get(3)).or_default().push((row.get(0), row.get(1), version, row.get(4)));
    }
    let unreachable_grace = ctx.settings.recovery.unreachable_grace.as_secs_f64();
    let mut compensated = 0;
    for (host, bookings) in by_host {
        if ctx.stopping() {
            break;
        }
        let running: Option<HashSet<String>> = if ctx.settings.dry_run {
            None
        } else {
            match ctx.rqd.running_frames(&host) {
                Ok(frames) => Some(frames.into_iter().collect()),
                Err(e) => {
                    debug!("stranded sweep: cannot ask RQD on {} ({e}); relying on host reports", escape(&host));
                    None
                }
            }
        };
        for (proc_id, frame_id, version, age) in bookings {
            let stranded = match &running {
                Some(frames) => !frames.contains(&frame_id),
                None => age >= unreachable_grace,
            };
            if !stranded {
                continue;
            }
            match compensate(ctx, &frame_id, version, &proc_id) {
                Ok(true) => {
                    compensated += 1;
                    ctx.metrics.stranded_bookings_recovered_total.inc();
                    warn!(
                        "stranded sweep: frame {frame_id} proc {proc_id} on {} was booked {age:.0} s ago and never ran; compensated",
                        escape(&host)
                    );
                    if let Err(e) = ctx.rqd.kill(&host, &frame_id, COMPENSATION_KILL_MESSAGE) {
                        debug!("best-effort kill of frame {frame_id} on {} failed: {e}", escape(&host));
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    ctx.count_error("recovery");
                    warn!("stranded sweep: compensating frame {frame_id} failed ({e}); queued for retry");
                    ctx.compensation_retries.push(PendingCompensation::new(&frame_id, version, &proc_id, &host));
                }
            }
        }
    }
    ctx.metrics.stranded_sweep_duration_seconds.observe(started.elapsed().as_secs_f64());
    Ok(compensated)
}
