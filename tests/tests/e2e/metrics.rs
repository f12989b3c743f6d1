//! `--metrics`: Debian's real Prometheus server scrapes leaktrace on loopback, and PromQL
//! finds the leaking row with its exact bytes.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;

/// `GET path` from `addr` over HTTP/1.0: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A query string's value, percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server, stopped when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Debian's `prometheus` scraping `target` every second.
    fn scraping(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: leaktrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port for its web API.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (cargo xtask setup installs it)");
        let server = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() || get(addr, "/-/ready").0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus never became ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// The result vector of an instant PromQL query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let (status, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        );
        assert_eq!(status, 200, "{promql}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{promql}: {body}");
        answer["data"]["result"].as_array().unwrap().clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample of a query's result.
fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn prometheus_scrapes_the_leaking_row_with_its_exact_bytes() {
    require_root();
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let tracer = Tracer::attach(target.pid, &["--metrics", "127.0.0.1:0", "--window", "20"]);
    let stderr = tracer.stderr();
    let addr: SocketAddr = stderr
        .lines()
        .find_map(|l| l.strip_prefix("leaktrace: metrics at http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address: {stderr}"))
        .parse()
        .unwrap();

    // The endpoint itself: OpenMetrics text, and nothing but /metrics
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(get(addr, "/").0, 404);

    let prometheus = Prometheus::scraping(addr);
    // 22 seconds of a leak of 10 x 1,000 bytes a second, a cache that fills in the first two,
    // and churn
    let start = Instant::now();
    let seconds = 22;
    for second in 0..seconds {
        target.cmd("leak 10 1000");
        target.cmd("churn 500");
        if second < 2 {
            target.cmd("cache 100 1000");
        }
        if let Some(wait) = Duration::from_secs(second + 1).checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    // Two more scrapes see the last figures.
    std::thread::sleep(Duration::from_millis(2500));

    let leak_bytes = (seconds * 10 * 1000) as f64;
    let live = prometheus.query("leaktrace_row_live_bytes{function=\"alloc_buffer\"}");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(value(&live[0]), leak_bytes, "{live:?}");
    // The alert: a row that has been a leak over the last seconds, by its leaf function
    let leaking = prometheus.query("min_over_time(leaktrace_row_leak[3s]) == 1");
    let functions: Vec<&str> = leaking
        .iter()
        .map(|s| s["metric"]["function"].as_str().unwrap())
        .collect();
    assert_eq!(functions, ["alloc_buffer"], "{leaking:?}");
    assert_eq!(
        leaking[0]["metric"]["path"], live[0]["metric"]["path"],
        "one stable id for the row"
    );
    let cache = prometheus.query("leaktrace_row_live_bytes{function=\"make_node\"}");
    assert_eq!(value(&cache[0]), 200_000.0, "{cache:?}");
    let rows = prometheus.query("leaktrace_rows{verdict=\"leak\"}");
    assert_eq!(value(&rows[0]), 1.0, "{rows:?}");
    let lost = prometheus.query("sum(leaktrace_lost_events_total)");
    assert_eq!(value(&lost[0]), 0.0, "{lost:?}");
    let up = prometheus.query("up{job=\"leaktrace\"}");
    assert_eq!(value(&up[0]), 1.0, "{up:?}");

    // And leaktrace's own report agrees
    let report = tracer.interrupt().report.unwrap();
    assert_eq!(
        num(stack_from(&report, "alloc_buffer"), "live_bytes") as f64,
        leak_bytes
    );
    assert_eq!(stack_from(&report, "alloc_buffer")["verdict"], "leak");
}
