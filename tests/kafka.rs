//! The Kafka source end to end: against the broker named by `EVENT_TRIGGER_TEST_BROKER`
//! (Tansu in CI, started by `scripts/broker.sh`), or, when it is unset, against
//! librdkafka's in-process mock cluster.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use event_trigger::config::{KafkaSettings, Settings, SourceType, StartFrom, StateBackend};
use event_trigger::model::SavedUser;
use rdkafka::Message;
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

/// Creates `topic` with `partitions` partitions.
fn create_topic(rt: &tokio::runtime::Runtime, topic: &str, partitions: i32) {
    let s = kafka_settings(topic, "loader");
    let _guard = TOPICS.lock().unwrap();
    match MOCK.get() {
        Some(m) => m.0.create_topic(topic, partitions, 1).unwrap(),
        None => rt
            .block_on(event_trigger::kafka_client::ensure_topic(
                &s, topic, partitions,
            ))
            .unwrap(),
    }
}

/// Creates `topic` and loads `lines` into it with the job's own loader.
fn load_topic(rt: &tokio::runtime::Runtime, topic: &str, partitions: i32, lines: &[String]) {
    let s = kafka_settings(topic, "loader");
    create_topic(rt, topic, partitions);
    let input = lines.join("\n");
    let done = event_trigger::kafka_client::produce(&s, topic, input.as_bytes(), |_| {}).unwrap();
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
    event_trigger::kafka_client::client_config(&kafka_settings(topic, group))
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
    // One job, one checkpoint directory.
    s.engine.checkpoint_dir = dir.join(format!("checkpoints-{group}"));
    s
}

fn run_kafka(
    s: &Settings,
    workers: usize,
    rt: &tokio::runtime::Runtime,
) -> event_trigger::counters::Counts {
    let prepared = event_trigger::dataflows::trigger::Prepared::new(s, true).unwrap();
    run_prepared(prepared, workers, rt)
}

fn kafka_yaml(s: &Settings) -> String {
    format!(
        "source:\n  type: kafka\nkafka:\n  bootstrap-servers: \"{}\"\n  topic: {}\n  consumer-group-id: {}\n  start-from: committed\nprofile-api:\n  base-url: \"{}\"\nfilter:\n  script-path: \"{}\"\nactions:\n  webhook:\n    url: \"{}\"\nengine:\n  checkpoint-dir: \"{}\"\n",
        s.kafka.bootstrap_servers,
        s.kafka.topic,
        s.kafka.consumer_group_id,
        s.profile_api.base_url,
        s.filter.script_path.display(),
        s.actions.webhook.url,
        s.engine.checkpoint_dir.display()
    )
}

