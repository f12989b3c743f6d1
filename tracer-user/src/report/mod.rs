//! The report model: a snapshot of the heap by call stack, symbolized, ready for
//! [`crate::export`].
//!
//! Its JSON form (serde) is a contract for other tools:
//!
//! ```text
//! {"pid", "command", "duration_s", "unwind", "ended" (in a final report),
//!  "processes": [{"pid", "command", "parent"}] (when several are traced),
//!  "totals": {"allocs", "frees", "live_bytes", "live_allocs", "unmatched_frees", "lost_events"},
//!  "diagnostics": {"ringbuf_full", ..., "tracer_memory_bytes"},
//!  "group_by", "omitted": {"rows", "live_bytes", "live_allocs", "total_allocs", "total_bytes"},
//!  "stacks": [{"pid", "live_bytes", "live_allocs", "total_allocs", "total_bytes", "oldest_age_s",
//!              "truncated", ..., "frames": [{"function", "module", "file", "line", "addr",
//!                                            "offset", "build_id", "inlined"}],
//!              "call_sites": [{"live_bytes", "live_allocs", "total_allocs", "total_bytes",
//!                              "addrs"}],
//!              "history": [[seconds, live_bytes], ...] (for the rows a chart shows)}]}
//! ```
//!
//! Each entry of `stacks` is a row: the stacks that are the same at the source level (see
//! [`crate::report::grouping`]), whose distinct return-address stacks are its `call_sites`. Missing
//! values are `null`; addresses and offsets are hex strings such as `"0x55d0c0de1234"`.
#![warn(missing_docs)]

pub mod analytics;
pub mod build;
pub mod coverage;
pub mod grouping;

use std::{cmp::Ordering, sync::Arc};

use serde::{Serialize, Serializer};

pub use crate::source::Diagnostics;
use crate::{
    heap::Totals,
    report::analytics::{AgeHistogram, Verdict},
};

/// Nanoseconds per second, for ages and durations.
const NS_PER_S: f64 = 1e9;

/// Rows a source estimates from samples rather than counts: which, how, and what they mean.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// The rows' `allocator` label (`go`).
    pub allocator: String,
    /// What sampled them (`the Go runtime's heap profile (go1.19.8)`).
    pub source: String,
    /// Mean bytes between sampled allocations.
    pub sample_bytes: u64,
    /// How the figures are made, in one sentence.
    pub note: String,
}

/// A process traced besides (or as) the target.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TracedProcess {
    /// Its pid.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// The traced process it was found as a child of (`--children`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
}

/// Everything one export contains.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The traced process.
    pub pid: u32,
    /// Its command line, as shown to the user.
    pub command: String,
    /// How long it was traced, in seconds.
    pub duration_s: f64,
    /// How stacks were unwound: `"auto"`, `"dwarf"` or `"fp"`.
    pub unwind: String,
    /// Why tracing ended (`"target killed by SIGKILL"`, `"interrupted"`); absent while it
    /// goes on (live views, periodic snapshots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Every process traced, when there are several (`-p` given more than once, or
    /// `--children`): the target first. Each row's `pid` says whose heap it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<TracedProcess>,
    /// With `--sample-bytes`: the mean bytes between sampled allocations. Live and total
    /// figures are then unbiased estimates, not counts (absent when every allocation is traced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_bytes: Option<u64>,
    /// Rows whose figures are estimates from another sampler (a Go heap profile), one entry
    /// per such source.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub estimates: Vec<Estimate>,
    /// Whole-process counters.
    pub totals: ReportTotals,
    /// Every loss and health counter.
    pub diagnostics: Diagnostics,
    /// How stacks were made rows: `"source"` or `"address"` (see [`crate::report::grouping`]).
    pub group_by: String,
    /// The rows left out of `stacks` when it was cut to the top N ([`Report::keep_top`]).
    pub omitted: Omitted,
    /// How much of the process's memory growth the trace saw ([`coverage`]).
    pub coverage: coverage::Coverage,
    /// Rows, sorted by [`sort_stacks`].
    pub stacks: Vec<StackReport>,
}

