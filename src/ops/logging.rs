//! One line per event: UTC time, level, thread name, message. Written to stderr or to a file
//! (`logging.file_appender`). The level can be changed at run time (SIGUSR1, SIGHUP).
//!
//! Our own lines come from the `error!`/`warn!`/`info!`/`debug!` macros below. Library crates
//! log through the `log` facade (r2d2 reports failed pool connections that way);
//! [`install_facade`] sends those records to the same output, in the same format, with the
//! crate's target in front and control characters escaped. Library debug and trace records are
//! dropped even in debug mode: the postgres driver would log every statement with its
//! parameters.
//!
//! Kept hand-written, deliberately: the line format and its UTC timestamp (20 lines, tested;
//! a date crate for one format is not worth a dependency), the sink, and the level switch that
//! SIGUSR1/SIGUSR2 flip at run time with one atomic store.

use parking_lot::Mutex;
use std::fmt::Arguments;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static SINK: Mutex<Option<File>> = Mutex::new(None);

/// Reads the level out of an upstream-style filter (`info,sqlx=warn`, `debug:sqlx=info`): the
/// first bare directive wins; anything unrecognised means info.
pub fn level_from_filter(filter: &str) -> Level {
    let first = filter.split([',', ':']).next().unwrap_or("").trim().to_ascii_lowercase();
    match first.as_str() {
        "error" => Level::Error,
        "warn" | "warning" => Level::Warn,
        "debug" | "trace" => Level::Debug,
        _ => Level::Info,
    }
}

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Error,
        2 => Level::Warn,
        4 => Level::Debug,
        _ => Level::Info,
    }
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Makes text from outside (job, layer, frame and host names, payloads) safe to put in a log
/// line: control characters (newline, CR, ESC, other C0 and C1) and backslashes become escapes,
/// so a name cannot forge a line or colour a terminal.
pub fn escape(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Sends log lines to `path` (appending) instead of stderr.
pub fn log_to_file(path: &str) -> std::io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    *SINK.lock() = Some(file);
    Ok(())
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, proleptic Gregorian).
pub fn format_utc(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

pub fn write(level: Level, args: Arguments) {
    if !enabled(level) {
        return;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    let tag = match level {
        Level::Error => "ERROR",
        Level::Warn => "WARN ",
        Level::Info => "INFO ",
        Level::Debug => "DEBUG",
    };
    // Names from the database or the network may carry newlines or terminal escapes: the
    // message is escaped whole, so one event is always one line and cannot forge another.
    let line = format!("{} {tag} [{}] {}\n", format_utc(now), escape(name), escape(&args.to_string()));
    let mut sink = SINK.lock();
    match sink.as_mut() {
        Some(file) => {
            let _ = file.write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Forwards the `log` facade's records (library crates) to [`write`].
struct Facade;

impl Facade {
    /// Library records at info and above, mapped to our levels.
    fn level(level: log::Level) -> Option<Level> {
        match level {
            log::Level::Error => Some(Level::Error),
            log::Level::Warn => Some(Level::Warn),
            log::Level::Info => Some(Level::Info),
            log::Level::Debug | log::Level::Trace => None,
        }
    }
}

impl log::Log for Facade {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        Facade::level(metadata.level()).is_some_and(enabled)
    }

    fn log(&self, record: &log::Record) {
        if let Some(level) = Facade::level(record.level()).filter(|l| enabled(*l)) {
            write(level, format_args!("{}: {}", record.target(), record.args()));
        }
    }

    fn flush(&self) {}
}

static FACADE: Facade = Facade;

/// Tests that point the global sink at a file take this first, so they do not swap it under
/// each other.
#[cfg(test)]
static SINK_TEST_LOCK: Mutex<()> = Mutex::new(());

/// Routes library crates' `log` records to our output. Idempotent: a second call (or another
/// logger installed first) leaves the first in place.
pub fn install_facade() {
    if log::set_logger(&FACADE).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::ops::logging::write($crate::ops::logging::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::ops::logging::write($crate::ops::logging::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::ops::logging::write($crate::ops::logging::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { if $crate::ops::logging::enabled($crate::ops::logging::Level::Debug) { $crate::ops::logging::write($crate::ops::logging::Level::Debug, format_args!($($t)*)) } } }

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_formatting_matches_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_795_823_999, "2026-11-27T23:59:59.000Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_utc(Duration::from_secs(secs)), want, "{secs}");
        }
    }

    #[test]
    fn library_records_reach_our_output_in_our_format() {
        install_facade();
        let _sink = SINK_TEST_LOCK.lock();
        let path = std::env::temp_dir().join(format!("cue-scheduler-facade-{}.log", std::process::id()));
        log_to_file(&path.display().to_string()).expect("log file");
        let thread = std::thread::Builder::new()
            .name("facade-test".into())
            .spawn(|| {
                log::error!(target: "r2d2", "error connecting to server\nINFO forged line");
                log::info!(target: "somecrate", "informational");
                log::debug!(target: "tokio_postgres", "executing statement s1 with parameters: [42]");
            })
            .expect("spawn");
        thread.join().expect("join");
        *SINK.lock() = None;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let ours: Vec<&str> = text.lines().filter(|l| l.contains("[facade-test]")).collect();
        assert_eq!(ours.len(), 2, "{text}");
        assert!(ours[0].ends_with("ERROR [facade-test] r2d2: error connecting to server\\nINFO forged line"), "{}", ours[0]);
        assert!(ours[0].get(..24).is_some_and(|t| t.ends_with('Z')), "{}", ours[0]);
        assert!(ours[1].ends_with("INFO  [facade-test] somecrate: informational"), "{}", ours[1]);
    }

    #[test]
    fn level_is_read_from_upstream_filters() {
        let cases = [
            ("info,sqlx=warn", Level::Info),
            ("debug:sqlx=info", Level::Debug),
            ("warn", Level::Warn),
            ("error,x=debug", Level::Error),
            ("nonsense", Level::Info),
        ];
        for (filter, want) in cases {
            assert_eq!(level_from_filter(filter), want, "{filter}");
        }
    }
}

#[cfg(test)]
mod escape_tests {
    use super::escape;

    #[test]
    fn control_characters_cannot_forge_lines_or_colour_terminals() {
        assert_eq!(escape("plain name-01_x"), "plain name-01_x");
        assert_eq!(escape("job\n2026-12-03T00:00:00Z ERROR [main] forged"), "job\\n2026-12-03T00:00:00Z ERROR [main] forged");
        assert_eq!(escape("a\rb"), "a\\rb");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape("c1\u{9b}"), "c1\\u{9b}");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert!(!escape("x\ny\rz\u{7}").contains(['\n', '\r', '\u{7}']));
    }

    #[test]
    fn a_logged_name_with_a_newline_stays_on_one_line() {
        let _sink = super::SINK_TEST_LOCK.lock();
        let path = std::env::temp_dir().join(format!("cue-scheduler-log-escape-{}.log", std::process::id()));
        super::log_to_file(path.to_str().expect("path")).expect("log file");
        let name = "evil\n2026-12-03T00:00:00.000Z ERROR [main] forged line";
        crate::ops::logging::write(super::Level::Error, format_args!("booking job {name} failed"));
        *super::SINK.lock() = None;
        let text = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        // (Other tests may log meanwhile: look only at this event.)
        assert_eq!(text.lines().filter(|l| l.contains("forged line")).count(), 1, "{text}");
        assert!(!text.lines().any(|l| l.starts_with("2026-12-03T00:00:00.000Z")), "{text}");
        assert!(text.contains("evil\\n2026"), "{text}");
    }
}
