//! The operator on one worker, its look-ups answered by the test (`FakeProfiles`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

use super::fake::FakeProfiles;
use super::{UserStateConfig, UserStateSettings, operator};
use crate::checkpoint::{CheckpointConfig, read_part};
use crate::counters::Counters;
use crate::filter::reload::{FilterVersions, Filters};
use crate::filter::{Filter, FilterLimits};
use crate::history::History;
use crate::model::{
    EnrichedEvent, HistoryEntry, PendingUser, Profile, ProfileData, SavedUser, Text, Time,
    UserEvent, UserState,
};
use crate::operators::backpressure::Backlog;
use crate::profile_api::{ProfileSnapshot, ProfileSource};
use crate::shutdown::{Ending, StopFlag};
use crate::store::{Backend, Store};

/// One operator under test, its inputs, its output and its look-ups.
pub(super) struct Rig {
    pub(super) events: InputHandleVec<Time, UserEvent>,
    pub(super) restored: Option<InputHandleVec<Time, (Text, SavedUser)>>,
    pub(super) probe: ProbeHandle<Time>,
    pub(super) out: Rc<RefCell<Vec<EnrichedEvent>>>,
    pub(super) profiles: FakeProfiles,
    pub(super) counters: Rc<Counters>,
    _runtime: tokio::runtime::Runtime,
}

pub(super) fn config(ttl_ms: u64) -> UserStateConfig {
    UserStateConfig {
        ttl_ms,
        max_history: 10,
        max_in_flight: 8,
        min_refetch_ms: 0,
        max_timers_per_user: 100,
        schedules: Default::default(),
        fire_pending_at_end: false,
    }
}

fn rig(
    worker: &mut Worker,
    config: UserStateConfig,
    checkpoints: Option<(CheckpointConfig, Ending)>,
) -> Rig {
    rig_in(
        worker,
        config,
        checkpoints,
        Backend::Memory.open(0).unwrap(),
    )
}

/// A rig keeping its users in `store`.
fn rig_in(
    worker: &mut Worker,
    config: UserStateConfig,
    checkpoints: Option<(CheckpointConfig, Ending)>,
    store: Store,
) -> Rig {
    let limits = FilterLimits::default();
    let filter = Filter::compile(r#"event.event_type != "skip""#, "test", &limits).unwrap();
    let filters = Filters::new(filter, FilterVersions::default(), "test".into(), limits);
    rig_with(
        worker,
        config,
        checkpoints,
        filters,
        StopFlag::default(),
        store,
    )
}

/// A rig whose operator judges with `filters`, keeps its users in `store`, and stops
/// when `stop` is set.
pub(super) fn rig_with(
    worker: &mut Worker,
    config: UserStateConfig,
    checkpoints: Option<(CheckpointConfig, Ending)>,
    filters: Filters,
    stop: StopFlag,
    store: Store,
) -> Rig {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let empty = ProfileSnapshot::from_reader(&b""[..]).unwrap();
    let counters = Rc::new(Counters::default());
    let settings = UserStateSettings {
        config,
        checkpoints,
        profiles: ProfileSource::Snapshot(Arc::new(empty)),
        runtime: runtime.handle().clone(),
        filters,
        store,
        backlog: Backlog::new(usize::MAX),
        counters: counters.clone(),
        stop,
        arrived: None,
    };
    let profiles = FakeProfiles::default();
    let out = Rc::new(RefCell::new(Vec::new()));
    let (events, restored, probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (events_in, events) = scope.new_input();
        let (restored_in, restored) = scope.new_input();
        let (fake, sink) = (profiles.clone(), out.clone());
        let (probe, _) = operator(events, restored, settings, move |_, a| fake.attach(a))
            .inspect(move |e: &EnrichedEvent| sink.borrow_mut().push(e.clone()))
            .probe();
        (events_in, restored_in, probe)
    });
    Rig {
        events,
        restored: Some(restored),
        probe,
        out,
        profiles,
        counters,
        _runtime: runtime,
    }
}

impl Rig {
    /// Ends the restore (there is nothing to restore).
    pub(super) fn no_restore(&mut self) {
        self.restored = None;
    }

    pub(super) fn send(&mut self, time: Time, user: &str, id: &str) {
        if *self.events.time() < time {
            self.events.advance_to(time);
        }
        self.events.send(event(user, id));
    }

    /// Steps until `done`, failing after a few seconds.
    pub(super) fn step_until(&self, worker: &mut Worker, mut done: impl FnMut(&Rig) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out");
            worker.step();
        }
    }

    /// Steps until the probe passes every time before `time`.
    pub(super) fn settle(&self, worker: &mut Worker, time: Time) {
        self.step_until(worker, |r| !r.probe.less_than(&time));
    }

    pub(super) fn idle(&self, worker: &mut Worker) {
        for _ in 0..50 {
            worker.step();
        }
    }

    pub(super) fn emitted(&self) -> Vec<String> {
        let out = self.out.borrow();
        out.iter()
            .map(|e| e.event.event_id.as_deref().unwrap_or("").to_string())
            .collect()
    }

    pub(super) fn started(&self) -> Vec<String> {
        self.profiles
            .started()
            .iter()
            .map(|u| u.to_string())
            .collect()
    }
}

