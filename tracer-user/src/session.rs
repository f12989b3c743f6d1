//! One tracing session: from the command line to the final report.
//!
//! The session checks its input, finds the allocator, attaches the probes, then runs one loop
//! that owns the heap model: it drains the ring buffer on a short timer (the kernel side wakes it
//! only when the buffer fills up), prints status, and stops on the first of: duration over,
//! target exited, Ctrl-C or SIGTERM. Then it detaches, drains what is left, and reports.
use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::{IsTerminal as _, Write as _},
    num::NonZeroU32,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    allocator::{self, Allocator},
    analytics::{self, Thresholds, VerdictInput},
    cli::{Cli, DEFAULT_TEXT_TOP},
    debuginfo::{DebugDirs, SymbolFile},
    error::{Failure, chain},
    events,
    export::{self, Format},
    grouping::{self, Member},
    heap::{HeapConfig, HeapModel},
    history::{History, Series},
    launch::{self, Launched},
    probes::{Counters, ProbeConfig, Probes, UnwindMode},
    process::{Mapping, Process},
    report::{Diagnostics, Omitted, Report, ReportTotals, sort_stacks},
    snapshot::Snapshot,
    soak::Soak,
    stacks::Stacks,
    symbolize::{ModuleMap, StackSymbolizer},
    tui::{self, TuiOptions},
    unwind_tables::UnwindTables,
    verify::{self, VerifyCounts},
};

/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// Why the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    Duration,
    TargetExited,
    Interrupted,
    Terminated,
    /// The user quit the live view.
    Quit,
}

impl StopReason {
    fn describe(self) -> &'static str {
        match self {
            Self::Duration => "duration reached",
            Self::TargetExited => "target exited",
            Self::Interrupted => "interrupted",
            Self::Terminated => "terminated",
            Self::Quit => "quit from the live view",
        }
    }
}

