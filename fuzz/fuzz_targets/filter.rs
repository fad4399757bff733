//! Filters over arbitrary events: the first line of the input is a message (decoded as
//! the job would), the rest picks the user's data. For rules of the natively compiled
//! subset, the native tree and the rhai interpreter must agree (fail-safe: an error is
//! a rejection); nothing may panic, and a rule outside the subset runs interpreted.
#![no_main]

use event_trigger::wire::Decoder;
use event_trigger::filter::{Filter, FilterLimits, Verdict};
use event_trigger::model::{EnrichedView, HistoryEntry, Profile, ProfileData, UserState, Visit};
use libfuzzer_sys::fuzz_target;

const RULES: &[&str] = &[
    r#"event.eventType == "page_view" && user.country == "US""#,
    r#"history.filter(|h| h.event_type == "page_view").len() >= 3"#,
    r#"!(event.is_https) || visit.actions > 2 && event.duration >= 0"#,
    r#"event.domain == user.city || event.platform != () && history.len() < 2"#,
    r#"visit.os == "ios" && event.timestamp > visit.timestamp"#,
    r#"user.country in ["US", "DE"] && event.event_name.len() > 3"#,
];

thread_local! {
    // Compiled once: rhai's engine is not `Sync`, and libFuzzer runs on one thread.
    static FILTERS: Vec<(String, Filter)> = RULES
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = Filter::compile(r, "fuzz", &FilterLimits::default())
                .unwrap_or_else(|e| panic!("{r}: {e}"));
            // All but the last are in the native subset, or the check would be empty.
            assert_eq!(f.is_native(), i + 1 < RULES.len(), "{r}: native?");
            (r.to_string(), f)
        })
        .collect();
}

fn passes(v: &Verdict) -> bool {
    matches!(v, Verdict::Pass)
}

fuzz_target!(|data: &[u8]| {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(event) = Decoder::default().decode(line) else {
        return;
    };
    let byte = |i: usize| rest.get(i).copied().unwrap_or(0);
    let text = |i: usize| -> Option<String> {
        match byte(i) % 4 {
            0 => None,
            1 => Some("US".into()),
            2 => Some(event.event_type.to_string()),
            _ => Some(
                String::from_utf8_lossy(rest.get(i..(i + 8).min(rest.len())).unwrap_or(&[])).into(),
            ),
        }
    };
    let visit = (byte(0) % 3 != 0).then(|| Visit {
        actions: i64::from(byte(1)) - 3,
        timestamp: event.timestamp.wrapping_sub(i64::from(byte(2))),
        os: text(3),
        ..Default::default()
    });
    let history = (0..byte(4) % 6)
        .map(|i| HistoryEntry {
            event_id: event.event_id.clone(),
            event_name: event.event_name.clone(),
            event_type: if i % 2 == 0 {
                Some(event.event_type.clone())
            } else {
                text(5).map(Into::into)
            },
            timestamp: event.timestamp,
            parameters: event.parameters.clone(),
        })
        .collect();
    let state = UserState::from_profile(
        ProfileData {
            profile: Profile {
                country: text(6),
                city: text(7),
                ..Default::default()
            },
            visit,
            history,
        },
        0,
    );
    let view = EnrichedView {
        event: &event,
        state: &state,
    };
    FILTERS.with(|filters| {
        for (rule, f) in filters {
            let (judged, interpreted) = (f.judge(view), f.interpret(view));
            assert_eq!(
                passes(&judged),
                passes(&interpreted),
                "{rule}: native {judged:?}, rhai {interpreted:?}"
            );
        }
    });
});
