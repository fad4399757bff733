//! A user's state as checkpoint parts (v2) and RocksDB keep it: one byte string with the
//! profile, the visit, the times and the history's compact bytes (`History::encoded`).
//! Strings from small vocabularies (country, city, language, browser, referrer ...) and
//! the history's are dictionary ids of the writing process; ids of users and visits and
//! IP addresses stay inline. A part carries its writer's dictionary, and reading maps its
//! ids (`Ids`).

use std::sync::Arc;

use crate::history::History;
use crate::history::codec::{Malformed, Reader, StrRef, put_i64, put_opt_str, put_varint};
use crate::model::{Profile, Str, UserState, Visit};
use crate::prefetch;

/// The first byte of an encoded state.
const VERSION: u8 = 1;
/// The same, followed by the user's triggers (`crate::triggers`): a u32 length and their
/// bincode. A state without triggers is written as `VERSION`, readable by releases that
/// predate them.
const WITH_TRIGGERS: u8 = 2;
/// As `VERSION` and `WITH_TRIGGERS`, of a delta part's state whose history is given as
/// what it gained since the record the delta builds on: how many of that record's
/// newest entries it keeps, then the entries gained (`encode_tail_into`).
const TAIL: u8 = 3;
const TAIL_WITH_TRIGGERS: u8 = 4;
/// As `TAIL` and `TAIL_WITH_TRIGGERS` without the profile and with only the visit's
/// timestamp and actions: the rest is the record's it builds on. A tail is of a state
/// the chain holds, changed since only by events (`ChangeMark::appended`), and an event
/// changes those two of a visit and nothing of a profile; about a third of a tail's
/// bytes were the profile and visit repeated.
const TAIL_SAME: u8 = 5;
const TAIL_SAME_WITH_TRIGGERS: u8 = 6;

/// How the string ids of what is read map to this process's: the same (written here),
/// or through the writer's dictionary.
#[derive(Clone, Debug, Default)]
pub enum Ids {
    #[default]
    Here,
    Theirs(Arc<Vec<String>>),
}

impl Ids {
    /// The ids of a part written with `dict`: this process's when every string of it has
    /// the same id here (always so when this process restores first, and for parts it
    /// wrote itself), else mapped string by string.
    pub fn of_dictionary(dict: Vec<String>) -> Ids {
        let same = dict
            .iter()
            .enumerate()
            .all(|(i, s)| crate::dict::intern(s) == Some(i as u32));
        if same {
            Ids::Here
        } else {
            Ids::Theirs(Arc::new(dict))
        }
    }

    fn text(&self, id: u32) -> Option<String> {
        match self {
            Ids::Here => crate::dict::get(id).map(str::to_string),
            Ids::Theirs(dict) => dict.get(id as usize).cloned(),
        }
    }
}

/// Which dictionary ids an encoding may use for profile and visit strings.
#[derive(Clone, Copy, Debug)]
pub enum Words {
    /// Any: the bytes stay in this process (RocksDB), strings are interned as needed.
    Any,
    /// Only ids below this, the strings of the dictionary already written to the part
    /// (a string interned later, by this writer or a worker, stays inline).
    Below(usize),
}

impl Words {
    fn id(self, s: &str) -> Option<u32> {
        match self {
            Words::Any => crate::dict::intern(s),
            Words::Below(n) => crate::dict::id_of(s).filter(|&id| (id as usize) < n),
        }
    }
}

fn inline(_: &str) -> Option<u32> {
    None
}

/// Appends `state`'s encoding to `out`.
pub fn encode_into(out: &mut Vec<u8>, state: &UserState, words: Words) {
    encode_as(out, state, words, Form::Whole);
}

/// Appends `state`'s encoding to `out` with, in place of its whole history, its newest
/// `gained` entries and how many before them to keep of the record this one builds on
/// (the state's previous record in a chain of parts, whose history these entries
/// followed; `decode_record` gives the count, `follow` the history). Fewer than the
/// history's entries: those the record holds too are what a delta need not repeat.
/// The profile and the visit but for its timestamp and actions are left out: they are
/// the record's it builds on (`TAIL_SAME`).
pub fn encode_tail_into(out: &mut Vec<u8>, state: &UserState, gained: usize, words: Words) {
    debug_assert!(gained < state.history.len());
    encode_as(out, state, words, Form::TailSame(gained));
}

