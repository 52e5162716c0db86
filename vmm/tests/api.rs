//! The library API stage1-kvm uses: `vmm::run` / `vmm::run_with_stop` in-process, with tiny
//! hand-made guests (no Linux needed, so these run wherever /dev/kvm does).

use std::time::{Duration, Instant};

use vmm::{SerialConfig, StopHandle, VmConfig, VmExit};

/// ELF64 with one PT_LOAD at 2 MiB holding `code`, entered in 64-bit mode.
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let load: u64 = 0x20_0000;
    let mut e = b"\x7fELF\x02\x01\x01\x00".to_vec();
    e.extend_from_slice(&[0; 8]);
    for v in [2u16, 0x3e] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes());
    for v in [load, 64, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&5u32.to_le_bytes());
    for v in [
        120u64,
        load,
        load,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(code);
    e
}

fn kvm_missing() -> Option<String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .err()
        .map(|e| format!("/dev/kvm: {e}"))
}

fn config(dir: &std::path::Path, code: &[u8]) -> VmConfig {
    let k = dir.join("guest.elf");
    std::fs::write(&k, tiny_elf(code)).unwrap();
    let mut c = VmConfig::new(k);
    c.memory_mib = 32;
    c.rng = false;
    c.serial = SerialConfig::File(dir.join("serial.log"));
    c
}

/// A tiny guest: prints "up" on COM1, then idles with interrupts on (`sti; hlt`) forever,
/// until the host stops it.
const PRINT_UP_THEN_HLT: [u8; 14] = [
    0x66, 0xba, 0xf8, 0x03, 0xb0, b'u', 0xee, 0xb0, b'p', 0xee, 0xfb, 0xf4, 0xeb, 0xfd,
];

#[test]
fn stop_handle_stops_a_running_vm_from_another_thread() {
    if let Some(why) = kvm_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let code = PRINT_UP_THEN_HLT;
    let mut c = config(dir.path(), &code);
    c.vcpus = 2;
    let stop = StopHandle::new().unwrap();
    let remote = stop.clone();
    let log = dir.path().join("serial.log");
    let stopper = std::thread::spawn(move || {
        let start = Instant::now();
        while std::fs::read_to_string(&log).unwrap_or_default() != "up" {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "guest never printed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Idle (halted with interrupts on) for several power-off probe rounds: still running.
        std::thread::sleep(vmm::poweroff::PROBE_INTERVAL * 6);
        remote.stop();
    });
    assert_eq!(vmm::run_with_stop(c, stop).unwrap(), VmExit::HostStop);
    stopper.join().unwrap();
}

#[test]
fn guest_reset_and_triple_fault_are_told_apart() {
    if let Some(why) = kvm_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reset = config(dir.path(), &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]);
    assert_eq!(vmm::run(reset).unwrap(), VmExit::GuestStop);
    let fault = config(dir.path(), &[0x0f, 0x0b]);
    assert_eq!(vmm::run(fault).unwrap(), VmExit::TripleFault);
    // The same process can run VMs again and again (stage1-kvm runs in-process).
    let again = config(dir.path(), &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]);
    assert_eq!(vmm::run(again).unwrap(), VmExit::GuestStop);
}

#[test]
fn halt_with_interrupts_off_is_a_guest_power_off() {
    if let Some(why) = kvm_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // cli; hlt on the BSP, the AP never started: Linux's `poweroff` without ACPI.
    let mut c = config(dir.path(), &[0xfa, 0xf4, 0xeb, 0xfd]);
    c.vcpus = 2;
    assert_eq!(vmm::run(c).unwrap(), VmExit::GuestStop);
}

#[test]
fn errors_are_one_line_and_name_the_culprit() {
    if let Some(why) = kvm_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), &[0xf4]);
    c.kernel = dir.path().join("nope");
    let e = vmm::run(c).unwrap_err().to_string();
    assert!(
        e.starts_with("kernel ") && e.contains("No such file"),
        "{e}"
    );
    let mut c = config(dir.path(), &[0xf4]);
    c.initrd = Some(dir.path().join("no-initrd"));
    let e = vmm::run(c).unwrap_err().to_string();
    assert!(e.starts_with("initrd "), "{e}");
    let mut c = config(dir.path(), &[0xf4]);
    c.memory_mib = 1;
    assert!(vmm::run(c).unwrap_err().to_string().contains("memory"));
}

