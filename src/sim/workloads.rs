//! Deterministic farms for the demo and the benchmarks (fixed-seed RNG, bulk inserts).

use crate::sim::farm::{Farm, HostSpec, JobSpec, LayerSpec, SeedResult};

/// SplitMix64: small, fast, deterministic; enough for seeding farms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
    pub fn chance(&mut self, probability: f64) -> bool {
        (self.next_u64() % 1_000_000) as f64 / 1_000_000.0 < probability
    }
}

/// The organisation every workload uses: facility `lax`, one managed show, `allocs`
/// allocations tagged `alloc0…`, each subscribed with `burst_cores` (whole cores).
pub struct Org {
    pub facility_id: String,
    pub show_id: String,
    pub show_name: String,
    pub dept_id: String,
    pub folder_id: String,
    pub allocs: Vec<(String, String)>,
}

pub fn org(farm: &mut Farm, show: &str, allocs: usize, burst_cores: i64) -> SeedResult<Org> {
    let facility_id = farm.facility("lax")?;
    let dept_id = farm.dept("Lighting")?;
    let show_id = farm.show(show, true)?;
    let folder_id = farm.folder(&show_id, &dept_id, show)?;
    let mut list = Vec::new();
    for i in 0..allocs {
        let tag = format!("alloc{i}");
        let id = farm.alloc(&facility_id, &format!("lax.{tag}"), &tag)?;
        farm.subscription(&show_id, &id, burst_cores * 100, burst_cores * 100)?;
        list.push((id, tag));
    }
    Ok(Org { facility_id, show_id, show_name: show.to_string(), dept_id, folder_id, allocs: list })
}

pub fn job_spec(org: &Org, name: &str, max_cores: i64, layers: Vec<LayerSpec>) -> JobSpec {
    JobSpec {
        name: name.to_string(),
        show_id: org.show_id.clone(),
        show_name: org.show_name.clone(),
        facility_id: org.facility_id.clone(),
        folder_id: org.folder_id.clone(),
        dept_id: org.dept_id.clone(),
        user: "render".into(),
        log_dir: "/tmp/cue-logs".into(),
        priority: 1,
        max_cores: max_cores.min(i64::from(i32::MAX)) as i32,
        paused: false,
        os: None,
        uid: None,
        env: vec![],
        layers,
    }
}

/// Shape of the upstream stress farm (issue 4 "drain"), scaled by `hosts` and `jobs`.
pub struct DrainShape {
    pub hosts: usize,
    pub jobs: usize,
    pub layers_per_job: usize,
    pub frames_per_layer: usize,
    pub manual_tags: usize,
    pub host_name: fn(usize) -> String,
}

pub fn plain_host_name(i: usize) -> String {
    format!("node{i:05}")
}

