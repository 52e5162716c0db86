//! Pod directories and their states, rkt style: `<dir>/pods/<state>/<uuid>/`, moved from state to
//! state by `rename(2)`, with an exclusive `flock(2)` on the pod directory telling live from dead.
//!
//! - `prepare/`: being prepared; locked by the preparing `ark` (an unlocked one is a crashed
//!   prepare's leftover, which `gc` removes).
//! - `prepared/`: ready to run, unlocked.
//! - `run/`: handed to a stage1; the lock is held by the stage1 process (it inherits the fd across
//!   `exec`), so a locked `run/` pod is running and an unlocked one has exited — whatever killed it.
//! - `exited-garbage/`: exited, kept for `status` until the grace period passes.
//! - `garbage/`: being removed.
//!
//! Renaming a directory keeps its inode, so a lock taken in one state is still held in the next.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use uuid::Uuid;

/// Where a pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PodState {
    Prepare,
    Prepared,
    Run,
    ExitedGarbage,
    Garbage,
}

impl PodState {
    pub const ALL: [PodState; 5] = [
        PodState::Prepare,
        PodState::Prepared,
        PodState::Run,
        PodState::ExitedGarbage,
        PodState::Garbage,
    ];

    /// The directory under `<dir>/pods/` holding pods in this state.
    pub fn dir_name(self) -> &'static str {
        match self {
            PodState::Prepare => "prepare",
            PodState::Prepared => "prepared",
            PodState::Run => "run",
            PodState::ExitedGarbage => "exited-garbage",
            PodState::Garbage => "garbage",
        }
    }

    /// Whether `self -> to` is a move the state machine allows.
    pub fn can_move_to(self, to: PodState) -> bool {
        use PodState::*;
        matches!(
            (self, to),
            (Prepare, Prepared)
                | (Prepare, Garbage)
                | (Prepared, Run)
                | (Prepared, Garbage)
                | (Run, ExitedGarbage)
                | (ExitedGarbage, Garbage)
        )
    }
}

/// What `ark status`/`list` report, derived from the directory state and the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// `prepare/` and locked.
    Preparing,
    /// `prepare/` and unlocked: a crashed prepare's leftover.
    AbortedPrepare,
    Prepared,
    /// `run/` and locked.
    Running,
    /// `run/` unlocked, or `exited-garbage/`.
    Exited,
    Garbage,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Preparing => "preparing",
            Liveness::AbortedPrepare => "aborted-prepare",
            Liveness::Prepared => "prepared",
            Liveness::Running => "running",
            Liveness::Exited => "exited",
            Liveness::Garbage => "garbage",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no pod matches {0:?}")]
    NotFound(String),
    #[error("pod id {0:?} is ambiguous: it matches {1} pods")]
    Ambiguous(String, usize),
    #[error("pod {uuid} is {state}, not {wanted}")]
    WrongState {
        uuid: Uuid,
        state: &'static str,
        wanted: &'static str,
    },
    #[error("pod {0} is in use by another ark process")]
    Busy(Uuid),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `<dir>/pods` tree.
#[derive(Debug, Clone)]
pub struct PodStore {
    root: PathBuf,
}

/// A pod directory found in the store (not locked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub uuid: Uuid,
    pub state: PodState,
    pub path: PathBuf,
}

