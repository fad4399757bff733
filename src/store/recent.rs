//! The answers of recent Profile API look-ups, kept for `profile-api.min-refetch-interval-ms`
//! when the state TTL is shorter than that, so that a user is looked up at most once per
//! interval even if it expires and comes back in between. A failed look-up is kept too
//! (as no answer): the user starts over from the empty state until the interval
//! after the failure has passed, as it would had it not expired.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::model::{ProfileData, Text, Time};

/// Answers of look-ups younger than `window`, so that a user who expires and comes back
/// within it is not looked up again.
pub struct RecentLookups {
    window: u64,
    /// When each user was looked up, and the answer (None: the look-up failed).
    answers: FxHashMap<Text, (Time, Option<ProfileData>)>,
    /// By time, for pruning.
    order: VecDeque<(Time, Text)>,
}

impl RecentLookups {
    pub fn new(window: u64) -> Self {
        RecentLookups {
            window,
            answers: FxHashMap::default(),
            order: VecDeque::new(),
        }
    }

    pub fn put(&mut self, user: Text, at: Time, data: Option<ProfileData>) {
        self.order.push_back((at, user.clone()));
        self.answers.insert(user, (at, data));
    }

    /// The user's look-up younger than the window: when, and what it gave.
    pub fn get(&self, user: &Text, now: Time) -> Option<(Time, Option<ProfileData>)> {
        let (at, data) = self.answers.get(user)?;
        (now < at.saturating_add(self.window)).then(|| (*at, data.clone()))
    }

    pub fn prune(&mut self, now: Time) {
        while let Some((at, _)) = self.order.front()
            && at.saturating_add(self.window) <= now
        {
            let Some((at, user)) = self.order.pop_front() else {
                break;
            };
            if self.answers.get(&user).is_some_and(|(t, _)| *t == at) {
                self.answers.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_for_the_window_then_pruned() {
        let mut r = RecentLookups::new(1000);
        let u: Text = "u".into();
        r.put(u.clone(), 5000, Some(ProfileData::default()));
        assert!(r.get(&u, 5999).is_some());
        assert!(r.get(&u, 6000).is_none(), "no older than the window");
        r.prune(5999);
        assert!(r.get(&u, 5500).is_some());
        r.prune(6000);
        assert!(r.get(&u, 5500).is_none(), "pruned");
        // A newer answer is not pruned by the older entry of the same user.
        r.put(u.clone(), 7000, None);
        r.put(u.clone(), 7500, Some(ProfileData::default()));
        r.prune(8000);
        assert_eq!(
            r.get(&u, 8000).map(|(at, d)| (at, d.is_some())),
            Some((7500, true))
        );
    }
}
