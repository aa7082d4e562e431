//! The in-kernel fast path: a DEVMAP_HASH per session (its target devices,
//! and for tunnel targets the egress device with the DEVMAP program that
//! encapsulates), the transmit tracepoint that counts what each device took,
//! and the reading of those counters.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU8, Ordering};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::counters::u64_at;
use super::{bss_error, LoaderError, SourceProgram};
use mirror_ebpf::mirror::types::{mirror_tunnel, mirror_tunnel_flags};

impl SourceProgram {
    /// Puts the session at kernel index `session` on the in-kernel fast path
    /// (see `struct mirror_fast_session` in abi.h): one DEVMAP_HASH per
    /// variant, keyed by each destination's place in `fast.dests` (the
    /// session's targets, groups expanded), into its `fast_sessions` slots;
    /// the session's settings; each device's fast-path counters (`xdp_tap`
    /// counts a frame longer than a device takes as that device's
    /// `too_big`). `generic`: the source's XDP runs in generic mode, where
    /// the transmit tracepoint does not fire, so each interface entry runs
    /// `xdp_fast_target` to count instead. Frames the session accepted before
    /// this went through userspace, counted there. Also attaches the
    /// transmit tracepoint (once per source).
    pub fn set_fast_path(
        &mut self,
        session: u32,
        source_ifindex: u32,
        fast: &FastSession,
        generic: bool,
    ) -> Result<(), LoaderError> {
        let map_err = |map| move |source| LoaderError::Map { map, source };
        let dests = &fast.dests;
        self.fast_generic = generic;
        // Native XDP: no program per interface destination (fd 0 = none).
        let count_fd = if generic {
            self.skel.progs.xdp_fast_target.as_fd().as_raw_fd()
        } else {
            0
        };
        if generic && dests.iter().any(|d| d.tunnel.is_some()) {
            return Err(LoaderError::Map {
                map: "mirror_fast",
                source: libbpf_rs::Error::from(std::io::Error::other(
                    "tunnel targets need native XDP on the source (generic XDP does not pass \
                     the metadata on to DEVMAP programs)",
                )),
            });
        }
        let mut vals = Vec::with_capacity(dests.len());
        for (key, d) in dests.iter().enumerate() {
            let prog_fd = match &d.tunnel {
                Some(t) => {
                    self.set_tunnel(session, key as u32, t)?;
                    self.tunnel_devices
                        .retain(|(k, _)| *k != (session, key as u32));
                    self.tunnel_devices
                        .push(((session, key as u32), vec![d.ifindex]));
                    self.tunnel_prog_fd()
                }
                None => count_fd,
            };
            vals.push(devmap_val(d.ifindex, prog_fd));
            self.ensure_fast_stats(d.ifindex)?;
        }
        let variants = fast.variants();
        let mut handles = Vec::new();
        for (v, &keys) in variants.iter().enumerate() {
            if keys == 0 {
                continue; // every member down and nothing else: the frame is dropped, counted
            }
            for version in 0..DEST_VERSIONS {
                let map = create_devmap(keys.count_ones())?;
                for (key, val) in vals.iter().enumerate() {
                    if keys & (1 << key) != 0 {
                        map.update(&(key as u32).to_ne_bytes(), val, MapFlags::ANY)
                            .map_err(map_err("mirror_fast"))?;
                    }
                }
                handles.push(FastDevmap {
                    session,
                    variant: v as u32,
                    version,
                    keys,
                    map,
                });
            }
        }
        let s = session as usize;
        let fits = dests.len() <= mirror_ebpf::limits::MAX_FAST_TARGETS as usize
            && variants.len() <= FAST_VARIANTS;
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) if s < bss.fast_session.len() && fits => {
                bss.source_ifindex = source_ifindex;
                bss.source_netns = own_netns();
                for (slot, d) in bss.fast_dests[s].iter_mut().zip(dests.iter()) {
                    slot.ifindex = d.ifindex;
                    slot.max_len = d.max_len;
                }
                bss.fast_ndests[s] = dests.len() as u32;
                bss.fast_max_len[s] = dests.iter().map(|d| d.max_len).min().unwrap_or(u32::MAX);
                let f = &mut bss.fast_session[s];
                f.active = 0;
                f.version = 0;
                f.dests_down = [0; DEST_VERSIONS as usize];
                let erspan3 =
                    mirror_ebpf::mirror::types::mirror_tunnel_kind::MIRROR_TUN_ERSPAN3.0 as u8;
                f.tunnels = match dests
                    .iter()
                    .filter_map(|d| d.tunnel.as_ref())
                    .map(|t| t.0.kind)
                    .max_by_key(|&k| k == erspan3)
                {
                    None => 0,
                    Some(k) if k == erspan3 => 2,
                    Some(_) => 1,
                };
                f.group_n = fast.group.len() as u8;
                f.members_up = low_bits(fast.group.len());
                for (i, &k) in fast.group.iter().enumerate() {
                    f.group_keys[i] = k as u8;
                }
                for (v, &keys) in variants.iter().enumerate() {
                    f.variant_keys[v] = keys;
                    f.variant_single[v] = if keys.count_ones() == 1 {
                        keys.trailing_zeros() as u8 + 1
                    } else {
                        0
                    };
                }
            }
            _ => return Err(bss_error("fast_session", session)),
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
        for d in &handles {
            let fd = d.map.as_fd().as_raw_fd() as u32;
            self.skel
                .maps
                .fast_sessions
                .update(&d.slot().to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("fast_sessions"))?;
        }
        self.fast_devmaps.retain(|d| d.session != session);
        self.fast_devmaps.extend(handles);
        self.fast_dests.retain(|d| d.session != session);
        let entries: Vec<Option<Vec<u8>>> = vals.into_iter().map(Some).collect();
        self.fast_dests.push(DestState {
            session,
            wanted: entries.clone(),
            held: [entries.clone(), entries],
        });
        // Last: from the next frame on, xdp_tap takes the kernel path.
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) => {
                bss.fast_session[s].active = 1;
                Ok(())
            }
            None => Err(bss_error("fast_session", session)),
        }
    }

    /// Interface destination `key` of the session: `None` when its device is
    /// down or gone (its entry leaves every DEVMAP of the session, and
    /// `xdp_tap` counts its copies `down`), else the device (ifindex and the
    /// longest frame it takes) to send to, again or anew (a port deleted and
    /// created again has a new ifindex).
    pub fn set_dest(
        &mut self,
        session: u32,
        key: u32,
        device: Option<(u32, u32)>,
    ) -> Result<(), LoaderError> {
        let fd = if self.fast_generic {
            self.skel.progs.xdp_fast_target.as_fd().as_raw_fd()
        } else {
            0
        };
        self.put_dest(session, key, device, fd)
    }

    /// Destination `key` of the session out of its DEVMAPs (`None`: its
    /// copies counted `down` by `xdp_tap` from then on), or into them through
    /// device `ifindex` with `max_len` for the too-big check, its entry
    /// running program `prog_fd` (0: none).
    ///
    /// The device's counters and what `xdp_tap` and `xdp_tunnel` know it by
    /// (`fast_dests`) come first, so that no copy reaches the device before
    /// it is counted and known. Then the down bit and the DEVMAP entries
    /// change together: the idle version of the session's destinations is
    /// made what every destination should be, one store puts it in force,
    /// and after an RCU grace period (no `xdp_tap` still runs on the old
    /// version, nor any copy it sent) the old one is made the same. So every
    /// copy meets the bit and the entries of one version: it is counted
    /// `down` or sent (and then counted by the device), never both, never
    /// neither, broadcast or not. A step that fails leaves the version
    /// behind as it is; the next call (the keeper tries again while what it
    /// sees differs from what it set) brings it in line first. A tunnel
    /// moving while up: a copy already queued to its old device finds no
    /// key there and is counted in that device's `no_key`.
    fn put_dest(
        &mut self,
        session: u32,
        key: u32,
        device: Option<(u32, u32)>,
        prog_fd: i32,
    ) -> Result<(), LoaderError> {
        let entry = match device {
            Some((ifindex, max_len)) => {
                self.ensure_fast_stats(ifindex)?;
                self.point_dest(session, key, ifindex, max_len)?;
                Some(devmap_val(ifindex, prog_fd))
            }
            None => None,
        };
        let state = self
            .fast_dests
            .iter_mut()
            .find(|d| d.session == session)
            .ok_or_else(|| bss_error("fast_session", session))?;
        match state.wanted.get_mut(key as usize) {
            Some(w) => *w = entry,
            None => return Err(bss_error("fast_dests", session)),
        }
        let old = self.dest_version(session)?;
        let new = old ^ 1;
        self.sync_version(session, new)?;
        self.set_dest_version(session, new)?;
        super::rule_maps::rcu_grace_period().map_err(LoaderError::GracePeriod)?;
        self.sync_version(session, old)
    }

    /// Makes version `version` of the session's destinations hold what each
    /// should (`DestState::wanted`), key by key.
    fn sync_version(&mut self, session: u32, version: u32) -> Result<(), LoaderError> {
        let v = version as usize & 1;
        let Some(i) = self.fast_dests.iter().position(|d| d.session == session) else {
            return Err(bss_error("fast_session", session));
        };
        for key in 0..self.fast_dests[i].wanted.len() {
            let want = self.fast_dests[i].wanted[key].clone();
            if self.fast_dests[i].held[v][key] != want {
                self.change_dest(session, key as u32, version, want.as_deref())?;
                self.fast_dests[i].held[v][key] = want;
            }
        }
        Ok(())
    }

    /// In version `version` of the session's destinations: takes key `key`
    /// out of the DEVMAPs that hold it and sets its down bit (`entry`
    /// `None`), or puts `entry` there and clears the bit.
    fn change_dest(
        &mut self,
        session: u32,
        key: u32,
        version: u32,
        entry: Option<&[u8]>,
    ) -> Result<(), LoaderError> {
        let bit = 1u32 << key;
        for d in self
            .fast_devmaps
            .iter()
            .filter(|d| d.session == session && d.version == version && d.keys & bit != 0)
        {
            match entry {
                Some(val) => d
                    .map
                    .update(&key.to_ne_bytes(), val, MapFlags::ANY)
                    .map_err(|source| LoaderError::Map {
                        map: "mirror_fast",
                        source,
                    })?,
                // Already gone when the kernel removed a deleted device's entry.
                None => drop(d.map.delete(&key.to_ne_bytes())),
            }
        }
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) if (session as usize) < bss.fast_session.len() => {
                let d = &mut bss.fast_session[session as usize].dests_down[version as usize & 1];
                *d = if entry.is_none() { *d | bit } else { *d & !bit };
                Ok(())
            }
            _ => Err(bss_error("fast_session", session)),
        }
    }

    /// The session's `struct mirror_fast_session` in the mapped .bss.
    fn fast_session(
        &self,
        session: u32,
    ) -> Result<&mirror_ebpf::mirror::types::mirror_fast_session, LoaderError> {
        self.skel
            .maps
            .bss_data
            .as_deref()
            .and_then(|bss| bss.fast_session.get(session as usize))
            .ok_or_else(|| bss_error("fast_session", session))
    }

    /// Whether destination `key` of the session is out (down or gone) in
    /// the version of its destinations in force.
    pub fn dest_is_down(&self, session: u32, key: u32) -> Result<bool, LoaderError> {
        self.fast_session(session).map(|f| {
            let down = f.dests_down[usize::from(f.version & 1)];
            key < mirror_ebpf::limits::MAX_FAST_TARGETS && down & (1 << key) != 0
        })
    }

    /// The version of the session's destinations in force.
    fn dest_version(&self, session: u32) -> Result<u32, LoaderError> {
        self.fast_session(session).map(|f| u32::from(f.version & 1))
    }

    /// Puts version `version` of the session's destinations in force, with
    /// one store.
    fn set_dest_version(&mut self, session: u32, version: u32) -> Result<(), LoaderError> {
        let f = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .and_then(|bss| bss.fast_session.get_mut(session as usize))
            .ok_or_else(|| bss_error("fast_session", session))?;
        let byte: *mut u8 = &mut f.version;
        // Safety: `byte` points into the mapped .bss, live as long as `f`;
        // the kernel only reads it. The release store orders the version's
        // down bits before it, as the kernel's reader needs: it reads the
        // version once, then its bits.
        unsafe { AtomicU8::from_ptr(byte) }.store(version as u8, Ordering::Release);
        Ok(())
    }

    /// Which members of the session's target group are up (bit i: member i).
    pub fn set_members_up(&mut self, session: u32, up: u32) -> Result<(), LoaderError> {
        match self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .and_then(|b| b.fast_session.get_mut(session as usize))
        {
            Some(f) => {
                f.members_up = up;
                Ok(())
            }
            None => Err(bss_error("fast_session", session)),
        }
    }

    /// What group member `key` of the session was picked for, summed over CPUs.
    pub fn pick_count(&self, session: u32, key: u32) -> Result<PickCount, LoaderError> {
        let v = self.percpu_sum(
            &self.skel.maps.fast_picks,
            "fast_picks",
            tunnel_slot(session, key),
            4,
        )?;
        Ok(PickCount {
            packets: v[0],
            bytes: v[1],
            down: v[2],
            rate_limited: v[3],
        })
    }

    /// The session's group: (rehashed, all_down) copies, summed over CPUs.
    pub fn group_count(&self, session: u32) -> Result<(u64, u64), LoaderError> {
        let v = self.percpu_sum(&self.skel.maps.fast_groups, "fast_groups", session, 2)?;
        Ok((v[0], v[1]))
    }

    /// Frames of the session over its rate limit on the kernel path.
    pub(crate) fn kernel_rate_limited(&self, session: u32) -> Result<u64, LoaderError> {
        let v = self.percpu_sum(
            &self.skel.maps.session_rate_limited,
            "session_rate_limited",
            session,
            1,
        )?;
        Ok(v[0])
    }

    /// `words` u64 counters at `key` of a per-CPU map, summed over CPUs.
    fn percpu_sum<M: MapCore>(
        &self,
        map: &M,
        name: &'static str,
        key: u32,
        words: usize,
    ) -> Result<Vec<u64>, LoaderError> {
        let per_cpu = map
            .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map { map: name, source })?
            .unwrap_or_default();
        let mut out = vec![0u64; words];
        for v in per_cpu {
            for (i, o) in out.iter_mut().enumerate() {
                *o += u64_at(&v, i);
            }
        }
        Ok(out)
    }

    /// The DEVMAP program of every tunnel entry: `xdp_tunnel`, which finds
    /// the target from the copy's session and egress device (the kernel runs
    /// one entry's program over a device's whole transmit batch).
    fn tunnel_prog_fd(&self) -> i32 {
        self.skel.progs.xdp_tunnel.as_fd().as_raw_fd()
    }

    /// Writes (or rewrites, when the next hop changed) the outer headers of
    /// tunnel target `key` of the session at kernel index `session`. The
    /// kernel reads the slot per copy: a copy in flight during the write may
    /// go out with part of the old next hop's headers, never with a wrong
    /// length or checksum (those are computed per copy).
    pub fn set_tunnel(
        &self,
        session: u32,
        key: u32,
        headers: &TunnelHeaders,
    ) -> Result<(), LoaderError> {
        let slot = tunnel_slot(session, key);
        // Safety: mirror_tunnel is plain old data (repr(C), integers and bytes).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&headers.0 as *const mirror_tunnel).cast::<u8>(),
                std::mem::size_of::<mirror_tunnel>(),
            )
        };
        self.skel
            .maps
            .tunnels
            .update(&slot.to_ne_bytes(), bytes, MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "tunnels",
                source,
            })
    }

    /// Tunnel destination `key` of the session down (`None`: as
    /// [`Self::set_dest`] takes an interface's out, so that `xdp_tap` counts
    /// its copies `down`; the kernel would drop a copy redirected to an
    /// egress device that is down before the tunnel program counts it), or
    /// up, or moved, through device `ifindex` with `max_len` for the too-big
    /// check (a tunnel whose route now leaves elsewhere), in the order
    /// [`Self::put_dest`] says.
    pub(crate) fn set_tunnel_dest(
        &mut self,
        session: u32,
        key: u32,
        device: Option<(u32, u32)>,
    ) -> Result<(), LoaderError> {
        if let Some((ifindex, _)) = device {
            match self
                .tunnel_devices
                .iter_mut()
                .find(|(k, _)| *k == (session, key))
            {
                Some((_, devs)) if !devs.contains(&ifindex) => devs.push(ifindex),
                Some(_) => {}
                None => self.tunnel_devices.push(((session, key), vec![ifindex])),
            }
        }
        let fd = self.tunnel_prog_fd();
        self.put_dest(session, key, device, fd)
    }

    /// Gives device `ifindex` fast-path counters (zeros) unless it has them.
    fn ensure_fast_stats(&self, ifindex: u32) -> Result<(), LoaderError> {
        let map_err = |source| LoaderError::Map {
            map: "fast_stats",
            source,
        };
        let k = ifindex.to_ne_bytes();
        let maps = &self.skel.maps;
        if maps
            .fast_stats
            .lookup_percpu(&k, MapFlags::ANY)
            .map_err(map_err)?
            .is_some()
        {
            return Ok(());
        }
        let cpus = libbpf_rs::num_possible_cpus().map_err(map_err)?;
        let zero = vec![0u8; std::mem::size_of::<mirror_ebpf::mirror::types::mirror_fast_stats>()];
        maps.fast_stats
            .update_percpu(&k, &vec![zero; cpus], MapFlags::NO_EXIST)
            .map_err(map_err)
    }

    /// Points destination `key` of the session's too-big check (`.bss`
    /// `fast_dests`) at device `ifindex` taking frames of up to `max_len`.
    fn point_dest(
        &mut self,
        session: u32,
        key: u32,
        ifindex: u32,
        max_len: u32,
    ) -> Result<(), LoaderError> {
        let (s, i) = (session as usize, key as usize);
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) if s < bss.fast_dests.len() && i < bss.fast_dests[s].len() => {
                bss.fast_dests[s][i].ifindex = ifindex;
                bss.fast_dests[s][i].max_len = max_len;
                let n = bss.fast_ndests[s] as usize;
                bss.fast_max_len[s] = bss.fast_dests[s][..n]
                    .iter()
                    .map(|d| d.max_len)
                    .min()
                    .unwrap_or(u32::MAX);
                Ok(())
            }
            _ => Err(bss_error("fast_dests", session)),
        }
    }

    /// What tunnel target `key` of the session at kernel index `session` did
    /// with its copies, summed over CPUs.
    pub fn tunnel_stats(&self, session: u32, key: u32) -> Result<TunnelStats, LoaderError> {
        let per_cpu = self
            .skel
            .maps
            .tunnel_stats
            .lookup_percpu(&tunnel_slot(session, key).to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "tunnel_stats",
                source,
            })?
            .unwrap_or_default();
        let mut out = TunnelStats::default();
        for v in per_cpu {
            out.packets += u64_at(&v, 0);
            out.bytes += u64_at(&v, 1);
            out.truncated += u64_at(&v, 2);
            out.down += u64_at(&v, 3);
            out.errors += u64_at(&v, 4);
        }
        Ok(out)
    }

    /// The transmit counters of every egress device kernel tunnel `key` of
    /// the session has sent through, summed.
    pub(crate) fn tunnel_device_stats(
        &self,
        session: u32,
        key: u32,
    ) -> Result<FastStats, LoaderError> {
        let mut out = FastStats::default();
        let devices = self
            .tunnel_devices
            .iter()
            .find(|(k, _)| *k == (session, key))
            .map_or(&[][..], |(_, d)| d.as_slice());
        for &ifindex in devices {
            out += self.fast_stats(ifindex)?;
        }
        Ok(out)
    }

    /// (frames, bytes) the session at kernel index `session` sent down the fast path.
    pub(crate) fn session_kernel(&self, session: u32) -> Result<(u64, u64), LoaderError> {
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
            out.too_big += u64_at(&v, 3);
            out.no_key += u64_at(&v, 4);
        }
        Ok(out)
    }
}

