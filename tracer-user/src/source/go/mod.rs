//! A Go program's heap, read from its own memory profile: no probes, no signal.
//!
//! The Go runtime samples allocations (one every `runtime.MemProfileRate` bytes on average,
//! 512 KiB by default) and keeps, for every allocating call stack, a bucket on the list
//! `runtime.mbuckets`: a header `{next, allnext, typ, hash, size, nstk}`, the stack's `nstk`
//! return addresses, then a `memRecord` whose `active` cycle starts with the counts of sampled
//! allocations and frees as of the last completed garbage collection. A bucket holds one
//! allocation size (`size`), so its bytes are its counts times that size (Go 1.19 also keeps
//! the bytes, newer versions do not; the counts come first in every version). That is what
//! `runtime.MemProfile` and `net/http/pprof` serve; this source reads it from outside with
//! `process_vm_readv` once per interval, for a process that never imported either.
//!
//! Figures are estimates, scaled the way `runtime/pprof` scales a heap profile: a sampled
//! count `n` of average size `s` stands for `n / (1 - exp(-s / rate))`. In-use figures lag by
//! one GC cycle, as the runtime's own profile does.
//!
//! Everything read is checked (the bucket type, the stack depth, the list's length) and the
//! source stops, saying why, when the layout is not what it expects, rather than report
//! garbage.
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

pub mod binary;
pub mod memory;

use binary::{FoundBy, GoBinary};
use memory::Memory;

use crate::{
    error::Failure,
    heap::FastHash,
    report::Estimate,
    source::{Batch, Health, HealthKind, NewStack, Source, StackFigures, StackKey, Yields},
    target::Mapping,
};

/// What rows of the Go heap are labelled.
pub const GO_LABEL: &str = "go";

/// The Go runtime's own functions, hidden at the top of a stack as `runtime/pprof` hides them.
const RUNTIME_PREFIXES: &[&str] = &["runtime.", "internal/runtime/"];

/// `memProfile` in the runtime's `bucketType`.
const MEM_PROFILE: u64 = 1;
/// Deepest stack a bucket may hold: 32 frames up to Go 1.22, 128 by default since, up to 1024
/// with `GODEBUG=profstackdepth`.
const MAX_STACK: u64 = 1024;
/// Longest bucket list walked: one bucket per distinct allocating stack.
const MAX_BUCKETS: usize = 1 << 20;
/// Largest allocation size a bucket may count: the address space.
const MAX_OBJECT: u64 = 1 << 47;
/// Bytes of a bucket header: six words.
const HEADER_BYTES: usize = 48;
/// Bytes read of a `memRecord`: its active cycle's `allocs` and `frees`.
const RECORD_BYTES: usize = 16;

/// One bucket's header, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    allnext: u64,
    /// The size of every allocation it counts.
    size: u64,
    nstk: u64,
}

/// Checks a bucket header's words `[next, allnext, typ, hash, size, nstk]`.
fn parse_header(words: &[u64; 6]) -> Result<Header, String> {
    let [_, allnext, typ, _, size, nstk] = *words;
    if typ != MEM_PROFILE {
        return Err(format!(
            "a bucket of type {typ} on the memory profile's list"
        ));
    }
    if nstk == 0 || nstk > MAX_STACK {
        return Err(format!("a bucket with a stack of {nstk} frames"));
    }
    if size == 0 || size > MAX_OBJECT {
        return Err(format!("a bucket of {size}-byte allocations"));
    }
    Ok(Header {
        allnext,
        size,
        nstk,
    })
}

/// What a bucket of `size`-byte allocations whose active cycle counts `[allocs, frees]`
/// (sampled) stands for, scaled as `runtime/pprof` scales a heap profile sampled every `rate`
/// bytes.
fn figures([allocs, frees]: [u64; 2], size: u64, rate: u64) -> StackFigures {
    let live = allocs.saturating_sub(frees);
    let (total_allocs, total_bytes) = scale(allocs, allocs.saturating_mul(size), rate);
    let (live_allocs, live_bytes) = scale(live, live.saturating_mul(size), rate);
    StackFigures {
        live_bytes,
        live_allocs,
        total_allocs,
        total_bytes,
    }
}

/// `runtime/pprof`'s `scaleHeapSample`: `count` samples of `size` bytes in all, under Poisson
/// sampling every `rate` bytes, stand for `count / (1 - exp(-avg / rate))` allocations.
fn scale(count: u64, size: u64, rate: u64) -> (u64, u64) {
    if count == 0 || size == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, size);
    }
    let average = size as f64 / count as f64;
    let factor = 1.0 / -(-average / rate as f64).exp_m1();
    (
        (count as f64 * factor).round() as u64,
        (size as f64 * factor).round() as u64,
    )
}

