//! The apps' cgroups inside a VM.

use std::path::Path;

use anyhow::{Context, Result};
use ark_pod_spec::{AppCgroup, PodManifest};

use crate::os::cgroup::Cgroups;

/// The cgroups for the pod's apps (`create_app_cgroups`). Without limits, cgroups only add OOM
/// attribution: a failure is then a warning and the apps run without, not worth failing the pod.
pub fn app_cgroups(manifest: &PodManifest) -> Result<Vec<AppCgroup>> {
    let wants_limits = manifest.limits != Default::default()
        || manifest.apps.iter().any(|a| a.limits != Default::default());
    match create_cgroups(manifest) {
        Ok(c) => Ok(c),
        Err(e) if !wants_limits => {
            eprintln!("ark-init: warning: no app cgroups: {e:#}");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// kvm: no stage1 runs inside the VM, so guest-init makes the per-app cgroups itself. No
/// device allowlist here: the guest kernel has neither CGROUP_DEVICE nor CGROUP_BPF; app
/// `/dev`s are nodev tmpfs with bind-mounted standard nodes instead, and the guest's devices
/// are the VM's own, not the host's.
fn create_cgroups(m: &PodManifest) -> Result<Vec<AppCgroup>> {
    let root = Path::new("/sys/fs/cgroup");
    std::fs::create_dir_all(root).ok();
    if !root.join("cgroup.controllers").exists() {
        nix::mount::mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mount cgroup2")?;
    }
    let pod = Cgroups::v2(root)
        .create_pod(m)
        .context("create app cgroups")?;
    Ok(m.apps
        .iter()
        .map(|a| AppCgroup {
            app: a.name.clone(),
            dirs: pod
                .app_dirs(&a.name)
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            oom_file: pod.app_oom_file(&a.name).map(|f| f.display().to_string()),
        })
        .collect())
}
