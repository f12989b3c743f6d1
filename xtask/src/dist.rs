//! `cargo xtask dist`: what a production host installs, which has no Rust toolchain.
//!
//! - `target/dist/leaktrace`: one static (musl, static-pie) x86_64 binary with the eBPF object
//!   embedded; it needs no library, so it runs on any x86_64 Linux userland (Debian, Ubuntu,
//!   RHEL, Amazon Linux).
//! - `target/dist/leaktrace_VERSION_amd64.deb`: that binary, its man page, its bash, zsh and
//!   fish completions, a systemd unit template for service mode (`xtask/dist/leaktrace@.service`)
//!   and the copyright file Debian requires; nothing else.
//! - `target/dist/SHA256SUMS`.
//!
//! Before packaging, the eBPF object is built a second time from a copy of the sources at
//! another path and must hash to the build id the binary names in `--version`: the object is
//! byte-for-byte reproducible (see `tracer-user/build.rs`).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, output, run_cmd};

/// The target the shipped binary is built for.
pub(crate) const TARGET: &str = "x86_64-unknown-linux-musl";

/// What `dist` leaves in `target/dist`.
pub(crate) struct Artifacts {
    /// The static binary.
    pub(crate) binary: PathBuf,
    /// The Debian package.
    pub(crate) deb: PathBuf,
}

/// Builds, checks and packages leaktrace into `workspace/target/dist`.
pub(crate) fn build(workspace: &Path) -> Result<Artifacts> {
    run_cmd(cargo().args(["build", "--release", "--target", TARGET, "-p", "leaktrace"]))?;
    let built = workspace
        .join("target")
        .join(TARGET)
        .join("release/leaktrace");
    check_static(&built)?;
    let version_line = output(Command::new(&built).arg("--version"))?;
    let ebpf_id = version_line
        .split("eBPF object ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .with_context(|| format!("no eBPF build id in `{}`", version_line.trim()))?
        .to_owned();
    check_reproducible(workspace, &ebpf_id)?;
    let version = env!("CARGO_PKG_VERSION");

    let dist = workspace.join("target/dist");
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("clearing {}", dist.display()))?;
    }
    fs::create_dir_all(&dist)?;
    let binary = dist.join("leaktrace");
    fs::copy(&built, &binary)?;
    let deb = dist.join(format!("leaktrace_{version}_amd64.deb"));
    package(workspace, &binary, version, &deb)?;
    let sums = output(
        Command::new("sha256sum")
            .current_dir(&dist)
            .arg("leaktrace")
            .arg(deb.file_name().context("deb name")?),
    )?;
    fs::write(dist.join("SHA256SUMS"), &sums)?;
    eprintln!(
        "xtask: dist: {} ({}), {} and SHA256SUMS in {}",
        binary.display(),
        version_line.trim(),
        deb.display(),
        dist.display()
    );
    Ok(Artifacts { binary, deb })
}

/// Fails unless `binary` asks for no program interpreter and no shared library.
fn check_static(binary: &Path) -> Result<()> {
    let headers = output(Command::new("readelf").arg("-lW").arg(binary))?;
    let dynamic = output(Command::new("readelf").arg("-dW").arg(binary))?;
    ensure!(
        !headers.contains("INTERP") && !dynamic.contains("(NEEDED)"),
        "{} is not self-contained: it names an interpreter or shared libraries",
        binary.display()
    );
    Ok(())
}

