//! What happens to an event that passed the filter: debug prints and webhook calls, one
//! or several actions per event (each may have a filter of its own, judged with the
//! main one in the state operator; the event carries which actions it is for).
//! Webhook calls that fail transiently are tried again with backoff; a delivery that
//! still fails is logged, counted, and written to the dead-letter file if one is set;
//! the job goes on.

mod body_json;
mod lane;
mod operator;
mod payload;
mod webhook;

pub use operator::run_actions;
pub use payload::Payload;
pub use webhook::{Delivery, DeliveryError, INGESTED_AT, WebhookClient, WebhookError, signature};

use std::sync::Arc;

use crate::clock::now_ms;
use crate::config::{ActionKind, ActionSpec, ActionsSettings};
use crate::dead_letter::{DeadLetter, DeadLetters, Kind};
use crate::model::{EnrichedEvent, Time};
use crate::retry::RetryPolicy;
use crate::small_text::SmallText;
use crate::triggers::{ActionSchedule, Schedule, Schedules};

/// One action, shared by the workers of a process.
#[derive(Clone)]
pub enum Action {
    /// Logs each event: one line of JSON, or indented (`pretty`).
    Debug { pretty: bool },
    Webhook {
        client: WebhookClient,
        max_in_flight: usize,
        ordering: crate::config::CallOrder,
        dead_letters: Option<DeadLetters>,
    },
}

impl Action {
    /// Actions under way at once per worker (debug prints complete at once).
    pub fn max_in_flight(&self) -> usize {
        match self {
            Action::Debug { .. } => 1,
            Action::Webhook { max_in_flight, .. } => *max_in_flight,
        }
    }
}

/// A configured action: its name, what it does, and the filter of its own, if any.
#[derive(Clone)]
pub struct NamedAction {
    pub name: String,
    pub action: Action,
    pub filter: Option<String>,
    /// Its caps and delay (all off unless configured).
    pub schedule: Schedule,
    /// With a delay: what cancels its pending firings.
    pub cancel_if: Option<String>,
}

/// The actions of the job, in the order configured (at most 64: an event carries which
/// it is for as bits of a `u64`).
#[derive(Clone)]
pub struct Actions(pub Vec<NamedAction>);

/// An action that cannot be built; each names its key.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Secret(#[from] crate::config::SecretError),
    #[error(transparent)]
    Webhook(#[from] Box<webhook::WebhookError>),
}

impl Action {
    /// The runnable action `spec` describes; `name` names its metrics, `at` its keys in
    /// messages (`actions.webhook`, or `actions[1]` in the list form).
    fn build(
        name: &str,
        at: &str,
        spec: &ActionSpec,
        dead_letters: Option<DeadLetters>,
    ) -> Result<Action, ActionError> {
        Ok(match spec.kind {
            ActionKind::Debug => Action::Debug {
                pretty: spec.pretty.unwrap_or(false),
            },
            ActionKind::Webhook => {
                let w = spec.webhook();
                let ms = std::time::Duration::from_millis;
                let retry = RetryPolicy {
                    retries: w.retry_attempts,
                    backoff: ms(w.retry_backoff_ms),
                    max_wait: ms(w.retry_max_wait_ms),
                };
                let client = WebhookClient::new(
                    &w.url,
                    ms(w.timeout_ms),
                    w.signing_secret_at(at)?,
                    retry,
                    w.ca_file.as_deref(),
                )
                .map_err(|e| Box::new(e.at(at)))?
                .with_concurrency(&format!("webhook:{name}"), w.concurrency)
                .for_action(name, at, dead_letters.is_some());
                Action::Webhook {
                    client,
                    max_in_flight: w.max_in_flight,
                    ordering: w.ordering,
                    dead_letters,
                }
            }
        })
    }
}

impl Actions {
    /// The configured actions, each built (and so validated) by `Action::build`.
    pub fn from_settings(
        s: &ActionsSettings,
        dead_letters: Option<DeadLetters>,
    ) -> Result<Actions, ActionError> {
        let mut out = Vec::new();
        for (i, (name, spec)) in s.specs().into_iter().enumerate() {
            let at = match s.list {
                Some(_) => format!("actions[{i}]"),
                None => "actions.webhook".to_string(),
            };
            let action = Action::build(&name, &at, &spec, dead_letters.clone())?;
            out.push(NamedAction {
                name,
                action,
                schedule: Schedule {
                    cooldown_ms: spec.cooldown.map(|d| d.0),
                    max_per_user: spec.max_per_user,
                    delay_ms: spec.delay.map(|d| d.0),
                },
                cancel_if: spec.cancel_if,
                filter: spec.filter,
            });
        }
        Ok(Actions(out))
    }

