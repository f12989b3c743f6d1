//! `leaktrace diff BEFORE AFTER`: what grew between two JSON exports.
//!
//! [`load`] reads the contract fields of a JSON export ([`crate::report`]) and ignores the rest,
//! so exports from newer or older leaktrace versions load as long as those fields are there.
//! [`diff`] matches rows between the two the way a trace makes rows ([`crate::report::grouping`]):
//! by their symbolized frames, not their addresses (ASLR moves code between runs). Each frame
//! is its function name, the file name of its module and its source file and line where known,
//! or, when the function is unknown, its module and file offset ([`FrameKey`]). Rows with the
//! same key on one side (exports written with `--group-by address`) are added together, and a
//! row found on one side only counts as 0 on the other. [`write_text`] prints the result.
//!
//! Two caveats the text output gives: an export cut with `--top` leaves rows out (it says how
//! many in `omitted`, and so does the diff), so a row missing from one side may merely have been
//! below that side's cut; and the time between the exports, hence a growth rate, is only known
//! when both come from one trace of one process (same pid, `duration_s` counted from the same
//! attach).
//!
//! For pprof exports, `go tool pprof -top -base before.pb.gz after.pb.gz` gives the same
//! comparison by function.
#![warn(missing_docs)]

use std::{
    collections::HashMap,
    io::{self, Write},
};

pub use super::read::{DiffError, FileFrame, FileOmitted, FileStack, FileTotals, ReportFile, load};
use crate::{
    export::{human_bytes, signed_bytes},
    report::grouping::FrameKey,
};

/// Frames shown per stack in [`write_text`].
pub const SHOWN_FRAMES: usize = 4;

impl ReportFile {
    /// What [`write_text`] shows of this export, under `name` (its path, usually).
    pub fn meta(&self, name: impl Into<String>) -> Meta {
        Meta {
            name: name.into(),
            pid: self.pid,
            command: self.command.clone(),
            duration_s: self.duration_s,
            live_bytes: self.totals.live_bytes,
            live_allocs: self.totals.live_allocs,
            omitted: self.omitted,
        }
    }
}

/// One side of a diff as [`write_text`] describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    /// How the export is named to the user (its path).
    pub name: String,
    /// The traced process.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// Seconds traced.
    pub duration_s: f64,
    /// Process-wide live bytes.
    pub live_bytes: u64,
    /// Process-wide live blocks.
    pub live_allocs: u64,
    /// Rows the export left out.
    pub omitted: FileOmitted,
}

/// How one stack changed between two exports.
#[derive(Clone, Debug, PartialEq)]
pub struct StackDelta {
    /// The stack's frames as matched, innermost first.
    pub frames: Vec<FrameKey>,
    /// Live bytes before (0 when the stack is not in the first export).
    pub live_bytes_before: u64,
    /// Live bytes after (0 when the stack is not in the second export).
    pub live_bytes_after: u64,
    /// `live_bytes_after - live_bytes_before`.
    pub delta_bytes: i64,
    /// Live blocks before.
    pub live_allocs_before: u64,
    /// Live blocks after.
    pub live_allocs_after: u64,
    /// `live_allocs_after - live_allocs_before`.
    pub delta_allocs: i64,
    /// Seconds between the exports: `after.duration_s - before.duration_s` when both have the
    /// same pid and the difference is positive, else `None`.
    pub elapsed_s: Option<f64>,
    /// `delta_bytes / elapsed_s`, when the elapsed time is known.
    pub growth_bytes_per_s: Option<f64>,
}

impl StackDelta {
    /// The first `n` frames joined innermost first (`a <- b <- c <- ...`).
    pub fn summary(&self, n: usize) -> String {
        let mut parts: Vec<String> = self
            .frames
            .iter()
            .take(n)
            .map(ToString::to_string)
            .collect();
        if self.frames.len() > n {
            parts.push("...".to_owned());
        }
        if parts.is_empty() {
            return "(no stack recorded)".to_owned();
        }
        parts.join(" <- ")
    }
}

/// Seconds between two exports of one trace: `after.duration_s - before.duration_s` when the
/// pids match and the difference is positive.
pub fn elapsed_s(before: &ReportFile, after: &ReportFile) -> Option<f64> {
    elapsed(
        (before.pid, before.duration_s),
        (after.pid, after.duration_s),
    )
}

