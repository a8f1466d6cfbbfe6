//! The booking transaction (Cuebot's `startFrameAndProc`, guarded) and its compensation.
//!
//! One statement builder serves a single host batch (the per-layer host loop) and a whole pass
//! (every job and host the pass planned): both run the same READ COMMITTED transaction.
//!
//! 1. *Limits* (only when a frame's layer has limits): `limit_record ... FOR UPDATE`, in key
//!    order, in a statement of its own. Every booker of ours takes these locks first, so the
//!    next statement's snapshot sees every start they committed and a limit is never exceeded
//!    by our bookers, however many. Cuebot takes no such lock when it books its own (unmanaged)
//!    layers: against Cuebot the limit is as approximate as Cuebot alone makes it (cuebot-
//!    database.md §9.9), never worse.
//! 2. *Start*: one statement locks, in order, the frames (`SKIP LOCKED`: a frame another
//!    booker holds is taken), `layer_stat`, `job_stat` and the job rows `FOR SHARE` (a job move
//!    or pause waits for us, and we for it); then starts the frames that are still WAITING at
//!    the version read, whose layer is not delayed and has limit room, whose job is PENDING and
//!    not paused (checked on the locked rows) and whose show is active (and managed); and
//!    inserts their procs. The show row is read in the statement's snapshot, not locked: every
//!    booking share-locking the one row all of a show's bookings touch made PostgreSQL write a
//!    new multixact per booking and queue them on the row (the saturation benchmark's wall time
//!    doubled). A flip or deactivation that commits while a booking is in flight lets that
//!    booking through, which stays exact: it wrote Cuebot's own increments, which Cuebot's
//!    release of an unmanaged show takes back. A limited layer's frames go one per statement so
//!    each sees the count the previous one left.
//! 3. *Charge*: one statement locks, in order, `host_stat` (`FOR SHARE`, host UP), `host`,
//!    `subscription`, `layer_resource`, `job_resource`, `folder_resource`, `point`, each table by
//!    key and each step after the previous one (chained CTEs), and writes Cuebot's host decrement
//!    and five increments with every guard in the UPDATE itself, where PostgreSQL re-checks it
//!    on the newest row after a lock wait: host OPEN with `>=` idle on every column and no
//!    negative reservation; subscription burst; job max cores and GPUs; folder caps. The folder
//!    and department are read from the (locked) job rows, not from the pass, as Cuebot's
//!    `procCreated` does. A cap row (subscription, job, folder) is locked only where the
//!    statement's snapshot already shows room for the charge, and each step locks only once the
//!    caps before it held: a charge that cannot fit is refused without queueing behind the
//!    bookings that hold those rows (at a cap, most charges are refusals). The room test reads a
//!    snapshot CTE, which PostgreSQL does not re-check after a lock wait; the guard in the
//!    UPDATE is re-checked on the newest row. The headroom reported on a refusal comes from the
//!    locked row where one was locked (after any wait), else from the snapshot that refused it.
//! 4. Commit.
//!
//! Lock order, written once here and shared with Cuebot: limit_record, frame, layer_stat,
//! job_stat, job, proc, host_stat, host, subscription, layer_resource, job_resource,
//! folder_resource, point. No network I/O between BEGIN and COMMIT. Any shortfall rolls the
//! whole transaction back; deadlocks and serialization failures are retried a bounded number of
//! times (`limits::BOOKING_ATTEMPTS_MAX`).

