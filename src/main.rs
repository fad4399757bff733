use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use event_trigger::config::{LogFormat, Settings, SourceType};
use event_trigger::dataflows::trigger::{self, Prepared};
use event_trigger::filter::Filter;
use event_trigger::filter::health::Judged;
use event_trigger::filter::rules::Rules;
use event_trigger::mock_api::MockApi;
use event_trigger::sources::replay::ReplayFrom;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns a stream of user events into actions: per-user state, Profile API enrichment,
/// a rhai filter, webhooks.
#[derive(Parser)]
#[command(name = "event-trigger", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the job.
    ///
    /// Reads events from the configured source (a Kafka topic, or a file, a pipe or
    /// standard input), looks each user up in the Profile API on its first event,
    /// judges every event with the filter script and acts on those it passes (webhooks
    /// or debug prints). A file source, or a topic with --bounded, is read to its end;
    /// the run then prints its summary on standard output and exits. A topic without
    /// --bounded is read until SIGTERM or Ctrl-C, with checkpoints for recovery.
    ///
    /// Exit codes: 0 done (a run stopped by SIGTERM or Ctrl-C too, its final checkpoint
    /// taken); 1 the job started but did not end as it should (an input that failed
    /// before its end, a final checkpoint not written, the shutdown timeout passed);
    /// 2 it could not start (config, script, input, broker); 3 a bounded or file run in
    /// which the rule failed on every event it judged.
    ///
    /// `-h` is timely's --hostfile, as in every timely program: use --help for this.
    Run(RunArgs),
    /// Loads the config and checks the filter and the actions' filters (0 if all is
    /// fine); with --events, also runs them over sample events (the rule tester).
    Validate {
        #[arg(long, default_value = "config/application.yml")]
        config: PathBuf,
        /// Sample events, one JSON per line: runs the rules over them with the config's
        /// Profile API (or file:// profiles), calls no webhook, and prints the counts,
        /// the first script errors and the first passing events.
        #[arg(long, value_name = "FILE.jsonl")]
        events: Option<PathBuf>,
        /// How many script errors and passing events to show.
        #[arg(long, default_value_t = 5)]
        show: usize,
    },
    /// Serves a local Profile API from a profiles.jsonl and accepts webhooks on /webhook.
    MockApi {
        #[arg(long)]
        profiles: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Log the bodies of the first N webhooks received.
        #[arg(long, default_value_t = 0)]
        log_webhooks: u64,
        /// Serve at most this many requests at once, the others queueing (0: no limit):
        /// with --service-ms, a modest service to try the job's concurrency against.
        #[arg(long, default_value_t = 0)]
        slots: usize,
        /// Milliseconds each request takes to serve.
        #[arg(long, default_value_t = 0)]
        service_ms: u64,
    },
    /// Loads a JSONL file into a Kafka topic, keyed by user_id (creates the topic if
    /// missing).
    Produce {
        #[arg(long)]
        topic: String,
        /// Partitions of the topic when it is created.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Broker list (default: kafka.bootstrap-servers of the config).
        #[arg(long)]
        bootstrap_servers: Option<String>,
        #[arg(long, default_value = "config/application.yml")]
        config: PathBuf,
        /// The events, one per line; `-` for standard input.
        file: PathBuf,
    },
    /// Runs the job on built-in sample data with an in-process Profile API and webhook
    /// receiver: no external services needed.
    Demo {
        /// Worker threads.
        #[arg(short = 'w', long = "threads", default_value_t = 2)]
        threads: usize,
    },
}

