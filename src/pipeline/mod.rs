//! Wiring and lifecycle of the pipeline's threads.
//!
//! ```text
//! job-fetcher ──Pass (cap 16)──▶ matcher-N ──rayon pool "matcher-pool-N"──▶ Launch (cap 1024) ──▶ dispatch-N ──▶ RQD
//!      ▲                              │ book (DB txn), check host in/out
//!      └────────PassDone──────────────┘           host cache ◀── cache-refresh
//! metrics-http serves /metrics /healthz /readyz /status
//! ownership: which host pools this instance serves (fetcher and host cache follow it)
//! ```
//!
//! Shutdown order (`Pipeline::shutdown`): set the stop flag → the fetcher stops emitting and
//! drops the pass channel → matchers finish the host they are booking and exit → the launch
//! channel closes → dispatchers launch what is queued until the drain deadline, then
//! compensate the rest → cache refresher, recovery (one last try of queued compensations),
//! accounting (reconciles what it heard), ownership (its session closes, freeing its pools)
//! and HTTP server exit. Every thread is joined.

// The stages in the order data flows through them, then what serves them.
pub mod feed;
pub mod pass;
pub mod dispatch;
pub mod recovery;
pub mod context;
pub mod ownership;

use crate::pipeline::context::Context;
use crate::db::{self, DbError};
use feed::{Feed, PassDone};
use crate::ops::http;
use crate::limits;
use crate::ops::metrics::Metrics;
use crate::model::Cluster;
use pass::{Launch, Pass};
use crate::config::settings::Settings;
use crossbeam::channel::{bounded, unbounded};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum StartError {
    Database(DbError),
    Facility(String),
    Clusters(String),
    Metrics(String),
    Thread(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Database(e) => write!(f, "{e}"),
            StartError::Facility(name) => write!(f, "unknown facility `{name}` (no row in table facility with that str_name)"),
            StartError::Clusters(e) => write!(f, "cannot select clusters: {e}"),
            StartError::Metrics(e) => write!(f, "metrics endpoint: {e}"),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<DbError> for StartError {
    fn from(e: DbError) -> StartError {
        StartError::Database(e)
    }
}

pub struct Pipeline {
    pub ctx: Arc<Context>,
    pub clusters: Vec<Cluster>,
    pub metrics_port: Option<u16>,
    fetcher: Option<JoinHandle<()>>,
    matchers: Vec<JoinHandle<()>>,
    dispatchers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

/// Starts a named pipeline thread under supervision: if it panics, or returns while the
/// pipeline is not stopping, the context records the death (/readyz 503, a metric) and stops
/// the process, which exits 70 so that systemd (Restart=on-failure) starts a fresh one. A
/// restart of the whole process is chosen over restarting the thread: a thread that died
/// mid-pass may leave in-memory state (cache checkouts, in-flight clusters) half updated, and
/// every committed booking is launched or compensated by the shutdown and the stranded sweep.
fn spawn(ctx: &Arc<Context>, name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartError> {
    let ctx = Arc::clone(ctx);
    let thread_name = name.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            ctx.beat();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            ctx.forget_heartbeat();
            match outcome {
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    ctx.thread_died(&thread_name, &format!("panicked: {why}"));
                }
                Ok(()) if !ctx.stopping() => ctx.thread_died(&thread_name, "returned while the pipeline was running"),
                Ok(()) => {}
            }
        })
        .map_err(StartError::Thread)
}

impl Pipeline {
    /// Connects, resolves the facility, loads the clusters and starts every thread.
    pub fn start(mut settings: Settings, metrics: Arc<Metrics>) -> Result<Pipeline, StartError> {
        // Every session carries the instance's name, so peers can find (and fence) them all.
        static PIPELINES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        settings.db.instance = ownership::instance_id(PIPELINES.fetch_add(1, Ordering::SeqCst));
        // One direct connection first: an unreachable database fails fast (connect_timeout)
        // with the server's own message, instead of waiting out the pool's timeout.
        drop(db::connect(&settings.db, "start-up")?);
        let pool = db::pool(&settings.db)?;
        let mut client = db::get(&pool, "start-up")?;
        let managed_mode = db::column_exists(&mut client, "show", "b_scheduler_managed")?;
        if !managed_mode && !settings.tunables.selection.is_explicit() && !settings.cuebot_booking_off {
            return Err(StartError::Clusters(
                "this schema has no show.b_scheduler_managed, so Cuebot may still be booking every show: \
                 name the clusters with --alloc_tags/--manual_tags (and list them in Cuebot's \
                 dispatcher.exclusion_list), or pass --cuebot-booking-off once Cuebot runs with \
                 dispatcher.turn_off_booking=true"
                    .into(),
            ));
        }
        let facility_id = match &settings.facility {
            None => None,
            Some(name) => {
                let row = client
                    .query_opt("SELECT pk_facility::text FROM facility WHERE str_name = $1", &[name])
                    .map_err(DbError::query("resolve facility"))?;
                Some(row.and_then(|r| r.try_get::<_, String>(0).ok()).ok_or_else(|| StartError::Facility(name.clone()))?)
            }
        };
        let http_server = match settings.metrics_port {
            Some(port) => match http::bind(&settings.metrics_address, port) {
                Ok(server) => Some(server),
                Err(e) => {
                    // §6.1: a failed bind is logged and scheduling continues.
                    error!("{e}; continuing without the metrics endpoint");
                    None
                }
            },
            None => None,
        };
        let metrics_port = http_server.as_ref().and_then(|s| s.local_addr().map(|a| a.port()));
        let ctx = Arc::new(Context::new(settings, metrics, pool, managed_mode));
        let clusters = feed::load_clusters(&ctx, &mut client, facility_id.as_deref()).map_err(StartError::Clusters)?;
        drop(client);
        if managed_mode {
            info!("show.b_scheduler_managed exists: only managed shows are scheduled");
        } else {
            log_exclusion_list(&ctx, &clusters);
        }
        for cluster in &clusters {
            info!("cluster {} ({})", cluster, cluster.kind.label());
        }
        if clusters.is_empty() {
            warn!("no clusters selected: nothing will be scheduled until the next cluster reload finds some");
        }
        ctx.set_clusters(&clusters);
        ctx.clusters_loaded.store(true, Ordering::SeqCst);
        // Join before the first pass: a lone instance owns every pool from the start.
        let mut ownership = ownership::Ownership::new(ctx.settings.db.clone(), facility_id.clone());
        ownership.tick(&ctx);
        info!("instance {}: owns {} host pool(s)", ctx.settings.db.instance, ctx.serving().allocs.len());
        ctx.db_reachable.store(true, Ordering::SeqCst);
        let mut pipeline = Pipeline {
            ctx: Arc::clone(&ctx),
            clusters: clusters.clone(),
            metrics_port,
            fetcher: None,
            matchers: Vec::new(),
            dispatchers: Vec::new(),
            background: Vec::new(),
        };
        pipeline.spawn_threads(clusters, facility_id, http_server, ownership)?;
        Ok(pipeline)
    }

    fn spawn_threads(
        &mut self,
        clusters: Vec<Cluster>,
        facility_id: Option<String>,
        http_server: Option<http::Server>,
        ownership: ownership::Ownership,
    ) -> Result<(), StartError> {
        let ctx = &self.ctx;
        let owner = Arc::clone(ctx);
        let settings = &ctx.settings;
        let (pass_tx, pass_rx) = bounded::<Pass>(limits::PASS_CHANNEL_CAPACITY);
        let (launch_tx, launch_rx) = bounded::<Launch>(limits::LAUNCH_CHANNEL_CAPACITY);
        // Matchers send one PassDone per pass received; the fetcher drains it every loop.
        let (done_tx, done_rx) = unbounded::<PassDone>();
        for n in 0..settings.dispatch_threads {
            let (ctx, rx) = (Arc::clone(ctx), launch_rx.clone());
            self.dispatchers.push(spawn(&owner, format!("dispatch-{n}"), move || dispatch::run_dispatcher(&ctx, rx))?);
        }
        drop(launch_rx);
        for n in 0..settings.cluster_buffer_size {
            let (ctx, rx, tx, done) = (Arc::clone(ctx), pass_rx.clone(), launch_tx.clone(), done_tx.clone());
            let threads = settings.matcher_threads;
            self.matchers.push(spawn(&owner, format!("matcher-{n}"), move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(move |i| format!("matcher-pool-{n}-{i}"))
                    .build();
                let pool = match pool {
                    Ok(pool) => pool,
                    Err(e) => {
                        error!("cannot start matcher pool: {e}; matcher {n} stops");
                        return;
                    }
                };
                while let Some(pass) = ctx.recv_beating(&rx) {
                    let result = pool.install(|| pass::run_pass(&ctx, &pass, &tx));
                    let _ = done.send(PassDone { cluster: pass.cluster, result });
                }
            })?);
        }
        drop((pass_rx, launch_tx, done_tx));
        let feed_ctx = Arc::clone(ctx);
        self.fetcher = Some(spawn(&owner, "job-fetcher".into(), move || {
            Feed::new(&feed_ctx, facility_id, clusters).run(pass_tx, done_rx);
        })?);
        if ctx.managed_mode {
            let accounting_ctx = Arc::clone(ctx);
            self.background.push(spawn(&owner, "accounting".into(), move || crate::db::accounting::run(&accounting_ctx))?);
        }
        let ownership_ctx = Arc::clone(ctx);
        self.background.push(spawn(&owner, "ownership".into(), move || ownership::run(&ownership_ctx, ownership))?);
        let recovery_ctx = Arc::clone(ctx);
        self.background.push(spawn(&owner, "recovery".into(), move || crate::pipeline::recovery::run(&recovery_ctx))?);
        let refresh_ctx = Arc::clone(ctx);
        self.background.push(spawn(&owner, "cache-refresh".into(), move || run_cache_refresh(&refresh_ctx))?);
        if let Some(server) = http_server {
            let http_ctx = Arc::clone(ctx);
            self.background.push(spawn(&owner, "metrics-http".into(), move || http::serve(&http_ctx, server))?);
        }
        Ok(())
    }

    /// Whether the pipeline stopped by itself (quit condition) or was asked to.
    pub fn stopping(&self) -> bool {
        self.ctx.stopping()
    }

    /// Stops and joins every thread in the documented order. Returns the frames still booked
    /// but not launched after the drain (always 0 unless a compensation failed).
    pub fn shutdown(mut self, drain_timeout: Duration) {
        info!("shutting down: stop fetching, finish matching, drain launches (deadline {drain_timeout:?})");
        self.ctx.stop.store(true, Ordering::SeqCst);
        *self.ctx.drain_deadline.lock() = Some(limits::deadline_after(drain_timeout));
        join(self.fetcher.take(), "job-fetcher");
        for handle in self.matchers.drain(..) {
            join(Some(handle), "matcher");
        }
        for handle in self.dispatchers.drain(..) {
            join(Some(handle), "dispatch");
        }
        for handle in self.background.drain(..) {
            join(Some(handle), "background");
        }
        info!(
            "stopped: frames booked {}, launched {}, compensated {}",
            self.ctx.frames_booked.load(Ordering::Relaxed),
            self.ctx.frames_launched.load(Ordering::Relaxed),
            self.ctx.frames_compensated.load(Ordering::Relaxed)
        );
    }
}

