//! `ark app`: apps added to a running sandbox (rkt's `rkt app add|start|stop|rm|list|status`,
//! the base of CRI's CreateContainer/StartContainer/StopContainer/RemoveContainer).
//!
//! An app's states: **created** (`add`: its root rendered into the pod, its manifest entry
//! appended, guest-init told; it does not run) → **running** (`start`) → **exited** (it ended,
//! or `stop`: SIGTERM, SIGKILL after the timeout) → removed (`rm`: root, entry, status and
//! cgroup gone; the name is free again). The host's `pod-manifest.json` is the record of the
//! apps the pod has; every change to it is made under the pod's app lock (`app.lock` in the pod
//! directory: the pod lock itself is the stage1's while the pod runs) and written atomically.
//! A request guest-init refuses is undone on the host: nothing is left of it.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ark_os::cgroup::Cgroups;
use ark_os::StatusDir;
use ark_pod_spec::agent::{AppAddRequest, Request};
use ark_pod_spec::{AppState, AppStatus, Flavor, PodLayout, PodManifest};
use nix::fcntl::{Flock, FlockArg};

use super::args::AppSpec;
use super::error::{invalid, Result};
use super::store::{Liveness, PodRef};

/// How long `ark app` waits for a booting VM's agent (kvm_pvm under load boots slowly).
const BOOT_TIMEOUT_VM: Duration = Duration::from_secs(600);

/// A running sandbox, found and checked, with its app lock held.
struct Sandbox {
    pod: PodRef,
    layout: PodLayout,
    manifest: PodManifest,
    _lock: Flock<File>,
}

fn refuse(msg: String) -> anyhow::Error {
    invalid(msg).into()
}

