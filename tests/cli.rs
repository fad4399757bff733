//! The binary's interface: commands, exit codes, config loading, clusters of processes,
//! and a streaming input with state expiring on an idle clock.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use event_trigger::config::{Settings, StateBackend};
use serde_json::json;

#[test]
fn the_flink_jobs_config_loads_unchanged() {
    let s = Settings::load(std::path::Path::new("tests/fixtures/flink-application.yml")).unwrap();
    assert_eq!(s.kafka.consumer_group_id, "event-trigger-group");
    assert_eq!(s.engine.parallelism, 1);
    assert_eq!(s.engine.checkpoint_interval_ms, 60_000);
    assert_eq!(s.engine.state_backend, StateBackend::Hashmap);
    assert_eq!(s.engine.state_ttl_ms(), 600_000);
    assert_eq!(s.profile_api.retry_attempts, 3);
    assert!(s.actions.debug.enabled);
    run_ok([
        "validate",
        "--config",
        "tests/fixtures/flink-application.yml",
    ]);
}

/// The Flink job's file with environment overrides, under either section name (they
/// failed with "duplicate field `engine`"), and with its `state-backend: rocksdb`: a
/// binary with RocksDB takes it; one without says which command builds one that has it.
#[test]
fn the_flink_jobs_config_takes_environment_overrides_and_its_rocksdb_backend() {
    let fixture = "tests/fixtures/flink-application.yml";
    for var in [
        "EVENT_TRIGGER__ENGINE__PARALLELISM",
        "EVENT_TRIGGER__FLINK__PARALLELISM",
    ] {
        let out = Command::new(binary())
            .args(["validate", "--config", fixture])
            .env(var, "2")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{var}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let rocksdb = dir.path().join("application.yml");
    let yaml = std::fs::read_to_string(fixture)
        .unwrap()
        .replace("state-backend: hashmap", "state-backend: rocksdb")
        .replace(
            "scripts/filter.rhai",
            &format!("{}/scripts/filter.rhai", env!("CARGO_MANIFEST_DIR")),
        );
    std::fs::write(&rocksdb, yaml).unwrap();
    let out = Command::new(binary())
        .args(["validate", "--config"])
        .arg(&rocksdb)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "rocksdb") {
        assert!(out.status.success(), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr
                .contains("source scripts/rocksdb.sh && cargo build --release --features rocksdb"),
            "{stderr}"
        );
    }
}

#[test]
fn the_repositorys_config_validates_and_runs_the_sample() {
    run_ok(["validate"]);
    let out = run_ok(["run", "-w", "2"]);
    let counts = summary_of(&out.stdout);
    assert_eq!(counts.events_read, 2000);
    assert!(counts.passed > 0 && counts.actions_ok == counts.passed);
}

