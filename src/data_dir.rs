//! ark's data directory (`--dir`): the image store's blobs and renders, the pods, the trusted
//! keys. Renders and pod roots hold whatever images ship — setuid-root binaries, files with
//! `security.capability` xattrs, device nodes — so no other host user may reach any of it: the
//! directory is 0700 and owned by the user running ark. Checked on every command, since an
//! older ark made it 0755.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context};

/// The only mode the data directory may have.
pub const MODE: u32 = 0o700;

/// Creates `dir` 0700 if missing; refuses one owned by another user; tightens a looser one to
/// 0700, saying so on one line if it held anything (an empty directory, such as one fresh from
/// `mktemp -d`, exposed nothing).
pub fn secure(dir: &Path) -> anyhow::Result<()> {
    create(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    // Checked and changed through one fd, so what is checked is what is changed.
    let file = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("data directory {} is not a directory", dir.display());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "data directory {} is owned by uid {}, not by this user (uid {me}): refusing to use it (another user could change what ark runs)",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode != MODE {
        rustix::fs::fchmod(file.as_fd(), rustix::fs::Mode::from_raw_mode(MODE))
            .with_context(|| format!("making {} mode 0700", dir.display()))?;
        if mode & 0o077 != 0 && !is_empty(dir)? {
            eprintln!(
                "ark: warning: data directory {} was mode {mode:04o}, reachable by other users; changed it to 0700",
                dir.display()
            );
        }
    }
    Ok(())
}

fn is_empty(dir: &Path) -> anyhow::Result<bool> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none())
}

/// `mkdir -p` whose last directory is made 0700 from the start (its parents keep the default).
fn create(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(MODE).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_0700_and_tightens_an_older_loose_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let new = tmp.path().join("a/b/store");
        secure(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
        secure(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        fs::set_permissions(&new, fs::Permissions::from_mode(0o2770)).unwrap();
        secure(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
    }

    #[test]
    fn refuses_a_dir_owned_by_someone_else() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: only root can make a directory owned by another user");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("store");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = format!("{:#}", secure(&theirs).unwrap_err());
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn refuses_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("file");
        fs::write(&f, b"").unwrap();
        assert!(secure(&f).is_err());
    }
}
