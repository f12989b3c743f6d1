//! `--push [KIND=]URL`: the live heap, every `--push-every`, as the pprof profile
//! `--format pprof` writes (sample types alloc and inuse objects and space, samples labelled
//! with their `verdict` and `allocator`), sent to the profiling servers fleets run:
//!
//! | KIND | server | request |
//! |---|---|---|
//! | `pyroscope` (default) | Grafana Pyroscope | `POST URL/push.v1.PusherService/Push`, a `push.v1.PushRequest` in Connect's unary form ([`pyroscope`]) |
//! | `pyroscope-ingest` | Pyroscope, older servers and agents' relays | `POST URL/ingest?name=...&format=pprof`, the profile as a form file ([`pyroscope`]) |
//! | `parca` | Parca | the gRPC call `parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw` ([`parca`]) |
//! | `otlp` | an OpenTelemetry collector | `POST URL/v1development/profiles`, an OTLP `ExportProfilesServiceRequest` ([`otlp`]) |
//!
//! Sending never holds up tracing: the profile is built on the session's thread and handed to
//! a sender thread through a queue of [`QUEUE`] profiles; a full queue drops the new profile
//! (`push_dropped`). Each send is tried [`TRIES`] times with a doubling pause; a profile that
//! never got through (or that the server said it rejected) is `push_failed`. Both are degraded
//! counters, shown in the live view and written to every export; `push_sent` counts the
//! profiles delivered, one per profile and server.
#![warn(missing_docs)]

pub mod otlp;
pub mod parca;
pub mod pyroscope;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    export::pprof,
    report::Report,
    source::{Health, HealthKind},
};

/// Profiles waiting to be sent at most.
pub const QUEUE: usize = 4;

/// Tries per profile and server.
pub const TRIES: u32 = 3;

/// Pause before the first retry (then doubled).
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("leaktrace/", env!("CARGO_PKG_VERSION"));

/// The protocol a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Grafana Pyroscope's push API (Connect).
    Pyroscope,
    /// Pyroscope's `/ingest` HTTP API.
    PyroscopeIngest,
    /// Parca's `WriteRaw` (gRPC).
    Parca,
    /// The OTLP profiles signal over HTTP.
    Otlp,
}

impl Protocol {
    /// Every protocol with its name on the command line.
    pub const ALL: [(Protocol, &'static str); 4] = [
        (Protocol::Pyroscope, "pyroscope"),
        (Protocol::PyroscopeIngest, "pyroscope-ingest"),
        (Protocol::Parca, "parca"),
        (Protocol::Otlp, "otlp"),
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        Protocol::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map_or("pyroscope", |(_, name)| name)
    }
}

/// One server to push to: `--push [KIND=]URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What it speaks.
    pub protocol: Protocol,
    /// Its base URL, `http://host:port` (no trailing `/`).
    pub url: String,
}

impl Target {
    /// Parses `[KIND=]URL`; an error is one line with a hint.
    pub fn parse(text: &str) -> Result<Target, String> {
        let (protocol, url) = match text.split_once('=') {
            Some((kind, url)) if !kind.contains(':') && !kind.contains('/') => {
                let protocol = Protocol::ALL
                    .iter()
                    .find(|(_, name)| *name == kind)
                    .map(|(p, _)| *p)
                    .ok_or_else(|| {
                        let kinds: Vec<_> = Protocol::ALL.iter().map(|(_, n)| *n).collect();
                        format!("`{kind}` is not a push kind ({})", kinds.join(", "))
                    })?;
                (protocol, url)
            }
            _ => (Protocol::Pyroscope, text),
        };
        if url.starts_with("https://") {
            return Err(format!(
                "`{url}`: this build pushes over plain http only; push through a local agent or TLS proxy"
            ));
        }
        match url.strip_prefix("http://") {
            Some(rest) if !rest.is_empty() => Ok(Target {
                protocol,
                url: url.trim_end_matches('/').to_owned(),
            }),
            _ => Err(format!(
                "`{url}` is not an http:// URL (e.g. http://pyroscope:4040, parca=http://parca:7070)"
            )),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.protocol.name(), self.url)
    }
}

/// Where and how profiles go.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The servers.
    pub targets: Vec<Target>,
    /// Labels every series carries besides leaktrace's own (`--label k=v`).
    pub labels: Vec<(String, String)>,
    /// The tenant: `X-Scope-OrgID` for Pyroscope and OTLP, the request's `tenant` for Parca.
    pub tenant: Option<String>,
    /// A bearer token for `Authorization`.
    pub token: Option<String>,
}

