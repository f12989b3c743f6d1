//! The eBPF allocator probes as a [`Source`]: uprobes on the target's allocator write one
//! event per call to a ring buffer, each allocation with its stack unwound in the kernel
//! ([`crate::probe`], [`crate::unwind`]).
//!
//! Polling drains the ring buffer into events, reads each stack id it has not yielded before
//! from the kernel's stack map, and checks `--verify-unwind` samples. When the target's
//! mappings change it compiles tables for new binaries and republishes the mappings, so
//! libraries loaded later unwind too. Stopping tells the programs to send no more events,
//! freezes the kernel's counters and detaches every probe: what the ring buffer still holds is
//! the trace up to that moment.
use std::{
    collections::HashSet,
    num::NonZeroU32,
    os::fd::{AsFd as _, BorrowedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tracer_common::Counter;

use crate::{
    error::{Failure, chain},
    export::human_bytes,
    heap::FastHash,
    probe::{KernelCounters, ProbeConfig, Probes, UnwindMode, events},
    source::{Batch, Health, HealthKind, NewStack, Source, Yields, monotonic_now_ns},
    target::{Mapping, allocator::Allocators},
    unwind::{
        tables::{TableSummary, UnwindTables},
        verify::{self, VerifyCounts},
    },
};

/// How the probes are set up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EbpfConfig {
    /// How stacks are unwound.
    pub unwind: UnwindMode,
    /// `--verify-unwind`: check every Nth stack against a user-space unwind (0: never).
    pub verify_every: u32,
    /// `--sample-bytes`: mean bytes between sampled allocations.
    pub sample_bytes: Option<u64>,
    /// Use a uprobe session where the kernel has one.
    pub uprobe_session: bool,
    /// Ring buffer size in bytes.
    pub ringbuf_bytes: u32,
    /// `--max-stacks`: distinct stacks the kernel keeps.
    pub max_stacks: u32,
    /// `--probe-floor`: attach empty probes, for measuring the cost of the traps alone.
    pub floor: bool,
    /// `--bench-skip`: phases the programs leave out ([`tracer_common::bench_skip`]).
    pub bench_skip: u32,
    /// Say on stderr what tables are built and what fails (not while the live view draws).
    pub verbose: bool,
    /// Say on stderr how building the tables at load goes (before the live view starts, even
    /// when not `verbose`; not for a process found while it draws).
    pub progress: bool,
}

/// The eBPF allocator probes on one target.
pub struct EbpfSource {
    pid: NonZeroU32,
    allocators: Allocators,
    /// The allocators' names, by the index events carry.
    labels: Vec<Arc<str>>,
    config: EbpfConfig,
    probes: Probes,
    events: Option<RingBuf<MapData>>,
    verify: Option<RingBuf<MapData>>,
    verified: VerifyCounts,
    tables: UnwindTables,
    /// The executable mappings last published to the unwinder: (start, end, inode).
    exec_maps: Vec<(u64, u64, u64)>,
    /// The mappings last read, for the reference unwinder.
    last_maps: Vec<Mapping>,
    /// Where the kernel's uretprobe trampoline is published as being.
    trampoline: Option<u64>,
    /// When the target's mappings were last looked through for the trampoline before the
    /// session's next reading of them ([`EbpfSource::look_for_trampoline`]).
    trampoline_looked: Option<Instant>,
    /// Stack ids already yielded.
    known: HashSet<u64, FastHash>,
    undecodable: u64,
    /// Decodes the event records, stamping frees (which carry no time).
    decoder: events::Decoder,
    /// `--verify-unwind` records were left for after the maps are read again.
    checks_waited: bool,
    /// When the trace was stopped (`None` while it runs).
    cutoff_ns: Option<u64>,
    /// The programs could not be told to stop sending: events after `cutoff_ns` are dropped
    /// by their time.
    cut_by_time: bool,
    counters_at_cutoff: Option<KernelCounters>,
}

impl std::fmt::Debug for EbpfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfSource")
            .field("pid", &self.pid)
            .field("allocators", &self.allocators.labels)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EbpfSource {
    /// Compiles the unwind tables of `maps` (the target's, or the binaries a launched program
    /// will map) and loads the programs, attaching nothing yet. With `publish`, `maps` are the
    /// target's live mappings and are published to the unwinder at once; a launched program's
    /// are published once it has exec'd ([`Source::mappings_changed`]).
    pub fn load(
        pid: NonZeroU32,
        allocators: Allocators,
        maps: &[Mapping],
        publish: bool,
        config: EbpfConfig,
    ) -> Result<Self, Failure> {
        let mut tables = UnwindTables::new(pid.get());
        if config.unwind != UnwindMode::Fp
            && let Some(ready) = build_tables(&mut tables, maps, config.progress || config.verbose)
        {
            eprintln!("{ready}");
        }
        // Room for libraries loaded later: half again as many rows, at least 256k.
        let rows = tables.total_rows();
        let unwind_rows = u32::try_from(rows + (rows / 2).max(256 << 10)).unwrap_or(u32::MAX);
        let mut probes = Probes::load(ProbeConfig {
            target_pid: pid.get(),
            verify_every: if config.unwind == UnwindMode::Fp {
                0
            } else {
                config.verify_every
            },
            unwind: config.unwind,
            sample_bytes: config.sample_bytes.unwrap_or(0),
            uprobe_session: config.uprobe_session,
            unwind_rows,
            ringbuf_bytes: config.ringbuf_bytes,
            max_stacks: config.max_stacks,
            bench_skip: config.bench_skip,
        })
        .map_err(|err| {
            Failure::runtime(
                chain(&err),
                Some("leaktrace needs a kernel with BPF ring buffers and uprobes (5.15+)".into()),
            )
        })?;
        if config.unwind != UnwindMode::Fp {
            // Tables and mappings are in place before the first probe fires.
            let (fd, capacity) = probes.unwind_rows();
            tables.load_rows(fd, capacity).map_err(|err| {
                Failure::runtime(
                    format!("loading unwind tables into the kernel: {err}"),
                    None,
                )
            })?;
            if publish {
                probes
                    .set_mappings(&tables.exec_mappings(maps))
                    .map_err(|err| Failure::runtime(chain(&err), None))?;
            }
        }
        let events = probes.take_events();
        let verify = probes.take_verify();
        let last_maps = if publish { maps.to_vec() } else { Vec::new() };
        Ok(Self {
            pid,
            labels: allocators
                .labels
                .iter()
                .map(|l| Arc::from(l.as_str()))
                .collect(),
            allocators,
            config,
            probes,
            events,
            verify,
            verified: VerifyCounts::default(),
            tables,
            exec_maps: Vec::new(),
            last_maps,
            trampoline: None,
            trampoline_looked: None,
            known: HashSet::default(),
            undecodable: 0,
            decoder: events::Decoder::new(monotonic_now_ns()),
            checks_waited: false,
            cutoff_ns: None,
            cut_by_time: false,
            counters_at_cutoff: None,
        })
    }

    /// Publishes the kernel's uretprobe trampoline to the walks, from the target's mappings
    /// `maps`: its own mapping, once any return probe has fired in the target. Both walks
    /// translate return addresses swapped for it, and the entries of allocating calls save it
    /// in place of the real return address once it is known (a read of target memory saved).
    fn publish_trampoline(&mut self, maps: &[Mapping]) {
        if self.cutoff_ns.is_some() {
            return;
        }
        if let Some(uprobes) = maps.iter().find(|m| m.path == "[uprobes]")
            && self.trampoline != Some(uprobes.start)
            && self.probes.set_trampoline(uprobes.start).is_ok()
        {
            self.trampoline = Some(uprobes.start);
        }
    }

    /// Until the trampoline is known, looks for it at every poll, at most every 20 ms,
    /// rather than waiting for the session's next reading of the mappings (a second): the
    /// kernel maps it at the first return probe to fire, right after attach.
    fn look_for_trampoline(&mut self) {
        const EVERY: Duration = Duration::from_millis(20);
        if self.trampoline.is_some()
            || self.cutoff_ns.is_some()
            || self
                .trampoline_looked
                .is_some_and(|at| at.elapsed() < EVERY)
        {
            return;
        }
        self.trampoline_looked = Some(Instant::now());
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)) {
            self.publish_trampoline(&crate::target::parse_maps(&text));
        }
    }

    /// Attaches every probe to the target.
    pub fn attach(&mut self) -> Result<(), Failure> {
        if self.config.floor {
            self.probes.attach_floor(&self.allocators, self.pid)
        } else {
            self.probes.attach(&self.allocators, self.pid)
        }
        .map_err(|err| Failure::runtime(chain(&err), None))
    }

    /// The allocators probed.
    pub fn allocators(&self) -> &Allocators {
        &self.allocators
    }

    /// What was attached where and why, one line each, for the start-up summary.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for object in &self.allocators.objects {
            let mut labels: Vec<&str> = object
                .points
                .iter()
                .map(|p| self.allocators.label_of(p))
                .collect();
            labels.dedup();
            lines.push(format!("{} in {}:", labels.join(", "), object.display_path));
            for point in &object.points {
                let aliases = if point.aliases.is_empty() {
                    String::new()
                } else {
                    format!(" (also {})", point.aliases.join(", "))
                };
                lines.push(format!(
                    "  {}{aliases}: {}",
                    point.symbol, point.site.reason
                ));
            }
            if !object.missing.is_empty() {
                lines.push(format!(
                    "  not defined there: {}",
                    object.missing.join(", ")
                ));
            }
        }
        for left_out in &self.allocators.left_out {
            lines.push(format!("NOT TRACED (--allocator): {left_out}"));
        }
        for not_probed in &self.allocators.not_probed {
            lines.push(format!("not probed: {not_probed}"));
        }
        lines.push(self.probes.returns().describe());
        lines.extend(self.probes.separate_links());
        lines
    }

    /// `--verify-unwind`: compares each sampled stack with a user-space unwind of its copy.
    fn check_unwinds(&mut self) {
        let Some(ring) = self.verify.as_mut() else {
            return;
        };
        // Built on the first record only: building reads every mapped binary, and this runs
        // every poll (an idle target's tracer spent 5% of a core here).
        let mut mappings = None;
        while let Some(item) = ring.next() {
            let Some(record) = verify::decode(&item) else {
                continue;
            };
            let mappings =
                mappings.get_or_insert_with(|| self.tables.reference_mappings(&self.last_maps));
            let verdict = verify::check(&record, mappings);
            if let verify::Verdict::Mismatch {
                kernel,
                reference,
                stop,
            } = &verdict
                && self.verified.mismatched < 3
                && self.config.verbose
            {
                eprintln!(
                    "leaktrace: unwind check: kernel {kernel:x?} differs from user space {reference:x?} (stopped: {stop})"
                );
            }
            self.verified.add(&verdict);
        }
    }

    /// Compiles and loads tables for new binaries and republishes the mappings when the
    /// executable mappings changed.
    fn refresh_unwind(&mut self, maps: &[Mapping]) {
        let exec: Vec<(u64, u64, u64)> = maps
            .iter()
            .filter(|m| m.is_exec())
            .map(|m| (m.start, m.end, m.inode))
            .collect();
        if exec == self.exec_maps {
            return;
        }
        if !self.exec_maps.is_empty()
            && let Err(err) = self.probes.set_mappings(&self.tables.exec_mappings(maps))
            && self.config.verbose
        {
            // Until the new tables are compiled, code mapped where another binary was (a
            // library unloaded and another loaded in its place) must not be unwound with the
            // old binary's rows: published now, it has no rows (frame pointers or an
            // incomplete stack, counted) until its own are in.
            eprintln!(
                "leaktrace: withdrawing stale unwind tables: {}",
                chain(&err)
            );
        }
        self.exec_maps = exec;
        let ready = build_tables(&mut self.tables, maps, self.config.verbose);
        let (fd, capacity) = self.probes.unwind_rows();
        if let Err(err) = self.tables.load_rows(fd, capacity)
            && self.config.verbose
        {
            eprintln!("leaktrace: loading unwind tables: {err}");
        }
        let mappings = self.tables.exec_mappings(maps);
        if let Err(err) = self.probes.set_mappings(&mappings)
            && self.config.verbose
        {
            eprintln!(
                "leaktrace: publishing mappings to the unwinder: {}",
                chain(&err)
            );
        }
        // Said once the unwinder uses them.
        if let Some(ready) = ready {
            eprintln!("{ready}");
        }
    }
}

