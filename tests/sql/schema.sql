-- =============================================================================
-- tests/sql/schema.sql -- the scheduler project's own subset of Cuebot's schema
-- =============================================================================
--
-- This file builds, in schema public of a FRESH, EMPTY PostgreSQL (>= 14)
-- database, the part of OpenCue Cuebot's database (Flyway migrations V1..V47)
-- that the frame scheduler reads and writes, so that unit and integration
-- tests can run without a full Cuebot installation:
--
--     psql -v ON_ERROR_STOP=1 -f tests/sql/schema.sql DBNAME
--
-- It is NOT a copy of Cuebot's schema.  It contains
--   * 30 of Cuebot's tables, each with ALL of its columns, spelled exactly as
--     in Cuebot (same names, types, lengths, nullability and defaults), their
--     primary keys, unique constraints, foreign keys between tables of the
--     subset, and Cuebot's indexes on them (notably idx_layer_tags_array);
--   * the SQL function recalculate_tags(varchar);
--   * this project's own PL/pgSQL implementations of the Cuebot triggers that
--     fire on a scheduler's (or a Cuebot-simulating test harness') writes, with
--     Cuebot's trigger and function names, WHEN conditions and exception
--     message texts (see ../shared/spec/cuebot-database.md, section 4).
-- It deliberately leaves out: the history tables and their triggers
-- (job_history, layer_history, frame_history and frame_history_open), the
-- float_tier triggers (tier_subscription, tier_job, tier_folder, point_tier:
-- float_tier simply stays at its default 0), after_job_finished, views,
-- services, dependencies, filters, local booking and every other table.
--
-- A conformance test checks every (table, column) created here against the
-- real schema, ../shared/cuebot/schema.sql (loaded into a scratch database),
-- through information_schema.columns: data_type, character_maximum_length,
-- numeric_precision, is_nullable and column_default must be identical.  When
-- adding a column, copy its definition from the real schema; never invent one.
--
-- Every statement is re-runnable (IF NOT EXISTS / OR REPLACE), but the file is
-- meant to be loaded once into an empty database.
-- =============================================================================

SET client_min_messages = warning;
SET search_path = public;

-- -----------------------------------------------------------------------------
-- Organisation
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.facility (
    pk_facility             varchar(36)     NOT NULL,
    str_name                varchar(36)     NOT NULL,
    b_default               boolean         NOT NULL DEFAULT false,
    CONSTRAINT c_facility_pk PRIMARY KEY (pk_facility)
);

CREATE TABLE IF NOT EXISTS public.dept (
    pk_dept                 varchar(36)     NOT NULL,
    str_name                varchar(36)     NOT NULL,
    b_default               boolean         NOT NULL DEFAULT false,
    CONSTRAINT c_dept_pk PRIMARY KEY (pk_dept)
);

CREATE TABLE IF NOT EXISTS public.show (
    pk_show                 varchar(36)     NOT NULL,
    str_name                varchar(512)    NOT NULL,      -- not unique
    b_paused                boolean         NOT NULL DEFAULT false,
    int_default_min_cores   integer         NOT NULL DEFAULT 100,
    int_default_max_cores   integer         NOT NULL DEFAULT 10000,
    b_booking_enabled       boolean         NOT NULL DEFAULT true,
    b_dispatch_enabled      boolean         NOT NULL DEFAULT true,
    b_active                boolean         NOT NULL DEFAULT true,
    str_comment_email       varchar(1024),
    int_default_min_gpus    integer         NOT NULL DEFAULT 100,
    int_default_max_gpus    integer         NOT NULL DEFAULT 100000,
    b_scheduler_managed     boolean         NOT NULL DEFAULT false,   -- V45
    CONSTRAINT c_show_pk PRIMARY KEY (pk_show)
);

CREATE TABLE IF NOT EXISTS public.show_stats (
    pk_show                 varchar(36)     NOT NULL,
    int_frame_insert_count  bigint          NOT NULL DEFAULT 0,
    int_job_insert_count    bigint          NOT NULL DEFAULT 0,
    int_frame_success_count bigint          NOT NULL DEFAULT 0,
    int_frame_fail_count    bigint          NOT NULL DEFAULT 0,
    CONSTRAINT c_show_stats_pk PRIMARY KEY (pk_show)
);

CREATE TABLE IF NOT EXISTS public.alloc (
    pk_alloc                varchar(36)     NOT NULL,
    str_name                varchar(36)     NOT NULL,      -- "<facility>.<name>"
    b_allow_edit            boolean         NOT NULL DEFAULT true,
    b_default               boolean         NOT NULL DEFAULT false,
    str_tag                 varchar(24),                   -- not unique
    b_billable              boolean         NOT NULL DEFAULT true,
    pk_facility             varchar(36)     NOT NULL,
    b_enabled               boolean                  DEFAULT true,
    CONSTRAINT c_alloc_pk PRIMARY KEY (pk_alloc),
    CONSTRAINT c_alloc_name_uniq UNIQUE (str_name),
    CONSTRAINT c_alloc_pk_facility FOREIGN KEY (pk_facility) REFERENCES public.facility (pk_facility)
);
CREATE INDEX IF NOT EXISTS i_alloc_pk_facility ON public.alloc (pk_facility);

CREATE TABLE IF NOT EXISTS public.subscription (
    pk_subscription         varchar(36)     NOT NULL,
    pk_alloc                varchar(36)     NOT NULL,
    pk_show                 varchar(36)     NOT NULL,
    int_size                bigint          NOT NULL DEFAULT 0,
    int_burst               bigint          NOT NULL DEFAULT 0,   -- hard cap; 0 = frozen
    int_cores               integer         NOT NULL DEFAULT 0,   -- booked, hundredths
    float_tier              numeric(16,2)   NOT NULL DEFAULT 0,
    int_gpus                integer         NOT NULL DEFAULT 0,
    CONSTRAINT c_subscription_pk PRIMARY KEY (pk_subscription),
    CONSTRAINT c_subscription_uk UNIQUE (pk_show, pk_alloc),
    CONSTRAINT c_subscription_pk_alloc FOREIGN KEY (pk_alloc) REFERENCES public.alloc (pk_alloc),
    CONSTRAINT c_subscription_pk_show FOREIGN KEY (pk_show) REFERENCES public.show (pk_show)
);
CREATE INDEX IF NOT EXISTS i_sub_tier ON public.subscription (float_tier);
CREATE INDEX IF NOT EXISTS i_subscription_pkalloc ON public.subscription (pk_alloc);

CREATE TABLE IF NOT EXISTS public.folder (
    pk_folder               varchar(36)     NOT NULL,
    pk_parent_folder        varchar(36),                   -- NULL = root folder of the show
    pk_show                 varchar(36)     NOT NULL,
    str_name                varchar(36)     NOT NULL,
    int_priority            bigint          NOT NULL DEFAULT 1,
    b_default               boolean         NOT NULL DEFAULT false,
    pk_dept                 varchar(36)     NOT NULL,
    int_job_min_cores       integer         NOT NULL DEFAULT -1,
    int_job_max_cores       integer         NOT NULL DEFAULT -1,
    int_job_priority        integer         NOT NULL DEFAULT -1,
    int_min_cores           integer         NOT NULL DEFAULT 0,
    int_max_cores           integer         NOT NULL DEFAULT -1,
    b_exclude_managed       boolean         NOT NULL DEFAULT false,
    f_order                 integer         NOT NULL DEFAULT 0,
    int_job_min_gpus        integer         NOT NULL DEFAULT -1,
    int_job_max_gpus        integer         NOT NULL DEFAULT -1,
    int_min_gpus            integer         NOT NULL DEFAULT 0,
    int_max_gpus            integer         NOT NULL DEFAULT -1,
    CONSTRAINT c_folder_pk PRIMARY KEY (pk_folder),
    CONSTRAINT c_folder_uk UNIQUE (pk_parent_folder, str_name),
    CONSTRAINT c_folder_pk_dept FOREIGN KEY (pk_dept) REFERENCES public.dept (pk_dept),
    CONSTRAINT c_folder_pk_show FOREIGN KEY (pk_show) REFERENCES public.show (pk_show)
);
CREATE INDEX IF NOT EXISTS i_folder_pkparentfolder ON public.folder (pk_parent_folder);
CREATE INDEX IF NOT EXISTS i_folder_pkshow ON public.folder (pk_show);
CREATE INDEX IF NOT EXISTS i_folder_strname ON public.folder (str_name);

CREATE TABLE IF NOT EXISTS public.folder_level (
    pk_folder_level         varchar(36)     NOT NULL,
    pk_folder               varchar(36)     NOT NULL,
    int_level               bigint          NOT NULL DEFAULT 0,
    CONSTRAINT c_folder_level_pk PRIMARY KEY (pk_folder_level),
    CONSTRAINT c_folder_level_uk UNIQUE (pk_folder),
    CONSTRAINT c_folder_level_pk_folder FOREIGN KEY (pk_folder) REFERENCES public.folder (pk_folder)
);