/// `run`'s options; `-w/-n/-p/-h` are timely's usual cluster options.
#[derive(Args)]
#[command(disable_help_flag = true)]
struct RunArgs {
    #[arg(long, default_value = "config/application.yml")]
    config: PathBuf,
    /// Kafka: read each partition to its end, finish once every action is done, print
    /// the summary and exit (for backfills, tests and benchmarks).
    #[arg(long)]
    bounded: bool,
    /// Kafka: replay from these offsets, `PARTITION:OFFSET[,...]` (other partitions start
    /// as configured); state starts empty.
    #[arg(long, value_name = "P:O,...", conflicts_with = "from_timestamp")]
    from_offset: Option<String>,
    /// Kafka: replay from the first message at or after this time (ms since the epoch,
    /// or RFC 3339); state starts empty.
    #[arg(long, value_name = "TIME")]
    from_timestamp: Option<String>,
    /// Print what would be triggered instead of acting; commit no offsets, write no
    /// checkpoint (to try a filter on old traffic).
    #[arg(long)]
    dry_run: bool,
    /// Worker threads per process (default: engine.parallelism).
    #[arg(short = 'w', long = "threads")]
    threads: Option<usize>,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    processes: usize,
    /// Index of this process, from 0.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    process: usize,
    /// File with one `host:port` per line, one per process.
    #[arg(short = 'h', long = "hostfile")]
    hostfile: Option<PathBuf>,
    /// Print this help (`-h` is --hostfile).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Logs to standard error, as text or as JSON lines (`logging.format`); `RUST_LOG`
/// filters.
fn init_logging(format: LogFormat) {
    event_trigger::logging::init(format, None);
}

/// As `init_logging`, with `directive` added to `RUST_LOG`'s.
fn init_logging_with(format: LogFormat, directive: Option<&str>) {
    event_trigger::logging::init(format, directive);
}

fn main() -> std::process::ExitCode {
    event_trigger::allocator::tune();
    let cli = Cli::parse();
    // `run` logs as its configuration says, once it is read. The rule tester shows the
    // first passing events itself: its actions' debug prints are off.
    match cli.command {
        Command::Run(_) => {}
        Command::Validate { .. } => {
            init_logging_with(LogFormat::Text, Some("event_trigger::action::debug=off"))
        }
        _ => init_logging(LogFormat::Text),
    }
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Validate {
            config,
            events,
            show,
        } => validate(&config, events.as_deref(), show),
        Command::MockApi {
            profiles,
            listen,
            log_webhooks,
            slots,
            service_ms,
        } => {
            let service = std::time::Duration::from_millis(service_ms);
            mock_api(&profiles, listen, log_webhooks, (slots, service))
        }
        Command::Produce {
            topic,
            partitions,
            bootstrap_servers,
            config,
            file,
        } => produce(&topic, partitions, bootstrap_servers, &config, &file),
        Command::Demo { threads } => demo(threads),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            event_trigger::logging::report_error(&e);
            if e.is::<RunFailed>() {
                return std::process::ExitCode::from(1);
            }
            if e.is::<RuleFailed>() {
                return std::process::ExitCode::from(3);
            }
            // 2: the job could not start (config, script, input); as documented.
            std::process::ExitCode::from(2)
        }
    }
}

/// The processes of this run's cluster, for the advice after a panic.
static PROCESSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// A thread of a run that panics ends the process, with exit code 1: the workers and
/// the network threads of a cluster cannot go on without each other. A peer process that
/// died poisoned this one's channels and its workers panicked while its other threads
/// waited for them: the process hung, alive to a supervisor, until a second signal. A
/// job that exits is restarted by its supervisor, from its last checkpoint.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        let (advice, code) = advice(info);
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            "fatal: {info}; exiting: {advice}"
        );
        event_trigger::shutdown::exit_now(code);
    }));
}

