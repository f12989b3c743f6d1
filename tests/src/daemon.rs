//! Real daemons from Debian (redis-server, memcached), started on a free loopback port, and a
//! client for each that checks every reply.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on broken set-up, as tests should"
)]
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Which daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// redis-server (Debian links it with libjemalloc.so.2).
    Redis,
    /// memcached (glibc malloc).
    Memcached,
}

/// A daemon on a free loopback port, killed when dropped.
pub struct Daemon {
    child: Child,
    /// Which one.
    pub kind: Kind,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Daemon {
    /// Starts `kind` and waits (at most 10 s) until it answers.
    pub fn start(kind: Kind) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = match kind {
            Kind::Redis => {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
                cmd
            }
            Kind::Memcached => {
                let mut cmd = Command::new("memcached");
                cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
                    .args(["-u", "nobody", "-m", "256", "-t", "2"]);
                cmd
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {kind:?}: {e}"));
        let daemon = Self { child, kind, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if daemon.try_client().is_ok_and(|mut client| client.ping()) {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?} did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new connection.
    pub fn client(&self) -> Client {
        self.try_client().unwrap()
    }

    fn try_client(&self) -> std::io::Result<Client> {
        let conn = TcpStream::connect(("127.0.0.1", self.port))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.set_nodelay(true)?;
        Ok(Client {
            kind: self.kind,
            reader: BufReader::new(conn.try_clone()?),
            conn,
        })
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection to a daemon.
pub struct Client {
    kind: Kind,
    conn: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    fn body(&mut self, len: usize) -> std::io::Result<Vec<u8>> {
        let mut body = vec![0u8; len + 2];
        self.reader.read_exact(&mut body)?;
        body.truncate(len);
        Ok(body)
    }

    /// Whether the daemon answers a no-op.
    pub fn ping(&mut self) -> bool {
        let (request, want) = match self.kind {
            Kind::Redis => ("*1\r\n$4\r\nPING\r\n", "+PONG"),
            Kind::Memcached => ("version\r\n", "VERSION"),
        };
        self.conn.write_all(request.as_bytes()).is_ok()
            && self.line().is_ok_and(|l| l.starts_with(want))
    }

    /// redis's `used_memory` (`INFO memory`): the bytes its allocator handed out.
    pub fn redis_used_memory(&mut self) -> std::io::Result<u64> {
        assert_eq!(self.kind, Kind::Redis, "INFO is redis's");
        self.conn
            .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n")?;
        let head = self.line()?;
        let len = head
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let info = String::from_utf8_lossy(&self.body(len)?).into_owned();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no used_memory in {info:?}")))
    }

    /// Stores `value` under `key`; whether the daemon said it did.
    pub fn set(&mut self, key: &str, value: &[u8]) -> std::io::Result<bool> {
        let mut request = Vec::new();
        match self.kind {
            Kind::Redis => {
                write!(
                    request,
                    "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                    key.len(),
                    value.len()
                )?;
            }
            Kind::Memcached => write!(request, "set {key} 0 0 {}\r\n", value.len())?,
        }
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        self.conn.write_all(&request)?;
        let reply = self.line()?;
        Ok(reply
            == match self.kind {
                Kind::Redis => "+OK",
                Kind::Memcached => "STORED",
            })
    }

    /// The value under `key`, if any.
    pub fn get(&mut self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        match self.kind {
            Kind::Redis => {
                write!(self.conn, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len())?;
                let head = self.line()?;
                match head.strip_prefix('$').and_then(|n| n.parse::<i64>().ok()) {
                    Some(len) if len >= 0 => Ok(Some(self.body(len as usize)?)),
                    _ => Ok(None),
                }
            }
            Kind::Memcached => {
                write!(self.conn, "get {key}\r\n")?;
                let head = self.line()?;
                if head == "END" {
                    return Ok(None);
                }
                let len = head
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let body = self.body(len)?;
                let end = self.line()?;
                Ok((end == "END").then_some(body))
            }
        }
    }
}
