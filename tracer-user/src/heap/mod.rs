//! The live heap by stack, kept from what every source yields, and its history.
//!
//! Each source gets a store of its own: a live-block [`HeapModel`] replaying its events, or the
//! last whole-heap snapshot it yielded. A stack is named by its source and its key within it
//! ([`StackRef`]), so sources never collide; everything downstream asks [`Heap`] for figures
//! by stack without knowing which kind of store holds them.
pub mod history;
pub mod model;

use std::collections::{HashMap, VecDeque};

pub(crate) use model::FastHash;
pub use model::{
    DEFAULT_MAX_LIVE, DEFAULT_REORDER_WINDOW_NS, HeapConfig, HeapModel, StackStats, Totals,
    sample_weight,
};

use crate::source::{Batch, Health, HealthKind, StackFigures, StackKey, Yields};

/// Identifies one source within a session (its index in the order sources were added).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u16);

/// One stack of one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackRef {
    /// The source that yielded it.
    pub source: SourceId,
    /// Its key within that source.
    pub key: StackKey,
}

/// What one source's figures are kept in.
#[derive(Debug)]
enum Store {
    /// Events replayed into a live-block model (boxed: a model is much larger than a map).
    Events(Box<HeapModel>),
    /// The last whole-heap snapshot, by stack.
    Snapshot(HashMap<StackKey, SnapshotStack>),
}

impl Store {
    /// Its whole-process counters as counted.
    fn counts(&self) -> Totals {
        match self {
            Self::Events(model) => model.totals(),
            Self::Snapshot(stacks) => {
                stacks
                    .values()
                    .map(|s| s.figures)
                    .fold(Totals::default(), |t, f| Totals {
                        allocs: t.allocs + f.total_allocs,
                        frees: t.frees + f.total_allocs.saturating_sub(f.live_allocs),
                        live_bytes: t.live_bytes + f.live_bytes,
                        live_allocs: t.live_allocs + f.live_allocs,
                        ..t
                    })
            }
        }
    }

    /// Whether its live figures are estimates (sampled events, or a runtime's sampled profile)
    /// rather than counts of blocks.
    fn estimates(&self) -> bool {
        match self {
            Self::Events(model) => model.config().sample_mean_bytes.is_some(),
            Self::Snapshot(_) => false,
        }
    }
}

/// Checkpoints kept per snapshot stack; beyond this, every other one after the oldest is
/// dropped (the bound they give only gets coarser).
const MAX_CHECKPOINTS: usize = 32;

/// One stack of a snapshot source.
#[derive(Clone, Debug)]
struct SnapshotStack {
    /// Its figures in the last snapshot.
    figures: StackFigures,
    /// Earlier snapshots' `(time, live blocks, frees so far)`, oldest first, each one proving
    /// that a block live then is live still: frees since then are fewer than the blocks live
    /// then. A snapshot gives no ages, so the oldest such checkpoint is a lower bound on the
    /// age of the stack's oldest block. (A stack that keeps some blocks live while it frees
    /// and replaces them, such as churn or a cache, soon loses its checkpoints.)
    checkpoints: VecDeque<Checkpoint>,
}

/// What a snapshot said of one stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpoint {
    at_ns: u64,
    live_allocs: u64,
    frees: u64,
}

impl SnapshotStack {
    /// The stack as `figures` show it at `now_ns`, after `before`.
    fn next(before: Option<SnapshotStack>, figures: StackFigures, now_ns: u64) -> Self {
        let frees = figures.total_allocs.saturating_sub(figures.live_allocs);
        let mut checkpoints = before.map(|b| b.checkpoints).unwrap_or_default();
        // Once frees since a checkpoint could have covered every block live then, none of
        // those blocks is known to survive; frees only grow, so it never becomes valid again.
        while let Some(first) = checkpoints.front()
            && frees.saturating_sub(first.frees) >= first.live_allocs
        {
            checkpoints.pop_front();
        }
        if figures.live_allocs > 0 {
            checkpoints.push_back(Checkpoint {
                at_ns: now_ns,
                live_allocs: figures.live_allocs,
                frees,
            });
        }
        if checkpoints.len() > MAX_CHECKPOINTS {
            let mut i = 0;
            checkpoints.retain(|_| {
                i += 1;
                i == 1 || i % 2 == 0
            });
        }
        Self {
            figures,
            checkpoints,
        }
    }

    /// Since when a block of it has been live, for certain.
    fn live_since_ns(&self) -> Option<u64> {
        if self.figures.live_allocs == 0 {
            return None;
        }
        self.checkpoints.front().map(|c| c.at_ns)
    }
}

/// The heap of every source of one session.
#[derive(Debug, Default)]
pub struct Heap {
    stores: Vec<Store>,
}

impl Heap {
    /// An empty heap with no sources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source whose figures are kept as `yields` says; returns its id.
    pub fn add_source(&mut self, yields: Yields) -> SourceId {
        let id = SourceId(u16::try_from(self.stores.len()).unwrap_or(u16::MAX));
        self.stores.push(match yields {
            Yields::Events {
                sample_mean_bytes,
                in_order,
            } => Store::Events(Box::new(HeapModel::new(HeapConfig {
                sample_mean_bytes,
                in_order,
                ..HeapConfig::default()
            }))),
            Yields::Snapshots => Store::Snapshot(HashMap::new()),
        });
        id
    }

