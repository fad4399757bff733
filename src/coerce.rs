//! The scalar coercions of Jackson's `ObjectMapper` with its default settings, which the
//! original job read events and Profile API answers with: a number or a boolean where a
//! string is expected is read as its text, a string where a number or a boolean is
//! expected is parsed, a float where an integer is expected is truncated.
//!
//! They work on raw JSON values (`RawValue`): a number read as a string keeps its text as
//! written (`1.50` stays `"1.50"`, as Jackson's `getText()` gives it), which a parsed
//! `f64` would lose.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// Why a JSON value cannot be read into a field of some type.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CoerceError {
    #[error("{found} where {expected} is expected")]
    WrongType {
        found: &'static str,
        expected: &'static str,
    },
    #[error("{text:?} is not {expected}")]
    BadText {
        text: String,
        expected: &'static str,
    },
    #[error("{0} is out of the range of a 64-bit integer")]
    OutOfRange(String),
    #[error("the string {0} holds {LONE_SURROGATE}")]
    LoneSurrogate(String),
}

/// The value an error names, as much of it as a message shows: its first 40 characters
/// and `...` when it is longer (a value may be as long as a message, and the error is
/// logged and dead-lettered with each message it refuses).
fn excerpt(value: &str) -> String {
    const SHOWN: usize = 40;
    match value.char_indices().nth(SHOWN) {
        None => value.to_string(),
        Some((end, _)) => format!("{}...", &value[..end]),
    }
}

/// What half of a surrogate pair (`"\ud800"`) is, for the messages that refuse one.
pub const LONE_SURROGATE: &str = "half of a UTF-16 surrogate pair (a \\uD800-\\uDFFF escape \
     without its other half), which text cannot hold";

/// The kind of a JSON value, from its first character (a `RawValue` is valid JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Null,
    Bool(bool),
    Int,
    Float,
    String,
    Object,
    Array,
}

impl Token {
    fn of(text: &str) -> Token {
        match text.as_bytes().first() {
            Some(b'"') => Token::String,
            Some(b'{') => Token::Object,
            Some(b'[') => Token::Array,
            Some(b't') => Token::Bool(true),
            Some(b'f') => Token::Bool(false),
            Some(b'n') => Token::Null,
            _ if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => Token::Float,
            _ => Token::Int,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Token::Null => "null",
            Token::Bool(_) => "a boolean",
            Token::Int => "an integer",
            Token::Float => "a floating-point number",
            Token::String => "a string",
            Token::Object => "an object",
            Token::Array => "an array",
        }
    }
}

fn wrong(token: Token, expected: &'static str) -> CoerceError {
    CoerceError::WrongType {
        found: token.name(),
        expected,
    }
}

/// The content of a JSON string literal, borrowed when it has no escapes.
fn unescape(literal: &str) -> Result<Cow<'_, str>, CoerceError> {
    if !literal.contains('\\') {
        // Quotes at both ends; without escapes the rest is the text itself.
        return Ok(Cow::Borrowed(&literal[1..literal.len() - 1]));
    }
    // A `RawValue`'s escapes are well formed but not decoded: the one thing left that
    // fails here is half of a surrogate pair (`"\ud800"`), which has no UTF-8 form.
    serde_json::from_str::<String>(literal)
        .map(Cow::Owned)
        .map_err(|_| CoerceError::LoneSurrogate(excerpt(literal)))
}

/// Java's `String.trim()`: every character up to U+0020 goes, not only Unicode spaces.
fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

/// A `String` field: `null` is `None`; numbers and booleans are their JSON text.
///
/// ```
/// # use event_trigger::coerce::text;
/// # let raw = |s: &str| serde_json::value::RawValue::from_string(s.into()).unwrap();
/// assert_eq!(text(&raw("\"a\"")).unwrap().as_deref(), Some("a"));
/// assert_eq!(text(&raw("12345")).unwrap().as_deref(), Some("12345"));
/// assert_eq!(text(&raw("1.50")).unwrap().as_deref(), Some("1.50"));
/// assert_eq!(text(&raw("true")).unwrap().as_deref(), Some("true"));
/// assert_eq!(text(&raw("null")).unwrap(), None);
/// assert!(text(&raw("[1]")).is_err());
/// ```
pub fn text(raw: &RawValue) -> Result<Option<Cow<'_, str>>, CoerceError> {
    text_of(raw.get())
}

/// `text` of `s`, the text of one JSON value.
pub(crate) fn text_of(s: &str) -> Result<Option<Cow<'_, str>>, CoerceError> {
    match Token::of(s) {
        Token::String => Ok(Some(unescape(s)?)),
        Token::Int | Token::Float | Token::Bool(_) => Ok(Some(Cow::Borrowed(s))),
        Token::Null => Ok(None),
        t @ (Token::Object | Token::Array) => Err(wrong(t, "a string")),
    }
}

