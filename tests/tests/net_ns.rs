//! Pod networking in the ns flavor with the real CNI plugins (`/usr/lib/cni`) and iptables:
//! the built-in `default` network, a bridge network of the test's own, port forwards, `none`,
//! DNS and hosts entries, teardown after `kill -9` + `ark gc`, failing configs and plugins,
//! and 10 pods at once. Traffic stays on this machine: the host end of the pod network, or
//! between pods. Each test has its own `--dir`, and its own network name, subnet and IPAM
//! directory where it makes a network; `PodEnv`'s drop stops and gcs what a failed test left.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ark_tests::net::*;
use ark_tests::pods::{wait_child, PodEnv};
use ark_tests::skip;

macro_rules! need_net {
    () => {
        if let Some(why) = ark_tests::net::net_unavailable() {
            skip!("{why}");
        }
        ark_tests::pods::scenarios::stage1_installed("ns");
    };
}

/// A pod on `default` fetches a page from the host end of its network; `ark status` and
/// `ark list --format=json` show its network while it runs.
#[test]
fn default_network_reaches_the_host() {
    need_net!();
    let port = http_server("hello-from-the-host");
    let env = PodEnv::new();
    let o = env.output(&[
        "run",
        "--stage1=ns",
        &env.image,
        "--",
        "sh",
        "-c",
        &format!("ip -o -4 addr show eth0; wget -q -O - http://{GATEWAY}:{port}/"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("inet 172.16.28."), "{}", out(&o));
    assert!(out(&o).contains("hello-from-the-host"), "{}", out(&o));
    // The stage1 tore the network down on its way out: no lease or rule names the pod.
    let uuid = env.only_pod().expect("the pod");
    assert!(leases_of(Path::new(DEFAULT_LEASES), &uuid).is_empty());
    assert!(!iptables().contains(&uuid), "{}", iptables());
    assert!(!pod_dir(&env, &uuid).join("net/netns").exists());
    assert!(!err(&o).contains("teardown"), "{}", err(&o));
}

/// `kill -9` of the stage1, then `ark gc`: no veth, netns, iptables rule or IPAM lease is
/// left (each listed before and after). While the pod runs: the masquerade rule exists, and
/// status/list show the network.
#[test]
fn kill9_then_gc_leaves_no_network() {
    need_net!();
    let env = PodEnv::new();
    let mut child = env.spawn(&[
        "run",
        "--stage1=ns",
        "--net=default",
        &env.image,
        "--",
        "sleep",
        "600",
    ]);
    let (uuid, ip) = wait_network(&env);
    let dir = pod_dir(&env, &uuid);

    // Before: the lease, the host veth, the netns bind mount, the rules naming the pod.
    assert_eq!(
        leases_of(Path::new(DEFAULT_LEASES), &uuid),
        vec![ip.clone()]
    );
    let veth = route_dev(&ip).expect("a route to the pod");
    assert!(
        links().contains(&format!(": {veth}@")),
        "{veth} not in {}",
        links()
    );
    assert!(ark_tests::pods::mounts_under(&dir)
        .iter()
        .any(|m| m.ends_with("/net/netns")));
    let rules = iptables();
    let mine: Vec<&str> = rules.lines().filter(|l| l.contains(&uuid)).collect();
    assert!(!mine.is_empty(), "no rule names {uuid}:\n{rules}");
    // ptp's ipMasq: a POSTROUTING jump for the pod's address into a chain that masquerades.
    let jump = mine
        .iter()
        .find(|l| l.starts_with("-A POSTROUTING") && l.contains(&format!("-s {ip}/32")))
        .unwrap_or_else(|| panic!("no POSTROUTING rule for {ip}:\n{rules}"));
    let chain = jump
        .split_whitespace()
        .skip_while(|w| *w != "-j")
        .nth(1)
        .unwrap();
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("MASQUERADE")),
        "{chain} does not masquerade:\n{rules}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--format=json"])).unwrap();
    let nets = &list[0]["networks"];
    assert_eq!(nets[0]["network"], "default", "{list}");
    assert_eq!(nets[0]["interface"]["name"], "eth0", "{list}");

    let pid: i32 = env.status(&uuid)["pid"].parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_child(&mut child, Duration::from_secs(30));
    // The stage1 could not clean up: everything is still there.
    assert_eq!(
        leases_of(Path::new(DEFAULT_LEASES), &uuid),
        vec![ip.clone()]
    );
    env.ok(&["gc", "--grace-period=0s"]);

    assert!(leases_of(Path::new(DEFAULT_LEASES), &uuid).is_empty());
    assert!(
        !links().contains(&format!(": {veth}@")),
        "{veth} left:\n{}",
        links()
    );
    assert_eq!(route_dev(&ip), None);
    let rules = iptables();
    assert!(!rules.contains(&uuid), "rules left:\n{rules}");
    assert!(env.mounts_left().is_empty(), "{:?}", env.mounts_left());
    assert!(!dir.exists());
}

