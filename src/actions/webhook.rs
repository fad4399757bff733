use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use reqwest::header::HeaderValue;

use crate::concurrency::{Concurrency, Limiter, is_overload_status};
use crate::config::Secret;
use crate::log_limit::LogLimiter;
use crate::model::Text;
use crate::retry::{RetryPolicy, is_transient_status, retry_after};

/// `sha256=<hex HMAC-SHA256 of body>`, the value of `X-Signature-256`.
///
/// ```
/// use event_trigger::actions::signature;
/// assert_eq!(
///     signature(b"key", b"The quick brown fox jumps over the lazy dog"),
///     "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
/// );
/// ```
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The header carrying when the job read the event (ms since the epoch).
pub const INGESTED_AT: &str = "X-Event-Ingested-At";

/// A delivery that did not succeed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    pub reason: String,
    /// Worth another try (connection, timeout, 408, 429, 5xx).
    pub transient: bool,
    /// The receiver did not answer in time, could not be reached, or said it is
    /// overloaded: fewer calls at once.
    pub overload: bool,
    pub retry_after: Option<Duration>,
}

/// How a delivery ended, and the tries it took after the first.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub result: Result<(), DeliveryError>,
    pub retries: u32,
}

/// A webhook client that cannot be built; each names its key, its cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("actions.webhook.url")]
    Url(#[from] url::ParseError),
    #[error("actions.webhook.ca-file")]
    Ca(#[from] crate::http_client::CaError),
    #[error("actions.webhook")]
    Client(#[source] reqwest::Error),
}

/// POSTs bodies to the webhook URL; one pooled client per process.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<Secret>,
    retry: RetryPolicy,
    /// Calls at once to the receiver from this process.
    calls: Limiter,
    /// Warnings of calls without `Idempotency-Key`; what it held back is said when the
    /// last clone is dropped, at the end of the run.
    unkeyed: Arc<Mutex<LogLimiter>>,
}

impl WebhookClient {
    pub fn new(
        url: &str,
        timeout: Duration,
        secret: Option<Secret>,
        retry: RetryPolicy,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, WebhookError> {
        let url = reqwest::Url::parse(url)?;
        let client = crate::http_client::builder_trusting(ca)?
            .timeout(timeout)
            .build()
            .map_err(WebhookError::Client)?;
        Ok(WebhookClient {
            client,
            url,
            secret,
            retry,
            calls: Limiter::new("webhook", Concurrency::Adaptive),
            unkeyed: Arc::new(Mutex::new(LogLimiter::per_10s(
                "calls without Idempotency-Key",
            ))),
        })
    }

    /// Calls at once to the receiver: adaptive, or a fixed number (see
    /// `crate::concurrency`); `target` names it in the metrics.
    pub fn with_concurrency(mut self, target: &str, concurrency: Concurrency) -> Self {
        self.calls = Limiter::new(target, concurrency);
        self
    }

    /// The limit of calls at once, shared by every clone.
    pub fn calls(&self) -> &Limiter {
        &self.calls
    }

    /// Delivers `body`, trying again after transient failures as the retry policy says.
    /// `ingested_ms`: when the job read the event (ms since the epoch).
    pub async fn deliver(
        &self,
        body: bytes::Bytes,
        event_id: Option<Text>,
        ingested_ms: u64,
    ) -> Delivery {
        let key = event_id.and_then(|id| self.idempotency_key(&id));
        let mut retries = 0;
        loop {
            let permit = self.calls.acquire().await;
            let result = self
                .post(
                    body.clone(),
                    key.clone(),
                    ingested_ms,
                    crate::clock::now_ms(),
                )
                .await;
            match &result {
                Err(e) if e.overload => permit.overloaded(),
                _ => permit.answered(),
            }
            match result {
                Ok(()) => {
                    return Delivery {
                        result: Ok(()),
                        retries,
                    };
                }
                Err(e) if e.transient && retries < self.retry.retries => {
                    let wait = self.retry.wait(retries, e.retry_after, self.url.as_str());
                    tracing::debug!(
                        attempt = retries,
                        ?wait,
                        "webhook call will be retried: {}",
                        e.reason
                    );
                    tokio::time::sleep(wait).await;
                    retries += 1;
                }
                Err(e) => {
                    return Delivery {
                        result: Err(e),
                        retries,
                    };
                }
            }
        }
    }

    /// The event id as `Idempotency-Key`, so a receiver can drop the repeats of retries,
    /// and those an at-least-once job sends after a restart. An id with a control
    /// character cannot be a header's value: its event is delivered all the same,
    /// without the key (counted, and warned of at a limited rate).
    fn idempotency_key(&self, event_id: &str) -> Option<HeaderValue> {
        match HeaderValue::from_str(event_id) {
            Ok(key) => Some(key),
            Err(_) => {
                crate::metrics::global().webhook_calls_without_key.inc();
                if self.unkeyed.lock().is_ok_and(|mut l| l.allow()) {
                    tracing::warn!(
                        event_id = ?event_id,
                        "webhook call sent without Idempotency-Key: the event_id has a \
                         control character, which a header cannot carry (receivers cannot \
                         drop its repeats by key)"
                    );
                }
                None
            }
        }
    }

    /// One try: `Ok` on a 2xx answer. `X-Event-Ingested-At` (ms) lets a receiver measure
    /// the job's latency from reading the event to acting on it.
    pub async fn post(
        &self,
        body: bytes::Bytes,
        key: Option<HeaderValue>,
        ingested_ms: u64,
        now_ms: u64,
    ) -> Result<(), DeliveryError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Webhook-Timestamp", now_ms.to_string())
            .header(INGESTED_AT, ingested_ms.to_string());
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(secret) = &self.secret {
            request = request.header(
                "X-Signature-256",
                signature(secret.expose().as_bytes(), &body),
            );
        }
        let resp = request.body(body).send().await.map_err(|e| DeliveryError {
            reason: format!("POST {}: {}", self.url, crate::http_client::error_chain(&e)),
            transient: true,
            overload: true,
            retry_after: None,
        })?;
        let status = resp.status();
        if status.is_success() {
            tracing::debug!(status = status.as_u16(), "webhook delivered");
            Ok(())
        } else {
            Err(DeliveryError {
                reason: format!("POST {} answered HTTP {}", self.url, status.as_u16()),
                transient: is_transient_status(status.as_u16()),
                overload: is_overload_status(status.as_u16()),
                retry_after: retry_after(resp.headers()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event id a header cannot carry (found by a trial: such events were accepted
    /// and their webhook calls failed for good, "builder error") is delivered without
    /// `Idempotency-Key`; other ids go in it as they are.
    #[test]
    fn an_id_with_a_control_character_is_delivered_without_its_key() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let keys: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
        let seen = keys.clone();
        let receiver = crate::http_server::handler(move |req: hyper::Request<bytes::Bytes>| {
            let key = req
                .headers()
                .get("idempotency-key")
                .map(|v| v.as_bytes().to_vec());
            seen.lock().unwrap().push(key);
            async { crate::http_server::reply(hyper::StatusCode::OK, "") }
        });
        let unkeyed = || crate::metrics::global().webhook_calls_without_key.get();
        let before = unkeyed();
        rt.block_on(async {
            let addr = crate::http_server::serve("127.0.0.1:0".parse().unwrap(), receiver)
                .await
                .unwrap();
            let url = format!("http://{addr}/hook");
            let client =
                WebhookClient::new(&url, Duration::from_secs(5), None, retry_none(), None).unwrap();
            for (id, key) in [
                ("a\u{0}b", None),
                ("e\n1", None),
                ("evt_1", Some("evt_1")),
                ("é-1", Some("é-1")),
            ] {
                let body = bytes::Bytes::from_static(b"{}");
                let delivery = client.deliver(body, Some(id.into()), 1).await;
                assert_eq!(delivery.result, Ok(()), "{id:?}");
                let sent = keys.lock().unwrap().pop().expect("the call arrived");
                assert_eq!(sent.as_deref(), key.map(str::as_bytes), "{id:?}");
            }
        });
        assert_eq!(unkeyed() - before, 2, "counted once per delivery");
    }

    /// Rendered with its causes (as the binary prints errors), a build error names the
    /// key, then the file, then the cause, each once.
    #[test]
    fn a_build_error_names_the_key_and_keeps_its_cause() {
        let ca = std::path::Path::new("/no/ca.pem");
        let Err(e) = WebhookClient::new("http://a/x", Duration::ZERO, None, retry_none(), Some(ca))
        else {
            panic!("a missing CA file is refused");
        };
        assert!(std::error::Error::source(&e).is_some());
        let shown = crate::http_client::error_chain(&e);
        assert!(
            shown.starts_with("actions.webhook.ca-file: /no/ca.pem: "),
            "{shown}"
        );
        assert_eq!(shown.matches("/no/ca.pem").count(), 1, "{shown}");
        let Err(e) = WebhookClient::new("a/x", Duration::ZERO, None, retry_none(), None) else {
            panic!("a relative URL is refused");
        };
        assert_eq!(
            crate::http_client::error_chain(&e),
            "actions.webhook.url: relative URL without a base"
        );
    }

    fn retry_none() -> RetryPolicy {
        RetryPolicy {
            retries: 0,
            backoff: Duration::ZERO,
            max_wait: Duration::ZERO,
        }
    }
}
