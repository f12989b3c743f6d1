//! What the running kernel offers leaktrace, found by trying it (not by reading its version).
//!
//! At start, before anything is loaded or attached, each BPF feature the programs use is probed
//! the way the kernel itself would judge it: a ring buffer map is created, and each helper is
//! named in a three-instruction program of the probes' type, which the verifier refuses with
//! "invalid func" or "unknown func" exactly when the helper is missing (any other complaint means
//! the helper exists). [`Features::check`] then refuses a mode the kernel cannot run, saying what
//! is missing and what still works, and [`Features::fallbacks`] names what runs degraded.
//!
//! Uprobe sessions and `uprobe_multi` links are judged when the programs load (the attempt is the
//! probe; see [`crate::probe::ReturnProbes`]).
use std::os::fd::{FromRawFd as _, OwnedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type, bpf_prog_type};

use crate::{error::Failure, probe::UnwindMode};

/// BPF helper ids (`enum bpf_func_id`, stable across kernels).
mod helper {
    pub(super) const PROBE_READ_USER: i32 = 112;
    pub(super) const TASK_STORAGE_GET: i32 = 156;
    pub(super) const GET_CURRENT_TASK_BTF: i32 = 158;
    pub(super) const GET_ATTACH_COOKIE: i32 = 174;
    pub(super) const LOOP: i32 = 181;
}

/// Which tracing modes need a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeededBy {
    /// Every eBPF mode.
    All,
    /// Unwinding through `.eh_frame` (`--unwind auto` and `--unwind dwarf`).
    TableUnwinding,
}

/// One kernel feature leaktrace's programs use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What it is, as users read it.
    pub name: &'static str,
    /// The first mainline kernel that has it (for the message only; it is never compared).
    pub since: &'static str,
    /// What it is used for.
    pub used_for: &'static str,
    /// Which modes cannot run without it.
    pub needed_by: NeededBy,
    /// Whether this kernel has it.
    pub present: bool,
}

/// The probed features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// Required or mode-required features, in the order they are reported.
    pub required: Vec<Feature>,
    /// Kernel BTF at `/sys/kernel/btf/vmlinux` with the return-instance layout the unwinder
    /// reads (else frames under another tool's return probe end the stack).
    pub return_instance_layout: Result<(), &'static str>,
    /// `PIDFD_GET_INFO` (else how a target ended is not known once its parent reaped it).
    pub pidfd_info: bool,
    /// How the programs are kept from being preempted (see [`crate::probe::preempt`]).
    pub preempt_guard: crate::probe::preempt::Guard,
    /// Whether the stack and sample maps are preallocated (smaller) because the kernel warns
    /// about run-time allocated ones (see [`crate::probe::object`]).
    pub maps_preallocated: bool,
    /// Whether the stack walks' global functions are loaded static because the kernel refuses
    /// global calls with preemption disabled (see [`crate::probe::object`]).
    pub static_functions: bool,
}

impl Features {
    /// Probes the running kernel.
    pub fn probe() -> Self {
        let helper = |id| helper_present(id);
        let required = vec![
            Feature {
                name: "BPF ring buffers",
                since: "5.8",
                used_for: "sending events to user space",
                needed_by: NeededBy::All,
                present: ringbuf_present(),
            },
            Feature {
                name: "bpf_probe_read_user",
                since: "5.5",
                used_for: "reading the target's stack",
                needed_by: NeededBy::All,
                present: helper(helper::PROBE_READ_USER),
            },
            Feature {
                name: "BPF cookies on uprobes (bpf_get_attach_cookie)",
                since: "5.15",
                used_for: "telling allocator functions apart",
                needed_by: NeededBy::All,
                present: helper(helper::GET_ATTACH_COOKIE),
            },
            Feature {
                name: "task-local storage in tracing programs (bpf_task_storage_get)",
                since: "5.12",
                used_for: "the unwinder's per-thread stack copy",
                needed_by: NeededBy::All,
                present: helper(helper::TASK_STORAGE_GET) && helper(helper::GET_CURRENT_TASK_BTF),
            },
            Feature {
                name: "bpf_loop",
                since: "5.17",
                used_for: "unwinding through .eh_frame tables",
                needed_by: NeededBy::TableUnwinding,
                present: helper(helper::LOOP),
            },
        ];
        let return_instance_layout = if !std::path::Path::new(BTF_PATH).exists() {
            Err("no kernel BTF")
        } else if crate::probe::btf::return_instance_offsets().is_none() {
            Err("the kernel's BTF lacks the uprobe return-instance layout")
        } else {
            Ok(())
        };
        Self {
            required,
            return_instance_layout,
            pidfd_info: crate::target::pidfd_exit_info_supported(),
            preempt_guard: crate::probe::object::prepared().guard,
            maps_preallocated: crate::probe::object::prepared().preallocated,
            static_functions: crate::probe::object::prepared().static_functions,
        }
    }