/// The running sandbox `id`, its app lock taken and its manifest read under it.
fn open_sandbox(ctx: &crate::Context, id: &str) -> anyhow::Result<Sandbox> {
    let store = super::open_store(ctx)?;
    let pod = store.reap_if_exited(&store.find(id)?)?;
    if store.liveness(&pod)? != Liveness::Running {
        return Err(refuse(format!("pod {} is not running", pod.uuid)));
    }
    let layout = PodLayout::new(&pod.path);
    let lock_path = pod.path.join("app.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("lock {}: {e}", lock_path.display()))?;
    let manifest = PodManifest::load(&layout.manifest())?;
    if !manifest.sandbox {
        return Err(refuse(format!(
            "pod {} is not a sandbox (start one with ark app sandbox)",
            pod.uuid
        )));
    }
    Ok(Sandbox {
        pod,
        layout,
        manifest,
        _lock: lock,
    })
}

use std::os::unix::fs::OpenOptionsExt;

impl Sandbox {
    fn has_app(&self, name: &str) -> anyhow::Result<()> {
        match self.manifest.app(name) {
            Some(_) => Ok(()),
            None => Err(refuse(format!("pod {} has no app {name:?}", self.pod.uuid))),
        }
    }

    fn timeout(&self) -> Duration {
        match self.manifest.stage1.flavor {
            Flavor::Kvm => super::agent_client::VM_REPLY_TIMEOUT,
            Flavor::Ns | Flavor::Fly => super::agent_client::REPLY_TIMEOUT,
        }
    }

    /// How long a sandbox may take to boot before its agent answers.
    fn boot_timeout(&self) -> Duration {
        match self.manifest.stage1.flavor {
            Flavor::Kvm => BOOT_TIMEOUT_VM,
            Flavor::Ns | Flavor::Fly => super::agent_client::REPLY_TIMEOUT,
        }
    }

    /// Sends one app request to the pod's guest-init; its refusal is our one-line error.
    fn ask(&self, req: Request) -> anyhow::Result<()> {
        // A sandbox just started may still be booting (kvm: tens of seconds to minutes before
        // guest-init listens on a loaded host): connecting is retried meanwhile.
        let deadline = Instant::now() + self.boot_timeout();
        let conn = loop {
            match super::enter::connect(&self.layout, self.manifest.stage1.flavor) {
                Ok(c) => break c,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e)
                        .with_context(|| format!("pod {}: reach its agent", self.pod.uuid))
                }
                Err(e) => {
                    tracing::debug!("pod {}: agent not reachable yet: {e:#}", self.pod.uuid);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        match super::agent_client::app_request(conn, req, self.timeout())? {
            Ok(()) => Ok(()),
            Err((_, message)) => Err(refuse(format!(
                "pod {}: {}",
                self.pod.uuid,
                super::enter::escape_controls(&message)
            ))),
        }
    }

    fn write_manifest(&self, m: &PodManifest) -> anyhow::Result<()> {
        ark_os::write_atomic_in(self.layout.dir(), &self.layout.manifest(), &m.to_json())
            .context("write the pod manifest")
    }

    fn status(&self) -> StatusDir {
        StatusDir::new(self.layout.status_dir())
    }

    /// Removes what `add` made for `name` on the host (its root, cgroup, status).
    fn remove_app_files(&self, name: &str) -> anyhow::Result<()> {
        let app_dir = self.layout.app_dir(name);
        super::rootfs::remove_pod_dir(&app_dir)?;
        if self.manifest.stage1.flavor != Flavor::Kvm {
            Cgroups::detect()
                .remove_app(&self.manifest.uuid, name)
                .with_context(|| format!("remove the cgroup of app {name}"))?;
        }
        self.status()
            .remove_app(name)
            .with_context(|| format!("remove the status of app {name}"))?;
        // Its logs go with it (as a CRI container's do): a new app of the same name starts
        // with none.
        for i in 0..ark_pod_spec::logs::MAX_MAX_FILES {
            let log = self
                .layout
                .logs_dir()
                .join(ark_pod_spec::logs::log_file_name(name, i));
            match std::fs::remove_file(&log) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("remove {}", log.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `ark app add UUID IMAGE [app flags] [-- ARGS]`: the app is created, not started. Returns
/// its name.
pub fn add(ctx: &crate::Context, id: &str, spec: &AppSpec) -> Result<String> {
    super::error::typed(|| {
        let sb = open_sandbox(ctx, id)?;
        super::plan::precheck(&[], std::slice::from_ref(spec)).map_err(refuse)?;
        let (images, holds) = super::images::resolve(ctx, std::slice::from_ref(spec))?;
        let mut used = sb
            .manifest
            .apps
            .iter()
            .map(|a| a.name.clone())
            .collect::<std::collections::HashSet<_>>();
        if let Some(n) = &spec.flags.name {
            if used.contains(n) {
                return Err(refuse(format!(
                    "pod {} already has an app {n:?}",
                    sb.pod.uuid
                )));
            }
        }
        let app = super::plan::build_app(
            spec,
            &images[0],
            &sb.manifest.volumes,
            &mut used,
            false,
            false,
        )
        .map_err(refuse)?;
        let mut next = sb.manifest.clone();
        next.apps.push(app.clone());
        next.validate().map_err(|e| refuse(e.to_string()))?;

        let made = make_app(&sb, &next, &app, &images[0].rootfs);
        drop(holds);
        if let Err(e) = made {
            if let Err(ce) = sb.remove_app_files(&app.name) {
                tracing::warn!("app {}: undoing the add: {ce:#}", app.name);
            }
            // The entry goes only if it was written (the lock is still ours).
            if PodManifest::load(&sb.layout.manifest()).is_ok_and(|m| m.app(&app.name).is_some()) {
                if let Err(we) = sb.write_manifest(&sb.manifest) {
                    tracing::warn!("app {}: restoring the manifest: {we:#}", app.name);
                }
            }
            return Err(e);
        }
        Ok(app.name)
    })
}

/// The host half of `add`, then guest-init's.
fn make_app(
    sb: &Sandbox,
    next: &PodManifest,
    app: &ark_pod_spec::App,
    render: &Path,
) -> anyhow::Result<()> {
    let root = sb.layout.app_rootfs(&app.name);
    if sb.layout.app_dir(&app.name).exists() {
        // A root no manifest entry owns: a leftover of an add that died; ours to replace.
        super::rootfs::remove_pod_dir(&sb.layout.app_dir(&app.name))?;
    }
    // A copy, not an overlay: a mount made on the host now would not reach the pod's private
    // mount namespace (ns/fly), nor is one wanted under a VM's shared directory.
    super::rootfs::fill_app_rootfs(
        super::rootfs::RootfsMode::Copy,
        sb.layout.dir(),
        &app.name,
        render,
        &root,
    )
    .with_context(|| format!("app {}: rootfs", app.name))?;
    let cgroup = match next.stage1.flavor {
        Flavor::Kvm => None,
        Flavor::Ns | Flavor::Fly => Cgroups::detect()
            .create_app(&next.uuid, app)
            .with_context(|| format!("app {}: cgroup", app.name))?
            .guest_app_cgroup(&app.name),
    };
    let status = sb.status();
    status
        .reserve_app(&app.name)
        .with_context(|| format!("app {}: status file", app.name))?;
    sb.write_manifest(next)?;
    sb.ask(Request::AppAdd(Box::new(AppAddRequest {
        app: app.clone(),
        cgroup,
    })))?;
    status
        .write_app(&AppStatus {
            app: app.name.clone(),
            state: AppState::Created,
            pid: None,
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: None,
            started_at: None,
            finished_at: None,
        })
        .with_context(|| format!("app {}: status", app.name))?;
    Ok(())
}

/// `ark app start UUID --app NAME`.
pub fn start(ctx: &crate::Context, id: &str, app: &str) -> Result<()> {
    super::error::typed(|| {
        let sb = open_sandbox(ctx, id)?;
        sb.has_app(app)?;
        sb.ask(Request::AppStart { app: app.into() })
    })
}

/// `ark app stop UUID --app NAME`: SIGTERM, SIGKILL after `timeout`; returns once the app's
/// exit is recorded.
pub fn stop(ctx: &crate::Context, id: &str, app: &str, timeout: Duration) -> Result<()> {
    super::error::typed(|| {
        let sb = open_sandbox(ctx, id)?;
        sb.has_app(app)?;
        sb.ask(Request::AppStop {
            app: app.into(),
            grace_secs: Some(timeout.as_secs()),
        })?;
        let status = sb.status();
        let deadline = Instant::now() + timeout + sb.timeout();
        while Instant::now() < deadline {
            if status
                .read_app(app)
                .is_some_and(|s| s.state == AppState::Exited)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "app {app}: no exit recorded within {} s",
            (timeout + sb.timeout()).as_secs()
        )
    })
}

/// `ark app rm UUID --app NAME`: an app that is not running leaves the pod.
pub fn rm(ctx: &crate::Context, id: &str, app: &str) -> Result<()> {
    super::error::typed(|| {
        let sb = open_sandbox(ctx, id)?;
        sb.has_app(app)?;
        // guest-init refuses a running app; from then on it never starts again.
        sb.ask(Request::AppRemove { app: app.into() })?;
        let mut next = sb.manifest.clone();
        next.apps.retain(|a| a.name != app);
        sb.write_manifest(&next)?;
        sb.remove_app_files(app)
    })
}

/// `ark app list|status UUID`: the pod's apps with their states.
pub fn apps(ctx: &crate::Context, id: &str) -> Result<Vec<super::info::AppSummary>> {
    super::error::typed(|| {
        let store = super::open_store(ctx)?;
        let pod = store.find(id)?;
        Ok(super::info::summarize(&store, &pod)?.apps)
    })
}

/// An app's state for `ark app list`.
pub fn state_name(s: Option<&AppStatus>) -> String {
    match s {
        None => "unknown".into(),
        Some(s) => match s.state {
            AppState::Created => "created".into(),
            AppState::Running => "running".into(),
            AppState::Exited => match (s.exit_code, s.signal) {
                (Some(c), _) => format!("exited({c})"),
                (None, Some(sig)) => format!("exited(signal {sig})"),
                (None, None) => "exited".into(),
            },
        },
    }
}
