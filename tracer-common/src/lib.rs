//! Types shared across the kernel/user boundary of leaktrace.
//!
//! Every type here is `#[repr(C)]`, made of explicit integers with no implicit padding, and
//! implements `aya::Pod` under the `user` feature. The eBPF programs write these records and user
//! space reads them back byte for byte, so any change here changes both sides at once.
#![no_std]
#![deny(missing_docs)]

/// Deepest user stack recorded, in frames. Matches the kernel's default
/// `kernel.perf_event_max_stack`.
pub const MAX_FRAMES: usize = 127;

/// Placeholders for the `bpf_preempt_disable` and `bpf_preempt_enable` kfuncs in the eBPF
/// object: calls to helper ids no kernel has, which user space rewrites before loading (into
/// kfunc calls, or into `r0 = 0` where the kernel has no such kfunc). aya 0.14 cannot emit
/// kfunc calls itself.
pub mod preempt {
    /// The call standing for `bpf_preempt_disable()`.
    pub const DISABLE: i32 = 0x7fff_ff01;
    /// The call standing for `bpf_preempt_enable()`.
    pub const ENABLE: i32 = 0x7fff_ff02;
}

/// Names of the programs and maps, shared so user space looks them up by the same strings.
pub mod names {
    /// Entry program for every allocating function; the attach cookie carries its [`crate::AllocKind`].
    pub const ALLOC_ENTER: &str = "alloc_enter";
    /// Entry and return of allocating calls, attached as a uprobe session.
    pub const ALLOC_SESSION: &str = "alloc_session";
    /// Return program for every allocating function; the attach cookie carries its kind.
    pub const ALLOC_EXIT: &str = "alloc_exit";
    /// [`ALLOC_EXIT`] that follows frame pointers through a copy of the stack (`--unwind fp`
    /// where the kernel has `bpf_loop`).
    pub const ALLOC_EXIT_FP: &str = "alloc_exit_fp";
    /// [`ALLOC_SESSION`] that follows frame pointers as [`ALLOC_EXIT_FP`] does.
    pub const ALLOC_SESSION_FP: &str = "alloc_sess_fp";
    /// The walks' global functions (their BTF linkage global: the kernel verifies each
    /// once, on its own), by the unmangled names `tracer-ebpf/src/unwind.rs` gives them.
    pub const GLOBAL_FUNCTIONS: [&str; 4] = [
        "leaktrace_unwind_frames",
        "leaktrace_find_row",
        "leaktrace_kernel_return_address",
        "leaktrace_fp_walk",
    ];
    /// Entry program for `free`.
    pub const FREE_ENTER: &str = "free_enter";
    /// Raw tracepoint program on `sched_process_exec`.
    pub const EXEC: &str = "on_exec";
    /// An empty program, for measuring the cost of the traps alone.
    pub const FLOOR_ENTER: &str = "floor_enter";
    /// Ring buffer of [`crate::Event`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Deduplicated user stacks: stack id to [`crate::StackTrace`].
    pub const STACKS: &str = "STACKS";
    /// Per-CPU loss and health counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Unwind rows of every binary ([`crate::unwind::UnwindRow`]).
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    /// The target's executable mappings ([`crate::unwind::ExecMapping`]), in two banks.
    pub const MAPPINGS: &str = "MAPPINGS";
    /// The mappings bank in use and its length.
    pub const MAPPING_COUNT: &str = "MAPPING_COUNT";
    /// The exponential-interval table of the sampler.
    pub const EXP_TABLE: &str = "EXP_TABLE";
    /// The address of the kernel's uretprobe trampoline in the target.
    pub const TRAMPOLINE: &str = "TRAMPOLINE";
    /// Ring buffer of [`crate::VerifyRecord`]s (`--verify-unwind`).
    pub const VERIFY: &str = "VERIFY";
    /// 1 once user space stops the trace: from then on no event is sent.
    pub const STOPPED: &str = "STOPPED";
}

