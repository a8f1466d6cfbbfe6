//! State shared by the pipeline's threads: settings, metrics, the host cache, database
//! handles, the RQD client and the stop switches. Everything here is either immutable or
//! behind its own small lock or atomic.

use crate::db::booking::Booker;
use crate::db::Pool;
use crate::matching::host_cache::HostCache;
use crate::limits;
use crate::ops::metrics::Metrics;
use crate::rqd::RqdClient;
use crate::config::settings::{Settings, Tunables};
use crate::pipeline::ownership::{Serving, StatusView};
use crossbeam::queue::ArrayQueue;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct Context {
    /// Fixed at start-up. The reloadable subset lives in `tunables`.
    pub settings: Settings,
    tunables: RwLock<Tunables>,
    /// Set by a reload that changed the cluster selection; the fetcher reloads clusters.
    pub reload_clusters: AtomicBool,
    pub metrics: Arc<Metrics>,
    pub cache: HostCache,
    /// The scheduling policy's state: holds, fair-share signals (src/matching/policy.rs).
    pub policy: crate::matching::policy::Policy,
    pub pool: Pool,
    pub rqd: RqdClient,
    /// Schema has `show.b_scheduler_managed`: only managed shows are touched.
    pub managed_mode: bool,
    bookers: ArrayQueue<Booker>,
    /// Set when the process is asked to stop: no new passes, matchers finish their layer.
    pub stop: AtomicBool,
    /// After this instant, queued launches are compensated instead of sent.
    pub drain_deadline: Mutex<Option<Instant>>,
    /// Frames whose name or range cannot be prepared (§7.1 #23); never booked again by us.
    pub unlaunchable: Mutex<HashSet<String>>,
    /// Jobs that found no host for any layer, skipped until the instant (job_back_off_duration),
    /// or until a cache refresh sees capacity grow.
    job_backoff: Mutex<std::collections::HashMap<String, Instant>>,
    pub db_reachable: AtomicBool,
    pub clusters_loaded: AtomicBool,
    pub frames_booked: AtomicU64,
    pub frames_launched: AtomicU64,
    pub frames_compensated: AtomicU64,
    /// Shows whose clusters should wake now (a release was reconciled or a cap raised); the
    /// fetcher drains it. `wake_everything` asks for all clusters.
    wake_requests: Mutex<HashSet<String>>,
    wake_everything: AtomicBool,
    /// Failed compensations, retried by the recovery thread.
    pub compensation_retries: crate::pipeline::recovery::Retries,
    /// Shows of the clusters this instance serves (set at start-up and at each reload).
    show_ids: RwLock<Vec<String>>,
    /// The cluster set, and a counter bumped whenever it is set (the ownership thread re-reads
    /// its candidacy then).
    clusters: RwLock<Arc<Vec<crate::model::Cluster>>>,
    clusters_generation: AtomicU64,
    /// What this instance owns and serves now (`pipeline::ownership`).
    serving: RwLock<Arc<Serving>>,
    ownership_status: Mutex<StatusView>,
    /// Frames this instance booked lately (bounded, oldest forgotten first), to tell a frame
    /// lost to our own other pass from one lost to another booker.
    recent_booked: Mutex<(HashSet<String>, std::collections::VecDeque<String>)>,
    /// Frames some booking of this instance is booking right now, with how many bookings hold
    /// each (see `Context::booking`).
    in_flight: Mutex<std::collections::HashMap<String, u32>>,
    /// Layers of other instances' slots this instance left alone, since when.
    left_alone: Mutex<std::collections::HashMap<String, Instant>>,
    /// Pipeline threads: name -> last sign of progress. A thread that dies is recorded in
    /// `dead_thread`, and the process stops (exit code 70) so its supervisor restarts it.
    heartbeats: Mutex<std::collections::HashMap<String, Instant>>,
    dead_thread: Mutex<Option<String>>,
}

