//! Loads the kernel programs for one source, fills their maps, and attaches
//! them through BPF links, so the kernel detaches them when the process dies.

pub mod copy_ring;
pub mod netdev;
pub mod xsk;

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use mirror_ebpf::mirror::types::mirror_counter;
use mirror_ebpf::mirror::{MirrorSkel, MirrorSkelBuilder};

use crate::config::{IngressHook, XdpMode};
use crate::filter::ruleset::{RuleSet, BITMAP_U64S};

/// Number of per-source kernel counters (`enum mirror_counter`).
pub const COUNTERS: usize = mirror_counter::MIRROR_CNT_MAX.0 as usize;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("opening the BPF object: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("loading the BPF programs into the kernel (is this root, with BPF enabled?): {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("creating the rule-set map `{map}`: {source}")]
    CreateMap {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("waiting for the kernel to finish with the old rule set (membarrier): {0}")]
    GracePeriod(#[source] std::io::Error),
    #[error("BPF map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("no interface named `{0}` in this network namespace")]
    NoInterface(String),
    #[error(
        "another XDP program, `{prog_name}` (id {prog_id}), is already attached to {interface}, \
         and mirror does not chain XDP programs (no libxdp multi-program dispatcher; \
         native and generic XDP cannot be mixed on one interface either). \
         Options: detach it (`ip link set dev {interface} xdp off`, see `bpftool net`), \
         or, for a copy-mode source, set ingress_hook = \"tc\" to mirror ingress at tcx, \
         which runs next to any XDP program"
    )]
    Busy {
        interface: String,
        prog_id: u32,
        prog_name: String,
    },
    #[error("attaching the {hook} program to {interface}: {source}")]
    AttachTc {
        interface: String,
        hook: &'static str,
        source: std::io::Error,
    },
    #[error("ring_buffer = {0} bytes: the kernel needs a power of two of at least 4096")]
    RingSize(u32),
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

/// The kernel side of one source: loaded programs and maps, and, once
/// attached, the XDP and/or tcx links.
pub struct SourceProgram {
    skel: MirrorSkel<'static>,
    /// Dropping a link detaches its program; so does the process dying.
    links: Vec<OwnedFd>,
    /// The generation frames are classified with (`active_generation`).
    generation: u32,
    /// The fast path's transmit-result tracepoint, once a session uses it.
    xmit_link: Option<libbpf_rs::Link>,
}

/// Direction numbers of the kernel's rule-set slots (`slot = dir * 2 + gen`).
const INGRESS: u32 = 0;
const EGRESS: u32 = 1;

/// Which copy-mode programs to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyHooks {
    /// Ingress, through XDP (`Some(IngressHook::Xdp)`) or tcx; `None`: not mirrored.
    pub ingress: Option<IngressHook>,
    /// Egress, through tcx.
    pub egress: bool,
}

impl SourceProgram {
    /// Loads the programs with the smallest copy-mode ring buffer (tap mode,
    /// tests). Until [`SourceProgram::install`] is called no rule set is
    /// present and every frame is counted `no_rule_set` and filtered.
    pub fn load() -> Result<Self, LoaderError> {
        Self::load_with_ring(mirror_ebpf::limits::RING_MIN)
    }

    /// Loads the programs with a copy-mode ring buffer of `ring_bytes` (a
    /// power of two, at least one page).
    pub fn load_with_ring(ring_bytes: u32) -> Result<Self, LoaderError> {
        Self::open_and_load(ring_bytes, true)
    }

    /// Loads the programs without the verdict cache: every frame is
    /// classified by the bitmap scan. For measuring and testing the scan
    /// alone (`cargo xtask bench filters`' cold rows, the differential tests).
    pub fn load_without_cache() -> Result<Self, LoaderError> {
        Self::open_and_load(mirror_ebpf::limits::RING_MIN, false)
    }

