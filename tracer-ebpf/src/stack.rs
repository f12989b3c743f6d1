//! Capturing the allocating stack (the kernel's frame-pointer walk, or the `.eh_frame` unwinder),
//! deduplicating it into `STACKS`, and sampling it for `--verify-unwind`.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_prandom_u32, bpf_get_stack, generated::bpf_probe_read_user as raw_probe_read_user,
    },
    macros::map,
    maps::RingBuf,
    programs::RetProbeContext,
};
use tracer_common::{
    Counter, MAX_FRAMES, StackTrace, ThreadState, VERIFY_STACK_BYTES, VerifyRecord, bench_skip,
    flags, unwind as unwind_modes,
};

use crate::{
    state::{STACKS, bench_skips, count, unwind_mode},
    unwind,
};

/// Check 1 in this many unwound stacks against a user-space unwind (0: never). Set before load.
#[unsafe(no_mangle)]
pub(crate) static VERIFY_EVERY: u32 = 0;

/// Sampled stacks with a copy of their memory, for `--verify-unwind`; sized by user space.
#[map(name = "VERIFY")]
pub(crate) static VERIFY: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Captures the current user stack into the thread's scratch space, stores it in `STACKS` if
/// new, and returns its id and flags.
#[inline(always)]
pub(crate) fn capture_stack(ctx: &RetProbeContext, state: &mut ThreadState) -> (u64, u16) {
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
    let regs = unsafe { &*ctx.regs };
    capture_user_stack(ctx.as_ptr(), state, regs.rip, regs.rsp, regs.rbp)
}

/// [`capture_stack`] for the frame-pointer programs: frame pointers followed through one copy
/// of the stack ([`unwind::unwind_fp`]).
#[inline(always)]
pub(crate) fn capture_stack_fp(state: &mut ThreadState, ctx: &RetProbeContext) -> (u64, u16) {
    if bench_skips(bench_skip::CAPTURE) {
        return (0, 0);
    }
    if unwind_mode() != unwind_modes::MODE_FP_WALK {
        // A kernel without `bpf_loop` (before 5.17): the kernel's own frame-pointer walk. The
        // table walk is never in these programs: its global functions call `bpf_loop`, and the
        // kernel verifies a global function even where no call reaches it.
        return kernel_stack(ctx.as_ptr(), state);
    }
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
    let regs = unsafe { &*ctx.regs };
    let (len, stack_flags) = unwind::unwind_fp(state, regs.rip, regs.rsp, regs.rbp);
    store_stack(state, len, stack_flags)
}

/// Like [`capture_stack`] for any program of the current task whose user registers are
/// `(rip, rsp, rbp)` (a system call's tracepoint reads them from the task's saved registers).
#[inline(always)]
pub(crate) fn capture_user_stack(
    ctx: *mut c_void,
    state: &mut ThreadState,
    rip: u64,
    rsp: u64,
    rbp: u64,
) -> (u64, u16) {
    if bench_skips(bench_skip::CAPTURE) {
        return (0, 0);
    }
    let mode = unwind_mode();
    if mode != 0 {
        let (len, stack_flags) = unwind::unwind(state, rip, rsp, rbp, mode == 1);
        return store_stack(state, len, stack_flags);
    }
    kernel_stack(ctx, state)
}

/// The user stack by the kernel's frame-pointer walk (`bpf_get_stack`), stored as
/// [`store_stack`] does.
#[inline(always)]
fn kernel_stack(ctx: *mut c_void, state: &mut ThreadState) -> (u64, u16) {
    // SAFETY: the helper writes at most the size we pass, which is the size of `ips`, into this
    // thread's own map value.
    let bytes = unsafe {
        bpf_get_stack(
            ctx,
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
pub(crate) fn store_stack(state: &mut ThreadState, len: u32, stack_flags: u16) -> (u64, u16) {
    if bench_skips(bench_skip::STORE) {
        return (u64::from(len) | 1, stack_flags);
    }
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
    if id == state.stored_stack {
        // This thread's last stack again (an allocation in a loop): stored, and the map never
        // drops a stack.
        return (id, stack_flags);
    }
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
    state.stored_stack = id;
    (id, stack_flags)
}

/// For `--verify-unwind`: on a sampled event, sends the registers, the kernel's frames and a
/// copy of the stack so user space can unwind the same memory and compare.
#[inline(always)]
pub(crate) fn verify_sample(
    ctx: &RetProbeContext,
    state: &ThreadState,
    stack_id: u64,
    stack_flags: u16,
) {
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