/// Two pods on one bridge network (the test's conflist) reach each other.
#[test]
fn two_pods_on_a_bridge_reach_each_other() {
    need_net!();
    let _bridge = BridgeGuard("arkt-br0");
    let env = PodEnv::new();
    let scratch = tempfile::tempdir().unwrap();
    let conf = bridge_network(scratch.path(), "ark-t-bridge", "arkt-br0", "10.231.7.0/24");
    let conf_flag = format!("--net-config-dir={}", conf.display());
    let mut server = env.spawn(&[
        "run",
        "--stage1=ns",
        "--net=ark-t-bridge",
        &conf_flag,
        &env.image,
        "--",
        "sh",
        "-c",
        "echo hello-from-a | busybox nc -l -p 7000",
    ]);
    let (_a, a_ip) = wait_network(&env);
    assert!(a_ip.starts_with("10.231.7."), "{a_ip}");
    // The second pod (found by its own store, so `only_pod` stays simple).
    let env_b = PodEnv::new();
    let o = env_b.output(&[
        "run",
        "--stage1=ns",
        "--net=ark-t-bridge",
        &conf_flag,
        &env_b.image,
        "--",
        "sh",
        "-c",
        &format!(
            "for i in 1 2 3 4 5; do busybox nc -w 3 {a_ip} 7000 </dev/null && break; sleep 1; done"
        ),
    ]);
    assert!(out(&o).contains("hello-from-a"), "{}{}", out(&o), err(&o));
    let st = wait_child(&mut server, Duration::from_secs(30));
    assert!(st.success(), "{st:?}");
    // The bridge's pods are torn down (the bridge itself stays, as CNI leaves it).
    let left = leases_of(&scratch.path().join("ipam/ark-t-bridge"), "");
    assert!(left.is_empty(), "leases left: {left:?}");
}

