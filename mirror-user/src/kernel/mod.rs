//! The kernel side, and nothing else: loading the eBPF programs
//! (`mirror-ebpf`'s skeleton), filling and reading their maps, attaching them
//! through BPF links, and the AF_XDP sockets and copy ring they hand frames
//! to. Like katran's `BpfAdapter`, it holds no policy: which session goes
//! where, and why, is decided in `dataplane/`; what a frame means, in `filter/`.
//!
//! One file per concern, all working on one [`SourceProgram`] (the programs
//! and maps of one source):
//! - this file: loading, the program handles, detaching;
//! - [`attach`]: XDP and tcx attachment through links (the kernel detaches
//!   them when the process dies);
//! - [`rule_maps`]: compiled rule sets as map-in-map tables, swapped atomically;
//! - [`tuning`]: the per-session settings the programs read from `.bss`;
//! - [`fast_path`]: the in-kernel path's DEVMAPs and their counters;
//! - [`clone_path`]: copy mode's kernel path (tcx clones) and its counters;
//! - [`relay`]: copy mode's kernel tunnels: the relay TAP device and its program;
//! - [`counters`]: the per-source and per-session counters;
//! - [`query`]: interfaces, attached programs and device XDP features;
//! - [`meta`] / [`copy_ring`]: what the programs hand over with each frame
//!   (AF_XDP metadata, copy-mode ring records);
//! - [`xsk`]: AF_XDP sockets and UMEMs; [`netdev`]: device ioctls;
//! - [`test_run`]: `BPF_PROG_TEST_RUN` for tests and benchmarks.
//!
//! It may use `config` (attach modes, hooks) and `filter` (the compiled
//! [`RuleSet`](crate::filter::ruleset::RuleSet)), nothing above.

pub mod attach;
pub mod clone_path;
pub mod copy_ring;
pub mod counters;
pub mod fast_path;
pub mod holders;
pub mod meta;
pub mod netdev;
pub mod query;
pub mod relay;
pub mod route;
pub mod rule_maps;
pub mod test_run;
pub mod tuning;
pub mod xsk;

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use mirror_ebpf::mirror::{MirrorSkel, MirrorSkelBuilder};

pub use attach::{link_create, AttachMode, CopyHooks};
pub use clone_path::{CloneDest, CloneStats};
pub use counters::{percpu_sum, CutoffCounts, COUNTERS};
pub use fast_path::{FastDest, FastSession, FastStats, PickCount, TunnelHeaders, TunnelStats};
pub use meta::{read_meta, Meta};
pub use query::{attached, ifindex, prog_info, xdp_features, Attached};
pub use rule_maps::rcu_grace_period;
pub use test_run::{test_classify, test_run, test_run_raw, test_run_skb, SkbRun};

