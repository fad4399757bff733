//! Finding where a JSON string's text stops, eight bytes at a time.
//!
//! The strings of an event are short (keys, names, ids, short URLs): `memchr2` set up
//! its vector search anew for each one and cost ~90 instructions a string, more than
//! the bytes it skipped. This is serde_json's own scan (Mycroft's zero-byte test on a
//! word), inlined where a string is read.

const ONES: u64 = u64::MAX / 255;
const HIGHS: u64 = ONES << 7;

/// The index of the first byte of `b` from `from` on that is `"`, `\` or a control
/// character (below 0x20), or `b.len()` if none is.
///
/// ```
/// use event_trigger::json_scan::string_stop;
/// assert_eq!(string_stop(b"\"page_view\",", 1), 10);
/// assert_eq!(string_stop(b"a\\\"b", 0), 1);
/// assert_eq!(string_stop(b"\xc3\xa9\n", 0), 2);
/// assert_eq!(string_stop(b"abc", 0), 3);
/// ```
#[inline]
pub fn string_stop(b: &[u8], mut i: usize) -> usize {
    while let Some(Ok(word)) = b.get(i..i + 8).map(<[u8; 8]>::try_from) {
        let w = u64::from_le_bytes(word);
        // A byte of `x` is zero exactly where the lowest flagged byte of
        // `(x - ONES) & !x & HIGHS` is; bytes above it may be flagged falsely.
        let zero = |x: u64| x.wrapping_sub(ONES) & !x;
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        let found =
            (control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))))
                & HIGHS;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i.min(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value at every place of strings around the word's length: the scan
    /// stops where a byte-by-byte one does.
    #[test]
    fn stops_where_a_byte_at_a_time_stops() {
        let slow = |b: &[u8], from: usize| {
            (from..b.len())
                .find(|&i| matches!(b[i], b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(b.len())
        };
        for len in 0..20 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut b = vec![b'x'; len];
                    b[at] = byte;
                    // A high byte after the stop must not hide it, nor one before.
                    if at + 1 < len {
                        b[at + 1] = 0xff;
                    }
                    for from in 0..=len.min(3) {
                        assert_eq!(string_stop(&b, from), slow(&b, from), "{b:?} from {from}");
                    }
                }
            }
        }
    }
}
