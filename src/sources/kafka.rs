//! A Kafka topic as a source: one consumer per worker, with partitions assigned
//! explicitly.
//!
//! Why explicit assignment (`assign()`, partition `p` to worker `p % workers`) and not
//! one consumer-group member per worker with librdkafka's rebalancing: every worker of a
//! timely cluster is known when the dataflow is built, so a fixed assignment needs no
//! rebalance protocol (no stop-the-world pauses, no revoked partitions with events in
//! flight), and the offsets that matter become part of the job's own progress: they are
//! committed only once the job's probe frontier has passed every event before them, i.e.
//! once their actions are done. Checkpoints (which store offsets with the state) build on
//! exactly that. The group still gets the commits, so lag monitoring works as usual.
//!
//! Bounded runs (`--bounded`) stop each partition at its end as the broker reports it in
//! fetch responses (librdkafka's partition EOF), not at ListOffsets' high watermark,
//! which some Kafka-compatible brokers under-report.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::checkpoint::manifest::{self, Incomplete, OffsetsPart};
use crate::checkpoint::{CheckpointConfig, Ending};
use crate::clock::now_ms;
use crate::config::{KafkaSettings, StartFrom};
use crate::kafka_client::{JobContext, client_config};
use crate::log_limit::LogLimiter;
use crate::model::Time;
use crate::operators::backpressure::Gate;
use crate::shutdown::StopFlag;
use crate::sources::replay::ReplayFrom;

/// Messages per activation at most, and how long one activation may read.
const BATCH: usize = 4096;
const SLICE: Duration = Duration::from_millis(5);
/// How soon an idle source polls again (and moves its time on).
const IDLE_POLL: Duration = Duration::from_millis(10);
/// How soon a source paused by backpressure looks at the gate again.
const PAUSE: Duration = Duration::from_millis(1);
/// How often done offsets are committed while running.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// A source's share of the checkpoints.
pub struct SourceCheckpoints {
    pub cfg: CheckpointConfig,
    pub worker: usize,
    pub peers: usize,
    /// Epochs passed, whose manifest worker 0 writes once the probe passes them.
    to_complete: VecDeque<Time>,
    /// Worker 0: the last epoch it tried to complete, and why it could not (if so).
    last_outcome: Option<(Time, Option<String>)>,
}

impl SourceCheckpoints {
    pub fn new(cfg: CheckpointConfig, worker: usize, peers: usize) -> Self {
        SourceCheckpoints {
            cfg,
            worker,
            peers,
            to_complete: VecDeque::new(),
            last_outcome: None,
        }
    }
}

/// Epochs crossed at once beyond which the older ones get no offsets (a stall that
/// long skips checkpoints anyway).
const MAX_EPOCHS_CROSSED: usize = 3;

/// One worker's consumer and the offsets it owes the group.
pub struct KafkaReader {
    consumer: BaseConsumer<JobContext>,
    topic: String,
    group: String,
    partitions: Vec<i32>,
    bounded: bool,
    /// Partitions that reached their end (bounded runs).
    at_end: Vec<i32>,
    /// Per batch: its time and the next offset to read per partition after it.
    in_flight: VecDeque<(Time, Vec<(i32, i64)>)>,
    /// Next offsets whose events are all done, not yet committed.
    done: BTreeMap<i32, i64>,
    /// Next offset to read per partition, where known: what a checkpoint records.
    positions: BTreeMap<i32, i64>,
    checkpoints: Option<SourceCheckpoints>,
    last_commit: Instant,
    /// Offsets go to the consumer group (not in a dry run).
    commit: bool,
    errors: LogLimiter,
}

/// Where a reader starts, over its configured `start-from`, and whether it commits.
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    /// The offsets of the checkpoint restored.
    pub restore: Option<&'a BTreeMap<i32, i64>>,
    /// A replay's start, over both.
    pub replay: Option<&'a ReplayFrom>,
    /// Offsets go to the consumer group (not in a dry run).
    pub commit: bool,
}

