//! A JSONL file (or standard input) as a bounded source, one message per line.
//!
//! The input is read by worker 0 of the cluster alone, in order, so each user's events
//! reach its worker in file order whatever the number of workers and processes (read
//! in parallel by byte range, a user's events came from several readers interleaved,
//! and an order-dependent rule gave different results at different `-w`; Flink too
//! reads a file with one source subtask). A regular file is read in place; standard
//! input and pipes on a reader thread, so a quiet writer never stalls the worker.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::clock::now_ms;
use crate::model::Time;
use crate::operators::backpressure::Gate;
use crate::shutdown::StopFlag;

/// Lines handed downstream per batch, and how long one activation may read before it
/// yields to the rest of the dataflow.
const BATCH_LINES: usize = 1024;
const SLICE: Duration = Duration::from_millis(5);
/// How soon a paused source looks at the gate again.
const PAUSE: Duration = Duration::from_millis(1);
/// How often an idle stream source moves its time on.
const IDLE_POLL: Duration = Duration::from_millis(10);

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
}

impl LineReader {
    /// The regular file `path`.
    pub fn open(path: &Path) -> io::Result<LineReader> {
        let file = File::open(path)?;
        let reader = BufReader::with_capacity(1 << 16, Box::new(file) as Box<dyn Read + Send>);
        Ok(LineReader { reader })
    }

    /// A reader over a whole stream (tests, benchmarks, pipes).
    pub fn from_reader(r: impl Read + Send + 'static) -> LineReader {
        LineReader {
            reader: BufReader::new(Box::new(r)),
        }
    }

    /// The next line, without its line ending.
    pub fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::with_capacity(512);
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
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
    /// The input of worker `index` of the cluster: all of it for worker 0, none for
    /// the others.
    fn open(path: &Path, index: usize) -> io::Result<Lines> {
        if index != 0 {
            return Ok(Lines::Done);
        }
        let is_stdin = path == Path::new("-");
        if !is_stdin && std::fs::metadata(path)?.is_file() {
            return LineReader::open(path).map(Lines::File);
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

/// Emits the lines of `path` (a regular file, a pipe, or standard input `-`) on worker 0
/// of the cluster, in order, stamped with the processing time; finishes after the last
/// line (at once on the other workers). An I/O error ends the input early, logged and
/// reported via `failed`.
///
/// While `gate` is closed (a later stage is full) it reads nothing, only moving its
/// time with the clock, and looks again shortly.
/// It also ends, early, once `stop` is set. With `max_per_s`, it reads at most that many
/// lines a second.
pub fn file_source<'s>(
    scope: Scope<'s, Time>,
    path: PathBuf,
    max_per_s: Option<f64>,
    gate: Gate,
    stop: StopFlag,
    failed: std::rc::Rc<std::cell::Cell<bool>>,
) -> Stream<'s, Time, Vec<Vec<u8>>> {
    let index = scope.index();
    source(scope, "FileSource", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut lines = Lines::open(&path, index).unwrap_or_else(|e| {
            tracing::error!(path = %path.display(), "cannot open input: {e}");
            failed.set(true);
            Lines::Done
        });
        let mut pace = max_per_s.map(Pace::new);
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            let now = now_ms();
            if now > *c.time() {
                c.downgrade(&now);
            }
            if stop.is_set() {
                cap = None;
                lines = Lines::Done;
                return;
            }
            if !gate.is_open() {
                activator.activate_after(PAUSE);
                return;
            }
            let started = Instant::now();
            let mut session = output.session(&*c);
            let mut error = None;
            let done = match &mut lines {
                Lines::Done => true,
                Lines::File(r) => loop {
                    if started.elapsed() >= SLICE {
                        activator.activate();
                        break false;
                    }
                    let room = pace.as_ref().map_or(BATCH_LINES, |p| p.room(BATCH_LINES));
                    if room == 0 {
                        activator.activate_after(PAUSE);
                        break false;
                    }
                    let mut ended = false;
                    for _ in 0..room {
                        match r.next_line() {
                            Ok(Some(line)) => {
                                session.give(line);
                                if let Some(p) = pace.as_mut() {
                                    p.read += 1;
                                }
                            }
                            Ok(None) => {
                                ended = true;
                                break;
                            }
                            Err(e) => {
                                error = Some(e);
                                ended = true;
                                break;
                            }
                        }
                    }
                    if ended {
                        break true;
                    }
                },
                Lines::Stream(rx) => loop {
                    // A batch is taken whole, so a stream may run one batch ahead of
                    // its pace; the next ones wait that much longer.
                    if pace.as_ref().is_some_and(|p| p.room(1) == 0) {
                        activator.activate_after(PAUSE);
                        break false;
                    }
                    match rx.try_recv() {
                        Ok(Ok(batch)) => {
                            if let Some(p) = pace.as_mut() {
                                p.read += batch.len() as u64;
                            }
                            session.give_iterator(batch.into_iter())
                        }
                        Ok(Err(e)) => {
                            error = Some(e);
                            break true;
                        }
                        Err(mpsc::TryRecvError::Disconnected) => break true,
                        Err(mpsc::TryRecvError::Empty) => {
                            // Nothing yet: look again soon, so time (and TTL) moves on.
                            activator.activate_after(IDLE_POLL);
                            break false;
                        }
                    }
                    if started.elapsed() >= SLICE {
                        activator.activate();
                        break false;
                    }
                },
            };
            drop(session);
            if let Some(e) = error {
                tracing::error!(path = %path.display(), "read failed, input ends here: {e}");
                failed.set(true);
            }
            if done {
                cap = None;
                lines = Lines::Done;
            }
        }
    })
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

    #[test]
    fn only_worker_zero_reads_the_input() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"x\n").unwrap();
        f.flush().unwrap();
        assert!(matches!(Lines::open(f.path(), 0), Ok(Lines::File(_))));
        assert!(matches!(Lines::open(f.path(), 1), Ok(Lines::Done)));
        assert!(matches!(
            Lines::open(Path::new("/no/such"), 1),
            Ok(Lines::Done)
        ));
    }
}
