//! The read queries: cluster discovery, one pending-work query per cluster pass, and host
//! groups for the cache. Each is a single statement; none takes row locks.
//!
//! Every numeric column is cast to bigint in SQL so one Rust type reads Cuebot's mix of int4
//! and int8 columns, and every column is read with `try_get`, so a surprising row is an
//! operating error (`DbError::BadRow`), never a panic.

use crate::db::DbError;
use crate::model::{Cluster, ClusterKind, Frame, Host, Job, Layer, LayerWork, ThreadMode};
use postgres::types::FromSql;
use postgres::{Client, Row, Statement};
use std::sync::Arc;

pub fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize, context: &'static str) -> Result<T, DbError> {
    row.try_get(index).map_err(|e| DbError::BadRow { context, message: format!("column {index}: {e}") })
}

/// SQL condition: the layer whose id is `layer` has room under at least one of its limits, or
/// has none (Cuebot parity: any limit with room lets the frame start).
pub fn layer_limit_ok(layer: &str) -> String {
    format!(
        "(NOT EXISTS (SELECT 1 FROM layer_limit ll WHERE ll.pk_layer = {layer}) \
         OR EXISTS (SELECT 1 FROM layer_limit ll JOIN limit_record lr ON lr.pk_limit_record = ll.pk_limit_record \
                    WHERE ll.pk_layer = {layer} AND lr.int_max_value IS NOT NULL \
                      AND (SELECT COALESCE(SUM(ls2.int_running_count), 0) FROM layer_limit ll2 \
                           JOIN layer_stat ls2 ON ls2.pk_layer = ll2.pk_layer \
                           WHERE ll2.pk_limit_record = lr.pk_limit_record) < lr.int_max_value))"
    )
}

/// A layer whose requirements are negative would create capacity out of nothing when booked
/// (Cuebot's own writes would add the negative amounts to the host's idle columns): it is never
/// booked, and `explain` names it (`invalid_requirements`). Checked before any arithmetic.
pub const SANE_LAYER: &str = "(l.int_mem_min >= 0 AND l.int_gpus_min >= 0 AND l.int_gpu_mem_min >= 0 AND l.int_gpus_max >= 0)";

/// `AND s.b_scheduler_managed` where the schema has the column (managed-show mode).
fn managed_clause(managed_mode: bool, alias: &str) -> String {
    if managed_mode {
        format!(" AND {alias}.b_scheduler_managed")
    } else {
        String::new()
    }
}

