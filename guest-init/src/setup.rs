//! The syscall half: guest-init's own mounts, and everything a forked app child does between
//! fork and exec (mount namespace, root, identity, limits, capabilities). Runs as root.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use ark_pod_spec::{guest, Stage2Mount};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{self, Gid, Uid};

use crate::plan::{build_env, find_program, AppPlan};
use crate::supervisor::StartError;
use crate::users;

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
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = p.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
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

/// The device nodes every container gets (as runc's defaults), plus the usual symlinks.
pub fn populate_dev(dev: &Path) -> Result<()> {
    const NODES: [(&str, u64, u64); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in NODES {
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
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
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

/// `root` + `path`, with every symlink on the way resolved as if `root` were `/`: an image
/// cannot point a mount target at the host (`/data -> /../../etc`).
pub fn secure_join(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&c);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other(format!("{path}: too many symlinks")));
                }
                let target = std::fs::read_link(&full)?;
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    resolved = PathBuf::new();
                }
                pending.extend(target.split('/').rev().map(str::to_string));
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// The files that tie an app to its pod: `/etc/hostname` and the hostname in `/etc/hosts`
/// (when the pod has its own hostname), and `/etc/resolv.conf` when the stage1 provided one.
/// Best effort: a read-only image root keeps its own files (with a warning), it is not an
/// error.
fn write_etc(root: &Path, hostname: Option<&str>) {
    let write = |path: &str, bytes: &[u8]| {
        let r = secure_join(root, path).and_then(|p| {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, bytes)
        });
        if let Err(e) = r {
            eprintln!("ark-init: warning: cannot write {path} in the app's root: {e}");
        }
    };
    if let Some(h) = hostname {
        write("/etc/hostname", format!("{h}\n").as_bytes());
        let old = secure_join(root, "/etc/hosts")
            .and_then(std::fs::read_to_string)
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

/// Makes `dst` exist as a mount point of the same kind (dir or file) as `src`.
fn make_mountpoint(src: &Path, dst: &Path) -> Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dst)
    } else {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dst)
            .map(drop)
    }
    .with_context(|| format!("create mount point {}", dst.display()))
}

fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => R::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_RSS" => R::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => R::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
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

    // Cgroups first, so everything the app does from here on is accounted to it.
    for dir in &plan.cgroup_dirs {
        ark_pod_spec::cgroup::join_single_threaded(Path::new(dir))
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

    let root = PathBuf::from(&plan.root);
    if !root.is_dir() {
        bail!("app root {} is missing", plan.root);
    }
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(&root),
        &root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .context("bind app root")?;

    for b in &plan.binds {
        let src = Path::new(&b.source);
        if !src.exists() {
            bail!("volume for {} is missing at {}", b.target, b.source);
        }
        let dst = secure_join(&root, &b.target)?;
        make_mountpoint(src, &dst)?;
        mount(
            Some(src),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind volume onto {}", b.target))?;
        if b.read_only {
            remount_ro(&dst)?;
        }
    }

    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", &secure_join(&root, "/proc")?, "proc", nodev, None)?;
    let dev = secure_join(&root, "/dev")?;
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    populate_dev(&dev)?;
    mount_devpts(&dev)?;
    mount_fs("shm", &dev.join("shm"), "tmpfs", nodev, Some("mode=1777"))?;
    let sys = secure_join(&root, "/sys")?;
    if Path::new("/sys/kernel").exists() {
        // Read-only, as runc does; best effort (see mount_pseudo_fs).
        let _ = mount_fs("sysfs", &sys, "sysfs", nodev | MsFlags::MS_RDONLY, None);
    }
    write_etc(&root, ctx.hostname);

    if !plan.interactive {
        let null = std::fs::File::open(dev.join("null")).context("open /dev/null")?;
        unistd::dup2(null.as_raw_fd(), 0).context("stdin")?;
        // Its own session: a terminal's ^C goes to the stage1 (a graceful stop), not here.
        let _ = unistd::setsid();
    } else {
        foreground()?;
    }

    enter_root(&root)?;

    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let group = std::fs::read_to_string("/etc/group").ok();
    let id = users::resolve(
        &plan.user,
        &plan.group,
        &plan.supplementary_groups,
        passwd.as_deref(),
        group.as_deref(),
    )
    .map_err(|e| anyhow!(e))?;

    if !Path::new(&plan.working_dir).is_dir() {
        std::fs::create_dir_all(&plan.working_dir)
            .with_context(|| format!("working dir {}", plan.working_dir))?;
    }

    for (name, soft, hard) in &plan.rlimits {
        let r = rlimit_resource(name).ok_or_else(|| anyhow!("unknown rlimit {name}"))?;
        nix::sys::resource::setrlimit(r, *soft, *hard)
            .with_context(|| format!("setrlimit {name}"))?;
    }

    set_identity(&id, &plan.caps_keep)?;
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
fn enter_root(root: &Path) -> Result<()> {
    unistd::chdir(root).context("chdir to app root")?;
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

fn set_identity(id: &users::Identity, keep: &[&str]) -> Result<()> {
    use caps::{CapSet, Capability, CapsHashSet};
    let keep: CapsHashSet = keep
        .iter()
        .filter_map(|n| Capability::from_str(n).ok())
        .collect();
    // The bounding set can only shrink while CAP_SETPCAP is effective, i.e. still as root.
    for c in caps::all() {
        if !keep.contains(&c) {
            match caps::drop(None, CapSet::Bounding, c) {
                Ok(()) => {}
                // A capability newer than the running kernel is not there to drop.
                Err(_) if !caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) => {}
                Err(e) => bail!("drop {c} from the bounding set: {e}"),
            }
        }
    }
    // Keep the permitted set across the uid change; it is trimmed right after.
    nix::sys::prctl::set_keepcaps(true).context("keepcaps")?;
    let groups: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    unistd::setgroups(&groups).context("setgroups")?;
    let gid = Gid::from_raw(id.gid);
    unistd::setresgid(gid, gid, gid).with_context(|| format!("setgid {}", id.gid))?;
    let uid = Uid::from_raw(id.uid);
    unistd::setresuid(uid, uid, uid).with_context(|| format!("setuid {}", id.uid))?;
    let caperr = |set: &'static str| {
        move |e: caps::errors::CapsError| anyhow!("set {set} capabilities: {e}")
    };
    caps::set(None, CapSet::Effective, &keep).map_err(caperr("effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caperr("permitted"))?;
    caps::set(None, CapSet::Inheritable, &keep).map_err(caperr("inheritable"))?;
    caps::clear(None, CapSet::Ambient).map_err(caperr("ambient"))?;
    if id.uid != 0 {
        // Without ambient capabilities a non-root app would lose the kept ones at exec.
        for c in &keep {
            caps::raise(None, CapSet::Ambient, *c).map_err(caperr("ambient"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(false).context("keepcaps")?;
    nix::sys::prctl::set_no_new_privs().context("no_new_privs")?;
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
    fn secure_join_keeps_symlinks_inside_root() {
        let d = tempfile_dir();
        let root = d.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/../../../etc", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("../etc", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            secure_join(&root, "/evil/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(secure_join(&root, "/rel/x").unwrap(), root.join("etc/x"));
        assert_eq!(secure_join(&root, "/../../x").unwrap(), root.join("x"));
        assert_eq!(
            secure_join(&root, "/new/dir").unwrap(),
            root.join("new/dir")
        );
        assert!(secure_join(&root, "/loop1").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ark-init-setup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let h = hosts_file("127.0.0.1 localhost\n10.0.0.1 db\n# note\n", "pod1");
        assert_eq!(
            h,
            "127.0.0.1\tlocalhost pod1\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.1 db\n# note\n"
        );
    }

    #[test]
    fn every_rlimit_name_maps() {
        for r in ark_pod_spec::Rlimit::RESOURCES {
            assert!(rlimit_resource(r).is_some(), "{r}");
        }
    }
}