fn elapsed((pid_before, s_before): (u32, f64), (pid_after, s_after): (u32, f64)) -> Option<f64> {
    let elapsed = s_after - s_before;
    (pid_before == pid_after && elapsed > 0.0).then_some(elapsed)
}

/// Every stack of either export with its change, sorted by `delta_bytes` descending (then by
/// bytes after, descending, then by frames).
pub fn diff(before: &ReportFile, after: &ReportFile) -> Vec<StackDelta> {
    #[derive(Default)]
    struct Sides {
        bytes: [u64; 2],
        allocs: [u64; 2],
    }
    let mut by_key: HashMap<Vec<FrameKey>, Sides> = HashMap::new();
    for (side, report) in [before, after].into_iter().enumerate() {
        for stack in &report.stacks {
            let key = stack.frames.iter().map(FileFrame::key).collect();
            let entry = by_key.entry(key).or_default();
            if let (Some(bytes), Some(allocs)) =
                (entry.bytes.get_mut(side), entry.allocs.get_mut(side))
            {
                *bytes = bytes.saturating_add(stack.live_bytes);
                *allocs = allocs.saturating_add(stack.live_allocs);
            }
        }
    }
    let elapsed = elapsed_s(before, after);
    let mut deltas: Vec<StackDelta> = by_key
        .into_iter()
        .map(|(frames, sides)| {
            let [bytes_before, bytes_after] = sides.bytes;
            let [allocs_before, allocs_after] = sides.allocs;
            let delta_bytes = signed_delta(bytes_before, bytes_after);
            StackDelta {
                frames,
                live_bytes_before: bytes_before,
                live_bytes_after: bytes_after,
                delta_bytes,
                live_allocs_before: allocs_before,
                live_allocs_after: allocs_after,
                delta_allocs: signed_delta(allocs_before, allocs_after),
                elapsed_s: elapsed,
                growth_bytes_per_s: elapsed.map(|e| delta_bytes as f64 / e),
            }
        })
        .collect();
    deltas.sort_by(|a, b| {
        b.delta_bytes
            .cmp(&a.delta_bytes)
            .then(b.live_bytes_after.cmp(&a.live_bytes_after))
            .then_with(|| a.frames.cmp(&b.frames))
    });
    deltas
}

/// `after - before`, saturated to `i64`.
fn signed_delta(before: u64, after: u64) -> i64 {
    let delta = i128::from(after) - i128::from(before);
    i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX })
}

