//! Unwinding user stacks without frame pointers, from rows compiled out of each binary's
//! `.eh_frame` by user space.
//!
//! `MAPPINGS` holds the target's executable mappings sorted by address, each pointing at its
//! binary's rows in `UNWIND_ROWS` (sorted by pc). One step per frame, run under `bpf_loop` so the
//! verifier checks the step once:
//! 1. find the row for the current pc: in the thread's row memo (the rows its last walks used at
//!    that frame index), else in the per-CPU row cache, else by finding the pc's mapping (binary
//!    search) and, in it, the last row at or before the pc (binary search); a return address is
//!    looked up one byte earlier, inside its call;
//! 2. compute the CFA from rsp or rbp (or the `.plt` rule), read the return address at CFA - 8
//!    and the caller's rbp where the row says it was saved; a signal frame restores rip, rsp and
//!    rbp from the `ucontext` on the stack;
//! 3. where no row covers the pc (no CFI), take one frame-pointer step instead (in `auto` mode).
//!
//! Stack memory is read from a copy: at the start of a walk one read takes the top
//! [`COPY_BYTES`] of the stack into the thread's `STACK_COPY` (task-local storage), and each
//! frame's reads come from it, with a read of target memory only for what lies beyond it. One
//! large read costs far less than a read per frame.
//!
//! The walk ends at an outermost frame (undefined return address), a zero return address or
//! rbp, the depth limit (flagged truncated), or a failure (flagged incomplete and counted by
//! reason: no mapping, unsupported rule, unreadable stack, stack pointer not moving up).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_loop, bpf_probe_read_user as raw_probe_read_user,
            bpf_task_storage_get,
        },
    },
    macros::{btf_map, map},
    maps::{Array, PerCpuArray},
};
use tracer_common::{
    Counter, MAX_FRAMES, PENDING_SLOTS, StackTrace, ThreadState, flags,
    unwind::{
        CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, ExecMapping, MAX_MAPPINGS,
        RBP_AT_CFA, RBP_SAME, SIGNAL_RBP_OFFSET, SIGNAL_RIP_OFFSET, SIGNAL_RSP_OFFSET, UnwindRow,
    },
};

use crate::state::count;

/// Every binary's rows, each binary in one sorted run; sized by user space at load.
#[map(name = "UNWIND_ROWS")]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, 0);

/// The target's executable mappings, sorted by start address, in two banks of `MAX_MAPPINGS`:
/// user space fills the bank not in use, then switches `MAPPING_COUNT` to it, so a walk never
/// sees a half-written list.
#[map(name = "MAPPINGS")]
static MAPPINGS: Array<ExecMapping> = Array::with_max_entries(2 * MAX_MAPPINGS, 0);

/// Index 0: the bank in use (bit 16), its number of entries (low 16 bits), and a generation
/// (bits 17 and up) that changes with every update (it invalidates `ROW_CACHE`).
#[map(name = "MAPPING_COUNT")]
static MAPPING_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// Entries of [`ROW_CACHE`] (a power of two).
const ROW_CACHE_ENTRIES: u32 = 4096;

/// The row found for a pc, cached so that the frames the walks keep meeting (the same call
/// sites, allocation after allocation) skip both binary searches: each is a few `bpf_loop`
/// calls, dear where the kernel mitigates speculation. One per CPU (the programs run with
/// migration disabled), direct-mapped by pc.
#[map(name = "ROW_CACHE")]
static ROW_CACHE: PerCpuArray<RowCacheEntry> = PerCpuArray::with_max_entries(ROW_CACHE_ENTRIES, 0);

/// One cached lookup: the row (its `pc` left out) that applies at `pc`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RowCacheEntry {
    /// The looked-up pc (an absolute address; 0: empty).
    pc: u64,
    /// The row's rules, packed ([`pack_row`]).
    row: u64,
    /// [`row_check`] of the entry under the mappings' header it was found with: an entry from
    /// before the mappings changed, or one torn by a program preempted halfway through writing
    /// it (kernels without the preemption guard), fails it.
    check: u64,
}

/// What [`leaktrace_find_row`] returns for a pc in no known mapping (its `cfa_type` byte is
/// no rule's).
const NO_MAPPING: u64 = u64::MAX;

/// `row`'s rules in one word (its `pc` is left out).
#[inline(always)]
fn pack_row(row: &UnwindRow) -> u64 {
    u64::from(row.cfa_offset as u32)
        | (u64::from(row.rbp_offset as u16) << 32)
        | (u64::from(row.cfa_type) << 48)
        | (u64::from(row.rbp_type) << 56)
}

/// The rules [`pack_row`] packed.
#[inline(always)]
fn unpack_row(packed: u64) -> UnwindRow {
    UnwindRow {
        pc: 0,
        cfa_offset: packed as u32 as i32,
        rbp_offset: (packed >> 32) as u16 as i16,
        cfa_type: (packed >> 48) as u8,
        rbp_type: (packed >> 56) as u8,
    }
}

/// Ties an entry's fields to each other and to the mappings' `header`.
#[inline(always)]
fn row_check(pc: u64, packed: u64, header: u32) -> u64 {
    pc.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ packed.rotate_left(29)
        ^ u64::from(header).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
}

