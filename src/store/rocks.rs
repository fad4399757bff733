//! The RocksDB backend: each worker keeps its users in a RocksDB of its own on local
//! disk, for state larger than memory, with a bounded cache of decoded users in front
//! (the operator works on a user's state in place, as it does over the hash map).
//!
//! The local database is scratch: it is emptied at start, and what survives a restart
//! is the checkpoint. A snapshot writes the dirty cached users, flushes, and takes a
//! RocksDB checkpoint (hard links to the SST files, no copy); the part writer reads it on
//! its own thread, copies its records into the portable part unchanged (keys are user
//! ids, values `store::codec` of `UserState`, as in the part) and deletes it. Writes skip the
//! WAL for the same reason: nothing is ever recovered from the local database.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, DB, DBCompressionType, FlushOptions, Options, ReadOptions,
    WriteBatch, WriteOptions,
};
use rustc_hash::FxHashMap;

use super::bulk_load::BulkLoad;
use super::{Records, StateError, StateStore, StoreSnapshot};
use crate::checkpoint::files::{EncodedRecords, RecordSink};
use crate::log_limit::LogLimiter;
use crate::model::{ChangeMark, Text, UserState};

/// The hot data blocks of the worker's tables.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

struct Slot {
    state: UserState,
    /// Changed since it was last written to the database.
    dirty: bool,
    /// Used since the clock hand last passed it (CLOCK's reference bit).
    used: bool,
    /// Matches its entry in the clock; older entries of the same user are stale.
    ticket: u64,
}

pub struct RocksStore {
    db: DB,
    opts: Options,
    path: PathBuf,
    /// At most `capacity` users, decoded.
    cache: FxHashMap<Text, Slot>,
    /// Eviction order (CLOCK): cached users with their tickets, oldest first.
    clock: VecDeque<(Text, u64)>,
    next_ticket: u64,
    capacity: usize,
    /// Users in the store, cached or not.
    users: usize,
    write: WriteOptions,
    snapshots: u64,
    /// Restored users the cache had no room for, on their way into SST files.
    bulk: BulkLoad,
    errors: LogLimiter,
    /// The checkpoint marks (`UserState::changed_in`) of users let out of the cache in
    /// this checkpoint interval, given back when they are read again: a user's mark says
    /// it is listed for the next delta part already and what its history gained since
    /// the part before, which its stored bytes do not hold. Emptied as an interval ends
    /// (`interval_ended`): the marks of one that ended are not this interval's.
    marks: FxHashMap<Text, ChangeMark>,
}

/// Checks `dir` can hold the workers' databases, before any worker starts.
pub fn check_dir(dir: &Path) -> Result<(), StateError> {
    let fail = |e: io::Error| StateError::Open {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    crate::checkpoint::files::ensure_dir(dir).map_err(fail)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// Removes the databases, with their leftovers, of workers `peers` and up: a run with
/// more workers left them, and no worker of this run opens them. One in use (another
/// job's, by its lock) is left alone.
pub fn remove_unused(dir: &Path, peers: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut stale = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("worker-")) else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>()
            && n >= peers
        {
            stale.insert(n);
        }
    }
    for n in stale {
        let path = dir.join(format!("worker-{n}"));
        let existed = path.exists();
        if existed && DB::destroy(&Options::default(), &path).is_err() {
            continue;
        }
        let _ = std::fs::remove_dir_all(&path);
        remove_snapshots(&path);
        if existed {
            tracing::info!(path = %path.display(), "removed the database of a worker this run does not have (a run with more workers left it)");
        }
    }
}

fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // Uncompressed: with Snappy, decompressing blocks on reads of users the cache had
    // evicted was half of the CPU (perf, 826k users over 2 workers); local disk is
    // cheaper than that.
    opts.set_compression_type(DBCompressionType::None);
    let mut table = BlockBasedOptions::default();
    // Most reads are point look-ups of users, many of them absent (new users).
    table.set_bloom_filter(10.0, false);
    // Index and filter blocks stay with their table readers, out of the block cache:
    // in it they were evicted and read again on most look-ups.
    table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
    opts.set_block_based_table_factory(&table);
    opts
}

