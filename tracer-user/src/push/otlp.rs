//! The OpenTelemetry profiles signal (`otlp=`): `POST URL/v1development/profiles` with an
//! `ExportProfilesServiceRequest` as `application/x-protobuf` (OTLP/HTTP), the messages of the
//! `opentelemetry-proto` crate (`profiles` feature, the signal's v1development model).
//!
//! The pprof profile is carried over table by table: OTLP gives each sample type a profile of
//! its own, so one heap becomes four profiles (`alloc_objects`, `alloc_space`,
//! `inuse_objects`, `inuse_space`) sharing one dictionary of strings, mappings, locations,
//! functions, stacks and attributes (each table starting with its zero value, as the model
//! requires). Sample labels become attributes (`verdict`, `allocator`, `pid`, and `bytes` with
//! its unit); a mapping's GNU build id becomes `process.executable.build_id.gnu`. The series
//! labels are the resource's attributes, under OpenTelemetry's names where it has them
//! (`service.name`, `host.name`, `process.pid`, `process.command_line`); user labels keep
//! theirs. The response's `partial_success` is read: rejected profiles count as failed.

use std::collections::HashMap;

use opentelemetry_proto::tonic::{
    collector::profiles::v1development::{
        ExportProfilesServiceRequest, ExportProfilesServiceResponse,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    profiles::v1development::{
        Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
        ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
    },
    resource::v1::Resource,
};
use prost::Message as _;

use super::{Job, Options, Outcome, Target, post, success};
use crate::export::pprof::proto as pprof;

/// The path under the collector's base URL.
pub const PATH: &str = "/v1development/profiles";

/// Sends `job` to an OTLP/HTTP receiver.
pub(super) fn export(target: &Target, options: &Options, job: &Job) -> Outcome {
    let url = if target.url.ends_with(PATH) {
        target.url.clone()
    } else {
        format!("{}{PATH}", target.url)
    };
    let body = request(job).encode_to_vec();
    let call = post(&url, "application/x-protobuf", options).with_body(body);
    match success(call.send()) {
        Ok(response) => {
            let rejected = ExportProfilesServiceResponse::decode(response.as_bytes())
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_profiles);
            if rejected > 0 {
                Outcome::Rejected
            } else {
                Outcome::Delivered
            }
        }
        // 400, 401, 403, 404 and 413 will not change; 429 and 5xx may.
        Err(status) if status.starts_with('4') && !status.starts_with("429") => Outcome::Rejected,
        Err(_) => Outcome::Retry,
    }
}

/// The export request of one profile.
pub fn request(job: &Job) -> ExportProfilesServiceRequest {
    let mut d = Dictionary::new(&job.profile);
    let source = &job.profile;
    let stacks: Vec<i32> = source.sample.iter().map(|s| d.stack(s)).collect();
    let attributes: Vec<Vec<i32>> = source.sample.iter().map(|s| d.labels(s)).collect();
    let period_type = source.period_type.map(|t| d.value_type(t));
    let profiles = source
        .sample_type
        .iter()
        .enumerate()
        .map(|(index, ty)| Profile {
            sample_type: Some(d.value_type(*ty)),
            samples: source
                .sample
                .iter()
                .zip(&stacks)
                .zip(&attributes)
                .filter_map(|((sample, stack), attributes)| {
                    let value = *sample.value.get(index)?;
                    Some(Sample {
                        stack_index: *stack,
                        attribute_indices: attributes.clone(),
                        link_index: 0,
                        values: vec![value],
                        timestamps_unix_nano: Vec::new(),
                    })
                })
                .collect(),
            time_unix_nano: job.time_ns,
            duration_nano: job.duration_ns,
            period_type,
            period: source.period,
            profile_id: profile_id(job, index),
            dropped_attributes_count: 0,
            original_payload_format: String::new(),
            original_payload: Vec::new(),
            attribute_indices: Vec::new(),
        })
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: Some(Resource {
                attributes: resource_attributes(&job.labels),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "leaktrace".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                profiles,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
        dictionary: Some(d.finish()),
    }
}

/// A 16-byte id, unique per job and sample type (never all zeroes).
fn profile_id(job: &Job, index: usize) -> Vec<u8> {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(&job.id, index), &mut hasher);
    let high = std::hash::Hasher::finish(&hasher);
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&high.to_be_bytes());
    id.extend_from_slice(&(job.time_ns | 1).to_be_bytes());
    id
}

