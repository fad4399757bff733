//! The job end to end, on real HTTP servers on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use event_trigger::dataflows::trigger::Prepared;
use event_trigger::dead_letter::{DeadLetters, Kind};
use serde_json::json;

#[test]
fn counts_are_exact_and_equal_at_one_and_two_workers_over_http_and_file_profiles() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(4000, 400, 1);
    let events = w.write_events(dir.path());
    let api = ProfileApi::start(&rt, w.behaviours());
    let expected = w.expected_us_page_views();
    assert!(
        expected.len() > 300,
        "workload too small: {}",
        expected.len()
    );

    let mut all = Vec::new();
    for (workers, base) in [
        (1, api.base_url()),
        (2, api.base_url()),
        (
            2,
            format!("file://{}", w.write_profiles(dir.path()).display()),
        ),
    ] {
        let receiver = Receiver::start(&rt);
        let s = settings(dir.path(), &events, &base, &receiver.url(), SEED_FILTER);
        let counts = run(&s, workers, &rt);
        let mut got = receiver.event_ids();
        got.sort();
        assert_eq!(got, expected, "-w {workers} {base}: webhooks received");
        assert_eq!(counts.events_read, w.lines.len() as u64);
        assert_eq!(counts.invalid, w.invalid_lines());
        assert_eq!(counts.passed, expected.len() as u64);
        assert_eq!(counts.actions_ok, expected.len() as u64);
        assert_eq!(
            counts.fetched,
            w.distinct_valid_users(),
            "one look-up per user"
        );
        let unknown = w.distinct_valid_users() - w.users.len() as u64;
        assert_eq!(
            counts.fetch_errors, unknown,
            "unknown users get empty states"
        );
        assert_eq!(
            counts.passed + counts.rejected + counts.script_errors,
            counts.events_read - counts.invalid
        );
        all.push(counts);
    }
    assert_eq!(all[0], all[1]);
    assert_eq!(all[1], all[2]);
    // Ids such as "a/b" and "100%" reached the API intact, percent-encoded on the wire.
    let looked_up = api.lookups();
    for odd in ODD_IDS.iter().filter(|id| w.users.contains_key(**id)) {
        if w.lines
            .iter()
            .any(|l| l.contains(&format!("\"user_id\":{}", json!(odd))))
        {
            assert_eq!(
                looked_up.get(*odd),
                Some(&2),
                "{odd} looked up once per HTTP run"
            );
        }
    }
}

#[test]
fn state_is_applied_in_order_and_webhook_body_has_the_original_shape() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        json!({"event_id": "a1", "user_id": "alice", "event_type": "page_view", "timestamp": 10, "is_first_in_visit": true}),
        json!({"event_id": "a2", "user_id": "alice", "event_type": "click", "timestamp": 20}),
        json!({"event_id": "a3", "user_id": "alice", "event_type": "page_view", "timestamp": 30, "parameters": {"custom_params": {"k": [1, 2]}, "utm_source": "x"}}),
    ];
    let events = dir.path().join("e.jsonl");
    std::fs::write(
        &events,
        lines
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let api = ProfileApi::start(
        &rt,
        [(
            "alice",
            Behaviour::Answer {
                profile: json!({"user_id": "alice", "country": "US"}),
                visit: json!({"uuid": "v", "timestamp": 1, "actions": 5}),
                history: json!([{"event_id": "old", "event_type": "purchase", "timestamp": 1}]),
            },
        )],
    );
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        "true",
    );
    s.state.max_history = 3;
    let counts = run(&s, 1, &rt);
    assert_eq!(counts.passed, 3);
    let bodies = receiver.bodies.lock().unwrap();
    let by_id: HashMap<String, &serde_json::Value> = bodies
        .iter()
        .map(|(b, _)| (b["event"]["event_id"].as_str().unwrap().to_string(), b))
        .collect();
    let hist = |id: &str| -> Vec<String> {
        by_id[id]["eventHistory"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(hist("a1"), ["old", "a1"]);
    assert_eq!(hist("a2"), ["old", "a1", "a2"]);
    assert_eq!(
        hist("a3"),
        ["a1", "a2", "a3"],
        "capped at max-history, oldest dropped"
    );
    assert_eq!(by_id["a1"]["currentVisit"]["actions"], 6);
    assert_eq!(
        by_id["a1"]["currentVisit"]["timestamp"], 10,
        "is_first_in_visit starts the visit"
    );
    assert_eq!(by_id["a3"]["currentVisit"]["actions"], 8);
    assert_eq!(by_id["a3"]["currentVisit"]["timestamp"], 10);
    let a3 = by_id["a3"];
    assert_eq!(a3["userProfile"]["country"], "US");
    assert_eq!(
        a3["event"]["parameters"]["custom_params"]["k"],
        json!([1, 2])
    );
    assert!(a3["triggeredAt"].as_u64().unwrap() > 1_700_000_000_000);
    for key in [
        "event",
        "userProfile",
        "currentVisit",
        "eventHistory",
        "triggeredAt",
    ] {
        assert!(a3.get(key).is_some(), "{key}");
    }
}

#[test]
fn a_slow_fetch_holds_only_its_users_events_and_keeps_their_order() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let answer = |country: &str| Behaviour::answer(json!({"country": country}), json!(null));
    let api = ProfileApi::start(
        &rt,
        [
            (
                "slow",
                Behaviour::Slow {
                    // Long against the fast user's look-up and ten calls even on a busy
                    // machine running the other tests in debug builds (800 ms was not,
                    // once in CI), well within the look-up's timeout set below.
                    delay: Duration::from_millis(3000),
                    profile: json!({"country": "US"}),
                    visit: json!(null),
                    history: json!([]),
                },
            ),
            ("fast", answer("US")),
        ],
    );
    let mut lines = String::new();
    for i in 0..20 {
        let user = if i % 2 == 0 { "slow" } else { "fast" };
        lines += &json!({"event_id": format!("{user}-{i:02}"), "user_id": user, "event_type": "page_view"}).to_string();
        lines.push('\n');
    }
    let events = dir.path().join("e.jsonl");
    std::fs::write(&events, lines).unwrap();
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        "true",
    );
    s.profile_api.timeout_ms = 10_000;
    // One worker reads the whole file, so input order is file order (with more workers a
    // file is split by byte range and only each worker's share keeps its order).
    let counts = run(&s, 1, &rt);
    assert_eq!(counts.passed, 20);

    let bodies = receiver.bodies.lock().unwrap();
    let slow: Vec<_> = bodies
        .iter()
        .filter(|(b, _)| b["event"]["user_id"] == "slow")
        .collect();
    let fast: Vec<_> = bodies
        .iter()
        .filter(|(b, _)| b["event"]["user_id"] == "fast")
        .collect();
    let slow_history_at_end: Vec<_> = slow
        .iter()
        .map(|(b, _)| b["eventHistory"].as_array().unwrap().len())
        .collect();
    // Each of the slow user's events saw the ones before it: applied in input order.
    let mut sorted = slow_history_at_end.clone();
    sorted.sort();
    assert_eq!(sorted, (1..=10).collect::<Vec<_>>());
    for (b, _) in &slow {
        let hist: Vec<_> = b["eventHistory"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["event_id"].as_str().unwrap())
            .collect();
        let mut in_order = hist.clone();
        in_order.sort();
        assert_eq!(hist, in_order, "history in input order");
        assert_eq!(
            hist.last().unwrap(),
            &b["event"]["event_id"].as_str().unwrap()
        );
    }
    // The fast user's events were all delivered before the slow fetch came back.
    let last_fast = fast.iter().map(|(_, t)| *t).max().unwrap();
    let first_slow = slow.iter().map(|(_, t)| *t).min().unwrap();
    assert!(
        last_fast < first_slow,
        "other users' events must not wait for a slow fetch"
    );
}

#[test]
fn api_failures_give_empty_checkpoints_and_events_still_flow() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let api = ProfileApi::start(
        &rt,
        [
            (
                "ok",
                Behaviour::answer(json!({"country": "US"}), json!({"actions": 1})),
            ),
            ("e500", Behaviour::Status(500)),
            ("garbage", Behaviour::Garbage),
            // A profile that is not an object fails the look-up (a field of another
            // type no longer does: see a_profile_answer_with_bad_fields_degrades_...).
            ("wrongtype", Behaviour::answer(json!(["US"]), json!({}))),
            (
                "timeout",
                Behaviour::Slow {
                    delay: Duration::from_secs(5),
                    profile: json!({}),
                    visit: json!({}),
                    history: json!([]),
                },
            ),
        ],
    );
    let users = ["ok", "e500", "garbage", "wrongtype", "timeout", "unknown"];
    let lines: String = users
        .iter()
        .map(|u| json!({"event_id": u, "user_id": u, "event_type": "page_view"}).to_string() + "\n")
        .collect();
    let events = dir.path().join("e.jsonl");
    std::fs::write(&events, lines).unwrap();
    let receiver = Receiver::start(&rt);
    // Empty checkpoints: no country, no visit, only the event in the history.
    let script = r#"user.country == () && visit == () && history.len() == 1"#;
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        script,
    );
    s.profile_api.timeout_ms = 300;
    let started = std::time::Instant::now();
    let counts = run(&s, 2, &rt);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout bounds the wait"
    );
    assert_eq!(counts.fetched, 6);
    assert_eq!(counts.fetch_errors, 5);
    assert_eq!(counts.passed, 5);
    assert_eq!(counts.rejected, 1);
    let mut got = receiver.event_ids();
    got.sort();
    assert_eq!(got, ["e500", "garbage", "timeout", "unknown", "wrongtype"]);
}

