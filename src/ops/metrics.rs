//! Prometheus metrics with upstream's names, types, labels and buckets (scheduler-behaviour.md
//! §6.2), counted without upstream's double counting (§6.3). Additions carry new names.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub jobs_queried_total: IntCounter,
    pub jobs_processed_total: IntCounterVec,
    pub frames_dispatched_total: IntCounterVec,
    pub no_candidate_iterations_total: IntCounter,
    pub candidates_per_layer: Histogram,
    pub time_to_book_seconds: Histogram,
    pub job_query_duration_seconds: Histogram,
    pub accounting_limit_exceeded_total: IntCounterVec,
    pub job_cap_precheck_skip_total: IntCounter,
    pub cluster_round_trip_seconds: HistogramVec,
    pub clusters_total: IntGaugeVec,
    pub clusters_active: IntGauge,
    pub clusters_sleeping: IntGauge,
    pub active_tags: IntGauge,
    pub active_scan_duration_seconds: Histogram,
    pub frames_dispatched_per_pass: HistogramVec,
    pub pass_terminated_reason_total: IntCounterVec,
    pub checkout_outcome_total: IntCounterVec,
    pub placement_score_chosen: Histogram,
    pub placement_inner_retries_exhausted_total: IntCounter,
    // Additions (not upstream names).
    pub booking_conflicts_total: IntCounterVec,
    pub launch_failures_total: IntCounterVec,
    pub compensations_total: IntCounter,
    pub errors_total: IntCounterVec,
    pub host_attempts_total: IntCounter,
    pub recompute_cycle_duration_seconds: Histogram,
    pub accounting_listener_up: IntGauge,
    pub accounting_leader: IntGauge,
    pub accounting_notifications_total: IntCounterVec,
    pub accounting_reconciled_rows_total: IntCounterVec,
    pub accounting_full_reconciles_total: IntCounterVec,
    pub accounting_reconcile_lag_seconds: Histogram,
    pub accounting_drift_corrected_total: IntCounterVec,
    pub stranded_bookings_recovered_total: IntCounter,
    pub stranded_sweep_duration_seconds: Histogram,
    pub compensation_retries_pending: IntGauge,
    pub http_connections_open: IntGauge,
    pub http_connections_dropped_total: IntCounterVec,
    pub thread_deaths_total: IntCounterVec,
    pub instances_live: IntGauge,
    pub owned_units: IntGauge,
    pub ownership_changes_total: IntCounterVec,
    pub fenced_total: IntCounter,
    pub frames_lost_elsewhere_total: IntCounter,
    pub attempts_wasted_by_others_total: IntCounter,
    pub reservations_held: IntGauge,
    pub reservations_total: IntCounterVec,
    pub show_share_ratio: GaugeVec,
    pub fair_share_limited_total: IntCounter,
}

// Start-up only, with constant names, help texts and labels: an error here is a programming
// mistake (duplicate name, bad label) that every test run catches, never outside input.
#[allow(clippy::expect_used)]
fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("static metric definition");
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

// Start-up only, with constant names, help texts and labels: an error here is a programming
// mistake (duplicate name, bad label) that every test run catches, never outside input.
#[allow(clippy::expect_used)]
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

// Start-up only, with constant names, help texts and labels: an error here is a programming
// mistake (duplicate name, bad label) that every test run catches, never outside input.
#[allow(clippy::expect_used)]
fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = Histogram::with_opts(opts).expect("static metric definition");
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

// Start-up only, with constant names, help texts and labels: an error here is a programming
// mistake (duplicate name, bad label) that every test run catches, never outside input.
#[allow(clippy::expect_used)]
fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("static metric definition");
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

// Start-up only, with constant names, help texts and labels: an error here is a programming
// mistake (duplicate name, bad label) that every test run catches, never outside input.
#[allow(clippy::expect_used)]
fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("static metric definition");
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

