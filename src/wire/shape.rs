//! A quick look at a `parameters` object (text serde has already found to be valid JSON)
//! that says whether the typed check (`WireParameters`) would accept it as it is: every
//! `utm_*` member a string or `null`, `custom_params` an object or `null`, none of them
//! twice. Most events' parameters are such; for them the typed parse, which read the
//! text a second time, was a tenth of a worker's time. Anything else (a key with an
//! escape, another type, a repeat) says no, and the typed parse decides, with its
//! coercions and its exact error.

/// For a member the typed check looks at: its bit, and the first byte its value may
/// start with besides `n` (`null`). (A match: the parameters' keys are mostly these.)
pub(super) fn checked(key: &[u8]) -> Option<(u8, u8)> {
    // By length first: one compare at most (a match on the names compared them in turn).
    let (bit, start, name): (u8, u8, &[u8]) = match key.len() {
        13 => (0, b'{', b"custom_params"),
        10 if key[4] == b's' => (1, b'"', b"utm_source"),
        12 => (2, b'"', b"utm_campaign"),
        11 => (3, b'"', b"utm_content"),
        10 => (4, b'"', b"utm_medium"),
        8 => (5, b'"', b"utm_term"),
        6 => (6, b'"', b"utm_id"),
        _ => return None,
    };
    same(key, name).then_some((bit, start))
}

/// `key == name`, for names of up to 16 bytes as the dictionary's front cache compares
/// strings (`dict::ends`: two words and the length): every event's parameters compare
/// ~9 keys here, and `==` was a call to `memcmp` each.
#[inline(always)]
fn same(key: &[u8], name: &[u8]) -> bool {
    match name.len() {
        n @ ..=16 => key.len() == n && crate::dict::ends(key) == crate::dict::ends(name),
        _ => key == name,
    }
}

/// Whether the typed check accepts `json`, an object serde has validated; `false` when
/// in doubt.
pub(super) fn plain(json: &str) -> bool {
    let b = json.as_bytes();
    let mut at = skip_ws(b, 0);
    if b.get(at) != Some(&b'{') {
        return false;
    }
    at = skip_ws(b, at + 1);
    if b.get(at) == Some(&b'}') {
        return true;
    }
    let mut seen = 0u8;
    loop {
        let Some((key_end, false)) = string_end(b, at) else {
            return false;
        };
        let key = &b[at + 1..key_end - 1];
        at = skip_ws(b, key_end);
        if b.get(at) != Some(&b':') {
            return false;
        }
        at = skip_ws(b, at + 1);
        let checked = checked(key);
        if let Some((bit, start)) = checked {
            let first = b.get(at).copied();
            if seen & (1 << bit) != 0 || (first != Some(start) && first != Some(b'n')) {
                return false;
            }
            seen |= 1 << bit;
        }
        let end = if checked.is_some_and(|(_, start)| start == b'"') && b[at] == b'"' {
            // The typed check decodes a utm_* string, and refuses an escape serde's
            // first pass let through (half of a surrogate pair): one with any escape is
            // its to read.
            match string_end(b, at) {
                Some((end, false)) => end,
                _ => return false,
            }
        } else {
            match value_end(b, at) {
                Some(end) => end,
                None => return false,
            }
        };
        at = skip_ws(b, end);
        match b.get(at) {
            Some(b',') => at = skip_ws(b, at + 1),
            Some(b'}') => return skip_ws(b, at + 1) == b.len(),
            _ => return false,
        }
    }
}

/// JSON's whitespace: space, tab, LF, CR (not a form feed, which `is_ascii_whitespace`
/// also takes).
pub(crate) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

pub(crate) fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(|&c| is_space(c)) {
        at += 1;
    }
    at
}

/// Past the closing quote of the string that starts at `at`, and whether it holds an
/// escape. `json_scan` finds the next quote or backslash eight bytes at a time: the
/// strings here are most of the text, and a byte at a time was most of this module's
/// time.
pub(crate) fn string_end(b: &[u8], at: usize) -> Option<(usize, bool)> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    let mut escaped = false;
    loop {
        i = crate::json_scan::string_stop(b, i);
        match *b.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            // A control character: not in text serde accepted; skipped as any byte.
            _ => i += 1,
        }
    }
}

