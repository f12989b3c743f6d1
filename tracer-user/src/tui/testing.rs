//! Synthetic snapshots for the live view's tests.

use std::time::{Duration, Instant};

use ratatui::layout::Size;

use super::app::App;
use crate::{
    heap::history::Series,
    report::analytics::Verdict,
    report::{Diagnostics, Frame, Report, ReportTotals, StackReport, sort_stacks},
    tui::snapshot::Snapshot,
};

/// The pid of every test snapshot.
pub(crate) const PID: u32 = 4242;

fn frame(function: &str, module: &str, file: Option<&str>, line: Option<u32>, addr: u64) -> Frame {
    Frame {
        function: Some(function.to_owned()),
        module: Some(module.to_owned()),
        file: file.map(str::to_owned),
        line,
        addr,
        offset: None,
        build_id: None,
        inlined: false,
    }
}

fn stack(
    id: u64,
    live_bytes: u64,
    live_allocs: u64,
    age: Option<f64>,
    frames: Vec<Frame>,
) -> StackReport {
    StackReport {
        id,
        allocator: "glibc".to_owned(),
        live_bytes,
        live_allocs,
        total_allocs: live_allocs * 2 + 1,
        total_bytes: live_bytes * 2 + 64,
        oldest_age_s: age,
        frames: crate::report::shared(frames),
        ..StackReport::default()
    }
}

/// What the analysis said about a stack: its verdict, its fitted growth `(bytes per second, R²)`
/// and its live blocks' ages as `(age in seconds, blocks)`.
fn analysed(
    mut stack: StackReport,
    verdict: Verdict,
    growth: Option<(f64, f64)>,
    ages: &[(f64, u64)],
) -> StackReport {
    stack.verdict = verdict;
    stack.growth_bytes_per_s = growth.map(|(per_s, _)| per_s);
    stack.growth_bytes_per_h = growth.map(|(per_s, _)| per_s * 3600.0);
    stack.growth_r2 = growth.map(|(_, r2)| r2);
    for &(age, n) in ages {
        stack.ages.add_n(age, n);
    }
    stack
}

/// A series with one sample per second at `t` for each `t` in `times`.
fn series(times: impl IntoIterator<Item = u64>, bytes: impl Fn(u64) -> u64) -> (u64, Series) {
    let mut s = Series::default();
    let mut last = 0;
    for t in times {
        last = bytes(t);
        s.push(t as f64, last);
    }
    (last, s)
}