/// How long a launched program may show a sampling rate of 0 before that is taken as final
/// (the runtime sets the rate while it starts).
const RATE_GRACE: Duration = Duration::from_secs(1);

/// What the rows' figures are, for every report.
const NOTE: &str = "in use as of the last completed garbage collection, allocated since the \
                    program started; sampled counts scaled as runtime/pprof scales a heap \
                    profile";

/// The Go runtime's heap profile of one process, as a [`Source`].
pub struct GoHeapSource {
    memory: Memory,
    binary: GoBinary,
    /// The executable's inode, to find where it is mapped.
    exe_inode: u64,
    /// Runtime address minus ELF address of the executable, once it is mapped.
    bias: Option<u64>,
    every: Duration,
    last_read: Option<Instant>,
    /// When the program was first seen mapped.
    first_seen: Option<Instant>,
    /// `--go-memprofile-rate`: the rate to write into the program.
    wanted_rate: Option<u64>,
    /// Buckets (by address) already yielded as stacks.
    known: HashSet<u64, FastHash>,
    label: Arc<str>,
    /// The last sampling rate read.
    rate: u64,
    buckets: u64,
    read_failures: u64,
    /// Why reading stopped for good.
    failed: Option<Stop>,
    stopped: bool,
}

/// Why a Go heap cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stop {
    /// Memory profiling is off and nobody asked to turn it on.
    ProfilingOff(String),
    /// What was read is not laid out as expected.
    Layout(String),
}

