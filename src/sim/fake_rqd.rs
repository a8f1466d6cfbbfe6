//! A fake RQD: a real grpcio server serving `rqd.RqdInterface` on loopback addresses, one per
//! simulated host (all on one port, as real RQDs share `rqd.grpc_port`). It records every
//! LaunchFrame and KillRunningFrame, applies RQD's synchronous checks that matter to a
//! scheduler (rqd-protocol.md §6.1: duplicate frame, cores ≤ 0, idle cores), and can be told to
//! fail or hang per host. Used by the tests, the demo and the benchmarks.

use crate::protos::report::{HostReport, RunningFrameInfo};
use crate::protos::rqd::{
    RqdStaticKillRunningFrameRequest, RqdStaticKillRunningFrameResponse, RqdStaticLaunchFrameRequest,
    RqdStaticLaunchFrameResponse, RqdStaticReportStatusRequest, RqdStaticReportStatusResponse, RunFrame,
};
use crate::protos::rqd_grpc::{create_rqd_interface, RqdInterface};
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder, ServerCredentials, UnarySink};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// How a simulated host answers LaunchFrame.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    Accept,
    Fail(RpcStatusCode, String),
    /// Never answers: the caller's deadline fires.
    Hang,
    /// Accepts the launch and then loses the frame (RQD restarted, the process died before it
    /// ran): the frame is never reported running and never completes.
    Vanish,
}

/// One recorded LaunchFrame.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The address the call was made to (`host:port` authority), reduced to the host.
    pub host: String,
    pub run_frame: RunFrame,
}

type LaunchHook = Box<dyn Fn(&str, &RunFrame) + Send + Sync>;

#[derive(Default)]
struct State {
    launches: Mutex<Vec<Recorded>>,
    kills: Mutex<Vec<(String, String)>>,
    behaviour: Mutex<HashMap<String, Behaviour>>,
    /// frame id → (host, cores, proc id) of frames "running" here.
    running: Mutex<HashMap<String, (String, i32, String)>>,
    /// host → idle core units, when the fake tracks them.
    idle_cores: Mutex<HashMap<String, i64>>,
    hung: Mutex<Vec<UnarySink<RqdStaticLaunchFrameResponse>>>,
    on_launch: Mutex<Option<LaunchHook>>,
    /// Launches of a frame this fake was already running (on any of its hosts): a frame
    /// launched twice at once.
    duplicates: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Service {
    state: Arc<State>,
}

fn authority_host(ctx: &RpcContext) -> String {
    let authority = String::from_utf8_lossy(ctx.host()).to_string();
    match authority.rsplit_once(':') {
        Some((host, _)) => host.to_string(),
        None => authority,
    }
}

fn reject(ctx: &RpcContext, sink: UnarySink<RqdStaticLaunchFrameResponse>, code: RpcStatusCode, message: String) {
    ctx.spawn(async move {
        let _ = sink.fail(RpcStatus::with_message(code, message)).await;
    });
}

impl RqdInterface for Service {
    fn launch_frame(&mut self, ctx: RpcContext, mut req: RqdStaticLaunchFrameRequest, sink: UnarySink<RqdStaticLaunchFrameResponse>) {
        let host = authority_host(&ctx);
        let run_frame = req.take_run_frame();
        let behaviour = self.state.behaviour.lock().get(&host).cloned().unwrap_or(Behaviour::Accept);
        match behaviour {
            Behaviour::Hang => {
                self.state.hung.lock().push(sink);
                return;
            }
            Behaviour::Fail(code, message) => return reject(&ctx, sink, code, message),
            Behaviour::Vanish => {
                self.state.launches.lock().push(Recorded { host, run_frame });
                ctx.spawn(async move {
                    let _ = sink.success(RqdStaticLaunchFrameResponse::new()).await;
                });
                return;
            }
            Behaviour::Accept => {}
        }
        let frame_id = run_frame.get_frame_id().to_string();
        if self.state.running.lock().contains_key(&frame_id) {
            self.state.duplicates.lock().push(frame_id.clone());
            let message = format!("Exception calling application: Not launching, frame is already running on this proc {frame_id}");
            return reject(&ctx, sink, RpcStatusCode::UNKNOWN, message);
        }
        let cores = run_frame.get_num_cores();
        if cores <= 0 {
            let message = "Exception calling application: Not launching, numCores must be > 0".to_string();
            return reject(&ctx, sink, RpcStatusCode::UNKNOWN, message);
        }
        {
            let mut idle = self.state.idle_cores.lock();
            if let Some(units) = idle.get_mut(&host) {
                if i64::from(cores) > *units {
                    drop(idle);
                    let message = "Exception calling application: Not launching, insufficient idle cores".to_string();
                    return reject(&ctx, sink, RpcStatusCode::UNKNOWN, message);
                }
                *units -= i64::from(cores);
            }
        }
        self.state.running.lock().insert(frame_id, (host.clone(), cores, run_frame.get_resource_id().to_string()));
        self.state.launches.lock().push(Recorded { host: host.clone(), run_frame: run_frame.clone() });
        if let Some(hook) = self.state.on_launch.lock().as_ref() {
            hook(&host, &run_frame);
        }
        ctx.spawn(async move {
            let _ = sink.success(RqdStaticLaunchFrameResponse::new()).await;
        });
    }