impl Source for EbpfSource {
    fn name(&self) -> String {
        let objects: Vec<&str> = self
            .allocators
            .objects
            .iter()
            .map(|o| o.display_path.as_str())
            .collect();
        format!(
            "{} in {} ({} probes)",
            self.allocators.labels.join(", "),
            objects.join(", "),
            self.probes.attached()
        )
    }

    fn yields(&self) -> Yields {
        Yields::Events {
            sample_mean_bytes: self.config.sample_bytes.map(|n| n as f64),
            // One ring buffer, read in the order its records were reserved: a block's allocation
            // is reserved before the allocating call returns, so before anything can free it,
            // and a free is reserved at free's entry, so before the block can be handed out
            // again.
            in_order: true,
        }
    }

    fn ready_fd(&self) -> Option<BorrowedFd<'_>> {
        self.events.as_ref().map(|ring| ring.as_fd())
    }

    fn poll(&mut self, out: &mut Batch) {
        let Self {
            events: Some(ring),
            known,
            undecodable,
            cutoff_ns,
            cut_by_time,
            decoder,
            ..
        } = self
        else {
            return;
        };
        // (key, kernel stack id, allocator) of stacks not yielded before.
        let mut new_stacks = Vec::new();
        // Consecutive events mostly share a stack or two (an allocation's, then the free's
        // none): the two last known are checked before the set.
        let mut last_known: [Option<u64>; 2] = [None; 2];
        while let Some(item) = ring.next() {
            match decoder.decode(&item) {
                Some(decoded)
                    if *cut_by_time
                        && cutoff_ns.is_some_and(|cutoff| decoded.event.ts_ns > cutoff) => {}
                Some(events::Decoded {
                    mut event,
                    allocator,
                }) => {
                    let stack_id = event.stack;
                    event.stack = stack_key(stack_id, allocator);
                    if !last_known.contains(&Some(event.stack)) {
                        if known.insert(event.stack) {
                            new_stacks.push((event.stack, stack_id, allocator));
                        } else {
                            last_known = [Some(event.stack), last_known[0]];
                        }
                    }
                    out.events.push(event);
                }
                None => *undecodable += 1,
            }
        }
        // Each new stack is read once from the kernel (an event without a stack has none).
        for (key, stack_id, allocator) in new_stacks {
            let kernel = self.probes.stack(stack_id).unwrap_or_default();
            let label = self
                .labels
                .get(usize::from(allocator))
                .map_or_else(|| Arc::from("?"), Arc::clone);
            out.stacks.push(NewStack {
                runtime_prefixes: &[],
                key,
                ips: kernel.ips,
                truncated: kernel.truncated,
                incomplete: kernel.incomplete,
                allocator: label,
            });
        }
        // A new stack may run in a library mapped since the maps were last read: its unwind
        // checks wait until the session has read them again (`mappings_changed`, or the next
        // poll if the target is gone).
        if out.stacks.is_empty() || self.checks_waited {
            self.check_unwinds();
        }
        self.checks_waited = !out.stacks.is_empty();
        self.look_for_trampoline();
    }

    fn mappings_changed(&mut self, maps: &[Mapping]) {
        self.publish_trampoline(maps);
        if self.cutoff_ns.is_none() && self.config.unwind != UnwindMode::Fp {
            // Libraries loaded since (dlopen) get tables and mappings.
            self.refresh_unwind(maps);
        }
        self.last_maps = maps.to_vec();
        self.check_unwinds();
    }

    fn stop(&mut self, cutoff_ns: u64) {
        self.cutoff_ns = Some(cutoff_ns);
        // What happens while probes are being removed (returns whose entry probe is already
        // gone) is not part of the report: the programs send nothing from here on. Should the
        // flag not take, events are cut by their time instead (within a tick of the moment).
        self.cut_by_time = self.probes.stop_events().is_err();
        self.counters_at_cutoff = Some(self.probes.counters());
        self.probes.detach();
    }

    fn health(&self) -> Vec<Health> {
        let counters = self
            .counters_at_cutoff
            .unwrap_or_else(|| self.probes.counters());
        health_of(
            &counters,
            self.undecodable,
            &self.tables.summary(),
            &self.verified,
        )
    }
}

