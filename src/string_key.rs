//! Hash tables keyed by strings, compared without reading the string's own memory when
//! it is short (`StrMap`: the dictionary's per-thread cache, the hash map state store).
//!
//! A table entry keeps the key's first `8 * W` bytes (zero-padded) beside the pointer to it:
//! a look-up checks the length and those bytes in the entry the probe has already
//! loaded, and reads the string itself only for bytes past those. Through the pointer alone,
//! each look-up read a line of memory that was mostly not in the CPU's cache (strings
//! are scattered over the heap) and called `memcmp` for a dozen bytes: in the worker's
//! profile, the dictionary's look-ups and the state's user look-ups were ~8% of its time
//! in that comparison.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use rustc_hash::FxBuildHasher;

/// A map from string keys `K` (`&'static str`, `Arc<str>` ...) to `V`, each entry with
/// its key's first `8 * W` bytes beside it.
pub struct StrMap<K, V, const W: usize>(HashTable<Slot<K, V, W>>);

struct Slot<K, V, const W: usize> {
    head: Head<W>,
    key: K,
    value: V,
}

impl<K, V, const W: usize> Default for StrMap<K, V, W> {
    fn default() -> Self {
        StrMap(HashTable::new())
    }
}

/// `s`'s hash, and what tells whether a slot's key is `s`.
#[inline]
fn probe<K: AsRef<str>, V, const W: usize>(s: &str) -> (u64, impl Fn(&Slot<K, V, W>) -> bool) {
    let head = Head::of(s);
    (hash(s), move |slot| {
        slot.head.is(slot.key.as_ref(), s, &head)
    })
}

fn rehash<K: AsRef<str>, V, const W: usize>(slot: &Slot<K, V, W>) -> u64 {
    hash(slot.key.as_ref())
}

impl<K: AsRef<str>, V, const W: usize> StrMap<K, V, W> {
    #[inline]
    pub fn get(&self, s: &str) -> Option<&V> {
        let (hash, is) = probe(s);
        self.0.find(hash, is).map(|slot| &slot.value)
    }

    /// Asks the CPU for the slot `s` is in, without reading it (so without waiting for
    /// it): the table's control bytes are read (few, and mostly in the cache), and the
    /// lines of each slot whose tag matches are asked for. A `get` of `s` soon after
    /// finds them in the cache.
    #[inline]
    pub fn prefetch(&self, s: &str) {
        self.0.find(hash(s), |slot| {
            crate::prefetch::lines(slot);
            false
        });
    }

    #[inline]
    pub fn get_key_value(&self, s: &str) -> Option<(&K, &V)> {
        let (hash, is) = probe(s);
        self.0.find(hash, is).map(|slot| (&slot.key, &slot.value))
    }

    #[inline]
    pub fn get_mut(&mut self, s: &str) -> Option<&mut V> {
        let (hash, is) = probe(s);
        self.0.find_mut(hash, is).map(|slot| &mut slot.value)
    }

    /// Adds `key`, or gives it `value` if it is there.
    pub fn insert(&mut self, key: K, value: V) {
        let (hash, is) = probe(key.as_ref());
        match self.0.entry(hash, is, rehash) {
            Entry::Occupied(mut o) => o.get_mut().value = value,
            Entry::Vacant(v) => {
                let head = Head::of(key.as_ref());
                v.insert(Slot { head, key, value });
            }
        }
    }

    /// Adds `key`, known not to be there (without looking for it).
    pub fn insert_new(&mut self, key: K, value: V) {
        let head = Head::of(key.as_ref());
        let slot = Slot { head, key, value };
        self.0.insert_unique(rehash(&slot), slot, rehash);
    }

    pub fn remove(&mut self, s: &str) -> Option<V> {
        let (hash, is) = probe(s);
        let found = self.0.find_entry(hash, is).ok()?;
        Some(found.remove().0.value)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|slot| (&slot.key, &slot.value))
    }
}

/// The first `8 * W` bytes of a string as `W` words, zero-padded (its length tells the
/// padding apart). Built in registers: a byte copy into an array, read back as words,
/// stalled on every look-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head<const W: usize>([u64; W]);

impl<const W: usize> Head<W> {
    /// How many bytes of a string the head holds.
    const BYTES: usize = 8 * W;

    #[inline]
    fn of(s: &str) -> Self {
        let bytes = s.as_bytes();
        let mut words = [0u64; W];
        for (i, word) in words.iter_mut().enumerate() {
            let rest = bytes.get(8 * i..).unwrap_or_default();
            match <[u8; 8]>::try_from(rest.get(..8).unwrap_or_default()) {
                Ok(eight) => *word = u64::from_le_bytes(eight),
                Err(_) => {
                    *word = short_word(rest);
                    break;
                }
            }
        }
        Head(words)
    }

    /// Whether `key`, whose head this is, equals `s`, whose head is `s_head`.
    #[inline]
    fn is(&self, key: &str, s: &str, s_head: &Self) -> bool {
        key.len() == s.len()
            && self == s_head
            && (s.len() <= Self::BYTES
                || key.as_bytes()[Self::BYTES..] == s.as_bytes()[Self::BYTES..])
    }
}

/// The bytes of `b` (fewer than 8) as the low bytes of a word, the rest zero. Two loads
/// that overlap when they must, as `memcpy` copies short lengths: the bytes one at a
/// time were a third of a look-up's instructions (most keys end in a partial word).
#[inline]
pub(crate) fn short_word(b: &[u8]) -> u64 {
    let n = b.len();
    let byte = |i: usize| u64::from(b[i]);
    match n {
        0 => 0,
        1..=3 => byte(0) | byte(n / 2) << (8 * (n / 2)) | byte(n - 1) << (8 * (n - 1)),
        _ => {
            let four =
                |i: usize| u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
            four(0) | four(n - 4) << (8 * (n - 4))
        }
    }
}

#[inline]
fn hash(s: &str) -> u64 {
    FxBuildHasher.hash_one(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length of a partial word: its bytes in place, zeros above.
    #[test]
    fn a_partial_word_holds_its_bytes_and_zeros() {
        let bytes = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        for n in 0..8 {
            let want = bytes[..n]
                .iter()
                .enumerate()
                .fold(0u64, |w, (j, b)| w | u64::from(*b) << (8 * j));
            assert_eq!(short_word(&bytes[..n]), want, "{n} bytes");
        }
    }

    /// A prefetch is a hint: asked for keys there or not (in an empty table too), the
    /// table and its answers are as before.
    #[test]
    fn a_prefetch_changes_nothing() {
        let mut map: StrMap<String, u32, 3> = StrMap::default();
        map.prefetch("absent");
        for i in 0..1000u32 {
            map.insert(format!("user_{i:07}"), i);
        }
        for i in 0..2000u32 {
            map.prefetch(&format!("user_{i:07}"));
        }
        assert_eq!(map.len(), 1000);
        for i in 0..2000u32 {
            assert_eq!(map.get(&format!("user_{i:07}")), (i < 1000).then_some(&i));
        }
    }

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
