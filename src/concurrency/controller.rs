//! The adaptive limit's arithmetic, apart from any clock or semaphore so that it can be
//! driven step by step in tests: additive increase, multiplicative decrease (AIMD), as
//! TCP's congestion window and Vector's Adaptive Request Concurrency.
//!
//! Time is cut into periods of about one round trip. At the end of each:
//! - a sign of overload (a time-out, a refused or reset connection, 429, 502, 503, 504)
//!   halves the limit;
//! - else a mean round trip well above the baseline (the target's unloaded round trip)
//!   takes a tenth off: calls are queueing inside the target;
//! - else, if the limit was reached (more calls wanted to go), it grows by one; until
//!   the first decrease it doubles instead (TCP's slow start), so that a target that
//!   serves hundreds at once is not found one call per round trip.
//!
//! The baseline is the lowest period mean seen. A target that became slower for good
//! keeps pushing the limit down until it reaches the floor; there, with as few calls at
//! once as allowed, the round trip is the unloaded one by definition, and becomes the
//! baseline.

use std::time::{Duration, Instant};

/// A round trip counts as grown when its period's mean passes the baseline times
/// `RTT_TOLERANCE` plus `RTT_SLACK`: the slack keeps scheduling noise on a fast target
/// (a round trip of a fraction of a millisecond) from reading as queueing.
const RTT_TOLERANCE: f64 = 1.5;
const RTT_SLACK: Duration = Duration::from_millis(5);
/// The shortest period, so that a very fast target's limit is judged on enough calls.
const MIN_PERIOD: Duration = Duration::from_millis(5);
/// Of the limit, kept after a period with round trips grown, and after overload.
const DECREASE_ON_RTT: f64 = 0.9;
const DECREASE_ON_OVERLOAD: f64 = 0.5;

/// What a period's end decided, and why (for the log: a user finding a run slow against
/// a service can see what the limit did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A call timed out, could not connect, or was answered 429/502/503/504: halved.
    Overloaded,
    /// The period's mean round trip passed the baseline's tolerance: a tenth off.
    RoundTripsGrew { mean: Duration, baseline: Duration },
    /// Calls wanted more room, and round trips stayed near the baseline: grown.
    Grew { mean: Duration, baseline: Duration },
    /// Nothing to act on (no answers, or the limit not reached).
    Held,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        match self {
            Change::Overloaded => {
                f.write_str("a call timed out, could not connect, or was answered 429/502/503/504")
            }
            Change::RoundTripsGrew { mean, baseline } => write!(
                f,
                "round trips grew to {:.1} ms on average, unloaded {:.1} ms",
                ms(mean),
                ms(baseline)
            ),
            Change::Grew { mean, baseline } => write!(
                f,
                "calls wanted more room; round trips {:.1} ms on average, unloaded {:.1} ms",
                ms(mean),
                ms(baseline)
            ),
            Change::Held => f.write_str("nothing to act on"),
        }
    }
}

/// What one call tells the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered (whatever it answered) after this round trip.
    Answered(Duration),
    /// The target is overloaded or unreachable: time-out, connection error, 429, 503.
    Overloaded,
    /// Nothing to learn (the call was dropped before it ended).
    Ignored,
}

#[derive(Clone, Debug)]
pub struct Controller {
    limit: usize,
    floor: usize,
    ceiling: usize,
    baseline: Option<Duration>,
    period_start: Instant,
    period_len: Duration,
    samples: u32,
    rtt_sum: Duration,
    /// Calls wanted more room than the limit gave during this period.
    reached: bool,
    overloaded: bool,
    /// No decrease yet: the limit doubles where it would grow by one.
    slow_start: bool,
    /// What the last period's end decided.
    last: Change,
}

