//! A faithful Cuebot, for the tests, the demo and the benchmarks: the writes Cuebot makes when
//! RQD reports a finished frame, and the admin writes that change caps and move jobs, statement
//! for statement (cuebot-database.md §6, §6.3; DECISIONS #6).
//!
//! Cuebot has released procs in four ways, and the simulator does each (`Mode`):
//!
//! | mode | Cuebot | unmanaged show | managed show (`b_scheduler_managed`) |
//! |---|---|---|---|
//! | `Dec2025` (a) | Dec-2025, no managed flag | host restore + five decrements | (no such thing) |
//! | `Notify` (b) | mid-2026, `accounting.notify.enabled=true` | host restore + five decrements | host restore + `pg_notify('acct_release')` |
//! | `Silent` (c) | mid-2026, `accounting.notify.enabled=false` | host restore + five decrements | host restore only |
//! | `Pr2533` (d) | after upstream PR #2533 (Sep 2026) | host restore + five decrements | host restore + five decrements |
//!
//! Like Cuebot, the simulator reads the managed flag through a per-process cache that keeps an
//! answer for 30 s (`ShowDaoJdbc.schedulerManagedCache`), so for half a minute after a show is
//! flipped a release may still take the old path. Kinder behaviour would hide bugs.
//!
//! A release is three steps, as Cuebot's completion handler does them: load the proc (with the
//! host's allocation and the job's folder and department, as `VIRTUAL_PROC_MAPPER` does), then
//! transaction 1 stops the frame, then transaction 2 unbooks the proc. Every statement a step
//! runs is recorded in `Cuebot::trace` so a test can pin each mode to Cuebot's writes.

use parking_lot::Mutex;
use postgres::Client;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long Cuebot caches a show's `b_scheduler_managed` (its Guava cache, expireAfterWrite).
pub const MANAGED_FLAG_CACHE_TTL: Duration = Duration::from_secs(30);

/// Which Cuebot releases the procs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// (a) Dec-2025 Cuebot: five decrements for every show; no managed path.
    Dec2025,
    /// (b) mid-2026 Cuebot with `AccountingNotifier` on (its default): managed shows get the
    /// host restore and an `acct_release` NOTIFY, no rollup writes.
    Notify,
    /// (c) the same Cuebot with `accounting.notify.enabled=false`: managed shows get the host
    /// restore only.
    Silent,
    /// (d) Cuebot after upstream PR #2533: five decrements for every show, no NOTIFY.
    Pr2533,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Dec2025, Mode::Notify, Mode::Silent, Mode::Pr2533];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Dec2025 => "dec2025",
            Mode::Notify => "notify",
            Mode::Silent => "silent",
            Mode::Pr2533 => "pr2533",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == text)
    }

    /// Whether this Cuebot has a managed path at all.
    fn has_managed_path(self) -> bool {
        matches!(self, Mode::Notify | Mode::Silent)
    }

    fn notifies(self) -> bool {
        self == Mode::Notify
    }
}

/// How a simulated frame ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub exit_status: i32,
    pub run_secs: i64,
    pub max_rss_kib: i64,
}

/// What the frame became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    Frame { state: String },
    /// The proc no longer owned the frame (already released, or compensated): report ignored.
    Ignored,
}

