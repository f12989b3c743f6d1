//! Finding the allocator a target really uses and where to probe each of its entry points.
//!
//! The allocator is the first object in the target's symbol lookup order that defines both
//! `malloc` and `free`: the executable itself (statically linked programs, or programs that bring
//! their own allocator), then preloaded or linked allocator libraries, then glibc's `libc.so.6`.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use iced_x86::Register;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use tracer_common::AllocKind;

use crate::{
    probe::site::{ProbeSite, choose_site},
    target::{Mapping, Process},
};

/// Why no allocator could be found.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// No mapped object defines malloc and free.
    #[error("{what} has no malloc/free to probe{hint}")]
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
    /// The kind the events are recorded as.
    pub kind: AllocKind,
    /// Other symbols at the same address (e.g. glibc's `memalign` is `aligned_alloc`): probed
    /// once, under `kind`, so each call is seen once.
    pub aliases: Vec<AllocKind>,
    /// Symbol address (ELF virtual address).
    pub symbol_addr: u64,
    /// File offset of the probed instruction.
    pub file_offset: u64,
    /// Where in the function and why.
    pub site: ProbeSite,
}

/// The allocator object and its probe points.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// Path to attach to, openable from leaktrace's mount namespace.
    pub attach_path: PathBuf,
    /// Path as the target sees it.
    pub display_path: String,
    /// One point per distinct allocator function found (malloc and free always among them).
    pub points: Vec<ProbePoint>,
    /// Entry points this object does not define (e.g. `pvalloc` in some libcs).
    pub missing: Vec<AllocKind>,
}

impl Allocator {
    /// A short name for rows and labels: `glibc` for libc, the library's name without `lib`
    /// and version for another (`jemalloc` for `libjemalloc.so.2`), `malloc` for an allocator
    /// built into the executable.
    pub fn name(&self) -> String {
        let file = self
            .display_path
            .rsplit('/')
            .next()
            .unwrap_or(&self.display_path);
        match file.split_once(".so") {
            Some(("libc", _)) => "glibc".to_owned(),
            Some((library, _)) => library.strip_prefix("lib").unwrap_or(library).to_owned(),
            None => "malloc".to_owned(),
        }
    }
}

/// The argument registers each kind's probe reads (System V x86-64 order).
fn args_of(kind: AllocKind) -> &'static [Register] {
    match kind {
        AllocKind::Malloc | AllocKind::Valloc | AllocKind::Pvalloc | AllocKind::Free => {
            &[Register::RDI]
        }
        AllocKind::Calloc | AllocKind::Realloc | AllocKind::AlignedAlloc | AllocKind::Memalign => {
            &[Register::RDI, Register::RSI]
        }
        AllocKind::ReallocArray | AllocKind::PosixMemalign => {
            &[Register::RDI, Register::RSI, Register::RDX]
        }
    }
}

