//! Data-driven tests of the matching rules (scheduler-behaviour.md §3.4–§3.7, §4; DECISIONS.md;
//! cuebot-database.md §5.1 and pitfall 5). Pure: no database, no RQD, no clock beyond the host
//! cache's own `Instant`s.
//!
//! Units as in the model: cores in core units (100 = one core), memory and GPU memory in KiB.
//! Every table row is `(name, …, expected)`; a checker runs all rows and reports every failing
//! row by name.

use super::*;
use crate::matching::host_cache::{CacheSettings, GroupKey, HostCache, IdleValues, Search, Strategy};
use crate::model::{Host, Layer, ThreadMode};
use crate::db::queries::HostRow;
use std::sync::Arc;
use std::time::Duration;

use ThreadMode::{All, Auto, Variable};

/// KiB in one GiB.
const GIB: i64 = 1024 * 1024;
/// A "64 GB" host as Cuebot records it: 64 GiB − 512 MiB (cuebot-database.md pitfall 5).
const HOST_64GB_KIB: i64 = 66_584_576;
/// 80 GB (decimal) of GPU memory in KiB: 78 125 000 × 1024 = 80 × 10⁹ bytes.
const GPU_80GB_KIB: i64 = 78_125_000;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A host in whole cores and GiB; no GPUs, OS "rhel9", id "h".
fn host(mode: ThreadMode, total_cores: i64, idle_cores: i64, total_mem_gib: i64, idle_mem_gib: i64) -> Host {
    Host {
        id: Arc::from("h"),
        name: "h".into(),
        alloc_id: "alloc".into(),
        os: "rhel9".into(),
        thread_mode: mode,
        cores_total: total_cores * CORE_UNITS_PER_CORE,
        cores_idle: idle_cores * CORE_UNITS_PER_CORE,
        mem_total: total_mem_gib * GIB,
        mem_idle: idle_mem_gib * GIB,
        gpus_total: 0,
        gpus_idle: 0,
        gpu_mem_total: 0,
        gpu_mem_idle: 0,
    }
}

trait HostTweaks {
    fn id(self, id: &str) -> Self;
    fn os(self, os: &str) -> Self;
    fn mem_kib(self, total: i64, idle: i64) -> Self;
    fn gpus(self, total: i64, idle: i64, gpu_mem_total_kib: i64, gpu_mem_idle_kib: i64) -> Self;
}

impl HostTweaks for Host {
    fn id(mut self, id: &str) -> Self {
        self.id = Arc::from(id);
        self.name = id.to_string();
        self
    }
    fn os(mut self, os: &str) -> Self {
        self.os = os.to_string();
        self
    }
    fn mem_kib(mut self, total: i64, idle: i64) -> Self {
        self.mem_total = total;
        self.mem_idle = idle;
        self
    }
    fn gpus(mut self, total: i64, idle: i64, gpu_mem_total_kib: i64, gpu_mem_idle_kib: i64) -> Self {
        self.gpus_total = total;
        self.gpus_idle = idle;
        self.gpu_mem_total = gpu_mem_total_kib;
        self.gpu_mem_idle = gpu_mem_idle_kib;
        self
    }
}

/// A threadable layer wanting `min_cores` whole cores (0 = whole host, −N = all but N) and
/// `mem_gib` GiB; no cap, no GPUs, service "default".
fn layer(min_cores: i64, mem_gib: i64) -> Layer {
    Layer {
        id: "l".into(),
        name: "render".into(),
        command: "true".into(),
        range: "1-10".into(),
        chunk_size: 1,
        dispatch_order: 0,
        tags: vec!["general".into()],
        cores_min: min_cores * CORE_UNITS_PER_CORE,
        cores_max: 0,
        threadable: true,
        mem_min: mem_gib * GIB,
        gpus_min: 0,
        gpu_mem_min: 0,
        services: vec!["default".into()],
        has_limits: false,
        env: Vec::new(),
    }
}

trait LayerTweaks {
    fn non_threadable(self) -> Self;
    fn cores_min_units(self, units: i64) -> Self;
    fn max_cores(self, cores: i64) -> Self;
    fn mem_kib(self, kib: i64) -> Self;
    fn gpus(self, gpus: i64, gpu_mem_kib: i64) -> Self;
    fn services(self, services: &[&str]) -> Self;
}

impl LayerTweaks for Layer {
    fn non_threadable(mut self) -> Self {
        self.threadable = false;
        self
    }
    fn cores_min_units(mut self, units: i64) -> Self {
        self.cores_min = units;
        self
    }
    fn max_cores(mut self, cores: i64) -> Self {
        self.cores_max = cores * CORE_UNITS_PER_CORE;
        self
    }
    fn mem_kib(mut self, kib: i64) -> Self {
        self.mem_min = kib;
        self
    }
    fn gpus(mut self, gpus: i64, gpu_mem_kib: i64) -> Self {
        self.gpus_min = gpus;
        self.gpu_mem_min = gpu_mem_kib;
        self
    }
    fn services(mut self, services: &[&str]) -> Self {
        self.services = services.iter().map(|s| s.to_string()).collect();
        self
    }
}

fn policy() -> MatchPolicy {
    MatchPolicy { memory_stranded_threshold_kib: 2 * GIB, selfish_services: vec!["arnold_selfish".into()] }
}

/// What the booking path does for one frame: the §3.4 predicates, then the §3.6 reservation.
fn evaluate(host: &Host, layer: &Layer, job_os: Option<&str>, remaining: Option<i64>) -> Result<i64, Reject> {
    check_host(host, layer, job_os)?;
    reserve_cores(host, layer, remaining, &policy())
}

fn show(result: Result<i64, Reject>) -> String {
    match result {
        Ok(units) => format!("{units} units"),
        Err(reject) => format!("reject {:?}", reject.name()),
    }
}

/// Runs every row; fails once, naming every row that disagreed.
fn check_rows<'a>(rows: impl IntoIterator<Item = (&'a str, Result<i64, Reject>, Result<i64, Reject>)>) {
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, got, want) in rows {
        count += 1;
        if got != want {
            failures.push(format!("  {name}: expected {}, got {}", show(want), show(got)));
        }
    }
    assert!(count > 0, "empty table");
    assert!(failures.is_empty(), "{} of {count} cases failed:\n{}", failures.len(), failures.join("\n"));
}

