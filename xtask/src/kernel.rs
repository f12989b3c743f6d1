//! `cargo xtask test --kernel debian|ubuntu-22.04|PATH`: end-to-end tests inside another kernel.
//!
//! Production hosts run distribution kernels (Debian 12's is 6.1), not the one this machine
//! runs. This boots a kernel under qemu with TCG (no KVM needed: on these machines qemu's KVM
//! path hangs at boot), with the host's filesystem shared read-only over virtio-9p and tmpfs
//! overlays in the guest for what the tests write, and runs a subset of the end-to-end test
//! binary in it as root. The tests' output comes back over a virtio serial port, with the
//! binary's exit status on a line of its own.
//!
//! `ubuntu-22.04` is Ubuntu 22.04's 5.15 (`linux-image-unsigned-5.15.0-N-generic` and its
//! `linux-modules`, fetched from Ubuntu's archive with curl and unpacked): a kernel without
//! `bpf_loop`, where only [`OLD_SUBSET`] runs.
//!
//! `debian-sid` is the kernel of Debian's unstable suite (the newest Debian packages), fetched
//! the same way from Debian's archive: a current kernel to compare with under the same
//! emulation (`bench --kernel`).
//!
//! `debian-13` is Debian 13's (trixie's) stock kernel, 6.12, fetched the same way: a kernel
//! from 6.10 to 6.14, which refuses a global function call with preemption disabled, so the
//! unwinder's functions load static there; the [`SUBSET`] runs in that form.
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
/// pointers, unwinding, sampling, a target exiting mid-trace, and detaching without a trace.
/// (The live view is the same on every kernel: it runs on the host only, to keep CI in its 30
/// minutes.)
pub(crate) const SUBSET: &[&str] = &[
    "c_fixture::leaks_are_reported_exactly_by_stack_and_churn_is_not",
    "c_fixture::every_entry_point_is_accounted",
    "lifecycle::launch_mode_traces_from_the_first_instruction",
    "lifecycle::target_exiting_mid_trace_ends_with_a_symbolized_report",
    "unwinding::twelve_frames_without_frame_pointers_and_the_fp_negative_control",
    "unwinding::the_frame_pointer_walk_reads_past_its_copy_and_behind_return_probes",
    "sampling::realloc_releases_sampled_blocks_with_and_without_a_session",
    "faults::leaktrace_killed_leaves_no_program_and_no_probe_in_the_target",
    "kernels::",
];

/// The tests run inside Debian's newest kernel (`debian-sid`, preemptible: `PREEMPT_LAZY`):
/// what the kernel offers, and threads preempted inside the programs (see
/// `kernels::more_threads_than_cpus_leave_the_kernel_clean_and_the_figures_exact`).
pub(crate) const NEWEST_SUBSET: &[&str] = &["kernels::"];

/// The tests run inside a kernel older than 5.17 (no `bpf_loop`, so no table unwinding): the
/// refusal naming `--unwind fp`, and frame pointers traced exactly.
pub(crate) const OLD_SUBSET: &[&str] = &["kernels::"];

/// Modules the guest loads, in order, for the shared root (9p over virtio), the overlays and
/// the output port, where the kernel has them as modules (those built in are skipped).
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

/// Where Ubuntu 22.04's kernel packages are published.
const UBUNTU_ARCHIVE: &str = "http://archive.ubuntu.com/ubuntu";

/// Fetches and unpacks Ubuntu 22.04's newest 5.15 kernel (`linux-image-unsigned-*-generic` and
/// its `linux-modules`) into `dir` (once). 5.15 lacks `bpf_loop`: the kernel where leaktrace
/// refuses table unwinding and runs with frame pointers.
fn ubuntu_kernel(dir: &Path) -> Result<Kernel> {
    let index = package_index(dir, UBUNTU_ARCHIVE, "jammy-updates", "ubuntu-jammy")?;
    let (abi, files) = newest_ubuntu_kernel(&index)
        .context("the Ubuntu 22.04 package index names no linux-image-unsigned-5.15 kernel")?;
    let unpacked = dir.join(format!("ubuntu-{abi}"));
    fetch_and_unpack(dir, UBUNTU_ARCHIVE, &files, &unpacked)?;
    unpacked_kernel(&unpacked)
}