CREATE TABLE IF NOT EXISTS public.folder_resource (
    pk_folder_resource      varchar(36)     NOT NULL,
    pk_folder               varchar(36)     NOT NULL,
    int_cores               integer         NOT NULL DEFAULT 0,    -- booked
    int_max_cores           integer         NOT NULL DEFAULT -1,   -- -1 = no cap
    int_min_cores           integer         NOT NULL DEFAULT 0,
    float_tier              numeric(16,2)   NOT NULL DEFAULT 0,
    int_gpus                integer         NOT NULL DEFAULT 0,
    int_max_gpus            integer         NOT NULL DEFAULT -1,
    int_min_gpus            integer         NOT NULL DEFAULT 0,
    CONSTRAINT c_folder_resource_pk PRIMARY KEY (pk_folder_resource),
    CONSTRAINT c_folder_resource_pk_folder FOREIGN KEY (pk_folder) REFERENCES public.folder (pk_folder)
);
CREATE INDEX IF NOT EXISTS i_folder_res_int_max_cores ON public.folder_resource (int_max_cores);
CREATE INDEX IF NOT EXISTS i_folder_res_int_max_gpus ON public.folder_resource (int_max_gpus);
CREATE INDEX IF NOT EXISTS i_folder_resource_fl_tier ON public.folder_resource (float_tier);
CREATE INDEX IF NOT EXISTS i_folder_resource_int_cores ON public.folder_resource (int_cores);
CREATE INDEX IF NOT EXISTS i_folderresource_pkfolder ON public.folder_resource (pk_folder);

CREATE TABLE IF NOT EXISTS public.point (
    pk_point                varchar(36)     NOT NULL,
    pk_dept                 varchar(36)     NOT NULL,
    pk_show                 varchar(36)     NOT NULL,
    str_ti_task             varchar(36),
    int_cores               integer         NOT NULL DEFAULT 0,
    b_managed               boolean         NOT NULL DEFAULT false,
    int_min_cores           integer         NOT NULL DEFAULT 0,
    float_tier              numeric(16,2)   NOT NULL DEFAULT 0,
    ts_updated              timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    int_gpus                integer         NOT NULL DEFAULT 0,
    int_min_gpus            integer         NOT NULL DEFAULT 0,
    CONSTRAINT c_point_pk PRIMARY KEY (pk_point),
    CONSTRAINT c_point_pk_show_dept UNIQUE (pk_show, pk_dept),
    CONSTRAINT c_point_pk_dept FOREIGN KEY (pk_dept) REFERENCES public.dept (pk_dept),
    CONSTRAINT c_point_pk_show FOREIGN KEY (pk_show) REFERENCES public.show (pk_show)
);
CREATE INDEX IF NOT EXISTS i_point_pk_dept ON public.point (pk_dept);
CREATE INDEX IF NOT EXISTS i_point_pk_show ON public.point (pk_show);
CREATE INDEX IF NOT EXISTS i_point_tier ON public.point (float_tier);

-- -----------------------------------------------------------------------------
-- Jobs
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.job (
    pk_job                  varchar(36)     NOT NULL,
    pk_folder               varchar(36)     NOT NULL,
    pk_show                 varchar(36)     NOT NULL,
    str_name                varchar(255)    NOT NULL,
    str_visible_name        varchar(255),                  -- NULL once finished
    str_shot                varchar(64)     NOT NULL,
    str_user                varchar(32)     NOT NULL,
    str_state               varchar(16)     NOT NULL,      -- no default
    str_log_dir             varchar(4000)   NOT NULL DEFAULT '',
    int_uid                 bigint,
    b_paused                boolean         NOT NULL DEFAULT false,
    b_autoeat               boolean         NOT NULL DEFAULT false,
    int_frame_count         integer         NOT NULL DEFAULT 0,
    int_layer_count         integer         NOT NULL DEFAULT 0,
    int_max_retries         smallint        NOT NULL DEFAULT 3,
    b_auto_book             boolean         NOT NULL DEFAULT true,
    b_auto_unbook           boolean         NOT NULL DEFAULT true,
    b_comment               boolean         NOT NULL DEFAULT false,
    str_email               varchar(256),
    pk_facility             varchar(36)     NOT NULL,
    pk_dept                 varchar(36)     NOT NULL,
    ts_started              timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ts_stopped              timestamptz(6),
    int_min_cores           integer         NOT NULL DEFAULT 100,     -- not used for dispatch
    int_max_cores           integer         NOT NULL DEFAULT 20000,   -- not used for dispatch
    str_show                varchar(512)    NOT NULL DEFAULT 'none',
    ts_updated              timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    str_os                  varchar(12),
    int_min_gpus            integer         NOT NULL DEFAULT 0,
    int_max_gpus            integer         NOT NULL DEFAULT 100000,
    str_loki_url            varchar(256),
    ts_eligible             timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT c_job_pk PRIMARY KEY (pk_job),
    CONSTRAINT c_job_uk UNIQUE (str_visible_name),
    CONSTRAINT c_job_pk_dept FOREIGN KEY (pk_dept) REFERENCES public.dept (pk_dept),
    CONSTRAINT c_job_pk_facility FOREIGN KEY (pk_facility) REFERENCES public.facility (pk_facility),
    CONSTRAINT c_job_pk_folder FOREIGN KEY (pk_folder) REFERENCES public.folder (pk_folder),
    CONSTRAINT c_job_pk_show FOREIGN KEY (pk_show) REFERENCES public.show (pk_show)
);
CREATE INDEX IF NOT EXISTS i_booking_3 ON public.job (str_state, b_paused, pk_show, pk_facility);
CREATE INDEX IF NOT EXISTS i_job_active_pkjob ON public.job (pk_job) WHERE str_state <> 'FINISHED';
CREATE INDEX IF NOT EXISTS i_job_int_min_cores ON public.job (int_min_cores);
CREATE INDEX IF NOT EXISTS i_job_pk_dept ON public.job (pk_dept);
CREATE INDEX IF NOT EXISTS i_job_pk_facility ON public.job (pk_facility);
CREATE INDEX IF NOT EXISTS i_job_pkgroup ON public.job (pk_folder);
CREATE INDEX IF NOT EXISTS i_job_pkshow ON public.job (pk_show);
CREATE INDEX IF NOT EXISTS i_job_str_name ON public.job (str_name);
CREATE INDEX IF NOT EXISTS i_job_str_os ON public.job (str_os);
CREATE INDEX IF NOT EXISTS i_job_str_shot ON public.job (str_shot);
CREATE INDEX IF NOT EXISTS i_job_str_state ON public.job (str_state);
CREATE INDEX IF NOT EXISTS i_job_ts_updated ON public.job (ts_updated);
CREATE INDEX IF NOT EXISTS idx_job_pending_lookup ON public.job (pk_show, pk_facility, str_state, b_paused)
    WHERE str_state = 'PENDING' AND b_paused = false;

-- Child rows of job: created by the after_insert_job trigger, key = pk_job.
CREATE TABLE IF NOT EXISTS public.job_stat (
    pk_job_stat             varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    int_waiting_count       bigint          NOT NULL DEFAULT 0,
    int_running_count       bigint          NOT NULL DEFAULT 0,
    int_dead_count          bigint          NOT NULL DEFAULT 0,
    int_depend_count        bigint          NOT NULL DEFAULT 0,
    int_eaten_count         bigint          NOT NULL DEFAULT 0,
    int_succeeded_count     bigint          NOT NULL DEFAULT 0,
    int_checkpoint_count    bigint          NOT NULL DEFAULT 0,
    CONSTRAINT c_job_stat_pk PRIMARY KEY (pk_job_stat),
    CONSTRAINT c_job_stat_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job)
);
CREATE INDEX IF NOT EXISTS i_job_stat_int_waiting_count ON public.job_stat (int_waiting_count);
CREATE UNIQUE INDEX IF NOT EXISTS i_job_stat_pk_job ON public.job_stat (pk_job);

