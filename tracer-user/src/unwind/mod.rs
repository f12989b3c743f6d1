//! Unwinding user stacks without frame pointers, the user-space half.
//!
//! The eBPF unwinder cannot interpret DWARF CFI. Instead, user space compiles each binary's CFI
//! into compact [`UnwindRow`]s ([`compile`]), sorted by pc, which the eBPF side binary-searches:
//! each row says how to find the canonical frame address (CFA, the caller's rsp) and the caller's
//! rbp; the return address is always at CFA - 8 on x86-64. See `shared/design/unwinding.md`
//! (sections 2 and 3) for the design and the prior art.
//!
//! - [`row`]: the 12-byte row shared with the eBPF side (defined in `tracer-common`).
//! - [`table`]: `.eh_frame`/`.debug_frame` → rows, with statistics on what could not be
//!   expressed.
//! - [`reference`]: a plain unwinder over the rows, the same algorithm the eBPF side runs, used
//!   as the oracle in differential tests.
//! - [`tables`]: every binary of the target compiled once, its rows and the executable mappings
//!   published to the kernel.
//! - [`verify`]: `--verify-unwind`, the kernel's stacks checked against the reference unwinder.
pub mod reference;
pub mod row;
pub mod table;
pub mod tables;
pub mod verify;

#[cfg(test)]
mod tests;

pub use reference::{MAX_FRAMES, Mapping, Registers, StopReason, Unwound, unwind};
pub use row::{UnwindRow, find_row};
pub use table::{
    SkippedFdes, TableStats, UnsupportedCounts, UnwindError, UnwindTable, compile, load_bias,
};
