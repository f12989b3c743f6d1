//! Rows as a person reads them: call sites merged, and exports that hold every row.
use super::*;

/// The rows whose frames include `function`.
fn rows_through<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| functions(s).iter().any(|f| f.ends_with(function)))
        .collect()
}

#[test]
fn one_leaking_path_through_fifteen_call_sites_is_one_row() {
    require_root();
    // The relay's shape: 40 requests, each resolving 15 names in an unrolled loop, so the
    // one leaking path runs through 15 call instructions of one source line.
    let relay = fixture(Build::ZigRelay);
    let relay = relay.to_str().unwrap();
    let done = Tracer::start(&["--", relay, "40", "1000"]).wait();
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.unwrap();
    assert_clean(&report);
    assert_eq!(report["group_by"], "source");

    // One row, with every byte and its 15 call sites
    let rows = rows_through(&report, "allocTlsState");
    assert_eq!(rows.len(), 1, "{report:#}");
    let row = rows[0];
    assert_eq!(
        (num(row, "live_bytes"), num(row, "live_allocs")),
        (600_000, 600)
    );
    let names = functions(row);
    assert!(
        has_subsequence(
            &names,
            &[
                "zig_relay.allocTlsState",
                "zig_relay.newSession",
                "zig_relay.openConn",
                "zig_relay.fetchDoc",
                "zig_relay.resolve",
                "zig_relay.serve",
                "zig_relay.main"
            ]
        ),
        "{names:?}"
    );
    let sites = row["call_sites"].as_array().unwrap();
    assert_eq!(sites.len(), 15, "{row:#}");
    for site in sites {
        assert_eq!(
            (num(site, "live_bytes"), num(site, "live_allocs")),
            (40_000, 40),
            "{site:#}"
        );
    }
    // They differ in the return address into `serve` only, all at one source line
    let serve = names.iter().position(|n| n.ends_with("serve")).unwrap();
    let frame = &row["frames"][serve];
    assert!(
        frame["file"].as_str().unwrap().ends_with("zig_relay.zig"),
        "{frame}"
    );
    let mut addrs: Vec<&str> = sites
        .iter()
        .map(|s| s["addrs"][serve].as_str().unwrap())
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), 15, "15 distinct return addresses into serve");
    // The record leaked from one call site is a row of its own
    let records = rows_through(&report, "createSessionRecord");
    assert_eq!(records.len(), 1, "{report:#}");
    let record = records[0];
    assert_eq!(
        (num(record, "live_bytes"), num(record, "live_allocs")),
        (20_000, 40)
    );
    assert_eq!(record["call_sites"].as_array().unwrap().len(), 1);
    assert!(
        done.stdout.contains("merged from 15 call sites"),
        "{}",
        done.stdout
    );

    // And --group-by address shows the 15 stacks apart
    let raw = Tracer::start(&["--group-by", "address", "--", relay, "40", "1000"]).wait();
    let raw = raw.report.unwrap();
    assert_eq!(raw["group_by"], "address");
    let rows = rows_through(&raw, "allocTlsState");
    assert_eq!(rows.len(), 15, "{raw:#}");
    for row in rows {
        assert_eq!(num(row, "live_bytes"), 40_000);
        assert_eq!(row["call_sites"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn exports_hold_every_row_and_every_cut_is_counted() {
    require_root();
    // 30 distinct paths (recursions 1 to 30 deep), more than the text report's 20
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let tracer = Tracer::attach(target.pid, &[]);
    for depth in 1..=30 {
        target.cmd(&format!("recurse {depth} 64"));
    }
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    let report = done.report.unwrap();
    let rows = report["stacks"].as_array().unwrap();
    let recursions = rows_through(&report, "recurse");
    assert_eq!(recursions.len(), 30, "every path is in the export");
    assert!(recursions.iter().all(|r| num(r, "live_bytes") == 64));
    assert_eq!(num(&report["omitted"], "rows"), 0);
    let listed: u64 = rows.iter().map(|r| num(r, "live_bytes")).sum();
    assert_eq!(listed, num(&report["totals"], "live_bytes"));
    // The text report shows 20 and says what it left out
    let more = rows.len() - 20;
    assert!(
        done.stdout
            .contains(&format!("top 20 of {} stacks", rows.len())),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout
            .contains(&format!("... {more} more stacks holding")),
        "{}",
        done.stdout
    );

    // With --top, the export is cut and says what the cut rows hold
    let tracer = Tracer::attach(target.pid, &["--top", "5"]);
    for depth in 1..=8 {
        target.cmd(&format!("recurse {depth} 64"));
    }
    let done = tracer.interrupt();
    let report = done.report.unwrap();
    let rows = report["stacks"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let omitted = &report["omitted"];
    assert!(num(omitted, "rows") >= 3, "{omitted}");
    let listed: u64 = rows.iter().map(|r| num(r, "live_bytes")).sum();
    assert_eq!(
        listed + num(omitted, "live_bytes"),
        num(&report["totals"], "live_bytes")
    );
    assert!(done.stderr.contains("(json, 5 of "), "{}", done.stderr);
}
