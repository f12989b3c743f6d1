//! Real daemons under load: leaktrace attached and detached 20 times while a client sets and
//! gets keys and checks every reply. Nothing may break: no wrong reply, no crash, no probe byte
//! left in the daemon's code, no program left loaded. The client's latency with and without
//! leaktrace attached is printed.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use leaktrace_tests::{
    assert_programs_released, code_changed_in_memory,
    daemon::{Daemon, Kind},
};

use super::*;

/// What the client saw.
#[derive(Default)]
struct Seen {
    ops: u64,
    wrong: Vec<String>,
    /// Microseconds per set+get pair, while traced and while not.
    traced_us: Vec<u64>,
    untraced_us: Vec<u64>,
}

fn percentile(values: &mut [u64], p: f64) -> u64 {
    values.sort_unstable();
    values
        .get(((values.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(0)
}

fn attach_detach_cycles(kind: Kind, allocator: &str) {
    require_root();
    let mut daemon = Daemon::start(kind);
    let pid = daemon.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let traced = Arc::new(AtomicBool::new(false));
    let client = {
        let mut conn = daemon.client();
        let (stop, traced) = (Arc::clone(&stop), Arc::clone(&traced));
        std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // New keys for the first 200,000 operations: the daemon's memory grows.
                let key = format!("key:{}", i % 200_000);
                let value = format!("{i}:").repeat(1 + (i % 97) as usize).into_bytes();
                let under = traced.load(Ordering::Relaxed);
                let began = Instant::now();
                match (conn.set(&key, &value), conn.get(&key)) {
                    (Ok(true), Ok(Some(got))) if got == value => {}
                    other => seen.wrong.push(format!("op {i} on {key}: {other:?}")),
                }
                let us = began.elapsed().as_micros() as u64;
                if under == traced.load(Ordering::Relaxed) {
                    if under {
                        seen.traced_us.push(us);
                    } else {
                        seen.untraced_us.push(us);
                    }
                }
                seen.ops += 1;
                i += 1;
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut traced_allocs = 0;
    for cycle in 0..20 {
        // Every other cycle samples (a uprobe session where the kernel has them).
        let args: &[&str] = if cycle % 2 == 0 {
            &[]
        } else {
            &["--sample-bytes", "4096"]
        };
        let tracer = Tracer::attach(pid, args);
        let programs = tracer.program_ids();
        traced.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            !code_changed_in_memory(pid).is_empty(),
            "cycle {cycle}: no probe seen in the daemon's code while attached"
        );
        traced.store(false, Ordering::Relaxed);
        let done = tracer.interrupt();
        assert!(done.status.success(), "cycle {cycle}: {}", done.stderr);
        let report = done.report.unwrap();
        assert_eq!(num(&report["totals"], "lost_events"), 0, "cycle {cycle}");
        traced_allocs += num(&report["totals"], "allocs");
        let rows = report["stacks"].as_array().unwrap();
        // The daemon's allocator, or anonymous mappings made outside it.
        assert!(
            rows.iter()
                .all(|s| s["allocator"] == allocator || s["allocator"] == "mmap"),
            "cycle {cycle}: a row not from {allocator}: {report:#}"
        );
        assert_programs_released(&programs, &format!("{kind:?}, cycle {cycle}"));
        assert_eq!(
            code_changed_in_memory(pid),
            vec![],
            "{kind:?}, cycle {cycle}: probe bytes left in the daemon's code"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = client.join().unwrap();
    assert!(daemon.is_running(), "{kind:?} died");
    assert!(daemon.client().ping());
    assert_eq!(seen.wrong, Vec::<String>::new(), "{kind:?}: wrong replies");
    assert!(seen.ops > 10_000, "{kind:?}: only {} operations", seen.ops);
    // memcached allocates from its own slabs, so mostly while its item memory grows.
    assert!(
        traced_allocs > 0,
        "{kind:?}: no allocation traced in 20 cycles"
    );
    let (u50, u99) = (
        percentile(&mut seen.untraced_us, 0.5),
        percentile(&mut seen.untraced_us, 0.99),
    );
    let (t50, t99) = (
        percentile(&mut seen.traced_us, 0.5),
        percentile(&mut seen.traced_us, 0.99),
    );
    eprintln!(
        "{kind:?}: {} set+get pairs, all replies right; latency untraced p50 {u50} us p99 {u99} us, traced p50 {t50} us p99 {t99} us ({} traced pairs)",
        seen.ops,
        seen.traced_us.len()
    );
}

#[test]
fn memcached_survives_20_attach_detach_cycles_under_load() {
    attach_detach_cycles(Kind::Memcached, "glibc");
}

#[test]
fn redis_survives_20_attach_detach_cycles_under_load() {
    attach_detach_cycles(Kind::Redis, "jemalloc");
}