/// Checkpoints every second from an epoch pinned past the wall clock (so the run's
/// epochs are known): that epoch, and the config.
fn pinned(dir: std::path::PathBuf, full_every: usize) -> (Time, CheckpointConfig) {
    let start = (crate::clock::now_ms() / 1000 + 10) * 1000;
    let cfg = CheckpointConfig {
        dir,
        interval_ms: 1000,
        retained: 10,
        floor_epoch: start,
        full_every,
        compress: true,
        compress_deltas: true,
    };
    (start, cfg)
}

pub(super) fn event(user: &str, id: &str) -> UserEvent {
    UserEvent {
        event_id: Some(id.into()),
        user_id: user.into(),
        event_type: "click".into(),
        ..UserEvent::default()
    }
}

pub(super) fn profile(country: &str) -> ProfileData {
    ProfileData {
        profile: Profile {
            country: Some(country.into()),
            ..Profile::default()
        },
        visit: None,
        history: Default::default(),
    }
}

pub(super) fn history_ids(history: &History) -> Vec<String> {
    history
        .iter()
        .map(|h| h.event_id.unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_users_first_event_is_looked_up_applied_judged_and_emitted() {
    timely::execute_directly(|worker| {
        let mut r = rig(worker, config(60_000), None);
        r.no_restore();
        r.send(1000, "u1", "a");
        r.events.advance_to(1001);
        r.step_until(worker, |r| r.started() == ["u1"]);
        assert!(r.probe.less_than(&1001), "held while looked up");
        r.profiles.answer("u1", Ok(profile("FR")));
        r.settle(worker, 1001);
        assert_eq!(r.emitted(), ["a"]);
        let out = r.out.borrow();
        assert_eq!(out[0].profile.country.as_deref(), Some("FR"));
        assert_eq!(history_ids(&out[0].history), ["a"]);
        let counts = r.counters.counts();
        assert_eq!((counts.fetched, counts.passed), (1, 1));
        assert_eq!(r.counters.users.get(), 1);
    });
}

/// A passing event's visit and history are shared with the state, not copied: the
/// user's next event copies them only while the snapshot is still on its way, so each
/// output keeps what the state was when its own event passed, even when the events
/// are applied in one batch.
#[test]
fn each_passing_event_keeps_the_visit_and_history_of_its_own_time() {
    timely::execute_directly(|worker| {
        let mut r = rig(worker, config(60_000), None);
        r.no_restore();
        for id in ["a", "b", "c"] {
            r.send(1000, "u1", id);
        }
        r.events.advance_to(1001);
        r.step_until(worker, |r| r.started() == ["u1"]);
        let mut data = profile("FR");
        data.visit = Some(crate::model::Visit {
            uuid: Some("v1".into()),
            actions: 1,
            ..Default::default()
        });
        r.profiles.answer("u1", Ok(data));
        r.settle(worker, 1001);
        assert_eq!(r.emitted(), ["a", "b", "c"]);
        let out = r.out.borrow();
        let seen: Vec<(i64, Vec<String>)> = out
            .iter()
            .map(|e| (e.visit.as_ref().unwrap().actions, history_ids(&e.history)))
            .collect();
        let ids = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            seen,
            [
                (2, ids(&["a"])),
                (3, ids(&["a", "b"])),
                (4, ids(&["a", "b", "c"]))
            ]
        );
    });
}

/// A user's batches keep their order on their way to the user's worker, among batches
/// of other times too. timely's own `exchange` sorts the batches it takes at once by
/// time, unstably: of 100 batches of each of three users at three times, interleaved,
/// some came out swapped (found by the Kafka tests at two workers).
#[test]
fn batches_keep_their_order_on_the_way_to_the_users_worker() {
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::generic::operator::source;
    timely::execute_directly(|worker| {
        let got = Rc::new(RefCell::new(Vec::new()));
        let sink = got.clone();
        let probe = worker.dataflow::<Time, _, _>(|scope| {
            let batches = source(scope, "Interleaved", |cap, _| {
                let mut cap = Some(cap);
                move |output| {
                    let Some(cap) = cap.take() else { return };
                    let caps: Vec<_> = [0, 500, 1000].iter().map(|t| cap.delayed(t)).collect();
                    for i in 0..100 {
                        for (n, cap) in caps.iter().enumerate() {
                            let mut batch = vec![event(&format!("u{n}"), &format!("{i:03}"))];
                            output.session(cap).give_container(&mut batch);
                        }
                    }
                }
            });
            let (probe, arrived) = super::to_users_workers(batches).probe();
            // In arrival order (`inspect` too sorts what it takes by time).
            arrived.sink(Pipeline, "Collect", move |(input, _)| {
                input.for_each(|_, batch| {
                    for e in batch.iter() {
                        let id = e.event_id.as_deref().unwrap_or_default().to_string();
                        sink.borrow_mut().push((e.user_id.to_string(), id));
                    }
                })
            });
            probe
        });
        while !probe.done() {
            worker.step();
        }
        let got = got.borrow();
        let want: Vec<String> = (0..100).map(|i| format!("{i:03}")).collect();
        for n in 0..3 {
            let user = format!("u{n}");
            let ids: Vec<String> = got
                .iter()
                .filter(|(u, _)| *u == user)
                .map(|(_, id)| id.clone())
                .collect();
            assert_eq!(ids, want, "{user}");
        }
    });
}

#[test]
fn events_during_a_lookup_wait_and_are_applied_in_order_once_it_completes() {
    timely::execute_directly(|worker| {
        let mut r = rig(worker, config(60_000), None);
        r.no_restore();
        r.send(1000, "u1", "a");
        r.send(1001, "u1", "b");
        r.send(1001, "u1", "skip-me");
        r.send(1002, "u1", "c");
        r.events.advance_to(1003);
        r.idle(worker);
        assert_eq!(r.started(), ["u1"], "one look-up for the user");
        assert!(r.probe.less_than(&1001), "the first event's time is held");
        assert!(r.emitted().is_empty());
        r.profiles.answer("u1", Ok(profile("FR")));
        r.settle(worker, 1003);
        assert_eq!(r.emitted(), ["a", "b", "skip-me", "c"]);
        let out = r.out.borrow();
        assert_eq!(history_ids(&out[3].history), ["a", "b", "skip-me", "c"]);
        // Applied to the state, not looked up again.
        drop(out);
        r.send(1003, "u1", "d");
        r.events.advance_to(1004);
        r.settle(worker, 1004);
        assert_eq!(r.started(), ["u1"]);
        assert_eq!(r.emitted().last().map(String::as_str), Some("d"));
    });
}

#[test]
fn a_rejected_event_is_applied_but_not_emitted() {
    timely::execute_directly(|worker| {
        let mut r = rig(worker, config(60_000), None);
        r.no_restore();
        let mut skip = event("u1", "s");
        skip.event_type = "skip".into();
        r.events.advance_to(1000);
        r.events.send(skip);
        r.send(1001, "u1", "a");
        r.events.advance_to(1002);
        r.step_until(worker, |r| r.started() == ["u1"]);
        r.profiles.answer("u1", Ok(profile("FR")));
        r.settle(worker, 1002);
        assert_eq!(r.emitted(), ["a"]);
        assert_eq!(history_ids(&r.out.borrow()[0].history), ["s", "a"]);
        assert_eq!(r.counters.counts().rejected, 1);
    });
}

#[test]
fn an_idle_user_expires_by_the_frontier_alone() {
    timely::execute_directly(|worker| {
        let mut r = rig(worker, config(100), None);
        r.no_restore();
        r.send(1000, "u1", "a");
        r.events.advance_to(1001);
        r.step_until(worker, |r| r.started() == ["u1"]);
        r.profiles.answer("u1", Ok(profile("FR")));
        r.settle(worker, 1001);
        assert_eq!(r.counters.users.get(), 1);
        r.events.advance_to(1099);
        r.settle(worker, 1099);
        assert_eq!(r.counters.counts().expired, 0, "not idle for the TTL yet");
        r.events.advance_to(1100);
        r.settle(worker, 1100);
        assert_eq!(r.counters.counts().expired, 1);
        assert_eq!(r.counters.users.get(), 0);
        // Back after expiring: looked up again.
        r.send(1200, "u1", "b");
        r.events.advance_to(1201);
        r.step_until(worker, |r| r.started() == ["u1", "u1"]);
        r.profiles.answer("u1", Ok(profile("FR")));
        r.settle(worker, 1201);
        assert_eq!(r.emitted(), ["a", "b"]);
    });
}

#[test]
fn a_snapshot_saves_a_hanging_lookup_as_pending_and_does_not_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    timely::execute_directly(move |worker| {
        let (start, cfg) = pinned(path, 1);
        let mut r = rig(
            worker,
            config(60_000),
            Some((cfg.clone(), Ending::default())),
        );
        r.no_restore();
        r.send(start + 100, "u1", "a");
        r.send(start + 200, "u2", "b");
        r.send(start + 300, "u2", "c");
        r.events.advance_to(start + 400);
        r.step_until(worker, |r| r.started() == ["u1", "u2"]);
        r.profiles.answer("u1", Ok(profile("FR")));
        r.step_until(worker, |r| r.emitted() == ["a"]);
        assert!(r.probe.less_than(&(start + 201)), "u2's events are held");
        let epoch = start + 1000;
        r.events.advance_to(epoch);
        // The checkpoint has u2's events: their holds move to the epoch.
        r.settle(worker, epoch);
        assert!(r.probe.less_than(&(epoch + 1)), "held at the epoch");
        let mut part = read_part(&cfg.state_path(epoch, 0)).unwrap();
        part.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(part.len(), 2);
        let (u1, SavedUser::State(state)) = &part[0] else {
            panic!("u1 is saved with its state: {:?}", part[0]);
        };
        assert_eq!(&**u1, "u1");
        assert_eq!(history_ids(&state.history), ["a"]);
        let SavedUser::Pending(pending) = &part[1].1 else {
            panic!("u2 is saved as pending: {:?}", part[1]);
        };
        assert_eq!(&*part[1].0, "u2");
        let saved: Vec<_> = pending
            .events
            .iter()
            .map(|(t, e)| (*t, e.event_id.clone()))
            .collect();
        assert_eq!(
            saved,
            [
                (start + 200, Some("b".into())),
                (start + 300, Some("c".into()))
            ]
        );
        // The look-up completes later: its events are applied, in order.
        // (The frontier stays at the epoch until the next epoch's part is written.)
        r.profiles.answer("u2", Ok(profile("DE")));
        r.step_until(worker, |r| r.emitted() == ["a", "b", "c"]);
    });
}