#[test]
fn script_errors_reject_count_and_do_not_stop_the_job() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(500, 50, 2);
    let events = w.write_events(dir.path());
    let profiles = w.write_profiles(dir.path());
    let receiver = Receiver::start(&rt);
    // Throws for click events, loops forever for purchases, passes page views.
    let script = r#"
        if event.event_type == "click" { throw "no clicks" }
        if event.event_type == "purchase" { loop { } }
        true
    "#;
    let s = settings(
        dir.path(),
        &events,
        &format!("file://{}", profiles.display()),
        &receiver.url(),
        script,
    );
    let counts = run(&s, 2, &rt);
    let valid = w.lines.len() as u64 - w.invalid_lines();
    let page_views = w
        .lines
        .iter()
        .filter(|l| l.contains("\"event_type\":\"page_view\""))
        .count() as u64;
    assert_eq!(counts.passed, page_views);
    assert_eq!(counts.script_errors, valid - page_views);
    assert_eq!(counts.rejected, 0);
    assert_eq!(receiver.event_ids().len() as u64, page_views);
}

/// With the webhook down, every delivery is tried again and then written to the
/// dead-letter file with the body it would have sent; invalid messages go there too, as
/// read. Nothing is dropped silently, and the job finishes.
#[test]
fn webhook_down_and_invalid_messages_go_to_the_dead_letter_file() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(600, 60, 3);
    let events = w.write_events(dir.path());
    let profiles = w.write_profiles(dir.path());
    let down = format!("http://127.0.0.1:{}/webhook", closed_port());
    let mut s = settings(
        dir.path(),
        &events,
        &format!("file://{}", profiles.display()),
        &down,
        SEED_FILTER,
    );
    s.actions.webhook.retry_attempts = 2;
    s.actions.webhook.retry_backoff_ms = 10;
    let dead = dir.path().join("dead/letters.jsonl");
    s.dead_letter.path = Some(dead.clone());
    let counts = run(&s, 2, &rt);
    let expected = w.expected_us_page_views();
    assert_eq!(counts.passed, expected.len() as u64);
    assert_eq!(counts.actions_failed, counts.passed);
    assert_eq!(counts.actions_retried, 2 * counts.passed);
    assert_eq!(counts.actions_ok, 0);
    assert_eq!(counts.dead_letters, counts.passed + w.invalid_lines());

    let letters = DeadLetters::read(&dead).unwrap();
    assert_eq!(letters.len() as u64, counts.dead_letters);
    assert!(
        letters
            .iter()
            .filter(|l| l.kind == Kind::WebhookFailed)
            .all(|l| l.reason.contains(&down))
    );
    assert_dead_letters(&letters, &w, &expected);
}

/// A receiver that answers 503, then 429 with `Retry-After: 1`, then 200 to each event
/// gets every event: each delivery is tried three times, the third after the second by
/// at least the second the receiver asked for.
#[test]
fn a_webhook_that_fails_then_recovers_receives_every_event() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let calls: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let seen = calls.clone();
    let handler = event_trigger::http_server::handler(move |req| {
        let seen = seen.clone();
        async move {
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let n = {
                let mut seen = seen.lock().unwrap();
                let times = seen.entry(key).or_default();
                times.push(Instant::now());
                times.len()
            };
            let mut resp = event_trigger::http_server::reply(
                match n {
                    1 => hyper::StatusCode::SERVICE_UNAVAILABLE,
                    2 => hyper::StatusCode::TOO_MANY_REQUESTS,
                    _ => hyper::StatusCode::OK,
                },
                "{}",
            );
            if n == 2 {
                resp.headers_mut()
                    .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
            }
            resp
        }
    });
    let addr = serve_on_loopback(&rt, handler);
    let w = Workload::generate(300, 30, 5);
    let mut s = file_job(dir.path(), &w, &format!("http://{addr}/x"), SEED_FILTER);
    s.actions.webhook.retry_backoff_ms = 10;
    s.dead_letter.path = Some(dir.path().join("dead.jsonl"));
    let counts = run(&s, 2, &rt);
    let expected = w.expected_us_page_views();
    assert!(!expected.is_empty());
    assert_eq!(counts.actions_ok, expected.len() as u64);
    assert_eq!(counts.actions_failed, 0);
    assert_eq!(counts.actions_retried, 2 * counts.actions_ok);
    assert_eq!(
        counts.dead_letters,
        w.invalid_lines(),
        "only invalid messages"
    );
    let calls = calls.lock().unwrap();
    let mut keys: Vec<_> = calls.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, expected);
    for (key, times) in calls.iter() {
        assert_eq!(times.len(), 3, "{key}");
        let waited = times[2] - times[1];
        assert!(
            waited >= Duration::from_millis(950),
            "{key}: Retry-After honoured, waited {waited:?}"
        );
    }
}

/// A receiver that refuses a body (4xx other than 408 and 429) will refuse it again:
/// no retry, the failure counted.
#[test]
fn webhook_answering_a_client_error_is_failed_at_once() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let count = hits.clone();
    let handler = event_trigger::http_server::handler(move |_req| {
        count.fetch_add(1, Ordering::Relaxed);
        async { event_trigger::http_server::reply(hyper::StatusCode::UNPROCESSABLE_ENTITY, "{}") }
    });
    let addr = serve_on_loopback(&rt, handler);
    let w = Workload::generate(300, 30, 4);
    let s = file_job(dir.path(), &w, &format!("http://{addr}/x"), "true");
    let counts = run(&s, 1, &rt);
    assert_eq!(counts.passed, w.lines.len() as u64 - w.invalid_lines());
    assert_eq!(counts.actions_failed, counts.passed);
    assert_eq!(counts.actions_retried, 0);
    assert_eq!(hits.load(Ordering::Relaxed), counts.passed);
}

#[test]
fn webhooks_are_signed_and_carry_an_idempotency_key() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(300, 30, 9);
    let receiver = Receiver::start(&rt);
    let mut s = file_job(dir.path(), &w, &receiver.url(), SEED_FILTER);
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cr3t\n").unwrap();
    s.actions.webhook.secret_file = Some(secret_file);
    let started = event_trigger::clock::now_ms();
    let counts = run(&s, 2, &rt);
    assert!(counts.passed > 0);
    let calls = receiver.raw.lock().unwrap();
    assert_eq!(calls.len() as u64, counts.passed);
    for call in calls.iter() {
        let v: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(
            call.idempotency_key.as_deref(),
            v["event"]["event_id"].as_str(),
            "Idempotency-Key is the event id"
        );
        assert_eq!(
            call.signature.as_deref(),
            Some(event_trigger::actions::signature(b"s3cr3t", &call.body).as_str())
        );
        let ingested: u64 = call
            .ingested_at
            .as_deref()
            .and_then(|t| t.parse().ok())
            .expect("X-Event-Ingested-At is a time in ms");
        assert!(
            (started..=call.arrived_ms).contains(&ingested),
            "ingested at {ingested}: between the start {started} and the arrival {}",
            call.arrived_ms
        );
    }
}

#[test]
fn a_paced_file_source_reads_at_its_rate_and_loses_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(1_500, 50, 13);
    let receiver = Receiver::start(&rt);
    let mut s = file_job(dir.path(), &w, &receiver.url(), SEED_FILTER);
    let unpaced = run(&s, 2, &rt);
    s.source.max_events_per_second = Some(1_000.0);
    let started = std::time::Instant::now();
    let paced = run(&s, 2, &rt);
    // A lower bound only: 1,500 lines at 1,000 a second cannot be read in under 1.5 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "read in {:?}",
        started.elapsed()
    );
    assert_eq!(paced, unpaced, "pacing changes when, not what");
}

