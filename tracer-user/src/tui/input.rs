//! Keys to [`Action`]s, per [`Mode`]. Only presses count: terminals that report releases and
//! repeats (kitty's protocol, Windows) would otherwise act twice.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{action::Action, app::Mode};

/// The action for `key` in `mode`, if any.
pub(crate) fn action_for_key(mode: Mode, key: KeyEvent) -> Option<Action> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    // Raw mode turns Ctrl-C into a key rather than SIGINT: it quits from everywhere.
    if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c' | 'C'))
    {
        return Some(Action::Quit);
    }
    match mode {
        Mode::Help => Some(Action::CloseHelp),
        Mode::Filter => filter_key(key),
        Mode::Normal => normal_key(key),
    }
}

fn filter_key(key: KeyEvent) -> Option<Action> {
    match key.code {
        KeyCode::Enter => Some(Action::FilterKeep),
        KeyCode::Esc => Some(Action::FilterClear),
        KeyCode::Backspace => Some(Action::FilterPop),
        KeyCode::Up => Some(Action::Up),
        KeyCode::Down => Some(Action::Down),
        KeyCode::Char(c)
            if !key
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
        {
            Some(Action::FilterPush(c))
        }
        _ => None,
    }
}

fn normal_key(key: KeyEvent) -> Option<Action> {
    let shift = key.modifiers.contains(KeyModifiers::SHIFT);
    if key
        .modifiers
        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
    {
        return None;
    }
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Up if shift => Action::DetailUp,
        KeyCode::Down if shift => Action::DetailDown,
        KeyCode::Char('K') => Action::DetailUp,
        KeyCode::Char('J') => Action::DetailDown,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home => Action::First,
        KeyCode::End => Action::Last,
        KeyCode::Enter => Action::ToggleDetail,
        KeyCode::Esc => Action::Back,
        KeyCode::Char('/') => Action::StartFilter,
        KeyCode::Char('s') => Action::CycleSort,
        KeyCode::Char('g') => Action::CycleGrouping,
        KeyCode::Char('p') => Action::TogglePause,
        KeyCode::Char('b') => Action::ToggleBaseline,
        KeyCode::Char('e') => Action::Export,
        KeyCode::Char('h') => Action::ExportHtml,
        KeyCode::Char('?') => Action::ShowHelp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyEventState;

    use super::*;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn with(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    /// The action's variant name, to compare actions without `PartialEq` on snapshots.
    fn name(action: Option<Action>) -> String {
        action.map_or_else(|| "-".to_owned(), |a| format!("{a:?}"))
    }

    #[track_caller]
    fn check(mode: Mode, cases: &[(KeyEvent, &str)]) {
        for (key, want) in cases {
            assert_eq!(name(action_for_key(mode, *key)), *want, "{mode:?} {key:?}");
        }
    }

    #[test]
    fn normal_keys() {
        use KeyCode::*;
        check(
            Mode::Normal,
            &[
                (press(Char('q')), "Quit"),
                (press(Up), "Up"),
                (press(Char('k')), "Up"),
                (press(Down), "Down"),
                (press(Char('j')), "Down"),
                (press(PageUp), "PageUp"),
                (press(PageDown), "PageDown"),
                (press(Home), "First"),
                (press(End), "Last"),
                (press(Enter), "ToggleDetail"),
                (with(Up, KeyModifiers::SHIFT), "DetailUp"),
                (with(Down, KeyModifiers::SHIFT), "DetailDown"),
                (with(Char('K'), KeyModifiers::SHIFT), "DetailUp"),
                (with(Char('J'), KeyModifiers::SHIFT), "DetailDown"),
                (press(Char('K')), "DetailUp"),
                (press(Esc), "Back"),
                (press(Char('/')), "StartFilter"),
                (press(Char('s')), "CycleSort"),
                (press(Char('g')), "CycleGrouping"),
                (press(Char('p')), "TogglePause"),
                (press(Char('b')), "ToggleBaseline"),
                (press(Char('e')), "Export"),
                (press(Char('h')), "ExportHtml"),
                (press(Char('?')), "ShowHelp"),
                (with(Char('?'), KeyModifiers::SHIFT), "ShowHelp"),
                (press(Char('x')), "-"),
                (press(Tab), "-"),
                (with(Char('e'), KeyModifiers::ALT), "-"),
                (with(Char('z'), KeyModifiers::CONTROL), "-"),
            ],
        );
    }

    #[test]
    fn ctrl_c_quits_in_every_mode() {
        for mode in [Mode::Normal, Mode::Filter, Mode::Help] {
            check(
                mode,
                &[
                    (with(KeyCode::Char('c'), KeyModifiers::CONTROL), "Quit"),
                    (
                        with(
                            KeyCode::Char('C'),
                            KeyModifiers::CONTROL | KeyModifiers::SHIFT,
                        ),
                        "Quit",
                    ),
                ],
            );
        }
    }

    #[test]
    fn filter_keys_edit_the_text() {
        use KeyCode::*;
        check(
            Mode::Filter,
            &[
                (press(Char('q')), "FilterPush('q')"),
                (with(Char('Q'), KeyModifiers::SHIFT), "FilterPush('Q')"),
                (press(Char('/')), "FilterPush('/')"),
                (press(Backspace), "FilterPop"),
                (press(Enter), "FilterKeep"),
                (press(Esc), "FilterClear"),
                (press(Up), "Up"),
                (press(Down), "Down"),
                (press(Tab), "-"),
                (with(Char('w'), KeyModifiers::CONTROL), "-"),
            ],
        );
    }

    #[test]
    fn any_key_closes_the_help() {
        use KeyCode::*;
        check(
            Mode::Help,
            &[
                (press(Char('q')), "CloseHelp"),
                (press(Esc), "CloseHelp"),
                (press(Char('?')), "CloseHelp"),
                (press(Enter), "CloseHelp"),
            ],
        );
    }

    #[test]
    fn only_presses_count() {
        for kind in [KeyEventKind::Release, KeyEventKind::Repeat] {
            let key = KeyEvent::new_with_kind_and_state(
                KeyCode::Char('q'),
                KeyModifiers::NONE,
                kind,
                KeyEventState::NONE,
            );
            for mode in [Mode::Normal, Mode::Filter, Mode::Help] {
                assert!(action_for_key(mode, key).is_none(), "{kind:?} in {mode:?}");
            }
        }
    }
}
