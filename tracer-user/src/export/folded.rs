//! Folded-stack export, the format of inferno's `collapse-*` tools and `stackcollapse.pl`:
//! one line per stack, `root;caller;…;leaf COUNT`, where COUNT is the stack's live bytes.
//! `inferno-flamegraph --countname bytes` (or `flamegraph.pl --countname bytes`) draws it.
//!
//! Frames run from the outermost (`main`, thread start) to the allocator's caller. Inlined
//! functions are frames of their own. A frame without a function name is shown as its module and
//! address, `[libfoo.so] 0x7f3a00001234`, or `[unknown] 0x7f3a00001234` without a module.
//!
//! Names are made safe for the format: `;` (the frame separator) becomes `:`, control characters
//! (newlines) become spaces, and a name ending in a space and a number gets `_` for that space,
//! because a trailing number would be read as a second count column. Stacks with no live bytes
//! are left out; stacks that fold to the same line are merged, keeping the report's order. Rows
//! the report left out (`--top`) are one last line, `[omitted];[37 more stacks] BYTES`, so the
//! flame graph's total is still the process's.

use std::{collections::HashMap, io::Write};

use super::one_line;
use crate::report::{Frame, Report, StackReport};

/// The frame written for a stack with no frames (no stack was recorded).
pub const NO_STACK_FRAME: &str = "[no stack]";

/// Writes one folded line per stack with live bytes.
pub fn write<W: Write>(report: &Report, mut out: W) -> std::io::Result<()> {
    for (stack, bytes) in lines(report) {
        writeln!(out, "{stack} {bytes}")?;
    }
    out.flush()
}

/// The root frame of the line standing in for rows a report left out.
pub const OMITTED_FRAME: &str = "[omitted]";

/// The folded lines of `report` as `(stack, live bytes)` pairs, in report order.
pub fn lines(report: &Report) -> Vec<(String, u64)> {
    let mut lines: Vec<(String, u64)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for stack in report.stacks.iter().filter(|s| s.live_bytes > 0) {
        let mut folded = fold(stack);
        // Several processes: each is a root of its own in the flame graph.
        if !report.processes.is_empty() {
            folded = format!("pid {};{folded}", stack.pid);
        }
        match index.get(&folded) {
            Some(&i) => {
                if let Some((_, bytes)) = lines.get_mut(i) {
                    *bytes = bytes.saturating_add(stack.live_bytes);
                }
            }
            None => {
                index.insert(folded.clone(), lines.len());
                lines.push((folded, stack.live_bytes));
            }
        }
    }
    if report.omitted.live_bytes > 0 {
        lines.push((
            format!(
                "{OMITTED_FRAME};{}",
                sanitize(&super::omitted_label(&report.omitted))
            ),
            report.omitted.live_bytes,
        ));
    }
    lines
}

/// The stack's frames, outermost first, joined with `;`, under a root frame naming its leak
/// verdict (`[leak]`, `[steady]`, ...), so a flame graph splits leaks from the rest.
pub fn fold(stack: &StackReport) -> String {
    let verdict = format!("[{}]", stack.verdict);
    if stack.frames.is_empty() {
        return format!("{verdict};{NO_STACK_FRAME}");
    }
    let names: Vec<String> = stack.frames.iter().rev().map(|f| frame_name(f)).collect();
    format!("{verdict};{}", names.join(";"))
}

/// A frame's name as it appears in a folded line.
pub fn frame_name(frame: &Frame) -> String {
    sanitize(&frame.label())
}

