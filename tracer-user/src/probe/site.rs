//! Choosing where in a function to put its uprobe.
//!
//! A uprobe replaces one instruction with a breakpoint. On a hit the kernel either *emulates* the
//! displaced instruction (push of a register, relative jmp/jcc/call, nop: about 1.2 µs per hit
//! here) or copies it out of line and *single-steps* it (about 16 µs per hit in this VM; see
//! `shared/design/probe-costs.md`). glibc's `free` starts with `test %rdi,%rdi`, which must be
//! single-stepped; the `je` right after it is emulated.
//!
//! [`choose_site`] decodes a function's first instructions and moves the probe forward over a
//! short straight-line prefix to the first emulated instruction, as long as every skipped
//! instruction
//! - falls through (no branch, call or return), so every call reaches the new site;
//! - writes no memory and not `rsp`, so `*(rsp)` is still the return address (a return probe
//!   can share the site);
//! - leaves every argument the probe reads in some register: an argument register may be
//!   overwritten once a `mov` has copied it to another (mimalloc's `mi_malloc` copies its size
//!   to rsi, then loads its heap into rdi), and the site then says where each argument is
//!   ([`ProbeSite::args`], carried to the eBPF side in the attach cookie).
//!
//! When no such site exists it keeps the entry and says why.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess,
    OpKind, Register,
};
use tracer_common::cookie::{self, Reg};

/// Longest prefix of instructions the probe may be moved over (jemalloc's `free` computes its
/// thread cache's address in nine before its first branch).
const MAX_SKIPPED: usize = 12;

/// Where a function's probe goes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// Bytes from the function's start to the probed instruction.
    pub delta: u64,
    /// Whether the kernel emulates the probed instruction (cheap) or single-steps it.
    pub emulated: bool,
    /// Human-readable account of the choice, e.g. `+3 je (emulated), past test rdi,rdi`.
    pub reason: String,
    /// Where the first four arguments are at the site ([`cookie::AT_ENTRY`] unless a skipped
    /// instruction moved one).
    pub args: [Reg; 4],
}

/// The cookie number of a register an argument can be found in.
fn reg_of(register: Register) -> Option<Reg> {
    Some(match register {
        Register::RDI => Reg::Rdi,
        Register::RSI => Reg::Rsi,
        Register::RDX => Reg::Rdx,
        Register::RCX => Reg::Rcx,
        Register::R8 => Reg::R8,
        Register::R9 => Reg::R9,
        Register::RAX => Reg::Rax,
        Register::RBX => Reg::Rbx,
        Register::R10 => Reg::R10,
        Register::R11 => Reg::R11,
        Register::R12 => Reg::R12,
        Register::R13 => Reg::R13,
        Register::R14 => Reg::R14,
        Register::R15 => Reg::R15,
        Register::RBP => Reg::Rbp,
        _ => return None,
    })
}

/// Where each argument is: the registers holding it, its original one first.
#[derive(Clone, Debug)]
struct Holders(Vec<Vec<Register>>);

impl Holders {
    fn at_entry(args: &[Register]) -> Self {
        Self(args.iter().map(|r| vec![*r]).collect())
    }

    /// After `written` is overwritten, as a copy of `copied_from` when the instruction is a
    /// register-to-register move. Returns the first argument no register holds any more.
    fn write(&mut self, written: Register, copied_from: Option<Register>) -> Option<Register> {
        for holders in &mut self.0 {
            let had_source = copied_from.is_some_and(|source| holders.contains(&source));
            holders.retain(|r| *r != written);
            if had_source && reg_of(written).is_some() {
                holders.push(written);
            }
        }
        self.0.iter().position(Vec::is_empty).map(|i| {
            // The original register of the lost argument, for the message.
            cookie::AT_ENTRY.get(i).map_or(Register::None, |r| match r {
                Reg::Rdi => Register::RDI,
                Reg::Rsi => Register::RSI,
                Reg::Rdx => Register::RDX,
                _ => Register::RCX,
            })
        })
    }

    /// The cookie's argument registers: each argument's first holder (arguments the probe does
    /// not read stay where they were at entry).
    fn locations(&self) -> [Reg; 4] {
        let mut out = cookie::AT_ENTRY;
        for (slot, holders) in out.iter_mut().zip(&self.0) {
            if let Some(reg) = holders.first().copied().and_then(reg_of) {
                *slot = reg;
            }
        }
        out
    }

    /// The arguments found elsewhere than at entry, for the reason: `arguments in RSI`.
    fn moved(&self) -> Option<String> {
        let moved: Vec<String> = self
            .0
            .iter()
            .zip(cookie::AT_ENTRY)
            .filter_map(|(holders, entry)| {
                let now = holders.first().copied().and_then(reg_of)?;
                (now != entry).then(|| format!("argument {} in {:?}", entry as u8 + 1, holders[0]))
            })
            .collect();
        (!moved.is_empty()).then(|| moved.join(", "))
    }
}

