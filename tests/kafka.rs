//! The Kafka source end to end: against the broker named by `EVENT_TRIGGER_TEST_BROKER`
//! (Tansu in CI, started by `scripts/broker.sh`), or, when it is unset, against
//! librdkafka's in-process mock cluster.

mod common;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use event_trigger::config::{KafkaSettings, Settings, SourceType, StartFrom};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};

/// The broker for these tests: the real one if configured, else a mock cluster kept
/// for the whole test binary.
fn broker() -> &'static str {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER.get_or_init(|| match std::env::var("EVENT_TRIGGER_TEST_BROKER") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            eprintln!("EVENT_TRIGGER_TEST_BROKER is unset: using librdkafka's mock cluster");
            let cluster = Box::leak(Box::new(MockCluster::new(1).unwrap()));
            MOCK.set(MockHandle(cluster)).ok();
            MOCK.get().unwrap().0.bootstrap_servers()
        }
    })
}

struct MockHandle(&'static MockCluster<'static, rdkafka::producer::DefaultProducerContext>);
// The mock cluster is only touched to create topics, from the test threads, one at a time
// (behind OnceLock and the mutex below); librdkafka's mock API is thread-safe.
unsafe impl Send for MockHandle {}
unsafe impl Sync for MockHandle {}
static MOCK: OnceLock<MockHandle> = OnceLock::new();
static TOPICS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

fn kafka_settings(topic: &str, group: &str) -> KafkaSettings {
    KafkaSettings {
        bootstrap_servers: broker().to_string(),
        topic: topic.to_string(),
        consumer_group_id: group.to_string(),
        start_from: StartFrom::Committed,
        ..Default::default()
    }
}

/// Creates `topic` and loads `lines` into it with the job's own loader.
fn load_topic(rt: &tokio::runtime::Runtime, topic: &str, partitions: i32, lines: &[String]) {
    let s = kafka_settings(topic, "loader");
    {
        let _guard = TOPICS.lock().unwrap();
        match MOCK.get() {
            Some(m) => m.0.create_topic(topic, partitions, 1).unwrap(),
            None => rt
                .block_on(event_trigger::kafka::ensure_topic(&s, topic, partitions))
                .unwrap(),
        }
    }
    let input = lines.join("\n");
    let done = event_trigger::kafka::produce(&s, topic, input.as_bytes(), |_| {}).unwrap();
    assert_eq!(done.messages, lines.len() as u64);
}

/// A fresh group whose `start-from: committed` reads `topic` from the beginning.
fn fresh_group(topic: &str) -> String {
    let group = unique("group");
    reset_group(topic, &group, 4);
    group
}

/// A workload of `events` events over `users` users in a new 4-partition topic, and its
/// profiles as a `file://` snapshot in `dir`: `(workload, profiles base URL, topic)`.
fn loaded_workload(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    prefix: &str,
    (events, users, seed): (usize, usize, u64),
) -> (Workload, String, String) {
    let w = Workload::generate(events, users, seed);
    let profiles = format!("file://{}", w.write_profiles(dir).display());
    let topic = unique(prefix);
    load_topic(rt, &topic, 4, &w.lines);
    (w, profiles, topic)
}