/// What to do after a panic. One in timely's networking most likely means: processes
/// started with different worker counts (they fail there, reading a message for a
/// worker this process does not have, before any code of the job could compare the
/// counts), or another process that ended. With the exit code: 2 (could not start) for
/// different worker counts, else 1.
fn advice(info: &std::panic::PanicHookInfo<'_>) -> (String, i32) {
    let restart = if PROCESSES.load(std::sync::atomic::Ordering::Relaxed) > 1 {
        "restart every process of the cluster (each restores the last checkpoint)"
    } else {
        "start the job again (it restores the last checkpoint)"
    };
    let in_networking = info
        .location()
        .is_some_and(|l| l.file().contains("timely_communication"));
    let message = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or_default();
    if !in_networking {
        (restart.into(), 1)
    } else if message.contains("index out of bounds") {
        let advice = "the processes were likely started with different worker counts: give \
                      every process of a cluster the same -w (or engine.parallelism) and start \
                      them again";
        (advice.into(), 2)
    } else {
        let advice = format!(
            "another process of the cluster ended or lost its connection (see its log: one \
             started with another -w ends so); {restart}"
        );
        (advice, 1)
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("event-trigger-io")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")
}

fn timely_config(args: &RunArgs, parallelism: usize) -> anyhow::Result<timely::Config> {
    let threads = args.threads.unwrap_or(parallelism);
    let most = event_trigger::config::MAX_PARALLELISM;
    if !(1..=most).contains(&threads) {
        anyhow::bail!("-w {threads}: give 1 to {most} workers per process (each is a thread)");
    }
    // timely panics on these (a capacity overflow in its networking), which read as a
    // failed run to restart.
    if args.processes == 0 {
        anyhow::bail!("-n 0: a cluster has at least one process");
    }
    if args.process >= args.processes {
        anyhow::bail!(
            "-p {}: process indices go from 0 to {} (-n {} processes)",
            args.process,
            args.processes - 1,
            args.processes
        );
    }
    let mut argv = vec![
        "-w".to_string(),
        threads.to_string(),
        "-n".to_string(),
        args.processes.to_string(),
        "-p".to_string(),
        args.process.to_string(),
    ];
    if let Some(h) = &args.hostfile {
        argv.push("-h".into());
        argv.push(h.display().to_string());
    }
    timely::Config::from_args(argv.into_iter()).map_err(|e| anyhow::anyhow!("cluster options: {e}"))
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // SIGHUP ends a process by default; until the filter's watcher (or, on the other
    // processes of a cluster, the task that logs it) takes it, it is ignored: a reload
    // asked for while the job starts must not end it.
    // SAFETY: sets the process's disposition of one signal to "ignore": no code of ours
    // runs in a signal handler.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let settings = Settings::load(&args.config);
    init_logging(match &settings {
        Ok(s) => s.logging.format,
        Err(_) => Settings::log_format_of(&args.config),
    });
    let mut settings = settings?;
    if args.dry_run {
        // A dry run writes no dead letters: their file is not even opened (created).
        settings.dead_letter = Default::default();
        // It reads a file whole from empty state: no checkpoint is looked for (one it
        // may not read, or a damaged one, is nothing to it) or written.
        settings.source.resume = false;
    }
    if let Some(note) = settings.actions.debug_note().filter(|_| !args.dry_run) {
        tracing::info!("{note}");
    }
    PROCESSES.store(args.processes, std::sync::atomic::Ordering::Relaxed);
    exit_on_panic();
    let config = timely_config(&args, settings.engine.parallelism)?;
    // Before anything connects: a mistake in them is not hidden behind a broker's error.
    let from = match (&args.from_offset, &args.from_timestamp) {
        (Some(o), _) => Some(ReplayFrom::parse_offsets(o)?),
        (None, Some(t)) => Some(ReplayFrom::parse_timestamp(t)?),
        (None, None) => None,
    };
    // A dry run writes no checkpoint (`Prepared::replay`).
    if args.processes == 1 && !args.dry_run {
        event_trigger::dataflows::prepared::check_checkpoint_dir(&settings)?;
    }
    // An explicit metrics address that cannot be listened on, before a broker is waited
    // for (`serve_metrics` binds it for good).
    if let Some((listen, true)) = settings.metrics.listen_addr()?
        && let Err(e) = std::net::TcpListener::bind(listen)
    {
        return Err(metrics_listen_failed(listen, &e));
    }
    let mut prepared = Prepared::new(&settings, args.bounded)?;
    prepared.processes = args.processes;
    if from.is_some() || args.dry_run {
        prepared.replay(from, args.dry_run)?;
    }
    // A cluster checks its directory with all its processes together (a process that
    // exited alone here would leave the others waiting for it to connect).
    if let Some(c) = prepared
        .checkpoints
        .as_ref()
        .filter(|_| args.processes == 1)
    {
        event_trigger::checkpoint::manifest::check_dir(&c.dir).with_context(|| {
            let key = event_trigger::config::key_as_set("engine.checkpoint-dir");
            format!("{key}: checkpoints cannot be written")
        })?;
    }
    let runtime = tokio_runtime()?;
    serve_metrics(&settings, &runtime)?;
    // Process 0 watches (every interval, and on SIGHUP: with an interval of 0, only on
    // SIGHUP); its worker 0 broadcasts new versions to the cluster.
    if args.process == 0 {
        // Time for the broadcast to reach the other processes before the switch.
        let delay = Duration::from_secs(if args.processes > 1 { 5 } else { 1 });
        let every = settings.filter.reload_interval_ms;
        runtime.spawn(event_trigger::filter::reload::watch(
            settings.filter.script_path.clone(),
            prepared.limits.clone(),
            prepared.filter_versions.clone(),
            (every > 0).then(|| Duration::from_millis(every)),
            delay,
            prepared.script.clone(),
            prepared.checkpoints.as_ref().map_or(0, |c| c.floor_epoch),
        ));
    } else {
        runtime.spawn(event_trigger::filter::reload::ignore_hangups(args.process));
    }
    prepared
        .stop
        .on_signals(
            runtime.handle(),
            Duration::from_millis(settings.engine.shutdown_timeout_ms),
        )
        .context("cannot install the stop signal handlers")?;
    if args.processes > 1 {
        let limit = Duration::from_millis(settings.engine.cluster_connect_timeout_ms);
        watch_cluster_start(&prepared.stop, runtime.handle(), &args, limit);
    }
    let ends = args.bounded || settings.source.kind == SourceType::File;
    let started = std::time::Instant::now();
    if let Some(summary) = trigger::run(prepared, config, runtime.handle().clone())? {
        // The last progress line, with everything the run did (a short run may end
        // before the first one).
        if settings.metrics.log_interval_s > 0 {
            let all = event_trigger::metrics::Progress::default();
            event_trigger::metrics::log_progress_line(&all, started.elapsed());
        }
        println!("{summary}");
        let judged = judged(&summary.counts);
        if let Some(alarm) = judged.alarm() {
            tracing::warn!("{alarm}");
        }
        for warning in nothing_worked(&summary.counts, &settings) {
            tracing::warn!("{warning}");
        }
        if let Some(e) = summary.final_checkpoint_error {
            return Err(RunFailed(e).into());
        }
        if ends && judged.all_failed() {
            return Err(RuleFailed(judged.script_errors).into());
        }
    }
    Ok(())
}

/// How often a process waiting for its cluster says so.
const STILL_WAITING: Duration = Duration::from_secs(30);

/// Until this process's workers start (every process of the cluster connected), says
/// every `STILL_WAITING` what it waits for, and after `limit` (unless 0) exits 2: a peer
/// that failed to start (a config error, say) left the others waiting in timely's
/// networking with nothing in their logs.
fn watch_cluster_start(
    stop: &event_trigger::shutdown::StopFlag,
    runtime: &tokio::runtime::Handle,
    args: &RunArgs,
    limit: Duration,
) {
    let (stop, process, processes) = (stop.clone(), args.process, args.processes);
    let fix = format!(
        "start every process of the cluster (-n {processes}, -p 0 to {}, the same hostfile \
         and -w); one that could not start says why in its own log",
        processes - 1
    );
    runtime.spawn(async move {
        let waiting = std::time::Instant::now();
        loop {
            let left = if limit.is_zero() {
                STILL_WAITING
            } else {
                limit.saturating_sub(waiting.elapsed()).min(STILL_WAITING)
            };
            tokio::time::sleep(left).await;
            if stop.has_started() {
                return;
            }
            let waited_s = waiting.elapsed().as_secs();
            if !limit.is_zero() && waiting.elapsed() >= limit {
                tracing::error!(
                    "process {process} of {processes}: the cluster's other processes have not \
                     all connected after {waited_s} s (engine.cluster-connect-timeout-ms): {fix}"
                );
                event_trigger::shutdown::exit_now(2);
            }
            tracing::warn!(
                "process {process} of {processes}: still waiting for the cluster's other \
                 processes to connect ({waited_s} s): {fix}"
            );
        }
    });
}

/// The filter's verdicts in `counts`.
fn judged(counts: &event_trigger::counters::Counts) -> Judged {
    Judged {
        passed: counts.passed,
        rejected: counts.rejected,
        script_errors: counts.script_errors,
    }
}

/// The job ran, but did not end as it should (exit code 1, not 2: it did start).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RunFailed(String);

/// A run to the end of its input in which the filter failed on every event it judged
/// (exit code 3): its results mean nothing, whatever the exit code of the job says.
#[derive(Debug, thiserror::Error)]
#[error("the filter failed on every event it judged ({0} script errors, none passed or rejected)")]
struct RuleFailed(u64);

/// Serves `/metrics` (unless `metrics.listen` is `""`), and logs progress lines.
fn serve_metrics(settings: &Settings, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    if let Some((listen, explicit)) = settings.metrics.listen_addr()? {
        match runtime.block_on(event_trigger::metrics::serve(listen)) {
            Ok(addr) => tracing::info!("metrics on http://{addr}/metrics"),
            // The default port taken (another job on this machine, say): run without.
            Err(e) if !explicit => tracing::warn!(
                "metrics not served: {listen}: {e} (set metrics.listen to choose a port, or \"\" for none)"
            ),
            Err(e) => return Err(metrics_listen_failed(listen, &e)),
        }
    }
    if settings.metrics.log_interval_s > 0 {
        runtime.spawn(event_trigger::metrics::log_progress(Duration::from_secs(
            settings.metrics.log_interval_s,
        )));
    }
    Ok(())
}

fn validate(config: &Path, events: Option<&Path>, show: usize) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let limits = event_trigger::filter::FilterLimits {
        max_operations: settings.filter.max_operations,
    };
    let script_path = &settings.filter.script_path;
    let script = Filter::read(script_path)?;
    let specs = settings.actions.specs();
    let origin = script_path.display().to_string();
    let warnings = Rules::of_specs(&script, &origin, &specs, &limits).check()?;
    if let Some(path) = &settings.profile_api.ca_file {
        event_trigger::http_client::ca_certs(path)
            .map_err(|e| anyhow::Error::new(e).context("profile-api.ca-file"))?;
    }
    // What `run` checks before it connects: the actions' secrets, URLs and CA files.
    event_trigger::actions::Actions::from_settings(&settings.actions, None)?;
    event_trigger::dataflows::prepared::check_local_inputs(&settings, events)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    // A warning, not a failure: the job this config is for may be running and holding
    // it, or be run on another host.
    if let Some((listen, explicit)) = settings.metrics.listen_addr()?
        && let Err(e) = std::net::TcpListener::bind(listen)
    {
        eprintln!("{}", metrics_warning(listen, explicit, &e));
    }
    println!(
        "{}: ok (filter {} compiles and reads only known names; {} warning{} on the built-in sample states)",
        config.display(),
        script_path.display(),
        warnings.len(),
        if warnings.len() == 1 { "" } else { "s" }
    );
    match events {
        Some(events) => test_rule(settings, events, show),
        None => Ok(()),
    }
}

