//! The app's mount namespace and root: its own namespace, the root bound onto itself nodev,
//! the volumes, the /etc files that tie it to the pod, its /proc, /dev and /sys with runc's
//! masked and read-only paths, and the pivot into it. Every path in the app's root is resolved
//! inside it (`inroot`) and mounted onto the resolved descriptor.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd;

use super::plan::AppPlan;
use crate::machine::pseudo_fs::{DEV_LINKS, DEV_NODES};
use crate::os::inroot::{self, Kind};

/// A mount namespace of its own, and the app's root in it up to (not including) the pivot:
/// returns a descriptor of the root.
pub fn prepare(
    plan: &AppPlan,
    hostname: Option<&str>,
    etc: &ark_pod_spec::EtcFiles,
) -> Result<OwnedFd> {
    use nix::sched::{unshare, CloneFlags};

    let mut flags = CloneFlags::CLONE_NEWNS;
    if !plan.cgroup_dirs.is_empty() {
        // Rooted at the app's own cgroup: the app sees itself at "/".
        flags |= CloneFlags::CLONE_NEWCGROUP;
    }
    unshare(flags).context("unshare mount namespace")?;
    // Nothing the app mounts propagates back to guest-init or other apps.
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    match mount(None::<&str>, "/", None::<&str>, private, None::<&str>) {
        // "/" is no mount point when guest-init was merely chrooted; its mounts are then
        // whatever the stage1 made them (private in ns and fly).
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e).context("make / private"),
    }

    let root_path = Path::new(&plan.root);
    if !root_path.is_dir() {
        bail!("app root {} is missing", plan.root);
    }
    let root_fd = bind_app_root(root_path)?;
    let root = root_fd.as_fd();
    bind_volumes(root, plan)?;
    // Before /proc and /sys exist in the root: nothing written here can reach them.
    write_etc(root, hostname, etc);
    inroot::mkdir_all(root, &plan.working_dir)
        .with_context(|| format!("working dir {}", plan.working_dir))?;
    mount_app_proc(root)?;
    mount_app_dev(root)?;
    mount_app_sys(root)?;
    Ok(root_fd)
}

/// The files that tie an app to its pod: `/etc/hostname` and the hostname in `/etc/hosts`
/// (when the pod has its own hostname), the pod's hosts entries, and `/etc/resolv.conf` when
/// the stage1 provided one.
/// Each is replaced inside the app's root (never written through what the image put there).
/// Best effort: a read-only image root keeps its own files (with a warning), it is not an
/// error.
fn write_etc(root: BorrowedFd, hostname: Option<&str>, etc: &ark_pod_spec::EtcFiles) {
    let write = |path: &str, bytes: &[u8]| {
        if let Err(e) = inroot::replace_file(root, path, bytes) {
            eprintln!("ark-init: warning: cannot write {path} in the app's root: {e}");
        }
    };
    if let Some(h) = hostname {
        write("/etc/hostname", format!("{h}\n").as_bytes());
    }
    if hostname.is_some() || etc.hosts_base.is_some() || !etc.hosts_entries.is_empty() {
        // A hosts file that is not a regular file is not read; its entries are lost.
        let old = match &etc.hosts_base {
            Some(base) => base.clone(),
            None => inroot::read_file(root, "/etc/hosts")
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        };
        let mut hosts = match hostname {
            Some(h) => hosts_file(&old, h),
            None => old,
        };
        for e in &etc.hosts_entries {
            if !hosts.is_empty() && !hosts.ends_with('\n') {
                hosts.push('\n');
            }
            hosts.push_str(&format!("{}\t{}\n", e.ip, e.host));
        }
        write("/etc/hosts", hosts.as_bytes());
    }
    if let Some(resolv) = &etc.resolv_conf {
        write("/etc/resolv.conf", resolv.as_bytes());
    }
}

