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
