//! Go programs: the heap read from the Go runtime's own profile, with no probes, compared with
//! what the program's own `runtime/pprof` says at the same moment.
use std::path::Path;

use leaktrace_tests::{GoBuild, GoVersion, go_pprof, pprof_flat};

use super::*;

/// Sessions of 4 KiB each the fixture adds before it is traced: 16 MiB, about 31 samples at
/// Go's default rate.
const SESSIONS: u64 = 4000;
const SESSION_BYTES: u64 = 4096;

/// Starts a Go fixture that has grown its map by `SESSIONS` and stopped churning, with its
/// churn freed in its published profile.
fn grown(build: Build) -> Fixture {
    let mut target = Fixture::start(&fixture(build));
    target.cmd(&format!("grow {SESSIONS} {SESSION_BYTES}"));
    // A second of churn (about 50 MB in 32 KiB buffers: a hundred samples)
    std::thread::sleep(std::time::Duration::from_secs(1));
    target.cmd("quiet");
    target
}

/// Attaches to `pid` with the heap read every half second and waits for two reads.
fn traced(pid: u32, export: &str, extra: &[&str]) -> Tracer {
    let pid = pid.to_string();
    let mut args = vec!["-p", pid.as_str(), "--interval", "0.5"];
    args.extend_from_slice(extra);
    let tracer = Tracer::start_exporting(export, &args);
    tracer.wait_for_next_status();
    tracer.wait_for_next_status();
    tracer
}

/// `inuse_space` by function of a profile, as `go tool pprof -top` shows it.
fn inuse(profile: &Path, base: Option<&Path>, dir: &Path) -> Vec<(i64, String)> {
    let mut args = vec![
        "-top",
        "-nodefraction=0",
        "-sample_index=inuse_space",
        "-unit=B",
    ];
    if let Some(base) = base {
        args.push("-base");
        args.push(base.to_str().unwrap());
    }
    args.push(profile.to_str().unwrap());
    pprof_flat(&go_pprof(&args, dir))
}

fn flat_of(top: &[(i64, String)], function: &str) -> i64 {
    top.iter()
        .find(|(_, name)| name == function)
        .map(|(bytes, _)| *bytes)
        .unwrap_or_else(|| panic!("{function} not in {top:?}"))
}

fn close(a: u64, b: u64, within: f64) -> bool {
    (a as f64 - b as f64).abs() <= within * b.max(1) as f64
}

/// The Go fixture's leak: the inlined allocation in its map-filling function.
fn assert_session_stack(report: &Value) -> &Value {
    let stack = &report["stacks"][0];
    let names = functions(stack);
    // (called from main, or from the goroutine `trickle` starts there)
    assert_eq!(
        names.get(..2),
        Some(&["main.newSessionValue", "main.rememberSession"].map(String::from)[..]),
        "{stack:#}"
    );
    assert!(
        names.get(2).is_some_and(|n| n.starts_with("main.main")),
        "{stack:#}"
    );
    let frames = stack["frames"].as_array().unwrap();
    assert_eq!(frames[0]["inlined"], true, "{stack:#}");
    assert!(
        frames[0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("go_leak/main.go"))
            && frames[0]["line"].as_u64().is_some_and(|l| l > 0),
        "{stack:#}"
    );
    assert_eq!(stack["allocator"], "go");
    stack
}

