//! What a stage1 tells guest-init (stage2): written by the stage1 to `/ark/stage2.json` in the
//! stage1 root before starting `/init`. The same binary runs in every flavor; this file is the
//! only difference guest-init sees between them.

use serde::{Deserialize, Serialize};

pub const STAGE2_CONFIG_VERSION: u32 = 1;

/// Kernel command-line key naming the block device that carries the stage2 config when the
/// pod root cannot hold `/ark/stage2.json` (a read-only block image): `ark_stage2=/dev/vdb`.
/// The kernel hands unknown `key=value` parameters to init as environment variables;
/// guest-init reads this variable before looking for the file. The config itself never goes
/// on the command line: that is capped at 2048 bytes and every guest process can read it in
/// `/proc/cmdline`, apps' environments included.
pub const STAGE2_CMDLINE_KEY: &str = "ark_stage2";

/// The device a blk-root VM's stage2 config disk appears as: the second virtio-blk device,
/// after the root (`/dev/vda`).
pub const STAGE2_DISK_DEVICE: &str = "/dev/vdb";

/// The most a stage2 config disk may hold: far above any real config, small enough that a
/// guest-init reading it never holds much memory.
pub const STAGE2_DISK_MAX_BYTES: usize = 1 << 20;

/// The sector size the config disk is padded to (a virtio-blk capacity is counted in them).
const DISK_SECTOR: usize = 512;

/// The vsock CID of the host, where guest-init sends statuses in a VM.
pub const VSOCK_HOST_CID: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Config {
    pub version: u32,
    pub pod_uuid: String,
    /// Hostname to set in guest-init's UTS namespace; `None` leaves it alone (fly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Where app statuses go.
    pub status: StatusTransport,
    /// Where stop requests come from besides SIGTERM/SIGINT to guest-init (kvm: vsock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlTransport>,
    /// Where guest-init serves the agent protocol ([`crate::agent`]: `ark enter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentTransport>,
    /// Where the apps' stdout and stderr go (kvm: vsock to the host, which logs them); absent:
    /// guest-init relays them to its own stdout/stderr and logs them in [`crate::guest::LOG_DIR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputTransport>,
    /// What guest-init does once every app ended and statuses are reported.
    pub on_exit: OnExit,
    /// Mount /proc, /sys, /dev (devtmpfs, else a populated tmpfs), /dev/pts, /dev/shm and /run
    /// in guest-init's own root before anything else (kvm: true; ns/fly: the stage1 decides).
    #[serde(default)]
    pub mount_pseudo_fs: bool,
    /// Mounts guest-init makes, in order, after the pseudo filesystems and before any app
    /// starts (kvm: one virtio-fs tag per volume onto `/ark/volumes/<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Stage2Mount>,
    /// Cgroups prepared by the stage1 for each app (ns); an app without an entry stays in
    /// guest-init's cgroup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_cgroups: Vec<AppCgroup>,
    /// kvm: guest-init mounts cgroup2 itself and creates one cgroup per app with the app's
    /// manifest limits (there is no stage1 inside the VM to do it).
    #[serde(default)]
    pub create_app_cgroups: bool,
    /// Seconds between SIGTERM and SIGKILL when the pod is stopped by a signal to guest-init.
    #[serde(default = "default_grace")]
    pub stop_grace_secs: u64,
    /// kvm: the NICs and routes guest-init configures (netlink) before any app starts; `lo`
    /// comes up whenever guest-init has its own network namespace, with or without this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::GuestNetwork>,
    /// The DNS and hosts files guest-init writes into every app's `/etc`.
    #[serde(default, skip_serializing_if = "EtcFiles::is_empty")]
    pub etc: EtcFiles,
    /// Chatty logs on stderr.
    #[serde(default)]
    pub debug: bool,
}

fn default_grace() -> u64 {
    10
}