type Expect = Result<i64, Reject>;
type Row = (&'static str, Host, Layer, Expect);

/// Rows evaluated with no job OS and an uncapped job.
fn check_table(rows: Vec<Row>) {
    check_rows(rows.iter().map(|(name, h, l, want)| (*name, evaluate(h, l, None, None), *want)));
}

// ---------------------------------------------------------------------------------------------
// §3.4 predicates and §3.5/§3.6 reservation
// ---------------------------------------------------------------------------------------------

#[test]
fn reject_names_are_distinct() {
    let all = [
        Reject::Os,
        Reject::ThreadMode,
        Reject::Cores,
        Reject::Memory,
        Reject::Gpus,
        Reject::GpuMemory,
        Reject::NoCores,
    ];
    let names: std::collections::BTreeSet<&str> = all.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), all.len());
    assert!(names.iter().all(|n| !n.is_empty()));
}

#[test]
fn os_rule() {
    // (name, host OS, job OS, expected); a non-threadable frame on an idle AUTO host.
    let rows: Vec<(&str, &str, Option<&str>, Expect)> = vec![
        ("unset job OS matches any host", "rhel9", None, Ok(100)),
        ("empty job OS matches any host", "rhel9", Some(""), Ok(100)),
        ("unset job OS matches an OS-less host", "", None, Ok(100)),
        ("exact match", "rhel9", Some("rhel9"), Ok(100)),
        ("different OS", "rhel9", Some("rocky9"), Err(Reject::Os)),
        ("case-sensitive", "rhel9", Some("RHEL9"), Err(Reject::Os)),
        ("OS-less host, job wants one", "", Some("rhel9"), Err(Reject::Os)),
        ("comma list: first element", "rhel9,rocky9", Some("rhel9"), Ok(100)),
        ("comma list: second element", "rhel9,rocky9", Some("rocky9"), Ok(100)),
        ("comma list: no prefix match", "rhel9,rocky9", Some("rhel"), Err(Reject::Os)),
        ("comma list: no element", "rhel9,rocky9", Some("centos7"), Err(Reject::Os)),
    ];
    let l = layer(1, 1).non_threadable();
    check_rows(rows.iter().map(|(name, host_os, job_os, want)| {
        (*name, evaluate(&host(Auto, 8, 8, 16, 16).os(host_os), &l, *job_os, None), *want)
    }));
}

#[test]
fn thread_modes() {
    check_table(vec![
        // AUTO
        ("AUTO threadable m=1 4 GiB: balanced", host(Auto, 8, 8, 16, 16), layer(1, 4), Ok(200)),
        ("AUTO non-threadable m=4: one core (§3.6 rule 1)", host(Auto, 8, 8, 16, 16), layer(4, 1).non_threadable(), Ok(100)),
        // ALL
        ("ALL threadable m=1: every idle core", host(All, 8, 6, 16, 16), layer(1, 1), Ok(600)),
        ("ALL threadable m=4 with 3 idle", host(All, 8, 3, 16, 16), layer(4, 1), Err(Reject::Cores)),
        ("ALL non-threadable rejected", host(All, 8, 8, 16, 16), layer(1, 1).non_threadable(), Err(Reject::ThreadMode)),
        ("ALL non-threadable m=0 rejected", host(All, 8, 8, 16, 16), layer(0, 1).non_threadable(), Err(Reject::ThreadMode)),
        // VARIABLE
        ("VARIABLE 16c threadable m=1: 2 cores", host(Variable, 16, 16, 32, 32), layer(1, 1), Ok(200)),
        ("VARIABLE threadable m=2: 2 cores", host(Variable, 16, 16, 32, 32), layer(2, 1), Ok(200)),
        ("VARIABLE small request needs 2 idle", host(Variable, 16, 1, 32, 32), layer(1, 1), Err(Reject::Cores)),
        ("VARIABLE r>2: balanced raised to r", host(Variable, 16, 16, 32, 32), layer(4, 2), Ok(400)),
        ("VARIABLE r>2: balanced above r", host(Variable, 16, 16, 32, 32), layer(4, 20), Ok(1000)),
        ("VARIABLE non-threadable: one core", host(Variable, 16, 16, 32, 32), layer(1, 1).non_threadable(), Ok(100)),
        ("VARIABLE non-threadable, 1 idle core", host(Variable, 16, 1, 32, 32), layer(1, 1).non_threadable(), Ok(100)),
    ]);
}

#[test]
fn minimum_cores() {
    check_table(vec![
        // §3.5: m > 0
        ("m=4 with 3 idle", host(Auto, 8, 3, 16, 16), layer(4, 1), Err(Reject::Cores)),
        ("m=4 with 4 idle", host(Auto, 8, 4, 16, 16), layer(4, 1), Ok(400)),
        ("m=0.5 core counts as 1", host(Auto, 8, 8, 16, 16), layer(1, 1).cores_min_units(50), Ok(100)),
        ("m=1.5 cores truncates to 1", host(Auto, 8, 8, 16, 16), layer(1, 1).cores_min_units(150), Ok(100)),
        // m = 0: whole host
        ("m=0 on a fully idle host takes all", host(Auto, 8, 8, 64, 64), layer(0, 1), Ok(800)),
        ("m=0 on a partly used host", host(Auto, 8, 7, 64, 64), layer(0, 1), Err(Reject::Cores)),
        ("m=0 on an idle ALL host", host(All, 8, 8, 64, 64), layer(0, 1), Ok(800)),
        ("m=0 on a partly used ALL host", host(All, 8, 6, 64, 64), layer(0, 1), Err(Reject::Cores)),
        // m < 0: all but |m|
        ("m=-2 on idle 8c host", host(Auto, 8, 8, 64, 64), layer(-2, 1), Ok(600)),
        ("m=-2 on 8c host with 6 idle", host(Auto, 8, 6, 64, 64), layer(-2, 1), Ok(600)),
        ("m=-2 on 8c host with 5 idle", host(Auto, 8, 5, 64, 64), layer(-2, 1), Err(Reject::Cores)),
        ("m=-2 on idle 2c host: zero cores", host(Auto, 2, 2, 8, 8), layer(-2, 1), Err(Reject::NoCores)),
        ("m=-2 on busy 2c host", host(Auto, 2, 0, 8, 8), layer(-2, 1), Err(Reject::Cores)),
        ("m=-4 on idle 2c host: zero cores", host(Auto, 2, 2, 8, 8), layer(-4, 1), Err(Reject::NoCores)),
        // §3.6 literal: the stranded-memory rule gives every idle core whatever r is.
        ("m=-2 on idle 2c host, stranded memory", host(Auto, 2, 2, 8, 8), layer(-2, 7), Ok(200)),
        // DECISIONS.md #1: non-threadable reserves 100 units whatever the minimum; floor 1 idle core.
        ("non-threadable m=8 on host with 1 idle", host(Auto, 8, 1, 16, 16), layer(8, 1).non_threadable(), Ok(100)),
        ("non-threadable m=0", host(Auto, 8, 8, 16, 16), layer(0, 1).non_threadable(), Ok(100)),
        ("non-threadable m=0 on partly used host", host(Auto, 8, 3, 16, 16), layer(0, 1).non_threadable(), Ok(100)),
        ("non-threadable m=-2", host(Auto, 8, 8, 16, 16), layer(-2, 1).non_threadable(), Ok(100)),
        ("non-threadable stranded memory", host(Auto, 8, 8, 16, 16), layer(4, 15).non_threadable(), Ok(100)),
        ("non-threadable with 0 idle", host(Auto, 8, 0, 16, 16), layer(1, 1).non_threadable(), Err(Reject::Cores)),
    ]);
}

