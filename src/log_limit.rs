//! Rate limiting for warnings about bad input: at full speed a broken producer would
//! otherwise write one log line per message.

use std::time::{Duration, Instant};

/// Lets through at most `burst` messages per `period`, and reports how many it held back.
#[derive(Debug)]
pub struct LogLimiter {
    period: Duration,
    burst: u32,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, period: Duration) -> Self {
        LogLimiter {
            period,
            burst,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this message may be logged, `n` being how many were held back
    /// since the last one that was.
    ///
    /// ```
    /// use std::time::Duration;
    /// use event_trigger::log_limit::LogLimiter;
    /// let mut l = LogLimiter::new(2, Duration::from_secs(60));
    /// assert_eq!(l.allow(), Some(0));
    /// assert_eq!(l.allow(), Some(0));
    /// assert_eq!(l.allow(), None);
    /// ```
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= self.period {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(10, Duration::from_secs(10))
    }
}