/// Which allocator entry point produced an event. Stored as the attach cookie and in [`Event::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllocKind {
    /// `malloc(size)`
    Malloc = 1,
    /// `calloc(n, size)`
    Calloc = 2,
    /// `realloc(ptr, size)`
    Realloc = 3,
    /// `reallocarray(ptr, n, size)`
    ReallocArray = 4,
    /// `posix_memalign(&ptr, align, size)`
    PosixMemalign = 5,
    /// `aligned_alloc(align, size)`
    AlignedAlloc = 6,
    /// `memalign(align, size)`
    Memalign = 7,
    /// `valloc(size)`
    Valloc = 8,
    /// `pvalloc(size)`
    Pvalloc = 9,
    /// `free(ptr)`, and every call that releases one block: `sdallocx`, `mi_free_size`,
    /// `operator delete`, `__rust_dealloc`
    Free = 10,
    /// `__rust_realloc(ptr, old_size, align, new_size)`
    RustRealloc = 11,
    /// jemalloc's `xallocx(ptr, size, extra, flags)`: resizes in place, returns the usable size
    Xallocx = 12,
    /// `mmap(addr, len, prot, flags, fd, offset)` of anonymous private memory, made outside
    /// the allocators
    Mmap = 13,
    /// `munmap(addr, len)`
    Munmap = 14,
    /// `mremap(old_addr, old_len, new_len, flags, ...)`
    Mremap = 15,
}

impl AllocKind {
    /// Every kind caught at entry and return (everything but `Free`), in probe order.
    pub const ALLOCATING: [AllocKind; 14] = [
        AllocKind::Malloc,
        AllocKind::Calloc,
        AllocKind::Realloc,
        AllocKind::ReallocArray,
        AllocKind::PosixMemalign,
        AllocKind::AlignedAlloc,
        AllocKind::Memalign,
        AllocKind::Valloc,
        AllocKind::Pvalloc,
        AllocKind::RustRealloc,
        AllocKind::Xallocx,
        AllocKind::Mmap,
        AllocKind::Munmap,
        AllocKind::Mremap,
    ];

    /// Whether a call of this kind can release a block through a probed free entry point
    /// before it returns, its return then accounting for the release: `realloc(p, 0)` calls
    /// `free` in glibc, mimalloc's `mi_realloc` calls `mi_free`, and `__rust_realloc` and
    /// `reallocarray` go through `realloc`. A free met inside any other call is its own event.
    pub const fn frees_inside(kind: usize) -> bool {
        kind == AllocKind::Realloc as usize
            || kind == AllocKind::ReallocArray as usize
            || kind == AllocKind::RustRealloc as usize
    }

    /// Decodes a raw kind; `None` for values no program writes.
    pub const fn from_raw(raw: u16) -> Option<Self> {
        Some(match raw {
            1 => Self::Malloc,
            2 => Self::Calloc,
            3 => Self::Realloc,
            4 => Self::ReallocArray,
            5 => Self::PosixMemalign,
            6 => Self::AlignedAlloc,
            7 => Self::Memalign,
            8 => Self::Valloc,
            9 => Self::Pvalloc,
            10 => Self::Free,
            11 => Self::RustRealloc,
            12 => Self::Xallocx,
            13 => Self::Mmap,
            14 => Self::Munmap,
            15 => Self::Mremap,
            _ => return None,
        })
    }

    /// The glibc symbol of this kind (other allocators' names for it are user space's).
    pub const fn symbol(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::Calloc => "calloc",
            Self::Realloc => "realloc",
            Self::ReallocArray => "reallocarray",
            Self::PosixMemalign => "posix_memalign",
            Self::AlignedAlloc => "aligned_alloc",
            Self::Memalign => "memalign",
            Self::Valloc => "valloc",
            Self::Pvalloc => "pvalloc",
            Self::Free => "free",
            Self::RustRealloc => "__rust_realloc",
            Self::Xallocx => "xallocx",
            Self::Mmap => "mmap",
            Self::Munmap => "munmap",
            Self::Mremap => "mremap",
        }
    }
}

