//! Finishes simulated frames on time: a timer queue and a fixed pool of threads that apply each
//! completion with a `Cuebot` (its release writes) when the frame's simulated run ends, then
//! free the fake RQD's cores. Used by the demo, the benchmarks and the tests.
//!
//! A single completer thread cannot keep up with a few hundred releases a second (each release
//! is two transactions), and a late completion makes a frame "run" longer than simulated, so
//! the pool is sized by the caller and the lateness of every completion is recorded.

use crate::sim::cuebot::{Completion, Cuebot, Released};
use crate::sim::fake_rqd::FakeRqdHandle;
use parking_lot::{Condvar, Mutex};
use postgres::Client;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A frame run to finish: (due, sequence, frame id, proc id, exit status).
type Due = Reverse<(Instant, u64, String, String, i32)>;

type Connect = dyn Fn() -> Result<Client, String> + Send + Sync;

/// Called after each completion: (frame id, what it became).
pub type DoneHook = Box<dyn Fn(&str, &Released) + Send + Sync>;

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Due>,
    sequence: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    stop: AtomicBool,
    lateness_secs: Mutex<Vec<f64>>,
    release_secs: Mutex<Vec<f64>>,
    errors: Mutex<Vec<String>>,
    released: Mutex<u64>,
    /// Reports lost because the database connection was gone.
    lost: Mutex<u64>,
    on_done: Option<DoneHook>,
}

pub struct Completer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// What a completer measured.
#[derive(Clone, Debug, Default)]
pub struct CompleterReport {
    pub released: u64,
    /// Seconds each completion started after its due time, sorted.
    pub lateness_secs: Vec<f64>,
    /// Seconds each release (Cuebot's two transactions) took, sorted: its waits on locks the
    /// scheduler holds show here.
    pub release_secs: Vec<f64>,
    /// Completion reports lost while the database was unreachable (Cuebot loses them too).
    pub lost: u64,
    pub errors: Vec<String>,
}

impl CompleterReport {
    pub fn lateness_percentile(&self, p: f64) -> f64 {
        percentile(&self.lateness_secs, p)
    }

    pub fn release_percentile(&self, p: f64) -> f64 {
        percentile(&self.release_secs, p)
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

impl Completer {
    /// Starts `threads` completer threads, each with its own connection from `connect`.
    pub fn start(
        threads: usize,
        cuebot: Arc<Cuebot>,
        rqd: Option<FakeRqdHandle>,
        connect: impl Fn() -> Result<Client, String> + Send + Sync + 'static,
        on_done: Option<DoneHook>,
    ) -> Result<Completer, String> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
            lateness_secs: Mutex::new(Vec::new()),
            release_secs: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            released: Mutex::new(0),
            lost: Mutex::new(0),
            on_done,
        });
        let mut handles = Vec::new();
        let connect: Arc<Connect> = Arc::new(connect);
        for n in 0..threads.max(1) {
            let client = connect()?;
            let (shared, cuebot, rqd, connect) = (Arc::clone(&shared), Arc::clone(&cuebot), rqd.clone(), Arc::clone(&connect));
            let handle = std::thread::Builder::new()
                .name(format!("sim-completer-{n}"))
                .spawn(move || work(&shared, &cuebot, rqd.as_ref(), client, &*connect))
                .map_err(|e| e.to_string())?;
            handles.push(handle);
        }
        Ok(Completer { shared, threads: handles })
    }

    /// Finishes `frame_id` (run by `proc_id`) at `due` with `exit_status`.
    pub fn schedule(&self, due: Instant, frame_id: &str, proc_id: &str, exit_status: i32) {
        let mut queue = self.shared.queue.lock();
        queue.sequence += 1;
        let seq = queue.sequence;
        queue.heap.push(Reverse((due, seq, frame_id.to_string(), proc_id.to_string(), exit_status)));
        drop(queue);
        self.shared.ready.notify_one();
    }

    /// Frames scheduled and not yet finished.
    pub fn pending(&self) -> usize {
        self.shared.queue.lock().heap.len()
    }

    pub fn released(&self) -> u64 {
        *self.shared.released.lock()
    }

    /// Stops the threads (frames still queued are left running) and reports.
    pub fn stop(self) -> CompleterReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.ready.notify_all();
        for handle in self.threads {
            let _ = handle.join();
        }
        let mut lateness = self.shared.lateness_secs.lock().clone();
        lateness.sort_by(|a, b| a.total_cmp(b));
        let mut release = self.shared.release_secs.lock().clone();
        release.sort_by(|a, b| a.total_cmp(b));
        CompleterReport {
            released: *self.shared.released.lock(),
            lateness_secs: lateness,
            release_secs: release,
            lost: *self.shared.lost.lock(),
            errors: self.shared.errors.lock().clone(),
        }
    }
}

fn work(shared: &Shared, cuebot: &Cuebot, rqd: Option<&FakeRqdHandle>, mut client: Client, connect: &Connect) {
    loop {
        let job = {
            let mut queue = shared.queue.lock();
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let now = Instant::now();
                match queue.heap.peek() {
                    Some(Reverse((due, ..))) if *due <= now => break queue.heap.pop(),
                    Some(Reverse((due, ..))) => {
                        let due = *due;
                        shared.ready.wait_until(&mut queue, due);
                    }
                    None => {
                        shared.ready.wait_for(&mut queue, Duration::from_millis(50));
                    }
                }
            }
        };
        let Some(Reverse((due, _, frame_id, proc_id, exit_status))) = job else { continue };
        shared.lateness_secs.lock().push(Instant::now().saturating_duration_since(due).as_secs_f64());
        let done = Completion { exit_status, run_secs: 1, max_rss_kib: 1_048_576 };
        let started = Instant::now();
        let result = cuebot.complete_frame(&mut client, &frame_id, &proc_id, done);
        shared.release_secs.lock().push(started.elapsed().as_secs_f64());
        match result {
            Ok(released) => {
                *shared.released.lock() += 1;
                if let Some(hook) = &shared.on_done {
                    hook(&frame_id, &released);
                }
            }
            Err(e) if client.is_closed() => {
                // The database went away (a restart): like Cuebot, this report is lost (RQD
                // does not resend it); the connection is made again for the next ones.
                *shared.lost.lock() += 1;
                let _ = e;
                while !shared.stop.load(Ordering::SeqCst) {
                    match connect() {
                        Ok(fresh) => {
                            client = fresh;
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(200)),
                    }
                }
            }
            Err(e) => {
                let mut errors = shared.errors.lock();
                if errors.len() < 100 {
                    errors.push(format!("frame {frame_id}: {e}"));
                }
            }
        }
        if let Some(rqd) = rqd {
            rqd.finish(&frame_id);
        }
    }
}
