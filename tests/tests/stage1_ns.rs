//! Pods in the ns flavor (namespaces + cgroups, guest-init as PID 1), run for real with the
//! busybox image through the image store.

use ark_tests::pods::{scenarios, PodEnv};
use ark_tests::skip;

const FLAVOR: &str = "ns";

macro_rules! need_pods {
    () => {
        if let Some(why) = ark_tests::pods::pods_unavailable() {
            skip!("{why}");
        }
        scenarios::stage1_installed(FLAVOR);
    };
}

ark_tests::flavor_scenarios!(FLAVOR;
    run_prints_and_exits_with_the_apps_code,
    two_apps_both_statuses,
    env_user_cwd_volume,
    read_only_volume,
    stop_a_sleeping_pod,
    enter_runs_inside,
    kill9_then_gc,
    run_then_gc,
    prepare_then_run_prepared,
    interactive_stdin,
);

/// An app over its memory limit is OOM-killed and its status says so.
#[test]
fn memory_limit_oom_kills_the_app() {
    need_pods!();
    let env = PodEnv::new();
    let out = env.output(&[
        "run",
        "--stage1=ns",
        &env.image,
        "--memory=16M",
        "--",
        "sh",
        "-c",
        // The shell doubles a string until it cannot: far past 16 MiB.
        "a=0123456789abcdef; while true; do a=$a$a; done",
    ]);
    let uuid = env.only_pod().unwrap();
    let s = env.status(&uuid);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{s:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["app-busybox"], "137", "{s:?}");
    assert_eq!(s["app-busybox-signal"], "9", "{s:?}");
    assert_eq!(
        s.get("app-busybox-oom-killed").map(String::as_str),
        Some("true"),
        "{s:?}"
    );
    scenarios::gc_cleans_everything(&env, &uuid);
}

/// The pod has its own hostname, pid namespace (guest-init is PID 1) and, with --net=none,
/// only a loopback interface.
#[test]
fn namespaces_hostname_pid1_and_net_none() {
    need_pods!();
    let env = PodEnv::new();
    let out = env.output(&[
        "run",
        "--stage1=ns",
        "--hostname=podhost",
        "--net=none",
        &env.image,
        "--",
        "sh",
        "-c",
        "hostname; cat /proc/1/comm; cat /proc/net/dev",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "podhost", "{stdout}");
    assert_eq!(lines[1], "init", "PID 1 of the pod is guest-init: {stdout}");
    // Interfaces: header (2 lines) + lo only.
    let ifaces: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains(':') && !l.contains('|'))
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(ifaces, ["lo"], "{stdout}");
}

/// --caps-retain keeps exactly the named capabilities; the default set is Docker's without
/// CAP_MKNOD.
#[test]
fn capabilities_follow_the_flags() {
    need_pods!();
    let env = PodEnv::new();
    let cap_eff = |flags: &[&str]| -> u64 {
        let mut args = vec!["run", "--stage1=ns", &env.image];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "cat", "/proc/self/status"]);
        let out = env.output(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with("CapEff:"))
            .unwrap_or_else(|| panic!("{stdout}"));
        u64::from_str_radix(line["CapEff:".len()..].trim(), 16).unwrap()
    };
    // CAP_CHOWN = 0, CAP_NET_BIND_SERVICE = 10.
    assert_eq!(
        cap_eff(&["--caps-retain=CAP_CHOWN,net_bind_service"]),
        1 | 1 << 10
    );
    let default = cap_eff(&[]);
    assert_eq!(default.count_ones(), 13, "{default:x}");
    assert_eq!(default & (1 << 27), 0, "no CAP_MKNOD by default");
    assert_eq!(default & (1 << 21), 0, "no CAP_SYS_ADMIN by default");
    // CAP_KILL = 5.
    assert_eq!(cap_eff(&["--caps-remove=CAP_KILL"]), default & !(1 << 5));
}
