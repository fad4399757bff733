//! Messages (raw bytes) to `UserEvent`s; invalid ones are counted, logged at a limited
//! rate and skipped.

use std::rc::Rc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::clock::now_ms;
use crate::counters::Counters;
use crate::dead_letter::{DeadLetter, DeadLetters, Kind, Writer, Written};
use crate::log_limit::LogLimiter;
use crate::model::{Time, UserEvent};
use crate::operators::held::HeldTimes;
use crate::sources::messages::Messages;
use crate::wire::{DecodeError, Decoder};

/// Decodes each message of `messages` with `decoder` (its limit and type rules).
/// Invalid messages go to `dead_letters`, if given, as they were read: written off the
/// worker thread, with the time of their messages held until they are written, so
/// that a run ends only once its dead letters are on disk (or acknowledged).
pub fn decode<'s>(
    messages: Stream<'s, Time, Vec<Messages>>,
    mut decoder: Decoder,
    dead_letters: Option<DeadLetters>,
    stats: Rc<Counters>,
) -> Stream<'s, Time, Vec<UserEvent>> {
    let scope = messages.scope();
    let mut limiter = LogLimiter::per_10s("invalid messages");
    let mut dead_log = LogLimiter::per_10s("dead-letter write failures");
    // Each batch to the worker its source picked (`sources::router`).
    let to_worker = Exchange::new(|batch: &Messages| u64::from(batch.worker));
    messages.unary(to_worker, "Decode", move |_, info| {
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        let writer = dead_letters.map(|dl| match Writer::spawn(dl, activator) {
            Ok(w) => w,
            Err(e) => panic!("cannot start the dead-letter writer thread: {e}"),
        });
        let mut held = HeldTimes::default();
        let mut letters = Vec::new();
        move |input, output| {
            // In arrival order (`for_each_stamp` sorts containers by time, unstably):
            // a user's events must stay in the order they were read.
            input.for_each(|cap, batches| {
                let Some(&time) = cap.least() else { return };
                let mut session = output.session(&cap);
                let read = batches.iter().map(Messages::len).sum::<usize>();
                Counters::add(&stats.events_read, read as u64);
                for msg in batches.iter().flat_map(Messages::iter) {
                    match decoder.decode(msg) {
                        Ok(ev) => session.give(ev),
                        Err(e) => {
                            invalid(&stats, &e, msg, &mut limiter);
                            if writer.is_some() {
                                let reason = format!("{}: {e}", e.reason());
                                letters.push(DeadLetter::new(
                                    Kind::InvalidMessage,
                                    reason,
                                    msg,
                                    now_ms(),
                                ));
                            }
                        }
                    }
                }
                // Cleared: a container timely recycles must not keep its batches alive.
                batches.clear();
                // One write per container: a sync per message would be a disk's pace.
                if let Some(w) = &writer
                    && !letters.is_empty()
                {
                    held.hold(time, || cap.delayed(&time, 0));
                    w.write(time, std::mem::take(&mut letters));
                }
            });
            for written in writer.iter().flat_map(Writer::done) {
                held.release(counted(&stats, written, &mut dead_log));
            }
            limiter.tick();
            dead_log.tick();
        }
    })
}

/// Counts an invalid message and logs it (at a limited rate).
fn invalid(stats: &Counters, e: &DecodeError, msg: &[u8], limiter: &mut LogLimiter) {
    Counters::add(&stats.invalid, 1);
    Counters::add(&stats.invalid_by_reason[e.reason_index()], 1);
    if limiter.allow() {
        let preview = String::from_utf8_lossy(&msg[..msg.len().min(120)]);
        tracing::warn!(
            reason = e.reason(),
            "invalid message skipped: {e}; message starts {preview:?}"
        );
    }
}

