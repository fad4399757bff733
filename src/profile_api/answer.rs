//! The Profile API's answers (HTTP bodies, or a line of a `file://` snapshot) read field
//! by field, as the original's Jackson mapper read them into its POJOs: an absent or
//! `null` field is its default (`None`, 0, false), a scalar of another type is coerced
//! (`crate::coerce`: `"7"` is 7, `7` is `"7"`, `"true"` is true, 1.5 is 1).
//!
//! Where the original failed the whole look-up (a value that cannot be coerced), this
//! degrades one part only and keeps the rest: the field is left at its default (profile,
//! visit), or the history entry is skipped (one that is not an object, too). Each is
//! counted (`event_trigger_profile_answer_skipped_total{kind}`) and warned about at a
//! limited rate.

use std::borrow::{Borrow, Cow};
use std::sync::{Arc, LazyLock, Mutex};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::coerce::{self, CoerceError};
use crate::log_limit::LogLimiter;
use crate::model::{HistoryEntry, Profile, ProfileData, Str, Visit};

/// A JSON object as its members' raw values; of a repeated key the last one counts, as
/// in Jackson.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct RawObject(FxHashMap<String, Box<RawValue>>);

/// A history entry's members, borrowed from its text (names with escapes excepted): an
/// entry is read once, field by field, so its members need no copies.
type Members<'a> = FxHashMap<Name<'a>, &'a RawValue>;

/// A member's name as it came: borrowed, unless it had escapes (then unescaped).
#[derive(PartialEq, Eq, Hash)]
struct Name<'a>(Cow<'a, str>);

impl Borrow<str> for Name<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// The three answers of a look-up as they came; a snapshot line is one of these (its
/// `user_id` aside). A part that is not there, or `null`, is empty.
#[derive(Debug, Default, Deserialize)]
pub struct Answers {
    #[serde(default)]
    pub profile: Option<RawObject>,
    #[serde(default)]
    pub visit: Option<RawObject>,
    #[serde(default)]
    pub history: Option<Vec<Box<RawValue>>>,
}

/// What could not be read of one look-up's answers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Fields of the profile or the visit left at their default.
    pub fields: u64,
    /// History entries left out.
    pub history_entries: u64,
    /// The first problem, for the warning.
    pub first: Option<String>,
}

impl Skipped {
    fn note(&mut self, problem: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(problem());
        }
    }

    fn field(&mut self, part: &str, name: &str, e: CoerceError) {
        self.fields += 1;
        self.note(|| format!("{part}.{name}: {e}, left at its default"));
    }

    fn entry(&mut self, index: usize, why: String) {
        self.history_entries += 1;
        self.note(|| format!("history[{index}] skipped: {why}"));
    }
}

/// Warnings about unreadable answers, shared by every look-up of the process.
static WARNINGS: LazyLock<Mutex<LogLimiter>> =
    LazyLock::new(|| Mutex::new(LogLimiter::per_10s("warnings about Profile API answers")));

impl Answers {
    /// The user's data, what could not be read of it counted and warned about.
    pub fn into_data(self, user: &str) -> ProfileData {
        let (data, skipped) = self.read();
        if skipped.fields + skipped.history_entries > 0 {
            let m = crate::metrics::global();
            m.profile_answer_skipped("field", skipped.fields);
            m.profile_answer_skipped("history_entry", skipped.history_entries);
            let allowed = WARNINGS.lock().is_ok_and(|mut l| l.allow());
            if allowed {
                tracing::warn!(
                    user,
                    fields = skipped.fields,
                    history_entries = skipped.history_entries,
                    "Profile API answer partly unreadable, the rest is kept: {}",
                    skipped.first.as_deref().unwrap_or_default()
                );
            }
        }
        data
    }

    /// The user's data, and what could not be read of it.
    pub fn read(self) -> (ProfileData, Skipped) {
        let mut skipped = Skipped::default();
        let profile = self
            .profile
            .map(|o| {
                profile(&mut Fields::new(
                    PartMembers::Map(&o),
                    "profile",
                    &mut skipped,
                ))
            })
            .unwrap_or_default();
        let visit = self.visit.map(|o| {
            visit(&mut Fields::new(
                PartMembers::Map(&o),
                "visit",
                &mut skipped,
            ))
        });
        let history = self
            .history
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| history_entry(raw).map_err(|why| skipped.entry(i, why)).ok())
            .collect();
        let data = ProfileData {
            profile,
            visit,
            history,
        };
        (data, skipped)
    }
}

