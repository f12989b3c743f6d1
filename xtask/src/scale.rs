//! The bench's many-stacks part: a program with 10,000 and 100,000 distinct allocating call
//! paths, traced once headless and once with the live view in tmux driven by keys (filter,
//! group, sort). It prints, for each: events lost, rows, leaktrace's own memory (and so its
//! memory per stack), and the view's slowest update (every stack filtered, grouped and sorted
//! again), frame and key (read to answer drawn), and the session's slowest build of the view's
//! report (on the ingestion thread), which leaktrace measures itself and writes into the
//! export's diagnostics.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

/// Kernel stack map size for these runs: room for 100,000 paths and the program's others.
const MAX_STACKS: &str = "131072";

/// One traced run's figures, from its export.
struct Figures {
    rows: u64,
    lost: u64,
    stack_map_full: u64,
    tracer_bytes: u64,
    slowest_update_us: Option<u64>,
    slowest_frame_us: Option<u64>,
    slowest_key_us: Option<u64>,
    /// The longest the session took to build the view's report of every row (on the
    /// ingestion thread).
    slowest_report_us: Option<u64>,
}

/// The fixture, driven through its stdin.
struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Target {
    fn start(binary: &Path) -> Result<Self> {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let pid = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("the fixture said {line:?}"))?;
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
        })
    }

    fn cmd(&mut self, cmd: &str) -> Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if !line.starts_with("ok") {
            bail!("the fixture answered {cmd:?} with {line:?}");
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

/// Runs the many-stacks part and prints its table.
pub(crate) fn run(workspace: &Path, leaktrace: &Path) -> Result<()> {
    let fixture = workspace.join("target/bench-paths");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-o"])
            .arg(&fixture)
            .arg(workspace.join("tests/fixtures/leaky.c"))
            .arg("-ldl"),
    )?;
    println!();
    println!(
        "many distinct stacks (one 64-byte block through each call path), live view driven in tmux:"
    );
    println!(
        "{:>8} {:<10} {:>8} {:>6} {:>11} {:>14} {:>14} {:>12} {:>12} {:>12} {:>12}",
        "paths",
        "view",
        "rows",
        "lost",
        "map full",
        "tracer memory",
        "per stack",
        "update ms",
        "frame ms",
        "key ms",
        "report ms"
    );
    // Per mode (headless, live view), the smaller run's rows and memory.
    let mut smaller: [Option<(u64, u64)>; 2] = [None, None];
    for (paths, levels) in [(10_000u64, 14u32), (100_000, 17)] {
        for view in [false, true] {
            let figures = traced(leaktrace, &fixture, paths, levels, view)?;
            let baseline = &mut smaller[usize::from(view)];
            // Memory per stack: the growth from the smaller run to this one, per stack more.
            let per_stack = match *baseline {
                Some((rows, bytes)) if figures.rows > rows => {
                    let more = figures.rows - rows;
                    format!(
                        "{:.1} KiB",
                        figures.tracer_bytes.saturating_sub(bytes) as f64 / more as f64 / 1024.0
                    )
                }
                _ => String::new(),
            };
            if baseline.is_none() {
                *baseline = Some((figures.rows, figures.tracer_bytes));
            }
            let ms = |us: Option<u64>| {
                us.map_or_else(String::new, |us| format!("{:.1}", us as f64 / 1000.0))
            };
            println!(
                "{:>8} {:<10} {:>8} {:>6} {:>11} {:>10.1} MiB {:>14} {:>12} {:>12} {:>12} {:>12}",
                paths,
                if view { "live view" } else { "headless" },
                figures.rows,
                figures.lost,
                figures.stack_map_full,
                figures.tracer_bytes as f64 / f64::from(1u32 << 20),
                per_stack,
                ms(figures.slowest_update_us),
                ms(figures.slowest_frame_us),
                ms(figures.slowest_key_us),
                ms(figures.slowest_report_us),
            );
        }
    }
    Ok(())
}

