//! End-to-end tests: leaktrace attached to real processes, exact bytes, counts and symbols.
//! Run as root through `cargo xtask test`.
#![expect(clippy::unwrap_used, reason = "tests panic on failure")]

use std::time::Duration;

use leaktrace_tests::{
    Build, Fixture, Tracer, assert_no_programs_left, build_id, debug_dir, fixture, functions,
    has_subsequence, leaktrace_programs_loaded, num, require_root, run_leaktrace, stack_from,
    stacks_from, stacks_with,
};
use serde_json::Value;

/// Checks the common post-conditions of a clean run.
fn assert_clean(report: &Value) {
    let totals = &report["totals"];
    assert_eq!(num(totals, "lost_events"), 0, "lost events: {report:#}");
    assert_eq!(num(&report["diagnostics"], "stack_failed"), 0);
    assert_eq!(num(&report["diagnostics"], "stack_map_full"), 0);
}

fn assert_stack(report: &Value, first: &str, live_bytes: u64, live_allocs: u64, path: &[&str]) {
    let stack = stack_from(report, first);
    assert_eq!(num(stack, "live_bytes"), live_bytes, "{first}: {stack:#}");
    assert_eq!(num(stack, "live_allocs"), live_allocs, "{first}: {stack:#}");
    let names = functions(stack);
    assert!(
        has_subsequence(&names, path),
        "{first}: expected {path:?} in {names:?}"
    );
}

mod c_fixture {
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
}

mod rust_fixture {
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
}

mod lifecycle {
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
        assert_eq!(
            leaktrace_programs_loaded().len(),
            5,
            "programs should be loaded while tracing"
        );
        let done = tracer.signal(libc::SIGTERM);
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
}

mod bad_input {
    use super::*;

    fn assert_usage_error(args: &[&str], needle: &str) {
        let (status, _, stderr) = run_leaktrace(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(stderr.contains("hint:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_no_programs_left(&format!("{args:?}"));
    }

    #[test]
    fn bad_arguments() {
        require_root();
        assert_usage_error(&[], "nothing to trace");
        assert_usage_error(&["-p", "abc"], "abc");
        assert_usage_error(&["-p", "1", "--duration", "-2"], "-2");
        assert_usage_error(&["-p", "1", "--duration", "soon"], "soon");
        assert_usage_error(&["-p", "1", "--format", "xml"], "xml");
        assert_usage_error(&["--bogus"], "bogus");
    }

    #[test]
    fn bad_targets() {
        require_root();
        assert_usage_error(&["-p", "3999999"], "no process with pid 3999999");
        assert_usage_error(&["-p", "2"], "kernel thread");
        assert_usage_error(&["--", "/nonexistent/program"], "command not found");
    }

    #[test]
    fn unwritable_export_path_is_refused_before_attaching() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::CFramePointers));
        let pid = target.pid.to_string();
        assert_usage_error(
            &["-p", &pid, "--export", "/nonexistent-dir/x.json"],
            "cannot write export file",
        );
        assert_usage_error(&["-p", &pid, "--export", "/tmp"], "is a directory");
        target.cmd("churn 100");
    }

