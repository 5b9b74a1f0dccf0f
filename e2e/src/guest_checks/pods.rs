//! Scenario 4: two "pods" (network namespaces) each get a VF: moved in, renamed, MTU and MAC
//! set, brought up. They exchange traffic on the same VLAN and cannot across VLANs; then the
//! VFs go back with their original name, MAC and MTU.

use super::{ensure, igb_pfs, new_netns, pf_up};
use anyhow::{bail, Context, Result};
use sriov::netlink::{MacAddr, NetlinkSocket, Netns, VlanProto};
use sriov::sysfs::Sysfs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

struct Pod {
    netns: Netns,
    ip: Ipv4Addr,
    vf: u32,
    host_name: String,
    host_mac: MacAddr,
    host_mtu: u32,
}

/// Sends a datagram from `from` to `to` and waits for it; true when it arrived.
fn reachable(from: &Pod, to: &Pod) -> Result<bool> {
    let dst = SocketAddr::new(IpAddr::V4(to.ip), 7777);
    let receiver = to.netns.run_in(move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind(dst)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(s)
    })??;
    let src_ip = from.ip;
    from.netns.run_in(move || -> std::io::Result<()> {
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(src_ip), 0))?;
        // A few tries: the first may wait for ARP.
        for _ in 0..3 {
            s.send_to(b"sriov-rs", dst)?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })??;
    let mut buf = [0u8; 16];
    Ok(matches!(receiver.recv_from(&mut buf), Ok((8, _))))
}

pub fn run() -> Result<()> {
    let sysfs = Sysfs::new("/sys");
    let (node, pfs) = igb_pfs(&sysfs)?;
    let pf = &pfs[0];
    let mut host = NetlinkSocket::new()?;
    let pfi = pf_up(&mut host, pf)?;
    let mut pods = Vec::new();
    for (vf_index, ip) in [
        (1u32, Ipv4Addr::new(10, 99, 0, 1)),
        (2, Ipv4Addr::new(10, 99, 0, 2)),
    ] {
        let (_, vf) = node
            .vfs()
            .find(|(p, v)| p.pci == pf.pci && v.index == vf_index)
            .with_context(|| format!("no VF {vf_index} on {}", pf.pci))?;
        let name = vf.netdev.clone().context("VF without netdev")?;
        let link = host.link_by_name(&name)?;
        host.set_vf_vlan(pfi, vf_index, 10, 0, VlanProto::Dot1Q)?;
        let pod = Pod {
            netns: new_netns()?,
            ip,
            vf: vf_index,
            host_name: name.clone(),
            host_mac: link.mac.context("VF without MAC")?,
            host_mtu: link.mtu,
        };
        host.set_down(link.index)?;
        host.move_to_netns(link.index, &pod.netns)?;
        let mut nl = NetlinkSocket::new_in(&pod.netns)?;
        let l = nl.link_by_name(&name)?;
        nl.rename(l.index, "net1")?;
        nl.set_mtu(l.index, 1400)?;
        let mac = MacAddr([0x02, 0x99, 0, 0, 0, vf_index as u8]);
        nl.set_mac(l.index, mac)?;
        nl.set_up(l.index)?;
        nl.add_address(l.index, IpAddr::V4(ip), 24)?;
        let l = nl.link_by_name("net1")?;
        ensure(l.mtu == 1400 && l.mac == Some(mac) && l.up, || {
            format!("pod link {l:?}")
        })?;
        if let Ok(lo) = nl.link_by_name("lo") {
            nl.set_up(lo.index)?;
        }
        println!(
            "pod {}: {name} -> net1 {ip}/24 mac {mac} mtu 1400 vlan 10",
            vf_index
        );
        pods.push(pod);
    }
    // Carrier on the VFs may take a moment.
    std::thread::sleep(Duration::from_millis(500));
    ensure(reachable(&pods[0], &pods[1])?, || {
        "same VLAN: pod 1 cannot reach pod 2".into()
    })?;
    ensure(reachable(&pods[1], &pods[0])?, || {
        "same VLAN: pod 2 cannot reach pod 1".into()
    })?;
    println!("same VLAN 10: traffic flows both ways");
    host.set_vf_vlan(pfi, pods[1].vf, 20, 0, VlanProto::Dot1Q)?;
    if reachable(&pods[0], &pods[1])? {
        bail!("different VLANs (10, 20): traffic still flows");
    }
    println!("VLANs 10 and 20: no traffic");

    // Give the VFs back as they were.
    let root = Netns::current()?;
    for pod in &pods {
        let mut nl = NetlinkSocket::new_in(&pod.netns)?;
        let l = nl.link_by_name("net1")?;
        nl.set_down(l.index)?;
        nl.rename(l.index, &pod.host_name)?;
        nl.set_mac(l.index, pod.host_mac)?;
        nl.set_mtu(l.index, pod.host_mtu)?;
        nl.move_to_netns(l.index, &root)?;
        host.set_vf_vlan(pfi, pod.vf, 0, 0, VlanProto::Dot1Q)?;
        let back = host.link_by_name(&pod.host_name)?;
        ensure(
            back.mac == Some(pod.host_mac) && back.mtu == pod.host_mtu,
            || format!("restored {back:?}"),
        )?;
        let info = host.pf_vf_info(pfi, pod.vf)?;
        ensure(info.vlan == 0, || {
            format!("VF {} VLAN {} after restore", pod.vf, info.vlan)
        })?;
    }
    println!("pods: VFs back with their name, MAC, MTU and no VLAN");
    Ok(())
}
