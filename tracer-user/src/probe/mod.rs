//! Loading leaktrace's eBPF programs and attaching them to the target's allocator.
//!
//! Attach order: `free`, then the allocation return probes, then the allocation entry probes;
//! detach order: the reverse. When sampling on a kernel with uprobe sessions, one session link
//! (see [`crate::probe::uprobe_session`]) replaces the allocation entry and return probes, so unsampled
//! calls skip the return trap; it is attached after `free` and detached before it. So every allocation recorded has its return caught and its free
//! seen, and no block looks leaked only because a probe was missing. Dropping [`Probes`] detaches
//! everything (also while unwinding from a panic); the kernel removes the breakpoints from the
//! target.

pub mod btf;
pub mod events;
pub mod features;
pub mod object;
pub mod preempt;
pub mod site;
pub mod uprobe_session;

use std::num::NonZeroU32;

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use tracer_common::{
    AllocKind, Counter, StackTrace, cookie, names,
    unwind::{ExecMapping, MAX_MAPPINGS},
};

use crate::{
    probe::uprobe_session::{Attach, SessionLink, SessionProgram},
    target::allocator::Allocators,
};

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

/// How the kernel side captures user stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindMode {
    /// `.eh_frame` tables where a binary has them, frame pointers elsewhere.
    Auto,
    /// `.eh_frame` tables only: a frame without tables ends the stack (flagged).
    Dwarf,
    /// Frame pointers only: followed through one copy of the stack by the programs where the
    /// kernel has `bpf_loop`, else by the kernel's `bpf_get_stack`.
    Fp,
}

impl UnwindMode {
    /// The value of the eBPF global `UNWIND_MODE` with the shared programs (`Fp`: the
    /// kernel's walk; where the kernel has `bpf_loop` it runs programs of its own instead).
    fn kernel_value(self) -> u32 {
        use tracer_common::unwind::{MODE_AUTO, MODE_KERNEL_FP, MODE_TABLES};
        match self {
            Self::Fp => MODE_KERNEL_FP,
            Self::Auto => MODE_AUTO,
            Self::Dwarf => MODE_TABLES,
        }
    }

    /// The name shown to users and in exports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Dwarf => "dwarf",
            Self::Fp => "fp",
        }
    }
}

/// Sizes and thresholds of the kernel side.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ringbuf_bytes: u32,
    /// Distinct stacks the stack map keeps (where it is not preallocated).
    pub max_stacks: u32,
    /// How stacks are captured.
    pub unwind: UnwindMode,
    /// Capacity of the unwind rows array (ignored in frame-pointer mode).
    pub unwind_rows: u32,
    /// Check 1 in this many unwound stacks against a user-space unwind (0: never).
    pub verify_every: u32,
    /// Mean bytes between sampled allocations (0: trace every allocation).
    pub sample_bytes: u64,
    /// The traced process, for the exec tracepoint (which sees every process).
    pub target_pid: u32,
    /// When sampling, use a uprobe session where the kernel has them (unsampled calls then
    /// skip the return trap). `false` forces separate entry and return probes.
    pub uprobe_session: bool,
    /// Phases the programs leave out, for the bench ([`tracer_common::bench_skip`]; 0: none).
    pub bench_skip: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ringbuf_bytes: 32 << 20,
            max_stacks: 65_536,
            unwind: UnwindMode::Auto,
            unwind_rows: 1 << 20,
            verify_every: 0,
            sample_bytes: 0,
            target_pid: 0,
            uprobe_session: true,
            bench_skip: 0,
        }
    }
}

/// The kernel side's loss and health counters, summed over CPUs, indexed by [`Counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters([u64; Counter::COUNT as usize]);

impl KernelCounters {
    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(counter as usize).copied().unwrap_or(0)
    }

    /// Every counter with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.into_iter().map(|c| (c, self.get(c)))
    }
}

/// A stack as the kernel stored it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStack {
    /// Return addresses, innermost first (the allocator's caller first).
    pub ips: Vec<u64>,
    /// Cut at the frame limit.
    pub truncated: bool,
    /// The unwinder stopped before the outermost frame.
    pub incomplete: bool,
}

