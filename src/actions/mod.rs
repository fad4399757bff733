//! What happens to an event that passed the filter: a debug print, or a webhook call.
//! Failures are logged and counted; the job goes on.

mod payload;
mod webhook;

pub use payload::Payload;
pub use webhook::{WebhookClient, signature};

use std::collections::VecDeque;
use std::rc::Rc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::config::ActionsSettings;
use crate::log_limit::LogLimiter;
use crate::model::{EnrichedEvent, Time};
use crate::operators::async_bridge::AsyncBridge;
use crate::operators::backpressure::Backlog;
use crate::operators::held::HeldTimes;
use crate::operators::now_ms;
use crate::stats::Stats;

/// The configured action, shared by the workers of a process.
#[derive(Clone)]
pub enum Action {
    Debug,
    Webhook {
        client: WebhookClient,
        max_in_flight: usize,
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

    pub fn from_settings(s: &ActionsSettings) -> Result<Action, String> {
        if s.debug.enabled {
            return Ok(Action::Debug);
        }
        let client = WebhookClient::new(
            &s.webhook.url,
            std::time::Duration::from_millis(s.webhook.timeout_ms),
            s.webhook.signing_secret()?,
        )?;
        Ok(Action::Webhook {
            client,
            max_in_flight: s.webhook.max_in_flight,
        })
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
        let mut bridge: AsyncBridge<(Time, Result<(), String>)> = AsyncBridge::new(runtime, activator);
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
            if let Action::Webhook { client, max_in_flight } = &action {
                for (time, result) in bridge.drain() {
                    match result {
                        Ok(()) => Stats::add(&stats.actions_ok, 1),
                        Err(e) => {
                            Stats::add(&stats.actions_failed, 1);
                            if let Some(held_back) = fail_log.allow() {
                                tracing::error!(held_back, "webhook call failed: {e}");
                            }
                        }
                    }
                    held.release(time);
                }
                while bridge.in_flight() < *max_in_flight {
                    let Some((time, ev)) = queued.pop_front() else { break };
                    let client = client.clone();
                    bridge.spawn(async move {
                        let now = now_ms();
                        let body = Payload::new(&ev, now).to_json();
                        let event_id = ev.event.event_id.clone();
                        drop(ev);
                        let result = match body {
                            Ok(body) => client.post(body.into(), event_id, now).await,
                            Err(e) => Err(format!("cannot serialize triggered event: {e}")),
                        };
                        (time, result)
                    });
                }
                backlog.set(queued.len());
            }
        }
    })
}
