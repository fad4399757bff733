//! Backpressure from the slow stages back to the source.
//!
//! A timely operator cannot refuse input, so a stage that waits on the outside world
//! (a webhook receiver, the Profile API) stashes what it cannot start yet. Each such
//! stage publishes how much it holds in a `Backlog`; the source of the same worker reads
//! nothing while any backlog is over its limit. Events are exchanged by user, so every
//! worker sees about the same load and a worker's own backlogs stand for the cluster's.

use std::cell::Cell;
use std::rc::Rc;

/// How much a stage holds, and the most it should.
#[derive(Clone, Debug)]
pub struct Backlog {
    held: Rc<Cell<usize>>,
    limit: usize,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Backlog {
            held: Rc::new(Cell::new(0)),
            limit,
        }
    }

    pub fn set(&self, held: usize) {
        self.held.set(held);
    }

    pub fn is_full(&self) -> bool {
        self.held.get() >= self.limit
    }
}

/// What the source consults: the backlogs of the stages after it.
#[derive(Clone, Debug, Default)]
pub struct Gate(Vec<Backlog>);

impl Gate {
    pub fn new(backlogs: Vec<Backlog>) -> Self {
        Gate(backlogs)
    }

    /// True when every stage has room.
    ///
    /// ```
    /// use event_trigger::operators::backpressure::{Backlog, Gate};
    /// let b = Backlog::new(2);
    /// let gate = Gate::new(vec![b.clone()]);
    /// b.set(1);
    /// assert!(gate.is_open());
    /// b.set(2);
    /// assert!(!gate.is_open());
    /// ```
    pub fn is_open(&self) -> bool {
        self.0.iter().all(|b| !b.is_full())
    }
}
