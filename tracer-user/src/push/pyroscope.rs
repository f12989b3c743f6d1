//! Grafana Pyroscope's two ways in.
//!
//! - The push API (`pyroscope=`, the default): `POST URL/push.v1.PusherService/Push` in the
//!   Connect protocol's unary form (`Content-Type: application/proto`, a `push.v1.PushRequest`
//!   as the body): one series carrying the series labels and the gzipped pprof bytes.
//! - The `/ingest` API (`pyroscope-ingest=`), which older Pyroscope servers and the agents
//!   relaying to them speak: `POST URL/ingest?name=SERVICE{k=v,...}&from=&until=&format=pprof
//!   &spyName=leaktrace`, the profile as the form file `profile` of a `multipart/form-data`
//!   body. The sample types are `runtime/pprof`'s heap ones, which Pyroscope maps to its memory
//!   profile types without a `sample_type_config`. Label values are reduced to the characters
//!   the name's syntax allows (others become `_`); `command` is left out, as free text.

use prost::Message as _;

use super::{Job, Options, Outcome, Target, label, post, success};

/// The messages of Grafana Pyroscope's push API (`push/v1/push.proto`, with `LabelPair` from
/// `types/v1/types.proto`), written with prost's derive; field numbers as published.
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

/// The push request of one profile.
pub fn request(job: &Job, raw_profile: &[u8]) -> wire::PushRequest {
    wire::PushRequest {
        series: vec![wire::RawProfileSeries {
            labels: job
                .labels
                .iter()
                .map(|(name, value)| wire::LabelPair {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            samples: vec![wire::RawSample {
                raw_profile: raw_profile.to_vec(),
                id: job.id.clone(),
            }],
        }],
    }
}

/// Sends `job` through the push API.
pub(super) fn push(target: &Target, options: &Options, job: &Job, raw: &[u8]) -> Outcome {
    let url = format!("{}/push.v1.PusherService/Push", target.url);
    let call = post(&url, "application/proto", options)
        .with_header("Connect-Protocol-Version", "1")
        .with_body(request(job, raw).encode_to_vec());
    match success(call.send()) {
        Ok(_) => Outcome::Delivered,
        Err(_) => Outcome::Retry,
    }
}

/// The boundary of the ingest form (never found in a gzipped profile's first bytes, and the
/// parser looks for it only at line starts).
const BOUNDARY: &str = "leaktrace-profile-7c1e9a2f0b";

/// The `/ingest` URL of `job`, query included.
pub fn ingest_url(base: &str, job: &Job) -> String {
    let service = label(&job.labels, "service_name");
    let tags: Vec<String> = job
        .labels
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "__name__" | "service_name" | "command"))
        .map(|(name, value)| format!("{name}={}", tag_value(value)))
        .collect();
    let name = format!("{}{{{}}}", tag_value(service), tags.join(","));
    let until = job.time_ns / 1_000_000_000;
    let from = until.saturating_sub(job.duration_ns / 1_000_000_000);
    format!(
        "{base}/ingest?name={}&from={from}&until={until}&format=pprof&spyName=leaktrace",
        percent_encode(&name)
    )
}

/// The multipart body carrying the profile as the form file `profile`.
pub fn ingest_body(raw: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(raw);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Sends `job` to `/ingest`.
pub(super) fn ingest(target: &Target, options: &Options, job: &Job, raw: &[u8]) -> Outcome {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let call =
        post(&ingest_url(&target.url, job), &content_type, options).with_body(ingest_body(raw));
    match success(call.send()) {
        Ok(_) => Outcome::Delivered,
        // A 4xx is the server refusing this profile: trying again will not help.
        Err(status) if status.starts_with('4') => Outcome::Rejected,
        Err(_) => Outcome::Retry,
    }
}

/// A label value as the application name's syntax takes it.
fn tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `text` percent-encoded for a query string (RFC 3986 unreserved characters kept).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{export::pprof, export::tests::sample_report, push::job};

    #[test]
    fn a_push_request_carries_the_pprof_profile_and_the_labels() {
        let report = sample_report();
        let job = job(&report, &[("env".into(), "prod".into())], 3).expect("a job");
        let raw = pprof::encode(&job.profile).expect("bytes");
        let sent = request(&job, &raw);
        let decoded = wire::PushRequest::decode(sent.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, sent);
        let series = &decoded.series[0];
        assert_eq!(series.samples[0].raw_profile, raw);
        assert_eq!(series.samples[0].id, job.id);
        assert!(
            series
                .labels
                .iter()
                .any(|l| l.name == "env" && l.value == "prod")
        );
        let profile = pprof::read(series.samples[0].raw_profile.as_slice()).expect("a profile");
        assert_eq!(profile, job.profile);
    }

    #[test]
    fn the_ingest_url_names_the_service_and_its_tags() {
        let report = sample_report();
        let mut job = job(&report, &[("env".into(), "prod eu".into())], 1).expect("a job");
        job.time_ns = 1_700_000_060_000_000_000;
        job.duration_ns = 60_000_000_000;
        let url = ingest_url("http://p:4040", &job);
        let (path, query) = url.split_once('?').expect("a query");
        assert_eq!(path, "http://p:4040/ingest");
        let params: Vec<(&str, &str)> =
            query.split('&').filter_map(|p| p.split_once('=')).collect();
        let param = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(param("from"), Some("1700000000"));
        assert_eq!(param("until"), Some("1700000060"));
        assert_eq!(param("format"), Some("pprof"));
        let name = param("name").expect("a name");
        // `{`, `}`, `=` and `,` are encoded; the space in the value became `_`
        assert!(
            name.contains("%7Benv%3Dprod_eu%2C") || name.contains("%2Cenv%3Dprod_eu"),
            "{name}"
        );
        assert!(name.ends_with("%7D"), "{name}");
        assert!(!name.contains("command"), "{name}");
        assert!(name.contains(&format!("pid%3D{}", report.pid)), "{name}");
    }

    #[test]
    fn the_ingest_body_is_one_form_file() {
        let raw = [0x1f, 0x8b, 0, 1, 2, b'\r', b'\n', b'-', b'-'];
        let body = ingest_body(&raw);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{BOUNDARY}\r\n")));
        assert!(text.contains("name=\"profile\"; filename=\"profile.pprof\""));
        assert!(text.ends_with(&format!("\r\n--{BOUNDARY}--\r\n")));
        let start = body
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("headers end")
            + 4;
        assert_eq!(&body[start..start + raw.len()], raw);
    }
}
