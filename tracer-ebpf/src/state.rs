//! What every program shares: the event ring buffer, the stack map, per-thread state, the
//! loss counters, and the globals user space sets before load.
use aya_ebpf::{
    bindings::pt_regs,
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_jiffies64},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{Counter, StackTrace, ThreadState, cookie};

/// Ring buffer size in bytes; user space overrides it at load (`set_max_entries`).
const DEFAULT_RINGBUF_BYTES: u32 = 16 << 20;
/// A pending outer call older than this many jiffies is taken as stale (its return was never
/// seen): 1 s at the commonest tick rate (1000 Hz), up to 10 s at 100 Hz.
const OUTER_STALE_JIFFIES: u64 = 1000;

/// Events per CPU between two looks at how full the event buffer is (a power of two).
const QUERY_EVERY: u64 = 8;

/// Bytes of unread data above which a submit wakes the reader; below it the reader is not woken
/// per event and drains the buffer on its own timer. Set by user space before load.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_BYTES: u64 = 4 << 20;

/// How stacks are captured: 0 = the kernel's frame-pointer walk, 1 = `.eh_frame` tables with
/// frame pointers where a binary has no tables (auto), 2 = tables only. Set before load.
#[unsafe(no_mangle)]
pub(crate) static UNWIND_MODE: u32 = 0;

/// Phases to leave out, for the bench ([`tracer_common::bench_skip`]). Set before load.
#[unsafe(no_mangle)]
pub(crate) static BENCH_SKIP: u32 = 0;

/// Whether the bench asked to leave out `phase` ([`tracer_common::bench_skip`]).
#[inline(always)]
pub(crate) fn bench_skips(phase: u32) -> bool {
    // SAFETY: reading a global that user space sets before load; volatile so the compiler does
    // not fold the default value in.
    unsafe { core::ptr::read_volatile(&raw const BENCH_SKIP) & phase != 0 }
}

#[inline(always)]
pub(crate) fn unwind_mode() -> u32 {
    // SAFETY: reading a global that user space sets before load; volatile so the compiler does
    // not fold the default value in.
    unsafe { core::ptr::read_volatile(&raw const UNWIND_MODE) }
}

#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Deduplicated stacks, keyed by a 64-bit hash of their frames. Not preallocated: memory grows
/// with the number of distinct stacks, up to the entry limit.
#[map(name = "STACKS")]
pub(crate) static STACKS: HashMap<u64, StackTrace> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Per-thread state: pending calls by kind, the outermost call in progress, and scratch space
/// for stack capture. Keyed by thread, not CPU: a uprobe program can be preempted on a
/// preemptible kernel, and another thread on the same CPU would then overwrite a per-CPU buffer
/// halfway through. LRU, so entries of threads that have exited make room for new ones.
#[map(name = "THREADS")]
pub(crate) static THREADS: LruHashMap<u32, ThreadState> = LruHashMap::with_max_entries(8192, 0);

/// An all-zero state used to create a thread's entry (too large for the BPF stack).
#[map(name = "ZERO_STATE")]
pub(crate) static ZERO_STATE: PerCpuArray<ThreadState> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it points at this
        // CPU's u64 slot; uprobe programs run with migration disabled, so no other CPU touches it.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn current_tid() -> u32 {
    // The low 32 bits are the thread id.
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The monotonic clock as it read at the first event of the current kernel tick on this CPU:
/// an event's time to within a tick (1 to 10 ms), for the price of the tick count (a load) and
/// a per-CPU lookup, where reading the clock itself costs 35 to 40 ns on a virtual machine.
/// Events are dated by it, not ordered (user space applies them in the ring buffer's order).
#[inline(always)]
pub(crate) fn event_time_ns() -> u64 {
    let jiffies = now_jiffies();
    let Some(cached) = TICK_TIME.get_ptr_mut(0) else {
        return now_ns();
    };
    // SAFETY: pointer from a successful per-CPU array lookup, this CPU's entry; the program
    // runs with preemption disabled where the kernel lets it (see `preempt`), and elsewhere a
    // run interleaved on this CPU at worst leaves a time a tick old.
    unsafe {
        if (*cached).jiffies == jiffies && (*cached).ns != 0 {
            return (*cached).ns;
        }
        let ns = now_ns();
        (*cached).jiffies = jiffies;
        (*cached).ns = ns;
        ns
    }
}

/// What [`event_time_ns`] keeps per CPU: the tick count and the clock read in that tick.
#[repr(C)]
pub(crate) struct TickTime {
    jiffies: u64,
    ns: u64,
}

#[map(name = "TICK_TIME")]
static TICK_TIME: PerCpuArray<TickTime> = PerCpuArray::with_max_entries(1, 0);

/// 1 once user space stops the trace ([`tracer_common::names::STOPPED`]): no event is sent
/// after, so the events read describe the heap at that moment.
#[map(name = "STOPPED")]
static STOPPED: Array<u32> = Array::with_max_entries(1, 0);

/// The kernel's tick count: a load, where the monotonic clock [`now_ns`] reads the time
/// source (35 to 40 ns a read on a virtual machine), for what only needs seconds.
#[inline(always)]
pub(crate) fn now_jiffies() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_jiffies64() }
}

