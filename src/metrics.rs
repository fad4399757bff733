//! Prometheus metrics, served on `metrics.listen` at `/metrics` (OpenMetrics text).
//!
//! Workers count in plain `Cell`s (`Counters`, no atomics on the hot path) and publish the
//! increments into the process's registry about once a second (`WorkerMetrics`); the
//! rest (look-up latency, checkpoints, consumer lag) is recorded where it happens, off
//! the hot path, into the process-wide `Metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::counters::{Counters, Counts};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub worker: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub worker: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

/// The metrics of one target of HTTP calls (see `crate::concurrency`), taken once.
#[derive(Clone)]
pub struct TargetMetrics {
    pub limit: Gauge,
    pub in_flight: Gauge,
    pub rtt_seconds: Histogram,
    pub overloaded: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: String,
}

/// The metrics of this process.
pub struct Metrics {
    registry: Registry,
    /// One family per summary counter, labelled by worker.
    counters: Vec<(&'static str, Family<WorkerLabel, Counter>)>,
    invalid_by_reason: Family<ReasonLabel, Counter>,
    users: Family<WorkerLabel, Gauge>,
    state_bytes: Family<WorkerLabel, Gauge>,
    action_ok: Family<ActionLabel, Counter>,
    action_failed: Family<ActionLabel, Counter>,
    action_retries: Family<ActionLabel, Counter>,
    lookups_in_flight: Family<WorkerLabel, Gauge>,
    lookups_waiting: Family<WorkerLabel, Gauge>,
    actions_in_flight: Family<WorkerLabel, Gauge>,
    actions_waiting: Family<WorkerLabel, Gauge>,
    timers_pending: Family<WorkerLabel, Gauge>,
    /// Seconds per Profile API look-up (three requests, retries included).
    pub lookup_seconds: Histogram,
    pub lookup_errors: Family<KindLabel, Counter>,
    /// Look-ups that failed transiently after their retries and were tried again
    /// (`profile-api.max-wait-on-failure-ms`).
    pub lookup_waits: Counter,
    /// Webhook deliveries sent without `Idempotency-Key` (an `event_id` a header cannot
    /// carry).
    pub webhook_calls_without_key: Counter,
    /// Parts of Profile API answers left out: `field` (defaulted), `history_entry`.
    profile_answer_skipped: Family<KindLabel, Counter>,
    concurrency_limit: Family<TargetLabel, Gauge>,
    concurrency_in_flight: Family<TargetLabel, Gauge>,
    request_rtt: Family<TargetLabel, Histogram, fn() -> Histogram>,
    overloaded: Family<TargetLabel, Counter>,
    pub checkpoints_completed: Counter,
    /// From a checkpoint's epoch to its manifest, of the last one completed.
    pub checkpoint_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub checkpoint_bytes: Gauge,
    pub checkpoint_users: Gauge,
    pub checkpoint_epoch_ms: Gauge,
    pub checkpoint_writer_cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    pub filter_reloads: Counter,
    pub filter_reload_failures: Counter,
    /// Sums over the workers of this process, for the progress line.
    totals: Totals,
    lags: std::sync::Mutex<Lags>,
}

/// Process totals of the summary counters.
struct Totals(Vec<(&'static str, std::sync::atomic::AtomicU64)>);

impl Totals {
    fn add(&self, name: &str, n: u64) {
        if let Some((_, v)) = self.0.iter().find(|(k, _)| *k == name) {
            v.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(0, |(_, v)| v.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Registers `metric` and gives it back (the registry keeps a handle: metrics are shared).
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// A partition's lag: the messages past what the job has read (`hi - app`, as Kafka
/// consumers' `records-lag`); before it has read any, librdkafka's own figure, which
/// counts from the group's committed offset and is unknown (-1) where the group has
/// committed none: alone, it leaves those partitions out of the lag, and a job behind
/// by 70,000 messages showed 0, then 23,572 (of the one partition committed).
fn partition_lag(hi_offset: i64, app_offset: i64, committed_lag: i64) -> Option<i64> {
    if hi_offset >= 0 && app_offset >= 0 {
        Some((hi_offset - app_offset).max(0))
    } else {
        (committed_lag >= 0).then_some(committed_lag)
    }
}

/// The consumer lag per partition, for the progress line.
#[derive(Default)]
struct Lags {
    by_partition: std::collections::BTreeMap<(String, i32), i64>,
    /// Read to their end by a bounded run.
    ended: std::collections::BTreeSet<(String, i32)>,
}

/// The process's metrics (one registry per process, as Prometheus scrapes processes).
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("event_trigger");
        let counters = Counts::default()
            .named()
            .into_iter()
            .map(|(name, help, _)| (name, add(&mut registry, name, help, Family::default())))
            .collect();
        let invalid_by_reason = add(
            &mut registry,
            "invalid_by_reason",
            "messages skipped as invalid, by reason",
            Family::<ReasonLabel, Counter>::default(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            add(
                registry,
                name,
                help,
                Family::<WorkerLabel, Gauge>::default(),
            )
        };
        let users = gauge(&mut registry, "state_users", "users in state");
        let state_bytes = gauge(
            &mut registry,
            "state_bytes",
            "encoded size of the users at the last checkpoint part (an estimate of the state's size)",
        );
        let by_action = |registry: &mut Registry, name: &str, help: &str| {
            add(
                registry,
                name,
                help,
                Family::<ActionLabel, Counter>::default(),
            )
        };
        let action_ok = by_action(&mut registry, "action_ok", "actions completed, by action");
        let action_failed = by_action(
            &mut registry,
            "action_failed",
            "actions failed after their retries, by action",
        );
        let action_retries = by_action(
            &mut registry,
            "action_retries",
            "webhook tries after the first, by action",
        );
        let lookups_in_flight = gauge(
            &mut registry,
            "lookups_in_flight",
            "Profile API look-ups under way",
        );
        let lookups_waiting = gauge(
            &mut registry,
            "lookup_backlog_events",
            "events waiting for their user's look-up (or a restore, or a snapshot)",
        );
        let actions_in_flight = gauge(
            &mut registry,
            "actions_in_flight",
            "webhook calls under way, retries included",
        );
        let actions_waiting = gauge(
            &mut registry,
            "action_backlog_events",
            "events waiting for a webhook slot",
        );
        let timers_pending = gauge(
            &mut registry,
            "timers_pending",
            "delayed actions waiting to fire",
        );
        let lookup_seconds = add(
            &mut registry,
            "lookup_seconds",
            "Profile API look-up latency (three requests, retries included)",
            Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        );
        let lookup_errors = add(
            &mut registry,
            "lookup_errors",
            "failed look-ups by kind (request, status, body)",
            Family::<KindLabel, Counter>::default(),
        );
        let lookup_waits = add(
            &mut registry,
            "lookup_waits_after_failure",
            "look-ups that failed transiently after their retries and were tried again (profile-api.max-wait-on-failure-ms)",
            Counter::default(),
        );
        let webhook_calls_without_key = add(
            &mut registry,
            "webhook_calls_without_key",
            "webhook deliveries sent without Idempotency-Key: their event_id has a control character, which a header cannot carry",
            Counter::default(),
        );
        let profile_answer_skipped = add(
            &mut registry,
            "profile_answer_skipped",
            "parts of Profile API answers that could not be read: a field left at its default (field), a history entry skipped (history_entry)",
            Family::<KindLabel, Counter>::default(),
        );
        let by_target = |registry: &mut Registry, name: &str, help: &str| {
            add(
                registry,
                name,
                help,
                Family::<TargetLabel, Gauge>::default(),
            )
        };
        let concurrency_limit = by_target(
            &mut registry,
            "concurrency_limit",
            "calls allowed at once to a target (profile-api, webhook:<action>), fixed or adaptive",
        );
        let concurrency_in_flight = by_target(
            &mut registry,
            "concurrency_in_flight",
            "calls under way to a target",
        );
        fn rtt_histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        }
        let request_rtt = add(
            &mut registry,
            "request_rtt_seconds",
            "round trip of one HTTP call to a target (from its permit to its answer)",
            Family::<TargetLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                rtt_histogram,
            ),
        );
        let overloaded = add(
            &mut registry,
            "concurrency_overloaded",
            "calls that timed out, could not connect or were answered 429/502/503/504, by target",
            Family::<TargetLabel, Counter>::default(),
        );
        let checkpoints_completed = add(
            &mut registry,
            "checkpoints_completed",
            "checkpoints completed (manifest written)",
            Counter::default(),
        );
        let checkpoint_seconds = add(
            &mut registry,
            "checkpoint_duration_seconds",
            "last checkpoint: from its epoch to its manifest",
            Gauge::<f64, std::sync::atomic::AtomicU64>::default(),
        );
        let checkpoint_bytes = add(
            &mut registry,
            "checkpoint_bytes",
            "last checkpoint: size of its state parts",
            Gauge::default(),
        );
        let checkpoint_users = add(
            &mut registry,
            "checkpoint_users",
            "last checkpoint: users it holds",
            Gauge::default(),
        );
        let checkpoint_epoch_ms = add(
            &mut registry,
            "checkpoint_epoch_ms",
            "last checkpoint: its epoch (ms since the epoch)",
            Gauge::default(),
        );
        let checkpoint_writer_cpu = add(
            &mut registry,
            "checkpoint_writer_cpu_seconds",
            "CPU time of the threads writing checkpoint parts, beside the workers'",
            Counter::<f64, std::sync::atomic::AtomicU64>::default(),
        );
        let consumer_lag = add(
            &mut registry,
            "kafka_consumer_lag",
            "messages behind the partition's end (librdkafka statistics)",
            Family::<PartitionLabel, Gauge>::default(),
        );
        let filter_reloads = add(
            &mut registry,
            "filter_reloads",
            "filter scripts reloaded (changed on disk, or SIGHUP)",
            Counter::default(),
        );
        let filter_reload_failures = add(
            &mut registry,
            "filter_reload_failures",
            "changed filter scripts refused (did not compile; the old one stays)",
            Counter::default(),
        );
        Metrics {
            registry,
            filter_reloads,
            filter_reload_failures,
            counters,
            invalid_by_reason,
            users,
            state_bytes,
            action_ok,
            action_failed,
            action_retries,
            lookups_in_flight,
            lookups_waiting,
            actions_in_flight,
            actions_waiting,
            timers_pending,
            lookup_seconds,
            lookup_errors,
            lookup_waits,
            webhook_calls_without_key,
            profile_answer_skipped,
            concurrency_limit,
            concurrency_in_flight,
            request_rtt,
            overloaded,
            checkpoints_completed,
            checkpoint_seconds,
            checkpoint_bytes,
            checkpoint_users,
            checkpoint_epoch_ms,
            checkpoint_writer_cpu,
            consumer_lag,
            totals: Totals(
                Counts::default()
                    .named()
                    .into_iter()
                    .map(|(name, _, _)| (name, Default::default()))
                    .collect(),
            ),
            lags: Default::default(),
        }
    }

    /// The process's totals so far and the consumer lag, for the progress line.
    pub fn progress(&self) -> Progress {
        Progress {
            events_read: self.totals.get("events_read"),
            invalid: self.totals.get("invalid"),
            passed: self.totals.get("passed"),
            rejected: self.totals.get("rejected"),
            actions_ok: self.totals.get("actions_ok"),
            actions_failed: self.totals.get("actions_failed"),
            fetch_errors: self.totals.get("fetch_errors"),
            script_errors: self.totals.get("script_errors"),
            lag: self
                .lags
                .lock()
                .ok()
                .filter(|l| !l.by_partition.is_empty())
                .map(|l| l.by_partition.values().sum()),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn record_lookup(&self, took: Duration, error_kind: Option<&str>) {
        self.lookup_seconds.observe(took.as_secs_f64());
        if let Some(kind) = error_kind {
            self.lookup_errors
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc();
        }
    }

    /// Counts `n` parts of Profile API answers of `kind` left out (see `profile_api`).
    pub fn profile_answer_skipped(&self, kind: &str, n: u64) {
        if n > 0 {
            self.profile_answer_skipped
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc_by(n);
        }
    }

    /// The handles of `target`'s metrics.
    pub fn target(&self, target: &str) -> TargetMetrics {
        let label = TargetLabel {
            target: target.into(),
        };
        TargetMetrics {
            limit: self.concurrency_limit.get_or_create(&label).clone(),
            in_flight: self.concurrency_in_flight.get_or_create(&label).clone(),
            rtt_seconds: self.request_rtt.get_or_create(&label).clone(),
            overloaded: self.overloaded.get_or_create(&label).clone(),
        }
    }

    /// A checkpoint part written, with the CPU time its writer thread took.
    pub fn record_part_cpu(&self, cpu: Duration) {
        self.checkpoint_writer_cpu.inc_by(cpu.as_secs_f64());
    }

    pub fn record_checkpoint(&self, epoch: u64, took: Duration, users: u64, bytes: u64) {
        self.checkpoints_completed.inc();
        self.checkpoint_seconds.set(took.as_secs_f64());
        self.checkpoint_users.set(users as i64);
        self.checkpoint_bytes.set(bytes as i64);
        self.checkpoint_epoch_ms.set(epoch as i64);
    }

    /// librdkafka's statistics: the lag of each partition this client consumes (but
    /// those a bounded run has read to their end).
    pub fn record_lag(&self, stats: &rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                let lag = partition_lag(p.hi_offset, p.app_offset, p.consumer_lag);
                if let Some(lag) = lag.filter(|_| *partition >= 0) {
                    self.set_lag(topic, *partition, lag, false);
                }
            }
        }
    }

    /// A bounded run has read a partition to its end: it has no lag from now on. The
    /// statistics' lag comes seconds late and counts from the committed offset: taken
    /// as it comes, a bounded run's last progress line would show the lag from before
    /// the end.
    pub fn partition_at_end(&self, topic: &str, partition: i32) {
        self.set_lag(topic, partition, 0, true);
    }

    fn set_lag(&self, topic: &str, partition: i32, lag: i64, at_end: bool) {
        let key = (topic.to_owned(), partition);
        let Ok(mut lags) = self.lags.lock() else {
            return;
        };
        if at_end {
            lags.ended.insert(key.clone());
        } else if lags.ended.contains(&key) {
            return;
        }
        let label = PartitionLabel {
            topic: topic.to_owned(),
            partition: partition.to_string(),
        };
        self.consumer_lag.get_or_create(&label).set(lag);
        lags.by_partition.insert(key, lag);
    }
}

/// What a worker publishes; it keeps what it published last, to add the difference.
pub struct WorkerMetrics {
    label: WorkerLabel,
    last: Counts,
    last_invalid: Vec<u64>,
    last_actions: Vec<crate::counters::ActionCounts>,
}

impl WorkerMetrics {
    pub fn new(worker: usize) -> WorkerMetrics {
        WorkerMetrics {
            label: WorkerLabel {
                worker: worker.to_string(),
            },
            last: Counts::default(),
            last_invalid: vec![0; crate::wire::DecodeError::REASONS.len()],
            last_actions: Vec::new(),
        }
    }

    /// Adds what `stats` counted since the last call, and sets the gauges.
    pub fn publish(&mut self, stats: &Counters) {
        let m = global();
        let now = stats.counts();
        // `counters` was built from `named()`: the same fields in the same order.
        for ((name, family), ((_, _, new), (_, _, old))) in m
            .counters
            .iter()
            .zip(now.named().into_iter().zip(self.last.named()))
        {
            // Also when 0: the series exists from the start, for dashboards.
            family
                .get_or_create(&self.label)
                .inc_by(new.saturating_sub(old));
            m.totals.add(name, new.saturating_sub(old));
        }
        self.last = now;
        for (i, reason) in crate::wire::DecodeError::REASONS.iter().enumerate() {
            let n = stats.invalid_by_reason[i].get();
            if n > self.last_invalid[i] {
                m.invalid_by_reason
                    .get_or_create(&ReasonLabel {
                        worker: self.label.worker.clone(),
                        reason: (*reason).to_string(),
                    })
                    .inc_by(n - self.last_invalid[i]);
                self.last_invalid[i] = n;
            }
        }
        let set = |family: &Family<WorkerLabel, Gauge>, v: u64| {
            family.get_or_create(&self.label).set(v as i64);
        };
        set(&m.users, stats.users.get());
        set(&m.state_bytes, stats.state_bytes.get());
        let per_action = stats.per_action.borrow();
        for (i, now) in per_action.iter().enumerate() {
            let before = self.last_actions.get(i).cloned().unwrap_or_default();
            let label = ActionLabel {
                worker: self.label.worker.clone(),
                action: now.name.clone(),
            };
            m.action_ok
                .get_or_create(&label)
                .inc_by(now.ok.saturating_sub(before.ok));
            m.action_failed
                .get_or_create(&label)
                .inc_by(now.failed.saturating_sub(before.failed));
            m.action_retries
                .get_or_create(&label)
                .inc_by(now.retried.saturating_sub(before.retried));
        }
        self.last_actions = per_action.clone();
        set(&m.lookups_in_flight, stats.lookups_in_flight.get());
        set(&m.lookups_waiting, stats.lookup_backlog.get());
        set(&m.actions_in_flight, stats.actions_in_flight.get());
        set(&m.actions_waiting, stats.action_backlog.get());
        set(&m.timers_pending, stats.timers_pending.get());
    }
}

/// What the progress line reports: totals of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    pub events_read: u64,
    pub invalid: u64,
    pub passed: u64,
    pub rejected: u64,
    pub actions_ok: u64,
    pub actions_failed: u64,
    pub fetch_errors: u64,
    pub script_errors: u64,
    /// Summed over the partitions whose lag is known; `None` while none is (a file
    /// source, or a Kafka one before its first statistics): the line leaves it out
    /// rather than say 0.
    pub lag: Option<i64>,
}

impl Progress {
    /// The filter's verdicts since `last`: a progress line flags the rule on what it did
    /// since the previous line, so one that stopped failing (a reload) stops being
    /// flagged; the last line of a run, from nothing, gives the whole run.
    pub fn judged_since(&self, last: &Progress) -> crate::filter::health::Judged {
        crate::filter::health::Judged {
            passed: self.passed.saturating_sub(last.passed),
            rejected: self.rejected.saturating_sub(last.rejected),
            script_errors: self.script_errors.saturating_sub(last.script_errors),
        }
    }
}

/// Logs a line every `every`: the totals and the rate of events since the last line.
pub async fn log_progress(every: Duration) {
    let mut last = global().progress();
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        last = log_progress_line(&last, every);
    }
}

/// Logs one progress line (the rate since `last`, `every` ago); returns the totals.
pub fn log_progress_line(last: &Progress, every: Duration) -> Progress {
    {
        let now = global().progress();
        let rate = now.events_read.saturating_sub(last.events_read) as f64
            / every.as_secs_f64().max(0.001);
        tracing::info!(
            events_per_s = rate.round() as u64,
            events_read = now.events_read,
            lag = now.lag,
            passed = now.passed,
            actions_ok = now.actions_ok,
            actions_failed = now.actions_failed,
            invalid = now.invalid,
            fetch_errors = now.fetch_errors,
            script_errors = now.script_errors,
            "progress"
        );
        if let Some(alarm) = now.judged_since(last).alarm() {
            let since = if *last == Progress::default() {
                ""
            } else {
                " (since the previous progress line)"
            };
            tracing::warn!("{alarm}{since}");
        }
        now
    }
}

/// Serves `/metrics` on `listen`; returns the address bound.
pub async fn serve(listen: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
    let handler = crate::http_server::handler(|req| async move {
        if req.uri().path() != "/metrics" {
            return crate::http_server::reply(hyper::StatusCode::NOT_FOUND, "see /metrics\n");
        }
        let mut resp = crate::http_server::reply(hyper::StatusCode::OK, global().encode());
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        resp
    });
    crate::http_server::serve(listen, handler).await
}

#[cfg(test)]
mod tests {
    /// A rule that failed early and was replaced is not flagged on later lines: the
    /// share is of what was judged since the previous line.
    #[test]
    fn a_progress_line_judges_the_rule_on_what_it_did_since_the_last_line() {
        let at = |passed, script_errors| super::Progress {
            passed,
            script_errors,
            ..Default::default()
        };
        let (first, second) = (at(50, 50), at(150, 50));
        assert!(first.judged_since(&Default::default()).alarm().is_some());
        assert_eq!(second.judged_since(&first).alarm(), None);
        assert!(second.judged_since(&Default::default()).alarm().is_some());
    }
    use super::*;

    /// The metric names the registry declares (`# TYPE <name> <type>`), each family given
    /// a series first (one without any is not written at all).
    fn declared() -> std::collections::BTreeSet<String> {
        declared_types().into_keys().collect()
    }

    /// The metrics the job declares, each with its type (`counter`, `gauge` ...).
    fn declared_types() -> std::collections::BTreeMap<String, String> {
        let m = global();
        m.record_lookup(Duration::from_millis(3), Some("request"));
        m.target("declared-test");
        m.profile_answer_skipped("field", 1);
        m.consumer_lag
            .get_or_create(&PartitionLabel {
                topic: "t".into(),
                partition: "0".into(),
            })
            .set(0);
        let stats = Counters::default();
        Counters::add(&stats.invalid_by_reason[0], 1);
        WorkerMetrics::new(98).publish(&stats);
        // Per action, once a worker has one (not here, unless another test made one).
        let label = ActionLabel {
            worker: "98".into(),
            action: "declared-test".into(),
        };
        for family in [&m.action_ok, &m.action_failed, &m.action_retries] {
            family.get_or_create(&label).inc_by(0);
        }
        m.encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect()
    }

    #[test]
    fn a_partitions_lag_counts_from_what_the_job_has_read() {
        assert_eq!(
            partition_lag(1000, 400, 900),
            Some(600),
            "not the committed lag"
        );
        assert_eq!(partition_lag(1000, -1001, -1), None, "nothing known yet");
        assert_eq!(
            partition_lag(1000, -1001, 250),
            Some(250),
            "before any read"
        );
        assert_eq!(partition_lag(-1001, 400, -1), None);
        assert_eq!(
            partition_lag(1000, 1003, 0),
            Some(0),
            "a stale high watermark"
        );
    }

    #[test]
    fn a_partition_read_to_its_end_has_no_lag() {
        let m = Metrics::new();
        assert_eq!(m.progress().lag, None, "unknown before any statistics");
        m.set_lag("t", 0, 40, false);
        m.set_lag("t", 1, 2, false);
        assert_eq!(m.progress().lag, Some(42));
        m.partition_at_end("t", 0);
        assert_eq!(m.progress().lag, Some(2));
        // Statistics from before the end, delivered after it, do not bring it back.
        m.set_lag("t", 0, 40, false);
        assert_eq!(m.progress().lag, Some(2));
        assert!(
            m.encode()
                .contains("event_trigger_kafka_consumer_lag{topic=\"t\",partition=\"0\"} 0\n")
        );
    }

    #[test]
    fn a_worker_publishes_what_it_counted_since_its_last_publish() {
        let stats = Counters::default();
        let mut w = WorkerMetrics::new(97);
        Counters::add(&stats.events_read, 5);
        Counters::add(&stats.invalid_by_reason[2], 1);
        stats.users.set(3);
        *stats.per_action.borrow_mut() = vec![crate::counters::ActionCounts {
            name: "crm".into(),
            ok: 4,
            failed: 1,
            retried: 2,
        }];
        w.publish(&stats);
        stats.per_action.borrow_mut()[0].ok += 1;
        Counters::add(&stats.events_read, 2);
        w.publish(&stats);
        let text = global().encode();
        assert!(
            text.contains("event_trigger_events_read_total{worker=\"97\"} 7\n"),
            "{text}"
        );
        assert!(text.contains(
            "event_trigger_invalid_by_reason_total{worker=\"97\",reason=\"bad_json\"} 1\n"
        ));
        assert!(text.contains("event_trigger_state_users{worker=\"97\"} 3\n"));
        assert!(text.contains("event_trigger_action_ok_total{worker=\"97\",action=\"crm\"} 5\n"));
        assert!(
            text.contains("event_trigger_action_failed_total{worker=\"97\",action=\"crm\"} 1\n")
        );
        assert!(
            text.contains("event_trigger_action_retries_total{worker=\"97\",action=\"crm\"} 2\n")
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// Catches a dashboard that drifted from the metrics: every metric its queries name
    /// must be one the job declares.
    #[test]
    fn the_grafana_dashboard_queries_only_metrics_the_job_exports() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/grafana/event-trigger.json"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let declared = declared();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (at, _) in expr.match_indices("event_trigger_") {
                    let name: String = expr[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let base = ["_total", "_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    assert!(
                        declared.contains(base),
                        "{name} (panel {}) is not a metric of the job: {declared:?}",
                        panel["title"]
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried > 20, "{queried}");
        // And every counter is on the dashboard.
        let text = std::fs::read_to_string(path).unwrap();
        for (name, _, _) in Counts::default().named() {
            assert!(
                text.contains(&format!("event_trigger_{name}_total")),
                "{name} is not on the dashboard"
            );
        }
        let types = declared_types();
        let counters = types.iter().filter(|(_, kind)| *kind == "counter");
        for (name, _) in counters {
            assert!(
                text.contains(&format!("{name}_total")),
                "{name} is not on the dashboard"
            );
        }
    }
}
