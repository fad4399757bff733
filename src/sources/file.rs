//! A JSONL file (or standard input) as a bounded source, one message per line.
//!
//! The input is read by worker 0 of the cluster alone, in order, so each user's events
//! reach its worker in file order whatever the number of workers and processes (read
//! in parallel by byte range, a user's events came from several readers interleaved,
//! and an order-dependent rule gave different results at different `-w`; Flink too
//! reads a file with one source subtask). A regular file is read in place; standard
//! input and pipes on a reader thread, so a quiet writer never stalls the worker.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use crate::checkpoint::{FilePosition, Position};
use crate::model::Time;
use crate::sources::driver::{BATCH, IDLE_POLL, Next, PAUSE, Reader, SLICE};
use crate::sources::messages::Messages;

/// Lines per batch: what a reader thread (of a stream) hands over at once.
const BATCH_LINES: usize = 1024;

/// Holds a reader to a steady rate, for offering a fixed load (benchmarks, load tests):
/// at any moment it allows what the rate gives since the start, less what was read.
struct Pace {
    per_s: f64,
    start: Instant,
    read: u64,
}

impl Pace {
    fn new(per_s: f64) -> Pace {
        Pace {
            per_s,
            start: Instant::now(),
            read: 0,
        }
    }

    /// Lines that may be read now (at most `cap`).
    fn room(&self, cap: usize) -> usize {
        let due = (self.start.elapsed().as_secs_f64() * self.per_s) as u64;
        (due.saturating_sub(self.read) as usize).min(cap)
    }
}

/// The lines of the input, each handed out as a slice of the read buffer (or, for a
/// line across two reads, of a carry buffer): no allocation per line.
pub struct LineReader<R = BufReader<Box<dyn Read + Send>>> {
    reader: R,
    /// The start of a line the buffer ended in, while the rest is read.
    partial: Vec<u8>,
    /// Bytes of the lines returned so far, line endings included.
    consumed: u64,
}

/// Reads of a regular file: a system call per ~100 lines of the reference events is
/// rare next to the work per line (1 MiB measured no better), and the buffer stays in
/// cache while its lines are copied out.
const FILE_BUFFER: usize = 1 << 16;

impl LineReader {
    /// The regular file `path`.
    pub fn open(path: &Path) -> io::Result<LineReader> {
        File::open(path).map(LineReader::from_file)
    }

    fn from_file(file: File) -> LineReader {
        LineReader::with_buffer(BufReader::with_capacity(FILE_BUFFER, Box::new(file)))
    }

    /// A reader over a whole stream (tests, benchmarks, pipes).
    pub fn from_reader(r: impl Read + Send + 'static) -> LineReader {
        LineReader::with_buffer(BufReader::new(Box::new(r)))
    }

    fn with_buffer(reader: BufReader<Box<dyn Read + Send>>) -> LineReader {
        LineReader::over(reader)
    }
}

impl<R: BufRead> LineReader<R> {
    /// The lines of `reader` (the profile snapshot reads its lines with this too).
    pub fn over(reader: R) -> LineReader<R> {
        LineReader {
            reader,
            partial: Vec::new(),
            consumed: 0,
        }
    }

    /// Hands the next line, without its line ending, to `give`; false at the end.
    pub fn read_line(&mut self, give: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        self.partial.clear();
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                // The last line, with no line break after it.
                if self.partial.is_empty() {
                    return Ok(false);
                }
                give(&self.partial);
                return Ok(true);
            }
            let Some(at) = memchr::memchr(b'\n', buf) else {
                let n = buf.len();
                self.partial.extend_from_slice(buf);
                self.reader.consume(n);
                self.consumed += n as u64;
                continue;
            };
            if self.partial.is_empty() {
                give(without_cr(&buf[..at]));
            } else {
                self.partial.extend_from_slice(&buf[..at]);
                give(without_cr(&self.partial));
            }
            self.reader.consume(at + 1);
            self.consumed += at as u64 + 1;
            return Ok(true);
        }
    }
}

