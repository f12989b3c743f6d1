//! Turning the target's return addresses into functions, modules and source lines.
//!
//! leaktrace keeps its own copy of the target's executable mappings ([`ModuleMap`]), refreshed
//! while the target runs, so stacks can still be symbolized after the target exits. Each address
//! becomes a file offset in a module, which one long-lived blazesym [`Symbolizer`] resolves from
//! the module's symbol tables and DWARF (demangled, with inlined frames). Results are cached by
//! address.
use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _, path::PathBuf, sync::Arc};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use crate::{
    process::{Mapping, host_path},
    report::Frame,
};

/// An executable mapping of the target.
#[derive(Clone, Debug)]
struct Module {
    start: u64,
    end: u64,
    offset: u64,
    /// Path as the target sees it.
    path: String,
    /// The file, held open so it can be read after the target exits or unmaps it.
    file: Option<Arc<File>>,
}

impl Module {
    /// A path to the open file that stays valid while leaktrace holds it.
    fn open_path(&self) -> Option<PathBuf> {
        self.file
            .as_ref()
            .map(|f| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())))
    }
}

/// The target's executable file mappings, accumulated across refreshes.
#[derive(Debug, Default)]
pub struct ModuleMap {
    pid: u32,
    modules: Vec<Module>,
}

impl ModuleMap {
    /// An empty map for `pid`.
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            modules: Vec::new(),
        }
    }

    /// Records the executable file mappings in `maps`, replacing any overlapping older ones
    /// (after `exec` or `dlclose`/`dlopen`).
    pub fn update(&mut self, maps: &[Mapping]) {
        for mapping in maps.iter().filter(|m| m.is_exec() && m.is_file()) {
            let path = mapping.path.trim_end_matches(" (deleted)").to_owned();
            if self
                .modules
                .iter()
                .any(|m| m.start == mapping.start && m.end == mapping.end && m.path == path)
            {
                continue;
            }
            self.modules
                .retain(|m| m.end <= mapping.start || m.start >= mapping.end);
            // map_files names the very file mapped (even if deleted or in another mount
            // namespace); the target's root is the fallback.
            let map_file = format!(
                "/proc/{}/map_files/{:x}-{:x}",
                self.pid, mapping.start, mapping.end
            );
            let file = File::open(&map_file)
                .or_else(|_| File::open(host_path(self.pid, &path)))
                .ok()
                .map(Arc::new);
            self.modules.push(Module {
                start: mapping.start,
                end: mapping.end,
                offset: mapping.offset,
                path,
                file,
            });
        }
    }

    /// Whether every address in `ips` lies in a known module.
    pub fn covers(&self, ips: &[u64]) -> bool {
        ips.iter().all(|ip| self.lookup(*ip).is_some())
    }

    /// The module containing `addr` and the address's offset in that file.
    fn lookup(&self, addr: u64) -> Option<(&Module, u64)> {
        self.modules
            .iter()
            .find(|m| addr >= m.start && addr < m.end)
            .map(|m| (m, addr - m.start + m.offset))
    }
}

/// Symbolizes return addresses, caching every answer.
pub struct StackSymbolizer {
    symbolizer: Symbolizer,
    cache: HashMap<u64, Vec<Frame>>,
}

impl std::fmt::Debug for StackSymbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackSymbolizer")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Default for StackSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

fn module_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

impl StackSymbolizer {
    /// A symbolizer with source lines, inlined frames and demangling enabled.
    pub fn new() -> Self {
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Self {
            symbolizer,
            cache: HashMap::new(),
        }
    }

