//! The stage1s that need no VM. `ns`: guest-init as PID 1 of new mount, PID, UTS and IPC
//! namespaces (a net namespace for `net: none`), pivot_root into the stage1 root, a cgroup per
//! pod and per app. `fly`: host namespaces, only a private mount namespace to place volumes,
//! chroot into the stage1 root, guest-init as an ordinary (subreaper) process. Both confine
//! the pod to the standard device nodes with a device cgroup. Both share
//! everything else, so the fly binary links this library.
//!
//! CLI: `ark-stage1-<flavor> run --pod-dir DIR [--debug] [--interactive]`; stage0 execs it.
//! Exit code: the pod's (see `ark_pod_spec::pod_exit_code`), 125 for stage1 errors.

mod spawn;

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ark_os::cgroup::{Cgroups, PodCgroups, DEFAULT_ALLOWED};
use ark_os::StatusDir;
use ark_pod_spec::stage1::{lock_fd_from_env, stop_signals_with, RunArgs};
use ark_pod_spec::{
    guest, OnExit, PodLayout, PodManifest, Stage2Config, StatusTransport, EXIT_STAGE1_ERROR,
};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Which isolation the stage1 builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Ns,
    Fly,
}

impl Isolation {
    fn prog(self) -> &'static str {
        match self {
            Isolation::Ns => "ark-stage1-ns",
            Isolation::Fly => "ark-stage1-fly",
        }
    }
    fn about(self) -> &'static str {
        match self {
            Isolation::Ns => "ark stage1: a pod in its own namespaces",
            Isolation::Fly => "ark stage1: a pod in the host's namespaces (fly)",
        }
    }
}

/// Entry point of both binaries: parses the command line and runs the pod. Returns the exit
/// code.
pub fn main(iso: Isolation) -> i32 {
    // From the first instruction on, a stop is a graceful stop: the signals wait (pending)
    // until guest-init runs and are forwarded to it then (see `supervise`).
    let _ = forwarded_signals().thread_block();
    let args = RunArgs::parse(iso.prog(), iso.about());
    keep_lock_from_children();
    match run(iso, &args.pod_dir, args.debug) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}: {e:#}", iso.prog());
            EXIT_STAGE1_ERROR
        }
    }
}