/// As `encode_tail_into`, with the profile and visit (`TAIL`, as earlier releases wrote
/// tails): what their checkpoints hold, which still restore.
#[cfg(test)]
pub fn encode_tail_with_profile_into(out: &mut Vec<u8>, state: &UserState, gained: usize) {
    encode_as(out, state, Words::Any, Form::Tail(gained));
}

/// What of a state a record gives.
#[derive(Clone, Copy)]
enum Form {
    Whole,
    /// The history's newest entries, this many (written by tests only, as earlier
    /// releases did).
    #[cfg_attr(not(test), allow(dead_code))]
    Tail(usize),
    /// The same, and of the profile and visit only what events change.
    TailSame(usize),
}

// The layout `decode_record` reads, and `decode_history` walks over to the history: a
// field added here goes into both.
fn encode_as(out: &mut Vec<u8>, state: &UserState, words: Words, form: Form) {
    out.push(match (form, &state.triggers) {
        (Form::Whole, None) => VERSION,
        (Form::Whole, Some(_)) => WITH_TRIGGERS,
        (Form::Tail(_), None) => TAIL,
        (Form::Tail(_), Some(_)) => TAIL_WITH_TRIGGERS,
        (Form::TailSame(_), None) => TAIL_SAME,
        (Form::TailSame(_), Some(_)) => TAIL_SAME_WITH_TRIGGERS,
    });
    let gained = match form {
        Form::Whole => {
            put_profile_visit(out, state, words);
            None
        }
        Form::Tail(n) => {
            put_profile_visit(out, state, words);
            Some(n)
        }
        Form::TailSame(n) => {
            match state.visit.as_deref() {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_i64(out, v.timestamp);
                    put_i64(out, v.actions);
                }
            }
            Some(n)
        }
    };
    put_varint(out, state.last_activity);
    put_varint(out, state.ttl_mark);
    put_varint(out, state.refetch_after.map_or(0, |t| t + 1));
    let history = match gained {
        None => state.history.encoded(),
        Some(n) => {
            put_varint(out, state.history.len().saturating_sub(n) as u64);
            let bytes = state.changed_in.appended_bytes as usize;
            state.history.newest_encoded(n, Some(bytes))
        }
    };
    put_varint(out, history.len() as u64);
    out.extend_from_slice(history);
    if let Some(t) = &state.triggers {
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        // Its encoding cannot fail: plain structs, strings and numbers.
        let _ = bincode::serialize_into(&mut *out, &**t);
        let n = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&n.to_le_bytes());
    }
}

fn put_profile_visit(out: &mut Vec<u8>, state: &UserState, words: Words) {
    let word = |s: &str| words.id(s);
    let p = &*state.profile;
    put_opt_str(out, p.user_id.as_deref(), inline);
    for s in [&p.country, &p.city, &p.language, &p.continent, &p.timezone] {
        put_opt_str(out, s.as_deref(), word);
    }
    match state.visit.as_deref() {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_opt_str(out, v.uuid.as_deref(), inline);
            put_i64(out, v.timestamp);
            for s in [
                &v.os,
                &v.browser,
                &v.device,
                &v.landing_page,
                &v.referrer_type,
                &v.referrer_url,
                &v.referrer_query,
            ] {
                put_opt_str(out, s.as_deref(), word);
            }
            put_i64(out, v.duration);
            put_i64(out, v.actions);
            out.push(u8::from(v.is_first_visit));
            put_opt_str(out, v.screen.as_deref(), word);
            put_opt_str(out, v.ip.as_deref(), inline);
        }
    }
}

/// Asks the CPU for the first lines of `user`'s id and of its state's profile, visit
/// and history, each behind a pointer of its own (cold over many users): what applying
/// an event reads first.
pub fn prefetch_parts(user: &str, state: &UserState) {
    prefetch_state(user, state, false);
}