impl Report {
    /// Keeps the first `n` rows, adding the rest to [`Report::omitted`].
    pub fn keep_top(&mut self, n: usize) {
        if n >= self.stacks.len() {
            return;
        }
        for row in self.stacks.split_off(n) {
            self.omitted.add(&row);
        }
    }
}

/// Rows a report leaves out, and what they hold.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Omitted {
    /// Rows left out.
    pub rows: u64,
    /// Bytes live in them.
    pub live_bytes: u64,
    /// Blocks live in them.
    pub live_allocs: u64,
    /// Allocations they made since attach.
    pub total_allocs: u64,
    /// Bytes they requested since attach.
    pub total_bytes: u64,
}

impl Omitted {
    /// Counts `row` as left out.
    pub fn add(&mut self, row: &StackReport) {
        self.rows += 1;
        self.live_bytes = self.live_bytes.saturating_add(row.live_bytes);
        self.live_allocs = self.live_allocs.saturating_add(row.live_allocs);
        self.total_allocs = self.total_allocs.saturating_add(row.total_allocs);
        self.total_bytes = self.total_bytes.saturating_add(row.total_bytes);
    }
}

/// Whole-process counters of a [`Report`].
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportTotals {
    /// Allocations seen.
    pub allocs: u64,
    /// Block releases seen (`free`s and blocks released by `realloc`), matched or not.
    pub frees: u64,
    /// Bytes still live.
    pub live_bytes: u64,
    /// Blocks still live.
    pub live_allocs: u64,
    /// Releases of blocks that were not known to be live.
    pub unmatched_frees: u64,
    /// Events the kernel side could not deliver: [`Diagnostics::lost_events`].
    pub lost_events: u64,
    /// Of the live bytes, those in anonymous mappings made outside the allocators (their rows
    /// are labelled `mmap`).
    pub mapped_bytes: u64,
    /// Of the live blocks, the anonymous mappings.
    pub mapped_regions: u64,
}

impl ReportTotals {
    /// Combines the heap model's totals with the loss counters.
    pub fn new(heap: &Totals, diagnostics: &Diagnostics) -> Self {
        Self {
            allocs: heap.allocs,
            frees: heap.frees,
            live_bytes: heap.live_bytes,
            live_allocs: heap.live_allocs,
            unmatched_frees: heap.unmatched_frees,
            lost_events: diagnostics.lost_events(),
            mapped_bytes: heap.mapped_bytes,
            mapped_regions: heap.mapped_regions,
        }
    }
}

/// One row: an allocating call path as a person reads it, made of one or more stacks of return
/// addresses (its [`StackReport::call_sites`]). `Default` (nothing live, no frames, verdict
/// unknown) is for tests and builders that set the fields they care about.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct StackReport {
    /// The row's id within this run (not exported: ids are handed out in order of first sight,
    /// which differs between runs).
    #[serde(skip)]
    pub id: u64,
    /// The process whose heap it is.
    pub pid: u32,
    /// What allocated: an allocator (`glibc`) or a runtime; rows of different allocators are
    /// never merged.
    pub allocator: String,
    /// Bytes allocated here and still live.
    pub live_bytes: u64,
    /// Blocks allocated here and still live.
    pub live_allocs: u64,
    /// Allocations made here since attach.
    pub total_allocs: u64,
    /// Bytes requested here since attach.
    pub total_bytes: u64,
    /// Age of the oldest live block, in seconds; `None` when nothing is live.
    pub oldest_age_s: Option<f64>,
    /// The stack filled every frame slot and may continue beyond `frames`.
    pub truncated: bool,
    /// The unwinder stopped before the outermost frame (counted by reason in diagnostics).
    pub incomplete: bool,
    /// Leak, growing, steady, churn or unknown (see [`crate::report::analytics`]).
    pub verdict: Verdict,
    /// Slope of live bytes over the analysis window, per second (`None` without enough history).
    pub growth_bytes_per_s: Option<f64>,
    /// The same slope per hour.
    pub growth_bytes_per_h: Option<f64>,
    /// How well a straight line fits live bytes over the window (R², 0 to 1).
    pub growth_r2: Option<f64>,
    /// Live blocks by age.
    pub ages: AgeHistogram,
    /// Frames, innermost first: index 0 is the allocator's caller. Addresses are those of the
    /// first call site.
    pub frames: Vec<Arc<Frame>>,
    /// The distinct stacks of return addresses this row merged, most live bytes first.
    pub call_sites: Vec<CallSite>,
    /// Live bytes over time, `[seconds since attach, live bytes]`, oldest first: only for the
    /// rows a chart shows ([`build::CHART_ROWS`] holding most, and up to as many more that are
    /// leaking or growing); empty (and absent from JSON) for the rest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<(f64, u64)>,
}

