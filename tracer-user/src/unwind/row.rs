//! The compact unwind row shared with the eBPF unwinder.
//!
//! This file is written to move unchanged into the `no_std` `tracer-common` crate: integers only,
//! `#[repr(C)]`, no padding, no allocation.
//!
//! A table is a slice of rows sorted by `pc` (strictly increasing). A row applies from its `pc` up
//! to the next row's `pc`; the last row of every table is a [`CFA_NONE`] marker, so no address
//! past the end of the covered code matches a real rule. Addresses are ELF virtual addresses of the
//! binary (the process address minus the mapping's load bias), truncated to `u32`: tables are
//! only built for binaries whose executable segments end below 4 GiB.

/// No CFI covers this pc (a gap between FDEs, or past the end of the last one): fall back to a
/// frame-pointer step.
pub const CFA_NONE: u8 = 0;
/// CFA = rsp + `cfa_offset`.
pub const CFA_RSP: u8 = 1;
/// CFA = rbp + `cfa_offset`.
pub const CFA_RBP: u8 = 2;
/// The `.plt` stub rule: CFA = rsp + `cfa_offset` (always 8), plus 8 when
/// `(rip & 15) >= rbp_offset`. `rbp_offset` holds the threshold from the CFA expression: 11 for
/// the classic lazy PLT, 9 for the IBT (`endbr64`) lazy PLT, 10 in some older layouts. rbp is
/// unchanged (`rbp_type` is [`RBP_SAME`]).
pub const CFA_PLT: u8 = 3;
/// The outermost frame (the return address is undefined, e.g. `_start`, the child side of
/// `clone`/`clone3`): the stack is complete, stop here.
pub const CFA_END: u8 = 4;
/// A signal trampoline (glibc's `__restore_rt`): rsp points at the `ucontext_t` the kernel pushed;
/// the interrupted rip, rsp and rbp are at rsp + [`SIGNAL_RIP_OFFSET`], [`SIGNAL_RSP_OFFSET`] and
/// [`SIGNAL_RBP_OFFSET`]. The interrupted rip is exact (look it up without the `- 1` applied to
/// return addresses).
pub const CFA_SIGNAL: u8 = 5;
/// A CFA rule the row format cannot express (a DWARF expression other than the PLT one, a CFA
/// based on a register other than rsp/rbp, an offset out of range, a return address not at
/// CFA - 8): stop and flag the stack.
pub const CFA_UNSUPPORTED: u8 = 6;

/// rbp is unchanged in this frame: the caller's rbp is the current rbp.
pub const RBP_SAME: u8 = 0;
/// The caller's rbp is saved at CFA + `rbp_offset`.
pub const RBP_AT_CFA: u8 = 1;
/// The caller's rbp cannot be recovered (an expression or register rule): mark rbp unknown and
/// keep unwinding; a later rbp-based CFA or frame-pointer step then has to stop.
pub const RBP_UNSUPPORTED: u8 = 2;

/// Offset of `uc_mcontext.gregs[REG_RBP]` in the x86-64 `ucontext_t` (40 + 8 * 10).
pub const SIGNAL_RBP_OFFSET: u64 = 120;
/// Offset of `uc_mcontext.gregs[REG_RSP]` in the x86-64 `ucontext_t` (40 + 8 * 15).
pub const SIGNAL_RSP_OFFSET: u64 = 160;
/// Offset of `uc_mcontext.gregs[REG_RIP]` in the x86-64 `ucontext_t` (40 + 8 * 16).
pub const SIGNAL_RIP_OFFSET: u64 = 168;

/// One compact unwind row (12 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    /// First ELF virtual address the row applies to.
    pub pc: u32,
    /// Offset added to the CFA base register ([`CFA_RSP`], [`CFA_RBP`], [`CFA_PLT`]); 0 otherwise.
    pub cfa_offset: i32,
    /// With [`RBP_AT_CFA`]: where the caller's rbp is saved, relative to the CFA. With
    /// [`CFA_PLT`]: the `rip & 15` threshold. 0 otherwise.
    pub rbp_offset: i16,
    /// One of the `CFA_*` constants.
    pub cfa_type: u8,
    /// One of the `RBP_*` constants.
    pub rbp_type: u8,
}

impl UnwindRow {
    /// A row at `pc` with no CFI ([`CFA_NONE`]).
    pub const fn none(pc: u32) -> Self {
        Self {
            pc,
            cfa_offset: 0,
            rbp_offset: 0,
            cfa_type: CFA_NONE,
            rbp_type: RBP_SAME,
        }
    }

    /// Whether two rows describe the same rules (everything but `pc` is equal).
    pub const fn same_rule(&self, other: &Self) -> bool {
        self.cfa_offset == other.cfa_offset
            && self.rbp_offset == other.rbp_offset
            && self.cfa_type == other.cfa_type
            && self.rbp_type == other.rbp_type
    }
}

/// The row that applies at `pc` in a sorted table: the last row whose `pc` is at most `pc`.
/// `None` when `pc` lies before the first row (treat it like [`CFA_NONE`]).
pub fn find_row(rows: &[UnwindRow], pc: u32) -> Option<&UnwindRow> {
    let after = rows.partition_point(|row| row.pc <= pc);
    after.checked_sub(1).and_then(|index| rows.get(index))
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn unwind_row_layout_has_no_padding() {
        assert_eq!(size_of::<UnwindRow>(), 12);
        assert_eq!(align_of::<UnwindRow>(), 4);
        assert_eq!(offset_of!(UnwindRow, pc), 0);
        assert_eq!(offset_of!(UnwindRow, cfa_offset), 4);
        assert_eq!(offset_of!(UnwindRow, rbp_offset), 8);
        assert_eq!(offset_of!(UnwindRow, cfa_type), 10);
        assert_eq!(offset_of!(UnwindRow, rbp_type), 11);
        // The fields' sizes add up to the struct's size: no padding anywhere.
        assert_eq!(4 + 4 + 2 + 1 + 1, size_of::<UnwindRow>());
    }

    #[test]
    fn find_row_picks_the_last_row_at_or_before_pc() {
        let rows = [
            UnwindRow {
                pc: 0x10,
                cfa_offset: 8,
                cfa_type: CFA_RSP,
                ..UnwindRow::default()
            },
            UnwindRow {
                pc: 0x14,
                cfa_offset: 16,
                cfa_type: CFA_RSP,
                ..UnwindRow::default()
            },
            UnwindRow::none(0x20),
        ];
        assert_eq!(find_row(&rows, 0x0f), None);
        assert_eq!(find_row(&rows, 0x10).map(|r| r.cfa_offset), Some(8));
        assert_eq!(find_row(&rows, 0x13).map(|r| r.cfa_offset), Some(8));
        assert_eq!(find_row(&rows, 0x14).map(|r| r.cfa_offset), Some(16));
        assert_eq!(find_row(&rows, 0x1f).map(|r| r.cfa_offset), Some(16));
        assert_eq!(find_row(&rows, 0x20).map(|r| r.cfa_type), Some(CFA_NONE));
        assert_eq!(
            find_row(&rows, u32::MAX).map(|r| r.cfa_type),
            Some(CFA_NONE)
        );
        assert_eq!(find_row(&[], 5), None);
    }
}
