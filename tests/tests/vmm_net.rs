//! A real Linux guest drives ark-vmm's virtio-net device: the guest kernel configures eth0
//! from the command line (`ip=`, no guest tool), and traffic goes both ways between the guest
//! and servers this test runs on the TAP's side, in a network namespace it made for itself (no
//! packet leaves the machine). The hostile-driver cases are the device's unit tests in
//! vmm/src/devices/net/tests.rs; this is the same device seen from a well-behaved driver, with
//! the offloads it negotiates (checksum, TSO) on a bulk transfer each way.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ark_tests::{skip, vm};

const TAP: &str = "arkvnet0";
const GUEST_MAC: &str = "02:00:0a:00:02:02";
/// Bulk transfer size each way, KiB: enough for many full-size and GSO frames each way, small
/// enough for this project's software-virtualised (kvm_pvm) hosts, where a guest round trip
/// takes 50-250 ms under load.
const BULK_KIB: u32 = 512;
/// Random bytes behind the guest's upload, sent as hex text (about 3x as many bytes): busybox
/// wget's `--post-file` stops at the first NUL.
const TX_RANDOM_KIB: u32 = 128;

const GUEST_SCRIPT: &str = r##"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
r() { "$@"; echo "step $STEP=$?"; }
STEP=mac r grep -qx 02:00:0a:00:02:02 /sys/class/net/eth0/address
STEP=mtu r grep -qx 1400 /sys/class/net/eth0/mtu
STEP=ping r ping -c 1 -W 20 10.0.2.1
STEP=wget r sh -c 'wget -q -O /tmp/page http://10.0.2.1:8080/page && grep -qx ark-net-page /tmp/page'
echo "bulk-rx $(wget -q -O - http://10.0.2.1:8080/big | md5sum)"
dd if=/dev/urandom bs=1K count=TX_RANDOM_KIB 2>/dev/null | od -An -tx1 > /tmp/up
echo "bulk-tx-src $(md5sum < /tmp/up)"
echo "bulk-tx-got $(wget -q -O - --post-file=/tmp/up http://10.0.2.1:8080/cgi-bin/upload)"
S=/sys/class/net/eth0/statistics
echo "rx-stats $(cat $S/rx_packets) $(cat $S/rx_errors) $(cat $S/rx_length_errors)"
echo ARK_NET_GUEST_DONE
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

/// The value of the serial line `key VALUE` (the first field after the key).
fn field<'a>(serial: &'a str, key: &str) -> Option<&'a str> {
    serial
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next())
}

/// A server that goes with the test, also when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
}

fn md5(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_guest_reaches_servers_on_the_tap_side_both_ways() {
    if let Some(why) = vm::vm_unavailable() {
        skip!("{why}");
    }
    if !ark_tests::is_root() {
        skip!("a TAP in a network namespace needs root");
    }
    let kernel = ark_tests::guest_kernel().unwrap();
    // Everything below runs in a network namespace of this thread, and so do the children it
    // starts (they inherit the thread's namespace); it goes with the thread and its children.
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        vm::busybox_root(
            &root,
            &GUEST_SCRIPT.replace("TX_RANDOM_KIB", &TX_RANDOM_KIB.to_string()),
        )
        .unwrap();
        let srv = dir.path().join("srv");
        std::fs::create_dir(&srv).unwrap();
        std::fs::write(srv.join("page"), "ark-net-page\n").unwrap();
        // The guest's upload (POST) lands in `got`; the reply is its checksum.
        let got = srv.join("got");
        std::fs::create_dir(srv.join("cgi-bin")).unwrap();
        let cgi = srv.join("cgi-bin/upload");
        std::fs::write(
            &cgi,
            format!(
                "#!/bin/sh\nhead -c \"$CONTENT_LENGTH\" > {got}\n\
                 printf 'Content-Type: text/plain\\r\\n\\r\\n'\nmd5sum < {got}\n",
                got = got.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        sh(&format!(
            "head -c {}K /dev/urandom > {}/big",
            BULK_KIB,
            srv.display()
        ));
        // A persistent TAP for ark-vmm to open by name, with the host address of the guest's
        // network; the guest's MTU comes from the device, the TAP's is set to match.
        sh(&format!(
            "ip link set lo up && ip tuntap add dev {TAP} mode tap vnet_hdr && \
             ip addr add 10.0.2.1/24 dev {TAP} && ip link set {TAP} mtu 1400 up"
        ));
        let _httpd = KillOnDrop(
            Command::new("busybox")
                .args(["httpd", "-f", "-p", "10.0.2.1:8080", "-h"])
                .arg(&srv)
                .spawn()
                .unwrap(),
        );

        let cmdline = vm::kernel_cmdline(
            "rootfstype=virtiofs root=rootfs rw init=/init \
             ip=10.0.2.2::10.0.2.1:255.255.255.0::eth0:off",
        );
        let serial = dir.path().join("serial.log");
        let run = vm::run_vmm(
            &[
                "--kernel".to_string(),
                kernel.display().to_string(),
                "--cmdline".to_string(),
                cmdline,
                "--memory".to_string(),
                "256".to_string(),
                "--fs".to_string(),
                format!("rootfs={}", root.display()),
                "--net".to_string(),
                format!("tap={TAP},mac={GUEST_MAC},mtu=1400"),
            ],
            &serial,
            Duration::from_secs(400),
        )
        .unwrap();
        let log = run.log();
        assert!(
            run.serial.contains("ARK_NET_GUEST_DONE"),
            "the guest did not finish:\n{log}"
        );
        assert_eq!(run.code(), Some(0), "{log}");
        let got_steps = steps(&run.serial);
        for step in ["mac", "mtu", "ping", "wget"] {
            let status = got_steps
                .iter()
                .find(|(k, _)| k == step)
                .map(|(_, v)| v.as_str());
            assert_eq!(status, Some("0"), "{step} failed in the guest:\n{log}");
        }
        // Host → guest bulk (the device's rx path): what the guest read is the file.
        assert_eq!(
            field(&run.serial, "bulk-rx"),
            Some(md5(&srv.join("big")).as_str()),
            "{log}"
        );
        // Guest → host bulk (tx): what the host fetched is what the guest made.
        assert!(
            got.exists(),
            "the host never fetched the guest's file:\n{log}"
        );
        assert_eq!(
            field(&run.serial, "bulk-tx-src"),
            Some(md5(&got).as_str()),
            "{log}"
        );
        // No frame reached the guest broken (errors, length errors).
        let rx_stats: Vec<&str> = run
            .serial
            .lines()
            .find_map(|l| l.trim().strip_prefix("rx-stats "))
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default();
        assert_eq!(rx_stats.get(1..), Some(&["0", "0"][..]), "{log}");
    })
    .join()
    .unwrap();
}
