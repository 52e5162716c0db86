use std::process::Command;

use super::*;

/// Runs `f` in a thread of a network namespace of its own (so nothing shows on the host); the
/// `ip`/`tc` it starts run there too (a child gets its forking thread's namespaces).
fn in_new_netns(f: impl FnOnce() + Send + 'static) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root");
        return false;
    }
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f();
    })
    .join()
    .unwrap();
    true
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn configures_a_link_like_ip_does() {
    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let lo = nl.link_by_name("lo").unwrap();
        assert!(!lo.up, "lo starts down in a new namespace");
        nl.set_up(lo.index).unwrap();
        assert!(nl.link_by_index(lo.index).unwrap().up);

        nl.add_veth("nltest0", "nltest1").unwrap();
        let v = nl.link_by_name("nltest0").unwrap();
        let mac = [0x02, 0xaa, 0, 0, 0, 0x05];
        nl.set_mac(v.index, mac).unwrap();
        nl.set_mtu(v.index, 1400).unwrap();
        nl.rename(v.index, "eth7").unwrap();
        let found = nl.link_by_mac(mac).unwrap();
        assert_eq!(found.index, v.index);
        assert_eq!(found.name, "eth7");
        assert_eq!(found.mtu, Some(1400));
        nl.add_address(v.index, "10.9.0.2".parse().unwrap(), 24)
            .unwrap();
        nl.add_address(v.index, "fd00:9::2".parse().unwrap(), 64)
            .unwrap();
        let peer = nl.link_by_name("nltest1").unwrap();
        nl.set_up(peer.index).unwrap();
        nl.set_up(v.index).unwrap();
        nl.add_route(&RouteSpec {
            dst: "0.0.0.0".parse().unwrap(),
            prefix: 0,
            gateway: Some("10.9.0.1".parse().unwrap()),
            oif: Some(v.index),
        })
        .unwrap();
        nl.add_route(&RouteSpec {
            dst: "10.77.0.0".parse().unwrap(),
            prefix: 16,
            gateway: None,
            oif: Some(v.index),
        })
        .unwrap();
        nl.add_route(&RouteSpec {
            dst: "::".parse().unwrap(),
            prefix: 0,
            gateway: Some("fd00:9::1".parse().unwrap()),
            oif: None,
        })
        .unwrap();

        let addrs = json(&["ip", "-j", "addr", "show", "dev", "eth7"]);
        let link = &addrs[0];
        assert_eq!(link["address"], "02:aa:00:00:00:05");
        assert_eq!(link["mtu"], 1400);
        let ips: Vec<String> = link["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert!(ips.contains(&"10.9.0.2/24".to_string()), "{ips:?}");
        assert!(ips.contains(&"fd00:9::2/64".to_string()), "{ips:?}");
        let routes = json(&["ip", "-j", "route", "show"]);
        let default = routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == "default")
            .expect("a default route");
        assert_eq!(default["gateway"], "10.9.0.1");
        assert_eq!(default["dev"], "eth7");
        let direct = routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == "10.77.0.0/16")
            .expect("the direct route");
        assert_eq!(direct["scope"], "link");
        let routes6 = json(&["ip", "-j", "-6", "route", "show", "default"]);
        assert_eq!(routes6[0]["gateway"], "fd00:9::1");
    });
}

#[test]
fn kernel_errors_name_the_operation() {
    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let e = nl.link_by_name("nosuch0").unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("\"nosuch0\""), "{e}");
        assert!(matches!(
            nl.link_by_mac([2, 0, 0, 0, 0, 0x77]),
            Err(NetlinkError::NotFound(_))
        ));
        let lo = nl.link_by_name("lo").unwrap();
        nl.add_address(lo.index, "10.8.0.1".parse().unwrap(), 32)
            .unwrap();
        let e = nl
            .add_address(lo.index, "10.8.0.1".parse().unwrap(), 32)
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "add address 10.8.0.1/32 to interface index {}: ",
                lo.index
            )),
            "{e}"
        );
        // A gateway the kernel cannot reach: refused, and the error says which route.
        let e = nl
            .add_route(&RouteSpec {
                dst: "0.0.0.0".parse().unwrap(),
                prefix: 0,
                gateway: Some("10.200.0.1".parse().unwrap()),
                oif: None,
            })
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENETUNREACH), "{e}");
        // The kernel's extended ack rides along (this kernel says which part is wrong).
        assert!(
            matches!(&e, NetlinkError::Kernel { ext_ack: Some(m), .. } if m.contains("gateway")),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("add route 0.0.0.0/0 via 10.200.0.1: "),
            "{e}"
        );
        assert!(matches!(
            nl.rename(lo.index, "a/b"),
            Err(NetlinkError::InvalidInput(_))
        ));
        assert!(matches!(
            nl.add_route(&RouteSpec {
                dst: "10.0.0.0".parse().unwrap(),
                prefix: 8,
                gateway: Some("fd00::1".parse().unwrap()),
                oif: None,
            }),
            Err(NetlinkError::InvalidInput(_))
        ));
        assert!(matches!(
            nl.add_address(lo.index, "10.0.0.1".parse().unwrap(), 33),
            Err(NetlinkError::InvalidInput(_))
        ));
    });
}

#[test]
fn installs_the_ingress_redirect() {
    in_new_netns(|| {
        let mut nl = Netlink::open().unwrap();
        nl.add_veth("tca0", "tcb0").unwrap();
        let a = nl.link_by_name("tca0").unwrap();
        let b = nl.link_by_name("tcb0").unwrap();
        nl.add_ingress_qdisc(a.index).unwrap();
        let e = nl.add_ingress_qdisc(a.index).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        nl.add_redirect_filter(a.index, b.index).unwrap();
        let filters = json(&["tc", "-j", "filter", "show", "dev", "tca0", "ingress"]);
        let text = filters.to_string();
        assert!(text.contains("\"kind\":\"u32\""), "{text}");
        assert!(text.contains("mirred"), "{text}");
        assert!(text.contains("\"to_dev\":\"tcb0\""), "{text}");
        assert!(text.contains("\"mirred_action\":\"redirect\""), "{text}");
        // Without the qdisc, the filter has no parent.
        let e = nl.add_redirect_filter(b.index, a.index).unwrap_err();
        assert!(e.errno().is_some(), "{e}");
    });
}

#[test]
fn reply_framing_is_checked() {
    let op = "test";
    // Shorter than a header, longer than the datagram, a stray tail.
    let mut short = vec![0u8; 16];
    short[..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(split_message(op, &short).is_err());
    let mut long = vec![0u8; 16];
    long[..4].copy_from_slice(&400u32.to_ne_bytes());
    assert!(split_message(op, &long).is_err());
    assert!(split_message(op, &[1, 2]).is_err());
    // Two messages, the first unaligned: the second starts at the 4-byte boundary.
    let mut two = vec![0u8; 20 + 16];
    two[..4].copy_from_slice(&18u32.to_ne_bytes());
    two[20..24].copy_from_slice(&16u32.to_ne_bytes());
    let (first, rest) = split_message(op, &two).unwrap();
    assert_eq!(first.len(), 18);
    assert_eq!(rest.len(), 16);
    // A length field of u32::MAX does not wrap anything.
    let mut huge = vec![0u8; 16];
    huge[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(split_message(op, &huge).is_err());
    // An error message with a truncated TLV area has no ext-ack text, and does not panic.
    let mut err = vec![0u8; 36 + 3];
    err[6..8].copy_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
    assert_eq!(ext_ack_message(&err), None);
    assert_eq!(ext_ack_message(&[0u8; 4]), None);
}
