//! The loop every source runs: a reader reads and reports where it is; the source
//! operator here moves its capability with the clock, drives the checkpoint coordinator,
//! pauses while backpressure closes the gate, and ends the input once stopped or every
//! source is read to its end (with checkpoints on, after a final checkpoint).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::checkpoint::{Coordinator, Position};
use crate::clock::now_ms;
use crate::model::Time;
use crate::operators::backpressure::Gate;
use crate::shutdown::Lifecycle;
use crate::sources::messages::Messages;
use crate::sources::router::Router;

/// Messages per activation at most, and how long one activation may read before it
/// yields to the rest of the dataflow. What one activation reads, the decoder and the
/// users' state take in turn: 1,024 reference events are ~650 KB of messages and
/// ~330 KB decoded, within a core's second-level cache. A file read for a whole slice
/// (~25,000 lines) left both in main memory by the time the next operator read them,
/// and held them all at once: 25-35 MiB more peak RSS on the 2M-event benchmark, and
/// more CPU (README, "A batch per activation").
pub const BATCH: usize = 1024;
/// The bytes of a batch of messages the source hands on: ~50 of the reference events
/// (256 KiB measured no better).
pub const BATCH_BYTES: usize = 1 << 15;
pub const SLICE: Duration = Duration::from_millis(5);
/// How soon an idle source polls again (and moves its time on).
pub const IDLE_POLL: Duration = Duration::from_millis(10);
/// How soon a source paused (by backpressure, or by its pace) looks again.
pub const PAUSE: Duration = Duration::from_millis(1);

/// When a reader wants to read again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    Now,
    After(Duration),
}

/// What a source reads from.
pub trait Reader {
    /// Reads what is there now, for at most one `SLICE` and at most `max` messages
    /// (the room the stages after it have; a stream's read may go over by the rest of
    /// the batch it took), handing each message to `give` (borrowed: the driver copies
    /// it into its batch); everything read is stamped `time`.
    fn read(&mut self, time: Time, max: usize, give: &mut dyn FnMut(&[u8])) -> Next;
    /// True once the input is read to its end (never, for an unbounded one).
    fn finished(&self) -> bool;
    /// True if the input ended early on an error (logged by the reader).
    fn failed(&self) -> bool {
        false
    }
    /// Where the reader is: what a checkpoint records.
    fn position(&self) -> Position;
    /// On every activation: what the reader does as the probe moves on (Kafka commits
    /// the offsets of done events).
    fn follow(&mut self, _probe: &ProbeHandle<Time>) {}
    /// Once the run is over, everything done.
    fn finish(&mut self, _probe: &ProbeHandle<Time>) {}
}

/// A source's reader and its checkpoint duties, shared between its operator and the
/// run loop, which finishes the reader once everything is done.
pub struct Source {
    reader: Box<dyn Reader>,
    coordinator: Option<Coordinator>,
}

pub type SharedSource = Rc<RefCell<Source>>;

impl Source {
    pub fn shared(reader: Box<dyn Reader>, coordinator: Option<Coordinator>) -> SharedSource {
        Rc::new(RefCell::new(Source {
            reader,
            coordinator,
        }))
    }

    /// Once the run is over: the reader's last duties (Kafka's last commit).
    pub fn finish(&mut self, probe: &ProbeHandle<Time>) {
        self.reader.finish(probe);
    }

    /// Worker 0: why the final checkpoint did not complete, if it did not.
    pub fn final_checkpoint_error(&self) -> Option<String> {
        self.coordinator.as_ref()?.final_error()
    }
}

/// What the operator does on an activation.
enum Decision {
    /// Read at most so many messages.
    Read(usize),
    Wait(Duration),
    Close,
}

/// The state of a source operator between activations.
struct Driver {
    source: SharedSource,
    probe: ProbeHandle<Time>,
    gate: Gate,
    life: Lifecycle,
    peers: usize,
    /// When this source began to end: a stop, or every source at its end.
    ending: Option<Time>,
    /// The gate's looks in a row that found it closed.
    closed: u32,
    /// Messages read so far.
    read: u64,
}

