//! The seam between where heap data comes from and everything that consumes it.
//!
//! A [`Source`] watches one target in its own way and yields what it saw as a [`Batch`]:
//! allocation and free events (the eBPF allocator probes, [`ebpf`]), or a whole-heap snapshot
//! with figures per stack (a runtime's own heap profile). Either way it names each call stack
//! once, with its return addresses and what allocated through it (its allocator: `glibc`, `go`).
//! The session drives every source on one loop and hands each batch to the heap model,
//! symbolizer, history, report, live view and exporters, none of which knows which source it
//! came from. Each source keeps its own health counters ([`Health`]), which every report lists.
//!
//! Adding a source is adding a folder here that implements [`Source`].
use std::{os::fd::BorrowedFd, sync::Arc};

use serde::{Serialize, Serializer, ser::SerializeMap as _};
use tracer_common::AllocKind;

use crate::target::Mapping;

pub mod ebpf;
pub mod go;

/// Identifies a call stack within one source (the kernel stack map's id, for [`ebpf`]).
pub type StackKey = u64;

/// The [`StackKey`] of events for which no stack was recorded.
pub const NO_STACK: StackKey = 0;

/// What an event does to the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `addr` became live; `old_addr`, when non-zero, stopped being live first.
    Alloc,
    /// `addr` stopped being live.
    Free,
    /// The process exec'd a new image: every block live so far is gone.
    Exec,
    /// `addr..addr + size` became an anonymous mapping, replacing what it overlaps.
    Map,
    /// `addr..addr + size` was unmapped: the parts of mappings inside it are gone.
    Unmap,
    /// `old_addr..old_addr + old_len` moved to `addr..addr + size` (`mremap`), keeping the
    /// stack it was mapped by.
    Remap {
        /// The old length.
        old_len: u64,
    },
}

/// One allocator event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapEvent {
    /// When it happened, in [`monotonic_now_ns`] nanoseconds.
    pub ts_ns: u64,
    /// Whether a block became live or stopped being live.
    pub op: Op,
    /// The block made live ([`Op::Alloc`]) or released ([`Op::Free`]); `0` means none (a failed
    /// allocation or `free(NULL)`), which makes nothing live and releases nothing.
    pub addr: u64,
    /// For [`Op::Alloc`]: a block released by the same call (a successful `realloc`), or `0`.
    pub old_addr: u64,
    /// Requested size in bytes ([`Op::Alloc`] only).
    pub size: u64,
    /// The allocating call stack ([`NO_STACK`] when none was recorded).
    pub stack: StackKey,
    /// Thread that made the call (0 where the source does not say: the kernel's free records).
    pub tid: u32,
    /// Which allocator entry point made the call.
    pub kind: AllocKind,
}

impl HeapEvent {
    /// `free(addr)` at `ts_ns` (of no known thread).
    pub(crate) fn free(ts_ns: u64, addr: u64) -> Self {
        Self {
            ts_ns,
            op: Op::Free,
            addr,
            old_addr: 0,
            size: 0,
            stack: NO_STACK,
            tid: 0,
            kind: AllocKind::Free,
        }
    }
}

#[cfg(test)]
impl HeapEvent {
    /// For tests: `malloc(size)` returning `addr` at `ts_ns` on `stack`.
    pub(crate) fn alloc(ts_ns: u64, addr: u64, size: u64, stack: StackKey) -> Self {
        Self {
            ts_ns,
            op: Op::Alloc,
            addr,
            old_addr: 0,
            size,
            stack,
            tid: 1,
            kind: AllocKind::Malloc,
        }
    }
}

/// A call stack, yielded once, before or with the first event or snapshot that names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewStack {
    /// Its key within the source.
    pub key: StackKey,
    /// Return addresses, innermost first (index 0 is the allocator's caller).
    pub ips: Vec<u64>,
    /// It filled every frame slot and may continue beyond `ips`.
    pub truncated: bool,
    /// The unwinder stopped before the outermost frame.
    pub incomplete: bool,
    /// What allocated through it: an allocator (`glibc`) or a runtime (`go`). Rows of different
    /// allocators are never merged.
    pub allocator: Arc<str>,
    /// Function name prefixes of the allocating runtime's own frames (`runtime.`): leading
    /// frames in them are dropped when a frame of the program follows, as `runtime/pprof`
    /// drops them, so the row starts where the program allocated. Empty: keep every frame.
    pub runtime_prefixes: &'static [&'static str],
}

/// One stack's figures in a whole-heap snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackFigures {
    /// Bytes allocated here and still live.
    pub live_bytes: u64,
    /// Blocks allocated here and still live.
    pub live_allocs: u64,
    /// Allocations made here since the source's counting began.
    pub total_allocs: u64,
    /// Bytes requested here since the source's counting began.
    pub total_bytes: u64,
}

/// What a source yields in one poll.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Stacks named for the first time.
    pub stacks: Vec<NewStack>,
    /// Events, roughly in time order (the heap model reorders within its window).
    pub events: Vec<HeapEvent>,
    /// The whole heap as the source sees it now, replacing its previous snapshot.
    pub snapshot: Option<Vec<(StackKey, StackFigures)>>,
}

impl Batch {
    /// Empties the batch, keeping its allocations for the next poll.
    pub fn clear(&mut self) {
        self.stacks.clear();
        self.events.clear();
        self.snapshot = None;
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty() && self.events.is_empty() && self.snapshot.is_none()
    }
}

