//! The syscall half: guest-init's own mounts, and everything a forked app child does between
//! fork and exec (mount namespace, root, identity, limits, capabilities). Runs as root.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ark_os::identity::{self, Identity};
use ark_os::inroot::{self, Kind};
use ark_pod_spec::{guest, Stage2Mount};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd;

use crate::plan::{build_env, find_program, AppPlan};
use crate::supervisor::StartError;

fn mount_fs(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("mkdir {}", target.display()))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .with_context(|| format!("mount {fstype} on {}", target.display()))
}

fn is_mountpoint(p: &Path) -> bool {
    ark_os::mountinfo::is_mount_point(p)
}

/// PID 1 of a VM whose root has no `/dev/console` starts without stdin/stdout/stderr: mount
/// devtmpfs and attach them to the console, so guest-init's and the apps' output is seen.
pub fn ensure_console() {
    use nix::fcntl::{fcntl, FcntlArg};
    if fcntl(1, FcntlArg::F_GETFD).is_ok() {
        return;
    }
    let dev = Path::new("/dev");
    if !dev.join("console").exists() {
        let _ = mount_fs(
            "devtmpfs",
            dev,
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        );
    }
    if let Ok(c) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let fd = std::os::fd::IntoRawFd::into_raw_fd(c);
        for target in 0..3 {
            if fd != target {
                let _ = unistd::dup2(fd, target);
            }
        }
        if fd > 2 {
            let _ = unistd::close(fd);
        }
    }
}

