//! One worker's share of running the checkpoints (see the protocol in `checkpoint`):
//! it follows the source's clock to decide the epochs, records the source's position
//! for each (the offsets part), and on worker 0 completes each epoch's manifest once
//! the probe has passed it, prunes old checkpoints, reports the metrics, and says why
//! the final checkpoint did not complete if it did not. Sources only read and report
//! where they are (`Position`).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use timely::dataflow::ProbeHandle;

use super::CheckpointConfig;
use super::manifest::{self, FilePosition, Incomplete, OffsetsPart};
use crate::clock::now_ms;
use crate::model::Time;

/// Epochs crossed at once beyond which the older ones get no offsets (a stall that
/// long skips checkpoints anyway).
const MAX_EPOCHS_CROSSED: usize = 3;

/// How far past the restored checkpoint's epoch a run stopped within it ends (when the
/// interval is longer): see `Coordinator::final_epoch`.
const FINAL_STEP_MS: Time = 1000;

/// Where a source is: what its next run goes on from.
#[derive(Clone, Debug, PartialEq)]
pub enum Position {
    /// The next offset to read per partition of `topic`, read for `group`.
    Kafka {
        topic: String,
        group: String,
        offsets: BTreeMap<i32, i64>,
    },
    /// Where in a file to go on.
    File(FilePosition),
    /// This worker reads nothing (a file is read by worker 0 alone).
    Nothing,
}

impl From<Position> for OffsetsPart {
    fn from(p: Position) -> OffsetsPart {
        match p {
            Position::Kafka {
                topic,
                group,
                offsets,
            } => OffsetsPart {
                topic,
                group,
                offsets,
                file: None,
            },
            Position::File(f) => OffsetsPart {
                file: Some(f),
                ..OffsetsPart::default()
            },
            Position::Nothing => OffsetsPart::default(),
        }
    }
}

/// One worker's checkpoint duties.
pub struct Coordinator {
    cfg: CheckpointConfig,
    worker: usize,
    peers: usize,
    /// Epochs passed, whose manifest worker 0 writes once the probe passes them.
    to_complete: VecDeque<Time>,
    /// Worker 0: the last epoch it tried to complete, and why it could not (if so).
    last_outcome: Option<(Time, Option<String>)>,
    /// The epoch the run ends at, once it is ending.
    final_epoch: Option<Time>,
}

impl Coordinator {
    pub fn new(cfg: CheckpointConfig, worker: usize, peers: usize) -> Coordinator {
        Coordinator {
            cfg,
            worker,
            peers,
            to_complete: VecDeque::new(),
            last_outcome: None,
            final_epoch: None,
        }
    }

    /// The time to stamp what is read now: the wall clock, but never before the epoch
    /// of the restored checkpoint.
    pub fn clock(&self) -> Time {
        now_ms().max(self.cfg.floor_epoch)
    }

    /// The epoch a source stops at when stopped at `stopped_at`: its clock goes to it
    /// and no further, so every worker's state reaches it and the final checkpoint is
    /// taken there. Every worker of every process computes the same one from the same
    /// stop time (a stop is broadcast; a bounded run's end is agreed).
    ///
    /// Usually the next epoch of the interval's grid, up to an interval ahead of the
    /// clock: the next run's clock starts there. A run stopped before its clock left the
    /// restored checkpoint's epoch (a restart within an interval of the last stop: a
    /// supervisor's loop, bounded runs one after another) ends `FINAL_STEP_MS` after
    /// it, not at the next epoch of the grid: each such run moved the clock a whole
    /// interval ahead of the wall clock, which added up (ten quick restarts, ten
    /// minutes: users expired by a TTL counted in minutes that had not passed, and no
    /// checkpoint until the wall clock caught up). The step is the same on every worker
    /// (the restored epoch is), whatever their stop times.
    pub fn final_epoch(&mut self, stopped_at: Time) -> Time {
        let floor = self.cfg.floor_epoch;
        let step = self.cfg.interval_ms.min(FINAL_STEP_MS);
        let epoch = if floor > 0 && stopped_at < floor.saturating_add(step) {
            floor + step
        } else {
            self.cfg.epoch_after(stopped_at.max(floor))
        };
        self.final_epoch = Some(epoch);
        epoch
    }

