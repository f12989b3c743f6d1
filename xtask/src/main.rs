//! `cargo xtask`: set-up, build, run, test and benchmark leaktrace.
//!
//! Every task first installs what is missing (the nightly `rust-src` component, bpf-linker
//! built against the nightly's own LLVM, and the Debian packages the tests and benchmark use),
//! so the two README commands work on a fresh machine.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod dist;
mod kernel;
mod scale;
mod soak;
mod tools;

use tools::{Install, Need};

#[derive(Parser)]
#[command(name = "xtask", about = "leaktrace's development tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces, and every command the tests and the benchmark run.
    Setup,
    /// Build leaktrace (release), then run it as root with these arguments; with none, trace the
    /// bundled demo service.
    Run {
        /// Arguments for leaktrace, e.g. `-- -p 1234`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run every check and test: formatting, clippy, unit tests and end-to-end eBPF tests (root).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Instead, boot this kernel under qemu and run end-to-end tests in it: `debian`
        /// (Debian 12's stock 6.1, fetched and unpacked, not installed), `ubuntu-22.04`
        /// (Ubuntu's 5.15, from Ubuntu's archive), `debian-sid` (Debian's newest, preemptible),
        /// `debian-13` (Debian 13's 6.12, where the unwinder loads static), or the `vmlinuz-VERSION` of an unpacked kernel package. With a filter, the tests it
        /// names; else a subset (attach, launch, exact figures, unwinding, sampling, the live
        /// view, detach; on 5.15 what a kernel without bpf_loop runs; on the newest, threads
        /// preempted in the programs). LEAKTRACE_BIN tests another build.
        #[arg(long, value_name = "debian|debian-13|debian-sid|ubuntu-22.04|PATH")]
        kernel: Option<String>,
    },
    /// Build what a production host installs, into target/dist: a static x86_64 binary (musl,
    /// the eBPF object embedded and checked reproducible) and a Debian package with the man
    /// page, shell completions and a systemd unit template.
    Dist,
    /// Lint the workspace and the eBPF crate with clippy, warnings denied.
    Clippy,
    /// Run leaktrace for a long time on a churning, slowly leaking target with snapshots on,
    /// printing its own memory and CPU over time; fails if either creeps or a figure is wrong.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
    },
    /// Feed corrupted and truncated ELF files to the parsers leaktrace runs on a target's files,
    /// for longer than `cargo xtask test` does (batches of 20,000 cases per property, each
    /// from a fresh random seed, until the time is up).
    Fuzz {
        /// How long to run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Measure the cost of tracing: untraced vs leaktrace (vs bcc memleak when installed).
    Bench {
        /// Repetitions of each configuration (interleaved).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// malloc+free pairs per thread per run.
        #[arg(long, default_value_t = 50_000)]
        ops: u64,
        /// Instead, run the bench inside this kernel under qemu (TCG: every instruction is
        /// emulated, so only ratios within that run mean anything), without peer rows:
        /// `debian`, `debian-13`, `debian-sid`, `ubuntu-22.04` or PATH, as for `test --kernel`.
        #[arg(long, value_name = "debian|debian-13|debian-sid|ubuntu-22.04|PATH")]
        kernel: Option<String>,
    },
    /// The bench's many-stacks part alone (10,000 and 100,000 call paths, headless and in the
    /// live view).
    #[command(hide = true)]
    BenchStacks,
    /// The bench's breakdown alone: time in each program per malloc+free pair (with
    /// kernel.bpf_stats_enabled) by unwinding mode and stack depth, and with each phase of an
    /// event left out in turn.
    BenchPrograms {
        /// malloc+free pairs per thread per run.
        #[arg(long, default_value_t = 50_000)]
        ops: u64,
    },
    /// Two builds of leaktrace against each other: untraced, the floor, and full tracing in
    /// both unwinding modes with each build, interleaved run by run, medians (for changes
    /// smaller than the machine's noise between separate bench runs).
    BenchAb {
        /// The first build's binary.
        a: PathBuf,
        /// The second build's binary.
        b: PathBuf,
        /// Repetitions of each configuration.
        #[arg(long, default_value_t = 7)]
        reps: usize,
        /// malloc+free pairs per thread per run.
        #[arg(long, default_value_t = 50_000)]
        ops: u64,
        /// The held-out-like mix instead of the malloc+free pairs.
        #[arg(long)]
        mix: bool,
    },
    /// The bench's measurements alone, with nothing installed or built (run inside a kernel
    /// booted by `bench --kernel`).
    #[command(hide = true)]
    BenchInside {
        /// Repetitions of each configuration.
        #[arg(long)]
        reps: usize,
        /// malloc+free pairs per thread per run.
        #[arg(long)]
        ops: u64,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.task {
        Task::Setup => setup(Need::Bench),
        Task::Run { args } => run(&args),
        Task::Test {
            filter,
            kernel: Some(kernel),
        } => {
            setup(Need::Test)?;
            if !is_root() {
                bail!("the end-to-end tests load eBPF programs: run `sudo -E cargo xtask test`");
            }
            // LEAKTRACE_BIN: another build under test (an older one, to see a test fail).
            let leaktrace = match std::env::var_os("LEAKTRACE_BIN") {
                Some(path) => PathBuf::from(path),
                None => build_release()?,
            };
            kernel_test(&leaktrace, &kernel, filter.as_slice())
        }
        Task::Test {
            filter,
            kernel: None,
        } => test(filter.as_deref()),
        Task::Dist => {
            setup(Need::Test)?;
            dist::build(&workspace()).map(|_| ())
        }
        Task::Clippy => {
            setup(Need::Test)?;
            clippy()
        }
        Task::Soak { minutes } => {
            setup(Need::Test)?;
            // LEAKTRACE_BIN: another build (the static one `cargo xtask test` soaks).
            let leaktrace = match std::env::var_os("LEAKTRACE_BIN") {
                Some(path) => PathBuf::from(path),
                None => build_release()?,
            };
            soak(&leaktrace, Duration::from_secs_f64(minutes.max(0.1) * 60.0))
        }
        Task::Fuzz { minutes } => {
            setup(Need::Test)?;
            fuzz(Duration::from_secs_f64(minutes.max(0.0) * 60.0))
        }
        Task::Bench { reps, ops, kernel } => {
            setup(Need::Bench)?;
            build_release()?;
            match kernel {
                Some(kernel) => kernel::bench(&workspace(), &kernel, reps, ops),
                None => bench::run(&workspace(), reps, ops, bench::Peers::Run),
            }
        }
        Task::BenchStacks => {
            setup(Need::Bench)?;
            let leaktrace = build_release()?;
            scale::run(&workspace(), &leaktrace)
        }
        Task::BenchPrograms { ops } => {
            setup(Need::Bench)?;
            build_release()?;
            bench::programs(&workspace(), ops)
        }
        Task::BenchAb {
            a,
            b,
            reps,
            ops,
            mix,
        } => {
            setup(Need::Bench)?;
            bench::ab(&workspace(), &a, &b, reps, ops, mix)
        }
        Task::BenchInside { reps, ops } => bench::run(&workspace(), reps, ops, bench::Peers::Skip),
    }
}

/// Runs the hostile-file properties in batches until `duration` has passed (at least one).
fn fuzz(duration: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    let mut batches = 0;
    loop {
        run_cmd(
            cargo()
                .args([
                    "test",
                    "--release",
                    "-p",
                    "leaktrace",
                    "--test",
                    "hostile_files",
                ])
                .env("PROPTEST_CASES", "20000"),
        )?;
        batches += 1;
        if start.elapsed() >= duration {
            break;
        }
    }
    eprintln!(
        "xtask: fuzz: {batches} batches of 20000 cases per property in {:.0} s, no failure",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the soak for `duration`, with about 20 samples.
fn soak(leaktrace: &Path, duration: Duration) -> Result<()> {
    let every = (duration / 20).max(Duration::from_secs(2));
    soak::run(&workspace(), leaktrace, duration, every)
}

/// The workspace root.
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command, failing with its description when it fails.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", describe(cmd));
    let start = std::time::Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    // Where CI's 30 minutes go.
    eprintln!(
        "xtask: {:.0} s: {}",
        start.elapsed().as_secs_f64(),
        describe(cmd)
    );
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            describe(cmd),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// Installs whatever `need` calls for that is missing (see [`tools::TOOLS`]), then checks it
/// is all there.
fn setup(need: Need) -> Result<()> {
    // The eBPF crate builds core from source with nightly.
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context(
        "leaktrace's eBPF programs need a nightly toolchain (rustup toolchain install nightly)",
    )?;
    if !components.lines().any(|c| c.starts_with("rust-src")) {
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // The shipped binary is static: musl's standard library for the stable toolchain.
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !targets.lines().any(|t| t.trim() == dist::TARGET) {
        run_cmd(Command::new("rustup").args(["target", "add", dist::TARGET]))?;
    }
    if !have("bpf-linker") && !cargo_bin("bpf-linker").is_file() {
        install_bpf_linker()?;
    }
    let missing: Vec<&tools::Tool> = tools::wanted(need).filter(|t| !tools::present(t)).collect();
    for tool in &missing {
        if let Install::Pip(_, requirement, _) = tool.install {
            run_cmd(Command::new("python3").args(["-m", "pip", "install", "-q", requirement]))?;
        }
    }
    let mut packages: Vec<&str> = missing
        .iter()
        .filter_map(|t| match t.install {
            Install::Apt(packages) | Install::AptFile(packages, _) => {
                Some(packages.split_whitespace())
            }
            _ => None,
        })
        .flatten()
        .collect();
    packages.sort_unstable();
    packages.dedup();
    apt_install(&packages)?;
    tools::check(need)
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

/// Builds bpf-linker from crates.io against the nightly toolchain's own libLLVM: a folder whose
/// `lib/` links to it under the names llvm-sys looks for.
fn install_bpf_linker() -> Result<()> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV shows no LLVM version")?
        .to_owned();
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(&format!("libLLVM.so.{llvm_major}")))
        .with_context(|| {
            format!(
                "no libLLVM.so.{llvm_major}* in {}",
                sysroot.join("lib").display()
            )
        })?;
    let prefix = workspace().join("target/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".to_owned(), lib.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&lib), &link)?;
    }
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix),
    )
}

