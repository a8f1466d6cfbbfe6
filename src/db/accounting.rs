//! Exact accounting for scheduler-managed shows.
//!
//! The scheduler books managed shows with Cuebot's own writes: the booking transaction inserts
//! the procs and increments the five rollups (subscription, layer_resource, job_resource,
//! folder_resource, point). Who takes them back down depends on the Cuebot that releases the
//! proc (DECISIONS #6): (a) Dec-2025 and (d) post-#2533 Cuebots decrement them themselves;
//! (b) a mid-2026 Cuebot writes nothing and sends `acct_release`; (c) the same Cuebot with
//! notifications off writes nothing and says nothing. One code path serves all four: a
//! *reconcile* sets a rollup row to `SUM(proc)` of what it covers. It is exact, idempotent and
//! harmless when applied twice or next to a Cuebot that decrements too, so it needs no mode.
//!
//! When it runs: for the rows an `acct_release` names (gathered over
//! `accounting.coalesce_window`), for every managed show at start-up and after every reconnect
//! of the listener (releases nobody heard), and every `accounting.recompute_interval` (mode (c),
//! which no database signal tells apart from a quiet farm). A full reconcile first finds the
//! rows that differ from `SUM(proc)` in one read-only snapshot, then reconciles only those.
//!
//! # Why a concurrent booking or release cannot be lost
//!
//! Every writer of these rows — our bookings and compensations, Cuebot's bookings, Cuebot's
//! releases in modes (a) and (d), and the job-move triggers — changes `proc` (or `job`) first
//! and then adds a *delta* to the rollup row (`x = x ± c`), in one READ COMMITTED transaction.
//! A delta UPDATE that waited for a row lock is re-evaluated on the newest row version, so
//! it lands on whatever value the row holds when it gets the lock.
//!
//! A reconcile is one transaction of these statements:
//!
//! 1. `SELECT … FOR UPDATE SKIP LOCKED` on the rollup rows. A row another transaction holds is
//!    skipped and retried in the next round, so a reconcile never waits for a lock and can never
//!    be part of a deadlock or stall Cuebot. Every row it does lock had no uncommitted writer:
//!    any transaction that already added its delta to that row has committed.
//! 2. `UPDATE … SET int_cores = SUM(proc)`. Under READ COMMITTED this statement takes a new
//!    snapshot, after statement 1 returned. A writer W that touches a locked row R:
//!    - committed before statement 2's snapshot: its proc change is in the sum; its delta, if it
//!      made one, is overwritten by the same truth.
//!    - not committed by then: it cannot have added its delta to R yet (we held R without
//!      waiting), so its proc change is *not* in the sum, and its delta waits for our lock and
//!      then lands on our value. Value = sum without W + W's delta = the truth after W. If W
//!      rolls back, neither its proc change nor its delta ever happens.
//!
//! Folders and points are the exception to "set to SUM(proc)": on a big show each sums
//! every proc the show runs (tens of thousands), too dear to redo a few times a second. They
//! are set instead to the sum of their jobs' `job_resource` rows (statement 2b of the same
//! transaction). That sum equals SUM(proc) once those job rows do, and the same argument holds
//! with "job row" in place of "proc": every writer changes the job row before the folder and
//! point rows (the lock order), so a writer W that touches a locked folder F either committed
//! before statement 2b's snapshot (its job change is in the sum, its folder delta overwritten
//! by it) or has not yet written F and waits for our lock, adding its delta to a sum that does
//! not hold its job change. A job moved between folders is the same: its trigger writes both
//! folders after the job row. A job whose row a later reconcile corrects makes its folder and
//! point due again, so they follow their jobs within one coarse round.
//!
//! The same argument covers Cuebot's (a)/(d) decrements racing a full reconcile: the DELETE of
//! the proc precedes the decrement. A subquery in a single UPDATE would not do: after a lock
//! wait PostgreSQL re-checks the target row but evaluates the `proc` subquery in the old
//! snapshot, so a booking that committed during the wait would be lost.
//!
//! Caps: a reconcile that raises a row above its cap (an admin lowered the cap below what runs)
//! would trip Cuebot's guard triggers, so it moves the cap aside in the same UPDATE and puts it
//! back in a third statement of the same transaction; nobody sees the moved cap.

use crate::pipeline::context::Context;
use crate::db::{self, DbError, DbSettings};
use crate::limits;
use crate::ops::logging::escape;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The five rollup tables, in the order every writer locks them.
pub const TABLES: [&str; 5] = ["subscription", "layer_resource", "job_resource", "folder_resource", "point"];

const CHANNEL_RELEASE: &str = "acct_release";
const CHANNEL_LIMIT: &str = "acct_limit_change";

/// Rollup rows to reconcile, each table's keys sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    /// (pk_show, pk_alloc)
    pub subs: BTreeSet<(String, String)>,
    pub layers: BTreeSet<String>,
    pub jobs: BTreeSet<String>,
    pub folders: BTreeSet<String>,
    /// (pk_show, pk_dept)
    pub points: BTreeSet<(String, String)>,
}

impl Keys {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.subs.len() + self.layers.len() + self.jobs.len() + self.folders.len() + self.points.len()
    }

    pub fn extend(&mut self, other: Keys) {
        self.subs.extend(other.subs);
        self.layers.extend(other.layers);
        self.jobs.extend(other.jobs);
        self.folders.extend(other.folders);
        self.points.extend(other.points);
    }

    /// Adds a row named as the reconcile statements name them: (table, key 1, key 2).
    fn insert(&mut self, table: &str, k1: String, k2: String) {
        match table {
            "subscription" => self.subs.insert((k1, k2)),
            "layer_resource" => self.layers.insert(k1),
            "job_resource" => self.jobs.insert(k1),
            "folder_resource" => self.folders.insert(k1),
            _ => self.points.insert((k1, k2)),
        };
    }

    fn add_release(&mut self, r: &Release) {
        self.subs.insert((r.show.clone(), r.alloc.clone()));
        self.layers.insert(r.layer.clone());
        self.jobs.insert(r.job.clone());
        self.folders.insert(r.folder.clone());
        self.points.insert((r.show.clone(), r.dept.clone()));
    }
}

/// One `acct_release` payload: what Cuebot released without writing the rollups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub show: String,
    pub alloc: String,
    pub folder: String,
    pub job: String,
    pub layer: String,
    pub dept: String,
    /// Whole cores, negative (Cuebot divides core units by 100, truncating).
    pub cores: i64,
    pub gpus: i64,
}

/// What an `acct_limit_change` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitChange {
    Subscription { show: String },
    Folder { id: String },
    Job { id: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Release(Release),
    Limit(LimitChange),
    /// A payload we cannot use; answered with a full reconcile.
    Bad(String),
}

/// Parses a flat JSON object of string and integer values, as Cuebot's notifier writes them.
/// Anything else (nesting, escapes, duplicate keys, over `limits::NOTIFY_PAYLOAD_BYTES_MAX`)
/// is refused: anyone who can connect can NOTIFY.
fn parse_flat_json(text: &str) -> Result<HashMap<String, Value>, String> {
    if text.len() > limits::NOTIFY_PAYLOAD_BYTES_MAX {
        return Err(format!("payload of {} bytes", text.len()));
    }
    let body = text.trim().strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or("not a JSON object")?;
    let mut out = HashMap::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after) = string_token(rest)?;
        let after = after.trim_start().strip_prefix(':').ok_or("expected ':'")?.trim_start();
        let (value, after) = if after.starts_with('"') {
            let (s, a) = string_token(after)?;
            (Value::Text(s), a)
        } else {
            let end = after.find(|c: char| c != '-' && !c.is_ascii_digit()).unwrap_or(after.len());
            let number = after[..end].parse::<i64>().map_err(|_| format!("bad value for {key}"))?;
            (Value::Int(number), &after[end..])
        };
        if out.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate key {key}"));
        }
        rest = after.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err("expected ','".into());
        }
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Text(String),
    Int(i64),
}

fn string_token(text: &str) -> Result<(String, &str), String> {
    let inner = text.strip_prefix('"').ok_or("expected a string")?;
    let end = inner.find('"').ok_or("unterminated string")?;
    let s = &inner[..end];
    if s.contains('\\') {
        return Err("escaped strings are not expected".into());
    }
    Ok((s.to_string(), &inner[end + 1..]))
}

/// Ids are opaque strings; we only insist they look like ids (no control characters, bounded).
fn id(fields: &HashMap<String, Value>, key: &str) -> Result<String, String> {
    match fields.get(key) {
        Some(Value::Text(s)) if !s.is_empty() && s.len() <= limits::ID_LENGTH_MAX && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            Ok(s.clone())
        }
        Some(_) => Err(format!("bad {key}")),
        None => Err(format!("no {key}")),
    }
}

