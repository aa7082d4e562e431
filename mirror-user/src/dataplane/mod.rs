//! The data plane: what happens to a frame after the kernel hands it over,
//! and the lifecycle of everything that moves it. A reader follows a frame
//! through the files in this order:
//!
//! ```text
//! tap:  feed port ──XDP (classify, sample)──▶ XSKMAP[rxq] ──▶ RX ring ──▶ worker ─┐
//!                     no match / sampled out: XDP_DROP, counted                 │
//! copy: live port ──XDP / tcx (classify, sample, copy)──▶ ring buffer ──▶ reader ─┤
//!                     every frame: XDP_PASS / TC_ACT_UNSPEC (never held)        │
//!        ┌──────────────────────────────────────────────────────────────────────┘
//!        └▶ session plan (truncate, rate limit, group pick) ──▶ target queues ──▶ senders
//! kernel path: XDP ──▶ the session's DEVMAP (redirect / broadcast) ──▶ target devices
//! copy kernel path: tcx ──▶ one clone per target (bpf_clone_redirect) ──▶ target devices
//!                       └──▶ tunnels: relay TAP ──tc_relay (encapsulate)──▶ egress device
//! ```
//!
//! - [`source`]: a running source (its programs, sessions, sockets);
//! - [`worker`]: the threads that read a source's RX rings (tap) or ring
//!   buffer (copy) and hand each frame to its session;
//! - [`session`]: a session's per-frame work (rate limit, group pick, one
//!   copy per target queue); the target queues and senders are `target/`;
//! - [`plan`]: which path serves each session, and which target shares a
//!   source's UMEM;
//! - [`engine`]: start, live rule updates, reloads, shutdown: an `Engine`
//!   around the running `Plane` (sources, targets and groups, each with its
//!   own threads, so one can stop or start alone);
//! - `reload`: what a reload keeps running (by name), and the config of
//!   what runs between its stopping and starting;
//! - [`tunnels`]: the kernel path's tunnel headers kept in step with the
//!   route and neighbour tables;
//! - [`clones`]: copy mode's kernel path (tcx clones): its ingress hook,
//!   destinations (tunnels through the source's relay), and their devices' state;
//! - [`stats`]: the counters snapshot `mirror stats` reports, assembled from
//!   the kernel's and the threads' counters.
//!
//! It may use `config`, `filter`, `kernel` and `target`; the control socket
//! and the command line use it, never the other way round.

pub mod clock;
mod clones;
pub mod engine;
pub mod plan;
mod reload;
pub mod schedule;
pub mod session;
mod source;
pub mod stats;
mod tunnels;
mod worker;

pub use engine::Engine;
