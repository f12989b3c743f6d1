//! The reference unwinder on fake stacks.
use std::collections::HashMap;

use crate::unwind::{
    MAX_FRAMES, Mapping, Registers, StopReason, UnwindRow, UnwindTable,
    row::{CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, CFA_UNSUPPORTED, RBP_AT_CFA},
    unwind,
};

/// Sparse fake memory: 8-byte words by address.
#[derive(Default)]
struct Memory(HashMap<u64, u64>);

impl Memory {
    fn put(&mut self, addr: u64, value: u64) {
        self.0.insert(addr, value);
    }

    fn read(&self, addr: u64) -> Option<u64> {
        self.0.get(&addr).copied()
    }
}

fn table(rows: Vec<UnwindRow>) -> UnwindTable {
    UnwindTable {
        rows,
        stats: Default::default(),
    }
}

fn row(pc: u32, cfa_type: u8, cfa_offset: i32) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_offset,
        cfa_type,
        ..UnwindRow::default()
    }
}

fn saves_rbp(row: UnwindRow, rbp_offset: i16) -> UnwindRow {
    UnwindRow {
        rbp_offset,
        rbp_type: RBP_AT_CFA,
        ..row
    }
}

/// The binary: vaddr 0x1000.. is mapped at 0x40_0000.. (bias 0x3f_f000).
const BIAS: u64 = 0x3f_f000;
const LEAF: u64 = 0x1000;
const A: u64 = 0x1100;
const B: u64 = 0x1200;
const C: u64 = 0x1300;
const D: u64 = 0x1400;
const RECURSE: u64 = 0x1500;
const SIGNAL: u64 = 0x1600;
const UNSUPPORTED: u64 = 0x1700;
const PLT: u64 = 0x1800;

fn binary() -> UnwindTable {
    table(vec![
        // leaf: sub $24, %rsp at +0..4.
        row(LEAF as u32, CFA_RSP, 8),
        row(LEAF as u32 + 4, CFA_RSP, 32),
        // A: push; sub $32, %rsp.
        row(A as u32, CFA_RSP, 8),
        row(A as u32 + 1, CFA_RSP, 16),
        row(A as u32 + 5, CFA_RSP, 48),
        // B: push %rbp; mov %rsp, %rbp; the CFA is rbp-based from +4.
        row(B as u32, CFA_RSP, 8),
        saves_rbp(row(B as u32 + 1, CFA_RSP, 16), -16),
        saves_rbp(row(B as u32 + 4, CFA_RBP, 16), -16),
        // C: pushes rbp as a general register, then a 48-byte frame.
        row(C as u32, CFA_RSP, 8),
        saves_rbp(row(C as u32 + 1, CFA_RSP, 16), -16),
        saves_rbp(row(C as u32 + 2, CFA_RSP, 64), -16),
        // D: the outermost frame (_start).
        row(D as u32, CFA_END, 0),
        // RECURSE: one push, calls itself.
        row(RECURSE as u32, CFA_RSP, 8),
        row(RECURSE as u32 + 1, CFA_RSP, 16),
        // SIGNAL: __restore_rt, its FDE one byte before the code.
        row(SIGNAL as u32 - 1, CFA_SIGNAL, 0),
        row(UNSUPPORTED as u32, CFA_UNSUPPORTED, 0),
        UnwindRow {
            pc: PLT as u32,
            cfa_offset: 8,
            rbp_offset: 11,
            cfa_type: CFA_PLT,
            rbp_type: 0,
        },
        row(PLT as u32 + 0x40, CFA_NONE, 0),
    ])
}

fn addr(vaddr: u64) -> u64 {
    vaddr + BIAS
}

fn mappings(table: &UnwindTable) -> Vec<Mapping<'_>> {
    vec![
        Mapping {
            start: addr(0x1000),
            end: addr(0x2000),
            bias: BIAS,
            table: Some(table),
        },
        // JIT-like code without a table at 0x90_0000.
        Mapping {
            start: 0x90_0000,
            end: 0x91_0000,
            bias: 0,
            table: None,
        },
    ]
}

const STACK: u64 = 0x7fff_0000;

