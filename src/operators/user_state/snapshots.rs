//! The operator's side of checkpoints (see `crate::checkpoint`): which epoch to take
//! when, the stash of events that must wait for a snapshot, writing this worker's part
//! (whole, or a delta of what changed since its previous one), and holding the frontier
//! downstream until the part is on disk.

use rustc_hash::FxHashSet;
use timely::dataflow::operators::Capability;
use timely::scheduling::SyncActivator;

use super::lookups::Lookups;
use super::table::{Changes, Delta, UserTable};
use crate::checkpoint::manifest::{BasePart, ChainPart};
use crate::checkpoint::{CheckpointConfig, PartRecords, PartWriter};
use crate::clock::now_ms;
use crate::counters::Counters;
use crate::model::{PendingUser, Text, Time, UserEvent};
use crate::operators::held::HeldTimes;
use crate::shutdown::Ending;
use crate::store::Records;

/// Events that arrived early: while a checkpoint is restored, or stamped at or after
/// the next epoch before the frontier reached it. Their times are held.
#[derive(Default)]
pub(super) struct Stash(Vec<(Time, UserEvent)>);

impl Stash {
    pub(super) fn push(&mut self, time: Time, ev: UserEvent) {
        self.0.push((time, ev));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The events stamped before `limit`, in time order (a user's events keep their
    /// order within a time).
    pub(super) fn take_before(&mut self, limit: Time) -> Vec<(Time, UserEvent)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        // Stable: a user's events keep their order within a time.
        self.0.sort_by_key(|(t, _)| *t);
        let split = self.0.partition_point(|(t, _)| *t < limit);
        self.0.drain(..split).collect()
    }
}

/// Checkpoints taken by this operator.
pub(super) struct Snapshots {
    cfg: CheckpointConfig,
    worker: usize,
    /// Events stamped at or after this epoch wait in the stash until its snapshot is
    /// taken. None while a snapshot is being written (events then go through: the next
    /// snapshot will be of a later epoch), and before the frontier is first seen.
    next: Option<Time>,
    /// The epoch of the last snapshot; at first, the epoch the run starts in (or the
    /// restored one), which has nothing to snapshot. Set before any frontier is seen:
    /// the first one seen may already be the final epoch, after a long restore.
    last: Time,
    /// The latest time of an event applied.
    max_applied: Time,
    in_progress: Option<InProgress>,
    /// Held at the last epoch whose part is on disk (at first, at the start): nothing
    /// downstream passes an epoch before this worker's part of it exists.
    cap: Option<Capability<Time>>,
    /// Wakes the operator when a part is written (one per writer).
    activator: Box<dyn Fn() -> SyncActivator>,
    ending: Ending,
    /// The final snapshot waits for the look-ups running (see `Ending`).
    awaiting_lookups: bool,
    chain: Chain,
    /// The records' vector of the last part written, emptied, for the next snapshot.
    spare: Records,
}

/// This worker's parts since its last whole one, which the next delta builds on.
#[derive(Default)]
struct Chain {
    /// Oldest (the whole part) first.
    parts: Vec<BasePart>,
    whole_bytes: u64,
    /// The whole part's body before compression.
    whole_raw: u64,
    /// The records of the whole part.
    whole_users: u64,
    delta_bytes: u64,
    /// The strings of the process's dictionary its parts hold (a delta holds only
    /// those its previous part did not).
    words: u64,
}

impl Chain {
    /// Whether the next part may be a delta: there is a whole part to build on, fewer
    /// than `full_every` parts since, and the chain (the whole part and its deltas) is
    /// still smaller than three times what the state of `users` would take whole, so
    /// that a restore reads at most about three times the state. (Twice made whole parts
    /// as often as every fourth part where histories grow: a state measured by its last
    /// whole part's bytes per user is smaller than it is, and the deltas' records are
    /// mostly what the histories gained, which a whole part holds too.)
    fn next_is_delta(&self, full_every: usize, users: usize) -> bool {
        !self.parts.is_empty()
            && self.parts.len() < full_every
            && self.whole_bytes + self.delta_bytes < 3 * self.state_bytes(users)
    }

