//! The key table — every key, its default and its allowed range, in one place — and what is
//! done with it: environment overrides, the shape check (unknown keys with a suggestion,
//! obsolete keys, section types), alias spellings, defaults and range checks.

use std::time::Duration;

use yaml_serde::{Mapping, Value};

use super::values::{describe, describe_kind, scalar_text};
use super::ConfigError;

/// What values a key allows. Every numeric key has one of the bounded kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// Text, flags and lists: no numeric range.
    Any,
    /// A whole number in `min..=max`.
    Int(u64, u64),
    /// A TCP port, 1..=65535.
    Port,
    /// A duration in `min..=max`.
    Duration(Duration, Duration),
    /// A byte size in `min..=max` KiB.
    Kib(i64, i64),
    /// A finite number in `min..=max`; greater than `min` (not equal) when `open` is true.
    Float { min: f64, max: f64, open: bool },
}

/// One configuration key. `default` is its text form, read by the same conversions as the
/// file (`None`: unset, or only meaningful inside another key).
pub struct Key {
    pub path: &'static str,
    pub default: Option<&'static str>,
    pub range: Range,
}

const fn key(path: &'static str, default: &'static str, range: Range) -> Key {
    Key { path, default: Some(default), range }
}
const fn unset(path: &'static str, range: Range) -> Key {
    Key { path, default: None, range }
}

const MIN: u64 = 60;
const DAY: u64 = 86_400;
const GIB_KIB: i64 = 1 << 20;
const TIB_KIB: i64 = 1 << 30;
const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
/// Up to a day, zero allowed (sleeps and back-offs that may be turned off).
const UP_TO_A_DAY: Range = Range::Duration(Duration::ZERO, secs(DAY));
/// Longer than zero, up to a day (periods and timeouts).
const PERIOD: Range = Range::Duration(Duration::from_millis(1), secs(DAY));
const WEIGHT: Range = Range::Float { min: 0.0, max: 1000.0, open: false };
const MEMORY_FACTOR: Range = Range::Float { min: 0.0, max: 100.0, open: true };

use Range::{Any, Int, Kib, Port};