/// The eBPF source's counters: every kernel counter by its name, then the user-space side's.
pub(crate) fn health_of(
    counters: &KernelCounters,
    undecodable: u64,
    tables: &TableSummary,
    verified: &VerifyCounts,
) -> Vec<Health> {
    let mut health: Vec<Health> = counters
        .iter()
        .map(|(counter, value)| Health::new(counter.name(), value, kind_of(counter)))
        .collect();
    health.extend([
        Health::new("undecodable_events", undecodable, HealthKind::Lost),
        Health::new("unwind_table_bytes", tables.bytes as u64, HealthKind::Info),
        Health::new(
            "unwind_files_unreadable",
            tables.unreadable as u64,
            HealthKind::Degraded,
        ),
        Health::new(
            "unwind_tables_not_loaded",
            tables.not_loaded as u64,
            HealthKind::Degraded,
        ),
        Health::new(
            "unwind_verified",
            verified.equal + verified.prefix_equal,
            HealthKind::Info,
        ),
        Health::new(
            "unwind_mismatched",
            verified.mismatched,
            HealthKind::Degraded,
        ),
    ]);
    health
}

/// The diagnostics of an eBPF session as a report has them (this source's, the heap's, the
/// session's), every one zero but those in `set`: for tests of what reads them.
#[cfg(test)]
pub(crate) fn diagnostics_with(set: &[(&str, u64)]) -> crate::source::Diagnostics {
    let mut health = health_of(
        &KernelCounters::default(),
        0,
        &TableSummary::default(),
        &VerifyCounts::default(),
    );
    health.extend(crate::heap::Heap::new().health());
    health.extend(crate::heap::history::History::default().health());
    health.extend(crate::symbolize::ModuleMap::default().health());
    health.push(Health::new("tracer_memory_bytes", 0, HealthKind::Info));
    let mut diagnostics = crate::source::Diagnostics(health);
    for &(name, value) in set {
        let slot = diagnostics.0.iter_mut().find(|h| h.name == name);
        slot.unwrap_or_else(|| panic!("no counter {name}")).value = value;
    }
    diagnostics
}

