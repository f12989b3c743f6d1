//! Compiling a binary's CFI (`.eh_frame`, `.debug_frame`) into sorted [`UnwindRow`]s.
//!
//! Steps ([`compile`]):
//!
//! 1. Find the executable address ranges (the `PF_X` `PT_LOAD` segments, or the `SHF_EXECINSTR`
//!    sections of a file without segments). They must end below 4 GiB (rows hold `u32` pcs), else
//!    [`UnwindError::AddressTooLarge`].
//! 2. Walk every CIE/FDE of `.eh_frame` with gimli's `EhFrame::entries` (not through
//!    `.eh_frame_hdr`, so FDEs missing from the search table still count; when the section headers
//!    are stripped, `.eh_frame` is found through `PT_GNU_EH_FRAME`). Evaluate each FDE's program
//!    with gimli's `UnwindTable` and map each row to an [`UnwindRow`] (see [`TableStats`] for what
//!    is skipped and counted). Signal-trampoline FDEs (CIE augmentation `S`) become one
//!    [`CFA_SIGNAL`] row over their whole range; a row whose return address is `Undefined` becomes
//!    [`CFA_END`]; the `.plt` CFA expression becomes [`CFA_PLT`].
//! 3. Do the same for `.debug_frame` (uncompressed only), keeping only FDEs that overlap no
//!    `.eh_frame` FDE.
//! 4. Synthesize rows for the parts of `.plt`, `.plt.sec` and `.plt.got` no FDE covers (lld emits
//!    no CFI for them).
//! 5. Sort the FDE blocks by address, drop FDEs overlapping an earlier one, put a [`CFA_NONE`] row
//!    at each FDE's end unless the next one starts there, and merge consecutive rows with identical
//!    rules.
use std::collections::HashMap;

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, CommonInformationEntry, DebugFrame, EhFrame, EhFrameHdr,
    EndianSlice, LittleEndian, Register, RegisterRule, UnwindContext, UnwindOffset, UnwindSection,
    UnwindTableRow,
};
use object::{
    Endianness, Object as _, ObjectSection as _, elf,
    read::{
        CompressionFormat,
        elf::{ElfFile64, FileHeader as _, ProgramHeader as _},
    },
};

use super::row::{
    CFA_END, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, CFA_UNSUPPORTED, RBP_AT_CFA, RBP_SAME,
    RBP_UNSUPPORTED, UnwindRow, find_row,
};

/// DWARF register numbers on x86-64.
const RBP: Register = Register(6);
const RSP: Register = Register(7);
/// One past the largest address a row can hold.
const ADDRESS_LIMIT: u64 = 1 << 32;

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Why a binary's table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    /// Not an ELF file `object` can read (or not a 64-bit one).
    #[error("not a readable 64-bit ELF file: {0}")]
    Elf(#[from] object::read::Error),
    /// An ELF for another architecture or byte order.
    #[error("not a little-endian x86-64 ELF file (e_machine {machine})")]
    NotX86_64 {
        /// `e_machine`.
        machine: u16,
    },
    /// Executable code above 4 GiB: rows hold 32-bit addresses.
    #[error("executable code reaches {end:#x}, above the 4 GiB the 32-bit unwind rows can address")]
    AddressTooLarge {
        /// End of the offending range.
        end: u64,
    },
    /// Neither `.eh_frame` nor `.debug_frame`: only frame pointers can unwind this binary.
    #[error("no .eh_frame or .debug_frame: only frame pointers can unwind this binary")]
    NoCfi,
    /// [`load_bias`]: no `PT_LOAD` segment maps this file offset.
    #[error("no PT_LOAD segment maps file offset {offset:#x}")]
    OffsetNotLoaded {
        /// The mapping's file offset.
        offset: u64,
    },
}

