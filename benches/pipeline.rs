//! Criterion benchmarks of the hot path: decoding, the filter, the compact history
//! (append, getters, webhook body), the user-state operator (hits, misses, expiry), and
//! the whole dataflow on an in-memory workload (the sample
//! events, repeated) at 1 and 2 workers, and checkpoint parts (writing and reading them).

use std::io::Write;
use std::rc::Rc;
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
        .filter(|l| event_trigger::wire::decode(l.as_bytes()).is_ok())
        .collect()
}

/// The sample events, decoded.
fn sample_events() -> Vec<event_trigger::model::UserEvent> {
    valid_lines()
        .iter()
        .map(|l| event_trigger::wire::decode(l.as_bytes()).unwrap())
        .collect()
}

/// `n` Profile API answers: the demo's profiles in turn, the `i`th for user `id(i)`.
fn demo_profiles(n: usize, id: impl Fn(usize) -> String) -> Vec<serde_json::Value> {
    let demo: Vec<serde_json::Value> = include_str!("../config/demo/profiles.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let mut p = demo[i % demo.len()].clone();
            let id = serde_json::Value::from(id(i));
            p["user_id"] = id.clone();
            p["profile"]["user_id"] = id;
            p
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let lines = valid_lines();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("sample events", |b| {
        b.iter(|| {
            for l in &lines {
                std::hint::black_box(event_trigger::wire::decode(l.as_bytes()).unwrap());
            }
        })
    });
    // What the reading worker pays per message at -w 2 and more instead of decoding it.
    g.bench_function("user_id of sample events, for routing", |b| {
        b.iter(|| {
            for l in &lines {
                std::hint::black_box(event_trigger::wire::route::user_id_of(l.as_bytes()));
            }
        })
    });
    g.finish();
}

fn filter(c: &mut Criterion) {
    let events = sample_events();
    let history: Vec<HistoryEntry> = events
        .iter()
        .take(27)
        .map(|e| HistoryEntry {
            event_id: e.event_id.as_ref().map(Into::into),
            event_name: e.event_name.as_ref().map(Into::into),
            event_type: Some((&e.event_type).into()),
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
            history: history.into(),
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

/// The compact history: appending an event's entry (at the 100-entry cap), reading a
/// field of every entry (what `history.filter(...)` does), and writing a webhook body;
/// the body also written by serde_json from the wire model, as before the compact form.
fn history(c: &mut Criterion) {
    use event_trigger::actions::Payload;
    use event_trigger::history::History;
    use event_trigger::model::EnrichedEvent;

    let events = sample_events();
    let mut full = History::default();
    for e in events.iter().cycle().take(100) {
        full.push_event(e);
    }
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("append at the cap", |b| {
        let mut h = full.clone();
        b.iter(|| {
            for e in &events {
                h.push_event(e);
                h.keep_newest(100);
            }
        })
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("event_type of 100 entries", |b| {
        b.iter(|| {
            std::hint::black_box(
                full.iter()
                    .filter(|e| e.event_type == Some("page_view"))
                    .count(),
            )
        })
    });
    let mut state = UserState::empty(0);
    state.history = Arc::new(full.clone());
    let enriched = EnrichedEvent::snapshot(events[0].clone(), &state, 1);
    let entries = full.to_entries();
    g.throughput(Throughput::Elements(1));
    g.bench_function("webhook body, 100 entries", |b| {
        b.iter(|| std::hint::black_box(Payload::new(&enriched, 1).to_json()))
    });
    g.bench_function("webhook body, 100 entries, wire model (serde_json)", |b| {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            event: &'a event_trigger::model::UserEvent,
            #[serde(rename = "userProfile")]
            user_profile: &'a Profile,
            #[serde(rename = "currentVisit")]
            current_visit: Option<&'a event_trigger::model::Visit>,
            #[serde(rename = "eventHistory")]
            event_history: &'a [HistoryEntry],
            #[serde(rename = "triggeredAt")]
            triggered_at: u64,
        }
        let wire = Wire {
            event: &enriched.event,
            user_profile: &enriched.profile,
            current_visit: enriched.visit.as_deref(),
            event_history: &entries,
            triggered_at: 1,
        };
        assert_eq!(
            serde_json::to_vec(&wire).unwrap(),
            Payload::new(&enriched, 1).to_json()
        );
        b.iter(|| std::hint::black_box(serde_json::to_vec(&wire).unwrap()))
    });
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
    // Debug prints with no log subscriber installed: a sink that discards, as the Flink
    // baseline's.
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

/// The user-state operator alone, on decoded events in memory (one worker, the seed's
/// filter, profiles from a file): every event a hit on a user's state; every event a
/// user's first (a look-up each); and every event finding its user's state expired
/// (the TTL shorter than the gap between a user's events: swept, then looked up again).
fn state(c: &mut Criterion) {
    use event_trigger::counters::Counters;
    use event_trigger::filter::reload::{FilterVersions, Filters};
    use event_trigger::operators::backpressure::Backlog;
    use event_trigger::operators::restore::restore_source;
    use event_trigger::operators::user_state::{UserStateConfig, UserStateSettings, user_state};
    use event_trigger::profile_api::ProfileSource;
    use event_trigger::store::Backend;
    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::operators::{Inspect, Probe};

    const EVENTS_PER_RUN: usize = 20_000;
    // Events per millisecond of event time; each millisecond is finished (its look-ups
    // done, its output out) before the next is sent, as in a running job.
    const PER_TICK: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    // As many profiles as events, so that a miss is always a user the API knows.
    let profiles = dir.path().join("profiles.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&profiles).unwrap());
    for p in demo_profiles(EVENTS_PER_RUN, |i| format!("u{i}")) {
        writeln!(f, "{p}").unwrap();
    }
    drop(f);
    let mut api = Settings::default().profile_api;
    api.base_url = format!("file://{}", profiles.display());
    let profiles = ProfileSource::from_settings(&api).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let samples = sample_events();
    // (users, ttl): event i is user i % users's, at time i / PER_TICK ms. Hits: 250
    // users, 1 look-up per 80 events. Misses: a new user every event. Expiry: 1,000
    // users, each back every 1 ms, past its TTL of 1 ms: swept, then looked up again.
    let scenarios = [
        ("hit", 250, 600_000),
        ("miss", EVENTS_PER_RUN, 600_000),
        ("expiry", PER_TICK, 1),
    ];
    let mut g = c.benchmark_group("state");
    g.sample_size(20);
    g.throughput(Throughput::Elements(EVENTS_PER_RUN as u64));
    for (name, users, ttl_ms) in scenarios {
        let events: Vec<_> = (0..EVENTS_PER_RUN)
            .map(|i| {
                let mut e = samples[i % samples.len()].clone();
                e.user_id = format!("u{}", i % users).into();
                e
            })
            .collect();
        let cfg = UserStateConfig {
            ttl_ms,
            max_history: 100,
            max_in_flight: 256,
            min_refetch_ms: 0,
            max_timers_per_user: 100,
            schedules: Default::default(),
            fire_pending_at_end: false,
        };
        g.bench_function(name, |b| {
            b.iter_batched(
                || events.clone(),
                |events| {
                    let (profiles, cfg, rt) =
                        (profiles.clone(), cfg.clone(), runtime.handle().clone());
                    timely::execute_directly(move |worker| {
                        let filter = Filter::compile(
                            r#"event.eventType == "page_view" && user.country == "US""#,
                            "bench",
                            &FilterLimits::default(),
                        )
                        .unwrap();
                        let filters = Filters::new(
                            filter,
                            FilterVersions::default(),
                            "bench".into(),
                            FilterLimits::default(),
                        );
                        let store = Backend::Memory.open(0).unwrap();
                        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                            let (input, stream) = scope.new_input();
                            let restored = restore_source(scope, None);
                            let settings = UserStateSettings {
                                config: cfg,
                                checkpoints: None,
                                profiles,
                                runtime: rt,
                                filters,
                                store,
                                backlog: Backlog::new(usize::MAX),
                                counters: Rc::new(Counters::default()),
                                stop: Default::default(),
                                arrived: None,
                            };
                            let (probe, _) = user_state(stream, restored, settings)
                                .inspect(|e| {
                                    std::hint::black_box(e);
                                })
                                .probe();
                            (input, probe)
                        });
                        for (i, e) in events.into_iter().enumerate() {
                            input.send(e);
                            if (i + 1) % PER_TICK == 0 {
                                let next = ((i + 1) / PER_TICK) as u64;
                                input.advance_to(next);
                                worker.step_while(|| probe.less_than(&next));
                            }
                        }
                    })
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// A checkpoint part of 10,000 users (histories of 1 to 100 sample events): writing it
/// (encoding, compressing, checksumming, fsync) and reading it back (checked, decoded).
fn checkpoint(c: &mut Criterion) {
    use event_trigger::history::History;

    let events = sample_events();
    let users: Vec<_> = (0..10_000usize)
        .map(|i| {
            let mut history = History::default();
            for e in events.iter().cycle().skip(i).take(1 + i % 100) {
                history.push_event(e);
            }
            let mut state = UserState::empty(i as u64);
            state.history = Arc::new(history);
            (format!("user_{i:07}").into(), state)
        })
        .collect();
    // A memory-backed directory where there is one: the disk's fsync is not the code's.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let path = dir.path().join("state-0.bin");
    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(20);
    g.throughput(Throughput::Elements(users.len() as u64));
    let written = dir.path().join("written.bin");
    g.bench_function("write a part of 10k users", |b| {
        b.iter(|| event_trigger::checkpoint::write_states(&written, users.clone()).unwrap())
    });
    event_trigger::checkpoint::write_states(&path, users.clone()).unwrap();
    g.bench_function("read a part of 10k users", |b| {
        b.iter(|| event_trigger::checkpoint::read_part(&path).unwrap().len())
    });
    let table = scattered_users(100_000);
    g.throughput(Throughput::Elements(table.len() as u64));
    g.bench_function("write a part of 100k scattered users", |b| {
        // The copy is the worker's, before the writer starts.
        b.iter_batched(
            || table.clone(),
            |copy| event_trigger::checkpoint::write_states(&written, copy).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Users as the checkpoint workload's table holds them: profiles and visits as the
/// Profile API gives them, 1 to 5 history entries, and each user's parts allocated
/// apart from the next one's in the order a part is written (a hash map's order is not
/// the order its users came in), so that the writer meets cold memory as it does at
/// 600k users.
fn scattered_users(n: usize) -> Vec<(event_trigger::model::Text, UserState)> {
    use event_trigger::profile_api::ProfileSnapshot;

    let mut jsonl = String::new();
    for (i, mut p) in demo_profiles(n, |i| format!("user_{i:07}"))
        .into_iter()
        .enumerate()
    {
        p["visit"]["uuid"] = format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15).into();
        p["history"] = serde_json::Value::Array(Vec::new());
        jsonl.push_str(&p.to_string());
        jsonl.push('\n');
    }
    let snapshot = ProfileSnapshot::from_reader(jsonl.as_bytes()).unwrap();
    let events = sample_events();
    let mut users: Vec<_> = (0..n)
        .map(|i| {
            let user = format!("user_{i:07}");
            let mut state = UserState::from_profile(snapshot.lookup(&user).unwrap(), 0);
            for e in events.iter().cycle().skip(i).take(1 + i % 5) {
                state.append_event(e, 100);
            }
            (user.into(), state)
        })
        .collect();
    // Fisher-Yates with a fixed xorshift: the same order every run.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..users.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        users.swap(i, (x % (i as u64 + 1)) as usize);
    }
    users
}

criterion_group!(
    benches, decode, filter, history, state, dataflow, checkpoint
);
criterion_main!(benches);
