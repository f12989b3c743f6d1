//! Go's own symbol table, `.gopclntab`: function names, source lines and inlined calls for
//! every Go function, in stripped binaries too (`-ldflags=-s -w` drops `.symtab` and DWARF but
//! not this table, which the runtime itself needs for tracebacks).
//!
//! The layout (Go 1.18 and later, as the runtime's `pcHeader`, `_func` and `inlinedCall`
//! describe it): a header, then a table of `(entry offset, func offset)` pairs sorted by entry,
//! a function record per function, and "pc-value" tables that map ranges of instructions to a
//! value (a line, a file number, an index into the function's inline tree). Frames are
//! expanded the way the runtime's traceback and `go tool pprof` expand them: the innermost
//! inlined call first, each with its own line, then the function it was inlined into.
use std::sync::Arc;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// The header magic of Go 1.18 and 1.19.
const MAGIC_118: u32 = 0xffff_fff0;
/// The header magic of Go 1.20 and later.
const MAGIC_120: u32 = 0xffff_fff1;
/// `_PCDATA_InlTreeIndex`: the pc-value table giving the inline tree index at a pc.
const PCDATA_INL_TREE_INDEX: usize = 2;
/// `_FUNCDATA_InlTree`: the function data holding its inline tree.
const FUNCDATA_INL_TREE: usize = 3;
/// Deepest chain of inlined calls followed at one pc.
const MAX_INLINE_DEPTH: usize = 64;

/// The table's layout generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Go 1.18 and 1.19: no `startLine` in `_func`, 20-byte inlined calls.
    Go118,
    /// Go 1.20 and later.
    Go120,
}

impl Layout {
    /// Bytes of a `_func` before its pc-data offsets.
    fn func_bytes(self) -> usize {
        match self {
            Self::Go118 => 40,
            Self::Go120 => 44,
        }
    }

    /// Bytes of one `inlinedCall`, and where its name and parent pc offsets are.
    fn inlined_call(self) -> (usize, usize, usize) {
        match self {
            Self::Go118 => (20, 12, 16),
            Self::Go120 => (16, 4, 8),
        }
    }
}

/// One frame at a pc: a function, and the source line the pc is at in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFrame {
    /// The function's full name (`main.rememberSession`, `runtime.mapassign_fast64`).
    pub function: String,
    /// The source file.
    pub file: Option<String>,
    /// The line.
    pub line: Option<u32>,
    /// Whether this function was inlined into the next frame.
    pub inlined: bool,
}

/// A Go binary's `.gopclntab`, with what inlined calls need of its read-only data.
#[derive(Clone, Debug)]
pub struct GoTable {
    layout: Layout,
    /// The whole `.gopclntab` section.
    table: Arc<[u8]>,
    /// Instruction size quantum (1 on amd64).
    quantum: u64,
    nfunc: usize,
    funcnames: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
    /// Where the text starts: function entries are offsets from it.
    text_start: u64,
    /// The read-only data from `go:func.*` on (inline trees are offsets from it), when found.
    gofunc: Option<Arc<[u8]>>,
}

impl GoTable {
    /// Reads the table of the ELF file `data`; `Ok(None)` when it has none (no Go program).
    pub fn parse(data: &[u8]) -> Result<Option<Self>, String> {
        let elf = object::File::parse(data).map_err(|err| format!("not an ELF file: {err}"))?;
        let Some(section) = elf.section_by_name(".gopclntab") else {
            return Ok(None);
        };
        let table: Arc<[u8]> = section
            .data()
            .map_err(|err| format!("reading .gopclntab: {err}"))?
            .into();
        let text = elf
            .section_by_name(".text")
            .map(|s| (s.address(), s.address() + s.size()))
            .ok_or("a Go binary without .text")?;
        let mut parsed = Self::from_section(table, text.0)?;
        let moduledata = moduledata(&elf, section.address(), parsed.funcnames as u64);
        parsed.text_start = text_start(&elf, &parsed.table, moduledata.as_deref(), text);
        parsed.gofunc =
            gofunc_address(&elf, moduledata.as_deref()).and_then(|addr| rodata_from(&elf, addr));
        Ok(Some(parsed))
    }