/// One statement the simulated Cuebot ran, named by what it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    LoadProc,
    Begin,
    StopFrame,
    DetachProc,
    DeleteProc,
    RestoreHost,
    Decrement(&'static str),
    Notify { channel: &'static str, payload: String },
    Update(&'static str),
    Commit,
    Rollback,
    HostReport,
}

/// The proc as Cuebot loads it before releasing (`ProcDaoJdbc.VIRTUAL_PROC_MAPPER`).
#[derive(Clone, Debug)]
struct LoadedProc {
    host: String,
    show: String,
    layer: String,
    job: String,
    frame: Option<String>,
    alloc: String,
    folder: String,
    dept: String,
    local: bool,
}

/// One simulated Cuebot process.
pub struct Cuebot {
    pub mode: Mode,
    cache_ttl: Duration,
    managed_cache: Mutex<HashMap<String, (bool, Instant)>>,
    trace: Mutex<Option<Vec<Write>>>,
}

fn db_err(context: &str) -> impl Fn(postgres::Error) -> String + '_ {
    move |e| match e.as_db_error() {
        Some(db) => format!("{context}: {}", db.message()),
        None => format!("{context}: {e}"),
    }
}

impl Cuebot {
    pub fn new(mode: Mode) -> Cuebot {
        Cuebot::with_cache_ttl(mode, MANAGED_FLAG_CACHE_TTL)
    }

    /// A Cuebot whose managed-flag cache keeps answers for `ttl` (Cuebot's is 30 s).
    pub fn with_cache_ttl(mode: Mode, ttl: Duration) -> Cuebot {
        Cuebot { mode, cache_ttl: ttl, managed_cache: Mutex::new(HashMap::new()), trace: Mutex::new(None) }
    }

    /// Starts recording every statement; `take_trace` returns and stops the recording.
    pub fn record(&self) {
        *self.trace.lock() = Some(Vec::new());
    }

    pub fn take_trace(&self) -> Vec<Write> {
        self.trace.lock().take().unwrap_or_default()
    }

    fn note(&self, write: Write) {
        if let Some(trace) = self.trace.lock().as_mut() {
            trace.push(write);
        }
    }

    /// Forgets cached flags (`ShowDao.invalidateSchedulerManagedCache`, which Cuebot runs on the
    /// Cuebot that served the flip).
    pub fn invalidate_managed_cache(&self) {
        self.managed_cache.lock().clear();
    }

    /// `ShowDaoJdbc.isSchedulerManaged`: cached per show for `cache_ttl`.
    fn is_managed(&self, client: &mut Client, show: &str) -> Result<bool, String> {
        if let Some((value, at)) = self.managed_cache.lock().get(show) {
            if at.elapsed() < self.cache_ttl {
                return Ok(*value);
            }
        }
        let row = client
            .query_opt("SELECT b_scheduler_managed FROM show WHERE pk_show = $1", &[&show])
            .map_err(db_err("read b_scheduler_managed"))?;
        let value = row.and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false);
        self.managed_cache.lock().insert(show.to_string(), (value, Instant::now()));
        Ok(value)
    }

    /// Whether a release or cap change of `show` takes the managed path in this mode.
    fn managed_path(&self, client: &mut Client, show: &str) -> Result<bool, String> {
        if !self.mode.has_managed_path() {
            return Ok(false);
        }
        self.is_managed(client, show)
    }

    fn load_proc(&self, client: &mut Client, proc_id: &str) -> Result<Option<LoadedProc>, String> {
        self.note(Write::LoadProc);
        let row = client
            .query_opt(
                "SELECT p.pk_host::text, p.pk_show::text, p.pk_layer::text, p.pk_job::text, p.pk_frame::text,
                        h.pk_alloc::text, j.pk_folder::text, j.pk_dept::text, p.b_local
                 FROM proc p JOIN host h ON h.pk_host = p.pk_host JOIN job j ON j.pk_job = p.pk_job
                 WHERE p.pk_proc = $1",
                &[&proc_id],
            )
            .map_err(db_err("load proc"))?;
        Ok(row.map(|r| LoadedProc {
            host: r.get(0),
            show: r.get(1),
            layer: r.get(2),
            job: r.get(3),
            frame: r.get(4),
            alloc: r.get(5),
            folder: r.get(6),
            dept: r.get(7),
            local: r.get(8),
        }))
    }

    /// Applies RQD's completion report for `frame_id` run by proc `proc_id`.
    pub fn complete_frame(&self, client: &mut Client, frame_id: &str, proc_id: &str, done: Completion) -> Result<Released, String> {
        let Some(proc) = self.load_proc(client, proc_id)? else {
            return Ok(Released::Ignored);
        };
        match proc.frame.as_deref() {
            Some(held) if held == frame_id => {}
            // A proc that moved on to another frame: a duplicate report, dropped.
            Some(_) => return Ok(Released::Ignored),
            // The frame was stopped and the proc detached (stopFrame's transaction) but the proc
            // is still there: its release was lost (a report cut off between Cuebot's two
            // transactions) or the frame was stopped by someone else. Cuebot's stale-report path
            // re-reads the proc and, still holding no frame, unbooks it (`releaseStaleProc`, and
            // before Aug 2026 the failed `stopFrame` followed by `unbookProc`).
            None => return self.release_stale_proc(client, proc_id),
        }
        let Some(state) = self.stop_frame(client, frame_id, done)? else {
            return Ok(Released::Ignored);
        };
        self.unbook_proc(client, proc_id, &proc)?;
        self.note(Write::HostReport);
        client
            .execute("UPDATE host_stat SET ts_ping = now() WHERE pk_host = $1", &[&proc.host])
            .map_err(db_err("host report"))?;
        Ok(Released::Frame { state })
    }

    /// Re-reads the proc and unbooks it if it still holds no frame (Cuebot's `releaseStaleProc`).
    fn release_stale_proc(&self, client: &mut Client, proc_id: &str) -> Result<Released, String> {
        match self.load_proc(client, proc_id)? {
            Some(current) if current.frame.is_none() => {
                self.unbook_proc(client, proc_id, &current)?;
                Ok(Released::Ignored)
            }
            _ => Ok(Released::Ignored),
        }
    }

    /// The orphan half of Cuebot's hardware-state maintenance (`clearOrphanedProcs`, which runs
    /// on a timer): every proc whose `ts_ping` is older than `ping_older_than` (Cuebot: 300 s) and
    /// that holds no frame is released through `lostProc` → `unbookProc`. Procs that still hold a
    /// frame go through Cuebot's kill-before-release and are not simulated here: the scheduler
    /// recovers its own unlaunched bookings. Returns how many procs were released.
    pub fn clear_orphaned_procs(&self, client: &mut Client, ping_older_than: Duration) -> Result<usize, String> {
        let secs = ping_older_than.as_secs_f64();
        let rows = client
            .query(
                "SELECT pk_proc::text FROM proc
                 WHERE pk_frame IS NULL AND now() - ts_ping > make_interval(secs => $1) ORDER BY ts_ping",
                &[&secs],
            )
            .map_err(db_err("find orphaned procs"))?;
        let mut released = 0;
        for row in rows {
            let proc_id: String = row.get(0);
            if let Some(proc) = self.load_proc(client, &proc_id)? {
                if proc.frame.is_none() {
                    self.unbook_proc(client, &proc_id, &proc)?;
                    released += 1;
                }
            }
        }
        Ok(released)
    }

    /// Cuebot's own booking of one frame (`startFrameAndProc`, cuebot-database.md §5.2) on a
    /// show it books itself: lock the frame, start it, count the retry, insert the proc, then
    /// `procCreated`: the unguarded host decrement and the five increments. Cuebot reserves
    /// what it computed, whole cores or not (1–99 units are kept as they are). Returns the proc.
    pub fn book_frame(&self, client: &mut Client, frame_id: &str, host_id: &str, cores: i64) -> Result<Option<String>, String> {
        let mut txn = client.transaction().map_err(db_err("begin booking"))?;
        let row = txn
            .query_opt(
                "SELECT f.int_version, f.pk_layer::text, f.pk_job::text, j.pk_show::text, l.int_mem_min, l.int_gpus_min,
                        l.int_gpu_mem_min, h.str_name::text, h.pk_alloc::text
                 FROM frame f JOIN job j ON j.pk_job = f.pk_job JOIN layer l ON l.pk_layer = f.pk_layer, host h
                 WHERE f.pk_frame = $1 AND f.str_state = 'WAITING' AND h.pk_host = $2 FOR UPDATE OF f NOWAIT",
                &[&frame_id, &host_id],
            )
            .map_err(db_err("lock frame"))?;
        let Some(row) = row else { return Ok(None) };
        let (version, layer, job, show): (Option<i32>, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let (mem, gpus, gpu_mem, host_name, alloc): (i64, i64, i64, String, String) = (row.get(4), row.get(5), row.get(6), row.get(7), row.get(8));
        let started = txn
            .execute(
                "UPDATE frame SET str_state = 'RUNNING', str_host = $2, int_cores = $3, int_mem_reserved = $4,
                        int_gpus = $5, int_gpu_mem_reserved = $6, ts_updated = now(), ts_started = now(),
                        ts_stopped = NULL, int_version = int_version + 1
                 WHERE pk_frame = $1 AND str_state = 'WAITING' AND int_version IS NOT DISTINCT FROM $7",
                &[&frame_id, &host_name, &(cores as i32), &mem, &(gpus as i32), &gpu_mem, &version],
            )
            .map_err(db_err("start frame"))?;
        if started != 1 {
            return Ok(None);
        }
        txn.execute(
            "UPDATE frame SET int_retries = int_retries + 1 WHERE pk_frame = $1 AND int_exit_status <> ALL('{-1,256,286,299,301,302,399}')",
            &[&frame_id],
        )
        .map_err(db_err("retry counter"))?;
        let proc_row = txn
            .query_one(
                "INSERT INTO proc (pk_proc, pk_host, pk_show, pk_layer, pk_job, pk_frame, int_cores_reserved, int_mem_reserved,
                                   int_mem_pre_reserved, int_mem_used, int_gpus_reserved, int_gpu_mem_reserved,
                                   int_gpu_mem_pre_reserved, int_gpu_mem_used, b_local)
                 VALUES (gen_random_uuid()::text, $1, $2, $3, $4, $5, $6, $7, $7, 262144, $8, $9, $9, 0, false)
                 RETURNING pk_proc::text",
                &[&host_id, &show, &layer, &job, &frame_id, &cores, &mem, &(gpus as i32), &gpu_mem],
            )
            .map_err(db_err("insert proc"))?;
        txn.execute(
            "UPDATE host SET int_cores_idle = int_cores_idle - $2, int_mem_idle = int_mem_idle - $3,
                    int_gpus_idle = int_gpus_idle - $4, int_gpu_mem_idle = int_gpu_mem_idle - $5 WHERE pk_host = $1",
            &[&host_id, &cores, &mem, &gpus, &gpu_mem],
        )
        .map_err(db_err("host"))?;
        let (c, g) = (cores, gpus);
        txn.execute(
            "UPDATE subscription SET int_cores = int_cores + $3, int_gpus = int_gpus + $4 WHERE pk_show = $1 AND pk_alloc = $2",
            &[&show, &alloc, &(c as i32), &(g as i32)],
        )
        .map_err(db_err("subscription"))?;
        txn.execute("UPDATE layer_resource SET int_cores = int_cores + $2, int_gpus = int_gpus + $3 WHERE pk_layer = $1", &[&layer, &c, &(g as i32)])
            .map_err(db_err("layer_resource"))?;
        txn.execute("UPDATE job_resource SET int_cores = int_cores + $2, int_gpus = int_gpus + $3 WHERE pk_job = $1", &[&job, &c, &(g as i32)])
            .map_err(db_err("job_resource"))?;
        txn.execute(
            "UPDATE folder_resource SET int_cores = int_cores + $2, int_gpus = int_gpus + $3 WHERE pk_folder = (SELECT pk_folder FROM job WHERE pk_job = $1)",
            &[&job, &(c as i32), &(g as i32)],
        )
        .map_err(db_err("folder_resource"))?;
        txn.execute(
            "UPDATE point SET int_cores = int_cores + $2, int_gpus = int_gpus + $3
             WHERE pk_dept = (SELECT pk_dept FROM job WHERE pk_job = $1) AND pk_show = (SELECT pk_show FROM job WHERE pk_job = $1)",
            &[&job, &(c as i32), &(g as i32)],
        )
        .map_err(db_err("point"))?;
        txn.commit().map_err(db_err("commit booking"))?;
        Ok(Some(proc_row.get(0)))
    }

    /// Transaction 1: the frame's new state, then the proc lets go of it.
    fn stop_frame(&self, client: &mut Client, frame_id: &str, done: Completion) -> Result<Option<String>, String> {
        self.note(Write::Begin);
        let mut txn = client.transaction().map_err(db_err("begin stop"))?;
        let row = txn
            .query_opt(
                "SELECT f.int_version, f.int_retries, j.int_max_retries::bigint, j.b_autoeat
                 FROM frame f JOIN job j ON j.pk_job = f.pk_job WHERE f.pk_frame = $1 AND f.str_state = 'RUNNING'",
                &[&frame_id],
            )
            .map_err(db_err("read frame"))?;
        let Some(row) = row else {
            self.note(Write::Rollback);
            txn.rollback().map_err(db_err("rollback"))?;
            return Ok(None);
        };
        let (version, retries, max_retries, autoeat): (Option<i32>, i64, i64, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let state = new_state(done.exit_status, retries, max_retries, autoeat);
        self.note(Write::StopFrame);
        let changed = txn
            .execute(
                "UPDATE frame SET str_state = $2, int_exit_status = $3, ts_stopped = now() + interval '1 second',
                        ts_updated = now(), int_mem_max_used = $4, int_version = int_version + 1,
                        int_total_past_core_time = int_total_past_core_time
                            + round(extract(epoch FROM (now() + interval '1 second' - COALESCE(ts_started, now()))) * int_cores / 100)::int,
                        int_total_past_gpu_time = int_total_past_gpu_time
                            + round(extract(epoch FROM (now() + interval '1 second' - COALESCE(ts_started, now()))) * int_gpus)::int
                 WHERE pk_frame = $1 AND str_state = 'RUNNING' AND int_version IS NOT DISTINCT FROM $5",
                &[&frame_id, &state, &i64::from(done.exit_status), &done.max_rss_kib, &version],
            )
            .map_err(db_err("stop frame"))?;
        if changed == 1 {
            self.note(Write::DetachProc);
            txn.execute("UPDATE proc SET pk_frame = NULL WHERE pk_frame = $1", &[&frame_id]).map_err(db_err("detach proc"))?;
        }
        self.note(Write::Commit);
        txn.commit().map_err(db_err("commit stop"))?;
        Ok((changed == 1).then_some(state))
    }

    /// Transaction 2 (`deleteVirtualProc` + `procDestroyed`): delete the proc, restore the
    /// host, then the managed path (NOTIFY or nothing) or the five decrements.
    fn unbook_proc(&self, client: &mut Client, proc_id: &str, proc: &LoadedProc) -> Result<(), String> {
        // The flag is read (through the cache) on the same connection, as Cuebot's DAO does.
        let managed = !proc.local && self.managed_path(client, &proc.show)?;
        self.note(Write::Begin);
        let mut txn = client.transaction().map_err(db_err("begin unbook"))?;
        self.note(Write::DeleteProc);
        let row = txn
            .query_opt(
                "DELETE FROM proc WHERE pk_proc = $1
                 RETURNING int_cores_reserved, int_mem_reserved, int_gpus_reserved::bigint, int_gpu_mem_reserved",
                &[&proc_id],
            )
            .map_err(db_err("delete proc"))?;
        let Some(row) = row else {
            self.note(Write::Rollback);
            txn.rollback().map_err(db_err("rollback"))?;
            return Ok(());
        };
        // The values the DELETE returned, not the ones loaded earlier (Cuebot's own rule).
        let (cores, mem, gpus, gpu_mem): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        self.note(Write::RestoreHost);
        txn.execute(
            "UPDATE host SET int_cores_idle = int_cores_idle + $2, int_mem_idle = int_mem_idle + $3,
                    int_gpus_idle = int_gpus_idle + $4, int_gpu_mem_idle = int_gpu_mem_idle + $5 WHERE pk_host = $1",
            &[&proc.host, &cores, &mem, &gpus, &gpu_mem],
        )
        .map_err(db_err("restore host"))?;
        if managed {
            if self.mode.notifies() {
                // Java's int division truncates toward zero: 150 core units notify -1 core.
                let payload = format!(
                    "{{\"show\":\"{}\",\"alloc\":\"{}\",\"folder\":\"{}\",\"job\":\"{}\",\"layer\":\"{}\",\"dept\":\"{}\",\"cores\":{},\"gpus\":{}}}",
                    proc.show, proc.alloc, proc.folder, proc.job, proc.layer, proc.dept, -cores / 100, -gpus
                );
                self.notify(&mut txn, "acct_release", payload)?;
            }
        } else if proc.local {
            // Local (desk) bookings are Cuebot's own; the scheduler never makes them.
            self.note(Write::Decrement("layer_resource"));
            txn.execute(
                "UPDATE layer_resource SET int_cores = int_cores - $2, int_gpus = int_gpus - $3 WHERE pk_layer = $1",
                &[&proc.layer, &cores, &(gpus as i32)],
            )
            .map_err(db_err("layer_resource"))?;
        } else {
            self.decrement_five(&mut txn, proc, cores, gpus)?;
        }
        self.note(Write::Commit);
        txn.commit().map_err(db_err("commit unbook"))
    }

    /// The five decrements, each its own statement, in Cuebot's order.
    fn decrement_five(&self, txn: &mut postgres::Transaction, proc: &LoadedProc, cores: i64, gpus: i64) -> Result<(), String> {
        let (c, g) = (cores, gpus);
        self.note(Write::Decrement("subscription"));
        txn.execute(
            "UPDATE subscription SET int_cores = int_cores - $3, int_gpus = int_gpus - $4 WHERE pk_show = $1 AND pk_alloc = $2",
            &[&proc.show, &proc.alloc, &(c as i32), &(g as i32)],
        )
        .map_err(db_err("subscription"))?;
        self.note(Write::Decrement("layer_resource"));
        txn.execute(
            "UPDATE layer_resource SET int_cores = int_cores - $2, int_gpus = int_gpus - $3 WHERE pk_layer = $1",
            &[&proc.layer, &c, &(g as i32)],
        )
        .map_err(db_err("layer_resource"))?;
        self.note(Write::Decrement("job_resource"));
        txn.execute(
            "UPDATE job_resource SET int_cores = int_cores - $2, int_gpus = int_gpus - $3 WHERE pk_job = $1",
            &[&proc.job, &c, &(g as i32)],
        )
        .map_err(db_err("job_resource"))?;
        self.note(Write::Decrement("folder_resource"));
        txn.execute(
            "UPDATE folder_resource SET int_cores = int_cores - $2, int_gpus = int_gpus - $3
             WHERE pk_folder = (SELECT pk_folder FROM job WHERE pk_job = $1)",
            &[&proc.job, &(c as i32), &(g as i32)],
        )
        .map_err(db_err("folder_resource"))?;
        self.note(Write::Decrement("point"));
        txn.execute(
            "UPDATE point SET int_cores = int_cores - $2, int_gpus = int_gpus - $3
             WHERE pk_dept = (SELECT pk_dept FROM job WHERE pk_job = $1) AND pk_show = (SELECT pk_show FROM job WHERE pk_job = $1)",
            &[&proc.job, &(c as i32), &(g as i32)],
        )
        .map_err(db_err("point"))?;
        Ok(())
    }

    fn notify(&self, txn: &mut postgres::Transaction, channel: &'static str, payload: String) -> Result<(), String> {
        txn.query("SELECT pg_notify($1, $2)", &[&channel, &payload]).map_err(db_err("pg_notify"))?;
        self.note(Write::Notify { channel, payload });
        Ok(())
    }

    /// An admin cap change in one transaction, with its `acct_limit_change` NOTIFY when the
    /// show is managed and this Cuebot notifies.
    #[allow(clippy::too_many_arguments)] // one call per Cuebot DAO method; a struct would only rename them
    fn cap_change(
        &self,
        client: &mut Client,
        show: &str,
        what: &'static str,
        sql: &str,
        key: &str,
        value: &(dyn postgres::types::ToSql + Sync),
        payload: String,
    ) -> Result<(), String> {
        let notify = self.mode.notifies() && self.managed_path(client, show)?;
        self.note(Write::Begin);
        let mut txn = client.transaction().map_err(db_err("begin cap change"))?;
        self.note(Write::Update(what));
        txn.execute(sql, &[&key, value]).map_err(db_err(what))?;
        if notify {
            self.notify(&mut txn, "acct_limit_change", payload)?;
        }
        self.note(Write::Commit);
        txn.commit().map_err(db_err("commit cap change"))
    }

    /// `SubscriptionDaoJdbc.updateSubscriptionBurst` (core units).
    pub fn set_subscription_burst(&self, client: &mut Client, show: &str, alloc: &str, burst: i64) -> Result<(), String> {
        let row = client
            .query_opt("SELECT pk_subscription::text FROM subscription WHERE pk_show = $1 AND pk_alloc = $2", &[&show, &alloc])
            .map_err(db_err("find subscription"))?;
        let Some(row) = row else { return Err(format!("no subscription for show {show} on alloc {alloc}")) };
        let id: String = row.get(0);
        let payload = format!("{{\"vertex\":\"sub\",\"show\":\"{show}\",\"alloc\":\"{alloc}\",\"burst\":{}}}", burst / 100);
        self.cap_change(client, show, "subscription.int_burst", "UPDATE subscription SET int_burst = $2 WHERE pk_subscription = $1", &id, &burst, payload)
    }

    /// `JobDaoJdbc.updateMaxCores` (core units).
    pub fn set_job_max_cores(&self, client: &mut Client, job: &str, value: i32) -> Result<(), String> {
        let show = job_show(client, job)?;
        let shown = if value < 0 { -1 } else { value / 100 };
        let payload = format!("{{\"vertex\":\"job\",\"id\":\"{job}\",\"max_cores\":{shown}}}");
        self.cap_change(client, &show, "job_resource.int_max_cores", "UPDATE job_resource SET int_max_cores = $2 WHERE pk_job = $1", job, &value, payload)
    }

    /// `JobDaoJdbc.updateMaxGpus`.
    pub fn set_job_max_gpus(&self, client: &mut Client, job: &str, value: i32) -> Result<(), String> {
        let show = job_show(client, job)?;
        let payload = format!("{{\"vertex\":\"job\",\"id\":\"{job}\",\"max_gpus\":{value}}}");
        self.cap_change(client, &show, "job_resource.int_max_gpus", "UPDATE job_resource SET int_max_gpus = $2 WHERE pk_job = $1", job, &value, payload)
    }

    /// `GroupDaoJdbc.updateMaxCores` (core units; negative = no cap, stored as -1).
    pub fn set_folder_max_cores(&self, client: &mut Client, folder: &str, value: i32) -> Result<(), String> {
        let value = if value < 0 { -1 } else { value };
        let show = folder_show(client, folder)?;
        let shown = if value < 0 { -1 } else { value / 100 };
        let payload = format!("{{\"vertex\":\"folder\",\"id\":\"{folder}\",\"max_cores\":{shown}}}");
        self.cap_change(client, &show, "folder_resource.int_max_cores", "UPDATE folder_resource SET int_max_cores = $2 WHERE pk_folder = $1", folder, &value, payload)
    }

    /// `GroupDaoJdbc.updateMaxGpus`.
    pub fn set_folder_max_gpus(&self, client: &mut Client, folder: &str, value: i32) -> Result<(), String> {
        let value = if value < 0 { -1 } else { value };
        let show = folder_show(client, folder)?;
        let payload = format!("{{\"vertex\":\"folder\",\"id\":\"{folder}\",\"max_gpus\":{value}}}");
        self.cap_change(client, &show, "folder_resource.int_max_gpus", "UPDATE folder_resource SET int_max_gpus = $2 WHERE pk_folder = $1", folder, &value, payload)
    }

    /// `JobDaoJdbc.updateParent` with no inherited caps: the job moves to `folder` (and its
    /// department); the triggers move the job's booked cores between folders and points.
    pub fn move_job(&self, client: &mut Client, job: &str, folder: &str) -> Result<(), String> {
        self.note(Write::Begin);
        let mut txn = client.transaction().map_err(db_err("begin move"))?;
        self.note(Write::Update("job.pk_folder"));
        let moved = txn
            .execute(
                "UPDATE job SET pk_folder = $2::text, pk_dept = (SELECT pk_dept FROM folder WHERE pk_folder = $2::text) WHERE pk_job = $1",
                &[&job, &folder],
            )
            .map_err(db_err("move job"))?;
        if moved != 1 {
            return Err(format!("no job {job}"));
        }
        // The project's test schema has no job_history; Cuebot's real one does.
        let history: bool = txn
            .query_one("SELECT to_regclass('job_history') IS NOT NULL", &[])
            .map_err(db_err("job history"))?
            .get(0);
        if history {
            self.note(Write::Update("job_history.pk_dept"));
            txn.execute(
            "UPDATE job_history SET pk_dept = (SELECT pk_dept FROM folder WHERE pk_folder = $2::text) WHERE pk_job = $1",
                &[&job, &folder],
            )
            .map_err(db_err("job history"))?;
        }
        self.note(Write::Commit);
        txn.commit().map_err(db_err("commit move"))
    }
}

fn job_show(client: &mut Client, job: &str) -> Result<String, String> {
    let row = client.query_opt("SELECT pk_show::text FROM job WHERE pk_job = $1", &[&job]).map_err(db_err("job show"))?;
    row.map(|r| r.get(0)).ok_or_else(|| format!("no job {job}"))
}

fn folder_show(client: &mut Client, folder: &str) -> Result<String, String> {
    let row = client.query_opt("SELECT pk_show::text FROM folder WHERE pk_folder = $1", &[&folder]).map_err(db_err("folder show"))?;
    row.map(|r| r.get(0)).ok_or_else(|| format!("no folder {folder}"))
}

/// Cuebot's rule (§6.2), for the statuses a simulation produces.
pub fn new_state(exit_status: i32, retries: i64, max_retries: i64, autoeat: bool) -> String {
    let state = if exit_status == 0 {
        "SUCCEEDED"
    } else if exit_status == 286 || (exit_status == 256 && retries < max_retries) {
        "WAITING"
    } else if autoeat {
        "EATEN"
    } else if retries >= max_retries && exit_status != 33 {
        "DEAD"
    } else {
        "WAITING"
    };
    state.to_string()
}

/// Applies a completion report with a default (mode (b)) Cuebot. Prefer a long-lived `Cuebot`,
/// which keeps its managed-flag cache as Cuebot does.
pub fn complete_frame(client: &mut Client, frame_id: &str, proc_id: &str, done: Completion) -> Result<Released, String> {
    Cuebot::new(Mode::Notify).complete_frame(client, frame_id, proc_id, done)
}

#[cfg(test)]
mod tests {
    use super::{new_state, Mode};

    #[test]
    fn cuebot_state_rule() {
        let cases = [
            (0, 0, 3, false, "SUCCEEDED"),
            (256, 1, 3, false, "WAITING"),
            (1, 3, 3, false, "DEAD"),
            (1, 1, 3, false, "WAITING"),
            (1, 1, 3, true, "EATEN"),
            (33, 3, 3, false, "WAITING"),
            (286, 9, 3, false, "WAITING"),
        ];
        for (exit, retries, max, autoeat, want) in cases {
            assert_eq!(new_state(exit, retries, max, autoeat), want, "exit {exit} retries {retries}");
        }
    }

    #[test]
    fn mode_names_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.name()), Some(mode));
        }
        assert_eq!(Mode::parse("nope"), None);
    }
}
