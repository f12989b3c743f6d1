//! Tables compiled from hand-built `.eh_frame`/`.debug_frame` sections (gimli::write) in minimal
//! ELF files (object::write).
use gimli::{
    Encoding, Format, LittleEndian, Register, X86_64,
    write::{
        Address, CallFrameInstruction as Cfi, CommonInformationEntry, DebugFrame, EhFrame,
        EndianVec, Expression, FrameDescriptionEntry, FrameTable,
    },
};
use object::elf;

use super::elf_builder::{TestSection, build_elf};
use crate::unwind::{
    UnwindError, UnwindRow, compile, load_bias,
    row::{
        CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, CFA_UNSUPPORTED, RBP_AT_CFA,
        RBP_SAME, RBP_UNSUPPORTED,
    },
};

const ENCODING: Encoding = Encoding {
    format: Format::Dwarf32,
    version: 1,
    address_size: 8,
};
const RDX: Register = Register(1);
const RDI: Register = Register(5);
const R9: Register = Register(9);

/// The CIE gcc emits: CFA = rsp + 8, return address at CFA - 8.
fn gcc_cie() -> CommonInformationEntry {
    let mut cie = CommonInformationEntry::new(ENCODING, 1, -8, X86_64::RA);
    cie.add_instruction(Cfi::Cfa(X86_64::RSP, 8));
    cie.add_instruction(Cfi::Offset(X86_64::RA, -8));
    cie
}

fn fde(start: u64, len: u32, instructions: Vec<(u32, Cfi)>) -> FrameDescriptionEntry {
    let mut fde = FrameDescriptionEntry::new(Address::Constant(start), len);
    for (offset, instruction) in instructions {
        fde.add_instruction(offset, instruction);
    }
    fde
}

fn eh_frame_bytes(table: &FrameTable) -> Vec<u8> {
    let mut section = EhFrame(EndianVec::new(LittleEndian));
    table.write_eh_frame(&mut section).expect("write .eh_frame");
    let mut bytes = section.0.into_vec();
    bytes.extend_from_slice(&[0; 4]); // the zero terminator
    bytes
}

fn debug_frame_bytes(table: &FrameTable) -> Vec<u8> {
    let mut section = DebugFrame(EndianVec::new(LittleEndian));
    table
        .write_debug_frame(&mut section)
        .expect("write .debug_frame");
    section.0.into_vec()
}

/// Appends an FDE using the CIE at offset 0 of `.eh_frame` (gimli's `gcc_cie()`: no
/// augmentation, absolute 8-byte addresses).
fn append_raw_fde(eh_frame: &mut Vec<u8>, start: u64, len: u64, instructions: &[u8]) {
    let cie_pointer = u32::try_from(eh_frame.len() + 4).expect("offset");
    let mut body = Vec::new();
    body.extend_from_slice(&cie_pointer.to_le_bytes());
    body.extend_from_slice(&start.to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(instructions);
    let length = u32::try_from(body.len()).expect("length");
    eh_frame.extend_from_slice(&length.to_le_bytes());
    eh_frame.extend_from_slice(&body);
}

/// The `.plt` CFA expression with the given threshold.
fn plt_expression(threshold: u8) -> Expression {
    Expression::raw(vec![
        0x77,
        0x08, // DW_OP_breg7 (rsp) 8
        0x80,
        0x00, // DW_OP_breg16 (rip) 0
        0x3f, // DW_OP_lit15
        0x1a, // DW_OP_and
        0x30 + threshold,
        0x2a, // DW_OP_ge
        0x33, // DW_OP_lit3
        0x24, // DW_OP_shl
        0x22, // DW_OP_plus
    ])
}

fn rsp(pc: u32, offset: i32) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_offset: offset,
        cfa_type: CFA_RSP,
        ..UnwindRow::default()
    }
}

fn with_rbp(row: UnwindRow, rbp_offset: i16) -> UnwindRow {
    UnwindRow {
        rbp_offset,
        rbp_type: RBP_AT_CFA,
        ..row
    }
}

fn kind(pc: u32, cfa_type: u8) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_type,
        ..UnwindRow::default()
    }
}