impl Driver {
    /// Moves the clock (and the checkpoints with it), and decides whether to read.
    fn decide(&mut self, cap: &mut Capability<Time>) -> Decision {
        let mut guard = self.source.borrow_mut();
        let Source {
            reader,
            coordinator,
        } = &mut *guard;
        let finished = reader.finished();
        if finished {
            if reader.failed() {
                self.life.fail();
            }
            self.life.set_read_all_here();
        }
        if self.ending.is_none() {
            self.ending = self
                .life
                .stop_requested()
                .or_else(|| self.life.read_all_everywhere(self.peers));
            if self.ending.is_some() {
                self.life.begin_ending();
            }
        }
        // Once ending, with checkpoints on, the clock jumps to the final epoch (no
        // event will carry a later time, so there is no need to wait for it) and the
        // source waits there until the probe passed it: the final checkpoint taken, its
        // offsets committed.
        let final_epoch = self
            .ending
            .zip(coordinator.as_mut())
            .map(|(t, c)| c.final_epoch(t));
        if let Some(f) = final_epoch {
            self.life.end_at(f);
        }
        let now = final_epoch
            .unwrap_or_else(|| coordinator.as_ref().map_or_else(now_ms, Coordinator::clock));
        if now > *cap.time() {
            if let Some(c) = coordinator.as_mut() {
                c.crossed(*cap.time(), now, || reader.position());
            }
            cap.downgrade(&now);
        }
        if let Some(c) = coordinator.as_mut() {
            c.complete(&self.probe);
        }
        reader.follow(&self.probe);
        if self.ending.is_some() || (finished && coordinator.is_none()) {
            return match (final_epoch, coordinator.as_ref()) {
                (Some(e), Some(c)) if self.probe.less_than(&e) || !c.completed_through(e) => {
                    Decision::Wait(IDLE_POLL)
                }
                _ => Decision::Close,
            };
        }
        if finished {
            // Done here; the clock and the checkpoints go on until all are done.
            return Decision::Wait(IDLE_POLL);
        }
        match self.gate.room(self.read) {
            0 => {
                // Closed a while: the stages wait on a slow service; look less often.
                let wait = PAUSE * (1 << self.closed.min(3));
                self.closed += 1;
                Decision::Wait(wait)
            }
            room => {
                self.closed = 0;
                Decision::Read(room.min(BATCH))
            }
        }
    }
}

/// The source operator: emits what `source`'s reader reads, in batches of about
/// `BATCH_BYTES` for the workers `router` picks, stamped with the processing time (see
/// the module notes for the rest).
pub fn drive<'s>(
    scope: Scope<'s, Time>,
    name: &str,
    shared: SharedSource,
    mut router: Router,
    probe: ProbeHandle<Time>,
    gate: Gate,
    life: Lifecycle,
) -> Stream<'s, Time, Vec<Messages>> {
    let peers = scope.peers();
    source(scope, name, move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut driver = Driver {
            source: shared,
            probe,
            gate,
            life,
            peers,
            ending: None,
            closed: 0,
            read: 0,
        };
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            match driver.decide(c) {
                Decision::Close => {
                    cap = None;
                    driver.life.set_read_all_here();
                }
                Decision::Wait(d) => activator.activate_after(d),
                Decision::Read(max) => {
                    let time = *c.time();
                    let mut session = output.session(&*c);
                    let mut give = |batch: Messages| session.give(batch);
                    let mut read = 0;
                    let next = driver.source.borrow_mut().reader.read(time, max, &mut |m| {
                        read += 1;
                        router.push(m, &mut give)
                    });
                    driver.read += read;
                    router.flush(&mut give);
                    match next {
                        Next::Now => activator.activate(),
                        Next::After(d) => activator.activate_after(d),
                    }
                }
            }
        }
    })
}

