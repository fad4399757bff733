//! Rate limiting for warnings about bad input and failing services: at full speed a
//! broken producer would otherwise write one log line per message. What is held back is
//! not lost from view: once its window has passed, one line says how many more there
//! were.

use std::time::{Duration, Instant};

/// Lets through at most `burst` messages per `period`; the ones held back are reported
/// as one line ("... and 13 more <what> not logged") when the window has passed: at the
/// next message, at `tick`, or when the limiter is dropped.
#[derive(Debug)]
pub struct LogLimiter {
    what: &'static str,
    period: Duration,
    burst: u32,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// `what` names the messages in the report of those held back ("invalid messages").
    pub fn new(what: &'static str, burst: u32, period: Duration) -> Self {
        LogLimiter {
            what,
            period,
            burst,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// At most 10 every 10 s.
    pub fn per_10s(what: &'static str) -> Self {
        LogLimiter::new(what, 10, Duration::from_secs(10))
    }

    /// Whether this message may be logged now.
    ///
    /// ```
    /// use std::time::Duration;
    /// use event_trigger::log_limit::LogLimiter;
    /// let mut l = LogLimiter::new("test messages", 2, Duration::from_secs(60));
    /// assert!(l.allow());
    /// assert!(l.allow());
    /// assert!(!l.allow());
    /// assert_eq!(l.held_back(), 1);
    /// ```
    pub fn allow(&mut self) -> bool {
        self.roll(Instant::now());
        if self.in_window < self.burst {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Reports the messages held back if their window has passed; cheap enough to call
    /// on every activation of an operator.
    pub fn tick(&mut self) {
        if self.suppressed > 0 {
            self.roll(Instant::now());
        }
    }

    /// Messages held back and not yet reported.
    pub fn held_back(&self) -> u64 {
        self.suppressed
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window_start) >= self.period {
            self.report();
            self.window_start = now;
            self.in_window = 0;
        }
    }

    fn report(&mut self) {
        let n = std::mem::take(&mut self.suppressed);
        if n > 0 {
            tracing::warn!(
                not_logged = n,
                "... and {n} more {} not logged (at most {} every {} s are)",
                self.what,
                self.burst,
                self.period.as_secs_f64()
            );
        }
    }
}

impl Drop for LogLimiter {
    fn drop(&mut self) {
        self.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_messages_are_reported_once_their_window_passed() {
        let mut l = LogLimiter::new("test messages", 1, Duration::from_millis(30));
        assert!(l.allow());
        assert!(!l.allow());
        assert!(!l.allow());
        l.tick();
        assert_eq!(l.held_back(), 2, "the window has not passed");
        std::thread::sleep(Duration::from_millis(40));
        l.tick();
        assert_eq!(l.held_back(), 0, "reported");
        assert!(l.allow(), "a new window");
        assert!(!l.allow());
        drop(l); // reports the one held back
    }
}
