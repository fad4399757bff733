//! Hot reload of the filter script: a watcher notices the script file change (or
//! SIGHUP), compiles the new script, and if it compiles publishes it with the processing
//! time it takes effect at, a little in the future; if not, the old one stays and the
//! log says why.
//!
//! Every worker judges an event stamped `t` by the newest version in effect at `t`. A
//! version is published before its time comes, and a worker looks for new versions at
//! the start of every activation, so no event is judged by a version it should not be:
//! an event stamped at or after the switch was read after the version was published.
//! Only process 0 watches the file; its worker 0 broadcasts each version to every worker
//! of the cluster (`dataflows::trigger`), with a switch time far enough ahead (5 s with
//! several processes) for the broadcast to arrive first. A version that arrives after its
//! time is applied from then on, and logged as late.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::samples::Samples;
use super::{Filter, FilterError, FilterLimits, Verdict, health};
use crate::model::{EnrichedView, Time};

/// A script and the time it takes effect at.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Version {
    pub number: u64,
    pub at: Time,
    pub script: String,
}

/// The versions published in this process (the first, from the start, is number 0).
#[derive(Clone, Debug, Default)]
pub struct FilterVersions {
    versions: Arc<Mutex<Vec<Version>>>,
    published: Arc<AtomicU64>,
}

impl FilterVersions {
    /// Publishes `script` to take effect at `at`.
    pub fn publish(&self, script: String, at: Time) -> u64 {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let number = v.len() as u64 + 1;
        v.push(Version { number, at, script });
        self.published.store(number, Ordering::Release);
        number
    }

    /// Takes `v` from the broadcast, unless this process has it already.
    pub fn adopt(&self, v: Version) {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if v.number as usize == versions.len() + 1 {
            self.published.store(v.number, Ordering::Release);
            versions.push(v);
        }
    }

    /// Versions after `seen`, if any.
    pub fn after(&self, seen: u64) -> Vec<Version> {
        if self.published.load(Ordering::Acquire) == seen {
            return Vec::new();
        }
        let v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().filter(|v| v.number > seen).cloned().collect()
    }
}

/// A worker's filters: the versions of the script, and the actions' own filters.
pub struct Filters {
    /// By `at`, ascending; the first is in effect from the start.
    compiled: Vec<(Time, Filter)>,
    /// Per action, in their order: its own filter, if it has one.
    per_action: Vec<Option<Filter>>,
    /// Per action, in their order: what cancels its delayed firings, if anything.
    cancels: Vec<Option<Filter>>,
    source: FilterVersions,
    seen: u64,
    origin: String,
    limits: FilterLimits,
    /// The latest time judged: a version due before it arrived late.
    latest: std::cell::Cell<Time>,
    /// Where the rule tester keeps the first errors and passing events, if it runs.
    samples: Option<Samples>,
}

impl Filters {
    pub fn new(
        first: Filter,
        source: FilterVersions,
        origin: String,
        limits: FilterLimits,
    ) -> Self {
        Filters {
            compiled: vec![(0, first)],
            per_action: Vec::new(),
            cancels: Vec::new(),
            source,
            seen: 0,
            origin,
            limits,
            latest: std::cell::Cell::new(0),
            samples: None,
        }
    }

    /// Keeps the first errors and passing events in `samples` (the rule tester).
    pub fn with_samples(mut self, samples: Option<Samples>) -> Self {
        self.samples = samples;
        self
    }

    /// Notes a script error of `origin`: the process's first is kept for the alarm of
    /// `health`, the first few for the rule tester.
    fn failed(&self, origin: &str, view: EnrichedView<'_>, error: &str) {
        health::record(|| format!("{origin}: {error}"));
        if let Some(s) = &self.samples {
            s.error(origin, view, error);
        }
    }

    /// Compiles versions published since the last look (once per activation: a load
    /// of an atomic when there are none).
    pub fn refresh(&mut self) {
        for v in self.source.after(self.seen) {
            self.seen = v.number;
            let latest = self.latest.get();
            if v.at <= latest {
                tracing::error!(
                    version = v.number,
                    at = v.at,
                    latest,
                    "filter version arrived after its time: events up to now were judged by the previous one"
                );
            }
            // Compiled by the watcher already; a failure here would be a bug, and leaves
            // the previous version in effect.
            match Filter::compile(&v.script, &self.origin, &self.limits) {
                Ok(f) => {
                    let at = self.compiled.partition_point(|(t, _)| *t <= v.at);
                    self.compiled.insert(at, (v.at, f));
                }
                Err(e) => tracing::error!(version = v.number, "filter version not compiled: {e}"),
            }
        }
    }

