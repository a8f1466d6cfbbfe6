//! The scheduling policy (issue 11): which work goes first and where, beyond Cuebot's order.
//!
//! `legacy` is Cuebot's order and nothing else: priority, then age, within each show's cluster
//! pass, and whichever pass looks first takes a freed host. `smart` adds three rules, each a
//! pure function here so it can be tested on data, and a small in-memory state that the pipeline
//! feeds (`Policy`):
//!
//! - **Reservation with backfill.** A frame that has waited longer than
//!   `scheduler.reservation_after`, fits no host's idle room but fits some host's total, gets the
//!   host that frees soonest held for it (`choose_host`), estimated from the running frames'
//!   start times and their layers' runtime history. Other layers book on a held host only when
//!   they are expected to end before the hold is due (`backfill_ok`). A hold lives in memory
//!   only: it is dropped when its layer books a frame, or when no pass has seen the layer
//!   waiting for `limits::RESERVATION_UNSEEN_MAX_MS` (the frame left: it ran elsewhere, was
//!   killed, or its job was paused).
//! - **Fair share across shows.** On an allocation, each show with unmet demand is entitled to
//!   the pool's cores in proportion to its subscription size. While some show with demand sits
//!   below its entitlement (by more than `scheduler.fair_share_tolerance`), a show above its own
//!   books at most up to it (`fair_budget`). Priority still orders jobs within a show. Demand
//!   and the reported share decay over `scheduler.fair_share_window`.
//! - **Aging.** Within a pass, jobs whose oldest waiting frame has waited longer than
//!   `scheduler.aging_after` go first, longest wait first (`age_order`), so no fitting frame
//!   waits without bound behind a stream of higher-priority work.
//!
//! The database stays the truth: a hold or a fair-share budget only narrows what a pass tries;
//! every booking is still guarded in SQL.

use crate::matching::host_cache::HostId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyName {
    Legacy,
    Smart,
}

impl PolicyName {
    pub fn parse(text: &str) -> Option<PolicyName> {
        match text.trim() {
            "legacy" => Some(PolicyName::Legacy),
            "smart" => Some(PolicyName::Smart),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyName::Legacy => "legacy",
            PolicyName::Smart => "smart",
        }
    }
}

/// The policy's knobs (config keys `scheduler.*`, see README "Scheduling policy").
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySettings {
    pub name: PolicyName,
    /// A frame waiting longer than this that fits no idle room gets a host held.
    pub reservation_after: Duration,
    /// Holds at once, per instance.
    pub reservations_max: usize,
    /// Runtime assumed for a running frame whose layer has no finished frame yet.
    pub runtime_estimate_default: Duration,
    /// Half-life of the demand and share signals.
    pub fair_share_window: Duration,
    /// A show counts as below its entitlement when short of it by more than this fraction.
    pub fair_share_tolerance: f64,
    /// Jobs whose oldest frame waited longer than this go first within a pass.
    pub aging_after: Duration,
    /// How long a pass's unmet demand counts: longer than a blocked cluster sleeps between
    /// passes (derived from `queue.cluster_saturated_sleep`, not a key of its own).
    pub demand_window: Duration,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            name: PolicyName::Legacy,
            reservation_after: Duration::from_secs(10),
            reservations_max: 8,
            runtime_estimate_default: Duration::from_secs(300),
            fair_share_window: Duration::from_secs(30),
            fair_share_tolerance: 0.05,
            aging_after: Duration::from_secs(120),
            demand_window: Duration::from_secs(11),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Reservation choice and backfill
// ------------------------------------------------------------------------------------------------

/// Resources, in the database's units (core units, KiB, GPUs, KiB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub cores: i64,
    pub mem: i64,
    pub gpus: i64,
    pub gpu_mem: i64,
}

impl Need {
    fn fits_in(&self, room: &Need) -> bool {
        self.cores <= room.cores && self.mem <= room.mem && self.gpus <= room.gpus && self.gpu_mem <= room.gpu_mem
    }

