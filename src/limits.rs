//! Every fixed bound of the process, in one place, with its unit last in its name.
//!
//! Configurable limits live in `config/keys.rs` (the key table's ranges); these are the ones an operator should never need to
//! touch. Each says why it has its value.

/// Cluster passes queued between the job fetcher and the matchers. Small: a pass is a snapshot
/// of the database and goes stale while it waits.
pub const PASS_CHANNEL_CAPACITY: usize = 16;

/// Booked frames waiting for an RQD launch. One host batch is at most
/// `dispatch_frames_per_layer_limit` frames, so this holds a few dozen batches.
pub const LAUNCH_CHANNEL_CAPACITY: usize = 1024;

/// Attempts of one booking transaction when PostgreSQL reports a deadlock (40P01) or a
/// serialization failure (40001). Both are transient; a third loss means heavy contention and
/// the frames simply wait for the next pass.
pub const BOOKING_ATTEMPTS_MAX: u32 = 3;

/// Pause between booking attempts after a deadlock; long enough for the winner to commit.
pub const BOOKING_RETRY_PAUSE_MS: u64 = 5;

/// LaunchFrame attempts: the first, plus one retry on UNAVAILABLE (DECISIONS.md #3).
pub const LAUNCH_ATTEMPTS_MAX: u32 = 2;

/// Deadline of the best-effort KillRunningFrame sent after a failed launch.
pub const KILL_TIMEOUT_MS: u64 = 2_000;

/// How long a shutdown waits for queued launches before compensating what is left.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 20_000;

/// Waiting frames fetched per layer are also bounded by config; this bounds the config value.
pub const FRAMES_PER_LAYER_MAX: usize = 1_000;

/// Jobs remembered as backed off (queue.job_back_off_duration); the map is cleared when full.
pub const BACKED_OFF_JOBS_MAX: usize = 100_000;

/// Frames remembered as unlaunchable (bad name or range) by this process.
pub const UNLAUNCHABLE_FRAMES_MAX: usize = 100_000;

/// Idle booking connections kept for reuse (one per thread that may book at once, up to this).
pub const BOOKING_CONNECTIONS_KEPT_MAX: usize = 256;

/// Cached gRPC channels, one per RQD host name.
pub const RQD_CHANNELS_MAX: usize = 4_096;

/// Descriptors the HTTP server leaves free for the pipeline (PostgreSQL connections, gRPC
/// channels and pollers): it stops accepting below this headroom, or below an eighth of the
/// descriptor limit if that is more.
pub const FDS_RESERVED_FOR_PIPELINE_MIN: u64 = 12;

/// Free descriptors required before a gRPC channel is created (its socket, and the poller and
/// wakeup descriptors gRPC may create with it; gRPC aborts the process when those fail).
pub const FDS_NEEDED_FOR_GRPC_CHANNEL: u64 = 8;

/// The metrics/health HTTP server answers only bodiless GETs: a request announcing a larger
/// body is refused with 413 (and the body is never read).
pub const HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;

/// A request head (request line and headers) longer than this is refused with 431.
pub const HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Open HTTP connections at most; a new one evicts the oldest that has not sent a whole
/// request. Prometheus needs one; the rest is room for probes and people.
pub const HTTP_CONNECTIONS_MAX: usize = 64;

/// A connection must send its whole request head within this time...
pub const HTTP_READ_TIMEOUT_MS: u64 = 2_000;

/// ...and take its whole answer within this one.
pub const HTTP_WRITE_TIMEOUT_MS: u64 = 5_000;

/// Connections accepted per round of the event loop, so a flood cannot starve the rest.
pub const HTTP_ACCEPTS_PER_ROUND_MAX: usize = 64;

/// Pause of the accept loop after a failed accept (EMFILE, ENFILE, ENOBUFS).
pub const HTTP_ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// A pipeline thread that has not reported progress for this long is reported stalled by
/// /readyz. Its longest legitimate silence is an RQD launch (2 × rqd.launch_timeout) or one
/// pass.
pub const THREAD_STALL_SECS: u64 = 60;

/// Period of the fetcher's wake probe: one aggregate over pending jobs whose change (more
/// waiting frames, a new job) triggers an immediate awake scan. It bounds first-dispatch latency
/// of new work without re-running the pending-work query of every sleeping cluster.
pub const WAKE_PROBE_INTERVAL_MS: u64 = 200;

/// A search that finds no host re-reads its groups from the database, at most this often per
/// group. Capacity freed by finished frames is then seen within this time instead of at the
/// next periodic refresh (`host_cache.monitoring_interval`, 10 s), while a farm with no room
/// costs at most two group queries a second (Dec-2025 re-queried on every failed checkout).
pub const GROUP_REFETCH_MIN_MS: u64 = 500;

