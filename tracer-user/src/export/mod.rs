//! Writers that turn a [`Report`] into a file format: pure functions onto any [`Write`].
//!
//! - [`Format::Json`]: the serde form of [`Report`], pretty-printed ([`json`]).
//! - [`Format::Folded`]: folded stacks weighted by live bytes, for `inferno-flamegraph
//!   --countname bytes` or `flamegraph.pl` ([`folded`]).
//! - [`Format::Text`]: a report for people ([`text`]).
//! - [`Format::Pprof`]: a gzipped pprof profile, for `go tool pprof` ([`pprof`]).
//! - [`Format::Svg`]: a flame graph of live bytes, drawn by inferno ([`svg`]).
//! - [`Format::Html`]: a self-contained leak report: flame graph, chart, rows ([`html`]).
//!
//! ```
//! use leaktrace::export::{Format, write_report};
//! # fn show(report: &leaktrace::report::Report) -> std::io::Result<()> {
//! let format: Format = "folded".parse().expect("a known format");
//! write_report(report, format, std::io::stdout().lock())?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

use std::{borrow::Cow, fmt, io::Write, str::FromStr};

use crate::report::{Omitted, Report};

pub mod diff;
pub mod file;
pub mod folded;
#[cfg(test)]
pub(crate) mod golden;
pub mod html;
pub mod json;
pub mod pprof;
pub mod read;
pub mod soak;
pub mod svg;
pub mod text;

/// An export format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Pretty-printed JSON ([`json`]).
    Json,
    /// Folded stacks, one `root;…;leaf bytes` line per stack ([`folded`]).
    Folded,
    /// Human-readable text ([`text`]).
    Text,
    /// Gzipped pprof `profile.proto` ([`pprof`]): binary.
    Pprof,
    /// A flame graph of live bytes as an SVG image ([`svg`]).
    Svg,
    /// A self-contained HTML report ([`html`]).
    Html,
}

impl Format {
    /// Every format, in the order they are listed to users.
    pub const ALL: [Format; 6] = [
        Format::Json,
        Format::Folded,
        Format::Text,
        Format::Pprof,
        Format::Svg,
        Format::Html,
    ];

    /// The name [`FromStr`] accepts and [`fmt::Display`] prints.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Folded => "folded",
            Format::Text => "text",
            Format::Pprof => "pprof",
            Format::Svg => "svg",
            Format::Html => "html",
        }
    }

    /// The customary file extension, without the dot.
    pub const fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Folded => "folded",
            Format::Text => "txt",
            Format::Pprof => "pb.gz",
            Format::Svg => "svg",
            Format::Html => "html",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that is not one of [`Format::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown report format {given:?}, expected one of: json, folded, text, pprof, svg, html")]
pub struct ParseFormatError {
    /// The name that was given.
    pub given: String,
}

impl FromStr for Format {
    type Err = ParseFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| ParseFormatError {
                given: s.to_owned(),
            })
    }
}

/// Writes `report` to `out` in `format`. `out` is written in many small pieces: pass a
/// [`std::io::BufWriter`] for files and pipes.
pub fn write_report<W: Write>(report: &Report, format: Format, out: W) -> std::io::Result<()> {
    match format {
        Format::Json => json::write(report, out),
        Format::Folded => folded::write(report, out),
        Format::Text => text::write(report, out),
        Format::Pprof => pprof::write(report, out),
        Format::Svg => svg::write(report, out),
        Format::Html => html::write(report, out),
    }
}

/// Formats a byte count with binary units and one decimal: `512 B`, `1.5 KiB`, `1.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut divisor: u128 = 1;
    for unit in UNITS {
        divisor *= 1024;
        // Tenths of this unit, rounded half up, in exact integer arithmetic.
        let tenths = (u128::from(bytes) * 10 + divisor / 2) / divisor;
        // Move up a unit when this one would print 1024.0 or more (unless it is the last).
        if tenths < 10 * 1024 || unit == "EiB" {
            return format!("{}.{} {unit}", tenths / 10, tenths % 10);
        }
    }
    format!("{bytes} B")
}

/// A byte difference with its sign: `+1.5 KiB`, `-512 B`, `0 B`.
pub fn signed_bytes(delta: impl Into<i128>) -> String {
    let delta = delta.into();
    let magnitude = human_bytes(u64::try_from(delta.unsigned_abs()).unwrap_or(u64::MAX));
    match delta.signum() {
        1 => format!("+{magnitude}"),
        -1 => format!("-{magnitude}"),
        _ => magnitude,
    }
}

/// What the rows a report left out are called where they stand in for them (a folded frame, a
/// pprof location): `[37 more stacks]`.
pub fn omitted_label(omitted: &Omitted) -> String {
    match omitted.rows {
        1 => "[1 more stack]".to_owned(),
        n => format!("[{n} more stacks]"),
    }
}

