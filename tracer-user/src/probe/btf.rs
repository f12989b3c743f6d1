//! Reading struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The unwinder needs a few kernel structures to translate return addresses that another tool's
//! return probe replaced with the kernel's trampoline: the task's `utask`, its list of pending
//! `return_instances`, and each instance's saved stack slot and original return address. Their
//! offsets change between kernels, so they are read from BTF at start; without them the
//! translation is off and such frames end the stack (flagged incomplete).
use std::collections::HashMap;

/// BTF kinds with data after the common 12-byte type header.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// `BTF_KIND_FUNC`: a function (a kfunc's type id is its `FUNC`'s).
const KIND_FUNC: u32 = 12;

/// One type of a BTF blob, as [`for_each_type`] visits it.
struct Type<'a> {
    btf: &'a [u8],
    strings: usize,
    /// Its type id (the first type is 1).
    id: u32,
    kind: u32,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    /// Where its kind-specific data starts.
    data: usize,
}

impl Type<'_> {
    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.btf.get(at..at + 4)?.try_into().ok()?,
        ))
    }

    /// The string at `off` of the string section.
    fn string(&self, off: u32) -> Option<String> {
        let rest = self.btf.get(self.strings + off as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    fn name(&self) -> Option<String> {
        self.string(self.name_off)
    }
}

/// Calls `visit` for each type of raw BTF `btf`, in id order; `None` (from a malformed blob or
/// from `visit`) stops the walk.
fn for_each_type(btf: &[u8], mut visit: impl FnMut(&Type<'_>) -> Option<()>) -> Option<()> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(btf.get(at..at + 4)?.try_into().ok()?))
    };
    if btf.get(0..2)? != [0x9f, 0xeb] {
        return None;
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let mut at = types;
    let mut id = 1;
    while at + 12 <= types + type_len {
        let name_off = u32_at(at)?;
        let info = u32_at(at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let ty = Type {
            btf,
            strings,
            id,
            kind,
            name_off,
            vlen,
            kind_flag: info >> 31 != 0,
            data: at + 12,
        };
        visit(&ty)?;
        at += 12
            + match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                _ => 0,
            };
        id += 1;
    }
    Some(())
}

/// The type ids of the functions named in `wanted` that raw BTF `btf` has (a kfunc is called
/// by its id in the kernel's BTF).
pub fn function_ids(btf: &[u8], wanted: &[&str]) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    let _ = for_each_type(btf, |ty| {
        if ty.kind == KIND_FUNC
            && let Some(name) = ty.name()
            && wanted.contains(&name.as_str())
        {
            out.insert(name, ty.id);
        }
        Some(())
    });
    out
}

/// A function's linkage (the `vlen` of its `BTF_KIND_FUNC`): static, verified as part of each
/// caller.
pub const LINKAGE_STATIC: u16 = 0;

/// Sets the linkage of the functions named in `names` in raw BTF `btf` to `linkage`; returns
/// how many it changed.
pub fn set_function_linkage(btf: &mut [u8], names: &[&str], linkage: u16) -> usize {
    let mut infos = Vec::new();
    let _ = for_each_type(btf, |ty| {
        if ty.kind == KIND_FUNC
            && ty.vlen != usize::from(linkage)
            && ty.name().is_some_and(|name| names.contains(&name.as_str()))
        {
            // The type's `info` word, right after its name.
            infos.push(ty.data - 8);
        }
        Some(())
    });
    for &at in &infos {
        if let Some(word) = btf.get_mut(at..at + 4) {
            let info = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            let info = (info & !0xffff) | u32::from(linkage);
            word.copy_from_slice(&info.to_le_bytes());
        }
    }
    infos.len()
}

/// Member byte offsets of the named structs, as parsed from BTF.
#[derive(Debug, Default)]
pub struct StructOffsets {
    structs: HashMap<String, HashMap<String, u32>>,
}

impl StructOffsets {
    /// Parses raw BTF, keeping the members of the structs named in `wanted`.
    pub fn parse(btf: &[u8], wanted: &[&str]) -> Option<Self> {
        let mut out = Self::default();
        for_each_type(btf, |ty| {
            if ty.kind != KIND_STRUCT {
                return Some(());
            }
            let struct_name = ty.name()?;
            if !wanted.contains(&struct_name.as_str()) || out.structs.contains_key(&struct_name) {
                return Some(());
            }
            let mut members = HashMap::new();
            for m in 0..ty.vlen {
                let member = ty.data + m * 12;
                let offset = ty.u32_at(member + 8)?;
                // With kind_flag the low 24 bits are the bit offset.
                let bits = if ty.kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                };
                members.insert(ty.string(ty.u32_at(member)?)?, bits / 8);
            }
            out.structs.insert(struct_name, members);
            Some(())
        })?;
        Some(out)
    }

    /// Whether the struct `strukt` was found.
    pub fn has(&self, strukt: &str) -> bool {
        self.structs.contains_key(strukt)
    }

    /// The byte offset of `member` in `strukt`.
    pub fn offset(&self, strukt: &str, member: &str) -> Option<u32> {
        self.structs.get(strukt)?.get(member).copied()
    }
}

/// Where the kernel keeps pending return-probe instances (all byte offsets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReturnInstanceOffsets {
    /// `task_struct.utask`.
    pub task_utask: u32,
    /// `uprobe_task.return_instances`.
    pub utask_return_instances: u32,
    /// `return_instance.stack`: the stack slot whose return address was replaced.
    pub ri_stack: u32,
    /// `return_instance.orig_ret_vaddr`: the original return address.
    pub ri_orig_ret_vaddr: u32,
    /// `return_instance.next`.
    pub ri_next: u32,
}

