//! Launch mode (`leaktrace -- CMD ARGS...`): start a command with the probes attached before it
//! runs its first instruction.
//!
//! leaktrace forks; the child waits on a pipe before `exec`. The parent attaches the probes
//! (scoped to the child's pid, which `exec` keeps), then releases the child. If leaktrace dies
//! before releasing it, the child sees the pipe close and exits without running the command.
//!
//! The released child runs under `ptrace` only until the dynamic loader has mapped what leaktrace
//! needs to know about (the allocator's library): the parent steps it from system call to system
//! call, checks its mappings, then detaches. So the unwinder and the symbolizer know every
//! module before the first allocation is made.
use std::{
    ffi::{CString, OsStr, OsString},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::{Path, PathBuf},
};

use crate::user::User;

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The command was not found or is not executable.
    #[error("command not found: {0}")]
    NotFound(String),
    /// An argument holds a NUL byte.
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(OsString),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// The call.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A forked child waiting to `exec` its command.
#[derive(Debug)]
pub struct Launched {
    /// The child's pid (kept across `exec`).
    pub pid: u32,
    /// The executable it will run.
    pub exe: PathBuf,
    /// Where its stdout and stderr go, when redirected.
    pub output: Option<PathBuf>,
    go: Option<OwnedFd>,
    exec_error: OwnedFd,
}

/// Finds `program` the way `execvp` would: as given if it contains a slash, else on `PATH`.
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, LaunchError> {
    let not_found = || LaunchError::NotFound(program.to_string_lossy().into_owned());
    let is_executable = |path: &Path| {
        CString::new(path.as_os_str().as_bytes()).is_ok_and(|c| {
            // SAFETY: `c` is a valid NUL-terminated path.
            path.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
        })
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(not_found())
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(not_found)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(LaunchError::Os {
            what: "pipe2",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the child was doing when it failed, as it reports it over the error pipe.
const STAGE_EXEC: i32 = 0;
const STAGE_USER: i32 = 1;
const STAGE_OUTPUT: i32 = 2;

/// The environment for a program run as `user`: ours, with `USER`, `LOGNAME` and `HOME` of
/// that user.
fn environment_for(user: Option<&User>) -> Result<Vec<CString>, LaunchError> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    if let Some(user) = user {
        let mut set = |key: &str, value: &Option<OsString>| {
            if let Some(value) = value {
                vars.retain(|(k, _)| k != key);
                vars.push((key.into(), value.clone()));
            }
        };
        set("USER", &user.name);
        set("LOGNAME", &user.name);
        set("HOME", &user.home);
    }
    vars.into_iter()
        .map(|(key, value)| {
            let mut pair = key.into_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            CString::new(pair).map_err(|err| LaunchError::Nul(OsString::from_vec(err.into_vec())))
        })
        .collect()
}

/// Forks a child that will run `command` once [`Launched::release`] is called: as `run_as`
/// when given (its groups, group and user set before `exec`), else as leaktrace's own user.
/// With `output`, the command's stdout and stderr go to that file, created private (0600) by
/// the user it runs as, never through a symbolic link (so they do not draw over the live view).
pub fn spawn_held(
    command: &[OsString],
    output: Option<&Path>,
    run_as: Option<&User>,
) -> Result<Launched, LaunchError> {
    let c_output = output
        .map(|path| {
            CString::new(path.as_os_str().as_bytes())
                .map_err(|_| LaunchError::Nul(path.as_os_str().to_owned()))
        })
        .transpose()?;
    let program = command
        .first()
        .ok_or_else(|| LaunchError::NotFound(String::new()))?;
    let exe = resolve_program(program)?;
    let c_exe = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| LaunchError::Nul(exe.clone().into_os_string()))?;
    let c_args: Vec<CString> = command
        .iter()
        .map(|arg| CString::new(arg.as_bytes()).map_err(|_| LaunchError::Nul(arg.clone())))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let c_env = environment_for(run_as)?;
    let mut envp: Vec<*const libc::c_char> = c_env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let groups: Vec<libc::gid_t> = run_as.map(|u| u.groups.clone()).unwrap_or_default();
    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    // SAFETY: fork has no preconditions; the child below only calls async-signal-safe functions
    // (read, write, close, open, dup2, setgroups, setgid, setuid, ptrace, execve, _exit) on
    // data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(LaunchError::Os {
            what: "fork",
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // Child.
        // SAFETY: async-signal-safe calls on descriptors and buffers that are valid here.
        unsafe {
            libc::close(go_write.as_raw_fd());
            libc::close(err_read.as_raw_fd());
            let mut byte = 0u8;
            let n = libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1);
            let fail = |stage: i32| {
                let report = [stage, *libc::__errno_location()];
                libc::write(err_write.as_raw_fd(), report.as_ptr().cast(), 8);
                libc::_exit(127);
            };
            if n == 1 {
                if let Some(user) = run_as
                    && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setgid(user.gid) != 0
                        || libc::setuid(user.uid) != 0)
                {
                    fail(STAGE_USER);
                }
                if let Some(path) = &c_output {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
                        0o600,
                    );
                    if fd < 0 {
                        fail(STAGE_OUTPUT);
                    }
                    libc::dup2(fd, 1);
                    libc::dup2(fd, 2);
                    libc::close(fd);
                }
                // Stop at exec (SIGTRAP) for the parent; see the module docs.
                libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                );
                libc::execve(c_exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
                fail(STAGE_EXEC);
            }
            libc::_exit(127);
        }
    }
    drop(go_read);
    drop(err_write);
    Ok(Launched {
        pid: u32::try_from(pid).unwrap_or_default(),
        exe,
        output: output.map(Path::to_path_buf),
        go: Some(go_write),
        exec_error: err_read,
    })
}