/// A read-only pod root (kvm on an erofs image) becomes writable: an overlay with the image as
/// its lower layer and a tmpfs as the upper one, pivoted to as the new `/`. Apps then write
/// into memory as in any container, and guest-init can make its mount points. A no-op on a
/// writable root.
pub fn make_root_writable() -> Result<()> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let st = statvfs("/").context("statvfs /")?;
    if !st.flags().contains(FsFlags::ST_RDONLY) {
        return Ok(());
    }
    // /ark exists in every stage1 root; the manifest in it has been read already.
    let base = Path::new(guest::ARK_DIR);
    mount(
        Some("tmpfs"),
        base,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .context("tmpfs for the writable root")?;
    for d in ["upper", "work", "root"] {
        std::fs::create_dir(base.join(d)).with_context(|| format!("mkdir /ark/{d}"))?;
    }
    let new_root = base.join("root");
    mount(
        Some("overlay"),
        &new_root,
        Some("overlay"),
        MsFlags::empty(),
        Some("lowerdir=/,upperdir=/ark/upper,workdir=/ark/work"),
    )
    .context("overlay over the read-only root")?;
    unistd::chdir(&new_root).context("chdir to the new root")?;
    unistd::pivot_root(".", ".").context("pivot_root to the writable root")?;
    // The old root stays alive underneath the overlay; only its mount is detached.
    umount2(".", MntFlags::MNT_DETACH).context("detach the read-only root")?;
    unistd::chdir("/").context("chdir /")?;
    Ok(())
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
const DEV_NODES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The usual /dev symlinks.
const DEV_LINKS: [(&str, &str); 4] = [
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

/// The stage2 config's mounts (kvm: virtio-fs volumes), in order.
pub fn do_mounts(mounts: &[Stage2Mount]) -> Result<()> {
    for m in mounts {
        let target = Path::new(&m.target);
        if m.fstype == "bind" {
            mount_fs(
                &m.source,
                target,
                "none",
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            if m.read_only {
                remount_ro(target)?;
            }
        } else {
            let mut flags = MsFlags::empty();
            if m.read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            mount_fs(&m.source, target, &m.fstype, flags, m.data.as_deref())?;
        }
    }
    Ok(())
}

fn remount_ro(target: &Path) -> Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("remount {} read-only", target.display()))
}

/// The files that tie an app to its pod: `/etc/hostname` and the hostname in `/etc/hosts`
/// (when the pod has its own hostname), and `/etc/resolv.conf` when the stage1 provided one.
/// Each is replaced inside the app's root (never written through what the image put there).
/// Best effort: a read-only image root keeps its own files (with a warning), it is not an
/// error.
fn write_etc(root: BorrowedFd, hostname: Option<&str>) {
    let write = |path: &str, bytes: &[u8]| {
        if let Err(e) = inroot::replace_file(root, path, bytes) {
            eprintln!("ark-init: warning: cannot write {path} in the app's root: {e}");
        }
    };
    if let Some(h) = hostname {
        write("/etc/hostname", format!("{h}\n").as_bytes());
        // A hosts file that is not a regular file is not read; its entries are lost.
        let old = inroot::read_file(root, "/etc/hosts")
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        write("/etc/hosts", hosts_file(&old, h).as_bytes());
    }
    if let Ok(resolv) = std::fs::read(ark_pod_spec::guest::RESOLV_CONF) {
        write("/etc/resolv.conf", &resolv);
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

/// What an app child needs besides its plan.
pub struct ChildContext<'a> {
    pub pod_uuid: &'a str,
    /// The pod's hostname (None for fly, which shares the host's).
    pub hostname: Option<&'a str>,
    pub debug: bool,
}

/// Everything between fork and exec. Returns only on failure; the caller reports the error
/// over the child's error pipe and exits with its code.
pub fn app_child(plan: &AppPlan, ctx: &ChildContext) -> StartError {
    let ready = match prepare(plan, ctx) {
        Ok(r) => r,
        Err(e) => {
            return StartError {
                exit_code: None,
                message: format!("{e:#}"),
            }
        }
    };
    exec(plan, ready)
}

/// The resolved program and environment, ready for execve.
pub struct Ready {
    env: Vec<String>,
}

fn prepare(plan: &AppPlan, ctx: &ChildContext) -> Result<Ready> {
    use nix::sched::{unshare, CloneFlags};

    // The app gets fds 0, 1 and 2 only (the error pipe is close-on-exec already).
    ark_os::fds::cloexec_inherited().context("close-on-exec above stdio")?;
    // Cgroups first, so everything the app does from here on is accounted to it.
    for dir in &plan.cgroup_dirs {
        ark_os::cgroup::join_single_threaded(Path::new(dir))
            .with_context(|| format!("join cgroup {dir}"))?;
    }
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
    let root = bind_app_root(root_path)?;
    let root = root.as_fd();
    bind_volumes(root, plan)?;
    // Before /proc and /sys exist in the root: nothing written here can reach them.
    write_etc(root, ctx.hostname);
    inroot::mkdir_all(root, &plan.working_dir)
        .with_context(|| format!("working dir {}", plan.working_dir))?;
    mount_app_proc(root)?;
    mount_app_dev(root)?;
    mount_app_sys(root)?;

    if !plan.interactive {
        let null = std::fs::File::open("/dev/null").context("open /dev/null")?;
        unistd::dup2(null.as_raw_fd(), 0).context("stdin")?;
        // Its own session: a terminal's ^C goes to the stage1 (a graceful stop), not here.
        let _ = unistd::setsid();
    } else {
        foreground()?;
    }

    let (passwd, group) = identity::account_files(root);
    let id = identity::resolve(
        &plan.user,
        &plan.group,
        &plan.supplementary_groups,
        passwd.as_deref(),
        group.as_deref(),
    )
    .map_err(|e| anyhow!(e))?;

    enter_root(root)?;
    identity::set_rlimits(&plan.rlimits)?;
    set_identity(&id, plan)?;
    unistd::chdir(Path::new(&plan.working_dir))
        .with_context(|| format!("chdir {}", plan.working_dir))?;
    if ctx.debug {
        eprintln!(
            "ark-init: app {}: uid {} gid {} exec {:?}",
            plan.name, id.uid, id.gid, plan.argv
        );
    }
    Ok(Ready {
        env: build_env(plan, ctx.pod_uuid, &id.home),
    })
}

/// Interactive apps own the terminal: their process group goes to the foreground so the
/// terminal's ^C and ^Z reach them.
fn foreground() -> Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    let stdin = std::io::stdin();
    if !unistd::isatty(stdin.as_raw_fd()).unwrap_or(false) {
        return Ok(());
    }
    unistd::setpgid(unistd::Pid::from_raw(0), unistd::Pid::from_raw(0)).context("setpgid")?;
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe { signal(Signal::SIGTTOU, SigHandler::SigIgn) }.context("ignore SIGTTOU")?;
    let r = unistd::tcsetpgrp(&stdin, unistd::getpgrp());
    // SAFETY: restoring the default disposition.
    unsafe { signal(Signal::SIGTTOU, SigHandler::SigDfl) }.context("restore SIGTTOU")?;
    r.context("take the terminal")
}

/// pivot_root into `root`; where the current root cannot be pivoted away from (initramfs),
/// move the root mount over `/` and chroot, which is as good there.
fn enter_root(root: BorrowedFd) -> Result<()> {
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

/// The app's identity and capabilities (shared with `ark enter`), then a death signal.
fn set_identity(id: &Identity, plan: &AppPlan) -> Result<()> {
    let caps = identity::capability_sets(id.uid, &plan.caps_keep, plan.caps_explicit);
    identity::switch_to(id, &caps)?;
    // After the uid change (which clears it): if guest-init dies, so does the app. Matters for
    // fly, where no pid namespace takes the apps down with their init.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).context("pdeathsig")?;
    Ok(())
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, StartError> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| StartError {
            exit_code: None,
            message: "argument or environment contains NUL".into(),
        })
}

/// execve the app's program, looked up in the app's PATH. Returns only on failure, with the
/// shell's codes: 127 not found, 126 found but not executable.
fn exec(plan: &AppPlan, ready: Ready) -> StartError {
    let argv0 = &plan.argv[0];
    let is_file = |p: &str| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false);
    let Some(prog) = find_program(argv0, &ready.env, is_file) else {
        return StartError {
            exit_code: Some(127),
            message: format!("{argv0:?}: executable file not found in $PATH"),
        };
    };
    let (argv, env) = match (cstrings(&plan.argv), cstrings(&ready.env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let Ok(path) = CString::new(prog.as_bytes()) else {
        return StartError {
            exit_code: None,
            message: "program path contains NUL".into(),
        };
    };
    let e = unistd::execve(&path, &argv, &env).unwrap_err();
    use nix::errno::Errno;
    let code = match e {
        Errno::ENOENT | Errno::ENOTDIR => 127,
        _ => 126,
    };
    StartError {
        exit_code: Some(code),
        message: format!("exec {prog:?}: {}", e.desc()),
    }
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
