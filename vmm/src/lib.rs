//! ark's VMM: a small KVM microVM on rust-vmm crates. Used as a library by stage1-kvm and as the
//! standalone `ark-vmm` binary.

pub mod devices;
pub mod virtio;
