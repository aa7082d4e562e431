//! Which path serves each session (the in-kernel fast path, or AF_XDP /
//! the ring buffer through userspace) and why, and which interface target
//! shares a tap source's UMEM.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::config::{Config, SessionPath, ShareUmem, SourceMode, TargetSpec, ZeroCopy};
use crate::kernel::route::{self, NextHop};
use crate::kernel::xsk::{RxHost, RxQueue};

/// How long start-up waits for the neighbour table to learn a collector's
/// (or its gateway's) MAC before the kernel path starts with the tunnel down.
pub(super) const RESOLVE_WAIT: Duration = Duration::from_secs(2);

/// Per target: for a tunnel the kernel path may serve, its next hop as
/// resolved at the last start or reload, or why it could not be.
pub(crate) type Hops = Vec<Option<Result<NextHop, String>>>;

/// Resolves the next hop of every tunnel target that a session may put on
/// the kernel path (tap source, no config obstacle, `path` not userspace),
/// waiting up to `wait(target)` for its neighbour's MAC.
pub(super) fn resolve_hops(config: &Config, wait: &dyn Fn(usize) -> Duration) -> Hops {
    let mut hops: Hops = vec![None; config.targets.len()];
    for (i, sess) in config.sessions.iter().enumerate() {
        if sess.path == SessionPath::Userspace || config.kernel_path_obstacle(i).is_some() {
            continue;
        }
        for t in config.session_targets(i) {
            let Some(tunnel) = config.targets[t].spec.tunnel() else {
                continue;
            };
            if hops[t].is_none() {
                hops[t] = Some(
                    route::resolve(tunnel.remote, tunnel.source, wait(t))
                        .map_err(|e| e.to_string()),
                );
            }
        }
    }
    hops
}

/// The path that serves a session, and why it is not the kernel's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathChoice {
    /// The in-kernel fast path (DEVMAP redirect or broadcast), else AF_XDP through userspace.
    pub kernel: bool,
    /// Why userspace serves it (empty on the kernel path).
    pub reason: String,
}

impl PathChoice {
    /// As `mirror stats` and the log name it.
    pub fn name(&self) -> &'static str {
        if self.kernel {
            "kernel"
        } else {
            "af_xdp"
        }
    }

    /// As `mirror stats` and the log name it for a source in `mode`: a
    /// copy-mode source's userspace path is its ring buffer.
    pub fn name_in(&self, mode: SourceMode) -> &'static str {
        match (self.kernel, mode) {
            (false, SourceMode::Copy) => "ring_buffer",
            _ => self.name(),
        }
    }
}

/// Picks each session's path (`Config::sessions` order): the in-kernel fast
/// path when the config allows it ([`Config::kernel_path_obstacle`]) and
/// every target device accepts frames redirected from XDP
/// (`NETDEV_XDP_ACT_NDO_XMIT`), or for a copy-mode session (tcx clones)
/// every target device exists and every tunnel has a route
/// ([`copy_tunnels_not_for_the_kernel`]); `path = "kernel"` makes a
/// refusal an error. A session with a path in `kept` (a running source's)
/// keeps it, unchecked.
pub(super) fn plan_paths(
    config: &Config,
    target_ifindex: &[Option<u32>],
    hops: &Hops,
    kept: &[Option<PathChoice>],
) -> Result<Vec<PathChoice>> {
    let mut out = Vec::new();
    for (i, sess) in config.sessions.iter().enumerate() {
        if let Some(p) = kept.get(i).cloned().flatten() {
            out.push(p);
            continue;
        }
        let userspace = |reason: String| PathChoice {
            kernel: false,
            reason,
        };
        let choice = match sess.path {
            SessionPath::Userspace => userspace("path = \"userspace\"".into()),
            SessionPath::Auto | SessionPath::Kernel => {
                let copy = config.sources[sess.source].mode == SourceMode::Copy;
                match config.kernel_path_obstacle(i).or_else(|| {
                    if copy {
                        clone_targets_missing(config, i, target_ifindex)
                            .or_else(|| copy_tunnels_not_for_the_kernel(config, i, hops))
                    } else {
                        devices_refusing_redirects(config, i, target_ifindex)
                            .or_else(|| tunnels_not_for_the_kernel(config, i, target_ifindex, hops))
                    }
                }) {
                    None => PathChoice {
                        kernel: true,
                        reason: String::new(),
                    },
                    Some(why) if sess.path == SessionPath::Kernel => bail!(
                        "session `{}`: path = \"kernel\", but the in-kernel fast path cannot serve it: {why}",
                        sess.name
                    ),
                    Some(why) => userspace(why),
                }
            }
        };
        out.push(choice);
    }
    Ok(out)
}

