//! JSON `UserEvent` decoding, as the Flink job's Jackson mapper (default settings) did:
//! unknown fields are ignored; a scalar of another type is coerced (`"user_id": 7` is
//! `"7"`, `"timestamp": "12"` is 12: `crate::coerce`), unless `strict_types`; a value
//! that cannot be read into its field makes the message invalid, and so does a missing,
//! `null` or empty `user_id` or `event_type`.
//!
//! Decoding borrows from the input (no `serde_json::Value` tree) and copies each string
//! once: in place when short (`SmallText`), else into an `Arc<str>` the rest of the job
//! shares. The typed parse comes first;
//! only a message it refuses for a type is read again with coercions (`lenient`), so
//! well-typed messages cost what they did before coercion existed.

pub(crate) mod fast;
mod keys;
mod lenient;
pub mod route;
pub(crate) mod shape;

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::error::Category;
use serde_json::value::RawValue;

use crate::intern::Interner;
use crate::model::{RawJson, SmallText, UserEvent};

/// Why a message was skipped; `as_str` is the label used in counters and logs.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("not UTF-8")]
    NotUtf8,
    #[error("malformed or wrongly typed JSON: {0}")]
    Json(String),
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("{0} bytes, over the limit of {1} (kafka.max-message-bytes)")]
    TooLarge(usize, usize),
}

impl DecodeError {
    /// Every `reason`, in `reason_index` order.
    pub const REASONS: [&'static str; 5] = [
        "empty",
        "not_utf8",
        "bad_json",
        "missing_field",
        "too_large",
    ];

    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.reason_index()]
    }

    pub fn reason_index(&self) -> usize {
        match self {
            DecodeError::Empty => 0,
            DecodeError::NotUtf8 => 1,
            DecodeError::Json(_) => 2,
            DecodeError::MissingField(_) => 3,
            DecodeError::TooLarge(..) => 4,
        }
    }
}

/// Java's primitive fields read a JSON `null` as their default (Jackson's behaviour with
/// `FAIL_ON_NULL_FOR_PRIMITIVES` off, as in the original job).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An optional string borrowed from the input when it has no escapes: serde borrows a
/// bare `Cow` with `borrow`, but an `Option<Cow>` always gets an owned copy.
fn opt_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'de>>::deserialize(d)?.map(|b| b.0))
}

#[derive(Default, Deserialize)]
#[cfg_attr(test, derive(Clone, Debug))]
struct WireEvent<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    domain: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "null_default")]
    is_first_in_visit: bool,
    #[serde(default, deserialize_with = "null_default")]
    is_last_in_visit: bool,
    #[serde(default, deserialize_with = "null_default")]
    is_first_event: bool,
    #[serde(default, deserialize_with = "null_default")]
    is_current: bool,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    event_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    event_displayname: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    integration: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    app: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    platform: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "null_default")]
    is_https: bool,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    event_type: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "null_default")]
    duration: i64,
    #[serde(default, deserialize_with = "null_default")]
    timestamp: i64,
    #[serde(default, deserialize_with = "null_default")]
    triggerable: bool,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    /// `parameters` as `fast` read them (serde's are in `parameters`).
    #[serde(skip)]
    checked_parameters: Option<fast::Parameters<'a>>,
}

/// The shape `parameters` must have; only checked, the text is kept as it came.
#[derive(Deserialize)]
#[allow(dead_code)] // fields exist to be type-checked by serde
struct WireParameters<'a> {
    #[serde(borrow, default)]
    custom_params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    utm_source: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    utm_campaign: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    utm_content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    utm_medium: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    utm_term: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    utm_id: Option<Cow<'a, str>>,
}

/// A repeated string (name, type, platform ...): in place when short, else the
/// interner's shared copy.
fn shared(interner: &mut Interner, s: Option<Cow<'_, str>>) -> Option<SmallText> {
    s.map(|s| word(interner, &s))
}

fn word(interner: &mut Interner, s: &str) -> SmallText {
    if SmallText::fits(s) {
        SmallText::from(s)
    } else {
        SmallText::from(interner.intern(s))
    }
}

