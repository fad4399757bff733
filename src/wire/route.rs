//! A message's `user_id` without decoding it: what a source needs to send the message to
//! the worker that holds its user, where it is decoded.
//!
//! `user_id_of` reads the top-level members up to the first whose key is `user_id`
//! (keys compared as written) and gives that member's string when it is plain (no
//! escape). For a message that decodes, that is exactly the `user_id` the decoder gives:
//! a valid event has one `user_id` member (serde refuses a repeated one, an escaped key
//! included, and so does the decoder's scan), and a plain string is taken as it is
//! written, and a number or boolean is coerced to its text as written. A message that
//! will not decode may get any answer; its worker only counts it (and writes its dead
//! letter). `None` (escapes, no such member) leaves the message to the full decode.
//!
//! One producer writes its messages from one model, so the keys before `user_id` are
//! the same from one message to the next: the keys the last message had there
//! (`Layout`) are compared as words (`keys::Pattern`) before any key is scanned. A
//! reading worker at `-w 2` routes every message it reads, and it also decodes its
//! share: the scan of each key was half of its routing.

use std::cell::Cell;

use super::keys::Pattern;
use super::shape::{skip_ws, string_end, value_end};

/// The text of `msg`'s `user_id` when the decoder would give exactly that (see the module
/// notes), or `None`: decode it to know.
///
/// ```
/// use event_trigger::wire::route::user_id_of;
/// assert_eq!(user_id_of(br#"{"event_id":"e1","user_id":"u7","event_type":"x"}"#), Some(&b"u7"[..]));
/// assert_eq!(user_id_of(br#"{"user_id":7,"event_type":"x"}"#), Some(&b"7"[..]));
/// assert_eq!(user_id_of(br#"{"user_id":"\u0075","event_type":"x"}"#), None);
/// ```
pub fn user_id_of(msg: &[u8]) -> Option<&[u8]> {
    LAYOUT.with(|layout| match layout.user_id(msg) {
        Some(user) => Some(user),
        None => scan(msg, layout),
    })
}

/// The members read one by one, as the decoder reads them (whitespace anywhere, keys
/// with escapes), noting the keys before `user_id` in `layout` for the next message.
fn scan<'m>(msg: &'m [u8], layout: &Layout) -> Option<&'m [u8]> {
    // As the decoder reads it: a byte order mark, then whitespace around the object.
    let b = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
    let mut at = skip_ws(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut before = 0;
    loop {
        at = skip_ws(b, at);
        let (key, _, end) = string(b, at)?;
        let key_at = at;
        at = skip_ws(b, end);
        if b.get(at) != Some(&b':') {
            return None;
        }
        if key == b"user_id" {
            layout.keep(before);
            at = skip_ws(b, at + 1);
            return match b.get(at)? {
                b'"' => plain_string(b, at),
                b'{' | b'[' => None,
                // A number or boolean: coerced to its text as written (`coerce::text_of`).
                _ => value_end(b, at).map(|end| &b[at..end]),
            };
        }
        before = layout.note(before, b.get(key_at..=at)?);
        at = skip_ws(b, value_end(b, skip_ws(b, at + 1))?);
        match b.get(at)? {
            b',' => at += 1,
            _ => return None,
        }
    }
}

/// Most keys before `user_id` a layout holds.
const MAX_BEFORE: usize = 8;

/// `"user_id":`
const USER_ID: Pattern = match Pattern::new(b"\"user_id\":") {
    Some(p) => p,
    None => panic!("`\"user_id\":` is longer than a pattern holds"),
};

/// The `"key":` of each member before `user_id` in the last message this thread
/// scanned, in order; `len` of them (none kept: `NONE`).
struct Layout {
    keys: [Cell<Pattern>; MAX_BEFORE],
    len: Cell<usize>,
}

/// `Layout::len` while no layout is kept.
const NONE: usize = usize::MAX;

thread_local! {
    static LAYOUT: Layout = const { Layout::new() };
}

impl Layout {
    const fn new() -> Layout {
        Layout {
            keys: [const { Cell::new(Pattern::EMPTY) }; MAX_BEFORE],
            len: Cell::new(NONE),
        }
    }

