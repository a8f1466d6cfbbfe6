//! The job-fetcher thread: round-robins the clusters, never emitting one that is in flight or
//! asleep, runs one pending-work query per pass and hands the pass to the matchers over a
//! bounded channel. It also reloads the cluster set, runs the awake scan that wakes clusters
//! sleeping on "no work" as soon as work appears, and logs the heartbeat.

use crate::matching::clusters;
use crate::pipeline::context::Context;
use crate::db::{self, DbError};
use crate::model::{Cluster, ClusterKind};
use crate::pipeline::pass::{Pass, PassResult};
use crate::db::queries;
use crate::matching::policy::{Pool, SubscriptionRow};
use crossbeam::channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use postgres::{Client, Statement};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Sent back by a matcher when it finished a pass.
pub struct PassDone {
    pub cluster: Cluster,
    pub result: PassResult,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SleepReason {
    NoWork,
    Saturated,
}

struct Slot {
    cluster: Cluster,
    in_flight: bool,
    wake_at: Option<(Instant, SleepReason)>,
    last_emitted: Option<Instant>,
    /// When the accounting thread last woke it (such wake-ups are rate-limited).
    last_accounting_wake: Option<Instant>,
}

/// The fetcher's own connection with the pass query prepared.
struct FetchConnection {
    client: Client,
    pass: Statement,
    awake: Statement,
    probe: Statement,
}

/// The wake probe: (waiting frames of pending jobs, pending jobs, newest job start, idle
/// cores of open hosts).
const PROBE_SQL: &str = "
    SELECT COALESCE(sum(js.int_waiting_count), 0)::bigint, count(*)::bigint,
           COALESCE(extract(epoch FROM max(j.ts_started)), 0)::float8,
           (SELECT COALESCE(sum(int_cores_idle), 0)::bigint FROM host WHERE str_lock_state = 'OPEN')
    FROM job j JOIN job_stat js ON js.pk_job = j.pk_job
    WHERE j.str_state = 'PENDING' AND NOT j.b_paused";

#[derive(Clone, Copy, Debug, PartialEq)]
struct ProbeSignature {
    waiting: i64,
    jobs: i64,
    newest: f64,
    idle_cores: i64,
}

impl ProbeSignature {
    /// New work may have appeared since `before`.
    fn has_news_since(&self, before: &ProbeSignature) -> bool {
        self.waiting > before.waiting || self.jobs > before.jobs || self.newest > before.newest
    }

    /// Frames finished (or hosts came back) since `before`: capacity grew.
    fn has_capacity_since(&self, before: &ProbeSignature) -> bool {
        self.idle_cores > before.idle_cores
    }
}

/// Lists (show, tag) pairs with dispatchable work: the awake scan. A superset of the pass
/// query's jobs, and it honours `ts_start_after` (upstream did not).
fn awake_sql(managed_mode: bool) -> String {
    let managed = if managed_mode { " AND s.b_scheduler_managed" } else { "" };
    format!(
        "SELECT DISTINCT j.pk_show::text, j.pk_facility::text, t.tag
         FROM job j
         JOIN show s ON s.pk_show = j.pk_show
         JOIN layer l ON l.pk_job = j.pk_job
         JOIN layer_stat ls ON ls.pk_layer = l.pk_layer
         CROSS JOIN LATERAL unnest(string_to_array(replace(l.str_tags, ' ', ''), '|')) AS t(tag)
         WHERE j.str_state = 'PENDING' AND NOT j.b_paused AND s.b_active{managed}
           AND ls.int_waiting_count > 0
           AND (l.ts_start_after IS NULL OR l.ts_start_after <= now())
           AND EXISTS (SELECT 1 FROM subscription sub WHERE sub.pk_show = j.pk_show AND sub.int_burst > 0)"
    )
}

impl FetchConnection {
    fn open(ctx: &Context) -> Result<FetchConnection, DbError> {
        let mut client = db::connect(&ctx.settings.db, "fetcher connection")?;
        let pass = client.prepare(&queries::pass_sql(ctx.managed_mode)).map_err(DbError::query("prepare pass query"))?;
        let awake = client.prepare(&awake_sql(ctx.managed_mode)).map_err(DbError::query("prepare awake scan"))?;
        let probe = client.prepare(PROBE_SQL).map_err(DbError::query("prepare wake probe"))?;
        Ok(FetchConnection { client, pass, awake, probe })
    }
}

/// Loads the cluster set from the database under the configured selection.
pub fn load_clusters(ctx: &Context, client: &mut Client, facility_id: Option<&str>) -> Result<Vec<Cluster>, String> {
    let rows = queries::discover_cluster_rows(client, ctx.managed_mode, facility_id).map_err(|e| e.to_string())?;
    clusters::build(&rows, &ctx.tunables().selection).map_err(|e| e.to_string())
}

pub struct Feed<'a> {
    ctx: &'a Context,
    facility_id: Option<String>,
    slots: Vec<Slot>,
    next: usize,
    connection: Option<FetchConnection>,
    empty_passes: u64,
    last_reload: Instant,
    last_scan: Instant,
    last_heartbeat: Instant,
    last_probe: Instant,
    probe: Option<ProbeSignature>,
    passes: u64,
    /// The last query error per cluster: a repeat is logged at debug, not again as an error.
    failing: HashMap<Cluster, String>,
    /// Policy `smart`: when subscriptions were last read for fair share.
    last_policy_refresh: Option<Instant>,
}

