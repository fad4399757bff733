//! The processes of a cluster must share one checkpoint directory (each writes its
//! workers' parts there, and process 0 reads them all to write the manifest) and
//! restore the same checkpoint from it. Directories that are not shared let the run go
//! on with no checkpoint ever completing and no offset committed; processes that
//! restore different checkpoints lose or repeat events. Both are checked before the
//! graph is built: process 0 leaves a marker file in its directory, every worker looks
//! for it in its own, replies beside it and says which checkpoint its process restores,
//! process 0 looks for the replies, and every worker judges all the answers alike
//! (`verdict`), so the whole cluster starts or fails together, saying how to fix it.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::{ensure_dir, write_atomic};
use crate::model::Time;

/// The file process 0 leaves in the checkpoint directory for the others to find, and
/// the replies they leave beside it for process 0 to find.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The file's name in the directory; it holds `token`.
    pub name: String,
    pub token: String,
    /// Why it could not be written, if it could not.
    pub write_error: Option<String>,
}

impl Marker {
    /// Writes a new marker into `dir` (created if missing), removing those of earlier
    /// checks that did not end (a process that failed meanwhile).
    pub fn leave(dir: &Path) -> Marker {
        remove_stale(dir);
        let hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let token = format!("{:016x}", hasher.finish());
        let name = format!(".cluster-check-{token}");
        let write_error = write_token(dir, &name, &token);
        Marker {
            name,
            token,
            write_error,
        }
    }

    /// Whether `dir` holds this marker.
    pub fn is_in(&self, dir: &Path) -> bool {
        holds_token(dir, &self.name, &self.token)
    }

    fn reply_name(&self, worker: usize) -> String {
        format!("{}-{worker}", self.name)
    }

    /// Worker `worker` replies in `dir`; why it could not, if it could not.
    pub fn reply(&self, dir: &Path, worker: usize) -> Option<String> {
        write_token(dir, &self.reply_name(worker), &self.token)
    }

    /// Whether `dir` holds worker `worker`'s reply.
    pub fn has_reply(&self, dir: &Path, worker: usize) -> bool {
        holds_token(dir, &self.reply_name(worker), &self.token)
    }

    /// Removes it and the replies of `workers` workers, once every worker has looked.
    pub fn remove(&self, dir: &Path, workers: usize) {
        if self.write_error.is_some() {
            return;
        }
        let names =
            std::iter::once(self.name.clone()).chain((0..workers).map(|w| self.reply_name(w)));
        for name in names {
            match std::fs::remove_file(dir.join(&name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("cannot remove {}: {e}", dir.join(&name).display())
                }
                _ => {}
            }
        }
    }
}

fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".cluster-check-")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn write_token(dir: &Path, name: &str, token: &str) -> Option<String> {
    ensure_dir(dir)
        .and_then(|()| write_atomic(&dir.join(name), |w| w.write_all(token.as_bytes())))
        .err()
        .map(|e| e.to_string())
}

fn holds_token(dir: &Path, name: &str, token: &str) -> bool {
    std::fs::read(dir.join(name)).is_ok_and(|b| b == token.as_bytes())
}

/// What one worker found, for every worker to judge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    pub worker: usize,
    /// The checkpoint directory of its process, absolute.
    pub dir: String,
    /// Process 0's marker is in it.
    pub sees_marker: bool,
    /// Why process 0 could not write the marker, if it could not.
    pub marker_error: Option<String>,
    /// Why this worker could not write its reply, if it could not.
    pub reply_error: Option<String>,
    /// The epoch of the checkpoint its process restores.
    pub restores: Option<Time>,
    /// The epoch its process's checkpoints start after.
    pub floor: Time,
}