/// Runs leaktrace as the command line asks; `Ok` means exit code 0.
pub fn run(cli: &Cli) -> Result<(), Failure> {
    if cli.pid.is_none() && cli.command.is_empty() {
        return Err(Failure::usage(
            "nothing to trace",
            "give -p PID for a running process, or -- CMD ARGS... to start one",
        ));
    }
    check_privileges()?;
    let soak = match (&cli.snapshot_dir, cli.snapshot_every) {
        (Some(dir), Some(every)) => {
            let soak = Soak::new(dir, cli.keep, cli.export_format(), 0).map_err(|err| {
                Failure::usage(
                    format!("cannot use snapshot directory {}: {err}", dir.display()),
                    "choose a writable --snapshot-dir",
                )
            })?;
            drop(soak);
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

    let (process, allocator, launched) = match cli.pid {
        Some(pid) => {
            if pid == std::process::id() {
                return Err(Failure::usage(
                    "leaktrace cannot trace itself",
                    "give another pid",
                ));
            }
            let process = Process::open(pid)
                .map_err(|err| Failure::usage(chain(&err), "check the pid with `ps -p PID`"))?;
            let allocator = allocator::find_for_process(&process).map_err(|err| {
                Failure::usage(
                    chain(&err),
                    "leaktrace traces programs that allocate with malloc",
                )
            })?;
            (process, allocator, None)
        }
        None => {
            // In the live view the program's own output would draw over the screen: it goes
            // to a log file instead, named at the end.
            let output = live_view_wanted(cli).then(|| target_log_path(&cli.command));
            let launched = launch::spawn_held(&cli.command, output.as_deref())
                .map_err(|err| Failure::usage(chain(&err), "check the command and its path"))?;
            let allocator = allocator::find_for_executable(&launched.exe).map_err(|err| {
                Failure::usage(
                    chain(&err),
                    "leaktrace traces programs that allocate with malloc",
                )
            })?;
            let command = cli
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            (
                Process {
                    pid: launched.pid,
                    command,
                },
                allocator,
                Some(launched),
            )
        }
    };

    let mut tables = UnwindTables::new(process.pid);
    let initial_maps = if cli.unwind == UnwindMode::Fp {
        Vec::new()
    } else {
        match &launched {
            None => process.maps().unwrap_or_default(),
            Some(launched) => planned_mappings(&launched.exe),
        }
    };
    if cli.unwind != UnwindMode::Fp {
        build_tables(&mut tables, &initial_maps, true);
    }
    // Room for libraries loaded later: half again as many rows, at least 256k.
    let rows = tables.total_rows();
    let unwind_rows = u32::try_from(rows + (rows / 2).max(256 << 10)).unwrap_or(u32::MAX);
    let mut probes = Probes::load(ProbeConfig {
        target_pid: process.pid,
        verify_every: if cli.unwind == UnwindMode::Fp {
            0
        } else {
            cli.verify_unwind
        },
        unwind: cli.unwind,
        sample_bytes: cli.sample_bytes.unwrap_or(0),
        uprobe_session: !cli.no_uprobe_session,
        unwind_rows,
        ringbuf_bytes: cli.ringbuf_mib << 20,
    })
    .map_err(|err| {
        Failure::runtime(
            chain(&err),
            Some("leaktrace needs a kernel with BPF ring buffers and uprobes (5.15+)".into()),
        )
    })?;
    let Some(pid) = NonZeroU32::new(process.pid) else {
        return Err(Failure::usage(
            "pid 0 cannot be traced",
            "give a user process",
        ));
    };
    if cli.unwind != UnwindMode::Fp {
        // Tables and mappings are in place before the first probe fires (a launched program's
        // mappings are published once it has been exec'd; see `launch`).
        let (fd, capacity) = probes.unwind_rows();
        tables.load_rows(fd, capacity).map_err(|err| {
            Failure::runtime(
                format!("loading unwind tables into the kernel: {err}"),
                None,
            )
        })?;
        if launched.is_none() {
            probes
                .set_mappings(&tables.exec_mappings(&initial_maps))
                .map_err(|err| Failure::runtime(chain(&err), None))?;
        }
    }
    // Ctrl-C and SIGTERM are caught from before the first probe is attached: one that arrives
    // while start-up finishes still ends the trace with a report and export.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::runtime(format!("starting the runtime: {err}"), None))?;
    let signals = {
        let _context = runtime.enter();
        StopSignals::install()?
    };
    if cli.probe_floor {
        probes.attach_floor(&allocator, pid)
    } else {
        probes.attach(&allocator, pid)
    }
    .map_err(|err| Failure::runtime(chain(&err), None))?;
    describe_attach(&process, &allocator, &probes);
    if launched.is_none() {
        describe_symbols(&process, &DebugDirs::new(&cli.debuginfo_dir));
    }

    let mut session = Session::new(cli, process, probes, launched, tables);
    if let Some(mut launched) = session.launched.take() {
        // Hold the program at its system calls until its allocator's library is mapped, then
        // publish its mappings before it can allocate.
        let allocator_inode = std::fs::metadata(&allocator.attach_path)
            .map(|m| m.ino())
            .ok();
        let released = launched.release(|| {
            let mapped = session.process.maps().is_ok_and(|maps| {
                maps.iter()
                    .any(|m| m.is_exec() && Some(m.inode) == allocator_inode)
            });
            if mapped {
                session.refresh_maps();
            }
            mapped || allocator_inode.is_none()
        });
        session.launched = Some(launched);
        released.map_err(|err| Failure::usage(chain(&err), "check the command and its path"))?;
    }

    if let Some((dir, every)) = soak {
        let soak = Soak::new(&dir, cli.keep, cli.export_format(), session.process.pid)
            .map_err(|err| Failure::runtime(format!("snapshot directory: {err}"), None))?;
        session.soak = Some((soak, every));
    }
    let reason = runtime.block_on(session.trace(signals))?;
    session.finish(reason, export)
}

/// The signals that stop a trace (Ctrl-C and SIGTERM), caught from installation on: one that
/// arrives before the main loop polls is kept for it.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; must run inside the tokio runtime's context.
    fn install() -> Result<Self, Failure> {
        let signal_failure = |err: std::io::Error| {
            Failure::runtime(format!("installing signal handlers: {err}"), None)
        };
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(signal_failure)?,
            terminate: signal(SignalKind::terminate()).map_err(signal_failure)?,
        })
    }
}

