//! The booking transaction (Cuebot's `startFrameAndProc`, guarded) and its compensation.
//!
//! One short READ COMMITTED transaction books a batch of frames of one layer on one host:
//!
//! 1. start the frames and insert their procs (one statement: `WITH started AS (UPDATE frame …)
//!    INSERT INTO proc …`), guarded by state WAITING + `int_version` + start-after + limits;
//!    a limited layer books one frame per statement so each sees the previous one's count;
//! 2. decrement the host guarded by `>=` on every idle column, then increment subscription
//!    (guarded by burst), layer_resource, job_resource (guarded by max cores/GPUs),
//!    folder_resource (guarded by its max) and point, in one statement;
//! 3. commit.
//!
//! Lock order, fixed for every writer here: frame rows (and, through Cuebot's trigger,
//! layer_stat and job_stat), proc, host, subscription, layer_resource, job_resource,
//! folder_resource, point. There is no network I/O between BEGIN and COMMIT. Any zero-row guard
//! rolls the whole batch back; a deadlock or serialization failure is retried a bounded number
//! of times (`limits::BOOKING_ATTEMPTS_MAX`).

use crate::db::{self, DbError, DbSettings};
use crate::host_cache::IdleValues;
use crate::limits;
use crate::queries::{col, layer_limit_ok};
use postgres::{Client, Statement, Transaction};
use std::time::Duration;

/// Exit statuses that do not consume a retry (Cuebot's list).
const RETRY_EXEMPT_STATUSES: &str = "'{-1,256,286,299,301,302,399}'::bigint[]";

fn start_frames_sql() -> String {
    let limit_ok = layer_limit_ok("l.pk_layer");
    format!(
        "WITH lf AS (
           SELECT f.pk_frame FROM frame f WHERE f.pk_frame = ANY($3::text[]) AND f.str_state = 'WAITING'
           ORDER BY f.pk_frame FOR UPDATE SKIP LOCKED),
         started AS (
           UPDATE frame f SET str_state = 'RUNNING', str_host = $2, int_cores = b.cores,
                  int_mem_reserved = $6, int_gpus = $7, int_gpu_mem_reserved = $8,
                  ts_updated = now(), ts_started = now(), ts_stopped = NULL,
                  int_version = COALESCE(f.int_version, 0) + 1,
                  int_retries = f.int_retries + CASE WHEN f.int_exit_status <> ALL ({RETRY_EXEMPT_STATUSES}) THEN 1 ELSE 0 END
           FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS b(id, version, cores)
           WHERE f.pk_frame = b.id AND f.pk_frame IN (SELECT pk_frame FROM lf) AND f.pk_layer = $1 AND f.str_state = 'WAITING'
             AND COALESCE(f.int_version, 0) = b.version
             AND EXISTS (SELECT 1 FROM layer l WHERE l.pk_layer = $1
                           AND (l.ts_start_after IS NULL OR l.ts_start_after <= now()) AND {limit_ok})
           RETURNING f.pk_frame, f.int_version::bigint AS version, b.cores),
         procs AS (
           INSERT INTO proc (pk_proc, pk_host, pk_show, pk_layer, pk_job, pk_frame, int_cores_reserved,
                             int_mem_reserved, int_mem_pre_reserved, int_mem_used, int_gpus_reserved,
                             int_gpu_mem_reserved, int_gpu_mem_pre_reserved, b_local)
           SELECT gen_random_uuid()::text, $9, $10, $1, $11, s.pk_frame, s.cores, $6, $6, $12, $7, $8, $8, false
           FROM started s
           RETURNING pk_proc, pk_frame)
         SELECT p.pk_proc::text, p.pk_frame::text, s.version, s.cores
         FROM procs p JOIN started s ON s.pk_frame = p.pk_frame"
    )
}

