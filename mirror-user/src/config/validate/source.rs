//! Validation of the source section.

use serde_spanned::Spanned;

use super::Validator;
use crate::config::model::{Source, DEFAULT_RING_BUFFER, DEFAULT_RING_SIZE, DEFAULT_UMEM_FRAMES};
use crate::config::raw::{IngressHook, RawSource, ShareUmem, SourceDirection, SourceMode};
use crate::config::values::{parse_size, valid_ifname};

impl Validator<'_> {
    pub(super) fn source(&mut self, s: &Spanned<RawSource>) -> Option<Source> {
        let s = s.get_ref();
        let mut ok = true;
        let mode = s.mode.as_ref().map_or(SourceMode::Tap, |m| *m.get_ref());
        let direction = s
            .direction
            .as_ref()
            .map_or(SourceDirection::Ingress, |d| *d.get_ref());
        if let Some(d) = &s.direction {
            if *d.get_ref() != SourceDirection::Ingress && mode == SourceMode::Tap {
                self.error(
                    d.span(),
                    "direction = \"egress\" or \"both\" needs mode = \"copy\": a tap-mode feed port only receives",
                );
                ok = false;
            }
        }
        let copy_only = |v: &mut Self, span: Option<std::ops::Range<usize>>, key: &str| {
            if let (Some(span), SourceMode::Tap) = (span, mode) {
                v.error(
                    span,
                    format!("{key} applies to mode = \"copy\" only; this source is in tap mode"),
                );
                return false;
            }
            true
        };
        ok &= copy_only(
            self,
            s.ring_buffer.as_ref().map(|r| r.span()),
            "ring_buffer",
        );
        ok &= copy_only(
            self,
            s.ingress_hook.as_ref().map(|r| r.span()),
            "ingress_hook",
        );
        let ring_buffer = self.ring_buffer(s.ring_buffer.as_ref())?;
        if !valid_ifname(s.interface.get_ref()) {
            self.error(
                s.interface.span(),
                format!(
                    "interface = \"{}\" is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)",
                    s.interface.get_ref()
                ),
            );
            ok = false;
        }
        let umem_frames = match &s.umem_frames {
            None => DEFAULT_UMEM_FRAMES,
            Some(n) => self.power_of_two(n, 64, 1 << 20, "umem_frames")?,
        };
        let ring_size = match &s.ring_size {
            None => DEFAULT_RING_SIZE,
            Some(n) => self.power_of_two(n, 64, 1 << 16, "ring_size")?,
        };
        if let (Some(sh), SourceMode::Copy) = (&s.share_umem, mode) {
            self.error(
                sh.span(),
                "share_umem applies to mode = \"tap\" only: copy-mode frames come from a ring buffer, not a UMEM",
            );
            ok = false;
        }
        if ring_size > umem_frames {
            self.error(
                s.ring_size.as_ref().map_or(0..0, |r| r.span()),
                format!("ring_size = {ring_size} exceeds umem_frames = {umem_frames}: the fill ring could never be filled"),
            );
            ok = false;
        }
        ok.then(|| Source {
            name: s.name.get_ref().clone(),
            interface: s.interface.get_ref().clone(),
            mode,
            direction,
            xdp_mode: s.xdp_mode,
            zero_copy: s.zero_copy,
            umem_frames,
            ring_size,
            ring_buffer,
            ingress_hook: s
                .ingress_hook
                .as_ref()
                .map_or(IngressHook::Auto, |h| *h.get_ref()),
            share_umem: s
                .share_umem
                .as_ref()
                .map_or(ShareUmem::Auto, |b| *b.get_ref()),
        })
    }
    /// Copy mode's `ring_buffer`: a power of two from 4 KiB to 1 GiB.
    fn ring_buffer(&mut self, r: Option<&Spanned<String>>) -> Option<u32> {
        Some(match r {
            None => DEFAULT_RING_BUFFER,
            Some(r) => match parse_size(r.get_ref()) {
                Ok(n) if n.is_power_of_two() && (4096..=1 << 30).contains(&n) => n as u32,
                Ok(_) => {
                    self.error(
                        r.span(),
                        format!(
                            "ring_buffer = \"{}\": accepted values are powers of two from 4KiB to 1GiB, e.g. \"16MiB\"",
                            r.get_ref()
                        ),
                    );
                    return None;
                }
                Err(e) => {
                    self.error(r.span(), format!("ring_buffer = \"{}\": {e}", r.get_ref()));
                    return None;
                }
            },
        })
    }
}