#[test]
fn restored_users_are_served_and_restored_pending_ones_looked_up_again() {
    timely::execute_directly(|worker| {
        let mut r = rig(worker, config(60_000), None);
        let mut known = UserState::from_profile(profile("FR"), 900);
        known.append_history(&History::from_entries(&[entry("old")]), 10);
        let pending = PendingUser {
            before: None,
            events: vec![(950, event("u2", "p"))],
        };
        let mut restored = r.restored.take().unwrap();
        restored.send(("u1".into(), SavedUser::State(known)));
        restored.send(("u2".into(), SavedUser::Pending(pending)));
        drop(restored);
        r.send(1000, "u1", "a");
        r.events.advance_to(1001);
        r.step_until(worker, |r| r.started() == ["u2"]);
        r.idle(worker);
        assert_eq!(r.emitted(), ["a"], "u1 served from its restored state");
        assert_eq!(history_ids(&r.out.borrow()[0].history), ["old", "a"]);
        assert!(r.probe.less_than(&1001), "u2's restored event is held");
        r.profiles.answer("u2", Ok(profile("DE")));
        r.settle(worker, 1001);
        assert_eq!(r.emitted(), ["a", "p"]);
        assert_eq!(r.started(), ["u2"]);
        assert_eq!(r.counters.counts().restored, 2);
    });
}

