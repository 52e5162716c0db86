//! Starting guest-init inside the pod's boundary. Runs in the forked child between fork and
//! exec; errors travel back over a close-on-exec pipe so the stage1 can say what went wrong.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ark_os::cgroup::PodCgroups;
use ark_pod_spec::{guest, NetMode};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::unistd::{fork, ForkResult, Pid};

use crate::{Isolation, Pod};

/// Forks guest-init, with the caller's signal mask (see the end of [`child`]). For ns the child is PID 1 of a new pid namespace (this process unshares
/// CLONE_NEWPID first, which affects only its children).
/// `netns`: the pod's network namespace to join (CNI pods); otherwise `none` gets a fresh one
/// and `host` keeps the host's.
pub fn spawn_stage2(
    iso: Isolation,
    pod: &Pod,
    cgroups: &PodCgroups,
    netns: Option<&OwnedFd>,
) -> Result<Pid> {
    // The stage1's own pid namespace, to return to once guest-init is forked: a fork into a
    // pid namespace whose init has died fails (ENOMEM), and the network teardown after the pod
    // ends runs CNI plugins.
    let own_pidns = std::fs::File::open("/proc/self/ns/pid").context("open own pid namespace")?;
    if iso == Isolation::Ns {
        unshare(CloneFlags::CLONE_NEWPID).context("unshare pid namespace")?;
    }
    let parent = nix::unistd::getpid();
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: the stage1 is single-threaded, so the child may run ordinary code after fork.
    match unsafe { fork() }.context("fork stage2")? {
        ForkResult::Child => {
            drop(rd);
            let err = child(iso, pod, cgroups, parent, netns).unwrap_err();
            let mut f = std::fs::File::from(wr);
            let _ = write!(f, "{err:#}");
            drop(f);
            // SAFETY: leave without running destructors shared with the parent.
            unsafe { libc::_exit(ark_pod_spec::EXIT_STAGE1_ERROR) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            if iso == Isolation::Ns {
                nix::sched::setns(&own_pidns, CloneFlags::CLONE_NEWPID)
                    .context("return to the stage1's pid namespace")?;
            }
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if !msg.is_empty() {
                let _ = nix::sys::wait::waitpid(child, None);
                bail!("start stage2: {msg}");
            }
            Ok(child)
        }
    }
}

fn bind(src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dst)
    } else {
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dst)
            .map(drop)
    }
    .with_context(|| format!("create {}", dst.display()))?;
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind {} on {}", src.display(), dst.display()))?;
    if read_only {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("make {} read-only", dst.display()))?;
    }
    Ok(())
}

/// Returns only on error.
fn child(
    iso: Isolation,
    pod: &Pod,
    cgroups: &PodCgroups,
    parent: Pid,
    netns: Option<&OwnedFd>,
) -> Result<()> {
    // A SIGKILLed stage1 takes the pod down (for ns: PID 1 dies, so does the namespace).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("pdeathsig")?;
    if nix::unistd::getppid() != parent && iso == Isolation::Fly {
        bail!("stage1 died while starting stage2");
    }
    for dir in cgroups.stage2_dirs() {
        ark_os::cgroup::join_single_threaded(&dir)
            .with_context(|| format!("join cgroup {}", dir.display()))?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS;
    if iso == Isolation::Ns {
        flags |= CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
        if pod.manifest.net == NetMode::None {
            flags |= CloneFlags::CLONE_NEWNET;
        }
    }
    unshare(flags).context("unshare namespaces")?;
    if flags.contains(CloneFlags::CLONE_NEWNET) {
        ark_net::loopback_up().context("bring up lo")?;
    }
    if let Some(ns) = netns {
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).context("join the pod's netns")?;
    }
    // Nothing mounted for the pod propagates to the host; it all goes with the namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private")?;

    let layout = &pod.layout;
    let root = layout.stage1_rootfs();
    bind(&root, &root, false)?;
    bind(
        &layout.status_dir(),
        &layout.in_root(guest::STATUS_DIR),
        false,
    )?;
    // guest-init records the apps' output here; the apps' own roots never see it.
    bind(&layout.logs_dir(), &layout.in_root(guest::LOG_DIR), false)?;
    for (h, dir) in &cgroups.pod_dirs {
        bind(
            dir,
            &layout.in_root(&format!("{}/{}", guest::CGROUP_DIR, h.name())),
            false,
        )?;
    }
    for v in &pod.manifest.volumes {
        let src = Path::new(&v.source);
        if !src.exists() {
            bail!("volume {}: source {} does not exist", v.name, v.source);
        }
        bind(src, &layout.volume_dir(&v.name), v.read_only)?;
    }

    nix::unistd::chdir(&root).context("chdir stage1 root")?;
    match iso {
        Isolation::Ns => {
            nix::unistd::pivot_root(".", ".").context("pivot_root")?;
            umount2(".", MntFlags::MNT_DETACH).context("detach host root")?;
        }
        Isolation::Fly => nix::unistd::chroot(".").context("chroot")?,
    }
    nix::unistd::chdir("/").context("chdir /")?;

    // The blocked signal mask survives exec on purpose: a stop that arrives before
    // guest-init has its signalfd stays pending instead of being dropped (PID 1 ignores
    // default-action signals), and guest-init blocks the very same set.
    let init = CString::new(guest::INIT).expect("no NUL");
    let env = [CString::new("PATH=/usr/sbin:/usr/bin:/sbin:/bin").expect("no NUL")];
    let e = nix::unistd::execve(&init, &[&init], &env).unwrap_err();
    bail!("exec {}: {e}", guest::INIT)
}
