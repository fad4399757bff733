//! The event-trigger job: the whole graph in one place, and the loop that runs it.
//!
//! ```text
//! source -> decode -> exchange(user_id) + user state + filter -> actions -> probe
//!                  restored checkpoint -> exchange(user_id) -^
//! ```

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::vec::{Broadcast, Input as _};
use timely::dataflow::operators::{Exchange, Inspect, Probe, ToStream};

use crate::actions::{Action, Actions, NamedAction, run_actions};
use crate::checkpoint::manifest::find_latest;
use crate::checkpoint::{CheckpointConfig, Ending, Restore};
use crate::config::{KafkaSettings, Settings, SourceType};
use crate::counters::{Counters, Counts, Summary};
use crate::dead_letter::DeadLetters;
use crate::filter::reload::{FilterVersions, Filters, Version};
use crate::filter::samples::Samples;
use crate::filter::{Filter, FilterLimits};
use crate::metrics::WorkerMetrics;
use crate::model::Time;
use crate::operators::backpressure::{Backlog, Gate};
use crate::operators::decode::decode;
use crate::operators::restore::restore_source;
use crate::operators::user_state::{UserStateConfig, user_state};
use crate::profile_api::ProfileSource;
use crate::shutdown::StopFlag;
use crate::sources::file::file_source;
use crate::sources::kafka::{
    Finished, KafkaReader, Plan, SharedReader, SourceCheckpoints, finished_beacon, kafka_source,
};
use crate::sources::replay::ReplayFrom;
use crate::store::Backend;
use crate::wire::Decoder;

/// Events that may wait for look-ups, per look-up slot, before the source pauses.
const PENDING_PER_LOOKUP: usize = 64;
/// Events that may wait for a webhook slot, per slot, before the source pauses.
const QUEUED_PER_DELIVERY: usize = 4;

/// Where events come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A JSONL file, a pipe, or standard input (`-`): read to its end, at most
    /// `max_per_s` lines a second when given.
    File {
        path: PathBuf,
        max_per_s: Option<f64>,
    },
    /// A Kafka topic with this many partitions; `bounded` reads to the end of each
    /// partition and finishes, otherwise the job runs until stopped.
    Kafka {
        settings: KafkaSettings,
        partitions: i32,
        bounded: bool,
        /// Where a replay starts (`run --from-offset/--from-timestamp`).
        replay: Option<ReplayFrom>,
        /// Offsets go to the consumer group (not in a dry run).
        commit: bool,
    },
}

/// Everything a worker needs, prepared once per process before the workers start, so
/// that bad settings fail before anything runs.
#[derive(Clone)]
pub struct Prepared {
    pub input: Input,
    pub profiles: ProfileSource,
    pub actions: Actions,
    pub script: String,
    pub script_origin: String,
    pub limits: FilterLimits,
    /// Later versions of the script (hot reload), published by `filter::reload::watch`.
    pub filter_versions: FilterVersions,
    pub state: UserStateConfig,
    /// Checkpoints to take (Kafka sources only: a file is read whole each run).
    pub checkpoints: Option<CheckpointConfig>,
    /// The checkpoint to start from, if any.
    pub restore: Option<Arc<Restore>>,
    /// Longer messages are skipped as invalid, unparsed.
    pub max_message_bytes: usize,
    /// Mistyped values make messages invalid instead of being coerced.
    pub strict_types: bool,
    /// Where the workers keep their users.
    pub backend: Backend,
    /// Once set, the sources stop reading and the run finishes its work in flight.
    pub stop: StopFlag,
    /// Where invalid messages and failed deliveries go, if anywhere.
    pub dead_letters: Option<DeadLetters>,
    /// The rule tester's first errors and passing events (`Prepared::test_rule`).
    pub samples: Option<Samples>,
}

