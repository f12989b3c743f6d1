//! The eBPF object as this kernel gets it, prepared once before the first load.
//!
//! - The preemption guards are resolved ([`crate::probe::preempt`]).
//! - Before 6.1, a tracing program using a hash map that allocates at run time
//!   (`BPF_F_NO_PREALLOC`) makes the verifier print a `WARNING` with a backtrace into the kernel
//!   log (and panic a host that sets `panic_on_warn`); 6.1 made such maps safe (`bpf_mem_alloc`)
//!   and dropped the warning. Where the kernel's BTF has no `bpf_mem_alloc`, the two maps that
//!   allocate at run time are preallocated instead, at a size that keeps their memory small
//!   ([`PREALLOCATED_STACKS`], [`PREALLOCATED_SAMPLED`]); stacks beyond it are counted
//!   (`stack_map_full`, `sample_map_full`).
//! - The stack walks' global functions ([`names::GLOBAL_FUNCTIONS`]), which the kernel verifies
//!   once each on its own, are made static where the kernel refuses to call a global function
//!   with preemption disabled (6.10 to 6.14, with the guards): each call is then verified with
//!   its caller, which takes the kernel about 1 s longer at load, and the frame-pointer walk
//!   runs as a `bpf_loop` callback per frame (`STATIC_FUNCTIONS`).
use std::sync::OnceLock;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use tracer_common::names;

use crate::probe::preempt::{self, Guard};

/// Distinct stacks kept where the stack map is preallocated (about 1 KiB each).
pub const PREALLOCATED_STACKS: u32 = 8192;
/// Sampled blocks followed where that map is preallocated.
pub const PREALLOCATED_SAMPLED: u32 = 65_536;

/// The maps declared with `BPF_F_NO_PREALLOC` that a program may update.
const RUN_TIME_ALLOCATED: [&str; 2] = [names::STACKS, "SAMPLED"];

/// Byte offset of `map_flags` in a legacy `bpf_map_def` (after type, key, value, entries).
const MAP_FLAGS_OFFSET: usize = 16;

/// The prepared object and what was done to it.
#[derive(Debug)]
pub struct Prepared {
    /// The object's bytes, aligned for the ELF parsers.
    pub bytes: &'static [u8],
    /// How the programs are kept from being preempted.
    pub guard: Guard,
    /// Whether the run-time allocated maps were made preallocated (kernels before 6.1).
    pub preallocated: bool,
    /// Whether the stack walks' global functions were made static (see the module's doc).
    pub static_functions: bool,
}

/// Set to 1, makes the stack walks' global functions static on any kernel (to test that form
/// where the kernel would not need it); set to 0, keeps them global on any kernel (to show
/// that a kernel from 6.10 to 6.14 refuses them).
pub const STATIC_FUNCTIONS_VAR: &str = "LEAKTRACE_STATIC_FUNCTIONS";

/// The object for this kernel (prepared on first use).
pub fn prepared() -> &'static Prepared {
    static PREPARED: OnceLock<(Vec<u64>, usize, Guard, bool, bool)> = OnceLock::new();
    static VIEW: OnceLock<Prepared> = OnceLock::new();
    VIEW.get_or_init(|| {
        let (words, len, guard, preallocated, static_functions) = PREPARED.get_or_init(|| {
            let mut bytes = super::OBJECT.to_vec();
            let (disable, enable, guard) = preempt::resolve();
            preempt::rewrite(&mut bytes, disable, enable);
            let preallocated = !run_time_allocation_is_quiet();
            if preallocated {
                clear_no_prealloc(&mut bytes, &RUN_TIME_ALLOCATED);
            }
            let static_functions = match std::env::var(STATIC_FUNCTIONS_VAR).as_deref() {
                Ok("1") => true,
                Ok("0") => false,
                _ => guard == Guard::Kfuncs && !global_calls_while_guarded(),
            };
            if static_functions {
                make_static(&mut bytes, &names::GLOBAL_FUNCTIONS);
            }
            // Kept as words: the ELF parsers read the object in place and need it aligned.
            let mut words = vec![0u64; bytes.len().div_ceil(8)];
            for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
                let mut buf = [0u8; 8];
                buf[..chunk.len()].copy_from_slice(chunk);
                *word = u64::from_ne_bytes(buf);
            }
            (words, bytes.len(), guard, preallocated, static_functions)
        });
        // SAFETY: `words` lives as long as the process (a static), holds at least `len` bytes,
        // and any bytes may be viewed as `u8`.
        let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len) };
        Prepared {
            bytes,
            guard: *guard,
            preallocated: *preallocated,
            static_functions: *static_functions,
        }
    })
}

