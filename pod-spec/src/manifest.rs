//! The pod manifest: what stage0 decided the pod is. Written once at prepare time to
//! `<pod dir>/pod-manifest.json` (and copied to `/ark/pod-manifest.json` in the stage1 root),
//! never changed afterwards. Format version [`MANIFEST_VERSION`]; documented in
//! `docs/pod-manifest.md`.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

pub use crate::pod_net::NetMode;
use crate::pod_net::{HostsEntry, PodDns, PortForward};

/// The only manifest version this build reads and writes.
pub const MANIFEST_VERSION: u32 = 1;

/// A validation failure: which field, and why, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod manifest: {field}: {reason}")]
pub struct ManifestError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodManifest {
    /// Format version; must be [`MANIFEST_VERSION`].
    pub version: u32,
    /// The pod's UUID (lowercase hyphenated), also its directory name and cgroup name.
    pub uuid: String,
    /// Apps in order; the order decides which non-zero exit code the pod reports.
    pub apps: Vec<App>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// The pod's hostname (ns and kvm; fly shares the host's). Absent: see [`PodManifest::hostname`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub stage1: Stage1,
    #[serde(default)]
    pub net: NetMode,
    /// Host ports forwarded into the pod (CNI networks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortForward>,
    /// Where the apps' `/etc/resolv.conf` comes from.
    #[serde(default, skip_serializing_if = "PodDns::is_empty")]
    pub dns: PodDns,
    /// Lines added to every app's `/etc/hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts_entries: Vec<HostsEntry>,
    /// Start every app's `/etc/hosts` from the host's instead of the image's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hosts_from_host: bool,
    /// Where CNI network configs are read (absent: `/etc/ark/net.d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_config_dir: Option<String>,
    /// Where CNI plugins are looked up, in order (empty: `/usr/lib/cni`, `/opt/cni/bin`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_plugin_dirs: Vec<String>,
    /// Limits on the pod as a whole (the pod cgroup; for kvm also the VM's size).
    #[serde(default)]
    pub limits: PodLimits,
    /// A sandbox (`ark app sandbox`, rkt's mutable pod): it may start with no apps, apps are
    /// added, started, stopped and removed while it runs, and it lives until it is stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage1 {
    pub flavor: Flavor,
    /// Flavor-specific knobs, e.g. `"kvm.root": "blk"`.
    #[serde(default, skip_serializing_if = "Stage1Options::is_empty")]
    pub options: Stage1Options,
}

/// `stage1.options`: on the wire a flat map of string keys (`"kvm.root": "blk"`), as it always
/// was; here the keys a stage1 reads are typed fields. Keys no field knows (another flavor's,
/// a newer stage0's) are kept in `other` and written back as they came.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage1Options {
    #[serde(flatten)]
    pub kvm: KvmOptions,
    #[serde(flatten)]
    pub other: BTreeMap<String, String>,
}

impl Stage1Options {
    pub fn is_empty(&self) -> bool {
        self.kvm == KvmOptions::default() && self.other.is_empty()
    }
}

/// The kvm flavor's options (ignored by the others).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmOptions {
    // In the order of the keys (sorted, as the map they once were): the same bytes on disk.
    /// How the pod root reaches the guest; absent: [`KvmRoot::Fs`].
    #[serde(rename = "kvm.root", default, skip_serializing_if = "Option::is_none")]
    pub root: Option<KvmRoot>,
    /// For `blk`: `erofs` (read-only; the default) or `ext4`.
    #[serde(
        rename = "kvm.root.fstype",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub root_fstype: Option<String>,
    /// For `blk`: the image file, relative to the pod directory.
    #[serde(
        rename = "kvm.root.image",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub root_image: Option<String>,
}

impl KvmOptions {
    /// The block image's filesystem type ([`KvmOptions::root_fstype`] or its default).
    pub fn blk_fstype(&self) -> &str {
        self.root_fstype.as_deref().unwrap_or("erofs")
    }
}

