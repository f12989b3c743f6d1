//! `on_exec` (raw tracepoint): the traced process replaced its image, so its old heap is gone.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use tracer_common::{AllocKind, Event, EventOp};

use crate::state::{now_ns, submit};

/// The traced process (tgid), for programs that see every process (the exec tracepoint).
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;

/// `sched_process_exec`: when the traced process execs, its old heap is gone; an event tells
/// user space so those blocks stop counting as live.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub(crate) fn on_exec(_ctx: RawTracePointContext) -> i32 {
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
        allocator: 0,
    });
    0
}
