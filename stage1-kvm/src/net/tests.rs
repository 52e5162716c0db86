//! The wiring against the real kernel: a pod namespace with a veth as the ptp/bridge plugins
//! leave it (addressed, up, a default route), its peer in a second namespace standing for the
//! host side; frames written into the TAP reach the peer and the peer's frames come out of the
//! TAP. No VM: the test plays the VMM on the TAP descriptor.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use ark_pod_spec::net::{Attachment, Cidr, Dns};

use super::*;

/// `sizeof(struct virtio_net_hdr)`: the TAP's default vnet header size.
const VNET_HDR_LEN: usize = 10;
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct TestNetns(String);

impl TestNetns {
    fn new(tag: &str) -> Self {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("arkt{}{tag}{n}", std::process::id());
        ip(&["netns", "add", &name]);
        TestNetns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The pod namespace with `eth0` (10.99.0.2/24, default via .1) and the peer namespace with
/// `peer0` (10.99.0.1/24); the state a CNI set-up would have saved.
fn pod_network() -> Option<(TestNetns, TestNetns, PodNetworkState)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: network namespaces need root");
        return None;
    }
    let pod = TestNetns::new("p");
    let peer = TestNetns::new("q");
    let (p, q) = (pod.0.as_str(), peer.0.as_str());
    ip(&[
        "-n", p, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name", "peer0",
    ]);
    ip(&["-n", p, "link", "set", "peer0", "netns", q]);
    ip(&["-n", p, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    ip(&["-n", p, "link", "set", "eth0", "up"]);
    ip(&["-n", p, "route", "add", "default", "via", "10.99.0.1"]);
    ip(&["-n", q, "addr", "add", "10.99.0.1/24", "dev", "peer0"]);
    ip(&["-n", q, "link", "set", "peer0", "mtu", "1400", "up"]);
    let link: serde_json::Value =
        serde_json::from_str(&ip(&["-n", p, "-j", "link", "show", "eth0"])).unwrap();
    let mac: Mac = link[0]["address"].as_str().unwrap().parse().unwrap();
    let state = PodNetworkState {
        netns: pod.path().display().to_string(),
        attachments: vec![Attachment {
            network: "testnet".into(),
            interface: Interface {
                name: "eth0".into(),
                mac,
                mtu: Some(1400),
                addresses: vec!["10.99.0.2/24".parse().unwrap()],
            },
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("10.99.0.1".parse().unwrap()),
                dev: None,
            }],
            dns: Dns::default(),
        }],
    };
    Some((pod, peer, state))
}

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend([0xff; 6]);
    f.extend(sha);
    f.extend(0x0806u16.to_be_bytes());
    f.extend([0, 1, 0x08, 0, 6, 4]);
    f.extend(op.to_be_bytes());
    f.extend(sha);
    f.extend(spa.octets());
    f.extend([0; 6]);
    f.extend(tpa.octets());
    f
}

/// Reads frames from the TAP until `want` accepts one (its Ethernet frame, after the vnet
/// header) or 5 s pass.
fn tap_frame(tap: &OwnedFd, want: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let mut fds = [nix::poll::PollFd::new(
            tap.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(500u16)).unwrap() == 0 {
            continue;
        }
        let n = nix::unistd::read(tap.as_raw_fd(), &mut buf).unwrap();
        if n > VNET_HDR_LEN && want(&buf[VNET_HDR_LEN..n]) {
            return true;
        }
    }
    false
}

fn is_arp(f: &[u8], op: u16, spa: Ipv4Addr, tpa: Ipv4Addr) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x06]
        && f[20..22] == op.to_be_bytes()
        && f[28..32] == spa.octets()
        && f[38..42] == tpa.octets()
}

fn is_udp_to(f: &[u8], dst: Ipv4Addr) -> bool {
    f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[30..34] == dst.octets()
}

#[test]
fn tap_and_cni_veth_are_joined_both_ways() {
    let Some((pod, peer, state)) = pod_network() else {
        return;
    };
    let net = attach(&pod.path(), &state).unwrap();
    let mac = state.attachments[0].interface.mac;

    // The guest's view: the veth's MAC and MTU, its addresses, the route on its interface.
    assert_eq!(
        net.guest,
        GuestNetwork {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac,
                mtu: Some(1400),
                addresses: vec![Cidr::new(POD_IP.into(), 24).unwrap()],
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some(PEER_IP.into()),
                dev: Some("eth0".into()),
            }],
        }
    );
    assert_eq!(net.nics.len(), 1);
    let nic = &net.nics[0];
    assert_eq!(
        (nic.tap_name.as_str(), nic.mac, nic.mtu),
        ("tap0_ark", mac, 1400)
    );
    let tap: serde_json::Value =
        serde_json::from_str(&ip(&["-n", &pod.0, "-j", "link", "show", "tap0_ark"])).unwrap();
    assert_eq!(tap[0]["mtu"], 1400);
    // The TAP exists only in the pod's namespace, not in this process's.
    assert!(nix::net::if_::if_nametoindex("tap0_ark").is_err());

    // Guest -> network: an ARP request written into the TAP reaches the peer, whose kernel
    // answers; the answer comes back out of the TAP (network -> guest).
    let request = arp(1, mac.0, POD_IP, PEER_IP);
    assert_eq!(
        nix::unistd::write(&nic.tap, &request).unwrap(),
        request.len()
    );
    assert!(
        tap_frame(&nic.tap, |f| is_arp(f, 2, PEER_IP, POD_IP)
            && f[0..6] == mac.0),
        "no ARP reply from the peer came out of the TAP"
    );

    // Network -> guest, started by the peer: a datagram it sends to the pod's address comes
    // out of the TAP, and the pod namespace's own stack never sees it (the redirect steals the
    // frame): no ICMP port-unreachable comes back to the peer's connected socket.
    let peer_ns = File::open(peer.path()).unwrap();
    let sender = std::thread::spawn(move || {
        nix::sched::setns(&peer_ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = std::net::UdpSocket::bind((PEER_IP, 0)).unwrap();
        sock.connect((POD_IP, 9)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.send(b"to the guest").unwrap();
        let mut buf = [0u8; 16];
        sock.recv(&mut buf).unwrap_err().kind()
    });
    let seen = tap_frame(&nic.tap, |f| {
        is_udp_to(f, POD_IP) || is_arp(f, 1, PEER_IP, POD_IP)
    });
    assert!(seen, "the peer's datagram never came out of the TAP");
    let answer = sender.join().unwrap();
    assert!(
        matches!(
            answer,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the pod namespace's stack answered a datagram meant for the guest: {answer:?}"
    );

    // The TAP goes with its descriptor.
    drop(net);
    let out = Command::new("ip")
        .args(["-n", &pod.0, "link", "show", "tap0_ark"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the TAP outlived its descriptor");
}

#[test]
fn a_missing_interface_or_namespace_is_one_clear_error() {
    let Some((pod, _peer, mut state)) = pod_network() else {
        return;
    };
    state.attachments[0].interface.name = "eth9".into();
    let e = attach(&pod.path(), &state).unwrap_err().to_string();
    assert_eq!(
        e, "network \"testnet\": find interface \"eth9\": no such interface",
        "{e}"
    );
    // Not a network namespace: setns refuses it (and this process stays where it was).
    let file = tempfile::NamedTempFile::new().unwrap();
    let e = attach(file.path(), &state).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("network namespace {}: ", file.path().display())),
        "{e}"
    );
    let e = attach(Path::new("/nonexistent/netns"), &state)
        .unwrap_err()
        .to_string();
    assert!(e.contains("No such file"), "{e}");
}