/// The kernel limiter's (interval, tolerance) in ns for `rate` frames a
/// second: the userspace token bucket's behaviour (full at first, a tenth of
/// a second's worth deep, at least one frame) as GCRA: a frame passes when
/// it comes no more than `tolerance` before it is due, and each passed frame
/// makes the next one due `interval` later.
pub fn rate_limiter(rate: u32) -> (u64, u64) {
    let interval = (1e9 / f64::from(rate.max(1))).round() as u64;
    let burst = (f64::from(rate) / 10.0).max(1.0);
    let tolerance = ((burst - 1.0) * 1e9 / f64::from(rate.max(1))).round() as u64;
    (interval.max(1), tolerance)
}

/// One DEVMAP of a kernel-path session: the destinations of one variant
/// (see [`FastSession::variants`]), in one version (see
/// `struct mirror_fast_session`).
pub struct FastDevmap {
    session: u32,
    variant: u32,
    version: u32,
    /// The keys it holds when all are up (bit k: key k).
    keys: u32,
    map: MapHandle,
}

impl FastDevmap {
    /// Its slot in `fast_sessions`.
    fn slot(&self) -> u32 {
        (self.session * FAST_VARIANTS as u32 + self.variant) * DEST_VERSIONS + self.version
    }
}

/// What each destination of a kernel-path session should be, and what each
/// version of its DEVMAPs and down bits holds (`None`: out, down; else the
/// DEVMAP entry's value).
pub struct DestState {
    session: u32,
    wanted: Vec<Option<Vec<u8>>>,
    held: [Vec<Option<Vec<u8>>>; 2],
}

