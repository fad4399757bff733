//! The one way the job builds HTTP clients: hyper's HTTP/1.1 connections, kept alive
//! in a pool of the job's own (`crate::http_pool`), over rustls with the `ring` provider
//! and the platform's root certificates (plus a private CA's, from `ca-file`).
//!
//! Not reqwest, which is built on the same crates: it parses each request's URL twice
//! more (its redirect layer and its response, through the `url` crate: ~12,000
//! instructions a call, a tenth of a webhook call's), where the job's calls are a GET
//! or a POST to a URL it holds parsed; the Profile API's rare redirect is followed by
//! its own loop (`profile_api::http`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn install_provider() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Another part of the process may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub use crate::http_pool::{HyperClient, Make, Request};

/// Why an answer's body could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Read(hyper::Error),
    #[error("larger than {0} bytes")]
    TooLarge(usize),
}

/// An answer: its status and headers, and its body (read to its end, up to a limit).
#[derive(Debug)]
pub struct Answer {
    pub status: hyper::StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Result<Vec<u8>, BodyError>,
}

/// A request that got no answer: the client's error with its causes ("client error
/// (Connect): tcp connect error: Connection refused ...").
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

impl SendError {
    pub fn new(reason: String) -> Self {
        SendError(reason)
    }

    /// No answer within `limit`.
    pub fn timed_out(limit: std::time::Duration) -> Self {
        SendError(format!("timed out after {limit:?}"))
    }
}

/// `answer`, or `SendError::timed_out` if it has not come within `limit`.
pub async fn within<T>(
    limit: std::time::Duration,
    answer: impl Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    tokio::time::timeout(limit, answer)
        .await
        .unwrap_or_else(|_| Err(SendError::timed_out(limit)))
}

/// Sends the request `make` makes (`HyperClient::request`: made again only to send it
/// once more) and reads its answer, the body up to `max_body` bytes: read to its end,
/// the connection goes back to the pool; past `max_body` the rest is not read (the body
/// is `TooLarge`, the connection closed).
pub async fn send(
    client: &HyperClient,
    make: Make<'_>,
    max_body: usize,
) -> Result<Answer, SendError> {
    let (parts, body) = head(client, make).await?.into_parts();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: read_body(body, max_body).await,
    })
}

/// Sends the request `make` makes: the answer's head, its body still to be read
/// (`read_body`; a body not read to its end closes its connection).
pub async fn head(
    client: &HyperClient,
    make: Make<'_>,
) -> Result<hyper::Response<hyper::body::Incoming>, SendError> {
    // Boxed, as hyper-util's client boxed its own: the callers' futures (three look-ups
    // joined in a fetch) held it inline, kilobytes moved as each was built and spawned.
    Box::pin(client.request(make)).await
}

/// The `Host` header hyper's client writes for a request to `uri`: its host, with
/// `:port` unless the port is the scheme's default (80; 443 for `https`/`wss`). The
/// pool makes it once per origin (hyper-util's client formatted it, and parsed the port
/// twice, for every request: ~1,400 instructions a webhook call, of ~97,000).
pub fn host_header(uri: &hyper::Uri) -> Option<hyper::header::HeaderValue> {
    let host = uri.host()?;
    let secure = matches!(uri.scheme_str(), Some("https" | "wss"));
    let value = match uri.port_u16() {
        Some(443) if secure => host.to_string(),
        Some(80) if !secure => host.to_string(),
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    hyper::header::HeaderValue::try_from(value).ok()
}

/// A GET of `url` with `send` (tools and tests: metrics, a mock API's statistics).
pub async fn get(client: &HyperClient, url: &str, max_body: usize) -> Result<Answer, SendError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| SendError(format!("not a URL: {e}")))?;
    send(client, &bare_get(uri), max_body).await
}

/// What makes a GET of `uri` with no headers of its own (`HyperClient::request`).
pub fn bare_get(uri: hyper::Uri) -> impl Fn() -> Request + Send + Sync {
    move || {
        let mut request = hyper::Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri.clone();
        request
    }
}

/// A body, up to `max` bytes: read to its end, its connection goes back to the pool.
pub async fn read_body(mut body: hyper::body::Incoming, max: usize) -> Result<Vec<u8>, BodyError> {
    use http_body_util::BodyExt;
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(BodyError::Read)?.into_data() {
            if read.len() + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(read)
}

/// A TLS set-up that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("the platform's certificate verifier")]
    Verifier(#[source] rustls::Error),
    #[error("TLS versions")]
    Versions(#[source] rustls::Error),
}

/// `HyperClient` trusting the platform's roots and those in the PEM file `ca`: up to
/// 1,024 idle connections per host kept, each closed after 90 s idle.
pub fn hyper_client(ca: Option<&Path>) -> Result<HyperClient, TlsError> {
    install_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let extra = match ca {
        Some(path) => ca_certs(path)?,
        None => Vec::new(),
    };
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
    }
    .map_err(TlsError::Verifier)?;
    // ALPN (http/1.1) is the connector's to set.
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(HyperClient::new(
        https,
        1024,
        crate::http_pool::IDLE_TIMEOUT,
    ))
}

/// A CA file that cannot be trusted; each names the file, its cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a file of PEM certificates: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{}: no PEM certificate in it", path.display())]
    Empty { path: PathBuf },
    #[error("{}: certificate {number} of the file is not a valid X.509 certificate", path.display())]
    Invalid {
        path: PathBuf,
        number: usize,
        #[source]
        source: rustls::Error,
    },
}

