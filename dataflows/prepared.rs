//! What a run needs, prepared once per process before the workers start (the rule
//! compiled and checked, the actions built, the input and the checkpoint to restore
//! found), so that bad settings fail before anything runs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};

use crate::actions::{Action, Actions, NamedAction};
use crate::checkpoint::manifest::{self, find_readable};
use crate::checkpoint::{CheckpointConfig, Restore};
use crate::clock::now_ms;
use crate::config::{CheckpointCompression, KafkaSettings, Settings, SourceType};
use crate::dead_letter::DeadLetters;
use crate::filter::reload::{FilterVersions, Filters};
use crate::filter::rules::Rules;
use crate::filter::samples::Samples;
use crate::filter::{Filter, FilterError, FilterLimits};
use crate::kafka_client::KafkaConfigError;
use crate::operators::user_state::UserStateConfig;
use crate::profile_api::ProfileSource;
use crate::shutdown::StopFlag;
use crate::sources::replay::ReplayFrom;
use crate::store::Backend;

/// Where events come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A JSONL file, a pipe, or standard input (`-`): read to its end, at most
    /// `max_per_s` lines a second when given; with `resume`, checkpointed and read on
    /// from the newest checkpoint.
    File {
        path: PathBuf,
        max_per_s: Option<f64>,
        resume: bool,
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
    /// Checkpoints to take (a Kafka source, or a file with `source.resume`: otherwise a
    /// file is read whole each run).
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
    /// Processes in the cluster (`-n`): with more than one, they check at start that
    /// they share the checkpoint directory (`checkpoint::cluster`).
    pub processes: usize,
}

impl Prepared {
    /// `bounded` makes a Kafka source finish at the end of its partitions (a file
    /// source always finishes at its end).
    pub fn new(settings: &Settings, bounded: bool) -> anyhow::Result<Prepared> {
        Self::build(settings, bounded, warn_all)
    }

    /// As `new`, for a caller that has shown the rules' warnings itself (`validate
    /// --events`): they are not logged a second time.
    pub fn without_rule_warnings(settings: &Settings, bounded: bool) -> anyhow::Result<Prepared> {
        Self::build(settings, bounded, drop)
    }

    fn build(
        settings: &Settings,
        bounded: bool,
        warn: fn(Vec<String>),
    ) -> anyhow::Result<Prepared> {
        let limits = FilterLimits {
            max_operations: settings.filter.max_operations,
        };
        let script_path = &settings.filter.script_path;
        let script = Filter::read(script_path)?;
        let script_origin = script_path.display().to_string();
        let specs = settings.actions.specs();
        warn(Rules::of_specs(&script, &script_origin, &specs, &limits).check()?);
        let profiles = ProfileSource::from_settings(&settings.profile_api)?;
        check_kafka_clients(settings)?;
        let dead_letters = open_dead_letters(settings)?;
        let actions = Actions::from_settings(&settings.actions, dead_letters.clone())?;
        let schedules = actions.schedules();
        let input = input(settings, bounded)?;
        let (checkpoints, restore) = checkpoints(settings, &input)?;
        check_file_restore(&input, restore.as_deref(), &settings.engine.checkpoint_dir)?;
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
                max_timers_per_user: settings.state.max_timers_per_user,
                schedules,
                fire_pending_at_end: false,
            },
            stop: StopFlag::default(),
            dead_letters,
            samples: None,
            processes: 1,
        })
    }

    /// The rule and the actions' filters compiled for one worker (each compiles its own
    /// copy: rhai's `Engine` is not `Send`); they were checked in `new`.
    pub fn compile_filters(&self) -> Result<Filters, FilterError> {
        Rules {
            script: &self.script,
            origin: &self.script_origin,
            action_filters: self.actions.filters(),
            cancels: self.actions.cancels(),
            limits: &self.limits,
        }
        .compile(self.filter_versions.clone(), self.samples.clone())
    }
}