/// Seeds the drain farm; returns the number of eligible frames (all of them).
pub fn seed_drain(farm: &mut Farm, shape: &DrainShape, seed: u64) -> SeedResult<usize> {
    let mut rng = Rng::new(seed);
    let burst_cores = (90_000 * shape.hosts.max(1200) / 1200) as i64;
    let org = org(farm, "stress", 3, burst_cores)?;
    let manual: Vec<String> = (0..shape.manual_tags).map(|i| format!("manual{i}")).collect();
    let cores_choices: Vec<i64> = (16..=128).step_by(8).collect();
    let mut hosts = Vec::with_capacity(shape.hosts);
    for i in 0..shape.hosts {
        let (alloc_id, alloc_tag) = &org.allocs[i % org.allocs.len()];
        let mut spec = HostSpec::new(&(shape.host_name)(i), alloc_id, alloc_tag, *rng.pick(&cores_choices), rng.range(32, 256));
        let mut tags: Vec<&String> = Vec::new();
        if i < manual.len() {
            tags.push(&manual[i]);
        }
        for _ in 0..rng.range(0, 2) {
            let tag = rng.pick(&manual);
            if !tags.contains(&tag) && tags.len() < 2 {
                tags.push(tag);
            }
        }
        for tag in tags {
            spec = spec.tag(tag, "MANUAL");
        }
        hosts.push(spec);
    }
    for chunk in hosts.chunks(2_000) {
        farm.hosts(chunk)?;
    }
    let mut tag_pool: Vec<String> = manual.clone();
    tag_pool.extend(org.allocs.iter().map(|(_, t)| t.clone()));
    let mut frames = 0;
    for j in 0..shape.jobs {
        let mut layers = Vec::with_capacity(shape.layers_per_job);
        for l in 0..shape.layers_per_job {
            let mut layer = LayerSpec::new(&format!("layer{l}"), &format!("1-{}", shape.frames_per_layer), "");
            let cores = *rng.pick(&[1i64, 2, 4, 8]);
            layer.cores_min = cores * 100;
            layer.threadable = cores > 1;
            layer.mem_min_kib = rng.range(2, 8) * 1_048_576;
            let mut tags: Vec<String> = Vec::new();
            for _ in 0..rng.range(1, 3) {
                let tag = rng.pick(&tag_pool).clone();
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            layer.tags = tags.join(" | ");
            layers.push(layer);
            frames += shape.frames_per_layer;
        }
        farm.job(&job_spec(&org, &format!("stress-job{j:05}"), 10_000_000, layers))?;
    }
    Ok(frames)
}

/// Issue 4 "saturation": demand far over the caps. Returns the frame count.
pub fn seed_saturation(farm: &mut Farm, hosts: usize, jobs: usize, seed: u64) -> SeedResult<usize> {
    let mut rng = Rng::new(seed);
    let org = org(farm, "satur", 3, 150)?;
    let mut specs = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let (alloc_id, alloc_tag) = &org.allocs[i % org.allocs.len()];
        specs.push(HostSpec::new(&plain_host_name(i), alloc_id, alloc_tag, *rng.pick(&[8i64, 16, 32]), rng.range(32, 64)));
    }
    farm.hosts(&specs)?;
    let tags: Vec<String> = org.allocs.iter().map(|(_, t)| t.clone()).collect();
    for j in 0..jobs {
        let layers = (0..2)
            .map(|l| {
                let tag: &String = rng.pick(&tags);
                let mut layer = LayerSpec::new(&format!("layer{l}"), "1-10", tag);
                layer.cores_min = *rng.pick(&[2i64, 4]) * 100;
                layer.threadable = true;
                layer.mem_min_kib = 2 * 1_048_576;
                layer
            })
            .collect();
        farm.job(&job_spec(&org, &format!("satur-job{j:04}"), 2_000, layers))?;
    }
    Ok(jobs * 20)
}