/// In an Ubuntu `Packages` index: the newest 5.15 generic kernel's ABI (`5.15.0-208`) and the
/// archive paths of its image and modules packages.
fn newest_ubuntu_kernel(index: &str) -> Option<(String, Vec<String>)> {
    let files = index_field(index, "Filename");
    let abi_number = |abi: &str| abi.rsplit('-').next().and_then(|n| n.parse::<u32>().ok());
    let abi = files
        .keys()
        .filter_map(|p| {
            p.strip_prefix("linux-image-unsigned-")?
                .strip_suffix("-generic")
                .filter(|abi| abi.starts_with("5.15.0-"))
        })
        .filter(|abi| files.contains_key(&format!("linux-modules-{abi}-generic")))
        .max_by_key(|abi| abi_number(abi))?
        .to_owned();
    let wanted = [
        format!("linux-image-unsigned-{abi}-generic"),
        format!("linux-modules-{abi}-generic"),
    ];
    let paths = wanted
        .iter()
        .map(|p| files.get(p).cloned())
        .collect::<Option<Vec<_>>>()?;
    Some((abi, paths))
}

/// Where Debian's packages are published.
const DEBIAN_ARCHIVE: &str = "http://deb.debian.org/debian";

/// Fetches the `Packages` index of `suite` (main, amd64) from `archive` into `dir` (once).
fn package_index(dir: &Path, archive: &str, suite: &str, name: &str) -> Result<String> {
    let index = dir.join(format!("{name}-Packages"));
    if !index.is_file() {
        std::fs::create_dir_all(dir)?;
        run_cmd(
            Command::new("sh")
                .arg("-c")
                .arg("curl -fsS \"$0/dists/$1/main/binary-amd64/Packages.xz\" | xz -d > \"$2.part\" && mv \"$2.part\" \"$2\"")
                .arg(archive)
                .arg(suite)
                .arg(&index),
        )?;
    }
    Ok(std::fs::read_to_string(&index)?)
}

/// Downloads the archive paths `files` and unpacks them all into `unpacked` (once).
fn fetch_and_unpack(dir: &Path, archive: &str, files: &[String], unpacked: &Path) -> Result<()> {
    let done = unpacked.join(".unpacked");
    if done.is_file() {
        return Ok(());
    }
    for file in files {
        let name = file.rsplit('/').next().unwrap_or(file);
        let deb = dir.join(name);
        run_cmd(
            Command::new("curl")
                .args(["-fsS", "-o"])
                .arg(&deb)
                .arg(format!("{archive}/{file}")),
        )?;
        run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(unpacked))?;
        std::fs::remove_file(&deb)?;
    }
    std::fs::write(done, "")?;
    Ok(())
}

/// One field of every stanza of a `Packages` index: package name to value.
fn index_field(index: &str, field: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut package = None;
    let prefix = format!("{field}: ");
    for line in index.lines() {
        if let Some(name) = line.strip_prefix("Package: ") {
            package = Some(name.trim().to_owned());
        } else if let (Some(name), Some(value)) = (&package, line.strip_prefix(&prefix)) {
            out.insert(name.clone(), value.trim().to_owned());
        }
    }
    out
}

