//! Reading a JSON export back ([`load`]): the contract fields of [`crate::report`] that
//! `leaktrace diff` and `leaktrace report` use, ignoring the rest, so exports from newer or
//! older leaktrace versions load as long as those fields are there. Fields added after the
//! first exports default when absent.
#![warn(missing_docs)]

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::report::{Omitted, Report, analytics::Verdict, grouping::FrameKey};

/// Reading an export failed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The export's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a leaktrace JSON export.
    #[error("{} is not a leaktrace JSON export", path.display())]
    Parse {
        /// The export's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The fields of a JSON export a diff uses.
#[derive(Deserialize, Clone, Debug, PartialEq)]
pub struct ReportFile {
    /// The traced process.
    pub pid: u32,
    /// Its command line.
    #[serde(default)]
    pub command: String,
    /// Seconds traced when the export was written.
    pub duration_s: f64,
    /// Whole-process counters.
    #[serde(default)]
    pub totals: FileTotals,
    /// The exported stacks.
    pub stacks: Vec<FileStack>,
    /// Rows the export left out (`--top`); absent in exports older than the field.
    #[serde(default)]
    pub omitted: FileOmitted,
    /// How stacks were unwound.
    #[serde(default)]
    pub unwind: String,
    /// Why tracing ended, in a final report.
    #[serde(default)]
    pub ended: Option<String>,
    /// Mean bytes between sampled allocations, when sampling.
    #[serde(default)]
    pub sample_bytes: Option<u64>,
    /// Rows estimated by another sampler (a Go heap profile), by allocator label.
    #[serde(default)]
    pub estimates: Vec<FileEstimate>,
    /// Every loss and health counter, by name.
    #[serde(default)]
    pub diagnostics: BTreeMap<String, u64>,
}

/// Rows of a [`ReportFile`] another sampler estimates.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct FileEstimate {
    /// The rows' allocator label.
    #[serde(default)]
    pub allocator: String,
    /// What sampled them.
    #[serde(default)]
    pub source: String,
}

/// The rows an export left out.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOmitted {
    /// How many.
    #[serde(default)]
    pub rows: u64,
    /// Bytes live in them.
    #[serde(default)]
    pub live_bytes: u64,
}

impl From<Omitted> for FileOmitted {
    fn from(omitted: Omitted) -> Self {
        Self {
            rows: omitted.rows,
            live_bytes: omitted.live_bytes,
        }
    }
}

/// Whole-process counters of a [`ReportFile`].
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileTotals {
    /// Bytes live.
    #[serde(default)]
    pub live_bytes: u64,
    /// Blocks live.
    #[serde(default)]
    pub live_allocs: u64,
    /// Allocations seen.
    #[serde(default)]
    pub allocs: u64,
    /// Releases seen.
    #[serde(default)]
    pub frees: u64,
    /// Events the kernel side could not deliver.
    #[serde(default)]
    pub lost_events: u64,
}

/// One stack of a [`ReportFile`].
#[derive(Deserialize, Clone, Debug, PartialEq)]
pub struct FileStack {
    /// Bytes live.
    pub live_bytes: u64,
    /// Blocks live.
    pub live_allocs: u64,
    /// Frames, innermost first.
    pub frames: Vec<FileFrame>,
    /// The process whose heap it is.
    #[serde(default)]
    pub pid: u32,
    /// What allocated (`glibc`, `jemalloc`, `go`).
    #[serde(default)]
    pub allocator: String,
    /// Allocations made here since attach.
    #[serde(default)]
    pub total_allocs: u64,
    /// Age of the oldest live block, in seconds.
    #[serde(default)]
    pub oldest_age_s: Option<f64>,
    /// Leak, growing, steady, churn or unknown.
    #[serde(default)]
    pub verdict: Verdict,
    /// Growth of live bytes per hour over the analysis window.
    #[serde(default)]
    pub growth_bytes_per_h: Option<f64>,
    /// Live bytes over time, `(seconds since attach, bytes)`, for the rows a chart shows.
    #[serde(default)]
    pub history: Vec<(f64, u64)>,
}

/// One frame of a [`FileStack`].
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFrame {
    /// Function name, if known.
    pub function: Option<String>,
    /// Module path, if known.
    pub module: Option<String>,
    /// Source file, if known.
    #[serde(default)]
    pub file: Option<String>,
    /// Source line, if known.
    #[serde(default)]
    pub line: Option<u32>,
    /// Offset in the module's file, a `"0x…"` string (absent in older exports).
    #[serde(default, deserialize_with = "hex_opt")]
    pub offset: Option<u64>,
    /// Address in the traced process, a `"0x…"` string.
    #[serde(default, deserialize_with = "hex_opt")]
    pub addr: Option<u64>,
}

fn hex_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| {
        u64::from_str_radix(t.trim_start_matches("0x"), 16)
            .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a hex number")))
    })
    .transpose()
}

impl FileFrame {
    /// How a person reads the frame ([`crate::report::Frame::label`]).
    pub fn label(&self) -> String {
        crate::report::frame_label(
            self.function.as_deref(),
            self.module.as_deref(),
            self.offset,
            self.addr,
        )
    }

    /// The frame's key ([`FrameKey`]).
    pub fn key(&self) -> FrameKey {
        FrameKey::new(
            self.function.as_deref(),
            self.module.as_deref(),
            self.file.as_deref(),
            self.line,
            self.offset,
        )
    }
}

impl From<&Report> for ReportFile {
    fn from(report: &Report) -> Self {
        Self {
            pid: report.pid,
            command: report.command.clone(),
            duration_s: report.duration_s,
            totals: FileTotals {
                live_bytes: report.totals.live_bytes,
                live_allocs: report.totals.live_allocs,
                allocs: report.totals.allocs,
                frees: report.totals.frees,
                lost_events: report.totals.lost_events,
            },
            stacks: report
                .stacks
                .iter()
                .map(|s| FileStack {
                    live_bytes: s.live_bytes,
                    live_allocs: s.live_allocs,
                    pid: s.pid,
                    allocator: s.allocator.clone(),
                    total_allocs: s.total_allocs,
                    oldest_age_s: s.oldest_age_s,
                    verdict: s.verdict,
                    growth_bytes_per_h: s.growth_bytes_per_h,
                    history: s.history.clone(),
                    frames: s
                        .frames
                        .iter()
                        .map(|f| FileFrame {
                            function: f.function.clone(),
                            module: f.module.clone(),
                            file: f.file.clone(),
                            line: f.line,
                            offset: f.offset,
                            addr: Some(f.addr),
                        })
                        .collect(),
                })
                .collect(),
            omitted: report.omitted.into(),
            unwind: report.unwind.clone(),
            ended: report.ended.clone(),
            sample_bytes: report.sample_bytes,
            estimates: report
                .estimates
                .iter()
                .map(|e| FileEstimate {
                    allocator: e.allocator.clone(),
                    source: e.source.clone(),
                })
                .collect(),
            diagnostics: report
                .diagnostics
                .0
                .iter()
                .map(|h| (h.name.to_string(), h.value))
                .collect(),
        }
    }
}

/// Reads the JSON export at `path`.
pub fn load(path: impl AsRef<Path>) -> Result<ReportFile, DiffError> {
    let path = path.as_ref();
    let text = fs::read(path).map_err(|source| DiffError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| DiffError::Parse {
        path: path.to_owned(),
        source,
    })
}
