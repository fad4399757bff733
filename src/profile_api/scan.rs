//! Profile API answers in the plain form read by a scan, without serde's maps: the
//! snapshot line's `user_id` when it is loaded, and a look-up's profile, visit and
//! history (a snapshot's line, or the HTTP API's three bodies). Values are checked against JSON's grammar as serde checks them
//! (`wire::fast::value`) and read by the same coercions (`crate::coerce`,
//! `wire::checked_parameters`), so what the scan reads is what `Answers` reads. It
//! gives up (`None`) on anything else (escapes, nesting past its depth, a field that
//! does not coerce, a history entry that is not an object, a part named twice), which
//! serde and `Answers` then read as before: their errors and counted skips stay theirs.
//!
//! serde's read of a line into `RawObject` maps (a `String` and a boxed value per
//! member, a map per history entry) was most of a look-up's ~65,000 instructions on the
//! shared workload's profiles.

use std::borrow::Cow;

use super::Skipped;
use super::answer::{self, Fields, PartMembers};
use crate::coerce;
use crate::history::History;
use crate::history::codec;
use crate::model::{Profile, ProfileData, RawJson, Visit};
use crate::wire::fast::{members, parameters, value};
use crate::wire::shape::skip_ws;

/// Values below the line's own members: nested as deep as the event scan allows.
const DEPTH: usize = 1;

/// The whole of `s` as one object (whitespace around it allowed, as serde allows it).
fn line_members<'a>(s: &'a str, member: impl FnMut(&'a str, usize) -> Option<usize>) -> Option<()> {
    let b = s.as_bytes();
    let end = members(s, skip_ws(b, 0), member)?;
    (skip_ws(b, end) == b.len()).then_some(())
}

/// The text of the value at `at`, checked.
fn value_at(s: &str, at: usize) -> Option<&str> {
    let end = value(s.as_bytes(), at, DEPTH)?;
    Some(&s[at..end])
}

/// A snapshot line's `user_id`, if the line is a plain object with it once, as a plain
/// string; `None`: let serde judge the line.
pub(super) fn user_id(line: &str) -> Option<&str> {
    let (mut id, mut twice) = (None, false);
    line_members(line, |key, at| {
        let v = value_at(line, at)?;
        if key == "user_id" {
            twice |= id.is_some();
            id = Some(v);
        }
        Some(at + v.len())
    })?;
    let v = id.filter(|v| !twice && v.starts_with('"'))?;
    Some(&v[1..v.len() - 1])
}

/// The data of a snapshot line as `Answers` reads it, when nothing of it is skipped;
/// `None`: let serde and `Answers` read it.
pub(super) fn answers(line: &str) -> Option<ProfileData> {
    let mut data = ProfileData::default();
    let mut seen = 0u8;
    line_members(line, |key, at| {
        let bit = match key {
            "profile" => 1,
            "visit" => 2,
            "history" => 4,
            _ => return Some(at + value_at(line, at)?.len()),
        };
        // serde refuses a field named twice.
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        if line[at..].starts_with("null") {
            return Some(at + 4);
        }
        match bit {
            1 => fields(line, at, "profile", &mut data.profile, answer::profile),
            2 => fields(
                line,
                at,
                "visit",
                data.visit.insert(Visit::default()),
                answer::visit,
            ),
            _ => history(line, at, &mut data.history),
        }
    })?;
    Some(data)
}

/// The whole of `s` as one value (whitespace around it allowed): `null` (nothing read),
/// or what `read` reads at its start, saying where it ends.
fn whole(s: &str, read: impl FnOnce(usize) -> Option<usize>) -> Option<()> {
    let b = s.as_bytes();
    let at = skip_ws(b, 0);
    let end = if s[at..].starts_with("null") {
        at + 4
    } else {
        read(at)?
    };
    (skip_ws(b, end) == b.len()).then_some(())
}