    /// The bytes of a whole part of `users` users, estimated from the last whole part's
    /// bytes per user; never less than that part. A state that grows (new users
    /// arriving) would otherwise be written whole again and again, each time its deltas
    /// outgrew a whole part of when it was smaller. A state that shrank keeps the last
    /// part's size: a part's bytes per user hold its share of the dictionary, which in
    /// a small state is most of them.
    fn state_bytes(&self, users: usize) -> u64 {
        let users = users as u64;
        if self.whole_users == 0 || users <= self.whole_users {
            return self.whole_bytes;
        }
        let per_user = self.whole_bytes as f64 / self.whole_users as f64;
        (per_user * users as f64) as u64
    }

    /// The bytes `part` counts for against the state whole: its own, or, for a delta
    /// written as it is after a compressed whole part, its body (`raw`) at that part's
    /// compression ratio (plain deltas would otherwise outgrow the whole part about
    /// twice as soon).
    fn counted(&self, part: &BasePart, raw: u64, plain_after_lz4: bool) -> u64 {
        if !plain_after_lz4 || self.whole_raw == 0 {
            return part.bytes;
        }
        (raw as f64 * self.whole_bytes as f64 / self.whole_raw as f64) as u64
    }

    /// `part` is on disk: `raw`, its body's bytes before compression; whether it is a
    /// delta written as it is after a compressed whole part (see `counted`).
    fn written(
        &mut self,
        part: BasePart,
        whole: bool,
        words: u64,
        raw: u64,
        plain_after_lz4: bool,
    ) {
        let counted = self.counted(&part, raw, plain_after_lz4);
        self.words = words;
        if whole {
            self.parts.clear();
            self.whole_bytes = part.bytes;
            self.whole_raw = raw;
            self.whole_users = part.records.unwrap_or(0);
            self.delta_bytes = 0;
        } else {
            self.delta_bytes += counted;
        }
        self.parts.push(part);
    }
}

/// A snapshot being written.
struct InProgress {
    epoch: Time,
    writer: PartWriter,
    /// A delta's changes (given back if it is not written) and the worker's users in
    /// all; `None`: a whole part (whose records are its users).
    taken: Option<(Changes, u64)>,
    /// How long the worker took to copy the users for it (its pause for the part).
    copy: std::time::Duration,
}

impl Snapshots {
    pub(super) fn new(
        (cfg, ending): (CheckpointConfig, Ending),
        worker: usize,
        cap: Capability<Time>,
        activator: Box<dyn Fn() -> SyncActivator>,
    ) -> Self {
        Snapshots {
            last: cfg.epoch_at(now_ms()).max(cfg.floor_epoch),
            cfg,
            worker,
            next: None,
            max_applied: 0,
            in_progress: None,
            cap: Some(cap),
            activator,
            ending,
            awaiting_lookups: false,
            chain: Chain::default(),
            spare: Vec::new(),
        }
    }

    /// Whether parts may be deltas (then the table keeps its changes).
    pub(super) fn deltas(&self) -> bool {
        self.cfg.full_every > 1
    }

    /// Whether the run is ending: its clock has jumped to the final epoch.
    pub(super) fn ending(&self) -> bool {
        self.ending.get()
    }

    /// The epoch of the last snapshot (at first, the one the run starts in).
    pub(super) fn last(&self) -> Time {
        self.last
    }

    /// Whether an event stamped `time` may be applied now (else it waits in the stash);
    /// one that may is recorded for the next snapshot's choice.
    pub(super) fn admits(&mut self, time: Time) -> bool {
        if self.next.is_some_and(|next| time >= next) {
            return false;
        }
        self.applied(time);
        true
    }

