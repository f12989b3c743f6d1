//! Every allocator a process uses, several at once, each row labelled with its allocator.
use leaktrace_tests::daemon::{Daemon, Kind};

use super::*;

/// The rows through `function` (anywhere in their frames), with their summed live bytes and
/// blocks, total allocations, and their allocators.
fn through(report: &Value, function: &str) -> (u64, u64, u64, Vec<String>) {
    let rows = stacks_with(report, &[function]);
    let sum = |field: &str| rows.iter().map(|s| num(s, field)).sum::<u64>();
    let mut allocators: Vec<String> = rows
        .iter()
        .map(|s| s["allocator"].as_str().unwrap_or("?").to_owned())
        .collect();
    allocators.sort();
    allocators.dedup();
    (
        sum("live_bytes"),
        sum("live_allocs"),
        sum("total_allocs"),
        allocators,
    )
}

#[test]
fn rust_services_with_jemalloc_or_mimalloc_and_c_malloc_are_exact_and_labelled() {
    require_root();
    for (build, allocator) in [
        (Build::RustJemalloc, "jemalloc"),
        (Build::RustMimalloc, "mimalloc"),
    ] {
        let mut target = Fixture::start(&fixture(build));
        let tracer = Tracer::attach(target.pid, &[]);
        target.cmd("conn 50 8192");
        target.cmd("cache 30 3000");
        target.cmd("churn 200 5000");
        target.cmd("cmalloc 20 1000");
        let done = tracer.interrupt();
        let report = done.report.unwrap();
        assert_clean(&report);
        assert!(
            done.stderr.contains(allocator) && done.stderr.contains("glibc"),
            "{build:?}: {}",
            done.stderr
        );
        let label = vec![allocator.to_owned()];
        // Connection tasks that never finish hold their buffers, down to the worker thread's
        // start
        assert_eq!(
            through(&report, "conn_buffer"),
            (50 * 8192, 50, 50, label.clone()),
            "{build:?}: {report:#}"
        );
        for row in stacks_with(&report, &["conn_buffer"]) {
            let names = functions(row);
            assert!(
                names
                    .iter()
                    .any(|f| f == "start_thread" || f.contains("clone")),
                "{build:?}: not down to the thread start: {names:?}"
            );
        }
        assert_eq!(
            through(&report, "cache_entry"),
            (30 * 3000, 30, 30, label.clone())
        );
        // Finished tasks hold nothing
        assert_eq!(through(&report, "churn_buffer"), (0, 0, 200, label));
        // and C's malloc in the same process is glibc's, counted once, labelled so
        assert_eq!(
            through(&report, "c_side_block"),
            (20 * 1000, 20, 20, vec!["glibc".to_owned()]),
            "{build:?}: {report:#}"
        );
        assert!(target.is_running());
    }
}

#[test]
fn cxx_new_delete_and_malloc_through_tcmalloc_are_exact_and_counted_once() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CxxTcmalloc));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("objects 40");
    target.cmd("arrays 10 1000");
    target.cmd("blocks 7 500");
    target.cmd("churn 100");
    let done = tracer.interrupt();
    let report = done.report.unwrap();
    assert_clean(&report);
    let tcmalloc = vec!["tcmalloc".to_owned()];
    // `new` calls tcmalloc's malloc inside: one allocation each, not two
    assert_eq!(
        through(&report, "make_session()"),
        (40 * 64, 40, 40, tcmalloc.clone()),
        "{report:#}"
    );
    assert_eq!(
        through(&report, "make_buffer(unsigned long)"),
        (10 * 1000, 10, 10, tcmalloc.clone())
    );
    assert_eq!(
        through(&report, "make_block(unsigned long)"),
        (7 * 500, 7, 7, tcmalloc.clone())
    );
    assert_eq!(through(&report, "churn_once()"), (0, 0, 100, tcmalloc));
    assert!(
        done.stderr.contains("tc_new") && done.stderr.contains("libtcmalloc_minimal"),
        "{}",
        done.stderr
    );
}