/// A `long` field (Java's primitive): `null` is 0; a float is truncated toward zero; a
/// string is trimmed and parsed as a decimal integer, `""` and `"null"` being 0.
///
/// ```
/// # use event_trigger::coerce::long;
/// # let raw = |s: &str| serde_json::value::RawValue::from_string(s.into()).unwrap();
/// assert_eq!(long(&raw("\"1704067200000\"")), Ok(1704067200000));
/// assert_eq!(long(&raw("-1.9")), Ok(-1));
/// assert_eq!(long(&raw("null")), Ok(0));
/// assert!(long(&raw("\"1.5\"")).is_err());
/// assert!(long(&raw("true")).is_err());
/// ```
pub fn long(raw: &RawValue) -> Result<i64, CoerceError> {
    long_of(raw.get())
}

/// `long` of `s`, the text of one JSON value.
pub(crate) fn long_of(s: &str) -> Result<i64, CoerceError> {
    match Token::of(s) {
        Token::Null => Ok(0),
        Token::Int => s
            .parse::<i64>()
            .map_err(|_| CoerceError::OutOfRange(excerpt(s))),
        Token::Float => float_to_long(s),
        Token::String => string_to_long(&unescape(s)?),
        t @ (Token::Bool(_) | Token::Object | Token::Array) => Err(wrong(t, "an integer")),
    }
}

fn float_to_long(s: &str) -> Result<i64, CoerceError> {
    // Jackson's bounds are `(double) Long.MIN_VALUE` and `(double) Long.MAX_VALUE`, both
    // inclusive; Rust's `as` truncates toward zero and saturates at 2^63 like Java's cast.
    const BOUND: f64 = 9_223_372_036_854_775_808.0;
    match s.parse::<f64>() {
        Ok(f) if (-BOUND..=BOUND).contains(&f) => Ok(f as i64),
        _ => Err(CoerceError::OutOfRange(excerpt(s))),
    }
}

fn string_to_long(s: &str) -> Result<i64, CoerceError> {
    let t = java_trim(s);
    if t.is_empty() || t == "null" {
        return Ok(0);
    }
    // `Long.parseLong`: an optional sign and decimal digits, nothing else.
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CoerceError::BadText {
            text: excerpt(s),
            expected: "an integer",
        });
    }
    t.parse::<i64>()
        .map_err(|_| CoerceError::OutOfRange(excerpt(t)))
}

/// A `boolean` field (Java's primitive): `null` is false; an integer is `!= 0`; a string
/// is trimmed and must be `true`, `True`, `TRUE` (or the same for false), `""` and
/// `"null"` being false.
///
/// ```
/// # use event_trigger::coerce::boolean;
/// # let raw = |s: &str| serde_json::value::RawValue::from_string(s.into()).unwrap();
/// assert_eq!(boolean(&raw("\"true\"")), Ok(true));
/// assert_eq!(boolean(&raw("0")), Ok(false));
/// assert!(boolean(&raw("\"yes\"")).is_err());
/// assert!(boolean(&raw("1.0")).is_err());
/// ```
pub fn boolean(raw: &RawValue) -> Result<bool, CoerceError> {
    boolean_of(raw.get())
}

/// `boolean` of `s`, the text of one JSON value.
pub(crate) fn boolean_of(s: &str) -> Result<bool, CoerceError> {
    match Token::of(s) {
        Token::Null => Ok(false),
        Token::Bool(b) => Ok(b),
        Token::Int => Ok(s.bytes().any(|b| matches!(b, b'1'..=b'9'))),
        Token::String => string_to_bool(&unescape(s)?),
        t @ (Token::Float | Token::Object | Token::Array) => Err(wrong(t, "a boolean")),
    }
}