/// The demo farm: two managed shows, a general and a GPU allocation, ~10% GPU hosts, ~10%
/// hosts with the manual tag `sim`, a few ALL/VARIABLE thread-mode hosts, and jobs of varied
/// shapes (render, threadable comp, GPU, tagged sim layers). Host names are the given
/// addresses (the fake RQD listens on them). Returns the number of frames.
pub fn seed_demo(farm: &mut Farm, addresses: &[String], jobs: usize, seed: u64) -> SeedResult<usize> {
    let mut rng = Rng::new(seed);
    let facility_id = farm.facility("lax")?;
    let dept_id = farm.dept("Lighting")?;
    let general = farm.alloc(&facility_id, "lax.general", "general")?;
    let gpu = farm.alloc(&facility_id, "lax.gpu", "gpu")?;
    let mut orgs = Vec::new();
    for show in ["feature", "commercial"] {
        let show_id = farm.show(show, true)?;
        let folder_id = farm.folder(&show_id, &dept_id, show)?;
        farm.subscription(&show_id, &general, 1_000_000, 1_000_000)?;
        farm.subscription(&show_id, &gpu, 100_000, 100_000)?;
        orgs.push(Org { facility_id: facility_id.clone(), show_id, show_name: show.into(), dept_id: dept_id.clone(), folder_id, allocs: vec![] });
    }
    let mut hosts = Vec::with_capacity(addresses.len());
    for (i, address) in addresses.iter().enumerate() {
        let spec = if i % 10 == 9 {
            let mut h = HostSpec::new(address, &gpu, "gpu", *rng.pick(&[16i64, 32]), rng.range(64, 128));
            h.gpus = rng.range(1, 4);
            h.gpu_mem_kib = h.gpus * 16 * 1_048_576;
            h
        } else {
            let mut h = HostSpec::new(address, &general, "general", *rng.pick(&[8i64, 16, 24, 32]), rng.range(32, 128));
            if i % 10 == 3 {
                h = h.tag("sim", "MANUAL");
            }
            h.thread_mode = if i % 17 == 0 { 1 } else if i % 13 == 0 { 2 } else { 0 };
            h
        };
        hosts.push(spec);
    }
    farm.hosts(&hosts)?;
    let mut frames = 0;
    for j in 0..jobs {
        let org = &orgs[j % orgs.len()];
        let mut layers = Vec::new();
        let mut render = LayerSpec::new("render", &format!("1-{}", rng.range(10, 60)), "general");
        render.mem_min_kib = rng.range(2, 6) * 1_048_576;
        layers.push(render);
        if rng.chance(0.6) {
            let mut comp = LayerSpec::new("comp", &format!("1-{}", rng.range(10, 40)), "general");
            comp.threadable = true;
            comp.cores_min = *rng.pick(&[200i64, 400]);
            comp.mem_min_kib = 4 * 1_048_576;
            layers.push(comp);
        }
        if rng.chance(0.3) {
            let mut ml = LayerSpec::new("denoise", &format!("1-{}", rng.range(5, 20)), "gpu");
            ml.gpus_min = 1;
            ml.gpu_mem_min_kib = 8 * 1_048_576;
            layers.push(ml);
        }
        if rng.chance(0.3) {
            let mut sim = LayerSpec::new("sim", &format!("1-{}", rng.range(4, 12)), "sim");
            sim.threadable = true;
            sim.cores_min = 800;
            sim.mem_min_kib = 16 * 1_048_576;
            layers.push(sim);
        }
        for layer in &layers {
            frames += crate::rqd::frameset::FrameSet::parse(&layer.range).map(|s| s.frames().len()).unwrap_or(0);
        }
        let mut spec = job_spec(org, &format!("{}-seq{:02}-shot{:03}", org.show_name, j % 7, j), 20_000, layers);
        spec.priority = rng.range(1, 3) as i32;
        farm.job(&spec)?;
    }
    Ok(frames)
}

// ---------------------------------------------------------------------------------------------
// The `quality` workload (cue-bench): a skewed, contended farm that runs to completion.
// ---------------------------------------------------------------------------------------------

impl Rng {
    /// An Rng keyed by several numbers (seed, job, layer, frame, attempt…): the same key gives
    /// the same sequence whatever else was drawn before.
    pub fn keyed(parts: &[u64]) -> Rng {
        let mut state = 0x5EED_0FC0_FFEE_u64;
        for part in parts {
            state = Rng::new(state ^ part.wrapping_mul(0xA24B_AED4_963E_E407)).next_u64();
        }
        Rng::new(state)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `lo..hi` (reals).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// An exponential draw with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    /// Index drawn with the given (non-negative) weights.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }
}

/// What a quality layer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// 1 core, not threadable, 2 GiB.
    Narrow,
    /// Threadable, `cores` whole cores (half or all of a 32-core host).
    Wide { cores: i64 },
    /// 1 core and 1 GPU.
    Gpu,
    /// A narrow layer attached to the licence limit.
    Licensed,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Narrow => "narrow",
            LayerKind::Wide { .. } => "wide",
            LayerKind::Gpu => "gpu",
            LayerKind::Licensed => "licensed",
        }
    }
    /// Core units a frame of this kind reserves (a non-threadable frame reserves one core).
    pub fn reserved_units(self) -> i64 {
        match self {
            LayerKind::Wide { cores } => cores * 100,
            _ => 100,
        }
    }
    pub fn gpus(self) -> i64 {
        i64::from(self == LayerKind::Gpu)
    }
}

#[derive(Clone, Debug)]
pub struct PlannedLayer {
    pub kind: LayerKind,
    pub frames: i64,
    /// Median run time of this layer's frames, seconds.
    pub median_secs: f64,
}

#[derive(Clone, Debug)]
pub struct PlannedJob {
    /// Seconds after the first possible arrival (the start of the arrival window).
    pub at_secs: f64,
    pub show: usize,
    pub priority: i32,
    pub layers: Vec<PlannedLayer>,
}

