//! Where per-user state lives, and when it expires.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::model::{Text, Time, UserState};

/// The state store of one worker: the in-memory map now, RocksDB later, behind the
/// same few calls.
pub trait StateStore {
    fn get_mut(&mut self, user: &str) -> Option<&mut UserState>;
    fn insert(&mut self, user: Text, state: UserState);
    fn remove(&mut self, user: &str) -> Option<UserState>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Default)]
pub struct MemoryStore {
    users: FxHashMap<Text, UserState>,
}

impl MemoryStore {
    pub fn iter(&self) -> impl Iterator<Item = (&Text, &UserState)> {
        self.users.iter()
    }
}

impl StateStore for MemoryStore {
    fn get_mut(&mut self, user: &str) -> Option<&mut UserState> {
        self.users.get_mut(user)
    }
    fn insert(&mut self, user: Text, state: UserState) {
        self.users.insert(user, state);
    }
    fn remove(&mut self, user: &str) -> Option<UserState> {
        self.users.remove(user)
    }
    fn len(&self) -> usize {
        self.users.len()
    }
}

/// Finds users whose state was not touched for the TTL, without scanning the store.
///
/// A FIFO of `(time, user)`; a user is queued again only when its activity moved more
/// than `granularity` past its last entry, so the queue holds at most one entry per user
/// per `granularity`, not one per event. Popped entries are checked against the state,
/// which has the last word: stale ones are skipped, users still active are re-queued.
pub struct TtlIndex {
    ttl: u64,
    granularity: u64,
    queue: VecDeque<(Time, Text)>,
}

impl TtlIndex {
    pub fn new(ttl_ms: u64) -> Self {
        TtlIndex {
            ttl: ttl_ms,
            granularity: (ttl_ms / 16).max(1),
            queue: VecDeque::new(),
        }
    }

    pub fn is_expired(&self, state: &UserState, now: Time) -> bool {
        state.last_activity.saturating_add(self.ttl) <= now
    }

    /// Records that `user` (whose state is `state`) was active at `state.last_activity`.
    pub fn touched(&mut self, user: &Text, state: &mut UserState, created: bool) {
        if created || state.last_activity >= state.ttl_mark + self.granularity {
            state.ttl_mark = state.last_activity;
            self.queue.push_back((state.ttl_mark, user.clone()));
        }
    }

    /// Removes every user idle for the TTL as of `now`; returns how many.
    pub fn expire(&mut self, now: Time, store: &mut impl StateStore) -> u64 {
        let mut expired = 0;
        while let Some((t, _)) = self.queue.front() {
            if t.saturating_add(self.ttl) > now {
                break;
            }
            let Some((t, user)) = self.queue.pop_front() else {
                break;
            };
            let Some(state) = store.get_mut(&user) else {
                continue;
            };
            if state.ttl_mark != t {
                continue; // a later entry of this user is queued
            }
            if self.is_expired(state, now) {
                store.remove(&user);
                expired += 1;
            } else {
                state.ttl_mark = state.last_activity;
                self.queue.push_back((state.ttl_mark, user));
            }
        }
        expired
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(idx: &mut TtlIndex, store: &mut MemoryStore, user: &str, now: Time) {
        let key: Text = user.into();
        let created = store.get_mut(user).is_none();
        if created {
            store.insert(key.clone(), UserState::empty(now));
        }
        let st = store.get_mut(user).unwrap();
        st.last_activity = now;
        idx.touched(&key, st, created);
    }

    #[test]
    fn idle_users_expire_and_active_ones_stay() {
        let mut idx = TtlIndex::new(1000);
        let mut store = MemoryStore::default();
        touch(&mut idx, &mut store, "a", 0);
        touch(&mut idx, &mut store, "b", 0);
        for t in (100..=1500).step_by(100) {
            touch(&mut idx, &mut store, "b", t);
        }
        assert_eq!(idx.expire(999, &mut store), 0);
        assert_eq!(idx.expire(1000, &mut store), 1);
        assert!(store.get_mut("a").is_none());
        assert!(store.get_mut("b").is_some());
        assert_eq!(idx.expire(2499, &mut store), 0);
        assert_eq!(idx.expire(2500, &mut store), 1);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn queue_grows_per_granularity_not_per_event() {
        let mut idx = TtlIndex::new(16_000);
        let mut store = MemoryStore::default();
        for t in 0..10_000 {
            touch(&mut idx, &mut store, "hot", t);
        }
        assert!(idx.queued() <= 11, "{}", idx.queued());
    }
}