impl Context {
    pub fn new(settings: Settings, metrics: Arc<Metrics>, pool: Pool, managed_mode: bool) -> Context {
        let cache = HostCache::new(settings.cache.clone());
        let rqd = RqdClient::new(settings.rqd_port, settings.rqd_timeout);
        // Every thread that may book at once keeps its booker (and its connection with the
        // prepared, planned statements): each matcher's pool threads, the dispatch threads
        // (compensation), the recovery sweep and the fetcher. A booker beyond this is dropped.
        let booking_threads = settings.cluster_buffer_size.saturating_mul(settings.matcher_threads).saturating_add(settings.dispatch_threads + 2);
        let bookers = ArrayQueue::new(booking_threads.clamp(1, limits::BOOKING_CONNECTIONS_KEPT_MAX));
        Context {
            policy: crate::matching::policy::Policy::new(settings.scheduling.clone()),
            tunables: RwLock::new(settings.tunables.clone()),
            reload_clusters: AtomicBool::new(false),
            settings,
            metrics,
            cache,
            pool,
            rqd,
            managed_mode,
            bookers,
            stop: AtomicBool::new(false),
            drain_deadline: Mutex::new(None),
            unlaunchable: Mutex::new(HashSet::new()),
            job_backoff: Mutex::new(std::collections::HashMap::new()),
            db_reachable: AtomicBool::new(false),
            clusters_loaded: AtomicBool::new(false),
            frames_booked: AtomicU64::new(0),
            frames_launched: AtomicU64::new(0),
            frames_compensated: AtomicU64::new(0),
            wake_requests: Mutex::new(HashSet::new()),
            wake_everything: AtomicBool::new(false),
            compensation_retries: crate::pipeline::recovery::Retries::default(),
            show_ids: RwLock::new(Vec::new()),
            clusters: RwLock::new(Arc::new(Vec::new())),
            clusters_generation: AtomicU64::new(0),
            serving: RwLock::new(Arc::new(Serving::nothing())),
            ownership_status: Mutex::new(StatusView::default()),
            recent_booked: Mutex::new((HashSet::new(), std::collections::VecDeque::new())),
            in_flight: Mutex::new(std::collections::HashMap::new()),
            left_alone: Mutex::new(std::collections::HashMap::new()),
            heartbeats: Mutex::new(std::collections::HashMap::new()),
            dead_thread: Mutex::new(None),
        }
    }

