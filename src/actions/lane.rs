//! One webhook action's calls on one worker: those waiting and those under way, and
//! which may start next. With `ordering: per-user` a user's next call starts only once
//! its previous one has ended, so a receiver gets each user's calls in event order;
//! calls of different users still go concurrently.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::config::CallOrder as Ordering;
use crate::model::{EnrichedEvent, Text, Time};

/// A call to make: the event's time (held until the call ends) and the event.
pub type Call = (Time, Arc<EnrichedEvent>);

pub struct Lane {
    max_in_flight: usize,
    in_flight: usize,
    /// In arrival order.
    queued: VecDeque<Call>,
    /// `per-user`: the users with a call under way, each with its calls that wait for
    /// it, in order. None: any order.
    busy: Option<FxHashMap<Text, VecDeque<Call>>>,
    /// `per-user`: calls whose user's previous call ended; they go first.
    ready: VecDeque<Call>,
}

impl Lane {
    pub fn new(max_in_flight: usize, ordering: Ordering) -> Self {
        Lane {
            max_in_flight,
            in_flight: 0,
            queued: VecDeque::new(),
            busy: (ordering == Ordering::PerUser).then(FxHashMap::default),
            ready: VecDeque::new(),
        }
    }

    pub fn push(&mut self, call: Call) {
        self.queued.push_back(call);
    }

    /// The next call to start, if there is room and one may go; counts it as under way.
    pub fn next(&mut self) -> Option<Call> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        let call = match &mut self.busy {
            None => self.queued.pop_front()?,
            Some(busy) => match self.ready.pop_front() {
                Some(call) => call,
                None => loop {
                    let call = self.queued.pop_front()?;
                    match busy.get_mut(&*call.1.event.user_id) {
                        // Behind the user's call under way.
                        Some(waiting) => waiting.push_back(call),
                        None => {
                            busy.insert(Text::from(&call.1.event.user_id), VecDeque::new());
                            break call;
                        }
                    }
                },
            },
        };
        self.in_flight += 1;
        Some(call)
    }

    /// The call of `user` under way has ended.
    pub fn ended(&mut self, user: &str) {
        self.in_flight -= 1;
        let Some(busy) = &mut self.busy else { return };
        match busy.get_mut(user).and_then(VecDeque::pop_front) {
            Some(next) => self.ready.push_back(next),
            None => {
                busy.remove(user);
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Calls not started yet.
    pub fn waiting(&self) -> usize {
        let behind = self
            .busy
            .as_ref()
            .map_or(0, |b| b.values().map(VecDeque::len).sum());
        self.queued.len() + self.ready.len() + behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserState;

    fn call(user: &str, id: &str) -> Call {
        let line = format!(r#"{{"event_id":"{id}","user_id":"{user}","event_type":"click"}}"#);
        let ev = crate::wire::decode(line.as_bytes()).unwrap();
        (
            0,
            Arc::new(EnrichedEvent::snapshot(ev, &UserState::empty(0), 1)),
        )
    }

    fn id(c: &Call) -> String {
        c.1.event
            .event_id
            .as_deref()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn any_order_starts_calls_as_they_came_up_to_the_limit() {
        let mut lane = Lane::new(2, Ordering::Any);
        for (u, i) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
            lane.push(call(u, i));
        }
        assert_eq!(lane.next().map(|c| id(&c)), Some("a1".into()));
        assert_eq!(lane.next().map(|c| id(&c)), Some("a2".into()));
        assert!(lane.next().is_none(), "the limit");
        lane.ended("a");
        assert_eq!(lane.next().map(|c| id(&c)), Some("b1".into()));
    }

    #[test]
    fn per_user_starts_a_users_next_call_only_after_its_previous_one_ended() {
        let mut lane = Lane::new(10, Ordering::PerUser);
        for (u, i) in [
            ("a", "a1"),
            ("a", "a2"),
            ("b", "b1"),
            ("a", "a3"),
            ("b", "b2"),
        ] {
            lane.push(call(u, i));
        }
        let started: Vec<_> = std::iter::from_fn(|| lane.next()).map(|c| id(&c)).collect();
        assert_eq!(started, ["a1", "b1"], "one per user at a time");
        assert_eq!((lane.in_flight(), lane.waiting()), (2, 3));
        lane.ended("b");
        assert_eq!(lane.next().map(|c| id(&c)), Some("b2".into()));
        lane.ended("a");
        assert_eq!(lane.next().map(|c| id(&c)), Some("a2".into()));
        assert!(lane.next().is_none(), "a3 waits for a2");
        lane.ended("a");
        assert_eq!(lane.next().map(|c| id(&c)), Some("a3".into()));
        lane.ended("a");
        lane.ended("b");
        assert_eq!((lane.in_flight(), lane.waiting()), (0, 0));
        lane.push(call("a", "a4"));
        assert_eq!(
            lane.next().map(|c| id(&c)),
            Some("a4".into()),
            "a is free again"
        );
    }
}