/// As `prefetch_parts`, with every line of the profile and the visit, for `encode_into`,
/// which reads every field. Over a part's users in a hash map's order these are cold:
/// without any, the part writer waited on memory for most of its time; with the first
/// lines only (a visit spans five, a profile three), four loads of the visit's later
/// fields still took ~75% of its samples outside LZ4. (For tails, which read less of
/// them, prefetching only the visit's two fields and the history's end measured slower:
/// 379-408 ns of the writer a record against 289-292.)
pub fn prefetch_record(user: &str, state: &UserState) {
    prefetch_state(user, state, true);
}

fn prefetch_state(user: &str, state: &UserState, whole: bool) {
    fn ask<T>(p: *const T, whole: bool) {
        match whole {
            true => prefetch::lines(p),
            false => prefetch::line(p),
        }
    }
    prefetch::line(user.as_ptr());
    ask(Arc::as_ptr(&state.profile), whole);
    if let Some(v) = &state.visit {
        ask(Arc::as_ptr(v), whole);
        // What every event changes (`Applier::apply`), some lines into the visit.
        prefetch::line(&v.timestamp);
        prefetch::line(&v.actions);
    }
    prefetch::line(Arc::as_ptr(&state.history));
}

/// Then what those parts point to (call it a few records after `prefetch_parts`, once
/// they are in): the strings of the user's own and the history's bytes: its first, or
/// for a `tail`, the entries it gained, at its end (`ChangeMark::appended_bytes`).
pub fn prefetch_contents(state: &UserState, tail: bool) {
    let own = |s: &Option<Str>| {
        if let Some(Str::Owned(s)) = s {
            prefetch::line(s.as_ptr());
        }
    };
    own(&state.profile.user_id);
    if let Some(v) = &state.visit {
        own(&v.uuid);
        own(&v.ip);
    }
    let history = state.history.encoded();
    let from = match tail {
        true => history
            .len()
            .saturating_sub(state.changed_in.appended_bytes as usize),
        false => 0,
    };
    for line in history[from..].chunks(64).take(4) {
        prefetch::line(line.as_ptr());
    }
}

/// Asks the CPU for the line an event's entry is appended to: the end of `state`'s
/// history (call it a few events after `prefetch_parts`, once the history's own struct
/// is in).
pub fn prefetch_history_end(state: &UserState) {
    if let Some(last) = state.history.encoded().last() {
        prefetch::line(last);
    }
}

pub fn encode(state: &UserState) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + state.history.encoded_len());
    encode_into(&mut out, state, Words::Any);
    out
}

/// A string of its own.
fn text(r: &mut Reader<'_>, ids: &Ids) -> Result<Option<Str>, Malformed> {
    Ok(match r.opt_str_ref() {
        None => None,
        Some(StrRef::Inline(s)) => Some(s.into()),
        Some(StrRef::Id(id)) => Some(ids.text(id).ok_or(Malformed(r.pos))?.into()),
    })
}

/// A string of a small vocabulary, shared (`Str::shared`).
fn word(r: &mut Reader<'_>, ids: &Ids) -> Result<Option<Str>, Malformed> {
    Ok(match r.opt_str_ref() {
        None => None,
        Some(StrRef::Inline(s)) => Some(Str::shared(s)),
        Some(StrRef::Id(id)) => match (ids, crate::dict::get(id)) {
            (Ids::Here, Some(s)) => Some(Str::Shared(s)),
            _ => Some(Str::shared(&ids.text(id).ok_or(Malformed(r.pos))?)),
        },
    })
}

fn visit(r: &mut Reader<'_>, ids: &Ids) -> Result<Visit, Malformed> {
    Ok(Visit {
        uuid: text(r, ids)?,
        timestamp: r.i64(),
        os: word(r, ids)?,
        browser: word(r, ids)?,
        device: word(r, ids)?,
        landing_page: word(r, ids)?,
        referrer_type: word(r, ids)?,
        referrer_url: word(r, ids)?,
        referrer_query: word(r, ids)?,
        duration: r.i64(),
        actions: r.i64(),
        is_first_visit: r.byte() != 0,
        screen: word(r, ids)?,
        ip: text(r, ids)?,
    })
}