impl Stage2Config {
    /// A config with the given transport and nothing else set.
    pub fn new(pod_uuid: impl Into<String>, status: StatusTransport, on_exit: OnExit) -> Self {
        Stage2Config {
            version: STAGE2_CONFIG_VERSION,
            pod_uuid: pod_uuid.into(),
            hostname: None,
            status,
            control: None,
            agent: None,
            output: None,
            on_exit,
            mount_pseudo_fs: false,
            mounts: Vec::new(),
            app_cgroups: Vec::new(),
            create_app_cgroups: false,
            stop_grace_secs: default_grace(),
            network: None,
            etc: EtcFiles::default(),
            debug: false,
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let c: Stage2Config =
            serde_json::from_slice(bytes).map_err(|e| format!("stage2 config: {e}"))?;
        if c.version != STAGE2_CONFIG_VERSION {
            return Err(format!(
                "stage2 config: unsupported version {} (want {STAGE2_CONFIG_VERSION})",
                c.version
            ));
        }
        Ok(c)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("stage2 config serializes");
        v.push(b'\n');
        v
    }

    /// The contents of a config disk ([`STAGE2_DISK_DEVICE`]): the compact JSON, then zeros
    /// to a whole sector (JSON never holds a NUL byte, so the first one ends it).
    pub fn to_disk_image(&self) -> Result<Vec<u8>, String> {
        let mut v = serde_json::to_vec(self).expect("stage2 config serializes");
        if v.len() > STAGE2_DISK_MAX_BYTES {
            return Err(format!(
                "stage2 config: {} bytes, more than a config disk holds ({STAGE2_DISK_MAX_BYTES})",
                v.len()
            ));
        }
        v.resize(v.len().div_ceil(DISK_SECTOR) * DISK_SECTOR, 0);
        Ok(v)
    }

    /// The config from a config disk's bytes (at most [`STAGE2_DISK_MAX_BYTES`] are read).
    pub fn from_disk_image(bytes: &[u8]) -> Result<Self, String> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        if end > STAGE2_DISK_MAX_BYTES {
            return Err(format!(
                "stage2 config disk: more than {STAGE2_DISK_MAX_BYTES} bytes"
            ));
        }
        Self::from_json(&bytes[..end])
    }
}

/// What guest-init writes into each app's `/etc` besides `/etc/hostname` (made by the stage1
/// from the manifest and the network state: `ark_net::etc_files`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcFiles {
    /// The whole `/etc/resolv.conf`; absent: the image's file stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<String>,
    /// The `/etc/hosts` to start from instead of the image's (the host's, `--hosts-entry=host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_base: Option<String>,
    /// Lines appended to `/etc/hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts_entries: Vec<crate::pod_net::HostsEntry>,
}

