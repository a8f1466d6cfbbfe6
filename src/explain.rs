//! `cue-scheduler explain`: read-only diagnosis of why a job's waiting frames do not dispatch.

use crate::cli::ExplainArgs;
use crate::config::Config;

pub fn run(_config: &Config, args: &ExplainArgs) -> Result<String, String> {
    Err(format!("explain for job `{}` is not available in this build yet", args.job))
}
