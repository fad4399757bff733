//! One worker's side of the operator between activations: where each event goes (the
//! stash, its user's look-up queue, or its user's state), and what the frontier and
//! finished look-ups set in motion.

use std::collections::VecDeque;
use std::rc::Rc;

use timely::dataflow::operators::Capability;

use super::apply::{Applier, Passed};
use super::lookups::{Lookups, Queued};
use super::snapshots::{Snapshots, Stash};
use super::table::{Miss, UserTable};
use crate::clock::now_ms;
use crate::counters::Counters;
use crate::model::{EnrichedEvent, SavedUser, Text, Time, UserEvent, UserState};
use crate::operators::held::HeldTimes;
use crate::shutdown::StopFlag;

/// What became of an event offered to the state.
// Returned and matched at once, never stored: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Offer {
    /// Applied; `Some` if it passed the filter.
    Applied(Option<EnrichedEvent>),
    /// Queued behind the user's look-up: its time must be held.
    Queued,
}

/// Where `Core::place` put an event: applied (`Some` if it passed), or to wait for its
/// user's look-up, to start (with the state to refresh, if any).
// `Applied` is nearly every event's: boxed, it would be an allocation each.
#[allow(clippy::large_enum_variant)]
enum Place {
    Applied(Option<Passed>),
    LookUp(Text, Option<UserState>),
}

/// Emits an event that passed, at a held time.
pub(super) trait Emit: FnMut(&HeldTimes, Time, EnrichedEvent) {}
impl<F: FnMut(&HeldTimes, Time, EnrichedEvent)> Emit for F {}

pub(super) struct Core {
    pub(super) table: UserTable,
    pub(super) lookups: Lookups,
    pub(super) applier: Applier,
    /// Times of the events waiting for a look-up and in the stash.
    pub(super) held: HeldTimes,
    stash: Stash,
    pub(super) snapshots: Option<Snapshots>,
    pub(super) stats: Rc<Counters>,
    /// Once set, the run stops: pending timers are left to the final checkpoint.
    stop: StopFlag,
    /// Pending timers fire at once when the input ends (the rule tester).
    pub(super) fire_pending_at_end: bool,
    /// Whether the wait for pending timers after the input was logged.
    waiting_logged: bool,
}

/// The limit timers due before it fire at: the wall clock (the frontier may be ahead of
/// it: a restored epoch, or an ending run's jump to its final epoch).
fn by_the_clock() -> Time {
    now_ms().saturating_add(1)
}

impl Core {
    pub(super) fn new(
        table: UserTable,
        lookups: Lookups,
        applier: Applier,
        snapshots: Option<Snapshots>,
        stats: Rc<Counters>,
        stop: StopFlag,
    ) -> Self {
        let mut table = table;
        if snapshots.as_ref().is_some_and(Snapshots::deltas) {
            table.track_changes();
        }
        Core {
            table,
            lookups,
            applier,
            held: HeldTimes::default(),
            stash: Stash::default(),
            snapshots,
            stats,
            stop,
            fire_pending_at_end: false,
            waiting_logged: false,
        }
    }

    /// Takes an event of the input stamped `time`, held by `cap` if it must wait.
    pub(super) fn arrive(
        &mut self,
        restoring: bool,
        time: Time,
        ev: UserEvent,
        cap: impl Fn() -> Capability<Time>,
    ) -> Option<EnrichedEvent> {
        if self.must_wait(restoring, time) {
            self.held.hold(time, cap);
            self.stash.push(time, ev);
            return None;
        }
        match self.offer(time, ev) {
            Offer::Applied(out) => out,
            Offer::Queued => {
                self.held.hold(time, cap);
                None
            }
        }
    }

    /// Whether an event stamped `time` must wait in the stash; one that need not is
    /// about to be applied, and its time is recorded for the next snapshot's choice.
    fn must_wait(&mut self, restoring: bool, time: Time) -> bool {
        // Behind stashed events, so that a user's events keep their order: the stash is
        // drained only once the frontier is looked at, after the input.
        if restoring || !self.stash.is_empty() {
            return true;
        }
        self.snapshots.as_mut().is_some_and(|s| !s.admits(time))
    }

