//! leaktrace's eBPF programs.
//!
//! Three programs serve every allocator entry point:
//! - `alloc_enter` (uprobe) saves the call's arguments, keyed by thread and kind;
//! - `alloc_exit` (uretprobe) reads the result, captures the user stack, deduplicates it into
//!   `STACKS` and writes one [`Event`] to the `EVENTS` ring buffer;
//! - `free_enter` (uprobe) writes a free event;
//! - `alloc_session` does the work of both `alloc_enter` and `alloc_exit` when attached as a
//!   uprobe session (Linux 6.13+), so that when sampling, an unsampled call skips its return
//!   trap.
//!
//! The kind of call comes from the attach cookie, so one program pair covers malloc, calloc,
//! realloc, reallocarray, posix_memalign, aligned_alloc, memalign, valloc and pvalloc.
//!
//! Nothing is lost silently: every failure (ring buffer full, stack capture or stack map
//! failure, pending-state overflow) increments a per-CPU counter in `COUNTERS`.
//!
//! # Minimum kernel version
//! Ring buffers need 5.8, attach cookies 5.15, uprobe sessions 6.13 (optional); leaktrace is
//! developed on 6.18.
#![no_std]
#![no_main]

use core::ffi::c_void;

mod unwind;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_AVAIL_DATA,
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_func_ip, bpf_get_prandom_u32,
        bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as raw_probe_read_user,
    },
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use tracer_common::{
    AllocKind, Counter, Event, EventOp, MAX_FRAMES, PENDING_SLOTS, Pending, StackTrace,
    ThreadState, VERIFY_STACK_BYTES, VerifyRecord, flags,
};

/// Ring buffer size in bytes; user space overrides it at load (`set_max_entries`).
const DEFAULT_RINGBUF_BYTES: u32 = 16 << 20;
/// A pending outer call older than this is taken as stale (its return was never seen).
const OUTER_STALE_NS: u64 = 1_000_000_000;

/// Bytes of unread data above which a submit wakes the reader; below it the reader is not woken
/// per event and drains the buffer on its own timer. Set by user space before load.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 4 << 20;

/// How stacks are captured: 0 = the kernel's frame-pointer walk, 1 = `.eh_frame` tables with
/// frame pointers where a binary has no tables (auto), 2 = tables only. Set before load.
#[unsafe(no_mangle)]
static UNWIND_MODE: u32 = 0;

/// Check 1 in this many unwound stacks against a user-space unwind (0: never). Set before load.
#[unsafe(no_mangle)]
static VERIFY_EVERY: u32 = 0;

/// Sampled stacks with a copy of their memory, for `--verify-unwind`; sized by user space.
#[map(name = "VERIFY")]
static VERIFY: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Sampling: mean bytes between sampled allocations (0: every allocation). Set before load.
#[unsafe(no_mangle)]
static SAMPLE_BYTES: u64 = 0;

