//! Criterion benchmarks of the hot path: decoding, the filter, and the whole dataflow on
//! an in-memory workload (the sample events, repeated) at 1 and 2 workers.

use std::io::Write;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use event_trigger::config::{Settings, SourceType};
use event_trigger::dataflows::trigger::{self, Prepared};
use event_trigger::filter::{Filter, FilterLimits};
use event_trigger::model::{EnrichedView, HistoryEntry, Profile, ProfileData, UserState};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: &str = include_str!("../config/demo/events.jsonl");

fn valid_lines() -> Vec<&'static str> {
    EVENTS
        .lines()
        .filter(|l| event_trigger::decode::decode(l.as_bytes()).is_ok())
        .collect()
}

fn decode(c: &mut Criterion) {
    let lines = valid_lines();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("sample events", |b| {
        b.iter(|| {
            for l in &lines {
                std::hint::black_box(event_trigger::decode::decode(l.as_bytes()).unwrap());
            }
        })
    });
    g.finish();
}

fn filter(c: &mut Criterion) {
    let events: Vec<_> = valid_lines()
        .iter()
        .map(|l| event_trigger::decode::decode(l.as_bytes()).unwrap())
        .collect();
    let history: Vec<HistoryEntry> = events
        .iter()
        .take(27)
        .map(|e| HistoryEntry {
            event_id: e.event_id.clone(),
            event_name: e.event_name.clone(),
            event_type: Some(e.event_type.clone()),
            timestamp: e.timestamp,
            parameters: e.parameters.clone(),
        })
        .collect();
    let state = UserState::from_profile(
        ProfileData {
            profile: Profile {
                country: Some("US".into()),
                ..Default::default()
            },
            visit: None,
            history,
        },
        0,
    );
    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(events.len() as u64));
    for (name, script) in [
        (
            "seed",
            r#"event.eventType == "page_view" && user.country == "US""#,
        ),
        (
            "history walk",
            r#"history.filter(|h| h.event_type == "page_view").len() >= 3"#,
        ),
    ] {
        let f = Filter::compile(script, name, &FilterLimits::default()).unwrap();
        let mode = if f.is_native() {
            "native"
        } else {
            "interpreted"
        };
        g.bench_function(format!("{name} ({mode})"), |b| {
            b.iter(|| {
                for e in &events {
                    let view = EnrichedView {
                        event: e,
                        state: &state,
                    };
                    std::hint::black_box(f.judge(view));
                }
            })
        });
        if f.is_native() {
            g.bench_function(format!("{name} (interpreted)"), |b| {
                b.iter(|| {
                    for e in &events {
                        let view = EnrichedView {
                            event: e,
                            state: &state,
                        };
                        std::hint::black_box(f.interpret(view));
                    }
                })
            });
        }
    }
    g.finish();
}

fn dataflow(c: &mut Criterion) {
    const COPIES: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut f = std::fs::File::create(&events).unwrap();
    for _ in 0..COPIES {
        f.write_all(EVENTS.as_bytes()).unwrap();
    }
    drop(f);
    let script = dir.path().join("f.rhai");
    std::fs::write(
        &script,
        r#"event.eventType == "page_view" && user.country == "US""#,
    )
    .unwrap();
    let mut s = Settings::default();
    s.source.kind = SourceType::File;
    s.source.path = Some(events);
    s.profile_api.base_url = format!(
        "file://{}/config/demo/profiles.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    s.filter.script_path = script;
    // Debug prints with no log subscriber installed: the action's cost is the rendering.
    s.actions.debug.enabled = true;
    let prepared = Arc::new(Prepared::new(&s, true).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut g = c.benchmark_group("dataflow");
    g.sample_size(10);
    g.throughput(Throughput::Elements(
        (EVENTS.lines().count() * COPIES) as u64,
    ));
    for workers in [1, 2] {
        g.bench_function(format!("{workers} workers"), |b| {
            b.iter(|| {
                let config = timely::Config::process(workers);
                trigger::run((*prepared).clone(), config, runtime.handle().clone()).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, filter, dataflow);
criterion_main!(benches);