    fn open_and_load(ring_bytes: u32, verdict_cache: bool) -> Result<Self, LoaderError> {
        if !ring_bytes.is_power_of_two() || ring_bytes < mirror_ebpf::limits::RING_MIN {
            return Err(LoaderError::RingSize(ring_bytes));
        }
        // The skeleton borrows its object storage for as long as it lives; one
        // small allocation per loaded source, kept for the process lifetime.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = MirrorSkelBuilder::default()
            .open(storage)
            .map_err(LoaderError::Open)?;
        open.maps
            .copies
            .set_max_entries(ring_bytes)
            .map_err(|source| LoaderError::Map {
                map: "copies",
                source,
            })?;
        match open.maps.rodata_data.as_deref_mut() {
            Some(ro) => ro.verdict_cache = verdict_cache,
            None => {
                return Err(LoaderError::Map {
                    map: "verdict_cache",
                    source: libbpf_rs::Error::from(std::io::Error::other(".rodata not mapped")),
                })
            }
        }
        let skel = open.load().map_err(LoaderError::Load)?;
        Ok(SourceProgram {
            skel,
            links: Vec::new(),
            generation: 0,
            xmit_link: None,
        })
    }

    /// Replaces the rule sets atomically: builds the new maps in the idle
    /// generation, flips `active_generation` (one 4-byte map write), waits an
    /// RCU grace period so no program still runs on the old generation, and
    /// frees it. Every frame is classified by either the old or the new sets,
    /// whole. On error the old sets stay in force.
    pub fn install(
        &mut self,
        ingress: &RuleSet,
        egress: Option<&RuleSet>,
    ) -> Result<(), LoaderError> {
        let idle = self.generation ^ 1;
        // Build everything first: nothing the kernel reads changes until the flip.
        let new_ingress = RuleSetMaps::create(ingress)?;
        let new_egress = egress.map(RuleSetMaps::create).transpose()?;
        for (dir, maps) in [(INGRESS, Some(&new_ingress)), (EGRESS, new_egress.as_ref())] {
            let slot = dir * 2 + idle;
            match maps {
                Some(m) => self.set_slot(slot, m)?,
                None => self.clear_slot(slot)?,
            }
        }
        self.skel
            .maps
            .active_generation
            .update(&0u32.to_ne_bytes(), &idle.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "active_generation",
                source,
            })?;
        let old = self.generation;
        self.generation = idle;
        rcu_grace_period().map_err(LoaderError::GracePeriod)?;
        // No program runs on the old generation any more: release its maps
        // (the outer slots held the last references).
        for dir in [INGRESS, EGRESS] {
            self.clear_slot(dir * 2 + old)?;
        }
        Ok(())
    }

    fn set_slot(&self, slot: u32, m: &RuleSetMaps) -> Result<(), LoaderError> {
        let key = slot.to_ne_bytes();
        for (outer, name, inner) in [
            (&self.skel.maps.rule_index, "rule_index", &m.index),
            (&self.skel.maps.rule_addr, "rule_addr", &m.addr),
            (&self.skel.maps.rule_bitmaps, "rule_bitmaps", &m.bitmaps),
            (&self.skel.maps.rule_cache, "rule_cache", &m.cache),
        ] {
            let fd = inner.as_fd().as_raw_fd() as u32;
            outer
                .update(&key, &fd.to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| LoaderError::Map { map: name, source })?;
        }
        Ok(())
    }

    fn clear_slot(&self, slot: u32) -> Result<(), LoaderError> {
        let key = slot.to_ne_bytes();
        for (outer, name) in [
            (&self.skel.maps.rule_index, "rule_index"),
            (&self.skel.maps.rule_addr, "rule_addr"),
            (&self.skel.maps.rule_bitmaps, "rule_bitmaps"),
            (&self.skel.maps.rule_cache, "rule_cache"),
        ] {
            match outer.delete(&key) {
                Ok(()) => {}
                // An empty slot: nothing to release.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(source) => return Err(LoaderError::Map { map: name, source }),
            }
        }
        Ok(())
    }

    /// The tap-mode XDP program (for `BPF_PROG_TEST_RUN`).
    pub fn xdp_tap(&self) -> &libbpf_rs::ProgramMut<'static> {
        &self.skel.progs.xdp_tap
    }

    /// The tap program's fd, for [`test_classify`] from another thread.
    pub fn xdp_tap_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.skel.progs.xdp_tap.as_fd()
    }

    /// The copy-mode programs' fds, for `BPF_PROG_TEST_RUN`: XDP ingress,
    /// tcx egress, tcx ingress.
    pub fn copy_fds(&self) -> [std::os::fd::BorrowedFd<'_>; 3] {
        [
            self.skel.progs.xdp_copy.as_fd(),
            self.skel.progs.tc_copy_egress.as_fd(),
            self.skel.progs.tc_copy_ingress.as_fd(),
        ]
    }

    /// A handle on the copy-mode ring buffer, for the consumer thread.
    pub fn copies(&self) -> Result<MapHandle, LoaderError> {
        MapHandle::try_from(&self.skel.maps.copies).map_err(|source| LoaderError::Map {
            map: "copies",
            source,
        })
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

    /// Attaches the tap-mode XDP program to `interface` through a BPF link.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<AttachMode, LoaderError> {
        let prog_fd = self.skel.progs.xdp_tap.as_fd().as_raw_fd();
        self.attach_xdp(prog_fd, interface, mode)
    }

    /// Attaches the copy-mode programs to `interface`: egress first (tcx),
    /// then ingress (XDP or tcx). Returns the XDP mode when XDP was used. On
    /// error nothing stays attached.
    pub fn attach_copy(
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
            Some(IngressHook::Xdp) => {
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

    /// Detaches every program (also done by dropping).
    pub fn detach(&mut self) {
        self.links.clear();
        self.xmit_link = None;
    }

    /// The per-source counters of both directions together, summed over
    /// CPUs, indexed by `enum mirror_counter`.
    pub fn counters(&self) -> Result<[u64; COUNTERS], LoaderError> {
        let [ingress, egress] = self.counters_by_direction()?;
        Ok(std::array::from_fn(|i| ingress[i] + egress[i]))
    }

    /// The per-source counters, `[ingress, egress]`, summed over CPUs.
    pub fn counters_by_direction(&self) -> Result<[[u64; COUNTERS]; 2], LoaderError> {
        let mut out = [[0u64; COUNTERS]; 2];
        for (dir, counters) in out.iter_mut().enumerate() {
            for (i, slot) in counters.iter_mut().enumerate() {
                let key = (dir * COUNTERS + i) as u32;
                *slot = percpu_sum(&self.skel.maps.counters, key).map_err(|source| {
                    LoaderError::Map {
                        map: "counters",
                        source,
                    }
                })?;
            }
        }
        Ok(out)
    }

    /// Copy mode: the kernel wakes the ring's reader only once `bytes` wait
    /// (0: whenever the reader had caught up); the reader must then also
    /// poll on a timer.
    pub fn set_wake_bytes(&mut self, bytes: u64) -> Result<(), LoaderError> {
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) => {
                bss.copy_wake_bytes = bytes;
                Ok(())
            }
            None => Err(bss_error("copy_wake_bytes", 0)),
        }
    }

    /// Copy mode: copies of the session at kernel index `session` carry at
    /// most `bytes` of each frame (0: the whole frame).
    pub fn set_snap(&mut self, session: u32, bytes: u32) -> Result<(), LoaderError> {
        let slot = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .and_then(|bss| bss.session_snap.get_mut(session as usize));
        match slot {
            Some(v) => {
                *v = bytes;
                Ok(())
            }
            None => Err(bss_error("session_snap", session)),
        }
    }

    /// Mirrors 1 in `n` frames the session at kernel index `session` accepts
    /// (0 or 1: every frame). Takes effect with the next frame.
    pub fn set_sampling(&mut self, session: u32, n: u32) -> Result<(), LoaderError> {
        let slot = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .and_then(|bss| bss.session_sample.get_mut(session as usize));
        match slot {
            Some(v) => {
                *v = n;
                Ok(())
            }
            None => Err(bss_error("session_sample", session)),
        }
    }

    /// Frames of the session at kernel index `session` skipped by its sampling.
    pub fn session_sampled_out(&self, session: u32) -> Result<u64, LoaderError> {
        percpu_sum(&self.skel.maps.session_sampled_out, session).map_err(|source| {
            LoaderError::Map {
                map: "session_sampled_out",
                source,
            }
        })
    }

    /// Puts the session at kernel index `session` on the in-kernel fast path:
    /// a DEVMAP_HASH with one entry per target device in `ifindexes` goes
    /// into its `fast_sessions` slot, and each device gets fast-path
    /// counters. `generic`: the source's XDP runs in generic mode, where the
    /// transmit tracepoint does not fire, so each entry runs
    /// `xdp_fast_target` to count instead. Frames the session accepted
    /// before this went through userspace, counted there. Also attaches the
    /// transmit tracepoint (once per source).
    pub fn set_fast_path(
        &mut self,
        session: u32,
        source_ifindex: u32,
        ifindexes: &[u32],
        generic: bool,
    ) -> Result<(), LoaderError> {
        let map_err = |map| move |source| LoaderError::Map { map, source };
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let devmap = MapHandle::create(
            MapType::DevmapHash,
            Some("mirror_fast"),
            4,
            8,
            mirror_ebpf::limits::MAX_FAST_TARGETS,
            &opts,
        )
        .map_err(|source| LoaderError::CreateMap {
            map: "mirror_fast",
            source,
        })?;
        // Native XDP: no program per destination (fd 0 = none).
        let prog_fd = if generic {
            self.skel.progs.xdp_fast_target.as_fd().as_raw_fd()
        } else {
            0
        };
        let zero = vec![0u8; std::mem::size_of::<mirror_ebpf::mirror::types::mirror_fast_stats>()];
        let cpus = libbpf_rs::num_possible_cpus().map_err(map_err("fast_stats"))?;
        for (key, &ifindex) in ifindexes.iter().enumerate() {
            // struct bpf_devmap_val: the device, then the program to run.
            let mut val = ifindex.to_ne_bytes().to_vec();
            val.extend_from_slice(&prog_fd.to_ne_bytes());
            devmap
                .update(&(key as u32).to_ne_bytes(), &val, MapFlags::ANY)
                .map_err(map_err("mirror_fast"))?;
            let k = ifindex.to_ne_bytes();
            let known = self
                .skel
                .maps
                .fast_stats
                .lookup_percpu(&k, MapFlags::ANY)
                .map_err(map_err("fast_stats"))?
                .is_some();
            if !known {
                self.skel
                    .maps
                    .fast_stats
                    .update_percpu(&k, &vec![zero.clone(); cpus], MapFlags::NO_EXIST)
                    .map_err(map_err("fast_stats"))?;
            }
        }
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) if (session as usize) < bss.session_single.len() => {
                bss.source_ifindex = source_ifindex;
                bss.session_single[session as usize] = u8::from(ifindexes.len() == 1);
            }
            _ => return Err(bss_error("session_single", session)),
        }
        if self.xmit_link.is_none() {
            let link = self
                .skel
                .progs
                .fast_xmit
                .attach()
                .map_err(map_err("fast_xmit (tracepoint xdp:xdp_devmap_xmit)"))?;
            self.xmit_link = Some(link);
        }
        let fd = devmap.as_fd().as_raw_fd() as u32;
        self.skel
            .maps
            .fast_sessions
            .update(&session.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("fast_sessions"))
    }

    /// (frames, bytes) the session at kernel index `session` sent down the fast path.
    pub fn session_kernel(&self, session: u32) -> Result<(u64, u64), LoaderError> {
        let per_cpu = self
            .skel
            .maps
            .session_kernel
            .lookup_percpu(&session.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "session_kernel",
                source,
            })?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .fold((0, 0), |(p, b), v| (p + u64_at(v, 0), b + u64_at(v, 1))))
    }

    /// Fast-path counters of target device `ifindex`, summed over CPUs
    /// (zeros for a device this source never sent to).
    pub fn fast_stats(&self, ifindex: u32) -> Result<FastStats, LoaderError> {
        let per_cpu = self
            .skel
            .maps
            .fast_stats
            .lookup_percpu(&ifindex.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "fast_stats",
                source,
            })?
            .unwrap_or_default();
        let mut out = FastStats::default();
        for v in per_cpu {
            out.packets += u64_at(&v, 0);
            out.bytes += u64_at(&v, 1);
            out.xmit_drops += u64_at(&v, 2);
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

/// `struct mirror_fast_stats` of one target device, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastStats {
    /// Frames handed to the device's XDP transmit.
    pub packets: u64,
    /// Their bytes (generic XDP only).
    pub bytes: u64,
    /// Of those, refused by the device (native XDP only).
    pub xmit_drops: u64,
}