impl RocksStore {
    /// Opens an empty database at `path` (whatever was there is removed), caching up
    /// to `capacity` users.
    pub fn open(path: &Path, capacity: usize) -> Result<RocksStore, StateError> {
        let fail = |reason: String| StateError::Open {
            path: path.to_path_buf(),
            reason,
        };
        let opts = options();
        if path.exists() {
            // Fails while another process has it open (RocksDB's LOCK file).
            DB::destroy(&opts, path).map_err(|e| fail(e.to_string()))?;
        }
        remove_snapshots(path);
        let db = DB::open(&opts, path).map_err(|e| fail(e.to_string()))?;
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        Ok(RocksStore {
            db,
            opts,
            bulk: BulkLoad::new(path),
            path: path.to_path_buf(),
            cache: FxHashMap::default(),
            clock: VecDeque::new(),
            next_ticket: 0,
            capacity: capacity.max(1),
            users: 0,
            write,
            snapshots: 0,
            errors: LogLimiter::per_10s("state store errors"),
            marks: FxHashMap::default(),
        })
    }

    fn log_error(&mut self, what: &str, user: &str, e: impl std::fmt::Display) {
        if self.errors.allow() {
            tracing::error!(?user, path = %self.path.display(), "state store: {what}: {e}");
        }
    }

    /// Moves the restored users gathered so far into the database (before anything
    /// reads it: they are not there until then).
    fn ingest_restored(&mut self) {
        if self.bulk.is_empty() {
            return;
        }
        if let Err(e) = self.bulk.ingest(&self.db, &self.opts) {
            self.lost("restored users could not be written", e);
        }
    }

    /// Ends the process on a failed write of users' state: going on would lose them,
    /// and the next checkpoint would make the loss permanent. The panic hook exits 1
    /// before any later checkpoint, so the last one, intact, restores them next time.
    fn lost(&self, what: &str, e: impl std::fmt::Display) -> ! {
        panic!(
            "state store: {what}: {e} (engine.state-dir: {}): make room there (a restore \
             writes the users beyond engine.state-cache-users into it) and start again; \
             the last checkpoint is intact and the next run restores it",
            self.path.display()
        )
    }

    /// The user's state from the database, if it is there and readable.
    fn read(&mut self, user: &str) -> Option<UserState> {
        let read = self
            .db
            .get_pinned(user.as_bytes())
            .map(|found| found.map(|bytes| super::codec::decode(&bytes)));
        let decoded = match read {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return None,
            Err(e) => {
                self.log_error("read failed, the user is looked up again", user, e);
                return None;
            }
        };
        match decoded {
            Ok(state) => Some(state),
            Err(e) => {
                self.log_error("undecodable state dropped", user, e);
                self.users = self.users.saturating_sub(1);
                if let Err(e) = self.db.delete_opt(user.as_bytes(), &self.write) {
                    self.log_error("delete failed", user, e);
                }
                None
            }
        }
    }