/// A resumed file goes on only from a checkpoint of that file: one run to the end reads
/// it whole and checkpoints its end; the next reads nothing; another file, the same path
/// with other content, or the file cut shorter than the offset, is refused at start.
#[test]
fn a_resumed_file_reads_on_from_its_checkpoint_and_refuses_another_files() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(300, 20, 17);
    let receiver = Receiver::start(&rt);
    let mut s = file_job(dir.path(), &w, &receiver.url(), SEED_FILTER);
    s.source.resume = true;
    let first = run(&s, 2, &rt);
    assert_eq!(first.events_read as usize, w.lines.len());
    let end = event_trigger::checkpoint::manifest::find_latest(&s.engine.checkpoint_dir)
        .expect("a final checkpoint");
    let manifest = || std::fs::read(end.dir.join("MANIFEST.json")).unwrap();
    let written = manifest();
    // Restarted at once, on another worker count: its clock starts at the restored
    // epoch, still ahead of the wall clock, and must not write that checkpoint again.
    let again = run(&s, 1, &rt);
    assert_eq!(again.events_read, 0, "read on from the end");
    assert_eq!(again.restored, w.distinct_valid_users());
    assert_eq!(
        manifest(),
        written,
        "the restored checkpoint was written again"
    );
    // A dry run and the rule tester read the whole file, from empty state.
    let mut dry = Prepared::new(&s, true).unwrap();
    dry.replay(None, true).unwrap();
    let mut tester = Prepared::new(&s, true).unwrap();
    tester.test_rule(1);
    for p in [dry, tester] {
        assert!(p.restore.is_none() && p.checkpoints.is_none());
        assert!(matches!(
            p.input,
            event_trigger::dataflows::trigger::Input::File { resume: false, .. }
        ));
    }

    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, "{}\n").unwrap();
    let mut t = s.clone();
    t.source.path = Some(other);
    let err = Prepared::new(&t, true).err().unwrap().to_string();
    assert!(err.contains("holds checkpoints of the file"), "{err}");

    // Other content as long as the offset and more: no line ends just before it.
    let events = s.source.path.clone().unwrap();
    let mut replaced = std::fs::read(&events).unwrap();
    *replaced.last_mut().unwrap() = b' ';
    replaced.extend_from_slice(b"\n{}\n");
    std::fs::write(&events, &replaced).unwrap();
    let err = Prepared::new(&s, true).err().unwrap().to_string();
    assert!(
        err.contains("no line break before the checkpoint's offset"),
        "{err}"
    );

    std::fs::write(&events, "{}\n").unwrap();
    let err = Prepared::new(&s, true).err().unwrap().to_string();
    assert!(
        err.contains("shorter than the checkpoint's offset"),
        "{err}"
    );
}

#[test]
fn messages_over_the_size_limit_are_skipped_unparsed_and_the_rest_flows() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let big_params = "x".repeat(4000);
    let lines = [
        r#"{"event_id":"e1","user_id":"u1","event_type":"page_view"}"#.to_string(),
        format!(
            r#"{{"event_id":"big","user_id":"u1","event_type":"page_view","parameters":{{"custom_params":{{"blob":"{big_params}"}}}}}}"#
        ),
        // Over the limit even though it is not JSON: it is never parsed.
        "y".repeat(5000),
        r#"{"event_id":"e2","user_id":"u2","event_type":"page_view"}"#.to_string(),
    ];
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n")).unwrap();
    let profiles = dir.path().join("profiles.jsonl");
    std::fs::write(&profiles, "").unwrap();
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &format!("file://{}", profiles.display()),
        &receiver.url(),
        "true",
    );
    s.kafka.max_message_bytes = 1000;
    let counts = run(&s, 1, &rt);
    assert_eq!((counts.events_read, counts.invalid), (4, 2));
    let mut got = receiver.event_ids();
    got.sort();
    assert_eq!(got, ["e1", "e2"]);

    // Under a limit that fits it, the big event is an event like any other.
    s.kafka.max_message_bytes = 1 << 20;
    let counts = run(&s, 1, &rt);
    assert_eq!((counts.events_read, counts.invalid), (4, 1));
}

#[test]
fn transient_api_failures_are_retried_with_backoff_and_404_is_not() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let us = Behaviour::answer(json!({"country": "US"}), json!(null));
    let api = ProfileApi::start(
        &rt,
        [
            (
                "flaky",
                Behaviour::FailFirst {
                    failures: 2,
                    status: 503,
                    then: Box::new(us.clone()),
                },
            ),
            (
                "throttled",
                Behaviour::FailFirst {
                    failures: 1,
                    status: 429,
                    then: Box::new(us),
                },
            ),
        ],
    );
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        [
            r#"{"event_id":"f","user_id":"flaky","event_type":"page_view"}"#,
            r#"{"event_id":"t","user_id":"throttled","event_type":"page_view"}"#,
            r#"{"event_id":"g","user_id":"ghost","event_type":"page_view"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        SEED_FILTER,
    );
    s.profile_api.retry_attempts = 3;
    s.profile_api.retry_backoff_ms = 20;
    let counts = run(&s, 1, &rt);
    // The flaky and the throttled user got their real profiles; the unknown one was
    // asked once and got an empty state.
    let mut got = receiver.event_ids();
    got.sort();
    assert_eq!(got, ["f", "t"]);
    assert_eq!(counts.fetch_errors, 1);
    let lookups = api.lookups();
    assert_eq!(lookups["flaky"], 3);
    assert_eq!(lookups["throttled"], 2);
    assert_eq!(lookups["ghost"], 1);

    // Without retries the first failure is final: an empty state, counted.
    let api2 = ProfileApi::start(
        &rt,
        [(
            "flaky",
            Behaviour::FailFirst {
                failures: 1,
                status: 500,
                then: Box::new(Behaviour::answer(json!({"country": "US"}), json!(null))),
            },
        )],
    );
    s.profile_api.base_url = api2.base_url();
    s.profile_api.retry_attempts = 0;
    let counts = run(&s, 1, &rt);
    assert_eq!(counts.fetch_errors, 3);
    assert_eq!(counts.passed, 0);
    assert_eq!(api2.lookups()["flaky"], 1);
}

/// Runs the job on a named pipe fed with `first`, then (once the Profile API saw one
/// look-up and a moment passed) `second`; returns the counts.
fn run_two_moments(
    rt: &tokio::runtime::Runtime,
    s: &event_trigger::config::Settings,
    api: &ProfileApi,
    first: &str,
    second: &str,
) -> event_trigger::counters::Counts {
    let fifo = s.source.path.clone().unwrap();
    let _ = std::fs::remove_file(&fifo);
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let requests = api.requests.clone();
    let (first, second) = (first.to_string(), second.to_string());
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        writeln!(pipe, "{first}").unwrap();
        pipe.flush().unwrap();
        while requests.lock().unwrap().len() < 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
        writeln!(pipe, "{second}").unwrap();
    });
    let counts = run(s, 1, rt);
    writer.join().unwrap();
    counts
}

#[test]
fn after_a_failed_look_up_the_user_is_looked_up_again_once_the_interval_passed() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let flaky = || {
        ProfileApi::start(
            &rt,
            [(
                "u",
                Behaviour::FailFirst {
                    failures: 1,
                    status: 500,
                    then: Box::new(Behaviour::answer(json!({"country": "US"}), json!(null))),
                },
            )],
        )
    };
    let first = r#"{"event_id":"e1","user_id":"u","event_type":"page_view"}"#;
    let second = r#"{"event_id":"e2","user_id":"u","event_type":"page_view"}"#;

    let api = flaky();
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &dir.path().join("events.pipe"),
        &api.base_url(),
        &receiver.url(),
        SEED_FILTER,
    );
    s.profile_api.retry_attempts = 0;
    s.profile_api.min_refetch_interval_ms = 50;
    let counts = run_two_moments(&rt, &s, &api, first, second);
    // The first event met the empty state; the second, later than the interval,
    // had the user looked up again, now with a profile.
    assert_eq!(api.lookups()["u"], 2);
    assert_eq!(receiver.event_ids(), ["e2"]);
    assert_eq!((counts.fetched, counts.fetch_errors), (2, 1));
    let body = &receiver.bodies.lock().unwrap()[0].0;
    assert_eq!(body["userProfile"]["country"], "US");
    let history: Vec<_> = body["eventHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(history, ["e1", "e2"], "what it did meanwhile is kept");

    // Within the interval the empty state stays.
    let api = flaky();
    let receiver = Receiver::start(&rt);
    s.profile_api.base_url = api.base_url();
    s.actions.webhook.url = receiver.url();
    s.profile_api.min_refetch_interval_ms = 60_000;
    let counts = run_two_moments(&rt, &s, &api, first, second);
    assert_eq!(api.lookups()["u"], 1);
    assert_eq!(counts.passed, 0);
}

