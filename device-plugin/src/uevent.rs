//! Kernel uevents (`NETLINK_KOBJECT_UEVENT`): how the daemon learns, on real hardware, of changes
//! the kernel makes in sysfs by itself: VFs created or removed after a `sriov_numvfs` write,
//! drivers bound or unbound. Sysfs files announce none of these through inotify.
//!
//! Only PCI and net events matter; everything else (block, usb, ...) is ignored. The kernel
//! sends uevents to the initial network namespace, where a hostNetwork daemon runs.

use netlink_sys::{protocols::NETLINK_KOBJECT_UEVENT, Socket, SocketAddr};

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;

/// One uevent's action and subsystem, e.g. `("bind", "pci")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub subsystem: String,
    pub devpath: String,
}

/// Parses a kernel uevent datagram: `ACTION@DEVPATH\0KEY=VALUE\0...`. udev's re-broadcasts
/// (`libudev` magic) go to another group and are not parsed.
pub fn parse(datagram: &[u8]) -> Option<Uevent> {
    let mut parts = datagram.split(|b| *b == 0).filter(|p| !p.is_empty());
    let header = std::str::from_utf8(parts.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    let subsystem = parts
        .filter_map(|p| std::str::from_utf8(p).ok())
        .find_map(|kv| kv.strip_prefix("SUBSYSTEM="))?
        .to_string();
    Some(Uevent {
        action: action.to_string(),
        subsystem,
        devpath: devpath.to_string(),
    })
}

/// Whether a uevent may change what discovery finds.
pub fn is_relevant(e: &Uevent) -> bool {
    matches!(e.subsystem.as_str(), "pci" | "net")
        && matches!(
            e.action.as_str(),
            "add" | "remove" | "bind" | "unbind" | "move" | "change"
        )
}

/// Listens on a thread of its own and calls `on_event` for every relevant uevent, until it
/// returns false (noticed at the next uevent). If the socket fails or the thread panics,
/// `on_end` says why.
pub fn spawn(
    mut on_event: impl FnMut(Uevent) -> bool + Send + 'static,
    on_end: impl FnOnce(String) + Send + 'static,
) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_KOBJECT_UEVENT)?;
    socket.bind(&SocketAddr::new(0, KERNEL_GROUP))?;
    std::thread::Builder::new()
        .name("uevent".into())
        .spawn(move || {
            let listen = std::panic::AssertUnwindSafe(|| -> Result<(), String> {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let mut slice = &mut buf[..];
                    let n = match socket.recv(&mut slice, 0) {
                        Ok(n) => n.min(buf.len()),
                        // Overflow: events were lost; the resync tick covers them.
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(format!("uevent socket: {e}")),
                    };
                    if let Some(e) = parse(&buf[..n]).filter(is_relevant) {
                        if !on_event(e) {
                            return Ok(());
                        }
                    }
                }
            });
            match std::panic::catch_unwind(listen) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => on_end(why),
                Err(panic) => on_end(format!(
                    "the uevent listener panicked: {}",
                    crate::supervise::panic_message(&*panic)
                )),
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_uevents() {
        let msg = b"bind@/devices/pci0000:00/0000:3b:02.0\0ACTION=bind\0DEVPATH=/devices/pci0000:00/0000:3b:02.0\0SUBSYSTEM=pci\0DRIVER=iavf\0SEQNUM=4242\0";
        let e = parse(msg).unwrap();
        assert_eq!(e.action, "bind");
        assert_eq!(e.subsystem, "pci");
        assert!(is_relevant(&e));
        let usb = parse(b"add@/devices/usb1\0ACTION=add\0SUBSYSTEM=usb\0").unwrap();
        assert!(!is_relevant(&usb));
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b""), None);
    }
}
