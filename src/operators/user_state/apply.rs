//! Applying an event to its user's state, and judging it with the filter.

use std::rc::Rc;

use super::timers::Timers;
use crate::counters::Counters;
use crate::filter::Verdict;
use crate::filter::reload::Filters;
use crate::log_limit::LogLimiter;
use crate::model::{EnrichedEvent, EnrichedView, Time, UserEvent, UserState};

/// What an event that passed leaves: its user's data as the event left it, to be
/// joined by the event itself (`with`), which the caller owns: a passing event is
/// moved to the output, not copied.
pub(super) struct Passed(EnrichedEvent);

impl Passed {
    pub(super) fn with(self, event: UserEvent) -> EnrichedEvent {
        EnrichedEvent { event, ..self.0 }
    }
}

/// Applies events to a user's state and judges them.
pub(super) struct Applier {
    pub(super) max_history: usize,
    pub(super) filters: Filters,
    /// The actions' caps and delays.
    pub(super) timers: Timers,
    stats: Rc<Counters>,
    script_log: LogLimiter,
}

impl Applier {
    pub(super) fn new(
        max_history: usize,
        filters: Filters,
        timers: Timers,
        stats: Rc<Counters>,
    ) -> Self {
        Applier {
            max_history,
            filters,
            timers,
            stats,
            script_log: LogLimiter::per_10s("filter script errors"),
        }
    }

    /// Once per activation: picks up a new filter version, lets the log limiter count.
    pub(super) fn refresh(&mut self) {
        self.filters.refresh();
    }

    pub(super) fn tick(&mut self) {
        self.script_log.tick();
        self.timers.tick();
    }

    /// Applies `ev` to `state` (history, visit, activity) as the original did, then
    /// judges it; what it leaves when it passes.
    pub(super) fn apply(
        &mut self,
        time: Time,
        ev: &UserEvent,
        state: &mut UserState,
    ) -> Option<Passed> {
        state.last_activity = state.last_activity.max(time);
        state.append_event(ev, self.max_history);
        if let Some(visit) = &mut state.visit {
            let visit = crate::model::sole_mut(visit);
            if ev.is_first_in_visit {
                visit.timestamp = ev.timestamp;
            }
            visit.actions += 1;
        }
        self.timers.cancel(time, ev, &self.filters, state);
        self.judge(time, ev, state)
    }

    fn judge(&mut self, time: Time, ev: &UserEvent, state: &mut UserState) -> Option<Passed> {
        match self.filters.judge(time, EnrichedView { event: ev, state }) {
            Verdict::Pass => {
                Counters::add(&self.stats.passed, 1);
                let (targets, errors) = self.filters.targets(EnrichedView { event: ev, state });
                for reason in errors {
                    Counters::add(&self.stats.script_errors, 1);
                    if self.script_log.allow() {
                        tracing::warn!(user = ?ev.user_id, "an action's filter failed, that action skipped: {reason}");
                    }
                }
                let targets = self.timers.on_pass(time, ev, state, targets);
                (targets != 0).then(|| {
                    Passed(EnrichedEvent::snapshot(
                        UserEvent::default(),
                        state,
                        targets,
                    ))
                })
            }
            Verdict::Reject => {
                Counters::add(&self.stats.rejected, 1);
                None
            }
            Verdict::Error(reason) => {
                Counters::add(&self.stats.script_errors, 1);
                if self.script_log.allow() {
                    tracing::warn!(user = ?ev.user_id, "filter script failed, event rejected: {reason}");
                }
                None
            }
        }
    }
}
