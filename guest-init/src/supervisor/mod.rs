//! PID 1's running half (docs/stages.md, stage2 steps 3-5): starts the apps, then loops on a
//! signalfd, the control socket and the apps' output pipes — reaping every child, turning
//! SIGTERM/SIGINT/SIGHUP or a `stop` into SIGTERM then SIGKILL, reporting each app's end —
//! until every app has a final status.

mod apps;
pub mod control;
pub mod output;
pub mod sink;
mod state;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ark_pod_spec::{now_unix_ms, ControlCommand};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::app::{self, plan::AppPlan};
use crate::os::cgroup::read_oom_kills;
use output::Outputs;
use sink::{report, StatusSink};
pub use state::{Exit, StartError, Supervisor};

/// The signals guest-init handles, blocked and read from a signalfd instead. Taken before the
/// machine is set up, so no SIGTERM in between is lost.
pub struct Signals {
    set: SigSet,
    fd: SignalFd,
}

impl Signals {
    pub fn take() -> Result<Self> {
        let set = handled_signals();
        set.thread_block().context("block signals")?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("signalfd")?;
        Ok(Signals { set, fd })
    }
}

/// Signals guest-init handles through its signalfd (blocked otherwise).
fn handled_signals() -> SigSet {
    ark_pod_spec::stage1::stop_signals_with(&[Signal::SIGCHLD])
}

/// fly: not PID 1, but orphans of the apps must still be reaped by someone in the pod.
pub fn adopt_orphans() -> Result<()> {
    if std::process::id() != 1 {
        nix::sys::prctl::set_child_subreaper(true).context("become a subreaper")?;
    }
    Ok(())
}

/// The running pod: its apps' bookkeeping and everything the loop waits on.
pub struct Pod {
    signals: Signals,
    control: Option<OwnedFd>,
    sup: Supervisor,
    /// (app, its OOM counter file, the count before it started).
    oom_base: Vec<(String, String, u64)>,
    outputs: Outputs,
    grace: Duration,
    /// `ark enter`'s way in (see [`crate::agent`]).
    agent: Option<crate::agent::Listener>,
    /// Tty apps' keepers, for `attach`.
    ttys: Vec<crate::agent::attach::TtyApp>,
    /// A sandbox: apps come and go while it runs, and it lives until stopped.
    sandbox: Option<apps::Sandbox>,
    /// The apps' plans (a sandbox's grow and shrink).
    plans: Vec<AppPlan>,
}

impl Pod {
    pub fn new(
        plans: &[AppPlan],
        signals: Signals,
        control: Option<OwnedFd>,
        outputs: Outputs,
        grace: Duration,
    ) -> Self {
        Pod {
            signals,
            control,
            sup: Supervisor::new(plans.iter().map(|p| p.name.as_str())),
            oom_base: Vec::new(),
            outputs,
            grace,
            agent: None,
            ttys: Vec::new(),
            sandbox: None,
            plans: plans.to_vec(),
        }
    }

    /// The pod is a sandbox (`manifest.sandbox`): serve app requests, run until stopped.
    pub fn set_sandbox(
        &mut self,
        manifest: &ark_pod_spec::PodManifest,
        cfg: &ark_pod_spec::Stage2Config,
    ) {
        if manifest.sandbox {
            self.sandbox = Some(apps::Sandbox {
                manifest: manifest.clone(),
                cfg: cfg.clone(),
            });
        }
    }

    /// Whether the pod is over: every app has a final status (and a sandbox was stopped).
    fn over(&self) -> bool {
        self.sup.all_done() && (self.sandbox.is_none() || self.sup.stopping())
    }

    /// Serve the agent on this listener while the pod runs.
    pub fn set_agent(&mut self, agent: Option<crate::agent::Listener>) {
        self.agent = agent;
    }

    /// Step 3: each app in order, unless a stop arrived while earlier ones were starting.
    pub fn start_apps(
        &mut self,
        plans: &[AppPlan],
        ctx: &app::ChildContext,
        sink: &mut dyn StatusSink,
    ) -> Result<()> {
        for p in plans {
            // A stop that arrived while earlier apps were starting: later ones never start.
            self.handle_signals(sink)?;
            if self.sup.stopping() {
                report(
                    sink,
                    self.sup.not_started(
                        &p.name,
                        "pod stopped before the app started".into(),
                        now_unix_ms(),
                    ),
                );
                continue;
            }
            if let Some(f) = &p.oom_file {
                self.oom_base.push((
                    p.name.clone(),
                    f.clone(),
                    read_oom_kills(Path::new(f)).unwrap_or(0),
                ));
            }
            match app::start(p, ctx, &self.signals.set, &mut self.outputs) {
                Ok(started) => {
                    report(
                        sink,
                        self.sup
                            .started(&p.name, started.pid.as_raw(), now_unix_ms()),
                    );
                    if let Some(e) = started.error {
                        self.sup.start_error(&p.name, e);
                    }
                    self.ttys.extend(started.tty);
                }
                Err(e) => report(
                    sink,
                    self.sup
                        .not_started(&p.name, format!("{e:#}"), now_unix_ms()),
                ),
            }
        }
        Ok(())
    }

