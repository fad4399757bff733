//! The wire-compatible data model of the Flink job: events, the Profile API's answers,
//! the per-user state (the original called it a checkpoint; here the word is kept for the
//! job's snapshots) and what leaves the state operator.
//!
//! Strings are `Arc<str>` so that an event, the history entry made from it and the
//! enriched copy handed to the actions share one allocation instead of three.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::history::History;

/// Processing time in epoch milliseconds: the timestamp of every stream in the job.
pub type Time = u64;

/// A shared, immutable string.
pub type Text = Arc<str>;

pub use crate::small_text::SmallText;

/// One `UserEvent` as producers send it. Fields absent on the wire are `None` (strings)
/// or their Java defaults (`false`, `0`), as the Flink job's POJO saw them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserEvent {
    /// In place when short (the usual id): no allocation per event.
    pub event_id: Option<SmallText>,
    /// In place when short: the users' table keys are `Text`, made once per user.
    pub user_id: SmallText,
    pub domain: Option<SmallText>,
    pub is_first_in_visit: bool,
    pub is_last_in_visit: bool,
    pub is_first_event: bool,
    pub is_current: bool,
    pub event_name: Option<SmallText>,
    pub event_displayname: Option<SmallText>,
    pub integration: Option<SmallText>,
    pub app: Option<SmallText>,
    pub platform: Option<SmallText>,
    pub is_https: bool,
    pub event_type: SmallText,
    pub duration: i64,
    pub timestamp: i64,
    pub triggerable: bool,
    /// The `parameters` object exactly as it arrived (validated JSON text), kept raw:
    /// decoding it into a tree per event would cost more than everything else together,
    /// and most filters never look inside.
    pub parameters: Option<RawJson>,
}

/// A validated JSON value, kept in the compact form of `history::codec` (object keys and
/// strings by this process's dictionary id, numbers as their text; text with whitespace
/// between tokens whole), which writes back exactly the text that arrived. A history
/// entry holds the same bytes, so an event's become its entry's by a copy. In JSON it is
/// written (and read) as the value itself; in the binary exchange format, which may
/// cross to another process and its dictionary, as its text (checked again on arrival).
#[derive(Clone)]
pub struct RawJson(Arc<[u8]>);

impl RawJson {
    /// Checks `text` is one JSON document.
    pub fn parse(text: &str) -> serde_json::Result<RawJson> {
        serde_json::from_str::<&RawValue>(text).map(|raw| RawJson::checked(raw.get()))
    }

    /// `text`, already checked to be one JSON value without whitespace around it.
    pub(crate) fn checked(text: &str) -> RawJson {
        let mut tokens = Vec::with_capacity(text.len() / 2);
        crate::history::codec::put_json(&mut tokens, text);
        RawJson(Arc::from(tokens))
    }

    /// Tokens `history::codec` wrote (in this process) of one checked JSON value.
    pub(crate) fn from_tokens(tokens: &[u8]) -> RawJson {
        RawJson(Arc::from(tokens))
    }

    /// The compact form (see the type's notes).
    pub fn tokens(&self) -> &[u8] {
        &self.0
    }

    /// The tokens, as a history entry's parameters are read.
    pub fn params(&self) -> crate::history::Params<'_> {
        crate::history::Params::of(&self.0)
    }

    /// Appends the JSON text, as it arrived.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.params().write_json(out);
    }

    /// The JSON text, as it arrived.
    pub fn text(&self) -> String {
        let mut out = Vec::with_capacity(self.0.len() * 3);
        self.write_json(&mut out);
        // The tokens hold text that was checked to be UTF-8 on its way in.
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// JSON `null`.
    pub fn null() -> RawJson {
        RawJson::checked("null")
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RawJson").field(&self.text()).finish()
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        RawJson::checked(raw.get())
    }
}

impl PartialEq for RawJson {
    /// The same text (the same tokens, unless one holds a string inline that the other
    /// holds by id: made when the dictionary had no room for it, or when the thread
    /// that made it met the value for the first time).
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || self.text() == other.text()
    }
}

