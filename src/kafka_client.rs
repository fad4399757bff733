//! Kafka plumbing shared by the source and the `produce` tool: client configuration
//! from settings, the start-up check of broker and topic, and the loader.

use std::borrow::Cow;
use std::io::BufRead;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::config::KafkaSettings;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka.bootstrap-servers: cannot reach {servers} within {waited:?}: {reason}")]
    Unreachable {
        servers: String,
        waited: Duration,
        reason: String,
    },
    #[error(
        "kafka.topic: topic `{0}` does not exist on the broker; create it (`event-trigger produce --config <this config> --topic {0} FILE` creates it on the same broker and loads a file of events into it)"
    )]
    NoTopic(String),
    #[error("kafka: {0}")]
    Client(String),
}

/// A client setting librdkafka refuses, found before the job connects anywhere.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    /// A property's name or value (a secret's value left out).
    #[error("kafka.properties: {0}")]
    Property(String),
    /// The properties together, refused when a client is made (an unknown SASL
    /// mechanism, `fetch.max.bytes` below `message.max.bytes`, ...).
    #[error("kafka.properties: {0}")]
    Client(String),
}

/// Where librdkafka's properties are listed, for a name it does not know.
const PROPERTIES_DOC: &str =
    "https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md";

/// The text of a Kafka client error, without the value of a secret property: librdkafka
/// repeats a refused value in its message, and rdkafka adds the name and the value
/// (`sasl.password hunter2`), where `kafka.properties` promises never to print it.
pub fn redacted(e: &KafkaError) -> String {
    let KafkaError::ClientConfig(_, desc, key, value) = e else {
        return e.to_string();
    };
    let mut reason = if crate::config::is_secret_property(key) && !value.is_empty() {
        desc.replace(value.as_str(), "***")
    } else {
        desc.clone()
    };
    if reason.starts_with("No such configuration property") {
        reason.push_str(&format!(" (librdkafka's properties: {PROPERTIES_DOC})"));
    }
    format!("`{key}`: {}", with_hint(reason))
}

/// librdkafka's words, and what to do about them where they do not say.
fn with_hint(reason: String) -> String {
    let hint = if reason.contains("OpenSSL not available at build time") {
        " (this binary was built without TLS for Kafka: `source scripts/kafka-tls.sh` installs \
         OpenSSL's headers, then `cargo build --release --features kafka-tls`)"
    } else if reason.contains("Unsupported SASL mechanism")
        || reason.contains("No provider for SASL mechanism")
    {
        " (`sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER; GSSAPI \
         needs a build with Kerberos)"
    } else {
        ""
    };
    reason + hint
}

/// A client context that says nothing: the clients `check_config` makes have no broker
/// to reach, and librdkafka would say so.
struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

impl rdkafka::producer::ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Which kind of client a configuration is for.
#[derive(Clone, Copy, Debug)]
pub enum ClientKind {
    Consumer,
    Producer,
}

/// Checks `config` as librdkafka takes it, without connecting: each property's name and
/// value, then the whole, by making a client with no brokers to reach (and dropping it).
/// What `run` would fail on when it makes its clients, found by `validate` too.
pub fn check_config(config: &ClientConfig, kind: ClientKind) -> Result<(), KafkaConfigError> {
    let mut config = config.clone();
    config.set("bootstrap.servers", "");
    let made = match kind {
        ClientKind::Consumer => config
            .create_with_context::<_, BaseConsumer<Quiet>>(Quiet)
            .map(drop),
        ClientKind::Producer => config
            .create_with_context::<_, BaseProducer<Quiet>>(Quiet)
            .map(drop),
    };
    made.map_err(|e| match e {
        KafkaError::ClientConfig(..) => KafkaConfigError::Property(redacted(&e)),
        KafkaError::ClientCreation(reason) => KafkaConfigError::Client(with_hint(reason)),
        e => KafkaConfigError::Client(redacted(&e)),
    })
}

/// The job's librdkafka client context: its log lines go to `tracing`, and the
/// end-of-partition notices of bounded reads (which librdkafka also reports as a
/// "global error") are logged at debug, not as errors.
pub struct JobContext {
    /// A broker down at the start makes librdkafka report every failed connection
    /// (dozens a second): a few, then a count.
    errors: std::sync::Mutex<crate::log_limit::LogLimiter>,
    /// The last error librdkafka reported, for a start that gives up (an authentication
    /// failure looks like an unreachable broker from the metadata request alone).
    last_error: std::sync::Mutex<Option<String>>,
}

impl JobContext {
    fn allow(&self) -> bool {
        // A poisoned lock only means a log line panicked; the counts are still usable.
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.allow()
    }

