//! The `leaktrace` command.
use std::{path::Path, process::ExitCode};

use clap::{CommandFactory as _, Parser as _};
use leaktrace::{
    cli::{Action, Cli},
    error::{EXIT_USAGE, Failure, chain},
    export::{diff, html},
    session,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
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
    let result = match &cli.action {
        Some(Action::Diff { before, after }) => run_diff(before, after),
        Some(Action::Report { exports, output }) => run_report(exports, output),
        Some(Action::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "leaktrace",
                &mut std::io::stdout().lock(),
            );
            Ok(())
        }
        Some(Action::Man) => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout().lock())
            .map_err(|err| Failure::runtime(format!("writing the man page: {err}"), None)),
        None => session::run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.code)
        }
    }
}

/// `leaktrace report EXPORT.json... -o FILE.html`: the HTML report of a series of exports.
fn run_report(paths: &[std::path::PathBuf], output: &Path) -> Result<(), Failure> {
    let exports = paths
        .iter()
        .map(|path| {
            diff::load(path).map_err(|err| {
                Failure::usage(
                    chain(&err),
                    "give files written by --export or --snapshot-every in json, oldest first",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let written = (|| {
        let file = leaktrace::export::file::open_private(output)?;
        file.set_len(0)?;
        let mut out = std::io::BufWriter::new(file);
        html::write_series(&exports, &names, &mut out)?;
        std::io::Write::flush(&mut out)
    })();
    written.map_err(|err| {
        Failure::usage(
            format!("cannot write {}: {err}", output.display()),
            "give -o a path in a directory you can write",
        )
    })?;
    let rows = exports.last().map_or(0, |e| e.stacks.len());
    eprintln!(
        "leaktrace: wrote {} ({} rows from {} export{})",
        output.display(),
        rows,
        exports.len(),
        if exports.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `leaktrace diff BEFORE AFTER`: growth by row between two JSON exports, on stdout.
fn run_diff(before_path: &Path, after_path: &Path) -> Result<(), Failure> {
    let load = |path: &Path| {
        diff::load(path).map_err(|err| {
            Failure::usage(
                chain(&err),
                "give two files written by --export (json); for pprof exports use go tool pprof -base",
            )
        })
    };
    let (before, after) = (load(before_path)?, load(after_path)?);
    let deltas = diff::diff(&before, &after);
    diff::write_text(
        &deltas,
        &before.meta(before_path.to_string_lossy()),
        &after.meta(after_path.to_string_lossy()),
        std::io::stdout().lock(),
    )
    .map_err(|err| Failure::runtime(format!("writing the diff: {err}"), None))
}
