//! The live view, run on a thread of its own so that rendering never delays ingestion, and
//! the snapshots the session sends it.
use std::{
    path::{Path, PathBuf},
    sync::mpsc::SyncSender,
    thread::JoinHandle,
};

use crate::{
    cli::Cli,
    heap::history::History,
    report::Report,
    tui::{self, TuiOptions, snapshot::Snapshot},
};

/// Number of rows a live-view snapshot carries (symbolized), most live bytes first.
const SNAPSHOT_STACKS: usize = 500;

/// The live view's thread and the channel that feeds it.
#[derive(Debug)]
pub(super) struct LiveView {
    snapshots: SyncSender<Snapshot>,
    thread: JoinHandle<std::io::Result<()>>,
    quit: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl LiveView {
    /// Starts the live view for the process `pid`.
    pub(super) fn start(pid: u32, cli: &Cli) -> Self {
        // Room for one waiting snapshot: a view that draws slower than snapshots come keeps
        // the newest, rather than a queue that grows for as long as it lags.
        let (snapshots, receiver) = std::sync::mpsc::sync_channel(1);
        let (quit_sender, quit) = tokio::sync::oneshot::channel();
        let options = TuiOptions {
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
        }
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

/// The live view's snapshot of `report`: its busiest rows, with their histories.
pub(super) fn snapshot(
    mut report: Report,
    history: &History,
    target_rss_bytes: Option<u64>,
    (allocs_per_s, frees_per_s): (f64, f64),
    ended: Option<String>,
) -> Snapshot {
    report.keep_top(SNAPSHOT_STACKS);
    let series = report
        .stacks
        .iter()
        .map(|stack| history.get(stack.id).cloned().unwrap_or_default())
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