/// The pending-work query of one cluster pass: the cluster's top jobs (Cuebot's eligibility,
/// priority then FIFO), each with its dispatchable layers and a bounded batch of WAITING frames.
/// With `$10` (policy `smart`: `scheduler.aging_after` in seconds) a starving job — nothing
/// running, started longer ago than that — goes before the rest, oldest first: otherwise a job
/// of low priority behind `$5` others of its show is never read, so no rule in the pass could age it.
/// With `$11` (policy `smart`: `scheduler.reservation_after` in seconds) a job started longer
/// ago than that with frames waiting in a layer worth a host hold (more than one core, or a
/// GPU) counts as starving too: only a pass that reads such a frame can hold a host for it.
pub fn pass_sql(managed_mode: bool) -> String {
    let managed = managed_clause(managed_mode, "s");
    let limit_ok = layer_limit_ok("l.pk_layer");
    let sane = SANE_LAYER;
    let rotate = crate::limits::JOB_SLOT_ROTATE_S;
    // `policy::worth_holding`'s rule (more than one core, or a GPU), in SQL.
    let core = crate::model::CORE_UNITS_PER_CORE;
    format!(
        "WITH pending AS (
           SELECT j.pk_job, j.str_name, j.str_show, j.str_shot, j.str_user, j.str_log_dir,
                  j.int_uid::bigint AS uid, j.str_os, COALESCE(j.str_loki_url, '') AS loki,
                  j.pk_folder, j.pk_dept, fo.pk_dept AS folder_dept, fo.pk_show AS folder_show,
                  jr.int_priority::bigint AS priority,
                  jr.int_cores::bigint AS cores, jr.int_max_cores::bigint AS max_cores,
                  jr.int_gpus::bigint AS gpus, jr.int_max_gpus::bigint AS max_gpus, j.ts_started,
                  slot.n AS job_slot, slot.n <> $9::bigint AS other_slot,
                  CASE WHEN slot.n <> $9::bigint THEN -extract(epoch FROM j.ts_started) ELSE extract(epoch FROM j.ts_started) END AS queue_order,
                  age.starving,
                  js.int_running_count > 0 AS running,
                  row_number() OVER (PARTITION BY age.starving ORDER BY js.int_running_count > 0, j.ts_started, j.pk_job) AS starve_rank
           FROM job j
           JOIN job_stat js ON js.pk_job = j.pk_job
           JOIN job_resource jr ON jr.pk_job = j.pk_job
           JOIN folder fo ON fo.pk_folder = j.pk_folder
           JOIN folder_resource fr ON fr.pk_folder = j.pk_folder
           -- Instances sharing a farm ($8 of them, this one rank $9) prefer different jobs
           -- within a priority: a job's slot, rotating on the database clock.
           CROSS JOIN LATERAL (SELECT mod(hashtext(j.pk_job::text)::bigint + 2147483648
                                          + extract(epoch FROM now())::bigint / {rotate}, $8::bigint) AS n) slot
           CROSS JOIN LATERAL (SELECT COALESCE((js.int_running_count = 0
                                                AND j.ts_started < now() - make_interval(secs => $10::float8))
                                               OR (j.ts_started < now() - make_interval(secs => $11::float8)
                                                   AND EXISTS (SELECT 1 FROM layer hl JOIN layer_stat hs ON hs.pk_layer = hl.pk_layer
                                                               WHERE hl.pk_job = j.pk_job AND hs.int_waiting_count > 0
                                                                 AND ((hl.b_threadable AND hl.int_cores_min > {core}) OR hl.int_gpus_min > 0))),
                                               false) AS starving) age
           WHERE j.pk_show = $1 AND j.pk_facility = $2 AND j.str_state = 'PENDING'
             AND NOT j.b_paused AND j.b_auto_book AND js.int_waiting_count > 0
             AND (fr.int_max_cores < 0 OR fr.int_cores < fr.int_max_cores)
             AND (fr.int_max_gpus < 0 OR fr.int_gpus < fr.int_max_gpus)
             AND EXISTS (SELECT 1 FROM show s WHERE s.pk_show = $1 AND s.b_active{managed})
             AND EXISTS (SELECT 1 FROM subscription sub WHERE sub.pk_show = $1
                           AND ($4::text IS NULL OR sub.pk_alloc = $4)
                           AND sub.int_burst > 0 AND sub.int_burst - sub.int_cores >= 100)
           ),
         candidates AS (
           -- Cheap filters and the order first; OFFSET 0 keeps the costly tests below out of
           -- this scan, so they run on candidates in order until $5 jobs qualify. Starving
           -- jobs, oldest first, take at most half of the $5 slots, so new and higher-priority
           -- work is still read while many jobs starve.
           SELECT * FROM (SELECT p.*, p.starving AND p.starve_rank <= ($5::bigint + 1) / 2 AS aged_slot FROM pending p) r
           -- Own slot oldest first; other slots' jobs after them, newest first: a helper
           -- takes from the far end of another instance's queue (work stealing), so the two
           -- meet only when that queue is nearly empty.
           ORDER BY r.aged_slot DESC, CASE WHEN r.aged_slot THEN r.running END, CASE WHEN r.aged_slot THEN r.ts_started END, r.priority DESC, r.other_slot, r.queue_order, r.pk_job
           OFFSET 0),
         jobs AS (
           SELECT c.*,
                  ARRAY(SELECT e.str_key::text FROM job_env e WHERE e.pk_job = c.pk_job AND e.str_key IS NOT NULL ORDER BY e.pk_job_env) AS env_keys,
                  ARRAY(SELECT COALESCE(e.str_value, '')::text FROM job_env e WHERE e.pk_job = c.pk_job AND e.str_key IS NOT NULL ORDER BY e.pk_job_env) AS env_values
           FROM candidates c
           WHERE EXISTS (SELECT 1 FROM point p WHERE p.pk_dept = c.folder_dept AND p.pk_show = c.folder_show)
             AND EXISTS (SELECT 1 FROM layer l JOIN layer_stat ls ON ls.pk_layer = l.pk_layer
                         WHERE l.pk_job = c.pk_job AND ls.int_waiting_count > 0
                           AND string_to_array(replace(l.str_tags, ' ', ''), '|') && $3::text[]
                           AND (l.ts_start_after IS NULL OR l.ts_start_after <= now())
                           AND {sane}
                           AND c.cores + l.int_cores_min < c.max_cores
                           AND c.gpus + l.int_gpus_min < c.max_gpus)
           LIMIT $5)
         SELECT jobs.pk_job, jobs.str_name, jobs.str_show, jobs.str_shot, jobs.str_user, jobs.str_log_dir,
                jobs.uid, jobs.str_os, jobs.loki, jobs.pk_folder, jobs.pk_dept, jobs.priority,
                jobs.cores, jobs.max_cores, jobs.gpus, jobs.max_gpus, jobs.env_keys, jobs.env_values,
                l.pk_layer, l.str_name, l.str_cmd, l.str_range, l.int_chunk_size::bigint,
                l.int_dispatch_order::bigint, l.str_tags, l.int_cores_min::bigint, l.int_cores_max::bigint,
                l.b_threadable, l.int_mem_min::bigint, l.int_gpus_min::bigint, l.int_gpu_mem_min::bigint,
                l.str_services,
                EXISTS (SELECT 1 FROM layer_limit ll WHERE ll.pk_layer = l.pk_layer) AS has_limits,
                ARRAY(SELECT e.str_key::text FROM layer_env e WHERE e.pk_layer = l.pk_layer AND e.str_key IS NOT NULL ORDER BY e.pk_layer_env),
                ARRAY(SELECT COALESCE(e.str_value, '')::text FROM layer_env e WHERE e.pk_layer = l.pk_layer AND e.str_key IS NOT NULL ORDER BY e.pk_layer_env),
                fr.ids, fr.names, fr.versions, fr.orders, fr.ages,
                (SELECT (s.int_burst - s.int_cores)::bigint FROM subscription s
                 WHERE s.pk_show = $1 AND s.pk_alloc = $4) AS alloc_headroom,
                jobs.job_slot
         FROM jobs
         JOIN layer l ON l.pk_job = jobs.pk_job
         JOIN layer_stat ls ON ls.pk_layer = l.pk_layer
         CROSS JOIN LATERAL (
           SELECT array_agg(w.pk_frame::text ORDER BY w.o1, w.o2, w.pk_frame) AS ids,
                  array_agg(w.str_name::text ORDER BY w.o1, w.o2, w.pk_frame) AS names,
                  array_agg(w.v ORDER BY w.o1, w.o2, w.pk_frame) AS versions,
                  array_agg(w.o1 ORDER BY w.o1, w.o2, w.pk_frame) AS orders,
                  array_agg(w.age ORDER BY w.o1, w.o2, w.pk_frame) AS ages
           FROM (SELECT f.pk_frame, f.str_name, COALESCE(f.int_version, 0)::bigint AS v,
                        f.int_dispatch_order::bigint AS o1, f.int_layer_order::bigint AS o2,
                        GREATEST(extract(epoch FROM now() - COALESCE(f.ts_updated, now())), 0)::float8 AS age
                 FROM frame f
                 WHERE f.pk_layer = l.pk_layer AND f.str_state = 'WAITING'
                   -- Frames this process found unlaunchable (bad name or range) are skipped,
                   -- so they cannot fill every batch and starve the good frames behind them.
                   AND f.pk_frame <> ALL($7::text[])
                 ORDER BY f.int_dispatch_order, f.int_layer_order, f.pk_frame
                 LIMIT $6) w) fr
         WHERE ls.int_waiting_count > 0 AND {sane}
           AND string_to_array(replace(l.str_tags, ' ', ''), '|') && $3::text[]
           AND (l.ts_start_after IS NULL OR l.ts_start_after <= now())
           AND jobs.cores + l.int_cores_min < jobs.max_cores
           AND jobs.gpus + l.int_gpus_min < jobs.max_gpus
           AND {limit_ok}
           AND fr.ids IS NOT NULL
         ORDER BY jobs.starving DESC, CASE WHEN jobs.starving THEN jobs.ts_started END, jobs.priority DESC, jobs.other_slot,
                  jobs.queue_order, jobs.pk_job, l.int_dispatch_order, l.pk_layer"
    )
}

