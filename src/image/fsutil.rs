//! Filesystem helpers of the image store: flocks, directory fsync, removing read-only trees.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use anyhow::Context;

/// A held flock; released on drop.
#[derive(Debug)]
pub(crate) struct Lock(pub(crate) File);

/// The lock file at `path`, made if missing (its contents are never touched).
fn open_lock_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))
}

pub(crate) fn flock(path: &Path, exclusive: bool) -> anyhow::Result<Lock> {
    use rustix::fs::FlockOperation;
    let file = open_lock_file(path)?;
    let op = if exclusive {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::LockShared
    };
    rustix::fs::flock(&file, op).with_context(|| format!("locking {}", path.display()))?;
    Ok(Lock(file))
}

/// An exclusive flock if nobody holds the file, else None.
pub(crate) fn try_flock_exclusive(path: &Path) -> anyhow::Result<Option<Lock>> {
    use rustix::fs::FlockOperation;
    let file = open_lock_file(path)?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Lock(file))),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// `remove_dir_all` that also copes with read-only directories a render left behind.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            fn open_up(p: &Path) -> io::Result<()> {
                fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
                for entry in fs::read_dir(p)? {
                    let entry = entry?;
                    if entry.file_type()?.is_dir() {
                        open_up(&entry.path())?;
                    }
                }
                Ok(())
            }
            open_up(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}