/// Frame start for a batch: frames of several layers of several jobs on several hosts. Rows
/// that several writers may share are locked first, in Cuebot's order (frames, then
/// layer_stat, then job_stat), each table by key, so concurrent bookers cannot deadlock on
/// them and the status trigger only touches rows this transaction already holds. Frames
/// another transaction is booking right now are skipped (SKIP LOCKED): they are taken.
fn start_batch_sql() -> String {
    let limit_ok = layer_limit_ok("l.pk_layer");
    format!(
        "WITH b AS (
           SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                                $7::bigint[], $8::bigint[], $9::bigint[], $10::text[],
                                $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[])
             AS b(id, expected_version, cores, layer, host_name, host_id, mem, gpus, gpu_mem, job,
                  host_c, host_m, host_g, host_gm, job_c, job_g)),
         lf AS (SELECT f.pk_frame FROM frame f WHERE f.pk_frame = ANY($1::text[]) AND f.str_state = 'WAITING'
                ORDER BY f.pk_frame FOR UPDATE SKIP LOCKED),
         ls AS (SELECT pk_layer FROM layer_stat WHERE pk_layer = ANY($4::text[]) AND (SELECT count(*) FROM lf) >= 0
                ORDER BY pk_layer FOR UPDATE),
         js AS (SELECT pk_job FROM job_stat WHERE pk_job = ANY($13::text[]) AND (SELECT count(*) FROM ls) >= 0
                ORDER BY pk_job FOR UPDATE),
         started AS (
           UPDATE frame f SET str_state = 'RUNNING', str_host = b.host_name, int_cores = b.cores,
                  int_mem_reserved = b.mem, int_gpus = b.gpus, int_gpu_mem_reserved = b.gpu_mem,
                  ts_updated = now(), ts_started = now(), ts_stopped = NULL,
                  int_version = COALESCE(f.int_version, 0) + 1,
                  int_retries = f.int_retries + CASE WHEN f.int_exit_status <> ALL ({RETRY_EXEMPT_STATUSES}) THEN 1 ELSE 0 END
           FROM b
           WHERE f.pk_frame = b.id AND f.pk_frame IN (SELECT pk_frame FROM lf) AND (SELECT count(*) FROM js) >= 0
             AND f.pk_layer = b.layer AND f.pk_job = b.job AND f.str_state = 'WAITING'
             AND COALESCE(f.int_version, 0) = b.expected_version
             AND EXISTS (SELECT 1 FROM layer l WHERE l.pk_layer = b.layer
                           AND (l.ts_start_after IS NULL OR l.ts_start_after <= now()) AND {limit_ok})
             -- Fresh, unlocked looks at the host's room and the job's cap: a host another
             -- booker filled, or a job another pass capped, since this pass was read keeps its
             -- frames out of the batch instead of failing the whole batch at the guards.
             AND EXISTS (SELECT 1 FROM host h WHERE h.pk_host = b.host_id AND h.int_cores_idle >= b.host_c
                           AND h.int_mem_idle >= b.host_m AND h.int_gpus_idle >= b.host_g
                           AND h.int_gpu_mem_idle >= b.host_gm)
             AND EXISTS (SELECT 1 FROM job_resource jr WHERE jr.pk_job = b.job
                           AND jr.int_cores + b.job_c <= jr.int_max_cores AND jr.int_gpus + b.job_g <= jr.int_max_gpus)
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

/// Host decrements and rollup increments for a batch, every guard in place. Each table's rows
/// are locked in key order, tables in the fixed order host, subscription, layer_resource,
/// job_resource, folder_resource, point (each lock step waits for the previous update). The
/// caller compares the counts with what it planned and rolls back on any shortfall.
const CHARGE_BATCH_SQL: &str = "
    WITH hp AS (
      SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS x(host, c, m, g, gm)),
    hl AS (SELECT pk_host FROM host WHERE pk_host = ANY($1::text[]) ORDER BY pk_host FOR UPDATE),
    h AS (
      UPDATE host SET int_cores_idle = int_cores_idle - hp.c, int_mem_idle = int_mem_idle - hp.m,
                      int_gpus_idle = int_gpus_idle - hp.g, int_gpu_mem_idle = int_gpu_mem_idle - hp.gm
      FROM hp
      WHERE host.pk_host = hp.host AND host.pk_host IN (SELECT pk_host FROM hl)
        AND host.int_cores_idle >= hp.c AND host.int_mem_idle >= hp.m
        AND host.int_gpus_idle >= hp.g AND host.int_gpu_mem_idle >= hp.gm
      RETURNING host.pk_host, host.pk_alloc, hp.c, hp.m, hp.g, host.int_cores_idle, host.int_mem_idle,
                host.int_gpus_idle, host.int_gpu_mem_idle),
    sa AS (SELECT pk_alloc, sum(c) AS c, sum(g) AS g FROM h GROUP BY pk_alloc),
    sl AS (SELECT s.pk_subscription FROM subscription s
           WHERE s.pk_show = $6 AND s.pk_alloc IN (SELECT pk_alloc FROM sa) ORDER BY s.pk_alloc FOR UPDATE),
    sub AS (
      UPDATE subscription s SET int_cores = s.int_cores + sa.c, int_gpus = s.int_gpus + sa.g
      FROM sa WHERE s.pk_show = $6 AND s.pk_alloc = sa.pk_alloc AND s.pk_subscription IN (SELECT pk_subscription FROM sl)
        AND s.int_cores + sa.c <= s.int_burst
      RETURNING 1),
    lp AS (SELECT * FROM unnest($7::text[], $8::bigint[], $9::bigint[]) AS x(layer, c, g)),
    ll AS (SELECT pk_layer FROM layer_resource WHERE pk_layer = ANY($7::text[]) AND (SELECT count(*) FROM sub) >= 0
           ORDER BY pk_layer FOR UPDATE),
    lr AS (
      UPDATE layer_resource x SET int_cores = x.int_cores + lp.c, int_gpus = x.int_gpus + lp.g
      FROM lp WHERE x.pk_layer = lp.layer AND x.pk_layer IN (SELECT pk_layer FROM ll) RETURNING 1),
    jp AS (SELECT * FROM unnest($10::text[], $11::bigint[], $12::bigint[]) AS x(job, c, g)),
    jl AS (SELECT pk_job FROM job_resource WHERE pk_job = ANY($10::text[]) AND (SELECT count(*) FROM lr) >= 0
           ORDER BY pk_job FOR UPDATE),
    jr AS (
      UPDATE job_resource x SET int_cores = x.int_cores + jp.c, int_gpus = x.int_gpus + jp.g
      FROM jp WHERE x.pk_job = jp.job AND x.pk_job IN (SELECT pk_job FROM jl)
        AND x.int_cores + jp.c <= x.int_max_cores AND x.int_gpus + jp.g <= x.int_max_gpus
      RETURNING 1),
    fp AS (SELECT * FROM unnest($13::text[], $14::bigint[], $15::bigint[]) AS x(folder, c, g)),
    fl AS (SELECT pk_folder FROM folder_resource WHERE pk_folder = ANY($13::text[]) AND (SELECT count(*) FROM jr) >= 0
           ORDER BY pk_folder FOR UPDATE),
    fr AS (
      UPDATE folder_resource x SET int_cores = x.int_cores + fp.c, int_gpus = x.int_gpus + fp.g
      FROM fp WHERE x.pk_folder = fp.folder AND x.pk_folder IN (SELECT pk_folder FROM fl)
        AND (x.int_max_cores < 0 OR x.int_cores + fp.c <= x.int_max_cores)
        AND (x.int_max_gpus < 0 OR x.int_gpus + fp.g <= x.int_max_gpus)
      RETURNING 1),
    pp AS (SELECT * FROM unnest($16::text[], $17::bigint[], $18::bigint[]) AS x(dept, c, g)),
    pl AS (SELECT pk_point FROM point WHERE pk_show = $6 AND pk_dept = ANY($16::text[]) AND (SELECT count(*) FROM fr) >= 0
           ORDER BY pk_dept FOR UPDATE),
    pt AS (
      UPDATE point x SET int_cores = x.int_cores + pp.c, int_gpus = x.int_gpus + pp.g
      FROM pp WHERE x.pk_show = $6 AND x.pk_dept = pp.dept AND x.pk_point IN (SELECT pk_point FROM pl) RETURNING 1),
    hs AS (
      UPDATE host_stat x SET int_mem_free = GREATEST(x.int_mem_free - h.m, 0)
      FROM h WHERE x.pk_host = h.pk_host AND $19 RETURNING 1)
    SELECT (SELECT count(*) FROM h), (SELECT count(*) FROM sa), (SELECT count(*) FROM sub),
           (SELECT count(*) FROM lr), (SELECT count(*) FROM jr), (SELECT count(*) FROM fr),
           (SELECT count(*) FROM pt) + (SELECT count(*) FROM hs),
           ARRAY(SELECT pk_host::text FROM h ORDER BY pk_host), ARRAY(SELECT int_cores_idle::bigint FROM h ORDER BY pk_host),
           ARRAY(SELECT int_mem_idle::bigint FROM h ORDER BY pk_host), ARRAY(SELECT int_gpus_idle::bigint FROM h ORDER BY pk_host),
           ARRAY(SELECT int_gpu_mem_idle::bigint FROM h ORDER BY pk_host), extract(epoch FROM now())::float8";

const CHARGE_SQL: &str = "
    WITH h AS (
      UPDATE host SET int_cores_idle = int_cores_idle - $2, int_mem_idle = int_mem_idle - $3,
                      int_gpus_idle = int_gpus_idle - $4, int_gpu_mem_idle = int_gpu_mem_idle - $5
      WHERE pk_host = $1 AND int_cores_idle >= $2 AND int_mem_idle >= $3
        AND int_gpus_idle >= $4 AND int_gpu_mem_idle >= $5
      RETURNING pk_alloc, int_cores_idle, int_mem_idle, int_gpus_idle, int_gpu_mem_idle),
    sub AS (
      UPDATE subscription s SET int_cores = s.int_cores + $2, int_gpus = s.int_gpus + $4
      FROM h WHERE s.pk_show = $6 AND s.pk_alloc = h.pk_alloc AND s.int_cores + $2 <= s.int_burst
      RETURNING 1),
    lr AS (
      UPDATE layer_resource SET int_cores = int_cores + $2, int_gpus = int_gpus + $4
      WHERE pk_layer = $7 AND EXISTS (SELECT 1 FROM h) RETURNING 1),
    jr AS (
      UPDATE job_resource SET int_cores = int_cores + $2, int_gpus = int_gpus + $4
      WHERE pk_job = $8 AND int_cores + $2 <= int_max_cores AND int_gpus + $4 <= int_max_gpus
        AND EXISTS (SELECT 1 FROM h) RETURNING 1),
    fr AS (
      UPDATE folder_resource SET int_cores = int_cores + $2, int_gpus = int_gpus + $4
      WHERE pk_folder = $9 AND (int_max_cores < 0 OR int_cores + $2 <= int_max_cores)
        AND (int_max_gpus < 0 OR int_gpus + $4 <= int_max_gpus) AND EXISTS (SELECT 1 FROM h) RETURNING 1),
    pt AS (
      UPDATE point SET int_cores = int_cores + $2, int_gpus = int_gpus + $4
      WHERE pk_dept = $10 AND pk_show = $6 AND EXISTS (SELECT 1 FROM h) RETURNING 1),
    hs AS (
      UPDATE host_stat SET int_mem_free = GREATEST(int_mem_free - $3, 0)
      WHERE pk_host = $1 AND $11 AND EXISTS (SELECT 1 FROM h) RETURNING 1)
    SELECT h.int_cores_idle::bigint, h.int_mem_idle::bigint, h.int_gpus_idle::bigint,
           h.int_gpu_mem_idle::bigint, (SELECT count(*) FROM sub), (SELECT count(*) FROM jr),
           (SELECT count(*) FROM fr), extract(epoch FROM now())::float8,
           (SELECT count(*) FROM lr) + (SELECT count(*) FROM pt) + (SELECT count(*) FROM hs),
           (SELECT (s.int_burst - s.int_cores)::bigint FROM subscription s WHERE s.pk_show = $6 AND s.pk_alloc = h.pk_alloc),
           (SELECT (int_max_cores - int_cores)::bigint FROM job_resource WHERE pk_job = $8),
           (SELECT CASE WHEN int_max_cores < 0 THEN NULL ELSE (int_max_cores - int_cores)::bigint END
            FROM folder_resource WHERE pk_folder = $9)
    FROM h";

/// Compensation, step 1: clear the frame back to WAITING (exit 299) if it is still ours.
const CLEAR_FRAME_SQL: &str = "
    UPDATE frame SET str_state = 'WAITING', int_exit_status = 299, ts_stopped = now(),
                     ts_updated = now(), int_version = int_version + 1
    WHERE pk_frame = $1 AND str_state = 'RUNNING' AND int_version = $2
      AND EXISTS (SELECT 1 FROM proc WHERE pk_proc = $3 AND pk_frame = $1)";

/// Compensation, step 2: delete the proc and give back what it held, everywhere it was charged.
const UNBOOK_SQL: &str = "
    WITH p AS (
      DELETE FROM proc WHERE pk_proc = $1 AND pk_frame = $2
      RETURNING pk_host, pk_show, pk_layer, pk_job, int_cores_reserved AS c, int_mem_reserved AS m,
                int_gpus_reserved AS g, int_gpu_mem_reserved AS gm),
    h AS (
      UPDATE host SET int_cores_idle = host.int_cores_idle + p.c, int_mem_idle = host.int_mem_idle + p.m,
                      int_gpus_idle = host.int_gpus_idle + p.g, int_gpu_mem_idle = host.int_gpu_mem_idle + p.gm
      FROM p WHERE host.pk_host = p.pk_host RETURNING host.pk_alloc),
    sub AS (
      UPDATE subscription s SET int_cores = s.int_cores - p.c, int_gpus = s.int_gpus - p.g
      FROM p, h WHERE s.pk_show = p.pk_show AND s.pk_alloc = h.pk_alloc RETURNING 1),
    lr AS (
      UPDATE layer_resource x SET int_cores = x.int_cores - p.c, int_gpus = x.int_gpus - p.g
      FROM p WHERE x.pk_layer = p.pk_layer RETURNING 1),
    jr AS (
      UPDATE job_resource x SET int_cores = x.int_cores - p.c, int_gpus = x.int_gpus - p.g
      FROM p WHERE x.pk_job = p.pk_job RETURNING 1),
    fr AS (
      UPDATE folder_resource x SET int_cores = x.int_cores - p.c, int_gpus = x.int_gpus - p.g
      FROM p, job j WHERE j.pk_job = p.pk_job AND x.pk_folder = j.pk_folder RETURNING 1),
    pt AS (
      UPDATE point x SET int_cores = x.int_cores - p.c, int_gpus = x.int_gpus - p.g
      FROM p, job j WHERE j.pk_job = p.pk_job AND x.pk_dept = j.pk_dept AND x.pk_show = j.pk_show RETURNING 1)
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
    pub folder_id: &'a str,
    pub dept_id: &'a str,
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
    /// Every frame was taken by another booker, delayed or limited.
    NothingStarted,
    /// The guarded host decrement changed nothing: another booking used the room.
    HostExhausted,
    /// A cap refused the batch; `headroom` is what the cap had left (core units) before it,
    /// when known, so the caller can retry with fewer frames.
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

/// One frame of a batch: which host, with what, and whose accounting it charges.
#[derive(Clone, Debug)]
pub struct BatchFrame {
    pub frame_id: String,
    pub version: i32,
    pub cores: i64,
    pub layer_id: String,
    pub job_id: String,
    pub folder_id: String,
    pub dept_id: String,
    pub host_id: String,
    pub host_name: String,
    pub mem: i64,
    pub gpus: i64,
    pub gpu_mem: i64,
}

/// Frames of one show's jobs and layers on several hosts, booked in one transaction, all or
/// nothing. None of the layers may have limits (those need a statement per frame).
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
    client: Option<(Client, Statements)>,
}