fn env_pairs(keys: Vec<String>, values: Vec<String>) -> Vec<(String, String)> {
    keys.into_iter().zip(values).collect()
}

/// What one pass query returned.
pub struct PassWork {
    /// Per layer, jobs shared between their layers, in priority order.
    pub work: Vec<LayerWork>,
    /// For an allocation cluster: the show's subscription burst minus booked cores, in core
    /// units, when the query ran.
    pub alloc_headroom: Option<i64>,
}

/// How much one pass reads, and in what order.
pub struct PassBounds {
    pub jobs_max: i64,
    pub frames_per_layer: i64,
    /// (instances sharing the farm, this one's rank): each prefers its own slot's jobs.
    pub share: (i64, i64),
    /// Policy `smart`: starving jobs first after this many seconds (`None`: Cuebot's order).
    pub aging_secs: Option<f64>,
    /// Policy `smart`: jobs with frames that may need a host hold first after this many
    /// seconds (`None`: not).
    pub hold_after_secs: Option<f64>,
}

/// Runs the pass query and groups its rows into per-layer work, jobs shared between layers.
pub fn fetch_pass(client: &mut Client, statement: &Statement, cluster: &Cluster, bounds: &PassBounds, skip_frames: &[String]) -> Result<PassWork, DbError> {
    const CTX: &str = "read pending work";
    let (jobs_max, frames_per_layer) = (bounds.jobs_max, bounds.frames_per_layer);
    let servers = bounds.share.0.max(1);
    let rank = bounds.share.1.clamp(0, servers - 1);
    let (aging_secs, hold_after_secs) = (bounds.aging_secs, bounds.hold_after_secs);
    let rows = client
        .query(
            statement,
            &[&cluster.show_id, &cluster.facility_id, &cluster.tags, &cluster.alloc_id, &jobs_max, &frames_per_layer, &skip_frames, &servers, &rank, &aging_secs, &hold_after_secs],
        )
        .map_err(DbError::query(CTX))?;
    let mut work: Vec<LayerWork> = Vec::with_capacity(rows.len());
    let mut alloc_headroom = None;
    for row in &rows {
        alloc_headroom = col(row, 40, CTX)?;
        let job_id: String = col(row, 0, CTX)?;
        let job = match work.last() {
            Some(previous) if previous.job.id == job_id => Arc::clone(&previous.job),
            _ => Arc::new(read_job(row, job_id, &cluster.show_id)?),
        };
        let layer = Arc::new(read_layer(row)?);
        let frames = read_frames(row)?;
        work.push(LayerWork { job, layer, frames });
    }
    Ok(PassWork { work, alloc_headroom })
}

