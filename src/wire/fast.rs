//! The usual event read without serde's visitor: a scan of the top-level object that
//! fills the same `WireEvent` serde would, for messages in the plain form (known keys
//! once each, strings without escapes or control characters, integers, booleans,
//! `null`; `parameters` and unknown members any JSON without escapes, nested at most
//! `MAX_DEPTH`), and gives up (`None`) on anything else, which serde then reads as
//! before: every error, coercion and message stays serde's. It checks the values it
//! keeps as text (`parameters`) as strictly as serde's grammar: serde's own check of
//! them (`ignore_value`, for a `RawValue`) was a fifth of an event's instructions.

use std::borrow::Cow;

use super::WireEvent;
use super::keys::{KeyPlaces, Pattern};
use super::shape::skip_ws;
use crate::history::codec::{Literal, Tokens};

/// Deeper `parameters` are left to serde, whose recursion limit (128) counts from the
/// event object, not from the value.
const MAX_DEPTH: usize = 64;

/// `parameters` other than `null`, as the scan read them (an object's tokens are in the
/// buffer the scan was given).
#[derive(Clone, Copy, Debug)]
pub(super) struct Parameters<'a> {
    /// One JSON value, checked.
    pub text: &'a str,
    /// What `shape::plain` says of it (the typed check would accept it as it is),
    /// found on the way.
    pub plain: bool,
}

/// The members `WireEvent` reads, each with `"key":` as it is written without spaces,
/// in the order the original's producers write them (its model's, as the reference
/// events have them). The scan expects each member to be the one after the member it
/// read last and compares the next bytes with its `"key":`: scanning a key and matching
/// it against every name costs ~150 instructions a member, a sixth of an event's.
/// Another key, or spaces, go that long way.
static MEMBERS: [Key; 18] = [
    Key::new(Member::EventId, b"\"event_id\":"),
    Key::new(Member::UserId, b"\"user_id\":"),
    Key::new(Member::Domain, b"\"domain\":"),
    Key::new(Member::IsFirstInVisit, b"\"is_first_in_visit\":"),
    Key::new(Member::IsLastInVisit, b"\"is_last_in_visit\":"),
    Key::new(Member::IsFirstEvent, b"\"is_first_event\":"),
    Key::new(Member::IsCurrent, b"\"is_current\":"),
    Key::new(Member::EventName, b"\"event_name\":"),
    Key::new(Member::EventDisplayname, b"\"event_displayname\":"),
    Key::new(Member::Integration, b"\"integration\":"),
    Key::new(Member::App, b"\"app\":"),
    Key::new(Member::Platform, b"\"platform\":"),
    Key::new(Member::IsHttps, b"\"is_https\":"),
    Key::new(Member::EventType, b"\"event_type\":"),
    Key::new(Member::Duration, b"\"duration\":"),
    Key::new(Member::Timestamp, b"\"timestamp\":"),
    Key::new(Member::Triggerable, b"\"triggerable\":"),
    Key::new(Member::Parameters, b"\"parameters\":"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Member {
    EventId,
    UserId,
    Domain,
    IsFirstInVisit,
    IsLastInVisit,
    IsFirstEvent,
    IsCurrent,
    EventName,
    EventDisplayname,
    Integration,
    App,
    Platform,
    IsHttps,
    EventType,
    Duration,
    Timestamp,
    Triggerable,
    Parameters,
}

/// A member's `"key":`, and the same as words to compare the input with (three loads
/// instead of a call to `memcmp`).
struct Key {
    member: Member,
    text: &'static [u8],
    pattern: Pattern,
}

impl Key {
    const fn new(member: Member, text: &'static [u8]) -> Key {
        let Some(pattern) = Pattern::new(text) else {
            panic!("a member's key is longer than a pattern holds");
        };
        Key {
            member,
            text,
            pattern,
        }
    }

    /// The key as written between its quotes.
    fn name(&self) -> &'static [u8] {
        &self.text[1..self.text.len() - 2]
    }
}

/// The place in `MEMBERS` of the member named `key` (as written between its quotes).
fn member_named(key: &[u8]) -> Option<usize> {
    MEMBERS.iter().position(|k| k.name() == key)
}

/// The event in `s` (trimmed, starting with `{`) as serde would read it, or `None`:
/// let serde decide. An object in `parameters` leaves its tokens in `tokens`.
pub(super) fn wire_event<'a>(s: &'a str, tokens: &mut Vec<u8>) -> Option<WireEvent<'a>> {
    let b = s.as_bytes();
    if b.first() != Some(&b'{') {
        return None;
    }
    let mut i = skip_ws(b, 1);
    // An empty object is left to serde, which names the missing fields.
    if b.get(i) == Some(&b'}') {
        return None;
    }
    let mut w = WireEvent::default();
    let mut seen = 0u32;
    let mut next = 0;
    loop {
        let (place, at) = match MEMBERS.get(next) {
            Some(key) if key.pattern.at(b, i) => (Some(next), skip_ws(b, i + key.text.len())),
            _ => {
                let key_end = plain_str(b, i)?;
                let colon = skip_ws(b, key_end);
                if b.get(colon) != Some(&b':') {
                    return None;
                }
                (member_named(&b[i + 1..key_end - 1]), skip_ws(b, colon + 1))
            }
        };
        let end = match place {
            Some(place) => {
                // serde refuses a member named twice.
                if seen & (1 << place) != 0 {
                    return None;
                }
                seen |= 1 << place;
                next = place + 1;
                member(s, at, MEMBERS[place].member, &mut w, tokens)?
            }
            // serde skips other members, checking that they are JSON.
            None => value(b, at, 0)?,
        };
        i = skip_ws(b, end);
        match *b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return (skip_ws(b, i + 1) == b.len()).then_some(w),
            _ => return None,
        }
    }
}

