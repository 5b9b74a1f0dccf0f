//! MAC addresses the platform assigns, the way a hypervisor gives every vNIC a MAC from its own
//! prefix (VMware's `00:50:56`): when a network config names no MAC, the attachment gets one
//! derived from the node's prefix and a stable hash of who asked (the pod's namespace and name,
//! or the container, and the interface name). The same pod gets the same MAC after a restart;
//! two attachments on one node never share one (a taken value moves to the next); and a VF reused
//! by the next pod no longer shows the previous pod's MAC to switches and ARP caches.
//!
//! The hash is FNV-1a (64 bit) over the key's bytes: fixed here, so the MAC a pod gets does not
//! change between versions of this program.

use crate::netlink::MacAddr;
use std::fmt;
use std::str::FromStr;

/// A node's MAC prefix: 3 to 5 bytes, locally administered, unicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacPrefix {
    bytes: Vec<u8>,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacPrefixError {
    #[error("{0:?} is not a MAC prefix of 3 to 5 bytes such as 0a:58:56")]
    Format(String),
    #[error(
        "{0} is not locally administered: the first byte needs bit 0x02 (e.g. 0a:.., 02:..), or the MACs could clash with vendors' burned-in ones"
    )]
    Universal(String),
    #[error("{0} is a multicast prefix (bit 0x01 of the first byte)")]
    Multicast(String),
}

impl FromStr for MacPrefix {
    type Err = MacPrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: Option<Vec<u8>> = s
            .split(':')
            .map(|b| {
                (b.len() == 2)
                    .then(|| u8::from_str_radix(b, 16).ok())
                    .flatten()
            })
            .collect();
        let bytes = bytes
            .filter(|b| (3..=5).contains(&b.len()))
            .ok_or_else(|| MacPrefixError::Format(s.to_string()))?;
        if bytes[0] & 0x01 != 0 {
            return Err(MacPrefixError::Multicast(s.to_string()));
        }
        if bytes[0] & 0x02 == 0 {
            return Err(MacPrefixError::Universal(s.to_string()));
        }
        Ok(MacPrefix { bytes })
    }
}

impl fmt::Display for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&parts.join(":"))
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl MacPrefix {
    /// How many addresses the prefix holds.
    fn space(&self) -> u64 {
        1u64 << (8 * (6 - self.bytes.len()))
    }

    fn with_suffix(&self, suffix: u64) -> MacAddr {
        let mut mac = [0u8; 6];
        mac[..self.bytes.len()].copy_from_slice(&self.bytes);
        let n = 6 - self.bytes.len();
        for (i, byte) in mac[self.bytes.len()..].iter_mut().enumerate() {
            *byte = (suffix >> (8 * (n - 1 - i))) as u8;
        }
        MacAddr(mac)
    }

    /// The MAC this key hashes to.
    pub fn derive(&self, key: &str) -> MacAddr {
        self.with_suffix(fnv1a(key.as_bytes()) % self.space())
    }

    /// Whether `mac` is one of this prefix's.
    pub fn contains(&self, mac: &MacAddr) -> bool {
        mac.0.starts_with(&self.bytes)
    }

    /// The MAC for `key`: the derived one, or the next free one after it (wrapping within the
    /// prefix) when `taken` says it is in use. `None` when every address is taken.
    pub fn assign(&self, key: &str, mut taken: impl FnMut(&MacAddr) -> bool) -> Option<MacAddr> {
        let space = self.space();
        let start = fnv1a(key.as_bytes()) % space;
        (0..space)
            .map(|i| self.with_suffix((start + i) % space))
            .find(|m| !taken(m))
    }
}

/// The key a MAC is derived from: the pod (namespace and name, stable across its restarts) when
/// the runtime says which it is, else the container; and the interface.
pub fn key(pod: Option<(&str, &str)>, container_id: &str, ifname: &str) -> String {
    match pod {
        Some((name, namespace)) => format!("pod {namespace}/{name} {ifname}"),
        None => format!("container {container_id} {ifname}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn prefixes_must_be_local_unicast_and_3_to_5_bytes() {
        let p: MacPrefix = "0a:58:56".parse().unwrap();
        assert_eq!(p.to_string(), "0a:58:56");
        assert!("02:00:00:00:01".parse::<MacPrefix>().is_ok());
        for (bad, want) in [
            ("00:50:56", "not locally administered"),
            ("03:00:00", "multicast"),
            ("0a:58", "3 to 5 bytes"),
            ("0a:58:56:00:00:00", "3 to 5 bytes"),
            ("0a:5x:56", "3 to 5 bytes"),
            ("0a:058:56", "3 to 5 bytes"),
        ] {
            let e = bad.parse::<MacPrefix>().unwrap_err();
            assert!(e.to_string().contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn derived_macs_are_stable_inside_the_prefix_and_unique_when_assigned() {
        let p: MacPrefix = "0a:58:56".parse().unwrap();
        let k = key(Some(("web-0", "shop")), "c1", "net1");
        assert_eq!(k, key(Some(("web-0", "shop")), "another-container", "net1"));
        let m = p.derive(&k);
        assert!(p.contains(&m));
        // Fixed hash: the value does not change between versions.
        assert_eq!(m.to_string(), p.derive("pod shop/web-0 net1").to_string());
        assert_ne!(p.derive(&key(Some(("web-0", "shop")), "c1", "net2")), m);
        // 1,000 attachments on one node, each given a MAC while the others hold theirs.
        let mut taken = HashSet::new();
        for i in 0..1000 {
            let k = key(Some((&format!("pod-{i}"), "ns")), "x", "net1");
            let mac = p.assign(&k, |m| taken.contains(m)).unwrap();
            assert!(p.contains(&mac));
            assert!(taken.insert(mac), "duplicate {mac}");
        }
        // A taken value moves to the next one, wrapping inside the prefix.
        let small: MacPrefix = "0a:00:00:00:00".parse().unwrap();
        let first = small.derive("k");
        let next = small.assign("k", |m| *m == first).unwrap();
        assert_eq!(
            u64::from(next.0[5]),
            (u64::from(first.0[5]) + 1) % 256,
            "{first} -> {next}"
        );
        assert_eq!(small.assign("k", |_| true), None, "all 256 taken");
    }
}
