//! The event-trigger job: the whole graph in one place, and the loop that runs it.
//!
//! ```text
//! source -> exchange(user's worker) -> decode -> exchange(user_id) + user state + filter
//!                                      restored checkpoint -> exchange(user_id) -^
//!   -> actions -> probe
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use timely::dataflow::operators::vec::{Broadcast, Input as _};
use timely::dataflow::operators::{Exchange, Inspect, Probe, ToStream};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

use crate::actions::{Action, run_actions};
use crate::checkpoint::cluster::{ClusterCheckError, Marker, Sighting, unseen, verdict};
use crate::checkpoint::{CheckpointConfig, Coordinator};
use crate::counters::{Counters, Counts, Summary};
use crate::filter::FilterError;
use crate::filter::reload::{Filters, Version};
use crate::metrics::WorkerMetrics;
use crate::model::Time;
use crate::operators::backpressure::{Backlog, Gate, PerCall, Trail};
use crate::operators::decode::decode;
use crate::operators::restore::restore_source;
use crate::operators::user_state::{UserStateSettings, user_state};
use crate::profile_api::{ProfileSource, REQUESTS_PER_LOOKUP};
use crate::shutdown::{Lifecycle, StopFlag};
use crate::sources::driver::{BATCH_BYTES, Reader, SharedSource, Source, drive, finished_beacon};
use crate::sources::file::FileReader;
use crate::sources::kafka::{Assignment, KafkaReader, Plan};
use crate::sources::router::{Place, Router};
use crate::store::{StateError, Store};
use crate::wire::Decoder;

/// Events that may wait for look-ups, per look-up slot, before the source pauses.
const PENDING_PER_LOOKUP: usize = 64;
/// Calls that may be under way or wait, per webhook slot, before the source pauses:
/// one under way and four waiting.
const CALLS_PER_DELIVERY: usize = 5;
/// How far (ms) the events' arrival at their users' workers may trail what the sources
/// emitted before they pause: at the job's pace of up to ~1M events/s, some 20,000
/// messages on their way between workers.
const MAX_TRAIL_MS: Time = 20;
/// The run loop parks at most this long, so the metrics stay fresh while nothing
/// happens.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

pub use super::prepared::{Input, Prepared};

/// Why a worker could not run, or its input not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    State(#[from] StateError),
    /// Shown with its cause (`{:#}`) as `kafka: cannot start the consumer: <cause>`.
    #[error("kafka: cannot start the consumer")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the input could not be read to its end (see the log)")]
    InputFailed,
    #[error(transparent)]
    Cluster(#[from] ClusterCheckError),
}