/// Reads the value at `at` of member `m` into `w`: where the value ends.
fn member<'a>(
    s: &'a str,
    at: usize,
    m: Member,
    w: &mut WireEvent<'a>,
    tokens: &mut Vec<u8>,
) -> Option<usize> {
    let b = s.as_bytes();
    let text = |slot: &mut Option<Cow<'a, str>>| -> Option<usize> {
        let (v, end) = string(s, at)?;
        *slot = v;
        Some(end)
    };
    let flag = |slot: &mut bool| -> Option<usize> {
        let (v, end) = boolean(b, at)?;
        *slot = v;
        Some(end)
    };
    let number = |slot: &mut i64| -> Option<usize> {
        let (v, end) = long(b, at)?;
        *slot = v;
        Some(end)
    };
    match m {
        Member::EventId => text(&mut w.event_id),
        Member::UserId => text(&mut w.user_id),
        Member::Domain => text(&mut w.domain),
        Member::IsFirstInVisit => flag(&mut w.is_first_in_visit),
        Member::IsLastInVisit => flag(&mut w.is_last_in_visit),
        Member::IsFirstEvent => flag(&mut w.is_first_event),
        Member::IsCurrent => flag(&mut w.is_current),
        Member::EventName => text(&mut w.event_name),
        Member::EventDisplayname => text(&mut w.event_displayname),
        Member::Integration => text(&mut w.integration),
        Member::App => text(&mut w.app),
        Member::Platform => text(&mut w.platform),
        Member::IsHttps => flag(&mut w.is_https),
        Member::EventType => text(&mut w.event_type),
        Member::Duration => number(&mut w.duration),
        Member::Timestamp => number(&mut w.timestamp),
        Member::Triggerable => flag(&mut w.triggerable),
        Member::Parameters => {
            let (end, plain) = parameters(s, at, tokens)?;
            w.checked_parameters = Some(Parameters {
                text: &s[at..end],
                plain,
            })
            .filter(|p| p.text != "null");
            Some(end)
        }
    }
}

/// Past the closing quote of the string at `at`, if it has no escape and no control
/// character (serde unescapes the one and refuses the other).
fn plain_str(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let end = crate::json_scan::string_stop(b, at + 1);
    (b.get(end) == Some(&b'"')).then_some(end + 1)
}