/// Starts the job's binary on `cfg` with `args` after `run`, its output piped.
fn start_run(cfg: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Job {
    Job::spawn(
        Command::new(binary())
            .arg("run")
            .args(args)
            .args(["--config", cfg.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// The newest complete checkpoint of the job `s` configures.
fn latest_checkpoint(s: &Settings) -> event_trigger::checkpoint::Restore {
    event_trigger::checkpoint::manifest::find_latest(&s.engine.checkpoint_dir)
        .expect("a complete checkpoint")
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

/// Where each event of `topic` sits: event id -> (partition, offset).
fn event_positions(topic: &str, count: usize) -> HashMap<String, (i32, i64)> {
    let c = group_consumer(topic, &unique("positions"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = HashMap::new();
    let (mut seen, deadline) = (0, Instant::now() + Duration::from_secs(60));
    while seen < count {
        assert!(
            Instant::now() < deadline,
            "read {seen} of {count} messages back"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            seen += 1;
            let id = m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v["event_id"].as_str().map(String::from));
            if let Some(id) = id {
                out.insert(id, (m.partition(), m.offset()));
            }
        }
    }
    out
}

/// What a checkpoint holds, as the crash test checks it.
#[derive(Default)]
struct Saved {
    /// Users with a profile (all but those whose look-up failed or was running).
    users: HashSet<String>,
    /// Events saved with users whose look-up was running: replayed on restore.
    pending_events: HashSet<String>,
    /// Users in all.
    total: usize,
}

fn saved_in(restore: &event_trigger::checkpoint::Restore) -> Saved {
    read_saved(restore).expect("a checkpoint's parts")
}

/// `saved_in`, or None if the checkpoint went away meanwhile (pruned by a running job).
fn read_saved(restore: &event_trigger::checkpoint::Restore) -> Option<Saved> {
    let mut saved = Saved::default();
    {
        for (user, record) in restore.read_users().ok()? {
            saved.total += 1;
            match record {
                // A user whose look-up failed is looked up again after a while, by design.
                SavedUser::State(s) if s.refetch_after.is_some() => {}
                SavedUser::State(_) => {
                    saved.users.insert(user.to_string());
                }
                SavedUser::Pending(p) => saved.pending_events.extend(
                    p.events
                        .iter()
                        .filter_map(|(_, e)| e.event_id.as_deref().map(str::to_string)),
                ),
            }
        }
    }
    Some(saved)
}

/// Issue #4's crash test: runs killed with SIGKILL at random moments (once restarted
/// with another number of workers) and a last run to the end lose no event, repeat only
/// events after the checkpoint they restarted from, and look up no restored user again.
#[test]
fn sigkilled_runs_restart_from_their_checkpoints() {
    let events: usize = std::env::var("EVENT_TRIGGER_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(events, events / 20, 12);
    let topic = unique("crash");
    load_topic(&rt, &topic, 4, &w.lines);
    let positions = event_positions(&topic, w.lines.len());
    let group = fresh_group(&topic);
    let api = ProfileApi::start(&rt, w.behaviours());
    // A receiver slow enough that each run is still busy when it is killed.
    let receiver = Receiver::start_slow(&rt, Duration::from_millis(2));
    let mut s = kafka_job(dir.path(), &topic, &group, &api.base_url(), &receiver.url());
    s.engine.checkpoint_interval_ms = 200;
    let checkpoints = s.engine.checkpoint_dir.clone();
    let cfg = dir.path().join("crash.yml");
    std::fs::write(
        &cfg,
        kafka_yaml(&s) + "  checkpoint-interval-ms: 200\nstate:\n  max-history: 20\n",
    )
    .unwrap();
    let state_dir = dir.path().join("state");
    // Each run's log is kept (in CRASH_LOG_DIR if set) and shown if events go missing.
    let log_dir = std::env::var("CRASH_LOG_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().to_path_buf());
    let log_of = |run: usize| log_dir.join(format!("crash-{}-run-{run}.log", topic));
    let start = |run: usize, workers: &str, backend: &str| {
        Job::spawn(
            Command::new(binary())
                // The first run reads from the beginning and the others go on from
                // checkpoints: none depends on the broker giving back the group's commits
                // (one CI run started a partition 3,231 messages in, and none of those
                // was ever delivered; the logs now say where each partition starts).
                .env("EVENT_TRIGGER__KAFKA__START_FROM", "earliest")
                .env("EVENT_TRIGGER__ENGINE__STATE_BACKEND", backend)
                .env("EVENT_TRIGGER__ENGINE__STATE_DIR", &state_dir)
                .env("EVENT_TRIGGER__ENGINE__STATE_CACHE_USERS", "500")
                .args([
                    "run",
                    "--bounded",
                    "--config",
                    cfg.to_str().unwrap(),
                    "-w",
                    workers,
                ])
                .env(
                    "RUST_LOG",
                    // Where each partition starts reading, to explain a gap.
                    std::env::var("CRASH_LOG")
                        .unwrap_or("warn,event_trigger::sources::kafka=info".into()),
                )
                .env("EVENT_TRIGGER__ACTIONS__WEBHOOK__MAX_IN_FLIGHT", "8")
                // A webhook call that times out is logged and dropped (retries are the
                // operations issue's): on a loaded machine the 5 s default was seen to lose
                // deliveries that have nothing to do with crashes.
                .env("EVENT_TRIGGER__ACTIONS__WEBHOOK__TIMEOUT_MS", "60000")
                // Likewise a look-up that times out gives the user an empty profile, and
                // its page views then do not pass.
                .env("EVENT_TRIGGER__PROFILE_API__TIMEOUT_MS", "60000")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(log_of(run)).unwrap()),
        )
    };
    let newest = || event_trigger::checkpoint::manifest::find_latest(&checkpoints);
    let mut jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;

    // With the RocksDB backend built, two runs keep their users in RocksDB: restores go
    // from the hash map to RocksDB, RocksDB to RocksDB, and RocksDB to the hash map.
    let rocksdb = if cfg!(feature = "rocksdb") {
        "rocksdb"
    } else {
        "hashmap"
    };
    let runs = [
        ("2", "hashmap"),
        ("2", rocksdb),
        ("1", rocksdb),
        ("2", "hashmap"),
    ];
    for (run, (workers, backend)) in runs.into_iter().enumerate() {
        let restored = newest();
        let from: BTreeMap<i32, i64> = restored
            .as_ref()
            .map(|r| r.manifest.offsets.clone())
            .unwrap_or_default();
        let saved = restored.as_ref().map(saved_in).unwrap_or_default();
        let (delivered_before, requests_before) =
            (receiver.received(), api.requests.lock().unwrap().len());
        let started = Instant::now();
        let mut job = start(run, workers, backend);
        let last_run = run == 3;
        if last_run {
            let out = job.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "last run: {}",
                std::fs::read_to_string(log_of(run)).unwrap_or_default()
            );
            let counts = summary_of(&out.stdout);
            assert_eq!(counts.restored as usize, saved.total, "last run");
            // It ended with a final checkpoint at the end of the topic, and committed it.
            let end = newest().expect("a final checkpoint");
            assert_eq!(
                end.manifest.offsets.values().sum::<i64>(),
                w.lines.len() as i64
            );
            assert_eq!(committed_total(&topic, &group, 4), w.lines.len() as i64);
        } else {
            // Killed at a random moment after it completed a checkpoint of its own that
            // got further than the one it started from.
            let read = |r: &event_trigger::checkpoint::Restore| -> i64 {
                r.manifest.offsets.values().sum()
            };
            let before = restored.as_ref().map(read).unwrap_or_default();
            // Catches a run that never checkpoints; at the issue's 500,000 events a debug
            // build with 500 users cached in RocksDB took over a minute to its first.
            let deadline = Instant::now() + Duration::from_secs(60 + events as u64 / 2000);
            // It must have looked users up: a checkpoint may hold only users saved as
            // their events, whose look-ups were under way.
            let progressed = |r: &event_trigger::checkpoint::Restore| {
                read(r) > before && read_saved(r).is_some_and(|s| !s.users.is_empty())
            };
            while !newest().is_some_and(|r| progressed(&r)) {
                assert!(
                    Instant::now() < deadline,
                    "run {run} completed no checkpoint"
                );
                if job.try_wait().unwrap().is_some() {
                    let out = job.wait_with_output().unwrap();
                    panic!(
                        "run {run} ended before it was killed: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                // Each look verifies the newest checkpoint's parts in full: in a debug
                // build, polled every 20 ms it took most of a core from the job.
                std::thread::sleep(Duration::from_millis(250));
            }
            jitter = jitter
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            std::thread::sleep(Duration::from_millis((jitter >> 33) % 250));
            assert!(
                job.try_wait().unwrap().is_none(),
                "run {run} ended before it was killed"
            );
            eprintln!(
                "run {run}: -w {workers} {backend}, killed {:?} after its start, {} deliveries so far",
                started.elapsed(),
                receiver.received()
            );
            job.kill().unwrap(); // SIGKILL
            job.wait().unwrap();
        }

        // Only events at or after the checkpoint it started from were delivered again,
        // and those it saved with users whose look-up was running.
        let ids = receiver.event_ids();
        for id in &ids[delivered_before..] {
            let (p, o) = positions[id];
            let start = from.get(&p).copied().unwrap_or(0);
            assert!(
                o >= start || saved.pending_events.contains(id),
                "run {run} delivered {id} at {p}:{o}, before its checkpoint ({start})"
            );
        }
        // No user restored from the checkpoint was looked up again.
        let again: Vec<String> = api.requests.lock().unwrap()[requests_before..]
            .iter()
            .filter(|(u, what, _)| what == "profile" && saved.users.contains(u))
            .map(|(u, _, _)| u.clone())
            .collect();
        assert!(
            again.is_empty(),
            "run {run} looked up restored users again: {again:?}"
        );
        if run > 0 {
            assert!(!saved.users.is_empty(), "run {run} restored a checkpoint");
        }
    }

    let got: HashSet<String> = receiver.event_ids().into_iter().collect();
    let delivered = receiver.received();
    let expected = w.expected_us_page_views();
    let missing: Vec<_> = expected.iter().filter(|id| !got.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "never delivered: {}",
        explain_missing(
            &missing,
            &positions,
            &(0..runs.len()).map(log_of).collect::<Vec<_>>()
        )
    );
    assert_eq!(got.len(), expected.len(), "delivered only passing events");
    eprintln!(
        "crash test: {events} events, {} passing, {delivered} deliveries over 4 runs",
        got.len()
    );
}

/// Sum of the offsets `group` has committed on `topic`.
/// The events never delivered, as offset ranges per partition, and what the runs' logs
/// say about where partitions started and what went wrong.
fn explain_missing(
    missing: &[&String],
    positions: &HashMap<String, (i32, i64)>,
    logs: &[std::path::PathBuf],
) -> String {
    let mut ranges: BTreeMap<i32, (usize, i64, i64)> = BTreeMap::new();
    for id in missing {
        let (p, o) = positions[*id];
        let r = ranges.entry(p).or_insert((0, o, o));
        (r.0, r.1, r.2) = (r.0 + 1, r.1.min(o), r.2.max(o));
    }
    let mut out = String::new();
    for (p, (n, lo, hi)) in ranges {
        out += &format!("\n  partition {p}: {n} events between offsets {lo} and {hi}");
    }
    for (run, log) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        // The source's lines (where each partition started, gaps) and errors.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("sources::kafka") || l.contains("ERROR"))
            .take(40)
            .collect();
        out += &format!(
            "\n  run {run} log ({}):\n    {}",
            log.display(),
            lines.join("\n    ")
        );
    }
    out += &format!("\n  ids: {missing:?}");
    out
}

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
            "source:\n  type: kafka\nkafka:\n  bootstrap-servers: 127.0.0.1:{}\n  connect-timeout-ms: 4000\nfilter:\n  script-path: {}\n",
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
    // librdkafka's failed connections (dozens in 10 s) come as a few lines, then a count
    // of those not logged ("... and 196 more Kafka client errors not logged").
    let kafka_errors = err
        .lines()
        .filter(|l| l.contains("ERROR") && (l.contains("librdkafka") || l.contains("kafka:")))
        .count();
    assert!(kafka_errors <= 3, "{err}");
}

/// A topic missing on the broker fails the start, naming the key and how to create it.
#[test]
fn a_missing_topic_is_a_clear_error_that_names_produce() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("missing");
    let s = kafka_job(
        dir.path(),
        &topic,
        "g",
        "file:///dev/null",
        "http://127.0.0.1:1/",
    );
    std::fs::write(&s.filter.script_path, "true").unwrap();
    let cfg = dir.path().join("missing.yml");
    std::fs::write(&cfg, kafka_yaml(&s)).unwrap();
    let out = Command::new(binary())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("kafka.topic: topic `{topic}` does not exist")),
        "{err}"
    );
    let hint = format!("event-trigger produce --config <this config> --topic {topic} FILE");
    assert!(err.contains(&hint), "{err}");
}

/// `produce` says at once that its input is missing, and gives up on a broker that does
/// not answer after `kafka.connect-timeout-ms` (it waited for ever), exit 2 both.
#[test]
fn produce_fails_fast_on_a_missing_file_and_gives_up_on_a_dead_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("127.0.0.1:{}", closed_port());
    let produce = |file: &std::path::Path, cfg: &std::path::Path| {
        let started = Instant::now();
        let out = Command::new(binary())
            .args([
                "produce",
                "--topic",
                "t",
                "--bootstrap-servers",
                &broker,
                "--config",
            ])
            .arg(cfg)
            .arg(file)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let cfg = dir.path().join("c.yml");
    std::fs::write(&cfg, "kafka:\n  connect-timeout-ms: 1500\n").unwrap();
    let (out, took) = produce(&dir.path().join("nope.jsonl"), &cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(took < Duration::from_secs(1), "{took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.jsonl: No such file"), "{err}");

    let events = dir.path().join("e.jsonl");
    std::fs::write(&events, "{}\n").unwrap();
    let (out, took) = produce(&events, &cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(took < Duration::from_secs(10), "{took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kafka.bootstrap-servers: cannot reach"),
        "{err}"
    );
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
        event_trigger::kafka_client::topic_partitions(&kafka_settings(&topic, "x")).unwrap(),
        3
    );
    // Keyed by user: each user's events are all in one partition.
    let c: BaseConsumer =
        event_trigger::kafka_client::client_config(&kafka_settings(&topic, "check"))
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
    let child = start_run(&cfg, &["-w", "2"], &[("RUST_LOG", "info")]);
    let expected = w.expected_us_page_views();
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.received() < expected.len() {
        assert!(Instant::now() < deadline, "the job delivered too little");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(send_signal(child.id(), "-TERM"));
    let out = wait_ok(child);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop signal"));
    let counts = summary_of(&out.stdout);
    assert_eq!(counts.events_read, w.lines.len() as u64);
    assert_eq!(counts.actions_ok, expected.len() as u64);

    // On the way out it took a final checkpoint (at the end of what it read, with every
    // user) and committed it.
    let last = latest_checkpoint(&s);
    assert_eq!(
        last.manifest.offsets.values().sum::<i64>(),
        w.lines.len() as i64
    );
    assert_eq!(last.manifest.users(), w.distinct_valid_users());
    let again = run_kafka(&s, 1, &rt);
    assert_eq!(again.events_read, 0);
    // The next run starts from it: every user restored, none looked up.
    assert_eq!(again.restored, w.distinct_valid_users());
    assert_eq!(again.fetched, 0);
}

/// Found by the new-user trial: a partition a new group starts at its end (`committed`
/// with nothing committed) that delivers nothing before a checkpoint goes on from that
/// offset after a restart, as the checkpoint and the group now hold it. It started at
/// the end again, and skipped what came in while the job was down.
#[test]
fn a_partition_started_at_its_end_goes_on_from_there_after_a_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(2000, 100, 21);
    let profiles = format!("file://{}", w.write_profiles(dir.path()).display());
    let topic = unique("ends");
    create_topic(&rt, &topic, 4);
    let group = unique("group");
    let receiver = Receiver::start(&rt);
    let s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    assert_eq!(run_kafka(&s, 2, &rt).events_read, 0);
    assert_eq!(
        latest_checkpoint(&s).manifest.offsets,
        BTreeMap::from([(0, 0), (1, 0), (2, 0), (3, 0)])
    );
    load_topic_more(&topic, &w.lines);
    let second = run_kafka(&s, 2, &rt);
    assert_eq!(second.events_read, w.lines.len() as u64);
    assert_eq!(committed_total(&topic, &group, 4), w.lines.len() as i64);
}

/// What a user's history must be after `lines`: the API's history, then its valid
/// events in the order of the topic.
fn expected_histories(w: &Workload, lines: &[String]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines {
        let Ok(ev) = event_trigger::wire::decode(line.as_bytes()) else {
            continue;
        };
        let user = ev.user_id.to_string();
        let history = out.entry(user.clone()).or_insert_with(|| {
            w.users.get(&user).map_or_else(Vec::new, |(_, _, h)| {
                h.as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["event_id"].as_str().unwrap().to_string())
                    .collect()
            })
        });
        history.push(ev.event_id.as_deref().unwrap_or_default().to_string());
    }
    out
}

fn assert_histories(got: &UserHistories, want: &HashMap<String, Vec<String>>, label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: users");
    for (user, _, history) in got {
        assert_eq!(Some(history), want.get(user), "{label}: history of {user}");
    }
}

/// A filter that depends on the order of the events and on the history restored.
const HISTORY_FILTER: &str =
    r#"event.eventType == "click" && history.filter(|h| h.event_type == "page_view").len() >= 6"#;

/// A topic read in two runs, the second restarting (on two workers) from the first
/// one's final checkpoint, triggers exactly what one run over the whole topic does, for
/// each pairing of the backends that write and restore the checkpoint; every user's
/// history holds its events in the order of the topic; a restarted run checkpoints at
/// later epochs than the one it restored, which it leaves as it was.
fn split_runs_match_one_run(pairs: &[(StateBackend, StateBackend)]) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(4000, 150, 15);
    let (first, second) = w.lines.split_at(w.lines.len() / 2);
    let profiles = format!("file://{}", w.write_profiles(dir.path()).display());
    let topic = unique("split");
    load_topic(&rt, &topic, 4, first);

    let job = |group: &str, backend, receiver: &Receiver| {
        let mut s = kafka_job(dir.path(), &topic, group, &profiles, &receiver.url());
        std::fs::write(&s.filter.script_path, HISTORY_FILTER).unwrap();
        s.engine.state_backend = backend;
        s.engine.state_dir = dir.path().join(format!("state-{group}"));
        // Far fewer than the users: most of them live in RocksDB, not in its cache.
        s.engine.state_cache_users = 16;
        s
    };
    let after_first = expected_histories(&w, first);
    let after_all = expected_histories(&w, &w.lines);
    let runs: Vec<_> = pairs
        .iter()
        .map(|&(before, _)| {
            let group = fresh_group(&topic);
            let receiver = Receiver::start(&rt);
            let s = job(&group, before, &receiver);
            let counts = run_kafka(&s, 1, &rt);
            assert_eq!(counts.events_read, first.len() as u64);
            assert_histories(
                &histories(&latest_checkpoint(&s)),
                &after_first,
                &format!("{before:?}"),
            );
            (group, receiver)
        })
        .collect();

    // The rest of the topic arrives; each job restarts from its checkpoint.
    let s = kafka_settings(&topic, "loader");
    event_trigger::kafka_client::produce(&s, &topic, second.join("\n").as_bytes(), |_| {}).unwrap();
    let whole_group = fresh_group(&topic);
    let whole_receiver = Receiver::start(&rt);
    let whole = job(&whole_group, StateBackend::Hashmap, &whole_receiver);
    assert_eq!(run_kafka(&whole, 2, &rt).events_read, w.lines.len() as u64);
    assert_histories(
        &histories(&latest_checkpoint(&whole)),
        &after_all,
        "one run",
    );
    let mut expected = whole_receiver.event_ids();
    expected.sort();
    assert!(expected.len() > 20, "the filter passes too little to tell");

    for ((group, receiver), (before, after)) in runs.iter().zip(pairs) {
        let label = format!("{before:?} then {after:?}");
        let s = job(group, *after, receiver);
        let restored = latest_checkpoint(&s);
        let restored_state = histories(&restored);
        let counts = run_kafka(&s, 2, &rt);
        assert_eq!(counts.events_read, second.len() as u64, "{label}");
        assert_eq!(counts.restored as usize, restored_state.len(), "{label}");
        let mut got = receiver.event_ids();
        got.sort();
        assert_eq!(got, expected, "{label}");
        let last = latest_checkpoint(&s);
        assert!(last.manifest.epoch > restored.manifest.epoch, "{label}");
        assert_eq!(histories(&restored), restored_state, "{label}");
        assert_eq!(
            histories(&last),
            histories(&latest_checkpoint(&whole)),
            "{label}"
        );
    }
}

/// Caught two bugs: events of one user applied out of order at `-w 2` (timely's
/// `for_each_stamp` sorts containers of a time unstably), and events read while a
/// checkpoint was being restored applied after later ones.
#[test]
fn a_restarted_run_triggers_as_one_run_would_with_events_in_order() {
    split_runs_match_one_run(&[(StateBackend::Hashmap, StateBackend::Hashmap)]);
}

/// Issue #4: the same state gives the same results whichever backend wrote the
/// checkpoint and whichever restores it.
#[cfg(feature = "rocksdb")]
#[test]
fn state_restored_across_hashmap_and_rocksdb_gives_the_same_results() {
    use StateBackend::{Hashmap, Rocksdb};
    split_runs_match_one_run(&[(Hashmap, Rocksdb), (Rocksdb, Hashmap), (Rocksdb, Rocksdb)]);
}

/// Issue #17: a cluster's checkpoints in one directory that every process reaches (a
/// shared filesystem): two processes write whole parts, then deltas, into it; two
/// processes of two workers each restore from it and finish the topic as one run does.
#[test]
fn a_cluster_restores_from_a_shared_checkpoint_directory() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(4000, 150, 31);
    let (first, second) = w.lines.split_at(w.lines.len() / 2);
    let profiles = format!("file://{}", w.write_profiles(dir.path()).display());
    let topic = unique("shared");
    load_topic(&rt, &topic, 4, first);
    let job = |receiver: &Receiver| {
        let s = kafka_job(
            dir.path(),
            &topic,
            &fresh_group(&topic),
            &profiles,
            &receiver.url(),
        );
        std::fs::write(&s.filter.script_path, HISTORY_FILTER).unwrap();
        s
    };
    let receiver = Receiver::start(&rt);
    let s = job(&receiver);
    let cfg = dir.path().join("shared.yml");
    // Checkpoints go on every 200 ms while the cluster waits for the stop: with the
    // default `checkpoint-full-every` the final one could be a whole part again.
    let yaml = format!(
        "{}  checkpoint-interval-ms: 200\n  checkpoint-full-every: 100000\n",
        kafka_yaml(&s)
    );
    std::fs::write(&cfg, yaml).unwrap();

    // The first half, then checkpoints of deltas on both processes' whole parts, then a
    // stop (whose final checkpoint is deltas too).
    let cluster = start_cluster(dir.path(), &cfg, &["-w", "1"], 2, &[]);
    let deltas_after_first_half = |r: &event_trigger::checkpoint::Restore| {
        r.manifest.offsets.values().sum::<i64>() == first.len() as i64
            && r.manifest.parts.iter().all(|p| !p.base.is_empty())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !event_trigger::checkpoint::manifest::find_latest(&s.engine.checkpoint_dir)
        .is_some_and(|r| deltas_after_first_half(&r))
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoint of deltas after the first half"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for process in &cluster {
        send_signal(process.id(), "-TERM");
    }
    let outs: Vec<_> = cluster.into_iter().map(wait_ok).collect();
    assert_eq!(summary_of(&outs[0].stdout).events_read, first.len() as u64);
    let stopped = latest_checkpoint(&s);
    assert_eq!(stopped.manifest.workers, 2);
    assert!(
        deltas_after_first_half(&stopped),
        "{:?}",
        stopped.manifest.parts
    );
    assert_histories(
        &histories(&stopped),
        &expected_histories(&w, first),
        "first half",
    );

    // The rest arrives; a cluster of 4 workers restores and reads it.
    let loader = kafka_settings(&topic, "loader");
    event_trigger::kafka_client::produce(&loader, &topic, second.join("\n").as_bytes(), |_| {})
        .unwrap();
    let outs = run_cluster(dir.path(), &cfg, &["-w", "2", "--bounded"], 2);
    let counts = summary_of(&outs[0].stdout);
    assert_eq!(counts.events_read, second.len() as u64);
    assert_eq!(counts.restored, stopped.manifest.users());
    let last = latest_checkpoint(&s);
    assert_eq!(last.manifest.workers, 4);
    assert_histories(
        &histories(&last),
        &expected_histories(&w, &w.lines),
        "both halves",
    );

    // Delivered once each: what one run over the whole topic delivers.
    let whole_receiver = Receiver::start(&rt);
    let whole = job(&whole_receiver);
    run_kafka(&whole, 2, &rt);
    let mut expected = whole_receiver.event_ids();
    expected.sort();
    assert!(expected.len() > 20, "the filter passes too little to tell");
    let mut got = receiver.event_ids();
    got.sort();
    assert_eq!(got, expected);
}