fn entry(id: &str) -> HistoryEntry {
    HistoryEntry {
        event_id: Some(id.into()),
        event_name: None,
        event_type: Some("click".into()),
        timestamp: 0,
        parameters: None,
    }
}

#[test]
fn a_failed_lookup_is_tried_again_after_the_interval_keeping_the_events_since() {
    timely::execute_directly(|worker| {
        let mut r = rig(
            worker,
            UserStateConfig {
                min_refetch_ms: 100,
                ..config(60_000)
            },
            None,
        );
        r.no_restore();
        r.send(1000, "u1", "a");
        r.events.advance_to(1001);
        r.step_until(worker, |r| r.started() == ["u1"]);
        let down = crate::profile_api::FetchError::Status {
            url: "test".into(),
            status: 503,
        };
        r.profiles.answer("u1", Err(down));
        r.settle(worker, 1001);
        assert_eq!(r.counters.counts().fetch_errors, 1);
        r.send(1050, "u1", "b");
        r.events.advance_to(1051);
        r.settle(worker, 1051);
        assert_eq!(r.started(), ["u1"], "not before the interval");
        r.send(1100, "u1", "c");
        r.events.advance_to(1101);
        r.step_until(worker, |r| r.started() == ["u1", "u1"]);
        let mut data = profile("FR");
        data.history = vec![entry("api")].into();
        r.profiles.answer("u1", Ok(data));
        r.settle(worker, 1101);
        assert_eq!(r.emitted(), ["a", "b", "c"]);
        let out = r.out.borrow();
        assert_eq!(out[2].profile.country.as_deref(), Some("FR"));
        assert_eq!(history_ids(&out[2].history), ["api", "a", "b", "c"]);
    });
}

/// The clock of an ending run jumps to its final epoch; the TTL must not count that jump
/// (users idle for less than the TTL by the wall clock were expired, and missing from the
/// final checkpoint, when it waited for a look-up).
#[test]
fn an_ending_run_expires_no_user_by_its_clock_jump_to_the_final_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    timely::execute_directly(move |worker| {
        let (mut r, life, start, cfg) = ending_rig(worker, path);
        r.send(start + 100, "u1", "a");
        r.send(start + 200, "u2", "b");
        r.events.advance_to(start + 300);
        r.step_until(worker, |r| r.started() == ["u1", "u2"]);
        r.profiles.answer("u1", Ok(profile("FR")));
        r.step_until(worker, |r| r.emitted() == ["a"]);
        life.begin_ending();
        // The final epoch, past u1's TTL; the final snapshot waits for u2's look-up.
        let last = start + 5000;
        r.events.advance_to(last);
        r.idle(worker);
        r.profiles.answer("u2", Ok(profile("DE")));
        r.step_until(worker, |r| r.emitted() == ["a", "b"]);
        assert_eq!(final_part_users(&r, worker, &cfg, last), ["u1", "u2"]);
        assert_eq!(r.counters.counts().expired, 0);
    });
}

/// A rig whose checkpoints are pinned to start in the future, and the lifecycle whose
/// ending it reads.
fn ending_rig(
    worker: &mut Worker,
    path: std::path::PathBuf,
) -> (Rig, crate::shutdown::Lifecycle, Time, CheckpointConfig) {
    let (start, cfg) = pinned(path, 1);
    let life = crate::shutdown::Lifecycle::new(StopFlag::default());
    let mut r = rig(worker, config(2000), Some((cfg.clone(), life.ending())));
    r.no_restore();
    (r, life, start, cfg)
}

/// The users of this worker's part of `epoch`, once written, sorted.
fn final_part_users(
    r: &Rig,
    worker: &mut Worker,
    cfg: &CheckpointConfig,
    epoch: Time,
) -> Vec<String> {
    r.step_until(worker, |_| cfg.state_path(epoch, 0).exists());
    let mut users: Vec<String> = read_part(&cfg.state_path(epoch, 0))
        .unwrap()
        .into_iter()
        .map(|(u, _)| u.to_string())
        .collect();
    users.sort();
    users
}

/// A run stopped within its restored epoch ends a step after it, off the interval's grid
/// (`Coordinator::final_epoch`): its final snapshot is taken there, with every user.
#[test]
fn the_final_snapshot_is_taken_at_a_final_epoch_off_the_grid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    timely::execute_directly(move |worker| {
        let (mut r, life, start, cfg) = ending_rig(worker, path);
        r.send(start, "u1", "a");
        r.events.advance_to(start + 1);
        r.step_until(worker, |r| r.started() == ["u1"]);
        r.profiles.answer("u1", Ok(profile("FR")));
        r.step_until(worker, |r| r.emitted() == ["a"]);
        let last = start + 400;
        life.begin_ending();
        life.end_at(last);
        r.events.advance_to(last);
        assert_eq!(final_part_users(&r, worker, &cfg, last), ["u1"]);
    });
}