/// One ELF exercising every row kind; see the expected table in the test below.
fn everything_elf() -> Vec<u8> {
    let mut eh = FrameTable::default();
    let cie = eh.add_cie(gcc_cie());
    // 0x1000: rsp-based, with push/sub/add/pop and a redundant rule change at 0x1010.
    eh.add_fde(
        cie,
        fde(
            0x1000,
            0x40,
            vec![
                (1, Cfi::CfaOffset(16)),
                (1, Cfi::Offset(Register(3), -16)),
                (5, Cfi::CfaOffset(32)),
                (0x10, Cfi::CfaOffset(32)),
                (0x30, Cfi::CfaOffset(16)),
                (0x34, Cfi::CfaOffset(8)),
            ],
        ),
    );
    // 0x1040: a classic rbp frame (push rbp; mov rbp, rsp; ...; leave; ret).
    eh.add_fde(
        cie,
        fde(
            0x1040,
            0x40,
            vec![
                (1, Cfi::CfaOffset(16)),
                (1, Cfi::Offset(X86_64::RBP, -16)),
                (4, Cfi::CfaRegister(X86_64::RBP)),
                (0x3f, Cfi::Cfa(X86_64::RSP, 8)),
            ],
        ),
    );
    // (0x1080..0x1100: no .eh_frame; .debug_frame covers 0x1080..0x1090.)
    // 0x1100: the outermost frame, like _start.
    eh.add_fde(
        cie,
        fde(0x1100, 0x20, vec![(0, Cfi::Undefined(X86_64::RA))]),
    );
    // 0x1120 (right after the previous FDE): an expression CFA that is not the PLT one.
    let mut deref = Expression::new();
    deref.op_breg(X86_64::RSP, 160);
    deref.op_deref();
    eh.add_fde(cie, fde(0x1120, 0x10, vec![(0, Cfi::CfaExpression(deref))]));
    // 0x1140: a signal trampoline, from a CIE with the 'S' augmentation.
    let mut signal_cie = gcc_cie();
    signal_cie.signal_trampoline = true;
    let signal_cie = eh.add_cie(signal_cie);
    let mut rt = Expression::new();
    rt.op_breg(X86_64::RSP, 160);
    rt.op_deref();
    eh.add_fde(
        signal_cie,
        fde(0x1140, 0x10, vec![(0, Cfi::CfaExpression(rt))]),
    );
    // 0x1150: CFA based on rdi.
    eh.add_fde(cie, fde(0x1150, 0x10, vec![(0, Cfi::Cfa(RDI, 0))]));
    // 0x1160: rbp kept in r9.
    eh.add_fde(
        cie,
        fde(0x1160, 0x10, vec![(0, Cfi::Register(X86_64::RBP, R9))]),
    );
    // 0x1170: return address kept in rdx.
    eh.add_fde(
        cie,
        fde(0x1170, 0x10, vec![(0, Cfi::Register(X86_64::RA, RDX))]),
    );
    // (0x1180: CFA offset beyond i32, rbp offset beyond i16: written by hand below.)
    // .plt at 0x1200: the binutils FDE.
    eh.add_fde(
        cie,
        fde(
            0x1200,
            0x40,
            vec![
                (0, Cfi::CfaOffset(16)),
                (6, Cfi::CfaOffset(24)),
                (16, Cfi::CfaExpression(plt_expression(11))),
            ],
        ),
    );
    // (.plt.got at 0x1240..0x1250 has no FDE.)

    let mut debug = FrameTable::default();
    let debug_cie = debug.add_cie(gcc_cie());
    // Fills part of the .eh_frame gap.
    debug.add_fde(debug_cie, fde(0x1080, 0x10, vec![(1, Cfi::CfaOffset(16))]));
    // Overlaps the first .eh_frame FDE: ignored.
    debug.add_fde(debug_cie, fde(0x1000, 0x10, vec![(1, Cfi::CfaOffset(48))]));
    // A function the linker discarded (address 0): ignored.
    debug.add_fde(debug_cie, fde(0, 0x10, vec![]));

    // gimli::write takes i32 offsets, so this FDE is written by hand: at 0x1180 rbp is saved at
    // CFA - 40000; at 0x1184 CFA = rsp + 2^32.
    let mut eh_bytes = eh_frame_bytes(&eh);
    eh_bytes.truncate(eh_bytes.len() - 4);
    append_raw_fde(
        &mut eh_bytes,
        0x1180,
        0x10,
        &[
            0x86, 0x88, 0x27, // DW_CFA_offset r6 (rbp), 5000 * -8
            0x44, // DW_CFA_advance_loc 4
            0x0e, 0x80, 0x80, 0x80, 0x80, 0x10, // DW_CFA_def_cfa_offset 2^32
        ],
    );
    eh_bytes.extend_from_slice(&[0; 4]);

    build_elf(
        0,
        elf::EM_X86_64,
        &[
            TestSection::code(".text", 0x1000, 0x200),
            TestSection::code(".plt", 0x1200, 0x40),
            TestSection::code(".plt.got", 0x1240, 0x10),
            TestSection::rodata(".eh_frame", 0x2000, eh_bytes),
            TestSection::debug(".debug_frame", debug_frame_bytes(&debug)),
        ],
    )
}

