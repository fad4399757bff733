//! The processing-time clock: what sources stamp events with, and what TTLs, epochs
//! and retries count in.

/// Processing time now, in epoch milliseconds: the clock sources stamp events with.
pub fn now_ms() -> crate::model::Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