/// A profile's or visit's members by name: as serde read them, or as the scan found
/// them (key and value text, in order: of a repeated key the last counts, as in the map).
pub(super) enum PartMembers<'a> {
    Map(&'a RawObject),
    Pairs(&'a [(&'a str, &'a str)]),
    /// The scan's pairs, each name asked for looked at first where the last one was
    /// found, plus one: a Profile API (Jackson) writes an object's fields in the order
    /// of its class, the order in which they are read. By name, every field looked
    /// through the pairs from the end, ~70 instructions a field, ~1,500 a look-up.
    /// From the first name not found in place on, names are looked for as `Pairs` does.
    /// What was found in place is right unless a pair after those read in place has
    /// one of their keys again (the last counts): `read_as_by_name` says, else the part
    /// is read again by `Pairs`.
    InOrder {
        pairs: &'a [(&'a str, &'a str)],
        next: usize,
        strayed: bool,
    },
}

impl<'a> PartMembers<'a> {
    pub(super) fn in_order(pairs: &'a [(&'a str, &'a str)]) -> Self {
        PartMembers::InOrder {
            pairs,
            next: 0,
            strayed: false,
        }
    }

    /// The JSON text of member `name`.
    #[inline]
    fn get(&mut self, name: &str) -> Option<&'a str> {
        match self {
            PartMembers::Map(o) => o.0.get(name).map(|r| r.get()),
            PartMembers::Pairs(p) => last_of(p, name),
            PartMembers::InOrder {
                pairs,
                next,
                strayed,
            } => match pairs.get(*next) {
                Some((k, v)) if !*strayed && same_key(k, name) => {
                    *next += 1;
                    Some(v)
                }
                _ => {
                    *strayed = true;
                    last_of(pairs, name)
                }
            },
        }
    }

    /// Whether what was read is what `Pairs` reads: no key of the pairs read in place
    /// comes again after them.
    fn read_as_by_name(&self) -> bool {
        match self {
            PartMembers::InOrder { pairs, next, .. } => {
                let (in_place, after) = pairs.split_at(*next);
                !after
                    .iter()
                    .any(|(k, _)| in_place.iter().any(|(p, _)| same_key(k, p)))
            }
            _ => true,
        }
    }
}

/// `key == name`, for a short name by two words of each (no call to compare bytes).
#[inline]
fn same_key(key: &str, name: &str) -> bool {
    let (k, n) = (key.as_bytes(), name.as_bytes());
    k.len() == n.len()
        && if n.len() <= 16 {
            crate::dict::ends(k) == crate::dict::ends(n)
        } else {
            k == n
        }
}

/// The value of the last pair named `name`.
fn last_of<'a>(pairs: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
}

/// The fields of a profile or visit object: each read on its own, a bad one defaulted.
pub(super) struct Fields<'a> {
    members: PartMembers<'a>,
    part: &'static str,
    skipped: &'a mut Skipped,
}

impl<'a> Fields<'a> {
    pub(super) fn new(
        members: PartMembers<'a>,
        part: &'static str,
        skipped: &'a mut Skipped,
    ) -> Self {
        Fields {
            members,
            part,
            skipped,
        }
    }

    /// Whether what was read is what reading by name reads (`PartMembers::InOrder`).
    pub(super) fn read_as_by_name(&self) -> bool {
        self.members.read_as_by_name()
    }

    fn read<T: Default>(
        &mut self,
        name: &str,
        read_as: impl FnOnce(&str) -> Result<T, CoerceError>,
    ) -> T {
        let Some(raw) = self.members.get(name) else {
            return T::default();
        };
        read_as(raw).unwrap_or_else(|e| {
            self.skipped.field(self.part, name, e);
            T::default()
        })
    }

    /// A string of its own (ids, addresses).
    fn text(&mut self, name: &str) -> Option<Str> {
        self.read(name, |r| Ok(coerce::text_of(r)?.map(|s| Str::from(&*s))))
    }

    /// A string from a small vocabulary, shared (`Str::shared`).
    fn word(&mut self, name: &str) -> Option<Str> {
        self.read(name, |r| Ok(coerce::text_of(r)?.map(|s| Str::shared(&s))))
    }

    fn long(&mut self, name: &str) -> i64 {
        self.read(name, coerce::long_of)
    }

    fn boolean(&mut self, name: &str) -> bool {
        self.read(name, coerce::boolean_of)
    }
}

pub(super) fn profile(f: &mut Fields<'_>) -> Profile {
    Profile {
        user_id: f.text("user_id"),
        country: f.word("country"),
        city: f.word("city"),
        language: f.word("language"),
        continent: f.word("continent"),
        timezone: f.word("timezone"),
    }
}