use crate::db::{self, DbError, DbSettings};
use crate::matching::host_cache::IdleValues;
use crate::limits;
use crate::db::queries::{col, layer_limit_ok};
use postgres::{Client, IsolationLevel, Statement, Transaction};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Exit statuses that do not consume a retry (Cuebot's list).
const RETRY_EXEMPT_STATUSES: &str = "'{-1,256,286,299,301,302,399}'::bigint[]";

const LOCK_LIMITS_SQL: &str = "
    SELECT lr.pk_limit_record::text FROM limit_record lr
    WHERE lr.pk_limit_record IN (SELECT ll.pk_limit_record FROM layer_limit ll WHERE ll.pk_layer = ANY($1::text[]))
    ORDER BY lr.pk_limit_record FOR UPDATE OF lr";

/// The frame start for any set of frames (see the module comment, step 2).
fn start_sql(managed_mode: bool) -> String {
    let limit_ok = layer_limit_ok("l.pk_layer");
    let managed = if managed_mode { " AND s.b_scheduler_managed" } else { "" };
    format!(
        "WITH planned AS (
           SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                                $7::bigint[], $8::bigint[], $9::bigint[], $10::text[],
                                $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[])
             AS b(id, expected_version, cores, layer, host_name, host_id, mem, gpus, gpu_mem, job,
                  host_c, host_m, host_g, host_gm, job_c, job_g)),
         -- The planned frames that still fit, read in this statement's snapshot (which comes
         -- after the limit locks): sane reservations, the layer not delayed and under its
         -- limits, and fresh unlocked looks at the host's room and the job's cap, so a host
         -- another booker filled, or a job another pass capped, since the pass was read keeps
         -- its frames out instead of failing the whole transaction at the guards. Materialized
         -- on its own: folded into the frame UPDATE, these tests made a join search that took
         -- tens of milliseconds to plan.
         b AS MATERIALIZED (
           SELECT p.* FROM planned p
           WHERE p.cores > 0 AND p.mem >= 0 AND p.gpus >= 0 AND p.gpu_mem >= 0
             AND EXISTS (SELECT 1 FROM layer l WHERE l.pk_layer = p.layer
                           AND (l.ts_start_after IS NULL OR l.ts_start_after <= now()) AND {limit_ok})
             AND EXISTS (SELECT 1 FROM host h WHERE h.pk_host = p.host_id AND h.int_cores_idle >= p.host_c
                           AND h.int_mem_idle >= p.host_m AND h.int_gpus_idle >= p.host_g
                           AND h.int_gpu_mem_idle >= p.host_gm)
             AND EXISTS (SELECT 1 FROM job_resource jr WHERE jr.pk_job = p.job
                           AND jr.int_cores + p.job_c <= jr.int_max_cores AND jr.int_gpus + p.job_g <= jr.int_max_gpus)),
         lf AS (SELECT f.pk_frame FROM frame f WHERE f.pk_frame = ANY($1::text[]) AND f.str_state = 'WAITING'
                ORDER BY f.pk_frame FOR UPDATE SKIP LOCKED),
         ls AS (SELECT pk_layer FROM layer_stat WHERE pk_layer = ANY($4::text[]) AND (SELECT count(*) FROM lf) >= 0
                ORDER BY pk_layer FOR UPDATE),
         js AS (SELECT pk_job FROM job_stat WHERE pk_job = ANY($13::text[]) AND (SELECT count(*) FROM ls) >= 0
                ORDER BY pk_job FOR UPDATE),
         -- Re-evaluated on the newest row after a lock wait: a job paused, finished or moved to
         -- another show meanwhile starts nothing.
         jl AS (SELECT j.pk_job FROM job j WHERE j.pk_job = ANY($13::text[]) AND (SELECT count(*) FROM js) >= 0
                  AND j.pk_show = $11 AND j.str_state = 'PENDING' AND NOT j.b_paused
                ORDER BY j.pk_job FOR SHARE OF j),
         sl AS (SELECT s.pk_show FROM show s WHERE s.pk_show = $11 AND (SELECT count(*) FROM jl) >= 0
                  AND s.b_active{managed}),
         started AS (
           UPDATE frame f SET str_state = 'RUNNING', str_host = b.host_name, int_cores = b.cores,
                  int_mem_reserved = b.mem, int_gpus = b.gpus, int_gpu_mem_reserved = b.gpu_mem,
                  ts_updated = now(), ts_started = now(), ts_stopped = NULL,
                  int_version = COALESCE(f.int_version, 0) + 1,
                  int_retries = f.int_retries + CASE WHEN f.int_exit_status <> ALL ({RETRY_EXEMPT_STATUSES}) THEN 1 ELSE 0 END
           FROM b
           WHERE f.pk_frame = b.id AND f.pk_frame IN (SELECT pk_frame FROM lf)
             AND f.pk_job IN (SELECT pk_job FROM jl) AND EXISTS (SELECT 1 FROM sl)
             AND f.pk_layer = b.layer AND f.pk_job = b.job AND f.str_state = 'WAITING'
             AND COALESCE(f.int_version, 0) = b.expected_version
           RETURNING f.pk_frame, f.int_version::bigint AS version, b.*),
         procs AS (
           INSERT INTO proc (pk_proc, pk_host, pk_show, pk_layer, pk_job, pk_frame, int_cores_reserved,
                             int_mem_reserved, int_mem_pre_reserved, int_mem_used, int_gpus_reserved,
                             int_gpu_mem_reserved, int_gpu_mem_pre_reserved, b_local)
           SELECT gen_random_uuid()::text, s.host_id, $11, s.layer, s.job, s.pk_frame, s.cores, s.mem, s.mem, $12,
                  s.gpus, s.gpu_mem, s.gpu_mem, false
           FROM started s
           RETURNING pk_proc, pk_frame)
         SELECT p.pk_proc::text, p.pk_frame::text, s.version, s.cores
         FROM procs p JOIN started s ON s.pk_frame = p.pk_frame"
    )
}

