//! The static ark-init as PID 1 the way a VM runs it (`on_exit: reboot`, devtmpfs, its own
//! pseudo filesystems, no stage1 helping inside), in a fresh pid + mount namespace made by
//! util-linux `unshare`. In a pid namespace `reboot(RB_AUTOBOOT)` kills its init with SIGHUP,
//! which is how the test sees the power-off path taken after the statuses were written.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use ark_os::StatusDir;
use ark_pod_spec::{OnExit, Stage2Config, StatusTransport};
use ark_tests::fixtures::{pod, stdout, TestPod};
use ark_tests::skip_unless_able;
use serde_json::json;

fn run_as_pid1(p: &TestPod, cfg: &Stage2Config) -> std::process::Output {
    std::fs::write(p.layout.stage2_config(), cfg.to_json()).unwrap();
    run_as_pid1_with(p, &[])
}

fn run_as_pid1_with(p: &TestPod, env: &[(&str, String)]) -> std::process::Output {
    let root = p.layout.stage1_rootfs();
    std::fs::create_dir_all(root.join("ark/status")).unwrap();
    let out = Command::new("timeout")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args([
            "60", "unshare", "--pid", "--mount", "--uts", "--ipc", "--fork", "chroot",
        ])
        .arg(&root)
        .arg("/init")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "exit {:?}\n{}\n{}",
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn vm_config(uuid: &str) -> Stage2Config {
    let mut c = Stage2Config::new(
        uuid,
        StatusTransport::File {
            dir: "/ark/status".into(),
        },
        OnExit::Reboot,
    );
    c.hostname = Some("vmhost".into());
    c.mount_pseudo_fs = true;
    c
}

#[test]
fn reports_then_powers_off() {
    skip_unless_able!();
    let p = pod(
        "kvm",
        json!({ "apps": [
            { "name": "a", "exec": ["sh", "-c", "echo in-vm; cat /etc/hostname; sleep 0.2 & exit 7"] },
            { "name": "b", "exec": ["true"], "user": "nobody-here" },
        ] }),
    );
    let out = run_as_pid1(&p, &vm_config(&p.manifest.uuid));
    // Killed by SIGHUP: reboot() was called (timeout(1) would have said 124).
    assert_eq!(
        out.status.signal().or(out.status.code().map(|c| c - 128)),
        Some(1)
    );
    assert_eq!(stdout(&out), "in-vm\nvmhost\n");
    let status = StatusDir::new(p.layout.in_root("/ark/status"));
    assert_eq!(status.read_app("a").unwrap().exit_code, Some(7));
    let b = status.read_app("b").unwrap();
    assert!(b.error.unwrap().contains("nobody-here"));
    assert!(p.mounts_left().is_empty(), "{:?}", p.mounts_left());
}

#[test]
fn a_broken_manifest_is_reported_not_hung() {
    skip_unless_able!();
    let p = pod(
        "kvm",
        json!({ "apps": [{ "name": "a", "exec": ["true"] }] }),
    );
    std::fs::write(p.layout.rootfs_manifest(), "{ not json").unwrap();
    let out = run_as_pid1(&p, &vm_config(&p.manifest.uuid));
    assert_eq!(
        out.status.signal().or(out.status.code().map(|c| c - 128)),
        Some(1)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pod manifest"));
}

#[test]
fn config_from_a_config_disk_named_on_the_kernel_command_line() {
    skip_unless_able!();
    let p = pod(
        "kvm",
        json!({ "apps": [{ "name": "a", "exec": ["sh", "-c",
            "cat /etc/hostname; grep -c example.invalid /etc/resolv.conf; exit 4"] }] }),
    );
    // No /ark/stage2.json (a read-only root): the config is on a disk the kernel command line
    // names, `ark_stage2=/dev/vdb`, which the kernel passes to init in its environment.
    assert!(!p.layout.stage2_config().exists());
    let mut cfg = vm_config(&p.manifest.uuid);
    // Far past the 2048-byte command line the config once rode on.
    cfg.etc.resolv_conf = Some("search a-long-domain-name.example.invalid\n".repeat(200));
    // The disk, as a file where init (chrooted into the stage1 root) finds it.
    std::fs::write(
        p.layout.in_root("/stage2.disk"),
        cfg.to_disk_image().unwrap(),
    )
    .unwrap();
    let out = run_as_pid1_with(
        &p,
        &[(ark_pod_spec::STAGE2_CMDLINE_KEY, "/stage2.disk".into())],
    );
    assert_eq!(stdout(&out), "vmhost\n200\n");
    let status = StatusDir::new(p.layout.in_root("/ark/status"));
    assert_eq!(status.read_app("a").unwrap().exit_code, Some(4));
}

#[test]
fn a_read_only_root_is_made_writable() {
    skip_unless_able!();
    let p = pod(
        "kvm",
        json!({ "apps": [{ "name": "a", "exec": ["sh", "-c",
            "echo written > /tmp/x && cat /tmp/x; cat /etc/hostname; exit 5"] }] }),
    );
    let root = p.layout.stage1_rootfs();
    std::fs::create_dir_all(root.join("ark/status")).unwrap();
    std::fs::write(
        p.layout.stage2_config(),
        vm_config(&p.manifest.uuid).to_json(),
    )
    .unwrap();
    // The root as a read-only mount, like an erofs image: guest-init has to overlay it.
    let script = format!(
        "mount --bind {r} {r} && mount -o remount,bind,ro {r} && exec chroot {r} /init",
        r = root.display()
    );
    let out = Command::new("timeout")
        .args([
            "60", "unshare", "--pid", "--mount", "--fork", "sh", "-c", &script,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    eprintln!("{out:?}");
    assert_eq!(
        stdout(&out),
        "written\nvmhost\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing reached the image itself.
    assert!(!p.layout.app_rootfs("a").join("tmp/x").exists());
    assert!(!root.join("proc").exists());
}
