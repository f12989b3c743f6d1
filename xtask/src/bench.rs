//! `cargo xtask bench`: the cost of tracing a malloc-heavy workload, measured in one run.
//!
//! Each configuration (untraced, leaktrace, and bcc's memleak when installed) runs the same C
//! workload `reps` times, interleaved so drift affects all alike. The workload waits on stdin
//! until the tracer has attached, then times its own loops, so start-up is excluded.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

const THREADS: u32 = 2;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Untraced,
    /// Empty probes on the entries of the C library's allocating functions and free only: the
    /// entry trap per call any tracer of every allocation pays (two per malloc+free pair).
    Floor,
    /// leaktrace sampling by bytes (mean 512 KiB), as a uprobe session where the kernel has them.
    LeaktraceSampled,
    /// The same with separate return probes: every call takes the return trap.
    LeaktraceSampledUretprobes,
    /// leaktrace with the kernel's frame-pointer walk.
    LeaktraceFp,
    /// leaktrace unwinding from `.eh_frame` tables.
    LeaktraceDwarf,
    Memleak,
    /// A bpftrace script doing what memleak does (malloc's entry and return, free's entry, a map
    /// by address of size and user stack): the attach-mode peer where bcc cannot run.
    Bpftrace,
    /// heaptrack launching the workload (its LD_PRELOAD library records every call).
    Heaptrack,
    /// valgrind's memcheck launching the workload (every instruction translated).
    Valgrind,
    /// The workload with Debian's libjemalloc preloaded: its malloc is jemalloc's.
    UntracedJemalloc,
    /// leaktrace (`--unwind dwarf`) on the workload with jemalloc.
    LeaktraceJemalloc,
    /// The workload with Debian's libmimalloc preloaded.
    UntracedMimalloc,
    /// leaktrace (`--unwind dwarf`) on the workload with mimalloc.
    LeaktraceMimalloc,
}

/// Debian's allocator libraries the bench preloads into the workload.
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";

impl Config {
    fn name(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Floor => "two-trap floor (empty probes)",
            Self::LeaktraceSampled => "leaktrace --sample-bytes 524288",
            Self::LeaktraceSampledUretprobes => "  same, without uprobe session",
            Self::LeaktraceFp => "leaktrace --unwind fp",
            Self::LeaktraceDwarf => "leaktrace --unwind dwarf",
            Self::Memleak => "bcc memleak-bpfcc -p PID",
            Self::Bpftrace => "bpftrace memleak-like script",
            Self::Heaptrack => "heaptrack (launches it)",
            Self::Valgrind => "valgrind memcheck (launches it)",
            Self::UntracedJemalloc => "untraced, jemalloc",
            Self::LeaktraceJemalloc => "leaktrace --unwind dwarf, jemalloc",
            Self::UntracedMimalloc => "untraced, mimalloc",
            Self::LeaktraceMimalloc => "leaktrace --unwind dwarf, mimalloc",
        }
    }

    /// Another tool's row: one that cannot run here is said in one line and left out.
    fn is_peer(self) -> bool {
        matches!(
            self,
            Self::Memleak | Self::Bpftrace | Self::Heaptrack | Self::Valgrind
        )
    }

    /// The command that launches the workload, for peers that do (heaptrack writes its data
    /// into `dir`).
    fn launcher(self, dir: &Path) -> Option<Vec<String>> {
        match self {
            Self::Heaptrack => Some(vec![
                "heaptrack".into(),
                "-o".into(),
                dir.join("heaptrack").display().to_string(),
            ]),
            Self::Valgrind => Some(vec![
                "valgrind".into(),
                "--tool=memcheck".into(),
                "--leak-check=no".into(),
                "-q".into(),
            ]),
            _ => None,
        }
    }

    /// The allocator library preloaded into the workload, if not glibc's.
    fn preload(self) -> Option<&'static str> {
        match self {
            Self::UntracedJemalloc | Self::LeaktraceJemalloc => Some(JEMALLOC),
            Self::UntracedMimalloc | Self::LeaktraceMimalloc => Some(MIMALLOC),
            _ => None,
        }
    }

    /// The untraced run this one's added cost is measured against (same allocator).
    fn baseline(self) -> Self {
        match self.preload() {
            Some(JEMALLOC) => Self::UntracedJemalloc,
            Some(_) => Self::UntracedMimalloc,
            None => Self::Untraced,
        }
    }

    /// leaktrace's arguments for this configuration, if it runs leaktrace.
    fn leaktrace_args(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Floor => Some(&["--probe-floor", "--unwind", "fp"]),
            Self::LeaktraceSampled => Some(&["--sample-bytes", "524288"]),
            Self::LeaktraceSampledUretprobes => {
                Some(&["--sample-bytes", "524288", "--no-uprobe-session"])
            }
            Self::LeaktraceFp => Some(&["--unwind", "fp"]),
            Self::LeaktraceDwarf | Self::LeaktraceJemalloc | Self::LeaktraceMimalloc => {
                Some(&["--unwind", "dwarf"])
            }
            Self::Untraced
            | Self::Memleak
            | Self::Bpftrace
            | Self::Heaptrack
            | Self::Valgrind
            | Self::UntracedJemalloc
            | Self::UntracedMimalloc => None,
        }
    }
}

