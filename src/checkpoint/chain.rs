//! Reading a worker's part with the parts it builds on (a delta part's chain), newest
//! first: a user's newest record is the one that counts (its state, its pending events,
//! or its removal); older ones are skipped. A newest record that gives only what the
//! user's history gained (a tail) is kept until the record it builds on is read, and
//! given merged with it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;
use rustc_hash::FxBuildHasher;

use super::files::{CheckpointError, PartReader, Saved, Want, open_chain};
use super::manifest::Restore;
use crate::history::History;
use crate::model::{SavedUser, Text, UserState};
use crate::store::codec;

pub struct ChainReader {
    /// Newest first, until they are opened (all at once: a delta's dictionary extends
    /// the ones before it).
    paths: Vec<PathBuf>,
    /// Newest first; the front one is being read.
    parts: VecDeque<PartReader>,
    /// The users a newer part had (given, removed, or waiting: their newest record is
    /// a tail, given once the record it builds on is read). One map for both, so that
    /// each record costs one look-up; empty for a chain of one part.
    users: HashMap<Text, Option<Box<Waiting>>, FxBuildHasher>,
    /// How many of `users` are waiting.
    waiting: usize,
    /// The chain's oldest part, which every tail builds on in the end.
    oldest: PathBuf,
}

/// A user's newest record, a tail: its state (the history taken out into `gained`),
/// how many entries it keeps of the record before it and whether it takes its profile
/// and visit from there (several tails of a user combined).
struct Waiting {
    state: UserState,
    follows: codec::Follows,
    gained: codec::Gained,
}

impl ChainReader {
    /// `parts`: newest first (`Restore::part_chains`).
    pub fn new(parts: Vec<PathBuf>) -> ChainReader {
        ChainReader {
            oldest: parts.last().cloned().unwrap_or_default(),
            paths: parts,
            parts: VecDeque::new(),
            users: HashMap::default(),
            waiting: 0,
        }
    }

    /// Up to `max` more records, some maybe left out as older; `None` once the chain is
    /// read. An error ends the chain: the parts before the one that failed would give
    /// the users of its unread records older states than theirs, or back after their
    /// removal (they are looked up again instead).
    pub fn next_chunk(
        &mut self,
        max: usize,
    ) -> Result<Option<Vec<(Text, SavedUser)>>, CheckpointError> {
        if !self.paths.is_empty() {
            let paths = std::mem::take(&mut self.paths);
            tracing::debug!(parts = ?paths, "restoring");
            self.parts = open_chain(&paths)?.into();
        }
        loop {
            let last = self.parts.len() == 1;
            let Some(reader) = self.parts.front_mut() else {
                return self.ended();
            };
            let users = &mut self.users;
            let mut want = |user: &str| want(users, user, last);
            match reader.next_records_of(max, &mut want) {
                Ok(Some(records)) => {
                    let path = reader.path().to_path_buf();
                    let settled = self.settle(records, &path);
                    if settled.is_err() {
                        self.parts.clear();
                    }
                    return settled.map(Some);
                }
                Ok(None) => {
                    self.parts.pop_front();
                }
                Err(e) => {
                    self.parts.clear();
                    return Err(e);
                }
            }
        }
    }

    /// The users `records` give now: states, pending users, and tails merged with the
    /// history of the record they build on; tails wait for theirs.
    fn settle(
        &mut self,
        records: Vec<(Text, Saved)>,
        path: &Path,
    ) -> Result<Vec<(Text, SavedUser)>, CheckpointError> {
        let mut users = Vec::with_capacity(records.len());
        for (user, saved) in records {
            match saved {
                Saved::User(saved) => users.push((user, saved)),
                Saved::Removed => {}
                Saved::Tail { mut state, follows } => {
                    let history = std::mem::take(&mut state.history);
                    let gained = codec::Gained::of(std::sync::Arc::unwrap_or_clone(history));
                    let waiting = Waiting {
                        state,
                        follows,
                        gained,
                    };
                    self.users.insert(user, Some(Box::new(waiting)));
                    self.waiting += 1;
                }
                // Asked for a user whose newer record is waiting (`Want::History`).
                Saved::History {
                    history,
                    keeps,
                    base,
                } => match self.users.get_mut(&user).and_then(Option::take) {
                    Some(newer) => {
                        self.waiting -= 1;
                        self.follow(user, (history, keeps, base), newer, &mut users, path)?
                    }
                    None => {
                        let reason = format!("user {user}'s history read for no newer record");
                        return Err(CheckpointError::corrupt(path, reason));
                    }
                },
            }
        }
        Ok(users)
    }

