//! Where per-user state lives, and when it expires.
//!
//! Two backends behind one `StateStore`: `MemoryStore`, a hash map (the default), and,
//! with the `rocksdb` cargo feature, `RocksStore`: RocksDB on local disk with a bounded
//! cache of users in front, for state larger than memory. Both snapshot into the same
//! checkpoint format, so a checkpoint written by one restores into the other.

#[cfg(feature = "rocksdb")]
mod bulk_load;
pub mod codec;
pub mod recent;
#[cfg(feature = "rocksdb")]
pub mod rocks;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;

use crate::checkpoint::files::{EncodedRecords, PartRecords};
use crate::model::{PendingUser, Text, Time, UserState};
use crate::string_key::StrMap;

/// The state store of one worker.
pub trait StateStore {
    fn get_mut(&mut self, user: &str) -> Option<&mut UserState>;
    /// Adds a user the store does not hold.
    fn insert(&mut self, user: Text, state: UserState);
    /// Adds a user known to be new (a restore's): the store need not look for it.
    fn insert_new(&mut self, user: Text, state: UserState) {
        self.insert(user, state)
    }
    /// The restore has given every user: what `insert_new` gathered is put in place.
    fn restored(&mut self) {}
    fn remove(&mut self, user: &str) -> Option<UserState>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Users' states to write into a checkpoint part.
pub type Records = Vec<(Text, UserState)>;

/// A copy of a store's users at one moment, for a checkpoint part: records to write,
/// and, from RocksDB, a checkpoint of its own read by the part's writer thread.
pub struct StoreSnapshot {
    pub records: Records,
    pub encoded: Option<EncodedRecords>,
}

impl StoreSnapshot {
    /// What the part writer takes: these users, and `pending` (users being looked up).
    pub fn into_part(self, pending: Vec<(Text, PendingUser)>) -> PartRecords {
        PartRecords {
            base: self.encoded,
            states: self.records,
            pending,
            removed: None,
            chain: None,
            words_before: 0,
            tails: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("engine.state-dir: {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("state snapshot: {0}")]
    Snapshot(String),
    #[error("engine.state-backend: {}", crate::config::ROCKSDB_NOT_BUILT)]
    NotBuilt,
}

/// Which store the workers keep their users in.
#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    Memory,
    /// One RocksDB per worker under `dir` (emptied at start: state comes back from the
    /// checkpoint), with up to `cache_users` users per worker kept decoded in memory.
    Rocksdb {
        dir: PathBuf,
        cache_users: usize,
    },
}

impl Backend {
    /// Checks, before any worker starts, that the backend can be used here.
    pub fn check(&self) -> Result<(), StateError> {
        match self {
            Backend::Memory => Ok(()),
            #[cfg(feature = "rocksdb")]
            Backend::Rocksdb { dir, .. } => rocks::check_dir(dir),
            #[cfg(not(feature = "rocksdb"))]
            Backend::Rocksdb { .. } => Err(StateError::NotBuilt),
        }
    }

    /// Opens the store of worker `worker`.
    pub fn open(&self, worker: usize) -> Result<Store, StateError> {
        match self {
            Backend::Memory => Ok(Store::Memory(MemoryStore::default())),
            #[cfg(feature = "rocksdb")]
            Backend::Rocksdb { dir, cache_users } => Ok(Store::Rocks(Box::new(
                rocks::RocksStore::open(&dir.join(format!("worker-{worker}")), *cache_users)?,
            ))),
            #[cfg(not(feature = "rocksdb"))]
            Backend::Rocksdb { .. } => {
                let _ = worker;
                Err(StateError::NotBuilt)
            }
        }
    }

    /// Removes what workers `peers` and up of an earlier run (at a higher `-w`) left:
    /// once per process, as no worker of this run opens it.
    pub fn remove_unused(&self, peers: usize) {
        #[cfg(feature = "rocksdb")]
        if let Backend::Rocksdb { dir, .. } = self {
            rocks::remove_unused(dir, peers);
        }
        #[cfg(not(feature = "rocksdb"))]
        let _ = peers;
    }
}

/// The store a worker uses, as chosen by `engine.state-backend`.
pub enum Store {
    Memory(MemoryStore),
    #[cfg(feature = "rocksdb")]
    // Boxed: a large struct, reached once per event through one pointer.
    Rocks(Box<rocks::RocksStore>),
}

macro_rules! each_store {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Memory($s) => $e,
            #[cfg(feature = "rocksdb")]
            Store::Rocks($s) => $e,
        }
    };
}

impl Store {
    /// The users now, for a checkpoint part. `into` is a vector to fill (emptied
    /// first), so that a snapshot reuses the memory of the one before.
    pub fn snapshot(&mut self, into: Records) -> Result<StoreSnapshot, StateError> {
        each_store!(self, s => s.snapshot(into))
    }

