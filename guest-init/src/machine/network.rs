//! The pod's network inside a VM, before any app starts: `lo` up (a fresh kernel has it down),
//! then each NIC of the stage2 config found by its MAC (the VMM gave the virtio-net device the
//! CNI interface's), renamed, its MTU and addresses set, up; the routes once every link is up
//! (a route's gateway must be reachable through a link that is up). Over netlink: no `ip`
//! binary in the guest, no async runtime in PID 1.

use anyhow::{Context, Result};
use ark_os::netlink::{Netlink, RouteSpec};
use ark_pod_spec::net::{GuestNetwork, Interface, Route};

/// Brings `lo` up and configures `network`'s interfaces and routes in the calling thread's
/// network namespace. The first interface that cannot be found or configured fails the whole
/// set-up, naming the interface.
pub fn set_up(network: Option<&GuestNetwork>) -> Result<()> {
    let mut nl = Netlink::open().context("netlink")?;
    let lo = nl.link_by_name("lo").context("lo")?;
    nl.set_up(lo.index).context("lo")?;
    let Some(network) = network else {
        return Ok(());
    };
    let indices = rename_by_mac(&mut nl, &network.interfaces)?;
    for (iface, index) in network.interfaces.iter().zip(indices) {
        configure(&mut nl, iface, index).with_context(|| describe(iface))?;
    }
    for r in &network.routes {
        add_route(&mut nl, r).with_context(|| {
            format!(
                "route {}{}",
                r.dst,
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            )
        })?;
    }
    Ok(())
}

fn describe(iface: &Interface) -> String {
    format!("interface {}", iface.name)
}

/// Finds each interface's link by MAC and gives it the interface's name, returning the links'
/// indices. In two steps (a temporary name first), so that NICs the kernel named in another
/// order than the config's (eth0 <-> eth1) swap names without colliding.
fn rename_by_mac(nl: &mut Netlink, interfaces: &[Interface]) -> Result<Vec<u32>> {
    let mut links = Vec::with_capacity(interfaces.len());
    for iface in interfaces {
        let link = nl
            .link_by_mac(iface.mac.0)
            .with_context(|| describe(iface))?;
        if links.iter().any(|(index, _)| *index == link.index) {
            anyhow::bail!("{}: configured twice", describe(iface));
        }
        links.push((link.index, link));
    }
    let renames: Vec<_> = interfaces
        .iter()
        .zip(&links)
        .enumerate()
        .filter(|(_, (iface, (_, link)))| link.name != iface.name)
        .collect();
    for (i, (iface, (index, link))) in &renames {
        // The kernel renames only a link that is down.
        if link.up {
            nl.set_down(*index).with_context(|| describe(iface))?;
        }
        nl.rename(*index, &format!("arktmp{i}"))
            .with_context(|| describe(iface))?;
    }
    for (_, (iface, (index, _))) in &renames {
        nl.rename(*index, &iface.name)
            .with_context(|| describe(iface))?;
    }
    Ok(links.into_iter().map(|(index, _)| index).collect())
}

fn configure(nl: &mut Netlink, iface: &Interface, index: u32) -> Result<()> {
    if let Some(mtu) = iface.mtu {
        nl.set_mtu(index, mtu)?;
    }
    for a in &iface.addresses {
        nl.add_address(index, a.addr, a.prefix)?;
    }
    nl.set_up(index)?;
    Ok(())
}

