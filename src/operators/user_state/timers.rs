//! The actions' caps and delays on one worker (`crate::triggers`): judging the caps of
//! an event's actions, scheduling its delayed ones, cancelling them (`cancel-if`), and
//! firing them when the frontier passes their due time.
//!
//! Each pending timer lives in its user's state (so checkpoints and RocksDB have it);
//! the index here says which users to look at when, `(due, id) -> user`. A timer's
//! id is unique on this worker; restored timers get new ones.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::table::UserTable;
use crate::counters::Counters;
use crate::filter::reload::Filters;
use crate::log_limit::LogLimiter;
use crate::model::{EnrichedEvent, EnrichedView, Text, Time, UserEvent, UserState};
use crate::triggers::{self, Schedules, Timer};

pub(super) struct Timers {
    schedules: Schedules,
    /// Bits of the actions with a delay, and of those with a cap or a delay.
    delayed: u64,
    scheduled_or_capped: u64,
    max_per_user: usize,
    index: BTreeMap<(Time, u64), Text>,
    next_id: u64,
    /// Fired timers' events, with their due times, for the operator to emit.
    fired: Vec<(Time, EnrichedEvent)>,
    stats: Rc<Counters>,
    log: LogLimiter,
}

impl Timers {
    pub(super) fn new(schedules: Schedules, max_per_user: usize, stats: Rc<Counters>) -> Self {
        Timers {
            delayed: schedules.bits(|s| s.delay_ms.is_some()),
            scheduled_or_capped: schedules.bits(|s| s.is_capped() || s.delay_ms.is_some()),
            schedules,
            max_per_user,
            index: BTreeMap::new(),
            next_id: 0,
            fired: Vec::new(),
            stats,
            log: LogLimiter::per_10s("delayed actions"),
        }
    }

    /// Whether any action has a delay (then the operator keeps a capability to fire
    /// with).
    pub(super) fn any_delayed(&self) -> bool {
        self.delayed != 0
    }

    /// Of the actions `targets` an event stamped `time` passed for, those to fire now:
    /// capped ones that may fire (their firing recorded), and the rest without a cap
    /// or delay. Delayed ones are scheduled.
    pub(super) fn on_pass(
        &mut self,
        time: Time,
        ev: &UserEvent,
        state: &mut UserState,
        targets: u64,
    ) -> u64 {
        let mut special = targets & self.scheduled_or_capped;
        let mut now = targets & !special;
        while special != 0 {
            let i = special.trailing_zeros() as usize;
            special &= special - 1;
            let a = &self.schedules.0[i];
            if let Some(delay) = a.schedule.delay_ms {
                let timer = Timer {
                    id: self.next_id,
                    action: a.name.clone(),
                    due: time.saturating_add(delay),
                    read_at: time,
                    event: ev.clone(),
                };
                self.schedule(&ev.user_id, state, timer);
            } else if triggers::of(&mut state.triggers).admit(&a.name, &a.schedule, time) {
                now |= 1 << i;
            } else {
                Counters::add(&self.stats.capped, 1);
            }
        }
        now
    }

    fn schedule(&mut self, user: &str, state: &mut UserState, timer: Timer) {
        let key = (timer.due, timer.id);
        if triggers::of(&mut state.triggers).schedule(timer, self.max_per_user) {
            self.next_id += 1;
            self.index.insert(key, Text::from(user));
            Counters::add(&self.stats.scheduled, 1);
        } else {
            Counters::add(&self.stats.timers_dropped, 1);
            if self.log.allow() {
                tracing::warn!(
                    ?user,
                    max = self.max_per_user,
                    "a delayed action was not scheduled: the user has state.max-timers-per-user pending"
                );
            }
        }
    }

