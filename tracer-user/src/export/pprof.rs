//! pprof export: a gzipped `profile.proto`, for `go tool pprof` and every tool that reads it.
//!
//! ```text
//! go tool pprof -top heap.pb.gz                       # by live bytes (the default sample type)
//! go tool pprof -sample_index=alloc_space -top heap.pb.gz
//! go tool pprof -http=: heap.pb.gz                    # flame graph in a browser
//! go tool pprof -top -base before.pb.gz after.pb.gz   # what grew between two exports
//! ```
//!
//! - Sample types as `runtime/pprof` writes them for a heap profile, in its order:
//!   `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count`, `inuse_space/bytes`; the
//!   default is `inuse_space`. So `go tool pprof -base` subtracts a leaktrace export from a Go
//!   program's own heap profile, or the other way round. The period type is `space/bytes`; the
//!   period is 1 when every allocation is counted, else the mean bytes between samples (a Go
//!   heap's `MemProfileRate`, or `--sample-bytes`): the values are then estimates.
//! - One sample per stack with the values `[total_allocs, total_bytes, live_allocs,
//!   live_bytes]`, its locations leaf first (`frames[0]` first), and the labels `verdict`,
//!   `allocator` and, as `runtime/pprof` writes, the numeric label `bytes` (mean allocation
//!   size, unit bytes). A stack without frames gets one `[no stack]` location so its bytes
//!   still show.
//! - One location per return address: a run of `inlined` frames and the non-inlined frame after
//!   it share an address and become one location whose lines run innermost first, as pprof
//!   expects. Locations and functions are deduplicated.
//! - Functions are named by the frame's function, their file name is the frame's source file.
//!   A frame without a function in a known module becomes a location without lines, which
//!   pprof shows under its mapping's name (`[memcached]`) and a profiling server can symbolize
//!   from the build id; one in no known module is named `[unknown]`.
//! - One mapping per loaded module: its file name, its GNU build id, and an address range
//!   (from the lowest to the highest address the report has in it) with the file offset of its
//!   start, from the frames' file offsets, so a profiling server can symbolize later what
//!   leaktrace could not.
//!   `has_functions` is set where every location of the mapping was named; a mapping with
//!   unnamed frames (a stripped binary without debug files) leaves it clear so a server
//!   symbolizes it. `has_filenames`, `has_line_numbers` and `has_inline_frames` say whether any
//!   of the module's frames had them.
//! - Rows a report left out (`--top`) become one sample at a `[N more stacks]` location, with a
//!   comment, so totals still add up.
//! - `duration_nanos` is the trace duration; `time_nanos` is 0 (the report has no start time).
//!   Comments carry the pid and command, the unwinder, and lost events when there were any.
//!
//! The messages are written by hand with `prost`'s derive ([`proto`]); field tags are those of
//! pprof's `profile.proto`. [`profile`] builds the message and checks it the way pprof's
//! `CheckValid` does before anything is written.
#![warn(missing_docs)]

