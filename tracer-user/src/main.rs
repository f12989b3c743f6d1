//! The `leaktrace` command.
use std::process::ExitCode;

use clap::Parser as _;
use leaktrace::{
    cli::Cli,
    error::{EXIT_USAGE, Failure},
    session,
};

fn main() -> ExitCode {
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