impl<'a> Feed<'a> {
    pub fn new(ctx: &'a Context, facility_id: Option<String>, clusters: Vec<Cluster>) -> Feed<'a> {
        let now = Instant::now();
        let slots = clusters.into_iter().map(|cluster| Slot { cluster, in_flight: false, wake_at: None, last_emitted: None, last_accounting_wake: None }).collect();
        Feed {
            ctx,
            facility_id,
            slots,
            next: 0,
            connection: None,
            empty_passes: 0,
            last_reload: now,
            last_scan: now,
            last_heartbeat: now,
            last_probe: now,
            probe: None,
            passes: 0,
            failing: HashMap::new(),
            last_policy_refresh: None,
        }
    }

    fn connection(&mut self) -> Result<&mut FetchConnection, DbError> {
        if self.connection.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.connection = None;
        }
        if self.connection.is_none() {
            self.connection = Some(FetchConnection::open(self.ctx)?);
        }
        self.connection.as_mut().ok_or(DbError::Connect { context: "fetcher connection", message: "unavailable".into() })
    }

    /// Runs until the context is stopped or the pass channel closes.
    pub fn run(mut self, passes: Sender<Pass>, done: Receiver<PassDone>) {
        info!("job fetcher started with {} clusters", self.slots.len());
        while !self.ctx.stopping() {
            self.ctx.beat();
            self.ctx.test_panic_hook();
            self.settle(&done);
            self.maintain();
            let Some(index) = self.pick() else {
                let wait = self.idle_wait();
                match done.recv_timeout(wait) {
                    Ok(finished) => self.finish(finished),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                continue;
            };
            if let Some(pass) = self.fetch(index) {
                if !self.send(&passes, pass) {
                    break;
                }
            }
        }
        info!("job fetcher stopped after {} passes", self.passes);
    }

    fn settle(&mut self, done: &Receiver<PassDone>) {
        while let Ok(finished) = done.try_recv() {
            self.finish(finished);
        }
    }

    fn finish(&mut self, finished: PassDone) {
        let settings = self.ctx.tunables().clone();
        let Some(slot) = self.slots.iter_mut().find(|s| s.cluster == finished.cluster) else { return };
        slot.in_flight = false;
        let label = slot.cluster.kind.label();
        self.ctx.metrics.frames_dispatched_per_pass.with_label_values(&[label]).observe(finished.result.frames_booked as f64);
        let (sleep, reason) = sleep_after(&finished.result, settings.cluster_empty_sleep, settings.cluster_saturated_sleep);
        slot.wake_at = sleep.map(|wait| (crate::limits::deadline_after(wait), SleepReason::Saturated));
        debug!("cluster {}: pass booked {} frames ({reason}); next in {:?}", slot.cluster, finished.result.frames_booked, sleep.unwrap_or_default());
        self.ctx.metrics.pass_terminated_reason_total.with_label_values(&[reason]).inc();
    }

    /// Reload, awake scan, heartbeat and gauges, each when due.
    fn maintain(&mut self) {
        let now = Instant::now();
        let settings = self.ctx.tunables().clone();
        let reload_asked = self.ctx.reload_clusters.swap(false, Ordering::SeqCst);
        if reload_asked || now.duration_since(self.last_reload) >= settings.cluster_reload_interval {
            self.last_reload = now;
            self.reload();
        }
        let mut scan_due = now.duration_since(self.last_scan) >= settings.active_scan_interval;
        if !scan_due && now.duration_since(self.last_probe) >= Duration::from_millis(crate::limits::WAKE_PROBE_INTERVAL_MS) {
            self.last_probe = now;
            scan_due = self.probe_news();
        }
        if scan_due {
            self.last_scan = now;
            self.awake_scan();
        }
        self.apply_wake_requests();
        self.refresh_policy();
        if now.duration_since(self.last_heartbeat) >= settings.monitor_interval {
            self.last_heartbeat = now;
            self.heartbeat();
        }
    }

    fn reload(&mut self) {
        let facility = self.facility_id.clone();
        let ctx = self.ctx;
        let loaded = match self.connection() {
            Ok(conn) => load_clusters(ctx, &mut conn.client, facility.as_deref()),
            Err(e) => Err(e.to_string()),
        };
        match loaded {
            Err(e) => {
                self.ctx.count_error("feed");
                warn!("cluster reload failed, keeping the current set: {e}");
            }
            Ok(clusters) => {
                self.ctx.set_clusters(&clusters);
                let old: HashSet<&Cluster> = self.slots.iter().map(|s| &s.cluster).collect();
                let new: HashSet<&Cluster> = clusters.iter().collect();
                if old == new {
                    return;
                }
                info!("cluster set changed: {} -> {} clusters", old.len(), new.len());
                let mut previous: HashMap<Cluster, Slot> = self.slots.drain(..).map(|s| (s.cluster.clone(), s)).collect();
                self.slots = clusters
                    .into_iter()
                    .map(|cluster| {
                        previous.remove(&cluster).unwrap_or(Slot { cluster, in_flight: false, wake_at: None, last_emitted: None, last_accounting_wake: None })
                    })
                    .collect();
                self.next = 0;
            }
        }
    }

    /// Runs the wake probe; true when new work may have appeared (or the probe failed).
    fn probe_news(&mut self) -> bool {
        let row = match self.connection() {
            Ok(conn) => conn.client.query_one(&conn.probe, &[]).map_err(DbError::query("wake probe")),
            Err(e) => Err(e),
        };
        let signature = row.and_then(|row| {
            Ok(ProbeSignature {
                waiting: queries::col(&row, 0, "wake probe")?,
                jobs: queries::col(&row, 1, "wake probe")?,
                newest: queries::col(&row, 2, "wake probe")?,
                idle_cores: queries::col(&row, 3, "wake probe")?,
            })
        });
        match signature {
            Ok(signature) => {
                let news = self.probe.is_none_or(|before| signature.has_news_since(&before));
                if self.probe.is_some_and(|before| signature.has_capacity_since(&before)) {
                    self.wake_saturated();
                }
                self.probe = Some(signature);
                news
            }
            Err(e) => {
                self.ctx.count_error("feed");
                debug!("wake probe failed: {e}");
                true
            }
        }
    }

    /// Capacity grew: clusters sleeping because nothing fitted, and backed-off jobs, try again.
    /// Wakes the clusters of shows the accounting thread named (a release reconciled, a cap
    /// raised): their work may fit now, whatever they were sleeping for.
    fn apply_wake_requests(&mut self) {
        let requests = self.ctx.take_wake_requests();
        if requests.as_ref().is_some_and(|set| set.is_empty()) {
            return;
        }
        let now = Instant::now();
        let min_gap = Duration::from_millis(crate::limits::ACCOUNTING_WAKE_MIN_MS);
        for slot in &mut self.slots {
            if slot.wake_at.is_none() || !requests.as_ref().is_none_or(|set| set.contains(&slot.cluster.show_id)) {
                continue;
            }
            // A show releasing hundreds of frames a second would otherwise be re-queried
            // continuously; one pass per interval finds whatever the releases freed.
            if let Some(last) = slot.last_accounting_wake.filter(|t| now.duration_since(*t) < min_gap) {
                // Too soon: wake it when the interval ends instead (if it sleeps longer).
                let at = last + min_gap;
                if let Some((until, reason)) = slot.wake_at {
                    if until > at {
                        slot.wake_at = Some((at, reason));
                    }
                }
                continue;
            }
            slot.last_accounting_wake = Some(now);
            slot.wake_at = None;
        }
    }

    fn wake_saturated(&mut self) {
        for slot in &mut self.slots {
            if matches!(slot.wake_at, Some((_, SleepReason::Saturated))) {
                slot.wake_at = None;
            }
        }
        self.ctx.wake_backed_off_jobs();
    }

    fn awake_scan(&mut self) {
        let started = Instant::now();
        let rows = match self.connection() {
            Ok(conn) => conn.client.query(&conn.awake, &[]).map_err(DbError::query("awake scan")),
            Err(e) => Err(e),
        };
        self.ctx.metrics.active_scan_duration_seconds.observe(started.elapsed().as_secs_f64());
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                self.ctx.count_error("feed");
                self.ctx.db_reachable.store(false, Ordering::Relaxed);
                warn!("awake scan failed: {e}");
                return;
            }
        };
        self.ctx.metrics.active_tags.set(rows.len() as i64);
        let mut with_work: HashSet<(String, String, String)> = HashSet::with_capacity(rows.len());
        for row in &rows {
            if let (Ok(show), Ok(facility), Ok(tag)) = (row.try_get(0), row.try_get(1), row.try_get(2)) {
                with_work.insert((show, facility, tag));
            }
        }
        for slot in &mut self.slots {
            let has_work = slot.cluster.tags.iter().any(|tag| {
                with_work.contains(&(slot.cluster.show_id.clone(), slot.cluster.facility_id.clone(), tag.clone()))
            });
            if has_work && matches!(slot.wake_at, Some((_, SleepReason::NoWork))) {
                slot.wake_at = None;
            }
        }
    }

    fn heartbeat(&mut self) {
        let now = Instant::now();
        let sleeping = self.slots.iter().filter(|s| s.wake_at.is_some_and(|(t, _)| t > now)).count();
        self.ctx.metrics.clusters_sleeping.set(sleeping as i64);
        self.ctx.metrics.clusters_active.set((self.slots.len() - sleeping) as i64);
        for kind in ["alloc", "manual", "hostname", "hardware"] {
            let n = self.slots.iter().filter(|s| s.cluster.kind.label() == kind).count();
            self.ctx.metrics.clusters_total.with_label_values(&[kind]).set(n as i64);
        }
        info!(
            "heartbeat: {} clusters ({} asleep), {} passes, frames booked {}, launched {}, compensated {}, cached hosts {}",
            self.slots.len(),
            sleeping,
            self.passes,
            self.ctx.frames_booked.load(Ordering::Relaxed),
            self.ctx.frames_launched.load(Ordering::Relaxed),
            self.ctx.frames_compensated.load(Ordering::Relaxed),
            self.ctx.cache.host_count()
        );
    }

    /// The next cluster, round-robin, that is neither in flight nor asleep.
    fn pick(&mut self) -> Option<usize> {
        let now = Instant::now();
        let n = self.slots.len();
        let serving = self.ctx.serving();
        for offset in 0..n {
            let index = (self.next + offset) % n;
            let slot = &mut self.slots[index];
            // Only clusters this instance serves: its allocation owned, or (tag clusters) an
            // owned allocation carrying its tags. Nothing while ownership is not proven.
            if slot.in_flight || !serving.serves(&slot.cluster) {
                continue;
            }
            match slot.wake_at {
                Some((t, _)) if t > now => continue,
                Some(_) => slot.wake_at = None,
                None => {}
            }
            self.next = (index + 1) % n;
            return Some(index);
        }
        None
    }

    /// How long to wait for a pass to finish when nothing can be emitted.
    fn idle_wait(&self) -> Duration {
        let now = Instant::now();
        let earliest = self.slots.iter().filter(|s| !s.in_flight).filter_map(|s| s.wake_at.map(|(t, _)| t)).min();
        let until_wake = earliest.map_or(Duration::from_millis(100), |t| t.saturating_duration_since(now));
        let until_scan = self.ctx.tunables().active_scan_interval.saturating_sub(now.duration_since(self.last_scan));
        let until_probe = Duration::from_millis(crate::limits::WAKE_PROBE_INTERVAL_MS).saturating_sub(now.duration_since(self.last_probe));
        until_wake.min(until_scan).min(until_probe).clamp(Duration::from_millis(1), Duration::from_millis(crate::limits::SHUTDOWN_POLL_MS))
    }

    fn fetch(&mut self, index: usize) -> Option<Pass> {
        let cluster = self.slots[index].cluster.clone();
        let settings = &self.ctx.settings;
        let (jobs_max, frames_max) = (settings.jobs_per_pass as i64, settings.frames_per_layer as i64);
        let started = Instant::now();
        let skip = self.ctx.unlaunchable_frames();
        let share = self.ctx.serving().share();
        let policy = &self.ctx.policy;
        let aging_secs = policy.smart().then_some(policy.settings.aging_after.as_secs_f64());
        let hold_after_secs = (policy.smart() && policy.settings.reservations_max > 0).then_some(policy.settings.reservation_after.as_secs_f64());
        let result = match self.connection() {
            Ok(conn) => {
                let bounds = queries::PassBounds { jobs_max, frames_per_layer: frames_max, share, aging_secs, hold_after_secs };
                queries::fetch_pass(&mut conn.client, &conn.pass, &cluster, &bounds, &skip)
            }
            Err(e) => Err(e),
        };
        let ctx = self.ctx;
        ctx.metrics.job_query_duration_seconds.observe(started.elapsed().as_secs_f64());
        self.passes += 1;
        let now = Instant::now();
        if let Some(previous) = self.slots[index].last_emitted.replace(now) {
            ctx.metrics.cluster_round_trip_seconds.with_label_values(&[cluster.kind.label()]).observe(now.duration_since(previous).as_secs_f64());
        }
        let (work, alloc_headroom) = match result {
            Ok(found) => (found.work, found.alloc_headroom),
            Err(e) => {
                ctx.count_error("feed");
                ctx.db_reachable.store(!e.is_connection_lost(), Ordering::Relaxed);
                if e.is_connection_lost() {
                    self.connection = None;
                }
                let sleep = ctx.tunables().cluster_empty_sleep;
                self.slots[index].wake_at = Some((now + sleep, SleepReason::NoWork));
                let message = e.to_string();
                if self.failing.get(&cluster) == Some(&message) {
                    debug!("cluster {cluster}: pending-work query failed again: {message}");
                } else {
                    error!("cluster {cluster}: pending-work query failed, cluster sleeps {sleep:?}: {message}");
                    self.failing.insert(cluster.clone(), message);
                }
                ctx.metrics.pass_terminated_reason_total.with_label_values(&["query_error"]).inc();
                return None;
            }
        };
        ctx.db_reachable.store(true, Ordering::Relaxed);
        if self.failing.remove(&cluster).is_some() {
            info!("cluster {cluster}: pending-work query works again");
        }
        let jobs = count_jobs(&work);
        ctx.metrics.jobs_queried_total.inc_by(jobs as u64);
        if work.is_empty() {
            self.slots[index].wake_at = Some((now + ctx.tunables().cluster_empty_sleep, SleepReason::NoWork));
            ctx.metrics.pass_terminated_reason_total.with_label_values(&["no_jobs"]).inc();
            ctx.metrics.frames_dispatched_per_pass.with_label_values(&[cluster.kind.label()]).observe(0.0);
            self.empty_passes += 1;
            if let Some(limit) = ctx.settings.empty_job_cycles_before_quitting {
                if self.empty_passes >= limit {
                    info!("{} consecutive passes found no jobs (empty_job_cycles_before_quitting); stopping", self.empty_passes);
                    ctx.stop.store(true, Ordering::SeqCst);
                }
            }
            return None;
        }
        self.empty_passes = 0;
        self.slots[index].in_flight = true;
        debug!("cluster {cluster}: {jobs} jobs, {} layers to match", work.len());
        let fair_budget = self.fair_budget(&cluster, now);
        let alloc_room = std::sync::atomic::AtomicI64::new(match cluster.kind {
            ClusterKind::Alloc => alloc_headroom.unwrap_or(i64::MAX),
            _ => i64::MAX,
        });
        Some(Pass { cluster, work, fetched_at: started, alloc_room, fair_budget })
    }

    /// Policy `smart`, allocation clusters: the show's fair-share budget for the pass.
    fn fair_budget(&self, cluster: &Cluster, now: Instant) -> Option<std::sync::atomic::AtomicI64> {
        let policy = &self.ctx.policy;
        let alloc = cluster.alloc_id.as_ref().filter(|_| policy.smart())?;
        let budget = policy.budget(alloc, &cluster.show_id, now)?;
        self.ctx.metrics.fair_share_limited_total.inc();
        debug!("cluster {cluster}: held to its fair share, {budget} core units this pass");
        Some(std::sync::atomic::AtomicI64::new(budget))
    }

    /// Policy `smart`: re-reads subscriptions and pool sizes for fair share, drops holds whose
    /// frames left, and sets the policy's gauges.
    fn refresh_policy(&mut self) {
        let now = Instant::now();
        let policy = &self.ctx.policy;
        if !policy.smart() || self.last_policy_refresh.is_some_and(|t| now.duration_since(t) < Duration::from_millis(crate::limits::FAIR_SHARE_REFRESH_MS)) {
            return;
        }
        self.last_policy_refresh = Some(now);
        let unseen_max = Duration::from_millis(crate::limits::RESERVATION_UNSEEN_MAX_MS);
        for hold in policy.expire(now, unseen_max) {
            self.ctx.metrics.reservations_total.with_label_values(&["expired"]).inc();
            info!("hold on host {} for layer {} of job {} dropped: no pass saw the frame waiting for {:?}", hold.host_name, hold.layer_name, hold.job_name, unseen_max);
        }
        self.ctx.metrics.reservations_held.set(policy.holds().len() as i64);
        let read = match self.connection() {
            Ok(conn) => read_subscriptions(&mut conn.client),
            Err(e) => Err(e),
        };
        match read {
            Ok((rows, pools)) => policy.update_subscriptions(&rows, pools, now),
            Err(e) => {
                self.ctx.count_error("policy");
                debug!("cannot read subscriptions for fair share: {e}");
                return;
            }
        }
        for share in policy.shares(now) {
            self.ctx.metrics.show_share_ratio.with_label_values(&[&share.subscription.show_name, &share.subscription.alloc_name]).set(share.share);
        }
    }

    /// Blocks while the matchers are busy, waking to notice a stop.
    fn send(&mut self, passes: &Sender<Pass>, mut pass: Pass) -> bool {
        loop {
            match passes.send_timeout(pass, Duration::from_millis(crate::limits::SHUTDOWN_POLL_MS)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Disconnected(_)) => return false,
                Err(SendTimeoutError::Timeout(back)) => {
                    if self.ctx.stopping() {
                        let cluster = back.cluster.clone();
                        if let Some(slot) = self.slots.iter_mut().find(|s| s.cluster == cluster) {
                            slot.in_flight = false;
                        }
                        return false;
                    }
                    pass = back;
                }
            }
        }
    }
}

