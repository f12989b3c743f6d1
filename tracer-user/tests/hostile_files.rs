//! Files read from a target (its executable, libraries, debug files) are untrusted input: a
//! corrupted or truncated ELF file must give an error or a smaller result, never a panic. Each
//! property feeds real ELF files, with bytes changed in the parts each parser reads (headers,
//! symbol tables, `.eh_frame`, Go's tables) and cut short, to the parsers leaktrace runs on
//! them: the unwind-table compiler, allocator discovery, Go's table reader and Go detection,
//! and the debug-file locator.
//!
//! `PROPTEST_CASES` sets the cases per property (256 by default; `cargo xtask fuzz` runs more).
#![expect(clippy::unwrap_used, reason = "tests panic on broken set-up")]

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use leaktrace::{
    source::go::binary,
    symbolize::{
        debuginfo::{DebugDirs, SymbolFile},
        gopclntab::GoTable,
    },
    target::allocator::{self, Selection},
    unwind::table,
};
use object::{Object as _, ObjectSection as _};
use proptest::prelude::*;

/// A real file to corrupt, and the byte ranges its parsers read.
struct Seed {
    name: &'static str,
    data: Vec<u8>,
    regions: Vec<(usize, usize)>,
}

/// Real ELF files every test machine has (`cargo xtask setup` installs the packages): a C
/// program, gperftools' and jemalloc's libraries (allocator symbols under several names), and
/// a Go 1.19 program.
const SEEDS: &[&str] = &[
    "/usr/bin/true",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/go-1.19/pkg/tool/linux_amd64/pack",
];

/// Sections whose bytes the parsers interpret.
const SECTIONS: &[&str] = &[
    ".eh_frame",
    ".eh_frame_hdr",
    ".dynsym",
    ".dynstr",
    ".symtab",
    ".strtab",
    ".gopclntab",
    ".go.buildinfo",
    ".note.gnu.build-id",
    ".gnu_debuglink",
    ".text",
];

fn seeds() -> &'static [Seed] {
    static SEEDS_READ: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS_READ.get_or_init(|| {
        SEEDS
            .iter()
            .map(|name| {
                let data = fs::read(name)
                    .unwrap_or_else(|e| panic!("{name}: {e} (cargo xtask setup installs it)"));
                let file = object::File::parse(&*data).unwrap();
                // The ELF header, then the program and section header tables.
                let mut regions = vec![(0, 64)];
                let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
                let half = |at: usize| u16::from_le_bytes(data[at..at + 2].try_into().unwrap());
                let (phoff, shoff) = (word(0x20) as usize, word(0x28) as usize);
                regions.push((phoff, usize::from(half(0x36)) * usize::from(half(0x38))));
                regions.push((shoff, usize::from(half(0x3a)) * usize::from(half(0x3c))));
                for section in file.sections() {
                    if let (Ok(name), Some((offset, size))) = (section.name(), section.file_range())
                        && SECTIONS.contains(&name)
                    {
                        // The first 64 KiB: where the headers and first entries are.
                        regions.push((offset as usize, (size as usize).min(64 << 10)));
                    }
                }
                regions.retain(|&(start, len)| len > 0 && start + len <= data.len());
                Seed {
                    name,
                    data,
                    regions,
                }
            })
            .collect()
    })
}

/// A corrupted copy of a seed: which seed, which region, bytes set at offsets in it, and where
/// the file is cut (a fraction of its length, or not at all).
#[derive(Debug, Clone)]
struct Damage {
    seed: usize,
    /// Shown when a case fails: which region the writes landed in.
    #[expect(dead_code, reason = "read through Debug in failure reports")]
    region: usize,
    writes: Vec<(usize, u8)>,
    cut: Option<f64>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        0..SEEDS.len(),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..24),
        prop::option::weighted(0.3, 0.0..1.0f64),
    )
        .prop_map(|(seed, region, writes, cut)| {
            let seed_data = &seeds()[seed];
            let region = region.index(seed_data.regions.len());
            let (start, len) = seed_data.regions[region];
            Damage {
                seed,
                region,
                writes: writes
                    .into_iter()
                    .map(|(at, byte)| (start + at.index(len), byte))
                    .collect(),
                cut: cut.map(|c| c * seed_data.data.len() as f64),
            }
        })
}

impl Damage {
    fn apply(&self) -> Vec<u8> {
        let mut data = seeds()[self.seed].data.clone();
        for &(at, byte) in &self.writes {
            data[at] = byte;
        }
        if let Some(cut) = self.cut {
            data.truncate(cut as usize);
        }
        data
    }

    /// Writes the damaged file for the parsers that read a path.
    fn write(&self, dir: &Path) -> PathBuf {
        let name = Path::new(seeds()[self.seed].name).file_name().unwrap();
        let path = dir.join(name);
        fs::write(&path, self.apply()).unwrap();
        path
    }
}

fn config() -> ProptestConfig {
    // Shrinking a failure re-runs the parsers many times; keep it bounded.
    ProptestConfig {
        max_shrink_iters: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn undamaged_seeds_are_read_in_full() {
    // The properties below would pass vacuously if the seeds were not read to begin with.
    for seed in seeds() {
        let data = &seed.data;
        assert!(seed.regions.len() >= 5, "{}: {:?}", seed.name, seed.regions);
        let go = GoTable::parse(data).unwrap();
        if seed.name.contains("/go-") {
            let go = go.unwrap();
            assert!(go.function_named("runtime.mallocgc").is_some());
            assert!(binary::locate_by_code(data).is_ok());
            assert!(binary::detect(Path::new(seed.name)).unwrap().is_some());
        } else {
            assert!(go.is_none());
            let compiled = table::compile(data).unwrap();
            assert!(compiled.rows.len() > 10, "{}", seed.name);
        }
        let found = allocator::find_in_object(Path::new(seed.name), &Selection::default());
        let wants_allocator = seed.name.contains("malloc");
        assert_eq!(
            found.is_ok_and(|f| !f.labels.is_empty()),
            wants_allocator,
            "{}",
            seed.name
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unwind_tables_compile_or_fail_cleanly(damage in damage()) {
        let data = damage.apply();
        if let Ok(compiled) = table::compile(&data) {
            // Whatever came out can be searched.
            for vaddr in [0, 0x1000, u64::MAX] {
                let _ = compiled.lookup(vaddr);
            }
        }
        let _ = table::load_bias(&data, 0x5555_0000_0000, 0);
    }

    #[test]
    fn allocator_discovery_reads_or_skips(damage in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let path = damage.write(dir.path());
        let _ = allocator::find_in_object(&path, &Selection::default());
    }

    #[test]
    fn go_tables_parse_or_fail_cleanly(damage in damage()) {
        let data = damage.apply();
        if let Ok(Some(go)) = GoTable::parse(&data) {
            let _ = go.function_named("runtime.mallocgc");
            for pc in [0, 0x40_1000, 0x45_0000, u64::MAX] {
                let _ = go.frames(pc);
            }
        }
        let _ = binary::locate_by_code(&data);
        let dir = tempfile::tempdir().unwrap();
        let _ = binary::detect(&damage.write(dir.path()));
    }

    #[test]
    fn debug_files_are_located_or_skipped(damage in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let path = damage.write(dir.path());
        let file = Arc::new(fs::File::open(&path).unwrap());
        let dirs = DebugDirs::new(&[dir.path().to_path_buf()]);
        let located = SymbolFile::locate(file, &path.to_string_lossy(), std::process::id(), &dirs);
        let _ = located.build_id_hex();
        let _ = located.vaddr(0x1000);
    }
}