    /// An event stamped `time` is about to be applied.
    pub(super) fn applied(&mut self, time: Time) {
        self.max_applied = self.max_applied.max(time);
    }

    /// The epoch whose snapshot the frontier `now` calls for, unless one is being
    /// written: the stash's events before it go first.
    pub(super) fn due(&self, now: Time) -> Option<Time> {
        let mut epoch = self.cfg.epoch_at(now);
        // The final epoch may be off the interval's grid (`Coordinator::final_epoch`).
        if let Some(f) = self.ending.final_epoch()
            && now >= f
        {
            epoch = epoch.max(f);
        }
        (self.in_progress.is_none() && epoch > self.last).then_some(epoch)
    }

    /// Whether to take `epoch` now. The final snapshot waits for the look-ups running
    /// (later events wait meanwhile); a snapshot is skipped when events of a later time
    /// went through while the previous one was written (a later epoch will do).
    pub(super) fn ready(&mut self, epoch: Time, lookups_running: bool) -> bool {
        self.awaiting_lookups = self.ending.get() && lookups_running;
        if self.max_applied >= epoch {
            return false;
        }
        if self.awaiting_lookups {
            self.next = Some(epoch);
            return false;
        }
        self.last = epoch;
        self.next = None;
        true
    }

    /// When not writing, events from the next epoch on wait for its snapshot. The time
    /// before which stashed events may go through.
    pub(super) fn open_next(&mut self, now: Time) -> Time {
        if self.in_progress.is_none() && self.next.is_none() {
            let after = now.max(self.max_applied).max(self.last);
            self.next = Some(self.cfg.epoch_after(after));
        }
        self.next.unwrap_or(Time::MAX)
    }

    /// Starts writing this worker's part of `epoch`: a copy of the table now (shallow,
    /// or a RocksDB checkpoint), and the users being looked up as their events.
    pub(super) fn take(
        &mut self,
        epoch: Time,
        table: &mut UserTable,
        lookups: &mut Lookups,
        held: &mut HeldTimes,
    ) {
        let started = std::time::Instant::now();
        // A delta of every user would be a whole part and more to read back. (Of no
        // users, it is smaller than a whole part, which holds the dictionary.)
        if self.chain.next_is_delta(self.cfg.full_every, table.len())
            && table.changed() < table.len().max(1)
            && let Some(delta) = table.delta(std::mem::take(&mut self.spare))
        {
            match delta {
                Ok(delta) => {
                    let pending = lookups.save_pending(epoch, held);
                    let users = (table.len() + pending.len()) as u64;
                    let (records, taken) = self.delta_part(epoch, delta, users, pending);
                    self.write(epoch, records, Some((taken, users)), started);
                }
                // Without its part this epoch's checkpoint never completes; the next
                // epoch tries again, with these changes.
                Err(e) => {
                    let worker = self.worker;
                    tracing::error!(epoch, worker, "checkpoint part not started: {e}");
                }
            }
            return;
        }
        let copy = match table.snapshot(std::mem::take(&mut self.spare)) {
            Ok(copy) => copy,
            Err(e) => {
                // Without its part this epoch's checkpoint never completes; the next
                // epoch tries again, with a whole part (the changes were let go).
                let worker = self.worker;
                self.chain = Chain::default();
                tracing::error!(epoch, worker, "checkpoint part not started: {e}");
                return;
            }
        };
        let pending = lookups.save_pending(epoch, held);
        tracing::debug!(
            epoch,
            users = table.len(),
            pending = pending.len(),
            "checkpoint started"
        );
        self.write(epoch, copy.into_part(pending), None, started);
    }

