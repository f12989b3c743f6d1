//! Text export: a report for people.
//!
//! A header with the process, the totals, a `LOST EVENTS` warning when the kernel side dropped
//! events, and every non-zero diagnostic; then each stack in report order with its live bytes
//! (human units and exact), live blocks, totals since attach and oldest live age, followed by
//! its frames, innermost first:
//!
//! ```text
//!   #0 grow_buffer (server) src/buffer.c:42 [inlined]
//!   #1 [libfoo.so.1] 0x7f3a00001234
//! ```

use std::io::Write;

use super::{human_bytes, one_line};
use crate::report::{Frame, Report, StackReport};

/// Writes `report` as text.
pub fn write<W: Write>(report: &Report, mut out: W) -> std::io::Result<()> {
    write_header(report, &mut out)?;
    if report.stacks.is_empty() {
        writeln!(out, "no stacks recorded")?;
    } else {
        let count = report.stacks.len();
        let all = count as u64 + report.omitted.rows;
        let noun = if all == 1 { "stack" } else { "stacks" };
        if report.omitted.rows > 0 {
            writeln!(out, "top {count} of {all} {noun} by live bytes")?;
        } else {
            writeln!(out, "{all} {noun} by live bytes")?;
        }
        for (rank, stack) in report.stacks.iter().enumerate() {
            writeln!(out)?;
            write_stack(rank + 1, stack, !report.processes.is_empty(), &mut out)?;
        }
    }
    write_unnamed(report, &mut out)?;
    if let Some(omitted) = super::omitted_summary(&report.omitted) {
        writeln!(out)?;
        writeln!(
            out,
            "... {omitted} not shown (--top N shows more; an --export holds every row)"
        )?;
    }
    out.flush()
}

fn write_header<W: Write>(report: &Report, out: &mut W) -> std::io::Result<()> {
    let totals = &report.totals;
    writeln!(out, "leaktrace report")?;
    writeln!(out, "  pid:       {}", report.pid)?;
    writeln!(out, "  command:   {}", one_line(&report.command))?;
    writeln!(out, "  duration:  {}", human_seconds(report.duration_s))?;
    if !report.processes.is_empty() {
        let list: Vec<String> = report
            .processes
            .iter()
            .map(|p| match p.parent {
                Some(parent) => format!("{} (child of {parent})", p.pid),
                None => p.pid.to_string(),
            })
            .collect();
        writeln!(out, "  processes: {}", list.join(", "))?;
    }
    if let Some(ended) = &report.ended {
        writeln!(out, "  ended:     {}", one_line(ended))?;
    }
    writeln!(out, "  unwinding: {}", one_line(&report.unwind))?;
    let rows = match report.group_by.as_str() {
        "address" => "one per stack of return addresses (--group-by address)",
        _ => "one per source-level call path (--group-by source)",
    };
    writeln!(out, "  rows:      {rows}")?;
    if let Some(mean) = report.sample_bytes {
        writeln!(
            out,
            "  sampled:   every {} on average (--sample-bytes): figures are estimates",
            human_bytes(mean)
        )?;
    }
    for e in &report.estimates {
        writeln!(
            out,
            "  estimates: rows labelled ({}) come from {}, sampled every {} on average: {}",
            e.allocator,
            e.source,
            human_bytes(e.sample_bytes),
            e.note
        )?;
    }
    writeln!(out)?;
    if totals.lost_events > 0 {
        let causes: Vec<String> = report
            .diagnostics
            .losses()
            .map(|h| format!("{}: {}", h.name, h.value))
            .collect();
        writeln!(
            out,
            "WARNING: LOST EVENTS: {} ({}); live figures may be wrong",
            totals.lost_events,
            causes.join(", ")
        )?;
        writeln!(out)?;
    }
    if let Some(warning) = &report.coverage.warning {
        writeln!(out, "WARNING: MEMORY NOT TRACED: {warning}")?;
        writeln!(out)?;
    }
    writeln!(out, "totals")?;
    writeln!(
        out,
        "  live:            {} ({} bytes) in {}",
        human_bytes(totals.live_bytes),
        totals.live_bytes,
        count(totals.live_allocs, "allocation")
    )?;
    if totals.mapped_regions > 0 {
        writeln!(
            out,
            "                   of which {} ({} bytes) in {} (anonymous maps)",
            human_bytes(totals.mapped_bytes),
            totals.mapped_bytes,
            count(totals.mapped_regions, "mapping")
        )?;
    }
    writeln!(out, "  allocations:     {}", totals.allocs)?;
    writeln!(out, "  frees:           {}", totals.frees)?;
    writeln!(out, "  unmatched frees: {}", totals.unmatched_frees)?;
    writeln!(out, "  lost events:     {}", totals.lost_events)?;
    let diagnostics: Vec<(&str, u64)> = report
        .diagnostics
        .iter()
        .filter(|h| h.value > 0)
        .map(|h| (h.name, h.value))
        .collect();
    if !diagnostics.is_empty() {
        writeln!(out)?;
        writeln!(out, "diagnostics")?;
        let width = diagnostics
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0)
            + 1;
        for (name, value) in diagnostics {
            let label = format!("{name}:");
            if name.ends_with("_bytes") {
                writeln!(out, "  {label:width$} {value} ({})", human_bytes(value))?;
            } else {
                writeln!(out, "  {label:width$} {value}")?;
            }
        }
    }
    writeln!(out)
}