/// The `i`th u64 of a map value (0 when it is shorter).
fn u64_at(value: &[u8], i: usize) -> u64 {
    value
        .get(i * 8..i * 8 + 8)
        .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
}

fn bss_error(map: &'static str, session: u32) -> LoaderError {
    LoaderError::Map {
        map,
        source: libbpf_rs::Error::from(std::io::Error::other(format!(
            "session index {session} out of range or .bss not mapped"
        ))),
    }
}

/// Slot `key` of a per-CPU map whose value starts with a u64, summed over CPUs.
pub fn percpu_sum(map: &libbpf_rs::MapMut<'_>, key: u32) -> Result<u64, libbpf_rs::Error> {
    let values = map.lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)?;
    Ok(values
        .unwrap_or_default()
        .iter()
        .map(|v| u64_at(v, 0))
        .sum())
}

/// `struct mirror_meta` as the kernel wrote it in front of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub session: u16,
    pub hash: u32,
    /// CLOCK_TAI nanoseconds.
    pub tstamp: u64,
}

/// Reads (and clears the magic of) `struct mirror_meta` from the bytes in front of a frame.
pub fn read_meta(meta: &mut [u8]) -> Option<Meta> {
    let len = meta.len();
    let m = meta.get_mut(len.checked_sub(mirror_ebpf::limits::META_LEN)?..)?;
    if u16::from_ne_bytes([m[0], m[1]]) != mirror_ebpf::limits::META_MAGIC {
        return None;
    }
    m[0] = 0;
    m[1] = 0;
    Some(Meta {
        session: u16::from_ne_bytes([m[2], m[3]]),
        hash: u32::from_ne_bytes([m[4], m[5], m[6], m[7]]),
        tstamp: u64::from_ne_bytes(m[8..16].try_into().ok()?),
    })
}

