//! Validation of every name that reaches a filesystem path or a kernel object.
//!
//! Config files, kubelet requests and CNI netconfs hand us PCI addresses, interface names and
//! resource names; each of them ends up in a sysfs path, a socket path or a file name. A crafted
//! value such as `../../etc` must never get that far, so all of them pass through here first.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid PCI address {0:?}: expected DDDD:BB:DD.F (hex), e.g. 0000:3b:02.0")]
    PciAddress(String),
    #[error("invalid interface name {name:?}: {why}")]
    Interface { name: String, why: &'static str },
    #[error("invalid resource name {name:?}: {why}")]
    Resource { name: String, why: &'static str },
    #[error("invalid resource prefix {name:?}: {why}")]
    Prefix { name: String, why: &'static str },
    #[error("invalid node name {name:?}: {why}")]
    Node { name: String, why: &'static str },
}

/// A PCI address `domain:bus:device.function`, always in the kernel's lower-case long form.
///
/// Ordering follows the numeric address, so sorting gives the kernel's enumeration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = || NameError::PciAddress(s.to_string());
        let (domain, rest) = s.split_once(':').ok_or_else(err)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(err)?;
        let (device, function) = rest.split_once('.').ok_or_else(err)?;
        let hex = |part: &str, min: usize, max: usize| -> Result<u32, NameError> {
            if part.len() < min || part.len() > max || !part.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(err());
            }
            u32::from_str_radix(part, 16).map_err(|_| err())
        };
        let domain = hex(domain, 4, 5)?;
        let bus = hex(bus, 2, 2)? as u8;
        let device = hex(device, 2, 2)?;
        let function = hex(function, 1, 1)?;
        if device > 0x1f || function > 7 {
            return Err(err());
        }
        Ok(PciAddress {
            domain,
            bus,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        PciAddress::parse(s)
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PciAddress::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The kernel's limit for interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks a network interface name the way the kernel's `dev_valid_name` does, and refuses
/// the kernel's name patterns ('%').
pub fn validate_ifname(name: &str) -> Result<(), NameError> {
    let bad = |why| {
        Err(NameError::Interface {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return bad("contains '/', ':', white space or a control character");
    }
    // The kernel takes a name with '%' as a pattern ("net%d") and picks a name of its own.
    if name.contains('%') {
        return bad("contains '%' (the kernel would pick a name from it)");
    }
    Ok(())
}

/// Longest resource name part we accept: kubelet's extended resource names are qualified names
/// whose name part is at most 63 characters.
pub const MAX_RESOURCE_NAME_LEN: usize = 63;

/// Checks a `resourceName` as the upstream device plugin does (`^[a-zA-Z0-9_-]+$`), bounded in length.
pub fn validate_resource_name(name: &str) -> Result<(), NameError> {
    let bad = |why| {
        Err(NameError::Resource {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_RESOURCE_NAME_LEN {
        return bad("longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad("only letters, digits, '_' and '-' are allowed");
    }
    Ok(())
}

/// What is wrong with `name` as a lower-case DNS subdomain (RFC 1123), if anything.
fn dns_subdomain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if name.len() > 253 {
        return Some("longer than 253 characters");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (!name.split('.').all(label_ok))
        .then_some("must be a lower-case DNS subdomain such as intel.com")
}

/// Checks a resource prefix: a DNS subdomain such as `intel.com` (kubelet's rule for the domain
/// part of an extended resource name).
pub fn validate_resource_prefix(prefix: &str) -> Result<(), NameError> {
    match dns_subdomain_problem(prefix) {
        Some(why) => Err(NameError::Prefix {
            name: prefix.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Checks a Kubernetes node name (a DNS subdomain), which names an API object and a URL path.
pub fn validate_node_name(name: &str) -> Result<(), NameError> {
    match dns_subdomain_problem(name) {
        Some(why) => Err(NameError::Node {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Turns an arbitrary string (a PF netdev name) into a valid resource name: characters outside
/// `[a-zA-Z0-9_-]` become `_`, and the result is cut to the maximum length.
pub fn sanitize_resource_name(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_RESOURCE_NAME_LEN)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// A simple name for a file or folder inside a folder we own (no separators, no dot names).
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        let a = PciAddress::parse("0000:3b:02.1").unwrap();
        assert_eq!(a.to_string(), "0000:3b:02.1");
        assert_eq!(
            PciAddress::parse("0000:3B:1f.7").unwrap().to_string(),
            "0000:3b:1f.7"
        );
        assert_eq!(
            PciAddress::parse("10000:01:00.0").unwrap().to_string(),
            "10000:01:00.0"
        );
        for bad in [
            "",
            "../../etc",
            "0000:3b:02",
            "0000:3b:02.8",
            "0000:3b:20.0",
            "000:3b:02.0",
            "0000:3b:02.0/..",
            "0000:3b:02.0\n",
            "zzzz:3b:02.0",
            "0000:+b:02.0",
        ] {
            assert!(PciAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            PciAddress::parse("0000:3b:02.0").unwrap() < PciAddress::parse("0000:3b:02.1").unwrap()
        );
    }

    #[test]
    fn interface_names() {
        validate_ifname("ens1f0v127").unwrap();
        validate_ifname("eth0").unwrap();
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../../etc",
            "a b",
            "x:1",
            "sixteen-chars-xx",
            "net%d",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resource_names_and_prefixes() {
        validate_resource_name("intel_sriov_netdevice").unwrap();
        validate_resource_name("mlx-pool_2").unwrap();
        for bad in ["", "../../etc", "a.b", "a/b", &"x".repeat(64)] {
            assert!(validate_resource_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_resource_prefix("intel.com").unwrap();
        validate_resource_prefix("openshift.io").unwrap();
        for bad in ["", "Intel.com", "a..b", "-a.com", "a/b", "../x"] {
            assert!(validate_resource_prefix(bad).is_err(), "{bad:?} accepted");
        }
        validate_node_name("worker-1.rack3.example").unwrap();
        for bad in ["", "Worker-1", "a/../b", "node_1", &"n".repeat(254)] {
            let err = validate_node_name(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid node name"), "{bad:?}: {err}");
        }
        assert_eq!(sanitize_resource_name("enp3s0f0.100"), "enp3s0f0_100");
        assert_eq!(sanitize_resource_name(""), "_");
        validate_resource_name(&sanitize_resource_name(&"é".repeat(100))).unwrap();
    }
}
