//! The users of one worker: their states in the store, the TTL index over them, and
//! the answers of recent look-ups. Every change goes through here, so the index always
//! knows of every state the store holds.

use rustc_hash::FxHashSet;

use super::lookups::after_failure;
use crate::model::{ChangeMark, ProfileData, SmallText, Text, Time, UserEvent, UserState};
use crate::store::codec;
use crate::store::recent::RecentLookups;
use crate::store::{Records, StateError, StateStore, Store, StoreSnapshot, TtlIndex};

/// How many events before it is applied an event's user's table slot is asked for, and
/// then its state's parts (`UserTable::prefetch_ahead`): the slot in time to be read
/// for the parts, all within a few events' worth of lines. Not tuned: on this project's
/// machines the run-to-run noise is larger than what another distance could change.
const SLOTS_AHEAD: usize = 8;
const PARTS_AHEAD: usize = 4;

/// Why a user has no live state to apply an event to.
pub(super) enum Miss {
    /// Not in the store.
    Absent,
    /// Idle for the TTL but not swept yet: removed, never served (Flink's
    /// NeverReturnExpired).
    Expired,
    /// Its last look-up failed and the time to try again has come: removed, to be kept
    /// while it is looked up again.
    RefetchDue(UserState),
}

/// The users changed and removed since the last checkpoint part: what a delta part
/// holds.
///
/// A changed user is listed once per interval: its state carries the interval's serial
/// (`UserState::changed_in`), so that listing it is a comparison in memory the event has
/// just touched. A set of the users cost a probe into cold memory per event (and an
/// allocation per user listed): ~4% of a worker's samples at a 1 s interval.
pub(super) struct Changes {
    /// This interval's serial; never 0, the mark of a state never listed.
    serial: u32,
    /// The users changed, each once unless `repeats`.
    pub(super) changed: Vec<SmallText>,
    /// Whether `changed` may hold a user twice: it was listed, then removed and
    /// listed again when it came back; or the changes of a part not written were put
    /// back. (RocksDB gives a user it let out of its cache its mark back when it reads
    /// it again: `RocksStore::marks`.)
    repeats: bool,
    pub(super) removed: FxHashSet<Text>,
    /// Whether these changes hold those of a part that was not written: counts of
    /// entries gained are then since a part the chain lacks, and the next part writes
    /// its states whole.
    unwritten: bool,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            serial: 1,
            changed: Vec::new(),
            repeats: false,
            removed: FxHashSet::default(),
            unwritten: false,
        }
    }
}

impl Changes {
    #[inline]
    fn changed(&mut self, user: &str, state: &mut UserState) {
        if state.changed_in.interval != self.serial {
            // Unchanged since the previous part: the chain holds it as it is now.
            state.changed_in = ChangeMark {
                interval: self.serial,
                appended: Some(0),
                appended_bytes: 0,
            };
            self.changed.push(SmallText::from(user));
        }
    }

    /// `user` is gone from the store; `state` is what it had, if it had one.
    fn removed(&mut self, user: &str, state: Option<&UserState>) {
        if state.is_some_and(|s| s.changed_in.interval == self.serial) {
            self.repeats = true;
        }
        self.removed.insert(Text::from(user));
    }

    /// Empties the lists (keeping their memory) for the interval after this one.
    fn next_interval(&mut self) {
        self.changed.clear();
        self.removed.clear();
        self.repeats = false;
        self.unwritten = false;
        self.serial = self.serial.checked_add(1).unwrap_or(1);
    }

    /// These changes, and `older` ones (of a part that was not written) under them. A
    /// user listed in both is taken once (`unique`); one listed but gone since is not
    /// in the store when the delta is taken, and one removed but back since is there.
    fn merge(&mut self, older: Changes) {
        self.changed.extend(older.changed);
        self.repeats = true;
        self.unwritten = true;
        self.removed.extend(older.removed);
    }

    /// Lists each changed user once, if `changed` may hold one twice.
    fn unique(&mut self) {
        if !self.repeats {
            return;
        }
        let keep: Vec<bool> = {
            let mut seen = FxHashSet::default();
            seen.reserve(self.changed.len());
            self.changed.iter().map(|u| seen.insert(&**u)).collect()
        };
        let mut keep = keep.into_iter();
        self.changed.retain(|_| keep.next().unwrap_or(true));
        self.repeats = false;
    }
}

/// A delta part's users: the changed ones' states now, the removed ones', and the
/// changes taken (given back if the part is not written).
pub(super) struct Delta {
    pub(super) states: StoreSnapshot,
    pub(super) removed: Vec<Text>,
    pub(super) taken: Changes,
    /// Whether the states may be written as what their history gained since the
    /// previous part (`ChangeMark::appended`).
    pub(super) tails: bool,
}

