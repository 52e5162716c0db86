//! ark-init: stage2, the static PID 1 of every pod (ns, fly, kvm). Reads `/ark/stage2.json`
//! and `/ark/pod-manifest.json`, starts each app in its own mount namespace and root, reaps
//! every child, forwards SIGTERM/SIGINT, reports each app's end over the status channel, then
//! exits (ns/fly) or powers the VM off (kvm).
//!
//! As PID 1 in a VM it must never die without reporting: errors are reported, then it powers
//! off; a panic (built with panic=abort) still syncs and resets the VM from the panic hook.

mod plan;
mod setup;
mod sink;
mod supervisor;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ark_os::cgroup::{read_oom_kills, Cgroups};
use ark_os::StatusDir;
use ark_pod_spec::{
    guest, now_unix_ms, AppCgroup, ControlCommand, ControlTransport, OnExit, PodManifest,
    Stage2Config, StatusTransport,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use plan::AppPlan;
use sink::{ConsoleSink, FileSink, StatusSink, StreamSink};
use supervisor::{Exit, StartError, Supervisor};

fn main() {
    let _ = ark_os::fds::cloexec_inherited(); // best effort: as PID 1, exiting would end the pod
    if std::process::id() == 1 {
        setup::ensure_console();
    }
    let config_path =
        std::env::var("ARK_STAGE2_CONFIG").unwrap_or_else(|_| guest::STAGE2_CONFIG.into());
    // A read-only root (kvm on an erofs image) gets the config on the kernel command line,
    // which the kernel passes to init as an environment variable.
    let from_cmdline = std::env::var(ark_pod_spec::STAGE2_CMDLINE_KEY).ok();
    let config = match from_cmdline.map_or_else(
        || {
            std::fs::read(&config_path)
                .map_err(|e| format!("{config_path}: {e}"))
                .and_then(|b| Stage2Config::from_json(&b))
        },
        |v| Stage2Config::from_cmdline_value(&v),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ark-init: {e}");
            // Without a config there is nobody to report to; as PID 1, end the pod (a VM
            // resets, a pid namespace is torn down) rather than hang or kernel-panic.
            if std::process::id() == 1 {
                power_off();
            }
            std::process::exit(1);
        }
    };
    if config.on_exit == OnExit::Reboot {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("ark-init: panic: {info}");
            power_off();
        }));
    }
    // The status channel first: whatever fails after this point is reported over it.
    let mut sink = Tracking::new(open_sink(&config));
    let ok = match run(&config, &mut sink) {
        Ok(()) => true,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("ark-init: {msg}");
            // Every app without a final status gets one saying why the pod failed.
            if let Some(m) = sink.manifest.clone() {
                let missing: Vec<String> = m
                    .apps
                    .iter()
                    .map(|a| a.name.clone())
                    .filter(|a| !sink.finished.contains(a))
                    .collect();
                for a in missing {
                    let status =
                        ark_pod_spec::AppStatus::failed(&a, format!("stage2: {msg}"), None);
                    report(&mut sink, ark_pod_spec::StatusMessage::AppExited { status });
                }
            }
            false
        }
    };
    if let Err(e) = sink.done() {
        eprintln!("ark-init: status channel: {e}");
    }
    // No host-wide sync() for ns/fly: the statuses are fsynced as written, the logs as each
    // app's output ends (`OutputPipe::sync_log`). A VM syncs its own disks in power_off.
    match config.on_exit {
        OnExit::Reboot => power_off(),
        OnExit::Exit => std::process::exit(if ok { 0 } else { 1 }),
    }
}

/// Ends the VM: with `reboot=k` the reset reaches the VMM, which stops. Never returns.
fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached without CAP_SYS_BOOT; nothing else left to do.
    std::process::exit(1)
}

/// Signals guest-init handles through its signalfd (blocked otherwise).
fn handled_signals() -> SigSet {
    ark_pod_spec::stage1::stop_signals_with(&[Signal::SIGCHLD])
}

