//! The `UserStateManager`: per-user state with a TTL, filled from the Profile API on a
//! user's first event, updated by every event, and judged by the filter.
//!
//! Input is exchanged on `user_id`, so each user lives on exactly one worker. A user's
//! look-up runs asynchronously (other users' events keep flowing); the user's events
//! that arrive meanwhile wait, in order, and are applied when it completes. While they
//! wait their times are held, so no frontier downstream passes them.
//!
//! The filter runs here, on the state in place: only the events it passes are copied
//! out with a snapshot of their user's data. (Flink copies every enriched event, history
//! and all, to its filter; that copy was its largest cost.)

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::filter::{Filter, Verdict};
use crate::intern::Interner;
use crate::log_limit::LogLimiter;
use crate::model::{EnrichedEvent, EnrichedView, HistoryEntry, Text, Time, UserEvent, UserState};
use crate::operators::backpressure::Backlog;
use crate::operators::held::HeldTimes;
use crate::partition::user_hash;
use crate::profile_api::{Fetcher, ProfileSource};
use crate::state::{MemoryStore, StateStore, TtlIndex};
use crate::stats::Stats;

#[derive(Clone, Debug)]
pub struct UserStateConfig {
    pub ttl_ms: u64,
    pub max_history: usize,
    /// Look-ups under way at once on this worker; users beyond it wait their turn.
    pub max_in_flight: usize,
}

/// Applies events to a user's state and judges them.
struct Applier {
    max_history: usize,
    filter: Filter,
    /// Events that crossed workers arrive with their own copies of type and name.
    interner: Interner,
    stats: Rc<Stats>,
    script_log: LogLimiter,
}

impl Applier {
    /// Applies `ev` to `state` (history, visit, activity) as the original did, then
    /// judges it; returns the event to emit when it passes.
    fn apply(&mut self, time: Time, ev: UserEvent, state: &mut UserState) -> Option<EnrichedEvent> {
        state.last_activity = state.last_activity.max(time);
        let history = Arc::make_mut(&mut state.history);
        history.push_back(HistoryEntry {
            event_id: ev.event_id.clone(),
            event_name: ev.event_name.as_ref().map(|n| self.interner.share(n)),
            event_type: Some(self.interner.share(&ev.event_type)),
            timestamp: ev.timestamp,
            parameters: ev.parameters.clone(),
        });
        while history.len() > self.max_history {
            history.pop_front();
        }
        if let Some(visit) = &mut state.visit {
            let visit = Arc::make_mut(visit);
            if ev.is_first_in_visit {
                visit.timestamp = ev.timestamp;
            }
            visit.actions += 1;
        }
        match self.filter.judge(EnrichedView { event: &ev, state }) {
            Verdict::Pass => {
                Stats::add(&self.stats.passed, 1);
                Some(EnrichedEvent::snapshot(ev, state))
            }
            Verdict::Reject => {
                Stats::add(&self.stats.rejected, 1);
                None
            }
            Verdict::Error(reason) => {
                Stats::add(&self.stats.script_errors, 1);
                if let Some(held_back) = self.script_log.allow() {
                    tracing::warn!(user = %ev.user_id, held_back, "filter script failed, event rejected: {reason}");
                }
                None
            }
        }
    }
}

/// The operator's state between activations.
struct Manager {
    max_in_flight: usize,
    store: MemoryStore,
    ttl: TtlIndex,
    /// Users being looked up, with their events that arrived meanwhile, in order.
    pending: FxHashMap<Text, VecDeque<(Time, UserEvent)>>,
    /// Users with pending events whose look-up waits for a free slot.
    waiting: VecDeque<Text>,
    /// Times of the events in `pending`.
    held: HeldTimes,
    fetcher: Fetcher,
    applier: Applier,
    stats: Rc<Stats>,
    fetch_log: LogLimiter,
}

/// What became of an event offered to the state.
// Returned and matched at once, never stored: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Offer {
    /// Applied; `Some` if it passed the filter.
    Applied(Option<EnrichedEvent>),
    /// Queued behind the user's look-up: its time must be held.
    Queued,
}

impl Manager {
    fn offer(&mut self, time: Time, ev: UserEvent) -> Offer {
        if let Some(queue) = self.pending.get_mut(&ev.user_id) {
            queue.push_back((time, ev));
            return Offer::Queued;
        }
        if let Some(state) = self.store.get_mut(&ev.user_id) {
            if !self.ttl.is_expired(state, time) {
                state.last_activity = state.last_activity.max(time);
                self.ttl.touched(&ev.user_id, state, false);
                return Offer::Applied(self.applier.apply(time, ev, state));
            }
            // Expired but not swept yet: never served (Flink's NeverReturnExpired).
            self.store.remove(&ev.user_id);
            Stats::add(&self.stats.expired, 1);
        }
        let user = ev.user_id.clone();
        self.pending
            .insert(user.clone(), VecDeque::from([(time, ev)]));
        if self.fetcher.in_flight() < self.max_in_flight {
            self.start_fetch(user);
        } else {
            self.waiting.push_back(user);
        }
        Offer::Queued
    }

