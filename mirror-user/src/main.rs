//! The `mirror` binary: see `mirror --help`.

use std::io::Write;

use clap::Parser;
use mirror_user::cli;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Run(_) | cli::Command::Demo(_)) {
        // A client printing into a pipe that closed (`mirror stats --watch |
        // head -2`) ends quietly, as `cat` would, instead of panicking on
        // EPIPE. The daemon keeps SIGPIPE ignored: losing its log reader must
        // not stop the mirroring.
        // Safety: restoring a signal's default disposition has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    cli::init_logging();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            // Never panics, even when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "mirror: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