/// The quality farm and its work.
#[derive(Clone, Debug)]
pub struct QualityShape {
    pub hosts: usize,
    pub gpu_hosts: usize,
    pub window_secs: f64,
    /// Offered core-seconds per second over the window, as a multiple of the farm's cores.
    pub load: f64,
    pub failure_rate: f64,
    pub licence_slots: i32,
}

pub const QUALITY_HOST_CORES: i64 = 32;
pub const QUALITY_HOST_MEM_GIB: i64 = 128;
/// (name, subscription size as a share of the farm's cores, share of the submitted work).
pub const QUALITY_SHOWS: [(&str, f64, f64); 3] = [("alpha", 0.50, 0.25), ("beta", 0.30, 0.15), ("gamma", 0.20, 0.60)];
pub const QUALITY_PRIORITIES: [i32; 3] = [50, 100, 200];
/// Spread of one frame run around its layer's median (log-normal sigma).
pub const QUALITY_SIGMA: f64 = 0.4;

impl QualityShape {
    /// The default farm (24 hosts, a 120 s arrival window); `shrink` > 1 makes it tiny.
    pub fn new(shrink: usize) -> QualityShape {
        let shrink = shrink.max(1);
        let hosts = (24 / shrink).max(8);
        QualityShape {
            hosts,
            gpu_hosts: hosts.div_ceil(6),
            window_secs: (120 / shrink).max(30) as f64,
            load: 1.3,
            failure_rate: 0.02,
            licence_slots: 6,
        }
    }
    pub fn farm_cores(&self) -> i64 {
        self.hosts as i64 * QUALITY_HOST_CORES
    }
}

impl PlannedLayer {
    fn draw(rng: &mut Rng) -> PlannedLayer {
        // narrow, wide, gpu, licensed
        match rng.weighted(&[0.59, 0.28, 0.08, 0.05]) {
            0 => PlannedLayer { kind: LayerKind::Narrow, frames: rng.range(5, 30), median_secs: rng.uniform(2.0, 8.0) },
            1 => {
                let cores = *rng.pick(&[16i64, 32]);
                PlannedLayer { kind: LayerKind::Wide { cores }, frames: rng.range(2, 6), median_secs: rng.uniform(5.0, 15.0) }
            }
            2 => PlannedLayer { kind: LayerKind::Gpu, frames: rng.range(3, 10), median_secs: rng.uniform(2.0, 6.0) },
            _ => PlannedLayer { kind: LayerKind::Licensed, frames: rng.range(4, 12), median_secs: rng.uniform(2.0, 4.0) },
        }
    }

    /// Expected core-seconds of the layer (mean of the log-normal: median × e^(σ²/2)).
    pub fn core_secs(&self) -> f64 {
        let mean = self.median_secs * (QUALITY_SIGMA * QUALITY_SIGMA / 2.0).exp();
        self.frames as f64 * mean * self.kind.reserved_units() as f64 / 100.0
    }

    /// The layer as the farm stores it.
    pub fn spec(&self, name: &str, tag: &str) -> LayerSpec {
        let mut layer = LayerSpec::new(name, &format!("1-{}", self.frames), tag);
        match self.kind {
            LayerKind::Narrow | LayerKind::Licensed => {}
            LayerKind::Wide { cores } => {
                layer.threadable = true;
                layer.cores_min = cores * 100;
                layer.cores_max = cores * 100;
                layer.mem_min_kib = cores / 2 * 1_048_576;
            }
            LayerKind::Gpu => {
                layer.gpus_min = 1;
                layer.gpu_mem_min_kib = 8 * 1_048_576;
                layer.mem_min_kib = 4 * 1_048_576;
            }
        }
        layer
    }
}

impl PlannedJob {
    fn draw(rng: &mut Rng, at_secs: f64) -> PlannedJob {
        let work: Vec<f64> = QUALITY_SHOWS.iter().map(|s| s.2).collect();
        let show = rng.weighted(&work);
        let priority = *rng.pick(&QUALITY_PRIORITIES);
        let layers = (0..rng.range(1, 3)).map(|_| PlannedLayer::draw(rng)).collect();
        PlannedJob { at_secs, show, priority, layers }
    }
    pub fn frames(&self) -> i64 {
        self.layers.iter().map(|l| l.frames).sum()
    }
}