fn read_job(row: &Row, id: String, show_id: &str) -> Result<Job, DbError> {
    const CTX: &str = "read job";
    Ok(Job {
        id,
        name: col(row, 1, CTX)?,
        show: col(row, 2, CTX)?,
        shot: col(row, 3, CTX)?,
        user: col(row, 4, CTX)?,
        log_dir: col(row, 5, CTX)?,
        uid: col(row, 6, CTX)?,
        os: col::<Option<String>>(row, 7, CTX)?.filter(|os| !os.is_empty()),
        loki_url: col(row, 8, CTX)?,
        folder_id: col(row, 9, CTX)?,
        dept_id: col(row, 10, CTX)?,
        priority: col::<i64>(row, 11, CTX)? as i32,
        cores_in_use: col(row, 12, CTX)?,
        max_cores: col(row, 13, CTX)?,
        gpus_in_use: col(row, 14, CTX)?,
        max_gpus: col(row, 15, CTX)?,
        env: env_pairs(col(row, 16, CTX)?, col(row, 17, CTX)?),
        slot: col(row, 41, CTX)?,
        show_id: show_id.to_string(),
    })
}

fn read_layer(row: &Row) -> Result<Layer, DbError> {
    const CTX: &str = "read layer";
    let tags: String = col(row, 24, CTX)?;
    let services: String = col(row, 31, CTX)?;
    Ok(Layer {
        id: col(row, 18, CTX)?,
        name: col(row, 19, CTX)?,
        command: col(row, 20, CTX)?,
        range: col(row, 21, CTX)?,
        chunk_size: col(row, 22, CTX)?,
        dispatch_order: col(row, 23, CTX)?,
        tags: crate::model::split_layer_tags(&tags),
        cores_min: col(row, 25, CTX)?,
        cores_max: col(row, 26, CTX)?,
        threadable: col(row, 27, CTX)?,
        mem_min: col(row, 28, CTX)?,
        gpus_min: col(row, 29, CTX)?,
        gpu_mem_min: col(row, 30, CTX)?,
        // Split on commas, not trimmed (§3.6).
        services: services.split(',').map(str::to_string).collect(),
        has_limits: col(row, 32, CTX)?,
        env: env_pairs(col(row, 33, CTX)?, col(row, 34, CTX)?),
    })
}