/// Decodes messages; the strings that repeat across events (type, name, domain,
/// platform ...) are kept in place when short, and shared when longer, instead of
/// allocated for each event.
pub struct Decoder {
    interner: Interner,
    /// The tokens of the message's `parameters`, as the scan writes them.
    tokens: Vec<u8>,
    max_bytes: usize,
    strict_types: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::with_limit(usize::MAX)
    }
}

impl Decoder {
    /// A decoder that refuses messages longer than `max_bytes` without parsing them.
    ///
    /// ```
    /// use event_trigger::wire::Decoder;
    /// let mut d = Decoder::with_limit(16);
    /// assert_eq!(d.decode(br#"{"user_id":"u1","event_type":"click"}"#).unwrap_err().reason(), "too_large");
    /// ```
    pub fn with_limit(max_bytes: usize) -> Self {
        Decoder {
            interner: Interner::default(),
            tokens: Vec::new(),
            max_bytes,
            strict_types: false,
        }
    }

    /// `true`: a value of another JSON type than its field's makes the message invalid
    /// instead of being coerced (`source.strict-types`).
    ///
    /// ```
    /// use event_trigger::wire::Decoder;
    /// let msg = br#"{"user_id":7,"event_type":"click"}"#;
    /// assert_eq!(&*Decoder::default().decode(msg).unwrap().user_id, "7");
    /// let mut strict = Decoder::default().strict_types(true);
    /// assert_eq!(strict.decode(msg).unwrap_err().reason(), "bad_json");
    /// ```
    pub fn strict_types(mut self, strict: bool) -> Self {
        self.strict_types = strict;
        self
    }

    /// Decodes one message.
    ///
    /// ```
    /// use event_trigger::wire::{Decoder, DecodeError};
    /// let mut d = Decoder::default();
    /// let ev = d.decode(br#"{"user_id":"u1","event_type":"click","timestamp":5}"#).unwrap();
    /// assert_eq!(&*ev.user_id, "u1");
    /// assert_eq!(ev.timestamp, 5);
    /// assert_eq!(d.decode(br#"{"user_id":[7],"event_type":"click"}"#).unwrap_err().reason(), "bad_json");
    /// assert_eq!(d.decode(br#"{"event_type":"click"}"#), Err(DecodeError::MissingField("user_id")));
    /// assert_eq!(d.decode(br#"{"user_id":"","event_type":"click"}"#), Err(DecodeError::MissingField("user_id")));
    /// ```
    pub fn decode(&mut self, bytes: &[u8]) -> Result<UserEvent, DecodeError> {
        if bytes.len() > self.max_bytes {
            return Err(DecodeError::TooLarge(bytes.len(), self.max_bytes));
        }
        decode_with(
            bytes,
            &mut self.interner,
            &mut self.tokens,
            self.strict_types,
        )
    }
}

fn json_err(e: serde_json::Error) -> DecodeError {
    match e.line() {
        0 => DecodeError::Json(message(&e)),
        line => DecodeError::Json(format!(
            "{} at line {line} column {}",
            message(&e),
            e.column()
        )),
    }
}

/// serde's message without its position, and what its escape errors mean: both come of
/// half of a surrogate pair, which serde names by the place it noticed.
fn message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let msg = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    match msg {
        "unexpected end of hex escape" | "lone leading surrogate in hex escape" => {
            format!("{msg}: {}", crate::coerce::LONE_SURROGATE)
        }
        _ => msg.to_owned(),
    }
}

/// A type error, as opposed to malformed JSON: worth reading again with coercions.
fn is_type_error(e: &serde_json::Error) -> bool {
    // A number too large for a double too: serde refuses it before it looks at the
    // field's type, where Jackson gives a string field the number's text.
    e.classify() == Category::Data || e.to_string().starts_with("number out of range")
}

/// Validates a `parameters` value and returns it as raw JSON (`None` for `null`); unless
/// `strict_types`, `utm_*` members that are numbers or booleans are made strings.
pub fn parameters(raw: &RawValue, strict_types: bool) -> Result<Option<RawJson>, DecodeError> {
    checked_parameters(raw.get(), strict_types)
}