impl PodStore {
    /// Opens (creating the state directories of) `<data_dir>/pods`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join("pods");
        for s in PodState::ALL {
            let d = root.join(s.dir_name());
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(PodStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, state: PodState, uuid: &Uuid) -> PathBuf {
        self.root.join(state.dir_name()).join(uuid.to_string())
    }

    /// Every pod in every state.
    pub fn list(&self) -> Result<Vec<PodRef>, StoreError> {
        let mut pods = Vec::new();
        for state in PodState::ALL {
            let d = self.root.join(state.dir_name());
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&d)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&d))?;
                let Some(uuid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| Uuid::parse_str(n).ok())
                else {
                    continue;
                };
                pods.push(PodRef {
                    uuid,
                    state,
                    path: entry.path(),
                });
            }
        }
        // A pod caught mid-rename may show up twice or not at all; keep the later state.
        pods.sort_by_key(|p| (p.uuid, p.state));
        pods.dedup_by(|later, earlier| {
            if later.uuid == earlier.uuid {
                *earlier = later.clone();
                true
            } else {
                false
            }
        });
        Ok(pods)
    }

    /// Finds the pod whose UUID is `id` or starts with `id` (unique prefix, as rkt allows).
    pub fn find(&self, id: &str) -> Result<PodRef, StoreError> {
        let id_lc = id.trim().to_ascii_lowercase();
        if id_lc.is_empty() {
            return Err(StoreError::NotFound(id.to_string()));
        }
        let matches: Vec<PodRef> = self
            .list()?
            .into_iter()
            .filter(|p| p.uuid.to_string().starts_with(&id_lc))
            .collect();
        match matches.len() {
            0 => Err(StoreError::NotFound(id.to_string())),
            1 => Ok(matches.into_iter().next().expect("one match")),
            n => Err(StoreError::Ambiguous(id.to_string(), n)),
        }
    }

    /// Half-made pod directories of a `create` that crashed before locking (unlocked).
    pub fn stale_new_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let d = self.root().join(PodState::Prepare.dir_name());
        let mut out = Vec::new();
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let path = entry.map_err(io_err(&d))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Young ones may be a `create` between mkdir and flock.
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age.as_secs() >= 60);
            if old && name.starts_with('.') && name.ends_with(".new") {
                if let Ok(l) = PodLock::open(&path) {
                    if l.try_lock()?.is_some() {
                        out.push(path);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Re-finds a pod by exact UUID (after a possible concurrent move).
    pub fn refind(&self, uuid: &Uuid) -> Result<PodRef, StoreError> {
        for state in PodState::ALL.iter().rev() {
            let path = self.path(*state, uuid);
            if path.exists() {
                return Ok(PodRef {
                    uuid: *uuid,
                    state: *state,
                    path,
                });
            }
        }
        Err(StoreError::NotFound(uuid.to_string()))
    }

    /// Creates a new pod directory in `prepare/`, locked.
    pub fn create(&self, uuid: Uuid) -> Result<LockedPod, StoreError> {
        // Made and locked under a name `list` ignores, then renamed into place: gc never sees
        // an unlocked pod that is merely about to be locked.
        let tmp = self
            .root
            .join(PodState::Prepare.dir_name())
            .join(format!(".{uuid}.new"));
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let lock = PodLock::open(&tmp)?
            .try_lock()?
            .ok_or(StoreError::Busy(uuid))?;
        let path = self.path(PodState::Prepare, &uuid);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(LockedPod {
            pod: PodRef {
                uuid,
                state: PodState::Prepare,
                path,
            },
            lock,
        })
    }

    /// Locks a pod (non-blocking), then checks it did not move while we waited; the returned
    /// handle's state is where the pod is now.
    pub fn try_lock(&self, pod: &PodRef) -> Result<Option<LockedPod>, StoreError> {
        let Some(lock) = PodLock::open(&pod.path)?.try_lock()? else {
            return Ok(None);
        };
        self.settle(pod, lock).map(Some)
    }

    /// Locks a pod, waiting for its holder (e.g. the running stage1) to let go.
    pub fn lock_wait(&self, pod: &PodRef) -> Result<LockedPod, StoreError> {
        let lock = PodLock::open(&pod.path)?.lock_wait()?;
        self.settle(pod, lock)
    }

    fn settle(&self, pod: &PodRef, lock: Flock<File>) -> Result<LockedPod, StoreError> {
        let ino = lock.metadata().map_err(io_err(&pod.path))?.ino();
        // The holder may have moved the pod before letting go: find where our inode is now.
        for state in PodState::ALL {
            let path = self.path(state, &pod.uuid);
            if fs::metadata(&path).map(|m| m.ino() == ino).unwrap_or(false) {
                return Ok(LockedPod {
                    pod: PodRef {
                        uuid: pod.uuid,
                        state,
                        path,
                    },
                    lock,
                });
            }
        }
        Err(StoreError::NotFound(pod.uuid.to_string()))
    }

    /// Whether a pod's lock is held by someone (a running stage1, a preparing ark).
    pub fn is_locked(&self, pod: &PodRef) -> Result<bool, StoreError> {
        match PodLock::open(&pod.path) {
            Ok(l) => Ok(l.try_lock()?.is_none()),
            // Moved/removed under us: not ours to judge; callers re-find.
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The liveness of a pod as `status`/`list` report it (locks briefly; moves nothing).
    pub fn liveness(&self, pod: &PodRef) -> Result<Liveness, StoreError> {
        Ok(match pod.state {
            PodState::Prepare if self.is_locked(pod)? => Liveness::Preparing,
            PodState::Prepare => Liveness::AbortedPrepare,
            PodState::Prepared => Liveness::Prepared,
            PodState::Run if self.is_locked(pod)? => Liveness::Running,
            PodState::Run | PodState::ExitedGarbage => Liveness::Exited,
            PodState::Garbage => Liveness::Garbage,
        })
    }

    /// Moves a dead `run/` pod to `exited-garbage/` (under its lock), as `status`, `list` and
    /// `gc` do lazily. Returns where the pod is afterwards.
    pub fn reap_if_exited(&self, pod: &PodRef) -> Result<PodRef, StoreError> {
        if pod.state != PodState::Run {
            return Ok(pod.clone());
        }
        match self.try_lock(pod)? {
            None => Ok(pod.clone()),
            Some(mut locked) => {
                if locked.pod.state == PodState::Run {
                    locked.move_to(self, PodState::ExitedGarbage)?;
                    mark_exited(&locked.pod.path);
                }
                Ok(locked.pod.clone())
            }
        }
    }
}

/// Records when a pod was found exited (the clock the gc grace period runs on).
fn mark_exited(pod_dir: &Path) {
    let _ = File::create(pod_dir.join("exited"));
}

/// When a pod was found exited (`exited` marker), else when its directory last changed.
pub fn exited_at(pod_dir: &Path) -> Option<SystemTime> {
    fs::metadata(pod_dir.join("exited"))
        .or_else(|_| fs::metadata(pod_dir))
        .and_then(|m| m.modified())
        .ok()
}

/// An open pod directory, about to be locked.
struct PodLock {
    file: File,
    path: PathBuf,
}

impl PodLock {
    /// Opens the directory close-on-exec like every other fd: only `run-prepared`'s exec of the
    /// stage1 passes it on, through [`LockedPod::keep_across_exec`].
    fn open(path: &Path) -> Result<Self, StoreError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(path)(io::Error::from(e)))?;
        // SAFETY: `open` just returned this fd and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(PodLock {
            file,
            path: path.to_path_buf(),
        })
    }

    fn try_lock(self) -> Result<Option<Flock<File>>, StoreError> {
        match Flock::lock(self.file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(io_err(&self.path)(io::Error::from(e))),
        }
    }

    fn lock_wait(self) -> Result<Flock<File>, StoreError> {
        loop {
            match Flock::lock(
                self.file.try_clone().map_err(io_err(&self.path))?,
                FlockArg::LockExclusive,
            ) {
                Ok(l) => return Ok(l),
                Err((_, Errno::EINTR)) => continue,
                Err((_, e)) => return Err(io_err(&self.path)(io::Error::from(e))),
            }
        }
    }
}

