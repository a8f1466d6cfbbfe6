//! Which host takes which frame: the clusters an instance serves, the host cache, and the
//! pure matching rules. No database writes here; the pass books what these choose.

pub mod clusters;
pub mod host_cache;
pub mod matcher;
pub mod policy;
