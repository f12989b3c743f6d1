//! The allocating calls: `alloc_enter` (uprobe) saves a call's arguments, `alloc_exit`
//! (uretprobe) reads its result, captures the stack and sends the event; `alloc_session` does
//! both as one uprobe session program (Linux 6.13+), so an unsampled call skips its return.
//! The kind of call and the allocator come from the attach cookie, so one program pair covers
//! every entry point of every allocator. A call made from inside another traced call (C++
//! `new` calling `malloc`, `__rust_alloc` calling `_rjem_mallocx`) is left to the outer call:
//! it keeps no pending state, and in a session its return is skipped.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_ANY,
    helpers::{bpf_get_attach_cookie, bpf_get_func_ip, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{AllocKind, Counter, Event, EventOp, PENDING_SLOTS, Pending, cookie, unwind};

use crate::{
    preempt,
    sampling::{SAMPLED, may_release_sampled, requested_bytes, sample_bytes, take_sample},
    stack::{capture_stack, capture_stack_fp, verify_sample},
    state::{
        arg, args, count, current_tid, event_time_ns, freeing_call_returned, freeing_call_started,
        inside_outer_call, now_jiffies, submit, thread_state, unwind_mode,
    },
};

#[uprobe]
pub(crate) fn alloc_enter(ctx: ProbeContext) -> u32 {
    preempt::guarded(ctx.as_ptr(), alloc_enter_body)
}

/// `alloc_enter`'s body, a subprogram run with preemption disabled (see [`preempt`]).
#[inline(never)]
fn alloc_enter_body(ctx: *mut c_void) -> u32 {
    enter(&ProbeContext::new(ctx), false);
    0
}

/// What an entry decided about the call's return.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Return {
    /// The return must be seen.
    Wanted,
    /// Nothing at the return can matter (an unsampled or a nested call): a session may skip
    /// it.
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
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = cookie::kind(cookie);
    if kind >= PENDING_SLOTS {
        return Return::Skippable;
    }
    // malloc's kind reads its size alone (the commonest call: one register read, not four).
    let args = if kind == AllocKind::Malloc as usize
        || kind == AllocKind::Valloc as usize
        || kind == AllocKind::Pvalloc as usize
    {
        [arg(ctx.regs, cookie, 0), 0, 0, 0]
    } else {
        args(ctx.regs, cookie)
    };
    let mapping = is_mapping(kind as u32);
    if kind == AllocKind::Mmap as usize
        && (args[3] & MAP_ANONYMOUS == 0 || args[3] & MAP_SHARED != 0)
    {
        // Only anonymous private memory: a file or shared mapping is not heap.
        return Return::Skippable;
    }
    // Decided before anything else, so an unsampled call in a session costs only this.
    // Mappings are rare and large: every one is followed.
    let mean = sample_bytes();
    let sampled = mean == 0 || mapping || take_sample(requested_bytes(kind as u32, &args), mean);
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
    if inside_outer_call(state, sp) {
        // The outer call accounts for this one (and its pending state, if of the same kind,
        // stays untouched for the outer call's return).
        count(Counter::Nested);
        return Return::Skippable;
    }
    state.outer_sp = sp;
    state.outer_started_jiffies = now_jiffies();
    state.outer_kind = kind as u32;
    if state.pending[kind].active != 0 {
        // A call of the same kind is already pending on this thread: its state is replaced
        // (and, if it can free inside it, this call takes over its count).
        count(Counter::PendingClobbered);
    } else if AllocKind::frees_inside(kind) {
        freeing_call_started();
    }
    // The unwinder needs the real return address of calls still in progress: a return probe
    // swaps it for the kernel's trampoline right after this program runs. Where the walk can
    // read the kernel's own list of swapped addresses, the trampoline is saved instead, which
    // sends the walk there (a walk meets one rarely; a read of target memory here would cost
    // every call). The frame-pointer walk always asks the kernel.
    let mode = unwind_mode();
    let ret_addr = if mode == unwind::MODE_AUTO || mode == unwind::MODE_TABLES {
        let trampoline = if crate::unwind::kernel_return_addresses_known() {
            crate::unwind::trampoline()
        } else {
            0
        };
        if trampoline != 0 {
            trampoline
        } else {
            // SAFETY: the helper reads target memory and fails instead of faulting.
            unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
        }
    } else {
        0
    };
    let slot = &mut state.pending[kind];
    *slot = Pending {
        args,
        sp,
        ret_addr,
        active: 1,
        sampled: u32::from(sampled),
    };
    Return::Wanted
}