    fn add(&mut self, other: &Need) {
        self.cores += other.cores;
        self.mem += other.mem;
        self.gpus += other.gpus;
        self.gpu_mem += other.gpu_mem;
    }
}

/// Whether a frame that fits no idle room is worth a hold: it needs more than one core, or a
/// GPU. A one-core frame takes the next core that frees anyway; a wide frame never does while
/// one-core frames take each core as it frees, and a GPU frame loses the host's last cores to
/// CPU frames the same way.
pub fn worth_holding(need: &Need) -> bool {
    need.cores > crate::model::CORE_UNITS_PER_CORE || need.gpus > 0
}

/// A frame running on a candidate host.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    pub held: Need,
    pub elapsed_secs: f64,
    /// Mean runtime of its layer's finished frames; `None` without history.
    pub estimate_secs: Option<f64>,
}

impl Running {
    /// Seconds until it is expected to end (0 when overdue).
    fn remaining_secs(&self, default_estimate: f64) -> f64 {
        let estimate = self.estimate_secs.unwrap_or(default_estimate);
        // A frame already past its estimate is expected to end soon, not to have ended.
        (estimate - self.elapsed_secs).max(0.0)
    }
}

/// A host that could hold the frame once enough of its running frames end.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub total: Need,
    pub idle: Need,
    pub running: Vec<Running>,
}

/// Seconds until `need` fits on the host, running frames ending in estimated order; `None`
/// when it never fits (the host's total is too small).
pub fn frees_in(candidate: &Candidate, need: &Need, default_estimate_secs: f64) -> Option<f64> {
    estimate_room(candidate, need, default_estimate_secs).map(|(secs, _)| secs)
}

/// Like `frees_in`, and whether the estimate rests on history only: `false` when a frame it
/// waits for has no runtime history (the default estimate stood in) or the listed frames do
/// not account for the room. Only a certain estimate opens a backfill window.
pub fn estimate_room(candidate: &Candidate, need: &Need, default_estimate_secs: f64) -> Option<(f64, bool)> {
    if !need.fits_in(&candidate.total) {
        return None;
    }
    let mut room = candidate.idle;
    if need.fits_in(&room) {
        return Some((0.0, true));
    }
    let mut ending: Vec<&Running> = candidate.running.iter().collect();
    ending.sort_by(|a, b| a.remaining_secs(default_estimate_secs).total_cmp(&b.remaining_secs(default_estimate_secs)));
    let mut certain = true;
    for frame in ending {
        room.add(&frame.held);
        certain &= frame.estimate_secs.is_some();
        if need.fits_in(&room) {
            return Some((frame.remaining_secs(default_estimate_secs), certain));
        }
    }
    // The running frames the database listed do not account for the room (other bookers,
    // stale idle values): assume the longest wait.
    Some((default_estimate_secs, false))
}

/// Until when other layers may backfill a host held from `now` whose room is estimated as
/// `(secs, certain)`: the estimate when it rests on history, else not at all (`now`), so a hold
/// made on guesses drains its host rather than let frames in on a guessed window.
pub fn backfill_until(now: Instant, (secs, certain): (f64, bool)) -> Instant {
    if !certain || !secs.is_finite() {
        return now;
    }
    now.checked_add(Duration::from_secs_f64(secs.clamp(0.0, 1e7))).unwrap_or(now)
}

/// The candidate that frees soonest for `need`, and in how many seconds; ties go to the
/// smaller host (a whole 32-core host is not held for a 16-core frame if a 16-core host frees
/// as soon).
pub fn choose_host(candidates: &[Candidate], need: &Need, default_estimate_secs: f64) -> Option<(usize, (f64, bool))> {
    choose_hosts(candidates, need, default_estimate_secs, 1).into_iter().next()
}

/// The `count` candidates that free soonest for `need`, soonest first (ties as `choose_host`):
/// one host for each of a layer's waiting frames, drained side by side rather than in turn.
pub fn choose_hosts(candidates: &[Candidate], need: &Need, default_estimate_secs: f64, count: usize) -> Vec<(usize, (f64, bool))> {
    let mut ranked: Vec<(usize, (f64, bool), i64)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| estimate_room(c, need, default_estimate_secs).map(|room| (i, room, c.total.cores)))
        .collect();
    ranked.sort_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(count).map(|(i, room, _)| (i, room)).collect()
}

