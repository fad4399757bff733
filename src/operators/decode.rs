//! Messages (raw bytes) to `UserEvent`s; invalid ones are counted, logged at a limited
//! rate and skipped.

use std::rc::Rc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::log_limit::LogLimiter;
use crate::model::{Time, UserEvent};
use crate::stats::Stats;

/// Decodes each message of `messages`; those over `max_bytes` are skipped unparsed.
pub fn decode<'s>(
    messages: Stream<'s, Time, Vec<Vec<u8>>>,
    max_bytes: usize,
    stats: Rc<Stats>,
) -> Stream<'s, Time, Vec<UserEvent>> {
    let mut limiter = LogLimiter::default();
    let mut decoder = crate::decode::Decoder::with_limit(max_bytes);
    messages.unary(Pipeline, "Decode", move |_, _| {
        move |input, output| {
            // In arrival order (`for_each_stamp` sorts containers by time, unstably):
            // a user's events must stay in the order they were read.
            input.for_each(|cap, batch| {
                let mut session = output.session(&cap);
                Stats::add(&stats.events_read, batch.len() as u64);
                for msg in batch.drain(..) {
                    match decoder.decode(&msg) {
                        Ok(ev) => session.give(ev),
                        Err(e) => {
                            Stats::add(&stats.invalid, 1);
                            if let Some(held_back) = limiter.allow() {
                                let preview = String::from_utf8_lossy(&msg[..msg.len().min(120)]);
                                tracing::warn!(
                                    reason = e.reason(),
                                    held_back,
                                    "invalid message skipped: {e}; message starts {preview:?}"
                                );
                            }
                        }
                    }
                }
            });
        }
    })
}