/// A string member: `null` or a plain string, borrowed.
fn string(s: &str, at: usize) -> Option<(Option<Cow<'_, str>>, usize)> {
    if s.as_bytes()[at..].starts_with(b"null") {
        return Some((None, at + 4));
    }
    let end = plain_str(s.as_bytes(), at)?;
    Some((Some(Cow::Borrowed(&s[at + 1..end - 1])), end))
}

/// A boolean member: `true`, `false`, or `null` (false, as Java's primitive).
fn boolean(b: &[u8], at: usize) -> Option<(bool, usize)> {
    let rest = &b[at..];
    if rest.starts_with(b"true") {
        Some((true, at + 4))
    } else if rest.starts_with(b"false") {
        Some((false, at + 5))
    } else if rest.starts_with(b"null") {
        Some((false, at + 4))
    } else {
        None
    }
}

/// An integer member in `i64` (or `null`, 0), written as JSON writes integers: no
/// fraction or exponent (serde reads those as floats, a type serde must judge).
fn long(b: &[u8], at: usize) -> Option<(i64, usize)> {
    if b[at..].starts_with(b"null") {
        return Some((0, at + 4));
    }
    let negative = b.get(at) == Some(&b'-');
    let first = at + usize::from(negative);
    // The digits and their value in one pass, unchecked: 18 digits fit.
    let (mut end, mut v) = (first, 0u64);
    while let Some(d) = b.get(end).map(|c| c.wrapping_sub(b'0')).filter(|d| *d < 10) {
        v = v.wrapping_mul(10).wrapping_add(u64::from(d));
        end += 1;
    }
    let digits = end - first;
    // A leading zero before another digit is not JSON, serde reads `-0` as a float
    // (-0.0), and a fraction or exponent makes a float too.
    if digits == 0
        || (b[first] == b'0' && (digits > 1 || negative))
        || matches!(b.get(end), Some(b'.' | b'e' | b'E'))
    {
        return None;
    }
    if digits <= 18 {
        let v = v as i64;
        return Some((if negative { -v } else { v }, end));
    }
    let mut v: i64 = 0;
    for &c in &b[first..end] {
        let d = i64::from(c - b'0');
        v = v.checked_mul(10)?;
        v = if negative {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
    }
    Some((v, end))
}

/// Past the JSON value at `at`, if it is one in the plain form (strings without escapes
/// or control characters, nested at most `MAX_DEPTH - depth`): JSON's grammar, as serde
/// checks it, for that subset.
pub(crate) fn value(b: &[u8], at: usize, depth: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => plain_str(b, at),
        b'{' | b'[' if depth >= MAX_DEPTH => None,
        b'{' => object(b, at, |_, v| value(b, v, depth + 1)),
        b'[' => {
            let mut i = skip_ws(b, at + 1);
            if b.get(i) == Some(&b']') {
                return Some(i + 1);
            }
            loop {
                i = skip_ws(b, value(b, i, depth + 1)?);
                match *b.get(i)? {
                    b',' => i = skip_ws(b, i + 1),
                    b']' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b't' => literal(b, at, b"true"),
        b'f' => literal(b, at, b"false"),
        b'n' => literal(b, at, b"null"),
        _ => number(b, at),
    }
}

/// `object` over the text `s`, its keys as `&str`; `None` unless an object starts at
/// `at`.
pub(crate) fn members<'a>(
    s: &'a str,
    at: usize,
    mut member: impl FnMut(&'a str, usize) -> Option<usize>,
) -> Option<usize> {
    let b = s.as_bytes();
    if b.get(at) != Some(&b'{') {
        return None;
    }
    object(b, at, |key, v| {
        // The key's bytes are a slice of `s` between two quotes.
        let start = key.as_ptr() as usize - b.as_ptr() as usize;
        member(s.get(start..start + key.len())?, v)
    })
}

/// Past the object at `at` (keys plain strings), telling `member` each key and where
/// its value starts; `member` checks the value (`value`, one level deeper) and says
/// where it ends.
pub(crate) fn object<'a>(
    b: &'a [u8],
    at: usize,
    mut member: impl FnMut(&'a [u8], usize) -> Option<usize>,
) -> Option<usize> {
    let mut i = skip_ws(b, at + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        let key_end = plain_str(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, member(key, skip_ws(b, i + 1))?);
        match *b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// Past the `parameters` value at `at`, checked as `value` checks it, and whether
/// `shape::plain` would say yes to it: an object whose `utm_*` members are strings or
/// `null` and whose `custom_params` is an object or `null`, none of them twice (the
/// scan reads no escapes, which `plain` refuses in those). An object's tokens (the
/// compact form `history::codec::put_json` writes of the same text) are left in
/// `tokens`: written as the text is checked, where they were a second scan of it.
pub(crate) fn parameters(s: &str, at: usize, tokens: &mut Vec<u8>) -> Option<(usize, bool)> {
    let b = s.as_bytes();
    if b.get(at) != Some(&b'{') {
        return Some((value(b, at, 0)?, false));
    }
    tokens.clear();
    let mut plain = Plain::default();
    let compact = KeyPlaces::with(|places| {
        let mut out = Writer {
            tokens: Tokens(tokens),
            places,
        };
        compact_object(s, at, 0, &mut out, |key, v| plain.member(b, key, v))
    });
    if let Some(end) = compact {
        return Some((end, plain.yes));
    }
    // Whitespace between tokens, nesting past what tokens hold, or not the plain form
    // at all: checked again without tokens (rare), and kept whole.
    let mut plain = Plain::default();
    let end = object(b, at, |key, v| {
        plain.member(b, key, v);
        value(b, v, 1)
    })?;
    tokens.clear();
    Tokens(tokens).whole(s.get(at..end)?);
    Some((end, plain.yes))
}

/// What `parameters` finds of `shape::plain` on its way through the members.
struct Plain {
    seen: u8,
    yes: bool,
}

impl Default for Plain {
    fn default() -> Self {
        Plain { seen: 0, yes: true }
    }
}

impl Plain {
    fn member(&mut self, b: &[u8], key: &[u8], value_at: usize) {
        if let Some((bit, start)) = super::shape::checked(key) {
            let first = b.get(value_at).copied();
            self.yes &=
                self.seen & (1 << bit) == 0 && (first == Some(start) || first == Some(b'n'));
            self.seen |= 1 << bit;
        }
    }
}

/// Past the value at `at`, checked as `value` checks it, its tokens written to `out`;
/// `None` also for text `value` accepts that tokens cannot hold as it is (whitespace
/// between tokens, containers nested `Tokens::MAX_DEPTH` deep).
/// Where `compact_value` writes: the tokens, and the keys last seen by their place.
struct Writer<'a> {
    tokens: Tokens<'a>,
    places: &'a KeyPlaces,
}

fn compact_value(s: &str, at: usize, depth: usize, out: &mut Writer<'_>) -> Option<usize> {
    let b = s.as_bytes();
    match *b.get(at)? {
        b'"' => {
            let end = plain_str(b, at)?;
            out.tokens.string(s.get(at + 1..end - 1)?);
            Some(end)
        }
        b'{' | b'[' if depth >= Tokens::MAX_DEPTH => None,
        b'{' => compact_object(s, at, depth, out, |_, _| ()),
        b'[' => {
            out.tokens.array();
            let mut i = at + 1;
            if b.get(i) != Some(&b']') {
                loop {
                    i = compact_value(s, i, depth + 1, out)?;
                    match *b.get(i)? {
                        b',' => i += 1,
                        b']' => break,
                        _ => return None,
                    }
                }
            }
            out.tokens.array_end();
            Some(i + 1)
        }
        b't' => compact_literal(b, at, b"true", Literal::True, &mut out.tokens),
        b'f' => compact_literal(b, at, b"false", Literal::False, &mut out.tokens),
        b'n' => compact_literal(b, at, b"null", Literal::Null, &mut out.tokens),
        _ => {
            let end = number(b, at)?;
            out.tokens.number(s.get(at..end)?);
            Some(end)
        }
    }
}

/// `compact_value` of the object at `at`, telling `member` each key and where its
/// value starts.
fn compact_object(
    s: &str,
    at: usize,
    depth: usize,
    out: &mut Writer<'_>,
    mut member: impl FnMut(&[u8], usize),
) -> Option<usize> {
    let b = s.as_bytes();
    out.tokens.object();
    let mut i = at + 1;
    if b.get(i) != Some(&b'}') {
        for place in 0.. {
            // The key this place had in the last such object, or the long way.
            let slot = KeyPlaces::slot(depth, place);
            let (key, value_at) = match slot.and_then(|k| out.places.hit(k, b, i)) {
                Some((id, len)) => {
                    out.tokens.key_id(id);
                    (&b[i + 1..i + len - 2], i + len)
                }
                None => {
                    let key_end = plain_str(b, i)?;
                    let key = s.get(i + 1..key_end - 1)?;
                    if b.get(key_end) != Some(&b':') {
                        return None;
                    }
                    if let (Some(slot), Some(id)) = (slot, out.tokens.key(key)) {
                        out.places.remember(slot, &b[i..key_end + 1], id);
                    }
                    (key.as_bytes(), key_end + 1)
                }
            };
            member(key, value_at);
            i = compact_value(s, value_at, depth + 1, out)?;
            match *b.get(i)? {
                b',' => i += 1,
                b'}' => break,
                _ => return None,
            }
        }
    }
    out.tokens.object_end();
    Some(i + 1)
}

fn compact_literal(
    b: &[u8],
    at: usize,
    word: &[u8],
    tag: Literal,
    out: &mut Tokens<'_>,
) -> Option<usize> {
    let end = literal(b, at, word)?;
    out.literal(tag);
    Some(end)
}

fn literal(b: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    b[at..].starts_with(word).then_some(at + word.len())
}

/// Past the number at `at`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number(b: &[u8], at: usize) -> Option<usize> {
    let digits = |i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = at + usize::from(b[at] == b'-');
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i += digits(i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::history::codec::tests::settled_tokens_of;
    use crate::history::tests::Rng;

    /// `w` with its parameters' text wherever the reader put it, for comparison.
    fn view(w: &WireEvent<'_>) -> String {
        if let Some(p) = w.checked_parameters {
            // Where the scan says plain, the shape check does too.
            assert!(!p.plain || super::super::shape::plain(p.text), "{}", p.text);
        }
        let params = w
            .checked_parameters
            .map(|p| p.text)
            .or(w.parameters.map(|r| r.get()));
        let others = WireEvent {
            parameters: None,
            checked_parameters: None,
            ..w.clone()
        };
        format!("{others:?} {params:?}")
    }

    /// What serde reads of `s`, for comparison (`None`: it refuses it).
    fn by_serde(s: &str) -> Option<String> {
        super::super::serde_event(s, true).ok().map(|w| view(&w))
    }

    const SEEDS: [&str; 4] = [
        super::super::tests::FULL,
        r#"{"user_id":"u1","event_type":"click"}"#,
        "{ \"event_id\" : null , \"user_id\":\"é\",\n\"event_type\":\"c\", \"duration\":-7,\"timestamp\":-9223372036854775808,\"is_https\":null,\"parameters\":null,\"x\":{\"a\":[1,\"]}\",{}, -0.5E+3, 0e0 ]} }",
        r#"{"user_id":"u","event_type":"c","timestamp":9223372036854775807,"parameters":{"utm_source":"a","custom_params":{"k":[true,false,null,-1.5e-3]}},"domain":"d"}"#,
    ];

    const TOKENS: [&str; 29] = [
        "\"",
        "\\",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "null",
        "true",
        "-",
        "0",
        "01",
        "1.5",
        "1e5",
        "9223372036854775808",
        "\u{1}",
        "\"user_id\":\"x\",",
        "\"event_type\":null,",
        "é",
        "\"parameters\":{\"a\":[",
        "\\u00e9",
        "\t",
        ".",
        "e",
        "+",
        "E",
        "\u{c}",
    ];

    pub(crate) fn mutate(rng: &mut Rng, s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        for _ in 0..=rng.next(3) {
            let at = rng.next(b.len() as u64 + 1) as usize;
            match rng.next(4) {
                0 if at < b.len() => {
                    b[at] = TOKENS[rng.next(TOKENS.len() as u64) as usize].as_bytes()[0];
                }
                1 => {
                    let end = (at + 1 + rng.next(5) as usize).min(b.len());
                    b.drain(at.min(end)..end);
                }
                2 => {
                    let t = TOKENS[rng.next(TOKENS.len() as u64) as usize];
                    b.splice(at..at, t.bytes());
                }
                _ => {
                    let end = (at + rng.next(40) as usize).min(b.len());
                    let piece = b[at.min(end)..end].to_vec();
                    b.splice(end..end, piece);
                }
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    }

    /// For a message the decoder hands on (trimmed, an object; else `None`): whether the
    /// scan read it, having checked that serde reads the same of it.
    fn read_alike(message: &str) -> Option<bool> {
        let s = std::str::from_utf8(super::super::trim_json_space(message.as_bytes())).ok()?;
        if !s.starts_with('{') {
            return None;
        }
        let read = wire_event(s, &mut Vec::new());
        if let Some(w) = &read {
            assert_eq!(Some(view(w)), by_serde(s), "{s}");
            if let Some(p) = w.checked_parameters.filter(|p| p.text.starts_with('{')) {
                let want = settled_tokens_of(p.text);
                let mut tokens = Vec::new();
                wire_event(s, &mut tokens);
                assert_eq!(tokens, want, "{s}");
            }
        }
        Some(read.is_some())
    }

    /// Whatever the scan reads, serde reads the same of the same text; and the scan
    /// reads most plain messages itself. 30,000 mutations of plain and odd messages:
    /// tokens of JSON's grammar inserted, bytes replaced, pieces cut or repeated.
    #[test]
    fn what_the_scan_reads_serde_reads_the_same() {
        let (mut read, mut left) = (0, 0);
        for seed in 0..30_000u64 {
            let mut rng = Rng::new(seed);
            let base = SEEDS[rng.next(SEEDS.len() as u64) as usize];
            let s = if seed < 4 {
                base.to_string()
            } else {
                mutate(&mut rng, base)
            };
            match read_alike(&s) {
                Some(true) => read += 1,
                Some(false) => left += 1,
                None => {}
            }
        }
        assert!(
            read > 3_000 && left > 3_000,
            "read {read}, left to serde {left}"
        );
    }

    /// The decoder's fuzzing corpus (inputs libFuzzer kept for the paths they reach in
    /// serde's decoding), each as it is and mutated: whatever the scan reads of them,
    /// serde reads the same.
    #[test]
    fn the_fuzz_corpus_reads_the_same_by_the_scan_and_by_serde() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/decode");
        let (mut files, mut read) = (0, 0);
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            files += 1;
            let mut rng = Rng::new(files);
            for round in 0..20 {
                let s = if round == 0 {
                    text.to_string()
                } else {
                    mutate(&mut rng, text)
                };
                if read_alike(&s) == Some(true) {
                    read += 1;
                }
            }
        }
        assert!(
            files > 1000 && read > 500,
            "{files} files, {read} read by the scan"
        );
    }

    /// For parameters without escapes, the scan's verdict is the shape check's: every
    /// object of up to two members of these keys and values.
    #[test]
    fn the_scan_says_plain_where_the_shape_check_does() {
        let keys = ["custom_params", "utm_source", "utm_id", "utm_sourc", "x"];
        let values = [
            "\"s\"",
            "null",
            "1",
            "true",
            "{}",
            "{\"a\":[1]}",
            "[]",
            " \"ws\" ",
        ];
        let members: Vec<String> = keys
            .iter()
            .flat_map(|k| values.iter().map(move |v| format!("\"{k}\":{v}")))
            .collect();
        let mut objects = vec!["{}".to_string(), " { } ".trim().to_string()];
        for a in &members {
            objects.push(format!("{{{a}}}"));
            for b in &members {
                objects.push(format!("{{ {a} ,{b}}}"));
            }
        }
        for json in &objects {
            let want = settled_tokens_of(json);
            let mut tokens = Vec::new();
            let (end, plain) = parameters(json, 0, &mut tokens).expect(json);
            assert_eq!(end, json.len(), "{json}");
            assert_eq!(plain, super::super::shape::plain(json), "{json}");
            assert_eq!(tokens, want, "{json}");
        }
    }

    /// Integers of every length up to past `i64`'s, either sign, read as Rust reads
    /// them (`None` where they overflow).
    #[test]
    fn integers_read_as_rust_parses_them() {
        for len in 1..=21 {
            for digits in ["9".repeat(len), format!("1{}", "0".repeat(len - 1))] {
                for text in [digits.clone(), format!("-{digits}")] {
                    let at_end = format!("{text},");
                    let read = long(at_end.as_bytes(), 0).map(|(v, end)| {
                        assert_eq!(end, text.len());
                        v
                    });
                    assert_eq!(read, text.parse::<i64>().ok(), "{text}");
                }
            }
        }
        for edge in [
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
        ] {
            assert_eq!(long(edge.as_bytes(), 0).map(|r| r.0), edge.parse().ok());
        }
    }

    /// The scan's tokens are the history tokenizer's, where the text nests as deep as
    /// tokens may and deeper (kept whole), and where it has whitespace (kept whole).
    #[test]
    fn the_scans_tokens_are_the_tokenizers_at_every_depth_and_spacing() {
        let mut cases = Vec::new();
        for depth in [1, 30, 31, 32, 33, MAX_DEPTH - 1] {
            let inner = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            cases.push(format!(r#"{{"a":{inner},"b":"x"}}"#));
            let objects = format!("{}1{}", r#"{"k":"#.repeat(depth), "}".repeat(depth));
            cases.push(format!(r#"{{"a":{objects}}}"#));
        }
        for spaced in [
            r#"{"a": 1}"#,
            r#"{"a":[1 ,2]}"#,
            "{\"a\":{\"b\":\t1}}",
            r#"{ "utm_source":"g"}"#,
            r#"{"utm_source":"g" }"#,
        ] {
            cases.push(spaced.to_string());
        }
        for json in &cases {
            let msg = format!(r#"{{"user_id":"u","event_type":"c","parameters":{json}}}"#);
            let want = settled_tokens_of(json);
            let mut tokens = Vec::new();
            let w = wire_event(&msg, &mut tokens).expect(json);
            assert_eq!(w.checked_parameters.map(|p| p.text), Some(json.as_str()));
            assert_eq!(tokens, want, "{json}");
            let mut back = Vec::new();
            crate::history::codec::write_json(&mut back, &tokens);
            assert_eq!(String::from_utf8(back).unwrap(), *json);
        }
    }

    #[test]
    fn the_plain_forms_are_read_and_the_others_left_to_serde() {
        for s in SEEDS {
            assert!(wire_event(s, &mut Vec::new()).is_some(), "{s}");
        }
        for s in [
            "{}",
            r#"{"user_id":"a\"b","event_type":"c"}"#,
            "{\"user_id\":\"a\u{1}\",\"event_type\":\"c\"}",
            r#"{"user_id":"u","event_type":"c","duration":9223372036854775808}"#,
            r#"{"user_id":"u","event_type":"c","duration":01}"#,
            r#"{"user_id":"u","event_type":"c","duration":-0}"#,
            r#"{"user_id":"u","event_type":"c","duration":1.0}"#,
            r#"{"user_id":"u","event_type":"c","duration":"1"}"#,
            r#"{"user_id":"u","event_type":"c","user_id":"v"}"#,
            r#"{"user_id":"u","event_type":"c"} x"#,
            r#"{"user\u005fid":"u","event_type":"c"}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":"\u00e9"}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":01}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":1.}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":-}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":1e}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":[1,]}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":1,}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a" 1}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{a:1}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":tru}}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"a":nulll}}"#,
        ] {
            assert!(wire_event(s, &mut Vec::new()).is_none(), "{s}");
        }
        let deep = format!(
            r#"{{"user_id":"u","event_type":"c","parameters":{}{}}}"#,
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(wire_event(&deep, &mut Vec::new()).is_none());
    }

    /// A key of `parameters` found in the place it had in the object before is written
    /// as the long way writes it: the same keys again, other keys in those places
    /// (longer, shorter, a prefix, more of them, fewer), nested objects, the end of the
    /// text right after a key.
    #[test]
    fn keys_found_in_their_place_are_written_as_the_long_way_writes_them() {
        let objects = [
            r#"{"custom_params":{"page_title":"Home","value":1.5},"utm_source":"g","utm_id":"c1"}"#,
            r#"{"custom_params":{"page_title":"Cart","value":2},"utm_source":"f","utm_id":"c2"}"#,
            r#"{"custom_params":{"page_titl":"x","value_":[1]},"utm_sourc":"g","utm_id_":"c"}"#,
            r#"{"custom_params":{"page_title":{"page_title":{"a":1}}},"utm_source":null}"#,
            r#"{"utm_source":"g","custom_params":{},"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17}"#,
            r#"{"utm_source":"g","custom_params":{},"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17}"#,
            r#"{"a_key_longer_than_a_pattern_holds":1,"utm_source":"g"}"#,
            r#"{"a_key_longer_than_a_pattern_holds":1,"utm_source":"g"}"#,
            r#"{"utm_source":"g"}"#,
            r#"{"utm_source":"g","utm_id":"x"}"#,
            "{}",
        ];
        for round in 0..2 {
            for json in objects {
                let want = settled_tokens_of(json);
                let mut tokens = Vec::new();
                let (end, _) = parameters(json, 0, &mut tokens).expect(json);
                assert_eq!(end, json.len(), "{json}");
                assert_eq!(tokens, want, "round {round}: {json}");
            }
        }
        // A key cut short by the end of the text, where the last object had it whole.
        let mut tokens = Vec::new();
        assert!(parameters(r#"{"utm_source":"g"}"#, 0, &mut tokens).is_some());
        assert!(parameters(r#"{"utm_source""#, 0, &mut tokens).is_none());
        assert!(parameters(r#"{"utm_source":"#, 0, &mut tokens).is_none());
    }

    /// The members in the producers' order are found by their `"key":`; in another
    /// order, with spaces, among unknown members or short of the words the key compare
    /// loads, the scan reads them as serde does, and a member named twice, wherever, is
    /// left to serde (which refuses it).
    #[test]
    fn members_in_any_order_read_as_serde_reads_them() {
        let value = |m: Member| match m {
            Member::Duration | Member::Timestamp => "-12",
            Member::IsFirstInVisit
            | Member::IsLastInVisit
            | Member::IsFirstEvent
            | Member::IsCurrent
            | Member::IsHttps
            | Member::Triggerable => "true",
            Member::Parameters => r#"{"utm_source":"a","custom_params":{"k":1}}"#,
            _ => r#""v""#,
        };
        let members: Vec<(String, &str)> = MEMBERS
            .iter()
            .map(|k| {
                (
                    String::from_utf8_lossy(k.text).into_owned(),
                    value(k.member),
                )
            })
            .collect();
        let event = |order: &[usize], member: &dyn Fn(&str, &str) -> String| {
            let inner: Vec<String> = order
                .iter()
                .map(|&i| member(&members[i].0, members[i].1))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let plain = |k: &str, v: &str| format!("{k}{v}");
        let n = members.len();
        let in_order: Vec<usize> = (0..n).collect();
        let mut reversed = in_order.clone();
        reversed.reverse();
        let rotated: Vec<usize> = (0..n).map(|i| (i + 5) % n).collect();
        let mut read = vec![
            event(&in_order, &plain),
            event(&reversed, &plain),
            event(&rotated, &plain),
            event(&in_order, &|k, v| format!("{k} {v}")),
            event(&in_order, &|k, v| format!(" {} : {v} ", &k[..k.len() - 1])),
            event(&in_order, &|k, v| format!(r#""x":[1],{k}{v}"#)),
            // Shorter than the three words a key is compared by, as the last member.
            r#"{"user_id":"u","event_type":"c"}"#.to_string(),
        ];
        read.extend((2..n).map(|i| event(&[0, 1, i], &plain)));
        for s in &read {
            assert_eq!(read_alike(s), Some(true), "{s}");
        }
        for twice in 0..n {
            for at in [twice + 1, n] {
                let mut order = in_order.clone();
                order.insert(at, twice);
                let s = event(&order, &plain);
                assert_eq!(read_alike(&s), Some(false), "{s}");
                assert_eq!(by_serde(&s), None, "{s}");
            }
        }
    }
}