/// What loading, filling or attaching the programs can fail with.
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
        "another XDP program, `{prog_name}` (id {prog_id}, {holders}), is already attached to {interface}, \
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
        /// Which processes hold it ([`holders::prog_holders`]).
        holders: String,
    },
    #[error("attaching the {hook} program to {interface}: {source}")]
    AttachTc {
        interface: String,
        hook: &'static str,
        source: std::io::Error,
    },
    #[error("relay device {name} (copy mode's kernel tunnels): {step}: {source}")]
    Relay {
        name: String,
        step: &'static str,
        #[source]
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

/// A `.bss` setting that has no slot for `session` (or no mapped `.bss`).
fn bss_error(map: &'static str, session: u32) -> LoaderError {
    LoaderError::Map {
        map,
        source: libbpf_rs::Error::from(std::io::Error::other(format!(
            "session index {session} out of range or .bss not mapped"
        ))),
    }
}

/// The kernel side of one source: loaded programs and maps, and, once
/// attached, the XDP and/or tcx links.
pub struct SourceProgram {
    /// Dropping a link detaches its program; so does the process dying.
    /// First, before the object below: nothing runs on a half-dropped one
    /// (its maps gone under a program still attached, say).
    links: Vec<OwnedFd>,
    /// The generation frames are classified with (`active_generation`).
    generation: u32,
    /// The inner maps in each rule-set slot, `[direction][generation]`: an
    /// install rewrites the idle generation's in place when they have room.
    rule_maps: [[Option<rule_maps::RuleSetMaps>; 2]; 2],
    /// The fast path's transmit-result tracepoint, once a session uses it.
    xmit_link: Option<libbpf_rs::Link>,
    /// Each kernel-path session's DEVMAPs (both versions of each variant),
    /// kept to take a destination out and put it back, or move a tunnel
    /// target to another egress device when its route does.
    fast_devmaps: Vec<fast_path::FastDevmap>,
    /// Per kernel-path session: what each destination should be and what
    /// each version of its DEVMAPs and down bits holds.
    fast_dests: Vec<fast_path::DestState>,
    /// Per kernel tunnel (session, key): every egress device it has sent
    /// through, whose transmit counters are its.
    tunnel_devices: Vec<((u32, u32), Vec<u32>)>,
    /// The fast path runs in generic XDP (interface entries then run
    /// `xdp_fast_target` to count).
    fast_generic: bool,
    /// Copy mode's relay device, when a session has kernel tunnels; after
    /// `links`, so its program is detached before the device goes.
    relay: Option<relay::Relay>,
    /// The loaded object, dropped last (fields drop in this order).
    skel: MirrorSkel<'static>,
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
        Self::open_and_load(ring_bytes, true, 1)
    }

    /// Loads the programs with a copy-mode ring buffer of `ring_bytes` and
    /// room to track `flows` flows for the sessions' per-flow cutoff (at
    /// least 1; [`mirror_ebpf::limits::FLOWS`] when a session has one).
    pub fn load_with_flows(ring_bytes: u32, flows: u32) -> Result<Self, LoaderError> {
        Self::open_and_load(ring_bytes, true, flows.max(1))
    }

    /// Loads the programs without the verdict cache: every frame is
    /// classified by the bitmap scan. For measuring and testing the scan
    /// alone (`cargo xtask bench filters`' cold rows, the differential tests).
    pub fn load_without_cache() -> Result<Self, LoaderError> {
        Self::open_and_load(mirror_ebpf::limits::RING_MIN, false, 1)
    }

    fn open_and_load(
        ring_bytes: u32,
        verdict_cache: bool,
        flows: u32,
    ) -> Result<Self, LoaderError> {
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
        // The flow table costs memory (LRU hashes are preallocated): only
        // sources with a per-flow cutoff get more than one entry.
        open.maps
            .flows
            .set_max_entries(flows)
            .map_err(|source| LoaderError::Map {
                map: "flows",
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
            rule_maps: Default::default(),
            xmit_link: None,
            fast_devmaps: Vec::new(),
            fast_dests: Vec::new(),
            tunnel_devices: Vec::new(),
            fast_generic: false,
            relay: None,
        })
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

    /// Copy mode's relay program (`tc_relay`), for `BPF_PROG_TEST_RUN`.
    pub fn relay_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.skel.progs.tc_relay.as_fd()
    }

    /// A handle on the copy-mode ring buffer, for the consumer thread.
    pub fn copies(&self) -> Result<MapHandle, LoaderError> {
        MapHandle::try_from(&self.skel.maps.copies).map_err(|source| LoaderError::Map {
            map: "copies",
            source,
        })
    }

    /// Puts AF_XDP socket `fd` in the XSKMAP slot of RX queue `queue`.
    pub(crate) fn set_socket(&self, queue: u32, fd: RawFd) -> Result<(), LoaderError> {
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

    /// Detaches every program (also done by dropping).
    pub fn detach(&mut self) {
        self.links.clear();
        self.xmit_link = None;
        self.relay = None;
    }
}
