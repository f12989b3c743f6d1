//! End to end in user space: this test process captures its own registers, unwinds its own
//! stack with tables compiled from `/proc/self/exe` and libc, and symbolizes the frames.
//!
//! Care points:
//! - The registers are captured and the stack unwound inside the same innermost function, so the
//!   frames being read stay live (the unwinder's own calls only use stack below them).
//! - The captured rip is the instruction after the `lea`; rsp is read by the next instruction,
//!   with no stack change in between, so the CFI row at rip describes that rsp.
//! - Memory is read through `/proc/self/mem`, so a wrong address fails the read instead of
//!   crashing the test.
//! - Every function of the chain is `#[inline(never)]` and uses its callee's result after the
//!   call (`black_box`), so no call becomes a tail call, even in release builds.
use std::{collections::HashMap, fs::File, hint::black_box, os::unix::fs::FileExt as _};

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Process, Source},
    },
};

use crate::{
    target::parse_maps,
    unwind::{
        MAX_FRAMES, Mapping, Registers, StopReason, UnwindTable, Unwound, compile, load_bias,
        unwind,
    },
};

/// The executable mappings of this process, with tables for the executable and libc.
struct OwnMappings {
    tables: Vec<UnwindTable>,
    /// (start, end, bias, index into `tables`).
    mappings: Vec<(u64, u64, u64, Option<usize>)>,
}

impl OwnMappings {
    fn load() -> Self {
        let exe = std::fs::read_link("/proc/self/exe").expect("readlink /proc/self/exe");
        let maps = parse_maps(&std::fs::read_to_string("/proc/self/maps").expect("maps"));
        let mut tables = Vec::new();
        let mut by_path: HashMap<String, (Vec<u8>, usize)> = HashMap::new();
        let mut mappings = Vec::new();
        for map in maps.iter().filter(|m| m.is_exec()) {
            let wanted = map.is_file()
                && (std::path::Path::new(&map.path) == exe || map.path.ends_with("/libc.so.6"));
            if !wanted {
                mappings.push((map.start, map.end, 0, None));
                continue;
            }
            if !by_path.contains_key(&map.path) {
                let data = std::fs::read(&map.path).expect("read mapped file");
                let table = compile(&data).expect("compile mapped file");
                tables.push(table);
                by_path.insert(map.path.clone(), (data, tables.len() - 1));
            }
            let (data, index) = &by_path[&map.path];
            let bias = load_bias(data, map.start, map.offset).expect("load bias");
            mappings.push((map.start, map.end, bias, Some(*index)));
        }
        assert_eq!(
            tables.len(),
            2,
            "expected the executable and libc: {maps:#?}"
        );
        Self { tables, mappings }
    }

    fn mappings(&self) -> Vec<Mapping<'_>> {
        self.mappings
            .iter()
            .map(|&(start, end, bias, table)| Mapping {
                start,
                end,
                bias,
                table: table.map(|i| &self.tables[i]),
            })
            .collect()
    }
}

/// Reads a word of this process's memory, failing cleanly on unmapped addresses.
fn read_word(mem: &File, addr: u64) -> Option<u64> {
    let mut word = [0; 8];
    mem.read_exact_at(&mut word, addr).ok()?;
    Some(u64::from_le_bytes(word))
}

#[inline(never)]
fn capture_and_unwind(mappings: &[Mapping<'_>]) -> Unwound {
    let rip: u64;
    let rsp: u64;
    let rbp: u64;
    // SAFETY: copies rip, rsp and rbp into general registers; reads and writes no memory, leaves
    // the stack and the flags alone.
    unsafe {
        std::arch::asm!(
            "lea {rip}, [rip]",
            "mov {rsp}, rsp",
            "mov {rbp}, rbp",
            rip = out(reg) rip,
            rsp = out(reg) rsp,
            rbp = out(reg) rbp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let mem = File::open("/proc/self/mem").expect("open /proc/self/mem");
    let unwound = unwind(
        mappings,
        Registers { rip, rsp, rbp },
        |addr| read_word(&mem, addr),
        MAX_FRAMES,
    );
    black_box(unwound)
}

#[inline(never)]
fn chain_inner(mappings: &[Mapping<'_>]) -> Unwound {
    let unwound = capture_and_unwind(black_box(mappings));
    black_box(unwound)
}

#[inline(never)]
fn chain_middle(mappings: &[Mapping<'_>]) -> Unwound {
    let unwound = chain_inner(black_box(mappings));
    black_box(unwound)
}

#[inline(never)]
fn chain_outer(mappings: &[Mapping<'_>]) -> Unwound {
    let unwound = chain_middle(black_box(mappings));
    black_box(unwound)
}

/// Function names of the frames (return addresses looked up one byte earlier).
fn symbolize(frames: &[u64]) -> Vec<String> {
    let symbolizer = Symbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .enable_demangling(true)
        .build();
    let source = Source::Process(Process::new(Pid::Slf));
    let lookups: Vec<u64> = frames
        .iter()
        .enumerate()
        .map(|(i, &addr)| if i == 0 { addr } else { addr - 1 })
        .collect();
    symbolizer
        .symbolize(&source, Input::AbsAddr(&lookups))
        .expect("symbolize")
        .iter()
        .map(|s| match s {
            Symbolized::Sym(sym) => sym.name.to_string(),
            Symbolized::Unknown(reason) => format!("?? ({reason:?})"),
        })
        .collect()
}

#[test]
fn unwinds_its_own_stack_through_the_test_harness_to_the_thread_start() {
    let own = OwnMappings::load();
    let mappings = own.mappings();
    let unwound = chain_outer(&mappings);
    let names = symbolize(&unwound.frames);
    let listing: Vec<String> = unwound
        .frames
        .iter()
        .zip(&names)
        .map(|(addr, name)| format!("{addr:#014x} {name}"))
        .collect();
    eprintln!("{:?}:\n{}", unwound.stop, listing.join("\n"));

    let expected = [
        "capture_and_unwind",
        "chain_inner",
        "chain_middle",
        "chain_outer",
        "unwinds_its_own_stack_through_the_test_harness_to_the_thread_start",
    ];
    assert!(names.len() > expected.len(), "{listing:#?}");
    for (name, wanted) in names.iter().zip(expected) {
        assert!(
            name.contains("self_unwind") && name.contains(wanted),
            "expected {wanted}, got {name}\n{listing:#?}"
        );
    }
    // Through libtest and std's thread start into libc (start_thread, then clone3, whose
    // child side has an undefined return address), or on the main thread down to _start.
    assert_eq!(unwound.stop, StopReason::End, "{listing:#?}");
    assert_eq!(unwound.fp_steps, 0, "{listing:#?}");
}
