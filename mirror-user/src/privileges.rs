//! Least privilege for `mirror run`: which capabilities starting needs (and
//! a refusal naming the missing ones), and dropping everything else.
//!
//! Three steps:
//! 1. before anything: [`missing`] the capabilities this config's start
//!    needs ([`needed_to_start`]); `mirror run` refuses to start without them;
//! 2. once the listeners are bound, before any target or program: drop
//!    `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` ([`drop_file_overrides`]),
//!    so that every file (pcapng captures, their directory checks) is opened
//!    with the rights rotation will have later (what else root has stays
//!    until step 3: `CAP_SYS_ADMIN` names another tool's XDP program in an
//!    error);
//! 3. once every program is attached and every target open: keep only
//!    [`RUN`], in the main thread and in every thread the engine started
//!    ([`thread_started`]).
//!
//! What the rest of the run needs, measured by `tests/e2e_service.rs`: a
//! live `rules add/delete` and a filter reload build the new rule set in new
//! BPF maps (`BPF_MAP_CREATE`: `CAP_BPF`); a reload that adds or changes a
//! source or target starts it as the start did: programs loaded (`CAP_BPF`,
//! `CAP_PERFMON` for the verifier) and attached (`CAP_NET_ADMIN`), AF_XDP and
//! raw sockets opened (`CAP_NET_RAW`), UMEMs pinned (`CAP_IPC_LOCK`).
//! Everything else works on file descriptors opened at start: map updates
//! and reads (counters, a kernel-path target's interface created again, a
//! tunnel's next hop moved, group members going down) need no capability on
//! Linux 6.5 and later; a kernel tunnel's next hop whose MAC is not known is
//! resolved by netlink, else by an empty UDP datagram (`route::probe`); a
//! userspace interface target whose interface is created again binds to it
//! the spare socket it holds (`xsk::Spare`); closing the BPF links detaches
//! the programs; pcapng
//! rotation creates files as the owner of the directory it checked at start;
//! the metrics and control sockets are bound.

use std::sync::OnceLock;

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

use crate::config::{Config, SourceMode, TargetSpec};

/// What each capability is for, as the refusal and the README say it.
pub fn why(c: Capability) -> &'static str {
    match c {
        Capability::CAP_BPF => "load the kernel programs and create their maps (bpf(2))",
        Capability::CAP_NET_ADMIN => {
            "XDP/tc programs, XSKMAP and DEVMAP maps, attaching them to interfaces"
        }
        Capability::CAP_NET_RAW => {
            "AF_XDP sockets (tap sources, interface targets) and the raw sockets of VXLAN/GRE/ERSPAN targets"
        }
        Capability::CAP_PERFMON => {
            "the verifier accepts the programs' packet-pointer comparisons only from CAP_PERFMON holders"
        }
        Capability::CAP_IPC_LOCK => {
            "AF_XDP UMEMs are pinned memory (without it they count against RLIMIT_MEMLOCK, which is not unlimited here)"
        }
        _ => "",
    }
}

/// The capabilities kept once mirroring has begun: a live rule change
/// creates the new rule set's maps (`CAP_BPF`), and a reload may start any
/// kind of source or target (see `Engine::reload`): load and attach
/// programs, open AF_XDP and raw sockets, pin UMEMs. Dropped for good: what
/// only the start needs (`CAP_SYS_ADMIN`, naming another tool's XDP program;
/// `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`) and everything else root has.
pub const RUN: [Capability; 5] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_PERFMON,
    Capability::CAP_IPC_LOCK,
];