/// Granularity of every sleep that must notice a shutdown request.
pub const SHUTDOWN_POLL_MS: u64 = 50;

/// Waiting frames per layer `explain` checks for names or numbers that cannot be launched.
pub const EXPLAIN_FRAMES_CHECKED_MAX: usize = 1_000;

/// Fitting hosts `explain` lists per layer.
pub const EXPLAIN_HOSTS_SHOWN_MAX: usize = 5;

/// Largest `acct_release`/`acct_limit_change` payload parsed; Cuebot's are under 300 bytes and
/// anything larger is not Cuebot's.
pub const NOTIFY_PAYLOAD_BYTES_MAX: usize = 1_024;

/// Longest id accepted from a notification (Cuebot's ids are varchar(36)).
pub const ID_LENGTH_MAX: usize = 64;

/// Notifications gathered into one reconcile at most; more wait for the next one.
pub const ACCOUNTING_BATCH_NOTICES_MAX: usize = 5_000;

/// A rollup row's announcements and corrections are compared once the row has been quiet this
/// long (a notification can arrive just after the reconcile that covered its release)...
pub const ACCOUNTING_LEDGER_QUIET_MS: u64 = 3_000;

/// ...or once its entry is this old, so a busy row is judged too.
pub const ACCOUNTING_LEDGER_AGE_MAX_MS: u64 = 60_000;

/// Rows in the drift ledger; past it every entry is judged at once (drift may then be
/// over-reported, never hidden).
pub const ACCOUNTING_LEDGER_ROWS_MAX: usize = 200_000;

/// First and longest pause before retrying rows another transaction held, or a lost connection.
pub const ACCOUNTING_RETRY_MIN_MS: u64 = 10;
pub const ACCOUNTING_RETRY_MAX_MS: u64 = 2_000;

/// Rounds a full reconcile spends on rows other transactions hold before leaving them to the
/// next reconcile.
pub const ACCOUNTING_FULL_ROUNDS_MAX: usize = 5;

/// How long Cuebot caches a show's `b_scheduler_managed` (its ShowDaoJdbc cache): a show that
/// stopped being managed may still be released through the managed path for this long.
pub const CUEBOT_MANAGED_FLAG_CACHE_SECS: u64 = 30;

/// Shows queued for an immediate wake-up before the request becomes "wake every cluster".
pub const WAKE_REQUESTS_MAX: usize = 10_000;

// Every database session this process opens carries these server-side bounds (`db/mod.rs`). The
// longest legitimate booking transaction is a whole pass: two statements over at most a few
// thousand frames, well under a second even on a loaded server; no transaction of ours waits
// on anything outside the database.

/// A session idle inside a transaction this long is ended by the server: a frozen or stopped
/// instance (SIGSTOP, a stalled VM) cannot hold booking locks that stall Cuebot and the other
/// instances for longer. Ours are never idle between statements but for CPU time.
pub const DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 5_000;

/// A statement that waits this long for a row lock gives up (the booking is retried in a later
/// pass): a peer frozen while holding locks costs a retry, not a stalled thread.
pub const DB_LOCK_TIMEOUT_MS: u64 = 5_000;

/// No statement of ours runs longer than this; the slowest legitimate one, the full accounting
/// reconcile at 100,000 procs, takes about a second.
pub const DB_STATEMENT_TIMEOUT_MS: u64 = 60_000;

/// Server-side TCP keepalives: a client host that vanished is noticed after about
/// idle + interval × count seconds, and its sessions (and locks) end.
pub const DB_TCP_KEEPALIVES_IDLE_SECS: u64 = 10;
pub const DB_TCP_KEEPALIVES_INTERVAL_SECS: u64 = 5;
pub const DB_TCP_KEEPALIVES_COUNT: u64 = 3;

/// Unacknowledged data on a session's socket for this long ends it (Linux TCP_USER_TIMEOUT).
pub const DB_TCP_USER_TIMEOUT_MS: u64 = 30_000;

/// Deadline of the ReportStatus call the stranded-booking sweep makes to a host.
pub const REPORT_STATUS_TIMEOUT_MS: u64 = 2_000;

/// A booked frame that waited this long in the launch queue (RQDs hanging, a slow shutdown) is
/// compensated instead of launched, so no live instance ever launches a booking older than
/// this plus the launch attempts (2 × `rqd.launch_timeout`).
pub const LAUNCH_QUEUE_AGE_MAX_MS: u64 = 20_000;

/// Failed compensations waiting for a retry; past it the oldest is left to the stranded sweep.
pub const COMPENSATION_RETRIES_MAX: usize = 10_000;