impl LineReader {
    /// True when the next line can be read without waiting on the underlying reader.
    fn has_buffered_line(&self) -> bool {
        self.reader.buffer().contains(&b'\n')
    }
}

/// A line that ended in a line break, without the `\r` of a CRLF ending.
fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where a worker's lines come from.
enum Lines {
    /// A regular file: read in place, it never blocks for long.
    File(LineReader),
    /// A pipe or standard input, which may wait for its writer: a thread reads it and
    /// hands over batches, so the worker never blocks and its clock keeps moving.
    Stream(mpsc::Receiver<io::Result<Messages>>),
    Done,
}

impl Lines {
    /// The input of worker `index` of the cluster: all of it for worker 0 (from byte
    /// `start` on), none for the others.
    fn open(path: &Path, index: usize, start: u64) -> io::Result<Lines> {
        if index != 0 {
            return Ok(Lines::Done);
        }
        let is_stdin = path == Path::new("-");
        if !is_stdin && std::fs::metadata(path)?.is_file() {
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(start))?;
            return Ok(Lines::File(LineReader::from_file(file)));
        }
        if start > 0 {
            return Err(io::Error::other(
                "only a regular file can be read again from an offset",
            ));
        }
        let reader = if is_stdin {
            LineReader::from_reader(io::stdin())
        } else {
            LineReader::from_reader(File::open(path)?)
        };
        Ok(Lines::Stream(spawn_reader(reader)))
    }
}

/// Reads `reader` on a thread of its own; a batch is sent as soon as no further line is
/// already buffered, so interactive input arrives without delay. The channel is bounded:
/// when the job falls behind, the thread waits.
fn spawn_reader(mut reader: LineReader) -> mpsc::Receiver<io::Result<Messages>> {
    let (tx, rx) = mpsc::sync_channel(16);
    std::thread::spawn(move || {
        loop {
            let mut batch = Messages::default();
            loop {
                match reader.read_line(&mut |line| batch.push(line)) {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = tx.send(Ok(batch));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Ok(batch));
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
                if batch.len() >= BATCH_LINES || !reader.has_buffered_line() {
                    break;
                }
            }
            if tx.send(Ok(batch)).is_err() {
                return;
            }
        }
    });
    rx
}

/// The lines of `path` (a regular file, a pipe, or standard input `-`) on worker 0 of
/// the cluster, in order; nothing on the others. An I/O error ends the input early,
/// logged and reported as failed. With `max_per_s`, it reads at most that many lines a
/// second.
pub struct FileReader {
    path: PathBuf,
    /// Where a checkpoint says this file is (absolute); none but on worker 0.
    absolute: Option<PathBuf>,
    lines: Lines,
    pace: Option<Pace>,
    /// Where the lines read so far end.
    start: u64,
    offset: u64,
    failed: bool,
}

impl FileReader {
    /// Worker `index`'s reader of `path`, from byte `start` on (a restored position).
    pub fn open(path: PathBuf, index: usize, start: u64, max_per_s: Option<f64>) -> FileReader {
        let (lines, failed) = match Lines::open(&path, index, start) {
            Ok(lines) => (lines, false),
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot open input: {e}");
                (Lines::Done, true)
            }
        };
        let absolute = (index == 0).then(|| std::fs::canonicalize(&path).unwrap_or(path.clone()));
        if start > 0 && index == 0 {
            let at_end = std::fs::metadata(&path).is_ok_and(|m| m.len() == start);
            if at_end {
                tracing::info!(
                    path = %path.display(),
                    offset = start,
                    "resuming the file at its end: nothing new to read (lines appended since are \
                     read; delete the checkpoints to read it again from its start)"
                );
            } else {
                tracing::info!(path = %path.display(), offset = start, "resuming the file");
            }
        }
        FileReader {
            path,
            absolute,
            lines,
            pace: max_per_s.map(Pace::new),
            start,
            offset: start,
            failed,
        }
    }

    /// The input ended: at its end, or early on `error`.
    fn end(&mut self, error: Option<io::Error>) {
        if let Some(e) = error {
            tracing::error!(path = %self.path.display(), "read failed, input ends here: {e}");
            self.failed = true;
        }
        self.lines = Lines::Done;
    }
}

