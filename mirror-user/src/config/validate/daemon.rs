//! Validation of the daemon section.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::Validator;
use crate::config::model::{Daemon, DEFAULT_CONTROL_SOCKET};
use crate::config::raw::RawDaemon;

impl Validator<'_> {
    pub(super) fn daemon(&mut self, d: &RawDaemon) -> Option<Daemon> {
        let control_socket = d.control_socket.as_ref().map_or_else(
            || PathBuf::from(DEFAULT_CONTROL_SOCKET),
            |p| PathBuf::from(p.get_ref()),
        );
        let metrics = match &d.metrics {
            None => None,
            Some(m) => match m.get_ref().parse::<SocketAddr>() {
                Ok(addr) if addr.port() == 0 => {
                    self.error(
                        m.span(),
                        format!(
                            "metrics = \"{}\": port 0 would listen on a port the kernel picks, \
                             which no Prometheus could be told: give a port, e.g. \"{}:9464\"",
                            m.get_ref(),
                            match addr {
                                SocketAddr::V4(a) => a.ip().to_string(),
                                SocketAddr::V6(a) => format!("[{}]", a.ip()),
                            }
                        ),
                    );
                    return None;
                }
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.error(
                        m.span(),
                        format!(
                            "metrics = \"{}\" is not an address: expected IP:PORT (no host \
                             names), e.g. \"127.0.0.1:9464\" or \"[::1]:9464\"",
                            m.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        let cpus = match &d.cpus {
            None => None,
            Some(c) => match crate::config::cpus::CpuList::parse(c.get_ref()) {
                Ok(l) => Some(l),
                Err(why) => {
                    self.error(c.span(), format!("cpus = \"{}\": {why}", c.get_ref()));
                    return None;
                }
            },
        };
        Some(Daemon {
            control_socket,
            metrics,
            cpus,
        })
    }
}
