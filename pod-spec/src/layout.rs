//! Where things are in a pod directory (host view, [`PodLayout`]) and in the stage1 root as
//! guest-init sees it ([`guest`]). The stage1 root is `/` of guest-init in every flavor.
//!
//! ```text
//! <pod dir>/
//!   pod-manifest.json          PodManifest (stage0, at prepare)
//!   stage1/rootfs/             / of guest-init
//!     init                     the static ark-init (stage0 copies it in at prepare)
//!     ark/pod-manifest.json    copy of the manifest (stage0, at prepare)
//!     ark/stage2.json          Stage2Config (the stage1, before starting init)
//!     ark/status/              ns/fly: the pod's status/ dir, bind-mounted by the stage1
//!     ark/logs/                ns/fly: the pod's logs/ dir, bind-mounted by the stage1
//!     ark/volumes/<name>/      each volume (ns/fly: bind of the host source; kvm: virtio-fs)
//!     apps/<app>/rootfs/       each app's root (stage0, from the render cache)
//!     ark/agent/agent.sock     ns/fly: guest-init's agent socket (`ark enter`)
//!   vsock.sock                 kvm: the VMM's hybrid vsock socket (CONNECT <port>)
//!   stage1/stage2.disk         kvm on a block root: the Stage2Config as a read-only disk
//!   logs/<app>.log[.N]         each non-interactive app's stdout and stderr, k8s-file records
//!                              (crate::logs): guest-init (ns/fly), stage1-kvm (kvm, from vsock)
//!   status/<app>.json          AppStatus per app (guest-init via the stage1's transport)
//!   status/pod.json            PodExit once the pod ended (the stage1)
//!   status/stage2.pid          ns/fly: host pid of guest-init while it runs (the stage1)
//!   vm-resources               kvm: what the VM got when it differs from the request (the stage1)
//!   net/netns                  the pod's network namespace, bind-mounted (the stage1; CNI pods)
//!   net/state.json             PodNetworkState: what CNI attached, for teardown (the stage1)
//! ```

use std::path::{Path, PathBuf};

/// Paths of one pod directory, as seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLayout {
    dir: PathBuf,
}

impl PodLayout {
    pub fn new(pod_dir: impl Into<PathBuf>) -> Self {
        PodLayout {
            dir: pod_dir.into(),
        }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("pod-manifest.json")
    }
    pub fn stage1_rootfs(&self) -> PathBuf {
        self.dir.join("stage1/rootfs")
    }
    /// The static guest-init binary inside the stage1 root.
    pub fn init_binary(&self) -> PathBuf {
        self.stage1_rootfs().join("init")
    }
    pub fn stage2_config(&self) -> PathBuf {
        self.in_root(guest::STAGE2_CONFIG)
    }
    /// kvm on a block root: the stage2 config as the VM's second (read-only) disk.
    pub fn stage2_disk(&self) -> PathBuf {
        self.dir.join("stage1/stage2.disk")
    }
    /// The copy of the manifest guest-init reads.
    pub fn rootfs_manifest(&self) -> PathBuf {
        self.in_root(guest::MANIFEST)
    }
    pub fn volume_dir(&self, volume: &str) -> PathBuf {
        self.in_root(&guest::volume_dir(volume))
    }
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.in_root(&format!("/apps/{app}"))
    }
    pub fn app_rootfs(&self, app: &str) -> PathBuf {
        self.in_root(&guest::app_rootfs(app))
    }
    /// The apps' logs: on the host side of the pod, never inside a root a guest controls
    /// (ns/fly bind-mount it at [`guest::LOG_DIR`] for guest-init; kvm's stage1 writes it).
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// The app's live log file (see [`crate::logs`]).
    pub fn app_log(&self, app: &str) -> PathBuf {
        self.logs_dir().join(crate::logs::log_file_name(app, 0))
    }
    pub fn status_dir(&self) -> PathBuf {
        self.dir.join("status")
    }
    pub fn status_file(&self, app: &str) -> PathBuf {
        self.status_dir().join(format!("{app}.json"))
    }
    pub fn pod_exit_file(&self) -> PathBuf {
        self.status_dir().join("pod.json")
    }
    /// kvm: one line saying what the VM got when it is not what was asked (`ark status`).
    pub fn vm_resources(&self) -> PathBuf {
        self.dir.join("vm-resources")
    }
    pub fn stage2_pid_file(&self) -> PathBuf {
        self.status_dir().join("stage2.pid")
    }
    /// ns/fly: the socket guest-init's agent listens on (see [`guest::AGENT_SOCKET`]).
    pub fn agent_socket(&self) -> PathBuf {
        self.in_root(guest::AGENT_SOCKET)
    }
    /// kvm: the VMM's hybrid vsock socket (`CONNECT <port>` reaches a guest port), which
    /// stage1-kvm creates relative to the pod directory.
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join(guest::VSOCK_SOCKET)
    }
    /// Pod networking's directory (CNI pods only).
    pub fn net_dir(&self) -> PathBuf {
        self.dir.join("net")
    }
    /// The pod's network namespace, an nsfs bind mount (see [`crate::net`]).
    pub fn netns(&self) -> PathBuf {
        self.net_dir().join("netns")
    }
    /// [`crate::net::PodNetworkState`].
    pub fn network_state(&self) -> PathBuf {
        self.net_dir().join("state.json")
    }
    /// A guest path (absolute, as guest-init sees it) mapped into the stage1 root on the host.
    pub fn in_root(&self, guest_path: &str) -> PathBuf {
        self.stage1_rootfs()
            .join(guest_path.trim_start_matches('/'))
    }
}

