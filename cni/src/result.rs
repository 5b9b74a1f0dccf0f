//! CNI results: what IPAM plugins return (any supported version), and what we print, in the
//! version the runtime asked for (0.1.0/0.2.0: `ip4`/`ip6`, no interfaces; 0.3.x/0.4.0 carry
//! `ips[].version`; 1.1.0 interfaces carry `mtu` and `pciID`).

use crate::spec::{CniError, CniVersion, ErrorCode};
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// `10.1.2.3/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = s.split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// The parts of an IPAM result we use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IpamResult {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

fn decode(msg: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::Ipam, format!("IPAM result: {msg}"))
}

/// An optional address field (`gateway`, `gw`).
fn opt_ip(v: &Value, key: &str, at: &str) -> Result<Option<IpAddr>, CniError> {
    match v.get(key).and_then(Value::as_str) {
        Some(g) => g
            .parse()
            .map(Some)
            .map_err(|_| decode(format!("{at}.{key} {g:?}"))),
        None => Ok(None),
    }
}

fn routes(v: &Value, at: &str, out: &mut Vec<Route>) -> Result<(), CniError> {
    for (i, r) in v
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let dst = r.get("dst").and_then(Value::as_str).unwrap_or_default();
        let dst = IpNet::parse(dst)
            .ok_or_else(|| decode(format!("{at}routes[{i}].dst {dst:?} is not CIDR")))?;
        let gw = opt_ip(r, "gw", &format!("{at}routes[{i}]"))?;
        out.push(Route { dst, gw });
    }
    Ok(())
}

impl IpamResult {
    /// Parses an IPAM plugin's stdout (0.1.0 to 1.1.0 shapes).
    pub fn parse(v: &Value) -> Result<IpamResult, CniError> {
        let mut out = IpamResult::default();
        // 0.1.0/0.2.0: one address per family, each with its routes.
        for family in ["ip4", "ip6"] {
            let Some(f) = v.get(family).filter(|f| f.is_object()) else {
                continue;
            };
            let ip = f.get("ip").and_then(Value::as_str).unwrap_or_default();
            let address = IpNet::parse(ip)
                .ok_or_else(|| decode(format!("{family}.ip {ip:?} is not CIDR")))?;
            let gateway = opt_ip(f, "gateway", family)?;
            out.ips.push(IpConfig { address, gateway });
            routes(f, &format!("{family}."), &mut out.routes)?;
        }
        for (i, ip) in v
            .get("ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let address = IpNet::parse(addr)
                .ok_or_else(|| decode(format!("ips[{i}].address {addr:?} is not CIDR")))?;
            let gateway = opt_ip(ip, "gateway", &format!("ips[{i}]"))?;
            out.ips.push(IpConfig { address, gateway });
        }
        routes(v, "", &mut out.routes)?;
        out.dns = v
            .get("dns")
            .cloned()
            .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()));
        Ok(out)
    }
}

/// The interface we created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
    pub pci_id: Option<String>,
}

fn route_json(r: &Route) -> Value {
    match r.gw {
        Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
        None => json!({"dst": r.dst.to_string()}),
    }
}

/// The 0.1.0/0.2.0 result: the first address of each family with that family's routes; these
/// versions have no interfaces list.
fn render_legacy(version: CniVersion, ipam: &IpamResult) -> Value {
    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(version.as_str()));
    for (family, v4) in [("ip4", true), ("ip6", false)] {
        let Some(ip) = ipam.ips.iter().find(|ip| ip.address.addr.is_ipv4() == v4) else {
            continue;
        };
        let mut f = Map::new();
        f.insert("ip".into(), json!(ip.address.to_string()));
        if let Some(g) = ip.gateway {
            f.insert("gateway".into(), json!(g.to_string()));
        }
        let routes: Vec<Value> = ipam
            .routes
            .iter()
            .filter(|r| r.dst.addr.is_ipv4() == v4)
            .map(route_json)
            .collect();
        if !routes.is_empty() {
            f.insert("routes".into(), json!(routes));
        }
        out.insert(family.into(), Value::Object(f));
    }
    out.insert("dns".into(), ipam.dns.clone().unwrap_or_else(|| json!({})));
    Value::Object(out)
}

