//! Capabilities held for work in progress (a fetch or a webhook call), counted by time.
//!
//! Holding a capability at the least time still in progress keeps the frontier
//! downstream from passing work that has not finished: the probe of a bounded run, and
//! later the checkpoints, rely on that.

use std::collections::BTreeMap;

use timely::dataflow::operators::Capability;

use crate::model::Time;

#[derive(Default)]
pub struct HeldTimes {
    counts: BTreeMap<Time, usize>,
    /// Holds in all of `counts`.
    total: usize,
    /// Holds taken so far (`hold`; a move is not a new one).
    taken: u64,
    /// A capability at the least time in `counts`, if any.
    cap: Option<Capability<Time>>,
}

impl HeldTimes {
    /// Holds `time`, using `cap` (for a time `<= time`) if nothing is held yet.
    pub fn hold(&mut self, time: Time, cap: impl FnOnce() -> Capability<Time>) {
        *self.counts.entry(time).or_insert(0) += 1;
        self.total += 1;
        self.taken += 1;
        match &mut self.cap {
            None => self.cap = Some(cap().delayed(&time)),
            Some(held) if time < *held.time() => *held = cap().delayed(&time),
            Some(_) => {}
        }
    }

    /// Moves one hold of `from` to `to`, which is not earlier.
    pub fn move_later(&mut self, from: Time, to: Time) {
        debug_assert!(to >= from);
        *self.counts.entry(to).or_insert(0) += 1;
        self.total += 1;
        // The held capability is at or before `from`, so before `to`: good for both.
        self.release(from);
    }

    /// A capability for `time`, which must be held.
    pub fn capability_for(&self, time: Time) -> Capability<Time> {
        let held = self
            .cap
            .as_ref()
            .expect("capability_for a time that is not held");
        held.delayed(&time)
    }

    /// Releases one hold of `time`.
    pub fn release(&mut self, time: Time) {
        if let Some(n) = self.counts.get_mut(&time) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.counts.remove(&time);
            }
        }
        match self.counts.keys().next() {
            None => self.cap = None,
            Some(least) => {
                if let Some(cap) = &mut self.cap
                    && cap.time() < least
                {
                    cap.downgrade(least);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The least time held, if any.
    pub fn least(&self) -> Option<Time> {
        self.counts.keys().next().copied()
    }

    /// Holds in total (work items in progress).
    pub fn len(&self) -> usize {
        self.total
    }

    /// Holds taken so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }
}