/// What an [`Event`] does to the heap model.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOp {
    /// `addr` became live with `size` bytes; `old_addr`, when non-zero, stopped being live
    /// (a successful realloc that moved or resized the block).
    Alloc = 1,
    /// `addr` stopped being live.
    Free = 2,
    /// The process exec'd a new image: every block of the old one is gone.
    Exec = 3,
    /// `addr..addr + size` became an anonymous mapping (replacing whatever was mapped there).
    Map = 4,
    /// `addr..addr + size` was unmapped.
    Unmap = 5,
    /// `old_addr..old_addr + stack_id` moved to `addr..addr + size` (`mremap`; the old length
    /// travels in `stack_id`: the mapping keeps the stack it was made with).
    Remap = 6,
}

/// Bits of [`Event::flags`] and [`StackTrace::flags`].
pub mod flags {
    /// No stack could be captured for this event (`bpf_get_stack` failed).
    pub const STACK_FAILED: u16 = 1;
    /// The stack filled all [`crate::MAX_FRAMES`] frames and may continue beyond them.
    pub const STACK_TRUNCATED: u16 = 2;
    /// The stack was captured but could not be stored in the stack map (full).
    pub const STACK_DROPPED: u16 = 4;
    /// The unwinder stopped before the outermost frame (see the `Unwind*` counters for why).
    pub const STACK_INCOMPLETE: u16 = 8;
}

/// One allocator event, as written to the ring buffer. 48 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// When the call returned, to within one kernel tick (1 to 10 ms): the monotonic clock
    /// (`bpf_ktime_get_ns()`) as it read at the first event of the current tick on this CPU.
    /// Events are applied in the ring buffer's order, not by this time, which only dates them.
    /// (A `free` sends a [`FreeEvent`] instead.)
    pub ts_ns: u64,
    /// The address made live (alloc) or released (free).
    pub addr: u64,
    /// For a successful realloc: the old block, now released (0 when there was none).
    pub old_addr: u64,
    /// Requested size in bytes (allocations only).
    pub size: u64,
    /// Stack id in the stack map (0 when none was recorded; see `flags`).
    pub stack_id: u64,
    /// Thread id (kernel pid of the thread).
    pub tid: u32,
    /// An [`AllocKind`].
    pub kind: u8,
    /// An [`EventOp`].
    pub op: u8,
    /// Bits from [`flags`] (all below 256).
    pub flags: u8,
    /// Which of the target's allocators made the call: the index user space put in the
    /// attach cookie ([`cookie`]).
    pub allocator: u8,
}

/// A free of a block, as written to the ring buffer by `free`'s entry: the address alone,
/// 8 bytes where an [`Event`] takes 48 (told apart by length).
///
/// It carries no time: the reader gives it the newest time of the records before it in the
/// buffer, none of which was stamped after the free was reserved (each program takes its time
/// before it reserves). Events are applied in the buffer's order, which is the order their
/// records were reserved in, so the time only dates the free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeEvent {
    /// The address released.
    pub addr: u64,
}

/// Phases of an event the programs can be told to leave out (the global `BENCH_SKIP`, set
/// by the hidden `--bench-skip`): `cargo xtask bench` times full tracing with each knocked out
/// in turn to find what each costs. Nothing is recorded right in such a run.
pub mod bench_skip {
    /// No ring buffer record (reserve, query, submit) for any event.
    pub const SUBMIT: u32 = 1;
    /// No stack hash and no stack map lookup or insert.
    pub const STORE: u32 = 2;
    /// No stack capture (neither unwinder nor the kernel's walk).
    pub const CAPTURE: u32 = 4;
}

