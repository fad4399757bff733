//! The one way the job builds HTTP clients: rustls with the `ring` provider and the
//! platform's root certificates, keep-alive pools.

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