    /// `newer`, a tail of `user`, on `older`, the history of the user's record before it
    /// (with its count if a tail too, and its profile and visit if `newer` inherits them
    /// and it has them): given, or waiting for the record before that.
    fn follow(
        &mut self,
        user: Text,
        (older, older_keeps, base): (History, Option<usize>, Option<codec::Base>),
        mut newer: Box<Waiting>,
        users: &mut Vec<(Text, SavedUser)>,
        path: &Path,
    ) -> Result<(), CheckpointError> {
        let corrupt = |what: &str| {
            let reason = format!("user {user}'s delta record {what}");
            Err(CheckpointError::corrupt(path, reason))
        };
        let Some(still) = codec::follow(older, older_keeps, &mut newer.gained, newer.follows.keep)
        else {
            return corrupt("keeps more entries than the record before it holds");
        };
        let mut inherits = newer.follows.inherits;
        if let Some(base) = base.filter(|_| inherits) {
            if codec::inherit(&mut newer.state, base).is_none() {
                return corrupt(
                    "has a visit where the record before it has none, or none where it has one",
                );
            }
            inherits = false;
        }
        match older_keeps {
            None if inherits => return corrupt("builds on a state without a profile"),
            None => {
                let Waiting {
                    mut state, gained, ..
                } = *newer;
                state.history = std::sync::Arc::new(gained.joined());
                users.push((user, SavedUser::State(state)));
            }
            Some(_) => {
                newer.follows = codec::Follows {
                    keep: still,
                    inherits,
                };
                self.users.insert(user, Some(newer));
                self.waiting += 1;
            }
        }
        Ok(())
    }

    /// The chain is read: every tail must have met the record it builds on.
    fn ended(&mut self) -> Result<Option<Vec<(Text, SavedUser)>>, CheckpointError> {
        if self.waiting == 0 {
            return Ok(None);
        }
        let first = self.users.iter().find(|(_, w)| w.is_some()).map(|(u, _)| u);
        let reason = format!(
            "{} users' delta records (user {}'s the first) build on no state in their chain",
            self.waiting,
            first.map_or("?", |u| u)
        );
        self.users.clear();
        self.waiting = 0;
        Err(CheckpointError::corrupt(&self.oldest, reason))
    }
}

/// What a chain's reader wants of `user`'s record in the part being read: its record
/// if no newer part had the user, the history of one whose newer record is a tail, or
/// nothing. The ids of the users of all but the chain's oldest part are kept (the
/// record is given the same id).
fn want(
    users: &mut HashMap<Text, Option<Box<Waiting>>, FxBuildHasher>,
    user: &str,
    last: bool,
) -> Want {
    let older = |waiting: &Option<Box<Waiting>>| match waiting {
        Some(w) => Want::History {
            base: w.follows.inherits,
        },
        None => Want::Skip,
    };
    if last {
        return match users.get(user) {
            Some(waiting) => older(waiting),
            None => Want::Record(None),
        };
    }
    match users.entry_ref(user) {
        EntryRef::Occupied(e) => older(e.get()),
        EntryRef::Vacant(e) => {
            let id = Text::from(user);
            e.insert_with_key(id.clone(), None);
            Want::Record(Some(id))
        }
    }
}

