//! The actions operator: debug prints at once, webhook calls on the tokio runtime, at
//! most `max_in_flight` at once per action; the time of an event is held until every
//! action for it has ended.

use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::InputCapability;
use timely::dataflow::operators::generic::Operator;

use super::{Action, Actions, Outcome, WebhookClient, deliver, lane, print_triggered};
use crate::async_bridge::AsyncBridge;
use crate::counters::{ActionCounts, Counters};
use crate::dead_letter::DeadLetters;
use crate::log_limit::LogLimiter;
use crate::model::{EnrichedEvent, SmallText, Time};
use crate::operators::backpressure::Backlog;
use crate::operators::held::HeldTimes;

/// Runs the actions of `actions` each event of `triggered` is for. The returned stream
/// carries no data; its frontier passes a time only when every action for that time has
/// completed.
///
/// Webhook calls run asynchronously, at most `max_in_flight` at once per action; events
/// beyond that wait here, and `backlog` tells the source how many.
pub fn run_actions<'s>(
    triggered: Stream<'s, Time, Vec<EnrichedEvent>>,
    actions: Actions,
    runtime: tokio::runtime::Handle,
    backlog: Backlog,
    stats: Rc<Counters>,
) -> Stream<'s, Time, Vec<()>> {
    let scope = triggered.scope();
    triggered.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "Actions",
        move |_cap, info| {
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            let pace = scope.activator_for(info.address.clone());
            let mut runner = Runner::new(
                actions,
                AsyncBridge::new(runtime, activator),
                backlog,
                stats,
            );
            move |(input, _frontier), _output| {
                // In arrival order, so a user's actions start in the order of its events.
                input.for_each(|cap, batch| runner.take(&cap, batch));
                let came = runner.settle(Take::Ready);
                runner.start_calls();
                if came > 0 && runner.may_pace(came) {
                    runner.bridge.hold_wakeups();
                    pace.activate_after(crate::async_bridge::PACE);
                } else {
                    // Wake-ups on; what came meanwhile frees room for calls too.
                    runner.settle(Take::Drain);
                    runner.start_calls();
                }
                runner.publish();
            }
        },
    )
}

/// A webhook action of this worker: its client, and its calls (waiting, under way).
struct WebhookLane {
    index: usize,
    name: String,
    client: WebhookClient,
    dead_letters: Option<DeadLetters>,
    calls: lane::Lane,
}

/// Calls under way from which the ends of calls are taken every `async_bridge::PACE`
/// even while others wait for room (see `Runner::may_pace`).
const PACED_UNDER_WAY: usize = 128;

/// How `Runner::settle` takes the calls that ended.
enum Take {
    /// Those there, the wake-ups left as they are.
    Ready,
    /// Those there with the wake-ups back on (`AsyncBridge::drain`).
    Drain,
}

/// Whether the ends of calls may be taken every `async_bridge::PACE` (one wake-up for
/// many) rather than each as it comes: calls are under way, and an end noticed late
/// delays no call much. That holds where no call is held back by an end
/// (`none_held_back`), or many calls are under way and the ends of one look are few
/// against them (each end noticed up to `PACE` late leaves its place unused that long:
/// with `came` at most a quarter of `PACED_UNDER_WAY` or more, an eighth of the places
/// on average). Otherwise each end starts a waiting call at once: with few calls at
/// once (`max-in-flight` 4 or 16, or `per-user` ordering with a few busy users) ends
/// noticed a millisecond late cut the calls a second by two to five.
fn pace_ends(under_way: usize, came: usize, none_held_back: bool) -> bool {
    under_way > 0 && (none_held_back || (under_way >= PACED_UNDER_WAY && came * 4 <= under_way))
}

/// A finished call: its lane, its event's time and user, and how it ended.
type Ended = (usize, Time, SmallText, Outcome);

/// The operator's state on one worker.
struct Runner {
    actions: Actions,
    /// The debug actions: their index and whether they print indented.
    debug: Vec<(usize, bool)>,
    lanes: Vec<WebhookLane>,
    bridge: AsyncBridge<Ended>,
    /// The calls taken from `bridge` in one activation (kept for its room).
    ended: Vec<Ended>,
    held: HeldTimes,
    fail_log: LogLimiter,
    backlog: Backlog,
    stats: Rc<Counters>,
}

