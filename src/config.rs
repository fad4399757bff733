//! `config/application.yml`, layered: built-in defaults, then the YAML file, then the
//! environment (`EVENT_TRIGGER__SECTION__KEY`, hyphens written as `_`).
//!
//! Every section rejects unknown keys and every value is type-checked at start, so a
//! typo fails the start naming the key instead of being silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::concurrency::Concurrency;
use yaml_text::Step;

mod yaml_text;

/// Why `state-backend: rocksdb` is refused by a binary built without it, and the fix. A
/// default build leaves RocksDB out: bundled, it compiles for ~20 minutes on 2 cores, and
/// the system library needs root to install, which `cargo run` does not have.
pub const ROCKSDB_NOT_BUILT: &str = "rocksdb is not built into this binary. Build one \
    that has it with `source scripts/rocksdb.sh && cargo build --release --features rocksdb` \
    (the script installs Debian's librocksdb-dev; seconds to link) and run \
    `target/release/event-trigger`; or keep the state in memory with `state-backend: hashmap`";

/// `TryFrom<String>` for a config enum, refusing any other value with the values it
/// takes (the `config` crate's own message names the Rust type instead).
macro_rules! one_of {
    ($ty:ident: $($name:literal => $value:expr),+ $(,)?) => {
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                match s.as_str() {
                    $($name => Ok($value),)+
                    _ => Err(format!(
                        "`{s}` is not one of {}",
                        [$(concat!("`", $name, "`")),+].join(", ")
                    )),
                }
            }
        }
    };
}

one_of!(LogFormat: "text" => LogFormat::Text, "json" => LogFormat::Json);
one_of!(StartFrom: "committed" => StartFrom::Committed, "earliest" => StartFrom::Earliest, "latest" => StartFrom::Latest);
one_of!(SourceType: "kafka" => SourceType::Kafka, "file" => SourceType::File);
one_of!(ActionKind: "webhook" => ActionKind::Webhook, "debug" => ActionKind::Debug);
one_of!(CallOrder: "any" => CallOrder::Any, "per-user" => CallOrder::PerUser);
one_of!(StateBackend: "hashmap" => StateBackend::Hashmap, "rocksdb" => StateBackend::Rocksdb);
one_of!(CheckpointCompression: "lz4" => CheckpointCompression::Lz4, "lz4-whole" => CheckpointCompression::Lz4Whole, "none" => CheckpointCompression::None);

