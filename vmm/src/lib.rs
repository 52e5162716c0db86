//! ark's VMM: a small KVM microVM on rust-vmm crates. Used as a library by stage1-kvm
//! ([`run`], [`run_with_stop`]) and as the standalone `ark-vmm` binary.
//!
//! The machine: guest RAM split around a 768 MiB MMIO hole below 4 GiB, KVM's in-kernel irqchip
//! (PIC, IOAPIC, LAPICs) and PIT, one thread per vCPU, an 8250 UART on COM1, an i8042 stub for
//! `reboot=k`, and virtio-mmio devices announced on the kernel command line. Devices and host
//! input are served by one epoll event loop (event-manager) on its own `event-loop` thread.

pub mod arch;
pub mod boot;
mod builder;
pub mod bus;
pub mod config;
mod device_manager;
pub mod devices;
mod error;
pub mod exit;
pub mod poweroff;
pub mod rate_limiter;
pub mod seccomp;
mod stdin;
pub mod vcpu;
pub mod virtio;
mod vm;

pub use config::{
    BlockConfig, FsConfig, NetConfig, SerialConfig, TapSource, VmConfig, VsockConfig,
};
pub use error::Error;
pub use exit::{StopHandle, VmExit, EXIT_CODE_VMM_ERROR};
pub use rate_limiter::{RateLimit, TokenBucketConfig};
pub use vm::{run, run_with_stop};
