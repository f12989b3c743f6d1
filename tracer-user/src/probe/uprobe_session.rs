//! Uprobe sessions (Linux 6.13+): one program runs at a function's entry and, only when the entry
//! asks for it, at its return.
//!
//! When sampling, most allocator calls are not sampled and nothing at their return matters.
//! With a separate return probe each of them still pays a second trap (the kernel swaps the
//! return address for its trampoline at every entry). A session lets the entry program return 1
//! to skip the return, so an unsampled call costs one trap.
//!
//! The pinned aya (0.14) can neither load a program with the session attach type nor create a
//! `uprobe_multi` link, so this module does both through the `bpf()` system call:
//! - [`SessionProgram::load`] parses the same eBPF object with `aya-obj`, points its map
//!   references at the maps aya already created (so both loads share every map and global), links
//!   its subprograms, and loads the one program with `expected_attach_type =
//!   BPF_TRACE_UPROBE_SESSION`, reusing the BTF aya loaded for the object (the unwinder's
//!   `bpf_loop` callback needs BTF function info);
//! - [`SessionLink::attach`] creates one `uprobe_multi` link over every allocating function of a
//!   file, filtered to one process, with the function's kind as each probe's cookie.
//!
//! Closing a link's file descriptor detaches it, so dropping [`SessionLink`] (also while
//! unwinding from a panic, or when the process exits) leaves the target unprobed.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_type};

/// `BPF_TRACE_UPROBE_SESSION` in `enum bpf_attach_type` (Linux 6.13); the bindings aya-obj 0.3
/// ships predate it.
const BPF_TRACE_UPROBE_SESSION: u32 = 57;

/// `BPF_TRACE_UPROBE_MULTI` in `enum bpf_attach_type` (Linux 6.6): plain entry probes, many in
/// one link.
const BPF_TRACE_UPROBE_MULTI: u32 = 48;

/// How a program loaded here is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// As a uprobe session: entry, and return when the entry asks for it.
    Session,
    /// As plain probes, at entries or returns (the link says which).
    Multi,
}

impl Attach {
    fn attach_type(self) -> u32 {
        match self {
            Self::Session => BPF_TRACE_UPROBE_SESSION,
            Self::Multi => BPF_TRACE_UPROBE_MULTI,
        }
    }
}

/// `uprobe_multi.flags`: probe the returns.
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// Bytes of verifier log kept when the kernel refuses the program.
const VERIFIER_LOG_BYTES: usize = 1 << 20;

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The object could not be parsed or relocated.
    #[error("preparing {program}: {detail}")]
    Prepare {
        /// The program.
        program: String,
        /// What went wrong.
        detail: String,
    },
    /// A `bpf()` call failed.
    #[error("{what}: {source}")]
    Syscall {
        /// The call.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The verifier refused the program; the end of its log says why.
    #[error("the kernel refused {program}: {source}; verifier log ends: {log}")]
    Verifier {
        /// The program.
        program: String,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
        /// The last lines of the verifier log.
        log: String,
    },
}

/// Calls `bpf(cmd, attr)`.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, fully initialized `bpf_attr` of the size passed; every pointer
    // stored in it by the callers points at memory that outlives this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a file descriptor a successful `bpf()` call returned.
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// A zeroed `bpf_attr`, as the kernel requires for every unused byte.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a C union of integer fields; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// The map data behind any kind of aya map.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(data)
        | Map::ArrayOfMaps(data)
        | Map::BloomFilter(data)
        | Map::CgroupArray(data)
        | Map::CgroupStorage(data)
        | Map::CgrpStorage(data)
        | Map::CpuMap(data)
        | Map::DevMap(data)
        | Map::DevMapHash(data)
        | Map::HashMap(data)
        | Map::HashOfMaps(data)
        | Map::InodeStorage(data)
        | Map::LpmTrie(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuCgroupStorage(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::PerfEventArray(data)
        | Map::ProgramArray(data)
        | Map::Queue(data)
        | Map::ReusePortSockArray(data)
        | Map::RingBuf(data)
        | Map::SockHash(data)
        | Map::SockMap(data)
        | Map::SkStorage(data)
        | Map::Stack(data)
        | Map::StackTraceMap(data)
        | Map::Unsupported(data)
        | Map::XskMap(data) => data,
    }
}

/// A program loaded for `uprobe_multi` links (a session, or plain entry probes).
#[derive(Debug)]
pub struct SessionProgram {
    fd: OwnedFd,
    attach: Attach,
}

