//! Service mode (`--follow-name NAME`, `--pid-file PATH`): trace a service for days across its
//! restarts. leaktrace waits for the process, traces it as `-p PID` would, and when it exits
//! (its report and export written as for any target), waits for the next one and attaches
//! again. The metrics endpoint, the signals and the snapshot directory stay across the
//! restarts. Unless `--sample-bytes` says otherwise, allocations are sampled (one per
//! [`SERVICE_SAMPLE_BYTES`] on average), as a service running for days should be.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::StopSignals;

/// Mean bytes between sampled allocations in service mode, unless `--sample-bytes` is given.
pub(super) const SERVICE_SAMPLE_BYTES: u64 = 512 * 1024;

/// How often the process is looked for while waiting.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Which process service mode follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Wanted {
    /// The oldest process with this command name or executable file name.
    Name(String),
    /// The process whose pid this file holds.
    PidFile(PathBuf),
}

impl Wanted {
    /// What the user asked to follow, if anything.
    pub(super) fn of(cli: &crate::cli::Cli) -> Option<Wanted> {
        match (&cli.follow_name, &cli.pid_file) {
            (Some(name), _) => Some(Wanted::Name(name.clone())),
            (None, Some(path)) => Some(Wanted::PidFile(path.clone())),
            (None, None) => None,
        }
    }

    /// How it is named to the user.
    pub(super) fn describe(&self) -> String {
        match self {
            Wanted::Name(name) => format!("a process named {name}"),
            Wanted::PidFile(path) => format!("the process in {}", path.display()),
        }
    }

    /// The pid to trace now, other than `not` (the one just traced, maybe not yet reaped).
    pub(super) fn find(&self, not: Option<u32>) -> Option<u32> {
        let me = std::process::id();
        let usable = |pid: u32| Some(pid) != not && pid != me && alive(pid);
        match self {
            Wanted::PidFile(path) => pid_in(path).filter(|&pid| usable(pid)),
            Wanted::Name(name) => {
                let mut found: Vec<(u64, u32)> = std::fs::read_dir("/proc")
                    .ok()?
                    .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|&pid| usable(pid) && named(pid, name))
                    .filter_map(|pid| Some((start_time(pid)?, pid)))
                    .collect();
                // The oldest: a pre-fork server's master rather than its workers.
                found.sort_unstable();
                found.first().map(|&(_, pid)| pid)
            }
        }
    }

    /// Waits until [`Wanted::find`] finds a process, or a stop signal arrives (`None`).
    pub(super) async fn wait(&self, not: Option<u32>, signals: &mut StopSignals) -> Option<u32> {
        let mut said = false;
        loop {
            if let Some(pid) = self.find(not) {
                return Some(pid);
            }
            if !said {
                eprintln!("leaktrace: waiting for {}", self.describe());
                said = true;
            }
            tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY) => {}
                _ = signals.interrupt.recv() => return None,
                _ = signals.terminate.recv() => return None,
            }
        }
    }
}

/// The pid a pid file holds (its first word).
fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether `pid` runs (exists and is not a zombie).
pub(super) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses: state is field 3,
    // so the start time (field 22) is the 20th after it.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `pid`'s command name (`comm`, cut at 15 bytes by the kernel) or executable file
/// name is `name`.
fn named(pid: u32, name: &str) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim_end_matches('\n') == name || exe_named(pid, name)
}

/// Whether `pid`'s executable's file name is `name` (a kernel thread has none).
fn exe_named(pid: u32, name: &str) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
        exe.file_name()
            .and_then(|f| f.to_str())
            // A replaced executable reads "name (deleted)".
            .is_some_and(|f| f == name || f.strip_suffix(" (deleted)") == Some(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_names_its_process_and_not_the_one_just_traced() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("service.pid");
        let me = std::process::id();
        // This process is excluded (leaktrace never traces itself): use our parent.
        let parent = std::os::unix::process::parent_id();
        std::fs::write(&file, format!("{parent}\n")).expect("writing");
        let wanted = Wanted::PidFile(file.clone());
        assert_eq!(wanted.find(None), Some(parent));
        assert_eq!(wanted.find(Some(parent)), None, "the one just traced");
        std::fs::write(&file, format!("{me}")).expect("writing");
        assert_eq!(wanted.find(None), None, "never itself");
        std::fs::write(&file, "not a pid").expect("writing");
        assert_eq!(wanted.find(None), None);
        assert_eq!(Wanted::PidFile(dir.path().join("missing")).find(None), None);
    }

    #[test]
    fn a_name_finds_the_oldest_process_running_it() {
        // Two sleeps started one after the other: the older one is found
        let mut first = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        std::thread::sleep(Duration::from_millis(50));
        let mut second = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let wanted = Wanted::Name("sleep".to_owned());
        let older = [first.id(), second.id()];
        let found = wanted.find(None).expect("a sleep");
        // Another sleep on the machine may be older still; ours are found in order otherwise.
        if older.contains(&found) {
            assert_eq!(found, first.id());
        }
        assert_ne!(wanted.find(Some(found)), Some(found));
        let _ = first.kill();
        let _ = second.kill();
        let _ = first.wait();
        let _ = second.wait();
        assert!(!alive(first.id()), "reaped");
        assert_eq!(Wanted::Name("no-such-program-xyz".into()).find(None), None);
    }
}