    #[test]
    fn go_program_has_no_malloc() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("main.go");
        std::fs::write(
            &src,
            "package main\nimport \"time\"\nfunc main() { time.Sleep(time.Minute) }\n",
        )
        .unwrap();
        let bin = dir.path().join("sleeper");
        let out = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(&src)
            .env("GOCACHE", dir.path().join("cache"))
            .env("CGO_ENABLED", "0")
            .output()
            .expect("go is installed by `cargo xtask test`");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut child = std::process::Command::new(&bin).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let pid = child.id().to_string();
        assert_usage_error(&["-p", &pid], "Go program");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn unprivileged_user_is_refused() {
        require_root();
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(leaktrace_tests::leaktrace_bin())
            .args(["-p", "1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("not permitted") && stderr.contains("sudo"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

mod live_view {
    use std::{
        path::Path,
        process::Command,
        time::{Duration, Instant},
    };

    use super::*;

    /// A leaktrace running in a detached tmux session, read with capture-pane.
    struct Tmux {
        name: String,
    }

    impl Tmux {
        fn start(name: &str, command: &str) -> Self {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", name])
                .output();
            let status = Command::new("tmux")
                .args([
                    "new-session",
                    "-d",
                    "-s",
                    name,
                    "-x",
                    "120",
                    "-y",
                    "36",
                    command,
                ])
                .status()
                .expect("tmux is installed by `cargo xtask test`");
            assert!(status.success());
            Self {
                name: name.to_owned(),
            }
        }

        /// leaktrace's live view on `pid`, exporting to `dir/final.json` and leaving its exit
        /// code in `dir/exit`; returns once the header is on screen.
        fn leaktrace(name: &str, pid: u32, dir: &Path) -> Self {
            let command = format!(
                "{} -p {pid} --export {}/final.json; echo $? > {}/exit",
                leaktrace_tests::leaktrace_bin().display(),
                dir.display(),
                dir.display()
            );
            let tmux = Self::start(&format!("{name}-{pid}"), &command);
            tmux.wait_for("the header", |s| s.contains(&format!("pid {pid}")));
            tmux
        }

        fn screen(&self) -> String {
            let out = Command::new("tmux")
                .args(["capture-pane", "-p", "-t", &self.name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        fn keys(&self, keys: &[&str]) {
            for key in keys {
                assert!(
                    Command::new("tmux")
                        .args(["send-keys", "-t", &self.name, key])
                        .status()
                        .unwrap()
                        .success()
                );
                std::thread::sleep(Duration::from_millis(150));
            }
        }

        /// Waits until the screen satisfies `ok`; panics with the screen after 15 s.
        fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
            let start = Instant::now();
            loop {
                let screen = self.screen();
                if ok(&screen) {
                    return screen;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "screen never showed {what}:\n{screen}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    impl Drop for Tmux {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.name])
                .output();
        }
    }

    fn wait_for_file(path: &Path) -> String {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && !text.is_empty()
            {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn keys_sort_filter_baseline_export_and_quit() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::CFramePointers));
        let dir = tempfile::tempdir().unwrap();
        let tmux = Tmux::leaktrace("lt", target.pid, dir.path());
        target.cmd("leak 40 1000");
        target.cmd("cache 5 100");
        target.cmd("churn 2000");
        let screen = tmux.wait_for("the leak", |s| {
            s.contains("alloc_buffer") && s.contains("39.1 KiB")
        });
        assert!(screen.contains("make_node"), "{screen}");
        assert!(
            screen.contains("live ▼"),
            "default sort is live bytes:\n{screen}"
        );

        tmux.keys(&["s"]);
        tmux.wait_for("growth sort", |s| {
            s.contains("growth") && s.contains('▼') && !s.contains("live ▼")
        });
        tmux.keys(&["s", "s", "s"]);
        tmux.wait_for("verdict sort", |s| s.contains("verdict ▼"));
        tmux.keys(&["s"]);
        tmux.wait_for("live sort again", |s| s.contains("live ▼"));

        tmux.keys(&["/", "c", "a", "c", "h", "e", "Enter"]);
        let filtered = tmux.wait_for("the filter", |s| {
            s.contains("/cache") && !s.contains("alloc_buffer")
        });
        assert!(filtered.contains("make_node"), "{filtered}");
        tmux.keys(&["Escape"]);
        tmux.wait_for("the filter cleared", |s| s.contains("alloc_buffer"));

        tmux.keys(&["b"]);
        tmux.wait_for("the baseline", |s| s.contains("baseline"));
        target.cmd("leak 3 1000");
        tmux.wait_for("a delta since the baseline", |s| {
            s.contains("+2.9 KiB") || s.contains("+3000")
        });
        tmux.keys(&["b"]);

        tmux.keys(&["e"]);
        let exported = tmux.wait_for("the export message", |s| s.contains("exported"));
        let path = exported
            .split_whitespace()
            .find(|w| w.contains("leaktrace-") && w.ends_with(".json"))
            .unwrap_or_else(|| panic!("no export path on screen:\n{exported}"))
            .to_owned();
        let export: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            num(stack_from(&export, "alloc_buffer"), "live_bytes"),
            43_000
        );

        tmux.keys(&["?"]);
        tmux.wait_for("the help", |s| {
            s.contains("baseline") && s.contains("filter") && s.contains("quit")
        });
        tmux.keys(&["Escape", "q"]);
        assert_eq!(wait_for_file(&dir.path().join("exit")).trim(), "0");
        let report: Value =
            serde_json::from_str(&wait_for_file(&dir.path().join("final.json"))).unwrap();
        assert_eq!(
            num(stack_from(&report, "alloc_buffer"), "live_bytes"),
            43_000
        );
        assert_no_programs_left("after quitting the live view");
        target.cmd("churn 10");
        assert!(target.is_running());
    }

    #[test]
    fn ingestion_keeps_up_while_the_view_runs() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::CFramePointers));
        let dir = tempfile::tempdir().unwrap();
        let tmux = Tmux::leaktrace("lt-rate", target.pid, dir.path());
        let reply = target.cmd("threads 8 100000 100");
        let elapsed_ns: u64 = reply.trim_start_matches("ok ").parse().unwrap();
        let events = 8 * 1000 + 2 * 8 * 99_000;
        let rate = events as f64 / (elapsed_ns as f64 / 1e9);
        tmux.wait_for("the threads' stacks", |s| s.contains("thread_leak"));
        tmux.keys(&["q"]);
        assert_eq!(wait_for_file(&dir.path().join("exit")).trim(), "0");
        let report: Value =
            serde_json::from_str(&wait_for_file(&dir.path().join("final.json"))).unwrap();
        eprintln!(
            "with the live view: {events} events at {rate:.0} events/s, lost {}",
            report["totals"]["lost_events"]
        );
        assert!(rate >= 200_000.0, "only {rate:.0} events/s");
        assert_eq!(num(&report["totals"], "lost_events"), 0);
        assert_eq!(num(stack_from(&report, "thread_leak"), "live_allocs"), 8000);
    }
}

mod unwinding {
    use std::time::{Duration, Instant};

    use super::*;

    fn chain() -> Vec<String> {
        let mut names: Vec<String> = (1..=12).rev().map(|i| format!("chain_{i:02}")).collect();
        names.extend(["run", "main", "__libc_start_call_main", "_start"].map(String::from));
        names
    }

    fn assert_complete(stack: &Value) {
        assert_eq!(stack["incomplete"], false, "{stack:#}");
        assert_eq!(stack["truncated"], false, "{stack:#}");
    }

    #[test]
    fn twelve_frames_without_frame_pointers_and_the_fp_negative_control() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        let tracer = Tracer::attach(target.pid, &[]);
        target.cmd("chain 4 100");
        let report = tracer.interrupt().report.unwrap();
        assert_eq!(report["unwind"], "auto");
        let stack = stack_from(&report, "chain_12");
        assert_eq!(
            (num(stack, "live_bytes"), num(stack, "live_allocs")),
            (400, 4)
        );
        let names = functions(stack);
        let expected = chain();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert!(has_subsequence(&names, &expected), "{names:?}");
        assert_eq!(&names[..12], &expected[..12], "all twelve, in order, first");
        assert_complete(stack);

        // The same program through the kernel's frame-pointer walk: the chain is lost.
        let tracer = Tracer::attach(target.pid, &["--unwind", "fp"]);
        target.cmd("chain 4 100");
        let report = tracer.interrupt().report.unwrap();
        assert_eq!(report["unwind"], "fp");
        let stack = stack_from(&report, "chain_12");
        let names = functions(stack);
        assert!(
            !names.iter().any(|n| n == "chain_01"),
            "fp should not see the whole chain: {names:?}"
        );
        assert!(names.len() < 12, "{names:?}");
    }

    #[test]
    fn rust_release_binary_without_frame_pointers() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::Rust));
        let tracer = Tracer::attach(target.pid, &[]);
        target.cmd("chain 6 2048");
        let report = tracer.interrupt().report.unwrap();
        let stacks = stacks_with(
            &report,
            &[
                "chain_level_4",
                "chain_level_3",
                "chain_level_2",
                "chain_level_1",
                "main",
            ],
        );
        assert_eq!(stacks.len(), 1, "{report:#}");
        assert_eq!(
            (num(stacks[0], "live_bytes"), num(stacks[0], "live_allocs")),
            (6 * 2048, 6)
        );
        assert_complete(stacks[0]);
        let names = functions(stacks[0]);
        assert_eq!(
            names.last().map(String::as_str),
            Some("_start"),
            "{names:?}"
        );
    }

    #[test]
    fn zig_release_fast_without_frame_pointers() {
        require_root();
        let zig = fixture(Build::Zig);
        let zig = zig.to_str().unwrap();
        let done = Tracer::start(&["--", zig, "7", "3000"]).wait();
        assert!(done.status.success(), "{}", done.stderr);
        let report = done.report.unwrap();
        let stacks: Vec<&Value> = report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| functions(s).iter().any(|f| f.ends_with("zig_alloc_leaf")))
            .collect();
        assert_eq!(stacks.len(), 1, "{report:#}");
        assert_eq!(
            (num(stacks[0], "live_bytes"), num(stacks[0], "live_allocs")),
            (21_000, 7)
        );
        let names = functions(stacks[0]);
        let order = [
            "zig_alloc_leaf",
            "zig_level3",
            "zig_level2",
            "zig_level1",
            "main",
        ];
        let mut rest = names.iter();
        for want in order {
            assert!(
                rest.any(|n| n.ends_with(want)),
                "{want} missing or out of order in {names:?}"
            );
        }
        assert_complete(stacks[0]);
    }

    #[test]
    fn allocations_inside_glibc_continue_to_their_callers() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        let tracer = Tracer::attach(target.pid, &[]);
        target.cmd("libc 3");
        target.cmd("libcalls");
        let report = tracer.interrupt().report.unwrap();
        for (inside, caller) in [
            ("strdup", "libc_strdup"),
            ("getdelim", "libcalls"),
            ("fopen", "libcalls"),
        ] {
            let stacks: Vec<&Value> = report["stacks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| num(s, "live_bytes") > 0)
                .filter(|s| functions(s).first().is_some_and(|f| f.contains(inside)))
                .collect();
            assert!(
                !stacks.is_empty(),
                "no live stack from {inside}: {report:#}"
            );
            for stack in stacks {
                let names = functions(stack);
                assert!(
                    has_subsequence(&names, &[caller, "run", "main", "_start"]),
                    "{inside}: {names:?}"
                );
                assert_complete(stack);
            }
        }
    }

    #[test]
    fn deep_recursion_threads_and_dlopen_after_attach() {
        require_root();
        let plugin = fixture(Build::Plugin);
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        let tracer = Tracer::attach(target.pid, &[]);
        target.cmd("recurse 300 55");
        target.cmd("thread 77");
        target.cmd(&format!("dlopen {}", plugin.display()));
        // leaktrace notices the new library on its own (at the latest at its next status tick).
        tracer.wait_for_stderr("libplugin.so", Duration::from_secs(5));
        target.cmd("plugin 3 64");
        let report = tracer.interrupt().report.unwrap();

        let deep = stack_from(&report, "recurse");
        assert_eq!(
            deep["frames"].as_array().unwrap().len(),
            127,
            "exactly 127 frames"
        );
        assert_eq!(deep["truncated"], true);
        assert!(num(&report["diagnostics"], "stacks_truncated") >= 1);

        let thread = stack_from(&report, "thread_alloc");
        let names = functions(thread);
        assert_eq!(&names[..2], ["thread_alloc", "thread_main"]);
        assert!(
            names.iter().any(|n| n == "start_thread")
                && names.last().is_some_and(|n| n == "clone3"),
            "{names:?}"
        );
        assert_complete(thread);

        let plugin_stack = stack_from(&report, "plugin_make");
        assert_eq!(
            (
                num(plugin_stack, "live_bytes"),
                num(plugin_stack, "live_allocs")
            ),
            (192, 3)
        );
        let names = functions(plugin_stack);
        assert!(
            has_subsequence(
                &names,
                &[
                    "plugin_make",
                    "plugin_alloc",
                    "call_plugin",
                    "run",
                    "main",
                    "_start"
                ]
            ),
            "{names:?}"
        );
        assert_eq!(plugin_stack["frames"][0]["module"], "libplugin.so");
        assert_complete(plugin_stack);
    }

    #[test]
    fn return_addresses_behind_another_tools_uretprobe_are_translated() {
        require_root();
        let binary = fixture(Build::COmitFramePointer);
        let mut target = Fixture::start(&binary);
        // Another tool's return probe on chain_06: while it runs, its return address on the
        // stack is the kernel's trampoline.
        let foreign = leaktrace_tests::foreign_uretprobe(&binary, "chain_06", target.pid);
        target.cmd("chain 1 8"); // the trampoline's mapping now exists
        let tracer = Tracer::attach(target.pid, &[]);
        tracer.wait_for_stderr("allocs/s", Duration::from_secs(5));
        target.cmd("chain 3 100");
        let report = tracer.interrupt().report.unwrap();
        drop(foreign);
        let stack = stack_from(&report, "chain_12");
        let names = functions(stack);
        let expected = chain();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert!(has_subsequence(&names, &expected), "{names:?}");
        assert_eq!(&names[..12], &expected[..12]);
        assert_complete(stack);
        assert_eq!(num(stack, "live_allocs"), 3);
    }

    #[test]
    fn the_target_execing_a_new_image_keeps_full_stacks() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        let tracer = Tracer::attach(target.pid, &[]);
        target.cmd("chain 2 100");
        target.exec_again();
        // The new image's mappings reach the unwinder at the next status tick at the latest.
        std::thread::sleep(Duration::from_millis(1500));
        target.cmd("chain 3 100");
        let report = tracer.interrupt().report.unwrap();
        // One source path: one row, with a call site per image (different addresses)
        let stacks = stacks_from(&report, "chain_12");
        assert_eq!(stacks.len(), 1, "{report:#}");
        let sites = stacks[0]["call_sites"].as_array().unwrap();
        assert_eq!(sites.len(), 2, "one call site per image: {report:#}");
        assert_ne!(sites[0]["addrs"][0], sites[1]["addrs"][0]);
        for stack in stacks {
            let names = functions(stack);
            assert!(
                has_subsequence(&names, &["chain_12", "chain_01", "run", "main", "_start"]),
                "{names:?}"
            );
            assert_complete(stack);
        }
        // Blocks of the old image died with it; the 3 new ones are live.
        let live: u64 = stacks_from(&report, "chain_12")
            .iter()
            .map(|s| num(s, "live_allocs"))
            .sum();
        assert!(live >= 3, "{report:#}");
    }

    #[test]
    fn kernel_unwinds_match_a_user_space_unwind_of_the_same_stack() {
        require_root();
        for (build, commands) in [
            (
                Build::COmitFramePointer,
                &[
                    "chain 5 100",
                    "libcalls",
                    "libc 3",
                    "thread 64",
                    "recurse 40 8",
                    "churn 500",
                    "entry",
                ][..],
            ),
            (
                Build::Rust,
                &["chain 5 100", "register 10 64", "churn 300"][..],
            ),
            // Frame-pointer prologues save rbp right below the return address, which the
            // unwinder reads together with it.
            (
                Build::CFramePointers,
                &["chain 5 100", "recurse 40 8", "churn 500", "entry"][..],
            ),
        ] {
            let mut target = Fixture::start(&fixture(build));
            let tracer = Tracer::attach(target.pid, &["--verify-unwind", "1"]);
            for command in commands {
                target.cmd(command);
            }
            let done = tracer.interrupt();
            let report = done.report.unwrap();
            let diagnostics = &report["diagnostics"];
            let allocs = num(&report["totals"], "allocs");
            eprintln!(
                "{build:?}: {} of {allocs} stacks checked",
                num(diagnostics, "unwind_verified")
            );
            assert_eq!(
                num(diagnostics, "unwind_mismatched"),
                0,
                "{build:?}: {}",
                done.stderr
            );
            // Every allocation was sampled; a few records may not fit the buffer under load.
            assert!(
                num(diagnostics, "unwind_verified") * 10 >= allocs * 9,
                "{build:?}: {diagnostics}"
            );
        }
    }

    #[test]
    fn attaching_to_a_40_mb_rust_binary_takes_under_two_seconds() {
        require_root();
        // The cargo binary of the toolchain: a 40 MB Rust release build with its .eh_frame.
        let sysroot = std::process::Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .unwrap();
        let cargo = std::path::PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim())
            .join("bin/cargo");
        assert!(
            std::fs::metadata(&cargo).unwrap().len() > 30 << 20,
            "{} is smaller than expected",
            cargo.display()
        );
        let cargo = cargo.to_str().unwrap().to_owned();
        let start = Instant::now();
        let tracer = Tracer::start(&["--", &cargo, "--version"]);
        let attach_s = start.elapsed().as_secs_f64();
        let done = tracer.wait();
        eprintln!("attached with tables for cargo and libc in {attach_s:.2}s");
        assert!(done.status.success(), "{}", done.stderr);
        assert!(
            done.stderr.contains("building unwind tables 1/"),
            "no progress shown: {}",
            done.stderr
        );
        assert!(
            done.stderr.contains("unwind tables ready"),
            "{}",
            done.stderr
        );
        assert!(attach_s < 2.0, "attaching took {attach_s:.2}s");
        let report = done.report.unwrap();
        assert!(num(&report["diagnostics"], "unwind_table_bytes") > 1 << 20);
    }
}

