//! Before anything is attached: the command line checked, and the target opened (a running
//! process, or a program started and held until it can be traced from its first allocation).
use std::{
    fs::File,
    io::IsTerminal as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    cli::Cli,
    error::{Failure, chain},
    export::{Format, soak::Soak},
    source::go::binary::{self as go_binary, GoBinary},
    symbolize::debuginfo::{DebugDirs, SymbolFile},
    target::{
        Mapping, Process,
        allocator::{self, AllocatorError, Allocators, Selection},
        launch::{self, Launched},
    },
};

/// What the command line asks for, checked.
#[derive(Debug)]
pub(super) struct Checked {
    /// `--snapshot-dir` and `--snapshot-every`.
    pub(super) soak: Option<(PathBuf, Duration)>,
    /// `--export`: where, in which format, opened.
    pub(super) export: Option<(PathBuf, Format, File)>,
    /// `--push-token-file`: the token it holds.
    pub(super) push_token: Option<String>,
}

/// Checks the command line, privileges and paths before anything is attached, so a long
/// session does not end in an error it could have had at the start.
pub(super) fn check(cli: &Cli) -> Result<Checked, Failure> {
    if cli.pid.is_empty() && cli.command.is_empty() {
        return Err(Failure::usage(
            "nothing to trace",
            "give -p PID for a running process, -- CMD ARGS... to start one, or --follow-name NAME for a service",
        ));
    }
    check_privileges()?;
    raise_open_file_limit();
    if !crate::target::in_initial_pid_namespace() {
        return Err(Failure::usage(
            "started in a pid namespace of its own (a container?): its pids are not the ones the kernel's probes see",
            "run it in the host's pid namespace (docker run --pid=host, or on the host itself)",
        ));
    }
    let soak = match (&cli.snapshot_dir, cli.snapshot_every) {
        (Some(dir), Some(every)) => {
            Soak::new(dir, cli.keep, cli.export_format(), 0).map_err(|err| {
                Failure::usage(
                    format!("cannot use snapshot directory {}: {err}", dir.display()),
                    "choose a writable --snapshot-dir",
                )
            })?;
            Some((dir.clone(), every))
        }
        _ => None,
    };
    for dir in &cli.debuginfo_dir {
        if !dir.is_dir() {
            return Err(Failure::usage(
                format!("--debuginfo-dir {} is not a directory", dir.display()),
                "give a directory of debug files (e.g. one holding .build-id/)",
            ));
        }
    }
    let export = match &cli.export {
        Some(path) => Some((path.clone(), cli.export_format(), check_export_path(path)?)),
        None => None,
    };
    let push_token = match &cli.push_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|err| {
                    Failure::usage(
                        format!("cannot read --push-token-file {}: {err}", path.display()),
                        "give a readable file holding the token",
                    )
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    Ok(Checked {
        soak,
        export,
        push_token,
    })
}

/// The traced process and its allocators.
#[derive(Debug)]
pub(super) struct Target {
    /// The process.
    pub(super) process: Process,
    /// The allocators it uses (none for a Go program without cgo).
    pub(super) allocators: Allocators,
    /// A Go program: its runtime's addresses and its executable's inode.
    pub(super) go: Option<(GoBinary, u64)>,
    /// In launch mode, the program started and held.
    pub(super) launched: Option<Launched>,
}

impl Target {
    /// Opens `-p PID`, or starts `-- CMD` held before its first instruction.
    pub(super) fn open(cli: &Cli) -> Result<Self, Failure> {
        let no_malloc = |err: &dyn std::error::Error| {
            Failure::usage(
                chain(err),
                "leaktrace traces glibc malloc, jemalloc, mimalloc, tcmalloc, C++ new and Rust's \
                 allocator; --allocator PREFIX names another",
            )
        };
        let allocators_of =
            |go: &Option<(GoBinary, u64)>,
             find: &dyn Fn(&Selection) -> Result<Allocators, AllocatorError>| {
                let selection = Selection {
                    only: cli.allocator.clone(),
                    go_runtime: go.is_some(),
                };
                match find(&selection) {
                    Ok(found) => Ok(found),
                    // A Go program without cgo has no malloc: its heap is the runtime's.
                    Err(AllocatorError::NoMalloc { .. })
                        if go.is_some() && cli.allocator.is_empty() =>
                    {
                        Ok(Allocators::default())
                    }
                    Err(err) => Err(no_malloc(&err)),
                }
            };
        match cli.pid.first().copied() {
            Some(pid) => {
                if pid == std::process::id() {
                    return Err(Failure::usage(
                        "leaktrace cannot trace itself",
                        "give another pid",
                    ));
                }
                let process = Process::open(pid)
                    .map_err(|err| Failure::usage(chain(&err), "check the pid with `ps -p PID`"))?;
                let go = detect_go(Path::new(&format!("/proc/{pid}/exe")))?;
                let allocators = allocators_of(&go, &|s| allocator::find_for_process(&process, s))?;
                Ok(Self {
                    process,
                    allocators,
                    go,
                    launched: None,
                })
            }
            None => {
                // In the live view the program's own output would draw over the screen: it
                // goes to a log file instead, named at the end.
                let output = live_view_wanted(cli).then(|| target_log_path(&cli.command));
                let run_as = if cli.as_root {
                    None
                } else {
                    crate::user::invoking_user()
                };
                if let Some(user) = &run_as {
                    eprintln!(
                        "leaktrace: running the command as {} (uid {}), who ran sudo; --as-root runs it as root",
                        user.name
                            .as_ref()
                            .map_or_else(|| "that user".into(), |n| n.to_string_lossy()),
                        user.uid
                    );
                }
                let launched = launch::spawn_held(&cli.command, output.as_deref(), run_as.as_ref())
                    .map_err(|err| Failure::usage(chain(&err), "check the command and its path"))?;
                let go = detect_go(&launched.exe)?;
                let allocators =
                    allocators_of(&go, &|s| allocator::find_for_executable(&launched.exe, s))?;
                let command = cli
                    .command
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ");
                Ok(Self {
                    process: Process {
                        pid: launched.pid,
                        command,
                    },
                    allocators,
                    go,
                    launched: Some(launched),
                })
            }
        }
    }

    /// The executable mappings to build unwind tables for before attaching: the process's own,
    /// or, for a program not started yet, those of its executable and libraries (no addresses).
    pub(super) fn initial_maps(&self) -> Vec<Mapping> {
        match &self.launched {
            None => self.process.maps().unwrap_or_default(),
            Some(launched) => planned_mappings(&launched.exe),
        }
    }

    /// Says where the program's names come from, with a hint when static functions will stay
    /// unnamed (a stripped binary without debug files). Nothing for a program not started yet.
    pub(super) fn describe_symbols(&self, dirs: &DebugDirs) -> Option<String> {
        if self.launched.is_some() {
            return None;
        }
        let pid = self.process.pid;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let file = File::open(format!("/proc/{pid}/exe")).ok()?;
        let path = exe.to_string_lossy();
        let path = path.trim_end_matches(" (deleted)");
        let symbols = SymbolFile::locate(std::sync::Arc::new(file), path, pid, dirs);
        let build_id = symbols
            .build_id_hex()
            .map_or_else(String::new, |id| format!(", build id {id}"));
        if symbols.go.is_some() {
            return Some(format!(
                "symbols of {path}: its Go symbol table (.gopclntab), with lines and inlined \
                 calls{build_id}"
            ));
        }
        let hint = if symbols.origin.has_lines() {
            ""
        } else {
            ": install its debug symbols (Debian: its -dbgsym package) or give --debuginfo-dir"
        };
        Some(format!(
            "symbols of {path}: {}{build_id}{hint}",
            symbols.origin
        ))
    }

    /// The inodes of the allocators' files, to tell when a launched program has mapped them.
    pub(super) fn allocator_inodes(&self) -> Vec<u64> {
        self.allocators
            .objects
            .iter()
            .filter_map(|o| std::fs::metadata(&o.attach_path).map(|m| m.ino()).ok())
            .collect()
    }
}

/// Whether `exe` is a Go program, and if so where its runtime keeps its heap profile.
fn detect_go(exe: &Path) -> Result<Option<(GoBinary, u64)>, Failure> {
    let hint = "leaktrace reads the heap profile of Go 1.18 and later";
    let Some(binary) = go_binary::detect(exe).map_err(|err| Failure::usage(chain(&err), hint))?
    else {
        return Ok(None);
    };
    let inode = std::fs::metadata(exe)
        .map_err(|err| Failure::usage(format!("reading {}: {err}", exe.display()), hint))?
        .ino();
    Ok(Some((binary, inode)))
}

/// Whether the session will show the live view (a terminal, and not `--no-tui`).
pub(super) fn live_view_wanted(cli: &Cli) -> bool {
    !cli.no_tui && std::io::stdout().is_terminal()
}

/// Where a launched program's output goes while the live view runs.
fn target_log_path(command: &[std::ffi::OsString]) -> PathBuf {
    let name = command
        .first()
        .and_then(|c| Path::new(c).file_name())
        .map_or_else(|| "target".to_owned(), |n| n.to_string_lossy().into_owned());
    PathBuf::from(format!("{name}.leaktrace.log"))
}

/// The executable mappings a program about to be started will have, without addresses: enough
/// to compile their tables before it runs.
fn planned_mappings(exe: &Path) -> Vec<Mapping> {
    let mut paths = vec![exe.to_string_lossy().into_owned()];
    paths.extend(allocator::libraries_of(exe).unwrap_or_default());
    paths
        .into_iter()
        .filter_map(|path| {
            let inode = std::fs::metadata(&path).ok()?.ino();
            Some(Mapping {
                start: 0,
                end: 0,
                perms: "r-xp".to_owned(),
                offset: 0,
                inode,
                path,
            })
        })
        .collect()
}

/// Refuses to start without the privileges to load BPF programs.
fn check_privileges() -> Result<(), Failure> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(Failure::usage(
            "not permitted to load BPF programs",
            "run as root (sudo leaktrace ...) or grant CAP_BPF and CAP_PERFMON",
        ))
    }
}

