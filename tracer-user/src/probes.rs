//! Loading leaktrace's eBPF programs and attaching them to the target's allocator.
//!
//! Return probes are attached before entry probes and detached after them, so no call ever has
//! its entry recorded without its return being caught. Dropping [`Probes`] detaches everything
//! (also while unwinding from a panic); the kernel removes the breakpoints from the target.
use std::num::NonZeroU32;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use tracer_common::{Counter, StackTrace, names};

use crate::allocator::Allocator;

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Why the probes could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// This binary was built without its eBPF object.
    #[error("this leaktrace was built without its eBPF programs (LEAKTRACE_SKIP_EBPF)")]
    NoObject,
    /// The kernel refused to load the object.
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program or map is missing from the object.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A program could not be loaded or attached.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// What went wrong.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map could not be opened.
    #[error("opening map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Sizes and thresholds of the kernel side.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ringbuf_bytes: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ringbuf_bytes: 32 << 20,
        }
    }
}

/// The loss and health counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Allocations recorded without a stack because capture failed.
    pub stack_failed: u64,
    /// Allocations recorded without a stack because the stack map was full.
    pub stack_map_full: u64,
    /// Stacks that filled every frame and may be cut short.
    pub stacks_truncated: u64,
    /// Calls lost because the pending-call map was full.
    pub pending_full: u64,
    /// Pending calls replaced before their return (same kind nested on a thread).
    pub pending_clobbered: u64,
    /// Returns without a recorded entry (calls begun before attach).
    pub pending_missing: u64,
    /// Allocator calls made inside other traced calls (accounted by the outer call).
    pub nested_calls: u64,
    /// Events written to the ring buffer.
    pub sent: u64,
}

/// The loaded programs, their links and the maps user space reads.
pub struct Probes {
    ebpf: Ebpf,
    entry_links: Vec<UProbeLink>,
    return_links: Vec<UProbeLink>,
    stacks: HashMap<MapData, u64, StackTrace>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("entry_links", &self.entry_links.len())
            .field("return_links", &self.return_links.len())
            .finish()
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    let program = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
    program.try_into().map_err(|source| ProbeError::Program {
        what: format!("program {name}"),
        source,
    })
}

impl Probes {
    /// Loads the programs and maps into the kernel (nothing is attached yet).
    pub fn load(config: ProbeConfig) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let wakeup_bytes = u64::from(config.ringbuf_bytes / 4);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, config.ringbuf_bytes)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .load(OBJECT)?;
        for name in [names::ALLOC_ENTER, names::ALLOC_EXIT, names::FREE_ENTER] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| ProbeError::Program {
                    what: format!("loading {name}"),
                    source,
                })?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::Missing(name))
        };
        let stacks = HashMap::try_from(take(&mut ebpf, names::STACKS)?).map_err(|source| {
            ProbeError::Map {
                name: names::STACKS,
                source,
            }
        })?;
        let counters =
            PerCpuArray::try_from(take(&mut ebpf, names::COUNTERS)?).map_err(|source| {
                ProbeError::Map {
                    name: names::COUNTERS,
                    source,
                }
            })?;
        let events = RingBuf::try_from(take(&mut ebpf, names::EVENTS)?).map_err(|source| {
            ProbeError::Map {
                name: names::EVENTS,
                source,
            }
        })?;
        Ok(Self {
            ebpf,
            entry_links: Vec::new(),
            return_links: Vec::new(),
            stacks,
            counters,
            events: Some(events),
        })
    }

    /// Attaches to every probe point of `allocator`, firing only for process `pid`.
    /// On error, whatever was attached is detached again.
    pub fn attach(&mut self, allocator: &Allocator, pid: NonZeroU32) -> Result<(), ProbeError> {
        let result = self.attach_all(allocator, pid);
        if result.is_err() {
            self.detach();
        }
        result
    }

    fn attach_all(&mut self, allocator: &Allocator, pid: NonZeroU32) -> Result<(), ProbeError> {
        let scope = UProbeScope::OneProcess(pid);
        let path = &allocator.attach_path;
        let point = |offset: u64, cookie: u64| UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        };
        let attach_err = |what: String| move |source| ProbeError::Program { what, source };
        // Returns first: see the module docs.
        for stage in [names::ALLOC_EXIT, names::ALLOC_ENTER, names::FREE_ENTER] {
            let prog = program(&mut self.ebpf, stage)?;
            for probe in &allocator.points {
                let is_free = probe.kind == tracer_common::AllocKind::Free;
                if is_free != (stage == names::FREE_ENTER) {
                    continue;
                }
                let what = format!(
                    "attaching {stage} to {} in {}",
                    probe.kind.symbol(),
                    path.display()
                );
                let id = prog
                    .attach(point(probe.file_offset, probe.kind as u64), path, scope)
                    .map_err(attach_err(what.clone()))?;
                let link = prog.take_link(id).map_err(attach_err(what))?;
                if stage == names::ALLOC_EXIT {
                    self.return_links.push(link);
                } else {
                    self.entry_links.push(link);
                }
            }
        }
        Ok(())
    }

    /// Detaches every probe: entries first, then returns. The target runs on unprobed.
    pub fn detach(&mut self) {
        self.entry_links.clear();
        self.return_links.clear();
    }

    /// Number of attached probes.
    pub fn attached(&self) -> usize {
        self.entry_links.len() + self.return_links.len()
    }

    /// Takes the event ring buffer (once) for the consumer.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The frames of stack `id`, innermost first, and whether it was truncated.
    pub fn stack(&self, id: u64) -> Option<(Vec<u64>, bool)> {
        let trace = self.stacks.get(&id, 0).ok()?;
        let len = (trace.len as usize).min(trace.ips.len());
        let truncated = trace.flags & u32::from(tracer_common::flags::STACK_TRUNCATED) != 0;
        Some((trace.ips[..len].to_vec(), truncated))
    }

    /// Current counter values, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let read = |counter: Counter| -> u64 {
            self.counters
                .get(&(counter as u32), 0)
                .map(|values| values.iter().copied().sum())
                .unwrap_or(0)
        };
        Counters {
            ringbuf_full: read(Counter::RingbufFull),
            stack_failed: read(Counter::StackFailed),
            stack_map_full: read(Counter::StackMapFull),
            stacks_truncated: read(Counter::StackTruncated),
            pending_full: read(Counter::PendingFull),
            pending_clobbered: read(Counter::PendingClobbered),
            pending_missing: read(Counter::PendingMissing),
            nested_calls: read(Counter::Nested),
            sent: read(Counter::Sent),
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach();
    }
}
