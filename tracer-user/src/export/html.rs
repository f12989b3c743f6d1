//! A self-contained HTML leak report (`--format html`, `leaktrace report`): one file that opens
//! without network access, holding
//!
//! - the run's header (target, duration, totals, losses, sampling, unwind mode), written here;
//! - an icicle flame graph of live bytes by call path (root on top), coloured by the verdict
//!   holding most of each frame's bytes, with click to zoom, a search box and a tooltip giving
//!   bytes, blocks, growth and age;
//! - a chart of live bytes over time for the rows holding most and the rows leaking or growing:
//!   from the session's history ([`crate::report::StackReport::history`]) for one report, or
//!   across the exports for a series of snapshots;
//! - the rows as a table, sortable by any column, each row zooming the flame graph to its stack.
//!
//! The figures travel as one JSON document ([`Page`]) inside the page; a small script
//! (`html/report.js`) draws the flame graph, the chart and the table from it. Frames are
//! interned and call paths form a prefix tree, so 10,000 rows of 24 frames take well under a
//! megabyte. Every count comes from the exports: nothing is recomputed in the browser but sums.
#![warn(missing_docs)]

use std::{
    collections::HashMap,
    io::{self, Write},
};

use serde::Serialize;

use super::{
    human_bytes, one_line,
    read::{FileStack, ReportFile},
};
use crate::report::{Report, analytics::Verdict, build::CHART_ROWS, grouping::FrameKey};

const CSS: &str = include_str!("html/report.css");
const SCRIPT: &str = include_str!("html/report.js");

/// Writes the HTML report of `report` (its rows, and its rows' history as the chart).
pub fn write<W: Write>(report: &Report, out: W) -> io::Result<()> {
    write_series(&[ReportFile::from(report)], &[String::new()], out)
}

/// Writes the HTML report of a series of exports, oldest first: the last one's rows, and a
/// chart across all of them (one export: its rows' history). `names` label the exports
/// (their paths) in the header; empty names are not shown.
pub fn write_series<W: Write>(
    exports: &[ReportFile],
    names: &[String],
    mut out: W,
) -> io::Result<()> {
    let Some(last) = exports.last() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no export to report on",
        ));
    };
    let page = Page::new(exports, names);
    let title = format!(
        "leaktrace: live heap of pid {} ({})",
        last.pid,
        one_line(&last.command)
    );
    let data = serde_json::to_string(&page).map_err(io::Error::other)?;
    // `<` only occurs inside JSON strings, where `\u003c` reads the same: nothing in the data
    // can end the script element or open a tag.
    let data = data.replace('<', "\\u003c");
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n\
         <header>\n<h1>{title}</h1>\n<table id=\"run\">\n",
        title = escape(&title)
    )?;
    for (name, value) in &page.header {
        writeln!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(name),
            escape(value)
        )?;
    }
    write!(
        out,
        "</table>\n</header>\n\
         <section id=\"flame-section\">\n<h2>What holds memory: live bytes by call path</h2>\n\
         <div class=\"controls\"><input id=\"search\" type=\"search\" placeholder=\"search functions\">\
          <button id=\"reset\" type=\"button\">reset zoom</button> <span id=\"matched\"></span></div>\n\
         <div id=\"legend\"></div>\n<div id=\"flame\"></div>\n</section>\n\
         <section id=\"chart-section\">\n<h2>Live bytes over time</h2>\n\
         <div id=\"chart\"></div>\n</section>\n\
         <section id=\"rows-section\">\n<h2>Rows</h2>\n<p id=\"rows-note\"></p>\n\
         <table id=\"rows\"><thead></thead><tbody></tbody></table>\n\
         <button id=\"more\" type=\"button\" hidden></button>\n</section>\n\
         <div id=\"tip\" hidden></div>\n\
         <noscript><p>The flame graph, chart and table are drawn by a script in this page.</p></noscript>\n\
         <script type=\"application/json\" id=\"data\">{data}</script>\n\
         <script>\n{SCRIPT}</script>\n</body>\n</html>\n"
    )?;
    out.flush()
}

