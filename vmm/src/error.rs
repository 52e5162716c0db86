//! [`Error`]: everything that can keep a VM from being built or from running, one line each.
//! Underlying errors are kept as sources; the message also names them, since callers print
//! only the top line.

use std::io;
use std::path::PathBuf;

use crate::{arch, boot, bus, devices, seccomp};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A [`crate::VmConfig`] that fails validation (the message says which field and why).
    #[error("invalid config: {0}")]
    Config(String),
    #[error("/dev/kvm: {0}")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm: KVM lacks {0}")]
    KvmCapability(&'static str),
    #[error("KVM {0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("guest memory ({0} MiB): {1}")]
    GuestMemory(u32, #[source] vm_memory::mmap::FromRangesError),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error("vCPU setup: {0}")]
    Regs(#[from] arch::regs::Error),
    #[error(transparent)]
    MpTable(#[from] arch::mptable::Error),
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("serial: {}: {source}", path.display())]
    Serial {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("block device {}: {source}", path.display())]
    Block {
        path: PathBuf,
        #[source]
        source: devices::block::Error,
    },
    #[error("fs device {tag}: {source}")]
    Fs {
        tag: String,
        #[source]
        source: devices::fs::Error,
    },
    #[error("net device {index}: {source}")]
    Net {
        index: usize,
        #[source]
        source: devices::net::Error,
    },
    #[error("vsock device: {0}")]
    Vsock(#[from] devices::vsock::Error),
    #[error("console device: {}: {source}", path.display())]
    ConsoleOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("console device: {0}")]
    Console(#[from] devices::console::Error),
    #[error("rng device: {0}")]
    Rng(#[from] devices::rng::Error),
    #[error("too many virtio devices (at most {0})")]
    TooManyDevices(usize),
    #[error(transparent)]
    Bus(#[from] bus::OverlapError),
    #[error("event loop: {0:?}")]
    EventLoop(#[source] event_manager::Error),
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccomp::Error),
    #[error("seccomp: SIGSYS handler: {0}")]
    SeccompHandler(#[source] io::Error),
    /// A host resource the VMM needs (`what` names it: "eventfd", "stdin", ...).
    #[error("{0}")]
    Io(&'static str, #[source] io::Error),

    // Failures while the guest runs: reported to the exit signal by the thread that saw them.
    #[error("vcpu{0}: thread panicked")]
    VcpuPanicked(u8),
    #[error("vcpu{id}: seccomp: {source}")]
    VcpuSeccomp {
        id: u8,
        #[source]
        source: seccomp::Error,
    },
    #[error("vcpu{id}: KVM_RUN: {source}")]
    KvmRun {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vcpu{id}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})")]
    KvmEntryFailed { id: u8, reason: u64, cpu: u32 },
    #[error(
        "vcpu{0}: KVM internal error (emulation failure: the guest kernel ran an \
         instruction this host's KVM cannot emulate)"
    )]
    KvmInternal(u8),
    /// `exit` is the exit's debug form: kvm-ioctls' `VcpuExit` borrows the run page.
    #[error("vcpu{id}: unexpected KVM exit {exit}")]
    UnexpectedExit { id: u8, exit: String },
    #[error("spawning a vCPU thread: {0}")]
    SpawnVcpu(#[source] io::Error),
    #[error("spawning the event-loop thread: {0}")]
    SpawnEventLoop(#[source] io::Error),
    #[error("event loop: thread panicked")]
    EventLoopPanicked,
    #[error("event loop: seccomp: {0}")]
    EventLoopSeccomp(#[source] seccomp::Error),
    #[error("power-off watch: timerfd: {0}")]
    PowerOffTimer(#[source] io::Error),
    #[error("power-off watch: registering timerfd: {0:?}")]
    PowerOffRegister(#[source] event_manager::Error),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn messages_stay_one_line_and_sources_are_kept() {
        let e = Error::Block {
            path: "/nope.img".into(),
            source: devices::block::Error::NotAFile("/nope.img".into()),
        };
        assert_eq!(
            e.to_string(),
            "block device /nope.img: disk image /nope.img is neither a regular file nor a block device"
        );
        assert!(e.source().unwrap().is::<devices::block::Error>());
        let e = Error::Io("eventfd", io::Error::from_raw_os_error(libc::EMFILE));
        assert!(e.source().unwrap().is::<io::Error>());
        let e = Error::KvmRun {
            id: 1,
            source: kvm_ioctls::Error::new(libc::EFAULT),
        };
        assert!(e.to_string().starts_with("vcpu1: KVM_RUN: "), "{e}");
        assert!(e.source().unwrap().is::<kvm_ioctls::Error>());
    }
}
