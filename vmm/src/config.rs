//! The VM description: one structure for the library API (`vmm::run`), the `--config FILE.json`
//! file and the `ark-vmm` flags.

use std::path::PathBuf;

use ark_pod_spec::net::Mac;
use serde::{Deserialize, Serialize};

use crate::rate_limiter::RateLimit;

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
    /// virtio-net devices, one per TAP (guest `eth0`, `eth1`, ... in this order).
    #[serde(default)]
    pub nets: Vec<NetConfig>,
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

/// One virtio-net device and the TAP behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap: TapSource,
    /// The guest interface's MAC (a unicast address).
    pub mac: Mac,
    /// Offered to the guest as its MTU (VIRTIO_NET_F_MTU); the TAP's own MTU is the caller's.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Limits on frames towards the guest.
    #[serde(default)]
    pub rx_rate: Option<RateLimit>,
    /// Limits on frames from the guest.
    #[serde(default)]
    pub tx_rate: Option<RateLimit>,
}

/// Where a virtio-net device's TAP comes from. Either way it must be a TAP with
/// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (what `ark_os::tap::open_tap(name, true)` makes); the device
/// makes it non-blocking and sets its header size and offloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TapSource {
    /// Opened (created if missing) by name in the VMM's network namespace.
    Name(String),
    /// A descriptor the caller opened and keeps open until the VM is built; the VMM uses a
    /// duplicate (so the caller may close its own afterwards).
    Fd(i32),
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
            nets: Vec::new(),
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
        for (i, net) in self.nets.iter().enumerate() {
            net.validate().map_err(|e| format!("net {i}: {e}"))?;
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

impl NetConfig {
    fn validate(&self) -> Result<(), String> {
        // Bit 0 of the first octet: group address; an all-zero MAC is no address.
        if self.mac.0[0] & 1 != 0 || self.mac.0 == [0; 6] {
            return Err(format!("mac {}: must be a unicast address", self.mac));
        }
        if let Some(mtu) = self.mtu {
            let max = crate::devices::net::request::MAX_FRAME_LEN - 18;
            if mtu < crate::devices::net::MIN_MTU || usize::from(mtu) > max {
                return Err(format!(
                    "mtu {mtu}: must be {}..={max}",
                    crate::devices::net::MIN_MTU
                ));
            }
        }
        match &self.tap {
            TapSource::Name(n) if n.is_empty() || n.len() >= 16 || n.contains(['/', '\0']) => {
                return Err(format!("tap name {n:?}: 1-15 bytes, no '/'"));
            }
            TapSource::Fd(fd) if *fd < 0 => return Err(format!("tap fd {fd}: negative")),
            _ => {}
        }
        for r in [&self.rx_rate, &self.tx_rate].into_iter().flatten() {
            r.validate()?;
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

    #[test]
    fn net_config_json_and_validation() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","nets":[{"tap":{"name":"tap0"},"mac":"02:00:00:00:00:01","mtu":1400,
                "rx_rate":{"bytes":{"rate":1000000,"burst":65536}},"tx_rate":{"ops":{"rate":100}}},
                {"tap":{"fd":7},"mac":"02:00:00:00:00:02"}]}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.nets[0].tap, TapSource::Name("tap0".into()));
        assert_eq!(c.nets[1].tap, TapSource::Fd(7));
        assert_eq!(c.nets[0].rx_rate.unwrap().bytes.unwrap().burst, Some(65536));
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let bad = |f: &dyn Fn(&mut NetConfig)| {
            let mut c = c.clone();
            f(&mut c.nets[0]);
            c.validate().unwrap_err()
        };
        assert!(bad(&|n| n.mac = "03:00:00:00:00:01".parse().unwrap()).contains("unicast"));
        assert!(bad(&|n| n.mac = Mac([0; 6])).contains("unicast"));
        assert!(bad(&|n| n.mtu = Some(67)).contains("mtu"));
        assert!(bad(&|n| n.tap = TapSource::Name("a/b".into())).contains("tap name"));
        assert!(bad(&|n| n.tap = TapSource::Fd(-1)).contains("tap fd"));
        assert!(bad(&|n| n.tx_rate = Some(RateLimit {
            bytes: Some(crate::rate_limiter::TokenBucketConfig {
                rate: 0,
                burst: None
            }),
            ops: None
        }))
        .contains("rate"));
    }
}