pub(super) struct UserTable {
    store: Store,
    /// Kept when checkpoints may be deltas.
    changes: Option<Changes>,
    /// The sets of a delta part written, emptied: the next delta's changes go into them
    /// (new sets grew, and rehashed, to ~100k users every part).
    spare_changes: Changes,
    ttl: TtlIndex,
    /// What recent look-ups gave, when the TTL is shorter than `min_refetch_ms` (else a
    /// user's look-up is always older than that when it expires, and none is kept).
    recent: Option<RecentLookups>,
    /// After a failed look-up, how long until a user's next event looks it up again.
    min_refetch_ms: u64,
}

impl UserTable {
    pub(super) fn new(store: Store, ttl_ms: u64, min_refetch_ms: u64) -> Self {
        UserTable {
            store,
            changes: None,
            spare_changes: Changes::default(),
            ttl: TtlIndex::new(ttl_ms),
            recent: (ttl_ms < min_refetch_ms).then(|| RecentLookups::new(min_refetch_ms)),
            min_refetch_ms,
        }
    }

    /// Runs `f` on `user`'s live state at `time` (its activity moved to `time`);
    /// without one, says why.
    // The error is matched at once, never stored: boxing would only add an allocation.
    #[allow(clippy::result_large_err)]
    pub(super) fn with_live<R>(
        &mut self,
        time: Time,
        user: &str,
        f: impl FnOnce(&mut UserState) -> R,
    ) -> Result<R, Miss> {
        let Some(state) = self.store.get_mut(user) else {
            return Err(Miss::Absent);
        };
        let expired = self.ttl.is_expired(state, time);
        let retry_due = state.refetch_after.is_some_and(|t| time >= t);
        if !expired && !retry_due {
            state.last_activity = state.last_activity.max(time);
            self.ttl.touched(user, state, false);
            if let Some(c) = &mut self.changes {
                c.changed(user, state);
            }
            return Ok(f(state));
        }
        if let Some(c) = &mut self.changes {
            c.removed(user, Some(state));
        }
        match self.store.remove(user) {
            Some(state) if !expired => Err(Miss::RefetchDue(state)),
            _ => Err(Miss::Expired),
        }
    }

    /// `user`'s state to change, its activity and TTL untouched.
    pub(super) fn get_mut(&mut self, user: &Text) -> Option<&mut UserState> {
        let state = self.store.get_mut(user)?;
        if let Some(c) = &mut self.changes {
            c.changed(user, state);
        }
        Some(state)
    }

    /// Adds `user`, with `state` as `f` leaves it.
    pub(super) fn insert_with<R>(
        &mut self,
        user: Text,
        mut state: UserState,
        f: impl FnOnce(&mut UserState) -> R,
    ) -> R {
        let out = self.indexed(&user, &mut state, f);
        if let Some(c) = &mut self.changes {
            c.changed(&user, &mut state);
        }
        // Not in the chain as it is: a delta writes it whole.
        state.changed_in.appended = None;
        self.store.insert(user, state);
        out
    }

    /// Adds a restored `user`, with `state` as `f` leaves it. A restore gives each user
    /// once, into a store that held nothing before it, and is followed by a whole part:
    /// no change is kept and the store need not look for an earlier state.
    pub(super) fn insert_restored(
        &mut self,
        user: Text,
        mut state: UserState,
        f: impl FnOnce(&mut UserState),
    ) {
        self.indexed(&user, &mut state, f);
        self.store.insert_new(user, state);
    }

    /// Every restored user has been given.
    pub(super) fn restored(&mut self) {
        self.store.restored();
    }

    /// Runs `f` on a state about to be added, with the TTL index told of it before
    /// (as new) and after (as `f` left it).
    fn indexed<R>(
        &mut self,
        user: &Text,
        state: &mut UserState,
        f: impl FnOnce(&mut UserState) -> R,
    ) -> R {
        self.ttl.touched(user, state, true);
        let out = f(state);
        self.ttl.touched(user, state, false);
        out
    }

    /// Asks the CPU for what applying the first events of `batch` reads: see
    /// `prefetch_ahead`, which asks for the rest, each some events before it is applied.
    pub(super) fn prefetch_start(&self, batch: &[UserEvent]) {
        for e in batch.iter().take(SLOTS_AHEAD) {
            self.store.prefetch(&e.user_id);
        }
        for e in batch.iter().take(PARTS_AHEAD) {
            if let Some(s) = self.store.peek(&e.user_id) {
                codec::prefetch_parts(&e.user_id, s);
            }
        }
    }

