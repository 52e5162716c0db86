//! seccomp-BPF (seccompiler) for the VMM's threads.
//!
//! - vCPU threads ([`vcpu_filter`]) only run KVM_RUN and dispatch exits to device registers: a
//!   tight allowlist.
//! - The event-loop thread ([`event_loop_filter`]) serves every device backend: virtio-blk file
//!   I/O, virtio-fs (fuse-backend-rs `PassthroughFs`: *at() calls, per-request
//!   `setresuid`/`setresgid`), vsock over AF_UNIX sockets, rng, console. It is applied after all
//!   devices are built and before the loop runs, on a thread that exists only for the loop, so
//!   the caller of [`crate::run`] (stage1-kvm's main thread) stays unconfined.
//! - `ark-vmm` also puts the whole process under [`vmm_denylist`] (EPERM for exec, ptrace,
//!   mounts, namespaces, module/kexec loading, bpf, open_by_handle_at, ...).
//!
//! A syscall outside an allowlist traps (SIGSYS); [`install_violation_handler`]'s handler
//! prints one line naming the syscall number and exits with [`crate::EXIT_CODE_VMM_ERROR`].
//! That is Firecracker's policy (log the SIGSYS, end the VMM): a call outside the list means
//! something is already wrong, and nothing the thread does afterwards can be trusted.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// KVM_RUN = _IO(KVMIO, 0x80).
const KVM_RUN: u64 = 0xae80;
/// KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, struct kvm_mp_state) and KVM_GET_REGS =
/// _IOR(KVMIO, 0x81, struct kvm_regs): a kicked vCPU reports whether it halted for good
/// (crate::poweroff).
const KVM_GET_MP_STATE: u64 = 0x8004_ae98;
const KVM_GET_REGS: u64 = 0x8090_ae81;

fn ioctl_rule(request: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        request,
    )?])
}

/// Why a filter could not be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] seccompiler::BackendError),
    #[error(transparent)]
    Apply(#[from] seccompiler::Error),
}

fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, Error> {
    let arch = std::env::consts::ARCH.try_into()?;
    let filter = SeccompFilter::new(rules, mismatch, matched, arch)?;
    Ok(BpfProgram::try_from(filter)?)
}

/// The vCPU thread filter.
pub fn vcpu_filter() -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = [
        // Exits: port/MMIO device emulation writes the serial output, eventfds and logs.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_futex,
        // Transport activation hands out eventfd clones.
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_close,
        // Allocation.
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_mprotect,
        // Signals (the kick) and thread exit.
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_getrandom,
        // What log writers (the embedding program's tracing subscriber) and panics/aborts use.
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_lseek,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_rt_sigaction,
    ]
    .into_iter()
    .map(|nr| (nr, vec![]))
    .collect();
    rules.insert(
        libc::SYS_ioctl,
        [KVM_RUN, KVM_GET_MP_STATE, KVM_GET_REGS]
            .into_iter()
            .map(ioctl_rule)
            .collect::<Result<Vec<_>, _>>()?,
    );
    build(rules, SeccompAction::Trap, SeccompAction::Allow)
}

/// Syscalls the event loop makes, by who needs them.
const EVENT_LOOP_ALLOWED: &[i64] = &[
    // event-manager, eventfds (queue notifications, irqfds, stop), the stop signal handler.
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_fcntl,
    // Rust std, the allocator, tracing, panics.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // virtio-rng.
    libc::SYS_getrandom,
    // virtio-blk (and virtio-fs file I/O).
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_flock,
    // virtio-fs (fuse-backend-rs PassthroughFs). Credentials are switched per request with
    // raw per-thread setresuid/setresgid (not glibc's process-wide setxid broadcast).
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_umask,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_getuid,
    libc::SYS_getgid,
    // vsock: host clients on the Unix listener, connections to `<uds>_<port>` (socket() is
    // limited to AF_UNIX below).
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    // vsock's credit/keepalive timer.
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
];

/// `ioctl` requests the event loop makes: std's `set_nonblocking` on accepted vsock streams;
/// virtio-net setting the TAP's header size and the offloads its guest accepted.
const EVENT_LOOP_IOCTLS: &[u64] = &[libc::FIONBIO, libc::TUNSETVNETHDRSZ, libc::TUNSETOFFLOAD];

/// The event-loop thread filter. Unlisted syscalls trap (see [`install_violation_handler`]).
pub fn event_loop_filter() -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        EVENT_LOOP_ALLOWED.iter().map(|nr| (*nr, vec![])).collect();
    let ioctls = EVENT_LOOP_IOCTLS
        .iter()
        .map(|r| ioctl_rule(*r))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    let unix_only = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_UNIX as u64,
    )?])?;
    rules.insert(libc::SYS_socket, vec![unix_only]);
    build(rules, SeccompAction::Trap, SeccompAction::Allow)
}

/// Syscalls no VMM thread needs, and that a compromised VMM would want for escaping or
/// attacking the host.
const DENIED: &[i64] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_quotactl,
    libc::SYS_personality,
];

/// The process-wide denylist (EPERM), for `ark-vmm`'s main thread before it starts the VM:
/// every thread created later inherits it.
pub fn vmm_denylist() -> Result<BpfProgram, Error> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|nr| (*nr, vec![])).collect();
    build(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )
}

