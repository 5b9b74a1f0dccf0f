//! Generic netlink, as far as the device plugin needs it: resolving a family by name (the
//! `nlctrl` controller) and devlink's `dev info` (`DEVLINK_CMD_INFO_GET`), which reports a
//! device's driver, serial number and firmware/package versions (for ice, the running DDP
//! package as `fw.app.name`).
//!
//! Requests are built as bytes and replies parsed from bytes ([`parse_messages`],
//! [`parse_devlink_info`]), so everything but the kernel round trip is tested without root.

use super::attrs::{align4, nlas, string};
use super::error::{NetlinkError, Result};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use nix::errno::Errno;
use std::io;

const NLMSG_HDR: usize = 16;
/// Room for one datagram: the kernel fills dump datagrams up to 32 KiB.
const RECV_ROOM: usize = 64 * 1024;
const GENL_HDR: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;

/// The controller family (`nlctrl`) has a fixed id.
pub const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const DEVLINK_GENL_VERSION: u8 = 1;
const DEVLINK_CMD_INFO_GET: u8 = 51;
const DEVLINK_ATTR_BUS_NAME: u16 = 1;
const DEVLINK_ATTR_DEV_NAME: u16 = 2;
const DEVLINK_ATTR_INFO_DRIVER_NAME: u16 = 98;
const DEVLINK_ATTR_INFO_SERIAL_NUMBER: u16 = 99;
const DEVLINK_ATTR_INFO_VERSION_FIXED: u16 = 100;
const DEVLINK_ATTR_INFO_VERSION_RUNNING: u16 = 101;
const DEVLINK_ATTR_INFO_VERSION_STORED: u16 = 102;
const DEVLINK_ATTR_INFO_VERSION_NAME: u16 = 103;
const DEVLINK_ATTR_INFO_VERSION_VALUE: u16 = 104;

/// Appends one attribute (`len`, `type`, value, padding).
fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + align4(len) - len, 0);
}

/// A NUL-terminated string attribute value.
fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One generic netlink request: netlink header, genetlink header (`cmd`, `version`), attributes.
pub fn request_bytes(
    family: u16,
    cmd: u8,
    version: u8,
    dump: bool,
    seq: u32,
    attrs: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let mut body = vec![cmd, version, 0, 0];
    for (kind, value) in attrs {
        put_attr(&mut body, *kind, value);
    }
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    let mut out = Vec::with_capacity(NLMSG_HDR + body.len());
    out.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&family.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&body);
    out
}

/// What one datagram said about request `seq`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Datagram {
    /// The attributes of each genetlink message (after the genetlink header).
    pub messages: Vec<Vec<u8>>,
    /// `NLMSG_DONE` ended a dump.
    pub done: bool,
    /// `NLMSG_ERROR` with a non-zero code: the errno.
    pub error: Option<Errno>,
}

/// Splits a datagram into its messages for `seq` (others are ignored); a length that runs past
/// the buffer is a decode error.
pub fn parse_messages(buf: &[u8], seq: u32) -> Result<Datagram> {
    let bad = |reason: String| NetlinkError::Decode {
        what: "generic netlink message",
        reason,
    };
    let mut out = Datagram::default();
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let word = |o: usize| u32::from_ne_bytes(buf[at + o..at + o + 4].try_into().unwrap());
        let len = word(0) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let msg_seq = word(8);
        if len < NLMSG_HDR || at + len > buf.len() {
            return Err(bad(format!("length {len} at offset {at} of {}", buf.len())));
        }
        let payload = &buf[at + NLMSG_HDR..at + len];
        if msg_seq == seq {
            match kind {
                NLMSG_DONE => out.done = true,
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .ok_or_else(|| bad("short error message".into()))?;
                    if code != 0 {
                        out.error = Some(Errno::from_raw(-code));
                    }
                }
                _ => {
                    let attrs = payload
                        .get(GENL_HDR..)
                        .ok_or_else(|| bad("short genetlink header".into()))?;
                    out.messages.push(attrs.to_vec());
                }
            }
        }
        at += align4(len);
    }
    Ok(out)
}