fn int(fields: &HashMap<String, Value>, key: &str) -> Result<i64, String> {
    match fields.get(key) {
        Some(Value::Int(n)) => Ok(*n),
        _ => Err(format!("no integer {key}")),
    }
}

pub fn parse_notice(channel: &str, payload: &str) -> Notice {
    let parsed = parse_flat_json(payload).and_then(|f| match channel {
        CHANNEL_RELEASE => Ok(Notice::Release(Release {
            show: id(&f, "show")?,
            alloc: id(&f, "alloc")?,
            folder: id(&f, "folder")?,
            job: id(&f, "job")?,
            layer: id(&f, "layer")?,
            dept: id(&f, "dept")?,
            cores: int(&f, "cores")?,
            gpus: int(&f, "gpus")?,
        })),
        CHANNEL_LIMIT => match f.get("vertex") {
            Some(Value::Text(v)) if v == "sub" => Ok(Notice::Limit(LimitChange::Subscription { show: id(&f, "show")? })),
            Some(Value::Text(v)) if v == "folder" => Ok(Notice::Limit(LimitChange::Folder { id: id(&f, "id")? })),
            Some(Value::Text(v)) if v == "job" => Ok(Notice::Limit(LimitChange::Job { id: id(&f, "id")? })),
            _ => Err("unknown vertex".into()),
        },
        other => Err(format!("unexpected channel {other}")),
    });
    parsed.unwrap_or_else(|e| Notice::Bad(format!("{channel}: {e}: {}", escape(&truncate(payload, 200)))))
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// One row a reconcile changed: (table, key, core units before → after, GPUs before → after).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correction {
    pub table: &'static str,
    pub key: String,
    pub show: String,
    pub cores: (i64, i64),
    pub gpus: (i64, i64),
}

#[derive(Debug, Default)]
pub struct Reconciled {
    pub corrections: Vec<Correction>,
    /// Rows locked and checked, per table (in `TABLES` order).
    pub rows: [u64; 5],
    /// Rows another transaction held: try again.
    pub skipped: Keys,
}

fn pairs(set: &BTreeSet<(String, String)>) -> (Vec<&str>, Vec<&str>) {
    set.iter().map(|(a, b)| (a.as_str(), b.as_str())).unzip()
}

