//! Helpers for the networking tests: a host-side HTTP server, the host's links, rules and IPAM
//! leases, and waiting for a pod's network.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
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
    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    let port = l.local_addr().unwrap().port();
    let body = token.to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut s = s;
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
    let uuid = env.wait_pod(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = env.status(&uuid);
        if let Some(v) = s
            .iter()
            .find(|(k, _)| k.starts_with("network-"))
            .map(|(_, v)| v)
        {
            // "eth0 172.16.28.5/24"
            let addr = v.split_whitespace().nth(1).expect("an address");
            return (uuid, addr.split('/').next().unwrap().to_string());
        }
        assert!(Instant::now() < deadline, "no network for {uuid}: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A conflist in the test's own config dir: a bridge network with its own name, bridge,
/// subnet and IPAM dir (so parallel tests never share one).
pub fn bridge_network(dir: &Path, name: &str, bridge: &str, subnet: &str) -> PathBuf {
    let conf = dir.join("net.d");
    let ipam = dir.join("ipam");
    std::fs::create_dir_all(&conf).unwrap();
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
                "ipam": {"type": "host-local", "subnet": subnet, "dataDir": ipam}
            }]
        })
        .to_string(),
    )
    .unwrap();
    conf
}
