//! Data-driven tests of the policy rules: reservation choice, the backfill window, the
//! fair-share order and budget, aging.

use super::*;

const CORE: i64 = 100;
const GIB: i64 = 1 << 20;

fn need(cores: i64) -> Need {
    Need { cores: cores * CORE, mem: 4 * GIB, gpus: 0, gpu_mem: 0 }
}

fn running(cores: i64, elapsed: f64, estimate: Option<f64>) -> Running {
    Running { held: need(cores), elapsed_secs: elapsed, estimate_secs: estimate }
}

fn host(total_cores: i64, idle_cores: i64, running: Vec<Running>) -> Candidate {
    Candidate {
        total: Need { cores: total_cores * CORE, mem: 128 * GIB, gpus: 0, gpu_mem: 0 },
        idle: Need { cores: idle_cores * CORE, mem: 128 * GIB - 4 * GIB * running.len() as i64, gpus: 0, gpu_mem: 0 },
        running,
    }
}

#[test]
fn frees_in_adds_running_frames_in_estimated_end_order() {
    // (idle cores, running (cores, elapsed, estimate)), need cores, expected seconds.
    // (cores, elapsed secs, estimate secs) of each running frame.
    type Frames<'a> = &'a [(i64, f64, Option<f64>)];
    let cases: &[(i64, Frames, i64, Option<f64>)] = &[
        // Already fits.
        (32, &[], 16, Some(0.0)),
        // Needs the two frames ending first: 4 s left, then 10 s left.
        (14, &[(1, 6.0, Some(10.0)), (1, 0.0, Some(20.0)), (1, 4.0, Some(9.0))], 16, Some(5.0)),
        // Overdue frames count as ending now.
        (15, &[(1, 50.0, Some(10.0))], 16, Some(0.0)),
        // No history: the default estimate (300 s) applies.
        (15, &[(1, 100.0, None)], 16, Some(200.0)),
        // Never fits: larger than the host.
        (32, &[], 33, None),
    ];
    for (idle, frames, cores, expected) in cases {
        let frames: Vec<Running> = frames.iter().map(|(c, e, est)| running(*c, *e, *est)).collect();
        let candidate = host(32, *idle, frames);
        let got = frees_in(&candidate, &need(*cores), 300.0);
        assert_eq!(got.map(|s| (s * 1000.0).round() / 1000.0), *expected, "idle {idle}, need {cores}");
    }
}

#[test]
fn choose_host_takes_the_host_that_frees_soonest() {
    let candidates = vec![
        // Frees 16 cores in 30 s.
        host(32, 0, (0..32).map(|_| running(1, 10.0, Some(40.0))).collect()),
        // Frees 16 cores in 5 s (16 frames end at 5 s, the rest at 100 s).
        host(32, 0, (0..32).map(|i| running(1, 0.0, Some(if i < 16 { 5.0 } else { 100.0 }))).collect()),
        // Too small.
        host(8, 8, vec![]),
    ];
    assert_eq!(choose_host(&candidates, &need(16), 300.0), Some((1, (5.0, true))));
    // Ties go to the smaller host.
    let tie = vec![host(32, 16, vec![]), host(16, 16, vec![])];
    assert_eq!(choose_host(&tie, &need(16), 300.0), Some((1, (0.0, true))));
    assert_eq!(choose_host(&[host(8, 8, vec![])], &need(16), 300.0), None);
}

#[test]
fn choose_hosts_takes_one_host_per_frame_soonest_first() {
    let frees_at = |secs: f64| host(32, 0, vec![running(32, 0.0, Some(secs))]);
    let candidates = vec![frees_at(30.0), frees_at(5.0), host(8, 8, vec![]), frees_at(12.0), frees_at(5.0)];
    let picked = |count| choose_hosts(&candidates, &need(32), 300.0, count).into_iter().map(|(i, _)| i).collect::<Vec<_>>();
    // Equal estimates keep the candidates' order; the host too small is never picked.
    assert_eq!(picked(3), [1, 4, 3]);
    assert_eq!(picked(9), [1, 4, 3, 0]);
    assert!(picked(0).is_empty());
}

#[test]
fn only_wide_or_gpu_frames_are_worth_a_hold() {
    assert!(!worth_holding(&need(1)));
    assert!(worth_holding(&need(2)));
    assert!(worth_holding(&Need { gpus: 1, ..need(1) }));
}

