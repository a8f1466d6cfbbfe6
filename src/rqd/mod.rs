//! RQD over gRPC: the RunFrame Cuebot would send (rqd-protocol.md §3–§5, §7), and a blocking
//! client with a deadline, one retry on UNAVAILABLE (DECISIONS.md #3) and a bounded channel
//! cache.

pub mod frameset;

use crate::rqd::frameset::PreparedCommand;
use crate::limits;
use crate::model::{Frame, Job, Layer, CORE_UNITS_PER_CORE};
use crate::protos::rqd::{RqdStaticKillRunningFrameRequest, RqdStaticLaunchFrameRequest, RqdStaticReportStatusRequest, RunFrame};
use crate::protos::rqd_grpc::RqdInterfaceClient;
use grpcio::{CallOption, ChannelBuilder, Environment, RpcStatusCode};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The kill message Cuebot sends after a failed launch.
pub const COMPENSATION_KILL_MESSAGE: &str = "An accounting error occured when booking this frame.";

/// Figures of one booked frame needed for the RunFrame.
pub struct Reservation<'a> {
    pub proc_id: &'a str,
    pub cores: i64,
    pub soft_limit_multiplier: f64,
    pub hard_limit_multiplier: f64,
}

/// Builds the RunFrame exactly as Cuebot fills it.
pub fn build_run_frame(job: &Job, layer: &Layer, frame: &Frame, command: &PreparedCommand, r: &Reservation) -> RunFrame {
    let mut run = RunFrame::new();
    run.set_resource_id(r.proc_id.to_string());
    run.set_job_id(job.id.clone());
    run.set_job_name(job.name.clone());
    run.set_frame_id(frame.id.clone());
    run.set_frame_name(frame.name.clone());
    run.set_layer_id(layer.id.clone());
    run.set_command(command.command.clone());
    run.set_user_name(job.user.clone());
    run.set_log_dir(job.log_dir.clone());
    run.set_show(job.show.clone());
    run.set_shot(job.shot.clone());
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    run.set_start_time(i64::try_from(now_ms).unwrap_or(i64::MAX));
    if let Some(uid) = job.uid.and_then(|uid| i32::try_from(uid).ok()) {
        run.set_uid(uid);
    }
    run.set_num_cores(i32::try_from(r.cores).unwrap_or(i32::MAX));
    run.set_num_gpus(i32::try_from(layer.gpus_min).unwrap_or(i32::MAX));
    run.set_os(job.os.clone().unwrap_or_default());
    run.set_soft_memory_limit((layer.mem_min as f64 * r.soft_limit_multiplier).trunc() as i64);
    run.set_hard_memory_limit((layer.mem_min as f64 * r.hard_limit_multiplier).trunc() as i64);
    run.set_loki_url(job.loki_url.clone());
    let env = run.mut_environment();
    for (key, value) in job.env.iter().chain(layer.env.iter()) {
        env.insert(key.clone(), value.clone());
    }
    let cue: [(&str, String); 19] = [
        ("CUE3", "1".into()),
        ("CUE_THREADS", (r.cores / CORE_UNITS_PER_CORE).max(1).to_string()),
        ("CUE_MEMORY", layer.mem_min.to_string()),
        ("CUE_GPUS", layer.gpus_min.to_string()),
        ("CUE_GPU_MEMORY", layer.gpu_mem_min.to_string()),
        ("CUE_LOG_PATH", job.log_dir.clone()),
        ("CUE_RANGE", layer.range.clone()),
        ("CUE_CHUNK", layer.chunk_size.to_string()),
        ("CUE_IFRAME", command.frame_number.to_string()),
        ("CUE_LAYER", layer.name.clone()),
        ("CUE_JOB", job.name.clone()),
        ("CUE_FRAME", frame.name.clone()),
        ("CUE_SHOW", job.show.clone()),
        ("CUE_SHOT", job.shot.clone()),
        ("CUE_USER", job.user.clone()),
        ("CUE_JOB_ID", job.id.clone()),
        ("CUE_LAYER_ID", layer.id.clone()),
        ("CUE_FRAME_ID", frame.id.clone()),
        ("CUE_THREADABLE", if layer.threadable { "1" } else { "0" }.into()),
    ];
    for (key, value) in cue {
        env.insert(key.to_string(), value);
    }
    run
}

/// Why a launch failed.
#[derive(Debug, Clone)]
pub enum LaunchError {
    /// RQD answered with a non-OK status.
    Status { code: RpcStatusCode, message: String },
    /// The call could not be made (codec, queue shut down, …).
    Call(String),
}

impl LaunchError {
    /// Label for `scheduler_launch_failures_total{status}`.
    pub fn label(&self) -> String {
        match self {
            LaunchError::Status { code, .. } => status_name(*code).to_string(),
            LaunchError::Call(_) => "call".into(),
        }
    }
}