/// Rows the row format cannot express, counted per reason over the rows gimli produced (before
/// merging). Every one of them becomes a [`CFA_UNSUPPORTED`] row, except the two `rbp_*` reasons,
/// which become [`RBP_UNSUPPORTED`] on an otherwise usable row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnsupportedCounts {
    /// CFA = some register other than rsp or rbp, plus an offset.
    pub cfa_register: usize,
    /// A CFA expression other than the `.plt` one.
    pub cfa_expression: usize,
    /// A CFA offset outside `i32`.
    pub cfa_offset_range: usize,
    /// The return address is neither at CFA - 8 nor undefined (e.g. kept in a register by
    /// glibc's `__longjmp` family and `vfork`).
    pub return_address: usize,
    /// rbp restored by a rule other than "same value" or "saved at CFA + n".
    pub rbp_rule: usize,
    /// rbp saved at an offset outside `i16`.
    pub rbp_offset_range: usize,
}

/// FDEs left out of the table, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkippedFdes {
    /// Zero-length FDEs.
    pub empty: usize,
    /// FDEs outside every executable range (e.g. `.debug_frame` entries of functions the linker
    /// discarded, which point at address 0 or a tombstone).
    pub outside_code: usize,
    /// FDEs overlapping an earlier one (by address; `.eh_frame` wins over `.debug_frame`).
    pub overlapping: usize,
    /// FDEs gimli could not parse or evaluate (e.g. a `DW_CFA_remember_state` deeper than 4).
    pub malformed: usize,
}

/// What [`compile`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// FDEs whose rows are in the table (`eh_frame_fdes + debug_frame_fdes`).
    pub fdes: usize,
    /// FDEs taken from `.eh_frame`.
    pub eh_frame_fdes: usize,
    /// FDEs taken from `.debug_frame` (those covering code no `.eh_frame` FDE covers).
    pub debug_frame_fdes: usize,
    /// FDEs left out.
    pub skipped_fdes: SkippedFdes,
    /// CFI sections whose walk stopped at an entry gimli could not parse (the entries before it
    /// are kept).
    pub section_errors: usize,
    /// `.debug_frame` was present but compressed, and was ignored.
    pub debug_frame_compressed: bool,
    /// Address ranges in `.plt`, `.plt.sec` or `.plt.got` without CFI that got synthesized rows.
    pub synthesized_plt_ranges: usize,
    /// Rows before merging: one per gimli row, plus synthesized and end-of-FDE rows.
    pub raw_rows: usize,
    /// Rows in the table.
    pub rows: usize,
    /// Raw rows with an rsp-based CFA.
    pub rsp_rows: usize,
    /// Raw rows with an rbp-based CFA.
    pub rbp_rows: usize,
    /// Raw rows with the PLT rule (from the CFA expression or synthesized).
    pub plt_rows: usize,
    /// Raw rows marking the outermost frame (undefined return address).
    pub end_rows: usize,
    /// Signal-trampoline FDEs.
    pub signal_fdes: usize,
    /// Raw rows the format cannot express, by reason.
    pub unsupported: UnsupportedCounts,
}

/// A binary's compiled unwind table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    /// Rows sorted by strictly increasing `pc`, ending with a [`CFA_NONE`](super::row::CFA_NONE)
    /// row (unless the last FDE ends exactly at 4 GiB).
    pub rows: Vec<UnwindRow>,
    /// What the compilation found.
    pub stats: TableStats,
}

impl UnwindTable {
    /// The row applying at ELF virtual address `vaddr`, if any row does.
    pub fn lookup(&self, vaddr: u64) -> Option<&UnwindRow> {
        let pc = u32::try_from(vaddr).ok()?;
        find_row(&self.rows, pc)
    }
}

