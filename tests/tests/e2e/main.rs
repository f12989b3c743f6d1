//! End-to-end tests: leaktrace attached to real processes, exact bytes, counts and symbols.
//! Run as root through `cargo xtask test`. One file per area; the fixtures and helpers they share
//! are in the `leaktrace_tests` library and below.
#![expect(clippy::unwrap_used, reason = "tests panic on failure")]

use std::time::Duration;

use leaktrace_tests::{
    Build, Fixture, Tracer, assert_no_programs_left, build_id, debug_dir, fixture, functions,
    has_subsequence, leaktrace_programs_loaded, num, require_root, run_leaktrace, stack_from,
    stacks_from, stacks_with,
};
use serde_json::Value;

/// Checks the common post-conditions of a clean run.
pub(crate) fn assert_clean(report: &Value) {
    let totals = &report["totals"];
    assert_eq!(num(totals, "lost_events"), 0, "lost events: {report:#}");
    assert_eq!(num(&report["diagnostics"], "stack_failed"), 0);
    assert_eq!(num(&report["diagnostics"], "stack_map_full"), 0);
}

pub(crate) fn assert_stack(
    report: &Value,
    first: &str,
    live_bytes: u64,
    live_allocs: u64,
    path: &[&str],
) {
    let stack = stack_from(report, first);
    assert_eq!(num(stack, "live_bytes"), live_bytes, "{first}: {stack:#}");
    assert_eq!(num(stack, "live_allocs"), live_allocs, "{first}: {stack:#}");
    let names = functions(stack);
    assert!(
        has_subsequence(&names, path),
        "{first}: expected {path:?} in {names:?}"
    );
}

mod allocators;
mod analytics;
mod bad_input;
mod c_fixture;
mod daemons;
mod dist;
mod faults;
mod go;
mod html;
mod kernels;
mod lifecycle;
mod live_view;
mod metrics;
mod processes;
mod push;
mod rows;
mod rust_fixture;
mod sampling;
mod security;
mod service;
mod symbols;
mod unwinding;
