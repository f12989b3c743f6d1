//! The live heap model: which blocks the traced process holds right now, grouped by the call
//! stack that allocated them.
//!
//! A source whose events can reach user space out of order (from buffers per CPU, say) has
//! [`HeapModel::push`] put each event into a reorder buffer: [`HeapModel::advance`] applies, in
//! timestamp order, every buffered event older than the newest timestamp seen minus
//! [`HeapConfig::reorder_window_ns`]; [`HeapModel::flush`] applies everything, for the final
//! report. A source whose order is already right ([`HeapConfig::in_order`]: the kernel's one
//! ring buffer, read in the order its records were reserved) has each event applied as it is
//! pushed.
//!
//! The model is pure: no I/O, no clock. Callers pass timestamps (`bpf_ktime_get_ns` values) in.
//!
//! Each live block costs one 24-byte table entry: its address (the key), its size, and a word
//! holding the allocating stack's index and the allocation time in milliseconds since the first
//! applied event. Ages are therefore exact to a millisecond, and saturate after 49.7 days.
//!
//! ```
//! use leaktrace::{
//!     heap::{HeapConfig, HeapModel},
//!     source::{HeapEvent, Op},
//! };
//! use tracer_common::AllocKind;
//!
//! let mut heap = HeapModel::new(HeapConfig::default());
//! let ev = |ts_ns, op, addr, size| HeapEvent {
//!     ts_ns, op, addr, old_addr: 0, size, stack: 7, tid: 1, kind: AllocKind::Malloc,
//! };
//! heap.push(ev(10, Op::Alloc, 0x1000, 64));
//! heap.push(ev(20, Op::Alloc, 0x2000, 32));
//! heap.push(ev(30, Op::Free, 0x1000, 0));
//! heap.flush();
//! assert_eq!(heap.totals().live_bytes, 32);
//! ```
#![warn(missing_docs)]

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    mem::size_of,
};

use crate::{
    report::analytics::AgeHistogram,
    source::{HeapEvent, Op, StackKey},
};

/// Default [`HeapConfig::reorder_window_ns`]: 50 ms.
pub const DEFAULT_REORDER_WINDOW_NS: u64 = 50_000_000;

/// Default [`HeapConfig::max_live`]: 16 million live blocks.
pub const DEFAULT_MAX_LIVE: usize = 16_000_000;

/// Limits of a [`HeapModel`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeapConfig {
    /// How long an event waits in the reorder buffer before it is applied, measured against the
    /// newest timestamp seen. It must exceed the worst delay between CPUs' ring-buffer records.
    pub reorder_window_ns: u64,
    /// Most live blocks tracked; further allocations are counted but not tracked
    /// ([`Totals::dropped_over_limit`]).
    pub max_live: usize,
    /// Mean bytes between sampled allocations when the kernel samples (`--sample-bytes`);
    /// [`HeapModel::stack_stats`] then gives unbiased estimates instead of counts.
    pub sample_mean_bytes: Option<f64>,
    /// The events come in an order that already puts every event after those it depends on
    /// (see [`crate::source::Yields::Events`]): each is applied as it is pushed, with no reorder
    /// buffer, and its timestamp only dates it.
    pub in_order: bool,
}

/// How many allocations of `size` bytes one sampled allocation stands for, under Poisson
/// sampling by bytes with mean `mean`: the inverse of its chance of being sampled,
/// `1 / (1 - exp(-size / mean))` (as tcmalloc and Go's heap profiles scale samples).
pub fn sample_weight(size: u64, mean: f64) -> f64 {
    let p = -(-(size.max(1) as f64) / mean).exp_m1();
    if p > 0.0 { 1.0 / p } else { 1.0 }
}

impl Default for HeapConfig {
    fn default() -> Self {
        Self {
            reorder_window_ns: DEFAULT_REORDER_WINDOW_NS,
            sample_mean_bytes: None,
            max_live: DEFAULT_MAX_LIVE,
            in_order: false,
        }
    }
}

/// Per-stack figures, as returned by [`HeapModel::stack_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Bytes allocated by this stack and still live.
    pub live_bytes: u64,
    /// Blocks allocated by this stack and still live.
    pub live_allocs: u64,
    /// Allocations made by this stack since attach, live or not (including untracked ones).
    pub total_allocs: u64,
    /// Bytes requested by this stack since attach.
    pub total_bytes: u64,
    /// Timestamp of this stack's oldest live block, if any, rounded down to a millisecond since
    /// the model's first applied event.
    pub oldest_live_ts_ns: Option<u64>,
    /// Age of that block at the `now_ns` given to [`HeapModel::stack_stats`] (0 if it is newer).
    pub oldest_live_age_ns: Option<u64>,
    /// This stack's live blocks by age at `now_ns`.
    pub ages: AgeHistogram,
}

impl StackStats {
    /// Adds `other`'s figures to these, as for one row made of both stacks: counts and bytes
    /// add up, the oldest live block is the older of the two.
    pub fn absorb(&mut self, other: &StackStats) {
        self.live_bytes = self.live_bytes.saturating_add(other.live_bytes);
        self.live_allocs = self.live_allocs.saturating_add(other.live_allocs);
        self.total_allocs = self.total_allocs.saturating_add(other.total_allocs);
        self.total_bytes = self.total_bytes.saturating_add(other.total_bytes);
        self.oldest_live_ts_ns = match (self.oldest_live_ts_ns, other.oldest_live_ts_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.oldest_live_age_ns = match (self.oldest_live_age_ns, other.oldest_live_age_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.ages.absorb(&other.ages);
    }
}

/// Whole-process counters, as returned by [`HeapModel::totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Allocation events applied (each successful allocating call, tracked or not).
    pub allocs: u64,
    /// Block releases applied: every `free` of a non-null pointer and every block a `realloc`
    /// released, whether the block was known or not.
    pub frees: u64,
    /// Bytes in tracked live blocks.
    pub live_bytes: u64,
    /// Tracked live blocks.
    pub live_allocs: u64,
    /// Releases of blocks the model did not know (allocated before attach, lost events, or not
    /// tracked because of [`HeapConfig::max_live`]).
    pub unmatched_frees: u64,
    /// Allocations returning a block that was already live: its release was missed, and the old
    /// entry was replaced.
    pub replaced_live: u64,
    /// Allocations not tracked because the live table held [`HeapConfig::max_live`] blocks.
    pub dropped_over_limit: u64,
    /// Events applied after a later event had already been applied: they arrived more than the
    /// reorder window late, so their order relative to other events may be wrong.
    pub late_events: u64,
    /// Blocks that stopped being live because the process exec'd a new image.
    pub released_by_exec: u64,
    /// Of the live bytes, those in anonymous mappings made outside the allocators.
    pub mapped_bytes: u64,
    /// Of the live blocks, the anonymous mappings (a mapping partly unmapped in its middle is
    /// two).
    pub mapped_regions: u64,
}

impl Totals {
    /// Adds `other`'s counters to these, as for one process holding both heaps.
    pub fn absorb(&mut self, other: &Totals) {
        let Totals {
            allocs,
            frees,
            live_bytes,
            live_allocs,
            unmatched_frees,
            replaced_live,
            dropped_over_limit,
            late_events,
            released_by_exec,
            mapped_bytes,
            mapped_regions,
        } = *other;
        self.allocs += allocs;
        self.frees += frees;
        self.live_bytes += live_bytes;
        self.live_allocs += live_allocs;
        self.unmatched_frees += unmatched_frees;
        self.replaced_live += replaced_live;
        self.dropped_over_limit += dropped_over_limit;
        self.late_events += late_events;
        self.released_by_exec += released_by_exec;
        self.mapped_bytes += mapped_bytes;
        self.mapped_regions += mapped_regions;
    }

