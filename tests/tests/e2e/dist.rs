//! What a production host installs (`cargo xtask dist`): the Debian package, installed with
//! dpkg, traced with and removed; and the static binary, run alone.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::*;

/// An artifact `cargo xtask test` built and named in `var`.
fn artifact(var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run these tests through `cargo xtask test`"));
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// Runs `program args`, returning (success, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Files and directories whose name mentions leaktrace in the places a package installs to.
fn leaktrace_paths() -> Vec<String> {
    let (_, found, _) = run(
        "find",
        &[
            "/usr/bin",
            "/usr/share/man",
            "/usr/share/doc",
            "/usr/share/bash-completion",
            "/usr/share/zsh",
            "/usr/share/fish",
            "/lib/systemd/system",
            "/etc",
            "/var/lib/leaktrace",
            "-name",
            "*leaktrace*",
        ],
    );
    found.lines().map(str::to_owned).collect()
}

/// Traces the fixture's known leak through `leaktrace` and checks its exact figure.
fn traces_a_leak_exactly(leaktrace: Command) {
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let tracer = Tracer::start_command(leaktrace, "out.json", &["-p", &target.pid.to_string()]);
    target.cmd("leak 9 4096");
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_clean(&report);
    assert_stack(
        &report,
        "alloc_buffer",
        9 * 4096,
        9,
        &[
            "alloc_buffer",
            "parse_header",
            "leak_request",
            "run",
            "main",
        ],
    );
}

#[test]
fn the_package_installs_traces_exactly_and_leaves_nothing_when_purged() {
    require_root();
    let deb = artifact("LEAKTRACE_DEB");
    let (installed, _, _) = run("dpkg", &["-s", "leaktrace"]);
    assert!(
        !installed,
        "a leaktrace package is already installed here: remove it (dpkg --purge leaktrace) first"
    );
    let before = leaktrace_paths();
    let (ok, _, err) = run("dpkg", &["-i", deb.to_str().unwrap()]);
    // Purged at the end whatever happens in between.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "leaktrace"]).output();
        }
    }
    let purge = Purge;
    assert!(ok, "dpkg -i failed: {err}");

    // Exactly the files it should install, and nothing else.
    let (_, listed, _) = run("dpkg", &["-L", "leaktrace"]);
    let mut files: Vec<&str> = listed
        .lines()
        .filter(|path| Path::new(path).is_file())
        .collect();
    files.sort_unstable();
    assert_eq!(
        files,
        [
            "/lib/systemd/system/leaktrace@.service",
            "/usr/bin/leaktrace",
            "/usr/share/bash-completion/completions/leaktrace",
            "/usr/share/doc/leaktrace/copyright",
            "/usr/share/fish/vendor_completions.d/leaktrace.fish",
            "/usr/share/man/man1/leaktrace.1.gz",
            "/usr/share/zsh/vendor-completions/_leaktrace",
        ]
    );

    // The installed command is this build, names its commit and eBPF object, and has a man
    // page and completions that work.
    let (ok, version, _) = run("/usr/bin/leaktrace", &["--version"]);
    assert!(ok);
    let (_, ours, _) = run(
        leaktrace_tests::leaktrace_bin().to_str().unwrap(),
        &["--version"],
    );
    assert_eq!(version, ours, "the package holds another build");
    let (_, commit, _) = run(
        "git",
        &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"],
    );
    let short = commit.trim().get(..12).unwrap();
    assert!(version.contains(&format!("commit {short}")), "{version}");
    assert!(version.contains("eBPF object "), "{version}");
    let (ok, page, err) = run("man", &["-P", "cat", "leaktrace"]);
    assert!(
        ok && page.contains("--sample-bytes"),
        "man leaktrace: {err}"
    );
    let (ok, complete, err) = run(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/leaktrace && complete -p leaktrace",
        ],
    );
    assert!(ok && complete.contains("leaktrace"), "{complete}{err}");
    // The unit template checks out against a real service here (redis-server's).
    let unit_dir = tempfile::tempdir().unwrap();
    let unit = unit_dir.path().join("leaktrace@redis-server.service");
    std::fs::copy("/lib/systemd/system/leaktrace@.service", &unit).unwrap();
    let (ok, _, err) = run(
        "systemd-analyze",
        &["verify", "--man=no", unit.to_str().unwrap()],
    );
    assert!(ok && err.trim().is_empty(), "systemd-analyze verify: {err}");

    traces_a_leak_exactly(Command::new("/usr/bin/leaktrace"));

    drop(purge);
    let (installed, _, _) = run("dpkg", &["-s", "leaktrace"]);
    assert!(!installed, "still installed after dpkg --purge");
    for file in files {
        assert!(!Path::new(file).exists(), "{file} left behind");
    }
    assert_eq!(leaktrace_paths(), before, "files left behind");
}

#[test]
fn the_static_binary_runs_alone_with_no_environment() {
    require_root();
    let binary = artifact("LEAKTRACE_STATIC");
    let (_, headers, _) = run("readelf", &["-lW", binary.to_str().unwrap()]);
    assert!(
        !headers.contains("INTERP"),
        "asks for a program interpreter"
    );
    let (_, dynamic, _) = run("readelf", &["-dW", binary.to_str().unwrap()]);
    assert!(!dynamic.contains("(NEEDED)"), "needs shared libraries");
    // Alone in a directory, with an empty environment.
    let alone = tempfile::tempdir().unwrap();
    let copy = alone.path().join("leaktrace");
    std::fs::copy(&binary, &copy).unwrap();
    let mut leaktrace = Command::new(&copy);
    leaktrace.current_dir(alone.path()).env_clear();
    traces_a_leak_exactly(leaktrace);
    let left: Vec<_> = std::fs::read_dir(alone.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["leaktrace"], "it wrote beside itself");
}