/// Sampling: addresses of the sampled blocks still live, so frees of unsampled blocks are
/// dropped here instead of being sent.
#[map(name = "SAMPLED")]
static SAMPLED: HashMap<u64, u32> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Sampling: bytes still to allocate on this CPU before the next sampled allocation (0: draw a
/// fresh countdown).
#[map(name = "SAMPLE_COUNTDOWN")]
static SAMPLE_COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// Sampling by bytes, as tcmalloc, jemalloc and Go do: a countdown of bytes to the next sample
/// is drawn from an exponential distribution with mean `mean`; a call that reaches it is sampled
/// and draws the next one. Each call of `size` bytes is then sampled with probability
/// `1 - exp(-size / mean)`, whatever came before (the exponential is memoryless), which is what
/// user space divides by. The countdown is per CPU, not per thread, so the decision needs no
/// thread lookup; a program preempted halfway by another on the same CPU can lose one update,
/// which only delays a sample.
#[inline(always)]
fn take_sample(size: u64, mean: u64) -> bool {
    let Some(countdown) = SAMPLE_COUNTDOWN.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: the pointer comes from a successful per-CPU array lookup, so it points at this
    // CPU's slot; uprobe programs run with migration disabled.
    let countdown = unsafe { &mut *countdown };
    let size = size.min(i64::MAX as u64) as i64;
    if *countdown <= 0 {
        *countdown = next_sample_interval(mean).max(1);
    }
    if *countdown > size {
        *countdown -= size;
        false
    } else {
        *countdown = next_sample_interval(mean).max(1);
        true
    }
}

/// Sampling: 256 draws of -ln(u) for u evenly spread over (0, 1), scaled by 2^16, written by user
/// space: `table[random byte] * mean >> 16` is an exponential interval with that mean.
#[map(name = "EXP_TABLE")]
static EXP_TABLE: Array<u32> = Array::with_max_entries(256, 0);

#[inline(always)]
fn sample_bytes() -> u64 {
    // SAFETY: reading a global that user space sets before load.
    unsafe { core::ptr::read_volatile(&raw const SAMPLE_BYTES) }
}

/// An exponentially distributed number of bytes with mean `mean`.
#[inline(always)]
fn next_sample_interval(mean: u64) -> i64 {
    // SAFETY: a helper with no arguments.
    let random = unsafe { bpf_get_prandom_u32() } & 0xff;
    let scaled = EXP_TABLE.get(random).copied().unwrap_or(1 << 16);
    ((u64::from(scaled) * mean) >> 16) as i64
}

/// The bytes a call asks for, from its saved arguments (saturating on overflow).
#[inline(always)]
fn requested_bytes(kind: u32, args: &[u64; 3]) -> u64 {
    if kind == AllocKind::Calloc as u32 {
        mul(args[0], args[1]).unwrap_or(u64::MAX)
    } else if kind == AllocKind::ReallocArray as u32 {
        mul(args[1], args[2]).unwrap_or(u64::MAX)
    } else if kind == AllocKind::Realloc as u32
        || kind == AllocKind::AlignedAlloc as u32
        || kind == AllocKind::Memalign as u32
    {
        args[1]
    } else if kind == AllocKind::PosixMemalign as u32 {
        args[2]
    } else {
        args[0]
    }
}

#[inline(always)]
fn unwind_mode() -> u32 {
    // SAFETY: reading a global that user space sets before load; volatile so the compiler does
    // not fold the default value in.
    unsafe { core::ptr::read_volatile(&raw const UNWIND_MODE) }
}

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Deduplicated stacks, keyed by a 64-bit hash of their frames. Not preallocated: memory grows
/// with the number of distinct stacks, up to the entry limit.
#[map(name = "STACKS")]
static STACKS: HashMap<u64, StackTrace> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Per-thread state: pending calls by kind, the outermost call in progress, and scratch space
/// for stack capture. Keyed by thread, not CPU: a uprobe program can be preempted on a
/// preemptible kernel, and another thread on the same CPU would then overwrite a per-CPU buffer
/// halfway through. LRU, so entries of threads that have exited make room for new ones.
#[map(name = "THREADS")]
static THREADS: LruHashMap<u32, ThreadState> = LruHashMap::with_max_entries(8192, 0);

/// An all-zero state used to create a thread's entry (too large for the BPF stack).
#[map(name = "ZERO_STATE")]
static ZERO_STATE: PerCpuArray<ThreadState> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it points at this
        // CPU's u64 slot; uprobe programs run with migration disabled, so no other CPU touches it.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn current_tid() -> u32 {
    // The low 32 bits are the thread id.
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// This thread's state, created (zeroed) on first use.
#[inline(always)]
fn thread_state(tid: u32, create: bool) -> Option<*mut ThreadState> {
    if let Some(state) = THREADS.get_ptr_mut(tid) {
        return Some(state);
    }
    if !create {
        return None;
    }
    let zero = ZERO_STATE.get_ptr(0)?;
    // SAFETY: pointer from a successful array lookup; the insert copies the value.
    let zero = unsafe { &*zero };
    if THREADS.insert(tid, zero, u64::from(BPF_NOEXIST)).is_err() {
        // Another program of this thread cannot run concurrently, so this is a full map.
        return None;
    }
    THREADS.get_ptr_mut(tid)
}

/// Whether a call at stack pointer `sp` runs inside the thread's outer traced call.
#[inline(always)]
fn inside_outer_call(state: &ThreadState, sp: u64) -> bool {
    // The stack grows down: a call made from inside the outer call has a smaller sp. `<=`: a
    // tail call into another traced function (glibc's reallocarray jumps to realloc) runs at
    // the outer call's own stack pointer.
    state.outer_sp != 0
        && sp <= state.outer_sp
        // The clock is read last: most calls have no outer call in progress.
        && now_ns().wrapping_sub(state.outer_started_ns) < OUTER_STALE_NS
}

#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, false);
    0
}

