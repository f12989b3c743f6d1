//! One tracing session: wires the target, its sources, the pipeline and the outputs together.
//!
//! [`run`] checks the command line ([`start`]), opens the target, loads and attaches the eBPF
//! source (and one per other process traced, [`processes`]), then runs one loop that polls
//! every source (when its descriptor is readable, and on a short timer), feeds what they yield
//! to the [`pipeline::Pipeline`], samples the history, shows status and follows new children
//! every interval, writes snapshots, and stops on the first of: duration over, every traced
//! process exited, Ctrl-C, SIGTERM, or the live view quit. Then every source stops at one
//! cutoff, the rest is drained, and [`finish`] writes the report.
use std::{
    future::poll_fn,
    num::NonZeroU32,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    task::Poll,
    time::{Duration, Instant},
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::Cli,
    error::{Failure, chain},
    export::{human_bytes, soak::Soak},
    heap::SourceId,
    report::{Report, analytics::Thresholds, build::Header, coverage::Coverage},
    source::{
        Batch, Health, HealthKind, Source,
        ebpf::{EbpfConfig, EbpfSource},
        go::GoHeapSource,
        monotonic_now_ns,
    },
    symbolize::debuginfo::DebugDirs,
    target::{Process, launch::Launched},
};

mod finish;
mod follow;
mod live;
pub mod pipeline;
mod processes;
mod start;

use live::LiveView;
use pipeline::{Pipeline, PipelineConfig};
use processes::Processes;

/// How often sources are polled when no descriptor woke the loop.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// Why the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    Duration,
    /// The target exited; how, as a wait status, when the kernel says.
    TargetExited(Option<i32>),
    Interrupted,
    Terminated,
    /// The user quit the live view.
    Quit,
    /// A source failed for good ([`Source::failed`]).
    SourceFailed,
}

impl StopReason {
    /// Why, as the report and stderr say it (`target killed by SIGKILL`).
    fn describe(self) -> String {
        match self {
            Self::Duration => "duration reached".to_owned(),
            Self::TargetExited(None) => "target exited".to_owned(),
            Self::TargetExited(Some(status)) => {
                format!("target {}", crate::target::describe_wait_status(status))
            }
            Self::Interrupted => "interrupted".to_owned(),
            Self::Terminated => "terminated".to_owned(),
            Self::Quit => "quit from the live view".to_owned(),
            Self::SourceFailed => "a source failed".to_owned(),
        }
    }
}

/// Runs leaktrace as the command line asks; `Ok` means exit code 0.
pub fn run(cli: &Cli) -> Result<(), Failure> {
    // Ctrl-C and SIGTERM are caught from the start, before anything is launched or attached:
    // one that arrives while start-up finishes still ends the trace with a report and export.
    // In service mode one runtime and one set of handlers serve every target in turn.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::runtime(format!("starting the runtime: {err}"), None))?;
    let mut signals = {
        let _context = runtime.enter();
        StopSignals::install()?
    };
    let metrics = match cli.metrics {
        Some(addr) => Some(
            crate::metrics::Endpoint::serve(addr, cli.metrics_rows).map_err(|err| {
                Failure::usage(
                    format!("cannot serve metrics on {addr}: {err}"),
                    "give --metrics a free address and port, e.g. 127.0.0.1:9464",
                )
            })?,
        ),
        None => None,
    };
    match follow::Wanted::of(cli) {
        None => run_one(cli, &runtime, &mut signals, metrics).map(|_| ()),
        Some(wanted) => follow_service(cli, &wanted, &runtime, &mut signals, metrics),
    }
}