/// The load bias of a mapping: what to subtract from a process address in the mapping to get the
/// ELF virtual address. `map_start` and `file_offset` are a `/proc/PID/maps` line's start address
/// and offset. The segment is the `PT_LOAD` the kernel mapped there: the one whose page-aligned
/// file offset is `file_offset`, else (a mapping split by `mprotect`, e.g. RELRO) the one whose
/// file range holds it. The exact match matters: consecutive segments often share a file page
/// (the end of the read-only segment and the start of the code segment), and the same offset
/// then sits at two different addresses. Correct for PIE and non-PIE executables and for
/// libraries whose segments' addresses differ from their file offsets.
pub fn load_bias(elf_data: &[u8], map_start: u64, file_offset: u64) -> Result<u64, UnwindError> {
    let file = ElfFile64::<Endianness>::parse(elf_data)?;
    let endian = file.endian();
    let loads = || {
        file.elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
    };
    let starts_at =
        |ph: &&elf::ProgramHeader64<Endianness>| ph.p_offset(endian) & !0xfff == file_offset;
    let holds = |ph: &&elf::ProgramHeader64<Endianness>| {
        let p_offset = ph.p_offset(endian);
        file_offset >= p_offset & !0xfff
            && file_offset < p_offset.saturating_add(ph.p_filesz(endian).max(1))
    };
    let segment = loads()
        .find(starts_at)
        .or_else(|| loads().find(holds))
        .ok_or(UnwindError::OffsetNotLoaded {
            offset: file_offset,
        })?;
    let vaddr = file_offset
        .wrapping_add(segment.p_vaddr(endian))
        .wrapping_sub(segment.p_offset(endian));
    Ok(map_start.wrapping_sub(vaddr))
}

/// One FDE's (or synthesized range's) rows in `Builder::raw`.
#[derive(Clone, Copy, Debug)]
struct Block {
    start: u64,
    end: u64,
    first: usize,
    last: usize,
}

/// Sorted, non-overlapping executable ranges, or none (then every address below 4 GiB is taken).
struct CodeRanges(Vec<(u64, u64)>);

impl CodeRanges {
    fn contains(&self, start: u64, end: u64) -> bool {
        if self.0.is_empty() {
            return end <= ADDRESS_LIMIT;
        }
        let after = self.0.partition_point(|&(s, _)| s <= start);
        after
            .checked_sub(1)
            .and_then(|i| self.0.get(i))
            .is_some_and(|&(_, e)| end <= e)
    }
}

struct Builder<'a> {
    code: &'a CodeRanges,
    ctx: UnwindContext<usize>,
    raw: Vec<UnwindRow>,
    stats: TableStats,
}

/// Compiles the CFI of the ELF file `elf_data` into an [`UnwindTable`].
pub fn compile(elf_data: &[u8]) -> Result<UnwindTable, UnwindError> {
    let file = ElfFile64::<Endianness>::parse(elf_data)?;
    let endian = file.endian();
    let machine = file.elf_header().e_machine(endian);
    if machine != elf::EM_X86_64 || endian != Endianness::Little {
        return Err(UnwindError::NotX86_64 { machine });
    }
    let code = code_ranges(&file)?;

    let eh_frame = find_eh_frame(&file);
    let debug_frame = file
        .section_by_name(".debug_frame")
        .filter(|s| s.size() > 0);
    if eh_frame.is_none() && debug_frame.is_none() {
        return Err(UnwindError::NoCfi);
    }

    let mut builder = Builder {
        code: &code,
        ctx: UnwindContext::new(),
        raw: Vec::new(),
        stats: TableStats::default(),
    };

    let mut eh_blocks = Vec::new();
    if let Some((address, data)) = eh_frame {
        let mut bases = BaseAddresses::default().set_eh_frame(address);
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        if let Some(got) = file.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        if let Some(hdr) = file.section_by_name(".eh_frame_hdr") {
            bases = bases.set_eh_frame_hdr(hdr.address());
        }
        let mut section = EhFrame::new(data, LittleEndian);
        section.set_address_size(8);
        builder.raw.reserve(data.len() / 6);
        builder.collect(&section, &bases, &mut eh_blocks);
    }
    let mut blocks = keep_disjoint(eh_blocks, &[], &mut builder.stats);
    builder.stats.eh_frame_fdes = blocks.len();

    if let Some(section) = debug_frame {
        let compressed = section
            .compressed_file_range()
            .map(|range| range.format != CompressionFormat::None)
            .unwrap_or(true);
        if compressed {
            builder.stats.debug_frame_compressed = true;
        } else if let Ok(data) = section.data() {
            let mut section = DebugFrame::new(data, LittleEndian);
            section.set_address_size(8);
            let mut debug_blocks = Vec::new();
            builder.collect(&section, &BaseAddresses::default(), &mut debug_blocks);
            let kept = keep_disjoint(debug_blocks, &blocks, &mut builder.stats);
            builder.stats.debug_frame_fdes = kept.len();
            blocks.extend(kept);
            blocks.sort_unstable_by_key(|b| b.start);
        }
    }
    builder.stats.fdes = blocks.len();

    builder.synthesize_plt(&file, &mut blocks);
    Ok(builder.finish(&blocks))
}

