//! The live view, driven in tmux as a person would.
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

    // h: the same view as an HTML report, its rows in the page's data
    tmux.keys(&["h"]);
    let written = tmux.wait_for("the HTML message", |s| s.contains(".html"));
    let path = written
        .split_whitespace()
        .find(|w| w.contains("leaktrace-") && w.ends_with(".html"))
        .unwrap_or_else(|| panic!("no HTML path on screen:\n{written}"));
    let page = std::fs::read_to_string(path).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"), "{path}");
    let start = page.find("id=\"data\">").unwrap() + "id=\"data\">".len();
    let end = start + page[start..].find("</script>").unwrap();
    let data: Value = serde_json::from_str(&page[start..end]).unwrap();
    let rows = data["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        export["stacks"].as_array().unwrap().len(),
        "the same rows as the export"
    );
    assert!(
        rows.iter().any(|r| r[1] == 43_000),
        "the leak's 43,000 bytes: {rows:?}"
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

#[test]
fn every_stack_is_counted_and_a_filter_finds_one_from_far_below_the_first_screen() {
    require_root();
    // 4,096 distinct call paths, 64 B each, and one path of 24 B that ranks below all of them
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::leaktrace("lt-many", target.pid, dir.path());
    target.cmd("paths 12 64");
    target.cmd("rare 24");

    // The title counts every row, and says which are on screen
    let screen = tmux.wait_for("every path counted", |s| {
        s.lines()
            .any(|l| l.contains(" stacks · 1–") && l.contains("on screen"))
            && s.contains("path_leaf")
    });
    let counted: usize = title_count(&screen);
    assert!(counted > 4096, "{screen}");

    // A filter for a function only the last row has finds it, with its exact bytes
    tmux.keys(&["/", "r", "a", "r", "e", "_", "p", "Enter"]);
    let filtered = tmux.wait_for("the rare row", |s| {
        s.contains("rare_path") && s.contains("/rare_p") && !s.contains("path_leaf")
    });
    assert!(
        filtered.contains(&format!(
            " 1 of {} stacks match /rare_p ",
            thousands(counted)
        )),
        "{filtered}"
    );
    let row = filtered
        .lines()
        .find(|l| l.contains("rare_path"))
        .unwrap_or_else(|| panic!("no rare_path row:\n{filtered}"));
    // (the selected row starts with `>`)
    let live = row.trim_start_matches(|c: char| c == '>' || c.is_whitespace());
    assert!(live.starts_with("24 B "), "{row}");
    // Grouping by allocating function (`g`; one process, so no call paths merged across
    // processes) takes in every stack: path_leaf holds all 4,096
    tmux.keys(&["Escape", "g"]);
    let grouped = tmux.wait_for("rows by allocating function", |s| {
        s.contains("allocating functions of")
    });
    let leaf = grouped
        .lines()
        .find(|l| l.contains("path_leaf"))
        .unwrap_or_else(|| panic!("no path_leaf row:\n{grouped}"));
    assert!(
        leaf.contains("256.0 KiB") && leaf.contains("4,096 stacks"),
        "{leaf}"
    );

    tmux.keys(&["q"]);
    assert_eq!(wait_for_file(&dir.path().join("exit")).trim(), "0");
    let report: Value =
        serde_json::from_str(&wait_for_file(&dir.path().join("final.json"))).unwrap();
    // The header counted every row the export has
    assert_eq!(report["stacks"].as_array().unwrap().len(), counted);
    assert_eq!(num(stack_from(&report, "rare_path"), "live_bytes"), 24);
    assert_eq!(stacks_from(&report, "path_leaf").len(), 4096);
    for row in stacks_from(&report, "path_leaf") {
        assert_eq!((num(row, "live_bytes"), num(row, "live_allocs")), (64, 1));
    }
    assert_eq!(num(&report["totals"], "lost_events"), 0);
    assert_eq!(num(&report["diagnostics"], "stack_map_full"), 0);
}

/// The row count at the start of the table's title (`4,099 stacks · 1–30 on screen`).
fn title_count(screen: &str) -> usize {
    let line = screen
        .lines()
        .find(|l| l.contains(" stacks · 1–"))
        .unwrap_or_else(|| panic!("no table title:\n{screen}"));
    let before = line.split(" stacks · 1–").next().unwrap();
    let number: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .collect::<String>()
        .chars()
        .rev()
        .filter(char::is_ascii_digit)
        .collect();
    number.parse().unwrap()
}

/// `4,096` for 4096.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}