/// How a source's figures are kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Yields {
    /// Events, replayed into a live-block model.
    Events {
        /// Mean bytes between sampled allocations when the source samples: figures are then
        /// unbiased estimates ([`crate::heap::sample_weight`]).
        sample_mean_bytes: Option<f64>,
        /// The events come in an order that puts every event after those it depends on (a
        /// block's allocation before its free, a free before the block is handed out again):
        /// they are applied as they come, not reordered by timestamp.
        in_order: bool,
    },
    /// Whole-heap snapshots, each replacing the last.
    Snapshots,
}

/// What a health counter says about the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthKind {
    /// Events that never reached the heap model: figures are incomplete.
    Lost,
    /// Events kept with less detail (no stack, a truncated one) or set right by the model.
    Degraded,
    /// A size or a check, not a loss.
    Info,
}

/// One loss or health counter, under its export name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Its name in exports (`ringbuf_full`).
    pub name: &'static str,
    /// Its value.
    pub value: u64,
    /// What it means for the figures.
    pub kind: HealthKind,
}

impl Health {
    /// A counter of `kind`.
    pub const fn new(name: &'static str, value: u64, kind: HealthKind) -> Self {
        Self { name, value, kind }
    }
}

/// Every loss and health counter of a run, in a fixed order; exported as one JSON object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Health>);

impl Diagnostics {
    /// The value of counter `name` (0 when no source has it).
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .filter(|h| h.name == name)
            .map(|h| h.value)
            .sum()
    }

    /// Sets counter `name`, adding it as `kind` if absent (for tests and tools).
    pub fn set(&mut self, name: &'static str, value: u64, kind: HealthKind) {
        match self.0.iter_mut().find(|h| h.name == name) {
            Some(health) => health.value = value,
            None => self.0.push(Health::new(name, value, kind)),
        }
    }

    /// Events that never reached the heap model: the sum of every [`HealthKind::Lost`] counter.
    pub fn lost_events(&self) -> u64 {
        self.0
            .iter()
            .filter(|h| h.kind == HealthKind::Lost)
            .fold(0u64, |sum, h| sum.saturating_add(h.value))
    }

    /// The counters that lost events, with their values, for a warning.
    pub fn losses(&self) -> impl Iterator<Item = &Health> {
        self.0
            .iter()
            .filter(|h| h.kind == HealthKind::Lost && h.value > 0)
    }

    /// The counters of degraded figures (not lost events) that are not zero: stacks without
    /// frames, rows without history, files skipped and the like.
    pub fn degradations(&self) -> impl Iterator<Item = &Health> {
        self.0
            .iter()
            .filter(|h| h.kind == HealthKind::Degraded && h.value > 0)
    }

    /// Every counter, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Health> {
        self.0.iter()
    }
}

impl Serialize for Diagnostics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for health in &self.0 {
            map.serialize_entry(health.name, &health.value)?;
        }
        map.end()
    }
}

/// A source of heap data for one target.
pub trait Source {
    /// What it is, for the start-up summary (`malloc probes in libc.so.6`).
    fn name(&self) -> String;

    /// How its figures are kept.
    fn yields(&self) -> Yields;

    /// A descriptor that becomes readable when data waits; a source without one is polled on
    /// the session's drain timer only.
    fn ready_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Moves whatever is ready into `out` (which the caller has emptied).
    fn poll(&mut self, out: &mut Batch);

    /// The target's mappings were read again (a new library, an exec): keep whatever depends
    /// on them current.
    fn mappings_changed(&mut self, _maps: &[Mapping]) {}

    /// Ends tracing at `cutoff_ns` ([`monotonic_now_ns`], about now): nothing after it is
    /// yielded, its health counters freeze, and it lets go of the target. A last [`Source::poll`] then
    /// yields what was still buffered.
    fn stop(&mut self, cutoff_ns: u64);

    /// Its loss and health counters, every one of them, zero or not.
    fn health(&self) -> Vec<Health>;

    /// Why it stopped yielding for good, if it did (what it reads is not what it expects, or
    /// there is nothing to read): the session ends with this error rather than report on
    /// without it.
    fn failed(&self) -> Option<crate::error::Failure> {
        None
    }

    /// When its figures are estimates from samples: how they were sampled, for every report.
    fn estimate(&self) -> Option<crate::report::Estimate> {
        None
    }
}

/// The clock every event source stamps events with: `CLOCK_MONOTONIC`, the clock of the
/// kernel's `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_sum_losses_and_export_as_one_object() {
        // Given counters of two kinds
        let diagnostics = Diagnostics(vec![
            Health::new("ringbuf_full", 3, HealthKind::Lost),
            Health::new("stack_failed", 5, HealthKind::Degraded),
            Health::new("pending_full", 4, HealthKind::Lost),
            Health::new("unwind_table_bytes", 4096, HealthKind::Info),
        ]);

        // Then only losses count as lost, in order, and the JSON is one object by name
        assert_eq!(diagnostics.lost_events(), 7);
        let names: Vec<&str> = diagnostics.losses().map(|h| h.name).collect();
        assert_eq!(names, ["ringbuf_full", "pending_full"]);
        assert_eq!(diagnostics.get("unwind_table_bytes"), 4096);
        assert_eq!(diagnostics.get("absent"), 0);
        assert_eq!(
            serde_json::to_string(&diagnostics).expect("serializes"),
            r#"{"ringbuf_full":3,"stack_failed":5,"pending_full":4,"unwind_table_bytes":4096}"#
        );
    }
}
