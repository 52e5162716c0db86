//! ark-vmm end to end: tiny hand-made guests for the exit paths, bzImage and SMP start-up
//! (fast), and three real Linux boots, root on virtio-blk, root on virtio-fs with vsock, and an
//! initramfs (slow on kvm_pvm hosts, so each boot carries many assertions).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ark_tests::skip;
use ark_tests::vm::{self, VmRun};

fn write_tiny(dir: &Path, code: &[u8]) -> String {
    let k = dir.join("tiny.elf");
    std::fs::write(&k, vm::tiny_elf(code)).unwrap();
    k.display().to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Boots a hand-made guest `image` with ark-vmm (`--kernel` plus `flags`), the serial console
/// in a file, for at most 30 s. Err: why this host cannot, for the caller to skip.
fn run_tiny(image: &[u8], flags: &[&str]) -> Result<VmRun, String> {
    if let Some(why) = ark_tests::kvm_unavailable() {
        return Err(why);
    }
    if vm::ark_vmm_bin().is_none() {
        return Err("ark-vmm not built: run ./build.sh".into());
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest");
    std::fs::write(&kernel, image).unwrap();
    let mut all = args(&["--kernel", &kernel.display().to_string()]);
    all.extend(args(flags));
    Ok(vm::run_vmm(
        &all,
        &dir.path().join("serial.log"),
        Duration::from_secs(30),
    )
    .unwrap())
}

/// A hand-made guest left running in the background by [`spawn_tiny`].
struct Background {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

/// Starts ark-vmm on a hand-made guest `image` (`--kernel` plus `flags`), the serial console in
/// a file, and waits (30 s at most) until the guest printed exactly `expected`. Err: why this
/// host cannot, for the caller to skip.
fn spawn_tiny(image: &[u8], flags: &[&str], expected: &str) -> Result<Background, String> {
    if let Some(why) = ark_tests::kvm_unavailable() {
        return Err(why);
    }
    let Some(bin) = vm::ark_vmm_bin() else {
        return Err("ark-vmm not built: run ./build.sh".into());
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest");
    std::fs::write(&kernel, image).unwrap();
    let serial = dir.path().join("serial.log");
    let mut child = Command::new(bin)
        .arg("--kernel")
        .arg(&kernel)
        .args(flags)
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&serial).unwrap_or_default() != expected {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the guest never printed {expected:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Background { child, _dir: dir })
}

impl Background {
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and returns ark-vmm's exit code (it must exit within 10 s).
    fn sigterm(mut self) -> Option<i32> {
        nix::sys::signal::kill(
            ark_tests::child_pid(&self.child),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let stopped = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if stopped.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!("ark-vmm ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn guest_i8042_reset_exits_0_and_serial_reaches_the_file() {
    let image = vm::tiny_elf(&vm::serial_print_then(b"ark-tiny\n", vm::CODE_I8042_RESET));
    let run = match run_tiny(&image, &["--memory", "32", "--no-rng"]) {
        Ok(run) => run,
        Err(why) => skip!("{why}"),
    };
    assert_eq!(run.code(), Some(0), "{}", run.log());
    assert_eq!(run.serial, "ark-tiny\n", "{}", run.log());
}

#[test]
fn piped_stdin_reaches_the_guest_serial() {
    if let Some(why) = ark_tests::kvm_unavailable() {
        skip!("{why}");
    }
    let Some(bin) = vm::ark_vmm_bin() else {
        skip!("ark-vmm not built: run ./build.sh")
    };
    let dir = tempfile::tempdir().unwrap();
    let k = write_tiny(dir.path(), vm::CODE_SERIAL_ECHO_LINE);
    let mut child = Command::new(bin)
        .args([
            "--kernel", &k, "--memory", "32", "--no-rng", "--serial", "stdout",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // More than the 64-byte receive FIFO, so input must wait for the guest to drain it.
        let line = format!("{}\n", "echo-me-".repeat(20));
        stdin.write_all(line.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", "echo-me-".repeat(20))
    );
}

#[test]
fn guest_triple_fault_exits_2() {
    let image = vm::tiny_elf(vm::CODE_TRIPLE_FAULT);
    let run = match run_tiny(&image, &["--memory", "32", "--no-rng"]) {
        Ok(run) => run,
        Err(why) => skip!("{why}"),
    };
    assert_eq!(run.code(), Some(2), "{}", run.log());
}

/// A bzImage goes through linux-loader's bzImage path and the 64-bit boot protocol: the guest
/// finds boot_params in rsi, with the e820 map and the command line ark-vmm wrote.
#[test]
fn bzimage_boots_through_the_64_bit_boot_protocol() {
    let image = vm::tiny_bzimage(vm::CODE_PRINT_BOOT_PARAMS);
    let flags = ["--cmdline", "hello bzimage", "--memory", "64", "--no-rng"];
    let run = match run_tiny(&image, &flags) {
        Ok(run) => run,
        Err(why) => skip!("{why}"),
    };
    assert_eq!(run.code(), Some(0), "{}", run.log());
    // e820: RAM below the EBDA, reserved to 1 MiB, RAM above.
    assert_eq!(run.serial, "3hello bzimage\n", "{}", run.log());
}

/// SMP: the guest's BSP starts vCPU 1 through its in-kernel LAPIC (INIT + STARTUP into a
/// real-mode trampoline); both print, then both halt with interrupts off: a power-off.
#[test]
fn bsp_starts_an_ap_with_init_sipi_and_both_halting_is_a_power_off() {
    let image = vm::tiny_pvh_elf(vm::CODE_START_AP);
    let run = match run_tiny(&image, &["--memory", "32", "--vcpus", "2", "--no-rng"]) {
        Ok(run) => run,
        Err(why) => skip!("{why}"),
    };
    assert_eq!(run.serial, "AB", "{}", run.log());
    assert_eq!(run.code(), Some(0), "{}", run.log());
}

/// The power-off probe's other side: one vCPU halted with interrupts off while another still
/// runs is not a power-off; the VM runs until the host stops it.
#[test]
fn a_running_ap_keeps_the_vm_alive_when_the_bsp_halts() {
    let image = vm::tiny_pvh_elf(&vm::code_start_ap_that_spins());
    let mut guest = match spawn_tiny(
        &image,
        &["--memory", "32", "--vcpus", "2", "--no-rng"],
        "AB",
    ) {
        Ok(guest) => guest,
        Err(why) => skip!("{why}"),
    };
    // Ten of ark-vmm's 200 ms power-off probe rounds, the BSP halted for good, the AP spinning.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        guest.running(),
        "ark-vmm took a halted BSP next to a running AP for a power-off"
    );
    assert_eq!(guest.sigterm(), Some(3), "stopped by the host");
}

/// No ACPI power-off: every vCPU halted with interrupts off (vCPU 1 never started by the
/// guest) ends ark-vmm with 0, like Linux's `poweroff` on a machine without a power-off driver.
#[test]
fn guest_halting_with_interrupts_off_exits_0() {
    let image = vm::tiny_elf(&vm::serial_print_then(b"off\n", vm::CODE_POWER_OFF));
    let run = match run_tiny(&image, &["--memory", "32", "--vcpus", "2", "--no-rng"]) {
        Ok(run) => run,
        Err(why) => skip!("{why}"),
    };
    assert_eq!(run.serial, "off\n", "{}", run.log());
    assert_eq!(run.code(), Some(0), "{}", run.log());
}

#[test]
fn sigterm_stops_a_running_guest_with_exit_3() {
    let image = vm::tiny_elf(&vm::serial_print_then(b"up\n", vm::CODE_HALT_LOOP));
    let guest = match spawn_tiny(&image, &["--memory", "32", "--vcpus", "2"], "up\n") {
        Ok(guest) => guest,
        Err(why) => skip!("{why}"),
    };
    assert_eq!(guest.sigterm(), Some(3), "stopped by host");
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    if let Some(why) = ark_tests::kvm_unavailable() {
        skip!("{why}");
    }
    let Some(bin) = vm::ark_vmm_bin() else {
        skip!("ark-vmm not built: run ./build.sh")
    };
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let junk = junk.display().to_string();
    let missing = dir.path().join("missing.img").display().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--kernel", "/nonexistent/vmlinux"],
            "kernel /nonexistent/vmlinux: No such file".into(),
        ),
        (
            vec!["--kernel", &junk],
            format!("kernel {junk}: not an ELF or bzImage"),
        ),
        (vec!["--kernel", &junk, "--vcpus", "0"], "vcpus 0".into()),
        (
            vec!["--kernel", &junk, "--blk", &missing],
            format!("block device {missing}"),
        ),
        (
            vec!["--kernel", &junk, "--serial", "tty"],
            "--serial".into(),
        ),
        (vec!["--memory", "64"], "--kernel is required".into()),
    ];
    for (argv, want) in cases {
        let out = Command::new(&bin)
            .args(&argv)
            .arg("--no-rng")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{argv:?}: {err}");
        assert!(err.contains(&want), "{argv:?}: want {want:?} in {err:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{argv:?}: one line, got {err:?}"
        );
    }
    assert!(
        !Path::new(&missing).exists(),
        "a failed start must not create the disk"
    );
}

/// The real thing: Linux with its root on virtio-blk (and a virtio-rng), an /init that reads a
/// file from the root and writes one back, then `reboot -f` → i8042 reset → exit 0. The kernel's
/// PVH note is stripped so this boot covers the 64-bit boot protocol (`boot_params`); the
/// virtio-fs boot below uses the PVH entry.
#[test]
fn linux_boots_from_virtio_blk_and_writes_its_root() {
    if let Some(why) = vm::vm_unavailable() {
        skip!("{why}");
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = match vm::kernel_without_pvh_note(&ark_tests::guest_kernel().unwrap(), dir.path())
    {
        Ok(k) => k,
        Err(e) => skip!("{e}"),
    };
    let root = dir.path().join("root");
    // Shell builtins only until the end: each new process costs seconds on kvm_pvm hosts.
    let init = "#!/bin/sh\n\
        read line < /etc/ark-input\n\
        echo \"ark-init: read [$line]\"\n\
        echo \"written by the guest\" > /root/out.txt\n\
        echo ARK_INIT_MARKER_OK\n\
        mount -t proc proc /proc\n\
        mount -o remount,ro /\n\
        reboot -f\n";
    vm::busybox_root(&root, init).unwrap();
    std::fs::write(root.join("etc/ark-input"), "hello from the host\n").unwrap();
    let image = dir.path().join("root.ext4");
    vm::make_ext4(&root, &image, 64).unwrap();

    let cmdline = vm::kernel_cmdline("root=/dev/vda rw rootfstype=ext4 init=/init loglevel=7");
    let serial = dir.path().join("serial.log");
    let run: VmRun = vm::run_vmm(
        &args(&[
            "--kernel",
            &kernel.display().to_string(),
            "--cmdline",
            &cmdline,
            "--memory",
            "128",
            "--blk",
            &image.display().to_string(),
        ]),
        &serial,
        Duration::from_secs(240),
    )
    .unwrap();
    let log = run.log();
    eprintln!("boot took {:.1}s", run.elapsed.as_secs_f64());
    assert!(
        run.serial.contains("Linux version"),
        "no kernel banner:\n{log}"
    );
    assert!(
        run.serial.contains("virtio_blk virtio0: [vda]"),
        "virtio-blk not probed:\n{log}"
    );
    assert!(
        run.serial.contains("VFS: Mounted root"),
        "root not mounted:\n{log}"
    );
    assert!(
        run.serial.contains("ark-init: read [hello from the host]"),
        "/init did not read its root:\n{log}"
    );
    assert!(
        run.serial.contains("ARK_INIT_MARKER_OK"),
        "/init did not finish:\n{log}"
    );
    assert_eq!(
        run.code(),
        Some(0),
        "reboot -f must end ark-vmm with 0:\n{log}"
    );

    // The guest's write is in the image, and the filesystem is clean.
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let out = vm::ext4_read(&image, "/root/out.txt").unwrap();
    assert_eq!(out, "written by the guest\n");
}

/// Linux from an initramfs (`--initrd`), on a two-vCPU machine whose second vCPU the
/// uniprocessor pvm-compat kernel never starts: /init reads a file from the initramfs and
/// powers off, and the halted BSP next to the never-started AP ends ark-vmm with 0.
#[test]
fn linux_boots_from_an_initramfs_and_powers_off_with_an_unstarted_ap() {
    if let Some(why) = vm::vm_unavailable() {
        skip!("{why}");
    }
    let kernel = ark_tests::guest_kernel().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    vm::busybox_root(
        &root,
        "#!/bin/sh\n\
         read line < /etc/ark-input\n\
         echo \"ark-init: initramfs says [$line]\"\n\
         poweroff -f\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/ark-input"), "packed by cpio\n").unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    if let Err(e) = vm::make_cpio(&root, &initrd) {
        skip!("{e}");
    }
    let serial = dir.path().join("serial.log");
    let run = vm::run_vmm(
        &args(&[
            "--kernel",
            &kernel.display().to_string(),
            "--cmdline",
            &vm::kernel_cmdline("rdinit=/init"),
            "--memory",
            "128",
            "--vcpus",
            "2",
            "--initrd",
            &initrd.display().to_string(),
        ]),
        &serial,
        Duration::from_secs(240),
    )
    .unwrap();
    let log = run.log();
    eprintln!("boot took {:.1}s", run.elapsed.as_secs_f64());
    assert!(
        run.serial
            .contains("ark-init: initramfs says [packed by cpio]"),
        "/init did not run from the initramfs:\n{log}"
    );
    assert_eq!(
        run.code(),
        Some(0),
        "poweroff -f must end ark-vmm with 0:\n{log}"
    );
}

/// Linux with its root on virtio-fs (a host directory) and a vsock device: /init reads and
/// writes the shared root, then a static client talks to a host Unix socket over vsock, then
/// it powers off (`poweroff -f`, no ACPI in the guest).
#[test]
fn linux_boots_from_virtio_fs_and_talks_vsock() {
    if let Some(why) = vm::vm_unavailable() {
        skip!("{why}");
    }
    let kernel = ark_tests::guest_kernel().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    const PORT: u32 = 5005;
    let init = format!(
        "#!/bin/sh\n\
         read line < /etc/ark-input\n\
         echo \"ark-init: read [$line]\"\n\
         echo \"written through virtio-fs\" > /root/out.txt\n\
         /bin/vsock-client {PORT} ping-from-guest\n\
         echo ARK_INIT_MARKER_OK\n\
         poweroff -f\n"
    );
    vm::busybox_root(&root, &init).unwrap();
    if let Err(e) = vm::build_vsock_client(&root.join("bin/vsock-client")) {
        skip!("{e}");
    }
    std::fs::write(root.join("etc/ark-input"), "hello from the host\n").unwrap();

    // Host side of the guest's connection: ark-vmm connects to `{uds}_{PORT}`.
    let uds = dir.path().join("vsock.sock");
    let listener =
        std::os::unix::net::UnixListener::bind(format!("{}_{PORT}", uds.display())).unwrap();
    let host = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(conn.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        conn.write_all(b"pong-from-host\n").unwrap();
        line
    });

    let cmdline = vm::kernel_cmdline("rootfstype=virtiofs root=rootfs rw init=/init");
    let serial = dir.path().join("serial.log");
    let run = vm::run_vmm(
        &args(&[
            "--kernel",
            &kernel.display().to_string(),
            "--cmdline",
            &cmdline,
            "--memory",
            "128",
            "--fs",
            &format!("rootfs={}", root.display()),
            "--vsock",
            &format!("3,{}", uds.display()),
        ]),
        &serial,
        Duration::from_secs(240),
    )
    .unwrap();
    let log = run.log();
    eprintln!("boot took {:.1}s", run.elapsed.as_secs_f64());
    assert!(
        run.serial.contains("ark-init: read [hello from the host]"),
        "/init did not read the shared root:\n{log}"
    );
    assert!(
        run.serial
            .contains("vsock-client: host said [pong-from-host]"),
        "no vsock round trip:\n{log}"
    );
    assert!(
        run.serial.contains("ARK_INIT_MARKER_OK"),
        "/init did not finish:\n{log}"
    );
    // No ACPI: the kernel turns the power-off into a halt with interrupts off on every CPU,
    // which ark-vmm takes as the guest's power-off.
    assert!(
        run.serial.contains("reboot: System halted"),
        "the guest did not halt:\n{log}"
    );
    assert_eq!(
        run.code(),
        Some(0),
        "poweroff -f (no ACPI) must end ark-vmm with 0:\n{log}"
    );
    assert_eq!(host.join().unwrap(), "ping-from-guest\n");
    assert_eq!(
        std::fs::read_to_string(root.join("root/out.txt")).unwrap(),
        "written through virtio-fs\n"
    );
}