    /// The states of `users` (those the store holds) as they are now, for a delta part.
    /// Reads only: nothing is marked changed or brought into a cache, and RocksDB hands
    /// the bytes it keeps for a user outside its cache, undecoded.
    pub fn states_of<'a>(
        &self,
        users: impl Iterator<Item = &'a str>,
        into: Records,
    ) -> Result<StoreSnapshot, StateError> {
        each_store!(self, s => s.states_of(users, into))
    }

    /// A checkpoint interval ended (its delta or whole part was taken): RocksDB lets go
    /// of the marks of the users it let out of its cache in it.
    pub fn interval_ended(&mut self) {
        match self {
            Store::Memory(_) => {}
            #[cfg(feature = "rocksdb")]
            Store::Rocks(s) => s.interval_ended(),
        }
    }

    /// `user`'s state if it is in memory (RocksDB: in its cache), read only: for
    /// prefetching, nothing is marked used or changed.
    #[inline]
    pub fn peek(&self, user: &str) -> Option<&UserState> {
        match self {
            Store::Memory(s) => s.users.get(user),
            #[cfg(feature = "rocksdb")]
            Store::Rocks(s) => s.peek(user),
        }
    }

    /// Asks the CPU for where `user`'s state is in memory, without waiting for it (the
    /// hash map: its slot; RocksDB: nothing), so that a `peek` of it soon after does
    /// not wait either.
    #[inline]
    pub fn prefetch(&self, user: &str) {
        match self {
            Store::Memory(s) => s.users.prefetch(user),
            #[cfg(feature = "rocksdb")]
            Store::Rocks(_) => {}
        }
    }

    /// Whether the store holds `user` (a read only, as `states_of`).
    pub fn holds(&self, user: &str) -> bool {
        each_store!(self, s => s.holds(user))
    }
}

impl StateStore for Store {
    #[inline]
    fn get_mut(&mut self, user: &str) -> Option<&mut UserState> {
        each_store!(self, s => s.get_mut(user))
    }
    fn insert(&mut self, user: Text, state: UserState) {
        each_store!(self, s => s.insert(user, state))
    }
    fn insert_new(&mut self, user: Text, state: UserState) {
        each_store!(self, s => s.insert_new(user, state))
    }
    fn restored(&mut self) {
        each_store!(self, s => s.restored())
    }
    fn remove(&mut self, user: &str) -> Option<UserState> {
        each_store!(self, s => s.remove(user))
    }
    fn len(&self) -> usize {
        each_store!(self, s => s.len())
    }
}

/// The hash map backend: users by id (`StrMap`: an id of up to 24 bytes is compared in
/// the table's own memory, not through its pointer).
#[derive(Default)]
pub struct MemoryStore {
    users: StrMap<Text, UserState, 3>,
}

impl MemoryStore {
    /// A shallow copy: the parts of each state are `Arc`s.
    fn snapshot(&mut self, mut into: Records) -> Result<StoreSnapshot, StateError> {
        into.clear();
        copy_ahead(self.users.iter(), &mut into);
        Ok(StoreSnapshot {
            records: into,
            encoded: None,
        })
    }

    fn states_of<'a>(
        &self,
        users: impl Iterator<Item = &'a str>,
        mut into: Records,
    ) -> Result<StoreSnapshot, StateError> {
        into.clear();
        copy_ahead(users.filter_map(|u| self.users.get_key_value(u)), &mut into);
        Ok(StoreSnapshot {
            records: into,
            encoded: None,
        })
    }

    fn holds(&self, user: &str) -> bool {
        self.users.get(user).is_some()
    }
}