impl Runner {
    fn new(
        actions: Actions,
        bridge: AsyncBridge<Ended>,
        backlog: Backlog,
        stats: Rc<Counters>,
    ) -> Runner {
        *stats.per_action.borrow_mut() = actions
            .0
            .iter()
            .map(|a| ActionCounts {
                name: a.name.clone(),
                ..Default::default()
            })
            .collect();
        Runner {
            debug: debug_actions(&actions),
            lanes: webhook_lanes(&actions),
            actions,
            bridge,
            ended: Vec::new(),
            held: HeldTimes::default(),
            fail_log: LogLimiter::per_10s("failed webhook calls"),
            backlog,
            stats,
        }
    }

    /// Prints the debug actions' events and queues the webhook calls of `batch`.
    fn take(&mut self, cap: &InputCapability<Time>, batch: &mut Vec<EnrichedEvent>) {
        let Some(&time) = cap.least() else { return };
        for ev in batch.drain(..) {
            let targets = ev.targets;
            let wanted = |i: usize| i < 64 && targets & (1 << i) != 0;
            for &(i, pretty) in self.debug.iter().filter(|(i, _)| wanted(*i)) {
                let ok = print_triggered(&ev, &self.actions.0[i].name, pretty);
                Counters::add(
                    if ok {
                        &self.stats.actions_ok
                    } else {
                        &self.stats.actions_failed
                    },
                    1,
                );
                count(&self.stats, i, ok, 0);
            }
            if self.lanes.iter().any(|l| wanted(l.index)) {
                let ev = Arc::new(ev);
                for lane in self.lanes.iter_mut().filter(|l| wanted(l.index)) {
                    self.held.hold(time, || cap.delayed(&time, 0));
                    lane.calls.push((time, ev.clone()));
                }
            }
        }
    }

    /// Whether the ends of calls may be taken every `async_bridge::PACE` rather than as
    /// they come (`pace_ends`), `came` having just ended.
    fn may_pace(&self, came: usize) -> bool {
        // A call waiting in a lane is held back by the end of another unless the
        // receiver's permits are all taken already (then an end hands its permit on at
        // once, whenever it is noticed).
        let none_held_back = self.lanes.iter().all(|l| {
            let limiter = l.client.calls();
            l.calls.waiting() == 0 || limiter.queued() >= limiter.limit()
        });
        pace_ends(self.bridge.in_flight(), came, none_held_back)
    }

    /// Counts and logs the calls that ended, and releases their times. How many did.
    fn settle(&mut self, take: Take) -> usize {
        let mut ended = std::mem::take(&mut self.ended);
        match take {
            Take::Ready => {
                self.bridge.take_ready(|e| ended.push(e));
            }
            Take::Drain => ended.extend(self.bridge.drain()),
        }
        let came = ended.len();
        for (lane, time, user, outcome) in ended.drain(..) {
            self.lanes[lane].calls.ended(&user);
            let stats = &self.stats;
            count(
                stats,
                self.lanes[lane].index,
                outcome.failure.is_none(),
                outcome.retries,
            );
            Counters::add(&stats.actions_retried, u64::from(outcome.retries));
            match outcome.failure {
                None => Counters::add(&stats.actions_ok, 1),
                Some((e, event_id)) => {
                    Counters::add(&stats.actions_failed, 1);
                    match outcome.dead_lettered {
                        Some(Ok(())) => Counters::add(&stats.dead_letters, 1),
                        Some(Err(dl)) => {
                            tracing::error!("failed delivery not dead-lettered: {dl}")
                        }
                        None => {}
                    }
                    if self.fail_log.allow() {
                        tracing::error!(
                            retries = outcome.retries,
                            user = %user,
                            event_id = %event_id.as_ref().map_or("", |id| id.as_str()),
                            "webhook call failed: {e}"
                        );
                    }
                }
            }
            self.held.release(time);
        }
        self.ended = ended;
        came
    }

    /// Starts the calls each lane has room for.
    fn start_calls(&mut self) {
        for (at, lane) in self.lanes.iter_mut().enumerate() {
            while let Some((time, ev)) = lane.calls.next() {
                let user = ev.event.user_id.clone();
                let client = lane.client.clone();
                let name = lane.name.clone();
                let dead_letters = lane.dead_letters.clone();
                // A delayed action's event was read before its time in the dataflow.
                let read_at = ev.read_at.unwrap_or(time);
                self.bridge.spawn(async move {
                    let outcome = deliver(&client, &name, ev, read_at, dead_letters).await;
                    (at, time, user, outcome)
                });
            }
        }
    }

