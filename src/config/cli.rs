//! The command line, parsed in two stages: `normalize` turns every accepted spelling
//! (`--alloc_tags`, `--alloc-tags=a,b`, `--alloc-tags a b`) into argh's canonical form, then argh
//! parses it. Comma lists are split after parsing.

use argh::FromArgs;

/// cue-scheduler: books WAITING frames of a Cuebot database onto hosts and launches them on RQD.
#[derive(FromArgs, Debug, PartialEq)]
pub struct Cli {
    /// configuration file (default: $OPENCUE_SCHEDULER_CONFIG, else ~/.local/share/scheduler.yaml)
    #[argh(option)]
    pub config: Option<String>,
    /// facility name to schedule (overrides scheduler.facility)
    #[argh(option, short = 'f')]
    pub facility: Option<String>,
    /// allocation clusters as show:tag; repeat, space- or comma-separate (also --alloc_tags)
    #[argh(option, short = 'a')]
    pub alloc_tags: Vec<String>,
    /// manual-tag clusters as tag or show:tag (also --manual_tags)
    #[argh(option, short = 't')]
    pub manual_tags: Vec<String>,
    /// tags never scheduled, of any kind (also --ignore_tags)
    #[argh(option, short = 'i')]
    pub ignore_tags: Vec<String>,
    /// book in the database but never call RQD (overrides rqd.dry_run_mode)
    #[argh(switch)]
    pub dry_run: bool,
    /// on a schema without show.b_scheduler_managed: confirm Cuebot books nothing
    /// (dispatcher.turn_off_booking=true), so every cluster may be discovered
    #[argh(switch)]
    pub cuebot_booking_off: bool,
    /// print version and git revision, then exit
    #[argh(switch)]
    pub version: bool,
    #[argh(subcommand)]
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand)]
pub enum Command {
    Explain(ExplainArgs),
    Status(StatusArgs),
}

/// Print every live scheduler instance and the host pools it owns, read from the database
/// alone (works when no instance's HTTP port is reachable).
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// machine-readable output
    #[argh(switch)]
    pub json: bool,
}

/// Explain, read-only, why a job's waiting frames are not dispatching now.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "explain")]
pub struct ExplainArgs {
    /// job name (job.str_name)
    #[argh(option)]
    pub job: String,
    /// only this layer
    #[argh(option)]
    pub layer: Option<String>,
    /// machine-readable output
    #[argh(switch)]
    pub json: bool,
}

const LIST_FLAGS: [&str; 3] = ["--alloc-tags", "--manual-tags", "--ignore-tags"];
const SHORT_LIST_FLAGS: [(&str, &str); 3] = [("-a", "--alloc-tags"), ("-t", "--manual-tags"), ("-i", "--ignore-tags")];

/// Rewrites accepted spellings into argh's: snake_case long flags become kebab-case,
/// `--flag=value` becomes two arguments, and several values after a list flag become repeats.
pub fn normalize(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut list_flag: Option<String> = None;
    for arg in args {
        if let Some(flag) = list_flag.as_ref() {
            if !arg.starts_with('-') {
                if out.last().is_some_and(|last: &String| !last.starts_with('-')) {
                    out.push(flag.clone());
                }
                out.push(arg.clone());
                continue;
            }
        }
        list_flag = None;
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) if arg.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut flag = if flag.starts_with("--") { flag.replace('_', "-") } else { flag };
        if let Some((_, long)) = SHORT_LIST_FLAGS.iter().find(|(short, _)| *short == flag) {
            flag = (*long).to_string();
        }
        if LIST_FLAGS.contains(&flag.as_str()) {
            list_flag = Some(flag.clone());
        }
        out.push(flag);
        if let Some(value) = value {
            out.push(value);
        }
    }
    out
}

/// Splits comma-separated entries and drops empty ones.
pub fn split_list(values: &[String]) -> Vec<String> {
    values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string).collect()
}

/// Parses the process arguments (without argv[0]). `Err((message, exit_code))`: help gives 0.
pub fn parse(program: &str, args: &[String]) -> Result<Cli, (String, i32)> {
    let normalized = normalize(args);
    let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
    Cli::from_args(&[program], &refs).map_err(|early| match early.status {
        Ok(()) => (early.output, 0),
        Err(()) => (early.output, 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_spelling_normalizes_to_repeats() {
        let cases: [(&[&str], &[&str]); 5] = [
            (&["--alloc_tags", "s:a", "s:b"], &["--alloc-tags", "s:a", "--alloc-tags", "s:b"]),
            (&["--alloc_tags=s:a,s:b"], &["--alloc-tags", "s:a,s:b"]),
            (&["-a", "s:a", "-f", "lax"], &["--alloc-tags", "s:a", "-f", "lax"]),
            (&["--manual-tags", "x", "--ignore_tags=y"], &["--manual-tags", "x", "--ignore-tags", "y"]),
            (&["--facility=lax", "--dry_run"], &["--facility", "lax", "--dry-run"]),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(&strings(input)), strings(want), "{input:?}");
        }
    }

    #[test]
    fn parse_accepts_kebab_snake_and_lists() {
        let cli = parse("cue-scheduler", &strings(&["--alloc_tags", "s:a,s:b", "s:c", "--facility", "lax"])).expect("valid");
        assert_eq!(split_list(&cli.alloc_tags), ["s:a", "s:b", "s:c"]);
        assert_eq!(cli.facility.as_deref(), Some("lax"));
    }

    #[test]
    fn bad_flags_exit_2_and_help_exits_0() {
        let (message, code) = parse("cue-scheduler", &strings(&["--no-such-flag"])).expect_err("unknown flag");
        assert_eq!(code, 2);
        assert!(message.contains("--no-such-flag"), "{message}");
        let (help, code) = parse("cue-scheduler", &strings(&["--help"])).expect_err("help");
        assert_eq!(code, 0);
        for flag in ["--facility", "--alloc-tags", "--manual-tags", "--ignore-tags", "--config", "--version"] {
            assert!(help.contains(flag), "help lacks {flag}: {help}");
        }
    }
}