/// One profile on its way: what every protocol needs of it.
#[derive(Clone, Debug)]
pub struct Job {
    /// The profile, as `--format pprof` writes it (checked).
    pub profile: pprof::proto::Profile,
    /// Its series labels ([`series_labels`]).
    pub labels: Vec<(String, String)>,
    /// A unique id: `leaktrace-PID-TIME-SEQUENCE`.
    pub id: String,
    /// When it was taken, nanoseconds since the epoch.
    pub time_ns: u64,
    /// The traced duration it covers, in nanoseconds.
    pub duration_ns: u64,
}

/// What the sender thread counts.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The pusher: a queue and the thread emptying it.
#[derive(Debug)]
pub struct Pusher {
    queue: SyncSender<Job>,
    counters: Arc<Counters>,
    labels: Vec<(String, String)>,
    sequence: u64,
}

impl Pusher {
    /// Starts the sender thread.
    pub fn start(options: Options) -> std::io::Result<Pusher> {
        let (queue, jobs) = sync_channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let sending = Arc::clone(&counters);
        let labels = options.labels.clone();
        std::thread::Builder::new()
            .name("push".into())
            .spawn(move || send_all(&options, &jobs, &sending))?;
        Ok(Pusher {
            queue,
            counters,
            labels,
            sequence: 0,
        })
    }

