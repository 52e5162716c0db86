//! Hostile images and pods against the host (issue 9, items 1, 2, 3 and 6): what guest-init
//! writes into an app root stays inside it, device nodes from the image or the app are inert,
//! /proc/sys is read-only and runc's masked paths are masked, a non-root app holds no
//! capability it was not given by name, and `ark enter` runs with the app's identity.
//!
//! Host devices are reached only through a loop device attached here to a temp file (detached
//! again by a guard), and every sysctl a test could touch is saved and restored by a guard.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ark_tests::images::{sha256_hex, tar_bytes, Entry, LayoutBuilder};
use ark_tests::loopdev::LoopDevice;
use ark_tests::pods::{pods_unavailable, wait_child, PodEnv};
use ark_tests::skip;

/// The applets the hostile image links.
const APPLETS: &[&str] = &[
    "sh", "cat", "head", "mknod", "ls", "echo", "grep", "sleep", "od", "true", "id",
];

/// What the loop device's backing file holds; it must hold exactly this afterwards.
const PATTERN: &[u8] = b"ark-loop-backing-file-pattern-0123456789abcdef\n";

/// `nobody` has a primary gid different from its uid, so "the passwd entry's gid" is visible.
const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65533:nobody:/nonexistent:/bin/sh\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65533:\n";

/// A tiny static program that tries `setresuid(0, 0, 0)` and says how it went.
const SETRESUID_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    if (setresuid(0, 0, 0) == 0) { puts("SETRESUID-OK"); return 0; }
    printf("SETRESUID-FAILED %s\n", strerror(errno));
    return 1;
}
"#;

/// The setresuid helper, built once (musl-gcc or cc, static); None without a C compiler.
fn setresuid_helper() -> Option<Vec<u8>> {
    static BIN: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?;
        let src = dir.path().join("s.c");
        fs::write(&src, SETRESUID_C).ok()?;
        let out = dir.path().join("s");
        ["musl-gcc", "cc"].iter().find_map(|cc| {
            let ok = Command::new(cc)
                .args(["-static", "-O1", "-o"])
                .arg(&out)
                .arg(&src)
                .stderr(Stdio::null())
                .status()
                .ok()?
                .success();
            ok.then(|| fs::read(&out).ok()).flatten()
        })
    })
    .clone()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// An OCI layout at `dir/hostile` with busybox, passwd/group, the setresuid helper (if it
/// could be built) and `extra` (the hostile part); returns the `oci-layout:` reference.
fn hostile_image(dir: &Path, extra: Vec<Entry>) -> String {
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::Dir("etc/", 0o755),
        Entry::Dir("tmp/", 0o1777),
        Entry::File(
            "bin/busybox".into(),
            fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)"),
            0o755,
        ),
        Entry::file("etc/passwd", PASSWD.as_bytes()),
        Entry::file("etc/group", GROUP.as_bytes()),
    ];
    for a in APPLETS {
        entries.push(Entry::Symlink(leak(format!("bin/{a}")), "busybox"));
    }
    if let Some(bin) = setresuid_helper() {
        entries.push(Entry::File("bin/setresuid0".into(), bin, 0o755));
    }
    entries.extend(extra);
    let tar = tar_bytes(&entries);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))] },
    });
    let mut b = LayoutBuilder::new(vec![tar]);
    b.config_override = Some(serde_json::to_vec(&config).unwrap());
    let dest = dir.join("hostile");
    b.write(&dest, "latest");
    format!("oci-layout:{}:latest", dest.display())
}

/// A loop device over a temp file holding [`PATTERN`], detached on drop (even on failure).
struct LoopDev {
    // Declared first: dropped (detached) before the backing file goes.
    lo: LoopDevice,
    backing: tempfile::NamedTempFile,
    major: u32,
    minor: u32,
}

impl LoopDev {
    fn attach() -> Result<LoopDev, String> {
        let backing = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        fs::write(
            backing.path(),
            PATTERN.repeat(64 * 1024 / PATTERN.len() + 1),
        )
        .map_err(|e| e.to_string())?;
        let lo = LoopDevice::attach(backing.path())?;
        Ok(LoopDev {
            major: lo.major,
            minor: lo.minor,
            lo,
            backing,
        })
    }

