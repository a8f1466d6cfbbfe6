//! Scheduler configuration: where it comes from, what every key means and how it is checked.
//!
//! The configuration is assembled in three layers (spec §5.1):
//!
//! 1. a YAML file, picked by [`Config::load`] (`--config`, then `OPENCUE_SCHEDULER_CONFIG`,
//!    then `$HOME/.local/share/scheduler.yaml`, else none);
//! 2. `OPENSCHEDULER_*` environment variables, which override the file;
//! 3. built-in defaults (the 2026 values of §5.2) for everything left unset.
//!
//! Command-line flags are applied afterwards by the caller.
//!
//! The YAML document is walked by hand (as an untyped `serde_yaml::Value` tree) instead of being
//! deserialised into structs, so that every problem can be reported precisely:
//!
//! * an unknown key is a start-up error naming the dotted key and the nearest valid key;
//! * the obsolete keys of §5.3 only produce a warning (returned in [`Config::warnings`]);
//! * a value of the wrong type names the key and what was expected;
//! * the upstream aliases (`host_candidate_attemps_per_layer`, `empty_job_cycles_before_quitting`,
//!   `database.core_multiplier`) are accepted, and two spellings set to different values are a
//!   [`ConfigError::Conflict`].
//!
//! Scalars are converted the way upstream's `config` crate did: a quoted `"4"` is accepted where a
//! number is expected and a number is accepted where a string is expected (e.g. a numeric
//! password). Environment values are always strings and go through the same conversions.
//!
//! The database password is never shown by `Debug`, by `Display` or in error messages;
//! [`DatabaseConfig::connection_string`] is the only way to read it back out, and its result must
//! not be logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value};

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// Why the configuration could not be loaded. Every variant displays as a single line.
#[derive(Debug)]
pub enum ConfigError {
    /// The configuration file could not be read.
    Io { path: String, message: String },
    /// The file is not valid YAML, or its top level is not a mapping.
    Yaml { path: String, message: String },
    /// A key that the scheduler does not know (dotted path, e.g. `queue.foo`).
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    /// A known key with a value of the wrong type or out of range.
    BadValue { key: String, message: String },
    /// Two settings (aliases, or two environment spellings) disagree.
    Conflict { message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, message } => {
                write!(
                    f,
                    "cannot read configuration file `{path}`: {}",
                    one_line(message)
                )
            }
            ConfigError::Yaml { path, message } => {
                write!(
                    f,
                    "invalid configuration file `{path}`: {}",
                    one_line(message)
                )
            }
            ConfigError::UnknownKey {
                key,
                suggestion: Some(s),
            } => {
                write!(f, "unknown configuration key `{key}` (did you mean `{s}`?)")
            }
            ConfigError::UnknownKey {
                key,
                suggestion: None,
            } => {
                write!(f, "unknown configuration key `{key}`")
            }
            ConfigError::BadValue { key, message } => {
                write!(f, "bad value for `{key}`: {}", one_line(message))
            }
            ConfigError::Conflict { message } => {
                write!(f, "conflicting configuration: {}", one_line(message))
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The configuration key the error is about, for `UnknownKey` and `BadValue`.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::BadValue { key, .. } => Some(key),
            _ => None,
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ------------------------------------------------------------------------------------------------
// The configuration
// ------------------------------------------------------------------------------------------------

/// The whole scheduler configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// Sentry DSN; `None` (also for an empty value) disables error reporting.
    pub sentry_dsn: Option<String>,
    pub logging: LoggingConfig,
    pub database: DatabaseConfig,
    pub rqd: RqdConfig,
    pub queue: QueueConfig,
    pub host_cache: HostCacheConfig,
    pub scheduler: SchedulerConfig,
    pub accounting: AccountingConfig,
    /// Things worth a warning at start-up (obsolete keys, dry-run mode, ...). The caller logs them.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggingConfig {
    /// Log filter in `EnvFilter` syntax, e.g. `info,sqlx=warn`.
    pub level: String,
    /// Log to `path` instead of stdout.
    pub file_appender: bool,
    pub path: String,
}

#[derive(Clone, PartialEq)]
pub struct DatabaseConfig {
    /// Connection pool size; the process-wide layer semaphore is `pool_size - 1`.
    pub pool_size: u32,
    pub db_host: String,
    pub db_port: u16,
    pub db_name: String,
    pub db_user: String,
    /// Never printed. Prefer `OPENSCHEDULER_DATABASE__DB_PASS` over writing it in the file.
    pub db_pass: String,
    /// The value written as `database.core_multiplier`, if any. It is an alias of
    /// `queue.core_multiplier`, which always holds the effective value.
    pub core_multiplier: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RqdConfig {
    pub grpc_port: u16,
    /// Book frames in the database but never call RQD.
    pub dry_run_mode: bool,
    /// Our addition (`rqd.launch_timeout`): deadline of one `LaunchFrame` call.
    pub launch_timeout: Duration,
    /// Our addition (`rqd.dispatch_threads`): threads issuing RQD calls, 1..=256.
    pub dispatch_threads: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Period of the status heartbeat log line.
    pub monitor_interval: Duration,
    pub worker_threads: usize,
    pub dispatch_frames_per_layer_limit: usize,
    /// Centicores per core (effective value, after the `database.core_multiplier` alias).
    pub core_multiplier: u32,
    pub memory_stranded_threshold_kib: i64,
    /// How long a job whose every layer ended `no_match` is skipped.
    pub job_back_off_duration: Duration,
    pub cluster_empty_sleep: Duration,
    pub cluster_saturated_sleep: Duration,
    pub cluster_reload_interval: Duration,
    pub active_scan_interval: Duration,
    pub max_jobs_per_cluster_pass: usize,
    pub manual_tags_chunk_size: usize,
    pub hostname_tags_chunk_size: usize,
    pub host_candidate_attempts_per_layer: usize,
    /// `None` = run forever.
    pub empty_job_cycles_before_quitting: Option<u64>,
    pub mem_reserved_min_kib: i64,
    pub allocation_refresh_interval: Duration,
    pub selfish_services: Vec<String>,
    pub frame_memory_soft_limit: f64,
    pub frame_memory_hard_limit: f64,
    pub metrics_port: u16,
    pub stream: StreamConfig,
    pub host_booking_strategy: HostBookingStrategy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub cluster_buffer_size: usize,
    pub job_buffer_size: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostBookingStrategy {
    /// First fit; the flags pick the iteration direction per dimension (saturated-first when true).
    Saturation {
        core_saturation: bool,
        memory_saturation: bool,
    },
    /// E-PVM stranding score over up to `max_candidates` hosts.
    Epvm {
        max_candidates: usize,
        weights: EpvmWeights,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpvmWeights {
    pub cores: f64,
    pub mem: f64,
    pub gpus: f64,
    pub gpu_mem: f64,
    pub gpu_count_reservation: f64,
    pub gpu_mem_reservation: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostCacheConfig {
    pub concurrent_groups: usize,
    pub concurrent_fetch_permit: usize,
    pub memory_key_divisor_kib: i64,
    /// Reservation timeout and RQD-failure host back-off.
    pub checkout_timeout: Duration,
    pub monitoring_interval: Duration,
    pub clean_up_interval: Duration,
    pub group_idle_timeout: Duration,
    pub host_staleness_threshold: Duration,
    pub update_stat_on_book: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchedulerConfig {
    pub facility: Option<String>,
    pub ignore_tags: Vec<String>,
    pub alloc_tags: Vec<AllocTag>,
    pub manual_tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AllocTag {
    pub show: String,
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccountingConfig {
    pub recompute_interval: Duration,
    pub limit_reseed_interval: Duration,
    pub managed_shows_ttl: Duration,
    /// How long the accounting listener gathers notifications before it reconciles the rows
    /// they name (one reconcile per window, not one per release).
    pub coalesce_window: Duration,
}

// ------------------------------------------------------------------------------------------------
// Defaults (spec §5.2, 2026 values)
// ------------------------------------------------------------------------------------------------

const KIB_PER_GIB: i64 = 1024 * 1024;

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            // Upstream's default was the malformed `debug:sqlx=info` (§5.3).
            level: "info,sqlx=warn".to_string(),
            file_appender: false,
            path: "/opt/rqd/logs/scheduler.log".to_string(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            pool_size: 20,
            db_host: "localhost".to_string(),
            db_port: 5432,
            db_name: "test".to_string(),
            db_user: "postgres".to_string(),
            db_pass: "password".to_string(),
            core_multiplier: None,
        }
    }
}

impl Default for RqdConfig {
    fn default() -> Self {
        RqdConfig {
            grpc_port: 8444,
            dry_run_mode: false,
            launch_timeout: Duration::from_secs(10),
            dispatch_threads: 8,
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            cluster_buffer_size: 3,
            job_buffer_size: 3,
        }
    }
}

impl Default for EpvmWeights {
    fn default() -> Self {
        EpvmWeights {
            cores: 1.0,
            mem: 1.0,
            gpus: 2.0,
            gpu_mem: 1.0,
            gpu_count_reservation: 2.0,
            gpu_mem_reservation: 2.0,
        }
    }
}

impl Default for HostBookingStrategy {
    fn default() -> Self {
        HostBookingStrategy::Saturation {
            core_saturation: true,
            memory_saturation: false,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            monitor_interval: Duration::from_secs(5),
            worker_threads: 4,
            dispatch_frames_per_layer_limit: 20,
            core_multiplier: 100,
            memory_stranded_threshold_kib: 2 * KIB_PER_GIB,
            job_back_off_duration: Duration::from_secs(300),
            cluster_empty_sleep: Duration::from_secs(30),
            cluster_saturated_sleep: Duration::from_secs(5),
            cluster_reload_interval: Duration::from_secs(120),
            active_scan_interval: Duration::from_secs(2),
            max_jobs_per_cluster_pass: 20,
            manual_tags_chunk_size: 50,
            hostname_tags_chunk_size: 50,
            host_candidate_attempts_per_layer: 10,
            empty_job_cycles_before_quitting: None,
            mem_reserved_min_kib: 250 * 1024,
            allocation_refresh_interval: Duration::from_secs(3),
            selfish_services: Vec::new(),
            frame_memory_soft_limit: 1.6,
            frame_memory_hard_limit: 2.0,
            metrics_port: 9090,
            stream: StreamConfig::default(),
            host_booking_strategy: HostBookingStrategy::default(),
        }
    }
}

impl Default for HostCacheConfig {
    fn default() -> Self {
        HostCacheConfig {
            concurrent_groups: 3,
            concurrent_fetch_permit: 4,
            memory_key_divisor_kib: 2 * KIB_PER_GIB,
            checkout_timeout: Duration::from_secs(12),
            // The upstream sample's comment says 1s; the real default is 10s (§4.3).
            monitoring_interval: Duration::from_secs(10),
            clean_up_interval: Duration::from_secs(300),
            group_idle_timeout: Duration::from_secs(3 * 3600),
            host_staleness_threshold: Duration::from_secs(120),
            update_stat_on_book: false,
        }
    }
}

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig {
            recompute_interval: Duration::from_secs(15),
            limit_reseed_interval: Duration::from_secs(300),
            managed_shows_ttl: Duration::from_secs(30),
            coalesce_window: Duration::from_millis(50),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Database helpers
// ------------------------------------------------------------------------------------------------

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("pool_size", &self.pool_size)
            .field("db_host", &self.db_host)
            .field("db_port", &self.db_port)
            .field("db_name", &self.db_name)
            .field("db_user", &self.db_user)
            .field("db_pass", &format_args!("<redacted>"))
            .field("core_multiplier", &self.core_multiplier)
            .finish()
    }
}

impl DatabaseConfig {
    /// libpq key=value connection string (the form `postgres::Config::from_str` parses), with
    /// the session time zone forced to UTC. It contains the password: do not log it.
    pub fn connection_string(&self) -> String {
        format!(
            "host={} port={} dbname={} user={} password={} options={}",
            conn_value(&self.db_host),
            self.db_port,
            conn_value(&self.db_name),
            conn_value(&self.db_user),
            conn_value(&self.db_pass),
            conn_value("-c timezone=UTC"),
        )
    }
}

/// Quote a libpq connection-string value when needed: empty values and values containing
/// whitespace, quotes or backslashes go in single quotes, with `'` and `\` backslash-escaped.
fn conn_value(value: &str) -> String {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\' || c == '=');
    if !needs_quotes {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

impl std::str::FromStr for AllocTag {
    type Err = String;

    /// Parse `show:tag` (exactly two trimmed, non-empty parts), as the CLI and config accept.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        match parts.as_slice() {
            [show, tag] if !show.is_empty() && !tag.is_empty() => Ok(AllocTag {
                show: show.to_string(),
                tag: tag.to_string(),
            }),
            _ => Err(format!("Invalid format: expected 'show:tag', got '{text}'")),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Known keys
// ------------------------------------------------------------------------------------------------

const TOP_KEYS: &[&str] = &[
    "sentry_dsn",
    "logging",
    "database",
    "rqd",
    "queue",
    "host_cache",
    "scheduler",
    "accounting",
];
const LOGGING_KEYS: &[&str] = &["level", "file_appender", "path"];
const DATABASE_KEYS: &[&str] = &[
    "pool_size",
    "db_host",
    "db_port",
    "db_name",
    "db_user",
    "db_pass",
    "core_multiplier",
];
const RQD_KEYS: &[&str] = &[
    "grpc_port",
    "dry_run_mode",
    "launch_timeout",
    "dispatch_threads",
];
const QUEUE_KEYS: &[&str] = &[
    "monitor_interval",
    "worker_threads",
    "dispatch_frames_per_layer_limit",
    "core_multiplier",
    "memory_stranded_threshold",
    "job_back_off_duration",
    "cluster_empty_sleep",
    "cluster_saturated_sleep",
    "cluster_reload_interval",
    "active_scan_interval",
    "max_jobs_per_cluster_pass",
    "manual_tags_chunk_size",
    "hostname_tags_chunk_size",
    "host_candidate_attempts_per_layer",
    ATTEMPTS_MISSPELLED,
    "empty_job_cycles_before_quiting",
    "empty_job_cycles_before_quitting",
    "mem_reserved_min",
    "allocation_refresh_interval",
    "selfish_services",
    "frame_memory_soft_limit",
    "frame_memory_hard_limit",
    "metrics_port",
    "stream",
    "host_booking_strategy",
];
/// The sample's spelling: accepted, never suggested.
const ATTEMPTS_MISSPELLED: &str = "host_candidate_attemps_per_layer";
const QUEUE_OBSOLETE: &[(&str, &str)] = &[
    (
        "subscription_recalculation_interval",
        "subscription usage is rewritten every `accounting.recompute_interval`",
    ),
    (
        "resource_recalculation_interval",
        "resource tables are rewritten every `accounting.recompute_interval`",
    ),
];
const STREAM_KEYS: &[&str] = &["cluster_buffer_size", "job_buffer_size"];
const STRATEGY_KEYS: &[&str] = &[
    "type",
    "core_saturation",
    "memory_saturation",
    "max_candidates",
    "weights",
];
const SATURATION_KEYS: &[&str] = &["type", "core_saturation", "memory_saturation"];
const FLAT_SATURATION_KEYS: &[&str] = &["core_saturation", "memory_saturation"];
const EPVM_KEYS: &[&str] = &["type", "max_candidates", "weights"];
const WEIGHT_KEYS: &[&str] = &[
    "cores",
    "mem",
    "gpus",
    "gpu_mem",
    "gpu_count_reservation",
    "gpu_mem_reservation",
];
const HOST_CACHE_KEYS: &[&str] = &[
    "concurrent_groups",
    "concurrent_fetch_permit",
    "memory_key_divisor",
    "checkout_timeout",
    "monitoring_interval",
    "clean_up_interval",
    "group_idle_timeout",
    "host_staleness_threshold",
    "update_stat_on_book",
];
const SCHEDULER_KEYS: &[&str] = &["facility", "ignore_tags", "alloc_tags", "manual_tags"];
const ALLOC_TAG_KEYS: &[&str] = &["show", "tag"];
const ACCOUNTING_KEYS: &[&str] = &[
    "recompute_interval",
    "limit_reseed_interval",
    "managed_shows_ttl",
    "coalesce_window",
];

/// Every section and its keys; used to suggest keys that live in another section.
const SECTIONS: &[(&str, &[&str])] = &[
    ("", TOP_KEYS),
    ("logging", LOGGING_KEYS),
    ("database", DATABASE_KEYS),
    ("rqd", RQD_KEYS),
    ("queue", QUEUE_KEYS),
    ("queue.stream", STREAM_KEYS),
    ("queue.host_booking_strategy", STRATEGY_KEYS),
    ("queue.host_booking_strategy.weights", WEIGHT_KEYS),
    ("host_cache", HOST_CACHE_KEYS),
    ("scheduler", SCHEDULER_KEYS),
    ("accounting", ACCOUNTING_KEYS),
];

/// Keys that name the same setting. Within one source, two members set to different values are
/// a conflict; an environment override of one member replaces the file's value of the others.
const ALIAS_GROUPS: &[&[&str]] = &[
    &[
        "queue.host_candidate_attempts_per_layer",
        "queue.host_candidate_attemps_per_layer",
    ],
    &[
        "queue.empty_job_cycles_before_quiting",
        "queue.empty_job_cycles_before_quitting",
    ],
    &["queue.core_multiplier", "database.core_multiplier"],
];

const ENV_PREFIX: &str = "OPENSCHEDULER_";
const CONFIG_ENV: &str = "OPENCUE_SCHEDULER_CONFIG";

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// All dotted paths (sections and leaves) that may be suggested.
fn all_paths() -> Vec<String> {
    SECTIONS
        .iter()
        .flat_map(|(section, keys)| keys.iter().map(move |k| join(section, k)))
        .filter(|p| !p.ends_with(ATTEMPTS_MISSPELLED))
        .collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Nearest candidate: edit distance <= 3 (and smaller than the key itself, so that short keys
/// do not match everything), or one is a prefix of the other (at least 3 characters shared).
fn nearest<'k>(unknown: &str, candidates: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let lower = unknown.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for cand in candidates {
        let d = levenshtein(&lower, cand);
        let (short, long) = if lower.len() <= cand.len() {
            (lower.as_str(), cand)
        } else {
            (cand, lower.as_str())
        };
        let prefix = short.len() >= 3 && long.starts_with(short);
        let close = d <= 3 && d < lower.chars().count();
        if (close || prefix) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// Suggest a valid key for `unknown`, found in the section `section` whose keys are `level`.
fn suggest(section: &str, unknown: &str, level: &[&str]) -> Option<String> {
    let full = join(section, unknown).to_lowercase();
    let paths = all_paths();
    // `database_db_pass` (an environment name with single underscores) → `database.db_pass`.
    let flat = |s: &str| s.replace('.', "_");
    if let Some(p) = paths.iter().find(|p| flat(p) == flat(&full)) {
        return Some(p.clone());
    }
    let level = level.iter().copied().filter(|k| *k != ATTEMPTS_MISSPELLED);
    if let Some(k) = nearest(unknown, level) {
        return Some(join(section, k));
    }
    // The same key in another section, e.g. top-level `pool_size` → `database.pool_size`.
    let lower = unknown.to_lowercase();
    paths
        .into_iter()
        .find(|p| p.rsplit('.').next() == Some(lower.as_str()))
}

// ------------------------------------------------------------------------------------------------
// Tree walking
// ------------------------------------------------------------------------------------------------

/// Where environment overrides were applied, for error messages.
struct Ctx {
    /// (dotted path, variable name)
    env_origins: Vec<(String, String)>,
}

impl Ctx {
    fn bad(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let mut message = message.into();
        if let Some((_, var)) = self.env_origins.iter().find(|(p, _)| p == key) {
            message.push_str(&format!(" (from environment variable {var})"));
        }
        ConfigError::BadValue {
            key: key.to_string(),
            message,
        }
    }

    fn unknown(&self, section: &str, name: &str, level: &[&str]) -> ConfigError {
        let full = join(section, name);
        let suggestion = suggest(section, name, level);
        let under = format!("{full}.");
        let key = match self
            .env_origins
            .iter()
            .find(|(p, _)| *p == full || p.starts_with(&under))
        {
            Some((_, var)) => format!("{full} (from {var})"),
            None => full,
        };
        ConfigError::UnknownKey { key, suggestion }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".to_string(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let shown: String = s.chars().take(60).collect();
            if shown.len() < s.len() {
                format!("`{shown}...`")
            } else {
                format!("`{shown}`")
            }
        }
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged `{}`", t.tag),
    }
}

/// Like [`describe`] but never shows the text of a string: used where a misplaced value could
/// be a secret (e.g. `database:` followed by `db_pass hunter2` without the colon).
fn describe_kind(v: &Value) -> String {
    match v {
        Value::String(_) => "a string".to_string(),
        other => describe(other),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One mapping of the tree (or an absent/null one, which reads as all defaults).
struct Section<'a> {
    path: String,
    map: Option<&'a Mapping>,
}

impl<'a> Section<'a> {
    /// Check the keys of `value` against `known`; obsolete keys only add a warning.
    fn open(
        ctx: &Ctx,
        path: &str,
        value: Option<&'a Value>,
        known: &[&str],
        obsolete: &[(&str, &str)],
        warnings: &mut Vec<String>,
    ) -> Result<Section<'a>, ConfigError> {
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(m)) => Some(m),
            Some(other) => {
                return Err(ctx.bad(
                    path,
                    format!(
                        "expected a mapping of settings, got {}",
                        describe_kind(other)
                    ),
                ))
            }
        };
        if let Some(m) = map {
            for key in m.keys() {
                let name = match key {
                    Value::String(s) => s.as_str(),
                    other => {
                        let shown = scalar_text(other).unwrap_or_else(|| describe(other));
                        return Err(ctx.unknown(path, &shown, known));
                    }
                };
                if known.contains(&name) {
                    continue;
                }
                if let Some((_, why)) = obsolete.iter().find(|(k, _)| *k == name) {
                    warnings.push(format!(
                        "obsolete key `{}` is ignored ({why})",
                        join(path, name)
                    ));
                    continue;
                }
                return Err(ctx.unknown(path, name, known));
            }
        }
        Ok(Section {
            path: path.to_string(),
            map,
        })
    }

    fn key(&self, k: &str) -> String {
        join(&self.path, k)
    }

    /// The value of `k`, treating null like absent.
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(k)).filter(|v| !v.is_null())
    }

    fn has(&self, k: &str) -> bool {
        self.get(k).is_some()
    }

    fn sub(
        &self,
        ctx: &Ctx,
        k: &str,
        known: &[&str],
        warnings: &mut Vec<String>,
    ) -> Result<Section<'a>, ConfigError> {
        Section::open(ctx, &self.key(k), self.get(k), known, &[], warnings)
    }

    /// Convert `k` with `conv` if it is set.
    fn opt<T>(
        &self,
        ctx: &Ctx,
        k: &str,
        conv: fn(&Ctx, &str, &Value) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(k) {
            Some(v) => conv(ctx, &self.key(k), v).map(Some),
            None => Ok(None),
        }
    }
}

// --- scalar conversions -------------------------------------------------------------------------

trait UInt: Copy {
    const MAX_U64: u64;
    fn from_u64(v: u64) -> Self;
}

macro_rules! uint_impl {
    ($($t:ty),*) => {$(
        impl UInt for $t {
            const MAX_U64: u64 = <$t>::MAX as u64;
            fn from_u64(v: u64) -> Self {
                v as $t
            }
        }
    )*};
}
uint_impl!(u16, u32, u64, usize);

fn uint<T: UInt>(ctx: &Ctx, key: &str, v: &Value) -> Result<T, ConfigError> {
    let n = match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u,
            (None, Some(_)) => return Err(ctx.bad(key, format!("must not be negative, got {n}"))),
            _ => return Err(ctx.bad(key, format!("expected a whole number, got {n}"))),
        },
        Value::String(s) => {
            let t = s.trim();
            match (t.parse::<u64>(), t.parse::<i64>()) {
                (Ok(u), _) => u,
                (Err(_), Ok(_)) => {
                    return Err(ctx.bad(key, format!("must not be negative, got `{t}`")))
                }
                _ => {
                    return Err(
                        ctx.bad(key, format!("expected a whole number, got {}", describe(v)))
                    )
                }
            }
        }
        other => {
            return Err(ctx.bad(
                key,
                format!("expected a whole number, got {}", describe(other)),
            ))
        }
    };
    if n > T::MAX_U64 {
        return Err(ctx.bad(key, format!("{n} is out of range (at most {})", T::MAX_U64)));
    }
    Ok(T::from_u64(n))
}

fn float(ctx: &Ctx, key: &str, v: &Value) -> Result<f64, ConfigError> {
    let parsed = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ctx.bad(key, format!("expected a number, got {}", describe(v))))
}

fn boolean(ctx: &Ctx, key: &str, v: &Value) -> Result<bool, ConfigError> {
    let parsed = match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        _ => None,
    };
    parsed.ok_or_else(|| ctx.bad(key, format!("expected true or false, got {}", describe(v))))
}

fn string(ctx: &Ctx, key: &str, v: &Value) -> Result<String, ConfigError> {
    scalar_text(v).ok_or_else(|| ctx.bad(key, format!("expected a string, got {}", describe(v))))
}

/// A string where empty means "unset".
fn opt_string(ctx: &Ctx, key: &str, v: &Value) -> Result<Option<String>, ConfigError> {
    let s = string(ctx, key, v)?;
    Ok(if s.trim().is_empty() {
        None
    } else {
        Some(s.trim().to_string())
    })
}

fn duration(ctx: &Ctx, key: &str, v: &Value) -> Result<Duration, ConfigError> {
    match v {
        Value::String(s) => parse_duration(s)
            .map_err(|e| ctx.bad(key, format!("expected a duration like `5s`: {e}"))),
        Value::Number(n) => Err(ctx.bad(
            key,
            format!(
                "expected a duration like `5s`, got the bare number {n}; add a unit (ms, s, m, h, d)"
            ),
        )),
        other => {
            Err(ctx.bad(key, format!("expected a duration like `5s`, got {}", describe(other))))
        }
    }
}

/// A byte size, returned in KiB (rounded down).
fn size_kib(ctx: &Ctx, key: &str, v: &Value) -> Result<i64, ConfigError> {
    let bytes = match v {
        Value::String(s) => parse_byte_size(s)
            .map_err(|e| ctx.bad(key, format!("expected a size like `2GiB`: {e}")))?,
        Value::Number(n) if n.as_u64() == Some(0) => 0,
        Value::Number(n) => {
            return Err(ctx.bad(
                key,
                format!(
                    "expected a size like `2GiB`, got the bare number {n}; \
                     add a unit (B, KiB, MiB, GiB, KB, MB, GB)"
                ),
            ))
        }
        other => {
            return Err(ctx.bad(
                key,
                format!("expected a size like `2GiB`, got {}", describe(other)),
            ))
        }
    };
    // u64::MAX / 1024 fits in i64.
    Ok((bytes / 1024) as i64)
}

/// A list of strings: a YAML list of scalars, or one comma-separated string.
fn string_list(ctx: &Ctx, key: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match scalar_text(item) {
                Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                Some(_) => Err(ctx.bad(key, format!("entry {i} is empty"))),
                None => Err(ctx.bad(
                    key,
                    format!(
                        "expected a list of strings, entry {i} is {}",
                        describe(item)
                    ),
                )),
            })
            .collect(),
        Value::String(s) => Ok(split_commas(s)),
        other => Err(ctx.bad(
            key,
            format!("expected a list of strings, got {}", describe(other)),
        )),
    }
}

