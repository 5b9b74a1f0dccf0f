//! ICMP echo ("ping") from inside a network namespace, for the demo and tests: the machine has
//! no ping binary, and a UDP exchange would not be a ping.

use socket2::{Domain, Protocol, Socket, Type};
use sriov::netlink::Netns;
use std::io;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut pkt = vec![8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"sriov-rs ping payload");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    pkt
}

/// Sends ICMP echo requests to `dst` from inside `netns` until one reply arrives (or `count`
/// requests, one per `interval`, went unanswered). Returns the round-trip time of the reply.
pub fn ping(
    netns: &Netns,
    dst: Ipv4Addr,
    count: u16,
    interval: Duration,
) -> io::Result<Option<Duration>> {
    // The socket is created inside the pod's netns and stays bound to it.
    let sock = netns
        .run_in(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)))
        .map_err(io::Error::other)??;
    sock.set_read_timeout(Some(interval))?;
    let id = (std::process::id() & 0xffff) as u16;
    let to = SocketAddrV4::new(dst, 0).into();
    for seq in 1..=count {
        let sent = Instant::now();
        sock.send_to(&echo_request(id, seq), &to)?;
        let deadline = sent + interval;
        while Instant::now() < deadline {
            let mut buf = [0u8; 1500];
            // A raw IPv4 socket hands over the whole datagram, IP header included: the
            // sender's address is in it, so plain `read` is enough.
            let n = match (&sock).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            };
            let bytes = &buf[..n];
            let ihl = usize::from(bytes.first().copied().unwrap_or(0) & 0x0f) * 4;
            let from_ip = bytes
                .get(12..16)
                .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            let icmp = bytes.get(ihl..).unwrap_or(&[]);
            if icmp.len() >= 8
                && icmp[0] == 0
                && u16::from_be_bytes([icmp[4], icmp[5]]) == id
                && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
                && from_ip == Some(dst)
            {
                return Ok(Some(sent.elapsed()));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum_verifies() {
        let pkt = echo_request(0x1234, 7);
        assert_eq!(checksum(&pkt), 0, "a packet with its checksum sums to zero");
        assert_eq!(&pkt[4..8], &[0x12, 0x34, 0, 7]);
    }
}