#[test]
fn only_an_estimate_from_history_opens_a_backfill_window() {
    let now = Instant::now();
    // (running frames (cores, elapsed, estimate), need, expected window in seconds)
    type Frames<'a> = &'a [(i64, f64, Option<f64>)];
    let cases: &[(Frames, i64, f64)] = &[
        // Both frames it waits for have history: the window is their estimate.
        (&[(8, 2.0, Some(12.0)), (8, 0.0, Some(5.0))], 16, 10.0),
        // One of them has none: no window (the host drains).
        (&[(8, 2.0, None), (8, 0.0, Some(5.0))], 16, 0.0),
        // The frame without history is not one it waits for.
        (&[(8, 2.0, Some(4.0)), (8, 0.0, None)], 8, 2.0),
    ];
    for (frames, cores, window) in cases {
        let frames: Vec<Running> = frames.iter().map(|(c, e, est)| running(*c, *e, *est)).collect();
        let candidate = host(16, 0, frames);
        let room = estimate_room(&candidate, &need(*cores), 300.0).expect("fits the host");
        let until = backfill_until(now, room);
        assert_eq!((until - now).as_secs_f64().round(), *window, "{cases:?}");
    }
}

#[test]
fn backfill_only_ends_before_the_hold_is_due() {
    let now = Instant::now();
    let due = now + Duration::from_secs(20);
    // (estimate, may backfill)
    let cases: &[(Option<f64>, bool)] = &[
        (Some(5.0), true),
        (Some(20.0), true),
        (Some(20.5), false),
        (None, false),
        (Some(f64::NAN), false),
        (Some(f64::INFINITY), false),
        (Some(-1.0), false),
    ];
    for (estimate, expected) in cases {
        assert_eq!(backfill_ok(now, due, *estimate), *expected, "estimate {estimate:?}");
    }
    // A hold already due takes nothing.
    assert!(!backfill_ok(now, now, Some(0.5)));
}

/// A show; a demanding one waits for more than any pool here holds.
fn show(id: &str, size: i64, used: i64, demanding: bool) -> ShowUse {
    ShowUse { show_id: id.into(), size: size * CORE, used: used * CORE, demanding, waiting: if demanding { 10_000 * CORE } else { 0 }, waiting_min: i64::MAX }
}

/// A demanding show that waits for `waiting` more cores.
fn asking(id: &str, size: i64, used: i64, waiting: i64) -> ShowUse {
    ShowUse { show_id: id.into(), size: size * CORE, used: used * CORE, demanding: true, waiting: waiting * CORE, waiting_min: i64::MAX }
}

#[test]
fn fair_budget_caps_a_show_over_its_entitlement_while_another_is_starved() {
    let pool = 100 * CORE;
    // (shows, the show asking, expected budget in cores: None = no limit)
    let cases: Vec<(Vec<ShowUse>, &str, Option<i64>)> = vec![
        // a (size 20) holds 90 while b (size 50) with demand holds 10: a is capped at its
        // entitlement among {a, b}: 100 × 20/70 = 28, already exceeded, so 0.
        (vec![show("a", 20, 90, true), show("b", 50, 10, true)], "a", Some(0)),
        // b is under its entitlement: no limit for b.
        (vec![show("a", 20, 90, true), show("b", 50, 10, true)], "b", None),
        // b has no demand: a may take everything.
        (vec![show("a", 20, 90, true), show("b", 50, 10, false)], "a", None),
        // b within tolerance (5 % of 100 = 5 cores) of its 71-core entitlement: no limit.
        (vec![show("a", 20, 29, true), show("b", 50, 67, true)], "a", None),
        // a below its entitlement of 28 while c starves: budget is the rest of its share.
        (vec![show("a", 20, 10, true), show("b", 50, 80, true), show("c", 30, 5, true)], "a", Some(10)),
        // A show with no subscription row is not limited.
        (vec![show("b", 50, 10, true)], "x", None),
    ];
    for (shows, asking, expected) in cases {
        let got = fair_budget(pool, &shows, asking, 0.05).map(|units| units / CORE);
        assert_eq!(got, expected, "{asking} in {shows:?}");
    }
}

#[test]
fn entitlements_split_the_pool_by_size_among_demanding_shows() {
    let shows = vec![show("a", 20, 0, true), show("b", 50, 0, true), show("c", 30, 0, false)];
    let e = entitlements(140 * CORE, &shows, "a");
    assert_eq!(e.get("a"), Some(&(40 * CORE)));
    assert_eq!(e.get("b"), Some(&(100 * CORE)));
    assert_eq!(e.get("c"), None);
    // The asking show always counts.
    let e = entitlements(100 * CORE, &shows, "c");
    assert_eq!(e.get("c"), Some(&(30 * CORE)));
}