/// `profile-api.max-requests-per-second`, measured from the API's side: no second holds
/// more requests than the rate and its burst (a tenth of it), and nothing is dropped:
/// the events of users waiting for the limiter wait with them.
#[test]
fn profile_api_requests_are_held_to_the_rate_limit() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(1200, 200, 21);
    let events = w.write_events(dir.path());
    let api = ProfileApi::start(&rt, w.behaviours());
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        SEED_FILTER,
    );
    let rate = 300;
    s.profile_api.max_requests_per_second = rate;
    let counts = run(&s, 2, &rt);
    let mut got = receiver.event_ids();
    got.sort();
    assert_eq!(got, w.expected_us_page_views(), "nothing dropped");

    let times: Vec<Instant> = api.requests.lock().unwrap().iter().map(|r| r.2).collect();
    assert_eq!(times.len() as u64, 3 * counts.fetched);
    let most_in_a_second = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    let allowed = (rate + rate / 10) as usize;
    // The server sees requests let go on time a little bunched when it is itself slow to
    // run (a busy machine): a quarter of slack for a second's window; the whole run's
    // average, below, is held tight.
    assert!(
        most_in_a_second <= allowed + allowed / 4,
        "{most_in_a_second} requests in a second, limit {rate}/s"
    );
    let first = times.iter().min().unwrap();
    let last = times.iter().max().unwrap();
    // At most the rate over the run, beyond a burst and as much again for the bunching
    // at its ends.
    let burst = (rate / 10) as usize;
    let least = Duration::from_secs_f64((times.len() - 2 * burst) as f64 / rate as f64);
    assert!(
        *last - *first >= least,
        "{} requests in {:?}, at {rate}/s they take at least {least:?}",
        times.len(),
        *last - *first
    );
}

/// Issue #5's several actions, from the list form of `actions:` in a config file: two
/// webhooks, one with a filter of its own, and a debug print whose filter passes
/// nothing; each receiver gets exactly its events.
#[test]
fn several_actions_each_get_the_events_their_filters_pass() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::generate(1500, 150, 31);
    let events = w.write_events(dir.path());
    let profiles = w.write_profiles(dir.path());
    let (all, long) = (Receiver::start(&rt), Receiver::start(&rt));
    let script = dir.path().join("filter.rhai");
    std::fs::write(&script, SEED_FILTER).unwrap();
    let cfg = dir.path().join("actions.yml");
    std::fs::write(
        &cfg,
        format!(
            "source: {{ type: file, path: \"{}\" }}\nprofile-api: {{ base-url: \"file://{}\" }}\nfilter: {{ script-path: \"{}\" }}\nactions:\n  - type: webhook\n    name: all\n    url: \"{}\"\n  - type: webhook\n    name: long-visits\n    url: \"{}\"\n    retry-attempts: 0\n    filter: 'event.duration > 500'\n  - type: debug\n    filter: 'false'\n",
            events.display(),
            profiles.display(),
            script.display(),
            all.url(),
            long.url()
        ),
    )
    .unwrap();
    let s = event_trigger::config::Settings::load(&cfg).unwrap();
    let counts = run(&s, 2, &rt);

    let expected = w.expected_us_page_views();
    let duration: HashMap<String, i64> = w
        .lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["event_id"].as_str()?.to_string(), v["duration"].as_i64()?)))
        .collect();
    let mut want_long: Vec<String> = expected
        .iter()
        .filter(|id| duration[*id] > 500)
        .cloned()
        .collect();
    want_long.sort();
    let sorted = |r: &Receiver| {
        let mut ids = r.event_ids();
        ids.sort();
        ids
    };
    assert_eq!(sorted(&all), expected);
    assert_eq!(sorted(&long), want_long);
    assert!(!want_long.is_empty() && want_long.len() < expected.len());
    assert_eq!(counts.passed, expected.len() as u64);
    assert_eq!(counts.actions_ok, (expected.len() + want_long.len()) as u64);
}

/// A request that has to connect takes a connection freed while its own is being made
/// (here a TLS handshake that takes 3 s), as hyper-util's client did, rather than waiting
/// for its own (found by a trial: against a server slow to take new connections, requests
/// waited on handshakes while kept connections went idle); its own is still made.
#[test]
fn a_request_takes_a_connection_freed_while_its_own_is_being_made() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, acceptor) = test_ca(dir.path());
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let handler = event_trigger::http_server::handler(|_req| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        event_trigger::http_server::reply(hyper::StatusCode::OK, "{}")
    });
    let addr = rt
        .block_on(event_trigger::http_server::serve_over(
            "127.0.0.1:0".parse().unwrap(),
            handler,
            move |stream| {
                let (acceptor, n) = (acceptor.clone(), count.fetch_add(1, Ordering::SeqCst));
                async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    acceptor.accept(stream).await
                }
            },
        ))
        .unwrap();
    let client = event_trigger::http_client::hyper_client(Some(&ca_file)).unwrap();
    let url = format!("https://localhost:{}/x", addr.port());
    let get = || event_trigger::http_client::get(&client, &url, 1024);
    let waited = rt.block_on(async {
        assert_eq!(get().await.unwrap().status, 200);
        // Parked once its answer is read (a moment after, by its own task).
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The first connection is busy for 200 ms when the second request comes.
        let (first, second) = tokio::join!(get(), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let started = Instant::now();
            get().await.map(|answer| (answer.status, started.elapsed()))
        });
        assert_eq!(first.unwrap().status, 200);
        let (status, waited) = second.unwrap();
        assert_eq!(status, 200);
        waited
    });
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A webhook receiver that answers the first request of each connection (200, the
/// connection kept alive) and closes the connection without a word when the next request
/// arrives on it: what a client meets when a server closes idle connections as requests
/// cross the close on the wire. Returns its address and the keys of the calls answered.
fn answering_once_per_connection(
    rt: &tokio::runtime::Runtime,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = answered.clone();
    rt.spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (mut read, mut buf, mut served) = (Vec::new(), [0u8; 8192], false);
                while let Ok(n @ 1..) = socket.read(&mut buf).await {
                    read.extend_from_slice(&buf[..n]);
                    let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(|v| v.trim().to_string())
                    };
                    let length: usize = header("content-length:").map_or(0, |n| n.parse().unwrap());
                    if read.len() < end + 4 + length {
                        continue;
                    }
                    if served {
                        return;
                    }
                    served = true;
                    read.drain(..end + 4 + length);
                    log.lock()
                        .unwrap()
                        .push(header("idempotency-key:").unwrap_or_default());
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                    if socket.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, answered)
}

/// Calls that cross a receiver's close of their kept connection go again on a new one
/// (they carry an `Idempotency-Key`): every event delivered once, none counted as a
/// retry (and none read as overload by the adaptive limit).
#[test]
fn calls_crossing_the_receivers_close_of_a_kept_connection_are_sent_again_at_once() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (addr, answered) = answering_once_per_connection(&rt);
    let w = Workload::generate(300, 30, 5);
    let s = file_job(dir.path(), &w, &format!("http://{addr}/x"), SEED_FILTER);
    let counts = run(&s, 2, &rt);
    let expected = w.expected_us_page_views();
    assert!(expected.len() > 5);
    assert_eq!(counts.actions_ok, expected.len() as u64);
    assert_eq!(counts.actions_retried, 0);
    assert_eq!(counts.actions_failed, 0);
    let mut keys = answered.lock().unwrap().clone();
    keys.sort();
    assert_eq!(keys, expected, "each answered once");
}