/// A resumed file goes on only from a checkpoint of the same file (a regular one, at
/// least as long as the checkpoint's offset).
fn check_file_restore(
    input: &Input,
    restore: Option<&Restore>,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let Input::File {
        path, resume: true, ..
    } = input
    else {
        return Ok(());
    };
    let Some(len) = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
    else {
        bail!(
            "source.resume: {} is not a regular file, it cannot be read again from an offset: \
             drop source.resume",
            path.display()
        );
    };
    let Some(r) = restore else {
        return Ok(());
    };
    let here = std::fs::canonicalize(path)?;
    let Some(at) = &r.manifest.file else {
        bail!(
            "engine.checkpoint-dir: {} holds checkpoints of Kafka topic `{}`, not of the file {}: \
             give each job its own directory",
            dir.display(),
            r.manifest.topic,
            here.display()
        );
    };
    if at.path != here {
        bail!(
            "engine.checkpoint-dir: {} holds checkpoints of the file {}, not of {}: give each \
             job its own directory (or delete it to read the file from its start)",
            dir.display(),
            at.path.display(),
            here.display()
        );
    }
    if len < at.offset {
        bail!(
            "source.resume: {} is {len} bytes, shorter than the checkpoint's offset {} in {}: \
             not the file that was checkpointed (delete the checkpoints to read it from its start)",
            here.display(),
            at.offset,
            dir.display()
        );
    }
    // At the end of the file the last line may lack its line break; inside it, a line
    // must end just before the offset.
    if at.offset > 0 && at.offset < len && !line_break_before(&here, at.offset)? {
        bail!(
            "source.resume: {} has no line break before the checkpoint's offset {} in {}: not \
             the file that was checkpointed (delete the checkpoints to read it from its start)",
            here.display(),
            at.offset,
            dir.display()
        );
    }
    Ok(())
}

/// Whether the byte just before `offset` is a line break: a checkpoint of this file
/// ends after a whole line.
fn line_break_before(path: &std::path::Path, offset: u64) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset - 1))?;
    let mut byte = [0u8];
    file.read_exact(&mut byte)?;
    Ok(byte[0] == b'\n')
}

/// Logs the warnings of a rule check (errors on the sample states).
fn warn_all(warnings: Vec<String>) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// Where invalid messages and failed deliveries go: a file, a topic, or nowhere.
/// The settings of the Kafka clients the job will make, checked before any connects:
/// librdkafka's refusal of a property would otherwise come from the first client made,
/// with a secret's value in it.
fn check_kafka_clients(settings: &Settings) -> Result<(), KafkaConfigError> {
    if settings.source.kind == SourceType::Kafka {
        crate::sources::kafka::check_properties(&settings.kafka)?;
    }
    if settings.dead_letter.path.is_none() && settings.dead_letter.topic.is_some() {
        crate::dead_letter::check_properties(&settings.kafka)?;
    }
    Ok(())
}

fn open_dead_letters(settings: &Settings) -> anyhow::Result<Option<DeadLetters>> {
    Ok(
        match (&settings.dead_letter.path, &settings.dead_letter.topic) {
            (Some(path), _) => Some(DeadLetters::open(path)?),
            (None, Some(topic)) => Some(DeadLetters::kafka(&settings.kafka, topic)?),
            (None, None) => None,
        },
    )
}

/// The file a file source reads (`-`: standard input), which must exist.
fn file_source_path(settings: &Settings) -> anyhow::Result<std::path::PathBuf> {
    let path = settings
        .source
        .file_path()
        .map_err(|e| anyhow!("source.path: {e}"))?
        .to_path_buf();
    check_input_file("source.path", &path)?;
    Ok(path)
}

/// A file to read events from (`-`: standard input) exists and is not a directory;
/// `key` names where it was given.
fn check_input_file(key: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        return Ok(());
    }
    if !path.exists() {
        bail!("{key}: {}: no such file", path.display());
    }
    if path.is_dir() {
        bail!(
            "{key}: {}: is a directory, not a file of events",
            path.display()
        );
    }
    Ok(())
}