/// Seven stacks, 12.75 s after attach, covering what the view shows:
///
/// | id | live | allocs | age | growth/s | verdict (fit/s, R²) | ages | frames |
/// |---|---|---|---|---|---|---|---|
/// | 1 | 1.5 MiB | 3 | 12.5 | 131072 | leak (131072, 1.0) | <10s:2 <1m:1 | grow_buffer [inlined] ← buffer_append ← handle_request ← main |
/// | 4 | 64 KiB | 16 | 8.0 | 4096 | growing (4096, 0.97) | <1s:4 <10s:12 | alloc_buffer ← parse_header ← main |
/// | 5 | 32 KiB | 16 | 5.0 | 2048 (series from t=6) | steady (2048, 0.62) | <1s:10 <10s:6 | alloc_buffer ← read_body ← main |
/// | 2 | 4 KiB | 1 | 3.0 | 0 | steady (0, 0.0) | <10s:1 | [libfoo.so.1] ← with_capacity (libbar) ← [unknown], truncated |
/// | 6 | 2 KiB | 8 | 6.0 | 100 | churn (100, 0.41) | <1s:5 <10s:3 | g_malloc (libglib) ← g_strdup [inlined] ← load_config, incomplete |
/// | 7 | 100 B | 1 | 1.0 | unknown (one sample) | unknown (–) | <10s:1 | no frames |
/// | 3 | 0 B | 0 | – | negative | churn (-341.3, 0.55) | – | parse_header ← main |
pub(crate) fn sample_snapshot() -> Snapshot {
    let server = "/usr/bin/server";
    let glib = "/usr/lib/libglib-2.0.so.0";
    let main = |addr| frame("main", server, Some("/src/main.c"), Some(18), addr);
    let all = 0..=12;
    let (b1, s1) = series(all.clone(), |t| 131_072 * t);
    let (b4, s4) = series(all.clone(), |t| 16_384 + 4096 * t);
    let (b5, s5) = series(6..=12, |t| 20_480 + 2048 * (t - 6));
    let (b2, s2) = series(all.clone(), |_| 4096);
    let (b6, s6) = series(all.clone(), |t| 848 + 100 * t);
    let (b7, s7) = series(12..=12, |_| 100);
    let (b3, s3) = series(all, |t| if t < 8 { 4096 } else { 0 });
    let mut grow = frame(
        "grow_buffer",
        server,
        Some("/src/buffer.c"),
        Some(42),
        0x55d0_c0de_1234,
    );
    grow.inlined = true;
    let mut strdup = frame("g_strdup", glib, None, None, 0x7f11_0000_2000);
    strdup.inlined = true;
    let mut truncated = stack(
        2,
        b2,
        1,
        Some(3.0),
        vec![
            Frame {
                module: Some("/usr/lib/libfoo.so.1".to_owned()),
                ..Frame::unknown(0x7f3a_0000_1234)
            },
            frame(
                "<alloc::vec::Vec<u8>>::with_capacity",
                "/usr/lib/libbar.so",
                Some("/rustc/library/alloc/src/vec/mod.rs"),
                Some(480),
                0x7f3a_0000_5678,
            ),
            Frame::unknown(0x7ffd_0000_9abc),
        ],
    );
    truncated.truncated = true;
    let mut incomplete = stack(
        6,
        b6,
        8,
        Some(6.0),
        vec![
            frame("g_malloc", glib, None, None, 0x7f11_0000_1000),
            strdup,
            frame(
                "load_config",
                server,
                Some("/src/config.c"),
                Some(17),
                0x55d0_c0de_4000,
            ),
        ],
    );
    incomplete.incomplete = true;
    let stacks = vec![
        (
            stack(
                1,
                b1,
                3,
                Some(12.5),
                vec![
                    grow,
                    frame(
                        "buffer_append",
                        server,
                        Some("/src/buffer.c"),
                        Some(88),
                        0x55d0_c0de_1234,
                    ),
                    frame(
                        "handle_request",
                        server,
                        Some("/src/server.c"),
                        Some(210),
                        0x55d0_c0de_2345,
                    ),
                    main(0x55d0_c0de_0150),
                ],
            ),
            s1,
        ),
        (
            stack(
                4,
                b4,
                16,
                Some(8.0),
                vec![
                    frame(
                        "alloc_buffer",
                        server,
                        Some("/src/leaky.c"),
                        Some(52),
                        0x55d0_c0de_3000,
                    ),
                    frame(
                        "parse_header",
                        server,
                        Some("/src/leaky.c"),
                        Some(80),
                        0x55d0_c0de_3100,
                    ),
                    main(0x55d0_c0de_0160),
                ],
            ),
            s4,
        ),
        (
            stack(
                5,
                b5,
                16,
                Some(5.0),
                vec![
                    frame(
                        "alloc_buffer",
                        server,
                        Some("/src/leaky.c"),
                        Some(52),
                        0x55d0_c0de_3000,
                    ),
                    frame(
                        "read_body",
                        server,
                        Some("/src/leaky.c"),
                        Some(95),
                        0x55d0_c0de_3200,
                    ),
                    main(0x55d0_c0de_0170),
                ],
            ),
            s5,
        ),
        (truncated, s2),
        (incomplete, s6),
        (stack(7, b7, 1, Some(1.0), Vec::new()), s7),
        (
            stack(
                3,
                b3,
                0,
                None,
                vec![
                    frame("parse_header", server, None, None, 0x55d0_c0de_3100),
                    main(0x55d0_c0de_0180),
                ],
            ),
            s3,
        ),
    ];
    // What the analysis said (the table above); the live view only shows it.
    let stacks = stacks.into_iter().map(|(stack, series)| {
        let stack = match stack.id {
            1 => analysed(
                stack,
                Verdict::Leak,
                Some((131_072.0, 1.0)),
                &[(8.0, 2), (12.5, 1)],
            ),
            4 => analysed(
                stack,
                Verdict::Growing,
                Some((4096.0, 0.97)),
                &[(0.5, 4), (8.0, 12)],
            ),
            5 => analysed(
                stack,
                Verdict::Steady,
                Some((2048.0, 0.62)),
                &[(0.5, 10), (5.0, 6)],
            ),
            2 => analysed(stack, Verdict::Steady, Some((0.0, 0.0)), &[(3.0, 1)]),
            6 => analysed(
                stack,
                Verdict::Churn,
                Some((100.0, 0.41)),
                &[(0.5, 5), (6.0, 3)],
            ),
            7 => analysed(stack, Verdict::Unknown, None, &[(1.0, 1)]),
            3 => analysed(stack, Verdict::Churn, Some((-341.3, 0.55)), &[]),
            _ => stack,
        };
        (stack, series)
    });
    // Report order (already so, but keep `series` parallel whatever `sort_stacks` does).
    let mut by_id: Vec<(StackReport, Series)> = stacks.collect();
    let mut reports: Vec<StackReport> = by_id.iter().map(|(s, _)| s.clone()).collect();
    sort_stacks(&mut reports);
    let series = reports
        .iter()
        .map(|r| {
            let at = by_id
                .iter()
                .position(|(s, _)| s.id == r.id)
                .expect("every sorted stack comes from the list");
            by_id.swap_remove(at).1
        })
        .collect();
    let diagnostics = crate::source::ebpf::diagnostics_with(&[
        ("ringbuf_full", 5),
        ("pending_full", 2),
        ("tracer_memory_bytes", 3_407_872),
    ]);
    let live_bytes = reports.iter().map(|s| s.live_bytes).sum();
    let live_allocs = reports.iter().map(|s| s.live_allocs).sum();
    Snapshot {
        report: Report {
            pid: PID,
            command: "./server --port 8080".to_owned(),
            duration_s: 12.75,
            unwind: "fp".to_owned(),
            ended: None,
            processes: Vec::new(),
            sample_bytes: None,
            estimates: Vec::new(),
            totals: ReportTotals {
                allocs: 1_204_332,
                frees: 1_204_287,
                live_bytes,
                live_allocs,
                unmatched_frees: 12,
                lost_events: diagnostics.lost_events(),
                ..ReportTotals::default()
            },
            diagnostics,
            group_by: "source".to_owned(),
            omitted: crate::report::Omitted::default(),
            coverage: Default::default(),
            stacks: reports,
        },
        series,
        target_rss_bytes: Some(25_165_824),
        allocs_per_s: 48_211.0,
        frees_per_s: 48_002.4,
        ended: None,
    }
}