fn split_commas(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn alloc_tags(ctx: &Ctx, key: &str, v: &Value) -> Result<Vec<AllocTag>, ConfigError> {
    let from_text = |s: &str| s.parse::<AllocTag>().map_err(|e| ctx.bad(key, e));
    match v {
        Value::String(s) => split_commas(s).iter().map(|p| from_text(p)).collect(),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => from_text(s),
                Value::Mapping(_) => {
                    let path = format!("{key}[{i}]");
                    let mut sink = Vec::new();
                    let entry =
                        Section::open(ctx, &path, Some(item), ALLOC_TAG_KEYS, &[], &mut sink)?;
                    let field = |name: &str| -> Result<String, ConfigError> {
                        match entry.opt(ctx, name, string)? {
                            Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                            _ => Err(ctx.bad(
                                &path,
                                format!("needs a non-empty `{name}` (entries are {{show, tag}})"),
                            )),
                        }
                    };
                    Ok(AllocTag {
                        show: field("show")?,
                        tag: field("tag")?,
                    })
                }
                other => Err(ctx.bad(
                    key,
                    format!(
                        "expected `show:tag` strings or {{show, tag}} mappings, entry {i} is {}",
                        describe(other)
                    ),
                )),
            })
            .collect(),
        other => Err(ctx.bad(
            key,
            format!(
                "expected a list of `show:tag` or {{show, tag}}, got {}",
                describe(other)
            ),
        )),
    }
}

