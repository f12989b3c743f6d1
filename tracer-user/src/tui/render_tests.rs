//! Screen tests: the whole view drawn on a [`TestBackend`] and compared with the snapshots in
//! `snapshots/` (colours are not compared). Review changes with `cargo insta review`, or run with
//! `INSTA_UPDATE=always` and read the `.snap` files.

use insta::assert_snapshot;
use ratatui::{Terminal, backend::TestBackend};

use super::{
    action::Action,
    app::App,
    detail,
    snapshot::Snapshot,
    testing::{Clock, app, empty_snapshot, sample_snapshot, stack_index},
    ui,
    update::update,
};

/// Draws `app` on a terminal of its own size.
fn draw(app: &App) -> Terminal<TestBackend> {
    let mut terminal =
        Terminal::new(TestBackend::new(app.size.width, app.size.height)).expect("a test terminal");
    terminal
        .draw(|frame| ui::render(app, frame))
        .expect("drawing on a test backend");
    terminal
}

/// An app of `width` x `height` showing the sample snapshot after `actions`.
fn sample(width: u16, height: u16, actions: impl IntoIterator<Item = Action>) -> App {
    let clock = Clock::new();
    let mut app = app(&clock, width, height);
    update(&mut app, Action::Snapshot(Box::new(sample_snapshot())));
    for action in actions {
        update(&mut app, action);
    }
    app
}

#[test]
fn waiting_for_the_first_snapshot() {
    let clock = Clock::new();
    assert_snapshot!(draw(&app(&clock, 80, 24)).backend());
}