/// Explicit-cluster mode: the `dispatcher.exclusion_list` value Cuebot needs so it does not
/// book what this scheduler books (Cuebot's list covers allocation clusters only).
fn log_exclusion_list(ctx: &Context, clusters: &[Cluster]) {
    let alloc_ids: Vec<String> = clusters.iter().filter_map(|c| c.alloc_id.clone()).collect();
    let names: Vec<(String, String)> = db::get(&ctx.pool, "exclusion list")
        .ok()
        .and_then(|mut client| {
            client.query("SELECT pk_alloc::text, str_name::text FROM alloc WHERE pk_alloc = ANY($1)", &[&alloc_ids]).ok()
        })
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default();
    let entries: Vec<String> = clusters
        .iter()
        .filter_map(|c| {
            let alloc = c.alloc_id.as_ref()?;
            let name = names.iter().find(|(id, _)| id == alloc)?;
            Some(format!("{}:{}", c.show_name, name.1))
        })
        .collect();
    info!("schema has no show.b_scheduler_managed: set Cuebot's dispatcher.exclusion_list={}", entries.join(","));
    if clusters.iter().any(|c| c.alloc_id.is_none()) {
        warn!("manual/hostname/hardware clusters cannot be excluded from Cuebot's booking by that list; run Cuebot with dispatcher.turn_off_booking=true");
    }
}