/// Host decrements and rollup increments (see the module comment, step 3). The caller compares
/// the counts with what it planned and rolls back on any shortfall.
const CHARGE_SQL: &str = "
    WITH hp AS (
      SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS x(host, c, m, g, gm)),
    hsl AS (SELECT pk_host FROM host_stat WHERE pk_host = ANY($1::text[]) AND str_state = 'UP'
            ORDER BY pk_host FOR SHARE),
    hl AS (SELECT pk_host FROM host WHERE pk_host IN (SELECT pk_host FROM hsl) ORDER BY pk_host FOR UPDATE),
    h AS (
      UPDATE host SET int_cores_idle = int_cores_idle - hp.c, int_mem_idle = int_mem_idle - hp.m,
                      int_gpus_idle = int_gpus_idle - hp.g, int_gpu_mem_idle = int_gpu_mem_idle - hp.gm
      FROM hp
      WHERE host.pk_host = hp.host AND host.pk_host IN (SELECT pk_host FROM hl)
        AND host.str_lock_state = 'OPEN'
        AND hp.c > 0 AND hp.m >= 0 AND hp.g >= 0 AND hp.gm >= 0
        AND host.int_cores_idle >= hp.c AND host.int_mem_idle >= hp.m
        AND host.int_gpus_idle >= hp.g AND host.int_gpu_mem_idle >= hp.gm
      RETURNING host.pk_host, host.pk_alloc, hp.c, hp.m, hp.g, host.int_cores_idle, host.int_mem_idle,
                host.int_gpus_idle, host.int_gpu_mem_idle),
    sa AS (SELECT pk_alloc, sum(c) AS c, sum(g) AS g FROM h GROUP BY pk_alloc),
    -- A cap row is locked only where the statement's snapshot shows room for this charge: a
    -- charge that cannot fit is refused at once instead of queueing behind every booking that
    -- holds the row. The room test reads the snapshot CTE, so after a lock wait it is not
    -- re-checked, and the row is locked at its newest version (the room then reported).
    ss AS (SELECT s.pk_subscription, s.pk_alloc, (s.int_burst - s.int_cores)::bigint AS room FROM subscription s
           WHERE s.pk_show = $6 AND s.pk_alloc IN (SELECT pk_alloc FROM sa)),
    sl AS (SELECT s.pk_subscription, s.pk_alloc, (s.int_burst - s.int_cores)::bigint AS room
           FROM subscription s JOIN ss ON ss.pk_subscription = s.pk_subscription JOIN sa ON sa.pk_alloc = ss.pk_alloc
           WHERE ss.room >= sa.c ORDER BY s.pk_alloc FOR UPDATE OF s),
    sub AS (
      UPDATE subscription s SET int_cores = s.int_cores + sa.c, int_gpus = s.int_gpus + sa.g
      FROM sa WHERE s.pk_show = $6 AND s.pk_alloc = sa.pk_alloc AND s.pk_subscription IN (SELECT pk_subscription FROM sl)
        AND s.int_cores + sa.c <= s.int_burst
      RETURNING 1),
    lp AS (SELECT * FROM unnest($7::text[], $8::bigint[], $9::bigint[]) AS x(layer, c, g)),
    -- Each later lock waits for the earlier caps to hold (a refused charge locks no more rows).
    ll AS (SELECT pk_layer FROM layer_resource WHERE pk_layer = ANY($7::text[]) AND (SELECT count(*) FROM sub) = (SELECT count(*) FROM sa)
           ORDER BY pk_layer FOR UPDATE),
    lr AS (
      UPDATE layer_resource x SET int_cores = x.int_cores + lp.c, int_gpus = x.int_gpus + lp.g
      FROM lp WHERE x.pk_layer = lp.layer AND x.pk_layer IN (SELECT pk_layer FROM ll) RETURNING 1),
    jp AS (SELECT * FROM unnest($10::text[], $11::bigint[], $12::bigint[]) AS x(job, c, g)),
    js AS (SELECT x.pk_job, (x.int_max_cores - x.int_cores)::bigint AS room, (x.int_max_gpus - x.int_gpus)::bigint AS gpu_room
           FROM job_resource x WHERE x.pk_job = ANY($10::text[])),
    jl AS (SELECT x.pk_job, (x.int_max_cores - x.int_cores)::bigint AS room
           FROM job_resource x JOIN js ON js.pk_job = x.pk_job JOIN jp ON jp.job = js.pk_job
           WHERE js.room >= jp.c AND js.gpu_room >= jp.g
             AND (SELECT count(*) FROM lr) >= 0 AND (SELECT count(*) FROM sub) = (SELECT count(*) FROM sa)
           ORDER BY x.pk_job FOR UPDATE OF x),
    jr AS (
      UPDATE job_resource x SET int_cores = x.int_cores + jp.c, int_gpus = x.int_gpus + jp.g
      FROM jp WHERE x.pk_job = jp.job AND x.pk_job IN (SELECT pk_job FROM jl)
        AND x.int_cores + jp.c <= x.int_max_cores AND x.int_gpus + jp.g <= x.int_max_gpus
      RETURNING 1),
    -- The jobs' folders and departments as they are now (the start statement holds the job
    -- rows FOR SHARE, so no move can slip in between).
    jf AS (SELECT j.pk_job, j.pk_folder, j.pk_dept FROM job j WHERE j.pk_job = ANY($10::text[])),
    fp AS (SELECT jf.pk_folder AS folder, sum(jp.c) AS c, sum(jp.g) AS g FROM jp JOIN jf ON jf.pk_job = jp.job GROUP BY jf.pk_folder),
    fs AS (SELECT x.pk_folder, CASE WHEN x.int_max_cores < 0 THEN NULL ELSE (x.int_max_cores - x.int_cores)::bigint END AS room,
                  (x.int_max_cores < 0 OR x.int_cores + fp.c <= x.int_max_cores)
                    AND (x.int_max_gpus < 0 OR x.int_gpus + fp.g <= x.int_max_gpus) AS fits
           FROM folder_resource x JOIN fp ON fp.folder = x.pk_folder),
    fl AS (SELECT x.pk_folder, CASE WHEN x.int_max_cores < 0 THEN NULL ELSE (x.int_max_cores - x.int_cores)::bigint END AS room
           FROM folder_resource x JOIN fs ON fs.pk_folder = x.pk_folder
           WHERE fs.fits AND (SELECT count(*) FROM jr) = (SELECT count(*) FROM jp)
           ORDER BY x.pk_folder FOR UPDATE OF x),
    fr AS (
      UPDATE folder_resource x SET int_cores = x.int_cores + fp.c, int_gpus = x.int_gpus + fp.g
      FROM fp WHERE x.pk_folder = fp.folder AND x.pk_folder IN (SELECT pk_folder FROM fl)
        AND (x.int_max_cores < 0 OR x.int_cores + fp.c <= x.int_max_cores)
        AND (x.int_max_gpus < 0 OR x.int_gpus + fp.g <= x.int_max_gpus)
      RETURNING 1),
    pp AS (SELECT jf.pk_dept AS dept, sum(jp.c) AS c, sum(jp.g) AS g FROM jp JOIN jf ON jf.pk_job = jp.job GROUP BY jf.pk_dept),
    pl AS (SELECT pk_point FROM point WHERE pk_show = $6 AND pk_dept IN (SELECT dept FROM pp)
             AND (SELECT count(*) FROM fr) = (SELECT count(*) FROM fp)
           ORDER BY pk_dept FOR UPDATE),
    pt AS (
      UPDATE point x SET int_cores = x.int_cores + pp.c, int_gpus = x.int_gpus + pp.g
      FROM pp WHERE x.pk_show = $6 AND x.pk_dept = pp.dept AND x.pk_point IN (SELECT pk_point FROM pl) RETURNING 1),
    hs AS (
      UPDATE host_stat x SET int_mem_free = GREATEST(x.int_mem_free - h.m, 0)
      FROM h WHERE x.pk_host = h.pk_host AND $13 RETURNING 1)
    SELECT (SELECT count(*) FROM h), (SELECT count(*) FROM sa), (SELECT count(*) FROM sub),
           (SELECT count(*) FROM lr), (SELECT count(*) FROM jr), (SELECT count(*) FROM fr),
           (SELECT count(*) FROM fp), (SELECT count(*) FROM pt) + (SELECT count(*) FROM hs),
           ARRAY(SELECT pk_host::text FROM h ORDER BY pk_host), ARRAY(SELECT int_cores_idle::bigint FROM h ORDER BY pk_host),
           ARRAY(SELECT int_mem_idle::bigint FROM h ORDER BY pk_host), ARRAY(SELECT int_gpus_idle::bigint FROM h ORDER BY pk_host),
           ARRAY(SELECT int_gpu_mem_idle::bigint FROM h ORDER BY pk_host), extract(epoch FROM now())::float8,
           -- Room left: on the locked row where one was locked, else as the snapshot showed it.
           (SELECT min(room) FROM (SELECT room FROM sl UNION ALL
                                   SELECT room FROM ss WHERE pk_subscription NOT IN (SELECT pk_subscription FROM sl)) r),
           (SELECT min(room) FROM (SELECT room FROM jl UNION ALL
                                   SELECT room FROM js WHERE pk_job NOT IN (SELECT pk_job FROM jl)) r),
           (SELECT min(room) FROM (SELECT room FROM fl UNION ALL
                                   SELECT room FROM fs WHERE pk_folder NOT IN (SELECT pk_folder FROM fl)) r)";

