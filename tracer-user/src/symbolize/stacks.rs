//! The call stacks of one trace: each read once from the kernel, tied to the modules mapped
//! when it was first seen ([`ModuleMap::pin`]), symbolized once, and given its report row
//! ([`crate::report::grouping`]).
//!
//! A stack is pinned when its first event is read, while the target still maps the code it ran
//! (a library unloaded later keeps naming the stacks that ran in it), and symbolized at the next
//! status tick or report, so symbol lookups stay off the event path.
use std::{collections::HashMap, sync::Arc};

use crate::{
    heap::{FastHash, StackRef},
    report::{
        Frame,
        grouping::{FrameKey, GroupBy, RowIds, RowKey},
    },
    source::NewStack,
    symbolize::{ModuleMap, Pin, StackSymbolizer, intern::Interner},
};

/// One stack.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its id in this run, unique across sources, handed out from 1 in order of first sight.
    pub id: u64,
    /// The process it ran in.
    pub pid: u32,
    /// What allocated through it ([`NewStack::allocator`]).
    pub allocator: Arc<str>,
    /// It filled every frame slot and may continue beyond its frames.
    pub truncated: bool,
    /// The unwinder stopped before the outermost frame.
    pub incomplete: bool,
    /// [`NewStack::runtime_prefixes`].
    runtime_prefixes: &'static [&'static str],
    /// Its return addresses, pinned to their modules (dropped once symbolized).
    pins: Vec<Pin>,
    /// Its frames, once symbolized, shared with every stack through the same code.
    pub frames: Vec<Arc<Frame>>,
    /// Its row, once symbolized.
    pub row: Option<u64>,
}

/// Drops the leading frames of a runtime's own functions (named with one of `prefixes`) when a
/// frame of the program follows: whole return addresses at a time, judged by the function
/// each address is in (the last of its inlined frames), as `runtime/pprof` judges them.
fn hide_runtime_frames(frames: &mut Vec<Arc<Frame>>, prefixes: &[&str]) {
    if prefixes.is_empty() {
        return;
    }
    let runtime = |f: &Frame| {
        f.function
            .as_deref()
            .is_some_and(|name| prefixes.iter().any(|p| name.starts_with(p)))
    };
    let mut start = 0;
    for (i, frame) in frames.iter().enumerate() {
        if frame.inlined {
            continue;
        }
        if !runtime(frame) {
            frames.drain(..start);
            return;
        }
        start = i + 1;
    }
}

/// Every stack seen in this trace, by source and key.
#[derive(Debug)]
pub struct Stacks {
    group_by: GroupBy,
    entries: HashMap<StackRef, Entry, FastHash>,
    rows: RowIds,
    /// Stacks pinned but not yet symbolized.
    pending: Vec<StackRef>,
    /// Every distinct frame of a row key, kept once.
    frame_keys: Interner<FrameKey>,
}

impl Stacks {
    /// No stacks yet; rows are made `group_by`.
    pub fn new(group_by: GroupBy) -> Self {
        Self {
            group_by,
            entries: HashMap::default(),
            rows: RowIds::default(),
            pending: Vec::new(),
            frame_keys: Interner::default(),
        }
    }

    /// How stacks are made rows.
    pub fn group_by(&self) -> GroupBy {
        self.group_by
    }

    /// Records `stack` of process `pid`, yielded for the first time as `at`, pinned to the
    /// modules mapped now. A stack yielded again keeps what it was first recorded as.
    pub fn insert(&mut self, at: StackRef, pid: u32, stack: &NewStack, modules: &ModuleMap) {
        let next_id = self.entries.len() as u64 + 1;
        self.entries.entry(at).or_insert_with(|| {
            self.pending.push(at);
            Entry {
                id: next_id,
                pid,
                allocator: Arc::clone(&stack.allocator),
                truncated: stack.truncated,
                incomplete: stack.incomplete,
                runtime_prefixes: stack.runtime_prefixes,
                pins: modules.pin(pid, &stack.ips),
                frames: Vec::new(),
                row: None,
            }
        });
    }

    /// Symbolizes every stack not symbolized yet and gives it its row.
    pub fn symbolize(&mut self, symbolizer: &mut StackSymbolizer, modules: &ModuleMap) {
        for at in std::mem::take(&mut self.pending) {
            let Some(entry) = self.entries.get_mut(&at) else {
                continue;
            };
            let mut frames = symbolizer.frames(modules, &entry.pins);
            hide_runtime_frames(&mut frames, entry.runtime_prefixes);
            entry.pins = Vec::new();
            let key = RowKey::of(
                entry.id,
                entry.pid,
                &entry.allocator,
                &frames,
                self.group_by,
                &mut self.frame_keys,
            );
            entry.frames = frames;
            entry.row = Some(self.rows.id(key));
        }
    }

    /// Stack `at`, if seen.
    pub fn get(&self, at: StackRef) -> Option<&Entry> {
        self.entries.get(&at)
    }

