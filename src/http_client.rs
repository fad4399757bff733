//! The one way the job builds HTTP clients: rustls with the `ring` provider and the
//! platform's root certificates (plus a private CA's, from `ca-file`), keep-alive pools.
//!
//! Two kinds: reqwest's, for the Profile API, and hyper's own for the webhook
//! (`HyperClient`). reqwest parses each request's URL twice more (its redirect layer
//! and its response, through the `url` crate: ~12,000 instructions a call, a tenth of a
//! webhook call's), and the webhook sends one POST to one URL and follows no redirect.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
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

/// A client builder with the job's TLS set-up.
pub fn builder() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
}

/// A pooled HTTP/1.1 client on hyper, over TLS where the URL says `https`.
pub type HyperClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

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

/// `HyperClient` trusting the platform's roots and those in the PEM file `ca`, with
/// the same pool as `builder`'s.
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
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(https))
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
    #[error("{}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no PEM certificate in it", path.display())]
    Empty { path: PathBuf },
    #[error("{}: a certificate the HTTP client refuses", path.display())]
    Rejected {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
}

/// `builder()`, also trusting the CA certificates in the PEM file `ca` (for receivers
/// and APIs with certificates of a private CA; the platform's roots stay trusted).
pub fn builder_trusting(ca: Option<&Path>) -> Result<reqwest::ClientBuilder, CaError> {
    let mut b = builder();
    if let Some(path) = ca {
        for der in ca_certs(path)? {
            let c = reqwest::Certificate::from_der(&der).map_err(|source| CaError::Rejected {
                path: path.to_path_buf(),
                source,
            })?;
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
}

/// The certificates in the PEM file at `path`: at least one.
pub fn ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CaError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CaError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// reqwest's top-level message hides the cause ("error sending request"); walk the chain.
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
