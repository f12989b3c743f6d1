//! Drawing: [`render`] turns an [`App`] into a frame. Pure (no I/O, no clock); where each part
//! goes is [`super::layout`]'s, shared with the paging and scrolling keys.
//!
//! ```text
//! leaktrace  pid 4242  ./server --port 8080                         attached 12.8s   header
//! live 1.6 MiB in 45 allocs   RSS 24.0 MiB   48211 allocs/s   48002 frees/s
//! lost 7   unmatched frees 12   unwind fp   tracer 3.3 MiB           Δ since 5.0s
//!  7 stacks ──────────────────────────────────────────────────────────────────────  table
//!       live ▼   count     growth/h  trend    age verdict   allocated at
//! >    1.5 MiB       3 +450.0 MiB/h ▅▆▆▇██  12.5s leak      grow_buffer ← buffer…
//!  stack detail ─ J/K scroll ─────────────────────────────────────────────────────  detail
//! leak  +128.0 KiB/s, R² 1.00  ages <10s:2 <1m:1                                   (Enter)
//! 1.5 MiB live in 3 allocs, oldest 12.5s; 7 allocs (3.0 MiB) since attach
//! #0 grow_buffer (server) /src/buffer.c:42 [inlined]
//!  PAUSED   filter /alloc  exported 2 stacks to ./leaktrace-4242-1700000000.json  status
//! q quit ? help ⏎ close / filter s sort g group p pause b baseline e export        keys
//! ```

use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Layout, Position, Rect},
    style::Style,
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, HighlightSpacing, Paragraph, Row, Table, TableState},
};

use super::{
    app::{App, Mode},
    detail::detail_lines,
    format::{self, thousands},
    layout::{TABLE_CHROME, areas},
    rows::{Grouping, SortKey, describe},
    style::{label, value, verdict_style},
};
use crate::{export::human_bytes, tui::snapshot::Snapshot};

/// Terminals at least this wide get the wide columns (growth per second and per hour, a longer
/// sparkline).
const WIDE: u16 = 110;

/// Draws the whole screen.
pub(crate) fn render(app: &App, frame: &mut Frame<'_>) {
    let area = frame.area();
    let areas = areas(area, app.detail_open);
    render_header(app, frame, areas.header);
    render_table(app, frame, areas.table);
    if app.detail_open {
        render_detail(app, frame, areas.detail);
    }
    render_status(app, frame, areas.status);
    render_keys(app, frame, areas.keys);
    if app.mode == Mode::Help {
        render_help(frame, area);
    }
}

fn render_header(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let [first, second, third] = Layout::vertical([Constraint::Length(1); 3]).areas(area);
    let title = vec![
        Span::styled("leaktrace", Style::new().bold().cyan()),
        label("  pid "),
        value(app.pid.to_string()),
    ];
    let Some(snapshot) = &app.snapshot else {
        frame.render_widget(Line::from(title), first);
        frame.render_widget(Line::from(label("waiting for the first snapshot…")), second);
        return;
    };
    let report = &snapshot.report;
    let totals = &report.totals;

    let attached = Line::from(vec![
        label("attached "),
        value(format::age(report.duration_s)),
    ]);
    let mut title = title;
    if report.processes.len() > 1 {
        title.push(value(format!(" +{}", report.processes.len() - 1)));
        title.push(label(" processes"));
    }
    title.push(Span::raw("  "));
    title.push(Span::raw(
        crate::export::one_line(&report.command).into_owned(),
    ));
    render_left_right(frame, first, Line::from(title), attached);

    let rss = snapshot
        .target_rss_bytes
        .map_or_else(|| "?".to_owned(), human_bytes);
    frame.render_widget(
        Line::from(vec![
            label("live "),
            value(human_bytes(totals.live_bytes)),
            label(" in "),
            value(totals.live_allocs.to_string()),
            label(if totals.live_allocs == 1 {
                " alloc   RSS "
            } else {
                " allocs   RSS "
            }),
            value(rss),
            label("   "),
            value(format!("{:.0}", snapshot.allocs_per_s)),
            label(" allocs/s   "),
            value(format!("{:.0}", snapshot.frees_per_s)),
            label(" frees/s"),
        ]),
        second,
    );

    let lost = if totals.lost_events > 0 {
        Span::styled(
            format!("lost {}", totals.lost_events),
            Style::new().bold().white().on_red(),
        )
    } else {
        Span::styled("lost 0", Style::new().dark_gray())
    };
    let health = Line::from(vec![
        lost,
        label("   unmatched frees "),
        value(totals.unmatched_frees.to_string()),
        label("   unwind "),
        value(crate::export::one_line(&report.unwind).into_owned()),
        label(" (tables "),
        value(human_bytes(report.diagnostics.get("unwind_table_bytes"))),
        label(")   tracer "),
        value(human_bytes(report.diagnostics.get("tracer_memory_bytes"))),
    ]);
    let health = match report.sample_bytes {
        Some(mean) => {
            let mut spans = health.spans;
            spans.push(Span::styled(
                format!("   sampled every {} (estimates)", human_bytes(mean)),
                Style::new().bold().yellow(),
            ));
            Line::from(spans)
        }
        None => health,
    };
    let health = if report.estimates.is_empty() {
        health
    } else {
        let mut spans = health.spans;
        for e in &report.estimates {
            spans.push(Span::styled(
                format!(
                    "   ({}) rows sampled every {} (estimates)",
                    e.allocator,
                    human_bytes(e.sample_bytes)
                ),
                Style::new().bold().yellow(),
            ));
        }
        Line::from(spans)
    };
    let coverage = &report.coverage;
    let health = if coverage.warning.is_some() {
        let mut spans = health.spans;
        spans.push(Span::styled(
            format!(
                "   NOT TRACED {}",
                human_bytes(
                    coverage
                        .anon_growth_bytes
                        .saturating_sub(coverage.traced_live_bytes)
                )
            ),
            Style::new().bold().white().on_red(),
        ));
        Line::from(spans)
    } else {
        health
    };
    // Figures made worse at a bound or by a skipped file: named, so nothing degrades unseen.
    let degraded: Vec<String> = report
        .diagnostics
        .degradations()
        .map(|h| format!("{} {}", h.name, h.value))
        .collect();
    let health = if degraded.is_empty() {
        health
    } else {
        let mut spans = health.spans;
        spans.push(Span::styled(
            format!("   degraded: {}", degraded.join(", ")),
            Style::new().bold().yellow(),
        ));
        Line::from(spans)
    };
    let baseline = app.baseline.as_ref().map_or_else(Line::default, |b| {
        Line::from(Span::styled(
            format!("Δ since {}", format::age(b.at_s)),
            Style::new().bold().yellow(),
        ))
    });
    render_left_right(frame, third, health, baseline);
}