CREATE TABLE IF NOT EXISTS public.job_resource (
    pk_job_resource         varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    int_cores               bigint          NOT NULL DEFAULT 0,       -- booked
    int_max_rss             bigint          NOT NULL DEFAULT 0,
    int_max_vss             bigint          NOT NULL DEFAULT 0,
    int_min_cores           integer         NOT NULL DEFAULT 100,
    int_max_cores           integer         NOT NULL DEFAULT 10000,   -- 100 cores!
    float_tier              numeric(16,2)   NOT NULL DEFAULT 0,
    int_priority            integer         NOT NULL DEFAULT 1,
    int_local_cores         integer         NOT NULL DEFAULT 0,
    int_gpus                integer         NOT NULL DEFAULT 0,
    int_min_gpus            integer         NOT NULL DEFAULT 0,
    int_max_gpus            integer         NOT NULL DEFAULT 100,
    int_local_gpus          integer         NOT NULL DEFAULT 0,
    int_gpu_mem_max         bigint          NOT NULL DEFAULT 0,
    int_max_pss             bigint                   DEFAULT 0,
    CONSTRAINT c_job_resource_pk PRIMARY KEY (pk_job_resource),
    CONSTRAINT c_job_resource_uk UNIQUE (pk_job),
    CONSTRAINT c_job_resource_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job)
);
CREATE INDEX IF NOT EXISTS i_job_resource_cores ON public.job_resource (int_cores);
CREATE INDEX IF NOT EXISTS i_job_resource_gpus ON public.job_resource (int_gpus);
CREATE INDEX IF NOT EXISTS i_job_resource_gpus_min_max ON public.job_resource (int_min_gpus, int_max_gpus);
CREATE INDEX IF NOT EXISTS i_job_resource_int_priority ON public.job_resource (int_priority);
CREATE INDEX IF NOT EXISTS i_job_resource_max_c ON public.job_resource (int_max_cores);
CREATE INDEX IF NOT EXISTS i_job_resource_max_gpus ON public.job_resource (int_max_gpus);
CREATE INDEX IF NOT EXISTS i_job_resource_min_max ON public.job_resource (int_min_cores, int_max_cores);
CREATE INDEX IF NOT EXISTS i_job_tier ON public.job_resource (float_tier);

CREATE TABLE IF NOT EXISTS public.job_usage (
    pk_job_usage            varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    int_core_time_success   bigint          NOT NULL DEFAULT 0,
    int_core_time_fail      bigint          NOT NULL DEFAULT 0,
    int_frame_success_count integer         NOT NULL DEFAULT 0,
    int_frame_fail_count    integer         NOT NULL DEFAULT 0,
    int_clock_time_fail     integer         NOT NULL DEFAULT 0,
    int_clock_time_high     integer         NOT NULL DEFAULT 0,
    int_clock_time_success  integer         NOT NULL DEFAULT 0,
    int_gpu_time_success    bigint          NOT NULL DEFAULT 0,
    int_gpu_time_fail       bigint          NOT NULL DEFAULT 0,
    CONSTRAINT c_job_usage_pk PRIMARY KEY (pk_job_usage),
    CONSTRAINT c_job_usage_pk_job_uniq UNIQUE (pk_job),
    CONSTRAINT c_job_usage_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job)
);

CREATE TABLE IF NOT EXISTS public.job_mem (
    pk_job_mem              varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    int_max_rss             bigint          NOT NULL DEFAULT 0,
    int_max_vss             bigint          NOT NULL DEFAULT 0,
    int_gpu_mem_max         bigint          NOT NULL DEFAULT 0,
    int_max_pss             bigint                   DEFAULT 0,
    CONSTRAINT c_job_mem_pk PRIMARY KEY (pk_job_mem),
    CONSTRAINT c_job_mem_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job)
);
CREATE INDEX IF NOT EXISTS i_job_mem_int_max_rss ON public.job_mem (int_max_rss);
CREATE UNIQUE INDEX IF NOT EXISTS i_job_mem_pk_job ON public.job_mem (pk_job);
CREATE INDEX IF NOT EXISTS i_max_pss_job ON public.job_mem (int_max_pss);

CREATE TABLE IF NOT EXISTS public.job_env (
    pk_job_env              varchar(36)     NOT NULL,
    pk_job                  varchar(36),
    str_key                 varchar(2048),
    str_value               varchar(2048),
    CONSTRAINT c_job_env_pk PRIMARY KEY (pk_job_env),
    CONSTRAINT c_job_env_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job)
);
CREATE INDEX IF NOT EXISTS i_job_env_pk_job ON public.job_env (pk_job);

-- -----------------------------------------------------------------------------
-- Layers and limits
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.layer (
    pk_layer                varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    str_name                varchar(256)    NOT NULL,
    str_cmd                 varchar(4000)   NOT NULL,
    str_range               varchar(4000)   NOT NULL,
    int_chunk_size          bigint          NOT NULL DEFAULT 1,
    int_dispatch_order      bigint          NOT NULL DEFAULT 1,
    int_cores_min           bigint          NOT NULL DEFAULT 100,
    int_mem_min             bigint          NOT NULL DEFAULT 4194304,   -- KB
    str_tags                varchar(4000)   NOT NULL DEFAULT '',        -- "a | b"
    str_type                varchar(16)     NOT NULL,
    b_threadable            boolean         NOT NULL DEFAULT true,
    str_services            varchar(128)    NOT NULL DEFAULT 'default',
    b_optimize              boolean         NOT NULL DEFAULT true,
    int_cores_max           integer         NOT NULL DEFAULT 0,
    int_gpu_mem_min         bigint          NOT NULL DEFAULT 0,
    int_timeout             integer         NOT NULL DEFAULT 0,
    int_timeout_llu         integer         NOT NULL DEFAULT 0,
    int_gpus_min            bigint          NOT NULL DEFAULT 0,
    int_gpus_max            bigint          NOT NULL DEFAULT 0,
    ts_eligible             timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ts_start_after          timestamptz(6)           DEFAULT NULL,     -- V47
    str_start_after_reason  varchar(255)             DEFAULT NULL,
    CONSTRAINT c_layer_pk PRIMARY KEY (pk_layer),
    CONSTRAINT c_layer_str_name_unq UNIQUE (str_name, pk_job),
    CONSTRAINT c_layer_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job)
);
CREATE INDEX IF NOT EXISTS i_layer_b_threadable ON public.layer (b_threadable);
CREATE INDEX IF NOT EXISTS i_layer_cores_gpus_mem ON public.layer (int_cores_min, int_gpus_min, int_mem_min, int_gpu_mem_min);
CREATE INDEX IF NOT EXISTS i_layer_cores_gpus_mem_thread ON public.layer (int_cores_min, int_gpus_min, int_mem_min, int_gpu_mem_min, b_threadable);
CREATE INDEX IF NOT EXISTS i_layer_cores_mem ON public.layer (int_cores_min, int_mem_min);
CREATE INDEX IF NOT EXISTS i_layer_cores_mem_thread ON public.layer (int_cores_min, int_mem_min, b_threadable);
CREATE INDEX IF NOT EXISTS i_layer_int_cores_max ON public.layer (int_cores_max);
CREATE INDEX IF NOT EXISTS i_layer_int_dispatch_order ON public.layer (int_dispatch_order);
CREATE INDEX IF NOT EXISTS i_layer_int_gpu_mem_min ON public.layer (int_gpu_mem_min);
CREATE INDEX IF NOT EXISTS i_layer_int_gpus_mem_min_1 ON public.layer (int_gpu_mem_min);
CREATE INDEX IF NOT EXISTS i_layer_int_gpus_min ON public.layer (int_gpus_min);
CREATE INDEX IF NOT EXISTS i_layer_mem_min ON public.layer (int_mem_min);
CREATE INDEX IF NOT EXISTS i_layer_pkjob ON public.layer (pk_job);
CREATE INDEX IF NOT EXISTS i_layer_start_after ON public.layer (ts_start_after) WHERE ts_start_after IS NOT NULL;
CREATE INDEX IF NOT EXISTS i_layer_str_tags ON public.layer (str_tags);
CREATE INDEX IF NOT EXISTS i_layer_strname ON public.layer (str_name);
-- Tag overlap: string_to_array(replace(l.str_tags, ' ', ''), '|') && $tags
-- uses this index only when written with exactly this expression.
CREATE INDEX IF NOT EXISTS idx_layer_tags_array ON public.layer
    USING gin (string_to_array(replace((str_tags)::text, ' '::text, ''::text), '|'::text));