/// A Profile API and a webhook receiver over TLS on 127.0.0.1, with certificates of a
/// private CA: with `ca-file` set to that CA, look-ups and deliveries go through; without
/// it the certificate is refused (verification is on), the look-ups fail and the
/// deliveries go to the dead-letter file.
#[test]
fn tls_to_the_profile_api_and_webhooks_with_a_private_ca() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, acceptor) = test_ca(dir.path());
    let over_tls = |handler: event_trigger::http_server::Handler| {
        let acceptor = acceptor.clone();
        rt.block_on(event_trigger::http_server::serve_over(
            "127.0.0.1:0".parse().unwrap(),
            handler,
            move |stream| {
                let acceptor = acceptor.clone();
                async move { acceptor.accept(stream).await }
            },
        ))
        .unwrap()
    };
    let w = Workload::generate(400, 40, 41);
    let api_calls = Arc::new(AtomicU64::new(0));
    let users = w.users.clone();
    let calls = api_calls.clone();
    let api = over_tls(event_trigger::http_server::handler(move |req| {
        calls.fetch_add(1, Ordering::Relaxed);
        let path = req.uri().path().to_string();
        let users = users.clone();
        async move {
            let found = path
                .strip_prefix("/users/")
                .and_then(|r| r.rsplit_once('/'))
                .and_then(|(id, what)| {
                    let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
                    let (p, v, h) = users.get(id.as_ref())?;
                    Some(match what {
                        "profile" => p.to_string(),
                        "visit" => v.to_string(),
                        _ => h.to_string(),
                    })
                });
            match found {
                Some(body) => event_trigger::http_server::reply(hyper::StatusCode::OK, body),
                None => event_trigger::http_server::reply(hyper::StatusCode::NOT_FOUND, "{}"),
            }
        }
    }));
    let delivered = Arc::new(AtomicU64::new(0));
    let count = delivered.clone();
    let hook = over_tls(event_trigger::http_server::handler(move |_req| {
        count.fetch_add(1, Ordering::Relaxed);
        async { event_trigger::http_server::reply(hyper::StatusCode::OK, "{}") }
    }));
    let events = w.write_events(dir.path());
    let mut s = settings(
        dir.path(),
        &events,
        &format!("https://localhost:{}", api.port()),
        &format!("https://127.0.0.1:{}/hook", hook.port()),
        SEED_FILTER,
    );
    s.actions.webhook.retry_attempts = 0;
    s.profile_api.retry_attempts = 0;

    // Trusting the CA: everything goes through.
    s.profile_api.ca_file = Some(ca_file.clone());
    s.actions.webhook.ca_file = Some(ca_file.clone());
    let counts = run(&s, 2, &rt);
    let expected = w.expected_us_page_views().len() as u64;
    assert!(expected > 0);
    assert_eq!(counts.fetch_errors as usize, count_unknown(&w), "only 404s");
    assert_eq!(counts.actions_ok, expected);
    assert_eq!(delivered.load(Ordering::Relaxed), expected);

    // Not trusting it: refused.
    let before = api_calls.load(Ordering::Relaxed);
    s.profile_api.ca_file = None;
    s.actions.webhook.ca_file = None;
    s.actions.debug.enabled = false;
    s.profile_api.base_url = format!("https://localhost:{}", api.port());
    std::fs::write(&s.filter.script_path, "true").unwrap();
    s.dead_letter.path = Some(dir.path().join("dead.jsonl"));
    let counts = run(&s, 2, &rt);
    assert_eq!(
        api_calls.load(Ordering::Relaxed),
        before,
        "no request got through"
    );
    assert_eq!(counts.fetch_errors, counts.fetched, "every look-up refused");
    assert_eq!(counts.actions_ok, 0);
    assert_eq!(counts.actions_failed, counts.passed);
    let letters = DeadLetters::read(&dir.path().join("dead.jsonl")).unwrap();
    let reasons: Vec<_> = letters
        .iter()
        .filter(|l| l.kind == Kind::WebhookFailed)
        .map(|l| l.reason.clone())
        .collect();
    assert_eq!(reasons.len() as u64, counts.passed);
    assert!(reasons[0].contains("certificate"), "{}", reasons[0]);
}