    fn cache_insert(&mut self, user: Text, state: UserState, dirty: bool) -> &mut Slot {
        self.make_room();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.clock.push_back((user.clone(), ticket));
        let slot = Slot {
            state,
            dirty,
            used: true,
            ticket,
        };
        match self.cache.entry(user) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.insert(slot);
                e.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert(slot),
        }
    }

    /// Evicts users (writing the dirty ones) until one more fits: the first users the
    /// clock reaches that were not used since it last passed them.
    fn make_room(&mut self) {
        if self.cache.len() < self.capacity {
            if self.clock.len() > 2 * self.capacity + 1024 {
                let cache = &self.cache;
                self.clock
                    .retain(|(u, t)| cache.get(u).is_some_and(|s| s.ticket == *t));
            }
            return;
        }
        // Evicts a sixteenth at a time, so that the writes go in batches.
        let target = self.capacity - self.capacity.div_ceil(16).min(self.capacity);
        let mut evicted = Vec::new();
        while self.cache.len() > target {
            let Some((user, ticket)) = self.clock.pop_front() else {
                break;
            };
            let Some(slot) = self.cache.get_mut(&user) else {
                continue;
            };
            if slot.ticket != ticket {
                continue;
            }
            if slot.used {
                slot.used = false;
                self.clock.push_back((user, ticket));
                continue;
            }
            let Some(slot) = self.cache.remove(&user) else {
                continue;
            };
            if slot.state.changed_in.interval != 0 {
                self.marks.insert(user.clone(), slot.state.changed_in);
            }
            if slot.dirty {
                evicted.push((user, super::codec::encode(&slot.state)));
            }
        }
        if let Err(e) = self.db.write_opt(sorted_batch(evicted), &self.write) {
            self.lost("evicted users could not be written", e);
        }
    }

    /// Writes every dirty cached user to the database.
    fn write_dirty(&mut self) -> Result<(), StateError> {
        let mut dirty = Vec::new();
        for (user, slot) in self.cache.iter_mut().filter(|(_, s)| s.dirty) {
            dirty.push((user.clone(), super::codec::encode(&slot.state)));
            slot.dirty = false;
        }
        self.db
            .write_opt(sorted_batch(dirty), &self.write)
            .map_err(|e| StateError::Snapshot(e.to_string()))
    }

    /// Takes a RocksDB checkpoint of every user now; the part writer reads it.
    /// (`into` is not needed: the records are the checkpoint's files.)
    pub(super) fn snapshot(&mut self, into: Records) -> Result<StoreSnapshot, StateError> {
        drop(into);
        self.ingest_restored();
        self.write_dirty()?;
        let fail = |e: rocksdb::Error| StateError::Snapshot(e.to_string());
        // The writes skipped the WAL: the memtable must reach the SST files that the
        // checkpoint links.
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db.flush_opt(&flush).map_err(fail)?;
        self.snapshots += 1;
        let dir = snapshot_dir(&self.path, self.snapshots);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| StateError::Snapshot(e.to_string()))?;
        }
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(fail)?;
        let encoded: EncodedRecords = Box::new(move |each| {
            let result = copy_records(&dir, each);
            let _ = std::fs::remove_dir_all(&dir);
            result
        });
        Ok(StoreSnapshot {
            records: Vec::new(),
            encoded: Some(encoded),
        })
    }
}

impl RocksStore {
    /// Cached users as they are; the others as the bytes RocksDB keeps (evicted users
    /// were written when evicted), copied into the part without decoding.
    pub(super) fn states_of<'a>(
        &self,
        users: impl Iterator<Item = &'a str>,
        mut records: Records,
    ) -> Result<StoreSnapshot, StateError> {
        debug_assert!(self.bulk.is_empty(), "a delta is taken after the restore");
        records.clear();
        let mut stored: Vec<(Text, Vec<u8>)> = Vec::new();
        for user in users {
            if let Some((user, slot)) = self.cache.get_key_value(user) {
                records.push((user.clone(), slot.state.clone()));
                continue;
            }
            match self.db.get_pinned(user.as_bytes()) {
                Ok(Some(bytes)) => stored.push((user.into(), bytes.to_vec())),
                Ok(None) => {}
                Err(e) => {
                    let reason = format!("reading user {user} for a delta part: {e}");
                    return Err(StateError::Snapshot(reason));
                }
            }
        }
        let encoded: Option<EncodedRecords> = (!stored.is_empty()).then(|| {
            Box::new(move |each: RecordSink<'_>| {
                stored
                    .iter()
                    .try_for_each(|(user, state)| each(user.as_bytes(), state))
            }) as EncodedRecords
        });
        Ok(StoreSnapshot { records, encoded })
    }

    /// A checkpoint interval ended: the marks of users out of the cache are of it.
    pub(super) fn interval_ended(&mut self) {
        self.marks.clear();
    }

    pub(super) fn holds(&self, user: &str) -> bool {
        debug_assert!(self.bulk.is_empty(), "looked for after the restore");
        self.cache.contains_key(user) || matches!(self.db.get_pinned(user.as_bytes()), Ok(Some(_)))
    }
}