/// A stack's key: the kernel's stack id, told apart by allocator (the same call path through
/// two allocators is two rows). Allocator 0's keys are the stack ids themselves.
fn stack_key(stack_id: u64, allocator: u8) -> u64 {
    stack_id ^ (u64::from(allocator) << 56)
}

/// What each kernel counter means for the figures.
fn kind_of(counter: Counter) -> HealthKind {
    match counter {
        Counter::RingbufFull | Counter::PendingFull => HealthKind::Lost,
        Counter::StackFailed
        | Counter::StackMapFull
        | Counter::StackTruncated
        | Counter::PendingClobbered
        | Counter::UnwindNoMapping
        | Counter::UnwindUnsupported
        | Counter::UnwindReadFailed
        | Counter::UnwindNoProgress
        | Counter::SampleMapFull => HealthKind::Degraded,
        Counter::PendingMissing | Counter::Nested | Counter::Sent | Counter::Unsampled => {
            HealthKind::Info
        }
    }
}

/// Compiles the unwind tables of `maps`' binaries not seen before, showing progress when asked;
/// returns the line that says they are ready, for the caller to print once they are in use.
fn build_tables(tables: &mut UnwindTables, maps: &[Mapping], show: bool) -> Option<String> {
    let started = Instant::now();
    let before = tables.summary();
    tables.compile_mappings(maps, |done, total, name| {
        if show && done < total {
            eprintln!(
                "leaktrace: building unwind tables {}/{total}: {name}",
                done + 1
            );
        }
    });
    let after = tables.summary();
    if show {
        // Counted too (`unwind_files_unreadable`), for when this cannot be said.
        for (name, why) in tables.unreadable_since(before.unreadable) {
            eprintln!("leaktrace: skipping the unwind table of {name}: {why}");
        }
    }
    (show && after.binaries > before.binaries).then(|| {
        format!(
            "leaktrace: unwind tables ready: {} binaries, {} rows ({}) in {:.2}s",
            after.binaries,
            after.rows,
            human_bytes(after.bytes as u64),
            started.elapsed().as_secs_f64()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ring_buffer_and_pending_overflows_lose_events() {
        let lost: Vec<&str> = Counter::ALL
            .into_iter()
            .filter(|c| kind_of(*c) == HealthKind::Lost)
            .map(Counter::name)
            .collect();
        assert_eq!(lost, ["ringbuf_full", "pending_full"]);
    }
}
