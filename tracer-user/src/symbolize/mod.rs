//! Turning the target's return addresses into functions, modules and source lines.
//!
//! leaktrace keeps its own copy of the target's executable mappings ([`ModuleMap`]), refreshed
//! while the target runs, with every module file held open, so stacks can still be symbolized
//! after the target exits or unmaps a library. Each module gets an id of its own when it is
//! first mapped; a library unloaded and another loaded at the same address is a new module.
//!
//! A stack is tied to the modules mapped when it was first seen ([`ModuleMap::pin`]): each
//! return address becomes a [`Pin`], a module id and a file offset. One long-lived blazesym
//! [`Symbolizer`] resolves pins from the file [`crate::symbolize::debuginfo`] chose for the module (its
//! own DWARF, a separate debug file, or its symbol tables): demangled, with inlined frames. Go
//! functions are named from the binary's own `.gopclntab` ([`gopclntab`]), stripped or not.
//! Answers are cached by module and offset, so a later module at the same address is never
//! named from an earlier one's file.

pub mod debuginfo;
pub mod gopclntab;
pub mod intern;
pub mod stacks;

use std::{collections::HashMap, fs::File, path::PathBuf, sync::Arc};

use blazesym::symbolize::{
    CodeInfo, Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use crate::{
    report::Frame,
    symbolize::debuginfo::{DebugDirs, SymbolFile},
    target::{Mapping, host_path},
};

/// Modules kept after they were unmapped, for stacks seen while they were mapped; beyond this,
/// the oldest are dropped (their frames then lose their names).
const MAX_RETIRED: usize = 4096;

/// Identifies one mapping of one file, for as long as leaktrace runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(u32);

/// An executable mapping of a traced process.
#[derive(Debug)]
struct Module {
    id: ModuleId,
    /// The process that maps it.
    pid: u32,
    start: u64,
    end: u64,
    offset: u64,
    inode: u64,
    /// Path as the target sees it.
    path: String,
    /// Where it is symbolized from (`None` when the file could not be opened).
    symbols: Option<SymbolFile>,
}

impl Module {
    /// The last path component (`libc.so.6`).
    fn name(&self) -> String {
        self.path
            .rsplit('/')
            .next()
            .unwrap_or(&self.path)
            .to_owned()
    }

    fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }
}

/// A return address as it was when its stack was first seen: the module mapped there then, and
/// the address's offset in that module's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pin {
    /// The address in the process.
    pub addr: u64,
    /// The module that held it, if any did.
    pub module: Option<ModuleId>,
    /// Its offset in the module's file (0 without a module).
    pub offset: u64,
}

/// The traced processes' executable file mappings, accumulated across refreshes; module ids
/// are unique across processes.
#[derive(Debug, Default)]
pub struct ModuleMap {
    dirs: DebugDirs,
    modules: Vec<Module>,
    /// Modules no longer mapped, oldest first, still naming the stacks pinned to them.
    retired: Vec<Module>,
    /// Retired modules dropped beyond [`MAX_RETIRED`] (their stacks' frames lose their names).
    retired_dropped: u64,
    next_id: u32,
}

impl ModuleMap {
    /// An empty map, finding separate debug files in `dirs`.
    pub fn new(dirs: DebugDirs) -> Self {
        Self {
            dirs,
            modules: Vec::new(),
            retired: Vec::new(),
            retired_dropped: 0,
            next_id: 1,
        }
    }

    /// Records the executable file mappings in `maps`, those of process `pid`. A mapping not
    /// seen before (a new range, or another file in a known range after `exec` or
    /// `dlclose`/`dlopen`) becomes a new module and retires the modules of `pid` it overlaps.
    /// Returns how many modules were added.
    pub fn update(&mut self, pid: u32, maps: &[Mapping]) -> usize {
        self.update_opening_through(pid, pid, maps)
    }

