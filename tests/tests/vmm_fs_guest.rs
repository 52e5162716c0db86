//! A real Linux guest with its root on virtio-fs: everyday file operations keep working, and
//! what the guest asks for that the host would honour (device nodes, setuid files) does not
//! reach the host directory. The hostile-kernel cases (hand-built FUSE requests) are the
//! device's unit tests in vmm/src/devices/fs/tests.rs; this is the same policy seen from a
//! well-behaved guest's root shell.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use ark_tests::{skip, vm};

const GUEST_SCRIPT: &str = r##"#!/bin/sh
mount -t proc proc /proc
cd /root
r() { "$@"; echo "step $STEP=$?"; }
STEP=create r sh -c 'echo data > f && chmod 640 f'
STEP=mkdir r mkdir -p d/e
STEP=rename-over r sh -c 'echo new > f.tmp && mv f.tmp f'
STEP=links r sh -c 'ln -s f link && ln f hard'
STEP=mkfifo r mkfifo fifo
STEP=whiteout r mknod wh c 0 0
STEP=chmod-suid r sh -c 'echo "#!/bin/sh" > suid && chmod 4755 suid'
STEP=chmod-sgid-dir r sh -c 'mkdir sgid-dir && chmod 2775 sgid-dir'
STEP=mknod-blk r mknod blk b 7 0
STEP=mknod-chr r mknod chr c 1 3
STEP=append-host-suid r sh -c 'echo appended >> host-suid'
mkdir -p ov/l ov/m /tmp/ov && echo lower > ov/l/gone && echo lower > ov/l/kept
mount -t tmpfs tmp /tmp/ov && mkdir /tmp/ov/u /tmp/ov/w
STEP=overlay-mount r mount -t overlay ov -o lowerdir=/root/ov/l,upperdir=/tmp/ov/u,workdir=/tmp/ov/w /root/ov/m
STEP=overlay-rm r rm /root/ov/m/gone
STEP=overlay-write r sh -c 'echo upper > /root/ov/m/kept'
STEP=overlay-view r sh -c 'test ! -e /root/ov/m/gone && grep -q upper /root/ov/m/kept && grep -q lower /root/ov/l/gone'
umount /root/ov/m
sync
echo ARK_FS_GUEST_DONE
poweroff -f
"##;

fn steps(serial: &str) -> Vec<(String, String)> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("step "))
        .filter_map(|s| s.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn guest_file_operations_work_and_privileged_nodes_stay_out_of_the_host() {
    if let Some(why) = vm::vm_unavailable() {
        skip!("{why}");
    }
    let kernel = ark_tests::guest_kernel().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    vm::busybox_root(&root, GUEST_SCRIPT).unwrap();
    // A setuid file already in the share (as an image would ship it).
    let host_suid = root.join("root/host-suid");
    std::fs::write(&host_suid, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&host_suid, std::fs::Permissions::from_mode(0o4755)).unwrap();

    let cmdline = vm::kernel_cmdline("rootfstype=virtiofs root=rootfs rw init=/init");
    let serial = dir.path().join("serial.log");
    let run = vm::run_vmm(
        &[
            "--kernel".to_string(),
            kernel.display().to_string(),
            "--cmdline".to_string(),
            cmdline,
            "--memory".to_string(),
            "128".to_string(),
            "--fs".to_string(),
            format!("rootfs={}", root.display()),
        ],
        &serial,
        Duration::from_secs(240),
    )
    .unwrap();
    let log = run.log();
    assert!(
        run.serial.contains("ARK_FS_GUEST_DONE"),
        "the guest did not finish:\n{log}"
    );
    let got = steps(&run.serial);
    let status = |step: &str| {
        got.iter()
            .find(|(k, _)| k == step)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no step {step}:\n{log}"))
    };
    for step in [
        "create",
        "mkdir",
        "rename-over",
        "links",
        "mkfifo",
        "whiteout",
        "chmod-suid",
        "chmod-sgid-dir",
        "append-host-suid",
        "overlay-mount",
        "overlay-rm",
        "overlay-write",
        "overlay-view",
    ] {
        assert_eq!(status(step), "0", "{step} failed in the guest:\n{log}");
    }
    for step in ["mknod-blk", "mknod-chr"] {
        assert_ne!(status(step), "0", "{step} succeeded:\n{log}");
    }

    let r = root.join("root");
    let meta = |name: &str| std::fs::symlink_metadata(r.join(name)).unwrap();
    assert_eq!(std::fs::read_to_string(r.join("f")).unwrap(), "new\n");
    assert!(r.join("d/e").is_dir());
    assert!(meta("link").file_type().is_symlink());
    assert_eq!(meta("hard").ino(), meta("f").ino());
    assert!(meta("fifo").file_type().is_fifo());
    let wh = meta("wh");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    // Setuid asked for in the guest: not on the host. Setgid on a directory is kept.
    assert_eq!(meta("suid").mode() & 0o7777, 0o755);
    assert_eq!(meta("sgid-dir").mode() & 0o7777, 0o2775);
    // Host devices: never made.
    for name in ["blk", "chr"] {
        assert!(std::fs::symlink_metadata(r.join(name)).is_err(), "{name}");
    }
    // The guest's write to the host's setuid file cleared the bit.
    assert_eq!(meta("host-suid").mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_to_string(&host_suid).unwrap(),
        "#!/bin/sh\nappended\n"
    );
    // Overlay in the guest with a lower layer on virtio-fs (an upper layer there would need
    // extended attributes, which the share does not offer): the lower layer is untouched.
    assert_eq!(
        std::fs::read_to_string(r.join("ov/l/gone")).unwrap(),
        "lower\n"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("ov/l/kept")).unwrap(),
        "lower\n"
    );
}