fn run(cfg: &Stage2Config, sink: &mut Tracking) -> Result<()> {
    let manifest_path =
        std::env::var("ARK_POD_MANIFEST").unwrap_or_else(|_| guest::MANIFEST.into());
    let manifest = PodManifest::load(Path::new(&manifest_path)).map_err(|e| anyhow!("{e}"))?;
    sink.manifest = Some(manifest.clone());
    let signals = handled_signals();
    signals.thread_block().context("block signals")?;
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    if std::process::id() != 1 {
        // fly: not PID 1, but orphans of the apps must still be reaped by someone in the pod.
        nix::sys::prctl::set_child_subreaper(true).context("become a subreaper")?;
    }

    if cfg.on_exit == OnExit::Reboot {
        // Only in a VM: there the root is ours alone (ns/fly roots are host directories).
        setup::make_root_writable().context("writable root")?;
        // A read-only root without /dev/console could not give us stdio before.
        setup::ensure_console();
    }
    if cfg.mount_pseudo_fs {
        setup::mount_pseudo_fs(cfg.on_exit == OnExit::Reboot).context("pseudo filesystems")?;
    }
    if let Some(h) = &cfg.hostname {
        nix::unistd::sethostname(h).context("sethostname")?;
    }
    setup::do_mounts(&cfg.mounts).context("stage2 mounts")?;

    let mut cfg = cfg.clone();
    if cfg.create_app_cgroups {
        let wants_limits = manifest.limits != Default::default()
            || manifest.apps.iter().any(|a| a.limits != Default::default());
        cfg.app_cgroups = match create_cgroups(&manifest) {
            Ok(c) => c,
            // Without limits, cgroups only add OOM attribution: not worth failing the pod.
            Err(e) if !wants_limits => {
                eprintln!("ark-init: warning: no app cgroups: {e:#}");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
    }

    let listener = match &cfg.control {
        Some(ControlTransport::Vsock { port }) => match listen_vsock(*port) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "ark-init: control channel on vsock port {port}: {e} (stop by signal only)"
                );
                None
            }
        },
        None => None,
    };

    let plans = plan::plan(&manifest, &cfg);
    let mut sup = Supervisor::new(plans.iter().map(|p| p.name.as_str()));
    let mut oom_base: Vec<(String, String, u64)> = Vec::new();
    let ctx = setup::ChildContext {
        pod_uuid: &cfg.pod_uuid,
        hostname: cfg.hostname.as_deref(),
        debug: cfg.debug,
    };
    let grace = Duration::from_secs(cfg.stop_grace_secs);

    let mut outputs: Vec<OutputPipe> = Vec::new();
    for p in &plans {
        // A stop that arrived while earlier apps were starting: later ones never start.
        handle_signals(&sfd, &mut sup, grace, sink, &oom_base)?;
        if sup.stopping() {
            report(
                sink,
                sup.not_started(
                    &p.name,
                    "pod stopped before the app started".into(),
                    now_unix_ms(),
                ),
            );
            continue;
        }
        if let Some(f) = &p.oom_file {
            oom_base.push((
                p.name.clone(),
                f.clone(),
                read_oom_kills(Path::new(f)).unwrap_or(0),
            ));
        }
        match start_app(p, &ctx, &signals, &mut outputs) {
            Ok((pid, start_err)) => {
                report(sink, sup.started(&p.name, pid.as_raw(), now_unix_ms()));
                if let Some(e) = start_err {
                    sup.start_error(&p.name, e);
                }
            }
            Err(e) => report(
                sink,
                sup.not_started(&p.name, format!("{e:#}"), now_unix_ms()),
            ),
        }
    }

    while !sup.all_done() {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(l) = &listener {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let first_output = fds.len();
        fds.extend(
            outputs
                .iter()
                .map(|o| PollFd::new(o.file.as_fd(), PollFlags::POLLIN)),
        );
        let timeout = match sup.timeout(Instant::now()) {
            Some(d) => PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1)
                .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let control_ready = listener.is_some()
            && fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let outputs_ready: Vec<bool> = fds[first_output..]
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        relay_outputs(&mut outputs, Some(&outputs_ready));
        handle_signals(&sfd, &mut sup, grace, sink, &oom_base)?;
        if control_ready {
            if let Some(l) = &listener {
                if let Some(ControlCommand::Stop { grace_secs }) = accept_control(l) {
                    let g = grace_secs.map_or(grace, Duration::from_secs);
                    signal_all(&sup.request_stop(Instant::now(), g), Signal::SIGTERM);
                }
            }
        }
        signal_all(&sup.kill_due(Instant::now()), Signal::SIGKILL);
    }
    // The apps are gone, but what they wrote last may still sit in the pipes: pass it on before
    // the pod is reported done. (A leftover background process keeps its pipe open; whatever it
    // has not written by now is not waited for.)
    relay_outputs(&mut outputs, None);
    outputs.iter_mut().for_each(OutputPipe::sync_log);

    if std::process::id() != 1 {
        // fly: processes the apps left behind would outlive the pod; as their subreaper we
        // end them (PID 1 of a pid namespace or VM gets this from the kernel).
        kill_children();
    }
    Ok(())
}

/// The sink, remembering which apps have a final status (to report the rest on failure).
struct Tracking {
    inner: Box<dyn StatusSink>,
    manifest: Option<PodManifest>,
    finished: Vec<String>,
}

