//! A plain user-space unwinder over compiled [`UnwindTable`]s: the algorithm the eBPF unwinder
//! implements, written for clarity, and the oracle for differential tests against it.
//!
//! # Algorithm
//!
//! State: `pc`, `rsp`, `rbp` (possibly unknown) and whether `pc` is *exact* (the interrupted
//! instruction: the initial rip, or a rip restored from a signal frame) or a *return address*.
//! Frame 0 is the initial rip. Each step:
//!
//! 1. Find the mapping holding `pc`; none → [`StopReason::NoMapping`].
//! 2. Look up the row for `pc - bias`, minus 1 for a return address (a return address may be the
//!    first byte after the function when its last instruction is a call to a `noreturn`
//!    function; `- 1` lands inside the call). A mapping without a table, a pc before the first
//!    row, or a [`CFA_NONE`] row means "no CFI here".
//! 3. Apply the row:
//!    - no CFI → one frame-pointer step: with `rbp` unknown → [`StopReason::RbpUnknown`], `rbp`
//!      == 0 → [`StopReason::NullFrame`], else the return address is at `rbp + 8`, the caller's
//!      rbp at `rbp`, and the caller's rsp is `rbp + 16`. (Wrong in a function's prologue or
//!      epilogue and in code that uses rbp as a general register: this is a heuristic.)
//!    - [`CFA_END`] → [`StopReason::End`] (a complete stack).
//!    - [`CFA_UNSUPPORTED`] (or an unknown type) → [`StopReason::Unsupported`].
//!    - [`CFA_SIGNAL`] → `rsp` points at the `ucontext_t` the kernel pushed: read the interrupted
//!      rip, rsp and rbp at rsp + 168, 160 and 120. The new pc is exact (no `- 1`).
//!    - [`CFA_RSP`]: CFA = rsp + `cfa_offset`; [`CFA_RBP`]: CFA = rbp + `cfa_offset` (rbp unknown
//!      → [`StopReason::RbpUnknown`]); [`CFA_PLT`]: CFA = rsp + `cfa_offset`, plus 8 when
//!      `(pc & 15) >= rbp_offset`. Then the return address is read at CFA - 8, the caller's rsp
//!      is the CFA, and the caller's rbp is: unchanged ([`RBP_SAME`]), read at CFA +
//!      `rbp_offset` ([`RBP_AT_CFA`]) or unknown ([`RBP_UNSUPPORTED`]).
//!
//!    Any failed memory read → [`StopReason::ReadFailed`].
//! 4. A new pc of 0 → [`StopReason::NullFrame`]; the same (pc, rsp) as before →
//!    [`StopReason::Loop`]. Otherwise the new pc is the next frame; if `max_frames` frames are
//!    already recorded → [`StopReason::Depth`] (so `Depth` means a frame really was cut off, and a
//!    stack of exactly `max_frames` frames that ends properly is still complete).
//!
//! There is deliberately no "CFA must grow" check: signal handlers on an alternate stack and
//! stack switching (coroutines) legitimately move rsp down; the depth cap and the loop check
//! bound the walk.
//!
//! Not handled here (the eBPF side must): return addresses replaced by the `[uprobes]`
//! trampoline of a pending uretprobe, and mappings whose tables are not loaded yet.
use super::{
    row::{
        CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, CFA_UNSUPPORTED, RBP_AT_CFA,
        RBP_SAME, RBP_UNSUPPORTED, SIGNAL_RBP_OFFSET, SIGNAL_RIP_OFFSET, SIGNAL_RSP_OFFSET,
    },
    table::UnwindTable,
};

/// The depth cap the eBPF unwinder uses (the kernel's `perf_event_max_stack` default).
pub const MAX_FRAMES: usize = 127;

/// An executable mapping of the process being unwound.
#[derive(Clone, Copy, Debug)]
pub struct Mapping<'a> {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Load bias: process address − ELF virtual address (see [`super::load_bias`]).
    pub bias: u64,
    /// The binary's table; `None` for a mapping without CFI (JIT code, a binary without
    /// `.eh_frame`), which is unwound with frame pointers.
    pub table: Option<&'a UnwindTable>,
}

/// Registers at the point the stack is captured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// The instruction pointer (an exact pc, looked up as is).
    pub rip: u64,
    /// The stack pointer.
    pub rsp: u64,
    /// The frame pointer register (whatever it holds).
    pub rbp: u64,
}

/// Why an unwind stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An [`CFA_END`] row: the outermost frame, the stack is complete.
    End,
    /// A return address of 0, or rbp == 0 where a frame-pointer step was needed: the
    /// conventional end of a chain without CFI saying so.
    NullFrame,
    /// A pc in no mapping.
    NoMapping,
    /// A [`CFA_UNSUPPORTED`] row (or an unknown row type).
    Unsupported,
    /// rbp was needed (rbp-based CFA, frame-pointer step) but is unknown.
    RbpUnknown,
    /// A memory read failed.
    ReadFailed,
    /// A step led back to the same pc and rsp.
    Loop,
    /// More frames exist than `max_frames`.
    Depth,
}