/// Waits for this worker's part of `epoch`, completes the checkpoint and reads it back:
/// each user as `id:history ids` (or `id:pendingN`), and the part's `records` (a delta's).
fn completed(
    r: &Rig,
    worker: &mut Worker,
    cfg: &CheckpointConfig,
    epoch: Time,
) -> (Vec<String>, Option<u64>) {
    use crate::checkpoint::manifest;
    // Until the operator has seen its part written (the probe passes the epoch): the
    // next epoch's TTL sweep then never runs before its snapshot.
    r.step_until(worker, |r| {
        cfg.state_path(epoch, 0).exists() && !r.probe.less_than(&epoch)
    });
    manifest::write_offsets(cfg, epoch, 0, &manifest::OffsetsPart::default()).unwrap();
    let m = manifest::complete(cfg, epoch, 1).unwrap();
    let latest = manifest::find_latest(&cfg.dir).unwrap();
    assert_eq!(latest.manifest.epoch, epoch);
    let mut users: Vec<String> = latest
        .read_users()
        .unwrap()
        .into_iter()
        .map(|(u, saved)| match saved {
            SavedUser::State(s) => format!("{u}:{}", history_ids(&s.history).join(",")),
            SavedUser::Pending(p) => format!("{u}:pending{}", p.events.len()),
        })
        .collect();
    users.sort();
    assert_eq!(m.users(), users.len() as u64);
    (users, m.parts[0].records)
}

/// Users u1, u2 and u3 with an event each (a, b, c at 100-300 after `start`), looked up.
fn three_users_looked_up(r: &mut Rig, worker: &mut Worker, start: Time) {
    for (t, u, id) in [(100, "u1", "a"), (200, "u2", "b"), (300, "u3", "c")] {
        r.send(start + t, u, id);
    }
    r.events.advance_to(start + 400);
    r.step_until(worker, |r| r.started().len() == 3);
    for u in ["u1", "u2", "u3"] {
        r.profiles.answer(u, Ok(profile("FR")));
    }
}

/// A state that the TTL emptied goes on with deltas: a whole part of no users is still
/// the process's string dictionary (up to 64 MiB), which an idle job wrote every interval.
#[test]
fn a_state_the_ttl_emptied_goes_on_with_deltas() {
    // A running job's dictionary, as the whole part holds it: run alone, the test's few
    // strings made a whole part so small that the empty deltas outgrew it (the test
    // passed only beside the others, whose strings the process's dictionary also holds).
    for i in 0..2_000 {
        crate::dict::intern(&format!("ttl-emptied-dictionary-word-{i}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let seen = timely::execute_directly(move |worker| {
        let (mut r, start, cfg) = delta_rig(worker, path, 10, None, 1500, true);
        three_users_looked_up(&mut r, worker, start);
        let mut seen = Vec::new();
        for epoch in 1..=5 {
            r.events.advance_to(start + epoch * 1000);
            let (users, records) = completed(&r, worker, &cfg, start + epoch * 1000);
            seen.push((users.len(), records.is_some()));
        }
        seen
    });
    // Whole at first; the users, idle since 100-300 with a TTL of 1.5 s, are swept after
    // the part of 2000.
    assert_eq!(
        seen,
        [(3, false), (3, true), (0, true), (0, true), (0, true)]
    );
}

/// The state's size (`event_trigger_state_bytes`) follows the users a delta's worker
/// holds: a delta's own bytes are only what changed, so the gauge is the whole part's
/// bytes per user times the users now (it stayed at the whole part's while users came).
#[test]
fn the_state_size_follows_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (whole, after_delta) = timely::execute_directly(move |worker| {
        let (mut r, start, cfg) = delta_rig(worker, path, 10, None, 60_000, true);
        three_users_looked_up(&mut r, worker, start);
        r.events.advance_to(start + 1000);
        assert_eq!(completed(&r, worker, &cfg, start + 1000).1, None, "whole");
        let whole = r.counters.state_bytes.get();
        for (t, u, id) in [(1100, "u4", "d"), (1200, "u5", "e"), (1300, "u6", "f")] {
            r.send(start + t, u, id);
        }
        r.events.advance_to(start + 1400);
        r.step_until(worker, |r| r.started().len() == 6);
        for u in ["u4", "u5", "u6"] {
            r.profiles.answer(u, Ok(profile("FR")));
        }
        r.events.advance_to(start + 2000);
        let (users, records) = completed(&r, worker, &cfg, start + 2000);
        assert_eq!(
            (users.len(), records),
            (6, Some(3)),
            "a delta of the new users"
        );
        (whole, r.counters.state_bytes.get())
    });
    assert!(whole > 0);
    // The dictionary's share of the whole part is counted per user too: an estimate.
    assert!(
        after_delta > whole * 3 / 2,
        "6 users against the 3 of the whole part: {after_delta} against {whole}"
    );
}