/// Copy mode: the first of session `i`'s interface targets whose device does
/// not exist (the kernel path clones to it by ifindex), as a reason, or `None`.
pub(super) fn clone_targets_missing(
    config: &Config,
    i: usize,
    target_ifindex: &[Option<u32>],
) -> Option<String> {
    config.session_targets(i).into_iter().find_map(|t| {
        let TargetSpec::Interface { interface, .. } = &config.targets[t].spec else {
            return None;
        };
        target_ifindex[t].is_none().then(|| {
            format!(
                "interface {interface} (target `{}`) does not exist",
                config.targets[t].name
            )
        })
    })
}

/// Copy mode: why one of session `i`'s tunnel targets cannot be
/// encapsulated by the source's relay, or `None`: its route (resolved at
/// start), its `mtu` (the relay cuts copies to it; only the IP stack
/// fragments), its egress device (not one that a copy-mode source mirrors
/// on egress: the encapsulated copy would be classified there again), and
/// the TAP device the relay is.
pub(super) fn copy_tunnels_not_for_the_kernel(
    config: &Config,
    i: usize,
    hops: &Hops,
) -> Option<String> {
    for t in config.session_targets(i) {
        let name = &config.targets[t].name;
        let Some(tunnel) = config.targets[t].spec.tunnel() else {
            continue;
        };
        let hop = match &hops[t] {
            Some(Ok(hop)) => hop,
            Some(Err(e)) => return Some(format!("target `{name}`: {e}")),
            None => return Some(format!("target `{name}`: its route was not looked up")),
        };
        let dev = crate::kernel::netdev::name(hop.ifindex)
            .unwrap_or_else(|| format!("ifindex {}", hop.ifindex));
        if tunnel.mtu > hop.mtu {
            return Some(format!(
                "target `{name}`: mtu = {} is above its egress device {dev}'s MTU {}, and only \
                 the IP stack fragments",
                tunnel.mtu, hop.mtu
            ));
        }
        let looping = config
            .sources
            .iter()
            .find(|o| o.mode == SourceMode::Copy && o.egress() && o.interface == dev);
        if let Some(o) = looping {
            return Some(format!(
                "target `{name}` leaves through {dev}, whose egress copy-mode source `{}` \
                 mirrors: its encapsulated copies would be classified there again (a loop); \
                 userspace sends them past tcx",
                o.name
            ));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Some(format!(
                "target `{name}`: the relay device that encapsulates copy mode's tunnels is a \
                 TAP, and /dev/net/tun does not exist (no tun module?)"
            ));
        }
    }
    None
}

/// The first of session `i`'s interface targets whose device cannot take
/// frames redirected by XDP, as a reason, or `None`.
pub(super) fn devices_refusing_redirects(
    config: &Config,
    i: usize,
    target_ifindex: &[Option<u32>],
) -> Option<String> {
    for t in config.session_targets(i) {
        let TargetSpec::Interface { interface, .. } = &config.targets[t].spec else {
            continue;
        };
        let Some(ifindex) = target_ifindex[t] else {
            return Some(format!(
                "interface {interface} (target `{}`) does not exist",
                config.targets[t].name
            ));
        };
        match crate::kernel::xdp_features(ifindex) {
            Ok(f) if f & crate::kernel::query::XDP_ACT_NDO_XMIT != 0 => {}
            Ok(_) => {
                return Some(format!(
                    "interface {interface} (target `{}`) does not accept frames redirected by XDP \
                     (its driver lacks ndo_xdp_xmit; a veth needs an XDP program or GRO on its peer)",
                    config.targets[t].name
                ))
            }
            Err(e) => {
                return Some(format!(
                    "cannot query the XDP features of {interface} (target `{}`): {e}",
                    config.targets[t].name
                ))
            }
        }
    }
    None
}

/// The device each target's copies leave through: an interface target's
/// own, a tunnel's egress device (when resolved).
fn egress_device(t: usize, target_ifindex: &[Option<u32>], hops: &Hops) -> Option<u32> {
    match &hops[t] {
        Some(Ok(hop)) => Some(hop.ifindex),
        _ => target_ifindex[t],
    }
}