    /// Tells the source and the metrics how many calls wait and are under way.
    fn publish(&mut self) {
        self.fail_log.tick();
        let queued: usize = self.lanes.iter().map(|l| l.calls.waiting()).sum();
        let in_flight: usize = self.lanes.iter().map(|l| l.calls.in_flight()).sum();
        // Calls under way count too: a lane starts up to its slots (`max-in-flight`),
        // and those past the receiver's limit wait for its room all the same (found by
        // a trial: 256 a worker against a receiver of 10 calls a second, a stop of 50 s).
        self.backlog
            .set_with_came(queued + in_flight, self.held.taken()); // a hold per call queued
        self.stats.actions_in_flight.set(in_flight as u64);
        self.stats.action_backlog.set(queued as u64);
    }
}

/// Counts an action's ending in its own counts.
fn count(stats: &Counters, i: usize, ok: bool, retried: u32) {
    let mut per = stats.per_action.borrow_mut();
    if let Some(c) = per.get_mut(i) {
        c.ok += u64::from(ok);
        c.failed += u64::from(!ok);
        c.retried += u64::from(retried);
    }
}

/// The webhook actions of `actions`, each with its own queue of calls.
fn webhook_lanes(actions: &Actions) -> Vec<WebhookLane> {
    actions
        .0
        .iter()
        .enumerate()
        .filter_map(|(index, a)| match &a.action {
            Action::Webhook {
                client,
                max_in_flight,
                ordering,
                dead_letters,
            } => {
                client.calls().register(*max_in_flight);
                Some(WebhookLane {
                    index,
                    name: a.name.clone(),
                    client: client.clone(),
                    dead_letters: dead_letters.clone(),
                    calls: lane::Lane::new(*max_in_flight, *ordering),
                })
            }
            Action::Debug { .. } => None,
        })
        .collect()
}

