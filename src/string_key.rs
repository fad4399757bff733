//! Hash-table keys that are strings, compared without reading the string's own memory
//! when it is short.
//!
//! A table entry keeps the key's first `N` bytes (zero-padded) beside the pointer to it:
//! a look-up checks the length and those bytes in the entry the probe has already
//! loaded, and reads the string itself only for bytes past `N`. Through the pointer alone,
//! each look-up read a line of memory that was mostly not in the CPU's cache (strings
//! are scattered over the heap) and called `memcmp` for a dozen bytes: in the worker's
//! profile, the dictionary's look-ups and the state's user look-ups were ~8% of its time
//! in that comparison.

use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

/// The first `8 * W` bytes of a string as `W` words, zero-padded (its length tells the
/// padding apart). Built in registers: a byte copy into an array, read back as words,
/// stalled on every look-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head<const W: usize>([u64; W]);

impl<const W: usize> Head<W> {
    /// How many bytes of a string the head holds.
    pub const BYTES: usize = 8 * W;

    #[inline]
    pub fn of(s: &str) -> Self {
        let bytes = s.as_bytes();
        let mut words = [0u64; W];
        for (i, word) in words.iter_mut().enumerate() {
            let rest = bytes.get(8 * i..).unwrap_or_default();
            match <[u8; 8]>::try_from(rest.get(..8).unwrap_or_default()) {
                Ok(eight) => *word = u64::from_le_bytes(eight),
                Err(_) => {
                    for (j, b) in rest.iter().enumerate() {
                        *word |= u64::from(*b) << (8 * j);
                    }
                    break;
                }
            }
        }
        Head(words)
    }

    /// Whether `key`, whose head this is, equals `s`, whose head is `s_head`.
    #[inline]
    pub fn is(&self, key: &str, s: &str, s_head: &Self) -> bool {
        key.len() == s.len()
            && self == s_head
            && (s.len() <= Self::BYTES
                || key.as_bytes()[Self::BYTES..] == s.as_bytes()[Self::BYTES..])
    }
}

/// The hash such tables use for a string key.
#[inline]
pub fn hash(s: &str) -> u64 {
    FxBuildHasher.hash_one(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_alike_in_their_first_bytes_are_told_apart() {
        let same = |a: &str, b: &str| Head::<2>::of(a).is(a, b, &Head::of(b));
        for s in [
            "",
            "ab",
            "abcdefgh",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
            "é€",
        ] {
            assert!(same(s, s), "{s}");
        }
        assert!(!same("ab", "ab\0"), "padding is not a byte of the string");
        assert!(!same("abcdefghi", "abcdefgh\0"));
        assert!(
            !same("abcdefghijklmnopq", "abcdefghijklmnopr"),
            "bytes past the head count"
        );
        assert!(
            !same("abcdefghijklmnop", "abcdefghijklmnoq"),
            "the last byte of the head"
        );
        assert!(!same("abcdefghi", "abcdefghj") && !same("bbcdefgh", "abcdefgh"));
        assert_eq!(Head::<2>::of("abcdefghij"), Head::<2>::of("abcdefghij"));
        assert_ne!(Head::<2>::of("abcdefghij"), Head::<2>::of("abcdefghik"));
    }
}