/// Warnings past the rate limit (10 every 10 s) are counted, not silently dropped: the
/// sample has 23 invalid lines, so 10 are logged and one line tells of the other 13.
#[test]
fn warnings_held_back_by_the_rate_limit_are_reported_as_a_count() {
    let out = run_ok(["run", "-w", "1"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("invalid message skipped").count(), 10, "{log}");
    assert!(
        log.contains("... and 13 more invalid messages not logged (at most 10 every 10 s are)"),
        "{log}"
    );
    assert!(!log.contains("held_back"), "{log}");
}

#[test]
fn debug_prints_are_rendered_only_when_their_log_is_on() {
    let run = |log: &str| {
        let child = Command::new(binary())
            .args(["run"])
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_ok(child);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &*String::from_utf8_lossy(&out.stderr);
        (
            summary_of(&out.stdout),
            text.matches("triggered:").count() as u64,
        )
    };
    let (shown, printed) = run("info");
    assert!(shown.passed > 0);
    assert_eq!(printed, shown.passed, "one print per passing event");
    let (silent, printed) = run("info,event_trigger::action::debug=off");
    assert_eq!(printed, 0);
    assert_eq!(silent, shown, "the same work, counted as done");
}

/// The debug print is one log record per event: one line of JSON in a text log, and
/// the event as a JSON object (not an escaped string) in a JSON log, where a fatal
/// error at the start is a JSON record too.
#[test]
fn debug_prints_are_one_record_per_event_and_json_in_a_json_log() {
    let out = Command::new(binary())
        .args(["run", "-w", "1"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let counts = summary_of(&out.stdout);
    let text = String::from_utf8_lossy(&out.stderr);
    let prints: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("triggered: {"))
        .collect();
    assert_eq!(prints.len() as u64, counts.passed);
    let first = prints[0].split_once("triggered: ").unwrap().1;
    // The body, then the record's fields (` action="debug"`).
    let body: serde_json::Value = serde_json::Deserializer::from_str(first)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert!(body["event"]["event_id"].is_string(), "{first}");

    let out = Command::new(binary())
        .args(["run", "-w", "2"])
        .env("EVENT_TRIGGER__LOGGING__FORMAT", "json")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let prints: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["target"] == "event_trigger::action::debug")
        .collect();
    assert_eq!(prints.len() as u64, summary_of(&out.stdout).passed);
    for p in prints {
        assert_eq!(p["level"], "INFO");
        assert_eq!(p["fields"]["message"], "triggered");
        assert_eq!(p["fields"]["action"], "debug");
        assert!(p["fields"]["event"]["event"]["event_id"].is_string(), "{p}");
        assert!(p["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    let out = Command::new(binary())
        .args(["run", "-w", "1"])
        .env("EVENT_TRIGGER__LOGGING__FORMAT", "json")
        .env("EVENT_TRIGGER__FILTER__SCRIPT_PATH", "/no/such.rhai")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{stderr}: {e}"));
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such.rhai"),
        "{last}"
    );
}

/// The README's example summary line has every field the program prints, and `run
/// --help` describes the command (`-h` is timely's --hostfile).
#[test]
fn the_readmes_summary_has_every_field_and_run_help_describes_the_command() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("summary: "))
        .expect("an example summary line");
    let shown: Vec<&str> = line["summary: ".len()..]
        .split(' ')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    let mut printed: Vec<&str> = event_trigger::stats::Counts::default()
        .named()
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    printed.extend(["elapsed_s", "events_per_s"]);
    assert_eq!(shown, printed);

    let help = run_ok(["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for part in [
        "Reads events from the configured source",
        "Exit codes",
        "-h, --hostfile",
    ] {
        assert!(help.contains(part), "{help}");
    }
}

#[test]
fn bad_config_and_scripts_fail_at_start_with_exit_2_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let good_script = dir.path().join("ok.rhai");
    std::fs::write(&good_script, "true").unwrap();
    let bad_script = dir.path().join("bad.rhai");
    std::fs::write(&bad_script, "event.event_type ==\n  && (").unwrap();
    let cases = [
        ("profile-api:\n  timeot-ms: 5\n".to_string(), "timeot-ms"),
        (
            "engine:\n  parallelism: many\n".to_string(),
            "engine.parallelism",
        ),
        (
            "flink:\n  state-backend: leveldb\n".to_string(),
            "state-backend",
        ),
        (
            format!("filter:\n  script-path: {}\n", bad_script.display()),
            "bad.rhai:2:",
        ),
        (
            "filter:\n  script-path: /no/such.rhai\n".to_string(),
            "/no/such.rhai",
        ),
        (
            format!(
                "filter:\n  script-path: {}\nactions:\n  - type: debug\n    filter: 'event.('\n",
                good_script.display()
            ),
            "actions[0].filter",
        ),
        (
            format!(
                "filter:\n  script-path: {}\nprofile-api:\n  ca-file: /no/ca.pem\n",
                good_script.display()
            ),
            "profile-api.ca-file: /no/ca.pem",
        ),
    ];
    for (yaml, needle) in cases {
        let cfg = dir.path().join("c.yml");
        std::fs::write(&cfg, &yaml).unwrap();
        for cmd in ["validate", "run"] {
            let out = Command::new(binary())
                .args([cmd, "--config", cfg.to_str().unwrap()])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {yaml}: {err}");
            assert!(
                err.contains(needle),
                "{cmd} {yaml}: expected {needle:?} in {err}"
            );
        }
    }
    let out = Command::new(binary())
        .args(["run", "--config", "/no/such.yml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        format!(
            "source:\n  type: file\n  path: /no/events.jsonl\nfilter:\n  script-path: {}\n",
            good_script.display()
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/events.jsonl"));
}

/// With `metrics.listen` unset and its default port taken, the job runs without metrics
/// and says so.
#[test]
fn a_taken_default_metrics_port_is_a_warning() {
    // Held here, or by another test's job: taken either way (only then is the warning
    // certain).
    let held = std::net::TcpListener::bind(event_trigger::config::DEFAULT_METRICS_LISTEN);
    let out = run_ok(["run", "--config", "config/application.yml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if held.is_ok() {
        assert!(err.contains("metrics not served"), "{err}");
    }
}

/// A metrics address that is not `host:port`, or a port taken, fails the start naming
/// `metrics.listen`.
#[test]
fn a_bad_or_busy_metrics_address_fails_the_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    for (listen, needle) in [
        ("nonsense", "not host:port"),
        (busy.as_str(), "cannot listen"),
    ] {
        let out = Command::new(binary())
            .args(["run", "--config", "config/application.yml"])
            .env("EVENT_TRIGGER__METRICS__LISTEN", listen)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{listen}: {err}");
        assert!(
            err.contains("metrics.listen") && err.contains(needle),
            "{listen}: {err}"
        );
    }
}

/// A rule that depends on each user's order (the event before this one was a click)
/// gives the same counts and the same webhook bodies from a file at `-w 1`, `-w 2`,
/// `-w 4` and over 2 processes: the file is read in order, by one reader (it was cut
/// by byte range among the workers, and a user's events arrived interleaved).
#[test]
fn an_order_dependent_rule_gives_the_same_triggers_at_any_parallelism() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(3000, 30, 17);
    let rule = r#"let n = history.len(); n >= 2 && history[n - 2].event_type == "click" && event.event_type == "page_view""#;
    let base = file_job(dir.path(), &w, "http://unused/", rule);
    let bodies = |receiver: &Receiver| {
        let mut out: Vec<String> = receiver
            .bodies
            .lock()
            .unwrap()
            .iter()
            .map(|(b, _)| {
                let mut b = b.clone();
                b.as_object_mut().unwrap().remove("triggeredAt");
                b.to_string()
            })
            .collect();
        out.sort();
        out
    };
    let mut runs = Vec::new();
    for workers in [1, 2, 4] {
        let receiver = Receiver::start(&rt);
        let mut s = base.clone();
        s.actions.webhook.url = receiver.url();
        let counts = run(&s, workers, &rt);
        runs.push((format!("-w {workers}"), counts, bodies(&receiver)));
    }
    let receiver = Receiver::start(&rt);
    let mut s = base.clone();
    s.actions.webhook.url = receiver.url();
    let cfg = write_config(dir.path(), "cluster.yml", &s, "");
    let outputs = run_cluster(dir.path(), &cfg, &["-w", "2"], 2);
    runs.push((
        "2 processes".into(),
        summary_of(&outputs[0].stdout),
        bodies(&receiver),
    ));
    let (_, first_counts, first_bodies) = &runs[0];
    assert!(first_counts.passed > 100, "{first_counts:?}");
    for (name, counts, bodies) in &runs[1..] {
        assert_eq!(counts, first_counts, "{name}");
        assert!(bodies == first_bodies, "{name}: other webhook bodies");
    }
}

#[test]
fn two_processes_give_the_same_counts_as_one_worker() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(3000, 300, 5);
    let events = w.write_events(dir.path());
    let api = ProfileApi::start(&rt, w.behaviours());
    let receiver = Receiver::start(&rt);
    let s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        SEED_FILTER,
    );
    let single = run(&s, 1, &rt);

    let cluster_receiver = Receiver::start(&rt);
    let mut s2 = s.clone();
    s2.actions.webhook.url = cluster_receiver.url();
    let cfg = write_config(dir.path(), "cluster.yml", &s2, "");
    let outputs = run_cluster(dir.path(), &cfg, &["-w", "1"], 2);
    let counts = summary_of(&outputs[0].stdout);
    assert_eq!(counts, single, "2 processes x 1 worker vs -w 1");
    assert!(
        !String::from_utf8_lossy(&outputs[1].stdout).contains("summary:"),
        "one summary, from process 0"
    );
    let mut a = receiver.event_ids();
    let mut b = cluster_receiver.event_ids();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(a, w.expected_us_page_views());
}

