//! `event-trigger mock-api`: a local stand-in for the Profile API and a webhook receiver,
//! like the original project's mock server. Serves `/users/{id}/profile|visit|history`
//! from a `profiles.jsonl` (404 for unknown users), accepts `POST /webhook`, and reports
//! its counters at `GET /stats`, with the latency of the webhooks from their event's
//! ingestion (the `X-Event-Ingested-At` header) to their arrival, and how many distinct
//! `Idempotency-Key`s it saw (the rest were sent again).
//!
//! With `--slots N --service-ms MS` it stands for a modest service: at most N requests
//! are served at once, each taking MS; the others queue inside the server, and a request
//! is served to the end even when its client gave up waiting (as a server with a thread
//! per request does), so a time-out followed by a retry shows as a duplicate.

use std::collections::HashMap;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::profile_api::{ProfileSnapshot, SnapshotError};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::value::RawValue;

use crate::http_server::{self, reply};

/// Pre-rendered answers of one user.
struct Answers {
    profile: Bytes,
    visit: Bytes,
    history: Bytes,
}

pub struct MockApi {
    users: HashMap<String, Answers>,
    /// How many webhook bodies to log (the first ones).
    log_webhooks: u64,
    pub profile_requests: AtomicU64,
    pub webhooks: AtomicU64,
    pub latency: Latencies,
    /// From ingestion to the call being sent (`X-Webhook-Timestamp`): the job's part.
    pub latency_in_job: Latencies,
    /// The `Idempotency-Key`s of the webhooks received.
    webhook_keys: Mutex<HashSet<String>>,
    /// Requests served at once (unlimited when None).
    slots: Option<Arc<tokio::sync::Semaphore>>,
    /// How long serving one request takes, in microseconds.
    service_us: AtomicU64,
}

/// Bucket width of the latency histogram, and how far it reaches (later ones count in
/// the last bucket; the maximum is kept exactly).
const BUCKET_US: u64 = 100;
const BUCKETS: usize = 100_000;

/// Latencies in microseconds, counted lock-free in fixed buckets of 0.1 ms.
pub struct Latencies {
    buckets: Box<[AtomicU64]>,
    max_us: AtomicU64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Latencies {
    pub fn record(&self, us: u64) {
        let i = ((us / BUCKET_US) as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// `{count, p50_ms, p99_ms, max_ms}`; a percentile is its bucket's upper edge.
    pub fn summary(&self) -> serde_json::Value {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let at = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
                }
            }
            0.0
        };
        serde_json::json!({
            "count": total,
            "p50_ms": if total == 0 { 0.0 } else { at(0.5) },
            "p99_ms": if total == 0 { 0.0 } else { at(0.99) },
            "max_ms": self.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        })
    }
}

/// A profiles file the mock API cannot serve: the lines `file://` refuses (not JSON,
/// no string `user_id`), named by their line, as there.
#[derive(Debug, thiserror::Error)]
#[error("{}", path.display())]
pub struct MockApiError {
    path: std::path::PathBuf,
    #[source]
    source: crate::profile_api::SnapshotError,
}

impl MockApi {
    /// Loads `profiles.jsonl` and renders every answer once, so serving is a copy.
    pub fn load(path: &Path, log_webhooks: u64) -> Result<MockApi, MockApiError> {
        let err = |source| MockApiError {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| err(SnapshotError::Open(e)))?;
        let snapshot = ProfileSnapshot::from_reader(std::io::BufReader::new(file)).map_err(err)?;
        let mut users = HashMap::with_capacity(snapshot.len());
        for (id, line) in snapshot.lines() {
            // The snapshot read every line as JSON already. Each answer is served as its
            // text in the line: a `Value` cannot hold half of a surrogate pair
            // (`"\ud800"`), and would leave all of the line's answers `null`.
            let parts: HashMap<String, &RawValue> = serde_json::from_str(line).unwrap_or_default();
            let render = |k: &str| Bytes::from(parts.get(k).map_or("null", |r| r.get()).to_owned());
            users.insert(
                id.to_string(),
                Answers {
                    profile: render("profile"),
                    visit: render("visit"),
                    history: render("history"),
                },
            );
        }
        Ok(MockApi {
            users,
            log_webhooks,
            profile_requests: AtomicU64::new(0),
            webhooks: AtomicU64::new(0),
            latency: Latencies::default(),
            latency_in_job: Latencies::default(),
            webhook_keys: Mutex::default(),
            slots: None,
            service_us: AtomicU64::new(0),
        })
    }

    /// Serves at most `slots` requests at once (0: no limit), each taking `service`.
    pub fn with_service(mut self, slots: usize, service: Duration) -> Self {
        self.slots = (slots > 0).then(|| Arc::new(tokio::sync::Semaphore::new(slots)));
        self.set_service_time(service);
        self
    }

    /// From now on, serving one request takes `service` (a service slowing down).
    pub fn set_service_time(&self, service: Duration) {
        self.service_us
            .store(service.as_micros() as u64, Ordering::Relaxed);
    }