/// Runs `frame` once through the tap program `prog` (BPF_PROG_TEST_RUN) and
/// returns the session the kernel chose, read from the XDP metadata it wrote
/// (`struct mirror_meta`), or `None` when the frame was filtered. For tests
/// and benchmarks: the program's counters count the run.
pub fn test_classify(
    prog: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
) -> std::io::Result<Option<u16>> {
    Ok(test_run(prog, frame)?.map(|m| m.session))
}

/// Like [`test_classify`], with the whole metadata (flow hash, time stamp).
pub fn test_run(prog: std::os::fd::BorrowedFd<'_>, frame: &[u8]) -> std::io::Result<Option<Meta>> {
    let (_, mut out) = test_run_raw(prog, frame)?;
    // The output starts at data_meta: `struct mirror_meta` when the frame matched.
    let len = out.len();
    let meta_len = mirror_ebpf::limits::META_LEN;
    if len == frame.len() + meta_len && out[meta_len..len] == *frame {
        if let Some(m) = read_meta(&mut out[..meta_len]) {
            return Ok(Some(m));
        }
    }
    if len == frame.len() && out[..len] == *frame {
        return Ok(None);
    }
    Err(std::io::Error::other(format!(
        "unexpected test-run output: {len} bytes for a {}-byte frame",
        frame.len()
    )))
}

