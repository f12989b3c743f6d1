//! Command-line interface.
use std::{ffi::OsString, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::{export::Format, probe::UnwindMode, report::grouping::GroupBy};

/// Rows the text report on stdout shows without `--top`.
pub const DEFAULT_TEXT_TOP: usize = 20;

/// Attach to a running process (or start one) and report its outstanding heap by call stack.
///
/// leaktrace puts eBPF uprobes on the target's allocator (malloc, calloc, realloc, reallocarray,
/// posix_memalign, aligned_alloc, memalign, valloc, pvalloc and free), keeps a live model of
/// every outstanding allocation and its call stack, and reports the stacks holding the most
/// bytes. The target is not restarted, recompiled or paused; every probe is removed on exit.
/// A Go program's heap is read from the Go runtime's own heap profile instead (no probes), with
/// C malloc probed too when it uses cgo. Needs root (or CAP_BPF and CAP_PERFMON).
#[derive(Clone, Debug, Parser)]
#[command(name = "leaktrace", version = VERSION, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "Examples:\n  \
    sudo leaktrace -p 1234\n  \
    sudo leaktrace -p 1234 --duration 60 --export heap.json\n  \
    sudo leaktrace --no-tui --export heap.folded -- ./my-service --port 8080\n  \
    sudo leaktrace -p 1234 --snapshot-every 15m --snapshot-dir snaps --keep 96\n  \
    sudo leaktrace -p 1234 --debuginfo-dir ./debug --group-by address\n  \
    leaktrace diff snaps/leaktrace-1234-20261121T010000Z.json snaps/leaktrace-1234-20261121T020000Z.json")]
pub struct Cli {
    /// Something other than tracing.
    #[command(subcommand)]
    pub action: Option<Action>,

    /// Trace the running process with this pid; repeat it, or give a comma-separated list, to
    /// trace several processes at once (each row says its pid).
    #[arg(
        short,
        long,
        value_name = "PID",
        conflicts_with = "command",
        value_delimiter = ','
    )]
    pub pid: Vec<u32>,

    /// Service mode: trace the process with this command name (as `ps -o comm` shows it) or
    /// executable file name, the oldest if several, waiting for one to start; when it exits,
    /// wait for the next and attach again, for as long as leaktrace runs. Headless, and sampling
    /// one allocation per 512 KiB unless --sample-bytes says otherwise.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pid", "command", "pid_file"])]
    pub follow_name: Option<String>,

    /// Service mode, as --follow-name, for the process whose pid this file holds (a service's
    /// pid file), read again when the process exits.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "command"])]
    pub pid_file: Option<PathBuf>,

    /// Also trace the children of every traced process, those running now and those forked
    /// later (a pre-fork server's workers), each with its own probes.
    #[arg(long)]
    pub children: bool,

    /// Stop after this many seconds (default: until the target exits or Ctrl-C).
    #[arg(short, long, value_name = "SECS", value_parser = positive_secs)]
    pub duration: Option<f64>,

    /// Seconds between status updates.
    #[arg(short, long, value_name = "SECS", default_value = "1", value_parser = positive_secs)]
    pub interval: f64,

    /// Rows in the export and snapshots (default: every row) and in the text report on stdout
    /// (default: 20). Where rows are cut, the report says how many and what they hold.
    #[arg(short = 'n', long, value_name = "N", value_parser = positive_count)]
    pub top: Option<usize>,

    /// Write the final report (every row, unless --top is given) to this file.
    #[arg(short, long, value_name = "PATH")]
    pub export: Option<PathBuf>,

    /// What a row is: source (stacks with the same functions and source lines are one row,
    /// however many call instructions they went through; each keeps its call sites) or
    /// address (every distinct stack of return addresses is a row).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = GroupBy::Source)]
    pub group_by: GroupBy,

    /// Trace only this allocator (repeatable): glibc, jemalloc, mimalloc, tcmalloc, rust (the
    /// allocator shim), malloc (whatever the C API resolves to), or a symbol prefix for one
    /// leaktrace does not know (`--allocator myalloc_` probes myalloc_malloc, myalloc_free, ...).
    /// Default: every allocator found.
    #[arg(long, value_name = "NAME|PREFIX")]
    pub allocator: Vec<String>,

    /// Also look for separate debug files (by build id, DIR/.build-id/ab/cdef.debug, or by
    /// .gnu_debuglink name) in DIR, before /usr/lib/debug. Repeatable.
    #[arg(long, value_name = "DIR")]
    pub debuginfo_dir: Vec<PathBuf>,

    /// Format of the export file: json, folded (for inferno/flamegraph.pl), text, pprof
    /// (gzipped profile.proto for go tool pprof, Pyroscope, Parca), svg (a flame graph of
    /// live bytes, drawn by inferno) or html (a self-contained report: flame graph, live bytes
    /// over time, sortable rows). Default: from the file's extension (.json, .folded, .txt,
    /// .pb.gz, .svg, .html), else json.
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Seconds of history the growth rate and the leak verdicts are judged over (see README:
    /// leak, growing, steady, churn).
    #[arg(long, value_name = "SECS", default_value_t = 600.0, value_parser = positive_secs)]
    pub window: f64,

    /// Count only allocations at least this many seconds old as live (leaks, not pressure):
    /// live bytes and counts in reports and exports leave younger blocks out.
    #[arg(long, value_name = "SECS", value_parser = non_negative_secs)]
    pub min_age: Option<f64>,

    /// Write a timestamped export every DURATION (e.g. 30s, 15m, 1h) while tracing goes on,
    /// into --snapshot-dir, in the export format.
    #[arg(long, value_name = "DURATION", value_parser = crate::export::soak::parse_duration, requires = "snapshot_dir")]
    pub snapshot_every: Option<std::time::Duration>,

    /// Directory for --snapshot-every (created if missing).
    #[arg(long, value_name = "DIR", requires = "snapshot_every")]
    pub snapshot_dir: Option<PathBuf>,

    /// Snapshots to keep in --snapshot-dir (the oldest are removed).
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub keep: usize,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464): leaktrace's
    /// health and losses, the target's live bytes, rows by verdict, and the live bytes, growth
    /// and leak verdict of the rows holding most and of those leaking or growing.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Push the live heap as a pprof profile (the one --format pprof writes) every
    /// --push-every to a profiling server; repeat for several. KIND is pyroscope (the default:
    /// Grafana Pyroscope's push API, http://host:4040), pyroscope-ingest (its /ingest API),
    /// parca (Parca's WriteRaw over gRPC, http://host:7070) or otlp (an OpenTelemetry
    /// collector's OTLP/HTTP profiles receiver, http://host:4318). Sends never hold up
    /// tracing: a profile that finds the queue full is dropped, and drops and failures are
    /// counted (push_dropped, push_failed).
    #[arg(long, value_name = "[KIND=]URL", value_parser = crate::push::Target::parse)]
    pub push: Vec<crate::push::Target>,

    /// How often --push sends a profile (e.g. 15s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = crate::export::soak::parse_duration)]
    pub push_every: std::time::Duration,

    /// A label every pushed series carries (repeatable): service_name=relay, env=prod. Besides
    /// leaktrace's own: service_name (the program's file name unless given), host, pid and
    /// command.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    pub labels: Vec<(String, String)>,

    /// The tenant of a multi-tenant push server (X-Scope-OrgID; Parca: the request's tenant).
    #[arg(long, value_name = "ORG", requires = "push")]
    pub push_tenant: Option<String>,

    /// A file holding a bearer token for the push server (read at start).
    #[arg(long, value_name = "PATH", requires = "push")]
    pub push_token_file: Option<PathBuf>,

    /// Rows --metrics gives series of their own, of each kind (holding most; leaking or
    /// growing); the rest are counted in leaktrace_rows_not_exported.
    #[arg(long, value_name = "N", default_value_t = crate::metrics::DEFAULT_ROWS, requires = "metrics")]
    pub metrics_rows: usize,

    /// Print status lines and a final report instead of the live view, even in a terminal.
    #[arg(long)]
    pub no_tui: bool,

    /// How to unwind user stacks: auto (.eh_frame tables where a binary has them, frame
    /// pointers elsewhere), dwarf (tables only) or fp (frame pointers only).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = UnwindMode::Auto)]
    pub unwind: UnwindMode,

    /// Sample allocations by bytes (Poisson, mean N bytes between samples, as tcmalloc, jemalloc
    /// and Go do), decided in the kernel: unsampled allocations cost no stack and no event (and,
    /// on Linux 6.13+, no return probe), and live and total figures become unbiased estimates.
    /// 524288 is a common choice.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_bytes: Option<u64>,

    /// Go programs with memory profiling off (nothing links runtime/pprof): write this
    /// sampling rate into the process's runtime.MemProfileRate, so its heap profile samples
    /// one allocation per N bytes from now on (524288 is Go's default). Allocations made
    /// before stay unseen. Written only when given.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub go_memprofile_rate: Option<u64>,

    /// Benchmarking aid: attach empty probes to the C library's allocating functions and free
    /// only, on entry (no events, no report figures), to measure the cost of the traps alone.
    #[arg(long, hide = true)]
    pub probe_floor: bool,

    /// Benchmarking aid: phases the programs leave out (comma-separated: submit, store,
    /// capture), to measure what each costs. Figures are then wrong (said on stderr).
    #[arg(long, hide = true, value_name = "PHASES", value_parser = bench_skip, default_value = "")]
    pub bench_skip: u32,

    /// Benchmarking aid: when sampling, use separate entry and return probes even where the
    /// kernel has uprobe sessions (every call then takes the return trap).
    #[arg(long, hide = true)]
    pub no_uprobe_session: bool,

    /// Check 1 in N unwound stacks against a user-space unwind of a copy of the same stack
    /// (a self-test of the unwinder; results in the export's diagnostics).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub verify_unwind: u32,

    /// Kernel ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 32, value_parser = ringbuf_mib)]
    pub ringbuf_mib: u32,

    /// Distinct allocating stacks the kernel keeps (about 1 KiB of kernel memory each, taken as
    /// stacks are seen); allocations through stacks beyond are counted in one row without
    /// frames (stack_map_full). Kernels before 6.1 keep 8,192 whatever is asked.
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = max_stacks)]
    pub max_stacks: u32,

    /// Under sudo, run the launched command as root rather than as the user who ran sudo.
    #[arg(long)]
    pub as_root: bool,

    /// Command to start with the probes attached before it runs (instead of -p).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `--version`: the version, the git commit it was built from and the eBPF object's build id