fn metrics_listen_failed(listen: std::net::SocketAddr, e: &std::io::Error) -> anyhow::Error {
    let key = event_trigger::config::key_as_set("metrics.listen");
    anyhow::anyhow!(
        "{key}: cannot listen on {listen}: {e} (choose a free port or an address of this \
         machine, or \"\" for no metrics)"
    )
}

/// `validate`'s warning when `metrics.listen` cannot be listened on now.
fn metrics_warning(listen: std::net::SocketAddr, explicit: bool, e: &std::io::Error) -> String {
    let run = match explicit {
        true => "`run` fails to start",
        false => "`run` goes on without metrics",
    };
    if e.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "warning: metrics.listen: {listen} cannot be listened on now: {e}; {run} unless it \
             is free then (expected if a job running with this config holds it; \"\" serves no \
             metrics)"
        )
    } else {
        format!(
            "warning: metrics.listen: {listen} cannot be listened on here: {e}; {run} on this \
             machine (right only if the config is for another host)"
        )
    }
}

/// What a run whose every look-up or every action failed says after its summary: its
/// exit code is 0 (the events were handled: failures counted, dead-lettered), and the
/// counts alone were easy to miss.
fn nothing_worked(c: &event_trigger::counters::Counts, settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if c.fetched > 0 && c.fetch_errors >= c.fetched {
        out.push(format!(
            "every Profile API look-up failed ({} of {}): check profile-api.base-url ({}) and \
             the API's answers in the log above",
            c.fetch_errors,
            c.fetched,
            event_trigger::config::without_password(&settings.profile_api.base_url)
        ));
    }
    if c.actions_failed > 0 && c.actions_ok == 0 {
        out.push(format!(
            "every action failed ({} events' actions): check the receivers (actions.webhook.url) \
             and the failures in the log above{}",
            c.actions_failed,
            dead_letters_hold(c, settings)
        ));
    }
    out
}