    /// Frames for a stack of return addresses (innermost first). A return address points after
    /// its call, so the address looked up is one byte earlier, inside the call instruction.
    /// Inlined functions become their own frames, marked `inlined`, before the function they
    /// were inlined into.
    pub fn frames(&mut self, modules: &ModuleMap, ips: &[u64]) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(ips.len());
        for &ip in ips {
            if !self.cache.contains_key(&ip) {
                let resolved = self.resolve(modules, ip);
                self.cache.insert(ip, resolved);
            }
            if let Some(cached) = self.cache.get(&ip) {
                frames.extend(cached.iter().cloned());
            }
        }
        frames
    }

    /// Number of cached addresses.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn resolve(&self, modules: &ModuleMap, ip: u64) -> Vec<Frame> {
        let unknown = |module: Option<String>| Frame {
            function: None,
            module,
            file: None,
            line: None,
            addr: ip,
            inlined: false,
        };
        let Some((module, file_offset)) = modules.lookup(ip) else {
            return vec![unknown(None)];
        };
        let name = module_name(&module.path);
        let Some(open_path) = module.open_path() else {
            return vec![unknown(Some(name))];
        };
        let source = Source::Elf(Elf::new(open_path));
        let lookup = file_offset.saturating_sub(1);
        let Ok(symbolized) = self
            .symbolizer
            .symbolize_single(&source, Input::FileOffset(lookup))
        else {
            return vec![unknown(Some(name))];
        };
        let Symbolized::Sym(sym) = symbolized else {
            return vec![unknown(Some(name))];
        };
        let location = |info: Option<&blazesym::symbolize::CodeInfo<'_>>| match info {
            Some(info) => {
                let file = match &info.dir {
                    Some(dir) if !dir.as_os_str().is_empty() => {
                        dir.join(&info.file).to_string_lossy().into_owned()
                    }
                    _ => info.file.to_string_lossy().into_owned(),
                };
                (Some(file), info.line)
            }
            None => (None, None),
        };
        // blazesym gives the outer function with its location and the inlined chain from the
        // outermost to the innermost; a frame list runs innermost first.
        let mut frames = Vec::with_capacity(1 + sym.inlined.len());
        for inlined in sym.inlined.iter().rev() {
            let (file, line) = location(inlined.code_info.as_ref());
            frames.push(Frame {
                function: Some(inlined.name.to_string()),
                module: Some(name.clone()),
                file,
                line,
                addr: ip,
                inlined: true,
            });
        }
        let (file, line) = location(sym.code_info.as_deref());
        frames.push(Frame {
            function: Some(sym.name.to_string()),
            module: Some(name),
            file,
            line,
            addr: ip,
            inlined: false,
        });
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Process;

    #[inline(never)]
    fn marker_function_for_symbolize_test() -> u64 {
        marker_function_for_symbolize_test as *const () as u64
    }

    #[test]
    fn symbolizes_a_function_of_this_test_binary() {
        let me = Process::open(std::process::id()).expect("own process");
        let mut modules = ModuleMap::new(me.pid);
        modules.update(&me.maps().expect("maps"));
        let mut symbolizer = StackSymbolizer::new();
        // +1: the symbolizer looks one byte before a return address.
        let addr = marker_function_for_symbolize_test() + 1;
        let frames = symbolizer.frames(&modules, &[addr]);
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
        assert_eq!(symbolizer.cached(), 1);
    }

    #[test]
    fn unknown_addresses_keep_their_address() {
        let modules = ModuleMap::new(std::process::id());
        let mut symbolizer = StackSymbolizer::new();
        let frames = symbolizer.frames(&modules, &[0x10]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].function, None);
        assert_eq!(frames[0].addr, 0x10);
    }

    #[test]
    fn newer_mappings_replace_overlapping_ones() {
        let mut modules = ModuleMap::new(1);
        let mapping = |start, path: &str| Mapping {
            start,
            end: start + 0x1000,
            perms: "r-xp".to_owned(),
            offset: 0,
            inode: 7,
            path: path.to_owned(),
        };
        modules.update(&[mapping(0x1000, "/old"), mapping(0x5000, "/kept")]);
        modules.update(&[mapping(0x1000, "/new")]);
        assert_eq!(
            modules
                .lookup(0x1800)
                .map(|(m, off)| (m.path.as_str(), off)),
            Some(("/new", 0x800))
        );
        assert_eq!(
            modules.lookup(0x5000).map(|(m, _)| m.path.as_str()),
            Some("/kept")
        );
    }
}
