//! Copy mode's kernel path: a copy-mode session whose targets are all local
//! interfaces or kernel-capable tunnels (VXLAN, GRE, ERSPAN) is
//! served by its tcx programs, which clone each frame it mirrors to each
//! target device (`bpf_clone_redirect`), or for a tunnel to the source's
//! relay device whose program encapsulates it and sends it toward the
//! collector (`kernel::relay`), and let the frame pass on; nothing goes
//! through the ring buffer or userspace.
//!
//! Here: where such a source hooks ingress (`ingress_hook = "auto"`), the
//! destinations its programs get, and one thread that keeps each
//! destination's `down` flag, MTU and device (one created again under the
//! name) in step with its interface (a clone sent to a
//! device that is down is discarded by the device's queue while the kernel
//! reports it taken, so mirror must not send it: it counts it `down`, as the
//! userspace path does).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::engine::PendingTunnel;
use super::plan::{Hops, PathChoice};
use super::source::{Prepared, Source};
use crate::config::{Config, IngressHook, TargetSpec};
use crate::kernel::fast_path::max_len;
use crate::kernel::{netdev, CloneDest};
use crate::target::kernel_tunnel;

/// How often each destination device's state is read.
pub(super) const CHECK: Duration = Duration::from_millis(100);

/// The hook a copy-mode source's ingress is seen at: `ingress_hook` as
/// written, or for `"auto"` tcx when a session (`paths`, by kernel index)
/// is on the kernel path, since only tcx can clone a frame and let it pass
/// on, and XDP otherwise (earliest, and the cheapest ring-buffer path).
pub(super) fn ingress_hook(cfg: &crate::config::Source, paths: &[PathChoice]) -> IngressHook {
    match cfg.ingress_hook {
        IngressHook::Auto if paths.iter().any(|p| p.kernel) => IngressHook::Tc,
        IngressHook::Auto => IngressHook::Xdp,
        set => set,
    }
}

/// Logs where `ingress_hook = "auto"` hooked source `idx`'s ingress, and why.
pub(super) fn log_ingress_hook(
    config: &Config,
    idx: usize,
    prepared: &Prepared,
    hook: IngressHook,
) {
    let cfg = &config.sources[idx];
    if !cfg.ingress() || cfg.ingress_hook != IngressHook::Auto {
        return;
    }
    if hook == IngressHook::Tc {
        let cloning: Vec<&str> = prepared
            .sessions
            .iter()
            .zip(&prepared.paths)
            .filter(|(_, p)| p.kernel)
            .map(|(&s, _)| config.sessions[s].name.as_str())
            .collect();
        tracing::info!(
            source = %cfg.name,
            sessions = %cloning.join(", "),
            "ingress_hook = \"auto\": ingress at tcx, because these sessions clone frames in \
             the kernel, which XDP cannot do and let the frame pass"
        );
    } else {
        tracing::info!(
            source = %cfg.name,
            "ingress_hook = \"auto\": ingress through XDP, as no session of the source is on \
             the kernel path"
        );
    }
}

/// One destination of one kernel-path copy session.
pub(super) struct CloneDevice {
    /// The session's kernel index in its source.
    pub session: u32,
    /// The destination's place in the session.
    pub key: u32,
    pub target: String,
    pub interface: String,
    /// The device the programs clone to; another device of the same name
    /// (deleted and re-created) takes its place once it runs.
    pub ifindex: u32,
    pub down: bool,
    /// The device's MTU as the programs check frames against it.
    pub mtu: Option<u32>,
}

