//! The webhook body's event, profile and visit written as serde_json writes them (their
//! members in declaration order, `null` for `None`), without serde's visitor per
//! member: with the history written from its compact form (`History::write_json`),
//! serde's share of a body was ~13k instructions of ~65k per call, most of it per-member
//! dispatch and its escape table walked byte by byte. The tests hold every member of
//! the three types against serde_json, so a member added to one of them and not here
//! fails them.

use crate::history::{put3, write_i64, write_str};
use crate::model::{Profile, Str, UserEvent, Visit};

/// Appends `key` (`"name":` with its separator) then the value of `s`.
fn opt_str(out: &mut Vec<u8>, key: &[u8], s: Option<&str>) {
    match s {
        Some(s) => {
            out.extend_from_slice(key);
            write_str(out, s);
        }
        None => put3(out, key, b"", b"null"),
    }
}

fn word(out: &mut Vec<u8>, key: &[u8], s: &Option<Str>) {
    opt_str(out, key, s.as_deref());
}

fn long(out: &mut Vec<u8>, key: &[u8], v: i64) {
    out.extend_from_slice(key);
    write_i64(out, v);
}

fn boolean(out: &mut Vec<u8>, key: &[u8], v: bool) {
    put3(out, key, b"", if v { b"true" } else { b"false" });
}

/// `ev` as a JSON object.
pub fn event(out: &mut Vec<u8>, ev: &UserEvent) {
    opt_str(out, b"{\"event_id\":", ev.event_id.as_deref());
    opt_str(out, b",\"user_id\":", Some(&ev.user_id));
    opt_str(out, b",\"domain\":", ev.domain.as_deref());
    boolean(out, b",\"is_first_in_visit\":", ev.is_first_in_visit);
    boolean(out, b",\"is_last_in_visit\":", ev.is_last_in_visit);
    boolean(out, b",\"is_first_event\":", ev.is_first_event);
    boolean(out, b",\"is_current\":", ev.is_current);
    opt_str(out, b",\"event_name\":", ev.event_name.as_deref());
    opt_str(
        out,
        b",\"event_displayname\":",
        ev.event_displayname.as_deref(),
    );
    opt_str(out, b",\"integration\":", ev.integration.as_deref());
    opt_str(out, b",\"app\":", ev.app.as_deref());
    opt_str(out, b",\"platform\":", ev.platform.as_deref());
    boolean(out, b",\"is_https\":", ev.is_https);
    opt_str(out, b",\"event_type\":", Some(&ev.event_type));
    long(out, b",\"duration\":", ev.duration);
    long(out, b",\"timestamp\":", ev.timestamp);
    boolean(out, b",\"triggerable\":", ev.triggerable);
    // Validated JSON text, written as it arrived (serde_json writes a `RawValue` so).
    out.extend_from_slice(b",\"parameters\":");
    match &ev.parameters {
        Some(p) => p.write_json(out),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// `p` as a JSON object.
pub fn profile(out: &mut Vec<u8>, p: &Profile) {
    word(out, b"{\"user_id\":", &p.user_id);
    word(out, b",\"country\":", &p.country);
    word(out, b",\"city\":", &p.city);
    word(out, b",\"language\":", &p.language);
    word(out, b",\"continent\":", &p.continent);
    word(out, b",\"timezone\":", &p.timezone);
    out.push(b'}');
}

/// `v` as a JSON object, `null` for none.
pub fn visit(out: &mut Vec<u8>, v: Option<&Visit>) {
    let Some(v) = v else {
        out.extend_from_slice(b"null");
        return;
    };
    word(out, b"{\"uuid\":", &v.uuid);
    long(out, b",\"timestamp\":", v.timestamp);
    word(out, b",\"os\":", &v.os);
    word(out, b",\"browser\":", &v.browser);
    word(out, b",\"device\":", &v.device);
    word(out, b",\"landing_page\":", &v.landing_page);
    word(out, b",\"referrer_type\":", &v.referrer_type);
    word(out, b",\"referrer_url\":", &v.referrer_url);
    word(out, b",\"referrer_query\":", &v.referrer_query);
    long(out, b",\"duration\":", v.duration);
    long(out, b",\"actions\":", v.actions);
    boolean(out, b",\"is_first_visit\":", v.is_first_visit);
    word(out, b",\"screen\":", &v.screen);
    word(out, b",\"ip\":", &v.ip);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::Rng;

    fn text(rng: &mut Rng) -> Option<String> {
        let s = [
            "page_view",
            "",
            "q\"uote\\",
            "line\nbreak\u{1}",
            "é ü ß",
            "https://shop.example.com/p/42?q=1&r=2",
        ][rng.next(6) as usize];
        (rng.next(5) > 0).then(|| format!("{s}{}", rng.next(3)))
    }

    fn word(rng: &mut Rng) -> Option<Str> {
        text(rng).map(|s| {
            if rng.next(2) == 0 {
                Str::shared(&s)
            } else {
                Str::from(s)
            }
        })
    }

    fn long(rng: &mut Rng) -> i64 {
        [0, -1, i64::MIN, i64::MAX, rng.next(u64::MAX) as i64][rng.next(5) as usize]
    }

    fn event(rng: &mut Rng) -> UserEvent {
        let t = |rng: &mut Rng| text(rng).map(Into::into);
        let b = |rng: &mut Rng| rng.next(2) == 0;
        UserEvent {
            event_id: text(rng).map(Into::into),
            user_id: text(rng).unwrap_or_default().into(),
            domain: t(rng),
            is_first_in_visit: b(rng),
            is_last_in_visit: b(rng),
            is_first_event: b(rng),
            is_current: b(rng),
            event_name: t(rng),
            event_displayname: t(rng),
            integration: t(rng),
            app: t(rng),
            platform: t(rng),
            is_https: b(rng),
            event_type: text(rng).unwrap_or_default().into(),
            duration: long(rng),
            timestamp: long(rng),
            triggerable: b(rng),
            parameters: rng.parameters(),
        }
    }

    fn profile(rng: &mut Rng) -> Profile {
        Profile {
            user_id: word(rng),
            country: word(rng),
            city: word(rng),
            language: word(rng),
            continent: word(rng),
            timezone: word(rng),
        }
    }

    fn visit(rng: &mut Rng) -> Visit {
        Visit {
            uuid: word(rng),
            timestamp: long(rng),
            os: word(rng),
            browser: word(rng),
            device: word(rng),
            landing_page: word(rng),
            referrer_type: word(rng),
            referrer_url: word(rng),
            referrer_query: word(rng),
            duration: long(rng),
            actions: long(rng),
            is_first_visit: rng.next(2) == 0,
            screen: word(rng),
            ip: word(rng),
        }
    }

    /// Random events, profiles and visits (every member set, unset, escaped, at the
    /// ends of its range) are written byte for byte as serde_json writes them.
    #[test]
    fn events_profiles_and_visits_are_written_as_serde_json_writes_them() {
        for seed in 0..500 {
            let mut rng = Rng::new(seed);
            let (ev, p) = (event(&mut rng), profile(&mut rng));
            let v = (rng.next(4) > 0).then(|| visit(&mut rng));
            let mut out = Vec::new();
            super::event(&mut out, &ev);
            assert_eq!(out, serde_json::to_vec(&ev).unwrap(), "seed {seed}");
            out.clear();
            super::profile(&mut out, &p);
            assert_eq!(out, serde_json::to_vec(&p).unwrap(), "seed {seed}");
            out.clear();
            super::visit(&mut out, v.as_ref());
            assert_eq!(out, serde_json::to_vec(&v).unwrap(), "seed {seed}");
        }
    }
}