impl Eq for RawJson {}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.text();
        if s.is_human_readable() {
            // serde_json writes a `RawValue` as its text. The text was checked when it
            // was made; checking it again costs only the serde paths (pretty debug
            // prints, tests): webhook bodies are written by hand (`actions::body_json`).
            let raw: &RawValue = serde_json::from_str(&text).map_err(serde::ser::Error::custom)?;
            raw.serialize(s)
        } else {
            s.serialize_str(&text)
        }
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(Box::<RawValue>::deserialize(d)?.into())
        } else {
            let text = String::deserialize(d)?;
            RawValue::from_string(text)
                .map(RawJson::from)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// A string of a profile or visit: the dictionary's copy when it is one of a small
/// vocabulary (countries, cities, browsers ...: `Str::shared`), else its own. Reads,
/// compares and serializes as the string.
#[derive(Clone)]
pub enum Str {
    Shared(&'static str),
    Owned(Box<str>),
}

impl Str {
    /// The dictionary's copy of `s`, or an owned one when the dictionary is full.
    pub fn shared(s: &str) -> Str {
        crate::dict::shared(s).map_or_else(|| Str::Owned(s.into()), Str::Shared)
    }
}

impl std::ops::Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Str::Shared(s) => s,
            Str::Owned(s) => s,
        }
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Str {
        Str::Owned(s.into())
    }
}

impl From<String> for Str {
    fn from(s: String) -> Str {
        Str::Owned(s.into())
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Str) -> bool {
        **self == **other
    }
}

impl Eq for Str {}

impl std::fmt::Debug for Str {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for Str {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Str::from)
    }
}

/// `GET /users/{id}/profile`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub user_id: Option<Str>,
    pub country: Option<Str>,
    pub city: Option<Str>,
    pub language: Option<Str>,
    pub continent: Option<Str>,
    pub timezone: Option<Str>,
}

/// `GET /users/{id}/visit`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Visit {
    pub uuid: Option<Str>,
    pub timestamp: i64,
    pub os: Option<Str>,
    pub browser: Option<Str>,
    pub device: Option<Str>,
    pub landing_page: Option<Str>,
    pub referrer_type: Option<Str>,
    pub referrer_url: Option<Str>,
    pub referrer_query: Option<Str>,
    pub duration: i64,
    pub actions: i64,
    pub is_first_visit: bool,
    pub screen: Option<Str>,
    pub ip: Option<Str>,
}

/// One entry of `GET /users/{id}/history`, and what every event appends to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub event_id: Option<Text>,
    pub event_name: Option<Text>,
    pub event_type: Option<Text>,
    pub timestamp: i64,
    pub parameters: Option<RawJson>,
}

/// What the Profile API knows of a user: the three answers together. The history is
/// read straight into its compact form, as the state keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileData {
    pub profile: Profile,
    pub visit: Option<Visit>,
    pub history: History,
}

/// The per-user state kept by the state operator (the original's `UserCheckpoint`).
///
/// The parts are behind `Arc`s so the filter and the actions can look at them without a
/// copy; the operator mutates them with `sole_mut` (`Arc::make_mut` without its lock),
/// which copies only if a reader still holds one. The history is compact
/// (`crate::history`). Serialized through the
/// exchange when a checkpoint is restored onto the workers (and in v1 checkpoints);
/// checkpoint parts and RocksDB use `crate::store::codec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub profile: Arc<Profile>,
    pub visit: Option<Arc<Visit>>,
    pub history: Arc<History>,
    /// Processing time of the last event, for the TTL.
    pub last_activity: Time,
    /// The time under which the TTL index last queued this user.
    pub ttl_mark: Time,
    /// Set when the look-up failed: from this time on, the next event looks it up again.
    pub refetch_after: Option<Time>,
    /// Its capped actions' firings and its delayed actions, once it has any. Not in
    /// this struct's serde form, which checkpoint formats fixed: `store::codec` and
    /// `SavedUser` carry it.
    #[serde(skip)]
    pub triggers: Option<Box<crate::triggers::UserTriggers>>,
    /// Which checkpoint interval last listed this user as changed, so that a delta part
    /// lists each user once without a set of them, and what its history gained since
    /// (`UserTable`). Not saved.
    #[serde(skip)]
    pub changed_in: ChangeMark,
}

/// Bookkeeping of the users' table for delta parts, not part of the state's value: two
/// states that differ only in it are equal.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChangeMark {
    /// The serial of the checkpoint interval in which the state last changed (0: none
    /// yet).
    pub interval: u32,
    /// How many entries the history gained since the state the checkpoint chain holds
    /// (the one it had when it was first changed in `interval`), so that a delta part
    /// writes only those (`store::codec::encode_tail_into`); `None` when the chain may
    /// not hold it: a new state, a history replaced or merged.
    pub appended: Option<u32>,
    /// The bytes those entries take in the history's buffer (saturating), so that a
    /// delta finds them from its end (`History::newest_encoded`).
    pub appended_bytes: u32,
}

