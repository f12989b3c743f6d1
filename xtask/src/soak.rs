//! `cargo xtask soak`: leaktrace attached for a long time to a churning, slowly leaking target,
//! with periodic snapshots on, watching leaktrace's own memory and CPU.
//!
//! The target is `tests/fixtures/leaky.c`, driven from here ten times a second: each tick
//! churns (malloc/free pairs through one stack), leaks one 1 KiB block through
//! `leak_request`, and every tenth tick leaks a 48-byte block through `recurse` at one of 64
//! depths (64 more call paths). So the truth is known here: exact live bytes per path, and the
//! events sent. Every sample prints leaktrace's RSS, CPU and CPU per event; at the end the
//! report's figures are compared with the truth, and the run fails when leaktrace's memory
//! kept growing, its CPU per event crept up, events were lost, or a figure is wrong.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

/// Ticks per second of the driver.
const TICKS_PER_S: u64 = 10;
/// malloc/free pairs per tick.
const CHURN_PER_TICK: u64 = 2000;
/// Bytes leaked through `leak_request` per tick.
const LEAK_BYTES: u64 = 1024;
/// Bytes leaked through `recurse` every tenth tick.
const RECURSE_BYTES: u64 = 48;
/// Distinct `recurse` depths, so distinct leaking call paths.
const DEPTHS: u64 = 64;

/// One sample of leaktrace's own cost.
struct Sample {
    at_s: f64,
    rss_bytes: u64,
    cpu_s: f64,
    events: u64,
    lost: u64,
}

/// The target, driven over its stdin.
struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Target {
    fn start(path: &Path) -> Result<Self> {
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let stdin = child.stdin.take().context("target stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("target stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("target said {line:?}"))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
        })
    }

    fn cmd(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if !line.starts_with("ok") {
            bail!("target answered {line:?} to {command:?}");
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident bytes and CPU seconds of `pid`.
fn own_cost(pid: u32) -> Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((rss_kib * 1024, ticks as f64 / per_s))
}

/// The `lost N` figure of leaktrace's newest status line.
fn lost_in(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.split(" | lost ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs the soak for `duration`, sampling every `sample_every`.
pub(crate) fn run(
    workspace: &Path,
    leaktrace: &Path,
    duration: Duration,
    sample_every: Duration,
) -> Result<()> {
    let dir = workspace.join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("snapshots"))?;
    let leaky = dir.join("leaky");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-o"])
            .arg(&leaky)
            .arg(workspace.join("tests/fixtures/leaky.c")),
    )?;
    // A copy, so rebuilding leaktrace during a long soak does not touch the running binary.
    let binary = dir.join("leaktrace");
    std::fs::copy(leaktrace, &binary).context("copying leaktrace")?;
    let mut target = Target::start(&leaky)?;
    let export = dir.join("final.json");
    // Eight snapshots over the run, four kept: rotation is exercised even in a short run.
    let keep = 4;
    let snapshot_every = format!("{}s", (duration.as_secs() / 8).max(5));
    let mut tracer = Command::new(&binary)
        .args([
            "--no-tui",
            "--interval",
            "5",
            "--snapshot-every",
            &snapshot_every,
        ])
        .arg("--snapshot-dir")
        .arg(dir.join("snapshots"))
        .args(["--keep", &keep.to_string()])
        .arg("--export")
        .arg(&export)
        .args(["-p", &target.pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting leaktrace")?;
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let sink = Arc::clone(&stderr);
        let mut pipe = BufReader::new(tracer.stderr.take().context("leaktrace stderr")?);
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).unwrap_or(0) > 0 {
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                }
                line.clear();
            }
        });
    }
    let text = || stderr.lock().map(|t| t.clone()).unwrap_or_default();
    let attach = Instant::now();
    while !text().contains("tracing pid") {
        if attach.elapsed() > Duration::from_secs(60) || tracer.try_wait()?.is_some() {
            bail!("leaktrace did not attach:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "soak: leaktrace (pid {}) on {} (pid {}) for {:.0} s; sampling every {:.0} s",
        tracer.id(),
        leaky.display(),
        target.pid,
        duration.as_secs_f64(),
        sample_every.as_secs_f64()
    );
    println!(
        "{:>8} {:>10} {:>9} {:>13} {:>14} {:>6}",
        "time", "RSS MiB", "CPU s", "events", "CPU us/event", "lost"
    );
    let start = Instant::now();
    let tick = Duration::from_millis(1000 / TICKS_PER_S);
    let (mut ticks, mut events) = (0u64, 0u64);
    let mut recursed = vec![0u64; DEPTHS as usize];
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = Duration::ZERO;
    while start.elapsed() < duration {
        if start.elapsed() >= next_sample {
            let (rss_bytes, cpu_s) = own_cost(tracer.id())?;
            let sample = Sample {
                at_s: start.elapsed().as_secs_f64(),
                rss_bytes,
                cpu_s,
                events,
                lost: lost_in(&text()),
            };
            let per_event = samples.last().map_or(String::from("-"), |last| {
                let d = sample.events.saturating_sub(last.events).max(1);
                format!("{:.2}", (sample.cpu_s - last.cpu_s) * 1e6 / d as f64)
            });
            println!(
                "{:>7.0}s {:>10.1} {:>9.1} {:>13} {:>14} {:>6}",
                sample.at_s,
                mib(sample.rss_bytes),
                sample.cpu_s,
                sample.events,
                per_event,
                sample.lost
            );
            samples.push(sample);
            next_sample += sample_every;
        }
        let began = Instant::now();
        target.cmd(&format!("churn {CHURN_PER_TICK}"))?;
        target.cmd(&format!("leak 1 {LEAK_BYTES}"))?;
        events += 2 * CHURN_PER_TICK + 1;
        if ticks % 10 == 0 {
            let depth = (ticks / 10) % DEPTHS;
            target.cmd(&format!("recurse {depth} {RECURSE_BYTES}"))?;
            recursed[depth as usize] += 1;
            events += 1;
        }
        ticks += 1;
        if let Some(rest) = tick.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let (rss_end, cpu_end) = own_cost(tracer.id())?;
    // SAFETY: signals our own child.
    unsafe { libc::kill(tracer.id() as libc::pid_t, libc::SIGINT) };
    let status = tracer.wait()?;
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&export)
            .with_context(|| format!("reading {}", export.display()))?,
    )?;
    println!(
        "{:>7.0}s {:>10.1} {:>9.1} {:>13} {:>14} {:>6}",
        start.elapsed().as_secs_f64(),
        mib(rss_end),
        cpu_end,
        events,
        "end",
        report["totals"]["lost_events"]
    );
    judge(
        &report,
        &samples,
        ticks,
        &recursed,
        keep,
        &dir,
        status.success(),
    )
}