struct Statements {
    start: Statement,
    charge: Statement,
    start_batch: Statement,
    charge_batch: Statement,
    clear: Statement,
    unbook: Statement,
}

impl Booker {
    pub fn new(settings: DbSettings) -> Booker {
        Booker { settings, client: None }
    }

    fn connection(&mut self) -> Result<&mut (Client, Statements), DbError> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut client = db::connect(&self.settings, "booking connection")?;
            let start = client.prepare(&start_frames_sql()).map_err(DbError::query("prepare frame start"))?;
            let charge = client.prepare(CHARGE_SQL).map_err(DbError::query("prepare host charge"))?;
            let start_batch = client.prepare(&start_batch_sql()).map_err(DbError::query("prepare batch frame start"))?;
            let charge_batch = client.prepare(CHARGE_BATCH_SQL).map_err(DbError::query("prepare batch charge"))?;
            let clear = client.prepare(CLEAR_FRAME_SQL).map_err(DbError::query("prepare frame clear"))?;
            let unbook = client.prepare(UNBOOK_SQL).map_err(DbError::query("prepare unbook"))?;
            self.client = Some((client, Statements { start, charge, start_batch, charge_batch, clear, unbook }));
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
        self.with_retry(|client, statements| book_once(client, statements, plan))
    }

    /// Books a batch in one transaction, all or nothing.
    pub fn book_batch(&mut self, batch: &Batch) -> Result<BatchOutcome, DbError> {
        self.with_retry(|client, statements| book_batch_once(client, statements, batch))
    }

    /// Undoes a committed booking whose launch failed or was abandoned: frame back to WAITING
    /// with exit status 299, proc deleted, host and the five rollups restored. Returns false
    /// when the booking was no longer ours to undo (Cuebot or RQD already moved the frame on).
    pub fn compensate(&mut self, frame_id: &str, version: i32, proc_id: &str) -> Result<bool, DbError> {
        self.with_retry(|client, statements| compensate_once(client, statements, frame_id, version, proc_id))
    }
}