/// What an entry decided about the call's return.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Return {
    /// The return must be seen.
    Wanted,
    /// Nothing at the return can matter (an unsampled call): a session may skip it.
    Skippable,
}

/// Entry of an allocating call: saves its arguments (and, when sampling, decides whether the
/// call is sampled). `session`: the caller can skip the return, so an unsampled call that
/// cannot release a sampled block leaves no pending state behind.
#[inline(always)]
fn enter(ctx: &ProbeContext, session: bool) -> Return {
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
    let regs = unsafe { &*ctx.regs };
    // SAFETY: a helper reading this program's attach cookie.
    let kind = (unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }) as usize;
    if kind >= PENDING_SLOTS {
        return Return::Skippable;
    }
    let args = [regs.rdi, regs.rsi, regs.rdx];
    // Decided before anything else, so an unsampled call in a session costs only this.
    let mean = sample_bytes();
    let sampled = mean == 0 || take_sample(requested_bytes(kind as u32, &args), mean);
    if session && !sampled && !may_release_sampled(kind as u32, &args) {
        // Neither a new block nor a released one is followed: nothing at the return matters.
        // No outer call is recorded either, so a free the allocator makes inside this call
        // (realloc(p, 0) of an unsampled p) is judged on its own: dropped as unsampled. A call
        // nested in a sampled one needs no record: the outer call accounts for it.
        count(Counter::Unsampled);
        return Return::Skippable;
    }
    let tid = current_tid();
    let Some(state) = thread_state(tid, true) else {
        count(Counter::PendingFull);
        return Return::Skippable;
    };
    // SAFETY: pointer from a successful map lookup; only this thread uses its entry, and a
    // thread runs one probe program at a time.
    let state = unsafe { &mut *state };
    let sp = regs.rsp;
    let nested = inside_outer_call(state, sp);
    if nested {
        count(Counter::Nested);
    } else {
        state.outer_sp = sp;
        state.outer_started_ns = now_ns();
        state.outer_kind = kind as u32;
    }
    if state.pending[kind].active != 0 {
        // A call of the same kind is already pending on this thread: its state is replaced.
        count(Counter::PendingClobbered);
    }
    // The unwinder needs the real return address of calls still in progress: a return probe
    // swaps it for the kernel's trampoline right after this program runs.
    let ret_addr = if unwind_mode() != 0 {
        // SAFETY: the helper reads target memory and fails instead of faulting.
        unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    let slot = &mut state.pending[kind];
    *slot = Pending {
        args,
        sp,
        ret_addr,
        active: 1,
        nested: u32::from(nested),
        sampled: u32::from(sampled),
        _pad: 0,
    };
    Return::Wanted
}

/// Whether a call may release a block the sampler follows: realloc and reallocarray of a
/// sampled pointer, and reallocarray always (its tail call into realloc makes a second,
/// nested decision that must see this one's pending state).
#[inline(always)]
fn may_release_sampled(kind: u32, args: &[u64; 3]) -> bool {
    if kind == AllocKind::ReallocArray as u32 {
        return true;
    }
    kind == AllocKind::Realloc as u32 && args[0] != 0 && SAMPLED.get_ptr(args[0]).is_some()
}

/// What a finished call did to the heap.
struct Outcome {
    op: EventOp,
    addr: u64,
    old_addr: u64,
    size: u64,
}

/// `a * b`, or `None` on overflow (the call then fails with ENOMEM and records nothing).
#[inline(always)]
fn mul(a: u64, b: u64) -> Option<u64> {
    // Done in 32-bit halves: `checked_mul` (and the division check, which LLVM folds back into
    // it) lowers to a 128-bit multiply the BPF backend lacks.
    let (a_hi, a_lo) = (a >> 32, a & 0xffff_ffff);
    let (b_hi, b_lo) = (b >> 32, b & 0xffff_ffff);
    if a_hi != 0 && b_hi != 0 {
        return None;
    }
    let cross = a_hi * b_lo + a_lo * b_hi;
    if cross >> 32 != 0 {
        return None;
    }
    (cross << 32).checked_add(a_lo * b_lo)
}

