//! The call stacks of one trace: each read once from the kernel, tied to the modules mapped
//! when it was first seen ([`ModuleMap::pin`]), symbolized once, and given its report row
//! ([`crate::grouping`]).
//!
//! A stack is pinned when its first event is read, while the target still maps the code it ran
//! (a library unloaded later keeps naming the stacks that ran in it), and symbolized at the next
//! status tick or report, so symbol lookups stay off the event path.
use std::collections::HashMap;

use crate::{
    grouping::{GroupBy, RowIds, RowKey},
    heap::FastHash,
    probes::KernelStack,
    report::Frame,
    symbolize::{ModuleMap, Pin, StackSymbolizer},
};

/// One stack.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What the kernel stored.
    pub kernel: KernelStack,
    /// Its return addresses, pinned to their modules.
    pins: Vec<Pin>,
    /// Its frames, once symbolized.
    pub frames: Vec<Frame>,
    /// Its row, once symbolized.
    pub row: Option<u64>,
}

/// Every stack seen in this trace, by stack id.
#[derive(Debug)]
pub struct Stacks {
    group_by: GroupBy,
    /// Looked up for every event: hashed with the heap model's integer mixer, not SipHash.
    entries: HashMap<u64, Entry, FastHash>,
    rows: RowIds,
    /// Stacks pinned but not yet symbolized.
    pending: Vec<u64>,
}

impl Stacks {
    /// No stacks yet; rows are made `group_by`.
    pub fn new(group_by: GroupBy) -> Self {
        Self {
            group_by,
            entries: HashMap::default(),
            rows: RowIds::default(),
            pending: Vec::new(),
        }
    }

    /// How stacks are made rows.
    pub fn group_by(&self) -> GroupBy {
        self.group_by
    }

    /// Whether stack `id` was seen.
    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// Records stack `id`, seen for the first time, pinned to the modules mapped now.
    pub fn insert(&mut self, id: u64, kernel: KernelStack, modules: &ModuleMap) {
        let pins = modules.pin(&kernel.ips);
        self.entries.insert(
            id,
            Entry {
                kernel,
                pins,
                frames: Vec::new(),
                row: None,
            },
        );
        self.pending.push(id);
    }

    /// Symbolizes every stack not symbolized yet and gives it its row.
    pub fn symbolize(&mut self, symbolizer: &mut StackSymbolizer, modules: &ModuleMap) {
        for id in std::mem::take(&mut self.pending) {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            entry.frames = symbolizer.frames(modules, &entry.pins);
            entry.row = Some(self.rows.id(RowKey::of(id, &entry.frames, self.group_by)));
        }
    }

    /// Stack `id`, if seen.
    pub fn get(&self, id: u64) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// Live bytes by row from live bytes by stack (stacks not yet symbolized are left out).
    pub fn by_row(&self, per_stack: impl IntoIterator<Item = (u64, u64)>) -> HashMap<u64, u64> {
        let mut rows: HashMap<u64, u64> = HashMap::new();
        for (id, bytes) in per_stack {
            if let Some(row) = self.entries.get(&id).and_then(|e| e.row) {
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
    use crate::debuginfo::DebugDirs;

    #[test]
    fn stacks_get_rows_when_symbolized_and_rows_sum_their_stacks() {
        // Given three stacks in no module: 1 and 2 at the same address, 3 elsewhere
        let modules = ModuleMap::new(1, DebugDirs::default());
        let mut symbolizer = StackSymbolizer::new(&DebugDirs::default());
        let mut stacks = Stacks::new(GroupBy::Source);
        let kernel = |ips: &[u64]| KernelStack {
            ips: ips.to_vec(),
            ..KernelStack::default()
        };
        stacks.insert(1, kernel(&[0x10]), &modules);
        stacks.insert(2, kernel(&[0x10]), &modules);
        stacks.insert(3, kernel(&[0x20]), &modules);
        assert_eq!(stacks.get(1).and_then(|e| e.row), None);

        // When symbolizing
        stacks.symbolize(&mut symbolizer, &modules);

        // Then 1 and 2 share a row, 3 has its own, and rows sum their stacks' bytes
        let row = |id| stacks.get(id).and_then(|e| e.row).unwrap_or_default();
        assert_eq!(row(1), row(2));
        assert_ne!(row(1), row(3));
        let by_row = stacks.by_row([(1, 10), (2, 5), (3, 7), (99, 1)]);
        assert_eq!(by_row.get(&row(1)), Some(&15));
        assert_eq!(by_row.get(&row(3)), Some(&7));
        assert_eq!(by_row.len(), 2, "an unknown stack counts nowhere");

        // and by address, every stack is its own row
        let mut raw = Stacks::new(GroupBy::Address);
        raw.insert(1, kernel(&[0x10]), &modules);
        raw.insert(2, kernel(&[0x10]), &modules);
        raw.symbolize(&mut symbolizer, &modules);
        assert_ne!(
            raw.get(1).and_then(|e| e.row),
            raw.get(2).and_then(|e| e.row)
        );
    }
}
