//! Real socket traffic between two namespaces through a live (copy-mode)
//! interface: a UDP echo exchange where every datagram is accounted for, and
//! a TCP transfer checked byte for byte. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::Netns;

/// How long any single read or write may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Sent by the client to end the echo server.
pub const END: &[u8] = b"END";

/// A UDP server in a namespace that sends every datagram back, until
/// [`EchoServer::finish`] (or 5 s without traffic).
pub struct EchoServer {
    addr: SocketAddr,
    handle: Option<std::thread::JoinHandle<u32>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<EchoServer> {
        let sock = ns.run(move || Ok(UdpSocket::bind(addr)?))?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        let handle = std::thread::spawn(move || {
            let mut echoed = 0;
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if &buf[..n] == END {
                    break;
                }
                if sock.send_to(&buf[..n], from).is_ok() {
                    echoed += 1;
                }
            }
            echoed
        });
        Ok(EchoServer {
            addr,
            handle: Some(handle),
        })
    }

    /// Stops the server (from `client_ns`); returns how many it echoed.
    pub fn finish(mut self, client_ns: &Netns) -> Result<u32> {
        let addr = self.addr;
        client_ns.run(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(END, addr)?;
            Ok(())
        })?;
        self.handle
            .take()
            .context("finished twice")?
            .join()
            .map_err(|_| anyhow::anyhow!("echo server panicked"))
    }
}

/// Datagram `i` of an exchange: its sequence number, then filler.
pub fn datagram(i: u32, size: usize) -> Vec<u8> {
    let mut d = i.to_be_bytes().to_vec();
    d.extend((0..size.saturating_sub(4)).map(|k| (k as u32 ^ i) as u8));
    d
}

/// Sends `n` datagrams of `size` bytes from `ns` to `server` one at a
/// time, each answered before the next goes (so no socket buffer can
/// overflow: any loss is the network's). Fails at the first datagram not
/// echoed intact within 5 s. `progress` counts completed round trips.
pub fn udp_exchange(
    ns: &Netns,
    server: SocketAddr,
    n: u32,
    size: usize,
    progress: &AtomicU32,
) -> Result<u32> {
    udp_exchange_until(ns, server, n, size, progress, &AtomicBool::new(false))
}

/// [`udp_exchange`] that also ends, early and successfully, once `stop`
/// is set. Returns the round trips completed.
pub fn udp_exchange_until(
    ns: &Netns,
    server: SocketAddr,
    n: u32,
    size: usize,
    progress: &AtomicU32,
    stop: &AtomicBool,
) -> Result<u32> {
    let sock = ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(server)?;
        Ok(s)
    })?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; size + 64];
    for i in 0..n {
        if stop.load(Ordering::Relaxed) {
            return Ok(i);
        }
        let d = datagram(i, size);
        sock.send(&d)?;
        let got = sock
            .recv(&mut buf)
            .with_context(|| format!("datagram {i} of {n} was not echoed within 5 s"))?;
        if buf[..got] != d[..] {
            bail!("datagram {i} came back changed or out of order");
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    Ok(n)
}

/// What a TCP transfer showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOutcome {
    /// Bytes the server read, all equal to what was sent.
    pub bytes: usize,
    /// Segments the sender retransmitted (`tcpi_total_retrans`): 0 when
    /// the network lost nothing and no timer fired early.
    pub retransmits: u32,
    /// Of those, the ones the receiver reported it already had (D-SACK,
    /// `tcpi_dsack_dups`): nothing was lost, the sender only gave up
    /// waiting too soon (a tail-loss probe or an RTO on a starved CPU).
    pub spurious: u32,
}

impl TcpOutcome {
    /// Retransmissions of segments the receiver did not already have:
    /// segments the network lost.
    pub fn lost(&self) -> u32 {
        self.retransmits.saturating_sub(self.spurious)
    }
}

/// Sends `data` from `client_ns` to a server in `server_ns` at `addr` and
/// checks the server read exactly `data`, in order.
pub fn tcp_transfer(
    client_ns: &Netns,
    server_ns: &Netns,
    addr: SocketAddr,
    data: &[u8],
) -> Result<TcpOutcome> {
    tcp_transfer_paced(client_ns, server_ns, addr, data, None)
}

/// [`tcp_transfer`] with the client's TCP paced to `bytes_per_sec`
/// (`SO_MAX_PACING_RATE`): no line-rate bursts, which a veth with an XDP
/// program (a 256-frame receive ring) drops on a starved CPU whatever
/// the program does.
pub fn tcp_transfer_paced(
    client_ns: &Netns,
    server_ns: &Netns,
    addr: SocketAddr,
    data: &[u8],
    bytes_per_sec: Option<u32>,
) -> Result<TcpOutcome> {
    let listener = server_ns.run(move || Ok(TcpListener::bind(addr)?))?;
    let server = std::thread::spawn(move || -> Result<Vec<u8>> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        Ok(got)
    });
    let mut conn = client_ns.run(move || Ok(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    if let Some(rate) = bytes_per_sec {
        // Safety: a valid socket and a 4-byte option value that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MAX_PACING_RATE,
                (&rate as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("SO_MAX_PACING_RATE");
        }
    }
    conn.write_all(data).context("sending")?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("TCP server panicked"))?
        .context("receiving")?;
    let (retransmits, spurious) = tcp_retransmits(&conn);
    if got != data {
        bail!(
            "the server read {} bytes that differ from the {} sent",
            got.len(),
            data.len()
        );
    }
    Ok(TcpOutcome {
        bytes: got.len(),
        retransmits,
        spurious,
    })
}

/// (`tcpi_total_retrans`, `tcpi_dsack_dups`) of a connection
/// (`u32::MAX` retransmissions when the kernel refuses `TCP_INFO`).
fn tcp_retransmits(conn: &TcpStream) -> (u32, u32) {
    // Safety: tcp_info is plain old data; all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // Safety: `info` is a valid buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return (u32::MAX, 0);
    }
    (info.tcpi_total_retrans, info.tcpi_dsack_dups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_is_what_the_receiver_did_not_already_have() {
        let o = |retransmits, spurious| TcpOutcome {
            bytes: 0,
            retransmits,
            spurious,
        };
        assert_eq!(o(0, 0).lost(), 0);
        assert_eq!(o(1, 1).lost(), 0);
        assert_eq!(o(3, 1).lost(), 2);
        assert_eq!(o(u32::MAX, 0).lost(), u32::MAX);
    }
}