#[test]
fn an_allocator_left_out_is_said_and_the_growth_it_hides_is_flagged() {
    require_root();
    // Given a mimalloc service traced with only glibc selected
    let mut target = Fixture::start(&fixture(Build::RustMimalloc));
    let tracer = Tracer::attach(target.pid, &["--allocator", "glibc"]);
    // When it grows by 64 MiB through mimalloc
    target.cmd("cache 4096 16384");
    tracer.wait_for_next_status();
    let done = tracer.interrupt();
    let report = done.report.unwrap();
    // Then start-up said what was left out, and the report flags the growth it cannot see
    assert!(
        done.stderr.contains("NOT TRACED (--allocator): mimalloc"),
        "{}",
        done.stderr
    );
    let coverage = &report["coverage"];
    // (resident growth lags the 64 MiB asked for: pages are counted once touched, and mimalloc
    // hands out memory it may not have touched yet)
    assert!(
        num(coverage, "anon_growth_bytes") >= 48 << 20,
        "{coverage:#}"
    );
    let warning = coverage["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("not traced"), "{coverage:#}");
    assert!(
        done.stdout.contains("WARNING: MEMORY NOT TRACED"),
        "{}",
        done.stdout
    );

    // while a glibc program whose growth is all traced gets no warning
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("leak 2000 32768");
    tracer.wait_for_next_status();
    let report = tracer.interrupt().report.unwrap();
    assert!(
        report["coverage"]["warning"].is_null(),
        "{:#}",
        report["coverage"]
    );
}

#[test]
fn redis_under_a_client_agrees_with_its_own_accounting() {
    require_root();
    let redis = Daemon::start(Kind::Redis);
    let mut client = redis.client();
    let before = client.redis_used_memory().unwrap();
    let tracer = Tracer::attach(redis.pid(), &[]);
    // A client that SETs keys that are never deleted, checking every reply
    let value = "v".repeat(1000);
    for i in 0..5000 {
        assert!(client.set(&format!("key:{i}"), value.as_bytes()).unwrap());
    }
    assert_eq!(client.get("key:4999").unwrap(), Some(value.into_bytes()));
    let grown = client.redis_used_memory().unwrap() - before;
    let done = tracer.interrupt();
    let report = done.report.unwrap();
    assert_clean(&report);
    // leaktrace counts the bytes asked for, redis the allocator's size classes it got: close
    let live = num(&report["totals"], "live_bytes");
    let ratio = live as f64 / grown as f64;
    assert!(
        (0.85..=1.05).contains(&ratio),
        "leaktrace {live} B live, redis used_memory grew {grown} B (ratio {ratio:.3})"
    );
    assert!(
        report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["allocator"] == "jemalloc"),
        "{report:#}"
    );
    // and the daemon goes on answering, with no probe of leaktrace's left
    assert!(client.ping());
    assert_no_programs_left("after tracing redis-server");
}

#[test]
fn anonymous_mappings_made_outside_the_allocators_are_their_own_rows() {
    require_root();
    let page = 4096u64;
    let mut target = Fixture::start(&fixture(Build::CMmap));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("map 4 8");
    target.cmd("cut");
    target.cmd("remap");
    target.cmd("fixed");
    target.cmd("shared 3");
    target.cmd("bigmalloc 2");
    let report = tracer.interrupt().report.unwrap();
    assert_clean(&report);
    let mmap = vec!["mmap".to_owned()];
    // 4 x 8 pages, less 2 + 3 unmapped, mapping 2 grown to 16, 2 pages replaced: in 5 pieces
    assert_eq!(
        through(&report, "map_region"),
        ((6 + 5 + 16 + 6) * page, 5, 4, mmap.clone()),
        "{report:#}"
    );
    assert_eq!(through(&report, "fixed_overlay"), (2 * page, 1, 1, mmap));
    // Shared mappings are not private memory; glibc's own maps of large blocks are malloc's
    assert_eq!(through(&report, "shared_region").1, 0);
    let (big_live, big_blocks, _, big_allocators) = through(&report, "big_block");
    assert_eq!((big_live, big_blocks), (2 << 20, 2));
    assert_eq!(big_allocators, ["glibc"]);
    let totals = &report["totals"];
    assert_eq!(
        (num(totals, "mapped_bytes"), num(totals, "mapped_regions")),
        ((6 + 5 + 16 + 6 + 2) * page, 6)
    );
}