#[test]
fn a_go_heap_agrees_with_the_programs_own_profile_on_debian_go_and_the_newest() {
    require_root();
    for version in [GoVersion::Debian, GoVersion::Newest] {
        // Given a Go service that never imported net/http/pprof, its map grown by 16 MiB
        let mut target = grown(Build::Go(version, GoBuild::Plain));
        let dir = tempfile::tempdir().unwrap();

        // When leaktrace reads its heap, and the program dumps its own profile at that moment
        let tracer = traced(target.pid, "heap.json", &[]);
        let own = dir.path().join("own.pb.gz");
        assert_eq!(
            target.cmd(&format!("profile {}", own.display())),
            "ok written"
        );
        let done = tracer.interrupt();
        assert!(done.status.success(), "{}", done.stderr);
        let report = done.report.unwrap();

        // Then it said what it reads, and that the figures are estimates
        let go = if version == GoVersion::Debian {
            "go1.19"
        } else {
            "go1."
        };
        assert!(
            done.stderr
                .contains(&format!("through the Go runtime's heap profile ({go}")),
            "{}",
            done.stderr
        );
        assert!(done.stderr.contains("runtime.MemProfileRate is 524288"));
        let estimate = &report["estimates"][0];
        assert_eq!(estimate["allocator"], "go");
        assert_eq!(num(estimate, "sample_bytes"), 524_288);
        assert!(done.stdout.contains("rows labelled (go) come from"));

        // and the top row is the map's values, named as go tool pprof names them, holding
        // what the program's own profile says (the same samples, scaled the same way)
        let stack = assert_session_stack(&report);
        let own_top = inuse(&own, None, dir.path());
        assert_eq!(own_top[0].1, "main.newSessionValue", "{own_top:?}");
        let own_bytes = u64::try_from(own_top[0].0).unwrap();
        assert!(
            close(num(stack, "live_bytes"), own_bytes, 0.02),
            "{version:?}: leaktrace {} vs own profile {own_bytes}",
            num(stack, "live_bytes")
        );
        // which estimates the truth within sampling error
        let truth = SESSIONS * SESSION_BYTES;
        assert!(close(num(stack, "live_bytes"), truth, 0.6), "{stack:#}");

        // and the churn, all freed, holds nothing though it allocated much
        let churn = stack_from(&report, "main.churn");
        assert_eq!(num(churn, "live_bytes"), 0, "{churn:#}");
        assert!(num(churn, "total_bytes") > 1 << 20, "{churn:#}");

        // and `go tool pprof -base` subtracts the program's own profile from a leaktrace
        // export of the same moment: nothing left at the map
        let tracer = traced(target.pid, "heap.pb.gz", &[]);
        let exported = tracer.interrupt();
        let ours = dir.path().join("ours.pb.gz");
        std::fs::write(&ours, &exported.export_bytes).unwrap();
        let ours_top = inuse(&ours, None, dir.path());
        assert_eq!(ours_top[0].1, "main.newSessionValue", "{ours_top:?}");
        let diff = inuse(&ours, Some(&own), dir.path());
        let left = diff
            .iter()
            .find(|(_, name)| name == "main.newSessionValue")
            .map_or(0, |(bytes, _)| *bytes);
        assert!(
            left.unsigned_abs() <= own_bytes / 50,
            "{version:?}: -base left {left} of {own_bytes}: {diff:?}"
        );
    }
}

#[test]
fn a_map_that_grows_forever_is_a_leak_and_pprof_base_shows_its_growth() {
    require_root();
    // Given a Go service adding 8 sessions of 4 KiB every 10 ms, for good
    let mut target = Fixture::start(&fixture(Build::Go(GoVersion::Newest, GoBuild::Plain)));
    target.cmd("trickle 8 4096 10");
    let pid = target.pid.to_string();
    let dir = tempfile::tempdir().unwrap();

    // When it is traced three times: a pprof export, a run long enough for --window, another
    // pprof export
    let export = |name: &str, seconds: &str| {
        let done =
            Tracer::start_exporting(name, &["-p", &pid, "-d", seconds, "--interval", "0.5"]).wait();
        assert!(done.status.success(), "{}", done.stderr);
        let path = dir.path().join(name);
        std::fs::write(&path, &done.export_bytes).unwrap();
        path
    };
    let before = export("before.pb.gz", "2");
    let windowed = Tracer::attach(
        target.pid,
        &["-d", "8", "--window", "4", "--interval", "0.5"],
    )
    .wait();
    let after = export("after.pb.gz", "2");

    // Then the map's row is a leak
    let report = windowed.report.unwrap();
    let stack = assert_session_stack(&report);
    assert_eq!(stack["verdict"], "leak", "{stack:#}");
    assert!(
        stack["growth_bytes_per_s"]
            .as_f64()
            .is_some_and(|g| g > 1e6),
        "{stack:#}"
    );

    // and go tool pprof -top -base shows the map's growth between the two exports: about
    // 3.2 MB/s over the 10 s or more between them
    let diff = inuse(&after, Some(&before), dir.path());
    assert_eq!(diff[0].1, "main.newSessionValue", "{diff:?}");
    assert!(
        flat_of(&diff, "main.newSessionValue") > 16 << 20,
        "{diff:?}"
    );
}