/// Back-off between attempts of one failed compensation: doubling from the first to the last.
pub const COMPENSATION_RETRY_FIRST_MS: u64 = 100;
pub const COMPENSATION_RETRY_LAST_MS: u64 = 30_000;

/// A booking whose proc has had no host report (`proc.ts_ping` never moved past `ts_booked`) for
/// this long, and whose host's RQD does not list its frame, was never launched: it is
/// compensated. Longer than a live instance can hold a booking unlaunched
/// (LAUNCH_QUEUE_AGE_MAX_MS + 2 × the launch timeout).
pub const STRANDED_GRACE_SECS: u64 = 60;

/// ...and when the host's RQD cannot be asked, after this long without a host report (RQD
/// reports every 5–30 s while a frame runs).
pub const STRANDED_UNREACHABLE_GRACE_SECS: u64 = 90;

/// The sweep runs at start-up and then this often; with the grace above, a booking left by a
/// crash is compensated within two minutes of the crash or of the start-up, whichever is later.
pub const STRANDED_SWEEP_INTERVAL_SECS: u64 = 60;

/// Candidate bookings one sweep looks at.
pub const STRANDED_SWEEP_ROWS_MAX: i64 = 5_000;

/// Subscription, folder and point rows sum every proc of a show (tens of thousands on a big
/// show), so notified releases reconcile them at most this often; layer and job rows, whose
/// sums are small, are reconciled as soon as the coalescing window closes.
pub const ACCOUNTING_COARSE_MIN_MS: u64 = 500;

/// Key of the session advisory lock that makes one instance the accounting leader (the one
/// that reconciles; "cue_acct" in ASCII).
pub const ACCOUNTING_LEADER_LOCK_KEY: i64 = 0x6375_655f_6163_6374;

/// How often a follower tries to become the accounting leader (and so how soon a dead leader's
/// work is taken over).
pub const ACCOUNTING_LEADER_RETRY_MS: u64 = 1_000;

/// Pending delayed wake-ups a follower keeps at most.
pub const ACCOUNTING_LATE_WAKES_MAX: usize = 1_000;

/// A cluster is woken by accounting events (releases reconciled, caps raised) at most this
/// often: a busy show would otherwise be re-queried after every release.
pub const ACCOUNTING_WAKE_MIN_MS: u64 = 250;

/// Standing ownership (`pipeline::ownership`): advisory-lock namespaces (the first key of the
/// two-key form; the second is the member's or unit's 32-bit key). "cuM", "cuU", "cuC".
pub const OWNERSHIP_MEMBER_NS: i32 = 0x0063_754d;
pub const OWNERSHIP_UNIT_NS: i32 = 0x0063_7555;
pub const OWNERSHIP_CANDIDATE_NS: i32 = 0x0063_7543;

/// How often an instance reads its peers and units and renews its ownership. A dead peer's
/// units are taken over within about one tick of its sessions ending.
pub const OWNERSHIP_TICK_MS: u64 = 1_000;

/// What the instance owns is trusted this long after the last tick that proved its session
/// alive; past it the host cache refuses checkouts and the fetcher emits nothing. Shorter than
/// `OWNERSHIP_FENCE_AFTER_MS`, so a frozen instance's own lease has lapsed before its peers
/// take its units.
pub const OWNERSHIP_LEASE_MS: u64 = 5_000;

/// A peer whose ownership session has been idle this long (no tick) is frozen or partitioned:
/// its sessions are terminated (`pg_terminate_backend`) and its units taken over.
pub const OWNERSHIP_FENCE_AFTER_MS: u64 = 10_000;

/// Units and candidacy (which allocations this instance's clusters draw on) are re-read this
/// often, and after every cluster reload.
pub const OWNERSHIP_UNITS_REFRESH_MS: u64 = 10_000;

/// Rebalancing moves a unit only when the move lowers the most loaded member's load by at
/// least this share of it (hysteresis: a balanced split never flaps).
pub const OWNERSHIP_REBALANCE_GAIN_MIN_PERCENT: i64 = 10;

/// Units moved by rebalancing per tick at most.
pub const OWNERSHIP_REBALANCE_MOVES_MAX: usize = 8;

/// A unit that came by a rebalance is not moved again by rebalancing for this long.
pub const OWNERSHIP_HOLD_MIN_MS: u64 = 3_000;

/// One turn: a layer of a job in another instance's slot is left alone for this long times
/// this instance's turn at it (`Serving::turn`) after this instance first saw it; then it is
/// taken if there is room. Measured on the 1,200-host drain with 3 instances: 0.5 s with every
/// helper at once wasted a median 1.7 % of attempts on frames another instance took; 1 s
/// turns 0.14 % (0.5 s turns 0.54 %). The price is up to a turn's wait where the slot's
/// instance has no room.
pub const STEAL_AFTER_MS: u64 = 1_000;