/// A state from its encoding, its string ids mapped through `ids`.
pub fn decode_with(bytes: &[u8], ids: &Ids) -> Result<UserState, Malformed> {
    match decode_record(bytes, ids)? {
        (state, None) => Ok(state),
        (_, Some(_)) => Err(Malformed(0)),
    }
}

/// What a tail record (`encode_tail_into`) needs of the record it builds on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Follows {
    /// How many of that record's newest history entries go before the tail's.
    pub keep: usize,
    /// Whether the profile and the visit (but for its timestamp and actions) are that
    /// record's (`TAIL_SAME`): until `inherit` gives them, the state's are stand-ins.
    pub inherits: bool,
}

/// What a tail that inherits takes from the record it builds on (`inherit`).
#[derive(Clone, Debug)]
pub struct Base {
    pub profile: Arc<Profile>,
    pub visit: Option<Arc<Visit>>,
}

impl Base {
    pub fn of(state: &UserState) -> Base {
        Base {
            profile: state.profile.clone(),
            visit: state.visit.clone(),
        }
    }
}

/// `tail`'s profile and visit from `base`, the visit's timestamp and actions kept
/// (a tail that `Follows::inherits`); `None` if one has a visit and the other not.
pub fn inherit(tail: &mut UserState, base: Base) -> Option<()> {
    tail.visit = match (tail.visit.take(), base.visit) {
        (None, None) => None,
        (Some(own), Some(mut theirs)) => {
            // The base's own, read for this tail: changed in place, not copied.
            let v = Arc::make_mut(&mut theirs);
            v.timestamp = own.timestamp;
            v.actions = own.actions;
            Some(theirs)
        }
        _ => return None,
    };
    tail.profile = base.profile;
    Some(())
}

fn version_of(r: &mut Reader<'_>) -> Result<u8, Malformed> {
    let version = r.byte();
    match version {
        VERSION
        | WITH_TRIGGERS
        | TAIL
        | TAIL_WITH_TRIGGERS
        | TAIL_SAME
        | TAIL_SAME_WITH_TRIGGERS => Ok(version),
        _ => Err(Malformed(0)),
    }
}

fn is_tail(version: u8) -> bool {
    version >= TAIL
}

fn inherits(version: u8) -> bool {
    matches!(version, TAIL_SAME | TAIL_SAME_WITH_TRIGGERS)
}

fn has_triggers(version: u8) -> bool {
    matches!(
        version,
        WITH_TRIGGERS | TAIL_WITH_TRIGGERS | TAIL_SAME_WITH_TRIGGERS
    )
}

fn profile_visit(r: &mut Reader<'_>, ids: &Ids) -> Result<(Profile, Option<Visit>), Malformed> {
    let profile = Profile {
        user_id: text(r, ids)?,
        country: word(r, ids)?,
        city: word(r, ids)?,
        language: word(r, ids)?,
        continent: word(r, ids)?,
        timezone: word(r, ids)?,
    };
    let visit = match r.byte() {
        0 => None,
        _ => Some(visit(r, ids)?),
    };
    Ok((profile, visit))
}

/// A tail's stand-in visit: the timestamp and actions it gives (`TAIL_SAME`).
fn visit_changes(r: &mut Reader<'_>) -> Option<Visit> {
    match r.byte() {
        0 => None,
        _ => Some(Visit {
            timestamp: r.i64(),
            actions: r.i64(),
            ..Default::default()
        }),
    }
}

