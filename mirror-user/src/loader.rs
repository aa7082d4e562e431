//! Loads the kernel programs for one source, fills their maps, and attaches
//! them through BPF links, so the kernel detaches them when the process dies.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};
use mirror_ebpf::mirror::types::{mirror_counter, mirror_rule};
use mirror_ebpf::mirror::{MirrorSkel, MirrorSkelBuilder};

use crate::config::XdpMode;

/// Number of per-source kernel counters (`enum mirror_counter`).
pub const COUNTERS: usize = mirror_counter::MIRROR_CNT_MAX.0 as usize;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("opening the BPF object: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("loading the BPF programs into the kernel (is this root, with BPF enabled?): {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("too many rules for one source: {count} (at most {max})")]
    TooManyRules { count: usize, max: u32 },
    #[error("BPF map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("no interface named `{0}` in this network namespace")]
    NoInterface(String),
    #[error(
        "another XDP program (id {prog_id}) is already attached to {interface}; \
         detach it first (`ip link set dev {interface} xdp off`), see `bpftool net`"
    )]
    Busy { interface: String, prog_id: u32 },
    #[error("attaching XDP to {interface} in {mode} mode: {source}{hint}")]
    Attach {
        interface: String,
        mode: &'static str,
        source: std::io::Error,
        hint: &'static str,
    },
}

/// How the XDP program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// The kernel side of one tap-mode source: loaded programs and maps, and, once
/// attached, the XDP link.
pub struct SourceProgram {
    skel: MirrorSkel<'static>,
    link: Option<OwnedFd>,
}

impl SourceProgram {
    /// Loads the programs with `rules` (already in evaluation order).
    pub fn load(rules: &[mirror_rule]) -> Result<Self, LoaderError> {
        let max = mirror_ebpf::limits::MAX_RULES;
        if rules.len() > max as usize {
            return Err(LoaderError::TooManyRules {
                count: rules.len(),
                max,
            });
        }
        // The skeleton borrows its object storage for as long as it lives; one
        // small allocation per loaded source, kept for the process lifetime.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = MirrorSkelBuilder::default()
            .open(storage)
            .map_err(LoaderError::Open)?;
        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
            rodata.rule_count = rules.len() as u32;
        }
        let skel = open.load().map_err(LoaderError::Load)?;
        for (i, rule) in rules.iter().enumerate() {
            // Safety: `mirror_rule` is a plain `repr(C)` struct of integers
            // generated from abi.h, so viewing it as bytes is sound.
            let value = unsafe { plain_bytes(rule) };
            skel.maps
                .rules
                .update(&(i as u32).to_ne_bytes(), value, MapFlags::ANY)
                .map_err(|source| LoaderError::Map {
                    map: "rules",
                    source,
                })?;
        }
        Ok(SourceProgram { skel, link: None })
    }

    /// The tap-mode XDP program (for `BPF_PROG_TEST_RUN`).
    pub fn xdp_tap(&self) -> &libbpf_rs::ProgramMut<'static> {
        &self.skel.progs.xdp_tap
    }

    /// Puts AF_XDP socket `fd` in the XSKMAP slot of RX queue `queue`.
    pub fn set_socket(&self, queue: u32, fd: RawFd) -> Result<(), LoaderError> {
        self.skel
            .maps
            .xsks
            .update(
                &queue.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|source| LoaderError::Map {
                map: "xsks",
                source,
            })
    }

    /// Attaches the XDP program to `interface` through a BPF link.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<AttachMode, LoaderError> {
        let ifindex = ifindex(interface)?;
        let prog_fd = self.skel.progs.xdp_tap.as_fd().as_raw_fd();
        let tries: &[AttachMode] = match mode {
            XdpMode::Auto => &[AttachMode::Native, AttachMode::Generic],
            XdpMode::Native => &[AttachMode::Native],
            XdpMode::Generic => &[AttachMode::Generic],
        };
        let mut last = None;
        for &m in tries {
            match link_xdp(prog_fd, ifindex, m) {
                Ok(fd) => {
                    self.link = Some(fd);
                    return Ok(m);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                    return Err(LoaderError::Busy {
                        interface: interface.to_string(),
                        prog_id: attached_prog_id(ifindex),
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

    /// Detaches the XDP program (also done by dropping).
    pub fn detach(&mut self) {
        self.link = None;
    }

    /// The per-source counters, summed over CPUs, indexed by `enum mirror_counter`.
    pub fn counters(&self) -> Result<[u64; COUNTERS], LoaderError> {
        let mut out = [0u64; COUNTERS];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = percpu_sum(&self.skel.maps.counters, i as u32).map_err(|source| {
                LoaderError::Map {
                    map: "counters",
                    source,
                }
            })?;
        }
        Ok(out)
    }

    /// Frames accepted by the session at kernel index `session`.
    pub fn session_matched(&self, session: u32) -> Result<u64, LoaderError> {
        percpu_sum(&self.skel.maps.session_matched, session).map_err(|source| LoaderError::Map {
            map: "session_matched",
            source,
        })
    }
}

fn percpu_sum(map: &libbpf_rs::MapMut<'_>, key: u32) -> Result<u64, libbpf_rs::Error> {
    let values = map.lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)?;
    Ok(values
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            v.get(..8)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
        })
        .sum())
}

/// Views a plain-old-data value as its bytes.
///
/// # Safety
/// `T` must have no padding bytes that are uninitialised and no pointers: a
/// `repr(C)` struct of integers, as libbpf-cargo generates from abi.h.
unsafe fn plain_bytes<T>(v: &T) -> &[u8] {
    // Safety: the caller guarantees `T` is plain data; the slice covers exactly `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// The ifindex of `name` in this thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32, LoaderError> {
    let c = CString::new(name).map_err(|_| LoaderError::NoInterface(name.to_string()))?;
    // Safety: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(LoaderError::NoInterface(name.to_string()));
    }
    Ok(idx)
}

fn link_xdp(prog_fd: RawFd, ifindex: u32, mode: AttachMode) -> std::io::Result<OwnedFd> {
    // Safety: an all-zero `bpf_link_create_opts` is its documented default.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.flags = match mode {
        AttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
        AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
    };
    // Safety: `prog_fd` is a loaded program, `opts` is initialised and sized.
    let fd =
        unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // Safety: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn attached_prog_id(ifindex: u32) -> u32 {
    let mut id = 0u32;
    // Safety: `id` is a valid out-pointer for the call.
    let _ = unsafe { libbpf_sys::bpf_xdp_query_id(ifindex as i32, 0, &mut id) };
    id
}