/// `37 more stacks holding 1.2 MiB (1234567 bytes) in 56 allocations`, when rows were left out.
pub fn omitted_summary(omitted: &Omitted) -> Option<String> {
    (omitted.rows > 0).then(|| {
        format!(
            "{} more {} holding {} ({} bytes) in {} live allocations",
            omitted.rows,
            if omitted.rows == 1 { "stack" } else { "stacks" },
            human_bytes(omitted.live_bytes),
            omitted.live_bytes,
            omitted.live_allocs
        )
    })
}

/// `s` with every control character (newlines, tabs, …) replaced by a space, so a name from
/// debug info cannot break a line-oriented format.
pub(crate) fn one_line(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
pub(crate) mod tests {

    use super::*;
    use crate::report::{CallSite, Diagnostics, Frame, ReportTotals, StackReport, sort_stacks};

    fn frame(function: &str, file: &str, line: u32, addr: u64, inlined: bool) -> Frame {
        Frame {
            function: Some(function.to_owned()),
            module: Some("/usr/bin/server".to_owned()),
            file: Some(file.to_owned()),
            line: Some(line),
            addr,
            offset: None,
            build_id: None,
            inlined,
        }
    }

    /// One report exercising every format feature: inlined frames, unknown frames, a name with
    /// `;`, a truncated stack, a stack with no live bytes, a row of two call sites, rows left
    /// out, lost events and non-zero diagnostics.
    pub(crate) fn sample_report() -> Report {
        let diagnostics = crate::source::ebpf::diagnostics_with(&[
            ("ringbuf_full", 5),
            ("stacks_truncated", 1),
            ("pending_full", 2),
            ("pending_missing", 3),
            ("replaced_live", 1),
            ("tracer_memory_bytes", 1_234_567),
        ]);
        let mut stacks = vec![
            StackReport {
                allocator: "glibc".to_owned(),
                total_allocs: 500,
                total_bytes: 64_000,
                frames: crate::report::shared([
                    Frame {
                        function: Some("parse_header".to_owned()),
                        module: Some("/usr/bin/server".to_owned()),
                        file: None,
                        line: None,
                        addr: 0x55d0_c0de_4000,
                        offset: None,
                        build_id: None,
                        inlined: false,
                    },
                    frame("main", "src/main.c", 18, 0x55d0_c0de_0100, false),
                ]),
                ..StackReport::default()
            },
            StackReport {
                allocator: "glibc".to_owned(),
                live_bytes: 4096,
                live_allocs: 1,
                total_allocs: 1,
                total_bytes: 4096,
                oldest_age_s: Some(3.0),
                truncated: true,
                frames: crate::report::shared([
                    Frame {
                        module: Some("libfoo.so.1".to_owned()),
                        offset: Some(0x1234),
                        build_id: Some("4c6561b1e2f0a9d87c3b5e1f".to_owned()),
                        ..Frame::unknown(0x7f3a_0000_1234)
                    },
                    Frame {
                        function: Some("<alloc::vec::Vec<[u8; 8]>>::with_capacity".to_owned()),
                        module: Some("/usr/lib/libbar.so".to_owned()),
                        file: Some("/rustc/library/alloc/src/vec/mod.rs".to_owned()),
                        line: Some(480),
                        addr: 0x7f3a_0000_5678,
                        offset: None,
                        build_id: None,
                        inlined: false,
                    },
                    Frame::unknown(0x7ffd_0000_9abc),
                ]),
                ..StackReport::default()
            },
            StackReport {
                allocator: "glibc".to_owned(),
                live_bytes: 1_572_864,
                live_allocs: 3,
                total_allocs: 10,
                total_bytes: 2_097_152,
                oldest_age_s: Some(12.5),
                frames: crate::report::shared([
                    frame("grow_buffer", "src/buffer.c", 42, 0x55d0_c0de_1234, true),
                    frame("buffer_append", "src/buffer.c", 88, 0x55d0_c0de_1234, false),
                    frame(
                        "handle_request",
                        "src/server.c",
                        210,
                        0x55d0_c0de_2345,
                        false,
                    ),
                    frame("main", "src/main.c", 25, 0x55d0_c0de_0150, false),
                ]),
                call_sites: vec![
                    CallSite {
                        stack_id: 1,
                        live_bytes: 1_048_576,
                        live_allocs: 2,
                        total_allocs: 6,
                        total_bytes: 1_572_864,
                        addrs: vec![
                            0x55d0_c0de_1234,
                            0x55d0_c0de_1234,
                            0x55d0_c0de_2345,
                            0x55d0_c0de_0150,
                        ],
                    },
                    CallSite {
                        stack_id: 2,
                        live_bytes: 524_288,
                        live_allocs: 1,
                        total_allocs: 4,
                        total_bytes: 524_288,
                        addrs: vec![
                            0x55d0_c0de_1234,
                            0x55d0_c0de_1234,
                            0x55d0_c0de_2391,
                            0x55d0_c0de_0150,
                        ],
                    },
                ],
                ..StackReport::default()
            },
        ];
        sort_stacks(&mut stacks);
        Report {
            pid: 4242,
            command: "./server --port 8080".to_owned(),
            duration_s: 12.75,
            unwind: "fp".to_owned(),
            ended: Some("target killed by SIGKILL".to_owned()),
            processes: Vec::new(),
            sample_bytes: None,
            estimates: Vec::new(),
            totals: ReportTotals {
                allocs: 514,
                frees: 511,
                live_bytes: 1_576_960 + 2048,
                live_allocs: 4 + 2,
                unmatched_frees: 3,
                lost_events: diagnostics.lost_events(),
                ..ReportTotals::default()
            },
            diagnostics,
            group_by: "source".to_owned(),
            omitted: crate::report::Omitted {
                rows: 2,
                live_bytes: 2048,
                live_allocs: 2,
                total_allocs: 3,
                total_bytes: 3000,
            },
            // Anonymous memory grew by 100 MiB, far more than was traced.
            coverage: crate::report::coverage::Coverage::judge(
                10 << 20,
                110 << 20,
                1_576_960 + 2048,
                Vec::new(),
            ),
            stacks,
        }
    }

    pub(super) fn render(report: &Report, format: Format) -> String {
        let mut out = Vec::new();
        write_report(report, format, &mut out).expect("writing to a Vec succeeds");
        String::from_utf8(out).expect("every format writes UTF-8")
    }

    fn check_golden(format: Format, file: &str) {
        golden::check(file, &render(&sample_report(), format));
    }

    #[test]
    fn json_matches_golden_file() {
        check_golden(Format::Json, "report.json");
    }

    #[test]
    fn folded_matches_golden_file() {
        check_golden(Format::Folded, "report.folded");
    }

    #[test]
    fn text_matches_golden_file() {
        check_golden(Format::Text, "report.txt");
    }

    #[test]
    fn formats_parse_from_and_display_as_their_names() {
        for format in Format::ALL {
            assert_eq!(format.to_string().parse::<Format>(), Ok(format));
        }
        assert_eq!("folded".parse::<Format>(), Ok(Format::Folded));
        assert_eq!(Format::Text.extension(), "txt");
    }

    #[test]
    fn unknown_format_error_lists_the_valid_names() {
        // When parsing an unknown name
        let err = "flamegraph"
            .parse::<Format>()
            .expect_err("flamegraph is not a format");

        // Then the message names it and every valid one
        let message = err.to_string();
        assert!(message.contains("\"flamegraph\""), "{message}");
        for format in Format::ALL {
            assert!(message.contains(format.name()), "{message}");
        }
        assert!("JSON".parse::<Format>().is_err(), "names are exact");
    }

    #[test]
    fn human_bytes_uses_binary_units_with_one_decimal() {
        let cases = [
            (0, "0 B"),
            (1, "1 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (10 * 1024 + 51, "10.0 KiB"),
            (10 * 1024 + 52, "10.1 KiB"),
            (1_572_864, "1.5 MiB"),
            // 1023.96 KiB would round to 1024.0 KiB: shown as the next unit instead
            (1024 * 1024 - 40, "1.0 MiB"),
            (1024 * 1024 - 60, "1023.9 KiB"),
            (5 << 30, "5.0 GiB"),
            (3 << 40, "3.0 TiB"),
            (1 << 50, "1.0 PiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human_bytes(bytes), want, "{bytes} bytes");
        }
    }

    #[test]
    fn signed_bytes_show_their_sign() {
        assert_eq!(signed_bytes(1536), "+1.5 KiB");
        assert_eq!(signed_bytes(-512), "-512 B");
        assert_eq!(signed_bytes(0), "0 B");
        assert_eq!(signed_bytes(i128::MIN), "-16.0 EiB");
    }

    #[test]
    fn one_line_replaces_control_characters() {
        assert_eq!(one_line("a\nb\r\tc  d"), "a b  c  d");
        assert!(matches!(one_line("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn every_format_handles_an_empty_report() {
        // Given a report with nothing in it
        let report = Report {
            pid: 1,
            command: String::new(),
            duration_s: 0.0,
            unwind: "fp".to_owned(),
            ended: None,
            processes: Vec::new(),
            sample_bytes: None,
            estimates: Vec::new(),
            totals: ReportTotals::default(),
            diagnostics: Diagnostics::default(),
            group_by: "source".to_owned(),
            omitted: crate::report::Omitted::default(),
            coverage: Default::default(),
            stacks: Vec::new(),
        };

        // Then every format writes something sensible
        assert!(render(&report, Format::Json).contains("\"stacks\": []"));
        assert_eq!(render(&report, Format::Folded), "");
        assert!(render(&report, Format::Text).contains("no stacks"));
    }
}
