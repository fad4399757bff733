//! The process's dictionary of repeated strings (event names and types, parameter keys,
//! campaign names, URLs ...): the compact history refers to a string by its id, one copy
//! per process instead of one per history entry.
//!
//! Ids are dense, from 0, in the order strings were first seen; a string keeps its id for
//! the life of the process, so any worker thread reads any entry. Reads are lock-free
//! (chunks that never move); interning goes through a per-thread cache, and takes the
//! lock only for a string this thread has not seen. Bounded: past `MAX_STRINGS` strings
//! or `MAX_BYTES` bytes, nothing new is added and callers keep the string inline, so a
//! producer sending unique values costs memory once, up to the bound, not without limit.
//!
//! The keys and string values of events' `parameters` (`intern_repeated`) are taken
//! only when a thread meets them a second time: one seen once (an order's id, a URL
//! with a session in it) stays inline in its entry, and neither fills the dictionary
//! with strings no other entry shares nor takes its lock.

use std::cell::{Cell, RefCell};
use std::sync::{Mutex, OnceLock};

use rustc_hash::FxHashMap;

use crate::string_key::StrMap;

/// Most strings the dictionary holds.
pub const MAX_STRINGS: usize = 1 << 20;
/// Most bytes of string text it holds.
pub const MAX_BYTES: usize = 64 << 20;
/// Longest string worth an id; longer ones stay inline.
pub const MAX_LEN: usize = 256;

/// Chunk `c` holds ids `[FIRST << c ... FIRST << (c + 1))` minus `FIRST`: sizes double,
/// so 11 chunks cover `MAX_STRINGS` and a chunk, once made, never moves.
const FIRST: usize = 1 << 10;
const CHUNKS: usize = 11;

type Chunk = Box<[OnceLock<&'static str>]>;

struct Shared {
    ids: FxHashMap<&'static str, u32>,
    bytes: usize,
}

static CHUNK: [OnceLock<Chunk>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];
static SHARED: Mutex<Option<Shared>> = Mutex::new(None);

thread_local! {
    /// This thread's ids of the strings it has seen (`StrMap`: most compare within the
    /// table's own memory).
    static CACHE: RefCell<StrMap<&'static str, u32, 4>> = RefCell::default();
    /// In front of `CACHE`: the ids of strings seen lately, found without hashing the
    /// string (see `Front`). Made in place (`const`): no check that it was made, and
    /// cells rather than a `RefCell`, on a path of ~25 look-ups an event.
    static FRONT: Front = const { Front::new() };
}

/// A direct-mapped cache of the ids of strings of up to 16 bytes by their length and
/// first and last eight bytes, which are all of such a string. A history entry's
/// parameters intern ~20 strings (keys, campaign names, small values) per event; through
/// `CACHE` each look-up hashed the whole string and probed a hash table, ~110
/// instructions, a sixth of an event's. A slot is checked by three compares, in a table
/// small enough to stay in the CPU's first-level cache (the strings of small
/// vocabularies are a few hundred); a longer string, a miss, or a slot taken by another
/// string goes on to `CACHE`.
struct Front([Cell<Slot>; 1 << Front::BITS]);

#[derive(Clone, Copy)]
struct Slot {
    first: u64,
    last: u64,
    len: u32,
    id: u32,
}

/// Longest string `Front` holds.
const FRONT_LEN: usize = 16;

/// The first and last eight bytes of `s` (of up to 16 bytes) as words (for fewer than
/// eight, its bytes and zeros, and 0): with its length, all of `s`.
#[inline]
pub(crate) fn ends(s: &[u8]) -> (u64, u64) {
    let word = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    match s.len() {
        n @ 8.. => (word(0), word(n - 8)),
        _ => (crate::string_key::short_word(s), 0),
    }
}

impl Front {
    const BITS: u32 = 10;

    const fn new() -> Self {
        // No string has length `u32::MAX` here (`FRONT_LEN` at most).
        const EMPTY: Slot = Slot {
            first: 0,
            last: 0,
            len: u32::MAX,
            id: 0,
        };
        Front([const { Cell::new(EMPTY) }; 1 << Self::BITS])
    }

    #[inline]
    fn index(first: u64, last: u64, len: usize) -> usize {
        let mix = (first ^ last.rotate_left(29) ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mix >> (64 - Self::BITS)) as usize
    }

    #[inline]
    fn get(&self, s: &str) -> Option<u32> {
        let b = s.as_bytes();
        if b.len() > FRONT_LEN {
            return None;
        }
        let (first, last) = ends(b);
        let slot = self.0[Self::index(first, last, b.len())].get();
        (slot.first == first && slot.last == last && slot.len as usize == b.len())
            .then_some(slot.id)
    }

    fn put(&self, text: &str, id: u32) {
        let b = text.as_bytes();
        if b.len() > FRONT_LEN {
            return;
        }
        let (first, last) = ends(b);
        self.0[Self::index(first, last, b.len())].set(Slot {
            first,
            last,
            len: b.len() as u32,
            id,
        });
    }
}

/// Where id `id` lives: (chunk, index in it).
fn place(id: usize) -> (usize, usize) {
    let n = id + FIRST;
    let c = (usize::BITS - 1 - n.leading_zeros()) as usize - FIRST.trailing_zeros() as usize;
    (c, n - (FIRST << c))
}

/// The string with id `id`, if there is one.
#[inline]
pub fn get(id: u32) -> Option<&'static str> {
    let (c, i) = place(id as usize);
    CHUNK.get(c)?.get()?.get(i)?.get().copied()
}