/// Every key (spec §5.2, 2026 defaults). Sections are the prefixes of these paths.
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    unset("sentry_dsn", Any),
    // Upstream's default was the malformed `debug:sqlx=info` (§5.3).
    key("logging.level", "info,sqlx=warn", Any),
    key("logging.file_appender", "false", Any),
    key("logging.path", "/opt/rqd/logs/scheduler.log", Any),
    // The layer semaphore is pool_size - 1 connections.
    key("database.pool_size", "20", Int(2, 1000)),
    key("database.db_host", "localhost", Any),
    key("database.db_port", "5432", Port),
    key("database.db_name", "test", Any),
    key("database.db_user", "postgres", Any),
    key("database.db_pass", "password", Any),
    unset("database.core_multiplier", Int(1, 10_000)),
    key("rqd.grpc_port", "8444", Port),
    key("rqd.dry_run_mode", "false", Any),
    key("rqd.launch_timeout", "10s", Range::Duration(Duration::from_millis(1), secs(10 * MIN))),
    key("rqd.dispatch_threads", "8", Int(1, 256)),
    key("queue.monitor_interval", "5s", PERIOD),
    key("queue.worker_threads", "4", Int(1, 256)),
    key("queue.dispatch_frames_per_layer_limit", "20", Int(1, 1000)),
    key("queue.core_multiplier", "100", Int(1, 10_000)),
    key("queue.memory_stranded_threshold", "2GiB", Kib(0, TIB_KIB)),
    key("queue.job_back_off_duration", "300s", UP_TO_A_DAY),
    key("queue.cluster_empty_sleep", "30s", UP_TO_A_DAY),
    key("queue.cluster_saturated_sleep", "5s", UP_TO_A_DAY),
    key("queue.cluster_reload_interval", "120s", PERIOD),
    key("queue.active_scan_interval", "2s", PERIOD),
    key("queue.max_jobs_per_cluster_pass", "20", Int(1, 10_000)),
    key("queue.manual_tags_chunk_size", "50", Int(1, 10_000)),
    key("queue.hostname_tags_chunk_size", "50", Int(1, 10_000)),
    key("queue.host_candidate_attempts_per_layer", "10", Int(1, 10_000)),
    unset(ATTEMPTS_MISSPELLED, Int(1, 10_000)),
    unset("queue.empty_job_cycles_before_quiting", Int(0, 1_000_000_000)),
    unset("queue.empty_job_cycles_before_quitting", Int(0, 1_000_000_000)),
    key("queue.mem_reserved_min", "250MiB", Kib(0, TIB_KIB)),
    key("queue.allocation_refresh_interval", "3s", PERIOD),
    key("queue.selfish_services", "", Any),
    key("queue.frame_memory_soft_limit", "1.6", MEMORY_FACTOR),
    key("queue.frame_memory_hard_limit", "2.0", MEMORY_FACTOR),
    // 0 picks a free port.
    key("queue.metrics_port", "9090", Int(0, 65_535)),
    key("queue.metrics_address", "0.0.0.0", Any),
    key("queue.stream.cluster_buffer_size", "3", Int(1, 1000)),
    key("queue.stream.job_buffer_size", "3", Int(1, 1000)),
    unset("queue.host_booking_strategy.type", Any),
    key("queue.host_booking_strategy.core_saturation", "true", Any),
    key("queue.host_booking_strategy.memory_saturation", "false", Any),
    unset("queue.host_booking_strategy.max_candidates", Int(1, 100_000)),
    key("queue.host_booking_strategy.weights.cores", "1.0", WEIGHT),
    key("queue.host_booking_strategy.weights.mem", "1.0", WEIGHT),
    key("queue.host_booking_strategy.weights.gpus", "2.0", WEIGHT),
    key("queue.host_booking_strategy.weights.gpu_mem", "1.0", WEIGHT),
    key("queue.host_booking_strategy.weights.gpu_count_reservation", "2.0", WEIGHT),
    key("queue.host_booking_strategy.weights.gpu_mem_reservation", "2.0", WEIGHT),
    key("host_cache.concurrent_groups", "3", Int(1, 64)),
    key("host_cache.concurrent_fetch_permit", "4", Int(1, 64)),
    key("host_cache.memory_key_divisor", "2GiB", Kib(1, TIB_KIB)),
    key("host_cache.checkout_timeout", "12s", PERIOD),
    // The upstream sample's comment says 1s; the real default is 10s (§4.3).
    key("host_cache.monitoring_interval", "10s", PERIOD),
    key("host_cache.clean_up_interval", "300s", PERIOD),
    key("host_cache.group_idle_timeout", "3h", Range::Duration(Duration::from_millis(1), secs(7 * DAY))),
    key("host_cache.host_staleness_threshold", "120s", PERIOD),
    key("host_cache.update_stat_on_book", "false", Any),
    unset("scheduler.facility", Any),
    key("scheduler.ignore_tags", "", Any),
    key("scheduler.alloc_tags", "", Any),
    key("scheduler.manual_tags", "", Any),
    // Scheduling policy (issue 11; README "Scheduling policy"): legacy is Cuebot's order.
    key("scheduler.policy", "legacy", Any),
    key("scheduler.reservation_after", "10s", UP_TO_A_DAY),
    key("scheduler.reservations_max", "8", Int(0, 10_000)),
    key("scheduler.runtime_estimate_default", "300s", PERIOD),
    key("scheduler.fair_share_window", "30s", PERIOD),
    key("scheduler.fair_share_tolerance", "0.05", Range::Float { min: 0.0, max: 1.0, open: false }),
    key("scheduler.aging_after", "120s", UP_TO_A_DAY),
    key("accounting.recompute_interval", "15s", PERIOD),
    key("accounting.limit_reseed_interval", "300s", PERIOD),
    key("accounting.managed_shows_ttl", "30s", PERIOD),
    key("accounting.coalesce_window", "50ms", Range::Duration(Duration::from_millis(1), secs(MIN))),
];