/// One stack of return addresses within a row.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CallSite {
    /// The stack's id within this run (not exported).
    #[serde(skip)]
    pub stack_id: u64,
    /// Bytes allocated here and still live.
    pub live_bytes: u64,
    /// Blocks allocated here and still live.
    pub live_allocs: u64,
    /// Allocations made here since attach.
    pub total_allocs: u64,
    /// Bytes requested here since attach.
    pub total_bytes: u64,
    /// The address of each of the row's frames in this stack (parallel to
    /// [`StackReport::frames`]).
    #[serde(serialize_with = "serialize_hex_list")]
    pub addrs: Vec<u64>,
}

impl CallSite {
    /// The first frame at which this call site's address differs from `other`'s, if any.
    pub fn differs_at(&self, other: &CallSite) -> Option<usize> {
        self.addrs
            .iter()
            .zip(&other.addrs)
            .position(|(a, b)| a != b)
    }
}

impl StackReport {
    /// Function name of the innermost frame, if known.
    pub fn leaf_function(&self) -> Option<&str> {
        self.frames.first().and_then(|f| f.function.as_deref())
    }
}

/// One frame of a stack. A return address inlined several functions deep yields several frames
/// with the same `addr`: all but the outermost have `inlined` set.
///
/// Stacks share their frames (the symbolizer hands out one `Arc<Frame>` per address): a program
/// with 100,000 stacks through the same few functions keeps those frames once.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Function name, demangled, if symbolization found one.
    pub function: Option<String>,
    /// Path of the object file (executable or shared library) containing `addr`, if known.
    pub module: Option<String>,
    /// Source file, if debug info has it.
    pub file: Option<String>,
    /// Source line, if debug info has it.
    pub line: Option<u32>,
    /// Address in the traced process (serialized as a `"0x…"` string).
    #[serde(serialize_with = "serialize_hex")]
    pub addr: u64,
    /// Offset of `addr` in the module's file (a `"0x…"` string), so the frame can be symbolized
    /// later from the module and its build id.
    #[serde(serialize_with = "serialize_hex_opt")]
    pub offset: Option<u64>,
    /// The module's GNU build id, in hex.
    pub build_id: Option<String>,
    /// This function was inlined into the next (outer) frame.
    pub inlined: bool,
}

/// `frames`, each made shareable (as the symbolizer hands them out).
pub fn shared(frames: impl IntoIterator<Item = Frame>) -> Vec<Arc<Frame>> {
    frames.into_iter().map(Arc::new).collect()
}

impl Frame {
    /// A frame nothing is known about but its address.
    pub fn unknown(addr: u64) -> Self {
        Self {
            function: None,
            module: None,
            file: None,
            line: None,
            addr,
            offset: None,
            build_id: None,
            inlined: false,
        }
    }

