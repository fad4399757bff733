//! What happens to an event that passed the filter: a debug print, or a webhook call.
//! Webhook calls that fail transiently are tried again with backoff; a delivery that
//! still fails is logged, counted, and written to the dead-letter file if one is set;
//! the job goes on.

mod payload;
mod webhook;

pub use payload::Payload;
pub use webhook::{Delivery, DeliveryError, WebhookClient, signature};

use std::collections::VecDeque;
use std::rc::Rc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::config::ActionsSettings;
use crate::dead_letter::{DeadLetter, DeadLetters, Kind};
use crate::log_limit::LogLimiter;
use crate::model::{EnrichedEvent, Time};
use crate::operators::async_bridge::AsyncBridge;
use crate::operators::backpressure::Backlog;
use crate::operators::held::HeldTimes;
use crate::operators::now_ms;
use crate::retry::RetryPolicy;
use crate::stats::Stats;

/// The configured action, shared by the workers of a process.
#[derive(Clone)]
pub enum Action {
    Debug,
    Webhook {
        client: WebhookClient,
        max_in_flight: usize,
        dead_letters: Option<DeadLetters>,
    },
}

impl Action {
    /// Actions under way at once per worker (debug prints complete at once).
    pub fn max_in_flight(&self) -> usize {
        match self {
            Action::Debug => 1,
            Action::Webhook { max_in_flight, .. } => *max_in_flight,
        }
    }

    pub fn from_settings(
        s: &ActionsSettings,
        dead_letters: Option<DeadLetters>,
    ) -> Result<Action, String> {
        if s.debug.enabled {
            return Ok(Action::Debug);
        }
        let ms = std::time::Duration::from_millis;
        let retry = RetryPolicy {
            retries: s.webhook.retry_attempts,
            backoff: ms(s.webhook.retry_backoff_ms),
            max_wait: ms(s.webhook.retry_max_wait_ms),
        };
        let client = WebhookClient::new(
            &s.webhook.url,
            ms(s.webhook.timeout_ms),
            s.webhook.signing_secret()?,
            retry,
        )?;
        Ok(Action::Webhook {
            client,
            max_in_flight: s.webhook.max_in_flight,
            dead_letters,
        })
    }
}

/// How a webhook action ended.
struct Outcome {
    retries: u32,
    failure: Option<String>,
    /// For a failure, with a dead-letter file: whether it was written.
    dead_lettered: Option<Result<(), String>>,
}

/// Delivers `ev`; a delivery that fails for good goes to `dead_letters` (synced to disk
/// before the action counts as done) with the body it would have sent.
async fn deliver(
    client: &WebhookClient,
    ev: EnrichedEvent,
    dead_letters: Option<DeadLetters>,
) -> Outcome {
    let body = match Payload::new(&ev, now_ms()).to_json() {
        Ok(body) => bytes::Bytes::from(body),
        Err(e) => {
            return Outcome {
                retries: 0,
                failure: Some(format!("cannot serialize triggered event: {e}")),
                dead_lettered: None,
            };
        }
    };
    let event_id = ev.event.event_id.clone();
    drop(ev);
    let delivery = client.deliver(body.clone(), event_id).await;
    let Err(reason) = delivery.result else {
        return Outcome {
            retries: delivery.retries,
            failure: None,
            dead_lettered: None,
        };
    };
    let dead_lettered = match dead_letters {
        Some(dl) => {
            let letter = DeadLetter::new(Kind::WebhookFailed, reason.clone(), &body, now_ms());
            let written = tokio::task::spawn_blocking(move || dl.write(&[letter]))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            Some(written)
        }
        None => None,
    };
    Outcome {
        retries: delivery.retries,
        failure: Some(reason),
        dead_lettered,
    }
}

/// Runs `action` for every event of `triggered`. The returned stream carries no data;
/// its frontier passes a time only when every action for that time has completed.
///
/// Webhook calls run asynchronously, at most `max_in_flight` at once; events beyond that
/// wait here, and `backlog` tells the source how many.
pub fn run_actions<'s>(
    triggered: Stream<'s, Time, Vec<EnrichedEvent>>,
    action: Action,
    runtime: tokio::runtime::Handle,
    backlog: Backlog,
    stats: Rc<Stats>,
) -> Stream<'s, Time, Vec<()>> {
    let scope = triggered.scope();
    triggered.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Actions", move |_cap, info| {
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        let mut bridge: AsyncBridge<(Time, Outcome)> = AsyncBridge::new(runtime, activator);
        let mut held = HeldTimes::default();
        // Events waiting for an in-flight slot; serialized only when sent.
        let mut queued: VecDeque<(Time, EnrichedEvent)> = VecDeque::new();
        let mut fail_log = LogLimiter::default();
        move |(input, _frontier), _output| {
            // In arrival order, so a user's actions start in the order of its events.
            input.for_each(|cap, batch| {
                let Some(&time) = cap.least() else { return };
                for ev in batch.drain(..) {
                    match &action {
                        Action::Debug => match Payload::new(&ev, now_ms()).to_pretty_json() {
                            Ok(json) => {
                                tracing::info!(target: "event_trigger::action::debug", "triggered:\n{json}");
                                Stats::add(&stats.actions_ok, 1);
                            }
                            Err(e) => {
                                tracing::error!("cannot serialize triggered event: {e}");
                                Stats::add(&stats.actions_failed, 1);
                            }
                        },
                        Action::Webhook { .. } => {
                            held.hold(time, || cap.delayed(&time, 0));
                            queued.push_back((time, ev));
                        }
                    }
                }
            });
            if let Action::Webhook { client, max_in_flight, dead_letters } = &action {
                for (time, outcome) in bridge.drain() {
                    Stats::add(&stats.actions_retried, u64::from(outcome.retries));
                    match outcome.failure {
                        None => Stats::add(&stats.actions_ok, 1),
                        Some(e) => {
                            Stats::add(&stats.actions_failed, 1);
                            match outcome.dead_lettered {
                                Some(Ok(())) => Stats::add(&stats.dead_letters, 1),
                                Some(Err(dl)) => tracing::error!("failed delivery not dead-lettered: {dl}"),
                                None => {}
                            }
                            if let Some(held_back) = fail_log.allow() {
                                tracing::error!(held_back, retries = outcome.retries, "webhook call failed: {e}");
                            }
                        }
                    }
                    held.release(time);
                }
                while bridge.in_flight() < *max_in_flight {
                    let Some((time, ev)) = queued.pop_front() else { break };
                    let client = client.clone();
                    let dead_letters = dead_letters.clone();
                    bridge.spawn(async move { (time, deliver(&client, ev, dead_letters).await) });
                }
                backlog.set(queued.len());
                stats.actions_in_flight.set(bridge.in_flight() as u64);
                stats.action_backlog.set(queued.len() as u64);
            }
        }
    })
}