    /// [`Self::update`], opening the files through `/proc/{files_pid}` (tests use a pid that
    /// does not exist, to map a file leaktrace cannot open).
    fn update_opening_through(&mut self, pid: u32, files_pid: u32, maps: &[Mapping]) -> usize {
        let mut added = 0;
        for mapping in maps.iter().filter(|m| m.is_exec() && m.is_file()) {
            let path = mapping.path.trim_end_matches(" (deleted)").to_owned();
            if self.modules.iter().any(|m| {
                m.pid == pid
                    && m.start == mapping.start
                    && m.end == mapping.end
                    && m.offset == mapping.offset
                    && m.inode == mapping.inode
                    && m.path == path
            }) {
                continue;
            }
            let (overlapping, kept): (Vec<Module>, Vec<Module>) = std::mem::take(&mut self.modules)
                .into_iter()
                .partition(|m| m.pid == pid && m.end > mapping.start && m.start < mapping.end);
            self.modules = kept;
            self.retire(overlapping);
            // map_files names the very file mapped (even if deleted or in another mount
            // namespace); the target's root is the fallback.
            let map_file = format!(
                "/proc/{files_pid}/map_files/{:x}-{:x}",
                mapping.start, mapping.end
            );
            let symbols = File::open(&map_file)
                .or_else(|_| File::open(host_path(files_pid, &path)))
                .ok()
                .map(|file| SymbolFile::locate(Arc::new(file), &path, files_pid, &self.dirs));
            let id = ModuleId(self.next_id);
            self.next_id = self.next_id.wrapping_add(1);
            self.modules.push(Module {
                id,
                pid,
                start: mapping.start,
                end: mapping.end,
                offset: mapping.offset,
                inode: mapping.inode,
                path,
                symbols,
            });
            added += 1;
        }
        added
    }

    fn retire(&mut self, modules: Vec<Module>) {
        self.retired.extend(modules);
        if self.retired.len() > MAX_RETIRED {
            let excess = self.retired.len() - MAX_RETIRED;
            self.retired.drain(..excess);
            self.retired_dropped += excess as u64;
        }
    }

    fn current(&self, pid: u32, addr: u64) -> Option<&Module> {
        self.modules
            .iter()
            .find(|m| m.pid == pid && m.contains(addr))
    }

    fn get(&self, id: ModuleId) -> Option<&Module> {
        self.modules
            .iter()
            .chain(self.retired.iter().rev())
            .find(|m| m.id == id)
    }

    /// Its counters: retired modules dropped at the bound.
    pub fn health(&self) -> Vec<crate::source::Health> {
        vec![crate::source::Health::new(
            "modules_retired_dropped",
            self.retired_dropped,
            crate::source::HealthKind::Degraded,
        )]
    }

    /// Ties each address of a stack of process `pid` to the module mapped there now.
    pub fn pin(&self, pid: u32, ips: &[u64]) -> Vec<Pin> {
        ips.iter()
            .map(|&addr| match self.current(pid, addr) {
                Some(m) => Pin {
                    addr,
                    module: Some(m.id),
                    offset: addr - m.start + m.offset,
                },
                None => Pin {
                    addr,
                    module: None,
                    offset: 0,
                },
            })
            .collect()
    }
}

/// Symbolizes pinned return addresses, caching every answer by module and file offset.
pub struct StackSymbolizer {
    symbolizer: Symbolizer,
    /// Frames by module and offset.
    cache: HashMap<(ModuleId, u64), Resolved>,
}

/// The frames at one address, and whether a Go table named them.
type Resolved = (Arc<[Arc<Frame>]>, bool);