/// What `validate` checks beyond the rules, as `run` would at its start, without
/// calling anything: a `file://` profile snapshot reads, and the events to read (the
/// rule tester's `--events`, or a file source's file) are a file (a Kafka broker and
/// an HTTP Profile API are not contacted).
pub fn check_local_inputs(
    settings: &Settings,
    events: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    // In `run`'s order: the profiles, the Kafka clients' settings, then the input.
    ProfileSource::from_settings(&settings.profile_api)?;
    check_kafka_clients(settings)?;
    if let Some(path) = &settings.dead_letter.path
        && path.is_dir()
    {
        bail!(
            "dead-letter.path: {} is a directory: give a file (records are appended to it)",
            path.display()
        );
    }
    match events {
        Some(events) => check_input_file("--events", events)?,
        None if settings.source.kind == SourceType::File => {
            file_source_path(settings)?;
        }
        None => {}
    }
    check_checkpoint_dir(settings)
}

/// Where the job would checkpoint, if it does: written into, or created, there (making
/// nothing: `manifest::check_dir_as_is`). `run` asks before it contacts a broker, so that
/// a local mistake is not hidden behind (or after) a broker's error.
pub fn check_checkpoint_dir(settings: &Settings) -> anyhow::Result<()> {
    if checkpointed(settings) {
        manifest::check_dir_as_is(&settings.engine.checkpoint_dir).with_context(|| {
            let key = crate::config::key_as_set("engine.checkpoint-dir");
            format!("{key}: checkpoints cannot be written")
        })?;
    }
    Ok(())
}

/// The input `settings.source` names; a Kafka topic is asked for its partitions.
fn input(settings: &Settings, bounded: bool) -> anyhow::Result<Input> {
    Ok(match settings.source.kind {
        SourceType::File => {
            let path = file_source_path(settings)?;
            Input::File {
                path,
                max_per_s: settings.source.max_events_per_second,
                resume: settings.source.resume,
            }
        }
        SourceType::Kafka => Input::Kafka {
            settings: settings.kafka.clone(),
            partitions: crate::kafka_client::topic_partitions(&settings.kafka)?,
            bounded,
            replay: None,
            commit: true,
        },
    })
}

/// Whether the job checkpoints: a Kafka source or a resumable file, with an interval.
fn checkpointed(settings: &Settings) -> bool {
    let source = settings.source.kind == SourceType::Kafka || settings.source.resume;
    source && settings.engine.checkpoint_interval_ms > 0
}

/// The checkpoints to take (`checkpointed`) and the latest one to restore, which must be
/// of this job's topic and group.
fn checkpoints(
    settings: &Settings,
    input: &Input,
) -> anyhow::Result<(Option<CheckpointConfig>, Option<Arc<Restore>>)> {
    let mut checkpoints = checkpointed(settings).then(|| CheckpointConfig {
        dir: settings.engine.checkpoint_dir.clone(),
        interval_ms: settings.engine.checkpoint_interval_ms,
        retained: settings.engine.checkpoints_retained,
        floor_epoch: 0,
        full_every: settings.engine.checkpoint_full_every,
        compress: settings.engine.checkpoint_compression != CheckpointCompression::None,
        compress_deltas: settings.engine.checkpoint_compression == CheckpointCompression::Lz4,
    });
    let restore = checkpoints
        .as_ref()
        .map(|c| find_readable(&c.dir))
        .transpose()
        .context(
            "engine.checkpoint-dir: a checkpoint cannot be read: give the user the job runs \
             as access to it (skipped, the run would start over from an older one, or from \
             nothing, and repeat the actions since)",
        )?
        .flatten()
        .map(|r| {
            tracing::info!(
                epoch = r.manifest.epoch,
                users = r.manifest.users(),
                workers = r.manifest.workers,
                offsets = ?r.manifest.offsets,
                file_offset = r.manifest.file.as_ref().map(|f| f.offset),
                // In full, as the `checkpoints` line below.
                dir = %std::path::absolute(&r.dir).unwrap_or_else(|_| r.dir.clone()).display(),
                "found the latest complete checkpoint"
            );
            Arc::new(r)
        });
    if let Some(c) = &mut checkpoints {
        // In full: a relative directory is the working directory's, which the log
        // does not say.
        let dir = std::path::absolute(&c.dir).unwrap_or_else(|_| c.dir.clone());
        tracing::info!(
            dir = %dir.display(),
            interval_ms = c.interval_ms,
            full_every = c.full_every,
            compression = %settings.engine.checkpoint_compression.name(),
            "checkpoints"
        );
        let restored = restore.as_ref().map_or(0, |r| r.manifest.epoch);
        let floor = manifest::floor(&c.dir, restored, now_ms(), c.interval_ms);
        c.floor_epoch = floor.epoch;
        if restore.is_none() && floor.epoch > 0 {
            tracing::warn!(
                dir = %c.dir.display(),
                newest = floor.epoch,
                "no complete checkpoint to restore, only unfinished or damaged ones: the run starts with empty state, where its source starts without a checkpoint (a file from its start, Kafka where kafka.start-from says: with `committed`, the group's committed offsets)"
            );
        } else if floor.epoch > restored {
            tracing::info!(
                epoch = floor.epoch,
                "a checkpoint directory is newer than the checkpoint restored (unfinished, or skipped): this run's checkpoints are of later epochs"
            );
        }
        if let Some(ahead) = floor.ahead {
            tracing::warn!(
                epoch = ahead,
                dir = %c.dir.display(),
                "a checkpoint directory is more than an interval ahead of this clock (written by a host whose clock was ahead?): left alone; delete it unless its host's clock was right"
            );
        }
    }
    if let (Some(r), Input::Kafka { settings: k, .. }) = (&restore, input)
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
    Ok((checkpoints, restore))
}