/// Makes `name` safe as one frame of a folded line (see the module docs).
fn sanitize(name: &str) -> String {
    let mut name: String = one_line(name).trim().replace(';', ":");
    if let Some(space) = name.rfind(' ') {
        let tail = &name[space + 1..];
        if !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit() || c == '.') {
            name.replace_range(space..=space, "_");
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use inferno::flamegraph::{self, Options};

    use super::{super::tests::sample_report, *};

    fn named(function: Option<&str>, module: Option<&str>, addr: u64) -> Frame {
        Frame {
            function: function.map(str::to_owned),
            module: module.map(str::to_owned),
            ..Frame::unknown(addr)
        }
    }

    #[test]
    fn frame_names_fall_back_to_module_then_unknown() {
        assert_eq!(
            frame_name(&named(Some("malloc_wrapper"), Some("/a/libx.so"), 1)),
            "malloc_wrapper"
        );
        assert_eq!(
            frame_name(&named(None, Some("/usr/lib/libfoo.so"), 0x1234)),
            "[libfoo.so] 0x1234"
        );
        assert_eq!(frame_name(&named(None, None, 0xabc)), "[unknown] 0xabc");
        assert_eq!(
            frame_name(&named(Some(" \n"), None, 0xabc)),
            "[unknown] 0xabc"
        );
    }

    #[test]
    fn several_processes_are_roots_of_their_own() {
        // Given the sample's rows split between two traced processes
        let mut report = sample_report();
        report.processes = vec![
            crate::report::TracedProcess {
                pid: 10,
                ..Default::default()
            },
            crate::report::TracedProcess {
                pid: 11,
                ..Default::default()
            },
        ];
        for (i, stack) in report.stacks.iter_mut().enumerate() {
            stack.pid = 10 + (i % 2) as u32;
        }
        // Then every line starts at its process
        let lines = lines(&report);
        let roots: Vec<&str> = lines
            .iter()
            .filter_map(|(stack, _)| stack.split(';').next())
            .filter(|root| *root != OMITTED_FRAME)
            .collect();
        assert!(!roots.is_empty());
        assert!(
            roots.iter().all(|r| *r == "pid 10" || *r == "pid 11"),
            "{roots:?}"
        );
        assert!(roots.contains(&"pid 11"));
    }

    #[test]
    fn frame_names_cannot_break_the_line_format() {
        // `;` separates frames
        assert_eq!(
            frame_name(&named(Some("f<[u8; 8]>"), None, 0)),
            "f<[u8: 8]>"
        );
        // a newline would end the line; runs of spaces are kept
        assert_eq!(frame_name(&named(Some("a\nb  c\r\n"), None, 0)), "a b  c");
        // a trailing number would be read as a count
        assert_eq!(frame_name(&named(Some("thunk 12"), None, 0)), "thunk_12");
        assert_eq!(frame_name(&named(Some("x 1.5"), None, 0)), "x_1.5");
        assert_eq!(frame_name(&named(Some("x 1a"), None, 0)), "x 1a");
        assert_eq!(frame_name(&named(Some("12"), None, 0)), "12");
    }

    #[test]
    fn folded_lines_go_root_first_and_skip_empty_stacks() {
        // Given the sample report (three stacks, one without live bytes)
        let report = sample_report();

        // When folding
        let lines = lines(&report);

        // Then
        assert_eq!(
            lines,
            [
                (
                    "[unknown];main;handle_request;buffer_append;grow_buffer".to_owned(),
                    1_572_864
                ),
                (
                    "[unknown];[unknown] 0x7ffd00009abc;<alloc::vec::Vec<[u8: 8]>>::with_capacity;\
                     [libfoo.so.1] +0x1234"
                        .to_owned(),
                    4096
                ),
                ("[omitted];[2 more stacks]".to_owned(), 2048),
            ]
        );
    }

    #[test]
    fn stacks_folding_to_the_same_line_are_merged() {
        // Given two stacks with the same names at different addresses, and one without frames
        let mut report = sample_report();
        let mut twin = report.stacks[0].clone();
        for frame in &mut twin.frames {
            std::sync::Arc::make_mut(frame).addr += 8;
        }
        twin.live_bytes = 100;
        report.stacks.push(twin);
        report.stacks.push(StackReport {
            id: 0,
            frames: Vec::new(),
            ..report.stacks[0].clone()
        });

        // When folding
        let lines = lines(&report);

        // Then the twin is merged into the first line, the frameless one is marked, and the
        // rows left out come last
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].1, 1_572_864 + 100);
        assert_eq!(lines[2], (format!("[unknown];{NO_STACK_FRAME}"), 1_572_864));
    }

    #[test]
    fn inferno_draws_the_folded_output() {
        // Given the folded sample
        let report = sample_report();
        let mut folded = Vec::new();
        write(&report, &mut folded).expect("writing to a Vec succeeds");
        let folded = String::from_utf8(folded).expect("UTF-8");
        // Rows left out are drawn too: the root is the process's live bytes
        let total = report.totals.live_bytes;

        // When inferno draws it, as `inferno-flamegraph --countname bytes` would
        let mut options = Options::default();
        options.count_name = "bytes".to_owned();
        options.deterministic = true;
        let mut svg = Vec::new();
        flamegraph::from_lines(&mut options, folded.lines(), &mut svg).expect("inferno accepts it");
        let svg = String::from_utf8(svg).expect("UTF-8 SVG");

        // Then every leaf is drawn and the root spans the total live bytes
        for leaf in ["grow_buffer", "[libfoo.so.1] +0x1234", "[2 more stacks]"] {
            assert!(svg.contains(leaf), "SVG lacks {leaf}");
        }
        assert!(
            svg.contains(&format!("total_samples=\"{total}\"")),
            "SVG total is not {total}"
        );
        assert!(
            svg.contains("all (1,579,008 bytes, 100%)"),
            "SVG root is not 1,579,008 bytes"
        );
    }
}