#[test]
fn entitlements_never_exceed_what_a_show_asks_for() {
    // b (size 50) holds 10 and waits for 5 more: entitled to its 15; a and c share the other
    // 85 by size, 2:3.
    let shows = vec![asking("a", 20, 0, 500), asking("b", 50, 10, 5), asking("c", 30, 0, 500)];
    let e = entitlements(100 * CORE, &shows, "a");
    assert_eq!((e["a"] / CORE, e["b"] / CORE, e["c"] / CORE), (34, 15, 51));
    // Capping b leaves c over its demand in the second round: c gets its 40, a the rest.
    let shows = vec![asking("a", 20, 0, 500), asking("b", 50, 10, 5), asking("c", 30, 30, 10)];
    let e = entitlements(100 * CORE, &shows, "a");
    assert_eq!((e["a"] / CORE, e["b"] / CORE, e["c"] / CORE), (45, 15, 40));
    // The asking show is never capped by what the last pass saw of it.
    let e = entitlements(100 * CORE, &[asking("a", 20, 0, 0), asking("b", 80, 10, 0)], "a");
    assert_eq!((e["a"] / CORE, e["b"] / CORE), (90, 10));
    // So a show whose demand is met is not starved, and does not hold the big asker back.
    let shows = vec![asking("a", 20, 80, 50), asking("b", 80, 10, 0)];
    assert_eq!(fair_budget(100 * CORE, &shows, "a", 0.05), None);
    let shows = vec![asking("a", 20, 80, 50), asking("b", 80, 10, 30)];
    assert_eq!(fair_budget(100 * CORE, &shows, "a", 0.05).map(|u| u / CORE), Some(0), "b waits for 30 and holds 10 of its 40");
}

#[test]
fn aging_moves_long_waiting_jobs_first_and_keeps_the_rest_in_order() {
    let after = Duration::from_secs(60);
    // (oldest waits in Cuebot's order, expected order)
    let cases: &[(&[f64], &[usize])] = &[
        (&[1.0, 2.0, 3.0], &[0, 1, 2]),
        (&[1.0, 61.0, 3.0, 90.0], &[3, 1, 0, 2]),
        (&[70.0, 70.0, 1.0], &[0, 1, 2]),
        (&[], &[]),
    ];
    for (waits, expected) in cases {
        assert_eq!(age_order(waits, after), expected.to_vec(), "{waits:?}");
    }
}

fn hold(host: &str, layer: &str, seen: Instant) -> Hold {
    Hold {
        host_id: Arc::from(host),
        host_name: host.into(),
        layer_id: layer.into(),
        layer_name: layer.into(),
        job_id: "j".into(),
        job_name: "j".into(),
        frame_name: "0001-wide".into(),
        need: need(16),
        waiting_since: seen,
        made_at: seen,
        due: seen + Duration::from_secs(10),
        backfill_until: seen + Duration::from_secs(10),
        seen,
        checked: seen,
    }
}

#[test]
fn holds_are_one_per_host_several_per_layer_and_go_when_booked_or_unseen() {
    let policy = Policy::new(PolicySettings { name: PolicyName::Smart, reservations_max: 3, ..PolicySettings::default() });
    let t0 = Instant::now();
    let id = |h: &str| -> HostId { Arc::from(h) };
    assert!(policy.hold(hold("h1", "L1", t0)).0);
    assert!(!policy.hold(hold("h1", "L2", t0)).0, "host already held");
    assert!(policy.hold(hold("h2", "L1", t0)).0, "a layer holds one host per waiting frame");
    assert!(!policy.may_try_hold("L1", 2, t0, t0), "a layer holding as many hosts as it wants does not try again");
    assert!(policy.may_try_hold("L1", 3, t0, t0), "it tries for a third frame");
    assert!(policy.hold(hold("h3", "L2", t0)).0);
    assert!(!policy.hold(hold("h4", "L3", t0)).0, "reservations_max, and no hold's frame waited less");
    assert!(!policy.may_try_hold("L3", 1, t0, t0 + Duration::from_secs(5)), "no room under reservations_max");
    policy.set_due(&id("h2"), t0 + Duration::from_secs(30), t0 + Duration::from_secs(2), t0 + Duration::from_secs(1));
    let l1 = policy.holds_of("L1");
    let names: Vec<&str> = l1.iter().map(|h| h.host_name.as_str()).collect();
    assert_eq!(names, ["h1", "h2"], "soonest due first");
    assert_eq!((l1[1].due, l1[1].checked), (t0 + Duration::from_secs(30), t0 + Duration::from_secs(1)));
    // A frame booked on a host the layer holds lets that hold go; one booked elsewhere lets
    // the hold due last go (one frame fewer waits), and never another layer's.
    assert_eq!(policy.booked("L1", &id("h1")).map(|h| h.host_name), Some("h1".to_string()));
    assert!(policy.hold(hold("h1", "L1", t0)).0);
    assert_eq!(policy.booked("L1", &id("h3")).map(|h| h.host_name), Some("h2".to_string()));
    assert_eq!(policy.booked("L1", &id("h9")).map(|h| h.host_name), Some("h1".to_string()));
    assert!(policy.booked("L1", &id("h3")).is_none(), "L1 holds nothing now");
    assert_eq!(policy.holds().len(), 1);
    policy.seen("L2", t0 + Duration::from_secs(20));
    assert!(policy.expire(t0 + Duration::from_secs(40), Duration::from_secs(30)).is_empty());
    let gone = policy.expire(t0 + Duration::from_secs(51), Duration::from_secs(30));
    assert_eq!(gone.len(), 1);
    assert!(policy.holds().is_empty());
}

