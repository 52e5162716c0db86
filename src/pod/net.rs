//! The pod's networking as stage0 takes it from the command line: `--net`, `--port`/`-p`,
//! `--dns*`, `--hosts-entry`, the CNI directories; checked at prepare (configs loaded, plugins
//! found) so a typo fails before a pod exists; and the stage0 side of teardown (`stop`, `rm`,
//! `gc` after the stage1 is gone).

use std::net::IpAddr;

use ark_pod_spec::{
    DnsSource, Flavor, HostsEntry, NetMode, NetworkRef, PodDns, PodLayout, PortForward, Protocol,
    DEFAULT_NETWORK,
};

use super::plan::ImageInfo;

/// A port forward as asked for: by the image's name for the port, or podman's explicit form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRequest {
    /// `--port=NAME:[HOSTIP:]HOSTPORT`.
    Named {
        name: String,
        host_ip: Option<IpAddr>,
        host_port: u16,
    },
    /// `-p [HOSTIP:]HOSTPORT:PODPORT[/PROTO]`.
    Explicit(PortForward),
}

/// The pod's networking options besides the mode (`PrepareRequest::net`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetOptions {
    pub ports: Vec<PortRequest>,
    pub dns: PodDns,
    pub hosts_entries: Vec<HostsEntry>,
    pub hosts_from_host: bool,
    /// `--net-config-dir` (absent: `/etc/ark/net.d`).
    pub config_dir: Option<String>,
    /// `--cni-plugin-dir`, repeatable (absent: `/usr/lib/cni`, `/opt/cni/bin`).
    pub plugin_dirs: Vec<String>,
}

/// The default network of a flavor when `--net` is not given: `default` for ns and kvm (rkt's),
/// the host's for fly (it has no namespace of its own).
pub fn default_mode(flavor: Flavor) -> NetMode {
    match flavor {
        Flavor::Ns | Flavor::Kvm => NetMode::Networks(vec![NetworkRef {
            name: DEFAULT_NETWORK.into(),
            args: None,
        }]),
        Flavor::Fly => NetMode::Host,
    }
}

/// Parses `--net` values: `none`, `host`, or `NAME[:ARGS]` lists (`a,b:IP=10.1.0.5`), the
/// values of repeated flags joined.
pub fn parse_net(values: &[String]) -> Result<NetMode, String> {
    let mut nets = Vec::new();
    for v in values {
        for item in v.split(',') {
            let (name, args) = match item.split_once(':') {
                Some((n, a)) => (n, Some(a.to_string())),
                None => (item, None),
            };
            if item.is_empty() {
                return Err(format!("--net={v:?}: an empty network name"));
            }
            if (name == "none" || name == "host") && args.is_none() {
                if values.len() != 1 || v.contains(',') {
                    return Err(format!(
                        "--net={name} cannot be combined with other networks"
                    ));
                }
                return Ok(if name == "none" {
                    NetMode::None
                } else {
                    NetMode::Host
                });
            }
            if !ark_pod_spec::pod_net::is_network_name(name) {
                return Err(format!(
                    "--net: {name:?} is not a network name ([A-Za-z0-9][A-Za-z0-9_.-]*)"
                ));
            }
            if nets.iter().any(|n: &NetworkRef| n.name == name) {
                return Err(format!("--net: network {name:?} named twice"));
            }
            nets.push(NetworkRef {
                name: name.into(),
                args,
            });
        }
    }
    if nets.is_empty() {
        return Err("--net: no network named".into());
    }
    Ok(NetMode::Networks(nets))
}

/// Checks the mode against the flavor.
pub fn check_mode(flavor: Flavor, mode: &NetMode, explicit: bool) -> Result<(), String> {
    match (flavor, mode) {
        (Flavor::Kvm, NetMode::Host) if explicit => Err(
            "--net=host: a kvm pod cannot share the host's network namespace (its apps run in a \
             VM with its own kernel); use default, none or a CNI network"
                .into(),
        ),
        (Flavor::Fly, NetMode::None | NetMode::Networks(_)) => {
            Err("--net: a fly pod shares the host's network namespace; only --net=host".into())
        }
        _ => Ok(()),
    }
}

fn parse_port(what: &str, s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{what}: {s:?} is not a port (1-65535)")),
    }
}

fn parse_host_ip(what: &str, s: &str) -> Result<IpAddr, String> {
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{what}: {s:?} is not an IP address"))
}

