//! A user's event history, compact: its entries encoded one after another in one buffer
//! (`codec`), repeated strings by id in the process's dictionary (`crate::dict`).
//!
//! The wire's `HistoryEntry` (Profile API answers, webhook bodies) is what goes in and
//! comes out; in between an entry takes ~60-100 bytes instead of ~450 (its own
//! allocations, the event's raw `parameters`). In serde formats a history is the list of
//! its entries, as before (the exchange between processes, v1 checkpoints); checkpoint
//! parts and RocksDB keep the encoded bytes (`encoded`, `from_encoded`).

pub mod codec;
mod json;

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{HistoryEntry, RawJson, UserEvent};
use codec::{Fields, Malformed, Reader};

thread_local! {
    /// An entry being encoded, before it is appended (one buffer per thread).
    static ENTRY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub use json::{put3, write_i64, write_str, write_u64};

/// The entries of one user's history, oldest first.
#[derive(Clone, Default)]
pub struct History {
    /// Entries from `head` on: each a varint length, then its body.
    bytes: Vec<u8>,
    head: usize,
    len: usize,
}

/// One entry, borrowed from its history (or from the dictionary).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry<'a> {
    pub event_id: Option<&'a str>,
    pub event_name: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub timestamp: i64,
    pub parameters: Option<Params<'a>>,
}

/// An entry's `parameters`, as tokens.
#[derive(Clone, Copy, Debug)]
pub struct Params<'a>(&'a [u8]);

/// Equal when their JSON text is (the same text may be tokens or kept whole).
impl PartialEq for Params<'_> {
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        self.write_json(&mut a);
        other.write_json(&mut b);
        a == b
    }
}

impl<'a> Params<'a> {
    /// Tokens `codec` wrote of one JSON value.
    pub(crate) fn of(tokens: &'a [u8]) -> Self {
        Params(tokens)
    }

    /// Appends the JSON text, as it arrived.
    pub fn write_json(self, out: &mut Vec<u8>) {
        codec::write_json(out, self.0);
    }

    pub fn to_raw(self) -> RawJson {
        RawJson::from_tokens(self.0)
    }
}

impl<'a> Entry<'a> {
    fn from_fields(f: Fields<&'a [u8], &'a str>) -> Self {
        Entry {
            event_id: f.event_id,
            event_name: f.event_name,
            event_type: f.event_type,
            timestamp: f.timestamp,
            parameters: f.parameters.map(Params),
        }
    }

    pub fn to_owned(self) -> HistoryEntry {
        HistoryEntry {
            event_id: self.event_id.map(Into::into),
            event_name: self.event_name.map(Into::into),
            event_type: self.event_type.map(Into::into),
            timestamp: self.timestamp,
            parameters: self.parameters.map(|p| p.to_raw()),
        }
    }
}

/// The entries of a history, oldest first, with where each starts.
pub struct Entries<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Entries<'a> {
    /// (offset for `History::at`, entry)
    type Item = (usize, Entry<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.pos;
        let body = body_at(self.bytes, at)?;
        self.pos = end_of(self.bytes, body);
        Some((
            at,
            Entry::from_fields(codec::read_entry(&mut Reader::new(body))),
        ))
    }
}

/// The body of the entry at `at`, if one starts there.
fn body_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let rest = bytes.get(at..).filter(|r| !r.is_empty())?;
    let mut r = Reader::new(rest);
    let n = r.varint() as usize;
    let start = r.pos;
    rest.get(start..start + n)
}

/// Where the entry whose `body` is in `bytes` ends (the next one starts).
fn end_of(bytes: &[u8], body: &[u8]) -> usize {
    (body.as_ptr() as usize - bytes.as_ptr() as usize) + body.len()
}

/// Whether `bytes` are `n` entries exactly.
fn entries_fill(bytes: &[u8], n: usize) -> bool {
    let mut at = 0;
    for _ in 0..n {
        let Some(body) = body_at(bytes, at) else {
            return false;
        };
        at = end_of(bytes, body);
    }
    at == bytes.len()
}

