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
use crate::sources::driver::{IDLE_POLL, Next, PAUSE, Reader, SLICE};

/// Lines per batch: what a reader thread hands over at once, and what a paced read
/// asks its pace for at once.
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

/// The lines of the input.
pub struct LineReader {
    reader: BufReader<Box<dyn Read + Send>>,
    /// Bytes of the lines returned so far, line endings included.
    consumed: u64,
}

impl LineReader {
    /// The regular file `path`.
    pub fn open(path: &Path) -> io::Result<LineReader> {
        File::open(path).map(LineReader::from_file)
    }

    fn from_file(file: File) -> LineReader {
        let reader = BufReader::with_capacity(1 << 16, Box::new(file) as Box<dyn Read + Send>);
        LineReader {
            reader,
            consumed: 0,
        }
    }

    /// A reader over a whole stream (tests, benchmarks, pipes).
    pub fn from_reader(r: impl Read + Send + 'static) -> LineReader {
        LineReader {
            reader: BufReader::new(Box::new(r)),
            consumed: 0,
        }
    }

    /// The next line, without its line ending.
    pub fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::with_capacity(512);
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        self.consumed += n as u64;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        Ok(Some(line))
    }

    /// True when the next line can be read without waiting on the underlying reader.
    fn has_buffered_line(&self) -> bool {
        self.reader.buffer().contains(&b'\n')
    }
}

/// Where a worker's lines come from.
enum Lines {
    /// A regular file: read in place, it never blocks for long.
    File(LineReader),
    /// A pipe or standard input, which may wait for its writer: a thread reads it and
    /// hands over batches, so the worker never blocks and its clock keeps moving.
    Stream(mpsc::Receiver<io::Result<Vec<Vec<u8>>>>),
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
fn spawn_reader(mut reader: LineReader) -> mpsc::Receiver<io::Result<Vec<Vec<u8>>>> {
    let (tx, rx) = mpsc::sync_channel(16);
    std::thread::spawn(move || {
        loop {
            let mut batch = Vec::new();
            loop {
                match reader.next_line() {
                    Ok(Some(line)) => batch.push(line),
                    Ok(None) => {
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
    fn read(&mut self, _time: Time, give: &mut dyn FnMut(Vec<u8>)) -> Next {
        let (next, ended) = match &mut self.lines {
            Lines::Done => (Next::Now, Some(None)),
            Lines::File(r) => {
                let read = read_file(r, self.pace.as_mut(), give);
                self.offset = self.start + r.consumed;
                read
            }
            Lines::Stream(rx) => read_stream(rx, self.pace.as_mut(), give),
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

/// Reads lines of a regular file for one slice, as its pace allows.
fn read_file(
    r: &mut LineReader,
    mut pace: Option<&mut Pace>,
    give: &mut dyn FnMut(Vec<u8>),
) -> ReadOutcome {
    let started = Instant::now();
    loop {
        if started.elapsed() >= SLICE {
            return (Next::Now, None);
        }
        let room = pace.as_ref().map_or(BATCH_LINES, |p| p.room(BATCH_LINES));
        if room == 0 {
            return (Next::After(PAUSE), None);
        }
        for _ in 0..room {
            match r.next_line() {
                Ok(Some(line)) => {
                    give(line);
                    if let Some(p) = pace.as_mut() {
                        p.read += 1;
                    }
                }
                Ok(None) => return (Next::Now, Some(None)),
                Err(e) => return (Next::Now, Some(Some(e))),
            }
        }
    }
}

/// Takes the batches a reader thread has ready, for one slice, as the pace allows. A
/// batch is taken whole, so a stream may run one batch ahead of its pace; the next
/// ones wait that much longer.
fn read_stream(
    rx: &mpsc::Receiver<io::Result<Vec<Vec<u8>>>>,
    mut pace: Option<&mut Pace>,
    give: &mut dyn FnMut(Vec<u8>),
) -> ReadOutcome {
    let started = Instant::now();
    loop {
        if pace.as_ref().is_some_and(|p| p.room(1) == 0) {
            return (Next::After(PAUSE), None);
        }
        match rx.try_recv() {
            Ok(Ok(batch)) => {
                if let Some(p) = pace.as_mut() {
                    p.read += batch.len() as u64;
                }
                batch.into_iter().for_each(&mut *give);
            }
            Ok(Err(e)) => return (Next::Now, Some(Some(e))),
            Err(mpsc::TryRecvError::Disconnected) => return (Next::Now, Some(None)),
            // Nothing yet: look again soon, so time (and TTL) moves on.
            Err(mpsc::TryRecvError::Empty) => return (Next::After(IDLE_POLL), None),
        }
        if started.elapsed() >= SLICE {
            return (Next::Now, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines_of(path: &Path) -> Vec<String> {
        let mut r = LineReader::open(path).unwrap();
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(String::from_utf8(l).unwrap());
        }
        out
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
            r.read(0, &mut |l| out.push(String::from_utf8(l).unwrap()));
        }
        out
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