    /// Refuses (exit 2, before anything is loaded) when this kernel cannot run `unwind`, saying
    /// what is missing and what would still work.
    pub fn check(&self, unwind: UnwindMode) -> Result<(), Failure> {
        let missing = |needed_by| {
            self.required
                .iter()
                .filter(move |f| !f.present && f.needed_by == needed_by)
        };
        let list = |features: Vec<&Feature>| {
            features
                .iter()
                .map(|f| format!("{} (Linux {}+, for {})", f.name, f.since, f.used_for))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let all: Vec<&Feature> = missing(NeededBy::All).collect();
        if !all.is_empty() {
            return Err(Failure::usage(
                format!(
                    "this kernel lacks {}, which every tracing mode needs",
                    list(all)
                ),
                "no eBPF mode runs on this kernel; run leaktrace on a newer kernel",
            ));
        }
        let tables: Vec<&Feature> = missing(NeededBy::TableUnwinding).collect();
        if !tables.is_empty() && unwind != UnwindMode::Fp {
            return Err(Failure::usage(
                format!(
                    "this kernel lacks {}, which --unwind {} needs",
                    list(tables),
                    unwind.name()
                ),
                "--unwind fp still works here: full stacks through code built with frame \
                 pointers, stacks cut at the first frame without them",
            ));
        }
        Ok(())
    }

    /// One line per feature that runs degraded on this kernel, for the attach summary.
    pub fn fallbacks(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Err(why) = self.return_instance_layout {
            lines.push(format!(
                "frames under another tool's return probe: end the stack ({why})"
            ));
        }
        if self.preempt_guard == crate::probe::preempt::Guard::NoBtf {
            lines.push(
                "preemption: programs not guarded (no kernel BTF to call bpf_preempt_disable \
                 by); a preemptible kernel of 6.13 or later could corrupt their stacks"
                    .to_owned(),
            );
        }
        if self.static_functions {
            lines.push(
                "unwinder: verified as one program (this kernel refuses global functions with \
                 preemption disabled: 6.10 to 6.14); loading takes longer"
                    .to_owned(),
            );
        }
        if self.maps_preallocated {
            lines.push(format!(
                "stacks: at most {} distinct, preallocated (run-time allocated maps make this \
                 kernel log a warning: before 6.1)",
                crate::probe::object::PREALLOCATED_STACKS
            ));
        }
        if !self.pidfd_info {
            lines.push(
                "how the target ends: exit code or signal not known unless leaktrace launched \
                 it (no PIDFD_GET_INFO: Linux 6.15+)"
                    .to_owned(),
            );
        }
        lines
    }
}

/// Where the kernel publishes its own BTF.
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Calls `bpf(cmd, attr)`, returning the new descriptor.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> Option<OwnedFd> {
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
    // SAFETY: a non-negative return is a descriptor the kernel just made, owned by nothing else.
    (ret >= 0).then(|| unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// A zeroed `bpf_attr`, as the kernel requires for every unused byte.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a C union of integer fields; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Whether a ring buffer map can be created.
fn ringbuf_present() -> bool {
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integer fields of the `BPF_MAP_CREATE` member of the union.
    unsafe {
        let map = &mut attr.__bindgen_anon_1;
        map.map_type = bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32;
        map.max_entries = 4096;
    }
    bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).is_some()
}

/// One eBPF instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut out = [0; 8];
    out[0] = code;
    out[1] = (src << 4) | (dst & 0xf);
    out[2..4].copy_from_slice(&off.to_le_bytes());
    out[4..8].copy_from_slice(&imm.to_le_bytes());
    out
}

/// Whether helper `id` may be called from a uprobe program: `call id; r0 = 0; exit` is loaded,
/// and only a verifier log naming the call as an invalid or unknown function means it is
/// missing (other refusals, such as its unset arguments, mean the helper is there).
/// Whether the kernel has `bpf_loop` (5.17+), which the programs' own frame-pointer walk runs
/// under.
pub(crate) fn bpf_loop_present() -> bool {
    helper_present(helper::LOOP)
}

fn helper_present(id: i32) -> bool {
    const CALL: u8 = 0x85;
    const MOV64_IMM: u8 = 0xb7;
    const EXIT: u8 = 0x95;
    let program: Vec<u8> = [
        insn(CALL, 0, 0, 0, id),
        insn(MOV64_IMM, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
    .concat();
    let license = c"GPL";
    let mut log = vec![0u8; 64 << 10];
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integer fields of the `BPF_PROG_LOAD` member of the union; the
    // program, license and log outlive the call.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
        load.insn_cnt = (program.len() / 8) as u32;
        load.insns = program.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        load.log_level = 1;
        load.log_size = log.len() as u32;
        load.log_buf = log.as_mut_ptr() as u64;
    }
    if bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).is_some() {
        return true;
    }
    !helper_missing_from_log(&log)
}

/// Whether a verifier log says the program called a helper the kernel does not offer it.
fn helper_missing_from_log(log: &[u8]) -> bool {
    let text = String::from_utf8_lossy(log);
    text.contains("invalid func ") || text.contains("unknown func ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(missing: &[&str]) -> Features {
        let mut probed = Features::probe();
        for feature in &mut probed.required {
            feature.present = !missing.contains(&feature.name);
        }
        probed
    }

    #[test]
    fn this_kernel_has_every_feature() {
        // Given the kernel these tests run on (6.1 or later)
        let probed = Features::probe();
        // Then nothing required is missing and every mode may run
        let missing: Vec<_> = probed.required.iter().filter(|f| !f.present).collect();
        assert!(missing.is_empty(), "{missing:?}");
        assert!(probed.check(UnwindMode::Auto).is_ok());
        assert!(probed.check(UnwindMode::Fp).is_ok());
    }

    #[test]
    fn a_made_up_helper_is_missing() {
        // Given a helper id no kernel has: the probe can say no
        assert!(!helper_present(100_000));
        // and one every kernel since 4.x has is present
        assert!(helper_present(helper::PROBE_READ_USER));
    }

    #[test]
    fn no_bpf_loop_refuses_table_unwinding_and_names_fp() {
        // Given a kernel without bpf_loop (5.15)
        let probed = features(&["bpf_loop"]);
        // When the default mode starts, it is refused with exit 2, naming what works
        let failure = probed.check(UnwindMode::Auto).expect_err("refused");
        assert_eq!(failure.code, crate::error::EXIT_USAGE);
        let line = failure.to_string();
        assert!(line.contains("lacks bpf_loop (Linux 5.17+"), "{line}");
        assert!(line.contains("--unwind auto needs"), "{line}");
        assert!(line.contains("--unwind fp still works"), "{line}");
        assert!(probed.check(UnwindMode::Dwarf).is_err());
        // and frame pointers run
        assert!(probed.check(UnwindMode::Fp).is_ok());
    }

    #[test]
    fn no_cookies_refuses_every_mode() {
        // Given a kernel without BPF cookies (5.10)
        let probed = features(&["BPF cookies on uprobes (bpf_get_attach_cookie)", "bpf_loop"]);
        // Then even frame pointers are refused, and the line names the cookie, not bpf_loop
        let failure = probed.check(UnwindMode::Fp).expect_err("refused");
        let line = failure.to_string();
        assert!(line.contains("bpf_get_attach_cookie"), "{line}");
        assert!(!line.contains("bpf_loop"), "{line}");
        assert!(line.contains("every tracing mode"), "{line}");
    }

    #[test]
    fn the_log_check_matches_both_kernel_wordings() {
        assert!(helper_missing_from_log(
            b"0: (85) call unknown#181\ninvalid func unknown#181\n"
        ));
        assert!(helper_missing_from_log(b"unknown func bpf_loop#181\n"));
        assert!(!helper_missing_from_log(b"R1 !read_ok\n"));
    }
}