/// The webhook keys, each written once: `WebhookSettings` (`actions.webhook`, with these
/// defaults), and `ActionSpec` (one action of the list form), which takes the same keys,
/// each optional, over the defaults of `actions.webhook`.
macro_rules! webhook_keys {
    ($($(#[doc = $doc:literal])* $key:ident: $ty:ty = $default:expr,)*) => {
        #[derive(Clone, Debug, Deserialize, PartialEq)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        pub struct WebhookSettings {
            $($(#[doc = $doc])* pub $key: $ty,)*
        }

        impl Default for WebhookSettings {
            fn default() -> Self {
                WebhookSettings { $($key: $default,)* }
            }
        }

        /// One action of the list form. A webhook takes the keys of `actions.webhook`.
        #[derive(Clone, Debug, Default, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct ActionSpec {
            #[serde(rename = "type")]
            pub kind: ActionKind,
            /// For logs and dead letters; `<type>-<position>` if not given.
            pub name: Option<String>,
            /// A rhai expression, like the filter script, that the events of this action
            /// must also pass (after the filter).
            pub filter: Option<String>,
            /// At most one firing per user in this long (`1h`).
            pub cooldown: Option<crate::triggers::DurationMs>,
            /// At most `count` firings per user in any window of `per`.
            pub max_per_user: Option<crate::triggers::MaxPerUser>,
            /// Fires this long after the event that passed (`30m`).
            pub delay: Option<crate::triggers::DurationMs>,
            /// With `delay`: a rhai expression over the same scope as the rule; an event
            /// of the user that passes it cancels the action's pending firings.
            pub cancel_if: Option<String>,
            $($(#[doc = $doc])* #[serde(default)] pub $key: <$ty as Key>::Given,)*
            /// `type: debug`: the event as indented JSON.
            pub pretty: Option<bool>,
        }

        impl ActionSpec {
            /// The webhook's settings: the defaults of `actions.webhook`, overridden.
            pub fn webhook(&self) -> WebhookSettings {
                let d = WebhookSettings::default();
                WebhookSettings { $($key: <$ty as Key>::or(self.$key.clone(), d.$key),)* }
            }

            fn has_webhook_keys(&self) -> bool {
                false $(|| <$ty as Key>::is_given(&self.$key))*
            }

            /// Whether `key` (as written: `timeout-ms`) is a webhook key with a default,
            /// which a key written without a value does not take (an optional key's
            /// absence is its value).
            fn needs_a_value(key: &str) -> bool {
                let key = key.replace('-', "_");
                false $(|| (key == stringify!($key) && !<$ty as Key>::OPTIONAL))*
            }

            /// The single webhook of the map form, as a list-form action.
            fn from_webhook(w: &WebhookSettings) -> ActionSpec {
                ActionSpec {
                    kind: ActionKind::Webhook,
                    $($key: <$ty as Key>::given(w.$key.clone()),)*
                    ..Default::default()
                }
            }
        }
    };
}

/// A webhook key's type, and how a list-form action gives it: a key with a default is
/// given or not (`Option<T>`); an optional key (`Option<T>`) is given as itself.
pub trait Key: Sized {
    /// Whether the key is optional (`Option<T>`), not one with a default.
    const OPTIONAL: bool;
    type Given;
    fn given(value: Self) -> Self::Given;
    fn or(given: Self::Given, default: Self) -> Self;
    fn is_given(given: &Self::Given) -> bool;
}

macro_rules! key_with_default {
    ($($t:ty),*) => {$(
        impl Key for $t {
            const OPTIONAL: bool = false;
            type Given = Option<$t>;
            fn given(value: Self) -> Option<$t> {
                Some(value)
            }
            fn or(given: Option<$t>, default: Self) -> Self {
                given.unwrap_or(default)
            }
            fn is_given(given: &Option<$t>) -> bool {
                given.is_some()
            }
        }
    )*};
}

key_with_default!(String, u64, u32, usize, Concurrency, CallOrder);

impl<T> Key for Option<T> {
    const OPTIONAL: bool = true;
    type Given = Option<T>;
    fn given(value: Self) -> Option<T> {
        value
    }
    fn or(given: Option<T>, _default: Self) -> Self {
        given
    }
    fn is_given(given: &Option<T>) -> bool {
        given.is_some()
    }
}

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "EVENT_TRIGGER__";

/// `key` as an error about its value names it: with the environment variable that set
/// it, if one did (`engine.checkpoint-dir (environment variable
/// EVENT_TRIGGER__ENGINE__CHECKPOINT_DIR)`), for values checked after loading.
pub fn key_as_set(key: &str) -> String {
    match EnvOverrides::from_env().var_for(key) {
        Some(var) => format!("{key} (environment variable {var})"),
        None => key.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Shown once: the `config` crate's error is not given as this one's source too
    /// (which `{:#}` would print again).
    #[error("{file}: {}", without_origin(.cause, .file))]
    Load {
        file: String,
        cause: config::ConfigError,
    },
    #[error("{file}: `{key}`: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

/// The `config` crate's text of `cause` without the file it names once or twice at its
/// end (" in rules.yml in rules.yml"): the message starts with the file already.
fn without_origin(cause: &config::ConfigError, file: &str) -> String {
    let mut text = cause.to_string();
    // It names the file by another path (relative to the working directory).
    let name = Path::new(file).file_name();
    while let Some(at) = text.rfind(" in ") {
        if name.is_none() || Path::new(&text[at + 4..]).file_name() != name {
            break;
        }
        text.truncate(at);
    }
    text
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub source: SourceSettings,
    pub profile_api: ProfileApiSettings,
    pub filter: FilterSettings,
    pub actions: ActionsSettings,
    pub state: StateSettings,
    /// The Flink job called this section `flink:`; both names are accepted, in the file
    /// and in the environment (see `ConfigFile`).
    pub engine: EngineSettings,
    pub dead_letter: DeadLetterSettings,
    pub metrics: MetricsSettings,
    pub logging: LoggingSettings,
}

/// Prometheus metrics and the progress line (see `crate::metrics`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsSettings {
    /// `host:port` to serve `/metrics` on; `""`: none. Unset: `DEFAULT_METRICS_LISTEN`,
    /// skipped with a warning when that port is taken (a port given explicitly that
    /// cannot be bound fails the start).
    pub listen: Option<String>,
    /// A progress line in the log this often; 0: none.
    pub log_interval_s: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: None,
            log_interval_s: 10,
        }
    }
}

/// Where metrics are served when `metrics.listen` is not set: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9898";

/// A `metrics.listen` that is not an address.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not host:port ({reason})")]
pub struct BadListen {
    text: String,
    reason: String,
}

impl MetricsSettings {
    /// The address to serve on, if any, and whether it was given explicitly. A host
    /// name (`localhost:9898`) is resolved, its first IPv4 address taken if it has one.
    pub fn listen_addr(&self) -> Result<Option<(std::net::SocketAddr, bool)>, BadListen> {
        use std::net::{SocketAddr, ToSocketAddrs};
        let (text, explicit) = match self.listen.as_deref().map(str::trim) {
            Some("") => return Ok(None),
            Some(a) => (a, true),
            None => (DEFAULT_METRICS_LISTEN, false),
        };
        let bad = |reason: String| BadListen {
            text: text.to_string(),
            reason,
        };
        let parsed = match text.parse::<SocketAddr>() {
            Ok(a) => return Ok(Some((a, explicit))),
            Err(e) => e,
        };
        if let Some((scheme, rest)) = text.split_once("://") {
            let host_port = rest.split('/').next().unwrap_or(rest);
            return Err(bad(format!(
                "give the host and port alone, `{host_port}`, without `{scheme}://` (the path is always /metrics)"
            )));
        }
        if let Some((_, port)) = text.rsplit_once(':')
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_err()
        {
            return Err(bad(format!("port {port} is past 65535")));
        }
        // `:9898`, as some servers take it for every interface: here a host is given.
        if let Some(port) = text.strip_prefix(':')
            && port.parse::<u16>().is_ok()
        {
            return Err(bad(format!(
                "no host: `127.0.0.1:{port}` for this machine only, `0.0.0.0:{port}` for every interface"
            )));
        }
        let addrs: Vec<SocketAddr> = match text.to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            // Not host:port at all: the parser's words; a name that does not resolve:
            // the resolver's.
            Err(e)
                if text
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                return Err(bad(e.to_string()));
            }
            Err(_) => return Err(bad(parsed.to_string())),
        };
        let first = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
        match first {
            Some(a) => Ok(Some((*a, explicit))),
            None => Err(bad("the name has no address".into())),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoggingSettings {
    /// `json`: one JSON object per line (tracing's JSON format), for log collectors.
    pub format: LogFormat,
}

/// Where what the job cannot handle goes (see `crate::dead_letter`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeadLetterSettings {
    /// A JSON-lines file, appended to; unset: invalid messages and failed deliveries are
    /// only logged and counted.
    pub path: Option<PathBuf>,
    /// Or a Kafka topic on `kafka.bootstrap-servers`, one message per record.
    pub topic: Option<String>,
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub topic: String,
    pub consumer_group_id: String,
    /// Where to start a partition: the group's committed offset (falling back to the
    /// end, as the Flink job's `latest`), the beginning, or the end.
    pub start_from: StartFrom,
    /// Passed to librdkafka as they are (`security.protocol`, `sasl.*`, `ssl.*`, ...).
    pub properties: std::collections::BTreeMap<String, String>,
    /// How long to wait for the broker at start before giving up.
    pub connect_timeout_ms: u64,
    /// Messages longer than this (of either source) are counted invalid and skipped
    /// before being parsed.
    pub max_message_bytes: usize,
}

/// librdkafka properties the job sets itself (over the user's, or from its own keys),
/// and what to write instead: given in `kafka.properties`, they were overridden, or
/// overrode `kafka.bootstrap-servers` while messages named it, without a word.
const JOB_OWNED_PROPERTIES: [(&str, &str); 6] = [
    (
        "bootstrap.servers",
        "give the brokers as `kafka.bootstrap-servers`",
    ),
    ("group.id", "give the group as `kafka.consumer-group-id`"),
    (
        "auto.offset.reset",
        "where reading starts is `kafka.start-from` (committed, earliest or latest)",
    ),
    (
        "enable.auto.commit",
        "it commits offsets itself, once their events are done: leave it out",
    ),
    (
        "enable.auto.offset.store",
        "it stores offsets itself, once their events are done: leave it out",
    ),
    (
        "enable.partition.eof",
        "`run --bounded` reads to the partitions' ends: leave it out",
    ),
];

impl KafkaSettings {
    /// Whether the job sets the property `name` it owns to `value` itself (a consumer's
    /// settings carried over from another job often say what the job does anyway).
    fn job_sets_the_same(&self, name: &str, value: &str) -> bool {
        let value = value.trim();
        let servers =
            |list: &str| -> Vec<String> { list.split(',').map(|s| s.trim().to_string()).collect() };
        match name {
            "bootstrap.servers" => servers(value) == servers(&self.bootstrap_servers),
            "group.id" => value == self.consumer_group_id,
            "auto.offset.reset" => {
                let reset = match self.start_from {
                    StartFrom::Earliest => ["earliest", "smallest", "beginning"],
                    StartFrom::Committed | StartFrom::Latest => ["latest", "largest", "end"],
                };
                reset.contains(&value.to_ascii_lowercase().as_str())
            }
            // librdkafka's words for false.
            "enable.auto.commit" | "enable.auto.offset.store" => {
                ["false", "f", "0"].contains(&value.to_ascii_lowercase().as_str())
            }
            // Set by the run (`--bounded` or not), either way right for it.
            "enable.partition.eof" => true,
            _ => false,
        }
    }

    /// A property librdkafka would take that is surely a mistake: a secret given empty,
    /// or a NUL character (which a C string cannot hold), with why.
    fn property_problem(&self, consumes: bool) -> Option<(String, String)> {
        self.properties.iter().find_map(|(k, v)| {
            // The consumer's settings do not concern a job that only produces (its dead
            // letters).
            let owned = JOB_OWNED_PROPERTIES
                .iter()
                .find(|(name, _)| name == k && (consumes || *name == "bootstrap.servers"));
            if let Some((_, instead)) = owned.filter(|_| !self.job_sets_the_same(k, v)) {
                Some((k.clone(), format!("the job sets it otherwise: {instead}")))
            } else if k.contains('\0') || v.contains('\0') {
                Some((k.replace('\0', "\\0"), "holds a NUL character".into()))
            } else if is_secret_property(k) && v.trim().is_empty() {
                Some((k.clone(), EMPTY_SECRET.into()))
            } else {
                None
            }
        })
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.key.pem`, ...): its value is never printed.
pub fn is_secret_property(name: &str) -> bool {
    ["password", "secret", "key.pem", "credentials", "token"]
        .iter()
        .any(|s| name.contains(s))
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: std::collections::BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("consumer_group_id", &self.consumer_group_id)
            .field("start_from", &self.start_from)
            .field("properties", &properties)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: "localhost:9092".into(),
            topic: "user-events".into(),
            consumer_group_id: "event-trigger".into(),
            start_from: StartFrom::Committed,
            properties: Default::default(),
            connect_timeout_ms: 10_000,
            max_message_bytes: 1 << 20,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum StartFrom {
    #[default]
    Committed,
    Earliest,
    Latest,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum SourceType {
    #[default]
    Kafka,
    File,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceSettings {
    #[serde(rename = "type")]
    pub kind: SourceType,
    /// JSONL file for `type: file`; `-` reads standard input.
    pub path: Option<PathBuf>,
    /// `type: file` only: read at most this many lines a second (the whole job), to
    /// offer a fixed load; unset reads as fast as the job goes.
    pub max_events_per_second: Option<f64>,
    /// `true`: a value of another JSON type than its field's makes a message invalid;
    /// `false`: it is coerced as the original's Jackson mapper did (`crate::coerce`).
    pub strict_types: bool,
    /// `type: file` only: take checkpoints (its byte offset with the state) and go on
    /// from the newest one, so a long backfill stopped or killed resumes. Off by
    /// default: a file is otherwise read whole each run, from empty state.
    pub resume: bool,
}

/// A file source without `source.path`.
#[derive(Debug, thiserror::Error)]
#[error("required when source.type is file")]
pub struct NoSourcePath;

impl SourceSettings {
    /// The file a file source reads (`-`: standard input); a file source needs one.
    pub fn file_path(&self) -> Result<&Path, NoSourcePath> {
        self.path.as_deref().ok_or(NoSourcePath)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfileApiSettings {
    /// `http(s)://host:port[/prefix]`, or `file://PATH` to a `profiles.jsonl` snapshot.
    pub base_url: String,
    pub timeout_ms: u64,
    /// Users whose profile is being fetched at once, per worker: the ceiling of
    /// `concurrency` (a look-up is three requests).
    pub max_in_flight: usize,
    /// Requests to the API at once from this process: `adaptive` (to what the API
    /// answers without queueing) or a fixed number.
    pub concurrency: Concurrency,
    /// Further tries of a request that failed transiently (connection, timeout, 429,
    /// 5xx), with jittered exponential backoff from `retry-backoff-ms`.
    pub retry_attempts: u32,
    pub retry_backoff_ms: u64,
    /// A look-up that still fails transiently after its retries is tried again, with
    /// backoff, for up to this long (its user's events wait) before the user gets the
    /// empty state; 0: at once, as the original job.
    pub max_wait_on_failure_ms: u64,
    /// After a failed look-up (empty state), the user's first event this long
    /// after looks it up again.
    pub min_refetch_interval_ms: u64,
    /// Requests to the API per second from this process, retries included (a look-up
    /// is three); 0: no limit beyond `max-in-flight`.
    pub max_requests_per_second: u32,
    /// PEM file of CA certificates to trust for `https://`, besides the platform's.
    pub ca_file: Option<PathBuf>,
    /// The `Authorization` header of every request (e.g. `Bearer <token>`); best given
    /// through the environment (`EVENT_TRIGGER__PROFILE_API__AUTH_HEADER`) or
    /// `auth-header-file`. Never printed.
    pub auth_header: Option<Secret>,
    /// A file holding the `Authorization` header's value (trailing newline ignored).
    pub auth_header_file: Option<PathBuf>,
}

impl ProfileApiSettings {
    /// The `Authorization` value, from `auth-header` or read from `auth-header-file`.
    pub fn auth_header(&self) -> Result<Option<Secret>, SecretError> {
        secret_from(
            "profile-api.auth-header",
            &self.auth_header,
            &self.auth_header_file,
        )
    }
}

/// A secret that cannot be had; each names its key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: give `{key}` or `{key}-file`, not both")]
    Both { key: String },
    #[error("{key}-file: {}", path.display())]
    Read {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An empty secret signs with a key anyone has, an empty header sends nothing:
    /// most likely a variable or a mounted file that was not filled in.
    #[error("{key}: the value is empty: give it, or leave the key out")]
    Empty { key: String },
    #[error("{key}-file: {} is empty: give the value in it, or leave the key out", path.display())]
    EmptyFile { key: String, path: PathBuf },
    #[error("{key}-file: no path is given: give the file's, or leave the key out")]
    NoPath { key: String },
}

/// A secret given as `KEY` or in the file `KEY-file`, not both.
fn secret_from(
    key: &str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, SecretError> {
    let key = key.to_string();
    match (value, file) {
        (Some(_), Some(_)) => Err(SecretError::Both { key }),
        (Some(s), None) if s.is_blank() => Err(SecretError::Empty { key }),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) if path.as_os_str().is_empty() => Err(SecretError::NoPath { key }),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
                key: key.clone(),
                path: path.clone(),
                source,
            })?;
            match text.trim_end_matches(['\n', '\r']) {
                s if s.trim().is_empty() => Err(SecretError::EmptyFile {
                    key,
                    path: path.clone(),
                }),
                s => Ok(Some(Secret(s.to_string()))),
            }
        }
        (None, None) => Ok(None),
    }
}

impl Default for ProfileApiSettings {
    fn default() -> Self {
        ProfileApiSettings {
            base_url: "http://localhost:8080".into(),
            timeout_ms: 5000,
            max_in_flight: 256,
            concurrency: Concurrency::Adaptive,
            retry_attempts: 3,
            retry_backoff_ms: 100,
            max_wait_on_failure_ms: 30_000,
            min_refetch_interval_ms: 60_000,
            max_requests_per_second: 0,
            ca_file: None,
            auth_header: None,
            auth_header_file: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct FilterSettings {
    pub script_path: PathBuf,
    /// rhai operations one evaluation may take before it is stopped (and rejected).
    pub max_operations: u64,
    /// `run` reads the script again this often and switches to it if it changed and
    /// compiles (also on SIGHUP); 0: only on SIGHUP.
    pub reload_interval_ms: u64,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings {
            script_path: "scripts/filter.rhai".into(),
            max_operations: 100_000,
            reload_interval_ms: 1000,
        }
    }
}

/// `actions:` either as the Flink job had it (a map: one `webhook`, or `debug` when
/// enabled), or a list of actions, each with its own settings and optionally a filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActionsSettings {
    pub webhook: WebhookSettings,
    pub debug: DebugSettings,
    /// The list form; when given, `webhook` and `debug` are not used.
    pub list: Option<Vec<ActionSpec>>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct SingleAction {
    webhook: WebhookSettings,
    debug: DebugSettings,
}

impl<'de> Deserialize<'de> for ActionsSettings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = ActionsSettings;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map (webhook:, debug:) or a list of actions")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let one =
                    SingleAction::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ActionsSettings {
                    webhook: one.webhook,
                    debug: one.debug,
                    list: None,
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                let list = Vec::<ActionSpec>::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(ActionsSettings {
                    list: Some(list),
                    ..Default::default()
                })
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum ActionKind {
    #[default]
    Webhook,
    Debug,
}

impl ActionsSettings {
    /// The actions to run, each with its name: the list, or the single one.
    pub fn specs(&self) -> Vec<(String, ActionSpec)> {
        let single = |kind| ActionSpec {
            kind,
            ..Default::default()
        };
        match &self.list {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let kind = match a.kind {
                        ActionKind::Webhook => "webhook",
                        ActionKind::Debug => "debug",
                    };
                    (a.name.clone().unwrap_or(format!("{kind}-{i}")), a.clone())
                })
                .collect(),
            None if self.debug.enabled => vec![(
                "debug".into(),
                ActionSpec {
                    pretty: Some(self.debug.pretty),
                    ..single(ActionKind::Debug)
                },
            )],
            None => vec![("webhook".into(), ActionSpec::from_webhook(&self.webhook))],
        }
    }

    /// Said at the start of a run whose action is the debug print (the map form with
    /// `debug.enabled`): the webhook's settings beside it, which the shipped config has
    /// as the Flink job's had, are not used, and a URL given for them (say by the
    /// environment) would otherwise be ignored without a word.
    pub fn debug_note(&self) -> Option<String> {
        (self.list.is_none() && self.debug.enabled).then(|| {
            format!(
                "actions.debug.enabled is true: each passing event is logged (the debug print) \
                 and the webhook {} (actions.webhook.url) is not called; set \
                 actions.debug.enabled: false (EVENT_TRIGGER__ACTIONS__DEBUG__ENABLED=false) \
                 to call it",
                without_password(&self.webhook.url)
            )
        })
    }

    /// Checks of the list form; the key named is `actions[i].<key>`.
    fn check_list(&self) -> Result<(), (String, String)> {
        let Some(list) = &self.list else {
            return Ok(());
        };
        if list.is_empty() {
            return Err(("actions".into(), "the list is empty".into()));
        }
        if list.len() > 64 {
            return Err(("actions".into(), "at most 64 actions".into()));
        }
        let mut names = std::collections::HashSet::new();
        for (i, (name, a)) in self.specs().into_iter().enumerate() {
            if !names.insert(name.clone()) {
                return Err((
                    format!("actions[{i}].name"),
                    format!("`{name}` is used twice"),
                ));
            }
            check_schedule(i, &a)?;
            match a.kind {
                ActionKind::Webhook => {
                    let url = a.url.as_deref().unwrap_or_default();
                    if let Some(problem) = http_url_problem(url) {
                        return Err((format!("actions[{i}].url"), problem));
                    }
                    if a.secret.as_ref().is_some_and(Secret::is_blank) {
                        return Err((format!("actions[{i}].secret"), EMPTY_SECRET.into()));
                    }
                    if a.pretty.is_some() {
                        return Err((
                            format!("actions[{i}].pretty"),
                            "only a `type: debug` action prints events".into(),
                        ));
                    }
                    if a.max_in_flight == Some(0) {
                        return Err((
                            format!("actions[{i}].max-in-flight"),
                            "must be at least 1".into(),
                        ));
                    }
                }
                ActionKind::Debug if a.has_webhook_keys() => {
                    return Err((
                        format!("actions[{i}]"),
                        "webhook keys (url, timeout-ms, ...) on a `type: debug` action".into(),
                    ));
                }
                ActionKind::Debug => {}
            }
        }
        Ok(())
    }
}

/// The longest `delay`.
const MAX_DELAY_MS: u64 = 365 * 86_400_000;

/// Checks of an action's `cooldown`, `max-per-user`, `delay` and `cancel-if`.
fn check_schedule(i: usize, a: &ActionSpec) -> Result<(), (String, String)> {
    let key = |k: &str| format!("actions[{i}].{k}");
    for (k, d) in [("cooldown", a.cooldown), ("delay", a.delay)] {
        if d.is_some_and(|d| d.0 == 0) {
            return Err((
                key(k),
                "must be longer than 0 (or leave the key out)".into(),
            ));
        }
    }
    if let Some(m) = a.max_per_user {
        if m.count == 0 {
            return Err((key("max-per-user.count"), "must be at least 1".into()));
        }
        if m.per.0 == 0 {
            return Err((key("max-per-user.per"), "must be longer than 0".into()));
        }
    }
    let scheduled = a.cooldown.is_some() || a.max_per_user.is_some() || a.delay.is_some();
    if scheduled && a.name.is_none() {
        return Err((
            key("name"),
            "an action with `cooldown`, `max-per-user` or `delay` needs a `name`: its \
             firings and pending actions are kept under it, across restarts and changes \
             to the list"
                .into(),
        ));
    }
    if a.delay.is_some_and(|d| d.0 > MAX_DELAY_MS) {
        return Err((key("delay"), "at most 365d".into()));
    }
    if a.cancel_if.is_some() && a.delay.is_none() {
        return Err((
            key("cancel-if"),
            "cancels a delayed action before it fires: give the action a `delay` too".into(),
        ));
    }
    Ok(())
}

webhook_keys! {
    url: String = "http://localhost:8080/webhook".into(),
    timeout_ms: u64 = 5000,
    /// Calls under way at once, per worker: the ceiling of `concurrency`.
    max_in_flight: usize = 256,
    /// Calls to the receiver at once from this process: `adaptive` (to what it answers
    /// without queueing) or a fixed number.
    concurrency: Concurrency = Concurrency::Adaptive,
    /// `any` (default) or `per-user`: each user's calls in event order.
    ordering: CallOrder = CallOrder::Any,
    /// Signs each body (HMAC-SHA256, `X-Signature-256`); best given through the
    /// environment (`EVENT_TRIGGER__ACTIONS__WEBHOOK__SECRET`) or `secret-file`.
    secret: Option<Secret> = None,
    /// A file holding the secret (trailing newline ignored).
    secret_file: Option<PathBuf> = None,
    /// Further tries of a delivery that failed transiently (connection, timeout, 408,
    /// 429, 5xx), with jittered exponential backoff from `retry-backoff-ms`, or the
    /// receiver's `Retry-After`, at most `retry-max-wait-ms` each.
    retry_attempts: u32 = 3,
    retry_backoff_ms: u64 = 200,
    retry_max_wait_ms: u64 = 30_000,
    /// PEM file of CA certificates to trust for `https://`, besides the platform's.
    ca_file: Option<PathBuf> = None,
}

/// In which order a webhook receiver gets a user's calls.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum CallOrder {
    /// Calls go as soon as there is room: a user's calls may overtake each other.
    #[default]
    Any,
    /// A user's next call starts once its previous one ended: event order per user;
    /// calls of different users still go concurrently.
    PerUser,
}

/// What a secret given empty (or blank) is told: it would sign with a key anyone has, or
/// send an empty header; most likely a variable that was not filled in.
const EMPTY_SECRET: &str = "the value is empty: give it, or leave the key out";

/// A secret value: never printed (`Debug` shows `***`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Empty, or only whitespace.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl WebhookSettings {
    /// The signing secret, from `secret` or read from `secret-file`.
    pub fn signing_secret(&self) -> Result<Option<Secret>, SecretError> {
        self.signing_secret_at("actions.webhook")
    }

    /// The same, naming the keys of the webhook at `at` (`actions[1]` in the list form).
    pub fn signing_secret_at(&self, at: &str) -> Result<Option<Secret>, SecretError> {
        secret_from(&format!("{at}.secret"), &self.secret, &self.secret_file)
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DebugSettings {
    pub enabled: bool,
    /// Each event as indented JSON over several lines (default: one line).
    pub pretty: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct StateSettings {
    pub max_history: usize,
    /// Delayed actions (`delay`) pending per user at most; more are dropped, counted.
    pub max_timers_per_user: usize,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            max_history: 100,
            max_timers_per_user: 100,
        }
    }
}

/// How checkpoint parts are written: LZ4 (about half the bytes, ~70% of the writer's
/// CPU), LZ4 for whole parts and deltas as they are (the default: deltas are written
/// every interval, whole parts seldom), or every part as it is.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum CheckpointCompression {
    Lz4,
    #[default]
    Lz4Whole,
    None,
}

