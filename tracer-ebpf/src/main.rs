//! leaktrace's eBPF programs, one file each:
//! - [`alloc`]: `alloc_enter` (uprobe) and `alloc_exit` (uretprobe) on every allocating entry
//!   point, or `alloc_session` doing both as a uprobe session (Linux 6.13+), so that when
//!   sampling an unsampled call skips its return trap;
//! - [`free`]: `free_enter` (uprobe) on free;
//! - [`exec`]: `on_exec` (raw tracepoint `sched_process_exec`), the target replacing its image;
//! - [`floor`]: `floor_enter`, an empty uprobe for measuring the cost of the traps alone.
//!
//! What they share is in [`state`] (ring buffer, stack map, per-thread state, counters),
//! [`stack`] (capture and deduplication), [`unwind`] (the `.eh_frame` unwinder) and
//! [`sampling`].
//!
//! Nothing is lost silently: every failure (ring buffer full, stack capture or stack map
//! failure, pending-state overflow) increments a per-CPU counter in `COUNTERS`.
//!
//! Every uprobe program runs its body with preemption disabled ([`preempt`]): since 6.13 the
//! kernel gives them per-CPU private stacks that a preemptible kernel would let two tasks share.
//!
//! # Minimum kernel version
//! Ring buffers need 5.8, attach cookies 5.15, `bpf_loop` 5.17 (`.eh_frame` unwinding only),
//! uprobe sessions 6.13 (optional), the preemption kfuncs 6.10 (left out before); user space
//! probes each at start (`tracer-user/src/probe/features.rs`).
#![no_std]
#![no_main]
#![allow(
    internal_features,
    reason = "the atomic add of `state::FREEING_CALLS`: the BPF target's atomics have no `fetch_add`"
)]
#![feature(core_intrinsics)]

mod alloc;
mod exec;
mod floor;
mod free;
mod preempt;
mod sampling;
mod stack;
mod state;
mod unwind;

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