fn read_frames(row: &Row) -> Result<Vec<Frame>, DbError> {
    const CTX: &str = "read frames";
    let ids: Vec<String> = col(row, 35, CTX)?;
    let names: Vec<String> = col(row, 36, CTX)?;
    let versions: Vec<i64> = col(row, 37, CTX)?;
    let orders: Vec<i64> = col(row, 38, CTX)?;
    let ages: Vec<f64> = col(row, 39, CTX)?;
    let n = ids.len();
    if names.len() != n || versions.len() != n || orders.len() != n || ages.len() != n {
        return Err(DbError::BadRow { context: CTX, message: "frame arrays of different lengths".into() });
    }
    Ok(ids
        .into_iter()
        .zip(names)
        .zip(versions)
        .zip(orders)
        .zip(ages)
        .map(|((((id, name), version), dispatch_order), age_secs)| Frame {
            id,
            name,
            version: version as i32,
            dispatch_order,
            age_secs,
        })
        .collect())
}

/// One host row of a cache group, with its ping time on the database clock.
#[derive(Clone, Debug)]
pub struct HostRow {
    pub host: Host,
    /// `host_stat.ts_ping` as epoch seconds.
    pub ping_epoch: f64,
    /// now() − ts_ping, seconds.
    pub ping_age_secs: f64,
}

pub const GROUP_HOSTS_SQL: &str = "
    SELECT h.pk_host, h.str_name, h.pk_alloc, hs.str_os, h.int_thread_mode::bigint,
           h.int_cores::bigint, h.int_cores_idle::bigint, h.int_mem::bigint,
           LEAST(h.int_mem_idle, hs.int_mem_free)::bigint,
           h.int_gpus::bigint, h.int_gpus_idle::bigint, h.int_gpu_mem::bigint,
           LEAST(h.int_gpu_mem_idle, hs.int_gpu_mem_free)::bigint,
           extract(epoch FROM hs.ts_ping)::float8, extract(epoch FROM now() - hs.ts_ping)::float8
    FROM host h
    JOIN host_stat hs ON hs.pk_host = h.pk_host
    JOIN alloc a ON a.pk_alloc = h.pk_alloc
    WHERE a.pk_facility = $1
      AND EXISTS (SELECT 1 FROM subscription s WHERE s.pk_show = $2 AND s.pk_alloc = h.pk_alloc)
      AND EXISTS (SELECT 1 FROM host_tag t WHERE t.pk_host = h.pk_host AND t.str_tag = $3)
      AND h.str_lock_state = 'OPEN' AND hs.str_state = 'UP'";