impl Reader for FileReader {
    fn read(&mut self, _time: Time, max: usize, give: &mut dyn FnMut(&[u8])) -> Next {
        let (next, ended) = match &mut self.lines {
            Lines::Done => (Next::Now, Some(None)),
            Lines::File(r) => {
                let read = read_file(r, self.pace.as_mut(), max, give);
                self.offset = self.start + r.consumed;
                read
            }
            Lines::Stream(rx) => read_stream(rx, self.pace.as_mut(), max, give),
        };
        if let Some(error) = ended {
            self.end(error);
        }
        next
    }

    fn finished(&self) -> bool {
        matches!(self.lines, Lines::Done)
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn position(&self) -> Position {
        match &self.absolute {
            Some(path) => Position::File(FilePosition {
                path: path.clone(),
                offset: self.offset,
            }),
            None => Position::Nothing,
        }
    }
}

/// What a read hands back: when to read again, and whether the input ended (with the
/// error that ended it, if one did).
type ReadOutcome = (Next, Option<Option<io::Error>>);

/// Reads up to `max` lines (at most `BATCH`) of a regular file, as its pace allows (so
/// few that a read needs no time limit of its own).
fn read_file(
    r: &mut LineReader,
    mut pace: Option<&mut Pace>,
    max: usize,
    give: &mut dyn FnMut(&[u8]),
) -> ReadOutcome {
    let most = max.min(BATCH);
    let room = pace.as_ref().map_or(most, |p| p.room(most));
    if room == 0 {
        return (Next::After(PAUSE), None);
    }
    for _ in 0..room {
        match r.read_line(give) {
            Ok(true) => {
                if let Some(p) = pace.as_mut() {
                    p.read += 1;
                }
            }
            Ok(false) => return (Next::Now, Some(None)),
            Err(e) => return (Next::Now, Some(Some(e))),
        }
    }
    (Next::Now, None)
}

/// Takes the batches a reader thread has ready, for one slice, as the pace allows. A
/// batch is taken whole, so a stream may run one batch ahead of its pace; the next
/// ones wait that much longer.
fn read_stream(
    rx: &mpsc::Receiver<io::Result<Messages>>,
    mut pace: Option<&mut Pace>,
    max: usize,
    give: &mut dyn FnMut(&[u8]),
) -> ReadOutcome {
    let started = Instant::now();
    let mut n = 0;
    loop {
        if pace.as_ref().is_some_and(|p| p.room(1) == 0) {
            return (Next::After(PAUSE), None);
        }
        match rx.try_recv() {
            Ok(Ok(batch)) => {
                if let Some(p) = pace.as_mut() {
                    p.read += batch.len() as u64;
                }
                batch.iter().for_each(&mut *give);
                n += batch.len();
            }
            Ok(Err(e)) => return (Next::Now, Some(Some(e))),
            Err(mpsc::TryRecvError::Disconnected) => return (Next::Now, Some(None)),
            // Nothing yet: look again soon, so time (and TTL) moves on.
            Err(mpsc::TryRecvError::Empty) => return (Next::After(IDLE_POLL), None),
        }
        if n >= max || started.elapsed() >= SLICE {
            return (Next::Now, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(mut r: LineReader) -> (Vec<String>, u64) {
        let mut out = Vec::new();
        while r
            .read_line(&mut |l| out.push(String::from_utf8(l.to_vec()).unwrap()))
            .unwrap()
        {}
        (out, r.consumed)
    }

    fn lines_of(path: &Path) -> Vec<String> {
        lines(LineReader::open(path).unwrap()).0
    }

    /// Hands out at most 3 bytes per read: every line crosses reads.
    struct Trickle(io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn lines_across_reads_and_longer_than_the_buffer_come_whole() {
        let long = "x".repeat(20_000);
        let text = format!("ab\r\n{long}\n\ncd\r\n{long}y");
        let want = ["ab", long.as_str(), "", "cd", &format!("{long}y")];
        for r in [
            LineReader::from_reader(Trickle(io::Cursor::new(text.clone().into_bytes()))),
            LineReader::from_reader(io::Cursor::new(text.clone().into_bytes())),
        ] {
            let (got, consumed) = lines(r);
            assert_eq!(got, want);
            assert_eq!(consumed, text.len() as u64);
        }
    }

    #[test]
    fn crlf_empty_lines_and_missing_final_newline() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"a\r\n\nb").unwrap();
        f.flush().unwrap();
        assert_eq!(lines_of(f.path()), ["a", "", "b"]);
    }

    fn read_all(r: &mut FileReader) -> Vec<String> {
        let mut out = Vec::new();
        while !r.finished() {
            r.read(0, BATCH, &mut |l| {
                out.push(String::from_utf8(l.to_vec()).unwrap())
            });
        }
        out
    }

    /// One read hands on at most `BATCH` lines, so that what the next operators take
    /// at once stays in the CPU's cache (see `BATCH`); the rest come in later reads.
    #[test]
    fn a_read_hands_on_at_most_a_batch() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for n in 0..BATCH * 2 + 5 {
            writeln!(f, "{n}").unwrap();
        }
        f.flush().unwrap();
        let mut r = FileReader::open(f.path().to_path_buf(), 0, 0, None);
        let mut counts = Vec::new();
        while !r.finished() {
            let mut n = 0;
            assert_eq!(r.read(0, BATCH, &mut |_| n += 1), Next::Now);
            counts.push(n);
        }
        assert_eq!(counts.iter().sum::<usize>(), BATCH * 2 + 5);
        assert!(counts.iter().all(|&n| n <= BATCH), "{counts:?}");
        assert!(counts.len() >= 3, "{counts:?}");
        // Asked for fewer (the room the stages after it have), it hands on no more, and
        // goes on where it stopped.
        let mut r = FileReader::open(f.path().to_path_buf(), 0, 0, None);
        let mut got = Vec::new();
        r.read(0, 3, &mut |l| {
            got.push(String::from_utf8(l.to_vec()).unwrap())
        });
        r.read(0, 2, &mut |l| {
            got.push(String::from_utf8(l.to_vec()).unwrap())
        });
        assert_eq!(got, ["0", "1", "2", "3", "4"]);
    }

    #[test]
    fn a_file_reader_reports_its_byte_offset_and_starts_from_one() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"one\r\ntwo\nthree").unwrap();
        f.flush().unwrap();
        let path = f.path().to_path_buf();
        let offset = |r: &FileReader| match r.position() {
            Position::File(p) => {
                assert_eq!(p.path, std::fs::canonicalize(&path).unwrap());
                p.offset
            }
            other => panic!("{other:?}"),
        };
        let mut r = FileReader::open(path.clone(), 0, 0, None);
        assert_eq!(offset(&r), 0);
        assert_eq!(read_all(&mut r), ["one", "two", "three"]);
        assert_eq!(offset(&r), 14);
        assert!(!r.failed());
        let mut r = FileReader::open(path.clone(), 0, 5, None);
        assert_eq!(read_all(&mut r), ["two", "three"]);
        let other = FileReader::open(path.clone(), 1, 5, None);
        assert!(other.finished() && other.position() == Position::Nothing);
        let missing = FileReader::open("/no/such".into(), 0, 0, None);
        assert!(missing.finished() && missing.failed());
    }

    #[test]
    fn only_worker_zero_reads_the_input() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"x\n").unwrap();
        f.flush().unwrap();
        assert!(matches!(Lines::open(f.path(), 0, 0), Ok(Lines::File(_))));
        assert!(matches!(Lines::open(f.path(), 1, 0), Ok(Lines::Done)));
        assert!(matches!(
            Lines::open(Path::new("/no/such"), 1, 0),
            Ok(Lines::Done)
        ));
    }
}
