//! Pod networking as the stages agree on it: what the network set-up (CNI, run by the stage1)
//! attached to the pod ([`PodNetworkState`], saved in the pod directory so that whoever tears
//! the network down — the stage1 on exit, or stage0's `stop`/`rm`/`gc` after a `kill -9` — finds
//! it), and what guest-init configures inside a VM ([`GuestNetwork`], in the stage2 config).
//!
//! Every value here may come from a CNI plugin's reply or from a pod directory a hostile pod could
//! have written; parse with [`PodNetworkState::from_json`], which caps the size and validates.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest `net/state.json` accepted (a few dozen attachments fit in far less).
pub const NETWORK_STATE_MAX_BYTES: usize = 256 * 1024;

/// An address with its prefix length, `10.1.2.3/24` or `fd00::5/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: not ADDRESS/PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{s:?}: bad prefix"))?;
        Cidr::new(addr, prefix).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A MAC address, `02:42:ac:10:1c:05` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(|| format!("{s:?}: not a MAC"))?;
            if p.len() != 2 {
                return Err(format!("{s:?}: not a MAC"));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?}: not a MAC"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?}: not a MAC"));
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One network interface of the pod, as its apps see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// `eth0`, `eth1`, ... (a Linux interface name: 1-15 bytes, no `/`, whitespace or `:`).
    pub name: String,
    pub mac: Mac,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
}

/// A route in the pod's network namespace (or the guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub dst: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The interface the route goes out of; absent: the kernel picks by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// DNS settings a network's set-up returned (CNI `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One network attached to the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// The network's name (`default`, or the CNI config's `name`).
    pub network: String,
    /// The interface inside the pod's network namespace, with what the network gave it.
    pub interface: Interface,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "is_default_dns")]
    pub dns: Dns,
}

fn is_default_dns(d: &Dns) -> bool {
    *d == Dns::default()
}

/// What the network set-up made for one pod: `<pod dir>/net/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetworkState {
    /// The pod's network namespace, a bind-mounted nsfs file (`<pod dir>/net/netns`).
    pub netns: String,
    pub attachments: Vec<Attachment>,
}

impl PodNetworkState {
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > NETWORK_STATE_MAX_BYTES {
            return Err(format!(
                "network state: {} bytes, more than the {NETWORK_STATE_MAX_BYTES} allowed",
                bytes.len()
            ));
        }
        let s: PodNetworkState =
            serde_json::from_slice(bytes).map_err(|e| format!("network state: {e}"))?;
        for a in &s.attachments {
            validate_interface(&a.interface).map_err(|e| format!("network state: {e}"))?;
        }
        Ok(s)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("network state serializes");
        v.push(b'\n');
        v
    }
}

/// Interfaces and routes guest-init configures in a VM before any app starts (kvm). guest-init
/// always brings `lo` up, with or without this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    /// Matched to the guest's NICs by MAC, then renamed to `name`.
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
}

/// A Linux interface name: 1-15 bytes, not `.`/`..`, no `/`, `:`, whitespace or control bytes.
pub fn is_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

pub fn validate_interface(i: &Interface) -> Result<(), String> {
    if !is_interface_name(&i.name) {
        return Err(format!("bad interface name {:?}", i.name));
    }
    if let Some(mtu) = i.mtu {
        if !(68..=65_535).contains(&mtu) {
            return Err(format!("interface {}: MTU {mtu} out of range", i.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_mac_round_trip() {
        for s in ["172.16.28.5/24", "0.0.0.0/0", "fd00::5/64"] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), s);
        }
        for bad in ["10.0.0.1", "10.0.0.1/33", "::/129", "x/1", "10.0.0.1/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let m: Mac = "02:42:AC:10:1c:05".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:10:1c:05");
        for bad in [
            "02:42:ac:10:1c",
            "02:42:ac:10:1c:05:01",
            "2:42:ac:10:1c:05",
            "zz:42:ac:10:1c:05",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn state_round_trips_and_is_validated() {
        let s = PodNetworkState {
            netns: "/var/lib/ark/pods/run/u/net/netns".into(),
            attachments: vec![Attachment {
                network: "default".into(),
                interface: Interface {
                    name: "eth0".into(),
                    mac: Mac([2, 0, 0, 0, 0, 1]),
                    mtu: Some(1500),
                    addresses: vec!["172.16.28.5/24".parse().unwrap()],
                },
                routes: vec![Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("172.16.28.1".parse().unwrap()),
                    dev: None,
                }],
                dns: Dns::default(),
            }],
        };
        assert_eq!(PodNetworkState::from_json(&s.to_json()).unwrap(), s);
        let mut bad = s.clone();
        bad.attachments[0].interface.name = "../../x".into();
        assert!(PodNetworkState::from_json(&bad.to_json()).is_err());
        let big = vec![b' '; NETWORK_STATE_MAX_BYTES + 1];
        assert!(PodNetworkState::from_json(&big)
            .unwrap_err()
            .contains("more than"));
    }
}