/// Whether a frame of a layer with this runtime estimate may book on a host held until `due`:
/// only when it is expected to end before then. A layer with no history never backfills.
pub fn backfill_ok(now: Instant, due: Instant, estimate_secs: Option<f64>) -> bool {
    estimate_secs.is_some_and(|secs| secs.is_finite() && secs >= 0.0 && now.checked_add(Duration::from_secs_f64(secs.min(1e9))).is_some_and(|end| end <= due))
}

// ------------------------------------------------------------------------------------------------
// Fair share
// ------------------------------------------------------------------------------------------------

/// One show's subscription on an allocation, as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShowUse {
    pub show_id: String,
    /// Subscription size, core units.
    pub size: i64,
    /// Cores booked now, core units.
    pub used: i64,
    /// It had frames left unbooked in a recent pass.
    pub demanding: bool,
    /// Core units of the frames its last such pass left unbooked (a lower bound of what it
    /// waits for: a pass reads a bounded batch); 0 when not demanding.
    pub waiting: i64,
    /// Core units of the smallest frame that pass found no host for while no host had that
    /// much idle room (`i64::MAX`: none). Room of that size appearing since is room the show
    /// can use, so a show above its share is held back from it (`Policy::budget`).
    pub waiting_min: i64,
}

/// Each demanding show's entitlement on a pool of `pool_cores` (`show` always counts, as
/// demanding without limit): the pool shared by subscription size, weighted max-min. No show is
/// entitled to more than it asks for (what it holds plus what it waits for); what such a show
/// leaves is shared again among the others by size. Shows with size 0 are entitled to nothing.
pub fn entitlements(pool_cores: i64, shows: &[ShowUse], show: &str) -> HashMap<String, i64> {
    let demanding: Vec<&ShowUse> = shows.iter().filter(|s| s.demanding || s.show_id == show).collect();
    let asks = |s: &ShowUse| if s.show_id == show { i64::MAX } else { s.used.max(0).saturating_add(s.waiting.max(0)) };
    let mut given: HashMap<String, i64> = demanding.iter().map(|s| (s.show_id.clone(), 0)).collect();
    let mut open: Vec<&ShowUse> = demanding.iter().copied().filter(|s| s.size > 0).collect();
    let mut left = pool_cores.max(0);
    while !open.is_empty() && left > 0 {
        let weight: i64 = open.iter().map(|s| s.size).sum();
        let fair = |s: &ShowUse| (left as f64 * s.size as f64 / weight as f64) as i64;
        let (capped, rest): (Vec<&ShowUse>, Vec<&ShowUse>) = open.iter().partition(|s| asks(s) <= fair(s));
        if capped.is_empty() {
            for s in &rest {
                given.insert(s.show_id.clone(), fair(s));
            }
            break;
        }
        for s in &capped {
            left -= asks(s);
            given.insert(s.show_id.clone(), asks(s));
        }
        open = rest;
    }
    given
}

/// How many more core units `show` may book on the pool in this pass; `None`: no fair-share
/// limit (no other show is starved, or `show` is at or below its entitlement).
pub fn fair_budget(pool_cores: i64, shows: &[ShowUse], show: &str, tolerance: f64) -> Option<i64> {
    let entitled = entitlements(pool_cores, shows, show);
    let mine = shows.iter().find(|s| s.show_id == show)?;
    let my_entitlement = *entitled.get(show)?;
    let slack = (pool_cores as f64 * tolerance.max(0.0)) as i64;
    let starved = shows
        .iter()
        .filter(|s| s.show_id != show && s.demanding)
        .any(|s| entitled.get(&s.show_id).is_some_and(|e| s.used + slack < *e));
    if !starved {
        return None;
    }
    Some((my_entitlement - mine.used).max(0))
}

// ------------------------------------------------------------------------------------------------
// Aging
// ------------------------------------------------------------------------------------------------

