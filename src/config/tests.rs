use super::*;

const UPSTREAM_SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/compat/upstream-scheduler.yaml"
);
const SPEC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/spec/scheduler-behaviour.md"
);
const OUR_SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/scheduler.yaml");

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str(yaml, "test.yaml", &no_env())
}

fn parse_ok(yaml: &str) -> Config {
    parse(yaml).unwrap_or_else(|e| panic!("{yaml:?} should load: {e}"))
}

fn parse_err(yaml: &str) -> ConfigError {
    match parse(yaml) {
        Ok(c) => panic!("{yaml:?} should fail, got {c:?}"),
        Err(e) => e,
    }
}

// --- shipped files ---------------------------------------------------------------------

#[test]
fn upstream_sample_loads() {
    let text = std::fs::read_to_string(UPSTREAM_SAMPLE).expect("upstream sample present");
    let c = Config::from_yaml_str(&text, UPSTREAM_SAMPLE, &no_env()).unwrap();
    assert!(c.rqd.dry_run_mode);
    assert_eq!(c.database.db_name, "cuebot");
    assert_eq!(c.database.db_user, "cuebot");
    assert_eq!(c.logging.level, "info,sqlx=warn");
    assert_eq!(c.host_cache.monitoring_interval, Duration::from_secs(10));
    assert_eq!(
        c.queue.host_booking_strategy,
        HostBookingStrategy::default()
    );
    assert!(
        c.warnings.iter().any(|w| w.contains("dry_run_mode")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn upstream_sample_with_its_commented_keys_enabled_loads() {
    // Uncomment every `# key: value` line of the upstream sample that sits at a real key's
    // indentation: this exercises the misspelled and obsolete keys it documents.
    let text = std::fs::read_to_string(UPSTREAM_SAMPLE).unwrap();
    let enabled: Vec<String> = text
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            let indent = l.len() - trimmed.len();
            let body = trimmed.strip_prefix("# ").unwrap_or("");
            let is_kv = indent == 2
                && body.contains(": ")
                && !body.contains("  ")
                && body.split(':').next().is_some_and(|k| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            if is_kv {
                format!("  {body}")
            } else {
                l.to_string()
            }
        })
        .collect();
    let c = parse_ok(&enabled.join("\n"));
    assert_eq!(c.queue.host_candidate_attempts_per_layer, 10);
    assert_eq!(c.queue.empty_job_cycles_before_quitting, Some(10));
    assert_eq!(c.database.core_multiplier, Some(100));
    assert_eq!(c.host_cache.monitoring_interval, Duration::from_secs(1));
    let obsolete: Vec<_> = c
        .warnings
        .iter()
        .filter(|w| w.contains("obsolete"))
        .collect();
    assert_eq!(obsolete.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings.iter().any(|w| w.contains("misspelling")));
}

#[test]
fn our_sample_loads_and_equals_the_defaults() {
    let text = std::fs::read_to_string(OUR_SAMPLE).expect("conf/scheduler.yaml present");
    let c = Config::from_yaml_str(&text, OUR_SAMPLE, &no_env()).unwrap();
    assert!(!c.rqd.dry_run_mode);
    assert_eq!(c, Config::default());
    assert!(c.warnings.is_empty());
}

#[test]
fn our_sample_mentions_every_key() {
    let text = std::fs::read_to_string(OUR_SAMPLE).unwrap();
    for path in all_paths() {
        let last = path.rsplit('.').next().unwrap();
        assert!(
            text.contains(&format!("{last}:")),
            "conf/scheduler.yaml lacks `{path}`"
        );
    }
    assert!(text.contains("OPENSCHEDULER_DATABASE__DB_PASS"));
}

#[test]
fn spec_example_loads() {
    let spec = std::fs::read_to_string(SPEC).expect("spec present");
    let section = &spec[spec.find("### 5.6").expect("§5.6")..];
    let start = section.find("```yaml").unwrap() + "```yaml".len();
    let end = start + section[start..].find("```").unwrap();
    let c = parse_ok(&section[start..end]);
    assert_eq!(c.database.db_host, "pg.example.internal");
    assert!(!c.rqd.dry_run_mode);
    assert_eq!(c.queue.selfish_services, vec!["arnold_selfish"]);
    assert_eq!(c.scheduler.facility.as_deref(), Some("lax"));
    assert_eq!(c.scheduler.ignore_tags, vec!["retired_pool"]);
    assert_eq!(
        c.queue.host_booking_strategy,
        HostBookingStrategy::Epvm {
            max_candidates: 500,
            weights: EpvmWeights::default()
        }
    );
    // Everything else in the example is a default.
    let mut expected = Config::default();
    expected.database.db_host = "pg.example.internal".into();
    expected.database.db_name = "cuebot".into();
    expected.database.db_user = "cuebot".into();
    expected.queue.selfish_services = vec!["arnold_selfish".into()];
    expected.queue.host_booking_strategy = c.queue.host_booking_strategy.clone();
    expected.scheduler.facility = Some("lax".into());
    expected.scheduler.ignore_tags = vec!["retired_pool".into()];
    assert_eq!(c, expected);
}

#[test]
fn defaults_are_valid_and_match_the_spec() {
    let d = Config::default();
    d.validate().unwrap();
    assert_eq!(parse_ok(""), d);
    assert_eq!(parse_ok("# only a comment\n"), d);
    assert_eq!(d.queue.memory_stranded_threshold_kib, 2 * 1024 * 1024);
    assert_eq!(d.queue.mem_reserved_min_kib, 256_000);
    assert_eq!(d.host_cache.group_idle_timeout, Duration::from_secs(10_800));
    assert_eq!(d.queue.metrics_port, 9090);
    assert_eq!(d.database.pool_size, 20);
}

#[test]
fn null_sections_and_values_mean_defaults() {
    let yaml = "logging:\ndatabase:\n  db_host:\nqueue:\n  stream:\n  host_booking_strategy:\n\
                host_cache: ~\nscheduler:\n  ignore_tags:\naccounting: null\nsentry_dsn:\n";
    assert_eq!(parse_ok(yaml), Config::default());
}

// --- unknown keys -------------------------------------------------------------------------

#[test]
fn unknown_keys_name_the_key_and_the_nearest_one() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("loging: {}", "loging", Some("logging")),
        ("databse:\n  db_host: x", "databse", Some("database")),
        ("pool_size: 3", "pool_size", Some("database.pool_size")),
        ("zzzzzz: 1", "zzzzzz", None),
        ("queue:\n  worker_thread: 4", "queue.worker_thread", Some("queue.worker_threads")),
        ("queue:\n  db_pass: x", "queue.db_pass", Some("database.db_pass")),
        ("queue:\n  host_candidate_attempt_per_layer: 3", "queue.host_candidate_attempt_per_layer",
         Some("queue.host_candidate_attempts_per_layer")),
        ("queue:\n  stream:\n    job_bufer_size: 3", "queue.stream.job_bufer_size",
         Some("queue.stream.job_buffer_size")),
        ("host_cache:\n  monitoring: 1s", "host_cache.monitoring",
         Some("host_cache.monitoring_interval")),
        ("rqd:\n  dry_run: true", "rqd.dry_run", Some("rqd.dry_run_mode")),
        ("queue:\n  host_booking_strategy:\n    type: epvm\n    max_candidates: 5\n    weights: {core: 1}",
         "queue.host_booking_strategy.weights.core", Some("queue.host_booking_strategy.weights.cores")),
        ("queue:\n  host_booking_strategy:\n    type: saturation\n    core_saturation: true\n    memory_saturation: true\n    extra: 1",
         "queue.host_booking_strategy.extra", None),
        ("scheduler:\n  alloc_tags: [{show: a, tag: b, tga: c}]", "scheduler.alloc_tags[0].tga",
         Some("scheduler.alloc_tags[0].tag")),
        ("1: x", "1", None),
    ];
    for (yaml, key, suggestion) in cases {
        match parse_err(yaml) {
            ConfigError::UnknownKey {
                key: k,
                suggestion: s,
            } => {
                assert_eq!((k.as_str(), s.as_deref()), (*key, *suggestion), "{yaml}");
            }
            other => panic!("{yaml}: expected UnknownKey, got {other:?}"),
        }
    }
}