/// Versions of a kernel-path session's destinations (`MIRROR_DEST_VERSIONS`).
const DEST_VERSIONS: u32 = mirror_ebpf::mirror::types::mirror_limits::MIRROR_DEST_VERSIONS.0;

/// DEVMAPs per kernel-path session (`MIRROR_FAST_VARIANTS`).
pub const FAST_VARIANTS: usize =
    mirror_ebpf::mirror::types::mirror_limits::MIRROR_FAST_VARIANTS.0 as usize;

/// A DEVMAP_HASH for `entries` destinations: sized to them, not to the
/// most a session may have, since a broadcast walks every hash bucket (the
/// kernel rounds the size up to a power of 2) and so pays per frame for
/// each. `fast_sessions` takes it: the kernel compares an inner DEVMAP's
/// type, key and value sizes and flags with the template's, not its size.
fn create_devmap(entries: u32) -> Result<MapHandle, LoaderError> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    MapHandle::create(
        MapType::DevmapHash,
        Some("mirror_fast"),
        4,
        8,
        entries.clamp(1, mirror_ebpf::limits::MAX_FAST_TARGETS),
        &opts,
    )
    .map_err(|source| LoaderError::CreateMap {
        map: "mirror_fast",
        source,
    })
}

/// A session on the kernel path, as `set_fast_path` installs it.
#[derive(Debug, Clone, Default)]
pub struct FastSession {
    /// Its targets, groups expanded (`Config::session_targets` order): the
    /// DEVMAP key of each is its place here.
    pub dests: Vec<FastDest>,
    /// The keys of its target group's members, in the group's member order
    /// (empty: no group).
    pub group: Vec<u32>,
}

