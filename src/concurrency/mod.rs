//! How many calls go to one target (the Profile API, a webhook receiver) at once.
//!
//! A service asked more than it can serve at once queues the calls inside itself, and
//! they pass our time-out there: a look-up that times out gives its user an empty
//! profile, a webhook call that times out is sent again although the receiver took it.
//! So calls wait here instead, for a permit of a `Limiter`: a fixed number
//! (`concurrency: 32`), or, by default, a limit that adapts to the target
//! (`concurrency: adaptive`, see `controller`): it grows while round trips stay near
//! the target's unloaded one and shrinks when they grow or the target says it is
//! overloaded. A call's time-out starts once it has its permit.
//!
//! One limiter per target and process, shared by its workers: the target's capacity is
//! one, and one controller sees all of the process's calls to it (limits per worker
//! would each probe and add up their overshoot). Processes of a cluster adapt each on
//! its own, as TCP connections sharing a link do.

mod controller;

pub use controller::{Change, Controller, Outcome};

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `concurrency:` in the config: `adaptive`, or a fixed number of calls at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    #[default]
    Adaptive,
    Fixed(usize),
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Concurrency;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`adaptive` or a number of calls at once (1 or more)")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Concurrency, E> {
                match usize::try_from(n) {
                    Ok(n) if n > 0 => Ok(Concurrency::Fixed(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(n), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Concurrency, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Concurrency, E> {
                Err(E::invalid_value(serde::de::Unexpected::Float(n), &self))
            }
            // From the environment every value is a string.
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Concurrency, E> {
                match s.trim() {
                    "adaptive" => Ok(Concurrency::Adaptive),
                    n => match n.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                    },
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Limits the calls to one target; cheap to clone (clones share the limit).
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

struct Shared {
    target: String,
    /// Taken at the first call: a limiter never used shows no series.
    metrics: std::sync::OnceLock<crate::metrics::TargetMetrics>,
    permits: Arc<Semaphore>,
    control: Mutex<Control>,
    /// Calls waiting for a permit.
    queued: std::sync::atomic::AtomicUsize,
}

struct Control {
    /// None for a fixed limit.
    adaptive: Option<Controller>,
    in_flight: usize,
    /// Permits to take out of circulation as they come back (the limit shrank while
    /// they were out).
    debt: usize,
    /// The sum of what the workers using the target may have under way.
    ceiling: usize,
    /// What the last call read as overload said (for the log of the limit's moves).
    last_overload: Option<String>,
}

impl Limiter {
    /// A limiter for `target` (its name in metrics and logs). An adaptive one starts
    /// with a ceiling of 1 until workers `register` their share.
    pub fn new(target: impl Into<String>, concurrency: Concurrency) -> Self {
        let (adaptive, permits) = match concurrency {
            Concurrency::Adaptive => (Some(Controller::new(1, 1, Instant::now())), 1),
            Concurrency::Fixed(n) => (None, n),
        };
        Limiter {
            shared: Arc::new(Shared {
                target: target.into(),
                metrics: std::sync::OnceLock::new(),
                permits: Arc::new(Semaphore::new(permits)),
                control: Mutex::new(Control {
                    adaptive,
                    in_flight: 0,
                    debt: 0,
                    ceiling: 0,
                    last_overload: None,
                }),
                queued: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// A worker will have up to `calls` under way: the adaptive limit may grow by that.
    pub fn register(&self, calls: usize) {
        let mut c = self.shared.lock();
        c.ceiling += calls;
        let ceiling = c.ceiling;
        if let Some(a) = &mut c.adaptive {
            a.set_ceiling(ceiling);
        }
    }

    /// The limit now (the fixed number, or where the adaptive one stands).
    pub fn limit(&self) -> usize {
        let c = self.shared.lock();
        match &c.adaptive {
            Some(a) => a.limit(),
            None => self.shared.permits_in_circulation(&c),
        }
    }

    /// A worker's part of the limit now: the worker registered `calls` of all the
    /// process's workers registered (rounded up; at least 1).
    pub fn share(&self, calls: usize) -> usize {
        let c = self.shared.lock();
        let limit = match &c.adaptive {
            Some(a) => a.limit(),
            None => self.shared.permits_in_circulation(&c),
        };
        (limit * calls).div_ceil(c.ceiling.max(calls).max(1)).max(1)
    }

    /// Calls waiting for room now (of this process, every worker's).
    pub fn queued(&self) -> usize {
        self.shared
            .queued
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for room for one call (in arrival order). The call's round trip is timed
    /// from here; it ends with `Permit::finish` (or, unfinished, when the permit drops).
    pub async fn acquire(&self) -> Permit {
        let queued = Queued::new(&self.shared.queued);
        let permit = self
            .shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the limiter's semaphore is never closed");
        drop(queued);
        let (in_flight, limit) = {
            let mut c = self.shared.lock();
            c.in_flight += 1;
            let in_flight = c.in_flight;
            if let Some(a) = &mut c.adaptive {
                a.started(in_flight);
            }
            let limit = self.shared.permits_in_circulation(&c);
            (in_flight, limit)
        };
        let metrics = self.shared.metrics(limit);
        metrics.in_flight.set(in_flight as i64);
        Permit {
            shared: self.shared.clone(),
            permit: Some(permit),
            started: Instant::now(),
            outcome: None,
            overload: None,
        }
    }
}

impl Shared {
    /// The limit the semaphore enforces now: permits free and out, less those to be
    /// retired as they come back.
    fn permits_in_circulation(&self, c: &Control) -> usize {
        self.permits.available_permits() + c.in_flight - c.debt
    }

    /// The target's metrics; `limit` is the limit now, shown from the first call on.
    fn metrics(&self, limit: usize) -> &crate::metrics::TargetMetrics {
        self.metrics.get_or_init(|| {
            let m = crate::metrics::global().target(&self.target);
            m.limit.set(limit as i64);
            m
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        // The state is a few numbers kept consistent under the lock; a panic elsewhere
        // while holding it leaves nothing half-written that matters.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns (or retires) `permit` and tells the controller how the call went; `took`:
    /// from the permit to the end of the call; `overload`: what a call read as overload
    /// said.
    fn release(
        &self,
        permit: OwnedSemaphorePermit,
        outcome: Outcome,
        took: std::time::Duration,
        overload: Option<String>,
    ) {
        let mut c = self.lock();
        if overload.is_some() {
            c.last_overload = overload;
        }
        c.in_flight -= 1;
        if c.debt > 0 {
            c.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
        let in_flight = c.in_flight;
        let Control {
            adaptive,
            last_overload,
            ..
        } = &mut *c;
        let changed = adaptive.as_mut().and_then(|a| {
            let before = a.limit();
            let limit = a.ended(outcome, in_flight, Instant::now())?;
            if limit != before {
                let said = last_overload.take();
                tracing::debug!(
                    target: "event_trigger::concurrency",
                    "{}",
                    describe_move(&self.target, (before, limit), a.last_change(), said)
                );
            }
            Some(limit)
        });
        if let Some(limit) = changed {
            self.resize(&mut c, limit);
        }
        let limit = self.permits_in_circulation(&c);
        drop(c);
        let metrics = self.metrics(limit);
        metrics.in_flight.set(in_flight as i64);
        match outcome {
            Outcome::Answered(_) => metrics.rtt_seconds.observe(took.as_secs_f64()),
            // Timed-out calls too: left out, the round trips would look healthy while
            // most calls fail.
            Outcome::Overloaded => {
                metrics.rtt_seconds.observe(took.as_secs_f64());
                metrics.overloaded.inc();
            }
            Outcome::Ignored => {}
        }
    }

    /// Brings the permits in circulation (free, out, less the debt) to `limit`.
    fn resize(&self, c: &mut Control, limit: usize) {
        let current = self.permits_in_circulation(c);
        if limit > current {
            let mut more = limit - current;
            let repaid = more.min(c.debt);
            c.debt -= repaid;
            more -= repaid;
            self.permits.add_permits(more);
        } else if limit < current {
            let fewer = current - limit;
            let taken = self.permits.forget_permits(fewer);
            c.debt += fewer - taken;
        }
        if let Some(m) = self.metrics.get() {
            m.limit.set(limit as i64);
        }
    }
}

/// The log's line for a move of `target`'s limit (`from`, `to`) with its reason; for
/// overload, what the last call read as overload said.
fn describe_move(
    target: &str,
    (from, to): (usize, usize),
    change: Change,
    said: Option<String>,
) -> String {
    let why = match (change, said) {
        (Change::Overloaded, Some(said)) => format!("overload: {said}"),
        (change, _) => change.to_string(),
    };
    format!("{target}: calls at once {from} -> {to}: {why}")
}

/// Counts a call waiting for a permit while it waits (a call given up while waiting,
/// its future dropped, stops counting too).
struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Queued<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Queued(count)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Room for one call; give it back with `finish`.
pub struct Permit {
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
    outcome: Option<Outcome>,
    /// What the call said when it read as overload.
    overload: Option<String>,
}

impl Permit {
    /// The call was answered (any status that is not a sign of overload).
    pub fn answered(mut self) {
        self.outcome = Some(Outcome::Answered(self.started.elapsed()));
    }

    /// The call timed out, could not connect, or the target said it is overloaded;
    /// `said`: how (for the log of the limit's moves).
    pub fn overloaded(mut self, said: impl Into<String>) {
        self.outcome = Some(Outcome::Overloaded);
        self.overload = Some(said.into());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let outcome = self.outcome.unwrap_or(Outcome::Ignored);
            let overload = self.overload.take();
            self.shared
                .release(permit, outcome, self.started.elapsed(), overload);
        }
    }
}

/// Whether an HTTP status says the target is overloaded (429, 503), or that a gateway in
/// front of it gave up on it (502, 504).
pub fn is_overload_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(yaml: &str) -> Result<Concurrency, String> {
        serde_json::from_str::<Concurrency>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn concurrency_reads_adaptive_or_a_positive_number() {
        assert_eq!(parse("\"adaptive\""), Ok(Concurrency::Adaptive));
        assert_eq!(parse("32"), Ok(Concurrency::Fixed(32)));
        // From the environment every value is a string.
        assert_eq!(parse("\"32\""), Ok(Concurrency::Fixed(32)));
        for bad in ["0", "\"0\"", "\"fast\"", "-1", "1.5"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("expected `adaptive` or a number"), "{bad}: {e}");
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// A worker's share follows its part of what the workers registered, and the limit
    /// where it stands (an adaptive one starts at 1: each worker's share is then 1).
    #[test]
    fn a_workers_share_of_the_limit_follows_what_it_registered() {
        let fixed = Limiter::new("t", Concurrency::Fixed(10));
        fixed.register(24);
        fixed.register(24);
        assert_eq!(fixed.share(24), 5);
        fixed.register(48);
        assert_eq!(fixed.share(24), 3, "10 x 24 / 96, rounded up");
        assert_eq!(fixed.share(48), 5);
        let adaptive = Limiter::new("t", Concurrency::Adaptive);
        adaptive.register(256);
        adaptive.register(256);
        assert_eq!(adaptive.share(256), 1);
    }

    #[test]
    fn a_fixed_limit_lets_that_many_calls_through_at_once() {
        runtime().block_on(async {
            let l = Limiter::new("fixed-test", Concurrency::Fixed(2));
            let a = l.acquire().await;
            let _b = l.acquire().await;
            let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
            assert!(third.is_err(), "a third waits");
            a.answered();
            let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
            assert!(third.is_ok(), "and goes once one is back");
            assert_eq!(l.limit(), 2);
        });
    }

    /// Calls waiting for room are counted while they wait: not once they have it, nor
    /// once given up (their future dropped).
    #[test]
    fn calls_waiting_for_room_are_counted_while_they_wait() {
        runtime().block_on(async {
            let l = Limiter::new("queued-test", Concurrency::Fixed(1));
            let a = l.acquire().await;
            assert_eq!(l.queued(), 0);
            let mut second = Box::pin(l.acquire());
            let mut third = Box::pin(l.acquire());
            for waiting in [&mut second, &mut third] {
                let polled = tokio::time::timeout(Duration::from_millis(10), waiting).await;
                assert!(polled.is_err(), "no room");
            }
            assert_eq!(l.queued(), 2);
            drop(third);
            assert_eq!(l.queued(), 1, "given up");
            a.answered();
            let b = second.await;
            assert_eq!(l.queued(), 0, "in");
            b.answered();
        });
    }

    /// A move's line names the target, the limits and why; for overload, what the call
    /// said. (That the line is logged: `tests/cli.rs`, a `demo` at debug level; a test
    /// here would race tracing's per-callsite cache with the tests running beside it.)
    #[test]
    fn a_moves_line_says_the_target_the_limits_and_why() {
        let said = Some("GET http://api/users/u1/visit: timed out after 1s".to_string());
        assert_eq!(
            describe_move("profile-api", (16, 8), Change::Overloaded, said),
            "profile-api: calls at once 16 -> 8: overload: GET http://api/users/u1/visit: \
             timed out after 1s"
        );
        assert_eq!(
            describe_move("webhook:w", (2, 1), Change::Overloaded, None),
            "webhook:w: calls at once 2 -> 1: a call timed out, could not connect, or was \
             answered 429/502/503/504"
        );
        let (mean, baseline) = (Duration::from_micros(84_000), Duration::from_millis(51));
        assert_eq!(
            describe_move(
                "w",
                (12, 10),
                Change::RoundTripsGrew { mean, baseline },
                None
            ),
            "w: calls at once 12 -> 10: round trips grew to 84.0 ms on average, unloaded 51.0 ms"
        );
    }

    #[test]
    fn an_adaptive_limit_grows_with_fast_answers_and_halves_on_overload() {
        runtime().block_on(async {
            let l = Limiter::new("adaptive-test", Concurrency::Adaptive);
            l.register(16);
            assert_eq!(l.limit(), 1, "starts at the floor");
            // Calls that fill the limit and are answered at once: one more per period
            // (doubling at first). On a loaded machine a 6 ms sleep may take long
            // enough to read as queueing and take a tenth off, so it is given periods
            // to climb back, not a count that holds only on an idle machine (CI saw 15).
            for _ in 0..400 {
                if l.limit() == 16 {
                    break;
                }
                let n = l.limit();
                let mut permits = Vec::new();
                for _ in 0..n {
                    permits.push(l.acquire().await);
                }
                tokio::time::sleep(Duration::from_millis(6)).await;
                permits.into_iter().for_each(Permit::answered);
            }
            assert_eq!(l.limit(), 16, "up to the workers' ceiling");
            // Overload while 16 are out: the limit halves and the permits follow, as
            // the calls out come back.
            let mut out = Vec::new();
            for _ in 0..16 {
                out.push(l.acquire().await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            out.pop().unwrap().overloaded("timed out after 1s");
            assert_eq!(l.limit(), 8);
            out.into_iter().for_each(drop);
            let mut held = Vec::new();
            for _ in 0..8 {
                held.push(l.acquire().await);
            }
            let ninth = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
            assert!(ninth.is_err(), "8 at once, no more");
        });
    }
}
