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
//!
//! One concern per module: `table` (the users, their TTL and recent look-ups), `lookups`
//! (look-ups and the events waiting for them), `snapshots` (the checkpoint protocol),
//! `apply` (an event applied and judged), `core` (where each event goes).

mod apply;
mod core;
#[cfg(test)]
mod fake;
mod lookups;
mod snapshots;
mod table;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timer_tests;
mod timers;

use std::rc::Rc;

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::{ProbeHandle, Stream};
use timely::scheduling::SyncActivator;

use crate::checkpoint::CheckpointConfig;
use crate::counters::Counters;
use crate::filter::reload::Filters;
use crate::model::{EnrichedEvent, SavedUser, Text, Time, UserEvent};
use crate::operators::backpressure::Backlog;
use crate::operators::held::HeldTimes;
use crate::partition::user_hash;
use crate::profile_api::{Fetcher, ProfileSource};
use crate::shutdown::{Ending, StopFlag};
use crate::store::Store;
use crate::triggers::Schedules;

use self::apply::Applier;
use self::core::Core;
use self::lookups::{LookupSettings, Lookups, Source};
use self::snapshots::Snapshots;
use self::table::UserTable;
use self::timers::Timers;

#[derive(Clone, Debug)]
pub struct UserStateConfig {
    pub ttl_ms: u64,
    pub max_history: usize,
    /// Look-ups under way at once on this worker; users beyond it wait their turn.
    pub max_in_flight: usize,
    /// After a failed look-up, the user is looked up again on its first event this
    /// long after (instead of keeping the empty state for the whole TTL).
    pub min_refetch_ms: u64,
    /// Delayed actions pending per user at most.
    pub max_timers_per_user: usize,
    /// The actions' caps and delays, by their order.
    pub schedules: Schedules,
    /// With the input ended, pending delayed actions fire at once instead of when due
    /// (the rule tester).
    pub fire_pending_at_end: bool,
}

/// What one worker's user-state operator is built from.
pub struct UserStateSettings {
    pub config: UserStateConfig,
    /// With checkpoints, the operator writes its worker's part of each (`Ending` tells
    /// it which is the last).
    pub checkpoints: Option<(CheckpointConfig, Ending)>,
    pub profiles: ProfileSource,
    /// Where HTTP look-ups run.
    pub runtime: tokio::runtime::Handle,
    pub filters: Filters,
    /// Holds the users (in memory or in RocksDB).
    pub store: Store,
    /// Tells the source how many events wait (for a look-up, a restore or a snapshot).
    pub backlog: Backlog,
    pub counters: Rc<Counters>,
    /// Set when the run is asked to stop.
    pub stop: StopFlag,
    /// Told the frontier of the events as they reach their user's worker, before any
    /// waits here (the sources' `Trail`).
    pub arrived: Option<ProbeHandle<Time>>,
}

/// The clock capability moved to the least of `pending` (the inputs' frontier and the
/// times of events still held, which may schedule timers once applied) and `next` (the
/// earliest timer due), never back; none when there is neither.
fn hold_clock(
    clock: Option<Capability<Time>>,
    pending: Option<Time>,
    next: Option<Time>,
) -> Option<Capability<Time>> {
    let mut clock = clock?;
    let least = pending.into_iter().chain(next).min()?;
    if least > *clock.time() {
        clock.downgrade(&least);
    }
    Some(clock)
}

/// Keeps each user's state, applies every event to it, and emits the events that the
/// filters pass, enriched with their user's data.
///
/// `events` is exchanged on a stable hash of `user_id`; so is `restored` (the users of a
/// checkpoint being restored), so a checkpoint lands on the right workers whatever their
/// number. Events wait until the restore is complete.
pub fn user_state<'s>(
    events: Stream<'s, Time, Vec<UserEvent>>,
    restored: Stream<'s, Time, Vec<(Text, SavedUser)>>,
    settings: UserStateSettings,
) -> Stream<'s, Time, Vec<EnrichedEvent>> {
    operator(events, restored, settings, |s, activator| {
        let max_in_flight = s.config.max_in_flight;
        Source::Api(Fetcher::new(
            &s.profiles,
            max_in_flight,
            s.runtime.clone(),
            activator,
        ))
    })
}

/// `events` on their users' workers, in the order they arrive there: a user's events
/// stay in the order they were read. (Not timely's `exchange`, which sorts the batches
/// it holds by time, unstably, and so swapped batches of one time.)
pub(super) fn to_users_workers<'s>(
    events: Stream<'s, Time, Vec<UserEvent>>,
) -> Stream<'s, Time, Vec<UserEvent>> {
    let by_user = Exchange::new(|ev: &UserEvent| user_hash(&ev.user_id));
    events.unary(by_user, "ToUsersWorkers", |_, _| {
        move |input, output| {
            input.for_each(|cap, batch| output.session(&cap).give_container(batch));
        }
    })
}

