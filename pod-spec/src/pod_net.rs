//! The pod manifest's networking fields: which networks (`net`), port forwards (`ports`), DNS
//! (`dns`) and `/etc/hosts` entries (`hosts_entries`, `hosts_from_host`). What the set-up made of
//! them at run time is [`crate::net::PodNetworkState`].

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Networking: `none` = a network namespace of its own with only `lo` (up); `host` = the host's
/// (ns and fly; a kvm guest gets no NIC); `{"networks": [...]}` = a network namespace of its
/// own, attached to each named CNI network in order (`eth0`, `eth1`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    None,
    #[default]
    Host,
    Networks(Vec<NetworkRef>),
}

impl NetMode {
    /// The CNI networks, empty for `none` and `host`.
    pub fn networks(&self) -> &[NetworkRef] {
        match self {
            NetMode::Networks(n) => n,
            _ => &[],
        }
    }
    /// Whether the pod gets a network namespace of its own.
    pub fn is_host(&self) -> bool {
        *self == NetMode::Host
    }
}

/// The built-in network used when no config file is named `default`.
pub const DEFAULT_NETWORK: &str = "default";

/// One CNI network the pod joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    /// The network's `name` (CNI: `[A-Za-z0-9][A-Za-z0-9_.-]*`), the config file that has it.
    pub name: String,
    /// `CNI_ARGS` for this network's plugins: `KEY=VALUE;KEY=VALUE` (rkt's `NAME:ARGS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("protocol {s:?} is not tcp or udp")),
        }
    }
}

/// A host port forwarded into the pod (CNI `portmap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// The image's name for the port (`--port=NAME:...`), for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Absent: every host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub pod_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Where the apps' `/etc/resolv.conf` comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsSource {
    /// `servers` if any, else what the CNI networks returned, else (host networking) the host's.
    #[default]
    Auto,
    /// The host's `/etc/resolv.conf` as it is.
    Host,
    /// Leave the image's file alone.
    None,
}

/// `dns` in the manifest (`--dns`, `--dns-search`, `--dns-opt`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodDns {
    #[serde(default, skip_serializing_if = "is_auto")]
    pub source: DnsSource,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

fn is_auto(s: &DnsSource) -> bool {
    *s == DnsSource::Auto
}

impl PodDns {
    pub fn is_empty(&self) -> bool {
        *self == PodDns::default()
    }
}

/// An `/etc/hosts` line every app gets (`--hosts-entry=HOST=IP`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsEntry {
    pub host: String,
    pub ip: IpAddr,
}

/// CNI's network name rule (libcni): `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, here at most 64 bytes.
pub fn is_network_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && s.len() <= 64
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A `resolv.conf` word (search domain, option): printable, no whitespace, at most 255 bytes.
pub fn is_resolv_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks the networking fields; `Err((field, reason))`.
pub(crate) fn validate(
    net: &NetMode,
    ports: &[PortForward],
    dns: &PodDns,
    hosts: &[HostsEntry],
    is_hostname: impl Fn(&str) -> bool,
) -> Result<(), (String, String)> {
    let e = |f: String, r: String| Err((f, r));
    let mut names = HashSet::new();
    if let NetMode::Networks(list) = net {
        if list.is_empty() {
            return e("net.networks".into(), "no network named".into());
        }
        for (i, n) in list.iter().enumerate() {
            if !is_network_name(&n.name) {
                return e(
                    format!("net.networks[{i}].name"),
                    format!(
                        "{:?} is not a network name ([A-Za-z0-9][A-Za-z0-9_.-]*)",
                        n.name
                    ),
                );
            }
            if !names.insert(n.name.as_str()) {
                return e(
                    format!("net.networks[{i}].name"),
                    format!("network {:?} named twice", n.name),
                );
            }
            if let Some(a) = &n.args {
                if a.len() > 4096 || a.bytes().any(|b| b.is_ascii_control()) {
                    return e(
                        format!("net.networks[{i}].args"),
                        "control characters or longer than 4096 bytes".into(),
                    );
                }
            }
        }
        if list.len() > 16 {
            return e("net.networks".into(), "more than 16 networks".into());
        }
    }
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("ports[{i}]");
        if !matches!(net, NetMode::Networks(_)) {
            return e(
                f,
                "port forwards need a CNI network (not none or host)".into(),
            );
        }
        if p.host_port == 0 || p.pod_port == 0 {
            return e(f, "port 0".into());
        }
        if !seen.insert((p.host_ip, p.host_port, p.protocol)) {
            return e(
                f,
                format!(
                    "host port {}/{} forwarded twice",
                    p.host_port,
                    p.protocol.as_str()
                ),
            );
        }
        if let Some(n) = &p.name {
            if !is_resolv_word(n) || n.len() > 64 {
                return e(format!("{f}.name"), format!("bad port name {n:?}"));
            }
        }
    }
    if dns.source != DnsSource::Auto && !dns.servers.is_empty() {
        return e(
            "dns".into(),
            "servers given together with \"host\" or \"none\"".into(),
        );
    }
    for s in &dns.search {
        if !is_hostname(s.trim_end_matches('.')) {
            return e("dns.search".into(), format!("{s:?} is not a domain"));
        }
    }
    for o in &dns.options {
        if !is_resolv_word(o) {
            return e("dns.options".into(), format!("bad option {o:?}"));
        }
    }
    if dns.servers.len() > 16 || dns.search.len() > 16 || dns.options.len() > 32 {
        return e("dns".into(), "too many entries".into());
    }
    for h in hosts {
        if !is_hostname(&h.host) {
            return e(
                "hosts_entries".into(),
                format!("{:?} is not a hostname", h.host),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_mode_wire_form() {
        for (m, j) in [
            (NetMode::None, r#""none""#),
            (NetMode::Host, r#""host""#),
            (
                NetMode::Networks(vec![NetworkRef {
                    name: "default".into(),
                    args: None,
                }]),
                r#"{"networks":[{"name":"default"}]}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&m).unwrap(), j);
            assert_eq!(serde_json::from_str::<NetMode>(j).unwrap(), m);
        }
    }

    #[test]
    fn network_names() {
        for ok in ["default", "a", "my-net_1.2"] {
            assert!(is_network_name(ok), "{ok}");
        }
        for bad in ["", "-a", "../x", "a/b", "a b", ".", &"a".repeat(65)] {
            assert!(!is_network_name(bad), "{bad}");
        }
    }
}