pub fn read_host_row(row: &Row) -> Result<HostRow, DbError> {
    const CTX: &str = "read host";
    let id: String = col(row, 0, CTX)?;
    Ok(HostRow {
        host: Host {
            id: Arc::from(id.as_str()),
            name: col(row, 1, CTX)?,
            alloc_id: col(row, 2, CTX)?,
            os: col(row, 3, CTX)?,
            thread_mode: ThreadMode::from_db(col::<i64>(row, 4, CTX)? as i32),
            cores_total: col(row, 5, CTX)?,
            cores_idle: col(row, 6, CTX)?,
            mem_total: col(row, 7, CTX)?,
            mem_idle: col(row, 8, CTX)?,
            gpus_total: col(row, 9, CTX)?,
            gpus_idle: col(row, 10, CTX)?,
            gpu_mem_total: col(row, 11, CTX)?,
            gpu_mem_idle: col(row, 12, CTX)?,
        },
        ping_epoch: col(row, 13, CTX)?,
        ping_age_secs: col(row, 14, CTX)?,
    })
}

/// A (tag, show, facility) row that may form a cluster.
#[derive(Clone, Debug)]
pub struct ClusterRow {
    pub facility_id: String,
    pub facility_name: String,
    pub show_id: String,
    pub show_name: String,
    pub kind: ClusterKind,
    pub tag: String,
    pub alloc_id: Option<String>,
}

/// Every cluster candidate of active (and, in managed mode, managed) shows, optionally in one
/// facility: allocation rows first, then manual, hostname and hardware tag rows.
pub fn discover_cluster_rows(
    client: &mut Client,
    managed_mode: bool,
    facility_id: Option<&str>,
) -> Result<Vec<ClusterRow>, DbError> {
    const CTX: &str = "discover clusters";
    let managed = managed_clause(managed_mode, "s");
    let alloc_sql = format!(
        "SELECT DISTINCT a.pk_facility, f.str_name, s.pk_show, s.str_name, 'ALLOC'::text, a.str_tag, a.pk_alloc
         FROM alloc a
         JOIN facility f ON f.pk_facility = a.pk_facility
         JOIN subscription sub ON sub.pk_alloc = a.pk_alloc
         JOIN show s ON s.pk_show = sub.pk_show
         WHERE s.b_active{managed} AND a.str_tag IS NOT NULL
           AND ($1::text IS NULL OR a.pk_facility = $1)
           AND EXISTS (SELECT 1 FROM host_tag t WHERE t.str_tag_type = 'ALLOC' AND t.str_tag = a.str_tag)
         ORDER BY 1, 3, 6"
    );
    let tag_sql = format!(
        "SELECT DISTINCT a.pk_facility, f.str_name, s.pk_show, s.str_name, t.str_tag_type::text, t.str_tag, NULL::text
         FROM host_tag t
         JOIN host h ON h.pk_host = t.pk_host
         JOIN alloc a ON a.pk_alloc = h.pk_alloc
         JOIN facility f ON f.pk_facility = a.pk_facility
         JOIN subscription sub ON sub.pk_alloc = a.pk_alloc
         JOIN show s ON s.pk_show = sub.pk_show
         WHERE t.str_tag_type IN ('MANUAL', 'HOSTNAME', 'HARDWARE') AND s.b_active{managed}
           AND ($1::text IS NULL OR a.pk_facility = $1)
         ORDER BY 1, 3, 5, 6"
    );
    let mut out = Vec::new();
    for sql in [alloc_sql, tag_sql] {
        for row in client.query(sql.as_str(), &[&facility_id]).map_err(DbError::query(CTX))? {
            let tag_type: String = col(&row, 4, CTX)?;
            let Some(kind) = ClusterKind::from_tag_type(&tag_type) else { continue };
            out.push(ClusterRow {
                facility_id: col(&row, 0, CTX)?,
                facility_name: col(&row, 1, CTX)?,
                show_id: col(&row, 2, CTX)?,
                show_name: col(&row, 3, CTX)?,
                kind,
                tag: col(&row, 5, CTX)?,
                alloc_id: col(&row, 6, CTX)?,
            });
        }
    }
    Ok(out)
}