/// Runs the job to the end of its input (forever for an unbounded Kafka source) on the
/// cluster `config` describes. Returns the summary, summed over all workers, in the
/// process that hosts worker 0.
pub fn run(
    prepared: Prepared,
    config: timely::Config,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Option<Summary>> {
    let started = Instant::now();
    let guards = timely::execute(config, move |worker| {
        run_worker(worker, &prepared, &runtime, started)
    })
    .map_err(|e| anyhow!("cannot start the workers: {e}"))?;
    let mut summary = None;
    for result in guards.join() {
        match result {
            Ok(Ok(s)) => summary = summary.or(s),
            Ok(Err(e)) => return Err(e.into()),
            Err(panic) => return Err(anyhow!("a worker failed: {panic}")),
        }
    }
    Ok(summary)
}

/// One worker's run: build its plan, build the graph, step until done.
fn run_worker(
    worker: &mut Worker,
    p: &Prepared,
    runtime: &tokio::runtime::Handle,
    started: Instant,
) -> Result<Option<Summary>, WorkerError> {
    p.stop.workers_started();
    if let Some(c) = p.checkpoints.as_ref().filter(|_| p.processes > 1) {
        check_shared_checkpoints(worker, p, c)?;
    }
    let stats = Rc::new(Counters::default());
    let life = Lifecycle::new(p.stop.clone());
    let plan = match WorkerPlan::build(p, worker.index(), worker.peers()) {
        Ok(plan) => plan,
        Err(e) if worker.peers() > 1 => start_failed(e),
        Err(e) => return Err(e),
    };
    let source = plan.source.clone();
    let probe = build_graph(worker, p, plan, &life, &stats, runtime);
    step_until_done(worker, p, &probe, &stats);
    source.borrow_mut().finish(&probe);
    let elapsed_s = started.elapsed().as_secs_f64();
    if life.failed() {
        return Err(WorkerError::InputFailed);
    }
    let final_checkpoint_error = source.borrow().final_checkpoint_error();
    Ok(
        sum_on_worker_zero(worker, stats.counts()).map(|counts| Summary {
            counts,
            elapsed_s,
            final_checkpoint_error,
        }),
    )
}

/// Ends the process on a worker that could not start while others did (a file where
/// its database should be, say): they would wait for its dataflow for ever. Printed as
/// `main` prints an error that stops a run from starting, with the same exit code (2).
fn start_failed(e: WorkerError) -> ! {
    crate::logging::report_error(&e.into());
    crate::shutdown::exit_now(2)
}

/// Whether worker `index` (of `peers` in all) is its process's first: a process's
/// workers are numbered together.
fn first_of_process(index: usize, peers: usize, p: &Prepared) -> bool {
    index.is_multiple_of(peers / p.processes.max(1))
}

/// What a worker builds its graph of: its filters, its store, its source.
struct WorkerPlan {
    filters: Filters,
    store: Store,
    source: SharedSource,
}

impl WorkerPlan {
    fn build(p: &Prepared, index: usize, peers: usize) -> Result<WorkerPlan, WorkerError> {
        if first_of_process(index, peers, p) {
            p.backend.remove_unused(peers);
        }
        Ok(WorkerPlan {
            filters: p.compile_filters()?,
            store: p.backend.open(index)?,
            source: Source::shared(
                open_reader(p, index, peers)?,
                p.checkpoints
                    .clone()
                    .map(|c| Coordinator::new(c, index, peers)),
            ),
        })
    }
}

/// This worker's reader of the input, where the restored checkpoint left it.
fn open_reader(p: &Prepared, index: usize, peers: usize) -> Result<Box<dyn Reader>, WorkerError> {
    let restore = p.restore.as_ref().map(|r| &r.manifest);
    Ok(match &p.input {
        Input::Kafka {
            settings,
            partitions,
            bounded,
            replay,
            commit,
        } => Box::new(KafkaReader::open(
            settings,
            Assignment {
                partition_count: *partitions,
                index,
                peers,
                bounded: *bounded,
            },
            Plan {
                restore: restore.map(|m| &m.offsets),
                replay: replay.as_ref(),
                commit: *commit,
            },
        )?),
        Input::File {
            path, max_per_s, ..
        } => {
            let start = restore
                .and_then(|m| m.file.as_ref())
                .map_or(0, |f| f.offset);
            Box::new(FileReader::open(path.clone(), index, start, *max_per_s))
        }
    })
}

/// Bounds on what waits for the outside world, past which the source pauses: events
/// waiting for look-ups, and webhook calls waiting for a slot. Each follows its
/// service's calls at once now.
fn backlogs(p: &Prepared) -> (Backlog, Backlog, Gate) {
    let mut lookups = Backlog::new(p.state.max_in_flight * PENDING_PER_LOOKUP);
    if let ProfileSource::Http(api) = &p.profiles {
        lookups = lookups.following(vec![PerCall {
            calls: api.calls().clone(),
            registered: p.state.max_in_flight * REQUESTS_PER_LOOKUP,
            calls_per_unit: REQUESTS_PER_LOOKUP,
            per_unit: PENDING_PER_LOOKUP,
        }]);
    }
    let webhooks: Vec<PerCall> = (p.actions.0.iter())
        .filter_map(|a| match &a.action {
            Action::Webhook {
                client,
                max_in_flight,
                ..
            } => Some(PerCall {
                calls: client.calls().clone(),
                registered: *max_in_flight,
                calls_per_unit: 1,
                per_unit: CALLS_PER_DELIVERY,
            }),
            Action::Debug { .. } => None,
        })
        .collect();
    let deliveries =
        Backlog::new(p.actions.max_in_flight() * CALLS_PER_DELIVERY).following(webhooks);
    let gate = Gate::new(vec![lookups.clone(), deliveries.clone()]);
    (lookups, deliveries, gate)
}

/// The job's graph; returns the probe after the actions, which passes a time once every
/// action for it is done: it ends bounded runs, and lets sources commit and
/// checkpoints complete only for finished events.
fn build_graph(
    worker: &mut Worker,
    p: &Prepared,
    plan: WorkerPlan,
    life: &Lifecycle,
    stats: &Rc<Counters>,
    runtime: &tokio::runtime::Handle,
) -> ProbeHandle<Time> {
    let (lookups, deliveries, gate) = backlogs(p);
    let trail = Trail::new(MAX_TRAIL_MS);
    let gate = gate.with_trail(trail.clone());
    let probe = ProbeHandle::new();
    let name = match p.input {
        Input::File { .. } => "FileSource",
        Input::Kafka { .. } => "KafkaSource",
    };
    worker.dataflow::<Time, _, _>(|scope| {
        finished_beacon(scope, life.clone());
        let decoder = || Decoder::with_limit(p.max_message_bytes).strict_types(p.strict_types);
        let place = Place {
            index: scope.index(),
            peers: scope.peers(),
            per_process: scope.peers() / p.processes.max(1),
        };
        let router = Router::new(place, decoder(), BATCH_BYTES);
        let messages = drive(
            scope,
            name,
            plan.source,
            router,
            probe.clone(),
            gate,
            life.clone(),
        )
        .probe_with(trail.sourced());
        let events = decode(messages, decoder(), p.dead_letters.clone(), stats.clone());
        let restored = restore_source(scope, p.restore.clone());
        let settings = UserStateSettings {
            config: p.state.clone(),
            checkpoints: p.checkpoints.clone().map(|c| (c, life.ending())),
            profiles: p.profiles.clone(),
            runtime: runtime.clone(),
            filters: plan.filters,
            store: plan.store,
            backlog: lookups,
            counters: stats.clone(),
            stop: p.stop.clone(),
            arrived: Some(trail.arrived().clone()),
        };
        let triggered = user_state(events, restored, settings);
        run_actions(
            triggered,
            p.actions.clone(),
            runtime.clone(),
            deliveries,
            stats.clone(),
        )
        .probe_with(&probe);
    });
    probe
}

/// Steps the worker until `probe` is done, broadcasting new filter versions from worker
/// 0 and publishing the metrics.
fn step_until_done(worker: &mut Worker, p: &Prepared, probe: &ProbeHandle<Time>, stats: &Counters) {
    // New filter versions, from worker 0 (process 0 watches the file) to every worker.
    // `adopt` takes only the next number, so they must arrive in order: `inspect` sorts
    // what it takes at once by time, and all of them are sent at one time (the input is
    // never advanced): the standard library's sort finds them already in order and
    // leaves them as they came.
    let versions = p.filter_versions.clone();
    let mut reloads = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<Version>();
        stream
            .broadcast()
            .inspect(move |v: &Version| versions.adopt(v.clone()));
        input
    });
    let mut stops = StopBroadcast::build(worker, p);
    let mut broadcast = 0;
    let mut metrics = WorkerMetrics::new(worker.index());
    let mut published = Instant::now();
    while !probe.done() {
        if worker.index() == 0 {
            for v in p.filter_versions.after(broadcast) {
                broadcast = v.number;
                reloads.send(v);
            }
            reloads.flush();
        }
        if let Some(stops) = &mut stops {
            stops.send_once(&p.stop);
        }
        worker.step_or_park(Some(PUBLISH_EVERY));
        if published.elapsed() >= PUBLISH_EVERY {
            metrics.publish(stats);
            published = Instant::now();
        }
    }
    drop(reloads);
    drop(stops);
    metrics.publish(stats);
}

