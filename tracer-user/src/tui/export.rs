//! What key `e` writes and where: the snapshot's stacks that pass the filter, as a [`Report`],
//! to `leaktrace-<pid>-<unix seconds>.<ext>`. Pure; [`super::run`] does the writing.

use std::path::{Path, PathBuf};

use super::rows::visible_stacks;
use crate::{export::Format, report::Report};

/// `report` with only the stacks that pass `filter` (see [`super::rows::visible_stacks`]), in
/// report order. The totals, diagnostics and the rows the snapshot itself left out stay those
/// of the whole process.
pub(crate) fn filtered_report(report: &Report, filter: &str) -> Report {
    Report {
        pid: report.pid,
        command: report.command.clone(),
        duration_s: report.duration_s,
        unwind: report.unwind.clone(),
        ended: report.ended.clone(),
        processes: report.processes.clone(),
        sample_bytes: report.sample_bytes,
        estimates: report.estimates.clone(),
        totals: report.totals,
        diagnostics: report.diagnostics.clone(),
        group_by: report.group_by.clone(),
        omitted: report.omitted,
        coverage: Default::default(),
        stacks: visible_stacks(report, filter)
            .into_iter()
            .filter_map(|i| report.stacks.get(i).cloned())
            .collect(),
    }
}

/// `dir/leaktrace-<pid>-<unix_seconds>.<ext>`, the extension being the format's.
pub(crate) fn export_path(dir: &Path, pid: u32, unix_seconds: u64, format: Format) -> PathBuf {
    dir.join(format!(
        "leaktrace-{pid}-{unix_seconds}.{}",
        format.extension()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::testing::sample_snapshot;

    #[test]
    fn paths_name_the_pid_time_and_format() {
        let dir = Path::new("/tmp/out");
        assert_eq!(
            export_path(dir, 4242, 1_700_000_000, Format::Json),
            PathBuf::from("/tmp/out/leaktrace-4242-1700000000.json")
        );
        assert_eq!(
            export_path(dir, 1, 2, Format::Folded),
            PathBuf::from("/tmp/out/leaktrace-1-2.folded")
        );
        assert_eq!(
            export_path(Path::new("."), 1, 2, Format::Text),
            PathBuf::from("./leaktrace-1-2.txt")
        );
    }

    #[test]
    fn the_report_keeps_only_matching_stacks() {
        // Given the sample report
        let report = sample_snapshot().report;

        // When filtering on a function name
        let filtered = filtered_report(&report, "Alloc_Buffer");

        // Then only those stacks remain, in order, with the process figures unchanged
        let ids: Vec<u64> = filtered.stacks.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![4, 5]);
        assert_eq!(filtered.totals, report.totals);
        assert_eq!(filtered.diagnostics, report.diagnostics);
        assert_eq!(filtered.pid, report.pid);
        assert_eq!(filtered.command, report.command);

        // And no filter keeps everything
        assert_eq!(filtered_report(&report, ""), report);
        assert!(filtered_report(&report, "no such name").stacks.is_empty());
    }
}
