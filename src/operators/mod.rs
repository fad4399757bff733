//! The job's timely operators, each a function over a stream.

pub mod async_bridge;
pub mod backpressure;
pub mod decode;
pub mod held;
pub mod restore;
pub mod user_state;

/// Processing time now, in epoch milliseconds: the clock sources stamp events with.
pub fn now_ms() -> crate::model::Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