/// Issue #4: the drain after a stop signal is bounded. With a webhook receiver that never
/// answers, the job exits 1 once `engine.shutdown-timeout-ms` has passed, without a final
/// checkpoint and without committing the events whose actions did not complete.
#[test]
fn a_stop_that_cannot_drain_exits_after_the_shutdown_timeout() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (w, profiles, topic) = loaded_workload(&rt, dir.path(), "hang", (500, 50, 16));
    let group = fresh_group(&topic);
    let receiver = Receiver::start_slow(&rt, Duration::from_secs(600));
    let s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    let cfg = dir.path().join("hang.yml");
    std::fs::write(&cfg, kafka_yaml(&s)).unwrap();
    let child = start_run(
        &cfg,
        &[],
        &[
            ("EVENT_TRIGGER__ACTIONS__WEBHOOK__TIMEOUT_MS", "600000"),
            ("EVENT_TRIGGER__ENGINE__SHUTDOWN_TIMEOUT_MS", "1500"),
            ("RUST_LOG", "info"),
        ],
    );
    // Long enough to read the topic and call the webhook.
    std::thread::sleep(Duration::from_secs(3));
    let stopped = Instant::now();
    assert!(send_signal(child.id(), "-TERM"));
    let out = child.wait_with_output().unwrap();
    let waited = stopped.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("engine.shutdown-timeout-ms"), "{err}");
    // No summary follows: the line gives the totals so far.
    assert!(
        err.contains("events_read=") && err.contains("actions_ok=0"),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(committed_total(&topic, &group, 4) < w.lines.len() as i64);
}