impl PartialEq for ChangeMark {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl UserState {
    pub fn from_profile(data: ProfileData, now: Time) -> Self {
        UserState {
            profile: Arc::new(data.profile),
            visit: data.visit.map(Arc::new),
            history: Arc::new(data.history),
            last_activity: now,
            ttl_mark: now,
            refetch_after: None,
            triggers: None,
            changed_in: ChangeMark::default(),
        }
    }

    /// The original's checkpoint after a failed fetch: an empty profile, no visit, no
    /// history.
    pub fn empty(now: Time) -> Self {
        Self::from_profile(ProfileData::default(), now)
    }

    /// Appends the entry `ev` makes to the history, then keeps only its newest `max`
    /// entries (the Profile API's own history is kept whole until the first event is
    /// appended).
    pub fn append_event(&mut self, ev: &UserEvent, max: usize) {
        let history = sole_mut(&mut self.history);
        let bytes = history.push_event(ev);
        history.keep_newest(max);
        let mark = &mut self.changed_in;
        if let Some(n) = &mut mark.appended {
            *n = n.saturating_add(1);
            mark.appended_bytes = mark
                .appended_bytes
                .saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX));
        }
    }

    /// Appends `entries`, then keeps the newest `max`, as `append_event`.
    pub fn append_history(&mut self, entries: &History, max: usize) {
        let history = sole_mut(&mut self.history);
        history.extend(entries);
        history.keep_newest(max);
        self.changed_in.appended = None;
    }
}

/// `Arc::make_mut` without its locked instruction where the value is not shared: the
/// state operator changes a user's history and visit on every event, and the lock (a
/// full fence on x86) made each event wait for every load and store before it.
///
/// Sound as `Arc::get_mut`: with `&mut` on the only `Arc` (strong count 1) and no
/// `Weak` (which this crate never makes, and which the check refuses), no other thread
/// can reach the value or make a new handle to it; the acquire fence after reading the
/// count orders this thread's writes after whatever another thread did before it
/// dropped its handle (its decrement is a release). Shared values are copied, as
/// `make_mut` does.
pub fn sole_mut<T: Clone>(a: &mut Arc<T>) -> &mut T {
    if Arc::strong_count(a) == 1 {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        if Arc::weak_count(a) == 0 {
            // SAFETY: unique as argued above; the pointer is the allocation's own (not
            // derived from a shared reference), valid while `a` is, and `a` stays
            // borrowed mutably for the returned reference's lifetime.
            return unsafe { &mut *Arc::as_ptr(a).cast_mut() };
        }
    }
    Arc::make_mut(a)
}

/// A user whose Profile API look-up had not finished when a checkpoint was taken, as the
/// checkpoint keeps it: looked up again on restore, then its events are applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingUser {
    /// Its state before the look-up, when it is a look-up again after a failed one.
    pub before: Option<UserState>,
    /// Its events that wait for the look-up, in order, with their times.
    pub events: Vec<(Time, UserEvent)>,
}

/// A user as a checkpoint holds it.
#[derive(Clone, Debug, PartialEq)]
pub enum SavedUser {
    State(UserState),
    Pending(PendingUser),
}

impl SavedUser {
    /// The state whose triggers travel with it: the user's, or the one before its
    /// look-up.
    fn state_mut(&mut self) -> Option<&mut UserState> {
        match self {
            SavedUser::State(s) => Some(s),
            SavedUser::Pending(p) => p.before.as_mut(),
        }
    }
}

/// `SavedUser` as the restore exchange carries it between processes (never persisted):
/// the state's triggers beside it, since `UserState`'s serde form leaves them out.
#[derive(Serialize)]
struct SavedRef<'a> {
    state: Option<&'a UserState>,
    pending: Option<&'a PendingUser>,
    triggers: Option<&'a crate::triggers::UserTriggers>,
}

#[derive(Deserialize)]
struct SavedOwned {
    state: Option<UserState>,
    pending: Option<PendingUser>,
    triggers: Option<Box<crate::triggers::UserTriggers>>,
}

