//! The job's HTTP/1.1 client: hyper's connections (`hyper::client::conn::http1`, the
//! protocol and its bodies, chunked or not) kept alive in a pool of our own.
//!
//! Not hyper-util's pooled `Client`: each request hashed its pool key with SipHash
//! several times (checkout, the set of connections being made, the idle list: ~2,300
//! instructions a request) and built a checkout raced against a connect, where the job
//! sends its requests to one or two origins. Here a request takes the most recently
//! parked connection of its origin from a short list under a lock; else it connects, and
//! takes a connection parked meanwhile if that comes first (the new one is parked when
//! made), as hyper-util did.
//! callgrind: ~2,500 instructions a request in this module where hyper-util's client
//! took ~7,500 (webhook calls: 94,500 -> 89,300 instructions a call; a Profile API
//! look-up, three requests, ~16,000 fewer).
//!
//! What it keeps of hyper-util's behaviour: a request without `Host` gets the one the
//! URL names (`http_client::host_header`, made once per origin) and goes in origin form
//! (`/path?query`); a request that a parked connection could not take (closed as it was
//! taken) is sent again on another; a connection goes back to the pool once its answer
//! has been read to its end, and is closed after `IDLE_TIMEOUT` unused; errors read as
//! the client's did ("client error (Connect): tcp connect error: ...").
//!
//! Beyond it, as Go's client: a request written on a parked connection that the server
//! closed (or reset) without answering is sent again on another when sending it twice is
//! safe (GET, HEAD, or an `Idempotency-Key`). A server closes an idle connection when it
//! likes (Node's after 5 s), and a request can cross its close on the wire: hyper-util
//! failed such a request, the caller retried it after a backoff, and the adaptive limit
//! read it as overload and halved.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service;

use crate::http_client::SendError;

/// How long a connection is kept unused before it is closed (hyper-util's default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Sender = SendRequest<Full<Bytes>>;

/// A request as the job's clients send it.
pub type Request = hyper::Request<Full<Bytes>>;
type Response = hyper::Response<hyper::body::Incoming>;

/// What makes a request for `HyperClient::request`: the same request at every call.
pub type Make<'a> = &'a (dyn Fn() -> Request + Send + Sync);

/// A pooled HTTP/1.1 client on hyper, over TLS where the URL says `https`. Clones share
/// the pool.
#[derive(Clone)]
pub struct HyperClient {
    connector: Connector,
    pool: Arc<Pool>,
}

/// Where a connection goes: scheme and authority (what the connector is given).
#[derive(Clone, PartialEq)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// Its root URL (`scheme://authority/`).
    fn uri(&self) -> Result<hyper::Uri, hyper::http::Error> {
        hyper::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
    }
}

struct Pool {
    /// Parked connections by origin (a job talks to one or two), each list the oldest
    /// first: taken from the back, expired from the front.
    idle: Mutex<Vec<Parked>>,
    max_idle_per_origin: usize,
    idle_timeout: Duration,
    /// Whether a task closes expired connections (one at a time, while any is parked).
    reaping: AtomicBool,
    /// Requests waiting for a connection to be parked, and their wake-up.
    waiting: AtomicUsize,
    parked: tokio::sync::Notify,
}

/// A request counted among those waiting for a parked connection, while it lives.
struct Waiting<'a>(&'a Pool);