impl FastSession {
    /// The DEVMAP keys of each variant, as bit sets: every destination
    /// without a group; with one, variant i = the non-members and member i,
    /// the last = the non-members alone.
    pub fn variants(&self) -> Vec<u32> {
        let all = low_bits(self.dests.len());
        if self.group.is_empty() {
            return vec![all];
        }
        let members: u32 = self.group.iter().fold(0, |m, &k| m | 1 << k);
        let fixed = all & !members;
        self.group
            .iter()
            .map(|&k| fixed | 1 << k)
            .chain(std::iter::once(fixed))
            .collect()
    }
}

/// `struct mirror_pick_count` of one group member, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickCount {
    pub packets: u64,
    pub bytes: u64,
    pub down: u64,
    pub rate_limited: u64,
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
    /// Frames not handed to it: longer than it takes (counted by `xdp_tap`).
    pub too_big: u64,
    /// Tunnel copies `xdp_tunnel` dropped on it because no destination of
    /// their session was on it any more (a route moving); in `xmit_drops` too.
    pub no_key: u64,
}

impl std::ops::AddAssign for FastStats {
    fn add_assign(&mut self, o: FastStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.xmit_drops += o.xmit_drops;
        self.too_big += o.too_big;
        self.no_key += o.no_key;
    }
}

