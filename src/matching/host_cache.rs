//! The host cache: a hint of which hosts probably have room, grouped per (facility, show, tag)
//! and ordered by (idle whole cores, idle memory bucket). One parking_lot mutex guards it; every
//! search is bounded, so the lock is held for microseconds.
//!
//! A host taken by `checkout` is reserved until it is checked back in (with the idle values
//! the database returned from the booking), invalidated, or its reservation expires
//! (`checkout_timeout`). A reservation only keeps this process's matchers apart: the database
//! guards decide every booking (scheduler-behaviour.md §4.5).

use crate::matching::matcher::{self, Weights};
use crate::matching::policy;
use crate::model::{Host, Layer};
use crate::db::queries::HostRow;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type HostId = Arc<str>;

/// Hosts looked at by one search in one group before it gives up: a bound on lock hold time
/// when many hosts fail a cheap predicate (wrong OS, ALL mode).
pub const SEARCH_HOSTS_MAX: usize = 2_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub facility_id: String,
    pub show_id: String,
    pub tag: String,
}

#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub memory_key_divisor_kib: i64,
    pub checkout_timeout: Duration,
    pub group_idle_timeout: Duration,
    pub host_staleness_threshold: Duration,
}

#[derive(Clone, Debug)]
pub enum Strategy {
    Saturation { core_ascending: bool, memory_ascending: bool },
    Epvm { max_candidates: usize, weights: Weights },
}

/// What one checkout looks for.
pub struct Search<'a> {
    pub layer: &'a Layer,
    pub job_os: Option<&'a str>,
    pub caps: matcher::ScoreCaps,
    /// With a policy, a host is a candidate only if a frame's reservation succeeds there too
    /// (a host can pass the predicates yet fail the reservation, e.g. a threadable frame
    /// whose memory-balanced core count exceeds the idle cores).
    pub policy: Option<&'a matcher::MatchPolicy>,
    /// The job's remaining core units when it is capped (the reservation's job clamp).
    pub job_remaining_units: Option<i64>,
    /// Scheduling policy `smart`: hosts held for other layers' waiting frames, and whether this
    /// layer may backfill them (src/matching/policy.rs).
    pub holds: Option<policy::HoldCheck<'a>>,
}

impl Search<'_> {
    fn accepts(&self, host: &Host) -> bool {
        matcher::check_host(host, self.layer, self.job_os).is_ok()
            && self.holds.as_ref().is_none_or(|holds| holds.admits(&host.id))
            && self.policy.is_none_or(|policy| matcher::reserve_cores(host, self.layer, self.job_remaining_units, policy).is_ok())
    }
}

/// Idle values after a booking, as the database returned them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleValues {
    pub cores_idle: i64,
    pub mem_idle: i64,
    pub gpus_idle: i64,
    pub gpu_mem_idle: i64,
}

struct Entry {
    host: Host,
    /// Database time of the values held: the ping they came from, or the booking that wrote them.
    last_updated: f64,
    stale_at: Instant,
    reserved_until: Option<Instant>,
    groups: BTreeSet<GroupKey>,
}

struct Group {
    index: BTreeSet<(i64, i64, HostId)>,
    keys: HashMap<HostId, (i64, i64)>,
    last_fetched: Instant,
    last_queried: Instant,
    /// Must be fetched before the next search (the owned pools changed).
    expired: bool,
}

/// The host pools (allocations) this instance owns, and until when that is trusted.
struct Serving {
    allocs: HashSet<String>,
    valid_until: Instant,
}

#[derive(Default)]
struct Inner {
    hosts: HashMap<HostId, Entry>,
    groups: BTreeMap<GroupKey, Group>,
    /// `None`: no ownership restriction (a cache used outside a pipeline).
    serving: Option<Serving>,
}

pub struct HostCache {
    settings: CacheSettings,
    inner: Mutex<Inner>,
}

/// Result of one checkout.
pub struct Checkout {
    pub host: Host,
    pub score: Option<f64>,
}

impl HostCache {
    pub fn new(settings: CacheSettings) -> HostCache {
        HostCache { settings, inner: Mutex::new(Inner::default()) }
    }

    fn key_of(&self, host: &Host) -> (i64, i64) {
        (host.idle_whole_cores(), host.mem_idle / self.settings.memory_key_divisor_kib.max(1))
    }

    /// Groups among `keys` that must be (re)fetched before a search: absent or older than the
    /// idle timeout.
    pub fn groups_to_fetch(&self, keys: &[GroupKey]) -> Vec<GroupKey> {
        let inner = self.inner.lock();
        let now = Instant::now();
        keys.iter()
            .filter(|key| match inner.groups.get(*key) {
                None => true,
                Some(group) => group.expired || now.duration_since(group.last_fetched) > self.settings.group_idle_timeout,
            })
            .cloned()
            .collect()
    }