    // The event is read where it lies (`place` borrows it) and moved once, here, into
    // what keeps it (a queue, an output): passed by value to a call, each move of its
    // ~260 bytes was a `memcpy`.
    #[inline(always)]
    fn offer(&mut self, time: Time, ev: UserEvent) -> Offer {
        if let Some(queue) = self.lookups.queue_of(&ev.user_id) {
            queue.push_back(Queued::at(time, ev));
            return Offer::Queued;
        }
        match self.place(time, &ev) {
            Place::Applied(out) => Offer::Applied(out.map(|p| p.with(ev))),
            Place::LookUp(user, before) => {
                self.lookups
                    .start(user, VecDeque::from([Queued::at(time, ev)]), before);
                Offer::Queued
            }
        }
    }

    /// Applies `ev` to its user's state if the state is here, or says which look-up
    /// to start.
    fn place(&mut self, time: Time, ev: &UserEvent) -> Place {
        let applier = &mut self.applier;
        let live = self
            .table
            .with_live(time, &ev.user_id, |state| applier.apply(time, ev, state));
        let before = match live {
            Ok(out) => return Place::Applied(out),
            Err(Miss::RefetchDue(state)) => Some(state),
            Err(Miss::Expired) => {
                Counters::add(&self.stats.expired, 1);
                None
            }
            Err(Miss::Absent) => None,
        };
        // The users' table, the TTL index and the look-ups key users by `Text`: made here,
        // once per user arriving, not per event.
        let user = Text::from(&ev.user_id);
        if before.is_none()
            && let Some(state) = self.table.recent_state(&user, time)
        {
            let out = self
                .table
                .insert_with(user, state, |state| self.applier.apply(time, ev, state));
            return Place::Applied(out);
        }
        Place::LookUp(user, before)
    }

    /// Completes finished look-ups: builds each user's state and applies the events
    /// that waited for it, passing `emit` those that pass, with their held times.
    pub(super) fn complete_lookups(&mut self, emit: &mut impl Emit) {
        while let Some(done) = self.lookups.next_done() {
            self.table
                .remember(&done.user, done.first(), done.result.as_ref().ok());
            let (user, queue, state) = self.lookups.settle(done);
            let (applier, held) = (&mut self.applier, &mut self.held);
            let key = user.clone();
            self.table.insert_with(user, state, |state| {
                // Its timers, kept through a look-up again, are indexed anew.
                applier.timers.looked_up(&key, state);
                for q in queue {
                    if let Some(passed) = applier.apply(q.time, &q.event, state) {
                        emit(held, q.held, passed.with(q.event));
                    }
                    held.release(q.held);
                }
            });
        }
    }

    /// A user restored from a checkpoint. One that was being looked up is looked up
    /// again, its events held at `hold` (a time that `cap` can give).
    pub(super) fn restore(
        &mut self,
        user: Text,
        saved: SavedUser,
        hold: Time,
        cap: impl Fn() -> Capability<Time>,
    ) {
        Counters::add(&self.stats.restored, 1);
        match saved {
            SavedUser::State(state) => {
                let timers = &mut self.applier.timers;
                let key = user.clone();
                self.table
                    .insert_restored(user, state, |state| timers.restored(&key, state))
            }
            SavedUser::Pending(p) => {
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
                self.lookups.start(user, queue, p.before);
            }
        }
    }

