//! Policy `smart`: holding a host for a frame that waited too long (src/matching/policy.rs has
//! the rules). Reads the running frames of the candidate hosts and their layers' runtime
//! history from the database (reads only, outside any transaction), picks the host that frees
//! soonest and records the hold in memory.

use super::*;
use crate::matching::policy::{self, Candidate, Hold, Need, Running};
use std::collections::HashMap;
use std::time::Duration;

/// Running frames of hosts: host, layer, cores, memory, GPUs, GPU memory, seconds since booked.
const RUNNING_SQL: &str = "
    SELECT p.pk_host::text, COALESCE(p.pk_layer, '')::text, p.int_cores_reserved::bigint, p.int_mem_reserved::bigint,
           p.int_gpus_reserved::bigint, p.int_gpu_mem_reserved::bigint,
           GREATEST(extract(epoch FROM now() - p.ts_booked), 0)::float8
    FROM proc p WHERE p.pk_host = ANY($1::text[])";

/// Mean runtime of each layer's last `RUNTIME_HISTORY_FRAMES` finished frames (NULL without any).
const ESTIMATES_SQL: &str = "
    SELECT l.id, (SELECT avg(r.secs)::float8 FROM (
               SELECT extract(epoch FROM f.ts_stopped - f.ts_started) AS secs FROM frame f
               WHERE f.pk_layer = l.id AND f.str_state = 'SUCCEEDED'
                 AND f.ts_started IS NOT NULL AND f.ts_stopped IS NOT NULL
               ORDER BY f.ts_stopped DESC LIMIT 50) r)
    FROM unnest($1::text[]) AS l(id)";

/// The layer's frames need hosts they cannot get: each frame that waited past
/// `scheduler.reservation_after` (up to `RESERVATIONS_PER_LAYER_MAX`), less the hosts whose
/// idle room already fits one, gets a host held if some host's total fits it, the hosts that
/// free soonest first. The layer's holds drain their hosts side by side: one at a time, the
/// last frame of a layer of whole-host frames waited for every drain before it.
pub(super) fn consider(ctx: &Context, state: &LayerState, now: Instant) {
    let settings = &ctx.policy.settings;
    let after = settings.reservation_after.as_secs_f64();
    let aged: Vec<&Frame> = state.frames.iter().map(|(f, _)| f).filter(|f| f.age_secs >= after).take(crate::limits::RESERVATIONS_PER_LAYER_MAX).collect();
    if aged.is_empty() || settings.reservations_max == 0 {
        return;
    }
    let (job, layer) = (&state.work.job, &state.work.layer);
    let need = Need { cores: min_frame_units(state.work), mem: layer.mem_min, gpus: layer.gpus_min, gpu_mem: layer.gpu_mem_min };
    if !policy::worth_holding(&need) {
        return;
    }
    let holds = ctx.policy.holds();
    let hosts: Vec<Host> = ctx
        .cache
        .fitting_totals(&state.keys, layer, job.os.as_deref(), crate::limits::RESERVATION_CANDIDATES_MAX)
        .into_iter()
        .filter(|h| !holds.contains_key(&h.id))
        .collect();
    let fits_idle = |h: &Host| h.cores_idle >= need.cores && h.mem_idle >= need.mem && h.gpus_idle >= need.gpus && h.gpu_mem_idle >= need.gpu_mem;
    // Hosts whose idle room already fits a frame take one in the next pass; the rest may drain.
    let (ready, draining): (Vec<Host>, Vec<Host>) = hosts.into_iter().partition(|h| fits_idle(h));
    let wanted = aged.len().saturating_sub(ready.len());
    // A NaN or infinite age (hostile rows) cannot panic here: try_from refuses NaN, clamp bounds the rest.
    let waiting_since = |f: &Frame| Duration::try_from_secs_f64(f.age_secs.clamp(0.0, 1e7)).ok().and_then(|age| now.checked_sub(age)).unwrap_or(now);
    if wanted == 0 || !ctx.policy.may_try_hold(&layer.id, wanted, aged.iter().map(|f| waiting_since(f)).min().unwrap_or(now), now) {
        return;
    }
    if draining.is_empty() {
        return;
    }
    let candidates = match read_candidates(ctx, &draining, now) {
        Ok(c) => c,
        Err(e) => {
            ctx.count_error("policy");
            warn!("cannot weigh hosts to hold for layer {} of job {}: {e}", layer.name, job.name);
            return;
        }
    };
    let own = ctx.policy.holds_of(&layer.id).len();
    let default_secs = settings.runtime_estimate_default.as_secs_f64();
    let chosen = policy::choose_hosts(&candidates, &need, default_secs, wanted.saturating_sub(own));
    // The frames without a hold yet: the first `own` aged frames are taken to be the held ones.
    for ((index, room), frame) in chosen.into_iter().zip(aged.into_iter().skip(own)) {
        let host = &draining[index];
        let hold = Hold {
            host_id: Arc::clone(&host.id),
            host_name: host.name.clone(),
            layer_id: layer.id.clone(),
            layer_name: layer.name.clone(),
            job_id: job.id.clone(),
            job_name: job.name.clone(),
            frame_name: frame.name.clone(),
            need,
            waiting_since: waiting_since(frame),
            made_at: now,
            due: due_after(now, room.0),
            backfill_until: policy::backfill_until(now, room),
            seen: now,
            checked: now,
        };
        let (made, displaced) = ctx.policy.hold(hold);
        if !made {
            break;
        }
        ctx.metrics.reservations_total.with_label_values(&["made"]).inc();
        if let Some(gone) = displaced {
            ctx.metrics.reservations_total.with_label_values(&["displaced"]).inc();
            info!("host {} no longer held for frame {} of job {}: frames that waited longer come first", gone.host_name, gone.frame_name, gone.job_name);
        }
        info!(
            "holding host {} for frame {} of job {} layer {} ({} cores, waited {:.0} s); expected free in {:.0} s",
            host.name,
            frame.name,
            job.name,
            layer.name,
            need.cores / CORE_UNITS_PER_CORE,
            frame.age_secs,
            room.0
        );
    }
    ctx.metrics.reservations_held.set(ctx.policy.holds().len() as i64);
}