/// Two spellings of one setting: either may be set; both set to different values is a conflict.
fn alias<T: PartialEq + fmt::Display>(
    a: (String, Option<T>),
    b: (String, Option<T>),
) -> Result<Option<T>, ConfigError> {
    match (a, b) {
        ((ka, Some(va)), (kb, Some(vb))) if va != vb => Err(ConfigError::Conflict {
            message: format!(
                "`{ka}` ({va}) and `{kb}` ({vb}) name the same setting but differ; keep only one"
            ),
        }),
        ((_, Some(va)), _) => Ok(Some(va)),
        (_, (_, vb)) => Ok(vb),
    }
}

// --- host_booking_strategy ----------------------------------------------------------------------

/// Reads `queue.host_booking_strategy`.
///
/// Decision (spec §5.2 "`saturation` needs both flags"): the 2026 tagged form
/// `{type: saturation, ...}` must set both `core_saturation` and `memory_saturation`, and
/// `{type: epvm, ...}` must set `max_candidates` and `weights` (each weight then defaults on its
/// own, so `weights: {}` is fine). The Dec-2025 flat form without `type` is lenient: a missing
/// flag takes its default (`core_saturation: true`, `memory_saturation: false`), so `{}` is the
/// default strategy. A null `weights:` counts as an empty mapping (null sections read as
/// defaults); a null flag or `max_candidates` counts as missing.
fn read_strategy(
    ctx: &Ctx,
    queue: &Section<'_>,
    warnings: &mut Vec<String>,
) -> Result<HostBookingStrategy, ConfigError> {
    let path = queue.key("host_booking_strategy");
    let value = match queue.get("host_booking_strategy") {
        None => return Ok(HostBookingStrategy::default()),
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            return Err(ctx.bad(
                &path,
                format!(
                    "expected a mapping with `type: saturation` or `type: epvm`, got {}",
                    describe(other)
                ),
            ))
        }
    };
    let present = |k: &str| value.get(k).is_some_and(|v| !v.is_null());
    let misplaced = |keys: &[&str], wanted: &str| -> Result<(), ConfigError> {
        match keys.iter().find(|k| value.contains_key(**k)) {
            Some(k) => Err(ctx.bad(
                &join(&path, k),
                format!("only applies with `type: {wanted}` in `{path}`"),
            )),
            None => Ok(()),
        }
    };
    let whole = Some(queue.get("host_booking_strategy").unwrap_or(&Value::Null));
    let kind = match value.get("type").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => {
            let type_key = join(&path, "type");
            let t = string(ctx, &type_key, v)?;
            match t.trim().to_ascii_lowercase().as_str() {
                "saturation" => Some(false),
                "epvm" => Some(true),
                _ => {
                    return Err(ctx.bad(
                        &type_key,
                        format!("expected `saturation` or `epvm`, got {}", describe(v)),
                    ))
                }
            }
        }
    };
    let defaults = (true, false);
    match kind {
        None => {
            misplaced(&["max_candidates", "weights"], "epvm")?;
            if value.contains_key("type") {
                // `type:` with no value: not the flat form, and not a valid tag either.
                return Err(ctx.bad(&join(&path, "type"), "expected `saturation` or `epvm`"));
            }
            let s = Section::open(ctx, &path, whole, FLAT_SATURATION_KEYS, &[], warnings)?;
            Ok(HostBookingStrategy::Saturation {
                core_saturation: s
                    .opt(ctx, "core_saturation", boolean)?
                    .unwrap_or(defaults.0),
                memory_saturation: s
                    .opt(ctx, "memory_saturation", boolean)?
                    .unwrap_or(defaults.1),
            })
        }
        Some(false) => {
            misplaced(&["max_candidates", "weights"], "epvm")?;
            let s = Section::open(ctx, &path, whole, SATURATION_KEYS, &[], warnings)?;
            if !present("core_saturation") || !present("memory_saturation") {
                return Err(ctx.bad(
                    &path,
                    "`type: saturation` needs both `core_saturation` and `memory_saturation` \
                     (true or false)",
                ));
            }
            Ok(HostBookingStrategy::Saturation {
                core_saturation: s
                    .opt(ctx, "core_saturation", boolean)?
                    .unwrap_or(defaults.0),
                memory_saturation: s
                    .opt(ctx, "memory_saturation", boolean)?
                    .unwrap_or(defaults.1),
            })
        }
        Some(true) => {
            misplaced(&["core_saturation", "memory_saturation"], "saturation")?;
            let s = Section::open(ctx, &path, whole, EPVM_KEYS, &[], warnings)?;
            if !present("max_candidates") || !value.contains_key("weights") {
                return Err(ctx.bad(
                    &path,
                    "`type: epvm` needs `max_candidates` and `weights` (`weights: {}` uses the \
                     default weights)",
                ));
            }
            let max_candidates = s.opt(ctx, "max_candidates", uint::<usize>)?.unwrap_or(1);
            let w = s.sub(ctx, "weights", WEIGHT_KEYS, warnings)?;
            let d = EpvmWeights::default();
            let weight = |k: &str, d: f64| w.opt(ctx, k, float).map(|v| v.unwrap_or(d));
            let weights = EpvmWeights {
                cores: weight("cores", d.cores)?,
                mem: weight("mem", d.mem)?,
                gpus: weight("gpus", d.gpus)?,
                gpu_mem: weight("gpu_mem", d.gpu_mem)?,
                gpu_count_reservation: weight("gpu_count_reservation", d.gpu_count_reservation)?,
                gpu_mem_reservation: weight("gpu_mem_reservation", d.gpu_mem_reservation)?,
            };
            Ok(HostBookingStrategy::Epvm {
                max_candidates,
                weights,
            })
        }
    }
}

// --- the whole document -------------------------------------------------------------------------