/// `text` with HTML's special characters escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What the page's script draws, as JSON.
#[derive(Serialize, Debug, Default, PartialEq)]
pub struct Page {
    /// The run's header, `(name, value)`, as the page shows it.
    pub header: Vec<(String, String)>,
    /// Frame labels; nodes refer to them by index.
    pub frames: Vec<String>,
    /// The call-path tree, `(parent node, frame)`; node 0 is the root (`all`, parent 0), and
    /// every parent comes before its children.
    pub nodes: Vec<(usize, usize)>,
    /// Rows, in report order: `[leaf node, live bytes, live blocks, allocations, growth per
    /// hour or null, oldest age in seconds or null, verdict, allocator, pid]`.
    pub rows: Vec<Row>,
    /// Rows the export left out, and the node standing for them in the flame graph.
    pub omitted: Option<OmittedRows>,
    /// The chart.
    pub chart: Chart,
}

/// One row of [`Page::rows`], serialized as an array.
#[derive(Serialize, Debug, PartialEq)]
pub struct Row(
    pub usize,
    pub u64,
    pub u64,
    pub u64,
    pub Option<f64>,
    pub Option<f64>,
    pub Verdict,
    pub String,
    pub u32,
);

/// Rows an export left out (`--top`).
#[derive(Serialize, Debug, PartialEq)]
pub struct OmittedRows {
    /// How many.
    pub rows: u64,
    /// Bytes live in them.
    pub live_bytes: u64,
    /// Their node in the flame graph.
    pub node: usize,
}

/// Live bytes over time for some rows.
#[derive(Serialize, Debug, Default, PartialEq)]
pub struct Chart {
    /// What the x axis counts: `seconds since attach` or `snapshot`.
    pub x_label: String,
    /// One line per row.
    pub series: Vec<ChartSeries>,
}

/// One line of the [`Chart`].
#[derive(Serialize, Debug, PartialEq)]
pub struct ChartSeries {
    /// The row's index in [`Page::rows`].
    pub row: usize,
    /// `(x, live bytes)`, in x order.
    pub points: Vec<(f64, u64)>,
}

impl Page {
    /// The page for `exports` (oldest first; the last one's rows are shown).
    pub fn new(exports: &[ReportFile], names: &[String]) -> Page {
        let mut page = Page::default();
        let Some(last) = exports.last() else {
            return page;
        };
        page.header = header(exports, names);
        let mut frames: HashMap<String, usize> = HashMap::new();
        let mut children: HashMap<(usize, usize), usize> = HashMap::new();
        page.nodes
            .push((0, intern(&mut page.frames, &mut frames, "all")));
        let several_pids = last.stacks.iter().any(|s| s.pid != last.stacks[0].pid);
        for stack in &last.stacks {
            let mut labels: Vec<String> = Vec::with_capacity(stack.frames.len() + 1);
            if several_pids {
                labels.push(format!("pid {}", stack.pid));
            }
            if stack.frames.is_empty() {
                labels.push("(no stack recorded)".to_owned());
            }
            labels.extend(stack.frames.iter().rev().map(|f| f.label()));
            let leaf = page.path(&mut frames, &mut children, &labels);
            page.rows.push(Row(
                leaf,
                stack.live_bytes,
                stack.live_allocs,
                stack.total_allocs,
                stack.growth_bytes_per_h,
                stack.oldest_age_s,
                stack.verdict,
                stack.allocator.clone(),
                stack.pid,
            ));
        }
        if last.omitted.rows > 0 {
            let label = match last.omitted.rows {
                1 => "[1 more stack]".to_owned(),
                n => format!("[{n} more stacks]"),
            };
            let node = page.path(&mut frames, &mut children, &[label]);
            page.omitted = Some(OmittedRows {
                rows: last.omitted.rows,
                live_bytes: last.omitted.live_bytes,
                node,
            });
        }
        page.chart = chart(exports);
        page
    }

