//! The user-state operator: per-user state with a TTL, filled from the Profile API on a
//! user's first event, updated by every event, and judged by the filter.
//!
//! Input is exchanged on `user_id`, so each user lives on exactly one worker. A user's
//! look-up runs asynchronously (other users' events keep flowing); the user's events
//! that arrive meanwhile wait, in order, and are applied when it completes. While they
//! wait their times are held, so no frontier downstream passes them; a checkpoint that
//! saves a waiting user (its events, to be looked up again on restore) moves those holds
//! to its epoch, so it completes without waiting for the Profile API.
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
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::scheduling::SyncActivator;

use crate::checkpoint::{CheckpointConfig, Ending, PartWriter};

use crate::clock::now_ms;
use crate::counters::Counters;
use crate::filter::Verdict;
use crate::filter::reload::Filters;
use crate::intern::Interner;
use crate::log_limit::LogLimiter;
use crate::model::{
    EnrichedEvent, EnrichedView, HistoryEntry, PendingUser, SavedUser, Text, Time, UserEvent,
    UserState,
};
use crate::operators::backpressure::Backlog;
use crate::operators::held::HeldTimes;
use crate::partition::user_hash;
use crate::profile_api::{Fetcher, ProfileSource};
use crate::store::recent::RecentLookups;
use crate::store::{StateStore, Store, TtlIndex};

#[derive(Clone, Debug)]
pub struct UserStateConfig {
    pub ttl_ms: u64,
    pub max_history: usize,
    /// Look-ups under way at once on this worker; users beyond it wait their turn.
    pub max_in_flight: usize,
    /// After a failed look-up, the user is looked up again on its first event this
    /// long after (instead of keeping the empty checkpoint for the whole TTL).
    pub min_refetch_ms: u64,
}

/// Applies events to a user's state and judges them.
struct Applier {
    max_history: usize,
    filters: Filters,
    /// Events that crossed workers arrive with their own copies of type and name.
    interner: Interner,
    stats: Rc<Counters>,
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
        match self.filters.judge(time, EnrichedView { event: &ev, state }) {
            Verdict::Pass => {
                Counters::add(&self.stats.passed, 1);
                let (targets, errors) = self.filters.targets(EnrichedView { event: &ev, state });
                for reason in errors {
                    Counters::add(&self.stats.script_errors, 1);
                    if self.script_log.allow() {
                        tracing::warn!(user = %ev.user_id, "an action's filter failed, that action skipped: {reason}");
                    }
                }
                (targets != 0).then(|| EnrichedEvent::snapshot(ev, state, targets))
            }
            Verdict::Reject => {
                Counters::add(&self.stats.rejected, 1);
                None
            }
            Verdict::Error(reason) => {
                Counters::add(&self.stats.script_errors, 1);
                if self.script_log.allow() {
                    tracing::warn!(user = %ev.user_id, "filter script failed, event rejected: {reason}");
                }
                None
            }
        }
    }
}

/// Checkpoints taken by this operator (see `crate::checkpoint`).
struct Snapshots {
    cfg: CheckpointConfig,
    worker: usize,
    /// Events stamped at or after this epoch wait in the stash until its snapshot is
    /// taken. None while a snapshot is being written (events then go through: the next
    /// snapshot will be of a later epoch), and before the frontier is first seen.
    next: Option<Time>,
    /// The epoch of the last snapshot; at first, the epoch the run starts in (or the
    /// restored one), which has nothing to snapshot. Set before any frontier is seen:
    /// the first one seen may already be the final epoch, after a long restore.
    last: Time,
    /// The latest time of an event applied.
    max_applied: Time,
    in_progress: Option<InProgress>,
    /// Held at the last epoch whose part is on disk (at first, at the start): nothing
    /// downstream passes an epoch before this worker's part of it exists.
    cap: Option<Capability<Time>>,
    /// Wakes the operator when a part is written (one per writer).
    activator: Box<dyn Fn() -> SyncActivator>,
    ending: Ending,
    /// The final snapshot waits for the look-ups running (see `Ending`).
    awaiting_lookups: bool,
}

/// A snapshot being written.
struct InProgress {
    epoch: Time,
    writer: PartWriter,
}

/// An event waiting for its user's look-up.
struct Queued {
    time: Time,
    /// The time held for it: its own, or the epoch of a checkpoint that saved it.
    held: Time,
    event: UserEvent,
}

