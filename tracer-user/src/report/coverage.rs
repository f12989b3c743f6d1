//! Whether the report sees what the process really holds: the target's anonymous memory
//! (`RssAnon`) against the live bytes leaktrace traced, over the same run.
//!
//! Every block leaktrace counts as live was allocated since attach, so the traced live bytes
//! are the traced part of the growth. When the process's anonymous memory grew by much more,
//! something allocated it where no probe sees: an allocator left out (`--allocator`), one
//! leaktrace does not recognise or whose symbols were stripped, or memory mapped directly.
//! The report then says so instead of looking complete.
use serde::Serialize;

use crate::export::human_bytes;

/// Least growth of anonymous memory worth a warning: below it, allocator caches, thread
/// stacks and page rounding explain any difference.
pub const MIN_UNTRACED_BYTES: u64 = 32 << 20;

/// Largest share of the growth that may be untraced without a warning: an allocator keeps
/// freed memory for reuse, so the resident growth runs ahead of the live bytes somewhat.
pub const MAX_UNTRACED_SHARE: f64 = 0.5;

/// How much of the process's memory growth the trace saw.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Coverage {
    /// The process's resident anonymous memory at attach, in bytes.
    pub anon_at_attach_bytes: u64,
    /// The same now (or when last read, if the process is gone).
    pub anon_bytes: u64,
    /// Its growth since attach (0 when it shrank).
    pub anon_growth_bytes: u64,
    /// Live bytes the trace saw allocated since attach (estimates when sampling).
    pub traced_live_bytes: u64,
    /// Allocators found but not traced (`--allocator`).
    pub not_traced: Vec<String>,
    /// What the report cannot see, in one line, when it is a lot.
    pub warning: Option<String>,
}

impl Coverage {
    /// Judges a run whose anonymous memory went from `at_attach` to `now` bytes while the
    /// trace saw `traced_live` bytes allocated and still live.
    pub fn judge(at_attach: u64, now: u64, traced_live: u64, not_traced: Vec<String>) -> Self {
        let growth = now.saturating_sub(at_attach);
        let untraced = growth.saturating_sub(traced_live);
        let warning = (untraced >= MIN_UNTRACED_BYTES
            && untraced as f64 > MAX_UNTRACED_SHARE * growth as f64)
            .then(|| {
                let why = if not_traced.is_empty() {
                    "an allocator leaktrace does not recognise, stripped allocator symbols, or \
                     memory mapped directly"
                        .to_owned()
                } else {
                    format!("left out by --allocator: {}", not_traced.join(", "))
                };
                format!(
                    "anonymous memory grew by {} while traced live bytes grew by {}: {} not \
                     traced ({why})",
                    human_bytes(growth),
                    human_bytes(traced_live),
                    human_bytes(untraced)
                )
            });
        Self {
            anon_at_attach_bytes: at_attach,
            anon_bytes: now,
            anon_growth_bytes: growth,
            traced_live_bytes: traced_live,
            not_traced,
            warning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn large_untraced_growth_is_flagged_with_its_likely_cause() {
        // Given 100 MiB of growth of which 4 MiB were traced
        let coverage = Coverage::judge(10 * MIB, 110 * MIB, 4 * MIB, vec!["mimalloc".into()]);

        // Then it is flagged, naming what was left out
        assert_eq!(coverage.anon_growth_bytes, 100 * MIB);
        let warning = coverage.warning.expect("a warning");
        assert!(warning.contains("grew by 100.0 MiB"), "{warning}");
        assert!(warning.contains("96.0 MiB not traced"), "{warning}");
        assert!(warning.contains("--allocator: mimalloc"), "{warning}");
    }

    #[test]
    fn traced_growth_small_growth_and_shrinking_are_not() {
        // Growth the trace saw, give or take allocator slack
        assert_eq!(
            Coverage::judge(0, 300 * MIB, 200 * MIB, Vec::new()).warning,
            None
        );
        // Too little to tell
        assert_eq!(Coverage::judge(0, 20 * MIB, 0, Vec::new()).warning, None);
        // Memory given back
        let shrunk = Coverage::judge(500 * MIB, 100 * MIB, 0, Vec::new());
        assert_eq!((shrunk.anon_growth_bytes, shrunk.warning), (0, None));
        // Untraced growth without a known cause says what it may be
        let unknown = Coverage::judge(0, 200 * MIB, MIB, Vec::new());
        assert!(
            unknown
                .warning
                .is_some_and(|w| w.contains("mapped directly"))
        );
    }
}