/// When every user changed since the last part, the next part is whole: a delta of them
/// all would hold as much and need its base read too.
#[test]
fn a_part_after_every_user_changed_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    timely::execute_directly(move |worker| {
        let (start, cfg) = pinned(path, 10);
        let mut r = rig(
            worker,
            config(60_000),
            Some((cfg.clone(), Ending::default())),
        );
        r.no_restore();
        three_users_looked_up(&mut r, worker, start);
        r.events.advance_to(start + 1000);
        assert_eq!(
            completed(&r, worker, &cfg, start + 1000).1,
            None,
            "a run's first"
        );
        r.send(start + 1100, "u1", "d");
        r.events.advance_to(start + 2000);
        assert_eq!(
            completed(&r, worker, &cfg, start + 2000).1,
            Some(1),
            "one changed"
        );
        for (t, u, id) in [(2100, "u1", "e"), (2200, "u2", "f"), (2300, "u3", "g")] {
            r.send(start + t, u, id);
        }
        r.events.advance_to(start + 3000);
        let (users, records) = completed(&r, worker, &cfg, start + 3000);
        assert_eq!(records, None, "all three changed: whole");
        assert_eq!(users, ["u1:a,d,e", "u2:b,f", "u3:c,g"]);
        std::mem::replace(&mut r.events, timely::dataflow::InputHandleVec::new()).close();
        r.step_until(worker, |r| r.probe.done());
    });
}

/// A delta part written gives its sets of changes and its records' vector back, emptied,
/// for the next one: each delta holds the users changed since the part before, not
/// those of an earlier one.
#[test]
fn each_delta_holds_only_the_users_changed_since_the_part_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    timely::execute_directly(move |worker| {
        let (mut r, start, cfg) = delta_rig(worker, path, 10, None, 60_000, true);
        let users: Vec<String> = (1..=9).map(|i| format!("u{i}")).collect();
        for (i, u) in users.iter().enumerate() {
            r.send(start + 100 + i as Time, u, &format!("e{i}"));
        }
        r.events.advance_to(start + 400);
        // Eight look-ups at once: each answered as it starts.
        for u in &users {
            r.step_until(worker, |r| r.started().contains(u));
            r.profiles.answer(u, Ok(profile("FR")));
        }
        r.events.advance_to(start + 1000);
        assert_eq!(completed(&r, worker, &cfg, start + 1000).1, None, "whole");
        for (epoch, user) in [(2000, "u1"), (3000, "u2"), (4000, "u3")] {
            r.send(start + epoch - 900, user, &format!("x{epoch}"));
            r.events.advance_to(start + epoch);
            let (all, records) = completed(&r, worker, &cfg, start + epoch);
            assert_eq!(records, Some(1), "{user} alone at {epoch}");
            assert_eq!(all.len(), 9);
        }
        std::mem::replace(&mut r.events, timely::dataflow::InputHandleVec::new()).close();
        r.step_until(worker, |r| r.probe.done());
    });
}

/// A rig checkpointing every second into `path` (a whole part every `full_every`), on
/// the hash map or on RocksDB caching `rocksdb_cache` users, its users idle for `ttl_ms`
/// expiring; with the epoch it starts at and its checkpoint config.
fn delta_rig(
    worker: &mut Worker,
    path: std::path::PathBuf,
    full_every: usize,
    rocksdb_cache: Option<usize>,
    ttl_ms: u64,
    compress_deltas: bool,
) -> (Rig, Time, CheckpointConfig) {
    let backend = match rocksdb_cache {
        Some(cache_users) => Backend::Rocksdb {
            dir: path.join("state"),
            cache_users,
        },
        None => Backend::Memory,
    };
    let store = backend.open(0).unwrap();
    let (start, mut cfg) = pinned(path, full_every);
    cfg.compress_deltas = compress_deltas;
    let checkpoints = Some((cfg.clone(), Ending::default()));
    let mut r = rig_in(worker, config(ttl_ms), checkpoints, store);
    r.no_restore();
    (r, start, cfg)
}

/// Issue #17: a checkpoint of delta parts (users changed, removed, pending since the
/// previous part) restores exactly the users a whole part of the same epoch holds, from
/// either backend (RocksDB with a cache of one user: most are read from its files).
#[test]
fn delta_parts_restore_the_same_users_as_whole_ones() {
    let run = |full_every: usize, rocksdb: bool| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        timely::execute_directly(move |worker| {
            let (mut r, start, cfg) =
                delta_rig(worker, path, full_every, rocksdb.then_some(1), 1500, true);
            let mut seen = Vec::new();
            let mut complete = |r: &Rig, worker: &mut Worker, epoch: Time| {
                let (users, records) = completed(r, worker, &cfg, epoch);
                seen.push((epoch - start, users, records));
            };
            three_users_looked_up(&mut r, worker, start);
            r.events.advance_to(start + 1000);
            complete(&r, worker, start + 1000);
            r.send(start + 1100, "u1", "d");
            r.events.advance_to(start + 2000);
            complete(&r, worker, start + 2000);
            // u2 expires (idle since 200), u3 too and comes back (looked up again); u4
            // is new; both look-ups hang over the checkpoint.
            r.send(start + 2100, "u3", "e");
            r.send(start + 2200, "u4", "f");
            r.events.advance_to(start + 3000);
            complete(&r, worker, start + 3000);
            r.profiles.answer("u3", Ok(profile("FR")));
            r.profiles.answer("u4", Ok(profile("DE")));
            r.events.advance_to(start + 4000);
            complete(&r, worker, start + 4000);
            std::mem::replace(&mut r.events, timely::dataflow::InputHandleVec::new()).close();
            r.step_until(worker, |r| r.probe.done());
            seen
        })
    };
    let whole = run(1, false);
    let deltas = run(4, false);
    if cfg!(feature = "rocksdb") {
        assert_eq!(run(4, true), deltas, "deltas from RocksDB");
        assert_eq!(run(1, true), whole, "whole parts from RocksDB");
    }
    for ((epoch, w, w_records), (_, d, d_records)) in whole.iter().zip(&deltas) {
        assert_eq!(w, d, "at {epoch}");
        assert_eq!(*w_records, None, "whole parts");
        // At 4000 every user changed since the part before: a whole one again. (A
        // delta's dictionary holds only strings new since the part before, so other
        // tests interning strings meanwhile no longer tip the bytes over the whole
        // part's and make the choice differ between runs.)
        assert_eq!(
            d_records.is_some(),
            *epoch == 2000 || *epoch == 3000,
            "at {epoch}"
        );
    }
    assert_eq!(deltas[1].2, Some(1), "only u1 changed before 2000");
    let at = |i: usize| whole[i].1.join(" ");
    assert_eq!(at(0), "u1:a u2:b u3:c");
    assert_eq!(at(1), "u1:a,d u2:b u3:c");
    assert_eq!(at(2), "u1:a,d u3:pending1 u4:pending1");
    assert_eq!(at(3), "u3:e u4:f", "u1 expired, u3 and u4 looked up");
}

