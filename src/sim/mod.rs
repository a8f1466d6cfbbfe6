//! Simulation parts shared by the tests, the demo and the benchmarks: a fake RQD (a real
//! grpcio server), a farm seeder, and Cuebot's frame-completion writes.

pub mod farm;
pub mod cuebot;
pub mod fake_rqd;
pub mod plot;
pub mod procs;
pub mod workloads;