/// stage0 hands over the pod's lock (held while the pod runs) as [`ark_pod_spec::stage1::LOCK_FD_ENV`]. The stage1
/// holds it; guest-init and the apps must not, or a leftover process would keep a dead pod
/// looking alive.
fn keep_lock_from_children() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if let Some(fd) = lock_fd_from_env() {
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// A loaded, checked pod.
#[derive(Debug)]
pub struct Pod {
    pub layout: PodLayout,
    pub manifest: PodManifest,
}

/// Reads the manifest and checks that everything the pod needs on the host is there, so a
/// bad pod fails with one line before anything is created.
pub fn load_pod(pod_dir: &Path) -> Result<Pod> {
    let layout = PodLayout::new(pod_dir);
    if !pod_dir.is_dir() {
        bail!("pod directory {} does not exist", pod_dir.display());
    }
    let manifest = PodManifest::load(&layout.manifest()).map_err(|e| anyhow!("{e}"))?;
    check_pod(&layout, &manifest)?;
    Ok(Pod { layout, manifest })
}

fn check_pod(layout: &PodLayout, m: &PodManifest) -> Result<()> {
    let root = layout.stage1_rootfs();
    if !layout.init_binary().is_file() {
        bail!(
            "{} is missing (stage0 copies ark-init there)",
            layout.init_binary().display()
        );
    }
    if !layout.rootfs_manifest().is_file() {
        bail!("{} is missing", layout.rootfs_manifest().display());
    }
    for a in &m.apps {
        if !layout.app_rootfs(&a.name).is_dir() {
            bail!(
                "app {}: root {} is missing",
                a.name,
                layout.app_rootfs(&a.name).display()
            );
        }
    }
    for v in &m.volumes {
        if !Path::new(&v.source).exists() {
            bail!("volume {}: source {} does not exist", v.name, v.source);
        }
    }
    if !root.is_dir() {
        bail!("stage1 root {} is missing", root.display());
    }
    Ok(())
}

/// The stage2 config of an ns/fly pod: statuses as files in the bind-mounted status dir,
/// cgroups bind-mounted under /ark/cgroup/<hierarchy>.
pub fn stage2_config(
    iso: Isolation,
    m: &PodManifest,
    cgroups: &PodCgroups,
    debug: bool,
) -> Stage2Config {
    let mut c = Stage2Config::new(
        m.uuid.clone(),
        StatusTransport::File {
            dir: guest::STATUS_DIR.into(),
        },
        OnExit::Exit,
    );
    c.hostname = (iso == Isolation::Ns).then(|| m.hostname());
    c.mount_pseudo_fs = true;
    c.agent = Some(ark_pod_spec::AgentTransport::Unix {
        path: guest::AGENT_SOCKET.into(),
    });
    c.debug = debug;
    c.app_cgroups = m
        .apps
        .iter()
        .filter_map(|a| cgroups.guest_app_cgroup(&a.name))
        .collect();
    c
}

fn forwarded_signals() -> SigSet {
    stop_signals_with(&[Signal::SIGCHLD])
}

/// Runs the pod to its end; returns the pod's exit code. Statuses and `pod.json` are written
/// and the pod's cgroups removed before returning, whatever happened.
pub fn run(iso: Isolation, pod_dir: &Path, debug: bool) -> Result<i32> {
    let pod = load_pod(pod_dir)?;
    let status = StatusDir::new(pod.layout.status_dir());
    std::fs::create_dir_all(status.dir()).context("create status dir")?;
    // Before any app runs: an app that fills the disk must not cost the pod its statuses.
    status
        .reserve(&pod.manifest)
        .context("reserve the pod's status files")?;
    ark_pod_spec::logs::LogLimits::from_options(&pod.manifest.stage1.options)
        .map_err(anyhow::Error::msg)?;
    ark_os::applog::create_log_dir(&pod.layout.logs_dir()).context("create logs dir")?;

    let cgroups = Cgroups::detect();
    let result = run_pod(iso, &pod, &cgroups, debug);
    // Every way out of the pod (apps done, a stop, a failed start) passes here; a stage1
    // killed before this is cleaned up by stage0 (`ark stop`, `rm`, `gc`).
    if !pod.manifest.net.networks().is_empty() {
        if let Err(e) = ark_net::teardown(&pod.layout) {
            eprintln!("{}: {e}", iso.prog());
        }
    }
    let _ = std::fs::remove_file(pod.layout.stage2_pid_file());
    let cleanup = cgroups.remove_pod(&pod.manifest.uuid);
    let reason = match &result {
        Ok(None) => None,
        Ok(Some(r)) => Some(r.clone()),
        Err(e) => Some(format!("{e:#}")),
    };
    // A sandbox's apps changed while it ran: the statuses owed are those it has now.
    let now = pod.manifest.current(&pod.layout.manifest());
    let exit = status
        .finish(&now, reason.as_deref())
        .context("write pod status")?;
    if let Err(e) = cleanup {
        eprintln!("{}: remove pod cgroups: {e}", iso.prog());
    }
    match result {
        Err(e) => Err(e),
        Ok(_) => Ok(exit.exit_code),
    }
}

/// Returns why stage2 ended abnormally, if it did.
fn run_pod(iso: Isolation, pod: &Pod, cgroups: &Cgroups, debug: bool) -> Result<Option<String>> {
    // Everything in the pod, guest-init included, may open only the standard device nodes.
    let pod_cgroups = cgroups
        .create_confined_pod(&pod.manifest, &DEFAULT_ALLOWED)
        .context("create pod cgroups")?;
    let mut cfg = stage2_config(iso, &pod.manifest, &pod_cgroups, debug);
    let net = pod_network(iso, pod)?;
    cfg.etc = ark_net::etc_files(&pod.manifest, net.as_ref().map(|(s, _)| s));
    ark_os::write_atomic_volatile(&pod.layout.stage2_config(), &cfg.to_json())
        .context("write stage2 config")?;

    let signals = forwarded_signals();
    signals.thread_block().context("block signals")?;
    let child = spawn::spawn_stage2(iso, pod, &pod_cgroups, net.as_ref().map(|(_, fd)| fd))?;
    drop(net);
    ark_os::write_atomic_volatile(
        &pod.layout.stage2_pid_file(),
        child.as_raw().to_string().as_bytes(),
    )
    .context("write stage2 pid")?;
    if debug {
        eprintln!("{}: stage2 started as pid {child}", iso.prog());
    }
    let ws = supervise(child, &signals)?;
    Ok(match ws {
        WaitStatus::Exited(_, 0) => None,
        WaitStatus::Exited(_, c) => Some(format!("stage2 exited with code {c}")),
        WaitStatus::Signaled(_, s, _) => Some(format!("stage2 was killed by {s}")),
        other => Some(format!("stage2 ended: {other:?}")),
    })
}

/// For CNI networks: the pod's network namespace, attached to each network (ark-net), and an
/// fd of it for guest-init to join.
fn pod_network(
    iso: Isolation,
    pod: &Pod,
) -> Result<Option<(ark_pod_spec::net::PodNetworkState, std::os::fd::OwnedFd)>> {
    if pod.manifest.net.networks().is_empty() {
        return Ok(None);
    }
    if iso == Isolation::Fly {
        bail!("a fly pod shares the host's network namespace: CNI networks need --stage1=ns");
    }
    let state = ark_net::setup(
        &pod.layout,
        &ark_net::NetRequest::from_manifest(&pod.manifest),
    )?;
    let fd = std::fs::File::open(pod.layout.netns())
        .with_context(|| format!("open {}", pod.layout.netns().display()))?;
    Ok(Some((state, fd.into())))
}

/// Waits for stage2, turning SIGTERM/SIGINT/SIGHUP into a SIGTERM to it (a graceful stop:
/// guest-init SIGTERMs the apps and SIGKILLs them after its grace period).
fn supervise(child: Pid, signals: &SigSet) -> Result<WaitStatus> {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(ws @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(ws),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waitpid stage2"),
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = kill(child, Signal::SIGTERM);
                let _ = sig;
            }
            Err(e) => return Err(e).context("sigwait"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_os::cgroup::Hierarchy;

    fn manifest() -> PodManifest {
        PodManifest::from_json(
            br#"{"version":1,"uuid":"ab12","hostname":"h1","stage1":{"flavor":"ns"},
                 "apps":[{"name":"web","image":{"id":"sha256:x"},"exec":["true"]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn stage2_config_per_flavor() {
        let v1 = PodCgroups {
            pod_dirs: vec![
                (
                    Hierarchy::V1 {
                        controller: "cpu".into(),
                        root: "/sys/fs/cgroup/cpu".into(),
                    },
                    "/sys/fs/cgroup/cpu/ark/ab12".into(),
                ),
                (
                    Hierarchy::V1 {
                        controller: "memory".into(),
                        root: "/sys/fs/cgroup/memory".into(),
                    },
                    "/sys/fs/cgroup/memory/ark/ab12".into(),
                ),
            ],
        };
        let c = stage2_config(Isolation::Ns, &manifest(), &v1, false);
        assert_eq!(c.hostname.as_deref(), Some("h1"));
        assert_eq!(c.on_exit, OnExit::Exit);
        assert!(c.mount_pseudo_fs);
        assert_eq!(
            c.status,
            StatusTransport::File {
                dir: "/ark/status".into()
            }
        );
        assert_eq!(
            c.app_cgroups[0].dirs,
            ["/ark/cgroup/cpu/app.web", "/ark/cgroup/memory/app.web"]
        );
        assert_eq!(
            c.app_cgroups[0].oom_file.as_deref(),
            Some("/ark/cgroup/memory/app.web/memory.oom_control")
        );

        // A v2 root whose controllers include memory (a pure v2 host's).
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let v2 = PodCgroups {
            pod_dirs: vec![(
                Hierarchy::V2 {
                    root: root.path().into(),
                },
                root.path().join("ark/ab12"),
            )],
        };
        let c = stage2_config(Isolation::Fly, &manifest(), &v2, true);
        // fly shares the host's UTS namespace: no hostname to set.
        assert_eq!(c.hostname, None);
        assert!(c.debug);
        assert_eq!(
            c.app_cgroups[0].oom_file.as_deref(),
            Some("/ark/cgroup/unified/app.web/memory.events")
        );
        let none = stage2_config(Isolation::Ns, &manifest(), &PodCgroups::default(), false);
        assert!(none.app_cgroups.is_empty());
    }
}