/// Every user the latest checkpoint restores, with all of its state (the history's
/// entries whole, the visit, the times since `start` and triggers).
fn restored_in_full(cfg: &CheckpointConfig, start: Time) -> Vec<String> {
    let latest = crate::checkpoint::manifest::find_latest(&cfg.dir).unwrap();
    let mut users: Vec<String> = latest
        .read_users()
        .unwrap()
        .into_iter()
        .map(|(u, saved)| match saved {
            SavedUser::State(s) => format!(
                "{u}: {:?} {:?} {:?} {} {} {:?} {:?}",
                s.profile,
                s.visit,
                s.history,
                s.last_activity - start,
                s.ttl_mark - start,
                s.refetch_after.map(|t| t - start),
                s.triggers
            ),
            SavedUser::Pending(p) => format!("{u}: pending {p:?}"),
        })
        .collect();
    users.sort();
    users
}

/// How many of the latest checkpoint's records (worker 0's part) give only what a
/// user's history gained since the part before.
fn tail_records(cfg: &CheckpointConfig) -> usize {
    use crate::checkpoint::files::{Saved, open_chain};
    let latest = crate::checkpoint::manifest::find_latest(&cfg.dir).unwrap();
    let chain = latest.part_chains().into_iter().next().unwrap();
    let mut parts = open_chain(&chain).unwrap();
    let records = parts[0]
        .next_records(usize::MAX)
        .unwrap()
        .unwrap_or_default();
    records
        .iter()
        .filter(|(_, s)| matches!(s, Saved::Tail { .. }))
        .count()
}

/// Deltas restore what whole parts hold over many epochs of events to random users, with
/// RocksDB letting most users out of its cache of two between their events (and giving
/// them their marks back when it reads them again). Histories
/// reach their limit (10 entries), so a delta's records of what they gained drop some
/// of the entries before them too.
#[test]
fn deltas_restore_what_whole_parts_hold_over_many_epochs() {
    let run_as = |full_every: usize, rocksdb: bool, compress_deltas: bool| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        timely::execute_directly(move |worker| {
            let (mut r, start, cfg) = delta_rig(
                worker,
                path,
                full_every,
                rocksdb.then_some(2),
                600_000,
                compress_deltas,
            );
            let users: Vec<String> = (0..12).map(|u| format!("u{u}")).collect();
            for (n, u) in users.iter().enumerate() {
                r.send(start + 1 + n as Time, u, &format!("{u}-0"));
            }
            r.events.advance_to(start + 100);
            // At most 8 look-ups at a time: each answered as it starts. Half the users
            // have a visit, whose actions each event counts (a tail gives them; the
            // rest of the visit and the profile are its base's).
            let mut answered = std::collections::HashSet::new();
            r.step_until(worker, |r| {
                for u in r.started() {
                    if answered.insert(u.clone()) {
                        let mut data = profile("FR");
                        if answered.len() % 2 == 0 {
                            data.visit = Some(crate::model::Visit {
                                uuid: Some(format!("visit-of-{u}").into()),
                                timestamp: 5,
                                os: Some("Linux".into()),
                                actions: 1,
                                ip: Some("192.0.2.7".into()),
                                ..Default::default()
                            });
                        }
                        r.profiles.answer(&u, Ok(data));
                    }
                }
                answered.len() == users.len()
            });
            let mut rng = crate::history::tests::Rng::new(7);
            let mut seen = Vec::new();
            for epoch in 1..=16u64 {
                for n in 0..10 {
                    let u = &users[rng.next(users.len() as u64) as usize];
                    let at = start + (epoch - 1) * 1000 + 200 + n * 10;
                    r.send(at, u, &format!("{u}-{epoch}.{n}"));
                }
                r.events.advance_to(start + epoch * 1000);
                let (_, records) = completed(&r, worker, &cfg, start + epoch * 1000);
                if records.is_some() {
                    // A delta: LZ4 or as it is, as configured.
                    let part = std::fs::read(cfg.state_path(start + epoch * 1000, 0)).unwrap();
                    let plain = [&b"ETDELTA6"[..], b"ETDELTA2"].contains(&&part[..8]);
                    assert_eq!(plain, !compress_deltas, "epoch {epoch}");
                    assert!(
                        [&b"ETDELTA6"[..], b"ETDELTA7", b"ETDELTA2", b"ETDELTA3"]
                            .contains(&&part[..8]),
                        "epoch {epoch}: tails leave out the profile"
                    );
                }
                let tails = records.map(|_| tail_records(&cfg));
                seen.push((restored_in_full(&cfg, start), tails));
            }
            std::mem::replace(&mut r.events, timely::dataflow::InputHandleVec::new()).close();
            r.step_until(worker, |r| r.probe.done());
            seen
        })
    };
    let run = |full_every: usize, rocksdb: bool| run_as(full_every, rocksdb, true);
    let whole = run(1, false);
    let strip =
        |v: &[(Vec<String>, Option<usize>)]| v.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>();
    let deltas = run(10, false);
    // `lz4-whole`: whole parts compressed, deltas as they are; a chain mixes them.
    assert_eq!(
        strip(&run_as(10, false, false)),
        strip(&whole),
        "plain deltas"
    );
    let tails: Vec<usize> = deltas.iter().filter_map(|(_, t)| *t).collect();
    assert!(tails.len() >= 8, "{tails:?}");
    assert!(tails.iter().filter(|&&t| t > 0).count() >= 6, "{tails:?}");
    assert_eq!(strip(&deltas), strip(&whole), "hash map");
    if cfg!(feature = "rocksdb") {
        let rocks = run(10, true);
        assert_eq!(strip(&rocks), strip(&whole), "RocksDB");
        // Users in its cache (of two) are written as what they gained; those let out
        // of it whole, as the bytes it keeps.
        let rocks_tails: Vec<usize> = rocks.iter().filter_map(|(_, t)| *t).collect();
        assert!(rocks_tails.iter().any(|&t| t > 0), "{rocks_tails:?}");
    }
}

