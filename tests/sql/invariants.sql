-- The project's own consistency checks, used when ../shared/cuebot/invariants.sql is absent.
-- Every row returned is a violation: (check, object, expected, actual).
WITH counts AS (
    SELECT pk_layer, pk_job,
           count(*) FILTER (WHERE str_state = 'WAITING') AS waiting,
           count(*) FILTER (WHERE str_state = 'RUNNING') AS running
    FROM frame GROUP BY pk_layer, pk_job
), procs AS (
    SELECT p.*, h.pk_alloc FROM proc p JOIN host h USING (pk_host)
)
SELECT 'layer_stat.int_running_count'::text AS check_name, ls.pk_layer::text AS object,
       COALESCE(c.running, 0)::bigint AS expected, ls.int_running_count::bigint AS actual
FROM layer_stat ls LEFT JOIN counts c USING (pk_layer)
WHERE COALESCE(c.running, 0) <> ls.int_running_count
UNION ALL
SELECT 'layer_stat.int_waiting_count', ls.pk_layer, COALESCE(c.waiting, 0), ls.int_waiting_count
FROM layer_stat ls LEFT JOIN counts c USING (pk_layer)
WHERE COALESCE(c.waiting, 0) <> ls.int_waiting_count
UNION ALL
SELECT 'job_stat.int_running_count', js.pk_job, COALESCE(sum(c.running), 0)::bigint, js.int_running_count
FROM job_stat js LEFT JOIN counts c USING (pk_job)
GROUP BY js.pk_job, js.int_running_count HAVING COALESCE(sum(c.running), 0) <> js.int_running_count
UNION ALL
SELECT 'host.int_cores_idle', h.str_name, h.int_cores - COALESCE(sum(p.int_cores_reserved), 0), h.int_cores_idle
FROM host h LEFT JOIN proc p USING (pk_host)
GROUP BY h.pk_host HAVING h.int_cores - COALESCE(sum(p.int_cores_reserved), 0) <> h.int_cores_idle
UNION ALL
SELECT 'host.int_mem_idle', h.str_name, h.int_mem - COALESCE(sum(p.int_mem_reserved), 0), h.int_mem_idle
FROM host h LEFT JOIN proc p USING (pk_host)
GROUP BY h.pk_host HAVING h.int_mem - COALESCE(sum(p.int_mem_reserved), 0) <> h.int_mem_idle
UNION ALL
SELECT 'host.int_gpus_idle', h.str_name, h.int_gpus - COALESCE(sum(p.int_gpus_reserved), 0), h.int_gpus_idle
FROM host h LEFT JOIN proc p USING (pk_host)
GROUP BY h.pk_host HAVING h.int_gpus - COALESCE(sum(p.int_gpus_reserved), 0) <> h.int_gpus_idle
UNION ALL
SELECT 'proc.frame_not_running', p.pk_proc, 1, 0
FROM proc p LEFT JOIN frame f ON f.pk_frame = p.pk_frame
WHERE p.pk_frame IS NOT NULL AND f.str_state IS DISTINCT FROM 'RUNNING'
UNION ALL
SELECT 'frame.running_without_proc', f.pk_frame, 1, 0
FROM frame f WHERE f.str_state = 'RUNNING' AND NOT EXISTS (SELECT 1 FROM proc p WHERE p.pk_frame = f.pk_frame)
UNION ALL
SELECT 'job_resource.int_cores', jr.pk_job, COALESCE(sum(p.int_cores_reserved), 0)::bigint, jr.int_cores
FROM job_resource jr LEFT JOIN procs p ON p.pk_job = jr.pk_job AND NOT p.b_local
GROUP BY jr.pk_job, jr.int_cores HAVING COALESCE(sum(p.int_cores_reserved), 0) <> jr.int_cores
UNION ALL
SELECT 'layer_resource.int_cores', lr.pk_layer, COALESCE(sum(p.int_cores_reserved), 0)::bigint, lr.int_cores
FROM layer_resource lr LEFT JOIN procs p ON p.pk_layer = lr.pk_layer
GROUP BY lr.pk_layer, lr.int_cores HAVING COALESCE(sum(p.int_cores_reserved), 0) <> lr.int_cores
UNION ALL
SELECT 'folder_resource.int_cores', fr.pk_folder, COALESCE(sum(p.int_cores_reserved), 0)::bigint, fr.int_cores
FROM folder_resource fr LEFT JOIN job j ON j.pk_folder = fr.pk_folder LEFT JOIN procs p ON p.pk_job = j.pk_job AND NOT p.b_local
GROUP BY fr.pk_folder, fr.int_cores HAVING COALESCE(sum(p.int_cores_reserved), 0) <> fr.int_cores
UNION ALL
SELECT 'subscription.int_cores', s.pk_subscription, COALESCE(sum(p.int_cores_reserved), 0)::bigint, s.int_cores
FROM subscription s LEFT JOIN procs p ON p.pk_show = s.pk_show AND p.pk_alloc = s.pk_alloc AND NOT p.b_local
GROUP BY s.pk_subscription, s.int_cores HAVING COALESCE(sum(p.int_cores_reserved), 0) <> s.int_cores
UNION ALL
SELECT 'point.int_cores', pt.pk_point, COALESCE(sum(p.int_cores_reserved), 0)::bigint, pt.int_cores
FROM point pt LEFT JOIN job j ON j.pk_show = pt.pk_show AND j.pk_dept = pt.pk_dept
LEFT JOIN procs p ON p.pk_job = j.pk_job AND NOT p.b_local
GROUP BY pt.pk_point, pt.int_cores HAVING COALESCE(sum(p.int_cores_reserved), 0) <> pt.int_cores
ORDER BY 1, 2;