    /// Panics unless both the backing file and the device (its page cache) hold only the
    /// pattern still.
    fn assert_untouched(&self) {
        let expect = PATTERN.repeat(64 * 1024 / PATTERN.len() + 1);
        let file = fs::read(self.backing.path()).unwrap();
        assert!(file == expect, "the loop device's backing file was changed");
        let mut head = vec![0u8; PATTERN.len() * 4];
        std::io::Read::read_exact(&mut fs::File::open(&self.lo.dev).unwrap(), &mut head).unwrap();
        assert_eq!(
            head,
            &expect[..head.len()],
            "the loop device was written: {:?}",
            String::from_utf8_lossy(&head)
        );
    }
}

/// A sysctl (a /proc/sys file) saved now and written back on drop if it changed.
struct SysctlGuard {
    path: &'static str,
    saved: Vec<u8>,
}

impl SysctlGuard {
    fn save(path: &'static str) -> SysctlGuard {
        SysctlGuard {
            path,
            saved: fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}")),
        }
    }

    fn unchanged(&self) -> bool {
        fs::read(self.path).unwrap() == self.saved
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if !self.unchanged() {
            let _ = fs::write(self.path, &self.saved);
        }
    }
}

fn env_with(image: String) -> PodEnv {
    PodEnv {
        dir: tempfile::Builder::new()
            .prefix("ark-hostile-")
            .tempdir()
            .unwrap(),
        image,
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `ark run --stage1=FLAVOR FLAGS IMAGE --name=app APP_FLAGS -- sh -c SCRIPT`; returns
/// stdout, asserting exit 0.
fn run_sh(
    env: &PodEnv,
    flavor: &str,
    pod_flags: &[&str],
    app_flags: &[&str],
    script: &str,
) -> String {
    let stage1 = format!("--stage1={flavor}");
    let mut args = vec!["run", stage1.as_str()];
    args.extend_from_slice(pod_flags);
    args.push(&env.image);
    args.push("--name=app");
    args.extend_from_slice(app_flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let out = env.output(&args);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "ark {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// The hex value of a `/proc/PID/status` capability line.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

macro_rules! need_pods {
    () => {
        if let Some(why) = pods_unavailable() {
            skip!("{why}");
        }
    };
}

macro_rules! need_loop {
    () => {
        match LoopDev::attach() {
            Ok(l) => l,
            Err(e) => skip!("no loop device: {e}"),
        }
    };
}

/// Item 1: an image whose etc/hostname is a block device node (the test's loop device), run
/// as nobody with CAP_KILL only. guest-init used to write `ark-<uuid>` through it, into the
/// host's disk; now the node is replaced by a regular file and the disk is untouched.
#[test]
fn etc_hostname_device_node_is_replaced_not_written() {
    need_pods!();
    let lo = need_loop!();
    let dir = tempfile::tempdir().unwrap();
    let image = hostile_image(
        dir.path(),
        vec![Entry::BlockDev("etc/hostname", lo.major, lo.minor)],
    );
    let env = env_with(image);
    let out = run_sh(
        &env,
        "ns",
        &[],
        &["--user=65534", "--caps-retain=CAP_KILL"],
        "cat /etc/hostname",
    );
    assert!(out.starts_with("ark-"), "the pod's hostname file: {out:?}");
    lo.assert_untouched();
}

/// Item 1: an image whose etc/hostname is a symlink to the host's poweroff_cmd sysctl, with
/// --hostname=x: guest-init used to follow it (resolved in the app root after /proc was
/// mounted there) and set the host's sysctl.
#[test]
fn etc_hostname_symlink_into_proc_is_not_followed() {
    need_pods!();
    let sysctl = SysctlGuard::save("/proc/sys/kernel/poweroff_cmd");
    let dir = tempfile::tempdir().unwrap();
    let image = hostile_image(
        dir.path(),
        vec![Entry::Symlink(
            "etc/hostname",
            "/proc/sys/kernel/poweroff_cmd",
        )],
    );
    let env = env_with(image);
    let out = run_sh(&env, "ns", &["--hostname=x"], &[], "cat /etc/hostname");
    assert_eq!(out, "x\n");
    assert!(
        sysctl.unchanged(),
        "the host's kernel.poweroff_cmd was changed to {:?}",
        fs::read_to_string(sysctl.path)
    );
}

/// Item 2: device nodes are inert wherever they come from (mknod in /tmp or /dev with
/// CAP_MKNOD kept, a 0666 node shipped by the image, for root and nobody alike); the standard
/// nodes still work; /proc/sys is read-only, runc's masked paths are masked, /sys read-only.
#[test]
fn device_nodes_are_inert_and_kernel_knobs_read_only() {
    need_pods!();
    let lo = need_loop!();
    let core = SysctlGuard::save("/proc/sys/kernel/core_pattern");
    let dir = tempfile::tempdir().unwrap();
    let image = hostile_image(
        dir.path(),
        vec![Entry::BlockDev("loopnode", lo.major, lo.minor)],
    );
    let env = env_with(image);
    let (maj, min) = (lo.major, lo.minor);
    // A host volume holding a node of the loop device: the volume's bind is nodev too.
    let vol = tempfile::tempdir().unwrap();
    nix::sys::stat::mknod(
        &vol.path().join("loopnode"),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(maj.into(), min.into()),
    )
    .unwrap();
    let volume = format!("--volume=v,kind=host,source={}", vol.path().display());
    let script = format!(
        "mknod /tmp/l0 b {maj} {min}; head -c16 /tmp/l0 && echo READ-TMP; \
         head -c16 /vol/loopnode && echo READ-VOLUME-NODE; \
         mknod /dev/l1 b {maj} {min}; head -c16 /dev/l1 && echo READ-DEV; \
         head -c16 /loopnode && echo READ-IMAGE-NODE; \
         true >> /proc/sys/kernel/core_pattern && echo OPENED-CORE-PATTERN; \
         true >> /sys/kernel/uevent_helper && echo OPENED-SYS; \
         echo x > /dev/null && echo NULL-OK; head -c4 /dev/zero | od -An -tx1; \
         head -c4 /dev/urandom > /dev/null && echo URANDOM-OK; \
         cat /proc/self/mountinfo"
    );
    let out = run_sh(
        &env,
        "ns",
        &[&volume],
        &[
            "--mount=volume=v,target=/vol",
            "--caps-retain=CAP_MKNOD,CAP_DAC_OVERRIDE,CAP_CHOWN",
        ],
        &script,
    );
    let pattern = String::from_utf8_lossy(&PATTERN[..16]).into_owned();
    assert!(
        !out.contains(&pattern),
        "the app read the loop device: {out}"
    );
    for bad in [
        "READ-TMP",
        "READ-VOLUME-NODE",
        "READ-DEV",
        "READ-IMAGE-NODE",
        "OPENED-CORE-PATTERN",
        "OPENED-SYS",
    ] {
        assert!(!out.contains(bad), "{bad}:\n{out}");
    }
    assert!(
        out.contains("NULL-OK") && out.contains("URANDOM-OK"),
        "{out}"
    );
    assert!(out.contains(" 00 00 00 00"), "/dev/zero: {out}");
    // The pod's mountinfo, among the other lines of output.
    let mounts = ark_os::mountinfo::parse(&out);
    let opts = |p: &str| {
        mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == std::path::Path::new(p))
            .map(|m| m.mount_options.clone())
    };
    for p in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/acpi",
        "/proc/scsi",
        "/sys/firmware",
    ] {
        if Path::new(p).exists() {
            assert!(opts(p).is_some(), "{p} is not masked:\n{out}");
        }
    }
    for p in [
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/proc/bus",
        "/proc/irq",
        "/proc/fs",
    ] {
        if Path::new(p).exists() {
            let o = opts(p).unwrap_or_else(|| panic!("{p} not read-only:\n{out}"));
            assert!(o.split(',').any(|x| x == "ro"), "{p}: {o}");
        }
    }
    for p in ["/", "/dev", "/vol"] {
        let o = opts(p).unwrap_or_else(|| panic!("no mount at {p}:\n{out}"));
        assert!(o.split(',').any(|x| x == "nodev"), "{p}: {o}");
    }
    // The image's 0666 node is no more use to a non-root app.
    let out = run_sh(
        &env,
        "ns",
        &[],
        &["--user=65534"],
        "head -c16 /loopnode && echo READ-AS-NOBODY; true",
    );
    assert!(
        !out.contains("READ-AS-NOBODY") && !out.contains(&pattern),
        "{out}"
    );
    assert!(core.unchanged());
    lo.assert_untouched();
}

/// Item 6: `--user=65534` without --caps-retain holds no capability (the default set only
/// bounds it), gets the passwd entry's primary gid (65533 here, not 0), and cannot become
/// root again.
#[test]
fn non_root_app_holds_no_capabilities() {
    need_pods!();
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(hostile_image(dir.path(), vec![]));
    let helper = setresuid_helper().is_some();
    let script = if helper {
        "cat /proc/self/status; /bin/setresuid0; true"
    } else {
        "cat /proc/self/status"
    };
    let out = run_sh(&env, "ns", &[], &["--user=65534"], script);
    for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(status_field(&out, key), "0000000000000000", "{key}\n{out}");
    }
    assert_ne!(status_field(&out, "CapBnd:"), "0000000000000000");
    assert_eq!(status_field(&out, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(&out, "Gid:"), "65533\t65533\t65533\t65533");
    assert_eq!(status_field(&out, "NoNewPrivs:"), "1");
    if helper {
        assert!(
            out.contains("SETRESUID-FAILED Operation not permitted"),
            "{out}"
        );
    } else {
        eprintln!("no static C compiler (musl-gcc, cc -static): setresuid(0) not tried");
    }
    // Named capabilities are held (ambient), and nothing else.
    let out = run_sh(
        &env,
        "ns",
        &[],
        &["--user=65534", "--caps-retain=CAP_KILL"],
        "cat /proc/self/status",
    );
    assert_eq!(status_field(&out, "CapEff:"), "0000000000000020");
    assert_eq!(status_field(&out, "CapAmb:"), "0000000000000020");
}

/// `ark ARGS` with a stray fd 7 (the test's own directory) open in ark.
fn ark_with_stray_fd(env: &PodEnv, args: &[&str]) -> Output {
    let stray = fs::File::open("/").unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&stray);
    let mut c = env.ark();
    c.args(args).stdin(Stdio::null());
    // SAFETY: dup2 in the child before exec; the copy has no close-on-exec flag.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().unwrap()
}

/// Item 3: `ark enter` in a pod started with --user=65534 --caps-retain=CAP_KILL runs as the
/// app does (uid, gid, CapEff = CAP_KILL, no_new_privs) with fds 0-2 only, in ns and fly.
#[test]
fn enter_takes_the_apps_identity() {
    need_pods!();
    let dir = tempfile::tempdir().unwrap();
    let image = hostile_image(dir.path(), vec![]);
    for flavor in ["ns", "fly"] {
        let env = env_with(image.clone());
        let mut run = env.spawn(&[
            "run",
            &format!("--stage1={flavor}"),
            &env.image,
            "--name=app",
            "--user=65534",
            "--caps-retain=CAP_KILL",
            "--",
            "sleep",
            "600",
        ]);
        let uuid = env.wait_pod(Duration::from_secs(60));
        env.wait_status(&uuid, Duration::from_secs(60), "the app running", |s| {
            s.get("app-app").map(String::as_str) == Some("running")
        });
        let out = ark_with_stray_fd(&env, &["enter", &uuid, "cat", "/proc/self/status"]);
        let (status, stderr) = text(&out);
        assert!(out.status.success(), "{flavor}: {stderr}");
        assert_eq!(
            status_field(&status, "Uid:"),
            "65534\t65534\t65534\t65534",
            "{flavor}"
        );
        assert_eq!(
            status_field(&status, "Gid:"),
            "65533\t65533\t65533\t65533",
            "{flavor}"
        );
        assert_eq!(
            status_field(&status, "CapEff:"),
            "0000000000000020",
            "{flavor}"
        );
        assert_eq!(
            status_field(&status, "CapBnd:"),
            "0000000000000020",
            "{flavor}"
        );
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{flavor}");
        let out = ark_with_stray_fd(&env, &["enter", &uuid, "ls", "/proc/self/fd"]);
        let (fds, stderr) = text(&out);
        assert!(out.status.success(), "{flavor}: {stderr}");
        // 0, 1, 2 and the directory ls itself opened.
        assert_eq!(
            fds.split_whitespace().collect::<Vec<_>>(),
            ["0", "1", "2", "3"],
            "{flavor}: stray fds reach the entered command"
        );
        env.ok(&["stop", "--force", &uuid]);
        wait_child(&mut run, Duration::from_secs(60));
    }
}

/// Items 1 and 2 in a VM (one boot): guest-init is the same binary there, so the hostile
/// etc/hostname symlink into /proc does not write through, /proc/sys is read-only, the masks
/// are in place and a mknod'ed node is inert — even on a tmpfs the app mounted without nodev,
/// where only the device allowlist on the app's cgroup refuses the open.
#[test]
fn kvm_app_gets_the_same_fences() {
    need_pods!();
    if let Some(why) = ark_tests::kvm_unavailable() {
        skip!("{why}");
    }
    if ark_tests::guest_kernel().is_none() {
        skip!("no guest kernel: set ARK_KERNEL to kernel-config/build.sh's output");
    }
    let dir = tempfile::tempdir().unwrap();
    let image = hostile_image(
        dir.path(),
        vec![Entry::Symlink(
            "etc/hostname",
            "/proc/sys/kernel/poweroff_cmd",
        )],
    );
    let env = env_with(image);
    let script = "echo H=$(cat /etc/hostname); echo P=$(cat /proc/sys/kernel/poweroff_cmd); \
         true >> /proc/sys/kernel/poweroff_cmd && echo OPENED-SYSCTL; \
         mknod /dev/n c 1 3 && echo x > /dev/n && echo WROTE-DEV-NODE; \
         mknod /tmp/n c 1 3 && echo x > /tmp/n && echo WROTE-TMP-NODE; \
         echo x > /dev/null && echo NULL-OK; \
         mkdir /m && mount -t tmpfs t /m && echo MOUNTED; \
         mknod /m/tty c 4 64 && true > /m/tty && echo OPENED-TTYS0; \
         mknod /m/con c 5 1 && true > /m/con && echo OPENED-CONSOLE; \
         grep -E ' /proc/(sys|kcore|keys|timer_list) ' /proc/self/mountinfo";
    let out = run_sh(
        &env,
        "kvm",
        &["--hostname=x"],
        // CAP_SYS_ADMIN too: the app can mount a tmpfs without nodev, so only the guest's
        // device cgroup stands between its nodes and the VM's devices.
        &["--caps-retain=CAP_MKNOD,CAP_DAC_OVERRIDE,CAP_SYS_ADMIN"],
        script,
    );
    // The VM's console may end lines with \r\n.
    let line = |want: &str| out.lines().any(|l| l.trim_end() == want);
    assert!(line("H=x"), "{out}");
    assert!(
        !line("P=x"),
        "poweroff_cmd written through the image's link: {out}"
    );
    assert!(line("MOUNTED"), "the app could not mount its tmpfs:\n{out}");
    for bad in [
        "OPENED-SYSCTL",
        "WROTE-DEV-NODE",
        "WROTE-TMP-NODE",
        "OPENED-TTYS0",
        "OPENED-CONSOLE",
    ] {
        assert!(!out.contains(bad), "{bad}:\n{out}");
    }
    assert!(out.contains("NULL-OK"), "{out}");
    let mounts = ark_os::mountinfo::parse(&out.replace('\r', ""));
    let at = |p: &str| {
        mounts
            .iter()
            .find(|m| m.mount_point == std::path::Path::new(p))
    };
    let sys = at("/proc/sys").unwrap_or_else(|| panic!("/proc/sys not bound read-only:\n{out}"));
    assert!(sys.has_mount_option("ro"), "{sys:?}");
    assert!(
        ["/proc/kcore", "/proc/keys", "/proc/timer_list"]
            .iter()
            .any(|p| at(p).is_some()),
        "no masked path in the VM:\n{out}"
    );
}