    /// Cancels the pending timers of `ev`'s user (its state `state`, `ev` applied) that
    /// `ev`, stamped `time`, cancels: those of actions whose `cancel-if` passes it, due
    /// after `time`.
    pub(super) fn cancel(
        &mut self,
        time: Time,
        ev: &UserEvent,
        filters: &Filters,
        state: &mut UserState,
    ) {
        let Some(t) = &state.triggers else { return };
        if t.pending.is_empty() {
            return;
        }
        let mut hit = Vec::new();
        for (i, a) in self.schedules.0.iter().enumerate() {
            if !t.has_pending(&a.name, time) {
                continue;
            }
            match filters.cancels(i, EnrichedView { event: ev, state }) {
                Ok(true) => hit.push(a.name.clone()),
                Ok(false) => {}
                Err(e) => {
                    Counters::add(&self.stats.script_errors, 1);
                    if self.log.allow() {
                        tracing::warn!(user = ?ev.user_id, "a cancel-if failed, nothing cancelled: {e}");
                    }
                }
            }
        }
        let t = triggers::of(&mut state.triggers);
        for name in hit {
            for timer in t.cancel(&name, time) {
                self.index.remove(&(timer.due, timer.id));
                Counters::add(&self.stats.cancelled, 1);
            }
        }
    }

    /// Adds restored `user`'s pending timers to the index, with ids of this worker (the
    /// ids they were saved with are another run's).
    pub(super) fn restored(&mut self, user: &Text, state: &mut UserState) {
        let Some(t) = &mut state.triggers else { return };
        for timer in &mut t.pending {
            timer.id = self.next_id;
            self.next_id += 1;
            self.index.insert((timer.due, timer.id), user.clone());
        }
    }

    /// Puts `user`'s pending timers back in the index after its look-up again (those
    /// that came due meanwhile were taken out of it, and fire now).
    pub(super) fn looked_up(&mut self, user: &Text, state: &UserState) {
        let Some(t) = &state.triggers else { return };
        for timer in &t.pending {
            self.index.insert((timer.due, timer.id), user.clone());
        }
    }

    /// Fires the timers due before `limit`, each judged by its action's caps at its due
    /// time; what fires waits in `take_fired`.
    pub(super) fn fire_due(&mut self, limit: Time, table: &mut UserTable) {
        while let Some(entry) = self.index.first_entry() {
            let (due, id) = *entry.key();
            if due >= limit {
                break;
            }
            let user = entry.remove();
            // Absent: being looked up again; back in the index when its look-up is done.
            let Some(state) = table.get_mut(&user) else {
                continue;
            };
            let Some(t) = &mut state.triggers else {
                continue;
            };
            let Some(at) = t.pending.iter().position(|t| t.id == id) else {
                continue;
            };
            let timer = t.pending.remove(at);
            self.fire(timer, state);
        }
    }

    fn fire(&mut self, timer: Timer, state: &mut UserState) {
        let Some(i) = self.schedules.position(&timer.action) else {
            Counters::add(&self.stats.timers_dropped, 1);
            tracing::warn!(action = %timer.action, "a restored delayed action's action is no longer configured: dropped");
            return;
        };
        let a = &self.schedules.0[i];
        if !triggers::of(&mut state.triggers).admit(&a.name, &a.schedule, timer.due) {
            Counters::add(&self.stats.capped, 1);
            return;
        }
        Counters::add(&self.stats.fired, 1);
        let due = timer.due;
        let mut out = EnrichedEvent::snapshot(timer.event, state, 1 << i);
        out.read_at = Some(timer.read_at);
        self.fired.push((due, out));
    }

    /// The events of the timers fired since the last call, with their due times.
    pub(super) fn take_fired(&mut self) -> Vec<(Time, EnrichedEvent)> {
        std::mem::take(&mut self.fired)
    }

    /// The earliest due time pending.
    pub(super) fn next_due(&self) -> Option<Time> {
        self.index.keys().next().map(|(due, _)| *due)
    }

    /// The latest due time pending.
    pub(super) fn last_due(&self) -> Option<Time> {
        self.index.keys().next_back().map(|(due, _)| *due)
    }

    pub(super) fn pending(&self) -> usize {
        self.index.len()
    }

    /// Forgets every pending timer (the run stops; its final checkpoint has them, if
    /// checkpoints are on). Returns how many.
    pub(super) fn forget(&mut self) -> usize {
        let n = self.index.len();
        self.index.clear();
        n
    }

    pub(super) fn tick(&mut self) {
        self.log.tick();
    }
}
