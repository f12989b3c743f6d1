//! Finding every allocator a target uses and where to probe each of its entry points.
//!
//! A process can allocate through several allocators at once: the C API (`malloc`, `free` and
//! friends) from the first object in its symbol lookup order that defines it (the executable,
//! a preloaded or linked allocator library such as `libjemalloc.so.2`, else glibc), and beside
//! it allocators under prefixes of their own, linked into the executable or a library:
//! jemalloc's `je_`/`_rjem_` API with `mallocx`, `rallocx`, `xallocx`, `sdallocx` and
//! `dallocx`; mimalloc's `mi_*`; gperftools tcmalloc's `tc_*`; Google tcmalloc's
//! `TCMallocInternal*`; the C++ `operator new`/`delete` of an allocator library that defines
//! them; and Rust's allocator shim (`__rust_alloc` and friends, `__rustc::`-mangled in current
//! Rust) when a Rust program's global allocator is none of those. [`find_for_process`] and
//! [`find_for_executable`] find them all from the symbol tables (`.dynsym` and `.symtab`,
//! demangled), one [`Allocator`] per object with a [`ProbePoint`] per distinct entry point
//! (aliases at one address share it), each labelled with its allocator's name for the rows.
//!
//! A call made from inside another traced call is counted once, by the outer one (the eBPF
//! side's nesting guard), so probing C++ `new` and the `malloc` it calls, or `__rust_alloc`
//! and the allocator behind it, counts each allocation once.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use iced_x86::{Decoder, DecoderOptions, FlowControl, Register};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use tracer_common::AllocKind;

use crate::{
    probe::site::{ProbeSite, choose_site},
    target::{Mapping, Process},
};

/// Why no allocator could be found.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// No mapped object defines an allocator leaktrace knows, or `--allocator` matched none.
    #[error("{what} has no allocator to probe{hint}")]
    NoMalloc {
        /// The target, described.
        what: String,
        /// Extra hint (e.g. that it is a Go program).
        hint: String,
    },
    /// The process could not be inspected.
    #[error(transparent)]
    Process(#[from] crate::target::ProcessError),
    /// An object file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// One probe to attach.
#[derive(Clone, Debug)]
pub struct ProbePoint {
    /// What the call does, as the eBPF side handles it.
    pub kind: AllocKind,
    /// The symbol probed (`_rjem_sdallocx`).
    pub symbol: String,
    /// Other symbols at the same address (e.g. glibc's `memalign` is `aligned_alloc`): probed
    /// once, under `symbol`, so each call is seen once.
    pub aliases: Vec<String>,
    /// Its allocator: an index into [`Allocators::labels`].
    pub label: u8,
    /// Symbol address (ELF virtual address).
    pub symbol_addr: u64,
    /// File offset of the probed instruction.
    pub file_offset: u64,
    /// Where in the function and why.
    pub site: ProbeSite,
}

/// One object (executable or library) and the allocator entry points probed in it.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// Path to attach to, openable from leaktrace's mount namespace.
    pub attach_path: PathBuf,
    /// Path as the target sees it.
    pub display_path: String,
    /// One point per distinct entry point found.
    pub points: Vec<ProbePoint>,
    /// C API entry points this object does not define, when it is the one `malloc` resolves to
    /// (e.g. `pvalloc` in some libcs).
    pub missing: Vec<&'static str>,
}

/// Every allocator of a target.
#[derive(Clone, Debug, Default)]
pub struct Allocators {
    /// The objects to probe, the one the C API resolves to first.
    pub objects: Vec<Allocator>,
    /// The allocators' names (`glibc`, `jemalloc`): what rows, exports and pprof samples are
    /// labelled with. A [`ProbePoint::label`] indexes this.
    pub labels: Vec<String>,
    /// Allocators found but not traced because `--allocator` left them out: `mimalloc in
    /// /srv/app`.
    pub left_out: Vec<String>,
    /// Allocation functions deliberately not probed, each with why.
    pub not_probed: Vec<String>,
}

impl Allocators {
    /// The label of `point`.
    pub fn label_of(&self, point: &ProbePoint) -> &str {
        self.labels
            .get(usize::from(point.label))
            .map_or("?", String::as_str)
    }

    /// The object the C API (`malloc`) resolves to, if one is probed.
    pub fn malloc_owner(&self) -> Option<&Allocator> {
        self.objects.first().filter(|o| {
            o.points
                .iter()
                .any(|p| p.symbol == "malloc" || p.aliases.iter().any(|a| a == "malloc"))
        })
    }
}

/// One family of allocator entry points, as symbol names after a prefix.
#[derive(Clone, Copy, Debug)]
struct Family {
    /// The name rows carry; `None` for the C API, named after the object that defines it.
    label: Option<&'static str>,
    /// The prefixes it appears under.
    prefixes: &'static [&'static str],
    /// Entries that must all be defined for it to count as there, besides one allocating and
    /// one freeing entry (linkers drop the entries a program never calls).
    marker: &'static [&'static str],
    /// Its entry points.
    entries: &'static [(&'static str, AllocKind)],
}

use AllocKind::{
    AlignedAlloc, Calloc, Free, Malloc, Memalign, Mmap, Mremap, Munmap, PosixMemalign, Pvalloc,
    Realloc, ReallocArray, RustRealloc, Valloc, Xallocx,
};

/// The C allocation API (glibc, and every allocator that replaces it).
const C_API: &[(&str, AllocKind)] = &[
    ("malloc", Malloc),
    ("calloc", Calloc),
    ("realloc", Realloc),
    ("reallocarray", ReallocArray),
    ("posix_memalign", PosixMemalign),
    ("aligned_alloc", AlignedAlloc),
    ("memalign", Memalign),
    ("valloc", Valloc),
    ("pvalloc", Pvalloc),
    ("free", Free),
    ("free_sized", Free),
    ("free_aligned_sized", Free),
];