    /// Allocations that ended up in the live table, minus those that left it again, should equal
    /// [`Totals::live_allocs`]; this returns whether that bookkeeping identity holds:
    /// `allocs = live_allocs + matched frees + replaced_live + dropped_over_limit`.
    pub fn is_consistent(&self) -> bool {
        let matched_frees = self.frees.checked_sub(self.unmatched_frees);
        matched_frees
            .and_then(|m| m.checked_add(self.live_allocs))
            .and_then(|n| n.checked_add(self.replaced_live))
            .and_then(|n| n.checked_add(self.dropped_over_limit))
            .is_some_and(|n| n == self.allocs)
    }
}

/// The live heap of one process, fed with [`HeapEvent`]s.
#[derive(Debug)]
pub struct HeapModel {
    config: HeapConfig,
    /// Events waiting to be applied, sorted by `(ts, seq)`. Events arrive almost in order (the
    /// ring buffer interleaves CPUs by microseconds), so an insertion lands at or near the back
    /// and the oldest leave from the front: no heap sift per event.
    pending: VecDeque<Buffered>,
    /// Arrival counter, the tie-break between equal timestamps.
    next_seq: u64,
    /// Newest timestamp pushed so far.
    newest_ts_ns: Option<u64>,
    /// Newest timestamp applied so far.
    applied_ts_ns: Option<u64>,
    /// Timestamp of the first applied event: [`LiveAlloc::ms`] counts from here.
    origin_ns: Option<u64>,
    /// Live blocks by address.
    live: HashMap<u64, LiveAlloc, FastHash>,
    /// Anonymous mappings by start address (`size` their length), kept in order so a partial
    /// unmap or an overlapping map finds what it cuts.
    mapped: BTreeMap<u64, LiveAlloc>,
    /// Per-stack counters, indexed by [`LiveAlloc::stack`].
    stacks: Vec<StackSlot>,
    /// Stack key to index into `stacks`.
    stack_index: HashMap<StackKey, u32, FastHash>,
    totals: Totals,
}

impl HeapModel {
    /// An empty model.
    pub fn new(config: HeapConfig) -> Self {
        Self {
            config,
            pending: VecDeque::new(),
            next_seq: 0,
            newest_ts_ns: None,
            applied_ts_ns: None,
            origin_ns: None,
            live: HashMap::default(),
            mapped: BTreeMap::new(),
            stacks: Vec::new(),
            stack_index: HashMap::default(),
            totals: Totals::default(),
        }
    }

    /// The limits it was made with.
    pub fn config(&self) -> &HeapConfig {
        &self.config
    }

    /// Puts an event into the reorder buffer; [`HeapModel::advance`] or [`HeapModel::flush`]
    /// applies it. In order ([`HeapConfig::in_order`]), applies it now.
    pub fn push(&mut self, ev: HeapEvent) {
        self.newest_ts_ns = Some(self.newest_ts_ns.map_or(ev.ts_ns, |n| n.max(ev.ts_ns)));
        if self.config.in_order {
            self.apply(&ev);
            return;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let buffered = Buffered {
            ts_ns: ev.ts_ns,
            seq,
            ev,
        };
        // `seq` grows, so a new event sorts after every buffered one with its timestamp.
        if self.pending.back().is_none_or(|last| *last <= buffered) {
            self.pending.push_back(buffered);
        } else {
            let at = insertion_point_from_back(&self.pending, &buffered);
            self.pending.insert(at, buffered);
        }
    }

    /// Applies, in timestamp order (ties in arrival order), every buffered event whose timestamp
    /// is at most the newest timestamp seen minus the reorder window.
    pub fn advance(&mut self) {
        self.advance_until(0);
    }

    /// Like [`Self::advance`], but also applies events older than `now_ns` (same clock as the
    /// events) minus the window: once that much time has passed no earlier event can still be
    /// on its way, so a quiet target's last events do not wait for newer ones.
    pub fn advance_until(&mut self, now_ns: u64) {
        let newest = self.newest_ts_ns.unwrap_or(0).max(now_ns);
        let Some(horizon) = newest.checked_sub(self.config.reorder_window_ns) else {
            return;
        };
        while self.pending.front().is_some_and(|b| b.ts_ns <= horizon) {
            if let Some(b) = self.pending.pop_front() {
                self.apply(&b.ev);
            }
        }
    }

    /// Applies every buffered event, in timestamp order.
    pub fn flush(&mut self) {
        while let Some(b) = self.pending.pop_front() {
            self.apply(&b.ev);
        }
    }

    /// Per-stack figures for every stack that allocated since the model was created, sorted by
    /// live bytes, then total bytes (both descending), then stack key. Ages are measured at
    /// `now_ns`. This scans the whole live table once.
    pub fn stack_stats(&self, now_ns: u64) -> Vec<(StackKey, StackStats)> {
        self.stack_stats_min_age(now_ns, 0)
    }

    /// Live bytes of every stack: from the running counters (no scan of the live table), or,
    /// when sampling, the estimates of [`Self::stack_stats`] (which need the scan).
    pub fn live_bytes_by_stack(&self, now_ns: u64) -> Vec<(StackKey, u64)> {
        if self.config.sample_mean_bytes.is_some() {
            return self
                .stack_stats(now_ns)
                .into_iter()
                .map(|(key, stats)| (key, stats.live_bytes))
                .collect();
        }
        self.stacks
            .iter()
            .map(|slot| (slot.key, slot.live_bytes))
            .collect()
    }

    /// Like [`Self::stack_stats`], but live bytes and counts only count blocks at least
    /// `min_age_ns` old at `now_ns` (`--min-age`); the totals since attach are unchanged.
    pub fn stack_stats_min_age(&self, now_ns: u64, min_age_ns: u64) -> Vec<(StackKey, StackStats)> {
        let mut oldest_ms: Vec<Option<u32>> = vec![None; self.stacks.len()];
        let mut ages: Vec<AgeHistogram> = vec![AgeHistogram::default(); self.stacks.len()];
        let mut estimated: Vec<(f64, f64)> = if self.config.sample_mean_bytes.is_some() {
            vec![(0.0, 0.0); self.stacks.len()]
        } else {
            Vec::new()
        };
        let mut old: Vec<(u64, u64)> = if min_age_ns > 0 {
            vec![(0, 0); self.stacks.len()]
        } else {
            Vec::new()
        };
        let origin_ns = self.origin_ns.unwrap_or(0);
        // Blocks allocated at or before this many ms after the origin are old enough.
        let cutoff_ms = now_ns.saturating_sub(min_age_ns).saturating_sub(origin_ns) / NS_PER_MS;
        // Mappings are never sampled: they count with weight 1.
        let blocks = self
            .live
            .values()
            .map(|entry| (entry, true))
            .chain(self.mapped.values().map(|entry| (entry, false)));
        for (entry, sampled) in blocks {
            let ms = entry.ms;
            let index = usize::try_from(entry.stack).ok();
            if let Some(slot) = index.and_then(|i| oldest_ms.get_mut(i)) {
                *slot = Some(slot.map_or(ms, |o| o.min(ms)));
            }
            if let Some(histogram) = index.and_then(|i| ages.get_mut(i)) {
                let born_ns = origin_ns.saturating_add(u64::from(ms).saturating_mul(NS_PER_MS));
                histogram.add(now_ns.saturating_sub(born_ns) as f64 / 1e9);
            }
            if u64::from(ms) <= cutoff_ms
                && let Some(slot) = index.and_then(|i| old.get_mut(i))
            {
                slot.0 += entry.size;
                slot.1 += 1;
            }
            if let Some(mean) = self.config.sample_mean_bytes
                && let Some(slot) = index.and_then(|i| estimated.get_mut(i))
                && (min_age_ns == 0 || u64::from(ms) <= cutoff_ms)
            {
                let weight = if sampled {
                    sample_weight(entry.size, mean)
                } else {
                    1.0
                };
                slot.0 += weight * entry.size as f64;
                slot.1 += weight;
            }
        }
        let oldest = oldest_ms.into_iter().map(|ms| {
            ms.map(|ms| origin_ns.saturating_add(u64::from(ms).saturating_mul(NS_PER_MS)))
        });
        let mut out: Vec<(StackKey, StackStats)> = self
            .stacks
            .iter()
            .zip(oldest)
            .enumerate()
            .map(|(i, (slot, oldest))| {
                let (mut live_bytes, mut live_allocs) = old
                    .get(i)
                    .copied()
                    .unwrap_or((slot.live_bytes, slot.live_allocs));
                let (mut total_allocs, mut total_bytes) = (slot.total_allocs, slot.total_bytes);
                if let Some(&(bytes, allocs)) = estimated.get(i) {
                    live_bytes = bytes.round() as u64;
                    live_allocs = allocs.round() as u64;
                    total_allocs = slot.est_total_allocs.round() as u64;
                    total_bytes = slot.est_total_bytes.round() as u64;
                }
                let stats = StackStats {
                    live_bytes,
                    live_allocs,
                    total_allocs,
                    total_bytes,
                    oldest_live_ts_ns: oldest,
                    oldest_live_age_ns: oldest.map(|ts| now_ns.saturating_sub(ts)),
                    ages: ages.get(i).copied().unwrap_or_default(),
                };
                (slot.key, stats)
            })
            .collect();
        out.sort_by(|(ka, a), (kb, b)| {
            b.live_bytes
                .cmp(&a.live_bytes)
                .then(b.total_bytes.cmp(&a.total_bytes))
                .then(ka.cmp(kb))
        });
        out
    }

    /// Whole-process counters.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// An estimate of the heap memory the model itself holds, from the capacities of its tables
    /// (allocator overhead aside), plus the model struct.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            .saturating_add(table_bytes(&self.live))
            .saturating_add(
                self.mapped
                    .len()
                    .saturating_mul(size_of::<(u64, LiveAlloc)>() + 16),
            )
            .saturating_add(table_bytes(&self.stack_index))
            .saturating_add(
                self.stacks
                    .capacity()
                    .saturating_mul(size_of::<StackSlot>()),
            )
            .saturating_add(
                self.pending
                    .capacity()
                    .saturating_mul(size_of::<Buffered>()),
            )
    }

