use std::time::Duration;

/// POSTs bodies to the webhook URL; one pooled client per process.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl WebhookClient {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("actions.webhook.url: {e}"))?;
        let client = crate::http_client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("actions.webhook: {e}"))?;
        Ok(WebhookClient { client, url })
    }

    /// One delivery: `Ok` on a 2xx answer.
    pub async fn post(&self, body: bytes::Bytes) -> Result<(), String> {
        let resp = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {}: {}", self.url, crate::profile_api::error_chain(&e)))?;
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