/// Compensation, step 1: clear the frame back to WAITING (exit 299) if it is still ours.
const CLEAR_FRAME_SQL: &str = "
    UPDATE frame SET str_state = 'WAITING', int_exit_status = 299, ts_stopped = now(),
                     ts_updated = now(), int_version = int_version + 1
    WHERE pk_frame = $1 AND str_state = 'RUNNING' AND int_version = $2
      AND EXISTS (SELECT 1 FROM proc WHERE pk_proc = $3 AND pk_frame = $1)";

/// Compensation, step 2: delete the proc and give back what it held, everywhere it was charged,
/// in the booking's lock order (layer before job); with `update_stat_on_book` ($3) also the
/// RQD-reported free memory the booking took.
const UNBOOK_SQL: &str = "
    WITH p AS (
      DELETE FROM proc WHERE pk_proc = $1 AND pk_frame = $2
      RETURNING pk_host, pk_show, pk_layer, pk_job, int_cores_reserved AS c, int_mem_reserved AS m,
                int_gpus_reserved AS g, int_gpu_mem_reserved AS gm),
    h AS (
      UPDATE host SET int_cores_idle = host.int_cores_idle + p.c, int_mem_idle = host.int_mem_idle + p.m,
                      int_gpus_idle = host.int_gpus_idle + p.g, int_gpu_mem_idle = host.int_gpu_mem_idle + p.gm
      FROM p WHERE host.pk_host = p.pk_host RETURNING host.pk_alloc),
    hs AS (
      UPDATE host_stat x SET int_mem_free = LEAST(x.int_mem_free + p.m, x.int_mem_total)
      FROM p WHERE x.pk_host = p.pk_host AND $3 AND (SELECT count(*) FROM h) >= 0 RETURNING 1),
    sub AS (
      UPDATE subscription s SET int_cores = s.int_cores - p.c, int_gpus = s.int_gpus - p.g
      FROM p, h WHERE s.pk_show = p.pk_show AND s.pk_alloc = h.pk_alloc AND (SELECT count(*) FROM hs) >= 0 RETURNING 1),
    lr AS (
      UPDATE layer_resource x SET int_cores = x.int_cores - p.c, int_gpus = x.int_gpus - p.g
      FROM p WHERE x.pk_layer = p.pk_layer AND (SELECT count(*) FROM sub) >= 0 RETURNING 1),
    jr AS (
      UPDATE job_resource x SET int_cores = x.int_cores - p.c, int_gpus = x.int_gpus - p.g
      FROM p WHERE x.pk_job = p.pk_job AND (SELECT count(*) FROM lr) >= 0 RETURNING 1),
    fr AS (
      UPDATE folder_resource x SET int_cores = x.int_cores - p.c, int_gpus = x.int_gpus - p.g
      FROM p, job j WHERE j.pk_job = p.pk_job AND x.pk_folder = j.pk_folder AND (SELECT count(*) FROM jr) >= 0 RETURNING 1),
    pt AS (
      UPDATE point x SET int_cores = x.int_cores - p.c, int_gpus = x.int_gpus - p.g
      FROM p, job j WHERE j.pk_job = p.pk_job AND x.pk_dept = j.pk_dept AND x.pk_show = j.pk_show
        AND (SELECT count(*) FROM fr) >= 0 RETURNING 1)
    SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM h), (SELECT count(*) FROM sub),
           (SELECT count(*) FROM lr), (SELECT count(*) FROM jr), (SELECT count(*) FROM fr),
           (SELECT count(*) FROM pt)";

/// One frame of a batch, with the cores planned for it.
#[derive(Clone, Debug)]
pub struct PlannedFrame {
    pub frame_id: String,
    pub version: i32,
    pub cores: i64,
}

/// A batch: frames of one layer of one job on one host, all reserving the layer's memory and
/// GPUs.
pub struct BatchPlan<'a> {
    pub host_id: &'a str,
    pub host_name: &'a str,
    pub show_id: &'a str,
    pub job_id: &'a str,
    pub layer_id: &'a str,
    pub layer_limited: bool,
    pub mem: i64,
    pub gpus: i64,
    pub gpu_mem: i64,
    pub mem_used_initial: i64,
    pub update_stat_on_book: bool,
    pub frames: Vec<PlannedFrame>,
}

