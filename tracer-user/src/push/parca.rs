//! Parca (`parca=`): the gRPC call `parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw`,
//! which Parca Agent makes, over plain HTTP/2 (Parca listens on `http://host:7070`). One series
//! carries the series labels and the gzipped pprof bytes; `normalized` is false, as the
//! profile's addresses are the process's and its mappings say where each module was loaded.
//! The tenant goes in the request's `tenant` field, a bearer token in `authorization`.
//!
//! The messages are written with prost's derive from Parca's published
//! `parca/profilestore/v1alpha1/profilestore.proto` (field numbers as published); tonic
//! carries the call (gRPC framing, HTTP/2, status codes).

use std::collections::HashMap;

use tonic::{
    client::Grpc,
    codegen::http::uri::PathAndQuery,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use super::{Job, Options, Outcome, TIMEOUT, Target};

/// The method's path.
pub const WRITE_RAW: &str = "/parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw";

/// The messages of Parca's `profilestore.proto`.
pub mod wire {
    /// `WriteRawRequest`: profiles with their labels.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRawRequest {
        /// `tenant = 1` (deprecated by Parca, still read).
        #[prost(string, tag = "1")]
        pub tenant: String,
        /// `series = 2`.
        #[prost(message, repeated, tag = "2")]
        pub series: Vec<RawProfileSeries>,
        /// `normalized = 3`: whether addresses are already file-relative.
        #[prost(bool, tag = "3")]
        pub normalized: bool,
    }

    /// `WriteRawResponse`: empty.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRawResponse {}

    /// `RawProfileSeries`: one series' labels and its profiles.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawProfileSeries {
        /// `labels = 1`.
        #[prost(message, optional, tag = "1")]
        pub labels: Option<LabelSet>,
        /// `samples = 2`.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<RawSample>,
    }

    /// `LabelSet`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelSet {
        /// `labels = 1`.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
    }

    /// `Label`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Label {
        /// `name = 1`.
        #[prost(string, tag = "1")]
        pub name: String,
        /// `value = 2`.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `RawSample`: one pprof profile.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawSample {
        /// `raw_profile = 1`: the (gzipped) pprof bytes.
        #[prost(bytes = "vec", tag = "1")]
        pub raw_profile: Vec<u8>,
    }
}

/// The request of one profile.
pub fn request(job: &Job, raw_profile: &[u8], tenant: Option<&str>) -> wire::WriteRawRequest {
    wire::WriteRawRequest {
        tenant: tenant.unwrap_or_default().to_owned(),
        series: vec![wire::RawProfileSeries {
            labels: Some(wire::LabelSet {
                labels: job
                    .labels
                    .iter()
                    .map(|(name, value)| wire::Label {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            }),
            samples: vec![wire::RawSample {
                raw_profile: raw_profile.to_vec(),
            }],
        }],
        normalized: false,
    }
}

/// The gRPC client of the sender thread: a runtime of its own (made at the first call) and a
/// channel per server, connected on first use and again after a failure.
#[derive(Default)]
pub(super) struct Client {
    runtime: Option<tokio::runtime::Runtime>,
    channels: HashMap<String, Channel>,
}

impl Client {
    /// Sends `job` to `target`.
    pub(super) fn write_raw(
        &mut self,
        target: &Target,
        options: &Options,
        job: &Job,
        raw: &[u8],
    ) -> Outcome {
        if self.runtime.is_none() {
            self.runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok();
        }
        let Some(runtime) = &self.runtime else {
            return Outcome::Retry;
        };
        let message = request(job, raw, options.tenant.as_deref());
        let mut call = tonic::Request::new(message);
        call.set_timeout(TIMEOUT);
        if let Some(token) = &options.token {
            match MetadataValue::try_from(format!("Bearer {token}")) {
                Ok(value) => {
                    call.metadata_mut().insert("authorization", value);
                }
                Err(_) => return Outcome::Rejected,
            }
        }
        let channels = &mut self.channels;
        let outcome = runtime.block_on(async {
            let channel = match channels.get(&target.url) {
                Some(channel) => channel.clone(),
                None => {
                    let Ok(endpoint) = Endpoint::from_shared(target.url.clone()) else {
                        return Outcome::Rejected;
                    };
                    let channel = endpoint
                        .connect_timeout(TIMEOUT)
                        .timeout(TIMEOUT)
                        .user_agent(super::USER_AGENT)
                        .map(|e| e.connect_lazy());
                    let Ok(channel) = channel else {
                        return Outcome::Rejected;
                    };
                    channels.insert(target.url.clone(), channel.clone());
                    channel
                }
            };
            let mut grpc = Grpc::new(channel);
            if grpc.ready().await.is_err() {
                return Outcome::Retry;
            }
            let codec =
                tonic_prost::ProstCodec::<wire::WriteRawRequest, wire::WriteRawResponse>::default();
            match grpc
                .unary(call, PathAndQuery::from_static(WRITE_RAW), codec)
                .await
            {
                Ok(_) => Outcome::Delivered,
                Err(status) => match status.code() {
                    tonic::Code::InvalidArgument
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unimplemented => Outcome::Rejected,
                    _ => Outcome::Retry,
                },
            }
        });
        if !matches!(outcome, Outcome::Delivered) {
            // A fresh connection next time.
            self.channels.remove(&target.url);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::{export::pprof, export::tests::sample_report, push::job};

    #[test]
    fn a_write_raw_request_carries_the_profile_labels_and_tenant() {
        let report = sample_report();
        let job = job(&report, &[("env".into(), "prod".into())], 1).expect("a job");
        let raw = pprof::encode(&job.profile).expect("bytes");
        let sent = request(&job, &raw, Some("acme"));
        let decoded =
            wire::WriteRawRequest::decode(sent.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, sent);
        assert_eq!(decoded.tenant, "acme");
        assert!(!decoded.normalized);
        let series = &decoded.series[0];
        let labels = &series.labels.as_ref().expect("labels").labels;
        assert!(
            labels
                .iter()
                .any(|l| l.name == "__name__" && l.value == "memory")
        );
        assert!(labels.iter().any(|l| l.name == "env" && l.value == "prod"));
        assert_eq!(
            pprof::read(series.samples[0].raw_profile.as_slice()).expect("a profile"),
            job.profile
        );
    }
}
