//! Consistent checkpoints of user state and source positions (Kafka offsets, or a
//! file's byte offset), and recovery from the newest complete one.
//!
//! Epochs are processing times, multiples of `engine.checkpoint-interval-ms`. The
//! checkpoint of epoch `E` holds, for every worker, the source's position after exactly
//! the events stamped before `E` and the user state after exactly those events. Nothing
//! stops:
//!
//! - each worker's `Coordinator` records its source's position for `E` when the
//!   source's clock first passes `E` (every event it emitted before is stamped `< E`,
//!   none after): the offsets part. Sources only read and report their `Position`;
//! - the user-state operator, once its input frontier reaches `E`, copies its state (the
//!   parts are `Arc`s: a shallow copy) and hands it to a writer thread; events stamped
//!   `>= E` that arrived early wait in a stash until then, so the copy holds exactly the
//!   events `< E`. A user whose profile look-up is still running is saved as its events
//!   that wait for it (a restore looks it up again and applies them); their held times
//!   move to `E`, so the checkpoint does not wait for the look-up (but the final one
//!   does, see `Ending`). Until its part is on disk the operator holds a capability below
//!   `E`, so nothing downstream can pass `E` before the part exists;
//! - once the probe after the actions passes `E` (every action for events `< E` done but
//!   those saved with their users, and by the capability above every part written),
//!   worker 0's coordinator checks every part is there and writes the manifest, last,
//!   then prunes. Only a checkpoint with a manifest is ever restored.
//!
//! Layout, write-once files that a shared filesystem (or an object store behind one)
//! holds as well as a local disk:
//!
//! ```text
//! <checkpoint-dir>/chk-<epoch, 16 digits>/offsets-<worker>.json
//! <checkpoint-dir>/chk-<epoch>/state-<worker>.bin
//! <checkpoint-dir>/chk-<epoch>/chain-<worker>.json   (beside a delta part)
//! <checkpoint-dir>/chk-<epoch>/MANIFEST.json
//! ```
//!
//! A worker's part is whole every `full_every` parts; in between it is a delta of the
//! users changed, being looked up, or removed since its previous part, which names the
//! parts it builds on (`chain`: read newest first, each user's newest record counts).
//!
//! A file source's position (`file`: its absolute path and byte offset) is a field of
//! worker 0's offsets part and of the manifest that Kafka jobs' files leave out, so
//! manifests written before it existed still restore.

pub mod chain;
pub mod cluster;
pub mod coordinator;
mod direct;
pub mod files;
mod lz4_frame;
pub mod manifest;

use std::path::{Path, PathBuf};

use crate::model::Time;

pub use chain::ChainReader;
pub use coordinator::{Coordinator, Position};
pub use files::{PartInfo, PartReader, PartRecords, PartWriter, read_part, write_states};
pub use manifest::{FilePosition, Manifest, Restore};

/// Where and how often checkpoints are taken.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub interval_ms: u64,
    pub retained: usize,
    /// The newest epoch of the checkpoint directory when this run started (0 if none):
    /// the checkpoint it restored, or a newer one an earlier run left incomplete. The
    /// run's clock starts there, so every checkpoint it takes is of a later epoch: a
    /// final checkpoint's epoch is ahead of the wall clock, and must not be written
    /// again, and a part left in an incomplete directory must not be taken for this
    /// run's.
    pub floor_epoch: Time,
    /// A whole state part every this many parts of a worker; the others are deltas of
    /// the users changed since the previous part (1: every part whole).
    pub full_every: usize,
    /// Whole parts are LZ4-compressed (else written as they are).
    pub compress: bool,
    /// Delta parts are LZ4-compressed.
    pub compress_deltas: bool,
}

impl CheckpointConfig {
    /// The latest epoch at or before `t`.
    pub fn epoch_at(&self, t: Time) -> Time {
        t / self.interval_ms * self.interval_ms
    }

    /// The first epoch strictly after `t`.
    pub fn epoch_after(&self, t: Time) -> Time {
        self.epoch_at(t).saturating_add(self.interval_ms)
    }

    pub fn epoch_dir(&self, epoch: Time) -> PathBuf {
        epoch_dir(&self.dir, epoch)
    }

    pub fn offsets_path(&self, epoch: Time, worker: usize) -> PathBuf {
        self.epoch_dir(epoch).join(format!("offsets-{worker}.json"))
    }

    pub fn state_path(&self, epoch: Time, worker: usize) -> PathBuf {
        self.epoch_dir(epoch).join(format!("state-{worker}.bin"))
    }

    /// Beside a delta part: its users and the parts it builds on (`ChainPart`).
    pub fn chain_path(&self, epoch: Time, worker: usize) -> PathBuf {
        self.epoch_dir(epoch).join(format!("chain-{worker}.json"))
    }

    /// `state_path` as a delta's base names it: relative to the checkpoint directory.
    pub fn part_name(epoch: Time, worker: usize) -> String {
        format!("chk-{epoch:016}/state-{worker}.bin")
    }
}

pub fn epoch_dir(dir: &Path, epoch: Time) -> PathBuf {
    dir.join(format!("chk-{epoch:016}"))
}

/// The epoch a `chk-<epoch>` directory name stands for.
pub fn parse_epoch_dir(name: &str) -> Option<Time> {
    name.strip_prefix("chk-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_multiples_of_the_interval() {
        let c = CheckpointConfig {
            dir: "x".into(),
            interval_ms: 1000,
            retained: 3,
            floor_epoch: 0,
            full_every: 1,
            compress: true,
            compress_deltas: true,
        };
        assert_eq!(c.epoch_at(1999), 1000);
        assert_eq!(c.epoch_at(2000), 2000);
        assert_eq!(c.epoch_after(1999), 2000);
        assert_eq!(c.epoch_after(2000), 3000);
        let dir = c.epoch_dir(2000);
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_epoch_dir(name), Some(2000));
        assert!(name < c.epoch_dir(10_000).file_name().unwrap().to_str().unwrap());
    }
}
