//! `--metrics ADDR`: a Prometheus endpoint. `GET /metrics` answers with the latest figures in
//! the OpenMetrics text format (encoded by the `prometheus-client` crate, served by `tiny_http`
//! on a thread of its own), refreshed every status interval from the same report every export
//! uses:
//!
//! - leaktrace's health: allocations and frees seen, lost events by reason, every degraded
//!   counter, its own memory;
//! - the target's live bytes and blocks, and how many rows each verdict has;
//! - for the rows holding most and the rows leaking or growing (at most `--metrics-rows` of
//!   each), live bytes, growth per hour and whether the row is a leak (1 or 0), labelled with a
//!   stable short id of the source-level call path ([`path_id`]) and its innermost function, so
//!   label cardinality stays bounded and a series keeps its name across restarts of either
//!   process. Rows left out are counted (`leaktrace_rows_not_exported`).
//!
//! An alert rule "a stack has been a leak for 30 minutes" is then
//! `min_over_time(leaktrace_row_leak[30m]) == 1`.
#![warn(missing_docs)]

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64},
    },
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    report::{Report, StackReport, analytics::Verdict},
    source::HealthKind,
};

/// Rows exported by default with `--metrics`, of each kind (holding most; leaking or growing).
pub const DEFAULT_ROWS: usize = 20;

/// What the endpoint answers with, as the HTTP content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running endpoint: the latest encoded figures and the thread serving them. Clones publish
/// to the same endpoint (service mode hands it from one traced process to the next).
#[derive(Clone, Debug)]
pub struct Endpoint {
    latest: Arc<Mutex<String>>,
    addr: SocketAddr,
    rows: usize,
}

/// Labels of one row's series.
type RowLabels = Vec<(String, String)>;

impl Endpoint {
    /// Listens on `addr` and serves `/metrics` from a thread of its own (empty until the first
    /// [`Endpoint::publish`]). `rows`: how many rows of each kind to export.
    pub fn serve(addr: SocketAddr, rows: usize) -> std::io::Result<Endpoint> {
        let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("not an IP address"))?;
        let latest = Arc::new(Mutex::new(String::from("# EOF\n")));
        let serving = Arc::clone(&latest);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let response = if request.url() == "/metrics"
                        || request.url().starts_with("/metrics?")
                    {
                        let body = serving.lock().map(|t| t.clone()).unwrap_or_default();
                        let header =
                            tiny_http::Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE).ok();
                        let mut response = tiny_http::Response::from_string(body);
                        if let Some(header) = header {
                            response.add_header(header);
                        }
                        response
                    } else {
                        tiny_http::Response::from_string("leaktrace serves /metrics\n")
                            .with_status_code(404)
                    };
                    // A client that went away is its own business.
                    let _ = request.respond(response);
                }
            })?;
        Ok(Endpoint { latest, addr, rows })
    }

    /// The address it listens on (the port chosen when `:0` was given).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `report` what the endpoint answers with.
    pub fn publish(&self, report: &Report) {
        let text = encode_report(report, self.rows);
        if let Ok(mut latest) = self.latest.lock() {
            *latest = text;
        }
    }
}

/// A stable short id of a row's source-level call path: 12 hex digits of an FNV-1a hash of its
/// allocator and its frames' labels (function names, or module and file offset), which do not
/// change with addresses, so the same path has the same id in every run.
pub fn path_id(stack: &StackReport) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator no label contains, so ["ab", "c"] and ["a", "bc"] differ.
        hash = (hash ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
    };
    add(stack.allocator.as_bytes());
    for frame in &stack.frames {
        add(frame.label().as_bytes());
    }
    format!("{:012x}", hash >> 16)
}

/// The rows exported: the `rows` holding most, and up to `rows` more leaking or growing.
fn exported(report: &Report, rows: usize) -> Vec<&StackReport> {
    // Report rows are sorted by live bytes, most first.
    let mut chosen: Vec<&StackReport> = report.stacks.iter().take(rows).collect();
    chosen.extend(
        report
            .stacks
            .iter()
            .skip(rows)
            .filter(|s| matches!(s.verdict, Verdict::Leak | Verdict::Growing))
            .take(rows),
    );
    chosen
}