/// `/etc/hosts` with localhost and the pod's hostname, keeping the image's other entries.
pub fn hosts_file(old: &str, hostname: &str) -> String {
    let mut out =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for l in old.lines() {
        let mut w = l.split_whitespace();
        let addr = w.next().unwrap_or("");
        if addr == "127.0.0.1" || addr == "::1" {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// runc's masked paths under /proc: files get /dev/null, directories an empty read-only tmpfs.
const PROC_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];

/// runc's masked paths under /sys.
const SYS_MASKED: &[&str] = &["/sys/firmware", "/sys/devices/virtual/powercap"];

/// runc's read-only paths under /proc.
const READ_ONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const PSEUDO: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// mount(2) of a new filesystem onto a resolved mount point (its descriptor).
fn mount_on(
    src: &str,
    target: BorrowedFd,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<()> {
    mount(
        Some(src),
        inroot::fd_path(target).as_str(),
        Some(fstype),
        flags,
        data,
    )
    .with_context(|| format!("mount {fstype} on {what}"))
}

/// Masks what exists of `paths` inside the app's root (see [`PROC_MASKED`]).
fn mask_paths(root: BorrowedFd, paths: &[&str]) -> Result<()> {
    for p in paths {
        let Some((fd, is_dir)) =
            inroot::existing(root, p).with_context(|| format!("look up {p} to mask"))?
        else {
            continue;
        };
        if is_dir {
            mount_on(
                "tmpfs",
                fd.as_fd(),
                "tmpfs",
                PSEUDO | MsFlags::MS_RDONLY,
                Some("mode=0555"),
                p,
            )?;
        } else {
            inroot::bind(
                Path::new("/dev/null"),
                fd.as_fd(),
                inroot::ATTR_RDONLY,
                false,
            )
            .with_context(|| format!("mask {p}"))?;
        }
    }
    Ok(())
}

/// Makes what exists of `paths` inside the app's root a read-only copy of itself.
fn read_only_paths(root: BorrowedFd, paths: &[&str]) -> Result<()> {
    let attrs =
        inroot::ATTR_RDONLY | inroot::ATTR_NOSUID | inroot::ATTR_NODEV | inroot::ATTR_NOEXEC;
    for p in paths {
        let Some((fd, _)) = inroot::existing(root, p).with_context(|| format!("look up {p}"))?
        else {
            continue;
        };
        let tree = inroot::clone_tree(fd.as_fd(), "", true).with_context(|| format!("bind {p}"))?;
        inroot::set_attrs(tree.as_fd(), attrs, true)
            .with_context(|| format!("make {p} read-only"))?;
        inroot::attach(tree.as_fd(), fd.as_fd()).with_context(|| format!("bind {p} read-only"))?;
    }
    Ok(())
}

/// The app's /proc: its own procfs with runc's masked and read-only paths.
fn mount_app_proc(root: BorrowedFd) -> Result<()> {
    let target = inroot::mount_target(root, "/proc", Kind::Dir).context("/proc in the app")?;
    mount_on("proc", target.as_fd(), "proc", PSEUDO, None, "/proc")?;
    mask_paths(root, PROC_MASKED)?;
    read_only_paths(root, READ_ONLY_PATHS)
}

/// The app's /dev: a tmpfs mounted nodev, so no node the app or its image makes there opens;
/// the standard nodes are bind mounts of guest-init's own (each its own mount, where devices
/// do open), then devpts (a new instance) and /dev/shm.
fn mount_app_dev(root: BorrowedFd) -> Result<()> {
    let target = inroot::mount_target(root, "/dev", Kind::Dir).context("/dev in the app")?;
    mount_on(
        "tmpfs",
        target.as_fd(),
        "tmpfs",
        PSEUDO,
        Some("mode=0755,size=65536k"),
        "/dev",
    )?;
    let dev = inroot::resolve(
        root,
        "/dev",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
    )
    .context("open the app's /dev")?;
    for (name, _, _) in DEV_NODES {
        let node = inroot::mount_target(root, &format!("/dev/{name}"), Kind::File)
            .with_context(|| format!("/dev/{name} in the app"))?;
        inroot::bind(&Path::new("/dev").join(name), node.as_fd(), 0, false)
            .with_context(|| format!("bind /dev/{name} into the app"))?;
    }
    for (link, to) in DEV_LINKS.iter().chain(&[("ptmx", "pts/ptmx")]) {
        rustix::fs::symlinkat(*to, &dev, *link).with_context(|| format!("symlink /dev/{link}"))?;
    }
    let pts = inroot::mount_target(root, "/dev/pts", Kind::Dir).context("/dev/pts")?;
    mount_on(
        "devpts",
        pts.as_fd(),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
        "/dev/pts",
    )?;
    let shm = inroot::mount_target(root, "/dev/shm", Kind::Dir).context("/dev/shm")?;
    mount_on(
        "shm",
        shm.as_fd(),
        "tmpfs",
        PSEUDO,
        Some("mode=1777"),
        "/dev/shm",
    )
}

/// The app's /sys, read-only, with runc's masks; best effort (see mount_pseudo_fs).
fn mount_app_sys(root: BorrowedFd) -> Result<()> {
    if !Path::new("/sys/kernel").exists() {
        return Ok(());
    }
    let target = inroot::mount_target(root, "/sys", Kind::Dir).context("/sys in the app")?;
    if mount_on(
        "sysfs",
        target.as_fd(),
        "sysfs",
        PSEUDO | MsFlags::MS_RDONLY,
        None,
        "/sys",
    )
    .is_ok()
    {
        mask_paths(root, SYS_MASKED)?;
    }
    Ok(())
}

/// The app's root as a mount of its own (pivot_root needs a mount point), `nodev` on it and
/// every mount below: no device node an image ships opens. Returns a descriptor of it.
fn bind_app_root(path: &Path) -> Result<OwnedFd> {
    let dir =
        inroot::open_root(path).with_context(|| format!("open app root {}", path.display()))?;
    let tree = inroot::clone_tree(dir.as_fd(), "", true).context("bind app root")?;
    inroot::set_attrs(tree.as_fd(), inroot::ATTR_NODEV, true).context("app root nodev")?;
    inroot::attach(tree.as_fd(), dir.as_fd()).context("mount app root")?;
    // The path now leads to the new mount (the old descriptor to what lies under it).
    inroot::open_root(path).context("open the app root mount")
}

/// The volumes, each bound (recursively, nodev, read-only when asked) onto a mount point
/// resolved inside the app's root.
fn bind_volumes(root: BorrowedFd, plan: &AppPlan) -> Result<()> {
    for b in &plan.binds {
        let src = Path::new(&b.source);
        if !src.exists() {
            bail!("volume for {} is missing at {}", b.target, b.source);
        }
        let kind = if src.is_dir() { Kind::Dir } else { Kind::File };
        let target = inroot::mount_target(root, &b.target, kind)
            .with_context(|| format!("create mount point {}", b.target))?;
        let mut attrs = inroot::ATTR_NODEV;
        if b.read_only {
            attrs |= inroot::ATTR_RDONLY;
        }
        inroot::bind(src, target.as_fd(), attrs, true)
            .with_context(|| format!("bind volume onto {}", b.target))?;
    }
    Ok(())
}

/// pivot_root into `root`; where the current root cannot be pivoted away from (initramfs),
/// move the root mount over `/` and chroot, which is as good there.
pub fn enter(root: BorrowedFd) -> Result<()> {
    unistd::fchdir(root.as_raw_fd()).context("chdir to app root")?;
    match unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root is stacked on top of the new one; detach it.
            umount2(".", MntFlags::MNT_DETACH).context("detach old root")?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .context("move app root onto /")?;
            unistd::chroot(".").context("chroot")?;
        }
        Err(e) => return Err(e).context("pivot_root"),
    }
    unistd::chdir("/").context("chdir /")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_names_the_pod() {
        let h = hosts_file("127.0.0.1 localhost\n10.0.0.1 db\n# note\n", "pod1");
        assert_eq!(
            h,
            "127.0.0.1\tlocalhost pod1\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.1 db\n# note\n"
        );
    }
}
