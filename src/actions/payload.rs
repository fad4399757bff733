use serde::Serialize;

use super::body_json;
use crate::history::{History, write_u64};
use crate::model::{EnrichedEvent, Profile, UserEvent, Visit};

/// The webhook body of the Flink job: `{"event", "userProfile", "currentVisit",
/// "eventHistory", "triggeredAt"}`, inner objects with their snake_case JSON names.
#[derive(Serialize)]
pub struct Payload<'a> {
    pub event: &'a UserEvent,
    #[serde(rename = "userProfile")]
    pub user_profile: &'a Profile,
    #[serde(rename = "currentVisit")]
    pub current_visit: Option<&'a Visit>,
    #[serde(rename = "eventHistory")]
    pub event_history: &'a History,
    #[serde(rename = "triggeredAt")]
    pub triggered_at: u64,
}

impl<'a> Payload<'a> {
    pub fn new(ev: &'a EnrichedEvent, triggered_at: u64) -> Self {
        Payload {
            event: &ev.event,
            user_profile: &ev.profile,
            current_visit: ev.visit.as_deref(),
            event_history: &ev.history,
            triggered_at,
        }
    }

    /// The body, byte for byte what serde_json writes for this struct, written by hand
    /// (`body_json`; the history, most of it, straight from its compact form).
    pub fn to_json(&self) -> Vec<u8> {
        // Sized for the usual body up front (entries' JSON is about three times their
        // compact form): growing a ~30 KB buffer by doubling copied it several times.
        let mut out = Vec::with_capacity(2048 + 4 * self.event_history.encoded_len());
        out.extend_from_slice(b"{\"event\":");
        body_json::event(&mut out, self.event);
        out.extend_from_slice(b",\"userProfile\":");
        body_json::profile(&mut out, self.user_profile);
        out.extend_from_slice(b",\"currentVisit\":");
        body_json::visit(&mut out, self.current_visit);
        out.extend_from_slice(b",\"eventHistory\":");
        self.event_history.write_json(&mut out);
        out.extend_from_slice(b",\"triggeredAt\":");
        write_u64(&mut out, self.triggered_at);
        out.push(b'}');
        out
    }

    pub fn to_pretty_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProfileData, UserState};

    #[test]
    fn body_has_the_flink_jobs_shape() {
        let ev = crate::wire::decode(
            br#"{"event_id":"e1","user_id":"u1","event_type":"page_view","timestamp":7,"parameters":{"custom_params":{"a":1},"utm_source":"g"}}"#,
        )
        .unwrap();
        let state = UserState::from_profile(
            ProfileData {
                profile: Profile {
                    country: Some("US".into()),
                    ..Default::default()
                },
                visit: Some(Visit {
                    actions: 2,
                    ..Default::default()
                }),
                history: Default::default(),
            },
            0,
        );
        let enriched = EnrichedEvent::snapshot(ev, &state, u64::MAX);
        let v: serde_json::Value =
            serde_json::from_slice(&Payload::new(&enriched, 99).to_json()).unwrap();
        assert_eq!(v["event"]["event_type"], "page_view");
        assert_eq!(v["event"]["parameters"]["custom_params"]["a"], 1);
        assert_eq!(v["event"]["is_https"], false);
        assert_eq!(v["userProfile"]["country"], "US");
        assert_eq!(v["currentVisit"]["actions"], 2);
        assert_eq!(v["eventHistory"], serde_json::json!([]));
        assert_eq!(v["triggeredAt"], 99);
    }
}