#[test]
fn memory_and_stranded_threshold() {
    check_table(vec![
        // The §3.6 table, every row (the job-clamped row is in `job_clamp`).
        ("§3.6 AUTO 8c/16G non-threadable m=4", host(Auto, 8, 8, 16, 16), layer(4, 1).non_threadable(), Ok(100)),
        ("§3.6 ALL 8c 6 idle m=1", host(All, 8, 6, 16, 16), layer(1, 1), Ok(600)),
        ("§3.6 ALL 8c 6 idle layer max 2", host(All, 8, 6, 16, 16), layer(1, 1).max_cores(2), Ok(200)),
        ("§3.6 VARIABLE 16c m=1", host(Variable, 16, 16, 32, 32), layer(1, 1), Ok(200)),
        ("§3.6 AUTO 8c/16G m=1 4G", host(Auto, 8, 8, 16, 16), layer(1, 4), Ok(200)),
        ("§3.6 AUTO 8c/16G m=1 6G", host(Auto, 8, 8, 16, 16), layer(1, 6), Ok(300)),
        ("§3.6 AUTO 8c/32G m=4 2G", host(Auto, 8, 8, 32, 32), layer(4, 2), Ok(400)),
        ("§3.6 AUTO 8c 6 idle/5G idle m=1 4G: stranded", host(Auto, 8, 6, 16, 5), layer(1, 4), Ok(600)),
        ("§3.6 AUTO 8c ample memory m=0", host(Auto, 8, 8, 64, 64), layer(0, 1), Ok(800)),
        ("§3.6 AUTO 8c ample memory m=-2", host(Auto, 8, 8, 64, 64), layer(-2, 1), Ok(600)),
        // Threshold boundary: left ≤ 2 GiB strands, left > 2 GiB balances.
        ("left exactly 2 GiB: stranded", host(Auto, 8, 8, 16, 16), layer(1, 14), Ok(800)),
        ("left 2 GiB + 1 KiB: balanced", host(Auto, 8, 8, 16, 16), layer(1, 14).mem_kib(14 * GIB - 1), Ok(600)),
        ("left measured from idle, not total", host(Auto, 8, 8, 16, 3), layer(1, 2), Ok(800)),
        ("layer takes all idle memory", host(Auto, 8, 8, 16, 4), layer(1, 4), Ok(800)),
        // Memory-balanced count: mem-per-core rounded, count truncated (cuebot-database.md §5.1).
        ("balanced truncates (2.5 → 2)", host(Auto, 8, 8, 16, 16), layer(1, 5), Ok(200)),
        (
            "mem-per-core rounds up (11 GiB / 3 cores)",
            host(Auto, 3, 3, 11, 11),
            layer(1, 1).mem_kib(2 * (11 * GIB / 3)),
            Ok(100),
        ),
        ("balanced above idle cores", host(Auto, 8, 4, 16, 16), layer(1, 12), Err(Reject::Cores)),
        // Memory predicate.
        ("not enough idle memory", host(Auto, 8, 8, 16, 3), layer(1, 4), Err(Reject::Memory)),
        ("64 GiB layer on a \"64 GB\" host", host(Auto, 16, 16, 0, 0).mem_kib(HOST_64GB_KIB, HOST_64GB_KIB), layer(1, 64), Err(Reject::Memory)),
        (
            "63 GiB layer on a \"64 GB\" host: stranded, all cores",
            host(Auto, 16, 16, 0, 0).mem_kib(HOST_64GB_KIB, HOST_64GB_KIB),
            layer(1, 63),
            Ok(1600),
        ),
        ("non-threadable short of memory", host(Auto, 8, 8, 16, 3), layer(1, 4).non_threadable(), Err(Reject::Memory)),
    ]);
}

#[test]
fn gpus() {
    let gpu_host = || host(Auto, 8, 8, 32, 32).gpus(4, 2, 64 * GIB, 16 * GIB);
    check_table(vec![
        ("GPU layer on a non-GPU host", host(Auto, 8, 8, 32, 32), layer(1, 2).gpus(1, GIB), Err(Reject::Gpus)),
        ("GPU-memory-only layer on a non-GPU host", host(Auto, 8, 8, 32, 32), layer(1, 2).gpus(0, GIB), Err(Reject::GpuMemory)),
        ("GPU layer fits", gpu_host(), layer(1, 2).gpus(1, 8 * GIB), Ok(100)),
        ("GPU layer takes every idle GPU", gpu_host(), layer(1, 2).gpus(2, 16 * GIB), Ok(100)),
        ("more GPUs than idle", gpu_host(), layer(1, 2).gpus(3, GIB), Err(Reject::Gpus)),
        ("more GPU memory than idle", gpu_host(), layer(1, 2).gpus(1, 16 * GIB + 1), Err(Reject::GpuMemory)),
        ("non-threadable GPU layer", gpu_host(), layer(1, 2).gpus(1, GIB).non_threadable(), Ok(100)),
        ("CPU layer on a GPU host", gpu_host(), layer(1, 8), Ok(200)),
    ]);
}

