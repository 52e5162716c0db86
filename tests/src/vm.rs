//! Helpers for tests that boot real microVMs with `ark-vmm` (also used by stage1-kvm tests):
//! build a busybox root, make an ext4 image, run the VMM with its serial console captured to a
//! file and a timeout, read files back out of an image.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `ark-vmm` binary: `$ARK_VMM`, else the install tree of `./build.sh` (next to
/// `$ARK_BIN`), else `<target>/debug/ark-vmm`.
pub fn ark_vmm_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ARK_VMM") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Some(bin) = std::env::var_os("ARK_BIN") {
        let bin = PathBuf::from(bin);
        if let Some(prefix) = bin.parent().and_then(Path::parent) {
            candidates.push(prefix.join("libexec/ark/ark-vmm"));
        }
    }
    candidates.push(crate::install_dir().join("libexec/ark/ark-vmm"));
    candidates.push(crate::target_dir().join("debug/ark-vmm"));
    candidates.into_iter().find(|p| p.exists())
}

/// Why VM boot tests cannot run here, if they cannot: no /dev/kvm, no kernel, no ark-vmm.
pub fn vm_unavailable() -> Option<String> {
    if let Some(why) = crate::kvm_unavailable() {
        return Some(why);
    }
    if crate::guest_kernel().is_none() {
        return Some("no guest kernel: set ARK_KERNEL (kernel-config/build.sh prints one)".into());
    }
    if ark_vmm_bin().is_none() {
        return Some("ark-vmm not built: run ./build.sh (or set ARK_VMM)".into());
    }
    None
}

/// Flags used when kernel-config has no cmdline file for the profile: what the pvm-compat
/// kernel needs on a kvm_pvm host (see kernel-config/).
const PVM_COMPAT_FLAGS: &str = "noxsave clearcpuid=308,288,145,298,158,306,151,297,580,141,534 \
    nopti mitigations=off nokaslr rodata=off tsc=reliable no_timer_check no_int3_selftest";

/// Kernel command line for the guest kernel in use, plus `extra`: the profile's boot flags
/// (`$ARK_KERNEL_PROFILE`, else the host's), the serial console, and `reboot=k panic=-1` so any
/// guest end reaches the i8042 reset and ark-vmm exits.
pub fn kernel_cmdline(extra: &str) -> String {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").is_dir();
    let profile = std::env::var("ARK_KERNEL_PROFILE")
        .unwrap_or_else(|_| if pvm { "pvm-compat" } else { "microvm" }.to_string());
    let file = crate::workspace_root()
        .join("kernel-config")
        .join(format!("{profile}.cmdline"));
    let flags = match std::fs::read_to_string(&file) {
        Ok(s) => s.split_whitespace().collect::<Vec<_>>().join(" "),
        Err(_) if profile == "pvm-compat" => PVM_COMPAT_FLAGS.to_string(),
        Err(_) => String::new(),
    };
    let mut parts: Vec<String> = vec!["console=ttyS0".into()];
    parts.extend(flags.split_whitespace().map(str::to_string));
    for must in ["reboot=k", "panic=-1"] {
        if !parts.iter().any(|p| p == must) {
            parts.push(must.into());
        }
    }
    parts.extend(extra.split_whitespace().map(str::to_string));
    parts.dedup();
    parts.join(" ")
}

/// Lays out a minimal busybox root in `dir`: `/bin/busybox` with applet symlinks, the usual
/// mount points, and `/init` (mode 0755) with `init_script`.
pub fn busybox_root(dir: &Path, init_script: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("busybox-static is not installed"))?;
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "mnt", "root",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    let init = dir.join("init");
    std::fs::write(&init, init_script)?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Makes an ext4 image of `size_mib` MiB at `image` holding the tree at `dir`.
