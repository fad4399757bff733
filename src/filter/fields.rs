//! The fields scripts can read, by their JSON and camelCase names, as one typed value
//! that both evaluators use: the interpreter turns it into a `Dynamic`, the native tree
//! compares it in place.

use crate::history::{self, Entry};
use crate::model::{Profile, RawJson, UserEvent, Visit};

/// A field's value, borrowed from the state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Field<'a> {
    Unit,
    Bool(bool),
    Int(i64),
    Str(&'a str),
    /// `parameters`, an event's or a history entry's: the same compact form.
    Params(history::Params<'a>),
}

fn opt<S: AsRef<str>>(s: &Option<S>) -> Field<'_> {
    s.as_ref().map_or(Field::Unit, |s| Field::Str(s.as_ref()))
}

fn params(p: &Option<RawJson>) -> Field<'_> {
    p.as_ref()
        .map_or(Field::Unit, |p| Field::Params(p.params()))
}

/// `(json name, Flink job's camelCase name)`; one name when they agree. A field may
/// have a second row for the spelling users type when the original's differs from it in
/// more than case (`eventDisplayname`, after the wire's `event_displayname`, and
/// `eventDisplayName`): both are looked up by either evaluator.
pub const EVENT_FIELDS: &[(&str, &str)] = &[
    ("event_id", "eventId"),
    ("user_id", "userId"),
    ("domain", "domain"),
    ("is_first_in_visit", "isFirstInVisit"),
    ("is_last_in_visit", "isLastInVisit"),
    ("is_first_event", "isFirstEvent"),
    ("is_current", "isCurrent"),
    ("event_name", "eventName"),
    ("event_displayname", "eventDisplayname"),
    ("event_displayname", "eventDisplayName"),
    ("integration", "integration"),
    ("app", "app"),
    ("platform", "platform"),
    ("is_https", "isHttps"),
    ("event_type", "eventType"),
    ("duration", "duration"),
    ("timestamp", "timestamp"),
    ("triggerable", "triggerable"),
    ("parameters", "parameters"),
];

/// The field `name` (a JSON name from `EVENT_FIELDS`) of `e`.
pub fn event<'a>(e: &'a UserEvent, name: &str) -> Field<'a> {
    match name {
        "event_id" => opt(&e.event_id),
        "user_id" => Field::Str(&e.user_id),
        "domain" => opt(&e.domain),
        "is_first_in_visit" => Field::Bool(e.is_first_in_visit),
        "is_last_in_visit" => Field::Bool(e.is_last_in_visit),
        "is_first_event" => Field::Bool(e.is_first_event),
        "is_current" => Field::Bool(e.is_current),
        "event_name" => opt(&e.event_name),
        "event_displayname" => opt(&e.event_displayname),
        "integration" => opt(&e.integration),
        "app" => opt(&e.app),
        "platform" => opt(&e.platform),
        "is_https" => Field::Bool(e.is_https),
        "event_type" => Field::Str(&e.event_type),
        "duration" => Field::Int(e.duration),
        "timestamp" => Field::Int(e.timestamp),
        "triggerable" => Field::Bool(e.triggerable),
        "parameters" => params(&e.parameters),
        _ => Field::Unit,
    }
}

pub const PROFILE_FIELDS: &[(&str, &str)] = &[
    ("user_id", "userId"),
    ("country", "country"),
    ("city", "city"),
    ("language", "language"),
    ("continent", "continent"),
    ("timezone", "timezone"),
];

pub fn profile<'a>(p: &'a Profile, name: &str) -> Field<'a> {
    match name {
        "user_id" => opt(&p.user_id),
        "country" => opt(&p.country),
        "city" => opt(&p.city),
        "language" => opt(&p.language),
        "continent" => opt(&p.continent),
        "timezone" => opt(&p.timezone),
        _ => Field::Unit,
    }
}

pub const VISIT_FIELDS: &[(&str, &str)] = &[
    ("uuid", "uuid"),
    ("timestamp", "timestamp"),
    ("os", "os"),
    ("browser", "browser"),
    ("device", "device"),
    ("landing_page", "landingPage"),
    ("referrer_type", "referrerType"),
    ("referrer_url", "referrerUrl"),
    ("referrer_query", "referrerQuery"),
    ("duration", "duration"),
    ("actions", "actions"),
    ("is_first_visit", "isFirstVisit"),
    ("screen", "screen"),
    ("ip", "ip"),
];

pub fn visit<'a>(v: &'a Visit, name: &str) -> Field<'a> {
    match name {
        "uuid" => opt(&v.uuid),
        "timestamp" => Field::Int(v.timestamp),
        "os" => opt(&v.os),
        "browser" => opt(&v.browser),
        "device" => opt(&v.device),
        "landing_page" => opt(&v.landing_page),
        "referrer_type" => opt(&v.referrer_type),
        "referrer_url" => opt(&v.referrer_url),
        "referrer_query" => opt(&v.referrer_query),
        "duration" => Field::Int(v.duration),
        "actions" => Field::Int(v.actions),
        "is_first_visit" => Field::Bool(v.is_first_visit),
        "screen" => opt(&v.screen),
        "ip" => opt(&v.ip),
        _ => Field::Unit,
    }
}

pub const HISTORY_FIELDS: &[(&str, &str)] = &[
    ("event_id", "eventId"),
    ("event_name", "eventName"),
    ("event_type", "eventType"),
    ("timestamp", "timestamp"),
    ("parameters", "parameters"),
];

pub fn history<'a>(h: &Entry<'a>, name: &str) -> Field<'a> {
    let s = |s: Option<&'a str>| s.map_or(Field::Unit, Field::Str);
    match name {
        "event_id" => s(h.event_id),
        "event_name" => s(h.event_name),
        "event_type" => s(h.event_type),
        "timestamp" => Field::Int(h.timestamp),
        "parameters" => h.parameters.map_or(Field::Unit, Field::Params),
        _ => Field::Unit,
    }
}

pub const PARAM_FIELDS: &[(&str, &str)] = &[
    ("custom_params", "customParams"),
    ("utm_source", "utmSource"),
    ("utm_campaign", "utmCampaign"),
    ("utm_content", "utmContent"),
    ("utm_medium", "utmMedium"),
    ("utm_term", "utmTerm"),
    ("utm_id", "utmId"),
];
