//! A JSONL file (or standard input) as a bounded source, one message per line.
//!
//! A file is split among all workers of the cluster by byte range, each worker reading
//! the lines that start in its range (the first worker of a range boundary finishes the
//! line it is in), so reading and decoding scale with workers. Standard input is read by
//! worker 0 alone.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::model::Time;
use crate::operators::backpressure::Gate;
use crate::operators::now_ms;

/// Lines handed downstream per batch, and how long one activation may read before it
/// yields to the rest of the dataflow.
const BATCH_LINES: usize = 1024;
const SLICE: Duration = Duration::from_millis(5);
/// How soon a paused source looks at the gate again.
const PAUSE: Duration = Duration::from_millis(1);

/// The part of the input one worker reads.
pub struct LineReader {
    reader: Box<dyn BufRead>,
    /// Bytes consumed so far, as an offset in the file.
    pos: u64,
    /// Lines starting at or after this offset belong to the next worker.
    end: u64,
}

impl LineReader {
    /// The share of `path` for worker `index` of `peers` (`-` is standard input, all of
    /// it for worker 0).
    pub fn open(path: &Path, index: usize, peers: usize) -> io::Result<LineReader> {
        if path == Path::new("-") {
            let end = if index == 0 { u64::MAX } else { 0 };
            return Ok(LineReader { reader: Box::new(BufReader::new(io::stdin())), pos: 0, end });
        }
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = len * index as u64 / peers as u64;
        let end = len * (index as u64 + 1) / peers as u64;
        let mut pos = start;
        if start > 0 {
            // The line that contains `start - 1` belongs to the previous worker.
            file.seek(SeekFrom::Start(start - 1))?;
            let mut reader = BufReader::with_capacity(1 << 16, file);
            let mut skipped = Vec::new();
            pos = start - 1 + reader.read_until(b'\n', &mut skipped)? as u64;
            return Ok(LineReader { reader: Box::new(reader), pos, end });
        }
        Ok(LineReader { reader: Box::new(BufReader::with_capacity(1 << 16, file)), pos, end })
    }

    /// A reader over in-memory bytes (tests and benchmarks).
    pub fn from_reader(r: impl Read + 'static) -> LineReader {
        LineReader { reader: Box::new(BufReader::new(r)), pos: 0, end: u64::MAX }
    }

    /// The next line of this worker's share, without its line ending.
    pub fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let mut line = Vec::with_capacity(512);
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        self.pos += n as u64;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        Ok(Some(line))
    }
}

/// Emits the lines of `path` (this worker's share), stamped with the processing time;
/// finishes after the last line. An I/O error ends the input early and is logged and
/// reported through `failed`.
///
/// While `gate` is closed (a later stage is full) it reads nothing, only moving its
/// time with the clock, and looks again shortly.
pub fn file_source<'s>(
    scope: Scope<'s, Time>,
    path: PathBuf,
    gate: Gate,
    failed: std::rc::Rc<std::cell::Cell<bool>>,
) -> Stream<'s, Time, Vec<Vec<u8>>> {
    let (index, peers) = (scope.index(), scope.peers());
    source(scope, "FileSource", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut reader = match LineReader::open(&path, index, peers) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot open input: {e}");
                failed.set(true);
                None
            }
        };
        move |output| {
            let (Some(c), Some(r)) = (cap.as_mut(), reader.as_mut()) else {
                cap = None;
                return;
            };
            let now = now_ms();
            if now > *c.time() {
                c.downgrade(&now);
            }
            if !gate.is_open() {
                activator.activate_after(PAUSE);
                return;
            }
            let started = Instant::now();
            let mut session = output.session(&*c);
            let mut done = false;
            'slice: while started.elapsed() < SLICE {
                for _ in 0..BATCH_LINES {
                    match r.next_line() {
                        Ok(Some(line)) => session.give(line),
                        Ok(None) => {
                            done = true;
                            break 'slice;
                        }
                        Err(e) => {
                            tracing::error!(path = %path.display(), "read failed, input ends here: {e}");
                            failed.set(true);
                            done = true;
                            break 'slice;
                        }
                    }
                }
            }
            drop(session);
            if done {
                cap = None;
                reader = None;
            } else {
                activator.activate();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines_of(path: &Path, peers: usize) -> Vec<Vec<String>> {
        (0..peers)
            .map(|i| {
                let mut r = LineReader::open(path, i, peers).unwrap();
                let mut out = Vec::new();
                while let Some(l) = r.next_line().unwrap() {
                    out.push(String::from_utf8(l).unwrap());
                }
                out
            })
            .collect()
    }

    #[test]
    fn byte_ranges_cover_every_line_exactly_once() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let all: Vec<String> = (0..500).map(|i| format!("{}{i}", "x".repeat(i % 37))).collect();
        for l in &all {
            writeln!(f, "{l}").unwrap();
        }
        f.flush().unwrap();
        for peers in 1..=7 {
            let parts = lines_of(f.path(), peers);
            let joined: Vec<String> = parts.into_iter().flatten().collect();
            assert_eq!(joined, all, "peers={peers}");
        }
    }

    #[test]
    fn crlf_empty_lines_and_missing_final_newline() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"a\r\n\nb").unwrap();
        f.flush().unwrap();
        assert_eq!(lines_of(f.path(), 1), vec![vec!["a".to_string(), String::new(), "b".to_string()]]);
    }
}