/// The executable ranges of `file`: `PF_X` `PT_LOAD` segments, else `SHF_EXECINSTR` sections.
fn code_ranges(file: &ElfFile64<'_, Endianness>) -> Result<CodeRanges, UnwindError> {
    let endian = file.endian();
    let mut ranges: Vec<(u64, u64)> = file
        .elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD && ph.p_flags(endian) & elf::PF_X != 0)
        .map(|ph| {
            let start = ph.p_vaddr(endian);
            (start, start.saturating_add(ph.p_memsz(endian)))
        })
        .collect();
    if ranges.is_empty() {
        ranges = file
            .sections()
            .filter(|s| match s.flags() {
                object::SectionFlags::Elf { sh_flags } => {
                    sh_flags & u64::from(elf::SHF_EXECINSTR) != 0
                }
                _ => false,
            })
            .map(|s| (s.address(), s.address().saturating_add(s.size())))
            .filter(|&(start, end)| start < end)
            .collect();
    }
    if let Some(&(_, end)) = ranges.iter().find(|&&(_, end)| end > ADDRESS_LIMIT) {
        return Err(UnwindError::AddressTooLarge { end });
    }
    ranges.sort_unstable();
    // Merge overlapping or touching ranges so `contains` can look at a single one.
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    Ok(CodeRanges(merged))
}

/// `.eh_frame`'s address and bytes: from the section headers, or (stripped section headers)
/// through `PT_GNU_EH_FRAME`, reading up to the end of the `PT_LOAD` segment holding it (the
/// section ends with a zero terminator).
fn find_eh_frame<'data>(file: &ElfFile64<'data, Endianness>) -> Option<(u64, &'data [u8])> {
    if let Some(section) = file.section_by_name(".eh_frame") {
        return section
            .data()
            .ok()
            .filter(|d| !d.is_empty())
            .map(|d| (section.address(), d));
    }
    let endian = file.endian();
    let data = file.data();
    let segment_bytes = |vaddr: u64| -> Option<&'data [u8]> {
        file.elf_program_headers().iter().find_map(|ph| {
            let start = ph.p_vaddr(endian);
            let filesz = ph.p_filesz(endian);
            if ph.p_type(endian) != elf::PT_LOAD || vaddr < start || vaddr >= start + filesz {
                return None;
            }
            let begin = usize::try_from(ph.p_offset(endian) + (vaddr - start)).ok()?;
            let end = usize::try_from(ph.p_offset(endian) + filesz).ok()?;
            data.get(begin..end)
        })
    };
    let hdr = file
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == elf::PT_GNU_EH_FRAME)?;
    let hdr_vaddr = hdr.p_vaddr(endian);
    let hdr_bytes = segment_bytes(hdr_vaddr)?;
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_vaddr);
    let parsed = EhFrameHdr::new(hdr_bytes, LittleEndian)
        .parse(&bases, 8)
        .ok()?;
    let eh_frame_vaddr = parsed.eh_frame_ptr().direct().ok()?;
    segment_bytes(eh_frame_vaddr).map(|bytes| (eh_frame_vaddr, bytes))
}