fn build(root: &Value, ctx: &Ctx, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    let d = Config::default();
    let top = Section::open(ctx, "", Some(root), TOP_KEYS, &[], warnings)?;

    let sentry_dsn = top.opt(ctx, "sentry_dsn", opt_string)?.flatten();

    let s = top.sub(ctx, "logging", LOGGING_KEYS, warnings)?;
    let logging = LoggingConfig {
        level: s
            .opt(ctx, "level", string)?
            .map(|l| l.trim().to_string())
            .unwrap_or(d.logging.level),
        file_appender: s
            .opt(ctx, "file_appender", boolean)?
            .unwrap_or(d.logging.file_appender),
        path: s.opt(ctx, "path", string)?.unwrap_or(d.logging.path),
    };

    let db = top.sub(ctx, "database", DATABASE_KEYS, warnings)?;
    let database = DatabaseConfig {
        pool_size: db
            .opt(ctx, "pool_size", uint::<u32>)?
            .unwrap_or(d.database.pool_size),
        db_host: db
            .opt(ctx, "db_host", string)?
            .unwrap_or(d.database.db_host),
        db_port: db
            .opt(ctx, "db_port", uint::<u16>)?
            .unwrap_or(d.database.db_port),
        db_name: db
            .opt(ctx, "db_name", string)?
            .unwrap_or(d.database.db_name),
        db_user: db
            .opt(ctx, "db_user", string)?
            .unwrap_or(d.database.db_user),
        db_pass: db
            .opt(ctx, "db_pass", string)?
            .unwrap_or(d.database.db_pass),
        core_multiplier: db.opt(ctx, "core_multiplier", uint::<u32>)?,
    };

    let s = top.sub(ctx, "rqd", RQD_KEYS, warnings)?;
    let rqd = RqdConfig {
        grpc_port: s
            .opt(ctx, "grpc_port", uint::<u16>)?
            .unwrap_or(d.rqd.grpc_port),
        dry_run_mode: s
            .opt(ctx, "dry_run_mode", boolean)?
            .unwrap_or(d.rqd.dry_run_mode),
        launch_timeout: s
            .opt(ctx, "launch_timeout", duration)?
            .unwrap_or(d.rqd.launch_timeout),
        dispatch_threads: s
            .opt(ctx, "dispatch_threads", uint::<usize>)?
            .unwrap_or(d.rqd.dispatch_threads),
    };
    if rqd.dry_run_mode {
        warnings.push(
            "rqd.dry_run_mode is true: frames are booked in the database but never launched on RQD"
                .to_string(),
        );
    }

    let q = Section::open(
        ctx,
        "queue",
        top.get("queue"),
        QUEUE_KEYS,
        QUEUE_OBSOLETE,
        warnings,
    )?;
    let dq = &d.queue;
    if q.has(ATTEMPTS_MISSPELLED) {
        warnings.push(format!(
            "`queue.{ATTEMPTS_MISSPELLED}` is the upstream misspelling of \
             `queue.host_candidate_attempts_per_layer`; both are accepted"
        ));
    }
    let attempts = alias(
        (
            q.key("host_candidate_attempts_per_layer"),
            q.opt(ctx, "host_candidate_attempts_per_layer", uint::<usize>)?,
        ),
        (
            q.key(ATTEMPTS_MISSPELLED),
            q.opt(ctx, ATTEMPTS_MISSPELLED, uint::<usize>)?,
        ),
    )?;
    let empty_cycles = alias(
        (
            q.key("empty_job_cycles_before_quiting"),
            q.opt(ctx, "empty_job_cycles_before_quiting", uint::<u64>)?,
        ),
        (
            q.key("empty_job_cycles_before_quitting"),
            q.opt(ctx, "empty_job_cycles_before_quitting", uint::<u64>)?,
        ),
    )?;
    let core_multiplier = alias(
        (
            q.key("core_multiplier"),
            q.opt(ctx, "core_multiplier", uint::<u32>)?,
        ),
        (db.key("core_multiplier"), database.core_multiplier),
    )?;
    let st = q.sub(ctx, "stream", STREAM_KEYS, warnings)?;
    let stream = StreamConfig {
        cluster_buffer_size: st
            .opt(ctx, "cluster_buffer_size", uint::<usize>)?
            .unwrap_or(dq.stream.cluster_buffer_size),
        job_buffer_size: st
            .opt(ctx, "job_buffer_size", uint::<usize>)?
            .unwrap_or(dq.stream.job_buffer_size),
    };
    let dur = |k: &str, d: Duration| q.opt(ctx, k, duration).map(|v| v.unwrap_or(d));
    let count = |k: &str, d: usize| q.opt(ctx, k, uint::<usize>).map(|v| v.unwrap_or(d));
    let queue = QueueConfig {
        monitor_interval: dur("monitor_interval", dq.monitor_interval)?,
        worker_threads: count("worker_threads", dq.worker_threads)?,
        dispatch_frames_per_layer_limit: count(
            "dispatch_frames_per_layer_limit",
            dq.dispatch_frames_per_layer_limit,
        )?,
        core_multiplier: core_multiplier.unwrap_or(dq.core_multiplier),
        memory_stranded_threshold_kib: q
            .opt(ctx, "memory_stranded_threshold", size_kib)?
            .unwrap_or(dq.memory_stranded_threshold_kib),
        job_back_off_duration: dur("job_back_off_duration", dq.job_back_off_duration)?,
        cluster_empty_sleep: dur("cluster_empty_sleep", dq.cluster_empty_sleep)?,
        cluster_saturated_sleep: dur("cluster_saturated_sleep", dq.cluster_saturated_sleep)?,
        cluster_reload_interval: dur("cluster_reload_interval", dq.cluster_reload_interval)?,
        active_scan_interval: dur("active_scan_interval", dq.active_scan_interval)?,
        max_jobs_per_cluster_pass: count(
            "max_jobs_per_cluster_pass",
            dq.max_jobs_per_cluster_pass,
        )?,
        manual_tags_chunk_size: count("manual_tags_chunk_size", dq.manual_tags_chunk_size)?,
        hostname_tags_chunk_size: count("hostname_tags_chunk_size", dq.hostname_tags_chunk_size)?,
        host_candidate_attempts_per_layer: attempts.unwrap_or(dq.host_candidate_attempts_per_layer),
        empty_job_cycles_before_quitting: empty_cycles,
        mem_reserved_min_kib: q
            .opt(ctx, "mem_reserved_min", size_kib)?
            .unwrap_or(dq.mem_reserved_min_kib),
        allocation_refresh_interval: dur(
            "allocation_refresh_interval",
            dq.allocation_refresh_interval,
        )?,
        selfish_services: q
            .opt(ctx, "selfish_services", string_list)?
            .unwrap_or_default(),
        frame_memory_soft_limit: q
            .opt(ctx, "frame_memory_soft_limit", float)?
            .unwrap_or(dq.frame_memory_soft_limit),
        frame_memory_hard_limit: q
            .opt(ctx, "frame_memory_hard_limit", float)?
            .unwrap_or(dq.frame_memory_hard_limit),
        metrics_port: q
            .opt(ctx, "metrics_port", uint::<u16>)?
            .unwrap_or(dq.metrics_port),
        stream,
        host_booking_strategy: read_strategy(ctx, &q, warnings)?,
    };

    let h = top.sub(ctx, "host_cache", HOST_CACHE_KEYS, warnings)?;
    let dh = &d.host_cache;
    let dur = |k: &str, d: Duration| h.opt(ctx, k, duration).map(|v| v.unwrap_or(d));
    let host_cache = HostCacheConfig {
        concurrent_groups: h
            .opt(ctx, "concurrent_groups", uint::<usize>)?
            .unwrap_or(dh.concurrent_groups),
        concurrent_fetch_permit: h
            .opt(ctx, "concurrent_fetch_permit", uint::<usize>)?
            .unwrap_or(dh.concurrent_fetch_permit),
        memory_key_divisor_kib: h
            .opt(ctx, "memory_key_divisor", size_kib)?
            .unwrap_or(dh.memory_key_divisor_kib),
        checkout_timeout: dur("checkout_timeout", dh.checkout_timeout)?,
        monitoring_interval: dur("monitoring_interval", dh.monitoring_interval)?,
        clean_up_interval: dur("clean_up_interval", dh.clean_up_interval)?,
        group_idle_timeout: dur("group_idle_timeout", dh.group_idle_timeout)?,
        host_staleness_threshold: dur("host_staleness_threshold", dh.host_staleness_threshold)?,
        update_stat_on_book: h
            .opt(ctx, "update_stat_on_book", boolean)?
            .unwrap_or(dh.update_stat_on_book),
    };

    let s = top.sub(ctx, "scheduler", SCHEDULER_KEYS, warnings)?;
    let scheduler = SchedulerConfig {
        facility: s.opt(ctx, "facility", opt_string)?.flatten(),
        ignore_tags: s.opt(ctx, "ignore_tags", string_list)?.unwrap_or_default(),
        alloc_tags: s.opt(ctx, "alloc_tags", alloc_tags)?.unwrap_or_default(),
        manual_tags: s.opt(ctx, "manual_tags", string_list)?.unwrap_or_default(),
    };

    let a = top.sub(ctx, "accounting", ACCOUNTING_KEYS, warnings)?;
    let da = &d.accounting;
    let dur = |k: &str, d: Duration| a.opt(ctx, k, duration).map(|v| v.unwrap_or(d));
    let accounting = AccountingConfig {
        recompute_interval: dur("recompute_interval", da.recompute_interval)?,
        limit_reseed_interval: dur("limit_reseed_interval", da.limit_reseed_interval)?,
        managed_shows_ttl: dur("managed_shows_ttl", da.managed_shows_ttl)?,
        coalesce_window: dur("coalesce_window", da.coalesce_window)?,
    };

    Ok(Config {
        sentry_dsn,
        logging,
        database,
        rqd,
        queue,
        host_cache,
        scheduler,
        accounting,
        warnings: Vec::new(),
    })
}

// --- environment overrides ----------------------------------------------------------------------

/// Merge `OPENSCHEDULER_*` variables into the tree as strings (they win over the file).
fn apply_env(root: &mut Value, env: &[(String, String)]) -> Result<Ctx, ConfigError> {
    let mut entries: Vec<(String, String, String)> = Vec::new(); // (path, var, value)
    for (name, value) in env {
        let rest = match name.get(..ENV_PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(ENV_PREFIX) => &name[ENV_PREFIX.len()..],
            _ => continue,
        };
        let lowered = rest.to_lowercase();
        let segments: Vec<&str> = lowered.split('.').flat_map(|p| p.split("__")).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::UnknownKey {
                key: format!("{lowered} (from {name})"),
                suggestion: None,
            });
        }
        let path = segments.join(".");
        match entries.iter().find(|(p, _, _)| *p == path) {
            Some((_, other, v)) if v != value => {
                return Err(ConfigError::Conflict {
                    message: format!(
                        "environment variables {other} and {name} both set `{path}`, to \
                         different values"
                    ),
                })
            }
            Some(_) => {}
            None => entries.push((path, name.clone(), value.clone())),
        }
    }
    // An override of one spelling replaces the file's value of the other spellings.
    for group in ALIAS_GROUPS {
        if group.iter().any(|k| entries.iter().any(|(p, _, _)| p == k)) {
            for k in group
                .iter()
                .filter(|k| !entries.iter().any(|(p, _, _)| p == *k))
            {
                remove_path(root, k);
            }
        }
    }
    for (path, var, value) in &entries {
        let segments: Vec<&str> = path.split('.').collect();
        insert_path(root, &segments, Value::String(value.clone()), var)?;
    }
    Ok(Ctx {
        env_origins: entries.into_iter().map(|(p, v, _)| (p, v)).collect(),
    })
}

fn insert_path(
    node: &mut Value,
    segments: &[&str],
    value: Value,
    var: &str,
) -> Result<(), ConfigError> {
    insert_at(node, segments, 0, value, var)
}