impl<'a> Waiting<'a> {
    fn on(pool: &'a Pool) -> Self {
        pool.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Parked {
    origin: Origin,
    /// The `Host` the origin's URLs name (`http_client::host_header`), made once.
    host: Option<hyper::header::HeaderValue>,
    senders: VecDeque<(Sender, Instant)>,
}

impl Parked {
    fn new(origin: Origin) -> Self {
        Parked {
            host: origin
                .uri()
                .ok()
                .and_then(|uri| crate::http_client::host_header(&uri)),
            origin,
            senders: VecDeque::new(),
        }
    }

    /// The most recently parked open connection; closed ones met on the way, and
    /// expired ones, are dropped.
    fn take(&mut self, timeout: Duration) -> Option<Sender> {
        self.expire(timeout);
        while let Some((sender, _)) = self.senders.pop_back() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Drops the connections unused for `timeout` and the closed ones among them.
    fn expire(&mut self, timeout: Duration) {
        while self
            .senders
            .front()
            .is_some_and(|(s, since)| since.elapsed() >= timeout || s.is_closed())
        {
            self.senders.pop_front();
        }
    }
}

impl HyperClient {
    /// A client over `connector`, keeping up to `max_idle_per_origin` unused connections
    /// to each origin, each closed after `idle_timeout` unused.
    pub fn new(connector: Connector, max_idle_per_origin: usize, idle_timeout: Duration) -> Self {
        HyperClient {
            connector,
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                max_idle_per_origin,
                idle_timeout,
                reaping: AtomicBool::new(false),
                waiting: AtomicUsize::new(0),
                parked: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Sends the request `make` makes (its URI absolute: `http` or `https`): its answer's
    /// head, the body to be read (a body not read to its end closes its connection).
    /// `make` is called once, and again only for a request to send once more (below):
    /// a copy of every request, made in case, was ~1,600 instructions of a webhook
    /// call's ~90,000.
    pub async fn request(&self, make: Make<'_>) -> Result<Response, SendError> {
        let mut request = make();
        let uri = request.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::new(
                "client error (UserAbsoluteUriRequired)".to_string(),
            ));
        };
        let origin = Origin {
            scheme: scheme.clone(),
            authority: authority.clone(),
        };
        let (host, mut parked) = self.pool.checkout(&origin);
        origin_form(&mut request, host.as_ref());
        loop {
            let (mut sender, reused) = match parked.take().or_else(|| self.pool.take(&origin)) {
                Some(sender) => (sender, true),
                None => self.connect_or_wait(&origin).await?,
            };
            let again = reused && replayable(&request);
            match sender.try_send_request(request).await {
                Ok(answer) => {
                    self.pool.park_when_ready(origin, sender);
                    return Ok(answer);
                }
                // Not written: the connection closed as it was taken. Another is tried,
                // as hyper-util did; a new connection that cannot take it fails.
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    Some(_) => return Err(client_error("Canceled", e.error())),
                    // Written, and the server closed the kept connection without a word:
                    // it closed it as idle as the request went (the race every HTTP/1.1
                    // client meets). Sent again on another, as Go's client and browsers
                    // do, when sending twice is safe: a look-up (GET), or a call the
                    // receiver tells apart by its `Idempotency-Key`. Else it fails, and
                    // the caller's retries decide.
                    None if again && closed_unanswered(e.error()) => {
                        tracing::debug!(
                            "a kept connection closed without answering; sent again: {}",
                            crate::http_client::error_chain(e.error())
                        );
                        request = make();
                        origin_form(&mut request, host.as_ref());
                    }
                    None => return Err(client_error("SendRequest", e.error())),
                },
            }
        }
    }

    /// A new connection to `origin`, or one parked while it is being made, whichever
    /// comes first (as hyper-util raced them: a slow connect, a TLS handshake far away,
    /// does not hold a request that a connection freed meanwhile can take); whether it
    /// is a parked one. A new connection not taken is parked when made.
    async fn connect_or_wait(&self, origin: &Origin) -> Result<(Sender, bool), SendError> {
        let (made, mut connected) = tokio::sync::oneshot::channel();
        let (client, to) = (self.clone(), origin.clone());
        // Its own task: the connect goes on when a parked connection is taken instead.
        tokio::spawn(async move {
            if let Err(Ok(sender)) = made.send(client.connect(&to).await) {
                client.pool.park_when_ready(to, sender);
            }
        });
        let _waiting = Waiting::on(&self.pool);
        loop {
            let parked = self.pool.parked.notified();
            tokio::pin!(parked);
            // Told of a connection parked from here on, before looking.
            parked.as_mut().enable();
            if let Some(sender) = self.pool.take(origin) {
                return Ok((sender, true));
            }
            tokio::select! {
                new = &mut connected => {
                    let new = new.unwrap_or_else(|_| Err(SendError::new(
                        "client error (Connect): the connecting task ended".to_string(),
                    )));
                    return new.map(|sender| (sender, false));
                }
                () = &mut parked => {}
            }
        }
    }

    async fn connect(&self, origin: &Origin) -> Result<Sender, SendError> {
        let mut connector = self.connector.clone();
        let target = origin.uri().map_err(|e| client_error("Connect", &e))?;
        let connect = async {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
            connector.call(target).await
        };
        let io = connect
            .await
            .map_err(|e| client_error("Connect", e.as_ref()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| client_error("Connect", &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("HTTP connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// Named once (a `&str` is parsed into a name at each look-up); the webhook sets it.
pub(crate) const IDEMPOTENCY_KEY: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("idempotency-key");

/// `origin`'s entry in the list, added if it has none.
fn entry<'a>(idle: &'a mut Vec<Parked>, origin: &Origin) -> &'a mut Parked {
    match idle.iter().position(|p| p.origin == *origin) {
        Some(at) => &mut idle[at],
        None => {
            idle.push(Parked::new(origin.clone()));
            idle.last_mut().expect("just pushed")
        }
    }
}

/// Whether `request` may go to the server twice: a GET or HEAD, or a request carrying an
/// `Idempotency-Key` (the receiver drops repeats by it). Go's client asks the same.
fn replayable(request: &Request) -> bool {
    matches!(*request.method(), hyper::Method::GET | hyper::Method::HEAD)
        || request.headers().contains_key(IDEMPOTENCY_KEY)
}

/// `request` as it goes on the connection: the origin's `Host` (unless it has one) and
/// the path and query alone as its target.
fn origin_form(request: &mut Request, host: Option<&hyper::header::HeaderValue>) {
    if let Some(host) = host
        && !request.headers().contains_key(hyper::header::HOST)
    {
        request
            .headers_mut()
            .insert(hyper::header::HOST, host.clone());
    }
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = hyper::Uri::from(path);
}

/// Whether the connection ended before its answer began: closed (no answer), or reset.
fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        cause = c.source();
    }
    false
}

/// An error as hyper-util's client wrote it: its kind, then its causes.
fn client_error(kind: &str, e: &(dyn std::error::Error + 'static)) -> SendError {
    SendError::new(format!(
        "client error ({kind}): {}",
        crate::http_client::error_chain(e)
    ))
}

impl Pool {
    /// The `Host` for `uri` (to `origin`), and a parked connection to it if one is
    /// open: one look-up, under the lock each request takes anyway.
    fn checkout(&self, origin: &Origin) -> (Option<hyper::header::HeaderValue>, Option<Sender>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let parked = entry(&mut idle, origin);
        (parked.host.clone(), parked.take(self.idle_timeout))
    }

    /// The most recently parked open connection to `origin`.
    fn take(&self, origin: &Origin) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let parked = idle.iter_mut().find(|p| p.origin == *origin)?;
        parked.take(self.idle_timeout)
    }

    /// Parks `sender` once its connection can take another request (its answer read to
    /// the end); at once if it already can.
    fn park_when_ready(self: &Arc<Self>, origin: Origin, mut sender: Sender) {
        if sender.is_ready() {
            self.park(origin, sender);
        } else if !sender.is_closed() {
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                if std::future::poll_fn(|cx| sender.poll_ready(cx))
                    .await
                    .is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    pool.park(origin, sender);
                }
            });
        }
    }

    fn park(self: &Arc<Self>, origin: Origin, sender: Sender) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let parked = entry(&mut idle, &origin);
            parked.expire(self.idle_timeout);
            if parked.senders.len() >= self.max_idle_per_origin {
                return;
            }
            parked.senders.push_back((sender, Instant::now()));
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.parked.notify_waiters();
        }
        self.reap_later();
    }

    /// Starts the task that closes expired connections, unless it runs: it ends when
    /// nothing is parked, or the client is gone.
    fn reap_later(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = self.idle_timeout;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every / 2).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                for parked in idle.iter_mut() {
                    parked.expire(pool.idle_timeout);
                    parked.senders.retain(|(s, _)| !s.is_closed());
                }
                idle.retain(|p| !p.senders.is_empty());
                if idle.is_empty() {
                    // Under the lock: a connection parked after it starts another task.
                    pool.reaping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What a raw HTTP server on 127.0.0.1 saw: connections accepted, connections the
    /// client closed, and each request's head.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        closed_by_client: AtomicUsize,
        heads: Mutex<Vec<String>>,
    }

    /// A raw server on 127.0.0.1: each connection accepted is counted and handed to
    /// `serve` with its number (from 0) and the log.
    async fn listen<F, S>(serve: F) -> (String, Arc<Seen>)
    where
        F: Fn(tokio::net::TcpStream, usize, Arc<Seen>) -> S + Send + 'static,
        S: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let n = log.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, n, log.clone()));
            }
        });
        (base, seen)
    }

    /// Answers each request (a head without a body) with `answer` after `delay`, and
    /// closes the connection after each answer if `close`.
    async fn server(answer: &'static [u8], delay: Duration, close: bool) -> (String, Arc<Seen>) {
        listen(move |mut socket, _, log| async move {
            let (mut read, mut buf) = (Vec::new(), [0u8; 4096]);
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        log.closed_by_client.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(n) => read.extend_from_slice(&buf[..n]),
                }
                while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = read.drain(..end + 4).collect();
                    log.heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8(head).unwrap());
                    tokio::time::sleep(delay).await;
                    if socket.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            }
        })
        .await
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn client(max_idle: usize, idle_timeout: Duration) -> HyperClient {
        let tls = crate::http_client::hyper_client(None).unwrap();
        HyperClient::new(tls.connector, max_idle, idle_timeout)
    }

    fn bare(url: &str) -> impl Fn() -> Request + Send + Sync {
        crate::http_client::bare_get(url.parse().unwrap())
    }

    async fn get(client: &HyperClient, url: &str) -> Result<Vec<u8>, SendError> {
        let answer = client.request(&bare(url)).await?;
        Ok(crate::http_client::read_body(answer.into_body(), 1 << 20)
            .await
            .unwrap())
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Requests one after another go on one connection, in origin form, with the
    /// `Host` the URL names.
    #[test]
    fn a_connection_is_kept_and_used_again() {
        runtime().block_on(async {
            let (base, seen) = server(OK, Duration::ZERO, false).await;
            let c = client(8, IDLE_TIMEOUT);
            for path in ["/a?b=1", "/", ""] {
                assert_eq!(get(&c, &format!("{base}{path}")).await.unwrap(), b"ok");
            }
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
            let heads = seen.heads.lock().unwrap().clone();
            let host = base.trim_start_matches("http://");
            let lines: Vec<String> = heads
                .iter()
                .map(|h| h.lines().next().unwrap().to_string())
                .collect();
            assert_eq!(
                lines,
                ["GET /a?b=1 HTTP/1.1", "GET / HTTP/1.1", "GET / HTTP/1.1"]
            );
            for head in &heads {
                assert!(
                    head.to_ascii_lowercase()
                        .contains(&format!("\r\nhost: {host}\r\n")),
                    "{head}"
                );
            }
        });
    }

    /// A connection the server closed is not taken for the next request.
    #[test]
    fn a_connection_the_server_closed_is_not_used_again() {
        runtime().block_on(async {
            let (base, seen) = server(OK, Duration::ZERO, true).await;
            let c = client(8, IDLE_TIMEOUT);
            for _ in 0..3 {
                assert_eq!(get(&c, &base).await.unwrap(), b"ok");
                // The connection's task has read the close.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 3);
        });
    }

    /// An answer whose body is dropped unread closes its connection; the next request
    /// gets a new one.
    #[test]
    fn an_answer_not_read_to_its_end_closes_its_connection() {
        const BIG: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n";
        runtime().block_on(async {
            let (base, seen) = server(BIG, Duration::ZERO, false).await;
            let c = client(8, IDLE_TIMEOUT);
            drop(c.request(&bare(&base)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 1);
            c.request(&bare(&base)).await.unwrap();
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
        });
    }

    /// A connection unused for the idle timeout is closed, by the pool's own task.
    #[test]
    fn connections_unused_past_the_idle_timeout_are_closed() {
        runtime().block_on(async {
            let (base, seen) = server(OK, Duration::ZERO, false).await;
            let c = client(8, Duration::from_millis(200));
            get(&c, &base).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 0);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 1);
            get(&c, &base).await.unwrap();
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
        });
    }

    /// Of connections opened at once, at most `max_idle_per_origin` are kept.
    #[test]
    fn at_most_the_configured_connections_are_kept_unused() {
        runtime().block_on(async {
            let (base, seen) = server(OK, Duration::from_millis(100), false).await;
            let c = client(1, IDLE_TIMEOUT);
            let (a, b) = tokio::join!(get(&c, &base), get(&c, &base));
            assert_eq!((a.unwrap(), b.unwrap()), (b"ok".to_vec(), b"ok".to_vec()));
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
            assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 1);
            get(&c, &base).await.unwrap();
            get(&c, &base).await.unwrap();
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
        });
    }

    /// A server whose first connection answers `answered` requests, then closes as the
    /// next one arrives, without a word (as a server closing an idle connection while a
    /// request crosses its close); later connections answer every request.
    async fn closing_first_after(answered: usize) -> (String, Arc<Seen>) {
        listen(move |mut socket, n, log| async move {
            let (mut read, mut buf, mut served) = (Vec::new(), [0u8; 4096], 0);
            while let Ok(got @ 1..) = socket.read(&mut buf).await {
                read.extend_from_slice(&buf[..got]);
                while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = read.drain(..end + 4).collect();
                    let head = String::from_utf8(head).unwrap();
                    let body = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |n| n.parse().unwrap());
                    read.drain(..body);
                    log.heads.lock().unwrap().push(head);
                    if n == 0 && served == answered {
                        return;
                    }
                    served += 1;
                    if socket.write_all(OK).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await
    }

    /// A POST to `url`; how many times its request was made.
    async fn post(c: &HyperClient, url: &str, key: Option<&str>) -> Result<usize, SendError> {
        let made = AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, Ordering::SeqCst);
            let mut request = hyper::Request::new(Full::new(Bytes::from_static(b"{}")));
            *request.method_mut() = hyper::Method::POST;
            *request.uri_mut() = url.parse().unwrap();
            if let Some(key) = key {
                let key = hyper::header::HeaderValue::from_str(key).unwrap();
                request.headers_mut().insert("idempotency-key", key);
            }
            request
        };
        let answer = c.request(&make).await?;
        crate::http_client::read_body(answer.into_body(), 1 << 20)
            .await
            .unwrap();
        Ok(made.into_inner())
    }

    /// A request written on a kept connection that the server closes without answering
    /// goes again on a new one when it is safe to send twice: a GET, or a POST with an
    /// `Idempotency-Key`; a POST without one fails (the caller's retries decide). The
    /// request is made again only then.
    #[test]
    fn a_request_crossing_the_close_of_a_kept_connection_is_sent_again_when_safe() {
        runtime().block_on(async {
            let (base, seen) = closing_first_after(1).await;
            let c = client(8, IDLE_TIMEOUT);
            assert_eq!(get(&c, &base).await.unwrap(), b"ok");
            assert_eq!(get(&c, &base).await.unwrap(), b"ok");
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
            assert_eq!(seen.heads.lock().unwrap().len(), 3);

            let (base, seen) = closing_first_after(1).await;
            let c = client(8, IDLE_TIMEOUT);
            assert_eq!(post(&c, &base, Some("e-1")).await.unwrap(), 1);
            assert_eq!(post(&c, &base, Some("e-2")).await.unwrap(), 2);
            let heads = seen.heads.lock().unwrap().clone();
            assert_eq!(heads.len(), 3);
            assert!(heads[1].contains("idempotency-key: e-2"), "{heads:?}");
            assert_eq!(heads[1], heads[2], "the same request again");

            let (base, seen) = closing_first_after(1).await;
            let c = client(8, IDLE_TIMEOUT);
            assert_eq!(post(&c, &base, None).await.unwrap(), 1);
            let e = post(&c, &base, None).await.unwrap_err().to_string();
            assert_eq!(
                e,
                "client error (SendRequest): connection closed before message completed"
            );
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 1, "not sent again");
            assert_eq!(seen.heads.lock().unwrap().len(), 2);
        });
    }

    /// A new connection closed without an answer is not tried again (the server may
    /// close every one so).
    #[test]
    fn a_new_connection_closed_without_an_answer_fails_the_request() {
        runtime().block_on(async {
            let (base, seen) = closing_first_after(0).await;
            let c = client(8, IDLE_TIMEOUT);
            let e = get(&c, &base).await.unwrap_err().to_string();
            assert!(e.starts_with("client error (SendRequest): "), "{e}");
            assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
        });
    }

    /// Failures read as hyper-util's client wrote them.
    #[test]
    fn failures_read_as_the_clients_errors() {
        runtime().block_on(async {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/x", closed.local_addr().unwrap());
            drop(closed);
            let c = client(8, IDLE_TIMEOUT);
            let e = get(&c, &url).await.unwrap_err().to_string();
            assert!(
                e.starts_with("client error (Connect): tcp connect error: "),
                "{e}"
            );
            let e = get(&c, "/relative").await.unwrap_err().to_string();
            assert_eq!(e, "client error (UserAbsoluteUriRequired)");
        });
    }
}