    /// How a person reads the frame in one line, in every format: its function; else its
    /// module and file offset, `[libfoo.so] +0x1234` (the same in every run, unlike the
    /// address); else `[module] 0xaddr`, or `[unknown] 0xaddr` in no known module. Control
    /// characters become spaces.
    pub fn label(&self) -> String {
        frame_label(
            self.function.as_deref(),
            self.module.as_deref(),
            self.offset,
            Some(self.addr),
        )
    }

    /// The last path component of [`Frame::module`] (`libc.so.6` for `/usr/lib/libc.so.6`).
    pub fn module_name(&self) -> Option<&str> {
        self.module
            .as_deref()
            .map(|m| m.rsplit('/').next().unwrap_or(m))
    }
}

/// [`Frame::label`] from a frame's parts, for frames read back from an export (which may have
/// no address): `function`; else `[module file name] +0xoffset`; else `[module] 0xaddr`; else
/// `[unknown] 0xaddr` (or `[unknown]` with no address).
pub fn frame_label(
    function: Option<&str>,
    module: Option<&str>,
    offset: Option<u64>,
    addr: Option<u64>,
) -> String {
    use crate::export::one_line;
    let function = function.filter(|f| !f.trim().is_empty());
    let module = module
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .filter(|m| !m.trim().is_empty());
    match (function, module, offset, addr) {
        (Some(function), ..) => one_line(function).into_owned(),
        (None, Some(module), Some(offset), _) => format!("[{}] +{offset:#x}", one_line(module)),
        (None, Some(module), None, Some(addr)) => format!("[{}] {addr:#x}", one_line(module)),
        (None, Some(module), None, None) => format!("[{}]", one_line(module)),
        (None, None, _, Some(addr)) => format!("[unknown] {addr:#x}"),
        (None, None, _, None) => "[unknown]".to_owned(),
    }
}

/// Converts nanoseconds to seconds.
pub fn ns_to_s(ns: u64) -> f64 {
    // Precision loss above 2^53 ns (104 days) is far below what a report shows.
    ns as f64 / NS_PER_S
}

/// The report order: live bytes descending, then total bytes descending, then the innermost
/// frame's function name (named before unnamed), then its address and the stack depth, so the
/// order does not depend on the input order.
pub fn compare_stacks(a: &StackReport, b: &StackReport) -> Ordering {
    fn leaf_name(s: &StackReport) -> (bool, Option<&str>) {
        let name = s.leaf_function();
        (name.is_none(), name)
    }
    let leaf_addr = |s: &StackReport| s.frames.first().map(|f| f.addr);
    b.live_bytes
        .cmp(&a.live_bytes)
        .then(b.total_bytes.cmp(&a.total_bytes))
        .then_with(|| leaf_name(a).cmp(&leaf_name(b)))
        .then_with(|| leaf_addr(a).cmp(&leaf_addr(b)))
        .then(a.frames.len().cmp(&b.frames.len()))
}

/// Sorts stacks into report order ([`compare_stacks`]).
pub fn sort_stacks(stacks: &mut [StackReport]) {
    stacks.sort_by(compare_stacks);
}

fn serialize_hex<S: Serializer>(addr: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{addr:#x}"))
}

fn serialize_hex_opt<S: Serializer>(addr: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => serialize_hex(addr, serializer),
        None => serializer.serialize_none(),
    }
}

