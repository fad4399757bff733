//! The first few script errors and passing events of a run, kept for the rule tester
//! (`validate --events`), which prints them after its counts.
//!
//! "First" by the events' own time (`timestamp`, then `event_id`), not by when they
//! were judged: a user's events wait for its look-up, so the order of judging follows
//! the order look-ups finish in, and how much of the input one read took (a trial saw
//! the list change when reads became smaller). By their own time, the list is the same
//! at any `-w`, at any pace, run after run.

use std::sync::{Arc, Mutex};

use crate::model::{EnrichedView, UserEvent};

/// Where an event comes in the lists (kept: its time and id).
type Key = (i64, String);

/// An event's place, borrowed: compared before anything is copied.
fn key(event: &UserEvent) -> (i64, &str) {
    (
        event.timestamp,
        event.event_id.as_deref().unwrap_or_default(),
    )
}

/// The `keep` entries of the smallest keys, in their order.
#[derive(Debug, Default)]
struct List(Vec<(Key, String)>);

impl List {
    /// Adds the entry `text()` makes for `key`, if it is among the `keep` smallest.
    fn offer(&mut self, keep: usize, key: (i64, &str), text: impl FnOnce() -> String) {
        let before_or_at = |(t, id): &Key| (*t, id.as_str()) <= key;
        if self.0.len() >= keep && self.0.last().is_none_or(|(k, _)| before_or_at(k)) {
            return;
        }
        // After the entries of equal keys: of events of one time, the first judged.
        let at = self.0.partition_point(|(k, _)| before_or_at(k));
        self.0.insert(at, ((key.0, key.1.to_string()), text()));
        self.0.truncate(keep);
    }

    fn texts(&self) -> Vec<String> {
        self.0.iter().map(|(_, t)| t.clone()).collect()
    }
}

#[derive(Debug, Default)]
struct Kept {
    errors: List,
    passed: List,
}

/// Shared by the workers of the process; each list keeps its first `keep` entries, by
/// the events' time.
#[derive(Clone, Debug)]
pub struct Samples {
    keep: usize,
    kept: Arc<Mutex<Kept>>,
}

impl Samples {
    pub fn new(keep: usize) -> Samples {
        Samples {
            keep,
            kept: Arc::default(),
        }
    }

    /// `origin` (the script or an action's filter) failed on `view`'s event.
    pub fn error(&self, origin: &str, view: EnrichedView<'_>, error: &str) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.errors.offer(self.keep, key(view.event), || {
            let id = view.event.event_id.as_deref().unwrap_or("(no event_id)");
            let user = &view.event.user_id;
            format!("event {id} of user {user}: {origin}: {error}")
        });
    }

    /// `view`'s event passed the filter.
    pub fn passed(&self, view: EnrichedView<'_>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.passed.offer(self.keep, key(view.event), || {
            serde_json::to_string(view.event)
                .unwrap_or_else(|e| format!("(cannot show the event: {e})"))
        });
    }

    /// The errors and the passing events kept, by the events' time.
    pub fn taken(&self) -> (Vec<String>, Vec<String>) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        (kept.errors.texts(), kept.passed.texts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserState;

    /// Whatever order events are judged in, the lists hold those of the earliest times
    /// (ties by id, then by the order judged).
    #[test]
    fn the_lists_keep_the_earliest_events_whatever_order_they_come_in() {
        let event = |ts: i64, id: &str| UserEvent {
            event_id: Some(id.into()),
            user_id: "u".into(),
            event_type: "click".into(),
            timestamp: ts,
            ..Default::default()
        };
        let mut events = vec![
            event(5, "e5"),
            event(1, "e1b"),
            event(9, "e9"),
            event(1, "e1a"),
            event(3, "e3"),
            event(7, "e7"),
        ];
        let state = UserState::empty(0);
        let mut seen = Vec::new();
        for turn in 0..events.len() {
            events.rotate_left(1);
            let samples = Samples::new(3);
            for e in &events {
                let view = EnrichedView {
                    event: e,
                    state: &state,
                };
                samples.passed(view);
                samples.error("rule.rhai", view, "boom");
            }
            let (errors, passed) = samples.taken();
            let ids: Vec<String> = passed
                .iter()
                .map(|j| {
                    serde_json::from_str::<serde_json::Value>(j).unwrap()["event_id"].to_string()
                })
                .collect();
            assert_eq!(ids, [r#""e1a""#, r#""e1b""#, r#""e3""#], "turn {turn}");
            assert_eq!(errors.len(), 3);
            assert!(
                errors[0].starts_with("event e1a of user u: rule.rhai: boom"),
                "{errors:?}"
            );
            seen.push((errors, passed));
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]));
        let few = Samples::new(0);
        few.passed(EnrichedView {
            event: &events[0],
            state: &state,
        });
        assert_eq!(few.taken(), (vec![], vec![]));
    }
}
