//! `ark stop`: SIGTERM to the pod's stage1 (which forwards it to stage2, which forwards it to
//! the apps), then SIGKILL after the timeout — to the stage1 and to whatever is left in the
//! pod's cgroups, so a stopped pod is really gone.

use std::time::{Duration, Instant};

use anyhow::bail;
use ark_os::cgroup::Cgroups;
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
    // A killed stage1 never tore its network down.
    if let Some(locked) = store.try_lock(&exited)? {
        super::net::teardown(&locked.pod.path)?;
    }
    Ok(uuid)
}
