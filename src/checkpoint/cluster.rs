//! The processes of a cluster must share one checkpoint directory (each writes its
//! workers' parts there, and process 0 reads them all to write the manifest) and
//! restore the same checkpoint from it. Directories that are not shared let the run go
//! on with no checkpoint ever completing and no offset committed; processes that
//! restore different checkpoints lose or repeat events. Both are checked before the
//! graph is built: process 0 leaves a marker file in its directory, every worker looks
//! for it in its own and says which checkpoint its process restores, and every worker
//! judges all the answers alike (`verdict`), so the whole cluster starts or fails
//! together, saying how to fix it.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::write_atomic;
use crate::model::Time;

/// The file process 0 leaves in the checkpoint directory for the others to find.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The file's name in the directory; it holds `token`.
    pub name: String,
    pub token: String,
    /// Why it could not be written, if it could not.
    pub write_error: Option<String>,
}

impl Marker {
    /// Writes a new marker into `dir` (created if missing).
    pub fn leave(dir: &Path) -> Marker {
        let token = format!(
            "{:016x}",
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        );
        let name = format!(".cluster-check-{token}");
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| write_atomic(&dir.join(&name), |w| w.write_all(token.as_bytes())));
        Marker {
            name,
            token,
            write_error: written.err().map(|e| e.to_string()),
        }
    }

    /// Whether `dir` holds this marker.
    pub fn is_in(&self, dir: &Path) -> bool {
        std::fs::read(dir.join(&self.name)).is_ok_and(|b| b == self.token.as_bytes())
    }

    /// Removes it, once every worker has looked.
    pub fn remove(&self, dir: &Path) {
        if self.write_error.is_none()
            && let Err(e) = std::fs::remove_file(dir.join(&self.name))
        {
            tracing::warn!("cannot remove {}: {e}", dir.join(&self.name).display());
        }
    }
}

/// What one worker found, for every worker to judge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    pub worker: usize,
    /// The checkpoint directory as its process names it.
    pub dir: String,
    /// Process 0's marker is in it.
    pub sees_marker: bool,
    /// Why process 0 could not write the marker, if it could not.
    pub marker_error: Option<String>,
    /// The epoch of the checkpoint its process restores.
    pub restores: Option<Time>,
    /// The epoch its process's checkpoints start after.
    pub floor: Time,
}

impl Sighting {
    /// What worker `worker`, whose process has `dir`, finds of `marker`.
    pub fn of(
        worker: usize,
        marker: &Marker,
        dir: &Path,
        restores: Option<Time>,
        floor: Time,
    ) -> Sighting {
        Sighting {
            worker,
            dir: dir.display().to_string(),
            sees_marker: marker.write_error.is_none() && marker.is_in(dir),
            marker_error: marker.write_error.clone(),
            restores,
            floor,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClusterCheckError {
    #[error("process 0 cannot write into its checkpoint directory {dir}: {reason}")]
    NotWritable { dir: String, reason: String },
    #[error(
        "process {process} does not see the checkpoint directory process 0 writes into (a file process 0 wrote into {dir0} is not in process {process}'s {dir}): every process of a cluster must have `engine.checkpoint-dir` on one filesystem they all share (NFS, or an object store mounted as one, see the README), or no checkpoint ever completes"
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

/// Whether a cluster, from every worker's `sightings`, shares its checkpoint directory
/// and restores one checkpoint. Workers are numbered process by process,
/// `per_process` in each.
pub fn verdict(mut sightings: Vec<Sighting>, per_process: usize) -> Result<(), ClusterCheckError> {
    sightings.sort_by_key(|s| s.worker);
    let process_of = |s: &Sighting| s.worker / per_process.max(1);
    let Some(first) = sightings.first() else {
        return Ok(());
    };
    if let Some(reason) = &first.marker_error {
        return Err(ClusterCheckError::NotWritable {
            dir: first.dir.clone(),
            reason: reason.clone(),
        });
    }
    if let Some(blind) = sightings.iter().find(|s| !s.sees_marker) {
        return Err(ClusterCheckError::NotShared {
            process: process_of(blind),
            dir0: first.dir.clone(),
            dir: blind.dir.clone(),
        });
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

    fn sightings(
        dirs: &[(&Path, Option<Time>)],
        marker: &Marker,
        per_process: usize,
    ) -> Vec<Sighting> {
        dirs.iter()
            .flat_map(|(dir, restores)| std::iter::repeat_n((*dir, *restores), per_process))
            .enumerate()
            .map(|(w, (dir, restores))| Sighting::of(w, marker, dir, restores, 0))
            .collect()
    }

    #[test]
    fn a_shared_directory_and_one_checkpoint_pass() {
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker::leave(dir.path());
        let found = sightings(
            &[(dir.path(), Some(5000)), (dir.path(), Some(5000))],
            &marker,
            2,
        );
        assert_eq!(verdict(found, 2), Ok(()));
        marker.remove(dir.path());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the marker is gone"
        );
    }

    #[test]
    fn a_process_with_a_directory_of_its_own_is_named_with_the_fix() {
        let shared = tempfile::tempdir().unwrap();
        let own = tempfile::tempdir().unwrap();
        let marker = Marker::leave(shared.path());
        let found = sightings(
            &[
                (shared.path(), None),
                (shared.path(), None),
                (own.path(), None),
            ],
            &marker,
            2,
        );
        let err = verdict(found, 2).unwrap_err();
        assert_eq!(
            err,
            ClusterCheckError::NotShared {
                process: 2,
                dir0: shared.path().display().to_string(),
                dir: own.path().display().to_string(),
            }
        );
        assert!(
            err.to_string()
                .contains("`engine.checkpoint-dir` on one filesystem they all share")
        );
    }

    #[test]
    fn processes_restoring_different_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker::leave(dir.path());
        let found = sightings(
            &[(dir.path(), Some(7000)), (dir.path(), Some(6000))],
            &marker,
            1,
        );
        let err = verdict(found, 1).unwrap_err().to_string();
        assert!(
            err.contains("(process 0: epoch 7000; process 1: epoch 6000)"),
            "{err}"
        );
        let mut found = sightings(
            &[(dir.path(), Some(7000)), (dir.path(), Some(7000))],
            &marker,
            1,
        );
        found[1].floor = 9000;
        let err = verdict(found, 1).unwrap_err().to_string();
        assert!(
            err.contains("process 0: epoch 7000, checkpoints after epoch 0; process 1: epoch 7000, checkpoints after epoch 9000"),
            "{err}"
        );
    }

    #[test]
    fn a_marker_that_cannot_be_written_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"").unwrap();
        let marker = Marker::leave(&file);
        assert!(marker.write_error.is_some());
        let found = sightings(&[(&file, None), (&file, None)], &marker, 1);
        let err = verdict(found, 1).unwrap_err();
        assert!(
            matches!(err, ClusterCheckError::NotWritable { .. }),
            "{err}"
        );
    }
}
