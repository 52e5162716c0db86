//! `ark gc` and `ark rm`: exited pods → `garbage/` → unmounted, cgroups removed, deleted.
//!
//! Every move happens under the pod's lock, so a pod that is running (or being prepared, or
//! being run) is never touched. A crashed gc leaves pods in `garbage/`, which the next one
//! finishes.

use std::time::{Duration, SystemTime};

use ark_os::cgroup::Cgroups;

use super::rootfs::remove_pod_dir;
use super::store::{exited_at, LockedPod, PodRef, PodState, PodStore};

fn age(t: Option<SystemTime>) -> Duration {
    t.and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

/// Removes a locked pod for good: into `garbage/`, kill/remove its cgroups, unmount, delete.
fn destroy(store: &PodStore, mut pod: LockedPod, cgroups: &Cgroups) -> anyhow::Result<()> {
    if pod.pod.state != PodState::Garbage {
        pod.move_to(store, PodState::Garbage)?;
    }
    let uuid = pod.pod.uuid.to_string();
    // The stage1 may have died before its own teardown (kill -9): DEL, netns, state.
    super::net::teardown(&pod.pod.path).map_err(|e| anyhow::anyhow!("pod {uuid}: {e:#}"))?;
    cgroups
        .remove_pod(&uuid)
        .map_err(|e| anyhow::anyhow!("pod {uuid}: cgroups: {e}"))?;
    remove_pod_dir(&pod.pod.path).map_err(|e| anyhow::anyhow!("pod {uuid}: {e:#}"))?;
    Ok(())
}

/// What gc does with one pod, given the policy; `None` = leave it.
fn gc_decision(store: &PodStore, pod: &PodRef, a: &GcPolicy) -> anyhow::Result<bool> {
    Ok(match pod.state {
        // Locked = a prepare in progress; unlocked = a crashed prepare's leftover.
        PodState::Prepare => !store.is_locked(pod)?,
        PodState::Prepared => {
            let made = std::fs::metadata(&pod.path).and_then(|m| m.modified()).ok();
            age(made) >= a.expire_prepared
        }
        PodState::Run => false,
        PodState::ExitedGarbage => age(exited_at(&pod.path)) >= a.grace_period,
        PodState::Garbage => true,
    })
}

/// How long gc keeps what it may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// How long exited pods are kept before removal.
    pub grace_period: Duration,
    /// How long prepared pods may wait to be run before removal.
    pub expire_prepared: Duration,
}

/// What one gc did: the pods it removed, and what it could not remove.
#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<uuid::Uuid>,
    /// One error per pod or leftover that stays for the next gc.
    pub failed: Vec<anyhow::Error>,
}

/// Removes exited pods past their grace period, expired prepared pods, crashed prepares,
/// what an interrupted gc left in `garbage/` and stale `prepare/` leftovers.
pub fn gc(ctx: &crate::Context, policy: &GcPolicy) -> super::Result<GcReport> {
    super::error::typed(|| {
        let store = super::open_store(ctx)?;
        let cgroups = Cgroups::detect();
        let mut report = GcReport::default();
        for pod in store.list()? {
            // Dead `run/` pods become exited first (and start their grace period now).
            let pod = store.reap_if_exited(&pod)?;
            if !gc_decision(&store, &pod, policy)? {
                continue;
            }
            let Some(locked) = store.try_lock(&pod)? else {
                continue; // Someone holds it: not garbage after all.
            };
            // It may have moved while we looked (e.g. run-prepared won the race).
            if locked.pod.state != pod.state {
                continue;
            }
            match destroy(&store, locked, &cgroups) {
                Ok(()) => report.removed.push(pod.uuid),
                Err(e) => report.failed.push(e),
            }
        }
        for dir in store.stale_new_dirs()? {
            if let Err(e) = remove_pod_dir(&dir) {
                report.failed.push(e);
            }
        }
        Ok(report)
    })
}

/// Removes one pod that is not running (nor being prepared or run) and returns its UUID.
pub fn rm(ctx: &crate::Context, id: &str) -> super::Result<String> {
    super::error::typed(|| {
        let store = super::open_store(ctx)?;
        let pod = store.reap_if_exited(&store.find(id)?)?;
        let Some(locked) = store.try_lock(&pod)? else {
            let what = if pod.state == PodState::Run {
                "running"
            } else {
                "busy"
            };
            return Err(crate::error::Kind::marked(
                super::ErrorKind::InUse,
                format!("pod {} is {what} (stop it first)", pod.uuid),
            )
            .into());
        };
        let uuid = locked.pod.uuid.to_string();
        destroy(&store, locked, &Cgroups::detect())?;
        Ok(uuid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn args(grace: u64) -> GcPolicy {
        GcPolicy {
            grace_period: Duration::from_secs(grace),
            expire_prepared: Duration::from_secs(3600),
        }
    }

    #[test]
    fn gc_policy_by_state() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PodStore::open(tmp.path()).unwrap();

        // A prepare in progress (locked) is left; a crashed one (unlocked) is garbage.
        let preparing = store.create(Uuid::new_v4()).unwrap();
        assert!(!gc_decision(&store, &preparing.pod, &args(0)).unwrap());
        let crashed = store.create(Uuid::new_v4()).unwrap();
        let crashed_ref = crashed.pod.clone();
        drop(crashed);
        assert!(gc_decision(&store, &crashed_ref, &args(0)).unwrap());

        // A fresh prepared pod is kept until it expires.
        let mut prepared = store.create(Uuid::new_v4()).unwrap();
        prepared.move_to(&store, PodState::Prepared).unwrap();
        assert!(!gc_decision(&store, &prepared.pod, &args(0)).unwrap());

        // An exited pod is kept for the grace period.
        let mut exited = store.create(Uuid::new_v4()).unwrap();
        exited.move_to(&store, PodState::Prepared).unwrap();
        exited.move_to(&store, PodState::Run).unwrap();
        let run_ref = exited.pod.clone();
        drop(exited);
        let reaped = store.reap_if_exited(&run_ref).unwrap();
        assert_eq!(reaped.state, PodState::ExitedGarbage);
        assert!(gc_decision(&store, &reaped, &args(0)).unwrap());
        assert!(!gc_decision(&store, &reaped, &args(600)).unwrap());

        // destroy removes the directory.
        let locked = store.try_lock(&reaped).unwrap().unwrap();
        destroy(&store, locked, &Cgroups::default()).unwrap();
        assert!(store.refind(&reaped.uuid).is_err());
        drop(preparing);
    }
}