mod analytics {
    use std::{
        path::{Path, PathBuf},
        process::Command,
        time::{Duration, Instant},
    };

    use super::*;

    fn verdict_of(report: &Value, first: &str) -> String {
        let stacks = stacks_from(report, first);
        assert!(!stacks.is_empty(), "no stack from {first}: {report:#}");
        stacks[0]["verdict"].as_str().unwrap().to_owned()
    }

    #[test]
    fn verdicts_tell_leak_steady_cache_churn_and_a_stopped_leak_apart() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        // Judged over 30 s of history (a tenth of that is enough to call a leak).
        let tracer = Tracer::attach(target.pid, &["--window", "30"]);
        let start = Instant::now();
        let mut second = 0;
        while start.elapsed() < Duration::from_secs(32) {
            target.cmd("leak 10 1000"); // (a) a steady leak, all along
            target.cmd("churn 2000"); // (c) pure churn
            if second < 3 {
                target.cmd("cache 100 1000"); // (b) a cache that fills, then stays
            }
            if second < 12 {
                target.cmd("chain 20 500"); // (d) a leak that stops when load stops
            }
            second += 1;
            let next = Duration::from_secs(second);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let report = tracer.interrupt().report.unwrap();
        assert_eq!(verdict_of(&report, "alloc_buffer"), "leak", "{report:#}");
        assert_eq!(verdict_of(&report, "make_node"), "steady", "{report:#}");
        assert_eq!(verdict_of(&report, "churn_alloc"), "churn", "{report:#}");
        assert_eq!(verdict_of(&report, "chain_12"), "steady", "{report:#}");
        let leak = stack_from(&report, "alloc_buffer");
        let per_s = leak["growth_bytes_per_s"].as_f64().unwrap();
        assert!(
            (9_000.0..11_000.0).contains(&per_s),
            "growth {per_s} B/s, expected about 10,000"
        );
        assert!(leak["growth_r2"].as_f64().unwrap() > 0.95);
    }