/// Gives each of a copy source's kernel-path sessions its destinations (its
/// targets' devices, in order, with the longest frame each takes), each
/// marked down when its device is; a tunnel target the source's relay (made
/// here, with its program, when a session has one) and its outer headers
/// in the session's tunnel slot. Before the source's programs attach.
/// Returns the destinations, for [`watch`], and the tunnels, for the keeper
/// thread (`tunnels::keep`).
pub(super) fn set_up(
    config: &Config,
    prepared: &mut Prepared,
    source_ifindex: u32,
    target_ifindex: &[Option<u32>],
    hops: &Hops,
) -> Result<(Vec<CloneDevice>, Vec<PendingTunnel>)> {
    let mut out = Vec::new();
    let mut tunnels = Vec::new();
    let tai_offset = super::clock::tai_offset_ns();
    let mut relay = None;
    for (k, &s) in prepared.sessions.iter().enumerate() {
        if !prepared.paths[k].kernel {
            continue;
        }
        let sess = &config.sessions[s];
        let name = &sess.name;
        let mut dests = Vec::new();
        for (key, t) in config.session_targets(s).into_iter().enumerate() {
            let spec = &config.targets[t].spec;
            if spec.tunnel().is_some() {
                // The plan puts only tunnels with a route here.
                let Some(Ok(hop)) = &hops[t] else {
                    bail!(
                        "session `{name}`: target `{}` has no route",
                        config.targets[t].name
                    );
                };
                let headers = kernel_tunnel::headers(spec, sess.vni, hop, tai_offset)
                    .with_context(|| {
                        format!(
                            "target `{}`: no kernel tunnel headers",
                            config.targets[t].name
                        )
                    })?;
                let relay_ifindex = match relay {
                    Some(i) => i,
                    None => {
                        let i = prepared
                            .program
                            .attach_relay(source_ifindex)
                            .context("copy mode's kernel tunnels need the relay device")?;
                        tracing::info!(
                            relay = %crate::kernel::relay::relay_name(source_ifindex),
                            ifindex = i,
                            "relay device created (a TAP held by the daemon, deleted with it): \
                             its tcx egress encapsulates the tunnel targets' clones"
                        );
                        relay = Some(i);
                        i
                    }
                };
                prepared
                    .program
                    .set_tunnel(k as u32, key as u32, &headers)
                    .with_context(|| format!("target `{}`", config.targets[t].name))?;
                dests.push(CloneDest {
                    ifindex: relay_ifindex,
                    max_len: u32::MAX,
                    tunnel: true,
                });
                tunnels.push(PendingTunnel {
                    session: k as u32,
                    key: key as u32,
                    target: t,
                    hop: *hop,
                    headers,
                    tai_offset,
                });
                continue;
            }
            let (TargetSpec::Interface { interface, .. }, Some(ifindex)) =
                (spec, target_ifindex[t])
            else {
                // The plan puts only sessions whose targets all have a device here.
                bail!(
                    "session `{name}`: target `{}` has no device",
                    config.targets[t].name
                );
            };
            let mtu = netdev::mtu(interface);
            dests.push(CloneDest {
                ifindex,
                max_len: max_len(mtu),
                tunnel: false,
            });
            out.push(CloneDevice {
                session: k as u32,
                key: key as u32,
                target: config.targets[t].name.clone(),
                interface: interface.clone(),
                ifindex,
                down: !device_up(interface, ifindex),
                mtu,
            });
        }
        prepared
            .program
            .set_clone_path(k as u32, &dests)
            .with_context(|| format!("session `{name}`: setting up the kernel path"))?;
    }
    for d in &out {
        if d.down {
            prepared
                .program
                .set_clone_down(d.session, d.key, true)
                .with_context(|| format!("target `{}`", d.target))?;
        }
    }
    Ok((out, tunnels))
}

/// Whether `interface` is up with carrier, and still the device `ifindex`
/// (what the userspace path's sender checks too).
fn device_up(interface: &str, ifindex: u32) -> bool {
    crate::kernel::ifindex(interface).ok() == Some(ifindex)
        && netdev::is_running(interface).unwrap_or(false)
}

/// A destination, with the source whose programs clone to it.
pub(super) struct Watched {
    pub source: Arc<Source>,
    pub device: CloneDevice,
}