/// In a Debian `Packages` index: the archive paths of the kernel `linux-image-amd64` depends
/// on, with the packages it splits its image and modules into (`linux-binary-*`,
/// `linux-modules-*`, in newer Debian).
fn debian_current_kernel(index: &str) -> Option<Vec<String>> {
    let files = index_field(index, "Filename");
    let depends = index_field(index, "Depends");
    let names = |package: &str| -> Vec<String> {
        depends
            .get(package)
            .map(|d| {
                d.split(',')
                    .filter_map(|dep| dep.split_whitespace().next())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let image = names("linux-image-amd64")
        .into_iter()
        .find(|n| n.starts_with("linux-image-"))?;
    let mut packages = vec![image.clone()];
    packages.extend(
        names(&image)
            .into_iter()
            .filter(|n| n.starts_with("linux-binary-") || n.starts_with("linux-modules-")),
    );
    packages.iter().map(|p| files.get(p).cloned()).collect()
}

/// Fetches and unpacks the kernel of Debian's `suite` (`sid`: the newest) into `dir` (once).
fn debian_suite_kernel(dir: &Path, suite: &str) -> Result<Kernel> {
    let index = package_index(dir, DEBIAN_ARCHIVE, suite, &format!("debian-{suite}"))?;
    let files = debian_current_kernel(&index)
        .with_context(|| format!("Debian {suite}'s index names no linux-image-amd64 kernel"))?;
    let unpacked = dir.join(format!("debian-{suite}"));
    fetch_and_unpack(dir, DEBIAN_ARCHIVE, &files, &unpacked)?;
    unpacked_kernel(&unpacked)
}

/// The kernel unpacked into `root`: `boot/vmlinuz-VERSION`, or (newer Debian) the image beside
/// its modules in `usr/lib/modules/VERSION/vmlinuz`.
fn unpacked_kernel(root: &Path) -> Result<Kernel> {
    if root.join("boot").is_dir() {
        return kernel_in(&root.join("boot"));
    }
    let modules = std::fs::read_dir(root.join("usr/lib/modules"))
        .with_context(|| format!("no boot/ or usr/lib/modules/ in {}", root.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("vmlinuz").is_file())
        .with_context(|| format!("no kernel image in {}/usr/lib/modules", root.display()))?;
    let version = modules
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("a modules directory without a name")?;
    Ok(Kernel {
        image: modules.join("vmlinuz"),
        modules,
        version,
    })
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
    // Newer Debian packages install modules under /usr/lib (the merged /usr).
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| root.join(dir).join(&version))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| root.join("lib/modules").join(&version));
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
    // Built into some kernels (Ubuntu's has virtio's PCI transport and console built in).
    let builtin =
        std::fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    for name in MODULES {
        let Some(found) = find_module(&kernel.modules, name) else {
            if builtin
                .lines()
                .any(|l| module_name(l).as_deref() == Some(name))
            {
                continue;
            }
            // Older kernels lack some (virtio_pci_legacy_dev came in 5.16); a boot that
            // needed it says so (the guest prints which mount failed).
            eprintln!(
                "xtask: module {name} is neither in {} nor built in; booting without it",
                kernel.modules.display()
            );
            continue;
        };
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

/// The module named by a `modules.builtin` line (`kernel/fs/9p/9p.ko`), with `-` read as `_`.
fn module_name(line: &str) -> Option<String> {
    let file = line.trim().rsplit('/').next()?;
    Some(file.strip_suffix(".ko")?.replace('-', "_"))
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

/// The kernel `which` names (`debian`, `debian-13`, `debian-sid`, `ubuntu-22.04`, or a kernel
/// image), fetched into `dir` when needed.
fn kernel_named(which: &str, dir: &Path) -> Result<Kernel> {
    match which {
        "debian" => debian_kernel(dir),
        "debian-sid" => debian_suite_kernel(dir, "sid"),
        "debian-13" => debian_suite_kernel(dir, "trixie"),
        "ubuntu-22.04" => ubuntu_kernel(dir),
        path => kernel_in(Path::new(path)),
    }
}

/// Boots kernel `which` and runs the shell `script` in it as root, in the workspace, with the
/// host's files read-only and `/tmp`, `/root`, `/var/tmp` and `target` writable (in the guest
/// only); returns the kernel's version, the script's exit status and its output.
fn run_in(
    workspace: &Path,
    which: &str,
    name: &str,
    script: &str,
    timeout: Duration,
) -> Result<(String, i32, String)> {
    let dir = workspace.join("target/kernels");
    std::fs::create_dir_all(&dir)?;
    let kernel = kernel_named(which, &dir)?;
    let initramfs = initramfs(&kernel, &dir)?;
    let path = dir.join(format!("{name}-{}.sh", kernel.version));
    std::fs::write(
        &path,
        format!("uname -r\ncd {}\n{script}\n", workspace.display()),
    )?;
    let target = workspace.join("target");
    let (code, text) = boot(
        &kernel,
        &initramfs,
        &path,
        &[
            Path::new("/tmp"),
            Path::new("/root"),
            Path::new("/var/tmp"),
            &target,
        ],
        timeout,
    )?;
    Ok((kernel.version, code, text))
}

/// Runs the end-to-end tests named by `filters` (when empty: the [`SUBSET`], [`OLD_SUBSET`] for
/// Ubuntu's 5.15, [`NEWEST_SUBSET`] for Debian's newest) inside `which` (`debian`, `debian-13`, `debian-sid`, `ubuntu-22.04`, or a kernel
/// image), with `e2e` the built test binary and `leaktrace` the binary under test.
pub(crate) fn test(
    workspace: &Path,
    which: &str,
    e2e: &Path,
    leaktrace: &Path,
    filters: &[String],
) -> Result<()> {
    let filters: Vec<String> = if filters.is_empty() {
        let subset = match which {
            "ubuntu-22.04" => OLD_SUBSET,
            "debian-sid" => NEWEST_SUBSET,
            _ => SUBSET,
        };
        subset.iter().map(|s| (*s).to_owned()).collect()
    } else {
        filters.to_vec()
    };
    eprintln!(
        "xtask: booting {which} under qemu (TCG) for {} end-to-end test filters",
        filters.len()
    );
    let started = Instant::now();
    let (version, code, text) = run_in(
        workspace,
        which,
        "run",
        &format!(
            "export LEAKTRACE_BIN={}\nexec {} --test-threads 1 {}",
            leaktrace.display(),
            e2e.display(),
            filters.join(" ")
        ),
        // A test that hangs (a kernel fault kills a target's thread mid-command) ends here.
        Duration::from_secs(10 * 60),
    )?;
    println!("{text}");
    eprintln!(
        "xtask: {version} finished in {:.0} s with status {code}",
        started.elapsed().as_secs_f64()
    );
    if code != 0 {
        bail!("the end-to-end tests failed inside {version}");
    }
    if !text.contains("test result: ok") || text.contains(" 0 passed") {
        bail!("no test ran inside {version}");
    }
    Ok(())
}

/// Runs `cargo xtask bench`'s measurements (this `xtask` binary, already built, with peers
/// left out: bcc would compile under emulation for minutes) inside kernel `which`.
pub(crate) fn bench(workspace: &Path, which: &str, reps: usize, ops: u64) -> Result<()> {
    let xtask = std::env::current_exe()?;
    eprintln!("xtask: booting {which} under qemu (TCG) for the bench");
    let (version, code, text) = run_in(
        workspace,
        which,
        "bench",
        &format!(
            "exec {} bench-inside --reps {reps} --ops {ops}",
            xtask.display()
        ),
        Duration::from_secs(60 * 60),
    )?;
    println!("{text}");
    if code != 0 {
        bail!("the bench failed inside {version}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_ubuntu_kernel_with_its_modules_is_picked() {
        // Given an index where the newest image has no modules package yet, and a 6.8 HWE kernel
        let index = "\
Package: linux-image-unsigned-5.15.0-99-generic
Filename: pool/main/l/linux/linux-image-unsigned-5.15.0-99-generic_5.15.0-99.1_amd64.deb

Package: linux-modules-5.15.0-99-generic
Filename: pool/main/l/linux/linux-modules-5.15.0-99-generic_5.15.0-99.1_amd64.deb

Package: linux-image-unsigned-5.15.0-100-generic
Filename: pool/main/l/linux/linux-image-unsigned-5.15.0-100-generic_5.15.0-100.1_amd64.deb

Package: linux-modules-5.15.0-100-generic
Filename: pool/main/l/linux/linux-modules-5.15.0-100-generic_5.15.0-100.1_amd64.deb

Package: linux-image-unsigned-5.15.0-101-generic
Filename: pool/main/l/linux/linux-image-unsigned-5.15.0-101-generic_5.15.0-101.1_amd64.deb

Package: linux-image-unsigned-6.8.0-40-generic
Filename: pool/main/l/linux-hwe-6.8/linux-image-unsigned-6.8.0-40-generic_6.8.0-40.1_amd64.deb
";
        // Then the newest 5.15 with both packages wins (100 over 99 by number, not by text)
        let (abi, files) = newest_ubuntu_kernel(index).expect("a kernel");
        assert_eq!(abi, "5.15.0-100");
        assert_eq!(
            files,
            [
                "pool/main/l/linux/linux-image-unsigned-5.15.0-100-generic_5.15.0-100.1_amd64.deb",
                "pool/main/l/linux/linux-modules-5.15.0-100-generic_5.15.0-100.1_amd64.deb",
            ]
        );
    }

    #[test]
    fn builtin_module_lines_name_the_module() {
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko").as_deref(),
            Some("virtio_pci")
        );
        assert_eq!(
            module_name("kernel/drivers/char/virtio-console.ko").as_deref(),
            Some("virtio_console")
        );
        assert_eq!(module_name("modules.order"), None);
    }
}