/// The order of a pass's jobs (indices into `waits`, each job's oldest waiting frame in
/// seconds, given in Cuebot's order): jobs that waited past `aging_after` first, longest wait
/// first; the rest keep their order.
pub fn age_order(waits: &[f64], aging_after: Duration) -> Vec<usize> {
    let limit = aging_after.as_secs_f64();
    let mut aged: Vec<usize> = (0..waits.len()).filter(|&i| waits[i] > limit).collect();
    aged.sort_by(|&a, &b| waits[b].total_cmp(&waits[a]).then(a.cmp(&b)));
    aged.extend((0..waits.len()).filter(|&i| waits[i] <= limit));
    aged
}

// ------------------------------------------------------------------------------------------------
// State
// ------------------------------------------------------------------------------------------------

/// A host held for one waiting frame of a layer.
#[derive(Clone, Debug)]
pub struct Hold {
    pub host_id: HostId,
    pub host_name: String,
    pub layer_id: String,
    pub layer_name: String,
    pub job_id: String,
    pub job_name: String,
    pub frame_name: String,
    pub need: Need,
    /// Since when its frame has waited: at `reservations_max`, an older frame's hold takes the
    /// place of the youngest (`Policy::hold`).
    pub waiting_since: Instant,
    pub made_at: Instant,
    /// When the host is expected to have room for the frame.
    pub due: Instant,
    /// Other layers may book on the host only if expected to end by then (`backfill_until`).
    pub backfill_until: Instant,
    /// The last pass that saw the layer still waiting.
    pub seen: Instant,
    /// When `due` was last estimated (it is re-estimated as runtime history grows).
    pub checked: Instant,
}

/// Holds by host, shared with checkouts without locking the policy.
pub type HoldMap = HashMap<HostId, Hold>;

/// What a checkout needs to respect holds: the holds, the layer searching, its runtime
/// estimate and the time of the search.
pub struct HoldCheck<'a> {
    pub holds: &'a HoldMap,
    pub layer_id: &'a str,
    pub estimate_secs: Option<f64>,
    pub now: Instant,
}

impl HoldCheck<'_> {
    /// A host held for another layer takes this layer's frame only as backfill.
    pub fn admits(&self, host_id: &HostId) -> bool {
        match self.holds.get(host_id) {
            None => true,
            Some(hold) if hold.layer_id == self.layer_id => true,
            Some(hold) => backfill_ok(self.now, hold.backfill_until, self.estimate_secs),
        }
    }
}

/// One show's subscription on one pool, as last read, with its decayed signals.
#[derive(Clone, Debug)]
struct ShowState {
    row: SubscriptionRow,
    /// Decayed used ÷ entitlement, for the gauge and `explain`.
    share: f64,
    last_demand: Option<Instant>,
    /// Core units the last pass that left frames unbooked left (`ShowUse::waiting`).
    waiting: i64,
    /// `ShowUse::waiting_min` of that pass.
    waiting_min: i64,
}

#[derive(Default)]
struct State {
    holds: Arc<HoldMap>,
    /// Layer id → when a hold was last tried for it (one try per `RESERVATION_RETRY_MS`).
    tried: HashMap<String, Instant>,
    /// Layer id → (mean runtime of its finished frames, when read).
    estimates: HashMap<String, (Option<f64>, Instant)>,
    /// (alloc id, show id) → state.
    shows: HashMap<(String, String), ShowState>,
    /// Alloc id → cores of its open hosts, and how many of them are idle.
    pools: HashMap<String, Pool>,
    last_decay: Option<Instant>,
}

/// One allocation's open hosts, core units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    pub cores: i64,
    pub idle: i64,
    /// The most idle cores of any one open host.
    pub largest_idle: i64,
}

impl Pool {
    /// Work conservation: fair share protects a full pool's freed cores. With
    /// `FAIR_SHARE_IDLE_LIFT_PERCENT` or more of the pool idle, the shows short of their share
    /// had their chance and could not use it, and nobody is held back.
    pub fn has_idle_room(&self) -> bool {
        self.idle * 100 >= self.cores * crate::limits::FAIR_SHARE_IDLE_LIFT_PERCENT
    }
}

