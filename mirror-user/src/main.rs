//! The `mirror` binary: see `mirror --help`.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mirror: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
