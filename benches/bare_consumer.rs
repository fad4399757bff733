//! The ceiling for the Kafka source: how fast a bare rdkafka consumer, one per thread,
//! reads a topic from the same broker, doing nothing with the messages but counting
//! their bytes. `scripts/bench.sh` compares the job's Kafka throughput against it.
//! A benchmark target without criterion's harness (`benches/` holds the project's
//! measuring tools):
//!
//!   cargo bench --bench bare_consumer -- BROKERS TOPIC [THREADS]

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` adds `--bench` to what it passes on.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let brokers = args
        .next()
        .ok_or("usage: bare_consumer BROKERS TOPIC [THREADS]")?;
    let topic = args
        .next()
        .ok_or("usage: bare_consumer BROKERS TOPIC [THREADS]")?;
    let threads: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(1);

    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let md = probe.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            std::thread::spawn(move || -> Result<(u64, u64), KafkaError> {
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("group.id", "bare-consumer")
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "true")
                    .create()?;
                let mut tpl = TopicPartitionList::new();
                let mine: Vec<i32> = (0..partitions)
                    .filter(|p| *p as usize % threads == i)
                    .collect();
                for &p in &mine {
                    tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
                }
                c.assign(&tpl)?;
                let (mut n, mut bytes, mut eof) = (0u64, 0u64, 0usize);
                while eof < mine.len() {
                    match c.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            n += 1;
                            bytes += m.payload().map(|p| p.len()).unwrap_or(0) as u64;
                        }
                        Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
                        Some(Err(e)) => eprintln!("{e}"),
                        None => {}
                    }
                }
                Ok((n, bytes))
            })
        })
        .collect();
    let (mut n, mut bytes) = (0, 0);
    for h in handles {
        let (a, b) = h.join().map_err(|_| "a consumer thread panicked")??;
        n += a;
        bytes += b;
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "bare consumer: {n} messages, {bytes} bytes in {s:.2} s: {:.0} msg/s, {:.1} MB/s ({threads} threads)",
        n as f64 / s,
        bytes as f64 / s / 1e6
    );
    Ok(())
}