/// Renders `left` and `right` on one line, `right` aligned to the end and never covered.
fn render_left_right(frame: &mut Frame<'_>, area: Rect, left: Line<'_>, right: Line<'_>) {
    let right_width = u16::try_from(right.width()).unwrap_or(u16::MAX);
    let [left_area, right_area] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(right_width)])
            .spacing(1)
            .areas(area);
    frame.render_widget(left, left_area);
    frame.render_widget(right.alignment(Alignment::Right), right_area);
}

/// Widths of the table's columns for a terminal `width` wide.
struct Columns {
    wide: bool,
    trend: u16,
    description: usize,
    widths: [Constraint; 7],
}

impl Columns {
    /// Column spacing.
    const GAP: u16 = 1;
    /// Width of the highlight symbol in front of every row.
    const SYMBOL: u16 = 2;

    fn for_width(width: u16, baseline: bool) -> Self {
        let wide = width >= WIDE;
        // A change since the baseline has a sign: "+1023.9 KiB".
        let live = if baseline { 11 } else { 10 };
        // Narrow terminals get a shorter sparkline, to leave room for the description.
        let (count, growth, trend) = if wide { (8, 25, 16) } else { (7, 12, 6) };
        let age = 6;
        // "growing", or the header "verdict ▼".
        let verdict = 9;
        let fixed = Self::SYMBOL + live + count + growth + trend + age + verdict + 6 * Self::GAP;
        Self {
            wide,
            trend,
            description: usize::from(width.saturating_sub(fixed)),
            widths: [
                Constraint::Length(live),
                Constraint::Length(count),
                Constraint::Length(growth),
                Constraint::Length(trend),
                Constraint::Length(age),
                Constraint::Length(verdict),
                Constraint::Fill(1),
            ],
        }
    }
}

/// The table's title: every row counted, what the filter or grouping kept of every stack, and
/// which rows are on screen when they do not all fit.
fn table_title(app: &App, snapshot: &Snapshot, page: usize) -> String {
    let total = snapshot.report.stacks.len();
    let groups = app.grouping.count(app.rows.len());
    let mut title = if app.filter.is_empty() {
        if app.grouping == Grouping::Stack {
            format!(" {groups}")
        } else {
            format!(" {groups} of {} stacks", thousands(total))
        }
    } else {
        let matched: usize = app.rows.iter().map(|row| row.members.len()).sum();
        let matching = format!(
            "{} of {} stacks match /{}",
            thousands(matched),
            thousands(total),
            app.filter
        );
        if app.grouping == Grouping::Stack {
            format!(" {matching}")
        } else {
            format!(" {groups} · {matching}")
        }
    };
    if app.rows.len() > page {
        let first = app.offset + 1;
        let last = (app.offset + page).min(app.rows.len());
        title.push_str(&format!(
            " · {}–{} on screen",
            thousands(first),
            thousands(last)
        ));
    }
    // Rows a cut report leaves out (none today: the session sends every row).
    let omitted = &snapshot.report.omitted;
    if omitted.rows > 0 {
        title.push_str(&format!(
            " · {} more stacks ({}) not sent to the view",
            omitted.rows,
            human_bytes(omitted.live_bytes)
        ));
    }
    title.push(' ');
    title
}

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).alignment(Alignment::Right))
}