    fn report_status(&mut self, ctx: RpcContext, _req: RqdStaticReportStatusRequest, sink: UnarySink<RqdStaticReportStatusResponse>) {
        let host = authority_host(&ctx);
        if let Some(Behaviour::Fail(code, message)) = self.state.behaviour.lock().get(&host).cloned() {
            ctx.spawn(async move {
                let _ = sink.fail(RpcStatus::with_message(code, message)).await;
            });
            return;
        }
        let mut report = HostReport::new();
        for (frame_id, (h, cores, proc_id)) in self.state.running.lock().iter() {
            if *h == host {
                let mut info = RunningFrameInfo::new();
                info.set_frame_id(frame_id.clone());
                info.set_resource_id(proc_id.clone());
                info.set_num_cores(*cores);
                report.mut_frames().push(info);
            }
        }
        let mut response = RqdStaticReportStatusResponse::new();
        response.set_host_report(report);
        ctx.spawn(async move {
            let _ = sink.success(response).await;
        });
    }

    fn kill_running_frame(
        &mut self,
        ctx: RpcContext,
        req: RqdStaticKillRunningFrameRequest,
        sink: UnarySink<RqdStaticKillRunningFrameResponse>,
    ) {
        let host = authority_host(&ctx);
        let frame_id = req.get_frame_id().to_string();
        self.state.kills.lock().push((host, frame_id.clone()));
        // The frame's process is killed: it no longer runs here (its cores come back).
        let known = match self.state.running.lock().remove(&frame_id) {
            Some((h, cores, _)) => {
                if let Some(units) = self.state.idle_cores.lock().get_mut(&h) {
                    *units += i64::from(cores);
                }
                true
            }
            None => false,
        };
        ctx.spawn(async move {
            let _ = if known {
                sink.success(RqdStaticKillRunningFrameResponse::new()).await
            } else {
                let details = format!("The requested frame to kill was not found. frameId: {frame_id}");
                sink.fail(RpcStatus::with_message(RpcStatusCode::NOT_FOUND, details)).await
            };
        });
    }
}

pub struct FakeRqd {
    _server: Server,
    pub port: u16,
    state: Arc<State>,
}

impl FakeRqd {
    /// Serves on `127.0.0.1` and every given loopback address, all on one free port.
    pub fn start(addresses: &[String]) -> Result<FakeRqd, String> {
        let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).name_prefix("fake-rqd").build());
        let state = Arc::new(State::default());
        let service = create_rqd_interface(Service { state: Arc::clone(&state) });
        let mut server = ServerBuilder::new(env).register_service(service).build().map_err(|e| e.to_string())?;
        let port = server
            .add_listening_port("127.0.0.1:0", ServerCredentials::insecure())
            .map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
        for address in addresses.iter().filter(|a| a.as_str() != "127.0.0.1") {
            server
                .add_listening_port(format!("{address}:{port}"), ServerCredentials::insecure())
                .map_err(|e| format!("bind {address}:{port}: {e}"))?;
        }
        server.start();
        Ok(FakeRqd { _server: server, port, state })
    }

    pub fn set_behaviour(&self, host: &str, behaviour: Behaviour) {
        self.state.behaviour.lock().insert(host.to_string(), behaviour);
    }

    /// Makes the fake track idle core units for a host, as RQD does.
    pub fn set_idle_cores(&self, host: &str, units: i64) {
        self.state.idle_cores.lock().insert(host.to_string(), units);
    }

    /// Called for every accepted launch (the demo uses it to schedule completions).
    pub fn on_launch(&self, hook: impl Fn(&str, &RunFrame) + Send + Sync + 'static) {
        *self.state.on_launch.lock() = Some(Box::new(hook));
    }

    /// Forgets a finished frame and gives its cores back.
    pub fn finish(&self, frame_id: &str) {
        self.handle().finish(frame_id);
    }

    /// A thread-safe handle to the fake's state (the server itself is not `Sync`).
    pub fn handle(&self) -> FakeRqdHandle {
        FakeRqdHandle { state: Arc::clone(&self.state) }
    }

    pub fn launches(&self) -> Vec<Recorded> {
        self.state.launches.lock().clone()
    }

    pub fn launch_count(&self) -> usize {
        self.state.launches.lock().len()
    }

    /// Frames launched while the fake was still running them (each launch counted).
    pub fn duplicate_launches(&self) -> Vec<String> {
        self.state.duplicates.lock().clone()
    }

    /// Frames running now, by frame id.
    pub fn running_frames(&self) -> Vec<String> {
        self.state.running.lock().keys().cloned().collect()
    }

    pub fn kills(&self) -> Vec<(String, String)> {
        self.state.kills.lock().clone()
    }
}

/// Shares a fake RQD's state with other threads (e.g. a frame-completion simulator).
#[derive(Clone)]
pub struct FakeRqdHandle {
    state: Arc<State>,
}

impl FakeRqdHandle {
    /// Forgets a finished frame and gives its cores back.
    pub fn finish(&self, frame_id: &str) {
        if let Some((host, cores, _)) = self.state.running.lock().remove(frame_id) {
            if let Some(units) = self.state.idle_cores.lock().get_mut(&host) {
                *units += i64::from(cores);
            }
        }
    }
}

/// Loopback address number `index` of a block: 127.`block`.x.y, never .0 or .255.
pub fn loopback_address(block: u8, index: usize) -> String {
    let x = index / 250;
    let y = index % 250 + 1;
    format!("127.{block}.{x}.{y}")
}
