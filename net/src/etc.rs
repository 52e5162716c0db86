//! The pod's DNS and hosts files, as every flavor's stage2 writes them into each app's `/etc`:
//! from the manifest (`--dns`, `--hosts-entry`) and what the networks returned.

use ark_pod_spec::net::PodNetworkState;
use ark_pod_spec::{DnsSource, EtcFiles, NetMode, PodManifest};

/// The host files read for `host` (capped: they end up in every app).
const HOST_FILE_MAX_BYTES: u64 = 64 << 10;

fn read_host_file(path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(HOST_FILE_MAX_BYTES)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// What guest-init writes: `resolv.conf` from `--dns` servers, else the networks' DNS, else
/// (host networking, or `--dns=host`) the host's file; `none` leaves the image's. `/etc/hosts`
/// gets the `--hosts-entry` lines, on the host's file with `--hosts-entry=host`.
pub fn etc_files(m: &PodManifest, state: Option<&PodNetworkState>) -> EtcFiles {
    EtcFiles {
        resolv_conf: resolv_conf(m, state, read_host_file),
        hosts_base: m
            .hosts_from_host
            .then(|| read_host_file("/etc/hosts"))
            .flatten(),
        hosts_entries: m.hosts_entries.clone(),
    }
}

fn resolv_conf(
    m: &PodManifest,
    state: Option<&PodNetworkState>,
    host_file: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let d = &m.dns;
    match d.source {
        DnsSource::None => return None,
        DnsSource::Host => return host_file("/etc/resolv.conf"),
        DnsSource::Auto => {}
    }
    let net_dns = state
        .into_iter()
        .flat_map(|s| &s.attachments)
        .map(|a| &a.dns);
    let mut servers = d.servers.clone();
    let mut search = d.search.clone();
    let mut options = d.options.clone();
    if servers.is_empty() {
        for n in net_dns {
            servers.extend(&n.nameservers);
            if d.search.is_empty() {
                search.extend(n.domain.iter().cloned());
                search.extend(n.search.iter().cloned());
            }
            if d.options.is_empty() {
                options.extend(n.options.iter().cloned());
            }
        }
    }
    if servers.is_empty() {
        // Nothing from the request or the networks: the host's resolver, as podman does —
        // without loopback servers when the pod has its own network (they are not the host's
        // there).
        let own_net = m.net != NetMode::Host;
        let host = host_file("/etc/resolv.conf")?;
        let usable = |l: &&str| {
            let mut w = l.split_whitespace();
            !(own_net
                && w.next() == Some("nameserver")
                && w.next()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|a| a.is_loopback()))
        };
        if search.is_empty() && options.is_empty() {
            let kept: Vec<&str> = host.lines().filter(usable).collect();
            return Some(kept.iter().map(|l| format!("{l}\n")).collect());
        }
        servers = host
            .lines()
            .filter(usable)
            .filter_map(|l| l.strip_prefix("nameserver"))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
    }
    let mut out = String::new();
    for s in servers.iter().take(16) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_pod_spec::net::{Attachment, Dns, Interface, Mac};
    use ark_pod_spec::NetworkRef;

    fn manifest(net: NetMode) -> PodManifest {
        let mut m = PodManifest::from_json(
            br#"{"version":1,"uuid":"ab12","stage1":{"flavor":"ns"},
                 "apps":[{"name":"web","image":{"id":"sha256:x"},"exec":["true"]}]}"#,
        )
        .unwrap();
        m.net = net;
        m
    }

    fn state(dns: Dns) -> PodNetworkState {
        PodNetworkState {
            netns: "/p/net/netns".into(),
            attachments: vec![Attachment {
                network: "n".into(),
                interface: Interface {
                    name: "eth0".into(),
                    mac: Mac([2, 0, 0, 0, 0, 1]),
                    mtu: None,
                    addresses: vec![],
                },
                routes: vec![],
                dns,
            }],
        }
    }

    fn host(_: &str) -> Option<String> {
        Some("nameserver 192.0.2.1\n".into())
    }

    #[test]
    fn dns_precedence() {
        let cni = NetMode::Networks(vec![NetworkRef {
            name: "n".into(),
            args: None,
        }]);
        let net = state(Dns {
            nameservers: vec!["10.0.0.53".parse().unwrap()],
            search: vec!["corp".into()],
            ..Dns::default()
        });
        // The network's.
        let m = manifest(cni.clone());
        assert_eq!(
            resolv_conf(&m, Some(&net), host).unwrap(),
            "nameserver 10.0.0.53\nsearch corp\n"
        );
        // --dns wins; --dns-search replaces the network's search.
        let mut m = manifest(cni.clone());
        m.dns.servers = vec!["1.1.1.1".parse().unwrap()];
        m.dns.search = vec!["a.example".into()];
        m.dns.options = vec!["ndots:2".into()];
        assert_eq!(
            resolv_conf(&m, Some(&net), host).unwrap(),
            "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2\n"
        );
        // No DNS from anywhere: the host's, without loopback servers on a network of its own.
        let local = |_: &str| Some("nameserver 127.0.0.53\nnameserver 192.0.2.1\n".to_string());
        assert_eq!(
            resolv_conf(&manifest(NetMode::Host), None, local).unwrap(),
            "nameserver 127.0.0.53\nnameserver 192.0.2.1\n"
        );
        assert_eq!(
            resolv_conf(&manifest(cni.clone()), Some(&state(Dns::default())), local).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        let mut m = manifest(cni);
        m.dns.source = DnsSource::Host;
        assert_eq!(
            resolv_conf(&m, Some(&net), host).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        m.dns.source = DnsSource::None;
        assert_eq!(resolv_conf(&m, Some(&net), host), None);
    }
}
