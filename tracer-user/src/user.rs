//! Who leaktrace works for. Under `sudo` it runs as root, but for the user who ran sudo
//! (`SUDO_UID`, `SUDO_GID`): a program it launches runs as that user (unless `--as-root`),
//! and the files it writes are given to that user, private ([`crate::export::file`]).
use std::ffi::{CStr, CString, OsString};

/// The user behind `sudo`, as a launched program runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Every group the user is in (the primary one included), for `setgroups`.
    pub groups: Vec<libc::gid_t>,
    /// The login name and home directory, for the program's `USER`, `LOGNAME` and `HOME`.
    pub name: Option<OsString>,
    /// See `name`.
    pub home: Option<OsString>,
}

/// The user who ran `sudo leaktrace`: `None` when leaktrace is not root, not run through sudo,
/// or sudo was run by root.
pub fn invoking_user() -> Option<User> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |name: &str| std::env::var(name).ok()?.trim().parse::<u32>().ok();
    let uid = id("SUDO_UID").filter(|uid| *uid != 0)?;
    let gid = id("SUDO_GID").unwrap_or(uid);
    let (name, home) = passwd_entry(uid).unzip();
    let groups = name
        .as_ref()
        .and_then(|name| CString::new(name.as_encoded_bytes()).ok())
        .map_or_else(|| vec![gid], |name| groups_of(&name, gid));
    Some(User {
        uid,
        gid,
        groups,
        name,
        home,
    })
}

/// The login name and home directory of `uid`, from the password database.
fn passwd_entry(uid: u32) -> Option<(OsString, OsString)> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to overwrite.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and `buffer` is as long as stated.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            &raw mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &raw mut found,
        )
    };
    if status != 0 || found.is_null() || entry.pw_name.is_null() || entry.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so both are NUL-terminated strings inside `buffer`.
    let (name, dir) = unsafe { (CStr::from_ptr(entry.pw_name), CStr::from_ptr(entry.pw_dir)) };
    let text = |s: &CStr| {
        use std::os::unix::ffi::OsStrExt as _;
        std::ffi::OsStr::from_bytes(s.to_bytes()).to_owned()
    };
    Some((text(name), text(dir)))
}

/// The groups of user `name` whose primary group is `gid`.
fn groups_of(name: &CStr, gid: u32) -> Vec<libc::gid_t> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..4 {
        let mut count = i32::try_from(groups.len()).unwrap_or(i32::MAX);
        // SAFETY: `groups` has room for `count` entries; `name` is NUL-terminated.
        let found =
            unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &raw mut count) };
        let count = usize::try_from(count).unwrap_or(0);
        if found >= 0 {
            groups.truncate(count);
            return groups;
        }
        // Too small: `count` is how many there are.
        groups.resize(count.max(groups.len() * 2), 0);
    }
    vec![gid]
}