/// One subscription as read for fair share (core units).
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionRow {
    pub alloc_id: String,
    pub alloc_name: String,
    pub show_id: String,
    pub show_name: String,
    pub size: i64,
    pub used: i64,
}

/// What the policy shows about one show on one pool (for `/status`, metrics and `explain`).
#[derive(Clone, Debug, PartialEq)]
pub struct ShareView {
    pub subscription: SubscriptionRow,
    pub entitled: i64,
    pub share: f64,
    pub demanding: bool,
}

pub struct Policy {
    pub settings: PolicySettings,
    state: Mutex<State>,
}

impl Policy {
    pub fn new(settings: PolicySettings) -> Policy {
        Policy { settings, state: Mutex::new(State::default()) }
    }

    pub fn smart(&self) -> bool {
        self.settings.name == PolicyName::Smart
    }

    /// The cached runtime estimate of a layer (`None`: unknown or no history).
    pub fn estimate(&self, layer_id: &str) -> Option<f64> {
        self.state.lock().estimates.get(layer_id).and_then(|(estimate, _)| *estimate)
    }

    /// The holds now (cheap: a shared snapshot).
    pub fn holds(&self) -> Arc<HoldMap> {
        Arc::clone(&self.state.lock().holds)
    }

    /// Whether the layer may try for more holds now: fewer than `wanted` of its own, no try
    /// within `RESERVATION_RETRY_MS`, and fewer than `reservations_max` holds in all or one
    /// held for a frame younger than its frames (which have waited since `waiting_since`).
    pub fn may_try_hold(&self, layer_id: &str, wanted: usize, waiting_since: Instant, now: Instant) -> bool {
        let mut state = self.state.lock();
        let own = state.holds.values().filter(|h| h.layer_id == layer_id).count();
        if own >= wanted || (state.holds.len() >= self.settings.reservations_max && youngest(&state.holds, waiting_since).is_none()) {
            return false;
        }
        let retry = Duration::from_millis(crate::limits::RESERVATION_RETRY_MS);
        if state.tried.get(layer_id).is_some_and(|t| now.duration_since(*t) < retry) {
            return false;
        }
        state.tried.insert(layer_id.to_string(), now);
        if state.tried.len() > crate::limits::POLICY_LAYERS_TRACKED_MAX {
            state.tried.retain(|_, t| now.duration_since(*t) < retry);
        }
        true
    }

    /// Records a hold unless the host is already held. At `reservations_max` holds it takes
    /// the place of the hold whose frame waited least, if that frame waited less than this
    /// one (oldest frames first, as a queue would serve them), else it is refused. A layer may
    /// hold several hosts, one per waiting frame. Returns whether it was recorded, and the
    /// hold it displaced.
    pub fn hold(&self, hold: Hold) -> (bool, Option<Hold>) {
        let mut state = self.state.lock();
        if state.holds.contains_key(&hold.host_id) {
            return (false, None);
        }
        let victim = if state.holds.len() >= self.settings.reservations_max {
            let Some(victim) = youngest(&state.holds, hold.waiting_since) else { return (false, None) };
            Some(victim)
        } else {
            None
        };
        let mut holds = (*state.holds).clone();
        let displaced = victim.and_then(|v| holds.remove(&v));
        holds.insert(Arc::clone(&hold.host_id), hold);
        state.holds = Arc::new(holds);
        (true, displaced)
    }

    /// The holds of a layer, soonest due first.
    pub fn holds_of(&self, layer_id: &str) -> Vec<Hold> {
        let mut out: Vec<Hold> = self.state.lock().holds.values().filter(|h| h.layer_id == layer_id).cloned().collect();
        out.sort_by_key(|h| h.due);
        out
    }

