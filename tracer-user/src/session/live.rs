//! The live view, run on a thread of its own so that rendering never delays ingestion, and
//! the snapshots the session sends it.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, mpsc::SyncSender},
    thread::JoinHandle,
};

use crate::{
    cli::Cli,
    heap::history::History,
    report::Report,
    source::Health,
    tui::{
        self, TuiOptions,
        snapshot::{Snapshot, ViewLink},
    },
};

/// Rows, most live bytes first, whose series every snapshot carries (besides those on screen).
const SERIES_ROWS: usize = 500;

/// The live view's thread and the channel that feeds it.
#[derive(Debug)]
pub(super) struct LiveView {
    snapshots: SyncSender<Snapshot>,
    thread: JoinHandle<std::io::Result<()>>,
    quit: Option<tokio::sync::oneshot::Receiver<()>>,
    /// What the view shows and how long it takes.
    link: Arc<ViewLink>,
}

impl LiveView {
    /// Starts the live view for the process `pid`.
    pub(super) fn start(pid: u32, cli: &Cli) -> Self {
        // Room for one waiting snapshot: a view that draws slower than snapshots come keeps
        // the newest, rather than a queue that grows for as long as it lags.
        let (snapshots, receiver) = std::sync::mpsc::sync_channel(1);
        let (quit_sender, quit) = tokio::sync::oneshot::channel();
        let link = Arc::new(ViewLink::default());
        let options = TuiOptions {
            link: Arc::clone(&link),
            pid,
            export_format: cli.export_format(),
            export_dir: cli
                .export
                .as_ref()
                .and_then(|p| p.parent())
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        };
        let thread = std::thread::spawn(move || {
            let result = tui::run(receiver, options);
            let _ = quit_sender.send(());
            result
        });
        Self {
            snapshots,
            thread,
            quit: Some(quit),
            link,
        }
    }

    /// Ids of the stacks the view has on screen.
    pub(super) fn wanted(&self) -> Vec<u64> {
        self.link.wanted()
    }

    /// The view's counters (how long it takes to answer), for the report's diagnostics.
    pub(super) fn health(&self) -> Vec<Health> {
        self.link.health()
    }

    /// Resolves when the user quits the view (once).
    pub(super) fn take_quit(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.quit.take()
    }

    /// Shows `snapshot`, unless the view has not yet taken the previous one (then the next
    /// interval's replaces it). A view that is gone drops it (the quit signal ends the loop).
    pub(super) fn send(&self, snapshot: Snapshot) {
        // Full or gone: either way this snapshot is not shown.
        let _ = self.snapshots.try_send(snapshot);
    }

    /// Shows the last snapshot (tracing has ended), waiting for room.
    pub(super) fn send_last(&self, snapshot: Snapshot) {
        let _ = self.snapshots.send(snapshot);
    }

    /// Waits until the user quits the view; an error says what went wrong in it.
    pub(super) fn join(self) -> Result<(), String> {
        drop(self.snapshots);
        match self.thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("live view: {err}")),
            Err(_) => Err("the live view failed".to_owned()),
        }
    }
}

/// The live view's snapshot of `report`: every row, with the series of the `SERIES_ROWS` rows
/// holding most and of the rows `wanted` (those on screen).
pub(super) fn snapshot(
    report: Report,
    history: &History,
    wanted: &[u64],
    target_rss_bytes: Option<u64>,
    (allocs_per_s, frees_per_s): (f64, f64),
    ended: Option<String>,
) -> Snapshot {
    let wanted: HashSet<u64> = wanted.iter().copied().collect();
    // The report is sorted by live bytes: the first rows hold most.
    let series = report
        .stacks
        .iter()
        .enumerate()
        .map(|(i, stack)| {
            if i < SERIES_ROWS || wanted.contains(&stack.id) {
                history.get(stack.id).cloned().unwrap_or_default()
            } else {
                Default::default()
            }
        })
        .collect();
    Snapshot {
        report,
        series,
        target_rss_bytes,
        allocs_per_s,
        frees_per_s,
        ended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::StackReport;

    #[test]
    fn every_row_is_sent_with_the_series_of_the_busiest_and_of_those_on_screen() {
        // Given 600 rows, each with a history, the view showing row 550
        let mut history = History::default();
        for t in 1..=3 {
            history.record(f64::from(t), (0..600u64).map(|id| (id, 1000 - id)));
        }
        let report = Report {
            stacks: (0..600u64)
                .map(|id| StackReport {
                    id,
                    live_bytes: 1000 - id,
                    ..StackReport::default()
                })
                .collect(),
            ..Report::default()
        };

        let snapshot = snapshot(report, &history, &[550], None, (0.0, 0.0), None);

        // Then every row is there, with series for the first 500 and row 550 only
        assert_eq!(snapshot.report.stacks.len(), 600);
        assert_eq!(snapshot.series.len(), 600);
        let with_series: Vec<u64> = snapshot
            .report
            .stacks
            .iter()
            .zip(&snapshot.series)
            .filter(|(_, series)| !series.samples.is_empty())
            .map(|(stack, _)| stack.id)
            .collect();
        let mut expected: Vec<u64> = (0..500).collect();
        expected.push(550);
        assert_eq!(with_series, expected);
        assert_eq!(snapshot.series[550].last(3), [450, 450, 450]);
    }
}