/// Runs `frame` once through any program (BPF_PROG_TEST_RUN) and returns its
/// return value and the frame as the program left it. For the copy-mode
/// programs, whose records then wait in [`SourceProgram::copies`].
pub fn test_run_raw(
    prog: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
) -> std::io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: frame.as_ptr().cast(),
        data_size_in: frame.len() as u32,
        data_out: out.as_mut_ptr().cast(),
        data_size_out: out.len() as u32,
        repeat: 1,
        ..Default::default()
    };
    // Safety: the buffers outlive the call and their sizes are passed with them.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    out.truncate(opts.data_size_out as usize);
    Ok((opts.retval, out))
}

/// The four inner maps of one rule set (see abi.h), created and filled.
struct RuleSetMaps {
    index: MapHandle,
    addr: MapHandle,
    bitmaps: MapHandle,
    /// The verdict cache, created empty with the set (a new set never sees
    /// an old set's verdicts).
    cache: MapHandle,
}

impl RuleSetMaps {
    fn create(set: &RuleSet) -> Result<Self, LoaderError> {
        let index_values: Vec<u8> = set.index.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let node_values: Vec<u8> = set
            .addr_nodes
            .iter()
            .flat_map(|n| n.iter().flat_map(|e| e.to_ne_bytes()))
            .collect();
        let bitmap_values: Vec<u8> = set
            .bitmaps
            .iter()
            .flat_map(|b| b.iter().flat_map(|w| w.to_ne_bytes()))
            .collect();
        Ok(RuleSetMaps {
            // Same size in every set, as the inner template declares it: no
            // BPF_F_INNER_MAP. The trie and bitmaps are sized per set.
            index: filled_array("mirror_rule_ix", 4, set.index.len(), 0, &index_values)?,
            addr: filled_array(
                "mirror_rule_addr",
                1024,
                set.addr_nodes.len(),
                libbpf_sys::BPF_F_INNER_MAP,
                &node_values,
            )?,
            bitmaps: filled_array(
                "mirror_rule_bm",
                BITMAP_U64S * 8,
                set.bitmaps.len(),
                libbpf_sys::BPF_F_INNER_MAP,
                &bitmap_values,
            )?,
            cache: verdict_cache()?,
        })
    }
}