-- Child rows of layer: created by the after_insert_layer trigger, key = pk_layer.
CREATE TABLE IF NOT EXISTS public.layer_stat (
    pk_layer_stat           varchar(36)     NOT NULL,
    pk_layer                varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    int_total_count         bigint          NOT NULL DEFAULT 0,
    int_waiting_count       bigint          NOT NULL DEFAULT 0,
    int_running_count       bigint          NOT NULL DEFAULT 0,
    int_dead_count          bigint          NOT NULL DEFAULT 0,
    int_depend_count        bigint          NOT NULL DEFAULT 0,
    int_eaten_count         bigint          NOT NULL DEFAULT 0,
    int_succeeded_count     bigint          NOT NULL DEFAULT 0,
    int_checkpoint_count    bigint          NOT NULL DEFAULT 0,
    ts_started              timestamptz(6),
    ts_stopped              timestamptz(6),
    CONSTRAINT c_layerstat_pk PRIMARY KEY (pk_layer_stat),
    CONSTRAINT c_layer_stat_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job),
    CONSTRAINT c_layer_stat_pk_layer FOREIGN KEY (pk_layer) REFERENCES public.layer (pk_layer)
);
CREATE UNIQUE INDEX IF NOT EXISTS i_layer_stat_pk_layer ON public.layer_stat (pk_layer);
CREATE INDEX IF NOT EXISTS i_layerstat_pkjob ON public.layer_stat (pk_job);
CREATE INDEX IF NOT EXISTS i_layerstat_int_waiting_count ON public.layer_stat (
    (CASE WHEN int_waiting_count > 0 THEN 1 ELSE NULL::integer END),
    (CASE WHEN int_waiting_count > 0 THEN pk_layer ELSE NULL::varchar END));
CREATE INDEX IF NOT EXISTS idx_layer_stat_waiting ON public.layer_stat (pk_layer) WHERE int_waiting_count > 0;

CREATE TABLE IF NOT EXISTS public.layer_resource (
    pk_layer_resource       varchar(36)     NOT NULL,
    pk_layer                varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    int_cores               bigint          NOT NULL DEFAULT 0,   -- booked
    int_max_rss             bigint          NOT NULL DEFAULT 0,
    int_max_vss             bigint          NOT NULL DEFAULT 0,
    int_gpus                integer         NOT NULL DEFAULT 0,
    int_gpu_mem_max         bigint          NOT NULL DEFAULT 0,
    int_max_pss             bigint                   DEFAULT 0,
    CONSTRAINT c_layerresource_pk PRIMARY KEY (pk_layer_resource),
    CONSTRAINT c_layerresource_uk UNIQUE (pk_layer),
    CONSTRAINT c_layer_resource_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job),
    CONSTRAINT c_layer_resource_pk_layer FOREIGN KEY (pk_layer) REFERENCES public.layer (pk_layer)
);
CREATE INDEX IF NOT EXISTS i_layer_resource_pk_job ON public.layer_resource (pk_job);

CREATE TABLE IF NOT EXISTS public.layer_usage (
    pk_layer_usage          varchar(36)     NOT NULL,
    pk_layer                varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    int_core_time_success   bigint          NOT NULL DEFAULT 0,
    int_core_time_fail      bigint          NOT NULL DEFAULT 0,
    int_frame_success_count integer         NOT NULL DEFAULT 0,
    int_frame_fail_count    integer         NOT NULL DEFAULT 0,
    int_clock_time_fail     integer         NOT NULL DEFAULT 0,
    int_clock_time_high     integer         NOT NULL DEFAULT 0,
    int_clock_time_low      integer         NOT NULL DEFAULT 0,
    int_clock_time_success  integer         NOT NULL DEFAULT 0,
    int_gpu_time_success    bigint          NOT NULL DEFAULT 0,
    int_gpu_time_fail       bigint          NOT NULL DEFAULT 0,
    CONSTRAINT c_layer_usage_pk PRIMARY KEY (pk_layer_usage),
    CONSTRAINT c_layer_usage_pk_layer_uk UNIQUE (pk_layer),
    CONSTRAINT c_layer_usage_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job),
    CONSTRAINT c_layer_usage_pk_layer FOREIGN KEY (pk_layer) REFERENCES public.layer (pk_layer)
);
CREATE INDEX IF NOT EXISTS i_layer_usage_pk_job ON public.layer_usage (pk_job);

CREATE TABLE IF NOT EXISTS public.layer_mem (
    pk_layer_mem            varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    pk_layer                varchar(36)     NOT NULL,
    int_max_rss             bigint          NOT NULL DEFAULT 0,
    int_max_vss             bigint          NOT NULL DEFAULT 0,
    int_gpu_mem_max         bigint          NOT NULL DEFAULT 0,
    int_max_pss             bigint                   DEFAULT 0,
    CONSTRAINT c_layer_mem_pk PRIMARY KEY (pk_layer_mem),
    CONSTRAINT c_layer_mem_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job),
    CONSTRAINT c_layer_mem_pk_layer FOREIGN KEY (pk_layer) REFERENCES public.layer (pk_layer)
);
CREATE INDEX IF NOT EXISTS i_layer_mem_int_max_rss ON public.layer_mem (int_max_rss);
CREATE INDEX IF NOT EXISTS i_layer_mem_pk_job ON public.layer_mem (pk_job);
CREATE UNIQUE INDEX IF NOT EXISTS i_layer_mem_pk_layer ON public.layer_mem (pk_layer);
CREATE INDEX IF NOT EXISTS i_max_pss_layer ON public.layer_mem (int_max_pss);

CREATE TABLE IF NOT EXISTS public.layer_env (
    pk_layer_env            varchar(36)     NOT NULL,
    pk_layer                varchar(36),
    pk_job                  varchar(36),
    str_key                 varchar(2048),
    str_value               varchar(2048),
    CONSTRAINT c_layer_env_pk PRIMARY KEY (pk_layer_env),
    CONSTRAINT c_layer_env_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job),
    CONSTRAINT c_layer_env_pk_layer FOREIGN KEY (pk_layer) REFERENCES public.layer (pk_layer)
);
CREATE INDEX IF NOT EXISTS i_layer_env_pk_job ON public.layer_env (pk_job);
CREATE INDEX IF NOT EXISTS i_layer_env_pk_layer ON public.layer_env (pk_layer);

