//! Filling a pod's directories at prepare time: each app's root from the image render cache, the
//! stage1 root's fixed parts, and (for `--stage1-kvm-root=blk`) the block image of it all.
//!
//! An app's root is an overlayfs mount (lower = the render cache, upper/work in the pod
//! directory, outside the stage1 root) or, when overlay is unavailable or `ARK_APP_ROOTFS=copy`,
//! a copy (`cp -a --reflink=auto`). Overlay is O(1) in the image size and is what ark uses by
//! default; see docs/pods.md for the measurements. Overlay mounts live in the host's mount
//! namespace until `ark gc`/`ark rm` unmounts them.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// How app roots are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsMode {
    Overlay,
    Copy,
}

impl RootfsMode {
    /// `ARK_APP_ROOTFS=overlay|copy`; default overlay.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("ARK_APP_ROOTFS").as_deref() {
            Err(_) | Ok("") | Ok("overlay") => Ok(RootfsMode::Overlay),
            Ok("copy") => Ok(RootfsMode::Copy),
            Ok(other) => bail!("ARK_APP_ROOTFS={other:?}: want overlay or copy"),
        }
    }
}

/// Where an app's overlay upper and work directories live: in the pod directory but outside
/// the stage1 root, so stage2 never sees them.
pub fn overlay_dirs(pod_dir: &Path, app: &str) -> (PathBuf, PathBuf) {
    let base = pod_dir.join("overlay").join(app);
    (base.join("upper"), base.join("work"))
}

/// Makes `target` the app's root from the render cache `lower`. Returns the mode used.
pub fn fill_app_rootfs(
    mode: RootfsMode,
    pod_dir: &Path,
    app: &str,
    lower: &Path,
    target: &Path,
) -> anyhow::Result<RootfsMode> {
    fs::create_dir_all(target).with_context(|| format!("create {}", target.display()))?;
    if mode == RootfsMode::Overlay {
        let (upper, work) = overlay_dirs(pod_dir, app);
        fs::create_dir_all(&upper)?;
        fs::create_dir_all(&work)?;
        match mount_overlay(lower, &upper, &work, target) {
            Ok(()) => return Ok(RootfsMode::Overlay),
            Err(e) => {
                // No overlay here (nested in overlayfs, old kernel, no privilege): copy.
                tracing::debug!("overlay for app {app} unavailable ({e}); copying its rootfs");
                let _ = fs::remove_dir_all(pod_dir.join("overlay").join(app));
            }
        }
    }
    copy_tree(lower, target)?;
    Ok(RootfsMode::Copy)
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> anyhow::Result<()> {
    for p in [lower, upper, work] {
        let s = p.to_string_lossy();
        if s.contains([',', ':']) {
            bail!("{s}: overlay paths cannot contain ',' or ':'");
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    // nodev: no device node from the image or the app opens through it; nosuid: the mount
    // is in the host's namespace, and apps run with no_new_privs anyway.
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(data.as_str()),
    )
    .with_context(|| format!("mount overlay on {}", target.display()))
}

/// `cp -a --reflink=auto SRC/. DST`: keeps owners, modes, xattrs, links and device nodes, and
/// shares extents where the filesystem can.
pub fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let out = Command::new("cp")
        .args([OsStr::new("-a"), OsStr::new("--reflink=auto")])
        .arg(src.join("."))
        .arg(dst)
        .output()
        .context("run cp")?;
    if !out.status.success() {
        bail!(
            "copy {} to {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("cp failed")
        );
    }
    Ok(())
}

use ark_os::mountinfo::mounts_under;

/// Unmounts everything at or under `dir` (lazily when busy), deepest first, until nothing is
/// left. Fails if something stays mounted, so callers never delete through a mount.
pub fn unmount_all_under(dir: &Path) -> anyhow::Result<()> {
    for _ in 0..8 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts {
            if let Err(e) = umount2(&m, MntFlags::UMOUNT_NOFOLLOW) {
                tracing::debug!("umount {}: {e}; detaching", m.display());
                let _ = umount2(&m, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
            }
        }
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        Ok(())
    } else {
        bail!("{} stays mounted", left[0].display())
    }
}

/// Removes a pod directory: unmounts first, and refuses to delete through a mount (a volume
/// bind that did not go away would otherwise take host data with it).
pub fn remove_pod_dir(dir: &Path) -> anyhow::Result<()> {
    unmount_all_under(dir)?;
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
    }
}