#[test]
fn three_rsp_frames_and_one_rbp_frame_reach_the_end() {
    let table = binary();
    let mut memory = Memory::default();
    let s = STACK;
    // leaf at +0x10 (rsp+32): return address into A at S+24, CFA_leaf = S+32.
    memory.put(s + 24, addr(A + 0x50));
    // A (rsp+48): CFA_A = S+80, return address into B at S+72.
    memory.put(s + 72, addr(B + 0x50));
    // B (rbp+16, rbp = S+112): CFA_B = S+128, C's rbp (any value) saved at S+112, return
    // address into C at S+120.
    memory.put(s + 112, 0x1234);
    memory.put(s + 120, addr(C + 0x50));
    // C (rsp+64): CFA_C = S+192, D's rbp (0) saved at S+176, return address into D at S+184.
    memory.put(s + 176, 0);
    memory.put(s + 184, addr(D + 0x10));

    let regs = Registers {
        rip: addr(LEAF + 0x10),
        rsp: s,
        rbp: s + 112,
    };
    let unwound = unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES);
    assert_eq!(
        unwound.frames,
        [
            addr(LEAF + 0x10),
            addr(A + 0x50),
            addr(B + 0x50),
            addr(C + 0x50),
            addr(D + 0x10)
        ]
    );
    assert_eq!(unwound.stop, StopReason::End);
    assert!(unwound.stop.is_complete());
    assert_eq!(unwound.fp_steps, 0);

    // The same stack with a wrong rbp: B's rbp-based CFA points at unreadable memory.
    let lost = unwind(
        &mappings(&table),
        Registers { rbp: 0, ..regs },
        |a| memory.read(a),
        MAX_FRAMES,
    );
    assert_eq!(lost.frames.len(), 3);
    assert_eq!(lost.stop, StopReason::ReadFailed);
}

/// A leaf in RECURSE, `depth` RECURSE frames above it, then D.
fn recursion(depth: u64) -> (Memory, Registers) {
    let mut memory = Memory::default();
    // Every RECURSE frame is 16 bytes (rsp+16): frame i's return address is at
    // STACK + 16 * i + 8.
    for i in 0..depth {
        memory.put(STACK + 16 * i + 8, addr(RECURSE + 0x20));
    }
    memory.put(STACK + 16 * depth + 8, addr(D + 0x10));
    let regs = Registers {
        rip: addr(RECURSE + 0x10),
        rsp: STACK,
        rbp: 0,
    };
    (memory, regs)
}

#[test]
fn the_depth_limit_cuts_only_when_frames_remain() {
    let table = binary();
    let (memory, regs) = recursion(200);
    let unwound = unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES);
    assert_eq!(unwound.frames.len(), MAX_FRAMES);
    assert_eq!(unwound.stop, StopReason::Depth);
    assert!(!unwound.stop.is_complete());

    // Exactly MAX_FRAMES frames in all: the leaf, 125 RECURSE return addresses and D.
    let (memory, regs) = recursion(MAX_FRAMES as u64 - 2);
    let unwound = unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES);
    assert_eq!(unwound.frames.len(), MAX_FRAMES);
    assert_eq!(unwound.frames.last(), Some(&addr(D + 0x10)));
    assert_eq!(unwound.stop, StopReason::End);
}

#[test]
fn frame_pointers_take_over_where_there_is_no_cfi() {
    let table = binary();
    let mut memory = Memory::default();
    // Two JIT frames linked by rbp, then a return into A, whose CFA comes from rsp again.
    let (rbp1, rbp2) = (STACK + 0x40, STACK + 0x80);
    memory.put(rbp1, rbp2);
    memory.put(rbp1 + 8, 0x90_0100);
    memory.put(rbp2, 0x5555);
    memory.put(rbp2 + 8, addr(A + 0x50));
    // A's frame starts at rbp2 + 16 (its CFA is 48 above): return into D.
    memory.put(rbp2 + 16 + 40, addr(D + 0x10));
    let regs = Registers {
        rip: 0x90_0010,
        rsp: STACK,
        rbp: rbp1,
    };
    let unwound = unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES);
    assert_eq!(
        unwound.frames,
        [0x90_0010, 0x90_0100, addr(A + 0x50), addr(D + 0x10)]
    );
    assert_eq!(unwound.fp_steps, 2);
    assert_eq!(unwound.stop, StopReason::End);

    // A frame-pointer chain ending with rbp = 0.
    let mut memory = Memory::default();
    memory.put(rbp1, 0);
    memory.put(rbp1 + 8, 0x90_0200);
    let unwound = unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES);
    assert_eq!(unwound.frames, [0x90_0010, 0x90_0200]);
    assert_eq!(unwound.stop, StopReason::NullFrame);
}