impl Prepared {
    /// Makes this run a replay from `from`, with state starting empty (the checkpoint is
    /// not restored: its state is later than the replay's start); a `dry_run` prints
    /// what would be triggered instead of acting, and writes nothing: no checkpoint, no
    /// group offsets, no dead letters. A file source can have a dry run, not a replay.
    pub fn replay(&mut self, from: Option<ReplayFrom>, dry_run: bool) -> anyhow::Result<()> {
        match &mut self.input {
            Input::Kafka {
                replay,
                partitions,
                settings,
                ..
            } => {
                if let Some(ReplayFrom::Offsets(offsets)) = &from
                    && let Some(p) = offsets.keys().find(|&&p| p >= *partitions)
                {
                    bail!(
                        "--from-offset: partition {p}: topic `{}` has {partitions} partitions \
                         (0 to {})",
                        settings.topic,
                        *partitions - 1
                    );
                }
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
            self.read_file_whole();
            self.checkpoints = None;
            self.dead_letters = None;
            self.actions_as_prints();
            tracing::info!(
                "dry run: triggered events are printed, nothing is acted on or committed"
            );
        }
        Ok(())
    }

    /// Each action becomes a debug print (named as the action) with its own filter, caps,
    /// delay and cancel condition: what it prints is what the action would be given.
    fn actions_as_prints(&mut self) {
        let print = |a: &NamedAction| NamedAction {
            name: a.name.clone(),
            action: Action::Debug { pretty: false },
            filter: a.filter.clone(),
            schedule: a.schedule.clone(),
            cancel_if: a.cancel_if.clone(),
        };
        self.actions = Actions(self.actions.0.iter().map(print).collect());
    }

    /// A resumable file is read whole, from empty state, by a run that writes no
    /// checkpoint (a dry run, the rule tester): what it shows is the whole file's.
    fn read_file_whole(&mut self) {
        if let Input::File { resume, .. } = &mut self.input
            && *resume
        {
            *resume = false;
            if self.restore.take().is_some() {
                tracing::info!("the file is read from its start, state starts empty");
            }
        }
    }

    /// Makes this run the rule tester's (`validate --events`): each action becomes a
    /// debug print with its own filter, so that the rule and the actions' filters are
    /// judged and counted as in a real run while nothing is called, committed or
    /// written; the first `keep` script errors and passing events are kept.
    pub fn test_rule(&mut self, keep: usize) -> Samples {
        self.read_file_whole();
        self.checkpoints = None;
        self.dead_letters = None;
        if let Input::Kafka { commit, .. } = &mut self.input {
            *commit = false;
        }
        self.actions_as_prints();
        // What is pending at the end fires then: the tester shows it without waiting.
        self.state.fire_pending_at_end = true;
        let samples = Samples::new(keep);
        self.samples = Some(samples.clone());
        samples
    }
}
