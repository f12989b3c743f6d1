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
        analytics::{self, Thresholds, Verdict, VerdictInput},
        grouping::{self, Member},
        sort_stacks,
    },
    symbolize::stacks::Stacks,
};

/// Rows holding most whose live bytes over time a report carries ([`StackReport::history`]);
/// as many more leaking or growing rows below them carry theirs too.
pub const CHART_ROWS: usize = 8;

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
    attach_histories(&mut stacks, inputs.history);
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

/// Gives the rows a chart shows their series: the [`CHART_ROWS`] holding most, and up to
/// [`CHART_ROWS`] more whose verdict is leak or growing.
fn attach_histories(stacks: &mut [StackReport], history: &History) {
    let mut climbing = 0;
    for (rank, stack) in stacks.iter_mut().enumerate() {
        let wanted = if rank < CHART_ROWS {
            true
        } else if climbing < CHART_ROWS && matches!(stack.verdict, Verdict::Leak | Verdict::Growing)
        {
            climbing += 1;
            true
        } else {
            false
        };
        if wanted && let Some(series) = history.get(stack.id) {
            stack.history = series.samples.iter().copied().collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_a_chart_shows_carry_their_history_and_no_others() {
        // Given 20 rows, each with a series, sorted by live bytes; rows 15 and 17 are leaking
        let mut history = History::default();
        for t in 1..=3 {
            history.record(f64::from(t), (0..20u64).map(|id| (id, 100 * (id + 1))));
        }
        let mut stacks: Vec<StackReport> = (0..20u64)
            .map(|id| StackReport {
                id,
                verdict: if id == 15 || id == 17 {
                    Verdict::Leak
                } else {
                    Verdict::Steady
                },
                ..StackReport::default()
            })
            .collect();

        // When the series are attached
        attach_histories(&mut stacks, &history);

        // Then the first CHART_ROWS and the leaking rows below them have theirs, exactly
        let charted: Vec<u64> = stacks
            .iter()
            .filter(|s| !s.history.is_empty())
            .map(|s| s.id)
            .collect();
        let mut expected: Vec<u64> = (0..CHART_ROWS as u64).collect();
        expected.extend([15, 17]);
        assert_eq!(charted, expected);
        assert_eq!(
            stacks[15].history,
            vec![(1.0, 1600), (2.0, 1600), (3.0, 1600)]
        );
    }
}
