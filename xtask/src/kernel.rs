//! `cargo xtask test --kernel debian|PATH`: end-to-end tests inside another kernel.
//!
//! Production hosts run distribution kernels (Debian 12's is 6.1), not the one this machine
//! runs. This boots a kernel under qemu with TCG (no KVM needed: on these machines qemu's KVM
//! path hangs at boot), with the host's filesystem shared read-only over virtio-9p and tmpfs
//! overlays in the guest for what the tests write, and runs a subset of the end-to-end test
//! binary in it as root. The tests' output comes back over a virtio serial port, with the
//! binary's exit status on a line of its own.
//!
//! `debian` is Debian 12's stock kernel: the package `linux-image-amd64` depends on, fetched
//! with `apt-get download` and unpacked with `dpkg -x` (never installed). `PATH` is a kernel
//! image (`vmlinuz-VERSION`) beside a `lib/modules/VERSION` tree, as a package unpacks.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{output, run_cmd};

/// The tests run inside the guest: attach, launch, exact figures on a program without frame
/// pointers, unwinding, sampling, the live view's headless path, and detaching without a trace.
pub(crate) const SUBSET: &[&str] = &[
    "c_fixture::leaks_are_reported_exactly_by_stack_and_churn_is_not",
    "c_fixture::every_entry_point_is_accounted",
    "lifecycle::launch_mode_traces_from_the_first_instruction",
    "lifecycle::target_exiting_mid_trace_ends_with_a_symbolized_report",
    "unwinding::twelve_frames_without_frame_pointers_and_the_fp_negative_control",
    "sampling::realloc_releases_sampled_blocks_with_and_without_a_session",
    "live_view::keys_sort_filter_baseline_export_and_quit",
    "faults::leaktrace_killed_leaves_no_program_and_no_probe_in_the_target",
];

/// Modules the guest loads, in order, for the shared root (9p over virtio), the overlays and
/// the output port. Everything else it needs is built into Debian's kernel.
const MODULES: &[&str] = &[
    "netfs",
    "fscache",
    "9pnet",
    "9p",
    "virtio_ring",
    "virtio",
    "9pnet_virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "overlay",
    "virtio_console",
];

/// What marks the guest command's exit status in its output.
const EXIT_MARK: &str = "LEAKTRACE_GUEST_EXIT=";