/// What is wrong with a PEM file, in words (the library's own messages print the
/// markers as lists of byte values).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a section has no \"-----END {}-----\" line (the file is cut short?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a section starts with \"{}\"",
            String::from_utf8_lossy(line)
        ),
        Error::Base64Decode(_) => "a section's base64 is damaged".to_string(),
        other => other.to_string(),
    }
}

/// The certificates in the PEM file at `path`: at least one, each a certificate a
/// verifier can take as a root.
pub fn ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Parse {
            path: path.to_path_buf(),
            reason: pem_problem(&e),
        })?;
    if certs.is_empty() {
        return Err(CaError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in certs.iter().enumerate() {
        roots.add(der.clone()).map_err(|source| CaError::Invalid {
            path: path.to_path_buf(),
            number: i + 1,
            source,
        })?;
    }
    Ok(certs)
}

/// The credentials written into a URL (`https://user:pass@host/...`), as the
/// `Authorization: Basic` value they stand for (marked sensitive), and the URL without
/// them: what is sent, and what messages show.
/// `url` as messages show it: each value of its query as `***` (`?token=***&x=***`),
/// where a receiver's token is often passed.
pub fn without_query_values(url: &url::Url) -> String {
    let Some(query) = url.query() else {
        return url.to_string();
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}=***"),
            None if pair.is_empty() => String::new(),
            None => "***".to_string(),
        })
        .collect();
    let mut shown = url.clone();
    shown.set_query(Some(&masked.join("&")));
    shown.to_string()
}

pub fn split_credentials(url: &url::Url) -> (url::Url, Option<hyper::header::HeaderValue>) {
    use base64::Engine;
    if url.username().is_empty() && url.password().is_none() {
        return (url.clone(), None);
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut pair = decode(url.username());
    pair.push(b':');
    pair.extend(decode(url.password().unwrap_or_default()));
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    let mut bare = url.clone();
    // Only URLs that cannot have credentials refuse these (not http or https).
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    let header = hyper::header::HeaderValue::try_from(value)
        .ok()
        .map(|mut h| {
            h.set_sensitive(true);
            h
        });
    (bare, header)
}

/// An error with its causes (hyper's top-level message hides them: "client error
/// (Connect)").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A CA file is read whole or refused, naming the file and what is wrong with it in
    /// words: cut short, damaged base64, a section that is not a certificate.
    #[test]
    fn a_ca_file_is_refused_with_what_is_wrong_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let good = write(dir.path(), "good.pem", &cert);
        assert_eq!(ca_certs(&good).unwrap().len(), 1);
        let two = write(dir.path(), "two.pem", &format!("{cert}\n{cert}"));
        assert_eq!(ca_certs(&two).unwrap().len(), 2);

        let shown = |name: &str, text: &str| {
            let path = write(dir.path(), name, text);
            let e = ca_certs(&path).unwrap_err();
            let shown = error_chain(&e);
            assert!(shown.starts_with(&path.display().to_string()), "{shown}");
            shown
        };
        let cut = shown("cut.pem", &cert[..cert.len() / 2]);
        assert!(
            cut.contains("a section has no \"-----END CERTIFICATE-----\" line"),
            "{cut}"
        );
        let damaged = shown("damaged.pem", &cert.replacen("MII", "!!!", 1));
        assert!(
            damaged.ends_with("a section's base64 is damaged"),
            "{damaged}"
        );
        let lines: Vec<&str> = cert.lines().collect();
        let short = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[lines.len() - 1]);
        let short = shown("short.pem", &short);
        assert!(
            short.contains("certificate 1 of the file is not a valid X.509 certificate"),
            "{short}"
        );
        assert!(shown("none.pem", "hello\n").ends_with("no PEM certificate in it"));
    }

    /// `Host` as hyper's client writes it: the port only where it is not the scheme's
    /// default, an IPv6 address in its brackets; none without a host.
    #[test]
    fn the_host_header_leaves_out_only_the_schemes_default_port() {
        let host =
            |uri: &str| host_header(&uri.parse().unwrap()).map(|h| h.to_str().unwrap().to_string());
        assert_eq!(host("http://h/a").as_deref(), Some("h"));
        assert_eq!(host("http://h:80/a").as_deref(), Some("h"));
        assert_eq!(host("https://h:443/a").as_deref(), Some("h"));
        assert_eq!(host("https://h:80/a").as_deref(), Some("h:80"));
        assert_eq!(host("http://h:443/a").as_deref(), Some("h:443"));
        assert_eq!(
            host("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(host("http://[::1]:8080/x").as_deref(), Some("[::1]:8080"));
        assert_eq!(host("https://[::1]/x").as_deref(), Some("[::1]"));
        assert_eq!(host("/relative"), None);
    }

    /// Credentials in a URL become `Authorization: Basic` (percent-decoded, as
    /// reqwest sent them), and the URL is left without them; a URL without any is kept.
    #[test]
    fn credentials_in_a_url_become_basic_auth_and_leave_the_url() {
        let url = url::Url::parse("http://u1:p%40ss@127.0.0.1:8080/hook?x=1").unwrap();
        let (bare, auth) = split_credentials(&url);
        assert_eq!(bare.as_str(), "http://127.0.0.1:8080/hook?x=1");
        let auth = auth.unwrap();
        assert_eq!(auth.to_str().unwrap(), "Basic dTE6cEBzcw==");
        assert!(auth.is_sensitive());
        let (_, user_only) = split_credentials(&url::Url::parse("https://me@h/").unwrap());
        assert_eq!(user_only.unwrap().to_str().unwrap(), "Basic bWU6");
        let plain = url::Url::parse("https://h/a").unwrap();
        assert_eq!(split_credentials(&plain), (plain.clone(), None));
    }
}