/// Lower-case gRPC status names, for metric labels.
pub fn status_name(code: RpcStatusCode) -> &'static str {
    const NAMES: [(RpcStatusCode, &str); 16] = [
        (RpcStatusCode::CANCELLED, "cancelled"),
        (RpcStatusCode::UNKNOWN, "unknown"),
        (RpcStatusCode::INVALID_ARGUMENT, "invalid_argument"),
        (RpcStatusCode::DEADLINE_EXCEEDED, "deadline_exceeded"),
        (RpcStatusCode::NOT_FOUND, "not_found"),
        (RpcStatusCode::ALREADY_EXISTS, "already_exists"),
        (RpcStatusCode::PERMISSION_DENIED, "permission_denied"),
        (RpcStatusCode::RESOURCE_EXHAUSTED, "resource_exhausted"),
        (RpcStatusCode::FAILED_PRECONDITION, "failed_precondition"),
        (RpcStatusCode::ABORTED, "aborted"),
        (RpcStatusCode::OUT_OF_RANGE, "out_of_range"),
        (RpcStatusCode::UNIMPLEMENTED, "unimplemented"),
        (RpcStatusCode::INTERNAL, "internal"),
        (RpcStatusCode::UNAVAILABLE, "unavailable"),
        (RpcStatusCode::DATA_LOSS, "data_loss"),
        (RpcStatusCode::UNAUTHENTICATED, "unauthenticated"),
    ];
    NAMES.iter().find(|(c, _)| *c == code).map_or("other", |(_, name)| name)
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Status { code, message } => write!(f, "RQD answered {code:?}: {message}"),
            LaunchError::Call(message) => write!(f, "gRPC call failed: {message}"),
        }
    }
}

impl std::error::Error for LaunchError {}

fn launch_error(error: grpcio::Error) -> LaunchError {
    match error {
        grpcio::Error::RpcFailure(status) => LaunchError::Status { code: status.code(), message: status.message().to_string() },
        other => LaunchError::Call(other.to_string()),
    }
}

/// Blocking RQD client shared by the dispatch threads.
pub struct RqdClient {
    env: Arc<Environment>,
    port: u16,
    timeout: Duration,
    channels: Mutex<HashMap<String, RqdInterfaceClient>>,
}

impl RqdClient {
    pub fn new(port: u16, timeout: Duration) -> RqdClient {
        let env = Arc::new(grpcio::EnvBuilder::new().cq_count(2).name_prefix("rqd-grpc").build());
        RqdClient { env, port, timeout, channels: Mutex::new(HashMap::new()) }
    }

    fn client(&self, host: &str, fresh: bool) -> Result<RqdInterfaceClient, LaunchError> {
        let mut channels = self.channels.lock();
        if !fresh {
            if let Some(client) = channels.get(host) {
                return Ok(client.clone());
            }
        }
        if !crate::ops::fds::room_for_grpc_channel() {
            // gRPC aborts the process when it cannot create its descriptors: fail this call.
            return Err(LaunchError::Call("out of file descriptors: no new RQD channel".into()));
        }
        if channels.len() >= limits::RQD_CHANNELS_MAX {
            channels.clear();
        }
        let channel = ChannelBuilder::new(Arc::clone(&self.env))
            .keepalive_time(Duration::from_secs(30))
            .keepalive_timeout(Duration::from_secs(10))
            .connect(&format!("{host}:{}", self.port));
        let client = RqdInterfaceClient::new(channel);
        channels.insert(host.to_string(), client.clone());
        Ok(client)
    }

    /// LaunchFrame with a deadline; one retry on a fresh channel after UNAVAILABLE. A retry
    /// answered "frame is already running" means the first attempt launched it.
    pub fn launch(&self, host: &str, run_frame: &RunFrame) -> Result<(), LaunchError> {
        let mut request = RqdStaticLaunchFrameRequest::new();
        request.set_run_frame(run_frame.clone());
        let mut last = None;
        for attempt in 1..=limits::LAUNCH_ATTEMPTS_MAX {
            let client = self.client(host, attempt > 1)?;
            let option = CallOption::default().timeout(self.timeout);
            match client.launch_frame_opt(&request, option).map_err(launch_error) {
                Ok(_) => return Ok(()),
                Err(LaunchError::Status { code, message })
                    if attempt > 1 && code == RpcStatusCode::UNKNOWN && message.contains("frame is already running") =>
                {
                    return Ok(());
                }
                Err(e @ LaunchError::Status { code: RpcStatusCode::UNAVAILABLE, .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| LaunchError::Call("no attempt made".into())))
    }

    /// ReportStatus: the frame ids the host is running now (its HostReport's frames).
    pub fn running_frames(&self, host: &str) -> Result<Vec<String>, LaunchError> {
        let request = RqdStaticReportStatusRequest::new();
        let option = CallOption::default().timeout(Duration::from_millis(limits::REPORT_STATUS_TIMEOUT_MS));
        let response = self.client(host, false)?.report_status_opt(&request, option).map_err(launch_error)?;
        Ok(response.get_host_report().get_frames().iter().map(|f| f.get_frame_id().to_string()).collect())
    }

    /// Best-effort KillRunningFrame; NOT_FOUND counts as success.
    pub fn kill(&self, host: &str, frame_id: &str, message: &str) -> Result<(), LaunchError> {
        let mut request = RqdStaticKillRunningFrameRequest::new();
        request.set_frame_id(frame_id.to_string());
        request.set_message(message.to_string());
        let option = CallOption::default().timeout(Duration::from_millis(limits::KILL_TIMEOUT_MS));
        match self.client(host, false)?.kill_running_frame_opt(&request, option) {
            Ok(_) => Ok(()),
            Err(grpcio::Error::RpcFailure(status)) if status.code() == RpcStatusCode::NOT_FOUND => Ok(()),
            Err(e) => Err(launch_error(e)),
        }
    }
}