/// A pod whose lock this process holds.
#[derive(Debug)]
pub struct LockedPod {
    pub pod: PodRef,
    lock: Flock<File>,
}

impl LockedPod {
    /// Renames the pod into `to`'s directory.
    pub fn move_to(&mut self, store: &PodStore, to: PodState) -> Result<(), StoreError> {
        debug_assert!(
            self.pod.state.can_move_to(to),
            "{:?} -> {to:?}",
            self.pod.state
        );
        let dest = store.path(to, &self.pod.uuid);
        fs::rename(&self.pod.path, &dest).map_err(io_err(&self.pod.path))?;
        self.pod.state = to;
        self.pod.path = dest;
        Ok(())
    }

    /// The raw lock fd (inherited by the stage1 across exec).
    pub fn lock_fd(&self) -> i32 {
        self.lock.as_raw_fd()
    }

    /// Lets the lock fd survive the next `exec` (and only that program's: the stage1 marks it
    /// close-on-exec again for its children), so the lock lives exactly as long as the pod.
    pub fn keep_across_exec(&self) -> Result<(), StoreError> {
        nix::fcntl::fcntl(
            self.lock.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map(drop)
        .map_err(|e| io_err(&self.pod.path)(io::Error::from(e)))
    }

    /// Closes this process's lock fd without unlocking: the lock stays with the child that
    /// inherited it (a flock belongs to the open file, shared by both fds), and the pod counts
    /// as locked exactly as long as that child keeps it.
    pub fn hand_over_lock(self) -> PodRef {
        let LockedPod { pod, lock } = self;
        let fd = lock.as_raw_fd();
        // Flock's Drop would unlock the file for the child too: forget it, close the fd only.
        std::mem::forget(lock);
        // SAFETY: `fd` was owned by the forgotten Flock (nothing else closes it) and is not
        // used after this.
        unsafe { libc::close(fd) };
        pod
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_allows_only_forward_moves() {
        use PodState::*;
        assert!(Prepare.can_move_to(Prepared));
        assert!(Prepared.can_move_to(Run));
        assert!(Run.can_move_to(ExitedGarbage));
        assert!(ExitedGarbage.can_move_to(Garbage));
        assert!(Prepare.can_move_to(Garbage));
        assert!(!Run.can_move_to(Prepared));
        assert!(!Run.can_move_to(Garbage), "a running pod is never garbage");
        assert!(!ExitedGarbage.can_move_to(Run));
        assert!(!Garbage.can_move_to(Prepare));
    }

    #[test]
    fn create_lock_move_and_find() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PodStore::open(tmp.path()).unwrap();
        let uuid = Uuid::new_v4();
        let mut locked = store.create(uuid).unwrap();
        let found = store.find(&uuid.to_string()[..8]).unwrap();
        assert_eq!(found.state, PodState::Prepare);
        // Held by us: another opener sees it locked.
        assert!(store.is_locked(&found).unwrap());
        assert_eq!(store.liveness(&found).unwrap(), Liveness::Preparing);

        locked.move_to(&store, PodState::Prepared).unwrap();
        locked.move_to(&store, PodState::Run).unwrap();
        let running = store.find(&uuid.to_string()).unwrap();
        assert_eq!(running.state, PodState::Run);
        assert_eq!(store.liveness(&running).unwrap(), Liveness::Running);
        // Still locked: reaping leaves it alone.
        assert_eq!(store.reap_if_exited(&running).unwrap().state, PodState::Run);

        drop(locked);
        assert_eq!(store.liveness(&running).unwrap(), Liveness::Exited);
        let reaped = store.reap_if_exited(&running).unwrap();
        assert_eq!(reaped.state, PodState::ExitedGarbage);
        assert!(reaped.path.join("exited").exists());
        assert!(exited_at(&reaped.path).is_some());
    }

    #[test]
    fn unlocked_prepare_is_an_aborted_prepare() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PodStore::open(tmp.path()).unwrap();
        let uuid = Uuid::new_v4();
        drop(store.create(uuid).unwrap());
        let pod = store.find(&uuid.to_string()).unwrap();
        assert_eq!(store.liveness(&pod).unwrap(), Liveness::AbortedPrepare);
    }

