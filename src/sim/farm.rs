//! Builds farms in a Cuebot database the way Cuebot leaves them: organisation rows, hosts with
//! their stats and tags, and launched jobs whose WAITING frames carry the counts Cuebot's
//! `activateJob` writes by hand. Bulk inserts use `unnest` so the benchmark farms (10,000 hosts,
//! 100,000 frames) seed in seconds. Used by the tests, the demo and the benchmarks.

use crate::rqd::frameset::FrameSet;
use postgres::{Client, NoTls};
use std::collections::HashMap;

pub type SeedResult<T> = Result<T, String>;

fn sql_err(context: &str) -> impl Fn(postgres::Error) -> String + '_ {
    move |e| match e.as_db_error() {
        Some(db) => format!("{context}: {} ({})", db.message(), db.code().code()),
        None => format!("{context}: {e}"),
    }
}

/// Where the test/demo/bench PostgreSQL is: `DATABASE_URL` (URL or key=value), else
/// 127.0.0.1:5432 as postgres.
#[derive(Clone, Debug)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
}

impl Server {
    pub fn from_env() -> SeedResult<Server> {
        let text = std::env::var("DATABASE_URL").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into());
        let config: postgres::Config = text.parse().map_err(|e| format!("DATABASE_URL: {e}"))?;
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".into(),
        };
        Ok(Server {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_string(),
            password: config.get_password().map(|p| String::from_utf8_lossy(p).to_string()),
        })
    }

    /// libpq key=value connection string for one database.
    pub fn connection_string(&self, dbname: &str) -> String {
        let mut s = format!("host={} port={} user={} dbname={}", self.host, self.port, self.user, dbname);
        if let Some(password) = &self.password {
            s.push_str(&format!(" password='{}'", password.replace('\\', "\\\\").replace('\'', "\\'")));
        }
        s
    }

    pub fn connect(&self, dbname: &str) -> SeedResult<Client> {
        Client::connect(&self.connection_string(dbname), NoTls).map_err(|e| format!("connect to {dbname} on {}:{}: {e}", self.host, self.port))
    }

    /// Drops (if present) and creates an empty database.
    pub fn recreate_database(&self, name: &str) -> SeedResult<()> {
        let mut admin = self.connect("postgres")?;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).map_err(sql_err("drop database"))?;
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).map_err(sql_err("create database"))?;
        Ok(())
    }

    pub fn drop_database(&self, name: &str) -> SeedResult<()> {
        let mut admin = self.connect("postgres")?;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).map_err(sql_err("drop database"))
    }
}

/// The project's own test schema.
pub const PROJECT_SCHEMA: &str = include_str!("../../tests/sql/schema.sql");

/// Loads a schema file (psql meta-commands such as `\restrict` are skipped) on its own
/// connection, since a pg_dump file empties the search_path of the session that loads it.
pub fn load_schema(server: &Server, dbname: &str, sql: &str) -> SeedResult<()> {
    let cleaned: String = sql.lines().filter(|l| !l.starts_with('\\')).map(|l| format!("{l}\n")).collect();
    let mut client = server.connect(dbname)?;
    client.batch_execute(&cleaned).map_err(sql_err("load schema"))
}

#[derive(Clone, Debug)]
pub struct HostSpec {
    pub name: String,
    pub alloc_id: String,
    pub cores: i64,
    pub mem_kib: i64,
    pub gpus: i64,
    pub gpu_mem_kib: i64,
    pub thread_mode: i32,
    pub os: String,
    pub lock_state: String,
    pub state: String,
    /// (tag, type): the ALLOC tag included.
    pub tags: Vec<(String, String)>,
}

impl HostSpec {
    pub fn new(name: &str, alloc_id: &str, alloc_tag: &str, cores: i64, mem_gib: i64) -> HostSpec {
        HostSpec {
            name: name.to_string(),
            alloc_id: alloc_id.to_string(),
            cores,
            // Cuebot's booking memory for a 64bit host: ceil(GB) GB − 512 MB.
            mem_kib: mem_gib * 1_048_576 - 524_288,
            gpus: 0,
            gpu_mem_kib: 0,
            thread_mode: 0,
            os: "linux".into(),
            lock_state: "OPEN".into(),
            state: "UP".into(),
            tags: vec![(alloc_tag.to_string(), "ALLOC".to_string())],
        }
    }

