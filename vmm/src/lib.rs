//! ark's VMM: a small KVM microVM on rust-vmm crates. Used as a library by stage1-kvm
//! ([`run`], [`run_with_stop`]) and as the standalone `ark-vmm` binary.
//!
//! The machine: guest RAM split around a 768 MiB MMIO hole below 4 GiB, KVM's in-kernel irqchip
//! (PIC, IOAPIC, LAPICs) and PIT, one thread per vCPU, an 8250 UART on COM1, an i8042 stub for
//! `reboot=k`, and virtio-mmio devices announced on the kernel command line. Devices and host
//! input are served by one epoll event loop (event-manager) on its own `event-loop` thread.

pub mod arch;
pub mod boot;
pub mod bus;
pub mod config;
pub mod devices;
pub mod exit;
pub mod poweroff;
pub mod seccomp;
pub mod vcpu;
pub mod virtio;
mod vm;

pub use config::{BlockConfig, FsConfig, SerialConfig, VmConfig, VsockConfig};
pub use exit::{StopHandle, VmExit, EXIT_CODE_VMM_ERROR};
pub use vm::{run, run_with_stop};

/// Everything that can keep a VM from being built or from running. One line each.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("/dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("/dev/kvm: KVM lacks {0}")]
    KvmCapability(&'static str),
    #[error("KVM {0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("guest memory ({0} MiB): {1}")]
    GuestMemory(u32, String),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error("vCPU setup: {0}")]
    Regs(#[from] arch::regs::Error),
    #[error(transparent)]
    MpTable(#[from] arch::mptable::Error),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("serial: {0}")]
    Serial(String),
    #[error("block device {0}: {1}")]
    Block(String, String),
    #[error("fs device {0}: {1}")]
    Fs(String, String),
    #[error("vsock device: {0}")]
    Vsock(String),
    #[error("console device: {0}")]
    Console(String),
    #[error("rng device: {0}")]
    Rng(String),
    #[error("too many virtio devices (at most {0})")]
    TooManyDevices(usize),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// A failure while the guest ran (KVM_RUN error, emulation failure, ...).
    #[error("{0}")]
    Runtime(String),
}