/// The sample's spelling: accepted, never suggested.
pub const ATTEMPTS_MISSPELLED: &str = "queue.host_candidate_attemps_per_layer";

/// Keys that are ignored with a warning saying why.
const OBSOLETE: &[(&str, &str)] = &[
    (
        "queue.subscription_recalculation_interval",
        "subscription usage is rewritten every `accounting.recompute_interval`",
    ),
    (
        "queue.resource_recalculation_interval",
        "resource tables are rewritten every `accounting.recompute_interval`",
    ),
];

/// Pairs of keys that name one setting, and which of the two the typed configuration reads.
/// Both set to different values is a conflict; an environment override of one replaces the
/// file's value of the other. `keep` leaves the other spelling in place (it has a field too).
struct Alias {
    pair: [&'static str; 2],
    canonical: usize,
    keep: bool,
}
const ALIASES: &[Alias] = &[
    Alias { pair: ["queue.host_candidate_attempts_per_layer", ATTEMPTS_MISSPELLED], canonical: 0, keep: false },
    Alias {
        pair: ["queue.empty_job_cycles_before_quiting", "queue.empty_job_cycles_before_quitting"],
        canonical: 1,
        keep: false,
    },
    Alias { pair: ["queue.core_multiplier", "database.core_multiplier"], canonical: 0, keep: true },
];

const STRATEGY: &str = "queue.host_booking_strategy";
const ENV_PREFIX: &str = "OPENSCHEDULER_";

pub fn find(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_section(path: &str) -> bool {
    path.is_empty() || KEYS.iter().any(|k| k.path.len() > path.len() && k.path.starts_with(path) && k.path[path.len()..].starts_with('.'))
}

/// The names directly under a section, in table order.
fn children(section: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        let rest = if section.is_empty() { Some(k.path) } else { k.path.strip_prefix(section).and_then(|r| r.strip_prefix('.')) };
        if let Some(name) = rest.and_then(|r| r.split('.').next()) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// All dotted paths (sections and leaves) that may be suggested.
pub fn all_paths() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in KEYS.iter().filter(|k| k.path != ATTEMPTS_MISSPELLED) {
        let segments: Vec<&str> = k.path.split('.').collect();
        for end in 1..=segments.len() {
            let p = segments[..end].join(".");
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Nearest candidate: edit distance <= 3 (and smaller than the key itself, so that short keys
/// do not match everything), or one is a prefix of the other (at least 3 characters shared).
fn nearest<'k>(unknown: &str, candidates: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let lower = unknown.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for cand in candidates {
        let d = strsim::levenshtein(&lower, cand);
        let (short, long) = if lower.len() <= cand.len() { (lower.as_str(), cand) } else { (cand, lower.as_str()) };
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
    let misspelled = ATTEMPTS_MISSPELLED.rsplit('.').next();
    if let Some(k) = nearest(unknown, level.iter().copied().filter(|k| Some(*k) != misspelled)) {
        return Some(join(section, k));
    }
    // The same key in another section, e.g. top-level `pool_size` → `database.pool_size`.
    let lower = unknown.to_lowercase();
    paths.into_iter().find(|p| p.rsplit('.').next() == Some(lower.as_str()))
}

// ------------------------------------------------------------------------------------------------
// Environment overrides
// ------------------------------------------------------------------------------------------------

/// Where environment overrides were applied, for error messages.
pub struct Ctx {
    /// (dotted path, variable name)
    env_origins: Vec<(String, String)>,
}

impl Ctx {
    pub fn bad(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let mut message = message.into();
        if let Some((_, var)) = self.env_origins.iter().find(|(p, _)| p == key) {
            message.push_str(&format!(" (from environment variable {var})"));
        }
        ConfigError::BadValue { key: key.to_string(), message }
    }

    fn unknown(&self, section: &str, name: &str, level: &[&str]) -> ConfigError {
        let full = join(section, name);
        let suggestion = suggest(section, name, level);
        let under = format!("{full}.");
        let key = match self.env_origins.iter().find(|(p, _)| *p == full || p.starts_with(&under)) {
            Some((_, var)) => format!("{full} (from {var})"),
            None => full,
        };
        ConfigError::UnknownKey { key, suggestion }
    }
}

/// Merge `OPENSCHEDULER_*` variables into the tree as strings (they win over the file). The
/// key is the rest of the name, lower-cased, nested by `__` or `.`.
pub fn apply_env(root: &mut Value, env: &[(String, String)]) -> Result<Ctx, ConfigError> {
    let mut entries: Vec<(String, String, String)> = Vec::new(); // (path, var, value)
    for (name, value) in env {
        let rest = match name.get(..ENV_PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(ENV_PREFIX) => &name[ENV_PREFIX.len()..],
            _ => continue,
        };
        let lowered = rest.to_lowercase();
        let segments: Vec<&str> = lowered.split('.').flat_map(|p| p.split("__")).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::UnknownKey { key: format!("{lowered} (from {name})"), suggestion: None });
        }
        let path = segments.join(".");
        match entries.iter().find(|(p, _, _)| *p == path) {
            Some((_, other, v)) if v != value => {
                return Err(ConfigError::Conflict {
                    message: format!("environment variables {other} and {name} both set `{path}`, to different values"),
                })
            }
            Some(_) => {}
            None => entries.push((path, name.clone(), value.clone())),
        }
    }
    // An override of one spelling replaces the file's value of the other spellings.
    for alias in ALIASES {
        let set = |k: &str| entries.iter().any(|(p, _, _)| p == k);
        if alias.pair.iter().any(|k| set(k)) {
            for k in alias.pair.iter().filter(|k| !set(k)) {
                remove_path(root, k);
            }
        }
    }
    for (path, var, value) in &entries {
        let segments: Vec<&str> = path.split('.').collect();
        let mut node = &mut *root;
        for (depth, seg) in segments.iter().enumerate() {
            if node.is_null() {
                *node = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(map) = node else {
                return Err(ConfigError::BadValue {
                    key: segments[..depth].join("."),
                    message: format!("cannot apply {var}: this key does not hold a mapping of settings"),
                });
            };
            let child = map.entry(Value::String(seg.to_string())).or_insert(Value::Null);
            if depth + 1 == segments.len() {
                *child = Value::String(value.clone());
            }
            node = child;
        }
    }
    Ok(Ctx { env_origins: entries.into_iter().map(|(p, v, _)| (p, v)).collect() })
}

fn get<'v>(root: &'v Value, dotted: &str) -> Option<&'v Value> {
    dotted.split('.').try_fold(root, |node, seg| node.get(seg)).filter(|v| !v.is_null())
}

fn remove_path(root: &mut Value, dotted: &str) -> Option<Value> {
    let (parent, last) = match dotted.rsplit_once('.') {
        Some((parent, last)) => (parent.split('.').try_fold(root, |node, seg| node.get_mut(seg))?, last),
        None => (root, dotted),
    };
    parent.as_mapping_mut()?.shift_remove(last)
}

// ------------------------------------------------------------------------------------------------
// Shape: unknown and obsolete keys, sections, aliases
// ------------------------------------------------------------------------------------------------

/// Checks every key of the tree against the table: unknown keys are errors naming the nearest
/// valid key, obsolete keys only add a warning, and sections must be mappings (or empty).
pub fn check_tree(ctx: &Ctx, root: &Value, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    check_section(ctx, "", Some(root), warnings)
}

fn mapping<'v>(ctx: &Ctx, path: &str, value: Option<&'v Value>) -> Result<Option<&'v Mapping>, ConfigError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(m)) => Ok(Some(m)),
        Some(other) => Err(ctx.bad(path, format!("expected a mapping of settings, got {}", describe_kind(other)))),
    }
}