/// How many strings the dictionary holds: ids below this are taken.
pub fn len() -> usize {
    let shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    shared.as_ref().map_or(0, |s| s.ids.len())
}

/// The id of `s`, giving it one if the dictionary has room; `None`: keep it inline.
///
/// ```
/// use event_trigger::dict;
/// let id = dict::intern("page_view").unwrap();
/// assert_eq!(dict::intern("page_view"), Some(id));
/// assert_eq!(dict::get(id), Some("page_view"));
/// ```
#[inline]
pub fn intern(s: &str) -> Option<u32> {
    // The front cache's hit inlined where strings are interned; the rest is a call.
    match in_front(s) {
        Some(id) => Some(id),
        None => intern_behind(s, Take::AtOnce),
    }
}

/// When a string without an id gets one.
#[derive(Clone, Copy, PartialEq)]
enum Take {
    AtOnce,
    /// When this thread meets it again (`intern_repeated`).
    Again,
}

#[inline(never)]
fn intern_behind(s: &str, take: Take) -> Option<u32> {
    if s.len() > MAX_LEN {
        return None;
    }
    if let Some(id) = in_cache(s) {
        return Some(id);
    }
    if take == Take::Again && !SEEN.with(|seen| seen.again(s)) {
        return None;
    }
    let (id, text) = intern_shared(s)?;
    remember(text, id);
    Some(id)
}

/// The id of `s` as `intern` gives it, once this thread has met `s` before (or holds its
/// id already); the first time, `None`: keep it inline. For events' keys and values,
/// where a producer may send strings that never come again: those are not worth an id,
/// a copy kept for the life of the process, or the lock to take one (see `Seen`).
///
/// ```
/// use event_trigger::dict;
/// assert_eq!(dict::intern_repeated("order-20261207-000123"), None);
/// let id = dict::intern_repeated("order-20261207-000123").unwrap();
/// assert_eq!(dict::intern_repeated("order-20261207-000123"), Some(id));
/// assert_eq!(dict::get(id), Some("order-20261207-000123"));
/// ```
#[inline]
pub fn intern_repeated(s: &str) -> Option<u32> {
    match in_front(s) {
        Some(id) => Some(id),
        None => intern_behind(s, Take::Again),
    }
}

thread_local! {
    static SEEN: Seen = const { Seen::new() };
}

/// The strings this thread offered to `intern_repeated` once and did not intern, as
/// fingerprints of their hashes in a direct-mapped table: a string is taken when its
/// fingerprint is still in its slot, i.e. when it comes again before ~`1 << BITS` other
/// once-seen strings have passed (a value of a small vocabulary comes again soon; a
/// URL of the shared workload every ~200 events). Two strings alike in fingerprint and
/// slot let the second in early: that only gives it an id.
struct Seen([Cell<u32>; 1 << Seen::BITS]);

impl Seen {
    /// 16,384 slots, 64 KiB a thread.
    const BITS: u32 = 14;

    const fn new() -> Self {
        Seen([const { Cell::new(0) }; 1 << Self::BITS])
    }

    /// Whether `s` was offered before (its fingerprint is in its slot); if not, it is
    /// now.
    fn again(&self, s: &str) -> bool {
        use std::hash::BuildHasher;
        let hash = rustc_hash::FxBuildHasher.hash_one(s);
        let slot = &self.0[(hash >> (64 - Self::BITS)) as usize];
        // Never 0, the empty slot's.
        let print = (hash as u32) | 1;
        if slot.get() == print {
            return true;
        }
        slot.set(print);
        false
    }
}

