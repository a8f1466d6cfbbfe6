//! `cue-scheduler explain`: read-only diagnosis of why a job's waiting frames do not dispatch.
//!
//! [`diagnose`] reads the job, its layers, the hosts that carry the layers' tags and every cap
//! that applies, with plain SELECTs on one connection (no locks, no writes), and produces a
//! [`Diagnosis`]: plain data, each layer with the [`Reason`]s it is not dispatching now, most
//! fundamental first. [`render_text`] and [`render_json`] turn it into what the command prints.
//!
//! The rules mirror the pass query (`queries::pass_sql`: Cuebot's strict `<` caps, any limit with
//! room passes, `ts_start_after`), the host cache's candidate predicates (OPEN, UP, fresh ping,
//! tag, facility and subscribed allocation) and the matcher's pure rules (`check_host`,
//! `reserve_cores`), with hosts read as the cache reads them (idle memory =
//! `LEAST(host.int_mem_idle, host_stat.int_mem_free)`), so explain and the scheduler agree on
//! what "fits" means.

mod policy;

use crate::config::cli::ExplainArgs;
use crate::config::Config;
use crate::matching::matcher::{self, Reject};
use crate::model::{self, ClusterKind, Host, Layer, ThreadMode, CORE_UNITS_PER_CORE};
use crate::db::queries::col;
use crate::config::settings::Settings;
use postgres::{Client, Row};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const KIB_PER_GIB: i64 = 1_048_576;

// ------------------------------------------------------------------------------------------------
// The diagnosis: plain data
// ------------------------------------------------------------------------------------------------

/// Everything `explain` found out about one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnosis {
    pub job: JobInfo,
    /// Reasons that block every layer of the job (already included in each layer's reasons).
    pub job_reasons: Vec<Reason>,
    /// Layers with WAITING frames (or the one asked for with `--layer`), in dispatch order.
    pub layers: Vec<LayerDiagnosis>,
    /// Layers left out because they have no WAITING frame.
    pub layers_without_waiting: usize,
    /// The scheduling policy's view: share against entitlement, holds, what the job waits for.
    pub policy: Option<policy::PolicyDiagnosis>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobInfo {
    pub id: String,
    pub name: String,
    pub state: String,
    pub show: String,
    pub facility: String,
    pub folder: String,
    pub priority: i64,
    /// `job_resource` cores in use and cap, core units.
    pub cores: i64,
    pub max_cores: i64,
    pub os: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerDiagnosis {
    pub id: String,
    pub name: String,
    pub waiting_frames: i64,
    pub tags: Vec<String>,
    pub cores_min: i64,
    pub threadable: bool,
    pub mem_min: i64,
    pub gpus_min: i64,
    pub gpu_mem_min: i64,
    /// Clusters (facility:show:tag) that would serve the layer.
    pub clusters: Vec<ClusterInfo>,
    /// In-scope hosts carrying a tag of a serving cluster.
    pub hosts_checked: usize,
    /// Hosts that fit a frame now and whose allocation has subscription room.
    pub hosts_fitting: usize,
    /// The first `limits::EXPLAIN_HOSTS_SHOWN_MAX` of them, by name.
    pub fitting_hosts: Vec<String>,
    /// Waiting frames that can never be launched (no number in the name, number outside the
    /// layer's range): (frame name, why). The scheduler skips them; they never block the rest.
    pub unlaunchable: Vec<(String, String)>,
    /// Job and layer reasons together, most fundamental first; empty = dispatchable.
    pub reasons: Vec<Reason>,
}

impl LayerDiagnosis {
    pub fn dispatchable(&self) -> bool {
        self.reasons.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterInfo {
    /// `facility:show:tag`
    pub name: String,
    pub tag: String,
    pub kind: ClusterKind,
    /// Why this scheduler's configuration leaves the cluster out, if it does.
    pub excluded: Option<String>,
}

/// A subscription a layer's hosts book against.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocRoom {
    pub alloc: String,
    pub burst: i64,
    pub cores: i64,
}

/// One limit attached to a layer: running frames over all its layers, and its maximum (None:
/// NULL, which blocks). `name` is `None` when the layer_limit row points at no limit_record.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitUse {
    pub name: Option<String>,
    pub running: i64,
    pub max: Option<i64>,
}

/// The host that came closest to fitting, and what it lacks.
#[derive(Clone, Debug, PartialEq)]
pub struct NearMiss {
    pub host: String,
    pub misses: Vec<Miss>,
}

/// One rule a host fails for a layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Miss {
    Locked { lock_state: String },
    NotUp { state: String },
    /// `age_secs` None: no host_stat row / ping.
    StalePing { age_secs: Option<f64>, threshold_secs: f64 },
    Os { host_os: String, job_os: String },
    /// An ALL-mode host and a non-threadable layer.
    ThreadMode,
    /// `check_host` failed on cores (whole cores), memory (KiB), GPUs or GPU memory (KiB).
    Resource { rule: Reject, have: i64, need: i64 },
    /// `check_host` passed but `reserve_cores` refused the reservation.
    Reservation { rule: Reject },
}

/// Why a layer is not dispatching. Declaration order is the display order (most fundamental
/// first).
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    NoWaitingFrames,
    JobNotPending { state: String },
    JobPaused,
    AutoBookOff,
    ShowInactive { show: String },
    ShowNotManaged { show: String },
    FacilityNotScheduled { job_facility: String, scheduled: String },
    MissingRow { table: String },
    NoPoint { dept: String, show: String },
    WaitingCountStale { table: String, count: i64, waiting_frames: i64 },
    NoHostWithTags { tags: Vec<String>, elsewhere: i64 },
    NoCluster { tags: Vec<String>, excluded: Vec<String> },
    NoHostFits { hosts_checked: usize, nearest: Option<NearMiss> },
    SubscriptionBurst { need: i64, allocs: Vec<AllocRoom> },
    FolderMaxCores { folder: String, cores: i64, max: i64 },
    FolderMaxGpus { folder: String, gpus: i64, max: i64 },
    JobMaxCores { cores: i64, frame_min: i64, max: i64 },
    JobMaxGpus { gpus: i64, frame_min: i64, max: i64 },
    LayerLimit { limits: Vec<LimitUse> },
    StartDelayed { until: String, in_secs: f64 },
    /// Negative memory, GPU or GPU-memory requirements: never booked (they would create idle
    /// capacity out of nothing).
    InvalidRequirements { mem_min: i64, gpus_min: i64, gpu_mem_min: i64 },
    /// Every waiting frame the layer has is one that cannot be launched.
    OnlyUnlaunchableFrames { count: i64 },
}

impl Reason {
    /// Stable snake_case name (text output and JSON `"reason"`).
    pub fn name(&self) -> &'static str {
        self.name_rank().0
    }

    fn rank(&self) -> u8 {
        self.name_rank().1
    }

    fn name_rank(&self) -> (&'static str, u8) {
        match self {
            Reason::NoWaitingFrames => ("no_waiting_frames", 0),
            Reason::JobNotPending { .. } => ("job_not_pending", 1),
            Reason::JobPaused => ("job_paused", 2),
            Reason::AutoBookOff => ("auto_book_off", 3),
            Reason::ShowInactive { .. } => ("show_inactive", 4),
            Reason::ShowNotManaged { .. } => ("show_not_managed", 5),
            Reason::FacilityNotScheduled { .. } => ("facility_not_scheduled", 6),
            Reason::MissingRow { .. } => ("missing_row", 7),
            Reason::NoPoint { .. } => ("no_point", 8),
            Reason::WaitingCountStale { .. } => ("waiting_count_stale", 9),
            Reason::NoHostWithTags { .. } => ("no_host_with_tags", 10),
            Reason::NoCluster { .. } => ("no_cluster", 11),
            Reason::NoHostFits { .. } => ("no_host_fits", 12),
            Reason::SubscriptionBurst { .. } => ("subscription_burst", 13),
            Reason::FolderMaxCores { .. } => ("folder_max_cores", 14),
            Reason::FolderMaxGpus { .. } => ("folder_max_gpus", 15),
            Reason::JobMaxCores { .. } => ("job_max_cores", 16),
            Reason::JobMaxGpus { .. } => ("job_max_gpus", 17),
            Reason::LayerLimit { .. } => ("layer_limit", 18),
            Reason::StartDelayed { .. } => ("start_delayed", 19),
            Reason::InvalidRequirements { .. } => ("invalid_requirements", 6),
            Reason::OnlyUnlaunchableFrames { .. } => ("only_unlaunchable_frames", 7),
        }
    }
}