impl CheckpointCompression {
    /// The value as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointCompression::Lz4 => "lz4",
            CheckpointCompression::Lz4Whole => "lz4-whole",
            CheckpointCompression::None => "none",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum StateBackend {
    #[default]
    Hashmap,
    Rocksdb,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EngineSettings {
    /// Worker threads per process when `-w` is not given.
    pub parallelism: usize,
    /// Processing-time epochs between checkpoints; 0 turns checkpoints off.
    pub checkpoint_interval_ms: u64,
    /// Where checkpoints are written; a shared filesystem for a multi-process cluster.
    pub checkpoint_dir: PathBuf,
    /// Completed checkpoints kept; older ones are deleted.
    pub checkpoints_retained: usize,
    /// A worker's checkpoint part is whole at least every this many checkpoints; in
    /// between, a delta of the users changed since its previous part (1: always whole).
    pub checkpoint_full_every: usize,
    /// Whether checkpoint parts are compressed (`lz4`) or not (`none`).
    pub checkpoint_compression: CheckpointCompression,
    pub state_backend: StateBackend,
    /// Where the `rocksdb` backend keeps each worker's database: local disk, emptied
    /// at start (state comes back from the checkpoint).
    pub state_dir: PathBuf,
    /// Users per worker the `rocksdb` backend keeps decoded in memory.
    pub state_cache_users: usize,
    /// After a stop signal, how long the work in flight may take before the process
    /// exits without a final checkpoint.
    pub shutdown_timeout_ms: u64,
    /// How long a process of a cluster waits for the others to connect before it
    /// exits 2 (0: for ever).
    pub cluster_connect_timeout_ms: u64,
    /// Idle time after which a user's state is dropped; fractions are allowed.
    pub state_ttl_minutes: f64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            parallelism: 1,
            checkpoint_interval_ms: 60_000,
            checkpoint_dir: PathBuf::from("checkpoints"),
            checkpoints_retained: 3,
            checkpoint_full_every: 30,
            checkpoint_compression: CheckpointCompression::Lz4Whole,
            state_backend: StateBackend::Hashmap,
            state_dir: PathBuf::from("state"),
            state_cache_users: 100_000,
            shutdown_timeout_ms: 30_000,
            // As long as a Flink TaskManager waits to register.
            cluster_connect_timeout_ms: 300_000,
            state_ttl_minutes: 10.0,
        }
    }
}

impl EngineSettings {
    pub fn backend(&self) -> crate::store::Backend {
        match self.state_backend {
            StateBackend::Hashmap => crate::store::Backend::Memory,
            StateBackend::Rocksdb => crate::store::Backend::Rocksdb {
                dir: self.state_dir.clone(),
                cache_users: self.state_cache_users,
            },
        }
    }

    /// Refuses a backend this binary does not have (`rocksdb_built`: whether it has
    /// RocksDB), naming the command that builds one that has it.
    fn check_backend(&self, rocksdb_built: bool) -> Result<(), (&'static str, String)> {
        if self.state_backend == StateBackend::Rocksdb && !rocksdb_built {
            return Err(("engine.state-backend", ROCKSDB_NOT_BUILT.into()));
        }
        Ok(())
    }

    pub fn state_ttl_ms(&self) -> u64 {
        // `as` saturates; validation keeps the value finite and positive.
        (self.state_ttl_minutes * 60_000.0).round() as u64
    }
}

/// Environment overrides as a `config` source. The stock `config::Environment` cannot
/// map `PROFILE_API` to `profile-api`, so this one does: `__` separates levels, `_`
/// stands for `-`, names are lower-cased. Values stay strings; the `config`
/// deserializer parses them into the field's type. Those under `KAFKA__PROPERTIES__`
/// are librdkafka properties, kept apart: their names are dotted (`SASL_PASSWORD` is
/// `sasl.password`), which the `config` crate would read as nesting.
#[derive(Clone, Default)]
struct EnvOverrides {
    /// Dotted config keys (`profile-api.auth-header`) and their values.
    keys: Vec<(String, String)>,
    /// The variable each of `keys` came from, in the same order (for error messages).
    vars: Vec<String>,
    /// librdkafka properties (`sasl.password`) for `kafka.properties`.
    kafka_properties: Vec<(String, String)>,
    /// The variable each of `kafka_properties` came from, in the same order.
    property_vars: Vec<String>,
}

impl EnvOverrides {
    fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// The variable that set `key` (for an unknown field too: its path ends with it).
    /// A section named only by a variable (`EVENT_TRIGGER__ENGIN__X`) is its too.
    fn var_for(&self, key: &str) -> Option<&str> {
        if let Some(name) = key.strip_prefix("kafka.properties.") {
            let i = self.kafka_properties.iter().position(|(k, _)| k == name)?;
            return Some(self.property_vars[i].as_str());
        }
        let i = self.keys.iter().position(|(k, _)| {
            k == key
                || k.strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.'))
        })?;
        Some(self.vars[i].as_str())
    }

    /// Two variables that set the same key (`ENGINE__X` and `FLINK__X`), which one wins
    /// would depend on the order of the environment.
    fn same_key_twice(&self) -> Option<(&str, &str, &str)> {
        self.keys.iter().enumerate().find_map(|(i, (k, _))| {
            let j = self.keys[..i].iter().position(|(other, _)| other == k)?;
            Some((k.as_str(), self.vars[j].as_str(), self.vars[i].as_str()))
        })
    }

    /// A variable under `actions.`: it cannot apply to the list form of `actions`.
    fn action_var(&self) -> Option<&str> {
        let i = self
            .keys
            .iter()
            .position(|(k, _)| k.starts_with("actions."))?;
        Some(self.vars[i].as_str())
    }

    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut env = EnvOverrides::default();
        for (k, v) in vars {
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if let Some(name) = rest.strip_prefix("KAFKA__PROPERTIES__") {
                env.kafka_properties
                    .push((name.to_ascii_lowercase().replace('_', "."), v));
                env.property_vars.push(k);
                continue;
            }
            let key = rest
                .split("__")
                .map(|part| part.to_ascii_lowercase().replace('_', "-"))
                .collect::<Vec<_>>()
                .join(".");
            let key = match key.strip_prefix("flink.") {
                Some(rest) => format!("engine.{rest}"),
                None => key,
            };
            env.keys.push((key, v));
            env.vars.push(k);
        }
        env
    }
}

impl std::fmt::Debug for EnvOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The names only: a value may be a secret.
        let names: Vec<&str> = self
            .keys
            .iter()
            .chain(&self.kafka_properties)
            .map(|(k, _)| k.as_str())
            .collect();
        f.debug_tuple("EnvOverrides").field(&names).finish()
    }
}

/// The YAML file as a `config` source, with the Flink job's `flink:` section read as
/// `engine:` (serde's alias could not merge it with `engine` keys from the environment:
/// "duplicate field"). Both sections may be given; a key given in both is refused.
#[derive(Clone, Debug)]
struct ConfigFile(PathBuf);

impl config::Source for ConfigFile {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let file = config::File::from(self.0.as_path()).format(config::FileFormat::Yaml);
        let mut map =
            config::Source::collect(&file).map_err(|e| unreadable_number(&self.0).unwrap_or(e))?;
        map.values_mut().for_each(fractions_as_text);
        let Some(flink) = map.remove("flink") else {
            return Ok(map);
        };
        if matches!(flink.kind, config::ValueKind::Nil) {
            return Err(config::ConfigError::Message(
                "`flink`: no value is given (nothing after the colon, or `~`): give its \
                 keys, or remove the line"
                    .into(),
            ));
        }
        let origin = flink.origin().map(String::from);
        let mut engine = match map.remove("engine") {
            Some(engine) => engine.into_table()?,
            None => config::Map::new(),
        };
        for (key, value) in flink.into_table()? {
            if engine.contains_key(&key) {
                return Err(config::ConfigError::Message(format!(
                    "`{key}` is given under both `engine:` and `flink:` (one section by two \
                     names)"
                )));
            }
            engine.insert(key, value);
        }
        let engine = config::Value::new(origin.as_ref(), config::ValueKind::Table(engine));
        map.insert("engine".into(), engine);
        Ok(map)
    }
}

/// The `config` crate fails the whole file on a YAML float it cannot read (`.inf`, `.nan`)
/// without naming its key ("Parsing .inf as floating point number failed"): the first
/// such value, named by its key as the file writes it.
fn unreadable_number(path: &Path) -> Option<config::ConfigError> {
    let text = std::fs::read_to_string(path).ok()?;
    let (key, value) = yaml_text::unreadable_number(&text)?;
    Some(config::ConfigError::Message(format!(
        "`{key}`: `{value}` is YAML's infinity or not-a-number, which no key takes: give a \
         finite number, or quote it (\"{value}\") if it is text"
    )))
}

/// A key given `true` or `false` (or `yes`, `on` ...) that takes a number, and what it
/// was given: the `config` crate reads them as 1 and 0 (`checkpoint-interval-ms: false`
/// turned checkpoints off). Each key given one is tried again with text that only a key
/// of text takes: a key of numbers refuses it as not a number.
fn bool_given_to_a_number(path: &Path, env: &EnvOverrides) -> Option<(String, String)> {
    let mut given = Vec::new();
    if let Ok(map) = config::Source::collect(&ConfigFile(path.to_path_buf())) {
        for (key, value) in map {
            bools_under(key, &value, &mut given);
        }
    }
    given.extend(
        env.keys
            .iter()
            .filter(|(_, v)| BOOL_WORDS.contains(&v.trim().to_ascii_lowercase().as_str()))
            .cloned(),
    );
    given.into_iter().find(|(key, _)| {
        let probe = config::Config::builder()
            .add_source(ConfigFile(path.to_path_buf()))
            .add_source(env.clone())
            .set_override(key.as_str(), "not a number")
            .and_then(|b| b.build());
        let Ok(probe) = probe else {
            return false;
        };
        let Err(e) = serde_path_to_error::deserialize::<_, Settings>(probe) else {
            return false;
        };
        let reason = e.inner().to_string();
        e.path().to_string() == *key
            && reason.starts_with("invalid type: string \"not a number\"")
            && ["an integer", "a floating point", "u", "i", "f"]
                .iter()
                .any(|what| reason.contains(&format!("expected {what}")))
    })
}

/// The words the `config` crate reads as 1 and 0 where a number is taken.
const BOOL_WORDS: [&str; 6] = ["true", "false", "yes", "no", "on", "off"];

/// The keys under `key` (and it) whose value is a boolean, or a word the `config` crate
/// reads as one (`yes`, `off`: YAML reads them as text), with it.
fn bools_under(key: String, value: &config::Value, out: &mut Vec<(String, String)>) {
    match &value.kind {
        config::ValueKind::Boolean(b) => out.push((key, b.to_string())),
        config::ValueKind::String(s)
            if BOOL_WORDS.contains(&s.trim().to_ascii_lowercase().as_str()) =>
        {
            out.push((key, s.clone()))
        }
        config::ValueKind::Table(table) => {
            for (k, v) in table {
                bools_under(format!("{key}.{k}"), v, out);
            }
        }
        config::ValueKind::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                bools_under(format!("{key}[{i}]"), v, out);
            }
        }
        _ => {}
    }
}