/// How long a cluster sleeps after a pass, and the pass's end reason. A pass that booked
/// nothing only because another booker got there first (its hosts checked out by another of
/// our passes, its frames taken by another pass or instance) looks again in
/// `CONTENDED_RETRY_MS`: sleeping `cluster_saturated_sleep` would leave a dispatchable layer
/// waiting beside a free host.
fn sleep_after(result: &PassResult, empty_sleep: Duration, saturated_sleep: Duration) -> (Option<Duration>, &'static str) {
    if result.subscription_full {
        (Some(empty_sleep), "saturated")
    } else if result.frames_booked == 0 && result.contended {
        (Some(Duration::from_millis(crate::limits::CONTENDED_RETRY_MS)), "contended")
    } else if result.frames_booked == 0 {
        (Some(saturated_sleep), "saturated")
    } else {
        (None, "booked")
    }
}

/// Subscriptions with their allocation and show names (core units), and each allocation's
/// cores on open hosts: the inputs of fair share. At most 10,000 subscriptions are read (a
/// farm has tens).
fn read_subscriptions(client: &mut Client) -> Result<(Vec<SubscriptionRow>, HashMap<String, Pool>), DbError> {
    const CTX: &str = "read subscriptions";
    let rows = client
        .query(
            "SELECT s.pk_alloc::text, a.str_name::text, s.pk_show::text, sh.str_name::text, s.int_size::bigint, s.int_cores::bigint
             FROM subscription s JOIN alloc a ON a.pk_alloc = s.pk_alloc JOIN show sh ON sh.pk_show = s.pk_show
             ORDER BY s.pk_alloc, s.pk_show LIMIT 10000",
            &[],
        )
        .map_err(DbError::query(CTX))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(SubscriptionRow {
            alloc_id: queries::col(row, 0, CTX)?,
            alloc_name: queries::col(row, 1, CTX)?,
            show_id: queries::col(row, 2, CTX)?,
            show_name: queries::col(row, 3, CTX)?,
            size: queries::col(row, 4, CTX)?,
            used: queries::col(row, 5, CTX)?,
        });
    }
    let pools = client
        .query(
            "SELECT pk_alloc::text, COALESCE(sum(int_cores), 0)::bigint, COALESCE(sum(int_cores_idle), 0)::bigint,
                    COALESCE(max(int_cores_idle), 0)::bigint
             FROM host WHERE str_lock_state = 'OPEN' GROUP BY pk_alloc",
            &[],
        )
        .map_err(DbError::query(CTX))?;
    let mut cores = HashMap::with_capacity(pools.len());
    for row in &pools {
        cores.insert(queries::col::<String>(row, 0, CTX)?, Pool { cores: queries::col(row, 1, CTX)?, idle: queries::col(row, 2, CTX)?, largest_idle: queries::col(row, 3, CTX)? });
    }
    Ok((out, cores))
}

fn count_jobs(work: &[crate::model::LayerWork]) -> usize {
    let mut jobs = 0;
    let mut last: Option<&str> = None;
    for w in work {
        if last != Some(w.job.id.as_str()) {
            jobs += 1;
            last = Some(w.job.id.as_str());
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::sleep_after;
    use crate::pipeline::pass::PassResult;
    use std::time::Duration;

    #[test]
    fn a_pass_that_lost_only_to_other_bookers_retries_at_once() {
        let settings = (Duration::from_secs(3), Duration::from_secs(5));
        let blocked = PassResult { frames_booked: 0, subscription_full: false, contended: true };
        let (sleep, reason) = sleep_after(&blocked, settings.0, settings.1);
        assert_eq!(reason, "contended");
        assert!(sleep.is_some_and(|s| s <= Duration::from_millis(200)), "{sleep:?}");
        let nothing_fits = PassResult { contended: false, ..blocked };
        assert_eq!(sleep_after(&nothing_fits, settings.0, settings.1), (Some(Duration::from_secs(5)), "saturated"));
        let booked = PassResult { frames_booked: 3, ..blocked };
        assert_eq!(sleep_after(&booked, settings.0, settings.1), (None, "booked"));
    }
}
