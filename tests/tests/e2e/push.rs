//! `--push`: profiles pushed at once to receivers speaking each protocol leaktrace speaks (no
//! Pyroscope, Parca or OpenTelemetry collector can be installed here): Grafana Pyroscope's push
//! API and its `/ingest` form, Parca's `WriteRaw` over gRPC (a tonic server), and OTLP
//! profiles over HTTP. Each decodes what arrived with the messages of the published protocol
//! and checks it holds the exact leak; pprof payloads are read by `go tool pprof`.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use leaktrace_tests::go_pprof;
use opentelemetry_proto::tonic::{
    collector::profiles::v1development::{
        ExportProfilesServiceRequest, ExportProfilesServiceResponse,
    },
    common::v1::any_value::Value,
};
use prost::Message as _;
use tonic::codegen::{BoxFuture, Service, http, tokio_stream::wrappers::TcpListenerStream};

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

/// Parca's `parca.profilestore.v1alpha1` messages, as its `profilestore.proto` publishes them.
mod parca {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct WriteRawRequest {
        #[prost(string, tag = "1")]
        pub(super) tenant: String,
        #[prost(message, repeated, tag = "2")]
        pub(super) series: Vec<RawProfileSeries>,
        #[prost(bool, tag = "3")]
        pub(super) normalized: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct WriteRawResponse {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct RawProfileSeries {
        #[prost(message, optional, tag = "1")]
        pub(super) labels: Option<LabelSet>,
        #[prost(message, repeated, tag = "2")]
        pub(super) samples: Vec<RawSample>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct LabelSet {
        #[prost(message, repeated, tag = "1")]
        pub(super) labels: Vec<Label>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Label {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(string, tag = "2")]
        pub(super) value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct RawSample {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) raw_profile: Vec<u8>,
    }
}

/// One request the HTTP receiver got: its path, the headers that matter and its body.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    content_type: String,
    tenant: String,
    authorization: String,
    body: Vec<u8>,
}

/// An HTTP receiver on loopback for Pyroscope's `POST /push.v1.PusherService/Push` (answering
/// an empty `PushResponse`) and `POST /ingest`, and OTLP's `POST /v1development/profiles`
/// (answering an `ExportProfilesServiceResponse` without rejections).
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
            let (body, content_type) = if received.path.starts_with("/v1development/profiles") {
                (
                    ExportProfilesServiceResponse::default().encode_to_vec(),
                    "application/x-protobuf",
                )
            } else {
                (Vec::new(), "application/proto")
            };
            sink.lock().unwrap().push(received);
            let response = tiny_http::Response::from_data(body).with_header(
                tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                    .unwrap(),
            );
            let _ = request.respond(response);
        }
    });
    (url, got)
}

/// What the gRPC receiver got: the request and its `authorization` metadata.
type WriteRaws = Arc<Mutex<Vec<(parca::WriteRawRequest, String)>>>;

/// A gRPC server for Parca's `ProfileStoreService/WriteRaw` (tonic does the framing and
/// HTTP/2; other methods get `UNIMPLEMENTED`).
#[derive(Clone)]
struct ParcaReceiver(WriteRaws);

impl Service<http::Request<tonic::body::Body>> for ParcaReceiver {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let got = Arc::clone(&self.0);
        Box::pin(async move {
            if request.uri().path() != "/parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw" {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let codec =
                tonic_prost::ProstCodec::<parca::WriteRawResponse, parca::WriteRawRequest>::default(
                );
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(WriteRaw(got), request).await)
        })
    }
}

/// The method itself: keeps the request and its `authorization`.
struct WriteRaw(WriteRaws);

impl tonic::server::UnaryService<parca::WriteRawRequest> for WriteRaw {
    type Response = parca::WriteRawResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<parca::WriteRawRequest>) -> Self::Future {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.0
            .lock()
            .unwrap()
            .push((request.into_inner(), authorization));
        std::future::ready(Ok(tonic::Response::new(parca::WriteRawResponse {})))
    }
}

/// Starts the gRPC receiver on loopback, on a thread and runtime of its own.
fn parca_receiver() -> (String, WriteRaws) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = WriteRaws::default();
    let service = ParcaReceiver(Arc::clone(&got));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .serve_with_incoming(service, TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    (url, got)
}