/// `parameters` as `parameters` does, from text known to be one JSON value.
pub(crate) fn checked_parameters(
    s: &str,
    strict_types: bool,
) -> Result<Option<RawJson>, DecodeError> {
    if s == "null" {
        return Ok(None);
    }
    if !s.starts_with('{') {
        return Err(DecodeError::Json("parameters must be an object".into()));
    }
    if shape::plain(s) {
        return Ok(Some(RawJson::checked(s)));
    }
    // The typed check reads a `RawValue`; the text is JSON, so serde gives it one.
    let raw: &RawValue = serde_json::from_str(s).map_err(json_err)?;
    typed_parameters(raw, strict_types)
}

/// `parameters` (an object) checked by a typed parse: `utm_*` members strings (else
/// coerced, unless `strict_types`), `custom_params` an object or `null`.
fn typed_parameters(raw: &RawValue, strict_types: bool) -> Result<Option<RawJson>, DecodeError> {
    let p: WireParameters<'_> = match serde_json::from_str(raw.get()) {
        Ok(p) => p,
        Err(e) if !strict_types && is_type_error(&e) => return lenient::parameters(raw).map(Some),
        // Its position is in the value, not in the message.
        Err(e) => {
            return Err(DecodeError::Json(format!(
                "`parameters`: {} (column {} of its value)",
                message(&e),
                e.column()
            )));
        }
    };
    if let Some(custom) = p.custom_params {
        let c = custom.get();
        if !(c.starts_with('{') || c == "null") {
            return Err(DecodeError::Json(
                "parameters.custom_params must be an object".into(),
            ));
        }
    }
    Ok(Some(RawJson::checked(raw.get())))
}

fn serde_event(s: &str, strict_types: bool) -> Result<WireEvent<'_>, DecodeError> {
    match serde_json::from_str(s) {
        Ok(w) => Ok(w),
        Err(e) if !strict_types && is_type_error(&e) => {
            serde_json::from_str::<lenient::RawEvent<'_>>(s)
                .map_err(json_err)?
                .coerce()
        }
        Err(e) => Err(json_err(e)),
    }
}

/// Decodes one message (without sharing strings; see `Decoder`).
pub fn decode(bytes: &[u8]) -> Result<UserEvent, DecodeError> {
    decode_with(bytes, &mut Interner::default(), &mut Vec::new(), false)
}