    fn remember(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Default for JobContext {
    fn default() -> Self {
        let limiter =
            crate::log_limit::LogLimiter::new("Kafka client errors", 3, Duration::from_secs(10));
        JobContext {
            errors: std::sync::Mutex::new(limiter),
            last_error: std::sync::Mutex::new(None),
        }
    }
}

impl rdkafka::ClientContext for JobContext {
    /// Consumer lag per partition, for the metrics (`statistics.interval.ms`).
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::metrics::global().record_lag(&statistics);
    }

    /// librdkafka's own log lines; errors and warnings share the limit of `error`.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                self.remember(format!("{fac}: {message}"));
                if self.allow() {
                    tracing::error!(target: "librdkafka", "{fac}: {message}");
                }
            }
            L::Warning => {
                if self.allow() {
                    tracing::warn!(target: "librdkafka", "{fac}: {message}");
                }
            }
            L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac}: {message}"),
            L::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(p) => tracing::debug!(partition = p, "kafka: {reason}"),
            KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                tracing::debug!("kafka: {reason}")
            }
            e => {
                self.remember(format!("{e}: {reason}"));
                if self.allow() {
                    tracing::error!("kafka: {e}: {reason}");
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for JobContext {}

/// librdkafka settings for this job: `kafka.*` first, `kafka.properties` on top.
pub fn client_config(s: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.bootstrap_servers);
    for (k, v) in &s.properties {
        c.set(k, v);
    }
    c
}

/// Partition count of the topic; fails when the broker does not answer within
/// `kafka.connect-timeout-ms` or the topic is missing.
pub fn topic_partitions(s: &KafkaSettings) -> Result<i32, KafkaSetupError> {
    let consumer: BaseConsumer<JobContext> = client_config(s)
        .set("group.id", &s.consumer_group_id)
        .create_with_context(JobContext::default())
        .map_err(|e| KafkaSetupError::Client(redacted(&e)))?;
    let waited = Duration::from_millis(s.connect_timeout_ms);
    let md = consumer
        .fetch_metadata(Some(&s.topic), waited)
        .map_err(|e| KafkaSetupError::Unreachable {
            servers: s.bootstrap_servers.clone(),
            waited,
            reason: with_said(&consumer, e.to_string()),
        })?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == s.topic)
        .ok_or_else(|| KafkaSetupError::NoTopic(s.topic.clone()))?;
    if topic.error().is_some() || topic.partitions().is_empty() {
        return Err(KafkaSetupError::NoTopic(s.topic.clone()));
    }
    Ok(topic.partitions().len() as i32)
}

/// `reason`, with what librdkafka said while the client tried: its errors wait in the
/// client's queue until polled (an authentication failure is one, where the metadata
/// request alone only timed out).
fn with_said(consumer: &BaseConsumer<JobContext>, reason: String) -> String {
    // Serves the queued events (a bounded number: an error may repeat).
    for _ in 0..1000 {
        if consumer.poll(Duration::ZERO).is_none() {
            break;
        }
    }
    match consumer.context().last_error() {
        Some(said) if said.contains("uthentication") || said.contains("SASL") => format!(
            "{reason}; librdkafka: {said} (check `sasl.mechanism`, `sasl.username` and \
             `sasl.password` in kafka.properties)"
        ),
        Some(said) => format!("{reason}; librdkafka: {said}"),
        None => reason,
    }
}

/// Creates `topic` with `partitions` partitions unless it exists. Gives up on a broker
/// that does not answer within `kafka.connect-timeout-ms` (the admin request alone
/// would wait for one for ever).
pub async fn ensure_topic(
    s: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config(s)
        .create()
        .map_err(|e| KafkaSetupError::Client(redacted(&e)))?;
    let waited = Duration::from_millis(s.connect_timeout_ms);
    let unreachable = |reason: String| KafkaSetupError::Unreachable {
        servers: s.bootstrap_servers.clone(),
        waited,
        reason,
    };
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new()
        .operation_timeout(Some(waited))
        .request_timeout(Some(waited));
    let results = tokio::time::timeout(waited, admin.create_topics([&new], &opts))
        .await
        .map_err(|_| unreachable("no broker answered".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaSetupError::Client(format!(
                    "creating topic {name}: {code}"
                )));
            }
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct KeyOnly<'a> {
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
}

/// The message key of a line: its `user_id`, so a user's events share a partition.
/// Lines without one (invalid events) go unkeyed; the job counts them as it would from
/// a file.
pub fn key_of(line: &[u8]) -> Option<Cow<'_, str>> {
    serde_json::from_slice::<KeyOnly<'_>>(line).ok()?.user_id
}

/// What `produce` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub messages: u64,
    pub bytes: u64,
}

