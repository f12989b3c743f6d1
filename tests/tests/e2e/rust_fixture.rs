//! A Rust program whose map is never pruned.
use super::*;

#[test]
fn map_that_is_never_pruned() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::Rust));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("register 40 4096");
    target.cmd("churn 2000");
    let report = tracer.interrupt().report.unwrap();
    assert_clean(&report);
    let stacks = stacks_with(&report, &["session_buffer", "register_session", "main"]);
    assert_eq!(stacks.len(), 1, "{report:#}");
    assert_eq!(
        (num(stacks[0], "live_bytes"), num(stacks[0], "live_allocs")),
        (40 * 4096, 40)
    );
    let churn = stacks_with(&report, &["handle_request", "main"]);
    assert_eq!(churn.iter().map(|s| num(s, "live_bytes")).sum::<u64>(), 0);
    assert_eq!(
        churn.iter().map(|s| num(s, "total_allocs")).sum::<u64>(),
        2000
    );
}
