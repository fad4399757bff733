//! A consumer's fetched messages, taken a batch at a time.
//!
//! `BaseConsumer::poll` hands out one message a call, and each call reads the clock two
//! or three times (rdkafka's timeout, librdkafka's poll-interval bookkeeping), takes the
//! queue's lock, and wraps the message in an event and an `Arc`: ~8% of the workers'
//! samples in a `-w 2` run from a local broker (the clock alone 2.3% of all). Here the
//! fetch queue of each of the reader's partitions is forwarded, before the partitions
//! are assigned, to one queue of the reader's own, which `rd_kafka_consume_batch_queue`
//! empties up to a batch a call (the clock read once). The consumer's own queue keeps
//! everything else (commit results, errors, statistics), which `poll` still serves.
//!
//! librdkafka keeps a forwarding the application set (`rd_kafka_queue_forward`) when
//! it starts fetching a partition; it drops it when it stops, which a fixed assignment
//! does only when the consumer closes.

use std::ffi::CString;
use std::ptr::NonNull;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// The reader's queue of fetched messages, and its hold on each partition's fetch
/// queue. It must be dropped before the consumer it came from (declared before it in
/// the struct that holds both: fields drop in order).
pub struct FetchQueue {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    partitions: Vec<NonNull<rdsys::rd_kafka_queue_t>>,
    /// The buffer of the last messages taken.
    spare: Vec<*mut rdsys::rd_kafka_message_t>,
}

/// A message read, or why there is none (librdkafka's partition end or a fetch error).
pub type Fetched<'a> = Result<(i32, i64, &'a [u8]), KafkaError>;