    /// Events still in the reorder buffer.
    pub fn pending_events(&self) -> usize {
        self.pending.len()
    }

    /// Drops every live block (the process replaced its image), counting them.
    fn release_all(&mut self) {
        self.totals.released_by_exec += (self.live.len() + self.mapped.len()) as u64;
        self.live.clear();
        self.mapped.clear();
        self.totals.mapped_bytes = 0;
        self.totals.mapped_regions = 0;
        for slot in &mut self.stacks {
            slot.live_bytes = 0;
            slot.live_allocs = 0;
        }
        self.totals.live_bytes = 0;
        self.totals.live_allocs = 0;
    }

    fn apply(&mut self, ev: &HeapEvent) {
        // In arrival order, an event dated a little before one already applied (stamped on
        // another CPU before it reserved its record) is where it belongs.
        if !self.config.in_order && self.applied_ts_ns.is_some_and(|applied| ev.ts_ns < applied) {
            self.totals.late_events += 1;
        }
        self.applied_ts_ns = Some(self.applied_ts_ns.map_or(ev.ts_ns, |a| a.max(ev.ts_ns)));
        if self.origin_ns.is_none() {
            self.origin_ns = Some(ev.ts_ns);
        }
        match ev.op {
            Op::Exec => self.release_all(),
            Op::Free => self.release(ev.addr),
            Op::Alloc => {
                self.release(ev.old_addr);
                self.allocate(ev);
            }
            Op::Map => self.map(ev),
            Op::Unmap => {
                if self
                    .unmap(ev.addr, ev.addr.saturating_add(ev.size))
                    .is_some()
                {
                    self.totals.frees += 1;
                }
            }
            Op::Remap { old_len } => {
                // The moved part keeps the stack and age of the mapping it came from.
                let old_end = ev.old_addr.saturating_add(old_len);
                if let Some(from) = self.unmap(ev.old_addr, old_end) {
                    let end = ev.addr.saturating_add(ev.size);
                    self.unmap(ev.addr, end);
                    self.insert_mapping(
                        ev.addr,
                        LiveAlloc {
                            size: ev.size,
                            ..from
                        },
                    );
                }
            }
        }
    }

    /// A new anonymous mapping, replacing whatever part of another it overlaps (`MAP_FIXED`).
    fn map(&mut self, ev: &HeapEvent) {
        if ev.addr == 0 || ev.size == 0 {
            return;
        }
        self.unmap(ev.addr, ev.addr.saturating_add(ev.size));
        self.totals.allocs += 1;
        let Some(stack) = self.slot_for(ev.stack) else {
            self.totals.dropped_over_limit += 1;
            return;
        };
        if let Some(slot) = self.slot_mut(stack) {
            slot.total_allocs += 1;
            slot.total_bytes = slot.total_bytes.saturating_add(ev.size);
            slot.est_total_allocs += 1.0;
            slot.est_total_bytes += ev.size as f64;
        }
        let ms = ev.ts_ns.saturating_sub(self.origin_ns.unwrap_or(ev.ts_ns)) / NS_PER_MS;
        let entry = LiveAlloc {
            size: ev.size,
            ms: u32::try_from(ms).unwrap_or(u32::MAX),
            stack,
        };
        self.insert_mapping(ev.addr, entry);
    }

    fn insert_mapping(&mut self, start: u64, entry: LiveAlloc) {
        if entry.size == 0 {
            return;
        }
        self.mapped.insert(start, entry);
        self.remember(entry);
        self.totals.mapped_bytes = self.totals.mapped_bytes.saturating_add(entry.size);
        self.totals.mapped_regions += 1;
    }

    fn remove_mapping(&mut self, start: u64) -> Option<LiveAlloc> {
        let entry = self.mapped.remove(&start)?;
        self.forget(entry);
        self.totals.mapped_bytes = self.totals.mapped_bytes.saturating_sub(entry.size);
        self.totals.mapped_regions = self.totals.mapped_regions.saturating_sub(1);
        Some(entry)
    }

    /// Unmaps `start..end`: mappings inside it go, mappings across its ends keep the parts
    /// outside it. Returns the first mapping it cut into, if any.
    fn unmap(&mut self, start: u64, end: u64) -> Option<LiveAlloc> {
        if start >= end {
            return None;
        }
        let before = self
            .mapped
            .range(..start)
            .next_back()
            .filter(|(s, e)| s.saturating_add(e.size) > start)
            .map(|(s, _)| *s);
        let inside: Vec<u64> = self.mapped.range(start..end).map(|(s, _)| *s).collect();
        let mut first = None;
        for at in before.into_iter().chain(inside) {
            let Some(entry) = self.remove_mapping(at) else {
                continue;
            };
            first.get_or_insert(entry);
            let entry_end = at.saturating_add(entry.size);
            if at < start {
                self.insert_mapping(
                    at,
                    LiveAlloc {
                        size: start - at,
                        ..entry
                    },
                );
            }
            if entry_end > end {
                self.insert_mapping(
                    end,
                    LiveAlloc {
                        size: entry_end - end,
                        ..entry
                    },
                );
            }
        }
        first
    }