/// How many seccomp filters one of this process's threads is under (None: thread gone).
fn seccomp_filters(tid: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let count = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp_filters:"))
        .expect("kernel without Seccomp_filters in /proc (Linux < 5.9)");
    Some(count.trim().parse().unwrap())
}

fn my_seccomp_filters() -> u32 {
    // SAFETY: gettid has no preconditions.
    seccomp_filters(&unsafe { libc::gettid() }.to_string()).unwrap()
}

/// Threads of this process named `name`.
fn threads_named(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let tid = e.ok()?.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            (comm.trim_end() == name).then_some(tid)
        })
        .collect()
}

#[test]
fn seccomp_confines_the_event_loop_and_vcpus_but_not_the_caller() {
    if let Some(why) = kvm_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let code = PRINT_UP_THEN_HLT;
    let c = config(dir.path(), &code);
    assert!(c.seccomp, "seccomp is on by default");
    let stop = StopHandle::new().unwrap();
    let remote = stop.clone();
    let log = dir.path().join("serial.log");
    let (before_tx, before_rx) = std::sync::mpsc::channel();
    let caller = std::thread::spawn(move || {
        let before = my_seccomp_filters();
        before_tx.send(before).unwrap();
        let exit = vmm::run_with_stop(c, stop).unwrap();
        // The thread that ran the VM (stage1-kvm's main thread) is as free as before: a
        // filter cannot be lifted, so it must never have been applied here. An Internet
        // socket, which the event loop may not open, still works.
        let after = my_seccomp_filters();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").map(drop);
        (exit, before, after, tcp.is_ok())
    });
    let start = Instant::now();
    while std::fs::read_to_string(&log).unwrap_or_default() != "up" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "guest never printed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Threads spawned by the caller inherit its filters (none, unless the test runs confined)
    // and add their own. Other tests' VMs may run too: every such thread must be confined.
    let inherited = before_rx.recv().unwrap();
    let loops = threads_named("event-loop");
    assert!(!loops.is_empty(), "no event-loop thread");
    for tid in loops.iter().chain(threads_named("vcpu0").iter()) {
        if let Some(n) = seccomp_filters(tid) {
            assert_eq!(n, inherited + 1, "thread {tid} is not confined");
        }
    }
    remote.stop();
    let (exit, before, after, caller_tcp) = caller.join().unwrap();
    assert_eq!(exit, VmExit::HostStop);
    assert_eq!(after, before, "the caller's thread was confined");
    assert!(caller_tcp, "the caller's thread cannot open a TCP socket");
}

/// `Seccomp_filters:` of every thread of process `pid`, by thread name.
fn filters_by_thread(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = e.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue;
        };
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp_filters:"))
            .expect("kernel without Seccomp_filters in /proc (Linux < 5.9)");
        out.push((comm.trim_end().to_string(), n.trim().parse().unwrap()));
    }
    out
}

#[test]
fn ark_vmm_runs_its_event_loop_under_the_allowlist_and_the_denylist() {
    if let Some(why) = kvm_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let code = PRINT_UP_THEN_HLT;
    let kernel = dir.path().join("guest.elf");
    std::fs::write(&kernel, tiny_elf(&code)).unwrap();
    let log = dir.path().join("serial.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ark-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory", "32", "--no-rng", "--serial"])
        .arg(format!("file={}", log.display()))
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&log).unwrap_or_default() != "up" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "guest never printed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let threads = filters_by_thread(child.id());
    let pid = libc::pid_t::try_from(child.id()).expect("Linux pids fit pid_t");
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "{threads:?}");
    let count = |name: &str| {
        threads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no {name} thread in {threads:?}"))
    };
    // Main thread: the denylist. Event loop and vCPU: the denylist plus their allowlist.
    assert_eq!(count("ark-vmm"), 1, "{threads:?}");
    assert_eq!(count("event-loop"), 2, "{threads:?}");
    assert_eq!(count("vcpu0"), 2, "{threads:?}");
}
