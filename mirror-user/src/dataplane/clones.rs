//! Copy mode's kernel path: a copy-mode session whose targets are all local
//! interfaces is served by its tcx programs, which clone each frame it
//! mirrors to each target device (`bpf_clone_redirect`) and let the frame
//! pass on; nothing goes through the ring buffer or userspace.
//!
//! Here: where such a source hooks ingress (`ingress_hook = "auto"`), the
//! destinations its programs get, and one thread that keeps each
//! destination's `down` flag in step with its device (a clone sent to a
//! device that is down is discarded by the device's queue while the kernel
//! reports it taken, so mirror must not send it: it counts it `down`, as the
//! userspace path does).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::plan::PathChoice;
use super::source::Source;
use crate::config::{Config, IngressHook};
use crate::kernel::fast_path::max_len;
use crate::kernel::{netdev, CloneDest};

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

/// The destinations of copy-mode session `s` (config index) on the kernel
/// path: its targets' devices, in order, with the longest frame each takes.
/// `None` when a target has no device (the plan does not put such a session
/// on the kernel path).
pub(super) fn destinations(
    config: &Config,
    s: usize,
    target_ifindex: &[Option<u32>],
) -> Option<Vec<(usize, String, CloneDest)>> {
    config
        .session_targets(s)
        .into_iter()
        .map(|t| {
            let crate::config::TargetSpec::Interface { interface, .. } = &config.targets[t].spec
            else {
                return None;
            };
            Some((
                t,
                interface.clone(),
                CloneDest {
                    ifindex: target_ifindex[t]?,
                    max_len: max_len(netdev::mtu(interface)),
                },
            ))
        })
        .collect()
}

/// One destination of one kernel-path copy session.
pub(super) struct Watched {
    pub source: Arc<Source>,
    /// The session's kernel index in its source.
    pub session: u32,
    /// The destination's place in the session.
    pub key: u32,
    pub target: String,
    pub interface: String,
    /// The device the programs clone to; another device of the same name
    /// (deleted and re-created) is not it.
    pub ifindex: u32,
    pub down: bool,
}

impl Watched {
    /// Whether the device is up with carrier, and still the one cloned to
    /// (what the userspace path's sender checks too).
    pub(super) fn device_up(interface: &str, ifindex: u32) -> bool {
        crate::kernel::ifindex(interface).ok() == Some(ifindex)
            && netdev::is_running(interface).unwrap_or(false)
    }

    /// Reads the device's state and, when it changed, tells the programs.
    fn check(&mut self) {
        let down = !Self::device_up(&self.interface, self.ifindex);
        if down == self.down {
            return;
        }
        let Ok(mut program) = self.source.program.lock() else {
            return;
        };
        match program.set_clone_down(self.session, self.key, down) {
            Ok(()) => {
                self.down = down;
                if down {
                    tracing::warn!(
                        target = %self.target,
                        interface = %self.interface,
                        "kernel-path target down (or gone): its clones are counted `down` until it is up"
                    );
                } else {
                    tracing::info!(
                        target = %self.target,
                        interface = %self.interface,
                        "kernel-path target up again: cloning to it"
                    );
                }
            }
            Err(e) => {
                tracing::error!(target = %self.target, error = %e, "marking a kernel-path target")
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