#[test]
fn idle_state_expires_by_the_clock_and_is_fetched_again() {
    idle_state_expires(0, 2);
}

/// With the TTL shorter than `profile-api.min-refetch-interval-ms`, a user who expires
/// and comes back within the interval gets the answer of its last look-up again, without
/// a request; its state still starts over.
#[test]
fn a_user_back_soon_after_expiry_is_not_looked_up_again_within_the_interval() {
    idle_state_expires(60_000, 1);
}

fn idle_state_expires(min_refetch_ms: u64, u1_lookups: usize) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let api = ProfileApi::start(
        &rt,
        [
            (
                "u1",
                Behaviour::answer(json!({"country": "US"}), json!({"actions": 0})),
            ),
            (
                "u2",
                Behaviour::answer(json!({"country": "DE"}), json!({"actions": 0})),
            ),
        ],
    );
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        std::path::Path::new("-"),
        &api.base_url(),
        &receiver.url(),
        "true",
    );
    s.source.path = Some("-".into());
    // 0.01 minutes = 600 ms of inactivity (wide margins: CI machines are busy).
    let cfg = write_config(
        dir.path(),
        "ttl.yml",
        &s,
        "engine:\n  state-ttl-minutes: 0.01\n",
    );
    let mut child = Command::new(binary())
        .args(["run", "--config", cfg.to_str().unwrap(), "-w", "2"])
        .env("RUST_LOG", "warn")
        .env(
            "EVENT_TRIGGER__PROFILE_API__MIN_REFETCH_INTERVAL_MS",
            min_refetch_ms.to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut send = |id: &str, user: &str| {
        writeln!(
            stdin,
            "{}",
            json!({"event_id": id, "user_id": user, "event_type": "x"})
        )
        .unwrap();
        stdin.flush().unwrap();
    };
    send("1", "u1");
    send("2", "u2");
    std::thread::sleep(Duration::from_millis(100));
    send("3", "u1"); // within the TTL: state reused
    std::thread::sleep(Duration::from_millis(2500)); // idle: both expire without any event
    send("4", "u1"); // fetched again, history starts over
    drop(stdin);
    let out = wait_ok(child);
    let counts = summary_of(&out.stdout);
    assert_eq!(counts.passed, 4);
    assert_eq!(
        counts.expired, 2,
        "both users expired while no event arrived"
    );
    assert_eq!(counts.fetched as usize, 1 + u1_lookups);
    assert_eq!(api.lookups()["u1"], u1_lookups);
    assert_eq!(api.lookups()["u2"], 1);
    let bodies = receiver.bodies.lock().unwrap();
    let actions = |id: &str| {
        bodies
            .iter()
            .find(|(b, _)| b["event"]["event_id"] == id)
            .map(|(b, _)| b["currentVisit"]["actions"].clone())
            .unwrap()
    };
    assert_eq!(actions("1"), 1);
    assert_eq!(actions("3"), 2, "state kept within the TTL");
    assert_eq!(actions("4"), 1, "state fetched again after expiry");
}