/// Users the workload's events name that the API does not know.
fn count_unknown(w: &Workload) -> usize {
    let mut ids: Vec<String> = w
        .lines
        .iter()
        .filter_map(|l| event_trigger::wire::decode(l.as_bytes()).ok())
        .map(|e| e.user_id.to_string())
        .filter(|u| !w.users.contains_key(u))
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

/// A Profile API on a raw socket, for answers a well-behaved server cannot give: each
/// connection gets one answer, chosen by the user id in the request path, then is closed.
/// Returns the address and the lines of the request heads received.
fn raw_profile_api(rt: &tokio::runtime::Runtime) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    rt.spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let line = head.lines().next().unwrap_or("").to_string();
                log.lock().unwrap().extend(head.lines().map(String::from));
                let ok = |body: &str| {
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                };
                if line.contains("/users/reset/") {
                    // Promises 1,000 bytes, sends 10, and hangs up.
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"country\"")
                        .await;
                } else if line.contains("/users/huge/") {
                    // A body of 64 MB, streamed until the client stops reading.
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n[")
                        .await;
                    let chunk = vec![b' '; 1 << 16];
                    for _ in 0..1024 {
                        if conn.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                } else if line.contains("/users/bom/") {
                    // Each body after a UTF-8 byte order mark.
                    let body = match line {
                        l if l.contains("/profile ") => "\u{feff}{\"country\":\"FR\"}",
                        l if l.contains("/visit ") => "\u{feff} {\"actions\":2}",
                        _ => "\u{feff}[{\"event_type\":\"click\"}]",
                    };
                    let _ = conn.write_all(ok(body).as_bytes()).await;
                } else if line.contains("/profile ") {
                    let _ = conn.write_all(ok(r#"{"country":"US"}"#).as_bytes()).await;
                } else if line.contains("/visit ") {
                    let _ = conn.write_all(ok("null").as_bytes()).await;
                } else {
                    let _ = conn.write_all(ok("[]").as_bytes()).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[test]
fn a_body_cut_off_or_too_large_fails_the_look_up_odd_ids_keep_their_path_and_a_bom_is_skipped() {
    let rt = runtime();
    let (base, seen) = raw_profile_api(&rt);
    let api =
        event_trigger::profile_api::HttpProfileApi::new(&base, Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    let (reset, huge, odd) = rt.block_on(async {
        tokio::join!(
            api.fetch("reset"),
            api.fetch("huge"),
            api.fetch("a/b?c=%d é")
        )
    });
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded: {:?}",
        started.elapsed()
    );
    let reset = reset.expect_err("a body cut off is an error").to_string();
    assert!(reset.contains("/users/reset/"), "{reset}");
    let huge = huge.expect_err("a huge body is refused").to_string();
    assert!(huge.contains("larger than"), "{huge}");
    let odd = odd.expect("an id with /, ?, % and unicode is looked up");
    assert_eq!(odd.profile.country.as_deref(), Some("US"));
    // Bodies after a byte order mark are read, as the snapshot's lines are.
    let bom = rt
        .block_on(api.fetch("bom"))
        .expect("bodies after a BOM are read");
    assert_eq!(bom.profile.country.as_deref(), Some("FR"));
    assert_eq!(bom.visit.map(|v| v.actions), Some(2));
    assert_eq!(bom.history.len(), 1);
    // `.` and `..` cannot be path segments: URLs remove them (escaped too), and the
    // request went to `/users/profile` or `/profile`, its 404 read as an unknown user.
    for id in [".", ".."] {
        let err = rt.block_on(api.fetch(id)).expect_err("not looked up");
        assert!(
            err.to_string().contains("cannot be a URL path segment"),
            "{err}"
        );
        assert!(!err.is_transient());
    }
    let seen = seen.lock().unwrap();
    for what in ["profile", "visit", "history"] {
        let want = format!("GET /users/a%2Fb%3Fc%3D%25d%20%C3%A9/{what} HTTP/1.1");
        assert!(seen.contains(&want), "{want} in {seen:?}");
    }
    let paths = seen
        .iter()
        .filter_map(|l| l.strip_prefix("GET ")?.split(' ').next());
    for path in paths {
        assert_eq!(path.split('/').count(), 4, "/users/{{id}}/{{what}}: {path}");
    }
}

#[test]
fn the_auth_header_comes_from_a_file_goes_on_every_look_up_and_is_never_printed() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (base, seen) = raw_profile_api(&rt);
    let token = dir.path().join("token");
    std::fs::write(&token, "Bearer t0k3n-s3cr3t\n").unwrap();
    let mut s = event_trigger::config::ProfileApiSettings {
        base_url: base,
        auth_header_file: Some(token),
        ..Default::default()
    };
    let source = event_trigger::profile_api::ProfileSource::from_settings(&s).unwrap();
    let event_trigger::profile_api::ProfileSource::Http(api) = source else {
        panic!("an HTTP source")
    };
    let data = rt.block_on(api.fetch("u1")).unwrap();
    assert_eq!(data.profile.country.as_deref(), Some("US"));
    let seen = seen.lock().unwrap();
    let auth: Vec<_> = seen
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .collect();
    assert_eq!(auth.len(), 3, "one per request: {seen:?}");
    assert!(
        auth.iter().all(|l| l.ends_with(": Bearer t0k3n-s3cr3t")),
        "{auth:?}"
    );
    assert!(!format!("{s:?}").contains("t0k3n"));
    s.auth_header = Some(event_trigger::config::Secret::new("Bearer inline-t0k3n"));
    assert!(!format!("{s:?}").contains("t0k3n"));
    let both = event_trigger::profile_api::ProfileSource::from_settings(&s)
        .err()
        .expect("value and file together are refused")
        .to_string();
    assert!(both.contains("profile-api.auth-header"), "{both}");
    assert!(!both.contains("t0k3n"), "{both}");
    s.auth_header_file = Some(dir.path().join("missing"));
    s.auth_header = None;
    let missing = event_trigger::profile_api::ProfileSource::from_settings(&s)
        .err()
        .expect("a missing file is refused")
        .to_string();
    assert!(
        missing.contains("profile-api.auth-header-file"),
        "{missing}"
    );
}

/// 25 times more users than look-ups may be in flight, one of them sending 30% of the
/// events, against a slow API: the in-flight bound holds at the API, every event is
/// delivered once, each user is looked up once, and the hot user's history is in order.
#[test]
fn a_hot_user_and_many_more_users_than_look_up_slots_lose_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    const DELAY: Duration = Duration::from_millis(50);
    let users: Vec<String> = (0..200)
        .map(|u| format!("u{u:03}"))
        .chain(["hot".to_string()])
        .collect();
    let api = ProfileApi::start(
        &rt,
        users.iter().map(|u| {
            (
                u.clone(),
                Behaviour::Slow {
                    delay: DELAY,
                    profile: json!({"country": "US"}),
                    visit: json!({"actions": 0}),
                    history: json!([]),
                },
            )
        }),
    );
    let n = 2_000;
    // Three in ten events are the hot user's; the others go round the 200 in turn.
    let mut next = 0;
    let owners: Vec<String> = (0..n)
        .map(|i| {
            if i % 10 < 3 {
                "hot".to_string()
            } else {
                next += 1;
                format!("u{:03}", (next - 1) % 200)
            }
        })
        .collect();
    let user_of = |i: usize| owners[i].clone();
    let lines: String = (0..n)
        .map(|i| {
            json!({"event_id": format!("e{i}"), "user_id": user_of(i), "event_type": "page_view", "timestamp": i})
                .to_string()
                + "\n"
        })
        .collect();
    let events = dir.path().join("e.jsonl");
    std::fs::write(&events, lines).unwrap();
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        r#"user.country == "US""#,
    );
    s.profile_api.max_in_flight = 4;
    let workers = 2;
    let counts = run(&s, workers, &rt);
    assert_eq!(counts.passed, n as u64);
    let mut got = receiver.event_ids();
    got.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    want.sort();
    assert_eq!(got, want, "every event delivered once");
    let lookups = api.lookups();
    assert_eq!(lookups.len(), users.len());
    assert!(
        lookups.values().all(|&c| c == 1),
        "each user looked up once"
    );
    // The bound, seen from the API: no more look-ups start within one answer's delay
    // than there are slots (4 per worker).
    let mut starts: Vec<Instant> = api
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, what, _)| what == "profile")
        .map(|(_, _, at)| *at)
        .collect();
    starts.sort();
    let window = DELAY - Duration::from_millis(5);
    let busiest = (0..starts.len())
        .map(|i| {
            starts[i..]
                .iter()
                .take_while(|t| **t - starts[i] < window)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= 4 * workers,
        "{busiest} look-ups started within {window:?}"
    );
    // With its last event, the hot user's history is its last 100 events, in file order.
    let hot_events: Vec<String> = (0..n)
        .filter(|&i| user_of(i) == "hot")
        .map(|i| format!("e{i}"))
        .collect();
    let last = hot_events.last().unwrap().as_str();
    let history = receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|(b, _)| b["event"]["event_id"] == last)
        .map(|(b, _)| {
            b["eventHistory"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["event_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .next()
        .unwrap();
    assert_eq!(
        history,
        hot_events[hot_events.len() - 100..],
        "in order, the last 100"
    );
}

/// A million users in state at once (each sends an event, none of them known to the API,
/// so each gets an empty state), then the first thousand come back: each is looked
/// up once, and those coming back find their state (their second event sees a history of
/// two), so nothing was dropped to make room.
#[test]
fn a_million_users_in_state_keep_their_state() {
    use std::io::Write;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    const USERS: usize = 1_000_000;
    const BACK: usize = 1_000;
    let events = dir.path().join("e.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&events).unwrap());
    for i in 0..USERS + BACK {
        let user = i % USERS;
        writeln!(
            f,
            r#"{{"event_id":"e{i}","user_id":"u{user}","event_type":"page_view"}}"#
        )
        .unwrap();
    }
    drop(f);
    let profiles = dir.path().join("profiles.jsonl");
    std::fs::write(&profiles, "").unwrap();
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &format!("file://{}", profiles.display()),
        &receiver.url(),
        "history.len() == 2",
    );
    // A user unknown to the API is looked up again on its first event this long after
    // (README, `min-refetch-interval-ms`): on a loaded machine the run outlasted the
    // default minute and the thousand coming back were looked up again (CI saw it).
    s.profile_api.min_refetch_interval_ms = 3_600_000;
    let counts = run(&s, 2, &rt);
    assert_eq!(counts.events_read, (USERS + BACK) as u64);
    assert_eq!(counts.fetched, USERS as u64, "each user looked up once");
    assert_eq!(counts.passed, BACK as u64);
    let mut got = receiver.event_ids();
    let calls = got.len() as u64;
    got.sort();
    got.dedup();
    // Delivery is at least once: on a loaded machine a call that timed out was retried
    // after the receiver had it (CI saw it). Repeats only ever come from retries.
    assert!(
        calls - got.len() as u64 <= counts.actions_retried,
        "{} repeats, {} retries",
        calls - got.len() as u64,
        counts.actions_retried
    );
    let mut want: Vec<String> = (USERS..USERS + BACK).map(|i| format!("e{i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

/// What a run against the slow receiver gave.
struct SlowReceiverRun {
    counts: event_trigger::counters::Counts,
    calls: u64,
    distinct: u64,
    calls_per_s: f64,
}

/// `n` passing events, each a webhook call to a receiver of 8 slots of 50 ms (160 calls
/// a second at most, whatever the concurrency), with 1 s time-outs, at `-w 2`.
fn against_a_slow_receiver(
    rt: &tokio::runtime::Runtime,
    n: usize,
    concurrency: event_trigger::config::Concurrency,
) -> SlowReceiverRun {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles.jsonl");
    std::fs::write(&profiles, "").unwrap();
    let (receiver, base) = modest_service(rt, &profiles, 8, Duration::from_millis(50));
    let lines: String = (0..n)
        .map(|i| {
            json!({"event_id": format!("e{i}"), "user_id": format!("u{}", i % 97), "event_type": "page_view"})
                .to_string()
                + "\n"
        })
        .collect();
    let events = dir.path().join("e.jsonl");
    std::fs::write(&events, lines).unwrap();
    let mut s = settings(
        dir.path(),
        &events,
        &format!("file://{}", profiles.display()),
        &format!("{base}/webhook"),
        "true",
    );
    s.actions.webhook.timeout_ms = 1000;
    s.actions.webhook.concurrency = concurrency;
    let started = Instant::now();
    let counts = run(&s, 2, rt);
    let elapsed = started.elapsed().as_secs_f64();
    let distinct = receiver.distinct_webhooks() as u64;
    let calls = receiver.webhooks.load(Ordering::Relaxed);
    eprintln!(
        "{concurrency:?}: {calls} calls, {distinct} distinct, {} retries, {} failed, {elapsed:.2} s",
        counts.actions_retried, counts.actions_failed
    );
    SlowReceiverRun {
        counts,
        calls,
        distinct,
        calls_per_s: distinct as f64 / elapsed,
    }
}

/// The issue's slow receiver: by default every event is delivered, under 0.5% of the
/// calls are repeats, and the calls go at least at 80% of the receiver's capacity (no
/// fixed limit can beat that capacity, so this is within 20% of the best of them). The
/// old fixed 256 per worker queues the calls inside the receiver past their time-out:
/// retries, and repeats of calls the receiver took.
#[test]
fn against_a_slow_receiver_the_adaptive_limit_sends_everything_once_at_its_pace() {
    use event_trigger::config::Concurrency;
    let rt = runtime();
    let n = 480;
    let adaptive = against_a_slow_receiver(&rt, n, Concurrency::Adaptive);
    let c = adaptive.counts;
    assert_eq!(
        (c.passed, c.actions_ok, c.actions_failed),
        (n as u64, n as u64, 0)
    );
    assert_eq!(adaptive.distinct, n as u64, "none missed");
    let repeats = adaptive.calls - adaptive.distinct;
    assert!(
        repeats as f64 <= 0.005 * adaptive.calls as f64,
        "{repeats} repeats in {} calls",
        adaptive.calls
    );
    assert!(
        adaptive.calls_per_s >= 0.8 * 160.0,
        "{:.0} calls/s against a capacity of 160",
        adaptive.calls_per_s
    );

    let fixed = against_a_slow_receiver(&rt, n, Concurrency::Fixed(2 * 256));
    let repeats = fixed.calls - fixed.distinct;
    assert!(fixed.counts.actions_retried > 0, "time-outs, tried again");
    assert!(
        repeats as f64 > 0.005 * fixed.calls as f64,
        "{repeats} repeats in {} calls",
        fixed.calls
    );
}

/// A Profile API that becomes ten times slower mid-run: with the adaptive limit no
/// look-up times out, so no user gets an empty state (waiting after a failure is
/// off here, so any time-out would show). With as many requests at once as the
/// look-up slots allow (three per look-up, 256 look-ups per worker), they queue
/// inside the API past their time-out.
#[test]
fn a_profile_api_that_slows_down_mid_run_gets_fewer_requests_at_once_and_no_look_up_fails() {
    use event_trigger::config::Concurrency;
    let rt = runtime();
    let run_with = |concurrency: Concurrency| {
        let dir = tempfile::tempdir().unwrap();
        let users = 300;
        let profiles: String = (0..users)
            .map(|u| {
                json!({"user_id": format!("u{u}"), "profile": {"country": "US"}, "visit": null, "history": []})
                    .to_string()
                    + "\n"
            })
            .collect();
        let profiles_path = dir.path().join("profiles.jsonl");
        std::fs::write(&profiles_path, profiles).unwrap();
        let (api, base) = modest_service(&rt, &profiles_path, 8, Duration::from_millis(2));
        let lines: String = (0..users)
            .map(|u| {
                json!({"event_id": format!("e{u}"), "user_id": format!("u{u}"), "event_type": "page_view"})
                    .to_string()
                    + "\n"
            })
            .collect();
        let events = dir.path().join("e.jsonl");
        std::fs::write(&events, lines).unwrap();
        let receiver = Receiver::start(&rt);
        let mut s = settings(
            dir.path(),
            &events,
            &base,
            &receiver.url(),
            r#"user.country == "US""#,
        );
        s.profile_api.timeout_ms = 1000;
        s.profile_api.concurrency = concurrency;
        // After 50 users' look-ups, 40 ms a request: 200 requests a second at most.
        let slow_down = {
            let api = api.clone();
            std::thread::spawn(move || {
                while api.profile_requests.load(Ordering::Relaxed) < 150 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                api.set_service_time(Duration::from_millis(40));
            })
        };
        let counts = run(&s, 2, &rt);
        slow_down.join().unwrap();
        counts
    };
    let adaptive = run_with(Concurrency::Adaptive);
    assert_eq!(adaptive.fetched, 300);
    assert_eq!(adaptive.fetch_errors, 0, "no empty state");
    assert_eq!(adaptive.passed, 300);

    let fixed = run_with(Concurrency::Fixed(2 * 256 * 3));
    assert!(fixed.fetch_errors > 0, "{fixed:?}");
    assert!(fixed.passed < 300);
}

/// `profile-api.max-wait-on-failure-ms`: a look-up that still fails after its retries
/// is tried again with backoff, its user's events waiting, and gets the real profile;
/// an unknown user (404) gets the empty state at once. With 0 the failure is final.
#[test]
fn a_look_up_failing_for_a_while_is_waited_for_instead_of_giving_an_empty_checkpoint() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let api = ProfileApi::start(
        &rt,
        [(
            "flaky",
            Behaviour::FailFirst {
                failures: 6,
                status: 503,
                then: Box::new(Behaviour::answer(json!({"country": "US"}), json!(null))),
            },
        )],
    );
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        [
            r#"{"event_id":"f1","user_id":"flaky","event_type":"page_view"}"#,
            r#"{"event_id":"g","user_id":"ghost","event_type":"page_view"}"#,
            r#"{"event_id":"f2","user_id":"flaky","event_type":"page_view"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        SEED_FILTER,
    );
    s.profile_api.retry_attempts = 1;
    s.profile_api.retry_backoff_ms = 10;
    s.profile_api.max_wait_on_failure_ms = 20_000;
    let started = Instant::now();
    let counts = run(&s, 1, &rt);
    assert!(started.elapsed() < Duration::from_secs(15));
    let mut got = receiver.event_ids();
    got.sort();
    assert_eq!(
        got,
        ["f1", "f2"],
        "both of its events, judged on its profile"
    );
    assert_eq!(
        (counts.fetched, counts.fetch_errors),
        (2, 1),
        "the ghost's 404"
    );
    assert_eq!(
        api.lookups()["flaky"],
        7,
        "two tries each time, until the 7th"
    );
    assert_eq!(api.lookups()["ghost"], 1);

    // 0: the look-up fails after its retries, as the original job's.
    let api = ProfileApi::start(
        &rt,
        [(
            "flaky",
            Behaviour::FailFirst {
                failures: 6,
                status: 503,
                then: Box::new(Behaviour::answer(json!({"country": "US"}), json!(null))),
            },
        )],
    );
    s.profile_api.base_url = api.base_url();
    s.profile_api.max_wait_on_failure_ms = 0;
    let counts = run(&s, 1, &rt);
    assert_eq!((counts.fetch_errors, counts.passed), (2, 0));
    assert_eq!(api.lookups()["flaky"], 2);
}

/// `profile-api.min-refetch-interval-ms` holds for failed look-ups too: a user whose
/// look-up failed, who expires (a TTL shorter than the interval) and comes back within
/// the interval, starts over from the empty state without a request (it was looked
/// up again at once).
#[test]
fn a_user_whose_look_up_failed_is_not_looked_up_again_within_the_interval_after_expiry() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let api = ProfileApi::start(
        &rt,
        [(
            "u",
            Behaviour::FailFirst {
                failures: 1,
                status: 500,
                then: Box::new(Behaviour::answer(json!({"country": "US"}), json!(null))),
            },
        )],
    );
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &dir.path().join("events.pipe"),
        &api.base_url(),
        &receiver.url(),
        SEED_FILTER,
    );
    s.profile_api.retry_attempts = 0;
    s.profile_api.min_refetch_interval_ms = 60_000;
    s.engine.state_ttl_minutes = 0.001; // 60 ms: expired before the second event
    let first = r#"{"event_id":"e1","user_id":"u","event_type":"page_view"}"#;
    let second = r#"{"event_id":"e2","user_id":"u","event_type":"page_view"}"#;
    let counts = run_two_moments(&rt, &s, &api, first, second);
    assert_eq!(counts.expired, 1, "{counts:?}");
    assert_eq!(api.lookups()["u"], 1);
    assert_eq!((counts.fetched, counts.fetch_errors), (1, 1));
    assert_eq!(counts.passed, 0, "both judged on the empty state");
}

/// A receiver that answers calls of even-numbered events after 30 ms and the others at
/// once, recording `(user, number)` as each call ends: concurrent calls of one user
/// overtake each other there.
type Arrivals = Arc<Mutex<Vec<(String, u64)>>>;

fn uneven_receiver(rt: &tokio::runtime::Runtime) -> (String, Arrivals) {
    let got: Arrivals = Arc::default();
    let sink = got.clone();
    let handler = event_trigger::http_server::handler(move |req| {
        let sink = sink.clone();
        async move {
            let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
            let user = body["event"]["user_id"].as_str().unwrap().to_string();
            let n = body["event"]["timestamp"].as_u64().unwrap();
            if n.is_multiple_of(2) {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            sink.lock().unwrap().push((user, n));
            event_trigger::http_server::reply(hyper::StatusCode::OK, "{}")
        }
    });
    let addr = rt
        .block_on(event_trigger::http_server::serve(
            "127.0.0.1:0".parse().unwrap(),
            handler,
        ))
        .unwrap();
    (format!("http://{addr}/webhook"), got)
}

/// `actions.webhook.ordering`: `per-user` delivers each user's calls in event order
/// (a user's next call waits for its previous one) while users go concurrently; the
/// default (`any`) lets them overtake each other against a receiver whose answers take
/// uneven times.
#[test]
fn per_user_ordering_delivers_each_users_calls_in_event_order() {
    use event_trigger::config::{CallOrder, Concurrency};
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..200)
        .map(|n| {
            json!({"event_id": format!("e{n}"), "user_id": format!("u{}", n % 5), "event_type": "click", "timestamp": n})
                .to_string()
                + "\n"
        })
        .collect();
    let events = dir.path().join("e.jsonl");
    std::fs::write(&events, lines).unwrap();
    let profiles = dir.path().join("profiles.jsonl");
    std::fs::write(&profiles, "").unwrap();
    let out_of_order = |ordering: CallOrder| {
        let (url, got) = uneven_receiver(&rt);
        let mut s = settings(
            dir.path(),
            &events,
            &format!("file://{}", profiles.display()),
            &url,
            "true",
        );
        s.actions.webhook.ordering = ordering;
        s.actions.webhook.concurrency = Concurrency::Fixed(32);
        let counts = run(&s, 1, &rt);
        assert_eq!(counts.actions_ok, 200);
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 200);
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut overtaken = 0;
        for (user, n) in got.iter() {
            if last.get(user.as_str()).is_some_and(|prev| prev > n) {
                overtaken += 1;
            }
            last.insert(user, *n);
        }
        overtaken
    };
    assert_eq!(out_of_order(CallOrder::PerUser), 0);
    assert!(out_of_order(CallOrder::Any) > 0, "the receiver reorders");
}

/// Writes `lines` (one JSON value each) as an events file in `dir`.
fn write_lines(dir: &std::path::Path, lines: &[serde_json::Value]) -> std::path::PathBuf {
    let path = dir.join("events.jsonl");
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// The JSON type of each member of `v`, for comparing shapes.
fn shape(v: &serde_json::Value) -> Vec<(String, &'static str)> {
    let kind = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_f64() => "float",
        serde_json::Value::Number(_) => "integer",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    };
    let mut out: Vec<_> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), kind(v)))
        .collect();
    out.sort();
    out
}

