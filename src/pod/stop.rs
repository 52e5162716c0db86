//! `ark stop`: SIGTERM to the pod's stage1 (which forwards it to stage2, which forwards it to
//! the apps), then SIGKILL after the timeout — to the stage1 and to whatever is left in the
//! pod's cgroups, so a stopped pod is really gone.
//!
//! Who records the end: on a graceful stop the stage1 does (guest-init reports each app's
//! end, the stage1 writes `pod.json`). A SIGKILL takes the stage1 and stage2 down with the
//! apps (ns: PID 1 of the pid namespace dies; fly: pdeathsig and the cgroup kill; kvm: the VM
//! goes), so nobody in the pod is left to write anything: stop, the one that outlives them,
//! records each app still running as killed by signal 9 (exit 137), and `pod.json`.

use std::time::{Duration, Instant};

use anyhow::bail;
use ark_os::cgroup::Cgroups;
use ark_os::StatusDir;
use ark_pod_spec::{now_unix_ms, AppState, AppStatus, PodLayout, PodManifest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::info::read_pid;
use super::store::{Liveness, PodRef, PodState, PodStore};

/// Stops one pod (SIGKILL at once with `force`, else SIGTERM and SIGKILL after `timeout`) and
/// returns its UUID. A pod that has already exited is fine.
pub fn stop(
    ctx: &crate::Context,
    id: &str,
    force: bool,
    timeout: Duration,
) -> super::Result<String> {
    super::error::typed(|| {
        let store = super::open_store(ctx)?;
        stop_one(&store, id, force, timeout)
    })
}

/// Whether `pid` is a process of this pod's stage1: running, and its executable is a stage1
/// (the recorded pid may have been reused once the stage1 is gone).
fn is_stage1(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n.starts_with("ark-stage1-") || n == "ark-vmm")
}

fn wait_unlocked(store: &PodStore, pod: &PodRef, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = store.refind(&pod.uuid)?;
        if now.state != PodState::Run || !store.is_locked(&now)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_one(store: &PodStore, id: &str, force: bool, timeout: Duration) -> anyhow::Result<String> {
    let pod = store.find(id)?;
    let pod = store.reap_if_exited(&pod)?;
    match store.liveness(&pod)? {
        Liveness::Running => {}
        Liveness::Exited => return Ok(pod.uuid.to_string()),
        other => bail!("pod {} is {}, not running", pod.uuid, other.as_str()),
    }
    let pid = read_pid(&pod.path).filter(|p| is_stage1(*p));
    let uuid = pod.uuid.to_string();
    if let Some(pid) = pid {
        let sig = if force {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        let _ = kill(Pid::from_raw(pid), sig);
        if !force && wait_unlocked(store, &pod, timeout)? {
            store.reap_if_exited(&store.refind(&pod.uuid)?)?;
            return Ok(uuid);
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // The stage1 is gone or killed; what it started may not be (a stage1 that died without
    // taking its children along): kill everything in the pod's cgroups.
    let _ = Cgroups::detect().remove_pod(&uuid);
    if !wait_unlocked(store, &pod, Duration::from_secs(10))? {
        bail!("pod {uuid} is still running after SIGKILL");
    }
    let exited = store.reap_if_exited(&store.refind(&pod.uuid)?)?;
    if let Some(locked) = store.try_lock(&exited)? {
        record_killed(&locked.pod.path)?;
        // A killed stage1 never tore its network down.
        super::net::teardown(&locked.pod.path)?;
    }
    Ok(uuid)
}

/// Why a pod killed by `ark stop` ended, in `pod.json`.
pub const KILLED_REASON: &str = "killed by ark stop (SIGKILL)";

/// After stop's SIGKILL: unless the stage1 recorded the pod's end before it died, every app
/// still running was killed by SIGKILL with it; say so, and write `pod.json`.
fn record_killed(pod_dir: &std::path::Path) -> anyhow::Result<()> {
    let layout = PodLayout::new(pod_dir);
    let status = StatusDir::new(layout.status_dir());
    if status.read_pod().is_some() {
        return Ok(());
    }
    let manifest = PodManifest::load(&layout.manifest()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let killed = killed_apps(&manifest, |app| status.read_app(app), now_unix_ms());
    status.finish_with(&manifest, Some(KILLED_REASON), &killed)?;
    Ok(())
}

/// The final status of each app that was running when the pod was SIGKILLed.
fn killed_apps(
    manifest: &PodManifest,
    status_of: impl Fn(&str) -> Option<AppStatus>,
    now_ms: u64,
) -> Vec<AppStatus> {
    manifest
        .apps
        .iter()
        .filter_map(|a| status_of(&a.name))
        .filter(|s| s.state == AppState::Running)
        .map(|s| AppStatus {
            state: AppState::Exited,
            signal: Some(Signal::SIGKILL as i32),
            finished_at: Some(now_ms),
            ..s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_apps_are_recorded_killed_by_sigkill() {
        let m = PodManifest::from_json(
            br#"{"version":1,"uuid":"ab12","stage1":{"flavor":"ns"},
                 "apps":[{"name":"a","image":{"id":"sha256:x"},"exec":["sleep"]},
                         {"name":"b","image":{"id":"sha256:x"},"exec":["true"]},
                         {"name":"c","image":{"id":"sha256:x"},"exec":["true"]}]}"#,
        )
        .unwrap();
        let mut done = AppStatus::running("b", 8, 1);
        done.state = AppState::Exited;
        done.exit_code = Some(0);
        let killed = killed_apps(
            &m,
            |app| match app {
                "a" => Some(AppStatus::running("a", 7, 1)),
                "b" => Some(done.clone()),
                _ => None,
            },
            5,
        );
        assert_eq!(killed.len(), 1, "{killed:?}");
        assert_eq!(killed[0].app, "a");
        assert_eq!(killed[0].pid, Some(7));
        assert_eq!(killed[0].code(), 137);
        assert_eq!(killed[0].finished_at, Some(5));
    }
}
