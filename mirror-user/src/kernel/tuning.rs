//! Settings the programs read from `.bss` while they run: each session's
//! policy (enabled, sampling, copy length, rate; two slots flipped by one
//! word), and when the copy ring wakes its reader.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{bss_error, LoaderError, SourceProgram};
use crate::config::Policy;
use mirror_ebpf::mirror::types::mirror_policy;

impl SourceProgram {
    /// Copy mode: the kernel wakes the ring's reader each time the bytes
    /// waiting reach another multiple of `bytes` (0: whenever the reader
    /// had caught up); the reader must then also poll on a timer.
    pub fn set_wake_bytes(&mut self, bytes: u64) -> Result<(), LoaderError> {
        match self.skel.maps.bss_data.as_deref_mut() {
            Some(bss) => {
                bss.copy_wake_bytes = bytes;
                Ok(())
            }
            None => Err(bss_error("copy_wake_bytes", 0)),
        }
    }

    /// The policy slot in force for the session at kernel index `session`
    /// (see `struct mirror_policy` in abi.h).
    pub fn policy_slot(&self, session: u32) -> Result<u32, LoaderError> {
        self.skel
            .maps
            .bss_data
            .as_deref()
            .and_then(|bss| bss.policy_slot.get(session as usize))
            .map(|&s| s & 1)
            .ok_or_else(|| bss_error("policy_slot", session))
    }

    /// Puts `policy` in force for the session at kernel index `session`:
    /// writes it whole into the idle slot, then flips `policy_slot` to it
    /// with one store, so every frame sees either the old policy or this one.
    /// Returns the slot now in force. Before the programs attach, `first`
    /// writes slot 0 and points the word at it.
    pub fn set_policy(
        &mut self,
        session: u32,
        policy: &Policy,
        first: bool,
    ) -> Result<u32, LoaderError> {
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .filter(|bss| (session as usize) < bss.policy_slot.len())
            .ok_or_else(|| bss_error("session_policy", session))?;
        let s = session as usize;
        let slot = if first {
            0
        } else {
            (bss.policy_slot[s] & 1) ^ 1
        };
        let (interval, tolerance) = if policy.rate_limit_pps > 0 {
            super::fast_path::rate_limiter(policy.rate_limit_pps)
        } else {
            (0, 0)
        };
        bss.session_policy[s * 2 + slot as usize] = mirror_policy {
            disabled: u32::from(!policy.enabled),
            sample: policy.sample,
            packet_length: policy.packet_length,
            rate_pps: policy.rate_limit_pps,
            rate_interval: interval,
            rate_tolerance: tolerance,
            cutoff_bytes: policy.flow_cutoff_bytes,
            cutoff_packets: policy.flow_cutoff_packets,
        };
        let word: *mut u32 = &mut bss.policy_slot[s];
        // Safety: `word` points into the mapped .bss, aligned for a u32 and
        // live as long as `bss`; the kernel only reads it. The release store
        // orders the slot's fields before the word, as the kernel's reader
        // needs: it reads the word once, then the slot.
        unsafe { AtomicU32::from_ptr(word) }.store(slot, Ordering::Release);
        Ok(slot)
    }

    /// The policy in force for the session at kernel index `session`, as
    /// the kernel reads it.
    pub fn policy(&self, session: u32) -> Result<mirror_policy, LoaderError> {
        let slot = self.policy_slot(session)?;
        self.skel
            .maps
            .bss_data
            .as_deref()
            .and_then(|bss| bss.session_policy.get((session * 2 + slot) as usize))
            .copied()
            .ok_or_else(|| bss_error("session_policy", session))
    }

    /// Changes one setting of the policy in force (through the idle slot,
    /// as [`SourceProgram::set_policy`]).
    fn change_policy(
        &mut self,
        session: u32,
        change: impl FnOnce(&mut Policy),
    ) -> Result<(), LoaderError> {
        let k = self.policy(session)?;
        let mut p = Policy {
            enabled: k.disabled == 0,
            sample: k.sample,
            rate_limit_pps: k.rate_pps,
            packet_length: k.packet_length,
            flow_cutoff_bytes: k.cutoff_bytes,
            flow_cutoff_packets: k.cutoff_packets,
        };
        change(&mut p);
        self.set_policy(session, &p, false).map(|_| ())
    }

    /// Copies of the session at kernel index `session` carry at most `bytes`
    /// of each frame (0: the whole frame): copy mode's records and the
    /// kernel path.
    pub fn set_snap(&mut self, session: u32, bytes: u32) -> Result<(), LoaderError> {
        self.change_policy(session, |p| p.packet_length = bytes)
    }

    /// The per-flow cutoff of the session at kernel index `session`: only
    /// the first `bytes` bytes and `packets` frames of each flow (0: no
    /// limit; both 0: off), through the policy in force (as
    /// [`SourceProgram::set_policy`]: a schedule window's policy may carry
    /// others), a flow idle for `idle` starting over (zero: never; the
    /// config's minimum is 1ms). The flow table must have room
    /// ([`SourceProgram::load_with_flows`]).
    pub fn set_cutoff(
        &mut self,
        session: u32,
        bytes: u64,
        packets: u64,
        idle: std::time::Duration,
    ) -> Result<(), LoaderError> {
        self.set_cutoff_idle(session, idle)?;
        self.change_policy(session, |p| {
            p.flow_cutoff_bytes = bytes;
            p.flow_cutoff_packets = packets;
        })
    }

    /// The per-flow cutoff's idle timeout of the session at kernel index
    /// `session` (its limits are in its policies).
    pub fn set_cutoff_idle(
        &mut self,
        session: u32,
        idle: std::time::Duration,
    ) -> Result<(), LoaderError> {
        let slot = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .and_then(|bss| bss.session_cutoff.get_mut(session as usize));
        match slot {
            Some(v) => {
                v.idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
                Ok(())
            }
            None => Err(bss_error("session_cutoff", session)),
        }
    }

    /// Mirrors 1 in `n` frames the session at kernel index `session` accepts
    /// (0 or 1: every frame). Takes effect with the next frame.
    pub fn set_sampling(&mut self, session: u32, n: u32) -> Result<(), LoaderError> {
        self.change_policy(session, |p| p.sample = n)
    }
}
