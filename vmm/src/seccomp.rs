//! seccomp-BPF for vCPU threads (seccompiler). A vCPU thread only runs KVM_RUN and dispatches
//! exits to device registers, so it gets a tight allowlist; anything else kills the VMM
//! (Firecracker's policy: a syscall outside the list means something is already wrong).
//!
//! The event-loop thread is not allowlisted yet: device backends (virtio-fs above all) need a
//! broad and device-specific syscall set. `ark-vmm` puts the whole process under
//! [`vmm_denylist`] instead: calls a VMM never makes (exec, ptrace, mounts, namespaces, module
//! and kexec loading, bpf, open_by_handle_at, ...) fail with EPERM.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// KVM_RUN = _IO(KVMIO, 0x80).
const KVM_RUN: u64 = 0xae80;

fn ioctl_rule(request: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        request,
    )?])
}

/// The vCPU thread filter.
pub fn vcpu_filter() -> Result<BpfProgram, String> {
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
        vec![ioctl_rule(KVM_RUN).map_err(|e| e.to_string())?],
    );
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
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
pub fn vmm_denylist() -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|nr| (*nr, vec![])).collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// Applies `filter` to the calling thread.
pub fn apply(filter: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(filter).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_filter_allows_kvm_run_and_kills_on_others() {
        let filter = vcpu_filter().unwrap();
        // Applied in a throwaway thread: allowed calls work, an ioctl other than KVM_RUN and a
        // syscall off the list would kill the process, so only the allowed side is exercised.
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
}