/// A snapshot of a process that has allocated nothing yet.
pub(crate) fn empty_snapshot() -> Snapshot {
    let mut snapshot = sample_snapshot();
    snapshot.report.stacks.clear();
    snapshot.series.clear();
    snapshot.report.totals = ReportTotals::default();
    snapshot.report.diagnostics = Diagnostics::default();
    snapshot.report.duration_s = 0.5;
    snapshot.target_rss_bytes = None;
    snapshot.allocs_per_s = 0.0;
    snapshot.frees_per_s = 0.0;
    snapshot
}

/// The index in `report.stacks` of the stack with `id`.
pub(crate) fn stack_index(snapshot: &Snapshot, id: u64) -> usize {
    snapshot
        .report
        .stacks
        .iter()
        .position(|s| s.id == id)
        .unwrap_or_else(|| panic!("no stack {id}"))
}

/// A fixed moment for tests, and one `seconds` later.
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub(crate) fn at(&self, seconds: f64) -> Instant {
        self.start + Duration::from_secs_f64(seconds)
    }
}

/// An app for a `width` x `height` terminal at `clock`'s start, with no snapshot yet.
pub(crate) fn app(clock: &Clock, width: u16, height: u16) -> App {
    App::new(PID, Size::new(width, height), clock.at(0.0))
}
