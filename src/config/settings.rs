//! Runtime knobs of the pipeline, derived once from the configuration. The pipeline takes a
//! `Settings` and never reads the configuration file itself, so tests build one directly.

use crate::matching::clusters::Selection;
use crate::db::DbSettings;
use crate::matching::host_cache::{CacheSettings, Strategy};
use crate::matching::matcher::MatchPolicy;
use crate::matching::policy::{PolicyName, PolicySettings};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Settings {
    pub db: DbSettings,
    pub facility: Option<String>,
    /// The reloadable part; the running copy lives in the context (SIGHUP replaces it).
    pub tunables: Tunables,
    pub frames_per_layer: usize,
    pub jobs_per_pass: usize,
    pub attempts_per_layer: usize,
    /// A job whose every layer found no host is skipped this long (0 = never), unless a cache
    /// refresh sees capacity grow first.
    pub job_back_off: Duration,
    pub strategy: Strategy,
    pub policy: MatchPolicy,
    /// Which work goes first and where (`scheduler.policy` and its knobs).
    pub scheduling: PolicySettings,
    pub cache: CacheSettings,
    pub soft_memory_multiplier: f64,
    pub hard_memory_multiplier: f64,
    pub mem_reserved_min_kib: i64,
    pub update_stat_on_book: bool,
    pub empty_job_cycles_before_quitting: Option<u64>,
    pub dry_run: bool,
    pub rqd_port: u16,
    pub rqd_timeout: Duration,
    pub dispatch_threads: usize,
    pub matcher_threads: usize,
    pub cluster_buffer_size: usize,
    /// `None`: no HTTP server (tests that do not need one).
    pub metrics_port: Option<u16>,
    /// Address the HTTP server binds (`queue.metrics_address`; all interfaces by default).
    pub metrics_address: String,
    pub shutdown_drain_timeout: Duration,
    /// Schemas without `show.b_scheduler_managed`: the operator confirms Cuebot books nothing
    /// (`dispatcher.turn_off_booking=true`), so discovering every cluster is safe.
    pub cuebot_booking_off: bool,
    /// Reconcile of scheduler-managed shows' rollups (src/db/accounting.rs).
    pub accounting: crate::config::AccountingConfig,
    /// The stranded-booking sweep (src/pipeline/recovery.rs); fixed bounds in production, shorter in tests.
    pub recovery: RecoverySettings,
}

#[derive(Clone, Debug)]
pub struct RecoverySettings {
    pub first_sweep_delay: Duration,
    pub sweep_interval: Duration,
    pub grace: Duration,
    pub unreachable_grace: Duration,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        use crate::limits::*;
        RecoverySettings {
            first_sweep_delay: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(STRANDED_SWEEP_INTERVAL_SECS),
            grace: Duration::from_secs(STRANDED_GRACE_SECS),
            unreachable_grace: Duration::from_secs(STRANDED_UNREACHABLE_GRACE_SECS),
        }
    }
}

/// The settings SIGHUP may change while the pipeline runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Tunables {
    pub selection: Selection,
    pub cluster_empty_sleep: Duration,
    pub cluster_saturated_sleep: Duration,
    pub cluster_reload_interval: Duration,
    pub active_scan_interval: Duration,
    pub monitoring_interval: Duration,
    pub clean_up_interval: Duration,
    pub monitor_interval: Duration,
}

impl Tunables {
    /// One line per changed value, for the reload log.
    pub fn changes_from(&self, old: &Tunables) -> Vec<String> {
        let mut out = Vec::new();
        let durations = [
            ("queue.cluster_empty_sleep", old.cluster_empty_sleep, self.cluster_empty_sleep),
            ("queue.cluster_saturated_sleep", old.cluster_saturated_sleep, self.cluster_saturated_sleep),
            ("queue.cluster_reload_interval", old.cluster_reload_interval, self.cluster_reload_interval),
            ("queue.active_scan_interval", old.active_scan_interval, self.active_scan_interval),
            ("host_cache.monitoring_interval", old.monitoring_interval, self.monitoring_interval),
            ("host_cache.clean_up_interval", old.clean_up_interval, self.clean_up_interval),
            ("queue.monitor_interval", old.monitor_interval, self.monitor_interval),
        ];
        for (key, before, after) in durations {
            if before != after {
                out.push(format!("{key}: {before:?} -> {after:?}"));
            }
        }
        if self.selection != old.selection {
            out.push(format!("cluster selection: {:?} -> {:?}", old.selection, self.selection));
        }
        out
    }
}

