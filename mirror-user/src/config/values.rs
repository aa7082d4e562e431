//! Value syntaxes shared by the sections: sizes, free space, interface
//! names, protocols, port ranges, and positions in the file.

use super::model::{MinFree, PortRange};
use super::raw::{RawPorts, RawProtocol};

/// `"1GiB"`, `"500 MB"`, `"65536"`: a size in bytes (binary and decimal units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| "not a size: write e.g. \"512MiB\", \"1GiB\" or \"10GB\"".to_string())
}

/// `"5%"` or a size: free space to keep on a capture file system.
pub fn parse_min_free(text: &str) -> Result<MinFree, String> {
    if let Some(pct) = text.trim().strip_suffix('%') {
        let v: f64 = pct
            .trim()
            .parse()
            .map_err(|_| "not a percentage: write e.g. \"5%\"".to_string())?;
        if !(0.0..100.0).contains(&v) {
            return Err(
                "a percentage must be at least 0% and below 100% (100% would leave no room \
                 to write anything)"
                    .into(),
            );
        }
        // Kept in tenths of a percent: a value that rounds to 100% or to
        // 0% (off) is not what was written.
        let permille = (v * 10.0).round() as u32;
        if permille >= 1000 {
            return Err(format!(
                "{v}% rounds to 100% (percentages count in tenths), which would leave no room \
                 to write anything"
            ));
        }
        if permille == 0 && v > 0.0 {
            return Err(format!(
                "{v}% rounds to 0%, which is off (percentages count in tenths): write at least \
                 0.1%, or a size"
            ));
        }
        return Ok(MinFree::Permille(permille));
    }
    parse_size(text).map(MinFree::Bytes)
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// `"tcp"`, `6`, `"any"`: the protocol number, or `None` for any.
pub fn parse_protocol(p: &RawProtocol) -> Result<Option<u8>, String> {
    const NAMES: &str = "any, tcp, udp, icmp, icmpv6, sctp, or a number 0 to 255";
    match p {
        RawProtocol::Number(n) => u8::try_from(*n)
            .map(Some)
            .map_err(|_| format!("protocol = {n} is out of range: accepted values are {NAMES}")),
        RawProtocol::Name(name) => match name.to_ascii_lowercase().as_str() {
            "any" | "all" | "-1" => Ok(None),
            "tcp" => Ok(Some(6)),
            "udp" => Ok(Some(17)),
            "icmp" => Ok(Some(1)),
            "icmpv6" => Ok(Some(58)),
            "sctp" => Ok(Some(132)),
            other => other.parse::<u8>().map(Some).map_err(|_| {
                format!("protocol = \"{name}\" is unknown: accepted values are {NAMES}")
            }),
        },
    }
}

/// `"443"`, `"1024-65535"`, `443`.
pub fn parse_ports(p: &RawPorts) -> Result<PortRange, String> {
    let port = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("\"{s}\" is not a port: expected 0 to 65535"))
    };
    match p {
        RawPorts::Number(n) => u16::try_from(*n)
            .map(|v| PortRange { lo: v, hi: v })
            .map_err(|_| format!("{n} is not a port: expected 0 to 65535")),
        RawPorts::Text(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let v = port(s)?;
                    (v, v)
                }
            };
            if lo > hi {
                return Err(format!("range \"{s}\" is reversed: write \"{hi}-{lo}\""));
            }
            Ok(PortRange { lo, hi })
        }
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
pub fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(pos)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, pos: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut pos: usize) -> usize {
        while pos > 0 && !self.is_char_boundary(pos) {
            pos -= 1;
        }
        pos
    }
}
