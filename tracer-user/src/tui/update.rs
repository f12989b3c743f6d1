//! [`update`]: the only function that changes [`App`].

use std::time::Duration;

use super::{
    action::{Action, Exported},
    app::{App, Message, Mode},
    detail::detail_lines,
    export::filtered_report,
    format, layout,
    rows::{Baseline, Grouping, View, build_rows},
};
use crate::{export::Format, report::Report, tui::snapshot::Snapshot};

/// How long a footer message stays.
pub(crate) const MESSAGE_TTL: Duration = Duration::from_secs(5);

/// How long a footer error stays.
pub(crate) const ERROR_TTL: Duration = Duration::from_secs(10);

/// What the run loop must do after an [`update`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Effect {
    /// Leave the live view.
    Quit,
    /// Write this report (the current view) and answer with [`Action::Exported`]: in this
    /// format, or the export format when `None`.
    Export(Box<Report>, Option<Format>),
}

/// Applies `action` to `app`.
pub(crate) fn update(app: &mut App, action: Action) -> Option<Effect> {
    let html = matches!(action, Action::ExportHtml);
    match action {
        Action::Tick(now) => {
            app.now = now;
            if app.message.as_ref().is_some_and(|m| m.expires <= now) {
                app.message = None;
            }
        }
        Action::Snapshot(snapshot) => receive(app, *snapshot),
        Action::Disconnected => app.disconnected = true,
        Action::Resize(size) => {
            app.size = size;
            keep_in_view(app);
        }
        Action::Quit => return Some(Effect::Quit),
        Action::Up => select(app, app.selected.saturating_sub(1)),
        Action::Down => select(app, app.selected.saturating_add(1)),
        Action::PageUp => select(app, app.selected.saturating_sub(app.page_rows().max(1))),
        Action::PageDown => select(app, app.selected.saturating_add(app.page_rows().max(1))),
        Action::First => select(app, 0),
        Action::Last => select(app, usize::MAX),
        Action::ToggleDetail => {
            app.detail_open = !app.detail_open;
            app.detail_scroll = 0;
            keep_in_view(app);
        }
        Action::DetailUp => app.detail_scroll = app.detail_scroll.saturating_sub(1),
        Action::DetailDown => {
            app.detail_scroll = app
                .detail_scroll
                .saturating_add(1)
                .min(max_detail_scroll(app));
        }
        Action::Back => {
            if app.detail_open {
                app.detail_open = false;
                app.detail_scroll = 0;
                keep_in_view(app);
            } else if !app.filter.is_empty() {
                app.filter.clear();
                refresh(app);
            }
        }
        Action::StartFilter => app.mode = Mode::Filter,
        Action::FilterPush(c) => {
            app.filter.push(c);
            refresh(app);
        }
        Action::FilterPop => {
            app.filter.pop();
            refresh(app);
        }
        Action::FilterKeep => app.mode = Mode::Normal,
        Action::FilterClear => {
            app.mode = Mode::Normal;
            app.filter.clear();
            refresh(app);
        }
        Action::CycleSort => {
            app.sort = app.sort.next();
            refresh(app);
        }
        Action::CycleGrouping => {
            app.grouping = app.grouping.next();
            // Merging processes means nothing when one is traced.
            let one_process = app
                .snapshot
                .as_ref()
                .is_none_or(|s| s.report.processes.is_empty());
            if app.grouping == Grouping::Path && one_process {
                app.grouping = app.grouping.next();
            }
            refresh(app);
        }
        Action::TogglePause => {
            app.paused = !app.paused;
            if !app.paused
                && let Some(snapshot) = app.pending.take()
            {
                show(app, snapshot);
            }
        }
        Action::ToggleBaseline => toggle_baseline(app),
        Action::Export | Action::ExportHtml => match &app.snapshot {
            Some(snapshot) => {
                let report = filtered_report(&snapshot.report, &app.filter);
                let format = html.then_some(Format::Html);
                return Some(Effect::Export(Box::new(report), format));
            }
            None => say(app, "nothing to export yet".to_owned(), false),
        },
        Action::Exported(Ok(Exported { stacks, path })) => {
            let noun = if stacks == 1 { "stack" } else { "stacks" };
            let text = format!("exported {stacks} {noun} to {}", path.display());
            say(app, text, false);
        }
        Action::Exported(Err(error)) => say(app, format!("export failed: {error}"), true),
        Action::ShowHelp => app.mode = Mode::Help,
        Action::CloseHelp => app.mode = Mode::Normal,
    }
    None
}