fn book_once(client: &mut Client, statements: &Statements, plan: &BatchPlan) -> Result<BookOutcome, DbError> {
    let mut txn = client.transaction().map_err(DbError::query("begin booking"))?;
    let booked = start_frames(&mut txn, statements, plan)?;
    if booked.is_empty() {
        txn.rollback().map_err(DbError::query("roll back booking"))?;
        return Ok(BookOutcome::NothingStarted);
    }
    let cores: i64 = booked.iter().map(|b| b.cores).sum();
    let count = booked.len() as i64;
    let (mem, gpus, gpu_mem) = (plan.mem * count, plan.gpus * count, plan.gpu_mem * count);
    let rows = txn
        .query(
            &statements.charge,
            &[
                &plan.host_id, &cores, &mem, &gpus, &gpu_mem, &plan.show_id, &plan.layer_id, &plan.job_id,
                &plan.folder_id, &plan.dept_id, &plan.update_stat_on_book,
            ],
        )
        .map_err(DbError::query("charge host and rollups"));
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return refused_by_trigger(txn, e),
    };
    const CTX: &str = "charge host and rollups";
    let Some(row) = rows.first() else {
        txn.rollback().map_err(DbError::query("roll back booking"))?;
        return Ok(BookOutcome::HostExhausted);
    };
    let refused = if col::<i64>(row, 4, CTX)? == 0 {
        Some(BookOutcome::Refused { cap: Cap::Subscription, headroom: col(row, 9, CTX)? })
    } else if col::<i64>(row, 5, CTX)? == 0 {
        Some(BookOutcome::Refused { cap: Cap::Job, headroom: col(row, 10, CTX)? })
    } else if col::<i64>(row, 6, CTX)? == 0 {
        Some(BookOutcome::Refused { cap: Cap::Folder, headroom: col(row, 11, CTX)? })
    } else {
        None
    };
    if let Some(outcome) = refused {
        txn.rollback().map_err(DbError::query("roll back booking"))?;
        return Ok(outcome);
    }
    let idle = IdleValues {
        cores_idle: col(row, 0, CTX)?,
        mem_idle: col(row, 1, CTX)?,
        gpus_idle: col(row, 2, CTX)?,
        gpu_mem_idle: col(row, 3, CTX)?,
    };
    let db_time: f64 = col(row, 7, CTX)?;
    txn.commit().map_err(DbError::query("commit booking"))?;
    Ok(BookOutcome::Booked { frames: booked, idle, db_time })
}

