//! The device allowlist of ns and fly pods: which device nodes the pod's processes may open or
//! create. cgroup v1: the `devices` controller's `devices.deny` / `devices.allow` files. cgroup
//! v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program, generated here from the same rules (a handful
//! of instructions per rule, as runc's devicefilter and youki's libcgroups do) and attached to
//! the pod's cgroup with `BPF_F_ALLOW_MULTI`, so it applies to every cgroup below it and on top
//! of whatever programs the host attached above.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// What a rule lets a process do with matching nodes (the cgroup v1 `rwm` letters; the bits
/// are the kernel's `BPF_DEVCG_ACC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);

    fn letters(self) -> String {
        [(Self::READ, 'r'), (Self::WRITE, 'w'), (Self::MKNOD, 'm')]
            .iter()
            .filter(|(a, _)| self.0 & a.0 != 0)
            .map(|(_, c)| *c)
            .collect()
    }
}

/// Character or block device (the kernel's `BPF_DEVCG_DEV_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block = 1,
    Char = 2,
}

/// One allow rule; `None` for major or minor is the `*` wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

const fn char_dev(major: u32, minor: Option<u32>, access: Access) -> DeviceRule {
    DeviceRule {
        kind: DeviceKind::Char,
        major: Some(major),
        minor,
        access,
    }
}

/// runc's default allowlist less the host console (5:1: no pod `/dev` has a console node, and
/// the stage1 makes sure guest-init never needs one): the standard nodes guest-init puts in
/// every `/dev` (null, zero, full, random, urandom, tty, ptmx, the pod's own ptys), and `mknod`
/// of any node — which only creates a name: opening it is still refused unless a rule above
/// allows it.
pub const DEFAULT_ALLOWED: [DeviceRule; 10] = [
    char_dev(1, Some(3), Access::ALL),
    char_dev(1, Some(5), Access::ALL),
    char_dev(1, Some(7), Access::ALL),
    char_dev(1, Some(8), Access::ALL),
    char_dev(1, Some(9), Access::ALL),
    char_dev(5, Some(0), Access::ALL),
    char_dev(5, Some(2), Access::ALL),
    char_dev(136, None, Access::ALL),
    DeviceRule {
        kind: DeviceKind::Char,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule {
        kind: DeviceKind::Block,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
];

impl DeviceRule {
    /// The line for v1 `devices.allow`: `c 1:3 rwm`, `b *:* m`.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let kind = match self.kind {
            DeviceKind::Block => 'b',
            DeviceKind::Char => 'c',
        };
        format!(
            "{kind} {}:{} {}",
            num(self.major),
            num(self.minor),
            self.access.letters()
        )
    }
}

/// cgroup v1: deny everything, then allow `rules`. Must run before the cgroup has children
/// (the kernel refuses `a` then); children created afterwards inherit the list.
pub fn restrict_v1(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    use std::io::Write;
    super::write(&dir.join("devices.deny"), "a")?;
    let allow = dir.join("devices.allow");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&allow)
        .map_err(|e| super::ctx(&allow, e))?;
    for r in rules {
        // One rule per write(2) (the kernel parses a single rule per call), one open for all.
        file.write_all(r.v1_line().as_bytes())
            .map_err(|e| super::ctx(&allow, e))?;
    }
    Ok(())
}

/// cgroup v2: loads the allowlist program and attaches it to the cgroup directory `dir`. The
/// attachment keeps the program alive; removing the cgroup detaches it.
pub fn restrict_v2(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let prog = program(rules)
        .and_then(|p| load_program(&p))
        .map_err(|e| io::Error::new(e.kind(), format!("load the device cgroup program: {e}")))?;
    let cgroup = std::fs::File::open(dir).map_err(|e| super::ctx(dir, e))?;
    attach(&prog, &cgroup).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("attach the device program to {}: {e}", dir.display()),
        )
    })
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst register in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes (linux/bpf.h, bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

/// The program: `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` in r1,
/// `access_type` = access << 16 | type. Loads type (r2), access (r3), major (r4), minor (r5),
/// then one block per rule that jumps to the next block on any mismatch and returns 1 (allow)
/// at its end; after the last block, 0 (deny). An error for a major or minor above
/// `i32::MAX`: the 64-bit compare sign-extends the immediate, so such a rule could never match.
pub fn program(rules: &[DeviceRule]) -> io::Result<Vec<Insn>> {
    let imm = |what: &str, n: u32| {
        i32::try_from(n).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device {what} {n} is out of range for the device program"),
            )
        })
    };
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Jump offsets are filled in once the block's length is known (NEXT = to its end).
        const NEXT: i16 = i16::MIN;
        let mut block = vec![insn(JMP_JNE_K, 2, 0, NEXT, r.kind as i32)];
        if r.access != Access::ALL {
            // The access asked for must be a subset of the rule's: (asked & rule) == asked.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, i32::from(r.access.0)));
            block.push(insn(JMP_JNE_X, 1, 3, NEXT, 0));
        }
        if let Some(major) = r.major {
            block.push(insn(JMP_JNE_K, 4, 0, NEXT, imm("major", major)?));
        }
        if let Some(minor) = r.minor {
            block.push(insn(JMP_JNE_K, 5, 0, NEXT, imm("minor", minor)?));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == NEXT {
                ins.off = i16::try_from(len - i - 1).expect("a block has at most 6 instructions");
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    Ok(p)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (the kernel zero-extends a shorter attr).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = libc::c_uint::try_from(std::mem::size_of::<T>())
        .expect("a bpf_attr prefix is a few dozen bytes");
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of union bpf_attr, and its size
    // is passed along; every pointer inside it points to memory the caller keeps alive.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn load_program(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = CString::new("Apache-2.0").expect("no NUL");
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"ark_devcg");
    let insn_cnt = u32::try_from(insns.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a device program of {} instructions is too long",
                insns.len()
            ),
        )
    })?;
    let attr = |log: &mut Vec<u8>| ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: u32::try_from(log.len()).expect("the verifier log buffer is 16 KiB"),
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr(&mut Vec::new())) {
        Ok(fd) => {
            let fd = RawFd::try_from(fd).map_err(|_| {
                io::Error::other(format!("BPF_PROG_LOAD returned {fd}, not a descriptor"))
            })?;
            // SAFETY: BPF_PROG_LOAD returned a new (close-on-exec) descriptor that we now own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        Err(e) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 16 * 1024];
            let _ = bpf(BPF_PROG_LOAD, &mut attr(&mut log));
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let why = String::from_utf8_lossy(&log[..end]);
            let last = why.lines().last().unwrap_or("").trim();
            Err(if last.is_empty() {
                e
            } else {
                io::Error::new(e.kind(), format!("{e} (verifier: {last})"))
            })
        }
    }
}