impl FetchQueue {
    /// Forwards the fetch queues of `partitions` of `topic` to a new queue. Call it
    /// before `assign`: messages fetched before go to the consumer's queue.
    pub fn forward<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topic: &str,
        partitions: &[i32],
    ) -> Result<FetchQueue, KafkaError> {
        let rk = consumer.client().native_ptr();
        let unavailable = || KafkaError::ClientCreation("librdkafka gave no queue".into());
        // SAFETY: `rk` is the live consumer's handle; the queue is ours to destroy.
        let queue =
            NonNull::new(unsafe { rdsys::rd_kafka_queue_new(rk) }).ok_or_else(unavailable)?;
        let mut fetch = FetchQueue {
            queue,
            partitions: Vec::with_capacity(partitions.len()),
            spare: Vec::new(),
        };
        let topic = CString::new(topic)
            .map_err(|_| KafkaError::ClientCreation("a topic name with a NUL byte".into()))?;
        for &p in partitions {
            // SAFETY: as above; librdkafka creates the partition's state if it has none.
            let q = unsafe { rdsys::rd_kafka_queue_get_partition(rk, topic.as_ptr(), p) };
            let q = NonNull::new(q).ok_or_else(unavailable)?;
            fetch.partitions.push(q);
            // SAFETY: both queues are live handles of this consumer.
            unsafe { rdsys::rd_kafka_queue_forward(q.as_ptr(), fetch.queue.as_ptr()) };
        }
        Ok(fetch)
    }

    /// Takes up to `max` of what is queued now, without waiting. Hand the messages
    /// back with `give_back` (its buffer is used again), or drop them.
    pub fn take(&mut self, max: usize) -> Taken {
        let mut taken = std::mem::take(&mut self.spare);
        taken.clear();
        taken.reserve(max);
        // SAFETY: `taken` has room for `max` pointers; librdkafka fills the first `n`.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, taken.as_mut_ptr(), max)
        };
        // SAFETY: the first `n` (never more than `max`) were written; -1 is none.
        unsafe { taken.set_len(usize::try_from(n).unwrap_or(0).min(max)) };
        Taken(taken)
    }

    /// Gives the messages back to librdkafka, keeping their buffer.
    pub fn give_back(&mut self, mut taken: Taken) {
        taken.destroy();
        self.spare = std::mem::take(&mut taken.0);
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: handles we own, destroyed once; the consumer is still alive (see the
        // struct's doc). A partition's fetch queue stops forwarding when the consumer
        // closes; our queue lives on (counted) until then.
        unsafe {
            for q in self.partitions.drain(..) {
                rdsys::rd_kafka_queue_destroy(q.as_ptr());
            }
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// Messages taken from the queue, given back to librdkafka when dropped.
pub struct Taken(Vec<*mut rdsys::rd_kafka_message_t>);

impl Taken {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `i`th message: its partition, offset and payload, or its error.
    pub fn get(&self, i: usize) -> Fetched<'_> {
        // SAFETY: a message librdkafka gave and we have not destroyed yet.
        let m = unsafe { &*self.0[i] };
        match m.err {
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {}
            rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                return Err(KafkaError::PartitionEOF(m.partition));
            }
            e => return Err(KafkaError::MessageConsumption(e.into())),
        }
        let payload = if m.payload.is_null() {
            &[][..]
        } else {
            // SAFETY: `len` bytes at `payload`, alive as long as the message.
            unsafe { std::slice::from_raw_parts(m.payload as *const u8, m.len) }
        };
        Ok((m.partition, m.offset, payload))
    }
}

impl Taken {
    fn destroy(&mut self) {
        for m in self.0.drain(..) {
            // SAFETY: each message taken is destroyed once, here.
            unsafe { rdsys::rd_kafka_message_destroy(m) };
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use std::time::{Duration, Instant};

    fn consumer(servers: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("group.id", "g")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap()
    }

    /// A message read: partition, offset, payload.
    type Read = (i32, i64, Vec<u8>);

    /// Everything taken until both partitions report their end (or 10 s pass).
    fn drain(fetch: &mut FetchQueue, c: &BaseConsumer) -> (Vec<Read>, Vec<i32>) {
        let (mut got, mut ends) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        while ends.len() < 2 && Instant::now() < deadline {
            // The consumer's own queue: no messages come there once forwarded.
            assert!(c.poll(Duration::ZERO).is_none_or(|r| r.is_err()));
            let taken = fetch.take(3);
            assert!(taken.len() <= 3);
            for i in 0..taken.len() {
                match taken.get(i) {
                    Ok((p, o, payload)) => got.push((p, o, payload.to_vec())),
                    Err(KafkaError::PartitionEOF(p)) => ends.push(p),
                    Err(e) => panic!("{e}"),
                }
            }
            if taken.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
            fetch.give_back(taken);
        }
        (got, ends)
    }

    /// Messages come through the forwarded queue in batches, each partition's in its
    /// order with its offsets, then each partition's end; the consumer's own queue
    /// gives none of them.
    #[test]
    fn a_partitions_messages_come_in_batches_in_order_then_its_end() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        for i in 0..10i32 {
            let payload = format!("m{i}");
            let record = BaseRecord::<(), _>::to("t")
                .partition(i % 2)
                .payload(&payload);
            producer.send(record).unwrap();
        }
        producer.flush(Duration::from_secs(5)).unwrap();

        let c = consumer(&cluster.bootstrap_servers());
        let mut fetch = FetchQueue::forward(&c, "t", &[0, 1]).unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
        tpl.add_partition_offset("t", 1, Offset::Offset(2)).unwrap();
        c.assign(&tpl).unwrap();
        let (got, mut ends) = drain(&mut fetch, &c);
        ends.sort();
        assert_eq!(ends, [0, 1]);
        let of = |p: i32| -> Vec<(i64, String)> {
            got.iter()
                .filter(|m| m.0 == p)
                .map(|m| (m.1, String::from_utf8(m.2.clone()).unwrap()))
                .collect()
        };
        let want0: Vec<_> = (0..5).map(|o| (o, format!("m{}", o * 2))).collect();
        let want1: Vec<_> = (2..5).map(|o| (o, format!("m{}", o * 2 + 1))).collect();
        assert_eq!(of(0), want0);
        assert_eq!(of(1), want1, "partition 1 from offset 2");
        drop(fetch);
        drop(c);
    }
}