#[test]
fn scalars_jackson_coerces_are_accepted_unless_strict_types() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let coerced = json!({"event_id": "coerced", "user_id": 12345, "event_type": "page_view",
        "timestamp": "1704067200000", "is_https": "true", "duration": 1.5,
        "parameters": {"custom_params": {"k": 1}, "utm_id": 7, "utm_source": "g"}});
    let typed = json!({"event_id": "typed", "user_id": "12346", "event_type": "page_view",
        "timestamp": 1704067200000_i64, "is_https": true, "duration": 1,
        "parameters": {"custom_params": {"k": 1}, "utm_id": "7", "utm_source": "g"}});
    let events = write_lines(dir.path(), &[coerced, typed]);
    let user = || Behaviour::answer(json!({"country": "US"}), json!(null));
    let api = ProfileApi::start(&rt, [("12345", user()), ("12346", user())]);
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        "true",
    );
    let counts = run(&s, 1, &rt);
    assert_eq!((counts.invalid, counts.passed), (0, 2));
    let bodies = receiver.bodies.lock().unwrap();
    let body = |id: &str| {
        bodies
            .iter()
            .map(|(b, _)| b)
            .find(|b| b["event"]["event_id"] == id)
            .unwrap_or_else(|| panic!("no webhook for {id}"))
            .clone()
    };
    let (c, t) = (body("coerced"), body("typed"));
    assert_eq!(c["userProfile"]["country"], "US", "looked up as \"12345\"");
    let (c, t) = (&c["event"], &t["event"]);
    assert_eq!(c["user_id"], "12345");
    assert_eq!(c["timestamp"], 1_704_067_200_000_i64);
    assert_eq!(c["is_https"], true);
    assert_eq!(c["duration"], 1, "truncated, as Jackson");
    assert_eq!(c["parameters"], t["parameters"], "utm_id as a string");
    assert_eq!(shape(c), shape(t), "the original's shape");
    assert_eq!(shape(&c["parameters"]), shape(&t["parameters"]));
    drop(bodies);

    // Strict: the mistyped event is invalid, as it was before coercion.
    s.source.strict_types = true;
    s.dead_letter.path = Some(dir.path().join("dead.jsonl"));
    let receiver = Receiver::start(&rt);
    s.actions.webhook.url = receiver.url();
    let counts = run(&s, 1, &rt);
    assert_eq!((counts.invalid, counts.passed), (1, 1));
    assert_eq!(receiver.event_ids(), ["typed"]);
    let letters = DeadLetters::read(&dir.path().join("dead.jsonl")).unwrap();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].reason.starts_with("bad_json: "), "{letters:?}");
}