/// The attach cookie of an allocator probe: the [`AllocKind`] in bits 0-15, the allocator's
/// index (user space's numbering, carried into [`Event::allocator`]) in bits 16-23, and in bits
/// 24-39 where each of the first four arguments is at the probed instruction: a [`cookie::Reg`]
/// per 4 bits. A probe past a function's first instructions may find an argument moved to
/// another register (mimalloc's `mi_malloc` copies its size to rsi, then overwrites rdi).
pub mod cookie {
    use crate::AllocKind;

    /// The registers an argument can be found in, by their 4-bit number in a cookie.
    #[repr(u8)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Reg {
        /// The first argument register.
        Rdi = 0,
        /// The second.
        Rsi = 1,
        /// The third.
        Rdx = 2,
        /// The fourth.
        Rcx = 3,
        /// The fifth.
        R8 = 4,
        /// The sixth.
        R9 = 5,
        /// A scratch register.
        Rax = 6,
        /// A callee-saved register.
        Rbx = 7,
        /// A scratch register.
        R10 = 8,
        /// A scratch register.
        R11 = 9,
        /// A callee-saved register.
        R12 = 10,
        /// A callee-saved register.
        R13 = 11,
        /// A callee-saved register.
        R14 = 12,
        /// A callee-saved register.
        R15 = 13,
        /// The frame pointer.
        Rbp = 14,
    }

    /// Where the arguments are at a function's entry.
    pub const AT_ENTRY: [Reg; 4] = [Reg::Rdi, Reg::Rsi, Reg::Rdx, Reg::Rcx];

    /// The cookie of a probe of `kind` in allocator `allocator`, its arguments in `args`.
    pub const fn encode(kind: AllocKind, allocator: u8, args: [Reg; 4]) -> u64 {
        kind as u64
            | (allocator as u64) << 16
            | (args[0] as u64) << 24
            | (args[1] as u64) << 28
            | (args[2] as u64) << 32
            | (args[3] as u64) << 36
    }

    /// The kind's raw value.
    pub const fn kind(cookie: u64) -> usize {
        (cookie & 0xffff) as usize
    }

    /// The allocator's index.
    pub const fn allocator(cookie: u64) -> u8 {
        (cookie >> 16) as u8
    }

    /// The 4-bit register number of argument `index` (0 to 3).
    pub const fn arg(cookie: u64, index: u32) -> u8 {
        ((cookie >> (24 + 4 * index)) & 0xf) as u8
    }
}

/// A deduplicated user stack, innermost frame first (the allocator's caller).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTrace {
    /// Number of valid entries in `ips`.
    pub len: u32,
    /// Bits from [`flags`] (only `STACK_TRUNCATED` is stored here).
    pub flags: u32,
    /// Return addresses, innermost first.
    pub ips: [u64; MAX_FRAMES],
}

/// Counters kept per CPU by the eBPF programs; user space sums them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events that could not be reserved in the ring buffer: lost.
    RingbufFull = 0,
    /// `bpf_get_stack` failed: the event was sent without a stack.
    StackFailed = 1,
    /// The stack map was full: the event was sent without a stack id.
    StackMapFull = 2,
    /// Stacks that filled all frames and may have been cut.
    StackTruncated = 3,
    /// No per-thread state could be created at entry: that call's event is lost.
    PendingFull = 4,
    /// A pending call was overwritten before its return (same kind nested on one thread).
    PendingClobbered = 5,
    /// A return without a recorded entry (the call began before attach).
    PendingMissing = 6,
    /// Allocator calls made from inside another traced call (accounted by the outer call).
    Nested = 7,
    /// Events written to the ring buffer.
    Sent = 8,
    /// Unwinding stopped at a pc outside every known executable mapping.
    UnwindNoMapping = 9,
    /// Unwinding stopped at a CFI rule it cannot follow.
    UnwindUnsupported = 10,
    /// Unwinding stopped because the target's stack could not be read.
    UnwindReadFailed = 11,
    /// Unwinding stopped because the stack pointer did not move up.
    UnwindNoProgress = 12,
    /// Sampling: a sampled block could not be remembered (map full); its free will be missed.
    SampleMapFull = 13,
    /// Sampling: allocations skipped by the sampler (their stacks were not captured).
    Unsampled = 14,
}