impl Restore {
    /// Every user the checkpoint restores, as it restores them (tests and tools: all in
    /// memory at once).
    pub fn read_users(&self) -> Result<Vec<(Text, SavedUser)>, CheckpointError> {
        let mut users = Vec::new();
        for chain in self.part_chains() {
            let mut reader = ChainReader::new(chain);
            while let Some(chunk) = reader.next_chunk(8192)? {
                users.extend(chunk);
            }
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::checkpoint::CheckpointConfig;
    use crate::checkpoint::files::{PartRecords, write_part_as};
    use crate::checkpoint::manifest::{self, BasePart, ChainPart, OffsetsPart};
    use crate::model::{PendingUser, UserEvent, UserState};

    fn cfg(dir: &std::path::Path) -> CheckpointConfig {
        CheckpointConfig {
            dir: dir.to_path_buf(),
            interval_ms: 1000,
            retained: 1,
            floor_epoch: 0,
            full_every: 3,
            compress: true,
            compress_deltas: true,
        }
    }

    fn state(at: u64) -> UserState {
        UserState::empty(at)
    }

    /// Writes worker 0's part of `epoch` (a delta if `base` is not empty) and completes it.
    fn part(
        c: &CheckpointConfig,
        epoch: u64,
        states: Vec<(&str, UserState)>,
        pending: Vec<&str>,
        removed: Option<Vec<&str>>,
        chain: Option<ChainPart>,
    ) {
        let offsets = OffsetsPart {
            topic: "t".into(),
            group: "g".into(),
            offsets: BTreeMap::from([(0, epoch as i64)]),
            file: None,
        };
        manifest::write_offsets(c, epoch, 0, &offsets).unwrap();
        let tails = removed.is_some();
        let records = PartRecords {
            base: None,
            states: states.into_iter().map(|(u, s)| (u.into(), s)).collect(),
            pending: pending
                .into_iter()
                .map(|u| {
                    let ev = UserEvent {
                        user_id: u.into(),
                        event_type: "x".into(),
                        ..UserEvent::default()
                    };
                    let p = PendingUser {
                        before: None,
                        events: vec![(epoch - 1, ev)],
                    };
                    (u.into(), p)
                })
                .collect(),
            removed: removed.map(|r| r.into_iter().map(Text::from).collect()),
            chain: chain.map(|ch| (c.chain_path(epoch, 0), ch)),
            words_before: 0,
            tails,
        };
        // Chains mix compressed parts and parts as they are (the setting changed between
        // runs): the parts of odd seconds are written uncompressed.
        let compress = (epoch / 1000).is_multiple_of(2);
        write_part_as(&c.state_path(epoch, 0), records, compress).unwrap();
        manifest::complete(c, epoch, 1).unwrap();
    }

    fn restored(r: &Restore) -> Vec<(String, String)> {
        let mut users: Vec<(String, String)> = r
            .read_users()
            .unwrap()
            .into_iter()
            .map(|(u, saved)| {
                let what = match saved {
                    SavedUser::State(s) => format!("state@{}", s.last_activity),
                    SavedUser::Pending(_) => "pending".to_string(),
                };
                (u.to_string(), what)
            })
            .collect();
        users.sort();
        users
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Writes a whole part at 1000 and deltas at 2000 and 3000.
    fn three_epochs(c: &CheckpointConfig) {
        part(
            c,
            1000,
            vec![("a", state(1000)), ("b", state(1000)), ("c", state(1000))],
            vec![],
            None,
            None,
        );
        let base = vec![name(c, 1000)];
        let chain = ChainPart { users: 3, base };
        part(
            c,
            2000,
            vec![("b", state(2000))],
            vec!["d"],
            Some(vec!["c"]),
            Some(chain),
        );
        let base = vec![name(c, 1000), name(c, 2000)];
        let chain = ChainPart { users: 4, base };
        part(
            c,
            3000,
            vec![("c", state(3000)), ("d", state(3000))],
            vec![],
            Some(vec![]),
            Some(chain),
        );
    }

    #[test]
    fn a_chain_restores_each_users_newest_record() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        three_epochs(&c);
        let latest = manifest::find_latest(&c.dir).unwrap();
        assert_eq!(latest.manifest.epoch, 3000);
        assert_eq!(latest.manifest.users(), 4);
        let want = [
            ("a", "state@1000"),
            ("b", "state@2000"),
            ("c", "state@3000"),
            ("d", "state@3000"),
        ];
        assert_eq!(restored(&latest), pairs(&want));
        // The checkpoint of 2000: c removed, d still being looked up.
        std::fs::remove_file(c.epoch_dir(3000).join("MANIFEST.json")).unwrap();
        let at_2000 = manifest::find_latest(&c.dir).unwrap();
        let want = [("a", "state@1000"), ("b", "state@2000"), ("d", "pending")];
        assert_eq!(restored(&at_2000), pairs(&want));
    }

    /// A state whose history holds `ids`, the newest `gained` of them since the chain's
    /// record of it.
    fn with_history(ids: &[&str], gained: Option<u32>) -> UserState {
        let mut s = UserState::empty(1000);
        let mut history = crate::history::History::default();
        for id in ids {
            history.push(&crate::model::HistoryEntry {
                event_id: Some((*id).into()),
                event_name: None,
                event_type: Some("x".into()),
                timestamp: 1,
                parameters: None,
            });
        }
        s.history = std::sync::Arc::new(history);
        s.changed_in.appended = gained;
        s
    }

    fn name(c: &CheckpointConfig, epoch: u64) -> BasePart {
        let path = c.state_path(epoch, 0);
        BasePart {
            file: CheckpointConfig::part_name(epoch, 0),
            bytes: std::fs::metadata(&path).unwrap().len(),
            hash: crate::checkpoint::files::part_hash(&path).unwrap(),
            records: Some(crate::checkpoint::files::verify_part(&path).unwrap().0),
        }
    }

    /// Deltas give what a history gained since the user's record before (whole parts
    /// never do): the restore merges them onto it, through several deltas; a tail
    /// whose user has no state in the chain is refused.
    #[test]
    fn what_histories_gained_is_merged_onto_the_record_before() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        // A whole part writes every state whole, whatever it gained.
        let a1 = with_history(&["h1", "h2"], Some(1));
        part(
            &c,
            1000,
            vec![("a", a1), ("b", with_history(&["b1"], None))],
            vec![],
            None,
            None,
        );
        let chain = ChainPart {
            users: 2,
            base: vec![name(&c, 1000)],
        };
        let a2 = with_history(&["h2", "h3"], Some(1));
        part(&c, 2000, vec![("a", a2)], vec![], Some(vec![]), Some(chain));
        let base = vec![name(&c, 1000), name(&c, 2000)];
        let chain = ChainPart { users: 2, base };
        let a3 = with_history(&["h3", "h4", "h5"], Some(2));
        let b3 = with_history(&["b1", "b2"], Some(1));
        part(
            &c,
            3000,
            vec![("a", a3), ("b", b3)],
            vec![],
            Some(vec![]),
            Some(chain),
        );
        let latest = manifest::find_latest(&c.dir).unwrap();
        let mut users: Vec<(String, Vec<String>)> = latest
            .read_users()
            .unwrap()
            .into_iter()
            .map(|(u, saved)| match saved {
                SavedUser::State(s) => (
                    u.to_string(),
                    s.history
                        .iter()
                        .map(|e| e.event_id.unwrap().to_string())
                        .collect(),
                ),
                SavedUser::Pending(_) => unreachable!(),
            })
            .collect();
        users.sort();
        assert_eq!(
            users,
            [
                (
                    "a".to_string(),
                    vec!["h3".to_string(), "h4".into(), "h5".into()]
                ),
                ("b".into(), vec!["b1".into(), "b2".into()])
            ]
        );
        // A delta of a user the chain has no state of.
        let base = vec![name(&c, 1000), name(&c, 2000), name(&c, 3000)];
        let chain = ChainPart { users: 3, base };
        let z = with_history(&["z1", "z2"], Some(1));
        part(&c, 4000, vec![("z", z)], vec![], Some(vec![]), Some(chain));
        let latest = manifest::find_latest(&c.dir).unwrap();
        let err = latest.read_users().unwrap_err().to_string();
        assert!(
            err.contains("user z's the first) build on no state"),
            "{err}"
        );
    }

    /// Flips the bits `mask` of the byte of `path` that `at` picks from its length.
    fn flip(path: &std::path::Path, at: impl FnOnce(usize) -> usize, mask: u8) {
        let mut bytes = std::fs::read(path).unwrap();
        let at = at(bytes.len());
        bytes[at] ^= mask;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_damaged_part_of_a_chain_falls_back_to_an_older_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        three_epochs(&c);
        flip(&c.state_path(2000, 0), |len| len / 2, 0xff);
        let latest = manifest::find_latest(&c.dir).unwrap();
        assert_eq!(
            latest.manifest.epoch, 1000,
            "3000 and 2000 need the damaged part"
        );
    }

    /// A delta that fails while it is read (damaged after the start's check) ends its
    /// chain: read on, the part before it gave `d` its state of 2000 (pending) where
    /// the failed part had its state of 3000.
    #[test]
    fn a_part_failing_while_it_is_read_ends_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        three_epochs(&c);
        let latest = manifest::find_latest(&c.dir).unwrap();
        flip(&c.state_path(3000, 0), |len| len / 2, 0xff);
        let mut reader = ChainReader::new(latest.part_chains().remove(0));
        let (mut users, mut errors) = (Vec::new(), 0);
        loop {
            match reader.next_chunk(8192) {
                Ok(Some(chunk)) => users.extend(chunk.into_iter().map(|(u, _)| u)),
                Ok(None) => break,
                Err(_) => errors += 1,
            }
        }
        assert_eq!((users, errors), (vec![], 1));
    }

