//! App set-up: everything a forked child does between fork and exec, in order (docs/stages.md,
//! stage2 step 3). `rootfs` makes the app's mount namespace and root, `identity` who it runs
//! as, `exec` its environment and program.

pub(crate) mod exec;
pub(crate) mod identity;
pub mod plan;
mod rootfs;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::sys::signal::SigSet;
use nix::unistd::{self, fork, ForkResult, Pid};

use crate::os;
use crate::supervisor::output::Outputs;
use crate::supervisor::StartError;
use plan::AppPlan;

/// A tty app's pty size until a client attaches and sends its own.
const DEFAULT_TTY_SIZE: ark_pod_spec::agent::WindowSize =
    ark_pod_spec::agent::WindowSize { rows: 24, cols: 80 };

/// What an app child needs besides its plan.
pub struct ChildContext<'a> {
    pub pod_uuid: &'a str,
    /// The pod's hostname (None for fly, which shares the host's).
    pub hostname: Option<&'a str>,
    /// resolv.conf and hosts entries for the app's /etc.
    pub etc: &'a ark_pod_spec::EtcFiles,
    pub debug: bool,
}

/// Forks the app's process. The child reports a failure before exec over a close-on-exec
/// socket (after handing over its pty master, for a tty app), so the parent knows at once
/// whether the program started (EOF) or why not. A tty app's master goes to an attach keeper
/// ([`crate::agent::attach`]), which copies the app's output into its stdout pipe (its log).
pub fn start(
    p: &AppPlan,
    ctx: &ChildContext,
    signals: &SigSet,
    outputs: &mut Outputs,
) -> Result<Started> {
    let (chan, child_chan) = crate::pty::start_channel()?;
    // An interactive app keeps the terminal itself; the others write into pipes guest-init
    // relays (and logs): a tty app through its keeper.
    let pipes = if p.interactive {
        None
    } else {
        let (out_r, out_w) = unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        let (err_r, err_w) = unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        // Before the fork: an output channel that cannot be opened fails the app unstarted.
        outputs.add(&p.name, out_r, err_r)?;
        Some((out_w, err_w))
    };
    // SAFETY: guest-init is single-threaded, so the child may run ordinary code after fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(chan);
            if let Some((out_w, err_w)) = &pipes {
                // dup2 drops close-on-exec on the copies: the app inherits them as 1 and 2
                // (a tty app's pty replaces them).
                let _ = unistd::dup2(out_w.as_raw_fd(), 1);
                let _ = unistd::dup2(err_w.as_raw_fd(), 2);
            }
            let _ = signals.thread_unblock();
            let err = child(p, ctx, &child_chan);
            let code = err.exit_code.unwrap_or(ark_pod_spec::EXIT_STAGE1_ERROR);
            eprintln!("ark-init: app {}: {}", p.name, err.message);
            // One write: the channel is a seqpacket socket, each write one record.
            let msg = format!("{code} {}", err.message);
            let _ = std::fs::File::from(child_chan).write_all(msg.as_bytes());
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(child_chan);
            let (out_w, err_w) = match pipes {
                Some((o, e)) => (Some(o), Some(e)),
                None => (None, None),
            };
            // Only the app (and a tty app's keeper) holds the write ends now: their exit is
            // the pipes' EOF.
            drop(err_w);
            let (master, error) = match crate::pty::receive_start(&chan, p.tty) {
                Ok(m) => (m, None),
                Err(e) => (None, Some(e)),
            };
            let tty = match (master, out_w) {
                (Some(m), Some(log)) => {
                    Some(crate::agent::attach::start_keeper(&p.name, m, log, child)?)
                }
                _ => None,
            };
            Ok(Started {
                pid: child,
                error,
                tty,
            })
        }
    }
}

/// A forked app: its pid, why it did not exec (if so), and a tty app's keeper.
pub struct Started {
    pub pid: Pid,
    pub error: Option<StartError>,
    pub tty: Option<crate::agent::attach::TtyApp>,
}

/// Everything between fork and exec. Returns only on failure; the caller reports the error
/// over the child's error pipe and exits with its code.
fn child(plan: &AppPlan, ctx: &ChildContext, chan: &OwnedFd) -> StartError {
    match prepare(plan, ctx, chan) {
        Ok(env) => exec::exec(plan, &env),
        Err(e) => StartError {
            exit_code: None,
            message: format!("{e:#}"),
        },
    }
}

/// Up to exec: returns the app's environment.
fn prepare(plan: &AppPlan, ctx: &ChildContext, chan: &OwnedFd) -> Result<Vec<String>> {
    // The app gets fds 0, 1 and 2 only (the error pipe is close-on-exec already).
    os::fds::cloexec_inherited().context("close-on-exec above stdio")?;
    // Cgroups first, so everything the app does from here on is accounted to it.
    for dir in &plan.cgroup_dirs {
        os::cgroup::join_single_threaded(Path::new(dir))
            .with_context(|| format!("join cgroup {dir}"))?;
    }
    let root = rootfs::prepare(plan, ctx.hostname, ctx.etc)?;
    let root = root.as_fd();
    if !plan.tty {
        stdio(plan.interactive)?;
    }
    let id = identity::resolve(root, plan)?;
    rootfs::enter(root)?;
    if plan.tty {
        // In the app's root: the pty is one of its own devpts (`tty` shows /dev/pts/N). The
        // keeper resizes it to the attached terminal's size.
        crate::pty::open_and_hand_over(DEFAULT_TTY_SIZE, chan)?;
    }
    identity::apply(&id, plan)?;
    unistd::chdir(Path::new(&plan.working_dir))
        .with_context(|| format!("chdir {}", plan.working_dir))?;
    if ctx.debug {
        eprintln!(
            "ark-init: app {}: uid {} gid {} exec {:?}",
            plan.name, id.uid, id.gid, plan.argv
        );
    }
    Ok(exec::build_env(plan, ctx.pod_uuid, &id.home))
}

/// stdin `/dev/null` and a session of its own, or, for an interactive app, the terminal.
fn stdio(interactive: bool) -> Result<()> {
    if !interactive {
        let null = std::fs::File::open("/dev/null").context("open /dev/null")?;
        unistd::dup2(null.as_raw_fd(), 0).context("stdin")?;
        // Its own session: a terminal's ^C goes to the stage1 (a graceful stop), not here.
        let _ = unistd::setsid();
        Ok(())
    } else {
        foreground()
    }
}

/// Interactive apps own the terminal: their process group goes to the foreground so the
/// terminal's ^C and ^Z reach them.
fn foreground() -> Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    let stdin = std::io::stdin();
    if !unistd::isatty(stdin.as_raw_fd()).unwrap_or(false) {
        return Ok(());
    }
    if rustix::termios::tcgetsid(&stdin).is_err() {
        // A terminal that is nobody's controlling terminal (a VM's console): the app takes it
        // in a session of its own, which also makes its group the foreground one.
        unistd::setsid().context("setsid")?;
        return rustix::process::ioctl_tiocsctty(&stdin).context("take the terminal");
    }
    unistd::setpgid(unistd::Pid::from_raw(0), unistd::Pid::from_raw(0)).context("setpgid")?;
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe { signal(Signal::SIGTTOU, SigHandler::SigIgn) }.context("ignore SIGTTOU")?;
    let r = unistd::tcsetpgrp(&stdin, unistd::getpgrp());
    // SAFETY: restoring the default disposition.
    unsafe { signal(Signal::SIGTTOU, SigHandler::SigDfl) }.context("restore SIGTTOU")?;
    r.context("take the terminal")
}