/// `-p 127.0.0.1:HOSTPORT:80` and `--port=80-tcp:HOSTPORT` (an image that declares 80/tcp)
/// make 127.0.0.1:HOSTPORT reach a server in the pod.
#[test]
fn port_forwards_reach_the_pod_from_localhost() {
    need_net!();
    let env = PodEnv::new();
    // An image declaring port 80/tcp (OCI ExposedPorts: `--port` calls it 80-tcp).
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("web-layout");
    ark_tests::images::busybox_oci_layout_tagged(&layout, "web");
    let st = Command::new("umoci")
        .args([
            "config",
            "--image",
            &format!("{}:web", layout.display()),
            "--config.exposedports",
            "80/tcp",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let web = format!("oci-layout:{}:web", layout.display());
    let serve = "mkdir -p /www && echo served-from-the-pod > /www/index.html && exec busybox httpd -f -p 80 -h /www";

    for (flags, host_port) in [
        (
            vec!["-p".to_string(), "127.0.0.1:18471:80".to_string()],
            18471u16,
        ),
        (vec!["--port=80-tcp:18472".to_string()], 18472),
    ] {
        let env = PodEnv::new();
        let mut args = vec!["run", "--stage1=ns"];
        args.extend(flags.iter().map(String::as_str));
        args.extend([web.as_str(), "--", "sh", "-c", serve]);
        let mut pod = env.spawn(&args);
        let (uuid, _) = wait_network(&env);
        let s = env.status(&uuid);
        assert!(
            s.get("port-0")
                .is_some_and(|p| p.contains(&format!("{host_port}->80/tcp"))),
            "{s:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let body = loop {
            let o = Command::new("curl")
                .args(["-s", "-m", "3", &format!("http://127.0.0.1:{host_port}/")])
                .output()
                .unwrap();
            if out(&o).contains("served-from-the-pod") || Instant::now() > deadline {
                break out(&o);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            body.contains("served-from-the-pod"),
            "{flags:?}: {body:?}\n{}",
            iptables()
        );
        env.ok(&["stop", &uuid]);
        wait_child(&mut pod, Duration::from_secs(30));
        // The forward is gone with the pod.
        assert!(!iptables().contains(&uuid));
    }
    // A name the image does not declare: one line, exit 125, no pod.
    let o = env.output(&[
        "run",
        "--stage1=ns",
        "--port=http:18473",
        &web,
        "--",
        "true",
    ]);
    ark_tests::pods::assert_one_line_error(&o, "no app image declares a port named \"http\"");
    assert!(env.pod_dirs().is_empty());
}

/// `--net=none`: only `lo`, and it is up.
#[test]
fn net_none_has_only_loopback_up() {
    need_net!();
    let env = PodEnv::new();
    let o = env.output(&[
        "run",
        "--stage1=ns",
        "--net=none",
        &env.image,
        "--",
        "sh",
        "-c",
        "ip -o link",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let lines: Vec<String> = out(&o).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(": lo:") && lines[0].contains("UP"),
        "{lines:?}"
    );
}

/// `--dns`, `--dns-search`, `--dns-opt`, `--hosts-entry` land in the app's files.
#[test]
fn dns_and_hosts_entries_land_in_the_app() {
    need_net!();
    let env = PodEnv::new();
    let o = env.output(&[
        "run",
        "--stage1=ns",
        "--net=none",
        "--dns=192.0.2.53",
        "--dns=2001:db8::53",
        "--dns-search=corp.example",
        "--dns-opt=ndots:3",
        "--hosts-entry=db.example=10.9.8.7",
        "--hostname=web1",
        &env.image,
        "--",
        "sh",
        "-c",
        "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; cat /etc/hostname",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    let parts: Vec<&str> = text.split("---\n").collect();
    assert_eq!(
        parts[0],
        "nameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch corp.example\noptions ndots:3\n"
    );
    assert!(
        parts[1].lines().any(|l| l == "10.9.8.7\tdb.example"),
        "{}",
        parts[1]
    );
    assert!(parts[1].contains("localhost web1"), "{}", parts[1]);
    assert_eq!(parts[2], "web1\n");
    // Bad values: one line, exit 125.
    for (flag, needle) in [
        ("--dns=nope", "--dns=\"nope\""),
        ("--hosts-entry=db", "HOST=IP"),
        ("--hosts-entry=bad_host=1.2.3.4", "hosts_entries"),
    ] {
        let o = env.output(&[
            "run",
            "--stage1=ns",
            "--net=none",
            flag,
            &env.image,
            "--",
            "true",
        ]);
        ark_tests::pods::assert_one_line_error(&o, needle);
    }
}

/// A broken conflist, and a plugin that exits non-zero: the one-line error naming it, exit
/// 125, and nothing left (the failing chain's earlier plugin is undone: no veth, lease, rule).
#[test]
fn broken_config_and_failing_plugin_leave_nothing() {
    need_net!();
    let env = PodEnv::new();
    let scratch = tempfile::tempdir().unwrap();
    let conf = scratch.path().join("net.d");
    broken_conflist(&conf);
    let conf_flag = format!("--net-config-dir={}", conf.display());
    let o = env.output(&[
        "run",
        "--stage1=ns",
        "--net=broken",
        &conf_flag,
        &env.image,
        "--",
        "true",
    ]);
    ark_tests::pods::assert_one_line_error(&o, "20-broken.conflist");
    assert!(env.pod_dirs().is_empty(), "{:?}", env.pod_dirs());

    // ptp (real) then a fake plugin that fails with a CNI error carrying a terminal escape.
    let ipam = scratch.path().join("ipam");
    let plugins = failing_network(
        scratch.path(),
        &conf,
        "ark-t-failing",
        "10.231.9.0/24",
        &ipam,
    );
    std::fs::remove_file(conf.join("20-broken.conflist")).unwrap();
    let o = env.output(&[
        "run",
        "--stage1=ns",
        "--net=ark-t-failing",
        &conf_flag,
        &format!("--cni-plugin-dir={}", plugins.display()),
        "--cni-plugin-dir=/usr/lib/cni",
        &env.image,
        "--",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(125), "{}", err(&o));
    let e = err(&o);
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].contains(&failer_error("ark-t-failing")), "{e}");
    assert!(!e.contains('\x1b'));
    let uuid = env.only_pod().expect("the pod");
    assert!(leases_of(&ipam.join("ark-t-failing"), &uuid).is_empty());
    assert!(!iptables().contains(&uuid));
    // ptp's host end had a route to the pod's address: gone with the veth.
    let routes = routes();
    assert!(!routes.contains("10.231.9."), "{routes}");
    assert!(!pod_dir(&env, &uuid).join("net/netns").exists());
    let mounts = ark_tests::pods::mounts_under(&pod_dir(&env, &uuid));
    assert!(
        !mounts.iter().any(|m| m.ends_with("/net/netns")),
        "{mounts:?}"
    );
}

/// `--net=host` is refused for kvm with the reason; CNI networks for fly likewise.
#[test]
fn host_for_kvm_and_cni_for_fly_are_refused() {
    need_net!();
    let env = PodEnv::new();
    let o = env.output(&[
        "run",
        "--stage1=kvm",
        "--net=host",
        &env.image,
        "--",
        "true",
    ]);
    ark_tests::pods::assert_one_line_error(
        &o,
        "a kvm pod cannot share the host's network namespace",
    );
    let o = env.output(&[
        "run",
        "--stage1=fly",
        "--net=default",
        &env.image,
        "--",
        "true",
    ]);
    ark_tests::pods::assert_one_line_error(&o, "a fly pod shares the host's network namespace");
    assert!(env.pod_dirs().is_empty());
}

/// 10 pods started at once on `default` get 10 distinct addresses and all reach the server.
#[test]
fn ten_pods_at_once_get_distinct_addresses() {
    need_net!();
    let port = http_server("ten-pods-token");
    let env = PodEnv::new();
    let script = format!("ip -o -4 addr show eth0; wget -q -O - http://{GATEWAY}:{port}/");
    let mut children: Vec<_> = (0..10)
        .map(|_| {
            env.spawn(&[
                "run",
                "--stage1=ns",
                "--net=default",
                &env.image,
                "--",
                "sh",
                "-c",
                &script,
            ])
        })
        .collect();
    let mut addrs = std::collections::BTreeSet::new();
    for c in &mut children {
        wait_child(c, Duration::from_secs(120));
    }
    for c in children {
        let o = c.wait_with_output().unwrap();
        let text = out(&o);
        assert!(
            o.status.success() && text.contains("ten-pods-token"),
            "{text}{}",
            err(&o)
        );
        let addr = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .expect("an address")
            .to_string();
        addrs.insert(addr);
    }
    assert_eq!(addrs.len(), 10, "{addrs:?}");
}