/// Modules whose frames stayed unnamed, with their build ids and where names would come from.
fn write_unnamed<W: Write>(report: &Report, out: &mut W) -> std::io::Result<()> {
    let mut unnamed: Vec<(&str, Option<&str>, usize)> = Vec::new();
    for frame in report.stacks.iter().flat_map(|s| &s.frames) {
        let (None, Some(module)) = (&frame.function, frame.module_name()) else {
            continue;
        };
        let build_id = frame.build_id.as_deref();
        match unnamed
            .iter_mut()
            .find(|(m, b, _)| *m == module && *b == build_id)
        {
            Some((_, _, n)) => *n += 1,
            None => unnamed.push((module, build_id, 1)),
        }
    }
    if unnamed.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "frames without names (install the modules' debug symbols, e.g. Debian's -dbgsym \
         packages, or give --debuginfo-dir DIR):"
    )?;
    for (module, build_id, n) in unnamed {
        writeln!(
            out,
            "  {}: {}, build id {}",
            one_line(module),
            count(n as u64, "frame"),
            one_line(build_id.unwrap_or("unknown"))
        )?;
    }
    Ok(())
}

/// One row; `pid` says whose heap it is when several processes are traced.
fn write_stack<W: Write>(
    rank: usize,
    stack: &StackReport,
    pid: bool,
    out: &mut W,
) -> std::io::Result<()> {
    let oldest = stack
        .oldest_age_s
        .map_or_else(|| "-".to_owned(), human_seconds);
    let mut through = if stack.allocator.is_empty() {
        String::new()
    } else {
        format!(" ({})", one_line(&stack.allocator))
    };
    if pid {
        through.push_str(&format!(" in pid {}", stack.pid));
    }
    writeln!(
        out,
        "#{rank}: {} ({} bytes) live in {}, oldest {oldest}{through}",
        human_bytes(stack.live_bytes),
        stack.live_bytes,
        count(stack.live_allocs, "allocation"),
    )?;
    writeln!(
        out,
        "    since attach: {}, {} ({} bytes)",
        count(stack.total_allocs, "allocation"),
        human_bytes(stack.total_bytes),
        stack.total_bytes
    )?;
    let growth = match (
        stack.growth_bytes_per_s,
        stack.growth_bytes_per_h,
        stack.growth_r2,
    ) {
        (Some(per_s), Some(per_h), Some(r2)) => format!(
            ", growth {}{}/s ({}{}/h, R² {r2:.2})",
            if per_s < 0.0 { "-" } else { "+" },
            human_bytes(per_s.abs() as u64),
            if per_h < 0.0 { "-" } else { "+" },
            human_bytes(per_h.abs() as u64)
        ),
        _ => String::new(),
    };
    writeln!(out, "    verdict: {}{growth}", stack.verdict)?;
    if stack.call_sites.len() > 1 {
        writeln!(
            out,
            "    merged from {} call sites: the same source path through different addresses \
             (--group-by address shows each)",
            stack.call_sites.len()
        )?;
    }
    if stack.frames.is_empty() {
        writeln!(out, "  (no stack recorded)")?;
    }
    for (i, frame) in stack.frames.iter().enumerate() {
        writeln!(out, "  #{i} {}", frame_line(frame))?;
    }
    if stack.truncated {
        writeln!(
            out,
            "  ... (stack truncated after {} frames)",
            stack.frames.len()
        )?;
    }
    Ok(())
}