/// The keys of `map`, all of which must be in `known` (or obsolete).
fn check_keys(ctx: &Ctx, path: &str, map: &Mapping, known: &[&str], warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    for key in map.keys() {
        let name = match key {
            Value::String(s) => s.as_str(),
            other => return Err(ctx.unknown(path, &scalar_text(other).unwrap_or_else(|| describe(other)), known)),
        };
        if known.contains(&name) {
            continue;
        }
        match OBSOLETE.iter().find(|(k, _)| *k == join(path, name)) {
            Some((k, why)) => warnings.push(format!("obsolete key `{k}` is ignored ({why})")),
            None => return Err(ctx.unknown(path, name, known)),
        }
    }
    Ok(())
}

/// Recurses only into the table's sections (at most four levels), whatever the input's depth.
fn check_section(ctx: &Ctx, path: &str, value: Option<&Value>, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    if path == STRATEGY {
        let map = match value {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Mapping(m)) => m,
            Some(other) => {
                return Err(ctx.bad(path, format!("expected a mapping with `type: saturation` or `type: epvm`, got {}", describe(other))))
            }
        };
        return check_strategy(ctx, map, warnings);
    }
    let Some(map) = mapping(ctx, path, value)? else { return Ok(()) };
    check_keys(ctx, path, map, &children(path), warnings)?;
    for (name, child) in map.iter().filter_map(|(k, v)| Some((k.as_str()?, v))) {
        let full = join(path, name);
        if is_section(&full) {
            check_section(ctx, &full, Some(child), warnings)?;
        } else if full == "scheduler.alloc_tags" {
            check_alloc_tags(ctx, &full, child, warnings)?;
        }
    }
    Ok(())
}