#[test]
fn every_row_kind_compiles_to_the_expected_table() {
    let table = compile(&everything_elf()).expect("compile");
    let plt = UnwindRow {
        pc: 0x1210,
        cfa_offset: 8,
        rbp_offset: 11,
        cfa_type: CFA_PLT,
        rbp_type: RBP_SAME,
    };
    let expected = vec![
        rsp(0x1000, 8),
        rsp(0x1001, 16),
        rsp(0x1005, 32), // the repeated CfaOffset(32) at 0x1010 is merged away
        rsp(0x1030, 16),
        // 0x1034 rsp+8 and the next FDE's first row (0x1040 rsp+8) are one rule: one row.
        rsp(0x1034, 8),
        with_rbp(rsp(0x1041, 16), -16),
        with_rbp(
            UnwindRow {
                cfa_type: CFA_RBP,
                ..rsp(0x1044, 16)
            },
            -16,
        ),
        with_rbp(rsp(0x107f, 8), -16),
        rsp(0x1080, 8), // from .debug_frame
        rsp(0x1081, 16),
        kind(0x1090, CFA_NONE), // gap up to 0x1100
        kind(0x1100, CFA_END),
        // No NONE at 0x1120: the next FDE starts where this one ends.
        kind(0x1120, CFA_UNSUPPORTED),
        kind(0x1130, CFA_NONE),
        kind(0x1140, CFA_SIGNAL),
        kind(0x1150, CFA_UNSUPPORTED),
        UnwindRow {
            rbp_type: RBP_UNSUPPORTED,
            ..rsp(0x1160, 8)
        },
        kind(0x1170, CFA_UNSUPPORTED),
        UnwindRow {
            rbp_type: RBP_UNSUPPORTED,
            ..rsp(0x1180, 8)
        },
        kind(0x1184, CFA_UNSUPPORTED),
        kind(0x1190, CFA_NONE),
        rsp(0x1200, 16),
        rsp(0x1206, 24),
        plt,
        rsp(0x1240, 8), // synthesized for .plt.got
        kind(0x1250, CFA_NONE),
    ];
    assert_eq!(table.rows, expected, "{:#x?}", table.rows);

    let stats = table.stats;
    assert_eq!(stats.eh_frame_fdes, 10);
    assert_eq!(stats.debug_frame_fdes, 1);
    assert_eq!(stats.fdes, 11);
    assert_eq!(stats.skipped_fdes.overlapping, 1);
    assert_eq!(stats.skipped_fdes.outside_code, 1);
    assert_eq!(stats.skipped_fdes.malformed, 0);
    assert_eq!(stats.section_errors, 0);
    assert_eq!(stats.signal_fdes, 1);
    assert_eq!(stats.end_rows, 1);
    assert_eq!(stats.plt_rows, 1);
    assert_eq!(stats.synthesized_plt_ranges, 1);
    assert_eq!(stats.rbp_rows, 1);
    assert_eq!(stats.unsupported.cfa_expression, 1);
    assert_eq!(stats.unsupported.cfa_register, 1);
    assert_eq!(stats.unsupported.cfa_offset_range, 1);
    assert_eq!(stats.unsupported.return_address, 1);
    assert_eq!(stats.unsupported.rbp_rule, 1);
    assert_eq!(stats.unsupported.rbp_offset_range, 1);
    assert_eq!(stats.rows, expected.len());
    // Merging dropped the repeated row at 0x1010 and the rsp+8 row at 0x1040.
    assert_eq!(stats.raw_rows, expected.len() + 2);

    // Lookups inside rows and at the boundaries.
    assert_eq!(table.lookup(0x0fff), None);
    assert_eq!(table.lookup(0x1004).map(|r| r.cfa_offset), Some(16));
    assert_eq!(table.lookup(0x1050).map(|r| r.cfa_type), Some(CFA_RBP));
    assert_eq!(table.lookup(0x10ff).map(|r| r.cfa_type), Some(CFA_NONE));
    assert_eq!(table.lookup(0x1_0000_0000), None);
}