/// The operator, its answers from `source`.
fn operator<'s>(
    events: Stream<'s, Time, Vec<UserEvent>>,
    restored: Stream<'s, Time, Vec<(Text, SavedUser)>>,
    settings: UserStateSettings,
    source: impl FnOnce(&UserStateSettings, SyncActivator) -> Source + 'static,
) -> Stream<'s, Time, Vec<EnrichedEvent>> {
    let scope = events.scope();
    // Exchanged ahead of the operator, so that the arrivals can be probed.
    let mut events = to_users_workers(events);
    if let Some(arrived) = &settings.arrived {
        events = events.probe_with(arrived);
    }
    let by_restored_user = Exchange::new(|r: &(Text, SavedUser)| user_hash(&r.0));
    events.binary_frontier(
        restored,
        Pipeline,
        by_restored_user,
        "UserState",
        move |cap, info| {
            let worker = scope.worker().clone();
            let worker_index = worker.index();
            let address = info.address.to_vec();
            let source = source(&settings, worker.sync_activator_for(address.clone()));
            let wake = scope.activator_for(info.address.clone());
            let UserStateSettings {
                config,
                checkpoints,
                filters,
                store,
                backlog,
                counters,
                stop,
                ..
            } = settings;
            let timers = Timers::new(
                config.schedules.clone(),
                config.max_timers_per_user,
                counters.clone(),
            );
            // Held at the least of the inputs' frontiers and the earliest timer due: what
            // fired timers are emitted with.
            let mut clock = timers.any_delayed().then(|| cap.clone());
            let snapshots = checkpoints.map(|c| {
                let index = worker.index();
                let activator = move || worker.sync_activator_for(address.clone());
                Snapshots::new(c, index, cap, Box::new(activator))
            });
            let lookups = LookupSettings {
                max_in_flight: config.max_in_flight,
                min_refetch_ms: config.min_refetch_ms,
                max_history: config.max_history,
            };
            let mut m = Core::new(
                UserTable::new(store, config.ttl_ms, config.min_refetch_ms),
                Lookups::new(lookups, source, counters.clone()),
                Applier::new(config.max_history, filters, timers, counters.clone()),
                snapshots,
                counters,
                stop,
            );
            m.fire_pending_at_end = config.fire_pending_at_end;
            let mut restore_clock = Some(std::time::Instant::now());
            move |(input, frontier), (restore, restore_frontier), output| {
                m.applier.refresh();
                restore.for_each(|cap, records| {
                    // A restored user's events that wait for a look-up again are held at
                    // the run's first epoch, not before: the restored checkpoint has them.
                    let first = m.snapshots.as_ref().map_or(0, |s| s.last());
                    let hold = cap.least().map_or(first, |t| first.max(*t));
                    for (user, saved) in records.drain(..) {
                        m.restore(user, saved, hold, || cap.delayed(&hold, 0));
                    }
                });
                let restoring = !restore_frontier.frontier().is_empty();
                if !restoring && let Some(started) = restore_clock.take() {
                    m.table.restored();
                    let users = m.stats.restored.get();
                    if users > 0 {
                        let ms = started.elapsed().as_millis() as u64;
                        tracing::info!(worker = worker_index, users, ms, "checkpoint restored");
                    }
                }
                // In arrival order: a user's events must be applied in the order they
                // were read (`for_each_stamp` sorts containers by time, unstably).
                input.for_each(|cap, batch| {
                    let Some(&time) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    m.table.prefetch_start(batch);
                    let mut events = batch.drain(..);
                    while let Some(ev) = events.next() {
                        m.table.prefetch_ahead(events.as_slice());
                        if let Some(out) = m.arrive(restoring, time, ev, || cap.delayed(&time, 0)) {
                            session.give(out);
                        }
                    }
                });
                let mut emit = |held: &HeldTimes, time: Time, out: EnrichedEvent| {
                    output.session(&held.capability_for(time)).give(out);
                };
                let ended = frontier.frontier().is_empty() && !restoring;
                m.settle_snapshot();
                if !restoring {
                    m.on_frontier(frontier.frontier().first().copied(), &mut emit);
                }
                // After the frontier: stashed events let through may have started look-ups
                // that (from a snapshot file) are done at once.
                m.complete_lookups(&mut emit);
                let fired = m.applier.timers.take_fired();
                match &clock {
                    Some(c) => {
                        for (due, out) in fired {
                            let at = due.max(*c.time());
                            output.session(&c.delayed(&at)).give(out);
                        }
                    }
                    // The clock is held while anything can still schedule a timer: a
                    // firing without it is a bug, counted and said, never silent.
                    None if !fired.is_empty() => {
                        Counters::add(&m.stats.timers_dropped, fired.len() as u64);
                        tracing::error!(
                            firings = fired.len(),
                            "delayed actions fired after their operator let its clock go: dropped"
                        );
                    }
                    None => {}
                }
                let inputs = [frontier.frontier(), restore_frontier.frontier()];
                let least = inputs.iter().flat_map(|f| f.first()).copied().min();
                let next = m.next_timer();
                // Events waiting for a look-up may schedule timers when it comes back,
                // after the input has ended: the clock stays for them.
                let pending = least.into_iter().chain(m.held.least()).min();
                clock = hold_clock(clock.take(), pending, next);
                // Timers fire by the wall clock when the frontier is not there to move
                // them: the input ended, or the frontier is ahead of the clock.
                if let Some(due) = next
                    && (ended || least.is_some_and(|f| f > due))
                {
                    // At least once a second, to notice a stop.
                    let wait = due.saturating_sub(crate::clock::now_ms()).clamp(1, 1000);
                    wake.activate_after(std::time::Duration::from_millis(wait));
                }
                if m.finish_activation(ended) {
                    wake.activate();
                }
                backlog.set_with_came(m.held.len(), m.held.taken());
            }
        },
    )
}