impl StopReason {
    /// Whether the stack ended where a stack ends ([`StopReason::End`] or
    /// [`StopReason::NullFrame`]), as opposed to being cut short.
    pub fn is_complete(self) -> bool {
        matches!(self, Self::End | Self::NullFrame)
    }
}

/// The result of an unwind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unwound {
    /// Frame 0 is the initial rip; the others are return addresses (or, after a signal frame,
    /// the exact interrupted rip).
    pub frames: Vec<u64>,
    /// Why the walk stopped.
    pub stop: StopReason,
    /// Steps taken with the frame-pointer fallback (results less trustworthy).
    pub fp_steps: usize,
    /// Signal frames crossed.
    pub signal_frames: usize,
}

#[derive(Clone, Copy, Debug)]
struct State {
    pc: u64,
    rsp: u64,
    rbp: Option<u64>,
    /// `pc` is an exact instruction address, not a return address.
    exact: bool,
}

/// Unwinds from `regs` through `mappings`, reading 8-byte little-endian words with `read`, and
/// records at most `max_frames` frames (at least 1: the initial rip).
pub fn unwind<F>(mappings: &[Mapping<'_>], regs: Registers, read: F, max_frames: usize) -> Unwound
where
    F: Fn(u64) -> Option<u64>,
{
    let mut out = Unwound {
        frames: vec![regs.rip],
        stop: StopReason::End,
        fp_steps: 0,
        signal_frames: 0,
    };
    let mut state = State {
        pc: regs.rip,
        rsp: regs.rsp,
        rbp: Some(regs.rbp),
        exact: true,
    };
    loop {
        let next = match step(mappings, &state, &read, &mut out) {
            Ok(next) => next,
            Err(stop) => {
                out.stop = stop;
                return out;
            }
        };
        let stop = if next.pc == 0 {
            Some(StopReason::NullFrame)
        } else if next.pc == state.pc && next.rsp == state.rsp {
            Some(StopReason::Loop)
        } else if out.frames.len() >= max_frames {
            Some(StopReason::Depth)
        } else {
            None
        };
        if let Some(stop) = stop {
            out.stop = stop;
            return out;
        }
        out.frames.push(next.pc);
        state = next;
    }
}

/// One step: the caller's state, or why there is none.
fn step<F>(
    mappings: &[Mapping<'_>],
    state: &State,
    read: &F,
    out: &mut Unwound,
) -> Result<State, StopReason>
where
    F: Fn(u64) -> Option<u64>,
{
    let read = |addr: u64| read(addr).ok_or(StopReason::ReadFailed);
    let mapping = mappings
        .iter()
        .find(|m| m.start <= state.pc && state.pc < m.end)
        .ok_or(StopReason::NoMapping)?;
    let lookup = state
        .pc
        .wrapping_sub(mapping.bias)
        .wrapping_sub(u64::from(!state.exact));
    let row = mapping
        .table
        .and_then(|table| table.lookup(lookup))
        .copied()
        .unwrap_or_default();
    let cfa = match row.cfa_type {
        CFA_NONE => {
            out.fp_steps += 1;
            let rbp = state.rbp.ok_or(StopReason::RbpUnknown)?;
            if rbp == 0 {
                return Err(StopReason::NullFrame);
            }
            return Ok(State {
                pc: read(rbp.wrapping_add(8))?,
                rsp: rbp.wrapping_add(16),
                rbp: Some(read(rbp)?),
                exact: false,
            });
        }
        CFA_END => return Err(StopReason::End),
        CFA_SIGNAL => {
            out.signal_frames += 1;
            let context = state.rsp;
            return Ok(State {
                pc: read(context.wrapping_add(SIGNAL_RIP_OFFSET))?,
                rsp: read(context.wrapping_add(SIGNAL_RSP_OFFSET))?,
                rbp: Some(read(context.wrapping_add(SIGNAL_RBP_OFFSET))?),
                exact: true,
            });
        }
        CFA_RSP => state.rsp.wrapping_add_signed(i64::from(row.cfa_offset)),
        CFA_RBP => {
            let rbp = state.rbp.ok_or(StopReason::RbpUnknown)?;
            rbp.wrapping_add_signed(i64::from(row.cfa_offset))
        }
        CFA_PLT => {
            let extra = if (state.pc & 15) as i16 >= row.rbp_offset {
                8
            } else {
                0
            };
            state
                .rsp
                .wrapping_add_signed(i64::from(row.cfa_offset))
                .wrapping_add(extra)
        }
        CFA_UNSUPPORTED => return Err(StopReason::Unsupported),
        _ => return Err(StopReason::Unsupported),
    };
    let return_address = read(cfa.wrapping_sub(8))?;
    let rbp = match row.rbp_type {
        RBP_SAME => state.rbp,
        RBP_AT_CFA => Some(read(cfa.wrapping_add_signed(i64::from(row.rbp_offset)))?),
        RBP_UNSUPPORTED => None,
        _ => None,
    };
    Ok(State {
        pc: return_address,
        rsp: cfa,
        rbp,
        exact: false,
    })
}
