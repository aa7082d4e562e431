//! `mirror`: a traffic mirror engine for Linux.
//!
//! The library behind the `mirror` binary: configuration ([`config`], [`cpus`]), filter
//! semantics ([`classify`]) and their kernel tables ([`ruleset`]), the kernel programs' loader ([`loader`]), AF_XDP
//! ([`xsk`]), the copy-mode ring buffer ([`ringbuf`]), targets ([`target`]), sessions' per-frame work ([`session`]), the data plane ([`engine`]), counters
//! ([`stats`]), the control socket ([`control`]), and the network-namespace
//! lab used by `mirror demo` and the tests ([`lab`]).

pub mod classify;
pub mod config;
pub mod control;
pub mod cpus;
pub mod engine;
pub mod lab;
pub mod loader;
pub mod netdev;
pub mod ringbuf;
pub mod rules;
pub mod ruleset;
pub mod session;
pub mod stats;
pub mod target;
pub mod xsk;

/// True when running as root (euid 0).
pub fn is_root() -> bool {
    // Safety: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