/// One target device of a fast-path session.
#[derive(Debug, Clone, Copy)]
pub struct FastDest {
    pub ifindex: u32,
    /// The longest frame the device takes: its MTU, the Ethernet header and
    /// one VLAN tag (the kernel's `xdp_ok_fwd_dev`). The kernel checks a
    /// tunnel's copy against it before the tunnel program cuts it.
    pub max_len: u32,
    /// A tunnel target: `ifindex` is its egress device, and these are the
    /// outer headers its DEVMAP program pushes.
    pub tunnel: Option<TunnelHeaders>,
}

impl FastDest {
    /// `ifindex` with an MTU of `mtu` (`None`: unknown, nothing is too big).
    pub fn new(ifindex: u32, mtu: Option<u32>) -> FastDest {
        FastDest {
            ifindex,
            max_len: max_len(mtu),
            tunnel: None,
        }
    }
}

/// The longest frame a device of MTU `mtu` takes from XDP.
pub fn max_len(mtu: Option<u32>) -> u32 {
    mtu.map_or(u32::MAX, |m| m.saturating_add(14 + 4))
}

fn devmap_val(ifindex: u32, prog_fd: i32) -> Vec<u8> {
    // struct bpf_devmap_val: the device, then the program to run (0: none).
    let mut val = ifindex.to_ne_bytes().to_vec();
    val.extend_from_slice(&prog_fd.to_ne_bytes());
    val
}

