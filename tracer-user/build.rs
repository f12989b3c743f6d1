//! Builds the eBPF object (`tracer-ebpf`, binary `tracer`) with nightly for `bpfel-unknown-none`
//! and leaves it in `OUT_DIR/tracer`, where `probes.rs` embeds it.
//!
//! `LEAKTRACE_SKIP_EBPF=1` writes an empty object instead, for jobs that only run pure unit tests
//! or lints on a machine without the eBPF toolchain; such a binary refuses to attach.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LEAKTRACE_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    if env::var_os("LEAKTRACE_SKIP_EBPF").is_some_and(|v| v == "1") {
        fs::write(out_dir.join("tracer"), []).context("writing the empty eBPF object")?;
        return Ok(());
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("no manifest dir"))?);
    let ebpf_dir = manifest_dir.join("../tracer-ebpf");
    let common_dir = manifest_dir.join("../tracer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