/// A bounded restart with nothing new to read jumps its clock to the final epoch while it
/// is still restoring; it must still take that checkpoint and end. (It hung: the state
/// operator took the first epoch it saw, the final one, for the epoch the run started in,
/// and never wrote its part.)
#[test]
fn a_bounded_restart_with_nothing_new_restores_checkpoints_and_ends() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (w, profiles, topic) = loaded_workload(&rt, dir.path(), "again", (300_000, 200_000, 17));
    let group = fresh_group(&topic);
    let receiver = Receiver::start(&rt);
    let s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    std::fs::write(&s.filter.script_path, "false").unwrap();
    assert_eq!(run_kafka(&s, 2, &rt).events_read, w.lines.len() as u64);
    let first = latest_checkpoint(&s);
    let cfg = dir.path().join("again.yml");
    std::fs::write(&cfg, kafka_yaml(&s)).unwrap();
    let mut child = start_run(&cfg, &["--bounded", "-w", "2"], &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the restarted run did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = summary_of(&wait_ok(child).stdout);
    assert_eq!(counts.events_read, 0);
    assert_eq!(counts.restored, first.manifest.users());
    let last = latest_checkpoint(&s);
    assert!(last.manifest.epoch > first.manifest.epoch);
    assert_eq!(last.manifest.users(), first.manifest.users());
}