    /// Step 4: until every app has a final status.
    pub fn supervise(&mut self, sink: &mut dyn StatusSink) -> Result<()> {
        while !self.over() {
            let mut fds = vec![PollFd::new(self.signals.fd.as_fd(), PollFlags::POLLIN)];
            if let Some(l) = &self.control {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
            let agent_at = fds.len();
            if let Some(a) = &self.agent {
                fds.push(PollFd::new(a.fd.as_fd(), PollFlags::POLLIN));
            }
            let first_output = fds.len();
            fds.extend(
                self.outputs
                    .poll_fds()
                    .map(|(fd, events)| PollFd::new(fd, events)),
            );
            let timeout = match self.sup.timeout(Instant::now()) {
                Some(d) => PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1)
                    .unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let control_ready = self.control.is_some()
                && fds
                    .get(1)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| r.contains(PollFlags::POLLIN));
            let agent_ready = self.agent.is_some()
                && fds
                    .get(agent_at)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| r.contains(PollFlags::POLLIN));
            let outputs_ready: Vec<bool> = fds[first_output..]
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            self.outputs.relay(Some(&outputs_ready));
            self.handle_signals(sink)?;
            if control_ready {
                if let Some(l) = &self.control {
                    if let Some(ControlCommand::Stop { grace_secs }) = control::accept(l) {
                        let g = grace_secs.map_or(self.grace, Duration::from_secs);
                        signal_all(&self.sup.request_stop(Instant::now(), g), Signal::SIGTERM);
                        self.end_created_apps(sink);
                    }
                }
            }
            if agent_ready {
                if let Some(a) = &self.agent {
                    let info = crate::agent::PodInfo {
                        pod_uuid: &a.pod_uuid,
                        plans: &a.plans,
                        running: self.sup.running_apps(),
                        ttys: self
                            .ttys
                            .iter()
                            .map(|t| (t.app.clone(), t.attach.as_raw_fd()))
                            .collect(),
                    };
                    if let Some(r) = crate::agent::accept(&a.fd, &info) {
                        let request = r.request.clone();
                        r.answer(self.app_request(request, sink));
                    }
                }
            }
            signal_all(&self.sup.kill_due(Instant::now()), Signal::SIGKILL);
        }
        Ok(())
    }

    /// Step 5, before the pod is reported done.
    pub fn finish(mut self) {
        // A tty app's keeper copies what is left on its pty into the app's pipe, then exits.
        for t in std::mem::take(&mut self.ttys) {
            t.wait_done();
        }
        // The apps are gone, but what they wrote last may still sit in the pipes: pass it on
        // before the pod is reported done.
        self.outputs.finish();
        if std::process::id() != 1 {
            // fly: processes the apps left behind would outlive the pod; as their subreaper we
            // end them (PID 1 of a pid namespace or VM gets this from the kernel).
            kill_children();
        }
    }

    /// Drains the signalfd: reaps children (apps get a final status), turns
    /// SIGTERM/SIGINT/SIGHUP into a stop.
    fn handle_signals(&mut self, sink: &mut dyn StatusSink) -> Result<()> {
        let mut reap = false;
        while let Some(info) = self.signals.fd.read_signal().context("read signalfd")? {
            // Signals other than the set taken (none arrive here) are ignored.
            let signal = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok());
            match signal {
                Some(Signal::SIGCHLD) => reap = true,
                Some(_) => {
                    signal_all(
                        &self.sup.request_stop(Instant::now(), self.grace),
                        Signal::SIGTERM,
                    );
                    self.end_created_apps(sink);
                }
                None => {}
            }
        }
        // SIGCHLDs coalesce, so always sweep every exited child.
        if reap || !self.sup.running_pids().is_empty() {
            loop {
                let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                    Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                    Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("waitpid"),
                };
                let oom = self
                    .sup
                    .is_app(pid.as_raw())
                    .and_then(|app| self.oom_base.iter().find(|(a, _, _)| a == app))
                    .is_some_and(|(_, f, base)| read_oom_kills(Path::new(f)).unwrap_or(0) > *base);
                if let Some(msg) = self.sup.reaped(pid.as_raw(), exit, oom, now_unix_ms()) {
                    report(sink, msg);
                }
            }
        }
        Ok(())
    }
}

fn signal_all(pids: &[i32], sig: Signal) {
    for p in pids {
        let _ = kill(Pid::from_raw(*p), sig);
    }
}

/// SIGKILLs and reaps every remaining child (fly, after the apps ended). Killing one can
/// hand its own children to us (we are their subreaper), so repeat until none is left.
fn kill_children() {
    loop {
        for pid in children() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match waitpid(None, None) {
            Err(nix::errno::Errno::ECHILD) => break,
            Err(nix::errno::Errno::EINTR) | Ok(_) => {}
            Err(e) => {
                eprintln!("ark-init: waitpid: {e}");
                break;
            }
        }
    }
}

/// Pids whose parent is this process, from /proc.
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // The ppid is the 2nd field after the parenthesised command name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))?;
            (ppid == me).then_some(pid)
        })
        .collect()
}