/// The slot of `pc` in [`ROW_CACHE`].
#[inline(always)]
fn row_cache_slot(pc: u64) -> u32 {
    (pc.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as u32 & (ROW_CACHE_ENTRIES - 1)
}

/// The mappings' header (`MAPPING_COUNT`), read once per call of [`leaktrace_unwind_frames`]
/// rather than once per frame.
#[inline(always)]
fn mapping_header() -> u32 {
    MAPPING_COUNT.get(0).copied().unwrap_or(0)
}

/// The unwind row that applies at `pc` (an absolute address) under the mappings' `header`,
/// packed ([`pack_row`]): from [`ROW_CACHE`], else found by [`leaktrace_find_row`] (and cached
/// there). Inlined into the walk: a hit costs one lookup, no call.
#[inline(always)]
fn unwind_row(pc: u64, header: u32) -> u64 {
    cached_row(pc, header).unwrap_or_else(|| leaktrace_find_row(pc, u64::from(header)))
}

/// The row [`ROW_CACHE`] holds for `pc` under the mappings' `header`, packed.
#[inline(always)]
fn cached_row(pc: u64, header: u32) -> Option<u64> {
    let entry = ROW_CACHE.get_ptr(row_cache_slot(pc))?;
    // SAFETY: pointer from a successful per-CPU array lookup, valid for the program run.
    let (entry_pc, packed, check) = unsafe { ((*entry).pc, (*entry).row, (*entry).check) };
    (entry_pc == pc && check == row_check(pc, packed, header)).then_some(packed)
}

/// The unwind row that applies at `pc` under the mappings' `header`, packed: from
/// [`ROW_CACHE`], else found by the two binary searches and cached there. A mapping without
/// rows gives the empty row (no CFI); a pc in no mapping gives [`NO_MAPPING`].
///
/// A global function (BTF linkage global, kept by its unmangled name): the kernel verifies it
/// once on its own, like [`leaktrace_unwind_frames`].
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn leaktrace_find_row(pc: u64, header: u64) -> u64 {
    let header = header as u32;
    if let Some(packed) = cached_row(pc, header) {
        return packed;
    }
    let packed = match find_mapping(pc, header) {
        Some(mapping) if mapping.rows_len > 0 => {
            pack_row(&find_row(&mapping, pc.wrapping_sub(mapping.bias)).unwrap_or_default())
        }
        Some(_) => pack_row(&UnwindRow::default()),
        None => return NO_MAPPING,
    };
    if let Some(entry) = ROW_CACHE.get_ptr_mut(row_cache_slot(pc)) {
        // SAFETY: pointer from a successful per-CPU array lookup, valid for the program run.
        unsafe {
            (*entry).pc = pc;
            (*entry).row = packed;
            (*entry).check = row_check(pc, packed, header);
        }
    }
    packed
}

/// Index 0: the address of the kernel's uretprobe trampoline in the target (the start of its
/// `[uprobes]` mapping), 0 until it exists. Written by user space.
#[map(name = "TRAMPOLINE")]
static TRAMPOLINE: Array<u64> = Array::with_max_entries(1, 0);

/// Bytes of stack copied at the start of a walk (a power of two).
const COPY_BYTES: usize = 4096;
/// The same in words.
const COPY_WORDS: usize = COPY_BYTES / 8;
/// Reads tried per walk, each a quarter of the one before, when the stack ends less than
/// [`COPY_BYTES`] above the stack pointer.
const COPY_ATTEMPTS: u32 = 3;
/// Smallest copy worth making (two frames of the smallest kind).
const MIN_COPY_BYTES: u64 = 32;

/// A thread's copy of the top of its stack.
#[repr(C)]
pub(crate) struct StackCopy {
    /// The address of `words`, stored as a number: read back, it is a plain scalar to the
    /// verifier (see `read_pair`).
    address: u64,
    /// An address the stack ends below (a copy reaching it failed); 0: none known yet.
    limit: u64,
    /// The copied stack.
    /// One word more than is ever copied, so that the frame-pointer walk's two reads from a
    /// masked index are in bounds to every verifier (6.1's does not narrow a bound by `!=`).
    words: [u64; COPY_WORDS + 1],
}

/// Frames [`RowMemo`] keeps (a power of two: every slot a walk fills).
const MEMO_FRAMES: usize = 128;

/// The rows this thread's walks used, by frame index: the key (the looked-up pc, tagged with
/// the mappings' header by [`memo_tag`]) and the packed row.
///
/// A service allocates from the same call paths over and over, so the frame at index k is
/// most often the one the last walk met there. Its row is then read from a place that does not
/// depend on the pc, and the processor follows the walk from frame to frame as it follows frame
/// pointers (the pc is compared after the fact, the branch predicted), instead of waiting at
/// every frame for the pc to be hashed and the row cache read. Only this thread's programs
/// write it, and they never run at once, so an entry is never torn.
#[repr(C)]
pub(crate) struct RowMemo {
    /// [`memo_tag`] xor the pc looked up at each frame index (0: none; a tag has bit 63 set).
    keys: [u64; MEMO_FRAMES],
    /// The packed rows ([`pack_row`]).
    rows: [u64; MEMO_FRAMES],
}

/// A thread's task-local storage: its stack copy and its row memo.
#[repr(C)]
pub(crate) struct ThreadScratch {
    /// The copy of the top of its stack.
    copy: StackCopy,
    /// The rows its last walks used.
    memo: RowMemo,
}

/// What [`RowMemo`]'s keys are tagged with under the mappings' `header`: bit 63 set (no user
/// pc has it, so a zeroed entry never matches), and the header mixed in (an entry from before
/// the mappings changed does not match).
#[inline(always)]
fn memo_tag(header: u32) -> u64 {
    u64::from(header).wrapping_mul(0xc2b2_ae3d_27d4_eb4f) | (1 << 63)
}

/// A task-local storage map definition in the BTF layout the loader reads (aya-ebpf 0.2 has no
/// task storage type). The fields are never read: their types carry the map's parameters.
#[repr(C)]
pub(crate) struct TaskStorage {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const ThreadScratch,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are null placeholders describing the map to the loader; nothing reads or
// writes them, so sharing the static is harmless.
unsafe impl Sync for TaskStorage {}

/// Each thread's stack copy and row memo: allocated by the kernel on a thread's first walk,
/// freed with the thread (or the map), so no memory is reserved for threads that never allocate.
#[btf_map]
static STACK_COPY: TaskStorage = TaskStorage {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    max_entries: core::ptr::null(),
    map_flags: core::ptr::null(),
};

/// Byte offsets of `task_struct.utask`, `uprobe_task.return_instances`, and
/// `return_instance.{stack, orig_ret_vaddr, next}` from the kernel's BTF; all 0 when unknown.
#[unsafe(no_mangle)]
static RI_OFFSETS: [u32; 5] = [0; 5];

/// Whether the walks can read the return addresses the kernel's return probes swapped out from
/// the kernel's own list (its BTF gave the layout): the allocating calls' entries then need not
/// save theirs.
#[inline(always)]
pub(crate) fn kernel_return_addresses_known() -> bool {
    // SAFETY: reading a global set before load.
    unsafe { core::ptr::read_volatile(&raw const RI_OFFSETS[0]) != 0 }
}

/// The kernel's uretprobe trampoline in the target, 0 until user space has seen it.
#[inline(always)]
pub(crate) fn trampoline() -> u64 {
    TRAMPOLINE.get(0).copied().unwrap_or(0)
}

/// Most pending return instances looked through per frame.
const MAX_RETURN_INSTANCES: u32 = 16;

/// Binary-search steps over one binary's rows (2^24 rows at most).
const ROW_SEARCH_STEPS: u32 = 24;
/// Binary-search steps over the mappings (2^9 > `MAX_MAPPINGS`).
const MAPPING_SEARCH_STEPS: u32 = 9;
/// Halvings per call of a search's `bpf_loop` callback: fewer calls, and few enough branches
/// that the verifier still checks a call quickly.
const SEARCH_STEPS_PER_CALL: u32 = 4;

/// A table walk in progress: the current frame and what the steps share. Everything here is
/// plain numbers, so the global [`leaktrace_unwind_frames`] can take it by pointer.
#[repr(C)]
struct Walk {
    rip: u64,
    rsp: u64,
    rbp: u64,
    /// 1 when `rip` is exact (first frame, or after a signal frame), not a return address.
    exact: u32,
    /// 1 to allow frame-pointer steps where no CFI covers the pc.
    fp_fallback: u32,
    /// Stack flags collected (truncated, incomplete).
    flags: u32,
    /// 0 once a frame's rbp rule could not be followed: rbp no longer holds the caller's value.
    rbp_known: u32,
    /// The kernel's uretprobe trampoline in the target (0: not known yet), read once per walk.
    trampoline: u64,
    /// Where the thread's stack copy holds its words (0: no copy), the stack address of the
    /// first word, and the bytes copied.
    copy_address: u64,
    /// See `copy_address`.
    copy_base: u64,
    /// See `copy_address`.
    copy_len: u64,
    /// Set by a step whose return address (now `rip`) may be one a return probe swapped for
    /// the trampoline: the stack slot it was read from; 0 otherwise.
    ra_slot: u64,
    /// Frames written so far.
    len: u32,
    /// Explicit padding.
    _pad: u32,
}

/// What the `bpf_loop` callback [`step`] gets: the walk, and the thread state its frames go to.
#[repr(C)]
struct WalkRun {
    /// This thread's state, whose `stack.ips` the walk fills.
    state: *mut ThreadState,
    /// This thread's stack copy and row memo (null: none), for [`leaktrace_unwind_frames`].
    scratch: *mut ThreadScratch,
    /// The walk itself.
    walk: Walk,
}

/// The word of target memory at `addr`, read directly (for the rarer reads: signal frames, an
/// rbp saved elsewhere than right below the return address).
#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    // SAFETY: the helper reads target memory and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Two consecutive words of target stack memory at `addr`: from the thread's copy when it
/// holds them, else in one read of target memory.
///
/// `copy` (given where [`leaktrace_unwind_frames`] is verified on its own) is read in place, two
/// loads. Without it the copy is read with `bpf_probe_read_kernel` from its address kept as a
/// plain number (`StackCopy::address`), not indexed as a map value: verified in the `bpf_loop`
/// body, an index would tie its bounds to the stack pointer the walk carries, and the verifier
/// could then never merge the states of successive frames. The check here keeps the read
/// inside the copy.
#[inline(always)]
fn read_pair(walk: &Walk, copy: Option<&StackCopy>, addr: u64) -> Option<[u64; 2]> {
    if walk.copy_address != 0 {
        let offset = addr.wrapping_sub(walk.copy_base);
        if addr >= walk.copy_base && offset + 16 <= walk.copy_len {
            if let Some(copy) = copy
                && offset.is_multiple_of(8)
            {
                // In place, as the frame-pointer walk reads it: masked as well as checked, with
                // a word to spare for the second read.
                let index = (offset / 8) as usize & (COPY_WORDS - 1);
                return Some([copy.words[index], copy.words[index + 1]]);
            }
            // SAFETY: the source lies inside the copy's words (checked above); the helper
            // copies 16 bytes of kernel memory and fails instead of faulting.
            return unsafe {
                bpf_probe_read_kernel((walk.copy_address + offset) as *const [u64; 2])
            }
            .ok();
        }
    }
    // SAFETY: the helper reads target memory and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const [u64; 2]) }.ok()
}

/// Copies the top of this thread's stack, from `rsp` up, into its `STACK_COPY`. Returns where
/// the copied words are, as a number (see `read_pair`), and how many bytes were copied; `(0, 0)`
/// when there is no copy.
#[inline(always)]
fn copy_stack(rsp: u64) -> (*mut ThreadScratch, u64, u64) {
    let Some(scratch) = thread_scratch() else {
        return (core::ptr::null_mut(), 0, 0);
    };
    // SAFETY: `scratch` is this task's storage value; its field's address is taken in place.
    let copy = unsafe { &raw mut (*scratch).copy };
    // SAFETY: `copy` is this task's storage value; the helper writes at most the sizes passed,
    // which fit `words`, and fails (zeroing the destination) instead of faulting.
    unsafe {
        (*copy).address = (*copy).words.as_ptr() as u64;
        let dst = (*copy).words.as_mut_ptr().cast();
        // Near the top of a stack a full copy would run off its end, and a failed read costs a
        // fault: copy no further than the thread's learned limit, and lower the limit on
        // every failure (the end lies below any read that failed).
        let limit = (*copy).limit;
        let mut copied = 0;
        let mut size = COPY_BYTES as u64;
        if limit > rsp && limit - rsp < size {
            size = (limit - rsp) & !7;
        }
        for _ in 0..COPY_ATTEMPTS {
            if size < MIN_COPY_BYTES {
                break;
            }
            if raw_probe_read_user(dst, size as u32, rsp as *const c_void) == 0 {
                copied = size;
                break;
            }
            (*copy).limit = rsp + size;
            size = (size / 4) & !7;
        }
        (
            scratch,
            core::ptr::read_volatile(&raw const (*copy).address),
            copied,
        )
    }
}

/// This task's `STACK_COPY` value, created on first use (`None`: the kernel could not).
#[inline(always)]
fn thread_scratch() -> Option<*mut ThreadScratch> {
    // SAFETY: the helper returns the current task as a pointer the verifier trusts; task
    // storage gets (or creates, zeroed) this task's value, or returns null.
    let copy = unsafe {
        bpf_task_storage_get(
            (&raw const STACK_COPY).cast_mut().cast(),
            bpf_get_current_task_btf().cast(),
            core::ptr::null_mut(),
            u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<ThreadScratch>();
    (!copy.is_null()).then_some(copy)
}

/// Copies the top of this thread's stack, from `rsp` up, into `copy`; returns the bytes copied
/// (0: none).
#[inline(always)]
fn fill_copy(copy: *mut StackCopy, rsp: u64) -> u64 {
    // SAFETY: `copy` is this task's storage value; the helper writes at most the sizes passed,
    // which fit `words`, and fails (zeroing the destination) instead of faulting.
    unsafe {
        let dst = (*copy).words.as_mut_ptr().cast();
        // Near the top of a stack a full copy would run off its end, and a failed read costs a
        // fault: copy no further than the thread's learned limit, and lower the limit on
        // every failure (the end lies below any read that failed).
        let limit = (*copy).limit;
        let mut size = COPY_BYTES as u64;
        if limit > rsp && limit - rsp < size {
            size = (limit - rsp) & !7;
        }
        for _ in 0..COPY_ATTEMPTS {
            if size < MIN_COPY_BYTES {
                break;
            }
            if raw_probe_read_user(dst, size as u32, rsp as *const c_void) == 0 {
                return size;
            }
            (*copy).limit = rsp + size;
            size = (size / 4) & !7;
        }
        0
    }
}

/// A binary search in progress: the half-open range `[lo, hi)` of indexes still possible.
#[repr(C)]
struct Search {
    lo: u32,
    hi: u32,
    /// What is looked for: a pc in the mappings, or an ELF pc among one binary's rows.
    pc: u64,
}

/// [`SEARCH_STEPS_PER_CALL`] steps of the search for the mapping holding `pc`: 1 when it is
/// found (`lo` is its index) or cannot be (`lo >= hi`).
///
/// Each binary search runs under `bpf_loop`, like the walk's steps: the verifier checks a call
/// once and lets `lo` and `hi` range freely, where a plain loop over every step was followed
/// iteration by iteration, each branch a state of its own, for every frame of the walk, and
/// went over the verifier's budget. (`alloc_exit` now verifies in about 250k instructions of
/// the 1M allowed: reported as `verified_insns` by `bpftool prog show`.)
#[inline(never)]
unsafe extern "C" fn mapping_search_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Search` on `find_mapping`'s stack, passed through `bpf_loop`.
    let search = unsafe { &mut *ctx.cast::<Search>() };
    for _ in 0..SEARCH_STEPS_PER_CALL {
        if search.lo >= search.hi {
            return 1;
        }
        let mid = search.lo + (search.hi - search.lo) / 2;
        let Some(mapping) = MAPPINGS.get(mid) else {
            search.hi = search.lo;
            return 1;
        };
        if search.pc < mapping.start {
            search.hi = mid;
        } else if search.pc >= mapping.end {
            search.lo = mid + 1;
        } else {
            search.lo = mid;
            return 1;
        }
    }
    0
}

#[inline(always)]
fn find_mapping(pc: u64, header: u32) -> Option<ExecMapping> {
    let base = ((header >> 16) & 1) * MAX_MAPPINGS;
    let mut search = Search {
        lo: base,
        hi: base + (header & 0xffff).min(MAX_MAPPINGS),
        pc,
    };
    // SAFETY: `mapping_search_step` is a BPF subprogram with the callback signature bpf_loop
    // expects, and `search` outlives the call.
    unsafe {
        bpf_loop(
            MAPPING_SEARCH_STEPS.div_ceil(SEARCH_STEPS_PER_CALL),
            mapping_search_step as *mut c_void,
            (&raw mut search).cast(),
            0,
        );
    }
    let mapping = *MAPPINGS.get(search.lo)?;
    (search.lo < search.hi && pc >= mapping.start && pc < mapping.end).then_some(mapping)
}

/// [`SEARCH_STEPS_PER_CALL`] steps of the search for the last row at or before `pc`: 1 once
/// `lo >= hi`, when `lo` is one past that row.
#[inline(never)]
unsafe extern "C" fn row_search_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Search` on `find_row`'s stack, passed through `bpf_loop`.
    let search = unsafe { &mut *ctx.cast::<Search>() };
    for _ in 0..SEARCH_STEPS_PER_CALL {
        if search.lo >= search.hi {
            return 1;
        }
        let mid = search.lo + (search.hi - search.lo) / 2;
        let Some(row) = UNWIND_ROWS.get(mid) else {
            search.hi = search.lo;
            return 1;
        };
        if u64::from(row.pc) <= search.pc {
            search.lo = mid + 1;
        } else {
            search.hi = mid;
        }
    }
    0
}

/// The last row of `mapping`'s binary at or before `elf_pc`.
#[inline(always)]
fn find_row(mapping: &ExecMapping, elf_pc: u64) -> Option<UnwindRow> {
    let first = mapping.rows_start;
    let mut search = Search {
        lo: first,
        hi: first.saturating_add(mapping.rows_len),
        pc: elf_pc,
    };
    // SAFETY: as in `find_mapping`.
    unsafe {
        bpf_loop(
            ROW_SEARCH_STEPS.div_ceil(SEARCH_STEPS_PER_CALL),
            row_search_step as *mut c_void,
            (&raw mut search).cast(),
            0,
        );
    }
    if search.lo == first || search.lo < search.hi {
        return None;
    }
    UNWIND_ROWS.get(search.lo - 1).copied()
}

/// Replaces a return address the kernel swapped for its uretprobe trampoline: pending traced
/// calls saved the real one, with the stack slot it sits in, at their entry.
#[inline(always)]
fn real_return_address(state: &ThreadState, slot: u64, ra: u64) -> u64 {
    for i in 0..PENDING_SLOTS {
        let pending = &state.pending[i];
        if pending.active != 0 && pending.sp == slot {
            return pending.ret_addr;
        }
    }
    ra
}

#[inline(always)]
fn read_kernel(addr: u64) -> Option<u64> {
    // SAFETY: the helper reads kernel memory and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

/// [`kernel_return_address`] as a global function for the table walk's step (0: not found),
/// verified once on its own like [`leaktrace_unwind_frames`]: its loop over the kernel's list is
/// then not followed again for every state of the step.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn leaktrace_kernel_return_address(slot: u64) -> u64 {
    kernel_return_address(slot).unwrap_or(0)
}

/// The original return address for a stack slot another tool's return probe hijacked: the
/// kernel keeps it in the thread's list of pending return instances, which this walks as the
/// kernel's own frame-pointer unwinder does (`fixup_uretprobe_trampoline_entries`).
#[inline(always)]
fn kernel_return_address(slot: u64) -> Option<u64> {
    // SAFETY: reading a global set before load.
    let offsets = unsafe { core::ptr::read_volatile(&raw const RI_OFFSETS) };
    if offsets[0] == 0 {
        return None;
    }
    // SAFETY: a helper with no arguments.
    let task = unsafe { bpf_get_current_task() };
    let utask = read_kernel(task + u64::from(offsets[0]))?;
    if utask == 0 {
        return None;
    }
    let mut ri = read_kernel(utask + u64::from(offsets[1]))?;
    for _ in 0..MAX_RETURN_INSTANCES {
        if ri == 0 {
            return None;
        }
        if read_kernel(ri + u64::from(offsets[2]))? == slot {
            return read_kernel(ri + u64::from(offsets[3]));
        }
        ri = read_kernel(ri + u64::from(offsets[4]))?;
    }
    None
}

/// Stops the walk as incomplete, counting why.
#[inline(always)]
fn fail(walk: &mut Walk, why: Counter) -> i64 {
    walk.flags |= u32::from(flags::STACK_INCOMPLETE);
    count(why);
    1
}

/// Frames per call of [`leaktrace_unwind_frames`] where it is global: the `bpf_loop` callback
/// and the call cost about 20 ns each, and a function of 32 frames still verifies quickly on its
/// own (about 46 ms for `alloc_exit`, as 16 did before the row memo).
const FRAMES_PER_CALL: u32 = 32;

/// What [`leaktrace_unwind_frames`] returns when the callback is to write the frame it reached
/// (not written, `walk.len` not moved): one whose return address a return probe may have
/// swapped (`walk.ra_slot`), or every frame where the function is static.
const WRITE_FRAME: i64 = 2;

/// Some frames: from the current frame's registers to its callers', written to the thread's
/// stack. Returns 1 to stop.
///
/// The frames are computed and written by [`leaktrace_unwind_frames`], a global function the
/// kernel verifies once on its own; this callback only finds the real return address where a
/// return probe may have swapped it. A callback is verified in the walk's context, state after
/// state: kept this small, it verifies in little time.
#[inline(never)]
unsafe extern "C" fn step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `WalkRun` on `unwind`'s stack, passed through `bpf_loop`.
    let run = unsafe { &mut *ctx.cast::<WalkRun>() };
    // Where the function is static (verified here, in the walk's context), a frame per step:
    // the slot it fills is the step's index, a range to the verifier, where the count the walk
    // keeps would be exact and set every step apart. Frame 0 is written before the loop.
    let slot = if static_functions() {
        index.wrapping_add(1)
    } else {
        u64::from(run.walk.len)
    };
    if slot >= MAX_FRAMES as u64 {
        run.walk.flags |= u32::from(flags::STACK_TRUNCATED);
        count(Counter::StackTruncated);
        return 1;
    }
    // SAFETY: `run.state` is this thread's map value, valid for the program run.
    let stack = unsafe { &raw mut (*run.state).stack };
    match leaktrace_unwind_frames(&raw mut run.walk, stack, run.scratch) {
        0 => return 0,
        WRITE_FRAME => {}
        _ => return 1,
    }
    // The global function may have moved on: the count it keeps says where.
    let slot = if static_functions() {
        slot as usize
    } else {
        run.walk.len as usize
    };
    if slot >= MAX_FRAMES {
        return 1;
    }
    let ra_slot = run.walk.ra_slot;
    if ra_slot != 0 {
        // Possibly a return address swapped for the trampoline by a return probe.
        // SAFETY: `run.state` is this thread's map value, valid for the program run.
        let mut ra = real_return_address(unsafe { &*run.state }, ra_slot, run.walk.rip);
        if run.walk.trampoline != 0 && ra == run.walk.trampoline {
            match leaktrace_kernel_return_address(ra_slot) {
                0 => return fail(&mut run.walk, Counter::UnwindUnsupported),
                original => ra = original,
            }
        }
        run.walk.rip = ra;
    }
    // SAFETY: `run.state` is this thread's map value; `slot < MAX_FRAMES` (checked above).
    unsafe { (*run.state).stack.ips[slot] = run.walk.rip };
    run.walk.len = slot as u32 + 1;
    0
}

/// Frames of the table walk, into `stack.ips` from slot `walk.len`: each moves `walk` from the
/// current frame to its caller's. Returns 0 to go on, 1 to stop (the stack is complete, or the
/// walk failed: flagged and counted), [`WRITE_FRAME`] for a frame the caller writes.
///
/// A global function (BTF linkage global, kept by its unmangled name, taking only pointers to
/// plain numbers): the kernel verifies it once on its own, and the callback's call of it as a
/// call that may change `*walk` and `*stack` in any way. Row lookups (the per-CPU cache, the
/// binary searches) and every rule are then out of the callback's verification, which follows
/// the walk state after state. Kernels 6.10 to 6.14 refuse global calls while preemption is
/// disabled: user space then loads the programs with this function static (see
/// `probe::object`), and it takes one frame per call, which the callback writes.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn leaktrace_unwind_frames(
    walk: *mut Walk,
    stack: *mut StackTrace,
    scratch: *mut ThreadScratch,
) -> i64 {
    // SAFETY: the kernel checks every caller passes memory of the pointees' sizes, or null;
    // null is refused here, as it demands.
    let (Some(walk), Some(stack)) = (unsafe { walk.as_mut() }, unsafe { stack.as_mut() }) else {
        return 1;
    };
    if static_functions() {
        // Verified in every state of the walk, where reading the copy in place went over the
        // verifier's budget: the helper reads it there.
        walk.ra_slot = 0;
        return match unwind_frame(walk, None, None, 0, mapping_header()) {
            0 => WRITE_FRAME,
            _ => 1,
        };
    }
    // Checked once here: a pointer that may be null in every frame would double the paths the
    // verifier follows. Null only where the kernel could not allocate this thread's storage:
    // the stack then ends at the first frame, flagged and counted.
    // SAFETY: as for `walk` (null: none).
    let Some(scratch) = (unsafe { scratch.as_mut() }) else {
        return fail(walk, Counter::UnwindReadFailed);
    };
    let header = mapping_header();
    for _ in 0..FRAMES_PER_CALL {
        // Read afresh each frame: as a count the loop moves, the compiler would index `ips`
        // with a pointer it steps, whose bounds the verifier cannot follow.
        // SAFETY: reading a field of `walk`.
        let slot = unsafe { core::ptr::read_volatile(&raw const walk.len) } as usize;
        if slot >= MAX_FRAMES {
            walk.flags |= u32::from(flags::STACK_TRUNCATED);
            count(Counter::StackTruncated);
            return 1;
        }
        walk.ra_slot = 0;
        let ThreadScratch { copy, memo } = &mut *scratch;
        if unwind_frame(walk, Some(copy), Some(memo), slot, header) != 0 {
            return 1;
        }
        if walk.ra_slot != 0 {
            return WRITE_FRAME;
        }
        stack.ips[slot] = walk.rip;
        walk.len = slot as u32 + 1;
    }
    0
}

/// One frame of the table walk, the `slot`th: moves `walk` from the current frame to its
/// caller's. Returns 0 to go on, 1 to stop (the stack is complete, or the walk failed: flagged
/// and counted). Sets `walk.ra_slot` where the return address may be one a return probe
/// swapped.
#[inline(always)]
fn unwind_frame(
    walk: &mut Walk,
    copy: Option<&StackCopy>,
    memo: Option<&mut RowMemo>,
    slot: usize,
    header: u32,
) -> i64 {
    let lookup_pc = if walk.exact != 0 {
        walk.rip
    } else {
        walk.rip.wrapping_sub(1)
    };
    let packed = match memo {
        Some(memo) => {
            let index = slot & (MEMO_FRAMES - 1);
            let key = lookup_pc ^ memo_tag(header);
            if memo.keys[index] == key {
                memo.rows[index]
            } else {
                // Not inlined here: one call, and fewer paths for the verifier to follow.
                let packed = leaktrace_find_row(lookup_pc, u64::from(header));
                memo.keys[index] = key;
                memo.rows[index] = packed;
                packed
            }
        }
        None => unwind_row(lookup_pc, header),
    };
    if packed == NO_MAPPING {
        // Code leaktrace has no mapping for yet (a library just loaded): frame pointers, but
        // without a frame chain the stack ends here unexplained.
        if walk.fp_fallback != 0 && walk.rbp != 0 && walk.rbp_known != 0 {
            return frame_pointer_step(walk, copy);
        }
        return fail(walk, Counter::UnwindNoMapping);
    }
    let row = unpack_row(packed);
    let cfa = match row.cfa_type {
        CFA_RSP => walk.rsp.wrapping_add(row.cfa_offset as i64 as u64),
        CFA_RBP if walk.rbp_known != 0 => walk.rbp.wrapping_add(row.cfa_offset as i64 as u64),
        CFA_PLT => {
            // A .plt stub: CFA = rsp + base, plus 8 once past the stub's push; the row carries
            // the base (`cfa_offset`) and the threshold within the 16-byte stub (`rbp_offset`:
            // 11 classic, 9 with endbr64).
            let extra = if (walk.rip & 15) as i64 >= i64::from(row.rbp_offset) {
                8
            } else {
                0
            };
            walk.rsp.wrapping_add(row.cfa_offset as i64 as u64) + extra
        }
        CFA_END => return 1,
        CFA_SIGNAL => {
            let (Some(rip), Some(rsp), Some(rbp)) = (
                read(walk.rsp + SIGNAL_RIP_OFFSET),
                read(walk.rsp + SIGNAL_RSP_OFFSET),
                read(walk.rsp + SIGNAL_RBP_OFFSET),
            ) else {
                return fail(walk, Counter::UnwindReadFailed);
            };
            walk.rbp_known = 1;
            return push(walk, rip, rsp, rbp, true);
        }
        CFA_NONE if walk.fp_fallback != 0 => return frame_pointer_step(walk, copy),
        _ => return fail(walk, Counter::UnwindUnsupported),
    };
    // One read for the return address and the word below it, which is the caller's rbp in
    // every frame-pointer prologue (and some other stack slot, just as readable, elsewhere).
    let pair = row.rbp_type == RBP_AT_CFA && row.rbp_offset == -16;
    let (ra, saved_rbp) = match read_pair(walk, copy, cfa - 16) {
        Some([rbp, ra]) => (ra, rbp),
        None => return fail(walk, Counter::UnwindReadFailed),
    };
    let rbp = match row.rbp_type {
        RBP_SAME => walk.rbp,
        RBP_AT_CFA if pair => saved_rbp,
        RBP_AT_CFA => match read(cfa.wrapping_add(row.rbp_offset as i64 as u64)) {
            Some(rbp) => rbp,
            None => return fail(walk, Counter::UnwindReadFailed),
        },
        // The caller's rbp is unknown from here on.
        _ => {
            walk.rbp_known = 0;
            walk.rbp
        }
    };
    let swapped = walk.trampoline == 0 || ra == walk.trampoline;
    let stop = push(walk, ra, cfa, rbp, false);
    if stop == 0 && swapped {
        walk.ra_slot = cfa - 8;
    }
    stop
}

/// One frame-pointer step, where no CFI covers the pc: the caller's rbp is saved at rbp and the
/// return address right above it.
#[inline(always)]
fn frame_pointer_step(walk: &mut Walk, copy: Option<&StackCopy>) -> i64 {
    if walk.rbp_known == 0 {
        return fail(walk, Counter::UnwindUnsupported);
    }
    if walk.rbp == 0 {
        // The outermost frame clears rbp: a complete stack.
        return 1;
    }
    let Some([rbp, ra]) = read_pair(walk, copy, walk.rbp) else {
        return fail(walk, Counter::UnwindReadFailed);
    };
    let rsp = walk.rbp + 16;
    push(walk, ra, rsp, rbp, false)
}

/// Moves the walk to the caller frame `(rip, rsp, rbp)`. Returns 1 to stop.
#[inline(always)]
fn push(walk: &mut Walk, rip: u64, rsp: u64, rbp: u64, exact: bool) -> i64 {
    if rip == 0 {
        // The outermost frame's caller: a complete stack.
        return 1;
    }
    if !exact && rsp <= walk.rsp {
        // The stack must unwind upwards (signal frames may switch stacks).
        return fail(walk, Counter::UnwindNoProgress);
    }
    walk.rip = rip;
    walk.rsp = rsp;
    walk.rbp = rbp;
    walk.exact = u32::from(exact);
    0
}

/// Unwinds from the registers `(rip, rsp, rbp)` of the allocator's caller (at the return probe)
/// into `state.stack.ips`; returns the number of frames and the stack flags.
#[inline(always)]
pub(crate) fn unwind(
    state: *mut ThreadState,
    rip: u64,
    rsp: u64,
    rbp: u64,
    fp_fallback: bool,
) -> (u32, u16) {
    // SAFETY: `state` is this thread's map value.
    unsafe { (*state).stack.ips[0] = rip };
    let (scratch, copy_address, copy_len) = copy_stack(rsp);
    let mut run = WalkRun {
        state,
        // Not kept where the step is verified in the walk's context (static): a pointer that
        // may be null would split every state of the walk in two, past the verifier's budget.
        scratch: if static_functions() {
            core::ptr::null_mut()
        } else {
            scratch
        },
        walk: Walk {
            rip,
            rsp,
            rbp,
            // At the return probe, rip is where the caller resumes: its state is exact.
            exact: 1,
            fp_fallback: u32::from(fp_fallback),
            flags: 0,
            rbp_known: 1,
            trampoline: TRAMPOLINE.get(0).copied().unwrap_or(0),
            copy_address,
            copy_base: rsp,
            copy_len,
            ra_slot: 0,
            len: 1,
            _pad: 0,
        },
    };
    // SAFETY: `step` is a BPF subprogram with the callback signature bpf_loop expects, and
    // `run` outlives the call.
    unsafe {
        bpf_loop(
            MAX_FRAMES as u32,
            step as *mut c_void,
            (&raw mut run).cast(),
            0,
        );
    }
    (run.walk.len, run.walk.flags as u16)
}

/// A frame-pointer walk in progress. Plain numbers only, so the global [`leaktrace_fp_walk`]
/// can take it by pointer.
#[repr(C)]
struct FpWalk {
    /// The stack address of the copy's first word, and the bytes copied.
    copy_base: u64,
    /// See `copy_base`.
    copy_len: u64,
    /// The kernel's uretprobe trampoline in the target (0: not known yet).
    trampoline: u64,
    /// The current frame's stack pointer and frame pointer.
    rsp: u64,
    /// See `rsp`.
    rbp: u64,
    /// Frames written so far.
    len: u32,
    /// Stack flags collected (truncated, incomplete).
    flags: u32,
}

/// The caller's saved rbp and the return address right above it, at `rbp`: from the copy
/// where it holds them, else read from the target.
#[inline(always)]
fn fp_pair(walk: &FpWalk, copy: Option<&StackCopy>, rbp: u64) -> Option<(u64, u64)> {
    let offset = rbp.wrapping_sub(walk.copy_base);
    if let Some(copy) = copy
        && rbp >= walk.copy_base
        && offset.is_multiple_of(8)
        && offset + 16 <= walk.copy_len
    {
        // Masked as well as checked (a bound older verifiers follow); `words` has a word to
        // spare for the second read.
        let index = (offset / 8) as usize & (COPY_WORDS - 1);
        return Some((copy.words[index], copy.words[index + 1]));
    }
    // SAFETY: the helper reads target memory and fails instead of faulting.
    let [saved_rbp, ra] = unsafe { bpf_probe_read_user(rbp as *const [u64; 2]) }.ok()?;
    Some((saved_rbp, ra))
}

/// One frame of a frame-pointer walk into `stack.ips[slot]`: the caller's rbp is saved at rbp
/// and the return address right above it. Returns 1 to stop.
///
/// Frame pointers alone cannot tell a chain's end from a break: code built without them
/// (glibc's start code) leaves rbp holding anything. As the kernel's own walk does, a chain that
/// leads to unreadable memory or back down the stack ends the stack there, unflagged.
#[inline(always)]
fn fp_frame(
    walk: &mut FpWalk,
    stack: &mut StackTrace,
    copy: Option<&StackCopy>,
    slot: usize,
) -> i64 {
    if walk.rbp == 0 {
        // The outermost frame clears rbp: a complete stack.
        return 1;
    }
    let Some((rbp, mut ra)) = fp_pair(walk, copy, walk.rbp) else {
        return 1;
    };
    let rsp = walk.rbp + 16;
    if rsp <= walk.rsp || ra == 0 {
        return 1;
    }
    if walk.trampoline != 0 && ra == walk.trampoline {
        // A return address swapped for the kernel's trampoline by a return probe (a traced call
        // still in progress further up, or another tool's): the kernel keeps the original.
        match leaktrace_kernel_return_address(walk.rbp + 8) {
            0 => {
                walk.flags |= u32::from(flags::STACK_INCOMPLETE);
                count(Counter::UnwindUnsupported);
                return 1;
            }
            original => ra = original,
        }
    }
    stack.ips[slot] = ra;
    walk.len = slot as u32 + 1;
    walk.rsp = rsp;
    walk.rbp = rbp;
    0
}

/// A frame-pointer walk from `walk`'s frame, into `stack.ips` from slot 1, reading the stack
/// from `copy` (null: no copy) where it holds it.
///
/// A global function with a plain loop, a frame per iteration: the kernel verifies it once on
/// its own, iteration by iteration, where a `bpf_loop` callback per frame cost an indirect call
/// and a return each (15 to 20 ns on these machines) and several frames per callback took
/// Debian's 7.2 minutes to verify under emulation.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn leaktrace_fp_walk(
    walk: *mut FpWalk,
    stack: *mut StackTrace,
    copy: *const StackCopy,
) -> i64 {
    // SAFETY: the kernel checks each caller passes memory of the pointees' sizes, or null;
    // null is refused here, as it demands.
    let (Some(walk), Some(stack)) = (unsafe { walk.as_mut() }, unsafe { stack.as_mut() }) else {
        return 0;
    };
    // SAFETY: as above (a null copy means none).
    let copy = unsafe { copy.as_ref() };
    for slot in 1..MAX_FRAMES {
        if fp_frame(walk, stack, copy, slot) != 0 {
            return 0;
        }
    }
    walk.flags |= u32::from(flags::STACK_TRUNCATED);
    count(Counter::StackTruncated);
    0
}

