//! cue-scheduler: books WAITING frames of a Cuebot database onto hosts and launches them on
//! RQD. See README.md, section Architecture, for the data flow and the invariants.

// No panics on paths that handle outside input or resources (issue 9 item 2): unwrap/expect
// are denied outside tests; an `#[allow]` needs a comment saying why it cannot fail. The
// simulator (src/sim) is exempted at module level.
#![deny(clippy::unwrap_used, clippy::expect_used)]

// Generated code (protobuf accessors unwrap by design); not ours to edit.
#[allow(renamed_and_removed_lints, unused_parens, mismatched_lifetime_syntaxes, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod protos {
    include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
}

#[macro_use]
pub mod logging;
pub mod accounting;
pub mod booking;
pub mod clusters;
pub mod db;
pub mod frameset;
pub mod host_cache;
pub mod limits;
pub mod matcher;
pub mod metrics;
pub mod model;
pub mod queries;
pub mod recovery;
pub mod rqd;
pub mod signals;
pub mod config;
pub mod context;
pub mod dispatch;
pub mod feed;
pub mod http;
pub mod pass;
pub mod pipeline;
pub mod settings;
pub mod cli;
pub mod explain;
// Simulator, bench and demo support: test tooling, not daemon paths; panics there abort a
// bench run, not the scheduler.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod sim;