impl Tracking {
    fn new(inner: Box<dyn StatusSink>) -> Self {
        Tracking {
            inner,
            manifest: None,
            finished: Vec::new(),
        }
    }
}

impl StatusSink for Tracking {
    fn send(&mut self, msg: &ark_pod_spec::StatusMessage) -> std::io::Result<()> {
        if let ark_pod_spec::StatusMessage::AppExited { status } = msg {
            self.finished.push(status.app.clone());
        }
        self.inner.send(msg)
    }
    fn done(&mut self) -> std::io::Result<()> {
        self.inner.done()
    }
}

fn report(sink: &mut dyn StatusSink, msg: ark_pod_spec::StatusMessage) {
    if let Err(e) = sink.send(&msg) {
        eprintln!(
            "ark-init: status channel: {e}; status was: {}",
            msg.to_line().trim_end()
        );
    }
}

fn signal_all(pids: &[i32], sig: Signal) {
    for p in pids {
        let _ = kill(Pid::from_raw(*p), sig);
    }
}

/// Drains the signalfd: reaps children (apps get a final status), turns SIGTERM/SIGINT/SIGHUP
/// into a stop.
fn handle_signals(
    sfd: &SignalFd,
    sup: &mut Supervisor,
    grace: Duration,
    sink: &mut dyn StatusSink,
    oom_base: &[(String, String, u64)],
) -> Result<()> {
    let mut reap = false;
    while let Some(info) = sfd.read_signal().context("read signalfd")? {
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGCHLD) => reap = true,
            Ok(_) => signal_all(&sup.request_stop(Instant::now(), grace), Signal::SIGTERM),
            Err(_) => {}
        }
    }
    // SIGCHLDs coalesce, so always sweep every exited child.
    if reap || !sup.running_pids().is_empty() {
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waitpid"),
            };
            let oom = sup
                .is_app(pid.as_raw())
                .and_then(|app| oom_base.iter().find(|(a, _, _)| a == app))
                .is_some_and(|(_, f, base)| read_oom_kills(Path::new(f)).unwrap_or(0) > *base);
            if let Some(msg) = sup.reaped(pid.as_raw(), exit, oom, now_unix_ms()) {
                report(sink, msg);
            }
        }
    }
    Ok(())
}

/// Forks the app's process. The child reports a failure before exec over a close-on-exec
/// pipe, so the parent knows at once whether the program started (EOF) or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The read end of an app's stdout or stderr: guest-init copies it to its own stdout or stderr
/// (the terminal of `ark run`, or the VM's console) and appends it to the app's log.
struct OutputPipe {
    file: std::fs::File,
    stream: Stream,
    log: Option<std::fs::File>,
    /// Output went to the log since its last fdatasync.
    log_unsynced: bool,
}

impl OutputPipe {
    fn new(fd: OwnedFd, stream: Stream, log: Option<&std::fs::File>) -> Result<Self> {
        // Non-blocking: a relay takes what is there and returns to the PID 1 loop.
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(OutputPipe {
            file: std::fs::File::from(fd),
            stream,
            log: log.and_then(|f| f.try_clone().ok()),
            log_unsynced: false,
        })
    }

