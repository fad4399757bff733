//! Dead letters: what the job could not handle, as JSON objects with the reason and the
//! original bytes, so that nothing is dropped silently: messages that are not valid
//! events, and webhook deliveries that still failed after their retries. They go to a
//! JSON-lines file (`dead-letter.path`) or a Kafka topic (`dead-letter.topic`, one
//! message per record, on the job's brokers).
//!
//! A record is on disk (appended and synced) or acknowledged by the brokers before the
//! job moves on (the work it stands for counts as done, and its offsets may be committed
//! right after), so it survives a crash of the machine as well as of the job. One file
//! per process: processes on one machine need paths of their own
//! (`EVENT_TRIGGER__DEAD_LETTER__PATH` per process); a topic takes every process.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::kafka_client::{ClientKind, KafkaConfigError, check_config, redacted};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The cause is in the message, not the source: printed with its sources, it came
    /// twice ("Is a directory (os error 21): Is a directory (os error 21)").
    #[error("dead-letter.path: {path}: {cause}")]
    File {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("dead-letter.topic: {topic}: {reason}")]
    Kafka { topic: String, reason: String },
}

/// Why a record is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A message that is not a valid event (the message as read).
    InvalidMessage,
    /// A webhook delivery that failed after its retries (the body it would have sent).
    WebhookFailed,
}

/// One line of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub kind: Kind,
    pub reason: String,
    /// When it was written, in ms since the epoch.
    pub at_ms: u64,
    /// The original bytes, when they are UTF-8...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...and in hex when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
}

impl DeadLetter {
    pub fn new(kind: Kind, reason: impl Into<String>, bytes: &[u8], at_ms: u64) -> Self {
        let (payload, payload_hex) = match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(hex::encode(bytes))),
        };
        DeadLetter {
            kind,
            reason: reason.into(),
            at_ms,
            payload,
            payload_hex,
        }
    }

    /// The original bytes back (for tools and tests).
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_hex) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(h)) => hex::decode(h).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// Where this process's dead letters go, shared by its workers.
#[derive(Clone)]
pub struct DeadLetters {
    sink: Arc<Sink>,
}

enum Sink {
    /// `synced`: a regular file, synced after each write; a pipe or a terminal
    /// (`/dev/stdout`, for a container's log) cannot be (EINVAL), and every record was
    /// lost to that error.
    File {
        file: Mutex<File>,
        path: PathBuf,
        synced: bool,
    },
    Kafka(KafkaSink),
}

/// A producer that waits for the brokers' acknowledgement of every record.
struct KafkaSink {
    producer: BaseProducer<Failures>,
    topic: String,
    timeout: Duration,
}

/// Counts deliveries the brokers refused (librdkafka reports them on `poll`/`flush`).
#[derive(Default)]
struct Failures(AtomicU64);

impl rdkafka::ClientContext for Failures {}

impl rdkafka::producer::ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!("dead letter not delivered: {e}");
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.sink {
            Sink::File { path, .. } => write!(f, "DeadLetters({})", path.display()),
            Sink::Kafka(k) => write!(f, "DeadLetters(topic {})", k.topic),
        }
    }
}

/// The dead-letter producer's settings: the user's, acks from all in-sync replicas,
/// idempotent.
fn producer_config(kafka: &crate::config::KafkaSettings) -> rdkafka::ClientConfig {
    let mut config = crate::kafka_client::client_config(kafka);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    config
}

/// `kafka.properties` checked as the dead-letter producer takes them, without
/// connecting (`kafka_client::check_config`).
pub fn check_properties(kafka: &crate::config::KafkaSettings) -> Result<(), KafkaConfigError> {
    check_config(&producer_config(kafka), ClientKind::Producer)
}

