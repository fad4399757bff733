use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};

use crate::concurrency::{Concurrency, Limiter, is_overload_status};
use crate::config::Secret;
use crate::log_limit::{Failing, LogLimiter, OutageLog, counted};
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
pub const INGESTED_AT: HeaderName = HeaderName::from_static("x-event-ingested-at");

/// The other headers of a call, by name (HTTP/1 sends them in lower case).
const TIMESTAMP_HEADER: HeaderName = HeaderName::from_static("x-webhook-timestamp");
const KEY_HEADER: HeaderName = crate::http_pool::IDEMPOTENCY_KEY;
const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-signature-256");

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
    #[error("{at}.url")]
    Url {
        at: String,
        #[source]
        source: url::ParseError,
    },
    #[error("{at}.url: {source}")]
    Uri {
        at: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    #[error("{at}.ca-file")]
    Ca {
        at: String,
        #[source]
        source: crate::http_client::CaError,
    },
    #[error("{at}")]
    Tls {
        at: String,
        #[source]
        source: crate::http_client::TlsError,
    },
}

/// Where a webhook's keys are, unless said otherwise (`WebhookError::at`).
const WEBHOOK_KEYS: &str = "actions.webhook";

impl WebhookError {
    /// The same error, naming the keys of the webhook at `key` (`actions[1]` in the
    /// list form).
    pub fn at(mut self, key: &str) -> Self {
        let (Self::Url { at, .. }
        | Self::Uri { at, .. }
        | Self::Ca { at, .. }
        | Self::Tls { at, .. }) = &mut self;
        *at = key.to_string();
        self
    }
}

/// The most of an answer's body read (then dropped: only its status counts), so that
/// its connection goes back to the pool; a longer one closes its connection.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Where calls go, and how: shared by a client's clones.
struct Endpoint {
    client: crate::http_client::HyperClient,
    /// The URL as the `url` crate wrote it, its query's values as `***` (a token is
    /// often passed there): for messages and dead letters, and the retries' jitter.
    url: String,
    /// `url` as hyper takes it (parsed once: a clone shares its bytes), without the
    /// credentials written in it, if any,
    uri: Uri,
    /// which go in `Authorization: Basic` (as reqwest, the client before, sent them).
    credentials: Option<HeaderValue>,
    timeout: Duration,
}

/// POSTs bodies to the webhook URL; one pooled client per process.
#[derive(Clone)]
pub struct WebhookClient {
    endpoint: Arc<Endpoint>,
    secret: Option<Secret>,
    retry: RetryPolicy,
    /// Calls at once to the receiver from this process.
    calls: Limiter,
    /// Warnings of calls without `Idempotency-Key`; what it held back is said when the
    /// last clone is dropped, at the end of the run.
    unkeyed: Arc<Mutex<LogLimiter>>,
    /// Tells an outage of the receiver in a few lines, shared by every clone.
    outage: Arc<OutageLog>,
    about: Arc<About>,
}

/// What the outage lines say of the action: its name, its keys, and what becomes of a
/// call out of retries.
struct About {
    action: String,
    keys: String,
    dead_letters: bool,
}

