//! Tables of real binaries: a gcc-built fixture and the system's libc, checked against readelf.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use object::{Object as _, ObjectSymbol as _};

use super::readelf::{check_table, readelf_fdes};
use crate::unwind::{
    UnwindRow, UnwindTable, compile,
    row::{CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, RBP_AT_CFA},
};

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

fn fixture_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/unwind/chain.c")
}

/// Builds the C fixture with `gcc -O2 -fomit-frame-pointer` into `dir`.
fn build_fixture(dir: &Path) -> PathBuf {
    let output = dir.join("chain");
    let status = Command::new("gcc")
        .args([
            "-O2",
            "-fomit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-fno-ipa-icf",
            "-o",
        ])
        .arg(&output)
        .arg(fixture_source())
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed");
    output
}

/// Address and size of each function symbol.
fn function_symbols(data: &[u8]) -> Vec<(String, u64, u64)> {
    let file = object::File::parse(data).expect("parse ELF");
    file.symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text)
        .filter_map(|s| Some((s.name().ok()?.to_owned(), s.address(), s.size())))
        .collect()
}

fn symbol(symbols: &[(String, u64, u64)], name: &str) -> (u64, u64) {
    symbols
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|&(_, address, size)| (address, size))
        .unwrap_or_else(|| panic!("no symbol {name}"))
}

/// The table rows applying inside `[start, start + size)`, the first one clipped to `start`.
fn rows_in(table: &UnwindTable, (start, size): (u64, u64)) -> Vec<UnwindRow> {
    let mut rows: Vec<UnwindRow> = table
        .rows
        .iter()
        .filter(|r| u64::from(r.pc) > start && u64::from(r.pc) < start + size)
        .copied()
        .collect();
    if let Some(first) = table.lookup(start) {
        rows.insert(
            0,
            UnwindRow {
                pc: start as u32,
                ..*first
            },
        );
    }
    rows
}

#[test]
fn gcc_fixture_rows_match_readelf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = build_fixture(dir.path());
    let data = std::fs::read(&binary).expect("read fixture");
    let table = compile(&data).expect("compile");
    let checked = check_table(&table, &readelf_fdes(&binary));
    assert!(checked > 20, "only {checked} readelf rows");

    let symbols = function_symbols(&data);
    // leaf: sub $8,%rsp around the call: rsp+8 -> rsp+16 -> rsp+8.
    let leaf = rows_in(&table, symbol(&symbols, "leaf"));
    let leaf_offsets: Vec<i32> = leaf.iter().map(|r| r.cfa_offset).collect();
    assert_eq!(leaf_offsets, [8, 16, 8], "{leaf:x?}");
    assert!(leaf.iter().all(|r| r.cfa_type == CFA_RSP));

    // f3 pushes r13, r12, rbp, rbx (rbp as a general register, like glibc's malloc): rsp-based
    // all along, up to rsp+48, with rbp saved at CFA-32.
    let f3 = rows_in(&table, symbol(&symbols, "f3"));
    assert!(f3.iter().all(|r| r.cfa_type == CFA_RSP), "{f3:x?}");
    assert_eq!(f3.first().map(|r| r.cfa_offset), Some(8));
    assert_eq!(f3.iter().map(|r| r.cfa_offset).max(), Some(48));
    assert!(
        f3.iter()
            .any(|r| r.rbp_type == RBP_AT_CFA && r.rbp_offset == -32),
        "{f3:x?}"
    );

    // vla_frame: alloca makes gcc set up rbp; the CFA is rbp+16 there.
    let vla = rows_in(&table, symbol(&symbols, "vla_frame"));
    assert!(
        vla.iter().any(|r| r.cfa_type == CFA_RBP
            && r.cfa_offset == 16
            && r.rbp_type == RBP_AT_CFA
            && r.rbp_offset == -16),
        "{vla:x?}"
    );

    // big_frame: a 100000-byte frame, beyond 16-bit offsets.
    let big = rows_in(&table, symbol(&symbols, "big_frame"));
    assert!(big.iter().any(|r| r.cfa_offset > 100_000), "{big:x?}");

    // _start (crt1) has an undefined return address.
    let start = rows_in(&table, symbol(&symbols, "_start"));
    assert_eq!(start.first().map(|r| r.cfa_type), Some(CFA_END));

    // The .plt FDE's expression became the PLT rule.
    assert!(
        table
            .rows
            .iter()
            .any(|r| r.cfa_type == CFA_PLT && r.rbp_offset == 11)
    );
    let stats = table.stats;
    assert_eq!(stats.unsupported, Default::default(), "{stats:?}");
    assert_eq!(stats.skipped_fdes, Default::default(), "{stats:?}");
}