/// A batch of the users' states in key order: the memtable's skip list then finds each
/// key's place from the one before (its splice), where keys in hash order were each a
/// search from the top (`FindSpliceForLevel`: 12% of a restart's samples, 1.7% sorted;
/// a restore of 1.06M users 14% faster).
fn sorted_batch(mut users: Vec<(Text, Vec<u8>)>) -> WriteBatch {
    in_key_order(&mut users);
    let mut batch = WriteBatch::default();
    for (user, state) in &users {
        batch.put(user.as_bytes(), state);
    }
    batch
}

/// Sorts `users` by key, each once with its last state (as a later put of a key wins).
pub(super) fn in_key_order(users: &mut Vec<(Text, Vec<u8>)>) {
    // Latest first, kept first among equal keys by the stable sort; `dedup` keeps it.
    users.reverse();
    users.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    users.dedup_by(|a, b| a.0 == b.0);
}

fn copy_records(dir: &Path, each: RecordSink<'_>) -> io::Result<()> {
    let db = DB::open_for_read_only(&Options::default(), dir, false).map_err(io::Error::other)?;
    // One pass over every key: read ahead, keep the block cache for the live database,
    // and borrow each key and value instead of a copy of each (`iterator` gives boxes).
    let mut read = ReadOptions::default();
    read.set_readahead_size(4 << 20);
    read.fill_cache(false);
    let mut it = db.raw_iterator_opt(read);
    it.seek_to_first();
    while let (Some(user), Some(state)) = (it.key(), it.value()) {
        each(user, state)?;
        it.next();
    }
    it.status().map_err(io::Error::other)
}

fn snapshot_dir(path: &Path, n: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".snapshot-{n}"));
    path.with_file_name(name)
}