    /// Groups among `keys` fetched longer than `age` ago (candidates for a re-fetch after a
    /// search found nothing).
    pub fn groups_older_than(&self, keys: &[GroupKey], age: Duration) -> Vec<GroupKey> {
        let inner = self.inner.lock();
        let now = Instant::now();
        keys.iter()
            .filter(|key| inner.groups.get(*key).is_some_and(|g| g.expired || now.duration_since(g.last_fetched) > age))
            .cloned()
            .collect()
    }

    /// Every group present, for the periodic refresh.
    pub fn group_keys(&self) -> Vec<GroupKey> {
        self.inner.lock().groups.keys().cloned().collect()
    }

    /// Installs a fresh fetch of one group. A row older than what the cache holds (a booking
    /// wrote newer values) is ignored; hosts the query no longer returns leave the group.
    /// Returns whether the group gained capacity (a host with more idle cores than cached, or
    /// a new host with idle cores).
    pub fn apply_group(&self, key: &GroupKey, rows: Vec<HostRow>) -> bool {
        let mut grew = false;
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let Inner { hosts, groups, serving } = &mut *inner;
        let group = groups.entry(key.clone()).or_insert_with(|| Group {
            index: BTreeSet::new(),
            keys: HashMap::new(),
            last_fetched: now,
            last_queried: now,
            expired: false,
        });
        group.last_fetched = now;
        group.expired = false;
        let mut seen: BTreeSet<HostId> = BTreeSet::new();
        for row in rows {
            if serving.as_ref().is_some_and(|s| !s.allocs.contains(&row.host.alloc_id)) {
                continue;
            }
            let id = Arc::clone(&row.host.id);
            seen.insert(Arc::clone(&id));
            let fresh_for = self.settings.host_staleness_threshold.as_secs_f64() - row.ping_age_secs;
            // A NaN age (a float from the database) counts as stale: from_secs_f64(NaN) panics.
            let fresh_for = if fresh_for.is_nan() { 0.0 } else { fresh_for.clamp(0.0, 1e7) };
            let stale_at = now + Duration::from_secs_f64(fresh_for);
            let entry = hosts.entry(Arc::clone(&id)).or_insert_with(|| Entry {
                host: row.host.clone(),
                last_updated: f64::MIN,
                stale_at,
                reserved_until: None,
                groups: BTreeSet::new(),
            });
            entry.groups.insert(key.clone());
            if row.ping_epoch > entry.last_updated {
                grew |= row.host.cores_idle > entry.host.cores_idle || (entry.last_updated == f64::MIN && row.host.cores_idle > 0);
                entry.host = row.host;
                entry.last_updated = row.ping_epoch;
                entry.stale_at = stale_at;
            }
        }
        let gone: Vec<HostId> = group.keys.keys().filter(|id| !seen.contains(*id)).cloned().collect();
        for id in gone {
            if let Some(old) = group.keys.remove(&id) {
                group.index.remove(&(old.0, old.1, Arc::clone(&id)));
            }
            if let Some(entry) = hosts.get_mut(&id) {
                entry.groups.remove(key);
                if entry.groups.is_empty() {
                    hosts.remove(&id);
                }
            }
        }
        let ids: Vec<HostId> = seen.into_iter().collect();
        for id in ids {
            if let Some(entry) = hosts.get(&id) {
                let new_key = self.key_of(&entry.host);
                reindex(group, &id, new_key);
            }
        }
        grew
    }

