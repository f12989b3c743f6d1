//! Sampling by bytes (`--sample-bytes`): which allocations are followed, decided at entry, and
//! which blocks are, so frees of the others are dropped here.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use tracer_common::AllocKind;

use crate::alloc::mul;

/// Sampling: mean bytes between sampled allocations (0: every allocation). Set before load.
#[unsafe(no_mangle)]
pub(crate) static SAMPLE_BYTES: u64 = 0;

/// Sampling: addresses of the sampled blocks still live, so frees of unsampled blocks are
/// dropped here instead of being sent.
#[map(name = "SAMPLED")]
pub(crate) static SAMPLED: HashMap<u64, u32> =
    HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Sampling: bytes still to allocate on this CPU before the next sampled allocation (0: draw a
/// fresh countdown).
#[map(name = "SAMPLE_COUNTDOWN")]
pub(crate) static SAMPLE_COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// Sampling by bytes, as tcmalloc, jemalloc and Go do: a countdown of bytes to the next sample
/// is drawn from an exponential distribution with mean `mean`; a call that reaches it is sampled
/// and draws the next one. Each call of `size` bytes is then sampled with probability
/// `1 - exp(-size / mean)`, whatever came before (the exponential is memoryless), which is what
/// user space divides by. The countdown is per CPU, not per thread, so the decision needs no
/// thread lookup; a program preempted halfway by another on the same CPU can lose one update,
/// which only delays a sample.
#[inline(always)]
pub(crate) fn take_sample(size: u64, mean: u64) -> bool {
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
pub(crate) static EXP_TABLE: Array<u32> = Array::with_max_entries(256, 0);

#[inline(always)]
pub(crate) fn sample_bytes() -> u64 {
    // SAFETY: reading a global that user space sets before load.
    unsafe { core::ptr::read_volatile(&raw const SAMPLE_BYTES) }
}

/// An exponentially distributed number of bytes with mean `mean`.
#[inline(always)]
pub(crate) fn next_sample_interval(mean: u64) -> i64 {
    // SAFETY: a helper with no arguments.
    let random = unsafe { bpf_get_prandom_u32() } & 0xff;
    let scaled = EXP_TABLE.get(random).copied().unwrap_or(1 << 16);
    ((u64::from(scaled) * mean) >> 16) as i64
}

/// The bytes a call asks for, from its saved arguments (saturating on overflow).
#[inline(always)]
pub(crate) fn requested_bytes(kind: u32, args: &[u64; 4]) -> u64 {
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
    } else if kind == AllocKind::RustRealloc as u32 {
        args[3]
    } else if kind == AllocKind::Xallocx as u32 {
        args[1].saturating_add(args[2])
    } else {
        args[0]
    }
}

/// Whether a call may release a block the sampler follows: realloc, `__rust_realloc` and
/// `xallocx` of a sampled pointer, and reallocarray always (its tail call into realloc is a
/// nested call, which leaves the release to it).
#[inline(always)]
pub(crate) fn may_release_sampled(kind: u32, args: &[u64; 4]) -> bool {
    if kind == AllocKind::ReallocArray as u32 {
        return true;
    }
    (kind == AllocKind::Realloc as u32
        || kind == AllocKind::RustRealloc as u32
        || kind == AllocKind::Xallocx as u32)
        && args[0] != 0
        && SAMPLED.get_ptr(args[0]).is_some()
}
