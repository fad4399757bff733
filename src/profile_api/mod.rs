//! The Profile API: where a user's profile, visit and history come from on the user's
//! first event (or after the state expired).
//!
//! Two back ends behind one `ProfileSource`: the HTTP API (`http(s)://`) and a
//! `profiles.jsonl` snapshot (`file://`) for demos, tests and benchmarks.

mod answer;
mod file;
mod http;
mod scan;

pub use answer::{Answers, RawObject, Skipped};
pub use file::{ProfileSnapshot, SnapshotError};
pub use http::{BadHeader, HttpProfileApi};

use std::sync::Arc;
use std::time::Duration;

use crate::config::ProfileApiSettings;
use crate::model::ProfileData;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered a body that is not the expected JSON: {reason}")]
    Body { url: String, reason: String },
    #[error("user unknown to the profile snapshot")]
    UnknownUser,
    #[error("snapshot line for the user is not valid: {0}")]
    BadSnapshot(String),
    /// URLs (RFC 3986, WHATWG) remove the path segments `.` and `..`, escaped or not:
    /// the request would go to another path and its 404 would be misread.
    #[error(
        "the user id {0:?} cannot be a URL path segment (URLs remove `.` and `..`): it is not looked up"
    )]
    NotAPathSegment(String),
}

impl FetchError {
    /// Worth trying again: the request did not get through, or the API said it is
    /// overloaded or broken for now. A 404 or a body of the wrong shape will not change.
    /// For the metrics: `request`, `status` or `body`.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Request { .. } => "request",
            FetchError::Status { .. } => "status",
            _ => "body",
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Request { .. } => true,
            FetchError::Status { status, .. } => crate::retry::is_transient_status(*status),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileSourceError {
    #[error("profile-api.base-url: cannot read snapshot {path}")]
    Snapshot {
        path: String,
        #[source]
        source: SnapshotError,
    },
    #[error("profile-api")]
    Tls(#[source] crate::http_client::TlsError),
    #[error("profile-api.ca-file")]
    Ca(#[from] crate::http_client::CaError),
    /// Already names its key (`profile-api.auth-header` or `-file`).
    #[error(transparent)]
    Auth(#[from] crate::config::SecretError),
    #[error("profile-api.auth-header")]
    AuthValue(#[from] BadHeader),
}

/// Where profiles come from; cheap to clone, shared by the workers of a process.
#[derive(Clone)]
pub enum ProfileSource {
    Http(HttpProfileApi),
    Snapshot(Arc<ProfileSnapshot>),
}

impl ProfileSource {
    pub fn from_settings(s: &ProfileApiSettings) -> Result<Self, ProfileSourceError> {
        if let Some(path) = s.base_url.strip_prefix("file://") {
            let snapshot = ProfileSnapshot::load(std::path::Path::new(path))?;
            return Ok(ProfileSource::Snapshot(Arc::new(snapshot)));
        }
        let api = HttpProfileApi::trusting(
            &s.base_url,
            Duration::from_millis(s.timeout_ms),
            s.ca_file.as_deref(),
        )?
        .with_retries(s.retry_attempts, Duration::from_millis(s.retry_backoff_ms))
        .with_concurrency(s.concurrency)
        .with_max_wait_on_failure(Duration::from_millis(s.max_wait_on_failure_ms))
        .with_rate_limit(s.max_requests_per_second)
        .with_auth(s.auth_header()?.as_ref())?;
        Ok(ProfileSource::Http(api))
    }
}

/// A finished look-up: the user and what the API said.
pub type Fetched = (crate::model::Text, Result<ProfileData, FetchError>);

/// Look-ups of one worker: HTTP requests run on the tokio runtime and come back through
/// the bridge; snapshot look-ups finish at once.
pub enum Fetcher {
    Http {
        api: Box<HttpProfileApi>,
        bridge: crate::async_bridge::AsyncBridge<Fetched>,
    },
    Snapshot {
        snapshot: Arc<ProfileSnapshot>,
        done: std::collections::VecDeque<Fetched>,
    },
}

/// Requests of one look-up: profile, visit and history.
pub const REQUESTS_PER_LOOKUP: usize = 3;

impl Fetcher {
    /// Look-ups for a worker that starts at most `max_in_flight` at once.
    pub fn new(
        source: &ProfileSource,
        max_in_flight: usize,
        runtime: tokio::runtime::Handle,
        activator: timely::scheduling::SyncActivator,
    ) -> Self {
        match source {
            ProfileSource::Http(api) => {
                api.calls().register(max_in_flight * REQUESTS_PER_LOOKUP);
                Fetcher::Http {
                    api: Box::new(api.clone()),
                    bridge: crate::async_bridge::AsyncBridge::new(runtime, activator),
                }
            }
            ProfileSource::Snapshot(snapshot) => Fetcher::Snapshot {
                snapshot: snapshot.clone(),
                done: Default::default(),
            },
        }
    }

    pub fn start(&mut self, user: crate::model::Text) {
        match self {
            Fetcher::Http { api, bridge } => {
                let api = HttpProfileApi::clone(api);
                bridge.spawn(async move {
                    let started = std::time::Instant::now();
                    let result = api.fetch(&user).await;
                    crate::metrics::global().record_lookup(
                        started.elapsed(),
                        result.as_ref().err().map(FetchError::kind),
                    );
                    (user, result)
                });
            }
            Fetcher::Snapshot { snapshot, done } => {
                let result = snapshot.lookup(&user);
                done.push_back((user, result));
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        match self {
            Fetcher::Http { bridge, .. } => bridge.in_flight(),
            Fetcher::Snapshot { done, .. } => done.len(),
        }
    }

    pub fn next_done(&mut self) -> Option<Fetched> {
        match self {
            Fetcher::Http { bridge, .. } => bridge.drain().next(),
            Fetcher::Snapshot { done, .. } => done.pop_front(),
        }
    }
}
