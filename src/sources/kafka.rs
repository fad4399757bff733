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

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use timely::dataflow::ProbeHandle;

use crate::checkpoint::Position;
use crate::config::{KafkaSettings, StartFrom};
use crate::kafka_client::{ClientKind, JobContext, KafkaConfigError, check_config, client_config};
use crate::log_limit::LogLimiter;
use crate::model::Time;
use crate::sources::driver::{BATCH, IDLE_POLL, Next, Reader, SLICE};
use crate::sources::fetch_queue::{FetchQueue, Fetched};
use crate::sources::replay::ReplayFrom;

/// The most messages taken from librdkafka at once (the clock is read between takes).
const TAKE: usize = 256;

/// How often done offsets are committed while running.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// One worker's consumer and the offsets it owes the group.
pub struct KafkaReader {
    /// The partitions' messages; dropped before `consumer`, which it refers to.
    fetch: FetchQueue,
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
    /// Where reading starts in partitions whose first message has not come yet.
    unchecked_starts: BTreeMap<i32, i64>,
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

/// Which worker of how many a reader is, and what it reads.
#[derive(Clone, Copy, Debug)]
pub struct Assignment {
    /// Partitions of the topic.
    pub partition_count: i32,
    pub index: usize,
    pub peers: usize,
    /// Reads to the end of each partition and finishes.
    pub bounded: bool,
}

impl Assignment {
    /// Partition `p` goes to worker `p % peers`.
    fn partitions(&self) -> Vec<i32> {
        (0..self.partition_count)
            .filter(|p| *p as usize % self.peers == self.index)
            .collect()
    }
}

/// How long librdkafka waits to fetch again for a partition whose queue was full.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The consumer of worker `index`, committing nothing by itself.
fn consumer(
    s: &KafkaSettings,
    index: usize,
    bounded: bool,
) -> Result<BaseConsumer<JobContext>, KafkaError> {
    consumer_config(s, index, bounded).create_with_context(JobContext::default())
}

/// `kafka.properties` checked as librdkafka takes them, without connecting
/// (`kafka_client::check_config`): as they are (the start's look at the topic), and with
/// the settings the job's consumers set over them.
pub fn check_properties(s: &KafkaSettings) -> Result<(), KafkaConfigError> {
    check_config(&client_config(s), ClientKind::Consumer)?;
    check_config(&consumer_config(s, 0, false), ClientKind::Consumer)
}

/// The configuration of worker `index`'s consumer: the user's properties, with the
/// settings reading by the job needs over them.
fn consumer_config(s: &KafkaSettings, index: usize, bounded: bool) -> ClientConfig {
    let reset = match s.start_from {
        StartFrom::Earliest => "earliest",
        StartFrom::Committed | StartFrom::Latest => "latest",
    };
    let mut config = client_config(s);
    if !s.properties.contains_key("statistics.interval.ms") {
        // Consumer lag for the metrics, from librdkafka's statistics.
        config.set("statistics.interval.ms", "5000");
    }
    if !s.properties.contains_key("fetch.queue.backoff.ms") {
        // librdkafka's default (1 s) stops fetching a partition for a second whenever its
        // queue is over `queued.min.messages`: a worker that drains 100k messages in half
        // a second then waits half a second (measured: 110k events/s at `-w 1` from
        // Tansu, 198k with 10 ms, 7,500 empty polls down to 600).
        config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    }
    config
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
        .set("auto.offset.reset", reset);
    config
}

/// Where each of `partitions` starts by the configured `start-from`.
///
/// After a restore (`after_restore`), a partition the checkpoint does not know and the
/// group has no offset for starts at its beginning, whatever `start-from` says: it was
/// added to the topic since, or delivered nothing before a checkpoint of a release that
/// did not record such partitions. Flink's Kafka source likewise starts the partitions it
/// discovers at their earliest offset; starting them at their end would skip what came in
/// while the job was down.
fn configured_start(
    s: &KafkaSettings,
    consumer: &BaseConsumer<JobContext>,
    partitions: &[i32],
    after_restore: bool,
) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(&s.topic, p);
    }
    let unknown = |p: i32, why: &str| {
        if after_restore {
            tracing::info!(
                partition = p,
                "{why}, and the restored checkpoint does not know the partition: reading it \
                 from its beginning (added to the topic since the checkpoint?)"
            );
            Offset::Beginning
        } else {
            Offset::End
        }
    };
    match s.start_from {
        StartFrom::Earliest => tpl.set_all_offsets(Offset::Beginning)?,
        StartFrom::Latest => {
            for &p in partitions {
                tpl.set_partition_offset(&s.topic, p, unknown(p, "start-from: latest"))?;
            }
        }
        StartFrom::Committed if !partitions.is_empty() => {
            let committed = consumer
                .committed_offsets(tpl.clone(), Duration::from_millis(s.connect_timeout_ms))?;
            for e in committed.elements() {
                let p = e.partition();
                // A partition the broker could not answer for is not one with nothing
                // committed: starting it at the end would skip what it holds.
                if let Err(err) = e.error() {
                    tracing::error!(partition = p, group = %s.consumer_group_id, "the group's committed offset could not be read: {err}");
                    return Err(err);
                }
                let offset = match e.offset() {
                    Offset::Offset(o) => {
                        tracing::debug!(partition = p, committed = o, "group offset");
                        Offset::Offset(o)
                    }
                    _ if after_restore => {
                        unknown(p, "the group has no committed offset for this partition")
                    }
                    _ => {
                        // Nothing committed yet: the Flink job's `latest`. Said at info
                        // level, as the events already in the partition are not read.
                        tracing::info!(
                            partition = p,
                            group = %s.consumer_group_id,
                            "the group has no committed offset for this partition: starting \
                             at its end (kafka.start-from: earliest reads it from the beginning)"
                        );
                        Offset::End
                    }
                };
                tpl.set_partition_offset(&s.topic, p, offset)?;
            }
        }
        StartFrom::Committed => {}
    }
    Ok(tpl)
}