impl Sighting {
    /// What worker `worker`, whose process has `dir`, finds of `marker`; it replies
    /// there for process 0 to see.
    pub fn of(
        worker: usize,
        marker: &Marker,
        dir: &Path,
        restores: Option<Time>,
        floor: Time,
    ) -> Sighting {
        let sees_marker = marker.write_error.is_none() && marker.is_in(dir);
        // Replying also tells whether this process can write there at all (a directory
        // of its own that is a file, say): not sharing is then not the first problem.
        let reply_error = match marker.write_error {
            Some(_) => None,
            None => marker.reply(dir, worker),
        };
        if !sees_marker && reply_error.is_none() {
            let _ = std::fs::remove_file(dir.join(marker.reply_name(worker)));
        }
        Sighting {
            worker,
            dir: std::path::absolute(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .display()
                .to_string(),
            sees_marker,
            marker_error: marker.write_error.clone(),
            reply_error,
            restores,
            floor,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClusterCheckError {
    #[error(
        "process {process} cannot write into its checkpoint directory {dir} (`engine.checkpoint-dir`): {reason}"
    )]
    NotWritable {
        process: usize,
        dir: String,
        reason: String,
    },
    #[error(
        "processes 0 and {process} do not share a checkpoint directory (a file one of them wrote into its directory is not in the other's; process 0: {dir0}, process {process}: {dir}): every process of a cluster must name one directory in `engine.checkpoint-dir` (an absolute path), on a filesystem every host reaches (NFS, or an object store mounted as one; see the README), or no checkpoint ever completes"
    )]
    NotShared {
        process: usize,
        dir0: String,
        dir: String,
    },
    #[error(
        "the processes would restore different checkpoints ({found}): their views of the checkpoint directory differ; start them again once every process sees the same files"
    )]
    Disagree { found: String },
}

/// Process 0: the workers whose replies are not in its directory `dir` (of those that
/// wrote one).
pub fn unseen(marker: &Marker, dir: &Path, sightings: &[Sighting]) -> Vec<usize> {
    sightings
        .iter()
        .filter(|s| s.sees_marker && s.reply_error.is_none() && !marker.has_reply(dir, s.worker))
        .map(|s| s.worker)
        .collect()
}

