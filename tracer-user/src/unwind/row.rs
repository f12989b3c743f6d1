//! The compact unwind row shared with the eBPF unwinder (defined in `tracer-common`, re-exported
//! here), and the search both unwinders do over a table of them.
//!
//! A table is a slice of rows sorted by `pc` (strictly increasing). A row applies from its `pc` up
//! to the next row's `pc`; the last row of every table is a [`CFA_NONE`] marker, so no address
//! past the end of the covered code matches a real rule. Addresses are ELF virtual addresses of the
//! binary (the process address minus the mapping's load bias), truncated to `u32`: tables are
//! only built for binaries whose executable segments end below 4 GiB.

pub use tracer_common::unwind::{
    CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, CFA_UNSUPPORTED, RBP_AT_CFA,
    RBP_SAME, RBP_UNSUPPORTED, SIGNAL_RBP_OFFSET, SIGNAL_RIP_OFFSET, SIGNAL_RSP_OFFSET, UnwindRow,
};

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