/// The id of `s` if this thread's front cache holds it.
#[inline]
fn in_front(s: &str) -> Option<u32> {
    // A longer string (a URL, one an event) goes straight to `CACHE`.
    if s.len() > FRONT_LEN {
        return None;
    }
    FRONT.with(|f| f.get(s))
}

/// The id of `s` if this thread has seen it, from `CACHE` (filling the front cache).
fn in_cache(s: &str) -> Option<u32> {
    let (text, id) = CACHE.with_borrow(|c| c.get_key_value(s).map(|(t, id)| (*t, *id)))?;
    FRONT.with(|f| f.put(text, id));
    Some(id)
}

/// That this thread has seen `text` (the dictionary's copy), with id `id`.
fn remember(text: &'static str, id: u32) {
    CACHE.with_borrow_mut(|c| c.insert_new(text, id));
    FRONT.with(|f| f.put(text, id));
}

fn intern_shared(s: &str) -> Option<(u32, &'static str)> {
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let shared = guard.get_or_insert_with(|| Shared {
        ids: FxHashMap::default(),
        bytes: 0,
    });
    if let Some((&text, &id)) = shared.ids.get_key_value(s) {
        return Some((id, text));
    }
    if shared.ids.len() >= MAX_STRINGS || shared.bytes + s.len() > MAX_BYTES {
        return None;
    }
    let id = shared.ids.len();
    // Leaked on purpose: the dictionary lives as long as the process and is bounded.
    let text: &'static str = Box::leak(s.into());
    let (c, i) = place(id);
    let chunk = CHUNK[c].get_or_init(|| (0..FIRST << c).map(|_| OnceLock::new()).collect());
    // Published before the id is handed out, so a reader given the id finds the text.
    let _ = chunk[i].set(text);
    shared.ids.insert(text, id as u32);
    shared.bytes += s.len();
    Some((id as u32, text))
}

/// The id of `s` if the dictionary has it (without adding it).
pub fn id_of(s: &str) -> Option<u32> {
    if let Some(id) = in_front(s).or_else(|| in_cache(s)) {
        return Some(id);
    }
    let guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let (&text, &id) = guard.as_ref()?.ids.get_key_value(s)?;
    drop(guard);
    // A checkpoint writer asks for every user's strings: the lock once per string.
    remember(text, id);
    Some(id)
}

/// The dictionary's copy of `s` (taking one if there is room): `None`, keep your own.
pub fn shared(s: &str) -> Option<&'static str> {
    intern(s).and_then(get)
}

/// The strings with ids `[0, n)`, in id order (for a checkpoint's dictionary).
pub fn prefix(n: usize) -> impl Iterator<Item = &'static str> {
    (0..n as u32).map_while(get)
}

/// Ids a thread's `View` holds (16 bytes each: 1 MiB at most).
const VIEW_MAX: usize = 1 << 16;

thread_local! {
    static VIEW: RefCell<View> = const { RefCell::new(View(Vec::new())) };
}

/// This thread's copy of the dictionary's texts by id, filled as ids are read: one
/// bounds check and one load where `get` finds the chunk and checks two `OnceLock`s
/// (~30 instructions, one for every key and string of a webhook body's history).
pub struct View(Vec<Option<&'static str>>);

impl View {
    /// The string with id `id`, as `get` gives it.
    #[inline]
    pub fn get(&mut self, id: u32) -> Option<&'static str> {
        match self.0.get(id as usize) {
            Some(Some(text)) => Some(text),
            _ => self.miss(id),
        }
    }

    #[inline(never)]
    fn miss(&mut self, id: u32) -> Option<&'static str> {
        let text = get(id)?;
        let at = id as usize;
        if at < VIEW_MAX {
            if at >= self.0.len() {
                self.0
                    .resize((at + 1).next_power_of_two().min(VIEW_MAX), None);
            }
            self.0[at] = Some(text);
        }
        Some(text)
    }
}

