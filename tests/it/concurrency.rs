//! The booking guards under concurrency, each proved with real sessions interleaved on purpose:
//! a third session holds a row lock so that one booking is caught mid-transaction while the
//! other runs (issue 12). Each test failed on the booking SQL before the fix it names.

use crate::support::{host, job, org, wait_for, Org, Schema, TestDb};
use cue_scheduler::db::booking::{BatchPlan, BookOutcome, Booker, Cap, PlannedFrame};
use cue_scheduler::sim::farm::{JobIds, LayerSpec};
use std::collections::HashMap;
use std::time::Duration;

struct Fix {
    db: TestDb,
    org: Org,
    hosts: HashMap<String, String>,
}

fn fix(test: &str, schema: Schema, hosts: &[&str]) -> Option<Fix> {
    let db = TestDb::new(test, schema)?;
    let mut f = db.farm();
    let o = org(&mut f, 1_000_000);
    let specs: Vec<_> = hosts.iter().map(|h| host(h, &o.general_alloc, "general", 8, 32)).collect();
    let hosts = f.hosts(&specs).expect("hosts");
    Some(Fix { db, org: o, hosts })
}

fn seed_job(f: &Fix, name: &str, frames: usize) -> JobIds {
    let mut farm = f.db.farm();
    farm.job(&job(&f.org, name, vec![LayerSpec::new("render", &format!("1-{frames}"), "general")])).expect("job")
}

fn plan<'a>(f: &'a Fix, ids: &'a JobIds, host_name: &'a str, frames: &[&str], limited: bool) -> BatchPlan<'a> {
    BatchPlan {
        host_id: &f.hosts[host_name],
        host_name,
        show_id: &f.org.show_id,
        job_id: &ids.job_id,
        layer_id: &ids.layers["render"],
        layer_limited: limited,
        mem: 1_048_576,
        gpus: 0,
        gpu_mem: 0,
        mem_used_initial: 262_144,
        update_stat_on_book: false,
        frames: frames.iter().map(|n| PlannedFrame { frame_id: ids.frames[*n].clone(), version: 0, cores: 100 }).collect(),
    }
}

fn booker(f: &Fix) -> Booker {
    Booker::new(f.db.db_settings(), true)
}

/// Waits until some session of the test database waits on a lock.
fn someone_waits(db: &TestDb) -> bool {
    let mut c = db.client();
    wait_for(Duration::from_secs(5), || {
        c.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .map(|r| r.get::<_, i64>(0) > 0)
        .unwrap_or(false)
    })
}

fn booked(outcome: &BookOutcome) -> usize {
    match outcome {
        BookOutcome::Booked { frames, .. } => frames.len(),
        _ => 0,
    }
}

/// 12.1: two layers of two jobs share a limit of 1. Booking A is caught after its frame start
/// (its host row is held by a third session); booking B of the other layer runs meanwhile. B
/// must not start while A's start is uncommitted: it waits on the limit's lock and then sees A.
#[test]
fn a_layer_limit_holds_between_two_bookers() {
    let Some(f) = fix("cc_limit", Schema::Real, &["cc-a", "cc-b"]) else { return };
    let (ja, jb) = (seed_job(&f, "showa-lim-a", 2), seed_job(&f, "showa-lim-b", 2));
    let mut c = f.db.client();
    c.batch_execute(&format!(
        "INSERT INTO limit_record (pk_limit_record, str_name, int_max_value) VALUES ('LIM1', 'licence', 1);
         INSERT INTO layer_limit (pk_layer_limit, pk_layer, pk_limit_record) VALUES ('LL1', '{}', 'LIM1'), ('LL2', '{}', 'LIM1');",
        ja.layers["render"], jb.layers["render"]
    ))
    .expect("limit");
    let mut holder = f.db.client();
    let mut hold = holder.transaction().expect("begin");
    hold.execute("SELECT 1 FROM host WHERE str_name = 'cc-a' FOR UPDATE", &[]).expect("hold host a");
    let a = std::thread::scope(|scope| {
        let a = scope.spawn(|| booker(&f).book(&plan(&f, &ja, "cc-a", &["0001-render"], true)));
        assert!(someone_waits(&f.db), "booking A waits on the held host row");
        let b = scope.spawn(|| booker(&f).book(&plan(&f, &jb, "cc-b", &["0001-render"], true)));
        std::thread::sleep(Duration::from_millis(500));
        let b_finished_early = b.is_finished();
        hold.commit().expect("release host a");
        let a = a.join().expect("a").expect("book a");
        let b = b.join().expect("b").expect("book b");
        assert!(!b_finished_early, "B waited for A's limit lock instead of starting beside it");
        assert_eq!(booked(&a) + booked(&b), 1, "exactly one frame under a limit of 1: a {a:?}, b {b:?}");
        a
    });
    assert_eq!(booked(&a), 1);
    let running: i64 = c
        .query_one("SELECT sum(int_running_count)::bigint FROM layer_stat WHERE pk_layer IN (SELECT pk_layer FROM layer_limit)", &[])
        .expect("count")
        .get(0);
    assert_eq!(running, 1);
    assert_eq!(f.db.violations(), Vec::<String>::new());
}