/// `kvm.root`: how stage1-kvm hands the pod root to the guest (also `ark --stage1-kvm-root`,
/// with the `cli` feature).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KvmRoot {
    /// virtio-fs share of the stage1 root.
    #[default]
    Fs,
    /// A block image of the stage1 root made at prepare (erofs, else ext4).
    // Named by `KvmOptions::root_image`.
    Blk,
    /// Anything else: loads (a pod of another flavor does not care), refused by stage1-kvm.
    #[serde(untagged)]
    #[cfg_attr(feature = "cli", value(skip))]
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Kvm,
    Ns,
    Fly,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Kvm => "kvm",
            Flavor::Ns => "ns",
            Flavor::Fly => "fly",
        }
    }

    /// The stage1 binary's file name in the libexec directory.
    pub fn binary_name(self) -> &'static str {
        match self {
            Flavor::Kvm => "ark-stage1-kvm",
            Flavor::Ns => "ark-stage1-ns",
            Flavor::Fly => "ark-stage1-fly",
        }
    }
}

impl std::str::FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Flavor::Kvm),
            "ns" => Ok(Flavor::Ns),
            "fly" => Ok(Flavor::Fly),
            _ => Err(format!("unknown stage1 flavor {s:?} (want kvm, ns or fly)")),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in thousandths of a CPU (1500 = 1.5 CPUs); kvm: vCPUs = ceil(cpu_millis/1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// DNS-label-like, unique in the pod: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 chars.
    pub name: String,
    pub image: ImageRef,
    /// argv; `exec[0]` is looked up in the app's PATH when it has no `/`.
    pub exec: Vec<String>,
    /// Environment in order; a later entry overrides an earlier one of the same name.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// User name or numeric uid, resolved in the app's own `/etc/passwd`.
    #[serde(default = "root")]
    pub user: String,
    /// Group name or numeric gid, resolved in the app's own `/etc/group`.
    #[serde(default = "root")]
    pub group: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplementary_groups: Vec<u32>,
    #[serde(default = "slash")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub limits: AppLimits,
    /// Capabilities the app keeps (names like `CAP_NET_BIND_SERVICE`); all others are dropped
    /// from every set. Absent = [`DEFAULT_CAPABILITIES`]; `[]` = none. They bound the app;
    /// a root app also holds them, a non-root one only when `capabilities_explicit`.
    #[serde(default = "default_caps")]
    pub capabilities_keep: Vec<String>,
    /// The user named `capabilities_keep` (`--caps-retain`): a non-root app then holds them
    /// (ambient); otherwise it holds none. Absent = false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capabilities_explicit: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// Whether the app gets the terminal's stdin (at most one app per pod).
    #[serde(default)]
    pub interactive: bool,
    /// Whether the app's stdio is a pty guest-init makes in the app's own devpts (`ark run
    /// -t`; reached through the agent's `attach`). At most one app per pod; not with
    /// `interactive`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
}

fn root() -> String {
    "0".into()
}
fn slash() -> String {
    "/".into()
}
fn default_caps() -> Vec<String> {
    DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// Content ID in the image store, e.g. `sha256:...`.
    pub id: String,
    /// The name the user gave (for humans; the ID is what counts).
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Name of a pod volume.
    pub volume: String,
    /// Absolute path in the app's root.
    pub target: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, `RLIMIT_NPROC`, ... (see [`Rlimit::RESOURCES`]).
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

impl Rlimit {
    pub const RESOURCES: &'static [&'static str] = &[
        "RLIMIT_AS",
        "RLIMIT_CORE",
        "RLIMIT_CPU",
        "RLIMIT_DATA",
        "RLIMIT_FSIZE",
        "RLIMIT_LOCKS",
        "RLIMIT_MEMLOCK",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_NOFILE",
        "RLIMIT_NPROC",
        "RLIMIT_RSS",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
        "RLIMIT_SIGPENDING",
        "RLIMIT_STACK",
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub kind: VolumeKind,
    /// Host path (kind `host`): must exist when the pod runs.
    pub source: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Host,
}

/// What an app keeps when the manifest says nothing: Docker's default set without
/// `CAP_MKNOD` (as podman 4+): device nodes are for the runtime to provide, not the app.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability name Linux knows, indexed by capability number.
pub const KNOWN_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Normalizes `net_admin` / `NET_ADMIN` / `CAP_NET_ADMIN` to `CAP_NET_ADMIN`, if it is a real
/// capability.
pub fn normalize_capability(name: &str) -> Option<&'static str> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    KNOWN_CAPABILITIES.iter().copied().find(|c| *c == full)
}

