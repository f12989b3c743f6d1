//! The HTML report, opened in headless Chromium and checked the way a person looks at it: the
//! leak's frame is the widest of its level, its line climbs while the cache's stays flat, a
//! click on a row zooms the flame graph to its stack, and the page reports no error. The
//! screenshots are kept in target/test-artifacts.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use leaktrace_tests::{browser::Browser, workspace};

use super::*;

/// Where screenshots are kept.
fn artifact(name: &str) -> PathBuf {
    let dir = workspace().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Opens `page` in the browser, 1300 pixels wide.
fn open(page: &Path) -> Browser {
    Browser::open(&format!("file://{}", page.display()), 1300, 1000)
}

/// The first flame graph node of the frame named `label`.
fn node(browser: &mut Browser, label: &str) -> i64 {
    browser
        .eval(&format!(
            "window.leaktrace.label.findIndex((l) => l === {label:?})"
        ))
        .as_i64()
        .unwrap()
}

/// Drives the fixture for `seconds`: every second a leak of 10 x 4,096 bytes and churn, and in
/// the first two seconds a cache of 2 x 100 x 1,000 bytes that then stays.
fn leak_and_cache(target: &mut Fixture, seconds: u64) {
    let start = Instant::now();
    for second in 0..seconds {
        target.cmd("leak 10 4096");
        target.cmd("churn 300");
        if second < 2 {
            target.cmd("cache 100 1000");
        }
        if let Some(wait) = Duration::from_secs(second + 1).checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

#[test]
fn html_report_in_a_browser_shows_the_leak_widest_climbing_and_zooms_on_a_row_click() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let pid = target.pid.to_string();
    let tracer = Tracer::start_exporting("report.html", &["-p", &pid, "--window", "10"]);
    leak_and_cache(&mut target, 12);
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stderr.contains("(html, "), "{}", done.stderr);
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, &done.export_bytes).unwrap();
    let html = String::from_utf8(done.export_bytes).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        !html.contains("src=\"http") && !html.contains("<link"),
        "the page loads nothing from elsewhere"
    );

    let mut browser = open(&page);
    browser.screenshot(&artifact("html-report.png"));

    // The header names the target
    let header = browser.eval("document.getElementById('run').innerText");
    assert!(
        header.as_str().unwrap().contains(&format!("pid {pid}")),
        "{header}"
    );

    // The leak's frame holds exactly its bytes, and is the widest of its level
    let leak = node(&mut browser, "leak_request");
    let cache = node(&mut browser, "cache_insert");
    assert!(leak > 0 && cache > 0, "frames: leak {leak}, cache {cache}");
    let bytes = browser.eval(&format!("window.leaktrace.value[{leak}]"));
    assert_eq!(bytes.as_f64(), Some(12.0 * 10.0 * 4096.0), "leak bytes");
    let widths = browser.eval(&format!(
        "(() => {{
            const p = window.leaktrace.parent[{leak}];
            return [...document.querySelectorAll('#flame .node')]
              .filter((el) => window.leaktrace.parent[Number(el.dataset.node)] === p
                              && Number(el.dataset.node) !== p)
              .map((el) => [Number(el.dataset.node), el.getBoundingClientRect().width]);
        }})()"
    ));
    let widths: Vec<(i64, f64)> = widths
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w[0].as_i64().unwrap(), w[1].as_f64().unwrap()))
        .collect();
    let widest = widths.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(widest.0, leak, "widest of its level: {widths:?}");
    assert!(
        widths.iter().any(|(n, _)| *n == cache),
        "the cache is drawn beside it: {widths:?}"
    );

    // The chart: the leak's line climbs on screen, the cache's stays flat once filled
    let lines = browser.eval(
        "[...document.querySelectorAll('#chart polyline')].map((p) => [
            window.leaktrace.label[window.leaktrace.data.rows[Number(p.dataset.row)][0]],
            [...p.points].map((pt) => pt.y)])",
    );
    let line = |name: &str| -> Vec<f64> {
        let found = lines
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l[0] == name)
            .unwrap_or_else(|| panic!("no line for {name}: {lines}"));
        found[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|y| y.as_f64().unwrap())
            .collect()
    };
    let leak_line = line("alloc_buffer");
    let cache_line = line("make_node");
    assert!(leak_line.len() >= 8, "{leak_line:?}");
    // Screen y grows downwards: climbing is y falling, by most of the chart's height
    let rise = leak_line[0] - leak_line[leak_line.len() - 1];
    assert!(rise > 150.0, "the leak climbs {rise} px: {leak_line:?}");
    assert!(
        leak_line.windows(2).all(|w| w[1] <= w[0] + 0.5),
        "the leak never falls: {leak_line:?}"
    );
    let settled = &cache_line[cache_line.len() / 2..];
    let spread = settled.iter().copied().fold(f64::MIN, f64::max)
        - settled.iter().copied().fold(f64::MAX, f64::min);
    assert!(
        spread < 0.5,
        "the cache is flat once filled: {cache_line:?}"
    );

    // Clicking the cache's row in the table zooms the flame graph to its stack
    let make_node = node(&mut browser, "make_node");
    let at = browser.eval(
        "(() => {
            const row = [...document.querySelectorAll('#rows tbody tr')]
              .find((tr) => tr.lastElementChild.textContent === 'make_node');
            row.scrollIntoView({block: 'center'});
            const r = row.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        })()",
    );
    browser.click(at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
    assert_eq!(
        browser.eval("window.leaktrace.zoomed").as_i64(),
        Some(make_node),
        "the click zoomed to the row's innermost frame"
    );
    let zoomed = browser.eval(&format!(
        "(() => {{
            const flame = document.getElementById('flame').getBoundingClientRect().width;
            const el = document.querySelector('#flame .node[data-node=\"{make_node}\"]');
            const leak = document.querySelector('#flame .node[data-node=\"{leak}\"]');
            return [el.getBoundingClientRect().width / flame, leak === null];
        }})()"
    ));
    assert!(
        zoomed[0].as_f64().unwrap() > 0.98,
        "the row's frame spans the flame graph: {zoomed}"
    );
    assert_eq!(
        zoomed[1],
        serde_json::json!(true),
        "the leak is out of view"
    );
    browser.screenshot(&artifact("html-report-zoomed.png"));

    // Sorting by a column reorders the rows
    let first = browser.eval(
        "(() => {
            [...document.querySelectorAll('#rows th')].find((th) => th.textContent === 'blocks').click();
            return document.querySelector('#rows tbody tr').lastElementChild.textContent;
        })()",
    );
    // Descending blocks: the cache's 200 blocks beat the leak's 120
    assert_eq!(first, serde_json::json!("make_node"));

    let errors = browser.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:?}");
}

