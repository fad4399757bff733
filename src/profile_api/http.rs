use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::Full;
use hyper::Request;
use hyper::header::{self, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::answer::{Answers, RawObject};
use super::scan;
use super::{FetchError, ProfileSourceError};
use crate::concurrency::{Concurrency, Limiter, is_overload_status};
use crate::http_client::{Answer, BodyError, HyperClient, SendError, error_chain, send, within};
use crate::log_limit::{Failing, OutageLog, counted};
use crate::model::ProfileData;
use crate::retry::{RetryPolicy, retry_after};

/// What may stay unescaped in a path segment (RFC 3986 unreserved); everything else in a
/// user id, `/`, `?`, `%` and non-ASCII included, is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Bodies larger than this are refused: a broken API must not fill our memory.
const MAX_BODY_BYTES: usize = 4 << 20;
/// The longest wait between tries, whatever the backoff or `Retry-After` asks.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The API's name in metrics.
const TARGET: &str = "profile-api";

/// Redirects followed, at most, for one request.
const MAX_REDIRECTS: usize = 10;

/// The HTTP Profile API. One client (hyper's, a connection pool with keep-alive: see
/// `crate::http_client`) is shared by every worker of the process.
#[derive(Clone)]
pub struct HttpProfileApi {
    client: Arc<HyperClient>,
    /// Each request's time limit, from its start to its answer's last byte.
    timeout: Duration,
    base: String,
    retry: RetryPolicy,
    /// Shared by the workers of the process: the API's limit is the process's.
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// `Authorization`, marked sensitive (kept out of hyper's debug output): the
    /// configured one, else `Basic` for the credentials written in the base URL
    /// (`http://user:pass@host`; `base` is without them).
    auth: Option<HeaderValue>,
    /// Requests at once to the API from this process.
    calls: Limiter,
    /// How long a look-up failing transiently is tried again before it fails.
    max_wait_on_failure: Duration,
    /// Tells an outage of the API in a few lines, shared by every clone.
    outage: Arc<OutageLog>,
}

/// An `Authorization` value that cannot be sent.
#[derive(Debug, thiserror::Error)]
#[error("not a valid header value (printable ASCII only)")]
pub struct BadHeader(hyper::header::InvalidHeaderValue);

impl HttpProfileApi {
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ProfileSourceError> {
        Self::trusting(base_url, timeout, None)
    }

    /// `new`, also trusting the CA certificates of the PEM file `ca`.
    pub fn trusting(
        base_url: &str,
        timeout: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ProfileSourceError> {
        let client = crate::http_client::hyper_client(ca).map_err(|e| match e {
            crate::http_client::TlsError::Ca(e) => ProfileSourceError::from(e),
            e => ProfileSourceError::Tls(e),
        })?;
        // As the `url` crate writes it (a host in punycode, say), which hyper reads; a
        // base it cannot read is refused by each request (the configuration's check
        // refuses it before the job starts).
        let (base, url_credentials) = match url::Url::parse(base_url) {
            Ok(url) => {
                let (bare, credentials) = crate::http_client::split_credentials(&url);
                (String::from(bare), credentials)
            }
            Err(_) => (base_url.to_string(), None),
        };
        Ok(HttpProfileApi {
            client: Arc::new(client),
            timeout,
            base: base.trim_end_matches('/').to_string(),
            retry: RetryPolicy {
                retries: 0,
                backoff: Duration::from_millis(100),
                max_wait: MAX_BACKOFF,
            },
            limiter: None,
            auth: url_credentials,
            calls: Limiter::new(TARGET, Concurrency::Adaptive),
            max_wait_on_failure: Duration::ZERO,
            outage: Arc::new(OutageLog::new()),
        })
    }

    /// Sends `value` as the `Authorization` header of every request (in place of the
    /// base URL's credentials, if it has any).
    pub fn with_auth(mut self, value: Option<&crate::config::Secret>) -> Result<Self, BadHeader> {
        if let Some(v) = value {
            let mut h = HeaderValue::from_str(v.expose()).map_err(BadHeader)?;
            h.set_sensitive(true);
            self.auth = Some(h);
        }
        Ok(self)
    }

    /// Tries a transiently failed request `retries` more times (see `RetryPolicy`).
    pub fn with_retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retry.retries = retries;
        self.retry.backoff = backoff;
        self
    }

    /// Requests at once to the API: adaptive, or a fixed number (see `crate::concurrency`).
    pub fn with_concurrency(mut self, concurrency: Concurrency) -> Self {
        self.calls = Limiter::new(TARGET, concurrency);
        self
    }

    /// A look-up that fails transiently after its retries is tried again, with backoff,
    /// until `max_wait` has passed since it started.
    pub fn with_max_wait_on_failure(mut self, max_wait: Duration) -> Self {
        self.max_wait_on_failure = max_wait;
        self
    }

    /// The limit of requests at once, shared by every clone.
    pub fn calls(&self) -> &Limiter {
        &self.calls
    }

    /// At most `per_second` requests a second, tries included, spread out: the burst
    /// allowed is a tenth of a second's worth.
    pub fn with_rate_limit(mut self, per_second: u32) -> Self {
        self.limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(per_second / 10).unwrap_or(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        self
    }

    /// `{base}/users/{id}/{what}` with the id percent-encoded.
    ///
    /// ```
    /// # use event_trigger::profile_api::HttpProfileApi;
    /// # use std::time::Duration;
    /// let api = HttpProfileApi::new("http://api:8080/", Duration::from_secs(1)).unwrap();
    /// assert_eq!(api.url("a/b?c%é", "visit"), "http://api:8080/users/a%2Fb%3Fc%25%C3%A9/visit");
    /// ```
    pub fn url(&self, user_id: &str, what: &str) -> String {
        format!(
            "{}/users/{}/{}",
            self.base,
            utf8_percent_encode(user_id, SEGMENT),
            what
        )
    }

    /// The body of a successful GET of `url`.
    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let mut attempt = 0;
        loop {
            let tried = Instant::now();
            let result = self.get_once(url).await;
            match &result {
                Err((e, _)) if e.is_transient() => {
                    if let Some(failing) = self.outage.failed(tried) {
                        self.warn_failing(failing, e);
                    }
                }
                _ => self.answered(),
            }
            match result {
                Err((e, retry_after)) if attempt < self.retry.retries && e.is_transient() => {
                    let wait = self.retry.wait(attempt, retry_after, url);
                    tracing::debug!(%url, attempt, ?wait, "profile look-up will be retried: {e}");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                result => return result.map_err(|(e, _)| e),
            }
        }
    }

    /// One try; a failure comes with the `Retry-After` the API asked for, if any.
    async fn get_once(&self, url: &str) -> Result<Vec<u8>, (FetchError, Option<Duration>)> {
        if let Some(limiter) = &self.limiter {
            // Waits on the runtime, not the worker: the look-up stays in flight, and its
            // user's events wait behind it (and the source behind them).
            limiter.until_ready().await;
        }
        let permit = self.calls.acquire().await;
        let request_err = |reason: String| {
            let e = FetchError::Request {
                url: url.to_string(),
                reason,
            };
            (e, None)
        };
        let answer = within(self.timeout, self.exchange(url)).await;
        let Answer {
            status,
            headers,
            body,
        } = match answer {
            Ok(answer) => answer,
            Err(e) => {
                // No answer in time: a time-out, a refused or broken connection.
                let reason = e.to_string();
                permit.overloaded(format!("GET {url}: {reason}"));
                return Err(request_err(reason));
            }
        };
        if !status.is_success() {
            if is_overload_status(status.as_u16()) {
                permit.overloaded(format!("GET {url} answered HTTP {}", status.as_u16()));
            } else {
                permit.answered();
            }
            let e = FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            };
            return Err((e, retry_after(&headers)));
        }
        permit.answered();
        match body {
            Ok(mut body) => {
                // A byte order mark, as some servers' encoders write one: not JSON, and
                // not data (the snapshot's lines and the events skip it too).
                if body.starts_with(b"\xEF\xBB\xBF") {
                    body.drain(..3);
                }
                Ok(body)
            }
            Err(e @ BodyError::Read(_)) => Err(request_err(error_chain(&e))),
            Err(e @ BodyError::TooLarge(_)) => Err((body_error(url, e.to_string()), None)),
        }
    }

    /// A GET of `url`, following redirects as a browser would (up to `MAX_REDIRECTS`;
    /// `Authorization` is sent only to the base URL's scheme, host and port).
    async fn exchange(&self, url: &str) -> Result<Answer, SendError> {
        let mut at = std::borrow::Cow::Borrowed(url);
        for hop in 0..=MAX_REDIRECTS {
            let uri: hyper::Uri = at
                .parse()
                .map_err(|e| SendError::new(format!("not a URL: {e}")))?;
            // `url` is the base's own (only a redirect's target is compared).
            let auth = self
                .auth
                .as_ref()
                .filter(|_| hop == 0 || same_origin(&at, &self.base));
            let make = || {
                let mut request = Request::new(Full::new(Bytes::new()));
                *request.uri_mut() = uri.clone();
                let headers = request.headers_mut();
                headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
                if let Some(auth) = auth {
                    headers.insert(header::AUTHORIZATION, auth.clone());
                }
                request
            };
            let answer = send(&self.client, &make, MAX_BODY_BYTES).await?;
            match redirect(&answer, &at) {
                Some(next) => at = std::borrow::Cow::Owned(next),
                None => return Ok(answer),
            }
        }
        Err(SendError::new(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// The user's data. A look-up that failed transiently after its retries is tried
    /// again with backoff while `max_wait_on_failure` since the first try has not
    /// passed: better late than judging the user's events without its profile.
    pub async fn fetch(&self, user_id: &str) -> Result<ProfileData, FetchError> {
        let deadline = Instant::now() + self.max_wait_on_failure;
        // The waits go on doubling from where the requests' own retries stopped.
        let mut attempt = self.retry.retries;
        loop {
            let result = self.fetch_once(user_id).await;
            let now = Instant::now();
            match result {
                Err(e) if e.is_transient() && now < deadline => {
                    let wait = self.retry.wait(attempt, None, user_id).min(deadline - now);
                    crate::metrics::global().lookup_waits.inc();
                    tracing::debug!(
                        user = user_id,
                        ?wait,
                        "profile look-up failed, its events wait and it is tried again: {e}"
                    );
                    tokio::time::sleep(wait).await;
                    attempt = attempt.saturating_add(1);
                }
                result => {
                    if result.as_ref().is_err_and(FetchError::is_transient) {
                        self.outage.gave_up();
                    }
                    return result;
                }
            }
        }
    }

    /// The three GETs, concurrently; any failure fails the fetch. The answers are read
    /// field by field (`Answers`): a mistyped field does not fail it.
    async fn fetch_once(&self, user_id: &str) -> Result<ProfileData, FetchError> {
        if user_id == "." || user_id == ".." {
            return Err(FetchError::NotAPathSegment(user_id.to_string()));
        }
        let urls = ["profile", "visit", "history"].map(|what| self.url(user_id, what));
        let (profile, visit, history) =
            tokio::join!(self.get(&urls[0]), self.get(&urls[1]), self.get(&urls[2]));
        // In this order, as serde read them on arrival: the first failure is the one told.
        let profile = Part::<_, Option<RawObject>>::read(profile?, &urls[0], scan::profile_answer)?;
        let visit = Part::<_, Option<RawObject>>::read(visit?, &urls[1], scan::visit_answer)?;
        let history =
            Part::<_, Option<Vec<Box<RawValue>>>>::read(history?, &urls[2], scan::history_answer)?;
        match (profile, visit, history) {
            (Part::Scanned(profile, _), Part::Scanned(visit, _), Part::Scanned(history, _)) => {
                Ok(ProfileData {
                    profile,
                    visit,
                    history,
                })
            }
            (profile, visit, history) => {
                let answers = Answers {
                    profile: profile.parsed(&urls[0])?,
                    visit: visit.parsed(&urls[1])?,
                    history: history.parsed(&urls[2])?,
                };
                Ok(answers.into_data(user_id))
            }
        }
    }

    /// Requests fail: tells it, with what the look-ups do meanwhile.
    fn warn_failing(&self, failing: Failing, e: &FetchError) {
        let then = if self.max_wait_on_failure.is_zero() {
            "then its user gets the empty state (profile-api.max-wait-on-failure-ms: 0)".to_string()
        } else {
            format!(
                "then tried again with backoff, its user's events waiting, until \
                 profile-api.max-wait-on-failure-ms ({} ms) has passed since its first try, \
                 before its user gets the empty state",
                self.max_wait_on_failure.as_millis()
            )
        };
        tracing::warn!(
            "the Profile API at {} has failed for {:.1} s ({} failed, {} given the empty state \
             for it), the last: {e}; each look-up's requests are retried \
             (profile-api.retry-attempts: {}), {then}; check that the API is up and answering",
            self.base,
            failing.lasted.as_secs_f64(),
            counted(failing.failures, "request"),
            counted(failing.gave_up, "user"),
            self.retry.retries,
        );
    }

    /// An answer came: tells the end of an outage that was warned of, once.
    fn answered(&self) {
        if let Some(ended) = self.outage.answered() {
            let next = if self.max_wait_on_failure.is_zero() {
                "the users looked up from now on get their profiles".to_string()
            } else {
                format!(
                    "the look-ups waiting resume at their next try (within {} s)",
                    self.retry.max_wait.as_secs()
                )
            };
            tracing::info!(
                "the Profile API at {} answers again, after failing for {:.1} s ({} failed, {} \
                 given the empty state for it); {next}",
                self.base,
                ended.lasted.as_secs_f64(),
                counted(ended.failures, "request"),
                counted(ended.gave_up, "user"),
            );
        }
    }
}

/// The URL a redirect answer points to (its `Location`, read against `from`).
fn redirect(answer: &Answer, from: &str) -> Option<String> {
    if !matches!(answer.status.as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = answer.headers.get(header::LOCATION)?.to_str().ok()?;
    let next = url::Url::parse(from).ok()?.join(location).ok()?;
    matches!(next.scheme(), "http" | "https").then(|| next.into())
}

/// Whether `a` and `b` have the same scheme, host and port.
fn same_origin(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

fn body_error(url: &str, reason: String) -> FetchError {
    FetchError::Body {
        url: url.to_string(),
        reason,
    }
}

/// One answer's body: read by the scan (`T`, with the body kept), or by serde (`R`, for
/// `Answers`). The three are read by `Answers` unless the scan read all of them.
enum Part<T, R> {
    Scanned(T, Vec<u8>),
    Parsed(R),
}

impl<T, R: DeserializeOwned> Part<T, R> {
    fn read(body: Vec<u8>, url: &str, scan: fn(&str) -> Option<T>) -> Result<Self, FetchError> {
        if let Some(read) = std::str::from_utf8(&body).ok().and_then(scan) {
            return Ok(Part::Scanned(read, body));
        }
        serde_json::from_slice(&body)
            .map(Part::Parsed)
            .map_err(|e| body_error(url, e.to_string()))
    }

    /// As serde reads it (a body the scan read is JSON of the right shape: serde reads
    /// it too).
    fn parsed(self, url: &str) -> Result<R, FetchError> {
        match self {
            Part::Parsed(r) => Ok(r),
            Part::Scanned(_, body) => {
                serde_json::from_slice(&body).map_err(|e| body_error(url, e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::http_server::{handler, reply, serve};
    use crate::log_limit::OUTAGE_FAILURES;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A server answering look-ups as `route` says, keeping each request's path and
    /// whether it carried `Authorization`.
    async fn server(
        route: impl Fn(&str) -> (u16, Option<String>) + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<(String, bool)>>>) {
        let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let log = seen.clone();
        let route = Arc::new(route);
        let h = handler(move |req: Request<Bytes>| {
            let path = req.uri().path().to_string();
            let auth = req.headers().contains_key(header::AUTHORIZATION);
            log.lock().unwrap().push((path.clone(), auth));
            let (status, location) = route(&path);
            let body = match path.rsplit('/').next() {
                Some("profile") => r#"{"country":"US"}"#,
                Some("visit") => "null",
                _ => "[]",
            };
            async move {
                let mut r = reply(hyper::StatusCode::from_u16(status).unwrap(), body);
                if let Some(to) = location {
                    r.headers_mut()
                        .insert(header::LOCATION, to.parse().unwrap());
                }
                r
            }
        });
        let addr = serve("127.0.0.1:0".parse().unwrap(), h).await.unwrap();
        (format!("http://{addr}"), seen)
    }

    /// Redirects are followed (as reqwest, the client before, did): `Authorization`
    /// goes along to the same scheme, host and port, not to another; a loop ends after
    /// `MAX_REDIRECTS` as a failed request.
    #[test]
    fn redirects_are_followed_with_the_credentials_kept_to_the_apis_origin() {
        let rt = runtime();
        rt.block_on(async {
            let (other, other_seen) = server(|_| (200, None)).await;
            let (base, seen) = server(move |path| {
                let what = path.rsplit('/').next().unwrap_or_default();
                match path {
                    p if p.starts_with("/users/here/") => (302, Some(format!("/moved/{what}"))),
                    p if p.starts_with("/users/away/") => {
                        (307, Some(format!("{other}/elsewhere/{what}")))
                    }
                    p if p.starts_with("/users/loop/") => (301, Some(p.to_string())),
                    _ => (200, None),
                }
            })
            .await;
            let secret = crate::config::Secret::new("Bearer t");
            let api = HttpProfileApi::new(&base, Duration::from_secs(5))
                .unwrap()
                .with_auth(Some(&secret))
                .unwrap();

            let here = api
                .fetch("here")
                .await
                .expect("followed on the same server");
            assert_eq!(here.profile.country.as_deref(), Some("US"));
            let moved: Vec<_> = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.starts_with("/moved/"))
                .cloned()
                .collect();
            assert_eq!(moved.len(), 3);
            assert!(moved.iter().all(|(_, auth)| *auth), "{moved:?}");

            let away = api.fetch("away").await.expect("followed to another server");
            assert_eq!(away.profile.country.as_deref(), Some("US"));
            let elsewhere = other_seen.lock().unwrap().clone();
            assert_eq!(elsewhere.len(), 3);
            assert!(elsewhere.iter().all(|(_, auth)| !*auth), "{elsewhere:?}");

            let e = api.fetch("loop").await.expect_err("a loop ends");
            assert!(e.to_string().contains("more than 10 redirects"), "{e}");
            assert!(e.is_transient());
        });
    }

    /// An outage is warned of once requests fail in a row, not only once a look-up ran
    /// out of retries: 503s answered within the retries are told (a trial's API
    /// answering 503 to everything got no warning for 24 s, its retries queued behind
    /// the limit), and an answer ends it. A failure among answers is not told (an API
    /// failing now and then got a warning and an "answers again" every 10 s).
    #[test]
    fn an_outage_is_told_once_requests_fail_in_a_row() {
        let rt = runtime();
        rt.block_on(async {
            use std::sync::atomic::{AtomicUsize, Ordering};
            let left = Arc::new(AtomicUsize::new(OUTAGE_FAILURES as usize - 1));
            let failing = left.clone();
            let (base, _) = server(move |_| {
                let fail = failing
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                (if fail { 503 } else { 200 }, None)
            })
            .await;
            let api = HttpProfileApi::new(&base, Duration::from_secs(5))
                .unwrap()
                .with_retries(3, Duration::from_millis(5));
            let data = api.fetch("u").await.expect("within its retries");
            assert_eq!(data.profile.country.as_deref(), Some("US"));
            assert_eq!(
                api.outage.warnings(),
                0,
                "503s short of a row are no outage"
            );

            left.store(OUTAGE_FAILURES as usize, Ordering::Relaxed);
            let data = api.fetch("v").await.expect("within its retries");
            assert_eq!(data.profile.country.as_deref(), Some("US"));
            assert_eq!(api.outage.warnings(), 1, "told at the 503s in a row");
            assert_eq!(api.outage.answered(), None, "its end told by the answer");
        });
    }

    /// Each request's `Host` names the server it goes to: the API's for a look-up (set
    /// once for the base URL), a redirect's target for the request that follows it.
    #[test]
    fn each_request_names_the_host_it_goes_to() {
        let rt = runtime();
        rt.block_on(async {
            let hosts: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
            let serve_logging = |to: Option<String>| {
                let log = hosts.clone();
                let h = handler(move |req: Request<Bytes>| {
                    let host = req.headers().get(header::HOST).map(|h| h.as_bytes());
                    let host = String::from_utf8_lossy(host.unwrap_or(b"(none)")).into_owned();
                    log.lock()
                        .unwrap()
                        .push((req.uri().path().to_string(), host));
                    let what = req.uri().path().rsplit('/').next().unwrap_or_default();
                    let body = match what {
                        "profile" => "{}",
                        "visit" => "null",
                        _ => "[]",
                    };
                    let mut r = reply(hyper::StatusCode::OK, body);
                    if let Some(to) = &to {
                        *r.status_mut() = hyper::StatusCode::TEMPORARY_REDIRECT;
                        r.headers_mut().insert(
                            header::LOCATION,
                            format!("{to}/there/{what}").parse().unwrap(),
                        );
                    }
                    async move { r }
                });
                serve("127.0.0.1:0".parse().unwrap(), h)
            };
            let other = serve_logging(None).await.unwrap();
            let base = serve_logging(Some(format!("http://localhost:{}", other.port())))
                .await
                .unwrap();
            let api =
                HttpProfileApi::new(&format!("http://{base}/"), Duration::from_secs(5)).unwrap();
            api.fetch("u1").await.expect("followed to the other server");
            let mut seen = hosts.lock().unwrap().clone();
            seen.sort();
            let expected: Vec<(String, String)> = ["history", "profile", "visit"]
                .iter()
                .map(|w| (format!("/there/{w}"), format!("localhost:{}", other.port())))
                .chain(
                    ["history", "profile", "visit"]
                        .iter()
                        .map(|w| (format!("/users/u1/{w}"), base.to_string())),
                )
                .collect();
            assert_eq!(seen, expected);
        });
    }

    /// Credentials written in the base URL go as `Authorization: Basic` on every
    /// request (as reqwest sent them: found by a trial, lost with the change of
    /// client), and messages show the URL without them.
    #[test]
    fn credentials_in_the_base_url_are_sent_and_never_shown() {
        let rt = runtime();
        rt.block_on(async {
            let (base, seen) = server(|path| {
                if path.starts_with("/users/nobody/") {
                    (500, None)
                } else {
                    (200, None)
                }
            })
            .await;
            let with_credentials = base.replace("http://", "http://u1:p%40ss@");
            let api = HttpProfileApi::new(&with_credentials, Duration::from_secs(5)).unwrap();
            api.fetch("someone").await.expect("looked up");
            let sent = seen.lock().unwrap().clone();
            assert_eq!(sent.len(), 3);
            assert!(sent.iter().all(|(_, auth)| *auth), "{sent:?}");
            let e = api.fetch("nobody").await.expect_err("a 500").to_string();
            assert!(e.contains(&format!("{base}/users/nobody/")), "{e}");
            assert!(!e.contains("p%40ss") && !e.contains("u1"), "{e}");
        });
    }
}