fn string_to_bool(s: &str) -> Result<bool, CoerceError> {
    match java_trim(s) {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" | "" | "null" => Ok(false),
        _ => Err(CoerceError::BadText {
            text: excerpt(s),
            expected: "a boolean (true or false)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    /// Found by a trial: a 500,000-digit `timestamp` made a 500 KB warning and
    /// dead-letter reason; an error names at most the first 40 characters of a value.
    #[test]
    fn an_error_names_the_start_of_a_long_value() {
        let nines = "9".repeat(500_000);
        let long_string = format!("\"{}é\"", "x".repeat(100_000));
        let surrogate = format!("\"\\ud800{}\"", "y".repeat(100_000));
        for e in [
            long_of(&nines).unwrap_err(),
            long_of(&format!("{nines}.5")).unwrap_err(),
            long_of(&format!("\"{nines}\"")).unwrap_err(),
            long_of(&long_string).unwrap_err(),
            boolean_of(&long_string).unwrap_err(),
            text_of(&surrogate).unwrap_err(),
        ] {
            let message = e.to_string();
            assert!(
                message.len() < 300,
                "{} bytes: {}",
                message.len(),
                &message[..300]
            );
            assert!(message.contains("..."), "{message}");
        }
        assert_eq!(
            long_of(&"9".repeat(40)).unwrap_err().to_string(),
            format!("{} is out of the range of a 64-bit integer", "9".repeat(40))
        );
        assert_eq!(excerpt(&"é".repeat(41)), format!("{}...", "é".repeat(40)));
    }

    #[test]
    fn strings_take_the_text_of_numbers_and_booleans_as_written() {
        let cases = [
            (r#""plain""#, Some("plain")),
            (r#""a\/b \u00e9""#, Some("a/b é")),
            (r#""""#, Some("")),
            ("12345", Some("12345")),
            ("-0", Some("-0")),
            ("1.50", Some("1.50")),
            ("1E3", Some("1E3")),
            ("99999999999999999999", Some("99999999999999999999")),
            ("false", Some("false")),
            ("null", None),
        ];
        for (json, want) in cases {
            assert_eq!(text(&raw(json)).unwrap().as_deref(), want, "{json}");
        }
        for json in ["{}", r#"{"a":1}"#, "[]", r#"["x"]"#] {
            assert!(text(&raw(json)).is_err(), "{json}");
        }
    }

    #[test]
    fn unescaped_strings_are_borrowed() {
        let r = raw(r#""user_1""#);
        assert!(matches!(text(&r), Ok(Some(Cow::Borrowed("user_1")))));
    }

    /// A raw value lets half of a surrogate pair through; it was read as the literal,
    /// quotes and all (found by a trial: a Profile API history entry's `event_id` came
    /// out as `"\"h_\\ud800\""` in webhook bodies).
    #[test]
    fn half_a_surrogate_pair_is_refused_not_kept_as_its_literal() {
        for json in [r#""h_\ud800""#, r#""\udc00x""#, r#""a\ud800\u0041""#] {
            let e = text(&raw(json)).unwrap_err();
            assert!(
                matches!(&e, CoerceError::LoneSurrogate(literal) if literal == json),
                "{json}: {e}"
            );
            assert!(e.to_string().contains("surrogate"), "{e}");
            assert!(long(&raw(json)).is_err() && boolean(&raw(json)).is_err());
        }
        let pair = raw(r#""\ud83d\ude00 \u00e9""#);
        assert_eq!(text(&pair).unwrap().as_deref(), Some("😀 é"));
    }

    #[test]
    fn longs_read_numbers_strings_and_null_like_jackson() {
        let ok = [
            ("42", 42),
            ("-42", -42),
            ("1.5", 1),
            ("-1.9", -1),
            ("1e3", 1000),
            ("2.5E-1", 0),
            ("null", 0),
            (r#""1704067200000""#, 1_704_067_200_000),
            (r#""  12 ""#, 12),
            (r#""+5""#, 5),
            (r#""-7""#, -7),
            (r#""""#, 0),
            (r#""null""#, 0),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for (json, want) in ok {
            assert_eq!(long(&raw(json)), Ok(want), "{json}");
        }
        let bad = [
            "9223372036854775808",
            "99999999999999999999",
            "1e19",
            "-1e300",
            r#""1.5""#,
            r#""1e3""#,
            r#""12abc""#,
            r#""+""#,
            r#""0x10""#,
            r#""9223372036854775808""#,
            "true",
            "{}",
            "[1]",
        ];
        for json in bad {
            assert!(long(&raw(json)).is_err(), "{json}");
        }
    }

    #[test]
    fn booleans_read_strings_and_integers_like_jackson() {
        let ok = [
            ("true", true),
            ("false", false),
            ("null", false),
            ("1", true),
            ("-3", true),
            ("0", false),
            ("-0", false),
            (r#""true""#, true),
            (r#""True""#, true),
            (r#""TRUE""#, true),
            (r#"" false ""#, false),
            (r#""FALSE""#, false),
            (r#""""#, false),
            (r#""null""#, false),
        ];
        for (json, want) in ok {
            assert_eq!(boolean(&raw(json)), Ok(want), "{json}");
        }
        for json in [r#""yes""#, r#""1""#, r#""tRUE""#, "1.0", "{}", "[]"] {
            assert!(boolean(&raw(json)).is_err(), "{json}");
        }
    }
}