fn insert_at(
    node: &mut Value,
    segments: &[&str],
    depth: usize,
    value: Value,
    var: &str,
) -> Result<(), ConfigError> {
    if node.is_null() {
        *node = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(map) = node else {
        return Err(ConfigError::BadValue {
            key: segments[..depth].join("."),
            message: format!("cannot apply {var}: this key does not hold a mapping of settings"),
        });
    };
    let key = Value::String(segments[depth].to_string());
    if depth + 1 == segments.len() {
        map.insert(key, value);
        return Ok(());
    }
    let child = map.entry(key).or_insert(Value::Null);
    insert_at(child, segments, depth + 1, value, var)
}

fn remove_path(root: &mut Value, dotted: &str) {
    let segments: Vec<&str> = dotted.split('.').collect();
    let mut node = root;
    for (i, seg) in segments.iter().enumerate() {
        let Value::Mapping(map) = node else { return };
        if i + 1 == segments.len() {
            map.shift_remove(*seg);
            return;
        }
        match map.get_mut(*seg) {
            Some(child) => node = child,
            None => return,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Loading and validation
// ------------------------------------------------------------------------------------------------

impl Config {
    /// Resolve the file: explicit path (from --config) wins; else env OPENCUE_SCHEDULER_CONFIG
    /// (required to exist if set); else $HOME/.local/share/scheduler.yaml if present; else
    /// defaults only. Returns the path used (if any) too.
    ///
    /// `env` is the process environment (e.g. `std::env::vars().collect::<Vec<_>>()`); it is
    /// also the source of `OPENSCHEDULER_*` overrides. A set-but-empty
    /// `OPENCUE_SCHEDULER_CONFIG` is an error rather than a silent fall-back.
    pub fn load(
        explicit: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v);
        let chosen: Option<PathBuf> = if let Some(p) = explicit {
            Some(p.to_path_buf())
        } else if let Some(p) = lookup(CONFIG_ENV) {
            if p.trim().is_empty() {
                return Err(ConfigError::Io {
                    path: String::new(),
                    message: format!("{CONFIG_ENV} is set but empty"),
                });
            }
            Some(PathBuf::from(p))
        } else {
            lookup("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| Path::new(h).join(".local/share/scheduler.yaml"))
                .filter(|p| p.is_file())
        };
        match chosen {
            None => Ok((Config::from_yaml_str("", "<defaults>", env)?, None)),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Io {
                    path: shown.clone(),
                    message: e.to_string(),
                })?;
                let resolved = std::fs::canonicalize(&path).unwrap_or(path);
                let config = Config::from_yaml_str(&text, &resolved.display().to_string(), env)?;
                Ok((config, Some(resolved)))
            }
        }
    }

    /// Parse YAML text (path is only for messages) then apply env overrides; used by load and
    /// tests. An empty document (or one with only comments) means "all defaults".
    pub fn from_yaml_str(
        text: &str,
        path: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let yaml_err = |message: String| ConfigError::Yaml {
            path: path.to_string(),
            message,
        };
        let mut root: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_yaml::from_str(text).map_err(|e| yaml_err(e.to_string()))?
        };
        root.apply_merge().map_err(|e| yaml_err(e.to_string()))?;
        match root {
            Value::Null => root = Value::Mapping(Mapping::new()),
            Value::Mapping(_) => {}
            ref other => {
                return Err(yaml_err(format!(
                    "the top level must be a mapping of sections, got {}",
                    describe(other)
                )))
            }
        }
        let ctx = apply_env(&mut root, env)?;
        let mut warnings = Vec::new();
        let mut config = build(&root, &ctx, &mut warnings)?;
        config.warnings = warnings;
        config.validate()?;
        Ok(config)
    }

    /// Validate cross-field rules and ranges; called by `from_yaml_str`, and usable after CLI
    /// overrides. Returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, message: impl Into<String>) -> ConfigError {
            ConfigError::BadValue {
                key: key.to_string(),
                message: message.into(),
            }
        }
        fn at_least(key: &str, v: usize, min: usize) -> Result<(), ConfigError> {
            if v < min {
                return Err(bad(key, format!("must be at least {min}, got {v}")));
            }
            Ok(())
        }
        fn within(key: &str, v: usize, min: usize, max: usize) -> Result<(), ConfigError> {
            if v < min || v > max {
                return Err(bad(
                    key,
                    format!("must be between {min} and {max}, got {v}"),
                ));
            }
            Ok(())
        }
        fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
            if d.is_zero() {
                return Err(bad(key, "must be longer than zero"));
            }
            Ok(())
        }
        fn not_empty(key: &str, s: &str) -> Result<(), ConfigError> {
            if s.trim().is_empty() {
                return Err(bad(key, "must not be empty"));
            }
            Ok(())
        }
        fn tags(key: &str, list: &[String]) -> Result<(), ConfigError> {
            if list.iter().any(|t| t.trim().is_empty()) {
                return Err(bad(key, "entries must not be empty"));
            }
            Ok(())
        }

        let l = &self.logging;
        not_empty("logging.level", &l.level)?;
        if l.file_appender {
            not_empty("logging.path", &l.path)?;
        }

        let db = &self.database;
        if db.pool_size < 2 {
            return Err(bad(
                "database.pool_size",
                format!(
                    "must be at least 2 (layer dispatch uses pool_size - 1 connections), got {}",
                    db.pool_size
                ),
            ));
        }
        not_empty("database.db_host", &db.db_host)?;
        not_empty("database.db_name", &db.db_name)?;
        not_empty("database.db_user", &db.db_user)?;
        if db.db_port == 0 {
            return Err(bad("database.db_port", "must not be 0"));
        }
        if let Some(m) = db.core_multiplier {
            if m == 0 {
                return Err(bad("database.core_multiplier", "must be greater than 0"));
            }
            if m != self.queue.core_multiplier {
                return Err(ConfigError::Conflict {
                    message: format!(
                        "`database.core_multiplier` ({m}) and `queue.core_multiplier` ({}) name \
                         the same setting but differ; keep only one",
                        self.queue.core_multiplier
                    ),
                });
            }
        }

        let r = &self.rqd;
        if r.grpc_port == 0 {
            return Err(bad("rqd.grpc_port", "must not be 0"));
        }
        positive("rqd.launch_timeout", r.launch_timeout)?;
        within("rqd.dispatch_threads", r.dispatch_threads, 1, 256)?;

        let q = &self.queue;
        positive("queue.monitor_interval", q.monitor_interval)?;
        at_least("queue.worker_threads", q.worker_threads, 1)?;
        within(
            "queue.dispatch_frames_per_layer_limit",
            q.dispatch_frames_per_layer_limit,
            1,
            1000,
        )?;
        if q.core_multiplier == 0 {
            return Err(bad("queue.core_multiplier", "must be greater than 0"));
        }
        if q.memory_stranded_threshold_kib < 0 {
            return Err(bad(
                "queue.memory_stranded_threshold",
                "must not be negative",
            ));
        }
        positive("queue.cluster_reload_interval", q.cluster_reload_interval)?;
        positive("queue.active_scan_interval", q.active_scan_interval)?;
        within(
            "queue.max_jobs_per_cluster_pass",
            q.max_jobs_per_cluster_pass,
            1,
            10_000,
        )?;
        at_least("queue.manual_tags_chunk_size", q.manual_tags_chunk_size, 1)?;
        at_least(
            "queue.hostname_tags_chunk_size",
            q.hostname_tags_chunk_size,
            1,
        )?;
        at_least(
            "queue.host_candidate_attempts_per_layer",
            q.host_candidate_attempts_per_layer,
            1,
        )?;
        if q.mem_reserved_min_kib < 0 {
            return Err(bad("queue.mem_reserved_min", "must not be negative"));
        }
        positive(
            "queue.allocation_refresh_interval",
            q.allocation_refresh_interval,
        )?;
        tags("queue.selfish_services", &q.selfish_services)?;
        for (key, v) in [
            ("queue.frame_memory_soft_limit", q.frame_memory_soft_limit),
            ("queue.frame_memory_hard_limit", q.frame_memory_hard_limit),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(bad(
                    key,
                    format!("must be a finite number greater than 0, got {v}"),
                ));
            }
        }
        if q.frame_memory_soft_limit > q.frame_memory_hard_limit {
            return Err(bad(
                "queue.frame_memory_soft_limit",
                format!(
                    "must not exceed queue.frame_memory_hard_limit ({} > {})",
                    q.frame_memory_soft_limit, q.frame_memory_hard_limit
                ),
            ));
        }
        at_least(
            "queue.stream.cluster_buffer_size",
            q.stream.cluster_buffer_size,
            1,
        )?;
        at_least("queue.stream.job_buffer_size", q.stream.job_buffer_size, 1)?;
        if let HostBookingStrategy::Epvm {
            max_candidates,
            weights,
        } = &q.host_booking_strategy
        {
            at_least(
                "queue.host_booking_strategy.max_candidates",
                *max_candidates,
                1,
            )?;
            let w = weights;
            for (name, v) in [
                ("cores", w.cores),
                ("mem", w.mem),
                ("gpus", w.gpus),
                ("gpu_mem", w.gpu_mem),
                ("gpu_count_reservation", w.gpu_count_reservation),
                ("gpu_mem_reservation", w.gpu_mem_reservation),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(
                        &format!("queue.host_booking_strategy.weights.{name}"),
                        format!("must be a finite number of at least 0, got {v}"),
                    ));
                }
            }
        }

        let h = &self.host_cache;
        at_least("host_cache.concurrent_groups", h.concurrent_groups, 1)?;
        at_least(
            "host_cache.concurrent_fetch_permit",
            h.concurrent_fetch_permit,
            1,
        )?;
        if h.memory_key_divisor_kib <= 0 {
            return Err(bad(
                "host_cache.memory_key_divisor",
                "must be at least 1KiB",
            ));
        }
        positive("host_cache.checkout_timeout", h.checkout_timeout)?;
        positive("host_cache.monitoring_interval", h.monitoring_interval)?;
        positive("host_cache.clean_up_interval", h.clean_up_interval)?;
        positive("host_cache.group_idle_timeout", h.group_idle_timeout)?;
        positive(
            "host_cache.host_staleness_threshold",
            h.host_staleness_threshold,
        )?;

        let s = &self.scheduler;
        if let Some(f) = &s.facility {
            not_empty("scheduler.facility", f)?;
        }
        tags("scheduler.ignore_tags", &s.ignore_tags)?;
        tags("scheduler.manual_tags", &s.manual_tags)?;
        for t in &s.alloc_tags {
            if t.show.trim().is_empty() || t.tag.trim().is_empty() {
                return Err(bad(
                    "scheduler.alloc_tags",
                    "show and tag must not be empty",
                ));
            }
        }

        let a = &self.accounting;
        positive("accounting.recompute_interval", a.recompute_interval)?;
        positive("accounting.limit_reseed_interval", a.limit_reseed_interval)?;
        positive("accounting.managed_shows_ttl", a.managed_shows_ttl)?;
        positive("accounting.coalesce_window", a.coalesce_window)?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Formats
// ------------------------------------------------------------------------------------------------

/// Split `text` into (number, unit) pairs: digits (with an optional fraction when
/// `allow_fraction`), optional spaces, then a unit made of letters.
fn components(text: &str, allow_fraction: bool) -> Result<Vec<(String, String)>, String> {
    let chars: Vec<char> = text.trim().chars().collect();
    if chars.is_empty() {
        return Err("empty value".to_string());
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_digit() || (allow_fraction && chars[i] == '.'))
        {
            i += 1;
        }
        let number: String = chars[start..i].iter().collect();
        if number.is_empty() {
            return Err(format!(
                "expected a number at `{}`",
                chars[start..].iter().collect::<String>()
            ));
        }
        if !allow_fraction && chars.get(i) == Some(&'.') {
            return Err("fractions are not supported; use a smaller unit (e.g. `1500ms`)".into());
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let ustart = i;
        while i < chars.len() && (chars[i].is_alphabetic()) {
            i += 1;
        }
        let unit: String = chars[ustart..i].iter().collect();
        if i < chars.len() && !chars[i].is_whitespace() && !chars[i].is_ascii_digit() {
            return Err(format!("unexpected character `{}`", chars[i]));
        }
        out.push((number, unit));
    }
    Ok(out)
}

/// Parse a duration with units: `500ms`, `5s`, `2m`, `3h`, `1d`, `1h 30m`, `1h30m`, `10800s`.
/// Units: `us`/`µs`, `ms`, `s`, `m`, `h`, `d` and the long forms (`sec`, `min`, `hours`, ...).
/// A bare number (no unit) and an empty string are errors.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parts = components(text, false)?;
    let mut total: u128 = 0; // nanoseconds
    for (number, unit) in parts {
        let nanos_per: u128 = match unit.as_str() {
            "ns" | "nsec" | "nanos" => 1,
            "us" | "µs" | "usec" | "micros" => 1_000,
            "ms" | "msec" | "millis" => 1_000_000,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
            "d" | "day" | "days" => 86_400_000_000_000,
            "" => {
                return Err(format!(
                    "`{}` has no unit; write e.g. `{number}s` (units: ms, s, m, h, d)",
                    text.trim()
                ))
            }
            other => return Err(format!("unknown unit `{other}` (use ms, s, m, h or d)")),
        };
        let n: u128 = number
            .parse()
            .map_err(|_| format!("number `{number}` is too large"))?;
        total = n
            .checked_mul(nanos_per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| "duration is too large".to_string())?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "duration is too large")?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Parse a byte size: `KiB/MiB/GiB/TiB` are powers of 1024, `KB/MB/GB/TB` powers of 1000, `B`
