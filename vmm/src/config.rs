//! The VM description: one structure for the library API (`vmm::run`), the `--config FILE.json`
//! file and the `ark-vmm` flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A complete microVM description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a bzImage.
    pub kernel: PathBuf,
    /// Kernel command line; ark-vmm appends a `virtio_mmio.device=` entry per device.
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub blk: Vec<BlockConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub serial: SerialConfig,
    /// A virtio-console (`/dev/hvc0` in the guest) and where its output goes; with `stdout`,
    /// a terminal or pipe on stdin feeds it (unless the serial console already reads stdin).
    #[serde(default)]
    pub console: Option<SerialConfig>,
    /// Attach a virtio-rng device.
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Confine the vCPU threads and the event-loop thread with seccomp allowlists (`ark-vmm` also
    /// puts the whole process under a denylist).
    #[serde(default = "default_true")]
    pub seccomp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Mount tag the guest uses (`mount -t virtiofs TAG /mnt`, or `root=TAG rootfstype=virtiofs`).
    pub tag: String,
    pub dir: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// The host (or another guest) may change `dir` while this guest runs, e.g. a pod volume:
    /// short cache timeouts instead of the long ones that suit a directory only this guest
    /// changes (a pod root).
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// Host side Unix socket (Firecracker's hybrid vsock convention).
    pub uds_path: PathBuf,
}

/// Where the guest's COM1 output goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialConfig {
    #[default]
    Stdout,
    /// The VMM's stderr: a console that carries diagnostics, not the guest's program output.
    Stderr,
    None,
    File(PathBuf),
}

fn default_memory_mib() -> u32 {
    128
}
fn default_vcpus() -> u8 {
    1
}
fn default_true() -> bool {
    true
}

/// Upper bounds that keep a config from asking for something absurd.
pub const MAX_VCPUS: u8 = 32;
pub const MIN_MEMORY_MIB: u32 = 16;
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            cmdline: String::new(),
            memory_mib: default_memory_mib(),
            vcpus: default_vcpus(),
            initrd: None,
            blk: Vec::new(),
            fs: Vec::new(),
            vsock: None,
            serial: SerialConfig::default(),
            console: None,
            rng: true,
            seccomp: true,
        }
    }

    /// Checks values that do not need the host (files are checked when the VM is built).
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(format!("vcpus {}: must be 1..={MAX_VCPUS}", self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(format!(
                "memory {} MiB: must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                self.memory_mib
            ));
        }
        for fs in &self.fs {
            // virtio-fs config space holds a 36-byte tag.
            if fs.tag.is_empty() || fs.tag.len() > 36 || fs.tag.contains(['\0', ' ', ',']) {
                return Err(format!(
                    "fs tag {:?}: 1-36 bytes, no spaces or commas",
                    fs.tag
                ));
            }
        }
        if let Some(v) = &self.vsock {
            // CIDs 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
            if v.guest_cid < 3 || v.guest_cid >= u32::MAX as u64 {
                return Err(format!(
                    "vsock guest cid {}: must be 3..2^32-1",
                    v.guest_cid
                ));
            }
        }
        if self.cmdline.contains('\0') {
            return Err("cmdline contains a NUL byte".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_roundtrip_and_defaults() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","blk":[{"path":"/r.img","read_only":true}],
                "serial":{"file":"/tmp/s.log"},"vsock":{"guest_cid":3,"uds_path":"/tmp/v.sock"}}"#,
        )
        .unwrap();
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.vcpus, 1);
        assert!(c.rng);
        assert!(c.blk[0].read_only);
        assert_eq!(c.serial, SerialConfig::File("/tmp/s.log".into()));
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let none: VmConfig = serde_json::from_str(r#"{"kernel":"/k","serial":"none"}"#).unwrap();
        assert_eq!(none.serial, SerialConfig::None);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","bogus":1}"#).is_err());
        let mut c = VmConfig::new("/k");
        assert!(c.validate().is_ok());
        c.vcpus = 0;
        assert!(c.validate().is_err());
        c.vcpus = 1;
        c.memory_mib = 1;
        assert!(c.validate().is_err());
        c.memory_mib = 64;
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: "/x".into(),
        });
        assert!(c.validate().is_err());
    }
}
