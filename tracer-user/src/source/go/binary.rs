//! What leaktrace needs to know about a Go executable: that it is one (its build info), its Go
//! version, and where the runtime keeps its heap profile (`runtime.mbuckets`) and sampling rate
//! (`runtime.MemProfileRate`): from its symbol table, or in a stripped binary from the code that
//! reads them.
use std::path::Path;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use crate::symbolize::gopclntab::{GoTable, uvarint};

/// Why a Go executable's heap profile cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GoBinaryError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A runtime variable could be found neither by name nor in the code that uses it.
    #[error("{path} is a Go program ({version}) whose {variable} leaktrace cannot find: {why}")]
    NotFound {
        /// The file.
        path: String,
        /// Its Go version.
        version: String,
        /// The variable.
        variable: &'static str,
        /// What was tried.
        why: String,
    },
}

/// How the runtime's variables were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoundBy {
    /// By name, in the symbol table.
    Symbols,
    /// In a stripped binary: in the runtime functions that use them, named by `.gopclntab`.
    Code,
}

/// A Go executable's runtime addresses (ELF virtual addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoBinary {
    /// The Go version it was built with (`go1.19.8`).
    pub version: String,
    /// `runtime.mbuckets`: the head of the list of every profiling bucket.
    pub mbuckets: u64,
    /// `runtime.MemProfileRate`: bytes between sampled allocations (0: profiling off).
    pub mem_profile_rate: u64,
    /// How they were found.
    pub found_by: FoundBy,
    /// ELF address minus file offset of its first loadable segment: with where that segment
    /// is mapped, gives the load bias.
    pub load_delta: u64,
}

/// The magic at the start of `.go.buildinfo`.
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// Reads `path`: `Ok(None)` when it is no Go program.
pub fn detect(path: &Path) -> Result<Option<GoBinary>, GoBinaryError> {
    let data = std::fs::read(path).map_err(|source| GoBinaryError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let Ok(file) = object::File::parse(&*data) else {
        return Ok(None);
    };
    let Some(buildinfo) = file
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
    else {
        return Ok(None);
    };
    let version = buildinfo_version(buildinfo).unwrap_or_else(|| "go (version unknown)".into());
    let not_found = |variable: &'static str, why: String| GoBinaryError::NotFound {
        path: path.display().to_string(),
        version: version.clone(),
        variable,
        why,
    };
    let symbol = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    };
    let load_delta = file
        .segments()
        .next()
        .map_or(0, |s| s.address().wrapping_sub(s.file_range().0));
    let (mbuckets, mem_profile_rate, found_by) =
        match (symbol("runtime.mbuckets"), symbol("runtime.MemProfileRate")) {
            (Some(mbuckets), Some(rate)) => (mbuckets, rate, FoundBy::Symbols),
            _ => {
                let located =
                    locate_by_code(&data).map_err(|(variable, why)| not_found(variable, why))?;
                (located.0, located.1, FoundBy::Code)
            }
        };
    Ok(Some(GoBinary {
        version: version.clone(),
        mbuckets,
        mem_profile_rate,
        found_by,
        load_delta,
    }))
}

/// Finds `runtime.mbuckets` and `runtime.MemProfileRate` in a binary without symbols, by the
/// code that reads them (functions `.gopclntab` names):
///
/// - `runtime.mProf_FlushLocked` walks the bucket list: its first 8-byte load from a global
///   is `mbuckets`;
/// - `runtime.profilealloc` computes the next sample (`if MemProfileRate == 1`): the global
///   last loaded into the register compared with 1 is `MemProfileRate`.
///
/// Both must land in the binary's writable data. Checked against the symbols of unstripped
/// binaries of every Go version the tests build.
pub fn locate_by_code(data: &[u8]) -> Result<(u64, u64), (&'static str, String)> {
    let fail = |variable: &'static str, why: &str| (variable, why.to_owned());
    let table = GoTable::parse(data)
        .map_err(|why| ("runtime.mbuckets", why))?
        .ok_or_else(|| fail("runtime.mbuckets", "it has no .gopclntab"))?;
    let file = object::File::parse(data).map_err(|err| ("runtime.mbuckets", err.to_string()))?;
    let code = |name: &str| -> Option<(u64, Vec<u8>)> {
        let (entry, end) = table.function_named(name)?;
        let text = file
            .sections()
            .find(|s| entry >= s.address() && end <= s.address() + s.size())?;
        let bytes = text.data_range(entry, end - entry).ok().flatten()?.to_vec();
        Some((entry, bytes))
    };
    let writable = |addr: u64| {
        file.sections().any(|s| {
            matches!(s.name(), Ok(".data" | ".noptrdata" | ".bss" | ".noptrbss"))
                && addr >= s.address()
                && addr < s.address() + s.size()
        })
    };
    let (entry, bytes) = code("runtime.mProf_FlushLocked")
        .ok_or_else(|| fail("runtime.mbuckets", "no function runtime.mProf_FlushLocked"))?;
    let mbuckets = first_global_load(entry, &bytes)
        .filter(|a| writable(*a))
        .ok_or_else(|| {
            fail(
                "runtime.mbuckets",
                "runtime.mProf_FlushLocked reads no global",
            )
        })?;
    let (entry, bytes) = code("runtime.profilealloc")
        .ok_or_else(|| fail("runtime.MemProfileRate", "no function runtime.profilealloc"))?;
    let rate = global_compared_with_one(entry, &bytes)
        .filter(|a| writable(*a))
        .ok_or_else(|| {
            fail(
                "runtime.MemProfileRate",
                "runtime.profilealloc compares no global with 1",
            )
        })?;
    Ok((mbuckets, rate))
}