    /// Takes the best host for one frame of `search.layer` out of the first group (in probe
    /// order) that has one, and reserves it.
    pub fn checkout(&self, keys: &[GroupKey], search: &Search, strategy: &Strategy) -> Option<Checkout> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.serving.as_ref().is_some_and(|s| now >= s.valid_until) {
            // Ownership not proven recently (a frozen instance that just woke): book nothing.
            return None;
        }
        for key in keys {
            let Some(group) = inner.groups.get_mut(key) else { continue };
            group.last_queried = now;
            let found = match strategy {
                Strategy::Saturation { core_ascending, memory_ascending } => {
                    self.first_fit(&inner, key, search, *core_ascending, *memory_ascending, now)
                }
                Strategy::Epvm { max_candidates, weights } => {
                    self.best_scored(&inner, key, search, *max_candidates, weights, now)
                }
            };
            if let Some((id, score)) = found {
                let entry = inner.hosts.get_mut(&id)?;
                entry.reserved_until = Some(now + self.settings.checkout_timeout);
                return Some(Checkout { host: entry.host.clone(), score });
            }
        }
        None
    }

    /// Hosts of a group in the strategy's scan order that pass the layer's predicates, lazily,
    /// looking at no more than `SEARCH_HOSTS_MAX` index entries.
    fn scan<'a>(
        &self,
        inner: &'a Inner,
        key: &GroupKey,
        search: &'a Search<'a>,
        core_ascending: bool,
        memory_ascending: bool,
        now: Instant,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let floor_core = matcher::search_core_key(search.layer);
        let floor_mem = search.layer.mem_min / self.settings.memory_key_divisor_kib.max(1);
        let mut candidates: Vec<&'a (i64, i64, HostId)> = match inner.groups.get(key) {
            None => Vec::new(),
            Some(group) => {
                let range = group.index.range((floor_core, i64::MIN, Arc::from(""))..);
                let in_memory = |entry: &&(i64, i64, HostId)| entry.1 >= floor_mem;
                if core_ascending {
                    range.filter(in_memory).take(SEARCH_HOSTS_MAX).collect()
                } else {
                    range.rev().filter(in_memory).take(SEARCH_HOSTS_MAX).collect()
                }
            }
        };
        candidates.sort_by(|a, b| {
            let cores = if core_ascending { a.0.cmp(&b.0) } else { b.0.cmp(&a.0) };
            let mem = if memory_ascending { a.1.cmp(&b.1) } else { b.1.cmp(&a.1) };
            cores.then(mem).then_with(|| a.2.cmp(&b.2))
        });
        candidates
            .into_iter()
            .filter_map(move |(_, _, id)| inner.hosts.get(id))
            .filter(move |entry| entry.reserved_until.is_none_or(|until| until <= now))
            .filter(move |entry| entry.stale_at > now)
            .filter(move |entry| search.accepts(&entry.host))
    }

    fn first_fit(
        &self,
        inner: &Inner,
        key: &GroupKey,
        search: &Search,
        core_ascending: bool,
        memory_ascending: bool,
        now: Instant,
    ) -> Option<(HostId, Option<f64>)> {
        let mut hosts = self.scan(inner, key, search, core_ascending, memory_ascending, now);
        hosts.next().map(|entry| (Arc::clone(&entry.host.id), None))
    }

    fn best_scored(
        &self,
        inner: &Inner,
        key: &GroupKey,
        search: &Search,
        max_candidates: usize,
        weights: &Weights,
        now: Instant,
    ) -> Option<(HostId, Option<f64>)> {
        self.scan(inner, key, search, true, true, now)
            .take(max_candidates.max(1))
            .map(|entry| (entry, matcher::epvm_score(&entry.host, search.layer, search.caps, weights)))
            .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(entry, score)| (Arc::clone(&entry.host.id), Some(score)))
    }

    /// Hosts of the groups (fresh, any checkout state) whose totals would take a frame of the
    /// layer: the candidates for a hold (policy `smart`). At most `max`, in id order.
    pub fn fitting_totals(&self, keys: &[GroupKey], layer: &Layer, job_os: Option<&str>, max: usize) -> Vec<Host> {
        let now = Instant::now();
        let inner = self.inner.lock();
        let mut ids: BTreeSet<&HostId> = BTreeSet::new();
        for group in keys.iter().filter_map(|key| inner.groups.get(key)) {
            ids.extend(group.keys.keys().take(SEARCH_HOSTS_MAX));
        }
        ids.into_iter()
            .filter_map(|id| inner.hosts.get(id))
            .filter(|entry| entry.stale_at > now)
            .filter(|entry| {
                let mut empty = entry.host.clone();
                empty.cores_idle = empty.cores_total;
                empty.mem_idle = empty.mem_total;
                empty.gpus_idle = empty.gpus_total;
                empty.gpu_mem_idle = empty.gpu_mem_total;
                matcher::check_host(&empty, layer, job_os).is_ok()
            })
            .take(max)
            .map(|entry| entry.host.clone())
            .collect()
    }

    /// Whether some host of the groups would fit `search` but is checked out or backed off.
    pub fn any_reserved_fit(&self, keys: &[GroupKey], search: &Search) -> bool {
        let now = Instant::now();
        let inner = self.inner.lock();
        keys.iter().filter_map(|key| inner.groups.get(key)).any(|group| {
            group
                .keys
                .keys()
                .take(SEARCH_HOSTS_MAX)
                .filter_map(|id| inner.hosts.get(id))
                .any(|e| e.reserved_until.is_some_and(|until| until > now) && e.stale_at > now && search.accepts(&e.host))
        })
    }

    /// Returns a host with the idle values the database returned after booking on it.
    pub fn checkin(&self, id: &HostId, idle: IdleValues, db_time: f64) {
        let mut inner = self.inner.lock();
        let Inner { hosts, groups, .. } = &mut *inner;
        let Some(entry) = hosts.get_mut(id) else { return };
        entry.host.cores_idle = idle.cores_idle;
        entry.host.mem_idle = idle.mem_idle;
        entry.host.gpus_idle = idle.gpus_idle;
        entry.host.gpu_mem_idle = idle.gpu_mem_idle;
        entry.last_updated = entry.last_updated.max(db_time);
        entry.reserved_until = None;
        let new_key = self.key_of(&entry.host);
        for key in &entry.groups {
            if let Some(group) = groups.get_mut(key) {
                reindex(group, id, new_key);
            }
        }
    }

    /// Gives a host back unchanged: the next refresh brings its real values.
    pub fn invalidate(&self, id: &HostId) {
        if let Some(entry) = self.inner.lock().hosts.get_mut(id) {
            entry.reserved_until = None;
            entry.last_updated = f64::MIN;
        }
    }

    /// Keeps a host out of searches for `duration` (after an RQD failure).
    pub fn back_off(&self, id: &str, duration: Duration) {
        if let Some(entry) = self.inner.lock().hosts.get_mut(id) {
            entry.reserved_until = Some(crate::limits::deadline_after(duration));
        }
    }

    /// Drops groups nobody searched for `group_idle_timeout` and stale hosts; returns how many
    /// hosts were evicted.
    pub fn clean_up(&self) -> usize {
        let now = Instant::now();
        let idle_timeout = self.settings.group_idle_timeout;
        let mut inner = self.inner.lock();
        let Inner { hosts, groups, .. } = &mut *inner;
        groups.retain(|_, group| now.duration_since(group.last_queried) <= idle_timeout);
        let stale: Vec<HostId> = hosts
            .iter()
            .filter(|(_, entry)| entry.stale_at <= now || entry.groups.iter().all(|k| !groups.contains_key(k)))
            .map(|(id, _)| Arc::clone(id))
            .collect();
        for id in &stale {
            if let Some(entry) = hosts.remove(id) {
                for key in &entry.groups {
                    if let Some(group) = groups.get_mut(key) {
                        if let Some(old) = group.keys.remove(id) {
                            group.index.remove(&(old.0, old.1, Arc::clone(id)));
                        }
                    }
                }
            }
        }
        stale.len()
    }

    /// Restricts the cache to the owned pools until `valid_until`: hosts of pools given up
    /// leave at once; when pools were gained, every group is fetched again before its next
    /// search.
    pub fn set_serving(&self, allocs: &HashSet<String>, valid_until: Instant) {
        let mut inner = self.inner.lock();
        let Inner { hosts, groups, serving } = &mut *inner;
        let (lost, gained) = match serving.as_ref() {
            None => (true, true),
            Some(s) => (s.allocs.iter().any(|a| !allocs.contains(a)), allocs.iter().any(|a| !s.allocs.contains(a))),
        };
        if lost {
            let gone: Vec<HostId> = hosts.iter().filter(|(_, e)| !allocs.contains(&e.host.alloc_id)).map(|(id, _)| Arc::clone(id)).collect();
            for id in gone {
                if let Some(entry) = hosts.remove(&id) {
                    for key in &entry.groups {
                        if let Some(group) = groups.get_mut(key) {
                            if let Some(old) = group.keys.remove(&id) {
                                group.index.remove(&(old.0, old.1, Arc::clone(&id)));
                            }
                        }
                    }
                }
            }
        }
        if gained {
            for group in groups.values_mut() {
                group.expired = true;
            }
        }
        *serving = Some(Serving { allocs: allocs.clone(), valid_until });
    }

    /// Hosts currently cached (for logs and tests).
    pub fn host_count(&self) -> usize {
        self.inner.lock().hosts.len()
    }

    /// A copy of one cached host (tests, explain).
    pub fn host(&self, id: &str) -> Option<Host> {
        self.inner.lock().hosts.get(id).map(|e| e.host.clone())
    }

    /// Whether a host is reserved or backed off right now.
    pub fn is_reserved(&self, id: &str) -> bool {
        let now = Instant::now();
        self.inner.lock().hosts.get(id).and_then(|e| e.reserved_until).is_some_and(|until| until > now)
    }
}

fn reindex(group: &mut Group, id: &HostId, new_key: (i64, i64)) {
    if let Some(old) = group.keys.insert(Arc::clone(id), new_key) {
        if old == new_key {
            return;
        }
        group.index.remove(&(old.0, old.1, Arc::clone(id)));
    }
    group.index.insert((new_key.0, new_key.1, Arc::clone(id)));
}