impl Counter {
    /// Number of counters, the size of the per-CPU array.
    pub const COUNT: u32 = 15;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::RingbufFull,
        Self::StackFailed,
        Self::StackMapFull,
        Self::StackTruncated,
        Self::PendingFull,
        Self::PendingClobbered,
        Self::PendingMissing,
        Self::Nested,
        Self::Sent,
        Self::UnwindNoMapping,
        Self::UnwindUnsupported,
        Self::UnwindReadFailed,
        Self::UnwindNoProgress,
        Self::SampleMapFull,
        Self::Unsampled,
    ];

    /// Its name in reports and exports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RingbufFull => "ringbuf_full",
            Self::StackFailed => "stack_failed",
            Self::StackMapFull => "stack_map_full",
            Self::StackTruncated => "stacks_truncated",
            Self::PendingFull => "pending_full",
            Self::PendingClobbered => "pending_clobbered",
            Self::PendingMissing => "pending_missing",
            Self::Nested => "nested_calls",
            Self::Sent => "events_sent",
            Self::UnwindNoMapping => "unwind_no_mapping",
            Self::UnwindUnsupported => "unwind_unsupported",
            Self::UnwindReadFailed => "unwind_read_failed",
            Self::UnwindNoProgress => "unwind_no_progress",
            Self::SampleMapFull => "sample_map_full",
            Self::Unsampled => "unsampled",
        }
    }
}

/// Arguments saved at a call's entry until it returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Pending {
    /// First four integer arguments, as passed.
    pub args: [u64; 4],
    /// Stack pointer at entry: the address of the slot holding the return address.
    pub sp: u64,
    /// The return address at entry, before a return probe replaces it with the kernel's
    /// trampoline (the unwinder puts it back).
    pub ret_addr: u64,
    /// 1 while the call is in progress.
    pub active: u32,
    /// 1 when the sampler chose this call's allocation (always 1 without sampling).
    pub sampled: u32,
}

/// Number of pending-call slots per thread: one per [`AllocKind`] value (index = kind).
pub const PENDING_SLOTS: usize = 16;

/// Everything the programs keep per thread, in one map entry so each probe hit costs one lookup.
/// Only the owning thread touches its entry (a thread runs one probe program at a time).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadState {
    /// Stack pointer at the entry of the outermost traced call in progress (0: none).
    pub outer_sp: u64,
    /// When that call began, in jiffies (the kernel's ticks); an old one is taken as stale
    /// (its return was never seen).
    pub outer_started_jiffies: u64,
    /// Its [`AllocKind`].
    pub outer_kind: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The id of the last stack this thread stored in the stack map (0: none). The map only
    /// grows, so an allocation from the same stack as the last skips the map lookup.
    pub stored_stack: u64,
    /// Pending calls, keyed by thread (the entry) and kind (the slot).
    pub pending: [Pending; PENDING_SLOTS],
    /// Scratch space for capturing this thread's stack.
    pub stack: StackTrace,
}

/// Bytes of stack copied into a [`VerifyRecord`].
pub const VERIFY_STACK_BYTES: usize = 16384;

/// A sampled event's registers, its unwound frames and a copy of its stack, for checking the
/// kernel's unwind against a user-space unwind of the same memory (`--verify-unwind`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VerifyRecord {
    /// The stack id the event was recorded with.
    pub stack_id: u64,
    /// Registers at the return probe.
    pub rip: u64,
    /// See `rip`.
    pub rsp: u64,
    /// See `rip`.
    pub rbp: u64,
    /// Frames the kernel unwound (valid entries of `ips`).
    pub len: u32,
    /// Bytes of stack copied from `rsp` (0 when none could be read).
    pub copied: u32,
    /// Stack flags of the kernel's unwind.
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The kernel's frames.
    pub ips: [u64; MAX_FRAMES],
    /// The stack from `rsp` up.
    pub stack: [u8; VERIFY_STACK_BYTES],
}

