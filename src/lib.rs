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

// Logging macros first: every module below may use them.
#[macro_use]
pub mod ops;
pub mod config;
pub mod db;
pub mod explain;
pub mod limits;
pub mod matching;
pub mod model;
pub mod pipeline;
pub mod rqd;
// Simulator, bench and demo support: test tooling, not daemon paths; panics there abort a
// bench run, not the scheduler.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod sim;