/// `blocks` sorted by address without those overlapping an earlier block or any of `taken`
/// (sorted, disjoint). Counts the dropped ones.
fn keep_disjoint(mut blocks: Vec<Block>, taken: &[Block], stats: &mut TableStats) -> Vec<Block> {
    blocks.sort_by_key(|b| b.start);
    let mut kept: Vec<Block> = Vec::with_capacity(blocks.len());
    for block in blocks {
        let overlaps_kept = kept.last().is_some_and(|last| block.start < last.end);
        let after = taken.partition_point(|t| t.end <= block.start);
        let overlaps_taken = taken.get(after).is_some_and(|t| t.start < block.end);
        if overlaps_kept || overlaps_taken {
            stats.skipped_fdes.overlapping += 1;
        } else {
            kept.push(block);
        }
    }
    kept
}

/// If `bytes` is the `.plt` CFA expression
/// `DW_OP_breg7 (rsp) 8; DW_OP_breg16 (rip) 0; DW_OP_lit15; DW_OP_and; DW_OP_lit<N>; DW_OP_ge;
/// DW_OP_lit3; DW_OP_shl; DW_OP_plus` (CFA = rsp + 8 + 8 * ((rip & 15) >= N)), its threshold N.
/// binutils uses N = 11 for the classic lazy PLT and 9 for the IBT one; 10 appears in older
/// layouts.
fn plt_threshold(bytes: &[u8]) -> Option<i16> {
    match *bytes {
        [
            0x77,
            0x08,
            0x80,
            0x00,
            0x3f,
            0x1a,
            lit @ 0x39..=0x3b,
            0x2a,
            0x33,
            0x24,
            0x22,
        ] => Some(i16::from(lit - 0x30)),
        _ => None,
    }
}