/// jemalloc's own API, beside its C API.
const JEMALLOC_API: &[(&str, AllocKind)] = &[
    ("mallocx", Malloc),
    ("rallocx", Realloc),
    ("xallocx", Xallocx),
    ("sdallocx", Free),
    ("dallocx", Free),
];

/// jemalloc under a prefix (`_rjem_`, `je_`): its C API and its own, one family (a Rust
/// program's tikv-jemallocator calls `_rjem_malloc` but frees with `_rjem_sdallocx` only).
const JEMALLOC_PREFIXED_API: &[(&str, AllocKind)] = &[
    ("malloc", Malloc),
    ("calloc", Calloc),
    ("realloc", Realloc),
    ("posix_memalign", PosixMemalign),
    ("aligned_alloc", AlignedAlloc),
    ("memalign", Memalign),
    ("valloc", Valloc),
    ("free", Free),
    ("mallocx", Malloc),
    ("rallocx", Realloc),
    ("xallocx", Xallocx),
    ("sdallocx", Free),
    ("dallocx", Free),
];

/// mimalloc's API (`mi_` prefix). Sizes are where the eBPF side reads them for each shape.
const MIMALLOC_API: &[(&str, AllocKind)] = &[
    ("malloc", Malloc),
    ("zalloc", Malloc),
    ("malloc_small", Malloc),
    ("zalloc_small", Malloc),
    ("calloc", Calloc),
    ("mallocn", Calloc),
    ("realloc", Realloc),
    ("reallocf", Realloc),
    ("rezalloc", Realloc),
    ("reallocn", ReallocArray),
    ("recalloc", ReallocArray),
    ("malloc_aligned", Malloc),
    ("zalloc_aligned", Malloc),
    ("malloc_aligned_at", Malloc),
    ("zalloc_aligned_at", Malloc),
    ("calloc_aligned", Calloc),
    ("calloc_aligned_at", Calloc),
    ("realloc_aligned", Realloc),
    ("realloc_aligned_at", Realloc),
    ("rezalloc_aligned", Realloc),
    ("aligned_alloc", AlignedAlloc),
    ("memalign", Memalign),
    ("posix_memalign", PosixMemalign),
    ("valloc", Valloc),
    ("pvalloc", Pvalloc),
    ("new", Malloc),
    ("new_aligned", Malloc),
    ("new_nothrow", Malloc),
    ("new_aligned_nothrow", Malloc),
    ("new_n", Calloc),
    ("new_realloc", Realloc),
    ("new_reallocn", ReallocArray),
    ("free", Free),
    ("free_size", Free),
    ("free_aligned", Free),
    ("free_size_aligned", Free),
];

/// gperftools tcmalloc's API (`tc_` prefix).
const TCMALLOC_API: &[(&str, AllocKind)] = &[
    ("malloc", Malloc),
    ("malloc_skip_new_handler", Malloc),
    ("calloc", Calloc),
    ("realloc", Realloc),
    ("memalign", Memalign),
    ("posix_memalign", PosixMemalign),
    ("valloc", Valloc),
    ("pvalloc", Pvalloc),
    ("new", Malloc),
    ("newarray", Malloc),
    ("new_nothrow", Malloc),
    ("newarray_nothrow", Malloc),
    ("new_aligned", Malloc),
    ("newarray_aligned", Malloc),
    ("new_aligned_nothrow", Malloc),
    ("newarray_aligned_nothrow", Malloc),
    ("free", Free),
    ("cfree", Free),
    ("free_sized", Free),
    ("delete", Free),
    ("deletearray", Free),
    ("delete_sized", Free),
    ("deletearray_sized", Free),
    ("delete_nothrow", Free),
    ("deletearray_nothrow", Free),
    ("delete_aligned", Free),
    ("deletearray_aligned", Free),
    ("delete_sized_aligned", Free),
    ("deletearray_sized_aligned", Free),
    ("delete_aligned_nothrow", Free),
    ("deletearray_aligned_nothrow", Free),
];

/// Google tcmalloc's internal entry points (`TCMallocInternal` prefix), which its `malloc` and
/// `operator new` alias.
const GOOGLE_TCMALLOC_API: &[(&str, AllocKind)] = &[
    ("Malloc", Malloc),
    ("Calloc", Calloc),
    ("Realloc", Realloc),
    ("Memalign", Memalign),
    ("AlignedAlloc", AlignedAlloc),
    ("PosixMemalign", PosixMemalign),
    ("Valloc", Valloc),
    ("Pvalloc", Pvalloc),
    ("New", Malloc),
    ("NewArray", Malloc),
    ("NewNothrow", Malloc),
    ("NewArrayNothrow", Malloc),
    ("NewAligned", Malloc),
    ("NewArrayAligned", Malloc),
    ("NewAlignedNothrow", Malloc),
    ("NewArrayAlignedNothrow", Malloc),
    ("Free", Free),
    ("FreeSized", Free),
    ("FreeAlignedSized", Free),
    ("Delete", Free),
    ("DeleteArray", Free),
    ("DeleteSized", Free),
    ("DeleteArraySized", Free),
    ("DeleteAligned", Free),
    ("DeleteArrayAligned", Free),
    ("DeleteSizedAligned", Free),
    ("DeleteArraySizedAligned", Free),
    ("DeleteNothrow", Free),
    ("DeleteArrayNothrow", Free),
    ("DeleteAlignedNothrow", Free),
    ("DeleteArrayAlignedNothrow", Free),
];

