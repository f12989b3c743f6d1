//! What leaktrace learns about a target process from `/proc`.

pub mod allocator;
pub mod launch;

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The value in bytes of a `Name:   1234 kB` line of a `/proc` status file.
fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Why a pid cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No process has this pid.
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The pid is a kernel thread, which has no user-space allocator.
    #[error("pid {pid} is a kernel thread ({comm}); it has no user-space heap to trace")]
    KernelThread {
        /// The pid asked for.
        pid: u32,
        /// Its name.
        comm: String,
    },
    /// `/proc` could not be read.
    #[error("reading {path}: {source}")]
    Proc {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permissions, e.g. `r-xp`.
    pub perms: String,
    /// Offset of `start` in the mapped file.
    pub offset: u64,
    /// Inode of the mapped file (0 for anonymous mappings).
    pub inode: u64,
    /// Path as the target sees it (empty for anonymous mappings; `[heap]` and the like kept).
    pub path: String,
}

impl Mapping {
    /// Whether the mapping is executable.
    pub fn is_exec(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }

    /// Whether it maps a regular file (not anonymous, not `[vdso]` and the like).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

/// Parses the text of `/proc/PID/maps`; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, char::is_whitespace);
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_owned(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path: path.to_owned(),
    })
}

/// A live process leaktrace may trace.
#[derive(Clone, Debug)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its command line, space-separated (its name when the command line is empty).
    pub command: String,
}

fn read_proc(pid: u32, file: &str) -> Result<String, ProcessError> {
    let path = format!("/proc/{pid}/{file}");
    fs::read(&path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|source| {
            if source.kind() == ErrorKind::NotFound {
                ProcessError::NoSuchProcess { pid }
            } else {
                ProcessError::Proc { path, source }
            }
        })
}

impl Process {
    /// Checks that `pid` is a live user-space process.
    pub fn open(pid: u32) -> Result<Self, ProcessError> {
        if pid == 0 {
            return Err(ProcessError::NoSuchProcess { pid });
        }
        let stat = read_proc(pid, "stat")?;
        // The command name is in parentheses and may contain spaces; fields follow the last ')'.
        let (comm, rest) = match (stat.find('('), stat.rfind(')')) {
            (Some(open), Some(close)) if open < close => {
                (stat[open + 1..close].to_owned(), &stat[close + 1..])
            }
            _ => (String::new(), stat.as_str()),
        };
        // After the name: state ppid pgrp session tty_nr tpgid flags ...
        let flags: u64 = rest
            .split_whitespace()
            .nth(6)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        if flags & PF_KTHREAD != 0 {
            return Err(ProcessError::KernelThread { pid, comm });
        }
        let cmdline = read_proc(pid, "cmdline")?;
        let command = cmdline
            .split('\0')
            .filter(|arg| !arg.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let command = if command.is_empty() { comm } else { command };
        Ok(Self { pid, command })
    }

    /// The process's current memory mappings. `/proc/PID/maps` is read in pieces and can skip or
    /// repeat lines while the process maps memory (new threads, say), so it is read until two
    /// reads agree on the executable mappings, which are what leaktrace relies on.
    pub fn maps(&self) -> Result<Vec<Mapping>, ProcessError> {
        let exec = |maps: &[Mapping]| -> Vec<Mapping> {
            maps.iter().filter(|m| m.is_exec()).cloned().collect()
        };
        let mut previous = parse_maps(&read_proc(self.pid, "maps")?);
        for _ in 0..5 {
            let current = parse_maps(&read_proc(self.pid, "maps")?);
            if exec(&current) == exec(&previous) {
                return Ok(current);
            }
            previous = current;
        }
        Ok(previous)
    }

    /// Resident set size in bytes, when the process still exists.
    pub fn rss_bytes(&self) -> Option<u64> {
        let statm = fs::read_to_string(format!("/proc/{}/statm", self.pid)).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * page_size())
    }

    /// Resident anonymous memory in bytes (`RssAnon`: heaps, anonymous maps, stacks), when the
    /// process still exists.
    pub fn anon_bytes(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        parse_kib_field(&status, "RssAnon:")
    }

    /// A path to `target_path` (as the target sees it) that this process can open, through the
    /// target's root so a target in another mount namespace works.
    pub fn host_path(&self, target_path: &str) -> PathBuf {
        host_path(self.pid, target_path)
    }