fn add_route(nl: &mut Netlink, r: &Route) -> Result<()> {
    let oif = match &r.dev {
        Some(dev) => Some(nl.link_by_name(dev)?.index),
        None => None,
    };
    nl.add_route(&RouteSpec {
        dst: r.dst.addr,
        prefix: r.dst.prefix,
        gateway: r.gateway,
        oif,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use ark_pod_spec::net::Mac;

    use super::*;

    /// `f` in a thread of a new network namespace; the `ip` commands it runs are there too.
    fn in_new_netns(f: impl FnOnce() + Send + 'static) {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: network namespaces need root");
            return;
        }
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f();
        })
        .join()
        .unwrap();
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn ip_json(args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&ip(args)).unwrap()
    }

    /// A veth pair whose end `name` has MAC `mac` (the guest's NIC); the peer is up so that
    /// `name` gets a carrier.
    fn nic(name: &str, peer: &str, mac: &str) {
        ip(&[
            "link", "add", name, "address", mac, "type", "veth", "peer", "name", peer,
        ]);
        ip(&["link", "set", peer, "up"]);
    }

    fn network() -> GuestNetwork {
        serde_json::from_str(
            r#"{"interfaces":[
                  {"name":"eth0","mac":"02:00:00:00:00:0a","mtu":1400,
                   "addresses":["10.88.0.5/24","fd00:88::5/64"]},
                  {"name":"eth1","mac":"02:00:00:00:00:0b","addresses":["10.89.0.5/16"]}],
                "routes":[
                  {"dst":"0.0.0.0/0","gateway":"10.88.0.1","dev":"eth0"},
                  {"dst":"192.168.77.0/24","gateway":"10.89.0.1"},
                  {"dst":"::/0","gateway":"fd00:88::1","dev":"eth0"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn nics_are_found_by_mac_renamed_addressed_and_routed() {
        in_new_netns(|| {
            // The kernel named them the other way round from the config.
            nic("eth1", "p0", "02:00:00:00:00:0a");
            nic("eth0", "p1", "02:00:00:00:00:0b");
            ip(&["link", "set", "eth0", "up"]);
            set_up(Some(&network())).unwrap();

            let lo = ip_json(&["-j", "link", "show", "lo"]);
            assert!(lo[0]["flags"].to_string().contains("\"UP\""), "{lo}");
            let eth0 = &ip_json(&["-j", "addr", "show", "eth0"])[0];
            assert_eq!(eth0["address"], "02:00:00:00:00:0a");
            assert_eq!(eth0["mtu"], 1400);
            assert!(eth0["flags"].to_string().contains("\"UP\""), "{eth0}");
            let addrs: Vec<String> = eth0["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                .collect();
            assert!(addrs.contains(&"10.88.0.5/24".into()), "{addrs:?}");
            assert!(addrs.contains(&"fd00:88::5/64".into()), "{addrs:?}");
            let eth1 = &ip_json(&["-j", "addr", "show", "eth1"])[0];
            assert_eq!(eth1["address"], "02:00:00:00:00:0b");
            assert_eq!(eth1["addr_info"][0]["local"], "10.89.0.5");

            let routes = ip_json(&["-j", "route", "show"]);
            let find = |dst: &str| {
                routes
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["dst"] == dst)
                    .unwrap_or_else(|| panic!("no route to {dst}: {routes}"))
                    .clone()
            };
            let default = find("default");
            assert_eq!(
                (default["gateway"].as_str(), default["dev"].as_str()),
                (Some("10.88.0.1"), Some("eth0"))
            );
            let other = find("192.168.77.0/24");
            assert_eq!(
                (other["gateway"].as_str(), other["dev"].as_str()),
                (Some("10.89.0.1"), Some("eth1"))
            );
            let v6 = ip_json(&["-j", "-6", "route", "show", "default"]);
            assert_eq!(v6[0]["gateway"], "fd00:88::1");
        });
    }

    #[test]
    fn a_missing_nic_fails_with_one_line_naming_it() {
        in_new_netns(|| {
            nic("eth0", "p0", "02:00:00:00:00:0a");
            let e = format!("{:#}", set_up(Some(&network())).unwrap_err());
            assert_eq!(e, "interface eth1: no interface has MAC 02:00:00:00:00:0b");
            // lo is up all the same: it comes first.
            let lo = ip_json(&["-j", "link", "show", "lo"]);
            assert!(lo[0]["flags"].to_string().contains("\"UP\""), "{lo}");
        });
    }

    #[test]
    fn a_route_the_kernel_refuses_fails_naming_the_route() {
        in_new_netns(|| {
            nic("eth0", "p0", "02:00:00:00:00:0a");
            let mut net = network();
            net.interfaces.truncate(1);
            net.routes = vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("10.200.0.1".parse().unwrap()),
                dev: Some("eth0".into()),
            }];
            let e = format!("{:#}", set_up(Some(&net)).unwrap_err());
            assert!(
                e.starts_with("route 0.0.0.0/0 via 10.200.0.1: add route"),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
            // Two interfaces with one MAC in the config: refused, not configured twice.
            let mut twice = network();
            twice.interfaces[1].mac = Mac([2, 0, 0, 0, 0, 0x0a]);
            twice.interfaces[0].addresses.clear();
            let e = format!("{:#}", set_up(Some(&twice)).unwrap_err());
            assert!(e.ends_with("configured twice"), "{e}");
        });
    }

    #[test]
    fn without_a_network_only_lo_comes_up() {
        in_new_netns(|| {
            nic("eth0", "p0", "02:00:00:00:00:0a");
            set_up(None).unwrap();
            let lo = ip_json(&["-j", "addr", "show", "lo"]);
            assert!(lo[0]["flags"].to_string().contains("\"UP\""), "{lo}");
            assert_eq!(lo[0]["addr_info"][0]["local"], "127.0.0.1");
            let eth0 = ip_json(&["-j", "link", "show", "eth0"]);
            assert!(!eth0[0]["flags"].to_string().contains("\"UP\""), "{eth0}");
        });
    }
}