/// Most workers one process runs (`engine.parallelism`, `-w`).
pub const MAX_PARALLELISM: usize = 1024;

/// Floats from here up are not all whole numbers exactly (2^53).
const EXACT: f64 = 9_007_199_254_740_992.0;

/// Gives numbers with a fraction (or too large to be exact) as their text, which a key
/// that takes a whole number refuses and one that takes a fraction (or text) reads as
/// before. The `config` crate rounds a fraction into an integer key and caps one too
/// large: `checkpoint-interval-ms: 0.4` turned checkpoints off without a word, `1e30`
/// became 2^64 - 1 (Spring's binder, which read the original's file, refuses both).
fn fractions_as_text(value: &mut config::Value) {
    match &mut value.kind {
        config::ValueKind::Float(f) if f.fract() != 0.0 || !f.is_finite() || f.abs() >= EXACT => {
            // A large one as the exponent form it was most likely written in (1e30).
            let text = if f.abs() >= EXACT {
                format!("{f:e}")
            } else {
                f.to_string()
            };
            value.kind = config::ValueKind::String(text);
        }
        config::ValueKind::Table(table) => table.values_mut().for_each(fractions_as_text),
        config::ValueKind::Array(items) => items.iter_mut().for_each(fractions_as_text),
        _ => {}
    }
}

impl EnvOverrides {
    /// Refuses overrides whose effect would be silently wrong: the same key twice, or
    /// keys of `actions` when the file gives its actions as a list (the variable would
    /// replace the list with the single-action map).
    fn check_against(&self, path: &Path, file: &str) -> Result<(), ConfigError> {
        if let Some((key, first, second)) = self.same_key_twice() {
            return Err(ConfigError::Invalid {
                file: format!("environment variables {first} and {second}"),
                key: key.to_string(),
                reason: "both set this key (`flink` is `engine` under its old name): keep one"
                    .into(),
            });
        }
        let Some(var) = self.action_var() else {
            return Ok(());
        };
        let map = config::Source::collect(&ConfigFile(path.to_path_buf())).map_err(|cause| {
            ConfigError::Load {
                file: file.to_string(),
                cause,
            }
        })?;
        if map
            .get("actions")
            .is_some_and(|a| matches!(a.kind, config::ValueKind::Array(_)))
        {
            return Err(ConfigError::Invalid {
                file: format!("environment variable {var}"),
                key: "actions".into(),
                reason: format!(
                    "{file} gives its actions as a list, which the environment cannot reach \
                     into (the variable would replace the list); set the key in the file"
                ),
            });
        }
        Ok(())
    }
}

impl config::Source for EnvOverrides {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let origin = "the environment".to_string();
        Ok(self
            .keys
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    config::Value::new(Some(&origin), config::ValueKind::String(v.clone())),
                )
            })
            .collect())
    }
}

impl Settings {
    /// Loads `path` (which must exist) with the process environment on top.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, EnvOverrides::from_env())
    }

    /// The log format the config at `path` and the environment ask for, read alone: a
    /// config the job refuses is reported in its log's format when that much of it can
    /// be read (text otherwise).
    pub fn log_format_of(path: &Path) -> LogFormat {
        let built = config::Config::builder()
            .add_source(ConfigFile(path.to_path_buf()))
            .add_source(EnvOverrides::from_env())
            .build();
        built
            .ok()
            .and_then(|c| c.get_string("logging.format").ok())
            .and_then(|f| LogFormat::try_from(f).ok())
            .unwrap_or_default()
    }

    /// Loads `path` with the given variables as the environment (for tests).
    pub fn load_with_vars(
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, EnvOverrides::from_vars(vars))
    }

    fn load_with_env(path: &Path, env: EnvOverrides) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError::Invalid {
                file,
                key: "--config".into(),
                reason: "no such file".into(),
            });
        }
        let properties = env.kafka_properties.clone();
        env.check_against(path, &file)?;
        let built = config::Config::builder()
            .add_source(ConfigFile(path.to_path_buf()))
            .add_source(env.clone())
            .build()
            .map_err(|cause| ConfigError::Load {
                file: file.clone(),
                cause,
            })?;
        // A key set from the environment is reported as the variable's, not the file's.
        let invalid = |key: String, reason: String| match env.var_for(&key) {
            Some(var) => ConfigError::Invalid {
                file: format!("environment variable {var}"),
                key,
                reason,
            },
            None => ConfigError::Invalid {
                file: file.clone(),
                key: as_written(key, path),
                reason,
            },
        };
        let mut settings: Settings = serde_path_to_error::deserialize(built).map_err(|e| {
            let path = e.path().to_string();
            // Not serde's words, which repeat the value: it may be a secret.
            let reason = if path == "kafka.properties" {
                "give a map of librdkafka properties (`sasl.username: me`)".into()
            } else {
                list_form_hint(number_hint(without_key(e.inner().to_string())))
            };
            invalid(path, reason)
        })?;
        if let Some((key, given)) = bool_given_to_a_number(path, &env) {
            let reason = format!("`{given}` is not a number, which this key takes");
            return Err(invalid(key, reason));
        }
        if let Some(key) = key_without_value(path) {
            return Err(invalid(key, NO_VALUE.into()));
        }
        if let Some((key, written)) = text_given_a_number(path, &env) {
            let reason = format!(
                "YAML reads the unquoted `{written}` as a number, which this key of text would \
                 take as the number printed again (releases before this one did): quote it \
                 (\"{written}\") for the text as written"
            );
            return Err(invalid(key, reason));
        }
        settings.kafka.properties.extend(properties);
        // Only where a Kafka client is made from them: a file job's leftover properties
        // (from a Kafka job's config) are not its concern.
        let uses_kafka =
            settings.source.kind == SourceType::Kafka || settings.dead_letter.topic.is_some();
        let consumes = settings.source.kind == SourceType::Kafka;
        if uses_kafka && let Some((key, reason)) = settings.kafka.property_problem(consumes) {
            return Err(invalid(format!("kafka.properties.{key}"), reason));
        }
        settings
            .validate()
            .map_err(|(key, reason)| (key.to_string(), reason))
            .and_then(|()| settings.actions.check_list())
            .map_err(|(key, reason)| invalid(key, reason))?;
        Ok(settings)
    }

    /// `source.resume` needs a regular file and checkpoints.
    fn check_resume(&self) -> Result<(), (&'static str, String)> {
        if !self.source.resume {
            return Ok(());
        }
        if self.source.kind != SourceType::File {
            return Err((
                "source.resume",
                "only for a file source (a Kafka source always goes on from its checkpoint)".into(),
            ));
        }
        if self.source.path.as_deref() == Some(std::path::Path::new("-")) {
            return Err((
                "source.resume",
                "standard input cannot be read again from an offset: give the file as \
                 source.path, or drop source.resume"
                    .into(),
            ));
        }
        if self.engine.checkpoint_interval_ms == 0 {
            return Err((
                "source.resume",
                "needs checkpoints: set engine.checkpoint-interval-ms above 0".into(),
            ));
        }
        Ok(())
    }

    /// Checks between keys that serde cannot express.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.dead_letter.path.is_some() && self.dead_letter.topic.is_some() {
            return Err(("dead-letter", "give `path` or `topic`, not both".into()));
        }
        if let Err(e) = self.metrics.listen_addr() {
            return Err(("metrics.listen", e.to_string()));
        }
        if self.source.kind == SourceType::File {
            self.source
                .file_path()
                .map_err(|e| ("source.path", e.to_string()))?;
        }
        if let Some(rate) = self.source.max_events_per_second {
            if self.source.kind != SourceType::File {
                return Err((
                    "source.max-events-per-second",
                    "only the file source can be paced".into(),
                ));
            }
            if !(rate.is_finite() && rate > 0.0) {
                return Err((
                    "source.max-events-per-second",
                    format!("{rate} is not a positive rate"),
                ));
            }
        }
        self.check_resume()?;
        let base = &self.profile_api.base_url;
        if !(base.starts_with("http://")
            || base.starts_with("https://")
            || base.starts_with("file://"))
        {
            return Err((
                "profile-api.base-url",
                format!(
                    "`{}` must start with http://, https:// or file://",
                    without_password(base)
                ),
            ));
        }
        if !base.starts_with("file://")
            && let Some(problem) = http_url_problem(base)
        {
            return Err(("profile-api.base-url", problem));
        }
        // Look-ups append `/users/<id>/...` to the text: a query would end up before it
        // (`/api?key=x/users/u1/profile`), and every look-up fail.
        if !base.starts_with("file://") && base.contains(['?', '#']) {
            return Err((
                "profile-api.base-url",
                format!(
                    "`{}` has a query or fragment: look-ups add `/users/<id>/...` to its \
                     path, which would follow them; give a token as `auth-header` instead",
                    without_password(base)
                ),
            ));
        }
        if !self.actions.debug.enabled
            && self.actions.list.is_none()
            && let Some(problem) = http_url_problem(&self.actions.webhook.url)
        {
            return Err(("actions.webhook.url", problem));
        }
        if self.engine.parallelism > MAX_PARALLELISM {
            let reason = format!(
                "{} workers in one process: at most {MAX_PARALLELISM} (each is a thread with \
                 its own state; more processes share a job: README, \"A cluster of processes\")",
                self.engine.parallelism
            );
            return Err(("engine.parallelism", reason));
        }
        for (key, value) in [
            ("profile-api.max-in-flight", self.profile_api.max_in_flight),
            (
                "actions.webhook.max-in-flight",
                self.actions.webhook.max_in_flight,
            ),
            ("engine.parallelism", self.engine.parallelism),
            ("state.max-history", self.state.max_history),
            ("state.max-timers-per-user", self.state.max_timers_per_user),
            (
                "engine.checkpoints-retained",
                self.engine.checkpoints_retained,
            ),
            (
                "engine.checkpoint-full-every",
                self.engine.checkpoint_full_every,
            ),
            ("engine.state-cache-users", self.engine.state_cache_users),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        for (key, secret) in [
            ("actions.webhook.secret", &self.actions.webhook.secret),
            ("profile-api.auth-header", &self.profile_api.auth_header),
        ] {
            if secret.as_ref().is_some_and(Secret::is_blank) {
                return Err((key, EMPTY_SECRET.into()));
            }
        }
        // An empty path wrote checkpoints into the working directory, where no restart
        // looked for them.
        for (key, dir) in [
            ("engine.checkpoint-dir", &self.engine.checkpoint_dir),
            ("engine.state-dir", &self.engine.state_dir),
        ] {
            if dir.to_str().is_some_and(|d| d.trim().is_empty()) {
                let why =
                    "must not be empty or blank: give a directory (`.` for the working directory)";
                return Err((key, why.into()));
            }
        }
        self.engine.check_backend(cfg!(feature = "rocksdb"))?;
        let ttl = self.engine.state_ttl_minutes;
        if !(ttl.is_finite() && ttl * 60_000.0 >= 1.0) {
            return Err((
                "engine.state-ttl-minutes",
                format!("{ttl} is not a positive duration"),
            ));
        }
        Ok(())
    }
}

/// What a key with a default that is written without a value is told.
const NO_VALUE: &str = "no value is given (nothing after the colon, or `~`): give one, or remove the key for \
     its default";

/// The first key written without a value that serde would take as not given, where that
/// is silently wrong: a secret (signing off where an empty one is refused), and a key of
/// an action of the list form that has a default or is the list form's own
/// (`timeout-ms:`, `filter: ~`, as `actions[i].key`). The map form's keys with defaults
/// refuse it themselves (they are not optional); the list form's are, to fall back on
/// the defaults of `actions.webhook`.
fn key_without_value(path: &Path) -> Option<String> {
    let map = config::Source::collect(&ConfigFile(path.to_path_buf())).ok()?;
    // A secret written without a value: signing silently off (`secret:` where the
    // variable meant to fill it was not), where an empty one is refused.
    let at = |section: &str, key: &str| {
        let table = map.get(section)?.clone().into_table().ok()?;
        let inner = match section {
            "actions" => table.get("webhook")?.clone().into_table().ok()?,
            _ => table,
        };
        matches!(inner.get(key)?.kind, config::ValueKind::Nil).then_some(())
    };
    for (section, key, name) in SECRET_KEYS {
        if at(section, key).is_some() {
            return Some(name.to_string());
        }
    }
    let config::ValueKind::Array(items) = &map.get("actions")?.kind else {
        return None;
    };
    items.iter().enumerate().find_map(|(i, item)| {
        let config::ValueKind::Table(keys) = &item.kind else {
            return None;
        };
        keys.iter()
            .filter(|(k, v)| {
                // `pretty` too (`actions.debug.pretty` has a default), and the keys of the
                // list form alone: `filter:` left empty fired the action on every event.
                let needs = ActionSpec::needs_a_value(k)
                    || *k == "pretty"
                    || LIST_FORM_KEYS.contains(&k.as_str())
                    || *k == "secret"
                    || *k == "secret-file";
                matches!(v.kind, config::ValueKind::Nil) && needs
            })
            .map(|(k, _)| format!("actions[{i}].{k}"))
            .min()
    })
}