/// Applies `filter` to the calling thread. SIGSYS is unblocked first: an embedding program
/// that blocks signals for sigwait would otherwise turn a reported violation into a silent
/// SIGSYS kill.
pub fn apply(filter: &BpfProgram) -> Result<(), Error> {
    // SAFETY: builds a one-signal set on the stack and unblocks it for this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(seccompiler::apply_filter(filter)?)
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t`, in `i32`s: after si_signo, si_errno,
/// si_code, padding and the 8-byte `si_call_addr` (x86_64/aarch64 layout).
const SI_OFF_SYSCALL: usize = 6;

/// SIGSYS handler for allowlist violations: one line on stderr, then the VMM exits. Only
/// async-signal-safe calls that every allowlist admits (write, exit_group).
extern "C" fn on_violation(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; for SIGSYS the
    // syscall number sits at SI_OFF_SYSCALL.
    let nr = unsafe { *(info as *const i32).add(SI_OFF_SYSCALL) };
    let mut line = [0u8; 128];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        let n = bytes.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    push(b"ark-vmm: seccomp: a VMM thread made syscall ");
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    push(&digits[i..]);
    push(b", which its allowlist forbids; stopping the VMM\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid for `len`.
    unsafe {
        libc::write(2, line.as_ptr() as *const libc::c_void, len);
        libc::_exit(crate::EXIT_CODE_VMM_ERROR);
    }
}

/// Installs the process-wide SIGSYS handler that reports an allowlist violation (the syscall
/// number) and exits with [`crate::EXIT_CODE_VMM_ERROR`]. Idempotent.
pub fn install_violation_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask is well-formed.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_violation as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_filter_allows_kvm_run_and_what_exits_need() {
        let filter = vcpu_filter().unwrap();
        // Applied in a throwaway thread: allowed calls work, an ioctl other than KVM_RUN and a
        // syscall off the list would end the process, so only the allowed side is exercised
        // here (the event-loop test below shows the violation path in a child process).
        let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        std::thread::spawn(move || {
            apply(&filter).unwrap();
            evt.write(1).unwrap();
            let c = evt.try_clone().unwrap();
            assert_eq!(c.read().unwrap(), 1);
            let v: Vec<u8> = vec![0; 1 << 20];
            drop(v);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn denylist_refuses_escape_syscalls_with_eperm() {
        let filter = vmm_denylist().unwrap();
        std::thread::spawn(move || {
            // SAFETY: unshare(0) changes nothing; it only probes whether the call is allowed.
            assert_eq!(unsafe { libc::unshare(0) }, 0, "allowed before the filter");
            apply(&filter).unwrap();
            // SAFETY: as above; the filter now makes it fail with EPERM.
            assert_eq!(unsafe { libc::unshare(0) }, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EPERM)
            );
            let err = std::process::Command::new("/bin/true")
                .status()
                .unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "exec must fail");
            // Ordinary work still runs.
            let f = tempfile::tempfile().unwrap();
            drop(f);
        })
        .join()
        .unwrap();
    }

    /// Runs this test binary again, only `test`, with `ARK_SECCOMP_CHILD` set: a violation
    /// ends the whole process, so it must not be this one.
    fn run_child(test: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env("ARK_SECCOMP_CHILD", "1")
            .output()
            .unwrap()
    }

    #[test]
    fn event_loop_filter_allows_device_work_and_reports_a_forbidden_syscall() {
        const NAME: &str =
            "seccomp::tests::event_loop_filter_allows_device_work_and_reports_a_forbidden_syscall";
        if std::env::var_os("ARK_SECCOMP_CHILD").is_none() {
            let out = run_child(NAME);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stdout.contains("allowed calls worked"),
                "{stdout}\n{stderr}"
            );
            assert!(!stdout.contains("forbidden call returned"), "{stdout}");
            assert_eq!(
                out.status.code(),
                Some(crate::EXIT_CODE_VMM_ERROR),
                "{stderr}"
            );
            let want = format!(
                "made syscall {}, which its allowlist forbids",
                libc::SYS_socket
            );
            assert!(stderr.contains(&want), "{stderr}");
            return;
        }
        // Child: confine one thread the way the event loop is, do device-like work on it.
        let filter = event_loop_filter().unwrap();
        install_violation_handler().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        // Built before the filter, as the vsock listener is.
        let sock = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            apply(&filter).unwrap();
            // eventfds, files (virtio-blk, virtio-fs), AF_UNIX sockets (vsock), getrandom.
            evt.write(1).unwrap();
            assert_eq!(evt.read().unwrap(), 1);
            let path = dir.path().join("f");
            std::fs::write(&path, b"data").unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"data");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
            let _client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            accepted.set_nonblocking(true).unwrap();
            let mut b = [0u8; 16];
            getrandom::fill(&mut b).unwrap();
            println!("allowed calls worked");
            // An Internet socket is not on the list: SIGSYS, one line, exit status 1.
            // SAFETY: plain socket(2); the fd is closed if (wrongly) returned.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            println!("forbidden call returned {fd}");
        })
        .join()
        .unwrap();
    }
}
