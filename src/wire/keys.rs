//! Keys found by comparing words instead of scanning: a `"key":` as three 8-byte words
//! (`Pattern`), and the keys of the `parameters` objects this thread read last, by
//! their place (`KeyPlaces`).
//!
//! One producer writes its events from one model: the next event's keys are the same
//! as the last one's, in the same order. An event's members are compared with the
//! member expected next (`fast::MEMBERS`); a key of `parameters` (or of an object in
//! it) with the key the last such object had at the same place, whose dictionary id is
//! then written without a scan of the key or a look-up of its id (~60 instructions a
//! key, ~11 keys an event on the reference workload).

use std::cell::Cell;

/// Longest `"key":` a pattern holds.
pub(super) const MAX_LEN: usize = 24;

/// `"key":` (or any text of up to `MAX_LEN` bytes without a zero byte) as little-endian
/// words, with masks over its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pattern {
    words: [u64; 3],
    masks: [u64; 3],
    len: u8,
}

impl Pattern {
    /// An empty pattern matches nothing that `at` is asked about (`len` 0 is refused
    /// there), so a slot never filled finds no key.
    pub(super) const EMPTY: Pattern = Pattern {
        words: [0; 3],
        masks: [0; 3],
        len: 0,
    };

    /// The pattern of `text`; `None` if it is longer than `MAX_LEN`.
    pub(super) const fn new(text: &[u8]) -> Option<Pattern> {
        if text.len() > MAX_LEN {
            return None;
        }
        let (mut words, mut masks, mut i) = ([0u64; 3], [0u64; 3], 0);
        while i < text.len() {
            words[i / 8] |= (text[i] as u64) << (8 * (i % 8));
            masks[i / 8] |= 0xff << (8 * (i % 8));
            i += 1;
        }
        Some(Pattern {
            words,
            masks,
            len: text.len() as u8,
        })
    }

    pub(super) fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether `b[at..]` starts with this pattern's text (never, for an empty one).
    #[inline]
    pub(super) fn at(&self, b: &[u8], at: usize) -> bool {
        let next: [u8; MAX_LEN] = match b.get(at..at + MAX_LEN) {
            Some(next) => next.try_into().unwrap_or([0; MAX_LEN]),
            // Near the end: the bytes there and zeros, which no pattern byte is (the
            // texts compared are keys in the plain form: no control characters).
            None => {
                let mut next = [0; MAX_LEN];
                let rest = b.get(at..).unwrap_or_default();
                next[..rest.len()].copy_from_slice(rest);
                next
            }
        };
        let word = |i: usize| {
            let w = u64::from_le_bytes(next[8 * i..8 * i + 8].try_into().unwrap_or_default());
            (w ^ self.words[i]) & self.masks[i]
        };
        self.len != 0 && word(0) | word(1) | word(2) == 0
    }
}

/// Objects this deep in `parameters` (0: its own members, 1: those of `custom_params`)
/// and places in them have a slot.
const DEPTHS: usize = 2;
const PLACES: usize = 16;

#[derive(Clone, Copy)]
struct Slot {
    pattern: Pattern,
    id: u32,
}

/// The `"key":` and dictionary id last seen at each place of the first two levels of
/// `parameters` objects, on this thread.
pub(super) struct KeyPlaces([Cell<Slot>; DEPTHS * PLACES]);

thread_local! {
    static KEY_PLACES: KeyPlaces = const { KeyPlaces::new() };
}

impl KeyPlaces {
    const fn new() -> Self {
        const EMPTY: Slot = Slot {
            pattern: Pattern::EMPTY,
            id: 0,
        };
        KeyPlaces([const { Cell::new(EMPTY) }; DEPTHS * PLACES])
    }

    /// The slot of the key at `place` of an object `depth` deep, if it has one.
    #[inline]
    pub(super) fn slot(depth: usize, place: usize) -> Option<usize> {
        (depth < DEPTHS && place < PLACES).then_some(depth * PLACES + place)
    }

    /// Runs `f` with this thread's key places (looked up once for a whole object: a
    /// look-up a key was a call of ~60 instructions).
    #[inline]
    pub(super) fn with<R>(f: impl FnOnce(&KeyPlaces) -> R) -> R {
        KEY_PLACES.with(f)
    }

    /// If `b[at..]` starts with the `"key":` last seen in `slot`: its id and the
    /// pattern's length (past the colon).
    #[inline]
    pub(super) fn hit(&self, slot: usize, b: &[u8], at: usize) -> Option<(u32, usize)> {
        let s = self.0[slot].get();
        s.pattern.at(b, at).then(|| (s.id, s.pattern.len()))
    }

    /// That `"key":` (`text`, with its quotes and colon) has id `id`: the next key
    /// looked for in `slot`.
    pub(super) fn remember(&self, slot: usize, text: &[u8], id: u32) {
        if let Some(pattern) = Pattern::new(text) {
            self.0[slot].set(Slot { pattern, id });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pattern matches where the text starts with it, at any distance from the end,
    /// and nowhere a byte of it differs or is missing.
    #[test]
    fn a_pattern_matches_its_text_and_nothing_else() {
        for key in [
            "",
            "a",
            "utm_id",
            "page_title",
            "is_first_in_visit",
            "a_key_of_21_bytes___x",
        ] {
            let text = format!("\"{key}\":");
            let p = Pattern::new(text.as_bytes()).unwrap();
            for tail in ["", "1", "\"v\",\"next\":2}", &"x".repeat(40)] {
                let s = format!("{text}{tail}");
                assert!(p.at(s.as_bytes(), 0), "{s}");
                let shifted = format!("  {s}");
                assert!(p.at(shifted.as_bytes(), 2), "{shifted}");
                assert!(!p.at(shifted.as_bytes(), 1), "{shifted}");
                for at in 0..text.len() {
                    let mut other = s.clone().into_bytes();
                    other[at] ^= 0x20;
                    assert!(!p.at(&other, 0), "{}", String::from_utf8_lossy(&other));
                }
                assert!(!p.at(&s.as_bytes()[..text.len() - 1], 0), "{s}");
            }
        }
        assert_eq!(Pattern::new(&[b'x'; MAX_LEN + 1]), None);
        assert!(!Pattern::EMPTY.at(b"\"a\":1", 0));
    }

    /// A key is found in its place once it was seen there, by the id given it then.
    #[test]
    fn keys_are_found_in_the_place_they_were_seen() {
        let (a, b) = (
            KeyPlaces::slot(0, 3).unwrap(),
            KeyPlaces::slot(1, 3).unwrap(),
        );
        assert_ne!(a, b);
        assert_eq!(KeyPlaces::slot(DEPTHS, 0), None);
        assert_eq!(KeyPlaces::slot(0, PLACES), None);
        let text = br#""utm_term":"x""#;
        KeyPlaces::with(|k| {
            k.remember(a, &text[..11], 7);
            assert_eq!(k.hit(a, text, 0), Some((7, 11)));
            assert_eq!(k.hit(b, text, 0), None);
            assert_eq!(k.hit(a, br#""utm_terms":"x""#, 0), None);
            k.remember(a, br#""utm_id":"#, 9);
            assert_eq!(k.hit(a, text, 0), None);
        });
    }
}