#[test]
fn stripped_go_binaries_are_read_and_named_from_their_own_tables() {
    require_root();
    for version in [GoVersion::Debian, GoVersion::Newest] {
        // Given a Go service built with -ldflags="-s -w": no symbol table, no DWARF
        let mut target = grown(Build::Go(version, GoBuild::Stripped));
        let dir = tempfile::tempdir().unwrap();

        // When traced
        let tracer = traced(target.pid, "heap.json", &[]);
        let own = dir.path().join("own.pb.gz");
        target.cmd(&format!("profile {}", own.display()));
        let done = tracer.interrupt();
        assert!(done.status.success(), "{}", done.stderr);

        // Then its runtime's variables were found in its code (the rate read is Go's default),
        // and its frames named from .gopclntab, inlined calls expanded as go tool pprof does
        assert!(
            done.stderr.contains(
                "runtime.MemProfileRate is 524288 (a stripped binary: its runtime variables \
                 found by code)"
            ),
            "{}",
            done.stderr
        );
        assert!(done.stderr.contains("its Go symbol table (.gopclntab)"));
        let report = done.report.unwrap();
        let stack = assert_session_stack(&report);
        let own_top = inuse(&own, None, dir.path());
        let own_bytes = u64::try_from(flat_of(&own_top, "main.newSessionValue")).unwrap();
        assert!(
            close(num(stack, "live_bytes"), own_bytes, 0.02),
            "{version:?}: {} vs {own_bytes}",
            num(stack, "live_bytes")
        );
    }
}

#[test]
fn memory_profiling_off_is_said_and_the_rate_flag_turns_it_on() {
    require_root();
    // Given a Go service that links nothing of runtime/pprof: its linker turned profiling off
    let mut target = Fixture::start(&fixture(Build::Go(GoVersion::Newest, GoBuild::NoProfiling)));
    let pid = target.pid.to_string();

    // When traced as is: one line that says so, with the way out, and exit code 2
    let (status, _, stderr) = run_leaktrace(&["-p", &pid, "--no-tui", "-d", "1"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("memory profiling off") && stderr.contains("--go-memprofile-rate"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));

    // When asked to turn it on: it says what it wrote, and what is allocated from then on is
    // seen (at a 4 KiB rate, nearly every 4 KiB session is a sample)
    let tracer = Tracer::attach(
        target.pid,
        &["--go-memprofile-rate", "4096", "--interval", "0.5"],
    );
    assert!(
        tracer
            .stderr()
            .contains("wrote runtime.MemProfileRate = 4096 into the process (was 0)"),
        "{}",
        tracer.stderr()
    );
    target.cmd("grow 1000 4096");
    target.cmd("quiet");
    tracer.wait_for_next_status();
    tracer.wait_for_next_status();
    let report = tracer.interrupt().report.unwrap();
    assert_eq!(num(&report["estimates"][0], "sample_bytes"), 4096);
    let stack = assert_session_stack(&report);
    assert!(
        close(num(stack, "live_bytes"), 1000 * 4096, 0.15),
        "{stack:#}"
    );
}

#[test]
fn a_cgo_program_shows_its_c_mallocs_and_its_go_heap_each_labelled() {
    require_root();
    // Given a Go service that also leaks through C malloc (cgo)
    let mut target = Fixture::start(&fixture(Build::Go(GoVersion::Debian, GoBuild::Cgo)));
    target.cmd("grow 2000 4096");
    let tracer = traced(target.pid, "heap.json", &[]);

    // When it leaks 300 blocks of 1000 bytes in C
    assert_eq!(target.cmd("cgo 300 1000"), "ok leaked");
    target.cmd("quiet");
    tracer.wait_for_next_status();
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);

    // Then both sources ran, mmap was left to the Go heap's reading
    assert!(
        done.stderr.contains("and the Go runtime's heap profile"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("not probed: mmap"), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_clean(&report);

    // and the C leak is exact, labelled glibc, and the Go heap is there, labelled go
    let c = stack_from(&report, "c_remember");
    assert_eq!(
        (num(c, "live_bytes"), num(c, "live_allocs")),
        (300_000, 300),
        "{c:#}"
    );
    assert_eq!(c["allocator"], "glibc");
    assert_session_stack(&report);
}