/// A key mask with the `n` lowest keys (bits) set, `n` at most 32.
pub fn low_bits(n: usize) -> u32 {
    ((1u64 << n.min(32)) - 1) as u32
}

fn tunnel_slot(session: u32, key: u32) -> u32 {
    session * mirror_ebpf::limits::MAX_FAST_TARGETS + key
}

/// `struct mirror_tunnel`: a tunnel target's outer headers, as its DEVMAP
/// program pushes them (built by `target::kernel_tunnel`).
#[derive(Debug, Clone, Copy)]
pub struct TunnelHeaders(pub mirror_tunnel);

impl TunnelHeaders {
    /// Marks the collector unreachable (copies counted `down`), or reachable.
    pub fn set_down(&mut self, down: bool) {
        let bit = mirror_tunnel_flags::MIRROR_TUN_F_DOWN.0 as u8;
        if down {
            self.0.flags |= bit;
        } else {
            self.0.flags &= !bit;
        }
    }

    pub fn is_down(&self) -> bool {
        self.0.flags & mirror_tunnel_flags::MIRROR_TUN_F_DOWN.0 as u8 != 0
    }
}

/// `struct mirror_tunnel_stats` of one tunnel slot, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Encapsulated and handed to the egress device.
    pub packets: u64,
    /// Their mirrored bytes (without the outer headers).
    pub bytes: u64,
    /// Of the packets, cut to the tunnel's `mtu`.
    pub truncated: u64,
    /// Dropped: no route or next hop to the collector.
    pub down: u64,
    /// Dropped: encapsulation failed (never expected).
    pub errors: u64,
}