/// How the returns of allocating calls are caught.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReturnProbes {
    /// A return probe on every call.
    Uretprobes,
    /// A uprobe session: the return is caught only for calls whose entry asks for it.
    Session,
    /// Separate return probes because a session could not be set up (the reason).
    Fallback(String),
}

impl ReturnProbes {
    /// One line for the attach summary.
    pub fn describe(&self) -> String {
        match self {
            Self::Uretprobes => "returns: a return probe on every call".into(),
            Self::Session => {
                "returns: uprobe session (nested and unsampled calls skip the return trap)".into()
            }
            Self::Fallback(why) => {
                format!("returns: a return probe on every call (no uprobe session: {why})")
            }
        }
    }
}

/// The loaded programs, their links and the maps user space reads.
pub struct Probes {
    ebpf: Ebpf,
    /// The session program, when the kernel accepted it.
    session_program: Option<SessionProgram>,
    /// `free_enter` for `uprobe_multi` links.
    free_multi: Option<SessionProgram>,
    /// Without a session: `alloc_enter` and `alloc_exit` for `uprobe_multi` links.
    pair_multi: Option<(SessionProgram, SessionProgram)>,
    /// How returns are caught (decided at load, revised if the session link fails).
    returns: ReturnProbes,
    /// The return program: `alloc_exit`, or `alloc_exit_fp` for the frame-pointer walk.
    exit_program: &'static str,
    /// Why probes are attached one by one rather than as `uprobe_multi` links (`None`: they
    /// are not).
    separate_links: Option<String>,
    session_links: Vec<SessionLink>,
    /// `uprobe_multi` links of `free_enter`, one per object.
    free_multi_links: Vec<SessionLink>,
    entry_links: Vec<UProbeLink>,
    return_links: Vec<UProbeLink>,
    free_links: Vec<UProbeLink>,
    exec_link: Option<aya::programs::raw_trace_point::RawTracePointLink>,
    stacks: HashMap<MapData, u64, StackTrace>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    verify: Option<RingBuf<MapData>>,
    unwind_rows: MapData,
    unwind_rows_capacity: u32,
    mappings: Array<MapData, ExecMapping>,
    mapping_count: Array<MapData, u32>,
    /// The `MAPPINGS` bank the unwinder reads (0 or 1).
    mapping_bank: u32,
    /// Bumped with every update of the mappings: the unwinder's cache of rows by pc holds only
    /// what was found under the current one.
    mapping_generation: u32,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("entry_links", &self.entry_links.len())
            .field("return_links", &self.return_links.len())
            .finish()
    }
}

/// Program `name` of the loaded object, as the program type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
    program.try_into().map_err(|source| ProbeError::Program {
        what: format!("program {name}"),
        source,
    })
}

/// Takes map `name` out of the loaded object as the typed map `T`.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