#[test]
fn rows_are_sorted_and_never_repeat_a_rule() {
    let table = compile(&everything_elf()).expect("compile");
    for pair in table.rows.windows(2) {
        assert!(pair[0].pc < pair[1].pc, "{pair:x?}");
        assert!(!pair[0].same_rule(&pair[1]), "{pair:x?}");
    }
    assert_eq!(table.rows.last().map(|r| r.cfa_type), Some(CFA_NONE));
}

#[test]
fn uncovered_plt_sections_get_synthesized_rows() {
    // No FDE at all for .plt, .plt.sec (IBT layout, so the threshold is 9) and .plt.got.
    let mut eh = FrameTable::default();
    let cie = eh.add_cie(gcc_cie());
    eh.add_fde(cie, fde(0x1100, 0x10, vec![]));
    let elf_data = build_elf(
        0,
        elf::EM_X86_64,
        &[
            TestSection::code(".plt", 0x1000, 0x40),
            TestSection::code(".plt.got", 0x1040, 0x10),
            TestSection::code(".plt.sec", 0x1050, 0x30),
            TestSection::code(".text", 0x1100, 0x10),
            TestSection::rodata(".eh_frame", 0x2000, eh_frame_bytes(&eh)),
        ],
    );
    let table = compile(&elf_data).expect("compile");
    assert_eq!(
        table.rows,
        vec![
            rsp(0x1000, 16),
            rsp(0x1006, 24),
            UnwindRow {
                pc: 0x1010,
                cfa_offset: 8,
                rbp_offset: 9,
                cfa_type: CFA_PLT,
                rbp_type: RBP_SAME,
            },
            // .plt.got and .plt.sec both say rsp+8: one row.
            rsp(0x1040, 8),
            kind(0x1080, CFA_NONE),
            rsp(0x1100, 8),
            kind(0x1110, CFA_NONE),
        ]
    );
    assert_eq!(table.stats.synthesized_plt_ranges, 3);
}

#[test]
fn the_plt_expression_threshold_is_kept() {
    for threshold in [9u8, 10, 11] {
        let mut eh = FrameTable::default();
        let cie = eh.add_cie(gcc_cie());
        eh.add_fde(
            cie,
            fde(
                0x1000,
                0x20,
                vec![(0, Cfi::CfaExpression(plt_expression(threshold)))],
            ),
        );
        let elf_data = build_elf(
            0,
            elf::EM_X86_64,
            &[
                TestSection::code(".text", 0x1000, 0x20),
                TestSection::rodata(".eh_frame", 0x2000, eh_frame_bytes(&eh)),
            ],
        );
        let row = compile(&elf_data).expect("compile").rows[0];
        assert_eq!(row.cfa_type, CFA_PLT);
        assert_eq!(row.rbp_offset, i16::from(threshold));
    }
}

#[test]
fn code_above_4_gib_is_refused() {
    let mut eh = FrameTable::default();
    let cie = eh.add_cie(gcc_cie());
    eh.add_fde(cie, fde(0x1_0000_1000, 0x10, vec![]));
    let base = 0x1_0000_0000;
    let elf_data = build_elf(
        base,
        elf::EM_X86_64,
        &[
            TestSection::code(".text", base + 0x1000, 0x10),
            TestSection::rodata(".eh_frame", base + 0x2000, eh_frame_bytes(&eh)),
        ],
    );
    assert!(matches!(
        compile(&elf_data),
        Err(UnwindError::AddressTooLarge { .. })
    ));
}

