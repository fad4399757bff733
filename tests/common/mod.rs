//! Real parts for the integration tests: HTTP servers on 127.0.0.1 (a Profile API with
//! per-user behaviour, a webhook receiver that records what it gets), a deterministic
//! workload, and runners for the job in-process and as processes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_trigger::config::{Settings, SourceType};
use event_trigger::counters::{Counts, Summary};
use event_trigger::dataflows::trigger::{self, Prepared};
use event_trigger::http_server::{self, reply};
use hyper::StatusCode;
use serde_json::{Value, json};

pub fn runtime() -> tokio::runtime::Runtime {
    // RUST_LOG=... shows the job's log under `cargo test -- --nocapture`.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What the test Profile API does for one user.
#[derive(Clone, Debug)]
pub enum Behaviour {
    Answer {
        profile: Value,
        visit: Value,
        history: Value,
    },
    /// Answers like `Answer`, after a delay.
    Slow {
        delay: Duration,
        profile: Value,
        visit: Value,
        history: Value,
    },
    Status(u16),
    Garbage,
    /// Answers `status` to the first `failures` requests of each kind, then as `then`.
    FailFirst {
        failures: usize,
        status: u16,
        then: Box<Behaviour>,
    },
}

impl Behaviour {
    /// Answers `profile` and `visit`, with an empty history.
    pub fn answer(profile: Value, visit: Value) -> Behaviour {
        Behaviour::Answer {
            profile,
            visit,
            history: json!([]),
        }
    }
}

/// A Profile API on 127.0.0.1; unknown users get 404. Records each request's user id
/// (percent-decoded) and what was asked.
pub struct ProfileApi {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<(String, String, Instant)>>>,
}

impl ProfileApi {
    pub fn start<K: Into<String>>(
        rt: &tokio::runtime::Runtime,
        users: impl IntoIterator<Item = (K, Behaviour)>,
    ) -> ProfileApi {
        let users: HashMap<String, Behaviour> =
            users.into_iter().map(|(k, b)| (k.into(), b)).collect();
        let users = Arc::new(users);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        // Requests so far by user and kind: counting them in `requests` took a scan of
        // every request per request, which slowed a long test's API to time-outs.
        let counts: Arc<Mutex<HashMap<(String, String), usize>>> = Arc::default();
        let handler = http_server::handler(move |req| {
            let users = users.clone();
            let log = log.clone();
            let counts = counts.clone();
            async move {
                let path = req.uri().path().to_string();
                let Some((id, what)) = path
                    .strip_prefix("/users/")
                    .and_then(|r| r.rsplit_once('/'))
                else {
                    return reply(StatusCode::NOT_FOUND, "{}");
                };
                let id = percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .to_string();
                log.lock()
                    .unwrap()
                    .push((id.clone(), what.to_string(), Instant::now()));
                let seen = {
                    let mut counts = counts.lock().unwrap();
                    let n = counts.entry((id.clone(), what.to_string())).or_insert(0);
                    *n += 1;
                    *n
                };
                let mut behaviour = users.get(&id);
                while let Some(Behaviour::FailFirst {
                    failures,
                    status,
                    then,
                }) = behaviour
                {
                    if seen <= *failures {
                        return reply(StatusCode::from_u16(*status).unwrap(), "busy");
                    }
                    behaviour = Some(then);
                }
                let pick = |p: &Value, v: &Value, h: &Value| match what {
                    "profile" => p.to_string(),
                    "visit" => v.to_string(),
                    _ => h.to_string(),
                };
                match behaviour {
                    None => reply(StatusCode::NOT_FOUND, "{}"),
                    Some(Behaviour::Answer {
                        profile,
                        visit,
                        history,
                    }) => reply(StatusCode::OK, pick(profile, visit, history)),
                    Some(Behaviour::Slow {
                        delay,
                        profile,
                        visit,
                        history,
                    }) => {
                        tokio::time::sleep(*delay).await;
                        reply(StatusCode::OK, pick(profile, visit, history))
                    }
                    Some(Behaviour::Status(code)) => {
                        reply(StatusCode::from_u16(*code).unwrap(), "oops")
                    }
                    Some(Behaviour::Garbage) => reply(StatusCode::OK, "<html>not json"),
                    Some(Behaviour::FailFirst { .. }) => unreachable!("unwrapped above"),
                }
            }
        });
        let addr = rt
            .block_on(http_server::serve("127.0.0.1:0".parse().unwrap(), handler))
            .unwrap();
        ProfileApi { addr, requests }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Look-ups per user (a look-up is three requests; counted by `profile`).
    pub fn lookups(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (id, what, _) in self.requests.lock().unwrap().iter() {
            if what == "profile" {
                *out.entry(id.clone()).or_insert(0) += 1;
            }
        }
        out
    }
}

/// One webhook call as received: the raw body and the headers the job sets.
pub struct RawCall {
    pub body: Bytes,
    pub idempotency_key: Option<String>,
    pub signature: Option<String>,
    pub ingested_at: Option<String>,
    /// When it arrived, ms since the epoch.
    pub arrived_ms: u64,
}

/// A webhook receiver on 127.0.0.1 that records every body, in arrival order.
pub struct Receiver {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<(Value, Instant)>>>,
    /// Per call: the raw body and its headers.
    pub raw: Arc<Mutex<Vec<RawCall>>>,
}

impl Receiver {
    pub fn start(rt: &tokio::runtime::Runtime) -> Receiver {
        Self::start_slow(rt, Duration::ZERO)
    }

    /// A receiver that takes `delay` to answer each call.
    pub fn start_slow(rt: &tokio::runtime::Runtime, delay: Duration) -> Receiver {
        Self::start_on(rt, "127.0.0.1:0".parse().unwrap(), delay)
    }

    /// A receiver listening on `addr`.
    pub fn start_on(rt: &tokio::runtime::Runtime, addr: SocketAddr, delay: Duration) -> Receiver {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let sink = bodies.clone();
        let raw_sink = raw.clone();
        let handler = http_server::handler(move |req| {
            let sink = sink.clone();
            let raw_sink = raw_sink.clone();
            async move {
                tokio::time::sleep(delay).await;
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from)
                };
                raw_sink.lock().unwrap().push(RawCall {
                    body: req.body().clone(),
                    idempotency_key: header("idempotency-key"),
                    signature: header("x-signature-256"),
                    ingested_at: header(event_trigger::actions::INGESTED_AT.as_str()),
                    arrived_ms: event_trigger::clock::now_ms(),
                });
                let ok = req
                    .headers()
                    .get("content-type")
                    .map(|v| v == "application/json")
                    .unwrap_or(false);
                let body: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
                if !ok || body.is_null() {
                    return reply(StatusCode::BAD_REQUEST, "{}");
                }
                sink.lock().unwrap().push((body, Instant::now()));
                reply(StatusCode::OK, Bytes::from_static(b"{}"))
            }
        });
        let addr = rt.block_on(http_server::serve(addr, handler)).unwrap();
        Receiver { addr, bodies, raw }
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    pub fn received(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    pub fn event_ids(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|(b, _)| {
                b["event"]["event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }
}

/// A port nobody listens on.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A deterministic workload: events (with some invalid lines) and the profiles of the
/// users the API knows, including ids that need percent-encoding.
pub struct Workload {
    pub lines: Vec<String>,
    /// user id -> (profile, visit, history)
    pub users: HashMap<String, (Value, Value, Value)>,
}

pub const ODD_IDS: &[&str] = &["a/b", "q?x=1&y", "100%", "ünï-cödé", "sp ace", "#frag"];

impl Workload {
    pub fn generate(events: usize, users: usize, seed: u64) -> Workload {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = move |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let ids: Vec<String> = (0..users)
            .map(|i| {
                if i < ODD_IDS.len() {
                    ODD_IDS[i].to_string()
                } else {
                    format!("user_{i:05}")
                }
            })
            .collect();
        let mut profiles = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            if i % 20 == 19 {
                continue; // unknown to the API
            }
            let country = ["US", "DE", "FR"][next(3) as usize];
            let history: Vec<Value> = (0..next(4))
                .map(|k| json!({"event_id": format!("h_{i}_{k}"), "event_name": "home_page", "event_type": "page_view", "timestamp": 1000 + k, "parameters": {"custom_params": {}, "utm_source": "g"}}))
                .collect();
            profiles.insert(
                id.clone(),
                (
                    json!({"user_id": id, "country": country, "city": "X", "language": "en", "continent": "EU", "timezone": "UTC"}),
                    json!({"uuid": format!("v{i}"), "timestamp": 5, "os": "Linux", "actions": next(10), "is_first_visit": false}),
                    Value::Array(history),
                ),
            );
        }
        let broken = [
            "",
            "not json",
            // Invalid even with Jackson's coercion: an array is never a string.
            r#"{"user_id": [7], "event_type": "click"}"#,
            "[]",
            r#"{"event_type":"click"}"#,
        ];
        let lines = (0..events)
            .map(|n| {
                if n % 97 == 13 {
                    return broken[n % broken.len()].to_string();
                }
                let user = &ids[next(users as u64) as usize];
                let et = ["page_view", "page_view", "click", "purchase"][next(4) as usize];
                json!({"event_id": format!("evt_{n:07}"), "user_id": user, "event_type": et, "event_name": "n",
                       "is_first_in_visit": next(10) == 0, "timestamp": 2000 + n, "duration": next(1000),
                       "parameters": {"custom_params": {"v": next(100)}, "utm_source": "google"}})
                .to_string()
            })
            .collect();
        Workload {
            lines,
            users: profiles,
        }
    }

    pub fn write_events(&self, dir: &Path) -> PathBuf {
        let path = dir.join("events.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        for l in &self.lines {
            writeln!(f, "{l}").unwrap();
        }
        path
    }

    pub fn write_profiles(&self, dir: &Path) -> PathBuf {
        let path = dir.join("profiles.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut ids: Vec<_> = self.users.keys().collect();
        ids.sort();
        for id in ids {
            let (p, v, h) = &self.users[id];
            writeln!(
                f,
                "{}",
                json!({"user_id": id, "profile": p, "visit": v, "history": h})
            )
            .unwrap();
        }
        path
    }

    pub fn behaviours(&self) -> HashMap<String, Behaviour> {
        self.users
            .iter()
            .map(|(id, (p, v, h))| {
                (
                    id.clone(),
                    Behaviour::Answer {
                        profile: p.clone(),
                        visit: v.clone(),
                        history: h.clone(),
                    },
                )
            })
            .collect()
    }

    /// Event ids the seed filter must pass, computed without the job: valid page views
    /// of users the API knows in the US.
    pub fn expected_us_page_views(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["user_id"].is_string() && e["event_type"] == "page_view")
            .filter(|e| {
                let uid = e["user_id"].as_str().unwrap();
                self.users
                    .get(uid)
                    .map(|(p, _, _)| p["country"] == "US")
                    .unwrap_or(false)
            })
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect();
        out.sort();
        out
    }

    pub fn invalid_lines(&self) -> u64 {
        self.lines
            .iter()
            .filter(|l| event_trigger::wire::decode(l.as_bytes()).is_err())
            .count() as u64
    }

    pub fn distinct_valid_users(&self) -> u64 {
        let mut ids: Vec<String> = self
            .lines
            .iter()
            .filter_map(|l| event_trigger::wire::decode(l.as_bytes()).ok())
            .map(|e| e.user_id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len() as u64
    }
}

pub const SEED_FILTER: &str = r#"event.eventType == "page_view" && user.country == "US""#;

/// A file-source run of `w` with the seed filter against a Profile API and a webhook
/// receiver of its own, both started here (keep them alive for the run).
pub fn served_job(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    w: &Workload,
) -> (ProfileApi, Receiver, Settings) {
    let events = w.write_events(dir);
    let api = ProfileApi::start(rt, w.behaviours());
    let receiver = Receiver::start(rt);
    let s = settings(dir, &events, &api.base_url(), &receiver.url(), SEED_FILTER);
    (api, receiver, s)
}

/// Settings for a file-source run in `dir`.
pub fn settings(
    dir: &Path,
    events: &Path,
    profiles_base: &str,
    webhook_url: &str,
    script: &str,
) -> Settings {
    let script_path = dir.join("filter.rhai");
    std::fs::write(&script_path, script).unwrap();
    let mut s = Settings::default();
    s.source.kind = SourceType::File;
    s.source.path = Some(events.to_path_buf());
    s.profile_api.base_url = profiles_base.to_string();
    s.profile_api.timeout_ms = 2000;
    // The tests of failed look-ups expect the original's empty checkpoint at once; the
    // tests of waiting after a failure set their own.
    s.profile_api.max_wait_on_failure_ms = 0;
    s.actions.webhook.url = webhook_url.to_string();
    s.actions.webhook.timeout_ms = 2000;
    s.filter.script_path = script_path;
    s.engine.checkpoint_dir = dir.join("checkpoints");
    s
}

/// Runs the job in this process with `workers` threads.
/// Writes `w`'s events and profiles to `dir`; settings that read those events, look
/// users up in the profiles as a `file://` snapshot, filter with `script` and POST to
/// `webhook`.
pub fn file_job(dir: &Path, w: &Workload, webhook: &str, script: &str) -> Settings {
    let events = w.write_events(dir);
    let profiles = w.write_profiles(dir);
    settings(
        dir,
        &events,
        &format!("file://{}", profiles.display()),
        webhook,
        script,
    )
}

pub fn run(settings: &Settings, workers: usize, rt: &tokio::runtime::Runtime) -> Counts {
    let prepared = Prepared::new(settings, true).unwrap();
    run_prepared(prepared, workers, rt)
}

pub fn run_prepared(prepared: Prepared, workers: usize, rt: &tokio::runtime::Runtime) -> Counts {
    let summary: Summary = trigger::run(
        prepared,
        timely::Config::process(workers),
        rt.handle().clone(),
    )
    .unwrap()
    .expect("worker 0 is in this process");
    assert_eq!(summary.final_checkpoint_error, None);
    summary.counts
}

/// Writes `settings` as a YAML config the binary can load.
pub fn write_config(dir: &Path, name: &str, s: &Settings, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let yaml = format!(
        "source:\n  type: file\n  path: \"{}\"\nprofile-api:\n  base-url: \"{}\"\n  timeout-ms: {}\nfilter:\n  script-path: \"{}\"\nactions:\n  webhook:\n    url: \"{}\"\n{}",
        s.source.path.as_ref().unwrap().display(),
        s.profile_api.base_url,
        s.profile_api.timeout_ms,
        s.filter.script_path.display(),
        s.actions.webhook.url,
        extra
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_event-trigger")
}

/// Starts `event-trigger run --config CONFIG EXTRA... -n N -p I -h HOSTS` as `processes`
/// processes on 127.0.0.1 (logging warnings, unless `env` sets `RUST_LOG`).
pub fn start_cluster(
    dir: &Path,
    config: &Path,
    extra: &[&str],
    processes: usize,
    env: &[(&str, &str)],
) -> Vec<Job> {
    start_cluster_of(dir, &vec![config; processes], extra, env)
}

/// A cluster of one process per config, the first config's being process 0.
pub fn start_cluster_of(
    dir: &Path,
    configs: &[&Path],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Vec<Job> {
    let members: Vec<(&Path, &[&str])> = configs.iter().map(|c| (*c, extra)).collect();
    start_members(dir, configs.len(), &members, env)
}

/// Starts the first processes of a cluster of `processes` on this host: `members[i]`,
/// process `i`, runs `run --config CONFIG ARGS...`.
pub fn start_members(
    dir: &Path,
    processes: usize,
    members: &[(&Path, &[&str])],
    env: &[(&str, &str)],
) -> Vec<Job> {
    let hosts = dir.join("hosts.txt");
    let lines: String = (0..processes)
        .map(|_| format!("127.0.0.1:{}\n", closed_port()))
        .collect();
    std::fs::write(&hosts, lines).unwrap();
    let n = processes.to_string();
    members
        .iter()
        .enumerate()
        .map(|(p, (config, args))| {
            std::process::Command::new(binary())
                .args(["run", "--config", config.to_str().unwrap()])
                .args(*args)
                .args([
                    "-n",
                    &n,
                    "-p",
                    &p.to_string(),
                    "-h",
                    hosts.to_str().unwrap(),
                ])
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map(Job::from)
                .unwrap()
        })
        .collect()
}

/// Runs a cluster (`start_cluster`) to its end and checks every process succeeded.
pub fn run_cluster(
    dir: &Path,
    config: &Path,
    extra: &[&str],
    processes: usize,
) -> Vec<std::process::Output> {
    let children = start_cluster(dir, config, extra, processes, &[]);
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outputs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    outputs
}

/// Runs the binary with `args` to its end and checks it succeeded.
pub fn run_ok<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let child = std::process::Command::new(binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_ok(child)
}

/// A running job whose piped output is read as it is written: a pipe nobody reads
/// fills at 64 KiB, and then the job's logging blocks, and with it a worker, until
/// something reads it (a test waiting for a checkpoint then waits forever).
pub struct Job {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl From<std::process::Child> for Job {
    fn from(mut child: std::process::Child) -> Job {
        fn drain(
            pipe: Option<impl std::io::Read + Send + 'static>,
        ) -> Option<std::thread::JoinHandle<Vec<u8>>> {
            pipe.map(|mut pipe| {
                std::thread::spawn(move || {
                    let mut read = Vec::new();
                    let _ = pipe.read_to_end(&mut read);
                    read
                })
            })
        }
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Job {
            child,
            stdout,
            stderr,
        }
    }
}

impl Job {
    /// Starts `command` (its output piped or not, as it says).
    pub fn spawn(command: &mut std::process::Command) -> Job {
        Job::from(command.spawn().unwrap())
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()
    }

    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the end, with all it wrote.
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        let status = self.child.wait()?;
        let read = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Ok(std::process::Output {
            status,
            stdout: read(self.stdout.take()),
            stderr: read(self.stderr.take()),
        })
    }
}

/// Waits for `job` at most `limit` (then kills it and fails: it hung), with its output.
pub fn wait_within(mut job: Job, limit: std::time::Duration) -> std::process::Output {
    let started = std::time::Instant::now();
    while job.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            job.kill().unwrap();
            let out = job.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    job.wait_with_output().unwrap()
}

/// Waits for `child` (with piped output) and checks it exited 0, showing its log if not.
pub fn wait_ok(child: impl Into<Job>) -> std::process::Output {
    let out = child.into().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends `signal` (`-TERM`, `-HUP`, ...) to the process `pid`, as a user would with
/// `kill`; whether it was delivered.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success()
}

/// Parses the summary line out of a run's standard output.
pub fn summary_of(stdout: &[u8]) -> Counts {
    let out = String::from_utf8_lossy(stdout);
    out.lines()
        .find_map(Summary::parse_counts)
        .unwrap_or_else(|| panic!("no summary in output: {out}"))
}

/// Serves `handler` on a free port of 127.0.0.1.
pub fn serve_on_loopback(
    rt: &tokio::runtime::Runtime,
    handler: event_trigger::http_server::Handler,
) -> SocketAddr {
    rt.block_on(event_trigger::http_server::serve(
        "127.0.0.1:0".parse().unwrap(),
        handler,
    ))
    .unwrap()
}

/// Checks dead letters against a run of `w` whose deliveries all failed: one letter per
/// passing event (`expected`, with the body it would have sent) and per invalid line of
/// the workload (with its bytes).
pub fn assert_dead_letters(
    letters: &[event_trigger::dead_letter::DeadLetter],
    w: &Workload,
    expected: &[String],
) {
    use event_trigger::dead_letter::Kind;
    let mut failed: Vec<String> = letters
        .iter()
        .filter(|l| l.kind == Kind::WebhookFailed)
        .map(|l| {
            let body: Value = serde_json::from_slice(&l.bytes()).unwrap();
            assert_eq!(body["userProfile"]["country"], "US");
            body["event"]["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    failed.sort();
    assert_eq!(failed, expected, "every failed delivery, with its body");
    let mut invalid: Vec<Vec<u8>> = letters
        .iter()
        .filter(|l| l.kind == Kind::InvalidMessage)
        .map(|l| l.bytes())
        .collect();
    let mut want: Vec<Vec<u8>> = w
        .lines
        .iter()
        .filter(|l| event_trigger::wire::decode(l.as_bytes()).is_err())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    invalid.sort();
    want.sort();
    assert_eq!(invalid, want, "every invalid message, as read");
}

/// A private CA (its PEM in `dir/ca.pem`) and a TLS acceptor with a certificate it signed
/// for 127.0.0.1 and localhost.
pub fn test_ca(dir: &Path) -> (PathBuf, tokio_rustls::TlsAcceptor) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "event-trigger test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca_file, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The users of a final checkpoint, each with its profile and its history's event ids,
/// sorted. A final checkpoint waits for the look-ups running: it holds no pending user.
pub type UserHistories = Vec<(String, event_trigger::model::Profile, Vec<String>)>;

pub fn histories(restore: &event_trigger::checkpoint::Restore) -> UserHistories {
    let mut users: UserHistories = restore
        .read_users()
        .unwrap()
        .into_iter()
        .map(|(u, saved)| {
            let event_trigger::model::SavedUser::State(s) = saved else {
                panic!("{u} is pending in a final checkpoint")
            };
            let ids = s
                .history
                .iter()
                .map(|h| h.event_id.unwrap_or_default().to_string())
                .collect();
            (u.to_string(), (*s.profile).clone(), ids)
        })
        .collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));
    users
}

/// The abandoned-cart scenario: `users` users add to their carts, then the even ones
/// buy. Its events (one per line, each user's in order) and its profiles (`file://`
/// base URL), written to `dir`.
pub struct Carts {
    pub lines: Vec<String>,
    pub profiles: String,
    pub users: usize,
}

impl Carts {
    pub fn write(dir: &Path, users: usize) -> Carts {
        let event = |u: usize, kind: &str| {
            json!({"event_id": format!("{kind}-c{u}"), "user_id": format!("c{u}"), "event_type": kind, "event_name": kind, "timestamp": 1000 + u, "parameters": {"sku": format!("sku-{u}")}})
            .to_string()
        };
        let mut lines: Vec<String> = (0..users).map(|u| event(u, "add_to_cart")).collect();
        lines.extend((0..users).step_by(2).map(|u| event(u, "purchase")));
        let path = dir.join("cart-profiles.jsonl");
        let profiles: String = (0..users)
            .map(|u| format!("{}\n", json!({"user_id": format!("c{u}"), "profile": {"country": "US"}, "visit": null, "history": []})))
            .collect();
        std::fs::write(&path, profiles).unwrap();
        Carts {
            lines,
            profiles: format!("file://{}", path.display()),
            users,
        }
    }

    /// The carts left without a purchase: the reminders due.
    pub fn abandoned(&self) -> Vec<String> {
        (1..self.users)
            .step_by(2)
            .map(|u| format!("add_to_cart-c{u}"))
            .collect()
    }

    /// An `actions:` list with the cart reminder: a webhook to `url`, `delay` after an
    /// `add_to_cart`, unless a purchase came first.
    pub fn reminder_yaml(url: &str, delay: &str) -> String {
        format!(
            "actions:\n  - type: webhook\n    name: cart-reminder\n    url: \"{url}\"\n    filter: 'event.event_type == \"add_to_cart\"'\n    delay: {delay}\n    cancel-if: 'event.event_type == \"purchase\"'\n"
        )
    }
}

/// `ids` sorted, without repeats.
pub fn distinct(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids.dedup();
    ids
}

/// A `mock-api` serving `profiles` on 127.0.0.1 as a modest service: `slots` requests at
/// once, each taking `service`, the rest queueing inside it; it serves what it took to
/// the end even when the caller gave up waiting (as a server with a thread per request).
pub fn modest_service(
    rt: &tokio::runtime::Runtime,
    profiles: &std::path::Path,
    slots: usize,
    service: Duration,
) -> (Arc<event_trigger::mock_api::MockApi>, String) {
    let api = event_trigger::mock_api::MockApi::load(profiles, 0)
        .unwrap()
        .with_service(slots, service);
    let api = Arc::new(api);
    let addr = rt
        .block_on(api.clone().serve("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    (api, format!("http://{addr}"))
}