/// (the first 16 hex digits of its SHA-256; the object is reproducible from the same source).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LEAKTRACE_COMMIT"),
    ", eBPF object ",
    env!("LEAKTRACE_EBPF_ID"),
    ")"
);

/// What leaktrace does besides tracing.
#[derive(Clone, Debug, Subcommand)]
pub enum Action {
    /// What grew between two JSON exports (e.g. two snapshots), row by row: bytes and blocks,
    /// with the growth rate when both come from one trace. For pprof exports, use
    /// `go tool pprof -top -base BEFORE AFTER`.
    Diff {
        /// The earlier export.
        before: PathBuf,
        /// The later export.
        after: PathBuf,
    },
    /// Write a self-contained HTML leak report (flame graph, live bytes over time, sortable
    /// rows) from one JSON export, or from a series of snapshots (oldest first) whose chart then
    /// spans them all.
    Report {
        /// JSON exports (`--export`, `--snapshot-every`), oldest first.
        #[arg(required = true, value_name = "EXPORT.json")]
        exports: Vec<PathBuf>,
        /// Where to write the HTML.
        #[arg(short, long, value_name = "FILE.html")]
        output: PathBuf,
    },
    /// Print a completion script for this shell on stdout (the Debian package installs them).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout (the Debian package installs it as leaktrace(1)).
    #[command(hide = true)]
    Man,
}