impl Miss {
    pub fn name(&self) -> &'static str {
        match self {
            Miss::Locked { .. } => "locked",
            Miss::NotUp { .. } => "not_up",
            Miss::StalePing { .. } => "stale_ping",
            Miss::Os { .. } => Reject::Os.name(),
            Miss::ThreadMode => Reject::ThreadMode.name(),
            Miss::Resource { rule, .. } | Miss::Reservation { rule } => rule.name(),
        }
    }

    /// How far from passing: 1 for a state rule, the missing fraction for a resource.
    fn distance(&self) -> f64 {
        match self {
            Miss::Resource { have, need, .. } if *need > 0 => ((need - have) as f64 / *need as f64).clamp(0.0, 1.0),
            _ => 1.0,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Entry point
// ------------------------------------------------------------------------------------------------

/// Runs `explain` and returns the full text to print (JSON with `--json`).
pub fn run(config: &Config, args: &ExplainArgs) -> Result<String, String> {
    let settings = Settings::from_config(config)?;
    let mut client = crate::db::connect(&settings.db, "explain").map_err(|e| one_line(&e.to_string()))?;
    let diagnosis = diagnose(&mut client, &settings, args)?;
    Ok(if args.json { render_json(&diagnosis) } else { render_text(&diagnosis) })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn db_err(context: &'static str) -> impl Fn(postgres::Error) -> String {
    move |e| one_line(&crate::db::DbError::Query { context, source: e }.to_string())
}

// ------------------------------------------------------------------------------------------------
// Data gathering
// ------------------------------------------------------------------------------------------------

/// What the job row and its joined rows say.
#[derive(Clone, Debug)]
struct JobRow {
    info: JobInfo,
    paused: bool,
    auto_book: bool,
    show_id: String,
    show_active: bool,
    show_managed: bool,
    facility_id: String,
    dept: String,
    point: bool,
    gpus: i64,
    max_gpus: i64,
    folder_cores: i64,
    folder_max_cores: i64,
    folder_gpus: i64,
    folder_max_gpus: i64,
    stat_waiting: i64,
    missing: Vec<String>,
}

#[derive(Clone, Debug)]
struct LayerRow {
    layer: Layer,
    stat_waiting: i64,
    waiting_frames: i64,
    start_after: Option<String>,
    start_in_secs: Option<f64>,
    /// Hosts anywhere carrying one of the layer's tags.
    tagged_anywhere: i64,
    /// Waiting frames (the first `limits::EXPLAIN_FRAMES_CHECKED_MAX`) that cannot be launched.
    unlaunchable: Vec<(String, String)>,
    frames_checked: i64,
}

/// A host in the job's facility, on an allocation the show subscribes to, carrying one of the
/// job's layer tags.
#[derive(Clone, Debug)]
struct ScopeHost {
    host: Host,
    lock_state: String,
    state: String,
    ping_age_secs: Option<f64>,
    alloc: String,
    burst: i64,
    sub_cores: i64,
    tags: Vec<String>,
}

/// Layer-independent inputs of a layer's diagnosis.
struct Inputs<'a> {
    job: &'a JobRow,
    hosts: &'a [ScopeHost],
    clusters: &'a [ClusterInfo],
    limits: &'a HashMap<String, Vec<LimitUse>>,
    settings: &'a Settings,
}

/// Reads everything about the job named in `args` and diagnoses it.
pub fn diagnose(client: &mut Client, settings: &Settings, args: &ExplainArgs) -> Result<Diagnosis, String> {
    let managed_mode = crate::db::column_exists(client, "show", "b_scheduler_managed").map_err(|e| e.to_string())?;
    let start_after = crate::db::column_exists(client, "layer", "ts_start_after").map_err(|e| e.to_string())?;
    let job_id = find_job(client, &args.job)?;
    let job = read_job(client, &job_id, managed_mode)?;
    let all_layers = read_layers(client, &job_id, args.layer.as_deref(), start_after)?;
    if let Some(name) = &args.layer {
        if all_layers.is_empty() {
            return Err(format!("job `{}` has no layer named `{name}`", job.info.name));
        }
    }
    let total_waiting: i64 = all_layers.iter().map(|l| l.waiting_frames).sum();
    let (layers, without): (Vec<LayerRow>, Vec<LayerRow>) =
        all_layers.into_iter().partition(|l| l.waiting_frames > 0 || args.layer.is_some());
    let mut tags: Vec<String> = layers.iter().flat_map(|l| l.layer.tags.clone()).collect();
    tags.sort();
    tags.dedup();
    let hosts = read_hosts(client, &job, &tags)?;
    let clusters = read_clusters(client, &job, &tags, settings)?;
    let layer_ids: Vec<String> = layers.iter().map(|l| l.layer.id.clone()).collect();
    let limits = read_limits(client, &layer_ids)?;
    let job_reasons = job_reasons(&job, settings, managed_mode, total_waiting);
    let inputs = Inputs { job: &job, hosts: &hosts, clusters: &clusters, limits: &limits, settings };
    let layers: Vec<LayerDiagnosis> = layers.iter().map(|row| diagnose_layer(&inputs, &job_reasons, row)).collect();
    let licence_blocked = layers.iter().any(|l| l.reasons.iter().any(|r| matches!(r, Reason::LayerLimit { .. })));
    let policy = Some(policy::diagnose(client, settings, &job.show_id, &job_id, licence_blocked)?);
    Ok(Diagnosis { job: job.info.clone(), job_reasons, layers, layers_without_waiting: without.len(), policy })
}

/// The job's id: the only job with that name, else the only PENDING one.
fn find_job(client: &mut Client, name: &str) -> Result<String, String> {
    const CTX: &str = "find job";
    let rows = client
        .query(
            "SELECT pk_job::text, str_state::text FROM job WHERE str_name = $1 ORDER BY ts_started, pk_job",
            &[&name],
        )
        .map_err(db_err(CTX))?;
    let jobs: Vec<(String, String)> = rows
        .iter()
        .map(|r| Ok((col(r, 0, CTX)?, col(r, 1, CTX)?)))
        .collect::<Result<_, crate::db::DbError>>()
        .map_err(|e| e.to_string())?;
    let pending: Vec<&(String, String)> = jobs.iter().filter(|(_, state)| state == "PENDING").collect();
    match (jobs.len(), pending.len()) {
        (0, _) => Err(format!("no job named `{name}` in the database")),
        (1, _) => Ok(jobs[0].0.clone()),
        (_, 1) => Ok(pending[0].0.clone()),
        _ => {
            let list: Vec<String> = jobs.iter().map(|(id, state)| format!("{id} ({state})")).collect();
            Err(format!("{} jobs are named `{name}` and not exactly one is PENDING: {}", jobs.len(), list.join(", ")))
        }
    }
}

fn job_sql(managed_mode: bool) -> String {
    let managed = if managed_mode { "COALESCE(s.b_scheduler_managed, false)" } else { "true" };
    format!(
        "SELECT j.pk_job::text, j.str_name::text, j.str_state::text, COALESCE(s.str_name, j.str_show)::text,
                COALESCE(f.str_name, j.pk_facility)::text, COALESCE(fo.str_name, '')::text,
                COALESCE(jr.int_priority, 0)::bigint, COALESCE(jr.int_cores, 0)::bigint,
                COALESCE(jr.int_max_cores, 0)::bigint, NULLIF(j.str_os, '')::text,
                COALESCE(j.b_paused, false), COALESCE(j.b_auto_book, true), j.pk_show::text,
                COALESCE(s.b_active, false), {managed}, j.pk_facility::text, COALESCE(d.str_name, fo.pk_dept, '')::text,
                EXISTS (SELECT 1 FROM point p WHERE p.pk_dept = fo.pk_dept AND p.pk_show = fo.pk_show),
                COALESCE(jr.int_gpus, 0)::bigint, COALESCE(jr.int_max_gpus, 0)::bigint,
                COALESCE(fr.int_cores, 0)::bigint, COALESCE(fr.int_max_cores, -1)::bigint,
                COALESCE(fr.int_gpus, 0)::bigint, COALESCE(fr.int_max_gpus, -1)::bigint,
                COALESCE(js.int_waiting_count, 0)::bigint,
                ARRAY_REMOVE(ARRAY[CASE WHEN s.pk_show IS NULL THEN 'show' END,
                                   CASE WHEN fo.pk_folder IS NULL THEN 'folder' END,
                                   CASE WHEN fr.pk_folder IS NULL THEN 'folder_resource' END,
                                   CASE WHEN jr.pk_job IS NULL THEN 'job_resource' END,
                                   CASE WHEN js.pk_job IS NULL THEN 'job_stat' END], NULL)::text[]
         FROM job j
         LEFT JOIN show s ON s.pk_show = j.pk_show
         LEFT JOIN facility f ON f.pk_facility = j.pk_facility
         LEFT JOIN folder fo ON fo.pk_folder = j.pk_folder
         LEFT JOIN dept d ON d.pk_dept = fo.pk_dept
         LEFT JOIN job_resource jr ON jr.pk_job = j.pk_job
         LEFT JOIN folder_resource fr ON fr.pk_folder = j.pk_folder
         LEFT JOIN job_stat js ON js.pk_job = j.pk_job
         WHERE j.pk_job = $1"
    )
}

fn read_job(client: &mut Client, job_id: &str, managed_mode: bool) -> Result<JobRow, String> {
    let row = client.query_one(job_sql(managed_mode).as_str(), &[&job_id]).map_err(db_err("read job"))?;
    job_row(&row).map_err(|e| e.to_string())
}

fn job_row(row: &Row) -> Result<JobRow, crate::db::DbError> {
    const CTX: &str = "read job";
    let info = JobInfo {
        id: col(row, 0, CTX)?,
        name: col(row, 1, CTX)?,
        state: col(row, 2, CTX)?,
        show: col(row, 3, CTX)?,
        facility: col(row, 4, CTX)?,
        folder: col(row, 5, CTX)?,
        priority: col(row, 6, CTX)?,
        cores: col(row, 7, CTX)?,
        max_cores: col(row, 8, CTX)?,
        os: col(row, 9, CTX)?,
    };
    Ok(JobRow {
        info,
        paused: col(row, 10, CTX)?,
        auto_book: col(row, 11, CTX)?,
        show_id: col(row, 12, CTX)?,
        show_active: col(row, 13, CTX)?,
        show_managed: col(row, 14, CTX)?,
        facility_id: col(row, 15, CTX)?,
        dept: col(row, 16, CTX)?,
        point: col(row, 17, CTX)?,
        gpus: col(row, 18, CTX)?,
        max_gpus: col(row, 19, CTX)?,
        folder_cores: col(row, 20, CTX)?,
        folder_max_cores: col(row, 21, CTX)?,
        folder_gpus: col(row, 22, CTX)?,
        folder_max_gpus: col(row, 23, CTX)?,
        stat_waiting: col(row, 24, CTX)?,
        missing: col(row, 25, CTX)?,
    })
}

fn layers_sql(start_after: bool) -> String {
    let max_frames = crate::limits::EXPLAIN_FRAMES_CHECKED_MAX;
    let start = if start_after {
        "to_char(l.ts_start_after AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
         extract(epoch FROM l.ts_start_after - now())::float8"
    } else {
        "NULL::text, NULL::float8"
    };
    format!(
        "SELECT l.pk_layer::text, l.str_name::text, COALESCE(l.str_tags, '')::text,
                COALESCE(l.int_cores_min, 100)::bigint, COALESCE(l.int_cores_max, 0)::bigint,
                COALESCE(l.b_threadable, true), COALESCE(l.int_mem_min, 0)::bigint,
                COALESCE(l.int_gpus_min, 0)::bigint, COALESCE(l.int_gpu_mem_min, 0)::bigint,
                COALESCE(l.str_services, '')::text, COALESCE(l.int_dispatch_order, 0)::bigint,
                COALESCE(ls.int_waiting_count, 0)::bigint,
                (SELECT count(*) FROM frame f WHERE f.pk_layer = l.pk_layer AND f.str_state = 'WAITING')::bigint,
                {start},
                (SELECT count(DISTINCT t.pk_host) FROM host_tag t
                 WHERE t.str_tag = ANY(string_to_array(replace(l.str_tags, ' ', ''), '|')))::bigint,
                COALESCE(l.str_cmd, '')::text, COALESCE(l.str_range, '')::text, COALESCE(l.int_chunk_size, 1)::bigint,
                (SELECT j.str_name::text FROM job j WHERE j.pk_job = l.pk_job),
                ARRAY(SELECT f.str_name::text FROM frame f WHERE f.pk_layer = l.pk_layer AND f.str_state = 'WAITING'
                      ORDER BY f.int_dispatch_order, f.int_layer_order, f.pk_frame LIMIT {max_frames})
         FROM layer l
         LEFT JOIN layer_stat ls ON ls.pk_layer = l.pk_layer
         WHERE l.pk_job = $1 AND ($2::text IS NULL OR l.str_name = $2)
         ORDER BY l.int_dispatch_order, l.pk_layer"
    )
}

fn read_layers(client: &mut Client, job_id: &str, only: Option<&str>, start_after: bool) -> Result<Vec<LayerRow>, String> {
    let rows = client.query(layers_sql(start_after).as_str(), &[&job_id, &only]).map_err(db_err("read layers"))?;
    rows.iter().map(|r| layer_row(r).map_err(|e| e.to_string())).collect()
}

fn layer_row(row: &Row) -> Result<LayerRow, crate::db::DbError> {
    const CTX: &str = "read layer";
    let (command, range, chunk_size): (String, String, i64) = (col(row, 16, CTX)?, col(row, 17, CTX)?, col(row, 18, CTX)?);
    let job_name: Option<String> = col(row, 19, CTX)?;
    let frame_names: Vec<String> = col(row, 20, CTX)?;
    let layer_name: String = col(row, 1, CTX)?;
    let frames_checked = frame_names.len() as i64;
    let unlaunchable: Vec<(String, String)> = frame_names
        .iter()
        .filter_map(|name| {
            let input = crate::rqd::frameset::TokenInput {
                command: &command,
                range: &range,
                chunk_size,
                frame_name: name,
                layer_name: &layer_name,
                job_name: job_name.as_deref().unwrap_or(""),
            };
            crate::rqd::frameset::prepare_command(&input).err().map(|e| (name.clone(), e.to_string()))
        })
        .collect();
    let tags: String = col(row, 2, CTX)?;
    let services: String = col(row, 9, CTX)?;
    let layer = Layer {
        id: col(row, 0, CTX)?,
        name: col(row, 1, CTX)?,
        command: String::new(),
        range: String::new(),
        chunk_size: 1,
        dispatch_order: col(row, 10, CTX)?,
        tags: model::split_layer_tags(&tags),
        cores_min: col(row, 3, CTX)?,
        cores_max: col(row, 4, CTX)?,
        threadable: col(row, 5, CTX)?,
        mem_min: col(row, 6, CTX)?,
        gpus_min: col(row, 7, CTX)?,
        gpu_mem_min: col(row, 8, CTX)?,
        services: services.split(',').map(str::to_string).collect(),
        has_limits: false,
        env: Vec::new(),
    };
    Ok(LayerRow {
        layer,
        stat_waiting: col(row, 11, CTX)?,
        waiting_frames: col(row, 12, CTX)?,
        start_after: col(row, 13, CTX)?,
        start_in_secs: col(row, 14, CTX)?,
        tagged_anywhere: col(row, 15, CTX)?,
        unlaunchable,
        frames_checked,
    })
}

const HOSTS_SQL: &str = "
    SELECT h.pk_host::text, h.str_name::text, h.pk_alloc::text, COALESCE(hs.str_os, '')::text,
           COALESCE(h.int_thread_mode, 0)::bigint, h.int_cores::bigint, h.int_cores_idle::bigint,
           h.int_mem::bigint, LEAST(h.int_mem_idle, hs.int_mem_free)::bigint,
           h.int_gpus::bigint, h.int_gpus_idle::bigint, h.int_gpu_mem::bigint,
           LEAST(h.int_gpu_mem_idle, hs.int_gpu_mem_free)::bigint,
           h.str_lock_state::text, COALESCE(hs.str_state, 'no host_stat row')::text,
           extract(epoch FROM now() - hs.ts_ping)::float8,
           a.str_name::text, COALESCE(s.int_burst, 0)::bigint, COALESCE(s.int_cores, 0)::bigint,
           ARRAY(SELECT DISTINCT t.str_tag::text FROM host_tag t
                 WHERE t.pk_host = h.pk_host AND t.str_tag = ANY($3::text[]))
    FROM host h
    JOIN alloc a ON a.pk_alloc = h.pk_alloc
    JOIN subscription s ON s.pk_alloc = h.pk_alloc AND s.pk_show = $2
    LEFT JOIN host_stat hs ON hs.pk_host = h.pk_host
    WHERE a.pk_facility = $1
      AND EXISTS (SELECT 1 FROM host_tag t WHERE t.pk_host = h.pk_host AND t.str_tag = ANY($3::text[]))
    ORDER BY h.str_name, h.pk_host";

fn read_hosts(client: &mut Client, job: &JobRow, tags: &[String]) -> Result<Vec<ScopeHost>, String> {
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let tags = tags.to_vec();
    let rows = client.query(HOSTS_SQL, &[&job.facility_id, &job.show_id, &tags]).map_err(db_err("read hosts"))?;
    rows.iter().map(|r| host_row(r).map_err(|e| e.to_string())).collect()
}

fn host_row(row: &Row) -> Result<ScopeHost, crate::db::DbError> {
    const CTX: &str = "read host";
    let id: String = col(row, 0, CTX)?;
    let opt = |i: usize| -> Result<i64, crate::db::DbError> { Ok(col::<Option<i64>>(row, i, CTX)?.unwrap_or(0)) };
    let host = Host {
        id: Arc::from(id.as_str()),
        name: col(row, 1, CTX)?,
        alloc_id: col(row, 2, CTX)?,
        os: col(row, 3, CTX)?,
        thread_mode: ThreadMode::from_db(col::<i64>(row, 4, CTX)? as i32),
        cores_total: opt(5)?,
        cores_idle: opt(6)?,
        mem_total: opt(7)?,
        mem_idle: opt(8)?,
        gpus_total: opt(9)?,
        gpus_idle: opt(10)?,
        gpu_mem_total: opt(11)?,
        gpu_mem_idle: opt(12)?,
    };
    Ok(ScopeHost {
        host,
        lock_state: col(row, 13, CTX)?,
        state: col(row, 14, CTX)?,
        ping_age_secs: col(row, 15, CTX)?,
        alloc: col(row, 16, CTX)?,
        burst: col(row, 17, CTX)?,
        sub_cores: col(row, 18, CTX)?,
        tags: col(row, 19, CTX)?,
    })
}

/// Cluster rows as discovery builds them (scheduler-behaviour.md §2.2), for the given tags.
const CLUSTERS_SQL: &str = "
    SELECT a.str_tag::text, 'ALLOC'::text
    FROM alloc a JOIN subscription s ON s.pk_alloc = a.pk_alloc AND s.pk_show = $2
    WHERE a.pk_facility = $1 AND a.str_tag = ANY($3::text[])
      AND EXISTS (SELECT 1 FROM host_tag t WHERE t.str_tag_type = 'ALLOC' AND t.str_tag = a.str_tag)
    UNION
    SELECT t.str_tag::text, t.str_tag_type::text
    FROM host_tag t
    JOIN host h ON h.pk_host = t.pk_host
    JOIN alloc a ON a.pk_alloc = h.pk_alloc
    JOIN subscription s ON s.pk_alloc = a.pk_alloc AND s.pk_show = $2
    WHERE a.pk_facility = $1 AND t.str_tag_type IN ('MANUAL', 'HOSTNAME', 'HARDWARE')
      AND t.str_tag = ANY($3::text[])
    ORDER BY 1, 2";

fn read_clusters(client: &mut Client, job: &JobRow, tags: &[String], settings: &Settings) -> Result<Vec<ClusterInfo>, String> {
    const CTX: &str = "read clusters";
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let tags = tags.to_vec();
    let rows = client.query(CLUSTERS_SQL, &[&job.facility_id, &job.show_id, &tags]).map_err(db_err(CTX))?;
    let mut clusters = Vec::new();
    for row in &rows {
        let tag: String = col(row, 0, CTX).map_err(|e| e.to_string())?;
        let tag_type: String = col(row, 1, CTX).map_err(|e| e.to_string())?;
        let Some(kind) = ClusterKind::from_tag_type(&tag_type) else { continue };
        clusters.push(cluster_info(tag, kind, &job.info, settings));
    }
    Ok(clusters)
}

/// A cluster, marked excluded when this configuration's ignore_tags or explicit selection
/// leaves it out (the facility is checked once for the job).
fn cluster_info(tag: String, kind: ClusterKind, job: &JobInfo, settings: &Settings) -> ClusterInfo {
    let selection = &settings.tunables.selection;
    let selected = match kind {
        _ if !selection.is_explicit() => true,
        ClusterKind::Alloc => selection.alloc_tags.iter().any(|(show, t)| *show == job.show && *t == tag),
        ClusterKind::Manual => {
            selection.manual_tags.iter().any(|(show, t)| *t == tag && show.as_ref().is_none_or(|s| *s == job.show))
        }
        ClusterKind::Hostname | ClusterKind::Hardware => false,
    };
    let excluded = if selection.ignore_tags.contains(&tag) {
        Some("ignored by scheduler.ignore_tags".to_string())
    } else if !selected {
        Some("not selected by scheduler.alloc_tags/manual_tags".to_string())
    } else {
        None
    };
    ClusterInfo { name: format!("{}:{}:{}", job.facility, job.show, tag), tag, kind, excluded }
}

const LIMITS_SQL: &str = "
    SELECT ll.pk_layer::text, lr.str_name::text, lr.int_max_value::bigint,
           (SELECT COALESCE(SUM(ls.int_running_count), 0) FROM layer_limit ll2
            JOIN layer_stat ls ON ls.pk_layer = ll2.pk_layer
            WHERE ll2.pk_limit_record = lr.pk_limit_record)::bigint
    FROM layer_limit ll
    LEFT JOIN limit_record lr ON lr.pk_limit_record = ll.pk_limit_record
    WHERE ll.pk_layer = ANY($1::text[])
    ORDER BY ll.pk_layer, lr.str_name";

/// Limits attached to each layer (layer id → limits; absent = no layer_limit row).
fn read_limits(client: &mut Client, layer_ids: &[String]) -> Result<HashMap<String, Vec<LimitUse>>, String> {
    const CTX: &str = "read limits";
    let ids = layer_ids.to_vec();
    let rows = client.query(LIMITS_SQL, &[&ids]).map_err(db_err(CTX))?;
    let mut limits: HashMap<String, Vec<LimitUse>> = HashMap::new();
    for row in &rows {
        let read = || -> Result<(String, LimitUse), crate::db::DbError> {
            let layer: String = col(row, 0, CTX)?;
            let name: Option<String> = col(row, 1, CTX)?;
            let running = col::<Option<i64>>(row, 3, CTX)?.unwrap_or(0);
            Ok((layer, LimitUse { running: if name.is_some() { running } else { 0 }, name, max: col(row, 2, CTX)? }))
        };
        let (layer, limit) = read().map_err(|e| e.to_string())?;
        limits.entry(layer).or_default().push(limit);
    }
    Ok(limits)
}

// ------------------------------------------------------------------------------------------------
// Pure rules
// ------------------------------------------------------------------------------------------------

/// Reasons that block every layer of the job.
fn job_reasons(job: &JobRow, settings: &Settings, managed_mode: bool, total_waiting: i64) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if job.info.state != "PENDING" {
        reasons.push(Reason::JobNotPending { state: job.info.state.clone() });
    }
    if job.paused {
        reasons.push(Reason::JobPaused);
    }
    if !job.auto_book {
        reasons.push(Reason::AutoBookOff);
    }
    if !job.show_active {
        reasons.push(Reason::ShowInactive { show: job.info.show.clone() });
    }
    if managed_mode && !job.show_managed {
        reasons.push(Reason::ShowNotManaged { show: job.info.show.clone() });
    }
    if let Some(facility) = settings.facility.as_ref().filter(|f| **f != job.info.facility) {
        reasons.push(Reason::FacilityNotScheduled { job_facility: job.info.facility.clone(), scheduled: facility.clone() });
    }
    reasons.extend(job.missing.iter().map(|table| Reason::MissingRow { table: table.clone() }));
    if !job.point {
        reasons.push(Reason::NoPoint { dept: job.dept.clone(), show: job.info.show.clone() });
    }
    if job.stat_waiting <= 0 && total_waiting > 0 {
        let table = "job_stat".to_string();
        reasons.push(Reason::WaitingCountStale { table, count: job.stat_waiting, waiting_frames: total_waiting });
    }
    let folder = job.info.folder.clone();
    if job.folder_max_cores >= 0 && job.folder_cores >= job.folder_max_cores {
        reasons.push(Reason::FolderMaxCores { folder: folder.clone(), cores: job.folder_cores, max: job.folder_max_cores });
    }
    if job.folder_max_gpus >= 0 && job.folder_gpus >= job.folder_max_gpus {
        reasons.push(Reason::FolderMaxGpus { folder, gpus: job.folder_gpus, max: job.folder_max_gpus });
    }
    reasons
}

fn diagnose_layer(inputs: &Inputs, job_reasons: &[Reason], row: &LayerRow) -> LayerDiagnosis {
    let layer = &row.layer;
    let clusters: Vec<ClusterInfo> =
        inputs.clusters.iter().filter(|c| layer.tags.contains(&c.tag)).cloned().collect();
    let mut reasons: Vec<Reason> = job_reasons.to_vec();
    if row.waiting_frames <= 0 {
        reasons.push(Reason::NoWaitingFrames);
    } else if row.stat_waiting <= 0 {
        let table = "layer_stat".to_string();
        reasons.push(Reason::WaitingCountStale { table, count: row.stat_waiting, waiting_frames: row.waiting_frames });
    }
    let served: Vec<&String> = clusters.iter().filter(|c| c.excluded.is_none()).map(|c| &c.tag).collect();
    let carries = |h: &&ScopeHost, tags: &[&String]| h.tags.iter().any(|t| tags.contains(&t));
    let layer_tags: Vec<&String> = layer.tags.iter().collect();
    let tagged: Vec<&ScopeHost> = inputs.hosts.iter().filter(|h| carries(h, &layer_tags)).collect();
    let candidates: Vec<&ScopeHost> = tagged.iter().copied().filter(|h| carries(h, &served)).collect();
    let mut fitting = Vec::new();
    if tagged.is_empty() {
        reasons.push(Reason::NoHostWithTags { tags: layer.tags.clone(), elsewhere: row.tagged_anywhere });
    } else if candidates.is_empty() {
        let excluded = clusters.iter().filter(|c| c.excluded.is_some()).map(|c| c.name.clone()).collect();
        reasons.push(Reason::NoCluster { tags: layer.tags.clone(), excluded });
    } else {
        fitting = host_reasons(inputs, layer, &candidates, &mut reasons);
    }
    reasons.extend(cap_reasons(inputs.job, row, inputs.limits.get(&layer.id)));
    if row.frames_checked > 0 && row.unlaunchable.len() as i64 == row.frames_checked {
        reasons.push(Reason::OnlyUnlaunchableFrames { count: row.frames_checked });
    }
    reasons.sort_by_key(Reason::rank);
    LayerDiagnosis {
        id: layer.id.clone(),
        name: layer.name.clone(),
        waiting_frames: row.waiting_frames,
        tags: layer.tags.clone(),
        cores_min: layer.cores_min,
        threadable: layer.threadable,
        mem_min: layer.mem_min,
        gpus_min: layer.gpus_min,
        gpu_mem_min: layer.gpu_mem_min,
        clusters,
        hosts_checked: candidates.len(),
        hosts_fitting: fitting.len(),
        fitting_hosts: fitting.into_iter().take(crate::limits::EXPLAIN_HOSTS_SHOWN_MAX).collect(),
        unlaunchable: row.unlaunchable.clone(),
        reasons,
    }
}

/// Core units one frame needs from a subscription at least.
fn frame_need_units(layer: &Layer) -> i64 {
    if layer.threadable && layer.cores_min > 0 {
        layer.cores_min.max(CORE_UNITS_PER_CORE)
    } else {
        CORE_UNITS_PER_CORE
    }
}

/// Evaluates the candidate hosts; pushes no_host_fits / subscription_burst; returns the names
/// of the hosts that fit now (subscription room included).
fn host_reasons(inputs: &Inputs, layer: &Layer, candidates: &[&ScopeHost], reasons: &mut Vec<Reason>) -> Vec<String> {
    let need = frame_need_units(layer);
    let room = |h: &ScopeHost| h.burst > 0 && h.burst - h.sub_cores >= need;
    let evaluated: Vec<(&ScopeHost, Vec<Miss>)> =
        candidates.iter().map(|h| (*h, evaluate_host(h, layer, inputs.job, inputs.settings))).collect();
    let fit: Vec<&ScopeHost> = evaluated.iter().filter(|(_, m)| m.is_empty()).map(|(h, _)| *h).collect();
    if fit.is_empty() {
        let nearest = nearest_miss(&evaluated);
        reasons.push(Reason::NoHostFits { hosts_checked: candidates.len(), nearest });
    }
    let all_full = candidates.iter().all(|h| !room(h));
    let fit_full = !fit.is_empty() && fit.iter().all(|h| !room(h));
    if all_full || fit_full {
        let over: &[&ScopeHost] = if all_full { candidates } else { &fit };
        reasons.push(Reason::SubscriptionBurst { need, allocs: alloc_rooms(over) });
    }
    fit.iter().filter(|h| room(h)).map(|h| h.host.name.clone()).collect()
}

fn alloc_rooms(hosts: &[&ScopeHost]) -> Vec<AllocRoom> {
    let mut allocs: BTreeMap<&str, AllocRoom> = BTreeMap::new();
    for h in hosts {
        allocs.entry(&h.alloc).or_insert_with(|| AllocRoom { alloc: h.alloc.clone(), burst: h.burst, cores: h.sub_cores });
    }
    allocs.into_values().collect()
}

/// Every rule `host` fails for a frame of `layer`: the cache's state rules, then the matcher's.
fn evaluate_host(h: &ScopeHost, layer: &Layer, job: &JobRow, settings: &Settings) -> Vec<Miss> {
    let mut misses = Vec::new();
    if h.lock_state != "OPEN" {
        misses.push(Miss::Locked { lock_state: h.lock_state.clone() });
    }
    if h.state != "UP" {
        misses.push(Miss::NotUp { state: h.state.clone() });
    }
    let threshold_secs = settings.cache.host_staleness_threshold.as_secs_f64();
    if h.ping_age_secs.is_none_or(|age| age > threshold_secs) {
        misses.push(Miss::StalePing { age_secs: h.ping_age_secs, threshold_secs });
    }
    let rules = rule_misses(&h.host, layer, job.info.os.as_deref());
    if rules.is_empty() {
        let remaining = (job.info.max_cores > 0).then(|| job.info.max_cores - job.info.cores);
        if let Err(rule) = matcher::reserve_cores(&h.host, layer, remaining, &settings.policy) {
            misses.push(Miss::Reservation { rule });
        }
    }
    misses.extend(rules);
    misses
}

/// All `check_host` failures: check, record, relax the failed rule on a copy, check again.
fn rule_misses(host: &Host, layer: &Layer, job_os: Option<&str>) -> Vec<Miss> {
    let mut probe = host.clone();
    let mut misses = Vec::new();
    for _ in 0..8 {
        let Err(rule) = matcher::check_host(&probe, layer, job_os) else { break };
        misses.push(miss_of(rule, &probe, layer, job_os));
        if !relax(&mut probe, rule, layer, job_os) {
            break;
        }
    }
    misses
}

fn miss_of(rule: Reject, host: &Host, layer: &Layer, job_os: Option<&str>) -> Miss {
    match rule {
        Reject::Os => Miss::Os { host_os: host.os.clone(), job_os: job_os.unwrap_or_default().to_string() },
        Reject::ThreadMode => Miss::ThreadMode,
        Reject::Cores => Miss::Resource { rule, have: host.idle_whole_cores(), need: matcher::core_floor(layer, host) },
        Reject::Memory => Miss::Resource { rule, have: host.mem_idle, need: layer.mem_min },
        Reject::Gpus => Miss::Resource { rule, have: host.gpus_idle, need: layer.gpus_min },
        Reject::GpuMemory => Miss::Resource { rule, have: host.gpu_mem_idle, need: layer.gpu_mem_min },
        Reject::NoCores => Miss::Reservation { rule },
    }
}

/// Makes `probe` pass `rule`; false when it cannot (the loop then stops).
fn relax(probe: &mut Host, rule: Reject, layer: &Layer, job_os: Option<&str>) -> bool {
    match rule {
        Reject::Os => probe.os = job_os.unwrap_or_default().to_string(),
        Reject::ThreadMode => probe.thread_mode = ThreadMode::Auto,
        Reject::Cores => {
            let need = matcher::core_floor(layer, probe) * CORE_UNITS_PER_CORE;
            probe.cores_idle = probe.cores_idle.max(need);
            probe.cores_total = probe.cores_total.max(probe.cores_idle);
        }
        Reject::Memory => probe.mem_idle = layer.mem_min,
        Reject::Gpus => probe.gpus_idle = layer.gpus_min,
        Reject::GpuMemory => probe.gpu_mem_idle = layer.gpu_mem_min,
        Reject::NoCores => return false,
    }
    true
}

/// The host failing the fewest rules, then the smallest shortfall, then by name.
fn nearest_miss(evaluated: &[(&ScopeHost, Vec<Miss>)]) -> Option<NearMiss> {
    let key = |misses: &[Miss]| (misses.len(), misses.iter().map(Miss::distance).sum::<f64>());
    evaluated
        .iter()
        .filter(|(_, misses)| !misses.is_empty())
        .min_by(|a, b| {
            let (ka, kb) = (key(&a.1), key(&b.1));
            ka.0.cmp(&kb.0)
                .then(ka.1.partial_cmp(&kb.1).unwrap_or(std::cmp::Ordering::Equal))
                .then_with(|| a.0.host.name.cmp(&b.0.host.name))
        })
        .map(|(h, misses)| NearMiss { host: h.host.name.clone(), misses: misses.clone() })
}

/// Job caps (Cuebot's strict `<`, as the pass query), layer limits and the start-after gate.
fn cap_reasons(job: &JobRow, row: &LayerRow, limits: Option<&Vec<LimitUse>>) -> Vec<Reason> {
    let layer = &row.layer;
    let mut reasons = Vec::new();
    if layer.mem_min < 0 || layer.gpus_min < 0 || layer.gpu_mem_min < 0 {
        reasons.push(Reason::InvalidRequirements { mem_min: layer.mem_min, gpus_min: layer.gpus_min, gpu_mem_min: layer.gpu_mem_min });
    }
    if job.info.cores + layer.cores_min >= job.info.max_cores {
        reasons.push(Reason::JobMaxCores { cores: job.info.cores, frame_min: layer.cores_min, max: job.info.max_cores });
    }
    if job.gpus + layer.gpus_min >= job.max_gpus {
        reasons.push(Reason::JobMaxGpus { gpus: job.gpus, frame_min: layer.gpus_min, max: job.max_gpus });
    }
    if let Some(limits) = limits {
        let room = limits.iter().any(|l| l.name.is_some() && l.max.is_some_and(|max| l.running < max));
        if !room {
            reasons.push(Reason::LayerLimit { limits: limits.clone() });
        }
    }
    if let (Some(until), Some(in_secs)) = (&row.start_after, row.start_in_secs) {
        if in_secs > 0.0 {
            reasons.push(Reason::StartDelayed { until: until.clone(), in_secs });
        }
    }
    reasons
}

// ------------------------------------------------------------------------------------------------
// Rendering: text
// ------------------------------------------------------------------------------------------------

/// Core units as cores: `2`, `1.5`.
fn cores(units: i64) -> String {
    if units % CORE_UNITS_PER_CORE == 0 {
        (units / CORE_UNITS_PER_CORE).to_string()
    } else {
        format!("{:.2}", units as f64 / CORE_UNITS_PER_CORE as f64)
    }
}

/// `1 core`, `2 cores`, `1.5 cores`.
fn cores_n(units: i64) -> String {
    format!("{} {}", cores(units), if units == CORE_UNITS_PER_CORE { "core" } else { "cores" })
}

/// `1 host`, `2 hosts`: the count with the noun in the right number.
fn count_of(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// KiB as GiB with one decimal.
fn gib(kib: i64) -> String {
    format!("{:.1} GiB", kib as f64 / KIB_PER_GIB as f64)
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

/// One line describing a miss: what the host has against what the frame needs.
pub fn describe_miss(miss: &Miss) -> String {
    match miss {
        Miss::Locked { lock_state } => format!("locked ({lock_state})"),
        Miss::NotUp { state } => format!("not UP ({state})"),
        Miss::StalePing { age_secs: Some(age), threshold_secs } => {
            format!("stale ping (last report {age:.0} s ago, limit {threshold_secs:.0} s)")
        }
        Miss::StalePing { age_secs: None, .. } => "stale ping (never reported)".to_string(),
        Miss::Os { host_os, job_os } => format!("OS (host runs {host_os}, job needs {job_os})"),
        Miss::ThreadMode => "thread mode (ALL-mode host, layer not threadable)".to_string(),
        Miss::Resource { rule: Reject::Cores, have, need } => format!("cores ({have} idle, needs {need})"),
        Miss::Resource { rule: Reject::Memory, have, need } => format!("memory ({} idle, needs {})", gib(*have), gib(*need)),
        Miss::Resource { rule: Reject::GpuMemory, have, need } => {
            format!("GPU memory ({} idle, needs {})", gib(*have), gib(*need))
        }
        Miss::Resource { rule, have, need } => format!("{} ({have} idle, needs {need})", rule.name()),
        Miss::Reservation { rule } => format!("reservation refused: {}", rule.name()),
    }
}

fn describe_limit(l: &LimitUse) -> String {
    match (&l.name, l.max) {
        (None, _) => "a layer_limit row without its limit_record".to_string(),
        (Some(name), Some(max)) => format!("{name} {}/{max} running", l.running),
        (Some(name), None) => format!("{name} has no maximum (NULL blocks it)"),
    }
}

/// One line explaining a reason.
pub fn describe(reason: &Reason) -> String {
    match reason {
        Reason::NoWaitingFrames => "the layer has no WAITING frame".into(),
        Reason::JobNotPending { state } => format!("the job is {state}, not PENDING"),
        Reason::JobPaused => "the job is paused".into(),
        Reason::AutoBookOff => "the job has auto-booking off (b_auto_book = false)".into(),
        Reason::ShowInactive { show } => format!("show {show} is not active"),
        Reason::ShowNotManaged { show } => format!("show {show} is not scheduler-managed (b_scheduler_managed = false)"),
        Reason::FacilityNotScheduled { job_facility, scheduled } => {
            format!("the job is in facility {job_facility}; this scheduler schedules facility {scheduled}")
        }
        Reason::MissingRow { table } => format!("the job has no {table} row, which hides it from dispatch"),
        Reason::NoPoint { dept, show } => format!("no point row for department {dept} in show {show}"),
        Reason::WaitingCountStale { table, count, waiting_frames } => {
            format!("{table}.int_waiting_count is {count} but {} WAITING", count_of(*waiting_frames, "frame is", "frames are"))
        }
        Reason::NoHostWithTags { tags, elsewhere } => format!(
            "no host carries its tags ({}) in the job's facility on an allocation the show subscribes to \
             ({} them elsewhere)",
            list_or_none(tags),
            count_of(*elsewhere, "host carries", "hosts carry")
        ),
        Reason::NoCluster { tags, excluded } => format!(
            "hosts carry its tags ({}) but no cluster of this scheduler serves them (excluded: {})",
            list_or_none(tags),
            list_or_none(excluded)
        ),
        _ => describe_capacity(reason),
    }
}

fn describe_capacity(reason: &Reason) -> String {
    match reason {
        Reason::NoHostFits { hosts_checked, nearest } => {
            let near = match nearest {
                Some(n) => {
                    let misses: Vec<String> = n.misses.iter().map(describe_miss).collect();
                    format!("; nearest: {} fails on {}", n.host, misses.join(", "))
                }
                None => String::new(),
            };
            format!("{} its tags but none fits a frame{near}", count_of(*hosts_checked as i64, "host carries", "hosts carry"))
        }
        Reason::SubscriptionBurst { need, allocs } => {
            let allocs: Vec<String> = allocs
                .iter()
                .map(|a| if a.burst <= 0 { format!("{} burst 0 (frozen)", a.alloc) } else {
                    format!("{} {}/{} cores booked", a.alloc, cores(a.cores), cores(a.burst))
                })
                .collect();
            format!("subscription burst reached (a frame needs {}): {}", cores_n(*need), allocs.join(", "))
        }
        Reason::FolderMaxCores { folder, cores: c, max } => {
            format!("folder {folder} at its max cores ({} of {})", cores(*c), cores(*max))
        }
        Reason::FolderMaxGpus { folder, gpus, max } => format!("folder {folder} at its max GPUs ({gpus} of {max})"),
        Reason::JobMaxCores { cores: c, frame_min, max } => format!(
            "job max cores reached: {} in use + {} per frame is not below the max {}",
            cores(*c),
            cores(*frame_min),
            cores(*max)
        ),
        Reason::JobMaxGpus { gpus, frame_min, max } => {
            format!("job max GPUs reached: {gpus} in use + {frame_min} per frame is not below the max {max}")
        }
        Reason::LayerLimit { limits } => {
            let limits: Vec<String> = limits.iter().map(describe_limit).collect();
            format!("layer limit reached, no limit has room: {}", limits.join("; "))
        }
        Reason::StartDelayed { until, in_secs } => format!("start delayed until {until} ({in_secs:.0} s from now)"),
        Reason::InvalidRequirements { mem_min, gpus_min, gpu_mem_min } => format!(
            "the layer asks for negative resources (memory {mem_min} KB, GPUs {gpus_min}, GPU memory {gpu_mem_min} KB): never booked"
        ),
        Reason::OnlyUnlaunchableFrames { count } => {
            format!("all {count} waiting frames have a name or number the layer's range cannot launch")
        }
        other => other.name().to_string(),
    }
}

fn layer_needs(l: &LayerDiagnosis) -> String {
    let cores_text = match l.cores_min {
        0 => "the whole host".to_string(),
        m if m < 0 => format!("all cores but {}", cores(-m)),
        m => cores_n(m),
    };
    let mut text = format!("{cores_text}{}, {}", if l.threadable { " (threadable)" } else { "" }, gib(l.mem_min));
    if l.gpus_min > 0 || l.gpu_mem_min > 0 {
        text.push_str(&format!(", {} GPUs, {} GPU memory", l.gpus_min, gib(l.gpu_mem_min)));
    }
    text
}

fn render_layer_text(out: &mut String, l: &LayerDiagnosis) {
    out.push_str(&format!(
        "\nlayer {}: {}; tags {}; needs {}\n",
        l.name,
        count_of(l.waiting_frames, "waiting frame", "waiting frames"),
        list_or_none(&l.tags),
        layer_needs(l)
    ));
    let clusters: Vec<String> = l
        .clusters
        .iter()
        .map(|c| match &c.excluded {
            Some(why) => format!("{} ({}, {why})", c.name, c.kind.label()),
            None => format!("{} ({})", c.name, c.kind.label()),
        })
        .collect();
    out.push_str(&format!("  clusters: {}\n", list_or_none(&clusters)));
    let more = l.hosts_fitting.saturating_sub(l.fitting_hosts.len());
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    out.push_str(&format!(
        "  hosts: {} checked, {} fit now{}{}\n",
        l.hosts_checked,
        l.hosts_fitting,
        if l.fitting_hosts.is_empty() { String::new() } else { format!(": {}", l.fitting_hosts.join(", ")) },
        more
    ));
    if !l.unlaunchable.is_empty() {
        let shown: Vec<String> = l.unlaunchable.iter().take(3).map(|(n, why)| format!("{n} ({why})")).collect();
        out.push_str(&format!(
            "  unlaunchable frames, skipped and never booked: {}, e.g. {}\n",
            l.unlaunchable.len(),
            shown.join("; ")
        ));
    }
    if l.dispatchable() {
        out.push_str("  DISPATCHABLE: nothing blocks it\n");
        return;
    }
    out.push_str("  NOT DISPATCHING:\n");
    for reason in &l.reasons {
        out.push_str(&format!("    - {}: {}\n", reason.name(), describe(reason)));
    }
}

/// The human-readable report.
pub fn render_text(d: &Diagnosis) -> String {
    let j = &d.job;
    let mut out = format!(
        "job {} [{}] show {}, facility {}, folder {}, priority {}, cores {} of max {}\n",
        j.name,
        j.state,
        j.show,
        j.facility,
        j.folder,
        j.priority,
        cores(j.cores),
        cores(j.max_cores)
    );
    if d.layers.is_empty() {
        out.push_str("no layer has WAITING frames: nothing to dispatch\n");
        for reason in &d.job_reasons {
            out.push_str(&format!("  - {}: {}\n", reason.name(), describe(reason)));
        }
    }
    for layer in &d.layers {
        render_layer_text(&mut out, layer);
    }
    if d.layers_without_waiting > 0 {
        let layers = count_of(d.layers_without_waiting as i64, "more layer has", "more layers have");
        out.push_str(&format!("\n{layers} no WAITING frame\n"));
    }
    if let Some(p) = &d.policy {
        policy::render_text(&mut out, p);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Rendering: JSON (a tiny writer; no dependency)
// ------------------------------------------------------------------------------------------------

/// A JSON string literal with every character JSON requires escaped.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".to_string()
    }
}

fn json_array(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

fn json_strings(items: &[String]) -> String {
    json_array(items.iter().map(|s| json_string(s)))
}

/// An object under construction: fields in insertion order, values already JSON.
struct Obj(Vec<String>);

impl Obj {
    fn new() -> Obj {
        Obj(Vec::new())
    }
    fn raw(mut self, key: &str, value: String) -> Obj {
        self.0.push(format!("{}:{value}", json_string(key)));
        self
    }
    fn str(self, key: &str, value: &str) -> Obj {
        self.raw(key, json_string(value))
    }
    fn int(self, key: &str, value: i64) -> Obj {
        self.raw(key, value.to_string())
    }
    fn opt_str(self, key: &str, value: Option<&str>) -> Obj {
        self.raw(key, value.map_or_else(|| "null".to_string(), json_string))
    }
    fn opt_int(self, key: &str, value: Option<i64>) -> Obj {
        self.raw(key, value.map_or_else(|| "null".to_string(), |v| v.to_string()))
    }
    fn done(self) -> String {
        format!("{{{}}}", self.0.join(","))
    }
}

fn miss_json(miss: &Miss) -> String {
    let obj = Obj::new().str("miss", miss.name());
    let obj = match miss {
        Miss::Locked { lock_state } => obj.str("lock_state", lock_state),
        Miss::NotUp { state } => obj.str("state", state),
        Miss::StalePing { age_secs, threshold_secs } => obj
            .raw("age_secs", age_secs.map_or_else(|| "null".to_string(), json_number))
            .raw("threshold_secs", json_number(*threshold_secs)),
        Miss::Os { host_os, job_os } => obj.str("host_os", host_os).str("job_os", job_os),
        Miss::ThreadMode => obj,
        Miss::Resource { have, need, .. } => obj.str("stage", "check").int("have", *have).int("need", *need),
        Miss::Reservation { .. } => obj.str("stage", "reserve"),
    };
    obj.str("message", &describe_miss(miss)).done()
}

fn reason_fields(obj: Obj, reason: &Reason) -> Obj {
    match reason {
        Reason::JobNotPending { state } => obj.str("state", state),
        Reason::ShowInactive { show } | Reason::ShowNotManaged { show } => obj.str("show", show),
        Reason::FacilityNotScheduled { job_facility, scheduled } => {
            obj.str("job_facility", job_facility).str("scheduled_facility", scheduled)
        }
        Reason::MissingRow { table } => obj.str("table", table),
        Reason::NoPoint { dept, show } => obj.str("dept", dept).str("show", show),
        Reason::WaitingCountStale { table, count, waiting_frames } => {
            obj.str("table", table).int("count", *count).int("waiting_frames", *waiting_frames)
        }
        Reason::NoHostWithTags { tags, elsewhere } => obj.raw("tags", json_strings(tags)).int("hosts_elsewhere", *elsewhere),
        Reason::NoCluster { tags, excluded } => obj.raw("tags", json_strings(tags)).raw("excluded", json_strings(excluded)),
        Reason::NoHostFits { hosts_checked, nearest } => {
            let near = nearest.as_ref().map_or_else(
                || "null".to_string(),
                |n| Obj::new().str("host", &n.host).raw("misses", json_array(n.misses.iter().map(miss_json))).done(),
            );
            obj.int("hosts_checked", *hosts_checked as i64).raw("nearest", near)
        }
        Reason::SubscriptionBurst { need, allocs } => {
            let allocs = allocs.iter().map(|a| Obj::new().str("alloc", &a.alloc).int("burst", a.burst).int("cores", a.cores).done());
            obj.int("need_cores", *need).raw("allocations", json_array(allocs))
        }
        Reason::FolderMaxCores { folder, cores, max } => obj.str("folder", folder).int("cores", *cores).int("max_cores", *max),
        Reason::FolderMaxGpus { folder, gpus, max } => obj.str("folder", folder).int("gpus", *gpus).int("max_gpus", *max),
        Reason::JobMaxCores { cores, frame_min, max } => {
            obj.int("cores", *cores).int("frame_min", *frame_min).int("max_cores", *max)
        }
        Reason::JobMaxGpus { gpus, frame_min, max } => obj.int("gpus", *gpus).int("frame_min", *frame_min).int("max_gpus", *max),
        Reason::LayerLimit { limits } => {
            let limits =
                limits.iter().map(|l| Obj::new().opt_str("name", l.name.as_deref()).int("running", l.running).opt_int("max", l.max).done());
            obj.raw("limits", json_array(limits))
        }
        Reason::StartDelayed { until, in_secs } => obj.str("until", until).raw("in_secs", json_number(*in_secs)),
        Reason::InvalidRequirements { mem_min, gpus_min, gpu_mem_min } => {
            obj.int("mem_min", *mem_min).int("gpus_min", *gpus_min).int("gpu_mem_min", *gpu_mem_min)
        }
        Reason::OnlyUnlaunchableFrames { count } => obj.int("count", *count),
        Reason::NoWaitingFrames | Reason::JobPaused | Reason::AutoBookOff => obj,
    }
}

fn reason_json(reason: &Reason) -> String {
    let obj = Obj::new().str("reason", reason.name());
    reason_fields(obj, reason).str("message", &describe(reason)).done()
}

fn layer_json(l: &LayerDiagnosis) -> String {
    let clusters = l.clusters.iter().map(|c| {
        Obj::new().str("cluster", &c.name).str("kind", c.kind.label()).opt_str("excluded", c.excluded.as_deref()).done()
    });
    Obj::new()
        .str("name", &l.name)
        .str("id", &l.id)
        .int("waiting_frames", l.waiting_frames)
        .raw("tags", json_strings(&l.tags))
        .int("cores_min", l.cores_min)
        .raw("threadable", l.threadable.to_string())
        .int("mem_min_kib", l.mem_min)
        .int("gpus_min", l.gpus_min)
        .int("gpu_mem_min_kib", l.gpu_mem_min)
        .raw("clusters", json_array(clusters))
        .int("hosts_checked", l.hosts_checked as i64)
        .int("hosts_fitting", l.hosts_fitting as i64)
        .raw("fitting_hosts", json_strings(&l.fitting_hosts))
        .raw("unlaunchable_frames", json_strings(&l.unlaunchable.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()))
        .raw("dispatchable", l.dispatchable().to_string())
        .raw("reasons", json_array(l.reasons.iter().map(reason_json)))
        .done()
}

/// The machine-readable report: one JSON document (and a newline).
pub fn render_json(d: &Diagnosis) -> String {
    let j = &d.job;
    let job = Obj::new()
        .str("id", &j.id)
        .str("name", &j.name)
        .str("state", &j.state)
        .str("show", &j.show)
        .str("facility", &j.facility)
        .str("folder", &j.folder)
        .int("priority", j.priority)
        .int("cores", j.cores)
        .int("max_cores", j.max_cores)
        .opt_str("os", j.os.as_deref())
        .done();
    let doc = Obj::new()
        .raw("job", job)
        .raw("job_reasons", json_array(d.job_reasons.iter().map(reason_json)))
        .raw("layers", json_array(d.layers.iter().map(layer_json)))
        .int("layers_without_waiting_frames", d.layers_without_waiting as i64)
        .raw("policy", d.policy.as_ref().map_or_else(|| "null".to_string(), policy::json))
        .done();
    format!("{doc}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, reasons: Vec<Reason>) -> LayerDiagnosis {
        LayerDiagnosis {
            id: format!("id-{name}"),
            name: name.into(),
            waiting_frames: 3,
            tags: vec!["general".into()],
            cores_min: 100,
            threadable: false,
            mem_min: 2 * KIB_PER_GIB,
            gpus_min: 0,
            gpu_mem_min: 0,
            clusters: vec![ClusterInfo {
                name: "lax:showa:general".into(),
                tag: "general".into(),
                kind: ClusterKind::Alloc,
                excluded: None,
            }],
            hosts_checked: 2,
            hosts_fitting: if reasons.is_empty() { 2 } else { 0 },
            fitting_hosts: if reasons.is_empty() { vec!["h1".into(), "h2".into()] } else { vec![] },
            unlaunchable: vec![],
            reasons,
        }
    }

    fn diagnosis(layers: Vec<LayerDiagnosis>) -> Diagnosis {
        Diagnosis {
            job: JobInfo {
                id: "J".into(),
                name: "job \"quoted\"\n".into(),
                state: "PENDING".into(),
                show: "showa".into(),
                facility: "lax".into(),
                folder: "showa".into(),
                priority: 1,
                cores: 0,
                max_cores: 10_000,
                os: None,
            },
            job_reasons: vec![],
            layers,
            layers_without_waiting: 0,
            policy: None,
        }
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
        assert_eq!(json_number(f64::NAN), "null");
    }

    #[test]
    fn text_and_json_show_reasons_in_order() {
        let near = NearMiss {
            host: "h1".into(),
            misses: vec![Miss::Resource { rule: Reject::Memory, have: KIB_PER_GIB, need: 2 * KIB_PER_GIB }],
        };
        let blocked = layer("render", vec![Reason::JobPaused, Reason::NoHostFits { hosts_checked: 2, nearest: Some(near) }]);
        let d = diagnosis(vec![blocked, layer("comp", vec![])]);
        let text = render_text(&d);
        let paused = text.find("job_paused").expect("paused");
        let fits = text.find("no_host_fits").expect("fits");
        assert!(paused < fits, "{text}");
        assert!(text.contains("nearest: h1 fails on memory (1.0 GiB idle, needs 2.0 GiB)"), "{text}");
        assert!(text.contains("DISPATCHABLE"), "{text}");
        let json = render_json(&d);
        assert!(json.contains("\"name\":\"job \\\"quoted\\\"\\n\""), "{json}");
        assert!(json.contains("\"reason\":\"no_host_fits\""), "{json}");
        assert!(json.contains("\"miss\":\"memory\""), "{json}");
        assert!(json.contains("\"dispatchable\":true"), "{json}");
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }

    #[test]
    fn reasons_sort_most_fundamental_first() {
        let mut reasons = [
            Reason::StartDelayed { until: "T".into(), in_secs: 5.0 },
            Reason::SubscriptionBurst { need: 100, allocs: vec![] },
            Reason::JobPaused,
        ];
        reasons.sort_by_key(Reason::rank);
        let names: Vec<&str> = reasons.iter().map(Reason::name).collect();
        assert_eq!(names, ["job_paused", "subscription_burst", "start_delayed"]);
    }

    #[test]
    fn rule_misses_lists_every_failed_rule() {
        let host = Host {
            id: Arc::from("h"),
            name: "h".into(),
            alloc_id: "a".into(),
            os: "linux".into(),
            thread_mode: ThreadMode::All,
            cores_total: 800,
            cores_idle: 800,
            mem_total: 8 * KIB_PER_GIB,
            mem_idle: 8 * KIB_PER_GIB,
            gpus_total: 0,
            gpus_idle: 0,
            gpu_mem_total: 0,
            gpu_mem_idle: 0,
        };
        let l = Layer {
            id: "l".into(),
            name: "l".into(),
            command: String::new(),
            range: String::new(),
            chunk_size: 1,
            dispatch_order: 1,
            tags: vec![],
            cores_min: 100,
            cores_max: 0,
            threadable: false,
            mem_min: 16 * KIB_PER_GIB,
            gpus_min: 1,
            gpu_mem_min: 0,
            services: vec![],
            has_limits: false,
            env: vec![],
        };
        let names: Vec<&str> = rule_misses(&host, &l, Some("windows")).iter().map(Miss::name).collect();
        assert_eq!(names, ["os", "thread_mode", "memory", "gpus"]);
    }
}