    /// How many stacks were seen.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no stack was seen.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Live bytes by row from live bytes by stack (stacks not yet symbolized are left out).
    pub fn by_row(
        &self,
        per_stack: impl IntoIterator<Item = (StackRef, u64)>,
    ) -> HashMap<u64, u64> {
        let mut rows: HashMap<u64, u64> = HashMap::new();
        for (at, bytes) in per_stack {
            if let Some(row) = self.entries.get(&at).and_then(|e| e.row) {
                let sum = rows.entry(row).or_default();
                *sum = sum.saturating_add(bytes);
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{heap::SourceId, symbolize::debuginfo::DebugDirs};

    fn stack(ips: &[u64], allocator: &str) -> NewStack {
        NewStack {
            ips: ips.to_vec(),
            allocator: allocator.into(),
            ..NewStack::default()
        }
    }

    #[test]
    fn a_runtimes_leading_frames_are_hidden_when_the_program_follows() {
        let frame = |name: &str, inlined: bool| {
            Arc::new(Frame {
                function: Some(name.to_owned()),
                inlined,
                ..Frame::unknown(0)
            })
        };
        let names = |frames: &[Arc<Frame>]| -> Vec<String> {
            frames.iter().filter_map(|f| f.function.clone()).collect()
        };
        const GO: &[&str] = &["runtime.", "internal/runtime/"];
        // The allocator's frames go; an inlined frame goes with the function it is in
        let mut frames = vec![
            frame("runtime.mallocgc", false),
            frame("internal/runtime/maps.newarray", true),
            frame("runtime.makeslice", false),
            frame("main.newValue", true),
            frame("main.remember", false),
            frame("runtime.main", false),
        ];
        hide_runtime_frames(&mut frames, GO);
        assert_eq!(
            names(&frames),
            ["main.newValue", "main.remember", "runtime.main"]
        );
        // A stack of the runtime alone keeps every frame, and without prefixes nothing goes
        let mut runtime_only = vec![
            frame("runtime.malg", false),
            frame("runtime.newproc1", false),
        ];
        hide_runtime_frames(&mut runtime_only, GO);
        assert_eq!(runtime_only.len(), 2);
        let mut c = vec![frame("runtime.mallocgc", false), frame("main.x", false)];
        hide_runtime_frames(&mut c, &[]);
        assert_eq!(c.len(), 2);
    }

    fn at(source: u16, key: u64) -> StackRef {
        StackRef {
            source: SourceId(source),
            key,
        }
    }

    #[test]
    fn stacks_get_rows_when_symbolized_and_rows_sum_their_stacks() {
        // Given stacks in no module: 1 and 2 at the same address, 3 elsewhere, the same key
        // from another source, and one at 1's address from another allocator
        let modules = ModuleMap::new(DebugDirs::default());
        let mut symbolizer = StackSymbolizer::new(&DebugDirs::default());
        let mut stacks = Stacks::new(GroupBy::Source);
        stacks.insert(at(0, 1), 1, &stack(&[0x10], "glibc"), &modules);
        stacks.insert(at(0, 2), 1, &stack(&[0x10], "glibc"), &modules);
        stacks.insert(at(0, 3), 1, &stack(&[0x20], "glibc"), &modules);
        stacks.insert(at(1, 1), 1, &stack(&[0x30], "glibc"), &modules);
        stacks.insert(at(0, 4), 1, &stack(&[0x10], "mimalloc"), &modules);
        assert_eq!(stacks.get(at(0, 1)).and_then(|e| e.row), None);

        // When symbolizing
        stacks.symbolize(&mut symbolizer, &modules);

        // Then 1 and 2 share a row, 3 has its own, and rows sum their stacks' bytes
        let row = |a| stacks.get(a).and_then(|e| e.row).unwrap_or_default();
        assert_eq!(row(at(0, 1)), row(at(0, 2)));
        assert_ne!(row(at(0, 1)), row(at(0, 3)));
        let by_row = stacks.by_row([(at(0, 1), 10), (at(0, 2), 5), (at(0, 3), 7), (at(0, 99), 1)]);
        assert_eq!(by_row.get(&row(at(0, 1))), Some(&15));
        assert_eq!(by_row.get(&row(at(0, 3))), Some(&7));
        assert_eq!(by_row.len(), 2, "an unknown stack counts nowhere");

        // and sources and allocators never share a row or an id
        assert_ne!(row(at(1, 1)), row(at(0, 1)));
        assert_ne!(
            row(at(0, 4)),
            row(at(0, 1)),
            "another allocator, another row"
        );
        let ids: std::collections::HashSet<u64> = [at(0, 1), at(1, 1), at(0, 4)]
            .into_iter()
            .filter_map(|a| stacks.get(a).map(|e| e.id))
            .collect();
        assert_eq!(ids.len(), 3);

        // and by address, every stack is its own row
        let mut raw = Stacks::new(GroupBy::Address);
        raw.insert(at(0, 1), 1, &stack(&[0x10], "glibc"), &modules);
        raw.insert(at(0, 2), 1, &stack(&[0x10], "glibc"), &modules);
        raw.symbolize(&mut symbolizer, &modules);
        assert_ne!(
            raw.get(at(0, 1)).and_then(|e| e.row),
            raw.get(at(0, 2)).and_then(|e| e.row)
        );
    }
}