#[test]
fn signal_frames_resume_at_the_exact_interrupted_pc() {
    let table = binary();
    let mut memory = Memory::default();
    // A handler (leaf layout, rsp+32) returns into __restore_rt; the ucontext follows the return
    // address. The interrupted pc is B's first instruction: looked up as is (B - 1 would find
    // A's row).
    let s = STACK;
    memory.put(s + 24, addr(SIGNAL));
    let context = s + 32;
    memory.put(context + 168, addr(B));
    memory.put(context + 160, s + 0x1000);
    memory.put(context + 120, 0x4242);
    // B at entry (rsp+8): return address at the interrupted rsp, into D.
    memory.put(s + 0x1000, addr(D + 0x10));
    let regs = Registers {
        rip: addr(LEAF + 0x10),
        rsp: s,
        rbp: 0,
    };
    let unwound = unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES);
    assert_eq!(
        unwound.frames,
        [addr(LEAF + 0x10), addr(SIGNAL), addr(B), addr(D + 0x10)]
    );
    assert_eq!(unwound.signal_frames, 1);
    assert_eq!(unwound.stop, StopReason::End);
}

#[test]
fn plt_rule_depends_on_the_position_in_the_stub() {
    let table = binary();
    let mut memory = Memory::default();
    memory.put(STACK, addr(D + 0x10)); // CFA rsp+8
    memory.put(STACK + 8, addr(D + 0x20)); // CFA rsp+16 (after the push)
    for (offset, expected) in [(0x10, D + 0x10), (0x1a, D + 0x10), (0x1b, D + 0x20)] {
        let regs = Registers {
            rip: addr(PLT + offset),
            rsp: STACK,
            rbp: 0,
        };
        let unwound = unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES);
        assert_eq!(
            unwound.frames,
            [addr(PLT + offset), addr(expected)],
            "{offset:#x}"
        );
    }
}

#[test]
fn stops_are_reported() {
    let table = binary();
    let memory = Memory::default();
    let run = |rip: u64, rbp: u64| {
        let regs = Registers {
            rip,
            rsp: STACK,
            rbp,
        };
        unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES)
    };
    assert_eq!(run(0x1234, 0).stop, StopReason::NoMapping);
    assert_eq!(run(addr(UNSUPPORTED), 0).stop, StopReason::Unsupported);
    assert_eq!(run(addr(LEAF), 0).stop, StopReason::ReadFailed);
    // Past the last row (a NONE marker), with rbp = 0: the frame-pointer fallback ends.
    assert_eq!(run(addr(0x1f00), 0).stop, StopReason::NullFrame);

    // A return address of 0.
    let mut memory = Memory::default();
    memory.put(STACK, 0);
    let regs = Registers {
        rip: addr(LEAF),
        rsp: STACK,
        rbp: 0,
    };
    let unwound = unwind(&mappings(&table), regs, |a| memory.read(a), MAX_FRAMES);
    assert_eq!(unwound.stop, StopReason::NullFrame);
    assert_eq!(unwound.frames.len(), 1);

    // A frame that returns to itself with the same rsp (rsp+0 CFA is nonsense but possible).
    let looping = table_with_loop();
    let mut memory = Memory::default();
    memory.put(STACK - 8, addr(0x1001));
    let regs = Registers {
        rip: addr(0x1001),
        rsp: STACK,
        rbp: 0,
    };
    let unwound = unwind(&mappings(&looping), regs, |a| memory.read(a), MAX_FRAMES);
    assert_eq!(unwound.stop, StopReason::Loop);
}

fn table_with_loop() -> UnwindTable {
    table(vec![row(0x1000, CFA_RSP, 0), row(0x1100, CFA_NONE, 0)])
}