/// `b` without JSON's whitespace around it, as Jackson skips it (`trim_ascii` also
/// takes a form feed, with which Jackson refuses a message).
fn trim_json_space(b: &[u8]) -> &[u8] {
    let start = shape::skip_ws(b, 0);
    let end = b
        .iter()
        .rposition(|&c| !shape::is_space(c))
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn decode_with(
    bytes: &[u8],
    interner: &mut Interner,
    tokens: &mut Vec<u8>,
    strict_types: bool,
) -> Result<UserEvent, DecodeError> {
    // Jackson skips a UTF-8 byte order mark at the start of its input, so the original
    // took such messages (some producers' encoders write one).
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let trimmed = trim_json_space(bytes);
    if trimmed.is_empty() {
        return Err(DecodeError::Empty);
    }
    let s = simdutf8::basic::from_utf8(trimmed).map_err(|_| DecodeError::NotUtf8)?;
    // serde would read a JSON array as a struct's fields in order; only objects are events.
    if !s.starts_with('{') {
        return Err(DecodeError::Json("not a JSON object".into()));
    }
    // The usual message is read by a scan of its own; anything else by serde, which
    // gives every error and coercion (`fast`).
    let w: WireEvent<'_> = match fast::wire_event(s, tokens) {
        Some(w) => w,
        None => serde_event(s, strict_types)?,
    };
    // The original dropped events without a user or a type, empty ones included.
    let user_id = w
        .user_id
        .filter(|s| !s.is_empty())
        .ok_or(DecodeError::MissingField("user_id"))?;
    let event_type = w
        .event_type
        .filter(|s| !s.is_empty())
        .ok_or(DecodeError::MissingField("event_type"))?;
    let parameters = match (w.checked_parameters, w.parameters) {
        (Some(p), _) if p.plain => Some(RawJson::from_tokens(tokens)),
        (Some(p), _) => checked_parameters(p.text, strict_types)?,
        (None, Some(raw)) => parameters(raw, strict_types)?,
        (None, None) => None,
    };
    Ok(UserEvent {
        event_id: w.event_id.map(|s| SmallText::from(s.as_ref())),
        user_id: SmallText::from(user_id.as_ref()),
        domain: shared(interner, w.domain),
        is_first_in_visit: w.is_first_in_visit,
        is_last_in_visit: w.is_last_in_visit,
        is_first_event: w.is_first_event,
        is_current: w.is_current,
        event_name: shared(interner, w.event_name),
        event_displayname: shared(interner, w.event_displayname),
        integration: shared(interner, w.integration),
        app: shared(interner, w.app),
        platform: shared(interner, w.platform),
        is_https: w.is_https,
        event_type: word(interner, &event_type),
        duration: w.duration,
        timestamp: w.timestamp,
        triggerable: w.triggerable,
        parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const FULL: &str = r#"{"event_id":"evt_1","user_id":"user_0000001","domain":"shop.example.com","is_first_in_visit":true,"is_last_in_visit":false,"is_first_event":false,"is_current":true,"event_name":"home_page","event_displayname":"Home Page","integration":"web","app":"main_app","platform":"web","is_https":true,"event_type":"page_view","duration":12,"timestamp":1764000000000,"triggerable":true,"parameters":{"custom_params":{"page_title":"Home","value":1.5},"utm_source":"google","utm_campaign":"","utm_content":"banner","utm_medium":"cpc","utm_term":"","utm_id":"c001"},"unknown":[1,2]}"#;

    /// serde's first pass lets half of a surrogate pair through (it does not decode
    /// escapes); the parameters' check decodes utm_* strings and refuses it, as it did
    /// before the quick look at parameters existed (found by a trial: such events
    /// passed, and every rule reading their parameters failed).
    #[test]
    fn a_lone_surrogate_in_a_utm_value_is_bad_json() {
        for (params, error) in [
            (r#"{"utm_medium":"\ud800"}"#, "unexpected end of hex escape"),
            (
                r#"{"utm_source":"ok","utm_term":"\udc00x"}"#,
                "lone leading surrogate",
            ),
        ] {
            let msg = format!(r#"{{"user_id":"u","event_type":"c","parameters":{params}}}"#);
            for mut d in [Decoder::default(), Decoder::default().strict_types(true)] {
                let Err(DecodeError::Json(e)) = d.decode(msg.as_bytes()) else {
                    panic!("{msg} decoded");
                };
                assert!(e.contains(error), "{e}");
                assert!(e.starts_with("`parameters`: "), "{e}");
                assert!(e.contains("half of a UTF-16 surrogate pair"), "{e}");
            }
        }
        let well_typed = br#"{"user_id":"u","event_type":"c","event_name":"x\udc00"}"#;
        let Err(DecodeError::Json(e)) = decode(well_typed) else {
            panic!("decoded");
        };
        assert!(e.contains("half of a UTF-16 surrogate pair"), "{e}");
        assert!(e.contains(" at line 1 column "), "{e}");
        let fine = br#"{"user_id":"u","event_type":"c","parameters":{"utm_id":"\u00e9","custom_params":{"x":"\ud800"}}}"#;
        let ev = decode(fine).unwrap();
        assert!(ev.parameters.unwrap().text().contains(r#""x":"\ud800""#));
    }

    #[test]
    fn decodes_every_field_of_the_wire_format() {
        let ev = decode(FULL.as_bytes()).unwrap();
        assert_eq!(ev.event_id.as_deref(), Some("evt_1"));
        assert_eq!(&*ev.event_type, "page_view");
        assert!(ev.is_first_in_visit && ev.is_https && ev.triggerable && !ev.is_first_event);
        assert_eq!(ev.duration, 12);
        assert_eq!(ev.timestamp, 1_764_000_000_000);
        let p = ev.parameters.unwrap();
        assert!(p.text().contains(r#""utm_source":"google""#));
    }

    #[test]
    fn strings_without_escapes_are_borrowed_from_the_input() {
        let w: WireEvent<'_> = serde_json::from_str(FULL).unwrap();
        assert!(matches!(w.user_id, Some(Cow::Borrowed("user_0000001"))));
        let w: WireEvent<'_> = serde_json::from_str(r#"{"user_id":"a\u0062"}"#).unwrap();
        assert!(matches!(w.user_id, Some(Cow::Owned(ref s)) if s == "ab"));
    }

    /// Short names, types, platforms ... are kept in place; longer ones are one copy
    /// a decoder shares.
    #[test]
    fn repeated_strings_are_shared_by_a_decoder() {
        let mut d = Decoder::default();
        let a = d.decode(FULL.as_bytes()).unwrap();
        let b = d.decode(FULL.as_bytes()).unwrap();
        assert!(a.event_type.shared().is_none() && a.platform.as_ref().unwrap().shared().is_none());
        assert_eq!(a, b);
        let long = FULL.replace(
            r#""platform":"web""#,
            r#""platform":"a-platform-of-thirty-bytes""#,
        );
        let (a, b) = (
            d.decode(long.as_bytes()).unwrap(),
            d.decode(long.as_bytes()).unwrap(),
        );
        let shared = |e: &UserEvent| e.platform.as_ref().unwrap().shared().unwrap().clone();
        assert!(std::sync::Arc::ptr_eq(&shared(&a), &shared(&b)));
        assert_eq!(a.platform.as_deref(), Some("a-platform-of-thirty-bytes"));
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let ev = decode(br#"{"user_id":"a\/b \u00e9","event_type":"x\"y"}"#).unwrap();
        assert_eq!(&*ev.user_id, "a/b é");
        assert_eq!(&*ev.event_type, "x\"y");
    }

    #[test]
    fn invalid_messages_are_classified() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"   ", "empty"),
            (b"not json", "bad_json"),
            (b"[]", "bad_json"),
            (br#"[null, "u1", null, false, false, false, false, null, null, null, null, null, false, "click"]"#, "bad_json"),
            (br#"{"event_id": "broken""#, "bad_json"),
            (br#"{"user_id": [7], "event_type": "click"}"#, "bad_json"),
            (br#"{"user_id": {"id": 7}, "event_type": "click"}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","timestamp":"1.5"}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","timestamp":"12abc"}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","timestamp":true}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","timestamp":99999999999999999999}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","timestamp":1e300}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","is_https":"yes"}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","is_https":1.0}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","duration":[]}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","parameters":[]}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","parameters":"x"}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","parameters":{"utm_source":[3]}}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","parameters":{"custom_params":"x"}}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","parameters":{"utm_id":1,"custom_params":"x"}}"#, "bad_json"),
            (br#"{"user_id":"u","event_type":"c","parameters":{"utm_id":1,"utm_id":"2"}}"#, "bad_json"),
            (br#"{"user_id":7,"user_id":"b","event_type":"c"}"#, "bad_json"),
            (br#"{"event_type": "click"}"#, "missing_field"),
            (br#"{"user_id": "user_0000001"}"#, "missing_field"),
            (br#"{"user_id": null, "event_type": "click"}"#, "missing_field"),
            (br#"{"user_id": "", "event_type": "click"}"#, "missing_field"),
            (br#"{"user_id": "u", "event_type": ""}"#, "missing_field"),
            (br#"{"user_id": 7, "event_type": ""}"#, "missing_field"),
            (b"\xff\xfe{}", "not_utf8"),
        ];
        for (input, reason) in cases {
            let got = decode(input);
            assert_eq!(
                got.as_ref().map_err(|e| e.reason()),
                Err(*reason),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// Found by a trial: a message a producer's encoder began with a byte order mark
    /// was refused as `not a JSON object`; Jackson skips the mark.
    #[test]
    fn a_leading_byte_order_mark_is_skipped_as_jackson_skips_it() {
        let plain = decode(FULL.as_bytes()).unwrap();
        let marked = format!("\u{feff}{FULL}");
        assert_eq!(decode(marked.as_bytes()), Ok(plain));
        assert_eq!(decode("\u{feff}".as_bytes()), Err(DecodeError::Empty));
        let inside = format!("{{\u{feff}{}", &FULL[1..]);
        assert_eq!(decode(inside.as_bytes()).unwrap_err().reason(), "bad_json");
    }

    /// Found by a trial: a form feed before or after the object was trimmed away, and
    /// the message taken; JSON's whitespace is space, tab, CR and LF, and Jackson
    /// refuses a form feed between tokens.
    #[test]
    fn only_jsons_whitespace_is_trimmed_around_a_message() {
        let plain = decode(FULL.as_bytes()).unwrap();
        let spaced = format!(" \t\r\n{FULL} \t\r\n");
        assert_eq!(decode(spaced.as_bytes()), Ok(plain));
        for fed in [
            format!("\u{c}{FULL}"),
            format!("{FULL}\u{c}"),
            format!("\u{b}{FULL}"),
        ] {
            assert_eq!(
                decode(fed.as_bytes()).unwrap_err().reason(),
                "bad_json",
                "{fed}"
            );
        }
        assert_eq!(decode(b" \r\n\t"), Err(DecodeError::Empty));
        assert_eq!(decode(b"\x0c").unwrap_err().reason(), "bad_json");
    }

    /// Found by a trial: a number too large for a double in a string field (or a
    /// `utm_*`) was refused as out of range; the field takes its text, as it takes any
    /// number's. An integer field cannot hold it, and strict types refuse it as before.
    #[test]
    fn a_number_past_a_double_in_a_string_field_is_its_text() {
        let msg = br#"{"user_id":1e400,"event_type":"click","parameters":{"utm_id":-1e400}}"#;
        let ev = decode(msg).unwrap();
        assert_eq!(&*ev.user_id, "1e400");
        assert!(
            ev.parameters
                .unwrap()
                .text()
                .contains(r#""utm_id":"-1e400""#)
        );
        let long = br#"{"user_id":"u","event_type":"click","duration":1e400}"#;
        assert_eq!(decode(long).unwrap_err().reason(), "bad_json");
        let strict = Decoder::default().strict_types(true).decode(msg);
        assert_eq!(strict.unwrap_err().reason(), "bad_json");
    }

    #[test]
    fn nulls_in_primitive_fields_read_as_defaults_like_jackson() {
        let ev = decode(br#"{"user_id":"u","event_type":"c","timestamp":null,"is_https":null,"parameters":null}"#).unwrap();
        assert_eq!(ev.timestamp, 0);
        assert!(!ev.is_https);
        assert!(ev.parameters.is_none());
    }

    #[test]
    fn empty_user_id_or_event_type_is_a_missing_field() {
        for (msg, field) in [
            (r#"{"user_id":"","event_type":"click"}"#, "user_id"),
            (r#"{"user_id":"u","event_type":""}"#, "event_type"),
            (r#"{"user_id":"","event_type":""}"#, "user_id"),
        ] {
            assert_eq!(
                decode(msg.as_bytes()),
                Err(DecodeError::MissingField(field)),
                "{msg}"
            );
        }
        // Not empty: a space is a user like any other.
        assert_eq!(
            &*decode(br#"{"user_id":" ","event_type":"c"}"#)
                .unwrap()
                .user_id,
            " "
        );
    }

    #[test]
    fn scalars_of_another_type_are_coerced_like_jackson() {
        let ev = decode(br#"{"event_id":12,"user_id":12345,"event_type":true,"domain":1.50,"timestamp":"1704067200000","duration":1.9,"is_https":"true","is_current":"TRUE","triggerable":1,"is_first_event":" false ","is_first_in_visit":0,"is_last_in_visit":""}"#).unwrap();
        assert_eq!(ev.event_id.as_deref(), Some("12"));
        assert_eq!(&*ev.user_id, "12345");
        assert_eq!(&*ev.event_type, "true");
        assert_eq!(
            ev.domain.as_deref(),
            Some("1.50"),
            "the number's text as written"
        );
        assert_eq!(ev.timestamp, 1_704_067_200_000);
        assert_eq!(ev.duration, 1, "truncated");
        assert!(ev.is_https && ev.is_current && ev.triggerable);
        assert!(!ev.is_first_event && !ev.is_first_in_visit && !ev.is_last_in_visit);
        let ev = decode(br#"{"user_id":"u","event_type":"c","duration":-1.5,"timestamp":" -12 "}"#)
            .unwrap();
        assert_eq!((ev.duration, ev.timestamp), (-1, -12));
    }

    /// A field read again for a coercion elsewhere in the event, holding half of a
    /// surrogate pair, was kept as its JSON literal (`"\ud800"`, quotes included).
    #[test]
    fn half_a_surrogate_pair_beside_a_coerced_field_is_bad_json() {
        let msg = br#"{"event_id":12,"user_id":"u\ud800","event_type":"c"}"#;
        let Err(e) = decode(msg) else {
            panic!("decoded")
        };
        let e = e.to_string();
        assert!(e.contains("user_id") && e.contains("surrogate"), "{e}");
        let fine = decode(br#"{"event_id":12,"user_id":"u\u00e9","event_type":"c"}"#).unwrap();
        assert_eq!(&*fine.user_id, "u\u{e9}");
    }

    #[test]
    fn a_coerced_event_equals_its_well_typed_twin() {
        let typed = decode(FULL.as_bytes()).unwrap();
        let mistyped = FULL
            .replace(r#""duration":12"#, r#""duration":"12""#)
            .replace(
                r#""timestamp":1764000000000"#,
                r#""timestamp":1764000000000.0"#,
            )
            .replace(r#""is_https":true"#, r#""is_https":"true""#)
            .replace(r#""utm_id":"c001""#, r#""utm_id":1001"#);
        let coerced = decode(mistyped.as_bytes()).unwrap();
        let p = coerced.parameters.as_ref().unwrap().text();
        assert!(p.contains(r#""utm_id":"1001""#), "{p}");
        assert!(
            p.contains(r#""custom_params":{"page_title":"Home","value":1.5}"#),
            "{p}"
        );
        let twin = decode(FULL.replace(r#""c001""#, r#""1001""#).as_bytes()).unwrap();
        assert_eq!(coerced, twin);
        assert_ne!(coerced, typed);
    }

    #[test]
    fn utm_parameters_become_strings_and_the_rest_is_kept_as_it_came() {
        let ev = decode(br#"{"user_id":"u","event_type":"c","parameters":{"z":[1, 2],"utm_source":true,"utm_id":-1.50,"custom_params":null,"utm_term":null,"x\"y":"\u00e9"}}"#).unwrap();
        assert_eq!(
            ev.parameters.unwrap().text(),
            r#"{"z":[1, 2],"utm_source":"true","utm_id":"-1.50","custom_params":null,"utm_term":null,"x\"y":"\u00e9"}"#
        );
    }

    #[test]
    fn strict_types_refuses_every_coercion() {
        let mut strict = Decoder::default().strict_types(true);
        for msg in [
            r#"{"user_id": 7, "event_type": "click"}"#,
            r#"{"user_id":"u","event_type":"c","timestamp":"12"}"#,
            r#"{"user_id":"u","event_type":"c","timestamp":1.5}"#,
            r#"{"user_id":"u","event_type":"c","is_https":"true"}"#,
            r#"{"user_id":"u","event_type":"c","duration":"1"}"#,
            r#"{"user_id":"u","event_type":"c","parameters":{"utm_source":3}}"#,
        ] {
            assert!(decode(msg.as_bytes()).is_ok(), "coerced by default: {msg}");
            let got = strict.decode(msg.as_bytes()).map_err(|e| e.reason());
            assert_eq!(got, Err("bad_json"), "{msg}");
        }
        let empty = strict.decode(br#"{"user_id":"","event_type":"c"}"#);
        assert_eq!(empty, Err(DecodeError::MissingField("user_id")));
    }

    #[test]
    fn what_strict_decoding_accepts_coercion_accepts_unchanged() {
        let mut strict = Decoder::default().strict_types(true);
        let mut coercing = Decoder::default();
        let demo = include_str!("../config/demo/events.jsonl");
        let mut accepted = 0;
        for line in demo.lines().chain([FULL]) {
            if let Ok(ev) = strict.decode(line.as_bytes()) {
                assert_eq!(coercing.decode(line.as_bytes()), Ok(ev), "{line}");
                accepted += 1;
            }
        }
        assert!(accepted > 1900, "{accepted}");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let got = decode(br#"{"user_id":"a","user_id":"b","event_type":"c"}"#);
        assert_eq!(got.map_err(|e| e.reason()), Err("bad_json"));
    }
}