#[test]
fn mock_api_serves_profiles_and_counts_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(10, 10, 6);
    let profiles = w.write_profiles(dir.path());
    let port = closed_port();
    let mut child = Command::new(binary())
        .args([
            "mock-api",
            "--profiles",
            profiles.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = runtime();
    let result = rt.block_on(async {
        let client = event_trigger::http_client::builder().build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if client.get(format!("{base}/stats")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let api =
            event_trigger::profile_api::HttpProfileApi::new(&base, Duration::from_secs(2)).unwrap();
        let known = api.fetch("a/b").await;
        let unknown = api.fetch("nobody").await;
        let posted = client
            .post(format!("{base}/webhook"))
            .body("{}")
            .send()
            .await
            .unwrap()
            .status();
        // A call read 250 ms ago: the receiver measures its latency from the header.
        client
            .post(format!("{base}/webhook"))
            .header(
                event_trigger::actions::INGESTED_AT,
                (event_trigger::operators::now_ms() - 250).to_string(),
            )
            .body("{}")
            .send()
            .await
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(
            &client
                .get(format!("{base}/stats"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        (known, unknown, posted, stats)
    });
    let _ = child.kill();
    let _ = child.wait();
    let (known, unknown, posted, stats) = result;
    let known = known.unwrap();
    assert_eq!(known.profile.user_id.as_deref(), Some("a/b"));
    assert_eq!(
        known.profile.country,
        w.users["a/b"].0["country"].as_str().map(String::from)
    );
    assert!(matches!(
        unknown,
        Err(event_trigger::profile_api::FetchError::Status { status: 404, .. })
    ));
    assert!(posted.is_success());
    assert_eq!(stats["webhooks"], 2);
    assert_eq!(
        stats["latency"]["count"], 1,
        "only calls with the header are timed"
    );
    let p50 = stats["latency"]["p50_ms"].as_f64().unwrap();
    let max = stats["latency"]["max_ms"].as_f64().unwrap();
    assert!((250.0..1000.0).contains(&p50), "p50 {p50} ms");
    assert!(
        max >= 250.0 && max <= p50,
        "max {max} ms within p50's bucket"
    );
}

#[test]
fn demo_runs_with_no_external_services() {
    let out = run_ok(["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let counts = summary_of(&out.stdout);
    assert!(counts.passed > 100);
    assert!(
        stdout.contains(&format!("webhook receiver got {} calls", counts.passed)),
        "{stdout}"
    );
}