#[test]
fn at_reservations_max_a_frame_that_waited_longer_displaces_the_youngest_hold() {
    let policy = Policy::new(PolicySettings { name: PolicyName::Smart, reservations_max: 2, ..PolicySettings::default() });
    let t0 = Instant::now();
    let since = |h: &str, l: &str, secs: u64| Hold { waiting_since: t0 + Duration::from_secs(secs), ..hold(h, l, t0 + Duration::from_secs(60)) };
    assert!(policy.hold(since("h1", "old", 0)).0);
    assert!(policy.hold(since("h2", "young", 20)).0);
    let now = t0 + Duration::from_secs(60);
    // Full: a frame waiting since 30 s does not try; one waiting since 5 s does, and takes the
    // place of the hold whose frame has waited since 20 s. RESERVATION_DISPLACE_MS is 10 s.
    assert!(!policy.may_try_hold("newer", 1, t0 + Duration::from_secs(30), now));
    assert!(!policy.hold(since("h3", "newer", 30)).0);
    assert!(!policy.hold(since("h3", "close", 15)).0, "5 s longer is within RESERVATION_DISPLACE_MS: no trade");
    assert!(policy.may_try_hold("older", 1, t0 + Duration::from_secs(5), now));
    let (made, displaced) = policy.hold(since("h3", "older", 5));
    assert!(made);
    assert_eq!(displaced.map(|h| h.layer_id), Some("young".to_string()));
    let mut held: Vec<String> = policy.holds().values().map(|h| h.layer_id.clone()).collect();
    held.sort();
    assert_eq!(held, ["old", "older"]);
}

#[test]
fn hold_attempts_are_rate_limited_per_layer() {
    let policy = Policy::new(PolicySettings { name: PolicyName::Smart, ..PolicySettings::default() });
    let t0 = Instant::now();
    assert!(policy.may_try_hold("L", 1, t0, t0));
    assert!(!policy.may_try_hold("L", 1, t0, t0 + Duration::from_millis(500)));
    assert!(policy.may_try_hold("M", 1, t0, t0 + Duration::from_millis(500)));
    assert!(policy.may_try_hold("L", 1, t0, t0 + Duration::from_millis(crate::limits::RESERVATION_RETRY_MS)));
}

/// A show's subscription on pool `A`, in whole cores.
fn sub_row(show: &str, size: i64, used: i64) -> SubscriptionRow {
    SubscriptionRow { alloc_id: "A".into(), alloc_name: "lax.general".into(), show_id: show.into(), show_name: show.into(), size: size * CORE, used: used * CORE }
}

