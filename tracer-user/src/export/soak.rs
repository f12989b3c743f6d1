//! Periodic snapshots for long soaks (`--snapshot-every DURATION --snapshot-dir DIR --keep N`):
//! timestamped exports written while tracing goes on, keeping only the newest N.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    export::{self, Format},
    report::Report,
};

/// Parses a duration such as `90`, `90s`, `15m`, `2h` or `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 90s, 15m, 2h)"))?;
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use s, m, h or d)"
            ));
        }
    };
    let seconds = value * scale;
    if seconds.is_finite() && seconds >= 1.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!("`{text}` must be at least one second"))
    }
}

/// `YYYYMMDDTHHMMSSZ` for a time after the Unix epoch (UTC).
pub fn utc_stamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Writes periodic snapshots into one directory.
#[derive(Debug)]
pub struct Soak {
    dir: PathBuf,
    keep: usize,
    format: Format,
    prefix: String,
}

impl Soak {
    /// Snapshots of `pid` into `dir` (created if missing), keeping the newest `keep`.
    pub fn new(dir: &Path, keep: usize, format: Format, pid: u32) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            format,
            prefix: format!("leaktrace-{pid}-"),
        })
    }

    /// Writes `report` as the snapshot taken at `time` and removes the oldest beyond `keep`.
    /// Returns the new file's path.
    pub fn write(&self, report: &Report, time: SystemTime) -> std::io::Result<PathBuf> {
        let name = format!(
            "{}{}.{}",
            self.prefix,
            utc_stamp(time),
            self.format.extension()
        );
        let path = self.dir.join(name);
        // Write then rename, so a reader never sees a half-written snapshot.
        let partial = path.with_extension("partial");
        {
            // A stale partial file (or a link planted under its name) goes first.
            match fs::remove_file(&partial) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
            let file = super::file::create_new_private(&partial)?;
            let mut out = std::io::BufWriter::new(file);
            export::write_report(report, self.format, &mut out)?;
            out.flush()?;
        }
        fs::rename(&partial, &path)?;
        self.prune()?;
        Ok(path)
    }

    /// This soak's snapshot files, oldest first (the names sort by time).
    pub fn files(&self) -> std::io::Result<Vec<PathBuf>> {
        let suffix = format!(".{}", self.format.extension());
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&self.prefix) && n.ends_with(&suffix))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    fn prune(&self) -> std::io::Result<()> {
        let files = self.files()?;
        let excess = files.len().saturating_sub(self.keep);
        for old in &files[..excess] {
            fs::remove_file(old)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Diagnostics, ReportTotals};

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("0.5").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn stamps_are_utc_and_sortable() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        // 2026-11-21 01:36:16 UTC
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_795_224_976)),
            "20261121T013616Z"
        );
        // A leap day.
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229T000000Z"
        );
    }

    fn report() -> Report {
        Report {
            pid: 7,
            command: "app".to_owned(),
            duration_s: 1.0,
            unwind: "auto".to_owned(),
            ended: None,
            processes: Vec::new(),
            sample_bytes: None,
            estimates: Vec::new(),
            totals: ReportTotals::default(),
            diagnostics: Diagnostics::default(),
            group_by: "source".to_owned(),
            omitted: crate::report::Omitted::default(),
            coverage: Default::default(),
            stacks: Vec::new(),
        }
    }

    #[test]
    fn keeps_the_newest_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let soak = Soak::new(&dir.path().join("snaps"), 2, Format::Json, 7).expect("soak");
        let mut written = Vec::new();
        for minute in 0..4 {
            let time = UNIX_EPOCH + Duration::from_secs(1_800_000_000 + 60 * minute);
            written.push(soak.write(&report(), time).expect("write"));
        }
        let files = soak.files().expect("files");
        assert_eq!(files, written[2..].to_vec());
        let text = fs::read_to_string(&files[1]).expect("read");
        assert!(text.contains("\"pid\": 7"), "{text}");
    }
}