/// The body of `GET /users/{id}/profile` as `Answers` reads it (`null`: the default).
pub(super) fn profile_answer(s: &str) -> Option<Profile> {
    let mut p = Profile::default();
    whole(s, |at| fields(s, at, "profile", &mut p, answer::profile))?;
    Some(p)
}

/// The body of `GET /users/{id}/visit` as `Answers` reads it.
pub(super) fn visit_answer(s: &str) -> Option<Option<Visit>> {
    let mut v = None;
    whole(s, |at| {
        fields(s, at, "visit", v.insert(Visit::default()), answer::visit)
    })?;
    Some(v)
}

/// The body of `GET /users/{id}/history` as `Answers` reads it.
pub(super) fn history_answer(s: &str) -> Option<History> {
    let mut h = History::default();
    whole(s, |at| history(s, at, &mut h))?;
    Some(h)
}

/// The profile or visit object at `at` read into `out` by `read`, `Answers`' own reader
/// of that part, over the members as found; `None` if it skipped a field. Past the
/// object.
fn fields<T>(
    s: &str,
    at: usize,
    part: &'static str,
    out: &mut T,
    read: fn(&mut Fields<'_>) -> T,
) -> Option<usize> {
    let (pairs, end) = pairs(s, at)?;
    let mut skipped = Skipped::default();
    let mut fields = Fields::new(PartMembers::in_order(&pairs), part, &mut skipped);
    *out = read(&mut fields);
    if !fields.read_as_by_name() {
        // A key read in place came again after it: by name, its last value counts.
        skipped = Skipped::default();
        *out = read(&mut Fields::new(
            PartMembers::Pairs(&pairs),
            part,
            &mut skipped,
        ));
    }
    (skipped == Skipped::default()).then_some(end)
}

/// The members of the object at `at` as key and value text, in order; past it.
fn pairs(s: &str, at: usize) -> Option<(Vec<(&str, &str)>, usize)> {
    let mut pairs = Vec::with_capacity(16);
    let end = members(s, at, |key, at| {
        let v = value_at(s, at)?;
        pairs.push((key, v));
        Some(at + v.len())
    })?;
    Some((pairs, end))
}

fn long(v: &str) -> Option<i64> {
    coerce::long_of(v).ok()
}

/// The array of history entries at `at` into `out`, each written straight into the
/// compact form (an entry read into a `HistoryEntry`, three strings and the parameters
/// allocated, then encoded, took ~1,000 instructions more); past it.
fn history(s: &str, at: usize, out: &mut History) -> Option<usize> {
    let b = s.as_bytes();
    if b.get(at) != Some(&b'[') {
        return None;
    }
    let mut i = skip_ws(b, at + 1);
    if b.get(i) == Some(&b']') {
        return Some(i + 1);
    }
    let mut tokens = Vec::new();
    loop {
        let mut f = EntryFields::default();
        i = skip_ws(b, entry_object(s, i, &mut f, &mut tokens)?);
        f.push_to(out, &tokens);
        match *b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b']' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// A history entry's fields as read.
#[derive(Default)]
struct EntryFields<'a> {
    event_id: Option<Cow<'a, str>>,
    event_name: Option<Cow<'a, str>>,
    event_type: Option<Cow<'a, str>>,
    timestamp: i64,
    parameters: Parameters,
}

/// An entry's `parameters`: none (absent or `null`), the tokens the scan left in its
/// buffer, or read by the typed check (rare).
#[derive(Default)]
enum Parameters {
    #[default]
    None,
    Scanned,
    Checked(RawJson),
}

impl EntryFields<'_> {
    /// Appends the entry; `tokens`: the scan's tokens of its parameters.
    fn push_to(&self, out: &mut History, tokens: &[u8]) {
        out.push_fields(&codec::Fields {
            event_id: self.event_id.as_deref(),
            event_name: self.event_name.as_deref(),
            event_type: self.event_type.as_deref(),
            timestamp: self.timestamp,
            parameters: match &self.parameters {
                Parameters::None => None,
                Parameters::Scanned => Some(tokens),
                Parameters::Checked(p) => Some(p.tokens()),
            },
        });
    }
}

/// The history entry at `at` read into `f` (of a repeated key the last, as `RawObject`
/// keeps it); past it. Its `parameters`, when an object, are checked and tokenized in
/// one pass, as an event's are (`wire::fast::parameters`).
fn entry_object<'a>(
    s: &'a str,
    at: usize,
    f: &mut EntryFields<'a>,
    tokens: &mut Vec<u8>,
) -> Option<usize> {
    members(s, at, |key, at| {
        if key == "parameters" && s.as_bytes().get(at) == Some(&b'{') {
            let (end, plain) = parameters(s, at, tokens)?;
            f.parameters = match plain {
                true => Parameters::Scanned,
                false => checked(s.get(at..end)?)?,
            };
            return Some(end);
        }
        let v = value_at(s, at)?;
        entry(f, key, v)?;
        Some(at + v.len())
    })
}