/// `--port=NAME:[HOSTIP:]HOSTPORT` (rkt).
pub fn parse_named_port(s: &str) -> Result<PortRequest, String> {
    let what = format!("--port={s:?}");
    let bad = || format!("{what}: want NAME:[HOSTIP:]HOSTPORT");
    let (name, rest) = s.split_once(':').ok_or_else(bad)?;
    if name.is_empty() || !ark_pod_spec::pod_net::is_resolv_word(name) || name.len() > 64 {
        return Err(bad());
    }
    let (host_ip, port) = match rest.rsplit_once(':') {
        Some((ip, p)) => (Some(parse_host_ip(&what, ip)?), p),
        None => (None, rest),
    };
    Ok(PortRequest::Named {
        name: name.into(),
        host_ip,
        host_port: parse_port(&what, port)?,
    })
}

/// `-p/--publish [HOSTIP:]HOSTPORT:PODPORT[/PROTO]` (podman).
pub fn parse_publish(s: &str) -> Result<PortRequest, String> {
    let what = format!("--publish={s:?}");
    let (spec, protocol) = match s.split_once('/') {
        Some((spec, p)) => (
            spec,
            p.parse::<Protocol>().map_err(|e| format!("{what}: {e}"))?,
        ),
        None => (s, Protocol::Tcp),
    };
    let (head, pod) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("{what}: want [HOSTIP:]HOSTPORT:PODPORT[/PROTO]"))?;
    let (host_ip, host) = match head.rsplit_once(':') {
        Some((ip, p)) => (Some(parse_host_ip(&what, ip)?), p),
        None => (None, head),
    };
    Ok(PortRequest::Explicit(PortForward {
        name: None,
        host_ip,
        host_port: parse_port(&what, host)?,
        pod_port: parse_port(&what, pod)?,
        protocol,
    }))
}

/// `--dns` values: IPs, or one of `host` / `none`.
pub fn parse_dns(
    servers: &[String],
    search: &[String],
    options: &[String],
) -> Result<PodDns, String> {
    let mut d = PodDns {
        search: search.to_vec(),
        options: options.to_vec(),
        ..PodDns::default()
    };
    for s in servers {
        match s.as_str() {
            "host" | "none" if servers.len() > 1 => {
                return Err(format!(
                    "--dns={s} cannot be combined with other --dns values"
                ));
            }
            "host" => d.source = DnsSource::Host,
            "none" => d.source = DnsSource::None,
            ip => d.servers.push(
                ip.parse()
                    .map_err(|_| format!("--dns={ip:?}: not an IP address, host or none"))?,
            ),
        }
    }
    Ok(d)
}

/// `--hosts-entry` values: `HOST=IP`, or `host` (start from the host's `/etc/hosts`).
pub fn parse_hosts_entries(values: &[String]) -> Result<(Vec<HostsEntry>, bool), String> {
    let mut entries = Vec::new();
    let mut from_host = false;
    for v in values {
        if v == "host" {
            from_host = true;
            continue;
        }
        let (host, ip) = v
            .split_once('=')
            .ok_or_else(|| format!("--hosts-entry={v:?}: want HOST=IP or host"))?;
        entries.push(HostsEntry {
            host: host.into(),
            ip: ip
                .parse()
                .map_err(|_| format!("--hosts-entry={v:?}: {ip:?} is not an IP address"))?,
        });
    }
    Ok((entries, from_host))
}

/// The image's ports by the names `--port` takes: an ACI's port names, and `PORT-PROTO`
/// (`80-tcp`) for each exposed `PORT/PROTO` (docker2aci's names).
fn named_ports(images: &[ImageInfo]) -> Vec<(String, u16, Protocol)> {
    let parse = |spec: &str| -> Option<(u16, Protocol)> {
        let (p, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        Some((p.parse().ok()?, proto.parse().ok()?))
    };
    let mut out = Vec::new();
    for i in images {
        for (name, spec) in &i.port_names {
            if let Some((p, proto)) = parse(spec) {
                out.push((name.clone(), p, proto));
            }
        }
        for spec in &i.exposed_ports {
            if let Some((p, proto)) = parse(spec) {
                out.push((format!("{p}-{}", proto.as_str()), p, proto));
            }
        }
    }
    out
}

/// The forwards, named ones looked up in the apps' images.
pub fn resolve_ports(
    reqs: &[PortRequest],
    images: &[ImageInfo],
) -> Result<Vec<PortForward>, String> {
    let names = named_ports(images);
    reqs.iter()
        .map(|r| match r {
            PortRequest::Explicit(p) => Ok(p.clone()),
            PortRequest::Named {
                name,
                host_ip,
                host_port,
            } => {
                let (_, pod_port, protocol) =
                    names.iter().find(|(n, ..)| n == name).ok_or_else(|| {
                        let known: Vec<&str> = names.iter().map(|(n, ..)| n.as_str()).collect();
                        format!(
                            "--port: no app image declares a port named {name:?} (declared: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                ark_os::escape::controls_escaped(&format!("{known:?}")).into_owned()
                            }
                        )
                    })?;
                Ok(PortForward {
                    name: Some(name.clone()),
                    host_ip: *host_ip,
                    host_port: *host_port,
                    pod_port: *pod_port,
                    protocol: *protocol,
                })
            }
        })
        .collect()
}

