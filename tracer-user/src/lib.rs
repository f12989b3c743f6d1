//! leaktrace: attach eBPF uprobes to a process's allocator and report its live heap by call stack.
//!
//! The library holds everything; the `leaktrace` binary only parses the command line and calls
//! [`session::run`]. Pure parts (heap model, exporters, probe-site choice, parsing) are unit
//! tested without a kernel; the end-to-end tests in `tests/` attach to real processes.
pub mod allocator;
pub mod analytics;
pub mod cli;
pub mod debuginfo;
pub mod diff;
pub mod error;
pub mod events;
pub mod export;
pub mod grouping;
pub mod heap;
pub mod history;
pub mod kernel_btf;
pub mod launch;
pub mod probe_site;
pub mod probes;
pub mod process;
pub mod report;
pub mod session;
pub mod snapshot;
pub mod soak;
pub mod stacks;
pub mod symbolize;
pub mod tui;
pub mod unwind;
pub mod unwind_tables;
pub mod uprobe_session;
pub mod verify;
