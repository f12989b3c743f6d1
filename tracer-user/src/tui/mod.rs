//! The live view: a full-screen terminal UI over the session's snapshots.
//!
//! The session sends a [`Snapshot`] about once a second on a channel and calls [`run`] on a
//! thread of its own; `run` returns when the user quits, with the terminal restored.
//!
//! Inside, state and drawing are kept apart (private modules): `app::App` holds the state, keys
//! and snapshots become `action::Action`s (`input`), `update::update` is the only function that
//! changes the state, and `ui::render` draws it without I/O (where each part goes is `layout`'s,
//! the detail pane's text `detail`'s). Side effects (quitting, writing an
//! export) come back from `update` as `update::Effect`s, which this module's loop carries out.
//!
//! Keys: arrows or `j`/`k` move, PgUp/PgDn/Home/End jump, Enter opens the detail pane (Shift+arrows
//! or `J`/`K` scroll it), `/` filters, `s` sorts, `g` groups, `p` pauses, `b` sets a baseline,
//! `e` exports, `?` shows them all, `q` or Ctrl-C quits.

use std::{
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        mpsc::{Receiver, TryRecvError},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ratatui::{
    Terminal,
    backend::Backend,
    crossterm::event::{self, Event},
    layout::Size,
};

use self::{
    action::{Action, Exported},
    app::App,
    update::{Effect, update},
};
use crate::{
    export::{Format, write_report},
    report::Report,
    tui::snapshot::{Snapshot, ViewLink},
};

mod action;
mod app;
mod detail;
mod export;
mod format;
mod input;
mod layout;
mod rows;
pub mod snapshot;
mod style;
mod terminal;
mod ui;
mod update;

#[cfg(test)]
mod render_tests;
#[cfg(test)]
mod testing;

/// How long to wait for input before looking for snapshots again.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// Shortest time between two redraws that no key asked for.
const REDRAW_PERIOD: Duration = Duration::from_millis(500);

/// Most input events handled before the snapshots are looked at again.
const MAX_EVENTS_PER_POLL: usize = 64;

/// What the live view needs besides the snapshots.
#[derive(Clone, Debug)]
pub struct TuiOptions {
    /// Where it says which rows it shows and how long it takes.
    pub link: Arc<ViewLink>,
    /// The traced process, shown before the first snapshot and used in export file names.
    pub pid: u32,
    /// Format of the files key `e` writes.
    pub export_format: Format,
    /// Directory of the files key `e` writes (`leaktrace-<pid>-<unix seconds>.<ext>`).
    pub export_dir: PathBuf,
}

/// Runs the live view on the current thread until the user quits (`q`, Ctrl-C).
///
/// Receives snapshots from the session (about one per second, then a last one with
/// `ended: Some(..)`) and never blocks the sender: each pass takes every queued snapshot and
/// shows the newest. When the sender is dropped without an `ended` snapshot, the last state
/// stays on screen with "tracing stopped" until the user quits.
///
/// The terminal is in raw mode meanwhile, so Ctrl-C arrives here as a key, not as SIGINT: the
/// session learns that the user wants to stop when this function returns.
///
/// Restores the terminal on return, on error and on panic (on any thread: a panic hook, and a
/// drop guard here).
///
/// # Errors
///
/// When the terminal cannot be set up (e.g. stdout is not a terminal), read or drawn, or when a
/// panic on another thread gave the terminal back.
pub fn run(snapshots: Receiver<Snapshot>, options: TuiOptions) -> io::Result<()> {
    let (mut terminal, guard) = terminal::init()?;
    let result = run_loop(
        &mut terminal,
        &mut TerminalEvents,
        &snapshots,
        &options,
        &unix_seconds,
    );
    // Shows the cursor again (on the alternate screen, which the restore then leaves).
    drop(terminal);
    let restored = terminal::restore();
    drop(guard);
    result.and(restored)
}

/// A source of terminal events.
trait Events {
    /// The next event, waiting at most `timeout`; `None` when there was none.
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>>;
}

/// Events from the real terminal.
struct TerminalEvents;

impl Events for TerminalEvents {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        if !terminal::is_active() {
            return Err(io::Error::other(
                "the terminal was given back after a panic",
            ));
        }
        if event::poll(timeout)? {
            event::read().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Whether the loop goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// The live view's loop on any backend: read input (up to [`POLL_TIMEOUT`]), take the newest
/// snapshot, let time pass, and redraw when something changed: at once after a key or a resize,
/// else at most every [`REDRAW_PERIOD`].
fn run_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    events: &mut impl Events,
    snapshots: &Receiver<Snapshot>,
    options: &TuiOptions,
    unix_seconds: &dyn Fn() -> u64,
) -> io::Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let size = terminal.size().map_err(io::Error::other)?;
    let mut app = App::new(options.pid, size, Instant::now());
    let mut last_draw: Option<Instant> = None;
    let mut dirty = true;
    loop {
        let mut urgent = false;
        let mut timeout = POLL_TIMEOUT;
        // When the first key of this pass was read: its answer is drawn in this pass.
        let mut key_read: Option<Instant> = None;
        for _ in 0..MAX_EVENTS_PER_POLL {
            let Some(event) = events.next(timeout)? else {
                break;
            };
            key_read.get_or_insert_with(Instant::now);
            timeout = Duration::ZERO;
            let action = match event {
                Event::Key(key) => input::action_for_key(app.mode, key),
                Event::Resize(width, height) => Some(Action::Resize(Size::new(width, height))),
                _ => None,
            };
            if let Some(action) = action {
                urgent = true;
                dirty = true;
                if apply(&mut app, action, options, unix_seconds) == Flow::Quit {
                    return Ok(());
                }
            }
        }

        // A key's answer is drawn before the next snapshot is taken: applying a snapshot of
        // 100,000 stacks takes a while, and the key should not wait for it.
        if urgent {
            draw(terminal, &app, options, key_read)?;
            last_draw = Some(Instant::now());
            dirty = false;
            continue;
        }

        let mut newest = None;
        let disconnected = loop {
            match snapshots.try_recv() {
                Ok(snapshot) => newest = Some(snapshot),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if let Some(snapshot) = newest {
            dirty = true;
            apply(
                &mut app,
                Action::Snapshot(Box::new(snapshot)),
                options,
                unix_seconds,
            );
        }
        if disconnected && !app.disconnected {
            dirty = true;
            apply(&mut app, Action::Disconnected, options, unix_seconds);
        }

        let now = Instant::now();
        let had_message = app.message.is_some();
        apply(&mut app, Action::Tick(now), options, unix_seconds);
        dirty |= had_message != app.message.is_some();

        let due = last_draw.is_none_or(|at| now.duration_since(at) >= REDRAW_PERIOD);
        if dirty && due {
            draw(terminal, &app, options, None)?;
            dirty = false;
            last_draw = Some(now);
        }
    }
}

/// Draws `app`, recording how long the frame took and, for keys read at `key_read`, how long
/// their answer took; then tells the session which stacks are on screen.
fn draw<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &App,
    options: &TuiOptions,
    key_read: Option<Instant>,
) -> io::Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let drawing = Instant::now();
    terminal
        .draw(|frame| ui::render(app, frame))
        .map_err(io::Error::other)?;
    options.link.record_frame(drawing.elapsed());
    if let Some(read) = key_read {
        options.link.record_key(read.elapsed());
    }
    options.link.want(app.stacks_on_screen());
    Ok(())
}

/// Applies `action` and carries out its effect: an export is written here and its outcome
/// applied in turn.
fn apply(
    app: &mut App,
    action: Action,
    options: &TuiOptions,
    unix_seconds: &dyn Fn() -> u64,
) -> Flow {
    // Ticks only move the clock; keys and snapshots may filter, group and sort every stack.
    let timed = !matches!(action, Action::Tick(_));
    let started = Instant::now();
    let effect = update(app, action);
    if timed {
        options.link.record_update(started.elapsed());
    }
    match effect {
        None => Flow::Continue,
        Some(Effect::Quit) => Flow::Quit,
        Some(Effect::Export(report, format)) => {
            let format = format.unwrap_or(options.export_format);
            let path =
                export::export_path(&options.export_dir, options.pid, unix_seconds(), format);
            let outcome = write_export(&report, format, &path)
                .map(|()| Exported {
                    stacks: report.stacks.len(),
                    path: path.clone(),
                })
                .map_err(|err| format!("{}: {err}", path.display()));
            // The outcome only sets a message: no further effect.
            update(app, Action::Exported(outcome));
            Flow::Continue
        }
    }
}

/// Writes `report` to a new file at `path` (replacing any).
fn write_export(report: &Report, format: Format, path: &Path) -> io::Result<()> {
    let file = crate::export::file::open_private(path)?;
    file.set_len(0)?;
    let mut out = BufWriter::new(file);
    write_report(report, format, &mut out)?;
    out.flush()
}

/// Seconds since the Unix epoch, for export file names (0 if the clock is before 1970).
fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::mpsc};

    use ratatui::{
        backend::TestBackend,
        crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyEventState, KeyModifiers},
    };

    use super::*;
    use crate::tui::testing::{PID, sample_snapshot};

    const NOW: u64 = 1_700_000_000;

    /// Events from a script: `None` ends a batch (as a poll timeout would).
    struct Script(VecDeque<Option<Event>>);

    impl Script {
        fn new(steps: impl IntoIterator<Item = Option<Event>>) -> Self {
            Self(steps.into_iter().collect())
        }
    }

    impl Events for Script {
        fn next(&mut self, _timeout: Duration) -> io::Result<Option<Event>> {
            self.0
                .pop_front()
                .ok_or_else(|| io::Error::other("the script ended without quitting"))
        }
    }

    fn key(c: char) -> Option<Event> {
        Some(Event::Key(KeyEvent::new(
            KeyCode::Char(c),
            KeyModifiers::NONE,
        )))
    }

    fn code(code: KeyCode) -> Option<Event> {
        Some(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)))
    }

    fn options(dir: &Path) -> TuiOptions {
        TuiOptions {
            link: Arc::default(),
            pid: PID,
            export_format: Format::Json,
            export_dir: dir.to_owned(),
        }
    }

    /// Runs the loop on an 80x24 test terminal and returns what is on screen at the end.
    fn run_script(
        snapshots: &Receiver<Snapshot>,
        options: &TuiOptions,
        script: impl IntoIterator<Item = Option<Event>>,
    ) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("a test terminal");
        run_loop(
            &mut terminal,
            &mut Script::new(script),
            snapshots,
            options,
            &|| NOW,
        )
        .expect("the loop ends on q");
        terminal.backend().to_string()
    }

    #[test]
    fn shows_the_newest_snapshot_and_exports_the_filtered_view() {
        // Given two queued snapshots and an export directory
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (tx, rx) = mpsc::channel();
        tx.send(sample_snapshot())
            .expect("the loop's receiver is alive");
        let mut newer = sample_snapshot();
        newer.report.duration_s = 13.75;
        tx.send(newer).expect("the loop's receiver is alive");

        // When filtering on alloc_buffer and exporting
        let mut script = vec![None, key('/')];
        script.extend("ALLOC_buffer".chars().map(key));
        script.extend([code(KeyCode::Enter), None, key('e'), None, key('q')]);
        let screen = run_script(&rx, &options(dir.path()), script);

        // Then the newest snapshot is on screen with the export's message
        let path = dir.path().join(format!("leaktrace-{PID}-{NOW}.json"));
        assert!(screen.contains("attached 13.8s"), "{screen}");
        assert!(screen.contains("exported 2 stacks to"), "{screen}");
        // And the file holds the two filtered stacks
        let json: serde_json::Value =
            serde_json::from_reader(std::fs::File::open(&path).expect("the export exists"))
                .expect("the export is JSON");
        let stacks = json["stacks"].as_array().expect("a stacks array");
        assert_eq!(stacks.len(), 2);
        assert_eq!(json["pid"], PID);
        drop(tx);
    }

    #[test]
    fn export_errors_are_shown() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("missing");
        let (tx, rx) = mpsc::channel();
        tx.send(sample_snapshot())
            .expect("the loop's receiver is alive");
        let screen = run_script(&rx, &options(&missing), [None, key('e'), None, key('q')]);
        assert!(screen.contains("export failed:"), "{screen}");
        assert!(screen.contains("missing"), "{screen}");
        drop(tx);
    }

    #[test]
    fn a_dropped_sender_leaves_the_last_state_on_screen() {
        let (tx, rx) = mpsc::channel();
        tx.send(sample_snapshot())
            .expect("the loop's receiver is alive");
        drop(tx);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let screen = run_script(&rx, &options(dir.path()), [None, None, key('q')]);
        assert!(
            screen.contains("tracing stopped — press q to quit"),
            "{screen}"
        );
        assert!(screen.contains("grow_buffer"), "{screen}");
    }

    #[test]
    fn the_end_of_tracing_is_shown_until_quit() {
        let (tx, rx) = mpsc::channel();
        let mut last = sample_snapshot();
        last.ended = Some("target exited".to_owned());
        tx.send(last).expect("the loop's receiver is alive");
        drop(tx);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let screen = run_script(
            &rx,
            &options(dir.path()),
            [None, None, key('?'), None, key('x'), None, key('q')],
        );
        assert!(
            screen.contains("target exited — press q to quit"),
            "{screen}"
        );
        assert!(!screen.contains("tracing stopped"), "{screen}");
        assert!(
            !screen.contains("any key closes"),
            "the help was closed: {screen}"
        );
    }

    #[test]
    fn ctrl_c_quits_and_releases_are_ignored() {
        let (_tx, rx) = mpsc::channel();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let release = Event::Key(KeyEvent::new_with_kind_and_state(
            KeyCode::Char('?'),
            KeyModifiers::NONE,
            KeyEventKind::Release,
            KeyEventState::NONE,
        ));
        let ctrl_c = Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        let screen = run_script(
            &rx,
            &options(dir.path()),
            [Some(release), None, Some(ctrl_c)],
        );
        assert!(!screen.contains("any key closes"), "{screen}");
        assert!(
            screen.contains("waiting for the first snapshot"),
            "{screen}"
        );
    }
}
