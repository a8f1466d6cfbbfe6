//! Pure matching rules: which host may take a layer's frame, how many cores a frame reserves,
//! and how candidate hosts are scored. No I/O, no locks; the host cache and the booking loop
//! call these, and the data-driven tests exercise them directly.
//!
//! Rules, in the order they are checked (cheapest first), follow scheduler-behaviour.md
//! §3.4–§3.7. Where we deliberately differ from upstream the comment says so.

use crate::model::{Host, Layer, ThreadMode, CORE_UNITS_PER_CORE};

/// Why a host cannot take a frame of a layer. The names are what `explain` and the tests show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    Os,
    ThreadMode,
    Cores,
    Memory,
    Gpus,
    GpuMemory,
    /// The reservation came out at zero cores (a capped job with nothing left).
    NoCores,
}

impl Reject {
    pub fn name(self) -> &'static str {
        match self {
            Reject::Os => "os",
            Reject::ThreadMode => "thread_mode",
            Reject::Cores => "cores",
            Reject::Memory => "memory",
            Reject::Gpus => "gpus",
            Reject::GpuMemory => "gpu_memory",
            Reject::NoCores => "no_cores",
        }
    }
}

/// Matching knobs from the configuration.
#[derive(Clone, Debug)]
pub struct MatchPolicy {
    pub memory_stranded_threshold_kib: i64,
    pub selfish_services: Vec<String>,
}

/// Requested whole cores of a layer on a host (§3.5): m if m > 0, the whole host if m = 0,
/// all but |m| if m < 0.
pub fn requested_cores(layer: &Layer, host: &Host) -> i64 {
    let m = layer.cores_min / CORE_UNITS_PER_CORE;
    let total = host.total_whole_cores();
    if layer.cores_min == 0 {
        total
    } else if layer.cores_min < 0 {
        (total + m).max(0)
    } else {
        m.max(1)
    }
}

/// Idle whole cores a host needs before the layer is worth trying there (§3.5, R:): one for a
/// non-threadable layer (what it reserves), the requested count for a threadable one, two on a
/// VARIABLE host when the request is that small.
pub fn core_floor(layer: &Layer, host: &Host) -> i64 {
    if !layer.threadable {
        return 1;
    }
    let requested = requested_cores(layer, host);
    if host.thread_mode == ThreadMode::Variable && requested <= 2 {
        return 2;
    }
    requested.max(1)
}

/// Lowest core bucket a search starts at: max(1, m) for positive minimums, 1 otherwise; the
/// per-host floor does the rest.
pub fn search_core_key(layer: &Layer) -> i64 {
    if layer.threadable && layer.cores_min > 0 {
        (layer.cores_min / CORE_UNITS_PER_CORE).max(1)
    } else {
        1
    }
}

/// The candidate predicates that depend on the layer (§3.4). State, lock, ping freshness, tag
/// and scope are properties of the host cache's contents and are checked where hosts are read.
pub fn check_host(host: &Host, layer: &Layer, job_os: Option<&str>) -> Result<(), Reject> {
    if !host.runs_os(job_os) {
        return Err(Reject::Os);
    }
    if host.thread_mode == ThreadMode::All && !layer.threadable {
        return Err(Reject::ThreadMode);
    }
    if host.idle_whole_cores() < core_floor(layer, host) {
        return Err(Reject::Cores);
    }
    check_memory_and_gpus(host, layer)
}

/// Idle memory, GPUs and GPU memory against the layer's minimums.
fn check_memory_and_gpus(host: &Host, layer: &Layer) -> Result<(), Reject> {
    if host.mem_idle < layer.mem_min {
        return Err(Reject::Memory);
    }
    if host.gpus_idle < layer.gpus_min {
        return Err(Reject::Gpus);
    }
    if host.gpu_mem_idle < layer.gpu_mem_min {
        return Err(Reject::GpuMemory);
    }
    Ok(())
}

fn is_selfish(layer: &Layer, policy: &MatchPolicy) -> bool {
    layer.services.iter().any(|service| policy.selfish_services.iter().any(|s| s == service))
}