/// Removes the snapshot directories and restore files a previous run of this worker
/// left behind.
fn remove_snapshots(path: &Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let prefixes = [format!("{name}.snapshot-"), format!("{name}.restore-")];
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if prefixes.iter().any(|p| file.starts_with(p.as_str())) {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

impl RocksStore {
    /// A cached user's state, read only (`Store::peek`).
    pub(super) fn peek(&self, user: &str) -> Option<&UserState> {
        self.cache.get(user).map(|slot| &slot.state)
    }
}

impl StateStore for RocksStore {
    fn get_mut(&mut self, user: &str) -> Option<&mut UserState> {
        if !self.cache.contains_key(user) {
            self.ingest_restored();
            let mut state = self.read(user)?;
            if let Some(mark) = self.marks.remove(user) {
                state.changed_in = mark;
            }
            // Dirty from here on: the caller is handed it to change.
            return Some(&mut self.cache_insert(user.into(), state, true).state);
        }
        let slot = self.cache.get_mut(user)?;
        slot.used = true;
        slot.dirty = true;
        Some(&mut slot.state)
    }

    fn insert(&mut self, user: Text, state: UserState) {
        self.ingest_restored();
        let known = self.cache.contains_key(&*user)
            || matches!(self.db.get_pinned(user.as_bytes()), Ok(Some(_)));
        if !known {
            self.users += 1;
        }
        self.cache_insert(user, state, true);
    }

    // A RocksDB look-up per user less: most of a restore's cost into RocksDB was these
    // point reads of keys not there. Once the cache is full, the rest go into SST files
    // (`bulk_load`), not through the cache and the memtable.
    fn insert_new(&mut self, user: Text, state: UserState) {
        if self.cache.contains_key(&*user) {
            self.cache_insert(user, state, true);
            return;
        }
        self.users += 1;
        if self.cache.len() < self.capacity {
            self.cache_insert(user, state, true);
        } else if self.bulk.add(user, super::codec::encode(&state)) {
            self.ingest_restored();
        }
    }

    fn restored(&mut self) {
        self.ingest_restored();
    }

    fn remove(&mut self, user: &str) -> Option<UserState> {
        self.ingest_restored();
        let mark = self.marks.remove(user);
        let state = match self.cache.remove(user) {
            Some(slot) => Some(slot.state),
            None => self.read(user).map(|mut state| {
                // Whether it was listed in this interval: said of it as it is removed.
                if let Some(mark) = mark {
                    state.changed_in = mark;
                }
                state
            }),
        }?;
        // It may have been written before, cached or not.
        if let Err(e) = self.db.delete_opt(user.as_bytes(), &self.write) {
            self.log_error("delete failed", user, e);
        }
        self.users = self.users.saturating_sub(1);
        Some(state)
    }

    fn len(&self) -> usize {
        self.users
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::files::{read_part, write_part};
    use crate::model::{HistoryEntry, ProfileData, SavedUser};
    use crate::store::MemoryStore;

    fn state(i: u64) -> UserState {
        let mut data = ProfileData::default();
        data.profile.country = Some(format!("C{i}").into());
        data.history.push(&HistoryEntry {
            event_id: Some(format!("e{i}").into()),
            event_name: None,
            event_type: Some("page_view".into()),
            timestamp: i as i64,
            parameters: None,
        });
        UserState::from_profile(data, i)
    }

    /// Applies the same operations to both stores, checking they agree.
    fn same_as_memory(capacity: usize) -> (tempfile::TempDir, RocksStore, MemoryStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = RocksStore::open(&dir.path().join("worker-0"), capacity).unwrap();
        let mut memory = MemoryStore::default();
        for i in 0..200u64 {
            let user: Text = format!("u{}", i % 70).into();
            match (rocks.get_mut(&user), memory.get_mut(&user)) {
                (Some(r), Some(m)) => {
                    assert_eq!(r.profile, m.profile);
                    assert_eq!(r.last_activity, m.last_activity);
                    r.last_activity = i;
                    m.last_activity = i;
                }
                (None, None) => {
                    rocks.insert(user.clone(), state(i));
                    memory.insert(user, state(i));
                }
                (r, m) => panic!("{user}: rocks {:?} memory {:?}", r.is_some(), m.is_some()),
            }
            if i % 7 == 0 {
                let user = format!("u{}", (i / 7) % 70);
                let (r, m) = (rocks.remove(&user), memory.remove(&user));
                assert_eq!(r.map(|s| s.last_activity), m.map(|s| s.last_activity));
            }
            assert_eq!(rocks.len(), memory.len());
        }
        (dir, rocks, memory)
    }

    /// The users of a part (all with a state), sorted by id.
    fn sorted(path: &Path) -> Vec<(Text, UserState)> {
        let mut users: Vec<_> = read_part(path)
            .unwrap()
            .into_iter()
            .map(|(u, saved)| match saved {
                SavedUser::State(s) => (u, s),
                SavedUser::Pending(_) => panic!("no user is pending"),
            })
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        users
    }

    /// Whole parts of both stores, written into `dir`, hold the same users.
    fn snapshots_agree(dir: &Path, rocks: &mut RocksStore, memory: &mut MemoryStore) {
        let from_rocks = dir.join("rocks.bin");
        let from_memory = dir.join("memory.bin");
        let s = rocks.snapshot(Vec::new()).unwrap();
        write_part(&from_rocks, s.into_part(Vec::new())).unwrap();
        let s = memory.snapshot(Vec::new()).unwrap();
        write_part(&from_memory, s.into_part(Vec::new())).unwrap();
        assert_eq!(sorted(&from_rocks), sorted(&from_memory));
        assert_eq!(sorted(&from_rocks).len(), memory.len());
    }

    #[test]
    fn agrees_with_the_hash_map_through_evictions() {
        let (_dir, rocks, _) = same_as_memory(8);
        assert!(rocks.cache.len() <= 8);
        assert!(rocks.clock.len() <= 2 * 8 + 1024);
    }

    #[test]
    fn a_snapshot_holds_every_user_as_the_hash_map_would() {
        let (dir, mut rocks, mut memory) = same_as_memory(8);
        snapshots_agree(dir.path(), &mut rocks, &mut memory);
        // The RocksDB checkpoint is removed once copied.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".snapshot-"))
            .collect();
        assert!(left.is_empty());
    }

    /// The users in `rocks`'s cache, and whether each is dirty.
    fn cache_of(rocks: &RocksStore) -> Vec<(Text, bool)> {
        let mut c: Vec<_> = rocks
            .cache
            .iter()
            .map(|(u, s)| (u.clone(), s.dirty))
            .collect();
        c.sort();
        c
    }

    /// `peek` (for prefetching) gives the cached users' states as they are, and none of
    /// the users outside the cache: it reads nothing from the database and leaves the
    /// cache as it was (nothing cached, made dirty, or marked used).
    #[test]
    fn a_peek_sees_the_cache_only_and_changes_nothing() {
        let (_dir, rocks, mut memory) = same_as_memory(8);
        let before = cache_of(&rocks);
        let used: Vec<bool> = rocks.cache.values().map(|s| s.used).collect();
        for i in 0..70 {
            let user = format!("u{i}");
            let cached = rocks.cache.contains_key(user.as_str());
            match rocks.peek(&user) {
                Some(s) => {
                    assert!(cached, "{user}");
                    assert_eq!(Some(s), memory.get_mut(&user).map(|m| &*m));
                }
                None => assert!(!cached, "{user}"),
            }
        }
        assert_eq!(cache_of(&rocks), before);
        assert_eq!(
            rocks.cache.values().map(|s| s.used).collect::<Vec<_>>(),
            used
        );
    }

    /// A delta's states, from users cached and evicted, as the hash map has them; and
    /// reading them changes nothing: no user is cached or made dirty by it.
    #[test]
    fn states_for_a_delta_are_the_hash_maps_and_leave_the_cache_alone() {
        let (dir, rocks, memory) = same_as_memory(8);
        let users: Vec<Text> = (0..70).map(|i| format!("u{i}").into()).collect();
        let cached = cache_of(&rocks);
        assert!(
            cached.len() < memory.len(),
            "some users are outside the cache"
        );
        let from_rocks = dir.path().join("rocks.bin");
        let from_memory = dir.path().join("memory.bin");
        let s = rocks
            .states_of(users.iter().map(|u| &**u), Vec::new())
            .unwrap();
        assert!(
            s.encoded.is_some(),
            "evicted users go as their stored bytes"
        );
        write_part(&from_rocks, s.into_part(Vec::new())).unwrap();
        let s = memory
            .states_of(users.iter().map(|u| &**u), Vec::new())
            .unwrap();
        write_part(&from_memory, s.into_part(Vec::new())).unwrap();
        assert_eq!(sorted(&from_rocks), sorted(&from_memory));
        assert_eq!(sorted(&from_rocks).len(), memory.len());
        let after = cache_of(&rocks);
        assert_eq!(after, cached);
        for u in &users {
            assert_eq!(rocks.holds(u), memory.holds(u), "{u}");
        }
    }

    /// A restore's users, added without looking for earlier states, are all counted and
    /// all read back: the cache's, and the others from the SST files they went into.
    #[test]
    fn restored_users_are_counted_and_kept_past_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-0");
        let mut rocks = RocksStore::open(&path, 4).unwrap();
        // Small files: several, their key ranges overlapping.
        rocks.bulk = BulkLoad::with_file_bytes(&path, 200);
        let mut memory = MemoryStore::default();
        for i in (0..40u64).rev() {
            rocks.insert_new(format!("u{i}").into(), state(i));
            memory.insert_new(format!("u{i}").into(), state(i));
        }
        rocks.restored();
        assert!(rocks.bulk.is_empty());
        assert_eq!(rocks.len(), 40);
        assert!(rocks.cache.len() <= 4);
        snapshots_agree(dir.path(), &mut rocks, &mut memory);
        for i in 0..40u64 {
            let s = rocks.get_mut(&format!("u{i}")).expect("restored");
            assert_eq!(s.last_activity, i);
        }
        assert_eq!(rocks.len(), 40);
    }

    /// A restore whose users cannot be written ends the process (through the panic
    /// hook) instead of going on without them.
    #[test]
    #[should_panic(expected = "restored users could not be written")]
    fn restored_users_that_cannot_be_written_end_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = RocksStore::open(&dir.path().join("worker-0"), 1).unwrap();
        rocks.bulk = BulkLoad::with_file_bytes(&dir.path().join("gone").join("worker-0"), 1);
        rocks.insert_new("u0".into(), state(0));
        rocks.insert_new("u1".into(), state(1));
    }

    /// Users still gathered for a file are there for whatever comes next, even before
    /// the restore is said to be over.
    #[test]
    fn restored_users_not_yet_in_a_file_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = RocksStore::open(&dir.path().join("worker-0"), 2).unwrap();
        for i in 0..10u64 {
            rocks.insert_new(format!("u{i}").into(), state(i));
        }
        assert!(!rocks.bulk.is_empty());
        assert_eq!(rocks.remove("u7").map(|s| s.last_activity), Some(7));
        rocks.insert("u9".into(), state(90));
        assert_eq!(rocks.len(), 9, "u9 was there already");
        assert_eq!(rocks.get_mut("u9").map(|s| s.last_activity), Some(90));
        assert_eq!(rocks.get_mut("u8").map(|s| s.last_activity), Some(8));
    }

    /// What a run with more workers left is removed; this run's databases, one in use,
    /// and other files stay.
    #[test]
    fn databases_of_workers_this_run_does_not_have_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mine = RocksStore::open(&d.join("worker-1"), 2).unwrap();
        let in_use = RocksStore::open(&d.join("worker-4"), 2).unwrap();
        drop(RocksStore::open(&d.join("worker-3"), 2).unwrap());
        std::fs::create_dir(d.join("worker-3.snapshot-1")).unwrap();
        std::fs::write(d.join("worker-3.restore-2.sst"), b"x").unwrap();
        std::fs::write(d.join("worker-12.restore-1.sst"), b"x").unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        remove_unused(d, 2);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "worker-1", "worker-4"]);
        drop((mine, in_use));
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        std::fs::write(&file, b"").unwrap();
        let err = check_dir(&file).unwrap_err().to_string();
        assert!(err.contains("it is a file, not a directory"), "{err}");
    }

    #[test]
    fn a_directory_in_use_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-0");
        let _first = RocksStore::open(&path, 10).unwrap();
        let err = RocksStore::open(&path, 10).err().unwrap().to_string();
        assert!(err.starts_with("engine.state-dir: "), "{err}");
        assert!(err.contains("worker-0"), "{err}");
    }

    #[test]
    fn a_reopened_store_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-0");
        {
            let mut s = RocksStore::open(&path, 2).unwrap();
            for i in 0..10 {
                s.insert(format!("u{i}").into(), state(i));
            }
            s.snapshot(Vec::new()).unwrap();
        }
        // A restore's file that a killed run left beside the database.
        let stray = dir.path().join("worker-0.restore-3.sst");
        std::fs::write(&stray, b"partial").unwrap();
        let mut s = RocksStore::open(&path, 2).unwrap();
        assert!(!stray.exists());
        assert_eq!(s.len(), 0);
        assert!(s.get_mut("u1").is_none());
    }
}