fn render_table(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let columns = Columns::for_width(area.width, app.baseline.is_some());
    let marked = |text: &str, key: SortKey| {
        if app.sort == key {
            format!("{text} ▼")
        } else {
            text.to_owned()
        }
    };
    let delta = if app.baseline.is_some() { "Δ " } else { "" };
    let growth = if columns.wide { "growth" } else { "growth/h" };
    let header = Row::new([
        right(marked(&format!("{delta}live"), SortKey::LiveBytes)),
        right(marked(&format!("{delta}count"), SortKey::Count)),
        right(marked(growth, SortKey::Growth)),
        Cell::from("trend"),
        right(marked("age", SortKey::Age)),
        Cell::from(marked("verdict", SortKey::Verdict)),
        Cell::from("allocated at"),
    ])
    .style(Style::new().bold());

    let page = usize::from(area.height.saturating_sub(TABLE_CHROME));
    let title = match &app.snapshot {
        Some(snapshot) => table_title(app, snapshot, page),
        None => " stacks ".to_owned(),
    };
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(Style::new().dark_gray())
        .title(Span::styled(title, Style::new().bold()));

    let visible = app.rows.iter().skip(app.offset).take(page);
    // Described here, for the rows on screen only: a description is made from the frames.
    let describe_row = |row| {
        app.snapshot
            .as_ref()
            .map(|snapshot| describe(&snapshot.report, row))
            .unwrap_or_default()
    };
    let table_rows = visible.map(|row| {
        let (live, count) = match row.delta {
            Some((bytes, count)) => (
                crate::export::signed_bytes(bytes),
                format::signed_count(count),
            ),
            None => (human_bytes(row.live_bytes), row.live_allocs.to_string()),
        };
        Row::new([
            right(live),
            right(count),
            right(format::growth(row.growth_per_s, columns.wide)),
            Cell::from(Span::styled(
                format::sparkline(&row.spark, usize::from(columns.trend)),
                Style::new().cyan(),
            )),
            right(row.oldest_age_s.map_or_else(|| "–".to_owned(), format::age)),
            Cell::from(Span::styled(
                format::verdict_cell(row.verdict),
                verdict_style(row.verdict),
            )),
            Cell::from(format::ellipsize(&describe_row(row), columns.description).into_owned()),
        ])
    });
    let table = Table::new(table_rows, columns.widths)
        .header(header)
        .block(block)
        .column_spacing(Columns::GAP)
        .highlight_symbol("> ")
        .highlight_spacing(HighlightSpacing::Always)
        .row_highlight_style(Style::new().reversed());
    let mut state = TableState::default();
    if !app.rows.is_empty() {
        state.select(Some(app.selected.saturating_sub(app.offset)));
    }
    frame.render_stateful_widget(table, area, &mut state);

    if app.rows.is_empty() {
        let empty = if app.snapshot.as_ref().is_none() {
            "waiting for data…".to_owned()
        } else if !app.filter.is_empty() {
            format!("no stacks match /{}", app.filter)
        } else {
            "no live allocations yet".to_owned()
        };
        let body = Rect {
            y: area.y.saturating_add(TABLE_CHROME),
            height: area.height.saturating_sub(TABLE_CHROME),
            ..area
        };
        frame.render_widget(
            Paragraph::new(Span::styled(empty, Style::new().dark_gray()))
                .alignment(Alignment::Center),
            body,
        );
    }
}

fn render_detail(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(Style::new().dark_gray())
        .title(Span::styled(" stack detail ", Style::new().bold()))
        .title(label(" J/K scroll "));
    let lines = detail_lines(app);
    let visible = usize::from(area.height.saturating_sub(1));
    let scroll = app.detail_scroll.min(lines.len().saturating_sub(visible));
    let scroll = u16::try_from(scroll).unwrap_or(u16::MAX);
    frame.render_widget(Paragraph::new(lines).block(block).scroll((scroll, 0)), area);
}