/// A consumer of `group` that only commits what it is told to (auto-commit would, on
/// close, commit whatever it had fetched).
fn group_consumer(topic: &str, group: &str) -> BaseConsumer {
    event_trigger::kafka::client_config(&kafka_settings(topic, group))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Commits offset 0 of every partition for `group`: "start from the beginning" for a
/// group whose `start-from: committed` would otherwise fall back to the end.
fn reset_group(topic: &str, group: &str, partitions: i32) {
    let c = group_consumer(topic, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

fn kafka_job(
    dir: &std::path::Path,
    topic: &str,
    group: &str,
    profiles: &str,
    webhook: &str,
) -> Settings {
    let mut s = settings(
        dir,
        std::path::Path::new("-"),
        profiles,
        webhook,
        SEED_FILTER,
    );
    s.source.kind = SourceType::Kafka;
    s.source.path = None;
    s.kafka = kafka_settings(topic, group);
    s
}

fn run_kafka(
    s: &Settings,
    workers: usize,
    rt: &tokio::runtime::Runtime,
) -> event_trigger::stats::Counts {
    let prepared = event_trigger::dataflows::trigger::Prepared::new(s, true).unwrap();
    run_prepared(prepared, workers, rt)
}

fn kafka_yaml(s: &Settings) -> String {
    format!(
        "source:\n  type: kafka\nkafka:\n  bootstrap-servers: \"{}\"\n  topic: {}\n  consumer-group-id: {}\n  start-from: committed\nprofile-api:\n  base-url: \"{}\"\nfilter:\n  script-path: \"{}\"\nactions:\n  webhook:\n    url: \"{}\"\n",
        s.kafka.bootstrap_servers,
        s.kafka.topic,
        s.kafka.consumer_group_id,
        s.profile_api.base_url,
        s.filter.script_path.display(),
        s.actions.webhook.url
    )
}

#[test]
fn bounded_runs_match_the_file_source_at_one_and_two_workers_and_two_processes() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (w, profiles, topic) = loaded_workload(&rt, dir.path(), "events", (3000, 300, 11));

    let file_receiver = Receiver::start(&rt);
    let from_file = run(
        &settings(
            dir.path(),
            &w.write_events(dir.path()),
            &profiles,
            &file_receiver.url(),
            SEED_FILTER,
        ),
        1,
        &rt,
    );
    let expected = w.expected_us_page_views();

    for workers in [1, 2] {
        let group = fresh_group(&topic);
        let receiver = Receiver::start(&rt);
        let s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
        let counts = run_kafka(&s, workers, &rt);
        assert_eq!(counts, from_file, "-w {workers}");
        let mut got = receiver.event_ids();
        got.sort();
        assert_eq!(got, expected, "-w {workers}");
        // Offsets were committed: the same group reads nothing again.
        let again = run_kafka(&s, workers, &rt);
        assert_eq!(again.events_read, 0, "second run of group {group}");
    }

    // Two processes of one worker each.
    let group = fresh_group(&topic);
    let receiver = Receiver::start(&rt);
    let s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    let cfg = dir.path().join("kafka.yml");
    std::fs::write(&cfg, kafka_yaml(&s)).unwrap();
    let outs = run_cluster(dir.path(), &cfg, &["--bounded"], 2);
    assert_eq!(
        summary_of(&outs[0].stdout),
        from_file,
        "2 processes x 1 worker"
    );
}

#[test]
fn a_run_killed_midway_and_restarted_loses_no_event() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (w, profiles, topic) = loaded_workload(&rt, dir.path(), "crash", (12_000, 300, 12));
    let group = fresh_group(&topic);

    // A slow receiver, so the first run is still busy when it is killed.
    let receiver = Receiver::start_slow(&rt, Duration::from_millis(20));
    let mut s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    s.actions.webhook.max_in_flight = 4;
    let cfg = dir.path().join("crash.yml");
    std::fs::write(&cfg, kafka_yaml(&s) + "    max-in-flight: 4\n").unwrap();
    let start = || {
        Command::new(binary())
            .args([
                "run",
                "--bounded",
                "--config",
                cfg.to_str().unwrap(),
                "-w",
                "2",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = start();
    // Kill it once it has committed some progress (offsets commit only after the
    // actions of the events before them are done), in the middle of the work.
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_total(&topic, &group, 4) == 0 {
        assert!(Instant::now() < deadline, "the first run committed nothing");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill().unwrap(); // SIGKILL: no chance to commit anything more
    first.wait().unwrap();
    let delivered_before_crash = receiver.received();

    let resumed_from = committed_total(&topic, &group, 4);
    assert!(
        resumed_from > 0 && resumed_from < w.lines.len() as i64,
        "killed midway: {resumed_from}"
    );
    let second = start().wait_with_output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let counts = summary_of(&second.stdout);
    assert_eq!(
        counts.events_read,
        w.lines.len() as u64 - resumed_from as u64,
        "resumed from the committed offsets"
    );

    let mut got = receiver.event_ids();
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        w.expected_us_page_views(),
        "every passing event delivered at least once"
    );
    assert!(delivered_before_crash > 0);
}

/// Sum of the offsets `group` has committed on `topic`.
fn committed_total(topic: &str, group: &str, partitions: i32) -> i64 {
    let c = group_consumer(topic, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) else {
        return 0;
    };
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[test]
fn broker_down_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("f.rhai");
    std::fs::write(&script, "true").unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        format!(
            "source:\n  type: kafka\nkafka:\n  bootstrap-servers: 127.0.0.1:{}\n  connect-timeout-ms: 1500\nfilter:\n  script-path: {}\n",
            closed_port(),
            script.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(binary())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.bootstrap-servers"), "{err}");
}

#[test]
fn produce_command_creates_the_topic_and_keys_by_user() {
    if MOCK.get().is_some() || std::env::var("EVENT_TRIGGER_TEST_BROKER").is_err() {
        // The mock cluster cannot create topics through the admin API; the loader itself
        // is exercised by the other tests.
        broker();
        if MOCK.get().is_some() {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(500, 50, 13);
    let events = w.write_events(dir.path());
    let topic = unique("produced");
    let events = events.display().to_string();
    let out = run_ok([
        "produce",
        "--topic",
        &topic,
        "--partitions",
        "3",
        "--bootstrap-servers",
        broker(),
        &events,
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("produced 500 messages"));
    assert_eq!(
        event_trigger::kafka::topic_partitions(&kafka_settings(&topic, "x")).unwrap(),
        3
    );
    // Keyed by user: each user's events are all in one partition.
    let c: BaseConsumer = event_trigger::kafka::client_config(&kafka_settings(&topic, "check"))
        .set("group.id", "check")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut seen = std::collections::HashMap::<String, i32>::new();
    let (mut eofs, mut n) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while eofs < 3 && Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                use rdkafka::Message;
                n += 1;
                if let Some(k) = m.key() {
                    let k = String::from_utf8(k.to_vec()).unwrap();
                    let p = *seen.entry(k.clone()).or_insert(m.partition());
                    assert_eq!(p, m.partition(), "user {k} in two partitions");
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eofs += 1,
            _ => {}
        }
    }
    assert_eq!(n, 500);
}

#[test]
fn sigterm_finishes_the_work_in_flight_commits_and_exits_0() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (w, profiles, topic) = loaded_workload(&rt, dir.path(), "stop", (2000, 200, 14));
    let group = fresh_group(&topic);
    let receiver = Receiver::start(&rt);
    let s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    let cfg = dir.path().join("stop.yml");
    std::fs::write(&cfg, kafka_yaml(&s)).unwrap();

    // Unbounded: it would run forever. Stop it once everything has been delivered.
    let child = Command::new(binary())
        .args(["run", "--config", cfg.to_str().unwrap(), "-w", "2"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let expected = w.expected_us_page_views();
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.received() < expected.len() {
        assert!(Instant::now() < deadline, "the job delivered too little");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop signal"));
    let counts = summary_of(&out.stdout);
    assert_eq!(counts.events_read, w.lines.len() as u64);
    assert_eq!(counts.actions_ok, expected.len() as u64);

    // Everything it processed was committed on the way out.
    let again = run_kafka(&s, 1, &rt);
    assert_eq!(again.events_read, 0);
}