fn due_after(now: Instant, secs: f64) -> Instant {
    now.checked_add(Duration::from_secs_f64(secs.clamp(0.0, 1e7))).unwrap_or(now)
}

/// Re-estimates when the layer's held hosts have room, at most once per
/// `RESERVATION_RETRY_MS` each: runtime history grows while a hold waits (a first estimate made
/// without history assumed `runtime_estimate_default`), and backfill is judged against the
/// newest estimate. A host that can no longer take the frame (gone from the cache, shrunk)
/// loses its hold.
pub(super) fn refresh(ctx: &Context, layer_id: &str, now: Instant) {
    let retry = Duration::from_millis(crate::limits::RESERVATION_RETRY_MS);
    let due: Vec<Hold> = ctx.policy.holds_of(layer_id).into_iter().filter(|h| now.duration_since(h.checked) >= retry).collect();
    if due.is_empty() {
        return;
    }
    let mut hosts = Vec::with_capacity(due.len());
    let mut kept = Vec::with_capacity(due.len());
    for hold in due {
        match ctx.cache.host(&hold.host_id) {
            Some(host) => {
                hosts.push(host);
                kept.push(hold);
            }
            None => {
                ctx.policy.release(&hold.host_id);
                ctx.metrics.reservations_total.with_label_values(&["expired"]).inc();
            }
        }
    }
    if hosts.is_empty() {
        ctx.metrics.reservations_held.set(ctx.policy.holds().len() as i64);
        return;
    }
    let candidates = match read_candidates(ctx, &hosts, now) {
        Ok(candidates) => candidates,
        Err(e) => {
            ctx.count_error("policy");
            debug!("cannot re-estimate the holds of layer {layer_id}: {e}");
            return;
        }
    };
    let default_secs = ctx.policy.settings.runtime_estimate_default.as_secs_f64();
    for (hold, candidate) in kept.iter().zip(&candidates) {
        match policy::estimate_room(candidate, &hold.need, default_secs) {
            Some(room) => ctx.policy.set_due(&hold.host_id, due_after(now, room.0), policy::backfill_until(now, room), now),
            None => {
                ctx.policy.release(&hold.host_id);
                ctx.metrics.reservations_total.with_label_values(&["expired"]).inc();
            }
        }
    }
    ctx.metrics.reservations_held.set(ctx.policy.holds().len() as i64);
}