#[test]
fn selfish_services() {
    let big = || host(Auto, 16, 16, 64, 64);
    check_table(vec![
        ("not selfish: balanced", big(), layer(1, 1), Ok(100)),
        ("selfish: every idle core", big(), layer(1, 1).services(&["arnold_selfish"]), Ok(1600)),
        ("selfish among others", big(), layer(1, 1).services(&["shell", "arnold_selfish"]), Ok(1600)),
        ("selfish on a partly used host", host(Auto, 16, 5, 64, 64), layer(1, 1).services(&["arnold_selfish"]), Ok(500)),
        ("services are not trimmed", big(), layer(1, 1).services(&["shell", " arnold_selfish"]), Ok(100)),
        ("services are case-sensitive", big(), layer(1, 1).services(&["Arnold_Selfish"]), Ok(100)),
        ("selfish capped by layer max", big(), layer(1, 1).services(&["arnold_selfish"]).max_cores(4), Ok(400)),
        ("selfish on VARIABLE small request: 2", host(Variable, 16, 16, 64, 64), layer(1, 1).services(&["arnold_selfish"]), Ok(200)),
        ("selfish on VARIABLE r>2: every idle core", host(Variable, 16, 16, 64, 64), layer(4, 1).services(&["arnold_selfish"]), Ok(1600)),
        ("selfish non-threadable: one core", big(), layer(1, 1).services(&["arnold_selfish"]).non_threadable(), Ok(100)),
    ]);
}

#[test]
fn layer_max_cap() {
    check_table(vec![
        ("cap below balanced", host(Auto, 8, 8, 16, 16), layer(1, 6).max_cores(2), Ok(200)),
        ("cap 0 is no cap", host(Auto, 8, 8, 16, 16), layer(1, 6).max_cores(0), Ok(300)),
        ("cap above balanced", host(Auto, 8, 8, 16, 16), layer(1, 6).max_cores(8), Ok(300)),
        ("cap on ALL", host(All, 8, 8, 16, 16), layer(1, 1).max_cores(3), Ok(300)),
        ("cap on stranded", host(Auto, 8, 6, 16, 5), layer(1, 4).max_cores(4), Ok(400)),
        ("cap on whole-host request", host(Auto, 8, 8, 64, 64), layer(0, 1).max_cores(4), Ok(400)),
        // R: upstream skipped the cap in the VARIABLE-2 branch; we cap it too.
        ("cap on VARIABLE-2 branch", host(Variable, 16, 16, 32, 32), layer(1, 1).max_cores(1), Ok(100)),
        ("cap ignored for non-threadable", host(Auto, 8, 8, 16, 16), layer(1, 1).max_cores(4).non_threadable(), Ok(100)),
    ]);
}

#[test]
fn job_clamp() {
    // (name, host, layer, job max − (in use + booked) in core units, expected)
    let rows: Vec<(&str, Host, Layer, Option<i64>, Expect)> = vec![
        (
            "§3.6 AUTO 64c, job max 16, none in use, selfish",
            host(Auto, 64, 64, 256, 256),
            layer(1, 1).services(&["arnold_selfish"]),
            Some(1600),
            Ok(1600),
        ),
        ("ALL 8c, 3 cores left", host(All, 8, 8, 16, 16), layer(1, 1), Some(300), Ok(300)),
        ("remaining truncates to whole cores", host(All, 8, 8, 16, 16), layer(1, 1), Some(150), Ok(100)),
        ("remaining above the reservation", host(All, 8, 8, 16, 16), layer(1, 1), Some(5000), Ok(800)),
        ("uncapped job", host(All, 8, 8, 16, 16), layer(1, 1), None, Ok(800)),
        // §3.6 rule 3 clamps only when remaining > 0; the §3.9 job-budget stop is the caller's.
        ("remaining 0: no clamp", host(All, 8, 8, 16, 16), layer(1, 1), Some(0), Ok(800)),
        ("clamp after the layer cap", host(All, 8, 8, 16, 16), layer(1, 1).max_cores(4), Some(600), Ok(400)),
        ("clamp on whole-host request", host(Auto, 8, 8, 64, 64), layer(0, 1), Some(200), Ok(200)),
        ("clamp on VARIABLE-2", host(Variable, 16, 16, 32, 32), layer(1, 1), Some(100), Ok(100)),
        ("non-threadable unaffected", host(Auto, 8, 8, 16, 16), layer(4, 1).non_threadable(), Some(500), Ok(100)),
    ];
    check_rows(rows.iter().map(|(name, h, l, remaining, want)| (*name, evaluate(h, l, None, *remaining), *want)));
}