/// Where the failed actions went, for `nothing_worked`: `; <the file or topic> holds
/// them (<n> records written ...)`, or nothing without dead letters.
fn dead_letters_hold(c: &event_trigger::counters::Counts, settings: &Settings) -> String {
    if c.dead_letters == 0 {
        return String::new();
    }
    // The count is of every record written, invalid messages' too.
    let invalid = if c.invalid > 0 {
        ", invalid messages included"
    } else {
        ""
    };
    let place = match (&settings.dead_letter.path, &settings.dead_letter.topic) {
        (Some(path), _) => format!("the dead-letter file {}", path.display()),
        (None, Some(topic)) => format!("the dead-letter topic {topic}"),
        (None, None) => "the dead letters".to_string(),
    };
    format!(
        "; {place} holds them ({} records written{invalid})",
        c.dead_letters
    )
}

/// The rule tester: the job itself over `events` (a file source, the config's
/// profiles), its actions turned into debug prints with their filters, their log off:
/// the counts are those `run` gives on this file, and nothing is called or written.
fn test_rule(mut settings: Settings, events: &Path, show: usize) -> anyhow::Result<()> {
    // A paced file source stays paced: cooldowns, caps, delays and the TTL follow
    // processing time, so a faster read gives other counts than `run`.
    if settings.source.kind != SourceType::File {
        settings.source.max_events_per_second = None;
    }
    settings.source.kind = SourceType::File;
    settings.source.path = Some(events.to_path_buf());
    // The tester reads the whole file from empty state and writes no checkpoint.
    settings.source.resume = false;
    if let Some(rate) = settings.source.max_events_per_second {
        println!(
            "reading {} at source.max-events-per-second ({rate} a second), as run does: \
             cooldowns, caps, delays and the TTL follow processing time",
            events.display()
        );
    }
    settings.dead_letter = Default::default();
    // `validate` has shown the rules' warnings.
    let mut prepared = Prepared::without_rule_warnings(&settings, true)?;
    let samples = prepared.test_rule(show);
    let runtime = tokio_runtime()?;
    let config = timely::Config::process(settings.engine.parallelism);
    let Some(summary) = trigger::run(prepared, config, runtime.handle().clone())? else {
        bail!("the run gave no summary");
    };
    let c = &summary.counts;
    println!(
        "rule test on {}: events={} invalid={} passed={} rejected={} script_errors={} looked_up={} lookup_failures={}",
        events.display(),
        c.events_read,
        c.invalid,
        c.passed,
        c.rejected,
        c.script_errors,
        c.fetched,
        c.fetch_errors
    );
    if c.scheduled + c.capped + c.timers_dropped > 0 {
        // Pending delayed actions fired at the end of the file, without waiting.
        println!(
            "actions' caps and delays: scheduled={} cancelled={} fired={} capped={} dropped={} (delayed actions pending at the end of the file are counted as fired)",
            c.scheduled, c.cancelled, c.fired, c.capped, c.timers_dropped
        );
    }
    if c.fetch_errors > 0 {
        // Judged on the empty state: a rule on the profile cannot pass them.
        println!(
            "warning: {} of {} look-ups failed (profile-api.base-url: {}); those users' events were judged without a profile",
            c.fetch_errors, c.fetched, settings.profile_api.base_url
        );
    }
    let (errors, passed) = samples.taken();
    print_list("script errors", c.script_errors, &errors);
    print_list("passing events", c.passed, &passed);
    let judged = judged(c);
    if let Some(alarm) = judged.alarm() {
        tracing::warn!("{alarm}");
    }
    if judged.all_failed() {
        return Err(RuleFailed(judged.script_errors).into());
    }
    Ok(())
}

