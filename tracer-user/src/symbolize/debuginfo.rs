//! Where a module's function names and source lines come from.
//!
//! Production binaries are stripped: Debian's `memcached` has no `.symtab`, and static functions
//! everywhere show as unknown. Their symbols live elsewhere, and [`SymbolFile::locate`] looks, in
//! order:
//!
//! 1. the binary itself, when it carries DWARF (`.debug_info`);
//! 2. a debug file named by the binary's build id, `DIR/.build-id/ab/cdef….debug`, in every
//!    debug directory ([`DebugDirs`]: each `--debuginfo-dir`, then `/usr/lib/debug`, where
//!    Debian's `-dbgsym` packages and `objcopy --only-keep-debug` setups put them);
//! 3. the file `.gnu_debuglink` names, where GDB looks for it: beside the binary, in its
//!    `.debug/` folder, under each debug directory by the binary's own directory, and directly
//!    in each `--debuginfo-dir`; its CRC must match;
//! 4. the binary again: its `.symtab`, else its MiniDebugInfo (`.gnu_debugdata`, an
//!    xz-compressed symbol table that blazesym decompresses), else its dynamic symbols.
//!
//! Addresses are looked up as ELF virtual addresses ([`SymbolFile::vaddr`], from the binary's
//! loadable segments), which a debug file shares with its binary.
use std::{
    fmt,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ReadCache};

use crate::{symbolize::gopclntab::GoTable, target::host_path};

/// Where Debian (and most distributions) install separate debug files.
pub const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

/// Directories searched for separate debug files: every `--debuginfo-dir`, in the order given,
/// then [`SYSTEM_DEBUG_DIR`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugDirs {
    dirs: Vec<PathBuf>,
    /// How many of `dirs` the user gave (they come first).
    user: usize,
}

impl Default for DebugDirs {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl DebugDirs {
    /// The user's directories, then the system's.
    pub fn new(user: &[PathBuf]) -> Self {
        let mut dirs = user.to_vec();
        dirs.push(PathBuf::from(SYSTEM_DEBUG_DIR));
        Self {
            dirs,
            user: user.len(),
        }
    }

    /// Every directory, in search order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The directories the user gave.
    pub fn user_dirs(&self) -> &[PathBuf] {
        self.dirs.get(..self.user).unwrap_or_default()
    }
}

/// Which file the symbols were found in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The binary carries DWARF.
    OwnDebugInfo,
    /// A debug file named by the build id.
    BuildId(PathBuf),
    /// The debug file `.gnu_debuglink` names.
    DebugLink(PathBuf),
    /// The binary's symbol table (no source lines).
    OwnSymbols,
    /// The binary's MiniDebugInfo (`.gnu_debugdata`; no source lines).
    MiniDebugInfo,
    /// Only the binary's dynamic symbols: static functions stay unnamed.
    DynamicOnly,
}

impl Origin {
    /// Whether source lines can be found.
    pub fn has_lines(&self) -> bool {
        matches!(
            self,
            Self::OwnDebugInfo | Self::BuildId(_) | Self::DebugLink(_)
        )
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OwnDebugInfo => f.write_str("its own debug info"),
            Self::BuildId(path) => write!(f, "{} (by build id)", path.display()),
            Self::DebugLink(path) => write!(f, "{} (by .gnu_debuglink)", path.display()),
            Self::OwnSymbols => f.write_str("its symbol table (no source lines)"),
            Self::MiniDebugInfo => f.write_str("its MiniDebugInfo (no source lines)"),
            Self::DynamicOnly => f.write_str("its dynamic symbols only"),
        }
    }
}

/// One loadable segment: file offsets `offset..offset + size` are loaded at `vaddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    offset: u64,
    size: u64,
    vaddr: u64,
}

/// Where one module is symbolized from, decided once when the module is first mapped.
#[derive(Clone, Debug)]
pub struct SymbolFile {
    /// The binary's GNU build id, if it has one.
    pub build_id: Option<Vec<u8>>,
    /// Where its symbols were found.
    pub origin: Origin,
    /// The file to symbolize (the binary or its debug file), held open.
    file: Arc<File>,
    segments: Vec<Segment>,
    /// A Go binary's own symbol table, which names its Go functions (inlined calls too) even
    /// when it is stripped: preferred over the rest for the addresses it covers.
    pub go: Option<Arc<GoTable>>,
}

/// What [`SymbolFile::locate`] reads of a binary.
struct Facts {
    build_id: Option<Vec<u8>>,
    debuglink: Option<(String, u32)>,
    has_debug_info: bool,
    has_symtab: bool,
    has_debugdata: bool,
    has_gopclntab: bool,
    segments: Vec<Segment>,
}