/// Service mode: traces each process `wanted` finds in turn, until a stop signal, the
/// duration or a failure that is not the target going away.
fn follow_service(
    cli: &Cli,
    wanted: &follow::Wanted,
    runtime: &tokio::runtime::Runtime,
    signals: &mut StopSignals,
    metrics: Option<crate::metrics::Endpoint>,
) -> Result<(), Failure> {
    // Privileges, paths and options are checked before waiting, not when the process appears.
    let mut probe = cli.clone();
    probe.pid = vec![std::process::id()];
    start::check(&probe)?;
    let mut last = None;
    loop {
        let Some(pid) = runtime.block_on(wanted.wait(last, signals)) else {
            eprintln!("leaktrace: stopped while waiting for {}", wanted.describe());
            return Ok(());
        };
        let mut one = cli.clone();
        one.pid = vec![pid];
        one.follow_name = None;
        one.pid_file = None;
        one.no_tui = true;
        one.sample_bytes = Some(cli.sample_bytes.unwrap_or(follow::SERVICE_SAMPLE_BYTES));
        eprintln!("leaktrace: following {}: pid {pid}", wanted.describe());
        match run_one(&one, runtime, signals, metrics.clone()) {
            Ok(StopReason::TargetExited(_)) => {}
            Ok(_) => return Ok(()),
            // A service restarting again while leaktrace attached: wait for the next one.
            Err(failure) if !follow::alive(pid) => {
                eprintln!("leaktrace: pid {pid} went away while being attached ({failure})");
            }
            Err(failure) => return Err(failure),
        }
        last = Some(pid);
    }
}

/// Traces one target (`-p` or `-- CMD`) until it stops, and writes its report.
fn run_one(
    cli: &Cli,
    runtime: &tokio::runtime::Runtime,
    signals: &mut StopSignals,
    metrics: Option<crate::metrics::Endpoint>,
) -> Result<StopReason, Failure> {
    let checked = start::check(cli)?;
    // What this kernel offers, tried before anything is launched, loaded or attached.
    let features = crate::probe::features::Features::probe();
    let target = start::Target::open(cli)?;
    if !target.allocators.objects.is_empty() {
        features.check(cli.unwind)?;
    }
    // Opened now, while the target surely exists: one that exits during start-up (attaching
    // takes a while) is still seen to exit.
    let target_exit = pidfd(target.process.pid);
    let Some(pid) = NonZeroU32::new(target.process.pid) else {
        return Err(Failure::usage(
            "pid 0 cannot be traced",
            "give a user process",
        ));
    };
    let live_view = start::live_view_wanted(cli);
    let initial_maps = if cli.unwind == crate::probe::UnwindMode::Fp {
        Vec::new()
    } else {
        target.initial_maps()
    };
    // A Go program's heap is read from its runtime; checked first, before anything loads, so
    // a program with profiling off is told so at once.
    let mut go = target.go.clone().map(|(binary, inode)| {
        GoHeapSource::new(
            pid.get(),
            binary,
            inode,
            Duration::from_secs_f64(cli.interval),
            cli.go_memprofile_rate,
        )
    });
    let mut go_said = Vec::new();
    if let Some(go) = &mut go
        && target.launched.is_none()
    {
        go_said = go.prepare(&target.process.maps().unwrap_or_default())?;
    }
    if cli.bench_skip != 0 {
        eprintln!(
            "leaktrace: --bench-skip: the programs leave phases out; what is recorded is wrong"
        );
    }
    let ebpf_config = EbpfConfig {
        unwind: cli.unwind,
        verify_every: cli.verify_unwind,
        sample_bytes: cli.sample_bytes,
        uprobe_session: !cli.no_uprobe_session,
        ringbuf_bytes: cli.ringbuf_mib << 20,
        max_stacks: cli.max_stacks,
        floor: cli.probe_floor,
        bench_skip: cli.bench_skip,
        verbose: !live_view,
        progress: true,
    };
    let child_config = ChildConfig {
        ebpf: EbpfConfig {
            progress: false,
            ..ebpf_config
        },
        allocators: cli.allocator.clone(),
    };
    let mut ebpf = if target.allocators.objects.is_empty() {
        None
    } else {
        Some(EbpfSource::load(
            pid,
            target.allocators.clone(),
            &initial_maps,
            target.launched.is_none(),
            ebpf_config,
        )?)
    };
    if let Some(ebpf) = &mut ebpf {
        ebpf.attach()?;
    }
    // The other pids given, each with its own probes, attached before anything is said to be
    // traced.
    let mut others = Vec::new();
    for &other in cli.pid.iter().skip(1) {
        if other == pid.get() || others.iter().any(|(p, _): &(Process, _)| p.pid == other) {
            continue;
        }
        others.push(attach_process(other, &child_config)?);
    }
    let through: Vec<String> = ebpf
        .iter()
        .map(|e| e.name())
        .chain(go.iter().map(|g| g.name()))
        .collect();
    let mut said = vec![format!(
        "tracing pid {} ({}) through {}",
        target.process.pid,
        target.process.command,
        through.join(" and ")
    )];
    let fallbacks = ebpf
        .as_ref()
        .map(|_| features.fallbacks())
        .unwrap_or_default();
    said.extend(
        ebpf.iter()
            .flat_map(EbpfSource::describe)
            .chain(fallbacks)
            .chain(go_said)
            .map(|line| format!("  {line}")),
    );
    for (process, source) in &others {
        said.push(format!(
            "tracing pid {} ({}) through {}",
            process.pid,
            process.command,
            source.name()
        ));
    }
    let dirs = DebugDirs::new(&cli.debuginfo_dir);
    if let Some(line) = target.describe_symbols(&dirs) {
        said.push(format!("  {line}"));
    }
    let allocator_inodes = target.allocator_inodes();
    let not_traced = target.allocators.left_out.clone();
    // The target's mappings are read here, before tracing is announced: a target that exits
    // right after the announcement is still symbolized.
    let mut session = Session::new(cli, target.process, target.launched, &dirs);
    for line in said {
        eprintln!("leaktrace: {line}");
    }
    session.target_exit = target_exit;
    session.not_traced = not_traced;
    if let Some(ebpf) = ebpf {
        session.add_source(pid.get(), Box::new(ebpf));
    }
    if let Some(go) = go {
        session.add_source(pid.get(), Box::new(go));
    }
    for (process, source) in others {
        session.add_process(process, None, source);
    }
    if cli.children {
        session.child_config = Some(child_config);
    }
    session.release_launched(&allocator_inodes)?;
    session.processes.start_anon();
    if let Some((dir, every)) = checked.soak {
        let soak = Soak::new(&dir, cli.keep, cli.export_format(), pid.get())
            .map_err(|err| Failure::runtime(format!("snapshot directory: {err}"), None))?;
        session.soak = Some((soak, every));
    }
    if !cli.push.is_empty() {
        let token = checked.push_token.clone();
        let pusher = crate::push::Pusher::start(crate::push::Options {
            targets: cli.push.clone(),
            labels: cli.labels.clone(),
            tenant: cli.push_tenant.clone(),
            token,
        })
        .map_err(|err| Failure::runtime(format!("starting the pusher: {err}"), None))?;
        session.pusher = Some((pusher, cli.push_every));
    }
    if let Some(metrics) = metrics {
        if !live_view {
            eprintln!(
                "leaktrace: metrics at http://{}/metrics",
                metrics.local_addr()
            );
        }
        session.metrics = Some(metrics);
    }
    session.live_view = live_view.then(|| LiveView::start(pid.get(), cli));
    let reason = runtime.block_on(session.trace(signals))?;
    if let Some(failure) = session.failure.take() {
        return Err(failure);
    }
    finish::finish(&mut session, reason, checked.export)?;
    Ok(reason)
}