    /// Releases `addr` (no-op for 0, which is `free(NULL)` or a realloc without an old block).
    fn release(&mut self, addr: u64) {
        if addr == 0 {
            return;
        }
        self.totals.frees += 1;
        match self.live.remove(&addr) {
            Some(entry) => self.forget(entry),
            None => self.totals.unmatched_frees += 1,
        }
    }

    fn allocate(&mut self, ev: &HeapEvent) {
        if ev.addr == 0 {
            return;
        }
        self.totals.allocs += 1;
        let Some(stack) = self.slot_for(ev.stack) else {
            self.totals.dropped_over_limit += 1;
            return;
        };
        let weight = self
            .config
            .sample_mean_bytes
            .map(|mean| sample_weight(ev.size, mean));
        if let Some(slot) = self.slot_mut(stack) {
            slot.total_allocs += 1;
            slot.total_bytes = slot.total_bytes.saturating_add(ev.size);
            if let Some(weight) = weight {
                slot.est_total_allocs += weight;
                slot.est_total_bytes += weight * ev.size as f64;
            }
        }
        if self.live.len() >= self.config.max_live && !self.live.contains_key(&ev.addr) {
            self.totals.dropped_over_limit += 1;
            return;
        }
        let ms = ev.ts_ns.saturating_sub(self.origin_ns.unwrap_or(ev.ts_ns)) / NS_PER_MS;
        let entry = LiveAlloc {
            size: ev.size,
            ms: u32::try_from(ms).unwrap_or(u32::MAX),
            stack,
        };
        if let Some(old) = self.live.insert(ev.addr, entry) {
            self.forget(old);
            self.totals.replaced_live += 1;
        }
        self.remember(entry);
    }

    /// Index of `key`'s slot, created on first use; `None` only if `u32` indices ran out.
    fn slot_for(&mut self, key: StackKey) -> Option<u32> {
        if let Some(&index) = self.stack_index.get(&key) {
            return Some(index);
        }
        let index = u32::try_from(self.stacks.len()).ok()?;
        self.stacks.push(StackSlot {
            key,
            ..StackSlot::default()
        });
        self.stack_index.insert(key, index);
        Some(index)
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut StackSlot> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.stacks.get_mut(i))
    }

    /// Counts a block that just entered the live table.
    fn remember(&mut self, entry: LiveAlloc) {
        let size = entry.size;
        self.totals.live_allocs += 1;
        self.totals.live_bytes = self.totals.live_bytes.saturating_add(size);
        if let Some(slot) = self.slot_mut(entry.stack) {
            slot.live_allocs += 1;
            slot.live_bytes = slot.live_bytes.saturating_add(size);
        }
    }

    /// Uncounts a block that just left the live table.
    fn forget(&mut self, entry: LiveAlloc) {
        let size = entry.size;
        self.totals.live_allocs = self.totals.live_allocs.saturating_sub(1);
        self.totals.live_bytes = self.totals.live_bytes.saturating_sub(size);
        if let Some(slot) = self.slot_mut(entry.stack) {
            slot.live_allocs = slot.live_allocs.saturating_sub(1);
            slot.live_bytes = slot.live_bytes.saturating_sub(size);
        }
    }
}

/// Nanoseconds per millisecond, the unit of [`LiveAlloc::ms`].
const NS_PER_MS: u64 = 1_000_000;

/// A live block: 16 bytes, so a table entry with its address key takes 24.
#[derive(Clone, Copy, Debug)]
struct LiveAlloc {
    /// Requested size in bytes.
    size: u64,
    /// Allocation time in milliseconds since [`HeapModel::origin_ns`], saturating (49.7 days).
    ms: u32,
    /// Index into [`HeapModel::stacks`].
    stack: u32,
}

/// Running counters of one stack.
#[derive(Clone, Copy, Debug, Default)]
struct StackSlot {
    key: StackKey,
    live_bytes: u64,
    live_allocs: u64,
    total_allocs: u64,
    total_bytes: u64,
    /// Sampling: estimated allocations and bytes since attach.
    est_total_allocs: f64,
    est_total_bytes: f64,
}

/// Where `new` goes in `sorted` (after every entry at most it), found from the back: an event
/// out of order is late by microseconds, so its place is a few entries from the back of a buffer
/// that holds the reorder window's tens of thousands of events. The search doubles its step back
/// from the end, then halves within the last step: it touches the recently written (cached) end
/// of the buffer, where a binary search over all of it missed the cache at most of its probes
/// (most of the reader's time under load, by `perf`).
fn insertion_point_from_back(sorted: &VecDeque<Buffered>, new: &Buffered) -> usize {
    // Invariant: every entry at `hi` or after sorts after `new`; every one before `lo` at most
    // at it.
    let mut hi = sorted.len();
    let mut step = 1;
    let mut lo = loop {
        let Some(probe) = hi.checked_sub(step) else {
            break 0;
        };
        if sorted[probe] <= *new {
            break probe + 1;
        }
        hi = probe;
        step *= 2;
    };
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if sorted[mid] <= *new {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A reorder-buffer entry, ordered by `(ts_ns, seq)` only.
#[derive(Clone, Copy, Debug)]
struct Buffered {
    ts_ns: u64,
    seq: u64,
    ev: HeapEvent,
}

impl PartialEq for Buffered {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Buffered {}

impl PartialOrd for Buffered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Buffered {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts_ns, self.seq).cmp(&(other.ts_ns, other.seq))
    }
}

/// Hash state for the model's tables: keys are addresses and stack ids, hashed millions of times
/// per second, and come from the traced process and kernel rather than from an attacker who could
/// aim for collisions, so a fast integer mixer replaces SipHash.
pub(crate) type FastHash = BuildHasherDefault<MixHasher>;

/// Hashes `u64`s with the splitmix64 finalizer, which spreads every input bit over the whole
/// output (the table uses both the low bits and the top 7 bits, and addresses are 16-aligned).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (dst, src) in word.iter_mut().zip(chunk) {
                *dst = *src;
            }
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let mut z = (self.0 ^ n).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }
}

/// Heap bytes behind a `HashMap` of this capacity, following hashbrown's layout: a power-of-two
/// bucket count at most 7/8 full, one entry plus one control byte per bucket, and one extra group
/// of control bytes.
fn table_bytes<K, V, S>(map: &HashMap<K, V, S>) -> usize {
    /// Control bytes duplicated at the end of the table (the SSE2 group width).
    const GROUP_WIDTH: usize = 16;
    let capacity = map.capacity();
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity.saturating_mul(8) / 7).next_power_of_two()
    };
    buckets
        .saturating_mul(size_of::<(K, V)>() + 1)
        .saturating_add(GROUP_WIDTH)
}

#[cfg(test)]
mod tests {
    use tracer_common::AllocKind;

    use super::*;
    use crate::source::NO_STACK;

    const MS: u64 = 1_000_000;

    fn alloc(ts_ns: u64, addr: u64, size: u64, stack: StackKey) -> HeapEvent {
        HeapEvent::alloc(ts_ns, addr, size, stack)
    }

    fn realloc(ts_ns: u64, old_addr: u64, addr: u64, size: u64, stack: StackKey) -> HeapEvent {
        HeapEvent {
            old_addr,
            kind: AllocKind::Realloc,
            ..alloc(ts_ns, addr, size, stack)
        }
    }