    #[test]
    fn find_rejects_ambiguous_and_unknown_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PodStore::open(tmp.path()).unwrap();
        let a = Uuid::parse_str("aaaaaaaa-0000-4000-8000-000000000001").unwrap();
        let b = Uuid::parse_str("aaaaaaaa-0000-4000-8000-000000000002").unwrap();
        drop(store.create(a).unwrap());
        drop(store.create(b).unwrap());
        assert!(matches!(
            store.find("aaaa"),
            Err(StoreError::Ambiguous(_, 2))
        ));
        assert!(matches!(store.find("bbbb"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.find(""), Err(StoreError::NotFound(_))));
        assert_eq!(store.find(&b.to_string()).unwrap().uuid, b);
        // Junk in a state dir is ignored.
        fs::create_dir(store.root().join("run/not-a-uuid")).unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn lock_survives_rename_and_settles_to_the_new_place() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PodStore::open(tmp.path()).unwrap();
        let uuid = Uuid::new_v4();
        let mut locked = store.create(uuid).unwrap();
        locked.move_to(&store, PodState::Prepared).unwrap();
        let seen = store.find(&uuid.to_string()).unwrap();
        assert!(store.try_lock(&seen).unwrap().is_none());
        drop(locked);
        let relocked = store.try_lock(&seen).unwrap().unwrap();
        assert_eq!(relocked.pod.state, PodState::Prepared);
    }
}
