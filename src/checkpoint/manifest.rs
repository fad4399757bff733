//! Completing a checkpoint (the manifest, written last), finding the newest complete
//! one to restore, and keeping only the last few.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{
    CheckpointError, ensure_dir, part_hash, part_trailer, verify_part, write_atomic,
};
use super::{CheckpointConfig, parse_epoch_dir};
use crate::model::Time;

const MANIFEST: &str = "MANIFEST.json";

/// One worker's source positions at an epoch: the next offset to read per partition
/// (a Kafka source), or where in its file to go on (a file source, on worker 0).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OffsetsPart {
    pub topic: String,
    /// The consumer group the offsets were committed for.
    pub group: String,
    pub offsets: BTreeMap<i32, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FilePosition>,
}

/// Where a file source goes on: the byte offset after the last line it emitted before
/// the epoch, in the file at `path` (absolute, so a restore can tell another file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilePosition {
    pub path: PathBuf,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartEntry {
    pub file: String,
    /// The worker's users at the epoch (for a delta part, with the parts it builds on).
    pub users: u64,
    pub bytes: u64,
    /// A delta part: the records it holds itself (users changed, pending or removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// A delta part: the parts it builds on, oldest (a whole state part) first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base: Vec<BasePart>,
}

/// A part a delta builds on: its path under the checkpoint directory
/// (`chk-<epoch>/state-<worker>.bin`), size, checksum and records, so that another file
/// in its place (an older part copied over it, a release writing into its directory) or
/// a damaged record count (the one thing in a part its checksum does not cover) is
/// refused, not restored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasePart {
    pub file: String,
    pub bytes: u64,
    pub hash: u64,
    /// The records its trailer counts (absent in manifests of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
}

/// Written beside a delta part, before it: what the coordinator needs for the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainPart {
    /// The worker's users at the epoch, all parts of the chain applied.
    pub users: u64,
    /// The parts it builds on, oldest first (see `PartEntry::base`).
    pub base: Vec<BasePart>,
}

/// A complete checkpoint: what every worker wrote for `epoch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub epoch: Time,
    /// Workers of the run that wrote it (a restore may use another number).
    pub workers: usize,
    pub topic: String,
    pub group: String,
    /// Next offset to read, per partition, over all workers.
    pub offsets: BTreeMap<i32, i64>,
    pub parts: Vec<PartEntry>,
    /// A file source's position (absent in a Kafka job's manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FilePosition>,
}