/// How many users ahead of the one it copies `copy_ahead` asks for their parts.
const COPY_AHEAD: usize = 16;

/// Appends a copy of each of `users` to `into`, asking the CPU for a user's id and
/// parts (`codec::prefetch_parts`) `COPY_AHEAD` users before copying it. A copy adds one
/// to four reference counts, each on a line of its own that is cold over many users:
/// copied one after another, the worker waited on each in turn (a `perf` of a checkpoint
/// every second put half of the copying's samples on the instruction after one).
fn copy_ahead<'a>(users: impl Iterator<Item = (&'a Text, &'a UserState)>, into: &mut Records) {
    let mut ahead = std::collections::VecDeque::with_capacity(COPY_AHEAD);
    for (user, state) in users {
        codec::prefetch_parts(user, state);
        if ahead.len() == COPY_AHEAD
            && let Some((u, s)) = ahead.pop_front()
        {
            into.push(copy(u, s));
        }
        ahead.push_back((user, state));
    }
    into.extend(ahead.into_iter().map(|(u, s)| copy(u, s)));
}

fn copy(user: &Text, state: &UserState) -> (Text, UserState) {
    (user.clone(), state.clone())
}

impl StateStore for MemoryStore {
    #[inline]
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
/// A min-heap of `(time, user)` (entries come out of time order: restored users, users
/// inserted once their look-up is done, users kept by their triggers); a user is queued
/// again only when its activity moved more than `granularity` past its last entry, so
/// the queue holds at most one entry per user per `granularity`, not one per event.
/// Popped entries are checked against the state, which has the last word: stale ones
/// are skipped, users still active are re-queued.
pub struct TtlIndex {
    ttl: u64,
    granularity: u64,
    queue: BinaryHeap<Reverse<(Time, Text)>>,
}

impl TtlIndex {
    pub fn new(ttl_ms: u64) -> Self {
        TtlIndex {
            ttl: ttl_ms,
            granularity: (ttl_ms / 16).max(1),
            queue: BinaryHeap::new(),
        }
    }

    /// Idle for the TTL, and not kept by its triggers (a delayed action pending, or a
    /// cap's window open: `crate::triggers`).
    pub fn is_expired(&self, state: &UserState, now: Time) -> bool {
        state.last_activity.saturating_add(self.ttl) <= now
            && !state.triggers.as_ref().is_some_and(|t| t.keeps(now))
    }

    /// Records that `user` (whose state is `state`) was active at `state.last_activity`.
    pub fn touched(&mut self, user: &str, state: &mut UserState, created: bool) {
        if created || state.last_activity >= state.ttl_mark + self.granularity {
            state.ttl_mark = state.last_activity;
            self.queue.push(Reverse((state.ttl_mark, Text::from(user))));
        }
    }

