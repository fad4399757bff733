//! Rate limiting for warnings about bad input and failing services: at full speed a
//! broken producer would otherwise write one log line per message. What is held back is
//! not lost from view: once its window has passed, one line says how many more there
//! were.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// One outage of a service told in a few lines, not one per failed request: a warning
/// when it starts failing (then one every 10 s while it goes on), and one line when it
/// answers again, with how long it failed. Shared by every caller of the service.
#[derive(Debug, Default)]
pub struct OutageLog {
    /// Read on every answer: the answers of a service that works cost one load.
    failing: AtomicBool,
    outage: Mutex<Outage>,
}

#[derive(Debug, Default)]
struct Outage {
    since: Option<Instant>,
    failures: u64,
    gave_up: u64,
    /// Warnings given, over all outages.
    warnings: u64,
    /// Whether a warning told of this outage (its end is told only then).
    told: bool,
    last_told: Option<Instant>,
    /// When the last outage ended: a try started before then failed in it.
    ended: Option<Instant>,
}

/// How long a service has failed, how many tries failed meanwhile, and how much work
/// was given up on for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failing {
    pub lasted: Duration,
    pub failures: u64,
    pub gave_up: u64,
}

/// Between two warnings of one outage.
const OUTAGE_WARNING_EVERY: Duration = Duration::from_secs(10);

impl OutageLog {
    pub fn new() -> Self {
        OutageLog::default()
    }

    /// A try started at `tried` failed: the outage so far (from the start of its first
    /// failed try), if it is to be warned of now.
    ///
    /// ```
    /// use std::time::Instant;
    /// use event_trigger::log_limit::OutageLog;
    /// let log = OutageLog::new();
    /// assert!(log.failed(Instant::now()).is_some(), "the first failure is told");
    /// assert!(log.failed(Instant::now()).is_none(), "the next ones, within 10 s, are not");
    /// let before = Instant::now();
    /// assert_eq!(log.answered().map(|e| e.failures), Some(2));
    /// assert_eq!(log.answered(), None, "told once");
    /// assert!(log.failed(before).is_none(), "a try from before the end");
    /// assert_eq!(log.answered(), None, "is not an outage");
    /// ```
    pub fn failed(&self, tried: Instant) -> Option<Failing> {
        let mut o = self.outage.lock().ok()?;
        if o.ended.is_some_and(|ended| tried < ended) {
            return None;
        }
        let now = Instant::now();
        self.failing.store(true, Ordering::Relaxed);
        // From the failed try's start: a time-out fails a try that long after the
        // service stopped answering.
        let since = *o.since.get_or_insert(tried);
        o.failures += 1;
        if o.last_told
            .is_some_and(|t| now.duration_since(t) < OUTAGE_WARNING_EVERY)
        {
            return None;
        }
        o.last_told = Some(now);
        o.told = true;
        o.warnings += 1;
        Some(Failing {
            lasted: now.duration_since(since),
            failures: o.failures,
            gave_up: o.gave_up,
        })
    }

    /// A piece of work was given up on because the service failed (counted in the
    /// outage going on, if any).
    pub fn gave_up(&self) {
        if let Ok(mut o) = self.outage.lock()
            && o.since.is_some()
        {
            o.gave_up += 1;
        }
    }

    /// The warnings given so far.
    pub fn warnings(&self) -> u64 {
        self.outage.lock().map_or(0, |o| o.warnings)
    }

    /// A try was answered: the outage it ends, if one was warned of.
    pub fn answered(&self) -> Option<Failing> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let mut o = self.outage.lock().ok()?;
        self.failing.store(false, Ordering::Relaxed);
        let now = Instant::now();
        o.ended = Some(now);
        let since = o.since.take()?;
        let failures = std::mem::take(&mut o.failures);
        let gave_up = std::mem::take(&mut o.gave_up);
        std::mem::take(&mut o.told).then(|| Failing {
            lasted: now.duration_since(since),
            failures,
            gave_up,
        })
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