    /// Gives the actions' own filters (none: every action takes every event passed).
    pub fn with_actions(mut self, per_action: Vec<Option<Filter>>) -> Self {
        self.per_action = per_action;
        self
    }

    /// Gives what cancels each action's delayed firings (`cancel-if`), by action.
    pub fn with_cancels(mut self, cancels: Vec<Option<Filter>>) -> Self {
        self.cancels = cancels;
        self
    }

    /// Whether an event (applied to its user's state) cancels the delayed firings of
    /// action `i`: only one its `cancel-if` passes. A script error cancels nothing.
    pub fn cancels(&self, i: usize, view: EnrichedView<'_>) -> Result<bool, String> {
        match self
            .cancels
            .get(i)
            .and_then(Option::as_ref)
            .map(|f| f.judge(view))
        {
            None | Some(Verdict::Reject) => Ok(false),
            Some(Verdict::Pass) => Ok(true),
            Some(Verdict::Error(e)) => {
                self.failed(&super::rules::cancel_origin(i), view, &e);
                Err(e)
            }
        }
    }

    /// The actions a passed event is for, as bits by their order; and the errors of
    /// action filters that failed (their actions do not get the event), each named by
    /// its action (`actions[i].filter: ...`).
    pub fn targets(&self, view: EnrichedView<'_>) -> (u64, Vec<String>) {
        if self.per_action.is_empty() {
            return (u64::MAX, Vec::new());
        }
        let mut bits = 0;
        let mut errors = Vec::new();
        for (i, f) in self.per_action.iter().enumerate() {
            match f.as_ref().map(|f| f.judge(view)) {
                None | Some(Verdict::Pass) => bits |= 1 << i,
                Some(Verdict::Reject) => {}
                Some(Verdict::Error(e)) => {
                    let origin = super::rules::action_origin(i);
                    self.failed(&origin, view, &e);
                    errors.push(format!("{origin}: {e}"))
                }
            }
        }
        (bits, errors)
    }

    /// Judges an event stamped `time` by the version in effect then.
    pub fn judge(&self, time: Time, view: EnrichedView<'_>) -> Verdict {
        self.latest.set(self.latest.get().max(time));
        let i = self.compiled.partition_point(|(t, _)| *t <= time);
        let verdict = self.compiled[i.saturating_sub(1)].1.judge(view);
        match (&verdict, &self.samples) {
            (Verdict::Error(e), _) => self.failed(&self.origin, view, e),
            (Verdict::Pass, Some(s)) => s.passed(view),
            _ => {}
        }
        verdict
    }
}

/// Watches `path`: every `every` (`None`: only on SIGHUP), and on SIGHUP, reads it; a
/// changed script that compiles is published to take effect `delay` later (rounded up to
/// a second), one that does not is logged. `floor`: the sources' clocks start there (a
/// restored epoch may be ahead of the wall clock); a switch is never before it.
pub async fn watch(
    path: PathBuf,
    limits: FilterLimits,
    versions: FilterVersions,
    every: Option<Duration>,
    delay: Duration,
    mut current: String,
    floor: Time,
) {
    let origin = path.display().to_string();
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut ticker = every.map(tokio::time::interval);
    loop {
        tokio::select! {
            Some(_) = async { match &mut ticker { Some(t) => Some(t.tick().await), None => None } } => {}
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => None } } => {
                tracing::info!("SIGHUP: reading the filter script again");
            }
            else => return,
        }
        let script = match read_changed(&path, &current).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                if !current.is_empty() {
                    tracing::warn!("filter not reloaded, the current one stays: {e}");
                }
                continue;
            }
        };
        match check(&script, &origin, &limits) {
            Ok(()) => {
                let now = crate::clock::now_ms().max(floor);
                let at = (now + delay.as_millis() as Time).div_ceil(1000) * 1000;
                let number = versions.publish(script.clone(), at);
                crate::metrics::global().filter_reloads.inc();
                tracing::info!(version = number, at, "filter reloaded from {origin}");
            }
            Err(e) => {
                crate::metrics::global().filter_reload_failures.inc();
                tracing::error!("filter not reloaded, the current one stays: {e}");
            }
        }
        current = script;
    }
}