fn entry<'a>(f: &mut EntryFields<'a>, key: &str, v: &'a str) -> Option<()> {
    match key {
        "event_id" => f.event_id = coerce::text_of(v).ok()?,
        "event_name" => f.event_name = coerce::text_of(v).ok()?,
        "event_type" => f.event_type = coerce::text_of(v).ok()?,
        "timestamp" => f.timestamp = long(v)?,
        "parameters" => f.parameters = checked(v)?,
        _ => {}
    }
    Some(())
}

/// Parameters of an entry read by the typed check, as an event's are.
fn checked(v: &str) -> Option<Parameters> {
    let p = crate::wire::checked_parameters(v, false).ok()?;
    Some(p.map_or(Parameters::None, Parameters::Checked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::Rng;
    use crate::profile_api::Answers;
    use crate::wire::fast::tests::mutate;

    const LINES: [&str; 6] = [
        r#"{"user_id":"user_0000001","profile":{"user_id":"user_0000001","country":"FR","city":"D-city","language":"ja","continent":"EU","timezone":"Europe/Paris"},"visit":{"uuid":"a3d7","timestamp":1763997113640,"os":"Linux","browser":"Chrome","device":"Tablet","landing_page":"/product/42","referrer_type":"search","referrer_url":"https://www.google.com","referrer_query":"shoes","duration":240174,"actions":26,"is_first_visit":true,"screen":"1920x1080","ip":"203.0.113.81"},"history":[{"event_id":"h_1_2","event_name":"buy_button","event_type":"click","timestamp":1762374147213,"parameters":{"custom_params":{"page_title":"Home","value":87.95},"utm_source":"facebook","utm_campaign":"","utm_id":"c005"}},{"event_id":"h_1_1","event_type":"page_view","timestamp":1762554277415,"parameters":null}]}"#,
        r#"{"user_id":"u2","profile":null,"visit":null,"history":[]}"#,
        r#" { "user_id" : "u3" , "profile" : { "country" : 7 , "city" : true , "x" : [ 1 , { } ] , "country" : "US" } , "history" : null } "#,
        r#"{"user_id":"u4","visit":{"timestamp":"1704067200000","duration":1.5,"actions":null,"is_first_visit":"true","uuid":12},"history":[{"event_id":7,"timestamp":"5","parameters":{"utm_source":3,"custom_params":null}}]}"#,
        r#"{"user_id":"u5","profile":{"country":{"code":"US"}},"history":[1,{"timestamp":1.5e3},{"parameters":[1]},{"event_type":"c","timestamp":-0}]}"#,
        r#"{"history":[{"event_id":"a","event_id":"b","timestamp":9223372036854775807}],"user_id":"u6","extra":{"deep":[[[{"a":null}]]]},"visit":{}}"#,
    ];

    /// What serde and `Answers` read of `line`, when they read all of it.
    fn by_serde(line: &str) -> Option<ProfileData> {
        let (data, skipped) = serde_json::from_str::<Answers>(line).ok()?.read();
        (skipped == Default::default()).then_some(data)
    }

    /// Whether the scan read `line`, having checked that serde reads the same of it.
    fn read_alike(line: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            user_id: Cow<'a, str>,
        }
        if let Some(id) = user_id(line) {
            let by_serde = serde_json::from_str::<Id<'_>>(line).map(|i| i.user_id);
            assert_eq!(by_serde.ok().as_deref(), Some(id), "{line}");
        }
        let read = answers(line);
        if let Some(data) = &read {
            assert_eq!(Some(data), by_serde(line).as_ref(), "{line}");
        }
        read.is_some()
    }

    /// Whatever the scan reads of a snapshot line, serde and `Answers` read the same
    /// (with nothing skipped); and the scan reads most plain lines itself. 20,000
    /// mutations of plain and odd lines: tokens of JSON's grammar inserted, bytes
    /// replaced, pieces cut or repeated.
    #[test]
    fn what_the_scan_reads_serde_reads_the_same() {
        let (mut read, mut left) = (0, 0);
        for seed in 0..20_000u64 {
            let mut rng = Rng::new(seed);
            let base = LINES[rng.next(LINES.len() as u64) as usize];
            let line = if seed < LINES.len() as u64 {
                LINES[seed as usize].to_string()
            } else {
                mutate(&mut rng, base)
            };
            if read_alike(&line) {
                read += 1;
            } else {
                left += 1;
            }
        }
        assert!(read > 2_000 && left > 2_000, "read {read}, left {left}");
    }

    /// The HTTP API's three bodies: whatever the scan reads of one, `Answers` reads the
    /// same of it (with nothing skipped). Mutations of each part of the lines above.
    #[test]
    fn the_three_bodies_read_the_same_by_the_scan_and_by_serde() {
        let parts: Vec<(&str, String)> = LINES
            .iter()
            .flat_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                ["profile", "visit", "history"]
                    .map(|k| (k, v.get(k).map_or("null".into(), |p| p.to_string())))
            })
            .collect();
        let (mut read, mut left) = (0, 0);
        for seed in 0..20_000u64 {
            let mut rng = Rng::new(seed);
            let (part, base) = &parts[rng.next(parts.len() as u64) as usize];
            let body = match seed % 4 {
                0 => base.clone(),
                _ => mutate(&mut rng, base),
            };
            // A body as serde reads it for `Answers`: the same as that part of a line.
            let by_serde = || by_serde(&format!(r#"{{"{part}":{body}}}"#));
            let scanned = match *part {
                "profile" => profile_answer(&body).map(|profile| ProfileData {
                    profile,
                    ..Default::default()
                }),
                "visit" => visit_answer(&body).map(|visit| ProfileData {
                    visit,
                    ..Default::default()
                }),
                _ => history_answer(&body).map(|history| ProfileData {
                    history,
                    ..Default::default()
                }),
            };
            match scanned {
                Some(data) => {
                    assert_eq!(Some(data), by_serde(), "{part}: {body}");
                    read += 1;
                }
                None => left += 1,
            }
        }
        assert!(read > 2_000 && left > 2_000, "read {read}, left {left}");
    }

    #[test]
    fn plain_lines_and_coerced_fields_are_read_by_the_scan() {
        for line in &LINES[..4] {
            assert!(read_alike(line), "{line}");
        }
        let data = answers(LINES[3]).unwrap();
        let visit = data.visit.unwrap();
        assert_eq!((visit.timestamp, visit.duration), (1_704_067_200_000, 1));
        assert!(visit.is_first_visit);
        assert_eq!(visit.uuid.as_deref(), Some("12"));
        assert_eq!(data.history.to_entries()[0].event_id.as_deref(), Some("7"));
        assert_eq!(
            data.history.to_entries()[0]
                .parameters
                .as_ref()
                .map(|p| p.text()),
            Some(r#"{"utm_source":"3","custom_params":null}"#.to_string())
        );
        let data = answers(LINES[2]).unwrap();
        assert_eq!(data.profile.country.as_deref(), Some("US"), "the last one");
        assert_eq!(data.profile.city.as_deref(), Some("true"));
    }

    /// A part's members are read in place while they come in the reader's order, by
    /// name from the first one out of place; a key read in place that comes again after
    /// has the part read a second time, by name. In every case (a member moved, missing,
    /// added, or named twice, before or after its place) as serde and `Answers` read
    /// it, the last of a repeated key counting.
    #[test]
    fn parts_in_the_readers_order_or_not_read_as_serde_reads_them() {
        let profile = r#""user_id":"u1","country":"FR","city":"D-city","language":"ja","continent":"EU","timezone":"Europe/Paris""#;
        let one_pass = |body: &str| {
            let (pairs, _) = pairs(body, 0).unwrap();
            let mut skipped = Skipped::default();
            let mut fields = Fields::new(PartMembers::in_order(&pairs), "profile", &mut skipped);
            answer::profile(&mut fields);
            fields.read_as_by_name()
        };
        let cases = [
            (format!("{{{profile}}}"), true),
            (format!(r#"{{{profile},"country":"DE"}}"#), false),
            (format!(r#"{{"country":"DE",{profile}}}"#), true),
            (profile.replace(r#""city":"D-city","#, ""), true),
            (
                profile.replace(r#""city":"D-city","#, r#""city":"A","city":"D-city","#),
                false,
            ),
            (
                format!(
                    "{{{}}}",
                    profile.replace(r#""city":"D-city","#, r#""x":1,"city":"D-city","#)
                ),
                true,
            ),
            (
                format!(
                    "{{{}}}",
                    profile.replace(
                        r#""city":"D-city","language":"ja""#,
                        r#""language":"ja","city":"D-city""#
                    )
                ),
                true,
            ),
        ];
        for (body, one) in cases {
            let body = if body.starts_with('{') {
                body
            } else {
                format!("{{{body}}}")
            };
            assert_eq!(one_pass(&body), one, "{body}");
            let scanned = profile_answer(&body).map(|profile| ProfileData {
                profile,
                ..Default::default()
            });
            let by_serde = by_serde(&format!(r#"{{"profile":{body}}}"#));
            assert!(scanned.is_some(), "{body}");
            assert_eq!(scanned, by_serde, "{body}");
        }
        let last = profile_answer(&format!(r#"{{{profile},"country":"DE"}}"#)).unwrap();
        assert_eq!(last.country.as_deref(), Some("DE"));
        let visit = &LINES[0]
            [LINES[0].find(r#""visit":"#).unwrap() + 8..LINES[0].find(r#","history""#).unwrap()];
        let data = answers(LINES[0]).unwrap();
        assert_eq!(data.visit, visit_answer(visit).unwrap());
        assert_eq!(data.visit.unwrap().ip.as_deref(), Some("203.0.113.81"));
    }

    /// Lines with something `Answers` skips and counts, or serde refuses, are left to
    /// them.
    #[test]
    fn what_is_skipped_or_refused_is_left_to_serde() {
        assert!(
            !read_alike(LINES[4]),
            "a field that does not coerce, entries skipped"
        );
        for line in [
            r#"{"profile":{},"profile":{}}"#,
            r#"{"profile":{"city":"a\"b"}}"#,
            r#"{"history":{}}"#,
            r#"{"profile":{"country":"US"}} x"#,
        ] {
            assert!(answers(line).is_none(), "{line}");
            read_alike(line);
        }
        assert_eq!(user_id(r#"{"user_id":"a","user_id":"b"}"#), None);
        assert_eq!(user_id(r#"{"user_id":5}"#), None);
        assert_eq!(user_id(r#"{"x":1,"user_id":"u"}"#), Some("u"));
    }
}
