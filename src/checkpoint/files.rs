//! The files of a checkpoint: written whole or not at all (temporary file, fsync,
//! rename, fsync of the directory), and checked when read back.
//!
//! A state part is `MAGIC`, then one LZ4 frame (`lz4_flex::frame`) of its body, then the
//! trailer: the number of users, the xxh3 of everything before the trailer (the frame
//! as written: a part is checked without decompressing it), both u64 little-endian, and
//! `MAGIC` again. The body is the writing process's string dictionary (the ids the
//! compact histories use: a u64 count, then each string as a u32 length and its bytes),
//! then per user a `1` byte, the user id and its state (`store::codec`), each as a u64
//! length and its bytes, or for a user whose look-up was still running a `2` byte and the
//! bincode of `(user, PendingUser)` (a `3` byte and `(user, PendingUser, UserTriggers)`
//! when its state before the look-up has triggers); then a `0` byte.
//!
//! A delta part (`MAGIC_DELTA_EXT`) holds only the strings its chain's previous part
//! did not: before the dictionary, a u64 of the first id it gives (the previous part's
//! dictionary size); ids before it are the previous parts'. A chain is read with the
//! dictionaries of all its parts (`ChainReader`).
//!
//! A delta part (`MAGIC_DELTA_TAILS`) may give a user's state with,
//! in place of its whole history, what the history gained since the user's record in
//! the part before (`store::codec::encode_tail_into`), merged on restore.
//!
//! Parts of the earlier formats are still read: `MAGIC_V2`, the same body uncompressed,
//! `MAGIC_DELTA` and `MAGIC_DELTA_PLAIN`, deltas with the whole dictionary, and
//! `MAGIC_V1`: no dictionary, states as bincode of `UserState` with the history as its
//! list of entries.

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3Default;

use super::direct::DirectWriter;

use super::lz4_frame::{BLOCK, Lz4Frame};
use crate::history::History;
use crate::model::{PendingUser, SavedUser, Text, UserState};
use crate::store::Records;
use crate::store::codec::{self, Ids, Words};

const MAGIC: &[u8; 8] = b"ETSTATE3";
/// A delta part: the body of `MAGIC`, with the users changed since the part it builds on
/// and `REMOVED` records for those gone; a magic of its own so that a release without
/// deltas refuses it (and falls back to an older checkpoint) instead of restoring it as
/// a whole state.
const MAGIC_DELTA: &[u8; 8] = b"ETDELTA1";
const MAGIC_V2: &[u8; 8] = b"ETSTATE2";
const MAGIC_V1: &[u8; 8] = b"ETSTATE1";
/// A delta part uncompressed.
const MAGIC_DELTA_PLAIN: &[u8; 8] = b"ETDELTA0";
/// A delta part whose dictionary extends its chain's previous part's, compressed: with a
/// process's dictionary of every URL and campaign seen (up to 64 MiB), each delta wrote
/// it all again.
const MAGIC_DELTA_EXT: &[u8; 8] = b"ETDELTA3";
/// The same, uncompressed.
const MAGIC_DELTA_EXT_PLAIN: &[u8; 8] = b"ETDELTA2";
/// A delta part as `MAGIC_DELTA_EXT` whose records may give what a user's history
/// gained since its record in the part before (`codec::encode_tail_into`): a magic of
/// its own so that a release that cannot merge them refuses the part at its check,
/// before restoring any of it.
const MAGIC_DELTA_TAILS: &[u8; 8] = b"ETDELTA5";
/// The same, uncompressed.
const MAGIC_DELTA_TAILS_PLAIN: &[u8; 8] = b"ETDELTA4";
/// A delta part as `MAGIC_DELTA_TAILS` whose tails may leave out what they share with
/// the record they build on (`codec::encode_tail_into`, `codec::inherit`): a magic of
/// its own, so that a release that cannot fill them in refuses the part.
const MAGIC_DELTA_SAME: &[u8; 8] = b"ETDELTA7";
/// The same, uncompressed.
const MAGIC_DELTA_SAME_PLAIN: &[u8; 8] = b"ETDELTA6";
/// The magic numbers of the parts this build reads.
const MAGICS: [&[u8; 8]; 11] = [
    MAGIC,
    MAGIC_DELTA_SAME,
    MAGIC_DELTA_SAME_PLAIN,
    MAGIC_DELTA_TAILS,
    MAGIC_DELTA_TAILS_PLAIN,
    MAGIC_DELTA_EXT,
    MAGIC_DELTA_EXT_PLAIN,
    MAGIC_DELTA,
    MAGIC_DELTA_PLAIN,
    MAGIC_V2,
    MAGIC_V1,
];
const TRAILER: usize = 8 + 8 + MAGIC.len();
/// How many records ahead of the one it encodes the part writer asks for their parts,
/// and then for what those point to (`codec::prefetch_parts`, `prefetch_contents`).
const PREFETCH_PARTS: usize = 16;
const PREFETCH_CONTENTS: usize = 8;
/// Record tags.
const END: u8 = 0;
const STATE: u8 = 1;
const PENDING: u8 = 2;
/// A pending user whose state before its look-up has triggers: bincode of `(user,
/// PendingUser, UserTriggers)` (its `UserState` serde form leaves them out).
const PENDING_WITH_TRIGGERS: u8 = 3;
/// In a delta part, a user gone since the part it builds on: bincode of the user id.
const REMOVED: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Shown once: the `io::Error` is not given as this one's source too (which `{:#}`
    /// would print again).
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl CheckpointError {
    pub fn io(path: &Path, cause: io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }

    pub fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Writes `path` so that it either does not exist or is complete: `write` fills a
/// temporary file beside it, which is synced and renamed over `path`, and the directory
/// is synced so the rename survives a crash. Returns the file's size.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    commit_atomic(path, |tmp| {
        let mut out = BufWriter::new(File::create(tmp)?);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())
    })
}

/// `write_atomic` around the page cache where the file system allows (`direct`): for
/// state parts, large and written once.
pub fn write_atomic_direct(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    commit_atomic(path, |tmp| {
        let mut out = DirectWriter::create(tmp)?;
        write(&mut out)?;
        out.finish()
    })
}