/// Compact unwind rules compiled from a binary's `.eh_frame`, searched by the eBPF unwinder.
pub mod unwind {
    /// `UNWIND_MODE`: the kernel's frame-pointer walk (`bpf_get_stack`, kernels without
    /// `bpf_loop`).
    pub const MODE_KERNEL_FP: u32 = 0;
    /// `UNWIND_MODE`: `.eh_frame` tables, frame pointers where a binary has none (auto).
    pub const MODE_AUTO: u32 = 1;
    /// `UNWIND_MODE`: `.eh_frame` tables only.
    pub const MODE_TABLES: u32 = 2;
    /// `UNWIND_MODE`: frame pointers followed through one copy of the stack by the programs of
    /// their own (`alloc_exit_fp`, `alloc_sess_fp`).
    pub const MODE_FP_WALK: u32 = 3;
    /// No CFI covers this address: fall back to frame pointers.
    pub const CFA_NONE: u8 = 0;
    /// CFA = rsp + `cfa_offset`.
    pub const CFA_RSP: u8 = 1;
    /// CFA = rbp + `cfa_offset`.
    pub const CFA_RBP: u8 = 2;
    /// A `.plt` stub: CFA = rsp + 8, plus 8 when `(rip & 15) >= 11`.
    pub const CFA_PLT: u8 = 3;
    /// The outermost frame (return address undefined): the stack is complete.
    pub const CFA_END: u8 = 4;
    /// A signal trampoline: the interrupted registers are in a `ucontext` at rsp.
    pub const CFA_SIGNAL: u8 = 5;
    /// A rule the unwinder cannot follow: the stack stops here, flagged.
    pub const CFA_UNSUPPORTED: u8 = 6;
    /// rbp is unchanged in this frame.
    pub const RBP_SAME: u8 = 0;
    /// The caller's rbp is saved at CFA + `rbp_offset`.
    pub const RBP_AT_CFA: u8 = 1;
    /// rbp's rule cannot be followed: the caller's rbp is unknown.
    pub const RBP_UNSUPPORTED: u8 = 2;