/// Traces `paths` distinct paths once, headless or with the live view in tmux.
fn traced(
    leaktrace: &Path,
    fixture: &Path,
    paths: u64,
    levels: u32,
    view: bool,
) -> Result<Figures> {
    let dir = std::env::temp_dir().join(format!("leaktrace-scale-{}-{paths}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let export = dir.join("out.json");
    let mut target = Target::start(fixture)?;
    let pid = target.pid.to_string();
    let args = [
        "-p",
        pid.as_str(),
        "--max-stacks",
        MAX_STACKS,
        "--export",
        export.to_str().context("a non-UTF-8 temporary path")?,
    ];
    let workload = format!("paths {levels} 64 {paths}");
    if view {
        let session = format!("leaktrace-scale-{paths}");
        let tmux = Tmux::start(&session, leaktrace, &args, &dir)?;
        tmux.wait_for("the live view", Duration::from_secs(60), |s| {
            s.contains(" stacks")
        })?;
        target.cmd(&workload)?;
        tmux.wait_for("every path in the title", Duration::from_secs(120), |s| {
            title_count(s).is_some_and(|n| n >= paths)
        })?;
        // A filter for a path below every other (typed key by key: each one filters every
        // stack again), cleared; every grouping; every order.
        target.cmd("rare 8")?;
        for key in [
            "/", "r", "a", "r", "e", "Enter", "Escape", "g", "g", "g", "g",
        ] {
            tmux.keys(&[key])?;
        }
        for _ in 0..5 {
            tmux.keys(&["s"])?;
        }
        tmux.keys(&["PageDown", "PageDown", "End", "Home", "q"])?;
        wait_for_file(&dir.join("exit"), Duration::from_secs(60))?;
    } else {
        let mut child = Command::new(leaktrace)
            .arg("--no-tui")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stderr = BufReader::new(child.stderr.take().context("no stderr")?);
        let mut line = String::new();
        while !line.contains("tracing pid") {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("leaktrace ended before attaching");
            }
        }
        // Drained in the background so leaktrace never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        target.cmd(&workload)?;
        target.cmd("rare 8")?;
        // Two intervals for every stack to be read and given its row.
        std::thread::sleep(Duration::from_secs(3));
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait()?;
        if !status.success() {
            bail!("leaktrace (headless) failed: {status}");
        }
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&export)
            .with_context(|| format!("reading {}", export.display()))?,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    let diag = &report["diagnostics"];
    let get = |v: &serde_json::Value, name: &str| v[name].as_u64();
    Ok(Figures {
        rows: report["stacks"].as_array().map_or(0, |s| s.len() as u64),
        lost: get(&report["totals"], "lost_events").unwrap_or(0),
        stack_map_full: get(diag, "stack_map_full").unwrap_or(0),
        tracer_bytes: get(diag, "tracer_memory_bytes").unwrap_or(0),
        slowest_update_us: get(diag, "view_slowest_update_us"),
        slowest_frame_us: get(diag, "view_slowest_frame_us"),
        slowest_key_us: get(diag, "view_slowest_key_us"),
        slowest_report_us: get(diag, "view_report_slowest_us"),
    })
}

/// The row count at the start of the live view's table title (`100,004 stacks · 1–40 ...`).
fn title_count(screen: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.contains(" stacks · "))?;
    let before = line.split(" stacks · ").next()?;
    let digits: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// leaktrace's live view in a detached tmux session.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, leaktrace: &Path, args: &[&str], dir: &Path) -> Result<Self> {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", name])
            .output();
        let command = format!(
            "{} {}; echo $? > {}",
            leaktrace.display(),
            args.join(" "),
            dir.join("exit").display()
        );
        run_cmd(Command::new("tmux").args([
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "160",
            "-y",
            "48",
            &command,
        ]))?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    fn screen(&self) -> String {
        Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("the live view never showed {what}:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends keys one at a time, a quarter second apart (a person's pace).
    fn keys(&self, keys: &[&str]) -> Result<()> {
        for key in keys {
            let status = Command::new("tmux")
                .args(["send-keys", "-t", &self.name, key])
                .status()?;
            if !status.success() {
                bail!("tmux send-keys {key} failed");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .output();
    }
}

fn wait_for_file(path: &PathBuf, timeout: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return Ok(text);
        }
        if start.elapsed() > timeout {
            bail!("{} never appeared", path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
