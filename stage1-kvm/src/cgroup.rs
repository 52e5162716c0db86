//! The VMM process's own cgroup: the pod's limits plus the VMM's overhead, so a misbehaving
//! guest (or VMM) is bounded on the host like an ns pod is.

use std::io;
use std::path::PathBuf;

use ark_os::cgroup::{Cgroups, PodCgroups};
use ark_pod_spec::manifest::{PodLimits, PodManifest};

pub struct VmmCgroup {
    cgroups: Cgroups,
    pod: PodCgroups,
    uuid: String,
}

impl VmmCgroup {
    /// Creates `<hierarchy>/ark/<uuid>` with the given limits and moves this process into it.
    /// Call before any thread starts, so every thread is accounted.
    pub fn enter(
        manifest: &PodManifest,
        memory_bytes: u64,
        cpu_millis: Option<u64>,
    ) -> io::Result<Option<Self>> {
        let cgroups = Cgroups::detect();
        if cgroups.is_empty() {
            return Ok(None);
        }
        // Only the pod-level cgroup: the apps' own limits are enforced inside the guest.
        let mut vmm_view = manifest.clone();
        vmm_view.apps.clear();
        vmm_view.limits = PodLimits {
            memory_bytes: Some(memory_bytes),
            cpu_millis,
            pids: None,
        };
        let pod = cgroups.create_pod(&vmm_view)?;
        let me = std::process::id().to_string();
        for dir in pod.stage2_dirs() {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, &me)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", procs.display())))?;
        }
        Ok(Some(VmmCgroup {
            cgroups,
            pod,
            uuid: manifest.uuid.clone(),
        }))
    }

    pub fn dirs(&self) -> Vec<PathBuf> {
        self.pod.stage2_dirs()
    }

    /// Moves this process back to each hierarchy's root and removes the pod's cgroups.
    pub fn leave(self) -> io::Result<()> {
        let me = std::process::id().to_string();
        for h in &self.cgroups.hierarchies {
            // Best effort: if this fails, remove_pod below reports the busy cgroup.
            let _ = std::fs::write(h.root().join("cgroup.procs"), &me);
        }
        self.cgroups.remove_pod(&self.uuid)
    }
}