/// `{show, tag}` entries of `scheduler.alloc_tags` (`show:tag` strings are read later).
fn check_alloc_tags(ctx: &Ctx, key: &str, value: &Value, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let Value::Sequence(items) = value else { return Ok(()) };
    for (i, item) in items.iter().enumerate() {
        let Value::Mapping(m) = item else { continue };
        let path = format!("{key}[{i}]");
        check_keys(ctx, &path, m, &["show", "tag"], warnings)?;
        for name in ["show", "tag"] {
            let field = m.get(name).filter(|v| !v.is_null());
            if let Some(v) = field.filter(|v| scalar_text(v).is_none()) {
                return Err(ctx.bad(&join(&path, name), format!("expected a string, got {}", describe(v))));
            }
            if field.and_then(scalar_text).is_none_or(|s| s.trim().is_empty()) {
                return Err(ctx.bad(&path, format!("needs a non-empty `{name}` (entries are {{show, tag}})")));
            }
        }
    }
    Ok(())
}

/// Decision (spec §5.2 "`saturation` needs both flags"): the 2026 tagged form
/// `{type: saturation, ...}` must set both `core_saturation` and `memory_saturation`, and
/// `{type: epvm, ...}` must set `max_candidates` and `weights` (each weight then defaults on its
/// own, so `weights: {}` is fine). The Dec-2025 flat form without `type` is lenient: a missing
/// flag takes its default, so `{}` is the default strategy. A null `weights:` counts as an empty
/// mapping; a null flag or `max_candidates` counts as missing.
fn check_strategy(ctx: &Ctx, map: &Mapping, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let path = STRATEGY;
    let present = |k: &str| map.get(k).is_some_and(|v| !v.is_null());
    let misplaced = |keys: [&str; 2], wanted: &str| match keys.iter().find(|k| map.contains_key(**k)) {
        Some(k) => Err(ctx.bad(&join(path, k), format!("only applies with `type: {wanted}` in `{path}`"))),
        None => Ok(()),
    };
    let type_key = join(path, "type");
    let epvm = match map.get("type").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => match scalar_text(v).map(|t| t.trim().to_ascii_lowercase()).as_deref() {
            Some("saturation") => Some(false),
            Some("epvm") => Some(true),
            Some(_) => return Err(ctx.bad(&type_key, format!("expected `saturation` or `epvm`, got {}", describe(v)))),
            None => return Err(ctx.bad(&type_key, format!("expected a string, got {}", describe(v)))),
        },
    };
    match epvm {
        None => {
            misplaced(["max_candidates", "weights"], "epvm")?;
            if map.contains_key("type") {
                // `type:` with no value: not the flat form, and not a valid tag either.
                return Err(ctx.bad(&type_key, "expected `saturation` or `epvm`"));
            }
            check_keys(ctx, path, map, &["core_saturation", "memory_saturation"], warnings)
        }
        Some(false) => {
            misplaced(["max_candidates", "weights"], "epvm")?;
            check_keys(ctx, path, map, &["type", "core_saturation", "memory_saturation"], warnings)?;
            if !present("core_saturation") || !present("memory_saturation") {
                return Err(ctx.bad(path, "`type: saturation` needs both `core_saturation` and `memory_saturation` (true or false)"));
            }
            Ok(())
        }
        Some(true) => {
            misplaced(["core_saturation", "memory_saturation"], "saturation")?;
            check_keys(ctx, path, map, &["type", "max_candidates", "weights"], warnings)?;
            if !present("max_candidates") || !map.contains_key("weights") {
                return Err(ctx.bad(path, "`type: epvm` needs `max_candidates` and `weights` (`weights: {}` uses the default weights)"));
            }
            check_section(ctx, &join(path, "weights"), map.get("weights"), warnings)
        }
    }
}

