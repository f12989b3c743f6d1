//! Keeping a program's run from being interleaved with another run of it on the same CPU.
//!
//! Since Linux 6.13 the JIT gives a kprobe-type program that uses more than 64 bytes of stack
//! a per-CPU private stack, on the assumption that such programs cannot be preempted. Uprobe
//! programs are kprobe-type but run with only migration disabled, so on a preemptible kernel
//! (`PREEMPT`, `PREEMPT_LAZY`, `PREEMPT_RT`) a second task running the same program on the same
//! CPU overwrites the first one's stack: a general protection fault in the kernel, seen in the
//! unwinder on Debian's 7.2 (`PREEMPT(lazy)`) under the bench. So every uprobe program runs its
//! body (a subprogram of its own, so that nothing is on its stack before the guard is taken)
//! between `bpf_preempt_disable` and `bpf_preempt_enable` (kfuncs, Linux 6.10+).
//!
//! The calls are placeholders ([`tracer_common::preempt`]) that user space rewrites before
//! loading: into kfunc calls where the kernel has them, else into `r0 = 0` (such kernels give
//! no private stacks either).
use tracer_common::preempt::{DISABLE, ENABLE};

/// Calls the placeholder `id`.
#[inline(always)]
fn call(id: i32) {
    // SAFETY: a call to a helper id, as aya-ebpf's helpers are written; user space rewrites
    // this id into a kfunc call taking and returning nothing, or into `r0 = 0`, before loading.
    unsafe {
        let function: unsafe extern "C" fn() -> i64 = core::mem::transmute(id as usize);
        function();
    }
}

/// Runs `body` (an `#[inline(never)]` subprogram taking the program's context) with preemption
/// disabled, returning what it returns.
#[inline(always)]
pub(crate) fn guarded<F>(ctx: *mut core::ffi::c_void, body: F) -> u32
where
    F: FnOnce(*mut core::ffi::c_void) -> u32,
{
    call(DISABLE);
    let ret = body(ctx);
    call(ENABLE);
    ret
}