impl std::fmt::Debug for GoHeapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoHeapSource")
            .field("binary", &self.binary)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl GoHeapSource {
    /// The heap profile of process `pid` running `binary` (whose file has inode `exe_inode`),
    /// read every `every`; `wanted_rate` is written into the program as its sampling rate.
    pub fn new(
        pid: u32,
        binary: GoBinary,
        exe_inode: u64,
        every: Duration,
        wanted_rate: Option<u64>,
    ) -> Self {
        Self {
            memory: Memory::of(pid),
            binary,
            exe_inode,
            bias: None,
            every,
            last_read: None,
            first_seen: None,
            wanted_rate,
            known: HashSet::default(),
            label: Arc::from(GO_LABEL),
            rate: 0,
            buckets: 0,
            read_failures: 0,
            failed: None,
            stopped: false,
        }
    }

    /// The Go version the program was built with.
    pub fn version(&self) -> &str {
        &self.binary.version
    }

    /// For a running program: checks that its heap can be read now and applies
    /// `--go-memprofile-rate`. Returns what to tell the user; fails, with the way out, when
    /// memory profiling is off.
    pub fn prepare(&mut self, maps: &[Mapping]) -> Result<Vec<String>, Failure> {
        self.mappings_changed(maps);
        if self.bias.is_none() {
            return Err(Failure::runtime(
                "the Go program's executable is not mapped in the process",
                None,
            ));
        }
        let rate = self.read_rate().map_err(|err| {
            Failure::runtime(format!("reading runtime.MemProfileRate: {err}"), None)
        })?;
        let mut said = vec![format!(
            "{}: runtime.MemProfileRate is {rate}{}",
            self.binary.version,
            match self.binary.found_by {
                FoundBy::Symbols => "",
                FoundBy::Code => " (a stripped binary: its runtime variables found by code)",
            }
        )];
        match self.wanted_rate {
            Some(wanted) => {
                self.write_rate(wanted).map_err(|err| {
                    Failure::runtime(format!("writing runtime.MemProfileRate: {err}"), None)
                })?;
                said.push(format!(
                    "--go-memprofile-rate: wrote runtime.MemProfileRate = {wanted} into the \
                     process (was {rate}); allocations before now stay unsampled"
                ));
            }
            None if rate == 0 => return Err(profiling_off(&self.binary.version).into()),
            None => {}
        }
        Ok(said)
    }

    /// The program's `runtime.MemProfileRate` now.
    fn read_rate(&self) -> std::io::Result<u64> {
        let bias = self.bias.unwrap_or(0);
        self.memory
            .read_u64(self.binary.mem_profile_rate.wrapping_add(bias))
    }

    /// Sets `runtime.MemProfileRate`: the runtime samples at this rate from its next sampling
    /// decision on.
    fn write_rate(&mut self, rate: u64) -> std::io::Result<()> {
        let bias = self.bias.unwrap_or(0);
        self.memory
            .write_u64(self.binary.mem_profile_rate.wrapping_add(bias), rate)
    }

    /// Reads the whole bucket list into `out`.
    fn read(&mut self, out: &mut Batch) -> Result<(), String> {
        fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
            move |err| format!("reading {what}: {err}")
        }
        let bias = self.bias.unwrap_or(0);
        self.rate = self.read_rate().map_err(io("runtime.MemProfileRate"))?;
        let mut at = self
            .memory
            .read_u64(self.binary.mbuckets.wrapping_add(bias))
            .map_err(io("runtime.mbuckets"))?;
        let mut snapshot = Vec::new();
        let mut buf = Vec::new();
        while at != 0 {
            if snapshot.len() >= MAX_BUCKETS {
                return Err(format!("more than {MAX_BUCKETS} buckets: the list loops"));
            }
            let mut header = [0u8; HEADER_BYTES];
            self.memory
                .read(at, &mut header)
                .map_err(io("a profile bucket"))?;
            let words: [u64; 6] = std::array::from_fn(|i| word(&header, i));
            let header = parse_header(&words)?;
            let depth = usize::try_from(header.nstk).unwrap_or(0);
            buf.resize(depth * 8 + RECORD_BYTES, 0);
            self.memory
                .read(at + HEADER_BYTES as u64, &mut buf)
                .map_err(io("a bucket's stack"))?;
            let active = [word(&buf, depth), word(&buf, depth + 1)];
            if self.known.insert(at) {
                out.stacks.push(NewStack {
                    key: at as StackKey,
                    ips: (0..depth).map(|i| word(&buf, i)).collect(),
                    truncated: header.nstk >= max_depth(&self.binary.version),
                    incomplete: false,
                    allocator: Arc::clone(&self.label),
                    runtime_prefixes: RUNTIME_PREFIXES,
                });
            }
            snapshot.push((at as StackKey, figures(active, header.size, self.rate)));
            at = header.allnext;
        }
        self.buckets = snapshot.len() as u64;
        out.snapshot = Some(snapshot);
        Ok(())
    }

    /// Applies `--go-memprofile-rate` to a program that started with profiling off, or stops
    /// when it is off for good; true when the heap can be read now.
    fn rate_ready(&mut self) -> bool {
        let Ok(rate) = self.read_rate() else {
            return true; // read() counts the failure
        };
        if rate != 0 {
            return true;
        }
        if let Some(wanted) = self.wanted_rate {
            if self.write_rate(wanted).is_err() {
                self.read_failures += 1;
            }
            return true;
        }
        if self.first_seen.is_some_and(|t| t.elapsed() >= RATE_GRACE) {
            self.failed = Some(Stop::ProfilingOff(self.binary.version.clone()));
        }
        false
    }
}

/// The failure for a program whose memory profiling is off.
fn profiling_off(version: &str) -> ProfilingOff {
    ProfilingOff(version.to_owned())
}

/// A Go program with memory profiling off (`runtime.MemProfileRate` 0).
struct ProfilingOff(String);

impl From<ProfilingOff> for Failure {
    fn from(off: ProfilingOff) -> Self {
        Failure::usage(
            format!(
                "this Go program ({}) has memory profiling off (runtime.MemProfileRate is 0: \
                 the linker turns it off when nothing uses runtime/pprof), so its heap has no \
                 samples to read",
                off.0
            ),
            "add --go-memprofile-rate 524288 to turn it on from now (leaktrace writes the \
             rate into the process; allocations made before stay unseen)",
        )
    }
}

/// Deepest stack a bucket of a program built with Go `version` holds before it is cut: 32
/// frames before Go 1.23, 128 (the default `profstackdepth`) since.
fn max_depth(version: &str) -> u64 {
    let minor = version
        .strip_prefix("go1.")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m < 23 => 32,
        _ => 128,
    }
}