/// The form file `profile` of an `/ingest` request's multipart body.
fn form_file(received: &Received) -> Vec<u8> {
    let boundary = received
        .content_type
        .split("boundary=")
        .nth(1)
        .unwrap_or_else(|| panic!("no boundary: {}", received.content_type));
    let body = &received.body;
    let open = format!("--{boundary}\r\n");
    assert!(body.starts_with(open.as_bytes()));
    let part = &body[open.len()..];
    let headers_end = part.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&part[..headers_end]);
    assert!(headers.contains("name=\"profile\""), "{headers}");
    let close = format!("\r\n--{boundary}--");
    let content = &part[headers_end + 4..];
    let end = content
        .windows(close.len())
        .rposition(|w| w == close.as_bytes())
        .unwrap();
    content[..end].to_vec()
}

/// `go tool pprof -top` of a pushed profile's inuse_space: its `alloc_buffer` line.
fn alloc_buffer_line(raw_profile: &[u8], dir: &std::path::Path, name: &str) -> String {
    let profile = dir.join(name);
    std::fs::write(&profile, raw_profile).unwrap();
    let top = go_pprof(
        &[
            "-top",
            "-nodefraction=0",
            "-sample_index=inuse_space",
            profile.to_str().unwrap(),
        ],
        dir,
    );
    top.lines()
        .find(|l| l.contains("alloc_buffer"))
        .unwrap_or_else(|| panic!("{name}: {top}"))
        .to_owned()
}