/// Packs the stage1 root into a block image for `--stage1-kvm-root=blk`: erofs (read-only,
/// compact, fast to make) with `mkfs.erofs`, or ext4 with `mkfs.ext4 -d`.
pub fn pack_block_image(fstype: &str, root: &Path, image: &Path) -> anyhow::Result<()> {
    let out = match fstype {
        "erofs" => Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(image)
            .arg(root)
            .output()
            .context("run mkfs.erofs")?,
        "ext4" => {
            let size = dir_size(root)?;
            // Room for metadata and what the apps write: 1.5x + 64 MiB.
            let bytes = size + size / 2 + (64 << 20);
            let f = fs::File::create(image)?;
            f.set_len(bytes)?;
            drop(f);
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
                .arg(root)
                .arg(image)
                .output()
                .context("run mkfs.ext4")?
        }
        other => bail!("unknown block image type {other}"),
    };
    if !out.status.success() {
        bail!(
            "pack {} into {}: {}",
            root.display(),
            image.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("mkfs failed")
        );
    }
    Ok(())
}

/// The block image filesystem this host can make: erofs if `mkfs.erofs` exists, else ext4.
pub fn block_image_fstype() -> anyhow::Result<&'static str> {
    for (fs, tool) in [("erofs", "mkfs.erofs"), ("ext4", "mkfs.ext4")] {
        if which(tool).is_some() {
            return Ok(fs);
        }
    }
    bail!("--stage1-kvm-root=blk needs mkfs.erofs (erofs-utils) or mkfs.ext4 (e2fsprogs)")
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn dir_size(root: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            total += m.blocks() * 512 + 4096;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("bin")).unwrap();
        fs::write(src.path().join("bin/busybox"), b"x").unwrap();
        fs::set_permissions(
            src.path().join("bin/busybox"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("busybox", src.path().join("bin/sh")).unwrap();
        copy_tree(src.path(), dst.path()).unwrap();
        assert_eq!(
            fs::read_link(dst.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let mode = fs::metadata(dst.path().join("bin/busybox"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn overlay_or_copy_fills_and_unmounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: overlay mounts need root");
            return;
        }
        let lower = tempfile::tempdir().unwrap();
        fs::write(lower.path().join("hello"), b"hi").unwrap();
        let pod = tempfile::tempdir().unwrap();
        let target = pod.path().join("stage1/rootfs/apps/a/rootfs");
        let mode =
            fill_app_rootfs(RootfsMode::Overlay, pod.path(), "a", lower.path(), &target).unwrap();
        assert_eq!(fs::read(target.join("hello")).unwrap(), b"hi");
        // Writes go to the pod, never to the render cache.
        fs::write(target.join("new"), b"x").unwrap();
        assert!(!lower.path().join("new").exists());
        if mode == RootfsMode::Overlay {
            assert_eq!(
                mounts_under(pod.path()).unwrap(),
                std::slice::from_ref(&target)
            );
            use nix::sys::statvfs::{statvfs, FsFlags};
            let flags = statvfs(&target).unwrap().flags();
            assert!(
                flags.contains(FsFlags::ST_NODEV | FsFlags::ST_NOSUID),
                "{flags:?}"
            );
        }
        remove_pod_dir(pod.path()).unwrap();
        assert!(mounts_under(pod.path()).unwrap().is_empty());
        assert!(!pod.path().exists());
        assert_eq!(fs::read(lower.path().join("hello")).unwrap(), b"hi");
    }
}
