//! The broker goes away while the job reads, then comes back: the job keeps retrying
//! and resumes where it was, nothing skipped and nothing lost. On librdkafka's mock
//! cluster (brokers taken down) and on Tansu, the test broker (its process frozen for
//! 30 s). In a test binary of their own, as an outage affects everything on the broker.

mod common;

use std::time::Duration;

use common::*;
use event_trigger::config::{KafkaSettings, SourceType, StartFrom};
use rdkafka::mocking::MockCluster;

/// Small fetches and a small local queue: without them librdkafka would have the whole
/// topic prefetched before the outage begins.
fn small_fetches() -> std::collections::BTreeMap<String, String> {
    [
        ("max.partition.fetch.bytes", "4096"),
        ("queued.max.messages.kbytes", "8"),
        ("queued.min.messages", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn broker_lost_while_running_then_back_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 4, 1).unwrap();
    let kafka = KafkaSettings {
        bootstrap_servers: cluster.bootstrap_servers(),
        topic: "events".into(),
        consumer_group_id: "outage".into(),
        start_from: StartFrom::Earliest,
        properties: small_fetches(),
        ..Default::default()
    };
    through_an_outage(
        kafka,
        Duration::from_secs(3),
        || cluster.broker_down(1).unwrap(),
        || cluster.broker_up(1).unwrap(),
    );
}

/// Tansu (started by scripts/broker.sh, which exports its pid) stops answering for 30 s:
/// SIGSTOP keeps its in-memory topics, where a restart would lose them.
#[test]
fn tansu_frozen_for_30_s_while_running_then_back_loses_nothing() {
    let (Ok(broker), Ok(pid)) = (
        std::env::var("EVENT_TRIGGER_TEST_BROKER"),
        std::env::var("EVENT_TRIGGER_TEST_BROKER_PID"),
    ) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs this on Tansu (scripts/test.sh)"
        );
        eprintln!("no EVENT_TRIGGER_TEST_BROKER(_PID): skipped; scripts/test.sh runs it");
        return;
    };
    let topic = format!("outage-{}", std::process::id());
    let kafka = KafkaSettings {
        bootstrap_servers: broker,
        topic: topic.clone(),
        consumer_group_id: topic.clone(),
        start_from: StartFrom::Earliest,
        properties: small_fetches(),
        ..Default::default()
    };
    runtime()
        .block_on(event_trigger::kafka_client::ensure_topic(&kafka, &topic, 4))
        .unwrap();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    // Resumed however the test ends, or every later test on the broker would hang.
    struct Resume<F: Fn()>(F);
    impl<F: Fn()> Drop for Resume<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _resume = Resume(|| signal("-CONT"));
    through_an_outage(
        kafka,
        Duration::from_secs(30),
        || signal("-STOP"),
        || signal("-CONT"),
    );
}

/// Loads a workload, runs the job (-w 2) and, once 50 webhooks arrived, calls `down`,
/// waits `pause` and calls `up`; every passing event must then arrive exactly once.
fn through_an_outage(
    kafka: KafkaSettings,
    pause: Duration,
    down: impl FnOnce(),
    up: impl FnOnce(),
) {
    let w = Workload::generate(6000, 300, 21);
    event_trigger::kafka_client::produce(
        &kafka,
        &kafka.topic,
        w.lines.join("\n").as_bytes(),
        |_| {},
    )
    .unwrap();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    // A slow receiver and few webhook slots: backpressure spreads the reading over
    // seconds, so the outage falls in the middle of it.
    let receiver = Receiver::start_slow(&rt, Duration::from_millis(5));
    let profiles = format!("file://{}", w.write_profiles(dir.path()).display());
    let mut s = settings(
        dir.path(),
        std::path::Path::new("-"),
        &profiles,
        &receiver.url(),
        SEED_FILTER,
    );
    s.source.kind = SourceType::Kafka;
    s.kafka = kafka;
    s.actions.webhook.max_in_flight = 2;
    let prepared = event_trigger::dataflows::trigger::Prepared::new(&s, true).unwrap();

    let handle = rt.handle().clone();
    let job = std::thread::spawn(move || {
        event_trigger::dataflows::trigger::run(prepared, timely::Config::process(2), handle)
            .unwrap()
            .unwrap()
    });
    while receiver.received() < 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    down();
    let during = receiver.received();
    std::thread::sleep(pause);
    up();
    let summary = job.join().unwrap();

    assert!(
        during < w.expected_us_page_views().len(),
        "the outage came before the end"
    );
    assert_eq!(
        summary.counts.events_read,
        w.lines.len() as u64,
        "nothing skipped"
    );
    let mut got = receiver.event_ids();
    got.sort();
    assert_eq!(
        got,
        w.expected_us_page_views(),
        "every passing event delivered once"
    );
}