#[inline(always)]
fn alloc(addr: u64, size: u64) -> Option<Outcome> {
    (addr != 0).then_some(Outcome {
        op: EventOp::Alloc,
        addr,
        old_addr: 0,
        size,
    })
}

#[inline(always)]
fn outcome(kind: u32, args: &[u64; 3], ret: u64) -> Option<Outcome> {
    if kind == AllocKind::Malloc as u32
        || kind == AllocKind::Valloc as u32
        || kind == AllocKind::Pvalloc as u32
    {
        alloc(ret, args[0])
    } else if kind == AllocKind::Calloc as u32 {
        alloc(ret, mul(args[0], args[1])?)
    } else if kind == AllocKind::AlignedAlloc as u32 || kind == AllocKind::Memalign as u32 {
        alloc(ret, args[1])
    } else if kind == AllocKind::Realloc as u32 || kind == AllocKind::ReallocArray as u32 {
        let old = args[0];
        let size = if kind == AllocKind::Realloc as u32 {
            args[1]
        } else {
            mul(args[1], args[2])?
        };
        if ret != 0 {
            // Success: the old block (if any) is released and the new one is live.
            Some(Outcome {
                op: EventOp::Alloc,
                addr: ret,
                old_addr: old,
                size,
            })
        } else if size == 0 && old != 0 {
            // realloc(p, 0) frees p and returns NULL.
            Some(Outcome {
                op: EventOp::Free,
                addr: old,
                old_addr: 0,
                size: 0,
            })
        } else {
            // Failure: p is untouched.
            None
        }
    } else if kind == AllocKind::PosixMemalign as u32 {
        if ret as u32 != 0 {
            return None;
        }
        let out = args[0] as *const u64;
        // SAFETY: reads 8 bytes of the target's memory through the helper, which checks the
        // address and fails instead of faulting.
        let addr = unsafe { bpf_probe_read_user(out) }.ok()?;
        alloc(addr, args[2])
    } else {
        None
    }
}

/// Captures the current user stack into the thread's scratch space, stores it in `STACKS` if
/// new, and returns its id and flags.
#[inline(always)]
fn capture_stack(ctx: &RetProbeContext, state: &mut ThreadState) -> (u64, u16) {
    let mode = unwind_mode();
    if mode != 0 {
        // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
        let regs = unsafe { &*ctx.regs };
        let (len, stack_flags) = unwind::unwind(state, regs.rip, regs.rsp, regs.rbp, mode == 1);
        return store_stack(state, len, stack_flags);
    }
    // SAFETY: the helper writes at most the size we pass, which is the size of `ips`, into this
    // thread's own map value.
    let bytes = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            state.stack.ips.as_mut_ptr().cast(),
            (MAX_FRAMES * 8) as u32,
            u64::from(BPF_F_USER_STACK),
        )
    };
    if bytes <= 0 {
        count(Counter::StackFailed);
        return (0, flags::STACK_FAILED);
    }
    let len = (bytes as u64 / 8) as u32;
    let mut stack_flags = 0u16;
    if len as usize >= MAX_FRAMES {
        stack_flags |= flags::STACK_TRUNCATED;
        count(Counter::StackTruncated);
    }
    store_stack(state, len, stack_flags)
}