    fn free(ts_ns: u64, addr: u64) -> HeapEvent {
        HeapEvent::free(ts_ns, addr)
    }

    fn model() -> HeapModel {
        HeapModel::new(HeapConfig::default())
    }

    fn applied(events: impl IntoIterator<Item = HeapEvent>) -> HeapModel {
        let mut heap = model();
        for ev in events {
            heap.push(ev);
        }
        heap.flush();
        heap
    }

    fn stats_of(heap: &HeapModel, stack: StackKey) -> StackStats {
        heap.stack_stats(u64::MAX)
            .into_iter()
            .find(|(k, _)| *k == stack)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    const PAGE: u64 = 4096;

    fn mapping(ts_ns: u64, op: Op, addr: u64, size: u64, stack: StackKey) -> HeapEvent {
        HeapEvent {
            op,
            kind: AllocKind::Mmap,
            ..HeapEvent::alloc(ts_ns, addr, size, stack)
        }
    }

    fn mapped(heap: &HeapModel) -> Vec<(u64, u64, StackKey)> {
        heap.mapped
            .iter()
            .map(|(start, e)| (*start, e.size, heap.stacks[e.stack as usize].key))
            .collect()
    }

    #[test]
    fn anonymous_mappings_are_cut_moved_and_replaced_exactly() {
        // Given three four-page mappings by stack 1
        let (a, b, c) = (0x10_0000, 0x20_0000, 0x30_0000);
        let mut events = vec![
            mapping(1, Op::Map, a, 4 * PAGE, 1),
            mapping(2, Op::Map, b, 4 * PAGE, 1),
            mapping(3, Op::Map, c, 4 * PAGE, 1),
        ];
        // When the middle of the first is unmapped, the tail of the second, the third moved
        // and grown, a fixed mapping by stack 2 laid over the first's head, and a range no
        // mapping of its own unmapped
        events.extend([
            mapping(4, Op::Unmap, a + PAGE, 2 * PAGE, 0),
            mapping(5, Op::Unmap, b + 3 * PAGE, 8 * PAGE, 0),
            HeapEvent {
                old_addr: c,
                ..mapping(6, Op::Remap { old_len: 4 * PAGE }, 0x50_0000, 6 * PAGE, 0)
            },
            mapping(7, Op::Map, a - PAGE, 2 * PAGE, 2),
            mapping(8, Op::Unmap, 0x90_0000, PAGE, 0),
        ]);
        let heap = applied(events);

        // Then each byte still mapped is counted once, by the stack that mapped it
        assert_eq!(
            mapped(&heap),
            vec![
                (a - PAGE, 2 * PAGE, 2),
                (a + 3 * PAGE, PAGE, 1),
                (b, 3 * PAGE, 1),
                (0x50_0000, 6 * PAGE, 1),
            ]
        );
        let one = stats_of(&heap, 1);
        assert_eq!((one.live_bytes, one.live_allocs), (10 * PAGE, 3));
        assert_eq!((one.total_allocs, one.total_bytes), (3, 12 * PAGE));
        let two = stats_of(&heap, 2);
        assert_eq!((two.live_bytes, two.live_allocs), (2 * PAGE, 1));
        let totals = heap.totals();
        assert_eq!((totals.mapped_bytes, totals.mapped_regions), (12 * PAGE, 4));
        assert_eq!((totals.live_bytes, totals.live_allocs), (12 * PAGE, 4));
        assert_eq!(
            totals.unmatched_frees, 0,
            "an unmap of nothing traced is no free"
        );

        // and an exec releases them all
        let mut heap = heap;
        heap.push(mapping(9, Op::Exec, 0, 0, 0));
        heap.flush();
        assert_eq!(
            (heap.totals().mapped_bytes, heap.totals().live_bytes),
            (0, 0)
        );
        assert!(heap.mapped.is_empty());
    }

    /// Checks what must hold after any sequence of events.
    fn assert_invariants(heap: &HeapModel) {
        let totals = heap.totals();
        assert!(totals.is_consistent(), "inconsistent totals: {totals:?}");
        let stacks = heap.stack_stats(0);
        assert_eq!(
            stacks.iter().map(|(_, s)| s.live_bytes).sum::<u64>(),
            totals.live_bytes
        );
        assert_eq!(
            stacks.iter().map(|(_, s)| s.live_allocs).sum::<u64>(),
            totals.live_allocs
        );
        assert_eq!(
            stacks.iter().map(|(_, s)| s.total_allocs).sum::<u64>(),
            totals.allocs,
            "every counted allocation belongs to a stack"
        );
        assert!(totals.unmatched_frees <= totals.frees);
        for (_, s) in &stacks {
            assert!(s.live_allocs <= s.total_allocs);
            assert!(s.live_bytes <= s.total_bytes);
            assert_eq!(s.live_allocs == 0, s.oldest_live_ts_ns.is_none());
        }
    }

    #[test]
    fn free_arriving_before_its_alloc_within_the_window_leaves_nothing_live() {
        // Given a free read before the alloc it undoes, both within the window
        let mut heap = model();
        heap.push(free(20 * MS, 0x1000));
        heap.push(alloc(10 * MS, 0x1000, 64, 1));

        // When the window has passed both
        heap.push(alloc(100 * MS, 0x2000, 8, 2));
        heap.advance();

        // Then they were applied in timestamp order
        let totals = heap.totals();
        assert_eq!(stats_of(&heap, 1).live_allocs, 0);
        assert_eq!(totals.unmatched_frees, 0);
        assert_eq!(totals.late_events, 0);
        assert_eq!(totals.live_allocs, 0, "the newest event is still buffered");
        assert_eq!(heap.pending_events(), 1);
        assert_invariants(&heap);
    }

    #[test]
    fn advance_keeps_events_inside_the_window() {
        // Given events spanning less than the window
        let mut heap = model();
        heap.push(alloc(0, 0x1000, 1, 1));
        heap.push(alloc(49 * MS, 0x2000, 1, 1));

        // When advancing
        heap.advance();

        // Then nothing is applied yet
        assert_eq!(heap.pending_events(), 2);
        assert_eq!(heap.totals(), Totals::default());

        // When an event arrives exactly one window after the first
        heap.push(alloc(50 * MS, 0x3000, 1, 1));
        heap.advance();

        // Then the first one (ts <= newest - window) is applied
        assert_eq!(heap.pending_events(), 2);
        assert_eq!(heap.totals().live_allocs, 1);
    }

    #[test]
    fn equal_timestamps_apply_in_arrival_order() {
        // Given an alloc and a free of one block with the same timestamp, alloc first
        let heap = applied([alloc(5, 0x1000, 8, 1), free(5, 0x1000)]);

        // Then the free matched
        assert_eq!(heap.totals().unmatched_frees, 0);
        assert_eq!(heap.totals().live_allocs, 0);

        // Given the reverse arrival order
        let heap = applied([free(5, 0x1000), alloc(5, 0x1000, 8, 1)]);

        // Then the free came first and the block stays live
        assert_eq!(heap.totals().unmatched_frees, 1);
        assert_eq!(heap.totals().live_allocs, 1);
    }

    #[test]
    fn events_later_than_the_window_are_counted_as_late() {
        // Given an applied event
        let mut heap = model();
        heap.push(alloc(100 * MS, 0x1000, 8, 1));
        heap.push(alloc(200 * MS, 0x2000, 8, 1));
        heap.advance();
        assert_eq!(heap.pending_events(), 1);

        // When an event older than it arrives
        heap.push(free(90 * MS, 0x1000));
        heap.flush();

        // Then it is still applied, and counted as late
        assert_eq!(heap.totals().late_events, 1);
        assert_eq!(heap.totals().live_allocs, 1);
        assert_invariants(&heap);
    }

    #[test]
    fn realloc_growing_in_place_replaces_the_size() {
        // Given a block resized in place
        let heap = applied([alloc(1, 0x1000, 100, 1), realloc(2, 0x1000, 0x1000, 300, 2)]);

        // Then only the new size is live, under the realloc's stack
        let totals = heap.totals();
        assert_eq!((totals.live_bytes, totals.live_allocs), (300, 1));
        assert_eq!(
            (totals.allocs, totals.frees, totals.unmatched_frees),
            (2, 1, 0)
        );
        assert_eq!(totals.replaced_live, 0);
        assert_eq!(stats_of(&heap, 1).live_bytes, 0);
        assert_eq!(stats_of(&heap, 1).total_bytes, 100);
        assert_eq!(stats_of(&heap, 2).live_bytes, 300);
        assert_invariants(&heap);
    }

    #[test]
    fn realloc_shrinking_and_moving_releases_the_old_block() {
        // Given a block moved by a shrinking realloc
        let heap = applied([alloc(1, 0x1000, 500, 1), realloc(2, 0x1000, 0x9000, 20, 1)]);

        // Then the old block is gone and the new one is live
        let totals = heap.totals();
        assert_eq!((totals.live_bytes, totals.live_allocs), (20, 1));
        assert_eq!(stats_of(&heap, 1).total_bytes, 520);

        // When the old address is freed again
        let heap = applied([
            alloc(1, 0x1000, 500, 1),
            realloc(2, 0x1000, 0x9000, 20, 1),
            free(3, 0x1000),
            free(4, 0x9000),
        ]);

        // Then that second release of the old block is unmatched and nothing is live
        let totals = heap.totals();
        assert_eq!((totals.live_bytes, totals.live_allocs), (0, 0));
        assert_eq!((totals.frees, totals.unmatched_frees), (3, 1));
        assert_invariants(&heap);
    }

    #[test]
    fn realloc_of_an_unknown_block_counts_an_unmatched_free() {
        // Given a realloc of a block allocated before attach
        let heap = applied([realloc(1, 0x5000, 0x6000, 40, 3)]);

        // Then the new block is live and the old one was an unmatched release
        let totals = heap.totals();
        assert_eq!(
            (totals.live_bytes, totals.live_allocs, totals.allocs),
            (40, 1, 1)
        );
        assert_eq!((totals.frees, totals.unmatched_frees), (1, 1));
        assert_invariants(&heap);
    }

    #[test]
    fn null_results_and_null_frees_change_nothing() {
        // Given free(NULL) and an allocation event without a block
        let heap = applied([free(1, 0), alloc(2, 0, 64, 1)]);

        // Then nothing is counted
        assert_eq!(heap.totals(), Totals::default());
        assert!(heap.stack_stats(0).is_empty());

        // Given a realloc that released its block and returned none (realloc(p, 0))
        let heap = applied([alloc(1, 0x1000, 64, 1), realloc(2, 0x1000, 0, 0, 1)]);

        // Then the block is released
        assert_eq!(heap.totals().live_allocs, 0);
        assert_eq!(heap.totals().frees, 1);
        assert_invariants(&heap);
    }

    #[test]
    fn unmatched_frees_never_make_counts_negative() {
        // Given more frees than allocations, including double frees
        let heap = applied([
            free(1, 0x1000),
            alloc(2, 0x1000, 10, 1),
            free(3, 0x1000),
            free(4, 0x1000),
            free(5, 0x2000),
        ]);

        // Then live counts bottom out at zero and the extra frees are unmatched
        let totals = heap.totals();
        assert_eq!((totals.live_bytes, totals.live_allocs), (0, 0));
        assert_eq!((totals.frees, totals.unmatched_frees), (4, 3));
        assert_eq!(stats_of(&heap, 1).live_allocs, 0);
        assert_invariants(&heap);
    }

    #[test]
    fn allocating_a_live_address_replaces_it() {
        // Given a block whose free was missed, then reused by another stack
        let heap = applied([alloc(1, 0x1000, 100, 1), alloc(2, 0x1000, 30, 2)]);

        // Then the old entry moved to the new stack and was counted as replaced
        let totals = heap.totals();
        assert_eq!(totals.replaced_live, 1);
        assert_eq!(
            (totals.live_bytes, totals.live_allocs, totals.allocs),
            (30, 1, 2)
        );
        assert_eq!(stats_of(&heap, 1).live_allocs, 0);
        assert_eq!(stats_of(&heap, 1).live_bytes, 0);
        assert_eq!(stats_of(&heap, 2).live_bytes, 30);
        assert_invariants(&heap);
    }

    #[test]
    fn allocations_beyond_max_live_are_counted_but_not_tracked() {
        // Given room for two live blocks
        let mut heap = HeapModel::new(HeapConfig {
            max_live: 2,
            ..HeapConfig::default()
        });

        // When three are allocated, one address is reused, and then one is freed
        for ev in [
            alloc(1, 0x1000, 1, 1),
            alloc(2, 0x2000, 2, 1),
            alloc(3, 0x3000, 4, 2),
            alloc(4, 0x2000, 8, 2),
        ] {
            heap.push(ev);
        }
        heap.flush();

        // Then the third was dropped, the reuse still replaced (the table did not grow)
        let totals = heap.totals();
        assert_eq!(totals.dropped_over_limit, 1);
        assert_eq!(totals.replaced_live, 1);
        assert_eq!(
            (totals.allocs, totals.live_allocs, totals.live_bytes),
            (4, 2, 9)
        );
        assert_eq!(stats_of(&heap, 2).total_allocs, 2);
        assert_eq!(stats_of(&heap, 2).total_bytes, 12);
        assert_invariants(&heap);

        // When a block is freed, and the dropped one too
        heap.push(free(5, 0x1000));
        heap.push(free(6, 0x3000));
        heap.push(alloc(7, 0x4000, 16, 3));
        heap.flush();

        // Then the dropped block's free is unmatched, and there was room again for a new one
        let totals = heap.totals();
        assert_eq!(totals.unmatched_frees, 1);
        assert_eq!(totals.dropped_over_limit, 1);
        assert_eq!(stats_of(&heap, 3).live_allocs, 1);
        assert_invariants(&heap);
    }

    #[test]
    fn zero_max_live_tracks_nothing() {
        // Given no room at all
        let mut heap = HeapModel::new(HeapConfig {
            max_live: 0,
            ..HeapConfig::default()
        });

        // When allocating
        heap.push(alloc(1, 0x1000, 1, 1));
        heap.flush();

        // Then the allocation is counted but not live
        let totals = heap.totals();
        assert_eq!(
            (totals.allocs, totals.live_allocs, totals.dropped_over_limit),
            (1, 0, 1)
        );
        assert_invariants(&heap);
    }

    #[test]
    fn in_order_events_apply_as_they_come_whatever_their_timestamps() {
        // Given a free read after its allocation but stamped before it (on another CPU)
        let events = [alloc(10, 0x1000, 64, 1), free(9, 0x1000)];
        // When the source is in order, the free undoes the allocation at once
        let mut in_order = HeapModel::new(HeapConfig {
            in_order: true,
            ..HeapConfig::default()
        });
        for ev in events {
            in_order.push(ev);
        }
        assert_eq!(in_order.pending_events(), 0);
        let totals = in_order.totals();
        assert_eq!(
            (
                totals.live_allocs,
                totals.unmatched_frees,
                totals.late_events
            ),
            (0, 0, 0)
        );
        // And sorted by timestamp instead, the free comes first and matches nothing
        let mut sorted = model();
        for ev in events {
            sorted.push(ev);
        }
        sorted.flush();
        let totals = sorted.totals();
        assert_eq!((totals.live_allocs, totals.unmatched_frees), (1, 1));
    }

    proptest::proptest! {
        /// The reorder buffer stays sorted by (timestamp, arrival) whatever order events come
        /// in: nearly sorted (the ring buffer's usual few microseconds) or not at all.
        #[test]
        fn reorder_buffer_stays_sorted(
            jitter in proptest::collection::vec((0u64..2_000, 0u64..40), 1..400)
        ) {
            let mut heap = model();
            let mut expected = Vec::new();
            for (seq, (step, late)) in jitter.iter().enumerate() {
                // A clock that moves on by `step` per event, each event stamped up to `late`
                // steps of 50 ns before it: many equal, many out of order.
                let ts = 1_000_000 + (seq as u64) * step / 8 - late * 50;
                heap.push(free(ts, 0x1000 + seq as u64));
                expected.push((ts, seq as u64));
            }
            expected.sort_unstable();
            let got: Vec<(u64, u64)> = heap.pending.iter().map(|b| (b.ts_ns, b.seq)).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn flush_applies_everything_in_timestamp_order() {
        // Given events pushed in reverse order, all within the window
        let mut heap = model();
        heap.push(free(30, 0x1000));
        heap.push(realloc(20, 0x2000, 0x1000, 50, 1));
        heap.push(alloc(10, 0x2000, 25, 1));
        heap.advance();
        assert_eq!(heap.pending_events(), 3);

        // When flushing
        heap.flush();

        // Then they were applied oldest first: alloc, realloc, free
        let totals = heap.totals();
        assert_eq!(heap.pending_events(), 0);
        assert_eq!(
            (totals.allocs, totals.frees, totals.unmatched_frees),
            (2, 2, 0)
        );
        assert_eq!(totals.live_allocs, 0);
        assert_eq!(totals.late_events, 0);
        assert_invariants(&heap);
    }

    #[test]
    fn stacks_are_sorted_by_live_then_total_bytes_then_key() {
        // Given stacks with distinct and tied figures
        let heap = applied([
            alloc(1, 0x1, 10, 5),
            alloc(2, 0x2, 30, 4),
            alloc(3, 0x3, 10, 3),
            alloc(4, 0x4, 99, 3),
            free(5, 0x4),
            alloc(6, 0x5, 10, 2),
            alloc(7, 0x6, 7, 1),
            free(8, 0x6),
        ]);

        // When listing them
        let keys: Vec<StackKey> = heap.stack_stats(0).into_iter().map(|(k, _)| k).collect();

        // Then: 30 live; 10 live with 109 total; two with 10/10 by key; then 0 live
        assert_eq!(keys, [4, 3, 2, 5, 1]);
    }

    #[test]
    fn sampled_blocks_stand_for_their_unsampled_peers() {
        // A block as large as the mean is sampled with probability 1 - 1/e.
        let w = sample_weight(1000, 1000.0);
        assert!((w - 1.0 / (1.0 - (-1.0f64).exp())).abs() < 1e-9);
        // Huge blocks are always sampled; tiny ones stand for many.
        assert!((sample_weight(1 << 30, 1000.0) - 1.0).abs() < 1e-9);
        assert!((sample_weight(10, 1000.0) - 100.5).abs() < 0.1);

        // Given one sampled 10-byte block under a 1000-byte mean
        let mut heap = HeapModel::new(HeapConfig {
            sample_mean_bytes: Some(1000.0),
            ..HeapConfig::default()
        });
        heap.push(HeapEvent {
            ts_ns: MS,
            op: Op::Alloc,
            addr: 0x10,
            old_addr: 0,
            size: 10,
            stack: 3,
            tid: 1,
            kind: AllocKind::Malloc,
        });
        heap.flush();
        // Then the stack's figures are estimates
        let stats = heap.stack_stats(2 * MS);
        assert_eq!((stats[0].1.live_allocs, stats[0].1.live_bytes), (101, 1005));
        assert_eq!(
            (stats[0].1.total_allocs, stats[0].1.total_bytes),
            (101, 1005)
        );
    }

    #[test]
    fn live_bytes_by_stack_follows_the_counters() {
        let mut heap = HeapModel::new(HeapConfig::default());
        let event = |ts_ns, op, addr, stack| HeapEvent {
            ts_ns,
            op,
            addr,
            old_addr: 0,
            size: 10,
            stack,
            tid: 1,
            kind: AllocKind::Malloc,
        };
        heap.push(event(MS, Op::Alloc, 0x10, 1));
        heap.push(event(2 * MS, Op::Alloc, 0x20, 2));
        heap.push(event(3 * MS, Op::Free, 0x10, 0));
        heap.flush();
        let mut live = heap.live_bytes_by_stack(4 * MS);
        live.sort_unstable();
        assert_eq!(live, vec![(1, 0), (2, 10)]);
    }

    #[test]
    fn exec_releases_every_live_block() {
        let mut heap = HeapModel::new(HeapConfig::default());
        let event = |ts_ns, op, addr| HeapEvent {
            ts_ns,
            op,
            addr,
            old_addr: 0,
            size: 10,
            stack: 4,
            tid: 1,
            kind: AllocKind::Malloc,
        };
        heap.push(event(MS, Op::Alloc, 0x10));
        heap.push(event(2 * MS, Op::Alloc, 0x20));
        heap.push(event(3 * MS, Op::Exec, 0));
        heap.push(event(4 * MS, Op::Alloc, 0x10));
        heap.flush();
        let totals = heap.totals();
        assert_eq!(
            (
                totals.live_allocs,
                totals.live_bytes,
                totals.released_by_exec
            ),
            (1, 10, 2)
        );
        assert_eq!(heap.stack_stats(5 * MS)[0].1.live_allocs, 1);
    }

    #[test]
    fn min_age_counts_only_old_enough_blocks() {
        // Given blocks 10 s, 5 s and 1 s old on one stack
        let mut heap = HeapModel::new(HeapConfig::default());
        for (i, t) in [0u64, 5_000, 9_000].into_iter().enumerate() {
            heap.push(HeapEvent {
                ts_ns: 1_000 * MS + t * MS,
                op: Op::Alloc,
                addr: 0x100 + i as u64 * 16,
                old_addr: 0,
                size: 100 * (i as u64 + 1),
                stack: 7,
                tid: 1,
                kind: AllocKind::Malloc,
            });
        }
        heap.flush();
        let now = 11_000 * MS;
        // When only blocks at least 4 s old count
        let stats = heap.stack_stats_min_age(now, 4_000 * MS);
        // Then the two older ones do, and the totals are untouched
        assert_eq!((stats[0].1.live_bytes, stats[0].1.live_allocs), (300, 2));
        assert_eq!(stats[0].1.total_allocs, 3);
        let all = heap.stack_stats(now);
        assert_eq!((all[0].1.live_bytes, all[0].1.live_allocs), (600, 3));
    }

    #[test]
    fn the_clock_releases_events_no_newer_event_follows() {
        // Given one allocation and nothing after it
        let mut heap = HeapModel::new(HeapConfig::default());
        heap.push(HeapEvent {
            ts_ns: 1_000 * MS,
            op: Op::Alloc,
            addr: 0x10,
            old_addr: 0,
            size: 8,
            stack: 1,
            tid: 1,
            kind: AllocKind::Malloc,
        });
        // When the window has not passed yet, then it waits
        heap.advance_until(1_000 * MS + DEFAULT_REORDER_WINDOW_NS - 1);
        assert_eq!(heap.totals().live_allocs, 0);
        // When it has, then it is applied
        heap.advance_until(1_000 * MS + DEFAULT_REORDER_WINDOW_NS);
        assert_eq!(heap.totals().live_allocs, 1);
        assert_eq!(heap.pending_events(), 0);
    }

    #[test]
    fn stack_stats_report_the_oldest_live_block_to_the_millisecond() {
        // Given a stack whose oldest block was freed, timed from an origin T0
        const T0: u64 = 5_000 * MS;
        let heap = applied([
            alloc(T0, 0x1, 1, 1),
            alloc(T0 + 200 * MS + 700_000, 0x2, 1, 1),
            alloc(T0 + 300 * MS, 0x3, 1, 1),
            free(T0 + 400 * MS, 0x1),
            alloc(T0 + 500 * MS, 0x4, 1, 2),
            free(T0 + 600 * MS, 0x4),
        ]);

        // When asking one second after T0
        let stats = heap.stack_stats(T0 + 1000 * MS);

        // Then the oldest live block is the second one, its time rounded down to a millisecond;
        // stack 2 has none live but is listed
        let s1 = stats
            .iter()
            .find(|(k, _)| *k == 1)
            .map(|(_, s)| *s)
            .unwrap_or_default();
        assert_eq!(s1.oldest_live_ts_ns, Some(T0 + 200 * MS));
        assert_eq!(s1.oldest_live_age_ns, Some(800 * MS));
        let s2 = stats
            .iter()
            .find(|(k, _)| *k == 2)
            .map(|(_, s)| *s)
            .unwrap_or_default();
        assert_eq!(s2.total_allocs, 1);
        assert_eq!(s2.oldest_live_ts_ns, None);
        assert_eq!(s2.oldest_live_age_ns, None);

        // And an age is never negative
        let early = heap.stack_stats(T0 + 150 * MS);
        assert!(
            early
                .iter()
                .all(|(_, s)| s.oldest_live_age_ns.unwrap_or(0) == 0)
        );
    }

    #[test]
    fn allocation_times_saturate_after_49_days() {
        // Given a block allocated 60 days after the first event
        const DAY: u64 = 86_400_000 * MS;
        let heap = applied([
            alloc(DAY, 0x1, 1, 1),
            free(2 * DAY, 0x1),
            alloc(61 * DAY, 0x2, 1, 1),
        ]);

        // Then its time is clamped to the end of the u32 millisecond range
        let stats = stats_of(&heap, 1);
        assert_eq!(
            stats.oldest_live_ts_ns,
            Some(DAY + u64::from(u32::MAX) * MS)
        );
    }

    #[test]
    fn events_older_than_the_origin_count_from_the_origin() {
        // Given a late event older than the first applied one
        let mut heap = model();
        heap.push(alloc(100 * MS, 0x1, 1, 1));
        heap.push(alloc(200 * MS, 0x2, 1, 2));
        heap.advance();
        heap.push(alloc(10 * MS, 0x3, 1, 3));
        heap.flush();

        // Then its time is the origin, not an underflow
        assert_eq!(stats_of(&heap, 3).oldest_live_ts_ns, Some(100 * MS));
        assert_eq!(heap.totals().late_events, 1);
    }

    #[test]
    fn events_without_a_stack_are_grouped_under_no_stack() {
        // Given allocations with no recorded stack
        let heap = applied([alloc(1, 0x1, 8, NO_STACK), alloc(2, 0x2, 8, NO_STACK)]);

        // Then they form one stack entry
        assert_eq!(heap.stack_stats(0).len(), 1);
        assert_eq!(stats_of(&heap, NO_STACK).live_allocs, 2);
    }

    #[test]
    fn totals_stay_consistent_over_a_random_event_stream() {
        // Given a deterministic pseudo-random mix of allocs, reallocs and frees over few addresses
        // (so double frees, replacements and unknown reallocs all happen), with jittered order
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut heap = HeapModel::new(HeapConfig {
            max_live: 40,
            reorder_window_ns: 5,
            sample_mean_bytes: None,
            in_order: false,
        });
        for i in 0..20_000u64 {
            let r = next();
            let addr = (r % 64 + 1) * 16;
            let ts = i * 2 + (r >> 60); // up to 15 ns of jitter: some events arrive late
            let ev = match (r >> 8) % 4 {
                0 | 1 => alloc(ts, addr, r >> 50, (r >> 20) % 7),
                2 => realloc(ts, (r >> 30) % 64 * 16, addr, r >> 52, (r >> 20) % 7),
                _ => free(ts, addr),
            };
            heap.push(ev);
            if i % 16 == 0 {
                heap.advance();
            }
            // Then the identities hold at every step
            if i % 1000 == 0 {
                assert_invariants(&heap);
            }
        }
        heap.flush();
        assert_invariants(&heap);
        let totals = heap.totals();
        assert!(totals.replaced_live > 0 && totals.unmatched_frees > 0);
        assert!(totals.dropped_over_limit > 0 && totals.late_events > 0);
    }

    #[test]
    fn memory_estimate_grows_with_the_tables() {
        // Given an empty model
        let mut heap = model();
        let empty = heap.memory_bytes();
        assert_eq!(empty, size_of::<HeapModel>());

        // When one block is live
        heap.push(alloc(1, 0x1, 8, 1));
        heap.flush();

        // Then the estimate includes the tables
        assert!(heap.memory_bytes() > empty);
        assert_eq!(size_of::<(u64, LiveAlloc)>(), 24);
    }

    #[test]
    fn one_million_live_allocations_fit_in_64_mib() {
        // Given a million live blocks from 1000 stacks, arriving 1 µs apart and advanced as a
        // tracer would (so the reorder buffer holds one window's worth, 50k events)
        const N: u64 = 1_000_000;
        const BOUND: usize = 64 << 20;
        let mut heap = model();
        for i in 0..N {
            heap.push(alloc(
                i * 1_000,
                0x5555_0000_0000 + i * 48,
                40,
                i % 1000 + 1,
            ));
            if i % 1024 == 0 {
                heap.advance();
            }
        }
        heap.flush();
        assert_eq!(heap.totals().live_allocs, N);

        // When measuring the model
        let bytes = heap.memory_bytes();
        eprintln!(
            "heap model with {N} live allocations: {bytes} bytes ({:.1} MiB, {:.1} bytes per \
             allocation); live table {} bytes, reorder buffer capacity {} events",
            bytes as f64 / f64::from(1 << 20),
            bytes as f64 / N as f64,
            table_bytes(&heap.live),
            heap.pending.capacity(),
        );

        // Then it stays under the bound
        assert!(bytes < BOUND, "{bytes} bytes >= {BOUND}");
    }

    #[test]
    fn mix_hasher_spreads_aligned_addresses() {
        // Given 16-aligned addresses
        let hash = |n: u64| {
            let mut h = MixHasher::default();
            h.write_u64(n);
            h.finish()
        };

        // Then the low bits and the top 7 bits (hashbrown's tag) both vary
        let low: std::collections::HashSet<u64> = (0..256).map(|i| hash(i * 16) & 0xff).collect();
        let top: std::collections::HashSet<u64> = (0..256).map(|i| hash(i * 16) >> 57).collect();
        assert!(low.len() > 128, "{}", low.len());
        assert!(top.len() > 64, "{}", top.len());
    }
}