    /// Before applying an event, asks the CPU for what the events after it (`ahead`)
    /// will read, in the order it is found: the table slot of the user `SLOTS_AHEAD`
    /// events on; the parts (profile, visit, history) of the one `PARTS_AHEAD` on, from
    /// its slot; the end of the history the next one appends to, behind the history's
    /// struct. Over many users all of these are cold memory: asked for ahead, their
    /// fetches overlap the work, where applying events one by one waited on each in
    /// turn (the user's look-up, the filter's read of the profile, the history's and
    /// the visit's reference counts, the append).
    #[inline]
    pub(super) fn prefetch_ahead(&self, ahead: &[UserEvent]) {
        if let Some(e) = ahead.get(SLOTS_AHEAD - 1) {
            self.store.prefetch(&e.user_id);
        }
        if let Some(e) = ahead.get(PARTS_AHEAD - 1)
            && let Some(s) = self.store.peek(&e.user_id)
        {
            codec::prefetch_parts(&e.user_id, s);
        }
        if let Some(s) = ahead.first().and_then(|e| self.store.peek(&e.user_id)) {
            codec::prefetch_history_end(s);
        }
    }

    /// A state for `user` from a look-up less than `min_refetch_ms` before `time`: that
    /// answer again, no request; a failed one gives the empty state until the
    /// interval has passed.
    pub(super) fn recent_state(&self, user: &Text, time: Time) -> Option<UserState> {
        let (at, data) = self.recent.as_ref()?.get(user, time)?;
        Some(match data {
            Some(data) => UserState::from_profile(data, time),
            None => after_failure(UserState::empty(time), at, self.min_refetch_ms),
        })
    }

    /// Keeps what a look-up at `at` gave, when recent answers are kept.
    pub(super) fn remember(&mut self, user: &Text, at: Time, answer: Option<&ProfileData>) {
        if let Some(recent) = &mut self.recent {
            recent.put(user.clone(), at, answer.cloned());
        }
    }

    /// Removes the users idle for the TTL as of `now`; returns how many.
    pub(super) fn expire(&mut self, now: Time) -> u64 {
        if let Some(recent) = &mut self.recent {
            recent.prune(now);
        }
        let changes = &mut self.changes;
        let expired = self.ttl.expire(now, &mut self.store, |user, state| {
            if let Some(c) = changes {
                c.removed(user, Some(state));
            }
        });
        if expired > 0 {
            tracing::debug!(
                expired,
                users = self.store.len(),
                "state TTL expired idle users"
            );
        }
        expired
    }

    /// Keeps the users changed and removed from now on, for delta parts.
    pub(super) fn track_changes(&mut self) {
        self.changes = Some(Changes::default());
    }

    /// The users now, for a whole checkpoint part (the changes so far are in it), in
    /// `into` (see `Store::snapshot`).
    pub(super) fn snapshot(&mut self, into: Records) -> Result<StoreSnapshot, StateError> {
        if let Some(c) = &mut self.changes {
            c.next_interval();
        }
        self.store.interval_ended();
        self.store.snapshot(into)
    }

    /// The users changed and removed since the last part, for a delta part; `None` when
    /// changes are not kept. Read without touching the store (no user becomes changed
    /// or cached by it); if the store fails, the changes are kept for the next part.
    pub(super) fn delta(&mut self, into: Records) -> Option<Result<Delta, StateError>> {
        let changes = self.changes.as_mut()?;
        let mut next = std::mem::take(&mut self.spare_changes);
        next.serial = changes.serial;
        next.next_interval();
        let mut taken = std::mem::replace(changes, next);
        self.store.interval_ended();
        taken.unique();
        let users = taken.changed.iter().map(|u| &**u);
        let states = match self.store.states_of(users, into) {
            Ok(states) => states,
            Err(e) => {
                self.restore_changes(taken);
                return Some(Err(e));
            }
        };
        let removed = taken
            .removed
            .iter()
            .filter(|u| !self.store.holds(u))
            .cloned()
            .collect();
        Some(Ok(Delta {
            states,
            removed,
            tails: !taken.unwritten,
            taken,
        }))
    }

    /// Takes back the changes of a delta part that was written, to reuse their memory.
    pub(super) fn recycle_changes(&mut self, mut written: Changes) {
        written.next_interval();
        self.spare_changes = written;
    }

    /// Gives back the changes of a delta part that was not written: the next part has
    /// them.
    pub(super) fn restore_changes(&mut self, taken: Changes) {
        if let Some(c) = &mut self.changes {
            c.merge(taken);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.store.len()
    }

    /// How many users changed since the last part (0 when changes are not kept).
    pub(super) fn changed(&mut self) -> usize {
        self.changes.as_mut().map_or(0, |c| {
            c.unique();
            c.changed.len()
        })
    }
}