    /// Offers stashed events stamped before `limit`, in time order.
    fn drain_stash(&mut self, limit: Time, emit: &mut impl Emit) {
        let ready = self.stash.take_before(limit);
        if let Some(s) = &mut self.snapshots
            && let Some((t, _)) = ready.last()
        {
            s.applied(*t);
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
    pub(super) fn on_frontier(&mut self, frontier: Option<Time>, emit: &mut impl Emit) {
        let Some(now) = frontier else {
            self.drain_stash(Time::MAX, emit);
            self.fire_after_the_input();
            return;
        };
        let mut through = Time::MAX;
        if let Some(epoch) = self.snapshots.as_ref().and_then(|s| s.due(now)) {
            self.drain_stash(epoch, emit);
            // The snapshot has what is due after its epoch, and no timer due before it.
            self.fire_timers(epoch.min(by_the_clock()));
            let running = !self.lookups.is_empty();
            if let Some(s) = &mut self.snapshots
                && s.ready(epoch, running)
            {
                s.take(epoch, &mut self.table, &mut self.lookups, &mut self.held);
            }
        }
        if let Some(s) = &mut self.snapshots {
            through = s.open_next(now);
        }
        self.drain_stash(through, emit);
        self.fire_timers(now.min(through).min(by_the_clock()));
        // An ending run's clock jumps to its final epoch, up to an interval ahead of the
        // wall clock: the TTL must not count that (the final checkpoint keeps the users).
        if !self.snapshots.as_ref().is_some_and(Snapshots::ending) {
            let expired = self.table.expire(now);
            Counters::add(&self.stats.expired, expired);
        }
    }

    /// After a stop with checkpoints on, pending timers go to the final checkpoint
    /// unfired (and hold no time back): one fired while the final part was being taken
    /// and written (the clock runs on) was in it too, and fired again after the restart.
    fn leaving_timers(&self) -> bool {
        self.stop.is_set() && self.snapshots.is_some()
    }

    /// Fires the timers due before `limit`, unless they are left to the final checkpoint.
    fn fire_timers(&mut self, limit: Time) {
        if !self.leaving_timers() {
            self.applier.timers.fire_due(limit, &mut self.table);
        }
    }

    /// The time the next timer holds back, if it is to fire in this run.
    pub(super) fn next_timer(&self) -> Option<Time> {
        self.applier
            .timers
            .next_due()
            .filter(|_| !self.leaving_timers())
    }

    /// With the input ended: a stop leaves the pending timers to the final checkpoint
    /// (if any); otherwise they fire as they come due by the clock (all at once for the
    /// rule tester).
    fn fire_after_the_input(&mut self) {
        let timers = &mut self.applier.timers;
        if timers.pending() == 0 {
            return;
        }
        if self.stop.is_set() {
            let n = timers.forget();
            if self.snapshots.is_none() {
                Counters::add(&self.stats.timers_dropped, n as u64);
            }
            let kept = if self.snapshots.is_some() {
                "they are in the final checkpoint and fire after a restart"
            } else {
                "without checkpoints they are lost"
            };
            tracing::warn!(
                pending = n,
                "stopped with delayed actions pending (this worker's): {kept}"
            );
            return;
        }
        if !self.waiting_logged {
            self.waiting_logged = true;
            let last = timers.last_due().unwrap_or(0);
            let in_s = last.saturating_sub(now_ms()) as f64 / 1000.0;
            // Each worker says so of its own timers (the users it holds).
            tracing::info!(
                pending = timers.pending(),
                last_due_in_s = in_s,
                "input read: waiting for the delayed actions pending to come due (a stop leaves them to the final checkpoint; a line per worker, each giving its own)"
            );
        }
        let limit = if self.fire_pending_at_end {
            Time::MAX
        } else {
            by_the_clock()
        };
        timers.fire_due(limit, &mut self.table);
    }

    /// Once per activation, after the work: settles a snapshot written, publishes the
    /// gauges. True when the operator must run again (a final snapshot can be taken).
    pub(super) fn finish_activation(&mut self, ended: bool) -> bool {
        let mut again = false;
        if let Some(s) = &mut self.snapshots {
            s.settle(ended, &self.stats, &mut self.table);
            again = s.can_stop_waiting(&self.lookups);
        }
        self.applier.tick();
        self.lookups.tick();
        self.stats.users.set(self.table.len() as u64);
        self.stats
            .lookups_in_flight
            .set(self.lookups.in_flight() as u64);
        self.stats.lookup_backlog.set(self.held.len() as u64);
        self.stats
            .timers_pending
            .set(self.applier.timers.pending() as u64);
        again
    }

    /// Settles a snapshot written, before the frontier is looked at.
    pub(super) fn settle_snapshot(&mut self) {
        if let Some(s) = &mut self.snapshots {
            s.settle(false, &self.stats, &mut self.table);
        }
    }
}
