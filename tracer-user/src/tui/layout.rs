//! Where each part of the live view goes on a screen of a given size: shared by drawing and by
//! the paging and scrolling keys, so that both agree with what is on screen.
use ratatui::layout::{Constraint, Layout, Position, Rect, Size};

/// Lines of the header.
const HEADER_ROWS: u16 = 3;

/// Lines of the table that are not rows: its top rule and the column names.
pub(crate) const TABLE_CHROME: u16 = 2;

/// Where each part of the screen goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Areas {
    /// Process, totals and health.
    pub(crate) header: Rect,
    /// The stacks table, with its rule and column names.
    pub(crate) table: Rect,
    /// The detail pane, with its rule (empty when closed).
    pub(crate) detail: Rect,
    /// End of tracing, PAUSED, the filter and transient messages.
    pub(crate) status: Rect,
    /// Key hints.
    pub(crate) keys: Rect,
}

/// The screen's layout in `area`.
pub(crate) fn areas(area: Rect, detail_open: bool) -> Areas {
    let [header, main, status, keys] = Layout::vertical([
        Constraint::Length(HEADER_ROWS),
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let (table, detail) = if detail_open {
        let [table, detail] =
            Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(main);
        (table, detail)
    } else {
        (main, Rect::new(main.x, main.bottom(), main.width, 0))
    };
    Areas {
        header,
        table,
        detail,
        status,
        keys,
    }
}

/// Rows of stacks the table shows in a terminal of `size`.
pub(crate) fn table_body_rows(size: Size, detail_open: bool) -> usize {
    let table = areas(Rect::from((Position::ORIGIN, size)), detail_open).table;
    usize::from(table.height.saturating_sub(TABLE_CHROME))
}

/// Lines of text the (open) detail pane shows in a terminal of `size`.
pub(crate) fn detail_body_rows(size: Size) -> usize {
    let detail = areas(Rect::from((Position::ORIGIN, size)), true).detail;
    usize::from(detail.height.saturating_sub(1))
}