fn join(handle: Option<JoinHandle<()>>, what: &str) {
    if let Some(handle) = handle {
        if handle.join().is_err() {
            error!("{what} thread panicked");
        }
    }
}

/// Re-fetches every cached group each `monitoring_interval` and sweeps stale hosts each
/// `clean_up_interval`.
fn run_cache_refresh(ctx: &Context) {
    let mut last_refresh = Instant::now();
    let mut last_clean = Instant::now();
    while !ctx.stopping() {
        std::thread::sleep(Duration::from_millis(limits::SHUTDOWN_POLL_MS));
        ctx.beat();
        ctx.test_panic_hook();
        let settings = ctx.tunables().clone();
        if last_refresh.elapsed() >= settings.monitoring_interval {
            last_refresh = Instant::now();
            if let Err(e) = refresh_groups(ctx) {
                ctx.count_error("host_cache");
                warn!("host cache refresh failed, keeping cached values: {e}");
            }
        }
        if last_clean.elapsed() >= settings.clean_up_interval {
            last_clean = Instant::now();
            let evicted = ctx.cache.clean_up();
            if evicted > 0 {
                info!("host cache: evicted {evicted} stale hosts");
            }
        }
    }
}

fn refresh_groups(ctx: &Context) -> Result<(), DbError> {
    let keys = ctx.cache.group_keys();
    if keys.is_empty() {
        return Ok(());
    }
    let mut client = db::get(&ctx.pool, "refresh host cache")?;
    for key in keys {
        if ctx.stopping() {
            break;
        }
        let rows = pass::fetch_group(&mut client, &key)?;
        if ctx.cache.apply_group(&key, rows) {
            ctx.wake_backed_off_jobs();
        }
    }
    Ok(())
}