impl std::fmt::Debug for StackSymbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackSymbolizer")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl StackSymbolizer {
    /// A symbolizer with source lines, inlined frames and demangling enabled, following debug
    /// links into `dirs`.
    pub fn new(dirs: &DebugDirs) -> Self {
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .set_debug_dirs(Some(dirs.dirs()))
            .build();
        Self {
            symbolizer,
            cache: HashMap::new(),
        }
    }

    /// Frames for a pinned stack (innermost first). A return address points after its call, so
    /// the address looked up is one byte earlier, inside the call instruction. Inlined
    /// functions become their own frames, marked `inlined`, before the function they were
    /// inlined into.
    ///
    /// A Go stack the runtime recorded (its heap profile's) already holds one address per
    /// inlined call: after the real return address come "fake" ones, one per enclosing
    /// function, that name the call site of each inlined call. Those are dropped when they
    /// repeat frames the previous address expanded to, as `runtime/pprof` drops them.
    pub fn frames(&mut self, modules: &ModuleMap, pins: &[Pin]) -> Vec<Arc<Frame>> {
        let mut frames = Vec::with_capacity(pins.len());
        let mut expanded: Option<Arc<[Arc<Frame>]>> = None;
        for pin in pins {
            let Some(id) = pin.module else {
                frames.push(Arc::new(Frame::unknown(pin.addr)));
                expanded = None;
                continue;
            };
            let key = (id, pin.offset);
            if !self.cache.contains_key(&key) {
                let resolved = self.resolve(modules, pin);
                self.cache.insert(key, resolved);
            }
            let Some((cached, from_go)) = self.cache.get(&key) else {
                continue;
            };
            if *from_go
                && let Some(previous) = &expanded
                && repeats_inlined_frames(previous, cached)
            {
                continue;
            }
            frames.extend(cached.iter().cloned());
            expanded = (cached.len() > 1).then(|| Arc::clone(cached));
        }
        frames
    }

    /// Number of cached addresses.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The frames at `pin`, and whether a Go table named them.
    fn resolve(&self, modules: &ModuleMap, pin: &Pin) -> Resolved {
        let (frames, from_go) = self.resolve_frames(modules, pin);
        // Shared by every stack through this address.
        (frames.into_iter().map(Arc::new).collect(), from_go)
    }

    fn resolve_frames(&self, modules: &ModuleMap, pin: &Pin) -> (Vec<Frame>, bool) {
        let module = pin.module.and_then(|id| modules.get(id));
        let name = module.map(Module::name);
        let symbols = module.and_then(|m| m.symbols.as_ref());
        let unknown = || Frame {
            module: name.clone(),
            offset: module.map(|_| pin.offset),
            build_id: symbols.and_then(SymbolFile::build_id_hex),
            ..Frame::unknown(pin.addr)
        };
        let Some(symbols) = symbols else {
            return (vec![unknown()], false);
        };
        let Some(vaddr) = symbols.vaddr(pin.offset.saturating_sub(1)) else {
            return (vec![unknown()], false);
        };
        if let Some(go) = &symbols.go {
            let frames = go.frames(vaddr);
            if !frames.is_empty() {
                let frames = frames
                    .into_iter()
                    .map(|f| Frame {
                        function: Some(f.function),
                        file: f.file,
                        line: f.line,
                        inlined: f.inlined,
                        ..unknown()
                    })
                    .collect();
                return (frames, true);
            }
        }
        let source = Source::Elf(Elf {
            debug_syms: symbols.origin.has_lines(),
            ..Elf::new(symbols.open_path())
        });
        let Ok(Symbolized::Sym(sym)) = self
            .symbolizer
            .symbolize_single(&source, Input::VirtOffset(vaddr))
        else {
            return (vec![unknown()], false);
        };
        let named = |function: &str, info: Option<&CodeInfo<'_>>, inlined: bool| {
            let (file, line) = location(info);
            Frame {
                function: Some(function.to_owned()),
                file,
                line,
                inlined,
                ..unknown()
            }
        };
        // blazesym gives the outer function with its location and the inlined chain from the
        // outermost to the innermost; a frame list runs innermost first.
        let mut frames: Vec<Frame> = sym
            .inlined
            .iter()
            .rev()
            .map(|i| named(&i.name, i.code_info.as_ref(), true))
            .collect();
        frames.push(named(&sym.name, sym.code_info.as_deref(), false));
        (frames, false)
    }
}