#[test]
fn unknown_key_message_format() {
    let e = parse_err("queue:\n  worker_thread: 4");
    assert_eq!(
        e.to_string(),
        "unknown configuration key `queue.worker_thread` (did you mean `queue.worker_threads`?)"
    );
    assert_eq!(e.key(), Some("queue.worker_thread"));
}

#[test]
fn live_formerly_dead_keys_are_read() {
    let c = parse_ok(
        "queue:\n  monitor_interval: 7s\n  job_back_off_duration: 1m\n\
         host_cache:\n  checkout_timeout: 20s\ndatabase:\n  core_multiplier: 100\n",
    );
    assert_eq!(c.queue.monitor_interval, Duration::from_secs(7));
    assert_eq!(c.queue.job_back_off_duration, Duration::from_secs(60));
    assert_eq!(c.host_cache.checkout_timeout, Duration::from_secs(20));
    assert_eq!(c.database.core_multiplier, Some(100));
    assert!(c.warnings.is_empty());
}

#[test]
fn obsolete_keys_warn() {
    let c = parse_ok(
        "queue:\n  subscription_recalculation_interval: 3s\n  resource_recalculation_interval: 10s\n",
    );
    assert_eq!(c.warnings.len(), 2);
    assert!(c.warnings[0]
        .contains("obsolete key `queue.subscription_recalculation_interval` is ignored"));
    assert!(c.warnings[1].contains("queue.resource_recalculation_interval"));
}

// --- aliases --------------------------------------------------------------------------

#[test]
fn alias_spellings() {
    // (yaml, Ok((attempts, empty cycles, core multiplier)) or Err(()) for a conflict)
    type Expected = Result<(usize, Option<u64>, u32), ()>;
    #[rustfmt::skip]
    let cases: &[(&str, Expected)] = &[
        ("queue: {host_candidate_attemps_per_layer: 4}", Ok((4, None, 100))),
        ("queue: {host_candidate_attempts_per_layer: 5}", Ok((5, None, 100))),
        ("queue: {host_candidate_attemps_per_layer: 6, host_candidate_attempts_per_layer: 6}", Ok((6, None, 100))),
        ("queue: {host_candidate_attemps_per_layer: 6, host_candidate_attempts_per_layer: 7}", Err(())),
        ("queue: {empty_job_cycles_before_quiting: 3}", Ok((10, Some(3), 100))),
        ("queue: {empty_job_cycles_before_quitting: 4}", Ok((10, Some(4), 100))),
        ("queue: {empty_job_cycles_before_quiting: 4, empty_job_cycles_before_quitting: 4}", Ok((10, Some(4), 100))),
        ("queue: {empty_job_cycles_before_quiting: 3, empty_job_cycles_before_quitting: 4}", Err(())),
        ("database: {core_multiplier: 50}", Ok((10, None, 50))),
        ("queue: {core_multiplier: 50}", Ok((10, None, 50))),
        ("database: {core_multiplier: 50}\nqueue: {core_multiplier: 50}", Ok((10, None, 50))),
        ("database: {core_multiplier: 50}\nqueue: {core_multiplier: 100}", Err(())),
    ];
    for (yaml, expected) in cases {
        match (parse(yaml), expected) {
            (Ok(c), Ok((a, e, m))) => {
                let q = &c.queue;
                assert_eq!(
                    (
                        q.host_candidate_attempts_per_layer,
                        q.empty_job_cycles_before_quitting,
                        q.core_multiplier
                    ),
                    (*a, *e, *m),
                    "{yaml}"
                );
            }
            (Err(ConfigError::Conflict { message }), Err(())) => {
                assert!(message.contains("differ"), "{yaml}: {message}");
            }
            (got, _) => panic!("{yaml}: unexpected {got:?}"),
        }
    }
}

#[test]
fn programmatic_core_multiplier_mismatch_is_a_conflict() {
    let mut c = Config::default();
    c.database.core_multiplier = Some(10);
    assert!(matches!(c.validate(), Err(ConfigError::Conflict { .. })));
}

// --- formats ------------------------------------------------------------------------