fn list(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

/// Statement 1: lock what is free, read the caps as they stand.
const LOCK_SQL: &str = "
    WITH s AS (SELECT 'subscription'::text AS t, x.pk_show::text AS k1, x.pk_alloc::text AS k2, x.pk_show::text AS show,
                      x.int_burst::bigint AS cap1, 0::bigint AS cap2
               FROM subscription x JOIN unnest($1::text[], $2::text[]) AS k(show, alloc)
                 ON x.pk_show = k.show AND x.pk_alloc = k.alloc
               ORDER BY x.pk_subscription FOR UPDATE OF x SKIP LOCKED),
         l AS (SELECT 'layer_resource'::text, x.pk_layer::text, ''::text, j.pk_show::text, 0::bigint, 0::bigint
               FROM layer_resource x JOIN job j ON j.pk_job = x.pk_job WHERE x.pk_layer = ANY($3)
               ORDER BY x.pk_layer FOR UPDATE OF x SKIP LOCKED),
         j AS (SELECT 'job_resource'::text, x.pk_job::text, ''::text, j.pk_show::text,
                      x.int_max_cores::bigint, x.int_max_gpus::bigint
               FROM job_resource x JOIN job j ON j.pk_job = x.pk_job WHERE x.pk_job = ANY($4)
               ORDER BY x.pk_job FOR UPDATE OF x SKIP LOCKED),
         f AS (SELECT 'folder_resource'::text, x.pk_folder::text, ''::text, fo.pk_show::text, 0::bigint, 0::bigint
               FROM folder_resource x JOIN folder fo ON fo.pk_folder = x.pk_folder WHERE x.pk_folder = ANY($5)
               ORDER BY x.pk_folder FOR UPDATE OF x SKIP LOCKED),
         p AS (SELECT 'point'::text, x.pk_show::text, x.pk_dept::text, x.pk_show::text, 0::bigint, 0::bigint
               FROM point x JOIN unnest($6::text[], $7::text[]) AS k(show, dept) ON x.pk_show = k.show AND x.pk_dept = k.dept
               ORDER BY x.pk_point FOR UPDATE OF x SKIP LOCKED)
    SELECT * FROM s UNION ALL SELECT * FROM l UNION ALL SELECT * FROM j UNION ALL SELECT * FROM f UNION ALL SELECT * FROM p";

/// Statement 2, in a snapshot taken after statement 1: each locked subscription, layer and job
/// row set to SUM(proc) (the sums invariants.sql checks: non-local procs, except layer_resource
/// which counts all), only where it differs; caps that would trip a guard trigger moved aside
/// (`# 1` flips the lowest bit, so the value changes and the trigger's "cap unchanged" condition
/// is false) for statement 3. Layer and job sums are one index lookup per key (`LATERAL`): as a
/// join, the planner hashed the whole `proc` table for a few hundred jobs (70 ms at 80,000 procs).
const SET_SQL: &str = "
    WITH ks AS (SELECT * FROM unnest($1::text[], $2::text[]) AS k(show, alloc)),
    ss AS (SELECT ks.show, ks.alloc, COALESCE(sum(p.int_cores_reserved), 0)::bigint AS c, COALESCE(sum(p.int_gpus_reserved), 0)::bigint AS g
           FROM ks LEFT JOIN (proc p JOIN host h ON h.pk_host = p.pk_host AND NOT p.b_local)
                ON p.pk_show = ks.show AND h.pk_alloc = ks.alloc GROUP BY ks.show, ks.alloc),
    us AS (UPDATE subscription x SET int_cores = ss.c, int_gpus = ss.g,
                  int_burst = CASE WHEN ss.c > x.int_cores AND ss.c > x.int_burst THEN x.int_burst # 1 ELSE x.int_burst END
           FROM ss WHERE x.pk_show = ss.show AND x.pk_alloc = ss.alloc AND (x.int_cores <> ss.c OR x.int_gpus <> ss.g)
           RETURNING 'subscription'::text AS t, x.pk_show::text AS k1, x.pk_alloc::text AS k2, ss.c, ss.g),
    ls AS (SELECT k.id, s.c, s.g FROM unnest($3::text[]) AS k(id)
           CROSS JOIN LATERAL (SELECT COALESCE(sum(p.int_cores_reserved), 0)::bigint AS c, COALESCE(sum(p.int_gpus_reserved), 0)::bigint AS g
                               FROM proc p WHERE p.pk_layer = k.id) s),
    ul AS (UPDATE layer_resource x SET int_cores = ls.c, int_gpus = ls.g
           FROM ls WHERE x.pk_layer = ls.id AND (x.int_cores <> ls.c OR x.int_gpus <> ls.g)
           RETURNING 'layer_resource'::text, x.pk_layer::text, ''::text, ls.c, ls.g),
    js AS (SELECT k.id, s.c, s.g FROM unnest($4::text[]) AS k(id)
           CROSS JOIN LATERAL (SELECT COALESCE(sum(p.int_cores_reserved), 0)::bigint AS c, COALESCE(sum(p.int_gpus_reserved), 0)::bigint AS g
                               FROM proc p WHERE p.pk_job = k.id AND NOT p.b_local) s),
    uj AS (UPDATE job_resource x SET int_cores = js.c, int_gpus = js.g,
                  int_max_cores = CASE WHEN (js.c > x.int_cores OR js.g > x.int_gpus)
                                        AND (js.c > x.int_max_cores OR js.g > x.int_max_gpus) THEN x.int_max_cores # 1 ELSE x.int_max_cores END,
                  int_max_gpus = CASE WHEN (js.c > x.int_cores OR js.g > x.int_gpus)
                                       AND (js.c > x.int_max_cores OR js.g > x.int_max_gpus) THEN x.int_max_gpus # 1 ELSE x.int_max_gpus END
           FROM js WHERE x.pk_job = js.id AND (x.int_cores <> js.c OR x.int_gpus <> js.g)
           RETURNING 'job_resource'::text, x.pk_job::text, ''::text, js.c, js.g)
    SELECT * FROM us UNION ALL SELECT * FROM ul UNION ALL SELECT * FROM uj";

/// Statement 2b, a second statement and so a newer snapshot, which sees statement 2's job rows:
/// each locked folder and point row set to the
/// sum of its jobs' `job_resource` rows (both count non-local procs only). A show's jobs are
/// few next to its procs, so this is what keeps a big show's coarse rows cheap; it is exact
/// once the jobs' rows are, and a job reconciled later makes its folder and point due again.
const DERIVE_SQL: &str = "
    WITH fs AS (SELECT k.id, COALESCE(sum(x.int_cores), 0)::bigint AS c, COALESCE(sum(x.int_gpus), 0)::bigint AS g
                FROM unnest($1::text[]) AS k(id)
                LEFT JOIN (job j JOIN job_resource x ON x.pk_job = j.pk_job AND (x.int_cores <> 0 OR x.int_gpus <> 0))
                  ON j.pk_folder = k.id GROUP BY k.id),
    uf AS (UPDATE folder_resource x SET int_cores = fs.c, int_gpus = fs.g
           FROM fs WHERE x.pk_folder = fs.id AND (x.int_cores <> fs.c OR x.int_gpus <> fs.g)
           RETURNING 'folder_resource'::text AS t, x.pk_folder::text AS k1, ''::text AS k2, fs.c, fs.g),
    kp AS (SELECT * FROM unnest($2::text[], $3::text[]) AS k(show, dept)),
    ps AS (SELECT kp.show, kp.dept, COALESCE(sum(x.int_cores), 0)::bigint AS c, COALESCE(sum(x.int_gpus), 0)::bigint AS g
           FROM kp LEFT JOIN (job j JOIN job_resource x ON x.pk_job = j.pk_job AND (x.int_cores <> 0 OR x.int_gpus <> 0))
                ON j.pk_show = kp.show AND j.pk_dept = kp.dept GROUP BY kp.show, kp.dept),
    up AS (UPDATE point x SET int_cores = ps.c, int_gpus = ps.g
           FROM ps WHERE x.pk_show = ps.show AND x.pk_dept = ps.dept AND (x.int_cores <> ps.c OR x.int_gpus <> ps.g)
           RETURNING 'point'::text, x.pk_show::text, x.pk_dept::text, ps.c, ps.g)
    SELECT * FROM uf UNION ALL SELECT * FROM up";

/// Statement 3: caps moved aside by statement 2 go back to what statement 1 read.
const RESTORE_CAPS_SQL: &str = "
    WITH s AS (UPDATE subscription x SET int_burst = k.cap FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(show, alloc, cap)
               WHERE x.pk_show = k.show AND x.pk_alloc = k.alloc RETURNING 1),
         j AS (UPDATE job_resource x SET int_max_cores = k.c, int_max_gpus = k.g
               FROM unnest($4::text[], $5::bigint[], $6::bigint[]) AS k(id, c, g) WHERE x.pk_job = k.id RETURNING 1)
    SELECT (SELECT count(*) FROM s) + (SELECT count(*) FROM j)";

/// Old values of the rows statement 1 locked, to report corrections.
const READ_OLD_SQL: &str = "
    SELECT 'subscription'::text, pk_show::text, pk_alloc::text, int_cores::bigint, int_gpus::bigint FROM subscription
      WHERE (pk_show, pk_alloc) IN (SELECT * FROM unnest($1::text[], $2::text[]))
    UNION ALL SELECT 'layer_resource', pk_layer::text, '', int_cores::bigint, int_gpus::bigint FROM layer_resource WHERE pk_layer = ANY($3)
    UNION ALL SELECT 'job_resource', pk_job::text, '', int_cores::bigint, int_gpus::bigint FROM job_resource WHERE pk_job = ANY($4)
    UNION ALL SELECT 'folder_resource', pk_folder::text, '', int_cores::bigint, int_gpus::bigint FROM folder_resource WHERE pk_folder = ANY($5)
    UNION ALL SELECT 'point', pk_show::text, pk_dept::text, int_cores::bigint, int_gpus::bigint FROM point
      WHERE (pk_show, pk_dept) IN (SELECT * FROM unnest($6::text[], $7::text[]))";

fn table_index(table: &str) -> Option<usize> {
    TABLES.iter().position(|t| *t == table)
}

/// The reconcile's statements, prepared once per connection. Parsing and planning them is most
/// of a small round's cost: 50 layers and 50 jobs took 2.9 ms of database time prepared against
/// 6.7 ms sent as text each time (pgbench, 80,000 procs).
pub struct Statements {
    lock: postgres::Statement,
    read_old: postgres::Statement,
    set: postgres::Statement,
    derive: postgres::Statement,
    restore: postgres::Statement,
}

impl Statements {
    pub fn prepare(client: &mut Client) -> Result<Statements, DbError> {
        let mut prepare = |sql: &str| client.prepare(sql).map_err(DbError::query("prepare reconcile statements"));
        Ok(Statements {
            lock: prepare(LOCK_SQL)?,
            read_old: prepare(READ_OLD_SQL)?,
            set: prepare(SET_SQL)?,
            derive: prepare(DERIVE_SQL)?,
            restore: prepare(RESTORE_CAPS_SQL)?,
        })
    }
}

/// Sets the rollup rows `keys` name to `SUM(proc)`, locking only rows nobody holds. Rows that
/// do not exist are ignored; rows held by another transaction come back in `skipped`. Prepares
/// its statements for this one call; `reconcile_with` reuses them.
pub fn reconcile(client: &mut Client, keys: &Keys) -> Result<Reconciled, DbError> {
    if keys.is_empty() {
        return Ok(Reconciled::default());
    }
    let statements = Statements::prepare(client)?;
    reconcile_with(client, &statements, keys)
}

pub fn reconcile_with(client: &mut Client, st: &Statements, keys: &Keys) -> Result<Reconciled, DbError> {
    const CTX: &str = "reconcile rollups";
    let mut out = Reconciled::default();
    if keys.is_empty() {
        return Ok(out);
    }
    let (sub_shows, sub_allocs) = pairs(&keys.subs);
    let (pt_shows, pt_depts) = pairs(&keys.points);
    let (layers, jobs, folders) = (list(&keys.layers), list(&keys.jobs), list(&keys.folders));
    let mut txn = client.transaction().map_err(DbError::query("begin reconcile"))?;
    txn.batch_execute("SET LOCAL lock_timeout = '2s'").map_err(DbError::query(CTX))?;
    let locked = txn
        .query(&st.lock, &[&sub_shows, &sub_allocs, &layers, &jobs, &folders, &pt_shows, &pt_depts])
        .map_err(DbError::query("lock rollup rows"))?;
    let mut got = Keys::default();
    // (table, k1, k2) -> (show, cap1, cap2)
    let mut caps: BTreeMap<(String, String, String), (String, i64, i64)> = BTreeMap::new();
    for row in &locked {
        let (t, k1, k2, show): (String, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let (cap1, cap2): (i64, i64) = (row.get(4), row.get(5));
        got.insert(&t, k1.clone(), k2.clone());
        if let Some(i) = table_index(&t) {
            out.rows[i] += 1;
        }
        caps.insert((t, k1, k2), (show, cap1, cap2));
    }
    out.skipped = Keys {
        subs: keys.subs.difference(&got.subs).cloned().collect(),
        layers: keys.layers.difference(&got.layers).cloned().collect(),
        jobs: keys.jobs.difference(&got.jobs).cloned().collect(),
        folders: keys.folders.difference(&got.folders).cloned().collect(),
        points: keys.points.difference(&got.points).cloned().collect(),
    };
    // Rows that do not exist are neither locked nor worth a retry.
    let existing = existing_keys(&mut txn, st, &out.skipped)?;
    out.skipped = existing;
    if got.is_empty() {
        txn.rollback().map_err(DbError::query("roll back reconcile"))?;
        return Ok(out);
    }
    let (sub_shows, sub_allocs) = pairs(&got.subs);
    let (pt_shows, pt_depts) = pairs(&got.points);
    let (layers, jobs, folders) = (list(&got.layers), list(&got.jobs), list(&got.folders));
    let params: [&(dyn postgres::types::ToSql + Sync); 7] = [&sub_shows, &sub_allocs, &layers, &jobs, &folders, &pt_shows, &pt_depts];
    let old: HashMap<(String, String, String), (i64, i64)> = txn
        .query(&st.read_old, &params)
        .map_err(DbError::query("read rollups"))?
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), (r.get(3), r.get(4))))
        .collect();
    let mut set = txn
        .query(&st.set, &[&sub_shows, &sub_allocs, &layers, &jobs])
        .map_err(DbError::query("set rollups to SUM(proc)"))?;
    if !folders.is_empty() || !pt_shows.is_empty() {
        // Only coarse rounds name folders and points; a fine round skips the statement.
        set.extend(
            txn.query(&st.derive, &[&folders, &pt_shows, &pt_depts])
                .map_err(DbError::query("set folders and points to the sum of their jobs"))?,
        );
    }
    let mut restore_subs: (Vec<String>, Vec<String>, Vec<i64>) = Default::default();
    let mut restore_jobs: (Vec<String>, Vec<i64>, Vec<i64>) = Default::default();
    for row in &set {
        let (t, k1, k2, c, g): (String, String, String, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let key = (t.clone(), k1.clone(), k2.clone());
        let (old_c, old_g) = old.get(&key).copied().unwrap_or((c, g));
        let Some((show, cap1, cap2)) = caps.get(&key).cloned() else { continue };
        match t.as_str() {
            "subscription" => {
                restore_subs.0.push(k1.clone());
                restore_subs.1.push(k2.clone());
                restore_subs.2.push(cap1);
            }
            "job_resource" => {
                restore_jobs.0.push(k1.clone());
                restore_jobs.1.push(cap1);
                restore_jobs.2.push(cap2);
            }
            _ => {}
        }
        let Some(i) = table_index(&t) else { continue };
        let key_text = if k2.is_empty() { k1 } else { format!("{k1}/{k2}") };
        out.corrections.push(Correction { table: TABLES[i], key: key_text, show, cores: (old_c, c), gpus: (old_g, g) });
    }
    if !restore_subs.0.is_empty() || !restore_jobs.0.is_empty() {
        // Writing the cap read in statement 1 back is a no-op for rows statement 2 left alone.
        txn.query_one(
            &st.restore,
            &[&restore_subs.0, &restore_subs.1, &restore_subs.2, &restore_jobs.0, &restore_jobs.1, &restore_jobs.2],
        )
        .map_err(DbError::query("restore caps"))?;
    }
    txn.commit().map_err(DbError::query("commit reconcile"))?;
    Ok(out)
}