    /// The user id of a message laid out as the last one up to its `user_id` string,
    /// without whitespace: each step the one `scan` takes on the same bytes (a key
    /// matched as a pattern is the key `scan` reads there, its value ends where `scan`
    /// finds it to end). `None` for anything else, which `scan` then reads.
    #[inline]
    fn user_id<'m>(&self, b: &'m [u8]) -> Option<&'m [u8]> {
        let n = self.len.get();
        if n == NONE || b.first() != Some(&b'{') {
            return None;
        }
        let mut at = 1;
        for key in &self.keys[..n] {
            let key = key.get();
            if !key.at(b, at) {
                return None;
            }
            at = value_end(b, at + key.len())?;
            if b.get(at) != Some(&b',') {
                return None;
            }
            at += 1;
        }
        if !USER_ID.at(b, at) {
            return None;
        }
        at += USER_ID.len();
        match b.get(at)? {
            b'"' => plain_string(b, at),
            _ => None,
        }
    }

    /// The key `text` (`"key":` as written) is number `before` before `user_id`: the
    /// count with it, or `MAX_BEFORE + 1` when it cannot be kept.
    fn note(&self, before: usize, text: &[u8]) -> usize {
        match (self.keys.get(before), Pattern::new(text)) {
            (Some(slot), Some(p)) => {
                slot.set(p);
                before + 1
            }
            _ => MAX_BEFORE + 1,
        }
    }

    /// `user_id` came after `before` keys, all noted: the next message is compared with
    /// them.
    fn keep(&self, before: usize) {
        self.len
            .set(if before <= MAX_BEFORE { before } else { NONE });
    }
}

/// The raw text of the string at `at` (escapes as written), whether it holds an escape,
/// and where it ends.
fn string(b: &[u8], at: usize) -> Option<(&[u8], bool, usize)> {
    let (end, escaped) = string_end(b, at)?;
    Some((&b[at + 1..end - 1], escaped, end))
}