/// C++ `operator new` and `delete`, every sized, aligned and nothrow form (Itanium mangling).
const CXX_API: &[(&str, AllocKind)] = &[
    ("_Znwm", Malloc),
    ("_Znam", Malloc),
    ("_ZnwmRKSt9nothrow_t", Malloc),
    ("_ZnamRKSt9nothrow_t", Malloc),
    ("_ZnwmSt11align_val_t", Malloc),
    ("_ZnamSt11align_val_t", Malloc),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", Malloc),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", Malloc),
    ("_ZdlPv", Free),
    ("_ZdaPv", Free),
    ("_ZdlPvm", Free),
    ("_ZdaPvm", Free),
    ("_ZdlPvRKSt9nothrow_t", Free),
    ("_ZdaPvRKSt9nothrow_t", Free),
    ("_ZdlPvSt11align_val_t", Free),
    ("_ZdaPvSt11align_val_t", Free),
    ("_ZdlPvmSt11align_val_t", Free),
    ("_ZdaPvmSt11align_val_t", Free),
    ("_ZdlPvSt11align_val_tRKSt9nothrow_t", Free),
    ("_ZdaPvSt11align_val_tRKSt9nothrow_t", Free),
];

/// Rust's allocator shim: what every Rust allocation calls, whatever the global allocator.
const RUST_API: &[(&str, AllocKind)] = &[
    ("__rust_alloc", Malloc),
    ("__rust_alloc_zeroed", Malloc),
    ("__rust_realloc", RustRealloc),
    ("__rust_dealloc", Free),
];

/// Memory mapped directly: anonymous private mappings made outside the allocators (the eBPF
/// side leaves out file and shared mappings, and those an allocator makes inside its calls).
const MMAP_API: &[(&str, AllocKind)] = &[
    ("mmap", Mmap),
    ("mmap64", Mmap),
    ("munmap", Munmap),
    ("mremap", Mremap),
];

/// The allocators with prefixes of their own, most specific first.
const FAMILIES: &[Family] = &[
    Family {
        label: Some("jemalloc"),
        prefixes: &["_rjem_", "je_"],
        marker: &[],
        entries: JEMALLOC_PREFIXED_API,
    },
    Family {
        label: Some("jemalloc"),
        prefixes: &[""],
        marker: &["mallocx"],
        entries: JEMALLOC_API,
    },
    Family {
        label: Some("mimalloc"),
        prefixes: &["mi_"],
        marker: &[],
        entries: MIMALLOC_API,
    },
    Family {
        label: Some("tcmalloc"),
        prefixes: &["tc_"],
        marker: &[],
        entries: TCMALLOC_API,
    },
    Family {
        label: Some("tcmalloc"),
        prefixes: &["TCMallocInternal"],
        marker: &[],
        entries: GOOGLE_TCMALLOC_API,
    },
];

/// The C API, named after the object that defines it.
const C_FAMILY: Family = Family {
    label: None,
    prefixes: &[""],
    marker: &["malloc", "free"],
    entries: C_API,
};

/// C++ operators, probed only in an object that is an allocator itself.
const CXX_FAMILY: Family = Family {
    label: None,
    prefixes: &[""],
    marker: &[],
    entries: CXX_API,
};

/// Rust's shim, in the executable.
const RUST_FAMILY: Family = Family {
    label: Some("rust"),
    prefixes: &[""],
    marker: &["__rust_alloc"],
    entries: RUST_API,
};

/// Direct mappings, in the object the C library's `mmap` resolves to.
const MMAP_FAMILY: Family = Family {
    label: Some("mmap"),
    prefixes: &[""],
    marker: &["mmap", "munmap"],
    entries: MMAP_API,
};

/// The argument registers each kind's probe reads (System V x86-64 order).
fn args_of(kind: AllocKind) -> &'static [Register] {
    match kind {
        AllocKind::Malloc | AllocKind::Valloc | AllocKind::Pvalloc | AllocKind::Free => {
            &[Register::RDI]
        }
        AllocKind::Calloc | AllocKind::Realloc | AllocKind::AlignedAlloc | AllocKind::Memalign => {
            &[Register::RDI, Register::RSI]
        }
        AllocKind::ReallocArray | AllocKind::PosixMemalign | AllocKind::Xallocx => {
            &[Register::RDI, Register::RSI, Register::RDX]
        }
        AllocKind::Munmap => &[Register::RDI, Register::RSI],
        AllocKind::Mremap => &[Register::RDI, Register::RSI, Register::RDX],
        // mmap's flags are its fourth argument.
        AllocKind::RustRealloc | AllocKind::Mmap => {
            &[Register::RDI, Register::RSI, Register::RDX, Register::RCX]
        }
    }
}

/// Which allocators to trace (`--allocator`): every one found, or only those named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Allocator names (`glibc`, `jemalloc`, `mimalloc`, `tcmalloc`, `rust`, `malloc` for
    /// whatever the C API resolves to) or symbol prefixes (`_rjem_`); empty: all.
    pub only: Vec<String>,
    /// The target is a Go program: the Go runtime maps its heap through `mmap` (via libc when
    /// cgo is linked), and that heap is read from the runtime's profile, so `mmap` is left out
    /// rather than counted twice.
    pub go_runtime: bool,
}

impl Selection {
    /// Whether an allocator named `label`, found under `prefix`, is traced. The C API's
    /// object counts as `malloc` too.
    fn wants(&self, label: &str, prefix: &str, c_api: bool) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|only| {
                only == label
                    || (c_api && only == "malloc")
                    || (!prefix.is_empty() && only == prefix)
            })
    }

    /// Prefixes named that are no allocator leaktrace knows: probed as a C API under that
    /// prefix (`myalloc_malloc`, `myalloc_free`, ...).
    fn custom_prefixes(&self) -> impl Iterator<Item = &str> {
        const KNOWN: &[&str] = &[
            "glibc", "jemalloc", "mimalloc", "tcmalloc", "rust", "malloc",
        ];
        self.only
            .iter()
            .map(String::as_str)
            .filter(|o| !KNOWN.contains(o) && !FAMILIES.iter().any(|f| f.prefixes.contains(o)))
    }
}