/// The guest's first process: loads the modules, mounts the host's root read-only with a tmpfs
/// overlay on each directory in `lt.rw=`, mounts the kernel's filesystems, runs the script in
/// `lt.run=` as root with its output on the `lt.out` port, and powers off.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in $($B cat /modules/order); do $B insmod /modules/$m.ko || echo "init: insmod $m failed"; done
N=/newroot
$B mkdir -p $N
$B mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot $N || { echo "init: no host root"; $B poweroff -f; }
$B mount -t proc proc $N/proc
$B mount -t sysfs sys $N/sys
$B mount -t devtmpfs dev $N/dev
$B mkdir -p $N/dev/pts 2>/dev/null
$B mount -t devpts devpts $N/dev/pts
$B mount -t tmpfs tmpfs $N/run
$B mount -t bpf bpf $N/sys/fs/bpf
$B mount -t debugfs debugfs $N/sys/kernel/debug
$B mount -t tracefs tracefs $N/sys/kernel/tracing 2>/dev/null
$B mkdir -p /overlays
$B mount -t tmpfs tmpfs /overlays
arg() { $B sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
i=0
for d in $(arg lt.rw | $B tr , ' '); do
  i=$((i + 1))
  $B mkdir -p /overlays/$i/u /overlays/$i/w
  $B mount -t overlay overlay -o lowerdir=$N$d,upperdir=/overlays/$i/u,workdir=/overlays/$i/w $N$d || echo "init: no overlay on $d"
done
OUT=/dev/console
for name in /sys/class/virtio-ports/*/name; do
  [ "$($B cat $name 2>/dev/null)" = lt.out ] && OUT=/dev/$($B basename $($B dirname $name))
done
$B chroot $N /usr/bin/env -i PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb /bin/sh "$(arg lt.run)" </dev/null >$OUT 2>&1
echo "LEAKTRACE_GUEST_EXIT=$?" >$OUT
$B sync
$B poweroff -f
"#;

/// A kernel to boot: its image and its modules.
struct Kernel {
    image: PathBuf,
    modules: PathBuf,
    version: String,
}

/// Fetches and unpacks Debian 12's stock kernel into `dir` (once).
fn debian_kernel(dir: &Path) -> Result<Kernel> {
    let depends = match output(Command::new("apt-cache").args(["depends", "linux-image-amd64"])) {
        Ok(text) if text.contains("Depends: ") => text,
        // A machine whose package lists were never fetched.
        _ => {
            run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
            output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?
        }
    };
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .context("apt-cache names no kernel package for linux-image-amd64")?
        .to_owned();
    let unpacked = dir.join(&package);
    if !unpacked.join("boot").is_dir() {
        std::fs::create_dir_all(dir)?;
        run_cmd(
            Command::new("apt-get")
                .args(["download", "-q", &package])
                .current_dir(dir),
        )?;
        let deb = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&package) && n.ends_with(".deb"))
            })
            .context("apt-get download left no .deb")?;
        run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    kernel_in(&unpacked.join("boot"))
}

/// The kernel whose image is in `boot` (a `vmlinuz-VERSION` file, or that file itself), with
/// its modules in `../lib/modules/VERSION`.
fn kernel_in(path: &Path) -> Result<Kernel> {
    let image = if path.is_dir() {
        std::fs::read_dir(path)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no vmlinuz-VERSION in {}", path.display()))?
    } else {
        path.to_path_buf()
    };
    let version = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .with_context(|| format!("{} is not named vmlinuz-VERSION", image.display()))?
        .to_owned();
    let root = image
        .parent()
        .and_then(Path::parent)
        .context("the kernel image has no parent directory")?;
    let modules = root.join("lib/modules").join(&version);
    if !modules.is_dir() {
        bail!(
            "no modules for {version} at {} (give the image of an unpacked kernel package)",
            modules.display()
        );
    }
    Ok(Kernel {
        image,
        modules,
        version,
    })
}

/// Builds the guest's initramfs: busybox, the modules (decompressed), and [`INIT`].
fn initramfs(kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    let tree = dir.join(format!("initramfs-{}", kernel.version));
    let _ = std::fs::remove_dir_all(&tree);
    for sub in ["bin", "dev", "proc", "sys", "modules"] {
        std::fs::create_dir_all(tree.join(sub))?;
    }
    // The guest has no libraries of its own at this point: busybox must be the static one
    // (busybox-static), not Debian's dynamically linked busybox package.
    let linked = Command::new("ldd").arg("/bin/busybox").output()?;
    if linked.status.success() {
        run_cmd(Command::new("apt-get").args(["install", "-y", "-q", "busybox-static"]))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copying busybox")?;
    let mut order = String::new();
    for name in MODULES {
        let found = find_module(&kernel.modules, name)
            .with_context(|| format!("module {name} not in {}", kernel.modules.display()))?;
        let out = tree.join(format!("modules/{name}.ko"));
        let text = found.to_string_lossy();
        if text.ends_with(".xz") || text.ends_with(".zst") {
            let tool = if text.ends_with(".xz") { "xz" } else { "zstd" };
            let data = Command::new(tool).args(["-dc"]).arg(&found).output()?;
            if !data.status.success() {
                bail!("{tool} -dc {} failed", found.display());
            }
            std::fs::write(&out, data.stdout)?;
        } else {
            std::fs::copy(&found, &out)?;
        }
        order.push_str(name);
        order.push('\n');
    }
    std::fs::write(tree.join("modules/order"), order)?;
    let init = tree.join("init");
    std::fs::write(&init, INIT)?;
    run_cmd(Command::new("chmod").arg("755").arg(&init))?;
    let archive = dir.join(format!("initramfs-{}.cpio.gz", kernel.version));
    run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg("find . | busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1 > \"$0\"")
            .arg(&archive)
            .current_dir(&tree),
    )?;
    Ok(archive)
}

/// The module file `name` (`name.ko`, maybe compressed) under `dir`.
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name) {
                return Some(found);
            }
        } else if let Some(file) = path.file_name().and_then(|n| n.to_str())
            && [".ko", ".ko.xz", ".ko.zst"]
                .iter()
                .any(|ext| file == format!("{name}{ext}"))
        {
            return Some(path);
        }
    }
    None
}

/// Boots `kernel` and runs `script` (a host path, seen at the same path in the guest) in it;
/// returns the script's exit status and its output.
fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    script: &Path,
    rw: &[&Path],
    timeout: Duration,
) -> Result<(i32, String)> {
    let out = script.with_extension("out");
    let console = script.with_extension("console");
    let rw: Vec<String> = rw.iter().map(|p| p.display().to_string()).collect();
    let started = Instant::now();
    let status = Command::new("timeout")
        .arg(timeout.as_secs().to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "2G",
            "-smp",
            "2",
        ])
        .args([
            "-machine",
            "q35",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet loglevel=4 lt.run={} lt.rw={}",
            script.display(),
            rw.join(",")
        ))
        .args([
            "-fsdev",
            "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        ])
        .arg("-chardev")
        .arg(format!("file,id=console,path={}", console.display()))
        .args(["-serial", "chardev:console"])
        .arg("-chardev")
        .arg(format!("file,id=out,path={}", out.display()))
        .args([
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtserialport,chardev=out,name=lt.out",
        ])
        .status()
        .context("starting qemu-system-x86_64")?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let code = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(EXIT_MARK))
        .and_then(|c| c.trim().parse().ok());
    let Some(code) = code else {
        let console = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(20).collect();
        bail!(
            "the guest ({}) gave no exit status after {:.0} s (qemu: {status}); its console ended:\n{}\n{text}",
            kernel.version,
            started.elapsed().as_secs_f64(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    let body: Vec<&str> = text.lines().filter(|l| !l.starts_with(EXIT_MARK)).collect();
    Ok((code, body.join("\n")))
}

/// Runs the end-to-end tests named by `filters` (the [`SUBSET`] when empty) inside `which`
/// (`debian`, or a kernel image), with `e2e` the built test binary and `leaktrace` the binary
/// under test.
pub(crate) fn test(
    workspace: &Path,
    which: &str,
    e2e: &Path,
    leaktrace: &Path,
    filters: &[String],
) -> Result<()> {
    let dir = workspace.join("target/kernels");
    std::fs::create_dir_all(&dir)?;
    let kernel = if which == "debian" {
        debian_kernel(&dir)?
    } else {
        kernel_in(Path::new(which))?
    };
    let initramfs = initramfs(&kernel, &dir)?;
    let filters: Vec<String> = if filters.is_empty() {
        SUBSET.iter().map(|s| (*s).to_owned()).collect()
    } else {
        filters.to_vec()
    };
    let script = dir.join(format!("run-{}.sh", kernel.version));
    std::fs::write(
        &script,
        format!(
            "uname -r\ncd {}\nexport LEAKTRACE_BIN={}\nexec {} --test-threads 1 {}\n",
            workspace.display(),
            leaktrace.display(),
            e2e.display(),
            filters.join(" ")
        ),
    )?;
    eprintln!(
        "xtask: booting {} under qemu (TCG) for {} end-to-end test filters",
        kernel.version,
        filters.len()
    );
    let started = Instant::now();
    let target = workspace.join("target");
    let (code, text) = boot(
        &kernel,
        &initramfs,
        &script,
        &[
            Path::new("/tmp"),
            Path::new("/root"),
            Path::new("/var/tmp"),
            &target,
        ],
        Duration::from_secs(20 * 60),
    )?;
    println!("{text}");
    eprintln!(
        "xtask: {} finished in {:.0} s with status {code}",
        kernel.version,
        started.elapsed().as_secs_f64()
    );
    if code != 0 {
        bail!("the end-to-end tests failed inside {}", kernel.version);
    }
    if !text.contains("test result: ok") || text.contains(" 0 passed") {
        bail!("no test ran inside {}", kernel.version);
    }
    Ok(())
}