/// One frame: `function (module) file:line [inlined]`, or its [`Frame::label`] without a name.
/// The live view's detail pane shows the same lines.
pub(crate) fn frame_line(frame: &Frame) -> String {
    let mut line = frame.label();
    if let (Some(_), Some(module)) = (&frame.function, frame.module_name()) {
        line.push_str(&format!(" ({})", one_line(module)));
    }
    match (&frame.file, frame.line) {
        (Some(file), Some(n)) => line.push_str(&format!(" {}:{n}", one_line(file))),
        (Some(file), None) => line.push_str(&format!(" {}", one_line(file))),
        (None, _) => {}
    }
    if frame.inlined {
        line.push_str(" [inlined]");
    }
    line
}

/// `1 allocation`, `2 allocations`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A duration for people: `0.25 s`, `12.5 s`, `4m 05s`, `2h 03m`.
fn human_seconds(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".to_owned();
    }
    if seconds < 10.0 {
        return format!("{seconds:.2} s");
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    // Whole seconds from here; the float-to-int cast saturates for huge values.
    let whole = seconds.round() as u64;
    if whole < 3600 {
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h {:02}m", whole / 3600, whole % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tests::sample_report, *};
    use crate::export::{Format, tests::render};

    #[test]
    fn frames_show_name_module_and_location() {
        let mut frame = Frame {
            function: Some("grow_buffer".to_owned()),
            module: Some("/usr/bin/server".to_owned()),
            file: Some("src/buffer.c".to_owned()),
            line: Some(42),
            addr: 0x10,
            offset: None,
            build_id: None,
            inlined: true,
        };
        assert_eq!(
            frame_line(&frame),
            "grow_buffer (server) src/buffer.c:42 [inlined]"
        );
        frame.inlined = false;
        frame.line = None;
        assert_eq!(frame_line(&frame), "grow_buffer (server) src/buffer.c");
        frame.file = None;
        frame.module = None;
        assert_eq!(frame_line(&frame), "grow_buffer");
        frame.function = None;
        assert_eq!(frame_line(&frame), "[unknown] 0x10");
        frame.module = Some("/lib/libfoo.so".to_owned());
        assert_eq!(frame_line(&frame), "[libfoo.so] 0x10");
        frame.function = Some("bad\nname".to_owned());
        assert_eq!(frame_line(&frame), "bad name (libfoo.so)");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_seconds(0.25), "0.25 s");
        assert_eq!(human_seconds(12.5), "12.5 s");
        assert_eq!(human_seconds(245.0), "4m 05s");
        assert_eq!(human_seconds(7380.0), "2h 03m");
        assert_eq!(human_seconds(f64::NAN), "?");
        assert_eq!(human_seconds(-1.0), "?");
    }

    #[test]
    fn lost_events_are_announced_only_when_there_are_some() {
        // Given the sample, which lost events
        let mut report = sample_report();
        assert!(render(&report, Format::Text).contains("WARNING: LOST EVENTS: 7"));

        // When nothing was lost
        report.totals.lost_events = 0;
        for health in &mut report.diagnostics.0 {
            if health.kind == crate::source::HealthKind::Lost {
                health.value = 0;
            }
        }
        let text = render(&report, Format::Text);

        // Then there is no warning, and zero diagnostics are not listed
        assert!(!text.contains("LOST EVENTS"), "{text}");
        assert!(!text.contains("ringbuf_full"), "{text}");
        assert!(text.contains("stacks_truncated:"), "{text}");
    }
}