/// Tells every worker once this worker's source has read all, and when (see `Lifecycle`): a
/// source that is done waits for the others (its clock still moving, its checkpoint
/// duties still done) so that all of them end at one final checkpoint.
pub fn finished_beacon(scope: Scope<'_, Time>, life: Lifecycle) {
    use timely::dataflow::operators::Inspect;
    use timely::dataflow::operators::vec::Broadcast;
    let here = life.clone();
    source(scope, "Finished", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        move |output| {
            if here.read_all_here() {
                if let Some(c) = cap.take() {
                    output.session(&c).give(now_ms());
                }
            } else {
                activator.activate_after(IDLE_POLL);
            }
        }
    })
    .container::<Vec<Time>>()
    .broadcast()
    .inspect(move |at| life.source_done_somewhere(*at));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::backpressure::Backlog;
    use crate::shutdown::StopFlag;
    use timely::dataflow::operators::{Inspect, Probe};

    /// The router of a worker alone.
    fn alone() -> Router {
        let place = crate::sources::router::Place {
            index: 0,
            peers: 1,
            per_process: 1,
        };
        Router::new(place, crate::wire::Decoder::default(), BATCH_BYTES)
    }

    /// Hands out its messages one per read.
    struct Fake(Vec<Vec<u8>>);

    impl Reader for Fake {
        fn read(&mut self, _time: Time, _max: usize, give: &mut dyn FnMut(&[u8])) -> Next {
            if let Some(m) = self.0.pop() {
                give(&m);
            }
            Next::Now
        }
        fn finished(&self) -> bool {
            self.0.is_empty()
        }
        fn position(&self) -> Position {
            Position::Nothing
        }
    }

    /// Runs a fake source to its end; returns what it emitted, and whether it had read
    /// all and was ending.
    fn run(messages: Vec<&'static str>, stop: StopFlag) -> (Vec<String>, bool, bool) {
        timely::execute_directly(move |worker| {
            let life = Lifecycle::new(stop);
            let got = Rc::new(RefCell::new(Vec::new()));
            let sink = got.clone();
            let reader = Fake(
                messages
                    .iter()
                    .rev()
                    .map(|m| m.as_bytes().to_vec())
                    .collect(),
            );
            let shared = Source::shared(Box::new(reader), None);
            let probe = ProbeHandle::new();
            let gate = Gate::new(vec![Backlog::new(10)]);
            let l = life.clone();
            let p = probe.clone();
            worker.dataflow::<Time, _, _>(move |scope| {
                drive(scope, "Fake", shared, alone(), p.clone(), gate, l)
                    .inspect(move |batch| {
                        let mut sink = sink.borrow_mut();
                        for m in batch.iter() {
                            sink.push(String::from_utf8(m.to_vec()).unwrap());
                        }
                    })
                    .probe_with(&p);
            });
            while !probe.done() {
                worker.step();
            }
            let got = got.borrow().clone();
            (got, life.read_all_here(), life.ending().get())
        })
    }

    #[test]
    fn a_source_emits_everything_its_reader_reads_and_ends() {
        let (got, read_all, ending) = run(vec!["a", "b", "c"], StopFlag::default());
        assert_eq!(got, ["a", "b", "c"]);
        assert!(read_all && !ending);
    }

    #[test]
    fn a_stopped_source_reads_nothing_more_and_ends() {
        let stop = StopFlag::default();
        stop.set();
        let (got, _, ending) = run(vec!["a", "b"], stop);
        assert!(got.is_empty(), "{got:?}");
        assert!(ending);
    }

    /// Stopped with checkpoints on, the clock jumps to the final epoch: the coordinator
    /// records the position there and tries to complete it before the source ends (here
    /// without state parts, so it says why it could not).
    #[test]
    fn a_stopped_source_with_checkpoints_ends_at_its_final_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::checkpoint::CheckpointConfig {
            dir: dir.path().to_path_buf(),
            interval_ms: 100,
            retained: 2,
            floor_epoch: 0,
            full_every: 1,
            compress: true,
            compress_deltas: true,
        };
        let stop = StopFlag::default();
        stop.set();
        let stopped_at = stop.stopped_at().unwrap();
        let final_epoch = cfg.epoch_after(stopped_at);
        let offsets = cfg.offsets_path(final_epoch, 0);
        let error = timely::execute_directly(move |worker| {
            let shared = Source::shared(
                Box::new(Fake(vec![b"a".to_vec()])),
                Some(Coordinator::new(cfg, 0, 1)),
            );
            let probe = ProbeHandle::new();
            let (p, s) = (probe.clone(), shared.clone());
            let gate = Gate::new(vec![Backlog::new(10)]);
            worker.dataflow::<Time, _, _>(move |scope| {
                drive(
                    scope,
                    "Fake",
                    s,
                    alone(),
                    p.clone(),
                    gate,
                    Lifecycle::new(stop),
                )
                .probe_with(&p);
            });
            while !probe.done() {
                worker.step();
            }
            shared.borrow().final_checkpoint_error()
        });
        assert!(offsets.exists(), "{}", offsets.display());
        assert!(error.unwrap().contains(&format!("epoch {final_epoch}")));
    }
}

