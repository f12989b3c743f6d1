//! Sampling by bytes: unbiased estimates, and unsampled calls skip the return trap.
use super::*;

#[test]
fn estimates_a_100_mb_leak_within_ten_percent() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    // 64 KiB between samples: about 1,600 samples of a 100 MiB leak.
    let tracer = Tracer::attach(target.pid, &["--sample-bytes", "65536"]);
    target.cmd("leak 25600 4096");
    target.cmd("churn 20000");
    let finished = tracer.interrupt();
    let report = finished.report.unwrap();
    assert_eq!(report["sample_bytes"], 65536);
    let leak = stack_from(&report, "alloc_buffer");
    let truth = 25_600.0 * 4096.0;
    let estimate = num(leak, "live_bytes") as f64;
    eprintln!(
        "estimated {estimate:.0} of {truth:.0} bytes ({:+.1} %)",
        (estimate / truth - 1.0) * 100.0
    );
    assert!(
        (estimate / truth - 1.0).abs() < 0.10,
        "estimate {estimate} vs {truth}"
    );
    let count = num(leak, "live_allocs") as f64;
    assert!(
        (count / 25_600.0 - 1.0).abs() < 0.10,
        "count estimate {count}"
    );
    // Unsampled allocations were skipped in the kernel, and churn leaves nothing behind.
    assert!(num(&report["diagnostics"], "unsampled") > 20_000);
    for stack in stacks_from(&report, "churn_alloc") {
        assert_eq!(num(stack, "live_bytes"), 0);
    }
    assert_eq!(num(&report["totals"], "lost_events"), 0);
    // Unsampled calls skipped their return trap.
    assert!(
        finished.stderr.contains(SESSION_LINE),
        "sampling did not use a uprobe session:\n{}",
        finished.stderr
    );
}

/// What leaktrace prints when sampling runs as a uprobe session.
const SESSION_LINE: &str = "returns: uprobe session";

/// Whether the kernel has mapped its uprobe area (which holds the uretprobe trampoline) into
/// process `pid`.
fn has_uprobe_area(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .any(|line| line.ends_with("[uprobes]"))
}

#[test]
fn unsampled_calls_skip_the_return_trap() {
    require_root();
    // A mean so large that no call is sampled: with a uprobe session no return is ever
    // hijacked, so the kernel never maps the trampoline area into the target. Every probe
    // site in glibc is an emulated instruction, so nothing else maps it either.
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let tracer = Tracer::attach(target.pid, &["--sample-bytes", "1000000000000"]);
    target.cmd("churn 5000");
    assert!(
        !has_uprobe_area(target.pid),
        "a return was hijacked in session mode"
    );
    let finished = tracer.interrupt();
    assert!(
        finished.stderr.contains(SESSION_LINE),
        "{}",
        finished.stderr
    );
    let report = finished.report.unwrap();
    assert!(num(&report["diagnostics"], "unsampled") >= 5000);
    assert_eq!(num(&report["diagnostics"], "pending_missing"), 0);

    // Negative control: separate return probes hijack every return.
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let tracer = Tracer::attach(
        target.pid,
        &["--sample-bytes", "1000000000000", "--no-uprobe-session"],
    );
    target.cmd("churn 5000");
    assert!(has_uprobe_area(target.pid), "no return was hijacked");
    let finished = tracer.interrupt();
    assert!(
        finished
            .stderr
            .contains("returns: a return probe on every call"),
        "{}",
        finished.stderr
    );
}

#[test]
fn realloc_releases_sampled_blocks_with_and_without_a_session() {
    require_root();
    // 40,000 blocks of 64 bytes grown to 8 KiB by realloc; one in four is kept (80 MiB).
    // About 40 of the 64-byte blocks are sampled; their reallocs are mostly not, yet must
    // release them (a session cannot skip those returns), so regrow_first keeps nothing.
    // The same holds with separate return probes, the fallback where sessions are missing.
    // Uprobe sessions came in Linux 6.13: before, leaktrace says why it falls back.
    let default_returns = if leaktrace_tests::kernel_at_least(6, 13) {
        SESSION_LINE
    } else {
        "returns: a return probe on every call (no uprobe session:"
    };
    for (extra, returns) in [
        (None, default_returns),
        (
            Some("--no-uprobe-session"),
            "returns: a return probe on every call",
        ),
    ] {
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        let mut args = vec!["--sample-bytes", "65536"];
        args.extend(extra);
        let tracer = Tracer::attach(target.pid, &args);
        target.cmd("regrow 40000 8192 4");
        let finished = tracer.interrupt();
        assert!(finished.stderr.contains(returns), "{}", finished.stderr);
        let report = finished.report.unwrap();
        let first = stacks_from(&report, "regrow_first");
        // Some 64-byte blocks were sampled (the check below has something to check)...
        assert!(first.iter().map(|s| num(s, "total_allocs")).sum::<u64>() > 0);
        // ...and every one of them was released by its realloc.
        for stack in first {
            assert_eq!(num(stack, "live_bytes"), 0, "{extra:?}: {stack}");
        }
        let grown = stack_from(&report, "regrow_grow");
        let truth = 10_000.0 * 8192.0;
        let estimate = num(grown, "live_bytes") as f64;
        assert!(
            (estimate / truth - 1.0).abs() < 0.10,
            "{extra:?}: estimate {estimate} vs {truth}"
        );
        assert_eq!(num(&report["totals"], "unmatched_frees"), 0);
        assert_eq!(num(&report["totals"], "lost_events"), 0);
    }
}