    /// Each action's own filter, in their order.
    pub fn filters(&self) -> Vec<Option<&str>> {
        self.0.iter().map(|a| a.filter.as_deref()).collect()
    }

    /// Each action's `cancel-if`, in their order.
    pub fn cancels(&self) -> Vec<Option<&str>> {
        self.0.iter().map(|a| a.cancel_if.as_deref()).collect()
    }

    /// Each action's caps and delay, in their order.
    pub fn schedules(&self) -> Schedules {
        Schedules(Arc::new(
            self.0
                .iter()
                .map(|a| ActionSchedule {
                    name: a.name.as_str().into(),
                    schedule: a.schedule.clone(),
                })
                .collect(),
        ))
    }

    /// Actions under way at once per worker, over all actions.
    pub fn max_in_flight(&self) -> usize {
        self.0.iter().map(|a| a.action.max_in_flight()).sum()
    }
}

/// The debug action: one log record per event (`triggered: {...}`), rendered only when
/// its log is on (`RUST_LOG=event_trigger::action::debug=off` makes it a discarding
/// sink). In a JSON log the event is a JSON value of the record. False if the event
/// could not be serialized.
fn print_triggered(ev: &EnrichedEvent, action: &str, pretty: bool) -> bool {
    const TARGET: &str = "event_trigger::action::debug";
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return true;
    }
    let payload = Payload::new(ev, now_ms());
    let rendered = if pretty && !crate::logging::is_json() {
        payload.to_pretty_json().map(String::into_bytes)
    } else {
        Ok(payload.to_json())
    };
    match rendered {
        Ok(json) if crate::logging::is_json() => {
            crate::logging::write_json_record(
                TARGET,
                "triggered",
                ("action", action),
                "event",
                &json,
            );
            true
        }
        Ok(json) => {
            // One line a record, as in a JSON log, unless asked for indented JSON.
            let flat = match pretty {
                true => std::borrow::Cow::Borrowed(&json[..]),
                false => crate::logging::one_line(&json),
            };
            let json = String::from_utf8_lossy(&flat);
            tracing::info!(target: TARGET, action, "triggered: {json}");
            true
        }
        Err(e) => {
            tracing::error!("cannot serialize triggered event: {e}");
            false
        }
    }
}

/// Why a failed delivery is not in the dead letters.
#[derive(Debug, thiserror::Error)]
enum NotDeadLettered {
    #[error(transparent)]
    Write(#[from] crate::dead_letter::DeadLetterError),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// How a webhook action ended.
struct Outcome {
    retries: u32,
    /// Why the call failed for good, and its event's id (for the log line).
    failure: Option<(String, Option<SmallText>)>,
    /// For a failure, with a dead-letter file: whether it was written.
    dead_lettered: Option<Result<(), NotDeadLettered>>,
}

/// Delivers `ev`; a delivery that fails for good goes to `dead_letters` (synced to disk
/// before the action counts as done) with the body it would have sent.
async fn deliver(
    client: &WebhookClient,
    name: &str,
    ev: Arc<EnrichedEvent>,
    ingested_ms: Time,
    dead_letters: Option<DeadLetters>,
) -> Outcome {
    let body = bytes::Bytes::from(Payload::new(&ev, now_ms()).to_json());
    let event_id = ev.event.event_id.clone();
    drop(ev);
    let delivery = client
        .deliver(body.clone(), event_id.as_deref(), ingested_ms)
        .await;
    let Err(reason) = delivery.result else {
        return Outcome {
            retries: delivery.retries,
            failure: None,
            dead_lettered: None,
        };
    };
    let reason = format!("{name}: {reason}");
    let dead_lettered = match dead_letters {
        Some(dl) => {
            let letter = DeadLetter::new(Kind::WebhookFailed, reason.clone(), &body, now_ms());
            let written = tokio::task::spawn_blocking(move || dl.write(&[letter])).await;
            Some(match written {
                Ok(r) => r.map_err(NotDeadLettered::from),
                Err(e) => Err(NotDeadLettered::from(e)),
            })
        }
        None => None,
    };
    Outcome {
        retries: delivery.retries,
        failure: Some((reason, event_id)),
        dead_lettered,
    }
}
