//! What leaktrace does as root on a host it shares: a launched program runs as the user who
//! ran sudo, exports are private and never written through a planted link, and pid namespaces
//! are told apart.
use std::{os::unix::fs::MetadataExt as _, process::Command};

use super::*;

fn leaktrace() -> Command {
    Command::new(leaktrace_tests::leaktrace_bin())
}

#[test]
fn under_sudo_a_launched_program_runs_as_the_user_and_the_export_is_theirs() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("heap.json");
    let nobody = "65534";
    let run = |extra: &[&str]| {
        let out = leaktrace()
            .env("SUDO_UID", nobody)
            .env("SUDO_GID", nobody)
            .args(["--no-tui", "--export"])
            .arg(&export)
            .args(extra)
            .args(["--", "/usr/bin/id", "-u"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (stdout, stderr) = run(&[]);
    assert!(stdout.lines().any(|l| l == nobody), "{stdout}");
    assert!(
        stderr.contains("running the command as nobody (uid 65534)"),
        "{stderr}"
    );
    let meta = std::fs::metadata(&export).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65534, 0o600)
    );
    let (stdout, _) = run(&["--as-root"]);
    assert!(stdout.lines().any(|l| l == "0"), "{stdout}");
}

#[test]
fn an_export_path_planted_as_a_link_is_refused() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let planted = dir.path().join("heap.json");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let out = leaktrace()
        .args([
            "--no-tui",
            "--duration",
            "1",
            "-p",
            &target.pid.to_string(),
            "--export",
        ])
        .arg(&planted)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    target.cmd("leak 1 10");
}

#[test]
fn leaktrace_in_a_pid_namespace_of_its_own_refuses_with_one_line() {
    require_root();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(leaktrace_tests::leaktrace_bin())
        .args(["--no-tui", "-p", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("pid namespace of its own"), "{stderr}");
    assert!(stderr.contains("--pid=host"), "{stderr}");
}

#[test]
fn a_target_in_a_containers_pid_namespace_is_traced_exactly() {
    require_root();
    let mut target = Fixture::start_in_pid_namespace(&fixture(Build::CFramePointers));
    let tracer = Tracer::attach(target.pid, &[]);
    target.cmd("leak 4 250");
    target.cmd("churn 5000");
    let report = tracer.interrupt().report.unwrap();
    assert_clean(&report);
    assert_stack(
        &report,
        "alloc_buffer",
        1000,
        4,
        &["alloc_buffer", "parse_header", "leak_request"],
    );
}