/// On a process that does not watch the script (not process 0 of a cluster), SIGHUP is
/// logged and ignored: its default would end the process, and the cluster with it.
pub async fn ignore_hangups(process: usize) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::warn!(
            "SIGHUP ignored: process {process} does not read the filter script (send it to \
             process 0)"
        );
    }
}

/// How long a changed script must stay the same before it is taken.
const SETTLE: Duration = Duration::from_millis(100);

/// The script at `path` if it differs from `current`, once two reads `SETTLE` apart
/// agree: a file rewritten in place (truncated, then filled) can be read empty or half
/// written, and a half that compiles must not become the rule, even for a moment.
async fn read_changed(
    path: &std::path::Path,
    current: &str,
) -> Result<Option<String>, FilterError> {
    let mut script = Filter::read(path)?;
    if script == current {
        return Ok(None);
    }
    loop {
        tokio::time::sleep(SETTLE).await;
        let again = Filter::read(path)?;
        if again == script {
            return Ok((script != current).then_some(script));
        }
        script = again;
    }
}

/// The checks of the start (`Filter::compile_checked`): a new version that reads a field
/// that does not exist is refused like one that does not compile.
fn check(script: &str, origin: &str, limits: &FilterLimits) -> Result<(), FilterError> {
    let (_, warnings) = Filter::compile_checked(script, origin, limits)?;
    for w in warnings {
        tracing::warn!("new filter version: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{UserEvent, UserState};

    fn verdict(f: &Filters, time: Time, event_type: &str) -> Verdict {
        let ev = UserEvent {
            user_id: "u".into(),
            event_type: event_type.into(),
            ..Default::default()
        };
        f.judge(
            time,
            EnrichedView {
                event: &ev,
                state: &UserState::empty(0),
            },
        )
    }

    #[test]
    fn a_script_being_written_is_read_once_it_stays_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rule.rhai");
        let rule = r#"event.event_type == "click" && user.country == "US""#;
        std::fs::write(&path, rule).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(read_changed(&path, rule)).unwrap(), None);
        // Rewritten in place: empty, then half, then whole, each for less than SETTLE.
        std::fs::write(&path, "").unwrap();
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                std::fs::write(&path, r#"event.event_type == "click""#).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                std::fs::write(&path, r#"event.event_type == "view""#).unwrap();
            })
        };
        let read = rt.block_on(read_changed(&path, rule)).unwrap();
        writer.join().unwrap();
        assert_eq!(read.as_deref(), Some(r#"event.event_type == "view""#));
    }

    #[test]
    fn each_event_is_judged_by_the_version_in_effect_at_its_time() {
        let limits = FilterLimits::default();
        let first = Filter::compile(r#"event.event_type == "a""#, "f", &limits).unwrap();
        let versions = FilterVersions::default();
        let mut f = Filters::new(first, versions.clone(), "f".into(), limits);
        versions.publish(r#"event.event_type == "b""#.into(), 2000);
        assert_eq!(
            verdict(&f, 2500, "a"),
            Verdict::Pass,
            "not seen before refresh"
        );
        f.refresh();
        assert_eq!(verdict(&f, 1999, "a"), Verdict::Pass);
        assert_eq!(verdict(&f, 1999, "b"), Verdict::Reject);
        assert_eq!(verdict(&f, 2000, "a"), Verdict::Reject);
        assert_eq!(verdict(&f, 2000, "b"), Verdict::Pass);
        versions.publish(r#"event.event_type == "c""#.into(), 3000);
        f.refresh();
        assert_eq!(verdict(&f, 2999, "b"), Verdict::Pass);
        assert_eq!(verdict(&f, 3000, "c"), Verdict::Pass);
        assert_eq!(
            verdict(&f, 100, "a"),
            Verdict::Pass,
            "old times keep the first"
        );
    }
}
