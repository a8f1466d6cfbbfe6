//! Plain data read from the Cuebot database: clusters, jobs, layers, frames and hosts.
//!
//! Units are the database's: cores in hundredths ("core units", 100 = one core), memory and GPU
//! memory in KiB, GPUs in devices. Ids are opaque strings, never re-formatted.

use std::fmt;
use std::sync::Arc;

pub const CORE_UNITS_PER_CORE: i64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterKind {
    Alloc,
    Manual,
    Hostname,
    Hardware,
}

impl ClusterKind {
    /// Label value of `cluster_type`.
    pub fn label(self) -> &'static str {
        match self {
            ClusterKind::Alloc => "alloc",
            ClusterKind::Manual => "manual",
            ClusterKind::Hostname => "hostname",
            ClusterKind::Hardware => "hardware",
        }
    }

    /// `host_tag.str_tag_type` value of the kind.
    pub fn tag_type(self) -> &'static str {
        match self {
            ClusterKind::Alloc => "ALLOC",
            ClusterKind::Manual => "MANUAL",
            ClusterKind::Hostname => "HOSTNAME",
            ClusterKind::Hardware => "HARDWARE",
        }
    }

    pub fn from_tag_type(tag_type: &str) -> Option<ClusterKind> {
        match tag_type {
            "ALLOC" => Some(ClusterKind::Alloc),
            "MANUAL" => Some(ClusterKind::Manual),
            "HOSTNAME" => Some(ClusterKind::Hostname),
            "HARDWARE" => Some(ClusterKind::Hardware),
            _ => None,
        }
    }
}

/// A slice of the farm worked on as a unit: (facility, show, tags of one kind).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cluster {
    pub facility_id: String,
    pub facility_name: String,
    pub show_id: String,
    pub show_name: String,
    pub kind: ClusterKind,
    /// Sorted, deduplicated.
    pub tags: Vec<String>,
    /// The allocation of an ALLOC cluster.
    pub alloc_id: Option<String>,
}

impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.facility_name, self.show_name, self.tags.join(","))
    }
}

/// Splits a layer tag string (`a | b|c`) into trimmed, non-empty tags.
pub fn split_layer_tags(tags: &str) -> Vec<String> {
    tags.split('|').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadMode {
    Auto,
    All,
    Variable,
}

impl ThreadMode {
    /// Unknown values count as AUTO (§3.4).
    pub fn from_db(value: i32) -> ThreadMode {
        match value {
            1 => ThreadMode::All,
            2 => ThreadMode::Variable,
            _ => ThreadMode::Auto,
        }
    }
}

/// What the matcher knows of a host. Idle memory is `LEAST(host.int_mem_idle,
/// host_stat.int_mem_free)` when read by a refresh, and `host.int_mem_idle` after a booking.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub id: Arc<str>,
    pub name: String,
    pub alloc_id: String,
    pub os: String,
    pub thread_mode: ThreadMode,
    pub cores_total: i64,
    pub cores_idle: i64,
    pub mem_total: i64,
    pub mem_idle: i64,
    pub gpus_total: i64,
    pub gpus_idle: i64,
    pub gpu_mem_total: i64,
    pub gpu_mem_idle: i64,
}

impl Host {
    pub fn idle_whole_cores(&self) -> i64 {
        self.cores_idle / CORE_UNITS_PER_CORE
    }
    pub fn total_whole_cores(&self) -> i64 {
        self.cores_total / CORE_UNITS_PER_CORE
    }
    /// `host_stat.str_os` may be a comma list; an unset job OS matches any host.
    pub fn runs_os(&self, os: Option<&str>) -> bool {
        match os {
            None | Some("") => true,
            Some(os) => self.os == os || self.os.split(',').any(|part| part.trim() == os),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub show_id: String,
    /// `job.str_show`
    pub show: String,
    pub shot: String,
    pub user: String,
    pub log_dir: String,
    pub uid: Option<i64>,
    pub os: Option<String>,
    pub loki_url: String,
    pub folder_id: String,
    pub dept_id: String,
    pub priority: i32,
    pub cores_in_use: i64,
    pub max_cores: i64,
    pub gpus_in_use: i64,
    pub max_gpus: i64,
    pub env: Vec<(String, String)>,
    /// The job's slot among the live instances when it was read (`pipeline::ownership`); 0
    /// for a lone instance.
    pub slot: i64,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub id: String,
    pub name: String,
    pub command: String,
    pub range: String,
    pub chunk_size: i64,
    pub dispatch_order: i64,
    pub tags: Vec<String>,
    pub cores_min: i64,
    pub cores_max: i64,
    pub threadable: bool,
    pub mem_min: i64,
    pub gpus_min: i64,
    pub gpu_mem_min: i64,
    pub services: Vec<String>,
    pub has_limits: bool,
    pub env: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub id: String,
    pub name: String,
    pub version: i32,
    pub dispatch_order: i64,
    /// Seconds since `frame.ts_updated` when the frame was read (database clock).
    pub age_secs: f64,
}

/// One layer of one job with a bounded batch of its WAITING frames, as read in a pass.
#[derive(Clone, Debug)]
pub struct LayerWork {
    pub job: Arc<Job>,
    pub layer: Arc<Layer>,
    pub frames: Vec<Frame>,
}