#[cfg(test)]
mod trail_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::channels::pact::Exchange;
    use timely::dataflow::operators::Probe;
    use timely::dataflow::operators::generic::Operator;

    use super::*;
    use crate::operators::backpressure::Trail;
    use crate::shutdown::StopFlag;
    use crate::sources::router::Place;

    /// `end` messages of users `u0`, `u1` ..., 64 a read, counted in `read`.
    struct Counting {
        next: usize,
        end: usize,
        read: Arc<AtomicUsize>,
    }

    impl Reader for Counting {
        fn read(&mut self, _time: Time, _max: usize, give: &mut dyn FnMut(&[u8])) -> Next {
            for _ in 0..64.min(self.end - self.next) {
                give(format!(r#"{{"user_id":"u{}","event_type":"t"}}"#, self.next).as_bytes());
                self.next += 1;
            }
            self.read.store(self.next, Ordering::SeqCst);
            Next::Now
        }
        fn finished(&self) -> bool {
            self.next == self.end
        }
        fn position(&self) -> Position {
            Position::Nothing
        }
    }

    /// Whether `done` came true within a minute.
    fn wait_for(done: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while !done() {
            if start.elapsed() > Duration::from_secs(60) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// At two workers, worker 0 reads; worker 1's decoder takes nothing until released.
    /// Worker 0's source reads on for about the trail's length, then waits, however
    /// long worker 1 takes (without the trail it read on: 71,488 messages at the first
    /// look, more at the second, all queued for worker 1); released, every message
    /// arrives.
    #[test]
    fn a_source_waits_while_another_worker_has_not_decoded_what_it_sent() {
        const N: usize = 200_000;
        let stuck = Arc::new(AtomicBool::new(true));
        let (read, got) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = StopFlag::default();
        let (s, r, g, st) = (stuck.clone(), read.clone(), got.clone(), stop.clone());
        let guards = timely::execute(timely::Config::process(2), move |worker| {
            let index = worker.index();
            let reader = Counting {
                next: 0,
                end: if index == 0 { N } else { 0 },
                read: r.clone(),
            };
            let shared = Source::shared(Box::new(reader), None);
            let place = Place {
                index,
                peers: 2,
                per_process: 2,
            };
            let router = Router::new(place, crate::wire::Decoder::default(), BATCH_BYTES);
            let trail = Trail::new(20);
            let gate = Gate::new(Vec::new()).with_trail(trail.clone());
            let probe = ProbeHandle::new();
            let (stuck, got) = (s.clone(), g.clone());
            let life = Lifecycle::new(st.clone());
            worker.dataflow::<Time, _, _>(|scope| {
                drive(scope, "Counting", shared, router, probe.clone(), gate, life)
                    .probe_with(trail.sourced())
                    .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                        Exchange::new(|b: &Messages| u64::from(b.worker)),
                        "Decode",
                        |_, info| {
                            let activator = scope.activator_for(info.address);
                            move |input, _output| {
                                if index == 1 && stuck.load(Ordering::SeqCst) {
                                    activator.activate_after(Duration::from_millis(1));
                                    return;
                                }
                                input.for_each(|_, batches| {
                                    let n = batches.iter().map(Messages::len).sum::<usize>();
                                    got.fetch_add(n, Ordering::SeqCst);
                                });
                            }
                        },
                    )
                    .probe_with(trail.arrived())
                    .probe_with(&probe);
            });
            while !probe.done() {
                worker.step();
            }
        })
        .unwrap();
        // The workers are stopped and joined before any assertion (a panic here would
        // wait for them for ever).
        // Looks well past the trail's 20 ms, so that a loaded machine's late progress
        // updates (which keep the gate open longer) are through by the first.
        let started = wait_for(|| read.load(Ordering::SeqCst) > 0);
        std::thread::sleep(Duration::from_millis(300));
        let early = read.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        let later = read.load(Ordering::SeqCst);
        stuck.store(false, Ordering::SeqCst);
        let all = wait_for(|| got.load(Ordering::SeqCst) == N);
        stop.set();
        guards.join();
        assert!(
            started && all,
            "{} of {N} arrived",
            got.load(Ordering::SeqCst)
        );
        assert_eq!(
            early, later,
            "the source read on while worker 1 took nothing"
        );
        assert!(
            later < N / 2,
            "{later} of {N} read while worker 1 took nothing"
        );
    }
}