/// The text of the string at `at` if it holds no escape (a user id taken as written).
fn plain_string(b: &[u8], at: usize) -> Option<&[u8]> {
    string(b, at).filter(|s| !s.1).map(|s| s.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Decoder;

    fn of(msg: &str) -> Option<&str> {
        user_id_of(msg.as_bytes()).map(|u| std::str::from_utf8(u).unwrap())
    }

    #[test]
    fn the_user_id_is_found_past_members_of_every_kind() {
        assert_eq!(of(r#"{"user_id":"u1"}"#), Some("u1"));
        assert_eq!(
            of(
                "\u{feff} \n{ \"a\" : [1, {\"user_id\":\"no\"}, \"]\"] ,\"b\":{\"c\":\"}\\\"\"},\"n\":-1.5e3,\"t\":true,\"z\":null, \"user_id\" : \"u2\" }"
            ),
            Some("u2")
        );
        assert_eq!(
            of(r#"{"x":"a\"user_id\":\"no","user_id":"u3"}"#),
            Some("u3")
        );
        assert_eq!(of(r#"{"user_id":""}"#), Some(""));
        assert_eq!(of(r#"{"user_id":-1.5E3 ,"x":1}"#), Some("-1.5E3"));
        assert_eq!(of(r#"{"user_id":true}"#), Some("true"));
        let deep = format!(
            r#"{{"a":{}1{},"user_id":"u"}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(of(&deep), Some("u"));

        let deep = format!(
            r#"{{"a":{}1{},"user_id":"u"}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(of(&deep), Some("u"));
    }

    #[test]
    fn anything_but_a_plain_string_is_left_to_the_decoder() {
        for msg in [
            r#"{"user_id":"u\"1"}"#,
            r#"{"user_id":"\u0075"}"#,
            r#"{"user_id":{"a":1}}"#,
            r#"{"user\u005fid":"u1"}"#,
            r#"{"event_type":"x"}"#,
            r#"["user_id","u1"]"#,
            r#"{"a":1 "user_id":"u1"}"#,
            r#"{"a":[[[}"#,
            "",
            "{",
            r#"{"user_id""#,
        ] {
            assert_eq!(of(msg), None, "{msg}");
        }
    }

    /// A message laid out as the one before it gets from the kept layout what a scan
    /// of its own gives: the sample events, each after every other as the one before,
    /// and thousands of byte-level mutations of each after the sample itself.
    #[test]
    fn the_kept_layout_finds_what_a_scan_finds() {
        let seeds = [
            crate::wire::tests::FULL.to_string(),
            r#"{"event_id":"e","user_id":"u","event_type":"c"}"#.into(),
            r#"{"event_id":"e","user_id":"v\"w","event_type":"c"}"#.into(),
            r#"{"a":[1,{"user_id":"x"}],"b":"\"user_id\":","user_id":"u"}"#.into(),
            r#"{"k\"ey":1,"user_id":"u"}"#.into(),
            r#"{"event_id" :"e","user_id":"u"}"#.into(),
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"user_id":"u"}"#.into(),
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"user_id":"u"}"#.into(),
            r#"{"a_key_longer_than_a_pattern_holds":1,"user_id":"u"}"#.into(),
            r#"{"user_id":"u","event_id":"e"}"#.into(),
            r#"{"event_id":"e","user_id":7}"#.into(),
        ];
        let scanned = |m: &[u8]| scan(m, &Layout::new()).map(<[u8]>::to_vec);
        for last in &seeds {
            for msg in &seeds {
                user_id_of(last.as_bytes());
                let got = user_id_of(msg.as_bytes()).map(<[u8]>::to_vec);
                assert_eq!(got, scanned(msg.as_bytes()), "{msg} after {last}");
            }
        }
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let (mut from_layout, mut found) = (0, 0);
        for seed in &seeds {
            for _ in 0..3_000 {
                let m = mutated(seed.as_bytes(), &mut rng);
                user_id_of(seed.as_bytes());
                let by_layout = LAYOUT.with(|l| l.user_id(&m).is_some());
                let got = user_id_of(&m).map(<[u8]>::to_vec);
                assert_eq!(got, scanned(&m), "{}", String::from_utf8_lossy(&m));
                from_layout += usize::from(by_layout);
                found += usize::from(got.is_some());
            }
        }
        assert!(
            from_layout > 5_000,
            "{from_layout} of {found} by the layout"
        );
    }

    /// `seed` with one to three bytes changed, removed or inserted.
    fn mutated(seed: &[u8], rng: &mut u64) -> Vec<u8> {
        let mut next = move || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let alphabet = b"\"\\{}[],: ux_d0\xEF";
        let mut m = seed.to_vec();
        for _ in 0..1 + next() % 3 {
            let at = (next() as usize) % (m.len() + 1);
            let c = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 if at < m.len() => m[at] = c,
                1 if at < m.len() => {
                    m.remove(at);
                }
                _ => m.insert(at, c),
            }
        }
        m
    }

    /// What the scan finds is what the decoder gives, for every message that decodes:
    /// the sample events and thousands of their byte-level mutations.
    #[test]
    fn a_found_user_id_is_the_decoded_one() {
        let seeds = [
            crate::wire::tests::FULL.to_string(),
            r#"{"event_id":"e","user_id":"u","event_type":"c","parameters":{"user_id":"p"}}"#
                .into(),
            r#"{"parameters":{"a":[1,"x"]},"user_id":"u","event_type":"c"}"#.into(),
            r#" {"event_type":"c" , "user_id" : "u" } "#.into(),
            r#"{"user_id":"u","event_type":"c","user_id":"v"}"#.into(),
            r#"{"user_id":7,"event_type":"c"}"#.into(),
            r#"{"user_id":-0.50e1 , "event_type":"c","x":[]}"#.into(),
            r#"{"user_id":false,"event_type":"c"}"#.into(),
            r#"{"user_id":"a\u0062","event_type":"c"}"#.into(),
        ];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let (mut decoded, mut found) = (0, 0);
        let mut decoder = Decoder::default();
        for seed in &seeds {
            for _ in 0..4_000 {
                let m = mutated(seed.as_bytes(), &mut rng);
                let scanned = user_id_of(&m);
                if let Ok(ev) = decoder.decode(&m) {
                    decoded += 1;
                    if let Some(u) = scanned {
                        found += 1;
                        assert_eq!(u, ev.user_id.as_bytes(), "{}", String::from_utf8_lossy(&m));
                    }
                }
            }
        }
        assert!(
            decoded > 2_000 && found > 1_000,
            "{decoded} decoded, {found} found"
        );
    }
}