#[test]
fn empty_heap() {
    let clock = Clock::new();
    let mut app = app(&clock, 80, 24);
    update(&mut app, Action::Snapshot(Box::new(empty_snapshot())));
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn populated_80x24() {
    assert_snapshot!(draw(&sample(80, 24, [])).backend());
}

#[test]
fn populated_120x40() {
    assert_snapshot!(draw(&sample(120, 40, [Action::Down])).backend());
}

#[test]
fn detail_pane() {
    let app = sample(
        80,
        24,
        [
            Action::Down,
            Action::Down,
            Action::Down,
            Action::ToggleDetail,
        ],
    );
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn detail_pane_scrolled() {
    // 16 lines leave 4 for the detail pane's text: stack 1 has 6
    let app = sample(
        80,
        16,
        [Action::ToggleDetail, Action::DetailDown, Action::DetailDown],
    );
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn detail_pane_of_a_group() {
    let app = sample(
        120,
        40,
        [Action::CycleGrouping, Action::Down, Action::ToggleDetail],
    );
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn grouped_by_module_sorted_by_age() {
    let app = sample(
        120,
        40,
        [
            Action::CycleGrouping,
            Action::CycleGrouping,
            Action::CycleSort,
            Action::CycleSort,
            Action::CycleSort,
        ],
    );
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn sorted_by_verdict() {
    let app = sample(
        80,
        24,
        [
            Action::CycleSort,
            Action::CycleSort,
            Action::CycleSort,
            Action::CycleSort,
            Action::Down,
            Action::ToggleDetail,
        ],
    );
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn grouped_by_function_sorted_by_verdict_with_a_baseline() {
    let app = sample(
        80,
        24,
        [
            Action::ToggleBaseline,
            Action::CycleGrouping,
            Action::CycleSort,
            Action::CycleSort,
            Action::CycleSort,
            Action::CycleSort,
        ],
    );
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn detail_of_an_unknown_stack_has_no_fit() {
    // Stack 7: one sample, so no fit; one block aged 1.0 s
    let app = sample(80, 24, [Action::Last, Action::Up, Action::ToggleDetail]);
    let text: Vec<String> = detail::detail_lines(&app)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(text[0], "unknown  ages <10s:1  via glibc");
    // Stack 3: nothing live, so no ages
    let app = sample(80, 24, [Action::Last, Action::ToggleDetail]);
    let text = detail::detail_lines(&app)[0].to_string();
    assert_eq!(text, "churn  -341 B/s, R² 0.55  via glibc");
}

#[test]
fn filter_being_typed() {
    let mut actions = vec![Action::StartFilter];
    actions.extend("alloc".chars().map(Action::FilterPush));
    assert_snapshot!(draw(&sample(80, 24, actions)).backend());
}

#[test]
fn filter_matching_nothing() {
    let mut actions = vec![Action::StartFilter];
    actions.extend("nothing".chars().map(Action::FilterPush));
    actions.push(Action::FilterKeep);
    assert_snapshot!(draw(&sample(80, 24, actions)).backend());
}

#[test]
fn baseline_diff() {
    // Given a baseline, then stack 1 gains 1 MiB and stack 4 frees 4 KiB
    let mut app = sample(80, 24, [Action::ToggleBaseline]);
    let mut next = sample_snapshot();
    next.report.duration_s = 42.0;
    let i1 = stack_index(&next, 1);
    let i4 = stack_index(&next, 4);
    next.report.stacks[i1].live_bytes += 1 << 20;
    next.report.stacks[i1].live_allocs += 1;
    next.report.stacks[i4].live_bytes -= 4096;
    next.report.stacks[i4].live_allocs -= 1;
    update(&mut app, Action::Snapshot(Box::new(next)));
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn paused_with_a_message() {
    let app = sample(80, 24, [Action::TogglePause, Action::Export]);
    // Export needs the run loop to write; the message comes from its answer.
    let mut app = app;
    update(
        &mut app,
        Action::Exported(Ok(super::action::Exported {
            stacks: 7,
            path: "/tmp/leaktrace-4242-1700000000.json".into(),
        })),
    );
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn help_overlay() {
    assert_snapshot!(draw(&sample(80, 24, [Action::ShowHelp])).backend());
}

#[test]
fn target_exited() {
    let clock = Clock::new();
    let mut app = app(&clock, 80, 24);
    let mut last = sample_snapshot();
    last.ended = Some("target exited".to_owned());
    update(&mut app, Action::Snapshot(Box::new(last)));
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn tracing_stopped() {
    let app = sample(80, 24, [Action::Disconnected]);
    assert_snapshot!(draw(&app).backend());
}

#[test]
fn tiny_terminals_do_not_panic() {
    let clock = Clock::new();
    let states: Vec<Vec<Action>> = vec![
        vec![],
        vec![Action::ToggleDetail, Action::DetailDown],
        vec![Action::ShowHelp],
        vec![Action::StartFilter, Action::FilterPush('x')],
        vec![
            Action::ToggleBaseline,
            Action::CycleGrouping,
            Action::Disconnected,
        ],
    ];
    for width in [0, 1, 2, 3, 5, 8, 13, 21, 34, 55] {
        for height in [0, 1, 2, 3, 4, 5, 6, 7, 9, 12] {
            for actions in &states {
                let mut app = app(&clock, width, height);
                for snapshot in [None, Some(empty_snapshot()), Some(sample_snapshot())] {
                    if let Some(snapshot) = snapshot {
                        update(&mut app, Action::Snapshot(Box::new(snapshot)));
                    }
                    for action in actions.iter().cloned() {
                        update(&mut app, action);
                    }
                    update(&mut app, Action::Last);
                    draw(&app);
                }
            }
        }
    }
}

#[test]
fn detail_of_an_incomplete_stack_says_so() {
    let app = sample(
        80,
        24,
        [
            Action::Down,
            Action::Down,
            Action::Down,
            Action::Down,
            Action::ToggleDetail,
        ],
    );
    let text: Vec<String> = detail::detail_lines(&app)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        text,
        [
            "churn  +100 B/s, R² 0.41  ages <1s:5 <10s:3  via glibc",
            "2.0 KiB live in 8 allocs, oldest 6.0s; 17 allocs (4.1 KiB) since attach",
            "#0 g_malloc (libglib-2.0.so.0)",
            "#1 g_strdup (libglib-2.0.so.0) [inlined]",
            "#2 load_config (server) /src/config.c:17",
            "… unwinding stopped early (see diagnostics)",
        ]
    );
}

#[test]
fn verdicts_are_coloured_by_severity() {
    use ratatui::style::{Color, Modifier};
    let terminal = draw(&sample(80, 24, []));
    let buffer = terminal.backend().buffer();
    // The verdict column starts where its header does
    let header: String = (0..80).map(|x| buffer[(x, 4)].symbol()).collect();
    let column = header.find("verdict").expect("a verdict column");
    let x = u16::try_from(header[..column].chars().count()).expect("on screen");
    // Rows from y = 5, by live bytes: stacks 1, 4, 5, 2, 6, 7, 3
    let expected = [
        ("leak", Color::Red, true),
        ("growing", Color::Yellow, false),
        ("steady", Color::Reset, false),
        ("steady", Color::Reset, false),
        ("churn", Color::DarkGray, false),
        ("?", Color::DarkGray, false),
        ("churn", Color::DarkGray, false),
    ];
    for (y, (word, fg, bold)) in (5..).zip(expected) {
        let cell = &buffer[(x, y)];
        let text: String = (x..x + 7).map(|x| buffer[(x, y)].symbol()).collect();
        assert_eq!(text.trim_end(), word, "row {y}");
        assert_eq!(cell.fg, fg, "row {y}");
        assert_eq!(cell.modifier.contains(Modifier::BOLD), bold, "row {y}");
    }
}

#[test]
fn merged_call_sites_and_rows_not_sent_to_the_view() {
    // Given the sample, its biggest row merged from three call sites that part at frame #2,
    // and 3,596 rows the session did not send
    let mut snapshot = sample_snapshot();
    let top = stack_index(&snapshot, 1);
    let row = &mut snapshot.report.stacks[top];
    let addrs: Vec<u64> = row.frames.iter().map(|f| f.addr).collect();
    row.call_sites = [0u64, 0x40, 0x80]
        .iter()
        .zip([786_432u64, 524_288, 262_144])
        .map(|(&shift, live_bytes)| {
            let mut addrs = addrs.clone();
            addrs[2] += shift;
            crate::report::CallSite {
                live_bytes,
                addrs,
                ..crate::report::CallSite::default()
            }
        })
        .collect();
    snapshot.report.omitted = crate::report::Omitted {
        rows: 3596,
        live_bytes: 1_153_434,
        ..crate::report::Omitted::default()
    };
    let clock = Clock::new();
    let mut app = app(&clock, 120, 30);
    update(&mut app, Action::Snapshot(Box::new(snapshot)));

    // When opening the row's detail
    update(&mut app, Action::ToggleDetail);

    // Then the title counts the rows not sent, the row its call sites, and the detail says
    // where they part
    let screen = draw(&app);
    let text = format!("{}", screen.backend());
    assert!(
        text.contains("3596 more stacks (1.1 MiB) not sent"),
        "{text}"
    );
    assert!(text.contains("[3 sites] grow_buffer"), "{text}");
    assert!(
        text.contains("3 call sites (--group-by address shows each), apart at #2"),
        "{text}"
    );
    assert_snapshot!(screen.backend());
}

#[test]
fn degraded_figures_are_named_in_the_header() {
    // Given a snapshot whose stack map filled up and one of whose files could not be read
    let mut snapshot = sample_snapshot();
    for (name, value) in [("stack_map_full", 12), ("unwind_files_unreadable", 1)] {
        if let Some(health) = snapshot
            .report
            .diagnostics
            .0
            .iter_mut()
            .find(|h| h.name == name)
        {
            health.value = value;
        }
    }
    let clock = Clock::new();
    let mut app = app(&clock, 200, 24);
    update(&mut app, Action::Snapshot(Box::new(snapshot)));
    // When drawn, then the header names both counters with their values
    let text = format!("{}", draw(&app).backend());
    assert!(
        text.contains("degraded: stack_map_full 12, unwind_files_unreadable 1"),
        "{text}"
    );
}

/// A snapshot of `paths` stacks holding 64 B each, allocating in one of `functions` functions
/// (`path_N`, frames shared between stacks as the symbolizer shares them), and one holding 24 B
/// through `rare_path`, which ranks last.
fn many_stacks(paths: u64, functions: u64) -> Snapshot {
    let mut snapshot = sample_snapshot();
    let template = snapshot.report.stacks[0].clone();
    let named = |name: String| {
        std::sync::Arc::new(crate::report::Frame {
            function: Some(name),
            ..(*template.frames[0]).clone()
        })
    };
    let firsts: Vec<_> = (0..functions).map(|i| named(format!("path_{i}"))).collect();
    let mut stacks: Vec<_> = (0..paths)
        .map(|i| {
            let mut stack = template.clone();
            stack.id = 10_000 + i;
            stack.live_bytes = 64;
            stack.live_allocs = 1;
            stack.frames[0] = std::sync::Arc::clone(&firsts[(i % functions) as usize]);
            stack
        })
        .collect();
    let mut rare = template.clone();
    rare.id = 1;
    rare.live_bytes = 24;
    rare.live_allocs = 1;
    rare.frames[0] = named("rare_path".to_owned());
    stacks.push(rare);
    snapshot.series = vec![Default::default(); stacks.len()];
    snapshot.report.stacks = stacks;
    snapshot
}

#[test]
fn every_row_is_counted_and_a_filter_reaches_the_last() {
    // Given 4,097 stacks, more than a screen holds
    let clock = Clock::new();
    let mut app = app(&clock, 120, 30);
    update(
        &mut app,
        Action::Snapshot(Box::new(many_stacks(4096, 4096))),
    );

    // Then the title counts every one and says which are on screen
    let text = format!("{}", draw(&app).backend());
    assert!(text.contains(" 4,097 stacks · 1–"), "{text}");
    assert!(text.contains(" on screen "), "{text}");

    // When filtering for the function of the last row only
    update(&mut app, Action::StartFilter);
    for c in "RARE_p".chars() {
        update(&mut app, Action::FilterPush(c));
    }
    update(&mut app, Action::FilterKeep);

    // Then it is the one row, with its bytes, and the title says what the filter kept
    let text = format!("{}", draw(&app).backend());
    assert!(text.contains(" 1 of 4,097 stacks match /RARE_p "), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains("rare_path"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("24 B"), "{row}");

    // When grouped by allocating function (one process: `g` skips call paths), the title
    // counts groups of every stack
    update(&mut app, Action::FilterClear);
    update(&mut app, Action::CycleGrouping);
    let text = format!("{}", draw(&app).backend());
    assert!(
        text.contains(" 4,097 allocating functions of 4,097 stacks · "),
        "{text}"
    );
}

#[test]
fn a_keystroke_over_100_000_stacks_is_answered_within_a_frame() {
    // Given 100,001 stacks on screen, allocating in 1,001 functions
    let clock = Clock::new();
    let mut app = app(&clock, 160, 48);
    update(
        &mut app,
        Action::Snapshot(Box::new(many_stacks(100_000, 1_000))),
    );
    // When a filter key and a sort key are applied and drawn, each takes well under 100 ms
    // (debug builds are ~10x slower than release: the bound here is the release target's)
    let budget = if cfg!(debug_assertions) {
        std::time::Duration::from_millis(1000)
    } else {
        std::time::Duration::from_millis(100)
    };
    for action in [
        Action::StartFilter,
        Action::FilterPush('r'),
        Action::FilterClear,
        Action::CycleSort,
        Action::CycleGrouping,
    ] {
        let started = std::time::Instant::now();
        update(&mut app, action.clone());
        let updated = started.elapsed();
        draw(&app);
        eprintln!(
            "{action:?}: update {updated:?}, with the frame {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < budget,
            "{action:?} took {:?}",
            started.elapsed()
        );
    }
}