/// A generic netlink command: the family's id, the command and the family's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub family: u16,
    pub cmd: u8,
    pub version: u8,
}

/// One generic netlink socket in the calling thread's network namespace.
pub struct GenlSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl GenlSocket {
    pub fn new() -> Result<Self> {
        let socket_err = |op| move |source| NetlinkError::Socket { op, source };
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(socket_err("open"))?;
        socket.bind_auto().map_err(socket_err("bind"))?;
        Ok(GenlSocket {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_ROOM),
        })
    }

    /// Sends one request and collects its answer: the one reply of a get, every reply of a dump.
    /// A kernel refusal is [`NetlinkError::Kernel`] with `op` and `object`.
    pub fn exchange(
        &mut self,
        command: Command,
        dump: bool,
        attrs: &[(u16, Vec<u8>)],
        op: &str,
        object: &str,
    ) -> Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = request_bytes(
            command.family,
            command.cmd,
            command.version,
            dump,
            seq,
            attrs,
        );
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.socket.send_to(&bytes, &kernel, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(NetlinkError::Socket { op: "send", source }),
            }
        }
        let mut messages = Vec::new();
        loop {
            let n = loop {
                self.buf.clear();
                match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => return Err(NetlinkError::Socket { op: "recv", source }),
                }
            };
            if n > self.buf.len() {
                return Err(NetlinkError::Decode {
                    what: "generic netlink datagram",
                    reason: format!("{n} bytes, more than the {RECV_ROOM}-byte buffer"),
                });
            }
            let d = parse_messages(&self.buf, seq)?;
            if let Some(errno) = d.error {
                return Err(NetlinkError::Kernel {
                    op: op.to_string(),
                    object: object.to_string(),
                    errno,
                    ext_ack: None,
                });
            }
            messages.extend(d.messages);
            if d.done || (!dump && !messages.is_empty()) {
                return Ok(messages);
            }
        }
    }

    /// The id of the generic netlink family `name`; `None` when this kernel has no such family.
    pub fn family(&mut self, name: &str) -> Result<Option<u16>> {
        // GENL_NAMSIZ: the kernel refuses longer names with EINVAL.
        if name.is_empty() || name.len() >= 16 {
            return Err(NetlinkError::InvalidArgument(format!(
                "generic netlink family name {name:?}: 1-15 bytes"
            )));
        }
        let attrs = [(CTRL_ATTR_FAMILY_NAME, cstr(name))];
        let command = Command {
            family: GENL_ID_CTRL,
            cmd: CTRL_CMD_GETFAMILY,
            version: 1,
        };
        match self.exchange(
            command,
            false,
            &attrs,
            "resolve generic netlink family",
            name,
        ) {
            Ok(messages) => {
                for m in &messages {
                    for (kind, value) in nlas(m, "nlctrl reply")? {
                        if kind == CTRL_ATTR_FAMILY_ID && value.len() >= 2 {
                            return Ok(Some(u16::from_ne_bytes([value[0], value[1]])));
                        }
                    }
                }
                Err(NetlinkError::Protocol {
                    op: format!("resolve generic netlink family {name}"),
                    reason: "the reply has no family id".into(),
                })
            }
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What devlink `dev info` reports for one devlink instance (`bus/dev`, e.g. `pci/0000:3b:00.0`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevlinkInfo {
    pub bus: String,
    pub dev: String,
    pub driver: Option<String>,
    pub serial_number: Option<String>,
    /// `(name, value)` pairs, in the kernel's order.
    pub fixed: Vec<(String, String)>,
    pub running: Vec<(String, String)>,
    pub stored: Vec<(String, String)>,
}

impl DevlinkInfo {
    /// The version `name` (e.g. `fw.app.name`): running first, then fixed, then stored.
    pub fn version(&self, name: &str) -> Option<&str> {
        [&self.running, &self.fixed, &self.stored]
            .into_iter()
            .flat_map(|list| list.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the attributes of one `DEVLINK_CMD_INFO_GET` reply.
pub fn parse_devlink_info(attrs: &[u8]) -> Result<DevlinkInfo> {
    let mut info = DevlinkInfo::default();
    for (kind, value) in nlas(attrs, "devlink info")? {
        match kind {
            DEVLINK_ATTR_BUS_NAME => info.bus = string(value),
            DEVLINK_ATTR_DEV_NAME => info.dev = string(value),
            DEVLINK_ATTR_INFO_DRIVER_NAME => info.driver = Some(string(value)),
            DEVLINK_ATTR_INFO_SERIAL_NUMBER => info.serial_number = Some(string(value)),
            DEVLINK_ATTR_INFO_VERSION_FIXED
            | DEVLINK_ATTR_INFO_VERSION_RUNNING
            | DEVLINK_ATTR_INFO_VERSION_STORED => {
                let (mut name, mut val) = (None, None);
                for (k, v) in nlas(value, "devlink info version")? {
                    match k {
                        DEVLINK_ATTR_INFO_VERSION_NAME => name = Some(string(v)),
                        DEVLINK_ATTR_INFO_VERSION_VALUE => val = Some(string(v)),
                        _ => {}
                    }
                }
                if let (Some(n), Some(v)) = (name, val) {
                    let list = match kind {
                        DEVLINK_ATTR_INFO_VERSION_FIXED => &mut info.fixed,
                        DEVLINK_ATTR_INFO_VERSION_RUNNING => &mut info.running,
                        _ => &mut info.stored,
                    };
                    list.push((n, v));
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Builds the attributes of a devlink info reply (for tests and emulations of a driver).
pub fn devlink_info_attrs(info: &DevlinkInfo) -> Vec<u8> {
    let mut out = Vec::new();
    put_attr(&mut out, DEVLINK_ATTR_BUS_NAME, &cstr(&info.bus));
    put_attr(&mut out, DEVLINK_ATTR_DEV_NAME, &cstr(&info.dev));
    if let Some(d) = &info.driver {
        put_attr(&mut out, DEVLINK_ATTR_INFO_DRIVER_NAME, &cstr(d));
    }
    if let Some(s) = &info.serial_number {
        put_attr(&mut out, DEVLINK_ATTR_INFO_SERIAL_NUMBER, &cstr(s));
    }
    for (kind, list) in [
        (DEVLINK_ATTR_INFO_VERSION_FIXED, &info.fixed),
        (DEVLINK_ATTR_INFO_VERSION_RUNNING, &info.running),
        (DEVLINK_ATTR_INFO_VERSION_STORED, &info.stored),
    ] {
        for (n, v) in list {
            let mut nested = Vec::new();
            put_attr(&mut nested, DEVLINK_ATTR_INFO_VERSION_NAME, &cstr(n));
            put_attr(&mut nested, DEVLINK_ATTR_INFO_VERSION_VALUE, &cstr(v));
            put_attr(&mut out, kind, &nested);
        }
    }
    out
}

fn info_get(family: u16) -> Command {
    Command {
        family,
        cmd: DEVLINK_CMD_INFO_GET,
        version: DEVLINK_GENL_VERSION,
    }
}

/// devlink over generic netlink in the calling thread's network namespace (devlink instances
/// of PCI devices are in the initial one).
pub struct Devlink {
    socket: GenlSocket,
    /// `None`: this kernel has no devlink (CONFIG_NET_DEVLINK off).
    family: Option<u16>,
}

impl Devlink {
    pub fn open() -> Result<Devlink> {
        let mut socket = GenlSocket::new()?;
        let family = socket.family("devlink")?;
        Ok(Devlink { socket, family })
    }

    /// Whether the kernel offers devlink at all.
    pub fn available(&self) -> bool {
        self.family.is_some()
    }

    /// `devlink dev info bus/dev`; `None` when there is no such devlink instance (a VF of most
    /// drivers, a driver without devlink) or no devlink in this kernel.
    pub fn info(&mut self, bus: &str, dev: &str) -> Result<Option<DevlinkInfo>> {
        let Some(family) = self.family else {
            return Ok(None);
        };
        let attrs = [
            (DEVLINK_ATTR_BUS_NAME, cstr(bus)),
            (DEVLINK_ATTR_DEV_NAME, cstr(dev)),
        ];
        match self.socket.exchange(
            info_get(family),
            false,
            &attrs,
            "devlink dev info",
            &format!("{bus}/{dev}"),
        ) {
            Ok(messages) => messages.first().map(|m| parse_devlink_info(m)).transpose(),
            Err(e)
                if matches!(
                    e.errno(),
                    Some(Errno::ENODEV | Errno::ENOENT | Errno::EOPNOTSUPP)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `devlink dev info` of every devlink instance, in one dump request.
    pub fn info_all(&mut self) -> Result<Vec<DevlinkInfo>> {
        let Some(family) = self.family else {
            return Ok(Vec::new());
        };
        let messages = self.socket.exchange(
            info_get(family),
            true,
            &[],
            "devlink dev info",
            "all devices",
        )?;
        messages.iter().map(|m| parse_devlink_info(m)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let b = request_bytes(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            1,
            false,
            7,
            &[(CTRL_ATTR_FAMILY_NAME, cstr("devlink"))],
        );
        // 16 header + 4 genl + attr(4 + 8 = 12)
        assert_eq!(b.len(), 32);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), GENL_ID_CTRL);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), NLM_F_REQUEST);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        assert_eq!(&b[16..20], &[CTRL_CMD_GETFAMILY, 1, 0, 0]);
        assert_eq!(u16::from_ne_bytes([b[20], b[21]]), 12);
        assert_eq!(&b[24..32], b"devlink\0");
        let dump = request_bytes(20, DEVLINK_CMD_INFO_GET, 1, true, 1, &[]);
        assert_eq!(
            u16::from_ne_bytes([dump[6], dump[7]]),
            NLM_F_REQUEST | NLM_F_DUMP
        );
    }

    #[test]
    fn devlink_info_round_trips_and_garbage_is_an_error() {
        let info = DevlinkInfo {
            bus: "pci".into(),
            dev: "0000:3b:00.0".into(),
            driver: Some("ice".into()),
            serial_number: Some("00-01-02-ff-ff-03-04-05".into()),
            fixed: vec![("board.id".into(), "K91258-000".into())],
            running: vec![
                ("fw.mgmt".into(), "5.4.5".into()),
                ("fw.app.name".into(), "ICE OS Default Package".into()),
                ("fw.app".into(), "1.3.30.0".into()),
            ],
            stored: vec![("fw.app.name".into(), "stored name".into())],
        };
        let body = [
            vec![DEVLINK_CMD_INFO_GET, 1, 0, 0],
            devlink_info_attrs(&info),
        ]
        .concat();
        let mut datagram = reply(20, 3, &body);
        // A message of another request in the same datagram is ignored.
        datagram.extend(reply(20, 99, &body));
        let d = parse_messages(&datagram, 3).unwrap();
        assert_eq!(d.messages.len(), 1);
        let got = parse_devlink_info(&d.messages[0]).unwrap();
        assert_eq!(got, info);
        assert_eq!(got.version("fw.app.name"), Some("ICE OS Default Package"));
        assert_eq!(got.version("board.id"), Some("K91258-000"));
        assert_eq!(got.version("nope"), None);
        // Errors and the end of a dump.
        let err = reply(NLMSG_ERROR, 3, &(-(Errno::ENODEV as i32)).to_ne_bytes());
        assert_eq!(parse_messages(&err, 3).unwrap().error, Some(Errno::ENODEV));
        assert!(
            parse_messages(&reply(NLMSG_DONE, 3, &[0; 4]), 3)
                .unwrap()
                .done
        );
        // A length past the end, a cut attribute: errors, no panic.
        let mut cut = datagram.clone();
        cut[0] = 0xff;
        assert!(parse_messages(&cut, 3).is_err());
        let attrs = &d.messages[0];
        assert!(parse_devlink_info(&attrs[..attrs.len() - 3]).is_err());
        for n in 0..datagram.len() {
            let _ = parse_messages(&datagram[..n], 3);
        }
    }
}