    /// A part's record count is in its trailer, outside its checksum: a base whose count
    /// differs from the one the manifest names is refused (restoring it failed half-way,
    /// its users' state lost, the run going on from the checkpoint's offsets).
    #[test]
    fn a_base_part_with_a_damaged_record_count_falls_back_to_an_older_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        three_epochs(&c);
        // The trailer: the count, the checksum, the magic (8 bytes each).
        flip(&c.state_path(2000, 0), |len| len - 24, 0x04);
        let latest = manifest::find_latest(&c.dir).unwrap();
        // 2000's own manifest names its count; 3000 builds on it.
        assert_eq!(latest.manifest.epoch, 1000);
    }

    #[test]
    fn another_whole_part_in_a_bases_place_is_refused_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        three_epochs(&c);
        // An older, valid part copied over the base the later deltas build on.
        part(&c, 500, vec![("z", state(500))], vec![], None, None);
        std::fs::copy(c.state_path(500, 0), c.state_path(1000, 0)).unwrap();
        let latest = manifest::find_latest(&c.dir).unwrap();
        // 3000 and 2000 build on the replaced part, and 1000 was it.
        assert_eq!(latest.manifest.epoch, 500);
    }

    #[test]
    fn pruning_keeps_the_parts_a_kept_checkpoint_builds_on() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        three_epochs(&c);
        manifest::prune(&c);
        for epoch in [1000, 2000, 3000] {
            assert!(c.epoch_dir(epoch).exists(), "{epoch}");
        }
        // A whole part at 4000: the chain before it is no longer needed.
        part(&c, 4000, vec![("a", state(4000))], vec![], None, None);
        manifest::prune(&c);
        for epoch in [1000, 2000, 3000] {
            assert!(!c.epoch_dir(epoch).exists(), "{epoch}");
        }
        assert!(c.epoch_dir(4000).exists());
    }

    /// With two retained, both on the same whole part, the newest checkpoint before that
    /// part is kept too (with its chain): a damaged whole part still has a fallback.
    #[test]
    fn a_checkpoint_apart_from_the_newest_whole_part_is_kept_to_fall_back_to() {
        let dir = tempfile::tempdir().unwrap();
        let c = CheckpointConfig {
            retained: 2,
            ..cfg(dir.path())
        };
        three_epochs(&c);
        part(&c, 4000, vec![("a", state(4000))], vec![], None, None);
        let base = vec![BasePart {
            file: CheckpointConfig::part_name(4000, 0),
            bytes: std::fs::metadata(c.state_path(4000, 0)).unwrap().len(),
            hash: crate::checkpoint::files::part_hash(&c.state_path(4000, 0)).unwrap(),
            records: None,
        }];
        let chain = ChainPart { users: 2, base };
        part(
            &c,
            5000,
            vec![("b", state(5000))],
            vec![],
            Some(vec![]),
            Some(chain),
        );
        manifest::prune(&c);
        for epoch in [1000, 2000, 3000, 4000, 5000] {
            assert!(c.epoch_dir(epoch).exists(), "{epoch}");
        }
        // 4000's whole part damaged: the restore falls back to 3000, not to nothing.
        let whole = c.state_path(4000, 0);
        let mut bytes = std::fs::read(&whole).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&whole, bytes).unwrap();
        assert_eq!(manifest::find_latest(&c.dir).unwrap().manifest.epoch, 3000);
        // A whole part at 6000: 5000 reads nothing of it, so nothing older is kept.
        part(&c, 6000, vec![("a", state(6000))], vec![], None, None);
        manifest::prune(&c);
        let left: Vec<bool> = [1000, 2000, 3000, 4000, 5000, 6000]
            .map(|e| c.epoch_dir(e).exists())
            .to_vec();
        assert_eq!(left, [false, false, false, true, true, true]);
    }

    /// A chain written by the release before deltas' dictionaries extended their base's
    /// (a whole part and an `ETDELTA1` delta with the whole dictionary, from the first
    /// 300 demo events read with `source.resume`) restores.
    #[test]
    fn a_chain_of_the_release_before_restores() {
        restores_as_written("chain-delta1", 1);
    }

    /// A chain of `ETDELTA5` deltas, whose tails repeat the profile and visit (written by
    /// the release before tails left them out: the demo's first 300 events at 200 a
    /// second, read with `source.resume`, checkpoints every 300 ms), restores.
    #[test]
    fn a_chain_of_tails_with_their_profiles_restores() {
        restores_as_written("chain-tails5", 4);
    }

    /// The latest checkpoint of fixture `name`, of `deltas` deltas on a whole part,
    /// restores every user of the demo events before its file offset: each history
    /// ending with its events in order, and a user the demo's Profile API knows with its
    /// profile and its visit, an action counted for each of its events.
    fn restores_as_written(name: &str, deltas: usize) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let restore = manifest::find_latest(&root.join("tests/fixtures").join(name)).unwrap();
        assert_eq!(restore.manifest.parts[0].base.len(), deltas, "{name}");
        let offset = restore.manifest.file.as_ref().unwrap().offset as usize;
        let events = std::fs::read(root.join("config/demo/events.jsonl")).unwrap();
        let mut want: std::collections::HashMap<String, Vec<String>> = Default::default();
        for line in events[..offset].split(|&b| b == b'\n') {
            if let Ok(ev) = crate::wire::decode(line) {
                let id = ev.event_id.as_deref().unwrap_or_default().to_string();
                want.entry(ev.user_id.to_string()).or_default().push(id);
            }
        }
        let profiles = std::fs::read_to_string(root.join("config/demo/profiles.jsonl")).unwrap();
        let known: std::collections::HashMap<String, serde_json::Value> = profiles
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["user_id"].as_str().unwrap().to_string(), v))
            .collect();
        let users = restore.read_users().unwrap();
        assert_eq!(users.len(), want.len(), "{name}");
        let mut with_visits = 0;
        for (user, saved) in users {
            let SavedUser::State(s) = saved else {
                panic!("{user} pending in a final checkpoint")
            };
            let ids: Vec<String> = s
                .history
                .iter()
                .map(|h| h.event_id.unwrap_or_default().to_string())
                .collect();
            let events = &want[&*user];
            assert!(ids.ends_with(events), "{name}: {user}: {ids:?}");
            let Some(p) = known.get(&*user) else {
                continue;
            };
            let country = p["profile"]["country"].as_str();
            assert_eq!(s.profile.country.as_deref(), country, "{name}: {user}");
            let v = s.visit.as_deref().unwrap();
            assert_eq!(v.uuid.as_deref(), p["visit"]["uuid"].as_str(), "{user}");
            let actions = p["visit"]["actions"].as_i64().unwrap() + events.len() as i64;
            assert_eq!(v.actions, actions, "{name}: {user}");
            with_visits += 1;
        }
        assert!(with_visits > 100, "{name}: {with_visits}");
    }
}
