//! A plugin's result (spec section 5, 1.0.0 and 0.4.0) turned into the pod's
//! [`Attachment`]. The reply is untrusted: sizes, names, addresses and counts are checked.

use std::net::IpAddr;

use ark_pod_spec::net::{
    is_interface_name, validate_interface, Attachment, Cidr, Dns, Interface, Mac, Route,
};
use ark_pod_spec::pod_net::is_resolv_word;
use serde::Deserialize;
use serde_json::Value;

const MAX_INTERFACES: usize = 64;
const MAX_IPS: usize = 64;
const MAX_ROUTES: usize = 256;
const MAX_DNS: usize = 16;

#[derive(Debug, Deserialize)]
struct CniResult {
    #[serde(rename = "cniVersion", default)]
    _cni_version: Option<String>,
    #[serde(default)]
    interfaces: Vec<CniInterface>,
    #[serde(default)]
    ips: Vec<CniIp>,
    #[serde(default)]
    routes: Vec<CniRoute>,
    #[serde(default)]
    dns: CniDns,
}

#[derive(Debug, Deserialize)]
struct CniInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CniIp {
    address: String,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct CniRoute {
    dst: String,
    #[serde(default)]
    gw: Option<IpAddr>,
}

#[derive(Debug, Default, Deserialize)]
struct CniDns {
    #[serde(default)]
    nameservers: Vec<IpAddr>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    search: Vec<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// Checks a reply is a result object (for chaining it on as `prevResult`).
pub fn check_object(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    parse(&v, None).map(|_| v)
}

/// What the chain attached as `ifname` in the pod's namespace, from the final result.
pub fn attachment(network: &str, ifname: &str, result: &Value) -> Result<Attachment, String> {
    parse(result, Some(ifname))?
        .ok_or_else(|| format!("no interface {ifname} in the pod"))
        .map(|(interface, routes, dns)| Attachment {
            network: network.into(),
            interface,
            routes,
            dns,
        })
}

type Parsed = (Interface, Vec<Route>, Dns);

fn parse(v: &Value, ifname: Option<&str>) -> Result<Option<Parsed>, String> {
    let r: CniResult = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    if r.interfaces.len() > MAX_INTERFACES || r.ips.len() > MAX_IPS || r.routes.len() > MAX_ROUTES {
        return Err("too many interfaces, addresses or routes".into());
    }
    for i in &r.interfaces {
        if !is_interface_name(&i.name) {
            return Err(format!("bad interface name {:?}", i.name));
        }
    }
    let addrs = r
        .ips
        .iter()
        .map(|ip| {
            if ip.interface.is_some_and(|i| i >= r.interfaces.len()) {
                return Err(format!("address {:?}: no such interface", ip.address));
            }
            let c: Cidr = ip.address.parse()?;
            if ip.gateway.is_some_and(|g| g.is_ipv4() != c.addr.is_ipv4()) {
                return Err(format!("address {}: gateway of the other family", c));
            }
            Ok((ip.interface, c, ip.gateway))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let routes = r
        .routes
        .iter()
        .map(|rt| {
            let dst: Cidr = rt.dst.parse()?;
            if rt.gw.is_some_and(|g| g.is_ipv4() != dst.addr.is_ipv4()) {
                return Err(format!("route {dst}: gateway of the other family"));
            }
            Ok(Route {
                dst,
                gateway: rt.gw,
                dev: None,
            })
        })
        .collect::<Result<Vec<Route>, String>>()?;
    let d = &r.dns;
    if d.nameservers.len() > MAX_DNS || d.search.len() > MAX_DNS || d.options.len() > MAX_DNS {
        return Err("too many DNS entries".into());
    }
    for w in d.search.iter().chain(&d.options).chain(&d.domain) {
        if !is_resolv_word(w) {
            return Err(format!("bad DNS word {w:?}"));
        }
    }
    let dns = Dns {
        nameservers: d.nameservers.clone(),
        domain: d.domain.clone(),
        search: d.search.clone(),
        options: d.options.clone(),
    };
    let Some(ifname) = ifname else {
        return Ok(None);
    };
    // The pod's interface: ours by name, inside a sandbox (the host end has none).
    let Some((idx, i)) = r
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    else {
        return Ok(None);
    };
    let mac: Mac = i
        .mac
        .as_deref()
        .ok_or_else(|| format!("interface {ifname}: no MAC"))?
        .parse()?;
    let only = r.interfaces.len() <= 1;
    let ours: Vec<_> = addrs
        .iter()
        .filter(|(at, _, _)| *at == Some(idx) || (at.is_none() && only))
        .collect();
    let interface = Interface {
        name: i.name.clone(),
        mac,
        mtu: i.mtu,
        addresses: ours.iter().map(|(_, c, _)| *c).collect(),
    };
    validate_interface(&interface)?;
    // A route without `gw` goes through the interface's gateway of its family, as the plugins
    // configure it (CNI's ipam.ConfigureIface): the result must say so, or a guest that
    // replays the routes (kvm) makes `0.0.0.0/0` or `::/0` on-link and reaches nothing past
    // its subnet.
    let gateway_of = |v4: bool| {
        ours.iter()
            .filter_map(|(_, _, g)| *g)
            .find(|g| g.is_ipv4() == v4)
    };
    let routes = routes
        .into_iter()
        .map(|rt| Route {
            gateway: rt.gateway.or_else(|| gateway_of(rt.dst.addr.is_ipv4())),
            ..rt
        })
        .collect();
    Ok(Some((interface, routes, dns)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptp_result() -> Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:05", "sandbox": "/x/net/netns"}
            ],
            "ips": [{"address": "172.16.28.5/24", "gateway": "172.16.28.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "172.16.28.1"}],
            "dns": {"nameservers": ["10.0.0.53"], "search": ["example.org"]}
        })
    }

    #[test]
    fn a_ptp_result_becomes_the_attachment() {
        let a = attachment("default", "eth0", &ptp_result()).unwrap();
        assert_eq!(a.interface.name, "eth0");
        assert_eq!(a.interface.mac.to_string(), "02:00:00:00:00:05");
        assert_eq!(a.interface.addresses[0].to_string(), "172.16.28.5/24");
        assert_eq!(a.routes[0].gateway, Some("172.16.28.1".parse().unwrap()));
        assert_eq!(a.dns.search, ["example.org"]);
        // 0.4.0's "version" field is accepted.
        let mut v = ptp_result();
        v["ips"][0]["version"] = "4".into();
        assert!(attachment("default", "eth0", &v).is_ok());
    }

    /// host-local's routes carry no `gw` (its `routes` config rarely names one): each takes
    /// the pod interface's gateway of its family, per family in a dual-stack result; a family
    /// without a gateway keeps an on-link route.
    #[test]
    fn gatewayless_routes_take_the_gateway_of_their_family() {
        let v = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "br0", "mac": "aa:bb:cc:dd:ee:00"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "02:00:00:00:00:05", "sandbox": "/x/net/netns"}
            ],
            "ips": [
                {"address": "10.231.22.5/24", "gateway": "10.231.22.1", "interface": 2},
                {"address": "fd00:a7c:22::5/64", "gateway": "fd00:a7c:22::1", "interface": 2},
                {"address": "10.9.9.9/24", "gateway": "10.9.9.1", "interface": 0}
            ],
            "routes": [
                {"dst": "0.0.0.0/0"},
                {"dst": "::/0"},
                {"dst": "192.168.5.0/24", "gw": "10.231.22.7"}
            ]
        });
        let a = attachment("b", "eth0", &v).unwrap();
        let gw = |i: usize| a.routes[i].gateway.map(|g| g.to_string());
        assert_eq!(gw(0).as_deref(), Some("10.231.22.1"));
        assert_eq!(gw(1).as_deref(), Some("fd00:a7c:22::1"));
        assert_eq!(gw(2).as_deref(), Some("10.231.22.7"));
        assert_eq!(
            a.interface
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.231.22.5/24", "fd00:a7c:22::5/64"]
        );
        // IPv4 only with a gateway: the IPv6 route stays on-link.
        let mut v4 = v.clone();
        v4["ips"].as_array_mut().unwrap().remove(1);
        let a = attachment("b", "eth0", &v4).unwrap();
        assert_eq!(a.routes[1].gateway, None);
    }

