//! Several processes at once: pids given together, and a pre-fork server's workers followed
//! with `--children` (those forked before leaktrace attached and those forked after). Each
//! process's rows are exact and say its pid.
use super::*;

/// The rows whose allocating function is `first`, as `(pid, live bytes, live blocks)`, sorted.
fn by_pid(report: &Value, first: &str) -> Vec<(u64, u64, u64)> {
    let mut rows: Vec<(u64, u64, u64)> = stacks_from(report, first)
        .iter()
        .map(|s| (num(s, "pid"), num(s, "live_bytes"), num(s, "live_allocs")))
        .collect();
    rows.sort_unstable();
    rows
}

#[test]
fn several_pids_are_traced_at_once_each_row_saying_its_pid() {
    require_root();
    let mut a = Fixture::start(&fixture(Build::CFramePointers));
    let mut b = Fixture::start(&fixture(Build::COmitFramePointer));
    let b_pid = b.pid.to_string();
    let tracer = Tracer::attach(a.pid, &["-p", &b_pid]);
    tracer.wait_for_stderr(&format!("tracing pid {b_pid}"), Duration::from_secs(20));
    a.cmd("leak 3 100");
    b.cmd("leak 5 200");
    b.cmd("churn 1000");
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_clean(&report);
    let (a_pid, b_pid) = (u64::from(a.pid), u64::from(b.pid));
    let mut want = vec![(a_pid, 300, 3), (b_pid, 1000, 5)];
    want.sort_unstable();
    assert_eq!(by_pid(&report, "alloc_buffer"), want);
    let pids: Vec<u64> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| num(p, "pid"))
        .collect();
    assert_eq!(pids, [a_pid, b_pid]);
    assert!(
        done.stdout.contains(&format!("in pid {b_pid}")),
        "{}",
        done.stdout
    );
}

#[test]
fn a_pre_fork_servers_workers_are_followed_with_children() {
    require_root();
    let mut server = Fixture::start(&fixture(Build::CFramePointers));
    // One worker forked before leaktrace attaches, two after.
    let early: Vec<u32> = server
        .cmd("workers 1 3 256")
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let tracer = Tracer::attach(server.pid, &["--children", "--interval", "0.2"]);
    let late: Vec<u32> = server
        .cmd("workers 2 4 512")
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let leaky = fixture(Build::CFramePointers);
    for worker in early.iter().chain(&late) {
        tracer.wait_for_stderr(
            &format!(
                "tracing pid {worker} ({}), a child of {}",
                leaky.display(),
                server.pid
            ),
            Duration::from_secs(30),
        );
    }
    server.cmd("leak 2 100");
    for worker in early.iter().chain(&late) {
        // SAFETY: signals a child of the fixture, which asked for it.
        assert_eq!(unsafe { libc::kill(*worker as i32, libc::SIGUSR1) }, 0);
        assert_eq!(server.reply(), format!("leaked {worker}"));
    }
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_clean(&report);
    let mut want: Vec<(u64, u64, u64)> = early
        .iter()
        .map(|w| (u64::from(*w), 3 * 256, 3))
        .chain(late.iter().map(|w| (u64::from(*w), 4 * 512, 4)))
        .collect();
    want.sort_unstable();
    assert_eq!(by_pid(&report, "worker_leak"), want, "{report:#}");
    assert_eq!(
        by_pid(&report, "alloc_buffer"),
        [(u64::from(server.pid), 200, 2)]
    );
    let parents: Vec<Option<u64>> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["parent"].as_u64())
        .collect();
    assert_eq!(parents.len(), 4);
    assert_eq!(parents[0], None);
    assert!(
        parents[1..]
            .iter()
            .all(|p| *p == Some(u64::from(server.pid)))
    );
}

#[test]
fn the_trace_goes_on_until_every_traced_process_has_exited() {
    require_root();
    let mut a = Fixture::start(&fixture(Build::CFramePointers));
    let mut b = Fixture::start(&fixture(Build::CFramePointers));
    let b_pid = b.pid.to_string();
    let mut tracer = Tracer::attach(a.pid, &["-p", &b_pid, "--interval", "0.2"]);
    tracer.wait_for_stderr(&format!("tracing pid {b_pid}"), Duration::from_secs(20));
    a.cmd("leak 1 100");
    assert!(a.exit().success());
    // The target is gone; the other process is still traced.
    std::thread::sleep(Duration::from_millis(800));
    assert!(tracer.is_running(), "{}", tracer.stderr());
    b.cmd("leak 2 300");
    assert!(b.exit().success());
    let done = tracer.wait();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("stopped (target exited with status 0)"),
        "{}",
        done.stderr
    );
    let report = done.report.unwrap();
    assert_eq!(
        by_pid(&report, "alloc_buffer"),
        [(u64::from(a.pid), 100, 1), (u64::from(b.pid), 600, 2)]
    );
}
