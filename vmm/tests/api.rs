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

#[test]
fn stop_handle_stops_a_running_vm_from_another_thread() {
    if let Some(why) = kvm_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Print "up", then hlt forever.
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'u', 0xee, 0xb0, b'p', 0xee, 0xf4, 0xeb, 0xfd,
    ];
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
