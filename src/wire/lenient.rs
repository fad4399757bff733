//! The slow path of decoding: a message that the typed parse refused for a value of the
//! wrong type is read again, field by field, with Jackson's coercions (`crate::coerce`),
//! as the original job's `ObjectMapper` read it. Well-typed messages never come here, so
//! they pay nothing for it.

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{DecodeError, WireEvent, json_err};
use crate::coerce::{self, CoerceError};
use crate::model::RawJson;

/// Every field of the event as its raw JSON value (`None`: absent or `null`). Derived,
/// so a repeated field is refused here as in the typed parse.
#[derive(Deserialize)]
pub(super) struct RawEvent<'a> {
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    domain: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_first_in_visit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_last_in_visit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_first_event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_current: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_displayname: Option<&'a RawValue>,
    #[serde(borrow, default)]
    integration: Option<&'a RawValue>,
    #[serde(borrow, default)]
    app: Option<&'a RawValue>,
    #[serde(borrow, default)]
    platform: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_https: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    duration: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    triggerable: Option<&'a RawValue>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
}

fn field_err(name: &'static str) -> impl FnOnce(CoerceError) -> DecodeError {
    move |e| DecodeError::Json(format!("`{name}`: {e}"))
}

fn text<'a>(
    name: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match raw {
        Some(r) => coerce::text(r).map_err(field_err(name)),
        None => Ok(None),
    }
}

fn long(name: &'static str, raw: Option<&RawValue>) -> Result<i64, DecodeError> {
    raw.map_or(Ok(0), |r| coerce::long(r).map_err(field_err(name)))
}

fn boolean(name: &'static str, raw: Option<&RawValue>) -> Result<bool, DecodeError> {
    raw.map_or(Ok(false), |r| coerce::boolean(r).map_err(field_err(name)))
}

impl<'a> RawEvent<'a> {
    /// The event with each field coerced to its type; the first field that cannot be
    /// makes the message invalid, as it made Jackson fail.
    pub(super) fn coerce(self) -> Result<WireEvent<'a>, DecodeError> {
        Ok(WireEvent {
            event_id: text("event_id", self.event_id)?,
            user_id: text("user_id", self.user_id)?,
            domain: text("domain", self.domain)?,
            is_first_in_visit: boolean("is_first_in_visit", self.is_first_in_visit)?,
            is_last_in_visit: boolean("is_last_in_visit", self.is_last_in_visit)?,
            is_first_event: boolean("is_first_event", self.is_first_event)?,
            is_current: boolean("is_current", self.is_current)?,
            event_name: text("event_name", self.event_name)?,
            event_displayname: text("event_displayname", self.event_displayname)?,
            integration: text("integration", self.integration)?,
            app: text("app", self.app)?,
            platform: text("platform", self.platform)?,
            is_https: boolean("is_https", self.is_https)?,
            event_type: text("event_type", self.event_type)?,
            duration: long("duration", self.duration)?,
            timestamp: long("timestamp", self.timestamp)?,
            triggerable: boolean("triggerable", self.triggerable)?,
            parameters: self.parameters,
            checked_parameters: None,
        })
    }
}

/// The members of a JSON object in their order, values raw.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for MembersVisitor<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some(member) = map.next_entry::<String, &'a RawValue>()? {
                    out.push(member);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(MembersVisitor(PhantomData))
    }
}

/// The `String` members of the original's `Parameters`.
pub(super) const UTM: [&str; 6] = [
    "utm_source",
    "utm_campaign",
    "utm_content",
    "utm_medium",
    "utm_term",
    "utm_id",
];

/// `parameters` (an object) whose `utm_*` members are not all strings: each is coerced
/// to its text and the object written again with it, since the original held them as
/// `String`s and passed them on as such (in the webhook body, to the rule). Everything
/// else is kept as it came, in its order.
pub(super) fn parameters(raw: &RawValue) -> Result<RawJson, DecodeError> {
    let Members(members) = serde_json::from_str::<Members<'_>>(raw.get()).map_err(json_err)?;
    let mut seen: Vec<&str> = Vec::new();
    let mut out = String::with_capacity(raw.get().len() + 16);
    out.push('{');
    for (i, (key, value)) in members.iter().enumerate() {
        let known = key == "custom_params" || UTM.contains(&key.as_str());
        if known && seen.contains(&key.as_str()) {
            return Err(DecodeError::Json(format!("duplicate field `{key}`")));
        }
        seen.push(key.as_str());
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(key.as_str()).to_string());
        out.push(':');
        out.push_str(&member(key, value)?);
    }
    out.push('}');
    RawJson::parse(&out).map_err(json_err)
}

/// The JSON text of one member of `parameters`, coerced if it is a `utm_*` one.
fn member<'v>(key: &str, value: &'v RawValue) -> Result<Cow<'v, str>, DecodeError> {
    let v = value.get();
    if key == "custom_params" && !(v.starts_with('{') || v == "null") {
        return Err(DecodeError::Json(
            "parameters.custom_params must be an object".into(),
        ));
    }
    if !UTM.contains(&key) || v.starts_with('"') || v == "null" {
        return Ok(Cow::Borrowed(v));
    }
    let coerced =
        coerce::text(value).map_err(|e| DecodeError::Json(format!("`parameters.{key}`: {e}")))?;
    Ok(Cow::Owned(
        serde_json::Value::from(coerced.as_deref()).to_string(),
    ))
}