/// The hosts' running frames, with their layers' runtime estimates.
fn read_candidates(ctx: &Context, hosts: &[Host], now: Instant) -> Result<Vec<Candidate>, db::DbError> {
    let ids: Vec<String> = hosts.iter().map(|h| h.id.to_string()).collect();
    let mut client = db::get(&ctx.pool, "read running frames")?;
    let rows = client.query(RUNNING_SQL, &[&ids]).map_err(db::DbError::query("read running frames"))?;
    let mut running: HashMap<String, Vec<(String, Need, f64)>> = HashMap::new();
    for row in &rows {
        const CTX: &str = "read running frames";
        let host: String = queries::col(row, 0, CTX)?;
        let layer: String = queries::col(row, 1, CTX)?;
        let held = Need {
            cores: queries::col(row, 2, CTX)?,
            mem: queries::col(row, 3, CTX)?,
            gpus: queries::col(row, 4, CTX)?,
            gpu_mem: queries::col(row, 5, CTX)?,
        };
        let elapsed: f64 = queries::col(row, 6, CTX)?;
        running.entry(host).or_default().push((layer, held, elapsed));
    }
    let mut layers: Vec<String> = running.values().flatten().map(|(l, _, _)| l.clone()).filter(|l| !l.is_empty()).collect();
    layers.sort();
    layers.dedup();
    let estimates = estimates(ctx, &mut client, &layers, now)?;
    Ok(hosts
        .iter()
        .map(|h| Candidate {
            total: Need { cores: h.cores_total, mem: h.mem_total, gpus: h.gpus_total, gpu_mem: h.gpu_mem_total },
            idle: Need { cores: h.cores_idle, mem: h.mem_idle, gpus: h.gpus_idle, gpu_mem: h.gpu_mem_idle },
            running: running
                .get(h.id.as_ref())
                .map(|frames| {
                    frames
                        .iter()
                        .map(|(layer, held, elapsed)| Running { held: *held, elapsed_secs: *elapsed, estimate_secs: estimates.get(layer).copied().flatten() })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// Runtime estimates of layers: cached ones, the rest read (and cached).
pub(super) fn estimates(ctx: &Context, client: &mut postgres::Client, layers: &[String], now: Instant) -> Result<HashMap<String, Option<f64>>, db::DbError> {
    let max_age = Duration::from_millis(crate::limits::RUNTIME_ESTIMATE_MAX_AGE_MS);
    let (mut known, stale) = ctx.policy.estimates(layers, now, max_age);
    if stale.is_empty() {
        return Ok(known);
    }
    let rows = client.query(ESTIMATES_SQL, &[&stale]).map_err(db::DbError::query("read runtime history"))?;
    let mut read = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = queries::col(row, 0, "read runtime history")?;
        let secs: Option<f64> = queries::col(row, 1, "read runtime history")?;
        read.push((id, secs.filter(|s| s.is_finite() && *s >= 0.0)));
    }
    ctx.policy.store_estimates(&read, now);
    known.extend(read);
    Ok(known)
}

/// Before a pass plans while hosts are held: the runtime estimates of its layers, so their
/// checkouts can tell whether they may backfill a held host.
pub(super) fn load_pass_estimates(ctx: &Context, pass: &Pass) {
    let now = Instant::now();
    let mut layers: Vec<String> = pass.work.iter().map(|w| w.layer.id.clone()).collect();
    layers.sort();
    layers.dedup();
    let max_age = Duration::from_millis(crate::limits::RUNTIME_ESTIMATE_MAX_AGE_MS);
    if ctx.policy.estimates(&layers, now, max_age).1.is_empty() {
        return;
    }
    let result = db::get(&ctx.pool, "read runtime history").and_then(|mut client| estimates(ctx, &mut client, &layers, now));
    if let Err(e) = result {
        ctx.count_error("policy");
        debug!("cannot read runtime history for cluster {}: {e}", pass.cluster);
    }
}