/// The resource's attributes: the series labels under OpenTelemetry's names.
fn resource_attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|(name, _)| name != "__name__")
        .map(|(name, value)| {
            let (key, value) = match name.as_str() {
                "service_name" => ("service.name", Value::StringValue(value.clone())),
                "host" => ("host.name", Value::StringValue(value.clone())),
                "pid" => (
                    "process.pid",
                    value
                        .parse()
                        .map_or_else(|_| Value::StringValue(value.clone()), Value::IntValue),
                ),
                "command" => ("process.command_line", Value::StringValue(value.clone())),
                other => (other, Value::StringValue(value.clone())),
            };
            KeyValue {
                key: key.to_owned(),
                value: Some(AnyValue { value: Some(value) }),
                key_strindex: 0,
            }
        })
        .collect()
}

/// The dictionary being built from one pprof profile; indices are `i32`, as OTLP's are.
struct Dictionary<'a> {
    source: &'a pprof::Profile,
    strings: Vec<String>,
    string_index: HashMap<String, i32>,
    mappings: Vec<Mapping>,
    mapping_index: HashMap<u64, i32>,
    locations: Vec<Location>,
    location_index: HashMap<u64, i32>,
    functions: Vec<Function>,
    function_index: HashMap<u64, i32>,
    attributes: Vec<KeyValueAndUnit>,
    stacks: Vec<Stack>,
    stack_index: HashMap<Vec<i32>, i32>,
}

