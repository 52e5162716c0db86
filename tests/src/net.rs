//! Helpers for the networking tests: a host-side HTTP server, the host's links, rules and IPAM
//! leases, and waiting for a pod's network.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::pods::PodEnv;

/// Why the networking tests cannot run here, if they cannot.
pub fn net_unavailable() -> Option<String> {
    if let Some(why) = crate::pods::pods_unavailable() {
        return Some(why);
    }
    if !Path::new("/usr/lib/cni/ptp").exists() || !Path::new("/usr/lib/cni/portmap").exists() {
        return Some(
            "the CNI plugins are not installed in /usr/lib/cni (containernetworking-plugins)"
                .into(),
        );
    }
    if Command::new("iptables-save").output().is_err() {
        return Some("iptables-save is missing".into());
    }
    None
}

/// The built-in `default` network's gateway (the host end of every pod's veth).
pub const GATEWAY: &str = "172.16.28.1";
pub const DEFAULT_LEASES: &str = "/var/lib/cni/networks/default";

/// An HTTP server on the host (every address: the pods reach it at the gateway) answering each
/// request with `token`; runs until the test process ends.
pub fn http_server(token: &str) -> u16 {
    let token = token.to_string();
    serve(Ipv4Addr::UNSPECIFIED.into(), move |_| token.clone())
}

/// An HTTP server on `ip` (`::` for every IPv6 address) answering `TOKEN from PEER`: who
/// reached it, as the host saw them (so a pod's output proves which of its addresses did).
pub fn http_server_naming_peer(ip: IpAddr, token: &str) -> u16 {
    let token = token.to_string();
    serve(ip, move |peer| {
        format!("{token} from {}", peer.to_canonical())
    })
}

fn serve(ip: IpAddr, body: impl Fn(IpAddr) -> String + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind");
    let port = l.local_addr().unwrap().port();
    let body = std::sync::Arc::new(body);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let Ok(peer) = s.peer_addr() else { return };
                let body = body(peer.ip());
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn iptables() -> String {
    out(&Command::new("iptables-save")
        .output()
        .expect("iptables-save"))
}

pub fn links() -> String {
    out(&Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link"))
}

/// Lease files (by IP) in a host-local data dir that name `uuid`.
pub fn leases_of(dir: &Path, uuid: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|s| s.starts_with(uuid)))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The host interface a route to `ip` goes out of (a pod's host-side veth).
pub fn route_dev(ip: &str) -> Option<String> {
    let o = out(&Command::new("ip")
        .args(["-o", "route", "show", ip])
        .output()
        .unwrap());
    let mut w = o.split_whitespace();
    w.find(|x| *x == "dev").and(w.next()).map(str::to_string)
}

/// The pod's directory.
pub fn pod_dir(env: &PodEnv, uuid: &str) -> PathBuf {
    env.pod_dirs()
        .into_iter()
        .find(|d| d.file_name().is_some_and(|n| n == uuid))
        .unwrap_or_else(|| panic!("no directory for pod {uuid}"))
}

/// Waits until a background pod's network is up; returns its UUID and eth0's IPv4 address.
pub fn wait_network(env: &PodEnv) -> (String, String) {
    let (uuid, addrs) = wait_addresses(env);
    let v4 = addrs
        .into_iter()
        .find(|a| a.parse::<Ipv4Addr>().is_ok())
        .unwrap_or_else(|| panic!("no IPv4 address for {uuid}"));
    (uuid, v4)
}

/// Waits until a background pod's network is up; returns its UUID and the addresses of its
/// first network's interface (without prefixes), as `ark status` shows them.
pub fn wait_addresses(env: &PodEnv) -> (String, Vec<String>) {
    // Generous: pods prepared side by side on a loaded host (10 kvm pods at once) take minutes.
    let uuid = env.wait_pod(Duration::from_secs(300));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = env.status(&uuid);
        if let Some(v) = s
            .iter()
            .find(|(k, _)| k.starts_with("network-"))
            .map(|(_, v)| v)
        {
            // "eth0 172.16.28.5/24,fd00::5/64"
            let addrs = v.split_whitespace().nth(1).expect("addresses");
            let addrs = addrs
                .split(',')
                .map(|a| a.split('/').next().unwrap().to_string())
                .collect();
            return (uuid, addrs);
        }
        assert!(Instant::now() < deadline, "no network for {uuid}: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The interfaces enslaved to `bridge` on the host (the host ends of its pods' veths).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    link_names(&out(&Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .expect("ip link")))
}

/// The links inside the network namespace bind-mounted at `netns` (a pod's `net/netns`).
pub fn netns_links(netns: &Path) -> Vec<String> {
    let o = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "link"])
        .output()
        .expect("nsenter");
    assert!(
        o.status.success(),
        "nsenter {}: {}",
        netns.display(),
        err(&o)
    );
    link_names(&out(&o))
}

/// Link names from `ip -o link` output ("3: eth0@if7: <...").
fn link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

/// Deletes a bridge the bridge plugin made (CNI leaves bridges in place), pass or fail.
#[derive(Debug)]
pub struct BridgeGuard(pub &'static str);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

/// A conflist in the test's own config dir: a bridge network with its own name, bridge,
/// subnet and IPAM dir (so parallel tests never share one).
pub fn bridge_network(dir: &Path, name: &str, bridge: &str, subnet: &str) -> PathBuf {
    bridge_network_with(dir, name, bridge, &[subnet], &[])
}

/// [`bridge_network`] with a host-local range per subnet (an IPv4 and an IPv6 one make it
/// dual-stack: the pod gets an address from each) and IPAM `routes` (`0.0.0.0/0`, `::/0`:
/// through the bridge's gateway address of the route's family).
pub fn bridge_network_with(
    dir: &Path,
    name: &str,
    bridge: &str,
    subnets: &[&str],
    routes: &[&str],
) -> PathBuf {
    let conf = dir.join("net.d");
    let ipam = dir.join("ipam");
    std::fs::create_dir_all(&conf).unwrap();
    let ranges: Vec<_> = subnets
        .iter()
        .map(|s| serde_json::json!([{ "subnet": s }]))
        .collect();
    let routes: Vec<_> = routes
        .iter()
        .map(|r| serde_json::json!({ "dst": r }))
        .collect();
    std::fs::write(
        conf.join(format!("10-{name}.conflist")),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": ipam}
            }]
        })
        .to_string(),
    )
    .unwrap();
    conf
}