    /// A new estimate of when a held host has room, and of its backfill window.
    pub fn set_due(&self, host_id: &HostId, due: Instant, backfill_until: Instant, now: Instant) {
        let mut state = self.state.lock();
        if !state.holds.contains_key(host_id) {
            return;
        }
        let mut holds = (*state.holds).clone();
        if let Some(hold) = holds.get_mut(host_id) {
            hold.due = due;
            hold.backfill_until = backfill_until;
            hold.checked = now;
        }
        state.holds = Arc::new(holds);
    }

    /// The layer is still waiting (a pass saw it): its holds stay.
    pub fn seen(&self, layer_id: &str, now: Instant) {
        let mut state = self.state.lock();
        if !state.holds.values().any(|h| h.layer_id == layer_id) {
            return;
        }
        let mut holds = (*state.holds).clone();
        for hold in holds.values_mut().filter(|h| h.layer_id == layer_id) {
            hold.seen = now;
        }
        state.holds = Arc::new(holds);
    }

    /// The layer booked a frame on `host_id`: one frame fewer waits, so one of its holds goes,
    /// the one on that host if it has one, else the one due last. Returns the dropped hold.
    pub fn booked(&self, layer_id: &str, host_id: &HostId) -> Option<Hold> {
        let mut state = self.state.lock();
        let victim = match state.holds.get(host_id) {
            Some(h) if h.layer_id == layer_id => Arc::clone(host_id),
            _ => Arc::clone(&state.holds.values().filter(|h| h.layer_id == layer_id).max_by_key(|h| h.due)?.host_id),
        };
        remove_hold(&mut state, &victim)
    }

    /// Drops the hold on a host; returns it.
    pub fn release(&self, host_id: &HostId) -> Option<Hold> {
        remove_hold(&mut self.state.lock(), host_id)
    }

    /// Drops holds no pass has seen waiting for `unseen_max`; returns them.
    pub fn expire(&self, now: Instant, unseen_max: Duration) -> Vec<Hold> {
        self.drop_where(|h| now.duration_since(h.seen) > unseen_max)
    }

    fn drop_where(&self, doomed: impl Fn(&Hold) -> bool) -> Vec<Hold> {
        let mut state = self.state.lock();
        if !state.holds.values().any(&doomed) {
            return Vec::new();
        }
        let mut holds = (*state.holds).clone();
        let gone: Vec<HostId> = holds.values().filter(|h| doomed(h)).map(|h| Arc::clone(&h.host_id)).collect();
        let dropped = gone.iter().filter_map(|id| holds.remove(id)).collect();
        state.holds = Arc::new(holds);
        dropped
    }

    /// Cached runtime estimates of layers, and the layers whose estimate is missing or older
    /// than `max_age` (to be read).
    pub fn estimates(&self, layer_ids: &[String], now: Instant, max_age: Duration) -> (HashMap<String, Option<f64>>, Vec<String>) {
        let state = self.state.lock();
        let mut known = HashMap::new();
        let mut stale = Vec::new();
        for id in layer_ids {
            match state.estimates.get(id) {
                Some((estimate, at)) if now.duration_since(*at) < max_age => {
                    known.insert(id.clone(), *estimate);
                }
                _ => stale.push(id.clone()),
            }
        }
        (known, stale)
    }

    pub fn store_estimates(&self, read: &[(String, Option<f64>)], now: Instant) {
        let mut state = self.state.lock();
        for (id, estimate) in read {
            state.estimates.insert(id.clone(), (*estimate, now));
        }
        if state.estimates.len() > crate::limits::POLICY_LAYERS_TRACKED_MAX {
            let max_age = Duration::from_millis(crate::limits::RUNTIME_ESTIMATE_MAX_AGE_MS);
            state.estimates.retain(|_, (_, at)| now.duration_since(*at) < max_age);
        }
    }

