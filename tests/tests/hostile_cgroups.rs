//! Issue 9 item 2, the device cgroup: an ns or fly app with CAP_MKNOD can create a node of a
//! host block device but not open it (v1 `devices` allowlist / v2 BPF device program), the
//! standard nodes keep working, and the pod's devices cgroups go with the pod. The only host
//! device touched is a loop device attached to a temp file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ark_os::cgroup::{devices, DEFAULT_ALLOWED};
use ark_tests::loopdev::LoopDevice;
use ark_tests::pods::{pod_cgroups, scenarios, wait_child, PodEnv};
use ark_tests::skip;

const SECRET: &[u8] = b"host-disk-secret";

/// A temp file with known content behind a loop device.
fn backing_loop() -> Result<(tempfile::NamedTempFile, LoopDevice), String> {
    let mut file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let mut data = SECRET.repeat(64 * 1024 / SECRET.len());
    data.resize(1024 * 1024, 0);
    std::io::Write::write_all(&mut file, &data).map_err(|e| e.to_string())?;
    let dev = LoopDevice::attach(file.path())?;
    Ok((file, dev))
}

fn unchanged(file: &Path) -> bool {
    std::fs::read(file).is_ok_and(|d| d.starts_with(SECRET) && d.len() == 1024 * 1024)
}

/// Mount points of a filesystem type (`cgroup2`) or of a v1 controller (`devices`).
fn mount_of(what: &str) -> Option<PathBuf> {
    ark_os::mountinfo::read().ok()?.into_iter().find_map(|m| {
        let hit = m.fs_type == what || (m.fs_type == "cgroup" && m.has_super_option(what));
        hit.then_some(m.mount_point)
    })
}

macro_rules! need_pods {
    ($flavor:expr) => {
        if let Some(why) = ark_tests::pods::pods_unavailable() {
            skip!("{why}");
        }
        scenarios::stage1_installed($flavor);
    };
}

/// The app's attempt (root, CAP_MKNOD, CAP_SYS_ADMIN): a tmpfs of its own mounted without
/// nodev — so no nodev mount masks what the cgroup does — a node there for the host's loop
/// device, read and written; then `/dev/null`. `extra` follows.
fn block_device_script(lo: &LoopDevice, extra: &str) -> String {
    format!(
        "mkdir /m && mount -t tmpfs -o dev t /m && mknod /m/l0 b {} {} && echo mknod-ok; \
         head -c16 /m/l0; echo; echo x > /m/l0; \
         head -c1 /dev/null && echo null-ok{extra}",
        lo.major, lo.minor
    )
}

/// What the app printed, checked: mknod worked (`m`), the read and the write were both refused
/// by the device cgroup, nothing of the host device came back, `/dev/null` still works.
fn assert_refused_by_the_device_cgroup(out: &std::process::Output) -> String {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("mknod-ok"), "mknod is allowed (m): {all}");
    assert!(
        !all.contains(std::str::from_utf8(SECRET).unwrap()),
        "the app read the host device: {all}"
    );
    assert_eq!(
        all.matches("Operation not permitted").count(),
        2,
        "read and write of the node must be refused by the device cgroup: {all}"
    );
    assert!(all.contains("null-ok"), "/dev/null works: {all}");
    all
}