/// The defined functions of one object file.
struct Symbols<'data> {
    data: &'data [u8],
    file: object::File<'data>,
    /// Name (demangled for Rust's shim) to address and size.
    by_name: BTreeMap<String, (u64, u64)>,
}

impl<'data> Symbols<'data> {
    fn parse(data: &'data [u8]) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        let mut by_name = BTreeMap::new();
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            if !symbol.is_definition() || symbol.kind() != object::SymbolKind::Text {
                continue;
            }
            let Ok(name) = symbol.name() else {
                continue;
            };
            let entry = (symbol.address(), symbol.size());
            by_name.entry(name.to_owned()).or_insert(entry);
            // Rust's allocator symbols (`__rust_alloc`, the default `__rdl_alloc`) are
            // `__rustc::__rust_alloc` in current Rust (v0 mangling): known by their last path
            // component.
            if name.starts_with("_R") && name.contains("___rustc") {
                let demangled = format!("{:#}", rustc_demangle::demangle(name));
                if let Some(last) = demangled.rsplit("::").next()
                    && last.starts_with("__r")
                {
                    by_name.entry(last.to_owned()).or_insert(entry);
                }
            }
        }
        Some(Self {
            data,
            file,
            by_name,
        })
    }

    fn address(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|(addr, _)| *addr)
    }

    fn defines(&self, family: &Family, prefix: &str) -> bool {
        let has = |entry: &str| self.address(&format!("{prefix}{entry}")).is_some();
        let releases = |k: &AllocKind| matches!(k, Free | Munmap);
        family.marker.iter().all(|m| has(m))
            && family.entries.iter().any(|(e, k)| releases(k) && has(e))
            && family.entries.iter().any(|(e, k)| !releases(k) && has(e))
    }

    /// The names of the function at `addr` (as mangled, and demangled where that differs).
    fn names_at(&self, addr: u64) -> impl Iterator<Item = &str> {
        self.by_name
            .iter()
            .filter(move |(_, (a, _))| *a == addr)
            .map(|(name, _)| name.as_str())
    }

    /// The functions `name` calls or jumps to directly (its first 256 bytes).
    fn callees(&self, name: &str) -> Vec<u64> {
        let Some(&(addr, size)) = self.by_name.get(name) else {
            return Vec::new();
        };
        let len = usize::try_from(size.clamp(1, 256)).unwrap_or(256);
        let Some(code) = file_offset_of(&self.file, addr)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|start| self.data.get(start..self.data.len().min(start + len)))
        else {
            return Vec::new();
        };
        let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
        let mut targets = Vec::new();
        while decoder.can_decode() {
            let instr = decoder.decode();
            if matches!(
                instr.flow_control(),
                FlowControl::Call | FlowControl::UnconditionalBranch
            ) && instr.near_branch_target() != 0
            {
                targets.push(instr.near_branch_target());
            }
        }
        targets
    }

    /// The probe points of `family` under `prefix`, labelled `label`.
    fn points(&self, family: &Family, prefix: &str, label: u8) -> Vec<ProbePoint> {
        let mut points = Vec::new();
        for &(entry, kind) in family.entries {
            let symbol = format!("{prefix}{entry}");
            let Some(addr) = self.address(&symbol) else {
                continue;
            };
            let Some(file_offset) = file_offset_of(&self.file, addr) else {
                continue;
            };
            let code = usize::try_from(file_offset)
                .ok()
                .and_then(|start| self.data.get(start..self.data.len().min(start + 64)))
                .unwrap_or(&[]);
            let site = choose_site(code, addr, args_of(kind));
            points.push(ProbePoint {
                kind,
                symbol,
                aliases: Vec::new(),
                label,
                symbol_addr: addr,
                file_offset: file_offset + site.delta,
                site,
            });
        }
        points
    }
}

/// Adds `new` to `points`, an alias where a point is already at its address. A point of a
/// specific allocator replaces one of the C API at the same address (tcmalloc's `malloc` is
/// `tc_malloc`) so it carries that allocator's label.
fn merge_points(points: &mut Vec<ProbePoint>, new: Vec<ProbePoint>) {
    for point in new {
        if let Some(existing) = points
            .iter_mut()
            .find(|p| p.symbol_addr == point.symbol_addr)
        {
            if !existing.aliases.contains(&point.symbol) && existing.symbol != point.symbol {
                existing.aliases.push(point.symbol);
            }
            continue;
        }
        points.push(point);
    }
}

