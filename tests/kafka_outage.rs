//! The broker goes away while the job reads, then comes back: the job keeps retrying
//! and resumes where it was, nothing skipped and nothing lost. Needs control over the
//! broker, so it runs on librdkafka's mock cluster (in its own test binary, as taking
//! the broker down affects everything that uses it).

mod common;

use std::time::Duration;

use common::*;
use event_trigger::config::{KafkaSettings, SourceType, StartFrom};
use rdkafka::mocking::MockCluster;

#[test]
fn broker_lost_while_running_then_back_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 4, 1).unwrap();
    let kafka = KafkaSettings {
        bootstrap_servers: cluster.bootstrap_servers(),
        topic: "events".into(),
        consumer_group_id: "outage".into(),
        start_from: StartFrom::Earliest,
        // Small fetches and a small local queue: without them librdkafka would have the
        // whole topic prefetched before the outage begins.
        properties: [
            ("max.partition.fetch.bytes", "4096"),
            ("queued.max.messages.kbytes", "8"),
            ("queued.min.messages", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    };
    let w = Workload::generate(6000, 300, 21);
    event_trigger::kafka::produce(&kafka, "events", w.lines.join("\n").as_bytes(), |_| {}).unwrap();

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
    cluster.broker_down(1).unwrap();
    let during = receiver.received();
    std::thread::sleep(Duration::from_secs(3));
    cluster.broker_up(1).unwrap();
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