/// The app (root, CAP_MKNOD, CAP_SYS_ADMIN) mounts a tmpfs of its own without nodev — so no
/// nodev mount masks what the cgroup does — makes a node for the host's loop device there and
/// tries to read and write it.
fn app_cannot_open_a_host_block_device(flavor: &str) {
    need_pods!(flavor);
    let (file, lo) = match backing_loop() {
        Ok(x) => x,
        Err(e) => skip!("no loop device: {e}"),
    };
    let env = PodEnv::new();
    let script = block_device_script(&lo, "; head -c4 /dev/urandom | wc -c");
    let out = env.output(&[
        "run",
        &format!("--stage1={flavor}"),
        &env.image,
        "--caps-retain=CAP_MKNOD,CAP_DAC_OVERRIDE,CAP_SYS_ADMIN",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let all = assert_refused_by_the_device_cgroup(&out);
    assert!(
        all.lines().any(|l| l.trim() == "4"),
        "/dev/urandom works: {all}"
    );
    assert!(unchanged(file.path()), "the backing file was written");
    drop(lo);
}

#[test]
fn ns_app_cannot_open_a_host_block_device() {
    app_cannot_open_a_host_block_device("ns");
}

/// The same on a host without a v1 devices hierarchy (it is unmounted in a private mount
/// namespace ark then runs in): the pod gets a cgroup2 dir and the BPF device program.
#[test]
fn ns_app_on_a_host_without_v1_devices_cannot_open_a_host_block_device() {
    need_pods!("ns");
    let (Some(v1), Some(v2)) = (mount_of("devices"), mount_of("cgroup2")) else {
        skip!("needs a hybrid host (v1 devices and cgroup2 mounted)");
    };
    let (file, lo) = match backing_loop() {
        Ok(x) => x,
        Err(e) => skip!("no loop device: {e}"),
    };
    let env = PodEnv::new();
    let script = block_device_script(&lo, "");
    let ark = env.ark();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("umount {} && exec \"$0\" \"$@\"", v1.display()))
        .arg(ark.get_program())
        .args(ark.get_args())
        .args([
            "run",
            "--stage1=ns",
            &env.image,
            "--caps-retain=CAP_MKNOD,CAP_DAC_OVERRIDE,CAP_SYS_ADMIN",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_refused_by_the_device_cgroup(&out);
    // The pod's cgroup2 dir went with it.
    let uuid = env.only_pod().unwrap();
    assert!(!v2.join("ark").join(&uuid).exists(), "cgroup2 dir left");
    assert!(unchanged(file.path()), "the backing file was written");
}

#[test]
fn fly_app_cannot_open_a_host_block_device() {
    app_cannot_open_a_host_block_device("fly");
}

/// The standard allowlist, as v1 `devices.list` shows it.
fn want_list() -> Vec<String> {
    let mut v: Vec<String> = DEFAULT_ALLOWED.iter().map(|r| r.v1_line()).collect();
    v.sort();
    v
}

fn devices_list(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("devices.list"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut v: Vec<String> = text.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// While a pod runs: its pod, stage2 and app cgroups in the v1 devices hierarchy hold only the
/// standard nodes, and guest-init and the app are in them. Then the pod ends (`stop`, or
/// `kill -9` of the stage1 then gc) and the devices cgroups are gone.
fn devices_cgroups_confine_and_go_with_the_pod(flavor: &str, kill9: bool) {
    need_pods!(flavor);
    let Some(root) = mount_of("devices") else {
        skip!("no v1 devices hierarchy here (the v2 program is tested on its own)");
    };
    let env = PodEnv::new();
    let mut run = env.spawn(&[
        "run",
        &format!("--stage1={flavor}"),
        &env.image,
        "--",
        "sleep",
        "600",
    ]);
    let uuid = env.wait_pod(Duration::from_secs(60));
    env.wait_status(&uuid, Duration::from_secs(60), "the app running", |s| {
        s.get("app-busybox").map(String::as_str) == Some("running")
    });
    let pod = root.join("ark").join(&uuid);
    for dir in [pod.clone(), pod.join("stage2"), pod.join("app.busybox")] {
        assert_eq!(devices_list(&dir), want_list(), "{}", dir.display());
    }
    let pids = |leaf: &str| std::fs::read_to_string(pod.join(leaf).join("cgroup.procs")).unwrap();
    assert!(!pids("stage2").trim().is_empty(), "guest-init is in stage2");
    assert!(
        !pids("app.busybox").trim().is_empty(),
        "the app is in its leaf"
    );
    assert!(
        pod_cgroups(&uuid).contains(&pod),
        "{:?}",
        pod_cgroups(&uuid)
    );

    if kill9 {
        run.kill().unwrap();
        run.wait().unwrap();
        env.wait_status(
            &uuid,
            Duration::from_secs(60),
            "exited after kill -9",
            |s| s["state"] == "exited",
        );
        // The stage1 died without cleaning: gc must remove the devices cgroups too.
        scenarios::gc_cleans_everything(&env, &uuid);
    } else {
        env.ok(&["stop", "--timeout=20s", &uuid]);
        wait_child(&mut run, Duration::from_secs(60));
        // Removed by the stage1 as the pod ends, before any gc.
        assert!(!pod.exists(), "{} left after the pod ended", pod.display());
    }
    assert!(!pod.exists());
}

#[test]
fn ns_devices_cgroups_confine_and_go_with_the_pod() {
    devices_cgroups_confine_and_go_with_the_pod("ns", false);
}

#[test]
fn fly_devices_cgroups_confine_and_go_with_the_pod() {
    devices_cgroups_confine_and_go_with_the_pod("fly", false);
}

#[test]
fn ns_devices_cgroups_removed_by_gc_after_kill9() {
    devices_cgroups_confine_and_go_with_the_pod("ns", true);
}

#[test]
fn fly_devices_cgroups_removed_by_gc_after_kill9() {
    devices_cgroups_confine_and_go_with_the_pod("fly", true);
}

/// A cgroup v2 directory, removed on drop (its processes have exited by then).
struct TempCgroup(PathBuf);

impl Drop for TempCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `sh -c SCRIPT` moved into `cgroup` first; returns (exit ok, stdout+stderr).
fn sh_in(cgroup: &Path, script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs || exit 99; {script}",
            cgroup.display()
        ))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The v2 BPF device program for real, on this host's cgroup2 mount (a hybrid host's
/// controller-less `unified` works too: device programs attach to any cgroup2 directory).
#[test]
fn v2_device_program_allows_only_the_standard_nodes() {
    if !ark_tests::is_root() {
        skip!("needs root (cgroups, BPF)");
    }
    let Some(root) = mount_of("cgroup2") else {
        skip!("no cgroup2 mount");
    };
    let (file, lo) = match backing_loop() {
        Ok(x) => x,
        Err(e) => skip!("no loop device: {e}"),
    };
    let read_loop = format!(
        "head -c1 /dev/null && echo null-ok; head -c16 {0}; echo; echo x > {0}; \
         echo done",
        lo.dev.display()
    );
    let id = std::process::id();
    // Without the program the same script reads the device: the test can fail.
    let open = TempCgroup(root.join(format!("ark-test-open-{id}")));
    std::fs::create_dir(&open.0).unwrap();
    let (_, out) = sh_in(&open.0, &format!("head -c16 {}", lo.dev.display()));
    assert!(
        out.contains(std::str::from_utf8(SECRET).unwrap()),
        "control read failed: {out}"
    );

    let confined = TempCgroup(root.join(format!("ark-test-devices-{id}")));
    std::fs::create_dir(&confined.0).unwrap();
    devices::restrict_v2(&confined.0, &DEFAULT_ALLOWED).unwrap();
    let (_, out) = sh_in(&confined.0, &read_loop);
    assert!(out.contains("null-ok"), "{out}");
    assert!(out.contains("done"), "{out}");
    assert!(
        !out.contains(std::str::from_utf8(SECRET).unwrap()),
        "read through the program: {out}"
    );
    assert_eq!(out.matches("Operation not permitted").count(), 2, "{out}");
    // A child cgroup is covered too (the program applies to the subtree).
    let child = TempCgroup(confined.0.join("child"));
    std::fs::create_dir(&child.0).unwrap();
    let (_, out) = sh_in(&child.0, &read_loop);
    assert_eq!(out.matches("Operation not permitted").count(), 2, "{out}");
    drop(child);
    assert!(unchanged(file.path()), "the backing file was written");
}