#[test]
fn durations() {
    #[rustfmt::skip]
    let ok: &[(&str, Duration)] = &[
        ("500ms", Duration::from_millis(500)),
        ("5s", Duration::from_secs(5)),
        ("2m", Duration::from_secs(120)),
        ("3h", Duration::from_secs(3 * 3600)),
        ("1d", Duration::from_secs(86_400)),
        ("1h 30m", Duration::from_secs(5400)),
        ("1h30m", Duration::from_secs(5400)),
        ("10800s", Duration::from_secs(10_800)),
        (" 5 s ", Duration::from_secs(5)),
        ("0s", Duration::ZERO),
        ("250us", Duration::from_micros(250)),
        ("2 minutes", Duration::from_secs(120)),
        ("1m 1s 1ms", Duration::from_millis(61_001)),
    ];
    for (text, expected) in ok {
        assert_eq!(parse_duration(text), Ok(*expected), "{text}");
    }
    for bad in [
        "",
        "   ",
        "5",
        "10800",
        "1.5s",
        "-5s",
        "5x",
        "s",
        "5s3",
        "5 s 3",
        "1h,30m",
        "99999999999999999999999d",
        "5S",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
    }
    assert!(parse_duration("5").unwrap_err().contains("no unit"));
}

#[test]
fn byte_sizes() {
    #[rustfmt::skip]
    let ok: &[(&str, u64)] = &[
        ("2GiB", 2 << 30),
        ("250MiB", 250 << 20),
        ("2 GiB", 2 << 30),
        ("4GB", 4_000_000_000),
        ("512KiB", 512 << 10),
        ("1024B", 1024),
        ("1kb", 1000),
        ("1.5GiB", 3 << 29),
        ("1TiB", 1 << 40),
        ("0", 0),
        ("0B", 0),
    ];
    for (text, expected) in ok {
        assert_eq!(parse_byte_size(text), Ok(*expected), "{text}");
    }
    for bad in [
        "",
        "1024",
        "2 G",
        "2GiBs",
        "GiB",
        "-1GiB",
        "1..5GiB",
        "2GiB 1MiB",
        "99999999999999TiB",
    ] {
        assert!(parse_byte_size(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn sizes_are_stored_in_kib() {
    let c = parse_ok(
        "queue: {memory_stranded_threshold: 1GiB, mem_reserved_min: 0}\n\
         host_cache: {memory_key_divisor: 4GB}",
    );
    assert_eq!(c.queue.memory_stranded_threshold_kib, 1 << 20);
    assert_eq!(c.queue.mem_reserved_min_kib, 0);
    assert_eq!(c.host_cache.memory_key_divisor_kib, 3_906_250);
}

// --- typed values ---------------------------------------------------------------------

#[test]
fn bad_values_name_the_key() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        ("queue: {cluster_empty_sleep: 30}", "queue.cluster_empty_sleep", "expected a duration like `5s`"),
        ("queue: {cluster_empty_sleep: soon}", "queue.cluster_empty_sleep", "expected a duration like `5s`"),
        ("queue: {cluster_empty_sleep: [1s]}", "queue.cluster_empty_sleep", "got a list"),
        ("queue: {worker_threads: -1}", "queue.worker_threads", "must not be negative"),
        ("queue: {worker_threads: \"-2\"}", "queue.worker_threads", "must not be negative"),
        ("queue: {worker_threads: 2.5}", "queue.worker_threads", "whole number"),
        ("queue: {worker_threads: many}", "queue.worker_threads", "whole number"),
        ("queue: {worker_threads: 0}", "queue.worker_threads", "at least 1"),
        ("database: {db_port: 70000}", "database.db_port", "out of range"),
        ("database: {db_port: 0}", "database.db_port", "must not be 0"),
        ("database: {pool_size: 1}", "database.pool_size", "at least 2"),
        ("database: {db_host: [a, b]}", "database.db_host", "expected a string"),
        ("database: {db_host: ''}", "database.db_host", "must not be empty"),
        ("rqd: {dry_run_mode: maybe}", "rqd.dry_run_mode", "expected true or false"),
        ("rqd: {dispatch_threads: 257}", "rqd.dispatch_threads", "between 1 and 256"),
        ("rqd: {dispatch_threads: 0}", "rqd.dispatch_threads", "between 1 and 256"),
        ("rqd: {launch_timeout: 0s}", "rqd.launch_timeout", "longer than zero"),
        ("rqd: 5", "rqd", "expected a mapping"),
        ("queue: {memory_stranded_threshold: 2048}", "queue.memory_stranded_threshold", "bare number"),
        ("queue: {memory_stranded_threshold: 2 gigs}", "queue.memory_stranded_threshold", "unknown unit"),
        ("queue: {dispatch_frames_per_layer_limit: 1001}", "queue.dispatch_frames_per_layer_limit", "between 1 and 1000"),
        ("queue: {max_jobs_per_cluster_pass: 10001}", "queue.max_jobs_per_cluster_pass", "between 1 and 10000"),
        ("queue: {manual_tags_chunk_size: 0}", "queue.manual_tags_chunk_size", "at least 1"),
        ("queue: {hostname_tags_chunk_size: 0}", "queue.hostname_tags_chunk_size", "at least 1"),
        ("queue: {stream: {job_buffer_size: 0}}", "queue.stream.job_buffer_size", "at least 1"),
        ("queue: {core_multiplier: 0}", "queue.core_multiplier", "greater than 0"),
        ("queue: {frame_memory_soft_limit: 3.0}", "queue.frame_memory_soft_limit", "must not exceed"),
        ("queue: {frame_memory_hard_limit: .nan}", "queue.frame_memory_hard_limit", "finite"),
        ("queue: {frame_memory_hard_limit: big}", "queue.frame_memory_hard_limit", "expected a number"),
        ("queue: {selfish_services: {a: 1}}", "queue.selfish_services", "list of strings"),
        ("queue: {selfish_services: [a, [b]]}", "queue.selfish_services", "entry 1"),
        ("queue: {active_scan_interval: 0ms}", "queue.active_scan_interval", "longer than zero"),
        ("host_cache: {memory_key_divisor: 0}", "host_cache.memory_key_divisor", "at least 1KiB"),
        ("host_cache: {memory_key_divisor: 1000B}", "host_cache.memory_key_divisor", "at least 1KiB"),
        ("host_cache: {concurrent_groups: 0}", "host_cache.concurrent_groups", "at least 1"),
        ("logging: {level: ' '}", "logging.level", "must not be empty"),
        ("logging: {file_appender: true, path: ''}", "logging.path", "must not be empty"),
        ("scheduler: {alloc_tags: [showonly]}", "scheduler.alloc_tags", "Invalid format: expected 'show:tag', got 'showonly'"),
        ("scheduler: {alloc_tags: ['a:b:c']}", "scheduler.alloc_tags", "Invalid format"),
        ("scheduler: {alloc_tags: [' :b']}", "scheduler.alloc_tags", "Invalid format"),
        ("scheduler: {alloc_tags: [{show: a}]}", "scheduler.alloc_tags[0]", "needs a non-empty `tag`"),
        ("scheduler: {alloc_tags: [3]}", "scheduler.alloc_tags", "entry 0"),
        ("accounting: {managed_shows_ttl: 30}", "accounting.managed_shows_ttl", "bare number"),
        ("scheduler: {policy: clever}", "scheduler.policy", "must be `legacy` or `smart`"),
        ("scheduler: {policy: ''}", "scheduler.policy", "must be `legacy` or `smart`"),
        ("scheduler: {fair_share_tolerance: 1.5}", "scheduler.fair_share_tolerance", "1"),
        ("scheduler: {reservations_max: -1}", "scheduler.reservations_max", ""),
    ];
    for (yaml, key, fragment) in cases {
        let e = parse_err(yaml);
        assert_eq!(e.key(), Some(*key), "{yaml}: {e}");
        assert!(matches!(e, ConfigError::BadValue { .. }), "{yaml}: {e:?}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("bad value for `{key}`: ")),
            "{shown}"
        );
        assert!(
            shown.contains(fragment),
            "{yaml}: `{shown}` lacks `{fragment}`"
        );
        assert!(!shown.contains('\n'));
    }
}

#[test]
fn lenient_scalar_conversions() {
    let c = parse_ok(
        "database: {db_pass: 12345, db_port: \"5433\", pool_size: '8'}\n\
         rqd: {dry_run_mode: 'yes'}\nqueue: {frame_memory_hard_limit: 3, frame_memory_soft_limit: '2.5'}\n\
         scheduler: {facility: '', ignore_tags: 'a, b,,c'}\nlogging: {level: debug}",
    );
    assert_eq!(c.database.db_pass, "12345");
    assert_eq!(c.database.db_port, 5433);
    assert_eq!(c.database.pool_size, 8);
    assert!(c.rqd.dry_run_mode);
    assert_eq!(c.queue.frame_memory_hard_limit, 3.0);
    assert_eq!(c.queue.frame_memory_soft_limit, 2.5);
    assert_eq!(c.scheduler.facility, None);
    assert_eq!(c.scheduler.ignore_tags, vec!["a", "b", "c"]);
    assert_eq!(c.logging.level, "debug");
}

#[test]
fn alloc_tag_forms() {
    let want = vec![
        AllocTag {
            show: "showa".into(),
            tag: "general".into(),
        },
        AllocTag {
            show: "showb".into(),
            tag: "fx".into(),
        },
    ];
    for yaml in [
        "scheduler: {alloc_tags: [{show: showa, tag: general}, {show: showb, tag: fx}]}",
        "scheduler: {alloc_tags: ['showa:general', ' showb : fx ']}",
        "scheduler: {alloc_tags: [{show: showa, tag: general}, 'showb:fx']}",
        "scheduler: {alloc_tags: 'showa:general,showb:fx'}",
    ] {
        assert_eq!(parse_ok(yaml).scheduler.alloc_tags, want, "{yaml}");
    }
    assert_eq!(
        "x:y".parse::<AllocTag>().unwrap(),
        AllocTag {
            show: "x".into(),
            tag: "y".into()
        }
    );
}

#[test]
fn yaml_errors() {
    for yaml in [
        "queue: [",
        "- a\n- b",
        "42",
        "a: 1\na: 2",
        "queue: {x: *nope}",
    ] {
        match parse(yaml) {
            Err(ConfigError::Yaml { path, message }) => {
                assert_eq!(path, "test.yaml");
                assert!(!message.is_empty());
            }
            other => panic!("{yaml:?}: expected a YAML error, got {other:?}"),
        }
    }
}

#[test]
fn merge_keys_are_applied() {
    let c = parse_ok(
        "logging: &l {level: warn}\nqueue:\n  stream: &s {cluster_buffer_size: 5}\n  \
         host_booking_strategy:\n    type: epvm\n    max_candidates: 9\n    weights:\n      <<: {mem: 4}\n",
    );
    assert_eq!(c.logging.level, "warn");
    assert_eq!(c.queue.stream.cluster_buffer_size, 5);
    match c.queue.host_booking_strategy {
        HostBookingStrategy::Epvm { weights, .. } => assert_eq!(weights.mem, 4.0),
        other => panic!("{other:?}"),
    }
}

// --- host_booking_strategy --------------------------------------------------------------

#[test]
fn strategy_forms() {
    let epvm = |max_candidates, weights| HostBookingStrategy::Epvm {
        max_candidates,
        weights,
    };
    let sat = |core_saturation, memory_saturation| HostBookingStrategy::Saturation {
        core_saturation,
        memory_saturation,
    };
    let custom = EpvmWeights {
        mem: 3.0,
        gpus: 0.0,
        ..EpvmWeights::default()
    };
    #[rustfmt::skip]
    let ok: &[(&str, HostBookingStrategy)] = &[
        ("{type: saturation, core_saturation: false, memory_saturation: true}", sat(false, true)),
        ("{type: Saturation, core_saturation: true, memory_saturation: true}", sat(true, true)),
        ("{type: epvm, max_candidates: 500, weights: {}}", epvm(500, EpvmWeights::default())),
        ("{type: epvm, max_candidates: 7, weights: }", epvm(7, EpvmWeights::default())),
        ("{type: epvm, max_candidates: 500, weights: {mem: 3, gpus: 0.0}}", epvm(500, custom)),
        ("{core_saturation: false, memory_saturation: true}", sat(false, true)),
        ("{memory_saturation: true}", sat(true, true)),
        ("{core_saturation: false}", sat(false, false)),
        ("{}", sat(true, false)),
        ("", sat(true, false)),
    ];
    for (form, expected) in ok {
        let c = parse_ok(&format!("queue:\n  host_booking_strategy: {form}\n"));
        assert_eq!(&c.queue.host_booking_strategy, expected, "{form}");
    }
    // (form, error key, fragment)
    #[rustfmt::skip]
    let bad: &[(&str, &str, &str)] = &[
        ("{type: bestfit}", "queue.host_booking_strategy.type", "expected `saturation` or `epvm`"),
        ("{type: 3}", "queue.host_booking_strategy.type", "expected `saturation` or `epvm`"),
        ("{type: , core_saturation: true}", "queue.host_booking_strategy.type", "expected"),
        ("{type: saturation, core_saturation: true}", "queue.host_booking_strategy", "needs both"),
        ("{type: saturation}", "queue.host_booking_strategy", "needs both"),
        ("{type: epvm, weights: {}}", "queue.host_booking_strategy", "needs `max_candidates`"),
        ("{type: epvm, max_candidates: 5}", "queue.host_booking_strategy", "needs `max_candidates` and `weights`"),
        ("{type: epvm, max_candidates: 0, weights: {}}", "queue.host_booking_strategy.max_candidates", "at least 1"),
        ("{type: epvm, max_candidates: 5, weights: {mem: -1}}", "queue.host_booking_strategy.weights.mem", "at least 0"),
        ("{type: epvm, max_candidates: 5, weights: {mem: .inf}}", "queue.host_booking_strategy.weights.mem", "finite"),
        ("{type: epvm, max_candidates: 5, weights: {mem: x}}", "queue.host_booking_strategy.weights.mem", "expected a number"),
        ("{type: epvm, max_candidates: 5, weights: [1]}", "queue.host_booking_strategy.weights", "expected a mapping"),
        ("{type: epvm, max_candidates: 5, weights: {}, core_saturation: true}",
         "queue.host_booking_strategy.core_saturation", "only applies with `type: saturation`"),
        ("{type: saturation, core_saturation: true, memory_saturation: true, max_candidates: 3}",
         "queue.host_booking_strategy.max_candidates", "only applies with `type: epvm`"),
        ("{max_candidates: 3, weights: {}}", "queue.host_booking_strategy.max_candidates", "only applies with `type: epvm`"),
        ("saturation", "queue.host_booking_strategy", "expected a mapping"),
        ("{core_saturation: sometimes}", "queue.host_booking_strategy.core_saturation", "true or false"),
    ];
    for (form, key, fragment) in bad {
        let e = parse_err(&format!("queue:\n  host_booking_strategy: {form}\n"));
        assert_eq!(e.key(), Some(*key), "{form}: {e}");
        assert!(e.to_string().contains(fragment), "{form}: {e}");
    }
    match parse_err("queue:\n  host_booking_strategy: {type: epvm, max_candidates: 5, weights: {}, colour: red}") {
        ConfigError::UnknownKey { key, .. } => assert_eq!(key, "queue.host_booking_strategy.colour"),
        other => panic!("{other:?}"),
    }
}

// --- environment -------------------------------------------------------------------------

#[test]
fn env_password_both_spellings() {
    for var in [
        "OPENSCHEDULER_database.db_pass",
        "OPENSCHEDULER_DATABASE__DB_PASS",
        "openscheduler_Database__Db_Pass",
    ] {
        let e = env(&[(var, "s3cr3t from env")]);
        let c = Config::from_yaml_str("database: {db_pass: file-pass}", "t", &e).unwrap();
        assert_eq!(c.database.db_pass, "s3cr3t from env", "{var}");
    }
    // Both spellings set: equal is fine, different is a conflict.
    let same = env(&[
        ("OPENSCHEDULER_database.db_pass", "x"),
        ("OPENSCHEDULER_DATABASE__DB_PASS", "x"),
    ]);
    assert_eq!(
        Config::from_yaml_str("", "t", &same)
            .unwrap()
            .database
            .db_pass,
        "x"
    );
    let differ = env(&[
        ("OPENSCHEDULER_database.db_pass", "secretA"),
        ("OPENSCHEDULER_DATABASE__DB_PASS", "secretB"),
    ]);
    match Config::from_yaml_str("", "t", &differ) {
        Err(ConfigError::Conflict { message }) => {
            assert!(message.contains("database.db_pass"));
            assert!(!message.contains("secret"), "values leaked: {message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_overrides_are_typed() {
    let e = env(&[
        ("OPENSCHEDULER_SENTRY_DSN", "https://k@sentry.example/1"),
        ("OPENSCHEDULER_RQD__DRY_RUN_MODE", "1"),
        ("OPENSCHEDULER_QUEUE__WORKER_THREADS", "9"),
        ("OPENSCHEDULER_queue.cluster_empty_sleep", "1m"),
        ("OPENSCHEDULER_QUEUE__SELFISH_SERVICES", "a,b"),
        ("OPENSCHEDULER_QUEUE__MEMORY_STRANDED_THRESHOLD", "1GiB"),
        ("OPENSCHEDULER_QUEUE__STREAM__JOB_BUFFER_SIZE", "4"),
        (
            "OPENSCHEDULER_QUEUE__HOST_BOOKING_STRATEGY__WEIGHTS__MEM",
            "5",
        ),
        ("OPENSCHEDULER_SCHEDULER__ALLOC_TAGS", "s:t"),
        ("OPENSCHEDULER_SCHEDULER__FACILITY", "lax"),
        ("PATH", "/usr/bin"),
        ("OPENCUE_SCHEDULER_CONFIG", "/nonexistent"),
    ]);
    let yaml = "rqd: {dry_run_mode: false}\nqueue:\n  worker_threads: 2\n  host_booking_strategy:\n    \
                type: epvm\n    max_candidates: 5\n    weights: {}\n";
    let c = Config::from_yaml_str(yaml, "t", &e).unwrap();
    assert_eq!(c.sentry_dsn.as_deref(), Some("https://k@sentry.example/1"));
    assert!(c.rqd.dry_run_mode);
    assert_eq!(c.queue.worker_threads, 9);
    assert_eq!(c.queue.cluster_empty_sleep, Duration::from_secs(60));
    assert_eq!(c.queue.selfish_services, vec!["a", "b"]);
    assert_eq!(c.queue.memory_stranded_threshold_kib, 1 << 20);
    assert_eq!(c.queue.stream.job_buffer_size, 4);
    assert_eq!(
        c.scheduler.alloc_tags,
        vec![AllocTag {
            show: "s".into(),
            tag: "t".into()
        }]
    );
    assert_eq!(c.scheduler.facility.as_deref(), Some("lax"));
    match &c.queue.host_booking_strategy {
        HostBookingStrategy::Epvm { weights, .. } => assert_eq!(weights.mem, 5.0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_alias_replaces_the_file_spelling() {
    let yaml =
        "queue: {host_candidate_attemps_per_layer: 10, empty_job_cycles_before_quiting: 3}";
    let e = env(&[
        (
            "OPENSCHEDULER_QUEUE__HOST_CANDIDATE_ATTEMPTS_PER_LAYER",
            "4",
        ),
        ("OPENSCHEDULER_QUEUE__EMPTY_JOB_CYCLES_BEFORE_QUITTING", "8"),
        ("OPENSCHEDULER_DATABASE__CORE_MULTIPLIER", "100"),
    ]);
    let c = Config::from_yaml_str(yaml, "t", &e).unwrap();
    assert_eq!(c.queue.host_candidate_attempts_per_layer, 4);
    assert_eq!(c.queue.empty_job_cycles_before_quitting, Some(8));
    let e = env(&[("OPENSCHEDULER_DATABASE__CORE_MULTIPLIER", "50")]);
    let c = Config::from_yaml_str("queue: {core_multiplier: 100}", "t", &e).unwrap();
    assert_eq!(c.queue.core_multiplier, 50);
}

#[test]
fn env_errors() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        // (variable, value, expected key)
        ("OPENSCHEDULER_DATABASE__DB_PASSS", "x", "database.db_passs (from OPENSCHEDULER_DATABASE__DB_PASSS)"),
        ("OPENSCHEDULER_NOPE__X", "x", "nope (from OPENSCHEDULER_NOPE__X)"),
        ("OPENSCHEDULER_DATABASE_DB_PASS", "x", "database_db_pass (from OPENSCHEDULER_DATABASE_DB_PASS)"),
        ("OPENSCHEDULER_DATABASE__", "x", "database__ (from OPENSCHEDULER_DATABASE__)"),
    ];
    for (var, value, key) in cases {
        match Config::from_yaml_str("", "t", &env(&[(var, value)])) {
            Err(ConfigError::UnknownKey { key: k, .. }) => assert_eq!(k, *key),
            other => panic!("{var}: {other:?}"),
        }
    }
    match Config::from_yaml_str("", "t", &env(&[("OPENSCHEDULER_DATABASE_DB_PASS", "x")])) {
        Err(ConfigError::UnknownKey { suggestion, .. }) => {
            assert_eq!(suggestion.as_deref(), Some("database.db_pass"))
        }
        other => panic!("{other:?}"),
    }
    let e = Config::from_yaml_str("", "t", &env(&[("OPENSCHEDULER_DATABASE__DB_PORT", "big")]))
        .unwrap_err();
    assert_eq!(e.key(), Some("database.db_port"));
    assert!(
        e.to_string().contains("OPENSCHEDULER_DATABASE__DB_PORT"),
        "{e}"
    );
    let e = Config::from_yaml_str("", "t", &env(&[("OPENSCHEDULER_QUEUE", "x")])).unwrap_err();
    assert_eq!(e.key(), Some("queue"));
    let e = Config::from_yaml_str(
        "queue: 3",
        "t",
        &env(&[("OPENSCHEDULER_QUEUE__WORKER_THREADS", "2")]),
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("queue"));
}

// --- secrets -----------------------------------------------------------------------------

#[test]
fn password_never_shown() {
    let secret = "Sup3r-S3cret";
    let e = env(&[("OPENSCHEDULER_DATABASE__DB_PASS", secret)]);
    let c = Config::from_yaml_str("", "t", &e).unwrap();
    assert_eq!(c.database.db_pass, secret);
    assert!(!format!("{c:?}").contains(secret));
    assert!(!format!("{c:#?}").contains(secret));
    assert!(!format!("{:?}", c.database).contains(secret));
    assert!(format!("{:?}", c.database).contains("<redacted>"));
    let c = parse_ok(&format!("database: {{db_pass: {secret}}}"));
    assert!(!format!("{c:?}").contains(secret));
    // Errors about the password never echo it, even when the colon is forgotten.
    let err = parse(&format!("database:\n  db_pass {secret}\n")).unwrap_err();
    assert_eq!(err.key(), Some("database"));
    assert!(!err.to_string().contains(secret), "{err}");
    for yaml in [
        format!("database: {{db_pass: [{secret}]}}"),
        format!("database: {{db_pass: {{{secret}: 1}}}}"),
    ] {
        let err = parse(&yaml).unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
    }
}

#[test]
fn connection_string_quoting() {
    let mut db = DatabaseConfig::default();
    assert_eq!(
        db.connection_string(),
        "host=localhost port=5432 dbname=test user=postgres password=password \
         options='-c timezone=UTC'"
    );
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("simple", "simple"),
        ("", "''"),
        ("with space", "'with space'"),
        ("it's", r"'it\'s'"),
        (r"back\slash", r"'back\\slash'"),
        ("a=b", "'a=b'"),
        ("tab\there", "'tab\there'"),
    ];
    for (pass, quoted) in cases {
        db.db_pass = pass.to_string();
        let s = db.connection_string();
        assert!(
            s.contains(&format!(" password={quoted} options=")),
            "{pass:?}: {s}"
        );
    }
    db.db_user = "o'neil".into();
    assert!(db.connection_string().contains(r"user='o\'neil'"));
}

// --- loading -----------------------------------------------------------------------------

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cue-scheduler-config-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_resolution_order() {
    let dir = temp_dir("load");
    let explicit = dir.join("explicit.yaml");
    std::fs::write(&explicit, "queue: {worker_threads: 1}").unwrap();
    let by_env = dir.join("env.yaml");
    std::fs::write(&by_env, "queue: {worker_threads: 2}").unwrap();
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".local/share")).unwrap();
    std::fs::write(
        home.join(".local/share/scheduler.yaml"),
        "queue: {worker_threads: 3}",
    )
    .unwrap();
    let home_s = home.display().to_string();
    let by_env_s = by_env.display().to_string();

    let full = env(&[("HOME", &home_s), (CONFIG_ENV, &by_env_s)]);
    let (c, p) = Config::load(Some(&explicit), &full).unwrap();
    assert_eq!(
        (c.queue.worker_threads, p),
        (1, Some(std::fs::canonicalize(&explicit).unwrap()))
    );
    let (c, _) = Config::load(None, &full).unwrap();
    assert_eq!(c.queue.worker_threads, 2);
    let (c, p) = Config::load(None, &env(&[("HOME", &home_s)])).unwrap();
    assert_eq!(c.queue.worker_threads, 3);
    assert!(p.unwrap().ends_with(".local/share/scheduler.yaml"));
    let (c, p) = Config::load(
        None,
        &env(&[("HOME", &dir.join("nohome").display().to_string())]),
    )
    .unwrap();
    assert_eq!((c, p), (Config::default(), None));
    let (c, p) = Config::load(None, &no_env()).unwrap();
    assert_eq!((c, p), (Config::default(), None));

    // Env overrides apply to a loaded file too.
    let with_override = env(&[
        (CONFIG_ENV, &by_env_s),
        ("OPENSCHEDULER_QUEUE__WORKER_THREADS", "7"),
    ]);
    assert_eq!(
        Config::load(None, &with_override)
            .unwrap()
            .0
            .queue
            .worker_threads,
        7
    );

    // A named file must exist.
    let missing = dir.join("missing.yaml").display().to_string();
    for result in [
        Config::load(None, &env(&[(CONFIG_ENV, &missing), ("HOME", &home_s)])),
        Config::load(Some(Path::new(&missing)), &no_env()),
        Config::load(None, &env(&[(CONFIG_ENV, "")])),
    ] {
        match result {
            Err(e @ ConfigError::Io { .. }) => {
                assert!(e.to_string().starts_with("cannot read"))
            }
            other => panic!("{other:?}"),
        }
    }
    // Errors in the file name the file.
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "queue: [").unwrap();
    match Config::load(Some(&broken), &no_env()) {
        Err(ConfigError::Yaml { path, .. }) => assert!(path.ends_with("broken.yaml")),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn error_display_is_one_line() {
    let errors = [
        ConfigError::Io {
            path: "p".into(),
            message: "a\nb".into(),
        },
        ConfigError::Yaml {
            path: "p".into(),
            message: "a\nb".into(),
        },
        ConfigError::UnknownKey {
            key: "queue.foo".into(),
            suggestion: Some("queue.bar".into()),
        },
        ConfigError::UnknownKey {
            key: "queue.foo".into(),
            suggestion: None,
        },
        ConfigError::BadValue {
            key: "k".into(),
            message: "m\nn".into(),
        },
        ConfigError::Conflict {
            message: "c\nd".into(),
        },
    ];
    for e in &errors {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    assert_eq!(
        errors[2].to_string(),
        "unknown configuration key `queue.foo` (did you mean `queue.bar`?)"
    );
    assert_eq!(errors[4].to_string(), "bad value for `k`: m n");
    assert_eq!(errors[0].key(), None);
    assert_eq!(errors[4].key(), Some("k"));
    let _: &dyn std::error::Error = &errors[0];
}
// --- ranges and hostile input (issue 9 item 5) -----------------------------------------------

/// Sets `path` to `value` through its environment variable, over a file that selects E-PVM (so
/// the strategy's keys are read); returns the error, which must be a `BadValue`.
fn env_bad_value(path: &str, value: &str) -> ConfigError {
    let yaml = "queue:\n  host_booking_strategy: {type: epvm, max_candidates: 5, weights: {}}\n";
    let var = format!("OPENSCHEDULER_{}", path.replace('.', "__").to_uppercase());
    match Config::from_yaml_str(yaml, "t", &env(&[(&var, value)])) {
        Err(e @ ConfigError::BadValue { .. }) => e,
        other => panic!("{path} = {value:?} should be refused, got {other:?}"),
    }
}

#[test]
fn every_numeric_key_has_a_range_that_validate_checks() {
    let c = parse_ok(
        "database: {core_multiplier: 100}\nqueue:\n  empty_job_cycles_before_quitting: 3\n  \
         host_booking_strategy: {type: epvm, max_candidates: 5, weights: {}}\n",
    );
    let checked: Vec<&str> = c.numbers().iter().map(|(k, _)| *k).collect();
    let aliases = [keys::ATTEMPTS_MISSPELLED, "queue.empty_job_cycles_before_quiting"];
    for k in keys::KEYS.iter().filter(|k| !aliases.contains(&k.path)) {
        let ranged = k.range != keys::Range::Any;
        assert_eq!(ranged, checked.contains(&k.path), "{}: range {:?}", k.path, k.range);
    }
    assert!(checked.iter().all(|k| keys::find(k).is_some()));
    // Every default is inside its range, and every range is documented in the sample.
    Config::default().validate().unwrap();
    let sample = std::fs::read_to_string(OUR_SAMPLE).unwrap();
    for k in keys::KEYS.iter().filter(|k| !aliases.contains(&k.path)) {
        if let Some(range) = keys::describe_range(k.range) {
            let line = format!("Range: {range}.");
            assert!(sample.contains(&line), "conf/scheduler.yaml lacks `{line}` for {}", k.path);
        }
    }
}

#[test]
fn values_just_outside_each_range_are_refused_naming_the_key() {
    use keys::Range;
    let mut tried = 0;
    for k in keys::KEYS {
        let (low, high): (Option<String>, Option<String>) = match k.range {
            Range::Any => continue,
            Range::Int(min, max) => (min.checked_sub(1).map(|v| v.to_string()), Some((max + 1).to_string())),
            Range::Port => (Some("0".into()), Some("65536".into())),
            Range::Duration(min, max) => {
                ((!min.is_zero()).then(|| "0s".to_string()), Some(format!("{}ms", max.as_millis() + 1)))
            }
            Range::Kib(min, max) => ((min > 0).then(|| "0B".to_string()), Some(format!("{}KiB", max + 1))),
            Range::Float { min, max, .. } => (Some(format!("{}", min - 1.0)), Some(format!("{}", max + 1.0))),
        };
        let canonical = match k.path {
            keys::ATTEMPTS_MISSPELLED => "queue.host_candidate_attempts_per_layer",
            "queue.empty_job_cycles_before_quiting" => "queue.empty_job_cycles_before_quitting",
            path => path,
        };
        for value in [low, high].into_iter().flatten() {
            let e = env_bad_value(k.path, &value);
            assert_eq!(e.key(), Some(canonical), "{} = {value}: {e}", k.path);
            tried += 1;
        }
    }
    assert!(tried > 60, "{tried}");
    // Inside the range, at both ends, is fine.
    let c = parse_ok("queue: {worker_threads: 256, cluster_empty_sleep: 1d, job_back_off_duration: 0s}");
    assert_eq!((c.queue.worker_threads, c.queue.cluster_empty_sleep), (256, Duration::from_secs(86_400)));
}

#[test]
fn hostile_values_from_the_campaign_are_refused() {
    // Durations near u64::MAX seconds, for every duration key: refused at load, not left to
    // overflow an `Instant` in some thread later.
    let durations: Vec<&str> =
        keys::KEYS.iter().filter(|k| matches!(k.range, keys::Range::Duration(..))).map(|k| k.path).collect();
    assert!(durations.len() >= 17, "{durations:?}");
    for path in durations {
        for value in ["18446744073709551615s", "18446744073709551615ms", "213503982334601d", "99999999999999999999h"] {
            assert_eq!(env_bad_value(path, value).key(), Some(path), "{path} = {value}");
        }
    }
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("queue: {worker_threads: 100000}", "queue.worker_threads"),
        ("queue: {worker_threads: 18446744073709551615}", "queue.worker_threads"),
        ("queue: {worker_threads: '18446744073709551616'}", "queue.worker_threads"),
        ("queue: {stream: {cluster_buffer_size: 18446744073709551615}}", "queue.stream.cluster_buffer_size"),
        ("queue: {stream: {job_buffer_size: 18446744073709551615}}", "queue.stream.job_buffer_size"),
        ("rqd: {dispatch_threads: 100000}", "rqd.dispatch_threads"),
        ("database: {pool_size: 4294967295}", "database.pool_size"),
        ("queue: {cluster_empty_sleep: 18446744073709551615s}", "queue.cluster_empty_sleep"),
        ("queue: {job_back_off_duration: 18446744073709551615s}", "queue.job_back_off_duration"),
        ("queue: {memory_stranded_threshold: 16EiB}", "queue.memory_stranded_threshold"),
        ("queue: {mem_reserved_min: 16000000TiB}", "queue.mem_reserved_min"),
        ("queue: {frame_memory_hard_limit: 1e308}", "queue.frame_memory_hard_limit"),
    ];
    for (yaml, key) in cases {
        let e = parse_err(yaml);
        assert!(matches!(e, ConfigError::BadValue { .. }), "{yaml}: {e:?}");
        assert_eq!(e.key(), Some(*key), "{yaml}: {e}");
    }
    // A number past u64::MAX does not fit the YAML parser's integers: a YAML error, which
    // names the key too.
    let e = parse_err("queue: {worker_threads: 18446744073709551616}");
    assert!(matches!(e, ConfigError::Yaml { .. }) && e.to_string().contains("queue.worker_threads"), "{e}");
}

#[test]
fn load_reads_only_regular_files_of_bounded_size() {
    let dir = temp_dir("special");
    let fifo = dir.join("fifo.yaml");
    let c_path = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path in our own temporary directory.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let big = dir.join("big.yaml");
    std::fs::write(&big, "#".repeat(CONFIG_FILE_BYTES_MAX as usize + 1)).unwrap();
    let at_cap = dir.join("at-cap.yaml");
    std::fs::write(&at_cap, "#".repeat(CONFIG_FILE_BYTES_MAX as usize)).unwrap();
    let started = std::time::Instant::now();
    for (path, fragment) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (dir.as_path(), "not a regular file"),
        (big.as_path(), "larger than 1048576 bytes"),
    ] {
        match Config::load(Some(path), &no_env()) {
            Err(e @ ConfigError::Io { .. }) => assert!(e.to_string().contains(fragment), "{}: {e}", path.display()),
            other => panic!("{}: {other:?}", path.display()),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(Config::load(Some(&at_cap), &no_env()).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_without_settings_is_warned_about() {
    let dir = temp_dir("empty");
    for (i, text) in ["", "\n\n", "# only comments\n", "---\n", "~\n"].iter().enumerate() {
        let path = dir.join(format!("empty{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let (c, _) = Config::load(Some(&path), &no_env()).unwrap();
        assert_eq!(c.warnings.len(), 1, "{text:?}: {:?}", c.warnings);
        assert!(c.warnings[0].contains("has no settings"), "{}", c.warnings[0]);
        assert!(c.warnings[0].contains("database `test` on localhost:5432"), "{}", c.warnings[0]);
    }
    // The warning names the database in effect, environment overrides included.
    let path = dir.join("empty0.yaml");
    let (c, _) = Config::load(Some(&path), &env(&[("OPENSCHEDULER_DATABASE__DB_HOST", "pg1")])).unwrap();
    assert!(c.warnings[0].contains("on pg1:5432"), "{:?}", c.warnings);
    let path = dir.join("set.yaml");
    std::fs::write(&path, "queue: {worker_threads: 2}\n").unwrap();
    assert!(Config::load(Some(&path), &no_env()).unwrap().0.warnings.is_empty());
    // No file at all is not warned about: the defaults are what was asked for.
    assert!(Config::load(None, &no_env()).unwrap().0.warnings.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
#[test]
fn alias_bombs_and_overflowing_sizes_are_refused() {
    // Nine levels of nine aliases ("billion laughs") would expand to 9^9 strings.
    let mut yaml = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        yaml.push_str(&format!("{name}: &{name} [{}]\n", vec![format!("*{prev}"); 9].join(", ")));
    }
    yaml.push_str("queue: {selfish_services: *i}\n");
    let started = std::time::Instant::now();
    assert!(matches!(parse(&yaml), Err(ConfigError::Yaml { .. })));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // A fraction that carries a size past u128 (a debug-build overflow panic before).
    let e = parse_err("queue: {memory_stranded_threshold: '340282366920938463463374607431768211.9KB'}");
    assert_eq!(e.key(), Some("queue.memory_stranded_threshold"), "{e}");
}
