//! Issue 9 item 10: an app that fills the disk keeps its status. The ark data dir is a small
//! tmpfs, so the app's writes (its root lives there) fill the very filesystem that holds the
//! pod's status files.

use std::path::PathBuf;
use std::process::Command;

use ark_tests::pods::{busybox_image, pod_cgroups, pods_unavailable, scenarios, PodEnv};
use ark_tests::skip;

/// Unmounts the test's tmpfs (lazily) even when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn app_filling_the_disk_keeps_its_status(flavor: &str) {
    if let Some(why) = pods_unavailable() {
        skip!("{why}");
    }
    if flavor == "kvm" {
        if let Some(why) = ark_tests::kvm_unavailable() {
            skip!("{why}");
        }
        if ark_tests::guest_kernel().is_none() {
            skip!("no guest kernel: set ARK_KERNEL to kernel-config/build.sh's output");
        }
    }
    scenarios::stage1_installed(flavor);
    // The tmpfs goes on an outer temp dir and the test's --dir inside it, so that the drops
    // run in order: the pods (PodEnv), the unmount, the outer dir.
    let size = if flavor == "kvm" {
        "size=16m,mode=0700"
    } else {
        "size=64m,mode=0700"
    };
    let outer = tempfile::Builder::new()
        .prefix("ark-full-")
        .tempdir()
        .unwrap();
    let mounted = Command::new("mount")
        // Small for kvm: its writes cross virtio-fs, slow on an emulating (kvm_pvm) host.
        .args(["-t", "tmpfs", "-o", size, "tmpfs"])
        .arg(outer.path())
        .status()
        .unwrap();
    if !mounted.success() {
        skip!("cannot mount a tmpfs on {}", outer.path().display());
    }
    let _unmount = Unmount(outer.path().to_path_buf());
    let env = PodEnv {
        dir: tempfile::Builder::new()
            .prefix("store-")
            .tempdir_in(outer.path())
            .unwrap(),
        image: busybox_image(),
    };
    let out = env.output(&[
        "run",
        &format!("--stage1={flavor}"),
        &env.image,
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/fill bs=1M; df -k / | tail -1; exit 3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The disk really was full (dd stopped on ENOSPC, not earlier).
    assert!(
        stderr.contains("No space left on device") || stdout.contains("No space left"),
        "the app did not fill the disk: {stdout} {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let uuid = env.only_pod().expect("the pod stays until gc");
    let s = env.status(&uuid);
    assert_eq!(s["state"], "exited", "{s:?}");
    assert_eq!(s.get("app-busybox").map(String::as_str), Some("3"), "{s:?}");
    assert_eq!(s["exit-code"], "3", "{s:?}");
    assert!(!s.contains_key("reason"), "{s:?}");
    // And gc can still clean up a full store.
    let gc = env.ok(&["gc", "--grace-period=0s"]);
    assert!(gc.contains(&uuid), "{gc}");
    assert!(env.pod_dirs().is_empty(), "{:?}", env.pod_dirs());
    assert!(pod_cgroups(&uuid).is_empty(), "{:?}", pod_cgroups(&uuid));
    assert!(env.mounts_left().is_empty(), "{:?}", env.mounts_left());
}

#[test]
fn ns_app_filling_the_disk_keeps_its_status() {
    app_filling_the_disk_keeps_its_status("ns");
}

#[test]
fn fly_app_filling_the_disk_keeps_its_status() {
    app_filling_the_disk_keeps_its_status("fly");
}

/// kvm: the app writes through virtio-fs into the pod directory on the host, whose status
/// files the stage1 writes from the vsock channel's messages.
#[test]
fn kvm_app_filling_the_disk_keeps_its_status() {
    app_filling_the_disk_keeps_its_status("kvm");
}