    /// Removes every user idle for the TTL as of `now`, telling `removed` of each (and
    /// the state it had); returns how many.
    pub fn expire(
        &mut self,
        now: Time,
        store: &mut impl StateStore,
        mut removed: impl FnMut(&Text, &UserState),
    ) -> u64 {
        let mut expired = 0;
        while let Some(Reverse((t, _))) = self.queue.peek() {
            if t.saturating_add(self.ttl) > now {
                break;
            }
            let Some(Reverse((t, user))) = self.queue.pop() else {
                break;
            };
            let Some(state) = store.get_mut(&user) else {
                continue;
            };
            if state.ttl_mark != t {
                continue; // a later entry of this user is queued
            }
            if self.is_expired(state, now) {
                if let Some(state) = store.remove(&user) {
                    removed(&user, &state);
                }
                expired += 1;
            } else {
                // Kept by its triggers past its TTL: looked at again a TTL from now.
                let idle = state.last_activity.saturating_add(self.ttl) <= now;
                state.ttl_mark = if idle { now } else { state.last_activity };
                self.queue.push(Reverse((state.ttl_mark, user)));
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

    impl TtlIndex {
        fn expire_all(&mut self, now: Time, store: &mut MemoryStore) -> u64 {
            self.expire(now, store, |_, _| ())
        }
    }

    #[test]
    fn a_peek_gives_a_users_state_as_it_is() {
        let mut store = Store::Memory(MemoryStore::default());
        store.insert("a".into(), UserState::empty(5));
        assert_eq!(store.peek("a").map(|s| s.last_activity), Some(5));
        assert!(store.peek("b").is_none());
        assert_eq!(store.len(), 1);
    }

    /// Ids are compared by their first 24 bytes in the table (`string_key`): ids that
    /// share them, or differ only past them, are users of their own.
    #[test]
    fn users_whose_ids_share_their_first_bytes_are_kept_apart() {
        let long = "0123456789abcdefghijklmn";
        let ids = [
            "u1".to_string(),
            "u1\0".to_string(),
            long.to_string(),
            format!("{long}x"),
            format!("{long}y"),
        ];
        let mut store = MemoryStore::default();
        for (n, id) in ids.iter().enumerate() {
            store.insert(id.as_str().into(), UserState::empty(n as Time));
        }
        assert_eq!(store.len(), ids.len());
        store.insert(ids[3].as_str().into(), UserState::empty(30));
        assert_eq!(
            store.len(),
            ids.len(),
            "the same id again replaces its state"
        );
        for (n, id) in ids.iter().enumerate() {
            let expected = if n == 3 { 30 } else { n as Time };
            assert_eq!(store.get_mut(id).unwrap().last_activity, expected, "{id}");
            assert!(store.holds(id));
        }
        assert!(store.get_mut(&format!("{long}z")).is_none() && !store.holds("u"));
        assert_eq!(store.remove(&ids[4]).unwrap().last_activity, 4);
        assert!(store.remove(&ids[4]).is_none() && store.get_mut(&ids[3]).is_some());
        let snapshot = store.snapshot(Vec::new()).unwrap().records;
        assert_eq!(snapshot.len(), ids.len() - 1);
        let wanted: Vec<Text> = vec![ids[0].as_str().into(), ids[4].as_str().into()];
        let some = store
            .states_of(wanted.iter().map(|u| &**u), snapshot)
            .unwrap()
            .records;
        assert_eq!(some.len(), 1);
        assert_eq!(&*some[0].0, "u1");
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
        assert_eq!(idx.expire_all(999, &mut store), 0);
        assert_eq!(idx.expire_all(1000, &mut store), 1);
        assert!(store.get_mut("a").is_none());
        assert!(store.get_mut("b").is_some());
        assert_eq!(idx.expire_all(2499, &mut store), 0);
        assert_eq!(idx.expire_all(2500, &mut store), 1);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn a_user_kept_by_its_triggers_expires_a_ttl_after_they_end() {
        let mut idx = TtlIndex::new(1000);
        let mut store = MemoryStore::default();
        touch(&mut idx, &mut store, "a", 0);
        let t = crate::triggers::of(&mut store.get_mut("a").unwrap().triggers);
        t.caps_until = 2500;
        assert_eq!(
            idx.expire_all(1000, &mut store),
            0,
            "kept while its cap counts"
        );
        assert_eq!(
            idx.expire_all(2000, &mut store),
            0,
            "looked at again a TTL later"
        );
        assert!(idx.expire_all(2000, &mut store) == 0 && idx.queued() == 1);
        assert_eq!(idx.expire_all(3000, &mut store), 1);
        assert_eq!(store.len(), 0);
    }

    /// Restored users come in any order: each expires a TTL after its own activity, not
    /// after the newest one queued before it (they were kept up to a TTL too long).
    #[test]
    fn users_queued_out_of_time_order_expire_on_time() {
        let mut idx = TtlIndex::new(1000);
        let mut store = MemoryStore::default();
        touch(&mut idx, &mut store, "recent", 5000);
        touch(&mut idx, &mut store, "old", 100);
        assert_eq!(idx.expire_all(1100, &mut store), 1);
        assert!(store.get_mut("old").is_none() && store.get_mut("recent").is_some());
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