fn existing_keys(txn: &mut postgres::Transaction, st: &Statements, keys: &Keys) -> Result<Keys, DbError> {
    if keys.is_empty() {
        return Ok(Keys::default());
    }
    let (sub_shows, sub_allocs) = pairs(&keys.subs);
    let (pt_shows, pt_depts) = pairs(&keys.points);
    let (layers, jobs, folders) = (list(&keys.layers), list(&keys.jobs), list(&keys.folders));
    let rows = txn
        .query(&st.read_old, &[&sub_shows, &sub_allocs, &layers, &jobs, &folders, &pt_shows, &pt_depts])
        .map_err(DbError::query("find held rollup rows"))?;
    let mut out = Keys::default();
    for row in &rows {
        out.insert(row.get(0), row.get(1), row.get(2));
    }
    Ok(out)
}

/// The rollup rows of `shows` that differ from `SUM(proc)`, read in one snapshot without
/// locks. Candidates: every subscription, folder and point of the shows, and the layers and
/// jobs of their unfinished jobs plus any that hold procs or whose job row is not zero (a
/// finished job's stale row would otherwise stay in its folder's and point's sum).
const DRIFT_SQL: &str = "
    WITH pr AS (SELECT p.pk_show, p.pk_layer, p.pk_job, p.b_local, p.int_cores_reserved AS c, p.int_gpus_reserved AS g,
                       h.pk_alloc, j.pk_folder, j.pk_dept
                FROM proc p JOIN host h ON h.pk_host = p.pk_host JOIN job j ON j.pk_job = p.pk_job
                WHERE p.pk_show = ANY($1)),
    live AS (SELECT pk_job FROM job WHERE pk_show = ANY($1) AND str_state <> 'FINISHED'
             UNION SELECT pk_job FROM pr
             UNION SELECT x.pk_job FROM job_resource x JOIN job j ON j.pk_job = x.pk_job
                   WHERE j.pk_show = ANY($1) AND (x.int_cores <> 0 OR x.int_gpus <> 0)),
    s AS (SELECT pk_show, pk_alloc, sum(c) c, sum(g) g FROM pr WHERE NOT b_local GROUP BY 1, 2),
    l AS (SELECT pk_layer, sum(c) c, sum(g) g FROM pr GROUP BY 1),
    j AS (SELECT pk_job, sum(c) c, sum(g) g FROM pr WHERE NOT b_local GROUP BY 1),
    f AS (SELECT pk_folder, sum(c) c, sum(g) g FROM pr WHERE NOT b_local GROUP BY 1),
    pt AS (SELECT pk_show, pk_dept, sum(c) c, sum(g) g FROM pr WHERE NOT b_local GROUP BY 1, 2)
    SELECT 'subscription'::text, x.pk_show::text, x.pk_alloc::text FROM subscription x
      LEFT JOIN s ON s.pk_show = x.pk_show AND s.pk_alloc = x.pk_alloc
      WHERE x.pk_show = ANY($1) AND (x.int_cores <> COALESCE(s.c, 0) OR x.int_gpus <> COALESCE(s.g, 0))
    UNION ALL
    SELECT 'layer_resource', x.pk_layer::text, '' FROM layer_resource x JOIN live USING (pk_job) LEFT JOIN l USING (pk_layer)
      WHERE x.int_cores <> COALESCE(l.c, 0) OR x.int_gpus <> COALESCE(l.g, 0)
    UNION ALL
    SELECT 'job_resource', x.pk_job::text, '' FROM job_resource x JOIN live USING (pk_job) LEFT JOIN j USING (pk_job)
      WHERE x.int_cores <> COALESCE(j.c, 0) OR x.int_gpus <> COALESCE(j.g, 0)
    UNION ALL
    SELECT 'folder_resource', x.pk_folder::text, '' FROM folder_resource x JOIN folder fo USING (pk_folder) LEFT JOIN f USING (pk_folder)
      WHERE fo.pk_show = ANY($1) AND (x.int_cores <> COALESCE(f.c, 0) OR x.int_gpus <> COALESCE(f.g, 0))
    UNION ALL
    SELECT 'point', x.pk_show::text, x.pk_dept::text FROM point x LEFT JOIN pt ON pt.pk_show = x.pk_show AND pt.pk_dept = x.pk_dept
      WHERE x.pk_show = ANY($1) AND (x.int_cores <> COALESCE(pt.c, 0) OR x.int_gpus <> COALESCE(pt.g, 0))";

pub fn drift_keys(client: &mut Client, shows: &[String]) -> Result<Keys, DbError> {
    let mut keys = Keys::default();
    if shows.is_empty() {
        return Ok(keys);
    }
    let rows = client.query(DRIFT_SQL, &[&shows]).map_err(DbError::query("find drifted rollups"))?;
    for row in &rows {
        keys.insert(row.get(0), row.get(1), row.get(2));
    }
    add_parents(client, &mut keys)?;
    Ok(keys)
}

/// Adds the folder and point each of `keys.jobs` belongs to now: a folder or point is the sum
/// of its jobs' rows, so it is due whenever one of its jobs is reconciled (a job may have moved
/// since whatever named it was written).
pub fn add_parents(client: &mut Client, keys: &mut Keys) -> Result<(), DbError> {
    if keys.jobs.is_empty() {
        return Ok(());
    }
    let jobs = list(&keys.jobs);
    let rows = client
        .query("SELECT pk_folder::text, pk_show::text, pk_dept::text FROM job WHERE pk_job = ANY($1)", &[&jobs])
        .map_err(DbError::query("folders and points of reconciled jobs"))?;
    for r in &rows {
        keys.folders.insert(r.get(0));
        keys.points.insert((r.get(1), r.get(2)));
    }
    Ok(())
}

/// Why a full reconcile ran (label of `scheduler_accounting_full_reconciles_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullReason {
    Startup,
    Reconnect,
    Periodic,
    BadPayload,
    /// This instance became the accounting leader (the previous one went away).
    Takeover,
}

impl FullReason {
    pub fn label(self) -> &'static str {
        match self {
            FullReason::Startup => "startup",
            FullReason::Reconnect => "reconnect",
            FullReason::Periodic => "periodic",
            FullReason::BadPayload => "bad_payload",
            FullReason::Takeover => "takeover",
        }
    }
}