/// Shows a new snapshot, or keeps it for later while paused. Remembers why tracing ended either
/// way, so the footer says so at once.
fn receive(app: &mut App, snapshot: Snapshot) {
    if let Some(reason) = &snapshot.ended {
        app.ended = Some(reason.clone());
    }
    if app.paused {
        app.pending = Some(snapshot);
    } else {
        show(app, snapshot);
    }
}

/// Puts `snapshot` on screen.
fn show(app: &mut App, snapshot: Snapshot) {
    app.snapshot = Some(snapshot);
    refresh(app);
}

/// Sets a baseline from the snapshot on screen, or clears the one set.
fn toggle_baseline(app: &mut App) {
    if app.baseline.take().is_some() {
        say(app, "baseline cleared".to_owned(), false);
    } else if let Some(snapshot) = &app.snapshot {
        let baseline = Baseline::of(&snapshot.report);
        let text = format!("baseline set at {}", format::age(baseline.at_s));
        app.baseline = Some(baseline);
        say(app, text, false);
    } else {
        say(app, "no data for a baseline yet".to_owned(), false);
    }
    refresh(app);
}

/// Shows a transient footer message.
fn say(app: &mut App, text: String, error: bool) {
    let ttl = if error { ERROR_TTL } else { MESSAGE_TTL };
    app.message = Some(Message {
        text,
        error,
        expires: app.now + ttl,
    });
}

/// Rebuilds the rows after the snapshot or a view setting changed, keeping the same row
/// selected: the row with the same key, else the row holding the selected stack (when the
/// grouping changed), else the same position.
fn refresh(app: &mut App) {
    app.rows = match &app.snapshot {
        Some(snapshot) => build_rows(
            snapshot,
            View {
                filter: &app.filter,
                grouping: app.grouping,
                sort: app.sort,
                baseline: app.baseline.as_ref(),
            },
        ),
        None => Vec::new(),
    };
    let by_key = app
        .selected_key
        .as_ref()
        .and_then(|key| app.rows.iter().position(|row| &row.key == key));
    let by_stack = || {
        let id = app.selected_stack?;
        let stacks = &app.snapshot.as_ref()?.report.stacks;
        let index = stacks.iter().position(|s| s.id == id)?;
        app.rows.iter().position(|row| row.members.contains(&index))
    };
    let index = by_key.or_else(by_stack).unwrap_or(app.selected);
    select(app, index);
}

/// Selects row `index` (clamped to the rows), scrolls it into view, and restarts the detail
/// pane at its top when the selection moved to another row.
fn select(app: &mut App, index: usize) {
    if app.rows.is_empty() {
        // Keep what was selected: it comes back when the rows do (e.g. a filter is edited).
        app.selected = 0;
        app.offset = 0;
        app.detail_scroll = 0;
        return;
    }
    let index = index.min(app.rows.len() - 1);
    let row = &app.rows[index];
    let key = Some(row.key.clone());
    let stack = row.members.first().and_then(|&i| {
        let snapshot = app.snapshot.as_ref()?;
        snapshot.report.stacks.get(i).map(|s| s.id)
    });
    if key != app.selected_key {
        app.detail_scroll = 0;
    }
    app.selected = index;
    app.selected_key = key;
    app.selected_stack = stack;
    keep_in_view(app);
}

/// Scrolls the table so the selected row is on screen, without blank rows below the last one;
/// keeps the detail pane's scroll within its text.
fn keep_in_view(app: &mut App) {
    let page = app.page_rows().max(1);
    if app.selected < app.offset {
        app.offset = app.selected;
    } else if app.selected >= app.offset + page {
        app.offset = app.selected + 1 - page;
    }
    app.offset = app.offset.min(app.rows.len().saturating_sub(page));
    app.detail_scroll = app.detail_scroll.min(max_detail_scroll(app));
}