#[derive(Clone, Debug)]
pub struct BookedFrame {
    pub frame_id: String,
    pub proc_id: String,
    /// `int_version` after the start (v + 1).
    pub version: i32,
    pub cores: i64,
}

#[derive(Debug)]
pub enum BookOutcome {
    Booked { frames: Vec<BookedFrame>, idle: IdleValues, db_time: f64 },
    /// Every frame was taken by another booker, delayed, limited, or its job or show changed.
    NothingStarted,
    /// The guarded host decrement changed nothing: another booking used the room, or the host
    /// is no longer open and up.
    HostExhausted,
    /// A cap refused the batch; `headroom` is what the cap had left (core units) on the locked
    /// row, when known, so the caller can retry with fewer frames.
    Refused { cap: Cap, headroom: Option<i64> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    Subscription,
    Job,
    Folder,
}

impl Cap {
    /// Label of `scheduler_accounting_limit_exceeded_total{table}`.
    pub fn table(self) -> &'static str {
        match self {
            Cap::Subscription => "subscription",
            Cap::Job => "job",
            Cap::Folder => "folder",
        }
    }
}

/// One frame of a batch: which host, with what, and which job and layer it charges. The
/// folder and department are read from the job in the transaction, never taken from the pass.
#[derive(Clone, Debug)]
pub struct BatchFrame {
    pub frame_id: String,
    pub version: i32,
    pub cores: i64,
    pub layer_id: String,
    pub layer_limited: bool,
    pub job_id: String,
    pub host_id: String,
    pub host_name: String,
    pub mem: i64,
    pub gpus: i64,
    pub gpu_mem: i64,
}

/// Frames of one show's jobs and layers on several hosts, booked in one transaction, all or
/// nothing.
pub struct Batch<'a> {
    pub show_id: &'a str,
    pub mem_used_initial: i64,
    pub update_stat_on_book: bool,
    pub frames: Vec<BatchFrame>,
}

#[derive(Debug)]
pub enum BatchOutcome {
    Booked { frames: Vec<BookedFrame>, hosts: Vec<(String, IdleValues)>, db_time: f64 },
    /// Something did not go exactly as planned (a frame taken, a host or cap short): nothing
    /// was written; book smaller parts.
    Conflict,
}

/// A dedicated connection with the booking statements prepared once.
pub struct Booker {
    settings: DbSettings,
    managed_mode: bool,
    client: Option<(Client, Statements)>,
}

struct Statements {
    lock_limits: Statement,
    start: Statement,
    charge: Statement,
    clear: Statement,
    unbook: Statement,
}

/// What one booking transaction did, before it is mapped to an outcome.
enum Charged {
    NothingStarted,
    /// The charge statement's counts did not match the plan: which guard fell short first.
    Short { host: bool, cap: Option<(Cap, Option<i64>)> },
    /// A Cuebot guard trigger refused the charge.
    Trigger(BookOutcome),
    Booked { frames: Vec<BookedFrame>, hosts: Vec<(String, IdleValues)>, db_time: f64 },
    /// The connection was lost during COMMIT: the booking may or may not have committed.
    Ambiguous { frames: Vec<BookedFrame>, hosts: Vec<String>, error: String },
}

/// Reads, on a new connection, which of the procs an ambiguous commit inserted exist (with
/// their frames RUNNING at the booked version): all of them if the commit happened, none if
/// not. Also the hosts' idle values as they stand, for the cache.
const RESOLVE_COMMIT_SQL: &str = "
    SELECT ARRAY(SELECT p.pk_proc::text FROM proc p JOIN frame f ON f.pk_frame = p.pk_frame
                 JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS b(proc, frame, version)
                   ON b.proc = p.pk_proc AND b.frame = f.pk_frame AND f.int_version = b.version AND f.str_state = 'RUNNING'),
           ARRAY(SELECT pk_host::text FROM host WHERE pk_host = ANY($4::text[]) ORDER BY pk_host),
           ARRAY(SELECT int_cores_idle::bigint FROM host WHERE pk_host = ANY($4::text[]) ORDER BY pk_host),
           ARRAY(SELECT int_mem_idle::bigint FROM host WHERE pk_host = ANY($4::text[]) ORDER BY pk_host),
           ARRAY(SELECT int_gpus_idle::bigint FROM host WHERE pk_host = ANY($4::text[]) ORDER BY pk_host),
           ARRAY(SELECT int_gpu_mem_idle::bigint FROM host WHERE pk_host = ANY($4::text[]) ORDER BY pk_host),
           extract(epoch FROM now())::float8";

impl Booker {
    pub fn new(settings: DbSettings, managed_mode: bool) -> Booker {
        Booker { settings, managed_mode, client: None }
    }