-- Cuebot gives limit_record and layer_limit no primary key and no foreign keys.
CREATE TABLE IF NOT EXISTS public.limit_record (
    pk_limit_record         varchar(36)     NOT NULL,
    str_name                varchar(255)    NOT NULL,
    int_max_value           integer,                        -- NULL blocks the limit
    b_host_limit            boolean         NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS i_limit_record_pk_limit_record ON public.limit_record (pk_limit_record);

CREATE TABLE IF NOT EXISTS public.layer_limit (
    pk_layer_limit          varchar(36)     NOT NULL,
    pk_layer                varchar(36)     NOT NULL,
    pk_limit_record         varchar(36)     NOT NULL
);
CREATE INDEX IF NOT EXISTS i_layer_limit_pk_layer ON public.layer_limit (pk_layer);
CREATE INDEX IF NOT EXISTS i_layer_limit_pk_limit_record ON public.layer_limit (pk_limit_record);

-- -----------------------------------------------------------------------------
-- Frames
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.frame (
    pk_frame                varchar(36)     NOT NULL,
    pk_layer                varchar(36)     NOT NULL,
    pk_job                  varchar(36)     NOT NULL,
    str_name                varchar(256)    NOT NULL,      -- "0001-render"
    str_state               varchar(24)     NOT NULL,      -- no default
    int_number              bigint          NOT NULL,
    int_depend_count        bigint          NOT NULL DEFAULT 0,
    int_exit_status         bigint          NOT NULL DEFAULT -1,
    int_retries             bigint          NOT NULL DEFAULT 0,
    int_mem_reserved        bigint          NOT NULL DEFAULT 0,
    int_mem_max_used        bigint          NOT NULL DEFAULT 0,
    int_mem_used            bigint          NOT NULL DEFAULT 0,
    int_dispatch_order      bigint          NOT NULL DEFAULT 0,
    str_host                varchar(256),                  -- = host.str_name
    int_cores               integer         NOT NULL DEFAULT 0,
    int_layer_order         integer         NOT NULL,      -- no default
    ts_started              timestamptz(6),
    ts_stopped              timestamptz(6),
    ts_last_run             timestamptz(6),
    ts_updated              timestamptz(6),
    int_version             integer                  DEFAULT 0,   -- nullable
    str_checkpoint_state    varchar(12)     NOT NULL DEFAULT 'DISABLED',
    int_checkpoint_count    smallint        NOT NULL DEFAULT 0,
    int_gpu_mem_reserved    bigint          NOT NULL DEFAULT 0,
    int_total_past_core_time integer        NOT NULL DEFAULT 0,
    ts_llu                  timestamptz(6),
    int_gpu_mem_used        bigint          NOT NULL DEFAULT 0,
    int_gpu_mem_max_used    bigint          NOT NULL DEFAULT 0,
    int_gpus                integer         NOT NULL DEFAULT 0,
    int_total_past_gpu_time integer         NOT NULL DEFAULT 0,
    int_pss_max_used        bigint                   DEFAULT 0,
    int_pss_used            bigint                   DEFAULT 0,
    ts_eligible             timestamptz(6)           DEFAULT NULL,
    CONSTRAINT c_frame_pk PRIMARY KEY (pk_frame),
    CONSTRAINT c_frame_str_name_unq UNIQUE (str_name, pk_job),
    CONSTRAINT c_frame_pk_job FOREIGN KEY (pk_job) REFERENCES public.job (pk_job),
    CONSTRAINT c_frame_pk_layer FOREIGN KEY (pk_layer) REFERENCES public.layer (pk_layer)
);
CREATE INDEX IF NOT EXISTS i_frame_depend_candidates ON public.frame (pk_job, pk_layer, pk_frame)
    WHERE str_state = 'DEPEND' AND int_depend_count > 0;
CREATE INDEX IF NOT EXISTS i_frame_dispatch_idx ON public.frame (int_dispatch_order, int_layer_order);
CREATE INDEX IF NOT EXISTS i_frame_int_gpu_mem_reserved ON public.frame (int_gpu_mem_reserved);
CREATE INDEX IF NOT EXISTS i_frame_pk_job ON public.frame (pk_job);
CREATE INDEX IF NOT EXISTS i_frame_pkjoblayer ON public.frame (pk_layer);
CREATE INDEX IF NOT EXISTS i_frame_state_job ON public.frame (str_state, pk_job);

-- -----------------------------------------------------------------------------
-- Hosts
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.host (
    pk_host                 varchar(36)     NOT NULL,
    pk_alloc                varchar(36)     NOT NULL,
    str_name                varchar(45)     NOT NULL,      -- RQD address
    str_lock_state          varchar(36)     NOT NULL,      -- no default
    b_nimby                 boolean         NOT NULL DEFAULT false,
    ts_created              timestamp(6)    NOT NULL DEFAULT CURRENT_TIMESTAMP,  -- no time zone
    int_cores               bigint          NOT NULL DEFAULT 0,
    int_procs               bigint          NOT NULL DEFAULT 0,
    int_cores_idle          bigint          NOT NULL DEFAULT 0,
    int_mem                 bigint          NOT NULL DEFAULT 0,   -- booking memory, KB
    int_mem_idle            bigint          NOT NULL DEFAULT 0,
    b_unlock_boot           boolean         NOT NULL DEFAULT false,
    b_unlock_idle           boolean         NOT NULL DEFAULT false,
    b_reboot_idle           boolean         NOT NULL DEFAULT false,
    str_tags                varchar(128),                  -- cache, see recalculate_tags
    str_fqdn                varchar(128),
    b_comment               boolean         NOT NULL DEFAULT false,
    int_thread_mode         integer         NOT NULL DEFAULT 0,
    str_lock_source         varchar(128),
    int_gpu_mem             bigint          NOT NULL DEFAULT 0,
    int_gpu_mem_idle        bigint          NOT NULL DEFAULT 0,
    int_gpus                bigint          NOT NULL DEFAULT 0,
    int_gpus_idle           bigint          NOT NULL DEFAULT 0,
    CONSTRAINT c_host_pk PRIMARY KEY (pk_host),
    CONSTRAINT c_host_uk UNIQUE (str_name),
    CONSTRAINT c_str_host_fqdn_uk UNIQUE (str_fqdn),
    CONSTRAINT c_host_pk_alloc FOREIGN KEY (pk_alloc) REFERENCES public.alloc (pk_alloc)
);
CREATE INDEX IF NOT EXISTS i_host_int_gpu ON public.host (int_gpu_mem);
CREATE INDEX IF NOT EXISTS i_host_int_gpu_idle ON public.host (int_gpu_mem_idle);
CREATE INDEX IF NOT EXISTS i_host_int_gpu_mem ON public.host (int_gpu_mem);
CREATE INDEX IF NOT EXISTS i_host_int_gpu_mem_idle ON public.host (int_gpu_mem_idle);
CREATE INDEX IF NOT EXISTS i_host_int_gpus ON public.host (int_gpus);
CREATE INDEX IF NOT EXISTS i_host_int_gpus_idle ON public.host (int_gpus_idle);
CREATE INDEX IF NOT EXISTS i_host_pkalloc ON public.host (pk_alloc);
CREATE INDEX IF NOT EXISTS i_host_str_tags ON public.host (str_tags);
CREATE INDEX IF NOT EXISTS i_host_strlockstate ON public.host (str_lock_state);

CREATE TABLE IF NOT EXISTS public.host_stat (
    pk_host_stat            varchar(36)     NOT NULL,
    pk_host                 varchar(36)     NOT NULL,
    int_mem_total           bigint          NOT NULL DEFAULT 0,   -- raw RAM, KB
    int_mem_free            bigint          NOT NULL DEFAULT 0,
    int_swap_total          bigint          NOT NULL DEFAULT 0,
    int_swap_free           bigint          NOT NULL DEFAULT 0,
    int_mcp_total           bigint          NOT NULL DEFAULT 0,
    int_mcp_free            bigint          NOT NULL DEFAULT 0,
    int_load                bigint          NOT NULL DEFAULT 0,
    ts_ping                 timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ts_booted               timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    str_state               varchar(32)     NOT NULL DEFAULT 'UP',
    str_os                  varchar(32)     NOT NULL DEFAULT 'rhel40',
    int_gpu_mem_total       bigint          NOT NULL DEFAULT 0,
    int_gpu_mem_free        bigint          NOT NULL DEFAULT 0,
    CONSTRAINT c_hoststat_pk PRIMARY KEY (pk_host_stat),
    CONSTRAINT c_host_stat_pk_host_uk UNIQUE (pk_host),
    CONSTRAINT c_host_stat_pk_host FOREIGN KEY (pk_host) REFERENCES public.host (pk_host)
);
CREATE INDEX IF NOT EXISTS i_host_stat_int_gpu_mem_free ON public.host_stat (int_gpu_mem_free);
CREATE INDEX IF NOT EXISTS i_host_stat_int_gpu_mem_total ON public.host_stat (int_gpu_mem_total);
CREATE INDEX IF NOT EXISTS i_host_stat_str_os ON public.host_stat (str_os);

-- host_tag has no unique constraint and (as in Cuebot) no foreign key.
CREATE TABLE IF NOT EXISTS public.host_tag (
    pk_host_tag             varchar(36)     NOT NULL,
    pk_host                 varchar(36)     NOT NULL,
    str_tag                 varchar(45)     NOT NULL,
    str_tag_type            varchar(24)     NOT NULL DEFAULT 'Hardware',
    b_constant              boolean         NOT NULL DEFAULT false,
    CONSTRAINT c_host_tag_pk PRIMARY KEY (pk_host_tag)
);
CREATE INDEX IF NOT EXISTS i_host_str_tag_type ON public.host_tag (str_tag_type);
CREATE INDEX IF NOT EXISTS i_host_tag_pk_host ON public.host_tag (pk_host);
-- Not in Cuebot (which has only the two indexes above); added because the
-- scheduler selects hosts by tag.  Indexes are not part of the column check.
CREATE INDEX IF NOT EXISTS i_host_tag_str_tag ON public.host_tag (str_tag);

-- -----------------------------------------------------------------------------
-- proc: one row per running frame
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.proc (
    pk_proc                 varchar(36)     NOT NULL,      -- RunFrame.resource_id
    pk_host                 varchar(36)     NOT NULL,
    pk_job                  varchar(36),
    pk_show                 varchar(36),
    pk_layer                varchar(36),
    pk_frame                varchar(36),
    int_cores_reserved      bigint          NOT NULL,      -- > 0 (before_insert_proc)
    int_mem_reserved        bigint          NOT NULL,
    int_mem_used            bigint          NOT NULL DEFAULT 0,
    int_mem_max_used        bigint          NOT NULL DEFAULT 0,
    b_unbooked              boolean         NOT NULL DEFAULT false,
    int_mem_pre_reserved    bigint          NOT NULL DEFAULT 0,
    int_virt_used           bigint          NOT NULL DEFAULT 0,
    int_virt_max_used       bigint          NOT NULL DEFAULT 0,
    str_redirect            varchar(265),
    b_local                 boolean         NOT NULL DEFAULT false,
    ts_ping                 timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ts_booked               timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ts_dispatched           timestamptz(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    int_gpu_mem_reserved    bigint          NOT NULL DEFAULT 0,
    int_gpus_reserved       integer         NOT NULL DEFAULT 0,
    int_gpu_mem_used        bigint          NOT NULL DEFAULT 0,
    int_gpu_mem_max_used    bigint          NOT NULL DEFAULT 0,
    int_gpu_mem_pre_reserved bigint         NOT NULL DEFAULT 0,
    bytea_children          bytea,
    int_swap_used           bigint          NOT NULL DEFAULT 0,
    int_pss_max_used        bigint                   DEFAULT 0,
    int_pss_used            bigint                   DEFAULT 0,
    CONSTRAINT c_proc_pk PRIMARY KEY (pk_proc),
    CONSTRAINT c_proc_uk UNIQUE (pk_frame),               -- one proc per frame
    CONSTRAINT c_proc_pk_frame FOREIGN KEY (pk_frame) REFERENCES public.frame (pk_frame),
    CONSTRAINT c_proc_pk_host FOREIGN KEY (pk_host) REFERENCES public.host (pk_host)
);
CREATE INDEX IF NOT EXISTS i_proc_int_gpu_mem_reserved ON public.proc (int_gpu_mem_reserved);
CREATE INDEX IF NOT EXISTS i_proc_pkhost ON public.proc (pk_host);
CREATE INDEX IF NOT EXISTS i_proc_pkjob ON public.proc (pk_job);
CREATE INDEX IF NOT EXISTS i_proc_pklayer ON public.proc (pk_layer);
CREATE INDEX IF NOT EXISTS i_proc_pkshow ON public.proc (pk_show);

-- -----------------------------------------------------------------------------
-- config (key/value; Cuebot's history triggers look for key DISABLE_HISTORY)
-- -----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.config (
    pk_config               varchar(36)     NOT NULL,
    str_key                 varchar(36)     NOT NULL,
    int_value               bigint                   DEFAULT 0,
    long_value              bigint                   DEFAULT 0,
    str_value               varchar(255)             DEFAULT '',
    b_value                 boolean                  DEFAULT false,
    CONSTRAINT c_pk_pkconfig PRIMARY KEY (pk_config),
    CONSTRAINT c_show_uk UNIQUE (str_key)                 -- sic: Cuebot's name
);

-- =============================================================================
-- Functions
-- =============================================================================

-- recalculate_tags(pk_host): rebuild the host.str_tags cache from host_tag,
-- tags ordered by (str_tag_type, str_tag), separated by one space, duplicates
-- kept, '' (not NULL) when the host has no tag.  More than 128 characters
-- fails, as in Cuebot (host.str_tags is varchar(128)).
-- The parameter is positional on purpose: a parameter named pk_host would be
-- shadowed by the column of the same name inside the statement.
CREATE OR REPLACE FUNCTION public.recalculate_tags(varchar) RETURNS void
LANGUAGE sql AS $fn$
    UPDATE public.host h
       SET str_tags = trim(COALESCE(
               (SELECT string_agg(t.str_tag, ' ' ORDER BY t.str_tag_type, t.str_tag)
                  FROM public.host_tag t
                 WHERE t.pk_host = $1), ''))
     WHERE h.pk_host = $1;
$fn$;

-- =============================================================================
-- Trigger functions (this project's implementations of the behaviour listed
-- in cuebot-database.md section 4) and triggers.  Trigger names are Cuebot's:
-- PostgreSQL fires triggers of the same kind in name order, and several
-- BEFORE UPDATE triggers on frame rewrite NEW.str_state one after another.
-- =============================================================================

-- ---- folder -----------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.trigger__before_insert_folder() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- A show's root folder is its default folder.
    IF NEW.pk_parent_folder IS NULL THEN
        NEW.b_default := true;
    END IF;
    RETURN NEW;
END;
$fn$;

CREATE OR REPLACE FUNCTION public.trigger__after_insert_folder() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    lvl bigint;
BEGIN
    -- Root folder: level 0.  Child: parent's level + 1 (NULL, and so a NOT NULL
    -- violation, if the parent has no folder_level row).
    IF NEW.pk_parent_folder IS NULL THEN
        lvl := 0;
    ELSE
        lvl := (SELECT fl.int_level + 1 FROM public.folder_level fl
                 WHERE fl.pk_folder = NEW.pk_parent_folder);
    END IF;
    INSERT INTO public.folder_level (pk_folder_level, pk_folder, int_level)
    VALUES (NEW.pk_folder, NEW.pk_folder, lvl);
    INSERT INTO public.folder_resource (pk_folder_resource, pk_folder)
    VALUES (NEW.pk_folder, NEW.pk_folder);
    RETURN NULL;
END;
$fn$;

CREATE OR REPLACE FUNCTION public.trigger__before_delete_folder() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM public.folder_level WHERE pk_folder = OLD.pk_folder;
    DELETE FROM public.folder_resource WHERE pk_folder = OLD.pk_folder;
    RETURN OLD;
END;
$fn$;

CREATE OR REPLACE TRIGGER before_insert_folder BEFORE INSERT ON public.folder
    FOR EACH ROW EXECUTE FUNCTION public.trigger__before_insert_folder();
CREATE OR REPLACE TRIGGER after_insert_folder AFTER INSERT ON public.folder
    FOR EACH ROW EXECUTE FUNCTION public.trigger__after_insert_folder();
CREATE OR REPLACE TRIGGER before_delete_folder BEFORE DELETE ON public.folder
    FOR EACH ROW EXECUTE FUNCTION public.trigger__before_delete_folder();

-- ---- job --------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.trigger__after_insert_job() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- The four per-job rows, keyed by pk_job, every other column defaulted.
    -- (Cuebot also writes a job_history row here; history is not modelled.)
    INSERT INTO public.job_stat     (pk_job_stat,     pk_job) VALUES (NEW.pk_job, NEW.pk_job);
    INSERT INTO public.job_resource (pk_job_resource, pk_job) VALUES (NEW.pk_job, NEW.pk_job);
    INSERT INTO public.job_usage    (pk_job_usage,    pk_job) VALUES (NEW.pk_job, NEW.pk_job);
    INSERT INTO public.job_mem      (pk_job_mem,      pk_job) VALUES (NEW.pk_job, NEW.pk_job);
    RETURN NULL;
END;
$fn$;

-- Moving a job to another folder carries its booked cores/GPUs along.
CREATE OR REPLACE FUNCTION public.trigger__after_job_moved() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    c integer;
    g integer;
BEGIN
    SELECT jr.int_cores, jr.int_gpus INTO c, g
      FROM public.job_resource jr WHERE jr.pk_job = NEW.pk_job;
    IF c > 0 THEN
        UPDATE public.folder_resource SET int_cores = int_cores + c WHERE pk_folder = NEW.pk_folder;
        UPDATE public.folder_resource SET int_cores = int_cores - c WHERE pk_folder = OLD.pk_folder;
    END IF;
    IF g > 0 THEN
        UPDATE public.folder_resource SET int_gpus = int_gpus + g WHERE pk_folder = NEW.pk_folder;
        UPDATE public.folder_resource SET int_gpus = int_gpus - g WHERE pk_folder = OLD.pk_folder;
    END IF;
    RETURN NULL;
END;
$fn$;

-- Moving a PENDING job to another department carries its booked cores/GPUs
-- between the (dept, show) point rows.
CREATE OR REPLACE FUNCTION public.trigger__after_job_dept_update() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    c integer;
    g integer;
BEGIN
    SELECT jr.int_cores, jr.int_gpus INTO c, g
      FROM public.job_resource jr WHERE jr.pk_job = NEW.pk_job;
    IF c > 0 THEN
        UPDATE public.point SET int_cores = int_cores + c
         WHERE pk_dept = NEW.pk_dept AND pk_show = NEW.pk_show;
        UPDATE public.point SET int_cores = int_cores - c
         WHERE pk_dept = OLD.pk_dept AND pk_show = OLD.pk_show;
    END IF;
    IF g > 0 THEN
        UPDATE public.point SET int_gpus = int_gpus + g
         WHERE pk_dept = NEW.pk_dept AND pk_show = NEW.pk_show;
        UPDATE public.point SET int_gpus = int_gpus - g
         WHERE pk_dept = OLD.pk_dept AND pk_show = OLD.pk_show;
    END IF;
    RETURN NULL;
END;
$fn$;

-- Deleting a job removes its frames, layers (through before_delete_layer) and
-- per-job rows, as Cuebot's trigger does for the tables modelled here.  A job
-- whose frames still have a proc cannot be deleted (c_proc_pk_frame).
CREATE OR REPLACE FUNCTION public.trigger__before_delete_job() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM public.frame        WHERE pk_job = OLD.pk_job;
    DELETE FROM public.layer        WHERE pk_job = OLD.pk_job;
    DELETE FROM public.job_env      WHERE pk_job = OLD.pk_job;
    DELETE FROM public.job_stat     WHERE pk_job = OLD.pk_job;
    DELETE FROM public.job_resource WHERE pk_job = OLD.pk_job;
    DELETE FROM public.job_usage    WHERE pk_job = OLD.pk_job;
    DELETE FROM public.job_mem      WHERE pk_job = OLD.pk_job;
    RETURN OLD;
END;
$fn$;

CREATE OR REPLACE TRIGGER after_insert_job AFTER INSERT ON public.job
    FOR EACH ROW EXECUTE FUNCTION public.trigger__after_insert_job();
CREATE OR REPLACE TRIGGER after_job_moved AFTER UPDATE ON public.job
    FOR EACH ROW WHEN (NEW.pk_folder <> OLD.pk_folder)
    EXECUTE FUNCTION public.trigger__after_job_moved();
CREATE OR REPLACE TRIGGER after_job_dept_update AFTER UPDATE ON public.job
    FOR EACH ROW WHEN (NEW.pk_dept <> OLD.pk_dept AND NEW.str_state = 'PENDING')
    EXECUTE FUNCTION public.trigger__after_job_dept_update();
CREATE OR REPLACE TRIGGER before_delete_job BEFORE DELETE ON public.job
    FOR EACH ROW EXECUTE FUNCTION public.trigger__before_delete_job();

-- ---- job_resource -----------------------------------------------------------

CREATE OR REPLACE FUNCTION public.trigger__verify_job_resources() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Runs only when a booking raised cores (or GPUs) with the cap unchanged;
    -- reaching the cap exactly is allowed.  Both caps are checked, cores first.
    IF NEW.int_cores > NEW.int_max_cores THEN
        RAISE EXCEPTION 'job has exceeded max cores';
    END IF;
    IF NEW.int_gpus > NEW.int_max_gpus THEN
        RAISE EXCEPTION 'job has exceeded max GPU units';
    END IF;
    RETURN NEW;
END;
$fn$;

CREATE OR REPLACE TRIGGER verify_job_resources BEFORE UPDATE ON public.job_resource
    FOR EACH ROW
    WHEN ((NEW.int_max_cores = OLD.int_max_cores AND NEW.int_cores > OLD.int_cores)
       OR (NEW.int_max_gpus = OLD.int_max_gpus AND NEW.int_gpus > OLD.int_gpus))
    EXECUTE FUNCTION public.trigger__verify_job_resources();

-- ---- layer ------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.trigger__after_insert_layer() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- The four per-layer rows, keyed by pk_layer, carrying pk_job.
    -- (Cuebot also writes a layer_history row here; history is not modelled.)
    INSERT INTO public.layer_stat     (pk_layer_stat,     pk_layer, pk_job) VALUES (NEW.pk_layer, NEW.pk_layer, NEW.pk_job);
    INSERT INTO public.layer_resource (pk_layer_resource, pk_layer, pk_job) VALUES (NEW.pk_layer, NEW.pk_layer, NEW.pk_job);
    INSERT INTO public.layer_usage    (pk_layer_usage,    pk_layer, pk_job) VALUES (NEW.pk_layer, NEW.pk_layer, NEW.pk_job);
    INSERT INTO public.layer_mem      (pk_layer_mem,      pk_layer, pk_job) VALUES (NEW.pk_layer, NEW.pk_layer, NEW.pk_job);
    RETURN NULL;
END;
$fn$;

CREATE OR REPLACE FUNCTION public.trigger__before_delete_layer() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM public.layer_resource WHERE pk_layer = OLD.pk_layer;
    DELETE FROM public.layer_stat     WHERE pk_layer = OLD.pk_layer;
    DELETE FROM public.layer_usage    WHERE pk_layer = OLD.pk_layer;
    DELETE FROM public.layer_env      WHERE pk_layer = OLD.pk_layer;
    DELETE FROM public.layer_mem      WHERE pk_layer = OLD.pk_layer;
    RETURN OLD;
END;
$fn$;

CREATE OR REPLACE FUNCTION public.trigger__before_delete_layer_drop_limit() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM public.layer_limit WHERE pk_layer = OLD.pk_layer;
    RETURN OLD;
END;
$fn$;

CREATE OR REPLACE TRIGGER after_insert_layer AFTER INSERT ON public.layer
    FOR EACH ROW EXECUTE FUNCTION public.trigger__after_insert_layer();
CREATE OR REPLACE TRIGGER before_delete_layer BEFORE DELETE ON public.layer
    FOR EACH ROW EXECUTE FUNCTION public.trigger__before_delete_layer();
CREATE OR REPLACE TRIGGER before_delete_layer_drop_limit BEFORE DELETE ON public.layer
    FOR EACH ROW EXECUTE FUNCTION public.trigger__before_delete_layer_drop_limit();

-- ---- frame ------------------------------------------------------------------

-- BEFORE INSERT: a frame inserted directly as WAITING becomes eligible now,
-- unless the writer supplied ts_eligible.  No stat count is touched.
CREATE OR REPLACE FUNCTION public.trigger__set_frame_ts_eligible_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.ts_eligible IS NULL AND NEW.str_state = 'WAITING' THEN
        NEW.ts_eligible := current_timestamp;
    END IF;
    RETURN NEW;
END;
$fn$;

-- BEFORE UPDATE SETUP -> WAITING (job activation): eligible now.
CREATE OR REPLACE FUNCTION public.trigger__set_frame_ts_eligible_setup_to_wait() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.ts_eligible := current_timestamp;
    RETURN NEW;
END;
$fn$;

-- BEFORE UPDATE RUNNING -> WAITING of a checkpointing frame: CHECKPOINT instead.
CREATE OR REPLACE FUNCTION public.trigger__update_frame_checkpoint_state() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.str_state := 'CHECKPOINT';
    RETURN NEW;
END;
$fn$;

-- BEFORE UPDATE: the last dependency of a DEPEND frame is satisfied -> WAITING.
CREATE OR REPLACE FUNCTION public.trigger__update_frame_dep_to_wait() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.str_state   := 'WAITING';
    NEW.ts_updated  := current_timestamp;
    NEW.ts_eligible := current_timestamp;
    NEW.int_version := NEW.int_version + 1;
    RETURN NEW;
END;
$fn$;

-- BEFORE UPDATE SUCCEEDED -> EATEN: a succeeded frame stays SUCCEEDED.
CREATE OR REPLACE FUNCTION public.trigger__update_frame_eaten() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.str_state := 'SUCCEEDED';
    RETURN NEW;
END;
$fn$;

-- BEFORE UPDATE: a frame with unsatisfied dependencies cannot be WAITING,
-- DEAD, SUCCEEDED or CHECKPOINT; it is forced to DEPEND.
CREATE OR REPLACE FUNCTION public.trigger__update_frame_wait_to_dep() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.str_state   := 'DEPEND';
    NEW.ts_updated  := current_timestamp;
    NEW.int_version := NEW.int_version + 1;
    RETURN NEW;
END;
$fn$;

-- AFTER UPDATE of the state (not from SETUP): move one unit from the old
-- state's counter to the new state's counter in layer_stat, then job_stat,
-- and stamp the layer's activity window.  Cuebot builds the column names from
-- the state names, so a state without an int_<state>_count column (SETUP, or
-- any unknown value) makes the UPDATE fail; this version raises the same
-- error (SQLSTATE 42703) instead of ignoring it.  Like Cuebot's, the lookup is
-- case-insensitive (unquoted identifiers fold to lower case), and two spellings
-- of the same state fail as Cuebot's statement does (SQLSTATE 42601).
CREATE OR REPLACE FUNCTION public.trigger__update_frame_status_counts() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    o text := upper(OLD.str_state);
    n text := upper(NEW.str_state);
    bad text;
BEGIN
    IF o NOT IN ('WAITING','RUNNING','DEAD','DEPEND','EATEN','SUCCEEDED','CHECKPOINT') THEN
        bad := OLD.str_state;
    ELSIF n NOT IN ('WAITING','RUNNING','DEAD','DEPEND','EATEN','SUCCEEDED','CHECKPOINT') THEN
        bad := NEW.str_state;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'column "int_%_count" does not exist', lower(bad)
            USING ERRCODE = 'undefined_column';
    END IF;
    IF o = n THEN
        -- e.g. 'WAITING' -> 'waiting': Cuebot's statement would assign the
        -- same column twice and fail to parse.
        RAISE EXCEPTION 'multiple assignments to same column "int_%_count"', lower(n)
            USING ERRCODE = 'syntax_error';
    END IF;

    UPDATE public.layer_stat SET
        int_waiting_count    = int_waiting_count    + (n = 'WAITING')::int    - (o = 'WAITING')::int,
        int_running_count    = int_running_count    + (n = 'RUNNING')::int    - (o = 'RUNNING')::int,
        int_dead_count       = int_dead_count       + (n = 'DEAD')::int       - (o = 'DEAD')::int,
        int_depend_count     = int_depend_count     + (n = 'DEPEND')::int     - (o = 'DEPEND')::int,
        int_eaten_count      = int_eaten_count      + (n = 'EATEN')::int      - (o = 'EATEN')::int,
        int_succeeded_count  = int_succeeded_count  + (n = 'SUCCEEDED')::int  - (o = 'SUCCEEDED')::int,
        int_checkpoint_count = int_checkpoint_count + (n = 'CHECKPOINT')::int - (o = 'CHECKPOINT')::int,
        ts_started = CASE WHEN NEW.str_state = 'RUNNING'
                          THEN COALESCE(ts_started, NEW.ts_started, current_timestamp)
                          ELSE ts_started END,
        ts_stopped = CASE WHEN OLD.str_state = 'RUNNING'
                          THEN COALESCE(NEW.ts_stopped, current_timestamp)
                          ELSE ts_stopped END
    WHERE pk_layer = NEW.pk_layer;

    UPDATE public.job_stat SET
        int_waiting_count    = int_waiting_count    + (n = 'WAITING')::int    - (o = 'WAITING')::int,
        int_running_count    = int_running_count    + (n = 'RUNNING')::int    - (o = 'RUNNING')::int,
        int_dead_count       = int_dead_count       + (n = 'DEAD')::int       - (o = 'DEAD')::int,
        int_depend_count     = int_depend_count     + (n = 'DEPEND')::int     - (o = 'DEPEND')::int,
        int_eaten_count      = int_eaten_count      + (n = 'EATEN')::int      - (o = 'EATEN')::int,
        int_succeeded_count  = int_succeeded_count  + (n = 'SUCCEEDED')::int  - (o = 'SUCCEEDED')::int,
        int_checkpoint_count = int_checkpoint_count + (n = 'CHECKPOINT')::int - (o = 'CHECKPOINT')::int
    WHERE pk_job = NEW.pk_job;

    RETURN NULL;
END;
$fn$;

CREATE OR REPLACE TRIGGER set_frame_ts_eligible_on_insert BEFORE INSERT ON public.frame
    FOR EACH ROW EXECUTE FUNCTION public.trigger__set_frame_ts_eligible_on_insert();
CREATE OR REPLACE TRIGGER set_frame_ts_eligible_setup_to_wait BEFORE UPDATE ON public.frame
    FOR EACH ROW WHEN (OLD.str_state = 'SETUP' AND NEW.str_state = 'WAITING')
    EXECUTE FUNCTION public.trigger__set_frame_ts_eligible_setup_to_wait();
CREATE OR REPLACE TRIGGER update_frame_checkpoint_state BEFORE UPDATE ON public.frame
    FOR EACH ROW WHEN (NEW.str_state = 'WAITING' AND OLD.str_state = 'RUNNING'
                       AND NEW.str_checkpoint_state IN ('ENABLED', 'COPYING'))
    EXECUTE FUNCTION public.trigger__update_frame_checkpoint_state();
CREATE OR REPLACE TRIGGER update_frame_dep_to_wait BEFORE UPDATE ON public.frame
    FOR EACH ROW WHEN (OLD.int_depend_count > 0 AND NEW.int_depend_count < 1
                       AND OLD.str_state = 'DEPEND')
    EXECUTE FUNCTION public.trigger__update_frame_dep_to_wait();
CREATE OR REPLACE TRIGGER update_frame_eaten BEFORE UPDATE ON public.frame
    FOR EACH ROW WHEN (NEW.str_state = 'EATEN' AND OLD.str_state = 'SUCCEEDED')
    EXECUTE FUNCTION public.trigger__update_frame_eaten();
CREATE OR REPLACE TRIGGER update_frame_wait_to_dep BEFORE UPDATE ON public.frame
    FOR EACH ROW WHEN (NEW.int_depend_count > 0
                       AND NEW.str_state IN ('DEAD', 'SUCCEEDED', 'WAITING', 'CHECKPOINT'))
    EXECUTE FUNCTION public.trigger__update_frame_wait_to_dep();
CREATE OR REPLACE TRIGGER update_frame_status_counts AFTER UPDATE ON public.frame
    FOR EACH ROW WHEN (OLD.str_state <> 'SETUP' AND OLD.str_state <> NEW.str_state)
    EXECUTE FUNCTION public.trigger__update_frame_status_counts();

-- ---- host -------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.trigger__verify_host_resources() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- All four idle figures are checked, in this order, whichever changed.
    IF NEW.int_cores_idle < 0 THEN
        RAISE EXCEPTION 'unable to allocate additional core units';
    ELSIF NEW.int_mem_idle < 0 THEN
        RAISE EXCEPTION 'unable to allocate additional memory';
    ELSIF NEW.int_gpus_idle < 0 THEN
        RAISE EXCEPTION 'unable to allocate additional GPU units';
    ELSIF NEW.int_gpu_mem_idle < 0 THEN
        RAISE EXCEPTION 'unable to allocate additional GPU memory';
    END IF;
    RETURN NEW;
END;
$fn$;

CREATE OR REPLACE FUNCTION public.trigger__before_delete_host() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM public.host_stat WHERE pk_host = OLD.pk_host;
    DELETE FROM public.host_tag  WHERE pk_host = OLD.pk_host;
    RETURN OLD;
END;
$fn$;

CREATE OR REPLACE TRIGGER verify_host_resources BEFORE UPDATE ON public.host
    FOR EACH ROW
    WHEN (NEW.int_cores_idle <> OLD.int_cores_idle OR NEW.int_mem_idle <> OLD.int_mem_idle
       OR NEW.int_gpus_idle <> OLD.int_gpus_idle OR NEW.int_gpu_mem_idle <> OLD.int_gpu_mem_idle)
    EXECUTE FUNCTION public.trigger__verify_host_resources();
CREATE OR REPLACE TRIGGER before_delete_host BEFORE DELETE ON public.host
    FOR EACH ROW EXECUTE FUNCTION public.trigger__before_delete_host();

-- ---- subscription -----------------------------------------------------------

CREATE OR REPLACE FUNCTION public.trigger__verify_subscription() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Runs only when a booking raised int_cores with int_burst unchanged;
    -- reaching the burst exactly is allowed.
    IF NEW.int_cores > NEW.int_burst THEN
        RAISE EXCEPTION 'subscription has exceeded burst size';
    END IF;
    RETURN NEW;
END;
$fn$;

CREATE OR REPLACE TRIGGER verify_subscription BEFORE UPDATE ON public.subscription
    FOR EACH ROW WHEN (NEW.int_burst = OLD.int_burst AND NEW.int_cores > OLD.int_cores)
    EXECUTE FUNCTION public.trigger__verify_subscription();

-- ---- proc -------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.trigger__before_insert_proc() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.int_cores_reserved <= 0 THEN
        RAISE EXCEPTION 'failed to allocate proc, tried to allocate 0 cores';
    END IF;
    RETURN NEW;
END;
$fn$;

-- A change of a proc's reserved memory is charged to (or refunded to) its
-- host's idle memory; verify_host_resources guards the result.
CREATE OR REPLACE FUNCTION public.trigger__upgrade_proc_memory_usage() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE public.host
       SET int_mem_idle = int_mem_idle - (NEW.int_mem_reserved - OLD.int_mem_reserved)
     WHERE pk_host = NEW.pk_host;
    RETURN NULL;
END;
$fn$;

-- A proc moved to another layer moves its cores/GPUs between the two
-- layer_resource rows (rows taken in descending pk_layer order, as Cuebot
-- does, to keep a consistent lock order).
CREATE OR REPLACE FUNCTION public.trigger__update_proc_update_layer() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    k varchar;
BEGIN
    FOR k IN SELECT ls.pk_layer FROM public.layer_stat ls
              WHERE ls.pk_layer IN (OLD.pk_layer, NEW.pk_layer)
              ORDER BY ls.pk_layer DESC
    LOOP
        IF k = OLD.pk_layer THEN
            UPDATE public.layer_resource
               SET int_cores = int_cores - OLD.int_cores_reserved,
                   int_gpus  = int_gpus  - OLD.int_gpus_reserved
             WHERE pk_layer = k;
        ELSE
            UPDATE public.layer_resource
               SET int_cores = int_cores + NEW.int_cores_reserved,
                   int_gpus  = int_gpus  + NEW.int_gpus_reserved
             WHERE pk_layer = k;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$fn$;

CREATE OR REPLACE TRIGGER before_insert_proc BEFORE INSERT ON public.proc
    FOR EACH ROW EXECUTE FUNCTION public.trigger__before_insert_proc();
CREATE OR REPLACE TRIGGER upgrade_proc_memory_usage AFTER UPDATE ON public.proc
    FOR EACH ROW WHEN (NEW.int_mem_reserved <> OLD.int_mem_reserved)
    EXECUTE FUNCTION public.trigger__upgrade_proc_memory_usage();
CREATE OR REPLACE TRIGGER update_proc_update_layer AFTER UPDATE ON public.proc
    FOR EACH ROW WHEN (NEW.pk_layer <> OLD.pk_layer)
    EXECUTE FUNCTION public.trigger__update_proc_update_layer();

RESET client_min_messages;