/// `len` as the next index of a table.
fn next(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

impl<'a> Dictionary<'a> {
    fn new(source: &'a pprof::Profile) -> Self {
        Dictionary {
            source,
            strings: vec![String::new()],
            string_index: HashMap::from([(String::new(), 0)]),
            mappings: vec![Mapping::default()],
            mapping_index: HashMap::new(),
            locations: vec![Location::default()],
            location_index: HashMap::new(),
            functions: vec![Function::default()],
            function_index: HashMap::new(),
            attributes: vec![KeyValueAndUnit::default()],
            stacks: vec![Stack::default()],
            stack_index: HashMap::new(),
        }
    }

    fn finish(self) -> ProfilesDictionary {
        ProfilesDictionary {
            mapping_table: self.mappings,
            location_table: self.locations,
            function_table: self.functions,
            link_table: vec![Link::default()],
            string_table: self.strings,
            attribute_table: self.attributes,
            stack_table: self.stacks,
        }
    }

    /// The index of a string of the pprof profile's table.
    fn pprof_string(&mut self, index: i64) -> i32 {
        let text = usize::try_from(index)
            .ok()
            .and_then(|i| self.source.string_table.get(i))
            .cloned()
            .unwrap_or_default();
        self.string(&text)
    }

    fn string(&mut self, text: &str) -> i32 {
        if let Some(&index) = self.string_index.get(text) {
            return index;
        }
        let index = next(self.strings.len());
        self.strings.push(text.to_owned());
        self.string_index.insert(text.to_owned(), index);
        index
    }

    fn value_type(&mut self, ty: pprof::ValueType) -> ValueType {
        ValueType {
            type_strindex: self.pprof_string(ty.r#type),
            unit_strindex: self.pprof_string(ty.unit),
        }
    }

    fn attribute(&mut self, key: &str, value: Value, unit: i32) -> i32 {
        let key_strindex = self.string(key);
        let entry = KeyValueAndUnit {
            key_strindex,
            value: Some(AnyValue { value: Some(value) }),
            unit_strindex: unit,
        };
        if let Some(index) = self.attributes.iter().position(|a| *a == entry) {
            return next(index);
        }
        self.attributes.push(entry);
        next(self.attributes.len() - 1)
    }

    /// A sample's labels as attribute indices.
    fn labels(&mut self, sample: &pprof::Sample) -> Vec<i32> {
        sample
            .label
            .iter()
            .map(|label| {
                let key = usize::try_from(label.key)
                    .ok()
                    .and_then(|i| self.source.string_table.get(i))
                    .cloned()
                    .unwrap_or_default();
                if label.str != 0 {
                    let text = usize::try_from(label.str)
                        .ok()
                        .and_then(|i| self.source.string_table.get(i))
                        .cloned()
                        .unwrap_or_default();
                    self.attribute(&key, Value::StringValue(text), 0)
                } else {
                    let unit = self.pprof_string(label.num_unit);
                    self.attribute(&key, Value::IntValue(label.num), unit)
                }
            })
            .collect()
    }

    fn stack(&mut self, sample: &pprof::Sample) -> i32 {
        let locations: Vec<i32> = sample
            .location_id
            .iter()
            .map(|id| self.location(*id))
            .collect();
        if let Some(&index) = self.stack_index.get(&locations) {
            return index;
        }
        let index = next(self.stacks.len());
        self.stacks.push(Stack {
            location_indices: locations.clone(),
        });
        self.stack_index.insert(locations, index);
        index
    }

    fn location(&mut self, id: u64) -> i32 {
        if let Some(&index) = self.location_index.get(&id) {
            return index;
        }
        let Some(source) = self.source.location.iter().find(|l| l.id == id) else {
            return 0;
        };
        let mapping_index = self.mapping(source.mapping_id);
        let lines = source
            .line
            .iter()
            .map(|line| Line {
                function_index: self.function(line.function_id),
                line: line.line,
                column: 0,
            })
            .collect();
        let index = next(self.locations.len());
        self.locations.push(Location {
            mapping_index,
            address: source.address,
            lines,
            attribute_indices: Vec::new(),
        });
        self.location_index.insert(id, index);
        index
    }

    fn mapping(&mut self, id: u64) -> i32 {
        if id == 0 {
            return 0;
        }
        if let Some(&index) = self.mapping_index.get(&id) {
            return index;
        }
        let Some(source) = self.source.mapping.iter().find(|m| m.id == id).copied() else {
            return 0;
        };
        let mut attribute_indices = Vec::new();
        if source.build_id != 0 {
            let build_id = usize::try_from(source.build_id)
                .ok()
                .and_then(|i| self.source.string_table.get(i))
                .cloned()
                .unwrap_or_default();
            attribute_indices.push(self.attribute(
                "process.executable.build_id.gnu",
                Value::StringValue(build_id),
                0,
            ));
        }
        let index = next(self.mappings.len());
        let filename_strindex = self.pprof_string(source.filename);
        self.mappings.push(Mapping {
            memory_start: source.memory_start,
            memory_limit: source.memory_limit,
            file_offset: source.file_offset,
            filename_strindex,
            attribute_indices,
        });
        self.mapping_index.insert(id, index);
        index
    }

    fn function(&mut self, id: u64) -> i32 {
        if let Some(&index) = self.function_index.get(&id) {
            return index;
        }
        let Some(source) = self.source.function.iter().find(|f| f.id == id).copied() else {
            return 0;
        };
        let function = Function {
            name_strindex: self.pprof_string(source.name),
            system_name_strindex: self.pprof_string(source.system_name),
            filename_strindex: self.pprof_string(source.filename),
            start_line: source.start_line,
        };
        let index = next(self.functions.len());
        self.functions.push(function);
        self.function_index.insert(id, index);
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{export::tests::sample_report, push::job};

    /// Each sample of `profile` as (function names leaf first, value, attributes as text).
    fn samples(
        request: &ExportProfilesServiceRequest,
        profile: &Profile,
    ) -> Vec<(Vec<String>, i64, Vec<String>)> {
        let d = request.dictionary.as_ref().expect("a dictionary");
        let text = |i: i32| d.string_table[usize::try_from(i).expect("index")].clone();
        let mut out: Vec<_> = profile
            .samples
            .iter()
            .map(|s| {
                let stack = &d.stack_table[usize::try_from(s.stack_index).expect("index")];
                let names = stack
                    .location_indices
                    .iter()
                    .flat_map(|l| &d.location_table[usize::try_from(*l).expect("index")].lines)
                    .map(|line| {
                        let f = &d.function_table[usize::try_from(line.function_index).expect("i")];
                        text(f.name_strindex)
                    })
                    .collect();
                let attributes = s
                    .attribute_indices
                    .iter()
                    .map(|a| {
                        let a = &d.attribute_table[usize::try_from(*a).expect("index")];
                        format!("{}={:?}", text(a.key_strindex), a.value)
                    })
                    .collect();
                (names, s.values[0], attributes)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_otlp_profiles_hold_the_pprof_samples_one_profile_per_sample_type() {
        let report = sample_report();
        let job = job(&report, &[("env".into(), "prod".into())], 1).expect("a job");
        let request = request(&job);
        // The wire form decodes to the same
        let decoded = ExportProfilesServiceRequest::decode(request.encode_to_vec().as_slice())
            .expect("decodes");
        assert_eq!(decoded, request);
        let d = request.dictionary.as_ref().expect("a dictionary");
        // Every table starts with its zero value
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.mapping_table[0], Mapping::default());
        assert_eq!(d.location_table[0], Location::default());
        assert_eq!(d.function_table[0], Function::default());
        assert_eq!(d.stack_table[0], Stack::default());
        assert_eq!(d.attribute_table[0], KeyValueAndUnit::default());
        let scope = &request.resource_profiles[0].scope_profiles[0];
        let types: Vec<String> = scope
            .profiles
            .iter()
            .map(|p| {
                d.string_table
                    [usize::try_from(p.sample_type.expect("a type").type_strindex).expect("i")]
                .clone()
            })
            .collect();
        assert_eq!(
            types,
            [
                "alloc_objects",
                "alloc_space",
                "inuse_objects",
                "inuse_space"
            ]
        );
        // inuse_space per stack equals the pprof profile's, stack and labels alike
        let source = &job.profile;
        let name = |i: i64| source.string_table[usize::try_from(i).expect("i")].clone();
        let mut expected: Vec<(Vec<String>, i64, usize)> = source
            .sample
            .iter()
            .map(|s| {
                let names = s
                    .location_id
                    .iter()
                    .flat_map(|id| {
                        &source
                            .location
                            .iter()
                            .find(|l| l.id == *id)
                            .expect("a location")
                            .line
                    })
                    .map(|line| {
                        name(
                            source
                                .function
                                .iter()
                                .find(|f| f.id == line.function_id)
                                .expect("f")
                                .name,
                        )
                    })
                    .collect();
                (names, s.value[3], s.label.len())
            })
            .collect();
        expected.sort();
        let got = samples(&request, &scope.profiles[3]);
        assert_eq!(got.len(), expected.len());
        for ((names, value, attributes), (e_names, e_value, e_labels)) in got.iter().zip(&expected)
        {
            assert_eq!((names, value), (e_names, e_value));
            assert_eq!(attributes.len(), *e_labels, "{attributes:?}");
        }
        assert!(
            got.iter()
                .any(|(_, _, a)| a.iter().any(|a| a.starts_with("verdict="))),
            "{got:?}"
        );
        // The resource says whose heap it is
        let resource = request.resource_profiles[0]
            .resource
            .as_ref()
            .expect("a resource");
        let keys: Vec<&str> = resource.attributes.iter().map(|a| a.key.as_str()).collect();
        for key in [
            "service.name",
            "host.name",
            "process.pid",
            "process.command_line",
            "env",
        ] {
            assert!(keys.contains(&key), "{keys:?}");
        }
        assert!(scope.profiles.iter().all(|p| p.profile_id.len() == 16));
    }
}
