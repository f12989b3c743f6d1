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
//! - writes no memory and neither `rsp` nor any argument register the probe reads, so the probe
//!   sees the arguments as passed and `*(rsp)` is still the return address (a return probe can
//!   share the site).
//!
//! When no such site exists it keeps the entry and says why.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess,
    Register,
};

/// Longest prefix of instructions the probe may be moved over.
const MAX_SKIPPED: usize = 4;

/// Where a function's probe goes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// Bytes from the function's start to the probed instruction.
    pub delta: u64,
    /// Whether the kernel emulates the probed instruction (cheap) or single-steps it.
    pub emulated: bool,
    /// Human-readable account of the choice, e.g. `+3 je (emulated), past test rdi,rdi`.
    pub reason: String,
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

/// Why the probe cannot be moved past `instr`, or `None` when it can.
fn blocker(
    instr: &Instruction,
    info: &mut InstructionInfoFactory,
    args: &[Register],
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
    for used in info.used_registers() {
        let writes = matches!(
            used.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        let full = used.register().full_register();
        if writes && (full == Register::RSP || args.contains(&full)) {
            return Some(format!("`{instr}` writes {full:?}"));
        }
    }
    None
}

/// Picks the probe site for a function whose first bytes are `code`, loaded at `ip`, whose probe
/// reads the argument registers `args` (full 64-bit registers, e.g. `Register::RDI`).
pub fn choose_site(code: &[u8], ip: u64, args: &[Register]) -> ProbeSite {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut instr = Instruction::default();
    let fallback = |why: String| ProbeSite {
        delta: 0,
        emulated: false,
        reason: why,
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
            let reason = if skipped.is_empty() {
                format!("entry `{instr}` (emulated)")
            } else {
                format!(
                    "+{delta} `{instr}` (emulated), past `{}`",
                    skipped.join("; ")
                )
            };
            return ProbeSite {
                delta,
                emulated: true,
                reason,
            };
        }
        if let Some(why) = blocker(&instr, &mut info, args) {
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
    fn endbr64_is_skipped() {
        // endbr64; push %rbp
        let site = choose_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], 0, RDI);
        assert_eq!(site.delta, 4);
    }
}