impl Builder<'_> {
    /// Walks every FDE of `section`, appending its rows to `self.raw` and a block to `blocks`.
    fn collect<'data, S>(&mut self, section: &S, bases: &BaseAddresses, blocks: &mut Vec<Block>)
    where
        S: UnwindSection<Slice<'data>>,
    {
        let mut cies: HashMap<usize, CommonInformationEntry<Slice<'data>>> = HashMap::new();
        let mut entries = section.entries(bases);
        loop {
            let partial = match entries.next() {
                Ok(None) => break,
                Err(_) => {
                    self.stats.section_errors += 1;
                    break;
                }
                Ok(Some(CieOrFde::Cie(cie))) => {
                    cies.insert(cie.offset(), cie);
                    continue;
                }
                Ok(Some(CieOrFde::Fde(partial))) => partial,
            };
            let parsed = partial.parse(|section, bases, offset| {
                let key = UnwindOffset::into(offset);
                if let Some(cie) = cies.get(&key) {
                    return Ok(cie.clone());
                }
                let cie = section.cie_from_offset(bases, offset)?;
                cies.insert(key, cie.clone());
                Ok(cie)
            });
            let Ok(fde) = parsed else {
                self.stats.skipped_fdes.malformed += 1;
                continue;
            };
            let start = fde.initial_address();
            let end = start.saturating_add(fde.len());
            if start == end {
                self.stats.skipped_fdes.empty += 1;
                continue;
            }
            if !self.code.contains(start, end) {
                self.stats.skipped_fdes.outside_code += 1;
                continue;
            }
            let first = self.raw.len();
            if fde.is_signal_trampoline() {
                self.stats.signal_fdes += 1;
                self.raw.push(UnwindRow {
                    pc: start as u32,
                    cfa_type: CFA_SIGNAL,
                    ..UnwindRow::default()
                });
            } else if self.evaluate(section, bases, &fde).is_err() {
                self.raw.truncate(first);
                self.stats.skipped_fdes.malformed += 1;
                continue;
            }
            blocks.push(Block {
                start,
                end,
                first,
                last: self.raw.len(),
            });
        }
    }

    /// Appends one row per row of `fde`'s CFI program.
    fn evaluate<'data, S>(
        &mut self,
        section: &S,
        bases: &BaseAddresses,
        fde: &gimli::FrameDescriptionEntry<Slice<'data>>,
    ) -> gimli::Result<()>
    where
        S: UnwindSection<Slice<'data>>,
    {
        let return_address = fde.cie().return_address_register();
        let mut table = fde.rows(section, bases, &mut self.ctx)?;
        while let Some(row) = table.next_row()? {
            if row.start_address() >= row.end_address() {
                continue;
            }
            let converted = convert(row, section, return_address, &mut self.stats);
            self.raw.push(converted);
        }
        Ok(())
    }

    /// Adds blocks with synthesized rows for the parts of the PLT sections no FDE covers.
    fn synthesize_plt(&mut self, file: &ElfFile64<'_, Endianness>, blocks: &mut Vec<Block>) {
        let has_plt_sec = file.section_by_name(".plt.sec").is_some();
        let rsp = |pc: u64, offset: i32| UnwindRow {
            pc: pc as u32,
            cfa_offset: offset,
            cfa_type: CFA_RSP,
            ..UnwindRow::default()
        };
        let mut added = Vec::new();
        for name in [".plt", ".plt.sec", ".plt.got"] {
            let Some(section) = file.section_by_name(name) else {
                continue;
            };
            let (start, end) = (section.address(), section.address() + section.size());
            if start == end || !self.code.contains(start, end) {
                continue;
            }
            // The section's rules by position.
            let rules: Vec<UnwindRow> = if name == ".plt" {
                // PLT0 (`push GOT[1]` (6 bytes); `jmp *GOT[2]`) runs with the PLT entry's pushed
                // relocation index on the stack; the entries use the rip-dependent PLT rule.
                let threshold = if has_plt_sec { 9 } else { 11 };
                vec![
                    rsp(start, 16),
                    rsp(start + 6, 24),
                    UnwindRow {
                        pc: (start + 16) as u32,
                        cfa_offset: 8,
                        rbp_offset: threshold,
                        cfa_type: CFA_PLT,
                        rbp_type: RBP_SAME,
                    },
                ]
            } else {
                vec![rsp(start, 8)]
            };
            for (gap_start, gap_end) in gaps(blocks, start, end) {
                let first = self.raw.len();
                if let Some(rule) = find_row(&rules, gap_start as u32) {
                    self.raw.push(UnwindRow {
                        pc: gap_start as u32,
                        ..*rule
                    });
                }
                self.raw.extend(
                    rules
                        .iter()
                        .filter(|r| u64::from(r.pc) > gap_start && u64::from(r.pc) < gap_end),
                );
                for row in &self.raw[first..] {
                    match row.cfa_type {
                        CFA_PLT => self.stats.plt_rows += 1,
                        _ => self.stats.rsp_rows += 1,
                    }
                }
                self.stats.synthesized_plt_ranges += 1;
                added.push(Block {
                    start: gap_start,
                    end: gap_end,
                    first,
                    last: self.raw.len(),
                });
            }
        }
        if !added.is_empty() {
            blocks.extend(added);
            blocks.sort_unstable_by_key(|b| b.start);
        }
    }

    /// Lays the blocks' rows out in address order with end-of-FDE markers, then merges runs of
    /// identical rules.
    fn finish(mut self, blocks: &[Block]) -> UnwindTable {
        let mut rows: Vec<UnwindRow> = Vec::with_capacity(self.raw.len() + blocks.len());
        let mut raw_rows = 0;
        let mut push = |row: UnwindRow| {
            raw_rows += 1;
            match rows.last_mut() {
                // A later row at the same pc replaces the earlier one (not expected: blocks are
                // disjoint and markers only go into gaps).
                Some(last) if last.pc == row.pc => {
                    *last = row;
                    let n = rows.len();
                    if n >= 2 && rows[n - 2].same_rule(&rows[n - 1]) {
                        rows.pop();
                    }
                }
                Some(last) if last.same_rule(&row) => {}
                _ => rows.push(row),
            }
        };
        let mut previous_end: Option<u64> = None;
        for block in blocks {
            if let Some(end) = previous_end.filter(|&end| end < block.start) {
                push(UnwindRow::none(end as u32));
            }
            for row in &self.raw[block.first..block.last] {
                push(*row);
            }
            previous_end = Some(block.end);
        }
        if let Some(end) = previous_end.filter(|&end| end < ADDRESS_LIMIT) {
            push(UnwindRow::none(end as u32));
        }
        self.stats.raw_rows = raw_rows;
        self.stats.rows = rows.len();
        rows.shrink_to_fit();
        UnwindTable {
            rows,
            stats: self.stats,
        }
    }
}