/// A run whose final checkpoint cannot be written prints its summary, names the epoch and
/// the reason, and exits 1: a restart would go back to an older checkpoint and act again,
/// which whoever stops the job must hear of. (It exited 0: on a CI machine short of disk a
/// restart's final checkpoint was never written and nothing said so.)
#[test]
fn a_final_checkpoint_that_cannot_be_written_fails_the_run() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (w, profiles, topic) = loaded_workload(&rt, dir.path(), "unwritable", (400, 40, 19));
    let group = fresh_group(&topic);
    let receiver = Receiver::start(&rt);
    let mut s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    s.engine.checkpoint_interval_ms = 60_000;
    // Every epoch directory of the next five minutes is taken by a plain file, so no part
    // of any checkpoint in that time, the final one included, can be written.
    std::fs::create_dir_all(&s.engine.checkpoint_dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let cfg = event_trigger::checkpoint::CheckpointConfig {
        dir: s.engine.checkpoint_dir.clone(),
        interval_ms: 60_000,
        retained: 3,
        floor_epoch: 0,
        full_every: 1,
        compress: true,
        compress_deltas: true,
    };
    for i in 0..=5 {
        std::fs::write(cfg.epoch_dir(cfg.epoch_at(now) + i * 60_000), "in the way").unwrap();
    }
    let path = dir.path().join("unwritable.yml");
    std::fs::write(&path, kafka_yaml(&s)).unwrap();
    let out = start_run(&path, &["--bounded", "-w", "2"], &[])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The work itself was done and reported.
    let counts = summary_of(&out.stdout);
    assert_eq!(counts.events_read, w.lines.len() as u64);
    assert_eq!(counts.passed as usize, w.expected_us_page_views().len());
    assert!(err.contains("the final checkpoint (epoch "), "{err}");
    assert!(err.contains(&*cfg.dir.to_string_lossy()), "{err}");
    assert!(err.contains("checkpoint part not written"), "{err}");
}