/// `items`, the first of `total`, under a heading.
fn print_list(what: &str, total: u64, items: &[String]) {
    if items.is_empty() {
        return;
    }
    println!("first {} {what} of {total}:", items.len());
    for item in items {
        println!("  {item}");
    }
}

/// `service`: requests served at once (0: any) and the time each takes.
fn mock_api(
    profiles: &Path,
    listen: SocketAddr,
    log_webhooks: u64,
    service: (usize, std::time::Duration),
) -> anyhow::Result<()> {
    let api = MockApi::load(profiles, log_webhooks)?;
    let api = Arc::new(api.with_service(service.0, service.1));
    let runtime = tokio_runtime()?;
    runtime.block_on(async move {
        let users = api.users();
        let addr = api.serve(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!("mock-api serving {users} users on http://{addr} (webhooks at /webhook, counters at /stats)");
        if service.0 > 0 || !service.1.is_zero() {
            let slots = if service.0 == 0 { "any number".to_string() } else { service.0.to_string() };
            tracing::info!("a modest service: {slots} requests served at once, {:?} each, the rest queueing", service.1);
        }
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        Ok(())
    })
}

fn produce(
    topic: &str,
    partitions: i32,
    bootstrap_servers: Option<String>,
    config: &Path,
    file: &Path,
) -> anyhow::Result<()> {
    let mut kafka = if config.is_file() {
        Settings::load(config)?.kafka
    } else {
        Default::default()
    };
    if let Some(servers) = bootstrap_servers {
        kafka.bootstrap_servers = servers;
    }
    // The input first: a missing file is said at once, not after the broker's wait.
    let (total, input): (Option<u64>, Box<dyn std::io::BufRead>) = if file == Path::new("-") {
        (None, Box::new(std::io::stdin().lock()))
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
        (
            Some(f.metadata()?.len()),
            Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
        )
    };
    let runtime = tokio_runtime()?;
    runtime.block_on(event_trigger::kafka_client::ensure_topic(
        &kafka, topic, partitions,
    ))?;
    let started = std::time::Instant::now();
    // The bar follows bytes (the file's size is known, its line count is not).
    let progress = |p: event_trigger::kafka_client::Produced| {
        let n = p.messages;
        let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-3);
        match total {
            Some(t) if t > 0 => {
                let filled = ((p.bytes + n) * 30 / t).min(30) as usize;
                eprint!(
                    "\r[{}{}] {n} messages {:.0} msg/s ",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    rate
                );
            }
            _ => eprint!("\r{n} messages {:.0} msg/s ", rate),
        }
    };
    let done = event_trigger::kafka_client::produce(&kafka, topic, input, progress)?;
    eprintln!();
    println!(
        "produced {} messages ({} bytes) to {topic} in {:.2} s",
        done.messages,
        done.bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

const DEMO_EVENTS: &[u8] = include_bytes!("../config/demo/events.jsonl");
const DEMO_PROFILES: &[u8] = include_bytes!("../config/demo/profiles.jsonl");
const DEMO_FILTER: &str = "// Page views of users in the US.\nevent.event_type == \"page_view\" && user.country == \"US\"\n";

fn demo(threads: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let profiles = dir.path().join("profiles.jsonl");
    let script = dir.path().join("filter.rhai");
    std::fs::write(&profiles, DEMO_PROFILES)?;
    std::fs::write(&script, DEMO_FILTER)?;

    // librdkafka's in-process mock cluster stands in for Kafka.
    let cluster = rdkafka::mocking::MockCluster::new(1)
        .context("cannot start the in-process Kafka cluster")?;
    let mut settings = Settings::default();
    settings.source.kind = SourceType::Kafka;
    settings.kafka.bootstrap_servers = cluster.bootstrap_servers();
    settings.kafka.topic = "user-events".into();
    settings.kafka.consumer_group_id = "event-trigger-demo".into();
    settings.kafka.start_from = event_trigger::config::StartFrom::Earliest;
    // The demo's cluster lives as long as the demo: so do its checkpoints.
    let checkpoints = tempfile::tempdir().context("cannot create a checkpoint directory")?;
    settings.engine.checkpoint_dir = checkpoints.path().to_path_buf();
    cluster
        .create_topic(&settings.kafka.topic, 4, 1)
        .context("cannot create the demo topic")?;
    let produced = event_trigger::kafka_client::produce(
        &settings.kafka,
        &settings.kafka.topic,
        DEMO_EVENTS,
        |_| {},
    )?;
    tracing::info!(
        "demo: produced {} sample events to topic {} (4 partitions) on the in-process Kafka cluster",
        produced.messages,
        settings.kafka.topic
    );

    let runtime = tokio_runtime()?;
    let api = Arc::new(MockApi::load(&profiles, 3)?);
    let addr = runtime.block_on(api.clone().serve("127.0.0.1:0".parse()?))?;
    tracing::info!(
        "demo: Profile API and webhook receiver on http://{addr}, {} users",
        api.users()
    );

    settings.profile_api.base_url = format!("http://{addr}");
    settings.actions.webhook.url = format!("http://{addr}/webhook");
    settings.filter.script_path = script;
    tracing::info!(
        "demo: filter is: {}",
        DEMO_FILTER.lines().last().unwrap_or_default()
    );
    // Metrics on a port of the system's choice: a demo must not fail on a busy port.
    settings.metrics.listen = Some("127.0.0.1:0".into());
    serve_metrics(&settings, &runtime)?;
    let prepared = Prepared::new(&settings, true)?;
    let summary = trigger::run(
        prepared,
        timely::Config::process(threads),
        runtime.handle().clone(),
    )?;
    let received = api.webhooks.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(summary) = summary {
        println!("{summary}");
        println!(
            "demo: the webhook receiver got {received} calls; the Profile API answered {} requests",
            api.profile_requests
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        if summary.counts.passed != received {
            bail!(
                "{} events passed but {received} webhooks arrived",
                summary.counts.passed
            );
        }
    }
    Ok(())
}
