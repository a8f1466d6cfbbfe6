//! Standing ownership: which instance serves which hosts, settled through PostgreSQL alone.
//!
//! **The unit is a host pool: one allocation.** Every host belongs to exactly one allocation,
//! so two instances that own different units never compete for a host. An allocation cluster
//! draws on its own allocation only and is served by that unit's owner. A manual, hostname or
//! hardware cluster may draw on hosts of several allocations; the rule is that *every* owner
//! of one of those allocations serves the cluster, each on the hosts of its own units (the
//! host cache holds owned hosts only). So that they do not race for the same frames, each job
//! falls in one instance's slot (`Serving::share`, the pass query's `job_slot`): a pass takes
//! its own slot's jobs first, and takes another slot's layer in turns: the slot's instance
//! first, then the instances after it in rank order that serve one of the layer's tags, one
//! `STEAL_AFTER_MS` apart (`Serving::turn`).
//!
//! **Locks.** Each instance holds, on one dedicated non-pooled connection, session advisory
//! locks in the two-key form: `(MEMBER_NS, member key)` exclusive, for membership;
//! `(CANDIDATE_NS, unit key)` shared, for each unit its clusters draw on (so peers know who
//! may serve it, including static `--alloc_tags`/`--manual_tags` subsets); and
//! `(UNIT_NS, unit key)` exclusive for each unit it owns. `pg_locks` joined to
//! `pg_stat_activity` is the whole shared state: nothing is written to any table.
//!
//! **Liveness.** The ownership session runs a statement every tick, so its idle time in
//! `pg_stat_activity` is a heartbeat peers can read. A peer idle longer than
//! `OWNERSHIP_FENCE_AFTER_MS` (SIGSTOP, a partition that keeps its sessions open) is fenced:
//! every session of that instance (their `application_name` ends in `[<instance>]`) is
//! terminated, which drops its locks. An instance trusts what it owns only for
//! `OWNERSHIP_LEASE_MS` after its last good tick, so a frozen one that wakes up books nothing
//! until its next tick has rejoined. The booking guards in SQL stay the safety net.
//!
//! **Assignment.** Every instance computes the same target from the same snapshot: owners
//! keep their units; a free unit goes to its least loaded live candidate; then units move from
//! the most to a less loaded member only when the move lowers the larger load by at least
//! `OWNERSHIP_REBALANCE_GAIN_MIN_PERCENT` (hysteresis). Load is the pool's cores, the work its
//! hosts take to fill. Each instance then releases what the target gives away and tries to
//! lock what it gives it; a lock still held by the previous owner is taken on a later tick.

use crate::db::{self, DbError, DbSettings};
use crate::explain::json_string;
use crate::limits::{self, OWNERSHIP_CANDIDATE_NS, OWNERSHIP_MEMBER_NS, OWNERSHIP_UNIT_NS};
use crate::model::{Cluster, ClusterKind};
use crate::pipeline::context::Context;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// 32-bit FNV-1a: the second advisory-lock key of a member or unit, the same on every instance.
pub fn key32(text: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// This instance's identity: `<host>:<pid>` (the host name cut to 16 bytes so the longest
/// `application_name` fits PostgreSQL's 63), plus `.<n>` for the n-th pipeline of a process.
pub fn instance_id(sequence: usize) -> String {
    let host = hostname();
    let host: String = host.chars().filter(|c| c.is_ascii_graphic() && *c != '[' && *c != ']').take(16).collect();
    let base = format!("{}:{}", if host.is_empty() { "host" } else { &host }, std::process::id());
    if sequence == 0 {
        base
    } else {
        format!("{base}.{sequence}")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The instance named at the end of an `application_name` (`… [id]`).
pub fn instance_of(application_name: &str) -> Option<&str> {
    let open = application_name.rfind('[')?;
    application_name[open + 1..].strip_suffix(']').filter(|id| !id.is_empty())
}

/// A host pool: one allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub key: u32,
    pub alloc_id: String,
    pub name: String,
    pub facility_id: String,
    /// Cores of the pool's hosts: the work filling it takes.
    pub load: i64,
}

/// One live (or stale) instance as the locks show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: String,
    pub pid: i32,
    /// Seconds its ownership session has been idle: its heartbeat age.
    pub idle_secs: f64,
}

/// Everything the advisory locks say.
#[derive(Clone, Debug, Default)]
pub struct LockView {
    pub members: Vec<Member>,
    /// Unit key -> pid holding it.
    pub owners: HashMap<u32, i32>,
    /// Unit key -> pids that may serve it.
    pub candidates: HashMap<u32, BTreeSet<i32>>,
    /// pid -> instance of every session holding one of our locks.
    pub sessions: HashMap<i32, (String, f64)>,
}

impl LockView {
    pub fn member_of_pid(&self, pid: i32) -> Option<&Member> {
        self.members.iter().find(|m| m.pid == pid)
    }
}

/// The target assignment of units to members (by instance id), and the units it moves away
/// from a live owner.
#[derive(Debug, Default, PartialEq)]
pub struct Target {
    pub owner: BTreeMap<u32, String>,
    pub moved: BTreeSet<u32>,
}

/// The assignment every instance computes alike. `live` members only; `owners` and
/// `candidates` by instance id.
pub fn assign(units: &[Unit], live: &[String], candidates: &HashMap<u32, BTreeSet<String>>, owners: &HashMap<u32, String>) -> Target {
    let live: BTreeSet<&String> = live.iter().collect();
    let load_of: HashMap<u32, i64> = units.iter().map(|u| (u.key, u.load.max(1))).collect();
    let mut target = Target::default();
    let mut loads: BTreeMap<String, i64> = live.iter().map(|m| ((*m).clone(), 0)).collect();
    let can = |unit: u32, member: &String| candidates.get(&unit).is_some_and(|c| c.contains(member));
    let mut units_sorted: Vec<&Unit> = units.iter().filter(|u| candidates.get(&u.key).is_some_and(|c| c.iter().any(|m| live.contains(m)))).collect();
    units_sorted.sort_by(|a, b| b.load.max(1).cmp(&a.load.max(1)).then(a.key.cmp(&b.key)));
    for unit in &units_sorted {
        if let Some(owner) = owners.get(&unit.key).filter(|o| live.contains(o) && can(unit.key, o)) {
            target.owner.insert(unit.key, owner.clone());
            *loads.entry(owner.clone()).or_default() += load_of[&unit.key];
        }
    }
    for unit in &units_sorted {
        if target.owner.contains_key(&unit.key) {
            continue;
        }
        let best = loads.iter().filter(|(m, _)| can(unit.key, m)).min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0))).map(|(m, _)| m.clone());
        if let Some(member) = best {
            *loads.entry(member.clone()).or_default() += load_of[&unit.key];
            target.owner.insert(unit.key, member);
        }
    }
    for _ in 0..limits::OWNERSHIP_REBALANCE_MOVES_MAX {
        let Some((heavy, heavy_load)) = loads.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(m, l)| (m.clone(), *l)) else { break };
        let ceiling = heavy_load - heavy_load * limits::OWNERSHIP_REBALANCE_GAIN_MIN_PERCENT / 100;
        let mut lighter: Vec<(&String, i64)> = loads.iter().filter(|(m, _)| **m != heavy).map(|(m, l)| (m, *l)).collect();
        lighter.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
        let mut chosen: Option<(u32, String)> = None;
        'search: for (light, light_load) in lighter {
            // The heavy member's unit that leaves the pair most even, among those that help.
            let mut best: Option<(i64, u32)> = None;
            for (unit, owner) in &target.owner {
                if *owner != heavy || !can(*unit, light) {
                    continue;
                }
                let w = load_of[unit];
                let after = (heavy_load - w).max(light_load + w);
                if after <= ceiling && best.is_none_or(|(b, k)| (after, *unit) < (b, k)) {
                    best = Some((after, *unit));
                }
            }
            if let Some((_, unit)) = best {
                chosen = Some((unit, light.clone()));
                break 'search;
            }
        }
        let Some((unit, light)) = chosen else { break };
        let w = load_of[&unit];
        *loads.entry(heavy.clone()).or_default() -= w;
        *loads.entry(light.clone()).or_default() += w;
        target.owner.insert(unit, light);
        if owners.get(&unit).is_some_and(|o| live.contains(o)) {
            target.moved.insert(unit);
        }
    }
    target
}