    fn connection(&mut self) -> Result<&mut (Client, Statements), DbError> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut client = db::connect(&self.settings, "booking connection")?;
            // The start and charge statements take milliseconds to plan and their best plan
            // does not depend on the keys: plan them once per connection, not per booking
            // (PostgreSQL's default re-plans each of the first five calls and may keep doing so).
            client.batch_execute("SET plan_cache_mode = force_generic_plan").map_err(DbError::query("set plan cache mode"))?;
            let lock_limits = client.prepare(LOCK_LIMITS_SQL).map_err(DbError::query("prepare limit lock"))?;
            let start = client.prepare(&start_sql(self.managed_mode)).map_err(DbError::query("prepare frame start"))?;
            let charge = client.prepare(CHARGE_SQL).map_err(DbError::query("prepare charge"))?;
            let clear = client.prepare(CLEAR_FRAME_SQL).map_err(DbError::query("prepare frame clear"))?;
            let unbook = client.prepare(UNBOOK_SQL).map_err(DbError::query("prepare unbook"))?;
            self.client = Some((client, Statements { lock_limits, start, charge, clear, unbook }));
        }
        self.client.as_mut().ok_or(DbError::Connect { context: "booking connection", message: "unavailable".into() })
    }

    /// Runs one transaction body, retrying deadlocks and serialization failures a bounded
    /// number of times (`limits::BOOKING_ATTEMPTS_MAX`, with a short growing pause), and
    /// dropping the connection when it is lost so the next call reconnects.
    fn with_retry<T>(&mut self, mut body: impl FnMut(&mut Client, &Statements) -> Result<T, DbError>) -> Result<T, DbError> {
        let mut attempt = 1;
        loop {
            let (client, statements) = self.connection()?;
            match body(client, statements) {
                Err(e) if e.is_transient() && attempt < limits::BOOKING_ATTEMPTS_MAX => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(limits::BOOKING_RETRY_PAUSE_MS * u64::from(attempt)));
                }
                Err(e) => {
                    if e.is_connection_lost() {
                        self.client = None;
                    }
                    return Err(e);
                }
                Ok(value) => return Ok(value),
            }
        }
    }

    /// Books a batch of one layer on one host.
    pub fn book(&mut self, plan: &BatchPlan) -> Result<BookOutcome, DbError> {
        let frames: Vec<BatchFrame> = plan
            .frames
            .iter()
            .map(|f| BatchFrame {
                frame_id: f.frame_id.clone(),
                version: f.version,
                cores: f.cores,
                layer_id: plan.layer_id.to_string(),
                layer_limited: plan.layer_limited,
                job_id: plan.job_id.to_string(),
                host_id: plan.host_id.to_string(),
                host_name: plan.host_name.to_string(),
                mem: plan.mem,
                gpus: plan.gpus,
                gpu_mem: plan.gpu_mem,
            })
            .collect();
        let batch = Batch { show_id: plan.show_id, mem_used_initial: plan.mem_used_initial, update_stat_on_book: plan.update_stat_on_book, frames };
        let charged = self.with_retry(|client, statements| book_frames(client, statements, &batch))?;
        let charged = self.resolve(charged)?;
        Ok(match charged {
            Charged::NothingStarted => BookOutcome::NothingStarted,
            Charged::Short { host: true, .. } => BookOutcome::HostExhausted,
            Charged::Short { cap: Some((cap, headroom)), .. } => BookOutcome::Refused { cap, headroom },
            Charged::Short { .. } => BookOutcome::NothingStarted,
            Charged::Trigger(outcome) => outcome,
            Charged::Ambiguous { .. } => BookOutcome::NothingStarted,
            Charged::Booked { frames, hosts, db_time } => {
                let idle = hosts.into_iter().next().map(|(_, idle)| idle).unwrap_or(IdleValues { cores_idle: 0, mem_idle: 0, gpus_idle: 0, gpu_mem_idle: 0 });
                BookOutcome::Booked { frames, idle, db_time }
            }
        })
    }

    /// Books a batch in one transaction, all or nothing.
    pub fn book_batch(&mut self, batch: &Batch) -> Result<BatchOutcome, DbError> {
        let charged = self.with_retry(|client, statements| book_frames(client, statements, batch))?;
        let charged = self.resolve(charged)?;
        Ok(match charged {
            Charged::Booked { frames, hosts, db_time } => BatchOutcome::Booked { frames, hosts, db_time },
            _ => BatchOutcome::Conflict,
        })
    }

    /// Settles an ambiguous commit by reading what the database holds: the booking either
    /// committed whole (its frames are launched as usual) or not at all. If even that read
    /// fails, the error goes up and the stranded-booking sweep settles it later (a booked
    /// frame that RQD does not run is compensated).
    fn resolve(&mut self, charged: Charged) -> Result<Charged, DbError> {
        let Charged::Ambiguous { frames, hosts, error } = charged else { return Ok(charged) };
        self.client = None;
        warn!("booking: connection lost during COMMIT ({error}); reading back whether {} frames were booked", frames.len());
        let procs: Vec<&str> = frames.iter().map(|f| f.proc_id.as_str()).collect();
        let ids: Vec<&str> = frames.iter().map(|f| f.frame_id.as_str()).collect();
        let versions: Vec<i64> = frames.iter().map(|f| i64::from(f.version)).collect();
        let mut client = db::connect(&self.settings, "resolve an ambiguous commit")?;
        let row = client
            .query_one(RESOLVE_COMMIT_SQL, &[&procs, &ids, &versions, &hosts])
            .map_err(DbError::query("resolve an ambiguous commit"))?;
        const CTX: &str = "resolve an ambiguous commit";
        let found: Vec<String> = col(&row, 0, CTX)?;
        if found.is_empty() {
            info!("booking: the lost COMMIT did not happen; nothing was booked");
            return Ok(Charged::NothingStarted);
        }
        if found.len() != frames.len() {
            // One transaction commits whole; a partial picture means Cuebot already moved some
            // frames on. Launch what is still ours; the rest is theirs.
            warn!("booking: the lost COMMIT happened, but only {} of {} frames are still ours", found.len(), frames.len());
        } else {
            info!("booking: the lost COMMIT happened; launching the {} frames", found.len());
        }
        let ids: Vec<String> = col(&row, 1, CTX)?;
        let [c, m, g, gm]: [Vec<i64>; 4] = [col(&row, 2, CTX)?, col(&row, 3, CTX)?, col(&row, 4, CTX)?, col(&row, 5, CTX)?];
        let db_time: f64 = col(&row, 6, CTX)?;
        let hosts = idle_by_host(ids, [c, m, g, gm]);
        let frames = frames.into_iter().filter(|f| found.contains(&f.proc_id)).collect();
        Ok(Charged::Booked { frames, hosts, db_time })
    }

    /// Undoes a committed booking whose launch failed or was abandoned: frame back to WAITING
    /// with exit status 299, proc deleted, host and the five rollups restored. Returns false
    /// when the booking was no longer ours to undo (Cuebot or RQD already moved the frame on).
    pub fn compensate(&mut self, frame_id: &str, version: i32, proc_id: &str, update_stat_on_book: bool) -> Result<bool, DbError> {
        self.with_retry(|client, statements| compensate_once(client, statements, frame_id, version, proc_id, update_stat_on_book))
    }
}