fn bench_skip(text: &str) -> Result<u32, String> {
    use tracer_common::bench_skip::{CAPTURE, STORE, SUBMIT};
    text.split(',')
        .filter(|p| !p.is_empty())
        .try_fold(0, |mask, phase| match phase {
            "submit" => Ok(mask | SUBMIT),
            "store" => Ok(mask | STORE),
            "capture" => Ok(mask | CAPTURE),
            other => Err(format!("`{other}` is not a phase (submit, store, capture)")),
        })
}

fn label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    let valid = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok((key.to_owned(), value.to_owned()))
    } else {
        Err(format!(
            "`{key}` is not a label name (letters, digits and _, not starting with a digit)"
        ))
    }
}

fn positive_secs(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("`{text}` must be a positive number of seconds"))
    }
}

fn non_negative_secs(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!(
            "`{text}` must be zero or a positive number of seconds"
        ))
    }
}

fn positive_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{text}` must be a whole number of at least 1")),
    }
}

fn max_stacks(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(value) if (1024..=1 << 20).contains(&value) => Ok(value),
        _ => Err(format!(
            "`{text}` must be a whole number between 1024 and 1048576"
        )),
    }
}

fn ringbuf_mib(text: &str) -> Result<u32, String> {
    let value: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if value.is_power_of_two() && value <= 1024 {
        Ok(value)
    } else {
        Err(format!(
            "`{text}` must be a power of two between 1 and 1024"
        ))
    }
}

impl Cli {
    /// The export format: `--format`, else the export file's extension, else JSON.
    pub fn export_format(&self) -> Format {
        if let Some(format) = self.format {
            return format;
        }
        match self
            .export
            .as_ref()
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
        {
            Some("folded" | "collapsed") => Format::Folded,
            Some("txt" | "text") => Format::Text,
            Some("gz" | "pprof") => Format::Pprof,
            Some("svg") => Format::Svg,
            Some("html" | "htm") => Format::Html,
            _ => Format::Json,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_skip_names_phases() {
        use tracer_common::bench_skip::{CAPTURE, STORE, SUBMIT};
        assert_eq!(bench_skip(""), Ok(0));
        assert_eq!(bench_skip("submit"), Ok(SUBMIT));
        assert_eq!(
            bench_skip("submit,store,capture"),
            Ok(SUBMIT | STORE | CAPTURE)
        );
        let err = bench_skip("submit,unwind").expect_err("not a phase");
        assert!(err.contains("`unwind`"), "{err}");
    }

    #[test]
    fn parses_pid_and_command_modes() {
        let cli = Cli::try_parse_from(["leaktrace", "-p", "42", "--duration", "1.5"]).expect("pid");
        assert_eq!(cli.pid, vec![42]);
        assert_eq!(cli.duration, Some(1.5));
        let cli = Cli::try_parse_from(["leaktrace", "--no-tui", "--", "./app", "-x"]).expect("cmd");
        assert_eq!(
            cli.command,
            vec![OsString::from("./app"), OsString::from("-x")]
        );
        assert!(Cli::try_parse_from(["leaktrace", "-p", "1", "--", "ls"]).is_err());
    }

    #[test]
    fn report_takes_exports_and_needs_an_output() {
        let cli = Cli::try_parse_from(["leaktrace", "report", "a.json", "b.json", "-o", "r.html"])
            .expect("report");
        let Some(Action::Report { exports, output }) = cli.action else {
            panic!("not a report");
        };
        assert_eq!(exports, [PathBuf::from("a.json"), PathBuf::from("b.json")]);
        assert_eq!(output, PathBuf::from("r.html"));
        assert!(Cli::try_parse_from(["leaktrace", "report", "a.json"]).is_err());
        assert!(Cli::try_parse_from(["leaktrace", "report", "-o", "r.html"]).is_err());
    }

    #[test]
    fn diff_is_a_subcommand_and_tracing_a_program_named_diff_still_works() {
        let cli = Cli::try_parse_from(["leaktrace", "diff", "a.json", "b.json"]).expect("diff");
        assert!(matches!(
            cli.action,
            Some(Action::Diff { ref before, ref after })
                if before == &PathBuf::from("a.json") && after == &PathBuf::from("b.json")
        ));
        assert!(Cli::try_parse_from(["leaktrace", "diff", "a.json"]).is_err());
        assert!(Cli::try_parse_from(["leaktrace", "-p", "1", "diff", "a", "b"]).is_err());
        let cli = Cli::try_parse_from(["leaktrace", "--", "diff", "a", "b"]).expect("cmd");
        assert!(cli.action.is_none());
        assert_eq!(cli.command.len(), 3);
    }

    #[test]
    fn completions_take_a_known_shell_and_the_version_names_the_build() {
        let cli = Cli::try_parse_from(["leaktrace", "completions", "zsh"]).expect("completions");
        assert!(matches!(
            cli.action,
            Some(Action::Completions {
                shell: clap_complete::Shell::Zsh
            })
        ));
        assert!(Cli::try_parse_from(["leaktrace", "completions", "tcsh"]).is_err());
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.contains(" (commit ") && VERSION.contains(", eBPF object "));
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            &["leaktrace", "-p", "x"][..],
            &["leaktrace", "-p", "1", "--duration", "-3"],
            &["leaktrace", "-p", "1", "--interval", "0"],
            &["leaktrace", "-p", "1", "--format", "xml"],
            &["leaktrace", "-p", "1", "--ringbuf-mib", "3"],
            &["leaktrace", "-p", "1", "--top", "0"],
            &["leaktrace", "-p", "1", "--group-by", "line"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn export_format_follows_the_extension() {
        let format = |args: &[&str]| Cli::try_parse_from(args).expect("parse").export_format();
        assert_eq!(
            format(&["leaktrace", "-p", "1", "-e", "out.folded"]),
            Format::Folded
        );
        assert_eq!(
            format(&["leaktrace", "-p", "1", "-e", "out.txt"]),
            Format::Text
        );
        assert_eq!(
            format(&["leaktrace", "-p", "1", "-e", "out.json"]),
            Format::Json
        );
        assert_eq!(
            format(&["leaktrace", "-p", "1", "-e", "heap.svg"]),
            Format::Svg
        );
        assert_eq!(
            format(&["leaktrace", "-p", "1", "-e", "out.txt", "-f", "json"]),
            Format::Json
        );
    }
}
