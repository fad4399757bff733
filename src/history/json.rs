//! The JSON text of history entries, byte for byte what serde_json writes for a
//! `[HistoryEntry]`, without building the entries.
//!
//! A webhook body is mostly this text (~100 entries of ~10 members each), written piece
//! by piece: quotes, a key, a value. `put3` writes three pieces with one capacity check
//! and copies the short middle one inline; `Vec::extend_from_slice` per piece called
//! `memmove` for a few bytes and checked the capacity each time, and was half of the
//! writer's time.

use super::codec::{self, Reader};

/// Appends `a`, `b` and `c`. `a` and `c` are meant to be short literals (their copies
/// become plain stores once this is inlined); `b` of up to 16 bytes is copied by two
/// overlapping loads and stores instead of a call to `memcpy`.
#[inline(always)]
pub fn put3(out: &mut Vec<u8>, a: &[u8], b: &[u8], c: &[u8]) {
    let n = a.len() + b.len() + c.len();
    out.reserve(n);
    let len = out.len();
    // SAFETY: `reserve` made room for `n` bytes past `len`; the three copies write
    // exactly `a.len()`, `b.len()` and `c.len()` bytes one after another from there,
    // reading only inside `a`, `b` and `c`; the bytes up to `len + n` are then written.
    unsafe {
        let dst = out.as_mut_ptr().add(len);
        std::ptr::copy_nonoverlapping(a.as_ptr(), dst, a.len());
        copy_short(b, dst.add(a.len()));
        std::ptr::copy_nonoverlapping(c.as_ptr(), dst.add(a.len() + b.len()), c.len());
        out.set_len(len + n);
    }
}