/// The offsets `tpl` starts its partitions at, where it names one.
fn starts(tpl: &TopicPartitionList) -> BTreeMap<i32, i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The offsets a restored checkpoint gives `partitions` (those it knows).
fn restored_positions(
    partitions: &[i32],
    restore: Option<&BTreeMap<i32, i64>>,
) -> BTreeMap<i32, i64> {
    partitions
        .iter()
        .filter_map(|p| Some((*p, *restore?.get(p)?)))
        .collect()
}

/// Gives the partitions `tpl` starts at their end or beginning the offset that is now
/// (the broker's high or low watermark): a position to record at once. Left as "the
/// end", a partition that delivers nothing before a checkpoint would start at the end
/// again after a restart, and skip what came in while the job was down. Returns the
/// offsets set.
fn resolve_starts(
    consumer: &BaseConsumer<JobContext>,
    tpl: &mut TopicPartitionList,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let named: Vec<(i32, Offset)> = tpl
        .elements()
        .iter()
        .filter(|e| matches!(e.offset(), Offset::End | Offset::Beginning))
        .map(|e| (e.partition(), e.offset()))
        .collect();
    let mut resolved = BTreeMap::new();
    for (p, named) in named {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let at = if named == Offset::End { high } else { low };
        tpl.set_partition_offset(topic, p, Offset::Offset(at))?;
        resolved.insert(p, at);
    }
    Ok(resolved)
}