/// Counts a written batch of dead letters, or logs its loss; returns its time.
fn counted(stats: &Counters, (time, n, result): Written<Time>, log: &mut LogLimiter) -> Time {
    match result {
        Ok(()) => Counters::add(&stats.dead_letters, n as u64),
        Err(e) => {
            if log.allow() {
                tracing::error!(lost = n, "invalid messages not dead-lettered: {e}");
            }
        }
    }
    time
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;
    use crate::counters::Counts;

    /// Decodes `messages` (all at time 0) in a one-worker dataflow; returns the users of
    /// the events decoded and the worker's counts once time 0 has passed the output.
    fn run(
        messages: &[&str],
        strict_types: bool,
        dead_letters: Option<DeadLetters>,
    ) -> (Vec<String>, Counts) {
        let messages: Messages = messages.iter().map(|m| m.as_bytes()).collect();
        timely::execute_directly(move |worker| {
            let stats = Rc::new(Counters::default());
            let users = Rc::new(RefCell::new(Vec::new()));
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Messages>();
                let sink = users.clone();
                let decoder = Decoder::with_limit(1 << 16).strict_types(strict_types);
                let (probe, _) = decode(stream, decoder, dead_letters, stats.clone())
                    .inspect(move |ev: &UserEvent| sink.borrow_mut().push(ev.user_id.to_string()))
                    .probe();
                (input, probe)
            });
            input.send(messages);
            input.advance_to(1);
            while probe.less_than(&1) {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            let users = users.borrow().clone();
            (users, stats.counts())
        })
    }

    const VALID: &str = r#"{"event_id": "e1", "user_id": "u1", "event_type": "click"}"#;
    const COERCED: &str = r#"{"event_id": "e2", "user_id": 7, "event_type": "click"}"#;
    const INVALID: &str = r#"{"event_id": "e3", "user_id": "#;

    #[test]
    fn valid_and_coerced_messages_pass_invalid_ones_are_counted_by_reason() {
        let (users, c) = run(&[VALID, COERCED, INVALID, ""], false, None);
        assert_eq!(users, ["u1", "7"]);
        assert_eq!((c.events_read, c.invalid, c.dead_letters), (4, 2, 0));
    }

    /// At two workers, each batch is decoded by the worker it names, whichever worker
    /// sent it, in the order sent.
    #[test]
    fn each_batch_is_decoded_by_the_worker_it_names() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        timely::execute(timely::Config::process(2), move |worker| {
            let index = worker.index();
            let sink = sink.clone();
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Messages>();
                let decoder = Decoder::default();
                let stats = Rc::new(Counters::default());
                let (probe, _) = decode(stream, decoder, None, stats)
                    .inspect(move |ev: &UserEvent| {
                        sink.lock().unwrap().push((index, ev.user_id.to_string()))
                    })
                    .probe();
                (input, probe)
            });
            if index == 0 {
                for (to, users) in [(1, ["a", "b"]), (0, ["c", "d"]), (1, ["e", "f"])] {
                    let lines: Vec<String> = users
                        .iter()
                        .map(|u| format!(r#"{{"user_id":"{u}","event_type":"x"}}"#))
                        .collect();
                    let mut batch: Messages = lines.iter().map(|l| l.as_bytes()).collect();
                    batch.worker = to;
                    input.send(batch);
                }
            }
            input.advance_to(1);
            while probe.less_than(&1) {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
        })
        .unwrap();
        let got = got.lock().unwrap();
        let on = |w: usize| -> Vec<&str> {
            got.iter()
                .filter(|(at, _)| *at == w)
                .map(|(_, u)| u.as_str())
                .collect()
        };
        assert_eq!(on(0), ["c", "d"]);
        assert_eq!(on(1), ["a", "b", "e", "f"]);
    }

    #[test]
    fn strict_types_make_a_coerced_message_invalid() {
        let (users, c) = run(&[VALID, COERCED], true, None);
        assert_eq!(users, ["u1"]);
        assert_eq!((c.events_read, c.invalid), (2, 1));
    }

    #[test]
    fn invalid_messages_are_dead_lettered_before_their_time_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let dead = DeadLetters::open(&path).unwrap();
        let (users, c) = run(&[INVALID, VALID, "not json"], false, Some(dead));
        assert_eq!(users, ["u1"]);
        assert_eq!((c.invalid, c.dead_letters), (2, 2));
        let letters = DeadLetters::read(&path).unwrap();
        let bytes: Vec<Vec<u8>> = letters.iter().map(DeadLetter::bytes).collect();
        assert_eq!(bytes, [INVALID.as_bytes(), b"not json"]);
    }

    #[test]
    fn a_failed_dead_letter_write_is_not_counted_and_the_run_goes_on() {
        // Every write to /dev/full fails (no space left on the device).
        let dead = DeadLetters::open(std::path::Path::new("/dev/full")).unwrap();
        let (users, c) = run(&[INVALID, VALID], false, Some(dead));
        assert_eq!(users, ["u1"]);
        assert_eq!((c.invalid, c.dead_letters), (1, 0));
    }
}