/// Installs Debian packages.
fn apt_install(missing: &[&str]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing {}: install them (apt-get install {}) or run as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace());
    cmd
}

fn build_release() -> Result<PathBuf> {
    run_cmd(cargo().args(["build", "--release", "-p", "leaktrace"]))?;
    Ok(workspace().join("target/release/leaktrace"))
}

/// Builds the bundled demo service.
fn build_demo() -> Result<PathBuf> {
    let out = workspace().join("target/demo-service");
    run_cmd(
        Command::new("gcc")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&out)
            .arg(workspace().join("xtask/demo/demo_service.c")),
    )?;
    Ok(out)
}

fn run(args: &[OsString]) -> Result<()> {
    setup(Need::Test)?;
    let leaktrace = build_release()?;
    let mut args = args.to_vec();
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    if args.is_empty() {
        let demo = build_demo()?;
        eprintln!("xtask: no arguments: tracing the bundled demo service for 30 seconds");
        // A one-minute judging window, so the demo's leak is called a leak within its run.
        args = vec![
            "--window".into(),
            "60".into(),
            "--".into(),
            demo.into_os_string(),
        ];
    }
    let mut cmd = if is_root() {
        Command::new(&leaktrace)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&leaktrace);
        sudo
    };
    let status = cmd.args(&args).status().context("starting leaktrace")?;
    std::process::exit(status.code().unwrap_or(1));
}

