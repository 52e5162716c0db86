//! The apps' cgroups inside a VM.

use std::path::Path;

use anyhow::{Context, Result};
use ark_pod_spec::{AppCgroup, PodManifest};

use crate::os::cgroup::{Cgroups, DEFAULT_ALLOWED};

/// The cgroups for the pod's apps (`create_app_cgroups`). Not optional: besides limits and
/// OOM attribution, they carry the device allowlist, the fence behind the apps' nodev mounts.
pub fn app_cgroups(manifest: &PodManifest) -> Result<Vec<AppCgroup>> {
    create_cgroups(manifest)
}

/// kvm: no stage1 runs inside the VM, so guest-init makes the per-app cgroups itself, with the
/// same device allowlist ns and fly pods get on the host (there the stage1 attaches it).
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
    // Everything the apps run may open only the standard device nodes (the kernel's
    // BPF_PROG_TYPE_CGROUP_DEVICE program: CONFIG_CGROUP_BPF, in both kernel profiles).
    let pod = Cgroups::v2(root)
        .create_confined_pod(m, &DEFAULT_ALLOWED)
        .context("create app cgroups with the device allowlist (a guest kernel without CONFIG_CGROUP_BPF cannot)")?;
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

/// kvm: the cgroup of an app added to a running sandbox, in the pod's cgroup made at boot
/// (so under its device allowlist), with the app's limits.
pub fn added_app_cgroup(uuid: &str, app: &ark_pod_spec::App) -> Result<AppCgroup> {
    let pod = Cgroups::v2(Path::new("/sys/fs/cgroup"))
        .create_app(uuid, app)
        .with_context(|| format!("create the cgroup of app {}", app.name))?;
    if pod.pod_dirs.is_empty() {
        anyhow::bail!("the pod has no cgroup to put app {} in", app.name);
    }
    Ok(AppCgroup {
        app: app.name.clone(),
        dirs: pod
            .app_dirs(&app.name)
            .iter()
            .map(|d| d.display().to_string())
            .collect(),
        oom_file: pod.app_oom_file(&app.name).map(|f| f.display().to_string()),
    })
}