/// A checkpoint does not wait for a Profile API look-up: it saves the user being looked
/// up as its events, and a restart looks that user up again and acts on them; a final
/// checkpoint waits for the look-up instead. (Checkpoints used to wait for every look-up
/// under way: with one that hangs, none completed.)
#[test]
fn a_checkpoint_saves_a_user_whose_look_up_hangs_and_a_restart_replays_it() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(2000, 200, 18);
    let topic = unique("stuck");
    load_topic(&rt, &topic, 4, &w.lines);
    let group = fresh_group(&topic);
    let expected = w.expected_us_page_views();
    let valid: Vec<_> = w
        .lines
        .iter()
        .filter_map(|l| event_trigger::wire::decode(l.as_bytes()).ok())
        .collect();
    let user_of = |id: &str| {
        valid
            .iter()
            .find(|e| e.event_id.as_deref() == Some(id))
            .map(|e| e.user_id.to_string())
            .unwrap()
    };
    // The user with the most passing events: its look-up never answers in the first run.
    let mut passing: HashMap<String, usize> = HashMap::new();
    for id in &expected {
        *passing.entry(user_of(id)).or_default() += 1;
    }
    let (stuck, _) = passing
        .iter()
        .max_by_key(|(u, n)| (**n, (*u).clone()))
        .unwrap();
    let stuck = stuck.clone();
    let stuck_events: Vec<String> = valid
        .iter()
        .filter(|e| *e.user_id == *stuck)
        .map(|e| e.event_id.as_deref().unwrap().to_string())
        .collect();
    let api_with = |delay: Duration| {
        let mut behaviours = w.behaviours();
        let (profile, visit, history) = w.users[&stuck].clone();
        behaviours.insert(
            stuck.clone(),
            Behaviour::Slow {
                delay,
                profile,
                visit,
                history,
            },
        );
        ProfileApi::start(&rt, behaviours)
    };
    let receiver = Receiver::start(&rt);
    let env = [
        ("EVENT_TRIGGER__PROFILE_API__TIMEOUT_MS", "3600000"),
        ("RUST_LOG", "info"),
    ];
    let config = |name: &str, api: &ProfileApi| {
        let s = kafka_job(dir.path(), &topic, &group, &api.base_url(), &receiver.url());
        let cfg = dir.path().join(name);
        std::fs::write(&cfg, kafka_yaml(&s) + "  checkpoint-interval-ms: 200\n").unwrap();
        (s, cfg)
    };

    // Run 1: the topic is read and acted on, but for the stuck user; checkpoints go on,
    // and come to hold every user but the stuck one, which they hold as its events.
    let hanging = api_with(Duration::from_secs(3600));
    let (s, cfg) = config("first.yml", &hanging);
    let mut child = start_run(&cfg, &["-w", "2"], &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let want: HashSet<String> = stuck_events.iter().cloned().collect();
    loop {
        let saved = event_trigger::checkpoint::manifest::find_latest(&s.engine.checkpoint_dir)
            .filter(|r| r.manifest.offsets.values().sum::<i64>() == w.lines.len() as i64)
            .and_then(|r| read_saved(&r));
        if let Some(saved) = saved
            && saved.pending_events == want
        {
            assert!(!saved.users.contains(&stuck));
            assert_eq!(saved.total as u64, w.distinct_valid_users());
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("no checkpoint of the whole topic while a look-up hangs");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut got = receiver.event_ids();
    got.sort();
    got.dedup();
    let others: Vec<String> = expected
        .iter()
        .filter(|id| user_of(id) != stuck)
        .cloned()
        .collect();
    assert_eq!(
        got, others,
        "run 1 delivered every passing event but the stuck user's"
    );

    // Run 2, bounded, nothing new to read: the stuck user is looked up again (slowly:
    // the final checkpoint must wait for it) and its events are acted on.
    let slow = api_with(Duration::from_secs(1));
    let (s, cfg) = config("second.yml", &slow);
    let out = wait_ok(start_run(&cfg, &["--bounded"], &env));
    let counts = summary_of(&out.stdout);
    assert_eq!(counts.events_read, 0);
    assert_eq!(counts.restored, w.distinct_valid_users());
    assert_eq!(
        slow.lookups(),
        HashMap::from([(stuck.clone(), 1)]),
        "only the stuck user is looked up"
    );
    let mut got = receiver.event_ids();
    got.sort();
    got.dedup();
    assert_eq!(got, expected, "every passing event delivered");
    assert_histories(
        &histories(&latest_checkpoint(&s)),
        &expected_histories(&w, &w.lines),
        "final checkpoint",
    );
}

/// The sum of a metric's samples over its labels, in OpenMetrics text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue #5's metrics: scraped over HTTP from a running job, they agree with what the
/// job did; the progress line comes as JSON when `logging.format` says so.
#[test]
fn metrics_are_served_and_agree_with_the_work_done() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (w, _, topic) = loaded_workload(&rt, dir.path(), "metrics", (3000, 300, 19));
    let group = fresh_group(&topic);
    let receiver = Receiver::start(&rt);
    let api = ProfileApi::start(&rt, w.behaviours());
    let s = kafka_job(dir.path(), &topic, &group, &api.base_url(), &receiver.url());
    let cfg = dir.path().join("metrics.yml");
    let yaml = kafka_yaml(&s).replace(
        "\nkafka:\n",
        "\nkafka:\n  properties:\n    statistics.interval.ms: \"200\"\n",
    ) + "  checkpoint-interval-ms: 200\nmetrics:\n  log-interval-s: 1\nlogging:\n  format: json\n";
    std::fs::write(&cfg, yaml).unwrap();
    let port = closed_port();
    let listen = format!("127.0.0.1:{port}");
    let child = start_run(
        &cfg,
        &["-w", "2"],
        &[
            ("EVENT_TRIGGER__METRICS__LISTEN", &listen),
            ("RUST_LOG", "info"),
        ],
    );
    let expected = w.expected_us_page_views().len() as f64;
    let scrape = || {
        rt.block_on(async {
            let client = event_trigger::http_client::hyper_client(None).ok()?;
            let url = format!("http://{listen}/metrics");
            let resp = event_trigger::http_client::get(&client, &url, 16 << 20)
                .await
                .ok()?;
            let ctype = resp.headers.get("content-type")?.to_str().ok()?.to_string();
            assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
            String::from_utf8(resp.body.ok()?).ok()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        if let Some(text) = scrape()
            && metric_sum(&text, "event_trigger_actions_ok_total") == expected
            && metric_sum(&text, "event_trigger_checkpoints_completed_total") >= 1.0
            && text.contains("event_trigger_kafka_consumer_lag{")
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never caught up: {:?}",
            scrape()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    send_signal(child.id(), "-TERM");
    let out = wait_ok(child);
    let counts = summary_of(&out.stdout);

    let sum = |name: &str| metric_sum(&text, name);
    assert_eq!(sum("event_trigger_events_read_total"), w.lines.len() as f64);
    assert_eq!(sum("event_trigger_invalid_total"), w.invalid_lines() as f64);
    assert_eq!(
        sum("event_trigger_invalid_by_reason_total"),
        w.invalid_lines() as f64
    );
    assert!(
        text.contains(r#"event_trigger_invalid_by_reason_total{worker="0",reason="bad_json"}"#)
            || text
                .contains(r#"event_trigger_invalid_by_reason_total{worker="1",reason="bad_json"}"#)
    );
    assert_eq!(sum("event_trigger_passed_total"), expected);
    assert_eq!(
        sum("event_trigger_state_users"),
        w.distinct_valid_users() as f64
    );
    assert_eq!(
        sum("event_trigger_fetched_total"),
        w.distinct_valid_users() as f64
    );
    assert_eq!(
        sum("event_trigger_lookup_seconds_count"),
        w.distinct_valid_users() as f64
    );
    assert_eq!(sum("event_trigger_lookup_backlog_events"), 0.0);
    assert_eq!(sum("event_trigger_kafka_consumer_lag"), 0.0, "all read");
    assert!(sum("event_trigger_checkpoint_bytes") > 0.0);
    assert!(sum("event_trigger_checkpoint_writer_cpu_seconds_total") > 0.0);
    assert!(sum("event_trigger_state_bytes") > 0.0);
    assert_eq!(sum("event_trigger_action_ok_total"), expected);
    assert!(text.contains(r#"event_trigger_action_ok_total{worker="0",action="webhook"}"#));
    assert!(text.contains(r#"event_trigger_events_read_total{worker="1"}"#));
    // The summary of the run says the same.
    assert_eq!(counts.events_read, w.lines.len() as u64);
    assert_eq!(counts.actions_ok as f64, expected);

    // Logs are JSON lines, progress lines among them, the last with every event read.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let progress: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .filter(|v| v["fields"]["message"] == "progress")
        .collect();
    assert!(!progress.is_empty(), "{stderr}");
    assert!(
        progress
            .iter()
            .any(|p| p["fields"]["events_read"] == w.lines.len() as u64),
        "{progress:?}"
    );
    // Every partition read to its end: the last line's lag is known, and 0.
    assert_eq!(
        progress[progress.len() - 1]["fields"]["lag"],
        0,
        "{progress:?}"
    );
}

/// Issue #5's replay: `--from-timestamp` re-triggers exactly the events produced from
/// that time on, `--from-offset` exactly those from those offsets, and `--dry-run`
/// prints what it would trigger and changes nothing (no webhook, no commit, no
/// checkpoint).
#[test]
fn replays_re_trigger_exactly_the_events_from_their_start() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(2000, 200, 23);
    let profiles = format!("file://{}", w.write_profiles(dir.path()).display());
    let topic = unique("replay");
    let (early, late) = w.lines.split_at(1000);
    load_topic(&rt, &topic, 4, early);
    std::thread::sleep(Duration::from_millis(1500));
    let from_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 200;
    load_topic_more(&topic, late);
    let passing = |lines: &[String]| {
        Workload {
            lines: lines.to_vec(),
            users: w.users.clone(),
        }
        .expected_us_page_views()
    };
    let positions = event_positions(&topic, w.lines.len());
    let group = fresh_group(&topic);
    let receiver = Receiver::start(&rt);
    let s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    let cfg = dir.path().join("replay.yml");
    std::fs::write(&cfg, kafka_yaml(&s)).unwrap();
    let new_deliveries = |since: usize| {
        let mut ids = receiver.event_ids()[since..].to_vec();
        ids.sort();
        ids
    };

    // The whole topic once.
    wait_ok(start_run(&cfg, &["--bounded", "-w", "2"], &[]));
    assert_eq!(new_deliveries(0), w.expected_us_page_views());

    // From a time: the late batch again, nothing of the early one.
    let before = receiver.received();
    let at = from_time.to_string();
    wait_ok(start_run(
        &cfg,
        &["--bounded", "--from-timestamp", &at],
        &[],
    ));
    assert_eq!(new_deliveries(before), passing(late), "--from-timestamp");

    // From offsets: partition 0 from offset 10; the others go on from the group's
    // offsets (their end).
    let before = receiver.received();
    wait_ok(start_run(
        &cfg,
        &["--bounded", "--from-offset", "0:10"],
        &[],
    ));
    let mut want: Vec<String> = w
        .expected_us_page_views()
        .into_iter()
        .filter(|id| positions[id].0 == 0 && positions[id].1 >= 10)
        .collect();
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(new_deliveries(before), want, "--from-offset");

    // A partition the topic does not have is refused (it was ignored: nothing replayed,
    // exit 0).
    let before = receiver.received();
    let out = start_run(&cfg, &["--bounded", "--from-offset", "4:0"], &[])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "--from-offset: partition 4: topic `{topic}` has 4 partitions (0 to 3)"
        )),
        "{err}"
    );
    assert_eq!(receiver.received(), before);

    // An offset past its partition's end is warned of at the start, naming the end (a
    // bounded run waited for it without end or word, found by a trial). Stopped once said.
    let log = dir.path().join("past-the-end.log");
    let mut past = Job::spawn(
        Command::new(binary())
            .args(["run", "--dry-run", "--from-offset", "0:999999"])
            .args(["--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let said = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("is past partition 0's end"))
    });
    past.kill().unwrap();
    past.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(said, "{err}");
    assert!(err.contains("give an offset up to "), "{err}");
    assert_eq!(receiver.received(), before);

    // A dry run of partition 1: printed, not delivered, nothing committed or checkpointed.
    let before = receiver.received();
    let committed = committed_total(&topic, &group, 4);
    let epoch = latest_checkpoint(&s).manifest.epoch;
    let out = wait_ok(start_run(
        &cfg,
        &["--bounded", "--dry-run", "--from-offset", "1:0"],
        &[("RUST_LOG", "info")],
    ));
    assert_eq!(receiver.received(), before, "a dry run calls no webhook");
    let printed = String::from_utf8_lossy(&out.stderr);
    let want: Vec<String> = w
        .expected_us_page_views()
        .into_iter()
        .filter(|id| positions[id].0 == 1)
        .collect();
    assert_eq!(
        printed.matches("triggered:").count(),
        want.len(),
        "{printed}"
    );
    for id in &want {
        assert!(printed.contains(&format!("\"{id}\"")), "{id} not printed");
    }
    assert_eq!(committed_total(&topic, &group, 4), committed);
    assert_eq!(latest_checkpoint(&s).manifest.epoch, epoch);
}

/// Adds `lines` to an existing topic.
fn load_topic_more(topic: &str, lines: &[String]) {
    let s = kafka_settings(topic, "loader");
    let input = lines.join("\n");
    let done = event_trigger::kafka_client::produce(&s, topic, input.as_bytes(), |_| {}).unwrap();
    assert_eq!(done.messages, lines.len() as u64);
}

/// Issue #5's hot reload, under load: the filter changes from page views to clicks while
/// events stream in (with a broken script in between, refused). In every partition there
/// is one cut: before it every page view and no click was delivered, after it every
/// click and no page view; no event twice, none skipped.
#[test]
fn a_filter_reloaded_under_load_judges_each_event_once_by_one_version() {
    reload_under_load(1, 100);
}

/// The same on a cluster of two processes: process 0 watches the file, and its worker 0
/// broadcasts the new version, due 5 s later, to the other process.
#[test]
fn a_filter_reloaded_on_a_cluster_switches_every_process_at_once() {
    reload_under_load(2, 700);
}

/// Streams events in chunks `pause_ms` apart while the filter changes (see the tests).
fn reload_under_load(processes: usize, pause_ms: u64) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(6000, 300, 29);
    let profiles = format!("file://{}", w.write_profiles(dir.path()).display());
    let topic = unique("reload");
    let (first, rest) = w.lines.split_at(2000);
    load_topic(&rt, &topic, 4, first);
    let group = fresh_group(&topic);
    let receiver = Receiver::start(&rt);
    let mut s = kafka_job(dir.path(), &topic, &group, &profiles, &receiver.url());
    s.filter.script_path = dir.path().join("reload.rhai");
    std::fs::write(&s.filter.script_path, r#"event.event_type == "page_view""#).unwrap();
    let cfg = dir.path().join("reload.yml");
    std::fs::write(&cfg, kafka_yaml(&s)).unwrap();
    let env = [
        ("EVENT_TRIGGER__FILTER__RELOAD_INTERVAL_MS", "100"),
        // A call that times out on a loaded machine would be a lost delivery here.
        ("EVENT_TRIGGER__ACTIONS__WEBHOOK__TIMEOUT_MS", "60000"),
        ("RUST_LOG", "info"),
    ];
    let children: Vec<_> = if processes == 1 {
        vec![start_run(&cfg, &["-w", "2"], &env)]
    } else {
        start_cluster(dir.path(), &cfg, &["-w", "1"], processes, &env)
    };
    let kind = |line: &str| {
        event_trigger::wire::decode(line.as_bytes())
            .ok()
            .map(|e| (e.event_id.unwrap().to_string(), e.event_type.to_string()))
    };
    let first_views = first
        .iter()
        .filter_map(|l| kind(l))
        .filter(|(_, t)| t == "page_view")
        .count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.received() < first_views {
        assert!(
            Instant::now() < deadline,
            "the first batch was not delivered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The rest streams in while the script changes: broken (refused), then clicks.
    let chunks: Vec<&[String]> = rest.chunks(200).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        load_topic_more(&topic, chunk);
        if i == 2 {
            std::fs::write(&s.filter.script_path, "event.event_type ==").unwrap();
        }
        if i == 6 {
            std::fs::write(&s.filter.script_path, r#"event.event_type == "click""#).unwrap();
        }
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
    // Wait for the deliveries to settle, then stop.
    let mut last = (receiver.received(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(200));
        let n = receiver.received();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    for child in &children {
        send_signal(child.id(), "-TERM");
    }
    let outs: Vec<_> = children.into_iter().map(wait_ok).collect();
    assert_eq!(
        summary_of(&outs[0].stdout).events_read,
        w.lines.len() as u64
    );
    let err = String::from_utf8_lossy(&outs[0].stderr);
    assert!(
        err.contains("filter not reloaded"),
        "the broken script refused: {err}"
    );
    assert!(err.contains("filter reloaded"), "{err}");
    for out in &outs {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("arrived after its time"), "{err}");
    }

    let delivered = receiver.event_ids();
    let once: HashSet<&String> = delivered.iter().collect();
    assert_eq!(once.len(), delivered.len(), "an event delivered twice");
    let positions = event_positions(&topic, w.lines.len());
    let mut by_partition: BTreeMap<i32, Vec<(i64, String, String)>> = BTreeMap::new();
    for (id, t) in w.lines.iter().filter_map(|l| kind(l)) {
        let (p, o) = positions[&id];
        by_partition.entry(p).or_default().push((o, id, t));
    }
    let mut clicks = 0;
    for (p, mut events) in by_partition {
        events.sort();
        let got = |id: &String| once.contains(id);
        // Some cut must explain every event: before it the old script judged (page
        // views delivered, clicks not), from it on the new one (clicks, no page views).
        let wanted = |cut: usize, i: usize, t: &str| match t {
            "page_view" => i < cut,
            "click" => i >= cut,
            _ => false,
        };
        let cut = (0..=events.len()).find(|&cut| {
            events
                .iter()
                .enumerate()
                .all(|(i, (_, id, t))| got(id) == wanted(cut, i, t))
        });
        let Some(cut) = cut else {
            let odd: Vec<_> = events
                .iter()
                .filter(|(_, id, t)| got(id) != (t == "page_view"))
                .take(6)
                .collect();
            panic!(
                "partition {p}: no single switch explains the deliveries; first ones the old script would not give: {odd:?}"
            );
        };
        clicks += events[cut..]
            .iter()
            .filter(|(_, _, t)| t == "click")
            .count();
    }
    assert!(
        clicks > 100,
        "the new filter judged events: {clicks} clicks"
    );
}

/// Dead letters to a Kafka topic: every invalid message and every delivery that failed
/// (the webhook is down) is a message there, with its original bytes.
#[test]
fn dead_letters_go_to_a_kafka_topic() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (w, profiles, topic) = loaded_workload(&rt, dir.path(), "dlq-src", (800, 80, 37));
    let group = fresh_group(&topic);
    let dead = unique("dlq");
    create_topic(&rt, &dead, 1);
    let down = format!("http://127.0.0.1:{}/webhook", closed_port());
    let mut s = kafka_job(dir.path(), &topic, &group, &profiles, &down);
    s.actions.webhook.retry_attempts = 0;
    s.dead_letter.topic = Some(dead.clone());
    let mut missing = s.clone();
    missing.dead_letter.topic = Some(unique("no-such-dlq"));
    let err = event_trigger::dataflows::trigger::Prepared::new(&missing, true)
        .err()
        .expect("a dead-letter topic that does not exist fails the start")
        .to_string();
    assert!(err.contains("dead-letter.topic"), "{err}");
    let counts = run_kafka(&s, 2, &rt);
    let expected = w.expected_us_page_views();
    assert_eq!(
        counts.dead_letters,
        w.invalid_lines() + expected.len() as u64
    );

    let c = group_consumer(&dead, &unique("dlq-reader"));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dead, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (letters.len() as u64) < counts.dead_letters {
        assert!(
            Instant::now() < deadline,
            "{} dead letters read",
            letters.len()
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let letter: event_trigger::dead_letter::DeadLetter =
                serde_json::from_slice(m.payload().unwrap()).unwrap();
            letters.push(letter);
        }
    }
    assert_dead_letters(&letters, &w, &expected);
}

/// Kafka over TLS on loopback: a Tansu of its own behind a TLS listener whose
/// certificate a private CA signed (Tansu advertises that listener, so every connection
/// of the clients goes through TLS). With `security.protocol: ssl` and the CA in
/// `ssl.ca.location` (both through `kafka.properties`) the topic is loaded and the job
/// reads all of it; without the CA the start fails on the certificate.
#[cfg(feature = "kafka-tls")]
#[test]
fn kafka_over_tls_with_a_private_ca() {
    let Ok(tansu) = std::env::var("EVENT_TRIGGER_TANSU_BIN") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs this with scripts/broker.sh"
        );
        eprintln!("no EVENT_TRIGGER_TANSU_BIN: skipped; scripts/test.sh runs it");
        return;
    };
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, acceptor) = test_ca(dir.path());
    let tls = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let tls_port = tls.local_addr().unwrap().port();
    let plain_port = closed_port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _broker = Kill(
        Command::new(tansu)
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &format!("tcp://127.0.0.1:{plain_port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{tls_port}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The TLS listener: each connection decrypted and passed on to Tansu's plain port.
    let handshakes_failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = handshakes_failed.clone();
    rt.spawn(async move {
        loop {
            let Ok((conn, _)) = tls.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", plain_port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", plain_port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tansu did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let w = Workload::generate(600, 60, 61);
    let profiles = format!("file://{}", w.write_profiles(dir.path()).display());
    let receiver = Receiver::start(&rt);
    let mut s = kafka_job(
        dir.path(),
        "tls-events",
        "tls-group",
        &profiles,
        &receiver.url(),
    );
    s.kafka.bootstrap_servers = format!("127.0.0.1:{tls_port}");
    s.kafka.start_from = StartFrom::Earliest;
    s.kafka.connect_timeout_ms = 5_000;
    s.kafka
        .properties
        .insert("security.protocol".into(), "ssl".into());

    // Without the CA: refused at start, the TLS handshakes failing.
    let refused = match event_trigger::dataflows::trigger::Prepared::new(&s, true) {
        Ok(_) => panic!("connected without trusting the CA"),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("kafka.bootstrap-servers"), "{refused}");
    assert!(
        handshakes_failed.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the client reached the listener and refused its certificate"
    );

    s.kafka
        .properties
        .insert("ssl.ca.location".into(), ca_file.display().to_string());
    rt.block_on(event_trigger::kafka_client::ensure_topic(
        &s.kafka,
        "tls-events",
        2,
    ))
    .unwrap();
    event_trigger::kafka_client::produce(
        &s.kafka,
        "tls-events",
        w.lines.join("\n").as_bytes(),
        |_| {},
    )
    .unwrap();
    let counts = run_kafka(&s, 2, &rt);
    assert_eq!(counts.events_read, w.lines.len() as u64);
    let mut got = receiver.event_ids();
    got.sort();
    assert_eq!(got, w.expected_us_page_views());
}

/// Issue #18: a run killed (SIGKILL) between scheduling cart reminders and firing them;
/// the restart, at another `-w`, fires each due reminder at least once, with the same
/// `Idempotency-Key`, and none that a purchase cancelled before the last checkpoint.
#[test]
fn delayed_actions_survive_a_sigkill_and_fire_after_the_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let carts = Carts::write(dir.path(), 20);
    let topic = unique("carts");
    load_topic(&rt, &topic, 4, &carts.lines);
    let group = fresh_group(&topic);
    let receiver = Receiver::start(&rt);
    let s = kafka_job(dir.path(), &topic, &group, &carts.profiles, &receiver.url());
    std::fs::write(&s.filter.script_path, "true").unwrap();
    let yaml = kafka_yaml(&s)
        .replace(
            &format!("actions:\n  webhook:\n    url: \"{}\"\n", receiver.url()),
            &Carts::reminder_yaml(&receiver.url(), "15s"),
        )
        .replace("engine:\n", "engine:\n  checkpoint-interval-ms: 500\n");
    let cfg = dir.path().join("carts.yml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut first = start_run(&cfg, &["-w", "1"], &[("RUST_LOG", "warn")]);
    let all_read = |r: &event_trigger::checkpoint::Restore| {
        r.manifest.offsets.values().sum::<i64>() == carts.lines.len() as i64
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = event_trigger::checkpoint::manifest::find_latest(&s.engine.checkpoint_dir);
        if done.as_ref().is_some_and(all_read) {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint of every event");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(receiver.received(), 0, "killed before any reminder was due");
    let last = event_trigger::checkpoint::manifest::find_latest(&s.engine.checkpoint_dir).unwrap();
    let mut pending: Vec<String> = Vec::new();
    {
        for (_, record) in last.read_users().unwrap() {
            let SavedUser::State(state) = record else {
                panic!("a user still being looked up")
            };
            let timers = state.triggers.map(|t| t.pending).unwrap_or_default();
            pending.extend(
                timers
                    .into_iter()
                    .filter_map(|t| t.event.event_id.map(|id| id.to_string())),
            );
        }
    }
    pending.sort();
    let restart = start_run(&cfg, &["--bounded", "-w", "2"], &[("RUST_LOG", "warn")]);
    let out = wait_ok(restart);
    let c = summary_of(&out.stdout);
    let mut expected = carts.abandoned();
    expected.sort();
    assert_eq!(
        pending, expected,
        "the checkpoint holds the reminders pending"
    );
    assert_eq!(distinct(receiver.event_ids()), expected);
    assert!(receiver.received() >= expected.len());
    let mut keys: Vec<String> = receiver
        .raw
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| c.idempotency_key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys, expected, "each reminder's key is its cart's event id");
    assert_eq!((c.restored, c.fired, c.events_read), (20, 10, 0), "{c:?}");
}
