//! Rewriting the eBPF object's preemption guards before it is loaded.
//!
//! Each uprobe program runs its body with preemption disabled (see `tracer-ebpf/src/preempt.rs`:
//! since 6.13 the kernel gives such programs per-CPU private stacks, which two tasks on one CPU
//! would share on a preemptible kernel). aya 0.14 cannot emit kfunc calls, so the object calls
//! two helper ids no kernel has ([`tracer_common::preempt`]); here each becomes a call of the
//! `bpf_preempt_disable` or `bpf_preempt_enable` kfunc, by its id in the running kernel's BTF,
//! or `r0 = 0` where the kernel has no such kfunc (before 6.10; those kernels give no private
//! stacks either).
use object::{Object as _, ObjectSection as _, SectionFlags, elf::SHF_EXECINSTR};
use tracer_common::preempt::{DISABLE, ENABLE};

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `src_reg` of a call to a kernel function by BTF id.
const PSEUDO_KFUNC_CALL: u8 = 2;
/// `r0 = 0` (`BPF_ALU64 | BPF_MOV | BPF_K`).
const MOV_R0_ZERO: [u8; 8] = [0xb7, 0, 0, 0, 0, 0, 0, 0];

/// How the guards were resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Calls of the kernel's `bpf_preempt_disable` / `bpf_preempt_enable`.
    Kfuncs,
    /// The kernel's BTF names no such kfuncs (before 6.10): the guards do nothing.
    NoKfuncs,
    /// No kernel BTF to find them by: the guards do nothing.
    NoBtf,
}

/// How this kernel's BTF resolves the guards: the two kfuncs' ids, and what that means.
pub fn resolve() -> (Option<u32>, Option<u32>, Guard) {
    let Some(btf) = crate::probe::btf::kernel() else {
        return (None, None, Guard::NoBtf);
    };
    let (disable, enable) = (
        btf.functions.get("bpf_preempt_disable").copied(),
        btf.functions.get("bpf_preempt_enable").copied(),
    );
    let guard = if disable.is_some() && enable.is_some() {
        Guard::Kfuncs
    } else {
        Guard::NoKfuncs
    };
    (disable, enable, guard)
}

/// Rewrites every placeholder call in the executable sections of ELF `bytes`: into kfunc calls
/// by the given BTF ids, or into `r0 = 0` where an id is missing. Returns how many it rewrote.
pub fn rewrite(bytes: &mut [u8], disable: Option<u32>, enable: Option<u32>) -> usize {
    let ranges: Vec<(usize, usize)> = match object::File::parse(&*bytes) {
        Ok(file) => file
            .sections()
            .filter(|s| {
                matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & u64::from(SHF_EXECINSTR) != 0)
            })
            .filter_map(|s| {
                let (start, size) = s.file_range()?;
                Some((usize::try_from(start).ok()?, usize::try_from(size).ok()?))
            })
            .collect(),
        Err(_) => return 0,
    };
    let mut rewritten = 0;
    for (start, size) in ranges {
        let Some(code) = bytes.get_mut(start..start.saturating_add(size)) else {
            continue;
        };
        for insn in code.chunks_exact_mut(8) {
            if insn[0] != CALL || insn[1] != 0 {
                continue;
            }
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            let id = match imm {
                DISABLE => disable,
                ENABLE => enable,
                _ => continue,
            };
            match id {
                Some(id) => {
                    insn[1] = PSEUDO_KFUNC_CALL << 4;
                    insn[2..4].copy_from_slice(&0i16.to_le_bytes());
                    insn[4..8].copy_from_slice(&id.to_le_bytes());
                }
                None => insn.copy_from_slice(&MOV_R0_ZERO),
            }
            rewritten += 1;
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

    fn count_placeholders(bytes: &[u8]) -> usize {
        bytes
            .chunks_exact(8)
            .filter(|i| {
                i[0] == CALL
                    && i[1] == 0
                    && [DISABLE, ENABLE].contains(&i32::from_le_bytes([i[4], i[5], i[6], i[7]]))
            })
            .count()
    }

    #[test]
    fn every_guard_of_every_program_is_rewritten() {
        // Given the built object: disable and enable in each of the four guarded programs
        let placeholders = count_placeholders(OBJECT);
        assert!(placeholders >= 8, "{placeholders}");
        // When rewritten with made-up ids, then as no-ops
        let mut with_ids = OBJECT.to_vec();
        assert_eq!(rewrite(&mut with_ids, Some(77), Some(78)), placeholders);
        let mut without = OBJECT.to_vec();
        assert_eq!(rewrite(&mut without, None, None), placeholders);
        // Then none is left, and the calls name the ids as kfunc calls
        assert_eq!(count_placeholders(&with_ids), 0);
        let kfunc_calls = with_ids
            .chunks_exact(8)
            .filter(|i| i[0] == CALL && i[1] == PSEUDO_KFUNC_CALL << 4)
            .filter(|i| [77, 78].contains(&i32::from_le_bytes([i[4], i[5], i[6], i[7]])))
            .count();
        assert_eq!(kfunc_calls, placeholders);
        assert_eq!(count_placeholders(&without), 0);
    }

    #[test]
    fn this_kernel_has_the_kfuncs() {
        // Given the kernel these tests run on (6.10 or later)
        let (disable, enable, guard) = resolve();
        assert_eq!(guard, Guard::Kfuncs);
        assert!(disable.is_some() && enable.is_some() && disable != enable);
        // Then the object the kernel gets has no placeholder left
        assert_eq!(
            count_placeholders(crate::probe::object::prepared().bytes),
            0
        );
    }
}
