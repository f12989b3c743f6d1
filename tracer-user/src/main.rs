//! The `leaktrace` command.
use std::process::ExitCode;

use clap::Parser as _;
use leaktrace::{
    cli::Cli,
    error::{EXIT_USAGE, Failure},
    session,
};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "diff") {
        return diff(&args[2..]);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = err.print();
                return ExitCode::SUCCESS;
            }
            // clap's message spans several lines; keep its first and point at --help.
            let rendered = err.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("{}", Failure::usage(first, "see leaktrace --help"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match session::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.code)
        }
    }
}

/// `leaktrace diff BEFORE AFTER`: growth by stack between two JSON exports.
fn diff(args: &[std::ffi::OsString]) -> ExitCode {
    let usage = || {
        eprintln!(
            "{}",
            Failure::usage(
                "diff takes two JSON exports",
                "leaktrace diff BEFORE.json AFTER.json (for pprof exports: go tool pprof -base)"
            )
        );
        ExitCode::from(EXIT_USAGE)
    };
    let [before_path, after_path] = args else {
        return usage();
    };
    if before_path == "--help" || before_path == "-h" {
        return usage();
    }
    let load = |path: &std::ffi::OsString| {
        leaktrace::diff::load(path).map_err(|err| {
            eprintln!(
                "{}",
                Failure::usage(
                    leaktrace::error::chain(&err),
                    "give two files written by --export (json)"
                )
            );
            ExitCode::from(EXIT_USAGE)
        })
    };
    let (before, after) = match (load(before_path), load(after_path)) {
        (Ok(before), Ok(after)) => (before, after),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let deltas = leaktrace::diff::diff(&before, &after);
    let stdout = std::io::stdout().lock();
    let written = leaktrace::diff::write_text(
        &deltas,
        &before.meta(before_path.to_string_lossy()),
        &after.meta(after_path.to_string_lossy()),
        stdout,
    );
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "{}",
                Failure::runtime(format!("writing the diff: {err}"), None)
            );
            ExitCode::from(leaktrace::error::EXIT_FAILURE)
        }
    }
}