/// The name rows give the C API of `path` (the object `malloc` resolves to).
fn c_api_label(path: &str, symbols: &Symbols<'_>) -> &'static str {
    let file = path.rsplit('/').next().unwrap_or(path);
    // Allocators that replace glibc's define `__libc_malloc` too: check them first.
    if file.contains("jemalloc") || symbols.address("mallocx").is_some() {
        "jemalloc"
    } else if file.contains("tcmalloc") || symbols.address("tc_malloc").is_some() {
        "tcmalloc"
    } else if file.contains("mimalloc") || symbols.address("mi_malloc").is_some() {
        "mimalloc"
    } else if is_libc(path) || symbols.address("__libc_malloc").is_some() {
        "glibc"
    } else {
        "malloc"
    }
}

/// Finds every allocator in `candidates` (objects in symbol lookup order, the executable
/// first): the C API of the first that defines it, and every prefixed allocator anywhere.
fn find_allocators(
    candidates: &[String],
    to_host: impl Fn(&str) -> PathBuf,
    selection: &Selection,
    what: &str,
    exe_host: &Path,
) -> Result<Allocators, AllocatorError> {
    let mut found = Allocators::default();
    let label_index = |labels: &mut Vec<String>, name: &str| -> u8 {
        let at = labels.iter().position(|l| l == name).unwrap_or_else(|| {
            labels.push(name.to_owned());
            labels.len() - 1
        });
        u8::try_from(at).unwrap_or(u8::MAX)
    };
    let mut c_api_seen = false;
    let mut mmap_seen = false;
    for (index, candidate) in candidates.iter().enumerate() {
        let host = to_host(candidate);
        let data = fs::read(&host).map_err(|source| AllocatorError::Read {
            path: host.display().to_string(),
            source,
        })?;
        let Some(symbols) = Symbols::parse(&data) else {
            found.not_probed.push(format!(
                "{candidate}: not a readable ELF file, so not searched for allocators"
            ));
            continue;
        };
        let mut points: Vec<ProbePoint> = Vec::new();
        let mut is_allocator = false;
        for family in FAMILIES {
            for prefix in family.prefixes {
                if !symbols.defines(family, prefix) {
                    continue;
                }
                let label = family.label.unwrap_or("malloc");
                if !selection.wants(label, prefix, false) {
                    found
                        .left_out
                        .push(format!("{label} ({prefix}*) in {candidate}"));
                    continue;
                }
                is_allocator = true;
                let label = label_index(&mut found.labels, label);
                merge_points(&mut points, symbols.points(family, prefix, label));
            }
        }
        for prefix in selection.custom_prefixes() {
            if symbols.defines(&C_FAMILY, prefix) {
                is_allocator = true;
                let label = label_index(&mut found.labels, prefix.trim_end_matches('_'));
                merge_points(&mut points, symbols.points(&C_FAMILY, prefix, label));
            }
        }
        let mut missing = Vec::new();
        if !c_api_seen && symbols.defines(&C_FAMILY, "") {
            c_api_seen = true;
            let name = c_api_label(candidate, &symbols);
            if selection.wants(name, "", true) {
                // The specific allocator's points came first, so its label wins at aliases.
                let label = label_index(&mut found.labels, name);
                merge_points(&mut points, symbols.points(&C_FAMILY, "", label));
                missing = C_API
                    .iter()
                    .filter(|(entry, _)| symbols.address(entry).is_none())
                    .map(|(entry, _)| *entry)
                    .collect();
                is_allocator = is_allocator || !is_libc(candidate);
            } else {
                found
                    .left_out
                    .push(format!("{name} (malloc) in {candidate}"));
            }
        }
        if !mmap_seen && symbols.defines(&MMAP_FAMILY, "") {
            mmap_seen = true;
            if selection.go_runtime {
                found.not_probed.push(format!(
                    "mmap (anonymous maps) in {candidate}: the Go runtime maps its heap through \
                     it, and that heap is read from its profile"
                ));
            } else if selection.wants("mmap", "", false) {
                let label = label_index(&mut found.labels, "mmap");
                merge_points(&mut points, symbols.points(&MMAP_FAMILY, "", label));
            } else {
                found
                    .left_out
                    .push(format!("mmap (anonymous maps) in {candidate}"));
            }
        }
        if is_allocator && symbols.defines(&CXX_FAMILY, "") {
            // An allocator library's own operator new/delete (libstdc++'s call malloc).
            let name = points
                .first()
                .and_then(|p| found.labels.get(usize::from(p.label)))
                .cloned()
                .unwrap_or_else(|| "malloc".to_owned());
            let label = label_index(&mut found.labels, &name);
            merge_points(&mut points, symbols.points(&CXX_FAMILY, "", label));
        }
        if index == 0 && symbols.defines(&RUST_FAMILY, "") && rust_allocator_is_unknown(&symbols) {
            if selection.wants("rust", "", false) {
                let label = label_index(&mut found.labels, "rust");
                merge_points(&mut points, symbols.points(&RUST_FAMILY, "", label));
            } else {
                found
                    .left_out
                    .push(format!("rust (__rust_alloc) in {candidate}"));
            }
        }
        if points.is_empty() {
            continue;
        }
        let object = Allocator {
            attach_path: host,
            display_path: candidate.clone(),
            points,
            missing,
        };
        // The C API's object first: it is the one `malloc` resolves to.
        if object.missing.is_empty() && !object.points.iter().any(|p| p.symbol == "malloc") {
            found.objects.push(object);
        } else {
            found.objects.insert(0, object);
        }
    }
    if found.objects.is_empty() {
        let hint = if is_go_binary(exe_host) {
            " (it is a Go program: Go allocates through its own runtime, not malloc)".to_owned()
        } else if !found.left_out.is_empty() {
            format!(
                " (--allocator left out what was found: {})",
                found.left_out.join(", ")
            )
        } else {
            " (no loaded object defines malloc and free, or another allocator leaktrace knows)"
                .to_owned()
        };
        return Err(AllocatorError::NoMalloc {
            what: what.to_owned(),
            hint,
        });
    }
    Ok(found)
}

/// Whether a Rust executable's global allocator is none leaktrace traces by its own API: its
/// `__rust_alloc` calls neither the standard library's default (`__rdl_alloc`, which calls
/// `malloc`) nor a known allocator's entry point. Then only the shim sees its allocations.
fn rust_allocator_is_unknown(symbols: &Symbols<'_>) -> bool {
    let known = |name: &str| {
        name.starts_with("__rdl_")
            || name.starts_with("__rg_")
            || C_API.iter().any(|(entry, _)| *entry == name)
            || FAMILIES.iter().any(|family| {
                family.prefixes.iter().any(|prefix| {
                    !prefix.is_empty()
                        && name.starts_with(prefix)
                        && symbols.defines(family, prefix)
                })
            })
    };
    let callees = symbols.callees("__rust_alloc");
    !callees.is_empty()
        && !callees
            .iter()
            .flat_map(|&addr| symbols.names_at(addr))
            .any(known)
}

/// Translates an ELF virtual address into a file offset through its loadable segment.
fn file_offset_of(file: &object::File<'_>, addr: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (addr >= start && addr < start + size).then(|| addr - start + offset)
    })
}