impl Settings {
    /// Derives the pipeline's settings from a loaded configuration (CLI overrides already
    /// applied to it). Fails on a manual-tag entry that is not `tag` or `show:tag`.
    pub fn from_config(config: &crate::config::Config) -> Result<Settings, String> {
        use crate::config::HostBookingStrategy;
        let q = &config.queue;
        let hc = &config.host_cache;
        let database = &config.database;
        let strategy = match &q.host_booking_strategy {
            HostBookingStrategy::Saturation { core_saturation, memory_saturation } => {
                Strategy::Saturation { core_ascending: *core_saturation, memory_ascending: *memory_saturation }
            }
            HostBookingStrategy::Epvm { max_candidates, weights } => Strategy::Epvm {
                max_candidates: *max_candidates,
                weights: weights.clone(),
            },
        };
        let manual_tags = config
            .scheduler
            .manual_tags
            .iter()
            .map(|entry| crate::matching::clusters::parse_manual_tag(entry))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| format!("scheduler.manual_tags: {e}"))?;
        if (!manual_tags.is_empty() || !config.scheduler.alloc_tags.is_empty()) && config.scheduler.facility.is_none() {
            return Err("explicit --alloc_tags/--manual_tags need a facility (--facility or scheduler.facility)".into());
        }
        Ok(Settings {
            db: DbSettings {
                connection_string: database.connection_string(),
                display: format!("{}@{}:{}/{}", database.db_user, database.db_host, database.db_port, database.db_name),
                pool_size: database.pool_size,
                connect_timeout: Duration::from_secs(10),
                instance: String::new(),
            },
            facility: config.scheduler.facility.clone(),
            tunables: Tunables {
                selection: Selection {
                    alloc_tags: config.scheduler.alloc_tags.iter().map(|t| (t.show.clone(), t.tag.clone())).collect(),
                    manual_tags,
                    ignore_tags: config.scheduler.ignore_tags.clone(),
                    manual_tags_chunk_size: q.manual_tags_chunk_size,
                    hostname_tags_chunk_size: q.hostname_tags_chunk_size,
                },
                cluster_empty_sleep: q.cluster_empty_sleep,
                cluster_saturated_sleep: q.cluster_saturated_sleep,
                cluster_reload_interval: q.cluster_reload_interval,
                active_scan_interval: q.active_scan_interval,
                monitoring_interval: hc.monitoring_interval,
                clean_up_interval: hc.clean_up_interval,
                monitor_interval: q.monitor_interval,
            },
            frames_per_layer: q.dispatch_frames_per_layer_limit.min(crate::limits::FRAMES_PER_LAYER_MAX),
            jobs_per_pass: q.max_jobs_per_cluster_pass,
            attempts_per_layer: q.host_candidate_attempts_per_layer,
            job_back_off: q.job_back_off_duration,
            strategy,
            policy: MatchPolicy {
                memory_stranded_threshold_kib: q.memory_stranded_threshold_kib,
                selfish_services: q.selfish_services.clone(),
            },
            scheduling: PolicySettings {
                name: PolicyName::parse(&config.scheduler.policy).ok_or_else(|| format!("scheduler.policy: `{}` is not legacy or smart", config.scheduler.policy))?,
                reservation_after: config.scheduler.reservation_after,
                reservations_max: config.scheduler.reservations_max,
                runtime_estimate_default: config.scheduler.runtime_estimate_default,
                fair_share_window: config.scheduler.fair_share_window,
                fair_share_tolerance: config.scheduler.fair_share_tolerance,
                aging_after: config.scheduler.aging_after,
                // Longer than a blocked cluster sleeps between passes, so a show that keeps
                // trying stays counted as demanding.
                demand_window: q.cluster_saturated_sleep.saturating_mul(2).saturating_add(Duration::from_secs(1)).min(Duration::from_secs(300)),
            },
            cache: CacheSettings {
                memory_key_divisor_kib: hc.memory_key_divisor_kib,
                checkout_timeout: hc.checkout_timeout,
                group_idle_timeout: hc.group_idle_timeout,
                host_staleness_threshold: hc.host_staleness_threshold,
            },
            soft_memory_multiplier: q.frame_memory_soft_limit,
            hard_memory_multiplier: q.frame_memory_hard_limit,
            mem_reserved_min_kib: q.mem_reserved_min_kib,
            update_stat_on_book: hc.update_stat_on_book,
            empty_job_cycles_before_quitting: q.empty_job_cycles_before_quitting,
            dry_run: config.rqd.dry_run_mode,
            rqd_port: config.rqd.grpc_port,
            rqd_timeout: config.rqd.launch_timeout,
            dispatch_threads: config.rqd.dispatch_threads,
            matcher_threads: q.worker_threads.max(1),
            cluster_buffer_size: q.stream.cluster_buffer_size.max(1),
            metrics_port: Some(q.metrics_port),
            metrics_address: q.metrics_address.clone(),
            shutdown_drain_timeout: Duration::from_millis(crate::limits::SHUTDOWN_DRAIN_TIMEOUT_MS),
            cuebot_booking_off: false,
            accounting: config.accounting.clone(),
            recovery: RecoverySettings::default(),
        })
    }
}

/// Keys this design accepts for compatibility but does not need, set to a non-default value:
/// one warning each, saying why, so no key is silently dead.
pub fn inert_key_warnings(config: &crate::config::Config) -> Vec<String> {
    let d = crate::config::Config::default();
    let mut out = Vec::new();
    let mut check = |set: bool, key: &str, why: &str| {
        if set {
            out.push(format!("{key} has no effect in this scheduler: {why}"));
        }
    };
    check(config.sentry_dsn.is_some(), "sentry_dsn", "there is no Sentry client; errors are logged and counted in scheduler_errors_total");
    check(
        config.queue.allocation_refresh_interval != d.queue.allocation_refresh_interval,
        "queue.allocation_refresh_interval",
        "subscription headroom is checked in the booking transaction, not from a cache",
    );
    check(
        config.accounting.limit_reseed_interval != d.accounting.limit_reseed_interval,
        "accounting.limit_reseed_interval",
        "caps are read in the booking transaction, never from a cache",
    );
    check(
        config.host_cache.concurrent_groups != d.host_cache.concurrent_groups
            || config.host_cache.concurrent_fetch_permit != d.host_cache.concurrent_fetch_permit,
        "host_cache.concurrent_groups / concurrent_fetch_permit",
        "groups are refreshed by one cache-refresh thread, one query each",
    );
    check(
        config.queue.stream.job_buffer_size != d.queue.stream.job_buffer_size,
        "queue.stream.job_buffer_size",
        "jobs of a pass run on the matcher pool of queue.worker_threads threads",
    );
    check(
        config.queue.core_multiplier != d.queue.core_multiplier,
        "queue.core_multiplier",
        "Cuebot's core units are fixed at 100 per core; other values are ignored",
    );
    out
}
