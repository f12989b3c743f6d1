//! `--push`: profiles pushed to a receiver speaking Grafana Pyroscope's push API (no Pyroscope
//! server can be installed here), decoded with the messages of its published `push.proto`, and
//! read by `go tool pprof`.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use leaktrace_tests::go_pprof;
use prost::Message as _;

use super::*;

/// `push.v1.PushRequest` (`series = 1`), as Pyroscope's `api/push/v1/push.proto` publishes it.
#[derive(Clone, PartialEq, prost::Message)]
struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    series: Vec<RawProfileSeries>,
}

/// `push.v1.RawProfileSeries` (`labels = 1`, `samples = 2`).
#[derive(Clone, PartialEq, prost::Message)]
struct RawProfileSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<RawSample>,
}

/// `push.v1.RawSample` (`raw_profile = 1`, `ID = 2`).
#[derive(Clone, PartialEq, prost::Message)]
struct RawSample {
    #[prost(bytes = "vec", tag = "1")]
    raw_profile: Vec<u8>,
    #[prost(string, tag = "2")]
    id: String,
}

/// `types.v1.LabelPair` (`name = 1`, `value = 2`).
#[derive(Clone, PartialEq, prost::Message)]
struct LabelPair {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// One request the receiver got: its path, the headers that matter and its body.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    content_type: String,
    tenant: String,
    authorization: String,
    body: Vec<u8>,
}

/// A receiver for `POST /push.v1.PusherService/Push` on loopback, answering as Pyroscope does
/// (an empty `PushResponse`).
fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let header = |name: &'static str| {
                request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv(name))
                    .map(|h| h.value.to_string())
                    .unwrap_or_default()
            };
            let mut received = Received {
                path: request.url().to_owned(),
                content_type: header("Content-Type"),
                tenant: header("X-Scope-OrgID"),
                authorization: header("Authorization"),
                body: Vec::new(),
            };
            let _ = request.as_reader().read_to_end(&mut received.body);
            sink.lock().unwrap().push(received);
            let response = tiny_http::Response::from_data(Vec::new()).with_header(
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/proto"[..])
                    .unwrap(),
            );
            let _ = request.respond(response);
        }
    });
    (url, got)
}

#[test]
fn pushed_profiles_decode_and_read_in_go_tool_pprof_with_the_exact_leak() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (url, got) = receiver();
    let tracer = Tracer::attach(
        target.pid,
        &[
            "--push",
            &url,
            "--push-every",
            "1s",
            "--label",
            "env=test",
            "--push-tenant",
            "acme",
            "--push-token-file",
            token.to_str().unwrap(),
        ],
    );
    target.cmd("leak 30 4096");
    target.cmd("churn 500");
    // Two pushes after the leak: the last one holds it whole.
    let seen = got.lock().unwrap().len();
    let start = Instant::now();
    while got.lock().unwrap().len() < seen + 2 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no pushes arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    let last = got.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.path, "/push.v1.PusherService/Push");
    assert_eq!(last.content_type, "application/proto");
    assert_eq!(last.tenant, "acme");
    assert_eq!(last.authorization, "Bearer s3cret");

    let request = PushRequest::decode(last.body.as_slice()).unwrap();
    assert_eq!(request.series.len(), 1);
    let series = &request.series[0];
    let label = |name: &str| {
        series
            .labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.clone())
            .unwrap_or_else(|| panic!("no {name} label: {:?}", series.labels))
    };
    assert_eq!(label("__name__"), "memory");
    assert_eq!(label("env"), "test");
    assert_eq!(label("pid"), target.pid.to_string());
    assert_eq!(label("service_name"), "leaky-nofp");
    assert!(!label("host").is_empty());
    assert_eq!(series.samples.len(), 1);
    assert!(!series.samples[0].id.is_empty());

    let profile = dir.path().join("pushed.pb.gz");
    std::fs::write(&profile, &series.samples[0].raw_profile).unwrap();
    let top = go_pprof(
        &[
            "-top",
            "-nodefraction=0",
            "-sample_index=inuse_space",
            profile.to_str().unwrap(),
        ],
        dir.path(),
    );
    let line = top
        .lines()
        .find(|l| l.contains("alloc_buffer"))
        .unwrap_or_else(|| panic!("{top}"));
    assert!(
        line.contains("120KB") || line.contains("120kB"),
        "30 x 4096 B = 120 KiB expected: {line}\n{top}"
    );

    // Every push was delivered, none failed or dropped, and the report says so
    let report = done.report.unwrap();
    let diagnostics = &report["diagnostics"];
    assert!(num(diagnostics, "push_sent") >= 2, "{diagnostics}");
    assert_eq!(num(diagnostics, "push_failed"), 0, "{diagnostics}");
    assert_eq!(num(diagnostics, "push_dropped"), 0, "{diagnostics}");
}

#[test]
fn a_push_server_that_is_down_is_counted_not_waited_for() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    // A port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tracer = Tracer::attach(
        target.pid,
        &["--push", &format!("http://{closed}"), "--push-every", "1s"],
    );
    target.cmd("leak 5 1000");
    std::thread::sleep(Duration::from_secs(6));
    target.cmd("leak 5 1000");
    let done = tracer.interrupt();
    let report = done.report.unwrap();
    // Tracing went on exactly, and the failed sends are counted
    assert_eq!(
        num(stack_from(&report, "alloc_buffer"), "live_bytes"),
        10_000
    );
    let diagnostics = &report["diagnostics"];
    assert!(num(diagnostics, "push_failed") >= 1, "{diagnostics}");
    assert_eq!(num(diagnostics, "push_sent"), 0, "{diagnostics}");
    // https is refused at once, with a hint
    let (status, _, stderr) =
        run_leaktrace(&["-p", "1", "--push", "https://pyroscope.example:4040"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plain http"), "{stderr}");
}
