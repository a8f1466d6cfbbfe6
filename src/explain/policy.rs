//! `explain`'s view of the scheduling policy: the job's show against its fair-share
//! entitlement on each pool (from the database, as the running scheduler computes it), hosts
//! held for the job's frames (from the running scheduler's `/policy` page: holds live only in
//! its memory), and why the job waits: fair share, reservation pending, licence.

use super::{Obj, json_array, json_string};
use crate::config::settings::Settings;
use crate::matching::policy::{self, PolicyName, Pool, ShowUse};
use crate::model::CORE_UNITS_PER_CORE;
use postgres::Client;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest `/policy` page read from the scheduler.
const POLICY_PAGE_BYTES_MAX: u64 = 1024 * 1024;
/// How long `explain` waits for the scheduler's `/policy` page.
const POLICY_PAGE_TIMEOUT_MS: u64 = 2_000;

#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDiagnosis {
    pub name: String,
    pub shares: Vec<ShareLine>,
    pub holds: Vec<HoldLine>,
    /// Why holds are unknown (no scheduler answered), if so.
    pub holds_unknown: Option<String>,
    /// `fair_share`, `reservation_pending`, `licence`.
    pub waiting_for: Vec<&'static str>,
}

/// The job's show on one pool, core units.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareLine {
    pub alloc: String,
    pub size: i64,
    pub used: i64,
    pub entitled: i64,
    /// Policy smart would hold the show to its share now (another demanding show is short).
    pub held_to_share: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HoldLine {
    pub host: String,
    pub layer: String,
    pub frame: String,
    pub cores: i64,
    pub held_for_secs: f64,
    pub due_in_secs: f64,
}

/// The subscriptions on every pool the show subscribes to: (alloc id, alloc name, show id,
/// size, cores, core units its waiting frames need, the pool's open cores and idle cores).
const SHARES_SQL: &str = "
    SELECT s.pk_alloc::text, a.str_name::text, s.pk_show::text, s.int_size::bigint, s.int_cores::bigint,
           (SELECT COALESCE(sum(GREATEST(l.int_cores_min, 100) * ls.int_waiting_count), 0)::bigint
            FROM job j JOIN layer l ON l.pk_job = j.pk_job JOIN layer_stat ls ON ls.pk_layer = l.pk_layer
            WHERE j.pk_show = s.pk_show AND j.str_state = 'PENDING' AND NOT j.b_paused AND ls.int_waiting_count > 0),
           (SELECT COALESCE(sum(h.int_cores), 0)::bigint FROM host h WHERE h.pk_alloc = s.pk_alloc AND h.str_lock_state = 'OPEN'),
           (SELECT COALESCE(sum(h.int_cores_idle), 0)::bigint FROM host h WHERE h.pk_alloc = s.pk_alloc AND h.str_lock_state = 'OPEN')
    FROM subscription s JOIN alloc a ON a.pk_alloc = s.pk_alloc
    WHERE s.pk_alloc IN (SELECT pk_alloc FROM subscription WHERE pk_show = $1)
    ORDER BY a.str_name, s.pk_show
    LIMIT 10000";

pub fn diagnose(client: &mut Client, settings: &Settings, show_id: &str, job_id: &str, licence_blocked: bool) -> Result<PolicyDiagnosis, String> {
    let smart = settings.scheduling.name == PolicyName::Smart;
    let shares = read_shares(client, show_id, settings.scheduling.fair_share_tolerance)?;
    let (holds, holds_unknown) = match fetch_holds(settings) {
        Ok(lines) => (lines.into_iter().filter(|(job, _)| job == job_id).map(|(_, h)| h).collect(), None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let mut waiting_for = Vec::new();
    if smart && shares.iter().any(|s| s.held_to_share) {
        waiting_for.push("fair_share");
    }
    if !holds.is_empty() {
        waiting_for.push("reservation_pending");
    }
    if licence_blocked {
        waiting_for.push("licence");
    }
    Ok(PolicyDiagnosis { name: settings.scheduling.name.name().to_string(), shares, holds, holds_unknown, waiting_for })
}

fn read_shares(client: &mut Client, show_id: &str, tolerance: f64) -> Result<Vec<ShareLine>, String> {
    let rows = client.query(SHARES_SQL, &[&show_id]).map_err(super::db_err("read subscriptions"))?;
    // alloc id → (name, pool cores, shows)
    let mut pools: Vec<(String, String, Pool, Vec<ShowUse>)> = Vec::new();
    for row in &rows {
        let get = |i: usize| -> Result<i64, String> { row.try_get::<_, i64>(i).map_err(|e| format!("read subscriptions: column {i}: {e}")) };
        let alloc: String = row.try_get(0).map_err(|e| format!("read subscriptions: {e}"))?;
        let name: String = row.try_get(1).map_err(|e| format!("read subscriptions: {e}"))?;
        let show: String = row.try_get(2).map_err(|e| format!("read subscriptions: {e}"))?;
        let waiting: i64 = row.try_get::<_, i64>(5).map_err(|e| format!("read subscriptions: {e}"))?.max(0);
        let (size, used, pool) = (get(3)?, get(4)?, Pool { cores: get(6)?, idle: get(7)?, largest_idle: 0 });
        if pools.last().is_none_or(|p| p.0 != alloc) {
            pools.push((alloc.clone(), name, pool, Vec::new()));
        }
        if let Some(p) = pools.last_mut() {
            p.3.push(ShowUse { show_id: show, size, used, demanding: waiting > 0, waiting, waiting_min: i64::MAX });
        }
    }
    Ok(pools
        .into_iter()
        .filter_map(|(_, name, pool, shows)| {
            let mine = shows.iter().find(|s| s.show_id == show_id)?;
            let entitled = policy::entitlements(pool.cores, &shows, show_id).get(show_id).copied().unwrap_or(0);
            // As the scheduler decides it on a pool with idle cores it reads: no limit while
            // cores sit idle (the scheduler also limits where a short show's smallest waiting
            // frame fits one host's idle room, which only its own passes know).
            let held_to_share = !pool.has_idle_room() && policy::fair_budget(pool.cores, &shows, show_id, tolerance).is_some_and(|b| b < CORE_UNITS_PER_CORE);
            Some(ShareLine { alloc: name, size: mine.size, used: mine.used, entitled, held_to_share })
        })
        .collect())
}

/// The running scheduler's holds, from its `/policy` page on the metrics port: (job id, hold).
fn fetch_holds(settings: &Settings) -> Result<Vec<(String, HoldLine)>, String> {
    let port = settings.metrics_port.filter(|p| *p != 0).ok_or("the metrics port is not fixed (queue.metrics_port 0)")?;
    let host = match settings.metrics_address.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "::1",
        other => other,
    };
    let address: SocketAddr = format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let page = http_get(&address, "/policy").map_err(|e| format!("no scheduler answered on {address}: {e}"))?;
    let mut out = Vec::new();
    for (kind, fields) in page.lines().filter_map(policy::parse_line) {
        if kind != "hold" {
            continue;
        }
        let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let number = |k: &str| fields.get(k).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite()).unwrap_or(0.0);
        out.push((
            text("job_id"),
            HoldLine {
                host: text("host"),
                layer: text("layer"),
                frame: text("frame"),
                cores: number("cores") as i64,
                held_for_secs: number("held_for_s"),
                due_in_secs: number("due_in_s"),
            },
        ));
    }
    Ok(out)
}