/// A stop asked of one process of a cluster (SIGTERM to one host, a rolling restart)
/// stops every process: the cluster cannot run on without it, and its final checkpoint
/// needs every worker's part (else the stopped process would wait for the others, which
/// read on, until its shutdown timeout, and exit 1 without a final checkpoint, its peers
/// failing on the lost connection). Each process's first worker broadcasts its
/// process's stop time, once; every worker sets its process's flag to it.
struct StopBroadcast {
    input: InputHandleVec<u64, Time>,
    sends: bool,
    sent: bool,
}

impl StopBroadcast {
    /// `None` for a single process (its workers share its flag).
    fn build(worker: &mut Worker, p: &Prepared) -> Option<StopBroadcast> {
        if p.processes <= 1 {
            return None;
        }
        let flag = p.stop.clone();
        let index = worker.index();
        let input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Time>();
            stream.broadcast().inspect(move |at: &Time| {
                if !flag.is_set() {
                    tracing::info!(
                        worker = index,
                        "another process of the cluster was asked to stop: stopping too"
                    );
                }
                flag.set_at(*at);
            });
            input
        });
        Some(StopBroadcast {
            input,
            sends: first_of_process(index, worker.peers(), p),
            sent: false,
        })
    }

    fn send_once(&mut self, stop: &StopFlag) {
        if self.sends
            && !self.sent
            && let Some(at) = stop.stopped_at()
        {
            self.input.send(at);
            self.input.flush();
            self.sent = true;
        }
    }
}