    /// The epochs a clock moving from `from` to `to` crosses, oldest first.
    fn epochs_crossed(&self, from: Time, to: Time) -> Vec<Time> {
        // The jump to a final epoch off the grid crosses only it: the state operator
        // snapshots the final epoch, not the grid's epochs it jumped over.
        if self.final_epoch == Some(to) && self.cfg.epoch_at(to) != to {
            return vec![to];
        }
        let mut epochs: Vec<Time> = Vec::new();
        let mut e = self.cfg.epoch_at(to);
        // From 0 (the dataflow's start) only the current epoch is crossed for real.
        let limit = if from == 0 { 1 } else { MAX_EPOCHS_CROSSED };
        // Never the restored checkpoint's epoch (or one before it): a run restarted
        // within an interval of it would write its position into that checkpoint and
        // complete its manifest again, over parts of another worker count.
        let floor = from.max(self.cfg.floor_epoch);
        while e > floor && epochs.len() < limit {
            epochs.push(e);
            e = e.saturating_sub(self.cfg.interval_ms);
        }
        epochs.reverse();
        epochs
    }

    /// The source's clock moves from `from` to `to`, where the source is at
    /// `position`: records that position for every epoch passed.
    pub fn crossed(&mut self, from: Time, to: Time, position: impl FnOnce() -> Position) {
        let epochs = self.epochs_crossed(from, to);
        if epochs.is_empty() {
            return;
        }
        let part = OffsetsPart::from(position());
        for epoch in epochs {
            if let Err(e) = manifest::write_offsets(&self.cfg, epoch, self.worker, &part) {
                tracing::error!(
                    epoch,
                    "checkpoint offsets not written, the checkpoint will not complete: {e}"
                );
            }
            if self.worker == 0 {
                self.to_complete.push_back(epoch);
            }
        }
    }

    /// Worker 0: writes the manifest of every epoch the probe has passed.
    pub fn complete(&mut self, probe: &ProbeHandle<Time>) {
        while let Some(&epoch) = self.to_complete.front() {
            if probe.less_than(&epoch) {
                break;
            }
            self.to_complete.pop_front();
            self.complete_epoch(epoch);
        }
    }

    fn complete_epoch(&mut self, epoch: Time) {
        let outcome = manifest::complete(&self.cfg, epoch, self.peers);
        self.last_outcome = Some((epoch, outcome.as_ref().err().map(|e| e.to_string())));
        match outcome {
            Ok(m) => {
                let ms = now_ms().saturating_sub(epoch);
                crate::metrics::global().record_checkpoint(
                    epoch,
                    Duration::from_millis(ms),
                    m.users(),
                    m.bytes(),
                );
                tracing::info!(
                    epoch,
                    // From the epoch to its manifest: parts written, actions done.
                    ms,
                    users = m.users(),
                    bytes = m.bytes(),
                    partitions = m.offsets.len(),
                    file_offset = m.file.as_ref().map(|f| f.offset),
                    "checkpoint complete"
                );
                manifest::prune(&self.cfg);
            }
            Err(Incomplete::Missing(path)) => {
                tracing::debug!(epoch, "checkpoint skipped: {} is missing", path.display())
            }
            Err(Incomplete::Failed(e)) => tracing::warn!(epoch, "checkpoint failed: {e}"),
        }
    }

    /// True once every epoch up to `epoch` was completed or given up.
    pub fn completed_through(&self, epoch: Time) -> bool {
        self.to_complete.front().is_none_or(|&e| e > epoch)
    }