#[test]
fn binaries_without_cfi_or_for_other_machines_are_refused() {
    let no_cfi = build_elf(
        0,
        elf::EM_X86_64,
        &[TestSection::code(".text", 0x1000, 0x10)],
    );
    assert!(matches!(compile(&no_cfi), Err(UnwindError::NoCfi)));
    let arm = build_elf(
        0,
        elf::EM_AARCH64,
        &[TestSection::code(".text", 0x1000, 0x10)],
    );
    assert!(matches!(
        compile(&arm),
        Err(UnwindError::NotX86_64 { machine }) if machine == elf::EM_AARCH64
    ));
    assert!(matches!(compile(b"not an elf"), Err(UnwindError::Elf(_))));
}

#[test]
fn a_truncated_eh_frame_keeps_the_entries_before_the_damage() {
    let mut eh = FrameTable::default();
    let cie = eh.add_cie(gcc_cie());
    eh.add_fde(cie, fde(0x1000, 0x10, vec![(1, Cfi::CfaOffset(16))]));
    eh.add_fde(cie, fde(0x1010, 0x10, vec![(1, Cfi::CfaOffset(16))]));
    let mut bytes = eh_frame_bytes(&eh);
    // Cut the last FDE (and the terminator) in half.
    bytes.truncate(bytes.len() - 4 - 10);
    let elf_data = build_elf(
        0,
        elf::EM_X86_64,
        &[
            TestSection::code(".text", 0x1000, 0x20),
            TestSection::rodata(".eh_frame", 0x2000, bytes),
        ],
    );
    let table = compile(&elf_data).expect("compile");
    assert_eq!(table.stats.section_errors, 1);
    assert_eq!(table.stats.fdes, 1);
    assert_eq!(
        table.rows,
        vec![rsp(0x1000, 8), rsp(0x1001, 16), kind(0x1010, CFA_NONE)]
    );
}

#[test]
fn load_bias_maps_file_offsets_to_addresses() {
    // Segment: file offset 0x1000 at address base + 0x1000.
    let pie = build_elf(
        0,
        elf::EM_X86_64,
        &[TestSection::code(".text", 0x1000, 0x100)],
    );
    assert_eq!(
        load_bias(&pie, 0x7f00_0000_1000, 0x1000).ok(),
        Some(0x7f00_0000_0000)
    );
    let fixed = build_elf(
        0x40_0000,
        elf::EM_X86_64,
        &[TestSection::code(".text", 0x40_1000, 0x100)],
    );
    assert_eq!(load_bias(&fixed, 0x40_1000, 0x1000).ok(), Some(0));
    assert!(matches!(
        load_bias(&fixed, 0x40_1000, 0x9000),
        Err(UnwindError::OffsetNotLoaded { offset: 0x9000 })
    ));
}

#[test]
fn load_bias_prefers_the_segment_starting_at_the_offset() {
    // Like a Rust binary linked by ld.bfd: a read-only segment ending in the same file page where
    // the code segment starts (at address + 0x1000).
    use object::write::elf::{FileHeader, ProgramHeader, Writer};
    let mut buffer = Vec::new();
    let mut writer = Writer::new(object::Endianness::Little, true, &mut buffer);
    writer.reserve_file_header();
    writer.reserve_program_headers(2);
    writer.reserve_until(0x3000);
    writer
        .write_file_header(&FileHeader {
            os_abi: 0,
            abi_version: 0,
            e_type: elf::ET_DYN,
            e_machine: elf::EM_X86_64,
            e_entry: 0,
            e_flags: 0,
        })
        .expect("header");
    writer.write_align_program_headers();
    for (p_flags, p_offset, p_vaddr, size) in [
        (elf::PF_R, 0, 0, 0x1bb8),
        (elf::PF_R | elf::PF_X, 0x1bc0, 0x2bc0, 0x1000),
    ] {
        writer.write_program_header(&ProgramHeader {
            p_type: elf::PT_LOAD,
            p_flags,
            p_offset,
            p_vaddr,
            p_paddr: p_vaddr,
            p_filesz: size,
            p_memsz: size,
            p_align: 0x1000,
        });
    }
    writer.pad_until(0x3000);
    // The code mapping: offset 0x1000 mapped at bias + 0x2000.
    let bias = 0x5555_0000_0000;
    assert_eq!(load_bias(&buffer, bias + 0x2000, 0x1000).ok(), Some(bias));
    // The read-only mapping at offset 0.
    assert_eq!(load_bias(&buffer, bias, 0).ok(), Some(bias));
}
