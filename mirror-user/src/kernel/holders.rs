//! Who else uses an interface the way mirror wants to: the AF_XDP sockets
//! bound to its queues (`ss --xdp`: `NETLINK_SOCK_DIAG`, family `AF_XDP`)
//! and the XDP program attached to it, each with the processes that hold it
//! (found in `/proc/PID/fd` and `fdinfo`). `mirror check` reports them before
//! a start would fail on them, and `mirror run` names them when it does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An AF_XDP socket bound to a queue of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XskSocket {
    pub ifindex: u32,
    pub queue: u32,
    pub inode: u32,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const XDP_SHOW_INFO: u32 = 1;
const XDP_DIAG_INFO: u16 = 1;

/// Every AF_XDP socket of this network namespace bound to an interface.
pub fn xsk_sockets() -> io::Result<Vec<XskSocket>> {
    // Safety: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: just returned by socket(2), owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16) + xdp_diag_req (20).
    let mut req = [0u8; 36];
    req[0..4].copy_from_slice(&36u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_XDP as u8;
    req[24..28].copy_from_slice(&XDP_SHOW_INFO.to_ne_bytes());
    // Safety: `req` is a valid buffer of its length.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    // A dump ends with NLMSG_DONE; bounded so a confused kernel cannot spin us.
    for _ in 0..10_000 {
        // Safety: `buf` is a valid buffer of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().expect("2 bytes"));
            if len < 16 || len > msgs.len() {
                return Ok(out);
            }
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let err = i32::from_ne_bytes(msgs[16..20].try_into().expect("4 bytes"));
                    return Err(io::Error::from_raw_os_error(-err));
                }
                _ => {
                    if let Some(s) = parse_msg(&msgs[16..len]) {
                        out.push(s);
                    }
                }
            }
            msgs = &msgs[(len + 3) & !3..];
        }
    }
    Ok(out)
}

/// One `xdp_diag_msg` (16 bytes) and its attributes.
fn parse_msg(m: &[u8]) -> Option<XskSocket> {
    let inode = u32::from_ne_bytes(m.get(4..8)?.try_into().ok()?);
    let mut attrs = m.get(16..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes(attrs[0..2].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().ok()?);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == XDP_DIAG_INFO && len >= 12 {
            let ifindex = u32::from_ne_bytes(attrs[4..8].try_into().ok()?);
            let queue = u32::from_ne_bytes(attrs[8..12].try_into().ok()?);
            return (ifindex != 0).then_some(XskSocket {
                ifindex,
                queue,
                inode,
            });
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}

/// The processes (pid and command name) that hold an open file for which
/// `holds(fd path, link, fdinfo)` is true; processes this one may not look
/// into are skipped.
fn processes(
    holds: impl Fn(&std::path::Path, &str, &dyn Fn() -> String) -> bool,
) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let hit = fds.flatten().any(|fd| {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            let info = || {
                std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .unwrap_or_default()
            };
            holds(&fd.path(), &link.to_string_lossy(), &info)
        });
        if hit {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
}

/// Whether the socket at `/proc/PID/fd/N` is an AF_XDP socket (its protocol
/// name, as sockfs gives it, is "XDP").
fn is_xdp_socket(fd: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(fd.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 16];
    // Safety: NUL-terminated names, `buf` a valid buffer of its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n > 0
        && buf[..n as usize]
            .strip_suffix(&[0])
            .unwrap_or(&buf[..n as usize])
            == b"XDP"
}

/// Processes holding any AF_XDP socket.
fn xsk_processes() -> Vec<(u32, String)> {
    processes(|path, link, _| link.starts_with("socket:") && is_xdp_socket(path))
}

/// Processes holding the BPF program `id` (through a link or a program fd).
fn prog_processes(id: u32) -> Vec<(u32, String)> {
    let want = format!("prog_id:\t{id}\n");
    processes(|_, link, info| link.starts_with("anon_inode:bpf") && info().contains(&want))
}

/// "pid 123 (mirror), pid 456 (suricata)", or what to try when none is found.
fn describe(procs: &[(u32, String)]) -> String {
    if procs.is_empty() {
        return "held by no process this one may look into (try as root: ss --xdp -p, bpftool net)"
            .into();
    }
    let list = procs
        .iter()
        .map(|(pid, comm)| format!("pid {pid} ({comm})"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("held by {list}")
}

/// The AF_XDP sockets bound to `ifindex` (queue `queue`, or any), each
/// described with the processes holding it; empty when none is found.
/// Without the kernel's AF_XDP socket diagnostics (`CONFIG_XDP_SOCKETS_DIAG`)
/// the queue of a socket is unknown: then the processes that hold AF_XDP
/// sockets and the interface's XDP program are named, or with `any_process`
/// every process holding an AF_XDP socket.
pub fn xsk_holders(ifindex: u32, queue: Option<u32>, any_process: bool) -> Vec<String> {
    match xsk_sockets() {
        Ok(socks) => socks
            .iter()
            .filter(|s| s.ifindex == ifindex && queue.is_none_or(|q| q == s.queue))
            .map(|s| {
                let want = format!("socket:[{}]", s.inode);
                let procs = processes(|_, link, _| link == want);
                format!(
                    "an AF_XDP socket on queue {} ({})",
                    s.queue,
                    describe(&procs)
                )
            })
            .collect(),
        Err(_) => {
            let xsk = xsk_processes();
            let id = super::query::attached_prog_id(ifindex);
            let with_prog: Vec<(u32, String)> = if id == 0 {
                Vec::new()
            } else {
                let prog = prog_processes(id);
                xsk.iter().filter(|p| prog.contains(p)).cloned().collect()
            };
            let procs = if !with_prog.is_empty() {
                with_prog
            } else if any_process {
                xsk
            } else {
                Vec::new()
            };
            if procs.is_empty() {
                return Vec::new();
            }
            vec![format!(
                "AF_XDP sockets ({}; this kernel lacks AF_XDP socket diagnostics, so which \
                 queue is not known)",
                describe(&procs)
            )]
        }
    }
}

/// "held by pid 123 (mirror)": the processes holding BPF program `id`.
pub fn prog_holders(id: u32) -> String {
    describe(&prog_processes(id))
}

/// The XDP program attached to `ifindex`, described with its name and the
/// processes holding it (through its BPF link or program fd); `None` when
/// there is none.
pub fn xdp_holder(ifindex: u32) -> Option<String> {
    let id = super::query::attached_prog_id(ifindex);
    if id == 0 {
        return None;
    }
    let name = super::query::prog_name(id);
    Some(format!(
        "XDP program id {id} (`{name}`, {})",
        describe(&prog_processes(id))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diag_message_gives_its_interface_queue_and_inode() {
        let mut m = vec![44u8, 3, 0, 0];
        m.extend_from_slice(&777u32.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        // XDP_DIAG_INFO: len 12, ifindex 5, queue 2.
        m.extend_from_slice(&12u16.to_ne_bytes());
        m.extend_from_slice(&XDP_DIAG_INFO.to_ne_bytes());
        m.extend_from_slice(&5u32.to_ne_bytes());
        m.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(
            parse_msg(&m),
            Some(XskSocket {
                ifindex: 5,
                queue: 2,
                inode: 777
            })
        );
        // Not bound: no interface.
        m[20..24].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(parse_msg(&m), None);
    }

    #[test]
    fn processes_are_described_by_pid_and_name() {
        assert_eq!(
            describe(&[(12, "mirror".into()), (34, "suricata".into())]),
            "held by pid 12 (mirror), pid 34 (suricata)"
        );
        assert!(describe(&[]).contains("ss --xdp -p"));
    }
}
