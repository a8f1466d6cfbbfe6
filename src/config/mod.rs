//! Scheduler configuration: where it comes from, what every key means and how it is checked.
//!
//! The configuration is assembled in three layers (spec §5.1):
//!
//! 1. a YAML file, picked by [`Config::load`] (`--config`, then `OPENCUE_SCHEDULER_CONFIG`,
//!    then `$HOME/.local/share/scheduler.yaml`, else none);
//! 2. `OPENSCHEDULER_*` environment variables, which override the file;
//! 3. built-in defaults for everything left unset.
//!
//! Command-line flags are applied afterwards by the caller.
//!
//! Every key, its alias spellings, its default and its allowed range are rows of one table,
//! [`keys::KEYS`]. Loading goes: YAML text → tree (`yaml_serde::Value`, merge keys applied) →
//! environment overrides → a shape check against the table (unknown keys with the nearest valid
//! key, obsolete keys as warnings, alias spellings) → the table's defaults under the tree →
//! typed structs by serde derive (the lenient scalar conversions of [`values`], with the failing
//! key's path from `serde_path_to_error`) → [`Config::validate`] (ranges from the table, then the
//! rules that tie keys together).
//!
//! Scalars are converted the way upstream's `config` crate did: a quoted `"4"` is accepted where a
//! number is expected and a number is accepted where a string is expected (e.g. a numeric
//! password). Environment values are always strings and go through the same conversions.
//!
//! The database password is never shown by `Debug`, by `Display` or in error messages;
//! [`DatabaseConfig::connection_string`] is the only way to read it back out, and its result must
//! not be logged.

pub mod cli;
pub mod keys;
pub mod settings;
pub mod values;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use yaml_serde::{Mapping, Value};

pub use values::{parse_byte_size, parse_duration};
#[cfg(test)]
use keys::all_paths;

use crate::limits::CONFIG_FILE_BYTES_MAX;
use values as de;


// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// Why the configuration could not be loaded. Every variant displays as a single line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file `{path}`: {}", one_line(.message))]
    Io { path: String, message: String },
    /// The file is not valid YAML, or its top level is not a mapping.
    #[error("invalid configuration file `{path}`: {}", one_line(.message))]
    Yaml { path: String, message: String },
    /// A key that the scheduler does not know (dotted path, e.g. `queue.foo`).
    #[error("unknown configuration key `{key}`{}", did_you_mean(.suggestion))]
    UnknownKey { key: String, suggestion: Option<String> },
    /// A known key with a value of the wrong type or out of range.
    #[error("bad value for `{key}`: {}", one_line(.message))]
    BadValue { key: String, message: String },
    /// Two settings (aliases, or two environment spellings) disagree.
    #[error("conflicting configuration: {}", one_line(.message))]
    Conflict { message: String },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
}

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
// The configuration. Field names are the keys; defaults and ranges are in `keys::KEYS`.
// ------------------------------------------------------------------------------------------------

/// The whole scheduler configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    /// Sentry DSN; `None` (also for an empty value) disables error reporting.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub sentry_dsn: Option<String>,
    pub logging: LoggingConfig,
    pub database: DatabaseConfig,
    pub rqd: RqdConfig,
    pub queue: QueueConfig,
    pub host_cache: HostCacheConfig,
    pub scheduler: SchedulerConfig,
    pub accounting: AccountingConfig,
    /// Things worth a warning at start-up (obsolete keys, dry-run mode, ...). The caller logs them.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoggingConfig {
    /// Log filter in `EnvFilter` syntax, e.g. `info,sqlx=warn`.
    #[serde(deserialize_with = "de::trimmed")]
    pub level: String,
    /// Log to `path` instead of stdout.
    #[serde(deserialize_with = "de::boolean")]
    pub file_appender: bool,
    #[serde(deserialize_with = "de::string")]
    pub path: String,
}