/// What the pipeline may serve right now: published by the ownership thread every tick.
#[derive(Clone, Debug)]
pub struct Serving {
    /// Allocations owned.
    pub allocs: HashSet<String>,
    /// Allocations whose hosts carry each tag of this instance's clusters.
    pub tag_allocs: HashMap<String, HashSet<String>>,
    /// Trust ends here unless a tick renews it.
    pub valid_until: Instant,
    /// This instance, and the live owner of every owned allocation (as of the last tick).
    pub me: String,
    /// Live instances, sorted.
    pub live: Vec<String>,
    /// Allocation -> its live owner, as of the last tick.
    pub alloc_owners: HashMap<String, String>,
    /// Tag -> allocation -> the most idle core units on one of the allocation's open hosts
    /// with that tag, as of the last tick.
    pub alloc_room: HashMap<String, HashMap<String, i64>>,
}

impl Serving {
    pub fn nothing() -> Serving {
        Serving {
            allocs: HashSet::new(),
            tag_allocs: HashMap::new(),
            valid_until: Instant::now(),
            me: String::new(),
            live: Vec::new(),
            alloc_owners: HashMap::new(),
            alloc_room: HashMap::new(),
        }
    }

    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// (instances, rank): how many instances are live and this one's place among them. A pass
    /// prefers the jobs of its rank (the pass query's `other_slot`), within a priority, for
    /// every cluster: an instance's allocation and tag clusters then work on the same jobs,
    /// and other instances on others, instead of racing for the same frames. The slots rotate
    /// every `JOB_SLOT_ROTATE_S`, so no job waits on one instance's hosts for long. (1, 0)
    /// alone.
    pub fn share(&self) -> (i64, i64) {
        match self.live.iter().position(|s| *s == self.me) {
            Some(rank) => (self.live.len() as i64, rank as i64),
            None => (1, 0),
        }
    }

    /// This instance's turn at a layer of a job in `slot`: how many live instances that serve
    /// one of the layer's tags come before it, counting from the slot's instance round the
    /// ranks (slot, slot + 1, ...). 0: take it now. Turn k waits k steal windows, so the slot's
    /// instance books first, then one helper, then the next: two helpers with room do not
    /// plan the same frames at once. Different jobs have different slots, so each instance is
    /// the first helper of some. What no earlier instance serves is this one's at once, and so
    /// is what no earlier instance has room for: an instance counts only where one of its
    /// pools had a host with one of the layer's tags and `need` idle core units at the last
    /// tick (a pool and tag not read yet count as having room).
    pub fn turn(&self, slot: i64, layer_tags: &[String], need: i64) -> u32 {
        let (instances, rank) = self.share();
        let Ok(start) = usize::try_from(slot) else { return 0 };
        if instances <= 1 || start >= self.live.len() {
            return 0;
        }
        let room = |alloc: &String, tag: &String| self.alloc_room.get(tag).and_then(|by_alloc| by_alloc.get(alloc)).is_none_or(|units| *units >= need);
        let serves = |member: &String| {
            layer_tags.iter().any(|tag| {
                self.tag_allocs
                    .get(tag)
                    .is_some_and(|allocs| allocs.iter().any(|a| self.alloc_owners.get(a) == Some(member) && room(a, tag)))
            })
        };
        let mut before = 0;
        for step in 0..self.live.len() {
            let index = (start + step) % self.live.len();
            if index as i64 == rank {
                return before;
            }
            if serves(&self.live[index]) {
                before += 1;
            }
        }
        0
    }