    /// The current reloadable settings.
    pub fn tunables(&self) -> RwLockReadGuard<'_, Tunables> {
        self.tunables.read()
    }

    /// Installs reloaded settings; returns what changed.
    pub fn apply_tunables(&self, new: Tunables) -> Vec<String> {
        let mut current = self.tunables.write();
        let changes = new.changes_from(&current);
        if new.selection != current.selection {
            self.reload_clusters.store(true, Ordering::SeqCst);
        }
        *current = new;
        changes
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Runs `f` with a booking connection from the bounded set (made on first use).
    pub fn with_booker<T>(&self, f: impl FnOnce(&mut Booker) -> T) -> T {
        let mut booker = self.bookers.pop().unwrap_or_else(|| Booker::new(self.settings.db.clone(), self.managed_mode));
        let result = f(&mut booker);
        let _ = self.bookers.push(booker);
        result
    }

    pub fn mark_unlaunchable(&self, frame_id: &str) -> bool {
        let mut set = self.unlaunchable.lock();
        if set.len() >= limits::UNLAUNCHABLE_FRAMES_MAX {
            set.clear();
        }
        set.insert(frame_id.to_string())
    }

    /// Frames never to fetch again (bounded by `limits::UNLAUNCHABLE_FRAMES_MAX`).
    pub fn unlaunchable_frames(&self) -> Vec<String> {
        self.unlaunchable.lock().iter().cloned().collect()
    }

    pub fn is_unlaunchable(&self, frame_id: &str) -> bool {
        self.unlaunchable.lock().contains(frame_id)
    }

    /// Whether `key` (cluster and job) is backed off right now.
    pub fn job_backed_off(&self, key: &str) -> bool {
        let mut map = self.job_backoff.lock();
        match map.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    pub fn back_off_job(&self, key: &str) {
        let duration = self.settings.job_back_off;
        if duration.is_zero() {
            return;
        }
        let mut map = self.job_backoff.lock();
        if map.len() >= limits::BACKED_OFF_JOBS_MAX {
            map.clear();
        }
        map.insert(key.to_string(), limits::deadline_after(duration));
    }

    /// Capacity appeared somewhere: every backed-off job may try again.
    pub fn wake_backed_off_jobs(&self) {
        self.job_backoff.lock().clear();
    }

    /// Asks the fetcher to wake the clusters of `shows` (bounded: past
    /// `limits::WAKE_REQUESTS_MAX` shows it wakes everything instead).
    pub fn wake_shows(&self, shows: impl IntoIterator<Item = String>) {
        let mut set = self.wake_requests.lock();
        set.extend(shows);
        if set.len() > limits::WAKE_REQUESTS_MAX {
            set.clear();
            self.wake_everything.store(true, Ordering::SeqCst);
        }
        self.wake_backed_off_jobs();
    }

    pub fn wake_all(&self) {
        self.wake_everything.store(true, Ordering::SeqCst);
        self.wake_backed_off_jobs();
    }

    /// What the fetcher should wake: `None` for everything.
    pub fn take_wake_requests(&self) -> Option<HashSet<String>> {
        let set = std::mem::take(&mut *self.wake_requests.lock());
        if self.wake_everything.swap(false, Ordering::SeqCst) {
            None
        } else {
            Some(set)
        }
    }

    pub fn set_clusters(&self, clusters: &[crate::model::Cluster]) {
        let mut shows: Vec<String> = clusters.iter().map(|c| c.show_id.clone()).collect();
        shows.sort();
        shows.dedup();
        *self.show_ids.write() = shows;
        *self.clusters.write() = Arc::new(clusters.to_vec());
        self.clusters_generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn clusters(&self) -> Arc<Vec<crate::model::Cluster>> {
        Arc::clone(&self.clusters.read())
    }

    pub fn clusters_generation(&self) -> u64 {
        self.clusters_generation.load(Ordering::SeqCst)
    }

    /// What this instance may serve now.
    pub fn serving(&self) -> Arc<Serving> {
        Arc::clone(&self.serving.read())
    }

    /// Installs a tick's ownership: the host cache keeps only owned pools' hosts and refuses
    /// checkouts once it lapses; a change wakes every cluster.
    pub fn set_serving(&self, serving: Serving) {
        let changed = self.serving.read().allocs != serving.allocs;
        self.cache.set_serving(&serving.allocs, serving.valid_until);
        *self.serving.write() = Arc::new(serving);
        if changed {
            self.wake_all();
        }
    }

    /// Remembers frames this instance just booked (`limits::RECENT_BOOKED_FRAMES_MAX`).
    pub fn note_booked<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut guard = self.recent_booked.lock();
        let (set, order) = &mut *guard;
        for id in ids {
            if set.insert(id.to_string()) {
                order.push_back(id.to_string());
            }
        }
        while order.len() > limits::RECENT_BOOKED_FRAMES_MAX {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }

    /// Whether to leave another slot's layer to the instances before this one now (`turn` of
    /// them, `Serving::turn`): yes for the first `turn × limits::STEAL_AFTER_MS` after this
    /// instance first left it alone, then no (they may have no room for it).
    pub fn leave_to_owner(&self, layer_id: &str, turn: u32) -> bool {
        let now = Instant::now();
        let window = std::time::Duration::from_millis(limits::STEAL_AFTER_MS * u64::from(turn.max(1)));
        let mut map = self.left_alone.lock();
        if map.len() >= limits::LEFT_ALONE_LAYERS_MAX {
            map.retain(|_, since| now.duration_since(*since) < window * 10);
            if map.len() >= limits::LEFT_ALONE_LAYERS_MAX {
                map.clear();
            }
        }
        let since = *map.entry(layer_id.to_string()).or_insert(now);
        now.duration_since(since) < window
    }

    /// Marks `ids` as being booked by one booking of this instance until the guard drops. Held
    /// across the booking statement, the lost-frame check and `note_booked`: another booking
    /// of ours that took one of these frames first either still holds it here or has already
    /// noted it as booked, so `taken_here` never mistakes our own race for another booker's.
    pub fn booking<'a>(&'a self, ids: Vec<String>) -> InFlight<'a> {
        let mut map = self.in_flight.lock();
        for id in &ids {
            *map.entry(id.clone()).or_insert(0) += 1;
        }
        InFlight { ctx: self, ids }
    }

    /// Whether a frame that a booking holding an `InFlight` guard for it lost went to this
    /// instance: booked by us lately, or held by another of our bookings (count 2 or more).
    pub fn taken_here(&self, id: &str) -> bool {
        self.recent_booked.lock().0.contains(id) || self.in_flight.lock().get(id).is_some_and(|n| *n >= 2)
    }

    pub fn set_ownership_status(&self, status: StatusView) {
        *self.ownership_status.lock() = status;
    }

    pub fn ownership_status(&self) -> StatusView {
        self.ownership_status.lock().clone()
    }

    pub fn show_ids(&self) -> Vec<String> {
        self.show_ids.read().clone()
    }

    /// The calling thread shows it is making progress (or waiting for work, which is fine).
    pub fn beat(&self) {
        if let Some(name) = std::thread::current().name() {
            self.heartbeats.lock().insert(name.to_string(), Instant::now());
        }
    }

    /// Waits for the next item of a pipeline channel while showing the thread is alive:
    /// beats every `10 × SHUTDOWN_POLL_MS` while idle. `None` once the channel is closed.
    pub fn recv_beating<T>(&self, rx: &crossbeam::channel::Receiver<T>) -> Option<T> {
        loop {
            self.beat();
            self.test_panic_hook();
            match rx.recv_timeout(std::time::Duration::from_millis(limits::SHUTDOWN_POLL_MS * 10)) {
                Ok(item) => return Some(item),
                Err(crossbeam::channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam::channel::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The calling thread ended (normally or not): it is no longer watched for stalls.
    pub fn forget_heartbeat(&self) {
        if let Some(name) = std::thread::current().name() {
            self.heartbeats.lock().remove(name);
        }
    }

    /// A pipeline thread died: /readyz says so, the metric counts it, and the process stops.
    pub fn thread_died(&self, name: &str, why: &str) {
        self.metrics.thread_deaths_total.with_label_values(&[name]).inc();
        error!("thread {name} died ({why}); stopping so that the service manager restarts the scheduler");
        self.dead_thread.lock().get_or_insert_with(|| name.to_string());
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn dead_thread(&self) -> Option<String> {
        self.dead_thread.lock().clone()
    }

    /// Ready: database reachable, clusters loaded, no pipeline thread dead or stalled.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(name) = self.dead_thread() {
            return Err(format!("thread {name} died"));
        }
        let stalled: Vec<String> = self
            .heartbeats
            .lock()
            .iter()
            .filter(|(_, t)| t.elapsed() > std::time::Duration::from_secs(limits::THREAD_STALL_SECS))
            .map(|(n, t)| format!("{n} (no progress for {:.0} s)", t.elapsed().as_secs_f64()))
            .collect();
        if !stalled.is_empty() {
            return Err(format!("stalled threads: {}", stalled.join(", ")));
        }
        let db = self.db_reachable.load(Ordering::Relaxed);
        let clusters = self.clusters_loaded.load(Ordering::Relaxed);
        if db && clusters {
            Ok(())
        } else {
            Err(format!("database_reachable={db} clusters_loaded={clusters}"))
        }
    }

    /// Test hook (debug builds only): panics the calling thread when
    /// `CUE_SCHEDULER_TEST_PANIC_THREAD` names it, to prove supervision works. Release builds
    /// never read the variable.
    pub fn test_panic_hook(&self) {
        if cfg!(debug_assertions) {
            if let (Ok(target), Some(name)) = (std::env::var("CUE_SCHEDULER_TEST_PANIC_THREAD"), std::thread::current().name()) {
                if target == name {
                    panic!("test hook: CUE_SCHEDULER_TEST_PANIC_THREAD={target}");
                }
            }
        }
    }

    pub fn count_error(&self, module: &str) {
        self.metrics.errors_total.with_label_values(&[module]).inc();
    }
}

/// Frames one booking of this instance holds (`Context::booking`); released on drop.
pub struct InFlight<'a> {
    ctx: &'a Context,
    ids: Vec<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.ctx.in_flight.lock();
        for id in &self.ids {
            if let Some(n) = map.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(id);
                }
            }
        }
    }
}
