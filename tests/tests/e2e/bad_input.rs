//! Bad input: one line, a hint, exit code 2, nothing attached.
use super::*;

fn assert_usage_error(args: &[&str], needle: &str) {
    let (status, _, stderr) = run_leaktrace(args);
    assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(stderr.contains("hint:"), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert_no_programs_left(&format!("{args:?}"));
}

#[test]
fn bad_arguments() {
    require_root();
    assert_usage_error(&[], "nothing to trace");
    assert_usage_error(&["-p", "abc"], "abc");
    assert_usage_error(&["-p", "1", "--duration", "-2"], "-2");
    assert_usage_error(&["-p", "1", "--duration", "soon"], "soon");
    assert_usage_error(&["-p", "1", "--format", "xml"], "xml");
    assert_usage_error(&["--bogus"], "bogus");
}

#[test]
fn bad_targets() {
    require_root();
    assert_usage_error(&["-p", "3999999"], "no process with pid 3999999");
    assert_usage_error(&["-p", "2"], "kernel thread");
    assert_usage_error(&["--", "/nonexistent/program"], "command not found");
}

#[test]
fn unwritable_export_path_is_refused_before_attaching() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::CFramePointers));
    let pid = target.pid.to_string();
    assert_usage_error(
        &["-p", &pid, "--export", "/nonexistent-dir/x.json"],
        "cannot write export file",
    );
    assert_usage_error(&["-p", &pid, "--export", "/tmp"], "is a directory");
    target.cmd("churn 100");
}

#[test]
fn unprivileged_user_is_refused() {
    require_root();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(leaktrace_tests::leaktrace_bin())
        .args(["-p", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not permitted") && stderr.contains("sudo"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