/// An empty verdict cache (struct mirror_cache_entry per slot and CPU), the
/// size the inner template declares.
fn verdict_cache() -> Result<MapHandle, LoaderError> {
    let map = "mirror_rule_vc";
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    MapHandle::create(
        MapType::PercpuArray,
        Some(map),
        4,
        std::mem::size_of::<mirror_ebpf::mirror::types::mirror_cache_entry>() as u32,
        mirror_ebpf::mirror::types::mirror_limits::MIRROR_CACHE_SLOTS.0,
        &opts,
    )
    .map_err(|source| LoaderError::CreateMap { map, source })
}

/// Creates an ARRAY map of `entries` values of `value_size` bytes (keys
/// 0..entries) and fills it from `values` with one batch update.
fn filled_array(
    map: &'static str,
    value_size: usize,
    entries: usize,
    flags: u32,
    values: &[u8],
) -> Result<MapHandle, LoaderError> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: flags,
        ..Default::default()
    };
    let handle = MapHandle::create(
        MapType::Array,
        Some(map),
        4,
        value_size as u32,
        entries.max(1) as u32,
        &opts,
    )
    .map_err(|source| LoaderError::CreateMap { map, source })?;
    if entries > 0 {
        let keys: Vec<u8> = (0..entries as u32).flat_map(u32::to_ne_bytes).collect();
        handle
            .update_batch(&keys, values, entries as u32, MapFlags::ANY, MapFlags::ANY)
            .map_err(|source| LoaderError::Map { map, source })?;
    }
    Ok(handle)
}