/// The address of the first 8-byte load from a RIP-relative global into a register.
fn first_global_load(ip: u64, code: &[u8]) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    decoder
        .iter()
        .find_map(|i| global_load(&i).map(|(_, addr)| addr))
}

/// `(register, address)` when `i` is `mov r64, [rip + disp]`.
fn global_load(i: &Instruction) -> Option<(Register, u64)> {
    (i.mnemonic() == Mnemonic::Mov
        && i.op_count() == 2
        && i.op0_kind() == OpKind::Register
        && i.op0_register().size() == 8
        && i.is_ip_rel_memory_operand())
    .then(|| (i.op0_register(), i.ip_rel_memory_address()))
}

/// The address of the global compared with 1 first: `cmp [rip + disp], 1`, or `cmp r, 1` after
/// the last load of `r` from a global (in address order: the compiler may branch around a
/// write to `r` in between, as Go 1.27's `if MemProfileRate == 0 {...}` does).
fn global_compared_with_one(ip: u64, code: &[u8]) -> Option<u64> {
    let mut loaded: Vec<(Register, u64)> = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    for i in decoder.iter() {
        if let Some((reg, addr)) = global_load(&i) {
            loaded.retain(|(r, _)| *r != reg);
            loaded.push((reg, addr));
            continue;
        }
        let with_one = i.mnemonic() == Mnemonic::Cmp
            && i.op_count() == 2
            && matches!(
                i.op1_kind(),
                OpKind::Immediate8to64 | OpKind::Immediate32to64 | OpKind::Immediate8
            )
            && i.immediate(1) == 1;
        if with_one {
            if i.is_ip_rel_memory_operand() && i.memory_size().size() == 8 {
                return Some(i.ip_rel_memory_address());
            }
            if i.op0_kind() == OpKind::Register
                && let Some((_, addr)) = loaded.iter().find(|(r, _)| *r == i.op0_register())
            {
                return Some(*addr);
            }
        }
    }
    None
}

/// The Go version recorded in `.go.buildinfo` (Go 1.18+ writes it inline, after the 32-byte
/// header, as a varint-prefixed string).
fn buildinfo_version(section: &[u8]) -> Option<String> {
    if !section.starts_with(BUILDINFO_MAGIC) {
        return None;
    }
    let flags = *section.get(15)?;
    if flags & 2 == 0 {
        return None;
    }
    let rest = section.get(32..)?;
    let (len, used) = uvarint(rest)?;
    let bytes = rest.get(used..used.checked_add(usize::try_from(len).ok()?)?)?;
    String::from_utf8(bytes.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inline_build_info_gives_the_version() {
        let mut section = BUILDINFO_MAGIC.to_vec();
        section.extend([8, 2]);
        section.resize(32, 0);
        section.push(8);
        section.extend(b"go1.19.8");
        section.extend(b"\x00trailing");
        assert_eq!(buildinfo_version(&section).as_deref(), Some("go1.19.8"));
        // Older layouts, a wrong magic or a truncated section give none
        section[15] = 0;
        assert_eq!(buildinfo_version(&section), None);
        assert_eq!(buildinfo_version(b"\xff Go buildinf"), None);
        let mut short = BUILDINFO_MAGIC.to_vec();
        short.extend([8, 2]);
        short.resize(32, 0);
        short.push(50);
        assert_eq!(buildinfo_version(&short), None);
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| {
                u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("0"), 16).unwrap_or(0)
            })
            .collect()
    }

    #[test]
    fn the_bucket_list_is_the_first_global_the_flush_loads() {
        // Go 1.19's runtime.mProf_FlushLocked: mov rcx, [rip+0x162419] (runtime.mbuckets,
        // 0x58e910 in that binary's symbol table), then a call
        let code = hex("488b0d19241600 e85afaffff");
        assert_eq!(first_global_load(0x42c4f0, &code), Some(0x58e910));
        assert_eq!(first_global_load(0, &hex("4889e5 c3")), None);
    }

    #[test]
    fn the_rate_is_the_global_compared_with_one() {
        // Go 1.27's runtime.profilealloc: mov rsi, [MemProfileRate]; test rsi, rsi; jne;
        // mov rsi, MaxInt64 (branched around); jmp; cmp rsi, 1
        let code = hex("488b3526fd1d00 4885f6 750c 48beffffffffffffff7f eb40 4883fe01 7504");
        assert_eq!(
            global_compared_with_one(0x41e99b, &code),
            Some(0x41e9a2 + 0x1dfd26)
        );
        // Go 1.19's: mov rax, [MemProfileRate]; cmp rax, 1
        let code = hex("488b05fa121b00 4883f801");
        assert_eq!(
            global_compared_with_one(0x40ca97, &code),
            Some(0x40ca9e + 0x1b12fa)
        );
        // cmp qword [rip+0x10], 1 directly
        let code = hex("48833d1000000001");
        assert_eq!(global_compared_with_one(0x1000, &code), Some(0x1008 + 0x10));
        // A comparison with 1 of a register no global was loaded into is nothing
        assert_eq!(global_compared_with_one(0, &hex("4883f801")), None);
    }

    #[test]
    fn a_c_program_is_no_go_program() {
        let me = std::env::current_exe().expect("this test binary");
        assert_eq!(detect(&me).expect("readable"), None);
    }
}