/// Whether a cluster, from every worker's `sightings` and the workers whose replies
/// process 0 did not find (`unseen`), shares its checkpoint directory and restores one
/// checkpoint. Workers are numbered process by process, `per_process` in each.
pub fn verdict(
    mut sightings: Vec<Sighting>,
    unseen: &[usize],
    per_process: usize,
) -> Result<(), ClusterCheckError> {
    sightings.sort_by_key(|s| s.worker);
    let process_of = |s: &Sighting| s.worker / per_process.max(1);
    let Some(first) = sightings.first() else {
        return Ok(());
    };
    let not_shared = |s: &Sighting| ClusterCheckError::NotShared {
        process: process_of(s),
        dir0: first.dir.clone(),
        dir: s.dir.clone(),
    };
    if let Some(reason) = &first.marker_error {
        return Err(ClusterCheckError::NotWritable {
            process: 0,
            dir: first.dir.clone(),
            reason: reason.clone(),
        });
    }
    if let Some((s, reason)) = sightings
        .iter()
        .find_map(|s| s.reply_error.as_ref().map(|r| (s, r)))
    {
        return Err(ClusterCheckError::NotWritable {
            process: process_of(s),
            dir: s.dir.clone(),
            reason: reason.clone(),
        });
    }
    if let Some(blind) = sightings.iter().find(|s| !s.sees_marker) {
        return Err(not_shared(blind));
    }
    if let Some(s) = sightings.iter().find(|s| unseen.contains(&s.worker)) {
        return Err(not_shared(s));
    }
    let differs = |s: &Sighting| (s.restores, s.floor) != (first.restores, first.floor);
    if sightings.iter().any(differs) {
        let floors_differ = sightings.iter().any(|s| s.floor != first.floor);
        let mut found: Vec<String> = Vec::new();
        for s in sightings
            .iter()
            .filter(|s| s.worker % per_process.max(1) == 0)
        {
            let restores = s.restores.map_or("none".into(), |e| format!("epoch {e}"));
            found.push(match floors_differ {
                true => format!(
                    "process {}: {restores}, checkpoints after epoch {}",
                    process_of(s),
                    s.floor
                ),
                false => format!("process {}: {restores}", process_of(s)),
            });
        }
        return Err(ClusterCheckError::Disagree {
            found: found.join("; "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per_process` workers for each of `dirs` (a process's directory and the
    /// checkpoint it restores), and what process 0 (in the first directory) misses.
    fn look(
        dirs: &[(&Path, Option<Time>)],
        marker: &Marker,
        per_process: usize,
    ) -> (Vec<Sighting>, Vec<usize>) {
        let found: Vec<Sighting> = dirs
            .iter()
            .flat_map(|(dir, restores)| std::iter::repeat_n((*dir, *restores), per_process))
            .enumerate()
            .map(|(w, (dir, restores))| Sighting::of(w, marker, dir, restores, 0))
            .collect();
        let missed = unseen(marker, dirs[0].0, &found);
        (found, missed)
    }

    #[test]
    fn a_shared_directory_and_one_checkpoint_pass_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker::leave(dir.path());
        let (found, missed) = look(
            &[(dir.path(), Some(5000)), (dir.path(), Some(5000))],
            &marker,
            2,
        );
        assert_eq!(verdict(found, &missed, 2), Ok(()));
        assert!((0..4).all(|w| marker.has_reply(dir.path(), w)));
        marker.remove(dir.path(), 4);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_marker_left_by_a_check_that_did_not_end_is_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let stale = Marker::leave(dir.path());
        assert!(stale.reply(dir.path(), 1).is_none());
        let marker = Marker::leave(dir.path());
        marker.remove(dir.path(), 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_process_with_a_directory_of_its_own_is_named_with_the_fix() {
        let shared = tempfile::tempdir().unwrap();
        let own = tempfile::tempdir().unwrap();
        let marker = Marker::leave(shared.path());
        let dirs = [
            (shared.path(), None),
            (shared.path(), None),
            (own.path(), None),
        ];
        let (found, missed) = look(&dirs, &marker, 2);
        let err = verdict(found, &missed, 2).unwrap_err();
        assert_eq!(
            err,
            ClusterCheckError::NotShared {
                process: 2,
                dir0: shared.path().display().to_string(),
                dir: own.path().display().to_string(),
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("must name one directory in `engine.checkpoint-dir`"),
            "{text}"
        );
    }

    /// Seeing process 0's files is not enough: process 0 must see the others' too.
    #[test]
    fn a_process_whose_files_process_0_does_not_see_is_named() {
        let shared = tempfile::tempdir().unwrap();
        let one_way = tempfile::tempdir().unwrap();
        let marker = Marker::leave(shared.path());
        std::fs::copy(
            shared.path().join(&marker.name),
            one_way.path().join(&marker.name),
        )
        .unwrap();
        let (found, missed) = look(&[(shared.path(), None), (one_way.path(), None)], &marker, 1);
        assert_eq!(missed, vec![1]);
        let err = verdict(found, &missed, 1).unwrap_err();
        assert!(
            matches!(err, ClusterCheckError::NotShared { process: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_process_that_cannot_write_into_the_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker::leave(dir.path());
        // Worker 1's reply cannot take its name.
        std::fs::create_dir(dir.path().join(format!("{}-1", marker.name))).unwrap();
        let (found, missed) = look(&[(dir.path(), None), (dir.path(), None)], &marker, 1);
        let err = verdict(found, &missed, 1).unwrap_err();
        assert!(
            matches!(err, ClusterCheckError::NotWritable { process: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn processes_restoring_different_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker::leave(dir.path());
        let (found, missed) = look(
            &[(dir.path(), Some(7000)), (dir.path(), Some(6000))],
            &marker,
            1,
        );
        let err = verdict(found, &missed, 1).unwrap_err().to_string();
        assert!(
            err.contains("(process 0: epoch 7000; process 1: epoch 6000)"),
            "{err}"
        );
        let (mut found, missed) = look(
            &[(dir.path(), Some(7000)), (dir.path(), Some(7000))],
            &marker,
            1,
        );
        found[1].floor = 9000;
        let err = verdict(found, &missed, 1).unwrap_err().to_string();
        let want = "process 0: epoch 7000, checkpoints after epoch 0; process 1: epoch 7000, checkpoints after epoch 9000";
        assert!(err.contains(want), "{err}");
    }

    #[test]
    fn a_process_whose_own_directory_is_a_file_is_told_it_cannot_write_there() {
        let shared = tempfile::tempdir().unwrap();
        let file = shared.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let own = tempfile::tempdir().unwrap();
        let marker = Marker::leave(shared.path());
        let (found, missed) = look(&[(shared.path(), None), (&file, None)], &marker, 1);
        let err = verdict(found, &missed, 1).unwrap_err().to_string();
        assert!(
            err.contains("process 1 cannot write into its checkpoint directory"),
            "{err}"
        );
        // One of its own that it can write: not shared, and no reply left in it.
        let (found, missed) = look(&[(shared.path(), None), (own.path(), None)], &marker, 1);
        let err = verdict(found, &missed, 1).unwrap_err();
        assert!(
            matches!(err, ClusterCheckError::NotShared { process: 1, .. }),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(own.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_checkpoint_directory_that_is_a_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"").unwrap();
        let marker = Marker::leave(&file);
        let (found, missed) = look(&[(&file, None), (&file, None)], &marker, 1);
        let err = verdict(found, &missed, 1).unwrap_err().to_string();
        assert!(
            err.contains("process 0 cannot write into its checkpoint directory"),
            "{err}"
        );
        assert!(err.contains("it is a file, not a directory"), "{err}");
    }
}