/// The little-endian word `i` of `bytes` (0 past the end).
fn word(bytes: &[u8], i: usize) -> u64 {
    bytes
        .get(i * 8..i * 8 + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

impl Source for GoHeapSource {
    fn name(&self) -> String {
        format!(
            "the Go runtime's heap profile ({}, read every {:.1}s)",
            self.binary.version,
            self.every.as_secs_f64()
        )
    }

    fn yields(&self) -> Yields {
        Yields::Snapshots
    }

    fn mappings_changed(&mut self, maps: &[Mapping]) {
        let Some(lowest) = maps
            .iter()
            .filter(|m| m.inode == self.exe_inode)
            .min_by_key(|m| m.offset)
        else {
            return;
        };
        self.bias = Some(
            lowest
                .start
                .wrapping_sub(lowest.offset)
                .wrapping_sub(self.binary.load_delta),
        );
        self.first_seen.get_or_insert_with(Instant::now);
    }

    fn poll(&mut self, out: &mut Batch) {
        if self.stopped || self.failed.is_some() || self.bias.is_none() {
            return;
        }
        if self.last_read.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last_read = Some(Instant::now());
        if !self.rate_ready() {
            return;
        }
        match self.read(out) {
            Ok(()) => {}
            Err(why) if why.starts_with("reading") => {
                // The process may be exiting: counted, tried again next time.
                self.read_failures += 1;
                out.clear();
            }
            Err(why) => {
                self.failed = Some(Stop::Layout(why));
                out.clear();
            }
        }
    }

    fn stop(&mut self, _cutoff_ns: u64) {
        self.stopped = true;
    }

    fn health(&self) -> Vec<Health> {
        vec![
            Health::new("go_buckets", self.buckets, HealthKind::Info),
            Health::new("go_memprofile_rate", self.rate, HealthKind::Info),
            Health::new("go_read_failures", self.read_failures, HealthKind::Degraded),
        ]
    }

    fn failed(&self) -> Option<Failure> {
        match self.failed.as_ref()? {
            Stop::ProfilingOff(version) => Some(profiling_off(version).into()),
            Stop::Layout(why) => Some(Failure::runtime(
                format!(
                    "the Go runtime's heap profile ({}) is not laid out as leaktrace expects: \
                     {why}",
                    self.binary.version
                ),
                Some("leaktrace reads Go 1.18 and later; please report the Go version".into()),
            )),
        }
    }

    fn estimate(&self) -> Option<Estimate> {
        Some(Estimate {
            allocator: GO_LABEL.to_owned(),
            source: format!("the Go runtime's heap profile ({})", self.binary.version),
            sample_bytes: self.rate,
            note: NOTE.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked() {
        let ok = parse_header(&[0, 0x1000, 1, 7, 64, 12]).expect("a memory bucket");
        assert_eq!(
            ok,
            Header {
                allnext: 0x1000,
                size: 64,
                nstk: 12
            }
        );
        assert!(
            parse_header(&[0, 0, 2, 7, 64, 12]).is_err(),
            "a block bucket"
        );
        assert!(parse_header(&[0, 0, 1, 7, 64, 0]).is_err(), "no stack");
        assert!(parse_header(&[0, 0, 1, 7, 64, 5000]).is_err(), "too deep");
        assert!(parse_header(&[0, 0, 1, 7, 0, 12]).is_err(), "no size");
        assert!(
            parse_header(&[0, 0, 1, 7, u64::MAX, 12]).is_err(),
            "no real size"
        );
    }

    #[test]
    fn stacks_are_cut_at_the_depth_of_their_go_version() {
        assert_eq!(max_depth("go1.19.8"), 32);
        assert_eq!(max_depth("go1.22"), 32);
        assert_eq!(max_depth("go1.23.0"), 128);
        assert_eq!(max_depth("go1.27.3"), 128);
        assert_eq!(max_depth("devel"), 128);
    }

    #[test]
    fn words_past_the_end_are_zero() {
        let bytes = [1, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!((word(&bytes, 0), word(&bytes, 1)), (1, 0));
    }

    #[test]
    fn figures_are_scaled_as_runtime_pprof_scales_them() {
        // 10 sampled allocations of 1 KiB at the default rate stand for about 512 each
        let (count, bytes) = scale(10, 10 * 1024, 512 * 1024);
        let factor = 1.0 / (1.0 - (-1024.0f64 / (512.0 * 1024.0)).exp());
        assert_eq!(count, (10.0 * factor).round() as u64);
        assert_eq!(bytes, (10.0 * 1024.0 * factor).round() as u64);
        assert!((5100..5160).contains(&count), "{count}");
        // At rate 1 every allocation is recorded: no scaling
        assert_eq!(scale(3, 300, 1), (3, 300));
        assert_eq!(scale(0, 0, 512), (0, 0));
        // In use is what was allocated and not yet freed, scaled the same way
        let f = figures([10, 4], 1024, 1);
        assert_eq!(
            (f.live_allocs, f.live_bytes, f.total_allocs, f.total_bytes),
            (6, 6 * 1024, 10, 10 * 1024)
        );
    }
}