/// The capabilities starting `config` needs, in the unit's order.
pub fn needed_to_start(config: &Config, memlock_unlimited: bool) -> Vec<Capability> {
    let tap = config.sources.iter().any(|s| s.mode == SourceMode::Tap);
    let af_xdp_tx = config
        .targets
        .iter()
        .any(|t| matches!(t.spec, TargetSpec::Interface { .. }));
    let raw = config.targets.iter().any(|t| {
        matches!(
            t.spec,
            TargetSpec::Vxlan { .. } | TargetSpec::Gre { .. } | TargetSpec::Erspan { .. }
        )
    });
    let mut need = vec![Capability::CAP_BPF, Capability::CAP_NET_ADMIN];
    if tap || af_xdp_tx || raw {
        need.push(Capability::CAP_NET_RAW);
    }
    need.push(Capability::CAP_PERFMON);
    if (tap || af_xdp_tx) && !memlock_unlimited {
        need.push(Capability::CAP_IPC_LOCK);
    }
    need
}

/// True when `RLIMIT_MEMLOCK` is unlimited (pinned memory is then not limited).
pub fn memlock_unlimited() -> bool {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes one rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) == 0 && r.rlim_cur == libc::RLIM_INFINITY
    }
}

/// Of `needed`, those not in this thread's effective set.
pub fn missing(needed: &[Capability]) -> Result<Vec<Capability>> {
    let eff = caps::read(None, CapSet::Effective).context("reading the capabilities")?;
    Ok(needed
        .iter()
        .filter(|c| !eff.contains(c))
        .copied()
        .collect())
}

/// The refusal for `missing` capabilities: each with what it is for.
pub fn refusal(missing: &[Capability]) -> String {
    let mut s = format!(
        "mirror run needs {} capabilit{} it does not have (run it as root, or grant them, e.g. \
         AmbientCapabilities= in a systemd unit):",
        missing.len(),
        if missing.len() == 1 { "y" } else { "ies" }
    );
    for c in missing {
        s.push_str(&format!("\n  {c}: {}", why(*c)));
    }
    s
}