#[test]
fn eh_frame_is_found_without_section_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = build_fixture(dir.path());
    let data = std::fs::read(&binary).expect("read fixture");
    let mut stripped = data.clone();
    // e_shoff (0x28, 8 bytes), e_shnum (0x3c), e_shstrndx (0x3e): no section headers.
    stripped[0x28..0x30].fill(0);
    stripped[0x3c..0x40].fill(0);
    let from_headers = compile(&data).expect("compile");
    let from_segments = compile(&stripped).expect("compile without section headers");
    assert_eq!(from_segments.rows, from_headers.rows);
}

#[test]
fn libc_table_is_sane() {
    let data = std::fs::read(LIBC).expect("read libc");
    let started = Instant::now();
    let table = compile(&data).expect("compile libc");
    let elapsed = started.elapsed();
    let stats = table.stats;
    eprintln!("libc: {elapsed:?} (debug build), {stats:#?}");
    assert!(stats.rows > 10_000, "{stats:?}");
    assert!(stats.fdes > 3_000, "{stats:?}");
    assert_eq!(stats.section_errors, 0);
    assert!(stats.plt_rows > 0);
    assert!(table.rows.iter().any(|r| r.cfa_type == CFA_PLT));

    // __restore_rt (not in .dynsym) is the only signal trampoline; its FDE starts one byte before
    // the code (`mov $15, %rax; syscall`) so that a return-address lookup (RA - 1) finds it.
    let signal: Vec<&UnwindRow> = table
        .rows
        .iter()
        .filter(|r| r.cfa_type == CFA_SIGNAL)
        .collect();
    assert_eq!(signal.len(), 1, "{signal:x?}");
    assert_eq!(stats.signal_fdes, 1);
    let file = object::File::parse(&*data).expect("parse libc");
    let text = file
        .sections()
        .find(|s| {
            use object::ObjectSection as _;
            s.name() == Ok(".text")
        })
        .expect(".text");
    let code = {
        use object::ObjectSection as _;
        let offset = u64::from(signal[0].pc) + 1 - text.address();
        let data = text.data().expect("text data");
        data[offset as usize..offset as usize + 9].to_vec()
    };
    assert_eq!(code, [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05]);

    // Undefined return addresses: the child side of clone (and of clone3, not exported).
    let symbols = function_symbols(&data);
    let (clone, clone_size) = symbol(&symbols, "__clone");
    let ends: Vec<u64> = table
        .rows
        .iter()
        .filter(|r| r.cfa_type == CFA_END)
        .map(|r| u64::from(r.pc))
        .collect();
    assert!(
        ends.iter().any(|&pc| pc > clone && pc < clone + clone_size),
        "{ends:x?}"
    );

    // Every row gimli produced agrees with readelf's interpretation.
    let checked = check_table(&table, &readelf_fdes(Path::new(LIBC)));
    assert!(checked > 20_000, "only {checked} readelf rows");
    assert_eq!(table.rows.last().map(|r| r.cfa_type), Some(CFA_NONE));
}

/// `cargo test --release -p leaktrace --lib unwind -- --ignored --nocapture big_binary`:
/// compiles a big binary's table (`LEAKTRACE_UNWIND_BIG`, default: the toolchain's `cargo`) and
/// prints the time and the statistics.
#[test]
#[ignore = "a timing measurement, meaningful in release mode only"]
fn big_binary_compile_time() {
    let path = std::env::var_os("LEAKTRACE_UNWIND_BIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let output = Command::new("rustc")
                .args(["--print", "sysroot"])
                .output()
                .expect("rustc --print sysroot");
            let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            Path::new(&sysroot).join("bin/cargo")
        });
    let data = std::fs::read(&path).expect("read the big binary");
    for _ in 0..3 {
        let started = Instant::now();
        let table = compile(&data).expect("compile");
        let elapsed = started.elapsed();
        let mut by_type = [0usize; 7];
        for row in &table.rows {
            by_type[usize::from(row.cfa_type.min(6))] += 1;
        }
        eprintln!(
            "{}: {} MB, {elapsed:?}, {} rows ({} raw), rows by cfa_type {by_type:?}, {:#?}",
            path.display(),
            data.len() / 1_000_000,
            table.rows.len(),
            table.stats.raw_rows,
            table.stats
        );
    }
    let libc = std::fs::read(LIBC).expect("read libc");
    let started = Instant::now();
    let table = compile(&libc).expect("compile libc");
    eprintln!(
        "libc: {:?}, {} rows ({} raw)",
        started.elapsed(),
        table.rows.len(),
        table.stats.raw_rows
    );
}