    /// A delta part of `epoch`: `delta`'s users, and `pending` (of `users` in all).
    fn delta_part(
        &self,
        epoch: Time,
        delta: Delta,
        users: u64,
        pending: Vec<(Text, PendingUser)>,
    ) -> (PartRecords, Changes) {
        // A user being looked up is in the part as pending, not removed.
        let looked_up: FxHashSet<&Text> = pending.iter().map(|(u, _)| u).collect();
        let removed = delta
            .removed
            .into_iter()
            .filter(|u| !looked_up.contains(u))
            .collect();
        tracing::debug!(
            epoch,
            changed = delta.taken.changed.len(),
            pending = pending.len(),
            "checkpoint started (delta)"
        );
        let chain = ChainPart {
            users,
            base: self.chain.parts.clone(),
        };
        let records = PartRecords {
            base: delta.states.encoded,
            states: delta.states.records,
            pending,
            removed: Some(removed),
            chain: Some((self.cfg.chain_path(epoch, self.worker), chain)),
            words_before: self.chain.words as usize,
            tails: delta.tails,
        };
        (records, delta.taken)
    }

    fn write(
        &mut self,
        epoch: Time,
        records: PartRecords,
        taken: Option<(Changes, u64)>,
        started: std::time::Instant,
    ) {
        let copy = started.elapsed();
        let path = self.cfg.state_path(epoch, self.worker);
        let activator = (self.activator)();
        let wake = Box::new(move || {
            // The operator is gone once the run has ended: nothing left to wake.
            let _ = activator.activate();
        });
        let compress = match taken {
            Some(_) => self.cfg.compress_deltas,
            None => self.cfg.compress,
        };
        let writer = PartWriter::start(path, records, compress, wake);
        self.in_progress = Some(InProgress {
            epoch,
            writer,
            taken,
            copy,
        });
    }

    /// The final snapshot waited for look-ups, and they are done.
    pub(super) fn can_stop_waiting(&self, lookups: &Lookups) -> bool {
        self.awaiting_lookups && lookups.is_empty()
    }

