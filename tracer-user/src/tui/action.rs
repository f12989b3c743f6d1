//! Intents for [`super::update::update`]: from keys ([`super::input`]), from the session's
//! snapshots and from the run loop (time, terminal size, export results).

use std::{path::PathBuf, time::Instant};

use ratatui::layout::Size;

use crate::tui::snapshot::Snapshot;

/// Something that happened, for [`super::update::update`] to apply.
#[derive(Clone, Debug)]
pub(crate) enum Action {
    /// The newest snapshot from the session (boxed: it is much larger than the other variants).
    Snapshot(Box<Snapshot>),
    /// The session dropped its sender without sending a snapshot with `ended` set.
    Disconnected,
    /// Time passed: transient messages expire.
    Tick(Instant),
    /// The terminal has this size now.
    Resize(Size),
    /// Leave the live view (`q`, Ctrl-C).
    Quit,
    /// Select the row above.
    Up,
    /// Select the row below.
    Down,
    /// Select a page of rows up.
    PageUp,
    /// Select a page of rows down.
    PageDown,
    /// Select the first row.
    First,
    /// Select the last row.
    Last,
    /// Open or close the detail pane (Enter).
    ToggleDetail,
    /// Scroll the detail pane up a line (Shift+Up, `K`).
    DetailUp,
    /// Scroll the detail pane down a line (Shift+Down, `J`).
    DetailDown,
    /// Esc in the table: close the detail pane, else clear the filter.
    Back,
    /// Start editing the filter (`/`).
    StartFilter,
    /// Append a character to the filter.
    FilterPush(char),
    /// Remove the filter's last character (Backspace).
    FilterPop,
    /// Keep the filter and go back to the table (Enter).
    FilterKeep,
    /// Clear the filter and go back to the table (Esc).
    FilterClear,
    /// Next sort order (`s`).
    CycleSort,
    /// Next grouping (`g`).
    CycleGrouping,
    /// Freeze or unfreeze the display (`p`).
    TogglePause,
    /// Set a baseline now, or clear it (`b`).
    ToggleBaseline,
    /// Export the current view (`e`).
    Export,
    /// Write the current view as an HTML report (`h`).
    ExportHtml,
    /// The export asked for by [`super::update::Effect::Export`] finished.
    Exported(Result<Exported, String>),
    /// Show the key help (`?`).
    ShowHelp,
    /// Close the key help (any key).
    CloseHelp,
}

/// A finished export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exported {
    /// Stacks written.
    pub(crate) stacks: usize,
    /// Where.
    pub(crate) path: PathBuf,
}