struct Sample {
    ns_per_pair: f64,
    lost: Option<u64>,
    /// CPU time the tracer process spent while the workload ran, per pair (its reader and
    /// model compete with the workload's threads for the same cores).
    tracer_cpu_ns: Option<f64>,
    /// Per leaktrace program: runs and nanoseconds spent (with `kernel.bpf_stats_enabled`).
    programs: Vec<ProgramStats>,
}

/// What the kernel counted for one of leaktrace's programs during a run.
#[derive(Clone, Debug)]
struct ProgramStats {
    name: String,
    runs: u64,
    run_time_ns: u64,
}

/// How one run differs from the timed ones.
#[derive(Clone, Copy, Debug, Default)]
struct RunOptions {
    /// Frames per allocation's stack (the workload's default chain of 20 when `None`).
    depth: Option<u32>,
    /// Read the programs' run counts and times before stopping leaktrace.
    program_stats: bool,
    /// Phases leaktrace's programs leave out (`--bench-skip`), to find what each costs.
    skip: Option<&'static str>,
    /// The held-out-like mix (`BENCH_MIX=1`: 16 B to 64 KiB, calloc and realloc, 10 frames)
    /// instead of the malloc+free pairs.
    mix: bool,
}

/// leaktrace's programs that run per allocator call.
const PROGRAMS: [&str; 7] = [
    "alloc_enter",
    "alloc_exit",
    "alloc_session",
    "alloc_sess_fp",
    "alloc_exit_fp",
    "free_enter",
    "floor_enter",
];

