//! Networking inside a kvm pod, end to end (real ark, stage1-kvm, VMM, `$ARK_KERNEL`,
//! guest-init). A kvm pod with `--net=none` has `lo`, and only `lo`, up (a fresh guest kernel
//! leaves it down; guest-init brings it up); a pod on `default` reaches the host and is reached
//! through a port forward. One VM boot per test, asserting all it can.

use ark_tests::pods::PodEnv;
use ark_tests::skip;

/// `/sys/class/net/lo/flags` has IFF_UP; `::1` is there when the guest kernel has IPv6 (the
/// kernel adds it only once `lo` is up); no other interface is up.
#[test]
fn kvm_guest_has_lo_up() {
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    // Shell builtins where they do (each process a guest spawns costs seconds on kvm_pvm).
    let script = "\
        read f < /sys/class/net/lo/flags; echo flags=$f; \
        for i in /sys/class/net/*; do read f < $i/flags; echo if=${i##*/}:$f; done; \
        v6=none; if [ -e /proc/net/if_inet6 ]; then v6=0; \
          while read a rest; do [ $a = 00000000000000000000000000000001 ] && v6=1; \
          done < /proc/net/if_inet6; fi; echo v6lo=$v6";
    let out = env.output(&[
        "run",
        "--stage1=kvm",
        "--net=none",
        &env.image,
        "--",
        "sh",
        "-c",
        script,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in: {stdout}\nstderr: {stderr}"))
            .to_string()
    };
    let flags = value("flags");
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).expect("hex flags");
    assert_eq!(flags & 1, 1, "lo is down (flags {flags:#x}): {stdout}");
    // No NIC without a network; the kernel's own tunnel devices (sit0 on an IPv6 kernel) stay down.
    let up_besides_lo: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("if="))
        .filter(|l| !l.starts_with("lo:"))
        .filter(|l| {
            l.rsplit(':')
                .next()
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .is_none_or(|f| f & 1 == 1)
        })
        .collect();
    assert!(
        up_besides_lo.is_empty(),
        "up besides lo: {up_besides_lo:?}: {stdout}"
    );
    let v6 = value("v6lo");
    assert!(
        v6 == "1" || v6 == "none",
        "::1 missing on an IPv6 kernel: {stdout}"
    );
    if v6 == "none" {
        eprintln!("note: the guest kernel has no IPv6; ::1 not checked");
    }
}

/// A kvm pod on the built-in `default` network, in one VM boot: the guest's eth0 has the CNI
/// result's MAC and address (configured by guest-init over netlink, through the TAP that
/// stage1-kvm tc-redirects to the CNI veth), it fetches a page from the host end of the pod
/// network, and `-p` makes 127.0.0.1:HOSTPORT reach a server in the guest; after `ark stop`
/// the stage1 has torn everything down: no lease, rule or netns bind mount names the pod.
#[test]
fn kvm_pod_on_default_reaches_the_host_and_is_reached() {
    use ark_tests::net::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable().or_else(net_unavailable) {
        skip!("{why}");
    }
    let port = http_server("hello-from-the-host");
    let env = PodEnv::new();
    let host_port = 18_491u16;
    let script = format!(
        "read m < /sys/class/net/eth0/address; echo mac=$m; \
         wget -q -O - http://{GATEWAY}:{port}/; echo; echo fetched; \
         mkdir -p /www && echo served-from-the-vm > /www/index.html && \
         exec httpd -f -p 8080 -h /www"
    );
    let mut pod = env.spawn(&[
        "run",
        "--stage1=kvm",
        "-p",
        &format!("127.0.0.1:{host_port}:8080"),
        &env.image,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let (uuid, ip) = wait_network(&env);
    assert!(ip.starts_with("172.16.28."), "{ip}");
    let dir = pod_dir(&env, &uuid);
    let state = ark_pod_spec::net::PodNetworkState::from_json(
        &std::fs::read(dir.join("net/state.json")).expect("net/state.json"),
    )
    .expect("a network state");
    let cni_mac = state.attachments[0].interface.mac.to_string();

    // The guest is slow to boot here: poll the forward until the VM's server answers.
    let deadline = Instant::now() + Duration::from_secs(300);
    let body = loop {
        let mut body = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", host_port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut body);
        }
        if body.contains("served-from-the-vm") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        body.contains("served-from-the-vm"),
        "127.0.0.1:{host_port} did not reach the VM: {body:?}\n{}",
        iptables()
    );
    env.ok(&["stop", &uuid]);
    let status = ark_tests::pods::wait_child(&mut pod, Duration::from_secs(120));
    let mut stdout = String::new();
    pod.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    pod.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stdout.contains(&format!("mac={cni_mac}")),
        "guest MAC is not the CNI interface's {cni_mac}: {stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("hello-from-the-host\nfetched"),
        "the guest did not fetch from the host: {stdout}\n{stderr} ({status:?})"
    );
    // The stage1 tore the network down on its way out.
    assert!(leases_of(std::path::Path::new(DEFAULT_LEASES), &uuid).is_empty());
    assert!(!iptables().contains(&uuid), "{}", iptables());
    assert!(!dir.join("net/netns").exists());
}

/// A kvm pod's `--dns`/`--dns-search`/`--hosts-entry` land in the app's files inside the VM
/// (read back with `ark logs` while it runs); then `kill -9` of its stage1 (the VMM dies with
/// it) leaves the network in place, and `ark gc` removes all of it: lease, host veth, rules,
/// netns mount. One VM boot.
#[test]
fn kvm_pod_dns_hosts_then_kill9_and_gc_leave_no_network() {
    use ark_tests::net::*;
    use std::time::{Duration, Instant};
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable().or_else(net_unavailable) {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let mut child = env.spawn(&[
        "run",
        "--stage1=kvm",
        "--dns=192.0.2.53",
        "--dns-search=corp.example",
        "--hosts-entry=db.example=10.9.8.7",
        &env.image,
        "--",
        "sh",
        "-c",
        "cat /etc/resolv.conf /etc/hosts; echo files-shown; exec sleep 600",
    ]);
    let (uuid, ip) = wait_network(&env);
    let deadline = Instant::now() + Duration::from_secs(300);
    let shown = loop {
        let o = env.output(&["logs", &uuid]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if text.contains("files-shown") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(shown.contains("nameserver 192.0.2.53"), "{shown}");
    assert!(shown.contains("search corp.example"), "{shown}");
    assert!(
        shown.contains("10.9.8.7") && shown.contains("db.example"),
        "{shown}"
    );

    let veth = route_dev(&ip).expect("a route to the pod");
    let pid: i32 = env.status(&uuid)["pid"].parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    ark_tests::pods::wait_child(&mut child, Duration::from_secs(60));
    // The stage1 could not clean up: the lease is still there.
    assert_eq!(
        leases_of(std::path::Path::new(DEFAULT_LEASES), &uuid),
        vec![ip.clone()]
    );
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(leases_of(std::path::Path::new(DEFAULT_LEASES), &uuid).is_empty());
    assert!(
        !links().contains(&format!(": {veth}@")),
        "{veth} left:\n{}",
        links()
    );
    assert_eq!(route_dev(&ip), None);
    assert!(!iptables().contains(&uuid), "rules left:\n{}", iptables());
    assert!(env.mounts_left().is_empty(), "{:?}", env.mounts_left());
}
