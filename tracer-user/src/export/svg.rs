//! A flame graph of the live heap (`--format svg`): the folded stacks ([`super::folded`]), each
//! frame as wide as the live bytes allocated through it, drawn by inferno as
//! `inferno-flamegraph --countname bytes` would, with the run in its title. The SVG is
//! interactive in a browser (click to zoom, Ctrl-F to search) and needs no network.
use std::io::{self, Write};

use inferno::flamegraph::{
    self, Options,
    color::{BasicPalette, Palette},
};

use super::{folded, human_bytes};
use crate::report::Report;

/// Writes the flame graph of `report`'s live bytes to `out`.
pub fn write<W: Write>(report: &Report, mut out: W) -> io::Result<()> {
    let lines: Vec<String> = folded::lines(report)
        .into_iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(stack, bytes)| format!("{stack} {bytes}"))
        .collect();
    let title = format!(
        "leaktrace: live heap of pid {} ({})",
        report.pid,
        super::one_line(&report.command)
    );
    let totals = &report.totals;
    let mut subtitle = format!(
        "{} live in {} blocks after {:.0} s; each frame as wide as the live bytes allocated through it",
        human_bytes(totals.live_bytes),
        totals.live_allocs,
        report.duration_s
    );
    if report.sample_bytes.is_some() {
        subtitle.push_str(" (estimated from samples)");
    }
    if totals.lost_events > 0 {
        subtitle.push_str(&format!("; {} events lost", totals.lost_events));
    }
    if lines.is_empty() {
        // inferno draws an error for no input: say what it means here instead.
        return write!(
            out,
            "<?xml version=\"1.0\" standalone=\"no\"?>\n\
             <svg version=\"1.1\" width=\"1200\" height=\"80\" xmlns=\"http://www.w3.org/2000/svg\">\n\
             <text x=\"600\" y=\"30\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"17\">{}</text>\n\
             <text x=\"600\" y=\"60\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"12\">no live bytes when the report was made</text>\n\
             </svg>\n",
            escape(&title)
        );
    }
    let mut options = Options::default();
    options.title = title;
    options.subtitle = Some(subtitle);
    options.count_name = "bytes".to_owned();
    options.name_type = "Function:".to_owned();
    options.colors = Palette::Basic(BasicPalette::Mem);
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .map_err(io::Error::other)?;
    out.flush()
}

/// `text` with XML's special characters escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::{super::tests::sample_report, *};

    fn svg(report: &Report) -> String {
        let mut out = Vec::new();
        write(report, &mut out).expect("writing to a Vec succeeds");
        String::from_utf8(out).expect("UTF-8 SVG")
    }

    #[test]
    fn the_flame_graph_spans_the_live_bytes_and_names_every_leaf() {
        let report = sample_report();
        let drawn = svg(&report);
        assert!(drawn.starts_with("<?xml"), "{drawn}");
        assert!(drawn.trim_end().ends_with("</svg>"));
        for leaf in ["grow_buffer", "[libfoo.so.1] +0x1234", "[2 more stacks]"] {
            assert!(drawn.contains(leaf), "SVG lacks {leaf}");
        }
        let total = report.totals.live_bytes;
        assert!(drawn.contains(&format!("total_samples=\"{total}\"")));
        assert!(drawn.contains("all (1,579,008 bytes, 100%)"));
        assert!(drawn.contains("live heap of pid"), "no title");
    }

    #[test]
    fn an_empty_heap_is_a_valid_svg_that_says_so() {
        let mut report = sample_report();
        report.stacks.clear();
        report.omitted = Default::default();
        let drawn = svg(&report);
        assert!(drawn.contains("no live bytes"), "{drawn}");
        assert!(drawn.trim_end().ends_with("</svg>"));
    }
}