    fn start_fetch(&mut self, user: Text) {
        Stats::add(&self.stats.fetched, 1);
        self.fetcher.start(user);
    }

    /// Completes finished look-ups: builds each user's state and applies the events
    /// that waited for it, passing `emit` those that pass, with their times.
    fn complete_fetches(&mut self, mut emit: impl FnMut(&HeldTimes, Time, EnrichedEvent)) {
        loop {
            let mut progressed = false;
            while let Some((user, result)) = self.fetcher.next_done() {
                progressed = true;
                let Some(queue) = self.pending.remove(&user) else {
                    continue;
                };
                let first = queue.front().map(|(t, _)| *t).unwrap_or_default();
                let mut state = match result {
                    Ok(data) => UserState::from_profile(data, first),
                    Err(e) => {
                        Stats::add(&self.stats.fetch_errors, 1);
                        if let Some(held_back) = self.fetch_log.allow() {
                            tracing::warn!(%user, held_back, "profile look-up failed, using an empty checkpoint: {e}");
                        }
                        UserState::empty(first)
                    }
                };
                self.ttl.touched(&user, &mut state, true);
                for (time, ev) in queue {
                    if let Some(out) = self.applier.apply(time, ev, &mut state) {
                        emit(&self.held, time, out);
                    }
                    self.held.release(time);
                }
                self.ttl.touched(&user, &mut state, false);
                self.store.insert(user, state);
            }
            while self.fetcher.in_flight() < self.max_in_flight {
                let Some(user) = self.waiting.pop_front() else {
                    break;
                };
                progressed = true;
                self.start_fetch(user);
            }
            if !progressed {
                break;
            }
        }
    }
}

/// Keeps each user's state, applies every event to it, and emits the events that
/// `filter` passes, enriched with their user's data.
///
/// `events` is exchanged on a stable hash of `user_id`. `backlog` tells the source how
/// many events wait for a look-up.
pub fn user_state<'s>(
    events: Stream<'s, Time, Vec<UserEvent>>,
    cfg: UserStateConfig,
    profiles: &ProfileSource,
    runtime: tokio::runtime::Handle,
    filter: Filter,
    backlog: Backlog,
    stats: Rc<Stats>,
) -> Stream<'s, Time, Vec<EnrichedEvent>> {
    let scope = events.scope();
    let profiles = profiles.clone();
    let pact = Exchange::new(|ev: &UserEvent| user_hash(&ev.user_id));
    events.unary_frontier(pact, "UserState", move |_cap, info| {
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        let mut m = Manager {
            max_in_flight: cfg.max_in_flight,
            store: MemoryStore::default(),
            ttl: TtlIndex::new(cfg.ttl_ms),
            pending: FxHashMap::default(),
            waiting: VecDeque::new(),
            held: HeldTimes::default(),
            fetcher: Fetcher::new(&profiles, runtime, activator),
            applier: Applier {
                max_history: cfg.max_history,
                filter,
                interner: Interner::default(),
                stats: stats.clone(),
                script_log: LogLimiter::default(),
            },
            stats,
            fetch_log: LogLimiter::default(),
        };
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, batches| {
                let Some(&time) = cap.least() else { return };
                let mut session = output.session(&cap);
                for batch in batches {
                    for ev in batch.drain(..) {
                        match m.offer(time, ev) {
                            Offer::Applied(Some(out)) => session.give(out),
                            Offer::Applied(None) => {}
                            Offer::Queued => m.held.hold(time, || cap.delayed(&time, 0)),
                        }
                    }
                }
            });
            m.complete_fetches(|held, time, out| {
                output.session(&held.capability_for(time)).give(out);
            });
            backlog.set(m.held.len());
            if let Some(&now) = frontier.frontier().first() {
                let expired = m.ttl.expire(now, &mut m.store);
                if expired > 0 {
                    tracing::debug!(
                        expired,
                        users = m.store.len(),
                        "state TTL expired idle users"
                    );
                }
                Stats::add(&m.stats.expired, expired);
                tracing::trace!(now, queued = m.ttl.queued(), "frontier moved");
            }
        }
    })
}
