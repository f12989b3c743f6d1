//! The processes a session traces: the target, the other pids given with `-p`, and with
//! `--children` every child they fork (a pre-fork server's workers), found as they appear.
use crate::target::Process;

/// One traced process.
#[derive(Debug)]
pub(super) struct Watched {
    pub(super) process: Process,
    /// The traced process it was found as a child of (`--children`).
    pub(super) parent: Option<u32>,
    /// Seen gone (or a zombie).
    pub(super) exited: bool,
    /// Its anonymous memory when tracing began and when last read
    /// ([`crate::report::coverage`]).
    anon: Option<(u64, u64)>,
}

/// Every traced process, the first being the target (`-p`'s first pid, or the launched
/// program).
#[derive(Debug)]
pub(super) struct Processes {
    list: Vec<Watched>,
    /// `--children`: follow the children of every traced process.
    pub(super) children: bool,
}

impl Processes {
    /// Just `target`.
    pub(super) fn new(target: Process, children: bool) -> Self {
        Self {
            list: vec![Watched {
                process: target,
                parent: None,
                exited: false,
                anon: None,
            }],
            children,
        }
    }

    /// The target.
    pub(super) fn target(&self) -> &Process {
        &self.list[0].process
    }

    /// Adds `process` (a child of `parent`, or another pid given).
    pub(super) fn add(&mut self, process: Process, parent: Option<u32>) {
        let anon = process.anon_bytes().map(|b| (b, b));
        self.list.push(Watched {
            process,
            parent,
            exited: false,
            anon,
        });
    }

    /// Every traced process, the target first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Watched> {
        self.list.iter()
    }

    /// Whether more than the target is traced.
    pub(super) fn several(&self) -> bool {
        self.list.len() > 1
    }

    /// Process `pid`, if traced.
    pub(super) fn get(&self, pid: u32) -> Option<&Process> {
        self.list
            .iter()
            .find(|w| w.process.pid == pid)
            .map(|w| &w.process)
    }

    /// Marks the processes that are gone; whether any other than the target still runs.
    pub(super) fn others_alive(&mut self) -> bool {
        for watched in self.list.iter_mut().skip(1) {
            if !watched.exited && !watched.process.is_alive() {
                watched.exited = true;
            }
        }
        self.list.iter().skip(1).any(|w| !w.exited)
    }

    /// With `--children`: the children of running traced processes not traced yet, as
    /// `(child, parent)`, from `/proc/PID/task/TID/children`.
    pub(super) fn new_children(&self) -> Vec<(u32, u32)> {
        if !self.children {
            return Vec::new();
        }
        let mut found = Vec::new();
        for watched in self.list.iter().filter(|w| !w.exited) {
            let parent = watched.process.pid;
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
                continue;
            };
            for task in tasks.filter_map(Result::ok) {
                let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                    continue;
                };
                for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                    if self.get(child).is_none() && !found.iter().any(|(c, _)| *c == child) {
                        found.push((child, parent));
                    }
                }
            }
        }
        found
    }

    /// Starts counting the target's anonymous memory (the others start when added).
    pub(super) fn start_anon(&mut self) {
        let target = &mut self.list[0];
        target.anon = target.process.anon_bytes().map(|b| (b, b));
    }

    /// The anonymous memory of every traced process, added up: `(when tracing began, now)`;
    /// a process gone keeps its last reading. `None` when none could be read.
    pub(super) fn anon(&mut self) -> Option<(u64, u64)> {
        let mut sum: Option<(u64, u64)> = None;
        for watched in &mut self.list {
            let Some((at_start, last)) = &mut watched.anon else {
                continue;
            };
            if !watched.exited
                && let Some(now) = watched.process.anon_bytes()
            {
                *last = now;
            }
            let (a, b) = sum.unwrap_or_default();
            sum = Some((a + *at_start, b + *last));
        }
        sum
    }
}
