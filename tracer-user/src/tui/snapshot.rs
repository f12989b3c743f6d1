//! What the session publishes to the live view about once per interval.
use crate::{heap::history::Series, report::Report};

/// The state of the trace at one moment, complete enough to render and to export.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Every stack holding live bytes (and the busiest others), sorted by live bytes, symbolized.
    /// `report.duration_s` is the time since attach.
    pub report: Report,
    /// Live bytes over time for each stack in `report.stacks`, parallel to it.
    pub series: Vec<Series>,
    /// The target's resident set size, while it runs.
    pub target_rss_bytes: Option<u64>,
    /// Allocation and free rates over the last interval.
    pub allocs_per_s: f64,
    /// See `allocs_per_s`.
    pub frees_per_s: f64,
    /// Set once tracing has ended, saying why (e.g. "target exited"); the view then keeps the
    /// final state on screen with this message until the user quits.
    pub ended: Option<String>,
}