impl Watched {
    /// Reads the device's state and MTU and, when they changed, tells the
    /// programs.
    fn check(&mut self) {
        let d = &mut self.device;
        // Deleted and created again under its name: a new device, running.
        let recreated = crate::kernel::ifindex(&d.interface)
            .ok()
            .filter(|&i| i != d.ifindex && netdev::is_running(&d.interface).unwrap_or(false));
        let down = recreated.is_none() && !device_up(&d.interface, d.ifindex);
        let mtu = if down {
            d.mtu
        } else {
            netdev::mtu(&d.interface)
        };
        if recreated.is_none() && down == d.down && mtu == d.mtu {
            return;
        }
        let Ok(mut program) = self.source.program.lock() else {
            return;
        };
        if let Some(ifindex) = recreated {
            match program.set_clone_ifindex(d.session, d.key, ifindex) {
                Ok(()) => {
                    d.ifindex = ifindex;
                    tracing::info!(
                        target = %d.target,
                        interface = %d.interface,
                        ifindex,
                        "kernel-path target's interface created again (a new device): picked up again"
                    );
                }
                Err(e) => {
                    tracing::error!(target = %d.target, error = %e, "pointing a kernel-path target at its new device");
                    return;
                }
            }
        }
        if mtu != d.mtu {
            match program.set_clone_max_len(d.session, d.key, max_len(mtu)) {
                Ok(()) => {
                    d.mtu = mtu;
                    tracing::info!(
                        target = %d.target,
                        interface = %d.interface,
                        mtu = mtu.unwrap_or(0),
                        "kernel-path target's MTU changed: longer clones are counted `too_big`"
                    );
                }
                Err(e) => {
                    tracing::error!(target = %d.target, error = %e, "setting a kernel-path target's MTU")
                }
            }
        }
        if down == d.down {
            return;
        }
        match program.set_clone_down(d.session, d.key, down) {
            Ok(()) => {
                d.down = down;
                if down {
                    tracing::warn!(
                        target = %d.target,
                        interface = %d.interface,
                        "kernel-path target down (or gone): its clones are counted `down` until it is up"
                    );
                } else {
                    tracing::info!(
                        target = %d.target,
                        interface = %d.interface,
                        "kernel-path target up again: cloning to it"
                    );
                }
            }
            Err(e) => {
                tracing::error!(target = %d.target, error = %e, "marking a kernel-path target")
            }
        }
    }
}

/// Keeps every destination's `down` flag in step with its device until
/// `stop` is set.
pub(super) fn watch(mut watched: Vec<Watched>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(CHECK);
        for w in &mut watched {
            w.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceMode;

    fn path(kernel: bool) -> PathChoice {
        PathChoice {
            kernel,
            reason: String::new(),
        }
    }

    #[test]
    fn auto_hooks_ingress_at_tcx_exactly_when_a_session_clones() {
        let text = r#"
[[source]]
name = "s"
interface = "x"
mode = "copy"
@HOOK@
[[filter]]
name = "all"
[[target]]
name = "t"
kind = "interface"
interface = "y"
[[session]]
name = "a"
source = "s"
filter = "all"
targets = ["t"]
"#;
        let source = |hook: &str| {
            crate::config::parse(&text.replace("@HOOK@", hook), "t.toml")
                .expect("valid")
                .sources
                .remove(0)
        };
        let auto = source("");
        assert_eq!(auto.ingress_hook, IngressHook::Auto);
        let (one, none) = ([path(false), path(true)], [path(false), path(false)]);
        assert_eq!(ingress_hook(&auto, &one), IngressHook::Tc);
        assert_eq!(ingress_hook(&auto, &none), IngressHook::Xdp);
        assert_eq!(ingress_hook(&auto, &[]), IngressHook::Xdp);
        // As written, whatever the paths (the plan already kept sessions
        // of an XDP source off the kernel path).
        for (hook, want) in [("xdp", IngressHook::Xdp), ("tc", IngressHook::Tc)] {
            let s = source(&format!("ingress_hook = \"{hook}\""));
            assert_eq!(ingress_hook(&s, &one), want);
            assert_eq!(ingress_hook(&s, &none), want);
        }
        // Named as stats show it: a copy source's userspace path is its ring.
        assert_eq!(path(true).name_in(SourceMode::Copy), "kernel");
        assert_eq!(path(false).name_in(SourceMode::Copy), "ring_buffer");
        assert_eq!(path(false).name_in(SourceMode::Tap), "af_xdp");
    }
}