impl SessionProgram {
    /// Loads program `name` of `object` to be attached as `attach` says. `ebpf` is the same
    /// object already loaded by aya, before any of its maps were taken out; `btf_id` is the id
    /// of the BTF aya loaded for it (any of its loaded programs reports it).
    pub fn load(
        object: &[u8],
        ebpf: &Ebpf,
        name: &str,
        btf_id: u32,
        attach: Attach,
    ) -> Result<Self, SessionError> {
        let prepare = |detail: String| SessionError::Prepare {
            program: name.to_owned(),
            detail,
        };
        let mut obj = aya_obj::Object::parse(object).map_err(|err| prepare(err.to_string()))?;
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|(section, _)| *section).collect();
        let obj_maps: HashMap<String, aya_obj::Map> = obj.maps.drain().collect();
        let mut fds: Vec<(&str, RawFd, &aya_obj::Map)> = Vec::with_capacity(obj_maps.len());
        for (map_name, obj_map) in &obj_maps {
            let map = ebpf
                .map(map_name)
                .ok_or_else(|| prepare(format!("map {map_name} was not created")))?;
            fds.push((map_name, map_data(map).fd().as_fd().as_raw_fd(), obj_map));
        }
        obj.relocate_maps(fds.into_iter(), &text_sections)
            .map_err(|err| prepare(err.to_string()))?;
        obj.relocate_calls(&text_sections)
            .map_err(|err| prepare(err.to_string()))?;
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| prepare("no such program in the object".into()))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| prepare("the program has no code".into()))?;

        let btf = btf_fd_by_id(btf_id)?;
        let license = program.license.clone();
        let mut prog_name = [0 as libc::c_char; 16];
        for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
        let func_info = &function.func_info.func_info;
        let line_info = &function.line_info.line_info;
        let load = |log: &mut Vec<u8>, log_level: u32| {
            let mut attr = zeroed_attr();
            // SAFETY: writing plain integer fields of the `BPF_PROG_LOAD` member of the union.
            let load = unsafe { &mut attr.__bindgen_anon_3 };
            load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
            load.insn_cnt = function.instructions.len() as u32;
            load.insns = function.instructions.as_ptr() as u64;
            load.license = license.as_ptr() as u64;
            load.prog_name = prog_name;
            load.expected_attach_type = attach.attach_type();
            load.prog_btf_fd = btf.as_raw_fd() as u32;
            load.func_info_rec_size = function.func_info_rec_size as u32;
            load.func_info = func_info.as_ptr() as u64;
            load.func_info_cnt = func_info.len() as u32;
            load.line_info_rec_size = function.line_info_rec_size as u32;
            load.line_info = line_info.as_ptr() as u64;
            load.line_info_cnt = line_info.len() as u32;
            if log_level != 0 {
                load.log_level = log_level;
                load.log_buf = log.as_mut_ptr() as u64;
                load.log_size = log.len() as u32;
            }
            bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
        };
        let mut log = Vec::new();
        match load(&mut log, 0) {
            Ok(fd) => Ok(Self {
                fd: owned(fd),
                attach,
            }),
            Err(_) => {
                // Again with the verifier's log, to say why.
                log = vec![0u8; VERIFIER_LOG_BYTES];
                match load(&mut log, 1) {
                    Ok(fd) => Ok(Self {
                        fd: owned(fd),
                        attach,
                    }),
                    Err(source) => Err(SessionError::Verifier {
                        program: name.to_owned(),
                        source,
                        log: log_tail(&log),
                    }),
                }
            }
        }
    }
}

/// The last few lines of a NUL-terminated verifier log, on one line.
fn log_tail(log: &[u8]) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// A new descriptor for the loaded BTF object `id`.
fn btf_fd_by_id(id: u32) -> Result<OwnedFd, SessionError> {
    let mut attr = zeroed_attr();
    // Writing a `Copy` union field is safe; the `BPF_*_GET_FD_BY_ID` member takes the id.
    attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
    bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr)
        .map(owned)
        .map_err(|source| SessionError::Syscall {
            what: "opening the object's BTF",
            source,
        })
}

/// A `uprobe_multi` link (a session, or entry probes); dropping it detaches every probe it
/// holds at once, where separate probes are each removed in turn (about 80 ms each here).
#[derive(Debug)]
pub struct SessionLink {
    _fd: OwnedFd,
    probes: usize,
}

impl SessionLink {
    /// Attaches `program` at each file offset of `path` (with the matching cookie), firing
    /// only in process `pid`: at the functions' returns when `at_return` (a plain program
    /// only), else at their entries (and, for a session, their returns).
    pub fn attach(
        program: &SessionProgram,
        path: &Path,
        offsets: &[u64],
        cookies: &[u64],
        pid: u32,
        at_return: bool,
    ) -> Result<Self, SessionError> {
        let syscall = |source| SessionError::Syscall {
            what: "creating a uprobe_multi link",
            source,
        };
        if offsets.len() != cookies.len() || offsets.is_empty() {
            return Err(syscall(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            )));
        }
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| syscall(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        let mut attr = zeroed_attr();
        // SAFETY: writing plain integer fields of the `BPF_LINK_CREATE` member of the union; the
        // path, offsets and cookies it points at outlive the call.
        unsafe {
            let link = &mut attr.link_create;
            link.__bindgen_anon_1.prog_fd = program.fd.as_raw_fd() as u32;
            link.attach_type = program.attach.attach_type();
            let multi = &mut link.__bindgen_anon_3.uprobe_multi;
            multi.path = path.as_ptr() as u64;
            multi.offsets = offsets.as_ptr() as u64;
            multi.cookies = cookies.as_ptr() as u64;
            multi.cnt = offsets.len() as u32;
            multi.pid = pid;
            if at_return {
                multi.flags = BPF_F_UPROBE_MULTI_RETURN;
            }
        }
        let fd = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(syscall)?;
        Ok(Self {
            _fd: owned(fd),
            probes: offsets.len(),
        })
    }

    /// Number of probed functions.
    pub fn probes(&self) -> usize {
        self.probes
    }
}

#[cfg(test)]
mod tests {
    use super::log_tail;

    #[test]
    fn log_tail_keeps_the_last_three_lines() {
        // Given a verifier log with blank lines and a NUL-padded buffer
        let mut log = b"0: r1 = r2\n\n1: call 173\nR1 invalid\nprocessed 3 insns\n".to_vec();
        log.extend_from_slice(&[0; 16]);
        // When the tail is taken
        // Then it is the last three non-blank lines, joined
        assert_eq!(
            log_tail(&log),
            "1: call 173 | R1 invalid | processed 3 insns"
        );
    }
}
