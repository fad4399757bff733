//! A profile source for unit tests: look-ups finish when the test answers them, or
//! never.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use timely::scheduling::SyncActivator;

use crate::model::{ProfileData, Text};
use crate::profile_api::{FetchError, Fetched};

#[derive(Clone, Default)]
pub(crate) struct FakeProfiles(Rc<RefCell<Inner>>);

#[derive(Default)]
struct Inner {
    /// Users looked up, in the order their look-ups started.
    started: Vec<Text>,
    /// Started and not answered yet.
    open: Vec<Text>,
    done: VecDeque<Fetched>,
    activator: Option<SyncActivator>,
}

impl FakeProfiles {
    /// The source the operator reads, woken by `activator` when the test answers.
    pub(super) fn attach(&self, activator: SyncActivator) -> super::lookups::Source {
        self.0.borrow_mut().activator = Some(activator);
        super::lookups::Source::Fake(self.clone())
    }

    /// Every user looked up so far, in order.
    pub(crate) fn started(&self) -> Vec<Text> {
        self.0.borrow().started.clone()
    }

    /// Finishes `user`'s open look-up with `answer`.
    pub(crate) fn answer(&self, user: &str, answer: Result<ProfileData, FetchError>) {
        let mut inner = self.0.borrow_mut();
        let at = inner.open.iter().position(|u| &**u == user);
        let user = inner.open.remove(at.expect("no open look-up of that user"));
        inner.done.push_back((user, answer));
        if let Some(a) = &inner.activator {
            a.activate().expect("the operator is gone");
        }
    }

    pub(super) fn start(&mut self, user: Text) {
        let mut inner = self.0.borrow_mut();
        inner.started.push(user.clone());
        inner.open.push(user);
    }

    pub(super) fn in_flight(&self) -> usize {
        let inner = self.0.borrow();
        inner.open.len() + inner.done.len()
    }

    pub(super) fn next_done(&mut self) -> Option<Fetched> {
        self.0.borrow_mut().done.pop_front()
    }
}