/// The ids of the BPF programs process `pid` holds, from the `prog_id:` lines of its
/// descriptors' fdinfo (Debian's bpftool lists no owning pids).
fn program_ids_of(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// The run counts and times of `tracer`'s programs, from `bpftool prog show -j` (the kernel
/// keeps them while `kernel.bpf_stats_enabled` is 1).
fn program_stats(tracer: u32) -> Result<Vec<ProgramStats>> {
    let ids = program_ids_of(tracer);
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("running bpftool")?;
    let programs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let owned_by_tracer =
        |p: &serde_json::Value| p["id"].as_u64().is_some_and(|id| ids.contains(&id));
    Ok(programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| owned_by_tracer(p))
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            PROGRAMS.contains(&name).then(|| ProgramStats {
                name: name.to_owned(),
                runs: p["run_cnt"].as_u64().unwrap_or(0),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

/// A tracer process whose stderr/stdout is collected until it prints `ready_marker`.
struct TracerProc {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl TracerProc {
    fn start(mut cmd: Command, ready_marker: &str, timeout: Duration) -> Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()?;
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = Arc::clone(&output);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if let Ok(mut out) = sink.lock() {
                        out.push_str(&line);
                    }
                    line.clear();
                }
            });
        }
        let started = Instant::now();
        loop {
            if output.lock().is_ok_and(|o| o.contains(ready_marker)) {
                return Ok(Self { child, output });
            }
            if started.elapsed() > timeout || child.try_wait()?.is_some() {
                let text = output.lock().map(|o| o.clone()).unwrap_or_default();
                let _ = child.kill();
                bail!("tracer did not become ready:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the tracer as a user would, with Ctrl-C (SIGINT). A tracer that ignores it (a
    /// Python peer started with SIGINT ignored, as a shell's background job is) gets SIGTERM
    /// after 10 s, then SIGKILL after 10 more, so the bench never waits forever.
    fn stop(mut self) -> Result<String> {
        let pid = self.child.id() as libc::pid_t;
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
            // SAFETY: kill(2) takes plain integers; the pid is our own child's, not yet reaped.
            unsafe { libc::kill(pid, signal) };
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_secs(10) {
                if self.child.try_wait()?.is_some() {
                    std::thread::sleep(Duration::from_millis(100));
                    return Ok(self.output.lock().map(|o| o.clone()).unwrap_or_default());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("bench: the tracer (pid {pid}) outlived signal {signal} for 10 s");
        }
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        Ok(self.output.lock().map(|o| o.clone()).unwrap_or_default())
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn bcc_kernel_source(workspace: &Path) -> Option<PathBuf> {
    // The running kernel ships no headers: overlay Debian's newest -amd64 headers on -common.
    let mut amd64: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("linux-headers-") && n.ends_with("-amd64")
            })
        })
        .collect();
    amd64.sort_by_key(|p| {
        p.file_name()
            .map(|n| {
                n.to_string_lossy()
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|x| x.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    let amd64 = amd64.pop()?;
    let name = amd64.file_name()?.to_string_lossy().into_owned();
    let common = amd64.with_file_name(name.replace("-amd64", "-common"));
    let overlay = workspace.join("target/bcc-kernel-source");
    if !overlay.join("Makefile").exists() {
        let _ = std::fs::remove_dir_all(&overlay);
        std::fs::create_dir_all(&overlay).ok()?;
        for tree in [&common, &amd64] {
            let status = Command::new("cp")
                .arg("-asf")
                .arg(format!("{}/.", tree.display()))
                .arg(&overlay)
                .status()
                .ok()?;
            if !status.success() {
                return None;
            }
        }
    }
    Some(overlay)
}

fn run_once(
    workload: &Path,
    leaktrace: &Path,
    config: Config,
    ops: u64,
    kernel_source: Option<&Path>,
    options: RunOptions,
) -> Result<Sample> {
    let dir = tempfile_dir()?;
    let launcher = config.launcher(&dir);
    let mut workload = match &launcher {
        Some(words) => {
            let mut cmd = Command::new(&words[0]);
            cmd.args(&words[1..]).arg(workload).current_dir(&dir);
            cmd
        }
        None => Command::new(workload),
    };
    if let Some(library) = config.preload() {
        workload.env("LD_PRELOAD", library);
    }
    workload.arg(THREADS.to_string()).arg(ops.to_string());
    if let Some(depth) = options.depth {
        workload.arg(depth.to_string());
    }
    if options.mix {
        workload.env("BENCH_MIX", "1");
    }
    let mut child = workload
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the workload")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    // A launcher may print lines of its own before and after the workload's.
    let mut read_until = |prefix: &str| -> Result<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                bail!("the workload ended before saying {prefix:?}");
            }
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return Ok(rest.to_owned());
            }
        }
    };
    let pid: u32 = read_until("ready ")
        .context("workload handshake")?
        .parse()?;
    let export = dir.join("bench.json");
    let tracer = match config {
        Config::Untraced | Config::Heaptrack | Config::Valgrind => None,
        Config::UntracedJemalloc | Config::UntracedMimalloc => None,
        Config::Bpftrace => {
            let script = dir.join("memleak.bt");
            std::fs::write(&script, bpftrace_memleak(&libc_of(pid)?, pid))?;
            // Not `-p PID`: that opens its uprobes for the main thread only.
            let mut cmd = Command::new("bpftrace");
            cmd.arg(&script);
            let tracer = TracerProc::start(cmd, "Attaching", Duration::from_secs(60))?;
            // bpftrace says so before its probes are in place.
            std::thread::sleep(Duration::from_secs(1));
            Some(tracer)
        }
        Config::Floor
        | Config::LeaktraceSampled
        | Config::LeaktraceSampledUretprobes
        | Config::LeaktraceFp
        | Config::LeaktraceDwarf
        | Config::LeaktraceJemalloc
        | Config::LeaktraceMimalloc => {
            let mut cmd = Command::new(leaktrace);
            cmd.args(["--no-tui", "-p", &pid.to_string(), "--export"])
                .arg(&export);
            cmd.args(config.leaktrace_args().unwrap_or_default());
            if let Some(skip) = options.skip {
                cmd.args(["--bench-skip", skip]);
            }
            Some(TracerProc::start(
                cmd,
                "leaktrace: tracing pid",
                Duration::from_secs(30),
            )?)
        }
        Config::Memleak => {
            let mut cmd = Command::new("memleak-bpfcc");
            cmd.args(["-p", &pid.to_string()]);
            if let Some(source) = kernel_source {
                cmd.env("BCC_KERNEL_SOURCE", source);
            }
            let tracer = TracerProc::start(cmd, "Attaching to pid", Duration::from_secs(120))?;
            // memleak prints before its probes are all in place; give it a moment.
            std::thread::sleep(Duration::from_secs(2));
            Some(tracer)
        }
    };
    let mut stdin = child.stdin.take().context("stdin")?;
    let tracer_cpu_before = tracer.as_ref().and_then(|t| cpu_time_ns(t.child.id()));
    writeln!(stdin, "go")?;
    let ns_per_pair: f64 = read_until("ns_per_pair ")?.parse()?;
    let pairs = (u64::from(THREADS) * ops) as f64;
    let tracer_cpu_ns = tracer
        .as_ref()
        .and_then(|t| cpu_time_ns(t.child.id()))
        .zip(tracer_cpu_before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / pairs);
    let _ = child.wait();
    let mut lost = None;
    let mut programs = Vec::new();
    if let Some(tracer) = &tracer
        && options.program_stats
    {
        programs = program_stats(tracer.child.id())?;
    }
    if let Some(tracer) = tracer {
        tracer.stop()?;
        if config.leaktrace_args().is_some() {
            let text = std::fs::read_to_string(&export).unwrap_or_default();
            lost = text
                .split("\"lost_events\":")
                .nth(1)
                .and_then(|rest| {
                    rest.trim_start()
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                })
                .and_then(|n| n.parse().ok());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Sample {
        ns_per_pair,
        lost,
        tracer_cpu_ns,
        programs,
    })
}

/// `, tracer CPU N ns/pair` for a run's log line, or nothing for an untraced run.
fn cpu_note(cpu: Option<f64>) -> String {
    cpu.map(|ns| format!(", tracer CPU {ns:.0} ns/pair"))
        .unwrap_or_default()
}

/// CPU time all threads of process `pid` have run, in nanoseconds (the first field of each
/// thread's `schedstat`).
fn cpu_time_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// The C library process `pid` maps (where the bpftrace row probes malloc and free).
fn libc_of(pid: u32) -> Result<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.rsplit('/').next() == Some("libc.so.6"))
        .map(str::to_owned)
        .context("the workload maps no libc.so.6")
}

/// What bcc's memleak does, as a bpftrace script on `libc` for process `pid` (a predicate on
/// every probe): malloc's size kept at its entry by thread, at its return the block's size and
/// user stack kept by address, both dropped by free. Nothing is printed at the end (the maps
/// are cleared).
fn bpftrace_memleak(libc: &str, pid: u32) -> String {
    format!(
        "uprobe:{libc}:malloc /pid == {pid}/ {{ @size[tid] = arg0; }}\n\
         uretprobe:{libc}:malloc /pid == {pid} && @size[tid]/ {{ @bytes[retval] = @size[tid]; @stack[retval] = ustack; delete(@size[tid]); }}\n\
         uprobe:{libc}:free /pid == {pid}/ {{ delete(@bytes[arg0]); delete(@stack[arg0]); }}\n\
         END {{ clear(@size); clear(@bytes); clear(@stack); }}\n"
    )
}

/// The last line of `err` that says something (a tool's traceback ends with its reason).
fn last_words(err: &anyhow::Error) -> String {
    format!("{err:#}")
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("failed")
        .to_owned()
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "leaktrace-bench-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the benchmark and prints the table.
/// Whether the bench runs its peer rows (bcc's memleak).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Peers {
    Run,
    /// Left out, and said so (inside an emulated kernel, bcc's compile alone takes minutes).
    Skip,
}

/// Builds the workload.
fn workload(workspace: &Path) -> Result<PathBuf> {
    let workload = workspace.join("target/bench-workload");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&workload)
            .arg(workspace.join("xtask/bench/workload.c")),
    )?;
    Ok(workload)
}

