//! The detail pane's text: the selected row's verdict, figures and call sites, then its biggest
//! stack one frame per line.
use ratatui::{
    style::Style,
    text::{Line, Span},
};

use super::{
    app::App,
    format, rows,
    style::{label, verdict_style},
};
use crate::{
    export::human_bytes,
    report::{CallSite, StackReport},
};

/// The detail pane's text for the selected row: a summary, then the full stack of the row's
/// biggest stack, one frame per line, innermost first.
pub(crate) fn detail_lines(app: &App) -> Vec<Line<'static>> {
    let (Some(snapshot), Some(row)) = (&app.snapshot, app.selected_row()) else {
        return vec![Line::from(label("no row selected"))];
    };
    let Some(stack) = row
        .members
        .first()
        .and_then(|&i| snapshot.report.stacks.get(i))
    else {
        return vec![Line::from(label("no row selected"))];
    };
    let mut lines = Vec::with_capacity(stack.frames.len() + 4);
    if !matches!(row.key, rows::RowKey::Stack(_)) {
        lines.push(Line::from(vec![
            Span::styled(
                format!("group of {} stacks, ", row.members.len()),
                Style::new().bold(),
            ),
            Span::styled(row.verdict.as_str(), verdict_style(row.verdict).bold()),
            Span::styled(
                format!(
                    ": {} live in {}; its biggest stack:",
                    human_bytes(row.live_bytes),
                    format::allocs(row.live_allocs)
                ),
                Style::new().bold(),
            ),
        ]));
    }
    let mut verdict = vec![Span::styled(
        stack.verdict.as_str(),
        verdict_style(stack.verdict).bold(),
    )];
    let details = [
        format::fitted_growth(stack.growth_bytes_per_s, stack.growth_r2),
        format::age_buckets(&stack.ages),
        (!stack.allocator.is_empty()).then(|| format!("via {}", stack.allocator)),
    ];
    for detail in details.into_iter().flatten() {
        verdict.push(label("  "));
        verdict.push(label(detail));
    }
    lines.push(Line::from(verdict));
    let oldest = stack
        .oldest_age_s
        .map_or_else(|| "–".to_owned(), format::age);
    lines.push(Line::from(label(format!(
        "{} live in {}, oldest {oldest}; {} ({}) since attach",
        human_bytes(stack.live_bytes),
        format::allocs(stack.live_allocs),
        format::allocs(stack.total_allocs),
        human_bytes(stack.total_bytes),
    ))));
    if let [first, rest @ ..] = stack.call_sites.as_slice()
        && !rest.is_empty()
    {
        lines.push(Line::from(label(call_sites_line(stack, first, rest))));
    }
    if stack.frames.is_empty() {
        lines.push(Line::from("(no stack recorded)"));
    }
    for (i, frame) in stack.frames.iter().enumerate() {
        let text = format::frame_line(i, frame);
        lines.push(if frame.inlined {
            Line::styled(text, Style::new().italic())
        } else {
            Line::from(text)
        });
    }
    if stack.truncated {
        lines.push(Line::from(label(format!(
            "… truncated after {} frames",
            stack.frames.len()
        ))));
    }
    if stack.incomplete {
        lines.push(Line::from(label(
            "… unwinding stopped early (see diagnostics)",
        )));
    }
    lines
}

/// What a row merged: `15 call sites (--group-by address shows each), apart at #3 resolve:
/// 0x55d0c0de1234 8.0 KiB, 0x55d0c0de1250 8.0 KiB, …`.
fn call_sites_line(stack: &StackReport, first: &CallSite, rest: &[CallSite]) -> String {
    let mut text = format!(
        "{} call sites (--group-by address shows each)",
        rest.len() + 1
    );
    let Some(at) = rest.iter().filter_map(|c| first.differs_at(c)).min() else {
        return text;
    };
    let name = stack
        .frames
        .get(at)
        .map_or_else(String::new, |f| format!(" {}", f.label()));
    text.push_str(&format!(", apart at #{at}{name}:"));
    const SHOWN: usize = 4;
    for site in std::iter::once(first).chain(rest).take(SHOWN) {
        let addr = site.addrs.get(at).copied().unwrap_or_default();
        text.push_str(&format!(" {addr:#x} {},", human_bytes(site.live_bytes)));
    }
    text.pop();
    if rest.len() + 1 > SHOWN {
        text.push_str(" …");
    }
    text
}
