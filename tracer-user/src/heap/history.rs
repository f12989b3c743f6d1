//! Live bytes over time, per report row: bounded series sampled once per interval, which
//! growth and verdicts are fitted to ([`crate::report::analytics`]).
//!
//! Bounded for runs of days: at most [`MAX_SAMPLES`] per series; a row that held nothing for
//! a whole series' worth of samples loses its series (it has nothing to fit); and beyond
//! [`MAX_ROWS`] series, the rows holding least have none, counted (at the last sample) as
//! `history_rows_dropped`.
use std::collections::{HashMap, VecDeque};

use crate::source::{Health, HealthKind};

/// Samples kept per row (at one per second: ten minutes).
pub const MAX_SAMPLES: usize = 600;

/// Rows with a series at most (a full series takes 9.4 KiB: 600 samples of 16 bytes).
pub const MAX_ROWS: usize = 10_000;

/// One row's live bytes over time, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// `(seconds since attach, live bytes)`.
    pub samples: VecDeque<(f64, u64)>,
    /// Samples of 0 bytes in a row at the end.
    zeros: usize,
}

impl Series {
    /// Appends a sample, dropping the oldest beyond [`MAX_SAMPLES`].
    pub fn push(&mut self, t_s: f64, live_bytes: u64) {
        // Room grows with the samples held (doubling, up to exactly MAX_SAMPLES): a row seen
        // for a few seconds holds a few samples' worth.
        let len = self.samples.len();
        if len == self.samples.capacity() && len < MAX_SAMPLES {
            self.samples
                .reserve_exact(len.max(8).min(MAX_SAMPLES - len));
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((t_s, live_bytes));
        self.zeros = if live_bytes == 0 { self.zeros + 1 } else { 0 };
    }

    /// The last `n` live-byte values, oldest first (for a sparkline).
    pub fn last(&self, n: usize) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples.iter().skip(skip).map(|(_, b)| *b).collect()
    }
}

/// Series for every row seen, keyed by row id.
#[derive(Clone, Debug, Default)]
pub struct History {
    series: HashMap<u64, Series>,
    /// Rows holding memory that have no series at the last sample, beyond [`MAX_ROWS`] (they
    /// get no growth and no verdict).
    dropped: u64,
}

impl History {
    /// Records one sample for each `(row id, live bytes)`; rows not listed that have a series
    /// get a sample of 0 bytes (everything they held was freed). Beyond [`MAX_ROWS`], the rows
    /// holding least have no series: a new row's is never made only to be dropped.
    pub fn record(&mut self, t_s: f64, live: impl IntoIterator<Item = (u64, u64)>) {
        let mut seen = std::collections::HashSet::new();
        let mut new_rows: Vec<(u64, u64)> = Vec::new();
        for (id, bytes) in live {
            seen.insert(id);
            match self.series.get_mut(&id) {
                Some(series) => series.push(t_s, bytes),
                None => new_rows.push((bytes, id)),
            }
        }
        for (id, series) in &mut self.series {
            if !seen.contains(id) {
                series.push(t_s, 0);
            }
        }
        self.series.retain(|_, s| s.zeros < MAX_SAMPLES);
        let excess = (self.series.len() + new_rows.len()).saturating_sub(MAX_ROWS);
        if excess > 0 {
            // Every row, held and new, by live bytes: the `excess` holding least go.
            let mut by_live: Vec<(u64, u64, bool)> = self
                .series
                .iter()
                .map(|(id, s)| (s.samples.back().map_or(0, |(_, b)| *b), *id, true))
                .chain(new_rows.iter().map(|&(bytes, id)| (bytes, id, false)))
                .collect();
            by_live.select_nth_unstable(excess - 1);
            let mut left_out = std::collections::HashSet::new();
            for &(_, id, held) in &by_live[..excess] {
                if held {
                    self.series.remove(&id);
                } else {
                    left_out.insert(id);
                }
            }
            new_rows.retain(|(_, id)| !left_out.contains(id));
            self.dropped = by_live[..excess]
                .iter()
                .filter(|(live, _, _)| *live > 0)
                .count() as u64;
        } else {
            self.dropped = 0;
        }
        for (bytes, id) in new_rows {
            self.series.entry(id).or_default().push(t_s, bytes);
        }
    }

    /// Its counters: rows with a series, and series dropped at the bound.
    pub fn health(&self) -> Vec<Health> {
        vec![
            Health::new("history_rows", self.series.len() as u64, HealthKind::Info),
            Health::new("history_rows_dropped", self.dropped, HealthKind::Degraded),
        ]
    }

    /// The series of one row.
    pub fn get(&self, id: u64) -> Option<&Series> {
        self.series.get(&id)
    }

    /// Number of rows with a series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no row has a series yet.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_bounded() {
        let mut series = Series::default();
        for t in 0..(MAX_SAMPLES + 50) {
            series.push(t as f64, t as u64);
        }
        assert_eq!(series.samples.len(), MAX_SAMPLES);
        assert_eq!(series.last(3), vec![647, 648, 649]);
    }

    #[test]
    fn rows_that_hold_nothing_for_a_window_lose_their_series() {
        let mut history = History::default();
        history.record(0.0, [(1, 100), (2, 50)]);
        for t in 1..MAX_SAMPLES {
            history.record(t as f64, [(1, 100)]);
        }
        // Row 2 has held nothing for 599 samples: kept; one more and it goes
        assert_eq!(history.len(), 2);
        history.record(MAX_SAMPLES as f64, [(1, 100)]);
        assert_eq!(history.len(), 1);
        assert!(history.get(2).is_none());
        assert_eq!(history.health()[1].value, 0, "nothing held was dropped");
    }

    #[test]
    fn beyond_the_row_bound_the_rows_holding_least_lose_their_series() {
        let mut history = History::default();
        let rows = (0..MAX_ROWS as u64 + 3).map(|id| (id, id * 10));
        history.record(0.0, rows);
        assert_eq!(history.len(), MAX_ROWS);
        // Rows 0, 1 and 2 held least: 0 bytes (not a loss), 10 and 20 bytes (counted)
        assert!((0..3).all(|id| history.get(id).is_none()));
        assert!(history.get(3).is_some());
        let health = history.health();
        assert_eq!((health[0].value, health[1].value), (MAX_ROWS as u64, 2));
    }

    #[test]
    fn stacks_that_disappear_drop_to_zero() {
        let mut history = History::default();
        history.record(0.0, [(1, 100), (2, 50)]);
        history.record(1.0, [(1, 150)]);
        assert_eq!(history.get(2).map(|s| s.last(2)), Some(vec![50, 0]));
        assert_eq!(history.get(1).map(|s| s.last(2)), Some(vec![100, 150]));
        assert_eq!(history.len(), 2);
    }
}
