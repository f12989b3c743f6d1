//! Taking over the terminal and giving it back on every path out: normal return, error (the
//! [`TerminalGuard`]'s `Drop`) and panic on any thread (a panic hook, installed once, that
//! restores the terminal before the panic message is printed).
//!
//! Unlike `ratatui::init`'s hook, ours acts only while the live view holds the terminal, so a
//! panic after the view has closed does not write escape sequences over the final report.

use std::{
    io::{self, Stdout, stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor::Show,
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
};

/// Whether the live view holds the terminal (raw mode, alternate screen).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Installs the panic hook once per process.
static PANIC_HOOK: Once = Once::new();

/// Gives the terminal back when dropped.
#[derive(Debug)]
#[must_use = "dropping the guard restores the terminal at once"]
pub(crate) struct TerminalGuard {
    _private: (),
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if let Err(err) = restore() {
            // Nowhere else to say it: the view is gone.
            eprintln!("leaktrace: restoring the terminal: {err}");
        }
    }
}

/// Puts the terminal in raw mode on the alternate screen, and returns a terminal drawing on
/// stdout with the guard that undoes it. On error the terminal is already restored.
pub(crate) fn init() -> io::Result<(Terminal<CrosstermBackend<Stdout>>, TerminalGuard)> {
    install_panic_hook();
    enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    // From here on, dropping the guard (including on `?`) restores the terminal.
    let guard = TerminalGuard { _private: () };
    execute!(stdout(), EnterAlternateScreen)?;
    let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
    Ok((terminal, guard))
}

/// Whether the live view still holds the terminal: false once a panic on any thread gave it
/// back, after which drawing would scribble over the panic message.
pub(crate) fn is_active() -> bool {
    ACTIVE.load(Ordering::SeqCst)
}

/// Leaves the alternate screen, shows the cursor and leaves raw mode, once: later calls do
/// nothing.
pub(crate) fn restore() -> io::Result<()> {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    // Leave raw mode even if the escape sequences cannot be written (e.g. stdout closed).
    let screen = execute!(stdout(), LeaveAlternateScreen, Show);
    disable_raw_mode()?;
    screen
}

fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Best effort: the panic message below matters more than a failed restore.
            let _ = restore();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoring_an_inactive_terminal_does_nothing() {
        // Tests never take over the terminal, so this writes nothing and succeeds.
        assert!(!is_active());
        assert!(restore().is_ok());
        assert!(!is_active());
    }
}