/// Returns once every CPU has passed an RCU grace period: afterwards no BPF
/// program that started before the call is still running.
/// `MEMBARRIER_CMD_GLOBAL` is `synchronize_rcu()` in the kernel.
fn rcu_grace_period() -> std::io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // Safety: membarrier takes two integer arguments and touches no user memory.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        // nohz_full kernels refuse MEMBARRIER_CMD_GLOBAL. An XDP program runs
        // for microseconds inside one NAPI poll; a tenth of a second is many
        // orders of magnitude beyond it.
        std::thread::sleep(std::time::Duration::from_millis(100));
        return Ok(());
    }
    Err(err)
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

/// A BPF link of `prog_fd` to `ifindex` at `attach_type` (XDP with its mode
/// flags, or tcx appended after the programs already there).
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

/// The BPF programs attached to an interface, as (id, name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    pub xdp: Vec<(u32, String)>,
    pub tcx_ingress: Vec<(u32, String)>,
    pub tcx_egress: Vec<(u32, String)>,
}

/// Which XDP and tcx programs are attached to `interface` in this thread's
/// network namespace (what `bpftool net` shows).
pub fn attached(interface: &str) -> Result<Attached, LoaderError> {
    let idx = ifindex(interface)?;
    let xdp_id = attached_prog_id(idx);
    let named = |ids: Vec<u32>| ids.into_iter().map(|id| (id, prog_name(id))).collect();
    Ok(Attached {
        xdp: named(if xdp_id == 0 {
            Vec::new()
        } else {
            vec![xdp_id]
        }),
        tcx_ingress: named(tcx_prog_ids(idx, libbpf_sys::BPF_TCX_INGRESS)),
        tcx_egress: named(tcx_prog_ids(idx, libbpf_sys::BPF_TCX_EGRESS)),
    })
}

fn tcx_prog_ids(ifindex: u32, attach_type: libbpf_sys::bpf_attach_type) -> Vec<u32> {
    let mut ids = [0u32; 64];
    let mut count = ids.len() as u32;
    // Safety: `ids` has room for `count` ids; the other pointers may be NULL.
    let rc = unsafe {
        libbpf_sys::bpf_prog_query(
            ifindex as i32,
            attach_type,
            0,
            std::ptr::null_mut(),
            ids.as_mut_ptr(),
            &mut count,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    ids[..(count as usize).min(ids.len())].to_vec()
}

/// The kernel's information on loaded program `id`, when it can be read.
pub fn prog_info(id: u32) -> Option<libbpf_sys::bpf_prog_info> {
    if id == 0 {
        return None;
    }
    // Safety: plain syscall wrapper; returns a new fd or a negative errno.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    // Safety: the kernel just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Safety: bpf_prog_info is plain old data; all-zero is valid.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // Safety: `info` is a valid buffer of `len` bytes.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    (rc == 0).then_some(info)
}

/// The name of loaded program `id`, or "?" when it cannot be read.
fn prog_name(id: u32) -> String {
    let Some(info) = prog_info(id) else {
        return "?".into();
    };
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&name).into_owned()
}

/// `NETDEV_XDP_ACT_NDO_XMIT` (linux/netdev.h): other devices' XDP programs
/// can redirect frames into this one.
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// `NETDEV_XDP_ACT_XSK_ZEROCOPY` (linux/netdev.h): the driver binds AF_XDP
/// sockets in zero-copy mode.
pub const XDP_ACT_XSK_ZEROCOPY: u64 = 1 << 3;

/// The XDP features the kernel reports for `ifindex` (`NETDEV_XDP_ACT_*`
/// bits, from the netdev generic-netlink family; 0 on kernels before 6.3).
pub fn xdp_features(ifindex: u32) -> std::io::Result<u64> {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // Safety: `opts` is a valid, sized bpf_xdp_query_opts.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(opts.feature_flags)
}

fn attached_prog_id(ifindex: u32) -> u32 {
    let mut id = 0u32;
    // Safety: `id` is a valid out-pointer for the call.
    let _ = unsafe { libbpf_sys::bpf_xdp_query_id(ifindex as i32, 0, &mut id) };
    id
}
