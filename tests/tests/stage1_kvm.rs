//! `ark run --stage1=kvm` end to end: the real ark, stage1-kvm, VMM, guest kernel
//! (`$ARK_KERNEL`, built by kernel-config/build.sh) and guest-init as the guest's init.
//!
//! Every test here boots a VM, which takes tens of seconds on a kvm_pvm host: keep them few and
//! make each one assert as much as it can.

use std::process::{Command, Stdio};

use ark_tests::pods::{scenarios, PodEnv};
use ark_tests::skip;

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The headline: a command in a microVM, its output on ark's stdout, its exit code as ark's.
#[test]
fn kvm_run_prints_and_exits_with_the_apps_code() {
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let out = env.output(&[
        "run",
        "--stage1=kvm",
        "--hostname=kvmpod",
        &env.image,
        "--",
        "sh",
        "-c",
        "cat /etc/hostname; echo hi; exit 7",
    ]);
    let stdout = stdout_of(&out);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {}",
        stderr_of(&out)
    );
    // The pod's hostname as the app sees /etc/hostname inside the guest, then the app's line.
    let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    let hi = lines.iter().position(|l| *l == "hi").expect("hi printed");
    assert!(hi >= 1 && lines[hi - 1] == "kvmpod", "stdout: {stdout}");
    // Without --debug the guest kernel keeps quiet.
    assert!(
        !stdout.contains("Linux version"),
        "kernel log leaked: {stdout}"
    );

    let uuid = env.only_pod().expect("the pod stays until gc");
    let s = env.status(&uuid);
    assert_eq!(s["state"], "exited", "{s:?}");
    assert_eq!(s["exit-code"], "7", "{s:?}");
    assert_eq!(s["app-busybox"], "7", "{s:?}");
    let manifest = env.ok(&["cat-manifest", &uuid]);
    assert!(manifest.contains("\"kvm\""), "{manifest}");
    // stage1-kvm logged the app's output (from vsock) on the host side of the pod.
    assert_eq!(env.app_log(&uuid, "busybox"), "kvmpod\nhi\n");
    scenarios::gc_cleans_everything(&env, &uuid);
}

/// Two apps in one VM, root on a block image (erofs, made by stage0 at prepare): both statuses
/// come back over vsock, ark exits with the first non-zero. The stage2 config, here made big by
/// /etc/hosts entries, is far past the 2048-byte kernel command line it once rode on.
#[test]
fn kvm_two_apps_on_a_block_root() {
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    let entries: Vec<String> = (0..80)
        .map(|i| format!("--hosts-entry=host-{i}.a-long-domain.example.invalid=10.0.0.{i}"))
        .collect();
    let mut flags = vec!["--stage1-kvm-root=blk"];
    flags.extend(entries.iter().map(String::as_str));
    let (env, uuid) = scenarios::two_apps_both_statuses_with("kvm", &flags);
    let manifest: serde_json::Value =
        serde_json::from_str(&env.ok(&["cat-manifest", &uuid])).unwrap();
    assert_eq!(
        manifest["stage1"]["options"]["kvm.root"], "blk",
        "{manifest}"
    );
    scenarios::gc_cleans_everything(&env, &uuid);
}

/// --set-env, --user, --working-dir and a host volume (a virtio-fs device mounted by guest-init)
/// reach the app in the VM; the app's write to the volume shows up on the host.
#[test]
fn kvm_env_user_cwd_volume() {
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    scenarios::env_user_cwd_volume("kvm");
}

/// `ark stop` of a sleeping kvm pod: guest-init SIGTERMs the app, reports, powers off.
#[test]
fn kvm_stop_a_sleeping_pod() {
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    scenarios::stop_a_sleeping_pod("kvm");
}

/// Killing the VMM (stage1-kvm, which ark exec'd) leaves an exited pod that gc cleans.
#[test]
fn kvm_kill9_then_gc() {
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    scenarios::kill9_then_gc("kvm");
}

/// A missing kernel is a one-line error naming it and how to build one, not a hang. No VM boots.
#[test]
fn kvm_missing_kernel_is_a_clear_error() {
    if let Some(why) = ark_tests::pods::pods_unavailable() {
        skip!("{why}");
    }
    if let Some(why) = ark_tests::kvm_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    let out = env
        .ark()
        .env("ARK_KERNEL", "/nonexistent/vmlinux")
        .args(["run", "--stage1=kvm", &env.image, "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("/nonexistent/vmlinux"), "{err}");
}

/// A host without /dev/kvm (hidden here by a private /dev in a mount namespace) gets a
/// one-line error naming it, not a hang. No VM boots.
#[test]
fn kvm_without_dev_kvm_is_a_clear_error() {
    if let Some(why) = ark_tests::pods::pods_unavailable() {
        skip!("{why}");
    }
    if let Some(why) = ark_tests::pods::kvm_pods_unavailable() {
        skip!("{why}");
    }
    let env = PodEnv::new();
    // Prepare outside (the image store needs nothing from /dev), run inside the namespace.
    let uuid = env
        .ok(&["prepare", "--stage1=kvm", &env.image, "--", "true"])
        .trim()
        .to_string();
    let script = format!(
        "mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && exec {} --dir {} run-prepared {uuid}",
        ark_tests::ark_bin().display(),
        env.path().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("/dev/kvm"), "{err}");
    let s = env.status(&uuid);
    assert_eq!(s["state"], "exited", "{s:?}");
}