/// Deduplicates the first `len` frames of the thread's scratch stack into `STACKS`.
#[inline(always)]
fn store_stack(state: &mut ThreadState, len: u32, stack_flags: u16) -> (u64, u16) {
    // FNV-1a over the frames, with the length and flags folded in so a cut or incomplete stack
    // never aliases a complete one.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(len) ^ (u64::from(stack_flags) << 40);
    for i in 0..MAX_FRAMES {
        if i as u32 >= len {
            break;
        }
        hash = (hash ^ state.stack.ips[i]).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Id 0 means "no stack".
    let id = hash | 1;
    state.stack.len = len;
    state.stack.flags = u32::from(stack_flags);
    if STACKS.get_ptr(id).is_none() {
        // By reference: a 1 KiB value does not fit on the 512-byte BPF stack.
        let stack: &StackTrace = &state.stack;
        let inserted = STACKS.insert(id, stack, u64::from(BPF_NOEXIST));
        if let Err(err) = inserted {
            // -EEXIST: another CPU stored the same stack first, which is fine.
            if err != -17 {
                count(Counter::StackMapFull);
                return (0, stack_flags | flags::STACK_DROPPED);
            }
        }
    }
    (id, stack_flags)
}

/// For `--verify-unwind`: on a sampled event, sends the registers, the kernel's frames and a
/// copy of the stack so user space can unwind the same memory and compare.
#[inline(always)]
fn verify_sample(ctx: &RetProbeContext, state: &ThreadState, stack_id: u64, stack_flags: u16) {
    // SAFETY: reading a global that user space sets before load.
    let every = unsafe { core::ptr::read_volatile(&raw const VERIFY_EVERY) };
    // SAFETY: a helper with no arguments.
    if every == 0 || unsafe { bpf_get_prandom_u32() } % every != 0 {
        return;
    }
    let Some(mut entry) = VERIFY.reserve::<VerifyRecord>(0) else {
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs`; `record` points at a reserved ring
    // buffer entry of `VerifyRecord`'s size, written field by field before it is submitted.
    unsafe {
        let regs = &*ctx.regs;
        (*record).stack_id = stack_id;
        (*record).rip = regs.rip;
        (*record).rsp = regs.rsp;
        (*record).rbp = regs.rbp;
        (*record).len = state.stack.len;
        (*record).flags = u32::from(stack_flags);
        (*record)._pad = 0;
        for i in 0..MAX_FRAMES {
            (*record).ips[i] = state.stack.ips[i];
        }
        // The stack may end less than a full copy above rsp: try smaller copies.
        let dst = (*record).stack.as_mut_ptr().cast();
        let src = regs.rsp as *const c_void;
        let mut copied = 0u32;
        for size in [VERIFY_STACK_BYTES, 8192, 4096, 2048, 1024] {
            if raw_probe_read_user(dst, size as u32, src) == 0 {
                copied = size as u32;
                break;
            }
        }
        (*record).copied = copied;
    }
    entry.submit(0);
}

#[inline(always)]
fn submit(event: Event) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(event);
    // SAFETY: reading a global that user space sets before load; volatile so the compiler does
    // not fold the default value in.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    let wake = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wake));
    count(Counter::Sent);
}

#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    leave(&ctx);
    0
}

/// An allocator call's entry and return in one program, attached as a uprobe session (Linux
/// 6.13+): an entry that returns 1 tells the kernel to skip the return, so an unsampled call
/// costs one trap instead of two.
///
/// Written without `#[uprobe]`, whose wrapper always returns 0: here the return value is the
/// decision. The section name is the one that macro uses, so the object lists it as a uprobe.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_session(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
    let ip = unsafe { (*ctx.regs).rip };
    // SAFETY: a helper reading the probed address from this program's run context. At the
    // entry the instruction pointer is that address; at the return it is the caller's return
    // address, which cannot be a probe site (every site is at or just past a function start).
    let probe_ip = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    if ip != probe_ip {
        leave(&RetProbeContext::new(ctx.as_ptr()));
        return 0;
    }
    match enter(&ctx, true) {
        Return::Wanted => 0,
        Return::Skippable => 1,
    }
}

/// Return of an allocating call: reads the result, captures the stack and sends the event.
#[inline(always)]
fn leave(ctx: &RetProbeContext) {
    // SAFETY: a helper reading this program's attach cookie.
    let kind = (unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }) as usize;
    if kind >= PENDING_SLOTS {
        return;
    }
    let tid = current_tid();
    let Some(state) = thread_state(tid, false) else {
        count(Counter::PendingMissing);
        return;
    };
    // SAFETY: as in `enter`.
    let state = unsafe { &mut *state };
    let pending = state.pending[kind];
    if pending.active == 0 {
        count(Counter::PendingMissing);
        return;
    }
    state.pending[kind].active = 0;
    if pending.nested != 0 {
        return;
    }
    if state.outer_kind == kind as u32 && state.outer_sp == pending.sp {
        state.outer_sp = 0;
    }
    let ret: u64 = ctx.ret();
    let Some(mut outcome) = outcome(kind as u32, &pending.args, ret) else {
        return;
    };
    if sample_bytes() != 0 {
        // Only blocks the sampler chose are followed: a released block (realloc's old one, or
        // realloc(p, 0)) counts only if it was sampled; an unsampled new block is not sent.
        let released = if outcome.op == EventOp::Free {
            outcome.addr
        } else {
            outcome.old_addr
        };
        let released_sampled = released != 0 && SAMPLED.remove(released).is_ok();
        if outcome.op == EventOp::Free {
            if !released_sampled {
                return;
            }
        } else {
            if !released_sampled {
                outcome.old_addr = 0;
            }
            if pending.sampled == 0 {
                count(Counter::Unsampled);
                if !released_sampled {
                    return;
                }
                // Send the release alone.
                outcome = Outcome {
                    op: EventOp::Free,
                    addr: released,
                    old_addr: 0,
                    size: 0,
                };
            } else if SAMPLED
                .insert(outcome.addr, 1u32, u64::from(BPF_ANY))
                .is_err()
            {
                count(Counter::SampleMapFull);
            }
        }
    }
    let ts_ns = now_ns();
    let (stack_id, stack_flags) = if outcome.op == EventOp::Alloc {
        capture_stack(ctx, state)
    } else {
        (0, 0)
    };
    if stack_id != 0 && unwind_mode() != 0 {
        verify_sample(ctx, state, stack_id, stack_flags);
    }
    submit(Event {
        ts_ns,
        addr: outcome.addr,
        old_addr: outcome.old_addr,
        size: outcome.size,
        stack_id,
        tid,
        kind: kind as u8,
        op: outcome.op as u8,
        flags: stack_flags,
    });
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
    let regs = unsafe { &*ctx.regs };
    let addr = regs.rdi;
    if addr == 0 {
        return 0;
    }
    let sampling = sample_bytes() != 0;
    if sampling && SAMPLED.get_ptr(addr).is_none() {
        // Not a sampled block: nothing to report. Checked first, with a lookup (no lock), as
        // this is what most frees meet when sampling.
        return 0;
    }
    let tid = current_tid();
    let inside = match thread_state(tid, false) {
        // SAFETY: as in `enter`; only read here.
        Some(state) => inside_outer_call(unsafe { &*state }, regs.rsp),
        None => false,
    };
    if inside {
        // A free made by the allocator itself (realloc(p, 0) calls free): the outer call's
        // return accounts for it.
        count(Counter::Nested);
        return 0;
    }
    if sampling && SAMPLED.remove(addr).is_err() {
        // Another thread freed it first (a double free in the target).
        return 0;
    }
    submit(Event {
        ts_ns: now_ns(),
        addr,
        old_addr: 0,
        size: 0,
        stack_id: 0,
        tid,
        kind: AllocKind::Free as u8,
        op: EventOp::Free as u8,
        flags: 0,
    });
    0
}

/// The traced process (tgid), for programs that see every process (the exec tracepoint).
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// `sched_process_exec`: when the traced process execs, its old heap is gone; an event tells
/// user space so those blocks stop counting as live.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn on_exec(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: reading a global set before load.
    let target = unsafe { core::ptr::read_volatile(&raw const TARGET_TGID) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if target == 0 || tgid != target {
        return 0;
    }
    submit(Event {
        ts_ns: now_ns(),
        addr: 0,
        old_addr: 0,
        size: 0,
        stack_id: 0,
        tid: tgid,
        kind: AllocKind::Free as u8,
        op: EventOp::Exec as u8,
        flags: 0,
    });
    0
}

/// Does nothing: attached to malloc's and free's probe sites by `--probe-floor`, it measures the
/// cost of the traps alone (the floor any tracer of every call pays).
#[uprobe]
pub fn floor_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: eBPF programs cannot panic at run time; the verifier rejects any path that could
    // reach here, so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