/// A READ COMMITTED transaction, whatever the server's default.
fn begin<'c>(client: &'c mut Client, context: &'static str) -> Result<Transaction<'c>, DbError> {
    client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().map_err(DbError::query(context))
}

/// Per-key sums of (cores, mem, gpus, gpu_mem), keys sorted (a fixed lock order).
fn sums_by<'a>(frames: &'a [BatchFrame], key: fn(&'a BatchFrame) -> &'a str) -> Vec<(&'a str, [i64; 4])> {
    let mut sums: BTreeMap<&str, [i64; 4]> = BTreeMap::new();
    for f in frames {
        let entry = sums.entry(key(f)).or_insert([0; 4]);
        entry[0] = entry[0].saturating_add(f.cores);
        entry[1] = entry[1].saturating_add(f.mem);
        entry[2] = entry[2].saturating_add(f.gpus);
        entry[3] = entry[3].saturating_add(f.gpu_mem);
    }
    sums.into_iter().collect()
}

fn frame_host(frame: &BatchFrame) -> &str {
    &frame.host_id
}

fn frame_job(frame: &BatchFrame) -> &str {
    &frame.job_id
}

fn frame_layer(frame: &BatchFrame) -> &str {
    &frame.layer_id
}

/// The one booking transaction (module comment, steps 1 to 4).
fn book_frames(client: &mut Client, statements: &Statements, batch: &Batch) -> Result<Charged, DbError> {
    const CTX: &str = "book frames";
    let mut txn = begin(client, "begin booking")?;
    let limited: Vec<&str> = {
        let mut set: Vec<&str> = batch.frames.iter().filter(|f| f.layer_limited).map(|f| f.layer_id.as_str()).collect();
        set.sort_unstable();
        set.dedup();
        set
    };
    if !limited.is_empty() {
        txn.query(&statements.lock_limits, &[&limited]).map_err(DbError::query("lock limits"))?;
    }
    let booked = start_frames(&mut txn, statements, batch)?;
    if booked.is_empty() {
        txn.rollback().map_err(DbError::query("roll back booking"))?;
        return Ok(Charged::NothingStarted);
    }
    // Charge what started: frames taken by another booker meanwhile are simply not booked.
    let started: HashSet<&str> = booked.iter().map(|b| b.frame_id.as_str()).collect();
    let charged: Vec<BatchFrame> = batch.frames.iter().filter(|x| started.contains(x.frame_id.as_str())).cloned().collect();
    let f = &charged;
    let hosts = sums_by(f, frame_host);
    let layers = sums_by(f, frame_layer);
    let jobs = sums_by(f, frame_job);
    let keys = |v: &Vec<(&str, [i64; 4])>| v.iter().map(|x| x.0.to_string()).collect::<Vec<String>>();
    let pick = |v: &Vec<(&str, [i64; 4])>, i: usize| v.iter().map(|x| x.1[i]).collect::<Vec<i64>>();
    let (host_keys, layer_keys, job_keys) = (keys(&hosts), keys(&layers), keys(&jobs));
    let host_sums: [Vec<i64>; 4] = [pick(&hosts, 0), pick(&hosts, 1), pick(&hosts, 2), pick(&hosts, 3)];
    let (layer_c, layer_g, job_c, job_g) = (pick(&layers, 0), pick(&layers, 2), pick(&jobs, 0), pick(&jobs, 2));
    let params: [&(dyn postgres::types::ToSql + Sync); 13] = [
        &host_keys, &host_sums[0], &host_sums[1], &host_sums[2], &host_sums[3], &batch.show_id,
        &layer_keys, &layer_c, &layer_g, &job_keys, &job_c, &job_g, &batch.update_stat_on_book,
    ];
    let row = txn.query_one(&statements.charge, &params);
    let row = match row {
        Ok(row) => row,
        Err(e) => return refused_by_trigger(txn, DbError::Query { context: CTX, source: e }).map(Charged::Trigger),
    };
    let n: Vec<i64> = (0..8).map(|i| col(&row, i, CTX)).collect::<Result<_, _>>()?;
    // (h, sa, sub, lr, jr, fr, folders, pt + hs)
    let short = if n[0] != hosts.len() as i64 {
        Some(Charged::Short { host: true, cap: None })
    } else if n[2] != n[1] {
        Some(Charged::Short { host: false, cap: Some((Cap::Subscription, col(&row, 14, CTX)?)) })
    } else if n[4] != jobs.len() as i64 {
        Some(Charged::Short { host: false, cap: Some((Cap::Job, col(&row, 15, CTX)?)) })
    } else if n[5] != n[6] {
        Some(Charged::Short { host: false, cap: Some((Cap::Folder, col(&row, 16, CTX)?)) })
    } else if n[3] != layers.len() as i64 {
        // A layer_resource row is missing (Cuebot's trigger always makes one): not ours to book.
        Some(Charged::Short { host: false, cap: None })
    } else {
        None
    };
    if let Some(short) = short {
        txn.rollback().map_err(DbError::query("roll back booking"))?;
        return Ok(short);
    }
    let ids: Vec<String> = col(&row, 8, CTX)?;
    let [c, m, g, gm]: [Vec<i64>; 4] = [col(&row, 9, CTX)?, col(&row, 10, CTX)?, col(&row, 11, CTX)?, col(&row, 12, CTX)?];
    let db_time: f64 = col(&row, 13, CTX)?;
    if let Err(e) = txn.commit() {
        // The server may have committed before the connection went: only a re-read can tell.
        if e.as_db_error().is_none() {
            return Ok(Charged::Ambiguous { frames: booked, hosts: hosts.iter().map(|h| h.0.to_string()).collect(), error: e.to_string() });
        }
        return Err(DbError::Query { context: "commit booking", source: e });
    }
    let idle = idle_by_host(ids, [c, m, g, gm]);
    Ok(Charged::Booked { frames: booked, hosts: idle, db_time })
}

