//! Cuebot's frame-completion writes (cuebot-database.md §6), replayed by the demo and the
//! benchmarks when a simulated RQD finishes a frame: stop the frame (Cuebot's new-state rule),
//! then unbook the proc — host idle restored and the five rollups decremented — and record
//! the host's report (`host_stat.ts_ping`), in two transactions as Cuebot does.

use postgres::Client;

/// How a simulated frame ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub exit_status: i32,
    pub run_secs: i64,
    pub max_rss_kib: i64,
}

/// What the frame became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    Frame { state: String },
    /// The proc no longer owned the frame (already released, or compensated): report ignored.
    Ignored,
}

fn db_err(context: &str) -> impl Fn(postgres::Error) -> String + '_ {
    move |e| match e.as_db_error() {
        Some(db) => format!("{context}: {}", db.message()),
        None => format!("{context}: {e}"),
    }
}

/// Applies a completion report for `frame_id` run by proc `proc_id`.
pub fn complete_frame(client: &mut Client, frame_id: &str, proc_id: &str, done: Completion) -> Result<Released, String> {
    let state = {
        let mut txn = client.transaction().map_err(db_err("begin stop"))?;
        let row = txn
            .query_opt(
                "SELECT f.int_version, f.int_retries, j.int_max_retries::bigint, j.b_autoeat
                 FROM frame f JOIN job j ON j.pk_job = f.pk_job JOIN proc p ON p.pk_frame = f.pk_frame
                 WHERE f.pk_frame = $1 AND p.pk_proc = $2 AND f.str_state = 'RUNNING'
                 FOR UPDATE OF f",
                &[&frame_id, &proc_id],
            )
            .map_err(db_err("read frame"))?;
        let Some(row) = row else {
            txn.rollback().map_err(db_err("rollback"))?;
            return Ok(Released::Ignored);
        };
        let (version, retries, max_retries, autoeat): (Option<i32>, i64, i64, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let state = new_state(done.exit_status, retries, max_retries, autoeat);
        let changed = txn
            .execute(
                "UPDATE frame SET str_state = $2, int_exit_status = $3, ts_stopped = now() + interval '1 second',
                        ts_updated = now(), int_mem_max_used = $4, int_version = int_version + 1,
                        int_total_past_core_time = int_total_past_core_time
                            + round(extract(epoch FROM (now() + interval '1 second' - COALESCE(ts_started, now()))) * int_cores / 100)::int
                 WHERE pk_frame = $1 AND str_state = 'RUNNING' AND int_version IS NOT DISTINCT FROM $5",
                &[&frame_id, &state, &i64::from(done.exit_status), &done.max_rss_kib, &version],
            )
            .map_err(db_err("stop frame"))?;
        if changed == 1 {
            txn.execute("UPDATE proc SET pk_frame = NULL WHERE pk_frame = $1", &[&frame_id]).map_err(db_err("detach proc"))?;
        }
        txn.commit().map_err(db_err("commit stop"))?;
        if changed == 0 {
            return Ok(Released::Ignored);
        }
        state
    };
    unbook_proc(client, proc_id)?;
    Ok(Released::Frame { state })
}

/// Cuebot's rule (§6.2), for the statuses a simulation produces.
pub fn new_state(exit_status: i32, retries: i64, max_retries: i64, autoeat: bool) -> String {
    let state = if exit_status == 0 {
        "SUCCEEDED"
    } else if exit_status == 286 || (exit_status == 256 && retries < max_retries) {
        "WAITING"
    } else if autoeat {
        "EATEN"
    } else if retries >= max_retries && exit_status != 33 {
        "DEAD"
    } else {
        "WAITING"
    };
    state.to_string()
}

/// Transaction 2 of a release: delete the proc, restore the host, decrement the rollups.
pub fn unbook_proc(client: &mut Client, proc_id: &str) -> Result<(), String> {
    let mut txn = client.transaction().map_err(db_err("begin unbook"))?;
    let row = txn
        .query_opt(
            "DELETE FROM proc WHERE pk_proc = $1
             RETURNING pk_host::text, pk_show::text, pk_layer::text, pk_job::text,
                       int_cores_reserved, int_mem_reserved, int_gpus_reserved::bigint, int_gpu_mem_reserved",
            &[&proc_id],
        )
        .map_err(db_err("delete proc"))?;
    let Some(row) = row else {
        txn.rollback().map_err(db_err("rollback"))?;
        return Ok(());
    };
    let (host, show, layer, job): (String, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let (cores, mem, gpus, gpu_mem): (i64, i64, i64, i64) = (row.get(4), row.get(5), row.get(6), row.get(7));
    txn.execute(
        "UPDATE host SET int_cores_idle = int_cores_idle + $2, int_mem_idle = int_mem_idle + $3,
                int_gpus_idle = int_gpus_idle + $4, int_gpu_mem_idle = int_gpu_mem_idle + $5 WHERE pk_host = $1",
        &[&host, &cores, &mem, &gpus, &gpu_mem],
    )
    .map_err(db_err("restore host"))?;
    txn.execute(
        "UPDATE subscription SET int_cores = int_cores - $3::bigint, int_gpus = int_gpus - $4::bigint
         WHERE pk_show = $2 AND pk_alloc = (SELECT pk_alloc FROM host WHERE pk_host = $1)",
        &[&host, &show, &cores, &gpus],
    )
    .map_err(db_err("subscription"))?;
    let rollups: [(&str, &str); 4] = [
        ("UPDATE layer_resource SET int_cores = int_cores - $2::bigint, int_gpus = int_gpus - $3::bigint WHERE pk_layer = $1", "layer_resource"),
        ("UPDATE job_resource SET int_cores = int_cores - $2::bigint, int_gpus = int_gpus - $3::bigint WHERE pk_job = $1", "job_resource"),
        ("UPDATE folder_resource SET int_cores = int_cores - $2::bigint, int_gpus = int_gpus - $3::bigint
          WHERE pk_folder = (SELECT pk_folder FROM job WHERE pk_job = $1)", "folder_resource"),
        ("UPDATE point SET int_cores = int_cores - $2::bigint, int_gpus = int_gpus - $3::bigint
          WHERE (pk_dept, pk_show) = (SELECT pk_dept, pk_show FROM job WHERE pk_job = $1)", "point"),
    ];
    for (i, (sql, what)) in rollups.iter().enumerate() {
        let key = if i == 0 { &layer } else { &job };
        txn.execute(*sql, &[key, &cores, &gpus]).map_err(db_err(what))?;
    }
    txn.execute(
        "UPDATE host_stat SET ts_ping = now(), int_mem_free = LEAST(int_mem_total, int_mem_free + $2::bigint) WHERE pk_host = $1",
        &[&host, &mem],
    )
    .map_err(db_err("host report"))?;
    txn.commit().map_err(db_err("commit unbook"))
}

#[cfg(test)]
mod tests {
    use super::new_state;

    #[test]
    fn cuebot_state_rule() {
        let cases = [
            (0, 0, 3, false, "SUCCEEDED"),
            (256, 1, 3, false, "WAITING"),
            (1, 3, 3, false, "DEAD"),
            (1, 1, 3, false, "WAITING"),
            (1, 1, 3, true, "EATEN"),
            (33, 3, 3, false, "WAITING"),
            (286, 9, 3, false, "WAITING"),
        ];
        for (exit, retries, max, autoeat, want) in cases {
            assert_eq!(new_state(exit, retries, max, autoeat), want, "exit {exit} retries {retries}");
        }
    }
}
