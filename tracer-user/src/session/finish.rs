//! The end of a run: the export file, the live view's last state (kept until the user quits),
//! the text report on stdout and what happened on stderr.
use std::{fs::File, io::Write as _, path::PathBuf};

use super::{Session, StopReason};
use crate::{
    cli::DEFAULT_TEXT_TOP,
    error::Failure,
    export::{self, Format},
};

/// Writes the final report; an export that cannot be written is the run's failure.
pub(super) fn finish(
    session: &mut Session,
    reason: StopReason,
    export: Option<(PathBuf, Format, File)>,
) -> Result<(), Failure> {
    session.refresh_maps();
    // The export holds every row unless --top asks for fewer; stdout keeps a short list.
    let full = session.report();
    let ended = reason.describe();
    let mut full = full;
    full.ended = Some(ended.clone());
    let mut report = full.clone();
    if let Some(top) = session.top {
        report.keep_top(top);
    }
    let mut messages = vec![format!(
        "leaktrace: stopped ({ended}) after {:.1}s; probes detached",
        report.duration_s
    )];
    if let Some(warning) = &report.coverage.warning {
        messages.push(format!("leaktrace: WARNING: {warning}"));
    }
    let mut failure = None;
    if let Some((path, format, file)) = export {
        let write = || -> std::io::Result<()> {
            file.set_len(0)?;
            let mut out = std::io::BufWriter::new(&file);
            export::write_report(&report, format, &mut out)?;
            out.flush()
        };
        match write() {
            Ok(()) => messages.push(format!(
                "leaktrace: wrote {} ({format}, {} of {} rows)",
                path.display(),
                report.stacks.len(),
                report.stacks.len() as u64 + report.omitted.rows
            )),
            Err(err) => {
                failure = Some(Failure::runtime(
                    format!("writing {}: {err}", path.display()),
                    None,
                ));
            }
        }
    }
    if let Some(output) = session.launched.as_ref().and_then(|l| l.output.as_ref()) {
        messages.push(format!(
            "leaktrace: the program's output is in {}",
            output.display()
        ));
    }
    if let Some(view) = session.live_view.take() {
        if reason != StopReason::Quit {
            let ended = messages
                .iter()
                .map(|m| m.trim_start_matches("leaktrace: "))
                .collect::<Vec<_>>()
                .join("; ");
            let snapshot = session.snapshot(Some(ended));
            view.send_last(snapshot);
        }
        if let Err(err) = view.join() {
            messages.push(format!("leaktrace: {err}"));
        }
    }
    let mut text = full;
    text.keep_top(session.top.unwrap_or(DEFAULT_TEXT_TOP));
    let mut stdout = std::io::stdout().lock();
    let _ = export::write_report(&text, Format::Text, &mut stdout);
    let _ = stdout.flush();
    for message in messages {
        eprintln!("{message}");
    }
    failure.map_or(Ok(()), Err)
}