/// Builds the eBPF object again from a copy of the tracked sources at another path, as
/// `tracer-user/build.rs` does through aya-build 0.1.3 (pinned; the same command and flags),
/// and fails unless it hashes to `ebpf_id`.
fn check_reproducible(workspace: &Path, ebpf_id: &str) -> Result<()> {
    let copy = workspace.join("target/dist-reproduce");
    if copy.exists() {
        fs::remove_dir_all(&copy)?;
    }
    let files = output(Command::new("git").current_dir(workspace).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]))?;
    for name in files.split('\0').filter(|n| !n.is_empty()) {
        let from = workspace.join(name);
        if !from.is_file() {
            continue;
        }
        let to = copy.join("src").join(name);
        fs::create_dir_all(to.parent().context("a path with no parent")?)?;
        fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    let target_dir = copy.join("target");
    run_cmd(
        Command::new("rustup")
            .current_dir(copy.join("src/tracer-ebpf"))
            .args([
                "run",
                "nightly",
                "cargo",
                "build",
                "-q",
                "--package",
                "tracer-ebpf",
                "-Z",
                "build-std=core",
                "--bins",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "--target-dir",
            ])
            .arg(&target_dir)
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
            )
            .env("CARGO_UNSTABLE_TRIM_PATHS", "true")
            .env("CARGO_PROFILE_RELEASE_TRIM_PATHS", "all")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )?;
    let object = target_dir.join("bpfel-unknown-none/release/tracer");
    let sum = output(Command::new("sha256sum").arg(&object))?;
    let again = sum.get(..16).unwrap_or_default();
    if again != ebpf_id {
        bail!(
            "the eBPF object is not reproducible: built again at {} it is {again}, the binary's is {ebpf_id}",
            copy.display()
        );
    }
    fs::remove_dir_all(&copy)?;
    eprintln!("xtask: dist: the eBPF object built again at another path is {again}, the same");
    Ok(())
}

/// Lays out the package's files under a fresh root and builds `deb` from it with dpkg-deb.
fn package(workspace: &Path, binary: &Path, version: &str, deb: &Path) -> Result<()> {
    let root = workspace.join("target/dist-deb");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let to = root.join(path);
        fs::create_dir_all(to.parent().context("a path with no parent")?)?;
        fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let generated = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new(binary).args(args).output()?;
        ensure!(out.status.success(), "leaktrace {} failed", args.join(" "));
        Ok(out.stdout)
    };
    put("usr/bin/leaktrace", &fs::read(binary)?, 0o755)?;
    let man = generated(&["man"])?;
    put("usr/share/man/man1/leaktrace.1", &man, 0o644)?;
    // Debian's man pages are gzipped; -n keeps the name and time out (reproducible).
    run_cmd(
        Command::new("gzip")
            .args(["-9n"])
            .arg(root.join("usr/share/man/man1/leaktrace.1")),
    )?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/leaktrace"),
        ("zsh", "usr/share/zsh/vendor-completions/_leaktrace"),
        ("fish", "usr/share/fish/vendor_completions.d/leaktrace.fish"),
    ] {
        put(path, &generated(&["completions", shell])?, 0o644)?;
    }
    let extras = workspace.join("xtask/dist");
    put(
        "lib/systemd/system/leaktrace@.service",
        &fs::read(extras.join("leaktrace@.service"))?,
        0o644,
    )?;
    put(
        "usr/share/doc/leaktrace/copyright",
        &fs::read(extras.join("copyright"))?,
        0o644,
    )?;
    let installed_kib = dir_bytes(&root)?.div_ceil(1024);
    let control = format!(
        "Package: leaktrace\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: leaktrace developers <leaktrace@invalid>\n\
         Installed-Size: {installed_kib}\n\
         Section: devel\n\
         Priority: optional\n\
         Description: live heap of a running process by call stack, through eBPF\n \
         leaktrace attaches eBPF uprobes to a running, unmodified process's allocators\n \
         (glibc, jemalloc, mimalloc, tcmalloc, Rust's, Go's heap profile) and reports what\n \
         it holds by call stack, with growth and leak verdicts, in a live view or as JSON,\n \
         folded stacks, pprof or text. The binary is static and needs root (or CAP_BPF\n \
         and CAP_PERFMON) and Linux 5.15 or newer.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    // The commit's time for every file and the archive: the same package from the same source.
    let epoch =
        output(
            Command::new("git")
                .current_dir(workspace)
                .args(["log", "-1", "--format=%ct"]),
        )
        .map(|t| t.trim().to_owned())
        .unwrap_or_else(|_| "0".to_owned());
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(deb)
            .env("SOURCE_DATE_EPOCH", &epoch),
    )?;
    fs::remove_dir_all(&root)?;
    Ok(())
}

/// The bytes of the files under `dir`, for the package's Installed-Size.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