/// A state from its encoding, or from what `encode_tail_into` wrote: then its history
/// holds only the entries gained, and `Follows` says what it takes of the record it
/// builds on (`follow`, `inherit`).
pub fn decode_record(bytes: &[u8], ids: &Ids) -> Result<(UserState, Option<Follows>), Malformed> {
    let mut r = Reader::new(bytes);
    let version = version_of(&mut r)?;
    let (profile, visit) = if inherits(version) {
        (Profile::default(), visit_changes(&mut r))
    } else {
        profile_visit(&mut r, ids)?
    };
    let last_activity = r.varint();
    let ttl_mark = r.varint();
    let refetch_after = r.varint().checked_sub(1);
    let follows = is_tail(version).then(|| Follows {
        keep: r.varint() as usize,
        inherits: inherits(version),
    });
    let n = r.varint() as usize;
    let encoded = r.bytes(n);
    let triggers = if has_triggers(version) {
        let len = r.bytes(4);
        let n = len.try_into().map_or(0, u32::from_le_bytes) as usize;
        let at = r.pos;
        let raw = r.bytes(n);
        match bincode::deserialize(raw) {
            Ok(t) => Some(Box::new(t)),
            Err(_) => return Err(Malformed(at)),
        }
    } else {
        None
    };
    if let Some(at) = r.bad {
        return Err(Malformed(at));
    }
    if !r.at_end() {
        return Err(Malformed(r.pos));
    }
    let state = UserState {
        profile: Arc::new(profile),
        visit: visit.map(Arc::new),
        history: Arc::new(history_of(encoded, ids)?),
        last_activity,
        ttl_mark,
        refetch_after,
        triggers,
        changed_in: Default::default(),
    };
    Ok((state, follows))
}

fn history_of(encoded: &[u8], ids: &Ids) -> Result<History, Malformed> {
    match ids {
        Ids::Here => History::from_encoded(encoded, None),
        Ids::Theirs(_) => History::from_encoded(encoded, Some(&|id| ids.text(id))),
    }
}

/// What a record older than a tail of the same user gives it: the history and, if
/// `base` (a tail that inherits) and the record has them, the profile and visit;
/// with the record's count if it is a tail too (`decode_record`). The other fields are
/// the tail's own.
pub fn decode_history(
    bytes: &[u8],
    ids: &Ids,
    base: bool,
) -> Result<(History, Option<usize>, Option<Base>), Malformed> {
    let mut r = Reader::new(bytes);
    let version = version_of(&mut r)?;
    let mut given = None;
    if inherits(version) {
        visit_changes(&mut r);
    } else if base {
        let (profile, visit) = profile_visit(&mut r, ids)?;
        given = Some(Base {
            profile: Arc::new(profile),
            visit: visit.map(Arc::new),
        });
    } else {
        // The profile's six strings, then the visit's fields, as `encode_as` writes them.
        for _ in 0..6 {
            r.opt_str_ref();
        }
        if r.byte() != 0 {
            r.opt_str_ref();
            r.i64();
            for _ in 0..7 {
                r.opt_str_ref();
            }
            r.i64();
            r.i64();
            r.byte();
            r.opt_str_ref();
            r.opt_str_ref();
        }
    }
    for _ in 0..3 {
        r.varint();
    }
    let keep = is_tail(version).then(|| r.varint() as usize);
    let n = r.varint() as usize;
    let encoded = r.bytes(n);
    if let Some(at) = r.bad {
        return Err(Malformed(at));
    }
    Ok((history_of(encoded, ids)?, keep, given))
}

/// What a user's tail records gained, newest first, while the chain is read back to
/// the record they build on: joined once there (`Gained::joined`), not once a tail,
/// which copied the newer tails' entries again for each older one.
#[derive(Debug, Default)]
pub struct Gained(Vec<History>);

impl Gained {
    /// The entries the newest tail gained.
    pub fn of(newest: History) -> Gained {
        Gained(vec![newest])
    }

    /// The history: every tail's entries, oldest first.
    pub fn joined(mut self) -> History {
        let total: usize = self.0.iter().map(History::encoded_len).sum();
        let mut history = self.0.pop().unwrap_or_default();
        history.reserve(total - history.encoded_len());
        for newer in self.0.iter().rev() {
            history.extend(newer);
        }
        history
    }
}