    /// Worker 0, once the run is over: why its final checkpoint is not complete, if it
    /// is not. The next run would restore an older one and repeat what came after it.
    pub fn final_error(&self) -> Option<String> {
        if self.worker != 0 {
            return None;
        }
        match &self.last_outcome {
            Some((epoch, Some(reason))) => Some(format!(
                "the final checkpoint (epoch {epoch}, in {}) did not complete: {reason} (see the errors logged before); the next run restores an older checkpoint and repeats what came after it",
                self.cfg.dir.display()
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(dir: &std::path::Path, worker: usize) -> Coordinator {
        let cfg = CheckpointConfig {
            dir: dir.to_path_buf(),
            interval_ms: 1000,
            retained: 3,
            floor_epoch: 0,
            full_every: 1,
            compress: true,
            compress_deltas: true,
        };
        Coordinator::new(cfg, worker, 1)
    }

    #[test]
    fn a_clock_crossing_epochs_records_the_position_of_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = coordinator(dir.path(), 0);
        assert_eq!(c.epochs_crossed(0, 5500), vec![5000]);
        assert_eq!(c.epochs_crossed(1500, 9000), vec![7000, 8000, 9000]);
        assert!(c.epochs_crossed(5000, 5999).is_empty());
        let file = FilePosition {
            path: "/in.jsonl".into(),
            offset: 12,
        };
        c.crossed(1500, 2500, || Position::File(file.clone()));
        let text = std::fs::read(c.cfg.offsets_path(2000, 0)).unwrap();
        let part: OffsetsPart = serde_json::from_slice(&text).unwrap();
        assert_eq!(part.file, Some(file));
        assert!(!c.completed_through(2000));
        assert_eq!(c.final_epoch(2500), 3000);
    }

    /// A run stopped before its clock left the restored epoch ends a step after it, not
    /// at the grid's next epoch (runs restarted in a loop moved the clock an interval
    /// ahead each); later stops, and runs not restored, end on the grid. The jump to an
    /// epoch off the grid records the position for it alone.
    #[test]
    fn a_run_stopped_within_its_restored_epoch_ends_a_step_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = coordinator(dir.path(), 0);
        c.cfg.interval_ms = 60_000;
        assert_eq!(c.final_epoch(61_000), 120_000, "not restored: the grid");
        c.cfg.floor_epoch = 120_000;
        // Stopped before the wall clock reached the restored epoch, or just after.
        for stopped_at in [5_000, 119_999, 120_000, 120_999] {
            assert_eq!(
                c.final_epoch(stopped_at),
                121_000,
                "stopped at {stopped_at}"
            );
        }
        assert_eq!(c.final_epoch(121_000), 180_000);
        // Each quick restart moves the clock a step, not an interval.
        c.cfg.floor_epoch = 121_000;
        assert_eq!(c.final_epoch(30_000), 122_000);
        assert_eq!(c.epochs_crossed(121_000, 122_000), vec![122_000]);
        // Over a grid epoch on the way: only the final one (the state operator
        // snapshots it alone).
        c.cfg.floor_epoch = 179_500;
        assert_eq!(c.final_epoch(179_600), 180_500);
        assert_eq!(c.epochs_crossed(179_600, 180_500), vec![180_500]);
        c.crossed(179_600, 180_500, || Position::Nothing);
        assert!(c.cfg.offsets_path(180_500, 0).exists());
        assert!(!c.cfg.epoch_dir(180_000).exists());
        // An interval shorter than the step: the step is the interval.
        c.cfg.interval_ms = 200;
        c.cfg.floor_epoch = 5_000;
        assert_eq!(c.final_epoch(5_100), 5_200);
    }

    #[test]
    fn a_restored_checkpoint_is_never_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = coordinator(dir.path(), 0);
        c.cfg.floor_epoch = 5000;
        // Restarted within the restored epoch's interval, or before the wall clock
        // reached it (the clock then starts at it): nothing until the next epoch.
        assert!(c.epochs_crossed(0, 5000).is_empty());
        assert!(c.epochs_crossed(0, 5999).is_empty());
        c.crossed(0, 5500, || Position::Nothing);
        assert!(!c.cfg.epoch_dir(5000).exists());
        assert_eq!(c.epochs_crossed(5500, 6100), vec![6000]);
        assert_eq!(c.epochs_crossed(0, 6100), vec![6000]);
    }

    #[test]
    fn only_worker_zero_completes_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = coordinator(dir.path(), 1);
        c.crossed(1500, 2500, || Position::Nothing);
        assert!(c.completed_through(2000));
        assert_eq!(c.final_error(), None);
        let mut zero = coordinator(dir.path(), 0);
        zero.complete_epoch(2000); // no parts of worker 0: incomplete
        assert!(zero.final_error().unwrap().contains("epoch 2000"));
    }
}