    /// A pass of `show` on the pool left `unmet` core units of frames unbooked (0: none), the
    /// smallest frame it found no host for being `unmatched_min` core units (`i64::MAX`: none).
    /// A frame that found no host although the pool's last read showed a host with that much
    /// idle room waits for something else (memory, tags): it does not count as able to use room.
    pub fn note_pass(&self, alloc_id: &str, show_id: &str, unmet: i64, unmatched_min: i64, now: Instant) {
        if unmet <= 0 {
            return;
        }
        let mut state = self.state.lock();
        let largest_idle = state.pools.get(alloc_id).map_or(0, |p| p.largest_idle);
        if let Some(s) = state.shows.get_mut(&(alloc_id.to_string(), show_id.to_string())) {
            s.last_demand = Some(now);
            s.waiting = unmet;
            s.waiting_min = if unmatched_min <= largest_idle { i64::MAX } else { unmatched_min };
        }
    }

    /// Installs a fresh read of the subscriptions and each pool's cores. Decays the share signal.
    pub fn update_subscriptions(&self, rows: &[SubscriptionRow], pools: HashMap<String, Pool>, now: Instant) {
        let mut state = self.state.lock();
        let elapsed = state.last_decay.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        state.last_decay = Some(now);
        let half_life = self.settings.fair_share_window.as_secs_f64().max(1e-3);
        let keep = 0.5f64.powf(elapsed / half_life);
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            let key = (row.alloc_id.clone(), row.show_id.clone());
            let previous = state.shows.remove(&key);
            next.insert(
                key,
                ShowState {
                    row: row.clone(),
                    share: previous.as_ref().map_or(0.0, |p| p.share),
                    last_demand: previous.as_ref().and_then(|p| p.last_demand),
                    waiting: previous.as_ref().map_or(0, |p| p.waiting),
                    waiting_min: previous.map_or(i64::MAX, |p| p.waiting_min),
                },
            );
        }
        state.shows = next;
        state.pools = pools;
        // The share gauge: used ÷ entitlement among demanding shows, decayed.
        let views = views_of(&state, self.demand_window(), now);
        for view in views {
            let sub = &view.subscription;
            if let Some(s) = state.shows.get_mut(&(sub.alloc_id.clone(), sub.show_id.clone())) {
                let instant = if view.entitled > 0 { sub.used as f64 / view.entitled as f64 } else { 0.0 };
                s.share = s.share * keep + instant * (1.0 - keep);
            }
        }
    }

    fn demand_window(&self) -> Duration {
        self.settings.demand_window
    }

    /// The fair-share budget of `show` on `alloc` now (see `fair_budget`). It binds on a
    /// nearly full pool, and on a pool with idle cores where one host's idle room fits the
    /// smallest frame another show with demand found no host for (`ShowUse::waiting_min`: room
    /// freed since its last pass, which that show can use), provided some show is short of its
    /// share. Otherwise the idle cores are of no use to the other shows, and nobody is held back.
    pub fn budget(&self, alloc_id: &str, show_id: &str, now: Instant) -> Option<i64> {
        let state = self.state.lock();
        let pool = *state.pools.get(alloc_id)?;
        let shows = shows_of(&state, alloc_id, self.demand_window(), now);
        if pool.has_idle_room() && !shows.iter().any(|s| s.show_id != show_id && s.demanding && s.waiting_min <= pool.largest_idle) {
            return None;
        }
        fair_budget(pool.cores, &shows, show_id, self.settings.fair_share_tolerance)
    }

    /// Every show's share on every pool.
    pub fn shares(&self, now: Instant) -> Vec<ShareView> {
        views_of(&self.state.lock(), self.demand_window(), now)
    }
}

/// Removes the hold on `host_id` from the shared map (copied only when there is one).
fn remove_hold(state: &mut State, host_id: &HostId) -> Option<Hold> {
    if !state.holds.contains_key(host_id) {
        return None;
    }
    let mut holds = (*state.holds).clone();
    let gone = holds.remove(host_id);
    state.holds = Arc::new(holds);
    gone
}

/// The host of the hold whose frame has waited least, if it waited less than a frame waiting
/// since `since` (by more than `RESERVATION_DISPLACE_MS`, so equals do not trade places).
fn youngest(holds: &HoldMap, since: Instant) -> Option<HostId> {
    let margin = Duration::from_millis(crate::limits::RESERVATION_DISPLACE_MS);
    holds
        .values()
        .filter(|h| h.waiting_since.checked_duration_since(since).is_some_and(|d| d > margin))
        .max_by_key(|h| h.waiting_since)
        .map(|h| Arc::clone(&h.host_id))
}

