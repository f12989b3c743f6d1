//! Service mode: `--follow-name` traces a service across a restart, sampling by default, with
//! one metrics endpoint throughout.
use std::{net::SocketAddr, time::Duration};

use super::*;

/// A copy of the C fixture under a name of its own, as a service's binary.
fn service_binary(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let name = format!("svc-{}", std::process::id());
    let path = dir.join(&name);
    std::fs::copy(fixture(Build::CFramePointers), &path).unwrap();
    (path, name)
}

/// Live bytes of the row allocating in `function`, and the export's sampling mean.
fn leak_in(export: &Value, function: &str) -> (u64, u64) {
    (
        num(stack_from(export, function), "live_bytes"),
        num(export, "sample_bytes"),
    )
}

#[test]
fn follow_name_reattaches_when_the_service_restarts_and_samples_by_default() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (binary, name) = service_binary(dir.path());
    let mut first = Fixture::start(&binary);
    let tracer = Tracer::start(&["--follow-name", &name, "--metrics", "127.0.0.1:0"]);
    let said = tracer.stderr();
    assert!(
        said.contains(&format!(
            "following a process named {name}: pid {}",
            first.pid
        )),
        "{said}"
    );
    let metrics: SocketAddr = said
        .lines()
        .find_map(|l| l.strip_prefix("leaktrace: metrics at http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address: {said}"))
        .parse()
        .unwrap();

    // 64 blocks of 512 KiB: sampled one per 512 KiB on average, about 40 samples, so the
    // estimate is within 40 % (four standard deviations)
    let leaked = 64 * 524_288u64;
    let close = |estimate: u64| {
        let ratio = estimate as f64 / leaked as f64;
        (0.6..1.4).contains(&ratio)
    };
    first.cmd("leak 64 524288");
    tracer.wait_for_next_status();
    tracer.wait_for_next_status();
    first.exit();
    tracer.wait_for_stderr("stopped (target exited", Duration::from_secs(10));
    tracer.wait_for_stderr(
        &format!("waiting for a process named {name}"),
        Duration::from_secs(10),
    );
    let export: Value =
        serde_json::from_str(&std::fs::read_to_string(tracer.export_path()).unwrap()).unwrap();
    assert_eq!(num(&export, "pid"), u64::from(first.pid));
    let (bytes, mean) = leak_in(&export, "alloc_buffer");
    assert_eq!(mean, 524_288, "service mode samples by default");
    assert!(close(bytes), "estimate {bytes} for {leaked}");

    // The service starts again: the new process is traced, on the same endpoint
    let mut second = Fixture::start(&binary);
    tracer.wait_for_stderr(
        &format!("tracing pid {} ", second.pid),
        Duration::from_secs(20),
    );
    second.cmd("leak 64 524288");
    tracer.wait_for_next_status();
    tracer.wait_for_next_status();
    let (status, text) = {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(metrics).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        (response.lines().next().unwrap_or("").to_owned(), response)
    };
    assert!(status.contains("200"), "{status}");
    assert!(
        text.contains(&format!("pid=\"{}\"", second.pid)),
        "the endpoint describes the new process:\n{text}"
    );
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_eq!(num(&report, "pid"), u64::from(second.pid));
    let (bytes, _) = leak_in(&report, "alloc_buffer");
    assert!(close(bytes), "estimate {bytes} for {leaked}");
    assert_no_programs_left("after service mode");
    second.cmd("churn 10");
    assert!(second.is_running());
}

#[test]
fn service_mode_waits_for_its_process_and_stops_on_ctrl_c() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("service.pid");
    let export = dir.path().join("out.json");
    let leaktrace = std::process::Command::new(leaktrace_tests::leaktrace_bin())
        .args(["--pid-file", pid_file.to_str().unwrap(), "--export"])
        .arg(&export)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: sends SIGINT to the child just spawned.
    unsafe { libc::kill(leaktrace.id() as i32, libc::SIGINT) };
    let out = leaktrace.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "waiting for the process in {}",
            pid_file.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("stopped while waiting"), "{stderr}");
    // Bad input still fails at once, before any waiting
    let (status, _, stderr) = run_leaktrace(&["--follow-name", "x", "-p", "1"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
}