/// The inode number of this process's network namespace, as the kernel's
/// `net->ns.inum` says it (0 if it cannot be read: then no transmit is
/// counted by the tracepoint, and the stats show them `unknown`).
fn own_netns() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino() as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_limiter_passes_the_userspace_buckets_burst_then_its_rate() {
        // 1000/s: a frame every 1 ms, 100 at once (a tenth of a second).
        assert_eq!(rate_limiter(1000), (1_000_000, 99_000_000));
        // Below 10/s the burst is one frame: no tolerance.
        assert_eq!(rate_limiter(5), (200_000_000, 0));
        // 15/s: a bucket 1.5 frames deep.
        assert_eq!(rate_limiter(15), (66_666_667, 33_333_333));
        // Simulated: frames every 10 µs for 1 s pass 100 at once, then 1/ms.
        let (interval, tolerance) = rate_limiter(1000);
        let (mut tat, mut passed) = (0u64, 0u64);
        for i in 0..100_000u64 {
            let now = 1_000_000_000 + i * 10_000;
            let t = tat.max(now);
            if t - now <= tolerance {
                tat = t + interval;
                passed += 1;
            }
        }
        assert_eq!(passed, 100 + 999);
    }

    #[test]
    fn variants_hold_the_plain_targets_and_one_member_each() {
        let dest = FastDest::new(1, None);
        let plain = FastSession {
            dests: vec![dest; 3],
            ..Default::default()
        };
        assert_eq!(plain.variants(), vec![0b111]);
        let grouped = FastSession {
            dests: vec![dest; 4],
            group: vec![1, 3],
        };
        assert_eq!(grouped.variants(), vec![0b0111, 0b1101, 0b0101]);
    }
}
