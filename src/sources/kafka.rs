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

use crate::config::{KafkaSettings, StartFrom};
use crate::kafka::{JobContext, client_config};
use crate::log_limit::LogLimiter;
use crate::model::Time;
use crate::operators::backpressure::Gate;
use crate::operators::now_ms;
use crate::shutdown::StopFlag;

/// Messages per activation at most, and how long one activation may read.
const BATCH: usize = 4096;
const SLICE: Duration = Duration::from_millis(5);
/// How soon an idle source polls again (and moves its time on).
const IDLE_POLL: Duration = Duration::from_millis(10);
/// How soon a source paused by backpressure looks at the gate again.
const PAUSE: Duration = Duration::from_millis(1);
/// How often done offsets are committed while running.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// One worker's consumer and the offsets it owes the group.
pub struct KafkaReader {
    consumer: BaseConsumer<JobContext>,
    topic: String,
    partitions: Vec<i32>,
    bounded: bool,
    /// Partitions that reached their end (bounded runs).
    at_end: Vec<i32>,
    /// Per batch: its time and the next offset to read per partition after it.
    in_flight: VecDeque<(Time, Vec<(i32, i64)>)>,
    /// Next offsets whose events are all done, not yet committed.
    done: BTreeMap<i32, i64>,
    last_commit: Instant,
    errors: LogLimiter,
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
    ) -> Result<KafkaReader, KafkaError> {
        let reset = match s.start_from {
            StartFrom::Earliest => "earliest",
            StartFrom::Committed | StartFrom::Latest => "latest",
        };
        let consumer: BaseConsumer<JobContext> = client_config(s)
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
            .create_with_context(JobContext)?;
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
            partitions,
            bounded,
            at_end: Vec::new(),
            in_flight: VecDeque::new(),
            done: BTreeMap::new(),
            last_commit: Instant::now(),
            errors: LogLimiter::default(),
        })
    }

    /// True once a bounded read reached the end of every assigned partition.
    pub fn finished(&self) -> bool {
        self.bounded && self.partitions.iter().all(|p| self.at_end.contains(p))
    }

    /// Reads up to a batch, handing each payload to `give`; returns how many messages
    /// arrived. Records the batch's offsets under `time`.
    fn read(&mut self, time: Time, mut give: impl FnMut(Vec<u8>)) -> usize {
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
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    if !self.at_end.contains(&p) {
                        tracing::debug!(partition = p, "reached the end of the partition");
                        self.at_end.push(p);
                    }
                }
                Err(e) => {
                    // librdkafka reconnects by itself; we keep polling where we were.
                    if let Some(held_back) = self.errors.allow() {
                        tracing::warn!(held_back, "kafka: {e}");
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
                if let Some(held_back) = self.errors.allow() {
                    tracing::warn!(held_back, "kafka: commit failed, will retry: {e}");
                }
            }
        }
        self.last_commit = Instant::now();
    }
}

/// Shared between the source operator and the worker's run loop, which commits the last
/// offsets once everything is done.
pub type SharedReader = Rc<RefCell<Option<KafkaReader>>>;

/// Emits the messages of this worker's partitions, stamped with the processing time,
/// and commits offsets once `probe` shows their events' actions done. Ends when a
/// bounded read is complete or `stop` is set.
pub fn kafka_source<'s>(
    scope: Scope<'s, Time>,
    reader: SharedReader,
    probe: ProbeHandle<Time>,
    gate: Gate,
    stop: StopFlag,
) -> Stream<'s, Time, Vec<Vec<u8>>> {
    source(scope, "KafkaSource", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        move |output| {
            let mut guard = reader.borrow_mut();
            let (Some(c), Some(r)) = (cap.as_mut(), guard.as_mut()) else {
                cap = None;
                return;
            };
            let now = now_ms();
            if now > *c.time() {
                c.downgrade(&now);
            }
            r.settle(&probe);
            if r.last_commit.elapsed() >= COMMIT_EVERY {
                r.commit(CommitMode::Async);
            }
            if stop.is_set() {
                cap = None;
                return;
            }
            if !gate.is_open() {
                activator.activate_after(PAUSE);
                return;
            }
            let mut session = output.session(&*c);
            let n = r.read(now, |payload| session.give(payload));
            drop(session);
            if r.finished() {
                cap = None;
            } else if n > 0 {
                activator.activate();
            } else {
                activator.activate_after(IDLE_POLL);
            }
        }
    })
}