/// A delta part that could not be written gives its changes to the next one, whose
/// records are then whole states: what a history gained is counted since the part that
/// failed, which the chain lacks.
#[test]
fn a_delta_after_one_not_written_holds_whole_states() {
    let run = |full_every: usize| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        timely::execute_directly(move |worker| {
            let (mut r, start, cfg) = delta_rig(worker, path, full_every, None, 60_000, true);
            three_users_looked_up(&mut r, worker, start);
            r.events.advance_to(start + 1000);
            completed(&r, worker, &cfg, start + 1000);
            r.send(start + 1100, "u1", "d");
            // The part of 2000 cannot take its place: a directory holds it.
            std::fs::create_dir_all(cfg.state_path(start + 2000, 0)).unwrap();
            r.events.advance_to(start + 2000);
            r.step_until(worker, |r| !r.probe.less_than(&(start + 2000)));
            r.send(start + 2100, "u1", "e");
            r.send(start + 2200, "u2", "f");
            r.events.advance_to(start + 3000);
            let (users, records) = completed(&r, worker, &cfg, start + 3000);
            assert_eq!(users, ["u1:a,d,e", "u2:b,f", "u3:c"]);
            let tails = records.map(|_| tail_records(&cfg));
            let full = restored_in_full(&cfg, start);
            std::mem::replace(&mut r.events, timely::dataflow::InputHandleVec::new()).close();
            r.step_until(worker, |r| r.probe.done());
            (full, tails)
        })
    };
    let (whole, _) = run(1);
    let (deltas, tails) = run(10);
    assert_eq!(tails, Some(0), "a delta of whole states");
    assert_eq!(deltas, whole);
}

/// A delta lists each changed user once: one changed by several events; on RocksDB with a
/// cache of one user, one evicted between its events (its listing mark is in the cache
/// only); and one removed and back in the same interval (its look-up failed, the next
/// event looked it up again).
#[test]
fn a_delta_holds_each_changed_user_once() {
    let run = |rocksdb: bool| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        timely::execute_directly(move |worker| {
            let (mut r, start, cfg) =
                delta_rig(worker, path, 10, rocksdb.then_some(1), 60_000, true);
            three_users_looked_up(&mut r, worker, start);
            r.events.advance_to(start + 1000);
            assert_eq!(completed(&r, worker, &cfg, start + 1000).1, None, "whole");
            for (t, u, id) in [(1100, "u1", "d"), (1200, "u2", "e"), (1300, "u1", "f")] {
                r.send(start + t, u, id);
            }
            r.send(start + 1400, "u4", "g");
            r.events.advance_to(start + 1401);
            r.step_until(worker, |r| r.started().len() == 4);
            let down = crate::profile_api::FetchError::Status {
                url: "test".into(),
                status: 503,
            };
            r.profiles.answer("u4", Err(down));
            r.step_until(worker, |r| r.counters.counts().fetch_errors == 1);
            // The failed look-up's empty state is kept, then taken out for a new one.
            r.send(start + 1500, "u4", "h");
            r.events.advance_to(start + 1501);
            r.step_until(worker, |r| r.started().len() == 5);
            r.profiles.answer("u4", Ok(profile("DE")));
            r.send(start + 1600, "u2", "i");
            r.events.advance_to(start + 2000);
            let (users, records) = completed(&r, worker, &cfg, start + 2000);
            assert_eq!(users, ["u1:a,d,f", "u2:b,e,i", "u3:c", "u4:g,h"]);
            std::mem::replace(&mut r.events, timely::dataflow::InputHandleVec::new()).close();
            r.step_until(worker, |r| r.probe.done());
            records
        })
    };
    assert_eq!(run(false), Some(3), "u1, u2 and u4, once each");
    if cfg!(feature = "rocksdb") {
        assert_eq!(run(true), Some(3), "RocksDB: u1, u2 and u4, once each");
    }
}