    /// Once the snapshot's part is on disk, lets the frontier downstream pass its
    /// epoch. With the input ended, lets go entirely. A delta's changes that were not
    /// written go back to `table`.
    pub(super) fn settle(&mut self, ended: bool, stats: &Counters, table: &mut UserTable) {
        if let Some(p) = &mut self.in_progress
            && let Some(mut result) = p.writer.poll()
        {
            let epoch = p.epoch;
            let (taken, users) = p.taken.take().unzip();
            let whole = taken.is_none();
            match &mut result {
                Ok(info) => {
                    let part = BasePart {
                        file: CheckpointConfig::part_name(epoch, self.worker),
                        bytes: info.bytes,
                        hash: info.hash,
                        records: Some(info.users),
                    };
                    // A delta written as it is after an LZ4 whole part (`lz4-whole`)
                    // counts as what it would take compressed as that part was.
                    let plain_after_lz4 = !whole && !self.cfg.compress_deltas && self.cfg.compress;
                    self.chain
                        .written(part, whole, info.words, info.raw, plain_after_lz4);
                    self.spare = std::mem::take(&mut info.spare);
                    if let Some(changes) = taken {
                        table.recycle_changes(changes);
                    }
                }
                Err(_) => match taken {
                    Some(changes) => table.restore_changes(changes),
                    // The changes before it are gone: the next part is whole.
                    None => self.chain = Chain::default(),
                },
            }
            match result {
                Ok(info) => {
                    let all = users.unwrap_or(info.users);
                    // A delta holds what changed: the state's size is the chain's
                    // estimate for the worker's users now.
                    stats.state_bytes.set(match whole {
                        true => info.bytes,
                        false => self.chain.state_bytes(all as usize),
                    });
                    crate::metrics::global().record_part_cpu(info.cpu);
                    // `records`: for a delta, its users changed, being looked up, or
                    // removed; `users`: the worker's users in all.
                    tracing::info!(
                        epoch,
                        worker = self.worker,
                        users = all,
                        records = info.users,
                        bytes = info.bytes,
                        ms = info.duration.as_millis() as u64,
                        cpu_ms = info.cpu.as_millis() as u64,
                        delta = !whole,
                        copy_us = p.copy.as_micros() as u64,
                        "checkpoint part written"
                    )
                }
                Err(e) => tracing::error!(
                    epoch,
                    worker = self.worker,
                    part = %self.cfg.state_path(epoch, self.worker).display(),
                    "checkpoint part not written, the checkpoint will not complete: {e}"
                ),
            }
            if let Some(cap) = &mut self.cap
                && *cap.time() < epoch
            {
                cap.downgrade(&epoch);
            }
            self.in_progress = None;
        }
        if ended && self.in_progress.is_none() {
            self.cap = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(bytes: u64, records: u64) -> BasePart {
        BasePart {
            file: String::new(),
            bytes,
            hash: 0,
            records: Some(records),
        }
    }

    /// Deltas go on until the chain adds up to three times what the state would take
    /// whole now: in a state that grows, that is more than its last whole part took.
    #[test]
    fn deltas_go_on_until_the_chain_outgrows_the_state_as_it_is_now() {
        let mut chain = Chain::default();
        assert!(!chain.next_is_delta(10, 0), "nothing to build on");
        chain.written(part(1_000_000, 1_000), true, 0, 1_000_000, false);
        assert!(chain.next_is_delta(10, 1_000));
        chain.written(part(1_900_000, 300), false, 0, 1_900_000, false);
        assert!(
            chain.next_is_delta(10, 800),
            "2.9 MB in the chain: a state of 800 users is measured as the 1 MB part"
        );
        assert!(
            chain.next_is_delta(10, 2_000),
            "2,000 users take about 2 MB whole: deltas go on"
        );
        chain.written(part(3_200_000, 400), false, 0, 3_200_000, false);
        assert!(!chain.next_is_delta(10, 2_000), "6.1 MB in the chain");
        assert!(chain.next_is_delta(10, 2_100), "2,100 users: 6.3 MB");
        assert!(
            !chain.next_is_delta(10, 500),
            "more than 3 times the 1 MB part"
        );
        assert!(!chain.next_is_delta(3, 1_000_000), "every 3 parts whole");
        chain.written(part(3_000_000, 3_000), true, 0, 3_000_000, false);
        assert_eq!(chain.parts.len(), 1);
        assert!(chain.next_is_delta(3, 3_000));
    }

    /// A whole part of no users holds only its header and dictionary: its size, not a
    /// size per user, is what deltas are measured against.
    #[test]
    fn a_whole_part_of_no_users_is_outgrown_by_its_size() {
        let mut chain = Chain::default();
        chain.written(part(800, 0), true, 0, 800, false);
        assert!(chain.next_is_delta(10, 50_000));
        chain.written(part(1_500, 10), false, 0, 1_500, false);
        assert!(chain.next_is_delta(10, 50_000), "2,300 bytes in the chain");
        chain.written(part(200, 2), false, 0, 200, false);
        assert!(
            !chain.next_is_delta(10, 50_000),
            "2,500: more than 3 times 800"
        );
    }

    /// With `lz4-whole`, a delta written as it is counts as what its body would take
    /// at the whole part's compression ratio; a compressed delta, as its bytes.
    #[test]
    fn plain_deltas_after_a_compressed_whole_part_count_as_compressed() {
        let mut chain = Chain::default();
        // 1 MB compressed from 2.5 MB.
        chain.written(part(1_000_000, 1_000), true, 0, 2_500_000, false);
        // 1.5 MB plain: 600 KB at that ratio.
        chain.written(part(1_500_000, 300), false, 0, 1_500_000, true);
        assert_eq!(chain.delta_bytes, 600_000);
        assert!(chain.next_is_delta(10, 1_000));
        chain.written(part(1_400_000, 300), false, 0, 1_400_000, false);
        assert_eq!(chain.delta_bytes, 2_000_000);
        assert!(
            !chain.next_is_delta(10, 1_000),
            "1 MB whole and 2 MB of deltas"
        );
    }
}