/// Whether the session will show the live view (a terminal, and not `--no-tui`).
fn live_view_wanted(cli: &Cli) -> bool {
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

/// Compiles the unwind tables of `maps`' binaries not seen before, showing progress when asked.
fn build_tables(tables: &mut UnwindTables, maps: &[Mapping], show: bool) {
    let started = Instant::now();
    let before = tables.summary();
    tables.compile_mappings(maps, |done, total, name| {
        if show && done < total {
            eprintln!(
                "leaktrace: building unwind tables {}/{total}: {name}",
                done + 1
            );
        }
    });
    let after = tables.summary();
    if show && after.binaries > before.binaries {
        eprintln!(
            "leaktrace: unwind tables ready: {} binaries, {} rows ({}) in {:.2}s",
            after.binaries,
            after.rows,
            export::human_bytes(after.bytes as u64),
            started.elapsed().as_secs_f64()
        );
    }
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

/// Checks at start that the export file can be written, so a long session does not end in an
/// error. Opens without truncating; the report replaces the contents at the end.
fn check_export_path(path: &Path) -> Result<File, Failure> {
    if path.is_dir() {
        return Err(Failure::usage(
            format!("export path {} is a directory", path.display()),
            "give a file name, e.g. --export heap.json",
        ));
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| {
            Failure::usage(
                format!("cannot write export file {}: {err}", path.display()),
                "choose a writable path for --export",
            )
        })
}

fn describe_attach(process: &Process, allocator: &Allocator, probes: &Probes) {
    eprintln!(
        "leaktrace: tracing pid {} ({}) through {} ({} probes)",
        process.pid,
        process.command,
        allocator.display_path,
        probes.attached()
    );
    for point in &allocator.points {
        let aliases: Vec<&str> = point.aliases.iter().map(|k| k.symbol()).collect();
        let aliases = if aliases.is_empty() {
            String::new()
        } else {
            format!(" (also {})", aliases.join(", "))
        };
        eprintln!(
            "leaktrace:   {}{aliases}: {}",
            point.kind.symbol(),
            point.site.reason
        );
    }
    if !allocator.missing.is_empty() {
        let missing: Vec<&str> = allocator.missing.iter().map(|k| k.symbol()).collect();
        eprintln!("leaktrace:   not defined there: {}", missing.join(", "));
    }
    eprintln!("leaktrace:   {}", probes.returns().describe());
}

/// Says where the target program's names come from, with a hint when static functions will
/// stay unnamed (a stripped binary without debug files).
fn describe_symbols(process: &Process, dirs: &DebugDirs) {
    let Ok(exe) = std::fs::read_link(format!("/proc/{}/exe", process.pid)) else {
        return;
    };
    let Ok(file) = File::open(format!("/proc/{}/exe", process.pid)) else {
        return;
    };
    let path = exe.to_string_lossy();
    let path = path.trim_end_matches(" (deleted)");
    let symbols = SymbolFile::locate(std::sync::Arc::new(file), path, process.pid, dirs);
    let build_id = symbols
        .build_id_hex()
        .map_or_else(String::new, |id| format!(", build id {id}"));
    let hint = if symbols.origin.has_lines() {
        ""
    } else {
        ": install its debug symbols (Debian: its -dbgsym package) or give --debuginfo-dir"
    };
    eprintln!(
        "leaktrace:   symbols of {path}: {}{build_id}{hint}",
        symbols.origin
    );
}

/// Opens a pidfd for `pid`: readable once the process exits.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// leaktrace's own resident memory in bytes.
fn own_rss_bytes() -> u64 {
    Process {
        pid: std::process::id(),
        command: String::new(),
    }
    .rss_bytes()
    .unwrap_or(0)
}

/// Number of stacks a live-view snapshot carries (symbolized), most live bytes first.
const SNAPSHOT_STACKS: usize = 500;

/// Starts the live view on its own thread, so rendering never delays ingestion.
fn start_live_view(pid: u32, cli: &Cli) -> LiveView {
    let (snapshots, receiver) = std::sync::mpsc::channel();
    let (quit_sender, quit) = tokio::sync::oneshot::channel();
    let options = TuiOptions {
        pid,
        export_format: cli.export_format(),
        export_dir: cli
            .export
            .as_ref()
            .and_then(|p| p.parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let thread = std::thread::spawn(move || {
        let result = tui::run(receiver, options);
        let _ = quit_sender.send(());
        result
    });
    LiveView {
        snapshots,
        thread,
        quit: Some(quit),
    }
}

struct Session {
    process: Process,
    probes: Probes,
    launched: Option<Launched>,
    heap: HeapModel,
    modules: ModuleMap,
    symbolizer: StackSymbolizer,
    /// Every stack seen in events: pinned, symbolized, given its row.
    stacks: Stacks,
    maps_dirty: bool,
    started: Instant,
    duration: Option<Duration>,
    interval: Duration,
    /// `--top`: rows in exports and snapshots (all when `None`).
    top: Option<usize>,
    /// `--min-age`: live figures count only blocks at least this old.
    min_age_ns: u64,
    /// `--snapshot-every`: where and how often.
    soak: Option<(Soak, Duration)>,
    /// Verdict thresholds (`--window`).
    thresholds: Thresholds,
    live_view: Option<LiveView>,
    history: History,
    unwind: UnwindMode,
    /// `--sample-bytes`, if sampling.
    sample_bytes: Option<u64>,
    tables: UnwindTables,
    /// The executable mappings last published to the unwinder: (start, end, inode).
    exec_maps: Vec<(u64, u64, u64)>,
    undecodable: u64,
    /// Events stamped after this (the stop) are ignored.
    cutoff_ns: Option<u64>,
    /// The kernel's counters at the cutoff: what happens while probes are being removed (returns
    /// whose entry probe is already gone) is not part of the report.
    counters_at_cutoff: Option<Counters>,
    /// `--verify-unwind` records, and the results so far.
    verify_ring: Option<RingBuf<MapData>>,
    verified: VerifyCounts,
    /// The mappings last read, for the reference unwinder.
    last_maps: Vec<Mapping>,
    /// Where the kernel's uretprobe trampoline is published as being.
    trampoline: Option<u64>,
    last_status: (Instant, u64, u64),
    rates: (f64, f64),
}

/// The live view's thread and the channel that feeds it.
struct LiveView {
    snapshots: std::sync::mpsc::Sender<Snapshot>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
    quit: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Session {
    fn new(
        cli: &Cli,
        process: Process,
        probes: Probes,
        launched: Option<Launched>,
        tables: UnwindTables,
    ) -> Self {
        // A launched child still runs leaktrace's own image until it execs: learn its modules
        // after release, from the first stacks.
        let dirs = DebugDirs::new(&cli.debuginfo_dir);
        let mut modules = ModuleMap::new(process.pid, dirs.clone());
        if launched.is_none()
            && let Ok(maps) = process.maps()
        {
            modules.update(&maps);
        }
        let now = Instant::now();
        let live_view = live_view_wanted(cli).then(|| start_live_view(process.pid, cli));
        Self {
            modules,
            process,
            probes,
            launched,
            heap: HeapModel::new(HeapConfig {
                sample_mean_bytes: cli.sample_bytes.map(|n| n as f64),
                ..HeapConfig::default()
            }),
            symbolizer: StackSymbolizer::new(&dirs),
            stacks: Stacks::new(cli.group_by),
            maps_dirty: true,
            started: now,
            duration: cli.duration.map(Duration::from_secs_f64),
            interval: Duration::from_secs_f64(cli.interval),
            top: cli.top,
            min_age_ns: cli.min_age.map_or(0, |s| (s * 1e9) as u64),
            soak: None,
            thresholds: Thresholds::for_window(cli.window),
            live_view,
            history: History::default(),
            unwind: cli.unwind,
            sample_bytes: cli.sample_bytes,
            tables,
            exec_maps: Vec::new(),
            undecodable: 0,
            cutoff_ns: None,
            counters_at_cutoff: None,
            verify_ring: None,
            verified: VerifyCounts::default(),
            last_maps: Vec::new(),
            trampoline: None,
            last_status: (now, 0, 0),
            rates: (0.0, 0.0),
        }
    }

    /// The main loop; returns why it stopped.
    async fn trace(&mut self, signals: StopSignals) -> Result<StopReason, Failure> {
        let StopSignals {
            mut interrupt,
            mut terminate,
        } = signals;
        let ring = self
            .probes
            .take_events()
            .ok_or_else(|| Failure::runtime("event ring buffer already taken", None))?;
        self.verify_ring = self.probes.take_verify();
        // SAFETY: the ring buffer owns its map descriptor, which stays open and unchanged for as
        // long as the `AsyncFd` owns the ring buffer.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| Failure::runtime(format!("polling the ring buffer: {err}"), None))?;
        // SAFETY: the `AsyncFd` owns the pidfd, which stays open until it is dropped.
        let exited = pidfd(self.process.pid)
            .and_then(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok());
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let soak_every = self
            .soak
            .as_ref()
            .map_or(Duration::from_secs(3600), |(_, every)| *every);
        let mut soak_tick = tokio::time::interval(soak_every);
        soak_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        soak_tick.tick().await;
        let mut status_tick = tokio::time::interval(self.interval);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status_tick.tick().await;
        let duration = self.duration;
        let deadline = async move {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let target_exit = async {
            match &exited {
                Some(fd) => {
                    let _ = fd.readable().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(target_exit);
        let quit = self.live_view.as_mut().and_then(|view| view.quit.take());
        let user_quit = async move {
            match quit {
                Some(quit) => {
                    let _ = quit.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(user_quit);

        let reason = loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    if let Ok(mut guard) = guard {
                        self.drain(guard.get_inner_mut());
                        guard.clear_ready();
                    }
                }
                _ = drain_tick.tick() => self.drain(ring.get_mut()),
                _ = status_tick.tick() => self.status(),
                _ = soak_tick.tick(), if self.soak.is_some() => self.write_soak_snapshot(),
                _ = interrupt.recv() => break StopReason::Interrupted,
                _ = terminate.recv() => break StopReason::Terminated,
                () = &mut target_exit => break StopReason::TargetExited,
                () = &mut deadline => break StopReason::Duration,
                () = &mut user_quit => break StopReason::Quit,
            }
        };
        // The report describes the heap at this moment: events after it come while probes are
        // being removed one by one (allocations no longer seen, frees still seen) and are left
        // out. Detach, then take everything still buffered.
        self.cutoff_ns = Some(events::monotonic_now_ns());
        self.counters_at_cutoff = Some(self.probes.counters());
        self.probes.detach();
        self.drain(ring.get_mut());
        self.heap.flush();
        Ok(reason)
    }

    /// Moves every available event from the ring buffer into the heap model.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut new_stacks: HashSet<u64> = HashSet::new();
        // Consecutive events mostly share a stack: look a known one up once.
        let mut last_known = None;
        while let Some(item) = ring.next() {
            match events::decode(&item) {
                Some(event) if self.cutoff_ns.is_some_and(|cutoff| event.ts_ns > cutoff) => {}
                Some(event) => {
                    if last_known != Some(event.stack) {
                        if self.stacks.contains(event.stack) {
                            last_known = Some(event.stack);
                        } else {
                            new_stacks.insert(event.stack);
                        }
                    }
                    self.heap.push(event);
                }
                None => self.undecodable += 1,
            }
        }
        self.heap.advance_until(events::monotonic_now_ns());
        // Read each new stack once, while the target is certainly alive, and pin it to the
        // modules mapped now: the maps are read again first, so a library loaded since (or
        // unloaded, with another in its place) is known before the stack is tied to it.
        if !new_stacks.is_empty() || self.maps_dirty {
            self.refresh_maps();
        }
        for id in new_stacks {
            let frames = self.probes.stack(id).unwrap_or_default();
            self.stacks.insert(id, frames, &self.modules);
        }
        self.check_unwinds();
    }

    /// `--verify-unwind`: compares each sampled stack with a user-space unwind of its copy.
    fn check_unwinds(&mut self) {
        let Some(mut ring) = self.verify_ring.take() else {
            return;
        };
        let mappings = self.tables.reference_mappings(&self.last_maps);
        while let Some(item) = ring.next() {
            let Some(record) = verify::decode(&item) else {
                continue;
            };
            let verdict = verify::check(&record, &mappings);
            if let verify::Verdict::Mismatch {
                kernel,
                reference,
                stop,
            } = &verdict
                && self.verified.mismatched < 3
                && self.live_view.is_none()
            {
                eprintln!(
                    "leaktrace: unwind check: kernel {kernel:x?} differs from user space {reference:x?} (stopped: {stop})"
                );
            }
            self.verified.add(&verdict);
        }
        self.verify_ring = Some(ring);
    }

    /// Re-reads the target's mappings (new libraries, exec) while it is alive, for the
    /// symbolizer and the unwinder.
    fn refresh_maps(&mut self) {
        if let Ok(maps) = self.process.maps() {
            self.modules.update(&maps);
            if self.unwind != UnwindMode::Fp {
                self.refresh_unwind(&maps);
                // The kernel's uretprobe trampoline: its own mapping, once any return probe
                // has fired in the target.
                if let Some(uprobes) = maps.iter().find(|m| m.path == "[uprobes]")
                    && self.trampoline != Some(uprobes.start)
                    && self.probes.set_trampoline(uprobes.start).is_ok()
                {
                    self.trampoline = Some(uprobes.start);
                }
            }
            self.last_maps = maps;
        }
        self.maps_dirty = false;
    }

    /// Compiles and loads tables for new binaries and republishes the mappings when they changed.
    fn refresh_unwind(&mut self, maps: &[Mapping]) {
        let exec: Vec<(u64, u64, u64)> = maps
            .iter()
            .filter(|m| m.is_exec())
            .map(|m| (m.start, m.end, m.inode))
            .collect();
        if exec == self.exec_maps {
            return;
        }
        self.exec_maps = exec;
        build_tables(&mut self.tables, maps, self.live_view.is_none());
        let (fd, capacity) = self.probes.unwind_rows();
        if let Err(err) = self.tables.load_rows(fd, capacity)
            && self.live_view.is_none()
        {
            eprintln!("leaktrace: loading unwind tables: {err}");
        }
        let mappings = self.tables.exec_mappings(maps);
        if let Err(err) = self.probes.set_mappings(&mappings)
            && self.live_view.is_none()
        {
            eprintln!(
                "leaktrace: publishing mappings to the unwinder: {}",
                chain(&err)
            );
        }
    }

    fn counters(&self) -> Counters {
        self.counters_at_cutoff
            .unwrap_or_else(|| self.probes.counters())
    }

    fn status(&mut self) {
        // One sample of every row's live bytes per interval: growth and verdicts read these.
        let t_s = self.started.elapsed().as_secs_f64();
        let now_ns = events::monotonic_now_ns();
        self.stacks.symbolize(&mut self.symbolizer, &self.modules);
        let by_row = self.stacks.by_row(self.heap.live_bytes_by_stack(now_ns));
        self.history.record(t_s, by_row);
        if self.unwind != UnwindMode::Fp && self.process.is_alive() {
            // Libraries loaded since (dlopen) get tables and mappings.
            self.refresh_maps();
        }
        let totals = self.heap.totals();
        let counters = self.counters();
        let (then, allocs_then, frees_then) = self.last_status;
        let dt = then.elapsed().as_secs_f64().max(1e-3);
        let allocs_per_s = (totals.allocs - allocs_then) as f64 / dt;
        let frees_per_s = (totals.frees - frees_then) as f64 / dt;
        self.last_status = (Instant::now(), totals.allocs, totals.frees);
        let lost = counters.ringbuf_full + counters.pending_full;
        let line = format!(
            "[{:>7.1}s] live {} in {} allocs | {:.0} allocs/s {:.0} frees/s | lost {} | unmatched frees {} | stacks without frames {} | unwind {} ({} tables)",
            self.started.elapsed().as_secs_f64(),
            export::human_bytes(totals.live_bytes),
            totals.live_allocs,
            allocs_per_s,
            frees_per_s,
            lost,
            totals.unmatched_frees,
            counters.stack_failed + counters.stack_map_full,
            self.unwind.name(),
            export::human_bytes(self.tables.summary().bytes as u64),
        );
        self.rates = (allocs_per_s, frees_per_s);
        if self.live_view.is_some() {
            let snapshot = self.snapshot(None);
            if let Some(view) = &self.live_view {
                // A closed channel means the view is gone; the quit branch ends the loop.
                let _ = view.snapshots.send(snapshot);
            }
        } else {
            eprintln!("{line}");
        }
    }

    /// `--snapshot-every`: writes the current report into the snapshot directory.
    fn write_soak_snapshot(&mut self) {
        let mut report = self.report(false);
        if let Some(top) = self.top {
            report.keep_top(top);
        }
        let Some((soak, _)) = &self.soak else {
            return;
        };
        match soak.write(&report, std::time::SystemTime::now()) {
            Ok(path) if self.live_view.is_none() => {
                eprintln!("leaktrace: snapshot {}", path.display());
            }
            Ok(_) => {}
            Err(err) if self.live_view.is_none() => eprintln!("leaktrace: snapshot failed: {err}"),
            Err(_) => {}
        }
    }

    /// A snapshot for the live view: the busiest rows, their histories, rates and RSS.
    fn snapshot(&mut self, ended: Option<String>) -> Snapshot {
        let mut report = self.report(ended.is_some());
        report.keep_top(SNAPSHOT_STACKS);
        let series = report
            .stacks
            .iter()
            .map(|stack| self.history.get(stack.id).cloned().unwrap_or_default())
            .collect();
        Snapshot {
            report,
            series,
            target_rss_bytes: self.process.rss_bytes(),
            allocs_per_s: self.rates.0,
            frees_per_s: self.rates.1,
            ended,
        }
    }

    /// Builds the report of every row, sorted (callers cut it with [`Report::keep_top`]).
    fn report(&mut self, final_report: bool) -> Report {
        if final_report && self.process.is_alive() {
            self.refresh_maps();
        }
        self.stacks.symbolize(&mut self.symbolizer, &self.modules);
        let now_ns = events::monotonic_now_ns();
        let stats = self.heap.stack_stats_min_age(now_ns, self.min_age_ns);
        // Sampling: whole-process live figures are the sum of the stacks' estimates.
        let estimated_live = self.sample_bytes.map(|_| {
            stats.iter().fold((0u64, 0u64), |(bytes, allocs), (_, s)| {
                (bytes + s.live_bytes, allocs + s.live_allocs)
            })
        });
        let mut rows: HashMap<u64, Vec<Member<'_>>> = HashMap::new();
        for (id, stat) in stats {
            // Every stack in the heap model came through `drain`, which recorded it.
            let Some(entry) = self.stacks.get(id) else {
                continue;
            };
            let Some(row) = entry.row else {
                continue;
            };
            rows.entry(row).or_default().push(Member {
                stack_id: id,
                stats: stat,
                frames: &entry.frames,
                truncated: entry.kernel.truncated,
                incomplete: entry.kernel.incomplete,
            });
        }
        let empty = Series::default();
        let mut stacks: Vec<_> = rows
            .into_iter()
            .map(|(row, members)| {
                let mut stack = grouping::merge(row, members);
                let series = self.history.get(row).unwrap_or(&empty);
                let growth = analytics::growth(series, self.thresholds.window_s);
                stack.verdict = analytics::verdict(
                    &VerdictInput {
                        series,
                        live_allocs: stack.live_allocs,
                        total_allocs: stack.total_allocs,
                        oldest_age_s: stack.oldest_age_s,
                        ages: Some(&stack.ages),
                    },
                    &self.thresholds,
                );
                stack.growth_bytes_per_s = growth.as_ref().map(|g| g.bytes_per_s);
                stack.growth_bytes_per_h = growth.as_ref().map(|g| g.bytes_per_h);
                stack.growth_r2 = growth.as_ref().map(|g| g.r_squared);
                stack
            })
            .collect();
        sort_stacks(&mut stacks);
        let totals = self.heap.totals();
        let counters = self.counters();
        Report {
            pid: self.process.pid,
            command: self.process.command.clone(),
            duration_s: self.started.elapsed().as_secs_f64(),
            unwind: self.unwind.name().to_owned(),
            sample_bytes: self.sample_bytes,
            totals: ReportTotals {
                allocs: totals.allocs,
                frees: totals.frees,
                live_bytes: estimated_live.map_or(totals.live_bytes, |(bytes, _)| bytes),
                live_allocs: estimated_live.map_or(totals.live_allocs, |(_, allocs)| allocs),
                unmatched_frees: totals.unmatched_frees,
                lost_events: counters.ringbuf_full + counters.pending_full + self.undecodable,
            },
            diagnostics: Diagnostics {
                ringbuf_full: counters.ringbuf_full,
                stack_failed: counters.stack_failed,
                stack_map_full: counters.stack_map_full,
                stacks_truncated: counters.stacks_truncated,
                pending_full: counters.pending_full,
                pending_clobbered: counters.pending_clobbered,
                pending_missing: counters.pending_missing,
                nested_calls: counters.nested_calls,
                replaced_live: totals.replaced_live,
                dropped_over_limit: totals.dropped_over_limit,
                late_events: totals.late_events,
                released_by_exec: totals.released_by_exec,
                unwind_no_mapping: counters.unwind_no_mapping,
                unwind_unsupported: counters.unwind_unsupported,
                unwind_read_failed: counters.unwind_read_failed,
                unwind_no_progress: counters.unwind_no_progress,
                unwind_table_bytes: self.tables.summary().bytes as u64,
                unwind_verified: self.verified.equal + self.verified.prefix_equal,
                unwind_mismatched: self.verified.mismatched,
                unsampled: counters.unsampled,
                sample_map_full: counters.sample_map_full,
                tracer_memory_bytes: own_rss_bytes(),
            },
            group_by: self.stacks.group_by().name().to_owned(),
            omitted: Omitted::default(),
            stacks,
        }
    }

    /// Final report: the export file, the live view's last state (kept until the user quits),
    /// then the text report on stdout and what happened on stderr.
    fn finish(
        &mut self,
        reason: StopReason,
        export: Option<(PathBuf, Format, File)>,
    ) -> Result<(), Failure> {
        // The export holds every row unless --top asks for fewer; stdout keeps a short list.
        let full = self.report(true);
        let mut report = full.clone();
        if let Some(top) = self.top {
            report.keep_top(top);
        }
        let mut messages = vec![format!(
            "leaktrace: stopped ({}) after {:.1}s; probes detached",
            reason.describe(),
            report.duration_s
        )];
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
        if let Some(output) = self.launched.as_ref().and_then(|l| l.output.as_ref()) {
            messages.push(format!(
                "leaktrace: the program's output is in {}",
                output.display()
            ));
        }
        if let Some(launched) = &self.launched
            && reason == StopReason::TargetExited
        {
            let mut status = 0;
            // SAFETY: reaps our own child, which has exited.
            unsafe { libc::waitpid(launched.pid as libc::pid_t, &raw mut status, 0) };
            if libc::WIFEXITED(status) {
                messages.push(format!(
                    "leaktrace: target exited with status {}",
                    libc::WEXITSTATUS(status)
                ));
            } else if libc::WIFSIGNALED(status) {
                messages.push(format!(
                    "leaktrace: target killed by signal {}",
                    libc::WTERMSIG(status)
                ));
            }
        }
        if let Some(view) = self.live_view.take() {
            if reason != StopReason::Quit {
                let ended = messages
                    .iter()
                    .map(|m| m.trim_start_matches("leaktrace: "))
                    .collect::<Vec<_>>()
                    .join("; ");
                let snapshot = self.snapshot(Some(ended));
                let _ = view.snapshots.send(snapshot);
            }
            drop(view.snapshots);
            match view.thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => messages.push(format!("leaktrace: live view: {err}")),
                Err(_) => messages.push("leaktrace: the live view failed".to_owned()),
            }
        }
        let mut text = full;
        text.keep_top(self.top.unwrap_or(DEFAULT_TEXT_TOP));
        let mut stdout = std::io::stdout().lock();
        let _ = export::write_report(&text, Format::Text, &mut stdout);
        let _ = stdout.flush();
        for message in messages {
            eprintln!("{message}");
        }
        failure.map_or(Ok(()), Err)
    }
}