    /// One row: the rules that apply from `pc` up to the next row's `pc`. 12 bytes.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct UnwindRow {
        /// ELF virtual address (in the binary's own address space) where the row starts.
        pub pc: u32,
        /// Offset added to the CFA base register.
        pub cfa_offset: i32,
        /// Where the caller's rbp is saved, relative to the CFA (for `RBP_AT_CFA`).
        pub rbp_offset: i16,
        /// One of the `CFA_*` constants.
        pub cfa_type: u8,
        /// One of the `RBP_*` constants.
        pub rbp_type: u8,
    }

    impl UnwindRow {
        /// A row saying "no CFI from `pc` on" (frame pointers there).
        pub const fn none(pc: u32) -> Self {
            Self {
                pc,
                cfa_offset: 0,
                rbp_offset: 0,
                cfa_type: CFA_NONE,
                rbp_type: RBP_SAME,
            }
        }

        /// Whether two rows give the same rules (whatever their `pc`).
        pub const fn same_rule(&self, other: &Self) -> bool {
            self.cfa_offset == other.cfa_offset
                && self.rbp_offset == other.rbp_offset
                && self.cfa_type == other.cfa_type
                && self.rbp_type == other.rbp_type
        }
    }

    /// One executable mapping of the target, with the location of its binary's rows.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ExecMapping {
        /// First address of the mapping.
        pub start: u64,
        /// One past its last address.
        pub end: u64,
        /// Runtime address minus ELF virtual address for this binary.
        pub bias: u64,
        /// Index of the binary's first row in the rows array.
        pub rows_start: u32,
        /// Number of rows (0: no CFI, unwind with frame pointers).
        pub rows_len: u32,
    }

    /// Where a signal trampoline's frame keeps the interrupted rbp, rsp and rip, from its rsp:
    /// `ucontext.uc_mcontext` is 40 bytes in, and the registers sit at 80, 120 and 128 in the
    /// x86-64 `sigcontext`.
    pub const SIGNAL_RBP_OFFSET: u64 = 40 + 80;
    /// See [`SIGNAL_RBP_OFFSET`].
    pub const SIGNAL_RSP_OFFSET: u64 = 40 + 120;
    /// See [`SIGNAL_RBP_OFFSET`].
    pub const SIGNAL_RIP_OFFSET: u64 = 40 + 128;

    /// Most executable mappings the unwinder knows at once.
    pub const MAX_MAPPINGS: u32 = 256;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain integers, no padding (size tests below).
    unsafe impl aya::Pod for super::unwind::UnwindRow {}
    // SAFETY: plain integers, no padding (size tests below).
    unsafe impl aya::Pod for super::unwind::ExecMapping {}
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made of integers only and have no implicit
    // padding (checked by the size tests below), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackTrace {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VerifyRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThreadState {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Event>(), 5 * 8 + 4 + 1 + 1 + 1 + 1);
        assert_eq!(size_of::<FreeEvent>(), 8);
        assert_eq!(size_of::<StackTrace>(), 8 + MAX_FRAMES * 8);
        assert_eq!(size_of::<Pending>(), 4 * 8 + 8 + 8 + 4 + 4);
        assert_eq!(
            size_of::<ThreadState>(),
            32 + PENDING_SLOTS * size_of::<Pending>() + size_of::<StackTrace>()
        );
        for kind in AllocKind::ALLOCATING.into_iter().chain([AllocKind::Free]) {
            assert!((kind as usize) < PENDING_SLOTS, "{kind:?}");
        }
        assert!(
            flags::STACK_FAILED
                | flags::STACK_TRUNCATED
                | flags::STACK_DROPPED
                | flags::STACK_INCOMPLETE
                <= u16::from(u8::MAX)
        );
    }

    #[test]
    fn verify_record_has_no_padding() {
        assert_eq!(
            size_of::<VerifyRecord>(),
            4 * 8 + 4 * 4 + MAX_FRAMES * 8 + VERIFY_STACK_BYTES
        );
    }

    #[test]
    fn unwind_layouts_have_no_padding() {
        assert_eq!(size_of::<unwind::UnwindRow>(), 12);
        assert_eq!(size_of::<unwind::ExecMapping>(), 32);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in AllocKind::ALLOCATING.into_iter().chain([AllocKind::Free]) {
            assert_eq!(AllocKind::from_raw(kind as u16), Some(kind));
        }
        assert_eq!(AllocKind::from_raw(0), None);
        assert_eq!(AllocKind::from_raw(16), None);
    }

    #[test]
    fn cookies_carry_kind_allocator_and_argument_registers() {
        use cookie::Reg;
        let args = [Reg::Rsi, Reg::Rax, Reg::Rdx, Reg::Rbp];
        let c = cookie::encode(AllocKind::Xallocx, 7, args);
        assert_eq!(cookie::kind(c), AllocKind::Xallocx as usize);
        assert_eq!(cookie::allocator(c), 7);
        for (i, reg) in args.into_iter().enumerate() {
            assert_eq!(cookie::arg(c, i as u32), reg as u8);
        }
        let entry = cookie::encode(AllocKind::Free, 0, cookie::AT_ENTRY);
        assert_eq!(cookie::arg(entry, 0), Reg::Rdi as u8);
        assert_eq!(cookie::kind(entry), AllocKind::Free as usize);
    }

    #[test]
    fn every_counter_is_listed_at_its_index_with_a_name_of_its_own() {
        for (index, counter) in Counter::ALL.into_iter().enumerate() {
            assert_eq!(counter as usize, index);
            let same_name = Counter::ALL
                .iter()
                .filter(|c| c.name() == counter.name())
                .count();
            assert_eq!(same_name, 1, "{}", counter.name());
        }
    }
}
