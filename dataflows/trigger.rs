//! The event-trigger job: the whole graph in one place, and the loop that runs it.
//!
//! ```text
//! source -> decode -> exchange(user_id) + user state + filter -> actions -> probe
//! ```

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use timely::dataflow::operators::{Exchange, Inspect, Probe, ToStream};

use crate::actions::{Action, run_actions};
use crate::config::{Settings, SourceType};
use crate::filter::{Filter, FilterLimits};
use crate::model::Time;
use crate::operators::backpressure::{Backlog, Gate};
use crate::operators::decode::decode;
use crate::operators::user_state::{UserStateConfig, user_state};
use crate::profile_api::ProfileSource;
use crate::sources::file::file_source;
use crate::stats::{Counts, Stats, Summary};

/// Events that may wait for look-ups, per look-up slot, before the source pauses.
const PENDING_PER_LOOKUP: usize = 64;
/// Events that may wait for a webhook slot, per slot, before the source pauses.
const QUEUED_PER_DELIVERY: usize = 4;

/// Everything a worker needs, prepared once per process before the workers start, so
/// that bad settings fail before anything runs.
#[derive(Clone)]
pub struct Prepared {
    pub input: PathBuf,
    pub profiles: ProfileSource,
    pub action: Action,
    pub script: String,
    pub script_origin: String,
    pub limits: FilterLimits,
    pub state: UserStateConfig,
}

impl Prepared {
    pub fn new(settings: &Settings) -> anyhow::Result<Prepared> {
        let limits = FilterLimits {
            max_operations: settings.filter.max_operations,
        };
        let script_path = &settings.filter.script_path;
        // Compiled here once so a broken script fails the start with file and line;
        // each worker compiles its own copy (rhai's Engine is not `Send`).
        Filter::from_file(script_path, &limits)?;
        let script = std::fs::read_to_string(script_path)
            .with_context(|| format!("filter.script-path: {}", script_path.display()))?;
        let profiles = ProfileSource::from_settings(&settings.profile_api)?;
        let action = Action::from_settings(&settings.actions).map_err(|e| anyhow!(e))?;
        let input = match settings.source.kind {
            SourceType::File => settings
                .source
                .path
                .clone()
                .ok_or_else(|| anyhow!("source.path: required when source.type is file"))?,
            SourceType::Kafka => bail!(
                "source.type: kafka is not available in this build yet; use `source.type: file` with `source.path`"
            ),
        };
        if input.as_os_str() != "-" && !input.is_file() {
            bail!("source.path: {}: no such file", input.display());
        }
        Ok(Prepared {
            input,
            profiles,
            action,
            script,
            script_origin: script_path.display().to_string(),
            limits,
            state: UserStateConfig {
                ttl_ms: settings.engine.state_ttl_ms(),
                max_history: settings.state.max_history,
                max_in_flight: settings.profile_api.max_in_flight,
            },
        })
    }
}

/// Runs the job to the end of its input on the cluster `config` describes. Returns the
/// summary, summed over all workers, in the process that hosts worker 0.
pub fn run(
    prepared: Prepared,
    config: timely::Config,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Option<Summary>> {
    let started = Instant::now();
    let guards = timely::execute(config, move |worker| -> Result<Option<Summary>, String> {
        let stats = Rc::new(Stats::default());
        let failed = Rc::new(Cell::new(false));
        let p = prepared.clone();
        let filter =
            Filter::compile(&p.script, &p.script_origin, &p.limits).map_err(|e| e.to_string())?;

        // Bounds on what waits for the outside world; past them the source pauses.
        let lookups = Backlog::new(p.state.max_in_flight * PENDING_PER_LOOKUP);
        let deliveries = Backlog::new(p.action.max_in_flight() * QUEUED_PER_DELIVERY);
        let gate = Gate::new(vec![lookups.clone(), deliveries.clone()]);

        let probe = worker.dataflow::<Time, _, _>(|scope| {
            let messages = file_source(scope, p.input.clone(), gate, failed.clone());
            let events = decode(messages, stats.clone());
            let triggered = user_state(
                events,
                p.state.clone(),
                &p.profiles,
                runtime.clone(),
                filter,
                lookups,
                stats.clone(),
            );
            let done = run_actions(
                triggered,
                p.action.clone(),
                runtime.clone(),
                deliveries,
                stats.clone(),
            );
            done.probe().0
        });
        while !probe.done() {
            worker.step_or_park(None);
        }
        let elapsed_s = started.elapsed().as_secs_f64();
        if failed.get() {
            return Err("the input could not be read to its end (see the log)".into());
        }
        Ok(sum_on_worker_zero(worker, stats.counts()).map(|counts| Summary { counts, elapsed_s }))
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