impl Controller {
    /// Starts at the floor (the target's capacity is unknown).
    pub fn new(floor: usize, ceiling: usize, now: Instant) -> Self {
        let floor = floor.max(1);
        Controller {
            limit: floor,
            floor,
            ceiling: ceiling.max(floor),
            baseline: None,
            period_start: now,
            period_len: MIN_PERIOD,
            samples: 0,
            rtt_sum: Duration::ZERO,
            reached: false,
            overloaded: false,
            slow_start: true,
            last: Change::Held,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn baseline(&self) -> Option<Duration> {
        self.baseline
    }

    /// What the last period's end decided, and why.
    pub fn last_change(&self) -> Change {
        self.last
    }

    /// A higher ceiling (another worker came to use the target); the limit stays.
    pub fn set_ceiling(&mut self, ceiling: usize) {
        self.ceiling = ceiling.max(self.floor);
        self.limit = self.limit.min(self.ceiling);
    }

    /// A call started; `in_flight` counts it.
    pub fn started(&mut self, in_flight: usize) {
        if in_flight >= self.limit {
            self.reached = true;
        }
    }

    /// A call ended with `outcome`; `in_flight` no longer counts it. Returns the new
    /// limit when a period ended.
    pub fn ended(&mut self, outcome: Outcome, in_flight: usize, now: Instant) -> Option<usize> {
        match outcome {
            Outcome::Answered(rtt) => {
                self.samples += 1;
                self.rtt_sum += rtt;
            }
            Outcome::Overloaded => self.overloaded = true,
            Outcome::Ignored => {}
        }
        if now.saturating_duration_since(self.period_start) < self.period_len {
            return None;
        }
        let mean = (self.samples > 0).then(|| self.rtt_sum / self.samples);
        self.last = Change::Held;
        if self.overloaded {
            self.limit = self.decreased(DECREASE_ON_OVERLOAD);
            self.last = Change::Overloaded;
        } else if let Some(mean) = mean {
            let baseline = match self.baseline {
                Some(b) if self.limit > self.floor => b.min(mean),
                _ => mean,
            };
            self.baseline = Some(baseline);
            if mean > baseline.mul_f64(RTT_TOLERANCE) + RTT_SLACK {
                self.limit = self.decreased(DECREASE_ON_RTT);
                self.last = Change::RoundTripsGrew { mean, baseline };
            } else if self.reached {
                let step = if self.slow_start { self.limit } else { 1 };
                self.limit = (self.limit + step).min(self.ceiling);
                self.last = Change::Grew { mean, baseline };
            }
        }
        self.period_start = now;
        self.period_len = mean.unwrap_or(self.period_len).max(MIN_PERIOD);
        self.samples = 0;
        self.rtt_sum = Duration::ZERO;
        self.overloaded = false;
        self.reached = in_flight >= self.limit;
        Some(self.limit)
    }

    /// The limit times `ratio`, at least one less, never under the floor; ends the slow
    /// start.
    fn decreased(&mut self, ratio: f64) -> usize {
        self.slow_start = false;
        let scaled = (self.limit as f64 * ratio) as usize;
        scaled.min(self.limit.saturating_sub(1)).max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A target with `slots` calls served at once, each taking `service`: the round
    /// trip of a call is its wait for a slot plus its service. Runs `periods` periods
    /// with as many calls in flight as the limit allows (demand is unbounded) and
    /// returns the limits seen at the end of each.
    fn drive(c: &mut Controller, slots: usize, service: Duration, periods: usize) -> Vec<usize> {
        let mut now = Instant::now();
        let mut limits = Vec::new();
        while limits.len() < periods {
            let n = c.limit();
            for i in 1..=n {
                c.started(i);
            }
            // n calls at once against `slots`: the mean round trip (Little's law).
            let rtt = service.mul_f64((n as f64 / slots as f64).max(1.0));
            now += rtt;
            let mut out = None;
            for left in (0..n).rev() {
                out = out.or(c.ended(Outcome::Answered(rtt), left, now));
            }
            if let Some(l) = out {
                limits.push(l);
            }
        }
        limits
    }

    #[test]
    fn doubles_until_round_trips_grow_then_grows_by_one() {
        let mut c = Controller::new(1, 1000, Instant::now());
        // 100 slots: up to 100 at once the round trip stays at its baseline.
        let limits = drive(&mut c, 100, 20 * MS, 12);
        assert_eq!(&limits[..7], [2, 4, 8, 16, 32, 64, 128]);
        assert_eq!(c.baseline(), Some(20 * MS));
        // 128 at once: 25.6 ms, within 1.5x + 5 ms; 256: 51.2 ms, grown. A period's
        // mean lags (its calls started under the limit before), so one more doubling
        // may come before the first decrease; after it, steps of one.
        let first_cut = limits.windows(2).position(|w| w[1] < w[0]).unwrap();
        assert!(limits[..=first_cut].windows(2).all(|w| w[1] == 2 * w[0]));
        assert!((256..=512).contains(&limits[first_cut]), "{limits:?}");
        let after = &limits[first_cut + 1..];
        assert!(
            after.windows(2).all(|w| w[1] == w[0] + 1 || w[1] < w[0]),
            "{limits:?}"
        );
    }

    #[test]
    fn settles_near_the_targets_capacity_and_stays_there() {
        // 8 slots of 50 ms: 8 at once is the most the target serves without queueing.
        let mut c = Controller::new(1, 256, Instant::now());
        let limits = drive(&mut c, 8, 50 * MS, 300);
        let tail = &limits[100..];
        let (lo, hi) = (tail.iter().min().unwrap(), tail.iter().max().unwrap());
        assert!(*lo >= 8, "never starves the target: {tail:?}");
        assert!(
            *hi <= 14,
            "queues at most about 3/4 of a round trip: {tail:?}"
        );
    }

    #[test]
    fn overload_halves_the_limit_down_to_the_floor() {
        let now = Instant::now();
        let mut c = Controller::new(2, 256, now);
        drive(&mut c, 1000, 10 * MS, 40);
        assert!(c.limit() >= 40);
        let before = c.limit();
        let later = now + Duration::from_secs(100);
        assert_eq!(
            c.ended(Outcome::Overloaded, 0, later),
            Some(before / 2),
            "one period, one halving"
        );
        for i in 1..20 {
            c.ended(Outcome::Overloaded, 0, later + Duration::from_secs(i));
        }
        assert_eq!(c.limit(), 2, "the floor");
    }

    #[test]
    fn a_target_that_became_slower_for_good_gets_a_new_baseline_and_the_limit_recovers() {
        let mut c = Controller::new(1, 256, Instant::now());
        // 5 ms: queueing of up to 5 ms (the slack) passes for noise, 2.5 service times.
        drive(&mut c, 8, 5 * MS, 200);
        assert!((8..=22).contains(&c.limit()), "{}", c.limit());
        // Ten times slower: every round trip reads as grown until the floor resets the
        // baseline; then the limit climbs back to the target's 8 slots.
        let limits = drive(&mut c, 8, 50 * MS, 200);
        assert!(limits.contains(&1), "{limits:?}");
        let tail = &limits[150..];
        assert!(tail.iter().all(|l| (8..=14).contains(l)), "{tail:?}");
        assert!(c.baseline().unwrap() >= 50 * MS);
    }

    #[test]
    fn each_period_says_what_it_decided_and_why() {
        let now = Instant::now();
        let mut c = Controller::new(1, 100, now);
        c.started(1);
        assert_eq!(
            c.ended(Outcome::Answered(10 * MS), 0, now + 10 * MS),
            Some(2)
        );
        let (mean, baseline) = (10 * MS, 10 * MS);
        assert_eq!(c.last_change(), Change::Grew { mean, baseline });
        c.started(1);
        c.started(2);
        let at = now + 110 * MS;
        assert_eq!(c.ended(Outcome::Answered(100 * MS), 1, at), Some(1));
        let (mean, baseline) = (100 * MS, 10 * MS);
        assert_eq!(c.last_change(), Change::RoundTripsGrew { mean, baseline });
        let at = now + 300 * MS;
        assert_eq!(c.ended(Outcome::Overloaded, 0, at), Some(1));
        assert_eq!(c.last_change(), Change::Overloaded);
        let at = now + 500 * MS;
        assert_eq!(c.ended(Outcome::Ignored, 0, at), Some(1));
        assert_eq!(c.last_change(), Change::Held);
        assert_eq!(
            Change::RoundTripsGrew { mean, baseline }.to_string(),
            "round trips grew to 100.0 ms on average, unloaded 10.0 ms"
        );
    }

    #[test]
    fn does_not_grow_while_calls_do_not_fill_the_limit() {
        let mut now = Instant::now();
        let mut c = Controller::new(4, 256, now);
        for _ in 0..50 {
            c.started(1);
            now += 10 * MS;
            c.ended(Outcome::Answered(10 * MS), 0, now);
        }
        assert_eq!(c.limit(), 4);
    }

    #[test]
    fn the_ceiling_bounds_the_limit() {
        let mut c = Controller::new(1, 5, Instant::now());
        let limits = drive(&mut c, 1000, 10 * MS, 20);
        assert_eq!(*limits.iter().max().unwrap(), 5);
        c.set_ceiling(3);
        assert_eq!(c.limit(), 3);
    }

    #[test]
    fn ignored_outcomes_teach_nothing() {
        let now = Instant::now();
        let mut c = Controller::new(3, 10, now);
        c.started(3);
        assert_eq!(c.ended(Outcome::Ignored, 0, now + 100 * MS), Some(3));
        assert_eq!(c.baseline(), None);
    }
}
