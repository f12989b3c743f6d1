//! Report rows: the call stacks a person would call one.
//!
//! The kernel tells stacks apart by their return addresses. A loop the compiler unrolled, or a
//! function inlined in several places, calls the same source line from several addresses, so
//! one leaking path can arrive as many stacks that differ in one address each. By default
//! ([`GroupBy::Source`]) stacks that are the same at the source level are one row: the same
//! function in every frame (inlined frames included), in the same module, at the same
//! `file:line` where debug info gives one ([`FrameKey`]). A frame without a name is told apart
//! by its module and file offset, never merged with another address. Each stack a row merged is
//! kept as one of its call sites ([`CallSite`]). [`GroupBy::Address`] makes every stack a row of
//! its own.
//!
//! [`RowIds`] hands out row ids; [`merge`] adds up a row's members into one [`StackReport`].
use std::{collections::HashMap, sync::Arc};

use crate::{
    heap::StackStats,
    report::{CallSite, Frame, StackReport, ns_to_s},
    symbolize::intern::Interner,
};

/// How stacks become rows (`--group-by`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum GroupBy {
    /// Stacks that are the same at the source level are one row.
    #[default]
    Source,
    /// Every distinct stack of return addresses is a row.
    Address,
}

impl GroupBy {
    /// The name `--group-by` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Address => "address",
        }
    }
}

/// A frame as rows and diffs tell frames apart: function and module file name, with the source
/// file and line where known; a frame without a function by its module file offset instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKey {
    /// Function name, if known.
    pub function: Option<String>,
    /// The module's file name (`libc.so.6`), if known.
    pub module: Option<String>,
    /// Source file, if known.
    pub file: Option<String>,
    /// Source line, if known.
    pub line: Option<u32>,
    /// Offset in the module's file, for a frame without a function.
    pub offset: Option<u64>,
}

impl FrameKey {
    /// The key of a frame given by its parts (as [`Frame`] or an export's frame has them).
    pub fn new(
        function: Option<&str>,
        module: Option<&str>,
        file: Option<&str>,
        line: Option<u32>,
        offset: Option<u64>,
    ) -> Self {
        let module = module.map(|m| m.rsplit('/').next().unwrap_or(m).to_owned());
        Self {
            offset: if function.is_none() { offset } else { None },
            function: function.map(str::to_owned),
            module,
            file: file.map(str::to_owned),
            line,
        }
    }

    /// The key of `frame`. A frame in no known module is told apart by its address.
    pub fn of(frame: &Frame) -> Self {
        let offset = frame
            .offset
            .or_else(|| frame.module.is_none().then_some(frame.addr));
        Self::new(
            frame.function.as_deref(),
            frame.module.as_deref(),
            frame.file.as_deref(),
            frame.line,
            offset,
        )
    }
}

impl std::fmt::Display for FrameKey {
    /// `function`, else `[module] +0xoffset` (or `[module] ?`), else `?`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::export::one_line;
        match (&self.function, &self.module, self.offset) {
            (Some(function), _, _) => f.write_str(&one_line(function)),
            (None, Some(module), Some(offset)) => write!(f, "[{}] +{offset:#x}", one_line(module)),
            (None, Some(module), None) => write!(f, "[{}] ?", one_line(module)),
            (None, None, _) => f.write_str("?"),
        }
    }
}

/// What makes two stacks one row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// [`GroupBy::Source`]: the process, what allocated (the stack's allocator) and the
    /// frames' keys, innermost first.
    Source(u32, Arc<str>, Vec<Arc<FrameKey>>),
    /// [`GroupBy::Address`]: the stack's own id.
    Stack(u64),
}

impl RowKey {
    /// The row of stack `stack_id` of process `pid` and `allocator`, symbolized as `frames`,
    /// under `by`.
    pub fn of(
        stack_id: u64,
        pid: u32,
        allocator: &Arc<str>,
        frames: &[Arc<Frame>],
        by: GroupBy,
        keys: &mut Interner<FrameKey>,
    ) -> Self {
        match by {
            GroupBy::Source => Self::Source(
                pid,
                Arc::clone(allocator),
                frames
                    .iter()
                    .map(|frame| keys.intern(FrameKey::of(frame)))
                    .collect(),
            ),
            GroupBy::Address => Self::Stack(stack_id),
        }
    }
}

/// Row ids, handed out from 1 in order of first sight and stable for the whole run.
#[derive(Clone, Debug, Default)]
pub struct RowIds {
    ids: HashMap<RowKey, u64>,
}

