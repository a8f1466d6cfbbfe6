//! Test support: a fresh database per test (project or real Cuebot schema), a small standard
//! farm, pipeline settings with short timers, and waiting helpers.

use cue_scheduler::matching::clusters::Selection;
use cue_scheduler::db::DbSettings;
use cue_scheduler::matching::host_cache::{CacheSettings, Strategy};
use cue_scheduler::matching::matcher::MatchPolicy;
use cue_scheduler::config::settings::{Settings, Tunables};
use cue_scheduler::sim::farm::{self, Farm, HostSpec, JobSpec, LayerSpec, Server};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    Project,
    Real,
}

/// `../shared/cuebot/<file>` relative to the crate, if present (it is in CI).
pub fn shared_file(file: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/cuebot").join(file);
    path.exists().then_some(path)
}

pub fn invariants_sql() -> String {
    match shared_file("invariants.sql") {
        Some(path) => std::fs::read_to_string(path).expect("read invariants.sql"),
        None => include_str!("../sql/invariants.sql").to_string(),
    }
}

pub struct TestDb {
    pub server: Server,
    pub name: String,
}

impl TestDb {
    /// A new empty database named after the test, with the schema loaded. `None` when the
    /// real schema was asked for and is not available.
    pub fn new(test: &str, schema: Schema) -> Option<TestDb> {
        let server = Server::from_env().expect("DATABASE_URL");
        let sql = match schema {
            Schema::Project => farm::PROJECT_SCHEMA.to_string(),
            Schema::Real => std::fs::read_to_string(shared_file("schema.sql")?).expect("read schema.sql"),
        };
        let suffix = if schema == Schema::Real { "real" } else { "proj" };
        let name = format!("cstest_{test}_{suffix}");
        server.recreate_database(&name).expect("create test database");
        farm::load_schema(&server, &name, &sql).expect("load schema");
        Some(TestDb { server, name })
    }

    pub fn farm(&self) -> Farm {
        Farm::new(self.server.connect(&self.name).expect("connect"))
    }

    pub fn client(&self) -> postgres::Client {
        self.server.connect(&self.name).expect("connect")
    }

    pub fn db_settings(&self) -> DbSettings {
        DbSettings {
            connection_string: self.server.connection_string(&self.name),
            display: self.name.clone(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            instance: String::new(),
        }
    }

    pub fn violations(&self) -> Vec<String> {
        self.farm().violations(&invariants_sql()).expect("run invariants")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = self.server.drop_database(&self.name);
        }
    }
}

/// Pipeline settings for tests: short sleeps, small batches, no HTTP server.
pub fn settings(db: &TestDb, rqd_port: u16) -> Settings {
    Settings {
        db: db.db_settings(),
        facility: Some("lax".into()),
        tunables: Tunables {
            selection: Selection { manual_tags_chunk_size: 50, hostname_tags_chunk_size: 50, ..Selection::default() },
            cluster_empty_sleep: Duration::from_millis(200),
            cluster_saturated_sleep: Duration::from_millis(200),
            cluster_reload_interval: Duration::from_secs(120),
            active_scan_interval: Duration::from_millis(200),
            monitoring_interval: Duration::from_millis(500),
            clean_up_interval: Duration::from_secs(300),
            monitor_interval: Duration::from_secs(60),
        },
        frames_per_layer: 20,
        jobs_per_pass: 20,
        attempts_per_layer: 10,
        job_back_off: Duration::from_secs(300),
        strategy: Strategy::Saturation { core_ascending: true, memory_ascending: false },
        policy: MatchPolicy { memory_stranded_threshold_kib: 2 * 1_048_576, selfish_services: vec![] },
        scheduling: cue_scheduler::matching::policy::PolicySettings::default(),
        cache: CacheSettings {
            memory_key_divisor_kib: 2 * 1_048_576,
            checkout_timeout: Duration::from_secs(12),
            group_idle_timeout: Duration::from_secs(3 * 3600),
            host_staleness_threshold: Duration::from_secs(120),
        },
        soft_memory_multiplier: 1.6,
        hard_memory_multiplier: 2.0,
        mem_reserved_min_kib: 256_000,
        update_stat_on_book: false,
        empty_job_cycles_before_quitting: None,
        dry_run: false,
        rqd_port,
        rqd_timeout: Duration::from_secs(2),
        dispatch_threads: 4,
        matcher_threads: 2,
        cluster_buffer_size: 2,
        metrics_port: None,
        metrics_address: "127.0.0.1".into(),
        shutdown_drain_timeout: Duration::from_secs(5),
        cuebot_booking_off: false,
        accounting: cue_scheduler::config::AccountingConfig::default(),
        recovery: cue_scheduler::config::settings::RecoverySettings::default(),
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Waits until `condition` has held for `quiet` without interruption (the farm has settled).
pub fn wait_settled(timeout: Duration, quiet: Duration, mut value: impl FnMut() -> i64) -> i64 {
    let deadline = Instant::now() + timeout;
    let mut last = value();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = value();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

pub fn count(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).expect(sql).get::<_, i64>(0)
}

/// Ids of the standard organisation rows.
pub struct Org {
    pub facility_id: String,
    pub dept_id: String,
    pub show_id: String,
    pub folder_id: String,
    pub general_alloc: String,
    #[allow(dead_code)] // GPU-allocation scenarios use it
    pub gpu_alloc: String,
}

/// facility lax, show "showa" (managed), allocations lax.general (tag general) and lax.gpu
/// (tag gpu), each subscribed with the given burst (core units).
pub fn org(farm: &mut Farm, burst: i64) -> Org {
    let facility_id = farm.facility("lax").expect("facility");
    let dept_id = farm.dept("Lighting").expect("dept");
    let show_id = farm.show("showa", true).expect("show");
    let folder_id = farm.folder(&show_id, &dept_id, "showa").expect("folder");
    let general_alloc = farm.alloc(&facility_id, "lax.general", "general").expect("alloc");
    let gpu_alloc = farm.alloc(&facility_id, "lax.gpu", "gpu").expect("alloc");
    farm.subscription(&show_id, &general_alloc, burst, burst).expect("subscription");
    farm.subscription(&show_id, &gpu_alloc, burst, burst).expect("subscription");
    Org { facility_id, dept_id, show_id, folder_id, general_alloc, gpu_alloc }
}

pub fn job(org: &Org, name: &str, layers: Vec<LayerSpec>) -> JobSpec {
    JobSpec {
        name: name.into(),
        show_id: org.show_id.clone(),
        show_name: "showa".into(),
        facility_id: org.facility_id.clone(),
        folder_id: org.folder_id.clone(),
        dept_id: org.dept_id.clone(),
        user: "alice".into(),
        log_dir: "/tmp/cue-logs".into(),
        priority: 1,
        max_cores: 100_000,
        paused: false,
        os: None,
        uid: None,
        env: vec![],
        layers,
    }
}

pub fn host(name: &str, alloc: &str, tag: &str, cores: i64, mem_gib: i64) -> HostSpec {
    HostSpec::new(name, alloc, tag, cores, mem_gib)
}
