use std::cell::Cell;

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
        // Sized up front from what this thread's bodies took (`Sizing`): a ~30 KB body
        // grown by doubling is copied once or twice, ~3,000 instructions a call.
        let sizing = SIZING.get();
        let encoded = self.event_history.encoded_len();
        let mut out = Vec::with_capacity(sizing.capacity(encoded));
        out.extend_from_slice(b"{\"event\":");
        body_json::event(&mut out, self.event);
        out.extend_from_slice(b",\"userProfile\":");
        body_json::profile(&mut out, self.user_profile);
        out.extend_from_slice(b",\"currentVisit\":");
        body_json::visit(&mut out, self.current_visit);
        out.extend_from_slice(b",\"eventHistory\":");
        let history_at = out.len();
        self.event_history.write_json(&mut out);
        let history = out.len() - history_at;
        out.extend_from_slice(b",\"triggeredAt\":");
        write_u64(&mut out, self.triggered_at);
        out.push(b'}');
        SIZING.set(sizing.after(out.len() - history, history, encoded));
        fitted(out)
    }

    pub fn to_pretty_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

/// How big to make a body's buffer: the bytes the rest of a body took, and the JSON per
/// byte of compact history (in sixteenths), as this thread's recent bodies had them:
/// up at once to a bigger body's, down by a sixteenth of the difference a smaller one
/// (bodies alike get buffers that fit; after an outsized one, smaller ones do not keep
/// its size), each bounded.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sizing {
    rest: usize,
    per_byte_16ths: usize,
}

/// Bounds on what `Sizing` learns: the rest of a body, and JSON per compact byte.
const MAX_REST: usize = 16 << 10;
const MAX_PER_BYTE_16THS: usize = 16 * 16;

thread_local! {
    static SIZING: Cell<Sizing> = const {
        Cell::new(Sizing {
            rest: 2048,
            per_byte_16ths: 4 * 16,
        })
    };
}

impl Sizing {
    fn capacity(self, encoded: usize) -> usize {
        self.rest + encoded * self.per_byte_16ths / 16
    }

    /// After a body of `rest` bytes besides `history` bytes of history JSON, written
    /// from `encoded` compact bytes; with a sixteenth to spare.
    fn after(self, rest: usize, history: usize, encoded: usize) -> Sizing {
        let per_byte = (history * 16).div_ceil(encoded.max(1)) + 1;
        Sizing {
            rest: follow(self.rest, rest + rest / 16).min(MAX_REST),
            per_byte_16ths: follow(self.per_byte_16ths, per_byte).min(MAX_PER_BYTE_16THS),
        }
    }
}

/// `seen` if it is more than `was`, else `was` moved a sixteenth of the way to it.
fn follow(was: usize, seen: usize) -> usize {
    match seen >= was {
        true => seen,
        false => was - (was - seen).div_ceil(16),
    }
}

/// A body whose buffer is more than half as big again as the body: given back down to
/// its size (bodies wait in queues and in flight, each with its buffer).
fn fitted(mut body: Vec<u8>) -> Vec<u8> {
    if body.capacity() > body.len() + body.len() / 2 {
        body.shrink_to_fit();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProfileData, UserState};

    /// A body's buffer is sized from the bodies before: big enough for one like them
    /// (no growing), back down to the usual size after an outsized one, never past the
    /// bounds.
    #[test]
    fn a_body_is_sized_from_the_ones_before() {
        let first = Sizing {
            rest: 2048,
            per_byte_16ths: 64,
        };
        let usual = first.after(1200, 33_000, 5_400);
        assert!(usual.capacity(5_400) >= 1200 + 33_000, "{usual:?}");
        assert!(usual.capacity(5_400) < 2048 + 33_000 * 9 / 8, "{usual:?}");
        let huge = usual.after(1 << 30, 1 << 30, 1);
        assert_eq!(huge.rest, MAX_REST);
        assert_eq!(huge.per_byte_16ths, MAX_PER_BYTE_16THS);
        let mut back = huge;
        for _ in 0..100 {
            back = back.after(1200, 33_000, 5_400);
        }
        let (need, got) = (1200 + 33_000, back.capacity(5_400));
        assert!(got >= need && got < need + need / 8, "{need} {got}");
        assert_eq!(
            first.after(10, 0, 0).capacity(0),
            2048 - (2048 - 10_usize).div_ceil(16)
        );
    }

    /// A body's buffer is at most half as big again as the body, whatever it was made
    /// for; one that fits keeps its place.
    #[test]
    fn a_body_does_not_keep_a_buffer_much_bigger_than_itself() {
        let mut big = Vec::with_capacity(1 << 20);
        big.extend_from_slice(&[b'x'; 1000]);
        let body = fitted(big);
        assert_eq!(body.len(), 1000);
        assert!(body.capacity() <= 1500, "{}", body.capacity());
        let mut close = Vec::with_capacity(1100);
        close.extend_from_slice(&[b'x'; 1000]);
        let at = close.as_ptr();
        let body = fitted(close);
        assert_eq!((body.as_ptr(), body.capacity()), (at, 1100));
    }

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