fn clippy() -> Result<()> {
    // The workspace without the eBPF crate: its `user` features would otherwise be unified into
    // the eBPF build.
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--exclude",
        "tracer-ebpf",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate on its own target; panic=abort because eBPF has no unwinding.
    run_cmd(
        cargo()
            .args([
                "+nightly",
                "clippy",
                "-p",
                "tracer-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .env("CARGO_TARGET_DIR", workspace().join("target/ebpf-clippy")),
    )
}

fn test(filter: Option<&str>) -> Result<()> {
    setup(Need::Test)?;
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    clippy()?;
    // Unit tests (pure logic, no root needed).
    let mut unit = cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--exclude",
        "leaktrace-tests",
    ]);
    if let Some(filter) = filter {
        unit.arg(filter);
    }
    run_cmd(&mut unit)?;
    // End-to-end tests: real eBPF on real processes, as root. They fail without root.
    if !is_root() {
        bail!("the end-to-end tests load eBPF programs: run `sudo -E cargo xtask test`");
    }
    let mut e2e = cargo();
    e2e.args([
        "test",
        "--release",
        "-p",
        "leaktrace-tests",
        "--test",
        "e2e",
    ]);
    // The glibc build runs the tests (the static musl build passes them all too, but its
    // allocator makes the 40 MB attach test's start-up 10-30 % slower); what
    // a production host installs is tested by the `dist::` tests.
    let leaktrace = build_release()?;
    e2e.env("LEAKTRACE_BIN", &leaktrace);
    if filter.is_none_or(|f| "dist::".contains(f) || f.starts_with("dist::")) {
        let shipped = dist::build(&workspace())?;
        e2e.env("LEAKTRACE_STATIC", &shipped.binary)
            .env("LEAKTRACE_DEB", &shipped.deb);
    }
    e2e.arg("--");
    if let Some(filter) = filter {
        e2e.arg(filter);
    }
    // Tests that measure rates or lost events run alone so they do not compete for the 2 cores.
    e2e.args(["--test-threads", "1"]);
    run_cmd(&mut e2e)?;
    if filter.is_none() {
        // A short soak; `cargo xtask soak --minutes 60` is the long one.
        soak(&leaktrace, Duration::from_secs(40))?;
        // Kernels production hosts run: Debian 12's own (6.1), and Ubuntu 22.04's (5.15,
        // without bpf_loop).
        kernel_test(&leaktrace, "debian", &[])?;
        kernel_test(&leaktrace, "ubuntu-22.04", &[])?;
        // And the newest, preemptible, where unguarded programs faulted in the kernel.
        kernel_test(&leaktrace, "debian-sid", &[])?;
        // And Debian 13's 6.12, which refuses global calls with preemption disabled: the
        // unwinder's functions load static there.
        kernel_test(&leaktrace, "debian-13", &[])?;
    }
    Ok(())
}

/// Builds the end-to-end test binary and runs it (the tests `filters` name, else a subset)
/// inside kernel `which` under qemu.
fn kernel_test(leaktrace: &Path, which: &str, filters: &[String]) -> Result<()> {
    let built = output(cargo().args([
        "test",
        "--release",
        "-p",
        "leaktrace-tests",
        "--test",
        "e2e",
        "--no-run",
        "--message-format=json",
    ]))?;
    let e2e = built
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "e2e")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no e2e test binary")?;
    kernel::test(&workspace(), which, &e2e, leaktrace, filters)
}
