use std::time::Duration;

use hmac::{KeyInit, Mac};

use crate::config::Secret;
use crate::model::Text;

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

/// POSTs bodies to the webhook URL; one pooled client per process.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<Secret>,
}

impl WebhookClient {
    pub fn new(url: &str, timeout: Duration, secret: Option<Secret>) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("actions.webhook.url: {e}"))?;
        let client = crate::http_client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("actions.webhook: {e}"))?;
        Ok(WebhookClient {
            client,
            url,
            secret,
        })
    }

    /// One delivery: `Ok` on a 2xx answer. The event id goes in `Idempotency-Key`, so a
    /// receiver can drop the repeats an at-least-once job may send after a restart.
    pub async fn post(
        &self,
        body: bytes::Bytes,
        event_id: Option<Text>,
        now_ms: u64,
    ) -> Result<(), String> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Webhook-Timestamp", now_ms.to_string());
        if let Some(id) = event_id {
            request = request.header("Idempotency-Key", &*id);
        }
        if let Some(secret) = &self.secret {
            request = request.header(
                "X-Signature-256",
                signature(secret.expose().as_bytes(), &body),
            );
        }
        let resp =
            request.body(body).send().await.map_err(|e| {
                format!("POST {}: {}", self.url, crate::http_client::error_chain(&e))
            })?;
        let status = resp.status();
        if status.is_success() {
            tracing::debug!(status = status.as_u16(), "webhook delivered");
            Ok(())
        } else {
            Err(format!(
                "POST {} answered HTTP {}",
                self.url,
                status.as_u16()
            ))
        }
    }
}
