//! Builds the eBPF object (`tracer-ebpf`, binary `tracer`) with nightly for `bpfel-unknown-none`
//! and leaves it in `OUT_DIR/tracer`, where `probes.rs` embeds it; and names this build for
//! `--version`: the git commit (`LEAKTRACE_COMMIT` overrides it, for a build from a tarball) and
//! the eBPF object's build id, the first 16 hex digits of its SHA-256.
//!
//! The object is byte-for-byte reproducible from the same source and toolchain, wherever the
//! checkout and cargo's home are: the nested build trims the paths debug info records (cargo's
//! `trim-paths`, a nightly feature the nested build is free to use).
//!
//! `LEAKTRACE_SKIP_EBPF=1` writes an empty object instead, for jobs that only run pure unit tests
//! or lints on a machine without the eBPF toolchain; such a binary refuses to attach.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};
use sha2::{Digest as _, Sha256};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LEAKTRACE_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=LEAKTRACE_COMMIT");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("no manifest dir"))?);
    println!("cargo:rustc-env=LEAKTRACE_COMMIT={}", commit(&manifest_dir));
    let object = out_dir.join("tracer");
    if env::var_os("LEAKTRACE_SKIP_EBPF").is_some_and(|v| v == "1") {
        fs::write(&object, []).context("writing the empty eBPF object")?;
        println!("cargo:rustc-env=LEAKTRACE_EBPF_ID=none");
        return Ok(());
    }
    let ebpf_dir = manifest_dir.join("../tracer-ebpf");
    let common_dir = manifest_dir.join("../tracer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    // SAFETY: a build script is one thread; the variables reach the nested cargo aya-build runs.
    unsafe {
        env::set_var("CARGO_UNSTABLE_TRIM_PATHS", "true");
        env::set_var("CARGO_PROFILE_RELEASE_TRIM_PATHS", "all");
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let digest = Sha256::digest(&bytes);
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=LEAKTRACE_EBPF_ID={id}");
    Ok(())
}

/// The commit this source was checked out at (12 hex digits), or `unknown` outside git.
fn commit(manifest_dir: &Path) -> String {
    if let Some(given) = env::var_os("LEAKTRACE_COMMIT") {
        return given.to_string_lossy().into_owned();
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // Rebuilt when HEAD moves: HEAD itself, the branch it names, and packed refs.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = manifest_dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}
