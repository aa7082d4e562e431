//! Settings the programs read from `.bss` while they run: per-session
//! sampling and copy length, and when the copy ring wakes its reader.

use super::{bss_error, LoaderError, SourceProgram};

impl SourceProgram {
    /// Copy mode: the kernel wakes the ring's reader only once `bytes` wait
    /// (0: whenever the reader had caught up); the reader must then also
    /// poll on a timer.
    pub(crate) fn set_wake_bytes(&mut self, bytes: u64) -> Result<(), LoaderError> {
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

    /// The per-flow cutoff of the session at kernel index `session`: only
    /// the first `bytes` bytes and `packets` frames of each flow (0: no
    /// limit; both 0: off), a flow idle for `idle` starting over (zero:
    /// never; the config's minimum is 1ms). The flow
    /// table must have room ([`SourceProgram::load_with_flows`]).
    pub fn set_cutoff(
        &mut self,
        session: u32,
        bytes: u64,
        packets: u64,
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
                v.bytes = bytes;
                v.packets = packets;
                v.idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
                Ok(())
            }
            None => Err(bss_error("session_cutoff", session)),
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
}
