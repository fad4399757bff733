//! The one way the job builds HTTP clients: rustls with the `ring` provider and the
//! platform's root certificates, keep-alive pools.

use std::path::{Path, PathBuf};
use std::sync::Once;

/// A client builder with the job's TLS set-up.
pub fn builder() -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Another part of the process may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
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
        source: reqwest::Error,
    },
    #[error("{}: no PEM certificate in it", path.display())]
    Empty { path: PathBuf },
}

/// `builder()`, also trusting the CA certificates in the PEM file `ca` (for receivers
/// and APIs with certificates of a private CA; the platform's roots stay trusted).
pub fn builder_trusting(ca: Option<&Path>) -> Result<reqwest::ClientBuilder, CaError> {
    let mut b = builder();
    if let Some(path) = ca {
        let pem = std::fs::read(path).map_err(|source| CaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| CaError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if certs.is_empty() {
            return Err(CaError::Empty {
                path: path.to_path_buf(),
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
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