/// Per rollup row: what notifications announced and what reconciles corrected, so that drift
/// no notification explains can be told apart. A notification may arrive just before or just
/// after the reconcile that covers its release, so a row is judged only once it has been quiet
/// for `limits::ACCOUNTING_LEDGER_QUIET_MS` (or has been open for
/// `limits::ACCOUNTING_LEDGER_AGE_MAX_MS`): drift is the part of the corrections the
/// announcements do not cover. Cuebot announces whole cores, truncated, so each announced
/// release may hide up to 99 core units.
#[derive(Default)]
struct Ledger {
    map: HashMap<(&'static str, String), Entry>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Announced change, core units (releases are negative).
    announced_cores: i64,
    announced_gpus: i64,
    releases: i64,
    /// Corrections made by reconciles.
    corrected_cores: i64,
    corrected_gpus: i64,
    opened: Instant,
    last: Instant,
    /// Opened with what an entry closed for its age left open (`Entry::carry`): judged whole
    /// when it closes, never carried again.
    carried: bool,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry { announced_cores: 0, announced_gpus: 0, releases: 0, corrected_cores: 0, corrected_gpus: 0, opened: now, last: now, carried: false }
    }

    /// A busy row's entry closes for its age while releases keep coming, so a release announced
    /// just before the close may be corrected just after it, or the other way round. What is
    /// still open at the close goes to the next entry instead of being judged: the announced
    /// release not yet corrected, or the release correction not yet announced. Positive
    /// corrections (a row that went up) are never a release's and are judged at once. Returns
    /// the entry to open in its place, and the drift to report now.
    fn carry(&self, now: Instant) -> (Entry, (i64, i64)) {
        // (announced left, correction left, drift now) for one column; `low` is the lowest
        // correction the announcements explain.
        fn split(announced: i64, corrected: i64, low: i64) -> (i64, i64, i64) {
            if corrected > 0 {
                (announced.min(0), 0, corrected)
            } else if corrected < low {
                (0, corrected - low, 0)
            } else {
                ((announced - corrected).min(0), 0, 0)
            }
        }
        let (low_cores, low_gpus) = self.lowest_explained();
        let (a_c, c_c, d_c) = split(self.announced_cores, self.corrected_cores, low_cores);
        let (a_g, c_g, d_g) = split(self.announced_gpus, self.corrected_gpus, low_gpus);
        let next = Entry {
            announced_cores: a_c,
            announced_gpus: a_g,
            releases: self.releases,
            corrected_cores: c_c,
            corrected_gpus: c_g,
            opened: now,
            last: self.last,
            carried: true,
        };
        (next, (d_c, d_g))
    }

    /// (core units, GPUs) of correction no announcement covers. Announced releases explain a
    /// total correction anywhere from nothing (another instance reconciled the row first) down
    /// to the announced amount less the truncation slack; anything outside that is drift.
    fn unexplained(&self) -> (i64, i64) {
        fn outside(corrected: i64, low: i64) -> i64 {
            if corrected > 0 {
                corrected
            } else if corrected < low {
                low - corrected
            } else {
                0
            }
        }
        let (low_cores, low_gpus) = self.lowest_explained();
        (outside(self.corrected_cores, low_cores), outside(self.corrected_gpus, low_gpus))
    }

    /// The lowest (most negative) total correction of (core units, GPUs) the announcements
    /// explain: what they announced, less up to 99 core units of truncation per release.
    fn lowest_explained(&self) -> (i64, i64) {
        (self.announced_cores.min(0) - 99 * self.releases, self.announced_gpus.min(0))
    }
}

impl Ledger {
    fn key_names(r: &Release) -> [(&'static str, String); 5] {
        [
            ("subscription", format!("{}/{}", r.show, r.alloc)),
            ("layer_resource", r.layer.clone()),
            ("job_resource", r.job.clone()),
            ("folder_resource", r.folder.clone()),
            ("point", format!("{}/{}", r.show, r.dept)),
        ]
    }

    fn announce(&mut self, r: &Release) {
        let now = Instant::now();
        for key in Ledger::key_names(r) {
            let e = self.map.entry(key).or_insert_with(|| Entry::new(now));
            e.announced_cores = e.announced_cores.saturating_add(r.cores.saturating_mul(100));
            e.announced_gpus = e.announced_gpus.saturating_add(r.gpus);
            e.releases += 1;
            e.last = now;
        }
    }

    fn correct(&mut self, c: &Correction) {
        let now = Instant::now();
        let e = self.map.entry((c.table, c.key.clone())).or_insert_with(|| Entry::new(now));
        e.corrected_cores = e.corrected_cores.saturating_add(c.cores.1 - c.cores.0);
        e.corrected_gpus = e.corrected_gpus.saturating_add(c.gpus.1 - c.gpus.0);
        e.last = now;
    }

    /// Closes the entries that are quiet (or too old) and returns their unexplained drift per
    /// table. With `all`, closes every entry (shutdown, tests).
    fn judge(&mut self, quiet: Duration, age_max: Duration, all: bool) -> BTreeMap<&'static str, (i64, i64)> {
        let mut drift: BTreeMap<&'static str, (i64, i64)> = BTreeMap::new();
        let overfull = self.map.len() > limits::ACCOUNTING_LEDGER_ROWS_MAX;
        let now = Instant::now();
        let mut carried: Vec<((&'static str, String), Entry)> = Vec::new();
        self.map.retain(|(table, key), e| {
            let close = all || overfull || e.last.elapsed() >= quiet || e.opened.elapsed() >= age_max;
            if !close {
                return true;
            }
            let busy = !all && !overfull && !e.carried && e.last.elapsed() < quiet;
            let (c, g) = if busy {
                let (next, now_drift) = e.carry(now);
                carried.push(((*table, key.clone()), next));
                now_drift
            } else {
                e.unexplained()
            };
            if c > 0 || g > 0 {
                debug!("accounting: drift on {table} {}: announced {} core units / {} GPUs, corrected {} / {}", escape(key), e.announced_cores, e.announced_gpus, e.corrected_cores, e.corrected_gpus);
                let d = drift.entry(*table).or_insert((0, 0));
                d.0 += c;
                d.1 += g;
            }
            false
        });
        self.map.extend(carried);
        drift
    }
}

/// The accounting thread: listens, coalesces, reconciles. Runs until the pipeline stops.
pub fn run(ctx: &Context) {
    let mut worker = Worker::new(ctx);
    worker.run();
}

struct Worker<'a> {
    ctx: &'a Context,
    listener: Option<Client>,
    reconciler: Option<Client>,
    /// The reconcile's statements, prepared on `reconciler` (dropped with it).
    statements: Option<Statements>,
    /// Reads drift for full reconciles (`find_drift`), apart from the reconciler.
    finder: Option<Client>,
    ever_connected: bool,
    lost_logged: bool,
    pending: Keys,
    /// When each pending row's release was heard (for the lag histogram).
    heard: Vec<Instant>,
    full_due: Option<FullReason>,
    last_full: Instant,
    ledger: Ledger,
    /// Shows managed now, and when each show was last seen managed.
    managed_seen: HashMap<String, Instant>,
    last_managed_read: Option<Instant>,
    retry_pause: Duration,
    last_full_reason: Option<FullReason>,
    last_coarse: Instant,
    /// Holds the accounting leader lock: only the leader reconciles; every instance listens.
    leader: bool,
    last_leader_try: Option<Instant>,
    /// Shows to wake again shortly (followers: after the leader has reconciled).
    late_wakes: Vec<(Instant, BTreeSet<String>)>,
}

impl<'a> Worker<'a> {
    fn new(ctx: &'a Context) -> Worker<'a> {
        Worker {
            ctx,
            listener: None,
            reconciler: None,
            statements: None,
            finder: None,
            ever_connected: false,
            lost_logged: false,
            pending: Keys::default(),
            heard: Vec::new(),
            full_due: None,
            last_full: Instant::now(),
            ledger: Ledger::default(),
            managed_seen: HashMap::new(),
            last_managed_read: None,
            retry_pause: Duration::from_millis(limits::ACCOUNTING_RETRY_MIN_MS),
            last_full_reason: None,
            last_coarse: Instant::now(),
            leader: false,
            last_leader_try: None,
            late_wakes: Vec::new(),
        }
    }

    fn settings(&self) -> crate::config::AccountingConfig {
        self.ctx.settings.accounting.clone()
    }

    fn run(&mut self) {
        while !self.ctx.stopping() {
            self.ctx.beat();
            self.ctx.test_panic_hook();
            if self.listener.as_ref().is_none_or(|c| c.is_closed()) && !self.connect_listener() {
                self.sleep_until_retry();
                continue;
            }
            let settings = self.settings();
            self.try_lead();
            if self.leader && self.full_due.is_none() && self.last_full.elapsed() >= settings.recompute_interval {
                self.full_due = Some(FullReason::Periodic);
            }
            if !self.leader {
                // Followers leave reconciling to the leader; they only listen and wake.
                self.full_due = None;
                self.pending = Keys::default();
                self.heard.clear();
            }
            // Taken before it runs: a bad payload heard while it runs asks for another one.
            if let Some(reason) = self.full_due.take() {
                match self.full_reconcile(reason) {
                    Ok(()) => {}
                    Err(e) => {
                        self.full_due = self.full_due.or(Some(reason));
                        self.ctx.count_error("accounting");
                        warn!("accounting: full reconcile ({}) failed, will retry: {e}", reason.label());
                        self.reconciler = None;
                        self.sleep_until_retry();
                        continue;
                    }
                }
            }
            self.gather(&settings);
            if self.leader {
                self.reconcile_pending();
            } else {
                self.pending = Keys::default();
                self.heard.clear();
            }
            self.apply_late_wakes();
            self.judge_drift(false);
        }
        // What was heard before the stop is reconciled once more, without waiting for locks
        // (rows held elsewhere are healed by the next start-up reconcile).
        if self.leader && !self.pending.is_empty() {
            self.reconcile_pending_now(true);
        }
        self.judge_drift(true);
    }

    /// One instance reconciles at a time: the one holding a session advisory lock on its
    /// listener connection (it dies with that connection). Every instance tries for it at
    /// most every `limits::ACCOUNTING_LEADER_RETRY_MS`; a new leader starts with a full
    /// reconcile, covering what the old one heard and did not reconcile.
    fn try_lead(&mut self) {
        if self.leader || self.last_leader_try.is_some_and(|t| t.elapsed() < Duration::from_millis(limits::ACCOUNTING_LEADER_RETRY_MS)) {
            return;
        }
        self.last_leader_try = Some(Instant::now());
        let Some(listener) = self.listener.as_mut() else { return };
        match listener.query_one("SELECT pg_try_advisory_lock($1)", &[&limits::ACCOUNTING_LEADER_LOCK_KEY]) {
            Ok(row) if row.get::<_, bool>(0) => {
                self.leader = true;
                self.ctx.metrics.accounting_leader.set(1);
                info!("accounting: this instance now reconciles managed-show rollups (accounting leader)");
                // Start-up and reconnect keep their own reason; otherwise this is a takeover.
                if self.full_due.is_none() {
                    self.full_due = Some(FullReason::Takeover);
                }
            }
            Ok(_) => self.ctx.metrics.accounting_leader.set(0),
            Err(e) => self.listener_lost(&e.to_string()),
        }
    }

    fn apply_late_wakes(&mut self) {
        let now = Instant::now();
        let due: Vec<BTreeSet<String>> = self.late_wakes.iter().filter(|(t, _)| *t <= now).map(|(_, s)| s.clone()).collect();
        self.late_wakes.retain(|(t, _)| *t > now);
        for shows in due {
            self.ctx.wake_shows(shows);
        }
    }

    fn sleep_until_retry(&mut self) {
        let pause = self.retry_pause;
        let deadline = limits::deadline_after(pause);
        while !self.ctx.stopping() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(limits::SHUTDOWN_POLL_MS).min(pause));
        }
        self.retry_pause = (pause * 2).min(Duration::from_millis(limits::ACCOUNTING_RETRY_MAX_MS));
    }