/// `mmap` flags: shared (not private) memory.
const MAP_SHARED: u64 = 0x01;
/// `mmap` flags: anonymous (not file-backed) memory.
const MAP_ANONYMOUS: u64 = 0x20;
/// What `mmap` and `mremap` return on failure.
const MAP_FAILED: u64 = u64::MAX;

/// Whether `kind` maps or unmaps memory rather than allocating from a heap.
#[inline(always)]
fn is_mapping(kind: u32) -> bool {
    kind == AllocKind::Mmap as u32
        || kind == AllocKind::Munmap as u32
        || kind == AllocKind::Mremap as u32
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
pub(crate) fn mul(a: u64, b: u64) -> Option<u64> {
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
fn outcome(kind: u32, args: &[u64; 4], ret: u64) -> Option<Outcome> {
    if kind == AllocKind::Malloc as u32
        || kind == AllocKind::Valloc as u32
        || kind == AllocKind::Pvalloc as u32
    {
        alloc(ret, args[0])
    } else if kind == AllocKind::Calloc as u32 {
        alloc(ret, mul(args[0], args[1])?)
    } else if kind == AllocKind::AlignedAlloc as u32 || kind == AllocKind::Memalign as u32 {
        alloc(ret, args[1])
    } else if kind == AllocKind::Realloc as u32
        || kind == AllocKind::ReallocArray as u32
        || kind == AllocKind::RustRealloc as u32
    {
        let old = args[0];
        let size = if kind == AllocKind::Realloc as u32 {
            args[1]
        } else if kind == AllocKind::RustRealloc as u32 {
            // `__rust_realloc(ptr, old_size, align, new_size)` never frees on size 0.
            if ret == 0 {
                return None;
            }
            args[3]
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
    } else if kind == AllocKind::Xallocx as u32 {
        // `xallocx(ptr, size, extra, flags)` resizes in place and returns the usable size,
        // which is below `size` when it could not; the block is then as it was.
        let (ptr, size, extra) = (args[0], args[1], args[2]);
        if ptr == 0 || ret < size {
            return None;
        }
        let wanted = size.saturating_add(extra);
        Some(Outcome {
            op: EventOp::Alloc,
            addr: ptr,
            old_addr: ptr,
            size: if ret < wanted { ret } else { wanted },
        })
    } else if kind == AllocKind::Mmap as u32 {
        (ret != MAP_FAILED && ret != 0).then_some(Outcome {
            op: EventOp::Map,
            addr: ret,
            old_addr: 0,
            size: args[1],
        })
    } else if kind == AllocKind::Munmap as u32 {
        (ret as u32 == 0).then_some(Outcome {
            op: EventOp::Unmap,
            addr: args[0],
            old_addr: 0,
            size: args[1],
        })
    } else if kind == AllocKind::Mremap as u32 {
        // The old length travels in the stack id's place (see `EventOp::Remap`).
        (ret != MAP_FAILED).then_some(Outcome {
            op: EventOp::Remap,
            addr: ret,
            old_addr: args[0],
            size: args[2],
        })
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

#[uretprobe]
pub(crate) fn alloc_exit(ctx: RetProbeContext) -> u32 {
    preempt::guarded(ctx.as_ptr(), alloc_exit_body)
}

/// `alloc_exit`'s body, a subprogram run with preemption disabled (see [`preempt`]).
#[inline(never)]
fn alloc_exit_body(ctx: *mut c_void) -> u32 {
    leave::<false>(&RetProbeContext::new(ctx));
    0
}

/// `alloc_exit` for `--unwind fp` where the kernel has `bpf_loop`: frame pointers followed
/// through one copy of the stack ([`capture_stack_fp`]), not the kernel's read per frame. A
/// program of its own, so neither its walk nor the unwinder's is in the other's verification.
#[uretprobe]
pub(crate) fn alloc_exit_fp(ctx: RetProbeContext) -> u32 {
    preempt::guarded(ctx.as_ptr(), alloc_exit_fp_body)
}

/// `alloc_exit_fp`'s body, a subprogram run with preemption disabled (see [`preempt`]).
#[inline(never)]
fn alloc_exit_fp_body(ctx: *mut c_void) -> u32 {
    leave::<true>(&RetProbeContext::new(ctx));
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
pub(crate) fn alloc_session(ctx: *mut c_void) -> u32 {
    preempt::guarded(ctx, alloc_session_body)
}

/// `alloc_session`'s body, a subprogram run with preemption disabled (see [`preempt`]).
#[inline(never)]
fn alloc_session_body(ctx: *mut c_void) -> u32 {
    session::<false>(ctx)
}

/// [`alloc_session`] with the frame-pointer walk of [`alloc_exit_fp`].
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub(crate) fn alloc_sess_fp(ctx: *mut c_void) -> u32 {
    preempt::guarded(ctx, alloc_sess_fp_body)
}

/// `alloc_sess_fp`'s body, a subprogram run with preemption disabled (see [`preempt`]).
#[inline(never)]
fn alloc_sess_fp_body(ctx: *mut c_void) -> u32 {
    session::<true>(ctx)
}

/// A session program's entry or return; `FP_WALK` as in [`leave`].
#[inline(always)]
fn session<const FP_WALK: bool>(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
    let ip = unsafe { (*ctx.regs).rip };
    // SAFETY: a helper reading the probed address from this program's run context. At the
    // entry the instruction pointer is that address; at the return it is the caller's return
    // address, which cannot be a probe site (every site is at or just past a function start).
    let probe_ip = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    if ip != probe_ip {
        leave::<FP_WALK>(&RetProbeContext::new(ctx.as_ptr()));
        return 0;
    }
    match enter(&ctx, true) {
        Return::Wanted => 0,
        Return::Skippable => 1,
    }
}

/// Return of an allocating call: reads the result, captures the stack and sends the event.
/// `FP_WALK`: the stack is taken by the frame-pointer walk ([`capture_stack_fp`]), else as
/// `UNWIND_MODE` says.
#[inline(always)]
fn leave<const FP_WALK: bool>(ctx: &RetProbeContext) {
    // SAFETY: a helper reading this program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = cookie::kind(cookie);
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
    // The call's return address sat at its entry stack pointer, popped by the return.
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
    let entry_sp = unsafe { (*ctx.regs).rsp }.wrapping_sub(8);
    if pending.active == 0 || pending.sp != entry_sp {
        // Not the call whose state is pending: a nested call (counted at its entry) or one
        // that began before the probes were attached.
        if !inside_outer_call(state, entry_sp) {
            count(Counter::PendingMissing);
        }
        return;
    }
    state.pending[kind].active = 0;
    if AllocKind::frees_inside(kind) {
        freeing_call_returned();
    }
    if state.outer_kind == kind as u32 && state.outer_sp == pending.sp {
        state.outer_sp = 0;
    }
    let ret: u64 = ctx.ret();
    let Some(mut outcome) = outcome(kind as u32, &pending.args, ret) else {
        return;
    };
    if sample_bytes() != 0 && !is_mapping(kind as u32) {
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
    let ts_ns = event_time_ns();
    let (stack_id, stack_flags) = match outcome.op {
        EventOp::Alloc | EventOp::Map if FP_WALK => capture_stack_fp(state, ctx),
        EventOp::Alloc | EventOp::Map => capture_stack(ctx, state),
        EventOp::Remap => (pending.args[1], 0),
        _ => (0, 0),
    };
    if !FP_WALK && outcome.op != EventOp::Remap && stack_id != 0 && unwind_mode() != 0 {
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
        flags: stack_flags as u8,
        allocator: cookie::allocator(cookie),
    });
}