    /// Whether this instance serves the cluster now: its allocation is owned, or (tag
    /// clusters) some owned allocation has hosts with one of its tags.
    pub fn serves(&self, cluster: &Cluster) -> bool {
        if !self.is_valid() {
            return false;
        }
        match (&cluster.kind, &cluster.alloc_id) {
            (ClusterKind::Alloc, Some(alloc)) => self.allocs.contains(alloc),
            _ => cluster.tags.iter().any(|tag| self.tag_allocs.get(tag).is_some_and(|allocs| allocs.iter().any(|a| self.allocs.contains(a)))),
        }
    }
}

/// One unit in the status view.
#[derive(Clone, Debug)]
pub struct UnitStatus {
    pub name: String,
    pub alloc_id: String,
    pub load: i64,
}

/// An instance in the status view.
#[derive(Clone, Debug)]
pub struct InstanceStatus {
    pub id: String,
    pub heartbeat_age_secs: f64,
    pub units: Vec<UnitStatus>,
}

/// The last tick's view, for `GET /status` and `cue-scheduler status`.
#[derive(Clone, Debug, Default)]
pub struct StatusView {
    pub instance: String,
    pub instances: Vec<InstanceStatus>,
    /// Units nobody owns (no live candidate, or a move in progress).
    pub unowned: Vec<UnitStatus>,
}

impl StatusView {
    /// Compact JSON, written by hand (no JSON dependency for one document).
    pub fn to_json(&self) -> String {
        fn units(list: &[UnitStatus]) -> String {
            let items: Vec<String> = list
                .iter()
                .map(|u| format!("{{\"name\":{},\"alloc_id\":{},\"load_cores\":{}}}", json_string(&u.name), json_string(&u.alloc_id), u.load / 100))
                .collect();
            format!("[{}]", items.join(","))
        }
        let me = self.instances.iter().find(|i| i.id == self.instance);
        let peers: Vec<String> = self
            .instances
            .iter()
            .filter(|i| i.id != self.instance)
            .map(|i| {
                let age = if i.heartbeat_age_secs.is_finite() { i.heartbeat_age_secs } else { 0.0 };
                format!("{{\"id\":{},\"heartbeat_age_secs\":{age:.1},\"units\":{}}}", json_string(&i.id), units(&i.units))
            })
            .collect();
        format!(
            "{{\"instance\":{},\"live_instances\":{},\"units\":{},\"peers\":[{}],\"unowned\":{}}}\n",
            json_string(&self.instance),
            self.instances.len(),
            units(me.map_or(&[][..], |m| &m.units)),
            peers.join(","),
            units(&self.unowned)
        )
    }