/// How a process other than the target is traced: the target's eBPF settings and
/// `--allocator`.
#[derive(Clone, Debug)]
struct ChildConfig {
    ebpf: EbpfConfig,
    allocators: Vec<String>,
}

/// Opens process `pid`, finds its allocators and attaches probes to them (its own eBPF
/// source: another process may map its libraries elsewhere).
fn attach_process(pid: u32, config: &ChildConfig) -> Result<(Process, EbpfSource), Failure> {
    let Some(nonzero) = NonZeroU32::new(pid).filter(|_| pid != std::process::id()) else {
        return Err(Failure::usage(
            format!("pid {pid} cannot be traced"),
            "give another pid",
        ));
    };
    let process = Process::open(pid)
        .map_err(|err| Failure::usage(chain(&err), "check the pid with `ps -p PID`"))?;
    let selection = crate::target::allocator::Selection {
        only: config.allocators.clone(),
        go_runtime: false,
    };
    let allocators =
        crate::target::allocator::find_for_process(&process, &selection).map_err(|err| {
            Failure::usage(
                chain(&err),
                "every process traced besides the target is traced through its allocators",
            )
        })?;
    let maps = if config.ebpf.unwind == crate::probe::UnwindMode::Fp {
        Vec::new()
    } else {
        process.maps().unwrap_or_default()
    };
    let mut source = EbpfSource::load(nonzero, allocators, &maps, true, config.ebpf)?;
    source.attach()?;
    Ok((process, source))
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

/// A descriptor a source owns, registered with the runtime to learn when it is readable.
struct Readiness(RawFd);

impl std::os::fd::AsRawFd for Readiness {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
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

/// The state of one run.
struct Session {
    processes: Processes,
    launched: Option<Launched>,
    /// Every source, with the process it reads.
    sources: Vec<(SourceId, u32, Box<dyn Source>)>,
    /// How a child found by `--children` is traced (the target's eBPF settings).
    child_config: Option<ChildConfig>,
    /// A pidfd of the target, readable once it exits (taken by the main loop).
    target_exit: Option<OwnedFd>,
    pipeline: Pipeline,
    /// Reused for every poll.
    batch: Batch,
    started: Instant,
    duration: Option<Duration>,
    interval: Duration,
    /// `--top`: rows in exports and snapshots (all when `None`).
    top: Option<usize>,
    /// `--snapshot-every`: where and how often.
    soak: Option<(Soak, Duration)>,
    /// `--metrics`: the endpoint, given a new report every interval.
    metrics: Option<crate::metrics::Endpoint>,
    /// `--push`: the pusher and how often it is given a report.
    pusher: Option<(crate::push::Pusher, Duration)>,
    live_view: Option<LiveView>,
    /// The longest the live view's report of every row took to build, on this (the ingestion)
    /// thread, in microseconds.
    slowest_view_report_us: u64,
    /// How stacks are unwound and sampled, for report headers.
    unwind: &'static str,
    sample_bytes: Option<u64>,
    /// Allocation and free counts at the last status, for rates.
    last_status: (Instant, u64, u64),
    /// Allocations and frees per second at the last status.
    rates: (f64, f64),
    /// Allocators found but left out by `--allocator`.
    not_traced: Vec<String>,
    /// When tracing stopped: the clock of events, and the wall clock.
    stopped: Option<(u64, Instant)>,
    /// Why a source stopped for good, ending the session.
    failure: Option<Failure>,
}

impl Session {
    fn new(cli: &Cli, process: Process, launched: Option<Launched>, dirs: &DebugDirs) -> Self {
        let mut pipeline = Pipeline::new(
            dirs,
            PipelineConfig {
                group_by: cli.group_by,
                thresholds: Thresholds::for_window(cli.window),
                min_age_ns: cli.min_age.map_or(0, |s| (s * 1e9) as u64),
            },
        );
        // A launched child still runs leaktrace's own image until it execs: its modules are
        // learnt once it is released.
        if launched.is_none()
            && let Ok(maps) = process.maps()
        {
            pipeline.mappings_changed(process.pid, &maps);
        }
        let now = Instant::now();
        Self {
            processes: Processes::new(process, cli.children),
            launched,
            sources: Vec::new(),
            child_config: None,
            target_exit: None,
            pipeline,
            batch: Batch::default(),
            started: now,
            duration: cli.duration.map(Duration::from_secs_f64),
            interval: Duration::from_secs_f64(cli.interval),
            top: cli.top,
            soak: None,
            metrics: None,
            pusher: None,
            live_view: None,
            slowest_view_report_us: 0,
            unwind: cli.unwind.name(),
            sample_bytes: cli.sample_bytes,
            last_status: (now, 0, 0),
            rates: (0.0, 0.0),
            not_traced: Vec::new(),
            stopped: None,
            failure: None,
        }
    }

    /// Adds a source reading process `pid`.
    fn add_source(&mut self, pid: u32, source: Box<dyn Source>) {
        let id = self.pipeline.add_source(pid, source.yields());
        self.sources.push((id, pid, source));
    }

    /// Traces `process` too (another `-p` pid, or a child of `parent`): its own eBPF source,
    /// its own mappings.
    fn add_process(&mut self, process: Process, parent: Option<u32>, source: EbpfSource) {
        let pid = process.pid;
        if let Ok(maps) = process.maps() {
            self.pipeline.mappings_changed(pid, &maps);
        }
        self.processes.add(process, parent);
        self.add_source(pid, Box::new(source));
    }

    /// `--children`: traces every child of a traced process not traced yet. A child that
    /// cannot be traced is said and left out.
    fn follow_children(&mut self) {
        let Some(config) = self.child_config.clone() else {
            return;
        };
        for (child, parent) in self.processes.new_children() {
            match attach_process(child, &config) {
                Ok((process, source)) => {
                    if config.ebpf.verbose {
                        eprintln!(
                            "leaktrace: tracing pid {child} ({}), a child of {parent}, through {}",
                            process.command,
                            source.name()
                        );
                    }
                    self.add_process(process, Some(parent), source);
                }
                Err(failure) => {
                    if config.ebpf.verbose {
                        eprintln!(
                            "leaktrace: not tracing pid {child}, a child of {parent}: {failure}"
                        );
                    }
                }
            }
        }
    }

    /// Launch mode: holds the program at its system calls until every allocator's object is
    /// mapped, then publishes its mappings before it can allocate.
    fn release_launched(&mut self, allocator_inodes: &[u64]) -> Result<(), Failure> {
        let Some(mut launched) = self.launched.take() else {
            return Ok(());
        };
        let released = launched.release(|| {
            let mapped = self.processes.target().maps().is_ok_and(|maps| {
                allocator_inodes
                    .iter()
                    .all(|inode| maps.iter().any(|m| m.is_exec() && m.inode == *inode))
            });
            if mapped {
                self.refresh_maps();
            }
            mapped
        });
        self.launched = Some(launched);
        released.map_err(|err| Failure::usage(chain(&err), "check the command and its path"))
    }

    /// Re-reads the mappings (new libraries, exec) of every traced process still alive, for
    /// the symbolizer and every source.
    fn refresh_maps(&mut self) {
        let pids: Vec<u32> = self
            .processes
            .iter()
            .filter(|w| !w.exited)
            .map(|w| w.process.pid)
            .collect();
        for pid in pids {
            self.refresh_maps_of(pid);
        }
    }

    /// Re-reads the mappings of process `pid`, for the symbolizer and its sources.
    fn refresh_maps_of(&mut self, pid: u32) {
        let Some(process) = self.processes.get(pid) else {
            return;
        };
        if !process.is_alive() {
            return;
        }
        if let Ok(maps) = process.maps() {
            self.pipeline.mappings_changed(pid, &maps);
            for (_, of, source) in &mut self.sources {
                if *of == pid {
                    source.mappings_changed(&maps);
                }
            }
        }
    }

    /// The main loop; returns why it stopped.
    async fn trace(&mut self, signals: &mut StopSignals) -> Result<StopReason, Failure> {
        let StopSignals {
            interrupt,
            terminate,
        } = signals;
        let ready: Vec<(usize, AsyncFd<Readiness>)> = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, (_, _, source))| {
                let fd = Readiness(source.ready_fd()?.as_raw_fd());
                // SAFETY: the source owns the descriptor and keeps it open, unchanged, for as
                // long as the session holds the source, which outlives this registration.
                let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
                registered.ok().map(|fd| (i, fd))
            })
            .collect();
        let readable = || {
            poll_fn(|cx| {
                for (i, fd) in &ready {
                    if let Poll::Ready(Ok(mut guard)) = fd.poll_read_ready(cx) {
                        guard.clear_ready();
                        return Poll::Ready(*i);
                    }
                }
                Poll::Pending
            })
        };
        let exited = self
            .target_exit
            .take()
            // SAFETY: the `AsyncFd` owns the pidfd, which stays open until it is dropped.
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
        let push_every = self
            .pusher
            .as_ref()
            .map_or(Duration::from_secs(3600), |(_, every)| *every);
        let mut push_tick = tokio::time::interval(push_every);
        push_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        push_tick.tick().await;
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
        let quit = self.live_view.as_mut().and_then(LiveView::take_quit);
        let user_quit = async move {
            match quit {
                Some(quit) => {
                    let _ = quit.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(user_quit);

        // How the target ended, once it has: the trace goes on while other processes run.
        let mut target_ended: Option<Option<i32>> = None;
        let reason = loop {
            tokio::select! {
                source = readable() => self.poll(Some(source)),
                _ = drain_tick.tick() => self.poll(None),
                _ = status_tick.tick() => {
                    self.status();
                    // Without a pidfd (the target gone before it could be opened), its exit is
                    // seen here.
                    if exited.is_none()
                        && target_ended.is_none()
                        && !self.processes.target().is_alive()
                    {
                        target_ended = Some(self.exit_status(None));
                    }
                }
                _ = soak_tick.tick(), if self.soak.is_some() => self.write_soak_snapshot(),
                _ = push_tick.tick(), if self.pusher.is_some() => self.push(),
                _ = interrupt.recv() => break StopReason::Interrupted,
                _ = terminate.recv() => break StopReason::Terminated,
                () = &mut target_exit, if target_ended.is_none() => {
                    target_ended = Some(self.exit_status(exited.as_ref()));
                }
                () = &mut deadline => break StopReason::Duration,
                () = &mut user_quit => break StopReason::Quit,
            }
            if self.failure.is_some() {
                break StopReason::SourceFailed;
            }
            if let Some(status) = target_ended
                && !self.processes.others_alive()
            {
                break StopReason::TargetExited(status);
            }
        };
        // The report describes the heap at this moment: events after it come while probes are
        // being removed one by one (allocations no longer seen, frees still seen) and are left
        // out. Stop every source, then take everything still buffered.
        let cutoff_ns = monotonic_now_ns();
        self.stopped = Some((cutoff_ns, Instant::now()));
        for (_, _, source) in &mut self.sources {
            source.stop(cutoff_ns);
        }
        self.poll(None);
        self.pipeline.flush();
        Ok(reason)
    }

    /// How the target ended: a launched program is our child and is reaped here; any other
    /// target's status comes through its pidfd once its parent has reaped it.
    fn exit_status(&self, pidfd: Option<&AsyncFd<OwnedFd>>) -> Option<i32> {
        /// How long a parent may take to reap the target before the report goes without.
        const REAP_PATIENCE: Duration = Duration::from_millis(300);
        match &self.launched {
            Some(launched) => launched.wait_status(),
            None => pidfd.and_then(|fd| {
                crate::target::pidfd_exit_status(fd.get_ref().as_fd(), REAP_PATIENCE)
            }),
        }
    }

    /// Polls source `only` (every source when `None`) and feeds what it yields to the
    /// pipeline. New stacks are pinned to the modules mapped now: the maps are read again
    /// first, so a library loaded since (or unloaded, with another in its place) is known.
    fn poll(&mut self, only: Option<usize>) {
        for index in 0..self.sources.len() {
            if only.is_some_and(|only| only != index) {
                continue;
            }
            self.batch.clear();
            let Some((id, pid, source)) = self.sources.get_mut(index) else {
                continue;
            };
            let (id, pid) = (*id, *pid);
            source.poll(&mut self.batch);
            if let Some(failure) = source.failed() {
                self.failure.get_or_insert(failure);
            }
            if !self.batch.stacks.is_empty() {
                self.refresh_maps_of(pid);
            }
            self.pipeline.ingest(id, &self.batch, monotonic_now_ns());
        }
        self.pipeline.advance(monotonic_now_ns());
    }

    /// Every source's counters.
    fn health(&self) -> Vec<Health> {
        let mut health: Vec<Health> = Vec::new();
        for (_, _, source) in &self.sources {
            // Several processes: one counter per name, added up.
            for counter in source.health() {
                match health.iter_mut().find(|h| h.name == counter.name) {
                    Some(sum) => sum.value = sum.value.saturating_add(counter.value),
                    None => health.push(counter),
                }
            }
        }
        health
    }

    /// Builds the report of every row, sorted (callers cut it with [`Report::keep_top`]).
    fn report(&mut self) -> Report {
        // The final report describes the heap when tracing stopped, however long writing it
        // takes: ages and the duration are measured to then.
        let (now_ns, now) = self
            .stopped
            .unwrap_or_else(|| (monotonic_now_ns(), Instant::now()));
        let target = self.processes.target();
        let header = Header {
            pid: target.pid,
            command: target.command.clone(),
            processes: if self.processes.several() {
                self.processes
                    .iter()
                    .map(|w| crate::report::TracedProcess {
                        pid: w.process.pid,
                        command: w.process.command.clone(),
                        parent: w.parent,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            duration_s: now.duration_since(self.started).as_secs_f64(),
            unwind: self.unwind.to_owned(),
            sample_bytes: self.sample_bytes,
            estimates: self
                .sources
                .iter()
                .filter_map(|(_, _, source)| source.estimate())
                .collect(),
        };
        let sources = self.health();
        let mut session = vec![Health::new(
            "tracer_memory_bytes",
            own_rss_bytes(),
            HealthKind::Info,
        )];
        if let Some((pusher, _)) = &self.pusher {
            session.extend(pusher.health());
        }
        if let Some(view) = &self.live_view {
            session.extend(view.health());
            // Events wait in the ring buffer meanwhile.
            session.push(Health::new(
                "view_report_slowest_us",
                self.slowest_view_report_us,
                HealthKind::Info,
            ));
        }
        let mut report = self.pipeline.report(header, now_ns, sources, session);
        if let Some((at_attach, now)) = self.processes.anon() {
            report.coverage = Coverage::judge(
                at_attach,
                now,
                report.totals.live_bytes,
                self.not_traced.clone(),
            );
        }
        report
    }

    /// Every interval: one history sample of every row, the maps read again (libraries loaded
    /// since), and a status line or a live-view snapshot.
    fn status(&mut self) {
        let t_s = self.started.elapsed().as_secs_f64();
        self.pipeline.sample(t_s, monotonic_now_ns());
        self.refresh_maps();
        self.follow_children();
        let counts = self.pipeline.counts();
        let (then, allocs_then, frees_then) = self.last_status;
        let dt = then.elapsed().as_secs_f64().max(1e-3);
        self.rates = (
            counts.allocs.saturating_sub(allocs_then) as f64 / dt,
            counts.frees.saturating_sub(frees_then) as f64 / dt,
        );
        self.last_status = (Instant::now(), counts.allocs, counts.frees);
        if self.live_view.is_some() || self.metrics.is_some() {
            let building = Instant::now();
            let report = self.report();
            if let Some(metrics) = &self.metrics {
                metrics.publish(&report);
            }
            if self.live_view.is_some() {
                let snapshot = self.snapshot_of(report, None);
                let took = u64::try_from(building.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.slowest_view_report_us = self.slowest_view_report_us.max(took);
                if let Some(view) = &self.live_view {
                    view.send(snapshot);
                }
                return;
            }
        }
        let health = crate::source::Diagnostics(self.health());
        eprintln!(
            "[{t_s:>7.1}s] live {} in {} allocs | {:.0} allocs/s {:.0} frees/s | lost {} | unmatched frees {} | stacks without frames {} | unwind {} ({} tables)",
            human_bytes(counts.live_bytes),
            counts.live_allocs,
            self.rates.0,
            self.rates.1,
            health.lost_events(),
            counts.unmatched_frees,
            health.get("stack_failed") + health.get("stack_map_full"),
            self.unwind,
            human_bytes(health.get("unwind_table_bytes")),
        );
    }

    /// `--push`: hands the current report to the pusher.
    fn push(&mut self) {
        let report = self.report();
        if let Some((pusher, _)) = &mut self.pusher {
            pusher.offer(&report);
        }
    }

    /// `--snapshot-every`: writes the current report into the snapshot directory.
    fn write_soak_snapshot(&mut self) {
        let mut report = self.report();
        if let Some(top) = self.top {
            report.keep_top(top);
        }
        let Some((soak, _)) = &self.soak else {
            return;
        };
        let quiet = self.live_view.is_some();
        match soak.write(&report, std::time::SystemTime::now()) {
            Ok(path) if !quiet => eprintln!("leaktrace: snapshot {}", path.display()),
            Err(err) if !quiet => eprintln!("leaktrace: snapshot failed: {err}"),
            _ => {}
        }
    }

    /// A snapshot for the live view: the busiest rows, their histories, rates and RSS.
    fn snapshot(&mut self, ended: Option<String>) -> crate::tui::snapshot::Snapshot {
        let report = self.report();
        self.snapshot_of(report, ended)
    }

    /// [`Session::snapshot`] of a report already built.
    fn snapshot_of(
        &mut self,
        report: Report,
        ended: Option<String>,
    ) -> crate::tui::snapshot::Snapshot {
        let wanted = self
            .live_view
            .as_ref()
            .map(LiveView::wanted)
            .unwrap_or_default();
        live::snapshot(
            report,
            self.pipeline.history(),
            &wanted,
            self.processes.target().rss_bytes(),
            self.rates,
            ended,
        )
    }
}