    #[test]
    fn min_age_counts_only_old_allocations() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::CFramePointers));
        let tracer = Tracer::attach(target.pid, &["--min-age", "2"]);
        target.cmd("leak 5 100");
        std::thread::sleep(Duration::from_secs(3));
        target.cmd("leak 7 100");
        let report = tracer.interrupt().report.unwrap();
        let stack = stack_from(&report, "alloc_buffer");
        assert_eq!(
            (num(stack, "live_bytes"), num(stack, "live_allocs")),
            (500, 5)
        );
        assert_eq!(num(stack, "total_allocs"), 12);
    }

    fn go_pprof(args: &[&str], dir: &Path) -> String {
        let out = Command::new("go")
            .args(["tool", "pprof"])
            .args(args)
            .env("HOME", dir)
            .env("GOPATH", dir.join("gopath"))
            .env("GOCACHE", dir.join("gocache"))
            .env("PPROF_TMPDIR", dir)
            .output()
            .expect("go is installed by `cargo xtask test`");
        assert!(
            out.status.success(),
            "go tool pprof: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn pprof_export_reads_in_go_tool_pprof() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        let dir = tempfile::tempdir().unwrap();
        let pid = target.pid.to_string();
        let tracer = Tracer::start_exporting("heap.pb.gz", &["-p", &pid]);
        target.cmd("leak 30 4096");
        target.cmd("churn 500");
        let done = tracer.interrupt();
        assert!(done.status.success(), "{}", done.stderr);
        assert!(done.stderr.contains("(pprof, "), "{}", done.stderr);
        let profile = dir.path().join("heap.pb.gz");
        std::fs::write(&profile, &done.export_bytes).unwrap();
        let top = go_pprof(
            &[
                "-top",
                "-nodefraction=0",
                "-sample_index=inuse_space",
                profile.to_str().unwrap(),
            ],
            dir.path(),
        );
        let line = top
            .lines()
            .find(|l| l.contains("alloc_buffer"))
            .unwrap_or_else(|| panic!("{top}"));
        assert!(
            line.contains("120KB") || line.contains("120kB"),
            "30 x 4096 B = 120 KiB expected: {line}\n{top}"
        );
        let objects = go_pprof(
            &[
                "-top",
                "-nodefraction=0",
                "-sample_index=inuse_objects",
                profile.to_str().unwrap(),
            ],
            dir.path(),
        );
        let line = objects
            .lines()
            .find(|l| l.contains("alloc_buffer"))
            .unwrap_or_else(|| panic!("{objects}"));
        assert!(line.trim_start().starts_with("30 "), "{line}");
    }

    fn snapshots(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files.sort();
        files
    }

    fn next_snapshot(dir: &Path, after: usize) -> PathBuf {
        let start = Instant::now();
        loop {
            let files = snapshots(dir);
            if files.len() > after {
                return files[files.len() - 1].clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no new snapshot in {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn snapshots_and_diff_show_a_leaks_growth_exactly() {
        require_root();
        let mut target = Fixture::start(&fixture(Build::CFramePointers));
        let dir = tempfile::tempdir().unwrap();
        let snaps = dir.path().join("snaps");
        let tracer = Tracer::attach(
            target.pid,
            &[
                "--snapshot-every",
                "1s",
                "--snapshot-dir",
                snaps.to_str().unwrap(),
                "--keep",
                "3",
            ],
        );
        // Keep copies: --keep removes the oldest snapshots as new ones arrive.
        let keep = |path: PathBuf, name: &str| {
            let copy = dir.path().join(name);
            std::fs::copy(&path, &copy).unwrap();
            copy
        };
        target.cmd("leak 10 1000");
        let before = keep(
            next_snapshot(&snaps, snapshots(&snaps).len()),
            "before.json",
        );
        target.cmd("leak 7 1000");
        let seen = snapshots(&snaps).len();
        let after = keep(next_snapshot(&snaps, seen), "after.json");
        std::thread::sleep(Duration::from_millis(3500));
        assert!(
            snapshots(&snaps).len() <= 3,
            "--keep 3: {:?}",
            snapshots(&snaps)
        );
        tracer.interrupt();
        let (status, stdout, stderr) =
            run_leaktrace(&["diff", before.to_str().unwrap(), after.to_str().unwrap()]);
        assert!(status.success(), "{stderr}");
        let line = stdout
            .lines()
            .find(|l| l.contains("alloc_buffer"))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(
            line.split_whitespace().any(|w| w == "+7000"),
            "exact growth +7000 bytes: {line}\n{stdout}"
        );
        assert!(
            line.split_whitespace().any(|w| w == "+7"),
            "7 more blocks: {line}"
        );
        let (status, _, stderr) = run_leaktrace(&["diff", before.to_str().unwrap()]);
        assert_eq!(status.code(), Some(2), "{stderr}");
    }
}

mod sampling {
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
        for (extra, returns) in [
            (None, SESSION_LINE),
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
}

mod rows {
    use super::*;

    /// The rows whose frames include `function`.
    fn rows_through<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
        report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| functions(s).iter().any(|f| f.ends_with(function)))
            .collect()
    }

    #[test]
    fn one_leaking_path_through_fifteen_call_sites_is_one_row() {
        require_root();
        // The relay's shape: 40 requests, each resolving 15 names in an unrolled loop, so the
        // one leaking path runs through 15 call instructions of one source line.
        let relay = fixture(Build::ZigRelay);
        let relay = relay.to_str().unwrap();
        let done = Tracer::start(&["--", relay, "40", "1000"]).wait();
        assert!(done.status.success(), "{}", done.stderr);
        let report = done.report.unwrap();
        assert_clean(&report);
        assert_eq!(report["group_by"], "source");

        // One row, with every byte and its 15 call sites
        let rows = rows_through(&report, "allocTlsState");
        assert_eq!(rows.len(), 1, "{report:#}");
        let row = rows[0];
        assert_eq!(
            (num(row, "live_bytes"), num(row, "live_allocs")),
            (600_000, 600)
        );
        let names = functions(row);
        assert!(
            has_subsequence(
                &names,
                &[
                    "zig_relay.allocTlsState",
                    "zig_relay.newSession",
                    "zig_relay.openConn",
                    "zig_relay.fetchDoc",
                    "zig_relay.resolve",
                    "zig_relay.serve",
                    "zig_relay.main"
                ]
            ),
            "{names:?}"
        );
        let sites = row["call_sites"].as_array().unwrap();
        assert_eq!(sites.len(), 15, "{row:#}");
        for site in sites {
            assert_eq!(
                (num(site, "live_bytes"), num(site, "live_allocs")),
                (40_000, 40),
                "{site:#}"
            );
        }
        // They differ in the return address into `serve` only, all at one source line
        let serve = names.iter().position(|n| n.ends_with("serve")).unwrap();
        let frame = &row["frames"][serve];
        assert!(
            frame["file"].as_str().unwrap().ends_with("zig_relay.zig"),
            "{frame}"
        );
        let mut addrs: Vec<&str> = sites
            .iter()
            .map(|s| s["addrs"][serve].as_str().unwrap())
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), 15, "15 distinct return addresses into serve");
        // The record leaked from one call site is a row of its own
        let records = rows_through(&report, "createSessionRecord");
        assert_eq!(records.len(), 1, "{report:#}");
        let record = records[0];
        assert_eq!(
            (num(record, "live_bytes"), num(record, "live_allocs")),
            (20_000, 40)
        );
        assert_eq!(record["call_sites"].as_array().unwrap().len(), 1);
        assert!(
            done.stdout.contains("merged from 15 call sites"),
            "{}",
            done.stdout
        );

        // And --group-by address shows the 15 stacks apart
        let raw = Tracer::start(&["--group-by", "address", "--", relay, "40", "1000"]).wait();
        let raw = raw.report.unwrap();
        assert_eq!(raw["group_by"], "address");
        let rows = rows_through(&raw, "allocTlsState");
        assert_eq!(rows.len(), 15, "{raw:#}");
        for row in rows {
            assert_eq!(num(row, "live_bytes"), 40_000);
            assert_eq!(row["call_sites"].as_array().unwrap().len(), 1);
        }
    }

    #[test]
    fn exports_hold_every_row_and_every_cut_is_counted() {
        require_root();
        // 30 distinct paths (recursions 1 to 30 deep), more than the text report's 20
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        let tracer = Tracer::attach(target.pid, &[]);
        for depth in 1..=30 {
            target.cmd(&format!("recurse {depth} 64"));
        }
        let done = tracer.interrupt();
        assert!(done.status.success(), "{}", done.stderr);
        let report = done.report.unwrap();
        let rows = report["stacks"].as_array().unwrap();
        let recursions = rows_through(&report, "recurse");
        assert_eq!(recursions.len(), 30, "every path is in the export");
        assert!(recursions.iter().all(|r| num(r, "live_bytes") == 64));
        assert_eq!(num(&report["omitted"], "rows"), 0);
        let listed: u64 = rows.iter().map(|r| num(r, "live_bytes")).sum();
        assert_eq!(listed, num(&report["totals"], "live_bytes"));
        // The text report shows 20 and says what it left out
        let more = rows.len() - 20;
        assert!(
            done.stdout
                .contains(&format!("top 20 of {} stacks", rows.len())),
            "{}",
            done.stdout
        );
        assert!(
            done.stdout
                .contains(&format!("... {more} more stacks holding")),
            "{}",
            done.stdout
        );

        // With --top, the export is cut and says what the cut rows hold
        let tracer = Tracer::attach(target.pid, &["--top", "5"]);
        for depth in 1..=8 {
            target.cmd(&format!("recurse {depth} 64"));
        }
        let done = tracer.interrupt();
        let report = done.report.unwrap();
        let rows = report["stacks"].as_array().unwrap();
        assert_eq!(rows.len(), 5);
        let omitted = &report["omitted"];
        assert!(num(omitted, "rows") >= 3, "{omitted}");
        let listed: u64 = rows.iter().map(|r| num(r, "live_bytes")).sum();
        assert_eq!(
            listed + num(omitted, "live_bytes"),
            num(&report["totals"], "live_bytes")
        );
        assert!(done.stderr.contains("(json, 5 of "), "{}", done.stderr);
    }
}

mod symbols {
    use super::*;

    /// The row of `leak 25 1000`: 25 blocks of 1000 bytes, found by its figures alone.
    fn leak_row(report: &Value) -> &Value {
        let rows: Vec<&Value> = report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| num(s, "live_bytes") == 25_000 && num(s, "live_allocs") == 25)
            .collect();
        assert_eq!(rows.len(), 1, "{report:#}");
        rows[0]
    }

    fn trace_leak(build: Build, extra: &[&str]) -> (Value, String) {
        let mut target = Fixture::start(&fixture(build));
        let tracer = Tracer::attach(target.pid, extra);
        target.cmd("leak 25 1000");
        let done = tracer.interrupt();
        assert!(done.status.success(), "{}", done.stderr);
        (done.report.unwrap(), done.stdout)
    }

    fn assert_named_with_lines(row: &Value) {
        let names = functions(row);
        assert!(
            has_subsequence(
                &names,
                &["alloc_buffer", "parse_header", "leak_request", "main"]
            ),
            "{names:?}"
        );
        let leaf = &row["frames"][0];
        assert!(
            leaf["file"].as_str().unwrap().ends_with("leaky.c"),
            "{leaf}"
        );
        assert!(leaf["line"].as_u64().is_some(), "{leaf}");
    }

    #[test]
    fn a_stripped_binary_is_named_from_its_build_id_debug_file() {
        require_root();
        let binary = fixture(Build::CStrippedBuildId);
        let id = build_id(&binary);

        // Without its debug files: the frames keep module, build id and file offset
        let (report, stdout) = trace_leak(Build::CStrippedBuildId, &[]);
        let row = leak_row(&report);
        for frame in row["frames"].as_array().unwrap().iter().take(3) {
            assert!(frame["function"].is_null(), "{frame}");
            assert!(frame["file"].is_null(), "{frame}");
            assert_eq!(frame["module"], "leaky");
            assert_eq!(frame["build_id"], id.as_str());
            assert!(
                frame["offset"].as_str().unwrap().starts_with("0x"),
                "{frame}"
            );
        }
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("  leaky: ")
                    && l.ends_with(&format!("frames, build id {id}"))),
            "the text report names the build id to look for: {stdout}"
        );
        // Stacks through different unnamed addresses stay apart
        assert_eq!(row["call_sites"].as_array().unwrap().len(), 1);

        // With --debuginfo-dir: functions and file:line
        let dir = debug_dir(Build::CStrippedBuildId);
        let (report, _) = trace_leak(
            Build::CStrippedBuildId,
            &["--debuginfo-dir", dir.to_str().unwrap()],
        );
        assert_named_with_lines(leak_row(&report));
    }

    #[test]
    fn a_debuglink_and_minidebuginfo_are_followed() {
        require_root();
        // The debug file beside the binary in .debug/, named by .gnu_debuglink: no flag needed
        let (report, _) = trace_leak(Build::CStrippedDebugLink, &[]);
        assert_named_with_lines(leak_row(&report));

        // MiniDebugInfo: names from the compressed symbol table, no lines
        let (report, _) = trace_leak(Build::CMiniDebugInfo, &[]);
        let row = leak_row(&report);
        let names = functions(row);
        assert!(
            has_subsequence(
                &names,
                &["alloc_buffer", "parse_header", "leak_request", "main"]
            ),
            "{names:?}"
        );
        assert!(row["frames"][0]["file"].is_null(), "{row:#}");
    }

    #[test]
    fn a_missing_debuginfo_dir_is_refused() {
        require_root();
        let (status, _, stderr) =
            run_leaktrace(&["--debuginfo-dir", "/nonexistent/debug", "-p", "1"]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--debuginfo-dir"), "{stderr}");
    }

    #[test]
    fn a_library_unloaded_and_another_loaded_in_its_place_keep_their_own_names() {
        require_root();
        let alpha = fixture(Build::Plugin);
        let beta = fixture(Build::PluginBeta);
        let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
        let tracer = Tracer::attach(target.pid, &[]);
        let loaded_alpha = target.cmd(&format!("dlopen {}", alpha.display()));
        tracer.wait_for_stderr("libplugin.so", Duration::from_secs(5));
        target.cmd("plugin 3 64");
        // leaktrace names a stack from the library mapped when it read the stack's first event
        // (within ~10 ms of it): let it read these before the library goes.
        tracer.wait_for_next_status();
        target.cmd("dlclose");
        let loaded_beta = target.cmd(&format!("dlopen {}", beta.display()));
        tracer.wait_for_stderr("libplugin_beta.so", Duration::from_secs(5));
        target.cmd("plugin 5 96");
        assert_eq!(
            loaded_alpha, loaded_beta,
            "the second library must be loaded where the first was"
        );
        let report = tracer.interrupt().report.unwrap();

        // The blocks the unloaded library left are named from it, the new ones from the new
        let alpha_row = stack_from(&report, "plugin_make");
        assert_eq!(
            (num(alpha_row, "live_bytes"), num(alpha_row, "live_allocs")),
            (192, 3)
        );
        assert_eq!(alpha_row["frames"][0]["module"], "libplugin.so");
        let beta_row = stack_from(&report, "beta_make");
        assert_eq!(
            (num(beta_row, "live_bytes"), num(beta_row, "live_allocs")),
            (480, 5)
        );
        assert_eq!(beta_row["frames"][0]["module"], "libplugin_beta.so");
        for row in [alpha_row, beta_row] {
            assert!(
                has_subsequence(
                    &functions(row),
                    &["plugin_alloc", "call_plugin", "run", "main"]
                ),
                "{row:#}"
            );
        }
    }
}
