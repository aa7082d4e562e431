//! `mirror check -c FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file to validate.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn main(a: Args) -> Result<ExitCode> {
    match mirror_user::config::load(&a.config) {
        Ok(c) => {
            println!(
                "{}: ok ({} sources, {} filters, {} rules, {} targets, {} sessions)",
                a.config.display(),
                c.sources.len(),
                c.filters.len(),
                c.filters.iter().map(|f| f.rules.len()).sum::<usize>(),
                c.targets.len(),
                c.sessions.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            let n = e.diagnostics().len();
            if n > 1 {
                eprintln!("{n} errors");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