#[test]
fn budget_follows_demand_and_its_window() {
    let policy = Policy::new(PolicySettings { name: PolicyName::Smart, demand_window: Duration::from_secs(3), ..PolicySettings::default() });
    let t0 = Instant::now();
    let rows = vec![sub_row("small", 20, 90), sub_row("big", 50, 10)];
    policy.update_subscriptions(&rows, HashMap::from([("A".to_string(), Pool { cores: 100 * CORE, idle: 0, largest_idle: 0 })]), t0);
    // Nobody has shown demand: no limit.
    assert_eq!(policy.budget("A", "small", t0), None);
    policy.note_pass("A", "big", 1_000 * CORE, i64::MAX, t0);
    policy.note_pass("A", "small", 1_000 * CORE, i64::MAX, t0);
    assert_eq!(policy.budget("A", "small", t0 + Duration::from_secs(1)), Some(0));
    // The demand lapses after the window.
    assert_eq!(policy.budget("A", "small", t0 + Duration::from_secs(4)), None);
    // Unknown pools are not limited.
    assert_eq!(policy.budget("B", "small", t0), None);
    // Nor is a pool with idle cores left over (the short show cannot use them).
    policy.note_pass("A", "big", 1_000 * CORE, i64::MAX, t0 + Duration::from_secs(5));
    policy.note_pass("A", "small", 1_000 * CORE, i64::MAX, t0 + Duration::from_secs(5));
    assert_eq!(policy.budget("A", "small", t0 + Duration::from_secs(5)), Some(0));
    // With idle room left over, nobody is held back (the short show could not use it).
    let t5 = t0 + Duration::from_secs(5);
    let almost = Pool { cores: 100 * CORE, idle: (crate::limits::FAIR_SHARE_IDLE_LIFT_PERCENT - 1) * CORE, largest_idle: CORE };
    policy.update_subscriptions(&rows, HashMap::from([("A".to_string(), almost)]), t5);
    assert_eq!(policy.budget("A", "small", t5), Some(0), "a release's worth of idle cores is protected");
    let idle = Pool { cores: 100 * CORE, idle: crate::limits::FAIR_SHARE_IDLE_LIFT_PERCENT * CORE, largest_idle: CORE };
    policy.update_subscriptions(&rows, HashMap::from([("A".to_string(), idle)]), t5);
    assert_eq!(policy.budget("A", "small", t5), None, "cores left idle: big could not use them");
    let shares = policy.shares(t0 + Duration::from_secs(6));
    let big = shares.iter().find(|s| s.subscription.show_name == "big").expect("big listed");
    assert_eq!(big.entitled, 100 * CORE * 50 / 70);
    assert!(big.demanding);
}

/// Idle room a short show can use is protected on any pool; room it cannot use is not, and a
/// frame that found no host although the room was there does not count as able to use it.
#[test]
fn budget_protects_idle_room_the_short_show_can_use() {
    let policy = Policy::new(PolicySettings { name: PolicyName::Smart, demand_window: Duration::from_secs(3), ..PolicySettings::default() });
    let t0 = Instant::now();
    let rows = vec![sub_row("small", 20, 60), sub_row("big", 50, 10)];
    // A fifth of the pool idle, at most `largest` cores of it on one host.
    let pool = |largest: i64| HashMap::from([("A".to_string(), Pool { cores: 100 * CORE, idle: 20 * CORE, largest_idle: largest * CORE })]);
    policy.update_subscriptions(&rows, pool(4), t0);
    // big's pass left 16-core frames without a host while no host had 16 idle cores.
    policy.note_pass("A", "big", 64 * CORE, 16 * CORE, t0);
    policy.note_pass("A", "small", 100 * CORE, CORE, t0);
    assert_eq!(policy.budget("A", "small", t0), None, "4 idle cores a host: of no use to big's 16-core frames");
    policy.update_subscriptions(&rows, pool(16), t0);
    assert_eq!(policy.budget("A", "small", t0), Some(0), "a host with 16 idle cores is big's");
    // The same frames, found no host although a host showed 16 idle cores: they wait for
    // something else, and small is not held back.
    policy.note_pass("A", "big", 64 * CORE, 16 * CORE, t0);
    assert_eq!(policy.budget("A", "small", t0), None);
    // big itself is never held back by its own frames.
    policy.note_pass("A", "big", 64 * CORE, CORE, t0);
    assert_eq!(policy.budget("A", "big", t0), None);
}

#[test]
fn status_lines_round_trip_hostile_names() {
    let policy = Policy::new(PolicySettings { name: PolicyName::Smart, ..PolicySettings::default() });
    let t0 = Instant::now();
    let mut h = hold("host 1", "L1", t0);
    h.job_name = "job=odd %20 name\nwith newline é".into();
    assert!(policy.hold(h.clone()).0);
    let text = render_status(&policy, t0);
    let holds: Vec<HashMap<String, String>> = text
        .lines()
        .filter_map(parse_line)
        .filter(|(kind, _)| kind == "hold")
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(holds.len(), 1, "{text}");
    assert_eq!(holds[0]["host"], "host 1");
    assert_eq!(holds[0]["job"], h.job_name);
    assert_eq!(holds[0]["cores"], "16");
    assert!(text.starts_with("policy name=smart\n"));
    // Garbage parses to something or nothing, never panics.
    for junk in ["", " ", "%", "hold %zz=%", "hold a=%e9%", "x é=%C3"] {
        let _ = parse_line(junk);
    }
}