#[test]
fn report_from_snapshots_charts_the_exact_bytes_of_each() {
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
        ],
    );
    let snapshots = || -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&snaps)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files.sort();
        files
    };
    let wait_for_more = |seen: usize| {
        let start = Instant::now();
        while snapshots().len() <= seen {
            assert!(start.elapsed() < Duration::from_secs(10), "no new snapshot");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Three snapshots after 5, 12 and 20 blocks of 1,000 bytes
    let mut chosen = Vec::new();
    for leak in ["leak 5 1000", "leak 7 1000", "leak 8 1000"] {
        target.cmd(leak);
        let seen = snapshots().len();
        wait_for_more(seen);
        let path = snapshots().pop().unwrap();
        let copy = dir.path().join(format!("snap{}.json", chosen.len()));
        std::fs::copy(&path, &copy).unwrap();
        chosen.push(copy);
    }
    tracer.interrupt();
    let out = dir.path().join("series.html");
    let mut args = vec!["report"];
    args.extend(chosen.iter().map(|p| p.to_str().unwrap()));
    args.extend(["-o", out.to_str().unwrap()]);
    let (status, _, stderr) = run_leaktrace(&args);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("from 3 exports"), "{stderr}");

    let mut browser = open(&out);
    browser.screenshot(&artifact("html-report-series.png"));
    let chart = browser.eval(
        "(() => {
            const d = window.leaktrace.data;
            const s = d.chart.series.find((s) => window.leaktrace.label[d.rows[s.row][0]] === 'alloc_buffer');
            return [d.chart.x_label, s.points.map((p) => p[1]), document.querySelectorAll('#chart polyline').length];
        })()",
    );
    assert_eq!(chart[0], "seconds since attach");
    assert_eq!(chart[1], serde_json::json!([5000, 12000, 20000]));
    assert!(chart[2].as_u64().unwrap() >= 1);
    assert!(browser.errors().is_empty());

    // Bad input: one line and exit code 2
    let missing = dir.path().join("missing.json");
    let (status, _, stderr) = run_leaktrace(&[
        "report",
        missing.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let (status, _, stderr) =
        run_leaktrace(&["report", out.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(
        status.code(),
        Some(2),
        "an HTML file is not an export: {stderr}"
    );
}

#[test]
fn a_report_of_ten_thousand_rows_opens_and_answers_quickly() {
    // A JSON export of 10,000 rows, each a distinct path of 24 frames (the last 14 shared, the
    // first 10 branching), as `leaktrace report` reads it
    let dir = tempfile::tempdir().unwrap();
    let stacks: Vec<Value> = (0..10_000u64)
        .map(|i| {
            let frames: Vec<Value> = (0..24u64)
                .map(|level| {
                    let name = if level < 10 {
                        format!("branch_{level}_{}", (i >> (level + 4)) & 1)
                    } else {
                        format!("outer_{level}")
                    };
                    serde_json::json!({"function": name, "module": "/usr/bin/server"})
                })
                .collect();
            let mut frames = frames;
            frames[0] =
                serde_json::json!({"function": format!("leaf_{i}"), "module": "/usr/bin/server"});
            serde_json::json!({"live_bytes": 64 + i, "live_allocs": 1, "total_allocs": 1,
                               "verdict": if i % 10 == 0 { "leak" } else { "steady" },
                               "frames": frames})
        })
        .collect();
    let export = serde_json::json!({"pid": 7, "command": "server", "duration_s": 60.0,
                                    "totals": {"live_bytes": 1, "live_allocs": 10000},
                                    "stacks": stacks});
    let json = dir.path().join("big.json");
    std::fs::write(&json, serde_json::to_vec(&export).unwrap()).unwrap();
    let out = dir.path().join("big.html");
    let (status, _, stderr) = run_leaktrace(&[
        "report",
        json.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size < 1_500_000, "{size} bytes for 10,000 rows");

    let mut browser = open(&out);
    let timings = browser.eval(
        "(() => {
            const nav = performance.getEntriesByType('navigation')[0];
            const rows = document.querySelectorAll('#rows tbody tr').length;
            let t = performance.now();
            [...document.querySelectorAll('#rows th')].find((th) => th.textContent === 'live').click();
            const sort = performance.now() - t;
            const first = document.querySelector('#rows tbody tr');
            t = performance.now();
            first.click();
            const zoom = performance.now() - t;
            t = performance.now();
            const box = document.getElementById('search');
            box.value = 'leaf_999';
            box.dispatchEvent(new Event('input'));
            const search = performance.now() - t;
            const more = document.getElementById('more');
            const offered = more.textContent;
            more.click();
            return [nav.loadEventEnd, rows, sort, zoom, search,
                    window.leaktrace.label[window.leaktrace.zoomed],
                    document.getElementById('matched').textContent, offered,
                    document.querySelectorAll('#rows tbody tr').length];
        })()",
    );
    browser.screenshot(&artifact("html-report-10000-rows.png"));
    let ms = |i: usize| timings[i].as_f64().unwrap();
    // The table draws 500 rows at a time and says how many there are
    assert_eq!(timings[1], 500, "{timings}");
    assert_eq!(timings[7], "500 of 10,000 rows shown: show 500 more");
    assert_eq!(timings[8], 1000, "{timings}");
    // Sorted by live bytes, descending: the last row (most bytes) first, and a click zooms to it
    assert_eq!(timings[5], "leaf_9999");
    assert!(
        timings[6].as_str().unwrap().starts_with("11 frames match"),
        "leaf_999 and leaf_9990..9999: {timings}"
    );
    for (what, i, limit) in [
        ("load", 0, 2000.0),
        ("sort", 2, 500.0),
        ("zoom", 3, 500.0),
        ("search", 4, 500.0),
    ] {
        assert!(
            ms(i) < limit,
            "{what} took {} ms (limit {limit}): {timings}",
            ms(i)
        );
    }
    eprintln!(
        "10,000 rows: {size} bytes; load {:.0} ms, sort {:.0} ms, zoom {:.0} ms, search {:.0} ms",
        ms(0),
        ms(2),
        ms(3),
        ms(4)
    );
    assert!(browser.errors().is_empty());
}