/// Waits until `count()` reaches `n`.
fn wait_for(what: &str, n: usize, count: impl Fn() -> usize) {
    let start = Instant::now();
    while count() < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {} of {n} arrived",
            count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pushed_profiles_decode_in_every_protocol_with_the_exact_leak() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (url, got) = receiver();
    let (parca_url, write_raws) = parca_receiver();
    let tracer = Tracer::attach(
        target.pid,
        &[
            "--push",
            &url,
            "--push",
            &format!("pyroscope-ingest={url}"),
            "--push",
            &format!("parca={parca_url}"),
            "--push",
            &format!("otlp={url}"),
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
    // Two pushes after the leak to every server: the last ones hold it whole.
    let on = |prefix: &'static str| {
        let got = Arc::clone(&got);
        move || {
            got.lock()
                .unwrap()
                .iter()
                .filter(|r| r.path.starts_with(prefix))
                .count()
        }
    };
    let kinds = ["/push.v1", "/ingest", "/v1development"];
    let before: Vec<usize> = kinds.iter().map(|k| on(k)()).collect();
    let parca_before = write_raws.lock().unwrap().len();
    for (kind, seen) in kinds.iter().zip(&before) {
        wait_for(kind, seen + 2, on(kind));
    }
    wait_for("WriteRaw", parca_before + 2, || {
        write_raws.lock().unwrap().len()
    });
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    let received = got.lock().unwrap().clone();
    let last = |prefix: &str| {
        received
            .iter()
            .rev()
            .find(|r| r.path.starts_with(prefix))
            .cloned()
            .unwrap()
    };

    // Pyroscope's push API
    let push = last("/push.v1");
    assert_eq!(push.path, "/push.v1.PusherService/Push");
    assert_eq!(push.content_type, "application/proto");
    assert_eq!(push.tenant, "acme");
    assert_eq!(push.authorization, "Bearer s3cret");
    let request = PushRequest::decode(push.body.as_slice()).unwrap();
    assert_eq!(request.series.len(), 1);
    let series = &request.series[0];
    let labels: HashMap<&str, &str> = series
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    assert_eq!(labels["__name__"], "memory");
    assert_eq!(labels["env"], "test");
    assert_eq!(labels["pid"], target.pid.to_string());
    assert_eq!(labels["service_name"], "leaky-nofp");
    assert!(!labels["host"].is_empty());
    assert_eq!(series.samples.len(), 1);
    assert!(!series.samples[0].id.is_empty());
    let line = alloc_buffer_line(&series.samples[0].raw_profile, dir.path(), "push.pb.gz");
    assert!(
        line.contains("120KB") || line.contains("120kB"),
        "push: 30 x 4096 B = 120 KiB expected: {line}"
    );
    // The samples carry the verdict and allocator (`-tags`)
    let profile = dir.path().join("push.pb.gz");
    let tags = go_pprof(&["-tags", profile.to_str().unwrap()], dir.path());
    assert!(
        tags.contains("verdict") && tags.contains("allocator"),
        "{tags}"
    );

    // Pyroscope's /ingest
    let ingest = last("/ingest");
    assert!(ingest.content_type.starts_with("multipart/form-data"));
    assert_eq!(ingest.tenant, "acme");
    let query = ingest.path.split_once('?').unwrap().1;
    let params: HashMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    assert_eq!(params["format"], "pprof");
    assert_eq!(params["spyName"], "leaktrace");
    assert!(params["from"].parse::<u64>().unwrap() <= params["until"].parse::<u64>().unwrap());
    assert!(
        params["name"].starts_with("leaky-nofp%7B") && params["name"].contains("env%3Dtest"),
        "{}",
        params["name"]
    );
    let line = alloc_buffer_line(&form_file(&ingest), dir.path(), "ingest.pb.gz");
    assert!(
        line.contains("120KB") || line.contains("120kB"),
        "ingest: {line}"
    );

    // Parca's WriteRaw, over gRPC
    let (write_raw, authorization) = write_raws.lock().unwrap().last().cloned().unwrap();
    assert_eq!(authorization, "Bearer s3cret");
    assert_eq!(write_raw.tenant, "acme");
    assert!(!write_raw.normalized);
    let labels = &write_raw.series[0].labels.as_ref().unwrap().labels;
    assert!(
        labels
            .iter()
            .any(|l| l.name == "__name__" && l.value == "memory")
    );
    assert!(labels.iter().any(|l| l.name == "env" && l.value == "test"));
    let raw = &write_raw.series[0].samples[0].raw_profile;
    let line = alloc_buffer_line(raw, dir.path(), "parca.pb.gz");
    assert!(
        line.contains("120KB") || line.contains("120kB"),
        "parca: {line}"
    );

    // OTLP profiles over HTTP: the inuse_space profile's samples through alloc_buffer hold
    // exactly the leak
    let otlp = last("/v1development");
    assert_eq!(otlp.path, "/v1development/profiles");
    assert_eq!(otlp.content_type, "application/x-protobuf");
    assert_eq!(otlp.authorization, "Bearer s3cret");
    let export = ExportProfilesServiceRequest::decode(otlp.body.as_slice()).unwrap();
    let d = export.dictionary.as_ref().unwrap();
    let text = |i: i32| d.string_table[i as usize].as_str();
    let resource = export.resource_profiles[0].resource.as_ref().unwrap();
    let attribute = |key: &str| {
        resource
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.clone())
    };
    assert_eq!(
        attribute("service.name"),
        Some(Value::StringValue("leaky-nofp".into()))
    );
    assert_eq!(
        attribute("process.pid"),
        Some(Value::IntValue(i64::from(target.pid)))
    );
    let profiles = &export.resource_profiles[0].scope_profiles[0].profiles;
    let inuse = profiles
        .iter()
        .find(|p| text(p.sample_type.unwrap().type_strindex) == "inuse_space")
        .unwrap();
    let mut leak_bytes = 0;
    let mut verdicts = Vec::new();
    for sample in &inuse.samples {
        let stack = &d.stack_table[sample.stack_index as usize];
        let through_leak = stack.location_indices.iter().any(|l| {
            d.location_table[*l as usize].lines.iter().any(|line| {
                text(d.function_table[line.function_index as usize].name_strindex) == "alloc_buffer"
            })
        });
        if through_leak {
            leak_bytes += sample.values[0];
            for a in &sample.attribute_indices {
                let a = &d.attribute_table[*a as usize];
                if text(a.key_strindex) == "verdict" {
                    verdicts.push(a.value.clone());
                }
            }
        }
    }
    assert_eq!(leak_bytes, 30 * 4096, "otlp");
    assert!(!verdicts.is_empty(), "no verdict attribute");

    // Every push was delivered, none failed or dropped, and the report says so
    let report = done.report.unwrap();
    let diagnostics = &report["diagnostics"];
    assert!(num(diagnostics, "push_sent") >= 8, "{diagnostics}");
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