fn attach(prog: &OwnedFd, cgroup: &std::fs::File) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: fd_arg(cgroup),
        attach_bpf_fd: fd_arg(prog),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// A descriptor as `union bpf_attr` carries it (`__u32`).
fn fd_arg(fd: &impl AsRawFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("an open descriptor is non-negative")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_are_runcs_defaults_less_the_console() {
        let lines: Vec<String> = DEFAULT_ALLOWED.iter().map(DeviceRule::v1_line).collect();
        assert_eq!(
            lines,
            [
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:2 rwm",
                "c 136:* rwm",
                "c *:* m",
                "b *:* m"
            ]
        );
    }

    /// Runs the generated program on one request, as the kernel would (only the few
    /// instructions `program` emits are understood).
    fn eval(p: &[Insn], kind: DeviceKind, major: u32, minor: u32, access: Access) -> u64 {
        let ctx = [(u32::from(access.0) << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[forward(i.off) / 4]),
                ALU32_AND_K => r[dst] = u64::from(low32(r[dst]) & low32(imm64(i.imm))),
                ALU32_RSH_K => r[dst] = u64::from(low32(r[dst]) >> i.imm),
                ALU32_MOV_X => r[dst] = u64::from(low32(r[src])),
                ALU64_MOV_K => r[dst] = imm64(i.imm),
                JMP_JNE_K if r[dst] != imm64(i.imm) => pc += forward(i.off),
                JMP_JNE_X if r[dst] != r[src] => pc += forward(i.off),
                JMP_JNE_K | JMP_JNE_X => {}
                JMP_EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    /// The low half of a register, as the ALU32 instructions see it.
    fn low32(r: u64) -> u32 {
        u32::try_from(r & u64::from(u32::MAX)).expect("masked to 32 bits")
    }

    /// An immediate sign-extended to 64 bits, as the 64-bit instructions see it.
    fn imm64(imm: i32) -> u64 {
        u64::from_ne_bytes(i64::from(imm).to_ne_bytes())
    }

    /// A load offset or jump, never negative in the programs `program` emits.
    fn forward(off: i16) -> usize {
        usize::try_from(off).expect("no backward offsets")
    }

    #[test]
    fn program_allows_exactly_the_rules() {
        use DeviceKind::{Block, Char};
        let p = program(&DEFAULT_ALLOWED).unwrap();
        let rw = Access(Access::READ.0 | Access::WRITE.0);
        assert_eq!(eval(&p, Char, 1, 3, rw), 1, "null");
        assert_eq!(eval(&p, Char, 1, 9, Access::READ), 1, "urandom");
        assert_eq!(eval(&p, Char, 136, 42, rw), 1, "a pty");
        assert_eq!(eval(&p, Char, 5, 2, Access::ALL), 1, "ptmx");
        assert_eq!(eval(&p, Block, 7, 0, Access::MKNOD), 1, "mknod is allowed");
        assert_eq!(eval(&p, Block, 7, 0, Access::READ), 0, "a loop device");
        assert_eq!(eval(&p, Block, 8, 0, rw), 0, "a disk");
        assert_eq!(eval(&p, Char, 1, 1, Access::READ), 0, "/dev/mem");
        assert_eq!(eval(&p, Char, 10, 232, rw), 0, "/dev/kvm");
        assert_eq!(eval(&p, Char, 1, 3, Access(2 | 1)), 1);
        // Asking for read along with mknod of a disk is not a subset of `m`.
        assert_eq!(eval(&p, Block, 8, 0, Access(2 | 1)), 0);
        assert_eq!(eval(&program(&[]).unwrap(), Char, 1, 3, Access::READ), 0);
    }

    #[test]
    fn program_refuses_a_number_it_could_not_compare() {
        let err = program(&[char_dev(1 << 31, None, Access::ALL)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("major 2147483648"), "{err}");
        let minor = char_dev(1, Some(u32::MAX), Access::ALL);
        assert!(program(&[minor]).is_err());
        assert!(program(&[char_dev(4095, Some((1 << 20) - 1), Access::ALL)]).is_ok());
    }
}