impl KafkaReader {
    /// Creates the consumer of worker `index` of `peers` and assigns its partitions of
    /// a topic with `partition_count` partitions.
    pub fn open(
        s: &KafkaSettings,
        partition_count: i32,
        index: usize,
        peers: usize,
        bounded: bool,
        plan: Plan<'_>,
        checkpoints: Option<SourceCheckpoints>,
    ) -> Result<KafkaReader, KafkaError> {
        let restore = plan.restore;
        let reset = match s.start_from {
            StartFrom::Earliest => "earliest",
            StartFrom::Committed | StartFrom::Latest => "latest",
        };
        let mut config = client_config(s);
        if !s.properties.contains_key("statistics.interval.ms") {
            // Consumer lag for the metrics, from librdkafka's statistics.
            config.set("statistics.interval.ms", "5000");
        }
        let consumer: BaseConsumer<JobContext> = config
            .set("group.id", &s.consumer_group_id)
            .set("client.id", format!("event-trigger-worker-{index}"))
            .set("enable.auto.commit", "false")
            // Offsets are stored and committed by us, after processing; an automatic
            // store would commit prefetched messages never processed.
            .set("enable.auto.offset.store", "false")
            .set(
                "enable.partition.eof",
                if bounded { "true" } else { "false" },
            )
            .set("auto.offset.reset", reset)
            .create_with_context(JobContext::default())?;
        let partitions: Vec<i32> = (0..partition_count)
            .filter(|p| *p as usize % peers == index)
            .collect();
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(&s.topic, p);
        }
        let start = match s.start_from {
            StartFrom::Earliest => Offset::Beginning,
            StartFrom::Latest => Offset::End,
            StartFrom::Committed => Offset::Stored,
        };
        if s.start_from == StartFrom::Committed && !partitions.is_empty() {
            let committed = consumer
                .committed_offsets(tpl.clone(), Duration::from_millis(s.connect_timeout_ms))?;
            for e in committed.elements() {
                tracing::debug!(partition = e.partition(), committed = ?e.offset(), "group offset");
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::End, // nothing committed yet: the Flink job's `latest`
                };
                tpl.set_partition_offset(&s.topic, e.partition(), offset)?;
            }
        } else {
            tpl.set_all_offsets(start)?;
        }
        // A restored checkpoint says where to go on; partitions it does not know start
        // as configured.
        let mut positions = BTreeMap::new();
        for &p in &partitions {
            if let Some(&o) = restore.and_then(|r| r.get(&p)) {
                tpl.set_partition_offset(&s.topic, p, Offset::Offset(o))?;
                positions.insert(p, o);
            }
        }
        match plan.replay {
            Some(ReplayFrom::Offsets(offsets)) => {
                for &p in &partitions {
                    if let Some(&o) = offsets.get(&p) {
                        tpl.set_partition_offset(&s.topic, p, Offset::Offset(o))?;
                    }
                }
            }
            Some(ReplayFrom::Timestamp(ms)) if !partitions.is_empty() => {
                let mut times = TopicPartitionList::new();
                for &p in &partitions {
                    times.add_partition_offset(&s.topic, p, Offset::Offset(*ms))?;
                }
                let found = consumer
                    .offsets_for_times(times, Duration::from_millis(s.connect_timeout_ms))?;
                for e in found.elements() {
                    // `End` where no message is that recent.
                    tpl.set_partition_offset(&s.topic, e.partition(), e.offset())?;
                }
            }
            _ => {}
        }
        if plan.replay.is_some() {
            let from: Vec<_> = tpl
                .elements()
                .iter()
                .map(|e| format!("{}:{:?}", e.partition(), e.offset()))
                .collect();
            tracing::info!(worker = index, ?from, "replay: reading from");
        }
        consumer.assign(&tpl)?;
        if partitions.is_empty() {
            tracing::warn!(
                worker = index,
                partitions = partition_count,
                workers = peers,
                "more workers than partitions: this worker reads nothing"
            );
        } else {
            tracing::info!(worker = index, ?partitions, topic = %s.topic, "reading");
        }
        Ok(KafkaReader {
            consumer,
            topic: s.topic.clone(),
            group: s.consumer_group_id.clone(),
            partitions,
            bounded,
            at_end: Vec::new(),
            in_flight: VecDeque::new(),
            // A restored checkpoint's offsets are done (its actions completed before it
            // did): the group learns them even for partitions with nothing new to read.
            done: positions.clone(),
            positions,
            checkpoints,
            last_commit: Instant::now(),
            commit: plan.commit,
            errors: LogLimiter::per_10s("Kafka read and commit errors"),
        })
    }

    /// True once a bounded read reached the end of every assigned partition.
    pub fn finished(&self) -> bool {
        self.bounded && self.partitions.iter().all(|p| self.at_end.contains(p))
    }

    /// Reads up to a batch, handing each payload to `give`; returns how many messages
    /// arrived. Records the batch's offsets under `time`.
    fn read(&mut self, time: Time, mut give: impl FnMut(Vec<u8>)) -> usize {
        self.errors.tick();
        let started = Instant::now();
        let mut next: Vec<(i32, i64)> = Vec::new();
        let mut n = 0;
        while n < BATCH && started.elapsed() < SLICE && !self.finished() {
            let Some(result) = self.consumer.poll(Duration::ZERO) else {
                break;
            };
            match result {
                Ok(msg) => {
                    n += 1;
                    give(msg.payload().map(<[u8]>::to_vec).unwrap_or_default());
                    let (p, o) = (msg.partition(), msg.offset() + 1);
                    match next.iter_mut().find(|(q, _)| *q == p) {
                        Some(entry) => entry.1 = entry.1.max(o),
                        None => next.push((p, o)),
                    }
                    self.positions.insert(p, o);
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    if !self.at_end.contains(&p) {
                        tracing::debug!(partition = p, "reached the end of the partition");
                        self.at_end.push(p);
                    }
                }
                Err(e) => {
                    // librdkafka reconnects by itself; we keep polling where we were.
                    if self.errors.allow() {
                        tracing::warn!("kafka: {e}");
                    }
                    break;
                }
            }
        }
        if !next.is_empty() {
            self.in_flight.push_back((time, next));
        }
        n
    }

    /// Moves the offsets of batches the probe has passed (all their actions done) to
    /// the commit list.
    pub fn settle(&mut self, probe: &ProbeHandle<Time>) {
        while let Some((time, _)) = self.in_flight.front() {
            if probe.less_equal(time) {
                break;
            }
            let Some((_, offsets)) = self.in_flight.pop_front() else {
                break;
            };
            for (p, o) in offsets {
                let e = self.done.entry(p).or_insert(o);
                *e = (*e).max(o);
            }
        }
    }

    /// Commits what `settle` found done (asynchronously while running, synchronously
    /// at the end).
    pub fn commit(&mut self, mode: CommitMode) {
        if !self.commit {
            self.done.clear();
        }
        if self.done.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &self.done {
            if let Err(e) = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o)) {
                tracing::warn!("kafka: cannot record offset {o} of partition {p}: {e}");
            }
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => self.done.clear(),
            Err(e) => {
                if self.errors.allow() {
                    tracing::warn!("kafka: commit failed, will retry: {e}");
                }
            }
        }
        self.last_commit = Instant::now();
    }
}