impl Manifest {
    pub fn users(&self) -> u64 {
        self.parts.iter().map(|p| p.users).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

/// A checkpoint chosen for restoring.
#[derive(Clone, Debug)]
pub struct Restore {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Restore {
    /// Each worker's part, with the parts it builds on: newest first.
    pub fn part_chains(&self) -> Vec<Vec<PathBuf>> {
        let root = self.dir.parent().unwrap_or(Path::new("."));
        self.manifest
            .parts
            .iter()
            .map(|p| {
                let mut chain = vec![self.dir.join(&p.file)];
                chain.extend(p.base.iter().rev().map(|b| root.join(&b.file)));
                chain
            })
            .collect()
    }

    /// Every part file it reads.
    pub fn part_paths(&self) -> Vec<PathBuf> {
        self.part_chains().into_iter().flatten().collect()
    }
}

pub fn write_offsets(
    cfg: &CheckpointConfig,
    epoch: Time,
    worker: usize,
    part: &OffsetsPart,
) -> std::io::Result<()> {
    let path = cfg.offsets_path(epoch, worker);
    let json = serde_json::to_vec(part).map_err(std::io::Error::other)?;
    write_atomic(&path, |w| w.write_all(&json)).map(|_| ())
}

/// Why a checkpoint could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum Incomplete {
    /// A worker did not write its part of this epoch (it skipped it, still writing the
    /// one before): not an error, the next epoch will do.
    #[error("{0} is missing")]
    Missing(PathBuf),
    #[error(transparent)]
    Failed(#[from] CheckpointError),
}

/// Writes the manifest of `epoch` once every worker's parts are there. Called by worker
/// 0 once its probe passed `epoch`, which (see the module notes) comes after every part
/// that will be written for `epoch` was written.
pub fn complete(
    cfg: &CheckpointConfig,
    epoch: Time,
    workers: usize,
) -> Result<Manifest, Incomplete> {
    let mut manifest = Manifest {
        epoch,
        workers,
        topic: String::new(),
        group: String::new(),
        offsets: BTreeMap::new(),
        parts: Vec::with_capacity(workers),
        file: None,
    };
    for w in 0..workers {
        let offsets = cfg.offsets_path(epoch, w);
        let state = cfg.state_path(epoch, w);
        for path in [&offsets, &state] {
            if !path.exists() {
                return Err(Incomplete::Missing(path.clone()));
            }
        }
        let text = std::fs::read(&offsets).map_err(|e| CheckpointError::io(&offsets, e))?;
        let part: OffsetsPart = serde_json::from_slice(&text)
            .map_err(|e| CheckpointError::corrupt(&offsets, e.to_string()))?;
        manifest.topic = part.topic;
        manifest.group = part.group;
        manifest.offsets.extend(part.offsets);
        manifest.file = manifest.file.or(part.file);
        let (records, bytes) = part_trailer(&state)?;
        let chain = cfg.chain_path(epoch, w);
        let entry = match chain.exists() {
            false => PartEntry {
                file: format!("state-{w}.bin"),
                users: records,
                bytes,
                records: None,
                base: Vec::new(),
            },
            true => {
                let text = std::fs::read(&chain).map_err(|e| CheckpointError::io(&chain, e))?;
                let c: ChainPart = serde_json::from_slice(&text)
                    .map_err(|e| CheckpointError::corrupt(&chain, e.to_string()))?;
                PartEntry {
                    file: format!("state-{w}.bin"),
                    users: c.users,
                    bytes,
                    records: Some(records),
                    base: c.base,
                }
            }
        };
        manifest.parts.push(entry);
    }
    let path = cfg.epoch_dir(epoch).join(MANIFEST);
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| CheckpointError::corrupt(&path, e.to_string()))?;
    write_atomic(&path, |w| w.write_all(&json)).map_err(|e| CheckpointError::io(&path, e))?;
    Ok(manifest)
}

/// Checks, before a run starts, that checkpoints can be written into `dir` (created if
/// missing): otherwise every checkpoint of the run would fail while it acts on events.
pub fn check_dir(dir: &Path) -> Result<(), CheckpointError> {
    check_dir_as_is(dir)?;
    if !dir.exists() {
        let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        ensure_dir(dir).map_err(|e| CheckpointError::io(&shown, e))?;
        probe(dir, &shown)?;
    }
    Ok(())
}

/// What `check_dir` checks, leaving nothing behind (`validate`'s look): `dir` is a
/// directory checkpoints can be written into, or, if it does not exist yet, it can be
/// created: the first missing directory of its path is made and removed again (a
/// permission, a read-only or special file system, or a file in the way fails it).
pub fn check_dir_as_is(dir: &Path) -> Result<(), CheckpointError> {
    // Without a trailing `/` or `.`: `afile/` is the file `afile`.
    let path: PathBuf = std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .components()
        .collect();
    let fail = |cause: String| CheckpointError::io(&path, std::io::Error::other(cause));
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => probe(&path, &path),
            Ok(_) => Err(fail("it is a file, not a directory".into())),
            Err(e) if meta.is_symlink() => Err(fail(format!(
                "it is a link to a path that does not exist ({e})"
            ))),
            Err(e) => Err(CheckpointError::io(&path, e)),
        };
    }
    // The first directory of the path that is missing: its parent exists.
    let Some(first) = path
        .ancestors()
        .take_while(|a| std::fs::symlink_metadata(a).is_err())
        .last()
    else {
        return Ok(());
    };
    let parent = first.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        return Err(fail(format!(
            "cannot be created: {} is not a directory",
            parent.display()
        )));
    }
    std::fs::create_dir(first)
        .and_then(|()| std::fs::remove_dir(first))
        .map_err(|e| fail(format!("cannot be created in {}: {e}", parent.display())))
}

