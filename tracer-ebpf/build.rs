//! Rebuilds the eBPF object when `bpf-linker` changes: cargo does not track the linker, and an
//! object linked by an older bpf-linker can differ (BTF, relocations) from what a new one makes.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found: {err}"),
    }
}