    /// The `status` command's table.
    pub fn to_text(&self) -> String {
        let mut out = format!("{} live instance(s)\n", self.instances.len());
        for instance in &self.instances {
            let load: i64 = instance.units.iter().map(|u| u.load).sum();
            out.push_str(&format!(
                "{}  heartbeat {:.1} s ago  {} unit(s), {} cores: {}\n",
                instance.id,
                instance.heartbeat_age_secs,
                instance.units.len(),
                load / 100,
                instance.units.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        if !self.unowned.is_empty() {
            out.push_str(&format!("unowned: {}\n", self.unowned.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ")));
        }
        out
    }
}

const LOCKS_SQL: &str = "
    SELECT l.classid::bigint, l.objid::bigint, l.mode::text, l.pid, COALESCE(a.application_name, '')::text,
           CASE WHEN a.state = 'idle' THEN extract(epoch FROM clock_timestamp() - a.state_change) ELSE 0 END::float8
    FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint IN ($1, $2, $3)";

const UNITS_SQL: &str = "
    SELECT a.pk_alloc::text, a.str_name::text, a.pk_facility::text, COALESCE(sum(h.int_cores), 0)::bigint
    FROM alloc a JOIN host h ON h.pk_alloc = a.pk_alloc
    GROUP BY 1, 2, 3
    ORDER BY 1";

const TAG_ALLOCS_SQL: &str = "
    SELECT DISTINCT t.str_tag::text, h.pk_alloc::text
    FROM host_tag t JOIN host h ON h.pk_host = t.pk_host
    WHERE t.str_tag = ANY($1)";

/// Who serves each allocation as this tick leaves it: this instance for what it owns now; for
/// the rest, the live peer holding the unit's lock when the tick read it, or, where that was
/// this instance (it has just given the unit up) or nobody, the live peer the assignment gives
/// it to (every instance computes the same one, and that peer takes it on its own tick). Never
/// this instance for a unit it no longer holds: a stale self-entry made helpers think no one
/// served the layers of the pools just handed over, so two of them took the same ones at once.
fn alloc_owners(
    units: &[Unit],
    owned: &HashSet<u32>,
    held_by: &HashMap<u32, String>,
    target: &BTreeMap<u32, String>,
    live: &[String],
    me: &str,
) -> HashMap<String, String> {
    let peer = |o: &&String| o.as_str() != me && live.contains(o);
    units
        .iter()
        .filter_map(|u| {
            let owner = if owned.contains(&u.key) {
                Some(me.to_string())
            } else {
                held_by.get(&u.key).filter(peer).or_else(|| target.get(&u.key).filter(peer)).cloned()
            };
            owner.map(|o| (u.alloc_id.clone(), o))
        })
        .collect()
}

/// The most idle core units on one open, up host of each allocation with each tag.
const ROOM_SQL: &str = "
    SELECT h.pk_alloc::text, t.str_tag::text, max(h.int_cores_idle)::bigint
    FROM host h JOIN host_stat hs ON hs.pk_host = h.pk_host JOIN host_tag t ON t.pk_host = h.pk_host
    WHERE h.str_lock_state = 'OPEN' AND hs.str_state = 'UP'
    GROUP BY 1, 2";

fn read_room(client: &mut Client) -> Result<HashMap<String, HashMap<String, i64>>, DbError> {
    const CTX: &str = "read pool room";
    let mut room: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for row in &client.query(ROOM_SQL, &[]).map_err(DbError::query(CTX))? {
        let (alloc, tag, units): (String, String, i64) = (db::queries::col(row, 0, CTX)?, db::queries::col(row, 1, CTX)?, db::queries::col(row, 2, CTX)?);
        room.entry(tag).or_default().insert(alloc, units);
    }
    Ok(room)
}

/// Reads every advisory lock of ours with its session.
pub fn read_locks(client: &mut Client) -> Result<LockView, DbError> {
    const CTX: &str = "read ownership locks";
    let ns = [OWNERSHIP_MEMBER_NS, OWNERSHIP_UNIT_NS, OWNERSHIP_CANDIDATE_NS].map(i64::from);
    let rows = client.query(LOCKS_SQL, &[&ns[0], &ns[1], &ns[2]]).map_err(DbError::query(CTX))?;
    let mut view = LockView::default();
    for row in &rows {
        let class: i64 = db::queries::col(row, 0, CTX)?;
        let key = db::queries::col::<i64>(row, 1, CTX)? as u32;
        let mode: String = db::queries::col(row, 2, CTX)?;
        let pid: i32 = db::queries::col(row, 3, CTX)?;
        let app: String = db::queries::col(row, 4, CTX)?;
        let idle: f64 = db::queries::col(row, 5, CTX)?;
        let Some(id) = instance_of(&app) else { continue };
        view.sessions.insert(pid, (id.to_string(), idle));
        if class == i64::from(OWNERSHIP_MEMBER_NS) && mode == "ExclusiveLock" {
            if key == key32(id) {
                view.members.push(Member { id: id.to_string(), pid, idle_secs: idle });
            }
        } else if class == i64::from(OWNERSHIP_UNIT_NS) && mode == "ExclusiveLock" {
            view.owners.insert(key, pid);
        } else if class == i64::from(OWNERSHIP_CANDIDATE_NS) {
            view.candidates.entry(key).or_default().insert(pid);
        }
    }
    view.members.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(view)
}

/// Every allocation with hosts, with its load.
pub fn read_units(client: &mut Client) -> Result<Vec<Unit>, DbError> {
    const CTX: &str = "read ownership units";
    let rows = client.query(UNITS_SQL, &[]).map_err(DbError::query(CTX))?;
    rows.iter()
        .map(|row| {
            let alloc_id: String = db::queries::col(row, 0, CTX)?;
            Ok(Unit {
                key: key32(&alloc_id),
                name: db::queries::col(row, 1, CTX)?,
                facility_id: db::queries::col(row, 2, CTX)?,
                load: db::queries::col(row, 3, CTX)?,
                alloc_id,
            })
        })
        .collect()
}

/// The status of every live instance, from the locks alone (the `status` command).
pub fn read_status(client: &mut Client, me: &str) -> Result<StatusView, DbError> {
    let units = read_units(client)?;
    let view = read_locks(client)?;
    Ok(status_of(me, &units, &view))
}

fn status_of(me: &str, units: &[Unit], view: &LockView) -> StatusView {
    let unit_status = |u: &Unit| UnitStatus { name: u.name.clone(), alloc_id: u.alloc_id.clone(), load: u.load };
    let instances = view
        .members
        .iter()
        .map(|m| InstanceStatus {
            id: m.id.clone(),
            heartbeat_age_secs: m.idle_secs,
            units: units.iter().filter(|u| view.owners.get(&u.key) == Some(&m.pid)).map(unit_status).collect(),
        })
        .collect();
    let unowned = units
        .iter()
        .filter(|u| view.owners.get(&u.key).is_none_or(|pid| view.member_of_pid(*pid).is_none()))
        .map(unit_status)
        .collect();
    StatusView { instance: me.to_string(), instances, unowned }
}

/// The ownership connection and what this instance holds on it.
pub struct Ownership {
    settings: DbSettings,
    id: String,
    facility_id: Option<String>,
    client: Option<Client>,
    member: bool,
    candidate_of: HashSet<u32>,
    owned: HashSet<u32>,
    /// Live instances (sorted), and each allocation's live owner, from the last tick.
    live: Vec<String>,
    alloc_owners: HashMap<String, String>,
    /// Most idle core units on one open host, per tag and allocation, read each tick.
    alloc_room: HashMap<String, HashMap<String, i64>>,
    /// Units that came by a rebalance, and when (`OWNERSHIP_HOLD_MIN_MS`).
    moved_in: HashMap<u32, Instant>,
    units: Vec<Unit>,
    tag_allocs: HashMap<String, HashSet<String>>,
    units_read: Option<Instant>,
    clusters_seen: u64,
    /// Last owner seen per unit (instance id), to name why a unit came to us.
    last_owner: HashMap<u32, String>,
    fenced: HashSet<String>,
    ever_joined: bool,
}

impl Ownership {
    pub fn new(settings: DbSettings, facility_id: Option<String>) -> Ownership {
        Ownership {
            id: settings.instance.clone(),
            settings,
            facility_id,
            client: None,
            member: false,
            candidate_of: HashSet::new(),
            owned: HashSet::new(),
            moved_in: HashMap::new(),
            live: Vec::new(),
            alloc_owners: HashMap::new(),
            alloc_room: HashMap::new(),
            units: Vec::new(),
            tag_allocs: HashMap::new(),
            units_read: None,
            clusters_seen: u64::MAX,
            last_owner: HashMap::new(),
            fenced: HashSet::new(),
            ever_joined: false,
        }
    }

    /// One tick: prove the session alive, refresh units and candidacy when due, fence stale
    /// peers, move toward the target, publish. On any database error everything held is
    /// dropped (the session is closed; its locks go with it) and the next tick rejoins.
    pub fn tick(&mut self, ctx: &Context) {
        let started = Instant::now();
        match self.try_tick(ctx, started) {
            Ok(status) => {
                ctx.set_ownership_status(status);
            }
            Err(e) => {
                ctx.count_error("ownership");
                if self.member || !self.owned.is_empty() {
                    warn!("ownership: {e}; dropping every unit and rejoining");
                    for _ in self.owned.drain() {
                        ctx.metrics.ownership_changes_total.with_label_values(&["left"]).inc();
                    }
                } else {
                    debug!("ownership: {e}");
                }
                self.client = None;
                self.member = false;
                self.candidate_of.clear();
                self.owned.clear();
                self.live.clear();
                self.alloc_owners.clear();
                self.alloc_room.clear();
                self.publish(ctx, Instant::now());
            }
        }
    }

    fn client(&mut self) -> Result<&mut Client, DbError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.member = false;
            self.candidate_of.clear();
            self.owned.clear();
        }
        if self.client.is_none() {
            self.client = Some(db::connect_as(&self.settings, "ownership connection", "cue-scheduler ownership")?);
        }
        self.client.as_mut().ok_or(DbError::Connect { context: "ownership connection", message: "unavailable".into() })
    }

    fn lock(&mut self, function: &str, ns: i32, key: u32) -> Result<bool, DbError> {
        let sql = format!("SELECT {function}($1::int4, $2::int4)");
        let row = self.client()?.query_one(sql.as_str(), &[&ns, &(key as i32)]).map_err(DbError::query("ownership lock"))?;
        match row.try_get::<_, bool>(0) {
            Ok(b) => Ok(b),
            // The try and unlock functions return bool; pg_advisory_lock_shared returns void
            // (it waits until granted, so it always succeeds).
            Err(_) => Ok(true),
        }
    }

    fn try_tick(&mut self, ctx: &Context, started: Instant) -> Result<StatusView, DbError> {
        let id = self.id.clone();
        self.client()?;
        if !self.member {
            if self.lock("pg_try_advisory_lock", OWNERSHIP_MEMBER_NS, key32(&id))? {
                self.member = true;
                if !self.ever_joined {
                    info!("ownership: instance {id} joined");
                }
                self.ever_joined = true;
            } else {
                // Our own previous ownership session (cut off on our side, still open on the
                // server's) holds the membership: end it, and join on the next tick.
                let view = read_locks(self.client()?)?;
                let stale: Vec<i32> = view.members.iter().filter(|m| m.id == id).map(|m| m.pid).collect();
                for pid in stale {
                    warn!("ownership: an old session of this instance (pid {pid}) still holds its membership; terminating it");
                    self.client()?.execute("SELECT pg_terminate_backend($1)", &[&pid]).map_err(DbError::query("end old ownership session"))?;
                }
                return Err(DbError::BadRow { context: "ownership", message: "membership still held by an old session; retrying".into() });
            }
        }
        let clusters_generation = ctx.clusters_generation();
        let due = self.units_read.is_none_or(|t| started.duration_since(t) >= Duration::from_millis(limits::OWNERSHIP_UNITS_REFRESH_MS));
        if due || clusters_generation != self.clusters_seen {
            self.refresh_units(ctx)?;
            self.units_read = Some(started);
            self.clusters_seen = clusters_generation;
        }
        let mut view = read_locks(self.client()?)?;
        self.alloc_room = read_room(self.client()?)?;
        if self.fence_stale(ctx, &view)? {
            view = read_locks(self.client()?)?;
        }
        let my_pid = view.members.iter().find(|m| m.id == id).map(|m| m.pid);
        let Some(my_pid) = my_pid else {
            return Err(DbError::BadRow { context: "ownership", message: "our membership lock is not in pg_locks".into() });
        };
        let fence_after = limits::OWNERSHIP_FENCE_AFTER_MS as f64 / 1000.0;
        let live: Vec<String> = view.members.iter().filter(|m| m.idle_secs <= fence_after || m.pid == my_pid).map(|m| m.id.clone()).collect();
        let id_of = |pid: &i32| view.member_of_pid(*pid).map(|m| m.id.clone());
        let owners: HashMap<u32, String> = view.owners.iter().filter_map(|(k, pid)| Some((*k, id_of(pid)?))).collect();
        let candidates: HashMap<u32, BTreeSet<String>> =
            view.candidates.iter().map(|(k, pids)| (*k, pids.iter().filter_map(&id_of).collect())).collect();
        let target = assign(&self.units, &live, &candidates, &owners);
        let now = Instant::now();
        // Release what the target gives away (a rebalance, or candidacy dropped).
        let held: Vec<u32> = self.owned.iter().copied().collect();
        for key in held {
            if target.owner.get(&key) == Some(&id) {
                continue;
            }
            // A unit that came by a rebalance stays a while before it moves again.
            if target.moved.contains(&key) && self.moved_in.get(&key).is_some_and(|t| now.duration_since(*t) < Duration::from_millis(limits::OWNERSHIP_HOLD_MIN_MS)) {
                continue;
            }
            self.lock("pg_advisory_unlock", OWNERSHIP_UNIT_NS, key)?;
            self.owned.remove(&key);
            self.moved_in.remove(&key);
            ctx.metrics.ownership_changes_total.with_label_values(&["rebalanced"]).inc();
            info!("ownership: gave up {} ({})", self.unit_name(key), if target.moved.contains(&key) { "rebalanced" } else { "no longer a candidate" });
        }
        for (key, owner) in &target.owner {
            if *owner != id || self.owned.contains(key) {
                continue;
            }
            if self.lock("pg_try_advisory_lock", OWNERSHIP_UNIT_NS, *key)? {
                let reason = match self.last_owner.get(key) {
                    None => "joined",
                    Some(previous) if self.fenced.contains(previous) => "fenced",
                    Some(previous) if !live.contains(previous) => "left",
                    Some(previous) if *previous == id => "joined",
                    Some(_) => "rebalanced",
                };
                ctx.metrics.ownership_changes_total.with_label_values(&[reason]).inc();
                info!("ownership: took {} ({reason})", self.unit_name(*key));
                self.owned.insert(*key);
                if reason == "rebalanced" {
                    self.moved_in.insert(*key, now);
                }
            }
        }
        for (key, owner) in &owners {
            self.last_owner.insert(*key, owner.clone());
        }
        for key in &self.owned {
            self.last_owner.insert(*key, id.clone());
        }
        let mut sorted = live.clone();
        sorted.sort();
        self.live = sorted;
        self.alloc_owners = alloc_owners(&self.units, &self.owned, &owners, &target.owner, &live, &id);
        ctx.metrics.instances_live.set(live.len() as i64);
        ctx.metrics.owned_units.set(self.owned.len() as i64);
        self.publish(ctx, started);
        // The status as it stands after this tick's moves.
        let mut after = view;
        after.owners.retain(|_, pid| *pid != my_pid);
        for key in &self.owned {
            after.owners.insert(*key, my_pid);
        }
        after.members.retain(|m| live.contains(&m.id));
        Ok(status_of(&id, &self.units, &after))
    }

    fn unit_name(&self, key: u32) -> String {
        self.units.iter().find(|u| u.key == key).map_or_else(|| format!("unit {key}"), |u| u.name.clone())
    }

    /// Re-reads the units and which of them this instance's clusters draw on, and holds a
    /// shared candidate lock on exactly those.
    fn refresh_units(&mut self, ctx: &Context) -> Result<(), DbError> {
        let clusters = ctx.clusters();
        let mut tags: Vec<String> = clusters.iter().flat_map(|c| c.tags.iter().cloned()).collect();
        tags.sort();
        tags.dedup();
        let units = read_units(self.client()?)?;
        let rows = self.client()?.query(TAG_ALLOCS_SQL, &[&tags]).map_err(DbError::query("read tag allocations"))?;
        let mut tag_allocs: HashMap<String, HashSet<String>> = HashMap::new();
        for row in &rows {
            let tag: String = db::queries::col(row, 0, "read tag allocations")?;
            let alloc: String = db::queries::col(row, 1, "read tag allocations")?;
            tag_allocs.entry(tag).or_default().insert(alloc);
        }
        let in_facility = |u: &Unit| self.facility_id.as_ref().is_none_or(|f| *f == u.facility_id);
        let mut wanted: HashSet<u32> = HashSet::new();
        for cluster in clusters.iter() {
            match (&cluster.kind, &cluster.alloc_id) {
                (ClusterKind::Alloc, Some(alloc)) => {
                    wanted.extend(units.iter().filter(|u| u.alloc_id == *alloc && in_facility(u)).map(|u| u.key));
                }
                _ => {
                    for tag in &cluster.tags {
                        if let Some(allocs) = tag_allocs.get(tag) {
                            wanted.extend(units.iter().filter(|u| allocs.contains(&u.alloc_id) && in_facility(u)).map(|u| u.key));
                        }
                    }
                }
            }
        }
        let add: Vec<u32> = wanted.difference(&self.candidate_of).copied().collect();
        let drop: Vec<u32> = self.candidate_of.difference(&wanted).copied().collect();
        for key in add {
            self.lock("pg_advisory_lock_shared", OWNERSHIP_CANDIDATE_NS, key)?;
            self.candidate_of.insert(key);
        }
        for key in drop {
            self.lock("pg_advisory_unlock_shared", OWNERSHIP_CANDIDATE_NS, key)?;
            self.candidate_of.remove(&key);
        }
        self.units = units;
        self.tag_allocs = tag_allocs;
        Ok(())
    }

    /// Terminates every session of each peer whose heartbeat is older than the fence limit.
    /// Returns whether anything was fenced.
    fn fence_stale(&mut self, ctx: &Context, view: &LockView) -> Result<bool, DbError> {
        let fence_after = limits::OWNERSHIP_FENCE_AFTER_MS as f64 / 1000.0;
        let mut stale: BTreeSet<&str> =
            view.members.iter().filter(|m| m.id != self.id && m.idle_secs > fence_after).map(|m| m.id.as_str()).collect();
        // A session holding units without a live membership (its member lock is gone) is
        // stale as well once idle past the limit.
        for pid in view.owners.values() {
            if let Some((id, idle)) = view.sessions.get(pid) {
                if *id != self.id && *idle > fence_after && view.member_of_pid(*pid).is_none() {
                    stale.insert(id.as_str());
                }
            }
        }
        let mut any = false;
        for id in stale {
            let suffix = format!("[{id}]");
            let row = self
                .client()?
                .query_one(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::bigint FROM pg_stat_activity
                     WHERE datname = current_database() AND right(application_name, length($1)) = $1 AND pid <> pg_backend_pid()",
                    &[&suffix],
                )
                .map_err(DbError::query("fence stale instance"))?;
            let ended: i64 = row.try_get(0).unwrap_or(0);
            if ended > 0 {
                warn!("ownership: instance {id} sent no heartbeat for over {fence_after:.0} s; fenced it ({ended} sessions terminated)");
                ctx.metrics.fenced_total.inc();
                self.fenced.insert(id.to_string());
                any = true;
            }
        }
        Ok(any)
    }

    fn publish(&mut self, ctx: &Context, proven_at: Instant) {
        let allocs: HashSet<String> =
            self.units.iter().filter(|u| self.owned.contains(&u.key)).map(|u| u.alloc_id.clone()).collect();
        let previous = ctx.serving();
        if self.member && !previous.allocs.is_empty() && previous.valid_until < proven_at {
            warn!(
                "ownership: no tick proved this instance alive for {:.1} s (over the {} ms lease); bookings were paused meanwhile",
                proven_at.saturating_duration_since(previous.valid_until).as_secs_f64() + limits::OWNERSHIP_LEASE_MS as f64 / 1000.0,
                limits::OWNERSHIP_LEASE_MS
            );
        }
        let valid_until = if self.member { proven_at + Duration::from_millis(limits::OWNERSHIP_LEASE_MS) } else { Instant::now() };
        let serving = Serving {
            allocs,
            tag_allocs: self.tag_allocs.clone(),
            valid_until,
            me: self.id.clone(),
            live: self.live.clone(),
            alloc_owners: self.alloc_owners.clone(),
            alloc_room: self.alloc_room.clone(),
        };
        ctx.set_serving(serving);
    }

    /// Ends the session (and with it every lock) at shutdown.
    pub fn leave(&mut self, ctx: &Context) {
        ctx.set_serving(Serving::nothing());
        self.client = None;
        self.owned.clear();
        self.member = false;
    }
}

/// The ownership thread: one tick every `OWNERSHIP_TICK_MS` until the pipeline stops.
pub fn run(ctx: &Context, mut ownership: Ownership) {
    let tick = Duration::from_millis(limits::OWNERSHIP_TICK_MS);
    let mut next = Instant::now() + tick;
    while !ctx.stopping() {
        ctx.beat();
        ctx.test_panic_hook();
        let now = Instant::now();
        if now >= next {
            next = now + tick;
            ownership.tick(ctx);
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(limits::SHUTDOWN_POLL_MS)));
    }
    ownership.leave(ctx);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(key: u32, load: i64) -> Unit {
        Unit { key, alloc_id: format!("a{key}"), name: format!("lax.a{key}"), facility_id: "F".into(), load }
    }

    fn all(units: &[Unit], members: &[&str]) -> HashMap<u32, BTreeSet<String>> {
        units.iter().map(|u| (u.key, members.iter().map(|m| m.to_string()).collect())).collect()
    }

    fn ids(members: &[&str]) -> Vec<String> {
        members.iter().map(|m| m.to_string()).collect()
    }

    /// Applies a target as the instances would: the owners become the target's.
    fn settle(units: &[Unit], members: &[&str], candidates: &HashMap<u32, BTreeSet<String>>, owners: &mut HashMap<u32, String>) -> usize {
        let mut moves = 0;
        for _ in 0..20 {
            let target = assign(units, &ids(members), candidates, owners);
            let next: HashMap<u32, String> = target.owner.into_iter().collect();
            if next == *owners {
                return moves;
            }
            moves += next.iter().filter(|(k, v)| owners.get(*k).is_some_and(|o| o != *v)).count();
            *owners = next;
        }
        panic!("assignment never settled");
    }

    #[test]
    fn free_units_go_to_the_least_loaded_member_and_three_pools_split_three_ways() {
        let units = [unit(1, 300), unit(2, 300), unit(3, 300)];
        let members = ["a", "b", "c"];
        let mut owners = HashMap::new();
        settle(&units, &members, &all(&units, &members), &mut owners);
        let mut per: HashMap<&String, usize> = HashMap::new();
        for owner in owners.values() {
            *per.entry(owner).or_default() += 1;
        }
        assert_eq!(per.len(), 3, "one pool each: {owners:?}");
    }

    #[test]
    fn a_joiner_takes_a_share_by_moves_and_a_balanced_split_never_moves() {
        let units = [unit(1, 300), unit(2, 300), unit(3, 300)];
        let mut owners: HashMap<u32, String> = units.iter().map(|u| (u.key, "a".to_string())).collect();
        let cands = all(&units, &["a", "b"]);
        let moves = settle(&units, &["a", "b"], &cands, &mut owners);
        assert_eq!(moves, 1, "3 equal pools over 2 members: one move, then 2:1 stays (a second would not help)");
        // Stable: assigning again moves nothing.
        let again = assign(&units, &ids(&["a", "b"]), &cands, &owners);
        assert!(again.moved.is_empty());
        let cands = all(&units, &["a", "b", "c"]);
        let moves = settle(&units, &["a", "b", "c"], &cands, &mut owners);
        assert_eq!(moves, 1);
        let owners_set: BTreeSet<&String> = owners.values().collect();
        assert_eq!(owners_set.len(), 3);
    }

    #[test]
    fn hysteresis_keeps_a_near_even_split() {
        // 1000 vs 950: moving the 50-core pool would not lower the max by 10%.
        let units = [unit(1, 1000), unit(2, 900), unit(3, 50)];
        let owners: HashMap<u32, String> = [(1, "a"), (2, "b"), (3, "b")].into_iter().map(|(k, v)| (k, v.to_string())).collect();
        let target = assign(&units, &ids(&["a", "b"]), &all(&units, &["a", "b"]), &owners);
        assert!(target.moved.is_empty(), "{target:?}");
    }

    #[test]
    fn balance_is_by_load_not_by_count() {
        let units = [unit(1, 1000), unit(2, 100), unit(3, 100), unit(4, 100)];
        let members = ["a", "b"];
        let mut owners = HashMap::new();
        settle(&units, &members, &all(&units, &members), &mut owners);
        let big = owners[&1].clone();
        assert!(owners.iter().filter(|(k, _)| **k != 1).all(|(_, o)| *o != big), "the big pool's owner takes nothing else: {owners:?}");
    }

    #[test]
    fn a_dead_members_units_move_and_static_candidacy_is_honoured() {
        let units = [unit(1, 300), unit(2, 300)];
        // b may serve only unit 2 (static flags); a serves both.
        let mut cands = all(&units, &["a"]);
        cands.get_mut(&2).map(|c| c.insert("b".to_string()));
        let mut owners = HashMap::new();
        settle(&units, &["a", "b"], &cands, &mut owners);
        assert_eq!(owners[&1], "a");
        assert_eq!(owners[&2], "b", "overlap settled: each serves one");
        // b dies: a takes unit 2.
        let target = assign(&units, &ids(&["a"]), &cands, &owners);
        assert_eq!(target.owner[&2], "a");
        assert!(target.moved.is_empty(), "taking a dead member's unit is not a rebalance");
        // a dies: unit 1 has no candidate left and stays unowned.
        let target = assign(&units, &ids(&["b"]), &cands, &owners);
        assert_eq!(target.owner.get(&1), None);
        assert_eq!(target.owner[&2], "b");
    }

    #[test]
    fn another_slots_layer_is_left_to_its_instance_only_where_that_instance_serves_it() {
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<HashSet<String>>();
        let serving = Serving {
            allocs: set(&["A0"]),
            tag_allocs: [("fx".to_string(), set(&["A0", "A1"])), ("alloc0".to_string(), set(&["A0"]))].into_iter().collect(),
            valid_until: Instant::now() + Duration::from_secs(5),
            me: "a".into(),
            live: vec!["a".into(), "b".into()],
            alloc_owners: [("A0".to_string(), "a".to_string()), ("A1".to_string(), "b".to_string())].into_iter().collect(),
            alloc_room: HashMap::new(),
        };
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        assert_eq!(serving.share(), (2, 0));
        assert!(serving.turn(1, &tags(&["fx"]), 0) > 0, "b serves fx on A1's hosts");
        assert_eq!(serving.turn(1, &tags(&["alloc0"]), 0), 0, "only a serves alloc0: a takes it");
        assert_eq!(serving.turn(0, &tags(&["fx"]), 0), 0, "a's own slot");
        assert_eq!(serving.turn(7, &tags(&["fx"]), 0), 0, "a slot out of range is nobody's");
        let alone = Serving { live: vec!["a".into()], ..serving };
        assert_eq!(alone.turn(1, &tags(&["fx"]), 0), 0, "a lone instance takes everything");
    }

    #[test]
    fn allocation_owners_never_name_this_instance_for_a_pool_it_gave_up() {
        let units: Vec<Unit> = (1..=3).map(|k| unit(k, 100)).collect();
        let map = |pairs: &[(u32, &str)]| pairs.iter().map(|(k, v)| (*k, v.to_string())).collect::<HashMap<u32, String>>();
        let target = |pairs: &[(u32, &str)]| pairs.iter().map(|(k, v)| (*k, v.to_string())).collect::<BTreeMap<u32, String>>();
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let owned: HashSet<u32> = [1].into_iter().collect();
        let alloc = |k: u32| units.iter().find(|u| u.key == k).expect("unit").alloc_id.clone();
        // The tick read a holding units 1 and 2 and gave 2 to b, who takes it on its own tick.
        let got = alloc_owners(&units, &owned, &map(&[(1, "a"), (2, "a"), (3, "c")]), &target(&[(1, "a"), (2, "b"), (3, "c")]), &live, "a");
        assert_eq!(got.get(&alloc(1)).map(String::as_str), Some("a"));
        assert_eq!(got.get(&alloc(2)).map(String::as_str), Some("b"), "the assignment's owner, not the stale self-entry");
        assert_eq!(got.get(&alloc(3)).map(String::as_str), Some("c"));
        // A dead holder gives way to the assignment; a unit the assignment gives back to this
        // instance, which does not hold it, has no owner yet.
        let got = alloc_owners(&units, &owned, &map(&[(3, "d")]), &target(&[(2, "a"), (3, "c")]), &live, "a");
        assert_eq!(got.get(&alloc(3)).map(String::as_str), Some("c"));
        assert_eq!(got.get(&alloc(2)), None);
    }

    #[test]
    fn helpers_take_turns_after_the_slots_instance() {
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<HashSet<String>>();
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        // Three instances, each owning one allocation; tag fx is on hosts of all three, gx only
        // on b's and c's, alloc2 is c's allocation tag.
        let view = |me: &str| Serving {
            allocs: HashSet::new(),
            tag_allocs: [
                ("fx".to_string(), set(&["A0", "A1", "A2"])),
                ("gx".to_string(), set(&["A1", "A2"])),
                ("alloc2".to_string(), set(&["A2"])),
            ]
            .into_iter()
            .collect(),
            valid_until: Instant::now() + Duration::from_secs(5),
            me: me.into(),
            live: vec!["a".into(), "b".into(), "c".into()],
            alloc_owners: [("A0", "a"), ("A1", "b"), ("A2", "c")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            alloc_room: HashMap::new(),
        };
        let turns = |slot: i64, t: &[&str]| ["a", "b", "c"].map(|me| view(me).turn(slot, &tags(t), 100));
        assert_eq!(turns(0, &["fx"]), [0, 1, 2], "slot 0: a, then b, then c");
        assert_eq!(turns(1, &["fx"]), [2, 0, 1], "slot 1: b, then c, then a");
        assert_eq!(turns(2, &["fx"]), [1, 2, 0], "slot 2: c, then a, then b");
        // a serves no gx: in slot 0 nobody waits for it, and b comes first.
        assert_eq!(turns(0, &["gx"]), [0, 0, 1]);
        // Only c serves alloc2: c takes it at once in any slot.
        assert_eq!(turns(1, &["alloc2"]), [1, 0, 0]);
        assert_eq!(turns(0, &["alloc2"])[2], 0);
        assert_eq!(turns(5, &["fx"]), [0, 0, 0], "a slot out of range is nobody's");
        // Room at the last tick: a's pool has a host with 4 idle cores, b's pool none, c's 32.
        let roomy = |me: &str| Serving {
            alloc_room: [("fx".to_string(), [("A0", 400), ("A1", 0), ("A2", 3200)].into_iter().map(|(k, v)| (k.to_string(), v)).collect())].into_iter().collect(),
            ..view(me)
        };
        let turns_for = |slot: i64, need: i64| ["a", "b", "c"].map(|me| roomy(me).turn(slot, &tags(&["fx"]), need));
        assert_eq!(turns_for(0, 200), [0, 1, 1], "a has room for 2 cores: b and c wait for it, c not for b");
        assert_eq!(turns_for(0, 800), [0, 0, 0], "nobody waits for pools without room for 8 cores");
        assert_eq!(turns_for(1, 100), [1, 0, 0], "b has no room: c takes it at once, a after c");
    }

    #[test]
    fn identities_round_trip_through_application_names() {
        assert_eq!(instance_of("cue-scheduler [node1:42]"), Some("node1:42"));
        assert_eq!(instance_of("cue-scheduler accounting [n:1.2]"), Some("n:1.2"));
        assert_eq!(instance_of("cue-scheduler"), None);
        assert_eq!(instance_of("psql []"), None);
        assert_eq!(key32("a"), 0xe40c_292c);
        let id = instance_id(3);
        assert!(id.ends_with(&format!(":{}.3", std::process::id())), "{id}");
        assert!(format!("cue-scheduler accounting listener [{id}]").len() <= 63);
    }

    #[test]
    fn status_json_escapes_names() {
        let view = StatusView {
            instance: "a".into(),
            instances: vec![InstanceStatus { id: "a".into(), heartbeat_age_secs: 0.0, units: vec![UnitStatus { name: "x\"y".into(), alloc_id: "1".into(), load: 800 }] }],
            unowned: vec![],
        };
        assert_eq!(
            view.to_json(),
            "{\"instance\":\"a\",\"live_instances\":1,\"units\":[{\"name\":\"x\\\"y\",\"alloc_id\":\"1\",\"load_cores\":8}],\"peers\":[],\"unowned\":[]}\n"
        );
    }
}