impl KafkaReader {
    /// The epoch this source stops at when stopped at `stopped_at`, with checkpoints on:
    /// its clock goes to it and no further, so every worker's state reaches it and the
    /// final checkpoint is taken there.
    fn final_epoch(&self, stopped_at: Time) -> Option<Time> {
        let c = self.checkpoints.as_ref()?;
        Some(c.cfg.epoch_after(stopped_at.max(c.cfg.restored_epoch)))
    }

    /// The time to stamp what is read now: the wall clock, but never before the epoch
    /// of the restored checkpoint.
    fn clock(&self) -> Time {
        now_ms().max(
            self.checkpoints
                .as_ref()
                .map_or(0, |c| c.cfg.restored_epoch),
        )
    }

    /// The clock moves from `from` to `to`: records the offsets of every epoch passed.
    fn crossed(&mut self, from: Time, to: Time) {
        let Some(c) = &mut self.checkpoints else {
            return;
        };
        let mut epochs: Vec<Time> = Vec::new();
        let mut e = c.cfg.epoch_at(to);
        // From 0 (the dataflow's start) only the current epoch is crossed for real.
        let limit = if from == 0 { 1 } else { MAX_EPOCHS_CROSSED };
        while e > from && epochs.len() < limit {
            epochs.push(e);
            e = e.saturating_sub(c.cfg.interval_ms);
        }
        let part = OffsetsPart {
            topic: self.topic.clone(),
            group: self.group.clone(),
            offsets: self.positions.clone(),
        };
        for &epoch in epochs.iter().rev() {
            if let Err(e) = manifest::write_offsets(&c.cfg, epoch, c.worker, &part) {
                tracing::error!(
                    epoch,
                    "checkpoint offsets not written, the checkpoint will not complete: {e}"
                );
            }
            if c.worker == 0 {
                c.to_complete.push_back(epoch);
            }
        }
    }