impl DeadLetters {
    /// Produces to `topic` on the brokers of `kafka` (acks from all in-sync replicas,
    /// idempotent).
    pub fn kafka(
        kafka: &crate::config::KafkaSettings,
        topic: &str,
    ) -> Result<DeadLetters, DeadLetterError> {
        let err = |reason: String| DeadLetterError::Kafka {
            topic: topic.to_string(),
            reason,
        };
        let producer: BaseProducer<Failures> = producer_config(kafka)
            .create_with_context(Failures::default())
            .map_err(|e| err(redacted(&e)))?;
        // Fails the start, naming the key, if the brokers or the topic are not there. All
        // topics are asked for: asking for this one would create it on brokers that
        // create topics on demand.
        let metadata = producer
            .client()
            .fetch_metadata(None, Duration::from_millis(kafka.connect_timeout_ms))
            .map_err(|e| err(redacted(&e)))?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
            Some(t) => {
                let why = t.error().map_or("no partitions".to_string(), |e| {
                    format!("{:?}", RDKafkaErrorCode::from(e))
                });
                return Err(err(format!("not usable: {why}")));
            }
            None => return Err(err("no such topic".into())),
        }
        Ok(DeadLetters {
            sink: Arc::new(Sink::Kafka(KafkaSink {
                producer,
                topic: topic.to_string(),
                timeout: Duration::from_millis(kafka.connect_timeout_ms.max(10_000)),
            })),
        })
    }

    /// Opens `path` for appending, creating it (and its directory) if need be.
    pub fn open(path: &Path) -> Result<DeadLetters, DeadLetterError> {
        let err = |cause| DeadLetterError::File {
            path: path.to_path_buf(),
            cause,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let synced = file.metadata().map_err(err)?.is_file();
        Ok(DeadLetters {
            sink: Arc::new(Sink::File {
                file: Mutex::new(file),
                path: path.to_path_buf(),
                synced,
            }),
        })
    }

    /// Writes `letters` (a file: in one write, synced; a topic: acknowledged).
    pub fn write(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        match &*self.sink {
            Sink::File { file, path, synced } => {
                let err = |cause| DeadLetterError::File {
                    path: path.clone(),
                    cause,
                };
                let mut buf = Vec::new();
                for letter in letters {
                    serde_json::to_writer(&mut buf, letter).map_err(|e| err(e.into()))?;
                    buf.push(b'\n');
                }
                // A worker that panicked while holding the lock left the file as it was.
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                file.write_all(&buf).map_err(err)?;
                match synced {
                    true => file.sync_data().map_err(err),
                    false => Ok(()),
                }
            }
            Sink::Kafka(k) => k.write(letters),
        }
    }

    /// Reads a dead-letter file back (tests and tools).
    pub fn read(path: &Path) -> std::io::Result<Vec<DeadLetter>> {
        std::fs::read_to_string(path)?
            .lines()
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
}

/// A batch written by a `Writer`: its tag, how many letters it held, and the result.
pub type Written<T> = (T, usize, Result<(), DeadLetterError>);

/// Writes dead letters on a thread of its own, so that an operator never waits for a
/// disk sync or the brokers' acknowledgement on its worker thread; each batch's result
/// comes back through `done`, and `activator` wakes the operator to take it.
pub struct Writer<T> {
    batches: std::sync::mpsc::Sender<(T, Vec<DeadLetter>)>,
    results: std::sync::mpsc::Receiver<Written<T>>,
}

impl<T: Send + 'static> Writer<T> {
    /// Starts the thread; it ends when the writer is dropped.
    pub fn spawn(
        sink: DeadLetters,
        activator: timely::scheduling::SyncActivator,
    ) -> std::io::Result<Writer<T>> {
        let (batches, todo) = std::sync::mpsc::channel::<(T, Vec<DeadLetter>)>();
        let (report, results) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("dead-letters".into())
            .spawn(move || {
                for (tag, letters) in todo {
                    let result = sink.write(&letters);
                    // The operator is gone only when the dataflow was dropped.
                    if report.send((tag, letters.len(), result)).is_err() {
                        return;
                    }
                    let _ = activator.activate();
                }
            })?;
        Ok(Writer { batches, results })
    }

    /// Queues `letters` for writing, tagged `tag`.
    pub fn write(&self, tag: T, letters: Vec<DeadLetter>) {
        // The thread ends only with a panic of the sink, which the result would report.
        let _ = self.batches.send((tag, letters));
    }

    /// Batches written (or failed) since the last call.
    pub fn done(&self) -> impl Iterator<Item = Written<T>> + '_ {
        std::iter::from_fn(|| self.results.try_recv().ok())
    }
}

impl KafkaSink {
    fn write(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        let err = |reason: String| DeadLetterError::Kafka {
            topic: self.topic.clone(),
            reason,
        };
        let failed_before = self.producer.context().0.load(Ordering::Relaxed);
        for letter in letters {
            let payload = serde_json::to_vec(letter).map_err(|e| err(e.to_string()))?;
            let record = BaseRecord::<(), [u8]>::to(&self.topic).payload(&payload);
            crate::kafka_client::send_when_room(&self.producer, record)
                .map_err(|e| err(e.to_string()))?;
        }
        // Acknowledged before the work counts as done.
        self.producer
            .flush(self.timeout)
            .map_err(|e| err(format!("not acknowledged: {e}")))?;
        if self.producer.context().0.load(Ordering::Relaxed) > failed_before {
            return Err(err("a record was refused by the brokers".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_appended_and_read_back_with_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dead.jsonl");
        let dl = DeadLetters::open(&path).unwrap();
        let text = DeadLetter::new(Kind::InvalidMessage, "bad_json", b"not json\n\"x\"", 1);
        let binary = DeadLetter::new(Kind::InvalidMessage, "bad_json", &[0xff, 0, 1], 2);
        dl.write(std::slice::from_ref(&text)).unwrap();
        dl.write(std::slice::from_ref(&binary)).unwrap();
        // Reopened: appends, keeps what was there.
        let again = DeadLetters::open(&path).unwrap();
        let failed = DeadLetter::new(Kind::WebhookFailed, "HTTP 500", b"{}", 3);
        again.write(std::slice::from_ref(&failed)).unwrap();
        let back = DeadLetters::read(&path).unwrap();
        assert_eq!(back, [text, binary.clone(), failed]);
        assert_eq!(back[1].bytes(), [0xff, 0, 1]);
        assert_eq!(back[0].bytes(), b"not json\n\"x\"");
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(
            line.starts_with(r#"{"kind":"invalid_message","reason":"bad_json""#),
            "{line}"
        );
    }

    /// A path that is not a regular file (`/dev/stdout` for a container's log; here
    /// `/dev/null`, the same kind of file) takes the records: it cannot be synced, and
    /// every write failed on that (EINVAL) before.
    #[test]
    fn letters_go_to_a_device_or_a_pipe_without_a_sync() {
        let dl = DeadLetters::open(Path::new("/dev/null")).unwrap();
        let letter = DeadLetter::new(Kind::WebhookFailed, "HTTP 500", b"{}", 1);
        dl.write(std::slice::from_ref(&letter)).unwrap();
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = DeadLetters::open(&file.join("x.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("dead-letter.path: "), "{err}");
    }
}
