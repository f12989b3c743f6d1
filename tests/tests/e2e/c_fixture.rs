//! A C program: exact bytes and counts by stack for every glibc entry point.
use super::*;

#[test]
fn leaks_are_reported_exactly_by_stack_and_churn_is_not() {
    require_root();
    // With frame pointers and, as production builds are, without.
    for build in [Build::CFramePointers, Build::COmitFramePointer] {
        leaks_exactly(build);
    }
}

fn leaks_exactly(build: Build) {
    let mut target = Fixture::start(&fixture(build));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("churn 20000");
    target.cmd("leak 25 1000");
    target.cmd("cache 7 333");
    target.cmd("churn 20000");
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_clean(&report);
    assert_stack(
        &report,
        "alloc_buffer",
        25_000,
        25,
        &[
            "alloc_buffer",
            "parse_header",
            "leak_request",
            "run",
            "main",
        ],
    );
    assert_stack(
        &report,
        "make_node",
        7 * 333,
        7,
        &["make_node", "cache_insert", "run", "main"],
    );
    let churn = stacks_from(&report, "churn_alloc");
    assert!(!churn.is_empty(), "churn stacks missing: {report:#}");
    for stack in churn {
        assert_eq!(num(stack, "live_bytes"), 0, "churn holds bytes: {stack:#}");
    }
    let churned: u64 = stacks_from(&report, "churn_alloc")
        .iter()
        .map(|s| num(s, "total_allocs"))
        .sum();
    assert_eq!(churned, 40_000);
    assert!(report["totals"]["frees"].as_u64().unwrap() >= 40_000);
    // The target keeps running unharmed after detach.
    assert!(target.is_running());
    target.cmd("leak 1 10");
    assert!(
        done.stdout.contains("alloc_buffer"),
        "text report: {}",
        done.stdout
    );
    assert!(
        done.stderr.contains("free: +3"),
        "free should be probed past its NULL check: {}",
        done.stderr
    );
}

#[test]
fn every_entry_point_is_accounted() {
    require_root();
    for build in [Build::CFramePointers, Build::COmitFramePointer] {
        entry_points_exactly(build);
    }
}

fn entry_points_exactly(build: Build) {
    let mut target = Fixture::start(&fixture(build));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("entry");
    let report = tracer.interrupt().report.unwrap();
    assert_clean(&report);
    for (first, bytes) in [
        ("e_malloc", 100),
        ("e_calloc", 200),
        ("e_realloc_grow", 500),
        ("e_realloc_shrink", 10),
        ("e_failing_source", 70),
        ("e_realloc_null", 300),
        ("e_reallocarray", 300),
        ("e_posix_memalign", 640),
        ("e_aligned_alloc", 128),
        ("e_memalign", 256),
        ("e_valloc", 4096),
        ("e_pvalloc", 100),
    ] {
        assert_stack(
            &report,
            first,
            bytes,
            1,
            &[first, "entry_points", "run", "main"],
        );
    }
    // The blocks realloc grew, shrank or freed were allocated here and are gone.
    let first = stacks_from(&report, "e_first");
    assert_eq!(first.len(), 3, "one per caller: {report:#}");
    assert_eq!(first.iter().map(|s| num(s, "live_bytes")).sum::<u64>(), 0);
    assert_eq!(
        first.iter().map(|s| num(s, "total_bytes")).sum::<u64>(),
        50 + 1000 + 80
    );
    // A failed realloc leaves its block alone; failed calls record nothing.
    for silent in [
        "e_realloc_fail",
        "e_realloc_zero",
        "e_reallocarray_overflow",
        "e_posix_memalign_fail",
        "e_free_null",
    ] {
        assert!(
            stacks_from(&report, silent).is_empty(),
            "{silent} recorded something: {report:#}"
        );
    }
    assert_eq!(num(&report["totals"], "unmatched_frees"), 0, "{report:#}");
}

#[test]
fn allocations_inside_glibc_have_their_callers() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("libc 13");
    let report = tracer.interrupt().report.unwrap();
    // glibc keeps no frame pointers: its .eh_frame carries the stack on to the caller.
    let stacks: Vec<&Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| functions(s).first().is_some_and(|f| f.contains("strdup")))
        .collect();
    assert_eq!(stacks.len(), 1, "{report:#}");
    assert_eq!(
        (num(stacks[0], "live_bytes"), num(stacks[0], "live_allocs")),
        (13 * 31, 13)
    );
    assert_eq!(stacks[0]["frames"][0]["module"], "libc.so.6");
    let names = functions(stacks[0]);
    assert!(
        has_subsequence(&names, &["libc_strdup", "run", "main", "_start"]),
        "{names:?}"
    );
}

#[test]
fn eight_threads_at_200k_events_per_second_lose_nothing() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let tracer = Tracer::attach(target.pid, &[]);
    let (threads, per_thread, every) = (8u64, 100_000u64, 100u64);
    let reply = target.cmd(&format!("threads {threads} {per_thread} {every}"));
    let elapsed_ns: u64 = reply.trim_start_matches("ok ").parse().unwrap();
    let leaked = threads * per_thread.div_ceil(every);
    let churned = threads * per_thread - leaked;
    let events = leaked + 2 * churned;
    let rate = events as f64 / (elapsed_ns as f64 / 1e9);
    let report = tracer.interrupt().report.unwrap();
    eprintln!(
        "{events} events in {:.3}s: {rate:.0} events/s",
        elapsed_ns as f64 / 1e9
    );
    assert_clean(&report);
    assert!(rate >= 200_000.0, "only {rate:.0} events/s");
    assert_stack(
        &report,
        "thread_leak",
        leaked * 48,
        leaked,
        &["thread_leak", "thread_churn"],
    );
    let churn: Vec<&Value> = stacks_with(&report, &["churn_alloc", "thread_churn"]);
    assert_eq!(
        churn.iter().map(|s| num(s, "total_allocs")).sum::<u64>(),
        churned
    );
    assert_eq!(churn.iter().map(|s| num(s, "live_bytes")).sum::<u64>(), 0);
}

#[test]
fn statically_linked_target() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CStatic));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("leak 9 777");
    target.cmd("churn 1000");
    let done = tracer.interrupt();
    let report = done.report.unwrap();
    assert!(
        done.stderr.contains("leaky-static"),
        "should probe the executable: {}",
        done.stderr
    );
    assert_clean(&report);
    assert_stack(
        &report,
        "alloc_buffer",
        9 * 777,
        9,
        &[
            "alloc_buffer",
            "parse_header",
            "leak_request",
            "run",
            "main",
        ],
    );
}