fn book_batch_once(client: &mut Client, statements: &Statements, batch: &Batch) -> Result<BatchOutcome, DbError> {
    const CTX: &str = "book batch";
    let f = &batch.frames;
    let strs = |get: fn(&BatchFrame) -> &str| f.iter().map(get).collect::<Vec<&str>>();
    let nums = |get: fn(&BatchFrame) -> i64| f.iter().map(get).collect::<Vec<i64>>();
    let jobs = sums_by(f, |x| x.job_id.as_str());
    let job_keys: Vec<&str> = jobs.iter().map(|j| j.0).collect();
    // Per frame: the planned totals of its host and of its job, for the start statement's
    // fresh room checks.
    let host_sums = sums_by(f, |x| x.host_id.as_str());
    let total = |sums: &Vec<(&str, [i64; 4])>, key: &str, i: usize| sums.iter().find(|s| s.0 == key).map_or(0, |s| s.1[i]);
    let per_frame = |sums: &Vec<(&str, [i64; 4])>, key: fn(&BatchFrame) -> &str, i: usize| {
        f.iter().map(|x| total(sums, key(x), i)).collect::<Vec<i64>>()
    };
    let mut txn = client.transaction().map_err(DbError::query("begin batch booking"))?;
    let rows = txn
        .query(
            &statements.start_batch,
            &[&strs(|x| &x.frame_id), &nums(|x| i64::from(x.version)), &nums(|x| x.cores), &strs(|x| &x.layer_id),
              &strs(|x| &x.host_name), &strs(|x| &x.host_id), &nums(|x| x.mem), &nums(|x| x.gpus), &nums(|x| x.gpu_mem),
              &strs(|x| &x.job_id), &batch.show_id, &batch.mem_used_initial, &job_keys,
              &per_frame(&host_sums, frame_host, 0), &per_frame(&host_sums, frame_host, 1),
              &per_frame(&host_sums, frame_host, 2), &per_frame(&host_sums, frame_host, 3),
              &per_frame(&jobs, frame_job, 0), &per_frame(&jobs, frame_job, 2)],
        )
        .map_err(DbError::query(CTX))?;
    if rows.is_empty() {
        txn.rollback().map_err(DbError::query("roll back batch booking"))?;
        return Ok(BatchOutcome::Conflict);
    }
    let mut booked = Vec::with_capacity(rows.len());
    for row in &rows {
        booked.push(BookedFrame {
            proc_id: col(row, 0, CTX)?,
            frame_id: col(row, 1, CTX)?,
            version: col::<i64>(row, 2, CTX)? as i32,
            cores: col(row, 3, CTX)?,
        });
    }
    // Charge what started: frames taken by another booker meanwhile are simply not booked.
    let started: std::collections::HashSet<&str> = booked.iter().map(|b| b.frame_id.as_str()).collect();
    let charged: Vec<BatchFrame> = f.iter().filter(|x| started.contains(x.frame_id.as_str())).cloned().collect();
    let f = &charged;
    let jobs = sums_by(f, |x| x.job_id.as_str());
    let hosts = sums_by(f, |x| x.host_id.as_str());
    let layers = sums_by(f, |x| x.layer_id.as_str());
    let folders = sums_by(f, |x| x.folder_id.as_str());
    let depts = sums_by(f, |x| x.dept_id.as_str());
    let keys = |v: &Vec<(&str, [i64; 4])>| v.iter().map(|x| x.0.to_string()).collect::<Vec<String>>();
    let pick = |v: &Vec<(&str, [i64; 4])>, i: usize| v.iter().map(|x| x.1[i]).collect::<Vec<i64>>();
    let row = txn.query_one(
        &statements.charge_batch,
        &[&keys(&hosts), &pick(&hosts, 0), &pick(&hosts, 1), &pick(&hosts, 2), &pick(&hosts, 3), &batch.show_id,
          &keys(&layers), &pick(&layers, 0), &pick(&layers, 2), &keys(&jobs), &pick(&jobs, 0), &pick(&jobs, 2),
          &keys(&folders), &pick(&folders, 0), &pick(&folders, 2), &keys(&depts), &pick(&depts, 0), &pick(&depts, 2),
          &batch.update_stat_on_book],
    );
    let row = match row {
        Ok(row) => row,
        Err(e) => {
            return match refused_by_trigger(txn, DbError::Query { context: CTX, source: e }) {
                Ok(_) => Ok(BatchOutcome::Conflict),
                Err(e) => Err(e),
            };
        }
    };
    let counts: Vec<i64> = (0..6).map(|i| col(&row, i, CTX)).collect::<Result<_, _>>()?;
    let expected = [hosts.len() as i64, counts[1], counts[1], layers.len() as i64, jobs.len() as i64, folders.len() as i64];
    if counts[0] != expected[0] || counts[2] != expected[2] || counts[3] != expected[3] || counts[4] != expected[4] || counts[5] != expected[5] {
        txn.rollback().map_err(DbError::query("roll back batch booking"))?;
        return Ok(BatchOutcome::Conflict);
    }
    let ids: Vec<String> = col(&row, 7, CTX)?;
    let [c, m, g, gm]: [Vec<i64>; 4] = [col(&row, 8, CTX)?, col(&row, 9, CTX)?, col(&row, 10, CTX)?, col(&row, 11, CTX)?];
    let db_time: f64 = col(&row, 12, CTX)?;
    txn.commit().map_err(DbError::query("commit batch booking"))?;
    let idle = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let v = |a: &Vec<i64>| a.get(i).copied().unwrap_or(0);
            (id, IdleValues { cores_idle: v(&c), mem_idle: v(&m), gpus_idle: v(&g), gpu_mem_idle: v(&gm) })
        })
        .collect();
    Ok(BatchOutcome::Booked { frames: booked, hosts: idle, db_time })
}