    /// Worker 0: writes the manifest of every epoch the probe has passed.
    fn complete_checkpoints(&mut self, probe: &ProbeHandle<Time>) {
        let Some(c) = &mut self.checkpoints else {
            return;
        };
        while let Some(&epoch) = c.to_complete.front() {
            if probe.less_than(&epoch) {
                break;
            }
            c.to_complete.pop_front();
            let outcome = manifest::complete(&c.cfg, epoch, c.peers);
            c.last_outcome = Some((epoch, outcome.as_ref().err().map(|e| e.to_string())));
            match outcome {
                Ok(m) => {
                    crate::metrics::global().record_checkpoint(
                        epoch,
                        Duration::from_millis(now_ms().saturating_sub(epoch)),
                        m.users(),
                        m.bytes(),
                    );
                    tracing::info!(
                        epoch,
                        // From the epoch to its manifest: parts written, actions done.
                        ms = now_ms().saturating_sub(epoch),
                        users = m.users(),
                        bytes = m.bytes(),
                        partitions = m.offsets.len(),
                        "checkpoint complete"
                    );
                    manifest::prune(&c.cfg);
                }
                Err(Incomplete::Missing(path)) => {
                    tracing::debug!(epoch, "checkpoint skipped: {} is missing", path.display())
                }
                Err(Incomplete::Failed(e)) => tracing::warn!(epoch, "checkpoint failed: {e}"),
            }
        }
    }

    /// Worker 0, once the run is over: why its final checkpoint is not complete, if it
    /// is not. The next run would restore an older one and repeat what came after it.
    pub fn final_checkpoint_error(&self) -> Option<String> {
        let c = self.checkpoints.as_ref().filter(|c| c.worker == 0)?;
        match &c.last_outcome {
            Some((epoch, Some(reason))) => Some(format!(
                "the final checkpoint (epoch {epoch}, in {}) did not complete: {reason} (see the errors logged before); the next run restores an older checkpoint and repeats what came after it",
                c.cfg.dir.display()
            )),
            _ => None,
        }
    }

    /// True once every epoch up to `epoch` was completed or given up.
    fn completed_through(&self, epoch: Time) -> bool {
        self.checkpoints
            .as_ref()
            .is_none_or(|c| c.to_complete.front().is_none_or(|&e| e > epoch))
    }
}

/// Shared between the source operator and the worker's run loop, which commits the last
/// offsets once everything is done.
pub type SharedReader = Rc<RefCell<Option<KafkaReader>>>;