/// The debug actions of `actions`: their index and whether they print indented.
fn debug_actions(actions: &Actions) -> Vec<(usize, bool)> {
    actions
        .0
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a.action {
            Action::Debug { pretty } => Some((i, pretty)),
            Action::Webhook { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use timely::dataflow::operators::Probe;
    use timely::dataflow::operators::vec::Input;

    use super::*;
    use crate::config::{ActionKind, ActionSpec, ActionsSettings};
    use crate::counters::Counts;
    use crate::dead_letter::DeadLetter;
    use crate::filter::FilterLimits;
    use crate::filter::reload::FilterVersions;
    use crate::filter::rules::Rules;
    use crate::http_server::{handler, reply, serve};
    use crate::model::{EnrichedView, UserState};

    /// Ends are taken every `PACE` only where that holds back no call much: never with
    /// nothing under way, nor while a call waits for room that an end would give (a few
    /// calls at once), unless many are under way and few ended.
    #[test]
    fn ends_are_paced_only_where_no_waiting_call_needs_them() {
        assert!(!pace_ends(0, 3, true), "nothing under way: each end wakes");
        assert!(pace_ends(4, 1, true), "no call held back");
        assert!(
            !pace_ends(4, 1, false),
            "max-in-flight 4, a call waits for room"
        );
        assert!(!pace_ends(16, 2, false));
        assert!(!pace_ends(PACED_UNDER_WAY - 1, 1, false));
        assert!(pace_ends(PACED_UNDER_WAY, PACED_UNDER_WAY / 4, false));
        assert!(!pace_ends(PACED_UNDER_WAY, PACED_UNDER_WAY / 4 + 1, false));
    }

    /// The calls a receiver got: path and event id.
    type Calls = Arc<Mutex<Vec<(String, String)>>>;

    /// A receiver on 127.0.0.1 that answers `/ok` with 200 and anything else with 500;
    /// returns its base URL and the paths and event ids of the calls it got.
    fn receiver(rt: &tokio::runtime::Runtime) -> (String, Calls) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        let h = handler(move |req: hyper::Request<bytes::Bytes>| {
            let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or_default();
            let id = body["event"]["event_id"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            let path = req.uri().path().to_string();
            let status = if path == "/ok" {
                hyper::StatusCode::OK
            } else {
                hyper::StatusCode::INTERNAL_SERVER_ERROR
            };
            log.lock().unwrap().push((path, id));
            async move { reply(status, "{}") }
        });
        let addr = rt
            .block_on(serve("127.0.0.1:0".parse().unwrap(), h))
            .unwrap();
        (format!("http://{addr}"), calls)
    }

    fn action(kind: ActionKind, name: &str, filter: &str) -> ActionSpec {
        ActionSpec {
            kind,
            name: Some(name.into()),
            filter: Some(filter.into()),
            ..Default::default()
        }
    }

    /// The three configured actions: a debug print of `e1`, a webhook that takes `e1`
    /// and `e3`, and one that fails for `e2` (no retries).
    fn actions(base: &str, dead_letters: DeadLetters) -> Actions {
        let ok = ActionSpec {
            url: Some(format!("{base}/ok")),
            ..action(ActionKind::Webhook, "ok", r#"event.event_id != "e2""#)
        };
        let failing = ActionSpec {
            url: Some(format!("{base}/down")),
            retry_attempts: Some(0),
            ..action(ActionKind::Webhook, "down", r#"event.event_id == "e2""#)
        };
        let settings = ActionsSettings {
            list: Some(vec![
                action(ActionKind::Debug, "print", r#"event.event_id == "e1""#),
                ok,
                failing,
            ]),
            ..Default::default()
        };
        Actions::from_settings(&settings, Some(dead_letters)).unwrap()
    }

    /// Runs `actions` on the events `ids` (targets chosen by the actions' filters) in a
    /// one-worker dataflow until their time has passed the operator.
    fn run(
        actions: Actions,
        ids: &[&str],
        rt: &tokio::runtime::Runtime,
    ) -> (Counts, Vec<ActionCounts>) {
        let limits = FilterLimits {
            max_operations: 10_000,
        };
        let filters = Rules {
            script: "true",
            origin: "rule",
            action_filters: actions.filters(),
            cancels: actions.cancels(),
            limits: &limits,
        }
        .compile(FilterVersions::default(), None)
        .unwrap();
        let state = UserState::empty(0);
        let events: Vec<EnrichedEvent> = ids
            .iter()
            .map(|id| {
                let json = format!(r#"{{"event_id": "{id}", "user_id": "u", "event_type": "x"}}"#);
                let event = crate::wire::decode(json.as_bytes()).unwrap();
                let (targets, _) = filters.targets(EnrichedView {
                    event: &event,
                    state: &state,
                });
                EnrichedEvent::snapshot(event, &state, targets)
            })
            .collect();
        let runtime = rt.handle().clone();
        timely::execute_directly(move |worker| {
            let stats = Rc::new(Counters::default());
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, stream) = scope.new_input::<EnrichedEvent>();
                let (probe, _) =
                    run_actions(stream, actions, runtime, Backlog::new(64), stats.clone()).probe();
                (input, probe)
            });
            for ev in events {
                input.send(ev);
            }
            input.advance_to(1);
            while probe.less_than(&1) {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            let per_action = stats.per_action.borrow().clone();
            (stats.counts(), per_action)
        })
    }

    #[test]
    fn each_event_goes_to_the_actions_its_filters_choose_and_a_failure_is_dead_lettered() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (base, calls) = receiver(&rt);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let dead = DeadLetters::open(&path).unwrap();
        let (c, per) = run(actions(&base, dead), &["e1", "e2", "e3"], &rt);

        let mut got = calls.lock().unwrap().clone();
        got.sort();
        let want = [("/down", "e2"), ("/ok", "e1"), ("/ok", "e3")];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(p, i)| (p.to_string(), i.to_string()))
            .collect();
        assert_eq!(got, want, "each call once, to the actions chosen");
        assert_eq!((c.actions_ok, c.actions_failed, c.dead_letters), (3, 1, 1));
        let by_action: Vec<(&str, u64, u64)> = per
            .iter()
            .map(|a| (a.name.as_str(), a.ok, a.failed))
            .collect();
        assert_eq!(by_action, [("print", 1, 0), ("ok", 2, 0), ("down", 0, 1)]);
        let letters = DeadLetters::read(&path).unwrap();
        assert_eq!(letters.len(), 1);
        let body: serde_json::Value =
            serde_json::from_slice(&DeadLetter::bytes(&letters[0])).unwrap();
        assert_eq!(
            body["event"]["event_id"], "e2",
            "the body it would have sent"
        );
    }
}