    pub fn tag(mut self, tag: &str, tag_type: &str) -> HostSpec {
        self.tags.push((tag.to_string(), tag_type.to_string()));
        self
    }
}

#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub name: String,
    pub command: String,
    pub range: String,
    pub chunk: i64,
    pub tags: String,
    pub cores_min: i64,
    pub cores_max: i64,
    pub threadable: bool,
    pub mem_min_kib: i64,
    pub gpus_min: i64,
    pub gpu_mem_min_kib: i64,
    pub services: String,
    /// Seconds from now before which no frame may start (`layer.ts_start_after`).
    pub start_after_secs: Option<f64>,
}

impl LayerSpec {
    pub fn new(name: &str, range: &str, tags: &str) -> LayerSpec {
        LayerSpec {
            name: name.to_string(),
            command: "echo #JOB# #LAYER# #FRAME# #FRAMESPEC#".into(),
            range: range.to_string(),
            chunk: 1,
            tags: tags.to_string(),
            cores_min: 100,
            cores_max: 0,
            threadable: false,
            mem_min_kib: 2 * 1_048_576,
            gpus_min: 0,
            gpu_mem_min_kib: 0,
            services: "default".into(),
            start_after_secs: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct JobSpec {
    pub name: String,
    pub show_id: String,
    pub show_name: String,
    pub facility_id: String,
    pub folder_id: String,
    pub dept_id: String,
    pub user: String,
    pub log_dir: String,
    pub priority: i32,
    /// `job_resource.int_max_cores` in core units.
    pub max_cores: i32,
    pub paused: bool,
    pub os: Option<String>,
    pub uid: Option<i64>,
    pub env: Vec<(String, String)>,
    pub layers: Vec<LayerSpec>,
}

#[derive(Clone, Debug, Default)]
pub struct JobIds {
    pub job_id: String,
    /// layer name → id
    pub layers: HashMap<String, String>,
    /// frame name → id
    pub frames: HashMap<String, String>,
}

/// A connection that writes farm rows.
pub struct Farm {
    pub client: Client,
}

impl Farm {
    pub fn new(client: Client) -> Farm {
        Farm { client }
    }

    fn insert_returning_id(&mut self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)], what: &str) -> SeedResult<String> {
        let row = self.client.query_one(sql, params).map_err(sql_err(what))?;
        row.try_get(0).map_err(|e| format!("{what}: {e}"))
    }

    pub fn facility(&mut self, name: &str) -> SeedResult<String> {
        self.insert_returning_id(
            "INSERT INTO facility (pk_facility, str_name, b_default) VALUES (gen_random_uuid()::text, $1, false) RETURNING pk_facility::text",
            &[&name],
            "insert facility",
        )
    }

    pub fn dept(&mut self, name: &str) -> SeedResult<String> {
        self.insert_returning_id(
            "INSERT INTO dept (pk_dept, str_name, b_default) VALUES (gen_random_uuid()::text, $1, false) RETURNING pk_dept::text",
            &[&name],
            "insert dept",
        )
    }

    /// A show; `managed` sets `b_scheduler_managed` (the column exists in both schemas).
    pub fn show(&mut self, name: &str, managed: bool) -> SeedResult<String> {
        let id = self.insert_returning_id(
            "INSERT INTO show (pk_show, str_name, b_scheduler_managed) VALUES (gen_random_uuid()::text, $1, $2) RETURNING pk_show::text",
            &[&name, &managed],
            "insert show",
        )?;
        self.client
            .execute("INSERT INTO show_stats (pk_show) VALUES ($1)", &[&id])
            .map_err(sql_err("insert show_stats"))?;
        Ok(id)
    }

    pub fn alloc(&mut self, facility_id: &str, name: &str, tag: &str) -> SeedResult<String> {
        self.insert_returning_id(
            "INSERT INTO alloc (pk_alloc, str_name, str_tag, pk_facility) VALUES (gen_random_uuid()::text, $1, $2, $3) RETURNING pk_alloc::text",
            &[&name, &tag, &facility_id],
            "insert alloc",
        )
    }

    /// Size and burst in core units.
    pub fn subscription(&mut self, show_id: &str, alloc_id: &str, size: i64, burst: i64) -> SeedResult<String> {
        self.insert_returning_id(
            "INSERT INTO subscription (pk_subscription, pk_alloc, pk_show, int_size, int_burst) \
             VALUES (gen_random_uuid()::text, $1, $2, $3, $4) RETURNING pk_subscription::text",
            &[&alloc_id, &show_id, &size, &burst],
            "insert subscription",
        )
    }

    /// The show's root folder and the point row of (show, dept).
    pub fn folder(&mut self, show_id: &str, dept_id: &str, name: &str) -> SeedResult<String> {
        let id = self.insert_returning_id(
            "INSERT INTO folder (pk_folder, pk_show, pk_dept, str_name) VALUES (gen_random_uuid()::text, $1, $2, $3) RETURNING pk_folder::text",
            &[&show_id, &dept_id, &name],
            "insert folder",
        )?;
        self.client
            .execute(
                "INSERT INTO point (pk_point, pk_dept, pk_show) VALUES (gen_random_uuid()::text, $1, $2) ON CONFLICT DO NOTHING",
                &[&dept_id, &show_id],
            )
            .map_err(sql_err("insert point"))?;
        Ok(id)
    }

    /// Inserts hosts, their host_stat rows (fresh ping, free memory = total) and tags, in bulk.
    /// Returns host name → id.
    pub fn hosts(&mut self, hosts: &[HostSpec]) -> SeedResult<HashMap<String, String>> {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let allocs: Vec<&str> = hosts.iter().map(|h| h.alloc_id.as_str()).collect();
        let cores: Vec<i64> = hosts.iter().map(|h| h.cores * 100).collect();
        let mem: Vec<i64> = hosts.iter().map(|h| h.mem_kib).collect();
        let gpus: Vec<i64> = hosts.iter().map(|h| h.gpus).collect();
        let gpu_mem: Vec<i64> = hosts.iter().map(|h| h.gpu_mem_kib).collect();
        let modes: Vec<i32> = hosts.iter().map(|h| h.thread_mode).collect();
        let locks: Vec<&str> = hosts.iter().map(|h| h.lock_state.as_str()).collect();
        let tag_cache: Vec<String> = hosts.iter().map(|h| h.tags.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join(" ")).collect();
        let rows = self
            .client
            .query(
                "INSERT INTO host (pk_host, pk_alloc, str_name, str_fqdn, str_lock_state, int_cores, int_cores_idle,
                                   int_mem, int_mem_idle, int_gpus, int_gpus_idle, int_gpu_mem, int_gpu_mem_idle,
                                   int_thread_mode, str_tags)
                 SELECT gen_random_uuid()::text, a, n, n, l, c, c, m, m, g, g, gm, gm, t, s
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                             $7::bigint[], $8::int[], $9::text[]) AS x(n, a, l, c, m, g, gm, t, s)
                 RETURNING str_name::text, pk_host::text",
                &[&names, &allocs, &locks, &cores, &mem, &gpus, &gpu_mem, &modes, &tag_cache],
            )
            .map_err(sql_err("insert hosts"))?;
        let ids: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let host_ids: Vec<&str> = hosts.iter().map(|h| ids[&h.name].as_str()).collect();
        let totals: Vec<i64> = hosts.iter().map(|h| h.mem_kib + 524_288).collect();
        let states: Vec<&str> = hosts.iter().map(|h| h.state.as_str()).collect();
        let oses: Vec<&str> = hosts.iter().map(|h| h.os.as_str()).collect();
        self.client
            .execute(
                "INSERT INTO host_stat (pk_host_stat, pk_host, int_mem_total, int_mem_free, int_gpu_mem_total,
                                        int_gpu_mem_free, str_state, str_os, ts_ping)
                 SELECT gen_random_uuid()::text, h, t, t, g, g, s, o, now()
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) AS x(h, t, g, s, o)",
                &[&host_ids, &totals, &gpu_mem, &states, &oses],
            )
            .map_err(sql_err("insert host_stat"))?;
        let mut tag_hosts = Vec::new();
        let mut tag_names = Vec::new();
        let mut tag_types = Vec::new();
        for host in hosts {
            for (tag, tag_type) in &host.tags {
                tag_hosts.push(ids[&host.name].as_str());
                tag_names.push(tag.as_str());
                tag_types.push(tag_type.as_str());
            }
        }
        self.client
            .execute(
                "INSERT INTO host_tag (pk_host_tag, pk_host, str_tag, str_tag_type, b_constant)
                 SELECT gen_random_uuid()::text, h, t, y, y = 'ALLOC'
                 FROM unnest($1::text[], $2::text[], $3::text[]) AS x(h, t, y)",
                &[&tag_hosts, &tag_names, &tag_types],
            )
            .map_err(sql_err("insert host tags"))?;
        Ok(ids)
    }

    /// Inserts a PENDING job with its layers and WAITING frames, and the counts Cuebot's
    /// activation writes.
    pub fn job(&mut self, spec: &JobSpec) -> SeedResult<JobIds> {
        let job_id = self.insert_returning_id(
            "INSERT INTO job (pk_job, pk_folder, pk_show, pk_facility, pk_dept, str_name, str_visible_name, str_shot,
                              str_user, str_state, str_log_dir, b_paused, str_show, str_os, int_uid)
             VALUES (gen_random_uuid()::text, $1, $2, $3, $4, $5, $5, 'shot01', $6, 'PENDING', $7, $8, $9, $10, $11)
             RETURNING pk_job::text",
            &[&spec.folder_id, &spec.show_id, &spec.facility_id, &spec.dept_id, &spec.name, &spec.user, &spec.log_dir,
              &spec.paused, &spec.show_name, &spec.os, &spec.uid],
            "insert job",
        )?;
        self.client
            .execute(
                "UPDATE job_resource SET int_max_cores = $2, int_priority = $3 WHERE pk_job = $1",
                &[&job_id, &spec.max_cores, &spec.priority],
            )
            .map_err(sql_err("set job caps"))?;
        for (key, value) in &spec.env {
            self.client
                .execute(
                    "INSERT INTO job_env (pk_job_env, pk_job, str_key, str_value) VALUES (gen_random_uuid()::text, $1, $2, $3)",
                    &[&job_id, key, value],
                )
                .map_err(sql_err("insert job_env"))?;
        }
        let mut ids = JobIds { job_id: job_id.clone(), ..JobIds::default() };
        let mut total_frames = 0i64;
        for (order, layer) in spec.layers.iter().enumerate() {
            total_frames += self.layer(&job_id, order as i64 + 1, layer, &mut ids)?;
        }
        self.client
            .execute(
                "UPDATE job_stat SET int_waiting_count = $2 WHERE pk_job = $1",
                &[&job_id, &total_frames],
            )
            .map_err(sql_err("set job_stat"))?;
        self.client
            .execute(
                "UPDATE job SET int_frame_count = $2, int_layer_count = $3 WHERE pk_job = $1",
                &[&job_id, &(total_frames as i32), &(spec.layers.len() as i32)],
            )
            .map_err(sql_err("set job counts"))?;
        Ok(ids)
    }

    fn layer(&mut self, job_id: &str, order: i64, layer: &LayerSpec, ids: &mut JobIds) -> SeedResult<i64> {
        let layer_id = self.insert_returning_id(
            "INSERT INTO layer (pk_layer, pk_job, str_name, str_cmd, str_range, int_chunk_size, int_dispatch_order,
                                int_cores_min, int_cores_max, b_threadable, int_mem_min, int_gpus_min, int_gpu_mem_min,
                                str_tags, str_type, str_services, ts_start_after)
             VALUES (gen_random_uuid()::text, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'RENDER', $14,
                     CASE WHEN $15::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $15::float8) END)
             RETURNING pk_layer::text",
            &[&job_id, &layer.name, &layer.command, &layer.range, &layer.chunk, &order, &layer.cores_min,
              &(layer.cores_max as i32), &layer.threadable, &layer.mem_min_kib, &layer.gpus_min, &layer.gpu_mem_min_kib,
              &layer.tags, &layer.services, &layer.start_after_secs],
            "insert layer",
        )?;
        ids.layers.insert(layer.name.clone(), layer_id.clone());
        let set = FrameSet::parse(&layer.range).map_err(|e| format!("layer {}: {e}", layer.name))?;
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<i64> = set.frames().iter().copied().filter(|f| seen.insert(*f)).collect();
        let step = layer.chunk.max(1) as usize;
        let numbers: Vec<i64> = unique.iter().step_by(step).copied().collect();
        let names: Vec<String> = numbers.iter().map(|n| format!("{n:04}-{}", layer.name)).collect();
        let orders: Vec<i64> = (0..numbers.len() as i64).collect();
        let rows = self
            .client
            .query(
                "INSERT INTO frame (pk_frame, pk_layer, pk_job, str_name, str_state, int_number, int_dispatch_order,
                                    int_layer_order, ts_updated)
                 SELECT gen_random_uuid()::text, $1, $2, n, 'WAITING', num, o, $3, now()
                 FROM unnest($4::text[], $5::bigint[], $6::bigint[]) AS x(n, num, o)
                 RETURNING str_name::text, pk_frame::text",
                &[&layer_id, &job_id, &(order as i32), &names, &numbers, &orders],
            )
            .map_err(sql_err("insert frames"))?;
        for row in rows {
            ids.frames.insert(row.get(0), row.get(1));
        }
        let count = numbers.len() as i64;
        self.client
            .execute(
                "UPDATE layer_stat SET int_total_count = $2, int_waiting_count = $2 WHERE pk_layer = $1",
                &[&layer_id, &count],
            )
            .map_err(sql_err("set layer_stat"))?;
        Ok(count)
    }

    /// Rows of `../shared/cuebot/invariants.sql` (or an equivalent text): every row is a
    /// violation, formatted as `check object expected actual`.
    pub fn violations(&mut self, invariants_sql: &str) -> SeedResult<Vec<String>> {
        let sql: String = invariants_sql
            .lines()
            .filter(|l| !l.starts_with('\\'))
            .map(|l| l.replace(":'show'", "''"))
            .collect::<Vec<_>>()
            .join("\n");
        // Sums come back as numeric in the shared file: read every column as text.
        let body = sql.trim().trim_end_matches(';');
        let wrapped = format!("SELECT check_name::text, object::text, expected::text, actual::text FROM ({body}) v");
        let rows = self.client.query(wrapped.as_str(), &[]).map_err(sql_err("invariants"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let check: String = r.get(0);
                let object: String = r.get(1);
                let expected: String = r.get(2);
                let actual: String = r.get(3);
                format!("{check} {object} expected {expected} actual {actual}")
            })
            .collect())
    }
}

impl Farm {
    /// A `limit_record` (licence): at most `max` RUNNING frames over every attached layer;
    /// `None` blocks it. Returns its id.
    pub fn limit_record(&mut self, name: &str, max: Option<i32>) -> SeedResult<String> {
        self.insert_returning_id(
            "INSERT INTO limit_record (pk_limit_record, str_name, int_max_value) VALUES (gen_random_uuid()::text, $1, $2)
             RETURNING pk_limit_record::text",
            &[&name, &max],
            "insert limit_record",
        )
    }

    /// Attaches a layer to a limit (`layer_limit`).
    pub fn layer_limit(&mut self, layer_id: &str, limit_id: &str) -> SeedResult<()> {
        self.client
            .execute(
                "INSERT INTO layer_limit (pk_layer_limit, pk_layer, pk_limit_record) VALUES (gen_random_uuid()::text, $1, $2)",
                &[&layer_id, &limit_id],
            )
            .map_err(sql_err("insert layer_limit"))?;
        Ok(())
    }
}
