//! Minimal x86-64 ELF files for the synthetic tests: the given sections and one `R+X` `PT_LOAD`
//! segment from the first allocated section to the end of the last one (file offset = address -
//! base).
use object::{
    Endianness, elf,
    write::elf::{FileHeader, ProgramHeader, SectionHeader, Writer},
};

/// One section of a test ELF.
pub(super) struct TestSection {
    pub name: &'static str,
    /// Address (allocated sections) or ignored (0 for non-allocated ones).
    pub addr: u64,
    pub data: Vec<u8>,
    /// `SHF_*` flags; `SHF_ALLOC` decides whether the section is in the segment.
    pub flags: u64,
}

impl TestSection {
    /// Executable code filled with `int3`.
    pub(super) fn code(name: &'static str, addr: u64, size: usize) -> Self {
        Self {
            name,
            addr,
            data: vec![0xcc; size],
            flags: u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR),
        }
    }

    /// Read-only allocated data (`.eh_frame`).
    pub(super) fn rodata(name: &'static str, addr: u64, data: Vec<u8>) -> Self {
        Self {
            name,
            addr,
            data,
            flags: u64::from(elf::SHF_ALLOC),
        }
    }

    /// Non-allocated data (`.debug_frame`).
    pub(super) fn debug(name: &'static str, data: Vec<u8>) -> Self {
        Self {
            name,
            addr: 0,
            data,
            flags: 0,
        }
    }

    fn is_alloc(&self) -> bool {
        self.flags & u64::from(elf::SHF_ALLOC) != 0
    }
}

/// An `ET_DYN` file for `machine` whose segment starts at `base` (allocated sections must be at
/// or above `base + 0x1000`, in increasing address order).
pub(super) fn build_elf(base: u64, machine: u16, sections: &[TestSection]) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut writer = Writer::new(Endianness::Little, true, &mut buffer);
    writer.reserve_file_header();
    writer.reserve_program_headers(1);
    writer.reserve_null_section_index();
    let names: Vec<_> = sections
        .iter()
        .map(|s| {
            let name = writer.add_section_name(s.name.as_bytes());
            writer.reserve_section_index();
            name
        })
        .collect();
    writer.reserve_shstrtab_section_index();

    let mut offsets = Vec::with_capacity(sections.len());
    let mut segment_start = None;
    let mut segment_end = 0;
    for section in sections {
        let offset = if section.is_alloc() {
            let offset = usize::try_from(section.addr - base).expect("offset");
            writer.reserve_until(offset);
            let reserved = writer.reserve(section.data.len(), 1);
            segment_start.get_or_insert(reserved);
            segment_end = reserved + section.data.len();
            reserved
        } else {
            writer.reserve(section.data.len(), 8)
        };
        offsets.push(offset);
    }
    writer.reserve_shstrtab();
    writer.reserve_section_headers();

    writer
        .write_file_header(&FileHeader {
            os_abi: elf::ELFOSABI_NONE,
            abi_version: 0,
            e_type: elf::ET_DYN,
            e_machine: machine,
            e_entry: 0,
            e_flags: 0,
        })
        .expect("file header");
    writer.write_align_program_headers();
    let segment_start = segment_start.unwrap_or(0);
    let segment_size = (segment_end - segment_start) as u64;
    writer.write_program_header(&ProgramHeader {
        p_type: elf::PT_LOAD,
        p_flags: elf::PF_R | elf::PF_X,
        p_offset: segment_start as u64,
        p_vaddr: base + segment_start as u64,
        p_paddr: base + segment_start as u64,
        p_filesz: segment_size,
        p_memsz: segment_size,
        p_align: 0x1000,
    });
    for (section, &offset) in sections.iter().zip(&offsets) {
        if section.is_alloc() {
            writer.pad_until(offset);
        } else {
            writer.write_align(8);
        }
        writer.write(&section.data);
    }
    writer.write_shstrtab();
    writer.write_null_section_header();
    for ((section, &offset), &name) in sections.iter().zip(&offsets).zip(&names) {
        writer.write_section_header(&SectionHeader {
            name: Some(name),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: section.flags,
            sh_addr: if section.is_alloc() { section.addr } else { 0 },
            sh_offset: offset as u64,
            sh_size: section.data.len() as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 1,
            sh_entsize: 0,
        });
    }
    writer.write_shstrtab_section_header();
    buffer
}