/// Why one of session `i`'s tunnel targets cannot go on the kernel path, or
/// `None`: its route (resolved at start), its egress device (must take
/// frames from XDP, as large as the tunnel's `mtu` and the source's frames),
/// and a device of its own among the source's targets (the kernel counts
/// transmits per device).
pub(super) fn tunnels_not_for_the_kernel(
    config: &Config,
    i: usize,
    target_ifindex: &[Option<u32>],
    hops: &Hops,
) -> Option<String> {
    let sess = &config.sessions[i];
    let source = &config.sources[sess.source];
    for t in config.session_targets(i) {
        let name = &config.targets[t].name;
        let Some(tunnel) = config.targets[t].spec.tunnel() else {
            continue;
        };
        let hop = match &hops[t] {
            Some(Ok(hop)) => hop,
            Some(Err(e)) => return Some(format!("target `{name}`: {e}")),
            None => return Some(format!("target `{name}`: its route was not looked up")),
        };
        let dev = crate::kernel::netdev::name(hop.ifindex)
            .unwrap_or_else(|| format!("ifindex {}", hop.ifindex));
        match crate::kernel::xdp_features(hop.ifindex) {
            Ok(f) if f & crate::kernel::query::XDP_ACT_NDO_XMIT != 0 => {}
            _ => {
                return Some(format!(
                    "target `{name}`: its egress device {dev} does not accept frames redirected \
                     by XDP (no ndo_xdp_xmit; a veth needs an XDP program or GRO on its peer)"
                ))
            }
        }
        if tunnel.mtu > hop.mtu {
            return Some(format!(
                "target `{name}`: mtu = {} is above its egress device {dev}'s MTU {}, and only \
                 the IP stack fragments",
                tunnel.mtu, hop.mtu
            ));
        }
        if let Some(src_mtu) = crate::kernel::netdev::mtu(&source.interface) {
            if src_mtu > hop.mtu {
                return Some(format!(
                    "target `{name}`: frames from {} (MTU {src_mtu}) may be longer than its \
                     egress device {dev} takes (MTU {}); the kernel would skip them before the \
                     tunnel cuts them, the userspace path cuts them",
                    source.interface, hop.mtu
                ));
            }
        }
        let shared = config
            .sessions_of(sess.source)
            .into_iter()
            .flat_map(|k| config.session_targets(k))
            .find(|&o| o != t && egress_device(o, target_ifindex, hops) == Some(hop.ifindex));
        if let Some(o) = shared {
            return Some(format!(
                "target `{name}` leaves through {dev}, as target `{}` does: the kernel path \
                 counts transmits per device, so each target of a source needs its own",
                config.targets[o].name
            ));
        }
    }
    None
}

/// Which tap source (if any) shares its first RX queue's UMEM with each
/// target. A tap source that may share picks the first interface target its
/// sessions reach that no other source took; a socket has one UMEM, so a
/// target shares with one source, and other sources copy into its queue as
/// before. `share_umem = "auto"` shares an interface target only between
/// devices that both do AF_XDP zero-copy (see [`ShareUmem::Auto`]), and says
/// so when it does not. A tap source that reaches no interface target shares
/// the first pcapng target that only its own sessions reach, in any mode:
/// the RX queue registers the target's queue memory as its UMEM and the
/// writer writes each frame from where the kernel put it, which saves the
/// only copy userspace makes (see [`share_candidates`] for the bounds).
pub(super) fn share_plan(config: &Config) -> Vec<Option<usize>> {
    let mut plan = vec![None; config.targets.len()];
    for (s, pick) in share_candidates(config).into_iter().enumerate() {
        let src = &config.sources[s];
        if let Some(t) = pick.pcapng_too_big {
            tracing::info!(
                source = %src.name,
                target = %config.targets[t].name,
                "not sharing the pcapng target's memory: with the source's umem_frames its \
                 queue_size needs more than 1 GiB pinned; copying into it instead"
            );
        }
        if let Some(t) = pick.pcapng {
            plan[t] = Some(s);
        }
        let Some(t) = pick.interface else { continue };
        let TargetSpec::Interface {
            interface,
            zero_copy,
        } = &config.targets[t].spec
        else {
            unreachable!("an interface pick is an interface target");
        };
        let zc = |setting: ZeroCopy, dev: &str| setting != ZeroCopy::Off && zero_copy_capable(dev);
        if src.share_umem != ShareUmem::Auto
            || (zc(src.zero_copy, &src.interface) && zc(*zero_copy, interface))
        {
            plan[t] = Some(s);
        } else {
            tracing::info!(
                source = %src.name,
                target = %config.targets[t].name,
                "not sharing the target's UMEM (share_umem = \"auto\"): AF_XDP zero-copy \
                 is not available on both devices, and in copy mode the kernel copies every \
                 frame anyway; set share_umem = true to share regardless"
            );
        }
    }
    plan
}