/// Pairs host ids with the idle columns read for them (arrays in the same order).
fn idle_by_host(ids: Vec<String>, [c, m, g, gm]: [Vec<i64>; 4]) -> Vec<(String, IdleValues)> {
    let v = |a: &Vec<i64>, i: usize| a.get(i).copied().unwrap_or(0);
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| (id, IdleValues { cores_idle: v(&c, i), mem_idle: v(&m, i), gpus_idle: v(&g, i), gpu_mem_idle: v(&gm, i) }))
        .collect()
}

/// Maps Cuebot's guard-trigger messages to outcomes; anything else stays an error.
fn refused_by_trigger(txn: Transaction, error: DbError) -> Result<BookOutcome, DbError> {
    let outcome = match error.server_message() {
        Some(m) if m.starts_with("unable to allocate additional") => BookOutcome::HostExhausted,
        Some(m) if m.contains("subscription has exceeded burst size") => BookOutcome::Refused { cap: Cap::Subscription, headroom: None },
        Some(m) if m.starts_with("job has exceeded max") => BookOutcome::Refused { cap: Cap::Job, headroom: None },
        _ => return Err(error),
    };
    txn.rollback().map_err(DbError::query("roll back booking"))?;
    Ok(outcome)
}

/// Starts the frames: the unlimited ones in one statement, each frame of a limited layer in a
/// statement of its own (so it sees the running count the previous one left).
fn start_frames(txn: &mut Transaction, statements: &Statements, batch: &Batch) -> Result<Vec<BookedFrame>, DbError> {
    const CTX: &str = "start frames";
    let f = &batch.frames;
    // Per frame: the planned totals of its host and of its job, for the start statement's
    // fresh room checks.
    let host_sums = sums_by(f, frame_host);
    let job_sums = sums_by(f, frame_job);
    let total = |sums: &Vec<(&str, [i64; 4])>, key: &str, i: usize| sums.iter().find(|s| s.0 == key).map_or(0, |s| s.1[i]);
    let unlimited: Vec<&BatchFrame> = f.iter().filter(|x| !x.layer_limited).collect();
    let mut groups: Vec<Vec<&BatchFrame>> = Vec::new();
    if !unlimited.is_empty() {
        groups.push(unlimited);
    }
    groups.extend(f.iter().filter(|x| x.layer_limited).map(|x| vec![x]));
    let mut booked = Vec::with_capacity(f.len());
    for group in groups {
        let strs = |get: fn(&BatchFrame) -> &str| group.iter().map(|x| get(x)).collect::<Vec<&str>>();
        let nums = |get: fn(&BatchFrame) -> i64| group.iter().map(|x| get(x)).collect::<Vec<i64>>();
        let per = |sums: &Vec<(&str, [i64; 4])>, key: fn(&BatchFrame) -> &str, i: usize| {
            group.iter().map(|x| total(sums, key(x), i)).collect::<Vec<i64>>()
        };
        let mut job_keys: Vec<&str> = group.iter().map(|x| x.job_id.as_str()).collect();
        job_keys.sort_unstable();
        job_keys.dedup();
        let rows = txn
            .query(
                &statements.start,
                &[&strs(|x| &x.frame_id), &nums(|x| i64::from(x.version)), &nums(|x| x.cores), &strs(|x| &x.layer_id),
                  &strs(|x| &x.host_name), &strs(|x| &x.host_id), &nums(|x| x.mem), &nums(|x| x.gpus), &nums(|x| x.gpu_mem),
                  &strs(|x| &x.job_id), &batch.show_id, &batch.mem_used_initial, &job_keys,
                  &per(&host_sums, frame_host, 0), &per(&host_sums, frame_host, 1),
                  &per(&host_sums, frame_host, 2), &per(&host_sums, frame_host, 3),
                  &per(&job_sums, frame_job, 0), &per(&job_sums, frame_job, 2)],
            )
            .map_err(DbError::query(CTX))?;
        for row in &rows {
            booked.push(BookedFrame {
                proc_id: col(row, 0, CTX)?,
                frame_id: col(row, 1, CTX)?,
                version: i32::try_from(col::<i64>(row, 2, CTX)?)
                    .map_err(|_| DbError::BadRow { context: CTX, message: "int_version out of range".into() })?,
                cores: col(row, 3, CTX)?,
            });
        }
    }
    Ok(booked)
}

fn compensate_once(
    client: &mut Client,
    statements: &Statements,
    frame_id: &str,
    version: i32,
    proc_id: &str,
    update_stat_on_book: bool,
) -> Result<bool, DbError> {
    let mut txn = begin(client, "begin compensation")?;
    let cleared = txn
        .execute(&statements.clear, &[&frame_id as &(dyn postgres::types::ToSql + Sync), &version, &proc_id])
        .map_err(DbError::query("clear frame"))?;
    if cleared == 0 {
        txn.rollback().map_err(DbError::query("roll back compensation"))?;
        return Ok(false);
    }
    let row = txn
        .query_one(&statements.unbook, &[&proc_id as &(dyn postgres::types::ToSql + Sync), &frame_id, &update_stat_on_book])
        .map_err(DbError::query("unbook proc"))?;
    let deleted: i64 = col(&row, 0, "unbook proc")?;
    if deleted != 1 {
        txn.rollback().map_err(DbError::query("roll back compensation"))?;
        return Ok(false);
    }
    txn.commit().map_err(DbError::query("commit compensation"))?;
    Ok(true)
}