impl WebhookClient {
    pub fn new(
        url: &str,
        timeout: Duration,
        secret: Option<Secret>,
        retry: RetryPolicy,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, WebhookError> {
        let at = || WEBHOOK_KEYS.to_string();
        let parsed =
            url::Url::parse(url).map_err(|source| WebhookError::Url { at: at(), source })?;
        let (url, credentials) = crate::http_client::split_credentials(&parsed);
        let uri = url
            .as_str()
            .parse()
            .map_err(|source| WebhookError::Uri { at: at(), source })?;
        let client = crate::http_client::hyper_client(ca).map_err(|e| match e {
            crate::http_client::TlsError::Ca(source) => WebhookError::Ca { at: at(), source },
            source => WebhookError::Tls { at: at(), source },
        })?;
        Ok(WebhookClient {
            endpoint: Arc::new(Endpoint {
                client,
                url: crate::http_client::without_query_values(&url),
                uri,
                credentials,
                timeout,
            }),
            secret,
            retry,
            calls: Limiter::new("webhook", Concurrency::Adaptive),
            unkeyed: Arc::new(Mutex::new(LogLimiter::per_10s(
                "calls without Idempotency-Key",
            ))),
            outage: Arc::new(OutageLog::new()),
            about: Arc::new(About {
                action: "webhook".to_string(),
                keys: WEBHOOK_KEYS.to_string(),
                dead_letters: false,
            }),
        })
    }

    /// Calls at once to the receiver: adaptive, or a fixed number (see
    /// `crate::concurrency`); `target` names it in the metrics.
    pub fn with_concurrency(mut self, target: &str, concurrency: Concurrency) -> Self {
        self.calls = Limiter::new(target, concurrency);
        self
    }

    /// The action's name and keys (`actions.webhook`, `actions[1]`), and whether calls
    /// out of retries go to dead letters: for the outage lines.
    pub fn for_action(mut self, action: &str, keys: &str, dead_letters: bool) -> Self {
        self.about = Arc::new(About {
            action: action.to_string(),
            keys: keys.to_string(),
            dead_letters,
        });
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
        event_id: Option<&str>,
        ingested_ms: u64,
    ) -> Delivery {
        let key = event_id.and_then(|id| self.idempotency_key(id));
        let mut retries = 0;
        loop {
            let permit = self.calls.acquire().await;
            let tried = std::time::Instant::now();
            let (result, unread) = self
                .post(
                    body.clone(),
                    key.clone(),
                    ingested_ms,
                    crate::clock::now_ms(),
                )
                .await;
            match &result {
                Err(e) if e.overload => permit.overloaded(e.reason.as_str()),
                _ => permit.answered(),
            }
            self.tell_outage(tried, &result);
            // With the permit given back: a receiver's slow body is not its latency.
            if let Some(unread) = unread {
                unread.drain().await;
            }
            match result {
                Ok(()) => {
                    return Delivery {
                        result: Ok(()),
                        retries,
                    };
                }
                Err(e) if e.transient && retries < self.retry.retries => {
                    let wait = self.retry.wait(retries, e.retry_after, &self.endpoint.url);
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
                    if e.transient {
                        self.outage.gave_up();
                    }
                    return Delivery {
                        result: Err(e),
                        retries,
                    };
                }
            }
        }
    }

    /// A try started at `tried` ended in `result`: a transient failure may start or go on
    /// with an outage of the receiver (warned of), anything else is an answer (which tells
    /// an outage's end).
    fn tell_outage(&self, tried: std::time::Instant, result: &Result<(), DeliveryError>) {
        match result {
            Err(e) if e.transient => {
                if let Some(failing) = self.outage.failed(tried) {
                    self.warn_failing(failing, e);
                }
            }
            _ => {
                if let Some(ended) = self.outage.answered() {
                    tracing::info!(
                        "the webhook receiver of action {} at {} answers again, after \
                         failing for {:.1} s ({} failed, {} failed after all their retries); \
                         the calls being retried are sent at their next try",
                        self.about.action,
                        self.endpoint.url,
                        ended.lasted.as_secs_f64(),
                        counted(ended.failures, "request"),
                        counted(ended.gave_up, "call"),
                    );
                }
            }
        }
    }

    fn warn_failing(&self, failing: Failing, e: &DeliveryError) {
        let About {
            action,
            keys,
            dead_letters,
        } = &*self.about;
        let then = if *dead_letters {
            "then goes to the dead letters"
        } else {
            "then is lost, only logged and counted as failed (dead-letter.path or \
             dead-letter.topic keeps such calls)"
        };
        tracing::warn!(
            "the webhook receiver of action {action} at {} has failed for {:.1} s ({} failed, \
             {} failed after all their retries), the last: {}; each call is tried again \
             ({keys}.retry-attempts: {}), {then}; check that the receiver is up and answering \
             with 2xx",
            self.endpoint.url,
            failing.lasted.as_secs_f64(),
            counted(failing.failures, "request"),
            counted(failing.gave_up, "call"),
            e.reason,
            self.retry.retries,
        );
    }

    /// The event id as `Idempotency-Key`, so a receiver can drop the repeats of retries,
    /// and those an at-least-once job sends after a restart. An id with a control
    /// character cannot be a header's value: its event is delivered all the same,
    /// without the key (counted, and warned of at a limited rate). An empty id is no
    /// key: sent as one, a receiver would take every such event for a repeat of the
    /// first (found by a trial).
    fn idempotency_key(&self, event_id: &str) -> Option<HeaderValue> {
        if event_id.is_empty() {
            return None;
        }
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

    /// One try: `Ok` on a 2xx answer, which the answer's status decides; its body, not
    /// used, comes back unread (see `Unread`). `X-Event-Ingested-At` (ms) lets a
    /// receiver measure the job's latency from reading the event to acting on it.
    async fn post(
        &self,
        body: Bytes,
        key: Option<HeaderValue>,
        ingested_ms: u64,
        now_ms: u64,
    ) -> (Result<(), DeliveryError>, Option<Unread>) {
        // Hex and "sha256=": always a valid header value.
        let signature = self.secret.as_ref().and_then(|secret| {
            HeaderValue::try_from(signature(secret.expose().as_bytes(), &body)).ok()
        });
        let make = || {
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = self.endpoint.uri.clone();
            let headers = request.headers_mut();
            // Room for every header below at once (an empty map grew on the first insert).
            headers.reserve(8);
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(TIMESTAMP_HEADER, HeaderValue::from(now_ms));
            headers.insert(INGESTED_AT, HeaderValue::from(ingested_ms));
            if let Some(key) = &key {
                headers.insert(KEY_HEADER, key.clone());
            }
            if let Some(sig) = &signature {
                headers.insert(SIGNATURE_HEADER, sig.clone());
            }
            if let Some(basic) = &self.endpoint.credentials {
                headers.insert(header::AUTHORIZATION, basic.clone());
            }
            request
        };
        let Endpoint {
            client,
            url,
            timeout,
            ..
        } = &*self.endpoint;
        let started = tokio::time::Instant::now();
        let answer = crate::http_client::within(*timeout, crate::http_client::head(client, &make));
        let answer = match answer.await {
            Ok(answer) => answer,
            Err(cause) => {
                let e = DeliveryError {
                    reason: format!("POST {url}: {cause}"),
                    transient: true,
                    overload: true,
                    retry_after: None,
                };
                return (Err(e), None);
            }
        };
        let (parts, body) = answer.into_parts();
        let unread = Unread {
            body,
            until: started + *timeout,
        };
        let status = parts.status;
        let result = if status.is_success() {
            tracing::debug!(status = status.as_u16(), "webhook delivered");
            Ok(())
        } else {
            Err(DeliveryError {
                reason: format!("POST {url} answered HTTP {}", status.as_u16()),
                transient: is_transient_status(status.as_u16()),
                overload: is_overload_status(status.as_u16()),
                retry_after: retry_after(&parts.headers),
            })
        };
        (result, Some(unread))
    }
}

/// An answer's body, not used: read (up to `MAX_ANSWER_BYTES`, until the call's
/// timeout) only so that the connection is kept. A body slower than that closes the
/// connection, and does not undo a 2xx the receiver already gave.
struct Unread {
    body: hyper::body::Incoming,
    until: tokio::time::Instant,
}

impl Unread {
    async fn drain(self) {
        let read = crate::http_client::read_body(self.body, MAX_ANSWER_BYTES);
        let _ = tokio::time::timeout_at(self.until, read).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event id a header cannot carry (found by a trial: such events were accepted
    /// and their webhook calls failed for good, "builder error"), or an empty one, is
    /// delivered without `Idempotency-Key`; other ids go in it as they are.
    #[test]
    fn an_id_with_a_control_character_is_delivered_without_its_key() {
        let rt = runtime();
        let unkeyed = || crate::metrics::global().webhook_calls_without_key.get();
        let before = unkeyed();
        rt.block_on(async {
            let (addr, keys) = recording("idempotency-key", hyper::StatusCode::OK).await;
            let url = format!("http://{addr}/hook");
            let client =
                WebhookClient::new(&url, Duration::from_secs(5), None, retry_none(), None).unwrap();
            for (id, key) in [
                ("", None),
                ("a\u{0}b", None),
                ("e\n1", None),
                ("evt_1", Some("evt_1")),
                ("é-1", Some("é-1")),
            ] {
                let body = bytes::Bytes::from_static(b"{}");
                let delivery = client.deliver(body, Some(id), 1).await;
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
        assert_eq!(
            crate::http_client::error_chain(&e.at("actions[2]")),
            "actions[2].url: relative URL without a base"
        );
    }

    /// A receiver on a raw socket: answers every request on a connection with `answer`
    /// (at least 3 bytes of body) after `delay`, and counts the connections it accepted.
    async fn raw_receiver(answer: Vec<u8>, delay: Duration) -> (String, Arc<Mutex<u32>>) {
        raw_receiver_with_gap(answer, delay, Duration::from_millis(5)).await
    }

    /// `raw_receiver`, the last 3 bytes of each answer sent `gap` after the rest.
    async fn raw_receiver_with_gap(
        answer: Vec<u8>,
        delay: Duration,
        gap: Duration,
    ) -> (String, Arc<Mutex<u32>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let connections = Arc::new(Mutex::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        // Each request's body is `{}`, after its headers.
                        while let Some(end) = seen.windows(6).position(|w| w == b"\r\n\r\n{}") {
                            seen.drain(..end + 6);
                            tokio::time::sleep(delay).await;
                            // The body in two writes apart: the call has the answer's
                            // head before its body's end.
                            let (head, tail) = answer.split_at(answer.len() - 3);
                            if socket.write_all(head).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(gap).await;
                            if socket.write_all(tail).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, connections)
    }

    fn answer(status: &str, body: &[u8]) -> Vec<u8> {
        let mut a = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nretry-after: 7\r\n\r\n",
            body.len()
        )
        .into_bytes();
        a.extend_from_slice(body);
        a
    }

    /// Calls one after another share one connection; an answer counts by its status
    /// (a redirect fails the call), and one with a body past `MAX_ANSWER_BYTES` too (its
    /// connection is not kept).
    #[test]
    fn calls_keep_their_connection_and_answers_count_by_their_status() {
        let rt = runtime();
        rt.block_on(async {
            let deliver = |client: WebhookClient| async move {
                client.deliver(Bytes::from_static(b"{}"), None, 1).await
            };
            let client = |url: &str| {
                WebhookClient::new(url, Duration::from_secs(5), None, retry_none(), None).unwrap()
            };
            let (url, connections) =
                raw_receiver(answer("200 OK", b"thanks"), Duration::ZERO).await;
            let ok = client(&url);
            for _ in 0..20 {
                assert_eq!(deliver(ok.clone()).await.result, Ok(()));
            }
            assert_eq!(*connections.lock().unwrap(), 1);

            let (url, _) = raw_receiver(answer("503 Busy", b"later"), Duration::ZERO).await;
            let e = deliver(client(&url)).await.result.unwrap_err();
            assert!(e.transient && e.overload, "{e:?}");
            assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
            assert!(e.reason.ends_with("answered HTTP 503"), "{}", e.reason);

            // A redirect is not followed (a POST's body would not go with it): the call
            // failed for good, as other 4xx.
            let (url, _) = raw_receiver(answer("302 Found", b"moved"), Duration::ZERO).await;
            let e = deliver(client(&url)).await.result.unwrap_err();
            assert!(!e.transient && !e.overload, "{e:?}");
            assert!(e.reason.ends_with("answered HTTP 302"), "{}", e.reason);

            let big = vec![b'x'; MAX_ANSWER_BYTES * 4];
            let (url, connections) = raw_receiver(answer("200 OK", &big), Duration::ZERO).await;
            let big_answers = client(&url);
            for _ in 0..3 {
                assert_eq!(deliver(big_answers.clone()).await.result, Ok(()));
            }
            assert_eq!(*connections.lock().unwrap(), 3);
        });
    }

    /// A receiver slower than `timeout` fails the call at the timeout, as a transient
    /// overload (fewer calls at once, then a retry).
    #[test]
    fn a_call_past_its_timeout_fails_as_an_overload() {
        let rt = runtime();
        rt.block_on(async {
            let (url, _) = raw_receiver(answer("200 OK", b""), Duration::from_secs(10)).await;
            let client =
                WebhookClient::new(&url, Duration::from_millis(200), None, retry_none(), None)
                    .unwrap();
            let started = std::time::Instant::now();
            let e = client
                .deliver(Bytes::from_static(b"{}"), None, 1)
                .await
                .result
                .unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(5));
            assert!(e.transient && e.overload, "{e:?}");
            assert!(e.reason.ends_with("timed out after 200ms"), "{}", e.reason);
        });
    }

    /// An answer's body slower than the timeout does not undo the 2xx its head gave:
    /// the call is delivered, once (found by a trial: it failed at the timeout and was
    /// sent again); and the body is read after the call's permit is given back, so
    /// that calls at once are not held by it (found by the next trial: with the
    /// adaptive limit, each such call held its place for the whole timeout).
    #[test]
    fn a_2xx_with_a_slow_body_is_delivered_once_without_holding_its_place() {
        let rt = runtime();
        rt.block_on(async {
            let (url, _) = raw_receiver_with_gap(
                answer("200 OK", b"slow body"),
                Duration::ZERO,
                Duration::from_secs(3),
            )
            .await;
            let policy = RetryPolicy {
                retries: 2,
                backoff: Duration::from_millis(10),
                max_wait: Duration::from_millis(10),
            };
            let client = WebhookClient::new(&url, Duration::from_millis(500), None, policy, None)
                .unwrap()
                .with_concurrency("webhook-slow-body-test", Concurrency::Fixed(1));
            let started = std::time::Instant::now();
            let deliver = || client.deliver(Bytes::from_static(b"{}"), None, 1);
            let all = tokio::join!(deliver(), deliver(), deliver(), deliver());
            let once = Delivery {
                result: Ok(()),
                retries: 0,
            };
            assert_eq!(all, (once.clone(), once.clone(), once.clone(), once));
            // One call at a time, each answered at once: about one timeout in all, where
            // holding the place through each body took four.
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "{:?}",
                started.elapsed()
            );
        });
    }

    /// A call's `Host`, set once for the endpoint, is what the client writes for a
    /// request without one (the receiver's address as the URL names it).
    #[test]
    fn a_calls_host_is_the_one_the_client_writes() {
        let rt = runtime();
        let seen = rt.block_on(async {
            let (addr, seen) = recording("host", hyper::StatusCode::OK).await;
            for url in [
                format!("http://{addr}/hook"),
                format!("http://localhost:{}/hook", addr.port()),
            ] {
                let client =
                    WebhookClient::new(&url, Duration::from_secs(5), None, retry_none(), None)
                        .unwrap();
                client
                    .deliver(Bytes::from_static(b"{}"), None, 1)
                    .await
                    .result
                    .unwrap();
                let answer = crate::http_client::get(&client.endpoint.client, &url, 1024).await;
                assert_eq!(answer.unwrap().status, hyper::StatusCode::OK);
            }
            seen
        });
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[2], seen[3]);
        assert!(
            seen[0]
                .as_deref()
                .is_some_and(|h| h.starts_with(b"127.0.0.1:")),
            "{seen:?}"
        );
        assert!(
            seen[2]
                .as_deref()
                .is_some_and(|h| h.starts_with(b"localhost:")),
            "{seen:?}"
        );
    }

    /// Credentials written in the URL go as `Authorization: Basic` (as reqwest sent
    /// them: found by a trial, lost with the change of client), and not in messages.
    #[test]
    fn credentials_in_the_url_are_sent_as_basic_auth_and_never_shown() {
        let rt = runtime();
        let seen = rt.block_on(async {
            let (addr, seen) = recording("authorization", hyper::StatusCode::UNAUTHORIZED).await;
            // A token in the query is a secret too: its value is not shown either.
            let url = format!("http://wu:w%40p@{addr}/hook?token=abc123secret&v=2");
            let client =
                WebhookClient::new(&url, Duration::from_secs(5), None, retry_none(), None).unwrap();
            let e = client
                .deliver(Bytes::from_static(b"{}"), None, 1)
                .await
                .result
                .unwrap_err();
            assert_eq!(
                e.reason,
                format!("POST http://{addr}/hook?token=***&v=*** answered HTTP 401")
            );
            seen
        });
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Some(b"Basic d3U6d0Bw".to_vec())]
        );
    }

    /// The calls' values of `header` (as bytes; `None` where absent), kept by a receiver
    /// on 127.0.0.1 that answers every call `status`; and its address.
    /// A receiver failing calls in a row is warned of once, with its end told by the
    /// answer that follows; a failure among answers is not (a flaky receiver is no
    /// outage). Calls that failed after all their retries are counted in it.
    #[test]
    fn a_receiver_failing_calls_in_a_row_is_warned_of_once() {
        use crate::log_limit::OUTAGE_FAILURES;
        use std::sync::atomic::{AtomicU64, Ordering};
        let rt = runtime();
        rt.block_on(async {
            let left = Arc::new(AtomicU64::new(1));
            let failing = left.clone();
            let receiver = crate::http_server::handler(move |_: hyper::Request<Bytes>| {
                let fail = failing
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                let status = if fail {
                    hyper::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    hyper::StatusCode::OK
                };
                async move { crate::http_server::reply(status, "") }
            });
            let addr = crate::http_server::serve("127.0.0.1:0".parse().unwrap(), receiver)
                .await
                .unwrap();
            let url = format!("http://{addr}/hook");
            let client =
                WebhookClient::new(&url, Duration::from_secs(5), None, retry_none(), None).unwrap();
            let deliver = || client.deliver(Bytes::from_static(b"{}"), None, 1);
            assert!(deliver().await.result.is_err(), "a 503");
            assert_eq!(deliver().await.result, Ok(()));
            assert_eq!(client.outage.warnings(), 0, "a failure among answers");

            left.store(OUTAGE_FAILURES, Ordering::Relaxed);
            for n in 1..=OUTAGE_FAILURES {
                assert!(deliver().await.result.is_err());
                let told = u64::from(n == OUTAGE_FAILURES);
                assert_eq!(client.outage.warnings(), told, "after {n} failed in a row");
            }
            assert_eq!(deliver().await.result, Ok(()), "the receiver is back");
            assert_eq!(client.outage.answered(), None, "its end told by the answer");
            assert_eq!(client.outage.warnings(), 1);
        });
    }

    async fn recording(
        header: &'static str,
        status: hyper::StatusCode,
    ) -> (std::net::SocketAddr, Arc<Mutex<Vec<Option<Vec<u8>>>>>) {
        let seen: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
        let log = seen.clone();
        let receiver = crate::http_server::handler(move |req: hyper::Request<bytes::Bytes>| {
            let value = req.headers().get(header).map(|v| v.as_bytes().to_vec());
            log.lock().unwrap().push(value);
            async move { crate::http_server::reply(status, "") }
        });
        let addr = crate::http_server::serve("127.0.0.1:0".parse().unwrap(), receiver)
            .await
            .unwrap();
        (addr, seen)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn retry_none() -> RetryPolicy {
        RetryPolicy {
            retries: 0,
            backoff: Duration::ZERO,
            max_wait: Duration::ZERO,
        }
    }
}
