//! Attach, launch, stop and detach: the target lives on and nothing is left behind.
use super::*;

#[test]
fn launch_mode_traces_from_the_first_instruction() {
    require_root();
    let leaky = fixture(Build::CFramePointers);
    let leaky = leaky.to_str().unwrap();
    let tracer = Tracer::start(&[
        "--top",
        "100",
        "--",
        leaky,
        "leak 10 1234",
        "cache 3 10",
        "exit",
    ]);
    let done = tracer.wait();
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_clean(&report);
    assert_stack(
        &report,
        "alloc_buffer",
        12_340,
        10,
        &[
            "alloc_buffer",
            "parse_header",
            "leak_request",
            "run",
            "main",
        ],
    );
    assert_stack(&report, "make_node", 30, 3, &["make_node", "cache_insert"]);
    assert!(done.stderr.contains("target exited"), "{}", done.stderr);
}

#[test]
fn target_exiting_mid_trace_ends_with_a_symbolized_report() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("leak 5 4000");
    assert!(target.exit().success());
    let done = tracer.wait();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stderr.contains("target exited"), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_stack(
        &report,
        "alloc_buffer",
        20_000,
        5,
        &["alloc_buffer", "parse_header", "leak_request"],
    );
}

#[test]
fn sigterm_detaches_and_exports_and_the_target_lives_on() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("leak 3 100");
    let loaded = leaktrace_programs_loaded();
    for program in ["alloc_enter", "alloc_exit", "free_enter", "on_exec"] {
        assert!(
            loaded.iter().any(|p| p == program),
            "{program} should be loaded while tracing: {loaded:?}"
        );
    }
    let asked = std::time::Instant::now();
    let done = tracer.signal(libc::SIGTERM);
    // Probes are removed in one go per link, not one by one (each removal waits ~80 ms here).
    let stopping = asked.elapsed();
    assert!(
        stopping < Duration::from_millis(1000),
        "stopping took {stopping:?}"
    );
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stderr.contains("probes detached"));
    assert_no_programs_left("after SIGTERM");
    assert_stack(
        &done.report.unwrap(),
        "alloc_buffer",
        300,
        3,
        &["alloc_buffer"],
    );
    for _ in 0..3 {
        target.cmd("churn 1000");
    }
    assert!(target.is_running());
}

#[test]
fn ctrl_c_right_after_attach_still_reports() {
    require_root();
    // The signal goes out the moment leaktrace says it is tracing, often before its main
    // loop runs (the handlers are installed before the first probe is attached): it must
    // end the trace with an export and leave no program behind, with separate probes and
    // with a uprobe session.
    for args in [&[][..], &["--sample-bytes", "4096"][..]] {
        let mut target = Fixture::start(&fixture(Build::CFramePointers));
        target.cmd("leak 3 100");
        let tracer = Tracer::attach(target.pid, args);
        let done = tracer.interrupt();
        assert!(done.status.success(), "{args:?}: {}", done.stderr);
        assert!(done.stderr.contains("probes detached"), "{}", done.stderr);
        assert!(done.report.is_some(), "{args:?}: no export");
        assert_no_programs_left("after an early Ctrl-C");
        target.cmd("churn 1000");
        assert!(target.is_running());
    }
}

#[test]
fn stopping_under_load_reports_no_missed_entries() {
    require_root();
    // Probes come off while the target allocates as fast as it can: returns that run after
    // their entry probe is gone belong to no reported call, and must not show up as
    // `pending_missing` in the report.
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let tracer = Tracer::attach(target.pid, &[]);
    target.send("churn 1000000000");
    std::thread::sleep(Duration::from_millis(1500));
    let done = tracer.interrupt();
    let report = done.report.unwrap();
    assert!(num(&report["totals"], "frees") > 10_000, "{report:#}");
    assert_eq!(num(&report["diagnostics"], "pending_missing"), 0);
    // Nor does a free of a block allocated once the entry probes were gone: the programs send
    // nothing once the run is stopped, so the report is the heap at that moment.
    assert_eq!(num(&report["totals"], "unmatched_frees"), 0, "{report:#}");
    assert!(target.is_running());
}

#[test]
fn duration_ends_the_run() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let tracer = Tracer::attach(target.pid, &["--duration", "1", "--interval", "0.2"]);
    target.cmd("leak 2 50");
    let done = tracer.wait();
    assert!(done.status.success());
    assert!(done.stderr.contains("duration reached"), "{}", done.stderr);
    assert!(
        done.stderr.contains("allocs/s"),
        "status lines missing: {}",
        done.stderr
    );
    assert!(target.is_running());
}
