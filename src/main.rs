//! The `cue-scheduler` binary: parse flags, load configuration, run the pipeline until a
//! signal or the quit condition, shut down in order. Exit codes: 0 normal stop, 1 operating
//! error at start-up (database unreachable, unknown facility), 2 bad flag or configuration.


// See src/lib.rs: no unwrap/expect on daemon paths.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use cue_scheduler::config::cli::{self, Cli, Command};
use cue_scheduler::config::{AllocTag, Config};
use cue_scheduler::ops::metrics::Metrics;
use cue_scheduler::pipeline::Pipeline;
use cue_scheduler::config::settings::Settings;
use cue_scheduler::ops::{logging, signals};
use cue_scheduler::{error, info, warn};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_HASH: &str = env!("CUE_SCHEDULER_GIT_HASH");

fn main() -> ExitCode {
    logging::install_facade();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match cli::parse("cue-scheduler", &args) {
        Ok(cli) => cli,
        Err((message, code)) => {
            if code == 0 {
                println!("{message}");
            } else {
                eprintln!("{message}");
            }
            return ExitCode::from(code as u8);
        }
    };
    if cli.version {
        println!("cue-scheduler {VERSION} ({GIT_HASH})");
        return ExitCode::SUCCESS;
    }
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("cue-scheduler: {message}");
            return ExitCode::from(2);
        }
    };
    logging::set_level(logging::level_from_filter(&config.logging.level));
    if config.logging.file_appender {
        if let Err(e) = logging::log_to_file(&config.logging.path) {
            eprintln!("cue-scheduler: cannot open log file {}: {e}", config.logging.path);
            return ExitCode::from(2);
        }
    }
    for warning in config.warnings.iter().chain(cue_scheduler::config::settings::inert_key_warnings(&config).iter()) {
        warn!("configuration: {warning}");
    }
    match cli.command {
        Some(Command::Explain(args)) => cue_scheduler_explain(&config, &args),
        Some(Command::Status(args)) => cue_scheduler_status(&config, &args),
        None => run(&config, &cli),
    }
}

fn cue_scheduler_explain(config: &Config, args: &cli::ExplainArgs) -> ExitCode {
    match cue_scheduler::explain::run(config, args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cue-scheduler explain: {e}");
            ExitCode::from(1)
        }
    }
}

fn cue_scheduler_status(config: &Config, args: &cli::StatusArgs) -> ExitCode {
    let status = cue_scheduler::config::settings::Settings::from_config(config).and_then(|settings| {
        let mut client = cue_scheduler::db::connect(&settings.db, "status").map_err(|e| e.to_string())?;
        cue_scheduler::pipeline::ownership::read_status(&mut client, "").map_err(|e| e.to_string())
    });
    match status {
        Ok(view) => {
            print!("{}", if args.json { view.to_json() } else { view.to_text() });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cue-scheduler status: {e}");
            ExitCode::from(1)
        }
    }
}

