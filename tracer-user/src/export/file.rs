//! How leaktrace creates the files it writes (exports, snapshots): they hold another process's
//! code paths, so they are private (mode 0600), never opened through a symbolic link (one
//! planted at the path in a shared directory such as `/tmp` would make root write wherever it
//! points), and given to the user who ran `sudo` ([`crate::user`]), who can then read them.
use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

/// Opens `path` for writing, creating it if missing, without truncating it (the caller writes
/// when it has a report). Refuses a symbolic link.
pub fn open_private(path: &Path) -> io::Result<File> {
    open(path, OpenOptions::new().write(true).create(true))
}

/// Creates `path`, which must not exist (not even as a dangling symbolic link).
pub fn create_new_private(path: &Path) -> io::Result<File> {
    open(path, OpenOptions::new().write(true).create_new(true))
}

fn open(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| {
            if err.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it is a symbolic link, and leaktrace does not write through links",
                )
            } else {
                err
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    // A file that was there before keeps its owner but loses any access by others.
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    give_to_invoking_user(&file)?;
    Ok(file)
}

/// Under sudo, makes the user who ran it the file's owner.
fn give_to_invoking_user(file: &File) -> io::Result<()> {
    if let Some(user) = crate::user::invoking_user() {
        std::os::unix::fs::fchown(file, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn files_are_private_and_links_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A new file is created 0600
        let export = dir.path().join("heap.json");
        open_private(&export).expect("a new file");
        let mode = std::fs::metadata(&export).expect("exists").mode() & 0o777;
        assert_eq!(mode, 0o600);
        // An existing file readable by others is made private
        let shared = dir.path().join("shared.json");
        std::fs::write(&shared, b"old").expect("writing");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        open_private(&shared).expect("an existing file");
        let mode = std::fs::metadata(&shared).expect("exists").mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A symbolic link planted at the path is refused, and what it points to untouched
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("writing");
        let planted = dir.path().join("planted.json");
        std::os::unix::fs::symlink(&victim, &planted).expect("symlink");
        let err = open_private(&planted).expect_err("a link is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let dangling = dir.path().join("dangling.json");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("symlink");
        assert!(create_new_private(&dangling).is_err());
        assert!(!dir.path().join("nowhere").exists());
        assert_eq!(std::fs::read(&victim).expect("reading"), b"precious");
        // A directory is not a file to write
        assert!(open_private(dir.path()).is_err());
    }
}