/// What one tap source may share its first RX queue with, from the config
/// alone: the first interface target its sessions reach that no source
/// before it took, or else the first pcapng target that only its own
/// sessions reach. A shared pcapng target restarts with its source (a
/// reload that restarts the source, its interface created again), so one
/// that other sources write to is not shared: they would restart with it.
/// And the shared area is pinned whole, as a UMEM is: a pcapng queue that
/// would take more than 1 GiB with the RX frames is not shared either
/// (`pcapng_too_big`, for the log).
#[derive(Default, Clone, Copy)]
struct SharePick {
    interface: Option<usize>,
    pcapng: Option<usize>,
    pcapng_too_big: Option<usize>,
}

fn share_candidates(config: &Config) -> Vec<SharePick> {
    let mut taken = vec![false; config.targets.len()];
    let mut picks = vec![SharePick::default(); config.sources.len()];
    // Per target, the sources whose sessions reach it.
    let mut feeders = vec![Vec::new(); config.targets.len()];
    for (k, sess) in config.sessions.iter().enumerate() {
        for t in config.session_targets(k) {
            if !feeders[t].contains(&sess.source) {
                feeders[t].push(sess.source);
            }
        }
    }
    for (s, src) in config.sources.iter().enumerate() {
        if src.mode != SourceMode::Tap || src.share_umem == ShareUmem::Off {
            continue;
        }
        let reached: Vec<usize> = config
            .sessions_of(s)
            .into_iter()
            .flat_map(|k| config.session_targets(k))
            .collect();
        let mut pick = SharePick {
            interface: reached.iter().copied().find(|&t| {
                !taken[t] && matches!(config.targets[t].spec, TargetSpec::Interface { .. })
            }),
            ..SharePick::default()
        };
        if pick.interface.is_none() {
            let own = reached.iter().copied().find(|&t| {
                matches!(config.targets[t].spec, TargetSpec::Pcapng(_)) && feeders[t] == [s]
            });
            if let Some(t) = own {
                let q = config.targets[t].queue_size;
                let frames =
                    crate::target::pcapng::queue_slots(q) as u64 + u64::from(src.umem_frames);
                if frames <= u64::from(crate::config::MAX_INTERFACE_QUEUE) {
                    pick.pcapng = Some(t);
                } else {
                    pick.pcapng_too_big = Some(t);
                }
            }
        }
        for t in [pick.interface, pick.pcapng].into_iter().flatten() {
            taken[t] = true;
        }
        picks[s] = pick;
    }
    picks
}

/// The sharing [`share_plan`] may pick from the config alone (before the
/// devices' zero-copy support is asked): per target, the tap source whose
/// first RX queue could share its UMEM. A reload keeps such a pair running
/// or restarts both.
pub(crate) fn share_picks(config: &Config) -> Vec<Option<usize>> {
    let mut plan = vec![None; config.targets.len()];
    for (s, pick) in share_candidates(config).into_iter().enumerate() {
        for t in [pick.interface, pick.pcapng].into_iter().flatten() {
            plan[t] = Some(s);
        }
    }
    plan
}

/// Whether `interface`'s driver reports AF_XDP zero-copy.
pub(super) fn zero_copy_capable(interface: &str) -> bool {
    crate::kernel::ifindex(interface)
        .ok()
        .and_then(|i| crate::kernel::xdp_features(i).ok())
        .is_some_and(|f| f & crate::kernel::query::XDP_ACT_XSK_ZEROCOPY != 0)
}

