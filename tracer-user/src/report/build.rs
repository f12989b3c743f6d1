//! The one join that makes a [`Report`]: figures by stack from the heap, the stacks' frames
//! and rows from the symbolizer, each row's history for growth and verdicts, and the counters.
//!
//! It is a pure function of its inputs, so the live view, the snapshots, the final export and
//! the tests all get the same rows from the same figures.
use std::collections::HashMap;

use crate::{
    heap::{StackRef, StackStats, Totals, history::History},
    report::{
        Diagnostics, Omitted, Report, ReportTotals, StackReport,
        analytics::{self, Thresholds, VerdictInput},
        grouping::{self, Member},
        sort_stacks,
    },
    symbolize::stacks::Stacks,
};

/// What a report says about the run, beside its rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// The traced process.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// Every process traced, when there are several (the target first).
    pub processes: Vec<crate::report::TracedProcess>,
    /// Seconds traced so far.
    pub duration_s: f64,
    /// How stacks were unwound.
    pub unwind: String,
    /// Mean bytes between sampled allocations, when sampling.
    pub sample_bytes: Option<u64>,
    /// Rows other sources estimate.
    pub estimates: Vec<crate::report::Estimate>,
}

/// Everything a report is made from.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Figures by stack ([`crate::heap::Heap::stack_stats`]).
    pub stats: &'a [(StackRef, StackStats)],
    /// Whole-process counters ([`crate::heap::Heap::totals`]).
    pub totals: &'a Totals,
    /// The stacks, symbolized and given rows.
    pub stacks: &'a Stacks,
    /// Live bytes over time by row.
    pub history: &'a History,
    /// Verdict thresholds.
    pub thresholds: &'a Thresholds,
}

/// Builds the report of every row, sorted (callers cut it with [`Report::keep_top`]). Stacks
/// not yet symbolized (so without a row) are left for the next report.
pub fn build(header: Header, inputs: Inputs<'_>, diagnostics: Diagnostics) -> Report {
    let mut rows: HashMap<u64, Vec<Member<'_>>> = HashMap::new();
    for (at, stats) in inputs.stats {
        let Some(entry) = inputs.stacks.get(*at) else {
            continue;
        };
        let Some(row) = entry.row else {
            continue;
        };
        rows.entry(row).or_default().push(Member {
            stack_id: entry.id,
            pid: entry.pid,
            allocator: &entry.allocator,
            stats: *stats,
            frames: &entry.frames,
            truncated: entry.truncated,
            incomplete: entry.incomplete,
        });
    }
    let empty = Default::default();
    let mut stacks: Vec<StackReport> = rows
        .into_iter()
        .map(|(row, members)| {
            let mut stack = grouping::merge(row, members);
            let series = inputs.history.get(row).unwrap_or(&empty);
            let growth = analytics::growth(series, inputs.thresholds.window_s);
            stack.verdict = analytics::verdict(
                &VerdictInput {
                    series,
                    live_allocs: stack.live_allocs,
                    total_allocs: stack.total_allocs,
                    oldest_age_s: stack.oldest_age_s,
                    ages: Some(&stack.ages),
                },
                inputs.thresholds,
            );
            stack.growth_bytes_per_s = growth.as_ref().map(|g| g.bytes_per_s);
            stack.growth_bytes_per_h = growth.as_ref().map(|g| g.bytes_per_h);
            stack.growth_r2 = growth.as_ref().map(|g| g.r_squared);
            stack
        })
        .collect();
    sort_stacks(&mut stacks);
    Report {
        pid: header.pid,
        command: header.command,
        duration_s: header.duration_s,
        unwind: header.unwind,
        ended: None,
        processes: header.processes,
        sample_bytes: header.sample_bytes,
        estimates: header.estimates,
        totals: ReportTotals::new(inputs.totals, &diagnostics),
        diagnostics,
        group_by: inputs.stacks.group_by().name().to_owned(),
        omitted: Omitted::default(),
        coverage: Default::default(),
        stacks,
    }
}
