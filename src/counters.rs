//! Per-worker counters and the run summary.
//!
//! Each worker owns its `Counters` (plain `Cell`s, no atomics on the hot path); at the end
//! of a bounded run the counters of all workers of all processes are summed into one
//! `Summary`.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        /// Counters of one worker, and gauges of what it holds now (for the metrics;
        /// not in the summary).
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $doc] pub $name: Cell<u64>,)*
            /// Invalid messages by `DecodeError::REASONS`.
            pub invalid_by_reason: [Cell<u64>; crate::wire::DecodeError::REASONS.len()],
            pub users: Cell<u64>,
            pub lookups_in_flight: Cell<u64>,
            pub lookup_backlog: Cell<u64>,
            pub actions_in_flight: Cell<u64>,
            pub action_backlog: Cell<u64>,
            /// Delayed actions waiting to fire.
            pub timers_pending: Cell<u64>,
            /// Per action, in their order (the summary sums them).
            pub per_action: std::cell::RefCell<Vec<ActionCounts>>,
            /// Encoded size of this worker's users at its last checkpoint part.
            pub state_bytes: Cell<u64>,
        }

        /// Counters summed over workers.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counts { $(#[doc = $doc] pub $name: u64,)* }

        impl Counters {
            pub fn counts(&self) -> Counts { Counts { $($name: self.$name.get(),)* } }
        }

        impl Counts {
            /// Each counter's name, description and value, in declaration order.
            pub fn named(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $doc, self.$name),)*]
            }
        }

        impl std::ops::AddAssign for Counts {
            fn add_assign(&mut self, o: Counts) { $(self.$name += o.$name;)* }
        }

        impl fmt::Display for Counts {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut sep = "";
                $(write!(f, "{sep}{}={}", stringify!($name), self.$name)?; sep = " ";)*
                let _ = sep;
                Ok(())
            }
        }
    };
}

counters! {
    events_read: "messages read from the source, valid or not",
    invalid: "messages skipped as invalid",
    fetched: "Profile API look-ups (one per user seen, and again after expiry)",
    fetch_errors: "look-ups that failed and gave an empty state",
    expired: "users dropped from state by the TTL",
    passed: "events the filter passed",
    rejected: "events the filter rejected (false or not a bool)",
    script_errors: "events rejected because the script failed",
    actions_ok: "actions completed",
    actions_failed: "actions that failed after their retries (logged, and dead-lettered if a file is set)",
    actions_retried: "webhook tries after the first",
    restored: "users restored from a checkpoint",
    dead_letters: "records written to the dead-letter file",
    scheduled: "delayed actions scheduled (`delay`)",
    fired: "delayed actions that came due and fired",
    cancelled: "delayed actions cancelled by `cancel-if` before they fired",
    capped: "firings refused by `cooldown` or `max-per-user` (not failures)",
    timers_dropped: "delayed actions not scheduled (the user had `state.max-timers-per-user` pending) or lost (logged)",
}

/// What one action did on one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionCounts {
    pub name: String,
    pub ok: u64,
    pub failed: u64,
    pub retried: u64,
}

impl Counters {
    #[inline]
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }
}

/// The line a bounded run prints at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub counts: Counts,
    pub elapsed_s: f64,
    /// Why the run's final checkpoint did not complete, if it did not: the work is done
    /// but a restart would repeat part of it, so the run fails after its summary.
    pub final_checkpoint_error: Option<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.elapsed_s > 0.0 {
            self.counts.events_read as f64 / self.elapsed_s
        } else {
            0.0
        };
        write!(
            f,
            "summary: {} elapsed_s={:.3} events_per_s={:.0}",
            self.counts, self.elapsed_s, rate
        )
    }
}

impl Summary {
    /// Parses the `key=value` pairs of a summary line back (for tests and scripts).
    pub fn parse_counts(line: &str) -> Option<Counts> {
        let body = line.trim().strip_prefix("summary: ")?;
        let mut map = serde_json::Map::new();
        for pair in body.split(' ') {
            let (k, v) = pair.split_once('=')?;
            if let Ok(n) = v.parse::<u64>() {
                map.insert(k.to_string(), n.into());
            }
        }
        serde_json::from_value(serde_json::Value::Object(map)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_round_trips() {
        let s = Counters::default();
        Counters::add(&s.events_read, 10);
        Counters::add(&s.passed, 3);
        let summary = Summary {
            counts: s.counts(),
            elapsed_s: 2.0,
            final_checkpoint_error: None,
        };
        let line = summary.to_string();
        assert!(
            line.contains("events_read=10 ") && line.ends_with("events_per_s=5"),
            "{line}"
        );
        assert_eq!(Summary::parse_counts(&line), Some(s.counts()));
    }
}