/// `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, 1..=63 chars.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An absolute path with no `..` component and no NUL.
pub fn is_clean_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.contains('\0') && !p.split('/').any(|c| c == "..")
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl PodManifest {
    /// Parses and validates a manifest from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: PodManifest =
            // serde quotes pieces of the input raw; a manifest holds image-supplied strings.
            serde_json::from_slice(bytes).map_err(|e| err("json", e.to_string().escape_debug().to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Reads and validates `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, ManifestError> {
        let bytes =
            std::fs::read(path).map_err(|e| err(path.display().to_string(), e.to_string()))?;
        // Which file, too: a stage0 and a stage1 read several.
        Self::from_json(&bytes)
            .map_err(|e| err(format!("{}: {}", path.display(), e.field), e.reason))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// The hostname the pod gets: the manifest's, else `ark-` + the UUID's first 8 characters.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| {
            let short: String = self.uuid.chars().filter(|c| *c != '-').take(8).collect();
            format!("ark-{short}")
        })
    }

    /// The manifest as it is now: a sandbox's apps change while it runs (`ark app add|rm`
    /// rewrite `path`), so a sandbox's is read again; any other pod's, or one that does not
    /// load or is not this pod's sandbox any more, is `self`.
    pub fn current(&self, path: &std::path::Path) -> PodManifest {
        if !self.sandbox {
            return self.clone();
        }
        match PodManifest::load(path) {
            Ok(m) if m.uuid == self.uuid && m.sandbox => m,
            _ => self.clone(),
        }
    }

    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }

    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// Checks everything that can be checked without touching the host; the first problem
    /// found is returned as one line naming the field.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(err(
                "version",
                format!(
                    "unsupported version {} (this ark reads {MANIFEST_VERSION})",
                    self.version
                ),
            ));
        }
        if self.uuid.is_empty()
            || self.uuid.len() > 64
            || !self
                .uuid
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase() || b == b'-')
        {
            return Err(err(
                "uuid",
                format!("{:?} is not a lowercase hex UUID", self.uuid),
            ));
        }
        if let Some(h) = &self.hostname {
            if !is_hostname(h) {
                return Err(err("hostname", format!("{h:?} is not a valid hostname")));
            }
        }
        check_limits(
            "limits",
            self.limits.memory_bytes,
            self.limits.cpu_millis,
            self.limits.pids,
        )?;

        let mut vol_names = HashSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let f = format!("volumes[{i}]");
            if !is_dns_label(&v.name) {
                return Err(err(
                    format!("{f}.name"),
                    format!(
                        "{:?} must be lowercase letters, digits and '-' (at most 63)",
                        v.name
                    ),
                ));
            }
            if !vol_names.insert(v.name.as_str()) {
                return Err(err(
                    format!("{f}.name"),
                    format!("duplicate volume {:?}", v.name),
                ));
            }
            if !is_clean_absolute(&v.source) {
                return Err(err(
                    format!("{f}.source"),
                    format!("{:?} must be an absolute path without '..'", v.source),
                ));
            }
        }

        if self.apps.is_empty() && !self.sandbox {
            return Err(err("apps", "a pod needs at least one app"));
        }
        let mut app_names = HashSet::new();
        let mut interactive = 0;
        let mut ttys = 0;
        for (i, a) in self.apps.iter().enumerate() {
            let f = format!("apps[{i}]");
            if !is_dns_label(&a.name) {
                return Err(err(
                    format!("{f}.name"),
                    format!(
                        "{:?} must be lowercase letters, digits and '-' (at most 63)",
                        a.name
                    ),
                ));
            }
            if !app_names.insert(a.name.as_str()) {
                return Err(err(
                    format!("{f}.name"),
                    format!("duplicate app name {:?}", a.name),
                ));
            }
            let f = format!("app {}", a.name);
            if a.image.id.is_empty() {
                return Err(err(format!("{f}: image.id"), "empty image ID"));
            }
            if a.exec.is_empty() || a.exec[0].is_empty() {
                return Err(err(format!("{f}: exec"), "no command to run"));
            }
            if a.exec.iter().any(|s| s.contains('\0')) {
                return Err(err(format!("{f}: exec"), "argument contains NUL"));
            }
            for e in &a.env {
                if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
                    return Err(err(
                        format!("{f}: env"),
                        format!("bad variable name {:?}", e.name),
                    ));
                }
                if e.value.contains('\0') {
                    return Err(err(
                        format!("{f}: env"),
                        format!("value of {} contains NUL", e.name),
                    ));
                }
            }
            for (what, v) in [("user", &a.user), ("group", &a.group)] {
                if v.is_empty() || v.contains(':') || v.contains('\0') || v.contains('\n') {
                    return Err(err(format!("{f}: {what}"), format!("bad {what} {v:?}")));
                }
            }
            if !is_clean_absolute(&a.working_dir) {
                return Err(err(
                    format!("{f}: working_dir"),
                    format!("{:?} must be an absolute path without '..'", a.working_dir),
                ));
            }
            let mut targets = HashSet::new();
            for m in &a.mounts {
                if self.volume(&m.volume).is_none() {
                    return Err(err(
                        format!("{f}: mounts"),
                        format!("volume {:?} is not defined in the pod", m.volume),
                    ));
                }
                if !is_clean_absolute(&m.target) || m.target.trim_end_matches('/').is_empty() {
                    return Err(err(
                        format!("{f}: mounts"),
                        format!(
                            "target {:?} must be an absolute path without '..', not /",
                            m.target
                        ),
                    ));
                }
                if !targets.insert(m.target.trim_end_matches('/')) {
                    return Err(err(
                        format!("{f}: mounts"),
                        format!("target {:?} mounted twice", m.target),
                    ));
                }
            }
            check_limits(
                &format!("{f}: limits"),
                a.limits.memory_bytes,
                a.limits.cpu_millis,
                a.limits.pids,
            )?;
            for c in &a.capabilities_keep {
                if normalize_capability(c).is_none() {
                    return Err(err(
                        format!("{f}: capabilities_keep"),
                        format!("unknown capability {c:?}"),
                    ));
                }
            }
            for r in &a.rlimits {
                if !Rlimit::RESOURCES.contains(&r.resource.as_str()) {
                    return Err(err(
                        format!("{f}: rlimits"),
                        format!("unknown resource {:?}", r.resource),
                    ));
                }
                if r.soft > r.hard {
                    return Err(err(
                        format!("{f}: rlimits"),
                        format!("{}: soft {} above hard {}", r.resource, r.soft, r.hard),
                    ));
                }
            }
            if a.interactive {
                interactive += 1;
            }
            if a.tty {
                ttys += 1;
                if a.interactive {
                    return Err(err(f, "an app with a tty is not also interactive"));
                }
            }
        }
        if interactive > 1 {
            return Err(err("apps", "at most one app can be interactive"));
        }
        if ttys > 1 {
            return Err(err("apps", "at most one app can have a tty"));
        }
        crate::pod_net::validate(
            &self.net,
            &self.ports,
            &self.dns,
            &self.hosts_entries,
            is_hostname,
        )
        .map_err(|(f, r)| err(f, r))?;
        for d in self.net_config_dir.iter().chain(&self.cni_plugin_dirs) {
            if !is_clean_absolute(d) {
                return Err(err(
                    "cni",
                    format!("{d:?} must be an absolute path without '..'"),
                ));
            }
        }
        Ok(())
    }
}

/// Smallest memory limit accepted: below this nothing (not even a shell) starts.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;

fn check_limits(
    f: &str,
    mem: Option<u64>,
    cpu: Option<u64>,
    pids: Option<u64>,
) -> Result<(), ManifestError> {
    if let Some(m) = mem {
        if m < MIN_MEMORY_BYTES {
            return Err(err(
                format!("{f}.memory_bytes"),
                format!("{m} is below the minimum of 4 MiB"),
            ));
        }
    }
    if cpu == Some(0) {
        return Err(err(format!("{f}.cpu_millis"), "must be above 0"));
    }
    if pids == Some(0) {
        return Err(err(format!("{f}.pids"), "must be above 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage1_options_keep_their_wire_form() {
        let json = r#"{"flavor":"kvm","options":{"kvm.root":"blk","kvm.root.fstype":"ext4","kvm.root.image":"rootfs.ext4","x.y":"z"}}"#;
        let s: Stage1 = serde_json::from_str(json).unwrap();
        assert_eq!(s.options.kvm.root, Some(KvmRoot::Blk));
        assert_eq!(s.options.kvm.root_image.as_deref(), Some("rootfs.ext4"));
        assert_eq!(s.options.kvm.root_fstype.as_deref(), Some("ext4"));
        assert_eq!(s.options.other["x.y"], "z");
        assert_eq!(serde_json::to_string(&s).unwrap(), json);
        let s: Stage1 =
            serde_json::from_str(r#"{"flavor":"kvm","options":{"kvm.root":"nfs"}}"#).unwrap();
        assert_eq!(s.options.kvm.root, Some(KvmRoot::Other("nfs".into())));
        let s: Stage1 = serde_json::from_str(r#"{"flavor":"ns"}"#).unwrap();
        assert!(s.options.is_empty());
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"flavor":"ns"}"#);
    }

    pub(crate) fn sample() -> PodManifest {
        PodManifest::from_json(
            br#"{
              "version": 1,
              "uuid": "0b0e5a1c-0f43-4c5e-9b55-7f0d7c9a1e21",
              "apps": [{
                "name": "web",
                "image": {"id": "sha256:abc", "name": "docker://busybox"},
                "exec": ["sh", "-c", "echo hi"],
                "env": [{"name": "A", "value": "1"}],
                "mounts": [{"volume": "data", "target": "/data"}],
                "limits": {"memory_bytes": 67108864}
              }],
              "volumes": [{"name": "data", "kind": "host", "source": "/tmp", "read_only": true}],
              "stage1": {"flavor": "ns"}
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_fill_in() {
        let m = sample();
        let a = &m.apps[0];
        assert_eq!(a.user, "0");
        assert_eq!(a.group, "0");
        assert_eq!(a.working_dir, "/");
        assert_eq!(a.capabilities_keep.len(), DEFAULT_CAPABILITIES.len());
        assert_eq!(m.net, NetMode::Host);
        assert_eq!(m.hostname(), "ark-0b0e5a1c");
        // Round trip.
        assert_eq!(PodManifest::from_json(&m.to_json()).unwrap(), m);
    }

    fn net(name: &str) -> crate::NetworkRef {
        crate::NetworkRef {
            name: name.into(),
            args: None,
        }
    }

    fn port(host_port: u16) -> crate::PortForward {
        crate::PortForward {
            name: None,
            host_ip: None,
            host_port,
            pod_port: 80,
            protocol: crate::Protocol::Tcp,
        }
    }

    fn bad(f: impl FnOnce(&mut PodManifest)) -> String {
        let mut m = sample();
        f(&mut m);
        m.validate().unwrap_err().to_string()
    }

    #[test]
    fn one_tty_app_which_is_not_also_interactive() {
        let mut m = sample();
        m.apps[0].tty = true;
        m.validate().unwrap();
        assert!(PodManifest::from_json(&m.to_json()).unwrap().apps[0].tty);
        assert!(bad(|m| {
            m.apps[0].tty = true;
            m.apps[0].interactive = true;
        })
        .contains("not also interactive"));
        assert!(bad(|m| {
            m.apps[0].tty = true;
            let mut b = m.apps[0].clone();
            b.name = "side".into();
            m.apps.push(b);
        })
        .contains("at most one app can have a tty"));
    }

    #[test]
    fn rejects_bad_input_with_one_line() {
        let cases = [
            bad(|m| m.version = 2),
            bad(|m| m.apps.clear()),
            bad(|m| m.apps[0].name = "Web".into()),
            bad(|m| {
                let a = m.apps[0].clone();
                m.apps.push(a)
            }),
            bad(|m| m.apps[0].exec.clear()),
            bad(|m| m.apps[0].mounts[0].target = "/a/../etc".into()),
            bad(|m| m.apps[0].mounts[0].target = "relative".into()),
            bad(|m| m.apps[0].mounts[0].volume = "nope".into()),
            bad(|m| m.apps[0].working_dir = "tmp".into()),
            bad(|m| m.apps[0].capabilities_keep = vec!["CAP_FLY".into()]),
            bad(|m| m.apps[0].limits.memory_bytes = Some(1000)),
            bad(|m| m.apps[0].env[0].name = "A=B".into()),
            bad(|m| m.volumes[0].source = "rel".into()),
            bad(|m| m.hostname = Some("bad_host".into())),
            bad(|m| m.uuid = "../../etc".into()),
            bad(|m| m.apps[0].user = "".into()),
            // Networking: ports need a CNI network; names, DNS words and hosts are checked.
            bad(|m| m.ports = vec![port(8080)]),
            bad(|m| {
                m.net = NetMode::Networks(vec![net("default"), net("default")]);
            }),
            bad(|m| m.net = NetMode::Networks(vec![net("../etc")])),
            bad(|m| m.net = NetMode::Networks(vec![])),
            bad(|m| {
                m.net = NetMode::Networks(vec![net("default")]);
                m.ports = vec![port(8080), port(8080)];
            }),
            bad(|m| {
                m.dns.source = crate::DnsSource::Host;
                m.dns.servers = vec!["192.0.2.1".parse().unwrap()];
            }),
            bad(|m| m.dns.search = vec!["a b\nnameserver 6.6.6.6".into()]),
            bad(|m| m.dns.options = vec!["ndots:1\nnameserver 6.6.6.6".into()]),
            bad(|m| {
                m.hosts_entries = vec![crate::HostsEntry {
                    host: "db\n6.6.6.6 evil".into(),
                    ip: "10.0.0.1".parse().unwrap(),
                }]
            }),
            bad(|m| m.net_config_dir = Some("etc/net.d".into())),
        ];
        for c in cases {
            assert!(c.starts_with("pod manifest: "), "{c}");
            assert!(!c.contains('\n'), "{c}");
        }
        assert!(bad(|m| m.apps[0].mounts[0].volume = "nope".into()).contains("\"nope\""));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = PodManifest::from_json(
            br#"{"version":1,"uuid":"ab","apps":[],"stage1":{"flavor":"ns"},"bogus":1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn capability_names_normalize() {
        assert_eq!(normalize_capability("net_admin"), Some("CAP_NET_ADMIN"));
        assert_eq!(normalize_capability("CAP_SYS_ADMIN"), Some("CAP_SYS_ADMIN"));
        assert_eq!(normalize_capability("nope"), None);
        assert_eq!(KNOWN_CAPABILITIES[21], "CAP_SYS_ADMIN");
        assert_eq!(KNOWN_CAPABILITIES[40], "CAP_CHECKPOINT_RESTORE");
    }
}