/// Whether this kernel lets tracing programs use run-time allocated hash maps without a
/// warning: its BTF has `bpf_mem_alloc` (6.1+), the allocator that made them safe.
fn run_time_allocation_is_quiet() -> bool {
    crate::probe::btf::kernel().is_some_and(|btf| btf.structs.has("bpf_mem_alloc"))
}

/// Whether this kernel lets a program call a global function with preemption disabled: its
/// verifier tracks which functions may sleep (`bpf_subprog_info.might_sleep`, 6.15), and only
/// those are refused there. Before, every global call was (from 6.10, with the guards' kfuncs).
fn global_calls_while_guarded() -> bool {
    crate::probe::btf::kernel().is_some_and(|btf| {
        btf.structs
            .offset("bpf_subprog_info", "might_sleep")
            .is_some()
    })
}

/// Makes the functions named `functions` static in the `.BTF` section of ELF `bytes`. Returns
/// how many it changed.
fn make_static(bytes: &mut [u8], functions: &[&str]) -> usize {
    let range = object::File::parse(&*bytes).ok().and_then(|file| {
        let (start, size) = file.section_by_name(".BTF")?.file_range()?;
        Some(usize::try_from(start).ok()?..usize::try_from(start.checked_add(size)?).ok()?)
    });
    match range.and_then(|range| bytes.get_mut(range)) {
        Some(btf) => crate::probe::btf::set_function_linkage(
            btf,
            functions,
            crate::probe::btf::LINKAGE_STATIC,
        ),
        None => 0,
    }
}

/// Clears `BPF_F_NO_PREALLOC` from the legacy map definitions named `maps` in ELF `bytes`.
/// Returns how many it changed.
fn clear_no_prealloc(bytes: &mut [u8], maps: &[&str]) -> usize {
    let places: Vec<usize> = match object::File::parse(&*bytes) {
        Ok(file) => file
            .symbols()
            .filter(|sym| sym.name().is_ok_and(|n| maps.contains(&n)))
            .filter_map(|sym| {
                let section = file.section_by_index(sym.section_index()?).ok()?;
                let (start, _) = section.file_range()?;
                let at = start.checked_add(sym.address().checked_sub(section.address())?)?;
                usize::try_from(at).ok()?.checked_add(MAP_FLAGS_OFFSET)
            })
            .collect(),
        Err(_) => return 0,
    };
    let mut changed = 0;
    for at in places {
        if let Some(field) = bytes.get_mut(at..at + 4) {
            let flags = u32::from_le_bytes([field[0], field[1], field[2], field[3]]);
            let cleared = flags & !aya_obj::generated::BPF_F_NO_PREALLOC;
            field.copy_from_slice(&cleared.to_le_bytes());
            changed += usize::from(cleared != flags);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_run_time_allocated_maps_can_be_preallocated() {
        // Given the built object, whose STACKS and SAMPLED are not preallocated
        let mut bytes = super::super::OBJECT.to_vec();
        // When cleared, both change, and clearing again changes nothing
        assert_eq!(clear_no_prealloc(&mut bytes, &RUN_TIME_ALLOCATED), 2);
        assert_eq!(clear_no_prealloc(&mut bytes, &RUN_TIME_ALLOCATED), 0);
        // And aya reads the result with the flags gone
        let parsed = aya_obj::Object::parse(&bytes).expect("parses");
        for name in RUN_TIME_ALLOCATED {
            let map = parsed.maps.get(name).expect(name);
            assert_eq!(
                map.map_flags() & aya_obj::generated::BPF_F_NO_PREALLOC,
                0,
                "{name}"
            );
        }
        let original = aya_obj::Object::parse(super::super::OBJECT).expect("parses");
        let stacks = original.maps.get(names::STACKS).expect("STACKS");
        assert_ne!(
            stacks.map_flags() & aya_obj::generated::BPF_F_NO_PREALLOC,
            0
        );
    }

    #[test]
    fn the_global_functions_can_be_made_static() {
        // Given the built object, whose walks have four global functions
        let mut bytes = super::super::OBJECT.to_vec();
        // When made static, all four change, and again nothing does
        assert_eq!(make_static(&mut bytes, &names::GLOBAL_FUNCTIONS), 4);
        assert_eq!(make_static(&mut bytes, &names::GLOBAL_FUNCTIONS), 0);
        // And aya still reads the object
        aya_obj::Object::parse(&bytes).expect("parses");
    }

    #[test]
    fn this_kernel_calls_global_functions_with_preemption_disabled() {
        // Given the kernel these tests run on (6.18: the verifier tracks which may sleep)
        assert!(global_calls_while_guarded());
        assert!(!prepared().static_functions || std::env::var(STATIC_FUNCTIONS_VAR).is_ok());
    }

    #[test]
    fn this_kernel_needs_no_preallocation() {
        // Given the kernel these tests run on (6.1 or later)
        assert!(run_time_allocation_is_quiet());
        assert!(!prepared().preallocated);
    }
}