/// bytes (units are case-insensitive; a space before the unit is allowed; a decimal fraction
/// such as `1.5GiB` is allowed and rounded down to whole bytes). A number without a unit is an
/// error, except `0`.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let parts = components(text, true)?;
    let [(number, unit)] = parts.as_slice() else {
        return Err(format!(
            "expected one number and one unit, got `{}`",
            text.trim()
        ));
    };
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "" if number.chars().all(|c| c == '0' || c == '.') => 0,
        "" => {
            return Err(format!(
                "`{}` has no unit; write e.g. `{number}MiB` (units: B, KiB, MiB, GiB, KB, MB, GB)",
                text.trim()
            ))
        }
        other => {
            return Err(format!(
                "unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() || frac_part.contains('.') || frac_part.len() > 18 {
        return Err(format!("`{number}` is not a valid number"));
    }
    let whole: u128 = int_part
        .parse()
        .map_err(|_| format!("number `{number}` is too large"))?;
    let mut bytes = whole.checked_mul(multiplier).ok_or("size is too large")?;
    if !frac_part.is_empty() {
        let frac: u128 = frac_part
            .parse()
            .map_err(|_| format!("`{number}` is not a valid number"))?;
        bytes += frac * multiplier / 10u128.pow(frac_part.len() as u32);
    }
    u64::try_from(bytes).map_err(|_| "size is too large".to_string())
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM_SAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/compat/upstream-scheduler.yaml"
    );
    const SPEC: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/spec/scheduler-behaviour.md"
    );
    const OUR_SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/scheduler.yaml");

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(yaml, "test.yaml", &no_env())
    }

    fn parse_ok(yaml: &str) -> Config {
        parse(yaml).unwrap_or_else(|e| panic!("{yaml:?} should load: {e}"))
    }

    fn parse_err(yaml: &str) -> ConfigError {
        match parse(yaml) {
            Ok(c) => panic!("{yaml:?} should fail, got {c:?}"),
            Err(e) => e,
        }
    }

    // --- shipped files ---------------------------------------------------------------------

    #[test]
    fn upstream_sample_loads() {
        let text = std::fs::read_to_string(UPSTREAM_SAMPLE).expect("upstream sample present");
        let c = Config::from_yaml_str(&text, UPSTREAM_SAMPLE, &no_env()).unwrap();
        assert!(c.rqd.dry_run_mode);
        assert_eq!(c.database.db_name, "cuebot");
        assert_eq!(c.database.db_user, "cuebot");
        assert_eq!(c.logging.level, "info,sqlx=warn");
        assert_eq!(c.host_cache.monitoring_interval, Duration::from_secs(10));
        assert_eq!(
            c.queue.host_booking_strategy,
            HostBookingStrategy::default()
        );
        assert!(
            c.warnings.iter().any(|w| w.contains("dry_run_mode")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn upstream_sample_with_its_commented_keys_enabled_loads() {
        // Uncomment every `# key: value` line of the upstream sample that sits at a real key's
        // indentation: this exercises the misspelled and obsolete keys it documents.
        let text = std::fs::read_to_string(UPSTREAM_SAMPLE).unwrap();
        let enabled: Vec<String> = text
            .lines()
            .map(|l| {
                let trimmed = l.trim_start();
                let indent = l.len() - trimmed.len();
                let body = trimmed.strip_prefix("# ").unwrap_or("");
                let is_kv = indent == 2
                    && body.contains(": ")
                    && !body.contains("  ")
                    && body.split(':').next().is_some_and(|k| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    });
                if is_kv {
                    format!("  {body}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        let c = parse_ok(&enabled.join("\n"));
        assert_eq!(c.queue.host_candidate_attempts_per_layer, 10);
        assert_eq!(c.queue.empty_job_cycles_before_quitting, Some(10));
        assert_eq!(c.database.core_multiplier, Some(100));
        assert_eq!(c.host_cache.monitoring_interval, Duration::from_secs(1));
        let obsolete: Vec<_> = c
            .warnings
            .iter()
            .filter(|w| w.contains("obsolete"))
            .collect();
        assert_eq!(obsolete.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("misspelling")));
    }

    #[test]
    fn our_sample_loads_and_equals_the_defaults() {
        let text = std::fs::read_to_string(OUR_SAMPLE).expect("conf/scheduler.yaml present");
        let c = Config::from_yaml_str(&text, OUR_SAMPLE, &no_env()).unwrap();
        assert!(!c.rqd.dry_run_mode);
        assert_eq!(c, Config::default());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn our_sample_mentions_every_key() {
        let text = std::fs::read_to_string(OUR_SAMPLE).unwrap();
        for path in all_paths() {
            let last = path.rsplit('.').next().unwrap();
            assert!(
                text.contains(&format!("{last}:")),
                "conf/scheduler.yaml lacks `{path}`"
            );
        }
        assert!(text.contains("OPENSCHEDULER_DATABASE__DB_PASS"));
    }

    #[test]
    fn spec_example_loads() {
        let spec = std::fs::read_to_string(SPEC).expect("spec present");
        let section = &spec[spec.find("### 5.6").expect("§5.6")..];
        let start = section.find("```yaml").unwrap() + "```yaml".len();
        let end = start + section[start..].find("```").unwrap();
        let c = parse_ok(&section[start..end]);
        assert_eq!(c.database.db_host, "pg.example.internal");
        assert!(!c.rqd.dry_run_mode);
        assert_eq!(c.queue.selfish_services, vec!["arnold_selfish"]);
        assert_eq!(c.scheduler.facility.as_deref(), Some("lax"));
        assert_eq!(c.scheduler.ignore_tags, vec!["retired_pool"]);
        assert_eq!(
            c.queue.host_booking_strategy,
            HostBookingStrategy::Epvm {
                max_candidates: 500,
                weights: EpvmWeights::default()
            }
        );
        // Everything else in the example is a default.
        let mut expected = Config::default();
        expected.database.db_host = "pg.example.internal".into();
        expected.database.db_name = "cuebot".into();
        expected.database.db_user = "cuebot".into();
        expected.queue.selfish_services = vec!["arnold_selfish".into()];
        expected.queue.host_booking_strategy = c.queue.host_booking_strategy.clone();
        expected.scheduler.facility = Some("lax".into());
        expected.scheduler.ignore_tags = vec!["retired_pool".into()];
        assert_eq!(c, expected);
    }

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let d = Config::default();
        d.validate().unwrap();
        assert_eq!(parse_ok(""), d);
        assert_eq!(parse_ok("# only a comment\n"), d);
        assert_eq!(d.queue.memory_stranded_threshold_kib, 2 * 1024 * 1024);
        assert_eq!(d.queue.mem_reserved_min_kib, 256_000);
        assert_eq!(d.host_cache.group_idle_timeout, Duration::from_secs(10_800));
        assert_eq!(d.queue.metrics_port, 9090);
        assert_eq!(d.database.pool_size, 20);
    }

    #[test]
    fn null_sections_and_values_mean_defaults() {
        let yaml = "logging:\ndatabase:\n  db_host:\nqueue:\n  stream:\n  host_booking_strategy:\n\
                    host_cache: ~\nscheduler:\n  ignore_tags:\naccounting: null\nsentry_dsn:\n";
        assert_eq!(parse_ok(yaml), Config::default());
    }

    // --- unknown keys -------------------------------------------------------------------------

    #[test]
    fn unknown_keys_name_the_key_and_the_nearest_one() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("loging: {}", "loging", Some("logging")),
            ("databse:\n  db_host: x", "databse", Some("database")),
            ("pool_size: 3", "pool_size", Some("database.pool_size")),
            ("zzzzzz: 1", "zzzzzz", None),
            ("queue:\n  worker_thread: 4", "queue.worker_thread", Some("queue.worker_threads")),
            ("queue:\n  db_pass: x", "queue.db_pass", Some("database.db_pass")),
            ("queue:\n  host_candidate_attempt_per_layer: 3", "queue.host_candidate_attempt_per_layer",
             Some("queue.host_candidate_attempts_per_layer")),
            ("queue:\n  stream:\n    job_bufer_size: 3", "queue.stream.job_bufer_size",
             Some("queue.stream.job_buffer_size")),
            ("host_cache:\n  monitoring: 1s", "host_cache.monitoring",
             Some("host_cache.monitoring_interval")),
            ("rqd:\n  dry_run: true", "rqd.dry_run", Some("rqd.dry_run_mode")),
            ("queue:\n  host_booking_strategy:\n    type: epvm\n    max_candidates: 5\n    weights: {core: 1}",
             "queue.host_booking_strategy.weights.core", Some("queue.host_booking_strategy.weights.cores")),
            ("queue:\n  host_booking_strategy:\n    type: saturation\n    core_saturation: true\n    memory_saturation: true\n    extra: 1",
             "queue.host_booking_strategy.extra", None),
            ("scheduler:\n  alloc_tags: [{show: a, tag: b, tga: c}]", "scheduler.alloc_tags[0].tga",
             Some("scheduler.alloc_tags[0].tag")),
            ("1: x", "1", None),
        ];
        for (yaml, key, suggestion) in cases {
            match parse_err(yaml) {
                ConfigError::UnknownKey {
                    key: k,
                    suggestion: s,
                } => {
                    assert_eq!((k.as_str(), s.as_deref()), (*key, *suggestion), "{yaml}");
                }
                other => panic!("{yaml}: expected UnknownKey, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_key_message_format() {
        let e = parse_err("queue:\n  worker_thread: 4");
        assert_eq!(
            e.to_string(),
            "unknown configuration key `queue.worker_thread` (did you mean `queue.worker_threads`?)"
        );
        assert_eq!(e.key(), Some("queue.worker_thread"));
    }

    #[test]
    fn live_formerly_dead_keys_are_read() {
        let c = parse_ok(
            "queue:\n  monitor_interval: 7s\n  job_back_off_duration: 1m\n\
             host_cache:\n  checkout_timeout: 20s\ndatabase:\n  core_multiplier: 100\n",
        );
        assert_eq!(c.queue.monitor_interval, Duration::from_secs(7));
        assert_eq!(c.queue.job_back_off_duration, Duration::from_secs(60));
        assert_eq!(c.host_cache.checkout_timeout, Duration::from_secs(20));
        assert_eq!(c.database.core_multiplier, Some(100));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn obsolete_keys_warn() {
        let c = parse_ok(
            "queue:\n  subscription_recalculation_interval: 3s\n  resource_recalculation_interval: 10s\n",
        );
        assert_eq!(c.warnings.len(), 2);
        assert!(c.warnings[0]
            .contains("obsolete key `queue.subscription_recalculation_interval` is ignored"));
        assert!(c.warnings[1].contains("queue.resource_recalculation_interval"));
    }

    // --- aliases --------------------------------------------------------------------------

    #[test]
    fn alias_spellings() {
        // (yaml, Ok((attempts, empty cycles, core multiplier)) or Err(()) for a conflict)
        type Expected = Result<(usize, Option<u64>, u32), ()>;
        #[rustfmt::skip]
        let cases: &[(&str, Expected)] = &[
            ("queue: {host_candidate_attemps_per_layer: 4}", Ok((4, None, 100))),
            ("queue: {host_candidate_attempts_per_layer: 5}", Ok((5, None, 100))),
            ("queue: {host_candidate_attemps_per_layer: 6, host_candidate_attempts_per_layer: 6}", Ok((6, None, 100))),
            ("queue: {host_candidate_attemps_per_layer: 6, host_candidate_attempts_per_layer: 7}", Err(())),
            ("queue: {empty_job_cycles_before_quiting: 3}", Ok((10, Some(3), 100))),
            ("queue: {empty_job_cycles_before_quitting: 4}", Ok((10, Some(4), 100))),
            ("queue: {empty_job_cycles_before_quiting: 4, empty_job_cycles_before_quitting: 4}", Ok((10, Some(4), 100))),
            ("queue: {empty_job_cycles_before_quiting: 3, empty_job_cycles_before_quitting: 4}", Err(())),
            ("database: {core_multiplier: 50}", Ok((10, None, 50))),
            ("queue: {core_multiplier: 50}", Ok((10, None, 50))),
            ("database: {core_multiplier: 50}\nqueue: {core_multiplier: 50}", Ok((10, None, 50))),
            ("database: {core_multiplier: 50}\nqueue: {core_multiplier: 100}", Err(())),
        ];
        for (yaml, expected) in cases {
            match (parse(yaml), expected) {
                (Ok(c), Ok((a, e, m))) => {
                    let q = &c.queue;
                    assert_eq!(
                        (
                            q.host_candidate_attempts_per_layer,
                            q.empty_job_cycles_before_quitting,
                            q.core_multiplier
                        ),
                        (*a, *e, *m),
                        "{yaml}"
                    );
                }
                (Err(ConfigError::Conflict { message }), Err(())) => {
                    assert!(message.contains("differ"), "{yaml}: {message}");
                }
                (got, _) => panic!("{yaml}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn programmatic_core_multiplier_mismatch_is_a_conflict() {
        let mut c = Config::default();
        c.database.core_multiplier = Some(10);
        assert!(matches!(c.validate(), Err(ConfigError::Conflict { .. })));
    }

    // --- formats ------------------------------------------------------------------------

    #[test]
    fn durations() {
        #[rustfmt::skip]
        let ok: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("3h", Duration::from_secs(3 * 3600)),
            ("1d", Duration::from_secs(86_400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("1h30m", Duration::from_secs(5400)),
            ("10800s", Duration::from_secs(10_800)),
            (" 5 s ", Duration::from_secs(5)),
            ("0s", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
            ("2 minutes", Duration::from_secs(120)),
            ("1m 1s 1ms", Duration::from_millis(61_001)),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_duration(text), Ok(*expected), "{text}");
        }
        for bad in [
            "",
            "   ",
            "5",
            "10800",
            "1.5s",
            "-5s",
            "5x",
            "s",
            "5s3",
            "5 s 3",
            "1h,30m",
            "99999999999999999999999d",
            "5S",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
    }

    #[test]
    fn byte_sizes() {
        #[rustfmt::skip]
        let ok: &[(&str, u64)] = &[
            ("2GiB", 2 << 30),
            ("250MiB", 250 << 20),
            ("2 GiB", 2 << 30),
            ("4GB", 4_000_000_000),
            ("512KiB", 512 << 10),
            ("1024B", 1024),
            ("1kb", 1000),
            ("1.5GiB", 3 << 29),
            ("1TiB", 1 << 40),
            ("0", 0),
            ("0B", 0),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_byte_size(text), Ok(*expected), "{text}");
        }
        for bad in [
            "",
            "1024",
            "2 G",
            "2GiBs",
            "GiB",
            "-1GiB",
            "1..5GiB",
            "2GiB 1MiB",
            "99999999999999TiB",
        ] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_are_stored_in_kib() {
        let c = parse_ok(
            "queue: {memory_stranded_threshold: 1GiB, mem_reserved_min: 0}\n\
             host_cache: {memory_key_divisor: 4GB}",
        );
        assert_eq!(c.queue.memory_stranded_threshold_kib, 1 << 20);
        assert_eq!(c.queue.mem_reserved_min_kib, 0);
        assert_eq!(c.host_cache.memory_key_divisor_kib, 3_906_250);
    }

    // --- typed values ---------------------------------------------------------------------

    #[test]
    fn bad_values_name_the_key() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("queue: {cluster_empty_sleep: 30}", "queue.cluster_empty_sleep", "expected a duration like `5s`"),
            ("queue: {cluster_empty_sleep: soon}", "queue.cluster_empty_sleep", "expected a duration like `5s`"),
            ("queue: {cluster_empty_sleep: [1s]}", "queue.cluster_empty_sleep", "got a list"),
            ("queue: {worker_threads: -1}", "queue.worker_threads", "must not be negative"),
            ("queue: {worker_threads: \"-2\"}", "queue.worker_threads", "must not be negative"),
            ("queue: {worker_threads: 2.5}", "queue.worker_threads", "whole number"),
            ("queue: {worker_threads: many}", "queue.worker_threads", "whole number"),
            ("queue: {worker_threads: 0}", "queue.worker_threads", "at least 1"),
            ("database: {db_port: 70000}", "database.db_port", "out of range"),
            ("database: {db_port: 0}", "database.db_port", "must not be 0"),
            ("database: {pool_size: 1}", "database.pool_size", "at least 2"),
            ("database: {db_host: [a, b]}", "database.db_host", "expected a string"),
            ("database: {db_host: ''}", "database.db_host", "must not be empty"),
            ("rqd: {dry_run_mode: maybe}", "rqd.dry_run_mode", "expected true or false"),
            ("rqd: {dispatch_threads: 257}", "rqd.dispatch_threads", "between 1 and 256"),
            ("rqd: {dispatch_threads: 0}", "rqd.dispatch_threads", "between 1 and 256"),
            ("rqd: {launch_timeout: 0s}", "rqd.launch_timeout", "longer than zero"),
            ("rqd: 5", "rqd", "expected a mapping"),
            ("queue: {memory_stranded_threshold: 2048}", "queue.memory_stranded_threshold", "bare number"),
            ("queue: {memory_stranded_threshold: 2 gigs}", "queue.memory_stranded_threshold", "unknown unit"),
            ("queue: {dispatch_frames_per_layer_limit: 1001}", "queue.dispatch_frames_per_layer_limit", "between 1 and 1000"),
            ("queue: {max_jobs_per_cluster_pass: 10001}", "queue.max_jobs_per_cluster_pass", "between 1 and 10000"),
            ("queue: {manual_tags_chunk_size: 0}", "queue.manual_tags_chunk_size", "at least 1"),
            ("queue: {hostname_tags_chunk_size: 0}", "queue.hostname_tags_chunk_size", "at least 1"),
            ("queue: {stream: {job_buffer_size: 0}}", "queue.stream.job_buffer_size", "at least 1"),
            ("queue: {core_multiplier: 0}", "queue.core_multiplier", "greater than 0"),
            ("queue: {frame_memory_soft_limit: 3.0}", "queue.frame_memory_soft_limit", "must not exceed"),
            ("queue: {frame_memory_hard_limit: .nan}", "queue.frame_memory_hard_limit", "finite"),
            ("queue: {frame_memory_hard_limit: big}", "queue.frame_memory_hard_limit", "expected a number"),
            ("queue: {selfish_services: {a: 1}}", "queue.selfish_services", "list of strings"),
            ("queue: {selfish_services: [a, [b]]}", "queue.selfish_services", "entry 1"),
            ("queue: {active_scan_interval: 0ms}", "queue.active_scan_interval", "longer than zero"),
            ("host_cache: {memory_key_divisor: 0}", "host_cache.memory_key_divisor", "at least 1KiB"),
            ("host_cache: {memory_key_divisor: 1000B}", "host_cache.memory_key_divisor", "at least 1KiB"),
            ("host_cache: {concurrent_groups: 0}", "host_cache.concurrent_groups", "at least 1"),
            ("logging: {level: ' '}", "logging.level", "must not be empty"),
            ("logging: {file_appender: true, path: ''}", "logging.path", "must not be empty"),
            ("scheduler: {alloc_tags: [showonly]}", "scheduler.alloc_tags", "Invalid format: expected 'show:tag', got 'showonly'"),
            ("scheduler: {alloc_tags: ['a:b:c']}", "scheduler.alloc_tags", "Invalid format"),
            ("scheduler: {alloc_tags: [' :b']}", "scheduler.alloc_tags", "Invalid format"),
            ("scheduler: {alloc_tags: [{show: a}]}", "scheduler.alloc_tags[0]", "needs a non-empty `tag`"),
            ("scheduler: {alloc_tags: [3]}", "scheduler.alloc_tags", "entry 0"),
            ("accounting: {managed_shows_ttl: 30}", "accounting.managed_shows_ttl", "bare number"),
        ];
        for (yaml, key, fragment) in cases {
            let e = parse_err(yaml);
            assert_eq!(e.key(), Some(*key), "{yaml}: {e}");
            assert!(matches!(e, ConfigError::BadValue { .. }), "{yaml}: {e:?}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("bad value for `{key}`: ")),
                "{shown}"
            );
            assert!(
                shown.contains(fragment),
                "{yaml}: `{shown}` lacks `{fragment}`"
            );
            assert!(!shown.contains('\n'));
        }
    }

    #[test]
    fn lenient_scalar_conversions() {
        let c = parse_ok(
            "database: {db_pass: 12345, db_port: \"5433\", pool_size: '8'}\n\
             rqd: {dry_run_mode: 'yes'}\nqueue: {frame_memory_hard_limit: 3, frame_memory_soft_limit: '2.5'}\n\
             scheduler: {facility: '', ignore_tags: 'a, b,,c'}\nlogging: {level: debug}",
        );
        assert_eq!(c.database.db_pass, "12345");
        assert_eq!(c.database.db_port, 5433);
        assert_eq!(c.database.pool_size, 8);
        assert!(c.rqd.dry_run_mode);
        assert_eq!(c.queue.frame_memory_hard_limit, 3.0);
        assert_eq!(c.queue.frame_memory_soft_limit, 2.5);
        assert_eq!(c.scheduler.facility, None);
        assert_eq!(c.scheduler.ignore_tags, vec!["a", "b", "c"]);
        assert_eq!(c.logging.level, "debug");
    }

    #[test]
    fn alloc_tag_forms() {
        let want = vec![
            AllocTag {
                show: "showa".into(),
                tag: "general".into(),
            },
            AllocTag {
                show: "showb".into(),
                tag: "fx".into(),
            },
        ];
        for yaml in [
            "scheduler: {alloc_tags: [{show: showa, tag: general}, {show: showb, tag: fx}]}",
            "scheduler: {alloc_tags: ['showa:general', ' showb : fx ']}",
            "scheduler: {alloc_tags: [{show: showa, tag: general}, 'showb:fx']}",
            "scheduler: {alloc_tags: 'showa:general,showb:fx'}",
        ] {
            assert_eq!(parse_ok(yaml).scheduler.alloc_tags, want, "{yaml}");
        }
        assert_eq!(
            "x:y".parse::<AllocTag>().unwrap(),
            AllocTag {
                show: "x".into(),
                tag: "y".into()
            }
        );
    }

    #[test]
    fn yaml_errors() {
        for yaml in [
            "queue: [",
            "- a\n- b",
            "42",
            "a: 1\na: 2",
            "queue: {x: *nope}",
        ] {
            match parse(yaml) {
                Err(ConfigError::Yaml { path, message }) => {
                    assert_eq!(path, "test.yaml");
                    assert!(!message.is_empty());
                }
                other => panic!("{yaml:?}: expected a YAML error, got {other:?}"),
            }
        }
    }

    #[test]
    fn merge_keys_are_applied() {
        let c = parse_ok(
            "logging: &l {level: warn}\nqueue:\n  stream: &s {cluster_buffer_size: 5}\n  \
             host_booking_strategy:\n    type: epvm\n    max_candidates: 9\n    weights:\n      <<: {mem: 4}\n",
        );
        assert_eq!(c.logging.level, "warn");
        assert_eq!(c.queue.stream.cluster_buffer_size, 5);
        match c.queue.host_booking_strategy {
            HostBookingStrategy::Epvm { weights, .. } => assert_eq!(weights.mem, 4.0),
            other => panic!("{other:?}"),
        }
    }

    // --- host_booking_strategy --------------------------------------------------------------

    #[test]
    fn strategy_forms() {
        let epvm = |max_candidates, weights| HostBookingStrategy::Epvm {
            max_candidates,
            weights,
        };
        let sat = |core_saturation, memory_saturation| HostBookingStrategy::Saturation {
            core_saturation,
            memory_saturation,
        };
        let custom = EpvmWeights {
            mem: 3.0,
            gpus: 0.0,
            ..EpvmWeights::default()
        };
        #[rustfmt::skip]
        let ok: &[(&str, HostBookingStrategy)] = &[
            ("{type: saturation, core_saturation: false, memory_saturation: true}", sat(false, true)),
            ("{type: Saturation, core_saturation: true, memory_saturation: true}", sat(true, true)),
            ("{type: epvm, max_candidates: 500, weights: {}}", epvm(500, EpvmWeights::default())),
            ("{type: epvm, max_candidates: 7, weights: }", epvm(7, EpvmWeights::default())),
            ("{type: epvm, max_candidates: 500, weights: {mem: 3, gpus: 0.0}}", epvm(500, custom)),
            ("{core_saturation: false, memory_saturation: true}", sat(false, true)),
            ("{memory_saturation: true}", sat(true, true)),
            ("{core_saturation: false}", sat(false, false)),
            ("{}", sat(true, false)),
            ("", sat(true, false)),
        ];
        for (form, expected) in ok {
            let c = parse_ok(&format!("queue:\n  host_booking_strategy: {form}\n"));
            assert_eq!(&c.queue.host_booking_strategy, expected, "{form}");
        }
        // (form, error key, fragment)
        #[rustfmt::skip]
        let bad: &[(&str, &str, &str)] = &[
            ("{type: bestfit}", "queue.host_booking_strategy.type", "expected `saturation` or `epvm`"),
            ("{type: 3}", "queue.host_booking_strategy.type", "expected `saturation` or `epvm`"),
            ("{type: , core_saturation: true}", "queue.host_booking_strategy.type", "expected"),
            ("{type: saturation, core_saturation: true}", "queue.host_booking_strategy", "needs both"),
            ("{type: saturation}", "queue.host_booking_strategy", "needs both"),
            ("{type: epvm, weights: {}}", "queue.host_booking_strategy", "needs `max_candidates`"),
            ("{type: epvm, max_candidates: 5}", "queue.host_booking_strategy", "needs `max_candidates` and `weights`"),
            ("{type: epvm, max_candidates: 0, weights: {}}", "queue.host_booking_strategy.max_candidates", "at least 1"),
            ("{type: epvm, max_candidates: 5, weights: {mem: -1}}", "queue.host_booking_strategy.weights.mem", "at least 0"),
            ("{type: epvm, max_candidates: 5, weights: {mem: .inf}}", "queue.host_booking_strategy.weights.mem", "finite"),
            ("{type: epvm, max_candidates: 5, weights: {mem: x}}", "queue.host_booking_strategy.weights.mem", "expected a number"),
            ("{type: epvm, max_candidates: 5, weights: [1]}", "queue.host_booking_strategy.weights", "expected a mapping"),
            ("{type: epvm, max_candidates: 5, weights: {}, core_saturation: true}",
             "queue.host_booking_strategy.core_saturation", "only applies with `type: saturation`"),
            ("{type: saturation, core_saturation: true, memory_saturation: true, max_candidates: 3}",
             "queue.host_booking_strategy.max_candidates", "only applies with `type: epvm`"),
            ("{max_candidates: 3, weights: {}}", "queue.host_booking_strategy.max_candidates", "only applies with `type: epvm`"),
            ("saturation", "queue.host_booking_strategy", "expected a mapping"),
            ("{core_saturation: sometimes}", "queue.host_booking_strategy.core_saturation", "true or false"),
        ];
        for (form, key, fragment) in bad {
            let e = parse_err(&format!("queue:\n  host_booking_strategy: {form}\n"));
            assert_eq!(e.key(), Some(*key), "{form}: {e}");
            assert!(e.to_string().contains(fragment), "{form}: {e}");
        }
        match parse_err("queue:\n  host_booking_strategy: {type: epvm, max_candidates: 5, weights: {}, colour: red}") {
            ConfigError::UnknownKey { key, .. } => assert_eq!(key, "queue.host_booking_strategy.colour"),
            other => panic!("{other:?}"),
        }
    }

    // --- environment -------------------------------------------------------------------------

    #[test]
    fn env_password_both_spellings() {
        for var in [
            "OPENSCHEDULER_database.db_pass",
            "OPENSCHEDULER_DATABASE__DB_PASS",
            "openscheduler_Database__Db_Pass",
        ] {
            let e = env(&[(var, "s3cr3t from env")]);
            let c = Config::from_yaml_str("database: {db_pass: file-pass}", "t", &e).unwrap();
            assert_eq!(c.database.db_pass, "s3cr3t from env", "{var}");
        }
        // Both spellings set: equal is fine, different is a conflict.
        let same = env(&[
            ("OPENSCHEDULER_database.db_pass", "x"),
            ("OPENSCHEDULER_DATABASE__DB_PASS", "x"),
        ]);
        assert_eq!(
            Config::from_yaml_str("", "t", &same)
                .unwrap()
                .database
                .db_pass,
            "x"
        );
        let differ = env(&[
            ("OPENSCHEDULER_database.db_pass", "secretA"),
            ("OPENSCHEDULER_DATABASE__DB_PASS", "secretB"),
        ]);
        match Config::from_yaml_str("", "t", &differ) {
            Err(ConfigError::Conflict { message }) => {
                assert!(message.contains("database.db_pass"));
                assert!(!message.contains("secret"), "values leaked: {message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_overrides_are_typed() {
        let e = env(&[
            ("OPENSCHEDULER_SENTRY_DSN", "https://k@sentry.example/1"),
            ("OPENSCHEDULER_RQD__DRY_RUN_MODE", "1"),
            ("OPENSCHEDULER_QUEUE__WORKER_THREADS", "9"),
            ("OPENSCHEDULER_queue.cluster_empty_sleep", "1m"),
            ("OPENSCHEDULER_QUEUE__SELFISH_SERVICES", "a,b"),
            ("OPENSCHEDULER_QUEUE__MEMORY_STRANDED_THRESHOLD", "1GiB"),
            ("OPENSCHEDULER_QUEUE__STREAM__JOB_BUFFER_SIZE", "4"),
            (
                "OPENSCHEDULER_QUEUE__HOST_BOOKING_STRATEGY__WEIGHTS__MEM",
                "5",
            ),
            ("OPENSCHEDULER_SCHEDULER__ALLOC_TAGS", "s:t"),
            ("OPENSCHEDULER_SCHEDULER__FACILITY", "lax"),
            ("PATH", "/usr/bin"),
            ("OPENCUE_SCHEDULER_CONFIG", "/nonexistent"),
        ]);
        let yaml = "rqd: {dry_run_mode: false}\nqueue:\n  worker_threads: 2\n  host_booking_strategy:\n    \
                    type: epvm\n    max_candidates: 5\n    weights: {}\n";
        let c = Config::from_yaml_str(yaml, "t", &e).unwrap();
        assert_eq!(c.sentry_dsn.as_deref(), Some("https://k@sentry.example/1"));
        assert!(c.rqd.dry_run_mode);
        assert_eq!(c.queue.worker_threads, 9);
        assert_eq!(c.queue.cluster_empty_sleep, Duration::from_secs(60));
        assert_eq!(c.queue.selfish_services, vec!["a", "b"]);
        assert_eq!(c.queue.memory_stranded_threshold_kib, 1 << 20);
        assert_eq!(c.queue.stream.job_buffer_size, 4);
        assert_eq!(
            c.scheduler.alloc_tags,
            vec![AllocTag {
                show: "s".into(),
                tag: "t".into()
            }]
        );
        assert_eq!(c.scheduler.facility.as_deref(), Some("lax"));
        match &c.queue.host_booking_strategy {
            HostBookingStrategy::Epvm { weights, .. } => assert_eq!(weights.mem, 5.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_alias_replaces_the_file_spelling() {
        let yaml =
            "queue: {host_candidate_attemps_per_layer: 10, empty_job_cycles_before_quiting: 3}";
        let e = env(&[
            (
                "OPENSCHEDULER_QUEUE__HOST_CANDIDATE_ATTEMPTS_PER_LAYER",
                "4",
            ),
            ("OPENSCHEDULER_QUEUE__EMPTY_JOB_CYCLES_BEFORE_QUITTING", "8"),
            ("OPENSCHEDULER_DATABASE__CORE_MULTIPLIER", "100"),
        ]);
        let c = Config::from_yaml_str(yaml, "t", &e).unwrap();
        assert_eq!(c.queue.host_candidate_attempts_per_layer, 4);
        assert_eq!(c.queue.empty_job_cycles_before_quitting, Some(8));
        let e = env(&[("OPENSCHEDULER_DATABASE__CORE_MULTIPLIER", "50")]);
        let c = Config::from_yaml_str("queue: {core_multiplier: 100}", "t", &e).unwrap();
        assert_eq!(c.queue.core_multiplier, 50);
    }

    #[test]
    fn env_errors() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            // (variable, value, expected key)
            ("OPENSCHEDULER_DATABASE__DB_PASSS", "x", "database.db_passs (from OPENSCHEDULER_DATABASE__DB_PASSS)"),
            ("OPENSCHEDULER_NOPE__X", "x", "nope (from OPENSCHEDULER_NOPE__X)"),
            ("OPENSCHEDULER_DATABASE_DB_PASS", "x", "database_db_pass (from OPENSCHEDULER_DATABASE_DB_PASS)"),
            ("OPENSCHEDULER_DATABASE__", "x", "database__ (from OPENSCHEDULER_DATABASE__)"),
        ];
        for (var, value, key) in cases {
            match Config::from_yaml_str("", "t", &env(&[(var, value)])) {
                Err(ConfigError::UnknownKey { key: k, .. }) => assert_eq!(k, *key),
                other => panic!("{var}: {other:?}"),
            }
        }
        match Config::from_yaml_str("", "t", &env(&[("OPENSCHEDULER_DATABASE_DB_PASS", "x")])) {
            Err(ConfigError::UnknownKey { suggestion, .. }) => {
                assert_eq!(suggestion.as_deref(), Some("database.db_pass"))
            }
            other => panic!("{other:?}"),
        }
        let e = Config::from_yaml_str("", "t", &env(&[("OPENSCHEDULER_DATABASE__DB_PORT", "big")]))
            .unwrap_err();
        assert_eq!(e.key(), Some("database.db_port"));
        assert!(
            e.to_string().contains("OPENSCHEDULER_DATABASE__DB_PORT"),
            "{e}"
        );
        let e = Config::from_yaml_str("", "t", &env(&[("OPENSCHEDULER_QUEUE", "x")])).unwrap_err();
        assert_eq!(e.key(), Some("queue"));
        let e = Config::from_yaml_str(
            "queue: 3",
            "t",
            &env(&[("OPENSCHEDULER_QUEUE__WORKER_THREADS", "2")]),
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("queue"));
    }

    // --- secrets -----------------------------------------------------------------------------

    #[test]
    fn password_never_shown() {
        let secret = "Sup3r-S3cret";
        let e = env(&[("OPENSCHEDULER_DATABASE__DB_PASS", secret)]);
        let c = Config::from_yaml_str("", "t", &e).unwrap();
        assert_eq!(c.database.db_pass, secret);
        assert!(!format!("{c:?}").contains(secret));
        assert!(!format!("{c:#?}").contains(secret));
        assert!(!format!("{:?}", c.database).contains(secret));
        assert!(format!("{:?}", c.database).contains("<redacted>"));
        let c = parse_ok(&format!("database: {{db_pass: {secret}}}"));
        assert!(!format!("{c:?}").contains(secret));
        // Errors about the password never echo it, even when the colon is forgotten.
        let err = parse(&format!("database:\n  db_pass {secret}\n")).unwrap_err();
        assert_eq!(err.key(), Some("database"));
        assert!(!err.to_string().contains(secret), "{err}");
        for yaml in [
            format!("database: {{db_pass: [{secret}]}}"),
            format!("database: {{db_pass: {{{secret}: 1}}}}"),
        ] {
            let err = parse(&yaml).unwrap_err();
            assert!(!err.to_string().contains(secret), "{err}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
    }

    #[test]
    fn connection_string_quoting() {
        let mut db = DatabaseConfig::default();
        assert_eq!(
            db.connection_string(),
            "host=localhost port=5432 dbname=test user=postgres password=password \
             options='-c timezone=UTC'"
        );
        #[rustfmt::skip]
        let cases: &[(&str, &str)] = &[
            ("simple", "simple"),
            ("", "''"),
            ("with space", "'with space'"),
            ("it's", r"'it\'s'"),
            (r"back\slash", r"'back\\slash'"),
            ("a=b", "'a=b'"),
            ("tab\there", "'tab\there'"),
        ];
        for (pass, quoted) in cases {
            db.db_pass = pass.to_string();
            let s = db.connection_string();
            assert!(
                s.contains(&format!(" password={quoted} options=")),
                "{pass:?}: {s}"
            );
        }
        db.db_user = "o'neil".into();
        assert!(db.connection_string().contains(r"user='o\'neil'"));
    }

    // --- loading -----------------------------------------------------------------------------

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cue-scheduler-config-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn load_resolution_order() {
        let dir = temp_dir("load");
        let explicit = dir.join("explicit.yaml");
        std::fs::write(&explicit, "queue: {worker_threads: 1}").unwrap();
        let by_env = dir.join("env.yaml");
        std::fs::write(&by_env, "queue: {worker_threads: 2}").unwrap();
        let home = dir.join("home");
        std::fs::create_dir_all(home.join(".local/share")).unwrap();
        std::fs::write(
            home.join(".local/share/scheduler.yaml"),
            "queue: {worker_threads: 3}",
        )
        .unwrap();
        let home_s = home.display().to_string();
        let by_env_s = by_env.display().to_string();

        let full = env(&[("HOME", &home_s), (CONFIG_ENV, &by_env_s)]);
        let (c, p) = Config::load(Some(&explicit), &full).unwrap();
        assert_eq!(
            (c.queue.worker_threads, p),
            (1, Some(std::fs::canonicalize(&explicit).unwrap()))
        );
        let (c, _) = Config::load(None, &full).unwrap();
        assert_eq!(c.queue.worker_threads, 2);
        let (c, p) = Config::load(None, &env(&[("HOME", &home_s)])).unwrap();
        assert_eq!(c.queue.worker_threads, 3);
        assert!(p.unwrap().ends_with(".local/share/scheduler.yaml"));
        let (c, p) = Config::load(
            None,
            &env(&[("HOME", &dir.join("nohome").display().to_string())]),
        )
        .unwrap();
        assert_eq!((c, p), (Config::default(), None));
        let (c, p) = Config::load(None, &no_env()).unwrap();
        assert_eq!((c, p), (Config::default(), None));

        // Env overrides apply to a loaded file too.
        let with_override = env(&[
            (CONFIG_ENV, &by_env_s),
            ("OPENSCHEDULER_QUEUE__WORKER_THREADS", "7"),
        ]);
        assert_eq!(
            Config::load(None, &with_override)
                .unwrap()
                .0
                .queue
                .worker_threads,
            7
        );

        // A named file must exist.
        let missing = dir.join("missing.yaml").display().to_string();
        for result in [
            Config::load(None, &env(&[(CONFIG_ENV, &missing), ("HOME", &home_s)])),
            Config::load(Some(Path::new(&missing)), &no_env()),
            Config::load(None, &env(&[(CONFIG_ENV, "")])),
        ] {
            match result {
                Err(e @ ConfigError::Io { .. }) => {
                    assert!(e.to_string().starts_with("cannot read"))
                }
                other => panic!("{other:?}"),
            }
        }
        // Errors in the file name the file.
        let broken = dir.join("broken.yaml");
        std::fs::write(&broken, "queue: [").unwrap();
        match Config::load(Some(&broken), &no_env()) {
            Err(ConfigError::Yaml { path, .. }) => assert!(path.ends_with("broken.yaml")),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_display_is_one_line() {
        let errors = [
            ConfigError::Io {
                path: "p".into(),
                message: "a\nb".into(),
            },
            ConfigError::Yaml {
                path: "p".into(),
                message: "a\nb".into(),
            },
            ConfigError::UnknownKey {
                key: "queue.foo".into(),
                suggestion: Some("queue.bar".into()),
            },
            ConfigError::UnknownKey {
                key: "queue.foo".into(),
                suggestion: None,
            },
            ConfigError::BadValue {
                key: "k".into(),
                message: "m\nn".into(),
            },
            ConfigError::Conflict {
                message: "c\nd".into(),
            },
        ];
        for e in &errors {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert_eq!(
            errors[2].to_string(),
            "unknown configuration key `queue.foo` (did you mean `queue.bar`?)"
        );
        assert_eq!(errors[4].to_string(), "bad value for `k`: m n");
        assert_eq!(errors[0].key(), None);
        assert_eq!(errors[4].key(), Some("k"));
        let _: &dyn std::error::Error = &errors[0];
    }
}