pub(super) fn visit(f: &mut Fields<'_>) -> Visit {
    Visit {
        uuid: f.text("uuid"),
        timestamp: f.long("timestamp"),
        os: f.word("os"),
        browser: f.word("browser"),
        device: f.word("device"),
        landing_page: f.word("landing_page"),
        referrer_type: f.word("referrer_type"),
        referrer_url: f.word("referrer_url"),
        referrer_query: f.word("referrer_query"),
        duration: f.long("duration"),
        actions: f.long("actions"),
        is_first_visit: f.boolean("is_first_visit"),
        screen: f.word("screen"),
        ip: f.text("ip"),
    }
}

/// One history entry; `Err` (why) when it is not an object or one of its fields cannot
/// be coerced: a half-read entry would mislead rules that count or order the history.
fn history_entry(raw: &RawValue) -> Result<HistoryEntry, String> {
    let o = serde_json::from_str::<Members<'_>>(raw.get())
        .map_err(|_| format!("not an object: {:.40}", raw.get()))?;
    let field = |name: &str| o.get(name).copied();
    let text = |name: &'static str| -> Result<Option<Arc<str>>, String> {
        match field(name) {
            Some(r) => Ok(coerce::text(r)
                .map_err(|e| format!("{name}: {e}"))?
                .map(|t| Arc::from(&*t))),
            None => Ok(None),
        }
    };
    let timestamp = match field("timestamp") {
        Some(r) => coerce::long(r).map_err(|e| format!("timestamp: {e}"))?,
        None => 0,
    };
    let parameters = match field("parameters") {
        Some(r) => crate::wire::parameters(r, false).map_err(|e| format!("parameters: {e}"))?,
        None => None,
    };
    Ok(HistoryEntry {
        event_id: text("event_id")?,
        event_name: text("event_name")?,
        event_type: text("event_type")?,
        timestamp,
        parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(profile: &str, visit: &str, history: &str) -> Answers {
        let line = format!(r#"{{"profile":{profile},"visit":{visit},"history":{history}}}"#);
        serde_json::from_str(&line).unwrap()
    }

    /// Names are found in place while they come in order, by name from the first one
    /// out of place on; a key read in place that comes again after calls for reading
    /// the part again by name (its last value counts).
    #[test]
    fn names_are_read_in_place_while_in_order_and_repeats_after_are_caught() {
        let pairs = [("a", "1"), ("b", "2"), ("c", "3")];
        let mut m = PartMembers::in_order(&pairs);
        assert_eq!(
            (m.get("a"), m.get("b"), m.get("c")),
            (Some("1"), Some("2"), Some("3"))
        );
        assert!(m.read_as_by_name());
        let mut m = PartMembers::in_order(&pairs);
        assert_eq!(
            (m.get("a"), m.get("c"), m.get("b")),
            (Some("1"), Some("3"), Some("2"))
        );
        assert!(m.read_as_by_name(), "b and c by name");
        let mut m = PartMembers::in_order(&pairs);
        assert_eq!((m.get("x"), m.get("c")), (None, Some("3")));
        assert!(m.read_as_by_name());
        let repeated = [("a", "1"), ("b", "2"), ("a", "3")];
        let mut m = PartMembers::in_order(&repeated);
        assert_eq!((m.get("a"), m.get("b")), (Some("1"), Some("2")));
        assert!(!m.read_as_by_name(), "a comes again after its place");
        assert_eq!(PartMembers::Pairs(&repeated).get("a"), Some("3"));
    }

    #[test]
    fn nulls_are_defaults_and_scalars_are_coerced() {
        let (data, skipped) = answers(
            r#"{"user_id":12345,"country":"US","city":null}"#,
            r#"{"uuid":"v","actions":null,"timestamp":"1704067200000","duration":1.5,"is_first_visit":"true"}"#,
            r#"[{"event_id":7,"event_type":"click","timestamp":"5"}]"#,
        )
        .read();
        assert_eq!(skipped, Skipped::default());
        assert_eq!(data.profile.user_id.as_deref(), Some("12345"));
        assert_eq!(data.profile.country.as_deref(), Some("US"));
        assert_eq!(data.profile.city, None);
        let visit = data.visit.unwrap();
        assert_eq!(visit.uuid.as_deref(), Some("v"));
        assert_eq!(visit.actions, 0);
        assert_eq!(visit.timestamp, 1_704_067_200_000);
        assert_eq!(visit.duration, 1);
        assert!(visit.is_first_visit);
        assert_eq!(data.history.len(), 1);
        assert_eq!(data.history.to_entries()[0].event_id.as_deref(), Some("7"));
        assert_eq!(data.history.to_entries()[0].timestamp, 5);
    }

    #[test]
    fn a_field_that_cannot_be_coerced_is_defaulted_and_the_rest_kept() {
        let (data, skipped) = answers(
            r#"{"country":{"code":"US"},"city":"Paris"}"#,
            r#"{"actions":"lots","os":"ios","timestamp":3}"#,
            "[]",
        )
        .read();
        assert_eq!(skipped.fields, 2);
        assert_eq!(skipped.history_entries, 0);
        assert_eq!(
            skipped.first.as_deref(),
            Some("profile.country: an object where a string is expected, left at its default")
        );
        assert_eq!(data.profile.country, None);
        assert_eq!(data.profile.city.as_deref(), Some("Paris"));
        let visit = data.visit.unwrap();
        assert_eq!(
            (visit.actions, visit.os.as_deref(), visit.timestamp),
            (0, Some("ios"), 3)
        );
    }

    #[test]
    fn bad_history_entries_are_skipped_and_counted() {
        let (data, skipped) = answers(
            "null",
            "null",
            r#"[{"event_id":"a","timestamp":1},null,"x",{"event_id":"b"},{"event_id":"c","timestamp":"yesterday"},{"event_id":"d","event_type":["x"]},{"event_id":"e","parameters":{"utm_id":5}},{"event_id":"f","parameters":[]}]"#,
        )
        .read();
        let ids: Vec<_> = data.history.iter().map(|h| h.event_id.unwrap()).collect();
        assert_eq!(ids, ["a", "b", "e"], "without a timestamp: 0, as Jackson");
        assert_eq!(data.history.to_entries()[1].timestamp, 0);
        assert_eq!(
            data.history.to_entries()[2]
                .parameters
                .as_ref()
                .unwrap()
                .text(),
            r#"{"utm_id":"5"}"#
        );
        assert_eq!(skipped.history_entries, 5);
        assert_eq!(skipped.fields, 0);
        assert_eq!(
            skipped.first.as_deref(),
            Some("history[1] skipped: not an object: null")
        );
        assert_eq!(data.profile, Profile::default());
        assert_eq!(data.visit, None);
    }

    /// Half of a surrogate pair has no UTF-8 form: the entry or field holding it is
    /// skipped and counted, as any other value that cannot be read (it was kept as its
    /// JSON literal, quotes and escape included).
    #[test]
    fn half_a_surrogate_pair_skips_its_entry_or_field() {
        let (data, skipped) = answers(
            r#"{"country":"\ud800","city":"Paris"}"#,
            "null",
            r#"[{"event_id":"h_\ud800x","timestamp":1},{"event_id":"ok","event_name":"\ud83d\ude00","timestamp":2}]"#,
        )
        .read();
        assert_eq!(data.profile.country, None);
        assert_eq!(data.profile.city.as_deref(), Some("Paris"));
        let ids: Vec<_> = data.history.iter().map(|h| h.event_id).collect();
        assert_eq!(ids, [Some("ok")]);
        assert_eq!(
            data.history.to_entries()[0].event_name.as_deref(),
            Some("😀")
        );
        assert_eq!((skipped.fields, skipped.history_entries), (1, 1));
        let first = skipped.first.unwrap();
        assert!(first.starts_with("profile.country: the string"), "{first}");
        assert!(first.contains("surrogate"), "{first}");
    }

    #[test]
    fn a_repeated_key_takes_the_last_value_as_jackson() {
        let (data, _) = answers(
            r#"{"country":"DE","country":"US"}"#,
            "null",
            r#"[{"event_id":"a","event_id":"b","timestamp":1}]"#,
        )
        .read();
        assert_eq!(data.profile.country.as_deref(), Some("US"));
        assert_eq!(data.history.to_entries()[0].event_id.as_deref(), Some("b"));
    }

    /// An entry's member names are read borrowed, and unescaped where they have escapes.
    #[test]
    fn history_member_names_with_escapes_are_read_as_their_text() {
        let (data, skipped) = answers(
            "null",
            "null",
            r#"[{"event\u005fid":"a","ev\u0065nt_type":"click","timestamp":2,"parameters":{"utm_id":"x"}}]"#,
        )
        .read();
        assert_eq!(skipped, Skipped::default());
        let entries = data.history.to_entries();
        let entry = &entries[0];
        assert_eq!(entry.event_id.as_deref(), Some("a"));
        assert_eq!(entry.event_type.as_deref(), Some("click"));
        assert_eq!(entry.timestamp, 2);
        assert_eq!(
            entry.parameters.as_ref().unwrap().text(),
            r#"{"utm_id":"x"}"#
        );
    }
}
