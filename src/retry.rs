//! Retries of HTTP calls that failed for now (the Profile API's look-ups and the webhook's
//! deliveries): exponential backoff with full jitter, so that clients that failed
//! together do not come back together, or the wait the server asked for in
//! `Retry-After`; never longer than a ceiling.

use std::time::Duration;

/// How a call that failed transiently is tried again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub retries: u32,
    /// The ceiling of the first wait; it doubles with each try.
    pub backoff: Duration,
    /// The longest wait, whatever the backoff or `Retry-After` asks.
    pub max_wait: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (from 0): the server's `retry_after` if it
    /// gave one, else a random time in `[0, backoff * 2^attempt]`. `key` (the URL, say)
    /// spreads the waits of calls made at the same instant.
    ///
    /// ```
    /// # use event_trigger::retry::RetryPolicy;
    /// # use std::time::Duration;
    /// let p = RetryPolicy { retries: 3, backoff: Duration::from_millis(100), max_wait: Duration::from_secs(5) };
    /// assert!(p.wait(2, None, "u") <= Duration::from_millis(400));
    /// assert_eq!(p.wait(0, Some(Duration::from_secs(2)), "u"), Duration::from_secs(2));
    /// assert_eq!(p.wait(0, Some(Duration::from_secs(60)), "u"), Duration::from_secs(5));
    /// ```
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>, key: &str) -> Duration {
        retry_after
            .unwrap_or_else(|| jittered(self.backoff, attempt, key))
            .min(self.max_wait)
    }
}

/// Whether an HTTP status may be different next time: 408, 429 and 5xx. Any other 4xx
/// will not change.
pub fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// `Retry-After` given in seconds (the HTTP-date form is left to the backoff).
pub fn retry_after(headers: &hyper::header::HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A random wait in `[0, backoff * 2^attempt]`.
fn jittered(backoff: Duration, attempt: u32, key: &str) -> Duration {
    let ceiling = backoff.saturating_mul(1 << attempt.min(16));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let r =
        xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), u64::from(nanos) ^ u64::from(attempt));
    ceiling.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_stays_under_its_ceiling() {
        let base = Duration::from_millis(100);
        for attempt in 0..5 {
            for _ in 0..50 {
                let w = jittered(base, attempt, "http://x/users/u/profile");
                assert!(w <= base * (1 << attempt), "{w:?} at {attempt}");
            }
        }
        let spread: std::collections::HashSet<_> =
            (0..50).map(|_| jittered(base, 3, "u")).collect();
        assert!(spread.len() > 10, "jitter spreads the waits");
    }

    #[test]
    fn only_statuses_that_may_change_are_transient() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert!(!is_transient_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_in_seconds_is_read() {
        let mut h = hyper::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(hyper::header::RETRY_AFTER, " 3 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            hyper::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