/// Runs `f` with this thread's `View` (not to be called again inside `f`).
pub fn with_view<R>(f: impl FnOnce(&mut View) -> R) -> R {
    VIEW.with_borrow_mut(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_chunks_without_gaps() {
        assert_eq!(place(0), (0, 0));
        assert_eq!(place(FIRST - 1), (0, FIRST - 1));
        assert_eq!(place(FIRST), (1, 0));
        assert_eq!(place(3 * FIRST - 1), (1, 2 * FIRST - 1));
        assert_eq!(place(3 * FIRST), (2, 0));
        let (c, i) = place(MAX_STRINGS - 1);
        assert!(c < CHUNKS && i < FIRST << c);
    }

    #[test]
    fn strings_keep_their_ids_across_threads() {
        let a = intern("dict-test-a").unwrap();
        let b = std::thread::spawn(|| intern("dict-test-b").unwrap())
            .join()
            .unwrap();
        let a2 = std::thread::spawn(|| intern("dict-test-a").unwrap())
            .join()
            .unwrap();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(get(b), Some("dict-test-b"));
        assert!(len() > a.max(b) as usize);
        assert!(prefix(len()).any(|s| s == "dict-test-a"));
    }

    /// The cache compares a string's first bytes beside its id (`string_key`): strings
    /// that share them, or differ only by trailing zero bytes, keep their own ids.
    #[test]
    fn strings_alike_in_their_first_bytes_keep_their_own_ids() {
        let long = "dict-test-".repeat(4);
        let strings = [
            "dict-test-z".to_string(),
            "dict-test-z\0".to_string(),
            format!("{long}x"),
            format!("{long}y"),
            long[..32].to_string(),
            long[..33].to_string(),
        ];
        let ids: Vec<u32> = strings.iter().map(|s| intern(s).unwrap()).collect();
        for (s, id) in strings.iter().zip(&ids) {
            assert_eq!(get(*id), Some(s.as_str()));
            assert_eq!(intern(s), Some(*id));
            assert_eq!(id_of(s), Some(*id));
            let other_thread = std::thread::scope(|t| t.spawn(|| id_of(s)).join().unwrap());
            assert_eq!(other_thread, Some(*id));
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), strings.len());
        assert_eq!(id_of(&format!("{long}w")), None);
    }

    /// The front cache answers a string only with the id put for that same string: not
    /// for one alike in its length or ends, nor for one whose slot another took; and
    /// strings past `FRONT_LEN` bytes not at all.
    #[test]
    fn the_front_cache_gives_only_the_id_of_the_same_string() {
        let front = Front::new();
        let mut strings: Vec<String> = (0..40).map(|n| "a".repeat(n)).collect();
        for n in 0..=20 {
            let head = "h".repeat(n.min(8));
            let tail = "t".repeat(n.saturating_sub(8).min(8));
            for middle in ["", "x", "y", "xy", "yx", "\0"] {
                strings.push(format!("{head}{middle}{tail}"));
            }
        }
        strings.extend((0..3000).map(|i| format!("p/{i}")));
        strings.extend((0..100).map(|i| format!("https://shop.example.com/p/{i}")));
        strings.extend(["ab".into(), "ab\0".into(), "\0".into(), "é€".into()]);
        strings.sort();
        strings.dedup();
        assert_eq!(
            front.get(""),
            None,
            "an empty slot holds no string, not even \"\""
        );
        for (id, text) in strings.iter().enumerate() {
            front.put(text, id as u32);
            let want = (text.len() <= FRONT_LEN).then_some(id as u32);
            assert_eq!(front.get(text), want, "{text:?}");
        }
        let mut hits = 0;
        for (id, text) in strings.iter().enumerate() {
            if let Some(got) = front.get(text) {
                assert_eq!(got, id as u32, "{text:?}");
                hits += 1;
            }
        }
        // 3,000 strings of up to 16 bytes in 1,024 slots: about one in three stays.
        assert!(hits > 500, "{hits} of {}", strings.len());
    }

    #[test]
    fn long_strings_stay_inline() {
        assert_eq!(intern(&"x".repeat(MAX_LEN + 1)), None);
    }

    /// A thread's view gives what `get` gives, for ids it holds, ids past what it
    /// holds, and ids the dictionary has not given out.
    #[test]
    fn the_view_reads_what_the_dictionary_holds() {
        let ids: Vec<u32> = (0..3_000)
            .map(|i| intern(&format!("view-{i}")).unwrap())
            .collect();
        with_view(|view| {
            for round in 0..2 {
                for &id in ids.iter().rev() {
                    assert_eq!(view.get(id), get(id), "round {round}");
                }
            }
            // Ids the dictionary never gives (other tests add strings meanwhile).
            assert_eq!(view.get(MAX_STRINGS as u32), None);
            assert_eq!(view.get(u32::MAX), None);
            assert_eq!(view.get(ids[7]), get(ids[7]));
        });
    }
}