impl Prepared {
    /// `bounded` makes a Kafka source finish at the end of its partitions (a file
    /// source always finishes at its end).
    pub fn new(settings: &Settings, bounded: bool) -> anyhow::Result<Prepared> {
        let limits = FilterLimits {
            max_operations: settings.filter.max_operations,
        };
        let script_path = &settings.filter.script_path;
        let script = Filter::read(script_path)?;
        let script_origin = script_path.display().to_string();
        // Compiled and checked here once so a broken script fails the start with file and
        // line; each worker compiles its own copy (rhai's Engine is not `Send`).
        check_rule(&script, &script_origin, &limits)?;
        let profiles = ProfileSource::from_settings(&settings.profile_api)?;
        let dead_letters = match (&settings.dead_letter.path, &settings.dead_letter.topic) {
            (Some(path), _) => Some(DeadLetters::open(path)?),
            (None, Some(topic)) => Some(DeadLetters::kafka(&settings.kafka, topic)?),
            (None, None) => None,
        };
        let actions = Actions::from_settings(&settings.actions, dead_letters.clone())
            .map_err(|e| anyhow!(e))?;
        for (i, a) in actions.0.iter().enumerate() {
            if let Some(f) = &a.filter {
                check_rule(f, &format!("actions[{i}].filter"), &limits)?;
            }
        }
        let input = match settings.source.kind {
            SourceType::File => {
                let path = settings
                    .source
                    .path
                    .clone()
                    .ok_or_else(|| anyhow!("source.path: required when source.type is file"))?;
                if path.as_os_str() != "-" && !path.exists() {
                    bail!("source.path: {}: no such file", path.display());
                }
                Input::File {
                    path,
                    max_per_s: settings.source.max_events_per_second,
                }
            }
            SourceType::Kafka => {
                let partitions = crate::kafka_client::topic_partitions(&settings.kafka)?;
                Input::Kafka {
                    settings: settings.kafka.clone(),
                    partitions,
                    bounded,
                    replay: None,
                    commit: true,
                }
            }
        };
        let checkpoints = match (&input, settings.engine.checkpoint_interval_ms) {
            (Input::Kafka { .. }, interval) if interval > 0 => Some(CheckpointConfig {
                dir: settings.engine.checkpoint_dir.clone(),
                interval_ms: interval,
                retained: settings.engine.checkpoints_retained,
                restored_epoch: 0,
            }),
            _ => None,
        };
        let restore = checkpoints
            .as_ref()
            .and_then(|c| find_latest(&c.dir))
            .map(|r| {
                tracing::info!(
                    epoch = r.manifest.epoch,
                    users = r.manifest.users(),
                    workers = r.manifest.workers,
                    offsets = ?r.manifest.offsets,
                    dir = %r.dir.display(),
                    "restoring the latest checkpoint"
                );
                Arc::new(r)
            });
        let mut checkpoints = checkpoints;
        if let (Some(c), Some(r)) = (&mut checkpoints, &restore) {
            c.restored_epoch = r.manifest.epoch;
        }
        if let (Some(r), Input::Kafka { settings: k, .. }) = (&restore, &input)
            && (r.manifest.topic != k.topic || r.manifest.group != k.consumer_group_id)
        {
            bail!(
                "engine.checkpoint-dir: {} holds checkpoints of topic `{}` for group `{}`, \
                 not of `{}` for `{}`: give each job its own directory",
                settings.engine.checkpoint_dir.display(),
                r.manifest.topic,
                r.manifest.group,
                k.topic,
                k.consumer_group_id
            );
        }
        let backend = settings.engine.backend();
        backend.check()?;
        Ok(Prepared {
            input,
            backend,
            checkpoints,
            restore,
            max_message_bytes: settings.kafka.max_message_bytes,
            strict_types: settings.source.strict_types,
            profiles,
            actions,
            script,
            script_origin,
            limits,
            filter_versions: FilterVersions::default(),
            state: UserStateConfig {
                ttl_ms: settings.engine.state_ttl_ms(),
                max_history: settings.state.max_history,
                max_in_flight: settings.profile_api.max_in_flight,
                min_refetch_ms: settings.profile_api.min_refetch_interval_ms,
            },
            stop: StopFlag::default(),
            dead_letters,
            samples: None,
        })
    }
}

/// Compiles and checks a rule (`Filter::compile_checked`): names that do not exist fail
/// the start; errors on the sample states are logged as warnings.
fn check_rule(script: &str, origin: &str, limits: &FilterLimits) -> anyhow::Result<()> {
    let (_, warnings) = Filter::compile_checked(script, origin, limits)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(())
}

impl Prepared {
    /// Makes this run a replay from `from`, with state starting empty (the checkpoint is
    /// not restored: its state is later than the replay's start); a `dry_run` prints
    /// what would be triggered instead of acting, and writes nothing: no checkpoint, no
    /// group offsets, no dead letters. A file source can have a dry run, not a replay.
    pub fn replay(&mut self, from: Option<ReplayFrom>, dry_run: bool) -> anyhow::Result<()> {
        match &mut self.input {
            Input::Kafka { replay, .. } => {
                if let Some(from) = from {
                    if let Some(r) = self.restore.take() {
                        tracing::info!(
                            epoch = r.manifest.epoch,
                            "replay: checkpoint not restored, state starts empty"
                        );
                    }
                    *replay = Some(from);
                }
            }
            // A file is read whole every run: there is nothing to replay from.
            Input::File { .. } if from.is_some() => {
                bail!("--from-offset and --from-timestamp read a Kafka source")
            }
            Input::File { .. } => {}
        }
        if dry_run {
            if let Input::Kafka { commit, .. } = &mut self.input {
                *commit = false;
            }
            self.checkpoints = None;
            self.dead_letters = None;
            self.actions = Actions::debug();
            tracing::info!(
                "dry run: triggered events are printed, nothing is acted on or committed"
            );
        }
        Ok(())
    }

    /// Makes this run the rule tester's (`validate --events`): each action becomes a
    /// debug print with its own filter, so that the rule and the actions' filters are
    /// judged and counted as in a real run while nothing is called, committed or
    /// written; the first `keep` script errors and passing events are kept.
    pub fn test_rule(&mut self, keep: usize) -> Samples {
        self.checkpoints = None;
        self.dead_letters = None;
        if let Input::Kafka { commit, .. } = &mut self.input {
            *commit = false;
        }
        let debug = |a: &NamedAction| NamedAction {
            name: a.name.clone(),
            action: Action::Debug { pretty: false },
            filter: a.filter.clone(),
        };
        self.actions = Actions(self.actions.0.iter().map(debug).collect());
        let samples = Samples::new(keep);
        self.samples = Some(samples.clone());
        samples
    }
}

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
        let filter =
            Filter::compile(&p.script, &p.script_origin, &p.limits).map_err(|e| e.to_string())?;
        let per_action = p
            .actions
            .0
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.filter
                    .as_ref()
                    .map(|f| Filter::compile(f, &format!("actions[{i}].filter"), &p.limits))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let filters = Filters::new(
            filter,
            p.filter_versions.clone(),
            p.script_origin.clone(),
            p.limits.clone(),
        )
        .with_actions(if per_action.iter().any(Option::is_some) {
            per_action
        } else {
            Vec::new()
        })
        .with_samples(p.samples.clone());
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
            let triggered = user_state(
                events,
                restored,
                p.state.clone(),
                p.checkpoints.clone().map(|c| (c, ending)),
                &p.profiles,
                runtime.clone(),
                filters,
                store,
                lookups,
                stats.clone(),
            );
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
