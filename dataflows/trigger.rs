//! The event-trigger job: the whole graph in one place, and the loop that runs it.
//!
//! ```text
//! source -> decode -> exchange(user_id) + user state + filter -> actions -> probe
//!                  restored checkpoint -> exchange(user_id) -^
//! ```

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::vec::{Broadcast, Input as _};
use timely::dataflow::operators::{Exchange, Inspect, Probe, ToStream};

use crate::actions::run_actions;
use crate::checkpoint::Ending;
use crate::counters::{Counters, Counts, Summary};
use crate::filter::reload::Version;
use crate::metrics::WorkerMetrics;
use crate::model::Time;
use crate::operators::backpressure::{Backlog, Gate};
use crate::operators::decode::decode;
use crate::operators::restore::restore_source;
use crate::operators::user_state::{UserStateSettings, user_state};
use crate::sources::file::file_source;
use crate::sources::kafka::{
    Finished, KafkaReader, Plan, SharedReader, SourceCheckpoints, finished_beacon, kafka_source,
};
use crate::wire::Decoder;

/// Events that may wait for look-ups, per look-up slot, before the source pauses.
const PENDING_PER_LOOKUP: usize = 64;
/// Events that may wait for a webhook slot, per slot, before the source pauses.
const QUEUED_PER_DELIVERY: usize = 4;

pub use super::prepared::{Input, Prepared};

/// Runs the job to the end of its input (forever for an unbounded Kafka source) on the cluster `config` describes. Returns the
/// summary, summed over all workers, in the process that hosts worker 0.
pub fn run(
    prepared: Prepared,
    config: timely::Config,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Option<Summary>> {
    let started = Instant::now();
    let guards = timely::execute(config, move |worker| -> Result<Option<Summary>, String> {
        let stats = Rc::new(Counters::default());
        let failed = Rc::new(Cell::new(false));
        let p = prepared.clone();
        let filters = p.compile_filters().map_err(|e| e.to_string())?;
        let store = p.backend.open(worker.index()).map_err(|e| e.to_string())?;
        let kafka: SharedReader = Rc::new(RefCell::new(match &p.input {
            Input::Kafka {
                settings,
                partitions,
                bounded,
                replay,
                commit,
            } => Some(
                KafkaReader::open(
                    settings,
                    *partitions,
                    worker.index(),
                    worker.peers(),
                    *bounded,
                    Plan {
                        restore: p.restore.as_ref().map(|r| &r.manifest.offsets),
                        replay: replay.as_ref(),
                        commit: *commit,
                    },
                    p.checkpoints
                        .clone()
                        .map(|c| SourceCheckpoints::new(c, worker.index(), worker.peers())),
                )
                .map_err(|e| format!("kafka: cannot start the consumer: {e}"))?,
            ),
            Input::File { .. } => None,
        }));

        // Bounds on what waits for the outside world; past them the source pauses.
        let lookups = Backlog::new(p.state.max_in_flight * PENDING_PER_LOOKUP);
        let deliveries = Backlog::new(p.actions.max_in_flight() * QUEUED_PER_DELIVERY);
        let gate = Gate::new(vec![lookups.clone(), deliveries.clone()]);
        // Passes a time once every action for it is done: ends bounded runs, and lets
        // the Kafka source commit offsets only for finished events.
        let probe = ProbeHandle::new();

        worker.dataflow::<Time, _, _>(|scope| {
            let ending = Ending::default();
            let messages = match &p.input {
                Input::File { path, max_per_s } => file_source(
                    scope,
                    path.clone(),
                    *max_per_s,
                    gate,
                    p.stop.clone(),
                    failed.clone(),
                ),
                Input::Kafka { .. } => {
                    let finished = Finished {
                        ending: ending.clone(),
                        ..Finished::default()
                    };
                    finished_beacon(scope, finished.clone());
                    kafka_source(
                        scope,
                        kafka.clone(),
                        probe.clone(),
                        gate,
                        p.stop.clone(),
                        finished,
                    )
                }
            };
            let events = decode(
                messages,
                Decoder::with_limit(p.max_message_bytes).strict_types(p.strict_types),
                p.dead_letters.clone(),
                stats.clone(),
            );
            let restored = restore_source(scope, p.restore.clone());
            let settings = UserStateSettings {
                config: p.state.clone(),
                checkpoints: p.checkpoints.clone().map(|c| (c, ending)),
                profiles: p.profiles.clone(),
                runtime: runtime.clone(),
                filters,
                store,
                backlog: lookups,
                counters: stats.clone(),
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
        // New filter versions, from worker 0 (process 0 watches the file) to every worker.
        let versions = p.filter_versions.clone();
        let mut reloads = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Version>();
            stream
                .broadcast()
                .inspect(move |v: &Version| versions.adopt(v.clone()));
            input
        });
        let mut broadcast = 0;
        // Parked at most this long, so the metrics stay fresh while nothing happens.
        const PUBLISH_EVERY: Duration = Duration::from_secs(1);
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
            worker.step_or_park(Some(PUBLISH_EVERY));
            if published.elapsed() >= PUBLISH_EVERY {
                metrics.publish(&stats);
                published = Instant::now();
            }
        }
        drop(reloads);
        metrics.publish(&stats);
        // Everything is done: the last offsets can be committed.
        if let Some(reader) = kafka.borrow_mut().as_mut() {
            reader.settle(&probe);
            reader.commit(rdkafka::consumer::CommitMode::Sync);
        }
        let elapsed_s = started.elapsed().as_secs_f64();
        if failed.get() {
            return Err("the input could not be read to its end (see the log)".into());
        }
        let final_checkpoint_error = kafka
            .borrow()
            .as_ref()
            .and_then(KafkaReader::final_checkpoint_error);
        Ok(
            sum_on_worker_zero(worker, stats.counts()).map(|counts| Summary {
                counts,
                elapsed_s,
                final_checkpoint_error,
            }),
        )
    })
    .map_err(|e| anyhow!("cannot start the workers: {e}"))?;

    let mut summary = None;
    for result in guards.join() {
        match result {
            Ok(Ok(s)) => summary = summary.or(s),
            Ok(Err(e)) => bail!(e),
            Err(panic) => bail!("a worker failed: {panic}"),
        }
    }
    Ok(summary)
}

/// Sends every worker's counts to worker 0 (in whichever process) and sums them there.
fn sum_on_worker_zero(worker: &mut timely::worker::Worker, counts: Counts) -> Option<Counts> {
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
