//! The operator's caps, delayed actions and cancel conditions, on one worker.

use std::sync::Arc;
use std::time::Instant;

use timely::worker::Worker;

use super::tests::{Rig, config, history_ids, profile, rig_with};
use crate::clock::now_ms;
use crate::filter::reload::{FilterVersions, Filters};
use crate::filter::{Filter, FilterLimits};
use crate::model::{SavedUser, Time, UserEvent, UserState};
use crate::shutdown::StopFlag;
use crate::store::Backend;
use crate::triggers::{ActionSchedule, MaxPerUser, Schedule, Schedules, Timer, UserTriggers};

/// One action `a` with `schedule`, for the events its filter passes, cancelled by
/// purchases; the rule passes everything.
fn timed_rig(worker: &mut Worker, schedule: Schedule, ttl_ms: u64, stop: StopFlag) -> Rig {
    let versions = FilterVersions::default();
    timed_rig_with(worker, schedule, config(ttl_ms), stop, versions)
}

/// `timed_rig`, its rule's later versions published to `versions`.
fn timed_rig_with(
    worker: &mut Worker,
    schedule: Schedule,
    mut cfg: super::UserStateConfig,
    stop: StopFlag,
    versions: FilterVersions,
) -> Rig {
    let limits = FilterLimits::default();
    let compile = |s: &str| Filter::compile(s, "test", &limits).unwrap();
    let filters = Filters::new(compile("true"), versions, "t".into(), limits.clone())
        .with_actions(vec![Some(compile(r#"event.event_type != "purchase""#))])
        .with_cancels(vec![
            schedule
                .delay_ms
                .map(|_| compile(r#"event.event_type == "purchase""#)),
        ]);
    cfg.schedules = Schedules(Arc::new(vec![ActionSchedule {
        name: "a".into(),
        schedule,
    }]));
    rig_with(
        worker,
        cfg,
        None,
        filters,
        stop,
        Backend::Memory.open(0).unwrap(),
    )
}

/// An action delayed by `ms`.
fn delay(ms: u64) -> Schedule {
    Schedule {
        delay_ms: Some(ms),
        ..Schedule::default()
    }
}

fn typed(user: &str, id: &str, event_type: &str) -> UserEvent {
    UserEvent {
        event_id: Some(id.into()),
        user_id: user.into(),
        event_type: event_type.into(),
        ..UserEvent::default()
    }
}

fn send(r: &mut Rig, time: Time, user: &str, id: &str, event_type: &str) {
    if *r.events.time() < time {
        r.events.advance_to(time);
    }
    r.events.send(typed(user, id, event_type));
}

/// Answers the look-ups of `users` once they started.
fn answer(r: &Rig, worker: &mut Worker, users: &[&str]) {
    r.step_until(worker, |r| {
        users.iter().all(|u| r.started().contains(&u.to_string()))
    });
    for u in users {
        r.profiles.answer(u, Ok(profile("FR")));
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_cooldown_lets_one_firing_per_period_through_per_user() {
    timely::execute_directly(|worker| {
        let cooldown = Schedule {
            cooldown_ms: Some(1000),
            ..Schedule::default()
        };
        let mut r = timed_rig(worker, cooldown, 60_000, StopFlag::default());
        r.no_restore();
        send(&mut r, 100, "u", "a", "click");
        send(&mut r, 600, "u", "b", "click");
        send(&mut r, 600, "v", "x", "click");
        send(&mut r, 1100, "u", "c", "click");
        send(&mut r, 1500, "u", "d", "click");
        send(&mut r, 2200, "u", "e", "click");
        r.events.advance_to(2201);
        answer(&r, worker, &["u", "v"]);
        r.settle(worker, 2201);
        assert_eq!(sorted(r.emitted()), ["a", "c", "e", "x"]);
        let c = r.counters.counts();
        assert_eq!((c.passed, c.capped), (6, 2));
    });
}

#[test]
fn a_count_per_window_caps_each_user() {
    timely::execute_directly(|worker| {
        let max = Schedule {
            max_per_user: Some(MaxPerUser {
                count: 2,
                per: crate::triggers::DurationMs(1000),
            }),
            ..Schedule::default()
        };
        let mut r = timed_rig(worker, max, 60_000, StopFlag::default());
        r.no_restore();
        for (t, id) in [
            (10, "a"),
            (20, "b"),
            (30, "c"),
            (1010, "d"),
            (1015, "e"),
            (1020, "f"),
        ] {
            send(&mut r, t, "u", id, "click");
        }
        r.events.advance_to(1021);
        answer(&r, worker, &["u"]);
        r.settle(worker, 1021);
        assert_eq!(r.emitted(), ["a", "b", "d", "f"]);
        assert_eq!(r.counters.counts().capped, 2);
    });
}

#[test]
fn an_abandoned_cart_fires_when_due_unless_a_purchase_came_first() {
    timely::execute_directly(|worker| {
        let delayed = delay(1000);
        let mut r = timed_rig(worker, delayed, 60_000, StopFlag::default());
        r.no_restore();
        for u in ["u1", "u2", "u3"] {
            send(&mut r, 100, u, &format!("cart-{u}"), "add_to_cart");
        }
        r.events.advance_to(101);
        answer(&r, worker, &["u1", "u2", "u3"]);
        send(&mut r, 500, "u2", "buy-u2", "purchase");
        r.events.advance_to(1000);
        r.settle(worker, 1000);
        assert!(r.emitted().is_empty(), "nothing before it is due");
        assert!(r.probe.less_than(&1101), "the due time is held");
        let c = r.counters.counts();
        assert_eq!((c.scheduled, c.cancelled, c.fired), (3, 1, 0));
        // A purchase stamped after the cart's due time is too late to cancel it.
        send(&mut r, 1200, "u3", "buy-u3", "purchase");
        r.events.advance_to(1201);
        r.settle(worker, 1201);
        assert_eq!(sorted(r.emitted()), ["cart-u1", "cart-u3"]);
        let out = r.out.borrow();
        let u3 = out.iter().find(|e| &*e.event.user_id == "u3").unwrap();
        assert_eq!(u3.targets, 1);
        assert_eq!(
            history_ids(&u3.history),
            ["cart-u3", "buy-u3"],
            "the user's state as it is when the action fires"
        );
        let c = r.counters.counts();
        assert_eq!((c.scheduled, c.cancelled, c.fired), (3, 1, 2));
    });
}

#[test]
fn a_user_with_a_pending_action_outlives_its_ttl_until_it_fires() {
    timely::execute_directly(|worker| {
        let delayed = delay(1000);
        let mut r = timed_rig(worker, delayed, 100, StopFlag::default());
        r.no_restore();
        send(&mut r, 100, "u", "cart", "add_to_cart");
        r.events.advance_to(101);
        answer(&r, worker, &["u"]);
        for t in (200..=1000).step_by(100) {
            r.events.advance_to(t);
            r.settle(worker, t);
        }
        assert_eq!(r.counters.counts().expired, 0);
        r.events.advance_to(1101);
        r.settle(worker, 1101);
        assert_eq!(r.emitted(), ["cart"]);
        r.events.advance_to(1300);
        r.settle(worker, 1300);
        assert_eq!(r.counters.counts().expired, 1, "expires once it has fired");
    });
}

#[test]
fn at_the_end_of_the_input_pending_actions_fire_when_due_by_the_clock() {
    timely::execute_directly(|worker| {
        let delayed = delay(300);
        let mut r = timed_rig(worker, delayed, 60_000, StopFlag::default());
        r.no_restore();
        let start = Instant::now();
        let now = now_ms();
        send(&mut r, now, "u", "cart", "add_to_cart");
        r.events.advance_to(now + 1);
        answer(&r, worker, &["u"]);
        std::mem::replace(&mut r.events, timely::dataflow::InputHandleVec::new()).close();
        while !r.probe.done() {
            worker.step_or_park(Some(std::time::Duration::from_millis(50)));
            assert!(start.elapsed().as_secs() < 5, "timed out");
        }
        assert_eq!(r.emitted(), ["cart"]);
        assert!(start.elapsed().as_millis() >= 250, "{:?}", start.elapsed());
    });
}

#[test]
fn a_stop_does_not_wait_for_pending_actions() {
    timely::execute_directly(|worker| {
        let delayed = delay(60_000);
        let stop = StopFlag::default();
        let mut r = timed_rig(worker, delayed, 60_000, stop.clone());
        r.no_restore();
        let now = now_ms();
        send(&mut r, now, "u", "cart", "add_to_cart");
        r.events.advance_to(now + 1);
        answer(&r, worker, &["u"]);
        r.step_until(worker, |r| r.counters.counts().scheduled == 1);
        std::mem::replace(&mut r.events, timely::dataflow::InputHandleVec::new()).close();
        for _ in 0..10 {
            worker.step_or_park(Some(std::time::Duration::from_millis(10)));
        }
        assert!(!r.probe.done(), "waits for the action to come due");
        // A stop while it waits (a file read to its end, then SIGTERM).
        stop.set();
        let start = Instant::now();
        while !r.probe.done() {
            worker.step_or_park(Some(std::time::Duration::from_millis(100)));
            assert!(start.elapsed().as_secs() < 3, "the stop was not noticed");
        }
        assert!(r.emitted().is_empty());
    });
}

#[test]
fn a_restored_pending_action_fires_once_the_frontier_passes_it() {
    timely::execute_directly(|worker| {
        let delayed = delay(1000);
        let mut r = timed_rig(worker, delayed, 60_000, StopFlag::default());
        // Saved by other workers of another run: their ids mean nothing here (two
        // users' timers with the same id and due time once overwrote each other).
        for (user, saved_id) in [("u", 1), ("v", 0), ("w", 0)] {
            let mut state = UserState::empty(100);
            state.triggers = Some(Box::new(UserTriggers {
                pending: vec![Timer {
                    id: saved_id,
                    action: "a".into(),
                    due: 1100,
                    read_at: 100,
                    event: typed(user, &format!("cart-{user}"), "add_to_cart"),
                }],
                ..UserTriggers::default()
            }));
            let restored = r.restored.as_mut().unwrap();
            restored.send((user.into(), SavedUser::State(state)));
        }
        r.no_restore();
        r.events.advance_to(1000);
        r.settle(worker, 1000);
        assert!(r.emitted().is_empty());
        r.events.advance_to(1101);
        r.settle(worker, 1101);
        let mut fired = r.emitted();
        fired.sort();
        assert_eq!(fired, ["cart-u", "cart-v", "cart-w"]);
        assert_eq!(r.counters.counts().fired, 3);
    });
}

#[test]
fn pending_actions_per_user_are_capped_and_the_rest_counted() {
    timely::execute_directly(|worker| {
        let delayed = delay(1000);
        let mut cfg = config(60_000);
        cfg.max_timers_per_user = 2;
        let versions = FilterVersions::default();
        let mut r = timed_rig_with(worker, delayed, cfg, StopFlag::default(), versions);
        r.no_restore();
        for id in ["c1", "c2", "c3"] {
            send(&mut r, 100, "u", id, "add_to_cart");
        }
        send(&mut r, 100, "v", "v1", "add_to_cart");
        r.events.advance_to(101);
        answer(&r, worker, &["u", "v"]);
        r.events.advance_to(1101);
        r.settle(worker, 1101);
        assert_eq!(sorted(r.emitted()), ["c1", "c2", "v1"]);
        let c = r.counters.counts();
        assert_eq!((c.scheduled, c.timers_dropped, c.fired), (3, 1, 3));
    });
}

#[test]
fn a_reloaded_rule_keeps_the_pending_actions() {
    timely::execute_directly(|worker| {
        let delayed = delay(1000);
        let versions = FilterVersions::default();
        let mut r = timed_rig_with(
            worker,
            delayed,
            config(60_000),
            StopFlag::default(),
            versions.clone(),
        );
        r.no_restore();
        send(&mut r, 100, "u", "c1", "add_to_cart");
        r.events.advance_to(101);
        answer(&r, worker, &["u"]);
        r.settle(worker, 101);
        // From 500 on, the rule passes nothing: no new reminder, the pending one stays.
        versions.publish("false".into(), 500);
        send(&mut r, 600, "u", "c2", "add_to_cart");
        r.events.advance_to(1700);
        r.settle(worker, 1700);
        assert_eq!(r.emitted(), ["c1"]);
        let c = r.counters.counts();
        assert_eq!((c.scheduled, c.fired, c.rejected), (1, 1, 1));
    });
}

/// The frontier may be ahead of the wall clock (a restored epoch, an ending run's jump to
/// its final epoch): actions still fire when due by the clock, not early (they fired at
/// once, up to a checkpoint interval early).
#[test]
fn a_frontier_ahead_of_the_clock_does_not_fire_actions_early() {
    timely::execute_directly(|worker| {
        let delayed = delay(300);
        let mut r = timed_rig(worker, delayed, 600_000, StopFlag::default());
        r.no_restore();
        let start = Instant::now();
        let now = now_ms();
        send(&mut r, now, "u", "cart", "add_to_cart");
        r.events.advance_to(now + 1);
        answer(&r, worker, &["u"]);
        r.events.advance_to(now + 60_000);
        r.idle(worker);
        assert!(r.emitted().is_empty(), "fired before it was due");
        while r.emitted().is_empty() {
            worker.step_or_park(Some(std::time::Duration::from_millis(20)));
            assert!(start.elapsed().as_secs() < 5, "never fired");
        }
        assert!(start.elapsed().as_millis() >= 250, "{:?}", start.elapsed());
        let out = r.out.borrow();
        assert_eq!(out[0].read_at, Some(now), "read when its event was");
    });
}