/// Raises the soft limit on open files to the hard one: every module of the target the
/// symbolizer and the unwinder read stays open while it is mapped (and a while after), and a
/// target that loads and unloads many libraries would otherwise exhaust the usual 1024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill and setrlimit to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// Checks at start that the export file can be written. Opens without truncating; the report
/// replaces the contents at the end.
fn check_export_path(path: &Path) -> Result<File, Failure> {
    if path.is_dir() {
        return Err(Failure::usage(
            format!("export path {} is a directory", path.display()),
            "give a file name, e.g. --export heap.json",
        ));
    }
    crate::export::file::open_private(path).map_err(|err| {
        Failure::usage(
            format!("cannot write export file {}: {err}", path.display()),
            "choose a writable path for --export",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launched_program_logs_next_to_where_leaktrace_runs() {
        assert_eq!(
            target_log_path(&["/usr/bin/demo-service".into(), "--fast".into()]),
            PathBuf::from("demo-service.leaktrace.log")
        );
        assert_eq!(target_log_path(&[]), PathBuf::from("target.leaktrace.log"));
    }

    #[test]
    fn export_paths_are_checked_before_attaching() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let refused = check_export_path(dir.path()).expect_err("a directory is refused");
        assert_eq!(refused.code, crate::error::EXIT_USAGE);
        assert!(refused.message.contains("is a directory"), "{refused}");
        let file = dir.path().join("heap.json");
        check_export_path(&file).expect("a new file in a writable directory");
        assert!(file.exists());
        let missing = dir.path().join("no/such/dir/heap.json");
        assert!(check_export_path(&missing).is_err());
    }
}
