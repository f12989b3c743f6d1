//! `floor_enter` (uprobe): an empty program for `--probe-floor`.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

/// Does nothing: attached to malloc's and free's probe sites by `--probe-floor`, it measures the
/// cost of the traps alone (the floor any tracer of every call pays).
#[uprobe]
pub(crate) fn floor_enter(_ctx: ProbeContext) -> u32 {
    0
}
