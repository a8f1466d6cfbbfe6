//! Simulation parts shared by the tests, the demo and the benchmarks: a fake RQD (a real
//! grpcio server), a farm seeder, a faithful Cuebot (its release and admin writes in each of
//! its modes), and a completer that applies releases on time.

pub mod farm;
pub mod completer;
pub mod cuebot;
pub mod fake_rqd;
pub mod plot;
pub mod procs;
pub mod proxy;
pub mod workloads;

/// The nearest-rank `p` quantile (0..=1) of sorted values; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}
