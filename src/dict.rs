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

use std::cell::RefCell;
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
pub fn intern(s: &str) -> Option<u32> {
    if s.len() > MAX_LEN {
        return None;
    }
    if let Some(id) = CACHE.with_borrow(|c| c.get(s).copied()) {
        return Some(id);
    }
    let (id, text) = intern_shared(s)?;
    CACHE.with_borrow_mut(|c| c.insert_new(text, id));
    Some(id)
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
    if let Some(id) = CACHE.with_borrow(|c| c.get(s).copied()) {
        return Some(id);
    }
    let guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let (&text, &id) = guard.as_ref()?.ids.get_key_value(s)?;
    drop(guard);
    // A checkpoint writer asks for every user's strings: the lock once per string.
    CACHE.with_borrow_mut(|c| c.insert_new(text, id));
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

    #[test]
    fn long_strings_stay_inline() {
        assert_eq!(intern(&"x".repeat(MAX_LEN + 1)), None);
    }
}
