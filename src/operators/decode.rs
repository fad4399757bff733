//! Messages (raw bytes) to `UserEvent`s; invalid ones are counted, logged at a limited
//! rate and skipped.

use std::rc::Rc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::clock::now_ms;
use crate::counters::Counters;
use crate::dead_letter::{DeadLetter, DeadLetters, Kind};
use crate::log_limit::LogLimiter;
use crate::model::{Time, UserEvent};
use crate::wire::Decoder;

/// Decodes each message of `messages` with `decoder` (its limit and type rules).
/// Invalid messages go to `dead_letters`, if given, as they were read.
pub fn decode<'s>(
    messages: Stream<'s, Time, Vec<Vec<u8>>>,
    mut decoder: Decoder,
    dead_letters: Option<DeadLetters>,
    stats: Rc<Counters>,
) -> Stream<'s, Time, Vec<UserEvent>> {
    let mut limiter = LogLimiter::per_10s("invalid messages");
    let mut dead_log = LogLimiter::per_10s("dead-letter write failures");
    let mut letters = Vec::new();
    messages.unary(Pipeline, "Decode", move |_, _| {
        move |input, output| {
            // In arrival order (`for_each_stamp` sorts containers by time, unstably):
            // a user's events must stay in the order they were read.
            input.for_each(|cap, batch| {
                let mut session = output.session(&cap);
                Counters::add(&stats.events_read, batch.len() as u64);
                for msg in batch.drain(..) {
                    match decoder.decode(&msg) {
                        Ok(ev) => session.give(ev),
                        Err(e) => {
                            Counters::add(&stats.invalid, 1);
                            Counters::add(&stats.invalid_by_reason[e.reason_index()], 1);
                            if dead_letters.is_some() {
                                let reason = format!("{}: {e}", e.reason());
                                letters.push(DeadLetter::new(
                                    Kind::InvalidMessage,
                                    reason,
                                    &msg,
                                    now_ms(),
                                ));
                            }
                            if limiter.allow() {
                                let preview = String::from_utf8_lossy(&msg[..msg.len().min(120)]);
                                tracing::warn!(
                                    reason = e.reason(),
                                    "invalid message skipped: {e}; message starts {preview:?}"
                                );
                            }
                        }
                    }
                }
            });
            // Once per activation: a sync per message would be a disk's pace.
            if let Some(dl) = &dead_letters
                && !letters.is_empty()
            {
                match dl.write(&letters) {
                    Ok(()) => Counters::add(&stats.dead_letters, letters.len() as u64),
                    Err(e) => {
                        if dead_log.allow() {
                            tracing::error!(
                                lost = letters.len(),
                                "invalid messages not dead-lettered: {e}"
                            );
                        }
                    }
                }
                letters.clear();
            }
            limiter.tick();
            dead_log.tick();
        }
    })
}
