//! Attaching a source's programs: tap-mode XDP, copy-mode XDP and tcx,
//! always through BPF links, so nothing outlives the process.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::query::{attached_prog_id, ifindex, prog_name};
use super::{LoaderError, SourceProgram};
use crate::config::{IngressHook, XdpMode};

/// How the XDP program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// Which copy-mode programs to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyHooks {
    /// Ingress, through XDP (`Some(IngressHook::Xdp)`) or tcx (`Tc`); `None`:
    /// not mirrored.
    pub ingress: Option<IngressHook>,
    /// Egress, through tcx.
    pub egress: bool,
}

impl SourceProgram {
    /// Attaches the tap-mode XDP program to `interface` through a BPF link.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<AttachMode, LoaderError> {
        let prog_fd = self.skel.progs.xdp_tap.as_fd().as_raw_fd();
        self.attach_xdp(prog_fd, interface, mode)
    }

    /// Attaches the copy-mode programs to `interface`: egress first (tcx),
    /// then ingress (XDP or tcx). Returns the XDP mode when XDP was used. On
    /// error nothing stays attached.
    pub(crate) fn attach_copy(
        &mut self,
        interface: &str,
        hooks: CopyHooks,
        mode: XdpMode,
    ) -> Result<Option<AttachMode>, LoaderError> {
        let idx = ifindex(interface)?;
        let result = self.attach_copy_links(interface, idx, hooks, mode);
        if result.is_err() {
            self.links.clear();
        }
        result
    }

    fn attach_copy_links(
        &mut self,
        interface: &str,
        idx: u32,
        hooks: CopyHooks,
        mode: XdpMode,
    ) -> Result<Option<AttachMode>, LoaderError> {
        // One tcx link, appended after the programs already there.
        let tcx = |prog: &libbpf_rs::ProgramMut<'_>, at, hook| {
            link_create(prog.as_fd().as_raw_fd(), idx, at, 0).map_err(|source| {
                LoaderError::AttachTc {
                    interface: interface.to_string(),
                    hook,
                    source,
                }
            })
        };
        if hooks.egress {
            let link = tcx(
                &self.skel.progs.tc_copy_egress,
                libbpf_sys::BPF_TCX_EGRESS,
                "tcx egress",
            )?;
            self.links.push(link);
        }
        match hooks.ingress {
            None => Ok(None),
            Some(IngressHook::Tc) => {
                let link = tcx(
                    &self.skel.progs.tc_copy_ingress,
                    libbpf_sys::BPF_TCX_INGRESS,
                    "tcx ingress",
                )?;
                self.links.push(link);
                Ok(None)
            }
            // `auto` is decided by the caller (dataplane's `clones::ingress_hook`);
            // undecided, it is what it is without a kernel-path session: XDP.
            Some(IngressHook::Xdp | IngressHook::Auto) => {
                let fd = self.skel.progs.xdp_copy.as_fd().as_raw_fd();
                self.attach_xdp(fd, interface, mode).map(Some)
            }
        }
    }

    fn attach_xdp(
        &mut self,
        prog_fd: RawFd,
        interface: &str,
        mode: XdpMode,
    ) -> Result<AttachMode, LoaderError> {
        let ifindex = ifindex(interface)?;
        let tries: &[AttachMode] = match mode {
            XdpMode::Auto => &[AttachMode::Native, AttachMode::Generic],
            XdpMode::Native => &[AttachMode::Native],
            XdpMode::Generic => &[AttachMode::Generic],
        };
        let mut last = None;
        for &m in tries {
            let flags = match m {
                AttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
                AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
            };
            match link_create(prog_fd, ifindex, libbpf_sys::BPF_XDP, flags) {
                Ok(fd) => {
                    self.links.push(fd);
                    return Ok(m);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                    let prog_id = attached_prog_id(ifindex);
                    return Err(LoaderError::Busy {
                        interface: interface.to_string(),
                        prog_id,
                        prog_name: prog_name(prog_id),
                        holders: super::holders::prog_holders(prog_id),
                    });
                }
                Err(e) => {
                    if mode == XdpMode::Auto && m == AttachMode::Native {
                        tracing::info!(
                            interface,
                            error = %e,
                            "native XDP unavailable, falling back to generic (skb) mode"
                        );
                    }
                    last = Some((m, e));
                }
            }
        }
        let (m, source) = last.expect("at least one attach mode was tried");
        Err(LoaderError::Attach {
            interface: interface.to_string(),
            mode: m.as_str(),
            source,
            hint: if m == AttachMode::Native {
                "; the driver may lack native XDP: try xdp_mode = \"generic\""
            } else {
                ""
            },
        })
    }
}

/// Attaches program `prog_fd` to `ifindex` (of this thread's network
/// namespace) through a BPF link: XDP with `flags` = `XDP_FLAGS_*`, or tcx.
/// Dropping the returned fd detaches it, as does the process dying.
pub fn link_create(
    prog_fd: RawFd,
    ifindex: u32,
    attach_type: libbpf_sys::bpf_attach_type,
    flags: u32,
) -> std::io::Result<OwnedFd> {
    // Safety: an all-zero `bpf_link_create_opts` is its documented default
    // (for tcx: no relative program, any revision).
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.flags = flags;
    // Safety: `prog_fd` is a loaded program, `opts` is initialised and sized.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, attach_type, &opts) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // Safety: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