/// A key of text given an unquoted number that YAML prints otherwise (`0123` is `123`,
/// `0x1F2A` is `7978`, `1.10` is `1.1`), with the text as written: a secret signed with
/// other digits, a group or topic other than the one meant, without a word. Refused
/// rather than read as written: releases before this one took the printed number, and
/// a group's committed offsets or a checkpoint directory hold that name.
fn text_given_a_number(path: &Path, env: &EnvOverrides) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    yaml_text::numbers_printed_otherwise(&text)
        .into_iter()
        .find_map(|(place, written)| {
            let key = place_key(&place)?;
            let text_key = key.starts_with("kafka.properties.") || takes_text(path, env, &key);
            text_key.then_some((key, written))
        })
}

/// `place` as a key of the settings (`engine.x` for `flink.x`, `actions[0].secret`).
fn place_key(place: &[Step]) -> Option<String> {
    let mut key = String::new();
    for step in place {
        match step {
            Step::Key(k) if key.is_empty() && k == "flink" => key.push_str("engine"),
            Step::Key(k) if key.is_empty() => key.push_str(k),
            Step::Key(k) => {
                key.push('.');
                key.push_str(k);
            }
            Step::Item(i) => key.push_str(&format!("[{i}]")),
        }
    }
    (!key.is_empty()).then_some(key)
}

/// Whether `key` takes text: the settings still load with text in its place.
fn takes_text(path: &Path, env: &EnvOverrides, key: &str) -> bool {
    config::Config::builder()
        .add_source(ConfigFile(path.to_path_buf()))
        .add_source(env.clone())
        .set_override(key, "not a number")
        .and_then(|b| b.build())
        .is_ok_and(|probe| serde_path_to_error::deserialize::<_, Settings>(probe).is_ok())
}

/// The keys of secrets: (section, key, as messages name it).
const SECRET_KEYS: [(&str, &str, &str); 4] = [
    ("actions", "secret", "actions.webhook.secret"),
    ("actions", "secret-file", "actions.webhook.secret-file"),
    ("profile-api", "auth-header", "profile-api.auth-header"),
    (
        "profile-api",
        "auth-header-file",
        "profile-api.auth-header-file",
    ),
];

/// A deserializing error's text without the `config` crate's " for key `...`" (in its
/// own spelling, `actions[0]type`): the error names the key already. Keys it names
/// inside the text get their dot back (`actions[0].max-per-user.per`).
fn without_key(reason: String) -> String {
    if reason.starts_with("invalid type: unit value") {
        return NO_VALUE.into();
    }
    // The key (and the file after it) are shown before the reason already.
    let reason = match reason.rfind(" for key `") {
        Some(at) => reason[..at].to_string(),
        None => reason,
    };
    // Its type's name (`expected struct ProfileApiSettings`) says a section of keys.
    let reason = match reason.find(", expected struct ") {
        Some(at) => format!("{}, expected a section of keys (a map)", &reason[..at]),
        None => reason,
    };
    let mut out = String::with_capacity(reason.len() + 4);
    let mut chars = reason.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|n| n.is_ascii_alphanumeric()) {
            out.push('.');
        }
    }
    out
}

/// `key` as the file at `path` writes it: `engine.X` is `flink.X` when the file gives X
/// under the Flink job's `flink:` section.
fn as_written(key: String, path: &Path) -> String {
    let Some(rest) = key.strip_prefix("engine.") else {
        return key;
    };
    let file = config::File::from(path).format(config::FileFormat::Yaml);
    let flink = config::Source::collect(&file)
        .ok()
        .and_then(|mut map| map.remove("flink"))
        .and_then(|flink| flink.into_table().ok())
        .unwrap_or_default();
    let first = rest.split(['.', '[']).next().unwrap_or(rest);
    match flink.contains_key(first) {
        true => format!("flink.{rest}"),
        false => key,
    }
}

/// The keys only an action of the list form takes.
const LIST_FORM_KEYS: [&str; 6] = [
    "name",
    "filter",
    "cooldown",
    "max-per-user",
    "delay",
    "cancel-if",
];

/// What is wrong with a number given to a key that takes a whole number, in words: the
/// `config` crate says a negative one from the file is not "an unsigned 64 bit or less
/// integer", and any it cannot read as one from the environment (text) or with a
/// fraction is not "an integer"; serde says a negative one in an action's map
/// (`count: -1`) is not a `u32`.
fn number_hint(reason: String) -> String {
    let text = reason
        .strip_prefix("invalid type: string \"")
        .and_then(|r| r.rsplit_once("\", expected "))
        .filter(|(_, what)| *what == "an integer" || what.starts_with('u') || what.starts_with('i'))
        .map(|(n, _)| n)
        .or_else(|| {
            reason
                .strip_prefix("invalid type: 64-bit integer `")
                .and_then(|r| r.strip_suffix("`, expected an unsigned 64 bit or less integer"))
        })
        // serde's own, of an action's map (`count: -1`).
        .or_else(|| {
            reason
                .strip_prefix("invalid value: integer `")
                .and_then(|r| r.split_once("`, expected u"))
                .map(|(n, _)| n)
        });
    let Some(n) = text else {
        return reason;
    };
    if n.trim() != n {
        return format!("\"{n}\" has spaces around the number: write it alone");
    }
    if n.parse::<i128>().is_ok_and(|v| v < 0) {
        return format!("{n} is negative, which this key cannot be");
    }
    if n.parse::<u128>().is_ok() {
        return format!("{n} is too large for this key");
    }
    match n.parse::<f64>() {
        // `inf`, `nan` (Rust reads them as floats; no JSON or YAML number is written so).
        Ok(_) if !n.bytes().any(|b| b.is_ascii_digit()) => format!("{n} is not a number"),
        Ok(f) if !f.is_finite() => format!("{n} is too large for this key"),
        Ok(f) if f.fract() != 0.0 => {
            format!("{n} is not a whole number: give one without a fraction")
        }
        Ok(f) if f.abs() >= EXACT => format!("{n} is too large for this key"),
        Ok(f) if f < 0.0 => format!("{n} is negative, which this key cannot be"),
        Ok(f) => format!("write {n} as digits alone: {}", f.abs() as u64),
        Err(_) => reason,
    }
}

/// An unknown-field error for a key of the list form given in the single-action map
/// (`actions.webhook.delay`) says where the key goes.
fn list_form_hint(reason: String) -> String {
    let Some(key) = LIST_FORM_KEYS
        .iter()
        .find(|k| reason.starts_with(&format!("unknown field `{k}`")))
    else {
        return reason;
    };
    format!(
        "{reason}; `{key}` is a key of an action in the list form: `actions: [ {{type: webhook, url: ..., {key}: ...}} ]` (README, \"Several actions\")"
    )
}

/// Why `url` is not an `http://` or `https://` URL with a host, if it is not (a
/// request to it could never be made: better refused at the start than failed on
/// every call).
fn http_url_problem(url: &str) -> Option<String> {
    let shown = without_password(url);
    if url.trim().is_empty() {
        return Some("missing: give the receiver's URL (http://... or https://...)".into());
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Some(format!("`{shown}` must start with http:// or https://"));
    }
    match url::Url::parse(url) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => None,
        Ok(_) => Some(format!("`{shown}` has no host")),
        Err(e) => Some(format!(
            "`{shown}` is not a valid URL: {e}{}",
            credentials_hint(url)
        )),
    }
}

/// `url` as messages show it: a password written in it (`user:pass@host`) as `***`,
/// found by the text alone (the URL may not parse: that is what the message says; the
/// scheme may be missing or misspelled, the password may hold an unencoded `/`).
pub fn without_password(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let mut start = url[..at].find("//").map_or(0, |i| i + 2);
    // A scheme without its slashes (`http:alice:pw@...`) is not the user.
    if start == 0
        && let Some(colon) = url[..at].find(':')
        && url[..colon].bytes().all(|b| b.is_ascii_alphabetic())
        && url[colon + 1..at].contains(':')
    {
        start = colon + 1;
    }
    while url[start..at].starts_with('/') {
        start += 1;
    }
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_string(),
    }
}

