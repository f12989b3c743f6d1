//! `free_enter` (uprobe): one free event per released block the trace follows.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_attach_cookie, macros::uprobe, programs::ProbeContext,
};
use tracer_common::{AllocKind, Counter, FreeEvent};

use crate::{
    preempt,
    sampling::{SAMPLED, sample_bytes},
    state::{
        arg, count, current_tid, freeing_calls_in_progress, inside_outer_call, submit, thread_state,
    },
};

#[uprobe]
pub(crate) fn free_enter(ctx: ProbeContext) -> u32 {
    preempt::guarded(ctx.as_ptr(), free_body)
}

/// `free_enter`'s body, a subprogram run with preemption disabled (see [`preempt`]).
#[inline(never)]
fn free_body(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    // SAFETY: `ctx.regs` is the kernel-provided `pt_regs` for this probe hit.
    let regs = unsafe { &*ctx.regs };
    // SAFETY: a helper reading this program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let addr = arg(ctx.regs, cookie, 0);
    if addr == 0 {
        return 0;
    }
    let sampling = sample_bytes() != 0;
    if sampling && SAMPLED.get_ptr(addr).is_none() {
        // Not a sampled block: nothing to report. Checked first, with a lookup (no lock), as
        // this is what most frees meet when sampling.
        return 0;
    }
    // Only while some call that can free inside it is in progress can this free be one; the
    // thread's state is looked at only then.
    let inside = freeing_calls_in_progress()
        && match thread_state(current_tid(), false) {
            Some(state) => {
                // SAFETY: as in `enter`; only read here.
                let state = unsafe { &*state };
                AllocKind::frees_inside(state.outer_kind as usize)
                    && inside_outer_call(state, regs.rsp)
            }
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
    // The address alone, no time (see `FreeEvent`).
    submit(FreeEvent { addr });
    0
}
