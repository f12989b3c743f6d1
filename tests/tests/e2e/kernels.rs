//! What a kernel can run: every mode where it has every feature; where it lacks `bpf_loop`
//! (before 5.17, such as Ubuntu 22.04's 5.15), a one-line refusal of table unwinding that names
//! `--unwind fp`, before anything is attached; and frame pointers exact on both.
//!
//! The kernel's release is the oracle here, independent of the feature probes under test.
use std::{
    process::{Command, Stdio},
    time::Instant,
};

use leaktrace_tests::{
    code_changed_in_memory, kernel_at_least, kernel_faults, kernel_refuses_guarded_global_calls,
    leaktrace_bin,
};

use super::{
    unwinding::{assert_complete, chain},
    *,
};

#[test]
fn table_unwinding_runs_or_is_refused_naming_fp_and_fp_is_exact() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let pid = target.pid.to_string();
    if kernel_at_least(5, 17) {
        let tracer = Tracer::attach(target.pid, &[]);
        target.cmd("chain 4 100");
        let report = tracer.interrupt().report.unwrap();
        let stack = stack_from(&report, "chain_12");
        assert_eq!(
            (num(stack, "live_bytes"), num(stack, "live_allocs")),
            (400, 4)
        );
    } else {
        let (status, _, stderr) = run_leaktrace(&["-p", &pid, "--duration", "2"]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
        assert!(stderr.contains("lacks bpf_loop (Linux 5.17+"), "{stderr}");
        assert!(stderr.contains("--unwind fp still works"), "{stderr}");
        assert!(!stderr.contains("tracing pid"), "{stderr}");
        assert_eq!(code_changed_in_memory(target.pid), Vec::new());
    }
    // Frame pointers, on any kernel: the whole chain, exactly.
    let tracer = Tracer::attach(target.pid, &["--unwind", "fp"]);
    target.cmd("chain 4 100");
    let finished = tracer.interrupt();
    // One line per feature this kernel runs degraded, and none for what it has.
    let said = |needle: &str| finished.stderr.contains(needle);
    assert_eq!(
        said("no uprobe_multi"),
        !kernel_at_least(6, 6),
        "{}",
        finished.stderr
    );
    assert!(
        !said("no uprobe session"),
        "not sampling: {}",
        finished.stderr
    );
    // Before 6.1 run-time allocated maps make the kernel log a warning: preallocated instead.
    assert_eq!(
        said("preallocated"),
        !kernel_at_least(6, 1),
        "{}",
        finished.stderr
    );
    // From 6.10 to 6.14 the unwinder loads static.
    assert_eq!(
        said("unwinder: verified as one program"),
        kernel_refuses_guarded_global_calls(),
        "{}",
        finished.stderr
    );
    assert_eq!(
        said("no PIDFD_GET_INFO"),
        !kernel_at_least(6, 15),
        "{}",
        finished.stderr
    );
    let report = finished.report.unwrap();
    assert_eq!(report["unwind"], "fp");
    let stack = stack_from(&report, "chain_12");
    assert_eq!(
        (num(stack, "live_bytes"), num(stack, "live_allocs")),
        (400, 4)
    );
    let names = functions(stack);
    let expected = chain();
    assert_eq!(
        names[..12].iter().map(String::as_str).collect::<Vec<_>>(),
        expected[..12]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "all twelve, in order, first"
    );
    assert_complete(stack);
}

/// Since 6.13 the kernel gives uprobe programs per-CPU private stacks on the assumption that
/// they cannot be preempted; on a preemptible kernel (Debian's 7.2 is `PREEMPT(lazy)`) two
/// threads on one CPU shared one and the unwinder faulted in the kernel. leaktrace's programs
/// now run with preemption disabled. More threads than CPUs, churning through the unwinder for
/// 15 s: no fault in the kernel's log, and the figures exact.
#[test]
fn more_threads_than_cpus_leave_the_kernel_clean_and_the_figures_exact() {
    require_root();
    let before = kernel_faults();
    // Through the unwinder where the kernel has bpf_loop, else through frame pointers.
    let (build, args): (_, &[&str]) = if kernel_at_least(5, 17) {
        (Build::COmitFramePointer, &[])
    } else {
        (Build::CFramePointers, &["--unwind", "fp"])
    };
    let mut target = Fixture::start(&fixture(build));
    // A larger ring buffer than the default 32 MiB: under emulation (the kernel tests) the
    // reader is emulated too, and since the unwinder got faster the 8 threads outrun it by
    // about 24 % over the 15 s: at the default, 137k of 2.7M events were lost (counted), on
    // Debian's 7.2. This test is about the kernel staying clean and the figures exact.
    let mut args = args.to_vec();
    args.extend(["--ringbuf-mib", "128"]);
    let tracer = Tracer::attach(target.pid, &args);
    let (threads, per_thread, every) = (8u64, 20_000u64, 100u64);
    let started = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || started.elapsed() < Duration::from_secs(15) {
        target.cmd(&format!("threads {threads} {per_thread} {every}"));
        rounds += 1;
    }
    let finished = tracer.interrupt();
    let after = kernel_faults();
    assert_eq!(
        after[before.len().min(after.len())..],
        [] as [String; 0],
        "the kernel faulted"
    );
    let report = finished.report.unwrap();
    let leaked = rounds * threads * per_thread.div_ceil(every);
    assert_clean(&report);
    assert_stack(
        &report,
        "thread_leak",
        leaked * 48,
        leaked,
        &["thread_leak", "thread_churn"],
    );
}

/// The negative control for the static form: with the unwinder's functions kept global, a
/// kernel from 6.10 to 6.14 refuses the programs (a global call with preemption disabled),
/// and every other kernel loads them.
#[test]
fn global_unwinder_functions_are_refused_only_from_6_10_to_6_14() {
    require_root();
    let target = Fixture::start(&fixture(Build::COmitFramePointer));
    let pid = target.pid.to_string();
    let mut args = vec!["-p", &pid, "--duration", "1"];
    // Before 5.17 (no bpf_loop) frame pointers are the only walk, with no global function.
    if !kernel_at_least(5, 17) {
        args.extend(["--unwind", "fp"]);
    }
    let out = Command::new(leaktrace_bin())
        .args(&args)
        .env("LEAKTRACE_STATIC_FUNCTIONS", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("verified as one program"), "{stderr}");
    let refused = kernel_refuses_guarded_global_calls();
    assert_eq!(out.status.success(), !refused, "{stderr}");
    assert_eq!(
        stderr.contains("global function calls are not allowed with preemption disabled"),
        refused,
        "{stderr}"
    );
    assert_eq!(code_changed_in_memory(target.pid), Vec::new());
}
