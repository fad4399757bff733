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
/// Reads one field of an event: resolved from its name once, when a rule is compiled, so
/// that an evaluation does not match the name again (~40 instructions a field).
pub type EventGetter = for<'a> fn(&'a UserEvent) -> Field<'a>;
pub type ProfileGetter = for<'a> fn(&'a Profile) -> Field<'a>;
pub type VisitGetter = for<'a> fn(&'a Visit) -> Field<'a>;
pub type EntryGetter = for<'a> fn(&Entry<'a>) -> Field<'a>;

/// The getter of the event field with JSON name `name`.
pub fn event_getter(name: &str) -> Option<EventGetter> {
    Some(match name {
        "event_id" => |e| opt(&e.event_id),
        "user_id" => |e| Field::Str(&e.user_id),
        "domain" => |e| opt(&e.domain),
        "is_first_in_visit" => |e| Field::Bool(e.is_first_in_visit),
        "is_last_in_visit" => |e| Field::Bool(e.is_last_in_visit),
        "is_first_event" => |e| Field::Bool(e.is_first_event),
        "is_current" => |e| Field::Bool(e.is_current),
        "event_name" => |e| opt(&e.event_name),
        "event_displayname" => |e| opt(&e.event_displayname),
        "integration" => |e| opt(&e.integration),
        "app" => |e| opt(&e.app),
        "platform" => |e| opt(&e.platform),
        "is_https" => |e| Field::Bool(e.is_https),
        "event_type" => |e| Field::Str(&e.event_type),
        "duration" => |e| Field::Int(e.duration),
        "timestamp" => |e| Field::Int(e.timestamp),
        "triggerable" => |e| Field::Bool(e.triggerable),
        "parameters" => |e| params(&e.parameters),
        _ => return None,
    })
}

pub fn event<'a>(e: &'a UserEvent, name: &str) -> Field<'a> {
    event_getter(name).map_or(Field::Unit, |get| get(e))
}

pub const PROFILE_FIELDS: &[(&str, &str)] = &[
    ("user_id", "userId"),
    ("country", "country"),
    ("city", "city"),
    ("language", "language"),
    ("continent", "continent"),
    ("timezone", "timezone"),
];

/// The getter of the profile field with JSON name `name`.
pub fn profile_getter(name: &str) -> Option<ProfileGetter> {
    Some(match name {
        "user_id" => |p| opt(&p.user_id),
        "country" => |p| opt(&p.country),
        "city" => |p| opt(&p.city),
        "language" => |p| opt(&p.language),
        "continent" => |p| opt(&p.continent),
        "timezone" => |p| opt(&p.timezone),
        _ => return None,
    })
}

pub fn profile<'a>(p: &'a Profile, name: &str) -> Field<'a> {
    profile_getter(name).map_or(Field::Unit, |get| get(p))
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

/// The getter of the visit field with JSON name `name`.
pub fn visit_getter(name: &str) -> Option<VisitGetter> {
    Some(match name {
        "uuid" => |v| opt(&v.uuid),
        "timestamp" => |v| Field::Int(v.timestamp),
        "os" => |v| opt(&v.os),
        "browser" => |v| opt(&v.browser),
        "device" => |v| opt(&v.device),
        "landing_page" => |v| opt(&v.landing_page),
        "referrer_type" => |v| opt(&v.referrer_type),
        "referrer_url" => |v| opt(&v.referrer_url),
        "referrer_query" => |v| opt(&v.referrer_query),
        "duration" => |v| Field::Int(v.duration),
        "actions" => |v| Field::Int(v.actions),
        "is_first_visit" => |v| Field::Bool(v.is_first_visit),
        "screen" => |v| opt(&v.screen),
        "ip" => |v| opt(&v.ip),
        _ => return None,
    })
}

pub fn visit<'a>(v: &'a Visit, name: &str) -> Field<'a> {
    visit_getter(name).map_or(Field::Unit, |get| get(v))
}

pub const HISTORY_FIELDS: &[(&str, &str)] = &[
    ("event_id", "eventId"),
    ("event_name", "eventName"),
    ("event_type", "eventType"),
    ("timestamp", "timestamp"),
    ("parameters", "parameters"),
];

/// The getter of the history entry field with JSON name `name`.
pub fn entry_getter(name: &str) -> Option<EntryGetter> {
    fn s(s: Option<&str>) -> Field<'_> {
        s.map_or(Field::Unit, Field::Str)
    }
    Some(match name {
        "event_id" => |h| s(h.event_id),
        "event_name" => |h| s(h.event_name),
        "event_type" => |h| s(h.event_type),
        "timestamp" => |h| Field::Int(h.timestamp),
        "parameters" => |h| h.parameters.map_or(Field::Unit, Field::Params),
        _ => return None,
    })
}

pub fn history<'a>(h: &Entry<'a>, name: &str) -> Field<'a> {
    entry_getter(name).map_or(Field::Unit, |get| get(h))
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
