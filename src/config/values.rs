//! Value conversions used by the serde derive of the configuration structs: lenient scalars
//! (upstream's `config` crate accepted `"4"` for a number and `4` for a string), durations
//! (`humantime`), byte sizes, lists and allocation tags. Each error message says what was
//! expected and what was found; the key is added by the caller from the deserialisation path.

use std::time::Duration;

use serde::de::{Deserialize, Deserializer, Error};
use yaml_serde::Value;

use super::{AllocTag, EpvmWeights, HostBookingStrategy};

pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".to_string(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let shown: String = s.chars().take(60).collect();
            let more = if shown.len() < s.len() { "..." } else { "" };
            format!("`{shown}{more}`")
        }
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged `{}`", t.tag),
    }
}

/// Like [`describe`] but never shows the text of a string: used where a misplaced value could
/// be a secret (e.g. `database:` followed by `db_pass hunter2` without the colon).
pub fn describe_kind(v: &Value) -> String {
    match v {
        Value::String(_) => "a string".to_string(),
        other => describe(other),
    }
}

pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads the value as a tree and converts it with `convert`, turning its message into an error.
fn with<'de, D: Deserializer<'de>, T>(d: D, convert: impl FnOnce(&Value) -> Result<T, String>) -> Result<T, D::Error> {
    let value = Value::deserialize(d)?;
    convert(&value).map_err(D::Error::custom)
}

fn whole_number<T: TryFrom<u64>>(v: &Value) -> Result<T, String> {
    let n = match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u,
            (None, Some(_)) => return Err(format!("must not be negative, got {n}")),
            _ => return Err(format!("expected a whole number, got {n}")),
        },
        Value::String(s) => match (s.trim().parse::<u64>(), s.trim().parse::<i64>()) {
            (Ok(u), _) => u,
            (Err(_), Ok(_)) => return Err(format!("must not be negative, got `{}`", s.trim())),
            _ => return Err(format!("expected a whole number, got {}", describe(v))),
        },
        other => return Err(format!("expected a whole number, got {}", describe(other))),
    };
    // The largest value of T, for the message: the first of the powers of two minus one that fits.
    T::try_from(n).map_err(|_| {
        let max = [u8::MAX as u64, u16::MAX as u64, u32::MAX as u64].into_iter().find(|m| T::try_from(*m + 1).is_err()).unwrap_or(u64::MAX);
        format!("{n} is out of range (at most {max})")
    })
}

pub fn uint<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    with(d, whole_number)
}

pub fn opt_uint<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    with(d, |v| whole_number(v).map(Some))
}

fn number(v: &Value) -> Result<f64, String> {
    let parsed = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("expected a number, got {}", describe(v)))
}

pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    with(d, number)
}

fn flag(v: &Value) -> Result<bool, String> {
    let parsed = match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_u64().filter(|n| *n <= 1).map(|n| n == 1),
        _ => None,
    };
    parsed.ok_or_else(|| format!("expected true or false, got {}", describe(v)))
}

pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    with(d, flag)
}

fn text(v: &Value) -> Result<String, String> {
    scalar_text(v).ok_or_else(|| format!("expected a string, got {}", describe(v)))
}

pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    with(d, text)
}

pub fn trimmed<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    with(d, |v| text(v).map(|s| s.trim().to_string()))
}

/// A string where empty means "unset".
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    with(d, |v| text(v).map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty())))
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    with(d, |v| match v {
        Value::String(s) => parse_duration(s).map_err(|e| format!("expected a duration like `5s`: {e}")),
        Value::Number(n) => Err(format!("expected a duration like `5s`, got the bare number {n}; add a unit (ms, s, m, h, d)")),
        other => Err(format!("expected a duration like `5s`, got {}", describe(other))),
    })
}

/// A byte size, returned in KiB (rounded down).
pub fn size_kib<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    with(d, |v| {
        let bytes = match v {
            Value::String(s) => parse_byte_size(s).map_err(|e| format!("expected a size like `2GiB`: {e}"))?,
            Value::Number(n) if n.as_u64() == Some(0) => 0,
            Value::Number(n) => {
                return Err(format!(
                    "expected a size like `2GiB`, got the bare number {n}; add a unit (B, KiB, MiB, GiB, KB, MB, GB)"
                ))
            }
            other => return Err(format!("expected a size like `2GiB`, got {}", describe(other))),
        };
        // u64::MAX / 1024 fits in i64.
        Ok((bytes / 1024) as i64)
    })
}