/// Whether `path` looks like a Go binary (used for a better error).
fn is_go_binary(path: &Path) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    file.sections().any(|s| {
        matches!(
            s.name(),
            Ok(".go.buildinfo" | ".gopclntab" | ".note.go.buildid")
        )
    })
}

fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so") || name.starts_with("libc-")
}

fn is_loader(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("ld-linux") || name.starts_with("ld-musl") || name.starts_with("ld.so")
}

/// Orders candidate objects: the executable, then other objects in the given order, then libc;
/// the dynamic loader never (its internal malloc is not the program's).
fn lookup_order(exe: &str, objects: &[String]) -> Vec<String> {
    let mut order = vec![exe.to_owned()];
    order.extend(
        objects
            .iter()
            .filter(|p| *p != exe && !is_libc(p) && !is_loader(p))
            .cloned(),
    );
    order.extend(objects.iter().filter(|p| *p != exe && is_libc(p)).cloned());
    order.dedup();
    order
}

/// Finds every allocator of a running process from its mappings.
pub fn find_for_process(
    process: &Process,
    selection: &Selection,
) -> Result<Allocators, AllocatorError> {
    let maps = process.maps()?;
    let exe = fs::read_link(format!("/proc/{}/exe", process.pid))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let objects = mapped_objects(&maps);
    let candidates = lookup_order(&exe, &objects);
    find_allocators(
        &candidates,
        |p| process.host_path(p),
        selection,
        &format!("pid {} ({})", process.pid, process.command),
        &process.host_path(&exe),
    )
}

/// Distinct file-backed executable objects, in address order.
pub fn mapped_objects(maps: &[Mapping]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for mapping in maps.iter().filter(|m| m.is_file() && m.is_exec()) {
        if !seen.contains(&mapping.path) {
            seen.push(mapping.path.clone());
        }
    }
    seen
}

/// Finds every allocator a program will use before it runs, from the executable and the
/// libraries the dynamic loader would load (`ld.so --list`, as `ldd` does; it loads but does
/// not run the program).
pub fn find_for_executable(
    exe: &Path,
    selection: &Selection,
) -> Result<Allocators, AllocatorError> {
    let exe_str = exe.to_string_lossy().into_owned();
    let objects = libraries_of(exe)?;
    let candidates = lookup_order(&exe_str, &objects);
    find_allocators(&candidates, |p| PathBuf::from(p), selection, &exe_str, exe)
}

/// Finds the allocators one object file defines, on its own (no libraries looked up): how
/// discovery reads any file, for the tests that feed it corrupted ones.
pub fn find_in_object(path: &Path, selection: &Selection) -> Result<Allocators, AllocatorError> {
    let name = path.to_string_lossy().into_owned();
    find_allocators(
        std::slice::from_ref(&name),
        |p| PathBuf::from(p),
        selection,
        &name,
        path,
    )
}

/// The shared objects a program will load, in load order, with its interpreter last: what
/// `ld.so --list` (as `ldd` does) prints. Empty for a statically linked program.
pub fn libraries_of(exe: &Path) -> Result<Vec<String>, AllocatorError> {
    let Some(interp) = interpreter_of(exe)? else {
        return Ok(Vec::new());
    };
    let output = Command::new(&interp)
        .arg("--list")
        .arg(exe)
        .output()
        .map_err(|source| AllocatorError::Read {
            path: interp.display().to_string(),
            source,
        })?;
    let mut objects = parse_ld_list(&String::from_utf8_lossy(&output.stdout));
    objects.push(interp.to_string_lossy().into_owned());
    Ok(objects)
}

/// The program interpreter (`PT_INTERP`) of an ELF executable, if dynamically linked.
fn interpreter_of(exe: &Path) -> Result<Option<PathBuf>, AllocatorError> {
    let data = fs::read(exe).map_err(|source| AllocatorError::Read {
        path: exe.display().to_string(),
        source,
    })?;
    let Ok(file) = object::File::parse(&*data) else {
        return Ok(None);
    };
    Ok(file
        .section_by_name(".interp")
        .and_then(|s| s.data().ok())
        .map(|bytes| {
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            PathBuf::from(String::from_utf8_lossy(&bytes[..end]).into_owned())
        }))
}