/// The parts of `[start, end)` no block covers (`blocks` sorted and disjoint).
fn gaps(blocks: &[Block], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut cursor = start;
    let first = blocks.partition_point(|b| b.end <= start);
    for block in blocks[first..].iter().take_while(|b| b.start < end) {
        if block.start > cursor {
            gaps.push((cursor, block.start));
        }
        cursor = cursor.max(block.end);
    }
    if cursor < end {
        gaps.push((cursor, end));
    }
    gaps
}

/// Maps one gimli row to an [`UnwindRow`], counting what it had to give up on.
fn convert<'data, S>(
    row: &UnwindTableRow<usize>,
    section: &S,
    return_address: Register,
    stats: &mut TableStats,
) -> UnwindRow
where
    S: UnwindSection<Slice<'data>>,
{
    let pc = row.start_address() as u32;
    let unsupported = UnwindRow {
        pc,
        cfa_type: CFA_UNSUPPORTED,
        ..UnwindRow::default()
    };
    match row.register(return_address) {
        Some(RegisterRule::Undefined) => {
            stats.end_rows += 1;
            return UnwindRow {
                pc,
                cfa_type: CFA_END,
                ..UnwindRow::default()
            };
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => {
            stats.unsupported.return_address += 1;
            return unsupported;
        }
    }
    let rbp_rule = row.register(RBP);
    let (cfa_type, cfa_offset) = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let cfa_type = match register {
                RSP => CFA_RSP,
                RBP => CFA_RBP,
                _ => {
                    stats.unsupported.cfa_register += 1;
                    return unsupported;
                }
            };
            let Ok(offset) = i32::try_from(offset) else {
                stats.unsupported.cfa_offset_range += 1;
                return unsupported;
            };
            (cfa_type, offset)
        }
        CfaRule::Expression(expression) => {
            let threshold = expression
                .get(section)
                .ok()
                .and_then(|e| plt_threshold(e.0.slice()));
            return match (threshold, rbp_rule) {
                (Some(threshold), None | Some(RegisterRule::SameValue)) => {
                    stats.plt_rows += 1;
                    UnwindRow {
                        pc,
                        cfa_offset: 8,
                        rbp_offset: threshold,
                        cfa_type: CFA_PLT,
                        rbp_type: RBP_SAME,
                    }
                }
                _ => {
                    stats.unsupported.cfa_expression += 1;
                    unsupported
                }
            };
        }
    };
    let (rbp_type, rbp_offset) = match rbp_rule {
        None | Some(RegisterRule::SameValue) => (RBP_SAME, 0),
        Some(RegisterRule::Offset(offset)) => match i16::try_from(offset) {
            Ok(offset) => (RBP_AT_CFA, offset),
            Err(_) => {
                stats.unsupported.rbp_offset_range += 1;
                (RBP_UNSUPPORTED, 0)
            }
        },
        Some(_) => {
            stats.unsupported.rbp_rule += 1;
            (RBP_UNSUPPORTED, 0)
        }
    };
    match cfa_type {
        CFA_RSP => stats.rsp_rows += 1,
        _ => stats.rbp_rows += 1,
    }
    UnwindRow {
        pc,
        cfa_offset,
        rbp_offset,
        cfa_type,
        rbp_type,
    }
}
