//! Rate limiting for warnings about bad input and failing services: at full speed a
//! broken producer would otherwise write one log line per message. What is held back is
//! not lost from view: once its window has passed, one line says how many more there
//! were.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// once it is failing (then one every 10 s while it goes on), and one line when it
/// answers again, with how long it failed. Each outage is told, however soon after the
/// last. Shared by every caller of the service.
///
/// It is failing once `OUTAGE_FAILURES` tries failed with no answer between, or a try
/// failed `OUTAGE_SILENCE` or more after it started with no answer since (a time-out).
/// A failure now and then among answers (a flaky service, or a slow one whose tries
/// take seconds) is no outage: told, it would be a warning and an "answers again" every
/// 10 s for as long as the service runs.
#[derive(Debug)]
pub struct OutageLog {
    /// When the last answer came, in ns from `base` (0: none yet): a try that started
    /// before it failed among answers.
    last_answer: AtomicU64,
    base: Instant,
    /// Read on every answer: the answers of a service that works cost a clock read, an
    /// atomic max on `last_answer` and this load, no lock.
    failing: AtomicBool,
    outage: Mutex<Outage>,
}

impl Default for OutageLog {
    fn default() -> Self {
        OutageLog {
            last_answer: AtomicU64::new(0),
            base: Instant::now(),
            failing: AtomicBool::new(false),
            outage: Mutex::default(),
        }
    }
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
/// Tries failed in a row that make an outage.
pub const OUTAGE_FAILURES: u64 = 3;
/// How long without an answer, from a failed try's start, makes an outage.
pub const OUTAGE_SILENCE: Duration = Duration::from_secs(1);

impl OutageLog {
    pub fn new() -> Self {
        OutageLog::default()
    }

    /// A try started at `tried` failed: the outage so far (from the start of its first
    /// failed try), if it is to be warned of now.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use event_trigger::log_limit::OutageLog;
    /// let log = OutageLog::new();
    /// assert!(log.failed(Instant::now()).is_none(), "a failure");
    /// assert_eq!(log.answered(), None, "among answers is no outage");
    /// assert!(log.failed(Instant::now()).is_none());
    /// assert!(log.failed(Instant::now()).is_none());
    /// assert!(log.failed(Instant::now()).is_some(), "the third in a row is told");
    /// assert!(log.failed(Instant::now()).is_none(), "the next ones, within 10 s, are not");
    /// let before = Instant::now();
    /// assert_eq!(log.answered().map(|e| e.failures), Some(4));
    /// assert_eq!(log.answered(), None, "told once");
    /// assert!(log.failed(before).is_none(), "a try from before the end");
    /// assert_eq!(log.answered(), None, "is not an outage");
    /// let next: Vec<_> = (0..3).map(|_| log.failed(Instant::now())).collect();
    /// assert!(next[2].is_some(), "the next outage is told at once, within 10 s");
    /// assert_eq!(log.answered().map(|e| e.failures), Some(3));
    /// // A try failed 1 s or more after it started (a time-out) is told at once,
    /// let log = OutageLog::new();
    /// let long_ago = Instant::now() - Duration::from_millis(1500);
    /// assert!(log.failed(long_ago).is_some());
    /// // unless an answer came meanwhile (a slow service failing now and then).
    /// let log = OutageLog::new();
    /// let long_ago = Instant::now() - Duration::from_millis(1500);
    /// assert_eq!(log.answered(), None);
    /// assert!(log.failed(long_ago).is_none());
    /// assert_eq!(log.answered(), None, "and no outage begun");
    /// ```
    pub fn failed(&self, tried: Instant) -> Option<Failing> {
        if self.answered_since(tried) {
            return None;
        }
        let mut o = self.outage.lock().ok()?;
        let now = Instant::now();
        self.failing.store(true, Ordering::Relaxed);
        // From the failed try's start: a time-out fails a try that long after the
        // service stopped answering.
        let since = *o.since.get_or_insert(tried);
        o.failures += 1;
        let failing = o.failures >= OUTAGE_FAILURES || now.duration_since(since) >= OUTAGE_SILENCE;
        if !failing
            || o.last_told
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

    /// Whether an answer came after `tried`.
    fn answered_since(&self, tried: Instant) -> bool {
        let last = self.last_answer.load(Ordering::Relaxed);
        last > 0 && Duration::from_nanos(last - 1) > tried.saturating_duration_since(self.base)
    }

    /// A try was answered: the outage it ends, if one was warned of.
    pub fn answered(&self) -> Option<Failing> {
        let now = Instant::now();
        let at = now.saturating_duration_since(self.base).as_nanos() as u64 + 1;
        self.last_answer.fetch_max(at, Ordering::Relaxed);
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let mut o = self.outage.lock().ok()?;
        self.failing.store(false, Ordering::Relaxed);
        let since = o.since.take()?;
        let failures = std::mem::take(&mut o.failures);
        let gave_up = std::mem::take(&mut o.gave_up);
        if o.told {
            // The next outage is told at its start: waiting out the 10 s since this one's
            // warning would leave a shorter one untold.
            o.last_told = None;
        }
        std::mem::take(&mut o.told).then(|| Failing {
            lasted: now.duration_since(since),
            failures,
            gave_up,
        })
    }
}

/// `n` of `what`: "1 request", "2 requests".
pub fn counted(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
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