impl EtcFiles {
    pub fn is_empty(&self) -> bool {
        *self == EtcFiles::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StatusTransport {
    /// guest-init writes `<dir>/<app>.json` atomically (ns/fly: dir = `/ark/status`, the pod's
    /// status directory bind-mounted).
    File { dir: String },
    /// guest-init connects AF_VSOCK to `cid` (default 2, the host) at `port` and writes
    /// newline-delimited [`crate::StatusMessage`]s; after `pod_done` it waits up to 5 s for the
    /// line [`crate::STATUS_ACK`] before powering off.
    Vsock {
        port: u32,
        #[serde(default = "host_cid")]
        cid: u32,
    },
}

fn host_cid() -> u32 {
    VSOCK_HOST_CID
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ControlTransport {
    /// guest-init listens on AF_VSOCK `port` for [`ControlCommand`] lines.
    Vsock { port: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AgentTransport {
    /// guest-init listens on AF_VSOCK `port` (kvm; the host reaches it through the VMM's
    /// hybrid vsock socket with `CONNECT <port>`).
    Vsock { port: u32 },
    /// guest-init listens on a Unix socket at `path` in its root, in a directory only root may
    /// enter (ns/fly: [`crate::guest::AGENT_SOCKET`]).
    Unix { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum OutputTransport {
    /// guest-init opens one AF_VSOCK connection to `cid` at `port` per app stream, starting
    /// with a [`crate::logs::OutputHeader`], then the stream's bytes (see [`crate::logs`]).
    Vsock {
        port: u32,
        #[serde(default = "host_cid")]
        cid: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// Exit 0 after reporting (ns/fly).
    Exit,
    /// `sync` + `reboot(RB_AUTOBOOT)` after reporting (kvm: the kernel runs with `reboot=k`,
    /// so the VMM sees the reset and ends the VM).
    Reboot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Mount {
    /// Device, virtio-fs tag, or host-side path (`bind`).
    pub source: String,
    /// `virtiofs`, `ext4`, `tmpfs`, ... or `bind`.
    pub fstype: String,
    /// Absolute path in guest-init's root; created if missing.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// Filesystem-specific data (mount(2)'s last argument).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCgroup {
    pub app: String,
    /// Cgroup directories as guest-init sees them; the app joins each
    /// (`cgroup::join_single_threaded`) before exec. One with cgroup v2, one per controller
    /// with v1.
    pub dirs: Vec<String>,
    /// File with an `oom_kill N` line: `memory.events` (v2) or `memory.oom_control` (v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_file: Option<String>,
}

/// A line on the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlCommand {
    /// `stop [grace_secs]`: SIGTERM every app, SIGKILL after the grace, then finish normally.
    Stop { grace_secs: Option<u64> },
}

impl ControlCommand {
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("stop") => {
                let grace_secs = match words.next() {
                    None => None,
                    Some(g) => Some(
                        g.parse()
                            .map_err(|_| format!("control: bad grace period {g:?}"))?,
                    ),
                };
                if words.next().is_some() {
                    return Err(format!("control: trailing words in {line:?}"));
                }
                Ok(ControlCommand::Stop { grace_secs })
            }
            _ => Err(format!("control: unknown command {line:?}")),
        }
    }

    /// The line to send, with its newline.
    pub fn to_line(&self) -> String {
        match self {
            ControlCommand::Stop { grace_secs: None } => "stop\n".into(),
            ControlCommand::Stop {
                grace_secs: Some(g),
            } => format!("stop {g}\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_serialize_tagged() {
        let mut c = Stage2Config::new(
            "u",
            StatusTransport::Vsock { port: 1024, cid: 2 },
            OnExit::Reboot,
        );
        c.control = Some(ControlTransport::Vsock { port: 1025 });
        let j = String::from_utf8(c.to_json()).unwrap();
        assert!(j.contains(r#""type": "vsock""#), "{j}");
        assert_eq!(Stage2Config::from_json(j.as_bytes()).unwrap(), c);
        let f: StatusTransport =
            serde_json::from_str(r#"{"type":"file","dir":"/ark/status"}"#).unwrap();
        assert_eq!(
            f,
            StatusTransport::File {
                dir: "/ark/status".into()
            }
        );
        let v: StatusTransport = serde_json::from_str(r#"{"type":"vsock","port":9}"#).unwrap();
        assert_eq!(v, StatusTransport::Vsock { port: 9, cid: 2 });
    }

    #[test]
    fn config_disk_round_trips() {
        let mut c = Stage2Config::new(
            "u",
            StatusTransport::Vsock { port: 7, cid: 2 },
            OnExit::Reboot,
        );
        c.hostname = Some("h".into());
        let v = c.to_disk_image().unwrap();
        assert_eq!(v.len() % DISK_SECTOR, 0);
        assert_eq!(Stage2Config::from_disk_image(&v).unwrap(), c);
        // Cut short, garbage, or nothing but padding: an error, not a half config.
        assert!(Stage2Config::from_disk_image(&v[..v.len() / 3]).is_err());
        assert!(Stage2Config::from_disk_image(b"\xff\xfe{").is_err());
        assert!(Stage2Config::from_disk_image(&[0; 512]).is_err());
        // A disk that never ends its config is refused without being parsed.
        let endless = vec![b' '; STAGE2_DISK_MAX_BYTES + 1];
        assert!(Stage2Config::from_disk_image(&endless)
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn control_lines() {
        for c in [
            ControlCommand::Stop { grace_secs: None },
            ControlCommand::Stop {
                grace_secs: Some(3),
            },
        ] {
            assert_eq!(ControlCommand::parse(c.to_line().trim_end()).unwrap(), c);
        }
        assert!(ControlCommand::parse("stop x").is_err());
        assert!(ControlCommand::parse("reboot").is_err());
    }
}
