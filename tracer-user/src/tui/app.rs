//! The live view's state. [`super::update::update`] is its only mutator; [`super::ui`] reads it
//! to draw.

use std::time::Instant;

use ratatui::layout::Size;

use super::{
    layout,
    rows::{Baseline, Grouping, Row, RowKey, SortKey},
};
use crate::tui::snapshot::{MAX_WANTED, Snapshot};

/// What keys do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Keys move through the table and run commands.
    #[default]
    Normal,
    /// Keys edit the filter.
    Filter,
    /// The key help is shown; any key closes it.
    Help,
}

/// A footer message that disappears after a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    /// What to say.
    pub(crate) text: String,
    /// Whether it reports a failure.
    pub(crate) error: bool,
    /// When it goes away.
    pub(crate) expires: Instant,
}

/// The live view's state.
#[derive(Debug)]
pub(crate) struct App {
    /// The traced process, shown before the first snapshot.
    pub(crate) pid: u32,
    /// The snapshot on screen.
    pub(crate) snapshot: Option<Snapshot>,
    /// The newest snapshot received while paused, shown on resume.
    pub(crate) pending: Option<Snapshot>,
    /// Why tracing ended, once a snapshot said so.
    pub(crate) ended: Option<String>,
    /// The session stopped sending without saying why.
    pub(crate) disconnected: bool,
    /// What keys do.
    pub(crate) mode: Mode,
    /// The table's order.
    pub(crate) sort: SortKey,
    /// How stacks are gathered into rows.
    pub(crate) grouping: Grouping,
    /// The display is frozen on `snapshot`.
    pub(crate) paused: bool,
    /// Live figures to show changes since.
    pub(crate) baseline: Option<Baseline>,
    /// Case-insensitive substring of a function or module name; empty shows every stack.
    pub(crate) filter: String,
    /// The table's rows for `snapshot` and the settings above.
    pub(crate) rows: Vec<Row>,
    /// Index of the selected row (0 when there are none).
    pub(crate) selected: usize,
    /// What the selected row stands for, to keep it selected when the rows change.
    pub(crate) selected_key: Option<RowKey>,
    /// The id of the selected row's biggest stack, to select its group when the grouping changes.
    pub(crate) selected_stack: Option<u64>,
    /// Index of the first row on screen.
    pub(crate) offset: usize,
    /// Whether the detail pane is open.
    pub(crate) detail_open: bool,
    /// First line of the detail pane on screen.
    pub(crate) detail_scroll: usize,
    /// A transient footer message.
    pub(crate) message: Option<Message>,
    /// The latest time the run loop reported.
    pub(crate) now: Instant,
    /// The terminal's size.
    pub(crate) size: Size,
}

impl App {
    /// The state before any snapshot, for a terminal of `size` at `now`.
    pub(crate) fn new(pid: u32, size: Size, now: Instant) -> Self {
        Self {
            pid,
            snapshot: None,
            pending: None,
            ended: None,
            disconnected: false,
            mode: Mode::Normal,
            sort: SortKey::default(),
            grouping: Grouping::default(),
            paused: false,
            baseline: None,
            filter: String::new(),
            rows: Vec::new(),
            selected: 0,
            selected_key: None,
            selected_stack: None,
            offset: 0,
            detail_open: false,
            detail_scroll: 0,
            message: None,
            now,
            size,
        }
    }

    /// The selected row, if there are rows.
    pub(crate) fn selected_row(&self) -> Option<&Row> {
        self.rows.get(self.selected)
    }

    /// How many rows the table shows at the current size.
    pub(crate) fn page_rows(&self) -> usize {
        layout::table_body_rows(self.size, self.detail_open)
    }

    /// Ids of the stacks of the rows on screen (each row's members), at most
    /// [`MAX_WANTED`]: the session sends their series with the next snapshots.
    pub(crate) fn stacks_on_screen(&self) -> Vec<u64> {
        let Some(snapshot) = &self.snapshot else {
            return Vec::new();
        };
        self.rows
            .iter()
            .skip(self.offset)
            .take(self.page_rows())
            .flat_map(|row| row.members.iter())
            .filter_map(|&i| snapshot.report.stacks.get(i).map(|s| s.id))
            .take(MAX_WANTED)
            .collect()
    }
}