pub fn make_ext4(dir: &Path, image: &Path, size_mib: u32) -> anyhow::Result<()> {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Packs the tree at `dir` into an uncompressed newc cpio archive at `out` (an initramfs).
pub fn make_cpio(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let archive = std::fs::File::create(out)?;
    // `find` in the tree feeds cpio relative names; -R 0:0 makes every file root's.
    let res = Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | cpio --null -o -H newc -R 0:0 --quiet")
        .current_dir(dir)
        .stdout(archive)
        .output()
        .map_err(|e| anyhow::anyhow!("cpio: {e}"))?;
    anyhow::ensure!(
        res.status.success(),
        "cpio: {}",
        String::from_utf8_lossy(&res.stderr).trim()
    );
    Ok(())
}

/// A file's contents inside an ext4 image, read with debugfs (no mount needed).
pub fn ext4_read(image: &Path, path: &str) -> anyhow::Result<String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "debugfs failed on {}",
        image.display()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What one VM run produced.
#[derive(Debug)]
pub struct VmRun {
    /// None when the VM was killed after the timeout.
    pub status: Option<ExitStatus>,
    pub serial: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl VmRun {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    /// The serial log and stderr, for assertion messages.
    pub fn log(&self) -> String {
        format!(
            "exit {:?} after {:.1}s\n--- serial ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.elapsed.as_secs_f64(),
            self.serial,
            self.stderr
        )
    }
}

/// Runs `ark-vmm` with `args` plus `--serial file=<serial_log>`, waiting at most `timeout`;
/// past that it sends SIGTERM, then SIGKILL after 5 s.
pub fn run_vmm(args: &[String], serial_log: &Path, timeout: Duration) -> anyhow::Result<VmRun> {
    let bin = ark_vmm_bin().ok_or_else(|| anyhow::anyhow!("ark-vmm not built"))?;
    let stderr_path = serial_log.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_path)?;
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .arg("--serial")
        .arg(format!("file={}", serial_log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
    let mut status = None;
    let mut term_sent: Option<Instant> = None;
    loop {
        if let Some(s) = child.try_wait()? {
            status = Some(s);
            break;
        }
        match term_sent {
            None if start.elapsed() > timeout => {
                let _ = nix::sys::signal::kill(
                    crate::child_pid(&child),
                    nix::sys::signal::Signal::SIGTERM,
                );
                term_sent = Some(Instant::now());
            }
            Some(t) if t.elapsed() > Duration::from_secs(5) => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if term_sent.is_some() {
        status = None;
    }
    Ok(VmRun {
        status,
        serial: std::fs::read_to_string(serial_log).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        elapsed: start.elapsed(),
    })
}

/// A minimal ELF64 "kernel" whose one PT_LOAD segment at 2 MiB is `code`, entered in 64-bit
/// mode (no PVH note): for tests and benchmarks that need a guest without Linux.
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    elf_image(code, false)
}

/// Like [`tiny_elf`], with a PVH entry note pointing at the start of `code`: entered in 32-bit
/// protected mode with paging off, so the guest reaches any physical address (the LAPIC).
pub fn tiny_pvh_elf(code: &[u8]) -> Vec<u8> {
    elf_image(code, true)
}

fn elf_image(code: &[u8], pvh: bool) -> Vec<u8> {
    // Sized as the header fields that hold them, widened losslessly where a wider one does.
    const LOAD: u32 = 0x20_0000;
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    // XEN_ELFNOTE_PHYS32_ENTRY: namesz 4 ("Xen\0"), descsz 4, type 18, then the entry.
    let mut note = Vec::new();
    if pvh {
        for word in [4u32, 4, 18] {
            note.extend_from_slice(&word.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&LOAD.to_le_bytes());
    }
    let phnum: u16 = if pvh { 2 } else { 1 };
    let note_off = u64::from(EHDR + PHDR * phnum);
    let off = note_off + note.len() as u64;
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&u64::from(LOAD).to_le_bytes()); // entry
    e.extend_from_slice(&u64::from(EHDR).to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes());
    e.extend_from_slice(&EHDR.to_le_bytes());
    e.extend_from_slice(&PHDR.to_le_bytes());
    e.extend_from_slice(&phnum.to_le_bytes());
    e.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    let mut phdr = |kind: u32, flags: u32, offset: u64, addr: u64, len: u64, align: u64| {
        e.extend_from_slice(&kind.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        for v in [offset, addr, addr, len, len, align] {
            e.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(1, 5, off, u64::from(LOAD), code.len() as u64, 0x1000); // PT_LOAD, R+X
    if pvh {
        phdr(4, 4, note_off, 0, note.len() as u64, 4); // PT_NOTE
    }
    e.extend_from_slice(&note);
    e.extend_from_slice(code);
    e
}

/// A minimal bzImage (boot protocol 2.15, 64-bit entry, one setup sector) whose protected-mode
/// "kernel" at 1 MiB is 0x200 bytes of padding (the 32-bit entry, unused), then `code64`, which a
/// VMM enters in 64-bit mode at `code32_start + 0x200` with `rsi` = boot_params.
pub fn tiny_bzimage(code64: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0x1f1] = 1; // setup_sects: the boot sector plus one
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes()); // boot_flag
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    b[0x211] = 0x01; // loadflags: LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    b[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    b.extend_from_slice(&[0xf4; 0x200]);
    b.extend_from_slice(code64);
    b
}

/// 64-bit guest code for [`tiny_bzimage`]: prints boot_params' e820 entry count as a digit, then
/// the command line boot_params points to, then a newline on COM1, then resets via the i8042.
pub const CODE_PRINT_BOOT_PARAMS: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8a, 0x86, 0xe8, 0x01, 0x00, 0x00, // mov al, [rsi + 0x1e8] (e820_entries)
    0x04, 0x30, // add al, '0'
    0xee, // out dx, al
    0x8b, 0xbe, 0x28, 0x02, 0x00, 0x00, // mov edi, [rsi + 0x228] (hdr.cmd_line_ptr)
    0x8a, 0x07, // next: mov al, [rdi]
    0x84, 0xc0, // test al, al
    0x74, 0x06, // jz done
    0xee, // out dx, al
    0x48, 0xff, 0xc7, // inc rdi
    0xeb, 0xf4, // jmp next
    0xb0, 0x0a, // done: mov al, '\n'
    0xee, // out dx, al
    0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd, // i8042 reset, then idle
];

/// Guest code for [`tiny_elf`]: writes `msg` to COM1, then runs `tail`.
pub fn serial_print_then(msg: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in msg {
        c.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    c.extend_from_slice(tail);
    c
}

/// `sti; hlt; jmp back`: idles forever (until the host stops the VM). Interrupts stay on, as in
/// an idle kernel; `hlt` with them off is a power-off ([`CODE_POWER_OFF`]).
pub const CODE_HALT_LOOP: &[u8] = &[0xfb, 0xf4, 0xeb, 0xfd];
/// `cli; hlt`: what Linux does on `poweroff` without ACPI; ark-vmm takes it as a power-off.
pub const CODE_POWER_OFF: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];
/// i8042 CPU reset: `mov al, 0xfe; out 0x64, al`, then idle.
pub const CODE_I8042_RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// For [`tiny_pvh_elf`], two vCPUs: the BSP copies a real-mode trampoline to 0x10000, starts
/// APIC ID 1 with INIT + STARTUP (vector 0x10) through its LAPIC, waits for the AP's flag,
/// prints `B` and halts with interrupts off; the AP prints `A`, sets the flag, halts the same
/// way. Serial `AB` and a power-off exit prove an AP ran. [`code_start_ap_that_spins`] is the
/// same with an AP that never halts. Source (GNU as):
/// ```text
/// .code32
/// start: mov $(0x200000 + tramp - start), %esi; mov $0x10000, %edi
///        mov $(tramp_end - tramp), %ecx; rep movsb
///        movl $0x01000000, 0xfee00310; movl $0x00004500, 0xfee00300   # INIT to APIC ID 1
///        movl $0x01000000, 0xfee00310; movl $0x00004610, 0xfee00300   # STARTUP 0x10
/// wait:  pause; cmpb $1, 0x10100; jne wait
///        mov $0x3f8, %dx; mov $'B', %al; out %al, %dx; cli; 1: hlt; jmp 1b
/// .code16
/// tramp: mov $0x3f8, %dx; mov $'A', %al; out %al, %dx; movb $1, %cs:0x100
///        cli; 2: hlt; jmp 2b
/// tramp_end:
/// ```
pub const CODE_START_AP: &[u8] = &[
    0xbe, 0x4f, 0x00, 0x20, 0x00, 0xbf, 0x00, 0x00, 0x01, 0x00, 0xb9, 0x10, 0x00, 0x00, 0x00, 0xf3,
    0xa4, 0xc7, 0x05, 0x10, 0x03, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x01, 0xc7, 0x05, 0x00, 0x03, 0xe0,
    0xfe, 0x00, 0x45, 0x00, 0x00, 0xc7, 0x05, 0x10, 0x03, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x01, 0xc7,
    0x05, 0x00, 0x03, 0xe0, 0xfe, 0x10, 0x46, 0x00, 0x00, 0xf3, 0x90, 0x80, 0x3d, 0x00, 0x01, 0x01,
    0x00, 0x01, 0x75, 0xf5, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x42, 0xee, 0xfa, 0xf4, 0xeb, 0xfd, 0xba,
    0xf8, 0x03, 0xb0, 0x41, 0xee, 0x2e, 0xc6, 0x06, 0x00, 0x01, 0x01, 0xfa, 0xf4, 0xeb, 0xfd,
];

/// [`CODE_START_AP`] whose AP spins (`jmp .`) after setting the flag instead of halting: the
/// BSP halts with interrupts off, the guest as a whole does not stop.
pub fn code_start_ap_that_spins() -> Vec<u8> {
    let mut code = CODE_START_AP.to_vec();
    let tail = code.len() - 4; // the AP's `cli; hlt; jmp .-1`
    code[tail..].copy_from_slice(&[0xeb, 0xfe, 0x90, 0x90]); // jmp .; nop; nop
    code
}

/// Builds the static guest vsock client (`tests/fixtures/vm/vsock-client.c`) with musl-gcc
/// into `out`. Usage in the guest: `vsock-client PORT MESSAGE` (connects to CID 2).
pub fn build_vsock_client(out: &Path) -> anyhow::Result<()> {
    let src = crate::workspace_root().join("tests/fixtures/vm/vsock-client.c");
    let res = Command::new("musl-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .map_err(|e| anyhow::anyhow!("musl-gcc (musl-tools): {e}"))?;
    anyhow::ensure!(
        res.status.success(),
        "musl-gcc: {}",
        String::from_utf8_lossy(&res.stderr).trim()
    );
    Ok(())
}

/// Echoes COM1 input back to COM1 (polling the line status register) until a newline, then
/// resets through the i8042: exercises host stdin → guest serial input.
pub const CODE_SERIAL_ECHO_LINE: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, // 0: mov dx, 0x3fd (LSR)
    0xec, // 4: in al, dx
    0xa8, 0x01, // test al, 1 (data ready)
    0x74, 0xfb, // jz 4
    0x66, 0xba, 0xf8, 0x03, // 9: mov dx, 0x3f8
    0xec, // in al, dx
    0xee, // out dx, al
    0x3c, 0x0a, // cmp al, '\n'
    0x75, 0xed, // jne 0
    0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd, // i8042 reset, then idle
];
/// `ud2` with an empty IDT: #UD → #DF → triple fault (KVM_EXIT_SHUTDOWN).
pub const CODE_TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];

/// A copy of the ELF `kernel` in `dir` without its `.notes` section, hence without the PVH
/// (Xen) entry note: ark-vmm then boots it through the 64-bit Linux boot protocol instead.
pub fn kernel_without_pvh_note(kernel: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("vmlinux-no-pvh");
    let res = Command::new("objcopy")
        .args(["-R", ".notes"])
        .arg(kernel)
        .arg(&out)
        .output()
        .map_err(|e| anyhow::anyhow!("objcopy (binutils): {e}"))?;
    anyhow::ensure!(
        res.status.success(),
        "objcopy: {}",
        String::from_utf8_lossy(&res.stderr).trim()
    );
    Ok(out)
}