    /// The node of `labels` (outermost first) under the root, made as needed.
    fn path(
        &mut self,
        frames: &mut HashMap<String, usize>,
        children: &mut HashMap<(usize, usize), usize>,
        labels: &[String],
    ) -> usize {
        let mut node = 0;
        for label in labels {
            let frame = intern(&mut self.frames, frames, label);
            node = *children.entry((node, frame)).or_insert_with(|| {
                self.nodes.push((node, frame));
                self.nodes.len() - 1
            });
        }
        node
    }
}

/// The index of `label` in `frames`, added if new.
fn intern(frames: &mut Vec<String>, index: &mut HashMap<String, usize>, label: &str) -> usize {
    if let Some(&i) = index.get(label) {
        return i;
    }
    frames.push(label.to_owned());
    index.insert(label.to_owned(), frames.len() - 1);
    frames.len() - 1
}

/// The header's lines for `exports` (the last one described, the series named).
fn header(exports: &[ReportFile], names: &[String]) -> Vec<(String, String)> {
    let Some(last) = exports.last() else {
        return Vec::new();
    };
    let mut lines = vec![
        (
            "Target".to_owned(),
            format!("pid {} ({})", last.pid, one_line(&last.command)),
        ),
        (
            "Traced".to_owned(),
            match &last.ended {
                Some(ended) => format!("{:.1} s ({})", last.duration_s, one_line(ended)),
                None => format!("{:.1} s, still running", last.duration_s),
            },
        ),
        (
            "Live".to_owned(),
            format!(
                "{} ({} bytes) in {} blocks",
                human_bytes(last.totals.live_bytes),
                last.totals.live_bytes,
                last.totals.live_allocs
            ),
        ),
        (
            "Seen".to_owned(),
            format!(
                "{} allocations, {} frees",
                last.totals.allocs, last.totals.frees
            ),
        ),
    ];
    let losses: Vec<String> = last
        .diagnostics
        .iter()
        .filter(|(_, value)| **value > 0)
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    lines.push((
        "Lost events".to_owned(),
        last.totals.lost_events.to_string(),
    ));
    if !losses.is_empty() {
        lines.push(("Counters".to_owned(), losses.join(", ")));
    }
    let mut sampling = match last.sample_bytes {
        Some(bytes) => format!(
            "one allocation per {} on average; figures are estimates",
            human_bytes(bytes)
        ),
        None => "every allocation traced".to_owned(),
    };
    for estimate in &last.estimates {
        sampling.push_str(&format!(
            "; {} rows estimated from {}",
            estimate.allocator, estimate.source
        ));
    }
    lines.push(("Sampling".to_owned(), sampling));
    if !last.unwind.is_empty() {
        lines.push(("Unwinding".to_owned(), last.unwind.clone()));
    }
    if last.omitted.rows > 0 {
        lines.push((
            "Left out".to_owned(),
            format!(
                "{} rows holding {} (the export was cut with --top)",
                last.omitted.rows,
                human_bytes(last.omitted.live_bytes)
            ),
        ));
    }
    let named: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    if exports.len() > 1 {
        lines.push((
            "Snapshots".to_owned(),
            format!(
                "{} exports, from {:.1} s to {:.1} s: {}",
                exports.len(),
                exports.first().map_or(0.0, |e| e.duration_s),
                last.duration_s,
                named.join(", ")
            ),
        ));
    } else if let Some(name) = named.first() {
        lines.push(("Export".to_owned(), (*name).to_owned()));
    }
    lines
}

/// The rows of `stacks` a chart shows, by index: the [`CHART_ROWS`] holding most, and up to as
/// many more that are leaking or growing.
fn chart_rows(stacks: &[FileStack]) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..stacks.len()).collect();
    ranked.sort_by(|&a, &b| {
        stacks[b]
            .live_bytes
            .cmp(&stacks[a].live_bytes)
            .then(a.cmp(&b))
    });
    let mut rows: Vec<usize> = ranked.iter().copied().take(CHART_ROWS).collect();
    rows.extend(
        ranked
            .iter()
            .copied()
            .skip(CHART_ROWS)
            .filter(|&i| matches!(stacks[i].verdict, Verdict::Leak | Verdict::Growing))
            .take(CHART_ROWS),
    );
    rows
}