#[derive(Clone, PartialEq, Deserialize)]
pub struct DatabaseConfig {
    /// Connection pool size; the process-wide layer semaphore is `pool_size - 1`.
    #[serde(deserialize_with = "de::uint")]
    pub pool_size: u32,
    #[serde(deserialize_with = "de::string")]
    pub db_host: String,
    #[serde(deserialize_with = "de::uint")]
    pub db_port: u16,
    #[serde(deserialize_with = "de::string")]
    pub db_name: String,
    #[serde(deserialize_with = "de::string")]
    pub db_user: String,
    /// Never printed. Prefer `OPENSCHEDULER_DATABASE__DB_PASS` over writing it in the file.
    #[serde(deserialize_with = "de::string")]
    pub db_pass: String,
    /// The value written as `database.core_multiplier`, if any. It is an alias of
    /// `queue.core_multiplier`, which always holds the effective value.
    #[serde(default, deserialize_with = "de::opt_uint")]
    pub core_multiplier: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RqdConfig {
    #[serde(deserialize_with = "de::uint")]
    pub grpc_port: u16,
    /// Book frames in the database but never call RQD.
    #[serde(deserialize_with = "de::boolean")]
    pub dry_run_mode: bool,
    /// Our addition (`rqd.launch_timeout`): deadline of one `LaunchFrame` call.
    #[serde(deserialize_with = "de::duration")]
    pub launch_timeout: Duration,
    /// Our addition (`rqd.dispatch_threads`): threads issuing RQD calls.
    #[serde(deserialize_with = "de::uint")]
    pub dispatch_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueueConfig {
    /// Period of the status heartbeat log line.
    #[serde(deserialize_with = "de::duration")]
    pub monitor_interval: Duration,
    #[serde(deserialize_with = "de::uint")]
    pub worker_threads: usize,
    #[serde(deserialize_with = "de::uint")]
    pub dispatch_frames_per_layer_limit: usize,
    /// Centicores per core (effective value, after the `database.core_multiplier` alias).
    #[serde(deserialize_with = "de::uint")]
    pub core_multiplier: u32,
    #[serde(rename = "memory_stranded_threshold", deserialize_with = "de::size_kib")]
    pub memory_stranded_threshold_kib: i64,
    /// How long a job whose every layer ended `no_match` is skipped.
    #[serde(deserialize_with = "de::duration")]
    pub job_back_off_duration: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub cluster_empty_sleep: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub cluster_saturated_sleep: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub cluster_reload_interval: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub active_scan_interval: Duration,
    #[serde(deserialize_with = "de::uint")]
    pub max_jobs_per_cluster_pass: usize,
    #[serde(deserialize_with = "de::uint")]
    pub manual_tags_chunk_size: usize,
    #[serde(deserialize_with = "de::uint")]
    pub hostname_tags_chunk_size: usize,
    #[serde(deserialize_with = "de::uint")]
    pub host_candidate_attempts_per_layer: usize,
    /// `None` = run forever.
    #[serde(default, deserialize_with = "de::opt_uint")]
    pub empty_job_cycles_before_quitting: Option<u64>,
    #[serde(rename = "mem_reserved_min", deserialize_with = "de::size_kib")]
    pub mem_reserved_min_kib: i64,
    #[serde(deserialize_with = "de::duration")]
    pub allocation_refresh_interval: Duration,
    #[serde(deserialize_with = "de::string_list")]
    pub selfish_services: Vec<String>,
    #[serde(deserialize_with = "de::float")]
    pub frame_memory_soft_limit: f64,
    #[serde(deserialize_with = "de::float")]
    pub frame_memory_hard_limit: f64,
    #[serde(deserialize_with = "de::uint")]
    pub metrics_port: u16,
    /// Address the metrics/health endpoint binds (our addition; all interfaces by default).
    #[serde(deserialize_with = "de::string")]
    pub metrics_address: String,
    pub stream: StreamConfig,
    pub host_booking_strategy: HostBookingStrategy,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StreamConfig {
    #[serde(deserialize_with = "de::uint")]
    pub cluster_buffer_size: usize,
    #[serde(deserialize_with = "de::uint")]
    pub job_buffer_size: usize,
}

/// `queue.host_booking_strategy`. Its shape (which keys go with which `type`) is checked by
/// `keys::check_strategy` before it is read here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "de::RawStrategy")]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EpvmWeights {
    #[serde(deserialize_with = "de::float")]
    pub cores: f64,
    #[serde(deserialize_with = "de::float")]
    pub mem: f64,
    #[serde(deserialize_with = "de::float")]
    pub gpus: f64,
    #[serde(deserialize_with = "de::float")]
    pub gpu_mem: f64,
    #[serde(deserialize_with = "de::float")]
    pub gpu_count_reservation: f64,
    #[serde(deserialize_with = "de::float")]
    pub gpu_mem_reservation: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HostCacheConfig {
    #[serde(deserialize_with = "de::uint")]
    pub concurrent_groups: usize,
    #[serde(deserialize_with = "de::uint")]
    pub concurrent_fetch_permit: usize,
    #[serde(rename = "memory_key_divisor", deserialize_with = "de::size_kib")]
    pub memory_key_divisor_kib: i64,
    /// Reservation timeout and RQD-failure host back-off.
    #[serde(deserialize_with = "de::duration")]
    pub checkout_timeout: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub monitoring_interval: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub clean_up_interval: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub group_idle_timeout: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub host_staleness_threshold: Duration,
    #[serde(deserialize_with = "de::boolean")]
    pub update_stat_on_book: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default, deserialize_with = "de::opt_string")]
    pub facility: Option<String>,
    #[serde(deserialize_with = "de::string_list")]
    pub ignore_tags: Vec<String>,
    #[serde(deserialize_with = "de::alloc_tags")]
    pub alloc_tags: Vec<AllocTag>,
    #[serde(deserialize_with = "de::string_list")]
    pub manual_tags: Vec<String>,
    /// `legacy` (Cuebot's order) or `smart` (src/matching/policy.rs).
    #[serde(deserialize_with = "de::trimmed")]
    pub policy: String,
    #[serde(deserialize_with = "de::duration")]
    pub reservation_after: Duration,
    #[serde(deserialize_with = "de::uint")]
    pub reservations_max: usize,
    #[serde(deserialize_with = "de::duration")]
    pub runtime_estimate_default: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub fair_share_window: Duration,
    #[serde(deserialize_with = "de::float")]
    pub fair_share_tolerance: f64,
    #[serde(deserialize_with = "de::duration")]
    pub aging_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AllocTag {
    pub show: String,
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AccountingConfig {
    #[serde(deserialize_with = "de::duration")]
    pub recompute_interval: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub limit_reseed_interval: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub managed_shows_ttl: Duration,
    /// How long the accounting listener gathers notifications before it reconciles the rows
    /// they name (one reconcile per window, not one per release).
    #[serde(deserialize_with = "de::duration")]
    pub coalesce_window: Duration,
}

// ------------------------------------------------------------------------------------------------
// Defaults: read from the key table, so they are written once.
// ------------------------------------------------------------------------------------------------

/// The table's defaults for the section at `path`, typed. The table is constant and the unit
/// test `defaults_are_valid_and_match_the_spec` reads every section through here, so a failure
/// is a programming error in `keys::KEYS`, caught before release.
fn builtin<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let tree = keys::defaults_tree();
    let node = path.split('.').filter(|s| !s.is_empty()).fold(&tree, |node, seg| &node[seg]);
    match T::deserialize(node) {
        Ok(value) => value,
        // Justified panic: constant data, covered by unit tests (see above).
        Err(e) => panic!("built-in default of `{path}` is invalid: {e}"),
    }
}

impl Default for Config {
    fn default() -> Self {
        builtin("")
    }
}

macro_rules! default_from_table {
    ($($t:ty => $path:literal),* $(,)?) => {$(
        impl Default for $t {
            fn default() -> Self {
                builtin($path)
            }
        }
    )*};
}
default_from_table!(
    LoggingConfig => "logging",
    DatabaseConfig => "database",
    RqdConfig => "rqd",
    QueueConfig => "queue",
    StreamConfig => "queue.stream",
    HostBookingStrategy => "queue.host_booking_strategy",
    EpvmWeights => "queue.host_booking_strategy.weights",
    HostCacheConfig => "host_cache",
    AccountingConfig => "accounting",
    SchedulerConfig => "scheduler",
);

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
    let plain = !value.is_empty()
        && !value.chars().any(|c| c.is_whitespace() || matches!(c, '\'' | '\\' | '='));
    if plain {
        return value.to_string();
    }
    let escaped: String = value
        .chars()
        .flat_map(|c| (matches!(c, '\'' | '\\').then_some('\\')).into_iter().chain([c]))
        .collect();
    format!("'{escaped}'")
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
// Loading and validation
// ------------------------------------------------------------------------------------------------

const CONFIG_ENV: &str = "OPENCUE_SCHEDULER_CONFIG";

/// Reads a configuration file: only a regular file (a FIFO or a device such as `/dev/zero`
/// would block or never end), and at most `CONFIG_FILE_BYTES_MAX` bytes.
fn read_config_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO without a writer must not hang; the type is checked next,
    // on the opened file, so the check and the read see the same file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    let mut text = String::new();
    file.take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(format!("larger than {CONFIG_FILE_BYTES_MAX} bytes"));
    }
    Ok(text)
}

