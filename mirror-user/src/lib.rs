//! `mirror`: a traffic mirror engine for Linux.
//!
//! The library behind the `mirror` binary. Imports run one way:
//! [`config`] < [`filter`] < [`kernel`] < [`target`] < [`dataplane`] < [`control`] < [`cli`],
//! with [`metrics`] (the Prometheus endpoint) beside [`control`], both served
//! by the daemon's tokio runtime and reading the engine's counters the same
//! way, and [`lab`] (the test and demo lab) beside the command line.
//!
//! [`cli`] is here rather than in the binary so that its clap definition can
//! be read by more than `main`: the man pages and shell completions of
//! [`cli::dist`] are generated from it.

// The command line names the library `mirror_user::…`, as it did when it lived
// in the binary crate.
extern crate self as mirror_user;

pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod filter;
pub mod fuzz;
pub mod kernel;
pub mod lab;
pub mod metrics;
pub mod privileges;
pub mod target;

/// True when running as root (euid 0).
pub fn is_root() -> bool {
    // Safety: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
