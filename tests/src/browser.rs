//! Headless Chromium (Debian's `chromium`), driven through the DevTools protocol over a pipe
//! (`--remote-debugging-pipe`: JSON messages ending in a NUL byte, commands on the browser's
//! fd 3 and answers on its fd 4), so a test opens a page, runs script in it, clicks where a
//! person would and takes a screenshot, with no network port and no driver to install.
use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::FromRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};

/// How long one command may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A headless browser with one page open.
pub struct Browser {
    child: Child,
    commands: File,
    answers: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Events seen so far (console messages, exceptions, log entries).
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// Two pipe ends, read and write, close-on-exec.
fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    /// Starts the browser `width` x `height` CSS pixels wide and opens `url` in it, waiting for
    /// the page's load event.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (their_in, our_out) = pipe();
        let (our_in, their_out) = pipe();
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                // Running as root needs it; the page is a local file the test wrote.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) are made. The
        // ends are first copied above 10 so that moving them to 3 and 4 cannot overwrite one
        // with the other; dup2 clears close-on-exec on the copies it makes.
        unsafe {
            command.pre_exec(move || {
                let read = libc::fcntl(their_in, libc::F_DUPFD, 10);
                let write = libc::fcntl(their_out, libc::F_DUPFD, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|err| {
            panic!("cannot run chromium (cargo xtask setup installs it): {err}")
        });
        // SAFETY: each descriptor came from pipe2 above and is owned here from now on.
        let (commands, answers_file) = unsafe {
            libc::close(their_in);
            libc::close(their_out);
            (File::from_raw_fd(our_out), File::from_raw_fd(our_in))
        };
        let (send, answers) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answers_file);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).unwrap_or(0) > 0 {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && send.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        let mut browser = Browser {
            child,
            commands,
            answers,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            _profile: profile,
        };
        let target = browser.send(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.send(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({}));
        }
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser.call("Page.navigate", json!({"url": url}));
        browser.wait_for_event("Page.loadEventFired");
        browser
    }

    /// Sends `method` to the page and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let started = Instant::now();
        loop {
            let message = self.next_message(started, method);
            if message["id"] == json!(id) {
                assert!(
                    message.get("error").is_none(),
                    "{method} failed: {}",
                    message["error"]
                );
                return message["result"].clone();
            }
        }
    }

    fn next_message(&mut self, started: Instant, waiting_for: &str) -> Value {
        let left = TIMEOUT.saturating_sub(started.elapsed());
        match self.answers.recv_timeout(left) {
            Ok(message) => {
                if message.get("method").is_some() {
                    self.events.push(message.clone());
                }
                message
            }
            Err(RecvTimeoutError::Timeout) => panic!("chromium: no answer to {waiting_for}"),
            Err(RecvTimeoutError::Disconnected) => panic!("chromium exited during {waiting_for}"),
        }
    }

    fn wait_for_event(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == json!(method)) {
            return;
        }
        let started = Instant::now();
        while self.next_message(started, method)["method"] != json!(method) {}
    }

    /// Evaluates `expression` in the page and returns its value (promises are awaited).
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Clicks with the left button at `(x, y)` in the viewport, as a mouse does: moved there,
    /// pressed, released.
    pub fn click(&mut self, x: f64, y: f64) {
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Saves a PNG of the page, beyond the viewport, to `path`: all of it, or its first 4,000
    /// pixels for a longer page (the browser refuses larger captures).
    pub fn screenshot(&mut self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let width = size["width"].as_f64().unwrap_or(1300.0);
        let height = size["height"].as_f64().unwrap_or(1000.0).min(4000.0);
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}),
        );
        let data = shot["data"].as_str().unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Errors the page reported: uncaught exceptions, `console.error` and error log entries.
    pub fn errors(&mut self) -> Vec<String> {
        // Let events already sent arrive.
        while let Ok(message) = self.answers.recv_timeout(Duration::from_millis(200)) {
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
        self.events
            .iter()
            .filter(|e| {
                let params = &e["params"];
                match e["method"].as_str() {
                    Some("Runtime.exceptionThrown") => true,
                    Some("Runtime.consoleAPICalled") => params["type"] == json!("error"),
                    Some("Log.entryAdded") => params["entry"]["level"] == json!("error"),
                    _ => false,
                }
            })
            .map(ToString::to_string)
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