/// How the workers of a bounded run learn that every source has read to its end: each
/// source says so once, to every worker. A source that is done waits for the others
/// (its clock still moving, its checkpoint duties still done) so that all of them end
/// at one final checkpoint.
#[derive(Clone, Default)]
pub struct Finished {
    /// This worker's source is done reading.
    pub here: Rc<std::cell::Cell<bool>>,
    /// Sources known to be done, over all workers.
    pub everywhere: Rc<std::cell::Cell<usize>>,
    /// Set once this worker's source is ending (stopped, or all sources done).
    pub ending: Ending,
}

/// Tells every worker once this worker's source is done (see `Finished`).
pub fn finished_beacon(scope: Scope<'_, Time>, finished: Finished) {
    use timely::dataflow::operators::Inspect;
    use timely::dataflow::operators::vec::Broadcast;
    let here = finished.here.clone();
    source(scope, "Finished", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        move |output| {
            if here.get() {
                if let Some(c) = cap.take() {
                    output.session(&c).give(());
                }
            } else {
                activator.activate_after(IDLE_POLL);
            }
        }
    })
    .container::<Vec<()>>()
    .broadcast()
    .inspect(move |_| finished.everywhere.set(finished.everywhere.get() + 1));
}

/// Emits the messages of this worker's partitions, stamped with the processing time,
/// and commits offsets once `probe` shows their events' actions done. Ends when a
/// bounded read is complete everywhere or `stop` is set; with checkpoints on, after a
/// final checkpoint.
pub fn kafka_source<'s>(
    scope: Scope<'s, Time>,
    reader: SharedReader,
    probe: ProbeHandle<Time>,
    gate: Gate,
    stop: StopFlag,
    finished: Finished,
) -> Stream<'s, Time, Vec<Vec<u8>>> {
    let peers = scope.peers();
    source(scope, "KafkaSource", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        // When this source began to end: a stop, or every source at its end.
        let mut ending: Option<Time> = None;
        move |output| {
            let mut guard = reader.borrow_mut();
            let (Some(c), Some(r)) = (cap.as_mut(), guard.as_mut()) else {
                cap = None;
                finished.here.set(true);
                return;
            };
            if r.finished() {
                finished.here.set(true);
            }
            if ending.is_none() {
                ending = stop
                    .stopped_at()
                    .or_else(|| (finished.everywhere.get() >= peers).then(now_ms));
                if ending.is_some() {
                    finished.ending.set();
                }
            }
            // Once ending, with checkpoints on, the clock jumps to the final epoch (no
            // event will carry a later time, so there is no need to wait for it) and the
            // source waits there until the probe passed it: the final checkpoint taken,
            // its offsets committed.
            let final_epoch = ending.and_then(|t| r.final_epoch(t));
            let now = final_epoch.unwrap_or_else(|| r.clock());
            if now > *c.time() {
                r.crossed(*c.time(), now);
                c.downgrade(&now);
            }
            r.settle(&probe);
            r.complete_checkpoints(&probe);
            if r.last_commit.elapsed() >= COMMIT_EVERY {
                r.commit(CommitMode::Async);
            }
            let checkpointing = r.checkpoints.is_some();
            if ending.is_some() || (r.finished() && !checkpointing) {
                match final_epoch {
                    Some(e) if probe.less_than(&e) || !r.completed_through(e) => {
                        activator.activate_after(IDLE_POLL);
                    }
                    _ => {
                        cap = None;
                        finished.here.set(true);
                    }
                }
                return;
            }
            if r.finished() {
                // Done here; the clock and the checkpoints go on until all are done.
                activator.activate_after(IDLE_POLL);
                return;
            }
            if !gate.is_open() {
                activator.activate_after(PAUSE);
                return;
            }
            let mut session = output.session(&*c);
            let n = r.read(now, |payload| session.give(payload));
            drop(session);
            if n > 0 || r.finished() {
                activator.activate();
            } else {
                activator.activate_after(IDLE_POLL);
            }
        }
    })
}