/// The operator's state between activations.
struct Manager {
    max_in_flight: usize,
    store: Store,
    ttl: TtlIndex,
    /// Users being looked up, with their events that arrived meanwhile, in order.
    pending: FxHashMap<Text, VecDeque<Queued>>,
    /// The state of users looked up again after a failed look-up, meanwhile.
    refetching: FxHashMap<Text, UserState>,
    /// After a failed look-up, how long until a user's next event looks it up again.
    min_refetch_ms: u64,
    /// Users with pending events whose look-up waits for a free slot.
    waiting: VecDeque<Text>,
    /// What recent look-ups gave, when the TTL is shorter than `min_refetch_ms` (else a
    /// user's look-up is always older than that when it expires, and none is kept).
    recent: Option<RecentLookups>,
    /// Events that arrived early: while a checkpoint is restored, or stamped at or after
    /// the next epoch before the frontier reached it.
    stash: Vec<(Time, UserEvent)>,
    /// Times of the events in `pending` and `stash`.
    held: HeldTimes,
    snapshots: Option<Snapshots>,
    fetcher: Fetcher,
    applier: Applier,
    stats: Rc<Counters>,
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
            queue.push_back(Queued {
                time,
                held: time,
                event: ev,
            });
            return Offer::Queued;
        }
        if let Some(state) = self.store.get_mut(&ev.user_id) {
            let retry_due = state.refetch_after.is_some_and(|t| time >= t);
            if !self.ttl.is_expired(state, time) && !retry_due {
                state.last_activity = state.last_activity.max(time);
                self.ttl.touched(&ev.user_id, state, false);
                return Offer::Applied(self.applier.apply(time, ev, state));
            }
            if retry_due && !self.ttl.is_expired(state, time) {
                // Its last look-up failed: look it up again, keeping what it did since.
                if let Some(state) = self.store.remove(&ev.user_id) {
                    self.refetching.insert(ev.user_id.clone(), state);
                }
            } else {
                // Expired but not swept yet: never served (Flink's NeverReturnExpired).
                self.store.remove(&ev.user_id);
                Counters::add(&self.stats.expired, 1);
            }
        }
        let user = ev.user_id.clone();
        if !self.refetching.contains_key(&user)
            && let Some((at, data)) = self.recent.as_ref().and_then(|r| r.get(&user, time))
        {
            // Looked up less than `min_refetch_ms` ago: that answer again, no request; a
            // failed one gives the empty checkpoint until the interval has passed.
            let mut state = match data {
                Some(data) => UserState::from_profile(data, time),
                None => {
                    let mut state = UserState::empty(time);
                    state.refetch_after = Some(at.saturating_add(self.min_refetch_ms));
                    state
                }
            };
            self.ttl.touched(&user, &mut state, true);
            let out = self.applier.apply(time, ev, &mut state);
            self.ttl.touched(&user, &mut state, false);
            self.store.insert(user, state);
            return Offer::Applied(out);
        }
        let queued = Queued {
            time,
            held: time,
            event: ev,
        };
        self.look_up(user, VecDeque::from([queued]));
        Offer::Queued
    }

    /// Looks `user` up, its `queue` of events waiting for it.
    fn look_up(&mut self, user: Text, queue: VecDeque<Queued>) {
        self.pending.insert(user.clone(), queue);
        if self.fetcher.in_flight() < self.max_in_flight {
            self.start_fetch(user);
        } else {
            self.waiting.push_back(user);
        }
    }

    fn start_fetch(&mut self, user: Text) {
        Counters::add(&self.stats.fetched, 1);
        self.fetcher.start(user);
    }

    /// Completes finished look-ups: builds each user's state and applies the events
    /// that waited for it, passing `emit` those that pass, with their times.
    fn complete_fetches(&mut self, emit: &mut impl FnMut(&HeldTimes, Time, EnrichedEvent)) {
        loop {
            let mut progressed = false;
            while let Some((user, result)) = self.fetcher.next_done() {
                progressed = true;
                let Some(queue) = self.pending.remove(&user) else {
                    continue;
                };
                let first = queue.front().map(|q| q.time).unwrap_or_default();
                let before = self.refetching.remove(&user);
                if let Some(recent) = &mut self.recent {
                    recent.put(user.clone(), first, result.as_ref().ok().cloned());
                }
                let mut state = match (result, before) {
                    (Ok(data), None) => UserState::from_profile(data, first),
                    // A look-up again after a failed one: the API's data, then the
                    // events seen since.
                    (Ok(data), Some(old)) => {
                        let mut state = UserState::from_profile(data, first);
                        let history = Arc::make_mut(&mut state.history);
                        history.extend(old.history.iter().cloned());
                        while history.len() > self.applier.max_history {
                            history.pop_front();
                        }
                        state.last_activity = old.last_activity.max(first);
                        state
                    }
                    (Err(e), before) => {
                        Counters::add(&self.stats.fetch_errors, 1);
                        if self.fetch_log.allow() {
                            tracing::warn!(%user, "profile look-up failed, using an empty checkpoint: {e}");
                        }
                        let mut state = before.unwrap_or_else(|| UserState::empty(first));
                        state.refetch_after = Some(first.saturating_add(self.min_refetch_ms));
                        state
                    }
                };
                self.ttl.touched(&user, &mut state, true);
                for q in queue {
                    if let Some(out) = self.applier.apply(q.time, q.event, &mut state) {
                        emit(&self.held, q.held, out);
                    }
                    self.held.release(q.held);
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

impl Manager {
    /// Whether an event stamped `time` must wait in the stash; one that need not is
    /// about to be applied, and its time is recorded for the next snapshot's choice.
    fn must_wait(&mut self, restoring: bool, time: Time) -> bool {
        match &mut self.snapshots {
            // Behind stashed events, so that a user's events keep their order: the stash
            // is drained only once the frontier is looked at, after the input.
            _ if restoring || !self.stash.is_empty() => true,
            Some(s) => {
                if s.next.is_some_and(|next| time >= next) {
                    return true;
                }
                s.max_applied = s.max_applied.max(time);
                false
            }
            None => false,
        }
    }

    /// A user restored from a checkpoint. One that was being looked up is looked up
    /// again, its events held at `hold` (a time that `cap` can give).
    fn restore(
        &mut self,
        user: Text,
        saved: SavedUser,
        hold: Time,
        cap: impl Fn() -> Capability<Time>,
    ) {
        Counters::add(&self.stats.restored, 1);
        match saved {
            SavedUser::State(mut state) => {
                self.ttl.touched(&user, &mut state, true);
                self.store.insert(user, state);
            }
            SavedUser::Pending(p) => {
                if let Some(before) = p.before {
                    self.refetching.insert(user.clone(), before);
                }
                let queue = p
                    .events
                    .into_iter()
                    .map(|(time, event)| {
                        self.held.hold(hold, &cap);
                        Queued {
                            time,
                            held: hold,
                            event,
                        }
                    })
                    .collect();
                self.look_up(user, queue);
            }
        }
    }

    /// Offers stashed events stamped before `limit`, in time order.
    fn drain_stash(&mut self, limit: Time, emit: &mut impl FnMut(&HeldTimes, Time, EnrichedEvent)) {
        if self.stash.is_empty() {
            return;
        }
        // Stable: a user's events keep their order within a time.
        self.stash.sort_by_key(|(t, _)| *t);
        let split = self.stash.partition_point(|(t, _)| *t < limit);
        let ready: Vec<_> = self.stash.drain(..split).collect();
        if let Some(s) = &mut self.snapshots
            && let Some((t, _)) = ready.last()
        {
            s.max_applied = s.max_applied.max(*t);
        }
        for (time, ev) in ready {
            match self.offer(time, ev) {
                Offer::Applied(out) => {
                    if let Some(out) = out {
                        emit(&self.held, time, out);
                    }
                    self.held.release(time);
                }
                Offer::Queued => {} // its hold moves with it to the look-up queue
            }
        }
    }

    /// Acts on the input frontier: takes the snapshot of an epoch it reached, lets
    /// stashed events through, expires idle users. `None`: the input has ended.
    fn on_frontier(
        &mut self,
        frontier: Option<Time>,
        emit: &mut impl FnMut(&HeldTimes, Time, EnrichedEvent),
    ) {
        let Some(now) = frontier else {
            self.drain_stash(Time::MAX, emit);
            return;
        };
        let Some(s) = &mut self.snapshots else {
            self.drain_stash(Time::MAX, emit);
            self.expire(now);
            return;
        };
        let last = s.last;
        if s.in_progress.is_none() {
            let epoch = s.cfg.epoch_at(now);
            if epoch > last {
                self.drain_stash(epoch, emit);
                let s = self.snapshots.as_mut().expect("checked above");
                s.awaiting_lookups = s.ending.get() && !self.pending.is_empty();
                // Every event applied is before `epoch` unless events went through while
                // the previous snapshot was written; then a later epoch will do.
                if s.max_applied < epoch {
                    if s.awaiting_lookups {
                        // Later events wait until it is taken.
                        s.next = Some(epoch);
                    } else {
                        s.last = epoch;
                        s.next = None;
                        self.start_snapshot(epoch);
                    }
                }
            }
        }
        // Not writing: events from the next epoch on wait for its snapshot.
        if let Some(s) = &mut self.snapshots
            && s.in_progress.is_none()
            && s.next.is_none()
        {
            s.next = Some(s.cfg.epoch_after(now.max(s.max_applied).max(s.last)));
        }
        let through = self
            .snapshots
            .as_ref()
            .map_or(Time::MAX, |s| s.next.unwrap_or(Time::MAX));
        self.drain_stash(through, emit);
        self.expire(now);
    }

    fn expire(&mut self, now: Time) {
        if let Some(recent) = &mut self.recent {
            recent.prune(now);
        }
        let expired = self.ttl.expire(now, &mut self.store);
        if expired > 0 {
            tracing::debug!(
                expired,
                users = self.store.len(),
                "state TTL expired idle users"
            );
        }
        Counters::add(&self.stats.expired, expired);
    }

    /// Starts writing this worker's part of `epoch`: a copy of the store now (shallow,
    /// or a RocksDB checkpoint), and the users being looked up as their events, to be
    /// looked up again on restore. Their events' holds move to `epoch`: the checkpoint
    /// holds them, so it need not wait for their look-ups.
    fn start_snapshot(&mut self, epoch: Time) {
        let Some(s) = &mut self.snapshots else { return };
        let copy = match self.store.snapshot() {
            Ok(copy) => copy,
            Err(e) => {
                // Without its part this epoch's checkpoint never completes; the next
                // epoch tries again.
                tracing::error!(epoch, worker = s.worker, "checkpoint part not started: {e}");
                return;
            }
        };
        let mut pending = Vec::with_capacity(self.pending.len());
        for (user, queue) in &mut self.pending {
            for q in queue.iter_mut() {
                if q.held < epoch {
                    self.held.move_later(q.held, epoch);
                    q.held = epoch;
                }
            }
            let saved = PendingUser {
                before: self.refetching.get(user).cloned(),
                events: queue.iter().map(|q| (q.time, q.event.clone())).collect(),
            };
            pending.push((user.clone(), saved));
        }
        tracing::debug!(
            epoch,
            users = self.store.len(),
            pending = pending.len(),
            "checkpoint started"
        );
        let writer = PartWriter::start(
            s.cfg.state_path(epoch, s.worker),
            copy.into_part(pending),
            {
                let activator = (s.activator)();
                Box::new(move || {
                    let _ = activator.activate();
                })
            },
        );
        s.in_progress = Some(InProgress { epoch, writer });
    }

    /// The final snapshot waited for look-ups, and they are done.
    fn snapshot_can_stop_waiting(&self) -> bool {
        self.pending.is_empty() && self.snapshots.as_ref().is_some_and(|s| s.awaiting_lookups)
    }

    /// Once the snapshot's part is on disk, lets the frontier downstream pass its
    /// epoch. With the input ended, lets go entirely.
    fn settle_snapshot(&mut self, ended: bool) {
        let Some(s) = &mut self.snapshots else { return };
        if let Some(p) = &mut s.in_progress
            && let Some(result) = p.writer.poll()
        {
            match result {
                Ok(info) => {
                    self.stats.state_bytes.set(info.bytes);
                    tracing::info!(
                        epoch = p.epoch,
                        worker = s.worker,
                        users = info.users,
                        bytes = info.bytes,
                        ms = info.duration.as_millis() as u64,
                        "checkpoint part written"
                    )
                }
                Err(e) => tracing::error!(
                    epoch = p.epoch,
                    "checkpoint part not written, the checkpoint will not complete: {e}"
                ),
            }
            if let Some(cap) = &mut s.cap
                && *cap.time() < p.epoch
            {
                cap.downgrade(&p.epoch);
            }
            s.in_progress = None;
        }
        if ended && s.in_progress.is_none() {
            s.cap = None;
        }
    }
}

/// Keeps each user's state, applies every event to it, and emits the events that
/// `filter` passes, enriched with their user's data.
///
/// `events` is exchanged on a stable hash of `user_id`; so is `restored` (the users of a
/// checkpoint being restored), so a checkpoint lands on the right workers whatever their
/// number. Events wait until the restore is complete. With `checkpoints`, this
/// operator writes its worker's part of each checkpoint (`Ending` tells it which is the
/// last). `backlog` tells the source how
/// many events wait (for a look-up, or for a restore or snapshot). `store` holds the
/// users (in memory or in RocksDB).
#[allow(clippy::too_many_arguments)]
pub fn user_state<'s>(
    events: Stream<'s, Time, Vec<UserEvent>>,
    restored: Stream<'s, Time, Vec<(Text, SavedUser)>>,
    cfg: UserStateConfig,
    checkpoints: Option<(CheckpointConfig, Ending)>,
    profiles: &ProfileSource,
    runtime: tokio::runtime::Handle,
    filters: Filters,
    store: Store,
    backlog: Backlog,
    stats: Rc<Counters>,
) -> Stream<'s, Time, Vec<EnrichedEvent>> {
    let scope = events.scope();
    let profiles = profiles.clone();
    let by_user = Exchange::new(|ev: &UserEvent| user_hash(&ev.user_id));
    let by_restored_user = Exchange::new(|r: &(Text, SavedUser)| user_hash(&r.0));
    events.binary_frontier(
        restored,
        by_user,
        by_restored_user,
        "UserState",
        move |cap, info| {
            let worker = scope.worker().clone();
            let address = info.address.to_vec();
            let activator = worker.sync_activator_for(address.clone());
            let wake = scope.activator_for(info.address.clone());
            let snapshots = checkpoints.map(|(cfg, ending)| Snapshots {
                last: cfg.epoch_at(now_ms()).max(cfg.restored_epoch),
                cfg,
                worker: worker.index(),
                next: None,
                max_applied: 0,
                in_progress: None,
                cap: Some(cap),
                activator: Box::new(move || worker.sync_activator_for(address.clone())),
                ending,
                awaiting_lookups: false,
            });
            let mut m = Manager {
                max_in_flight: cfg.max_in_flight,
                store,
                ttl: TtlIndex::new(cfg.ttl_ms),
                pending: FxHashMap::default(),
                refetching: FxHashMap::default(),
                min_refetch_ms: cfg.min_refetch_ms,
                waiting: VecDeque::new(),
                recent: (cfg.ttl_ms < cfg.min_refetch_ms)
                    .then(|| RecentLookups::new(cfg.min_refetch_ms)),
                stash: Vec::new(),
                held: HeldTimes::default(),
                snapshots,
                fetcher: Fetcher::new(&profiles, cfg.max_in_flight, runtime, activator),
                applier: Applier {
                    max_history: cfg.max_history,
                    filters,
                    interner: Interner::default(),
                    stats: stats.clone(),
                    script_log: LogLimiter::per_10s("filter script errors"),
                },
                stats,
                fetch_log: LogLimiter::per_10s("failed look-ups"),
            };
            move |(input, frontier), (restore, restore_frontier), output| {
                m.applier.filters.refresh();
                restore.for_each(|cap, records| {
                    // A restored user's events that wait for a look-up again are held at
                    // the run's first epoch, not before: the restored checkpoint has them.
                    let first = m.snapshots.as_ref().map_or(0, |s| s.last);
                    let hold = cap.least().map_or(first, |t| first.max(*t));
                    for (user, saved) in records.drain(..) {
                        m.restore(user, saved, hold, || cap.delayed(&hold, 0));
                    }
                });
                let restoring = !restore_frontier.frontier().is_empty();
                // In arrival order: a user's events must be applied in the order they
                // were read (`for_each_stamp` sorts containers by time, unstably).
                input.for_each(|cap, batch| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for ev in batch.drain(..) {
                        if m.must_wait(restoring, time) {
                            m.held.hold(time, || cap.delayed(&time, 0));
                            m.stash.push((time, ev));
                            continue;
                        }
                        match m.offer(time, ev) {
                            Offer::Applied(Some(out)) => session.give(out),
                            Offer::Applied(None) => {}
                            Offer::Queued => m.held.hold(time, || cap.delayed(&time, 0)),
                        }
                    }
                });
                let mut emit = |held: &HeldTimes, time: Time, out: EnrichedEvent| {
                    output.session(&held.capability_for(time)).give(out);
                };
                let ended = frontier.frontier().is_empty() && !restoring;
                m.settle_snapshot(false);
                if !restoring {
                    m.on_frontier(frontier.frontier().first().copied(), &mut emit);
                }
                // After the frontier: stashed events let through may have started look-ups
                // that (from a snapshot file) are done at once.
                m.complete_fetches(&mut emit);
                m.settle_snapshot(ended);
                if m.snapshot_can_stop_waiting() {
                    wake.activate();
                }
                m.applier.script_log.tick();
                m.fetch_log.tick();
                backlog.set(m.held.len());
                m.stats.users.set(m.store.len() as u64);
                m.stats.lookups_in_flight.set(m.fetcher.in_flight() as u64);
                m.stats.lookup_backlog.set(m.held.len() as u64);
            }
        },
    )
}