/// Paths inside the stage1 root, as guest-init sees them.
pub mod guest {
    pub const INIT: &str = "/init";
    /// ark's own directory in the stage1 root (always present).
    pub const ARK_DIR: &str = "/ark";
    pub const STAGE2_CONFIG: &str = "/ark/stage2.json";
    pub const MANIFEST: &str = "/ark/pod-manifest.json";
    /// Where ns/fly bind-mount the pod's status directory (file transport).
    pub const STATUS_DIR: &str = "/ark/status";
    /// Where ns bind-mounts the pod's cgroup directories for guest-init to place apps.
    pub const CGROUP_DIR: &str = "/ark/cgroup";
    /// ns/fly: where the stage1 bind-mounts the pod's `logs/` for guest-init to record each
    /// non-interactive app's output in (kvm: unused; the host records it from vsock).
    pub const LOG_DIR: &str = "/ark/logs";
    /// ns/fly: the agent's directory (mode 0700: root only) and socket.
    pub const AGENT_DIR: &str = "/ark/agent";
    pub const AGENT_SOCKET: &str = "/ark/agent/agent.sock";
    /// kvm: the hybrid vsock socket's name in the pod directory (host side, not in the root).
    pub const VSOCK_SOCKET: &str = "vsock.sock";

    pub fn volume_dir(volume: &str) -> String {
        format!("/ark/volumes/{volume}")
    }
    pub fn app_rootfs(app: &str) -> String {
        format!("/apps/{app}/rootfs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let l = PodLayout::new("/var/lib/ark/pods/run/u1");
        assert_eq!(
            l.app_rootfs("web"),
            Path::new("/var/lib/ark/pods/run/u1/stage1/rootfs/apps/web/rootfs")
        );
        assert_eq!(
            l.stage2_config(),
            Path::new("/var/lib/ark/pods/run/u1/stage1/rootfs/ark/stage2.json")
        );
        assert_eq!(
            l.status_file("web"),
            Path::new("/var/lib/ark/pods/run/u1/status/web.json")
        );
        assert_eq!(
            l.volume_dir("data"),
            Path::new("/var/lib/ark/pods/run/u1/stage1/rootfs/ark/volumes/data")
        );
        assert_eq!(
            l.init_binary(),
            Path::new("/var/lib/ark/pods/run/u1/stage1/rootfs/init")
        );
    }
}