/// What leaktrace reads from the running kernel's BTF: the structs and functions it asks
/// about, from one walk of the blob (a walk of `/sys/kernel/btf/vmlinux` takes about 100 ms).
#[derive(Debug)]
pub struct KernelBtf {
    /// Members of [`KERNEL_STRUCTS`] that the kernel has.
    pub structs: StructOffsets,
    /// Type ids of [`KERNEL_FUNCTIONS`] that the kernel has.
    pub functions: HashMap<String, u32>,
}

/// The kernel structs leaktrace reads: the return-instance layout, `bpf_mem_alloc` (its
/// presence says run-time allocated maps are safe in tracing programs) and the verifier's
/// `bpf_subprog_info` (its `might_sleep` says global functions may be called with preemption
/// disabled), see [`crate::probe::object`].
const KERNEL_STRUCTS: [&str; 5] = [
    "task_struct",
    "uprobe_task",
    "return_instance",
    "bpf_mem_alloc",
    "bpf_subprog_info",
];

/// The kfuncs leaktrace calls (see [`crate::probe::preempt`]).
const KERNEL_FUNCTIONS: [&str; 2] = ["bpf_preempt_disable", "bpf_preempt_enable"];

/// The running kernel's BTF, read and walked once; `None` without `/sys/kernel/btf/vmlinux`.
pub fn kernel() -> Option<&'static KernelBtf> {
    static KERNEL: std::sync::OnceLock<Option<KernelBtf>> = std::sync::OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let btf = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
            Some(KernelBtf {
                structs: StructOffsets::parse(&btf, &KERNEL_STRUCTS)?,
                functions: function_ids(&btf, &KERNEL_FUNCTIONS),
            })
        })
        .as_ref()
}

/// The offsets from the running kernel's BTF, if it has them all.
pub fn return_instance_offsets() -> Option<ReturnInstanceOffsets> {
    let offsets = &kernel()?.structs;
    Some(ReturnInstanceOffsets {
        task_utask: offsets.offset("task_struct", "utask")?,
        utask_return_instances: offsets.offset("uprobe_task", "return_instances")?,
        ri_stack: offsets.offset("return_instance", "stack")?,
        ri_orig_ret_vaddr: offsets.offset("return_instance", "orig_ret_vaddr")?,
        ri_next: offsets.offset("return_instance", "next")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_data_that_is_not_btf() {
        assert!(StructOffsets::parse(b"not btf at all", &["x"]).is_none());
        assert!(StructOffsets::parse(&[], &["x"]).is_none());
    }

    #[test]
    fn reads_a_synthetic_struct() {
        // Header (24 bytes), one struct with two members, then the strings.
        let strings = b"\0point\0x\0y\0";
        let mut types = Vec::new();
        let push = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        push(&mut types, 1); // name "point"
        push(&mut types, (KIND_STRUCT << 24) | 2); // struct, 2 members
        push(&mut types, 8); // size
        for (name, bit_offset) in [(7u32, 0u32), (9, 32)] {
            push(&mut types, name);
            push(&mut types, 0);
            push(&mut types, bit_offset);
        }
        let mut btf = vec![0x9f, 0xeb, 1, 0];
        push(&mut btf, 24);
        push(&mut btf, 0);
        push(&mut btf, types.len() as u32);
        push(&mut btf, types.len() as u32);
        push(&mut btf, strings.len() as u32);
        btf.extend_from_slice(&types);
        btf.extend_from_slice(strings);
        let offsets = StructOffsets::parse(&btf, &["point"]).expect("parses");
        assert_eq!(offsets.offset("point", "x"), Some(0));
        assert_eq!(offsets.offset("point", "y"), Some(4));
        assert_eq!(offsets.offset("point", "z"), None);
    }

    #[test]
    fn sets_the_linkage_of_named_functions_only() {
        // Header, a prototype, then two global functions "f" and "g" of it, then the strings.
        let strings = b"\0f\0g\0";
        let mut types = Vec::new();
        let push = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        push(&mut types, 0);
        push(&mut types, KIND_FUNC_PROTO << 24); // no parameters
        push(&mut types, 0); // returns void
        for name in [1u32, 3] {
            push(&mut types, name);
            push(&mut types, (KIND_FUNC << 24) | 1); // global
            push(&mut types, 1); // of the prototype
        }
        let mut btf = vec![0x9f, 0xeb, 1, 0];
        push(&mut btf, 24);
        push(&mut btf, 0);
        push(&mut btf, types.len() as u32);
        push(&mut btf, types.len() as u32);
        push(&mut btf, strings.len() as u32);
        btf.extend_from_slice(&types);
        btf.extend_from_slice(strings);
        let linkage = |btf: &[u8], wanted: &str| {
            let mut found = None;
            for_each_type(btf, |ty| {
                if ty.kind == KIND_FUNC && ty.name().as_deref() == Some(wanted) {
                    found = Some(ty.vlen);
                }
                Some(())
            });
            found
        };
        assert_eq!(
            set_function_linkage(&mut btf, &["f", "h"], LINKAGE_STATIC),
            1
        );
        assert_eq!(linkage(&btf, "f"), Some(0));
        assert_eq!(linkage(&btf, "g"), Some(1));
        // Already static: nothing to change; the functions are still found by name.
        assert_eq!(set_function_linkage(&mut btf, &["f"], LINKAGE_STATIC), 0);
        assert_eq!(function_ids(&btf, &["f", "g"]).len(), 2);
    }

    #[test]
    fn finds_the_return_instance_layout_of_this_kernel() {
        let offsets = return_instance_offsets().expect("this kernel has BTF with uprobe structs");
        assert!(offsets.task_utask > 0);
        assert_ne!(offsets.ri_stack, offsets.ri_orig_ret_vaddr);
    }
}