    /// Queues `report`'s profile; never waits (a full queue drops it, counted).
    pub fn offer(&mut self, report: &Report) {
        self.sequence += 1;
        let Some(job) = job(report, &self.labels, self.sequence) else {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Its counters.
    pub fn health(&self) -> Vec<Health> {
        vec![
            Health::new(
                "push_sent",
                self.counters.sent.load(Ordering::Relaxed),
                HealthKind::Info,
            ),
            Health::new(
                "push_failed",
                self.counters.failed.load(Ordering::Relaxed),
                HealthKind::Degraded,
            ),
            Health::new(
                "push_dropped",
                self.counters.dropped.load(Ordering::Relaxed),
                HealthKind::Degraded,
            ),
        ]
    }
}

/// The job of `report`, or `None` if its profile is not valid (a bug, counted as failed).
pub fn job(report: &Report, user: &[(String, String)], sequence: u64) -> Option<Job> {
    let profile = pprof::profile(report);
    pprof::check(&profile).ok()?;
    let time_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Some(Job {
        duration_ns: u64::try_from(profile.duration_nanos).unwrap_or(0),
        profile,
        labels: series_labels(report, user),
        id: format!("leaktrace-{}-{time_ns:x}-{sequence}", report.pid),
        time_ns,
    })
}

/// The series labels leaktrace gives a report: the profile's name (`__name__="memory"`), the
/// service (`service_name`, the command's file name unless `--label service_name=...`), host,
/// pid and command; then the user's labels, which win over these. Each sample also carries
/// its `verdict` and `allocator` as labels of the profile itself.
pub fn series_labels(report: &Report, user: &[(String, String)]) -> Vec<(String, String)> {
    let program = report
        .command
        .split_whitespace()
        .next()
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .unwrap_or("unknown");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut labels: Vec<(String, String)> = vec![
        ("__name__".into(), "memory".into()),
        ("service_name".into(), program.to_owned()),
        ("host".into(), host),
        ("pid".into(), report.pid.to_string()),
        (
            "command".into(),
            crate::export::one_line(&report.command).into_owned(),
        ),
    ];
    for (name, value) in user {
        match labels.iter_mut().find(|(n, _)| n == name) {
            Some(label) => label.1.clone_from(value),
            None => labels.push((name.clone(), value.clone())),
        }
    }
    labels
}

/// The value of label `name`, or `""`.
fn label<'a>(labels: &'a [(String, String)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

/// An HTTP request with the headers every protocol sends.
fn post(url: &str, content_type: &str, options: &Options) -> minreq::Request {
    let mut call = minreq::post(url)
        .with_header("Content-Type", content_type)
        .with_header("User-Agent", USER_AGENT)
        .with_timeout(TIMEOUT.as_secs());
    if let Some(tenant) = &options.tenant {
        call = call.with_header("X-Scope-OrgID", tenant);
    }
    if let Some(token) = &options.token {
        call = call.with_header("Authorization", format!("Bearer {token}"));
    }
    call
}

/// A response's status as an error unless it is 2xx.
fn success(response: Result<minreq::Response, minreq::Error>) -> Result<minreq::Response, String> {
    match response {
        Ok(response) if (200..300).contains(&response.status_code) => Ok(response),
        Ok(response) => Err(format!(
            "{} {}",
            response.status_code, response.reason_phrase
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// What a send came to.
enum Outcome {
    /// The server has it.
    Delivered,
    /// Worth trying again (the server could not be reached, or failed).
    Retry,
    /// The server answered that it will not take this profile: no retry.
    Rejected,
}

/// The sender thread: every queued job to every server, with retries.
fn send_all(options: &Options, jobs: &Receiver<Job>, counters: &Counters) {
    let mut parca = parca::Client::default();
    for job in jobs {
        // The pprof bytes, once for every server that takes them.
        let raw = match pprof::encode(&job.profile) {
            Ok(raw) => raw,
            Err(_) => {
                counters.failed.fetch_add(
                    u64::try_from(options.targets.len()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                continue;
            }
        };
        for target in &options.targets {
            let mut pause = FIRST_PAUSE;
            let mut outcome = Outcome::Retry;
            for attempt in 0..TRIES {
                if attempt > 0 {
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                outcome = match target.protocol {
                    Protocol::Pyroscope => pyroscope::push(target, options, &job, &raw),
                    Protocol::PyroscopeIngest => pyroscope::ingest(target, options, &job, &raw),
                    Protocol::Parca => parca.write_raw(target, options, &job, &raw),
                    Protocol::Otlp => otlp::export(target, options, &job),
                };
                if !matches!(outcome, Outcome::Retry) {
                    break;
                }
            }
            let counter = match outcome {
                Outcome::Delivered => &counters.sent,
                Outcome::Retry | Outcome::Rejected => &counters.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::sample_report;

    #[test]
    fn targets_parse_with_and_without_a_kind() {
        assert_eq!(
            Target::parse("http://pyro:4040/").expect("parses"),
            Target {
                protocol: Protocol::Pyroscope,
                url: "http://pyro:4040".into()
            }
        );
        for (protocol, name) in Protocol::ALL {
            let target = Target::parse(&format!("{name}=http://h:1")).expect("parses");
            assert_eq!(target.protocol, protocol);
            assert_eq!(target.url, "http://h:1");
            assert_eq!(target.to_string(), format!("{name}=http://h:1"));
        }
        // A query's `=` is not a kind
        assert_eq!(
            Target::parse("http://h:1/x?a=b").expect("parses").protocol,
            Protocol::Pyroscope
        );
        let err = Target::parse("pyro=http://h:1").expect_err("refused");
        assert!(err.contains("parca"), "{err}");
        assert!(
            Target::parse("https://h")
                .expect_err("refused")
                .contains("plain http")
        );
        assert!(
            Target::parse("otlp=h:4318")
                .expect_err("refused")
                .contains("http://")
        );
        assert!(Target::parse("http://").is_err());
    }

    #[test]
    fn a_job_carries_the_checked_profile_and_the_labels() {
        let report = sample_report();
        let user = vec![
            ("env".to_owned(), "prod".to_owned()),
            ("service_name".to_owned(), "relay".to_owned()),
        ];
        let job = job(&report, &user, 7).expect("a valid profile");
        assert_eq!(job.profile, pprof::profile(&report));
        assert!(job.id.ends_with("-7"));
        assert_eq!(label(&job.labels, "__name__"), "memory");
        assert_eq!(
            label(&job.labels, "service_name"),
            "relay",
            "the user's wins"
        );
        assert_eq!(label(&job.labels, "env"), "prod");
        assert_eq!(label(&job.labels, "pid"), report.pid.to_string());
        assert!(job.time_ns > 0);
    }

    #[test]
    fn an_unreachable_server_fails_counted_and_a_full_queue_drops_counted() {
        // A port nothing listens on
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port");
        let mut pusher = Pusher::start(Options {
            targets: Protocol::ALL
                .iter()
                .map(|(protocol, _)| Target {
                    protocol: *protocol,
                    url: format!("http://{closed}"),
                })
                .collect(),
            ..Options::default()
        })
        .expect("a thread");
        let report = sample_report();
        for _ in 0..(QUEUE + 4) {
            pusher.offer(&report);
        }
        let value = |name: &str| {
            pusher
                .health()
                .iter()
                .find(|h| h.name == name)
                .map_or(0, |h| h.value)
        };
        assert!(value("push_dropped") >= 1, "{:?}", pusher.health());
        let start = std::time::Instant::now();
        // One failure per server for the first profile
        while value("push_failed") < 4 {
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "never failed: {:?}",
                pusher.health()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(value("push_sent"), 0);
    }
}