/// Layers remembered as left to another instance (older entries are dropped past it).
pub const LEFT_ALONE_LAYERS_MAX: usize = 20_000;

/// Frames remembered as booked by this instance, to tell which booker took a frame a pass lost
/// (about 3 MB at most).
pub const RECENT_BOOKED_FRAMES_MAX: usize = 50_000;

/// Instances that share a tag cluster prefer different jobs (`Serving::share`); which
/// instance prefers which job rotates this often (seconds of the database clock), so a job no
/// host of "its" instance fits is preferred by another within a few periods.
pub const JOB_SLOT_ROTATE_S: u64 = 10;

/// A cluster whose pass booked nothing only because another booker got there first (its hosts
/// checked out by another pass of ours, its frames taken) looks again after this long.
pub const CONTENDED_RETRY_MS: u64 = 100;

/// Scheduling policy `smart` (src/matching/policy.rs): a layer that found no host tries for a
/// host hold at most this often.
pub const RESERVATION_RETRY_MS: u64 = 2_000;

/// Hosts one layer may hold at once (one per frame that waited past
/// `scheduler.reservation_after` and fits no host's idle room): a layer of whole-host frames
/// drains that many hosts side by side instead of one after another. `reservations_max` bounds
/// all holds together.
pub const RESERVATIONS_PER_LAYER_MAX: usize = 8;

/// At `scheduler.reservations_max` holds, a frame's hold displaces the hold of a frame that
/// has waited more than this much less. A displaced host's drain so far is lost, so frames of
/// about the same age do not trade places: with 1 s, a quality run displaced 118 holds; with
/// 10 s, 29, at the same wide-frame wait p99 (50.2 and 49.8 s).
pub const RESERVATION_DISPLACE_MS: u64 = 10_000;

/// A hold whose layer no pass has seen waiting for this long is dropped (its frame ran
/// elsewhere, was killed or eaten, or its job was paused or finished).
pub const RESERVATION_UNSEEN_MAX_MS: u64 = 30_000;

/// Hosts weighed for one hold (the cache's fitting hosts, first found); their running frames
/// are read in one query.
pub const RESERVATION_CANDIDATES_MAX: usize = 64;

/// A layer's runtime estimate (mean of its finished frames) is re-read after this long.
pub const RUNTIME_ESTIMATE_MAX_AGE_MS: u64 = 10_000;

/// Layers the policy remembers (estimates, hold attempts) before old entries are dropped.
pub const POLICY_LAYERS_TRACKED_MAX: usize = 20_000;

/// Fair share is enforced while less than this percentage of a pool's cores is idle: it
/// protects a full pool's freed cores for the shows short of their share. With more idle, it is
/// enforced only where another demanding show's smallest waiting frame fits one host's idle
/// room (`Policy::budget`); cores no other show can use are not held back, which would idle
/// the farm. Above the churn of releases being rebooked (1–3 % on the quality farm).
pub const FAIR_SHARE_IDLE_LIFT_PERCENT: i64 = 3;

/// Subscriptions (size, booked cores) and pool sizes are re-read this often for fair share.
pub const FAIR_SHARE_REFRESH_MS: u64 = 1_000;

/// The largest configuration file read. The sample with every key and its comments is about
/// 10 KiB; a bigger file is a mistake (or `/dev/zero`), refused instead of slurped.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Furthest ahead any deadline or back-off is set. Configured durations are range-checked at
/// load, but a deadline computed as `now + duration` panics on overflow, so every daemon
/// deadline goes through [`deadline_after`], which caps the wait here: a month is longer
/// than any sleep, back-off or drain the scheduler has a use for.
pub const DEADLINE_AHEAD_MAX_S: u64 = 30 * 24 * 3600;

/// `Instant::now() + wait`, with `wait` capped at `DEADLINE_AHEAD_MAX_S`: never panics, whatever
/// a configuration or a database row says.
pub fn deadline_after(wait: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    let wait = wait.min(std::time::Duration::from_secs(DEADLINE_AHEAD_MAX_S));
    now.checked_add(wait).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn deadline_after_caps_absurd_waits() {
        let before = Instant::now();
        let capped = deadline_after(Duration::MAX);
        assert!(capped >= before + Duration::from_secs(DEADLINE_AHEAD_MAX_S));
        assert!(capped <= Instant::now() + Duration::from_secs(DEADLINE_AHEAD_MAX_S));
        let short = deadline_after(Duration::from_millis(5));
        assert!(short >= before + Duration::from_millis(5) && short < before + Duration::from_secs(5));
    }
}