/// Whether `frames` are the outer part of the inlined chain `previous` expanded to: the same
/// functions at the same lines as its last frames, fewer of them.
fn repeats_inlined_frames(previous: &[Arc<Frame>], frames: &[Arc<Frame>]) -> bool {
    let same =
        |a: &Frame, b: &Frame| a.function == b.function && a.file == b.file && a.line == b.line;
    !frames.is_empty()
        && frames.len() < previous.len()
        && previous
            .iter()
            .rev()
            .zip(frames.iter().rev())
            .all(|(a, b)| same(a, b))
}

/// A code location's file (joined with its directory) and line.
fn location(info: Option<&CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    let Some(info) = info else {
        return (None, None);
    };
    let file: PathBuf = match &info.dir {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(&info.file),
        _ => PathBuf::from(&*info.file),
    };
    (Some(file.to_string_lossy().into_owned()), info.line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Process;

    #[inline(never)]
    fn marker_function_for_symbolize_test() -> u64 {
        marker_function_for_symbolize_test as *const () as u64
    }

    fn own_modules() -> ModuleMap {
        let me = Process::open(std::process::id()).expect("own process");
        let mut modules = ModuleMap::new(DebugDirs::default());
        modules.update(me.pid, &me.maps().expect("maps"));
        modules
    }

    #[test]
    fn symbolizes_a_function_of_this_test_binary() {
        let modules = own_modules();
        let mut symbolizer = StackSymbolizer::new(&DebugDirs::default());
        // +1: the symbolizer looks one byte before a return address.
        let addr = marker_function_for_symbolize_test() + 1;
        let frames = symbolizer.frames(&modules, &modules.pin(std::process::id(), &[addr]));
        let last = frames.last().expect("a frame");
        assert!(
            last.function
                .as_deref()
                .is_some_and(|f| f.contains("marker_function_for_symbolize_test")),
            "{frames:?}"
        );
        assert!(
            last.module
                .as_deref()
                .is_some_and(|m| m.starts_with("leaktrace")),
            "{frames:?}"
        );
        assert!(
            last.file
                .as_deref()
                .is_some_and(|f| f.ends_with("symbolize/mod.rs"))
        );
        assert!(last.build_id.as_ref().is_some_and(|id| id.len() >= 16));
        assert!(last.offset.is_some());
        assert_eq!(symbolizer.cached(), 1);
    }

    #[test]
    fn the_go_runtimes_fake_inline_addresses_are_recognised() {
        let frame = |function: &str, line: u32, inlined: bool, addr: u64| {
            Arc::new(Frame {
                function: Some(function.to_owned()),
                file: Some("/src/main.go".to_owned()),
                line: Some(line),
                inlined,
                ..Frame::unknown(addr)
            })
        };
        // A return address inside two levels of inlining, then the runtime's fake addresses
        // for the two call sites (other addresses, same lines)
        let real = [
            frame("main.leaf", 3, true, 0x10),
            frame("main.middle", 9, true, 0x10),
            frame("main.outer", 20, false, 0x10),
        ];
        let fake_middle = [
            frame("main.middle", 9, true, 0x20),
            frame("main.outer", 20, false, 0x20),
        ];
        let fake_outer = [frame("main.outer", 20, false, 0x30)];
        assert!(repeats_inlined_frames(&real, &fake_middle));
        assert!(repeats_inlined_frames(&real, &fake_outer));
        // The real caller (another function, or the same at another line) is kept
        assert!(!repeats_inlined_frames(
            &real,
            &[frame("main.main", 40, false, 0x40)]
        ));
        assert!(!repeats_inlined_frames(
            &real,
            &[frame("main.outer", 21, false, 0x40)]
        ));
        // and recursion, one frame calling itself at the same line, is never collapsed
        let once = [frame("main.walk", 5, false, 0x50)];
        assert!(!repeats_inlined_frames(&once, &once));
    }

    #[test]
    fn unknown_addresses_keep_their_address() {
        let modules = ModuleMap::new(DebugDirs::default());
        let mut symbolizer = StackSymbolizer::new(&DebugDirs::default());
        let frames = symbolizer.frames(&modules, &modules.pin(std::process::id(), &[0x10]));
        assert_eq!(frames, [Arc::new(Frame::unknown(0x10))]);
    }

    fn mapping(start: u64, inode: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end: start + 0x1000,
            perms: "r-xp".to_owned(),
            offset: 0,
            inode,
            path: path.to_owned(),
        }
    }

    #[test]
    fn retired_modules_beyond_the_bound_are_counted() {
        // Given a library replaced at one address again and again (dlclose, dlopen)
        let mut modules = ModuleMap::new(DebugDirs::default());
        for inode in 1..=(MAX_RETIRED as u64 + 3) {
            modules.update_opening_through(1, u32::MAX, &[mapping(0x1000, inode, "/lib.so")]);
        }
        // Then all but the current one retired, and the two beyond the bound are counted
        assert_eq!(modules.retired.len(), MAX_RETIRED);
        assert_eq!(modules.health()[0].value, 2);
    }

    #[test]
    fn newer_mappings_replace_overlapping_ones_and_pins_keep_the_old() {
        // Given two modules, and a stack pinned while the first was mapped
        let mut modules = ModuleMap::new(DebugDirs::default());
        assert_eq!(
            modules.update(
                1,
                &[mapping(0x1000, 7, "/old"), mapping(0x5000, 8, "/kept")]
            ),
            2
        );
        let before = modules.pin(1, &[0x1800]);

        // When another file is mapped over the first, and the same maps are read again
        assert_eq!(modules.update(1, &[mapping(0x1000, 9, "/new")]), 1);
        assert_eq!(modules.update(1, &[mapping(0x1000, 9, "/new")]), 0);
        let after = modules.pin(1, &[0x1800]);

        // Then new pins name the new module, old pins still the old one
        let path = |pin: &Pin| {
            pin.module
                .and_then(|id| modules.get(id))
                .map(|m| m.path.clone())
        };
        assert_eq!(path(&after[0]).as_deref(), Some("/new"));
        assert_eq!(path(&before[0]).as_deref(), Some("/old"));
        assert_eq!((before[0].offset, after[0].offset), (0x800, 0x800));
        assert_ne!(before[0].module, after[0].module);
        assert_eq!(
            path(&modules.pin(1, &[0x5000])[0]).as_deref(),
            Some("/kept")
        );
        // A file replaced on disk (same path and range, another inode) is a new module too
        assert_eq!(modules.update(1, &[mapping(0x1000, 10, "/new")]), 1);
    }

    #[test]
    fn cached_names_belong_to_their_module_not_their_address() {
        // Given this binary's text mapped as one module and an address pinned and named
        let mut modules = own_modules();
        let mut symbolizer = StackSymbolizer::new(&DebugDirs::default());
        let addr = marker_function_for_symbolize_test() + 1;
        let me = std::process::id();
        let pinned_before = modules.pin(me, &[addr]);
        let first = symbolizer.frames(&modules, &pinned_before);
        assert!(first[0].function.is_some());

        // When another module is mapped over that address (a file leaktrace cannot open: no
        // such process, so no map_files either)
        let (start, end) = modules
            .current(me, addr)
            .map(|m| (m.start, m.end))
            .expect("own text mapping");
        modules.update_opening_through(
            me,
            u32::MAX,
            &[Mapping {
                start,
                end,
                perms: "r-xp".to_owned(),
                offset: 0,
                inode: 1,
                path: "/nonexistent/libreplaced.so".to_owned(),
            }],
        );

        // Then the same address, pinned now, is not named from the old file's cache
        let second = symbolizer.frames(&modules, &modules.pin(me, &[addr]));
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].function, None);
        assert_eq!(second[0].module.as_deref(), Some("libreplaced.so"));
        // while the stack pinned before still is
        assert_eq!(symbolizer.frames(&modules, &pinned_before), first);
    }
}