/// Builds the result JSON for `version`.
pub fn render(version: CniVersion, iface: &Interface, ipam: &IpamResult) -> Value {
    if version < CniVersion::V030 {
        return render_legacy(version, ipam);
    }
    let mut i = Map::new();
    i.insert("name".into(), json!(iface.name));
    if let Some(mac) = &iface.mac {
        i.insert("mac".into(), json!(mac));
    }
    if version >= CniVersion::V110 {
        if let Some(mtu) = iface.mtu {
            i.insert("mtu".into(), json!(mtu));
        }
    }
    if let Some(sandbox) = &iface.sandbox {
        i.insert("sandbox".into(), json!(sandbox));
    }
    if version >= CniVersion::V110 {
        if let Some(pci) = &iface.pci_id {
            i.insert("pciID".into(), json!(pci));
        }
    }
    let ips: Vec<Value> = ipam
        .ips
        .iter()
        .map(|ip| {
            let mut o = Map::new();
            if version < CniVersion::V100 {
                o.insert(
                    "version".into(),
                    json!(if ip.address.addr.is_ipv4() { "4" } else { "6" }),
                );
            }
            o.insert("interface".into(), json!(0));
            o.insert("address".into(), json!(ip.address.to_string()));
            if let Some(g) = ip.gateway {
                o.insert("gateway".into(), json!(g.to_string()));
            }
            Value::Object(o)
        })
        .collect();
    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(version.as_str()));
    out.insert("interfaces".into(), json!([Value::Object(i)]));
    if !ips.is_empty() {
        out.insert("ips".into(), json!(ips));
    }
    if !ipam.routes.is_empty() {
        let routes: Vec<Value> = ipam.routes.iter().map(route_json).collect();
        out.insert("routes".into(), json!(routes));
    }
    out.insert("dns".into(), ipam.dns.clone().unwrap_or_else(|| json!({})));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_old_and_new_ipam_results() {
        let old = json!({"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1"}],
                         "routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
        let r = IpamResult::parse(&old).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.dns, None);
        let new = json!({"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64"}],"dns":{"nameservers":["10.0.0.1"]}});
        let r = IpamResult::parse(&new).unwrap();
        assert!(r.ips[0].address.addr.is_ipv6());
        assert!(r.dns.is_some());
        // 0.1.0/0.2.0 shape, both families, routes per family.
        let legacy = json!({"cniVersion":"0.2.0",
            "ip4":{"ip":"10.1.0.5/24","gateway":"10.1.0.1","routes":[{"dst":"0.0.0.0/0"}]},
            "ip6":{"ip":"fd00::5/64","routes":[{"dst":"::/0","gw":"fd00::1"}]}});
        let r = IpamResult::parse(&legacy).unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.1.0.1");
        let v = render(CniVersion::V010, &Interface::default(), &r);
        assert_eq!(v["ip6"]["routes"][0]["gw"], "fd00::1");
        assert_eq!(v["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        let e = IpamResult::parse(&json!({"ips":[{"address":"10.0.0.1"}]})).unwrap_err();
        assert!(e.msg.contains("ips[0].address"), "{}", e.msg);
    }

    #[test]
    fn renders_each_version() {
        let iface = Interface {
            name: "net1".into(),
            mac: Some("02:00:00:00:00:01".into()),
            sandbox: Some("/run/netns/x".into()),
            mtu: Some(1500),
            pci_id: Some("0000:3b:02.0".into()),
        };
        let ipam =
            IpamResult::parse(&json!({"ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"}]}))
                .unwrap();
        let v = render(CniVersion::V031, &iface, &ipam);
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["interfaces"][0].get("pciID").is_none());
        let v = render(CniVersion::V100, &iface, &ipam);
        assert!(v["ips"][0].get("version").is_none());
        let v = render(CniVersion::V020, &iface, &ipam);
        assert_eq!(
            v,
            json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1"}, "dns": {}})
        );
        let v = render(CniVersion::V110, &iface, &ipam);
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        assert_eq!(v["interfaces"][0]["pciID"], "0000:3b:02.0");
        assert_eq!(v["cniVersion"], "1.1.0");
    }
}