use std::{
    collections::HashMap,
    io::{self, Read, Write},
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message as _;

use self::proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use crate::report::{Frame, Report, StackReport};
use std::sync::Arc;

/// Sample types as `(type, unit)`, in sample value order: `runtime/pprof`'s heap profile's, so
/// `go tool pprof -base` can subtract one from the other.
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// Index of the default sample type (`inuse_space`) in [`SAMPLE_TYPES`].
const DEFAULT_SAMPLE_TYPE: usize = 3;

/// Function name of the location standing in for a stack without frames.
pub const NO_STACK: &str = "[no stack]";

/// Function name of a frame with neither a function nor a module.
pub const UNKNOWN: &str = "[unknown]";

/// The subset of pprof's `profile.proto` leaktrace writes, with the official field tags.
pub mod proto {
    /// A profile: every table and the samples referring to them.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        /// What each sample value means.
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        /// The samples.
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        /// Object files the locations are in.
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        /// Code locations (return addresses).
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        /// Functions the locations' lines are in.
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        /// Every string, referred to by index; index 0 is `""`.
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        /// Regex of frames to drop (string index).
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        /// Regex of frames to keep (string index).
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        /// Collection time, nanoseconds since the epoch (0: unknown).
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        /// Collection duration in nanoseconds.
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        /// What one unit of `period` is.
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        /// Events between samples.
        #[prost(int64, tag = "12")]
        pub period: i64,
        /// Free-form comments (string indices).
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        /// The sample type shown by default (string index of its type).
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    /// A type and a unit, both string indices.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct ValueType {
        /// String index of the type, e.g. `inuse_space`.
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        /// String index of the unit, e.g. `bytes`.
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    /// A stack and its values.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Location ids, leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        /// One value per sample type.
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        /// Labels.
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    /// A sample label: a string or a number under a key.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct Label {
        /// String index of the key.
        #[prost(int64, tag = "1")]
        pub key: i64,
        /// String index of the value, or 0.
        #[prost(int64, tag = "2")]
        pub str: i64,
        /// Numeric value.
        #[prost(int64, tag = "3")]
        pub num: i64,
        /// String index of `num`'s unit.
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    /// An object file mapped into the process.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct Mapping {
        /// Unique non-zero id.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// Start address (0: unknown).
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        /// End address, exclusive (0: unknown).
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        /// File offset of `memory_start`.
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        /// String index of the file's path.
        #[prost(int64, tag = "5")]
        pub filename: i64,
        /// String index of the build id.
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        /// The locations in this mapping carry functions.
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        /// ... file names.
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        /// ... line numbers.
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        /// ... inlined frames.
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    /// A code address and the source lines it stands for.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        /// Unique non-zero id.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// Id of its mapping, or 0.
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        /// The address in the process.
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Lines, innermost (inlined callees) first, the function holding the address last.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        /// Several addresses folded into this location.
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    /// A function and a line in it.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
    pub struct Line {
        /// Id of the function.
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        /// Source line, or 0.
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    /// A function.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct Function {
        /// Unique non-zero id.
        #[prost(uint64, tag = "1")]
        pub id: u64,
        /// String index of its (demangled) name.
        #[prost(int64, tag = "2")]
        pub name: i64,
        /// String index of its name as the system knows it.
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        /// String index of its source file.
        #[prost(int64, tag = "4")]
        pub filename: i64,
        /// First line of the function, or 0.
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// A profile that pprof would reject, as found by [`check`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid pprof profile: {reason}")]
pub struct InvalidProfile {
    /// What is wrong.
    pub reason: String,
}

/// Writes `report` as a gzipped pprof profile. Fails with [`io::ErrorKind::InvalidData`] if the
/// profile built is not valid (a bug), before writing anything.
pub fn write<W: Write>(report: &Report, mut out: W) -> io::Result<()> {
    let profile = profile(report);
    check(&profile).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    out.write_all(&encode(&profile)?)?;
    out.flush()
}

/// The gzipped bytes of `profile` (checked or not: see [`check`]).
pub fn encode(profile: &Profile) -> io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

/// Reads a gzipped (or plain) profile, as [`write()`] writes it.
pub fn read<R: Read>(mut input: R) -> io::Result<Profile> {
    let mut raw = Vec::new();
    input.read_to_end(&mut raw)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        GzDecoder::new(raw.as_slice()).read_to_end(&mut plain)?;
        plain
    } else {
        raw
    };
    Profile::decode(bytes.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The profile of `report` (see the module documentation for its layout).
pub fn profile(report: &Report) -> Profile {
    let mut b = Builder::default();
    let sample_type: Vec<ValueType> = SAMPLE_TYPES
        .iter()
        .map(|(ty, unit)| ValueType {
            r#type: b.string(ty),
            unit: b.string(unit),
        })
        .collect();
    let default_sample_type = sample_type.get(DEFAULT_SAMPLE_TYPE).map_or(0, |t| t.r#type);
    let period_type = Some(ValueType {
        r#type: b.string("space"),
        unit: b.string("bytes"),
    });
    let mut comments = vec![
        format!("leaktrace: pid {} {}", report.pid, report.command),
        format!("unwind: {}", report.unwind),
    ];
    if report.totals.lost_events > 0 {
        comments.push(format!(
            "LOST EVENTS: {}; live figures may be wrong",
            report.totals.lost_events
        ));
    }
    if let Some(omitted) = super::omitted_summary(&report.omitted) {
        comments.push(format!("not exported (--top): {omitted}"));
    }
    for e in &report.estimates {
        comments.push(format!(
            "estimates: allocator={} from {}, sampled every {} bytes: {}",
            e.allocator, e.source, e.sample_bytes, e.note
        ));
    }
    let comment = comments.iter().map(|c| b.string(c)).collect();
    let mut sample: Vec<Sample> = report.stacks.iter().map(|s| b.sample(s)).collect();
    if report.omitted.rows > 0 {
        let omitted = &report.omitted;
        let location = b.placeholder_location(&super::omitted_label(omitted));
        sample.push(Sample {
            location_id: vec![location],
            value: values([
                omitted.live_bytes,
                omitted.live_allocs,
                omitted.total_bytes,
                omitted.total_allocs,
            ]),
            label: Vec::new(),
        });
    }
    let duration_nanos = report.duration_s * 1e9;
    Profile {
        sample_type,
        sample,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: 0,
        // `as` saturates; NaN becomes 0.
        duration_nanos: duration_nanos.max(0.0) as i64,
        period_type,
        period: period(report),
        comment,
        default_sample_type,
    }
}

/// Mean bytes between samples: a Go heap's sampling rate, or `--sample-bytes`, else 1.
fn period(report: &Report) -> i64 {
    report
        .estimates
        .first()
        .map(|e| e.sample_bytes)
        .or(report.sample_bytes)
        .and_then(|p| i64::try_from(p).ok())
        .unwrap_or(1)
}

/// Builds the deduplicated tables.
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<(u64, u64, Vec<Line>), u64>,
    mappings: Vec<Mapping>,
    /// By module file name, build id and load bias (address minus file offset).
    mapping_ids: HashMap<(String, Option<String>, Option<u64>), u64>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            strings: vec![String::new()],
            string_ids: HashMap::from([(String::new(), 0)]),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
        }
    }
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = i64::try_from(self.strings.len()).unwrap_or(i64::MAX);
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn sample(&mut self, stack: &StackReport) -> Sample {
        let mut location_id = Vec::new();
        let mut start = 0;
        for (i, frame) in stack.frames.iter().enumerate() {
            // A run of inlined frames ends at the first frame not inlined (or the last frame).
            if !frame.inlined || i + 1 == stack.frames.len() {
                if let Some(group) = stack.frames.get(start..=i) {
                    location_id.push(self.location(group));
                }
                start = i + 1;
            }
        }
        if location_id.is_empty() {
            location_id.push(self.placeholder_location(NO_STACK));
        }
        let value = values([
            stack.live_bytes,
            stack.live_allocs,
            stack.total_bytes,
            stack.total_allocs,
        ]);
        // The leak verdict as a label, so `go tool pprof -tagfocus verdict=leak` selects leaks,
        // and the allocator, so `-tagfocus allocator=jemalloc` selects one of several.
        let mut label = vec![Label {
            key: self.string("verdict"),
            str: self.string(stack.verdict.as_str()),
            num: 0,
            num_unit: 0,
        }];
        if !stack.allocator.is_empty() {
            label.push(Label {
                key: self.string("allocator"),
                str: self.string(&stack.allocator),
                num: 0,
                num_unit: 0,
            });
        }
        // The process, so `-tagfocus pid=1234` selects one of several traced at once.
        if stack.pid != 0 {
            label.push(Label {
                key: self.string("pid"),
                str: self.string(&stack.pid.to_string()),
                num: 0,
                num_unit: 0,
            });
        }
        // As runtime/pprof labels a heap sample: its mean allocation size.
        if let Some(mean) = stack.total_bytes.checked_div(stack.total_allocs) {
            label.push(Label {
                key: self.string("bytes"),
                str: 0,
                num: i64::try_from(mean).unwrap_or(i64::MAX),
                num_unit: self.string("bytes"),
            });
        }
        Sample {
            location_id,
            value,
            label,
        }
    }

    /// The location of one return address: `group` is innermost first and ends with the frame
    /// the address belongs to; the others were inlined into it.
    fn location(&mut self, group: &[Arc<Frame>]) -> u64 {
        let Some(outer) = group.last() else {
            return self.placeholder_location(NO_STACK);
        };
        let mapping_id = outer.module_name().map_or(0, |m| self.mapping(m, outer));
        // An unnamed frame in a known module gets no lines: that is how pprof and profiling
        // servers know to symbolize it from the mapping's file and build id.
        let line: Vec<Line> = if outer.function.is_none() && mapping_id != 0 {
            Vec::new()
        } else {
            group
                .iter()
                .map(|frame| Line {
                    function_id: self.function(frame),
                    line: frame.line.map_or(0, i64::from),
                })
                .collect()
        };
        if let Some(mapping) = mapping_id
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.mappings.get_mut(i))
        {
            mapping.has_functions &= group.iter().all(|f| f.function.is_some());
            mapping.has_filenames |= group.iter().any(|f| f.file.is_some());
            mapping.has_line_numbers |= group.iter().any(|f| f.line.is_some());
            mapping.has_inline_frames |= group.len() > 1;
        }
        self.intern_location(mapping_id, outer.addr, line)
    }

    fn placeholder_location(&mut self, name: &str) -> u64 {
        let name = self.string(name);
        let function_id = self.intern_function(name, 0);
        self.intern_location(
            0,
            0,
            vec![Line {
                function_id,
                line: 0,
            }],
        )
    }

    fn intern_location(&mut self, mapping_id: u64, address: u64, line: Vec<Line>) -> u64 {
        let key = (mapping_id, address, line);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = next_id(self.locations.len());
        let (mapping_id, address, line) = key;
        self.locations.push(Location {
            id,
            mapping_id,
            address,
            line: line.clone(),
            is_folded: false,
        });
        self.location_ids.insert((mapping_id, address, line), id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = self.string(frame.function.as_deref().unwrap_or(UNKNOWN));
        let filename = frame.file.as_deref().map_or(0, |f| self.string(f));
        self.intern_function(name, filename)
    }

    fn intern_function(&mut self, name: i64, filename: i64) -> u64 {
        *self
            .function_ids
            .entry((name, filename))
            .or_insert_with(|| {
                let id = next_id(self.functions.len());
                self.functions.push(Function {
                    id,
                    name,
                    system_name: name,
                    filename,
                    start_line: 0,
                });
                id
            })
    }

    /// The mapping of `frame`'s module (named `module`), grown to cover its address.
    fn mapping(&mut self, module: &str, frame: &Frame) -> u64 {
        let bias = frame.offset.map(|offset| frame.addr.wrapping_sub(offset));
        let key = (module.to_owned(), frame.build_id.clone(), bias);
        let id = match self.mapping_ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = next_id(self.mappings.len());
                let filename = self.string(module);
                let build_id = frame.build_id.as_deref().map_or(0, |b| self.string(b));
                self.mappings.push(Mapping {
                    id,
                    filename,
                    build_id,
                    has_functions: true,
                    ..Mapping::default()
                });
                self.mapping_ids.insert(key, id);
                id
            }
        };
        if let Some(bias) = bias
            && let Some(mapping) = usize::try_from(id - 1)
                .ok()
                .and_then(|i| self.mappings.get_mut(i))
        {
            let start = if mapping.memory_limit == 0 {
                frame.addr
            } else {
                mapping.memory_start.min(frame.addr)
            };
            mapping.memory_start = start;
            mapping.memory_limit = mapping.memory_limit.max(frame.addr.saturating_add(1));
            mapping.file_offset = start.wrapping_sub(bias);
        }
        id
    }
}