/// Past the value that starts at `at`.
pub(crate) fn value_end(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => string_end(b, at).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = at;
            while b
                .get(i)
                .is_some_and(|&c| !(matches!(c, b',' | b'}' | b']') || is_space(c)))
            {
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    /// What the typed check says of `json` as it is (no coercion).
    fn typed_accepts(json: &str) -> bool {
        let raw: &RawValue = serde_json::from_str(json).expect("valid JSON");
        crate::wire::typed_parameters(raw, true).is_ok()
    }

    /// Each checked member by its name, and no other key: names of the same lengths,
    /// prefixes, other cases.
    #[test]
    fn the_checked_members_are_known_by_name_alone() {
        let names = std::iter::once("custom_params").chain(crate::wire::lenient::UTM);
        for (bit, name) in names.enumerate() {
            let start = if bit == 0 { b'{' } else { b'"' };
            assert_eq!(checked(name.as_bytes()), Some((bit as u8, start)), "{name}");
        }
        for other in [
            "",
            "utm_",
            "utm_ix",
            "utm_sourcf",
            "utm_mediux",
            "utm_xource",
            "UTM_ID",
            "utm_termx",
            "custom_param",
            "custom_paramz",
            "utm_campaigm",
            "utm_contenx",
            "page_title",
        ] {
            assert_eq!(checked(other.as_bytes()), None, "{other}");
        }
        // Any one byte changed, anywhere in a name, and it is not that name.
        let names = std::iter::once("custom_params").chain(crate::wire::lenient::UTM);
        for name in names {
            for at in 0..name.len() {
                for byte in [0, b'_', b'a', b'z', 0x80, 0xff] {
                    let mut key = name.as_bytes().to_vec();
                    if key[at] != byte {
                        key[at] = byte;
                        assert_eq!(checked(&key), None, "{name} with {byte} at {at}");
                    }
                }
            }
        }
        for (a, b) in [
            ("ab", "ab"),
            ("abcdefghijklmnopq", "abcdefghijklmnopq"),
            ("", ""),
        ] {
            assert!(same(a.as_bytes(), b.as_bytes()));
        }
        assert!(!same(b"abcdefghijklmnopq", b"abcdefghijklmnopr"));
    }

    #[test]
    fn the_usual_parameters_are_plain() {
        for json in [
            "{}",
            " { } ",
            r#"{"custom_params":{"page_title":"Cart","value":121.76},"utm_source":"facebook","utm_campaign":"","utm_id":"c043"}"#,
            r#"{"utm_term":null,"custom_params":null,"z":[1, 2, {"a":"}]"}],"xy":"\u00e9\"}","n":-1.5e3,"t":true}"#,
            "{\n  \"utm_source\" : \"a\" ,\n  \"o\": {}\n}",
        ] {
            assert!(plain(json), "{json}");
            assert!(typed_accepts(json), "{json}");
        }
    }

    #[test]
    fn what_the_typed_check_must_see_is_not_plain() {
        for json in [
            r#"{"utm_source":1}"#,
            r#"{"utm_source":true}"#,
            r#"{"utm_source":{}}"#,
            r#"{"custom_params":"x"}"#,
            r#"{"custom_params":[1]}"#,
            r#"{"utm_id":"a","utm_id":"b"}"#,
            r#"{"utm\u005fid":1}"#,
            r#"{"custom_params":{},"custom_params":null}"#,
            r#"{"utm_medium":"\ud800"}"#,
            r#"{"utm_source":"ok","utm_medium":"\udc00x"}"#,
            r#"{"utm_id":"\u00e9"}"#,
        ] {
            assert!(!plain(json), "{json}");
        }
    }

    /// Every object of up to two members made of these keys and values: wherever the
    /// quick look says yes, the typed check says yes too.
    #[test]
    fn plain_parameters_are_always_accepted_by_the_typed_check() {
        let odd = ["utm_sourc", "utm\\u005fid", "x\\\"y", ""];
        let keys = ["custom_params"]
            .iter()
            .chain(&crate::wire::lenient::UTM)
            .chain(&odd);
        let values = [
            "\"s\"",
            "null",
            "1",
            "-1.5e3",
            "true",
            "{}",
            "[]",
            "{\"a\":[1,{\"b\":\"}]\\\"\"}]}",
            "\"a\\\"}\"",
            " \"ws\" ",
            "[null, \"]\"]",
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\ud83d\ude00""#,
            r#""\u00e9""#,
        ];
        let members: Vec<String> = keys
            .flat_map(|k| values.iter().map(move |v| format!("\"{k}\":{v}")))
            .collect();
        let mut objects: Vec<String> = members.iter().map(|m| format!("{{{m}}}")).collect();
        for a in &members {
            for b in &members {
                objects.push(format!("{{{a},{b}}}"));
            }
        }
        let mut plain_ones = 0;
        for json in &objects {
            // What the decoder's first pass accepts (it does not decode escapes).
            assert!(serde_json::from_str::<&RawValue>(json).is_ok(), "{json}");
            if plain(json) {
                plain_ones += 1;
                assert!(typed_accepts(json), "{json}");
            }
        }
        assert!(
            plain_ones > objects.len() / 20,
            "{plain_ones} of {}",
            objects.len()
        );
    }
}