impl RowIds {
    /// The id of the row `key`, new if the key is.
    pub fn id(&mut self, key: RowKey) -> u64 {
        let next = self.ids.len() as u64 + 1;
        *self.ids.entry(key).or_insert(next)
    }

    /// Rows seen.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no row was seen yet.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One stack's part of a row.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    /// The stack's id.
    pub stack_id: u64,
    /// The process it ran in.
    pub pid: u32,
    /// What allocated through it.
    pub allocator: &'a str,
    /// Its figures.
    pub stats: StackStats,
    /// Its frames, innermost first.
    pub frames: &'a [Arc<Frame>],
    /// The stack filled every frame slot.
    pub truncated: bool,
    /// The unwinder stopped early.
    pub incomplete: bool,
}

/// The report row `row_id` made of `members` (one row's stacks): figures added up (the oldest
/// block is the oldest of any member), frames of the member holding the most, and every member
/// as a call site, biggest first. Verdict and growth are left for the caller, who has the row's
/// history.
pub fn merge(row_id: u64, mut members: Vec<Member<'_>>) -> StackReport {
    members.sort_by(|a, b| {
        b.stats
            .live_bytes
            .cmp(&a.stats.live_bytes)
            .then(b.stats.total_bytes.cmp(&a.stats.total_bytes))
            .then(a.stack_id.cmp(&b.stack_id))
    });
    let mut stats = StackStats::default();
    for member in &members {
        stats.absorb(&member.stats);
    }
    let call_sites = members
        .iter()
        .map(|m| CallSite {
            stack_id: m.stack_id,
            live_bytes: m.stats.live_bytes,
            live_allocs: m.stats.live_allocs,
            total_allocs: m.stats.total_allocs,
            total_bytes: m.stats.total_bytes,
            addrs: m.frames.iter().map(|f| f.addr).collect(),
        })
        .collect();
    StackReport {
        id: row_id,
        pid: members.first().map_or(0, |m| m.pid),
        allocator: members
            .first()
            .map(|m| m.allocator.to_owned())
            .unwrap_or_default(),
        live_bytes: stats.live_bytes,
        live_allocs: stats.live_allocs,
        total_allocs: stats.total_allocs,
        total_bytes: stats.total_bytes,
        oldest_age_s: stats.oldest_live_age_ns.map(ns_to_s),
        truncated: members.iter().any(|m| m.truncated),
        incomplete: members.iter().any(|m| m.incomplete),
        ages: stats.ages,
        frames: members
            .first()
            .map(|m| m.frames.to_vec())
            .unwrap_or_default(),
        call_sites,
        ..StackReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analytics::AgeHistogram;

    fn frame(function: Option<&str>, line: Option<u32>, addr: u64) -> Arc<Frame> {
        Arc::new(Frame {
            function: function.map(str::to_owned),
            module: Some("relay".to_owned()),
            file: line.map(|_| "src/relay.zig".to_owned()),
            line,
            offset: Some(addr - 0x1000),
            ..Frame::unknown(addr)
        })
    }

    /// A row key made with a fresh interner.
    fn key_of(id: u64, frames: &[Arc<Frame>], by: GroupBy) -> RowKey {
        RowKey::of(id, 1, &"glibc".into(), frames, by, &mut Interner::default())
    }

    fn stats(live_bytes: u64, live_allocs: u64, oldest_s: u64) -> StackStats {
        let mut ages = AgeHistogram::default();
        ages.add_n(oldest_s as f64, live_allocs);
        StackStats {
            live_bytes,
            live_allocs,
            total_allocs: live_allocs + 1,
            total_bytes: live_bytes + 8,
            oldest_live_ts_ns: Some(1),
            oldest_live_age_ns: Some(oldest_s * 1_000_000_000),
            ages,
        }
    }

    #[test]
    fn call_sites_of_one_source_line_are_one_row() {
        // Given three stacks through `resolve` that differ only in its return address (an
        // unrolled loop: one source line, three call instructions), and one from another line
        let stack = |resolve_addr: u64, line: u32| {
            vec![
                frame(Some("allocTlsState"), Some(10), 0x2000),
                frame(Some("resolve"), Some(line), resolve_addr),
                frame(Some("main"), Some(99), 0x3000),
            ]
        };
        let stacks = [
            (1, stack(0x2100, 40)),
            (2, stack(0x2140, 40)),
            (3, stack(0x2180, 40)),
            (4, stack(0x21c0, 41)),
        ];

        // When giving each its row
        let mut ids = RowIds::default();
        let rows: Vec<u64> = stacks
            .iter()
            .map(|(id, frames)| ids.id(key_of(*id, frames, GroupBy::Source)))
            .collect();

        // Then the three from line 40 share a row, line 41 has its own
        assert_eq!(rows, [1, 1, 1, 2]);
        assert_eq!(ids.len(), 2);
        // and by address every stack is a row
        let mut by_address = RowIds::default();
        let rows: Vec<u64> = stacks
            .iter()
            .map(|(id, frames)| by_address.id(key_of(*id, frames, GroupBy::Address)))
            .collect();
        assert_eq!(rows, [1, 2, 3, 4]);
    }

    #[test]
    fn unnamed_frames_are_told_apart_by_offset() {
        // Given two stripped stacks in one module, different only in an unnamed frame
        let a = [frame(None, None, 0x2000), frame(None, None, 0x3000)];
        let b = [frame(None, None, 0x2000), frame(None, None, 0x3008)];

        // Then they are two rows, though every frame is "[relay] ?"
        assert_ne!(
            key_of(1, &a, GroupBy::Source),
            key_of(2, &b, GroupBy::Source)
        );
        // while the same offsets are one row, and offsets do not matter once named
        assert_eq!(
            key_of(1, &a, GroupBy::Source),
            key_of(3, &a, GroupBy::Source)
        );
        let named = |addr| [frame(Some("f"), Some(1), addr)];
        assert_eq!(
            key_of(1, &named(0x2000), GroupBy::Source),
            key_of(2, &named(0x2008), GroupBy::Source)
        );
    }

    #[test]
    fn functions_in_different_modules_or_lines_are_different_rows() {
        let f = frame(Some("init"), Some(3), 0x2000);
        let other_module = Frame {
            module: Some("/usr/lib/libother.so".to_owned()),
            ..(*f).clone()
        };
        let other_line = Frame {
            line: Some(4),
            ..(*f).clone()
        };
        let key = |fr: &Frame| FrameKey::of(fr);
        assert_ne!(key(&f), key(&other_module));
        assert_ne!(key(&f), key(&other_line));
        // A module is known by its file name, wherever it was loaded from
        let elsewhere = Frame {
            module: Some("/opt/relay".to_owned()),
            ..(*f).clone()
        };
        assert_eq!(key(&f), key(&elsewhere));
    }

    fn member(stack_id: u64, stats: StackStats, frames: &[Arc<Frame>]) -> Member<'_> {
        Member {
            stack_id,
            pid: 1,
            allocator: "glibc",
            stats,
            frames,
            truncated: stack_id == 9,
            incomplete: false,
        }
    }

    #[test]
    fn merged_rows_add_up_their_call_sites() {
        // Given a row of three call sites
        let frames_a = [
            frame(Some("leaf"), Some(1), 0x2000),
            frame(Some("main"), Some(9), 0x3000),
        ];
        let frames_b = [
            frame(Some("leaf"), Some(1), 0x2000),
            frame(Some("main"), Some(9), 0x3010),
        ];
        let frames_c = [
            frame(Some("leaf"), Some(1), 0x2000),
            frame(Some("main"), Some(9), 0x3020),
        ];
        // When merging them
        let row = merge(
            5,
            vec![
                member(7, stats(100, 1, 3), &frames_a),
                member(8, stats(300, 3, 30), &frames_b),
                member(9, stats(0, 0, 0), &frames_c),
            ],
        );

        // Then figures are sums, the oldest block the oldest of any, frames the biggest's
        assert_eq!(row.id, 5);
        assert_eq!((row.live_bytes, row.live_allocs), (400, 4));
        assert_eq!((row.total_allocs, row.total_bytes), (4 + 2 + 1, 400 + 24));
        assert_eq!(row.oldest_age_s, Some(30.0));
        assert_eq!(row.ages.total(), 4);
        assert!(row.truncated);
        assert_eq!(row.frames[1].addr, 0x3010);
        // and every member is a call site, biggest first, with its own addresses
        let sites: Vec<(u64, u64, Vec<u64>)> = row
            .call_sites
            .iter()
            .map(|c| (c.stack_id, c.live_bytes, c.addrs.clone()))
            .collect();
        assert_eq!(
            sites,
            [
                (8, 300, vec![0x2000, 0x3010]),
                (7, 100, vec![0x2000, 0x3000]),
                (9, 0, vec![0x2000, 0x3020]),
            ]
        );
    }
}
