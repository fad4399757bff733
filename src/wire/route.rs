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
    // As the decoder reads it: a byte order mark, then whitespace around the object.
    let b = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
    let mut at = skip_ws(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_ws(b, at);
        let (key, _, end) = string(b, at)?;
        at = skip_ws(b, end);
        if b.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(b, at + 1);
        if key == b"user_id" {
            return match b.get(at)? {
                b'"' => string(b, at).filter(|s| !s.1).map(|s| s.0),
                b'{' | b'[' => None,
                // A number or boolean: coerced to its text as written (`coerce::text_of`).
                _ => value_end(b, at).map(|end| &b[at..end]),
            };
        }
        at = skip_ws(b, value_end(b, at)?);
        match b.get(at)? {
            b',' => at += 1,
            _ => return None,
        }
    }
}

/// The raw text of the string at `at` (escapes as written), whether it holds an escape,
/// and where it ends.
fn string(b: &[u8], at: usize) -> Option<(&[u8], bool, usize)> {
    let (end, escaped) = string_end(b, at)?;
    Some((&b[at + 1..end - 1], escaped, end))
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
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let alphabet = b"\"\\{}[],: ux_d0\xEF";
        let (mut decoded, mut found) = (0, 0);
        let mut decoder = Decoder::default();
        for seed in &seeds {
            for _ in 0..4_000 {
                let mut m = seed.as_bytes().to_vec();
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