    /// Copies what the pipe holds; false once the app's end is closed (or the pipe broke).
    fn relay(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match std::io::Read::read(&mut self.file, &mut buf) {
                Ok(0) => {
                    self.sync_log();
                    return false;
                }
                Ok(n) => {
                    let data = &buf[..n];
                    // The terminal or console may be gone; the log still gets the output.
                    let _ = match self.stream {
                        Stream::Stdout => {
                            let mut o = std::io::stdout().lock();
                            o.write_all(data).and_then(|()| o.flush())
                        }
                        Stream::Stderr => std::io::stderr().write_all(data),
                    };
                    if let Some(log) = &mut self.log {
                        let _ = log.write_all(data);
                        self.log_unsynced = true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
            }
        }
    }
}

impl OutputPipe {
    /// Makes what the app logged durable (once its output ends, or at the pod's end): the
    /// log outlives a host crash like the app's status does, without a host-wide sync.
    fn sync_log(&mut self) {
        if let (Some(log), true) = (&self.log, self.log_unsynced) {
            let _ = log.sync_data();
            self.log_unsynced = false;
        }
    }
}

/// Relays the pipes marked ready (all of them when `ready` is None); drops the closed ones.
fn relay_outputs(outputs: &mut Vec<OutputPipe>, ready: Option<&[bool]>) {
    let mut i = 0;
    outputs.retain_mut(|o| {
        let go = ready.is_none_or(|r| r.get(i).copied().unwrap_or(false));
        i += 1;
        !go || o.relay()
    });
}

/// `/ark/logs/<app>.log`, appended to; None where the stage1 root is read-only.
fn open_app_log(app: &str) -> Option<std::fs::File> {
    std::fs::create_dir_all(guest::LOG_DIR).ok()?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(guest::app_log(app))
        .ok()
}

fn start_app(
    p: &AppPlan,
    ctx: &setup::ChildContext,
    signals: &SigSet,
    logs: &mut Vec<OutputPipe>,
) -> Result<(Pid, Option<StartError>)> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // An interactive app keeps the terminal itself; the others write into pipes guest-init
    // relays (and logs).
    let outputs = if p.interactive {
        None
    } else {
        let out = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        let err = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
        Some((out, err))
    };
    // SAFETY: guest-init is single-threaded, so the child may run ordinary code after fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(rd);
            if let Some(((_, out_w), (_, err_w))) = &outputs {
                // dup2 drops close-on-exec on the copies: the app inherits them as 1 and 2.
                let _ = nix::unistd::dup2(out_w.as_raw_fd(), 1);
                let _ = nix::unistd::dup2(err_w.as_raw_fd(), 2);
            }
            let _ = signals.thread_unblock();
            let err = setup::app_child(p, ctx);
            let code = err.exit_code.unwrap_or(ark_pod_spec::EXIT_STAGE1_ERROR);
            eprintln!("ark-init: app {}: {}", p.name, err.message);
            let mut f = std::fs::File::from(wr);
            let _ = write!(f, "{code} {}", err.message);
            drop(f);
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            if let Some(((out_r, _), (err_r, _))) = outputs {
                let log = open_app_log(&p.name);
                logs.push(OutputPipe::new(out_r, Stream::Stdout, log.as_ref())?);
                logs.push(OutputPipe::new(err_r, Stream::Stderr, log.as_ref())?);
            }
            let mut msg = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(rd), &mut msg);
            let err = msg.split_once(' ').map(|(code, m)| StartError {
                exit_code: code
                    .parse()
                    .ok()
                    .filter(|c| *c != ark_pod_spec::EXIT_STAGE1_ERROR),
                message: m.to_string(),
            });
            Ok((child, err))
        }
    }
}

fn open_sink(cfg: &Stage2Config) -> Box<dyn StatusSink> {
    match &cfg.status {
        StatusTransport::File { dir } => Box::new(FileSink(StatusDir::new(dir))),
        StatusTransport::Vsock { port, cid } => {
            match sink::connect_vsock(*cid, *port) {
                Ok(s) => Box::new(StreamSink::new(s)),
                Err(e) => {
                    eprintln!("ark-init: status channel vsock {cid}:{port}: {e}; statuses go to the console");
                    Box::new(ConsoleSink)
                }
            }
        }
    }
}

/// kvm: no stage1 runs inside the VM, so guest-init makes the per-app cgroups itself. No
/// device allowlist here: the guest kernel has neither CGROUP_DEVICE nor CGROUP_BPF; app
/// `/dev`s are nodev tmpfs with bind-mounted standard nodes instead, and the guest's devices
/// are the VM's own, not the host's.
fn create_cgroups(m: &PodManifest) -> Result<Vec<AppCgroup>> {
    let root = Path::new("/sys/fs/cgroup");
    std::fs::create_dir_all(root).ok();
    if !root.join("cgroup.controllers").exists() {
        nix::mount::mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mount cgroup2")?;
    }
    let pod = Cgroups::v2(root)
        .create_pod(m)
        .context("create app cgroups")?;
    Ok(m.apps
        .iter()
        .map(|a| AppCgroup {
            app: a.name.clone(),
            dirs: pod
                .app_dirs(&a.name)
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            oom_file: pod.app_oom_file(&a.name).map(|f| f.display().to_string()),
        })
        .collect())
}

fn listen_vsock(port: u32) -> Result<OwnedFd> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
    };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(4)?)?;
    Ok(fd)
}

/// One control connection: read a line, answer `ok` or the error, close.
fn accept_control(listener: &OwnedFd) -> Option<ControlCommand> {
    use nix::sys::socket::{accept4, setsockopt, sockopt, SockFlag};
    let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).ok()?;
    // SAFETY: accept4 returned a new descriptor we now own.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let _ = setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    );
    let mut conn = std::fs::File::from(fd);
    let mut line = String::new();
    BufReader::new(&mut conn).read_line(&mut line).ok()?;
    match ControlCommand::parse(line.trim()) {
        Ok(c) => {
            let _ = conn.write_all(b"ok\n");
            Some(c)
        }
        Err(e) => {
            let _ = writeln!(conn, "error: {e}");
            None
        }
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