/// Configuration file, environment, then flags.
fn load_config(cli: &Cli) -> Result<Config, String> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (mut config, path) = Config::load(cli.config.as_deref().map(Path::new), &env).map_err(|e| e.to_string())?;
    if let Some(path) = path {
        eprintln!("cue-scheduler: configuration from {}", path.display());
    }
    if let Some(facility) = &cli.facility {
        config.scheduler.facility = Some(facility.clone());
    }
    let alloc = cli::split_list(&cli.alloc_tags);
    if !alloc.is_empty() {
        config.scheduler.alloc_tags = alloc
            .iter()
            .map(|entry| entry.parse::<AllocTag>().map_err(|e| format!("--alloc_tags: {e}")))
            .collect::<Result<_, _>>()?;
    }
    let manual = cli::split_list(&cli.manual_tags);
    if !manual.is_empty() {
        config.scheduler.manual_tags = manual;
    }
    let ignore = cli::split_list(&cli.ignore_tags);
    if !ignore.is_empty() {
        config.scheduler.ignore_tags = ignore;
    }
    if cli.dry_run {
        config.rqd.dry_run_mode = true;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn run(config: &Config, cli: &Cli) -> ExitCode {
    let settings = match Settings::from_config(config) {
        Ok(settings) => Settings { cuebot_booking_off: cli.cuebot_booking_off, ..settings },
        Err(e) => {
            eprintln!("cue-scheduler: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = signals::install() {
        error!("cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    info!("cue-scheduler {VERSION} ({GIT_HASH}) starting against {}{}", settings.db.display, if settings.dry_run { " in dry-run mode" } else { "" });
    let drain = settings.shutdown_drain_timeout;
    let pipeline = match Pipeline::start(settings, Arc::new(Metrics::new())) {
        Ok(pipeline) => pipeline,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(port) = pipeline.metrics_port {
        info!("metrics on http://{}:{port}/metrics", pipeline.ctx.settings.metrics_address);
    }
    let mut current = config.clone();
    loop {
        std::thread::sleep(Duration::from_millis(cue_scheduler::limits::SHUTDOWN_POLL_MS));
        if signals::terminate_requested() {
            info!("termination signal received");
            break;
        }
        if pipeline.stopping() {
            break;
        }
        if signals::take_toggle_debug() {
            // Read the level now: a SIGHUP may have changed it since the last toggle.
            let debug_on = logging::level() != logging::Level::Debug;
            logging::set_level(if debug_on { logging::Level::Debug } else { logging::Level::Info });
            info!("debug logging {}", if debug_on { "on" } else { "off" });
        }
        if signals::take_reload() {
            if let Some(new) = reload(&current, cli, &pipeline) {
                current = new;
            }
        }
    }
    let ctx = Arc::clone(&pipeline.ctx);
    pipeline.shutdown(drain);
    if let Some(thread) = ctx.dead_thread() {
        error!("exiting with status 70: thread {thread} died");
        return ExitCode::from(70);
    }
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the configuration (same file, environment and flags as at start-up) and
/// applies its reloadable parts — log level, intervals, sleeps, cluster selection — logging
/// each change. Other changes need a restart and are reported as such.
fn reload(current: &Config, cli: &Cli, pipeline: &Pipeline) -> Option<Config> {
    let new = match load_config(cli) {
        Ok(new) => new,
        Err(e) => {
            warn!("SIGHUP: configuration not reloaded, keeping the running one: {e}");
            return None;
        }
    };
    let settings = match Settings::from_config(&new) {
        Ok(settings) => settings,
        Err(e) => {
            warn!("SIGHUP: configuration not reloaded, keeping the running one: {e}");
            return None;
        }
    };
    if new.logging.level != current.logging.level {
        logging::set_level(logging::level_from_filter(&new.logging.level));
        info!("SIGHUP: logging.level {} -> {}", current.logging.level, new.logging.level);
    }
    let changes = pipeline.ctx.apply_tunables(settings.tunables);
    for change in &changes {
        info!("SIGHUP: {change}");
    }
    let mut restart_only = new.clone();
    restart_only.logging.level = current.logging.level.clone();
    restart_only.queue.cluster_empty_sleep = current.queue.cluster_empty_sleep;
    restart_only.queue.cluster_saturated_sleep = current.queue.cluster_saturated_sleep;
    restart_only.queue.cluster_reload_interval = current.queue.cluster_reload_interval;
    restart_only.queue.active_scan_interval = current.queue.active_scan_interval;
    restart_only.queue.monitor_interval = current.queue.monitor_interval;
    restart_only.host_cache.monitoring_interval = current.host_cache.monitoring_interval;
    restart_only.host_cache.clean_up_interval = current.host_cache.clean_up_interval;
    restart_only.scheduler = current.scheduler.clone();
    restart_only.warnings = current.warnings.clone();
    if restart_only != *current {
        warn!("SIGHUP: other configuration changes take effect only after a restart");
    }
    if changes.is_empty() && new.logging.level == current.logging.level {
        info!("SIGHUP: configuration re-read; nothing reloadable changed");
    }
    Some(new)
}
