//! `event-trigger mock-api`: a local stand-in for the Profile API and a webhook receiver,
//! like the original project's mock server. Serves `/users/{id}/profile|visit|history`
//! from a `profiles.jsonl` (404 for unknown users), accepts `POST /webhook`, and reports
//! its counters at `GET /stats`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use percent_encoding::percent_decode_str;

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
}

impl MockApi {
    /// Loads `profiles.jsonl` and renders every answer once, so serving is a copy.
    pub fn load(path: &Path, log_webhooks: u64) -> Result<MockApi, String> {
        let file = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (n, line) in file
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{}: line {}: {e}", path.display(), n + 1))?;
            let Some(id) = v.get("user_id").and_then(|u| u.as_str()) else {
                continue;
            };
            let render =
                |k: &str| Bytes::from(v.get(k).unwrap_or(&serde_json::Value::Null).to_string());
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
        })
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn answer(&self, method: &Method, path: &str, body: &Bytes) -> (StatusCode, Bytes) {
        if method == Method::POST && path == "/webhook" {
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
                let (status, body) = api.answer(req.method(), req.uri().path(), req.body());
                reply(status, body)
            }
        });
        http_server::serve(addr, handler).await
    }
}