/// What a URL that does not parse needs when it holds credentials: a password's `/`,
/// `?`, `#` or `@` ends the part before the host (the error is then about a port).
fn credentials_hint(url: &str) -> &'static str {
    if url.contains('@') {
        " (a user or password in the URL must have `/`, `?`, `#`, `@` and `:` percent-encoded: \
         `%2F`, `%3F`, `%23`, `%40`, `%3A`)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(yaml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut f = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        Settings::load_with_vars(
            f.path(),
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    /// A run whose action is the debug print says that the webhook beside it (here
    /// given by the environment, with a password) is not called, and how to call it;
    /// a webhook run or the list form says nothing.
    #[test]
    fn the_debug_print_says_the_webhook_beside_it_is_not_called() {
        let src = "source:\n  type: file\n  path: x.jsonl\n";
        let url = [(
            "EVENT_TRIGGER__ACTIONS__WEBHOOK__URL",
            "http://me:secret@hooks.example/in",
        )];
        let debug = format!("{src}actions:\n  debug:\n    enabled: true\n");
        let note = load(&debug, &url).unwrap().actions.debug_note().unwrap();
        assert!(
            note.contains(
                "the webhook http://me:***@hooks.example/in (actions.webhook.url) is not called"
            ) && note.contains("EVENT_TRIGGER__ACTIONS__DEBUG__ENABLED=false"),
            "{note}"
        );
        let off = debug.replace("true", "false");
        assert_eq!(load(&off, &url).unwrap().actions.debug_note(), None);
        let list = format!("{src}actions:\n  - type: debug\n");
        assert_eq!(load(&list, &[]).unwrap().actions.debug_note(), None);
    }

    /// The error `yaml` with `vars` fails to load with, as the user reads it.
    fn load_err(yaml: &str, vars: &[(&str, &str)]) -> String {
        load(yaml, vars).unwrap_err().to_string()
    }

    /// Asserts the secret `key` set empty by the variable `var` is refused naming both.
    fn empty_from_the_environment_is_refused_naming_it(var: &str, key: &str) {
        let e = load_err("source:\n  type: kafka\n", &[(var, "")]);
        let want = format!("environment variable {var}: `{key}`: the value is empty");
        assert!(e.starts_with(&want), "{e}");
    }

    /// Asserts `yaml` fails to load with an error that names `key`.
    fn fails_naming(yaml: &str, key: &str) {
        let err = load_err(yaml, &[]);
        assert!(err.contains(key), "{err}");
    }

    /// `metrics.listen` takes an address or a host name with a port (resolved, IPv4
    /// first); anything else is refused with what is wrong.
    #[test]
    fn metrics_listen_takes_an_address_or_a_host_name() {
        let listen = |text: &str| {
            MetricsSettings {
                listen: Some(text.into()),
                ..Default::default()
            }
            .listen_addr()
        };
        let (addr, explicit) = listen("localhost:9898").unwrap().unwrap();
        assert!(
            addr.ip().is_loopback() && addr.port() == 9898 && explicit,
            "{addr}"
        );
        assert_eq!(
            listen("0.0.0.0:1").unwrap().unwrap().0.to_string(),
            "0.0.0.0:1"
        );
        assert!(listen(" ").unwrap().is_none());
        for bad in ["nonsense", "localhost", "localhost:http", ":9898"] {
            let e = listen(bad).unwrap_err().to_string();
            assert!(e.contains("is not host:port"), "{bad}: {e}");
        }
        let e = listen(":9898").unwrap_err().to_string();
        assert!(
            e.contains("`127.0.0.1:9898` for this machine only, `0.0.0.0:9898` for every"),
            "{e}"
        );
        let e = listen("localhost:99999").unwrap_err().to_string();
        assert!(e.contains("port 99999 is past 65535"), "{e}");
        let e = listen("http://localhost:9898/metrics")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("alone, `localhost:9898`, without `http://`"),
            "{e}"
        );
    }

    #[test]
    fn urls_that_no_request_could_use_are_refused_naming_their_key() {
        let src = "source:\n  type: file\n  path: /dev/null\n";
        for (yaml, key) in [
            (
                "profile-api:\n  base-url: \"http://bad host:1\"\n",
                "profile-api.base-url",
            ),
            (
                "actions:\n  debug:\n    enabled: false\n  webhook:\n    url: \"http://\"\n",
                "actions.webhook.url",
            ),
            (
                "actions:\n  - type: webhook\n    url: \"http://exa mple.com/x\"\n",
                "actions[0].url",
            ),
        ] {
            fails_naming(&format!("{src}{yaml}"), key);
        }
        assert_eq!(http_url_problem("https://a.example:8443/x"), None);
        assert_eq!(
            without_key("`x` is not one of `a` for key `actions[0]type`".into()),
            "`x` is not one of `a`"
        );
        assert!(http_url_problem("http://").is_some());
        let e = load_err("profile-api: \"http://h\"\n", &[]);
        assert!(
            e.contains("`profile-api`: invalid type: string \"http://h\", expected a section of keys (a map)"),
            "{e}"
        );
        let e = load_err("actions:\n  - type: webhook\n    name: w\n", &[]);
        assert!(
            e.contains("`actions[0].url`: missing: give the receiver's URL"),
            "{e}"
        );
        let e = load_err("profile-api:\n  base-url: 'http://h/api/v1?key=abc'\n", &[]);
        assert!(
            e.contains("`profile-api.base-url`: `http://h/api/v1?key=abc` has a query"),
            "{e}"
        );
        // A password in the URL is not shown, whether or not the URL parses.
        for (url, shown) in [
            (
                "http://alice:hunter2@exa mple.com/x",
                "http://alice:***@exa mple.com/x",
            ),
            ("ftp://a:b@c/d", "ftp://a:***@c/d"),
            ("http://alice@host:99999/x", "http://alice@host:99999/x"),
            ("alice:PwD9x@127.0.0.1:8080/w", "alice:***@127.0.0.1:8080/w"),
            ("http//alice:PwD9x@h/w", "http//alice:***@h/w"),
            ("http:/alice:PwD9x@h/w", "http:/alice:***@h/w"),
            ("http:alice:PwD9x@h/w", "http:alice:***@h/w"),
            (
                "http://alice:Pw/D9x@127.0.0.1/w",
                "http://alice:***@127.0.0.1/w",
            ),
            ("http://alice:p@ss@h/w", "http://alice:***@h/w"),
            ("http://h/x", "http://h/x"),
        ] {
            assert_eq!(without_password(url), shown, "{url}");
        }
        // (file, the password, what the message says)
        for (yaml, password, says) in [
            (
                "actions:\n  webhook:\n    url: 'http://alice:Pw/D9x@127.0.0.1/w'\n",
                "D9x",
                "percent-encoded",
            ),
            (
                "actions:\n  - type: webhook\n    url: 'alice:PwD9x@127.0.0.1:8080/w'\n",
                "PwD9x",
                "actions[0].url",
            ),
            (
                "actions:\n  webhook:\n    url: 'http://alice:hunter2@exa mple.com/x'\n",
                "hunter2",
                "alice:***@",
            ),
            (
                "profile-api:\n  base-url: 'ftp://alice:hunter2@host/'\n",
                "hunter2",
                "profile-api.base-url",
            ),
        ] {
            let e = load_err(yaml, &[]);
            assert!(!e.contains(password) && e.contains(says), "{e}");
        }
    }
    #[test]
    fn actions_come_as_the_single_map_or_as_a_list() {
        let src = "source:\n  type: file\n  path: x.jsonl\n";
        let one = load(
            &format!("{src}actions:\n  webhook:\n    url: http://a/x\n"),
            &[],
        )
        .unwrap();
        let specs = one.actions.specs();
        assert_eq!(specs.len(), 1);
        assert_eq!(
            (specs[0].0.as_str(), specs[0].1.url.as_deref()),
            ("webhook", Some("http://a/x"))
        );
        let debug = load(
            &format!("{src}actions:\n  debug:\n    enabled: true\n"),
            &[],
        )
        .unwrap();
        assert_eq!(debug.actions.specs()[0].1.kind, ActionKind::Debug);
        let list = load(
            &format!("{src}actions:\n  - type: webhook\n    url: http://a/x\n    retry-attempts: 1\n  - type: debug\n    name: print\n    filter: 'true'\n"),
            &[],
        )
        .unwrap();
        let specs = list.actions.specs();
        assert_eq!(specs[0].0, "webhook-0");
        assert_eq!(specs[0].1.webhook().retry_attempts, 1);
        assert_eq!(
            specs[0].1.webhook().timeout_ms,
            5000,
            "the webhook defaults"
        );
        assert_eq!(
            (specs[1].0.as_str(), specs[1].1.filter.as_deref()),
            ("print", Some("true"))
        );
        // Mistakes name the action and the key.
        fails_naming(
            &format!("{src}actions:\n  - type: webhook\n"),
            "actions[0].url",
        );
        fails_naming(
            &format!("{src}actions:\n  - type: debug\n    url: http://a\n"),
            "actions[0]",
        );
        fails_naming(&format!("{src}actions:\n  - type: webhok\n"), "webhok");
        fails_naming(
            &format!("{src}actions:\n  - type: debug\n    urll: x\n"),
            "urll",
        );
        fails_naming(
            &format!("{src}actions:\n  - type: debug\n    name: a\n  - type: debug\n    name: a\n"),
            "actions[1].name",
        );
        fails_naming(&format!("{src}actions: []\n"), "actions");
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let s = load("source:\n  type: file\n  path: x.jsonl\n", &[]).unwrap();
        assert_eq!(s.profile_api.timeout_ms, 5000);
        assert_eq!(s.actions.webhook.retry_attempts, 3);
        assert_eq!(s.dead_letter.path, None);
        assert_eq!(s.state.max_history, 100);
        assert_eq!(s.engine.state_ttl_ms(), 600_000);
        assert_eq!(s.source.kind, SourceType::File);
    }

    #[test]
    fn concurrency_is_adaptive_unless_a_number_is_given_in_any_form_of_the_config() {
        let src = "source:\n  type: file\n  path: x.jsonl\n";
        let d = load(src, &[]).unwrap();
        assert_eq!(d.profile_api.concurrency, Concurrency::Adaptive);
        assert_eq!(d.actions.webhook.concurrency, Concurrency::Adaptive);
        assert_eq!(d.profile_api.max_wait_on_failure_ms, 30_000);
        let s = load(
            &format!("{src}profile-api:\n  concurrency: 16\n  max-wait-on-failure-ms: 0\nactions:\n  - type: webhook\n    url: http://a/x\n    concurrency: adaptive\n  - type: webhook\n    url: http://b/x\n    concurrency: 4\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.profile_api.concurrency, Concurrency::Fixed(16));
        assert_eq!(s.profile_api.max_wait_on_failure_ms, 0);
        let specs = s.actions.specs();
        assert_eq!(specs[0].1.webhook().concurrency, Concurrency::Adaptive);
        assert_eq!(specs[1].1.webhook().concurrency, Concurrency::Fixed(4));
        let env = load(
            src,
            &[
                ("EVENT_TRIGGER__PROFILE_API__CONCURRENCY", "32"),
                ("EVENT_TRIGGER__ACTIONS__WEBHOOK__CONCURRENCY", "adaptive"),
            ],
        )
        .unwrap();
        assert_eq!(env.profile_api.concurrency, Concurrency::Fixed(32));
        assert_eq!(env.actions.webhook.concurrency, Concurrency::Adaptive);
        fails_naming(
            &format!("{src}profile-api:\n  concurrency: 0\n"),
            "profile-api.concurrency",
        );
        fails_naming(
            &format!("{src}actions:\n  webhook:\n    concurrency: lots\n"),
            "actions.webhook.concurrency",
        );
    }

    #[test]
    fn a_key_without_a_value_and_a_typo_under_flink_are_named_as_written() {
        let src = "source:\n  type: file\n  path: /dev/null\n";
        let err = load(&format!("{src}engine:\n  checkpoint-compression:\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`engine.checkpoint-compression`: no value is given"),
            "{err}"
        );
        let err = load(&format!("{src}flink:\n  paralelism: 2\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`flink.paralelism`: unknown field"), "{err}");
        let err = load(&format!("{src}flink:\n  parallelism: x\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`flink.parallelism`"), "{err}");
        assert!(!err.contains("engine.parallelism"), "{err}");
        let err = load(&format!("{src}flink:\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`flink`: no value is given"), "{err}");
        assert_eq!(err.matches("no value").count(), 1, "{err}");
        let err = load(
            &format!("{src}flink:\n  parallelism: 1\nengine:\n  state-backend: x\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`engine.state-backend`"), "{err}");
    }

    /// A webhook key with a default written without a value is refused in the list form
    /// as in the map form (serde read it as not given, and the default took its place);
    /// an optional key without a value is not given, in both forms.
    #[test]
    fn a_list_form_action_key_without_a_value_is_refused_as_in_the_map_form() {
        let src = "source:\n  type: file\n  path: /dev/null\n";
        for (action, key) in [
            ("url: http://a/x\n    timeout-ms:", "actions[0].timeout-ms"),
            (
                "url: http://a/x\n    retry-attempts: ~",
                "actions[0].retry-attempts",
            ),
            ("url:", "actions[0].url"),
            (
                "url: http://a/x\n    ordering: any\n    concurrency:",
                "actions[0].concurrency",
            ),
        ] {
            for (form, named) in [
                ("- type: webhook\n    ", key.to_string()),
                (
                    "webhook:\n    ",
                    key.replace("actions[0]", "actions.webhook"),
                ),
            ] {
                let yaml = format!("{src}actions:\n  {form}{action}\n");
                let err = load_err(&yaml, &[]);
                assert!(
                    err.contains(&format!("`{named}`: no value is given")),
                    "{yaml}: {err}"
                );
            }
        }
        for key in ["pretty", "filter", "cancel-if", "cooldown", "name"] {
            let e = load_err(
                &format!("{src}actions:\n  - type: debug\n    {key}: ~\n"),
                &[],
            );
            assert!(e.contains(&format!("`actions[0].{key}`: no value")), "{e}");
        }
        let second = "- type: debug\n  - type: webhook\n    url: http://a/x\n    max-in-flight:";
        let err = load_err(&format!("{src}actions:\n  {second}\n"), &[]);
        assert!(
            err.contains("`actions[1].max-in-flight`: no value"),
            "{err}"
        );
        for form in ["- type: webhook\n    ", "webhook:\n    "] {
            let yaml = format!("{src}actions:\n  {form}url: http://a/x\n    ca-file:\n");
            let s = load(&yaml, &[]).unwrap();
            assert_eq!(s.actions.specs()[0].1.webhook().ca_file, None, "{yaml}");
        }
    }

    #[test]
    fn the_flink_section_takes_environment_overrides_and_merges_with_engine() {
        let flink = "source:\n  type: file\n  path: x.jsonl\nflink:\n  parallelism: 1\n  state-ttl-minutes: 5\n";
        for var in [
            "EVENT_TRIGGER__ENGINE__PARALLELISM",
            "EVENT_TRIGGER__FLINK__PARALLELISM",
        ] {
            let s = load(flink, &[(var, "2")]).unwrap();
            assert_eq!(s.engine.parallelism, 2, "{var}");
            assert_eq!(s.engine.state_ttl_ms(), 300_000, "{var}");
        }
        let both = load(
            &format!("{flink}engine:\n  checkpoint-interval-ms: 0\n"),
            &[],
        )
        .unwrap();
        assert_eq!(both.engine.checkpoint_interval_ms, 0);
        assert_eq!(both.engine.state_ttl_ms(), 300_000);
        let err = load(&format!("{flink}engine:\n  parallelism: 4\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`parallelism` is given under both `engine:` and `flink:`"),
            "{err}"
        );
    }

    #[test]
    fn rocksdb_without_rocksdb_built_in_names_the_command_that_builds_it() {
        let engine = EngineSettings {
            state_backend: StateBackend::Rocksdb,
            ..Default::default()
        };
        let (key, reason) = engine.check_backend(false).unwrap_err();
        assert_eq!(key, "engine.state-backend");
        assert!(
            reason
                .contains("source scripts/rocksdb.sh && cargo build --release --features rocksdb"),
            "{reason}"
        );
        assert_eq!(engine.check_backend(true), Ok(()));
        assert_eq!(EngineSettings::default().check_backend(false), Ok(()));
    }

    #[test]
    fn overrides_that_would_be_silently_wrong_are_refused() {
        let src = "source:\n  type: file\n  path: x.jsonl\n";
        let err = load(
            src,
            &[
                ("EVENT_TRIGGER__FLINK__PARALLELISM", "2"),
                ("EVENT_TRIGGER__ENGINE__PARALLELISM", "3"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("both set this key"), "{err}");
        assert!(err.contains("EVENT_TRIGGER__FLINK__PARALLELISM"), "{err}");
        let list = format!("{src}actions:\n  - type: webhook\n    url: http://a/x\n");
        let err = load(
            &list,
            &[("EVENT_TRIGGER__ACTIONS__WEBHOOK__ORDERING", "per-user")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "environment variable EVENT_TRIGGER__ACTIONS__WEBHOOK__ORDERING: `actions`: "
            ),
            "{err}"
        );
        // On the single-action map the same variable applies.
        let map = format!("{src}actions:\n  webhook:\n    url: http://a/x\n");
        let s = load(
            &map,
            &[("EVENT_TRIGGER__ACTIONS__WEBHOOK__ORDERING", "per-user")],
        )
        .unwrap();
        assert_eq!(s.actions.webhook.ordering, CallOrder::PerUser);
        // A bad choice lists the good ones.
        let err = load(&format!("{src}engine:\n  state-backend: RocksDB\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`RocksDB` is not one of `hashmap`, `rocksdb`"),
            "{err}"
        );
        let plain = load(
            &format!("{src}engine:\n  checkpoint-compression: none\n"),
            &[],
        );
        assert_eq!(
            plain.unwrap().engine.checkpoint_compression,
            CheckpointCompression::None
        );
        let whole = load(
            &format!("{src}engine:\n  checkpoint-compression: lz4-whole\n"),
            &[],
        );
        assert_eq!(
            whole.unwrap().engine.checkpoint_compression,
            CheckpointCompression::Lz4Whole
        );
        let err = load(
            &format!("{src}engine:\n  checkpoint-compression: zstd\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`zstd` is not one of `lz4`, `lz4-whole`, `none`"),
            "{err}"
        );
        let err = load(src, &[("EVENT_TRIGGER__ENGIN__PARALLELISM", "2")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable EVENT_TRIGGER__ENGIN__PARALLELISM"),
            "{err}"
        );
    }

    /// Checkpoints compress whole parts and write deltas as they are unless told
    /// otherwise; an empty checkpoint or state directory is refused (from the file and
    /// from the environment, naming it), not taken for the working directory.
    #[test]
    fn checkpoint_defaults_and_empty_directories() {
        let src = "source:\n  type: file\n  path: x.jsonl\n";
        let s = load(src, &[]).unwrap();
        assert_eq!(
            s.engine.checkpoint_compression,
            CheckpointCompression::Lz4Whole
        );
        for c in [
            CheckpointCompression::Lz4,
            CheckpointCompression::Lz4Whole,
            CheckpointCompression::None,
        ] {
            let yaml = format!("{src}engine:\n  checkpoint-compression: {}\n", c.name());
            assert_eq!(load(&yaml, &[]).unwrap().engine.checkpoint_compression, c);
        }
        for (key, value) in [
            ("checkpoint-dir", ""),
            ("state-dir", ""),
            ("checkpoint-dir", "  "),
        ] {
            let e = load_err(&format!("{src}engine:\n  {key}: \"{value}\"\n"), &[]);
            assert!(
                e.contains(&format!("engine.{key}")) && e.contains("must not be empty"),
                "{e}"
            );
        }
        let var = "EVENT_TRIGGER__ENGINE__CHECKPOINT_DIR";
        let e = load_err(src, &[(var, "")]);
        assert!(e.contains(var) && e.contains("must not be empty"), "{e}");
    }

    /// A fraction given to a key that takes a whole number is refused, not rounded
    /// (`checkpoint-interval-ms: 0.4` turned checkpoints off); a negative one says so,
    /// from the file and from the environment; keys that take fractions still do.
    #[test]
    fn a_number_a_key_cannot_take_is_refused_saying_why() {
        let src = "source:\n  type: file\n  path: x.jsonl\n";
        let with = |engine: &str| format!("{src}engine:\n  {engine}\n");
        let err = load_err;
        let e = err(&with("checkpoint-interval-ms: 0.4"), &[]);
        assert!(
            e.contains("`engine.checkpoint-interval-ms`: 0.4 is not a whole number"),
            "{e}"
        );
        let e = err(&format!("{src}flink:\n  parallelism: 1.5\n"), &[]);
        assert!(
            e.contains("`flink.parallelism`: 1.5 is not a whole number"),
            "{e}"
        );
        let e = err(&with("checkpoint-interval-ms: -5"), &[]);
        assert!(
            e.contains("-5 is negative, which this key cannot be"),
            "{e}"
        );
        let var = "EVENT_TRIGGER__ENGINE__CHECKPOINT_INTERVAL_MS";
        let e = err(src, &[(var, "-5")]);
        assert!(
            e.starts_with(&format!("environment variable {var}: "))
                && e.contains("-5 is negative, which this key cannot be"),
            "{e}"
        );
        let e = err(src, &[(var, "2.5")]);
        assert!(e.contains("2.5 is not a whole number"), "{e}");
        let e = err(src, &[(var, "abc")]);
        assert!(
            e.contains("invalid type: string \"abc\", expected an integer"),
            "{e}"
        );
        for (given, says) in [
            ("5.0", "write 5.0 as digits alone: 5"),
            ("1e3", "write 1e3 as digits alone: 1000"),
            ("inf", "inf is not a number"),
            ("NaN", "NaN is not a number"),
            (
                " 5000 ",
                "\" 5000 \" has spaces around the number: write it alone",
            ),
            (
                "18446744073709551616",
                "18446744073709551616 is too large for this key",
            ),
        ] {
            let e = err(src, &[(var, given)]);
            assert!(e.contains(says), "{given}: {e}");
        }
        // A number too large to be exact is refused, not capped at 2^64 - 1.
        let e = err(&with("checkpoint-interval-ms: 1e30"), &[]);
        assert!(e.contains("1e30 is too large for this key"), "{e}");
        let e = err(&with("parallelism: 100000"), &[]);
        assert!(
            e.contains("100000 workers in one process: at most 1024"),
            "{e}"
        );
        let s = load(
            &with("state-ttl-minutes: 0.5\n  checkpoint-interval-ms: 1e3"),
            &[],
        )
        .unwrap();
        assert_eq!(s.engine.state_ttl_minutes, 0.5);
        assert_eq!(s.engine.checkpoint_interval_ms, 1000);
    }

    /// `true` and `false` given to a key that takes a number are refused, not read as 1
    /// and 0 (`checkpoint-interval-ms: false` turned checkpoints off), from the file, the
    /// list form of `actions` and the environment; keys that take booleans still do.
    #[test]
    fn a_boolean_given_to_a_number_is_refused() {
        let src = "source:\n  type: file\n  path: x.jsonl\n  resume: true\n";
        let err = load_err;
        let e = err(
            &format!("{src}engine:\n  checkpoint-interval-ms: false\n"),
            &[],
        );
        assert!(
            e.contains("`engine.checkpoint-interval-ms`: `false` is not a number"),
            "{e}"
        );
        let e = err(&format!("{src}flink:\n  state-ttl-minutes: true\n"), &[]);
        assert!(
            e.contains("`flink.state-ttl-minutes`: `true` is not a number"),
            "{e}"
        );
        let var = "EVENT_TRIGGER__STATE__MAX_HISTORY";
        let e = err(src, &[(var, "Yes")]);
        assert!(
            e.starts_with(&format!("environment variable {var}: "))
                && e.contains("`Yes` is not a number"),
            "{e}"
        );
        // YAML reads `yes`, `on`, `off` and `no` as text, which the `config` crate read
        // as 1 and 0 where a number is taken.
        for (yaml, key, given) in [
            ("state: { max-history: yes }\n", "state.max-history", "yes"),
            (
                "engine:\n  checkpoint-interval-ms: off\n",
                "engine.checkpoint-interval-ms",
                "off",
            ),
            ("flink:\n  parallelism: \"ON\"\n", "flink.parallelism", "ON"),
        ] {
            let e = err(&format!("{src}{yaml}"), &[]);
            assert!(
                e.contains(&format!("`{key}`: `{given}` is not a number")),
                "{e}"
            );
        }
        let list = "actions:\n  - type: webhook\n    url: http://x/\n    timeout-ms: true\n";
        let e = err(&format!("{src}{list}"), &[]);
        assert!(
            e.contains("`actions[0].timeout-ms`: `true` is not a number"),
            "{e}"
        );
        let e = err(&format!("{src}{}", list.replace("true", "no")), &[]);
        assert!(
            e.contains("`actions[0].timeout-ms`: `no` is not a number"),
            "{e}"
        );
        let fine = format!("{src}actions:\n  debug:\n    enabled: yes\n    pretty: off\n");
        let s = load(&fine, &[("EVENT_TRIGGER__SOURCE__STRICT_TYPES", "true")]).unwrap();
        assert!(s.source.resume && s.source.strict_types && s.actions.debug.enabled);
        assert!(!s.actions.debug.pretty);
        let s = load(&format!("{src}kafka:\n  consumer-group-id: on\n"), &[]).unwrap();
        assert_eq!(s.kafka.consumer_group_id, "on");
    }

    /// YAML's infinities and not-a-number, which the `config` crate cannot read, are
    /// refused naming their key (the whole file failed with "Parsing .inf as floating
    /// point number failed" and no key).
    #[test]
    fn an_infinite_number_is_refused_naming_its_key() {
        let src = "source:\n  type: file\n  path: x.jsonl\n";
        for (yaml, key, value) in [
            (
                "engine:\n  checkpoint-interval-ms: .inf\n",
                "engine.checkpoint-interval-ms",
                ".inf",
            ),
            (
                "flink:\n  state-ttl-minutes: -.Inf\n",
                "flink.state-ttl-minutes",
                "-.Inf",
            ),
            (
                "state: { max-history: .nan }\n",
                "state.max-history",
                ".nan",
            ),
            (
                "actions:\n  - type: webhook\n    timeout-ms: .NaN\n",
                "actions[0].timeout-ms",
                ".NaN",
            ),
        ] {
            let e = load_err(&format!("{src}{yaml}"), &[]);
            assert!(
                e.contains(&format!(
                    "`{key}`: `{value}` is YAML's infinity or not-a-number, which no key \
                     takes: give a finite number, or quote it (\"{value}\") if it is text"
                )),
                "{yaml}: {e}"
            );
        }
    }

    #[test]
    fn a_mistake_set_from_the_environment_names_the_variable() {
        let src = "source:\n  type: file\n  path: x.jsonl\n";
        let err = load(src, &[("EVENT_TRIGGER__PROFILE_API__TIMEOUTMS", "5")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable EVENT_TRIGGER__PROFILE_API__TIMEOUTMS: "),
            "{err}"
        );
        assert!(err.contains("unknown field `timeoutms`"), "{err}");
        let err = load(src, &[("EVENT_TRIGGER__FLINK__PARALLELISM", "many")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "environment variable EVENT_TRIGGER__FLINK__PARALLELISM: `engine.parallelism`"
            ),
            "{err}"
        );
        let err = load(src, &[("EVENT_TRIGGER__PROFILE_API__BASE_URL", "ftp://x")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable EVENT_TRIGGER__PROFILE_API__BASE_URL: "),
            "{err}"
        );
        // The file's own mistakes still name the file.
        let err = load(&format!("{src}profile-api:\n  timeoutms: 5\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(".yml: `profile-api.timeoutms`: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_the_file_with_hyphens_as_underscores() {
        let s = load(
            "profile-api:\n  base-url: http://a\n  timeout-ms: 10\n",
            &[
                ("EVENT_TRIGGER__PROFILE_API__BASE_URL", "http://b:1"),
                ("EVENT_TRIGGER__PROFILE_API__TIMEOUT_MS", "250"),
                ("EVENT_TRIGGER__ACTIONS__DEBUG__ENABLED", "true"),
                ("OTHER__PROFILE_API__BASE_URL", "http://ignored"),
            ],
        )
        .unwrap();
        assert_eq!(s.profile_api.base_url, "http://b:1");
        assert_eq!(s.profile_api.timeout_ms, 250);
        assert!(s.actions.debug.enabled);
    }

    #[test]
    fn the_webhook_keys_mean_the_same_in_the_map_and_in_a_list_action() {
        let map = load(
            "actions:\n  webhook:\n    url: https://a/x\n    secret-file: /s\n    retry-attempts: 7\n",
            &[],
        )
        .unwrap();
        let (_, single) = &map.actions.specs()[0];
        assert_eq!(single.webhook(), map.actions.webhook);
        let list = load(
            "actions:\n  - type: webhook\n    url: https://a/x\n    secret-file: /s\n    retry-attempts: 7\n",
            &[],
        )
        .unwrap();
        assert_eq!(list.actions.specs()[0].1.webhook(), map.actions.webhook);
        fails_naming(
            "actions:\n  - type: debug\n    secret-file: /s\n",
            "actions[0]",
        );
        fails_naming(
            "actions:\n  - type: webhook\n    retry-attempt: 1\n",
            "retry-attempt",
        );
    }

    #[test]
    fn caps_delays_and_cancel_conditions_are_read_and_checked_per_action() {
        let src =
            "source:\n  type: file\n  path: x.jsonl\nactions:\n  - type: debug\n    name: a\n";
        let s = load(
            &format!("{src}    cooldown: 1h\n    max-per-user: {{count: 3, per: 24h}}\n    delay: 30m\n    cancel-if: 'event.event_type == \"purchase\"'\n"),
            &[],
        )
        .unwrap();
        let (_, a) = &s.actions.specs()[0];
        assert_eq!(a.cooldown.map(|d| d.0), Some(3_600_000));
        assert_eq!(a.delay.map(|d| d.0), Some(1_800_000));
        assert_eq!(
            a.max_per_user.map(|m| (m.count, m.per.0)),
            Some((3, 86_400_000))
        );
        assert!(a.cancel_if.is_some());
        // A count in quotes is the number, as in every number key.
        let quoted = load(
            &format!("{src}    max-per-user: {{count: \"3\", per: 1h}}\n"),
            &[],
        );
        let (_, a) = &quoted.unwrap().actions.specs()[0];
        assert_eq!(a.max_per_user.map(|m| m.count), Some(3));
        for (yaml, key, says) in [
            (
                "    cooldown: 3600\n",
                "cooldown",
                "`3600` is not a duration",
            ),
            ("    delay: 0s\n", "actions[0].delay", "longer than 0"),
            (
                "    max-per-user: {count: 0, per: 1h}\n",
                "actions[0].max-per-user.count",
                "at least 1",
            ),
            (
                "    max-per-user: {count: 2}\n",
                "actions[0].max-per-user",
                "{count: 3, per: 24h}",
            ),
            (
                "    max-per-user: 3\n",
                "actions[0].max-per-user",
                "{count: 3, per: 24h}",
            ),
            (
                "    max-per-user: {count: \"99999999999\", per: 1h}\n",
                "actions[0].max-per-user",
                "99999999999 is too large for this key",
            ),
            (
                "    max-per-user: {count: \"3.0\", per: 1h}\n",
                "actions[0].max-per-user",
                "write 3.0 as digits alone: 3",
            ),
            (
                "    max-per-user: {count: -1, per: 1h}\n",
                "actions[0].max-per-user",
                "-1 is negative, which this key cannot be",
            ),
            ("    delay: 400d\n", "actions[0].delay", "at most 365d"),
            (
                "    cancel-if: 'true'\n",
                "actions[0].cancel-if",
                "give the action a `delay`",
            ),
        ] {
            let err = load(&format!("{src}{yaml}"), &[]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{yaml}: {err}");
        }
        fails_naming(
            "state:\n  max-timers-per-user: 0\n",
            "state.max-timers-per-user",
        );
        let unnamed =
            "source:\n  type: file\n  path: x.jsonl\nactions:\n  - type: debug\n    delay: 1s\n";
        let err = load(unnamed, &[]).unwrap_err().to_string();
        assert!(
            err.contains("actions[0].name") && err.contains("needs a `name`"),
            "{err}"
        );
        let map_form = "source:\n  type: file\n  path: x.jsonl\nactions:\n  webhook:\n    url: http://a/x\n    delay: 2s\n";
        let err = load(map_form, &[]).unwrap_err().to_string();
        assert!(err.contains("list form"), "{err}");
    }

    #[test]
    fn unknown_key_fails_naming_it() {
        fails_naming("profile-api:\n  timeout-msx: 10\n", "timeout-msx");
        fails_naming("dead-letter:\n  paht: x\n", "paht");
        fails_naming(
            "actions:\n  webhook:\n    retry-attempts: -1\n",
            "retry-attempts",
        );
        fails_naming("engnie:\n  parallelism: 2\n", "engnie");
    }

    #[test]
    fn wrong_type_fails_naming_the_key() {
        fails_naming(
            "profile-api:\n  timeout-ms: soon\n",
            "profile-api.timeout-ms",
        );
        let err = load(
            "engine:\n  parallelism: 1\n",
            &[("EVENT_TRIGGER__ENGINE__PARALLELISM", "two")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("parallelism"), "{err}");
    }

    #[test]
    fn cross_key_rules_are_checked() {
        fails_naming("source:\n  type: file\n", "source.path");
        fails_naming(
            "source:\n  type: file\n  path: x\n  max-events-per-second: 0\n",
            "source.max-events-per-second",
        );
        fails_naming(
            "source:\n  max-events-per-second: 10\n",
            "source.max-events-per-second",
        );
        fails_naming("source:\n  resume: true\n", "source.resume");
        fails_naming(
            "source:\n  type: file\n  path: \"-\"\n  resume: true\n",
            "source.resume",
        );
        fails_naming(
            "source:\n  type: file\n  path: x\n  resume: true\nengine:\n  checkpoint-interval-ms: 0\n",
            "source.resume",
        );
        fails_naming(
            "profile-api:\n  base-url: ftp://x\n",
            "profile-api.base-url",
        );
        fails_naming("profile-api:\n  max-in-flight: 0\n", "max-in-flight");
        fails_naming(
            "engine:\n  checkpoints-retained: 0\n",
            "engine.checkpoints-retained",
        );
        fails_naming(
            "engine:\n  state-cache-users: 0\n",
            "engine.state-cache-users",
        );
        // Asked for and not built: refused, not silently kept in memory.
        if !cfg!(feature = "rocksdb") {
            fails_naming(
                "engine:\n  state-backend: rocksdb\n",
                "engine.state-backend",
            );
        }
    }

    #[test]
    fn the_rocksdb_backend_takes_its_directory_and_cache() {
        if !cfg!(feature = "rocksdb") {
            return;
        }
        let s = load(
            "engine:\n  state-backend: rocksdb\n  state-dir: /var/lib/et\n  state-cache-users: 5\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            s.engine.backend(),
            crate::store::Backend::Rocksdb {
                dir: "/var/lib/et".into(),
                cache_users: 5
            }
        );
    }

    #[test]
    fn kafka_properties_keep_their_dotted_names() {
        let s = load(
            "kafka:\n  start-from: earliest\n  properties:\n    security.protocol: SASL_SSL\n    sasl.mechanism: PLAIN\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.kafka.start_from, StartFrom::Earliest);
        assert_eq!(
            s.kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(
            s.kafka.properties.get("sasl.mechanism").map(String::as_str),
            Some("PLAIN")
        );
    }

    #[test]
    fn kafka_secrets_in_properties_are_never_printed() {
        let s = load(
            "kafka:\n  properties:\n    sasl.password: hunter2\n    ssl.key.password: k3y\n    security.protocol: SASL_SSL\n",
            &[(
                "EVENT_TRIGGER__KAFKA__PROPERTIES__SASL_OAUTHBEARER_CLIENT_SECRET",
                "0auth",
            )],
        )
        .unwrap();
        assert_eq!(s.kafka.properties["sasl.password"], "hunter2");
        assert_eq!(
            s.kafka.properties["sasl.oauthbearer.client.secret"], "0auth",
            "a property from the environment, its name dotted"
        );
        let printed = format!("{s:?}");
        for secret in ["hunter2", "k3y", "0auth"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("SASL_SSL"),
            "other properties stay readable"
        );
    }

    #[test]
    fn webhook_secret_is_never_printed() {
        let secret = |s: &Settings| {
            s.actions
                .webhook
                .signing_secret()
                .unwrap()
                .unwrap()
                .expose()
                .to_string()
        };
        let s = load("x-unused: 1\n", &[]).err().unwrap().to_string();
        assert!(s.contains("x-unused"));
        let s = load("actions:\n  webhook:\n    secret: hunter2\n", &[]).unwrap();
        assert_eq!(secret(&s), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let env = [("EVENT_TRIGGER__ACTIONS__WEBHOOK__SECRET", "from-env")];
        let s = load("source:\n  type: kafka\n", &env).unwrap();
        assert_eq!(secret(&s), "from-env");
    }

    /// A key of text given an unquoted number that YAML prints otherwise is refused,
    /// naming it (a group `0123` was `123`, a secret `+5` signed with `5`, without a
    /// word); quoted, it is taken as written; keys of numbers read the same numbers.
    #[test]
    fn text_keys_given_numbers_yaml_prints_otherwise_are_refused() {
        for (yaml, key, written) in [
            (
                "kafka:\n  consumer-group-id: 0123\n",
                "kafka.consumer-group-id",
                "0123",
            ),
            ("kafka:\n  topic: 1.10\n", "kafka.topic", "1.10"),
            (
                "kafka:\n  properties:\n    client.rack: 007\n",
                "kafka.properties.client.rack",
                "007",
            ),
            (
                "actions:\n  - type: webhook\n    url: http://a/x\n    secret: +5\n",
                "actions[0].secret",
                "+5",
            ),
            (
                "kafka:\n  topic: 12345678901234567890123\n",
                "kafka.topic",
                "12345678901234567890123",
            ),
            (
                "flink:\n  checkpoint-dir: 0x1F\n",
                "flink.checkpoint-dir",
                "0x1F",
            ),
        ] {
            let e = load_err(yaml, &[]);
            let want = format!("`{key}`: YAML reads the unquoted `{written}` as a number");
            assert!(e.contains(&want), "{yaml}: {e}");
        }
        let s = load(
            "kafka:\n  consumer-group-id: \"0123\"\n  topic: '1.10'\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.kafka.consumer_group_id, "0123");
        assert_eq!(s.kafka.topic, "1.10");
        let yaml = "actions:\n  - type: webhook\n    url: http://a/x\n    timeout-ms: 0250\n\
                    engine:\n  parallelism: 02\n  state-ttl-minutes: 0.50\n  \
                    checkpoint-interval-ms: 1e3\n";
        let s = load(yaml, &[]).unwrap();
        assert_eq!(s.actions.specs()[0].1.webhook().timeout_ms, 250);
        assert_eq!(s.engine.parallelism, 2);
        assert_eq!(s.engine.state_ttl_minutes, 0.5);
        assert_eq!(s.engine.checkpoint_interval_ms, 1000);
        let e = load_err("engine:\n  checkpoint-interval-ms: 010.50\n", &[]);
        assert!(e.contains("is not a whole number"), "{e}");
        let e = load_err(
            "engine:\n  checkpoint-interval-ms: 18446744073709551616\n",
            &[],
        );
        assert!(e.contains("is too large for this key"), "{e}");
    }

    /// An empty secret (a variable or a mounted file not filled in) would sign with a
    /// key anyone has, or send an empty `Authorization` header: refused, naming the key.
    #[test]
    fn an_empty_secret_or_secret_file_is_refused() {
        let e = load_err("actions:\n  webhook:\n    secret: \"\"\n", &[]);
        assert!(
            e.contains("`actions.webhook.secret`: the value is empty"),
            "{e}"
        );
        let list =
            "actions:\n  - type: debug\n  - type: webhook\n    url: http://a/x\n    secret: ' '\n";
        let e = load_err(list, &[]);
        assert!(e.contains("`actions[1].secret`: the value is empty"), "{e}");
        empty_from_the_environment_is_refused_naming_it(
            "EVENT_TRIGGER__PROFILE_API__AUTH_HEADER",
            "profile-api.auth-header",
        );
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"  \n").unwrap();
        let path = file.path().display();
        let s = load(
            &format!("actions:\n  webhook:\n    secret-file: {path}\n"),
            &[],
        )
        .unwrap();
        let e = s.actions.webhook.signing_secret().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("actions.webhook.secret-file: {path} is empty")),
            "{e}"
        );
        let e = s
            .actions
            .webhook
            .signing_secret_at("actions[3]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("actions[3].secret-file: "), "{e}");
        std::fs::write(file.path(), "s3cret\n").unwrap();
        let s = load(
            &format!("actions:\n  webhook:\n    secret-file: {path}\n"),
            &[],
        )
        .unwrap();
        let secret = s.actions.webhook.signing_secret().unwrap().unwrap();
        assert_eq!(secret.expose(), "s3cret");
        let s = load("actions:\n  webhook:\n    secret-file: ''\n", &[]).unwrap();
        let e = s.actions.webhook.signing_secret().unwrap_err().to_string();
        assert!(
            e.contains("actions.webhook.secret-file: no path is given"),
            "{e}"
        );
    }

    /// `kafka.properties` given text, a secret property given empty, a NUL character:
    /// refused naming the key, without the value.
    #[test]
    fn kafka_properties_that_cannot_be_meant_are_refused_without_their_value() {
        let e = load_err("kafka:\n  properties: Hunter2Secret\n", &[]);
        assert!(
            e.contains("`kafka.properties`: give a map") && !e.contains("Hunter2"),
            "{e}"
        );
        let e = load_err("kafka:\n  properties:\n    sasl.password: ' '\n", &[]);
        assert!(
            e.contains("`kafka.properties.sasl.password`: the value is empty"),
            "{e}"
        );
        empty_from_the_environment_is_refused_naming_it(
            "EVENT_TRIGGER__KAFKA__PROPERTIES__SASL_PASSWORD",
            "kafka.properties.sasl.password",
        );
        // What the job sets itself, named with the key to use.
        let e = load_err("kafka:\n  properties:\n    bootstrap.servers: a:1\n", &[]);
        assert!(e.contains("`kafka.properties.bootstrap.servers`: the job sets it otherwise: give the brokers as `kafka.bootstrap-servers`"), "{e}");
        let e = load_err(
            "kafka:\n  properties:\n    auto.offset.reset: earliest\n",
            &[],
        );
        assert!(e.contains("`kafka.start-from`"), "{e}");
        // The same as the job sets them: taken (a Java consumer's settings carried over).
        let same = "kafka:\n  bootstrap-servers: a:1\n  start-from: earliest\n  properties:\n    \
                    bootstrap.servers: a:1\n    auto.offset.reset: earliest\n    \
                    enable.auto.commit: \"false\"\n    enable.partition.eof: \"false\"\n";
        load(same, &[]).unwrap();
        let same = "kafka:\n  bootstrap-servers: 'a:1,b:2'\n  properties:\n    \
                    bootstrap.servers: 'a:1, b:2'\n    enable.auto.commit: '0'\n";
        load(same, &[]).unwrap();
        // A job that only produces (its dead letters) has no consumer to set.
        let producer = "source:\n  type: file\n  path: x.jsonl\ndead-letter:\n  topic: dl\n\
                        kafka:\n  properties:\n    group.id: other\n";
        load(producer, &[]).unwrap();
        // A job that makes no Kafka client does not judge its properties.
        let file = "source:\n  type: file\n  path: x.jsonl\nkafka:\n  properties:\n    \
                    enable.auto.commit: \"true\"\n    sasl.password: ''\n";
        load(file, &[]).unwrap();
        let e = load_err("kafka:\n  properties:\n    client.id: \"a\\0b\"\n", &[]);
        assert!(
            e.contains("`kafka.properties.client.id`: holds a NUL character"),
            "{e}"
        );
    }

    /// A secret written without a value turned signing off where an empty one is
    /// refused; one YAML reads as a number signed with its digits (`0x1F2A`: `7978`).
    #[test]
    fn a_secret_without_a_value_or_read_as_a_number_is_refused() {
        for (yaml, key) in [
            (
                "actions:\n  webhook:\n    secret:\n",
                "actions.webhook.secret",
            ),
            (
                "actions:\n  webhook:\n    secret-file: ~\n",
                "actions.webhook.secret-file",
            ),
            ("profile-api:\n  auth-header:\n", "profile-api.auth-header"),
            (
                "actions:\n  - type: webhook\n    url: http://a/x\n    secret:\n",
                "actions[0].secret",
            ),
        ] {
            let e = load_err(yaml, &[]);
            assert!(
                e.contains(&format!("`{key}`: no value is given")),
                "{yaml}: {e}"
            );
        }
        for (yaml, key, written) in [
            (
                "actions:\n  webhook:\n    secret: 0x1F2A\n",
                "actions.webhook.secret",
                "0x1F2A",
            ),
            (
                "actions:\n  - type: webhook\n    url: http://a/x\n    secret: 1e3\n",
                "actions[0].secret",
                "1e3",
            ),
            (
                "profile-api:\n  auth-header: 5.0\n",
                "profile-api.auth-header",
                "5.0",
            ),
        ] {
            let e = load_err(yaml, &[]);
            assert!(
                e.contains(&format!(
                    "`{key}`: YAML reads the unquoted `{written}` as a number"
                )),
                "{yaml}: {e}"
            );
        }
        let s = load("actions:\n  webhook:\n    secret: \"0x1F2A\"\n", &[]).unwrap();
        assert_eq!(
            s.actions
                .webhook
                .signing_secret()
                .unwrap()
                .unwrap()
                .expose(),
            "0x1F2A"
        );
        let e = load_err("actions:\n  webhook:\n    secret: 0123\n", &[]);
        assert!(
            e.contains("YAML reads the unquoted `0123` as a number"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Settings::load_with_vars(Path::new("/nonexistent.yml"), []).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.yml"));
    }

    /// A file that is not a map of keys (a rule given as `--config`) is named once.
    #[test]
    fn a_file_that_is_not_a_map_is_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rule.rhai");
        std::fs::write(&path, "x == 1\n").unwrap();
        let err = Settings::load_with_vars(&path, []).unwrap_err().to_string();
        assert_eq!(err.matches("rule.rhai").count(), 1, "{err}");
        assert!(err.contains("expected a map"), "{err}");
    }
}
