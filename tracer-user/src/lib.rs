//! leaktrace: attach eBPF uprobes to a process's allocator and report its live heap by call stack.
//!
//! The library holds everything; the `leaktrace` binary only parses the command line and calls
//! [`session::run`]. Modules follow the data, from the target to the person reading the report:
//!
//! - [`target`]: the traced process (`/proc`), its allocator, and launch mode;
//! - [`probe`]: the eBPF object, probe sites, uprobe sessions, and decoding its events;
//! - [`unwind`]: `.eh_frame` rows for the kernel's unwinder, and checking it (`--verify-unwind`);
//! - [`source`]: the seam every source of heap data implements, and the sources themselves;
//! - [`heap`]: the live heap by stack, kept from what sources yield, and its history;
//! - [`symbolize`]: modules, debug files and names for stacks;
//! - [`report`]: rows as a person reads them (grouping, growth, verdicts);
//! - [`export`]: JSON, folded, text and pprof files, snapshots and `leaktrace diff`;
//! - [`tui`]: the live view;
//! - [`session`]: wires the above together for one run.
//!
//! Pure parts (heap model, report, exporters, probe-site choice, parsing) are unit tested
//! without a kernel; the end-to-end tests in `tests/` attach to real processes.
pub mod cli;
pub mod error;
pub mod export;
pub mod heap;
pub mod metrics;
pub mod probe;
pub mod push;
pub mod report;
pub mod session;
pub mod source;
pub mod symbolize;
pub mod target;
pub mod tui;
pub mod unwind;
pub mod user;