/// A conflist `20-broken.conflist` in `conf` that is not JSON (cut short): the network
/// `broken`.
pub fn broken_conflist(conf: &Path) {
    std::fs::create_dir_all(conf).unwrap();
    std::fs::write(
        conf.join("20-broken.conflist"),
        "{\"cniVersion\":\"1.0.0\",\"name\":\"broken\",\"plugins\":[",
    )
    .unwrap();
}

/// The network `name` in `conf`: the real `ptp` (a veth, a host-local lease from `subnet` in
/// `ipam`), then `failer` from the returned plugin dir, a plugin whose ADD fails with a CNI
/// error (code 99) whose message carries a terminal escape. Run with
/// `--cni-plugin-dir=<returned> --cni-plugin-dir=/usr/lib/cni`.
pub fn failing_network(
    scratch: &Path,
    conf: &Path,
    name: &str,
    subnet: &str,
    ipam: &Path,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let plugins = scratch.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(conf).unwrap();
    let fake = plugins.join("failer");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = DEL ] && exit 0\nprintf '{\"cniVersion\":\"1.0.0\",\"code\":99,\"msg\":\"refused \\\\u001b[2J by policy\"}'\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        conf.join(format!("30-{name}.conflist")),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {"type": "ptp", "ipMasq": true,
                 "ipam": {"type": "host-local", "subnet": subnet, "dataDir": ipam}},
                {"type": "failer"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    plugins
}

/// The error line [`failing_network`]'s `failer` gives, escaped: what a run on it must print.
pub fn failer_error(network: &str) -> String {
    format!(
        "network \"{network}\": plugin failer ADD failed: refused \\u{{1b}}[2J by policy (code 99)"
    )
}

/// The host's routes (`ip -o route`, IPv4).
pub fn routes() -> String {
    out(&Command::new("ip")
        .args(["-o", "route"])
        .output()
        .expect("ip route"))
}