fn split_commas(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

/// A list of strings: a YAML list of scalars, or one comma-separated string.
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    with(d, |v| match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match scalar_text(item) {
                Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                Some(_) => Err(format!("entry {i} is empty")),
                None => Err(format!("expected a list of strings, entry {i} is {}", describe(item))),
            })
            .collect(),
        Value::String(s) => Ok(split_commas(s)),
        other => Err(format!("expected a list of strings, got {}", describe(other))),
    })
}

/// `show:tag` strings (a list, or one comma-separated string) or `{show, tag}` mappings, whose
/// keys `keys::check_alloc_tags` has already checked.
pub fn alloc_tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AllocTag>, D::Error> {
    with(d, |v| match v {
        Value::String(s) => split_commas(s).iter().map(|p| p.parse::<AllocTag>()).collect(),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => s.parse::<AllocTag>(),
                Value::Mapping(m) => {
                    let field = |name: &str| m.get(name).and_then(scalar_text).unwrap_or_default().trim().to_string();
                    Ok(AllocTag { show: field("show"), tag: field("tag") })
                }
                other => Err(format!("expected `show:tag` strings or {{show, tag}} mappings, entry {i} is {}", describe(other))),
            })
            .collect(),
        other => Err(format!("expected a list of `show:tag` or {{show, tag}}, got {}", describe(other))),
    })
}

/// `queue.host_booking_strategy` as written, defaults filled in; `keys::check_strategy` has
/// checked which keys go with which `type`.
#[derive(serde::Deserialize)]
pub struct RawStrategy {
    #[serde(rename = "type", default, deserialize_with = "opt_string")]
    kind: Option<String>,
    #[serde(deserialize_with = "boolean")]
    core_saturation: bool,
    #[serde(deserialize_with = "boolean")]
    memory_saturation: bool,
    #[serde(default, deserialize_with = "opt_uint")]
    max_candidates: Option<usize>,
    weights: EpvmWeights,
}

impl From<RawStrategy> for HostBookingStrategy {
    fn from(raw: RawStrategy) -> Self {
        match raw.kind.map(|k| k.to_ascii_lowercase()).as_deref() {
            Some("epvm") => HostBookingStrategy::Epvm { max_candidates: raw.max_candidates.unwrap_or(1), weights: raw.weights },
            _ => HostBookingStrategy::Saturation { core_saturation: raw.core_saturation, memory_saturation: raw.memory_saturation },
        }
    }
}

/// Parse a duration with units: `500ms`, `5s`, `2m`, `3h`, `1d`, `1h 30m`, `1h30m`, `10800s`,
/// and the long forms (`sec`, `min`, `hours`, ...) that `humantime` knows. A bare number (no
/// unit), a fraction and an empty string are errors.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty value".to_string());
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{t}` has no unit; write e.g. `{t}s` (units: ms, s, m, h, d)"));
    }
    if t.contains('.') {
        return Err("fractions are not supported; use a smaller unit (e.g. `1500ms`)".to_string());
    }
    humantime::parse_duration(t).map_err(|e| e.to_string())
}

/// Parse a byte size: `KiB/MiB/GiB/TiB` are powers of 1024, `KB/MB/GB/TB` powers of 1000, `B`
/// bytes (units are case-insensitive; a space before the unit is allowed; a decimal fraction
/// such as `1.5GiB` is allowed and rounded down to whole bytes). A number without a unit is an
/// error, except `0`.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    if number.is_empty() {
        return Err(format!("expected a number at `{t}`"));
    }
    if !unit.chars().all(char::is_alphabetic) {
        return Err(format!("expected one number and one unit, got `{t}`"));
    }
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
        "" => return Err(format!("`{t}` has no unit; write e.g. `{number}MiB` (units: B, KiB, MiB, GiB, KB, MB, GB)")),
        other => return Err(format!("unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")),
    };
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() || frac_part.contains('.') || frac_part.len() > 18 {
        return Err(format!("`{number}` is not a valid number"));
    }
    let whole: u128 = int_part.parse().map_err(|_| format!("number `{number}` is too large"))?;
    let mut bytes = whole.checked_mul(multiplier).ok_or("size is too large")?;
    if !frac_part.is_empty() {
        let frac: u128 = frac_part.parse().map_err(|_| format!("`{number}` is not a valid number"))?;
        bytes = bytes.checked_add(frac * multiplier / 10u128.pow(frac_part.len() as u32)).ok_or("size is too large")?;
    }
    u64::try_from(bytes).map_err(|_| "size is too large".to_string())
}