    fn connect_listener(&mut self) -> bool {
        let settings: &DbSettings = &self.ctx.settings.db;
        let result = db::connect_as(settings, "accounting listener", "cue-scheduler accounting listener").and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {CHANNEL_RELEASE}; LISTEN {CHANNEL_LIMIT}"))
                .map_err(DbError::query("LISTEN"))?;
            Ok(c)
        });
        match result {
            Ok(client) => {
                self.listener = Some(client);
                self.leader = false;
                self.last_leader_try = None;
                self.ctx.metrics.accounting_listener_up.set(1);
                self.retry_pause = Duration::from_millis(limits::ACCOUNTING_RETRY_MIN_MS);
                // Releases made while nobody listened are found by a full reconcile, which runs
                // after LISTEN so nothing falls between the two.
                let reason = if self.ever_connected { FullReason::Reconnect } else { FullReason::Startup };
                if self.lost_logged {
                    info!("accounting: listener reconnected; reconciling every managed show");
                    self.lost_logged = false;
                } else if !self.ever_connected {
                    info!("accounting: listening on {CHANNEL_RELEASE} and {CHANNEL_LIMIT}");
                }
                self.ever_connected = true;
                self.full_due = Some(reason);
                true
            }
            Err(e) => {
                self.listener_lost(&e.to_string());
                false
            }
        }
    }

    fn listener_lost(&mut self, why: &str) {
        self.listener = None;
        self.leader = false;
        self.ctx.metrics.accounting_listener_up.set(0);
        if !self.lost_logged {
            self.ctx.count_error("accounting");
            warn!("accounting: listener lost ({why}); releases are reconciled after it reconnects");
            self.lost_logged = true;
        }
    }

    fn reconciler(&mut self) -> Result<&mut Client, DbError> {
        if self.reconciler.as_ref().is_none_or(|c| c.is_closed()) {
            self.statements = None;
            self.reconciler = Some(db::connect_as(&self.ctx.settings.db, "accounting", "cue-scheduler accounting")?);
        }
        self.reconciler.as_mut().ok_or(DbError::Connect { context: "accounting", message: "unavailable".into() })
    }

    /// Reconciles `keys` on the reconciler connection with its prepared statements.
    fn reconcile_keys(&mut self, keys: &Keys) -> Result<Reconciled, DbError> {
        self.reconciler()?;
        if self.statements.is_none() {
            if let Some(client) = self.reconciler.as_mut() {
                self.statements = Some(Statements::prepare(client)?);
            }
        }
        match (self.reconciler.as_mut(), self.statements.as_ref()) {
            (Some(client), Some(statements)) => reconcile_with(client, statements, keys),
            _ => Err(DbError::Connect { context: "accounting", message: "unavailable".into() }),
        }
    }

    /// Waits for the first notification (up to the poll interval), then gathers for the
    /// coalescing window.
    fn gather(&mut self, settings: &crate::config::AccountingConfig) {
        let poll = if self.pending.is_empty() { Duration::from_millis(limits::SHUTDOWN_POLL_MS) } else { self.retry_pause };
        let mut deadline = limits::deadline_after(poll);
        let mut first = true;
        let mut notices = Vec::new();
        loop {
            let Some(listener) = self.listener.as_mut() else { return };
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = {
                let mut notifications = listener.notifications();
                let mut iter = notifications.timeout_iter(wait);
                iter.next()
            };
            match next {
                Ok(Some(n)) => {
                    notices.push((Instant::now(), parse_notice(n.channel(), n.payload())));
                    if first {
                        first = false;
                        deadline = limits::deadline_after(settings.coalesce_window);
                    }
                    if notices.len() >= limits::ACCOUNTING_BATCH_NOTICES_MAX {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.listener_lost(&e.to_string());
                    break;
                }
            }
        }
        self.absorb(notices);
    }

    fn absorb(&mut self, notices: Vec<(Instant, Notice)>) {
        if notices.is_empty() {
            return;
        }
        let mut wake_shows = BTreeSet::new();
        let mut late = BTreeSet::new();
        let mut limit_jobs = Vec::new();
        let mut limit_folders = Vec::new();
        for (heard, notice) in notices {
            match notice {
                Notice::Release(r) => {
                    self.ctx.metrics.accounting_notifications_total.with_label_values(&[CHANNEL_RELEASE]).inc();
                    // Every instance keeps the announcements: a follower that becomes the
                    // leader (a takeover reconcile) can then tell them from drift.
                    self.ledger.announce(&r);
                    if self.leader {
                        self.pending.add_release(&r);
                        // A job may have moved since Cuebot loaded the proc: its current folder
                        // and point are looked up in the reconcile.
                        self.heard.push(heard);
                    } else {
                        late.insert(r.show.clone());
                    }
                }
                Notice::Limit(change) => {
                    self.ctx.metrics.accounting_notifications_total.with_label_values(&[CHANNEL_LIMIT]).inc();
                    match change {
                        LimitChange::Subscription { show } => {
                            wake_shows.insert(show);
                        }
                        LimitChange::Job { id } => limit_jobs.push(id),
                        LimitChange::Folder { id } => limit_folders.push(id),
                    }
                }
                Notice::Bad(why) => {
                    self.ctx.metrics.accounting_notifications_total.with_label_values(&["bad"]).inc();
                    self.ctx.count_error("accounting");
                    warn!("accounting: unusable notification ({why}); reconciling every managed show");
                    self.full_due = Some(FullReason::BadPayload);
                }
            }
        }
        if !limit_jobs.is_empty() || !limit_folders.is_empty() {
            let shows = self.reconciler().and_then(|c| {
                c.query(
                    "SELECT pk_show::text FROM job WHERE pk_job = ANY($1) UNION SELECT pk_show::text FROM folder WHERE pk_folder = ANY($2)",
                    &[&limit_jobs, &limit_folders],
                )
                .map_err(DbError::query("shows of a cap change"))
            });
            match shows {
                Ok(rows) => wake_shows.extend(rows.iter().map(|r| r.get::<_, String>(0))),
                Err(e) => {
                    debug!("accounting: cannot map a cap change to its show ({e}); waking every cluster");
                    self.ctx.wake_all();
                }
            }
        }
        if !wake_shows.is_empty() {
            self.ctx.wake_shows(wake_shows);
        }
        if !late.is_empty() && self.late_wakes.len() < limits::ACCOUNTING_LATE_WAKES_MAX {
            // A follower wakes the show's clusters once the leader has had time to reconcile.
            let after = self.settings().coalesce_window * 2 + Duration::from_millis(limits::ACCOUNTING_COARSE_MIN_MS);
            self.late_wakes.push((Instant::now() + after, late));
        }
    }

    fn reconcile_pending(&mut self) {
        self.reconcile_pending_now(false);
    }

    /// `all`: the coarse rows too, even before their interval (the last reconcile at a stop,
    /// so that the next leader finds nothing of ours left to correct).
    fn reconcile_pending_now(&mut self, all: bool) {
        if self.pending.is_empty() {
            return;
        }
        // Subscription, folder and point rows sum every proc of a show: reconcile them at most
        // every ACCOUNTING_COARSE_MIN_MS, the per-layer and per-job rows at once.
        let coarse_due = all || self.last_coarse.elapsed() >= Duration::from_millis(limits::ACCOUNTING_COARSE_MIN_MS);
        if !coarse_due && self.pending.layers.is_empty() && self.pending.jobs.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.pending);
        let started = Instant::now();
        // Folders and points where the released jobs live now (a job may have moved since).
        let result = self.reconciler().and_then(|c| add_parents(c, &mut keys)).and_then(|()| {
            if coarse_due {
                self.reconcile_keys(&keys)
            } else {
                let fine = Keys { layers: std::mem::take(&mut keys.layers), jobs: std::mem::take(&mut keys.jobs), ..Keys::default() };
                let done = self.reconcile_keys(&fine);
                if done.is_err() {
                    keys.extend(fine);
                }
                done
            }
        });
        // What was not reconciled now (coarse rows not due yet) waits in `pending`.
        let deferred = if coarse_due { Keys::default() } else { std::mem::take(&mut keys) };
        match result {
            Ok(done) => {
                let now = Instant::now();
                self.pending.extend(deferred);
                if coarse_due {
                    self.last_coarse = now;
                }
                if done.skipped.is_empty() && coarse_due {
                    for heard in self.heard.drain(..) {
                        self.ctx.metrics.accounting_reconcile_lag_seconds.observe(now.duration_since(heard).as_secs_f64());
                    }
                    self.retry_pause = Duration::from_millis(limits::ACCOUNTING_RETRY_MIN_MS);
                } else if !done.skipped.is_empty() {
                    self.retry_pause = (self.retry_pause * 2).min(Duration::from_millis(limits::ACCOUNTING_RETRY_MAX_MS));
                }
                self.pending.extend(done.skipped.clone());
                self.record(&done, None);
                debug!("accounting: reconciled {} rows in {:?} ({} held elsewhere)", done.rows.iter().sum::<u64>(), started.elapsed(), done.skipped.len());
            }
            Err(e) => {
                self.ctx.count_error("accounting");
                warn!("accounting: reconcile failed, will retry: {e}");
                self.reconciler = None;
                self.pending.extend(keys);
                self.pending.extend(deferred);
                self.sleep_until_retry();
            }
        }
    }

    /// Counts rows and drift, wakes the shows whose rollups went down.
    fn record(&mut self, done: &Reconciled, full: Option<FullReason>) {
        for (i, table) in TABLES.iter().enumerate() {
            if done.rows[i] > 0 {
                self.ctx.metrics.accounting_reconciled_rows_total.with_label_values(&[table]).inc_by(done.rows[i]);
            }
        }
        let mut wake = BTreeSet::new();
        for c in &done.corrections {
            if c.cores.1 < c.cores.0 || c.gpus.1 < c.gpus.0 {
                wake.insert(c.show.clone());
            }
            self.ledger.correct(c);
        }
        if let Some(reason) = full {
            self.last_full_reason = Some(reason);
        }
        if !wake.is_empty() {
            self.ctx.wake_shows(wake);
        }
    }

    /// Counts and logs drift on the ledger rows that have settled.
    fn judge_drift(&mut self, all: bool) {
        let drift = self.ledger.judge(
            Duration::from_millis(limits::ACCOUNTING_LEDGER_QUIET_MS),
            Duration::from_millis(limits::ACCOUNTING_LEDGER_AGE_MAX_MS),
            all,
        );
        if drift.is_empty() {
            return;
        }
        for (table, (c, g)) in &drift {
            if *c > 0 {
                self.ctx.metrics.accounting_drift_corrected_total.with_label_values(&[table, "core_units"]).inc_by(*c as u64);
            }
            if *g > 0 {
                self.ctx.metrics.accounting_drift_corrected_total.with_label_values(&[table, "gpus"]).inc_by(*g as u64);
            }
        }
        let summary: Vec<String> = drift.iter().map(|(t, (c, g))| format!("{t} {c} core units, {g} GPUs")).collect();
        let hint = match self.last_full_reason {
            Some(FullReason::Periodic) => " (a periodic reconcile found it: is Cuebot running with accounting.notify.enabled=false?)",
            _ => "",
        };
        warn!("accounting: corrected drift no acct_release explained: {}{hint}", summary.join("; "));
    }

    /// Reads the drifted rows of `shows` on a connection of its own, in a scoped thread, while
    /// this thread goes on gathering and reconciling notified releases: on a big farm the read
    /// takes a few hundred milliseconds of database time (seconds on a busy server), and
    /// releases heard meanwhile should not wait for it.
    fn find_drift(&mut self, shows: &[String]) -> Result<Keys, DbError> {
        let mut finder = match self.finder.take() {
            Some(client) if !client.is_closed() => client,
            _ => db::connect_as(&self.ctx.settings.db, "accounting", "cue-scheduler accounting drift")?,
        };
        let settings = self.settings();
        let found = std::thread::scope(|scope| {
            let finder = &mut finder;
            let handle = std::thread::Builder::new()
                .name("accounting-drift".into())
                .spawn_scoped(scope, move || drift_keys(finder, shows))
                .map_err(|e| DbError::Connect { context: "accounting", message: format!("spawn accounting-drift: {e}") })?;
            while !handle.is_finished() {
                if self.listener.is_some() && !self.ctx.stopping() {
                    self.gather(&settings);
                    self.reconcile_pending();
                } else {
                    std::thread::sleep(Duration::from_millis(limits::SHUTDOWN_POLL_MS));
                }
            }
            handle
                .join()
                .unwrap_or_else(|_| Err(DbError::Connect { context: "accounting", message: "the drift reader panicked".into() }))
        });
        if found.is_ok() {
            self.finder = Some(finder);
        }
        found
    }

    /// The shows to reconcile in full: managed now, or managed within `managed_shows_ttl`
    /// (Cuebot may still release them through its managed path while its cache says so).
    fn shows(&mut self) -> Result<Vec<String>, DbError> {
        if !self.ctx.managed_mode {
            return Ok(Vec::new());
        }
        // Cuebot may release a show through its managed path until its flag cache expires;
        // two more reconcile intervals make sure a full reconcile runs after that.
        let settings = self.settings();
        let ttl = settings.managed_shows_ttl.max(Duration::from_secs(limits::CUEBOT_MANAGED_FLAG_CACHE_SECS))
            + settings.recompute_interval.saturating_mul(2);
        let rows = self
            .reconciler()?
            .query("SELECT pk_show::text FROM show WHERE b_scheduler_managed", &[])
            .map_err(DbError::query("managed shows"))?;
        let now = Instant::now();
        for r in &rows {
            self.managed_seen.insert(r.get(0), now);
        }
        self.last_managed_read = Some(now);
        self.managed_seen.retain(|_, seen| now.duration_since(*seen) < ttl);
        Ok(self.managed_seen.keys().cloned().collect())
    }

    fn full_reconcile(&mut self, reason: FullReason) -> Result<(), DbError> {
        let started = Instant::now();
        let shows = self.shows()?;
        let keys = self.find_drift(&shows)?;
        let mut total = Reconciled::default();
        let mut todo = keys;
        for round in 0..limits::ACCOUNTING_FULL_ROUNDS_MAX {
            if todo.is_empty() || self.ctx.stopping() {
                break;
            }
            if round > 0 {
                std::thread::sleep(Duration::from_millis(limits::ACCOUNTING_RETRY_MIN_MS * (round as u64)));
            }
            let done = self.reconcile_keys(&todo)?;
            for i in 0..5 {
                total.rows[i] += done.rows[i];
            }
            total.corrections.extend(done.corrections);
            todo = done.skipped;
        }
        // Rows still held after the last round wait for the next reconcile.
        self.pending.extend(todo);
        self.last_full = Instant::now();
        self.ctx.metrics.accounting_full_reconciles_total.with_label_values(&[reason.label()]).inc();
        self.ctx.metrics.recompute_cycle_duration_seconds.observe(started.elapsed().as_secs_f64());
        self.record(&total, Some(reason));
        let level_info = reason != FullReason::Periodic || !total.corrections.is_empty();
        let line = format!(
            "accounting: full reconcile ({}) of {} shows: {} rows corrected in {:.1} ms",
            reason.label(),
            shows.len(),
            total.corrections.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        if level_info {
            info!("{line}");
        } else {
            debug!("{line}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cuebot_release_payload() {
        let p = r#"{"show":"S1","alloc":"A-1","folder":"F","job":"j1","layer":"l1","dept":"D","cores":-2,"gpus":0}"#;
        let want = Release {
            show: "S1".into(),
            alloc: "A-1".into(),
            folder: "F".into(),
            job: "j1".into(),
            layer: "l1".into(),
            dept: "D".into(),
            cores: -2,
            gpus: 0,
        };
        assert_eq!(parse_notice("acct_release", p), Notice::Release(want));
    }

    #[test]
    fn parses_limit_changes() {
        assert_eq!(
            parse_notice("acct_limit_change", r#"{"vertex":"sub","show":"S","alloc":"A","burst":10}"#),
            Notice::Limit(LimitChange::Subscription { show: "S".into() })
        );
        assert_eq!(
            parse_notice("acct_limit_change", r#"{"vertex":"folder","id":"F","max_cores":-1}"#),
            Notice::Limit(LimitChange::Folder { id: "F".into() })
        );
        assert_eq!(
            parse_notice("acct_limit_change", r#"{"vertex":"job","id":"J","max_gpus":2}"#),
            Notice::Limit(LimitChange::Job { id: "J".into() })
        );
    }

    #[test]
    fn hostile_payloads_are_refused_not_trusted() {
        let bad = [
            ("acct_release", ""),
            ("acct_release", "{"),
            ("acct_release", r#"{"show":"S"}"#),
            ("acct_release", r#"{"show":"S'; DROP TABLE proc; --","alloc":"A","folder":"F","job":"j","layer":"l","dept":"D","cores":-1,"gpus":0}"#),
            ("acct_release", r#"{"show":"S","show":"T","alloc":"A","folder":"F","job":"j","layer":"l","dept":"D","cores":-1,"gpus":0}"#),
            ("acct_release", r#"{"show":"S","alloc":"A","folder":"F","job":"j","layer":"l","dept":"D","cores":"x","gpus":0}"#),
            ("acct_release", r#"{"show":"S","alloc":"A","folder":"F","job":"j","layer":"l","dept":"D","cores":99999999999999999999,"gpus":0}"#),
            ("acct_limit_change", r#"{"vertex":"planet","id":"x"}"#),
            ("other", r#"{}"#),
        ];
        for (channel, payload) in bad {
            assert!(matches!(parse_notice(channel, payload), Notice::Bad(_)), "{channel} {payload}");
        }
        let huge = format!("{{\"show\":\"{}\"}}", "a".repeat(10_000));
        assert!(matches!(parse_notice("acct_release", &huge), Notice::Bad(_)));
    }

    /// A release of show S on A, folder F, job J, layer L, department D.
    fn release(cores: i64, gpus: i64) -> Release {
        Release {
            show: "S".into(),
            alloc: "A".into(),
            folder: "F".into(),
            job: "J".into(),
            layer: "L".into(),
            dept: "D".into(),
            cores,
            gpus,
        }
    }

    #[test]
    fn ledger_tells_announced_releases_from_drift() {
        let r = release(-1, 0); // 150 core units, announced truncated
        let correction = |table: &'static str, key: &str, cores: (i64, i64), gpus: (i64, i64)| Correction {
            table,
            key: key.into(),
            show: "S".into(),
            cores,
            gpus,
        };
        let judge = |ledger: &mut Ledger| ledger.judge(Duration::from_secs(3600), Duration::from_secs(3600), true);
        // 150 units released, 100 announced: within the truncation slack.
        let mut ledger = Ledger::default();
        ledger.announce(&r);
        ledger.correct(&correction("layer_resource", "L", (150, 0), (0, 0)));
        assert!(judge(&mut ledger).is_empty());
        // The correction before its announcement (the reconcile's snapshot saw the release first).
        let mut ledger = Ledger::default();
        ledger.correct(&correction("job_resource", "J", (150, 0), (0, 0)));
        ledger.announce(&r);
        assert!(judge(&mut ledger).is_empty());
        // Announced, but another instance made the correction: not drift either.
        let mut ledger = Ledger::default();
        ledger.announce(&r);
        assert!(judge(&mut ledger).is_empty());
        // Nothing announced: all of it is drift, both ways.
        let mut ledger = Ledger::default();
        ledger.correct(&correction("job_resource", "X", (300, 100), (1, 0)));
        ledger.correct(&correction("folder_resource", "F2", (0, 100), (0, 0)));
        let drift = judge(&mut ledger);
        assert_eq!(drift.get("job_resource"), Some(&(200, 1)));
        assert_eq!(drift.get("folder_resource"), Some(&(100, 0)));
        // More released than announced, beyond the slack.
        let mut ledger = Ledger::default();
        ledger.announce(&r);
        ledger.correct(&correction("layer_resource", "L", (400, 0), (0, 0)));
        assert_eq!(judge(&mut ledger).get("layer_resource"), Some(&(201, 0)));
        // A quiet ledger keeps young entries open.
        let mut ledger = Ledger::default();
        ledger.announce(&r);
        assert!(ledger.judge(Duration::from_secs(3600), Duration::from_secs(3600), false).is_empty());
        assert_eq!(ledger.map.len(), 5);
    }

    /// A busy row's entry closes for its age between a GPU release's announcement and its
    /// correction (or the other way round): the open half goes to the next entry, which the
    /// other half then meets, so neither is reported as drift. A correction nothing ever
    /// announces is still drift, one entry later.
    #[test]
    fn a_busy_rows_entry_carries_what_is_open_across_its_age_limit() {
        let gpu_release = release(-1, -1);
        let correction = |cores: (i64, i64), gpus: (i64, i64)| Correction { table: "point", key: "S/D".into(), show: "S".into(), cores, gpus };
        let quiet = Duration::from_secs(3600);
        let aged = |ledger: &mut Ledger| ledger.judge(quiet, Duration::ZERO, false);
        let point = |ledger: &Ledger| *ledger.map.get(&("point", "S/D".to_string())).expect("point entry");
        // Announced, then the entry ages out, then corrected.
        let mut ledger = Ledger::default();
        ledger.announce(&gpu_release);
        assert!(aged(&mut ledger).is_empty(), "nothing judged while the release is open");
        assert!(point(&ledger).carried);
        ledger.correct(&correction((100, 0), (1, 0)));
        assert!(ledger.judge(quiet, quiet, true).is_empty(), "the carried announcement explains the correction");
        // Corrected, then the entry ages out, then announced.
        let mut ledger = Ledger::default();
        ledger.correct(&correction((100, 0), (1, 0)));
        assert!(aged(&mut ledger).is_empty());
        ledger.announce(&gpu_release);
        assert!(ledger.judge(quiet, quiet, true).is_empty(), "the carried correction meets its announcement");
        // Corrected and never announced: drift once the carried entry closes (it is not carried
        // twice).
        let mut ledger = Ledger::default();
        ledger.correct(&correction((0, 0), (1, 0)));
        assert!(aged(&mut ledger).is_empty());
        assert_eq!(aged(&mut ledger).get("point"), Some(&(0, 1)));
        // A row that went up is drift at once.
        let mut ledger = Ledger::default();
        ledger.announce(&gpu_release);
        ledger.correct(&correction((0, 0), (0, 2)));
        assert_eq!(aged(&mut ledger).get("point"), Some(&(0, 2)));
    }
}