/// `/policy` on the metrics port: one line per hold and per show share, `key=value` pairs
/// separated by spaces, values percent-encoded (`explain` reads it back with `parse_line`).
pub fn render_status(policy: &Policy, now: Instant) -> String {
    let mut out = format!("policy name={}\n", policy.settings.name.name());
    let mut holds: Vec<Hold> = policy.holds().values().cloned().collect();
    holds.sort_by_key(|h| h.made_at);
    for h in holds {
        let fields = [
            ("host", h.host_name.clone()),
            ("layer_id", h.layer_id.clone()),
            ("layer", h.layer_name.clone()),
            ("job_id", h.job_id.clone()),
            ("job", h.job_name.clone()),
            ("frame", h.frame_name.clone()),
            ("cores", format!("{}", h.need.cores / crate::model::CORE_UNITS_PER_CORE)),
            ("held_for_s", format!("{:.1}", now.saturating_duration_since(h.made_at).as_secs_f64())),
            ("due_in_s", format!("{:.1}", h.due.saturating_duration_since(now).as_secs_f64())),
        ];
        out.push_str(&render_line("hold", &fields));
    }
    for v in policy.shares(now) {
        let fields = [
            ("alloc", v.subscription.alloc_name.clone()),
            ("show", v.subscription.show_name.clone()),
            ("size_cores", format!("{}", v.subscription.size / crate::model::CORE_UNITS_PER_CORE)),
            ("used_cores", format!("{}", v.subscription.used / crate::model::CORE_UNITS_PER_CORE)),
            ("entitled_cores", format!("{}", v.entitled / crate::model::CORE_UNITS_PER_CORE)),
            ("share", format!("{:.3}", v.share)),
            ("demanding", v.demanding.to_string()),
        ];
        out.push_str(&render_line("share", &fields));
    }
    out
}

fn render_line(kind: &str, fields: &[(&str, String)]) -> String {
    let mut line = kind.to_string();
    for (key, value) in fields {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(&encode(value));
    }
    line.push('\n');
    line
}

fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One `/policy` line: its kind and its fields (unknown or malformed parts are skipped).
pub fn parse_line(line: &str) -> Option<(String, HashMap<String, String>)> {
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    let kind = parts.next()?.to_string();
    let fields = parts.filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), decode(v))).collect();
    Some((kind, fields))
}

fn shows_of(state: &State, alloc_id: &str, window: Duration, now: Instant) -> Vec<ShowUse> {
    let recent = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) <= window);
    let mut shows: Vec<ShowUse> = state
        .shows
        .iter()
        .filter(|((alloc, _), _)| alloc == alloc_id)
        .map(|((_, show), s)| ShowUse {
            show_id: show.clone(),
            size: s.row.size,
            used: s.row.used,
            demanding: recent(s.last_demand),
            waiting: if recent(s.last_demand) { s.waiting } else { 0 },
            waiting_min: if recent(s.last_demand) { s.waiting_min } else { i64::MAX },
        })
        .collect();
    shows.sort_by(|a, b| a.show_id.cmp(&b.show_id));
    shows
}

fn views_of(state: &State, window: Duration, now: Instant) -> Vec<ShareView> {
    let mut out = Vec::new();
    for (alloc, pool) in &state.pools {
        let shows = shows_of(state, alloc, window, now);
        for ((_, show), s) in state.shows.iter().filter(|((a, _), _)| a == alloc) {
            out.push(ShareView {
                subscription: s.row.clone(),
                entitled: entitlements(pool.cores, &shows, show).get(show).copied().unwrap_or(0),
                share: s.share,
                demanding: shows.iter().any(|u| u.show_id == *show && u.demanding),
            });
        }
    }
    out.sort_by(|a, b| (&a.subscription.alloc_id, &a.subscription.show_name).cmp(&(&b.subscription.alloc_id, &b.subscription.show_name)));
    out
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