fn read_facts(binary: &File) -> Option<Facts> {
    let cache = ReadCache::new(binary);
    let elf = object::File::parse(&cache).ok()?;
    let section_present = |name: &str| {
        elf.section_by_name(name)
            .is_some_and(|s| s.kind() != object::SectionKind::UninitializedData && s.size() > 0)
    };
    Some(Facts {
        build_id: elf.build_id().ok().flatten().map(<[u8]>::to_vec),
        debuglink: elf
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc)),
        has_debug_info: section_present(".debug_info"),
        has_symtab: elf.symbol_table().is_some(),
        has_debugdata: section_present(".gnu_debugdata"),
        has_gopclntab: section_present(".gopclntab"),
        segments: elf
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                Segment {
                    offset,
                    size,
                    vaddr: s.address(),
                }
            })
            .collect(),
    })
}

/// A Go binary's `.gopclntab`, read whole (a table the runtime itself keeps mapped, a few
/// megabytes at most); `None` when it cannot be read or is not a layout leaktrace knows.
fn read_go_table(binary: &File) -> Option<Arc<GoTable>> {
    use std::os::unix::fs::FileExt as _;
    let len = usize::try_from(binary.metadata().ok()?.len()).ok()?;
    let mut data = vec![0u8; len];
    binary.read_exact_at(&mut data, 0).ok()?;
    GoTable::parse(&data).ok().flatten().map(Arc::new)
}

/// `DIR/.build-id/ab/cdef….debug` for build id `abcdef…`; `None` for ids too short to be real.
pub fn build_id_path(dir: &Path, build_id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = build_id.split_first()?;
    if rest.len() < 3 {
        return None;
    }
    Some(
        dir.join(".build-id")
            .join(format!("{first:02x}"))
            .join(format!("{}.debug", hex(rest))),
    )
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the file a `.gnu_debuglink` names may be, in GDB's order: beside the binary, in its
/// `.debug/` folder, under each debug directory by the binary's directory, then (for
/// `--debuginfo-dir`, where users drop files) directly in each user directory. `binary_dir` is
/// the binary's directory as the target sees it; `host` maps such a path to one leaktrace can
/// open.
pub fn debuglink_candidates(
    binary_dir: &Path,
    name: &str,
    dirs: &DebugDirs,
    host: impl Fn(&Path) -> PathBuf,
) -> Vec<PathBuf> {
    // A debug link names a file, never a path.
    if name.is_empty() || name.contains('/') {
        return Vec::new();
    }
    let relative = binary_dir.strip_prefix("/").unwrap_or(binary_dir);
    let mut candidates = vec![
        host(&binary_dir.join(name)),
        host(&binary_dir.join(".debug").join(name)),
    ];
    candidates.extend(dirs.dirs().iter().map(|d| d.join(relative).join(name)));
    candidates.extend(dirs.user_dirs().iter().map(|d| d.join(name)));
    candidates
}

/// The CRC-32 a `.gnu_debuglink` records of its file, or `None` if it cannot be read. Reads by
/// offset: the file's position (moved by whoever parsed it) does not matter.
fn file_crc(file: &File) -> Option<u32> {
    use std::os::unix::fs::FileExt as _;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset).ok()?;
        if n == 0 {
            return Some(hasher.finalize());
        }
        hasher.update(buf.get(..n)?);
        offset += n as u64;
    }
}

/// Opens `path` if it is an ELF file with DWARF.
fn open_debug_file(path: &Path) -> Option<File> {
    let file = File::open(path).ok()?;
    read_facts(&file)
        .is_some_and(|f| f.has_debug_info || f.has_symtab)
        .then_some(file)
}

impl SymbolFile {
    /// Decides where the binary open as `binary` (mapped at `target_path` in process `pid`)
    /// is symbolized from (see the module documentation for the order).
    pub fn locate(binary: Arc<File>, target_path: &str, pid: u32, dirs: &DebugDirs) -> Self {
        let Some(facts) = read_facts(&binary) else {
            return Self {
                build_id: None,
                origin: Origin::DynamicOnly,
                file: binary,
                segments: Vec::new(),
                go: None,
            };
        };
        let go = facts
            .has_gopclntab
            .then(|| read_go_table(&binary))
            .flatten();
        let own = |origin| Self {
            build_id: facts.build_id.clone(),
            origin,
            file: Arc::clone(&binary),
            segments: facts.segments.clone(),
            go: go.clone(),
        };
        if facts.has_debug_info {
            return own(Origin::OwnDebugInfo);
        }
        let separate = |file: File, origin| Self {
            build_id: facts.build_id.clone(),
            origin,
            file: Arc::new(file),
            segments: facts.segments.clone(),
            go: go.clone(),
        };
        if let Some(id) = &facts.build_id {
            for dir in dirs.dirs() {
                if let Some(path) = build_id_path(dir, id)
                    && let Some(file) = open_debug_file(&path)
                {
                    return separate(file, Origin::BuildId(path));
                }
            }
        }
        if let Some((name, crc)) = &facts.debuglink {
            let binary_dir = Path::new(target_path).parent().unwrap_or(Path::new("/"));
            let host = |p: &Path| host_path(pid, &p.to_string_lossy());
            for path in debuglink_candidates(binary_dir, name, dirs, host) {
                if let Some(file) = open_debug_file(&path)
                    && file_crc(&file) == Some(*crc)
                {
                    return separate(file, Origin::DebugLink(path));
                }
            }
        }
        own(if facts.has_symtab {
            Origin::OwnSymbols
        } else if facts.has_debugdata {
            Origin::MiniDebugInfo
        } else {
            Origin::DynamicOnly
        })
    }