/// Keeps only `keep` in this thread: drops the rest from the bounding set
/// (when it may: that needs `CAP_SETPCAP`, which then goes too unless kept),
/// clears the ambient and inheritable sets, and sets the effective and
/// permitted sets to `keep` (what of it is permitted).
pub fn drop_to(keep: &[Capability]) -> Result<()> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        let bounding = caps::read(None, CapSet::Bounding).context("reading the bounding set")?;
        for c in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *c)
                .with_context(|| format!("dropping {c} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    let permitted = caps::read(None, CapSet::Permitted).context("reading the permitted set")?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    // Effective first: it may never exceed the permitted set.
    caps::set(None, CapSet::Effective, &kept).context("setting the effective set")?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .context("clearing the inheritable set")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted set")?;
    Ok(())
}

/// The capabilities that get past file permissions.
const FILE_OVERRIDES: [Capability; 2] = [
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// Drops [`FILE_OVERRIDES`] from this thread's effective and permitted sets
/// (`mirror run`, before any target opens a file).
pub fn drop_file_overrides() -> Result<()> {
    for c in FILE_OVERRIDES {
        caps::drop(None, CapSet::Effective, c).with_context(|| format!("dropping {c}"))?;
        caps::drop(None, CapSet::Permitted, c).with_context(|| format!("dropping {c}"))?;
    }
    Ok(())
}

/// Runs `f` without `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` in this
/// thread's effective set, as `mirror run` opens files (it drops them before
/// any target opens), then raises back what was there: `mirror check` asks
/// "can run write here" with run's rights, not root's.
pub fn as_run_opens_files<T>(f: impl FnOnce() -> T) -> T {
    let had: Vec<Capability> = FILE_OVERRIDES
        .into_iter()
        .filter(|c| caps::has_cap(None, CapSet::Effective, *c).unwrap_or(false))
        .collect();
    for c in &had {
        let _ = caps::drop(None, CapSet::Effective, *c);
    }
    let out = f();
    for c in &had {
        let _ = caps::raise(None, CapSet::Effective, *c);
    }
    out
}

/// What the engine's threads keep, once `mirror run` has said so.
static THREADS_KEEP: OnceLock<Vec<Capability>> = OnceLock::new();

/// `mirror run`: every engine thread started from now on keeps only `keep`.
pub fn threads_keep(keep: &[Capability]) {
    let _ = THREADS_KEEP.set(keep.to_vec());
}

/// Engine threads spawned whose [`thread_started`] has not run yet.
static PENDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Spawns an engine thread that first calls [`thread_started`]; counted
/// until it has, so that [`wait_for_threads`] knows when every thread holds
/// only what it keeps.
pub fn spawn<F, T>(
    builder: std::thread::Builder,
    f: F,
) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    PENDING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let spawned = builder.spawn(move || {
        thread_started();
        f()
    });
    if spawned.is_err() {
        PENDING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    spawned
}

/// Waits (at most `limit`) until every thread from [`spawn`] has dropped
/// its capabilities: a thread not yet scheduled still holds its parent's.
/// False when some had not by then.
pub fn wait_for_threads(limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while PENDING.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// Called first by every thread the engine starts ([`spawn`]): drops this thread's
/// capabilities to the set of [`threads_keep`] (capabilities are per thread:
/// a thread started before the main thread drops would keep them all).
/// Without [`threads_keep`] (tests, the library) it changes nothing.
fn thread_started() {
    if let Some(keep) = THREADS_KEEP.get() {
        if let Err(e) = drop_to(keep) {
            tracing::error!("dropping this thread's capabilities: {e:#}");
        }
    }
    PENDING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

/// A capability set as names, for the log.
pub fn names(set: &[Capability]) -> String {
    if set.is_empty() {
        return "none".into();
    }
    set.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, "t.toml").expect("valid")
    }

    const COPY_PCAPNG: &str = r#"
[[source]]
name = "s"
interface = "lo"
mode = "copy"
[[filter]]
name = "f"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[target]]
name = "p"
kind = "pcapng"
path = "/tmp/x.pcapng"
[[session]]
name = "x"
source = "s"
filter = "f"
targets = ["p"]
"#;

    #[test]
    fn a_copy_source_to_pcapng_needs_no_sockets_and_no_pinned_memory() {
        let c = config(COPY_PCAPNG);
        assert_eq!(
            needed_to_start(&c, false),
            [
                Capability::CAP_BPF,
                Capability::CAP_NET_ADMIN,
                Capability::CAP_PERFMON
            ]
        );
    }

    #[test]
    fn a_tap_source_needs_all_five_unless_memlock_is_unlimited() {
        let c = config(&COPY_PCAPNG.replace("mode = \"copy\"", "mode = \"tap\""));
        let all = [
            Capability::CAP_BPF,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_NET_RAW,
            Capability::CAP_PERFMON,
            Capability::CAP_IPC_LOCK,
        ];
        assert_eq!(needed_to_start(&c, false), all);
        assert_eq!(needed_to_start(&c, true), all[..4]);
    }

    #[test]
    fn a_tunnel_target_needs_raw_sockets_but_no_pinned_memory() {
        let text = COPY_PCAPNG.replace(
            "kind = \"pcapng\"\npath = \"/tmp/x.pcapng\"",
            "kind = \"gre\"\nremote = \"192.0.2.1\"",
        );
        let need = needed_to_start(&config(&text), false);
        assert!(need.contains(&Capability::CAP_NET_RAW), "{need:?}");
        assert!(!need.contains(&Capability::CAP_IPC_LOCK), "{need:?}");
    }

    #[test]
    fn the_refusal_names_each_missing_capability_and_its_use() {
        let r = refusal(&[Capability::CAP_BPF, Capability::CAP_NET_RAW]);
        assert!(
            r.starts_with("mirror run needs 2 capabilities it does not have"),
            "{r}"
        );
        assert!(r.contains("\n  CAP_BPF: load the kernel programs"), "{r}");
        assert!(r.contains("\n  CAP_NET_RAW: AF_XDP sockets"), "{r}");
        assert!(refusal(&[Capability::CAP_BPF]).contains("1 capability it"));
    }
}