/// 12.2: an operator moves the job to another folder (and department) between the pass and
/// the booking, in a transaction that is still open when the booking runs. The booking waits
/// for the move and charges the job's new folder and point; the old ones keep nothing.
#[test]
fn a_job_moved_during_booking_is_charged_to_its_new_folder() {
    let Some(f) = fix("cc_move", Schema::Real, &["cc-m"]) else { return };
    let ids = seed_job(&f, "showa-move", 4);
    let mut farm = f.db.farm();
    let dept2 = farm.dept("Compositing").expect("dept");
    let folder2 = farm.folder(&f.org.show_id, &dept2, "comp").expect("folder");
    let mut c = f.db.client();
    // One frame already runs, so the move has booked cores to carry.
    let first = booker(&f).book(&plan(&f, &ids, "cc-m", &["0001-render"], false)).expect("book");
    assert_eq!(booked(&first), 1);
    let mut mover = f.db.client();
    let mut mv = mover.transaction().expect("begin move");
    mv.execute("UPDATE job SET pk_folder = $2, pk_dept = $3 WHERE pk_job = $1", &[&ids.job_id, &folder2, &dept2]).expect("move");
    let second = std::thread::scope(|scope| {
        let b = scope.spawn(|| booker(&f).book(&plan(&f, &ids, "cc-m", &["0002-render", "0003-render"], false)));
        assert!(someone_waits(&f.db), "the booking waits for the open move");
        mv.commit().expect("commit move");
        b.join().expect("b").expect("book")
    });
    assert_eq!(booked(&second), 2);
    let cores = |c: &mut postgres::Client, sql: &str, key: &str| -> i64 { c.query_one(sql, &[&key]).expect(sql).get(0) };
    assert_eq!(cores(&mut c, "SELECT int_cores::bigint FROM folder_resource WHERE pk_folder = $1", &folder2), 300);
    assert_eq!(cores(&mut c, "SELECT int_cores::bigint FROM folder_resource WHERE pk_folder = $1", &f.org.folder_id), 0);
    assert_eq!(cores(&mut c, "SELECT int_cores::bigint FROM point WHERE pk_dept = $1", &dept2), 300);
    assert_eq!(f.db.violations(), Vec::<String>::new());
}

/// 12.3: Cuebot's release locks layer_resource, then job_resource. A booking caught between
/// them must wait for the release, not take job_resource first (which deadlocked, and
/// PostgreSQL aborted Cuebot's transaction).
#[test]
fn a_booking_and_a_cuebot_order_release_do_not_deadlock() {
    let Some(f) = fix("cc_order", Schema::Real, &["cc-o"]) else { return };
    let ids = seed_job(&f, "showa-order", 4);
    let deadlocks = |db: &TestDb| -> i64 {
        let mut c = db.client();
        c.query_one("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()", &[]).expect("stats").get(0)
    };
    let before = deadlocks(&f.db);
    let mut cuebot = f.db.client();
    let mut release = cuebot.transaction().expect("begin release");
    release
        .execute("UPDATE layer_resource SET int_cores = int_cores - 0 WHERE pk_layer = $1", &[&ids.layers["render"]])
        .expect("release: layer_resource");
    let outcome = std::thread::scope(|scope| {
        let b = scope.spawn(|| booker(&f).book(&plan(&f, &ids, "cc-o", &["0001-render"], false)));
        assert!(someone_waits(&f.db), "the booking waits behind the release");
        // Cuebot's next statement: it must not be chosen as a deadlock victim.
        release
            .execute("UPDATE job_resource SET int_cores = int_cores - 0 WHERE pk_job = $1", &[&ids.job_id])
            .expect("release: job_resource (a deadlock here is the bug)");
        release.commit().expect("commit release");
        b.join().expect("b").expect("book")
    });
    assert_eq!(booked(&outcome), 1);
    // Whichever side PostgreSQL would have picked as the victim, there must be no deadlock.
    std::thread::sleep(Duration::from_millis(600)); // statistics are flushed at most twice a second
    assert_eq!(deadlocks(&f.db), before, "a deadlock between the booking and the release");
}