#[test]
fn empty_user_id_or_event_type_is_dropped_as_missing_field() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let events = write_lines(
        dir.path(),
        &[
            json!({"event_id": "no-user", "user_id": "", "event_type": "page_view"}),
            json!({"event_id": "no-type", "user_id": "u1", "event_type": ""}),
            json!({"event_id": "ok", "user_id": "u1", "event_type": "click"}),
        ],
    );
    let user = Behaviour::answer(json!({"country": "US"}), json!(null));
    let api = ProfileApi::start(&rt, [("", user.clone()), ("u1", user)]);
    let receiver = Receiver::start(&rt);
    let mut s = settings(
        dir.path(),
        &events,
        &api.base_url(),
        &receiver.url(),
        "true",
    );
    s.dead_letter.path = Some(dir.path().join("dead.jsonl"));
    let counts = run(&s, 1, &rt);
    assert_eq!((counts.invalid, counts.passed), (2, 1));
    assert_eq!(receiver.event_ids(), ["ok"]);
    let letters = DeadLetters::read(&dir.path().join("dead.jsonl")).unwrap();
    let reasons: Vec<_> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons.iter().all(|r| r.starts_with("missing_field: ")),
        "{reasons:?}"
    );
    assert!(
        !api.lookups().contains_key(""),
        "the empty user is never looked up"
    );
}

/// `event_trigger_profile_answer_skipped_total{kind}` of this process so far.
fn answer_skipped(kind: &str) -> u64 {
    let text = event_trigger::metrics::global().encode();
    let prefix = format!("event_trigger_profile_answer_skipped_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[test]
fn a_profile_answer_with_bad_fields_degrades_per_field_over_http_and_file() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let events = write_lines(
        dir.path(),
        &[
            json!({"event_id": "a1", "user_id": "alice", "event_type": "page_view"}),
            json!({"event_id": "b1", "user_id": "bob", "event_type": "page_view"}),
        ],
    );
    let answers = [
        (
            "alice",
            json!({"user_id": "alice", "country": "US"}),
            json!({"uuid": "va", "actions": null, "timestamp": 5}),
            json!([{"event_id": "ha", "event_type": "click", "timestamp": 1}]),
        ),
        (
            "bob",
            json!({"user_id": "bob", "country": "DE", "city": {"name": "Berlin"}}),
            json!({"uuid": "vb", "actions": "7", "is_first_visit": "true"}),
            json!([
                {"event_id": "h1", "event_type": "click"},
                null,
                {"event_id": "h2", "event_type": "click", "timestamp": "yesterday"},
                {"event_id": "h3", "event_type": "purchase", "timestamp": "3"},
            ]),
        ),
    ];
    let api = ProfileApi::start(
        &rt,
        answers.iter().map(|(id, p, v, h)| {
            let b = Behaviour::Answer {
                profile: p.clone(),
                visit: v.clone(),
                history: h.clone(),
            };
            (*id, b)
        }),
    );
    let profiles = dir.path().join("profiles.jsonl");
    let lines: String = answers
        .iter()
        .map(|(id, p, v, h)| {
            json!({"user_id": id, "profile": p, "visit": v, "history": h}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&profiles, lines).unwrap();
    for base in [api.base_url(), format!("file://{}", profiles.display())] {
        let (fields, entries) = (answer_skipped("field"), answer_skipped("history_entry"));
        let receiver = Receiver::start(&rt);
        let s = settings(dir.path(), &events, &base, &receiver.url(), "true");
        let counts = run(&s, 1, &rt);
        assert_eq!((counts.fetch_errors, counts.passed), (0, 2), "{base}");
        let bodies = receiver.bodies.lock().unwrap();
        let body = |id: &str| {
            bodies
                .iter()
                .map(|(b, _)| b)
                .find(|b| b["event"]["event_id"] == id)
                .unwrap()
                .clone()
        };
        let history = |b: &serde_json::Value| -> Vec<String> {
            b["eventHistory"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["event_id"].as_str().unwrap().to_string())
                .collect()
        };
        let (a, b) = (body("a1"), body("b1"));
        assert_eq!(a["userProfile"]["country"], "US", "{base}");
        assert_eq!(a["currentVisit"]["actions"], 1, "null read as 0: {base}");
        assert_eq!(a["currentVisit"]["timestamp"], 5);
        assert_eq!(history(&a), ["ha", "a1"]);
        assert_eq!(b["userProfile"]["country"], "DE", "{base}");
        assert_eq!(b["userProfile"]["city"], serde_json::Value::Null);
        assert_eq!(b["currentVisit"]["actions"], 8, "\"7\" read as 7: {base}");
        assert_eq!(b["currentVisit"]["is_first_visit"], true);
        assert_eq!(history(&b), ["h1", "h3", "b1"], "{base}");
        assert_eq!(b["eventHistory"][0]["timestamp"], 0, "absent: 0");
        assert_eq!(b["eventHistory"][1]["timestamp"], 3);
        // Other tests of this process run at the same time, but none answers badly.
        assert!(answer_skipped("field") > fields, "{base}");
        assert!(answer_skipped("history_entry") >= entries + 2, "{base}");
    }
}