impl Launched {
    /// Reaps the program once it has exited and returns its wait status
    /// ([`super::describe_wait_status`] says it in words).
    pub fn wait_status(&self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: reaps our own child, which has exited; `status` is a valid out-pointer.
        let reaped = unsafe { libc::waitpid(self.pid as libc::pid_t, &raw mut status, 0) };
        (reaped > 0).then_some(status)
    }

    /// Lets the child `exec` its command, then runs it system call by system call until `ready`
    /// says its mappings are complete enough (or it exits), and lets it run freely.
    pub fn release(&mut self, mut ready: impl FnMut() -> bool) -> Result<(), LaunchError> {
        /// Most system calls to step through before letting the child go regardless.
        const MAX_STOPS: usize = 20_000;
        let Some(go) = self.go.take() else {
            return Ok(());
        };
        let byte = 1u8;
        // SAFETY: writes one byte from a valid buffer to an open descriptor.
        let written = unsafe { libc::write(go.as_raw_fd(), (&raw const byte).cast(), 1) };
        if written != 1 {
            return Err(LaunchError::Os {
                what: "releasing the child",
                source: std::io::Error::last_os_error(),
            });
        }
        drop(go);
        let mut report = [0i32; 2];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer; EOF means exec succeeded (the
        // descriptor is close-on-exec).
        let n = unsafe { libc::read(self.exec_error.as_raw_fd(), report.as_mut_ptr().cast(), 8) };
        let pid = self.pid as libc::pid_t;
        let mut status = 0;
        if n == 8 {
            // SAFETY: reaps our own child, which exits after a failed exec.
            unsafe { libc::waitpid(pid, &raw mut status, 0) };
            let [stage, errno] = report;
            return Err(LaunchError::Os {
                what: match stage {
                    STAGE_USER => "running the program as the user who ran sudo",
                    STAGE_OUTPUT => "creating the program's output file",
                    _ => "exec",
                },
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        let null = std::ptr::null_mut::<libc::c_void>();
        let mut signal = 0;
        for _ in 0..MAX_STOPS {
            // SAFETY: waits for our own traced child.
            if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid || !libc::WIFSTOPPED(status)
            {
                // It exited (or cannot be waited for): nothing left to hold.
                return Ok(());
            }
            // Pass on any signal other than our own traps.
            let stop = libc::WSTOPSIG(status);
            signal = if stop == libc::SIGTRAP || stop == (libc::SIGTRAP | 0x80) {
                0
            } else {
                stop
            };
            if ready() {
                break;
            }
            // SAFETY: resumes our stopped tracee until its next system call entry or exit.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_SYSCALL,
                    pid,
                    null,
                    signal as usize as *mut libc::c_void,
                )
            };
        }
        // SAFETY: detaches from our stopped tracee, delivering the pending signal, if any.
        unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                pid,
                null,
                signal as usize as *mut libc::c_void,
            )
        };
        Ok(())
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // Closing `go` unreleased makes the child exit without running the command; reap it.
        if self.go.take().is_some() {
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(self.pid as libc::pid_t, &raw mut status, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_on_path_and_rejects_missing_ones() {
        assert!(resolve_program(OsStr::new("sh")).is_ok());
        assert!(matches!(
            resolve_program(OsStr::new("definitely-not-a-command-xyz")),
            Err(LaunchError::NotFound(_))
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/etc/passwd")),
            Err(LaunchError::NotFound(_))
        ));
    }

    #[test]
    fn held_child_runs_only_when_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let script = format!("touch {}", marker.display());
        let mut child =
            spawn_held(&["sh".into(), "-c".into(), script.into()], None, None).expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!marker.exists(), "the command ran before release");
        child.release(|| true).expect("release");
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(child.pid as libc::pid_t, &raw mut status, 0) };
        assert!(marker.exists());
    }

    #[test]
    fn unreleased_child_never_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let script = format!("touch {}", marker.display());
        let child =
            spawn_held(&["sh".into(), "-c".into(), script.into()], None, None).expect("spawn");
        drop(child);
        assert!(!marker.exists());
    }
}