/// 1 where user space made the global functions static ([`tracer_common::names::GLOBAL_FUNCTIONS`],
/// on kernels that refuse global calls with preemption disabled). Set before load.
#[unsafe(no_mangle)]
static STATIC_FUNCTIONS: u32 = 0;

/// Whether the global functions were made static ([`STATIC_FUNCTIONS`]): the walks then take
/// the shapes that verify in their callers' context.
#[inline(always)]
fn static_functions() -> bool {
    // SAFETY: reading a global set before load.
    unsafe { core::ptr::read_volatile(&raw const STATIC_FUNCTIONS) != 0 }
}

/// A frame-pointer walk as a `bpf_loop` over frames, for where the global functions are
/// static: the plain loop of [`leaktrace_fp_walk`] would then be verified in its caller's
/// context, iteration by iteration, past the verifier's budget.
#[repr(C)]
struct FpLoop {
    walk: FpWalk,
    /// This thread's state, whose `stack.ips` the walk fills.
    state: *mut ThreadState,
    /// This thread's stack copy (null: none).
    copy: *const StackCopy,
}

/// One frame of an [`FpLoop`] (the `bpf_loop` callback). Returns 1 to stop.
#[inline(never)]
unsafe extern "C" fn fp_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `FpLoop` on `unwind_fp`'s stack, passed through `bpf_loop`.
    let run = unsafe { &mut *ctx.cast::<FpLoop>() };
    // Frame 0 is written before the loop; call `index` fills the slot after it.
    let slot = index.wrapping_add(1);
    if slot >= MAX_FRAMES as u64 {
        run.walk.flags |= u32::from(flags::STACK_TRUNCATED);
        count(Counter::StackTruncated);
        return 1;
    }
    // SAFETY: `run.state` is this thread's map value and `run.copy` this task's storage value
    // (or null), both valid for the program run.
    let (stack, copy) = unsafe { (&mut (*run.state).stack, run.copy.as_ref()) };
    fp_frame(&mut run.walk, stack, copy, slot as usize)
}