/// The largest useful detail scroll: the last line at the bottom of the pane.
fn max_detail_scroll(app: &App) -> usize {
    detail_lines(app)
        .len()
        .saturating_sub(layout::detail_body_rows(app.size))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ratatui::layout::Size;

    use super::*;
    use crate::tui::{
        rows::{Grouping, RowKey, SortKey},
        testing::{Clock, app, empty_snapshot, sample_snapshot, stack_index},
    };

    fn with_sample(clock: &Clock) -> App {
        let mut app = app(clock, 80, 24);
        update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));
        app
    }

    fn selected_key(app: &App) -> Option<RowKey> {
        app.selected_row().map(|r| r.key.clone())
    }

    #[test]
    fn snapshots_are_shown_and_rows_built() {
        let clock = Clock::new();
        let mut app = app(&clock, 80, 24);
        assert!(app.rows.is_empty());
        assert_eq!(app.selected_row(), None);

        update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));

        assert_eq!(app.rows.len(), 7);
        assert_eq!(selected_key(&app), Some(RowKey::Stack(1)));
        assert_eq!(app.selected_stack, Some(1));
        assert_eq!(app.ended, None);
    }

    #[test]
    fn selection_moves_and_clamps() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        let ids = |app: &App| selected_key(app);

        update(&mut app, Action::Up);
        assert_eq!(app.selected, 0);
        update(&mut app, Action::Down);
        update(&mut app, Action::Down);
        assert_eq!(ids(&app), Some(RowKey::Stack(5)));
        update(&mut app, Action::Last);
        assert_eq!(app.selected, 6);
        update(&mut app, Action::Down);
        assert_eq!(app.selected, 6);
        update(&mut app, Action::First);
        assert_eq!(app.selected, 0);
        update(&mut app, Action::PageDown);
        assert_eq!(app.selected, 6, "a page at 80x24 is more than 7 rows");
        update(&mut app, Action::PageUp);
        assert_eq!(app.selected, 0);
    }

    #[test]
    fn pages_scroll_the_table_on_small_terminals() {
        let clock = Clock::new();
        // 3 header + 2 table chrome + 2 footer lines leave 3 rows at height 10
        let mut app = app(&clock, 80, 10);
        update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));
        assert_eq!(app.page_rows(), 3);

        update(&mut app, Action::PageDown);
        assert_eq!((app.selected, app.offset), (3, 1));
        update(&mut app, Action::PageDown);
        assert_eq!((app.selected, app.offset), (6, 4));
        update(&mut app, Action::Up);
        update(&mut app, Action::Up);
        update(&mut app, Action::Up);
        assert_eq!((app.selected, app.offset), (3, 3));
        update(&mut app, Action::PageUp);
        assert_eq!((app.selected, app.offset), (0, 0));

        // A taller terminal shows every row from the top
        update(&mut app, Action::Last);
        update(&mut app, Action::Resize(Size::new(80, 40)));
        assert_eq!((app.selected, app.offset), (6, 0));
    }

    #[test]
    fn selection_follows_the_stack_across_snapshots() {
        // Given stack 5 selected
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        update(&mut app, Action::Down);
        update(&mut app, Action::Down);
        assert_eq!(selected_key(&app), Some(RowKey::Stack(5)));

        // When a snapshot moves it to the top
        let mut next = sample_snapshot();
        let i5 = stack_index(&next, 5);
        next.report.stacks[i5].live_bytes = 10 << 20;
        update(&mut app, Action::Snapshot(Box::new(next)));

        // Then it stays selected at its new place
        assert_eq!(selected_key(&app), Some(RowKey::Stack(5)));
        assert_eq!(app.selected, 0);

        // When it disappears, the selection keeps its position
        let mut next = sample_snapshot();
        next.report.stacks.retain(|s| s.id != 5);
        next.series.truncate(next.report.stacks.len());
        update(&mut app, Action::Snapshot(Box::new(next)));
        assert_eq!(app.selected, 0);
        assert_eq!(selected_key(&app), Some(RowKey::Stack(1)));

        // When the rows shrink below the selection, it is clamped
        update(&mut app, Action::Last);
        let mut next = sample_snapshot();
        next.report.stacks.truncate(2);
        update(&mut app, Action::Snapshot(Box::new(next)));
        assert_eq!(app.selected, 1);
    }

    #[test]
    fn grouping_cycles_and_keeps_the_selected_stack() {
        // Given stack 5 (allocating in alloc_buffer, in the server module) selected
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        update(&mut app, Action::Down);
        update(&mut app, Action::Down);

        // When grouping by function, then module, then stack again
        update(&mut app, Action::CycleGrouping);
        assert_eq!(app.grouping, Grouping::Function);
        assert_eq!(app.rows.len(), 6);
        assert_eq!(
            selected_key(&app),
            Some(RowKey::Function("alloc_buffer".to_owned()))
        );

        update(&mut app, Action::CycleGrouping);
        assert_eq!(app.grouping, Grouping::Module);
        assert_eq!(
            selected_key(&app),
            Some(RowKey::Module("/usr/bin/server".to_owned()))
        );

        // The selection followed the groups' biggest stacks: stack 4, then stack 1
        update(&mut app, Action::CycleGrouping);
        assert_eq!(app.grouping, Grouping::Stack);
        assert_eq!(selected_key(&app), Some(RowKey::Stack(1)));
    }

    #[test]
    fn sort_cycles_and_keeps_the_selection() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        update(&mut app, Action::Last);
        assert_eq!(selected_key(&app), Some(RowKey::Stack(3)));

        update(&mut app, Action::CycleSort);
        assert_eq!(app.sort, SortKey::Growth);
        assert_eq!(selected_key(&app), Some(RowKey::Stack(3)));
        assert_eq!(app.selected, 5);
        update(&mut app, Action::CycleSort);
        assert_eq!(app.sort, SortKey::Count);
        update(&mut app, Action::CycleSort);
        assert_eq!(app.sort, SortKey::Age);
        update(&mut app, Action::CycleSort);
        assert_eq!(app.sort, SortKey::Verdict);
        assert_eq!(selected_key(&app), Some(RowKey::Stack(3)));
        assert_eq!(app.selected, 5, "churn, ahead of the unknown stack 7");
        update(&mut app, Action::CycleSort);
        assert_eq!(app.sort, SortKey::LiveBytes);
        assert_eq!(app.selected, 6);
    }

    #[test]
    fn filter_mode_edits_keeps_and_clears() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);

        update(&mut app, Action::StartFilter);
        assert_eq!(app.mode, Mode::Filter);
        for c in "glibx".chars() {
            update(&mut app, Action::FilterPush(c));
        }
        assert!(app.rows.is_empty(), "nothing matches glibx");
        update(&mut app, Action::FilterPop);
        assert_eq!(app.filter, "glib");
        assert_eq!(app.rows.len(), 1);
        assert_eq!(selected_key(&app), Some(RowKey::Stack(6)));

        update(&mut app, Action::FilterKeep);
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.filter, "glib");
        assert_eq!(app.rows.len(), 1);

        // A new snapshot keeps the filter
        update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));
        assert_eq!(app.rows.len(), 1);

        update(&mut app, Action::StartFilter);
        update(&mut app, Action::FilterClear);
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.filter, "");
        assert_eq!(app.rows.len(), 7);
        assert_eq!(
            selected_key(&app),
            Some(RowKey::Stack(6)),
            "the selection stays"
        );
    }

    #[test]
    fn back_closes_the_detail_then_clears_the_filter() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        app.filter = "alloc".to_owned();
        update(&mut app, Action::ToggleDetail);
        assert!(app.detail_open);

        update(&mut app, Action::Back);
        assert!(!app.detail_open);
        assert_eq!(app.filter, "alloc");

        update(&mut app, Action::Back);
        assert_eq!(app.filter, "");
        assert_eq!(app.rows.len(), 7);

        update(&mut app, Action::Back);
        assert_eq!(app.rows.len(), 7);
    }

    #[test]
    fn the_detail_pane_toggles_and_scrolls_within_its_text() {
        let clock = Clock::new();
        // A short terminal: the detail pane has few lines
        let mut app = app(&clock, 80, 14);
        update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));
        update(&mut app, Action::ToggleDetail);
        assert!(app.detail_open);
        let max = max_detail_scroll(&app);
        assert!(max > 0, "stack 1 has more lines than the pane");

        update(&mut app, Action::DetailUp);
        assert_eq!(app.detail_scroll, 0);
        for _ in 0..20 {
            update(&mut app, Action::DetailDown);
        }
        assert_eq!(app.detail_scroll, max);
        update(&mut app, Action::DetailUp);
        assert_eq!(app.detail_scroll, max - 1);

        // Another row starts at the top
        update(&mut app, Action::Down);
        assert_eq!(app.detail_scroll, 0);

        // Closing and reopening starts at the top too
        update(&mut app, Action::DetailDown);
        update(&mut app, Action::ToggleDetail);
        assert!(!app.detail_open);
        update(&mut app, Action::ToggleDetail);
        assert_eq!(app.detail_scroll, 0);
    }

    #[test]
    fn pause_freezes_the_display_and_resume_shows_the_newest() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);

        update(&mut app, Action::TogglePause);
        assert!(app.paused);
        let mut newer = sample_snapshot();
        newer.report.duration_s = 20.0;
        update(&mut app, Action::Snapshot(Box::new(newer.clone())));
        newer.report.duration_s = 21.0;
        update(&mut app, Action::Snapshot(Box::new(newer)));
        let shown = |app: &App| app.snapshot.as_ref().map(|s| s.report.duration_s);
        assert_eq!(shown(&app), Some(12.75));

        update(&mut app, Action::TogglePause);
        assert!(!app.paused);
        assert_eq!(shown(&app), Some(21.0));
        assert!(app.pending.is_none());

        // Pausing and resuming with nothing new keeps the snapshot
        update(&mut app, Action::TogglePause);
        update(&mut app, Action::TogglePause);
        assert_eq!(shown(&app), Some(21.0));
    }

    #[test]
    fn the_end_is_shown_even_while_paused() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        update(&mut app, Action::TogglePause);
        let mut last = sample_snapshot();
        last.ended = Some("target exited".to_owned());
        update(&mut app, Action::Snapshot(Box::new(last)));
        assert_eq!(app.ended.as_deref(), Some("target exited"));
        assert!(app.snapshot.as_ref().is_some_and(|s| s.ended.is_none()));
    }

    #[test]
    fn disconnecting_is_remembered() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        update(&mut app, Action::Disconnected);
        assert!(app.disconnected);
        assert!(app.snapshot.is_some(), "the last state stays on screen");
    }

    #[test]
    fn baselines_set_show_deltas_and_clear() {
        let clock = Clock::new();
        let mut app = app(&clock, 80, 24);
        update(&mut app, Action::ToggleBaseline);
        assert_eq!(app.baseline, None);
        assert_eq!(
            app.message.as_ref().map(|m| m.text.as_str()),
            Some("no data for a baseline yet")
        );

        update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));
        update(&mut app, Action::ToggleBaseline);
        assert_eq!(app.baseline.as_ref().map(|b| b.at_s), Some(12.75));
        assert_eq!(
            app.message.as_ref().map(|m| m.text.as_str()),
            Some("baseline set at 12.8s")
        );
        assert!(app.rows.iter().all(|r| r.delta == Some((0, 0))));

        let mut next = sample_snapshot();
        let i6 = stack_index(&next, 6);
        next.report.stacks[i6].live_bytes += 512;
        update(&mut app, Action::Snapshot(Box::new(next)));
        let row6 = app.rows.iter().find(|r| r.key == RowKey::Stack(6));
        assert_eq!(row6.and_then(|r| r.delta), Some((512, 0)));
        assert_eq!(app.rows[0].key, RowKey::Stack(6), "sorted by change");

        update(&mut app, Action::ToggleBaseline);
        assert_eq!(app.baseline, None);
        assert!(app.rows.iter().all(|r| r.delta.is_none()));
        assert_eq!(
            app.message.as_ref().map(|m| m.text.as_str()),
            Some("baseline cleared")
        );
    }

    #[test]
    fn export_asks_for_the_filtered_view() {
        let clock = Clock::new();
        let mut app = app(&clock, 80, 24);
        assert_eq!(update(&mut app, Action::Export), None);
        assert_eq!(
            app.message.as_ref().map(|m| m.text.as_str()),
            Some("nothing to export yet")
        );

        update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));
        app.filter = "parse_header".to_owned();
        let Some(Effect::Export(report, None)) = update(&mut app, Action::Export) else {
            panic!("export asks the run loop to write in the export format");
        };
        let ids: Vec<u64> = report.stacks.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![4, 3]);

        // h: the same view, as HTML
        let Some(Effect::Export(html, Some(Format::Html))) = update(&mut app, Action::ExportHtml)
        else {
            panic!("h asks the run loop to write HTML");
        };
        assert_eq!(html, report);
    }

    #[test]
    fn export_results_become_messages_that_expire() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        update(&mut app, Action::Tick(clock.at(1.0)));
        let done = Exported {
            stacks: 3,
            path: PathBuf::from("/tmp/leaktrace-4242-1.json"),
        };
        update(&mut app, Action::Exported(Ok(done)));
        let message = app.message.clone().expect("a message");
        assert_eq!(
            message.text,
            "exported 3 stacks to /tmp/leaktrace-4242-1.json"
        );
        assert!(!message.error);
        assert_eq!(message.expires, clock.at(1.0) + MESSAGE_TTL);

        update(&mut app, Action::Tick(clock.at(5.9)));
        assert!(app.message.is_some());
        assert_eq!(app.now, clock.at(5.9));
        update(&mut app, Action::Tick(clock.at(6.0)));
        assert!(app.message.is_none());

        update(
            &mut app,
            Action::Exported(Err("/nope: permission denied".to_owned())),
        );
        let message = app.message.clone().expect("a message");
        assert_eq!(message.text, "export failed: /nope: permission denied");
        assert!(message.error);
        assert_eq!(message.expires, clock.at(6.0) + ERROR_TTL);

        let one = Exported {
            stacks: 1,
            path: PathBuf::from("x"),
        };
        update(&mut app, Action::Exported(Ok(one)));
        assert_eq!(
            app.message.as_ref().map(|m| m.text.as_str()),
            Some("exported 1 stack to x")
        );
    }

    #[test]
    fn help_opens_and_closes_and_quit_quits() {
        let clock = Clock::new();
        let mut app = with_sample(&clock);
        update(&mut app, Action::ShowHelp);
        assert_eq!(app.mode, Mode::Help);
        update(&mut app, Action::CloseHelp);
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(update(&mut app, Action::Quit), Some(Effect::Quit));
    }

    #[test]
    fn empty_data_and_tiny_terminals_keep_the_state_valid() {
        let clock = Clock::new();
        let mut app = app(&clock, 1, 1);
        for action in [
            Action::Down,
            Action::PageDown,
            Action::Last,
            Action::ToggleDetail,
            Action::DetailDown,
            Action::CycleGrouping,
            Action::CycleSort,
            Action::ToggleBaseline,
        ] {
            update(&mut app, action);
        }
        update(&mut app, Action::Snapshot(Box::new(empty_snapshot())));
        assert_eq!((app.selected, app.offset, app.detail_scroll), (0, 0, 0));
        update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));
        update(&mut app, Action::Last);
        let last = app.rows.len() - 1;
        assert_eq!(app.selected, last);
        update(&mut app, Action::Resize(Size::new(0, 0)));
        update(&mut app, Action::DetailDown);
        assert_eq!(app.selected, last);
    }
}