/// The chart: one export's rows' history, or the rows' live bytes across several exports.
fn chart(exports: &[ReportFile]) -> Chart {
    let Some(last) = exports.last() else {
        return Chart::default();
    };
    let rows = chart_rows(&last.stacks);
    if exports.len() == 1 {
        return Chart {
            x_label: "seconds since attach".to_owned(),
            series: rows
                .into_iter()
                .filter_map(|row| {
                    let history = &last.stacks.get(row)?.history;
                    (!history.is_empty()).then(|| ChartSeries {
                        row,
                        points: history.clone(),
                    })
                })
                .collect(),
        };
    }
    // One trace of one process: seconds since its attach; else the exports' order.
    let one_trace = exports
        .windows(2)
        .all(|pair| pair[0].pid == pair[1].pid && pair[1].duration_s > pair[0].duration_s);
    let x = |i: usize, export: &ReportFile| {
        if one_trace {
            export.duration_s
        } else {
            (i + 1) as f64
        }
    };
    let key =
        |stack: &FileStack| -> Vec<FrameKey> { stack.frames.iter().map(|f| f.key()).collect() };
    let by_key: Vec<HashMap<Vec<FrameKey>, u64>> = exports
        .iter()
        .map(|export| {
            let mut live: HashMap<Vec<FrameKey>, u64> = HashMap::new();
            for stack in &export.stacks {
                let bytes = live.entry(key(stack)).or_default();
                *bytes = bytes.saturating_add(stack.live_bytes);
            }
            live
        })
        .collect();
    Chart {
        x_label: if one_trace {
            "seconds since attach".to_owned()
        } else {
            "snapshot".to_owned()
        },
        series: rows
            .into_iter()
            .filter_map(|row| {
                let wanted = key(last.stacks.get(row)?);
                Some(ChartSeries {
                    row,
                    points: exports
                        .iter()
                        .zip(&by_key)
                        .enumerate()
                        .map(|(i, (export, live))| {
                            (x(i, export), live.get(&wanted).copied().unwrap_or(0))
                        })
                        .collect(),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tests::sample_report, *};

    fn html(report: &Report) -> String {
        let mut out = Vec::new();
        write(report, &mut out).expect("writing to a Vec succeeds");
        String::from_utf8(out).expect("UTF-8 HTML")
    }

    /// The JSON document inside the page.
    fn data(page: &str) -> serde_json::Value {
        let start = page.find("id=\"data\">").expect("a data element") + "id=\"data\">".len();
        let end = start + page[start..].find("</script>").expect("closed");
        serde_json::from_str(&page[start..end]).expect("the data is JSON")
    }

    #[test]
    fn the_page_holds_every_row_its_tree_and_the_header() {
        let report = sample_report();
        let page = html(&report);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert!(
            !page.contains("http://") || !page.contains("src=\"http"),
            "no external resource"
        );
        assert!(!page.contains("<script src") && !page.contains("<link"));
        let data = data(&page);
        let rows = data["rows"].as_array().expect("an array");
        assert_eq!(rows.len(), report.stacks.len());
        // Each row's leaf node spells its frames back to the root, outermost first
        let frames = data["frames"].as_array().expect("an array");
        let nodes = data["nodes"].as_array().expect("an array");
        for (row, stack) in rows.iter().zip(&report.stacks) {
            assert_eq!(row[1].as_u64(), Some(stack.live_bytes));
            assert_eq!(row[6].as_str(), Some(stack.verdict.as_str()));
            let mut labels = Vec::new();
            let mut node = row[0].as_u64().expect("a number") as usize;
            while node != 0 {
                let (parent, frame) = (
                    nodes[node][0].as_u64().expect("a number"),
                    nodes[node][1].as_u64().expect("a number"),
                );
                labels.push(
                    frames[frame as usize]
                        .as_str()
                        .expect("a string")
                        .to_owned(),
                );
                node = parent as usize;
            }
            let expected: Vec<String> = if stack.frames.is_empty() {
                vec!["(no stack recorded)".to_owned()]
            } else {
                stack.frames.iter().map(|f| f.label()).collect()
            };
            assert_eq!(labels, expected);
        }
        // The rows left out stand in the flame graph as one node holding their bytes
        assert_eq!(data["omitted"]["rows"], report.omitted.rows);
        assert_eq!(data["omitted"]["live_bytes"], report.omitted.live_bytes);
        // The header says what was traced and what was lost
        assert!(page.contains(&format!("<th>Target</th><td>pid {}", report.pid)));
        assert!(page.contains("<th>Lost events</th>"));
        assert!(page.contains("<th>Unwinding</th>"));
    }

    #[test]
    fn text_from_the_target_cannot_end_the_script_or_inject_markup() {
        let mut report = sample_report();
        report.command = "evil </script><img src=x onerror=alert(1)>".to_owned();
        let mut frames: Vec<crate::report::Frame> = report.stacks[0]
            .frames
            .iter()
            .map(|f| (**f).clone())
            .collect();
        frames[0].function = Some("f</script><b>".to_owned());
        report.stacks[0].frames = crate::report::shared(frames);
        let page = html(&report);
        assert_eq!(page.matches("</script>").count(), 2, "only the page's own");
        assert!(!page.contains("<img"));
        assert_eq!(
            data(&page)["frames"]
                .as_array()
                .expect("an array")
                .iter()
                .filter(|f| f.as_str() == Some("f</script><b>"))
                .count(),
            1
        );
    }

    #[test]
    fn one_report_charts_its_history_and_a_series_charts_across_exports() {
        // One report: the rows carrying a history are the chart's lines
        let mut report = sample_report();
        report.stacks[0].history = vec![(1.0, 100), (2.0, 200), (3.0, 300)];
        let page = Page::new(&[ReportFile::from(&report)], &[String::new()]);
        assert_eq!(page.chart.x_label, "seconds since attach");
        assert_eq!(page.chart.series.len(), 1);
        assert_eq!(page.chart.series[0].points, report.stacks[0].history);

        // Three snapshots of one trace: each row's live bytes at each, by its frames
        let mut snapshots = Vec::new();
        for (i, bytes) in [1000u64, 2000, 3000].into_iter().enumerate() {
            let mut snap = ReportFile::from(&sample_report());
            snap.duration_s = 10.0 * (i + 1) as f64;
            snap.stacks[0].live_bytes = bytes;
            snapshots.push(snap);
        }
        // The first row is missing from the second snapshot: 0 there
        snapshots[1].stacks.remove(0);
        let page = Page::new(&snapshots, &["a".into(), "b".into(), "c".into()]);
        assert_eq!(page.chart.x_label, "seconds since attach");
        let first = page
            .chart
            .series
            .iter()
            .find(|s| s.row == 0)
            .expect("the first row charted");
        assert_eq!(first.points, vec![(10.0, 1000), (20.0, 0), (30.0, 3000)]);
        assert!(
            page.header
                .iter()
                .any(|(name, value)| name == "Snapshots" && value.starts_with("3 exports"))
        );
    }

    #[test]
    fn ten_thousand_rows_make_a_small_page() {
        // 10,000 rows of 24 frames sharing their outer frames
        let mut report = sample_report();
        let template = report.stacks[0].clone();
        report.stacks = (0..10_000u64)
            .map(|i| {
                let frames = (0..24u64).map(|level| {
                    let mut f = crate::report::Frame::unknown(level);
                    // Paths branch at the 10 innermost frames.
                    f.function = Some(if level < 10 {
                        format!("path_{level}_{}", (i >> level) & 1)
                    } else {
                        format!("outer_function_{level}")
                    });
                    f
                });
                crate::report::StackReport {
                    id: i,
                    live_bytes: 64,
                    frames: crate::report::shared(frames),
                    ..template.clone()
                }
            })
            .collect();
        let started = std::time::Instant::now();
        let page = html(&report);
        assert!(
            page.len() < 1_000_000,
            "{} bytes for 10,000 rows",
            page.len()
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn no_export_is_an_error() {
        assert!(write_series(&[], &[], Vec::new()).is_err());
    }
}