#[test]
fn floors_and_search_keys() {
    // (name, host, layer, core floor, search core key)
    let rows: Vec<(&str, Host, Layer, i64, i64)> = vec![
        ("threadable m=4 AUTO", host(Auto, 8, 8, 16, 16), layer(4, 1), 4, 4),
        ("threadable m=1 VARIABLE", host(Variable, 8, 8, 16, 16), layer(1, 1), 2, 1),
        ("threadable m=4 VARIABLE", host(Variable, 8, 8, 16, 16), layer(4, 1), 4, 4),
        ("threadable m=0 on 8c", host(Auto, 8, 8, 16, 16), layer(0, 1), 8, 1),
        ("threadable m=-2 on 8c", host(Auto, 8, 8, 16, 16), layer(-2, 1), 6, 1),
        ("threadable m=-2 on 2c", host(Auto, 2, 2, 16, 16), layer(-2, 1), 1, 1),
        ("non-threadable m=8", host(Auto, 8, 8, 16, 16), layer(8, 1).non_threadable(), 1, 1),
        ("non-threadable m=8 VARIABLE", host(Variable, 8, 8, 16, 16), layer(8, 1).non_threadable(), 1, 1),
    ];
    let mut failures = Vec::new();
    for (name, h, l, floor, key) in &rows {
        let got = (core_floor(l, h), search_core_key(l));
        if got != (*floor, *key) {
            failures.push(format!("  {name}: expected (floor, key) = ({floor}, {key}), got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// §3.7 E-PVM score
// ---------------------------------------------------------------------------------------------

fn default_weights() -> Weights {
    // The configuration's defaults, which §3.7 lists: 1, 1, 2, 1, 2, 2.
    let d = crate::config::EpvmWeights::default();
    Weights {
        cores: d.cores,
        mem: d.mem,
        gpus: d.gpus,
        gpu_mem: d.gpu_mem,
        gpu_count_reservation: d.gpu_count_reservation,
        gpu_mem_reservation: d.gpu_mem_reservation,
    }
}

fn weights_with(f: impl FnOnce(&mut Weights)) -> Weights {
    let mut w = default_weights();
    f(&mut w);
    w
}

fn job_max(max_cores: i64, in_use_cores: i64) -> ScoreCaps {
    ScoreCaps { job_max_cores: max_cores * CORE_UNITS_PER_CORE, job_cores_in_use: in_use_cores * CORE_UNITS_PER_CORE, ..Default::default() }
}

#[test]
fn epvm_score_table() {
    let none = ScoreCaps::default();
    let unit_gpu_weights = weights_with(|w| {
        w.gpu_count_reservation = 1.0;
        w.gpu_mem_reservation = 1.0;
    });
    // A host whose cores and memory exactly fit one 4c/4G frame, so only the GPU term is left.
    let gpu_host = || host(Auto, 4, 4, 4, 4).gpus(8, 8, GPU_80GB_KIB, GPU_80GB_KIB);
    let rows: Vec<(&str, Host, Layer, ScoreCaps, Weights, f64)> = vec![
        ("§3.7 64c/64G, 4/4G: perfect ratio", host(Auto, 64, 64, 64, 64), layer(4, 4), none, default_weights(), 0.0),
        ("§3.7 4c/64G, 4/4G: stranded memory", host(Auto, 4, 4, 64, 64), layer(4, 4), none, default_weights(), 15.0),
        ("§3.7 4c/64G, 4/4G, mem weight 2", host(Auto, 4, 4, 64, 64), layer(4, 4), none, weights_with(|w| w.mem = 2.0), 30.0),
        ("§3.7 64/64G, job max 12, none in use", host(Auto, 64, 64, 64, 64), layer(4, 4), job_max(12, 0), default_weights(), 26.0),
        ("§3.7 8 GPUs/80 GB, CPU-only, weights 1/1", gpu_host(), layer(4, 4), none, unit_gpu_weights, 88.0),
        ("§3.7 8 GPUs/80 GB, CPU-only, defaults", gpu_host(), layer(4, 4), none, default_weights(), 176.0),
        // More rows derived from the §3.7 formula.
        ("job max 12 with 4 in use: M=1", host(Auto, 64, 64, 64, 64), layer(4, 4), job_max(12, 4), default_weights(), 28.0),
        ("job at max: M=0", host(Auto, 64, 64, 64, 64), layer(4, 4), job_max(12, 12), default_weights(), 30.0),
        (
            "show burst 12 with 4 in use: M=1",
            host(Auto, 64, 64, 64, 64),
            layer(4, 4),
            ScoreCaps { show_burst: 1200, show_cores_in_use: 400, ..Default::default() },
            default_weights(),
            28.0,
        ),
        ("core-bound: 64c/16G, 4/4G", host(Auto, 64, 64, 16, 16), layer(4, 4), none, default_weights(), 12.0),
        ("cores weight 3", host(Auto, 64, 64, 16, 16), layer(4, 4), none, weights_with(|w| w.cores = 3.0), 36.0),
        ("non-threadable counts 1 core", host(Auto, 8, 8, 8, 8), layer(4, 1).non_threadable(), none, default_weights(), 0.0),
        ("fractional waste", host(Auto, 6, 6, 4, 4), layer(4, 4), none, default_weights(), 0.5),
        ("GPU layer, exact fit", host(Auto, 4, 4, 4, 4).gpus(1, 1, 4 * GIB, 4 * GIB), layer(4, 4).gpus(1, 4 * GIB), none, default_weights(), 0.0),
        // GPU layer on 4c/4G with 4 GPUs: M = 0 (cores), GPU waste 3 × w_gpus 2 + GPU memory waste 3 × 1.
        ("GPU layer, spare GPUs", host(Auto, 4, 4, 4, 4).gpus(4, 4, 16 * GIB, 16 * GIB), layer(4, 4).gpus(1, 4 * GIB), none, default_weights(), 9.0),
    ];
    let mut failures = Vec::new();
    for (name, h, l, caps, w, want) in &rows {
        let got = epvm_score(h, l, *caps, w);
        if (got - want).abs() > 1e-9 {
            failures.push(format!("  {name}: expected score {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

#[test]
fn epvm_score_properties() {
    let weights = default_weights();
    // Never negative, always finite, over a grid including hosts that cannot fit the layer.
    for cores in [1, 2, 4, 8, 64] {
        for mem in [1, 4, 16, 64] {
            for gpus in [0, 1, 8] {
                for (lc, lm, lg) in [(1, 1, 0), (2, 8, 0), (4, 2, 1), (16, 1, 0), (1, 128, 2)] {
                    for caps in [ScoreCaps::default(), job_max(4, 0), job_max(8, 16)] {
                        let h = host(Auto, cores, cores, mem, mem).gpus(gpus, gpus, gpus * 8 * GIB, gpus * 8 * GIB);
                        let l = layer(lc, lm).gpus(lg, lg * 4 * GIB);
                        let s = epvm_score(&h, &l, caps, &weights);
                        assert!(s >= 0.0 && s.is_finite(), "score {s} for host {cores}c/{mem}G/{gpus}g, layer {lc}/{lm}/{lg}");
                    }
                }
            }
        }
    }
    // A host idle in exactly k frames' worth scores ≈ 0.
    for (lc, lm) in [(1, 1), (2, 3), (4, 4), (8, 2)] {
        for k in 1..=16 {
            let h = host(Auto, lc * k, lc * k, lm * k, lm * k);
            let s = epvm_score(&h, &layer(lc, lm), ScoreCaps::default(), &weights);
            assert!(s.abs() < 1e-9, "ratio match {k} × {lc}c/{lm}G scored {s}");
        }
    }
    // The GPU soft reservation grows with idle GPUs (and idle GPU memory) for CPU-only layers.
    let mut previous = -1.0;
    for gpus in 0..=8 {
        let h = host(Auto, 8, 8, 8, 8).gpus(8, gpus, 8 * 16 * GIB, gpus * 16 * GIB);
        let s = epvm_score(&h, &layer(1, 1), ScoreCaps::default(), &weights);
        assert!(s > previous, "{gpus} idle GPUs scored {s}, not above {previous}");
        previous = s;
    }
    let mut previous = -1.0;
    for gpus in 0..=8 {
        let h = host(Auto, 8, 8, 8, 8).gpus(8, gpus, 8 * 16 * GIB, 8 * 16 * GIB);
        let s = epvm_score(&h, &layer(1, 1), ScoreCaps::default(), &weights);
        assert!(s > previous, "{gpus} idle GPUs (GPU memory fixed) scored {s}, not above {previous}");
        previous = s;
    }
    // A CPU-only layer therefore prefers the non-GPU twin of a host.
    let cpu = host(Auto, 16, 16, 64, 64);
    let gpu = cpu.clone().gpus(1, 1, 16 * GIB, 16 * GIB);
    let l = layer(2, 4);
    assert!(epvm_score(&cpu, &l, ScoreCaps::default(), &weights) < epvm_score(&gpu, &l, ScoreCaps::default(), &weights));
}

// ---------------------------------------------------------------------------------------------
// §4 host cache
// ---------------------------------------------------------------------------------------------

const STALENESS_SECS: f64 = 120.0;

fn new_cache() -> HostCache {
    HostCache::new(CacheSettings {
        memory_key_divisor_kib: 2 * GIB,
        checkout_timeout: Duration::from_secs(60),
        group_idle_timeout: Duration::from_secs(3 * 3600),
        host_staleness_threshold: Duration::from_secs_f64(STALENESS_SECS),
    })
}

fn group() -> GroupKey {
    GroupKey { facility_id: "fac".into(), show_id: "show".into(), tag: "general".into() }
}

fn row(host: Host, ping_epoch: f64) -> HostRow {
    HostRow { host, ping_epoch, ping_age_secs: 0.0 }
}

fn cache_with(hosts: Vec<Host>) -> HostCache {
    let cache = new_cache();
    cache.apply_group(&group(), hosts.into_iter().map(|h| row(h, 1.0)).collect());
    cache
}

fn saturation(core_ascending: bool, memory_ascending: bool) -> Strategy {
    Strategy::Saturation { core_ascending, memory_ascending }
}

fn epvm(max_candidates: usize) -> Strategy {
    Strategy::Epvm { max_candidates, weights: default_weights() }
}

/// Checks out one host for `layer`; its id.
fn take(cache: &HostCache, layer: &Layer, job_os: Option<&str>, strategy: &Strategy) -> Option<String> {
    let search = Search { layer, job_os, caps: ScoreCaps::default(), policy: None, job_remaining_units: None, holds: None };
    cache.checkout(&[group()], &search, strategy).map(|c| c.host.id.to_string())
}

fn idle(cores: i64, mem_gib: i64) -> IdleValues {
    IdleValues { cores_idle: cores * CORE_UNITS_PER_CORE, mem_idle: mem_gib * GIB, gpus_idle: 0, gpu_mem_idle: 0 }
}

#[test]
fn cache_search_order() {
    // Idle cores 16 / 2 / 8, all 64 GiB.
    let by_cores = || {
        vec![
            host(Auto, 16, 16, 64, 64).id("a16"),
            host(Auto, 16, 2, 64, 64).id("b2"),
            host(Auto, 16, 8, 64, 64).id("c8"),
        ]
    };
    // 16 idle cores each; idle memory 8 / 64 / 32 GiB.
    let by_mem = || {
        vec![
            host(Auto, 16, 16, 64, 8).id("m8"),
            host(Auto, 16, 16, 64, 64).id("m64"),
            host(Auto, 16, 16, 64, 32).id("m32"),
        ]
    };
    // Twins, the GPU one sorting first by id.
    let gpu_twins = || {
        vec![
            host(Auto, 16, 16, 64, 64).id("a-gpu").gpus(4, 4, 64 * GIB, 64 * GIB),
            host(Auto, 16, 16, 64, 64).id("b-cpu"),
        ]
    };
    // 4c/64G (most saturated, poor ratio for 4/4G) and 16c/16G (perfect ratio).
    let ratio = || vec![host(Auto, 4, 4, 64, 64).id("a-4c64g"), host(Auto, 16, 16, 16, 16).id("b-16c16g")];
    type CacheRow = (&'static str, Vec<Host>, Layer, Option<&'static str>, Strategy, Option<&'static str>);
    let rows: Vec<CacheRow> = vec![
        ("saturation packs: fewest idle cores", by_cores(), layer(1, 1), None, saturation(true, false), Some("b2")),
        ("saturation spreads: most idle cores", by_cores(), layer(1, 1), None, saturation(false, false), Some("a16")),
        ("core floor skips small hosts", by_cores(), layer(4, 1), None, saturation(true, false), Some("c8")),
        ("nothing has 32 idle cores", by_cores(), layer(32, 1), None, saturation(true, false), None),
        ("non-threadable floor is 1 core", by_cores(), layer(32, 1).non_threadable(), None, saturation(true, false), Some("b2")),
        ("whole-host request needs an idle host", by_cores(), layer(0, 1), None, saturation(true, false), Some("a16")),
        ("memory ascending: least idle memory", by_mem(), layer(1, 4), None, saturation(true, true), Some("m8")),
        ("memory descending: most idle memory", by_mem(), layer(1, 4), None, saturation(true, false), Some("m64")),
        ("memory floor skips small hosts", by_mem(), layer(1, 16), None, saturation(true, true), Some("m32")),
        ("nothing has 100 GiB", by_mem(), layer(1, 100), None, saturation(true, true), None),
        (
            "OS filter",
            vec![host(Auto, 16, 2, 64, 64).id("a").os("rocky9"), host(Auto, 16, 8, 64, 64).id("b")],
            layer(1, 1),
            Some("rhel9"),
            saturation(true, false),
            Some("b"),
        ),
        (
            "ALL host skipped for non-threadable",
            vec![host(All, 16, 2, 64, 64).id("a-all"), host(Auto, 16, 8, 64, 64).id("b-auto")],
            layer(1, 1).non_threadable(),
            None,
            saturation(true, false),
            Some("b-auto"),
        ),
        (
            "VARIABLE host with 1 idle core skipped",
            vec![host(Variable, 16, 1, 64, 64).id("a-var"), host(Auto, 16, 8, 64, 64).id("b-auto")],
            layer(1, 1),
            None,
            saturation(true, false),
            Some("b-auto"),
        ),
        ("GPU layer only on the GPU host", gpu_twins(), layer(1, 1).gpus(1, GIB), None, saturation(true, false), Some("a-gpu")),
        ("E-PVM: CPU layer avoids the GPU host", gpu_twins(), layer(1, 1), None, epvm(500), Some("b-cpu")),
        ("E-PVM: GPU layer takes the GPU host", gpu_twins(), layer(1, 1).gpus(1, GIB), None, epvm(500), Some("a-gpu")),
        ("E-PVM: best ratio wins", ratio(), layer(4, 4), None, epvm(500), Some("b-16c16g")),
        ("saturation: first fit ignores ratio", ratio(), layer(4, 4), None, saturation(true, false), Some("a-4c64g")),
        ("E-PVM scores only max_candidates hosts", ratio(), layer(4, 4), None, epvm(1), Some("a-4c64g")),
        ("E-PVM: nothing fits", ratio(), layer(32, 4), None, epvm(500), None),
    ];
    let mut failures = Vec::new();
    for (name, hosts, l, job_os, strategy, want) in &rows {
        let cache = cache_with(hosts.clone());
        let got = take(&cache, l, *job_os, strategy);
        if got.as_deref() != *want {
            failures.push(format!("  {name}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

#[test]
fn cache_epvm_checkout_reports_score() {
    let cache = cache_with(vec![host(Auto, 16, 16, 16, 16).id("a")]);
    let search = Search { layer: &layer(4, 4), job_os: None, caps: ScoreCaps::default(), policy: None, job_remaining_units: None, holds: None };
    let got = cache.checkout(&[group()], &search, &epvm(500)).expect("a host");
    assert_eq!(got.score, Some(0.0));
    let cache = cache_with(vec![host(Auto, 16, 16, 16, 16).id("a")]);
    let got = cache.checkout(&[group()], &search, &saturation(true, false)).expect("a host");
    assert_eq!(got.score, None);
}

#[test]
fn cache_checkout_reserves() {
    let cache = cache_with(vec![host(Auto, 8, 8, 16, 16).id("a"), host(Auto, 8, 8, 16, 16).id("b")]);
    let l = layer(1, 1);
    let first = take(&cache, &l, None, &saturation(true, false)).expect("first host");
    assert!(cache.is_reserved(&first));
    let second = take(&cache, &l, None, &saturation(true, false)).expect("second host");
    assert_ne!(first, second, "a reserved host was handed out twice");
    assert_eq!(take(&cache, &l, None, &epvm(500)), None, "both hosts are reserved");
    // A refresh re-inserting a reserved host (newer ping) still cannot hand it out (§4.4).
    cache.apply_group(&group(), vec![row(host(Auto, 8, 8, 16, 16).id("a"), 2.0), row(host(Auto, 8, 8, 16, 16).id("b"), 2.0)]);
    assert_eq!(take(&cache, &l, None, &saturation(true, false)), None);
    // Invalidate drops the reservation only.
    cache.invalidate(&Arc::from(first.as_str()));
    assert!(!cache.is_reserved(&first));
    assert_eq!(take(&cache, &l, None, &saturation(true, false)), Some(first));
}

#[test]
fn cache_checkin_reindexes() {
    let cache = cache_with(vec![host(Auto, 8, 8, 16, 16).id("a"), host(Auto, 8, 4, 16, 16).id("b")]);
    let l = layer(1, 1);
    let packs = saturation(true, false);
    assert_eq!(take(&cache, &l, None, &packs).as_deref(), Some("b"));
    // b is now full: never found again under its old key.
    cache.checkin(&Arc::from("b"), idle(0, 12), 5.0);
    assert!(!cache.is_reserved("b"));
    assert_eq!(cache.host("b").map(|h| h.cores_idle), Some(0));
    assert_eq!(take(&cache, &l, None, &packs).as_deref(), Some("a"));
    // a is checked in partly used: 2 cores left, so a 4-core frame no longer finds it.
    cache.checkin(&Arc::from("a"), idle(2, 8), 6.0);
    assert_eq!(take(&cache, &layer(4, 1), None, &packs), None);
    // …but a 1-core frame does, and b freed up to 6 cores sorts after a's 2.
    cache.checkin(&Arc::from("b"), idle(6, 14), 7.0);
    assert_eq!(take(&cache, &l, None, &packs).as_deref(), Some("a"));
    assert_eq!(take(&cache, &l, None, &packs).as_deref(), Some("b"));
    assert_eq!(take(&cache, &l, None, &packs), None);
}

#[test]
fn cache_checkin_moves_memory_key() {
    let cache = cache_with(vec![host(Auto, 8, 8, 64, 64).id("a"), host(Auto, 8, 8, 64, 32).id("b")]);
    let l = layer(1, 16);
    assert_eq!(take(&cache, &l, None, &saturation(true, true)).as_deref(), Some("b"));
    cache.checkin(&Arc::from("b"), idle(8, 8), 5.0);
    // b has 8 GiB left: below the 16 GiB memory key, so only a is found.
    assert_eq!(take(&cache, &l, None, &saturation(true, true)).as_deref(), Some("a"));
    assert_eq!(take(&cache, &l, None, &saturation(true, true)), None);
}

#[test]
fn cache_back_off() {
    let cache = cache_with(vec![host(Auto, 8, 2, 16, 16).id("a"), host(Auto, 8, 8, 16, 16).id("b")]);
    let l = layer(1, 1);
    cache.back_off("a", Duration::from_secs(60));
    assert!(cache.is_reserved("a"));
    assert_eq!(take(&cache, &l, None, &saturation(true, false)).as_deref(), Some("b"));
    assert_eq!(take(&cache, &l, None, &epvm(500)), None);
    // A zero back-off has expired at once.
    let cache = cache_with(vec![host(Auto, 8, 2, 16, 16).id("a")]);
    cache.back_off("a", Duration::ZERO);
    assert_eq!(take(&cache, &l, None, &saturation(true, false)).as_deref(), Some("a"));
}

#[test]
fn cache_back_off_of_absurd_length_does_not_panic() {
    // Instant::now() + Duration::MAX panics; the back-off is capped instead.
    let cache = cache_with(vec![host(Auto, 8, 8, 16, 16).id("a")]);
    cache.back_off("a", Duration::MAX);
    assert!(cache.is_reserved("a"));
}

#[test]
fn cache_never_hands_out_stale_hosts() {
    let cache = new_cache();
    let stale = HostRow { host: host(Auto, 8, 2, 16, 16).id("stale"), ping_epoch: 1.0, ping_age_secs: STALENESS_SECS + 1.0 };
    let fresh = HostRow { host: host(Auto, 8, 8, 16, 16).id("fresh"), ping_epoch: 1.0, ping_age_secs: 0.0 };
    cache.apply_group(&group(), vec![stale.clone(), fresh]);
    let l = layer(1, 1);
    for strategy in [saturation(true, false), epvm(500)] {
        let got = take(&cache, &l, None, &strategy);
        assert_eq!(got.as_deref(), Some("fresh"));
        cache.checkin(&Arc::from("fresh"), idle(8, 16), 2.0);
    }
    // Only stale hosts: nothing.
    let cache = new_cache();
    cache.apply_group(&group(), vec![stale]);
    assert_eq!(take(&cache, &l, None, &saturation(true, false)), None);
    assert_eq!(take(&cache, &l, None, &epvm(500)), None);
    assert_eq!(cache.clean_up(), 1, "the sweep evicts the stale host");
    assert_eq!(cache.host_count(), 0);
}

#[test]
fn cache_treats_a_host_with_an_unreadable_ping_age_as_stale() {
    // A NaN ping age (a float from the database) must not panic the refresher.
    let cache = new_cache();
    let odd = HostRow { host: host(Auto, 8, 8, 16, 16).id("odd"), ping_epoch: 1.0, ping_age_secs: f64::NAN };
    cache.apply_group(&group(), vec![odd]);
    assert_eq!(take(&cache, &layer(1, 1), None, &saturation(true, false)), None);
}

#[test]
fn cache_insert_rule_keeps_booking_values() {
    let cache = cache_with(vec![host(Auto, 8, 8, 16, 16).id("a")]);
    let l = layer(1, 1);
    assert_eq!(take(&cache, &l, None, &saturation(true, false)).as_deref(), Some("a"));
    // Booked at database time 10: no idle cores left.
    cache.checkin(&Arc::from("a"), idle(0, 8), 10.0);
    // A refresh carrying the ping from before the booking is ignored; so is one as new (§4.3).
    for ping in [2.0, 10.0] {
        cache.apply_group(&group(), vec![row(host(Auto, 8, 8, 16, 16).id("a"), ping)]);
        assert_eq!(cache.host("a").map(|h| h.cores_idle), Some(0), "ping {ping} overwrote booking values");
        assert_eq!(take(&cache, &l, None, &saturation(true, false)), None, "ping {ping}");
    }
    // A newer ping wins and re-indexes the host.
    cache.apply_group(&group(), vec![row(host(Auto, 8, 8, 16, 16).id("a"), 11.0)]);
    assert_eq!(cache.host("a").map(|h| h.cores_idle), Some(800));
    assert_eq!(take(&cache, &l, None, &saturation(true, false)).as_deref(), Some("a"));
}

#[test]
fn cache_refresh_drops_missing_hosts() {
    let cache = cache_with(vec![host(Auto, 8, 2, 16, 16).id("a"), host(Auto, 8, 8, 16, 16).id("b")]);
    assert_eq!(cache.host_count(), 2);
    cache.apply_group(&group(), vec![row(host(Auto, 8, 8, 16, 16).id("b"), 2.0)]);
    assert_eq!(cache.host_count(), 1);
    assert!(cache.host("a").is_none());
    let l = layer(1, 1);
    assert_eq!(take(&cache, &l, None, &saturation(true, false)).as_deref(), Some("b"));
    assert_eq!(take(&cache, &l, None, &saturation(true, false)), None);
    // An empty refresh empties the group.
    cache.apply_group(&group(), Vec::new());
    assert_eq!(cache.host_count(), 0);
}

#[test]
fn cache_host_in_two_groups() {
    let other = GroupKey { tag: "gpu".into(), ..group() };
    let cache = new_cache();
    cache.apply_group(&group(), vec![row(host(Auto, 8, 8, 16, 16).id("a"), 1.0)]);
    cache.apply_group(&other, vec![row(host(Auto, 8, 8, 16, 16).id("a"), 1.0)]);
    // Leaving one group keeps the host for the other.
    cache.apply_group(&group(), Vec::new());
    assert_eq!(cache.host_count(), 1);
    let search = Search { layer: &layer(1, 1), job_os: None, caps: ScoreCaps::default(), policy: None, job_remaining_units: None, holds: None };
    assert!(cache.checkout(&[group()], &search, &saturation(true, false)).is_none());
    let got = cache.checkout(&[group(), other.clone()], &search, &saturation(true, false)).map(|c| c.host.id.to_string());
    assert_eq!(got.as_deref(), Some("a"));
}

/// Regression (drain benchmark): a host can pass the predicates yet fail the reservation — a
/// threadable 4 GiB frame on a 64-core, 16 GiB host wants 16 memory-balanced cores and it has
/// 8 idle. First fit used to hand that host out and the layer was abandoned every pass; with
/// the policy in the search it is skipped and the next host is taken.
#[test]
fn checkout_skips_hosts_where_the_reservation_fails() {
    let mut lean = host(ThreadMode::Auto, 64, 8, 16, 16);
    lean.id = Arc::from("lean");
    let mut roomy = host(ThreadMode::Auto, 16, 16, 64, 64);
    roomy.id = Arc::from("roomy");
    let cache = cache_with(vec![lean, roomy]);
    let wide = layer(1, 4);
    let policy = policy();
    assert_eq!(take(&cache, &wide, None, &saturation(true, false)).as_deref(), Some("lean"), "predicates alone pick lean");
    cache.invalidate(&Arc::from("lean"));
    let search = Search { layer: &wide, job_os: None, caps: ScoreCaps::default(), policy: Some(&policy), job_remaining_units: None, holds: None };
    let picked = cache.checkout(&[group()], &search, &saturation(true, false)).map(|c| c.host.id.to_string());
    assert_eq!(picked.as_deref(), Some("roomy"));
}