/// Core units one frame of `layer` reserves on `host` in its current idle state (§3.6).
/// `job_remaining_units` is the job's max minus cores in use and booked so far, when the job is
/// capped (max > 0).
pub fn reserve_cores(
    host: &Host,
    layer: &Layer,
    job_remaining_units: Option<i64>,
    policy: &MatchPolicy,
) -> Result<i64, Reject> {
    let idle = host.idle_whole_cores();
    let mut cores = if !layer.threadable {
        // DECISIONS.md #1: a non-threadable frame reserves one core, whatever its minimum.
        1
    } else {
        threadable_cores(host, layer, policy)
    };
    if layer.threadable && layer.cores_max > 0 {
        cores = cores.min(layer.cores_max / CORE_UNITS_PER_CORE);
    }
    if let Some(remaining) = job_remaining_units {
        let remaining_cores = remaining / CORE_UNITS_PER_CORE;
        if remaining_cores > 0 && cores > remaining_cores {
            cores = remaining_cores;
        }
    }
    if cores <= 0 {
        return Err(Reject::NoCores);
    }
    if cores > host.total_whole_cores() || cores > idle {
        return Err(Reject::Cores);
    }
    check_memory_and_gpus(host, layer)?;
    Ok(cores * CORE_UNITS_PER_CORE)
}

fn threadable_cores(host: &Host, layer: &Layer, policy: &MatchPolicy) -> i64 {
    let idle = host.idle_whole_cores();
    let requested = requested_cores(layer, host);
    match host.thread_mode {
        ThreadMode::All => return idle,
        ThreadMode::Variable if requested <= 2 => return 2,
        _ => {}
    }
    let left_after = (host.mem_idle - layer.mem_min).max(0);
    if is_selfish(layer, policy) || left_after <= policy.memory_stranded_threshold_kib {
        return idle;
    }
    let total_cores = host.total_whole_cores().max(1);
    // Memory per core, rounded to the nearest KiB.
    let mem_per_core = ((host.mem_total + total_cores / 2) / total_cores).max(1);
    (layer.mem_min / mem_per_core).max(requested)
}

/// E-PVM weights (scheduler-behaviour.md §3.7): the configuration's own type.
pub use crate::config::EpvmWeights as Weights;

/// Caps that bound how many more frames of the layer may run: (max, in use) pairs in core
/// units; a max ≤ 0 is no bound.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScoreCaps {
    pub job_max_cores: i64,
    pub job_cores_in_use: i64,
    pub show_burst: i64,
    pub show_cores_in_use: i64,
}

/// E-PVM stranding score of placing one frame of `layer` on `host`; lower is better, never
/// negative. Cores are compared in whole cores, memory in KiB, GPU memory in KiB.
pub fn epvm_score(host: &Host, layer: &Layer, caps: ScoreCaps, weights: &Weights) -> f64 {
    let cores_min = if layer.threadable {
        (layer.cores_min / CORE_UNITS_PER_CORE).max(1)
    } else {
        1
    };
    let dims: [(f64, f64, f64); 4] = [
        (host.idle_whole_cores() as f64, cores_min as f64, weights.cores),
        (host.mem_idle as f64, layer.mem_min as f64, weights.mem),
        (host.gpus_idle as f64, layer.gpus_min as f64, weights.gpus),
        (host.gpu_mem_idle as f64, layer.gpu_mem_min as f64, weights.gpu_mem),
    ];
    let mut more_fit: Option<f64> = None;
    let mut bound = |n: f64| more_fit = Some(more_fit.map_or(n, |m: f64| m.min(n)));
    for (idle, min, _) in dims {
        if min > 0.0 {
            bound(((idle - min) / min).floor());
        }
    }
    let cores_min_units = (cores_min * CORE_UNITS_PER_CORE) as f64;
    for (cap, in_use) in [(caps.job_max_cores, caps.job_cores_in_use), (caps.show_burst, caps.show_cores_in_use)] {
        if cap > 0 {
            bound(((cap - in_use) as f64 - cores_min_units).max(0.0).div_euclid(cores_min_units).floor());
        }
    }
    let more_fit = more_fit.unwrap_or(0.0).max(0.0);
    let waste = |idle: f64, min: f64| {
        if min > 0.0 {
            (((idle - min) - more_fit * min) / min).max(0.0)
        } else {
            0.0
        }
    };
    let mut score = weights.cores * waste(dims[0].0, dims[0].1) + weights.mem * waste(dims[1].0, dims[1].1);
    if layer.gpus_min > 0 || layer.gpu_mem_min > 0 {
        score += weights.gpus * waste(dims[2].0, dims[2].1) + weights.gpu_mem * waste(dims[3].0, dims[3].1);
    } else {
        let gpu_mem_gb = host.gpu_mem_idle as f64 * 1024.0 / 1e9;
        score += weights.gpu_count_reservation * host.gpus_idle as f64 + weights.gpu_mem_reservation * gpu_mem_gb;
    }
    if score.is_finite() {
        score.max(0.0)
    } else {
        f64::MAX
    }
}

#[cfg(test)]
#[path = "matcher_tests.rs"]
mod tests;