impl History {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held for the entries (their encoding, not the buffer's spare room).
    pub fn encoded_len(&self) -> usize {
        self.bytes.len() - self.head
    }

    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        self.entries().map(|(_, e)| e)
    }

    /// The entries with their offsets (for `at`).
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            bytes: &self.bytes,
            pos: self.head,
        }
    }

    /// The entry at `offset` (from `entries`), if it is still there.
    pub fn at(&self, offset: usize) -> Option<Entry<'_>> {
        if offset < self.head {
            return None;
        }
        body_at(&self.bytes, offset)
            .map(|b| Entry::from_fields(codec::read_entry(&mut Reader::new(b))))
    }

    /// Appends the entry an event makes; returns the bytes it takes (its length and body).
    pub fn push_event(&mut self, ev: &UserEvent) -> usize {
        self.push_fields(&Fields {
            event_id: ev.event_id.as_deref(),
            event_name: ev.event_name.as_deref(),
            event_type: Some(&ev.event_type),
            timestamp: ev.timestamp,
            parameters: ev.parameters.as_ref().map(RawJson::tokens),
        })
    }

    pub fn push(&mut self, e: &HistoryEntry) {
        self.push_fields(&Fields {
            event_id: e.event_id.as_deref(),
            event_name: e.event_name.as_deref(),
            event_type: e.event_type.as_deref(),
            timestamp: e.timestamp,
            parameters: e.parameters.as_ref().map(RawJson::tokens),
        });
    }

    /// Appends an entry of these fields (`parameters`: their tokens); returns the bytes
    /// it takes.
    pub(crate) fn push_fields(&mut self, f: &Fields<&[u8], &str>) -> usize {
        let before = self.bytes.len();
        // The body is encoded aside first, so that the buffer grows by exactly the
        // entry (length, then body): see `reserve`.
        ENTRY.with_borrow_mut(|body| {
            body.clear();
            codec::put_entry(body, f);
            self.reserve(body.len() + codec::varint_len(body.len() as u64));
            codec::put_varint(&mut self.bytes, body.len() as u64);
            self.bytes.extend_from_slice(body);
        });
        self.len += 1;
        self.bytes.len() - before
    }

    /// Grows to the allocator's block for the bytes needed, no further: mimalloc rounds
    /// a block up to its size class (classes are 12-25% apart), so the spare room is at
    /// most a class's rounding, which the block has anyway. Histories are many and
    /// small: growing by half, with 128 bytes kept free, held about a third more than
    /// the entries (191 MB of buffers at the peak of the 100k-user benchmark; 45 MiB
    /// less peak RSS since). Growing by exactly what was needed left no room in the
    /// buffer as `Vec` saw it, so every entry appended was a call to `realloc` (~200
    /// instructions, mostly to find that the block had room); now one in several is.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let need = self.bytes.len() + additional;
        if need > self.bytes.capacity() {
            let block = crate::allocator::block_size(need);
            self.bytes.reserve_exact(block - self.bytes.len());
        }
    }

    /// Appends `other`'s entries (ids are the same in the whole process).
    pub fn extend(&mut self, other: &History) {
        self.reserve(other.encoded_len());
        self.bytes.extend_from_slice(&other.bytes[other.head..]);
        self.len += other.len;
    }

    /// Keeps the newest `max` entries.
    pub fn keep_newest(&mut self, max: usize) {
        while self.len > max {
            let Some(body) = body_at(&self.bytes, self.head) else {
                break;
            };
            self.head = end_of(&self.bytes, body);
            self.len -= 1;
        }
        // Dropped entries are reclaimed once they are a quarter of the buffer: moving
        // the rest costs that much again, once per quarter.
        if self.head > 0 && (self.head >= self.bytes.len() / 4 || self.len == 0) {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
    }

    /// A history of `entries` (borrowed or owned), oldest first.
    pub fn from_entries<E: Borrow<HistoryEntry>>(entries: impl IntoIterator<Item = E>) -> Self {
        let mut h = History::default();
        for e in entries {
            h.push(e.borrow());
        }
        h
    }

    pub fn to_entries(&self) -> Vec<HistoryEntry> {
        self.iter().map(|e| e.to_owned()).collect()
    }

    /// The entries' encoding: ids are this process's (see `from_encoded`).
    pub fn encoded(&self) -> &[u8] {
        &self.bytes[self.head..]
    }

    /// The encoding of the newest `n` entries (all of them, if it has fewer).
    ///
    /// `bytes`: what the newest `n` take, if known (`ChangeMark::appended_bytes`), so
    /// that only they are read (skipping the older ones read every line of the history,
    /// cold for the checkpoint writer: ~85% of its time on a tail); checked to be `n`
    /// whole entries that end the history, else the older ones are skipped.
    pub fn newest_encoded(&self, n: usize, bytes: Option<usize>) -> &[u8] {
        if n < self.len
            && let Some(newest) = bytes
                .and_then(|b| self.bytes.len().checked_sub(b))
                .filter(|&start| start >= self.head)
                .map(|start| &self.bytes[start..])
            && entries_fill(newest, n)
        {
            return newest;
        }
        // Skipped by their lengths, undecoded.
        let mut at = self.head;
        for _ in 0..self.len.saturating_sub(n) {
            let Some(body) = body_at(&self.bytes, at) else {
                break;
            };
            at = end_of(&self.bytes, body);
        }
        &self.bytes[at..]
    }

    /// A history from `encoded` bytes, their ids looked up through `lookup` (`None`:
    /// they are this process's own) and given this process's ids.
    ///
    /// Bytes in this process's ids are taken as their writer encoded them, checked only
    /// for how they divide into entries: they come from a checkpoint part whose checksum
    /// over all its bytes was checked before it is read, or from RocksDB, which checks
    /// its blocks'. Walking every entry's tokens again was about half of a restore's
    /// time. Reading an entry never panics on bytes it cannot decode (`Reader` gives
    /// empty strings), so damage past both checksums would show in what is read, not
    /// crash the job. Another process's ids are translated entry by entry, which
    /// decodes and checks every entry.
    pub fn from_encoded(
        encoded: &[u8],
        lookup: Option<&dyn Fn(u32) -> Option<String>>,
    ) -> Result<History, Malformed> {
        let mut h = History::default();
        let mut at = 0;
        while at < encoded.len() {
            let body = body_at(encoded, at).ok_or(Malformed(at))?;
            let end = end_of(encoded, body);
            match lookup {
                None => h.len += 1,
                Some(lookup) => {
                    let mut out = Vec::new();
                    let mut r = Reader::new(body);
                    codec::translate_entry(&mut out, &mut r, lookup)?;
                    h.push_encoded(&out);
                }
            }
            at = end;
        }
        // Entries in this process's ids are kept as they are: one copy of them all, not
        // a growing copy per entry (its reallocations were a tenth of a restore).
        if lookup.is_none() {
            h.bytes = encoded.to_vec();
        }
        Ok(h)
    }

    fn push_encoded(&mut self, body: &[u8]) {
        codec::put_varint(&mut self.bytes, body.len() as u64);
        self.bytes.extend_from_slice(body);
        self.len += 1;
    }

    /// The JSON array of the entries, as serde_json writes a `[HistoryEntry]`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        json::write_entries(out, self.encoded());
    }
}

impl PartialEq for History {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for History {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len))?;
        for e in self.iter() {
            seq.serialize_element(&e.to_owned())?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<HistoryEntry>::deserialize(d)?;
        Ok(History::from_entries(&entries))
    }
}

impl FromIterator<HistoryEntry> for History {
    fn from_iter<I: IntoIterator<Item = HistoryEntry>>(entries: I) -> Self {
        History::from_entries(entries)
    }
}

impl From<Vec<HistoryEntry>> for History {
    fn from(entries: Vec<HistoryEntry>) -> Self {
        History::from_entries(&entries)
    }
}

#[cfg(test)]
pub(crate) mod tests;