    /// Takes in what `source` yielded at `now_ns`: its events go to the reorder buffer, its
    /// snapshot replaces the previous one. (Its stacks are for [`crate::symbolize::stacks`].)
    pub fn ingest(&mut self, source: SourceId, batch: &Batch, now_ns: u64) {
        match self.stores.get_mut(usize::from(source.0)) {
            Some(Store::Events(model)) => {
                for event in &batch.events {
                    model.push(*event);
                }
            }
            Some(Store::Snapshot(stacks)) => {
                if let Some(snapshot) = &batch.snapshot {
                    let mut before = std::mem::take(stacks);
                    stacks.extend(snapshot.iter().map(|&(key, figures)| {
                        let stack = SnapshotStack::next(before.remove(&key), figures, now_ns);
                        (key, stack)
                    }));
                }
            }
            None => {}
        }
    }

    /// Applies every buffered event old enough at `now_ns` ([`HeapModel::advance_until`]).
    pub fn advance_until(&mut self, now_ns: u64) {
        for store in &mut self.stores {
            if let Store::Events(model) = store {
                model.advance_until(now_ns);
            }
        }
    }

    /// Applies every buffered event, for the final report.
    pub fn flush(&mut self) {
        for store in &mut self.stores {
            if let Store::Events(model) = store {
                model.flush();
            }
        }
    }

    /// Figures of every stack of every source at `now_ns`, counting as live only blocks at
    /// least `min_age_ns` old (snapshots, which have no ages, count everything).
    pub fn stack_stats(&self, now_ns: u64, min_age_ns: u64) -> Vec<(StackRef, StackStats)> {
        let mut out = Vec::new();
        for (source, store) in self.sources() {
            let at = |key| StackRef { source, key };
            match store {
                Store::Events(model) => out.extend(
                    model
                        .stack_stats_min_age(now_ns, min_age_ns)
                        .into_iter()
                        .map(|(key, stats)| (at(key), stats)),
                ),
                Store::Snapshot(stacks) => out.extend(
                    stacks
                        .iter()
                        .map(|(&key, s)| (at(key), snapshot_stats(s, now_ns))),
                ),
            }
        }
        out
    }

    /// Live bytes of every stack of every source at `now_ns`, as cheaply as each store allows.
    pub fn live_bytes_by_stack(&self, now_ns: u64) -> Vec<(StackRef, u64)> {
        let mut out = Vec::new();
        for (source, store) in self.sources() {
            let at = |key| StackRef { source, key };
            match store {
                Store::Events(model) => out.extend(
                    model
                        .live_bytes_by_stack(now_ns)
                        .into_iter()
                        .map(|(key, bytes)| (at(key), bytes)),
                ),
                Store::Snapshot(stacks) => {
                    out.extend(
                        stacks
                            .iter()
                            .map(|(&key, s)| (at(key), s.figures.live_bytes)),
                    );
                }
            }
        }
        out
    }

    /// Whole-process counters as counted, summed over sources (a sampling source's are counts
    /// of sampled blocks).
    pub fn counts(&self) -> Totals {
        let mut sum = Totals::default();
        for (_, store) in self.sources() {
            sum.absorb(&store.counts());
        }
        sum
    }

    /// Whole-process counters, summed over sources. Where a source's figures are estimates,
    /// its live bytes and blocks are the sum of its stacks' estimates in `stats` (from
    /// [`Self::stack_stats`]).
    pub fn totals(&self, stats: &[(StackRef, StackStats)]) -> Totals {
        let mut sum = Totals::default();
        for (source, store) in self.sources() {
            let mut totals = store.counts();
            if store.estimates() {
                let (bytes, allocs) = stats
                    .iter()
                    .filter(|(at, _)| at.source == source)
                    .fold((0u64, 0u64), |(b, a), (_, s)| {
                        (b + s.live_bytes, a + s.live_allocs)
                    });
                totals.live_bytes = bytes;
                totals.live_allocs = allocs;
            }
            sum.absorb(&totals);
        }
        sum
    }

    /// The heap models' own counters of events they set right or could not place.
    pub fn health(&self) -> Vec<Health> {
        let mut sum = Totals::default();
        for store in &self.stores {
            if let Store::Events(model) = store {
                sum.absorb(&model.totals());
            }
        }
        vec![
            Health::new("replaced_live", sum.replaced_live, HealthKind::Degraded),
            Health::new(
                "dropped_over_limit",
                sum.dropped_over_limit,
                HealthKind::Degraded,
            ),
            Health::new("late_events", sum.late_events, HealthKind::Degraded),
            Health::new("released_by_exec", sum.released_by_exec, HealthKind::Info),
        ]
    }

    fn sources(&self) -> impl Iterator<Item = (SourceId, &Store)> {
        self.stores
            .iter()
            .enumerate()
            .map(|(i, store)| (SourceId(u16::try_from(i).unwrap_or(u16::MAX)), store))
    }
}

