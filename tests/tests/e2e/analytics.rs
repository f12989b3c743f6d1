//! Verdicts, --min-age, pprof, snapshots and diff.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use leaktrace_tests::go_pprof;

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

#[test]
fn svg_export_is_a_flame_graph_of_the_exact_live_bytes() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let pid = target.pid.to_string();
    let tracer = Tracer::start_exporting("heap.svg", &["-p", &pid]);
    target.cmd("leak 30 4096");
    target.cmd("churn 500");
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stderr.contains("(svg, "), "{}", done.stderr);
    let svg = String::from_utf8(done.export_bytes).unwrap();
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(&format!("live heap of pid {pid}")), "no title");
    // The leak's frames are as wide as its 30 x 4096 bytes, all the way to main; the churn,
    // which holds nothing, is not drawn
    for function in ["alloc_buffer", "parse_header", "leak_request"] {
        assert!(
            svg.contains(&format!("<title>{function} (122,880 bytes,")),
            "{function} is not 122,880 bytes wide"
        );
    }
    assert!(
        !svg.contains("churn_alloc"),
        "a frame holding nothing is drawn"
    );
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