/// Whether the kernel emulates `instr` instead of single-stepping it out of line.
fn is_emulated(instr: &Instruction) -> bool {
    matches!(
        instr.code(),
        Code::Push_r64 | Code::Nopd | Code::Nopq | Code::Nopw
    ) || instr.is_jcc_short_or_near()
        || instr.is_jmp_short_or_near()
        || instr.code() == Code::Call_rel32_64
}

/// Why the probe cannot be moved past `instr`, or `None` when it can; `holders` follows the
/// arguments through it.
fn blocker(
    instr: &Instruction,
    info: &mut InstructionInfoFactory,
    holders: &mut Holders,
) -> Option<String> {
    if instr.flow_control() != FlowControl::Next {
        return Some(format!("`{instr}` changes control flow"));
    }
    if instr.has_lock_prefix() {
        return Some(format!("`{instr}` is locked"));
    }
    let info = info.info(instr);
    if info.used_memory().iter().any(|mem| {
        matches!(
            mem.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    }) {
        return Some(format!("`{instr}` writes memory"));
    }
    // A 64-bit register-to-register move copies an argument; anything else that writes a
    // register destroys what it held.
    let copied_from = (matches!(instr.code(), Code::Mov_rm64_r64 | Code::Mov_r64_rm64)
        && instr.op0_kind() == OpKind::Register
        && instr.op1_kind() == OpKind::Register)
        .then(|| instr.op1_register().full_register());
    for used in info.used_registers() {
        let writes = matches!(
            used.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        if !writes {
            continue;
        }
        let full = used.register().full_register();
        if full == Register::RSP {
            return Some(format!("`{instr}` writes {full:?}"));
        }
        if let Some(lost) = holders.write(full, copied_from) {
            return Some(format!("`{instr}` writes {lost:?}"));
        }
    }
    None
}

/// Picks the probe site for a function whose first bytes are `code`, loaded at `ip`, whose probe
/// reads the argument registers `args` (full 64-bit registers, e.g. `Register::RDI`).
pub fn choose_site(code: &[u8], ip: u64, args: &[Register]) -> ProbeSite {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut holders = Holders::at_entry(args);
    let mut skipped: Vec<String> = Vec::new();
    let mut instr = Instruction::default();
    let fallback = |why: String| ProbeSite {
        delta: 0,
        emulated: false,
        reason: why,
        args: cookie::AT_ENTRY,
    };
    while decoder.can_decode() && skipped.len() <= MAX_SKIPPED {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            return fallback(format!(
                "entry (single-stepped): cannot decode at +{}",
                instr.ip() - ip
            ));
        }
        let delta = instr.ip() - ip;
        if is_emulated(&instr) {
            let mut reason = if skipped.is_empty() {
                format!("entry `{instr}` (emulated)")
            } else {
                format!(
                    "+{delta} `{instr}` (emulated), past `{}`",
                    skipped.join("; ")
                )
            };
            if let Some(moved) = holders.moved() {
                reason.push_str(&format!(" ({moved})"));
            }
            return ProbeSite {
                delta,
                emulated: true,
                reason,
                args: holders.locations(),
            };
        }
        if let Some(why) = blocker(&instr, &mut info, &mut holders) {
            return fallback(format!(
                "entry (single-stepped): no emulated instruction before {why}"
            ));
        }
        skipped.push(instr.to_string());
    }
    fallback(format!(
        "entry (single-stepped): no emulated instruction in the first {} instructions",
        skipped.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RDI: &[Register] = &[Register::RDI];
    const RDI_RSI_RDX: &[Register] = &[Register::RDI, Register::RSI, Register::RDX];

    #[test]
    fn push_at_entry_stays_at_entry() {
        // push %r12; push %rbp (glibc 2.36 malloc)
        let site = choose_site(&[0x41, 0x54, 0x55], 0x1000, RDI);
        assert_eq!(site.delta, 0);
        assert!(site.emulated, "{}", site.reason);
    }

    #[test]
    fn free_moves_past_null_check_to_je() {
        // test %rdi,%rdi; je +0xbf; push %rbp (glibc 2.36 free)
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        let site = choose_site(&code, 0x98ef0, RDI);
        assert_eq!(site.delta, 3);
        assert!(site.emulated);
        assert!(site.reason.contains("test rdi,rdi"), "{}", site.reason);
    }

    #[test]
    fn rip_relative_compare_is_skipped() {
        // cmpb $0x0,0x140201(%rip); push %r12 (glibc 2.36 posix_memalign)
        let code = [0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];
        let site = choose_site(&code, 0x9a280, RDI_RSI_RDX);
        assert_eq!(site.delta, 7);
        assert!(site.emulated);
    }

    #[test]
    fn writing_an_argument_register_keeps_the_entry() {
        // mov %rsi,%rax; mul %rdx (writes rdx); mov %rax,%rsi; jo (glibc 2.36 reallocarray)
        let code = [
            0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0x70, 0x05,
        ];
        let site = choose_site(&code, 0x9a7e0, RDI_RSI_RDX);
        assert_eq!(site.delta, 0);
        assert!(!site.emulated);
        assert!(site.reason.contains("RDX"), "{}", site.reason);
    }

    #[test]
    fn a_register_the_probe_does_not_read_may_be_written() {
        // mov %rsi,%rax; push %rbx: rax is not an argument of a one-argument probe.
        let site = choose_site(&[0x48, 0x89, 0xf0, 0x53], 0, RDI);
        assert_eq!(site.delta, 3);
        assert!(site.emulated);
    }

    #[test]
    fn stack_pointer_changes_keep_the_entry() {
        // sub $0x10,%rsp; push %rbx
        let site = choose_site(&[0x48, 0x83, 0xec, 0x10, 0x53], 0, RDI);
        assert_eq!(site.delta, 0);
        assert!(site.reason.contains("RSP"), "{}", site.reason);
    }

    #[test]
    fn memory_writes_keep_the_entry() {
        // mov %rdi,0x10(%rax); push %rbx
        let site = choose_site(&[0x48, 0x89, 0x78, 0x10, 0x53], 0, RDI);
        assert_eq!(site.delta, 0);
        assert!(site.reason.contains("writes memory"), "{}", site.reason);
    }

    #[test]
    fn indirect_jump_keeps_the_entry() {
        // test %rdi,%rdi; jmp *%rax
        let site = choose_site(&[0x48, 0x85, 0xff, 0xff, 0xe0], 0, RDI);
        assert_eq!(site.delta, 0);
        assert!(site.reason.contains("control flow"), "{}", site.reason);
    }

    #[test]
    fn garbage_and_empty_input_fall_back_to_the_entry() {
        assert_eq!(choose_site(&[], 0, RDI).delta, 0);
        assert_eq!(choose_site(&[0x0f, 0x0b], 0, RDI).delta, 0); // ud2
        let nops_then_test = [0x48, 0x85, 0xff].repeat(8);
        assert_eq!(choose_site(&nops_then_test, 0, RDI).delta, 0);
    }

    #[test]
    fn an_argument_copied_before_its_register_is_overwritten_is_read_from_the_copy() {
        // mov 0xb449(%rip),%rax; mov %rdi,%rsi; mov %fs:(%rax),%rdi; cmp $0x400,%rsi; ja
        // (mimalloc 2.0 mi_malloc)
        let code = [
            0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, 0x48, 0x89, 0xfe, 0x64, 0x48, 0x8b, 0x38,
            0x48, 0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, 0x77, 0x29,
        ];
        let site = choose_site(&code, 0x10b70, RDI);
        assert_eq!(site.delta, 21, "{}", site.reason);
        assert!(site.emulated);
        assert_eq!(site.args[0], Reg::Rsi, "{}", site.reason);
        assert!(site.reason.contains("argument 1 in RSI"), "{}", site.reason);
        // but not when the copy is overwritten too
        let code = [
            0x48, 0x89, 0xfe, 0x48, 0x31, 0xff, 0x48, 0x31, 0xf6, 0x77, 0x29,
        ];
        let site = choose_site(&code, 0, RDI);
        assert_eq!(
            (site.delta, site.args),
            (0, cookie::AT_ENTRY),
            "{}",
            site.reason
        );
    }

    #[test]
    fn nine_straight_line_instructions_are_skipped_to_the_first_branch() {
        // jemalloc 5.3 free: nine loads, shifts and a compare, then jne
        let code = [
            0x48, 0x89, 0xf8, 0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, 0x48, 0x89, 0xf9, 0x48,
            0xc1, 0xe8, 0x1a, 0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, 0x25, 0xf0, 0x00, 0x00,
            0x00, 0x64, 0x48, 0x03, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, 0x48, 0x01, 0xd0, 0x48,
            0x3b, 0x88, 0xb0, 0x01, 0x00, 0x00, 0x0f, 0x85, 0x8a, 0x00, 0x00, 0x00,
        ];
        let site = choose_site(&code, 0x27c60, RDI);
        assert_eq!(site.delta, 0x30, "{}", site.reason);
        assert!(site.emulated);
        assert_eq!(site.args, cookie::AT_ENTRY);
    }

    #[test]
    fn endbr64_is_skipped() {
        // endbr64; push %rbp
        let site = choose_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], 0, RDI);
        assert_eq!(site.delta, 4);
    }
}
