//! The operations surface: logging, metrics, the HTTP endpoint and signals.

#[macro_use]
pub mod logging;
pub mod fds;
pub mod http;
pub mod metrics;
pub mod signals;