/// Writes the diff as a table, largest growth first, with the two exports described on top and
/// totals at the bottom.
pub fn write_text<W: Write>(
    deltas: &[StackDelta],
    before: &Meta,
    after: &Meta,
    mut out: W,
) -> io::Result<()> {
    writeln!(out, "leaktrace diff")?;
    for (label, meta) in [("before", before), ("after", after)] {
        writeln!(
            out,
            "  {label:<7} {}: pid {} ({}), traced {:.1} s, live {} in {} allocations",
            crate::export::one_line(&meta.name),
            meta.pid,
            crate::export::one_line(&meta.command),
            meta.duration_s,
            human_bytes(meta.live_bytes),
            meta.live_allocs
        )?;
    }
    match elapsed(
        (before.pid, before.duration_s),
        (after.pid, after.duration_s),
    ) {
        Some(e) => writeln!(out, "  elapsed {e:.1} s (same pid: one trace assumed)")?,
        None => writeln!(
            out,
            "  elapsed unknown (different pids, or the second export is not later): no rates"
        )?,
    }
    writeln!(out)?;
    if deltas.is_empty() {
        writeln!(out, "no stacks in either export")?;
        return out.flush();
    }
    writeln!(
        out,
        "{:>11} {:>13} {:>11} {:>11} {:>8} {:>13}  stack (innermost first)",
        "delta", "delta bytes", "before", "after", "allocs", "per second"
    )?;
    for d in deltas {
        let rate = d.growth_bytes_per_s.map_or_else(
            || "-".to_owned(),
            |r| format!("{}/s", signed_bytes(r.round() as i64)),
        );
        writeln!(
            out,
            "{:>11} {:>+13} {:>11} {:>11} {:>+8} {:>13}  {}",
            signed_bytes(d.delta_bytes),
            d.delta_bytes,
            human_bytes(d.live_bytes_before),
            human_bytes(d.live_bytes_after),
            d.delta_allocs,
            rate,
            d.summary(SHOWN_FRAMES)
        )?;
    }
    let sum = |f: fn(&StackDelta) -> u64| deltas.iter().fold(0u64, |a, d| a.saturating_add(f(d)));
    let (listed_before, listed_after) = (sum(|d| d.live_bytes_before), sum(|d| d.live_bytes_after));
    let (allocs_before, allocs_after) =
        (sum(|d| d.live_allocs_before), sum(|d| d.live_allocs_after));
    writeln!(out)?;
    writeln!(
        out,
        "listed stacks: {} ({} -> {}), {:+} allocations",
        signed_bytes(signed_delta(listed_before, listed_after)),
        human_bytes(listed_before),
        human_bytes(listed_after),
        signed_delta(allocs_before, allocs_after)
    )?;
    writeln!(
        out,
        "process:       {} ({} -> {} bytes), {:+} allocations",
        signed_bytes(signed_delta(before.live_bytes, after.live_bytes)),
        before.live_bytes,
        after.live_bytes,
        signed_delta(before.live_allocs, after.live_allocs)
    )?;
    for (label, meta) in [("before", before), ("after", after)] {
        if meta.omitted.rows > 0 {
            writeln!(
                out,
                "({label} left out {} rows holding {} (--top): a stack missing there may be \
                 below its cut)",
                meta.omitted.rows,
                human_bytes(meta.omitted.live_bytes)
            )?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{
        export::pprof,
        report::{Diagnostics, Frame, Report, ReportTotals, StackReport},
    };

    fn frame(function: Option<&str>, module: &str, addr: u64) -> Frame {
        Frame {
            function: function.map(str::to_owned),
            module: Some(module.to_owned()),
            file: None,
            line: None,
            addr,
            offset: None,
            build_id: None,
            inlined: false,
        }
    }

    fn stack(live_bytes: u64, live_allocs: u64, frames: Vec<Frame>) -> StackReport {
        StackReport {
            live_bytes,
            live_allocs,
            total_allocs: live_allocs,
            total_bytes: live_bytes,
            frames: crate::report::shared(frames),
            ..StackReport::default()
        }
    }

    fn report(pid: u32, duration_s: f64, stacks: Vec<StackReport>) -> Report {
        let live_bytes = stacks.iter().map(|s| s.live_bytes).sum();
        let live_allocs = stacks.iter().map(|s| s.live_allocs).sum();
        Report {
            pid,
            command: "./server --port 8080".to_owned(),
            duration_s,
            unwind: "fp".to_owned(),
            ended: None,
            processes: Vec::new(),
            sample_bytes: None,
            estimates: Vec::new(),
            totals: ReportTotals {
                live_bytes,
                live_allocs,
                ..ReportTotals::default()
            },
            diagnostics: Diagnostics::default(),
            group_by: "source".to_owned(),
            omitted: crate::report::Omitted::default(),
            coverage: Default::default(),
            stacks,
        }
    }

    /// Two exports of one server, a minute apart, from runs with different load addresses.
    /// `base` shifts every address (ASLR).
    fn server(duration_s: f64, base: u64, leak: u64, cache: u64, gone: bool) -> Report {
        let exe = "/usr/bin/server";
        let mut stacks = vec![
            stack(
                leak,
                leak / 2048,
                vec![
                    frame(Some("new_session"), exe, base + 0x1234),
                    frame(Some("session_cache_add"), exe, base + 0x2000),
                    frame(Some("main"), exe, base + 0x100),
                ],
            ),
            stack(
                cache,
                64,
                vec![
                    frame(Some("cache_put"), exe, base + 0x3000),
                    frame(None, "/usr/lib/x86_64-linux-gnu/libfoo.so.1", base + 0x7000),
                    frame(Some("main"), exe, base + 0x100),
                ],
            ),
            // The same function pair from another call site (a different line): merged.
            stack(
                1024,
                1,
                vec![
                    frame(Some("new_session"), exe, base + 0x1250),
                    frame(Some("session_cache_add"), exe, base + 0x2010),
                    frame(Some("main"), exe, base + 0x100),
                ],
            ),
        ];
        if !gone {
            stacks.push(stack(
                8192,
                2,
                vec![frame(Some("load_config"), exe, base + 0x500)],
            ));
        } else {
            stacks.push(stack(512, 1, vec![]));
        }
        report(4242, duration_s, stacks)
    }

    fn before_after() -> (ReportFile, ReportFile) {
        let before = server(12.5, 0x5555_0000_0000, 20_480, 65_536, false);
        let after = server(72.5, 0x5566_0000_0000, 143_360, 61_440, true);
        ((&before).into(), (&after).into())
    }

    #[test]
    fn stacks_match_by_function_and_module_not_address() {
        // Given two exports whose addresses all differ
        let (before, after) = before_after();

        // When diffing
        let deltas = diff(&before, &after);

        // Then each stack is matched, with exact deltas, largest growth first
        let rows: Vec<(String, u64, u64, i64, i64)> = deltas
            .iter()
            .map(|d| {
                (
                    d.summary(2),
                    d.live_bytes_before,
                    d.live_bytes_after,
                    d.delta_bytes,
                    d.delta_allocs,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "new_session <- session_cache_add <- ...".to_owned(),
                    20_480 + 1024,
                    143_360 + 1024,
                    122_880,
                    60
                ),
                ("(no stack recorded)".to_owned(), 0, 512, 512, 1),
                (
                    "cache_put <- [libfoo.so.1] ? <- ...".to_owned(),
                    65_536,
                    61_440,
                    -4096,
                    0
                ),
                ("load_config".to_owned(), 8192, 0, -8192, -2),
            ]
        );

        // And the time between them gives a rate
        assert_eq!(deltas[0].elapsed_s, Some(60.0));
        assert_eq!(deltas[0].growth_bytes_per_s, Some(2048.0));
        assert_eq!(deltas[3].growth_bytes_per_s, Some(-8192.0 / 60.0));
    }

    #[test]
    fn rates_need_the_same_pid_and_a_later_export() {
        let (before, mut after) = before_after();
        after.pid = 1;
        assert!(diff(&before, &after).iter().all(|d| d.elapsed_s.is_none()));
        assert!(
            diff(&before, &after)
                .iter()
                .all(|d| d.growth_bytes_per_s.is_none())
        );
        let (before, after) = before_after();
        assert_eq!(elapsed_s(&after, &before), None, "swapped: negative time");
        assert_eq!(elapsed_s(&before, &before), None, "zero time");
    }

    #[test]
    fn rows_match_the_way_a_trace_groups_them() {
        // Given one function allocating from two source lines, and an unnamed frame at two
        // file offsets of one stripped module
        let exe = "/usr/bin/server";
        let at_line = |line: u32, addr: u64| Frame {
            file: Some("server.c".to_owned()),
            line: Some(line),
            ..frame(Some("new_session"), exe, addr)
        };
        let unnamed = |offset: u64, addr: u64| Frame {
            offset: Some(offset),
            ..frame(None, exe, addr)
        };
        let side = |base: u64, bytes: u64| {
            report(
                1,
                1.0,
                vec![
                    stack(bytes, 1, vec![at_line(10, base + 0x10)]),
                    stack(bytes * 2, 1, vec![at_line(11, base + 0x20)]),
                    stack(bytes * 3, 1, vec![unnamed(0x500, base + 0x500)]),
                    stack(bytes * 4, 1, vec![unnamed(0x600, base + 0x600)]),
                ],
            )
        };

        // When diffing exports of two runs at other addresses
        let deltas = diff(&(&side(0x1000, 100)).into(), &(&side(0x9000, 1000)).into());

        // Then each line and each offset is its own row, matched across the runs
        let rows: Vec<(String, i64)> = deltas
            .iter()
            .map(|d| (d.summary(1), d.delta_bytes))
            .collect();
        assert_eq!(
            rows,
            [
                ("[server] +0x600".to_owned(), 3600),
                ("[server] +0x500".to_owned(), 2700),
                ("new_session".to_owned(), 1800),
                ("new_session".to_owned(), 900),
            ]
        );
    }

    #[test]
    fn exports_cut_with_top_say_so() {
        // Given an export that left two rows out
        let (before, mut after) = before_after();
        after.omitted = FileOmitted {
            rows: 2,
            live_bytes: 4096,
        };

        // Then the diff says so, and only then
        let text = render(&before, &after);
        assert!(
            text.contains("(after left out 2 rows holding 4.0 KiB (--top)"),
            "{text}"
        );
        assert!(!text.contains("before left out"), "{text}");
        assert!(!render(&before, &before).contains("left out"));
    }

    #[test]
    fn identical_exports_have_zero_deltas() {
        let (before, _) = before_after();
        let deltas = diff(&before, &before);
        assert_eq!(
            deltas.len(),
            3,
            "the two new_session call sites are one stack"
        );
        assert!(
            deltas
                .iter()
                .all(|d| d.delta_bytes == 0 && d.delta_allocs == 0)
        );
    }

    #[test]
    fn deltas_saturate() {
        assert_eq!(signed_delta(0, u64::MAX), i64::MAX);
        assert_eq!(signed_delta(u64::MAX, 0), i64::MIN);
        assert_eq!(signed_delta(5, 3), -2);
    }

    #[test]
    fn load_reads_a_json_export_and_ignores_extra_fields() {
        // Given a JSON export as leaktrace writes it, with a field from the future
        let dir = tempfile::tempdir().expect("temp dir");
        let report = server(12.5, 0x5555_0000_0000, 20_480, 65_536, false);
        let mut json = serde_json::to_value(&report).expect("serializes");
        json["verdicts"] = serde_json::json!({"leak": 1});
        json["stacks"][0]["colour"] = serde_json::json!("red");
        let path = dir.path().join("before.json");
        fs::write(&path, serde_json::to_vec(&json).expect("serializes")).expect("writing");

        // When loading it
        let loaded = load(&path).expect("loads");

        // Then the contract fields are there
        assert_eq!(loaded, ReportFile::from(&report));
        assert_eq!(loaded.stacks[1].frames[1].function, None);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.json");
        let err = load(&missing).expect_err("no such file");
        assert!(matches!(err, DiffError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.json"), "{err}");

        let bad = dir.path().join("bad.json");
        fs::write(&bad, br#"{"pid": 1}"#).expect("writing");
        let err = load(&bad).expect_err("not an export");
        assert!(matches!(err, DiffError::Parse { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{} is not a leaktrace JSON export", bad.display())
        );
    }

    fn render(before: &ReportFile, after: &ReportFile) -> String {
        let mut out = Vec::new();
        write_text(
            &diff(before, after),
            &before.meta("before.json"),
            &after.meta("after.json"),
            &mut out,
        )
        .expect("writing to a Vec succeeds");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn text_matches_golden_file() {
        let (before, after) = before_after();
        let actual = render(&before, &after);
        crate::export::golden::check("diff.txt", &actual);
    }

    #[test]
    fn text_without_rates_or_stacks() {
        // Given exports of different processes
        let (before, mut after) = before_after();
        after.pid = 7;
        let text = render(&before, &after);
        assert!(text.contains("elapsed unknown"), "{text}");
        assert!(!text.contains("/s "), "no rates: {text}");

        // And two empty exports
        let empty: ReportFile = (&report(1, 1.0, vec![])).into();
        assert!(render(&empty, &empty).contains("no stacks in either export"));
    }

    #[test]
    fn go_tool_pprof_diffs_two_pprof_exports() {
        // Given the two exports written as pprof profiles
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, report: &Report| {
            let path = dir.path().join(name);
            let file = fs::File::create(&path).expect("creating the profile");
            pprof::write(report, io::BufWriter::new(file)).expect("writing the profile");
            path
        };
        let before = write(
            "before.pb.gz",
            &server(12.5, 0x5555_0000_0000, 20_480, 65_536, false),
        );
        let after = write(
            "after.pb.gz",
            &server(72.5, 0x5566_0000_0000, 143_360, 61_440, true),
        );

        // When pprof subtracts the first from the second
        let top = pprof::tests::go_pprof(
            dir.path(),
            &[
                "-top".as_ref(),
                "-unit=B".as_ref(),
                "-nodefraction=0".as_ref(),
                "-base".as_ref(),
                before.as_os_str(),
                after.as_os_str(),
            ],
        );

        // Then the leak's growth leads, and the shrinking stacks are negative
        let flat = |f: &str| pprof::tests::top_flat(&top, f);
        assert_eq!(flat("new_session").as_deref(), Some("122880B"), "{top}");
        assert_eq!(flat("cache_put").as_deref(), Some("-4096B"), "{top}");
        assert_eq!(flat("load_config").as_deref(), Some("-8192B"), "{top}");
        assert_eq!(flat("[no stack]").as_deref(), Some("512B"), "{top}");
    }
}