/// Loads every line of `input` into `topic`, keyed by user id, at full speed; calls
/// `progress` with the counts so far about every 200 ms. Waits until every message is
/// acknowledged.
/// Hands `record` to the producer, serving delivery reports while its queue is full.
pub fn send_when_room<C: rdkafka::producer::ProducerContext>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<
        '_,
        impl rdkafka::message::ToBytes + ?Sized,
        impl rdkafka::message::ToBytes + ?Sized,
        C::DeliveryOpaque,
    >,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

pub fn produce(
    s: &KafkaSettings,
    topic: &str,
    input: impl BufRead,
    mut progress: impl FnMut(Produced),
) -> Result<Produced, KafkaSetupError> {
    let producer: BaseProducer = client_config(s)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "lz4")
        .create()
        .map_err(|e| KafkaSetupError::Client(redacted(&e)))?;
    let mut done = Produced {
        messages: 0,
        bytes: 0,
    };
    let mut last = Instant::now();
    for line in input.split(b'\n') {
        let mut line = line.map_err(|e| KafkaSetupError::Client(format!("reading input: {e}")))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let key = key_of(&line).map(|k| k.into_owned());
        let mut record = BaseRecord::<str, [u8]>::to(topic).payload(&line);
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        send_when_room(&producer, record)
            .map_err(|e| KafkaSetupError::Client(format!("producing to {topic}: {e}")))?;
        done.messages += 1;
        done.bytes += line.len() as u64;
        if last.elapsed() >= Duration::from_millis(200) {
            producer.poll(Duration::ZERO);
            progress(done);
            last = Instant::now();
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| KafkaSetupError::Client(format!("flushing to {topic}: {e}")))?;
    progress(done);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A property librdkafka refuses is named, with the fix for an unknown name; a
    /// secret's value is never in the text (librdkafka repeats it, rdkafka appends it);
    /// settings refused only together are found by making a client that reaches no
    /// broker.
    #[test]
    fn refused_properties_are_named_without_a_secrets_value() {
        let check = |props: &[(&str, &str)]| {
            let mut s = KafkaSettings::default();
            for (k, v) in props {
                s.properties.insert(k.to_string(), v.to_string());
            }
            check_config(&client_config(&s), ClientKind::Consumer)
                .err()
                .map(|e| e.to_string())
        };
        let e = check(&[("sesion.timeout.ms", "6000")]).unwrap();
        assert!(
            e.starts_with("kafka.properties: `sesion.timeout.ms`: No such configuration property")
                && e.contains(PROPERTIES_DOC),
            "{e}"
        );
        let e = check(&[("fetch.max.bytes", "100"), ("message.max.bytes", "1000000")]).unwrap();
        assert!(e.contains("fetch.max.bytes"), "{e}");
        let e = check(&[
            ("sasl.mechanism", "BOGUS"),
            ("security.protocol", "SASL_PLAINTEXT"),
        ]);
        assert!(
            e.unwrap()
                .contains("`sasl.mechanism`: PLAIN, SCRAM-SHA-256")
        );
        assert_eq!(check(&[("sasl.password", "hunter2")]), None);
        // librdkafka's own message for a secret refused in this build names its value.
        let e = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Unsupported value \"hunter2\" for configuration property \"ssl.key.password\"".into(),
            "ssl.key.password".into(),
            "hunter2".into(),
        );
        assert!(e.to_string().contains("hunter2"));
        let text = redacted(&e);
        assert!(
            !text.contains("hunter2") && text.contains("\"***\""),
            "{text}"
        );
        let e = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"x\" for configuration property \"fetch.min.bytes\"".into(),
            "fetch.min.bytes".into(),
            "x".into(),
        );
        assert!(redacted(&e).contains("\"x\""));
    }

    /// A start that gives up on the brokers says what librdkafka said while it tried
    /// (an authentication failure looked like an unreachable broker).
    #[test]
    fn a_start_that_gives_up_says_what_librdkafka_said() {
        let s = KafkaSettings {
            bootstrap_servers: "127.0.0.1:1".into(),
            connect_timeout_ms: 1000,
            ..Default::default()
        };
        let e = topic_partitions(&s).unwrap_err().to_string();
        assert!(
            e.starts_with("kafka.bootstrap-servers: cannot reach 127.0.0.1:1")
                && e.contains("; librdkafka: ")
                && e.contains("Connection refused"),
            "{e}"
        );
    }

    #[test]
    fn properties_pass_through_and_win() {
        let mut s = KafkaSettings::default();
        s.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        s.properties
            .insert("bootstrap.servers".into(), "other:9093".into());
        let c = client_config(&s);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("bootstrap.servers"), Some("other:9093"));
    }

    #[test]
    fn key_is_the_user_id_when_there_is_one() {
        assert_eq!(
            key_of(br#"{"a":[1,{"b":2}],"user_id":"u\/1"}"#).as_deref(),
            Some("u/1")
        );
        assert_eq!(key_of(b"not json"), None);
        assert_eq!(key_of(br#"{"user_id":7}"#), None);
    }
}