/// This thread's state, created (zeroed) on first use.
#[inline(always)]
pub(crate) fn thread_state(tid: u32, create: bool) -> Option<*mut ThreadState> {
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
pub(crate) fn inside_outer_call(state: &ThreadState, sp: u64) -> bool {
    // The stack grows down: a call made from inside the outer call has a smaller sp. `<=`: a
    // tail call into another traced function (glibc's reallocarray jumps to realloc) runs at
    // the outer call's own stack pointer.
    state.outer_sp != 0
        && sp <= state.outer_sp
        // The tick count is read last: most calls have no outer call in progress.
        && now_jiffies().wrapping_sub(state.outer_started_jiffies) < OUTER_STALE_JIFFIES
}

/// Sends `event` (a [`tracer_common::Event`] or a [`tracer_common::FreeEvent`]) through the
/// ring buffer.
/// Calls in progress, over all threads, that can release a block through a probed free before
/// they return ([`tracer_common::AllocKind::frees_inside`]): while none is, no free can be
/// inside one, and `free_enter` skips the thread's state. Counted up when such a call's state
/// is made pending, down when its return takes it. A call whose return is never seen (its
/// thread ended, its state was evicted) leaves it counted: frees then look at their thread's
/// state as they would without it, which is always right.
#[unsafe(no_mangle)]
static mut FREEING_CALLS: u64 = 0;

/// Adds `delta` to [`FREEING_CALLS`] in one atomic instruction (`lock xadd`; the BPF target has
/// no `AtomicU64::fetch_add`, and the old value is not wanted, which older kernels require).
#[inline(always)]
fn add_freeing_calls(delta: u64) {
    // SAFETY: an atomic add to a global of this object, which the kernel keeps in a map.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &raw mut FREEING_CALLS,
            delta,
        );
    }
}

/// One more call in progress that can free inside it ([`FREEING_CALLS`]).
#[inline(always)]
pub(crate) fn freeing_call_started() {
    add_freeing_calls(1);
}

/// One call fewer in progress that can free inside it ([`FREEING_CALLS`]).
#[inline(always)]
pub(crate) fn freeing_call_returned() {
    add_freeing_calls(u64::MAX);
}

/// Whether any call that can free inside it may be in progress ([`FREEING_CALLS`]).
#[inline(always)]
pub(crate) fn freeing_calls_in_progress() -> bool {
    // SAFETY: a load of a global of this object; volatile, as other CPUs change it.
    unsafe { core::ptr::read_volatile(&raw const FREEING_CALLS) != 0 }
}

#[inline(always)]
pub(crate) fn submit<T: 'static>(event: T) {
    if bench_skips(tracer_common::bench_skip::SUBMIT) || STOPPED.get(0).is_some_and(|s| *s != 0) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count(Counter::RingbufFull);
        return;
    };
    entry.write(event);
    // The count of events sent on this CPU, which also says when to look at how full the
    // buffer is: once in `QUERY_EVERY` events, not on every one (a helper call each).
    let sent = match COUNTERS.get_ptr_mut(Counter::Sent as u32) {
        Some(slot) => {
            // SAFETY: as in `count`.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    };
    // SAFETY: reading a global that user space sets before load; volatile so the compiler does
    // not fold the default value in.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    let wake =
        if sent % QUERY_EVERY == 0 && EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
    entry.submit(u64::from(wake));
}

/// The first four arguments of a probed call, from the registers the attach cookie says
/// they are in at the probed instruction.
#[inline(always)]
pub(crate) fn args(regs: *const pt_regs, cookie: u64) -> [u64; 4] {
    let pick = |index: u32| register(regs, u64::from(cookie::arg(cookie, index)));
    [pick(0), pick(1), pick(2), pick(3)]
}

/// Argument `index` of a probed call alone (see [`args`]): one register read where `args`
/// makes four (each a subprogram call, dear where the kernel mitigates speculation).
#[inline(always)]
pub(crate) fn arg(regs: *const pt_regs, cookie: u64, index: u32) -> u64 {
    register(regs, u64::from(cookie::arg(cookie, index)))
}

/// Register number `wanted` ([`cookie::Reg`]) of `regs` (0 for a number no register has).
///
/// Each register is read at its own constant offset (the verifier refuses a load through a
/// pointer into the context computed at run time, which is what a `match` over fields
/// compiles to) and kept only if it is the one wanted, by a mask: picking from an array of them
/// by an index computed at run time is a variable-offset stack read, which older kernels refuse
/// (Debian 12's 6.1: "invalid variable-offset read from stack"). A function of its own (a BPF
/// subprogram), so its fifteen reads take no room on the probes' stacks.
#[inline(never)]
fn register(regs: *const pt_regs, wanted: u64) -> u64 {
    use cookie::Reg;
    // All of `value` if `reg` is the wanted register, else nothing.
    let keep = |value: u64, reg: Reg| value & 0u64.wrapping_sub(u64::from(wanted == reg as u64));
    // SAFETY: `regs` is the kernel-provided `pt_regs` of this probe hit; each field is read in
    // place.
    unsafe {
        keep((&raw const (*regs).rdi).read_volatile(), Reg::Rdi)
            | keep((&raw const (*regs).rsi).read_volatile(), Reg::Rsi)
            | keep((&raw const (*regs).rdx).read_volatile(), Reg::Rdx)
            | keep((&raw const (*regs).rcx).read_volatile(), Reg::Rcx)
            | keep((&raw const (*regs).r8).read_volatile(), Reg::R8)
            | keep((&raw const (*regs).r9).read_volatile(), Reg::R9)
            | keep((&raw const (*regs).rax).read_volatile(), Reg::Rax)
            | keep((&raw const (*regs).rbx).read_volatile(), Reg::Rbx)
            | keep((&raw const (*regs).r10).read_volatile(), Reg::R10)
            | keep((&raw const (*regs).r11).read_volatile(), Reg::R11)
            | keep((&raw const (*regs).r12).read_volatile(), Reg::R12)
            | keep((&raw const (*regs).r13).read_volatile(), Reg::R13)
            | keep((&raw const (*regs).r14).read_volatile(), Reg::R14)
            | keep((&raw const (*regs).r15).read_volatile(), Reg::R15)
            | keep((&raw const (*regs).rbp).read_volatile(), Reg::Rbp)
    }
}
