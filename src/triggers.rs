//! What an action asks of its firing beyond the filters (`cooldown`, `max-per-user`,
//! `delay`, `cancel-if` in the `actions:` list), and each user's side of it: when each
//! capped action last fired for the user, and the delayed actions waiting to fire.
//!
//! A user's `UserTriggers` lives in its state (so it is in checkpoints, moves with the
//! user on a rescale, and is read back from RocksDB), and keeps the user from expiring
//! while it matters: while a delayed action waits, and until the windows of its caps
//! have passed. The worker's index of when the delayed actions are due is
//! `operators::user_state::timers`.
//!
//! Caps are judged when an action fires (for a delayed one, when it comes due), so an
//! action cancelled before it fired does not use up the user's allowance.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Text, Time, UserEvent};

/// A duration in the config: a number and a unit, `500ms`, `2s`, `30m`, `1h`, `24h`,
/// `7d`. A bare number is refused: its unit would be a guess.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurationMs(pub u64);

/// A duration that does not parse; says what would.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{given}` is not a duration: write a number and a unit, as in 500ms, 2s, 30m, 1h, 24h or 7d"
)]
pub struct BadDuration {
    given: String,
}

impl std::str::FromStr for DurationMs {
    type Err = BadDuration;
    fn from_str(s: &str) -> Result<Self, BadDuration> {
        let bad = || BadDuration {
            given: s.to_string(),
        };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = t.split_at(split);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let scale = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        n.checked_mul(scale).map(DurationMs).ok_or_else(bad)
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Numbers arrive as numbers from YAML; they are refused with the same message.
        let given = serde_json::Value::deserialize(d)?;
        let text = match &given {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `max-per-user: {count: 3, per: 24h}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaxPerUser {
    pub count: u32,
    pub per: DurationMs,
}

impl<'de> Deserialize<'de> for MaxPerUser {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Given {
            count: serde_json::Value,
            per: DurationMs,
        }
        let shape = "takes a count and a window, as in {count: 3, per: 24h}";
        let value = serde_json::Value::deserialize(d)?;
        if !value.is_object() {
            return Err(serde::de::Error::custom(format!("`{value}`: {shape}")));
        }
        let error = |e: &dyn std::fmt::Display| serde::de::Error::custom(format!("{e}: {shape}"));
        let given = Given::deserialize(value).map_err(|e| error(&e))?;
        // Digits in quotes are the number, as every other number key of the config
        // takes them.
        let count = match &given.count {
            serde_json::Value::String(s)
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse::<u32>()
                    .map_err(|_| error(&format!("invalid type: string \"{s}\", expected u32")))?
            }
            v => u32::deserialize(v).map_err(|e| error(&e))?,
        };
        Ok(MaxPerUser {
            count,
            per: given.per,
        })
    }
}

/// What one action asks for beyond its filters; all off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// At most one firing per user in this long.
    pub cooldown_ms: Option<u64>,
    /// At most `count` firings per user in any window of `per`.
    pub max_per_user: Option<MaxPerUser>,
    /// Fires this long after the event that passed.
    pub delay_ms: Option<u64>,
}

impl Schedule {
    pub fn is_capped(&self) -> bool {
        self.cooldown_ms.is_some() || self.max_per_user.is_some()
    }

    /// How long a firing counts against the user's allowance.
    fn window_ms(&self) -> u64 {
        let per = self.max_per_user.map_or(0, |m| m.per.0);
        self.cooldown_ms.unwrap_or(0).max(per)
    }

    /// Firings to remember: enough to judge both caps.
    fn kept(&self) -> usize {
        self.max_per_user.map_or(1, |m| m.count.max(1) as usize)
    }

    /// Whether the action may fire at `now`, given its other firings in its window. A
    /// delayed firing is judged at its due time, which may be before an immediate one
    /// judged earlier: no two firings are closer than the cooldown, and no window of
    /// `per` ending at or after `now` holds more than `count`.
    fn admits(&self, fired: &[Time], now: Time) -> bool {
        if let Some(c) = self.cooldown_ms
            && fired.iter().any(|t| t.abs_diff(now) < c)
        {
            return false;
        }
        if let Some(m) = self.max_per_user {
            let recent = fired
                .iter()
                .filter(|t| t.saturating_add(m.per.0) > now)
                .count();
            if recent >= m.count as usize {
                return false;
            }
        }
        true
    }
}

/// An action's schedule, with the name its firings are kept under in a user's state
/// (names, not positions: a config with actions reordered still finds them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionSchedule {
    pub name: Text,
    pub schedule: Schedule,
}

/// When one action fired for a user, oldest first, within its window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub action: Text,
    pub times: Vec<Time>,
}

/// A delayed action waiting to fire: the event that passed, for the action's body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    /// Unique on its worker while pending: how the worker's index refers to it.
    pub id: u64,
    pub action: Text,
    pub due: Time,
    /// When the triggering event was read (its webhook's `X-Event-Ingested-At`).
    pub read_at: Time,
    pub event: UserEvent,
}

/// A user's firings of capped actions and its pending delayed actions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserTriggers {
    pub fired: Vec<Fired>,
    /// In the order scheduled.
    pub pending: Vec<Timer>,
    /// Until when a firing still counts against an allowance.
    pub caps_until: Time,
}

impl UserTriggers {
    /// Whether `action` (with `schedule`) may fire at `now`; if it may, the firing is
    /// recorded.
    pub fn admit(&mut self, action: &Text, schedule: &Schedule, now: Time) -> bool {
        if !schedule.is_capped() {
            return true;
        }
        let window = schedule.window_ms();
        let i = match self.fired.iter().position(|f| f.action == *action) {
            Some(i) => i,
            None => {
                self.fired.push(Fired {
                    action: action.clone(),
                    times: Vec::new(),
                });
                self.fired.len() - 1
            }
        };
        let times = &mut self.fired[i].times;
        times.retain(|t| t.saturating_add(window) > now);
        if !schedule.admits(times, now) {
            return false;
        }
        let at = times.partition_point(|t| *t <= now);
        times.insert(at, now);
        let excess = times.len().saturating_sub(schedule.kept());
        times.drain(..excess);
        self.caps_until = self.caps_until.max(now.saturating_add(window));
        true
    }

    /// Adds `timer`, unless `max` timers are pending already.
    pub fn schedule(&mut self, timer: Timer, max: usize) -> bool {
        if self.pending.len() >= max {
            return false;
        }
        self.pending.push(timer);
        true
    }

    /// Whether `action` has delayed firings pending, due after `time`.
    pub fn has_pending(&self, action: &str, time: Time) -> bool {
        self.pending
            .iter()
            .any(|t| &*t.action == action && t.due > time)
    }

    /// Removes `action`'s pending timers due after `time`; returns them.
    pub fn cancel(&mut self, action: &str, time: Time) -> Vec<Timer> {
        let (gone, kept) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|t| &*t.action == action && t.due > time);
        self.pending = kept;
        gone
    }

    /// Removes the timers due before `limit`; returns them, earliest first.
    pub fn take_due(&mut self, limit: Time) -> Vec<Timer> {
        let (mut due, kept): (Vec<Timer>, Vec<Timer>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|t| t.due < limit);
        self.pending = kept;
        due.sort_by_key(|t| t.due);
        due
    }

    /// Whether the user must be kept at `now` whatever its TTL says.
    pub fn keeps(&self, now: Time) -> bool {
        !self.pending.is_empty() || self.caps_until > now
    }
}

/// A user's triggers, created on first use.
pub fn of(slot: &mut Option<Box<UserTriggers>>) -> &mut UserTriggers {
    slot.get_or_insert_with(Box::default)
}

/// The schedules of the configured actions, in their order (the bits of an event's
/// targets).
#[derive(Clone, Debug, Default)]
pub struct Schedules(pub Arc<Vec<ActionSchedule>>);

impl Schedules {
    /// The bits of the actions whose schedule passes `f`.
    pub fn bits(&self, f: impl Fn(&Schedule) -> bool) -> u64 {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, a)| f(&a.schedule))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// The position of the action named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|a| &*a.name == name)
    }
}

/// A user's triggers with a firing and a pending timer, for tests elsewhere.
#[cfg(test)]
pub(crate) fn example() -> UserTriggers {
    UserTriggers {
        fired: vec![Fired {
            action: "mail".into(),
            times: vec![5, 9],
        }],
        pending: vec![Timer {
            id: 3,
            action: "cart".into(),
            due: 1_000,
            read_at: 400,
            event: UserEvent {
                event_id: Some("c1".into()),
                user_id: "u".into(),
                event_type: "add_to_cart".into(),
                parameters: Some(crate::model::RawJson::parse(r#"{"sku":"x","n":2}"#).unwrap()),
                ..UserEvent::default()
            },
        }],
        caps_until: 3_600_009,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        s.parse::<DurationMs>().unwrap().0
    }

    #[test]
    fn durations_take_a_unit_and_a_bare_number_is_refused() {
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("2s"), 2_000);
        assert_eq!(ms("30m"), 1_800_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("24h"), 86_400_000);
        assert_eq!(ms("7d"), 604_800_000);
        for bad in ["3600", "1 hour", "h", "-1s", "1.5h", ""] {
            let e = bad.parse::<DurationMs>().unwrap_err().to_string();
            assert!(e.contains("500ms, 2s, 30m, 1h"), "{bad}: {e}");
        }
        let e = serde_yaml_like("3600").unwrap_err();
        assert!(e.contains("`3600` is not a duration"), "{e}");
    }

    fn serde_yaml_like(json: &str) -> Result<DurationMs, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    fn capped(cooldown: Option<&str>, max: Option<(u32, &str)>) -> Schedule {
        Schedule {
            cooldown_ms: cooldown.map(ms),
            max_per_user: max.map(|(count, per)| MaxPerUser {
                count,
                per: DurationMs(ms(per)),
            }),
            delay_ms: None,
        }
    }

    fn admitted(s: &Schedule, times: &[Time]) -> Vec<Time> {
        let mut t = UserTriggers::default();
        let name: Text = "a".into();
        times
            .iter()
            .copied()
            .filter(|now| t.admit(&name, s, *now))
            .collect()
    }

    #[test]
    fn a_cooldown_lets_one_firing_through_per_period() {
        let s = capped(Some("1s"), None);
        assert_eq!(
            admitted(&s, &[0, 10, 999, 1000, 1500, 2000, 2999, 3000]),
            [0, 1000, 2000, 3000]
        );
    }

    #[test]
    fn a_count_per_window_slides() {
        let s = capped(None, Some((3, "10s")));
        assert_eq!(
            admitted(
                &s,
                &[0, 1000, 2000, 3000, 9999, 10_000, 10_500, 11_000, 12_000]
            ),
            [0, 1000, 2000, 10_000, 11_000, 12_000]
        );
    }

    #[test]
    fn both_caps_apply_together() {
        let s = capped(Some("1s"), Some((2, "10s")));
        assert_eq!(
            admitted(&s, &[0, 500, 1000, 2000, 9000, 10_000, 10_100, 11_000]),
            [0, 1000, 10_000, 11_000]
        );
    }

    #[test]
    fn firings_are_kept_only_as_long_as_they_count() {
        let s = capped(Some("1s"), Some((2, "1m")));
        let mut t = UserTriggers::default();
        let a: Text = "a".into();
        for now in [0, 1_000, 2_000, 3_000, 4_000] {
            t.admit(&a, &s, now);
        }
        assert_eq!(t.fired[0].times, [0, 1_000]);
        assert!(t.keeps(60_999) && !t.keeps(61_000));
        t.admit(&a, &s, 200_000);
        assert_eq!(t.fired[0].times, [200_000]);
    }

    fn timer(id: u64, action: &str, due: Time) -> Timer {
        Timer {
            id,
            action: action.into(),
            due,
            read_at: 0,
            event: UserEvent::default(),
        }
    }

    #[test]
    fn timers_come_due_in_order_and_a_cancel_takes_only_its_actions() {
        let mut t = UserTriggers::default();
        assert!(t.schedule(timer(1, "cart", 300), 3));
        assert!(t.schedule(timer(2, "mail", 100), 3));
        assert!(t.schedule(timer(3, "cart", 200), 3));
        assert!(!t.schedule(timer(4, "cart", 400), 3), "over the limit");
        let due: Vec<u64> = t.take_due(301).iter().map(|t| t.id).collect();
        assert_eq!(due, [2, 3, 1]);
        assert!(!t.keeps(0));
        t.schedule(timer(5, "cart", 500), 3);
        t.schedule(timer(6, "mail", 500), 3);
        assert!(t.has_pending("cart", 0) && t.keeps(10_000));
        t.schedule(timer(7, "cart", 200), 3);
        let gone: Vec<u64> = t.cancel("cart", 200).iter().map(|t| t.id).collect();
        assert_eq!(gone, [5], "not one due at or before the cancelling event");
        t.take_due(201);
        assert!(!t.has_pending("cart", 0) && t.has_pending("mail", 0));
    }
}