/// The OpenMetrics text of `report`, exporting at most `rows` rows of each kind.
pub fn encode_report(report: &Report, rows: usize) -> String {
    let mut registry = Registry::with_prefix("leaktrace");
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let g: Gauge<i64, AtomicI64> = Gauge::default();
        g.set(value);
        registry.register(name, help, g);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let c: Counter<u64, AtomicU64> = Counter::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);

    let info: Family<RowLabels, Gauge<i64, AtomicI64>> = Family::default();
    info.get_or_create(&vec![
        ("pid".to_owned(), report.pid.to_string()),
        (
            "command".to_owned(),
            crate::export::one_line(&report.command).into_owned(),
        ),
        ("unwind".to_owned(), report.unwind.clone()),
        (
            "sample_bytes".to_owned(),
            report.sample_bytes.unwrap_or(0).to_string(),
        ),
        ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
    ])
    .set(1);
    registry.register("target", "The traced process (value 1)", info);
    gauge(
        &mut registry,
        "traced_seconds",
        "Seconds since leaktrace attached",
        report.duration_s as i64,
    );
    let totals = &report.totals;
    gauge(
        &mut registry,
        "target_live_bytes",
        "Bytes allocated since attach and still live in the target",
        as_i64(totals.live_bytes),
    );
    gauge(
        &mut registry,
        "target_live_blocks",
        "Blocks allocated since attach and still live in the target",
        as_i64(totals.live_allocs),
    );
    counter(
        &mut registry,
        "allocations",
        "Allocations seen",
        totals.allocs,
    );
    counter(&mut registry, "frees", "Blocks released seen", totals.frees);
    let lost: Family<RowLabels, Counter<u64, AtomicU64>> = Family::default();
    let degraded: Family<RowLabels, Gauge<i64, AtomicI64>> = Family::default();
    for health in &report.diagnostics.0 {
        let labels = |key: &str| vec![(key.to_owned(), health.name.to_string())];
        match health.kind {
            HealthKind::Lost => {
                lost.get_or_create(&labels("reason")).inc_by(health.value);
            }
            HealthKind::Degraded => {
                degraded
                    .get_or_create(&labels("counter"))
                    .set(as_i64(health.value));
            }
            HealthKind::Info => {}
        }
    }
    registry.register(
        "lost_events",
        "Events the kernel side could not deliver, by reason",
        lost,
    );
    registry.register(
        "degraded",
        "Counters of degraded figures (stacks cut, rows without history, files skipped)",
        degraded,
    );
    gauge(
        &mut registry,
        "tracer_memory_bytes",
        "leaktrace's own resident memory",
        as_i64(report.diagnostics.get("tracer_memory_bytes")),
    );

    let by_verdict: Family<RowLabels, Gauge<i64, AtomicI64>> = Family::default();
    for verdict in [
        Verdict::Leak,
        Verdict::Growing,
        Verdict::Steady,
        Verdict::Churn,
        Verdict::Unknown,
    ] {
        let n = report
            .stacks
            .iter()
            .filter(|s| s.verdict == verdict)
            .count();
        by_verdict
            .get_or_create(&vec![("verdict".to_owned(), verdict.as_str().to_owned())])
            .set(n as i64);
    }
    registry.register("rows", "Rows (call paths) by verdict", by_verdict);

    let chosen = exported(report, rows);
    gauge(
        &mut registry,
        "rows_not_exported",
        "Rows without series of their own here (beyond --metrics-rows); their bytes are in target_live_bytes",
        (report.stacks.len() - chosen.len()) as i64,
    );
    let live: Family<RowLabels, Gauge<i64, AtomicI64>> = Family::default();
    let growth: Family<RowLabels, Gauge<f64, AtomicU64>> = Family::default();
    let leak: Family<RowLabels, Gauge<i64, AtomicI64>> = Family::default();
    for stack in chosen {
        let mut labels = vec![
            ("path".to_owned(), path_id(stack)),
            (
                "function".to_owned(),
                stack
                    .frames
                    .first()
                    .map_or_else(|| "(no stack recorded)".to_owned(), |f| f.label()),
            ),
            ("allocator".to_owned(), stack.allocator.clone()),
        ];
        if !report.processes.is_empty() {
            labels.push(("pid".to_owned(), stack.pid.to_string()));
        }
        live.get_or_create(&labels).set(as_i64(stack.live_bytes));
        if let Some(per_h) = stack.growth_bytes_per_h {
            growth.get_or_create(&labels).set(per_h);
        }
        leak.get_or_create(&labels)
            .set(i64::from(stack.verdict == Verdict::Leak));
    }
    registry.register(
        "row_live_bytes",
        "Live bytes of one call path (path: a stable id of its frames; function: its innermost)",
        live,
    );
    registry.register(
        "row_growth_bytes_per_hour",
        "Growth of one call path's live bytes, fitted over --window",
        growth,
    );
    registry.register(
        "row_leak",
        "1 when the call path's verdict is leak, else 0",
        leak,
    );
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        // Writing into a String cannot fail; say so rather than serve half a page.
        return "# EOF\n".to_owned();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::sample_report;

    #[test]
    fn the_text_names_the_target_its_rows_and_its_losses() {
        let mut report = sample_report();
        report.stacks[0].verdict = Verdict::Leak;
        report.stacks[0].growth_bytes_per_h = Some(3600.0);
        let text = encode_report(&report, DEFAULT_ROWS);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let id = path_id(&report.stacks[0]);
        assert_eq!(id.len(), 12);
        let leaf = report.stacks[0].frames[0].label();
        let line = text
            .lines()
            .find(|l| l.starts_with("leaktrace_row_live_bytes{") && l.contains(&id))
            .unwrap_or_else(|| panic!("no row line in\n{text}"));
        assert!(line.contains(&format!("function=\"{leaf}\"")), "{line}");
        assert!(
            line.ends_with(&format!(" {}", report.stacks[0].live_bytes)),
            "{line}"
        );
        assert!(text.contains(&format!("leaktrace_row_leak{{path=\"{id}\"")));
        assert!(
            text.contains("leaktrace_rows{verdict=\"leak\"} 1"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "leaktrace_target_live_bytes {}",
            report.totals.live_bytes
        )));
        assert!(
            text.contains("leaktrace_lost_events_total{reason="),
            "{text}"
        );
    }

    #[test]
    fn path_ids_follow_the_frames_not_the_addresses() {
        let report = sample_report();
        let mut moved = report.stacks[0].clone();
        moved.frames = moved
            .frames
            .iter()
            .map(|f| {
                std::sync::Arc::new(crate::report::Frame {
                    addr: f.addr + 0x1000,
                    ..(**f).clone()
                })
            })
            .collect();
        moved.live_bytes += 1;
        assert_eq!(path_id(&moved), path_id(&report.stacks[0]));
        assert_ne!(path_id(&report.stacks[0]), path_id(&report.stacks[1]));
    }

    #[test]
    fn rows_beyond_the_cap_are_counted_not_exported() {
        let report = sample_report();
        let text = encode_report(&report, 1);
        let exported = text
            .lines()
            .filter(|l| l.starts_with("leaktrace_row_live_bytes{"))
            .count();
        let leaking = report
            .stacks
            .iter()
            .skip(1)
            .filter(|s| matches!(s.verdict, Verdict::Leak | Verdict::Growing))
            .count()
            .min(1);
        assert_eq!(exported, 1 + leaking);
        assert!(
            text.contains(&format!(
                "leaktrace_rows_not_exported {}",
                report.stacks.len() - exported
            )),
            "{text}"
        );
    }
}
