//! IPv6 pod networking in the ns flavor with the real CNI plugins: a dual-stack bridge network
//! of the test's own (host-local with an IPv4 and an fd00:… ULA range) gives the pod an address
//! of each family, routes of each family through the bridge's gateways, and the pod reaches a
//! server on the host end of the network over IPv6. (The kvm flavor's IPv6 check rides on
//! kvm_net_many's bridge test, in VMs it boots anyway.) Traffic stays on this machine.

use std::net::Ipv6Addr;
use std::path::Path;

use ark_tests::net::*;
use ark_tests::pods::PodEnv;
use ark_tests::skip;

/// The pod's eth0 has an address from each range, `ip -6 route` has the default route through
/// the bridge's IPv6 gateway, busybox wget reaches `http://[GATEWAY6]:PORT/` and the host saw
/// the request come from the pod's IPv6 address; afterwards neither lease is left and the
/// pod's veth is off the bridge.
#[test]
fn ns_pod_on_a_dual_stack_bridge_reaches_the_host_over_ipv6() {
    if let Some(why) = net_unavailable() {
        skip!("{why}");
    }
    ark_tests::pods::scenarios::stage1_installed("ns");
    let _bridge = BridgeGuard("arkt-br6");
    let port = http_server_naming_peer(Ipv6Addr::UNSPECIFIED.into(), "v6-token");
    let scratch = tempfile::tempdir().unwrap();
    let conf = bridge_network_with(
        scratch.path(),
        "ark-t-dual",
        "arkt-br6",
        &["10.231.21.0/24", "fd00:a7c:21::/64"],
        &["0.0.0.0/0", "::/0"],
    );
    let env = PodEnv::new();
    // The bridge's own IPv6 address may still be tentative (DAD) on the first try.
    let script = format!(
        "ip -o addr show eth0; ip -6 route show default; \
         i=0; until wget -q -O - http://[fd00:a7c:21::1]:{port}/; do \
           i=$((i+1)); [ $i -ge 10 ] && exit 1; sleep 1; done"
    );
    let o = env.output(&[
        "run",
        "--stage1=ns",
        "--net=ark-t-dual",
        &format!("--net-config-dir={}", conf.display()),
        &env.image,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", err(&o));
    assert!(text.contains("inet 10.231.21."), "{text}");
    let v6 = text
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.strip_suffix("/64"))
        .filter(|a| a.starts_with("fd00:a7c:21:"))
        .unwrap_or_else(|| panic!("no fd00:a7c:21::/64 address on eth0: {text}"));
    assert!(
        text.contains("default via fd00:a7c:21::1 dev eth0"),
        "{text}"
    );
    assert!(text.contains(&format!("v6-token from {v6}")), "{text}");
    let uuid = env.only_pod().expect("the pod");
    let left = leases_of(&scratch.path().join("ipam/ark-t-dual"), "");
    assert!(left.is_empty(), "leases left by {uuid}: {left:?}");
    assert!(
        bridge_ports("arkt-br6").is_empty(),
        "{:?}",
        bridge_ports("arkt-br6")
    );
    assert!(!Path::new(&pod_dir(&env, &uuid).join("net/netns")).exists());
}
