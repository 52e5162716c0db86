//! /proc, /sys, /dev and /run in guest-init's own root. Its /dev is also where each app's
//! standard device nodes are bound from (app::rootfs).

use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::mount_fs;

fn is_mountpoint(p: &Path) -> bool {
    crate::os::mountinfo::is_mount_point(p)
}

/// /proc, /sys, /dev, /dev/pts, /dev/shm and /run in guest-init's own root. `devtmpfs`: in a
/// VM the kernel's device nodes are wanted; in a container a tmpfs with the basic nodes is.
pub fn mount_pseudo_fs(devtmpfs: bool) -> Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", Path::new("/proc"), "proc", nodev, None)?;
    if !is_mountpoint(Path::new("/sys")) {
        // sysfs can be refused (e.g. a netns owned by another userns); apps then lack it.
        let _ = mount_fs("sysfs", Path::new("/sys"), "sysfs", nodev, None);
    }
    let dev = Path::new("/dev");
    if devtmpfs && is_mountpoint(dev) {
        // ensure_console() already mounted it.
    } else if !devtmpfs
        || mount_fs(
            "devtmpfs",
            dev,
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        )
        .is_err()
    {
        mount_fs("tmpfs", dev, "tmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
        populate_dev(dev)?;
    }
    mount_devpts(dev)?;
    mount_fs("shm", &dev.join("shm"), "tmpfs", nodev, Some("mode=1777"))?;
    mount_fs(
        "tmpfs",
        Path::new("/run"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

fn mount_devpts(dev: &Path) -> Result<()> {
    mount_fs(
        "devpts",
        &dev.join("pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let ptmx = dev.join("ptmx");
    let _ = std::fs::remove_file(&ptmx);
    std::os::unix::fs::symlink("pts/ptmx", &ptmx).context("symlink /dev/ptmx")?;
    Ok(())
}

/// The device nodes every container gets (as runc's defaults).
pub const DEV_NODES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The usual /dev symlinks.
pub const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// guest-init's own /dev in a container: the standard nodes and symlinks.
pub fn populate_dev(dev: &Path) -> Result<()> {
    for (name, major, minor) in DEV_NODES {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .with_context(|| format!("mknod {}", p.display()))?;
        // mknod honours the umask; the nodes must be usable by any uid.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    }
    for (link, target) in DEV_LINKS {
        std::os::unix::fs::symlink(target, dev.join(link))
            .with_context(|| format!("symlink /dev/{link}"))?;
    }
    std::fs::create_dir_all(dev.join("shm"))?;
    std::fs::create_dir_all(dev.join("pts"))?;
    Ok(())
}