/// Two spellings of one setting: either may be set; both set to different values is a
/// conflict. The value ends up under the spelling the typed configuration reads.
pub fn resolve_aliases(root: &mut Value, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    if get(root, ATTEMPTS_MISSPELLED).is_some() {
        warnings.push(format!(
            "`{ATTEMPTS_MISSPELLED}` is the upstream misspelling of `queue.host_candidate_attempts_per_layer`; both are accepted"
        ));
    }
    for alias in ALIASES {
        let [a, b] = alias.pair;
        let texts = [get(root, a).and_then(scalar_text), get(root, b).and_then(scalar_text)];
        if let [Some(va), Some(vb)] = &texts {
            if va.trim() != vb.trim() {
                return Err(ConfigError::Conflict {
                    message: format!("`{a}` ({va}) and `{b}` ({vb}) name the same setting but differ; keep only one"),
                });
            }
        }
        let (canonical, other) = (alias.pair[alias.canonical], alias.pair[1 - alias.canonical]);
        let value = if alias.keep { get(root, other).cloned() } else { remove_path(root, other).filter(|v| !v.is_null()) };
        if let (Some(v), None) = (value, get(root, canonical)) {
            let (section, name) = canonical.split_once('.').unwrap_or(("", canonical));
            if let Some(root) = root.as_mapping_mut() {
                let slot = root.entry(Value::String(section.to_string())).or_insert(Value::Null);
                if slot.is_null() {
                    *slot = Value::Mapping(Mapping::new());
                }
                if let Some(map) = slot.as_mapping_mut() {
                    map.insert(Value::String(name.to_string()), v);
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Defaults and ranges
// ------------------------------------------------------------------------------------------------

/// The defaults of the table as a tree of strings.
pub fn defaults_tree() -> Value {
    let mut root = Value::Mapping(Mapping::new());
    for k in KEYS {
        let Some(default) = k.default else { continue };
        let mut node = &mut root;
        for seg in k.path.split('.') {
            if !node.is_mapping() {
                *node = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(map) = node else { break };
            node = map.entry(Value::String(seg.to_string())).or_insert(Value::Null);
        }
        *node = Value::String(default.to_string());
    }
    root
}

/// Lays the settings of `top` over `base`: mappings merge key by key, a null keeps the base
/// value, anything else replaces it. It recurses only where `base` (the defaults tree) holds a
/// mapping, i.e. through the table's sections: at most four levels.
pub fn overlay(base: &mut Value, top: &Value) {
    match (base, top) {
        (_, Value::Null) => {}
        (Value::Mapping(b), Value::Mapping(t)) => {
            for (k, v) in t {
                match b.get_mut(k) {
                    Some(slot) => overlay(slot, v),
                    None if !v.is_null() => {
                        b.insert(k.clone(), v.clone());
                    }
                    None => {}
                }
            }
        }
        (b, t) => *b = t.clone(),
    }
}

/// A typed numeric setting, for [`check_range`].
#[derive(Debug, Clone, Copy)]
pub enum Number {
    Int(u64),
    Duration(Duration),
    Kib(i64),
    Float(f64),
}

fn kib_text(kib: i64) -> String {
    match kib {
        k if k != 0 && k % TIB_KIB == 0 => format!("{}TiB", k / TIB_KIB),
        k if k != 0 && k % GIB_KIB == 0 => format!("{}GiB", k / GIB_KIB),
        k if k != 0 && k % 1024 == 0 => format!("{}MiB", k / 1024),
        k => format!("{k}KiB"),
    }
}

/// Checks `value` against the range the table gives `path`.
pub fn check_range(path: &str, value: Number) -> Result<(), ConfigError> {
    let range = find(path).map_or(Range::Any, |k| k.range);
    let out = |below: bool, min: String, max: String, got: String| {
        let head = if below { format!("must be at least {min}") } else { format!("must be at most {max}") };
        Err(ConfigError::BadValue {
            key: path.to_string(),
            message: format!("{head} (allowed: between {min} and {max}), got {got}"),
        })
    };
    match (range, value) {
        (Range::Int(min, max), Number::Int(v)) if v < min || v > max => out(v < min, min.to_string(), max.to_string(), v.to_string()),
        (Range::Port, Number::Int(0)) => Err(ConfigError::BadValue { key: path.to_string(), message: "must not be 0".into() }),
        (Range::Duration(min, _), Number::Duration(d)) if d.is_zero() && !min.is_zero() => {
            Err(ConfigError::BadValue { key: path.to_string(), message: "must be longer than zero".into() })
        }
        (Range::Duration(min, max), Number::Duration(d)) if d < min || d > max => {
            let text = |d: Duration| humantime::format_duration(d).to_string();
            out(d < min, text(min), text(max), text(d))
        }
        (Range::Kib(min, max), Number::Kib(v)) if v < min || v > max => out(v < min, kib_text(min), kib_text(max), kib_text(v)),
        (Range::Float { min, max, open }, Number::Float(v)) => {
            if !v.is_finite() {
                let floor = if open { "greater than" } else { "at least" };
                return Err(ConfigError::BadValue {
                    key: path.to_string(),
                    message: format!("must be a finite number {floor} {min} and at most {max}, got {v}"),
                });
            }
            if v < min || (open && v == min) || v > max {
                let below = v <= min;
                let head = if below && open { format!("must be greater than {min}") } else if below { format!("must be at least {min}") } else { format!("must be at most {max}") };
                return Err(ConfigError::BadValue {
                    key: path.to_string(),
                    message: format!("{head} (allowed: {}), got {v}", describe_range(range).unwrap_or_default()),
                });
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A range as the sample configuration and README write it, e.g. `1 to 256`, `1ms to 1day`.
pub fn describe_range(range: Range) -> Option<String> {
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    Some(match range {
        Range::Any => return None,
        Range::Int(min, max) => format!("{min} to {max}"),
        Range::Port => "1 to 65535".to_string(),
        Range::Duration(min, max) => format!("{} to {}", dur(min), dur(max)),
        Range::Kib(min, max) => format!("{} to {}", kib_text(min), kib_text(max)),
        Range::Float { min, max, open: true } => format!("more than {min}, up to {max}"),
        Range::Float { min, max, open: false } => format!("{min} to {max}"),
    })
}