    /// Webhooks received with an `Idempotency-Key` not seen before.
    pub fn distinct_webhooks(&self) -> usize {
        self.webhook_keys.lock().map_or(0, |k| k.len())
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &hyper::HeaderMap,
        body: &Bytes,
    ) -> (StatusCode, Bytes) {
        if method == Method::POST && path == "/webhook" {
            let ms = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let Some(ingested_ms) = ms(crate::actions::INGESTED_AT.as_str()) {
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                self.latency
                    .record(now_us.saturating_sub(ingested_ms * 1000));
                if let Some(sent_ms) = ms("X-Webhook-Timestamp") {
                    self.latency_in_job
                        .record(sent_ms.saturating_sub(ingested_ms) * 1000);
                }
            }
            if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok())
                && let Ok(mut keys) = self.webhook_keys.lock()
            {
                keys.insert(key.to_string());
            }
            let n = self.webhooks.fetch_add(1, Ordering::Relaxed);
            if n < self.log_webhooks {
                tracing::info!(target: "event_trigger::mock_api", "webhook: {}", String::from_utf8_lossy(body));
            }
            return (StatusCode::OK, Bytes::from_static(b"{}"));
        }
        if method == Method::GET && path == "/stats" {
            let stats = serde_json::json!({
                "profile_requests": self.profile_requests.load(Ordering::Relaxed),
                "webhooks": self.webhooks.load(Ordering::Relaxed),
                "webhooks_distinct": self.distinct_webhooks(),
                "latency": self.latency.summary(),
                "latency_in_job": self.latency_in_job.summary(),
            });
            return (StatusCode::OK, Bytes::from(stats.to_string()));
        }
        if method == Method::GET
            && let Some(rest) = path.strip_prefix("/users/")
            && let Some((id, what)) = rest.rsplit_once('/')
        {
            self.profile_requests.fetch_add(1, Ordering::Relaxed);
            let id = percent_decode_str(id).decode_utf8_lossy();
            let Some(a) = self.users.get(id.as_ref()) else {
                return (
                    StatusCode::NOT_FOUND,
                    Bytes::from_static(b"{\"error\":\"unknown user\"}"),
                );
            };
            return match what {
                "profile" => (StatusCode::OK, a.profile.clone()),
                "visit" => (StatusCode::OK, a.visit.clone()),
                "history" => (StatusCode::OK, a.history.clone()),
                _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
            };
        }
        (StatusCode::NOT_FOUND, Bytes::from_static(b"{}"))
    }

    /// Serves on `addr` on the current tokio runtime; returns the bound address.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let handler = http_server::handler(move |req| {
            let api = self.clone();
            async move {
                if api.slots.is_none() && api.service_us.load(Ordering::Relaxed) == 0 {
                    let (status, body) =
                        api.answer(req.method(), req.uri().path(), req.headers(), req.body());
                    return reply(status, body);
                }
                // On a task of its own: served to the end even if the client goes away.
                let served = tokio::spawn(async move {
                    let _slot = match &api.slots {
                        Some(slots) => slots.clone().acquire_owned().await.ok(),
                        None => None,
                    };
                    let service = api.service_us.load(Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_micros(service)).await;
                    api.answer(req.method(), req.uri().path(), req.headers(), req.body())
                });
                match served.await {
                    Ok((status, body)) => reply(status, body),
                    Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
        });
        http_server::serve(addr, handler).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// It reads a profiles file as `file://` does: a line it cannot serve is refused by
    /// its number (it skipped lines without a string `user_id` silently, and served
    /// fewer users than the file has).
    #[test]
    fn a_profiles_file_is_read_as_the_file_snapshot_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profiles.jsonl");
        std::fs::write(&path, "{\"user_id\":\"a\"}\n{\"user_id\":5}\n").unwrap();
        let err = MockApi::load(&path, 0).err().unwrap();
        let err = crate::http_client::error_chain(&err);
        assert!(
            err.contains("profiles.jsonl: line 2: invalid type"),
            "{err}"
        );
        std::fs::write(
            &path,
            "\u{feff}{\"user_id\":\"a\"}\r\n\r\n{\"user_id\":\"b\",\"visit\":{\"actions\":2}}",
        )
        .unwrap();
        let api = MockApi::load(&path, 0).unwrap();
        assert_eq!(api.users(), 2);
        assert_eq!(&api.users["b"].visit[..], b"{\"actions\":2}");
        assert_eq!(&api.users["a"].profile[..], b"null");
    }

    /// An answer is served as its text in the line, even what a JSON value cannot hold
    /// (half of a surrogate pair): the job reads it as `file://` does (found by a trial:
    /// such a user's answers were all served as `null`).
    #[test]
    fn answers_are_served_as_their_text_in_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profiles.jsonl");
        let line = r#"{"user_id":"u","profile":{"city":"\ud800","country":"US"},"visit":{"actions": 2},"history":[{"event_id":"h1"}],"visit":{"actions":3}}"#;
        std::fs::write(&path, line).unwrap();
        let api = MockApi::load(&path, 0).unwrap();
        let u = &api.users["u"];
        assert_eq!(&u.profile[..], br#"{"city":"\ud800","country":"US"}"#);
        assert_eq!(
            &u.visit[..],
            br#"{"actions":3}"#,
            "a repeated key: the last"
        );
        assert_eq!(&u.history[..], br#"[{"event_id":"h1"}]"#);
    }
}