/// Reads `path` and returns the probe points if it defines malloc and free, `None` otherwise.
pub fn probe_object(path: &Path) -> Result<Option<Vec<ProbePoint>>, AllocatorError> {
    let data = fs::read(path).map_err(|source| AllocatorError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let Ok(file) = object::File::parse(&*data) else {
        return Ok(None);
    };
    let wanted = AllocKind::ALLOCATING.into_iter().chain([AllocKind::Free]);
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        if let Ok(name) = symbol.name() {
            by_name.entry(name).or_insert(symbol.address());
        }
    }
    if !by_name.contains_key("malloc") || !by_name.contains_key("free") {
        return Ok(None);
    }
    // Group kinds by address so aliases are probed once.
    let mut points: Vec<ProbePoint> = Vec::new();
    for kind in wanted {
        let Some(&addr) = by_name.get(kind.symbol()) else {
            continue;
        };
        if let Some(point) = points.iter_mut().find(|p| p.symbol_addr == addr) {
            point.aliases.push(kind);
            continue;
        }
        let Some(file_offset) = file_offset_of(&file, addr) else {
            continue;
        };
        let code = usize::try_from(file_offset)
            .ok()
            .and_then(|start| data.get(start..data.len().min(start + 64)))
            .unwrap_or(&[]);
        // Aliases share the probe, so it must respect the widest argument set; every alias
        // here takes the same registers as its first kind or fewer.
        let site = choose_site(code, addr, args_of(kind));
        let point = ProbePoint {
            kind,
            aliases: Vec::new(),
            symbol_addr: addr,
            file_offset: file_offset + site.delta,
            site,
        };
        points.push(point);
    }
    Ok(Some(points))
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

fn first_allocator(
    candidates: &[String],
    to_host: impl Fn(&str) -> PathBuf,
    what: &str,
    exe_host: &Path,
) -> Result<Allocator, AllocatorError> {
    for candidate in candidates {
        let host = to_host(candidate);
        if let Some(points) = probe_object(&host)? {
            let mut missing: Vec<AllocKind> = AllocKind::ALLOCATING
                .into_iter()
                .chain([AllocKind::Free])
                .collect();
            for point in &points {
                missing.retain(|k| *k != point.kind && !point.aliases.contains(k));
            }
            return Ok(Allocator {
                attach_path: host,
                display_path: candidate.clone(),
                points,
                missing,
            });
        }
    }
    let hint = if is_go_binary(exe_host) {
        " (it is a Go program: Go allocates through its own runtime, not malloc)".to_owned()
    } else {
        " (no loaded object defines both malloc and free)".to_owned()
    };
    Err(AllocatorError::NoMalloc {
        what: what.to_owned(),
        hint,
    })
}

/// Finds the allocator of a running process from its mappings.
pub fn find_for_process(process: &Process) -> Result<Allocator, AllocatorError> {
    let maps = process.maps()?;
    let exe = fs::read_link(format!("/proc/{}/exe", process.pid))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let objects = mapped_objects(&maps);
    let candidates = lookup_order(&exe, &objects);
    first_allocator(
        &candidates,
        |p| process.host_path(p),
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

/// Finds the allocator a program will use before it runs: the executable itself if it defines
/// malloc, otherwise the first library the dynamic loader would load that does
/// (`ld.so --list`, as `ldd` does; it loads but does not run the program).
pub fn find_for_executable(exe: &Path) -> Result<Allocator, AllocatorError> {
    let exe_str = exe.to_string_lossy().into_owned();
    let objects = libraries_of(exe)?;
    let candidates = lookup_order(&exe_str, &objects);
    first_allocator(&candidates, |p| PathBuf::from(p), &exe_str, exe)
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

    #[test]
    fn allocators_are_named_for_rows() {
        let named = |path: &str| {
            Allocator {
                attach_path: PathBuf::from(path),
                display_path: path.to_owned(),
                points: Vec::new(),
                missing: Vec::new(),
            }
            .name()
        };
        assert_eq!(named("/lib/x86_64-linux-gnu/libc.so.6"), "glibc");
        assert_eq!(
            named("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
            "jemalloc"
        );
        assert_eq!(named("libtcmalloc_minimal.so.4"), "tcmalloc_minimal");
        assert_eq!(named("/usr/bin/leaky-static"), "malloc");
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
        let allocator = find_for_process(&me).expect("allocator");
        assert!(
            is_libc(&allocator.display_path),
            "{}",
            allocator.display_path
        );
        let kinds: Vec<AllocKind> = allocator.points.iter().map(|p| p.kind).collect();
        assert!(kinds.contains(&AllocKind::Malloc) && kinds.contains(&AllocKind::Free));
        // Every symbol appears once, either as a point's kind or as an alias.
        let mut all: Vec<AllocKind> = allocator
            .points
            .iter()
            .flat_map(|p| std::iter::once(p.kind).chain(p.aliases.iter().copied()))
            .collect();
        all.extend(allocator.missing.iter().copied());
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, all.len());
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn glibc_free_is_probed_past_its_null_check() {
        let me = Process::open(std::process::id()).expect("own process");
        let allocator = find_for_process(&me).expect("allocator");
        let free = allocator
            .points
            .iter()
            .find(|p| p.kind == AllocKind::Free)
            .expect("free");
        assert!(free.site.emulated, "{}", free.site.reason);
    }
}
