-- tests/sql/smoke.sql -- smoke test of the Cuebot triggers a scheduler relies on.
--
-- Runs unchanged against this project's tests/sql/schema.sql AND against the
-- real Cuebot schema (../shared/cuebot/schema.sql, with or without seed.sql):
--
--     psql -v ON_ERROR_STOP=1 -f tests/sql/smoke.sql DBNAME
--
-- Everything happens in one transaction that ends with ROLLBACK, so the
-- database is left as it was.  A failed check raises an exception (the run
-- stops with a non-zero exit status); deliberately failing statements are run
-- through pg_temp.expect_error(), which checks the error and prints a NOTICE.
-- Ids carry a "smoke-" prefix so they cannot collide with seed rows.

\set ON_ERROR_STOP on
\set QUIET on
SET client_min_messages = notice;
-- Discard the (empty) result rows of the check calls; NOTICEs and errors
-- still go to stderr.
\o /dev/null

BEGIN;

-- ---------------------------------------------------------------- helpers --

-- Fails the run unless ok is true.
CREATE FUNCTION pg_temp.check(ok boolean, what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'SMOKE CHECK FAILED: %', what;
    END IF;
END;
$$;

-- Runs stmt, which must fail with exactly the message msg (and SQLSTATE
-- state); the statement's effects are undone (sub-transaction).
CREATE FUNCTION pg_temp.expect_error(stmt text, msg text, state text DEFAULT 'P0001')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    got_msg text;
    got_state text;
BEGIN
    BEGIN
        EXECUTE stmt;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS got_msg = MESSAGE_TEXT, got_state = RETURNED_SQLSTATE;
    END;
    IF got_msg IS NULL THEN
        RAISE EXCEPTION 'SMOKE CHECK FAILED: no error from: %', stmt;
    END IF;
    IF got_msg <> msg OR got_state <> state THEN
        RAISE EXCEPTION 'SMOKE CHECK FAILED: expected [%] %, got [%] % from: %',
            state, msg, got_state, got_msg, stmt;
    END IF;
    RAISE NOTICE 'expected error [%] %', got_state, got_msg;
END;
$$;

-- ------------------------------------------------------------ fixtures ---

INSERT INTO facility (pk_facility, str_name) VALUES ('smoke-facility', 'smokefac');
INSERT INTO dept (pk_dept, str_name) VALUES ('smoke-dept', 'smokedept');
INSERT INTO show (pk_show, str_name, b_scheduler_managed) VALUES ('smoke-show', 'smokeshow', false);
INSERT INTO show_stats (pk_show) VALUES ('smoke-show');
INSERT INTO alloc (pk_alloc, str_name, str_tag, pk_facility)
    VALUES ('smoke-alloc', 'smokefac.general', 'smokegeneral', 'smoke-facility');
INSERT INTO subscription (pk_subscription, pk_alloc, pk_show, int_size, int_burst)
    VALUES ('smoke-sub', 'smoke-alloc', 'smoke-show', 10000, 20000);

-- Folders: root gets b_default, folder_level (0, then 1) and folder_resource.
INSERT INTO folder (pk_folder, pk_parent_folder, pk_show, str_name, pk_dept)
    VALUES ('smoke-folder-root', NULL, 'smoke-show', 'smokeshow', 'smoke-dept');
INSERT INTO folder (pk_folder, pk_parent_folder, pk_show, str_name, pk_dept)
    VALUES ('smoke-folder', 'smoke-folder-root', 'smoke-show', 'lighting', 'smoke-dept');
SELECT pg_temp.check((SELECT b_default FROM folder WHERE pk_folder = 'smoke-folder-root'),
                     'root folder b_default = true');
SELECT pg_temp.check(NOT (SELECT b_default FROM folder WHERE pk_folder = 'smoke-folder'),
                     'child folder b_default = false');
SELECT pg_temp.check((SELECT int_level FROM folder_level WHERE pk_folder = 'smoke-folder-root') = 0,
                     'root folder_level = 0');
SELECT pg_temp.check((SELECT int_level FROM folder_level WHERE pk_folder_level = 'smoke-folder') = 1,
                     'child folder_level = 1, keyed by pk_folder');
SELECT pg_temp.check((SELECT int_max_cores = -1 AND int_cores = 0 FROM folder_resource
                       WHERE pk_folder_resource = 'smoke-folder' AND pk_folder = 'smoke-folder'),
                     'folder_resource created, key = pk_folder, int_max_cores -1');

INSERT INTO point (pk_point, pk_dept, pk_show) VALUES ('smoke-point', 'smoke-dept', 'smoke-show');

-- Job: after_insert_job creates job_stat/job_resource/job_usage/job_mem.
INSERT INTO job (pk_job, pk_folder, pk_show, pk_facility, pk_dept, str_name, str_visible_name,
                 str_shot, str_user, str_state, str_log_dir)
    VALUES ('smoke-job', 'smoke-folder', 'smoke-show', 'smoke-facility', 'smoke-dept',
            'smokeshow-shot-user_job', 'smokeshow-shot-user_job', 'shot', 'user', 'PENDING', '/tmp/smoke');
SELECT pg_temp.check((SELECT count(*) FROM job_stat WHERE pk_job_stat = 'smoke-job' AND pk_job = 'smoke-job') = 1,
                     'job_stat row keyed by pk_job');
SELECT pg_temp.check((SELECT int_max_cores = 10000 AND int_min_cores = 100 AND int_max_gpus = 100
                             AND int_priority = 1 AND int_cores = 0
                        FROM job_resource WHERE pk_job_resource = 'smoke-job'),
                     'job_resource row with defaults (max 10000)');
SELECT pg_temp.check((SELECT count(*) FROM job_usage WHERE pk_job_usage = 'smoke-job') = 1, 'job_usage row');
SELECT pg_temp.check((SELECT count(*) FROM job_mem WHERE pk_job_mem = 'smoke-job') = 1, 'job_mem row');

-- Layer: after_insert_layer creates layer_stat/layer_resource/layer_usage/layer_mem.
INSERT INTO layer (pk_layer, pk_job, str_name, str_cmd, str_range, str_type, str_tags,
                   int_cores_min, int_mem_min)
    VALUES ('smoke-layer', 'smoke-job', 'render', 'echo #IFRAME#', '1-3', 'RENDER',
            'smokegeneral | desktop', 100, 1048576);
SELECT pg_temp.check((SELECT count(*) FROM layer_stat
                       WHERE pk_layer_stat = 'smoke-layer' AND pk_layer = 'smoke-layer' AND pk_job = 'smoke-job') = 1,
                     'layer_stat row keyed by pk_layer');
SELECT pg_temp.check((SELECT count(*) FROM layer_resource WHERE pk_layer_resource = 'smoke-layer' AND pk_job = 'smoke-job') = 1,
                     'layer_resource row');
SELECT pg_temp.check((SELECT count(*) FROM layer_usage WHERE pk_layer_usage = 'smoke-layer') = 1, 'layer_usage row');
SELECT pg_temp.check((SELECT count(*) FROM layer_mem WHERE pk_layer_mem = 'smoke-layer') = 1, 'layer_mem row');
-- Tag overlap expression (the one idx_layer_tags_array indexes).
SELECT pg_temp.check((SELECT string_to_array(replace(str_tags, ' ', ''), '|') && ARRAY['desktop']
                        FROM layer WHERE pk_layer = 'smoke-layer'),
                     'layer tags overlap');

-- Three WAITING frames; ts_eligible set on insert, stat counts written by hand
-- (as a seeder must: inserts do not touch the counters).
INSERT INTO frame (pk_frame, pk_layer, pk_job, str_name, str_state, int_number,
                   int_dispatch_order, int_layer_order)
    VALUES ('smoke-frame-1', 'smoke-layer', 'smoke-job', '0001-render', 'WAITING', 1, 0, 1),
           ('smoke-frame-2', 'smoke-layer', 'smoke-job', '0002-render', 'WAITING', 2, 1, 1),
           ('smoke-frame-3', 'smoke-layer', 'smoke-job', '0003-render', 'WAITING', 3, 2, 1);
SELECT pg_temp.check((SELECT bool_and(ts_eligible = current_timestamp) FROM frame WHERE pk_job = 'smoke-job'),
                     'ts_eligible set on insert of WAITING frames');
SELECT pg_temp.check((SELECT int_waiting_count FROM layer_stat WHERE pk_layer = 'smoke-layer') = 0,
                     'frame insert does not touch layer_stat');
UPDATE layer_stat SET int_total_count = 3, int_waiting_count = 3 WHERE pk_layer = 'smoke-layer';
UPDATE job_stat SET int_waiting_count = 3 WHERE pk_job = 'smoke-job';
UPDATE job SET int_frame_count = 3, int_layer_count = 1 WHERE pk_job = 'smoke-job';

-- Host, host_stat, tags.
INSERT INTO host (pk_host, pk_alloc, str_name, str_lock_state, int_cores, int_cores_idle,
                  int_mem, int_mem_idle, int_gpus, int_gpus_idle, int_gpu_mem, int_gpu_mem_idle)
    VALUES ('smoke-host', 'smoke-alloc', 'smoke-host-01', 'OPEN', 800, 800,
            15728640, 15728640, 1, 1, 1048576, 1048576);
INSERT INTO host_stat (pk_host_stat, pk_host, int_mem_total, int_mem_free, int_gpu_mem_total, int_gpu_mem_free)
    VALUES ('smoke-host', 'smoke-host', 16777216, 16000000, 1048576, 1048576);
INSERT INTO host_tag (pk_host_tag, pk_host, str_tag, str_tag_type, b_constant) VALUES
    ('smoke-tag-1', 'smoke-host', 'smokegeneral', 'ALLOC', true),
    ('smoke-tag-2', 'smoke-host', 'smoke-host-01', 'HOSTNAME', false),
    ('smoke-tag-3', 'smoke-host', 'desktop', 'MANUAL', false),
    ('smoke-tag-4', 'smoke-host', '64bit', 'HARDWARE', false),
    ('smoke-tag-5', 'smoke-host', 'linux', 'HARDWARE', false);
SELECT recalculate_tags('smoke-host');
SELECT pg_temp.check((SELECT str_tags FROM host WHERE pk_host = 'smoke-host')
                     = 'smokegeneral 64bit linux smoke-host-01 desktop',
                     'recalculate_tags: ordered by (str_tag_type, str_tag), space separated');

-- ------------------------------------------ book frame 1 (Cuebot's writes) --

UPDATE frame SET str_state = 'RUNNING', str_host = 'smoke-host-01', int_cores = 100,
                 int_mem_reserved = 1048576, int_gpus = 0, int_gpu_mem_reserved = 0,
                 ts_updated = current_timestamp, ts_started = current_timestamp, ts_stopped = NULL,
                 int_version = int_version + 1
 WHERE pk_frame = 'smoke-frame-1' AND str_state = 'WAITING' AND int_version = 0;
UPDATE frame SET int_retries = int_retries + 1
 WHERE pk_frame = 'smoke-frame-1' AND int_exit_status <> ALL ('{-1,256,286,299,301,302,399}');
INSERT INTO proc (pk_proc, pk_host, pk_show, pk_layer, pk_job, pk_frame, int_cores_reserved,
                  int_mem_reserved, int_mem_pre_reserved, int_mem_used, int_gpus_reserved,
                  int_gpu_mem_reserved, int_gpu_mem_pre_reserved, int_gpu_mem_used, b_local)
    VALUES ('smoke-proc-1', 'smoke-host', 'smoke-show', 'smoke-layer', 'smoke-job', 'smoke-frame-1',
            100, 1048576, 1048576, 262144, 0, 0, 0, 0, false);
UPDATE host SET int_cores_idle = int_cores_idle - 100, int_mem_idle = int_mem_idle - 1048576
 WHERE pk_host = 'smoke-host' AND int_cores_idle >= 100 AND int_mem_idle >= 1048576;
UPDATE subscription SET int_cores = int_cores + 100 WHERE pk_show = 'smoke-show' AND pk_alloc = 'smoke-alloc';
UPDATE layer_resource SET int_cores = int_cores + 100 WHERE pk_layer = 'smoke-layer';
UPDATE job_resource SET int_cores = int_cores + 100 WHERE pk_job = 'smoke-job';
UPDATE folder_resource SET int_cores = int_cores + 100 WHERE pk_folder = 'smoke-folder';
UPDATE point SET int_cores = int_cores + 100 WHERE pk_dept = 'smoke-dept' AND pk_show = 'smoke-show';

SELECT pg_temp.check((SELECT int_waiting_count = 2 AND int_running_count = 1
                             AND ts_started = current_timestamp AND ts_stopped IS NULL
                        FROM layer_stat WHERE pk_layer = 'smoke-layer'),
                     'layer_stat after WAITING->RUNNING: waiting 2, running 1, ts_started');
SELECT pg_temp.check((SELECT int_waiting_count = 2 AND int_running_count = 1
                        FROM job_stat WHERE pk_job = 'smoke-job'),
                     'job_stat after WAITING->RUNNING: waiting 2, running 1');
SELECT pg_temp.check((SELECT int_version = 1 AND int_retries = 0 FROM frame WHERE pk_frame = 'smoke-frame-1'),
                     'frame version 1, no retry consumed (exit status -1)');
SELECT pg_temp.check((SELECT int_cores_idle = 700 FROM host WHERE pk_host = 'smoke-host'), 'host idle 700');

-- ---------------------------------------------------- guard triggers ------

-- proc with 0 cores
SELECT pg_temp.expect_error(
    $$INSERT INTO proc (pk_proc, pk_host, pk_frame, int_cores_reserved, int_mem_reserved)
      VALUES ('smoke-proc-0', 'smoke-host', 'smoke-frame-2', 0, 0)$$,
    'failed to allocate proc, tried to allocate 0 cores');
-- a second proc for the same frame: unique violation on c_proc_uk
SELECT pg_temp.expect_error(
    $$INSERT INTO proc (pk_proc, pk_host, pk_frame, int_cores_reserved, int_mem_reserved)
      VALUES ('smoke-proc-dup', 'smoke-host', 'smoke-frame-1', 100, 0)$$,
    'duplicate key value violates unique constraint "c_proc_uk"', '23505');

-- host idle going negative, and the order of the checks
SELECT pg_temp.expect_error(
    $$UPDATE host SET int_cores_idle = int_cores_idle - 800 WHERE pk_host = 'smoke-host'$$,
    'unable to allocate additional core units');
SELECT pg_temp.expect_error(
    $$UPDATE host SET int_mem_idle = -1 WHERE pk_host = 'smoke-host'$$,
    'unable to allocate additional memory');
SELECT pg_temp.expect_error(
    $$UPDATE host SET int_gpus_idle = -1 WHERE pk_host = 'smoke-host'$$,
    'unable to allocate additional GPU units');
SELECT pg_temp.expect_error(
    $$UPDATE host SET int_gpu_mem_idle = -1 WHERE pk_host = 'smoke-host'$$,
    'unable to allocate additional GPU memory');
SELECT pg_temp.expect_error(
    $$UPDATE host SET int_gpu_mem_idle = -1, int_mem_idle = -1, int_cores_idle = -1 WHERE pk_host = 'smoke-host'$$,
    'unable to allocate additional core units');
-- the guarded form the scheduler uses: 0 rows, no error
SELECT pg_temp.check(NOT EXISTS (
    SELECT 1 FROM host WHERE pk_host = 'smoke-host' AND int_cores_idle >= 800), 'guarded host update matches no row');

-- subscription burst (20000): reaching it is allowed, exceeding it is not,
-- and changing int_burst in the same UPDATE bypasses the check
SELECT pg_temp.expect_error(
    $$UPDATE subscription SET int_cores = int_cores + 19901 WHERE pk_subscription = 'smoke-sub'$$,
    'subscription has exceeded burst size');
SAVEPOINT sp_sub;
UPDATE subscription SET int_cores = int_cores + 19900 WHERE pk_subscription = 'smoke-sub';
UPDATE subscription SET int_cores = int_cores + 500, int_burst = int_burst + 1 WHERE pk_subscription = 'smoke-sub';
ROLLBACK TO SAVEPOINT sp_sub;
-- burst 0 = frozen
SELECT pg_temp.expect_error(
    $$UPDATE subscription SET int_burst = 0 WHERE pk_subscription = 'smoke-sub';
      UPDATE subscription SET int_cores = int_cores + 1 WHERE pk_subscription = 'smoke-sub'$$,
    'subscription has exceeded burst size');

-- job max cores (10000) / max GPUs (100)
SELECT pg_temp.expect_error(
    $$UPDATE job_resource SET int_cores = int_cores + 9901 WHERE pk_job = 'smoke-job'$$,
    'job has exceeded max cores');
SELECT pg_temp.expect_error(
    $$UPDATE job_resource SET int_gpus = 101 WHERE pk_job = 'smoke-job'$$,
    'job has exceeded max GPU units');
SAVEPOINT sp_job;
UPDATE job_resource SET int_cores = int_cores + 9900 WHERE pk_job = 'smoke-job';   -- exactly the cap
ROLLBACK TO SAVEPOINT sp_job;

-- ------------------------------------------ release frame 1 (Cuebot's writes)

UPDATE frame SET str_state = 'WAITING', int_exit_status = 1,
                 ts_stopped = current_timestamp + interval '1 second', ts_updated = current_timestamp,
                 int_version = int_version + 1
 WHERE pk_frame = 'smoke-frame-1' AND str_state = 'RUNNING' AND int_version = 1;
UPDATE proc SET pk_frame = NULL WHERE pk_frame = 'smoke-frame-1';
DELETE FROM proc WHERE pk_proc = 'smoke-proc-1';
UPDATE host SET int_cores_idle = int_cores_idle + 100, int_mem_idle = int_mem_idle + 1048576
 WHERE pk_host = 'smoke-host';
UPDATE subscription SET int_cores = int_cores - 100 WHERE pk_show = 'smoke-show' AND pk_alloc = 'smoke-alloc';
UPDATE layer_resource SET int_cores = int_cores - 100 WHERE pk_layer = 'smoke-layer';
UPDATE job_resource SET int_cores = int_cores - 100 WHERE pk_job = 'smoke-job';
UPDATE folder_resource SET int_cores = int_cores - 100 WHERE pk_folder = 'smoke-folder';
UPDATE point SET int_cores = int_cores - 100 WHERE pk_dept = 'smoke-dept' AND pk_show = 'smoke-show';

SELECT pg_temp.check((SELECT int_waiting_count = 3 AND int_running_count = 0
                             AND ts_stopped = current_timestamp + interval '1 second'
                        FROM layer_stat WHERE pk_layer = 'smoke-layer'),
                     'layer_stat after RUNNING->WAITING: waiting 3, running 0, ts_stopped = frame ts_stopped');
SELECT pg_temp.check((SELECT int_waiting_count = 3 AND int_running_count = 0
                        FROM job_stat WHERE pk_job = 'smoke-job'),
                     'job_stat after RUNNING->WAITING: waiting 3, running 0');
SELECT pg_temp.check((SELECT int_cores_idle = 800 AND int_mem_idle = 15728640 FROM host WHERE pk_host = 'smoke-host'),
                     'host idle restored');
SELECT pg_temp.check((SELECT s.int_cores + lr.int_cores + jr.int_cores + fr.int_cores + p.int_cores = 0
                        FROM subscription s, layer_resource lr, job_resource jr, folder_resource fr, point p
                       WHERE s.pk_subscription = 'smoke-sub' AND lr.pk_layer = 'smoke-layer'
                         AND jr.pk_job = 'smoke-job' AND fr.pk_folder = 'smoke-folder' AND p.pk_point = 'smoke-point'),
                     'rollups back to 0');

-- ------------------------------------------------ frame state rewrites -----

-- RUNNING -> WAITING of a checkpointing frame becomes CHECKPOINT.
UPDATE frame SET str_state = 'RUNNING', str_host = 'smoke-host-01', ts_started = current_timestamp,
                 str_checkpoint_state = 'ENABLED', int_version = int_version + 1
 WHERE pk_frame = 'smoke-frame-2';
UPDATE frame SET str_state = 'WAITING', int_exit_status = 1, ts_stopped = current_timestamp,
                 int_version = int_version + 1
 WHERE pk_frame = 'smoke-frame-2';
SELECT pg_temp.check((SELECT str_state FROM frame WHERE pk_frame = 'smoke-frame-2') = 'CHECKPOINT',
                     'RUNNING->WAITING with checkpoint ENABLED becomes CHECKPOINT');
SELECT pg_temp.check((SELECT int_waiting_count = 2 AND int_checkpoint_count = 1 AND int_running_count = 0
                        FROM layer_stat WHERE pk_layer = 'smoke-layer'),
                     'layer_stat counts CHECKPOINT');

-- A WAITING frame given a dependency becomes DEPEND (version + 1) ...
UPDATE frame SET int_depend_count = 1 WHERE pk_frame = 'smoke-frame-3';
SELECT pg_temp.check((SELECT str_state = 'DEPEND' AND int_version = 1 AND ts_updated = current_timestamp
                        FROM frame WHERE pk_frame = 'smoke-frame-3'),
                     'WAITING with int_depend_count > 0 becomes DEPEND, version + 1');
-- ... and WAITING again (version + 1, ts_eligible now) once satisfied.
UPDATE frame SET int_depend_count = 0 WHERE pk_frame = 'smoke-frame-3';
SELECT pg_temp.check((SELECT str_state = 'WAITING' AND int_version = 2 AND ts_eligible = current_timestamp
                        FROM frame WHERE pk_frame = 'smoke-frame-3'),
                     'DEPEND with int_depend_count 0 becomes WAITING, version + 1');
SELECT pg_temp.check((SELECT int_waiting_count = 2 AND int_depend_count = 0 FROM job_stat WHERE pk_job = 'smoke-job'),
                     'job_stat after DEPEND round trip');

-- SUCCEEDED -> EATEN stays SUCCEEDED.
UPDATE frame SET str_state = 'SUCCEEDED', int_exit_status = 0 WHERE pk_frame = 'smoke-frame-3';
UPDATE frame SET str_state = 'EATEN' WHERE pk_frame = 'smoke-frame-3';
SELECT pg_temp.check((SELECT str_state FROM frame WHERE pk_frame = 'smoke-frame-3') = 'SUCCEEDED',
                     'SUCCEEDED->EATEN stays SUCCEEDED');
SELECT pg_temp.check((SELECT int_succeeded_count = 1 AND int_eaten_count = 0 AND int_waiting_count = 1
                        FROM layer_stat WHERE pk_layer = 'smoke-layer'),
                     'layer_stat after SUCCEEDED');

-- Moving a frame into SETUP (or any state without a counter column) fails.
SELECT pg_temp.expect_error(
    $$UPDATE frame SET str_state = 'SETUP' WHERE pk_frame = 'smoke-frame-1'$$,
    'column "int_setup_count" does not exist', '42703');

-- SETUP -> WAITING sets ts_eligible and changes no counter.
INSERT INTO frame (pk_frame, pk_layer, pk_job, str_name, str_state, int_number, int_dispatch_order,
                   int_layer_order, ts_eligible)
    VALUES ('smoke-frame-4', 'smoke-layer', 'smoke-job', '0004-render', 'SETUP', 4, 3, 1, NULL);
SELECT pg_temp.check((SELECT ts_eligible IS NULL FROM frame WHERE pk_frame = 'smoke-frame-4'),
                     'SETUP frame inserted without ts_eligible');
UPDATE frame SET str_state = 'WAITING' WHERE pk_frame = 'smoke-frame-4';
SELECT pg_temp.check((SELECT ts_eligible = current_timestamp FROM frame WHERE pk_frame = 'smoke-frame-4'),
                     'SETUP->WAITING sets ts_eligible');
SELECT pg_temp.check((SELECT int_waiting_count = 1 FROM layer_stat WHERE pk_layer = 'smoke-layer'),
                     'SETUP->WAITING changes no counter');

-- Real Cuebot only: the frame history written by frame_history_open.
DO $$
DECLARE n integer;
BEGIN
    IF to_regclass('public.frame_history') IS NOT NULL THEN
        EXECUTE $q$SELECT count(*) FROM frame_history
                   WHERE pk_frame IN ('smoke-frame-1','smoke-frame-2') AND pk_alloc = 'smoke-alloc'$q$ INTO n;
        RAISE NOTICE 'frame_history rows for the two runs (real schema only): %', n;
    END IF;
END;
$$;

ROLLBACK;
\o
\echo 'smoke.sql: all checks passed (rolled back)'
