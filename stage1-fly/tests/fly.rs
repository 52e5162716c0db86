//! ark-stage1-fly for real: host namespaces, chroot, guest-init as an ordinary subreaper
//! process. Needs root and busybox-static.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ark_pod_spec::AppState;
use ark_tests::fixtures::{pod, stderr, stdout, wait_for};
use ark_tests::skip_unless_able;
use serde_json::json;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ark-stage1-fly"))
}

fn host_hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn runs_in_host_namespaces_with_statuses_and_volumes() {
    skip_unless_able!();
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("in"), "from-host\n").unwrap();
    let p = pod(
        "fly",
        json!({
            "apps": [
                { "name": "main", "exec": ["sh", "-c", "echo hi; hostname; cat /data/in; echo $ARK_APP_NAME; exit 3"],
                  "mounts": [{ "volume": "v", "target": "/data" }] },
                { "name": "other", "exec": ["true"] }
            ],
            "volumes": [{ "name": "v", "kind": "host", "source": vol.path(), "read_only": true }]
        }),
    );
    let out = p.run(&bin());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("hi\n{}\nfrom-host\nmain\n", host_hostname())
    );
    let main = p.status().read_app("main").unwrap();
    assert_eq!((main.state, main.exit_code), (AppState::Exited, Some(3)));
    // Host pid namespace: the reported pid is a host pid, not 2.
    assert!(main.pid.unwrap() > 2);
    assert_eq!(p.status().read_app("other").unwrap().exit_code, Some(0));
    assert_eq!(p.status().read_pod().unwrap().exit_code, 3);
    assert!(p.mounts_left().is_empty(), "{:?}", p.mounts_left());
    assert!(p.cgroups_left().is_empty());
}

#[test]
fn sigterm_stops_apps_and_orphans_do_not_outlive_the_pod() {
    skip_unless_able!();
    // The app leaves a background sleep behind (an orphan guest-init adopts as subreaper).
    // ...and a subshell whose own child is handed to guest-init only once the subshell dies.
    let script = "sleep 1000 & echo $! > /tmp/orphan; \
                  (sleep 1002 & echo $! > /tmp/grandchild; wait) & exec sleep 999";
    let p = pod(
        "fly",
        json!({ "apps": [{ "name": "a", "exec": ["sh", "-c", script] }] }),
    );
    let child = p.command(&bin()).spawn().unwrap();
    assert!(wait_for(20, || p.status().read_app("a").is_some()));
    let orphan_file = p.layout.app_rootfs("a").join("tmp/orphan");
    assert!(wait_for(5, || orphan_file.exists()));
    std::thread::sleep(Duration::from_millis(200));
    let orphan: i32 = std::fs::read_to_string(&orphan_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{orphan}")).exists());
    let grandchild_file = p.layout.app_rootfs("a").join("tmp/grandchild");
    assert!(wait_for(5, || grandchild_file.exists()));
    std::thread::sleep(Duration::from_millis(100));
    let grandchild: i32 = std::fs::read_to_string(&grandchild_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in pid_t")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    assert_eq!(p.status().read_app("a").unwrap().signal, Some(15));
    assert!(
        wait_for(5, || !Path::new(&format!("/proc/{orphan}")).exists()),
        "orphan {orphan} outlived the pod"
    );
    assert!(
        wait_for(5, || !Path::new(&format!("/proc/{grandchild}")).exists()),
        "grandchild {grandchild} outlived the pod"
    );
}

#[test]
fn memory_limit_applies_in_fly_too() {
    skip_unless_able!();
    let p = pod(
        "fly",
        json!({ "apps": [{
            "name": "hog",
            "exec": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            "limits": { "memory_bytes": 16777216 }
        }] }),
    );
    let out = p.run(&bin());
    assert_eq!(out.status.code(), Some(137));
    assert!(p.status().read_app("hog").unwrap().oom_killed);
    assert!(p.cgroups_left().is_empty());
}