/// Tears a pod's network down from stage0, when its stage1 is gone (`stop`, `rm`, `gc`).
pub fn teardown(pod_dir: &std::path::Path) -> anyhow::Result<()> {
    ark_net::teardown(&PodLayout::new(pod_dir)).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_values() {
        let v = |s: &[&str]| parse_net(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["none"]).unwrap(), NetMode::None);
        assert_eq!(v(&["host"]).unwrap(), NetMode::Host);
        let NetMode::Networks(n) = v(&["a,b:IP=10.1.0.5;X=1", "c"]).unwrap() else {
            panic!()
        };
        assert_eq!(n.len(), 3);
        assert_eq!(n[1].args.as_deref(), Some("IP=10.1.0.5;X=1"));
        for bad in [
            &["host,a"][..],
            &["a,a"],
            &["../x"],
            &["a,"],
            &["none", "a"],
        ] {
            assert!(v(bad).is_err(), "{bad:?}");
        }
        assert!(check_mode(Flavor::Kvm, &NetMode::Host, true)
            .unwrap_err()
            .contains("kvm"));
        assert!(check_mode(Flavor::Kvm, &NetMode::Host, false).is_ok());
        assert!(check_mode(Flavor::Fly, &default_mode(Flavor::Ns), true).is_err());
    }

    #[test]
    fn port_forms() {
        assert_eq!(
            parse_publish("127.0.0.1:8080:80/udp").unwrap(),
            PortRequest::Explicit(PortForward {
                name: None,
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 8080,
                pod_port: 80,
                protocol: Protocol::Udp,
            })
        );
        assert!(matches!(
            parse_publish("8080:80").unwrap(),
            PortRequest::Explicit(PortForward { host_ip: None, .. })
        ));
        assert_eq!(
            parse_named_port("80-tcp:[::1]:8080").unwrap(),
            PortRequest::Named {
                name: "80-tcp".into(),
                host_ip: Some("::1".parse().unwrap()),
                host_port: 8080
            }
        );
        for bad in [
            "80",
            "x:0:80",
            "8080:80/sctp",
            "1.2.3:8080:80",
            "8080:99999",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        assert!(parse_named_port("http").is_err());
        let img = ImageInfo {
            exposed_ports: vec!["80/tcp".into()],
            ..ImageInfo::default()
        };
        let p = resolve_ports(
            &[parse_named_port("80-tcp:8080").unwrap()],
            std::slice::from_ref(&img),
        )
        .unwrap();
        assert_eq!((p[0].host_port, p[0].pod_port), (8080, 80));
        let e = resolve_ports(&[parse_named_port("web:8080").unwrap()], &[img]).unwrap_err();
        assert!(e.contains("\"web\"") && e.contains("80-tcp"), "{e}");
    }

    #[test]
    fn dns_and_hosts_values() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let d = parse_dns(&s(&["1.1.1.1", "::1"]), &s(&["a.b"]), &[]).unwrap();
        assert_eq!(d.servers.len(), 2);
        assert_eq!(
            parse_dns(&s(&["host"]), &[], &[]).unwrap().source,
            DnsSource::Host
        );
        assert!(parse_dns(&s(&["host", "1.1.1.1"]), &[], &[]).is_err());
        assert!(parse_dns(&s(&["x"]), &[], &[]).is_err());
        let (e, h) = parse_hosts_entries(&s(&["db=10.0.0.2", "host"])).unwrap();
        assert_eq!(e[0].host, "db");
        assert!(h);
        assert!(parse_hosts_entries(&s(&["db"])).is_err());
    }
}