impl Serialize for SavedUser {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (state, pending, with) = match self {
            SavedUser::State(st) => (Some(st), None, Some(st)),
            SavedUser::Pending(p) => (None, Some(p), p.before.as_ref()),
        };
        SavedRef {
            state,
            pending,
            triggers: with.and_then(|st| st.triggers.as_deref()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SavedUser {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let o = SavedOwned::deserialize(d)?;
        let mut saved = match (o.state, o.pending) {
            (Some(st), None) => SavedUser::State(st),
            (None, Some(p)) => SavedUser::Pending(p),
            _ => {
                return Err(serde::de::Error::custom(
                    "a saved user is a state or pending",
                ));
            }
        };
        if let Some(st) = saved.state_mut() {
            st.triggers = o.triggers;
        }
        Ok(saved)
    }
}

/// What the filter looks at: an event and its user's state after the event was applied.
#[derive(Clone, Copy, Debug)]
pub struct EnrichedView<'a> {
    pub event: &'a UserEvent,
    pub state: &'a UserState,
}

/// An event that passed the filter, with a snapshot of its user's data, on its way to
/// the actions (the visit and history shared with the state until the user's next
/// event, which copies them only if the snapshot is still on its way).
#[derive(Clone, Debug)]
pub struct EnrichedEvent {
    pub event: UserEvent,
    pub profile: Arc<Profile>,
    pub visit: Option<Arc<Visit>>,
    pub history: Arc<History>,
    /// The actions it is for (bit `i`: the `i`-th configured action).
    pub targets: u64,
    /// When its event was read, for a delayed action (else its time in the dataflow is).
    pub read_at: Option<Time>,
}

impl EnrichedEvent {
    /// `targets`: the actions it is for, as bits by the actions' order.
    pub fn snapshot(event: UserEvent, state: &UserState, targets: u64) -> Self {
        EnrichedEvent {
            event,
            profile: state.profile.clone(),
            visit: state.visit.clone(),
            history: state.history.clone(),
            targets,
            read_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> UserEvent {
        UserEvent {
            event_id: Some(id.into()),
            user_id: "u".into(),
            event_type: "click".into(),
            ..Default::default()
        }
    }

    /// A value only its own handle reaches is changed where it is; one another handle
    /// (here or on another thread) or a `Weak` still reaches is copied first, and what
    /// the other sees does not change.
    #[test]
    fn sole_mut_changes_in_place_only_what_nothing_else_reaches() {
        let mut alone = Arc::new(vec![1]);
        let at = Arc::as_ptr(&alone);
        sole_mut(&mut alone).push(2);
        assert_eq!((Arc::as_ptr(&alone), &*alone), (at, &vec![1, 2]));

        let mut shared = Arc::new(vec![1]);
        let other = Arc::clone(&shared);
        sole_mut(&mut shared).push(2);
        assert_eq!((&*shared, &*other), (&vec![1, 2], &vec![1]));
        assert_ne!(Arc::as_ptr(&shared), Arc::as_ptr(&other));

        let mut watched = Arc::new(vec![1]);
        let weak = Arc::downgrade(&watched);
        let at = Arc::as_ptr(&watched);
        sole_mut(&mut watched).push(2);
        assert_eq!(*watched, vec![1, 2]);
        assert_ne!(Arc::as_ptr(&watched), at, "moved away from the `Weak`");
        assert!(weak.upgrade().is_none_or(|w| *w == vec![1]));

        // A handle another thread dropped: the value is this one's again, in place.
        let mut back = Arc::new(vec![1]);
        let there = Arc::clone(&back);
        std::thread::spawn(move || assert_eq!(*there, vec![1]))
            .join()
            .unwrap();
        let at = Arc::as_ptr(&back);
        sole_mut(&mut back).push(2);
        assert_eq!((Arc::as_ptr(&back), &*back), (at, &vec![1, 2]));
    }

    #[test]
    fn a_saved_user_crosses_processes_with_its_triggers() {
        let mut state = UserState::empty(3);
        state.triggers = Some(Box::new(crate::triggers::example()));
        let pending = PendingUser {
            before: Some(state.clone()),
            events: vec![(4, event("e"))],
        };
        for saved in [SavedUser::State(state), SavedUser::Pending(pending)] {
            let bytes = bincode::serialize(&saved).unwrap();
            let back: SavedUser = bincode::deserialize(&bytes).unwrap();
            assert_eq!(back, saved);
        }
    }

    /// Parameters are held by dictionary ids, which are this process's alone: between
    /// processes (bincode) they travel as their text and are read into the receiver's
    /// ids; in JSON, as the value, exactly as it arrived.
    #[test]
    fn parameters_cross_processes_as_their_text() {
        let text = r#"{"utm_source":"model-test-src","custom_params":{"v":[1.50,-2e3,null,true],"t":"a\"b"},"x":{}}"#;
        // Its values met once before, so that they are written by id both here and on
        // arrival (see `dict::intern_repeated`): the tokens compare byte for byte.
        RawJson::parse(text).unwrap();
        let mut ev = event("e");
        ev.parameters = Some(RawJson::parse(text).unwrap());
        let bytes = bincode::serialize(&ev).unwrap();
        assert!(bytes.windows(text.len()).any(|w| w == text.as_bytes()));
        let back: UserEvent = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, ev);
        let p = back.parameters.as_ref().unwrap();
        assert_eq!(p.text(), text);
        assert_eq!(p.tokens(), ev.parameters.as_ref().unwrap().tokens());

        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains(&format!(r#""parameters":{text}"#)), "{json}");
        let back: UserEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ev);

        let spaced = RawJson::parse(r#"{ "a" : [ 1 ] }"#).unwrap();
        assert_eq!(spaced.text(), r#"{ "a" : [ 1 ] }"#);
        assert_ne!(spaced, RawJson::parse(r#"{"a":[1]}"#).unwrap());
        assert_eq!(format!("{:?}", RawJson::null()), r#"RawJson("null")"#);
    }

    #[test]
    fn shared_strings_are_the_dictionarys_and_compare_as_strings() {
        let a = Str::shared("model-test-country");
        let b = Str::shared("model-test-country");
        let (Str::Shared(x), Str::Shared(y)) = (&a, &b) else {
            panic!("not shared: {a:?} {b:?}");
        };
        assert!(std::ptr::eq(*x, *y));
        assert_eq!(a, Str::from("model-test-country"));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#""model-test-country""#
        );
        let long = "x".repeat(crate::dict::MAX_LEN + 1);
        assert!(matches!(Str::shared(&long), Str::Owned(_)));
    }

    /// The bytes an interval's appended entries take are counted as they are appended,
    /// and stay right as the oldest entries are dropped: a delta takes the newest entries
    /// by them, from the history's end.
    #[test]
    fn the_appended_entries_are_found_by_their_bytes_from_the_end() {
        let mut state = UserState::empty(0);
        for i in 0..6 {
            state.append_event(&event(&format!("old-{i}")), 8);
        }
        state.changed_in = ChangeMark {
            interval: 1,
            appended: Some(0),
            appended_bytes: 0,
        };
        for i in 0..5 {
            let params = "x".repeat(i * 40);
            let mut ev = event(&format!("new-{i}"));
            ev.parameters = Some(RawJson::parse(&format!(r#"{{"p":"{params}"}}"#)).unwrap());
            state.append_event(&ev, 8);
        }
        assert_eq!(state.history.len(), 8, "three of the old ones dropped");
        let mark = state.changed_in;
        assert_eq!(mark.appended, Some(5));
        let walked = state.history.newest_encoded(5, None);
        assert_eq!(walked.len(), mark.appended_bytes as usize);
        let found = state
            .history
            .newest_encoded(5, Some(mark.appended_bytes as usize));
        assert!(std::ptr::eq(found, walked));
        // A count that does not end on the entries' bounds is not taken.
        for wrong in [0, 1, mark.appended_bytes as usize - 1, 10_000] {
            assert_eq!(
                state.history.newest_encoded(5, Some(wrong)),
                walked,
                "{wrong}"
            );
        }
    }

    #[test]
    fn appended_history_keeps_the_newest_entries() {
        let mut state = UserState::empty(0);
        for id in ["a", "b", "c"] {
            state.append_event(&event(id), 10);
        }
        let mut more = UserState::empty(0);
        more.append_event(&event("d"), 10);
        more.append_event(&event("e"), 10);
        state.append_history(&more.history, 3);
        let ids: Vec<_> = state.history.iter().map(|h| h.event_id).collect();
        assert_eq!(ids, [Some("c"), Some("d"), Some("e")]);
    }
}
