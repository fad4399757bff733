//! A rule's trial run before the job starts: it is evaluated on a built-in event of a
//! known user, and on the empty state an unknown user (or a failed look-up) gets.
//! An error here is likely on real events too (`visit.actions` when there is no visit;
//! a result that is not a bool), but not certain (the data may never take that shape),
//! so it is a warning, not a refusal.

use std::sync::Arc;

use super::{EvalError, Filter};
use crate::model::{
    EnrichedView, HistoryEntry, Profile, ProfileData, RawJson, UserEvent, UserState, Visit,
};

const PARAMETERS: &str = r#"{"custom_params":{"page_title":"Home","value":12},"utm_source":"newsletter","utm_campaign":"spring","utm_content":"banner","utm_medium":"email","utm_term":"shoes","utm_id":"42"}"#;

/// Each state the rule is tried on, described as the warning names it.
const KNOWN_USER: &str = "the sample event of a known user (profile, visit, history)";
const EMPTY: &str = "the empty state (an unknown user or a failed look-up: empty profile, no visit, no history but the event)";

/// Warnings, one per sample state the rule fails on, naming the script's place.
pub fn run(filter: &Filter, origin: &str) -> Vec<String> {
    let event = sample_event();
    let known = applied(&event, known_user(&event));
    let empty = applied(&event, UserState::empty(0));
    let mut warnings = Vec::new();
    for (label, state) in [(KNOWN_USER, &known), (EMPTY, &empty)] {
        let view = EnrichedView {
            event: &event,
            state,
        };
        if let Err(e) = filter.evaluate(view) {
            warnings.push(describe(origin, label, e));
        }
    }
    warnings
}

fn describe(origin: &str, label: &str, e: EvalError) -> String {
    let consequence = "such events would be rejected as script errors";
    match e {
        EvalError::Rhai(mut e) => {
            let pos = e.position();
            e.clear_position();
            let place = match (pos.line(), pos.position()) {
                (Some(line), Some(column)) => format!("{origin}:{line}:{column}"),
                (Some(line), None) => format!("{origin}:{line}"),
                _ => origin.to_string(),
            };
            format!("{place}: fails on {label}: {e} ({consequence})")
        }
        not_bool => format!("{origin}: on {label}: {not_bool} ({consequence})"),
    }
}

/// An event with every field set.
fn sample_event() -> UserEvent {
    UserEvent {
        event_id: Some("evt_sample_2".into()),
        user_id: "user_sample".into(),
        domain: Some("shop.example.com".into()),
        is_first_in_visit: false,
        is_last_in_visit: false,
        is_first_event: false,
        is_current: true,
        event_name: Some("product_page".into()),
        event_displayname: Some("Product page".into()),
        integration: Some("web".into()),
        app: Some("shop".into()),
        platform: Some("web".into()),
        is_https: true,
        event_type: "page_view".into(),
        duration: 1200,
        timestamp: 1_795_826_014_200,
        triggerable: true,
        parameters: RawJson::parse(PARAMETERS).ok(),
    }
}

/// A user the Profile API knows, with a visit and an earlier event.
fn known_user(event: &UserEvent) -> UserState {
    let some = |s: &str| Some(s.into());
    UserState::from_profile(
        ProfileData {
            profile: Profile {
                user_id: some(&event.user_id),
                country: some("US"),
                city: some("Boston"),
                language: some("en"),
                continent: some("NA"),
                timezone: some("America/New_York"),
            },
            visit: Some(Visit {
                uuid: some("visit_sample"),
                timestamp: event.timestamp - 60_000,
                os: some("Linux"),
                browser: some("Firefox"),
                device: some("desktop"),
                landing_page: some("/sale"),
                referrer_type: some("search"),
                referrer_url: some("https://search.example.com/"),
                referrer_query: some("shoes"),
                duration: 60,
                actions: 3,
                is_first_visit: false,
                screen: some("1920x1080"),
                ip: some("192.0.2.1"),
            }),
            history: vec![HistoryEntry {
                event_id: Some("evt_sample_1".into()),
                event_name: Some("home_page".into()),
                event_type: Some("page_view".into()),
                timestamp: event.timestamp - 60_000,
                parameters: event.parameters.clone(),
            }]
            .into(),
        },
        0,
    )
}

/// `state` after `event` was applied, as the state operator judges it: the event is the
/// last entry of the history (the visit's counters do not matter here).
fn applied(event: &UserEvent, mut state: UserState) -> UserState {
    Arc::make_mut(&mut state.history).push_event(event);
    state
}

#[cfg(test)]
mod tests {
    use super::super::FilterLimits;
    use super::*;

    fn warnings(script: &str) -> Vec<String> {
        let f = Filter::compile(script, "rule.rhai", &FilterLimits::default()).unwrap();
        run(&f, "rule.rhai")
    }

    #[test]
    fn the_samples_are_a_known_user_and_the_empty_checkpoint() {
        let script = r#"event.parameters.utm_source == "newsletter" && user.country == "US"
            && visit.actions > 1 && history.len() == 2 && history[1].event_id == event.event_id"#;
        let f = Filter::compile(script, "t", &FilterLimits::default()).unwrap();
        let event = sample_event();
        let known = applied(&event, known_user(&event));
        let view = |state| EnrichedView {
            event: &event,
            state,
        };
        assert!(matches!(f.evaluate(view(&known)), Ok(true)));
        let empty = applied(&event, UserState::empty(0));
        let f = Filter::compile(
            "visit == () && user.country == () && history.len() == 1",
            "t",
            &FilterLimits::default(),
        )
        .unwrap();
        assert!(matches!(f.evaluate(view(&empty)), Ok(true)));
        // On the empty state `user.country == "US"` is false: `visit` is not read.
        assert!(warnings(script).is_empty());
    }

    #[test]
    fn a_rule_failing_on_the_empty_checkpoint_is_a_warning_naming_the_place() {
        let w = warnings("event.duration > 0 &&\n  visit.actions > 1");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("rule.rhai:2:"), "{w:?}");
        assert!(w[0].contains("the empty state"), "{w:?}");
    }

    #[test]
    fn a_result_that_is_not_a_bool_is_a_warning_for_both_states() {
        let w = warnings("event.duration + 1");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("not a bool"), "{w:?}");
    }
}