/// Follows frame pointers from the registers `(rip, rsp, rbp)` of the allocator's caller (at the
/// return probe) into `state.stack.ips`, reading the stack from one copy of its top instead of
/// once per frame as `bpf_get_stack` does; returns the number of frames and the stack flags.
#[inline(always)]
pub(crate) fn unwind_fp(state: *mut ThreadState, rip: u64, rsp: u64, rbp: u64) -> (u32, u16) {
    // SAFETY: `state` is this thread's map value.
    unsafe { (*state).stack.ips[0] = rip };
    let (copy, copy_len) = match thread_scratch() {
        // SAFETY: `scratch` is this task's storage value; its field's address is taken in place.
        Some(scratch) => unsafe {
            let copy = &raw mut (*scratch).copy;
            (copy.cast_const(), fill_copy(copy, rsp))
        },
        None => (core::ptr::null(), 0),
    };
    let mut walk = FpWalk {
        copy_base: rsp,
        copy_len,
        trampoline: TRAMPOLINE.get(0).copied().unwrap_or(0),
        rsp,
        rbp,
        len: 1,
        flags: 0,
    };
    if static_functions() {
        let mut run = FpLoop { walk, state, copy };
        // SAFETY: `fp_step` is a BPF subprogram with the callback signature bpf_loop expects,
        // and `run` outlives the call.
        unsafe {
            bpf_loop(
                MAX_FRAMES as u32,
                fp_step as *mut c_void,
                (&raw mut run).cast(),
                0,
            );
        }
        return (run.walk.len, run.walk.flags as u16);
    }
    // SAFETY: `state` is this thread's map value; `walk` and `copy` (this task's storage value,
    // or null) outlive the call.
    unsafe { leaktrace_fp_walk(&raw mut walk, &raw mut (*state).stack, copy) };
    (walk.len, walk.flags as u16)
}