/// 12.5: a refusal reports the room the cap had on the locked row, not in a pre-wait snapshot.
/// Another booker holds the job's row with 3 more cores in use (cap 5); ours asks for 3.
#[test]
fn a_cap_refusal_reports_the_room_left_on_the_locked_row() {
    let Some(f) = fix("cc_room", Schema::Real, &["cc-r"]) else { return };
    let ids = seed_job(&f, "showa-room", 4);
    let mut c = f.db.client();
    c.execute("UPDATE job_resource SET int_max_cores = 500 WHERE pk_job = $1", &[&ids.job_id]).expect("cap");
    let mut other = f.db.client();
    let mut held = other.transaction().expect("begin");
    held.execute("UPDATE job_resource SET int_cores = int_cores + 300 WHERE pk_job = $1", &[&ids.job_id]).expect("use 3 cores");
    let outcome = std::thread::scope(|scope| {
        let b = scope.spawn(|| booker(&f).book(&plan(&f, &ids, "cc-r", &["0001-render", "0002-render", "0003-render"], false)));
        assert!(someone_waits(&f.db));
        held.commit().expect("commit");
        b.join().expect("b").expect("book")
    });
    match outcome {
        BookOutcome::Refused { cap: Cap::Job, headroom } => assert_eq!(headroom, Some(200), "room on the locked row"),
        other => panic!("expected a job-cap refusal, got {other:?}"),
    }
}

/// 12.5: what a pass checked may have changed by the time it books. Each change alone must stop
/// the booking in the database: the host locked or NIMBY-locked, its report DOWN, the job
/// paused or finished, the show no longer managed.
#[test]
fn stale_passes_book_nothing_the_database_no_longer_allows() {
    let Some(f) = fix("cc_stale", Schema::Real, &["cc-s"]) else { return };
    let ids = seed_job(&f, "showa-stale", 8);
    let mut c = f.db.client();
    let cases: [(&str, &str, &str); 6] = [
        ("host LOCKED", "UPDATE host SET str_lock_state = 'LOCKED'", "UPDATE host SET str_lock_state = 'OPEN'"),
        ("host NIMBY", "UPDATE host SET str_lock_state = 'NIMBY_LOCKED'", "UPDATE host SET str_lock_state = 'OPEN'"),
        ("host DOWN", "UPDATE host_stat SET str_state = 'DOWN'", "UPDATE host_stat SET str_state = 'UP'"),
        ("job paused", "UPDATE job SET b_paused = true", "UPDATE job SET b_paused = false"),
        ("job finished", "UPDATE job SET str_state = 'FINISHED'", "UPDATE job SET str_state = 'PENDING'"),
        ("show unmanaged", "UPDATE show SET b_scheduler_managed = false", "UPDATE show SET b_scheduler_managed = true"),
    ];
    for (i, (what, change, undo)) in cases.iter().enumerate() {
        c.batch_execute(change).expect(what);
        let frame = format!("{:04}-render", i + 1);
        let outcome = booker(&f).book(&plan(&f, &ids, "cc-s", &[&frame], false)).expect("book");
        assert_eq!(booked(&outcome), 0, "{what}: booked anyway ({outcome:?})");
        c.batch_execute(undo).expect(what);
    }
    let outcome = booker(&f).book(&plan(&f, &ids, "cc-s", &["0008-render"], false)).expect("book");
    assert_eq!(booked(&outcome), 1, "with everything restored it books");
    assert_eq!(f.db.violations(), Vec::<String>::new());
}

/// 12.6: every session carries server-side bounds, so a booker frozen inside a transaction
/// (SIGSTOP) cannot hold its locks for long: the server ends the session after
/// `idle_in_transaction_session_timeout` and another session gets the row.
#[test]
fn a_frozen_transaction_loses_its_locks() {
    let Some(f) = fix("cc_frozen", Schema::Project, &["cc-f"]) else { return };
    let settings = f.db.db_settings();
    let mut frozen = cue_scheduler::db::connect(&settings, "test").expect("connect");
    let shown: String = frozen.query_one("SHOW idle_in_transaction_session_timeout", &[]).expect("show").get(0);
    assert_eq!(shown, format!("{}ms", cue_scheduler::limits::DB_IDLE_IN_TRANSACTION_TIMEOUT_MS).replace("000ms", "s"));
    let lock_timeout: String = frozen.query_one("SHOW lock_timeout", &[]).expect("show").get(0);
    assert_ne!(lock_timeout, "0", "lock_timeout is set");
    let keepalive: String = frozen.query_one("SHOW tcp_keepalives_idle", &[]).expect("show").get(0);
    assert_eq!(keepalive, cue_scheduler::limits::DB_TCP_KEEPALIVES_IDLE_SECS.to_string());
    let isolation: String = frozen.query_one("SHOW default_transaction_isolation", &[]).expect("show").get(0);
    assert_eq!(isolation, "read committed");
    let mut txn = frozen.transaction().expect("begin");
    txn.execute("SELECT 1 FROM host WHERE str_name = 'cc-f' FOR UPDATE", &[]).expect("lock");
    // Frozen: no statement for longer than the timeout. Another session waits, then gets it.
    let started = std::time::Instant::now();
    let mut other = f.db.client();
    other.batch_execute("SET lock_timeout = '20s'").expect("set");
    other.execute("SELECT 1 FROM host WHERE str_name = 'cc-f' FOR UPDATE", &[]).expect("the lock is freed");
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(cue_scheduler::limits::DB_IDLE_IN_TRANSACTION_TIMEOUT_MS + 3_000), "waited {waited:?}");
    assert!(txn.commit().is_err(), "the frozen session was ended");
}