/// A replay's start, over the rest.
fn replay_start(
    s: &KafkaSettings,
    consumer: &BaseConsumer<JobContext>,
    tpl: &mut TopicPartitionList,
    partitions: &[i32],
    replay: Option<&ReplayFrom>,
) -> Result<(), KafkaError> {
    match replay {
        Some(ReplayFrom::Offsets(offsets)) => {
            for &p in partitions {
                if let Some(&o) = offsets.get(&p) {
                    warn_past_the_end(s, consumer, p, o);
                    tpl.set_partition_offset(&s.topic, p, Offset::Offset(o))?;
                }
            }
        }
        Some(ReplayFrom::Timestamp(ms)) if !partitions.is_empty() => {
            let mut times = TopicPartitionList::new();
            for &p in partitions {
                times.add_partition_offset(&s.topic, p, Offset::Offset(*ms))?;
            }
            let found =
                consumer.offsets_for_times(times, Duration::from_millis(s.connect_timeout_ms))?;
            for e in found.elements() {
                // `End` where no message is that recent.
                tpl.set_partition_offset(&s.topic, e.partition(), e.offset())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Warns when a replay's offset is past its partition's end as the broker reports it:
/// a broker resets an offset out of range (to `kafka.start-from`), or a bounded run
/// waits for messages to reach it (seen on Tansu: no warning, no end). A warning, not a
/// refusal: some Kafka-compatible brokers under-report the end.
fn warn_past_the_end(s: &KafkaSettings, consumer: &BaseConsumer<JobContext>, p: i32, o: i64) {
    let timeout = Duration::from_millis(s.connect_timeout_ms);
    if let Ok((_, high)) = consumer.fetch_watermarks(&s.topic, p, timeout)
        && o > high
    {
        tracing::warn!(
            partition = p,
            offset = o,
            end = high,
            "--from-offset: offset {o} is past partition {p}'s end as the broker reports it \
             ({high}): the broker may reset it to kafka.start-from, and a bounded run waits \
             for messages to reach it; give an offset up to {high}"
        );
    }
}

impl KafkaReader {
    /// Creates the consumer of worker `at.index` of `at.peers` and assigns its
    /// partitions.
    pub fn open(
        s: &KafkaSettings,
        at: Assignment,
        plan: Plan<'_>,
    ) -> Result<KafkaReader, KafkaError> {
        let consumer = consumer(s, at.index, at.bounded)?;
        let partitions = at.partitions();
        let mut positions = restored_positions(&partitions, plan.restore);
        // Partitions the checkpoint knows go on from it; the others start as configured.
        let fresh: Vec<i32> = partitions
            .iter()
            .filter(|p| !positions.contains_key(p))
            .copied()
            .collect();
        let mut tpl = configured_start(s, &consumer, &fresh, plan.restore.is_some())?;
        for (&p, &o) in &positions {
            tpl.add_partition_offset(&s.topic, p, Offset::Offset(o))?;
        }
        replay_start(s, &consumer, &mut tpl, &partitions, plan.replay)?;
        let timeout = Duration::from_millis(s.connect_timeout_ms);
        positions.extend(resolve_starts(&consumer, &mut tpl, &s.topic, timeout)?);
        if plan.replay.is_some() {
            let from: Vec<_> = tpl
                .elements()
                .iter()
                .map(|e| format!("{}:{:?}", e.partition(), e.offset()))
                .collect();
            tracing::info!(worker = at.index, ?from, "replay: reading from");
        }
        let fetch = FetchQueue::forward(&consumer, &s.topic, &partitions)?;
        consumer.assign(&tpl)?;
        let unchecked_starts = starts(&tpl);
        if partitions.is_empty() {
            tracing::warn!(
                worker = at.index,
                partitions = at.partition_count,
                workers = at.peers,
                "more workers than partitions: this worker reads nothing"
            );
        } else {
            tracing::info!(worker = at.index, ?partitions, from = ?unchecked_starts, topic = %s.topic, "reading");
        }
        Ok(KafkaReader {
            fetch,
            consumer,
            topic: s.topic.clone(),
            group: s.consumer_group_id.clone(),
            partitions,
            bounded: at.bounded,
            at_end: Vec::new(),
            in_flight: VecDeque::new(),
            // A restored checkpoint's offsets are done (its actions completed before it
            // did), and so is where a partition started at its end: the group learns them
            // even for partitions with nothing new to read.
            done: positions.clone(),
            positions,
            unchecked_starts,
            last_commit: Instant::now(),
            commit: plan.commit,
            errors: LogLimiter::per_10s("Kafka read and commit errors"),
        })
    }

    /// True once a bounded read reached the end of every assigned partition.
    fn at_end_everywhere(&self) -> bool {
        self.bounded && self.partitions.iter().all(|p| self.at_end.contains(p))
    }

    /// Reads up to `max` messages, handing each payload to `give`; returns how many
    /// arrived. Records the batch's offsets under `time`.
    fn read_batch(&mut self, time: Time, max: usize, give: &mut dyn FnMut(&[u8])) -> usize {
        self.errors.tick();
        let mut next: Vec<(i32, i64)> = Vec::new();
        let mut n = 0;
        // The consumer's own queue: commit results, errors, statistics. The partitions'
        // messages come through `fetch`; one that came here would be read all the same.
        match self.consumer.poll(Duration::ZERO) {
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                let payload = m.payload().unwrap_or_default().to_vec();
                drop(m);
                n += self.received(Ok((p, o, &payload)), &mut next, give);
            }
            Some(Err(e)) => n += self.received(Err(e), &mut next, give),
            None => {}
        }
        let started = Instant::now();
        // The clock is read once a take (a slice is 5 ms, a message a couple of µs), and
        // the positions are set once a batch from its offsets: read and set per
        // message, they were ~1% of a worker's samples.
        'read: while n < max && started.elapsed() < SLICE {
            let taken = self.fetch.take((max - n).min(TAKE));
            if taken.is_empty() {
                break;
            }
            for i in 0..taken.len() {
                // Messages taken after the last partition's end are read again next run.
                if self.at_end_everywhere() {
                    break 'read;
                }
                n += self.received(taken.get(i), &mut next, give);
            }
            self.fetch.give_back(taken);
        }
        if !next.is_empty() {
            self.positions.extend(next.iter().copied());
            self.in_flight.push_back((time, next));
        }
        n
    }

    /// Hands a message's payload on, its next offset to `next` (and checks where its
    /// partition started), or notes a partition's end, or warns of an error (librdkafka
    /// reconnects by itself). Returns the messages handed on (0 or 1).
    fn received(
        &mut self,
        fetched: Fetched<'_>,
        next: &mut Vec<(i32, i64)>,
        give: &mut dyn FnMut(&[u8]),
    ) -> usize {
        match fetched {
            Ok((p, offset, payload)) => {
                give(payload);
                match next.iter_mut().find(|(q, _)| *q == p) {
                    Some(entry) => entry.1 = entry.1.max(offset + 1),
                    None => next.push((p, offset + 1)),
                }
                if !self.unchecked_starts.is_empty() {
                    let _ = self.check_start(p, offset);
                }
                return 1;
            }
            Err(KafkaError::PartitionEOF(p)) => {
                if !self.at_end.contains(&p) {
                    tracing::debug!(partition = p, "reached the end of the partition");
                    self.at_end.push(p);
                    crate::metrics::global().partition_at_end(&self.topic, p);
                }
            }
            Err(e) => {
                if self.errors.allow() {
                    tracing::warn!("kafka: {e}");
                }
            }
        }
        0
    }

    /// Warns when the first message read from partition `p` comes more than one offset
    /// after the offset reading started at: the messages between were not read. One
    /// offset is a transaction's commit marker (no message), which every restart after a
    /// transactional producer's batch meets. Returns how many offsets were skipped.
    fn check_start(&mut self, p: i32, first: i64) -> Option<i64> {
        let start = self.unchecked_starts.remove(&p)?;
        if first <= start {
            return None;
        }
        if first == start + 1 {
            tracing::debug!(
                partition = p,
                from = start,
                "one offset without a message (a transaction marker?)"
            );
            return Some(1);
        }
        tracing::warn!(
            partition = p,
            from = start,
            first,
            "the first message read is {} offsets after where reading started: the \
             broker holds none between (deleted by retention, compacted away, or \
             aborted transactions)",
            first - start
        );
        Some(first - start)
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

impl Reader for KafkaReader {
    fn read(&mut self, time: Time, max: usize, give: &mut dyn FnMut(&[u8])) -> Next {
        let n = self.read_batch(time, max.min(BATCH), give);
        if n > 0 || self.at_end_everywhere() {
            Next::Now
        } else {
            Next::After(IDLE_POLL)
        }
    }

    fn finished(&self) -> bool {
        self.at_end_everywhere()
    }

    fn position(&self) -> Position {
        Position::Kafka {
            topic: self.topic.clone(),
            group: self.group.clone(),
            offsets: self.positions.clone(),
        }
    }

    /// Commits the offsets of done events, at most every `COMMIT_EVERY`.
    fn follow(&mut self, probe: &ProbeHandle<Time>) {
        self.settle(probe);
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            self.commit(CommitMode::Async);
        }
    }

    /// Everything is done: the last offsets are committed.
    fn finish(&mut self, probe: &ProbeHandle<Time>) {
        self.settle(probe);
        self.commit(CommitMode::Sync);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bug found by the Kafka benchmark: with librdkafka's default backoff the job
    /// waited for a second after every 100k messages (half its time at `-w 1`).
    #[test]
    fn the_consumer_fetches_again_soon_after_a_full_queue_unless_told_otherwise() {
        let mut s = KafkaSettings::default();
        let config = consumer_config(&s, 0, true);
        assert_eq!(
            config.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS)
        );
        assert_eq!(config.get("enable.partition.eof"), Some("true"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        s.properties
            .insert("fetch.queue.backoff.ms".into(), "500".into());
        let config = consumer_config(&s, 1, false);
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("500"));
        assert_eq!(config.get("client.id"), Some("event-trigger-worker-1"));
    }

    /// A consumer of `topic` on `cluster`, in group "g", starting from its commits.
    fn mock_settings(bootstrap_servers: String, topic: &str) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers,
            topic: topic.into(),
            consumer_group_id: "g".into(),
            start_from: StartFrom::Committed,
            connect_timeout_ms: 5000,
            ..KafkaSettings::default()
        }
    }

    #[test]
    fn committed_partitions_start_at_their_commit_and_others_at_the_end() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let s = mock_settings(cluster.bootstrap_servers(), "t");
        let c = consumer(&s, 0, false).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 1, Offset::Offset(7)).unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
        let start = configured_start(&s, &c, &[0, 1], false).unwrap();
        let offsets: Vec<_> = start
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(offsets, [(0, Offset::End), (1, Offset::Offset(7))]);
        // Only a named offset is one to check the first message against.
        assert_eq!(starts(&start), BTreeMap::from([(1, 7)]));
        // After a restore, a partition with nothing committed (that the checkpoint did not
        // know) starts at its beginning.
        let start = configured_start(&s, &c, &[0, 1], true).unwrap();
        assert_eq!(start.elements()[0].offset(), Offset::Beginning);
        assert_eq!(start.elements()[1].offset(), Offset::Offset(7));
    }

    #[test]
    fn a_first_message_past_the_start_is_a_gap_checked_once() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let s = mock_settings(cluster.bootstrap_servers(), "t");
        let restore = BTreeMap::from([(0, 3)]);
        let at = Assignment {
            partition_count: 2,
            index: 0,
            peers: 1,
            bounded: false,
        };
        let plan = Plan {
            restore: Some(&restore),
            replay: None,
            commit: false,
        };
        let mut reader = KafkaReader::open(&s, at, plan).unwrap();
        assert_eq!(reader.check_start(0, 3), None, "read from where it started");
        let mut reader = KafkaReader::open(&s, at, plan).unwrap();
        assert_eq!(
            reader.check_start(0, 4),
            Some(1),
            "a transaction marker: not warned"
        );
        let mut reader = KafkaReader::open(&s, at, plan).unwrap();
        assert_eq!(reader.check_start(0, 10), Some(7));
        assert_eq!(reader.check_start(0, 20), None, "only the first message");
        // Partition 1 has nothing committed and the checkpoint does not know it: it
        // starts at its beginning, as it is now (0), a position recorded at once and
        // checked like any.
        assert_eq!(reader.positions.get(&1), Some(&0));
        assert_eq!(reader.done.get(&1), Some(&0), "the group learns it");
        assert_eq!(reader.check_start(1, 20), Some(20));
    }

    #[test]
    fn a_partition_starts_at_its_end_as_it_is_now_unless_a_checkpoint_was_restored() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        for _ in 0..5 {
            producer
                .send(BaseRecord::<(), str>::to("t").partition(1).payload("{}"))
                .unwrap();
        }
        producer.flush(Duration::from_secs(5)).unwrap();
        let s = mock_settings(cluster.bootstrap_servers(), "t");
        let at = Assignment {
            partition_count: 2,
            index: 0,
            peers: 1,
            bounded: false,
        };
        let plan = |restore| Plan {
            restore,
            replay: None,
            commit: false,
        };
        let reader = KafkaReader::open(&s, at, plan(None)).unwrap();
        assert_eq!(reader.positions, BTreeMap::from([(0, 0), (1, 5)]));
        let restore = BTreeMap::from([(0, 0)]);
        let reader = KafkaReader::open(&s, at, plan(Some(&restore))).unwrap();
        assert_eq!(reader.positions, BTreeMap::from([(0, 0), (1, 0)]));
    }
}
