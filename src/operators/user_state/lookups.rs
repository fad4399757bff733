//! Profile API look-ups of one worker: the users being looked up with their events that
//! wait, in order; the users waiting for a free slot; the state kept of users looked up
//! again after a failed look-up.

use std::collections::VecDeque;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::counters::Counters;
use crate::log_limit::LogLimiter;
use crate::model::{PendingUser, ProfileData, Text, Time, UserEvent, UserState};
use crate::operators::held::HeldTimes;
use crate::profile_api::{FetchError, Fetched, Fetcher};

/// An event waiting for its user's look-up.
pub(super) struct Queued {
    pub(super) time: Time,
    /// The time held for it: its own, or the epoch of a checkpoint that saved it.
    pub(super) held: Time,
    pub(super) event: UserEvent,
}

impl Queued {
    /// An event held at its own time.
    pub(super) fn at(time: Time, event: UserEvent) -> Self {
        Queued {
            time,
            held: time,
            event,
        }
    }
}

/// Where answers come from: the Profile API (or its snapshot), or in unit tests a fake
/// the test answers itself.
pub(super) enum Source {
    Api(Fetcher),
    #[cfg(test)]
    Fake(super::fake::FakeProfiles),
}

impl Source {
    fn start(&mut self, user: Text) {
        match self {
            Source::Api(f) => f.start(user),
            #[cfg(test)]
            Source::Fake(f) => f.start(user),
        }
    }

    fn in_flight(&self) -> usize {
        match self {
            Source::Api(f) => f.in_flight(),
            #[cfg(test)]
            Source::Fake(f) => f.in_flight(),
        }
    }

    fn next_done(&mut self) -> Option<Fetched> {
        match self {
            Source::Api(f) => f.next_done(),
            #[cfg(test)]
            Source::Fake(f) => f.next_done(),
        }
    }
}

/// How look-ups run and what their answers become.
pub(super) struct LookupSettings {
    /// Look-ups under way at once; users beyond it wait their turn.
    pub(super) max_in_flight: usize,
    /// After a failed look-up, how long until a user's next event looks it up again.
    pub(super) min_refetch_ms: u64,
    pub(super) max_history: usize,
}

pub(super) struct Lookups {
    settings: LookupSettings,
    source: Source,
    /// Users being looked up, with their events that arrived meanwhile, in order.
    pending: FxHashMap<Text, VecDeque<Queued>>,
    /// The state of users looked up again after a failed look-up, meanwhile.
    refetching: FxHashMap<Text, UserState>,
    /// Users with pending events whose look-up waits for a free slot.
    waiting: VecDeque<Text>,
    stats: Rc<Counters>,
    fetch_log: LogLimiter,
}

/// A finished look-up, with the events that waited for it.
pub(super) struct Done {
    pub(super) user: Text,
    pub(super) result: Result<ProfileData, FetchError>,
    /// The state kept while it was looked up again after a failed look-up.
    before: Option<UserState>,
    pub(super) queue: VecDeque<Queued>,
}

impl Done {
    /// The time of its first event: the time its answer is as of.
    pub(super) fn first(&self) -> Time {
        self.queue.front().map(|q| q.time).unwrap_or_default()
    }
}

impl Lookups {
    pub(super) fn new(settings: LookupSettings, source: Source, stats: Rc<Counters>) -> Self {
        Lookups {
            settings,
            source,
            pending: FxHashMap::default(),
            refetching: FxHashMap::default(),
            waiting: VecDeque::new(),
            stats,
            fetch_log: LogLimiter::per_10s("failed look-ups"),
        }
    }

    /// The events waiting for `user`'s look-up, if one is under way.
    pub(super) fn queue_of(&mut self, user: &str) -> Option<&mut VecDeque<Queued>> {
        self.pending.get_mut(user)
    }

    /// Looks `user` up, its `queue` of events waiting for it; `before`: its state, kept
    /// meanwhile, when it is looked up again after a failed look-up.
    pub(super) fn start(&mut self, user: Text, queue: VecDeque<Queued>, before: Option<UserState>) {
        if let Some(before) = before {
            self.refetching.insert(user.clone(), before);
        }
        self.pending.insert(user.clone(), queue);
        if self.source.in_flight() < self.settings.max_in_flight {
            self.fetch(user);
        } else {
            self.waiting.push_back(user);
        }
    }

    fn fetch(&mut self, user: Text) {
        Counters::add(&self.stats.fetched, 1);
        self.source.start(user);
    }

    /// The next finished look-up; starts waiting ones as slots free up.
    pub(super) fn next_done(&mut self) -> Option<Done> {
        loop {
            while let Some((user, result)) = self.source.next_done() {
                let Some(queue) = self.pending.remove(&user) else {
                    continue;
                };
                let before = self.refetching.remove(&user);
                return Some(Done {
                    user,
                    result,
                    before,
                    queue,
                });
            }
            let mut started = false;
            while self.source.in_flight() < self.settings.max_in_flight {
                let Some(user) = self.waiting.pop_front() else {
                    break;
                };
                started = true;
                self.fetch(user);
            }
            if !started {
                return None;
            }
        }
    }

    /// `done`'s user, its events, and its state from the answer, before they are
    /// applied. A failed look-up gives the empty state (or the state kept), looked up
    /// again later.
    pub(super) fn settle(&mut self, done: Done) -> (Text, VecDeque<Queued>, UserState) {
        let first = done.first();
        let Done {
            user,
            result,
            before,
            queue,
        } = done;
        let state = match (result, before) {
            (Ok(data), None) => UserState::from_profile(data, first),
            // A look-up again after a failed one: the API's data, then the events seen
            // since.
            (Ok(data), Some(old)) => {
                let mut state = UserState::from_profile(data, first);
                state.append_history(&old.history, self.settings.max_history);
                state.last_activity = old.last_activity.max(first);
                state.triggers = old.triggers;
                state
            }
            (Err(e), before) => {
                Counters::add(&self.stats.fetch_errors, 1);
                if self.fetch_log.allow() {
                    tracing::warn!(?user, "profile look-up failed, using an empty state: {e}");
                }
                let state = before.unwrap_or_else(|| UserState::empty(first));
                after_failure(state, first, self.settings.min_refetch_ms)
            }
        };
        (user, queue, state)
    }

    /// The users being looked up as a checkpoint of `epoch` saves them: their events,
    /// to be looked up again on restore. Their holds move to `epoch`: the checkpoint has
    /// them, so it need not wait for their look-ups.
    pub(super) fn save_pending(
        &mut self,
        epoch: Time,
        held: &mut HeldTimes,
    ) -> Vec<(Text, PendingUser)> {
        let mut saved = Vec::with_capacity(self.pending.len());
        for (user, queue) in &mut self.pending {
            for q in queue.iter_mut() {
                if q.held < epoch {
                    held.move_later(q.held, epoch);
                    q.held = epoch;
                }
            }
            let pending = PendingUser {
                before: self.refetching.get(user).cloned(),
                events: queue.iter().map(|q| (q.time, q.event.clone())).collect(),
            };
            saved.push((user.clone(), pending));
        }
        saved
    }

    /// No user is being looked up (or waits to be).
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.source.in_flight()
    }

    pub(super) fn tick(&mut self) {
        self.fetch_log.tick();
    }
}

/// `state` after a look-up at `at` failed: looked up again on its first event
/// `min_refetch_ms` later.
pub(super) fn after_failure(mut state: UserState, at: Time, min_refetch_ms: u64) -> UserState {
    state.refetch_after = Some(at.saturating_add(min_refetch_ms));
    state
}
