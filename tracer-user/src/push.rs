//! `--push URL`: the live heap, every `--push-every`, as the pprof profile `--format pprof`
//! writes (sample types alloc and inuse objects and space), sent to Grafana Pyroscope through
//! its push API: `POST URL/push.v1.PusherService/Push`, a `push.v1.PushRequest` in the Connect
//! protocol's unary form (`Content-Type: application/proto`, the message as the body).
//!
//! Sending never holds up tracing: reports are encoded on the session's thread and handed to a
//! sender thread through a queue of [`QUEUE`] profiles; a full queue drops the new profile
//! (`push_dropped`). Each send is tried [`TRIES`] times with a doubling pause; a profile that
//! never got through is `push_failed`. Both are degraded counters, shown in the live view and
//! written to every export; `push_sent` counts the profiles delivered.
#![warn(missing_docs)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message as _;

use crate::{
    report::Report,
    source::{Health, HealthKind},
};

/// Profiles waiting to be sent at most.
pub const QUEUE: usize = 4;

/// Tries per profile and endpoint.
pub const TRIES: u32 = 3;

/// Pause before the first retry (then doubled).
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The messages of Grafana Pyroscope's push API (`push/v1/push.proto`, with `LabelPair` from
/// `types/v1/types.proto`), field numbers as published.
pub mod wire {
    /// `push.v1.PushRequest`: profiles with their series labels.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        /// `series = 1`.
        #[prost(message, repeated, tag = "1")]
        pub series: Vec<RawProfileSeries>,
    }

    /// `push.v1.RawProfileSeries`: one series' labels and its profiles.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawProfileSeries {
        /// `labels = 1`.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<LabelPair>,
        /// `samples = 2`.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<RawSample>,
    }

    /// `push.v1.RawSample`: one pprof profile.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawSample {
        /// `raw_profile = 1`: the (gzipped) pprof bytes.
        #[prost(bytes = "vec", tag = "1")]
        pub raw_profile: Vec<u8>,
        /// `ID = 2`: a unique id of the profile.
        #[prost(string, tag = "2")]
        pub id: String,
    }

    /// `types.v1.LabelPair`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct LabelPair {
        /// `name = 1`.
        #[prost(string, tag = "1")]
        pub name: String,
        /// `value = 2`.
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

/// Where and how profiles go.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Base URLs of Pyroscope servers (`http://host:4040`).
    pub urls: Vec<String>,
    /// Labels every series carries besides leaktrace's own (`--label k=v`).
    pub labels: Vec<(String, String)>,
    /// `X-Scope-OrgID`, for a multi-tenant server.
    pub tenant: Option<String>,
    /// A bearer token for `Authorization`.
    pub token: Option<String>,
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
    queue: SyncSender<wire::PushRequest>,
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
        let mut raw = Vec::new();
        if crate::export::pprof::write(report, &mut raw).is_err() {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.sequence += 1;
        let request = request(report, &self.labels, raw, self.sequence);
        match self.queue.try_send(request) {
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

/// The series labels leaktrace gives a report: the profile's name (`__name__="memory"`), the
/// service (`service_name`, the command's file name unless `--label service_name=...`), host,
/// pid and command; then the user's labels, which win over these.
pub fn series_labels(report: &Report, user: &[(String, String)]) -> Vec<wire::LabelPair> {
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
        .into_iter()
        .map(|(name, value)| wire::LabelPair { name, value })
        .collect()
}

/// The push request of one profile.
fn request(
    report: &Report,
    user: &[(String, String)],
    raw_profile: Vec<u8>,
    sequence: u64,
) -> wire::PushRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    wire::PushRequest {
        series: vec![wire::RawProfileSeries {
            labels: series_labels(report, user),
            samples: vec![wire::RawSample {
                raw_profile,
                id: format!("leaktrace-{}-{now:x}-{sequence}", report.pid),
            }],
        }],
    }
}

/// The sender thread: every queued request to every URL, with retries.
fn send_all(options: &Options, jobs: &Receiver<wire::PushRequest>, counters: &Counters) {
    for request in jobs {
        let body = request.encode_to_vec();
        for url in &options.urls {
            let endpoint = format!("{}/push.v1.PusherService/Push", url.trim_end_matches('/'));
            let mut pause = FIRST_PAUSE;
            let mut delivered = false;
            for attempt in 0..TRIES {
                if attempt > 0 {
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                let mut call = minreq::post(&endpoint)
                    .with_header("Content-Type", "application/proto")
                    .with_header("Connect-Protocol-Version", "1")
                    .with_header(
                        "User-Agent",
                        concat!("leaktrace/", env!("CARGO_PKG_VERSION")),
                    )
                    .with_timeout(TIMEOUT.as_secs())
                    .with_body(body.clone());
                if let Some(tenant) = &options.tenant {
                    call = call.with_header("X-Scope-OrgID", tenant);
                }
                if let Some(token) = &options.token {
                    call = call.with_header("Authorization", format!("Bearer {token}"));
                }
                if call
                    .send()
                    .is_ok_and(|response| (200..300).contains(&response.status_code))
                {
                    delivered = true;
                    break;
                }
            }
            let counter = if delivered {
                &counters.sent
            } else {
                &counters.failed
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
    fn a_request_carries_the_pprof_profile_and_the_labels() {
        let report = sample_report();
        let mut raw = Vec::new();
        crate::export::pprof::write(&report, &mut raw).expect("a profile");
        let user = vec![
            ("env".to_owned(), "prod".to_owned()),
            ("service_name".to_owned(), "relay".to_owned()),
        ];
        let sent = request(&report, &user, raw.clone(), 7);
        // The bytes on the wire decode to the same request
        let decoded = wire::PushRequest::decode(sent.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, sent);
        let series = &decoded.series[0];
        assert_eq!(series.samples[0].raw_profile, raw);
        assert!(series.samples[0].id.ends_with("-7"));
        let label = |name: &str| {
            series
                .labels
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.value.clone())
        };
        assert_eq!(label("__name__").as_deref(), Some("memory"));
        assert_eq!(
            label("service_name").as_deref(),
            Some("relay"),
            "the user's wins"
        );
        assert_eq!(label("env").as_deref(), Some("prod"));
        assert_eq!(label("pid"), Some(report.pid.to_string()));
        // And the profile is the export's
        let profile = crate::export::pprof::read(series.samples[0].raw_profile.as_slice())
            .expect("a profile");
        assert!(!profile.sample.is_empty());
    }

    #[test]
    fn an_unreachable_server_fails_counted_and_a_full_queue_drops_counted() {
        // A port nothing listens on
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port");
        let mut pusher = Pusher::start(Options {
            urls: vec![format!("http://{closed}")],
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
        while value("push_failed") == 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "never failed");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(value("push_sent"), 0);
    }
}