    /// Checks the header of a `.gopclntab` section whose functions start at `text_start`.
    fn from_section(table: Arc<[u8]>, text_start: u64) -> Result<Self, String> {
        let layout = match u32_at(&table, 0) {
            Some(MAGIC_118) => Layout::Go118,
            Some(MAGIC_120) => Layout::Go120,
            Some(magic) => {
                return Err(format!(
                    "a .gopclntab of magic {magic:#x}: leaktrace reads Go 1.18 and later"
                ));
            }
            None => return Err("an empty .gopclntab".into()),
        };
        let byte = |at: usize| table.get(at).copied().unwrap_or(0);
        if byte(7) != 8 {
            return Err(format!("a .gopclntab for {}-byte pointers", byte(7)));
        }
        let word = |i: usize| {
            u64_at(&table, 8 + 8 * i)
                .and_then(|w| usize::try_from(w).ok())
                .ok_or_else(|| "a truncated .gopclntab header".to_owned())
        };
        let parsed = Self {
            layout,
            quantum: u64::from(byte(6).max(1)),
            nfunc: word(0)?,
            funcnames: word(3)?,
            cutab: word(4)?,
            filetab: word(5)?,
            pctab: word(6)?,
            functab: word(7)?,
            text_start,
            gofunc: None,
            table,
        };
        let functab_end = parsed
            .nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(parsed.functab));
        let inside = |at: usize| at <= parsed.table.len();
        if !functab_end.is_some_and(inside)
            || ![parsed.funcnames, parsed.cutab, parsed.filetab, parsed.pctab]
                .into_iter()
                .all(inside)
        {
            return Err("a .gopclntab whose header points outside it".into());
        }
        Ok(parsed)
    }

    /// Whether inlined calls can be expanded (the inline trees were found).
    pub fn expands_inlined(&self) -> bool {
        self.gofunc.is_some()
    }

    /// Entry and end (ELF addresses) of the function called `name`.
    pub fn function_named(&self, name: &str) -> Option<(u64, u64)> {
        (0..self.nfunc).find_map(|i| {
            let func = self.func(i)?;
            (self.string(self.funcnames, func.name_off)? == name).then(|| {
                let end = self.entry_off(i + 1).unwrap_or(func.entry_off);
                (
                    self.text_start + u64::from(func.entry_off),
                    self.text_start + u64::from(end),
                )
            })
        })
    }

    /// The frames at ELF address `pc`, innermost (inlined) first; empty when no Go function
    /// holds it (C code in a cgo binary).
    pub fn frames(&self, pc: u64) -> Vec<GoFrame> {
        let Some(index) = self.find(pc) else {
            return Vec::new();
        };
        let Some(func) = self.func(index) else {
            return Vec::new();
        };
        let entry = self.text_start + u64::from(func.entry_off);
        let inline_tree = self.inline_tree(&func);
        let mut frames = Vec::new();
        let mut at = pc;
        for _ in 0..MAX_INLINE_DEPTH {
            let file = self.file_at(&func, entry, at);
            let line = self
                .pcvalue(func.pcln, entry, at)
                .and_then(|l| u32::try_from(l).ok());
            let call = inline_tree.and_then(|tree| {
                let ix = self.pcvalue(func.pcdata(PCDATA_INL_TREE_INDEX)?, entry, at)?;
                self.inlined_call(tree, usize::try_from(ix).ok()?)
            });
            match call {
                Some((name_off, parent_pc)) => {
                    frames.push(GoFrame {
                        function: self.name(name_off),
                        file,
                        line,
                        inlined: true,
                    });
                    at = entry + u64::from(parent_pc);
                }
                None => {
                    frames.push(GoFrame {
                        function: self.name(func.name_off),
                        file,
                        line,
                        inlined: false,
                    });
                    break;
                }
            }
        }
        frames
    }

    /// The index of the function holding `pc`.
    fn find(&self, pc: u64) -> Option<usize> {
        let off = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let (first, last) = (self.entry_off(0)?, self.entry_off(self.nfunc)?);
        if off < first || off >= last {
            return None;
        }
        // The last function whose entry is at or before `off`.
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.entry_off(mid)? <= off {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    fn entry_off(&self, i: usize) -> Option<u32> {
        u32_at(&self.table, self.functab + 8 * i)
    }

    fn func(&self, i: usize) -> Option<Func> {
        let off =
            self.functab + usize::try_from(u32_at(&self.table, self.functab + 8 * i + 4)?).ok()?;
        let field = |n: usize| u32_at(&self.table, off + 4 * n);
        let fixed = self.layout.func_bytes();
        let npcdata = usize::try_from(field(7)?).ok()?;
        let nfuncdata = usize::from(*self.table.get(off + fixed - 1)?);
        Some(Func {
            entry_off: field(0)?,
            name_off: field(1)?,
            pcfile: field(5)?,
            pcln: field(6)?,
            cu_offset: field(8)?,
            pcdata_at: off + fixed,
            npcdata,
            nfuncdata,
            table: Arc::clone(&self.table),
        })
    }

    /// The function's inline tree, as an offset into `gofunc`.
    fn inline_tree(&self, func: &Func) -> Option<usize> {
        self.gofunc.as_ref()?;
        let at = func.pcdata_at + 4 * func.npcdata + 4 * FUNCDATA_INL_TREE;
        if FUNCDATA_INL_TREE >= func.nfuncdata {
            return None;
        }
        let off = u32_at(&self.table, at)?;
        (off != u32::MAX)
            .then(|| usize::try_from(off).ok())
            .flatten()
    }

    /// Entry `ix` of the inline tree at `tree`: its name offset and its parent pc offset.
    fn inlined_call(&self, tree: usize, ix: usize) -> Option<(u32, u32)> {
        let gofunc = self.gofunc.as_ref()?;
        let (size, name_at, parent_at) = self.layout.inlined_call();
        let at = tree.checked_add(ix.checked_mul(size)?)?;
        Some((
            u32_at(gofunc, at + name_at)?,
            u32_at(gofunc, at + parent_at)?,
        ))
    }

    fn name(&self, name_off: u32) -> String {
        self.string(self.funcnames, name_off)
            .map_or_else(|| "?".to_owned(), str::to_owned)
    }

    fn file_at(&self, func: &Func, entry: u64, pc: u64) -> Option<String> {
        let fileno = u32::try_from(self.pcvalue(func.pcfile, entry, pc)?).ok()?;
        let cu = usize::try_from(func.cu_offset.checked_add(fileno)?).ok()?;
        let off = u32_at(&self.table, self.cutab + 4 * cu)?;
        self.string(self.filetab, off).map(str::to_owned)
    }

    /// The NUL-terminated string at `off` in the sub-table at `base`.
    fn string(&self, base: usize, off: u32) -> Option<&str> {
        let start = base.checked_add(usize::try_from(off).ok()?)?;
        let rest = self.table.get(start..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(rest.get(..len)?).ok()
    }

    /// The value of the pc-value table at `table` (an offset into the pc tables) at `pc`, for
    /// a function entered at `entry`; `None` without a table or past its end.
    fn pcvalue(&self, table: u32, entry: u64, pc: u64) -> Option<i64> {
        if table == 0 {
            return None;
        }
        let mut at = self.pctab.checked_add(usize::try_from(table).ok()?)?;
        let (mut value, mut range_end) = (-1i64, entry);
        let mut first = true;
        // Every step moves forward in the table: bounded by its length.
        while at < self.table.len() {
            let (delta, used) = uvarint(self.table.get(at..)?)?;
            if delta == 0 && !first {
                return None;
            }
            at += used;
            let (pc_delta, used) = uvarint(self.table.get(at..)?)?;
            at += used;
            first = false;
            // Zig-zag: the low bit is the sign.
            let delta = if delta & 1 == 0 {
                (delta >> 1) as i64
            } else {
                !((delta >> 1) as i64)
            };
            value = value.wrapping_add(delta);
            range_end = range_end.checked_add(pc_delta.checked_mul(self.quantum)?)?;
            if pc < range_end {
                return Some(value);
            }
        }
        None
    }
}

/// One `_func` record.
#[derive(Clone, Debug)]
struct Func {
    entry_off: u32,
    name_off: u32,
    pcfile: u32,
    pcln: u32,
    cu_offset: u32,
    /// Where its pc-data offsets start in the table.
    pcdata_at: usize,
    npcdata: usize,
    nfuncdata: usize,
    table: Arc<[u8]>,
}

impl Func {
    /// The offset of its pc-data table `i`, if it has one.
    fn pcdata(&self, i: usize) -> Option<u32> {
        if i >= self.npcdata {
            return None;
        }
        u32_at(&self.table, self.pcdata_at + 4 * i).filter(|&off| off != 0)
    }
}

/// Where Go's functions start (`runtime.text`: function entries are offsets from it). In a cgo
/// binary, linked by the system linker, C code comes first in `.text`, so this is not its
/// start: Go 1.18 to 1.26 record it in the table's header, later ones in `moduledata.text`
/// (and every unstripped binary names it).
fn text_start(
    elf: &object::File<'_>,
    table: &[u8],
    moduledata: Option<&[u64]>,
    (text, etext): (u64, u64),
) -> u64 {
    let inside = |addr: &u64| (text..etext).contains(addr);
    u64_at(table, 24)
        .filter(inside)
        .or_else(|| {
            elf.symbols()
                .find(|s| s.name() == Ok("runtime.text"))
                .map(|s| s.address())
                .filter(inside)
        })
        .or_else(|| moduledata?.get(MODULEDATA_TEXT).copied().filter(inside))
        .unwrap_or(text)
}

/// Index of `text` among the words of `moduledata` (after the header pointer, six slices,
/// `findfunctab`, `minpc` and `maxpc`), the same from Go 1.18 to 1.27.
const MODULEDATA_TEXT: usize = 22;

/// The words of the runtime's `moduledata` (its first 64), found as the word pointing at
/// `.gopclntab` followed by a slice of its function names.
fn moduledata(elf: &object::File<'_>, pclntab: u64, funcnames: u64) -> Option<Vec<u64>> {
    // Go 1.27 keeps moduledata in a section of its own.
    for name in [".go.module", ".noptrdata", ".data", ".data.rel.ro"] {
        let Some(data) = elf.section_by_name(name).and_then(|s| s.data().ok()) else {
            continue;
        };
        let words: Vec<u64> = data
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let found = words
            .windows(2)
            .position(|w| w == [pclntab, pclntab + funcnames]);
        if let Some(base) = found {
            return words
                .get(base..(base + 64).min(words.len()))
                .map(<[u64]>::to_vec);
        }
    }
    None
}

/// The address of `go:func.*` (`go.func.*` before Go 1.20), which inline trees are offsets
/// from: from the symbol table, or else from the runtime's `moduledata`.
fn gofunc_address(elf: &object::File<'_>, moduledata: Option<&[u64]>) -> Option<u64> {
    if let Some(symbol) = elf
        .symbols()
        .find(|s| matches!(s.name(), Ok("go:func.*" | "go.func.*")))
    {
        return Some(symbol.address());
    }
    let ro_start = elf.section_by_name(".rodata")?.address();
    // Read-only data runs from .rodata to the end of the last read-only section (Go 1.27 keeps
    // go:func.* inside .gopclntab).
    let ro_end = elf
        .sections()
        .filter(|s| {
            matches!(s.flags(), object::SectionFlags::Elf { sh_flags }
                if sh_flags & u64::from(object::elf::SHF_ALLOC) != 0
                    && sh_flags & u64::from(object::elf::SHF_WRITE | object::elf::SHF_EXECINSTR) == 0)
        })
        .map(|s| s.address() + s.size())
        .max()?;
    moduledata_gofunc(moduledata?, ro_start, ro_end)
}

/// `moduledata.gofunc` in the words of a `moduledata`: the field after `rodata` (the start of
/// `.rodata`), the last such word followed by an address in the read-only data from there to
/// `ro_end` (`types` may also start there, but is followed by `etypes`, and comes before).
fn moduledata_gofunc(words: &[u64], ro_start: u64, ro_end: u64) -> Option<u64> {
    let fields = words.get(..64.min(words.len()))?;
    fields
        .windows(2)
        .rev()
        .find(|w| w[0] == ro_start && w[1] > ro_start && w[1] < ro_end)
        .map(|w| w[1])
}

/// The file bytes from ELF address `addr` to the end of the section holding it.
fn rodata_from(elf: &object::File<'_>, addr: u64) -> Option<Arc<[u8]>> {
    let section = elf
        .sections()
        .find(|s| addr >= s.address() && addr < s.address() + s.size())?;
    let data = section.data().ok()?;
    let start = usize::try_from(addr - section.address()).ok()?;
    data.get(start..).map(Arc::from)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// An unsigned LEB128 varint and the bytes it took (`None` when unterminated).
pub(crate) fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built Go 1.20 table: two functions at text offsets 0x10 and 0x40 (end 0x80), the
    /// second with one inlined call.
    fn synthetic() -> GoTable {
        let mut t = vec![0u8; 72];
        t[..4].copy_from_slice(&MAGIC_120.to_le_bytes());
        t[6] = 1;
        t[7] = 8;
        let put =
            |t: &mut Vec<u8>, at: usize, v: u64| t[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut t, 8, 2);
        // funcnames
        let funcnames = t.len();
        t.extend(b"main.outer\0main.inner\0");
        // cutab: one CU of one file
        let cutab = t.len();
        t.extend(0u32.to_le_bytes());
        let filetab = t.len();
        t.extend(b"/src/main.go\0");
        // pc tables: offset 0 means "none", so start with a pad byte
        let pctab = t.len();
        t.push(0);
        // line: value 10 (zig-zag of +11 from -1 = 22) for 0x20 bytes, then 20 (+10: 20)
        let lines = (t.len() - pctab) as u32;
        t.extend([22, 0x20, 20, 0x20, 0]);
        // file: 0 (zig-zag of +1 = 2) for 0x40 bytes
        let files = (t.len() - pctab) as u32;
        t.extend([2, 0x40, 0]);
        // inline index: 0 (+1) for the first 0x10 bytes, then -1 (-1: 1) after
        let inl = (t.len() - pctab) as u32;
        t.extend([2, 0x10, 1, 0x30, 0]);
        while !t.len().is_multiple_of(4) {
            t.push(0);
        }
        let functab = t.len();
        let funcs_at = 3 * 8;
        for (entry, func) in [(0x10u32, funcs_at), (0x40, funcs_at + 72), (0x80, 0)] {
            t.extend(entry.to_le_bytes());
            t.extend((func as u32).to_le_bytes());
        }
        let func = |entry: u32, name: u32, with_inline: bool| {
            let mut f = Vec::new();
            for v in [entry, name, 0, 0, 0, files, lines, 3, 0, 0] {
                f.extend(u32::to_le_bytes(v));
            }
            f.extend([0, 0, 0, 4]);
            f.extend(
                [0u32, 0, if with_inline { inl } else { 0 }]
                    .iter()
                    .flat_map(|v| v.to_le_bytes()),
            );
            f.extend(
                [
                    u32::MAX,
                    u32::MAX,
                    u32::MAX,
                    if with_inline { 0 } else { u32::MAX },
                ]
                .iter()
                .flat_map(|v| v.to_le_bytes()),
            );
            f
        };
        let (first, second) = (func(0x10, 0, false), func(0x40, 0, true));
        assert_eq!(first.len(), 72);
        t.extend(first);
        t.extend(second);
        for (i, v) in [funcnames, cutab, filetab, pctab, functab]
            .into_iter()
            .enumerate()
        {
            put(&mut t, 32 + 8 * i, v as u64);
        }
        let mut table = GoTable::from_section(t.into(), 0x1000).expect("a valid table");
        // The inline tree: one call of main.inner (name offset 11) from pc offset 0x30
        let mut gofunc = vec![0u8; 16];
        gofunc[4..8].copy_from_slice(&11u32.to_le_bytes());
        gofunc[8..12].copy_from_slice(&0x30u32.to_le_bytes());
        table.gofunc = Some(gofunc.into());
        table
    }

    #[test]
    fn functions_lines_and_files_are_found() {
        let table = synthetic();
        let frames = table.frames(0x1000 + 0x18);
        assert_eq!(
            frames,
            [GoFrame {
                function: "main.outer".into(),
                file: Some("/src/main.go".into()),
                line: Some(10),
                inlined: false,
            }]
        );
        assert_eq!(table.frames(0x1000 + 0x38)[0].line, Some(20));
        // Before the first function, after the last: nothing
        assert!(table.frames(0x1000 + 0x08).is_empty());
        assert!(table.frames(0x1000 + 0x80).is_empty());
        assert_eq!(table.function_named("main.outer"), Some((0x1010, 0x1040)));
        assert_eq!(table.function_named("main.nothing"), None);
    }

    #[test]
    fn inlined_calls_are_expanded_innermost_first() {
        let table = synthetic();
        // In the first 0x10 bytes of the second function, main.inner was inlined: its frame
        // at the pc's line, then the caller at the call site's line (pc offset 0x30: line 20).
        let frames = table.frames(0x1040 + 0x4);
        let names: Vec<(&str, Option<u32>, bool)> = frames
            .iter()
            .map(|f| (f.function.as_str(), f.line, f.inlined))
            .collect();
        assert_eq!(
            names,
            [
                ("main.inner", Some(10), true),
                ("main.outer", Some(20), false)
            ]
        );
        // Past the inlined range: the function alone
        assert_eq!(table.frames(0x1040 + 0x20).len(), 1);
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(GoTable::from_section(Arc::from(&[][..]), 0).is_err());
        let mut old = vec![0u8; 72];
        old[..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        let err = GoTable::from_section(old.clone().into(), 0).expect_err("Go 1.16");
        assert!(err.contains("1.18 and later"), "{err}");
        old[..4].copy_from_slice(&MAGIC_120.to_le_bytes());
        old[7] = 8;
        old[8] = 0xff; // a million functions in 72 bytes
        old[9] = 0xff;
        assert!(GoTable::from_section(old.into(), 0).is_err());
    }

    #[test]
    fn varints_decode() {
        assert_eq!(uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }

    #[test]
    fn moduledata_gives_the_field_after_rodata() {
        // types (at .rodata's start), etypes, rodata, gofunc
        let words = [7, 0x5000, 0x5800, 0x5000, 0x5400, 9];
        assert_eq!(moduledata_gofunc(&words, 0x5000, 0x6000), Some(0x5400));
        assert_eq!(moduledata_gofunc(&[1, 2, 3], 0x5000, 0x6000), None);
    }
}