/// The history a tail record stands for is the newest `keeps` entries of `older`'s
/// (the user's history in the record before it), then the entries it gained: `older`'s
/// go into `gained` (what it and the tails after it gained). `older` from a tail too
/// (`older_keeps`: its count), they stand for a tail on the record that one builds on:
/// its count is given; `None` if `older` does not hold what is kept.
pub fn follow(
    mut older: History,
    older_keeps: Option<usize>,
    gained: &mut Gained,
    keeps: usize,
) -> Option<usize> {
    let still = match older_keeps {
        None if older.len() < keeps => return None,
        None => 0,
        Some(_) => keeps.saturating_sub(older.len()),
    };
    if older_keeps.is_some_and(|k| still > k) {
        return None;
    }
    older.keep_newest(keeps);
    gained.0.push(older);
    Some(still)
}

/// A state encoded by this process (RocksDB's values).
pub fn decode(bytes: &[u8]) -> Result<UserState, Malformed> {
    decode_with(bytes, &Ids::Here)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HistoryEntry, ProfileData, RawJson};

    fn state() -> UserState {
        let mut s = UserState::from_profile(
            ProfileData {
                profile: Profile {
                    country: Some("US".into()),
                    ..Default::default()
                },
                visit: Some(Visit {
                    uuid: Some("0123456789abcdef".into()),
                    timestamp: -4,
                    os: Some("Linux".into()),
                    actions: 3,
                    is_first_visit: true,
                    ip: Some("192.0.2.1".into()),
                    ..Default::default()
                }),
                history: vec![HistoryEntry {
                    event_id: Some("h1".into()),
                    event_name: Some("codec_test_name".into()),
                    event_type: Some("page_view".into()),
                    timestamp: 5,
                    parameters: Some(RawJson::parse(r#"{"utm_source":"codec_test"}"#).unwrap()),
                }]
                .into(),
            },
            10,
        );
        s.refetch_after = Some(20);
        s
    }

    #[test]
    fn a_state_comes_back_here_and_in_another_process() {
        let s = state();
        let bytes = encode(&s);
        assert_eq!(decode(&bytes).unwrap(), s);
        let theirs: Vec<String> = crate::dict::prefix(crate::dict::len())
            .map(str::to_string)
            .collect();
        let mapped = Ids::Theirs(Arc::new(theirs));
        assert_eq!(decode_with(&bytes, &mapped).unwrap(), s);
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        assert!(decode_with(&bytes, &Ids::Theirs(Arc::new(Vec::new()))).is_err());
    }

    #[test]
    fn a_state_with_triggers_comes_back_with_them_and_one_without_keeps_the_old_format() {
        let plain = state();
        assert_eq!(
            encode(&plain)[0],
            VERSION,
            "readable by a release before triggers"
        );
        let mut s = state();
        s.triggers = Some(Box::new(crate::triggers::example()));
        let bytes = encode(&s);
        assert_eq!(bytes[0], WITH_TRIGGERS);
        assert_eq!(decode(&bytes).unwrap(), s);
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    fn entry(id: &str) -> HistoryEntry {
        HistoryEntry {
            event_id: Some(id.into()),
            event_name: None,
            event_type: Some("page_view".into()),
            timestamp: 7,
            parameters: None,
        }
    }

    fn ids(s: &UserState) -> Vec<String> {
        ids_of(&s.history)
    }

    fn ids_of(h: &History) -> Vec<String> {
        h.iter()
            .map(|e| e.event_id.unwrap_or("").to_string())
            .collect()
    }

    fn with_history(ids: &[&str]) -> UserState {
        let mut s = state();
        s.history = Arc::new(ids.iter().map(|i| entry(i)).collect());
        s
    }

    /// A delta's record of what a history gained gives, on the record it builds on,
    /// the state itself: with the base's entries the history dropped since left out,
    /// and the profile and visit (but for the visit's timestamp and actions) the
    /// base's. Tails as earlier releases wrote them, with their profile, still read.
    #[test]
    fn a_tail_followed_from_its_base_is_the_state() {
        let base = with_history(&["a", "b", "c"]);
        let mut now = with_history(&["b", "c", "d", "e"]);
        if let Some(v) = now.visit.as_mut() {
            let v = Arc::make_mut(v);
            v.actions = 9;
            v.timestamp = 77;
        }
        now.triggers = Some(Box::new(crate::triggers::example()));
        let mut bytes = Vec::new();
        encode_tail_into(&mut bytes, &now, 2, Words::Any);
        let mut old_form = Vec::new();
        encode_tail_with_profile_into(&mut old_form, &now, 2);
        assert_eq!(
            (bytes[0], old_form[0]),
            (TAIL_SAME_WITH_TRIGGERS, TAIL_WITH_TRIGGERS)
        );
        assert!(
            bytes.len() + 40 < old_form.len(),
            "profile and visit left out"
        );
        for (bytes, inherits) in [(&bytes, true), (&old_form, false)] {
            let (mut tail, follows) = decode_record(bytes, &Ids::Here).unwrap();
            let follows = follows.unwrap();
            assert_eq!(
                (ids(&tail), follows.keep, follows.inherits),
                (vec!["d".into(), "e".into()], 2, inherits)
            );
            let (history, keep, none) = decode_history(bytes, &Ids::Here, true).unwrap();
            assert_eq!(
                (ids_of(&history), keep, none.is_some()),
                (vec!["d".into(), "e".into()], Some(2), !inherits)
            );
            let (base_history, none, given) =
                decode_history(&encode(&base), &Ids::Here, inherits).unwrap();
            assert_eq!((none, given.is_some()), (None, inherits));
            let mut gained = Gained::of((*tail.history).clone());
            assert_eq!(follow(base_history, None, &mut gained, 2), Some(0));
            tail.history = Arc::new(gained.joined());
            if let Some(given) = given {
                assert_ne!(tail, now, "a stand-in profile and visit");
                inherit(&mut tail, given).unwrap();
            }
            assert_eq!(tail, now);
            assert!(decode_with(bytes, &Ids::Here).is_err(), "not a state alone");
            for cut in 1..bytes.len() {
                assert!(
                    decode_record(&bytes[..cut], &Ids::Here).is_err(),
                    "cut at {cut}"
                );
            }
        }
        let short = with_history(&["c"]).history;
        let (tail, _) = decode_record(&bytes, &Ids::Here).unwrap();
        assert!(
            follow(
                (*short).clone(),
                None,
                &mut Gained::of((*tail.history).clone()),
                2
            )
            .is_none(),
            "base too short"
        );
        let mut no_visit = tail.clone();
        let without = Base {
            profile: base.profile.clone(),
            visit: None,
        };
        assert!(
            inherit(&mut no_visit, without).is_none(),
            "a visit from nowhere"
        );
    }

    /// Two tails of a user, the newer keeping some of the older's entries or reaching
    /// into the base, follow each other into one on the older one's base.
    #[test]
    fn tails_follow_each_other_into_one_on_the_older_ones_base() {
        let base = with_history(&["a", "b", "c"]).history;
        // Older: b c | d (keeps 2 of the base); newer: keeps n of "b c d", adds e f.
        let older = with_history(&["d"]).history;
        let newer = with_history(&["e", "f"]).history;
        for (newer_keeps, want) in [(0, "e f"), (1, "d e f"), (2, "c d e f"), (3, "b c d e f")] {
            let mut gained = Gained::of((*newer).clone());
            let keep = follow((*older).clone(), Some(2), &mut gained, newer_keeps).unwrap();
            assert_eq!(follow((*base).clone(), None, &mut gained, keep), Some(0));
            let merged = gained.joined();
            assert_eq!(ids_of(&merged).join(" "), want, "newer keeps {newer_keeps}");
        }
        let mut gained = Gained::of((*newer).clone());
        assert!(follow((*older).clone(), Some(2), &mut gained, 4).is_none());
    }

    #[test]
    fn a_dictionary_written_here_maps_to_the_same_ids() {
        let _ = encode(&state());
        let ours: Vec<String> = crate::dict::prefix(crate::dict::len())
            .map(str::to_string)
            .collect();
        assert!(matches!(Ids::of_dictionary(ours), Ids::Here));
        let shuffled = vec!["codec_test".to_string(), "page_view".to_string()];
        assert!(matches!(Ids::of_dictionary(shuffled), Ids::Theirs(_)));
    }
}