/// A cluster's processes share their checkpoint directory and restore one checkpoint
/// from it, or every worker fails alike (`checkpoint::cluster`): process 0 leaves a
/// marker there, every worker looks for it and replies beside it, process 0 looks for
/// the replies, and every worker judges what all found.
fn check_shared_checkpoints(
    worker: &mut Worker,
    p: &Prepared,
    c: &CheckpointConfig,
) -> Result<(), ClusterCheckError> {
    let index = worker.index();
    let marker = (index == 0).then(|| Marker::leave(&c.dir));
    let marker = share_with_all(worker, marker.into_iter().collect())
        .pop()
        .expect("worker 0 sends its marker to every worker");
    let restores = p.restore.as_ref().map(|r| r.manifest.epoch);
    let mine = Sighting::of(index, &marker, &c.dir, restores, c.floor_epoch);
    let found = share_with_all(worker, vec![mine]);
    let missed = match index {
        0 => unseen(&marker, &c.dir, &found),
        _ => Vec::new(),
    };
    let missed = share_with_all(worker, missed);
    if index == 0 {
        marker.remove(&c.dir, worker.peers());
    }
    verdict(found, &missed, worker.peers() / p.processes)
}

/// Sends `items` from this worker to every worker; returns what all workers sent.
fn share_with_all<T: timely::ExchangeData + Clone>(worker: &mut Worker, items: Vec<T>) -> Vec<T> {
    let got = Rc::new(RefCell::new(Vec::new()));
    let sink = got.clone();
    let probe = worker.dataflow::<u64, _, _>(|scope| {
        items
            .to_stream(scope)
            .container::<Vec<_>>()
            .broadcast()
            .inspect(move |x: &T| sink.borrow_mut().push(x.clone()))
            .probe()
            .0
    });
    while !probe.done() {
        worker.step_or_park(None);
    }
    got.take()
}

/// Sends every worker's counts to worker 0 (in whichever process) and sums them there.
fn sum_on_worker_zero(worker: &mut Worker, counts: Counts) -> Option<Counts> {
    let total = Rc::new(RefCell::new(Counts::default()));
    let sink = total.clone();
    let probe = worker.dataflow::<u64, _, _>(|scope| {
        vec![counts]
            .to_stream(scope)
            .container::<Vec<_>>()
            .exchange(|_| 0)
            .inspect(move |c| *sink.borrow_mut() += *c)
            .probe()
            .0
    });
    while !probe.done() {
        worker.step_or_park(None);
    }
    (worker.index() == 0).then(|| *total.borrow())
}