/// A bounded HTTP/1.1 GET; the body of a 200 answer.
fn http_get(address: &SocketAddr, path: &str) -> Result<String, String> {
    let timeout = Duration::from_millis(POLICY_PAGE_TIMEOUT_MS);
    let mut stream = TcpStream::connect_timeout(address, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: scheduler\r\nConnection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.take(POLICY_PAGE_BYTES_MAX).read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed answer")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("answered `{}`", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

pub fn render_text(out: &mut String, p: &PolicyDiagnosis) {
    out.push_str(&format!("\nscheduling policy {}\n", p.name));
    for s in &p.shares {
        let ratio = if s.entitled > 0 { format!("{:.2}", s.used as f64 / s.entitled as f64) } else { "-".into() };
        out.push_str(&format!(
            "  share on {}: {} cores booked of {} entitled ({} subscribed), {ratio} of its share{}\n",
            s.alloc,
            s.used / CORE_UNITS_PER_CORE,
            s.entitled / CORE_UNITS_PER_CORE,
            s.size / CORE_UNITS_PER_CORE,
            if s.held_to_share { "; held to its share while another show is short of its own" } else { "" }
        ));
    }
    for h in &p.holds {
        out.push_str(&format!(
            "  reservation: host {} held for frame {} of layer {} ({} cores) for {:.0} s; expected free in {:.0} s\n",
            h.host, h.frame, h.layer, h.cores, h.held_for_secs, h.due_in_secs
        ));
    }
    if p.holds.is_empty() {
        match &p.holds_unknown {
            Some(why) => out.push_str(&format!("  reservations: unknown ({why})\n")),
            None => out.push_str("  reservations: none for this job\n"),
        }
    }
    if !p.waiting_for.is_empty() {
        out.push_str(&format!("  waiting for: {}\n", p.waiting_for.join(", ")));
    }
}

pub fn json(p: &PolicyDiagnosis) -> String {
    let shares = json_array(p.shares.iter().map(|s| {
        Obj::new()
            .str("alloc", &s.alloc)
            .int("size_cores", s.size / CORE_UNITS_PER_CORE)
            .int("used_cores", s.used / CORE_UNITS_PER_CORE)
            .int("entitled_cores", s.entitled / CORE_UNITS_PER_CORE)
            .raw("held_to_share", s.held_to_share.to_string())
            .done()
    }));
    let holds = json_array(p.holds.iter().map(|h| {
        Obj::new()
            .str("host", &h.host)
            .str("layer", &h.layer)
            .str("frame", &h.frame)
            .int("cores", h.cores)
            .raw("held_for_secs", format!("{:.1}", h.held_for_secs))
            .raw("due_in_secs", format!("{:.1}", h.due_in_secs))
            .done()
    }));
    let waiting = format!("[{}]", p.waiting_for.iter().map(|w| json_string(w)).collect::<Vec<_>>().join(","));
    Obj::new()
        .str("name", &p.name)
        .raw("shares", shares)
        .raw("reservations", holds)
        .opt_str("reservations_unknown", p.holds_unknown.as_deref())
        .raw("waiting_for", waiting)
        .done()
}