/// Binds RX queue `q` of a tap source to `host`'s UMEM, or says why not (the
/// caller then opens a queue with a UMEM of its own).
pub(super) fn join_host(cfg: &crate::config::Source, q: u32, host: &RxHost) -> Option<RxQueue> {
    let host = match host {
        RxHost::Umem(h) => h,
        RxHost::Memory(m) => {
            return match RxQueue::open_over(&cfg.interface, q, m, cfg.ring_size, cfg.zero_copy) {
                Ok(queue) => {
                    tracing::info!(
                        source = %cfg.name,
                        queue = q,
                        target = %m.target,
                        "RX queue shares the pcapng target's memory: its frames are written to \
                         the file without a copy"
                    );
                    Some(queue)
                }
                Err(e) => {
                    tracing::info!(
                        source = %cfg.name,
                        target = %m.target,
                        error = %e,
                        "cannot share the pcapng target's memory; copying into it instead"
                    );
                    None
                }
            };
        }
    };
    let wanted = match cfg.zero_copy {
        ZeroCopy::Auto => true,
        ZeroCopy::On => host.zero_copy(),
        ZeroCopy::Off => !host.zero_copy(),
    };
    if !wanted {
        tracing::info!(
            source = %cfg.name,
            target = %host.target,
            "not sharing the target's UMEM: its zero-copy mode differs from the source's zero_copy setting"
        );
        return None;
    }
    match RxQueue::join(&cfg.interface, q, host, cfg.ring_size) {
        Ok(queue) => {
            tracing::info!(
                source = %cfg.name,
                queue = q,
                target = %host.target,
                "RX queue shares the interface target's UMEM: its frames go out without a copy"
            );
            Some(queue)
        }
        Err(e) => {
            tracing::info!(
                source = %cfg.name,
                target = %host.target,
                error = %e,
                "cannot share the target's UMEM; copying into it instead"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    /// Three tap sources and a copy source; `@A@`, `@B@`, `@C@` are extra
    /// keys of the tap sources, `@Q@` of pcapng target own_b. Devices named
    /// here do not exist: none does AF_XDP zero-copy.
    const TEXT: &str = r#"
[[source]]
name = "a"
interface = "nope-a"
@A@
[[source]]
name = "b"
interface = "nope-b"
@B@
[[source]]
name = "c"
interface = "nope-c"
@C@
[[source]]
name = "live"
interface = "nope-l"
mode = "copy"
[[filter]]
name = "all"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"
[[target]]
name = "vx"
kind = "vxlan"
remote = "192.0.2.9"
[[target]]
name = "ids"
kind = "interface"
interface = "nope-t"
[[target]]
name = "own_a"
kind = "pcapng"
path = "/tmp/a.pcapng"
[[target]]
name = "own_b"
kind = "pcapng"
path = "/tmp/b.pcapng"
@Q@
[[target]]
name = "both"
kind = "pcapng"
path = "/tmp/both.pcapng"
[[session]]
name = "sa"
source = "a"
filter = "all"
targets = ["vx", "ids", "own_a"]
[[session]]
name = "sb"
source = "b"
filter = "all"
targets = ["vx", "own_b"]
[[session]]
name = "sc"
source = "c"
filter = "all"
targets = ["both"]
[[session]]
name = "sl"
source = "live"
filter = "all"
targets = ["both"]
"#;

    fn cfg(a: &str, b: &str, q: &str) -> Config {
        let text = TEXT
            .replace("@A@", a)
            .replace("@B@", b)
            .replace("@C@", "")
            .replace("@Q@", q);
        parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// Per target (vx, ids, own_a, own_b, both): the source sharing it.
    fn names(c: &Config, plan: &[Option<usize>]) -> Vec<Option<String>> {
        plan.iter()
            .map(|s| s.map(|s| c.sources[s].name.clone()))
            .collect()
    }

    fn some(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_string)).collect()
    }

    #[test]
    fn a_pcapng_target_only_its_source_reaches_is_shared() {
        // a reaches an interface target (not shared on "auto" without
        // zero-copy) and so shares no pcapng target either; b shares its own
        // pcapng target; c's is also the copy source's: not shared.
        let c = cfg("", "", "");
        assert_eq!(
            names(&c, &share_plan(&c)),
            some(&[None, None, None, Some("b"), None])
        );
        // What a reload couples: a with ids, b with own_b.
        assert_eq!(
            names(&c, &share_picks(&c)),
            some(&[None, Some("a"), None, Some("b"), None])
        );
    }

    #[test]
    fn share_umem_true_shares_the_interface_target() {
        let c = cfg("share_umem = true", "share_umem = true", "");
        assert_eq!(
            names(&c, &share_plan(&c)),
            some(&[None, Some("a"), None, Some("b"), None])
        );
    }

    /// The shared area is pinned whole: a pcapng queue that would take more
    /// than 1 GiB with the RX frames is copied into instead.
    #[test]
    fn a_pcapng_queue_too_large_to_pin_is_not_shared() {
        // 210,000 + 52,500 + 4,096 frames: over 262,144.
        let c = cfg("", "", "queue_size = 210000");
        assert_eq!(share_plan(&c), vec![None; 5]);
        assert_eq!(share_picks(&c), vec![None, Some(0), None, None, None]);
        // 206,438 + 51,609 + 2,048 = 260,095: fits.
        let c = cfg("", "umem_frames = 2048", "queue_size = 206438");
        assert_eq!(
            names(&c, &share_plan(&c)),
            some(&[None, None, None, Some("b"), None])
        );
    }

    #[test]
    fn share_umem_false_never_shares() {
        let c = cfg("share_umem = false", "share_umem = false", "");
        assert_eq!(share_plan(&c), vec![None; 5]);
        assert_eq!(share_picks(&c), vec![None; 5]);
    }
}