/// The jobs of a quality run: Poisson arrivals over the window at the rate that offers
/// `shape.load` times the farm's cores, every job drawn from `seed` alone. A small farm sees few
/// jobs, so the draw is repeated (with the next key) until the offered work is within 15 % of
/// the target: a Poisson process conditioned on its total, the same for every policy.
pub fn quality_plan(shape: &QualityShape, seed: u64) -> Vec<PlannedJob> {
    let job_work = |j: &PlannedJob| j.layers.iter().map(PlannedLayer::core_secs).sum::<f64>();
    // The mean work of a job, estimated from a separate stream of the same generator.
    let mut probe = Rng::keyed(&[seed, 1]);
    let samples = 4000;
    let mean_job: f64 = (0..samples).map(|_| job_work(&PlannedJob::draw(&mut probe, 0.0))).sum::<f64>() / samples as f64;
    let target = shape.load * shape.farm_cores() as f64 * shape.window_secs;
    let rate = target / shape.window_secs / mean_job.max(1e-9);
    let mut jobs = Vec::new();
    for attempt in 0..1000u64 {
        let mut rng = Rng::keyed(&[seed, 2, attempt]);
        jobs.clear();
        let mut t = rng.exponential(1.0 / rate);
        while t < shape.window_secs {
            jobs.push(PlannedJob::draw(&mut rng, t));
            t += rng.exponential(1.0 / rate);
        }
        let offered: f64 = jobs.iter().map(job_work).sum();
        if (offered / target - 1.0).abs() <= 0.15 {
            break;
        }
    }
    jobs
}

/// One frame run of a quality job: (seconds it runs, whether it fails), a function of the key
/// alone so every policy sees the same work whatever the launch order.
pub fn quality_run(seed: u64, job: usize, layer: usize, frame: i64, attempt: u32, layer_plan: &PlannedLayer, failure_rate: f64) -> (f64, bool) {
    let mut rng = Rng::keyed(&[seed, 3, job as u64, layer as u64, frame as u64, u64::from(attempt)]);
    let median = layer_plan.median_secs;
    let secs = (median * (QUALITY_SIGMA * rng.normal()).exp()).clamp(0.25 * median, (2.5 * median).min(40.0));
    (secs, rng.chance(failure_rate))
}

/// The organisation of a quality farm.
pub struct QualityOrg {
    /// One per `QUALITY_SHOWS` entry.
    pub shows: Vec<Org>,
    pub alloc_tag: String,
    pub limit_id: String,
}

/// Seeds the quality farm: facility `lax`, one allocation `lax.general`, 32-core / 128 GiB hosts
/// named by `addresses` (the first `shape.gpu_hosts` with 2 GPUs of 16 GiB), three managed shows
/// subscribed at 50/30/20 % of the farm's cores with a burst of all of them, and the licence.
pub fn seed_quality_farm(farm: &mut Farm, shape: &QualityShape, addresses: &[String]) -> SeedResult<QualityOrg> {
    let facility_id = farm.facility("lax")?;
    let dept_id = farm.dept("Lighting")?;
    let tag = "general";
    let alloc = farm.alloc(&facility_id, "lax.general", tag)?;
    let farm_units = shape.farm_cores() * 100;
    let mut shows = Vec::new();
    for (name, size, _) in QUALITY_SHOWS {
        let show_id = farm.show(name, true)?;
        let folder_id = farm.folder(&show_id, &dept_id, name)?;
        farm.subscription(&show_id, &alloc, (size * farm_units as f64).round() as i64, farm_units)?;
        shows.push(Org { facility_id: facility_id.clone(), show_id, show_name: name.into(), dept_id: dept_id.clone(), folder_id, allocs: vec![(alloc.clone(), tag.into())] });
    }
    let hosts: Vec<HostSpec> = addresses
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let mut host = HostSpec::new(address, &alloc, tag, QUALITY_HOST_CORES, QUALITY_HOST_MEM_GIB);
            if i < shape.gpu_hosts {
                host.gpus = 2;
                host.gpu_mem_kib = 2 * 16 * 1_048_576;
            }
            host
        })
        .collect();
    farm.hosts(&hosts)?;
    let limit_id = farm.limit_record("licence", Some(shape.licence_slots))?;
    Ok(QualityOrg { shows, alloc_tag: tag.into(), limit_id })
}