    /// A path blazesym can open the symbolized file by while leaktrace holds it.
    pub fn open_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The ELF virtual address the binary's file offset `offset` is loaded at, if a loadable
    /// segment holds it.
    pub fn vaddr(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| offset >= s.offset && offset - s.offset < s.size)
            .map(|s| s.vaddr + (offset - s.offset))
    }

    /// The build id in hex.
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id.as_deref().map(hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_paths_split_the_first_byte() {
        let id = [0x6b, 0xc8, 0x93, 0x6e, 0x24];
        assert_eq!(
            build_id_path(Path::new("/usr/lib/debug"), &id),
            Some(PathBuf::from("/usr/lib/debug/.build-id/6b/c8936e24.debug"))
        );
        assert_eq!(build_id_path(Path::new("/d"), &[1, 2]), None);
        assert_eq!(build_id_path(Path::new("/d"), &[]), None);
    }

    #[test]
    fn debug_dirs_put_the_users_first() {
        let dirs = DebugDirs::new(&[PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(
            dirs.dirs(),
            [
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                PathBuf::from(SYSTEM_DEBUG_DIR)
            ]
        );
        assert_eq!(dirs.user_dirs(), [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert!(DebugDirs::default().user_dirs().is_empty());
    }

    #[test]
    fn debuglink_candidates_follow_gdb() {
        // Given a binary in /usr/bin of process 7, one user directory and the system one
        let dirs = DebugDirs::new(&[PathBuf::from("/opt/dbg")]);
        let host = |p: &Path| PathBuf::from("/proc/7/root").join(p.strip_prefix("/").unwrap_or(p));

        // When listing where `memcached.debug` may be
        let found = debuglink_candidates(Path::new("/usr/bin"), "memcached.debug", &dirs, host);

        // Then: beside it, in .debug/, under each debug directory by path, then the user's own
        assert_eq!(
            found,
            [
                "/proc/7/root/usr/bin/memcached.debug",
                "/proc/7/root/usr/bin/.debug/memcached.debug",
                "/opt/dbg/usr/bin/memcached.debug",
                "/usr/lib/debug/usr/bin/memcached.debug",
                "/opt/dbg/memcached.debug",
            ]
            .map(PathBuf::from)
        );
        // A link naming a path is refused
        assert!(debuglink_candidates(Path::new("/usr/bin"), "../x", &dirs, host).is_empty());
    }

    #[test]
    fn the_crc_covers_the_whole_file_wherever_its_position_is() {
        use std::io::{Read as _, Seek as _, Write as _};
        // Given a file read halfway through (as parsing it leaves it)
        let mut file = tempfile::tempfile().expect("temp file");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).expect("write");
        file.seek(std::io::SeekFrom::Start(0)).expect("seek");
        let mut half = vec![0u8; 100_000];
        file.read_exact(&mut half).expect("read");

        // Then its CRC is still the whole file's
        assert_eq!(file_crc(&file), Some(crc32fast::hash(&data)));
    }

    #[test]
    fn this_test_binary_is_symbolized_from_its_own_debug_info() {
        // Given this test binary (built with debug info)
        let exe = std::fs::read_link("/proc/self/exe").expect("own exe");
        let file = Arc::new(File::open(&exe).expect("open own exe"));

        // When locating its symbols
        let symbols = SymbolFile::locate(
            file,
            &exe.to_string_lossy(),
            std::process::id(),
            &DebugDirs::default(),
        );

        // Then they are its own, and file offsets map to addresses through its segments
        assert_eq!(symbols.origin, Origin::OwnDebugInfo);
        assert!(symbols.build_id.as_ref().is_some_and(|id| id.len() >= 8));
        let text = symbols
            .segments
            .iter()
            .find(|s| s.size > 0 && s.offset > 0)
            .copied()
            .expect("a loadable segment past the headers");
        assert_eq!(
            symbols.vaddr(text.offset + 16),
            Some(text.vaddr + 16),
            "{:?}",
            symbols.segments
        );
        assert_eq!(symbols.vaddr(u64::MAX), None);
    }
}
