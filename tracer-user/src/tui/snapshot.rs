//! What the session publishes to the live view about once per interval, and what the view
//! tells the session back ([`ViewLink`]).
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{
    heap::history::Series,
    report::Report,
    source::{Health, HealthKind},
};

/// The state of the trace at one moment, complete enough to render and to export.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Every row, sorted by live bytes, symbolized. `report.duration_s` is the time since
    /// attach.
    pub report: Report,
    /// Live bytes over time for each stack in `report.stacks`, parallel to it: the series of
    /// the rows holding most and of the rows the view has on screen ([`ViewLink::want`]); empty
    /// for the others.
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

/// Stack ids the view asks series for at most (the members of the rows on screen).
pub const MAX_WANTED: usize = 2_000;

/// What the live view tells the session: which rows it shows, and how long it takes.
#[derive(Debug, Default)]
pub struct ViewLink {
    /// Ids of the stacks on screen, whose series the next snapshots carry.
    wanted: Mutex<Vec<u64>>,
    /// The longest a key or a snapshot took to be applied (the rows filtered, grouped and
    /// sorted again over every stack), in microseconds.
    slowest_update_us: AtomicU64,
    /// The longest a frame took to draw, in microseconds.
    slowest_frame_us: AtomicU64,
    /// The longest from a key read to its answer drawn, in microseconds.
    slowest_key_us: AtomicU64,
}

impl ViewLink {
    /// Asks for the series of `ids` (at most [`MAX_WANTED`] are kept).
    pub fn want(&self, mut ids: Vec<u64>) {
        ids.truncate(MAX_WANTED);
        if let Ok(mut wanted) = self.wanted.lock() {
            *wanted = ids;
        }
    }

    /// The ids the view asked for last.
    pub fn wanted(&self) -> Vec<u64> {
        self.wanted.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Records how long a key or a snapshot took to apply.
    pub fn record_update(&self, took: Duration) {
        record_max(&self.slowest_update_us, took);
    }

    /// Records how long a frame took to draw.
    pub fn record_frame(&self, took: Duration) {
        record_max(&self.slowest_frame_us, took);
    }

    /// Records how long a key took from being read to its answer drawn.
    pub fn record_key(&self, took: Duration) {
        record_max(&self.slowest_key_us, took);
    }

    /// Its counters, for the report's diagnostics.
    pub fn health(&self) -> Vec<Health> {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        vec![
            Health::new(
                "view_slowest_update_us",
                get(&self.slowest_update_us),
                HealthKind::Info,
            ),
            Health::new(
                "view_slowest_frame_us",
                get(&self.slowest_frame_us),
                HealthKind::Info,
            ),
            Health::new(
                "view_slowest_key_us",
                get(&self.slowest_key_us),
                HealthKind::Info,
            ),
        ]
    }
}

fn record_max(slot: &AtomicU64, took: Duration) {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    slot.fetch_max(us, Ordering::Relaxed);
}
