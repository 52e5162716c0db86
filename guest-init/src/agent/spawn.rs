//! Starting a process in a running app: the app's cgroups, namespaces and root (those of its
//! running process), its identity, capabilities, rlimits and no_new_privs through guest-init's
//! own app set-up (`app::identity`, `app::exec`), the request's overrides on top, and a session
//! of its own (so its whole process group can be killed). Failures before exec come back over
//! a close-on-exec socket, with the shell's 126/127 when the program cannot be run.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use ark_pod_spec::agent::ExecRequest;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{sendmsg, MsgFlags};
use nix::unistd::{self, fork, ForkResult, Pid};

use crate::app::plan::AppPlan;
use crate::app::{exec, identity};
use crate::os;
use crate::supervisor::StartError;

/// A started process and the session's ends of its stdio.
pub struct Process {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    /// Where stdin frames go (a pipe, or the pty master); None: stdin is /dev/null.
    pub stdin: Option<OwnedFd>,
    /// (fd, is_stderr): the stdout and stderr pipes, or the pty master (as stdout).
    pub outputs: Vec<(OwnedFd, bool)>,
    /// The pty master, for resizes.
    pub pty: Option<OwnedFd>,
}

/// The child's ends of its pipes (none with a tty).
struct ChildPipes {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

fn fail(message: impl Into<String>) -> StartError {
    StartError {
        exit_code: None,
        message: message.into(),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StartError> {
    unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")))
}

/// Starts `req` in the app `plan` describes, whose running process is `app_pid`.
pub fn spawn(
    req: &ExecRequest,
    plan: &AppPlan,
    app_pid: i32,
    pod_uuid: &str,
) -> Result<Process, StartError> {
    let mut plan = plan.clone();
    plan.argv = req.argv.clone();
    plan.env.extend(req.env.iter().cloned());
    plan.interactive = req.tty.is_some();
    if let Some(w) = &req.workdir {
        plan.working_dir = w.clone();
    }
    let (chan, child_chan) = crate::pty::start_channel().map_err(|e| fail(format!("{e:#}")))?;
    let mut ours_in = None;
    let mut outputs = Vec::new();
    let child_pipes = if req.tty.is_some() {
        None
    } else {
        let stdin = if req.stdin {
            let (r, w) = pipe()?;
            ours_in = Some(w);
            Some(r)
        } else {
            None
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        outputs.push((out_r, false));
        outputs.push((err_r, true));
        Some(ChildPipes {
            stdin,
            stdout: out_w,
            stderr: err_w,
        })
    };
    // SAFETY: the session process is single-threaded, so the child may run ordinary code.
    match unsafe { fork() }.map_err(|e| fail(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(chan);
            let err = match prepare(&mut plan, req, app_pid, pod_uuid, &child_chan, child_pipes) {
                Ok(env) => exec::exec(&plan, &env),
                Err(e) => fail(format!("{e:#}")),
            };
            let code = err.exit_code.unwrap_or(ark_pod_spec::EXIT_STAGE1_ERROR);
            let msg = format!("{code} {}", err.message);
            let _ = sendmsg::<()>(
                child_chan.as_raw_fd(),
                &[IoSlice::new(msg.as_bytes())],
                &[],
                MsgFlags::empty(),
                None,
            );
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(child_chan);
            drop(child_pipes);
            let pty = match crate::pty::receive_start(&chan, req.tty.is_some()) {
                Ok(pty) => pty,
                Err(e) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    return Err(e);
                }
            };
            let pidfd = rustix::process::Pid::from_raw(child.as_raw())
                .ok_or_else(|| fail("no pid"))
                .and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                        .map_err(|e| fail(format!("pidfd_open: {e}")))
                })?;
            if let Some(m) = &pty {
                let dup = |m: &OwnedFd| m.try_clone().map_err(|e| fail(format!("dup: {e}")));
                ours_in = Some(dup(m)?);
                outputs.push((dup(m)?, false));
            }
            Ok(Process {
                pid: child,
                pidfd,
                stdin: ours_in,
                outputs,
                pty,
            })
        }
    }
}

/// Everything between fork and exec; returns the environment to exec with.
fn prepare(
    plan: &mut AppPlan,
    req: &ExecRequest,
    app_pid: i32,
    pod_uuid: &str,
    chan: &OwnedFd,
    pipes: Option<ChildPipes>,
) -> Result<Vec<String>> {
    use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
    SigSet::all().thread_unblock().context("unblock signals")?;
    // SAFETY: restoring a default disposition installs no handler code.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.context("SIGPIPE")?;
    if let Some(p) = &pipes {
        let null;
        let stdin = match &p.stdin {
            Some(r) => r.as_raw_fd(),
            None => {
                null = File::open("/dev/null").context("open /dev/null")?;
                null.as_raw_fd()
            }
        };
        unistd::dup2(stdin, 0).context("stdin")?;
        unistd::dup2(p.stdout.as_raw_fd(), 1).context("stdout")?;
        unistd::dup2(p.stderr.as_raw_fd(), 2).context("stderr")?;
    }
    drop(pipes);
    os::fds::cloexec_inherited().context("close-on-exec above stdio")?;
    // Cgroups first: everything from here on is accounted to the app.
    for dir in &plan.cgroup_dirs {
        os::cgroup::join_single_threaded(Path::new(dir))
            .with_context(|| format!("join cgroup {dir}"))?;
    }
    // Who the process is, from the app's own account files (read inside its root, as the
    // app's start does).
    let app_root = os::inroot::open_root(Path::new(&plan.root))
        .with_context(|| format!("open app root {}", plan.root))?;
    if let Some(user) = &req.user {
        let (passwd, _) = os::identity::account_files(app_root.as_fd());
        let gid = os::identity::primary_gid(user, passwd.as_deref().unwrap_or(""));
        plan.user = user.clone();
        plan.group = gid.unwrap_or(0).to_string();
        plan.supplementary_groups.clear();
    }
    let id = identity::resolve(app_root.as_fd(), plan)?;
    drop(app_root);
    // Everything from /proc/<pid> is opened before the first setns.
    let proc_root = File::open(format!("/proc/{app_pid}/root")).context("open the app's root")?;
    let namespaces = namespaces_of(app_pid)?;
    for (name, f, flag) in &namespaces {
        setns(f, *flag).with_context(|| format!("join the app's {name} namespace"))?;
    }
    unistd::fchdir(proc_root.as_raw_fd()).context("enter the app's root")?;
    unistd::chroot(".").context("chroot into the app's root")?;
    drop(proc_root);
    match req.tty {
        Some(size) => {
            crate::pty::open_and_hand_over(size, chan)?;
        }
        // A session of its own: its process group is what a dropped connection kills.
        None => {
            unistd::setsid().context("setsid")?;
        }
    }
    identity::apply(&id, plan)?;
    unistd::chdir(Path::new(&plan.working_dir))
        .with_context(|| format!("chdir {}", plan.working_dir))?;
    Ok(exec::build_env(plan, pod_uuid, &id.home))
}

/// The namespaces of `pid` that differ from ours, mount last (it changes what paths mean).
fn namespaces_of(pid: i32) -> Result<Vec<(&'static str, File, CloneFlags)>> {
    let mut out = Vec::new();
    for (ns, flag) in [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{pid}/ns/{ns}");
        let same = match (
            std::fs::metadata(&theirs),
            std::fs::metadata(format!("/proc/self/ns/{ns}")),
        ) {
            (Ok(t), Ok(o)) => t.ino() == o.ino() && t.dev() == o.dev(),
            _ => false,
        };
        if !same {
            let f = File::open(&theirs).with_context(|| format!("open {theirs}"))?;
            out.push((ns, f, flag));
        }
    }
    Ok(out)
}
