//! Live bytes over time, per report row: bounded series sampled once per interval, which
//! growth and verdicts are fitted to ([`crate::report::analytics`]).
use std::collections::{HashMap, VecDeque};

/// Samples kept per row (at one per second: ten minutes).
pub const MAX_SAMPLES: usize = 600;

/// One row's live bytes over time, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// `(seconds since attach, live bytes)`.
    pub samples: VecDeque<(f64, u64)>,
}

impl Series {
    /// Appends a sample, dropping the oldest beyond [`MAX_SAMPLES`].
    pub fn push(&mut self, t_s: f64, live_bytes: u64) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((t_s, live_bytes));
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
}

impl History {
    /// Records one sample for each `(row id, live bytes)`; rows not listed that have a series
    /// get a sample of 0 bytes (everything they held was freed).
    pub fn record(&mut self, t_s: f64, live: impl IntoIterator<Item = (u64, u64)>) {
        let mut seen = std::collections::HashSet::new();
        for (id, bytes) in live {
            seen.insert(id);
            self.series.entry(id).or_default().push(t_s, bytes);
        }
        for (id, series) in &mut self.series {
            if !seen.contains(id) {
                series.push(t_s, 0);
            }
        }
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
    fn stacks_that_disappear_drop_to_zero() {
        let mut history = History::default();
        history.record(0.0, [(1, 100), (2, 50)]);
        history.record(1.0, [(1, 150)]);
        assert_eq!(history.get(2).map(|s| s.last(2)), Some(vec![50, 0]));
        assert_eq!(history.get(1).map(|s| s.last(2)), Some(vec![100, 150]));
        assert_eq!(history.len(), 2);
    }
}
