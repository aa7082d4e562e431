//! Command-line interface: one module per subcommand.

mod check;
mod demo;
pub mod dist;
mod rules;
mod run;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
CONFIGURATION
    mirror.toml has [daemon], [[source]], [[filter]] with [[filter.rule]],
    [[target]] and [[session]] tables; see README.md for every key.
    Copy mode's ingress_hook = \"auto\" (default) hooks ingress at tcx when a
    session of the source clones in the kernel (all its targets interfaces or
    VXLAN / GRE / ERSPAN tunnels, no group), else at XDP; \"xdp\" keeps XDP and
    sends such sessions through userspace.

METRICS
    [daemon] metrics = \"127.0.0.1:9464\" serves every counter of `mirror stats
    --json` (mirror_source_*, mirror_session_*, mirror_target_*, mirror_group_*,
    drops by reason=) and process_* figures in the Prometheus text format at
    GET http://127.0.0.1:9464/metrics; omitted, no endpoint. Only the configured
    address is bound: keep it on 127.0.0.1 unless others must scrape it.

SIGNALS
    SIGINT, SIGTERM   detach every program and exit 0
    SIGHUP            reload the config file (like `mirror reload`): changed
                      filters are installed atomically; sources, targets,
                      groups and sessions are applied as a diff (untouched
                      ones run on, changed ones restart alone, removed ones
                      stop, new ones start); a bad file is rejected and the
                      running config stays

FILES
    /run/mirror/control.sock   default control socket (mode 0600)

ENVIRONMENT
    RUST_LOG   log filter, e.g. RUST_LOG=debug (default: info); logs go to stderr
    MIRROR_SKIP_CAPABILITY_CHECK   set: `mirror run` starts without a capability
               it checks for and fails where the kernel refuses (for tests)
    MIRROR_FAKE_NOW   an RFC 3339 time: `mirror run` starts its schedule clock
               standing at that time; the control request (one JSON line on the
               control socket) {\"cmd\":\"set_time\",\"time\":\"…\"} moves it (for tests)

EXIT STATUS
    0 success; 1 error (bad config, attach failure, daemon unreachable, failed demo check)

EXAMPLES
    mirror check -c /etc/mirror/mirror.toml
    mirror run -c /etc/mirror/mirror.toml
    mirror stats -c /etc/mirror/mirror.toml --watch
    mirror rules -c /etc/mirror/mirror.toml list
    mirror rules add --filter ids --number 150 --action reject --protocol tcp --destination-port 22
    mirror rules delete --filter ids --number 150
    mirror reload -c /etc/mirror/mirror.toml
    mirror demo";

/// mirror: copy network traffic that matches filter rules from Linux interfaces
/// to the places where analysis tools read it.
///
/// Kernel programs classify every frame of a source interface against
/// AWS-style filter rules. A tap-mode source (a SPAN/TAP feed port) hands
/// matching frames to userspace through AF_XDP and consumes the feed; a
/// copy-mode source (a live interface, ingress through XDP or tcx, egress
/// through tcx) copies them into a BPF ring buffer and lets every frame pass
/// on untouched, also when the daemon is killed. The copies go to the
/// session's targets: a local interface (an IDS sensor's NIC), VXLAN / GRE /
/// ERSPAN tunnels to remote collectors, rotating pcapng files, or
/// flow-symmetric groups of these. A tap session whose targets are
/// interfaces that take XDP frames, tunnels, or one group of them, with no
/// pcapng target, is served in the kernel (a DEVMAP broadcast whose
/// per-target programs encapsulate, no userspace copy); so is a copy session
/// whose targets are all interfaces or VXLAN / GRE / ERSPAN tunnels, no
/// group (tcx clones each frame
/// to them, bpf_clone_redirect, tunnels through a relay TAP device
/// `mirror-r<ifindex>` that encapsulates them, and passes it on;
/// ingress_hook = "auto", the default, then hooks ingress at tcx, since XDP
/// cannot clone). `path` in [[session]] overrides, and the log and
/// `mirror stats` say which path each session has, and why.
/// Needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON (+ CAP_NET_RAW and
/// CAP_IPC_LOCK for AF_XDP and tunnel sockets); `mirror run` names any that
/// are missing, and once started keeps those five (a reload may start
/// anything) and drops the rest of root's.
#[derive(Debug, Parser)]
#[command(name = "mirror", version, after_long_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGINT/SIGTERM.
    ///
    /// Loads and attaches the kernel programs of every source, opens every
    /// target, serves counters on the control socket (and to Prometheus at
    /// GET /metrics when [daemon] metrics is set), and logs to stderr.
    /// Programs are attached through BPF links: if the daemon dies, the kernel
    /// detaches them. Refuses to start without the capabilities the config
    /// needs, naming each; does not open targets no session uses; once
    /// started keeps CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON and
    /// CAP_IPC_LOCK (a reload may start any source or target) and drops the
    /// rest of root's.
    /// Sessions with [[session.schedule]] windows switch settings at each
    /// window edge (logged). For tests, MIRROR_FAKE_NOW=<RFC 3339 time> starts
    /// the schedule's clock standing at that time; the control request
    /// {"cmd":"set_time","time":"…"} then moves it.
    Run(run::Args),
    /// Validate a config file, and this host for it; attaches nothing.
    ///
    /// Reports every error with file:line:column, the field, and the accepted
    /// values. Then, unless --file-only, what `mirror run` would fail on here,
    /// found without attaching anything: interfaces missing from this network
    /// namespace, pcapng directories missing or not writable, another XDP
    /// program or AF_XDP socket on a source's or interface target's port
    /// (naming the process that holds it). Warns, with --file-only too, about
    /// targets no session uses (`run` does not open them), about a source
    /// direction no rule of its sessions accepts (or rules for a direction it
    /// does not mirror), and about schedule windows that override nothing. Exit
    /// status 0 when both are fine.
    Check(check::Args),
    /// Show the running daemon's counters.
    ///
    /// Per source: received, matched, filtered, sampled_out, scheduled_out,
    /// cutoff (past a flow's flow_cutoff_*), mirrored (of which cutoff_cut:
    /// cut at a flow's cutoff), dropped by reason (copy mode also per
    /// direction: copied, cloned, ring_full, copy_cut). Per session: matched,
    /// mirrored, sampled_out, scheduled_out (left out while the session was
    /// disabled: enabled = false or its schedule), cutoff, cutoff_cut,
    /// rate_limited, a scheduled session's active window ("window N (days
    /// hours zone)" or "none") and next edge, path ("kernel": in the kernel, a DEVMAP broadcast in
    /// tap mode, tcx clones in copy mode; "af_xdp" / "ring_buffer": through
    /// userspace, tap / copy mode). Per target: enqueued, sent_packets, sent_bytes,
    /// truncated, shared_umem (taken from the source's RX frame without a copy, then sent, written or dropped as any copy),
    /// kernel_path (sent by the in-kernel fast path), deleted_files and deleted_bytes
    /// (pcapng: files deleted, oldest first, to hold keep and max_total_size), dropped
    /// by reason, queued. Per group: members up, rehashed, all_down.
    /// The same counters, named mirror_<section>_<key>, are served to
    /// Prometheus when [daemon] metrics is set.
    Stats(stats::Args),
    /// List or change a running daemon's filter rules, atomically.
    ///
    /// `add` takes the fields of a [[filter.rule]] and is validated like the
    /// config file; `delete` removes a rule by filter, number and direction.
    /// The new rule set is built beside the running one and swapped in with
    /// one write: no frame is classified by a half-updated set and none is
    /// lost. A rejected change leaves the running rules in force. Changes are
    /// not written to the config file: a reload or restart returns to it.
    Rules(rules::Args),
    /// Make the running daemon re-read and apply its config file (as SIGHUP).
    ///
    /// Changed filters are installed atomically, nothing restarts. Other
    /// changes apply as a diff by name: sources, targets and groups whose
    /// definition (and, for a source, whose sessions) did not change run on
    /// without losing a frame or a counter; changed ones stop and start again
    /// alone (their counters carry on); removed ones stop; new ones start.
    /// An invalid file, one whose new parts cannot start here (a missing
    /// interface or directory) or a changed [daemon] section is rejected and
    /// the running config stays. Prints what started, stopped and restarted.
    Reload(rules::Daemon),
    /// Run the whole pipeline in a throw-away lab of network namespaces.
    ///
    /// Builds namespaces gen -> src -> sink joined by veth pairs, plus a VXLAN
    /// collector namespace, starts `mirror run` on an embedded config in src
    /// (tap mode on the feed port; targets: an interface towards sink, a
    /// VXLAN tunnel whose VNI 42 a Linux vxlan device decapsulates, and a
    /// pcapng file), sends a mix of IPv4/IPv6, TCP/UDP/ICMP and VLAN-tagged
    /// frames, prints live counters, checks that each target delivered exactly
    /// what the filter accepted, and cleans up (also on Ctrl-C). Needs root.
    Demo(demo::Args),
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(a) => run::main(a),
        Command::Check(a) => check::main(a),
        Command::Stats(a) => stats::main(a),
        Command::Rules(a) => rules::main(a),
        Command::Reload(a) => rules::reload(a),
        Command::Demo(a) => demo::main(a),
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in a file or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr a closed pipe: `mirror
        // run | tee` after tee died) is dropped; the default would report it
        // with eprintln!, which panics on that same closed pipe.
        .log_internal_errors(false)
        .init();
}

/// Where a client finds the daemon: `--control`, else `-c FILE`'s
/// control_socket, else the default.
pub fn control_path(control: Option<&Path>, config: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = control {
        return Ok(p.to_path_buf());
    }
    if let Some(c) = config {
        return Ok(mirror_user::config::load(c)?.daemon.control_socket);
    }
    Ok(PathBuf::from(mirror_user::config::DEFAULT_CONTROL_SOCKET))
}
