//! A small HTTP/1.1 server (hyper, keep-alive) for the `mock-api` dev server and the
//! test receivers: the handler gets the whole request with its body collected.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub type Reply = Response<Full<Bytes>>;
pub type Handler =
    Arc<dyn Fn(Request<Bytes>) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// Request bodies past this size are refused with 413.
const MAX_REQUEST_BYTES: usize = 16 << 20;

pub fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Wraps a closure as a `Handler`.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// Binds `addr` and serves `handler` on the current tokio runtime until the runtime
/// stops. Returns the bound address (useful with port 0).
pub async fn serve(addr: SocketAddr, handler: Handler) -> std::io::Result<SocketAddr> {
    serve_over(addr, handler, |stream| async move { Ok(stream) }).await
}

/// `serve`, each connection first going through `wrap` (a TLS handshake, say); one
/// that fails there is dropped.
pub async fn serve_over<F, Fut, S>(
    addr: SocketAddr,
    handler: Handler,
    wrap: F,
) -> std::io::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<S>> + Send + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let wrap = Arc::new(wrap);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let wrap = wrap.clone();
            tokio::spawn(async move {
                let stream = match wrap(stream).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("connection dropped: {e}");
                        return;
                    }
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => {
                                return Ok::<_, hyper::Error>(reply(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    "{}",
                                ));
                            }
                        };
                        Ok(handler(Request::from_parts(parts, body)).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}