/// A snapshot stack's figures as the heap model's at `now_ns`: no age histogram, and the
/// oldest block as old as its snapshots prove ([`SnapshotStack::checkpoints`]).
fn snapshot_stats(stack: &SnapshotStack, now_ns: u64) -> StackStats {
    let figures = &stack.figures;
    let live_since_ns = stack.live_since_ns();
    StackStats {
        live_bytes: figures.live_bytes,
        live_allocs: figures.live_allocs,
        total_allocs: figures.total_allocs,
        total_bytes: figures.total_bytes,
        oldest_live_ts_ns: live_since_ns,
        oldest_live_age_ns: live_since_ns.map(|t| now_ns.saturating_sub(t)),
        ..StackStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::HeapEvent;

    #[test]
    fn event_and_snapshot_sources_keep_their_stacks_apart_and_add_up() {
        // Given an event source and a snapshot source that both use stack key 7
        let mut heap = Heap::new();
        let events = heap.add_source(Yields::Events {
            sample_mean_bytes: None,
            in_order: false,
        });
        let snapshots = heap.add_source(Yields::Snapshots);
        heap.ingest(
            events,
            &Batch {
                events: vec![
                    HeapEvent::alloc(10, 0x1000, 64, 7),
                    HeapEvent::alloc(20, 0x2000, 32, 7),
                ],
                ..Batch::default()
            },
            30,
        );
        let figures = StackFigures {
            live_bytes: 1000,
            live_allocs: 10,
            total_allocs: 30,
            total_bytes: 3000,
        };
        heap.ingest(
            snapshots,
            &Batch {
                snapshot: Some(vec![(7, figures)]),
                ..Batch::default()
            },
            40,
        );
        heap.flush();

        // Then each source's stack 7 has its own figures, and totals add both
        let mut stats = heap.stack_stats(100, 0);
        stats.sort_by_key(|(at, _)| *at);
        let at = |source| StackRef { source, key: 7 };
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].0, at(events));
        assert_eq!((stats[0].1.live_bytes, stats[0].1.live_allocs), (96, 2));
        assert_eq!(stats[1].0, at(snapshots));
        assert_eq!(
            (stats[1].1.live_bytes, stats[1].1.total_bytes),
            (1000, 3000)
        );
        assert_eq!(
            stats[1].1.oldest_live_age_ns,
            Some(60),
            "live since the first snapshot"
        );
        let totals = heap.totals(&stats);
        assert_eq!((totals.live_bytes, totals.live_allocs), (1096, 12));
        assert_eq!((totals.allocs, totals.frees), (32, 20));

        // and a new snapshot replaces the old one whole
        heap.ingest(
            snapshots,
            &Batch {
                snapshot: Some(vec![]),
                ..Batch::default()
            },
            50,
        );
        assert_eq!(heap.stack_stats(100, 0).len(), 1);
        assert_eq!(heap.live_bytes_by_stack(100), vec![(at(events), 96)]);
    }

    fn figures(live_allocs: u64, total_allocs: u64) -> StackFigures {
        StackFigures {
            live_bytes: live_allocs * 8,
            live_allocs,
            total_allocs,
            total_bytes: total_allocs * 8,
        }
    }

    #[test]
    fn a_snapshot_stack_is_as_old_as_its_frees_prove() {
        // A map that only grows: nothing is freed, so what was live at the first snapshot is
        // live still
        let mut grows = None;
        for (t, live) in [(10, 5), (20, 9), (30, 14)] {
            grows = Some(SnapshotStack::next(grows, figures(live, live), t));
        }
        assert_eq!(
            grows.as_ref().and_then(SnapshotStack::live_since_ns),
            Some(10)
        );

        // Churn that always holds 5 blocks but frees 5 between snapshots: nothing proves any
        // block outlived a snapshot, so each is as young as the last one
        let mut churn = None;
        for (t, total) in [(10, 5), (20, 10), (30, 15)] {
            churn = Some(SnapshotStack::next(churn, figures(5, total), t));
        }
        assert_eq!(
            churn.as_ref().and_then(SnapshotStack::live_since_ns),
            Some(30)
        );

        // Frees fewer than the blocks live at a checkpoint keep it: 10 live at t=10, 4 freed
        let mut some = Some(SnapshotStack::next(None, figures(10, 10), 10));
        some = Some(SnapshotStack::next(some, figures(8, 12), 20));
        assert_eq!(
            some.as_ref().and_then(SnapshotStack::live_since_ns),
            Some(10)
        );
        // and nothing live is no age at all
        let none = SnapshotStack::next(some, figures(0, 12), 30);
        assert_eq!(none.live_since_ns(), None);

        // However long it runs, few checkpoints are kept, the oldest among them
        let mut long = None;
        for t in 1..=1000 {
            long = Some(SnapshotStack::next(long, figures(t, t), t));
        }
        let long = long.expect("a stack");
        assert!(long.checkpoints.len() <= MAX_CHECKPOINTS);
        assert_eq!(long.live_since_ns(), Some(1));
    }
}