fn serialize_hex_list<S: Serializer>(addrs: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(addrs.iter().map(|a| format!("{a:#x}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(live_bytes: u64, total_bytes: u64, leaf: Option<&str>, addr: u64) -> StackReport {
        StackReport {
            id: addr,
            live_bytes,
            live_allocs: 1,
            total_allocs: 1,
            total_bytes,
            frames: shared([Frame {
                function: leaf.map(str::to_owned),
                ..Frame::unknown(addr)
            }]),
            ..StackReport::default()
        }
    }

    #[test]
    fn stacks_sort_by_live_then_total_then_leaf_name() {
        // Given stacks in scrambled order
        let mut stacks = vec![
            stack(10, 10, None, 0x1),
            stack(10, 10, Some("b"), 0x1),
            stack(0, 99, Some("z"), 0x1),
            stack(10, 20, Some("z"), 0x1),
            stack(50, 50, Some("y"), 0x1),
            stack(10, 10, Some("a"), 0x2),
            stack(10, 10, Some("a"), 0x1),
        ];

        // When sorting
        sort_stacks(&mut stacks);

        // Then the order is by live bytes, total bytes, leaf name (unnamed last), leaf address
        let order: Vec<(u64, u64, Option<&str>, u64)> = stacks
            .iter()
            .map(|s| {
                (
                    s.live_bytes,
                    s.total_bytes,
                    s.leaf_function(),
                    s.frames[0].addr,
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                (50, 50, Some("y"), 0x1),
                (10, 20, Some("z"), 0x1),
                (10, 10, Some("a"), 0x1),
                (10, 10, Some("a"), 0x2),
                (10, 10, Some("b"), 0x1),
                (10, 10, None, 0x1),
                (0, 99, Some("z"), 0x1),
            ]
        );
    }

    #[test]
    fn keep_top_counts_what_it_cuts() {
        // Given a report of three rows
        let mut report = Report {
            stacks: vec![
                stack(3, 30, None, 3),
                stack(2, 20, None, 2),
                stack(1, 10, None, 1),
            ],
            ..Report::default()
        };

        // When keeping the top one, then cutting again
        report.keep_top(1);
        report.keep_top(5);

        // Then the other two are counted as omitted, with what they hold
        assert_eq!(report.stacks.len(), 1);
        assert_eq!(
            report.omitted,
            Omitted {
                rows: 2,
                live_bytes: 3,
                live_allocs: 2,
                total_allocs: 2,
                total_bytes: 30,
            }
        );
    }

    #[test]
    fn frames_serialize_addresses_as_hex_and_missing_values_as_null() {
        // Given a frame with only an address
        let frame = Frame::unknown(0x55d0_c0de_1234);

        // When serializing
        let json = serde_json::to_string(&frame).expect("frame serializes");

        // Then
        assert_eq!(
            json,
            r#"{"function":null,"module":null,"file":null,"line":null,"addr":"0x55d0c0de1234","offset":null,"build_id":null,"inlined":false}"#
        );
    }

    #[test]
    fn frame_labels_fall_back_to_module_offset_then_address() {
        let named = Frame {
            function: Some("grow_buffer".to_owned()),
            module: Some("/usr/bin/server".to_owned()),
            ..Frame::unknown(0x10)
        };
        let in_module = Frame {
            module: Some("/usr/lib/libfoo.so.1".to_owned()),
            ..Frame::unknown(0x7f3a_0000_1234)
        };
        let with_offset = Frame {
            offset: Some(0x1234),
            ..in_module.clone()
        };
        let with_newline = Frame {
            function: Some("bad\nname".to_owned()),
            ..Frame::unknown(0)
        };
        let blank = Frame {
            function: Some(" ".to_owned()),
            ..with_offset.clone()
        };
        assert_eq!(named.label(), "grow_buffer");
        assert_eq!(in_module.label(), "[libfoo.so.1] 0x7f3a00001234");
        assert_eq!(with_offset.label(), "[libfoo.so.1] +0x1234");
        assert_eq!(Frame::unknown(0xabc).label(), "[unknown] 0xabc");
        assert_eq!(with_newline.label(), "bad name");
        assert_eq!(blank.label(), "[libfoo.so.1] +0x1234");
    }

    #[test]
    fn module_name_is_the_last_path_component() {
        let frame = |m: &str| Frame {
            module: Some(m.to_owned()),
            ..Frame::unknown(0)
        };
        assert_eq!(frame("/usr/lib/libc.so.6").module_name(), Some("libc.so.6"));
        assert_eq!(frame("server").module_name(), Some("server"));
        assert_eq!(Frame::unknown(0).module_name(), None);
    }
}