/// `[live_bytes, live_allocs, total_bytes, total_allocs]` as sample values in [`SAMPLE_TYPES`]
/// order, saturated to `i64`.
fn values([live_bytes, live_allocs, total_bytes, total_allocs]: [u64; 4]) -> Vec<i64> {
    [total_allocs, total_bytes, live_allocs, live_bytes]
        .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
        .to_vec()
}

/// The id of the next table entry when the table holds `len`: ids start at 1.
fn next_id(len: usize) -> u64 {
    u64::try_from(len).map_or(u64::MAX, |n| n.saturating_add(1))
}

/// Checks what pprof's `CheckValid` checks, and that every string index is in the table:
/// `string_table[0]` is `""`; every sample has one value per sample type; ids are non-zero and
/// unique; every referenced location, mapping and function exists.
pub fn check(profile: &Profile) -> Result<(), InvalidProfile> {
    check_tables(profile).map_err(|reason| InvalidProfile { reason })
}

fn check_tables(profile: &Profile) -> Result<(), String> {
    use std::collections::HashSet;

    if profile.string_table.first().is_none_or(|s| !s.is_empty()) {
        return Err("string_table[0] must be \"\"".to_owned());
    }
    let strings = profile.string_table.len();
    let string_ok = |i: i64| usize::try_from(i).is_ok_and(|i| i < strings);
    let unique = |what: &str, ids: &mut dyn Iterator<Item = u64>| -> Result<HashSet<u64>, String> {
        let mut seen = HashSet::new();
        for id in ids {
            if id == 0 || !seen.insert(id) {
                return Err(format!("{what} id {id} is zero or repeated"));
            }
        }
        Ok(seen)
    };
    let mappings = unique("mapping", &mut profile.mapping.iter().map(|m| m.id))?;
    let functions = unique("function", &mut profile.function.iter().map(|f| f.id))?;
    let locations = unique("location", &mut profile.location.iter().map(|l| l.id))?;

    let mut indices: Vec<i64> = vec![
        profile.drop_frames,
        profile.keep_frames,
        profile.default_sample_type,
    ];
    indices.extend(&profile.comment);
    for t in profile.sample_type.iter().chain(&profile.period_type) {
        indices.extend([t.r#type, t.unit]);
    }
    for m in &profile.mapping {
        indices.extend([m.filename, m.build_id]);
    }
    for f in &profile.function {
        indices.extend([f.name, f.system_name, f.filename]);
    }
    for l in &profile.location {
        if l.mapping_id != 0 && !mappings.contains(&l.mapping_id) {
            return Err(format!("location {} has no mapping {}", l.id, l.mapping_id));
        }
        if let Some(line) = l
            .line
            .iter()
            .find(|ln| !functions.contains(&ln.function_id))
        {
            return Err(format!(
                "location {} has no function {}",
                l.id, line.function_id
            ));
        }
    }
    for (i, s) in profile.sample.iter().enumerate() {
        if s.value.len() != profile.sample_type.len() {
            return Err(format!(
                "sample {i} has {} values for {} sample types",
                s.value.len(),
                profile.sample_type.len()
            ));
        }
        if let Some(id) = s.location_id.iter().find(|id| !locations.contains(id)) {
            return Err(format!("sample {i} has no location {id}"));
        }
        for label in &s.label {
            indices.extend([label.key, label.str, label.num_unit]);
        }
    }
    match indices.into_iter().find(|&i| !string_ok(i)) {
        Some(i) => Err(format!(
            "string index {i} is outside the table of {strings}"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        ffi::OsStr,
        path::Path,
        process::{Command, Output},
    };

    use super::{super::tests::sample_report, *};
    use crate::report::Omitted;

    fn encode(report: &Report) -> Vec<u8> {
        let mut out = Vec::new();
        write(report, &mut out).expect("writing to a Vec succeeds");
        out
    }

    /// Strings of a profile, by index.
    fn s(profile: &Profile, i: i64) -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| profile.string_table.get(i))
            .map_or("<bad index>", String::as_str)
    }

    /// Each sample's stack as `function:line` lists per location, leaf first.
    fn stacks(profile: &Profile) -> Vec<Vec<Vec<String>>> {
        let loc = |id: u64| {
            profile
                .location
                .iter()
                .find(|l| l.id == id)
                .expect("location exists")
        };
        let func = |id: u64| {
            profile
                .function
                .iter()
                .find(|f| f.id == id)
                .expect("function exists")
        };
        profile
            .sample
            .iter()
            .map(|sample| {
                sample
                    .location_id
                    .iter()
                    .map(|&id| {
                        loc(id)
                            .line
                            .iter()
                            .map(|ln| {
                                format!("{}:{}", s(profile, func(ln.function_id).name), ln.line)
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_sample_report_round_trips_with_its_structure() {
        // Given the sample report, written and read back
        let report = sample_report();
        let bytes = encode(&report);
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let p = read(bytes.as_slice()).expect("decodes");

        // Then it is valid, with the sample types in order and inuse_space the default
        check(&p).expect("valid profile");
        assert_eq!(s(&p, 0), "");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(&p, t.r#type), s(&p, t.unit)))
            .collect();
        assert_eq!(types, SAMPLE_TYPES);
        assert_eq!(s(&p, p.default_sample_type), "inuse_space");
        assert_eq!(p.duration_nanos, 12_750_000_000);
        assert_eq!(p.period, 1);
        let comments: Vec<&str> = p.comment.iter().map(|&c| s(&p, c)).collect();
        assert_eq!(
            comments,
            [
                "leaktrace: pid 4242 ./server --port 8080",
                "unwind: fp",
                "LOST EVENTS: 7; live figures may be wrong",
                "not exported (--top): 2 more stacks holding 2.0 KiB (2048 bytes) in 2 live \
                 allocations"
            ]
        );

        // And one sample per stack, in report order, with the four values, then one for the
        // rows left out
        let values: Vec<&[i64]> = p.sample.iter().map(|s| s.value.as_slice()).collect();
        assert_eq!(
            values,
            [
                &[10, 2_097_152, 3, 1_572_864][..],
                &[1, 4096, 1, 4096],
                &[500, 64_000, 0, 0],
                &[3, 3000, 2, 2048],
            ]
        );

        // And the inlined frame shares its caller's location, innermost line first
        assert_eq!(
            stacks(&p),
            [
                vec![
                    vec!["grow_buffer:42".to_owned(), "buffer_append:88".to_owned()],
                    vec!["handle_request:210".to_owned()],
                    vec!["main:25".to_owned()],
                ],
                vec![
                    // unnamed: no lines, left for a symbolizer with the binary
                    vec![],
                    vec!["<alloc::vec::Vec<[u8; 8]>>::with_capacity:480".to_owned()],
                    vec!["[unknown]:0".to_owned()],
                ],
                vec![
                    vec!["parse_header:0".to_owned()],
                    vec!["main:18".to_owned()]
                ],
                vec![vec!["[2 more stacks]:0".to_owned()]],
            ]
        );
        let first = p
            .location
            .iter()
            .find(|l| l.id == p.sample[0].location_id[0])
            .expect("location");
        assert_eq!(first.address, 0x55d0_c0de_1234);
    }

    #[test]
    fn functions_locations_and_mappings_are_deduplicated() {
        // Given the sample report, where `main` appears twice (different lines and addresses)
        let p = profile(&sample_report());

        // Then each module has one mapping, named by its path
        let mut mappings: Vec<(&str, bool, bool, bool)> = p
            .mapping
            .iter()
            .map(|m| {
                // Only libfoo, with an unnamed frame, is left to symbolize
                assert_eq!(m.has_functions, !s(&p, m.filename).contains("libfoo"));
                (
                    s(&p, m.filename),
                    m.has_filenames,
                    m.has_line_numbers,
                    m.has_inline_frames,
                )
            })
            .collect();
        mappings.sort_unstable();
        assert_eq!(
            mappings,
            [
                ("libbar.so", true, true, false),
                ("libfoo.so.1", false, false, false),
                ("server", true, true, true),
            ]
        );
        // And libfoo's mapping carries its build id and where its address lies in the file,
        // so it can be symbolized later
        let libfoo = p
            .mapping
            .iter()
            .find(|m| s(&p, m.filename) == "libfoo.so.1")
            .expect("libfoo mapping");
        assert_eq!(s(&p, libfoo.build_id), "4c6561b1e2f0a9d87c3b5e1f");
        assert_eq!(
            (libfoo.memory_start, libfoo.memory_limit, libfoo.file_offset),
            (0x7f3a_0000_1234, 0x7f3a_0000_1235, 0x1234)
        );

        // And `main` (same name, same file) is one function behind two locations
        let main: Vec<&Function> = p
            .function
            .iter()
            .filter(|f| s(&p, f.name) == "main")
            .collect();
        assert_eq!(main.len(), 1);
        assert_eq!(s(&p, main[0].filename), "src/main.c");
        // (eight for the frames, one standing in for the rows left out)
        assert_eq!(p.location.len(), 9);

        // And the unknown frame without a module has no mapping
        let unknown = p
            .location
            .iter()
            .find(|l| l.address == 0x7ffd_0000_9abc)
            .expect("location of the unknown frame");
        assert_eq!(unknown.mapping_id, 0);

        // And every string is stored once
        let mut strings = p.string_table.clone();
        strings.sort_unstable();
        strings.dedup();
        assert_eq!(strings.len(), p.string_table.len());
    }

    #[test]
    fn the_same_stack_twice_reuses_its_locations() {
        // Given two stacks with the same frames
        let mut report = sample_report();
        let copy = report.stacks[0].clone();
        report.stacks.push(copy);

        // Then the samples share location ids
        let p = profile(&report);
        assert_eq!(p.sample[0].location_id, p.sample[3].location_id);
        assert_eq!(p.location.len(), 9);
    }

    #[test]
    fn a_stack_without_frames_gets_a_placeholder_location() {
        // Given a stack with no frames and one ending in an inlined frame
        let mut report = sample_report();
        report.omitted = Omitted::default();
        report.stacks.truncate(1);
        report.stacks[0].frames.clear();
        let mut inlined_last = report.stacks[0].clone();
        inlined_last.frames = crate::report::shared([Frame {
            function: Some("inlined_only".to_owned()),
            inlined: true,
            ..Frame::unknown(0x10)
        }]);
        report.stacks.push(inlined_last);

        // Then
        let p = profile(&report);
        check(&p).expect("valid profile");
        assert_eq!(
            stacks(&p),
            [
                vec![vec!["[no stack]:0".to_owned()]],
                vec![vec!["inlined_only:0".to_owned()]]
            ]
        );
    }

    #[test]
    fn an_empty_report_is_a_valid_profile() {
        let mut report = sample_report();
        report.stacks.clear();
        report.omitted = Omitted::default();
        let p = read(encode(&report).as_slice()).expect("decodes");
        check(&p).expect("valid profile");
        assert!(p.sample.is_empty() && p.location.is_empty());
        assert_eq!(p.sample_type.len(), 4);
    }

    #[test]
    fn output_is_deterministic() {
        assert_eq!(encode(&sample_report()), encode(&sample_report()));
    }

    #[test]
    fn check_rejects_broken_profiles() {
        let good = profile(&sample_report());
        let mut p = good.clone();
        p.string_table[0] = "x".to_owned();
        assert!(check(&p).is_err());
        let mut p = good.clone();
        p.sample[0].value.pop();
        assert!(check(&p).is_err());
        let mut p = good.clone();
        p.sample[0].location_id.push(999);
        assert!(check(&p).is_err());
        let mut p = good.clone();
        p.location[0].line[0].function_id = 999;
        assert!(check(&p).is_err());
        let mut p = good.clone();
        p.function[1].id = p.function[0].id;
        assert!(check(&p).is_err());
        let mut p = good;
        p.function[0].name = 10_000;
        assert!(check(&p).is_err());
    }

    /// Runs `go tool pprof ARGS` with a private HOME, GOPATH and GOCACHE under `dir` and returns
    /// its stdout. Panics when `go` is missing: CI installs it (Debian `golang-go`), and a pprof
    /// export nobody checked against pprof is not tested.
    pub(crate) fn go_pprof(dir: &Path, args: &[&OsStr]) -> String {
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("creating a HOME for go");
        // Debian's Go (1.19, as `cargo xtask test` installs it) ships pprof built; a newer Go
        // on PATH builds it from source into the fresh GOCACHE on every call (20-40 s).
        let debian = Path::new("/usr/lib/go-1.19/bin/go");
        let go = if debian.exists() {
            debian
        } else {
            Path::new("go")
        };
        let output = Command::new(go)
            .arg("tool")
            .arg("pprof")
            .args(args)
            .env("HOME", &home)
            .env("GOPATH", dir.join("gopath"))
            .env("GOCACHE", dir.join("gocache"))
            .env("PPROF_TMPDIR", dir.join("pprof"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "")
            .output();
        let Output {
            status,
            stdout,
            stderr,
        } = match output {
            Ok(output) => output,
            Err(e) => panic!(
                "running `go tool pprof` failed: {e}. This test needs Go's pprof: install Go \
                 (Debian: apt-get install golang-go; CI installs it) and put `go` on PATH"
            ),
        };
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = String::from_utf8_lossy(&stderr);
        assert!(
            status.success(),
            "go tool pprof {args:?} failed ({status}):\n{stderr}\n{stdout}"
        );
        // Only mappings with unnamed frames are left for pprof to symbolize (the sample's
        // libfoo.so.1, which is not on this machine): every named one stays as written.
        for line in stderr
            .lines()
            .filter(|l| l.contains("symbolization failed"))
        {
            assert!(
                line.contains("libfoo.so.1"),
                "go tool pprof {args:?} tried to symbolize a named mapping:\n{stderr}"
            );
        }
        stdout
    }

    /// The `-top` row of `function`: its flat value (in bytes with `-unit=B`).
    pub(crate) fn top_flat(top: &str, function: &str) -> Option<String> {
        top.lines().find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // flat flat% sum% cum cum% name...
            (cols.len() >= 6 && cols[5..].join(" ") == function).then(|| cols[0].to_owned())
        })
    }

    #[test]
    fn go_tool_pprof_reads_the_export() {
        // Given the sample report exported to a file
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("report.pb.gz");
        std::fs::write(&path, encode(&sample_report())).expect("writing the profile");
        let top = |extra: &[&str]| {
            let mut args: Vec<&OsStr> = ["-top", "-nodefraction=0"]
                .iter()
                .chain(extra)
                .map(OsStr::new)
                .collect();
            args.push(path.as_os_str());
            go_pprof(dir.path(), &args)
        };

        // When pprof lists the top functions by live bytes
        let inuse = top(&["-unit=B"]);

        // Then the default sample type is shown, and the leaf of the largest stack leads
        assert!(inuse.contains("Type: inuse_space"), "{inuse}");
        let first_row = inuse
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("flat"))
            .nth(1)
            .unwrap_or_default();
        assert!(first_row.ends_with(" grow_buffer (inline)"), "{inuse}");
        let flat = |f: &str| top_flat(&inuse, f);
        assert_eq!(
            flat("grow_buffer (inline)").as_deref(),
            Some("1572864B"),
            "{inuse}"
        );
        assert_eq!(flat("buffer_append").as_deref(), Some("0"), "{inuse}");
        assert_eq!(flat("[libfoo.so.1]").as_deref(), Some("4096B"), "{inuse}");
        assert!(
            inuse.contains("LOST EVENTS: 7"),
            "comments are shown: {inuse}"
        );

        // And the other sample types are there too
        let alloc = top(&["-unit=B", "-sample_index=alloc_space"]);
        assert_eq!(
            top_flat(&alloc, "parse_header").as_deref(),
            Some("64000B"),
            "{alloc}"
        );
        let objects = top(&["-sample_index=alloc_objects"]);
        assert_eq!(
            top_flat(&objects, "parse_header").as_deref(),
            Some("500"),
            "{objects}"
        );
        let inuse_objects = top(&["-sample_index=inuse_objects"]);
        assert_eq!(
            top_flat(&inuse_objects, "grow_buffer (inline)").as_deref(),
            Some("3"),
            "{inuse_objects}"
        );
    }
}