fn frame_host(frame: &BatchFrame) -> &str {
    &frame.host_id
}

fn frame_job(frame: &BatchFrame) -> &str {
    &frame.job_id
}

/// Per-key sums of (cores, mem, gpus, gpu_mem), keys sorted (a fixed lock order for hosts).
fn sums_by<'a>(frames: &'a [BatchFrame], key: fn(&'a BatchFrame) -> &'a str) -> Vec<(&'a str, [i64; 4])> {
    let mut sums: std::collections::BTreeMap<&str, [i64; 4]> = std::collections::BTreeMap::new();
    for f in frames {
        let entry = sums.entry(key(f)).or_insert([0; 4]);
        entry[0] += f.cores;
        entry[1] += f.mem;
        entry[2] += f.gpus;
        entry[3] += f.gpu_mem;
    }
    sums.into_iter().collect()
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

fn start_frames(txn: &mut Transaction, statements: &Statements, plan: &BatchPlan) -> Result<Vec<BookedFrame>, DbError> {
    const CTX: &str = "start frames";
    // A limited layer starts one frame per statement so each sees the running count the
    // previous one left; otherwise the whole batch goes in one statement.
    let chunk = if plan.layer_limited { 1 } else { plan.frames.len().max(1) };
    let mut booked = Vec::with_capacity(plan.frames.len());
    for frames in plan.frames.chunks(chunk) {
        let ids: Vec<&str> = frames.iter().map(|f| f.frame_id.as_str()).collect();
        let versions: Vec<i64> = frames.iter().map(|f| i64::from(f.version)).collect();
        let cores: Vec<i64> = frames.iter().map(|f| f.cores).collect();
        let gpus = plan.gpus as i32;
        let rows = txn
            .query(
                &statements.start,
                &[
                    &plan.layer_id, &plan.host_name, &ids, &versions, &cores, &plan.mem, &gpus, &plan.gpu_mem,
                    &plan.host_id, &plan.show_id, &plan.job_id, &plan.mem_used_initial,
                ],
            )
            .map_err(DbError::query(CTX))?;
        for row in &rows {
            booked.push(BookedFrame {
                proc_id: col(row, 0, CTX)?,
                frame_id: col(row, 1, CTX)?,
                version: col::<i64>(row, 2, CTX)? as i32,
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
) -> Result<bool, DbError> {
    let mut txn = client.transaction().map_err(DbError::query("begin compensation"))?;
    let cleared = txn
        .execute(&statements.clear, &[&frame_id, &version, &proc_id])
        .map_err(DbError::query("clear frame"))?;
    if cleared == 0 {
        txn.rollback().map_err(DbError::query("roll back compensation"))?;
        return Ok(false);
    }
    let row = txn.query_one(&statements.unbook, &[&proc_id, &frame_id]).map_err(DbError::query("unbook proc"))?;
    let deleted: i64 = col(&row, 0, "unbook proc")?;
    if deleted != 1 {
        txn.rollback().map_err(DbError::query("roll back compensation"))?;
        return Ok(false);
    }
    txn.commit().map_err(DbError::query("commit compensation"))?;
    Ok(true)
}