/// Writes and removes a file in `dir` (`shown` in errors).
fn probe(dir: &Path, shown: &Path) -> Result<(), CheckpointError> {
    let fail = |e: std::io::Error| {
        let cause = format!("a file cannot be written into it: {e}");
        CheckpointError::io(shown, std::io::Error::other(cause))
    };
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// Epoch directories under `dir`, oldest first.
fn epochs(dir: &Path) -> Vec<(Time, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(Time, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let epoch = parse_epoch_dir(e.file_name().to_str()?)?;
            Some((epoch, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// Where a run's checkpoints start, from what its checkpoint directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Floor {
    /// Every checkpoint of the run is of a later epoch.
    pub epoch: Time,
    /// A directory too far ahead of the clock to be a crashed run's, left alone.
    pub ahead: Option<Time>,
}

/// The floor of a run that restored `restored` (0: nothing) at `now`: past every epoch
/// directory of `dir`, complete or not (a crashed run's part left in one would be taken
/// for this run's), but for directories more than an interval ahead of the clock, which
/// no run of this clock wrote (a run's final epoch is at most an interval ahead): those
/// would move the run's clock, and expire its users, by however far they are ahead.
pub fn floor(dir: &Path, restored: Time, now: Time, interval_ms: u64) -> Floor {
    let limit = now.max(restored).saturating_add(interval_ms);
    let dirs: Vec<Time> = epochs(dir)
        .into_iter()
        .filter(|(_, path)| path.is_dir())
        .map(|(epoch, _)| epoch)
        .collect();
    let newest = dirs.iter().copied().filter(|&e| e <= limit).max();
    Floor {
        epoch: newest.unwrap_or(0).max(restored),
        ahead: dirs.iter().copied().filter(|&e| e > limit).max(),
    }
}

/// As `find_readable`, a checkpoint this process may not read taken as none: for tests
/// and tools looking at a directory the job wrote (`run` uses `find_readable`).
pub fn find_latest(dir: &Path) -> Option<Restore> {
    find_readable(dir).ok().flatten()
}

/// The newest checkpoint whose manifest and parts are all whole; newer ones that are
/// not are skipped with a warning. One this process may not read (its permissions) is
/// an error, not skipped: falling back past it would start over from an older
/// checkpoint, or from nothing, and repeat the actions since.
///
/// Every part is read and hashed here, and again when it is restored: reading twice is
/// the price of choosing before the dataflow starts, when falling back to an older
/// checkpoint is still possible (a bad part found mid-restore could only be dropped).
pub fn find_readable(dir: &Path) -> Result<Option<Restore>, CheckpointError> {
    for (epoch, path) in epochs(dir).into_iter().rev() {
        let manifest_path = path.join(MANIFEST);
        match std::fs::metadata(&manifest_path) {
            Ok(_) => {}
            Err(e) if not_allowed(&e) => return Err(CheckpointError::io(&manifest_path, e)),
            // Never completed (a crash or a skipped epoch), or not a directory.
            Err(_) => continue,
        }
        match load(&path, &manifest_path) {
            Ok(restore) => return Ok(Some(restore)),
            Err(CheckpointError::Io { path, cause }) if not_allowed(&cause) => {
                return Err(CheckpointError::Io { path, cause });
            }
            Err(e) => tracing::warn!(epoch, "checkpoint skipped, trying an older one: {e}"),
        }
    }
    Ok(None)
}

/// A file this process may not read: not damage, a mistake to fix.
fn not_allowed(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied
}

fn read_manifest(manifest_path: &Path) -> Result<Manifest, CheckpointError> {
    let text = std::fs::read(manifest_path).map_err(|e| CheckpointError::io(manifest_path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| CheckpointError::corrupt(manifest_path, e.to_string()))
}

fn load(dir: &Path, manifest_path: &Path) -> Result<Restore, CheckpointError> {
    let manifest = read_manifest(manifest_path)?;
    for part in &manifest.parts {
        let path = dir.join(&part.file);
        let (records, bytes) = verify_part(&path)?;
        if (records, bytes) != (part.records.unwrap_or(part.users), part.bytes) {
            return Err(CheckpointError::corrupt(&path, "differs from the manifest"));
        }
    }
    let restore = Restore {
        dir: dir.to_path_buf(),
        manifest,
    };
    // The parts the deltas build on: whole, unchanged, and the very files written.
    let root = dir.parent().unwrap_or(Path::new("."));
    for base in restore.manifest.parts.iter().flat_map(|p| &p.base) {
        let path = root.join(&base.file);
        let (records, bytes) = verify_part(&path)?;
        if bytes != base.bytes
            || part_hash(&path)? != base.hash
            || base.records.is_some_and(|r| r != records)
        {
            return Err(CheckpointError::corrupt(
                &path,
                "is not the part the checkpoint builds on",
            ));
        }
    }
    Ok(restore)
}

/// Keeps the newest `retained` complete checkpoints; deletes older ones, and the
/// incomplete directories older than the newest complete one (newer ones may still be
/// being written).
pub fn prune(cfg: &CheckpointConfig) {
    let all = epochs(&cfg.dir);
    let complete: Vec<Time> = all
        .iter()
        .filter(|(_, p)| p.join(MANIFEST).exists())
        .map(|(e, _)| *e)
        .collect();
    let Some(&newest) = complete.last() else {
        return;
    };
    let keep_from = complete[complete.len().saturating_sub(cfg.retained)];
    let fallback = independent_fallback(cfg, &complete, keep_from);
    let kept = |epoch: Time| epoch >= keep_from || Some(epoch) == fallback;
    // The directories of the parts a kept checkpoint's deltas build on stay too.
    let needed: std::collections::HashSet<String> = all
        .iter()
        .filter(|(epoch, _)| complete.contains(epoch) && kept(*epoch))
        .filter_map(|(_, path)| read_manifest(&path.join(MANIFEST)).ok())
        .flat_map(|m| m.parts.into_iter().flat_map(|p| p.base))
        .filter_map(|b| b.file.split('/').next().map(str::to_string))
        .collect();
    for (epoch, path) in all {
        let is_complete = complete.contains(&epoch);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let stale = if needed.contains(name) {
            false
        } else if is_complete {
            !kept(epoch)
        } else {
            epoch < newest
        };
        if stale && let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), "cannot delete an old checkpoint: {e}");
        }
    }
}

/// With deltas, every retained checkpoint may build on one whole part of the newest, and
/// one damaged file would leave nothing to fall back to. When more than one checkpoint
/// is retained and none of the others reads a file apart from the newest's, the newest
/// older checkpoint that reads none of the newest's files (`complete`: oldest first) is
/// kept as well.
fn independent_fallback(
    cfg: &CheckpointConfig,
    complete: &[Time],
    keep_from: Time,
) -> Option<Time> {
    if cfg.retained < 2 {
        return None;
    }
    // The files `epoch`'s checkpoint reads: its parts and the parts they build on.
    let reads = |epoch: Time| -> Option<std::collections::HashSet<String>> {
        let m = read_manifest(&cfg.epoch_dir(epoch).join(MANIFEST)).ok()?;
        let dir = format!("chk-{epoch:016}");
        Some(
            m.parts
                .into_iter()
                .flat_map(|p| {
                    let own = format!("{dir}/{}", p.file);
                    std::iter::once(own).chain(p.base.into_iter().map(|b| b.file))
                })
                .collect(),
        )
    };
    let (&newest, older) = complete.split_last()?;
    let newest_reads = reads(newest)?;
    let apart = |epoch: Time| reads(epoch).is_some_and(|r| r.is_disjoint(&newest_reads));
    if older.iter().any(|&e| e >= keep_from && apart(e)) {
        return None;
    }
    older
        .iter()
        .rev()
        .copied()
        .find(|&e| e < keep_from && apart(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::files::write_states;
    use crate::model::UserState;

    fn cfg(dir: &Path) -> CheckpointConfig {
        CheckpointConfig {
            dir: dir.to_path_buf(),
            interval_ms: 1000,
            retained: 2,
            floor_epoch: 0,
            full_every: 1,
            compress: true,
            compress_deltas: true,
        }
    }

    fn write_epoch(c: &CheckpointConfig, epoch: Time, workers: usize, with_state: bool) {
        for w in 0..workers {
            let part = OffsetsPart {
                topic: "t".into(),
                group: "g".into(),
                offsets: BTreeMap::from([(w as i32, epoch as i64)]),
                file: None,
            };
            write_offsets(c, epoch, w, &part).unwrap();
            if with_state {
                let users = vec![(format!("u{w}").into(), UserState::empty(epoch))];
                write_states(&c.state_path(epoch, w), users).unwrap();
            }
        }
    }

    #[test]
    fn a_checkpoint_directory_is_checked_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("a/b");
        check_dir(&ck).unwrap();
        assert_eq!(
            std::fs::read_dir(&ck).unwrap().count(),
            0,
            "created, left empty"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = check_dir(&file).unwrap_err().to_string();
        assert!(err.contains("it is a file, not a directory"), "{err}");
    }

    #[test]
    fn complete_merges_the_parts_and_restore_finds_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        write_epoch(&c, 1000, 2, true);
        let m = complete(&c, 1000, 2).unwrap();
        assert_eq!(m.offsets, BTreeMap::from([(0, 1000), (1, 1000)]));
        assert_eq!(m.users(), 2);
        write_epoch(&c, 2000, 2, false); // state parts never written
        assert!(matches!(complete(&c, 2000, 2), Err(Incomplete::Missing(_))));
        let r = find_latest(dir.path()).unwrap();
        assert_eq!(r.manifest, m);
        assert_eq!(r.part_paths().len(), 2);
    }

    #[test]
    fn a_manifest_without_a_file_position_still_reads() {
        let old = r#"{"epoch":1000,"workers":1,"topic":"t","group":"g","offsets":{"0":5},
            "parts":[{"file":"state-0.bin","users":1,"bytes":10}]}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!((m.epoch, &m.file), (1000, &None));
        assert!(!serde_json::to_string(&m).unwrap().contains("\"file\":null"));
    }

    #[test]
    fn a_file_position_reaches_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        write_epoch(&c, 1000, 2, true);
        let position = FilePosition {
            path: "/data/events.jsonl".into(),
            offset: 4096,
        };
        let part = OffsetsPart {
            file: Some(position.clone()),
            ..OffsetsPart::default()
        };
        write_offsets(&c, 1000, 0, &part).unwrap();
        assert_eq!(complete(&c, 1000, 2).unwrap().file, Some(position.clone()));
        assert_eq!(
            find_latest(dir.path()).unwrap().manifest.file,
            Some(position)
        );
    }

    #[test]
    fn a_corrupt_newest_checkpoint_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        for epoch in [1000, 2000] {
            write_epoch(&c, epoch, 1, true);
            complete(&c, epoch, 1).unwrap();
        }
        let part = c.state_path(2000, 0);
        let mut bytes = std::fs::read(&part).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&part, bytes).unwrap();
        assert_eq!(find_latest(dir.path()).unwrap().manifest.epoch, 1000);
    }

    /// What cannot be read for want of permission is an error (a checkpoint skipped so
    /// would make the run start over and repeat its actions); a newer epoch that is
    /// unfinished, not a directory, or damaged is skipped. (Root reads past permissions:
    /// the refusal itself is checked on the error's kind.)
    #[test]
    fn an_unreadable_checkpoint_is_an_error_and_a_damaged_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        write_epoch(&c, 1000, 1, true);
        complete(&c, 1000, 1).unwrap();
        write_epoch(&c, 2000, 1, false);
        std::fs::write(c.epoch_dir(3000), b"not a directory").unwrap();
        let found = find_readable(dir.path()).unwrap().unwrap();
        assert_eq!(found.manifest.epoch, 1000);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(not_allowed(&denied));
        for skipped in [
            std::io::ErrorKind::NotFound,
            std::io::ErrorKind::NotADirectory,
            std::io::ErrorKind::InvalidData,
        ] {
            assert!(!not_allowed(&std::io::Error::from(skipped)), "{skipped:?}");
        }
    }

    #[test]
    fn the_floor_is_past_every_directory_but_those_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let floor = |restored, now| super::floor(dir.path(), restored, now, 1000);
        assert_eq!(
            floor(0, 5000),
            Floor {
                epoch: 0,
                ahead: None
            }
        );
        write_epoch(&c, 2000, 1, true);
        complete(&c, 2000, 1).unwrap();
        // A crashed run's final epoch, up to an interval ahead of the clock.
        write_epoch(&c, 3000, 1, true);
        // A plain file of a directory's name is not a checkpoint.
        std::fs::write(c.epoch_dir(4000), "in the way").unwrap();
        assert_eq!(
            floor(2000, 2500),
            Floor {
                epoch: 3000,
                ahead: None
            }
        );
        // A day ahead of the clock: not this clock's run; the floor stays.
        std::fs::create_dir(c.epoch_dir(86_402_000)).unwrap();
        let f = floor(2000, 2500);
        assert_eq!(
            f,
            Floor {
                epoch: 3000,
                ahead: Some(86_402_000)
            }
        );
        assert_eq!(floor(0, 86_401_500).epoch, 86_402_000);
    }

    #[test]
    fn prune_keeps_the_last_complete_ones_and_newer_work() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        for epoch in [1000, 2000, 3000, 4000] {
            write_epoch(&c, epoch, 1, true);
            if epoch != 2000 {
                complete(&c, epoch, 1).unwrap();
            }
        }
        write_epoch(&c, 5000, 1, false); // in progress
        prune(&c);
        let left: Vec<Time> = epochs(dir.path()).into_iter().map(|(e, _)| e).collect();
        assert_eq!(left, vec![3000, 4000, 5000]);
    }
}