fn render_status(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let banner = Style::new().bold().black().on_yellow();
    let mut spans = Vec::new();
    if let Some(reason) = &app.ended {
        let reason = crate::export::one_line(reason).into_owned();
        spans.push(Span::styled(
            format!(" {reason} — press q to quit "),
            banner,
        ));
    } else if app.disconnected {
        spans.push(Span::styled(" tracing stopped — press q to quit ", banner));
    }
    if app.paused {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            " PAUSED ",
            Style::new().bold().black().on_cyan(),
        ));
    }
    let mut cursor = None;
    if app.mode == Mode::Filter || !app.filter.is_empty() {
        spans.push(Span::raw(" "));
        spans.push(label("filter "));
        let text = format!("/{}", app.filter);
        spans.push(Span::styled(text, Style::new().bold().yellow()));
        if app.mode == Mode::Filter {
            let width: usize = spans.iter().map(Span::width).sum();
            cursor = Some(width);
        }
    }
    if let Some(message) = &app.message {
        let style = if message.error {
            Style::new().bold().red()
        } else {
            Style::new().green()
        };
        spans.push(Span::raw("  "));
        spans.push(Span::styled(message.text.clone(), style));
    }
    frame.render_widget(Line::from(spans), area);
    if let Some(width) = cursor {
        let x = area
            .x
            .saturating_add(u16::try_from(width).unwrap_or(u16::MAX))
            .min(area.right().saturating_sub(1));
        frame.set_cursor_position(Position::new(x, area.y));
    }
}

fn render_keys(app: &App, frame: &mut Frame<'_>, area: Rect) {
    let keys: &[(&str, &str)] = match app.mode {
        Mode::Help => &[("any key", "closes the help")],
        Mode::Filter => &[
            ("type", "to filter"),
            ("⏎", "keep"),
            ("Esc", "clear"),
            ("⌫", "delete"),
            ("↑↓", "move"),
        ],
        Mode::Normal if app.detail_open => &[
            ("q", "quit"),
            ("?", "help"),
            ("⏎", "close"),
            ("/", "filter"),
            ("s", "sort"),
            ("g", "group"),
            ("p", "pause"),
            ("b", "baseline"),
            ("e", "export"),
            ("h", "html"),
        ],
        Mode::Normal => &[
            ("q", "quit"),
            ("?", "help"),
            ("⏎", "detail"),
            ("/", "filter"),
            ("s", "sort"),
            ("g", "group"),
            ("p", "pause"),
            ("b", "baseline"),
            ("e", "export"),
            ("h", "html"),
        ],
    };
    let gap = if area.width >= 90 { "  " } else { " " };
    let mut spans = Vec::with_capacity(keys.len() * 3);
    let mut used = 0;
    for (i, (key, what)) in keys.iter().enumerate() {
        // Keys that do not fit whole are left out (the help lists every key).
        let width = key.chars().count() + 1 + what.chars().count();
        let needed = if i > 0 { gap.len() + width } else { width };
        if used + needed > usize::from(area.width) {
            break;
        }
        used += needed;
        if i > 0 {
            spans.push(Span::raw(gap));
        }
        spans.push(Span::styled(*key, Style::new().bold().yellow()));
        spans.push(label(" "));
        spans.push(label(*what));
    }
    frame.render_widget(Line::from(spans), area);
}

/// Every key, for the help overlay.
const HELP: &[(&str, &str)] = &[
    ("↑ ↓  k j", "move the selection"),
    ("PgUp PgDn", "move by a page"),
    ("Home End", "first / last row"),
    ("Enter", "open / close the stack detail"),
    ("Shift+↑ ↓  K J", "scroll the stack detail"),
    ("/", "filter by function or module name"),
    ("", "(Enter keeps, Esc clears, Backspace edits)"),
    ("Esc", "close the detail, else clear the filter"),
    ("s", "sort: live bytes, growth, count, age, verdict"),
    ("g", "group: stack, allocating function, module"),
    ("p", "pause / resume the display"),
    ("b", "set / clear a baseline: show changes since"),
    ("e", "export the stacks shown (filter applies)"),
    ("h", "write them as an HTML report (flame graph, chart)"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

fn render_help(frame: &mut Frame<'_>, area: Rect) {
    let key_width = HELP
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!(" {key:key_width$}  "), Style::new().bold().yellow()),
                Span::raw(*what),
            ])
        })
        .collect();
    let content_width = lines.iter().map(Line::width).max().unwrap_or(0) + 1;
    let width = u16::try_from(content_width + 2)
        .unwrap_or(u16::MAX)
        .min(area.width);
    let height = u16::try_from(lines.len() + 2)
        .unwrap_or(u16::MAX)
        .min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(Span::styled(" keys ", Style::new().bold()))
                .title_bottom(label(" any key closes ")),
        ),
        popup,
    );
}