    #[test]
    fn hostile_results_are_refused() {
        type Case = (fn(&mut Value), &'static str);
        let cases: Vec<Case> = vec![
            (
                |v| v["interfaces"][1]["name"] = "../../etc".into(),
                "bad interface name",
            ),
            (|v| v["interfaces"][1]["mac"] = "zz".into(), "not a MAC"),
            (|v| v["ips"][0]["address"] = "1.2.3.4/40".into(), "prefix"),
            (|v| v["ips"][0]["interface"] = 7.into(), "no such interface"),
            (
                |v| v["ips"][0]["gateway"] = "fe80::1".into(),
                "other family",
            ),
            (
                |v| v["routes"][0]["dst"] = "nope".into(),
                "not ADDRESS/PREFIX",
            ),
            (
                |v| v["dns"]["search"][0] = "a b\nnameserver 6.6.6.6".into(),
                "bad DNS word",
            ),
            (|v| v["interfaces"][1]["mtu"] = 10.into(), "MTU"),
            (
                |v| v["interfaces"][1]["sandbox"] = "".into(),
                "no interface eth0",
            ),
            (
                |v| v["routes"] = Value::Array(vec![serde_json::json!({"dst": "0.0.0.0/0"}); 300]),
                "too many",
            ),
        ];
        for (f, needle) in cases {
            let mut v = ptp_result();
            f(&mut v);
            let e = attachment("default", "eth0", &v).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        assert!(check_object(b"[1]").is_err());
        assert!(check_object(b"{\"ips\":[{\"address\":\"x\"}]}").is_err());
    }
}