/// Copies `src` to `dst` (room for `src.len()` bytes, not overlapping `src`).
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and not overlap `src`.
#[inline(always)]
unsafe fn copy_short(src: &[u8], dst: *mut u8) {
    let n = src.len();
    let s = src.as_ptr();
    // SAFETY (all arms): every load reads inside `src` (offsets 0 and `n - width`
    // with `n >= width`) and every store writes inside `dst[..n]`, as the caller
    // promised room for.
    unsafe {
        match n {
            8..=16 => {
                let head = s.cast::<u64>().read_unaligned();
                let tail = s.add(n - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(head);
                dst.add(n - 8).cast::<u64>().write_unaligned(tail);
            }
            4..=7 => {
                let head = s.cast::<u32>().read_unaligned();
                let tail = s.add(n - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(head);
                dst.add(n - 4).cast::<u32>().write_unaligned(tail);
            }
            0..=3 => {
                for i in 0..n {
                    *dst.add(i) = *s.add(i);
                }
            }
            _ => std::ptr::copy_nonoverlapping(s, dst, n),
        }
    }
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // Rare: serde_json itself, for its exact escapes.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    put3(out, b"\"", s.as_bytes(), b"\"");
}

fn needs_escape(b: &[u8]) -> bool {
    has_special(b, false)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether `b` holds a byte JSON escapes (below 0x20, `"`, `\\`) or, with `high`, one
/// past printable ASCII (above 0x7e). Eight bytes at a time: a history entry's id, name
/// and type are checked in every body that holds the entry, a byte at a time ~4
/// instructions a byte.
#[inline]
fn has_special(b: &[u8], high: bool) -> bool {
    let mut words = b.chunks_exact(8);
    let mut found = false;
    for w in &mut words {
        found |= word_special(u64::from_le_bytes(w.try_into().unwrap_or_default()), high);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        // Padded with spaces, which are neither.
        let mut last = [b' '; 8];
        last[..rest.len()].copy_from_slice(rest);
        found |= word_special(u64::from_le_bytes(last), high);
    }
    found
}

/// `has_special` of one word: each test sets a byte's high bit where it holds, and
/// exactly where some byte does (a borrow or carry only runs on from a byte that holds).
#[inline(always)]
fn word_special(w: u64, high: bool) -> bool {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let mut hits =
        below_space | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')));
    if high {
        // 0x7f and up: adding 1 reaches the high bit, or it was set.
        hits |= (w.wrapping_add(ONES) | w) & HIGHS;
    }
    hits != 0
}

/// Appends the stored text `b` of an inline string as `write_str` would its `&str`:
/// text that is not UTF-8 (damage a checksum missed) reads as the empty string, as
/// `Reader::str` gives it. Printable ASCII, the usual case, is copied as it is.
fn write_stored(out: &mut Vec<u8>, b: &[u8]) {
    if !has_special(b, true) {
        put3(out, b"\"", b, b"\"");
    } else {
        write_str(out, std::str::from_utf8(b).unwrap_or_default());
    }
}

/// Appends `n` in decimal.
pub fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

/// Appends `v` in decimal.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    // Up to 20 digits: `put3`'s short copy, not a call to `memcpy`.
    put3(out, b"", buf.format(v).as_bytes(), b"");
}

/// Appends the JSON array of the entries in `bytes` (each a varint length, then its
/// body), read as `codec::read_entry` reads them.
pub(super) fn write_entries(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'[');
    let mut at = 0;
    let mut sep: &[u8] = b"";
    crate::dict::with_view(|view| {
        while let Some(body) = super::body_at(bytes, at) {
            at = super::end_of(bytes, body);
            put3(out, sep, b"{", b"\"event_id\":");
            sep = b",";
            write_entry(out, &mut Reader::new(body), view);
            out.push(b'}');
        }
    });
    out.push(b']');
}

/// The members of one entry, from `"event_id"`'s value on.
fn write_entry(out: &mut Vec<u8>, r: &mut Reader<'_>, view: &mut crate::dict::View) {
    let f = codec::read_entry_stored(r, view);
    match f.event_id {
        Some(id) => write_stored(out, id),
        None => out.extend_from_slice(b"null"),
    }
    for (key, s) in [
        (&b",\"event_name\":"[..], f.event_name),
        (b",\"event_type\":", f.event_type),
    ] {
        match s {
            Some(s) => {
                out.extend_from_slice(key);
                write_stored(out, s);
            }
            None => put3(out, key, b"", b"null"),
        }
    }
    out.extend_from_slice(b",\"timestamp\":");
    write_i64(out, f.timestamp);
    match f.parameters {
        Some(p) => {
            out.extend_from_slice(b",\"parameters\":");
            codec::write_json_in(out, p, view);
        }
        None => out.extend_from_slice(b",\"parameters\":null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers_are_written_as_serde_json_writes_them() {
        for s in [
            "plain",
            "",
            "q\"b\\s",
            "ctl\u{1}\n\t\u{8}\u{c}\r\u{1f}",
            "é ü \u{7f} /",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        for n in [0, 7, -7, 1764000000000, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_i64(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
        let mut out = Vec::new();
        write_u64(&mut out, u64::MAX);
        assert_eq!(out, serde_json::to_vec(&u64::MAX).unwrap());
    }

    /// The word-at-a-time check agrees with a byte-at-a-time one for every byte value at
    /// every place of strings of 0-24 bytes, and for random strings.
    #[test]
    fn special_bytes_are_found_wherever_they_are() {
        let naive = |b: &[u8], high: bool| {
            b.iter()
                .any(|&c| c < 0x20 || c == b'"' || c == b'\\' || (high && c > 0x7e))
        };
        for len in 0..=24usize {
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    b[at] = c;
                    for high in [false, true] {
                        assert_eq!(has_special(&b, high), naive(&b, high), "{b:?} {high}");
                    }
                }
            }
        }
        let mut rng = crate::history::tests::Rng::new(7);
        for _ in 0..20_000 {
            let len = rng.next(40) as usize;
            // Mostly printable, so that the one special byte is often alone.
            let b: Vec<u8> = (0..len)
                .map(|_| match rng.next(16) {
                    0 => rng.next(256) as u8,
                    _ => 0x20 + rng.next(0x5f) as u8,
                })
                .collect();
            for high in [false, true] {
                assert_eq!(has_special(&b, high), naive(&b, high), "{b:?} {high}");
            }
        }
    }

    /// Every length through each of `copy_short`'s ways (0-3, 4-7, 8-16, longer), onto
    /// buffers with no room left and with room, lands the same bytes as
    /// `extend_from_slice`, and nothing else.
    #[test]
    fn put3_writes_pieces_of_every_length() {
        let text: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        for n in 0..=text.len() {
            for start in [0, 1, 7] {
                let b = &text[start..(start + n).min(text.len())];
                for spare in [0, 3, 64] {
                    let mut out = Vec::with_capacity(5 + spare);
                    out.extend_from_slice(b"01234");
                    put3(&mut out, b",\"", b, b"\":");
                    let mut want = b"01234,\"".to_vec();
                    want.extend_from_slice(b);
                    want.extend_from_slice(b"\":");
                    assert_eq!(out, want, "length {} from {start}", b.len());
                }
            }
        }
    }

    /// A stored event id that is not UTF-8 (damage a checksum missed) is written as the
    /// entry reader reads it: `""`; other ids as `write_str` writes their text.
    #[test]
    fn stored_ids_are_written_as_the_entry_reader_reads_them() {
        for (stored, want) in [
            (&b"evt_000000001"[..], "evt_000000001"),
            (b"", ""),
            (b"q\"b", "q\"b"),
            ("é\u{1}".as_bytes(), "é\u{1}"),
            (b"\xff\xfeid", ""),
        ] {
            let mut out = Vec::new();
            write_stored(&mut out, stored);
            assert_eq!(out, serde_json::to_vec(want).unwrap(), "{stored:?}");
        }
    }
}