impl Config {
    /// Resolve the file: explicit path (from --config) wins; else env OPENCUE_SCHEDULER_CONFIG
    /// (required to exist if set); else $HOME/.local/share/scheduler.yaml if present; else
    /// defaults only. Returns the path used (if any) too.
    ///
    /// `env` is the process environment (e.g. `std::env::vars().collect::<Vec<_>>()`); it is
    /// also the source of `OPENSCHEDULER_*` overrides. A set-but-empty
    /// `OPENCUE_SCHEDULER_CONFIG` is an error rather than a silent fall-back. A file with no
    /// settings in it is loaded with a warning naming the database it leaves in effect.
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
        let Some(path) = chosen else {
            return Ok((Config::from_yaml_str("", "<defaults>", env)?, None));
        };
        let text = read_config_file(&path).map_err(|message| ConfigError::Io {
            path: path.display().to_string(),
            message,
        })?;
        let resolved = std::fs::canonicalize(&path).unwrap_or(path);
        let shown = resolved.display().to_string();
        let mut config = Config::from_yaml_str(&text, &shown, env)?;
        if parse_tree(&text, &shown)?.is_null() {
            let db = &config.database;
            config.warnings.insert(
                0,
                format!(
                    "configuration file `{shown}` has no settings: every key takes its default \
                     (database `{}` on {}:{})",
                    db.db_name, db.db_host, db.db_port
                ),
            );
        }
        Ok((config, Some(resolved)))
    }

    /// Parse YAML text (path is only for messages) then apply env overrides; used by load and
    /// tests. An empty document (or one with only comments) means "all defaults".
    pub fn from_yaml_str(
        text: &str,
        path: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut root = parse_tree(text, path)?;
        match root {
            Value::Null => root = Value::Mapping(Mapping::new()),
            Value::Mapping(_) => {}
            ref other => {
                return Err(ConfigError::Yaml {
                    path: path.to_string(),
                    message: format!(
                        "the top level must be a mapping of sections, got {}",
                        values::describe(other)
                    ),
                })
            }
        }
        let ctx = keys::apply_env(&mut root, env)?;
        let mut warnings = Vec::new();
        keys::check_tree(&ctx, &root, &mut warnings)?;
        keys::resolve_aliases(&mut root, &mut warnings)?;
        let mut tree = keys::defaults_tree();
        keys::overlay(&mut tree, &root);
        let mut config: Config = serde_path_to_error::deserialize(&tree)
            .map_err(|e| ctx.bad(&e.path().to_string(), e.inner().to_string()))?;
        if config.rqd.dry_run_mode {
            warnings.push(
                "rqd.dry_run_mode is true: frames are booked in the database but never launched \
                 on RQD"
                    .to_string(),
            );
        }
        config.warnings = warnings;
        config.validate()?;
        Ok(config)
    }

    /// Validate ranges (from the key table) and cross-field rules; called by `from_yaml_str`,
    /// and usable after CLI overrides. Returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::BadValue {
            key: key.to_string(),
            message: message.to_string(),
        };
        let mut texts = vec![
            ("logging.level", Some(&self.logging.level)),
            ("logging.path", self.logging.file_appender.then_some(&self.logging.path)),
            ("database.db_host", Some(&self.database.db_host)),
            ("database.db_name", Some(&self.database.db_name)),
            ("database.db_user", Some(&self.database.db_user)),
            ("scheduler.facility", self.scheduler.facility.as_ref()),
        ];
        for (key, list) in [
            ("queue.selfish_services", &self.queue.selfish_services),
            ("scheduler.ignore_tags", &self.scheduler.ignore_tags),
            ("scheduler.manual_tags", &self.scheduler.manual_tags),
        ] {
            texts.extend(list.iter().map(|entry| (key, Some(entry))));
        }
        for (key, text) in texts {
            if text.is_some_and(|t| t.trim().is_empty()) {
                return Err(bad(key, "must not be empty"));
            }
        }
        if self.scheduler.alloc_tags.iter().any(|t| t.show.trim().is_empty() || t.tag.trim().is_empty()) {
            return Err(bad("scheduler.alloc_tags", "show and tag must not be empty"));
        }
        if crate::matching::policy::PolicyName::parse(&self.scheduler.policy).is_none() {
            return Err(bad("scheduler.policy", &format!("must be `legacy` or `smart`, not `{}`", self.scheduler.policy)));
        }
        let multiplier = self.queue.core_multiplier;
        for (key, m) in [
            ("database.core_multiplier", self.database.core_multiplier),
            ("queue.core_multiplier", Some(multiplier)),
        ] {
            if m == Some(0) {
                return Err(bad(key, "must be greater than 0"));
            }
        }
        if let Some(m) = self.database.core_multiplier.filter(|m| *m != multiplier) {
            return Err(ConfigError::Conflict {
                message: format!(
                    "`database.core_multiplier` ({m}) and `queue.core_multiplier` ({multiplier}) \
                     name the same setting but differ; keep only one"
                ),
            });
        }
        for (key, value) in self.numbers() {
            keys::check_range(key, value)?;
        }
        let q = &self.queue;
        if q.frame_memory_soft_limit > q.frame_memory_hard_limit {
            return Err(bad(
                "queue.frame_memory_soft_limit",
                &format!(
                    "must not exceed queue.frame_memory_hard_limit ({} > {})",
                    q.frame_memory_soft_limit, q.frame_memory_hard_limit
                ),
            ));
        }
        Ok(())
    }

    /// Every numeric setting with its key, for the range check. A unit test checks that this
    /// list and the ranged rows of `keys::KEYS` name the same keys.
    fn numbers(&self) -> Vec<(&'static str, keys::Number)> {
        use keys::Number::{Duration as D, Float as F, Int as I, Kib as K};
        let (db, r, q, h, a) = (&self.database, &self.rqd, &self.queue, &self.host_cache, &self.accounting);
        let n = |v: usize| I(v as u64);
        // database.core_multiplier before its alias queue.core_multiplier, so a bad value
        // written there is reported there.
        let mut out = vec![
            ("database.pool_size", I(db.pool_size.into())),
            ("database.db_port", I(db.db_port.into())),
            ("rqd.grpc_port", I(r.grpc_port.into())),
            ("rqd.launch_timeout", D(r.launch_timeout)),
            ("rqd.dispatch_threads", n(r.dispatch_threads)),
            ("queue.monitor_interval", D(q.monitor_interval)),
            ("queue.worker_threads", n(q.worker_threads)),
            ("queue.dispatch_frames_per_layer_limit", n(q.dispatch_frames_per_layer_limit)),
            ("queue.core_multiplier", I(q.core_multiplier.into())),
            ("queue.memory_stranded_threshold", K(q.memory_stranded_threshold_kib)),
            ("queue.job_back_off_duration", D(q.job_back_off_duration)),
            ("queue.cluster_empty_sleep", D(q.cluster_empty_sleep)),
            ("queue.cluster_saturated_sleep", D(q.cluster_saturated_sleep)),
            ("queue.cluster_reload_interval", D(q.cluster_reload_interval)),
            ("queue.active_scan_interval", D(q.active_scan_interval)),
            ("queue.max_jobs_per_cluster_pass", n(q.max_jobs_per_cluster_pass)),
            ("queue.manual_tags_chunk_size", n(q.manual_tags_chunk_size)),
            ("queue.hostname_tags_chunk_size", n(q.hostname_tags_chunk_size)),
            ("queue.host_candidate_attempts_per_layer", n(q.host_candidate_attempts_per_layer)),
            ("queue.mem_reserved_min", K(q.mem_reserved_min_kib)),
            ("queue.allocation_refresh_interval", D(q.allocation_refresh_interval)),
            ("queue.frame_memory_soft_limit", F(q.frame_memory_soft_limit)),
            ("queue.frame_memory_hard_limit", F(q.frame_memory_hard_limit)),
            ("queue.metrics_port", I(q.metrics_port.into())),
            ("queue.stream.cluster_buffer_size", n(q.stream.cluster_buffer_size)),
            ("queue.stream.job_buffer_size", n(q.stream.job_buffer_size)),
            ("host_cache.concurrent_groups", n(h.concurrent_groups)),
            ("host_cache.concurrent_fetch_permit", n(h.concurrent_fetch_permit)),
            ("host_cache.memory_key_divisor", K(h.memory_key_divisor_kib)),
            ("host_cache.checkout_timeout", D(h.checkout_timeout)),
            ("host_cache.monitoring_interval", D(h.monitoring_interval)),
            ("host_cache.clean_up_interval", D(h.clean_up_interval)),
            ("host_cache.group_idle_timeout", D(h.group_idle_timeout)),
            ("host_cache.host_staleness_threshold", D(h.host_staleness_threshold)),
            ("accounting.recompute_interval", D(a.recompute_interval)),
            ("accounting.limit_reseed_interval", D(a.limit_reseed_interval)),
            ("accounting.managed_shows_ttl", D(a.managed_shows_ttl)),
            ("accounting.coalesce_window", D(a.coalesce_window)),
            ("scheduler.reservation_after", D(self.scheduler.reservation_after)),
            ("scheduler.reservations_max", n(self.scheduler.reservations_max)),
            ("scheduler.runtime_estimate_default", D(self.scheduler.runtime_estimate_default)),
            ("scheduler.fair_share_window", D(self.scheduler.fair_share_window)),
            ("scheduler.fair_share_tolerance", F(self.scheduler.fair_share_tolerance)),
            ("scheduler.aging_after", D(self.scheduler.aging_after)),
        ];
        if let Some(m) = db.core_multiplier {
            out.insert(2, ("database.core_multiplier", I(m.into())));
        }
        if let Some(c) = q.empty_job_cycles_before_quitting {
            out.push(("queue.empty_job_cycles_before_quitting", I(c)));
        }
        if let HostBookingStrategy::Epvm { max_candidates, weights: w } = &q.host_booking_strategy {
            out.push(("queue.host_booking_strategy.max_candidates", n(*max_candidates)));
            for (key, v) in [
                ("queue.host_booking_strategy.weights.cores", w.cores),
                ("queue.host_booking_strategy.weights.mem", w.mem),
                ("queue.host_booking_strategy.weights.gpus", w.gpus),
                ("queue.host_booking_strategy.weights.gpu_mem", w.gpu_mem),
                ("queue.host_booking_strategy.weights.gpu_count_reservation", w.gpu_count_reservation),
                ("queue.host_booking_strategy.weights.gpu_mem_reservation", w.gpu_mem_reservation),
            ] {
                out.push((key, F(v)));
            }
        }
        out
    }
}

/// YAML text to a tree with merge keys (`<<:`) applied; blank text is an empty document.
fn parse_tree(text: &str, path: &str) -> Result<Value, ConfigError> {
    let yaml_err = |e: yaml_serde::Error| ConfigError::Yaml {
        path: path.to_string(),
        message: e.to_string(),
    };
    let mut root: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        yaml_serde::from_str(text).map_err(yaml_err)?
    };
    root.apply_merge().map_err(yaml_err)?;
    Ok(root)
}

#[cfg(test)]
mod tests;