/// `cargo xtask bench-programs`: the breakdown alone, against the median of three untraced
/// runs.
pub(crate) fn programs(workspace: &Path, ops: u64) -> Result<()> {
    let workload = workload(workspace)?;
    let leaktrace = workspace.join("target/release/leaktrace");
    let mut untraced = (0..3)
        .map(|_| {
            run_once(
                &workload,
                &leaktrace,
                Config::Untraced,
                ops,
                None,
                RunOptions::default(),
            )
            .map(|s| s.ns_per_pair)
        })
        .collect::<Result<Vec<f64>>>()?;
    breakdown(&workload, &leaktrace, ops, median(&mut untraced))
}

pub(crate) fn run(workspace: &Path, reps: usize, ops: u64, peers: Peers) -> Result<()> {
    let workload = workload(workspace)?;
    let leaktrace = workspace.join("target/release/leaktrace");
    let mut configs = vec![
        Config::Untraced,
        Config::Floor,
        Config::LeaktraceSampled,
        Config::LeaktraceSampledUretprobes,
        Config::LeaktraceFp,
        Config::LeaktraceDwarf,
        Config::UntracedJemalloc,
        Config::LeaktraceJemalloc,
        Config::UntracedMimalloc,
        Config::LeaktraceMimalloc,
    ];
    let memleak = peers == Peers::Run
        && Command::new("sh")
            .args(["-c", "command -v memleak-bpfcc"])
            .output()
            .is_ok_and(|o| o.status.success());
    let kernel_source = if memleak {
        bcc_kernel_source(workspace)
    } else {
        None
    };
    if peers == Peers::Run {
        configs.extend([Config::Bpftrace, Config::Heaptrack, Config::Valgrind]);
    }
    if memleak {
        configs.push(Config::Memleak);
    } else if peers == Peers::Skip {
        eprintln!("bench: peer rows left out (bench --kernel): no memleak row");
    } else {
        eprintln!(
            "bench: memleak-bpfcc not installed (apt-get install bpfcc-tools linux-headers-amd64): skipping it"
        );
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut tracer_cpu: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut lost_total = 0u64;
    let mut cannot_run: Vec<(Config, String)> = Vec::new();
    for rep in 0..reps {
        for (i, config) in configs.iter().enumerate() {
            if cannot_run.iter().any(|(c, _)| c == config) {
                continue;
            }
            match run_once(
                &workload,
                &leaktrace,
                *config,
                ops,
                kernel_source.as_deref(),
                RunOptions::default(),
            ) {
                Ok(sample) => {
                    eprintln!(
                        "bench: rep {rep} {:<36} {:>10.0} ns/pair{}",
                        config.name(),
                        sample.ns_per_pair,
                        cpu_note(sample.tracer_cpu_ns)
                    );
                    lost_total += sample.lost.unwrap_or(0);
                    samples[i].push(sample.ns_per_pair);
                    if let Some(cpu) = sample.tracer_cpu_ns {
                        tracer_cpu[i].push(cpu);
                    }
                }
                Err(err) if config.is_peer() => {
                    // Said once, and the row left out.
                    if !cannot_run.iter().any(|(c, _)| c == config) {
                        cannot_run.push((*config, last_words(&err)));
                        eprintln!(
                            "bench: {}: cannot run here: {}",
                            config.name(),
                            last_words(&err)
                        );
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }
    let medians: Vec<Option<f64>> = samples
        .iter()
        .map(|values| (!values.is_empty()).then(|| median(&mut values.clone())))
        .collect();
    let median_of = |wanted: Config| {
        configs
            .iter()
            .position(|c| *c == wanted)
            .and_then(|i| medians[i])
    };
    let base = median(&mut samples[0].clone());
    println!();
    println!(
        "{THREADS} threads x {ops} malloc+free pairs, {reps} interleaved repetitions, medians:"
    );
    println!(
        "{:<36} {:>12} {:>14} {:>12} {:>9} {:>17}",
        "configuration",
        "ns/pair",
        "added us/pair",
        "vs untraced",
        "vs floor",
        "tracer CPU us/pair"
    );
    // The two-trap floor's added cost, against which every added cost is also put.
    let floor_added = median_of(Config::Floor).map(|floor| floor - base);
    for ((config, m), cpu) in configs.iter().zip(&medians).zip(&tracer_cpu) {
        let Some(m) = *m else {
            continue;
        };
        let cpu = if cpu.is_empty() {
            String::new()
        } else {
            format!("{:.2}", median(&mut cpu.clone()) / 1000.0)
        };
        // Added against the untraced run with the same allocator.
        let base = median_of(config.baseline()).unwrap_or(base);
        let added = m - base;
        let vs_floor = match floor_added {
            Some(floor)
                if floor > 0.0 && (config.leaktrace_args().is_some() || config.is_peer()) =>
            {
                format!("{:.2}x", added / floor.max(1e-9))
            }
            _ => String::new(),
        };
        println!(
            "{:<36} {:>12.0} {:>14.2} {:>11.1}x {:>9} {:>17}",
            config.name(),
            m,
            added / 1000.0,
            m / base,
            vs_floor,
            cpu
        );
    }
    for (config, why) in &cannot_run {
        println!("{:<36} cannot run here: {why}", config.name());
    }
    println!("leaktrace lost events over all runs: {lost_total}");
    let position = |wanted: Config| configs.iter().position(|c| *c == wanted);
    if let (Some(floor), Some(sampled)) =
        (position(Config::Floor), position(Config::LeaktraceSampled))
        && !samples[floor].is_empty()
        && !samples[sampled].is_empty()
    {
        let (floor, sampled) = (median(&mut samples[floor]), median(&mut samples[sampled]));
        println!(
            "sampled tracing vs the two-trap floor: {:.2}x",
            sampled / floor
        );
        if let Some(pair) = position(Config::LeaktraceSampledUretprobes)
            && !samples[pair].is_empty()
        {
            println!(
                "  without the uprobe session (a return trap on every call): {:.2}x",
                median(&mut samples[pair]) / floor
            );
        }
    }
    let added = |traced: Config| Some(median_of(traced)? - median_of(traced.baseline())?);
    if let Some(glibc) = added(Config::LeaktraceDwarf) {
        for other in [Config::LeaktraceJemalloc, Config::LeaktraceMimalloc] {
            if let Some(cost) = added(other) {
                println!(
                    "{}: {:.2} us added per pair, {:+.0} % against glibc's",
                    other.name(),
                    cost / 1000.0,
                    (cost / glibc - 1.0) * 100.0
                );
            }
        }
    }
    let fp = configs.iter().position(|c| *c == Config::LeaktraceFp);
    let dwarf = configs.iter().position(|c| *c == Config::LeaktraceDwarf);
    if let (Some(fp), Some(dwarf)) = (fp, dwarf)
        && !samples[fp].is_empty()
        && !samples[dwarf].is_empty()
    {
        let (fp, dwarf) = (median(&mut samples[fp]), median(&mut samples[dwarf]));
        println!(
            ".eh_frame unwinding over frame pointers: {:+.2} us per allocation (20-frame stacks)",
            (dwarf - fp) / 1000.0
        );
    }
    mix(&workload, &leaktrace, reps, ops)?;
    if peers == Peers::Run {
        breakdown(&workload, &leaktrace, ops, base)?;
        crate::scale::run(workspace, &leaktrace)?;
    }
    Ok(())
}

/// `cargo xtask bench-ab`: builds `a` and `b` of leaktrace, each in both unwinding modes,
/// against the same untraced runs and floor, interleaved run by run so that the machine's drift
/// falls on both alike; medians of `reps`, and each build's ratio to the floor.
pub(crate) fn ab(
    workspace: &Path,
    a: &Path,
    b: &Path,
    reps: usize,
    ops: u64,
    mix: bool,
) -> Result<()> {
    let workload = workload(workspace)?;
    let options = RunOptions {
        mix,
        ..RunOptions::default()
    };
    // (label, binary, configuration); the floor runs with `a` (its program is the same in any).
    let runs: Vec<(&str, &Path, Config)> = vec![
        ("untraced", a, Config::Untraced),
        ("floor", a, Config::Floor),
        ("a fp", a, Config::LeaktraceFp),
        ("b fp", b, Config::LeaktraceFp),
        ("a dwarf", a, Config::LeaktraceDwarf),
        ("b dwarf", b, Config::LeaktraceDwarf),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    for rep in 0..reps {
        for (i, (label, binary, config)) in runs.iter().enumerate() {
            let sample = run_once(&workload, binary, *config, ops, None, options)?;
            eprintln!(
                "bench-ab: rep {rep} {label:<10} {:>8.0} ns/pair{}",
                sample.ns_per_pair,
                cpu_note(sample.tracer_cpu_ns)
            );
            if sample.lost.unwrap_or(0) != 0 {
                eprintln!("bench-ab: {label} lost {} events", sample.lost.unwrap_or(0));
            }
            samples[i].push(sample.ns_per_pair);
            if let Some(ns) = sample.tracer_cpu_ns {
                cpu[i].push(ns);
            }
        }
    }
    let medians: Vec<f64> = samples.iter_mut().map(|v| median(v)).collect();
    let floor = medians[1] - medians[0];
    println!();
    println!("a: {}", a.display());
    println!("b: {}", b.display());
    println!(
        "{} ({THREADS} threads x {ops}), medians of {reps}:",
        if mix {
            "held-out-like mix"
        } else {
            "malloc+free pairs, 20 frames"
        }
    );
    println!(
        "{:<10} {:>10} {:>14} {:>9} {:>18}",
        "run", "ns/pair", "added us/pair", "vs floor", "tracer CPU us/pair"
    );
    for (i, (label, _, _)) in runs.iter().enumerate() {
        let added = medians[i] - medians[0];
        let vs_floor = if i == 0 || floor <= 0.0 {
            String::new()
        } else {
            format!("{:.2}x", added / floor)
        };
        let tracer = if cpu[i].is_empty() {
            String::new()
        } else {
            format!("{:.2}", median(&mut cpu[i]) / 1000.0)
        };
        println!(
            "{label:<10} {:>10.0} {:>14.2} {:>9} {:>18}",
            medians[i],
            added / 1000.0,
            vs_floor,
            tracer
        );
    }
    Ok(())
}

/// The held-out-like mix of the issue that set the 2.0x target: sizes 16 B to 64 KiB, 10 %
/// calloc, 10 % malloc then realloc, 10 frames; untraced, the floor (which probes malloc and
/// free only) and full tracing in both unwinding modes, interleaved, medians.
fn mix(workload: &Path, leaktrace: &Path, reps: usize, ops: u64) -> Result<()> {
    let configs = [
        Config::Untraced,
        Config::Floor,
        Config::LeaktraceFp,
        Config::LeaktraceDwarf,
    ];
    let options = RunOptions {
        mix: true,
        ..RunOptions::default()
    };
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut lost = 0u64;
    for rep in 0..reps {
        for (i, config) in configs.iter().enumerate() {
            let sample = run_once(workload, leaktrace, *config, ops, None, options)?;
            eprintln!(
                "bench: mix rep {rep} {:<32} {:>10.0} ns/op{}",
                config.name(),
                sample.ns_per_pair,
                cpu_note(sample.tracer_cpu_ns)
            );
            lost += sample.lost.unwrap_or(0);
            samples[i].push(sample.ns_per_pair);
        }
    }
    let medians: Vec<f64> = samples.iter_mut().map(|v| median(v)).collect();
    let (base, floor) = (medians[0], medians[1] - medians[0]);
    println!();
    println!(
        "held-out-like mix ({THREADS} threads x {ops} ops of 16 B to 64 KiB, 10 % calloc, 10 % \
         realloc, 10 frames), medians of {reps}:"
    );
    println!(
        "{:<36} {:>12} {:>14} {:>9}",
        "configuration", "ns/op", "added us/op", "vs floor"
    );
    for (config, m) in configs.iter().zip(&medians) {
        let added = m - base;
        let vs_floor = if *config == Config::Untraced || floor <= 0.0 {
            String::new()
        } else {
            format!("{:.2}x", added / floor)
        };
        println!(
            "{:<36} {:>12.0} {:>14.2} {:>9}",
            config.name(),
            m,
            added / 1000.0,
            vs_floor
        );
    }
    println!("leaktrace lost events in the mix: {lost}");
    Ok(())
}

/// Where full tracing's time goes: one more run per unwinding mode and stack depth, with the
/// kernel counting each program's runs and run time (`kernel.bpf_stats_enabled`, which costs
/// a little per run, so these runs are not among the timed ones). `untraced`: the timed runs'
/// untraced ns per pair, for each run's added cost against the floor's in these runs.
fn breakdown(workload: &Path, leaktrace: &Path, ops: u64, untraced: f64) -> Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    println!();
    println!("time in leaktrace's programs per malloc+free pair (kernel.bpf_stats_enabled):");
    println!(
        "{:<26} {:>6} {:>10} {:>16} {:>16} {:>16} {:>12} {:>10}",
        "configuration",
        "frames",
        "runs/pair",
        "alloc_enter ns",
        "alloc_exit ns",
        "free_enter ns",
        "all, us/pair",
        "x floor*"
    );
    let mut result = Ok(());
    // The floor's empty program: what a run costs with nothing in it (stats included).
    let mut runs: Vec<(Config, u32, Option<&'static str>)> = vec![(Config::Floor, 20, None)];
    for depth in [4u32, 20, 60] {
        for config in [Config::LeaktraceFp, Config::LeaktraceDwarf] {
            runs.push((config, depth, None));
        }
    }
    // At 20 frames, the phases knocked out one after another: the ring buffer record, then the
    // stack's hash and map, then the capture itself.
    for config in [Config::LeaktraceFp, Config::LeaktraceDwarf] {
        for skip in ["submit", "submit,store", "submit,store,capture"] {
            runs.push((config, 20, Some(skip)));
        }
    }
    let mut floor_ns = None;
    for (config, depth, skip) in runs {
        let options = RunOptions {
            depth: Some(depth),
            program_stats: true,
            skip,
            mix: false,
        };
        let sample = match run_once(workload, leaktrace, config, ops, None, options) {
            Ok(sample) => sample,
            Err(err) => {
                result = Err(err);
                break;
            }
        };
        let pairs = (u64::from(THREADS) * ops) as f64;
        let per_pair = |name: &str| {
            sample
                .programs
                .iter()
                .filter(|p| p.name == name)
                .map(|p| p.run_time_ns)
                .sum::<u64>() as f64
                / pairs
        };
        let all: f64 = PROGRAMS.iter().map(|n| per_pair(n)).sum();
        let runs = sample.programs.iter().map(|p| p.runs).sum::<u64>() as f64 / pairs;
        let name = match skip {
            Some(skip) => format!("{} -{skip}", config.name().trim_start_matches("leaktrace ")),
            None => config.name().to_owned(),
        };
        let floor_added = *floor_ns.get_or_insert(sample.ns_per_pair - untraced);
        println!(
            "{:<26} {:>6} {:>10.2} {:>16.0} {:>16.0} {:>16.0} {:>12.2} {:>10.2}",
            name,
            depth,
            runs,
            per_pair("alloc_enter")
                + per_pair("alloc_session")
                + per_pair("alloc_sess_fp")
                + per_pair("floor_enter"),
            per_pair("alloc_exit") + per_pair("alloc_exit_fp"),
            per_pair("free_enter"),
            all / 1000.0,
            (sample.ns_per_pair - untraced) / floor_added.max(1e-9),
        );
    }
    println!(
        "* added per pair against the floor's, both with kernel.bpf_stats_enabled (which adds to every run); -PHASES: runs with those phases left out (--bench-skip), at 20 frames"
    );
    std::fs::write(STATS, before.trim()).context("restoring kernel.bpf_stats_enabled")?;
    result
}