/// Parses `ld.so --list` output (`libc.so.6 => /lib/.../libc.so.6 (0x...)`) in load order.
pub fn parse_ld_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("=>")?;
            let path = rest.trim().split(" (").next()?.trim();
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order_puts_exe_first_and_libc_last() {
        let objects = vec![
            "/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
            "/usr/lib/libjemalloc.so.2".to_owned(),
            "/usr/bin/app".to_owned(),
            "/lib64/ld-linux-x86-64.so.2".to_owned(),
        ];
        assert_eq!(
            lookup_order("/usr/bin/app", &objects),
            vec![
                "/usr/bin/app".to_owned(),
                "/usr/lib/libjemalloc.so.2".to_owned(),
                "/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
            ]
        );
    }

    /// Builds C `source` with gcc into `dir/name` (a shared object when `shared`).
    fn build(dir: &Path, name: &str, source: &str, shared: bool) -> String {
        let src = dir.join(format!("{name}.c"));
        let out = dir.join(name);
        fs::write(&src, source).expect("writing the source");
        let mut gcc = Command::new("gcc");
        gcc.args(["-O1", "-fno-inline", "-o"]).arg(&out).arg(&src);
        if shared {
            gcc.args(["-shared", "-fPIC"]);
        }
        let status = gcc.status().expect("gcc runs");
        assert!(status.success(), "gcc {name}");
        out.to_string_lossy().into_owned()
    }

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    fn find(objects: &[String], only: &[&str]) -> Allocators {
        let selection = Selection {
            only: only.iter().map(|s| (*s).to_owned()).collect(),
            go_runtime: false,
        };
        let exe = PathBuf::from(&objects[0]);
        find_allocators(objects, |p| PathBuf::from(p), &selection, "test", &exe)
            .expect("allocators")
    }

    fn symbols_of(allocators: &Allocators, object: &str) -> Vec<(String, String)> {
        allocators
            .objects
            .iter()
            .filter(|o| o.display_path.ends_with(object))
            .flat_map(|o| &o.points)
            .map(|p| (p.symbol.clone(), allocators.label_of(p).to_owned()))
            .collect()
    }

    #[test]
    fn a_statically_linked_jemalloc_and_glibc_are_both_traced() {
        // Given a Rust-like executable with tikv-jemalloc's prefixed API, whose __rust_alloc
        // calls it, beside glibc
        let dir = tempfile::tempdir().expect("temporary directory");
        let exe = build(
            dir.path(),
            "app",
            r#"
            #include <stddef.h>
            void *_rjem_malloc(size_t n) { return (void *)n; }
            void *_rjem_mallocx(size_t n, int f) { return (void *)(n + f); }
            void *_rjem_rallocx(void *p, size_t n, int f) { return p; }
            size_t _rjem_xallocx(void *p, size_t n, size_t e, int f) { return n; }
            void _rjem_sdallocx(void *p, size_t n, int f) { }
            void _rjem_free(void *p) { }
            void *__rust_alloc(size_t n, size_t a) { return _rjem_mallocx(n, (int)a); }
            void __rust_dealloc(void *p, size_t n, size_t a) { _rjem_sdallocx(p, n, (int)a); }
            int main(void) { return 0; }
            "#,
            false,
        );

        // When finding its allocators
        let found = find(&[exe, LIBC.to_owned()], &[]);

        // Then glibc's C API comes first, and jemalloc's API is probed in the executable
        assert!(found.objects[0].display_path.ends_with("libc.so.6"));
        assert!(found.malloc_owner().is_some());
        let jemalloc = symbols_of(&found, "/app");
        for symbol in [
            "_rjem_mallocx",
            "_rjem_rallocx",
            "_rjem_xallocx",
            "_rjem_sdallocx",
        ] {
            assert!(
                jemalloc.contains(&(symbol.to_owned(), "jemalloc".to_owned())),
                "{symbol} in {jemalloc:?}"
            );
        }
        // and the shim, which calls jemalloc, is not probed on top of it
        assert!(
            !jemalloc.iter().any(|(s, _)| s.starts_with("__rust")),
            "{jemalloc:?}"
        );
        let glibc = symbols_of(&found, "libc.so.6");
        assert!(glibc.contains(&("malloc".to_owned(), "glibc".to_owned())));
        assert_eq!(found.labels, ["jemalloc", "glibc", "mmap"]);
        assert!(glibc.contains(&("mmap".to_owned(), "mmap".to_owned())));
        assert!(glibc.contains(&("munmap".to_owned(), "mmap".to_owned())));

        // and with --allocator glibc, jemalloc is said to be left out
        let only_glibc = find(
            &[found.objects[1].display_path.clone(), LIBC.to_owned()],
            &["glibc"],
        );
        assert_eq!(only_glibc.objects.len(), 1);
        assert_eq!(only_glibc.left_out.len(), 2, "{:?}", only_glibc.left_out);
        assert!(only_glibc.left_out[0].starts_with("jemalloc (_rjem_*)"));
    }

    #[test]
    fn aliases_are_probed_once_under_the_allocators_own_name() {
        // Given a tcmalloc-like library whose malloc, free and operator new/delete are aliases
        // of its tc_ API
        let dir = tempfile::tempdir().expect("temporary directory");
        let lib = build(
            dir.path(),
            "libtcmalloc_minimal.so.4",
            r#"
            #include <stddef.h>
            void *tc_malloc(size_t n) { return (void *)n; }
            void tc_free(void *p) { }
            void *tc_new(size_t n) { return (void *)(n + 1); }
            void tc_delete(void *p) { }
            void *malloc(size_t) __attribute__((alias("tc_malloc")));
            void free(void *) __attribute__((alias("tc_free")));
            void *_Znwm(size_t) __attribute__((alias("tc_new")));
            void _ZdlPv(void *) __attribute__((alias("tc_delete")));
            "#,
            true,
        );
        let exe = build(dir.path(), "app", "int main(void) { return 0; }", false);

        // When finding the allocators of a program linking it before glibc
        let found = find(&[exe, lib, LIBC.to_owned()], &[]);

        // Then the C API resolves to it, each address is one probe named for tcmalloc
        let points = &found.objects[0].points;
        assert!(
            found.objects[0]
                .display_path
                .ends_with("libtcmalloc_minimal.so.4")
        );
        let malloc = points
            .iter()
            .find(|p| p.symbol == "tc_malloc")
            .expect("tc_malloc");
        assert_eq!(malloc.aliases, ["malloc"]);
        let new = points
            .iter()
            .find(|p| p.symbol == "tc_new")
            .expect("tc_new");
        assert_eq!(new.aliases, ["_Znwm"]);
        assert!(points.iter().all(|p| found.label_of(p) == "tcmalloc"));
        let mut addresses: Vec<u64> = points.iter().map(|p| p.symbol_addr).collect();
        addresses.dedup();
        assert_eq!(addresses.len(), points.len());
        // and glibc's malloc, which nothing calls, is not probed (its mmap is)
        let glibc = symbols_of(&found, "libc.so.6");
        assert!(glibc.iter().all(|(_, label)| label == "mmap"), "{glibc:?}");
    }

    #[test]
    fn google_tcmalloc_and_mimalloc_are_found_by_their_own_entry_points() {
        // Given an executable with Google tcmalloc's internal entry points and mimalloc's, as
        // a C++ service and a Rust crate link them, beside glibc
        let dir = tempfile::tempdir().expect("temporary directory");
        let exe = build(
            dir.path(),
            "app",
            r#"
            #include <stddef.h>
            void *TCMallocInternalMalloc(size_t n) { return (void *)n; }
            void *TCMallocInternalNew(size_t n) { return (void *)(n + 1); }
            void TCMallocInternalFree(void *p) { }
            void TCMallocInternalDeleteSized(void *p, size_t n) { }
            void *mi_malloc_aligned(size_t n, size_t a) { return (void *)(n + a); }
            void *mi_realloc_aligned(void *p, size_t n, size_t a) { return p; }
            void mi_free(void *p) { }
            int main(void) { return 0; }
            "#,
            false,
        );

        // When finding its allocators
        let found = find(&[exe, LIBC.to_owned()], &[]);

        // Then both are probed in the executable, each under its own name
        let app = symbols_of(&found, "/app");
        for (symbol, label) in [
            ("TCMallocInternalMalloc", "tcmalloc"),
            ("TCMallocInternalDeleteSized", "tcmalloc"),
            ("mi_malloc_aligned", "mimalloc"),
            ("mi_realloc_aligned", "mimalloc"),
            ("mi_free", "mimalloc"),
        ] {
            assert!(
                app.contains(&(symbol.to_owned(), label.to_owned())),
                "{symbol} in {app:?}"
            );
        }
        let kinds: Vec<(String, AllocKind)> = found
            .objects
            .iter()
            .flat_map(|o| &o.points)
            .map(|p| (p.symbol.clone(), p.kind))
            .collect();
        assert!(kinds.contains(&("mi_realloc_aligned".to_owned(), AllocKind::Realloc)));
        assert!(kinds.contains(&("TCMallocInternalDeleteSized".to_owned(), AllocKind::Free)));
    }

    #[test]
    fn the_rust_shim_is_probed_only_for_an_unknown_global_allocator() {
        // Given a program whose __rust_alloc (v0-mangled, as current Rust writes it) calls an
        // allocator leaktrace does not know
        let dir = tempfile::tempdir().expect("temporary directory");
        let exe = build(
            dir.path(),
            "app",
            r#"
            #include <stddef.h>
            __attribute__((noinline)) void *bump_alloc(size_t n) { return (void *)n; }
            void *rust_alloc(size_t, size_t) __asm__("_RNvCs1a2b3c_7___rustc12___rust_alloc");
            void *rust_alloc(size_t n, size_t a) { return bump_alloc(n + a); }
            void rust_dealloc(void *, size_t, size_t)
                __asm__("_RNvCs1a2b3c_7___rustc14___rust_dealloc");
            void rust_dealloc(void *p, size_t n, size_t a) { }
            int main(void) { return 0; }
            "#,
            false,
        );

        // When finding its allocators
        let found = find(&[exe, LIBC.to_owned()], &[]);

        // Then the shim is probed, named rust, by its mangled symbol
        let rust = symbols_of(&found, "/app");
        assert!(
            rust.iter().any(|(s, label)| s.ends_with("12___rust_alloc")
                || s == "__rust_alloc" && label == "rust"),
            "{rust:?}"
        );
        assert_eq!(rust.len(), 2, "{rust:?}");
        assert!(found.labels.contains(&"rust".to_owned()));
    }

    #[test]
    fn parses_ld_list_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd3a1f0000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2d1c000000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f2d1c400000)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ld_list(text),
            vec!["/lib/x86_64-linux-gnu/libc.so.6".to_owned()]
        );
    }

    #[test]
    fn finds_glibc_for_this_test_process() {
        let me = Process::open(std::process::id()).expect("own process");
        let found = find_for_process(&me, &Selection::default()).expect("allocators");
        let owner = found.malloc_owner().expect("the C API");
        assert!(is_libc(&owner.display_path), "{}", owner.display_path);
        assert_eq!(found.labels, ["glibc", "mmap"]);
        let kinds: Vec<AllocKind> = owner.points.iter().map(|p| p.kind).collect();
        assert!(kinds.contains(&AllocKind::Malloc) && kinds.contains(&AllocKind::Free));
        assert!(kinds.contains(&AllocKind::Mmap) && kinds.contains(&AllocKind::Mremap));
        // Every C API symbol appears once: as a point, an alias, or missing.
        let mut all: Vec<String> = owner
            .points
            .iter()
            .filter(|p| found.label_of(p) == "glibc")
            .flat_map(|p| std::iter::once(p.symbol.clone()).chain(p.aliases.iter().cloned()))
            .collect();
        all.extend(owner.missing.iter().map(|m| (*m).to_owned()));
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len());
        assert_eq!(all.len(), C_API.len());
    }

    #[test]
    fn glibc_free_is_probed_past_its_null_check() {
        let me = Process::open(std::process::id()).expect("own process");
        let found = find_for_process(&me, &Selection::default()).expect("allocators");
        let free = found
            .malloc_owner()
            .into_iter()
            .flat_map(|o| &o.points)
            .find(|p| p.symbol == "free")
            .expect("free");
        assert!(free.site.emulated, "{}", free.site.reason);
    }
}