/// The soak's verdicts: each failure is one line.
fn judge(
    report: &serde_json::Value,
    samples: &[Sample],
    ticks: u64,
    recursed: &[u64],
    keep: usize,
    dir: &Path,
    exited_cleanly: bool,
) -> Result<()> {
    let mut failures = Vec::new();
    if !exited_cleanly {
        failures.push("leaktrace did not exit 0".to_owned());
    }
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let lost = num(&report["totals"]["lost_events"]);
    if lost > 0 {
        failures.push(format!("{lost} events lost"));
    }
    let rows = report["stacks"].as_array().cloned().unwrap_or_default();
    let first_function = |row: &serde_json::Value| {
        row["frames"][0]["function"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let live_of = |name: &str| -> u64 {
        rows.iter()
            .filter(|r| first_function(r) == name)
            .map(|r| num(&r["live_bytes"]))
            .sum()
    };
    let leak_truth = ticks * LEAK_BYTES;
    let leak_seen = live_of("alloc_buffer");
    let recurse_truth = recursed.iter().sum::<u64>() * RECURSE_BYTES;
    let recurse_seen = live_of("recurse");
    println!(
        "leak through leak_request: {leak_seen} bytes live in the report, {leak_truth} leaked"
    );
    println!(
        "leak through recurse ({} call paths): {recurse_seen} bytes live in the report, {recurse_truth} leaked",
        recursed.iter().filter(|n| **n > 0).count()
    );
    if leak_seen != leak_truth {
        failures.push(format!(
            "leak_request: {leak_seen} bytes reported, {leak_truth} leaked"
        ));
    }
    if recurse_seen != recurse_truth {
        failures.push(format!(
            "recurse: {recurse_seen} bytes reported, {recurse_truth} leaked"
        ));
    }
    let snapshots = std::fs::read_dir(dir.join("snapshots"))?.count();
    println!("snapshots kept: {snapshots} (--keep {keep})");
    if snapshots != keep {
        failures.push(format!("{snapshots} snapshots kept, --keep {keep}"));
    }
    // Memory: after the first quarter (tables built, caches warm), growth must stop.
    if let (Some(quarter), Some(last)) = (samples.get(samples.len() / 4), samples.last())
        && samples.len() >= 4
    {
        let grown = last.rss_bytes.saturating_sub(quarter.rss_bytes);
        let allowed = (quarter.rss_bytes / 10).max(8 << 20);
        println!(
            "leaktrace RSS: {:.1} MiB at {:.0} s, {:.1} MiB at {:.0} s (+{:.1} MiB)",
            mib(quarter.rss_bytes),
            quarter.at_s,
            mib(last.rss_bytes),
            last.at_s,
            mib(grown)
        );
        if grown > allowed {
            failures.push(format!(
                "leaktrace's RSS grew {:.1} MiB after the first quarter (allowed {:.1})",
                mib(grown),
                mib(allowed)
            ));
        }
        let per_event = |a: &Sample, b: &Sample| {
            (b.cpu_s - a.cpu_s) * 1e6 / b.events.saturating_sub(a.events).max(1) as f64
        };
        let early = per_event(&samples[0], quarter);
        let late = per_event(&samples[samples.len() * 3 / 4], last);
        println!(
            "leaktrace CPU per event: {early:.2} us in the first quarter, {late:.2} us in the last"
        );
        if late > early * 1.5 + 0.2 {
            failures.push(format!(
                "CPU per event crept from {early:.2} us to {late:.2} us"
            ));
        }
    }
    if failures.is_empty() {
        println!("soak: passed");
        Ok(())
    } else {
        bail!("soak failed: {}", failures.join("; "))
    }
}