impl Probes {
    /// Loads the programs and maps into the kernel (nothing is attached yet).
    pub fn load(config: ProbeConfig) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let wakeup_bytes = u64::from(config.ringbuf_bytes / 4);
        // Frame pointers are followed by programs of their own: through one copy of the stack
        // where the kernel can run the walk (bpf_loop), as `bpf_get_stack` reads target memory
        // once per frame (see README, Figures); by `bpf_get_stack` before 5.17, whose kernels
        // could not load the table programs at all (their global functions call bpf_loop).
        let (unwind_mode, exit_program, session_program_name) = if config.unwind == UnwindMode::Fp {
            let mode = if features::bpf_loop_present() {
                tracer_common::unwind::MODE_FP_WALK
            } else {
                tracer_common::unwind::MODE_KERNEL_FP
            };
            (mode, names::ALLOC_EXIT_FP, names::ALLOC_SESSION_FP)
        } else {
            (
                config.unwind.kernel_value(),
                names::ALLOC_EXIT,
                names::ALLOC_SESSION,
            )
        };
        // Kernel structure offsets for translating foreign uretprobe trampolines (0: unknown).
        let ri_offsets: [u32; 5] =
            crate::probe::btf::return_instance_offsets().map_or([0; 5], |o| {
                [
                    o.task_utask,
                    o.utask_return_instances,
                    o.ri_stack,
                    o.ri_orig_ret_vaddr,
                    o.ri_next,
                ]
            });
        let unwind_rows_capacity = if config.unwind == UnwindMode::Fp {
            1
        } else {
            config.unwind_rows.max(1)
        };
        let prepared = object::prepared();
        let mut loader = EbpfLoader::new();
        if prepared.preallocated {
            loader
                .map_max_entries(names::STACKS, object::PREALLOCATED_STACKS)
                .map_max_entries("SAMPLED", object::PREALLOCATED_SAMPLED);
        } else {
            loader.map_max_entries(names::STACKS, config.max_stacks.max(1));
        }
        let mut ebpf = loader
            // The unwinder's per-thread stack copy is task-local storage, which aya creates
            // but has no typed handle for (user space never touches it).
            .allow_unsupported_maps()
            .map_max_entries(names::EVENTS, config.ringbuf_bytes)
            .map_max_entries(names::UNWIND_ROWS, unwind_rows_capacity)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("UNWIND_MODE", &unwind_mode, true)
            .override_global("VERIFY_EVERY", &config.verify_every, true)
            .override_global("BENCH_SKIP", &config.bench_skip, true)
            .override_global("SAMPLE_BYTES", &config.sample_bytes, true)
            .override_global("RI_OFFSETS", &ri_offsets, true)
            .override_global(
                "STATIC_FUNCTIONS",
                &u32::from(prepared.static_functions),
                true,
            )
            .override_global("TARGET_TGID", &config.target_pid, true)
            .map_max_entries(
                names::VERIFY,
                if config.verify_every == 0 {
                    4096
                } else {
                    16 << 20
                },
            )
            .load(prepared.bytes)?;
        for name in [names::FREE_ENTER, names::FLOOR_ENTER] {
            load_program(&mut ebpf, name)?;
        }
        program::<RawTracePoint>(&mut ebpf, names::EXEC)?
            .load()
            .map_err(|source| ProbeError::Program {
                what: "loading on_exec".into(),
                source,
            })?;
        // Before any map is taken out of `ebpf`: the session program shares them all. The
        // separate entry and return programs are verified only when needed (each takes the
        // verifier a while: it holds the unwinder).
        let (session_program, returns) = if config.sample_bytes == 0 || !config.uprobe_session {
            (None, ReturnProbes::Uretprobes)
        } else {
            match load_multi(&mut ebpf, session_program_name, Attach::Session) {
                Ok(program) => (Some(program), ReturnProbes::Session),
                Err(why) => (None, ReturnProbes::Fallback(why)),
            }
        };
        // Every probe of a kind in one `uprobe_multi` link per object where the kernel has
        // them (6.6+): removed at once, where separate probes are removed one by one.
        let multi = config.uprobe_session;
        let (free_multi, separate_links) = if multi {
            match load_multi(&mut ebpf, names::FREE_ENTER, Attach::Multi) {
                Ok(program) => (Some(program), None),
                Err(why) => (None, Some(why)),
            }
        } else {
            (None, Some("--no-uprobe-session".to_owned()))
        };
        let pair_multi = if multi && session_program.is_none() && free_multi.is_some() {
            load_multi(&mut ebpf, names::ALLOC_ENTER, Attach::Multi)
                .and_then(|entry| Ok((entry, load_multi(&mut ebpf, exit_program, Attach::Multi)?)))
                .ok()
        } else {
            None
        };
        if session_program.is_none() && pair_multi.is_none() {
            load_pair(&mut ebpf, exit_program)?;
        }
        let stacks = take_map(&mut ebpf, names::STACKS)?;
        let counters = take_map(&mut ebpf, names::COUNTERS)?;
        let events = take_map(&mut ebpf, names::EVENTS)?;
        // Sampling intervals: -ln(u) at 256 evenly spread points of (0, 1), scaled by 2^16.
        let mut exp_table: Array<_, u32> = Array::try_from(
            ebpf.map_mut(names::EXP_TABLE)
                .ok_or(ProbeError::Missing(names::EXP_TABLE))?,
        )
        .map_err(|source| ProbeError::Map {
            name: names::EXP_TABLE,
            source,
        })?;
        for i in 0..256u32 {
            let u = (f64::from(i) + 0.5) / 256.0;
            let value = (-u.ln() * 65536.0).round() as u32;
            exp_table
                .set(i, value, 0)
                .map_err(|source| ProbeError::Map {
                    name: names::EXP_TABLE,
                    source,
                })?;
        }
        let verify = take_map(&mut ebpf, names::VERIFY)?;
        let Some(Map::Array(unwind_rows)) = ebpf.take_map(names::UNWIND_ROWS) else {
            return Err(ProbeError::Missing(names::UNWIND_ROWS));
        };
        let mappings = take_map(&mut ebpf, names::MAPPINGS)?;
        let mapping_count = take_map(&mut ebpf, names::MAPPING_COUNT)?;
        Ok(Self {
            ebpf,
            session_program,
            free_multi,
            pair_multi,
            separate_links,
            returns,
            exit_program,
            session_links: Vec::new(),
            free_multi_links: Vec::new(),
            entry_links: Vec::new(),
            return_links: Vec::new(),
            free_links: Vec::new(),
            exec_link: None,
            stacks,
            counters,
            events: Some(events),
            verify: Some(verify),
            unwind_rows,
            unwind_rows_capacity,
            mappings,
            mapping_count,
            mapping_bank: 0,
            mapping_generation: 0,
        })
    }

    /// Attaches to every probe point of every allocator object, firing only for process
    /// `pid`. On error, whatever was attached is detached again.
    pub fn attach(&mut self, allocators: &Allocators, pid: NonZeroU32) -> Result<(), ProbeError> {
        let result = self.attach_all(allocators, pid);
        if result.is_err() {
            self.detach();
        }
        result
    }

    fn attach_all(&mut self, allocators: &Allocators, pid: NonZeroU32) -> Result<(), ProbeError> {
        // Exec first: an exec during attach must not leave the old image's blocks live.
        let exec: &mut RawTracePoint = program(&mut self.ebpf, names::EXEC)?;
        let id = exec
            .attach("sched_process_exec")
            .map_err(|source| ProbeError::Program {
                what: "attaching to sched_process_exec".into(),
                source,
            })?;
        self.exec_link = Some(exec.take_link(id).map_err(|source| ProbeError::Program {
            what: "attaching to sched_process_exec".into(),
            source,
        })?);

        let scope = UProbeScope::OneProcess(pid);
        let point = |offset: u64, cookie: u64| UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        };
        let attach_err = |what: String| move |source| ProbeError::Program { what, source };
        // Frees first, then returns, then entries: see the module docs.
        for stage in [names::FREE_ENTER, self.exit_program, names::ALLOC_ENTER] {
            if stage == names::FREE_ENTER && self.attach_free_multi(allocators, pid) {
                continue;
            }
            if stage == self.exit_program
                && (self.attach_session(allocators, pid)?
                    || self.attach_pair_multi(allocators, pid)?)
            {
                break;
            }
            let prog: &mut UProbe = program(&mut self.ebpf, stage)?;
            for object in &allocators.objects {
                let path = &object.attach_path;
                for probe in &object.points {
                    if (probe.kind == AllocKind::Free) != (stage == names::FREE_ENTER) {
                        continue;
                    }
                    let what = format!(
                        "attaching {stage} to {} in {}",
                        probe.symbol,
                        path.display()
                    );
                    let cookie = cookie::encode(probe.kind, probe.label, probe.site.args);
                    let id = prog
                        .attach(point(probe.file_offset, cookie), path, scope)
                        .map_err(attach_err(what.clone()))?;
                    let link = prog.take_link(id).map_err(attach_err(what))?;
                    if stage == self.exit_program {
                        self.return_links.push(link);
                    } else if stage == names::FREE_ENTER {
                        self.free_links.push(link);
                    } else {
                        self.entry_links.push(link);
                    }
                }
            }
        }
        Ok(())
    }

    /// Attaches `free_enter` to every freeing function of every object as one `uprobe_multi`
    /// link per object, if it was loaded. Returns whether it did (else the frees are probed one
    /// by one).
    fn attach_free_multi(&mut self, allocators: &Allocators, pid: NonZeroU32) -> bool {
        let Some(program) = &self.free_multi else {
            return false;
        };
        let mut links = Vec::new();
        let mut refused = None;
        for object in &allocators.objects {
            let (offsets, cookies): (Vec<u64>, Vec<u64>) = object
                .points
                .iter()
                .filter(|p| p.kind == AllocKind::Free)
                .map(|p| (p.file_offset, cookie::encode(p.kind, p.label, p.site.args)))
                .unzip();
            if offsets.is_empty() {
                continue;
            }
            match SessionLink::attach(
                program,
                &object.attach_path,
                &offsets,
                &cookies,
                pid.get(),
                false,
            ) {
                Ok(link) => links.push(link),
                Err(err) => {
                    refused = Some(err.to_string());
                    break;
                }
            }
        }
        if let Some(why) = refused {
            // Said in the attach summary: the probes go one by one instead.
            self.separate_links = Some(why);
            return false;
        }
        self.free_multi_links = links;
        true
    }

    /// Without a session: attaches `alloc_exit` to the returns, then `alloc_enter` to the
    /// entries, of every allocating function of every object, one `uprobe_multi` link each per
    /// object, if they were loaded. Returns whether it did; on failure the per-probe programs
    /// are loaded instead.
    fn attach_pair_multi(
        &mut self,
        allocators: &Allocators,
        pid: NonZeroU32,
    ) -> Result<bool, ProbeError> {
        let Some((entry, ret)) = &self.pair_multi else {
            return Ok(false);
        };
        let mut links = Vec::new();
        let mut failed = false;
        'stages: for (program, at_return) in [(ret, true), (entry, false)] {
            for object in &allocators.objects {
                let (offsets, cookies): (Vec<u64>, Vec<u64>) = object
                    .points
                    .iter()
                    .filter(|p| p.kind != AllocKind::Free)
                    .map(|p| (p.file_offset, cookie::encode(p.kind, p.label, p.site.args)))
                    .unzip();
                if offsets.is_empty() {
                    continue;
                }
                match SessionLink::attach(
                    program,
                    &object.attach_path,
                    &offsets,
                    &cookies,
                    pid.get(),
                    at_return,
                ) {
                    Ok(link) => links.push(link),
                    Err(_) => {
                        failed = true;
                        break 'stages;
                    }
                }
            }
        }
        if failed {
            drop(links);
            self.pair_multi = None;
            load_pair(&mut self.ebpf, self.exit_program)?;
            return Ok(false);
        }
        // Entries were attached last: they go first (see `detach`).
        links.reverse();
        self.session_links.extend(links);
        Ok(true)
    }

    /// Attaches the session program to every allocating function of every object, if it was
    /// loaded. Returns whether it did; on failure the reason is kept and the separate entry
    /// and return programs are loaded to be attached instead.
    fn attach_session(
        &mut self,
        allocators: &Allocators,
        pid: NonZeroU32,
    ) -> Result<bool, ProbeError> {
        let Some(program) = &self.session_program else {
            return Ok(false);
        };
        let mut links = Vec::new();
        let mut failed = None;
        for object in &allocators.objects {
            let (offsets, cookies): (Vec<u64>, Vec<u64>) = object
                .points
                .iter()
                .filter(|p| p.kind != AllocKind::Free)
                .map(|p| (p.file_offset, cookie::encode(p.kind, p.label, p.site.args)))
                .unzip();
            if offsets.is_empty() {
                continue;
            }
            match SessionLink::attach(
                program,
                &object.attach_path,
                &offsets,
                &cookies,
                pid.get(),
                false,
            ) {
                Ok(link) => links.push(link),
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            }
        }
        match failed {
            None => {
                self.session_links.extend(links);
                Ok(true)
            }
            Some(reason) => {
                drop(links);
                self.returns = ReturnProbes::Fallback(reason);
                self.session_program = None;
                load_pair(&mut self.ebpf, self.exit_program)?;
                Ok(false)
            }
        }
    }

    /// How the returns of allocating calls are caught.
    pub fn returns(&self) -> &ReturnProbes {
        &self.returns
    }

    /// One line for the attach summary when probes are attached one by one: each is then also
    /// removed on its own at exit, which takes longer (`None` with `uprobe_multi` links).
    pub fn separate_links(&self) -> Option<String> {
        self.separate_links.as_ref().map(|why| {
            format!(
                "probes: one link per function, removed one by one at exit (no uprobe_multi: {why})"
            )
        })
    }

    /// Attaches only the empty program to every entry point of the C API's allocator that
    /// leaktrace probes (`--probe-floor`: `malloc`, `calloc`, `realloc`, `free`...): the entry
    /// trap each call costs a tracer that sees every allocation and free, for benchmarks. A
    /// workload of malloc+free pairs then takes two traps per pair; one that also calls
    /// `calloc` or `realloc` takes theirs too, as a tracer must.
    pub fn attach_floor(
        &mut self,
        allocators: &Allocators,
        pid: NonZeroU32,
    ) -> Result<(), ProbeError> {
        let scope = UProbeScope::OneProcess(pid);
        let Some(object) = allocators.malloc_owner() else {
            return Ok(());
        };
        let path = &object.attach_path;
        let prog: &mut UProbe = program(&mut self.ebpf, names::FLOOR_ENTER)?;
        for probe in &object.points {
            let what = format!("attaching the floor probe to {}", probe.symbol);
            let id = prog
                .attach(
                    UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
                    path,
                    scope,
                )
                .map_err(|source| ProbeError::Program {
                    what: what.clone(),
                    source,
                })?;
            let link = prog
                .take_link(id)
                .map_err(|source| ProbeError::Program { what, source })?;
            self.entry_links.push(link);
        }
        Ok(())
    }

    /// Detaches every probe: allocation entries, then returns, then frees, each group in
    /// parallel (the kernel waits for in-flight probe handlers on every removal). The target
    /// runs on unprobed.
    pub fn detach(&mut self) {
        // A session link holds entries and returns: it goes first, with the entries.
        drop(std::mem::take(&mut self.session_links));
        for links in [
            &mut self.entry_links,
            &mut self.return_links,
            &mut self.free_links,
        ] {
            let links = std::mem::take(links);
            std::thread::scope(|scope| {
                for link in links {
                    scope.spawn(move || drop(link));
                }
            });
        }
        drop(std::mem::take(&mut self.free_multi_links));
    }

    /// Number of attached probes.
    pub fn attached(&self) -> usize {
        self.entry_links.len()
            + self.return_links.len()
            + self.free_links.len()
            + self
                .session_links
                .iter()
                .chain(&self.free_multi_links)
                .map(SessionLink::probes)
                .sum::<usize>()
    }

    /// Takes the `--verify-unwind` ring buffer (once).
    pub fn take_verify(&mut self) -> Option<RingBuf<MapData>> {
        self.verify.take()
    }

    /// Takes the event ring buffer (once) for the consumer.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The frames of stack `id`, innermost first, and its flags.
    pub fn stack(&self, id: u64) -> Option<KernelStack> {
        let trace = self.stacks.get(&id, 0).ok()?;
        let len = (trace.len as usize).min(trace.ips.len());
        let has = |flag: u16| trace.flags & u32::from(flag) != 0;
        Some(KernelStack {
            ips: trace.ips[..len].to_vec(),
            truncated: has(tracer_common::flags::STACK_TRUNCATED),
            incomplete: has(tracer_common::flags::STACK_INCOMPLETE),
        })
    }

    /// The unwind rows array's descriptor and capacity, for loading tables.
    pub fn unwind_rows(&self) -> (BorrowedFd<'_>, u32) {
        (self.unwind_rows.fd().as_fd(), self.unwind_rows_capacity)
    }

    /// Publishes the target's executable mappings to the unwinder (sorted by start): writes the
    /// bank not in use, then switches to it, so the unwinder never reads a half-written list.
    pub fn set_mappings(&mut self, mappings: &[ExecMapping]) -> Result<(), ProbeError> {
        let n = mappings.len().min(MAX_MAPPINGS as usize);
        let bank = 1 - self.mapping_bank;
        let base = bank * MAX_MAPPINGS;
        for (i, mapping) in mappings.iter().take(n).enumerate() {
            self.mappings
                .set(base + i as u32, mapping, 0)
                .map_err(|source| ProbeError::Map {
                    name: names::MAPPINGS,
                    source,
                })?;
        }
        // Bits 17 and up: 15 bits of generation.
        let generation = (self.mapping_generation + 1) & 0x7fff;
        self.mapping_count
            .set(0, (generation << 17) | (bank << 16) | n as u32, 0)
            .map_err(|source| ProbeError::Map {
                name: names::MAPPING_COUNT,
                source,
            })?;
        self.mapping_bank = bank;
        self.mapping_generation = generation;
        Ok(())
    }

    /// Tells the unwinder where the kernel's uretprobe trampoline sits in the target.
    pub fn set_trampoline(&mut self, address: u64) -> Result<(), ProbeError> {
        let mut trampoline: Array<_, u64> = Array::try_from(
            self.ebpf
                .map_mut(names::TRAMPOLINE)
                .ok_or(ProbeError::Missing(names::TRAMPOLINE))?,
        )
        .map_err(|source| ProbeError::Map {
            name: names::TRAMPOLINE,
            source,
        })?;
        trampoline
            .set(0, address, 0)
            .map_err(|source| ProbeError::Map {
                name: names::TRAMPOLINE,
                source,
            })
    }

    /// Stops the programs sending events ([`names::STOPPED`]): what the buffer holds then is
    /// the whole trace, up to this moment.
    pub fn stop_events(&mut self) -> Result<(), ProbeError> {
        let mut stopped: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut(names::STOPPED)
                .ok_or(ProbeError::Missing(names::STOPPED))?,
        )
        .map_err(|source| ProbeError::Map {
            name: names::STOPPED,
            source,
        })?;
        stopped.set(0, 1, 0).map_err(|source| ProbeError::Map {
            name: names::STOPPED,
            source,
        })
    }

    /// Current counter values, summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        KernelCounters(Counter::ALL.map(|counter| {
            self.counters
                .get(&(counter as u32), 0)
                .map(|values| values.iter().copied().sum())
                .unwrap_or(0)
        }))
    }
}

/// Loads (verifies) program `name` of the object.
fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), ProbeError> {
    program::<UProbe>(ebpf, name)?
        .load()
        .map_err(|source| ProbeError::Program {
            what: format!("loading {name}"),
            source,
        })
}

/// Loads the separate entry and return (`exit`) programs of allocating calls.
fn load_pair(ebpf: &mut Ebpf, exit: &'static str) -> Result<(), ProbeError> {
    load_program(ebpf, names::ALLOC_ENTER)?;
    load_program(ebpf, exit)
}

/// Loads program `name` for `uprobe_multi` links, sharing the maps and BTF of the object aya
/// loaded (any loaded program of the object reports that BTF). The error is the reason, for the
/// attach summary.
fn load_multi(ebpf: &mut Ebpf, name: &str, attach: Attach) -> Result<SessionProgram, String> {
    let btf_id = program::<UProbe>(ebpf, names::FREE_ENTER)
        .map_err(|err| err.to_string())?
        .info()
        .map_err(|err| err.to_string())?
        .btf_id()
        .ok_or("the loaded object has no BTF")?;
    SessionProgram::load(object::prepared().bytes, ebpf, name, btf_id, attach)
        .map_err(|err| err.to_string())
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach();
    }
}