impl Metrics {
    // Start-up only, with constant names, help texts and labels: an error here is a programming
    // mistake (duplicate name, bad label) that every test run catches, never outside input.
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let clusters_total = IntGaugeVec::new(
            Opts::new("scheduler_clusters_total", "Clusters in the full set, by type"),
            &["cluster_type"],
        )
        .expect("static metric definition");
        r.register(Box::new(clusters_total.clone())).expect("unique metric name");
        let show_share_ratio = GaugeVec::new(
            Opts::new("scheduler_show_share_ratio", "Policy smart: each show's booked cores on a pool over its fair-share entitlement, decayed over scheduler.fair_share_window (1 = its share) (addition)"),
            &["show", "alloc"],
        )
        .expect("static metric definition");
        r.register(Box::new(show_share_ratio.clone())).expect("unique metric name");
        Metrics {
            jobs_queried_total: counter(&r, "scheduler_jobs_queried_total", "Jobs returned by pending-job queries"),
            jobs_processed_total: counter_vec(&r, "scheduler_jobs_processed_total", "Jobs handed to the matcher", &["show_name"]),
            frames_dispatched_total: counter_vec(&r, "scheduler_frames_dispatched_total", "Frames booked and launched by this process (dry run counts)", &["show_name"]),
            no_candidate_iterations_total: counter(&r, "scheduler_no_candidate_iterations_total", "Layer host searches that found no candidate host"),
            candidates_per_layer: histogram(&r, "scheduler_candidates_per_layer", "Host attempts a layer took until all its fetched frames were booked", &[1.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
            time_to_book_seconds: histogram(&r, "scheduler_time_to_book_seconds", "Per booked frame: booking time minus frame.ts_updated (the frame's last update, not its creation)", &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            job_query_duration_seconds: histogram(&r, "scheduler_job_query_duration_seconds", "Duration of each pending-work query", &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]),
            accounting_limit_exceeded_total: counter_vec(&r, "scheduler_accounting_limit_exceeded_total", "Bookings refused by a cap, and subscription pre-check skips", &["table"]),
            job_cap_precheck_skip_total: counter(&r, "scheduler_job_cap_precheck_skip_total", "Layers skipped because their job was at its core cap"),
            cluster_round_trip_seconds: histogram_vec(&r, "scheduler_cluster_round_trip_seconds", "Time between two emissions of the same cluster", &["cluster_type"], &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            clusters_total,
            clusters_active: gauge(&r, "scheduler_clusters_active", "Clusters in the awake set"),
            clusters_sleeping: gauge(&r, "scheduler_clusters_sleeping", "Clusters whose wake time is in the future"),
            active_tags: gauge(&r, "scheduler_active_tags", "Rows returned by the last awake scan"),
            active_scan_duration_seconds: histogram(&r, "scheduler_active_scan_duration_seconds", "Duration of each awake scan", &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]),
            frames_dispatched_per_pass: histogram_vec(&r, "scheduler_frames_dispatched_per_pass", "Frames this process booked in one cluster pass", &["cluster_type"], &[0.0, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0]),
            pass_terminated_reason_total: counter_vec(&r, "scheduler_pass_terminated_reason_total", "Cluster passes by how they ended", &["reason"]),
            checkout_outcome_total: counter_vec(&r, "scheduler_checkout_outcome_total", "Host attempts by outcome (exactly one per attempt)", &["outcome"]),
            placement_score_chosen: histogram(&r, "scheduler_placement_score_chosen", "E-PVM score of the chosen host", &[0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0]),
            placement_inner_retries_exhausted_total: counter(&r, "scheduler_placement_inner_retries_exhausted_total", "E-PVM searches that lost every compare-and-remove"),
            booking_conflicts_total: counter_vec(&r, "scheduler_booking_conflicts_total", "Frames or hosts lost to another booker or a guard, by reason (addition)", &["reason"]),
            launch_failures_total: counter_vec(&r, "scheduler_launch_failures_total", "Failed RQD launches, by gRPC status (addition)", &["status"]),
            compensations_total: counter(&r, "scheduler_compensations_total", "Bookings undone after a failed or abandoned launch (addition)"),
            errors_total: counter_vec(&r, "scheduler_errors_total", "Operating errors by module (addition)", &["module"]),
            host_attempts_total: counter(&r, "scheduler_host_attempts_total", "Host attempts made by the matcher (addition)"),
            recompute_cycle_duration_seconds: histogram(&r, "scheduler_recompute_cycle_duration_seconds", "Duration of each full accounting reconcile", &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0]),
            accounting_listener_up: gauge(&r, "scheduler_accounting_listener_up", "1 while the acct_release/acct_limit_change listener is connected (addition)"),
            accounting_leader: gauge(&r, "scheduler_accounting_leader", "1 while this instance is the one that reconciles managed-show rollups (addition)"),
            accounting_notifications_total: counter_vec(&r, "scheduler_accounting_notifications_total", "Accounting notifications received, by channel; bad = unusable payload (addition)", &["channel"]),
            accounting_reconciled_rows_total: counter_vec(&r, "scheduler_accounting_reconciled_rows_total", "Rollup rows locked and set to SUM(proc), by table (addition)", &["table"]),
            accounting_full_reconciles_total: counter_vec(&r, "scheduler_accounting_full_reconciles_total", "Reconciles of every managed show, by reason (addition)", &["reason"]),
            accounting_reconcile_lag_seconds: histogram(&r, "scheduler_accounting_reconcile_lag_seconds", "From hearing an acct_release to the commit of the reconcile that covered it (addition)", &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            accounting_drift_corrected_total: counter_vec(&r, "scheduler_accounting_drift_corrected_total", "Corrections no notification explained, in core units or GPUs, by table (addition)", &["table", "unit"]),
            stranded_bookings_recovered_total: counter(&r, "scheduler_stranded_bookings_recovered_total", "Bookings found never launched (crash between commit and launch, lost frame) and compensated (addition)"),
            stranded_sweep_duration_seconds: histogram(&r, "scheduler_stranded_sweep_duration_seconds", "Duration of each stranded-booking sweep (addition)", &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            compensation_retries_pending: gauge(&r, "scheduler_compensation_retries_pending", "Failed compensations waiting for a retry (addition)"),
            http_connections_open: gauge(&r, "scheduler_http_connections_open", "Open connections to the metrics/health endpoint (addition)"),
            http_connections_dropped_total: counter_vec(&r, "scheduler_http_connections_dropped_total", "HTTP connections closed for room: evicted (oldest unfinished) or full (addition)", &["reason"]),
            thread_deaths_total: counter_vec(&r, "scheduler_thread_deaths_total", "Pipeline threads that died (panicked or returned early), by thread (addition)", &["thread"]),
            instances_live: gauge(&r, "scheduler_instances_live", "Scheduler instances with a live membership on this database, this one included (addition)"),
            owned_units: gauge(&r, "scheduler_owned_units", "Host pools (allocations) this instance owns and serves (addition)"),
            ownership_changes_total: counter_vec(&r, "scheduler_ownership_changes_total", "Units this instance took or gave up, by why: joined, left (owner gone), fenced (owner frozen), rebalanced (addition)", &["reason"]),
            fenced_total: counter(&r, "scheduler_fenced_total", "Frozen peers whose sessions this instance terminated (addition)"),
            frames_lost_elsewhere_total: counter(&r, "scheduler_frames_lost_elsewhere_total", "Frames planned here but booked first by another booker (another instance, or Cuebot) (addition)"),
            attempts_wasted_by_others_total: counter(&r, "scheduler_attempts_wasted_by_others_total", "Host attempts that booked nothing because another booker took their frames (addition)"),
            reservations_held: gauge(&r, "scheduler_reservations_held", "Policy smart: hosts held for a waiting wide frame now (addition)"),
            reservations_total: counter_vec(&r, "scheduler_reservations_total", "Policy smart: host holds by outcome: made, booked (its frame booked), expired (its frame left), displaced (by a frame that waited longer) (addition)", &["outcome"]),
            show_share_ratio,
            fair_share_limited_total: counter(&r, "scheduler_fair_share_limited_total", "Policy smart: passes whose show was held to its fair share while another show was short of its own (addition)"),
            registry: r,
        }
    }

    /// Prometheus text exposition of every registered metric.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