    /// Whether the process still exists (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat
                .rfind(')')
                .and_then(|close| stat[close + 1..].split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }
}

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`, fixed by the kernel).
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// Whether leaktrace runs in the host's (initial) pid namespace. The probes identify processes
/// by their pids there; in a nested namespace (a container without `--pid=host`) the pids
/// leaktrace is given and sees name other processes, or none. Assumed so when it cannot tell.
pub fn in_initial_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata("/proc/self/ns/pid")
        .ok()
        .is_none_or(|m| m.ino() == INITIAL_PID_NAMESPACE)
}

/// `target_path` seen through `/proc/PID/root`.
pub fn host_path(pid: u32, target_path: &str) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(target_path.trim_start_matches('/'))
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_memory_is_read_from_status() {
        let status = "Name:\tx\nRssAnon:\t    1536 kB\nRssFile:\t 12 kB\n";
        assert_eq!(parse_kib_field(status, "RssAnon:"), Some(1536 * 1024));
        assert_eq!(parse_kib_field(status, "VmSwap:"), None);
        let me = Process::open(std::process::id()).expect("own process");
        assert!(me.anon_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn parses_maps_lines() {
        let text = "\
558998d41000-558998d46000 r-xp 00002000 fe:00 247030                     /usr/bin/cat
7f00aa000000-7f00aa021000 rw-p 00000000 00:00 0 
7ffd1b1f2000-7ffd1b1f4000 r-xp 00000000 00:00 0                          [vdso]
7f00ab000000-7f00ab001000 r-xp 00001000 fe:00 12 /tmp/with space.so (deleted)
garbage line
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].start, 0x5589_98d4_1000);
        assert_eq!(maps[0].offset, 0x2000);
        assert_eq!(maps[0].path, "/usr/bin/cat");
        assert!(maps[0].is_exec() && maps[0].is_file());
        assert!(!maps[1].is_file() && !maps[1].is_exec());
        assert!(maps[2].is_exec() && !maps[2].is_file());
        assert_eq!(maps[3].path, "/tmp/with space.so (deleted)");
    }

    #[test]
    fn host_paths_go_through_the_target_root() {
        assert_eq!(
            host_path(42, "/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/proc/42/root/lib/x86_64-linux-gnu/libc.so.6")
        );
    }

    #[test]
    fn own_process_is_alive_and_not_a_kernel_thread() {
        let me = Process::open(std::process::id()).expect("own process");
        assert!(me.is_alive());
        assert!(!me.command.is_empty());
        assert!(me.maps().expect("maps").iter().any(Mapping::is_exec));
        assert!(me.rss_bytes().is_some_and(|rss| rss > 0));
    }

    #[test]
    fn missing_pid_and_kernel_threads_are_refused() {
        assert!(matches!(
            Process::open(0),
            Err(ProcessError::NoSuchProcess { .. })
        ));
        assert!(matches!(
            Process::open(u32::MAX - 1),
            Err(ProcessError::NoSuchProcess { .. })
        ));
        // pid 2 is kthreadd on Linux.
        assert!(matches!(
            Process::open(2),
            Err(ProcessError::KernelThread { .. })
        ));
    }
}

/// How a process ended, from its wait status: `exited with status 3`, `killed by SIGKILL`.
pub fn describe_wait_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        match signal_name(signal) {
            Some(name) => format!("killed by {name}"),
            None => format!("killed by signal {signal}"),
        }
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    }
}

/// The usual name of a signal that ends a process.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// `struct pidfd_info` (`linux/pidfd.h`, kernel 6.15), up to `exit_code`.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}

/// `PIDFD_INFO_EXIT`: the exit code is filled in (once the process has been reaped).
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `PIDFD_GET_INFO`: `_IOWR(0xFF, 11, struct pidfd_info)`.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "glibc types the request as c_ulong, musl as c_int: the bits are what count"
)]
const PIDFD_GET_INFO: libc::Ioctl = 0xC040_FF0B_u32 as libc::Ioctl;

/// The wait status of the exited process behind `pidfd`, which is not our child: the kernel
/// keeps it for the pidfd once the process's parent has reaped it (kernel 6.15 or later).
/// Waits up to `patience` for the parent to reap it; `None` on older kernels, or when the
/// parent has not reaped it by then.
pub fn pidfd_exit_status(pidfd: std::os::fd::BorrowedFd<'_>, patience: Duration) -> Option<i32> {
    use std::os::fd::AsRawFd as _;
    let start = Instant::now();
    loop {
        let mut info = PidfdInfo {
            mask: PIDFD_INFO_EXIT,
            ..PidfdInfo::default()
        };
        // SAFETY: `info` is a writable `struct pidfd_info` of the size the request encodes, and
        // the descriptor is a pidfd the caller keeps open for the call.
        let done = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &raw mut info) };
        if done != 0 {
            // ENOTTY or EINVAL: a kernel without PIDFD_GET_INFO or without exit info.
            return None;
        }
        if info.mask & PIDFD_INFO_EXIT != 0 {
            return Some(info.exit_code);
        }
        if start.elapsed() >= patience {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the kernel keeps how a process ended for its pidfds (`PIDFD_GET_INFO` with
/// `PIDFD_INFO_EXIT`, Linux 6.15), tried on a child that exits at once.
pub fn pidfd_exit_info_supported() -> bool {
    use std::os::fd::{AsFd as _, FromRawFd as _};
    // SAFETY: the child calls only `_exit`, which is async-signal-safe after fork.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(0) };
    }
    if child < 0 {
        return false;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) };
    let mut status = 0;
    // SAFETY: reaps our own child; `status` is a writable int.
    unsafe { libc::waitpid(child, &raw mut status, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    pidfd_exit_status(fd.as_fd(), Duration::ZERO).is_some()
}

#[cfg(test)]
mod exit_tests {
    use super::*;

    #[test]
    fn wait_statuses_read_as_a_person_says_them() {
        // A normal exit with status 3, and deaths by SIGKILL and by an unnamed signal.
        assert_eq!(describe_wait_status(3 << 8), "exited with status 3");
        assert_eq!(describe_wait_status(libc::SIGKILL), "killed by SIGKILL");
        assert_eq!(describe_wait_status(40), "killed by signal 40");
    }
}