/// Syncs the file `fill` writes at a temporary path, renames it to `path` and syncs the
/// directory; removes the temporary file on failure.
fn commit_atomic(path: &Path, fill: impl FnOnce(&Path) -> io::Result<File>) -> io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let file = fill(&tmp)?;
        file.sync_all()?;
        let bytes = file.metadata()?.len();
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        Ok(bytes)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` if missing; refuses a file in its place (`create_dir_all` says only
/// "File exists").
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_file() {
        return Err(io::Error::other("it is a file, not a directory"));
    }
    std::fs::create_dir_all(dir)
}

/// What a finished part holds.
#[derive(Clone, Debug, PartialEq)]
pub struct PartInfo {
    pub users: u64,
    pub bytes: u64,
    /// How many strings its dictionary reaches (a delta's extends the part before).
    pub words: u64,
    /// Its checksum (the trailer's): which file a delta built on it names.
    pub hash: u64,
    /// Its body's bytes before compression (`bytes` less the magic and trailer, for a
    /// part written as it is).
    pub raw: u64,
    /// From the start of the snapshot to the part being on disk.
    pub duration: Duration,
    /// The writer thread's CPU time: what the part cost beside the worker's.
    pub cpu: Duration,
    /// The records' vector, emptied, for the next snapshot to fill: its memory stays
    /// the process's (a new one each part was faulted in page by page).
    pub spare: Records,
}

/// Counts and hashes what passes through, for the trailer.
struct Hashing<'a> {
    inner: &'a mut dyn Write,
    hasher: Xxh3Default,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Records a state backend hands over already encoded, as the key (the user id) and the
/// value (`store::codec` of its `UserState`) it stores them under: RocksDB's checkpoint
/// is copied into the part without decoding a user. The closure calls `each` per record.
pub type EncodedRecords = Box<dyn FnOnce(RecordSink<'_>) -> io::Result<()> + Send>;

/// Takes one encoded record: the user id and `store::codec` of its `UserState`.
pub type RecordSink<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> io::Result<()>;

/// What a snapshot hands its part writer: the store's users (some maybe already
/// encoded) and the users whose look-ups were running.
pub struct PartRecords {
    pub base: Option<EncodedRecords>,
    pub states: Records,
    pub pending: Vec<(Text, PendingUser)>,
    /// A delta part: the users gone since the part it builds on (else none, and a whole
    /// state part).
    pub removed: Option<Vec<Text>>,
    /// A delta part: what the manifest needs of it, written (atomically) to this path
    /// before the part.
    pub chain: Option<(PathBuf, super::manifest::ChainPart)>,
    /// A delta part: the strings of the process's dictionary its chain's previous part
    /// holds (`PartInfo::words`), which it leaves out.
    pub words_before: usize,
    /// A delta part whose base holds each of `states` as it was when first changed
    /// since (`ChangeMark::appended` counts from there): those with a count are written
    /// as what their history gained (`codec::encode_tail_into`).
    pub tails: bool,
}

impl PartRecords {
    /// Whether the part's states may be written as what their histories gained: a
    /// delta whose records allow it.
    fn may_hold_tails(&self) -> bool {
        self.tails && self.removed.is_some()
    }
}

/// Called from another thread when a part writer is done.
pub type WakeUp = Box<dyn FnOnce() + Send>;

/// One worker's state part, written on a thread of its own so the worker keeps
/// processing.
pub struct PartWriter {
    done: mpsc::Receiver<io::Result<PartInfo>>,
}

impl PartWriter {
    /// Starts writing `records` to `path`; `wake` is called once the part is on disk (or
    /// failed), from the writer's thread, so that whoever waits for it looks again.
    pub fn start(path: PathBuf, records: PartRecords, compress: bool, wake: WakeUp) -> PartWriter {
        let started = Instant::now();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                let result = write_part_with(&path, records, compress).and_then(|written| {
                    let (_, hash, _) = trailer_of(&path).map_err(io::Error::other)?;
                    Ok(PartInfo {
                        users: written.users,
                        bytes: written.bytes,
                        words: written.words,
                        hash,
                        raw: written.raw,
                        duration: started.elapsed(),
                        cpu: crate::clock::thread_cpu_time(),
                        spare: written.spare,
                    })
                });
                let _ = done_tx.send(result);
                wake();
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start a checkpoint writer: {e}"));
        PartWriter { done }
    }

    /// The outcome, once the writer is done.
    pub fn poll(&self) -> Option<io::Result<PartInfo>> {
        match self.done.try_recv() {
            Ok(result) => Some(result),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                Some(Err(io::Error::other("the checkpoint writer stopped")))
            }
        }
    }
}

/// Where a part's body goes: to the file as it is, or as an LZ4 frame.
enum Sink<'a> {
    Plain(&'a mut dyn Write),
    Lz4(Lz4Frame<'a>),
}

impl Sink<'_> {
    /// Writes what it can of `buf` now (an LZ4 frame, its whole blocks) and takes it out.
    fn drain(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Sink::Plain(out) => {
                out.write_all(buf)?;
                buf.clear();
            }
            Sink::Lz4(frame) => {
                let used = frame.whole_blocks(buf)?;
                buf.drain(..used);
            }
        }
        Ok(())
    }

    /// Writes `rest`, the body's end.
    fn finish(self, rest: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(out) => out.write_all(rest),
            Sink::Lz4(frame) => frame.finish(rest),
        }
    }
}

/// Encodes records into a part body.
struct Encoder<'a> {
    out: Sink<'a>,
    // Records are encoded into one buffer, written (and hashed) a block at a time:
    // bincode's many small writes through the hasher were most of the cost.
    buf: Vec<u8>,
    users: u64,
    /// The body's bytes given to `out` so far.
    raw: u64,
    /// How many strings the part's dictionary holds: the ids records may use.
    words: usize,
    /// Whether states may be written as what their history gained (`PartRecords::tails`).
    tails: bool,
}

impl Encoder<'_> {
    fn typed(&mut self, user: &Text, state: &UserState) -> io::Result<()> {
        self.buf.push(STATE);
        bincode::serialize_into(&mut self.buf, user).map_err(io::Error::other)?;
        // The state's length goes before it (as bincode writes bytes): filled in after.
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        let words = Words::Below(self.words);
        match self.tail_of(state) {
            Some(gained) => codec::encode_tail_into(&mut self.buf, state, gained, words),
            None => codec::encode_into(&mut self.buf, state, words),
        }
        let n = (self.buf.len() - at - 8) as u64;
        self.buf[at..at + 8].copy_from_slice(&n.to_le_bytes());
        self.done_one()
    }

    /// How many entries `state`'s history gained since its record in the part before,
    /// if it is written as that (a tail).
    fn tail_of(&self, state: &UserState) -> Option<usize> {
        let gained = state.changed_in.appended? as usize;
        (self.tails && gained < state.history.len()).then_some(gained)
    }

    fn removed(&mut self, user: &Text) -> io::Result<()> {
        self.buf.push(REMOVED);
        bincode::serialize_into(&mut self.buf, user).map_err(io::Error::other)?;
        self.done_one()
    }

    fn pending(&mut self, user: &Text, pending: &PendingUser) -> io::Result<()> {
        match pending.before.as_ref().and_then(|b| b.triggers.as_deref()) {
            None => {
                self.buf.push(PENDING);
                bincode::serialize_into(&mut self.buf, &(user, pending))
            }
            Some(triggers) => {
                self.buf.push(PENDING_WITH_TRIGGERS);
                bincode::serialize_into(&mut self.buf, &(user, pending, triggers))
            }
        }
        .map_err(io::Error::other)?;
        self.done_one()
    }

    /// The same bytes as `typed` gives, from the user id and the encoding of its state.
    fn encoded(&mut self, user: &[u8], state: &[u8]) -> io::Result<()> {
        self.buf.push(STATE);
        self.buf
            .extend_from_slice(&(user.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(user);
        self.buf
            .extend_from_slice(&(state.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(state);
        self.done_one()
    }

    fn done_one(&mut self) -> io::Result<()> {
        self.users += 1;
        if self.buf.len() >= BLOCK {
            let before = self.buf.len();
            self.out.drain(&mut self.buf)?;
            self.raw += (before - self.buf.len()) as u64;
        }
        Ok(())
    }
}

/// Writes a state part of `records` (and a delta's chain file first), compressed;
/// returns its records and size.
pub fn write_part(path: &Path, records: PartRecords) -> io::Result<(u64, u64)> {
    write_part_as(path, records, true)
}

/// As `write_part`, compressed (LZ4) or not: a part of either kind restores.
pub fn write_part_as(path: &Path, records: PartRecords, compress: bool) -> io::Result<(u64, u64)> {
    write_part_with(path, records, compress).map(|w| (w.users, w.bytes))
}

/// What `write_part_with` wrote.
struct Written {
    users: u64,
    bytes: u64,
    raw: u64,
    words: u64,
    spare: Records,
}

fn write_part_with(path: &Path, records: PartRecords, compress: bool) -> io::Result<Written> {
    if let Some((chain_path, chain)) = &records.chain {
        let json = serde_json::to_vec(chain).map_err(io::Error::other)?;
        write_atomic(chain_path, |w| w.write_all(&json))?;
    }
    let (mut body, mut spare) = (BodyWritten::default(), Vec::new());
    let bytes = write_atomic_direct(path, |out| {
        let mut hashed = Hashing {
            inner: out,
            hasher: Xxh3Default::new(),
        };
        let tails = records.may_hold_tails();
        let magic = match (records.removed.is_some(), compress) {
            (true, true) if tails => MAGIC_DELTA_SAME,
            (true, false) if tails => MAGIC_DELTA_SAME_PLAIN,
            (true, true) => MAGIC_DELTA_EXT,
            (false, true) => MAGIC,
            (true, false) => MAGIC_DELTA_EXT_PLAIN,
            (false, false) => MAGIC_V2,
        };
        hashed.write_all(magic)?;
        // LZ4: the records' ids, timestamps and repeated field layouts compress to about
        // half (measured on the checkpoint workload) at several hundred MB/s per core, on
        // this thread, off the worker's.
        let sink = match compress {
            true => Sink::Lz4(Lz4Frame::start(&mut hashed)?),
            false => Sink::Plain(&mut hashed),
        };
        (body, spare) = write_body(sink, records)?;
        let hash = hashed.hasher.digest();
        out.write_all(&body.users.to_le_bytes())?;
        out.write_all(&hash.to_le_bytes())?;
        out.write_all(magic)
    })?;
    Ok(Written {
        users: body.users,
        bytes,
        raw: body.raw,
        words: body.words,
        spare,
    })
}

/// What `write_body` wrote: records, bytes before compression, and the strings its
/// dictionary reaches.
#[derive(Default)]
struct BodyWritten {
    users: u64,
    raw: u64,
    words: u64,
}

/// Writes a part's body (the dictionary, then the records) to `out`; returns what it
/// wrote and the states' vector, emptied.
fn write_body(out: Sink<'_>, records: PartRecords) -> io::Result<(BodyWritten, Records)> {
    let mut e = Encoder {
        out,
        buf: Vec::with_capacity(2 * BLOCK),
        users: 0,
        raw: 0,
        words: 0,
        tails: records.may_hold_tails(),
    };
    let from = match records.removed {
        Some(_) => {
            let from = records.words_before.min(crate::dict::len());
            e.buf.extend_from_slice(&(from as u64).to_le_bytes());
            from
        }
        None => 0,
    };
    e.words = write_dictionary(&mut e.buf, from);
    if let Some(base) = records.base {
        base(&mut |user, state| e.encoded(user, state))?;
    }
    // Each state is dropped once encoded: its parts, shared with the worker's table
    // until then, are copied on the worker's next write to them.
    let mut all = records.states;
    let mut states = all.drain(..);
    while let Some((user, state)) = states.next() {
        let ahead = states.as_slice();
        if let Some((user, state)) = ahead.get(PREFETCH_PARTS) {
            codec::prefetch_record(user, state);
        }
        if let Some((_, state)) = ahead.get(PREFETCH_CONTENTS) {
            codec::prefetch_contents(state, e.tail_of(state).is_some());
        }
        e.typed(&user, &state)?;
    }
    drop(states);
    for (user, pending) in &records.pending {
        e.pending(user, pending)?;
    }
    for user in records.removed.iter().flatten() {
        e.removed(user)?;
    }
    e.buf.push(END);
    e.out.finish(&e.buf)?;
    let body = BodyWritten {
        users: e.users,
        raw: e.raw + e.buf.len() as u64,
        words: e.words as u64,
    };
    Ok((body, all))
}

/// The dictionary as it is now, from id `from` on: every id the records use was given
/// before their snapshot was taken, so before this writer started.
/// Returns how many strings the dictionary reaches (`from` and those written).
fn write_dictionary(out: &mut Vec<u8>, from: usize) -> usize {
    let n = crate::dict::len();
    out.extend_from_slice(&((n - from) as u64).to_le_bytes());
    for s in crate::dict::prefix(n).skip(from) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    n
}

/// Reads a part's dictionary.
fn read_dictionary(r: &mut impl Read) -> io::Result<Vec<String>> {
    let mut word = [0u8; 8];
    r.read_exact(&mut word)?;
    let n = u64::from_le_bytes(word);
    if n > crate::dict::MAX_STRINGS as u64 {
        return Err(io::Error::other(format!("a dictionary of {n} strings")));
    }
    let mut dict = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > crate::dict::MAX_LEN {
            return Err(io::Error::other(format!(
                "a dictionary string of {len} bytes"
            )));
        }
        let mut s = vec![0u8; len];
        r.read_exact(&mut s)?;
        dict.push(String::from_utf8(s).map_err(io::Error::other)?);
    }
    Ok(dict)
}

/// A part of users' states alone (tests and tools).
pub fn write_states(path: &Path, states: Records) -> io::Result<(u64, u64)> {
    write_part(
        path,
        PartRecords {
            base: None,
            states,
            pending: Vec::new(),
            removed: None,
            chain: None,
            words_before: 0,
            tails: false,
        },
    )
}

/// Checks a state part is whole and unchanged, reading it in pieces; returns its number
/// of users and size.
pub fn verify_part(path: &Path) -> Result<(u64, u64), CheckpointError> {
    let (users, hash, len) = trailer_of(path)?;
    let io = |e| CheckpointError::io(path, e);
    let mut body = File::open(path).map_err(io)?.take(len - TRAILER as u64);
    let mut hasher = Xxh3Default::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut first = true;
    loop {
        let n = body.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        if first && !MAGICS.iter().any(|m| buf[..n].starts_with(*m)) {
            return Err(CheckpointError::corrupt(path, NOT_A_PART));
        }
        first = false;
        hasher.update(&buf[..n]);
    }
    if hasher.digest() != hash {
        return Err(CheckpointError::corrupt(path, "checksum mismatch"));
    }
    Ok((users, len))
}

/// A file that does not start as a state part does.
const NOT_A_PART: &str = "not a state part (whole or delta)";

/// A part without its trailer at its end: cut short (or its last bytes changed), or not
/// a state part at all.
const CUT_SHORT: &str =
    "not a complete state part (whole or delta): its end is missing or damaged (cut short?)";

/// The users and size a state part says it has, from its trailer alone (the part is
/// checked in full when it is restored).
pub fn part_trailer(path: &Path) -> Result<(u64, u64), CheckpointError> {
    let (users, _, len) = trailer_of(path)?;
    Ok((users, len))
}

/// The checksum a part's trailer records.
pub fn part_hash(path: &Path) -> Result<u64, CheckpointError> {
    Ok(trailer_of(path)?.1)
}

/// The users and hash a part's trailer records, and the part's size.
fn trailer_of(path: &Path) -> Result<(u64, u64, u64), CheckpointError> {
    use std::io::{Seek, SeekFrom};
    let io = |e| CheckpointError::io(path, e);
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len < (MAGIC.len() + 1 + TRAILER) as u64 {
        return Err(CheckpointError::corrupt(path, CUT_SHORT));
    }
    let mut t = [0u8; TRAILER];
    f.seek(SeekFrom::End(-(TRAILER as i64))).map_err(io)?;
    f.read_exact(&mut t).map_err(io)?;
    let (users, hash) = trailer(path, &t)?;
    // The magic at the start is under the checksum, the trailer's is not: a byte of it
    // changed can make another format's magic, so the two must agree.
    let mut head = [0u8; MAGIC.len()];
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.read_exact(&mut head).map_err(io)?;
    if head[..] != t[16..] {
        let reason = "its magic at the end is not the one at its start (damaged)";
        return Err(CheckpointError::corrupt(path, reason));
    }
    Ok((users, hash, len))
}

/// The users and the hash a trailer records, if it ends with the magic.
fn trailer(path: &Path, t: &[u8]) -> Result<(u64, u64), CheckpointError> {
    if t.len() != TRAILER || !MAGICS.iter().any(|m| &t[16..] == *m) {
        return Err(CheckpointError::corrupt(path, CUT_SHORT));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&t[at..at + 8]);
        u64::from_le_bytes(w)
    };
    Ok((word(0), word(8)))
}

/// Hashes what is read through it.
struct HashingRead<R> {
    inner: R,
    hasher: Xxh3Default,
}

impl<R: Read> Read for HashingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

type PartFile = HashingRead<io::BufReader<io::Take<File>>>;

/// A part's body: the LZ4 frame of the current format, or as earlier formats wrote it.
enum Body {
    Lz4(lz4_flex::frame::FrameDecoder<PartFile>),
    Plain(PartFile),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Lz4(d) => d.read(buf),
            Body::Plain(f) => f.read(buf),
        }
    }
}

impl Body {
    /// Once the body has ended: true if nothing follows it (in the file, and in a
    /// frame) and the file up to the trailer hashes to `hash`.
    fn ends_whole(&mut self, hash: u64) -> bool {
        let mut rest = [0u8; 1];
        let mut nothing_after = |r: &mut dyn Read| matches!(r.read(&mut rest), Ok(0));
        let file = match self {
            Body::Lz4(d) => {
                if !nothing_after(d) {
                    return false;
                }
                d.get_mut()
            }
            Body::Plain(f) => f,
        };
        nothing_after(file) && file.hasher.digest() == hash
    }
}

/// A record of a part: a user and what it is saved as.
pub type Record = (Text, Saved);

/// What a part holds of a user.
pub enum Saved {
    User(SavedUser),
    /// In a delta: its state, with what its history gained since the user's record in
    /// the part before (`codec::decode_record`): the history is the newest `keep`
    /// entries of that record's, then these (`ChainReader` merges them).
    Tail {
        state: UserState,
        follows: codec::Follows,
    },
    /// In a delta: gone since the part before.
    Removed,
    /// A state's or a tail's history alone (`Want::History`), with the tail's count,
    /// and the profile and visit if asked for and given.
    History {
        history: History,
        keeps: Option<usize>,
        base: Option<codec::Base>,
    },
}

/// What a reader of a chain wants of a user's record.
pub enum Want {
    /// Nothing: a newer part has the user.
    Skip,
    /// The record; with the user's id if the asker made one (given with the record).
    Record(Option<Text>),
    /// Its history alone: a newer part gave the user's state as what its history gained;
    /// `base`: and its profile and visit, which that newer record left out.
    History { base: bool },
}

/// Reads a state part's users a chunk at a time, so that restoring a part takes memory
/// for a chunk, not for the part; the checksum and count are checked at its end.
pub struct PartReader {
    path: PathBuf,
    /// Read through a buffer of its own, so that most records are read in place
    /// (`record_in_buffer`).
    body: io::BufReader<Body>,
    users: u64,
    hash: u64,
    read: u64,
    ended: bool,
    /// `None`: a v1 part (states as bincode of `UserState`), or a delta whose
    /// dictionary extends another part's, until `open_chain` gives it its ids.
    ids: Option<Ids>,
    /// How many strings its dictionary reaches.
    words: u64,
    /// A delta's dictionary: the id of its first string, and its strings.
    extension: Option<(u64, Vec<String>)>,
    /// A delta part (it may have `REMOVED` records).
    delta: bool,
    /// A delta part whose records may give what a history gained (`Saved::Tail`).
    tails: bool,
    /// The encoded state of the record being read (one buffer for them all).
    scratch: Vec<u8>,
    /// What stopped the reading, given after the records read before it.
    failed: Option<CheckpointError>,
}

impl PartReader {
    pub fn open(path: &Path) -> Result<PartReader, CheckpointError> {
        let (users, hash, len) = trailer_of(path)?;
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        let mut body = HashingRead {
            inner: io::BufReader::with_capacity(1 << 20, file.take(len - TRAILER as u64)),
            hasher: Xxh3Default::new(),
        };
        let mut magic = [0u8; MAGIC.len()];
        body.read_exact(&mut magic)
            .map_err(|e| CheckpointError::io(path, e))?;
        let mut body = match &magic {
            MAGIC | MAGIC_DELTA | MAGIC_DELTA_EXT | MAGIC_DELTA_TAILS | MAGIC_DELTA_SAME => {
                Body::Lz4(lz4_flex::frame::FrameDecoder::new(body))
            }
            MAGIC_V2
            | MAGIC_V1
            | MAGIC_DELTA_PLAIN
            | MAGIC_DELTA_EXT_PLAIN
            | MAGIC_DELTA_TAILS_PLAIN
            | MAGIC_DELTA_SAME_PLAIN => Body::Plain(body),
            _ => return Err(CheckpointError::corrupt(path, NOT_A_PART)),
        };
        let dictionary = |e: io::Error| CheckpointError::corrupt(path, format!("dictionary: {e}"));
        let (ids, words, extension) = match &magic {
            MAGIC_V1 => (None, 0, None),
            MAGIC_DELTA_EXT
            | MAGIC_DELTA_EXT_PLAIN
            | MAGIC_DELTA_TAILS
            | MAGIC_DELTA_TAILS_PLAIN
            | MAGIC_DELTA_SAME
            | MAGIC_DELTA_SAME_PLAIN => {
                let mut from = [0u8; 8];
                body.read_exact(&mut from).map_err(dictionary)?;
                let from = u64::from_le_bytes(from);
                let strings = read_dictionary(&mut body).map_err(dictionary)?;
                let words = from + strings.len() as u64;
                (None, words, Some((from, strings)))
            }
            _ => {
                let dict = read_dictionary(&mut body).map_err(dictionary)?;
                let words = dict.len() as u64;
                (Some(Ids::of_dictionary(dict)), words, None)
            }
        };
        let tails = [
            MAGIC_DELTA_TAILS,
            MAGIC_DELTA_TAILS_PLAIN,
            MAGIC_DELTA_SAME,
            MAGIC_DELTA_SAME_PLAIN,
        ]
        .contains(&&magic);
        let delta = tails
            || [
                MAGIC_DELTA,
                MAGIC_DELTA_PLAIN,
                MAGIC_DELTA_EXT,
                MAGIC_DELTA_EXT_PLAIN,
            ]
            .contains(&&magic);
        Ok(PartReader {
            path: path.to_path_buf(),
            body: io::BufReader::with_capacity(READ_BUFFER, body),
            users,
            hash,
            read: 0,
            ended: false,
            ids,
            words,
            extension,
            delta,
            tails,
            scratch: Vec::new(),
            failed: None,
        })
    }

    /// Its whole dictionary (a part that is not a delta extending another's).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dictionary(&self) -> Vec<String> {
        match &self.ids {
            Some(Ids::Here) => crate::dict::prefix(self.words as usize)
                .map(String::from)
                .collect(),
            Some(Ids::Theirs(dict)) => dict.as_ref().clone(),
            None => Vec::new(),
        }
    }

    /// Up to `max` more users; `None` once the part is read to its end and checked.
    /// (A delta part's removed users are left out: `next_records` has them; a delta's
    /// record of what a history gained is refused: read it with its chain.)
    pub fn next_chunk(
        &mut self,
        max: usize,
    ) -> Result<Option<Vec<(Text, SavedUser)>>, CheckpointError> {
        let Some(records) = self.next_records(max)? else {
            return Ok(None);
        };
        let mut users = Vec::with_capacity(records.len());
        for (user, saved) in records {
            match saved {
                Saved::User(s) => users.push((user, s)),
                Saved::Removed => {}
                Saved::Tail { .. } | Saved::History { .. } => {
                    let reason = format!("user {user}'s record builds on a part not read");
                    return Err(CheckpointError::corrupt(&self.path, reason));
                }
            }
        }
        Ok(Some(users))
    }

    /// Up to `max` more records: a user and what it is saved as; `None` once the part
    /// is read to its end and checked.
    pub fn next_records(&mut self, max: usize) -> Result<Option<Vec<Record>>, CheckpointError> {
        self.next_records_of(max, &mut |_: &str| Want::Record(None))
    }

    /// As `next_records`, of what `want` asks of each user's record (once per record,
    /// in the part's order): the others' states are skipped undecoded (a chain's older
    /// parts), and of some only the history is read.
    pub fn next_records_of(
        &mut self,
        max: usize,
        want: &mut dyn FnMut(&str) -> Want,
    ) -> Result<Option<Vec<Record>>, CheckpointError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.ended {
            return Ok(None);
        }
        if self.extension.is_some() {
            let reason = "a delta read without the parts it builds on (its dictionary is theirs)";
            return Err(CheckpointError::corrupt(&self.path, reason));
        }
        let mut chunk = Vec::with_capacity(max.min(4096));
        match self.read_records(max, want, &mut chunk) {
            Ok(()) => {}
            // The records decoded before the failure are given, then the failure: a
            // part damaged after the start's check loses the users not read yet.
            Err(e) if !chunk.is_empty() => {
                self.ended = true;
                self.failed = Some(e);
            }
            Err(e) => return Err(e),
        }
        if chunk.is_empty() && self.ended {
            return Ok(None);
        }
        Ok(Some(chunk))
    }

    /// Reads records into `chunk` until it holds `max` or the part ends (checked).
    fn read_records(
        &mut self,
        max: usize,
        want: &mut dyn FnMut(&str) -> Want,
        chunk: &mut Vec<Record>,
    ) -> Result<(), CheckpointError> {
        while chunk.len() < max {
            if self.record_in_buffer(want, chunk)? {
                continue;
            }
            let corrupt = |reason: String| CheckpointError::corrupt(&self.path, reason);
            let decode = |e: bincode::Error| corrupt(e.to_string());
            let mut tag = [0u8; 1];
            self.body
                .read_exact(&mut tag)
                .map_err(|_| corrupt("no end marker".into()))?;
            let (user, raw) = match tag[0] {
                END => {
                    self.ended = true;
                    if !self.body.buffer().is_empty() || !self.body.get_mut().ends_whole(self.hash)
                    {
                        return Err(corrupt("checksum mismatch".into()));
                    }
                    if self.read != self.users {
                        return Err(corrupt("user count mismatch".into()));
                    }
                    break;
                }
                STATE => {
                    state_record(&mut self.body, &self.ids, &mut self.scratch).map_err(corrupt)?
                }
                PENDING => {
                    let (user, pending): (Text, PendingUser) =
                        bincode::deserialize_from(&mut self.body).map_err(decode)?;
                    (user, RawRecord::Saved(SavedUser::Pending(pending)))
                }
                PENDING_WITH_TRIGGERS => {
                    let (user, mut pending, triggers): (Text, PendingUser, _) =
                        bincode::deserialize_from(&mut self.body).map_err(decode)?;
                    if let Some(before) = &mut pending.before {
                        before.triggers = Some(triggers);
                    }
                    (user, RawRecord::Saved(SavedUser::Pending(pending)))
                }
                REMOVED if self.delta => {
                    let user: Text = bincode::deserialize_from(&mut self.body).map_err(decode)?;
                    (user, RawRecord::Removed)
                }
                other => return Err(corrupt(format!("unknown record tag {other}"))),
            };
            self.read += 1;
            let want = want(&user);
            if matches!(want, Want::Skip) {
                continue;
            }
            let saved = match raw {
                // Encoded states come only from parts with a dictionary (`ids`).
                RawRecord::Encoded(n) => {
                    let ids = self
                        .ids
                        .as_ref()
                        .ok_or_else(|| corrupt("no dictionary".into()))?;
                    encoded(&self.scratch[..n], ids, want, self.tails, &user).map_err(corrupt)?
                }
                // A v1 part's state, decoded whole: its history is what was asked.
                RawRecord::Saved(SavedUser::State(state))
                    if matches!(want, Want::History { .. }) =>
                {
                    Saved::History {
                        history: (*state.history).clone(),
                        keeps: None,
                        base: Some(codec::Base::of(&state)),
                    }
                }
                RawRecord::Saved(_) | RawRecord::Removed
                    if matches!(want, Want::History { .. }) =>
                {
                    let reason = format!("user {user}'s delta record builds on no state");
                    return Err(corrupt(reason));
                }
                RawRecord::Saved(saved) => Saved::User(saved),
                RawRecord::Removed => Saved::Removed,
            };
            chunk.push((user, saved));
        }
        Ok(())
    }

    /// Reads the next record if it is a state whole in the read buffer, its id and
    /// state read where they are: no copy, and no allocation for a record skipped (most
    /// of a long chain's). False if none was read (another kind of record, one that
    /// straddles the buffer's end, a part without a dictionary): the caller reads it.
    fn record_in_buffer(
        &mut self,
        want: &mut dyn FnMut(&str) -> Want,
        chunk: &mut Vec<Record>,
    ) -> Result<bool, CheckpointError> {
        let Some(ids) = &self.ids else {
            return Ok(false);
        };
        let Ok(buf) = self.body.fill_buf() else {
            return Ok(false);
        };
        let Some((user, state, len)) = framed_state(buf) else {
            return Ok(false);
        };
        let Ok(user) = std::str::from_utf8(user) else {
            return Ok(false);
        };
        self.read += 1;
        let record = match want(user) {
            Want::Skip => None,
            want => {
                let id = match &want {
                    Want::Record(Some(id)) => id.clone(),
                    _ => Text::from(user),
                };
                let saved = encoded(state, ids, want, self.tails, user)
                    .map_err(|reason| CheckpointError::corrupt(&self.path, reason))?;
                Some((id, saved))
            }
        };
        chunk.extend(record);
        self.body.consume(len);
        Ok(true)
    }
}

/// The read buffer of a part: records longer than it are read by a copy.
const READ_BUFFER: usize = 256 << 10;

/// A state record (`STATE`, the user's id, its encoded state) at the start of `buf`,
/// if it is there whole: the id's and the state's bytes, and the record's length.
fn framed_state(buf: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let (&STATE, rest) = buf.split_first()? else {
        return None;
    };
    let length = |at: usize| -> Option<usize> {
        let bytes = rest.get(at..at.checked_add(8)?)?;
        usize::try_from(u64::from_le_bytes(bytes.try_into().ok()?)).ok()
    };
    let user_len = length(0)?;
    let user = rest.get(8..8usize.checked_add(user_len)?)?;
    let at = 8 + user_len;
    let state_len = length(at)?;
    if state_len > MAX_STATE_BYTES {
        return None;
    }
    let state = rest.get(at + 8..(at + 8).checked_add(state_len)?)?;
    Some((user, state, 1 + at + 8 + state_len))
}

/// What an encoded state record (`bytes`) gives of `user`, as `want` asks (not `Skip`).
fn encoded(bytes: &[u8], ids: &Ids, want: Want, tails: bool, user: &str) -> Result<Saved, String> {
    let cannot = || format!("user {user}'s record builds on a part before, in a part that cannot");
    Ok(match want {
        Want::History { base } => {
            match codec::decode_history(bytes, ids, base).map_err(|e| e.to_string())? {
                (_, Some(_), _) if !tails => return Err(cannot()),
                (history, keeps, base) => Saved::History {
                    history,
                    keeps,
                    base,
                },
            }
        }
        _ => match codec::decode_record(bytes, ids).map_err(|e| e.to_string())? {
            (state, None) => Saved::User(SavedUser::State(state)),
            (state, Some(follows)) if tails => Saved::Tail { state, follows },
            (_, Some(_)) => return Err(cannot()),
        },
    })
}

/// A record as read, before `keep` is asked: a state stays encoded until then.
enum RawRecord {
    /// In the reader's `scratch`, of this many bytes.
    Encoded(usize),
    Saved(SavedUser),
    Removed,
}

/// No user's encoded state is near this; a length past it is a damaged part, refused
/// before a buffer of that size is asked for.
const MAX_STATE_BYTES: usize = 1 << 30;

/// One user's state record (after its tag): as `Encoder::typed` writes it, its state
/// left encoded (into `scratch`, reused: no allocation per record), or in a v1 part
/// (`ids` `None`) as bincode of `(user, UserState)`.
fn state_record(
    r: &mut impl Read,
    ids: &Option<Ids>,
    scratch: &mut Vec<u8>,
) -> Result<(Text, RawRecord), String> {
    let error = |e: bincode::Error| e.to_string();
    if ids.is_none() {
        let (user, state): (Text, UserState) = bincode::deserialize_from(r).map_err(error)?;
        return Ok((user, RawRecord::Saved(SavedUser::State(state))));
    }
    let user: Text = bincode::deserialize_from(&mut *r).map_err(error)?;
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|e| e.to_string())?;
    let n = usize::try_from(u64::from_le_bytes(len)).unwrap_or(usize::MAX);
    if n > MAX_STATE_BYTES {
        return Err(format!("a state of {n} bytes (user {user})"));
    }
    // Grown, not cleared: zeroing it for each record cost as much as the copy.
    if scratch.len() < n {
        scratch.resize(n, 0);
    }
    r.read_exact(&mut scratch[..n]).map_err(|e| e.to_string())?;
    Ok((user, RawRecord::Encoded(n)))
}

/// Opens a chain's parts (`paths` newest first, as `Restore::part_chains` gives them):
/// each delta whose dictionary extends the part before it is given the ids of the
/// dictionaries of all of them (one mapping for the chain: the writer's ids only grow).
pub fn open_chain(paths: &[PathBuf]) -> Result<Vec<PartReader>, CheckpointError> {
    let mut parts = paths
        .iter()
        .map(|p| PartReader::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    // Oldest first: the last part with a whole dictionary, the chain's dictionary so
    // far (made only once a delta extends it: a whole part alone needs no copy), and
    // the deltas waiting for its ids.
    let mut base: Option<usize> = None;
    let mut words: Option<Vec<String>> = None;
    let mut waiting: Vec<usize> = Vec::new();
    let give_ids = |parts: &mut Vec<PartReader>, waiting: &mut Vec<usize>, words: &[String]| {
        if !waiting.is_empty() {
            let ids = Ids::of_dictionary(words.to_vec());
            for i in waiting.drain(..) {
                parts[i].ids = Some(ids.clone());
            }
        }
    };
    for i in (0..parts.len()).rev() {
        match parts[i].extension.take() {
            // Ids only grow in the writing process: the strings before `from` are
            // the older parts' (a delta from 0 carries them all itself).
            Some((from, strings)) => {
                let words = words
                    .get_or_insert_with(|| base.map_or_else(Vec::new, |b| parts[b].dictionary()));
                if from > words.len() as u64 {
                    let reason = format!(
                        "its dictionary goes on from string {from}, the part before it has {}",
                        words.len()
                    );
                    return Err(CheckpointError::corrupt(&parts[i].path, reason));
                }
                words.truncate(from as usize);
                words.extend(strings);
                waiting.push(i);
            }
            None => {
                give_ids(
                    &mut parts,
                    &mut waiting,
                    words.as_deref().unwrap_or_default(),
                );
                (base, words) = (Some(i), None);
            }
        }
    }
    give_ids(
        &mut parts,
        &mut waiting,
        words.as_deref().unwrap_or_default(),
    );
    Ok(parts)
}

/// Reads a state part back whole, checked (before anything is decoded).
pub fn read_part(path: &Path) -> Result<Vec<(Text, SavedUser)>, CheckpointError> {
    verify_part(path)?;
    let mut reader = PartReader::open(path)?;
    let mut records = Vec::new();
    while let Some(chunk) = reader.next_chunk(usize::MAX)? {
        records.extend(chunk);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HistoryEntry, ProfileData, RawJson};

    /// A damaged state length is refused as such, without a buffer of that size.
    #[test]
    fn a_state_record_with_an_impossible_length_is_refused() {
        let mut record = bincode::serialize(&Text::from("u")).unwrap();
        record.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let mut scratch = Vec::new();
        let err = state_record(&mut &record[..], &Some(Ids::Here), &mut scratch)
            .err()
            .unwrap();
        assert!(err.contains("bytes (user u)"), "{err}");
        assert!(scratch.capacity() < 1 << 20);
    }

    /// A part's body (dictionary and records), decompressed.
    pub(super) fn body(part: &[u8]) -> Vec<u8> {
        assert!(part.starts_with(MAGIC));
        let frame = &part[MAGIC.len()..part.len() - TRAILER];
        let mut body = Vec::new();
        lz4_flex::frame::FrameDecoder::new(frame)
            .read_to_end(&mut body)
            .unwrap();
        body
    }

    fn sample(n: usize) -> Vec<(Text, UserState)> {
        (0..n)
            .map(|i| {
                let mut data = ProfileData::default();
                data.profile.country = Some("US".into());
                data.history.push(&HistoryEntry {
                    event_id: Some(format!("e{i}").into()),
                    event_name: None,
                    event_type: Some("page_view".into()),
                    timestamp: i as i64,
                    parameters: Some(RawJson::parse(r#"{"a":[1,2]}"#).unwrap()),
                });
                (
                    format!("u{i}").into(),
                    UserState::from_profile(data, 1000 + i as u64),
                )
            })
            .collect()
    }

    /// Parts written by earlier releases, from the same four events of three users (u1
    /// with a Profile API history, u2 with parameters that have whitespace, u3 whose
    /// look-up failed): format v1 by the release before the compact history, v2 by the
    /// release before compressed parts.
    #[test]
    fn parts_of_earlier_formats_still_restore() {
        for fixture in ["state-v1.bin", "state-v2.bin"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(fixture);
            assert_eq!(verify_part(&path).unwrap().0, 3, "{fixture}");
            an_earlier_part_restores(&path);
        }
    }

    fn an_earlier_part_restores(path: &Path) {
        let mut users = read_part(path).unwrap();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        let states: Vec<_> = users
            .iter()
            .map(|(u, s)| match s {
                SavedUser::State(s) => (u.to_string(), s),
                SavedUser::Pending(_) => panic!("{u} pending"),
            })
            .collect();
        assert_eq!(states.len(), 3);
        let (u1, s1) = &states[0];
        assert_eq!(
            (u1.as_str(), s1.profile.country.as_deref()),
            ("u1", Some("US"))
        );
        assert_eq!(s1.visit.as_ref().map(|v| v.actions), Some(4));
        let mut json = Vec::new();
        s1.history.write_json(&mut json);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"[{"event_id":"h1","event_name":"home_page","event_type":"page_view","timestamp":500,"parameters":{"utm_source":"email"}},{"event_id":"e1","event_name":"home_page","event_type":"page_view","timestamp":1000,"parameters":{"custom_params":{"page_title":"Cart","value":12.5},"utm_source":"google","utm_term":""}},{"event_id":"e3","event_name":"order_completed","event_type":"purchase","timestamp":1002,"parameters":null}]"#
        );
        let (_, s2) = &states[1];
        let ids: Vec<_> = s2
            .history
            .iter()
            .map(|e| e.parameters.map(|p| p.to_raw()))
            .collect();
        assert_eq!(
            ids[0].as_ref().map(|p| p.text()),
            Some(r#"{ "utm_source": "spaced" }"#.to_string())
        );
        let (_, s3) = &states[2];
        assert!(s3.profile.country.is_none() && s3.visit.is_none());
        assert_eq!(
            s3.history.to_entries()[0]
                .parameters
                .as_ref()
                .unwrap()
                .text(),
            r#"{"custom_params":{"esc":"a\"b\u00e9"}}"#
        );
        // Written again, it is a part of the current format with the same users.
        let dir = tempfile::tempdir().unwrap();
        let again = dir.path().join("state-0.bin");
        write_states(
            &again,
            states
                .iter()
                .map(|(u, s)| (u.as_str().into(), (*s).clone()))
                .collect(),
        )
        .unwrap();
        assert!(std::fs::read(&again).unwrap().starts_with(MAGIC));
        let mut back = read_part(&again).unwrap();
        back.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back, users);
    }

    /// What another process reads: every id a part's records use must be in the part's
    /// own dictionary. Strings a state holds as its own (restored from a v1 part, or
    /// from another process) were interned only as the writer encoded them, after the
    /// dictionary was written: the part was unreadable in a new process.
    #[test]
    fn a_part_decodes_with_its_own_dictionary_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-0.bin");
        let mut data = ProfileData::default();
        data.profile.country = Some("files-test-country-never-seen".into());
        data.profile.city = Some(crate::model::Str::shared("files-test-city-shared"));
        data.history.push(&HistoryEntry {
            event_id: Some("e".into()),
            event_name: Some("files-test-name".into()),
            event_type: None,
            timestamp: 1,
            parameters: None,
        });
        let state = UserState::from_profile(data, 5);
        write_states(&path, vec![("u".into(), state.clone())]).unwrap();
        let bytes = body(&std::fs::read(&path).unwrap());
        let mut r = &bytes[..];
        let dict = read_dictionary(&mut r).unwrap();
        assert_eq!(r[0], STATE);
        let theirs = Ids::Theirs(std::sync::Arc::new(dict));
        let mut encoded = Vec::new();
        let (user, _) = state_record(&mut &r[1..], &Some(theirs.clone()), &mut encoded).unwrap();
        assert_eq!(&*user, "u");
        assert_eq!(codec::decode_with(&encoded, &theirs).unwrap(), state);
    }

    /// A state whose history holds `name`, interned now (as the decoder does).
    fn named(name: &str, at: u64) -> UserState {
        crate::dict::intern(name);
        let mut data = ProfileData::default();
        data.history.push(&HistoryEntry {
            event_id: Some("e".into()),
            event_name: Some(name.into()),
            event_type: None,
            timestamp: 1,
            parameters: None,
        });
        UserState::from_profile(data, at)
    }

    /// A delta's dictionary holds only the strings interned since the part it builds
    /// on; it reads back only with that part (compressed or not), and alone is refused.
    #[test]
    fn a_delta_holds_only_the_strings_new_since_the_part_before() {
        let dir = tempfile::tempdir().unwrap();

        let records = |states: Vec<(Text, UserState)>, words_before: Option<u64>| PartRecords {
            base: None,
            states,
            pending: Vec::new(),
            removed: words_before.map(|_| Vec::new()),
            chain: None,
            words_before: words_before.unwrap_or_default() as usize,
            tails: false,
        };
        for compress in [true, false] {
            let old = format!("files-test-chain-old-{compress}");
            let new = format!("files-test-chain-new-{compress}");
            let u1 = named(&old, 5);
            let whole = dir.path().join(format!("whole-{compress}.bin"));
            let delta = dir.path().join(format!("delta-{compress}.bin"));
            let w = write_part_with(
                &whole,
                records(vec![("u1".into(), u1.clone())], None),
                compress,
            )
            .unwrap();
            let u2 = named(&new, 6);
            let states = vec![("u2".into(), u2.clone())];
            let d = write_part_with(&delta, records(states, Some(w.words)), compress).unwrap();
            // Its body before compression: all of it but the magic and trailer when
            // written as it is.
            for part in [&w, &d] {
                let outside = (MAGIC.len() + TRAILER) as u64;
                assert!(part.raw > 0);
                if !compress {
                    assert_eq!(part.raw, part.bytes - outside);
                }
            }
            let alone = PartReader::open(&delta).unwrap();
            let (from, strings) = alone.extension.clone().unwrap();
            assert_eq!(from, w.words);
            assert_eq!(from + strings.len() as u64, d.words);
            assert!(strings.contains(&new), "{strings:?}");
            assert!(!strings.contains(&old), "{strings:?}");
            let err = read_part(&delta).unwrap_err().to_string();
            assert!(
                err.contains("a delta read without the parts it builds on"),
                "{err}"
            );

            let mut read = Vec::new();
            for mut part in open_chain(&[delta.clone(), whole.clone()]).unwrap() {
                while let Some(chunk) = part.next_chunk(10).unwrap() {
                    read.extend(chunk);
                }
            }
            let want = vec![
                ("u2".into(), SavedUser::State(u2)),
                ("u1".into(), SavedUser::State(u1.clone())),
            ];
            assert_eq!(read, want, "compress: {compress}");
            // On a base whose dictionary ends before the delta's starts: refused.
            named(&format!("files-test-chain-later-{compress}"), 7);
            let later = dir.path().join(format!("later-{compress}.bin"));
            write_part_with(&later, records(Vec::new(), Some(d.words)), compress).unwrap();
            let err = open_chain(&[later, whole.clone()])
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("its dictionary goes on from string"), "{err}");
            // A delta from string 0 carries the whole dictionary itself.
            let from_0 = dir.path().join(format!("from-0-{compress}.bin"));
            let states = vec![("u3".into(), named(&new, 8))];
            write_part_with(&from_0, records(states, Some(0)), compress).unwrap();
            let mut n = 0;
            for mut part in open_chain(&[from_0, whole.clone()]).unwrap() {
                while let Some(chunk) = part.next_chunk(10).unwrap() {
                    n += chunk.len();
                }
            }
            assert_eq!(n, 2);
        }
    }

    #[test]
    fn a_part_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chk/state-0.bin");
        let mut records = sample(100);
        let mut with_triggers = records[0].1.clone();
        with_triggers.triggers = Some(Box::new(crate::triggers::example()));
        records[1].1 = with_triggers.clone();
        let pending = vec![(
            Text::from("looked-up"),
            PendingUser {
                before: Some(with_triggers),
                events: vec![(
                    7,
                    crate::model::UserEvent {
                        user_id: "looked-up".into(),
                        event_id: Some("e".into()),
                        parameters: Some(RawJson::parse(r#"{"k":1}"#).unwrap()),
                        ..Default::default()
                    },
                )],
            },
        )];
        let expected: Vec<(Text, SavedUser)> = records
            .iter()
            .map(|(u, s)| (u.clone(), SavedUser::State(s.clone())))
            .chain(
                pending
                    .iter()
                    .map(|(u, p)| (u.clone(), SavedUser::Pending(p.clone()))),
            )
            .collect();
        // Compressed (the default) and as they are (`checkpoint-compression: none`).
        let mut sizes = Vec::new();
        for compress in [true, false] {
            let records = PartRecords {
                base: None,
                states: records.clone(),
                pending: pending.clone(),
                removed: None,
                chain: None,
                words_before: 0,
                tails: false,
            };
            let written = write_part_as(&path, records, compress).unwrap();
            assert_eq!(written.0, 101);
            assert_eq!(verify_part(&path).unwrap(), written);
            assert_eq!(part_trailer(&path).unwrap(), written);
            assert_eq!(read_part(&path).unwrap(), expected, "compress: {compress}");
            // No temporary file is left beside it.
            let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
            assert_eq!(names.len(), 1);
            sizes.push(written.1);
        }
        assert!(
            sizes[0] < sizes[1],
            "compressed parts are smaller: {sizes:?}"
        );
    }

    /// Records are read in place from the read buffer when they are whole in it, and by
    /// a copy when they straddle its end or are longer than it: all read back the same.
    #[test]
    fn records_across_and_beyond_the_read_buffer_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-0.bin");
        let entry = |i: usize| HistoryEntry {
            event_id: Some(format!("event-{i}").into()),
            event_name: Some("click".into()),
            event_type: Some("page_view".into()),
            timestamp: i as i64,
            parameters: Some(RawJson::parse(&format!(r#"{{"n":{i},"s":"x{i}"}}"#)).unwrap()),
        };
        let states: Vec<(Text, UserState)> = (0..60)
            .map(|u| {
                // One user's state alone is larger than the buffer.
                let entries = if u == 30 { 12_000 } else { 40 + u * 97 % 400 };
                let data = ProfileData {
                    history: (0..entries).map(|i| entry(u * 100_000 + i)).collect(),
                    ..Default::default()
                };
                (format!("user-{u}").into(), UserState::from_profile(data, 7))
            })
            .collect();
        let expected: Vec<(Text, SavedUser)> = states
            .iter()
            .map(|(u, s)| (u.clone(), SavedUser::State(s.clone())))
            .collect();
        for compress in [true, false] {
            let records = PartRecords {
                base: None,
                states: states.clone(),
                pending: vec![],
                removed: None,
                chain: None,
                words_before: 0,
                tails: false,
            };
            let (_, bytes) = write_part_as(&path, records, compress).unwrap();
            assert!(compress || bytes > 4 * READ_BUFFER as u64, "{bytes}");
            assert_eq!(read_part(&path).unwrap(), expected, "compress: {compress}");
        }
    }

    #[test]
    fn a_part_is_read_in_chunks_and_checked_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-0.bin");
        write_states(&path, sample(10)).unwrap();
        let mut reader = PartReader::open(&path).unwrap();
        let mut sizes = Vec::new();
        while let Some(chunk) = reader.next_chunk(3).unwrap() {
            sizes.push(chunk.len());
        }
        assert_eq!(sizes, [3, 3, 3, 1]);
        // A byte changed inside a record decodes, but fails the checksum at the end.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(2).position(|w| w == b"US").unwrap();
        bytes[at] = b'X';
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = PartReader::open(&path).unwrap();
        let err = loop {
            match reader.next_chunk(4) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("a changed part read as whole"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    /// A record that does not decode stops the reading; the users read before it are
    /// given first (a part damaged after the start's check loses only those not read).
    #[test]
    fn the_users_before_a_record_that_does_not_decode_are_given_then_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-0.bin");
        let records = PartRecords {
            base: None,
            states: sample(10),
            pending: vec![],
            removed: None,
            chain: None,
            words_before: 0,
            tails: false,
        };
        write_part_as(&path, records, false).unwrap();
        // The last user's state length (after its id): one no state has.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(2).rposition(|w| w == b"u9").unwrap() + 2;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = PartReader::open(&path).unwrap();
        let first = reader.next_chunk(usize::MAX).unwrap().unwrap();
        let users: Vec<&str> = first.iter().map(|(u, _)| &**u).collect();
        assert_eq!(
            users,
            ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"]
        );
        let err = reader.next_chunk(usize::MAX).unwrap_err().to_string();
        assert!(err.contains("(user u9)"), "{err}");
        assert!(reader.next_chunk(usize::MAX).unwrap().is_none());
    }

    #[test]
    fn a_flipped_byte_or_a_cut_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-0.bin");
        write_states(&path, sample(10)).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let err = read_part(&path).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(&path, &good[..good.len() - 5]).unwrap();
        let err = verify_part(&path).unwrap_err().to_string();
        assert!(err.contains("its end is missing or damaged"), "{err}");
        // The trailer's magic, outside the checksum, turned into another format's.
        let mut other = good.clone();
        *other.last_mut().unwrap() ^= 0x01;
        assert!(MAGICS.iter().any(|m| other.ends_with(*m)));
        std::fs::write(&path, &other).unwrap();
        for err in [
            verify_part(&path).unwrap_err(),
            read_part(&path).unwrap_err(),
        ] {
            assert!(
                err.to_string().contains("not the one at its start"),
                "{err}"
            );
        }
    }
}

#[cfg(test)]
mod encoded_tests {
    use super::*;
    use crate::model::UserState;

    #[test]
    fn encoded_records_read_back_like_typed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let typed = dir.path().join("typed.bin");
        let mixed = dir.path().join("mixed.bin");
        let users: Vec<(Text, UserState)> = (0..5)
            .map(|i| (format!("ü/{i}").into(), UserState::empty(i)))
            .collect();
        write_states(&typed, users.clone()).unwrap();
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = users[..3]
            .iter()
            .map(|(u, s)| (u.as_bytes().to_vec(), crate::store::codec::encode(s)))
            .collect();
        let base: EncodedRecords = Box::new(move |each| {
            for (u, s) in &encoded {
                each(u, s)?;
            }
            Ok(())
        });
        write_part(
            &mixed,
            PartRecords {
                base: Some(base),
                states: users[3..].to_vec(),
                pending: Vec::new(),
                removed: None,
                chain: None,
                words_before: 0,
                tails: false,
            },
        )
        .unwrap();
        // The records are the same bytes (the dictionaries may differ: other tests
        // intern strings meanwhile).
        assert_eq!(
            records(&std::fs::read(&typed).unwrap()),
            records(&std::fs::read(&mixed).unwrap())
        );
        assert_eq!(read_part(&mixed).unwrap().len(), 5);
    }

    /// A part's records: after its dictionary, before its trailer.
    fn records(part: &[u8]) -> Vec<u8> {
        let body = super::tests::body(part);
        let mut r = &body[..];
        read_dictionary(&mut r).unwrap();
        r.to_vec()
    }
}
