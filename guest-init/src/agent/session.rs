//! One agent connection, in a process of its own: the handshake, the exec, then a poll loop
//! relaying stdin frames to the process and its output to the client with bounded buffers (one
//! frame each way: what the client does not read stops the process's output, what the process
//! does not read stops the client's stdin), until the process ended, its output is drained and
//! `exited` is sent. A dropped connection, or a frame that breaks the protocol, SIGKILLs the
//! process's group.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ark_pod_spec::agent::{
    AgentFrame, ClientFrame, ExecRequest, ExitStatus, FrameDecoder, Reply, Request,
    AGENT_ATTACH_VERSION, AGENT_PROTOCOL_MIN_VERSION, AGENT_PROTOCOL_VERSION, MAX_DATA_LEN,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::spawn::{self, Process};
use super::PodInfo;

/// How long a client may take to say hello and what to run.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one `exec` or `attach` connection whose handshake PID 1 did ([`handshake`]);
/// returns the session process's exit code.
pub fn serve(mut s: Session, version: u32, req: Request, pod: &PodInfo) -> i32 {
    let r = match req {
        Request::Exec(req) => s.exec(req, pod),
        Request::Attach { app } if version >= AGENT_ATTACH_VERSION => s.attach(pod, app.as_deref()),
        other => Err(format!("expected exec or attach, got {other:?}")),
    };
    match r {
        Ok(()) => 0,
        // The client is told what it did wrong where it can be (`error`); a client that went
        // away or broke the protocol is not worth a line on the pod's console.
        Err(_) => 1,
    }
}

/// The `hello` exchange and the first request, by `timeout`: what the connection is for, and
/// the protocol version the client speaks (this agent answers in it).
pub fn handshake(conn: OwnedFd, timeout: Duration) -> Result<(Session, u32, Request), String> {
    let mut s = Session::new(conn);
    set_nonblocking(&s.conn)?;
    let deadline = Instant::now() + timeout;
    let version = match s.read_request(deadline)? {
        Request::Hello { version }
            if (AGENT_PROTOCOL_MIN_VERSION..=AGENT_PROTOCOL_VERSION).contains(&version) =>
        {
            version
        }
        Request::Hello { version } => {
            s.refuse(
                125,
                format!("agent protocol version {version} unsupported (agent speaks {AGENT_PROTOCOL_MIN_VERSION} to {AGENT_PROTOCOL_VERSION})"),
            )?;
            return Err("unsupported version".into());
        }
        other => return Err(format!("expected hello, got {other:?}")),
    };
    s.send(AgentFrame::Message(Reply::Hello { version }));
    s.flush_until(deadline)?;
    let req = s.read_request(deadline)?;
    Ok((s, version, req))
}

/// One client connection's framing (also the tty keeper's, [`super::attach`]).
pub struct Session {
    pub(super) conn: OwnedFd,
    decoder: FrameDecoder,
    /// Encoded frames not yet written to the client (at most about one data frame).
    pub(super) out: Vec<u8>,
}

pub(super) fn set_nonblocking(fd: &OwnedFd) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| e.to_string())?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| e.to_string())?;
    Ok(())
}

fn ms_until(deadline: Instant) -> PollTimeout {
    let ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX)).unwrap_or(PollTimeout::MAX)
}

impl Session {
    pub(super) fn new(conn: OwnedFd) -> Self {
        Session {
            conn,
            decoder: FrameDecoder::new(),
            out: Vec::new(),
        }
    }

    fn exec(&mut self, req: ExecRequest, pod: &PodInfo) -> Result<(), String> {
        let (app, pid) = match pick_app(pod, req.app.as_deref()) {
            Ok(a) => a,
            Err(e) => return self.refuse(125, e),
        };
        let plan = pod
            .plans
            .iter()
            .find(|p| p.name == app)
            .expect("running apps have plans");
        let process = match spawn::spawn(&req, plan, pid, pod.pod_uuid) {
            Ok(p) => p,
            Err(e) => return self.refuse(e.exit_code.unwrap_or(125), e.message),
        };
        self.send(AgentFrame::Message(Reply::Started {
            pid: process.pid.as_raw(),
        }));
        Relay::new(process).run(self)
    }

    /// `attach`: the app's keeper takes the connection over (this session ends).
    fn attach(&mut self, pod: &PodInfo, app: Option<&str>) -> Result<(), String> {
        let (app, _) = match pick_app(pod, app) {
            Ok(a) => a,
            Err(e) => return self.refuse(125, e),
        };
        let Some((_, keeper)) = pod.ttys.iter().find(|(a, _)| *a == app) else {
            return self.refuse(
                125,
                format!("app {app:?} has no tty (it was not started with -t)"),
            );
        };
        self.send(AgentFrame::Message(Reply::Attached));
        self.flush_until(Instant::now() + HANDSHAKE_TIMEOUT)?;
        super::attach::hand_over(*keeper, &self.conn)
    }

    /// The answer to an app request (`done`, or `error` with code 125), then the end.
    pub fn answer(mut self, r: Result<(), String>) {
        let _ = match r {
            Ok(()) => {
                self.send(AgentFrame::Message(Reply::Done));
                self.flush_until(Instant::now() + HANDSHAKE_TIMEOUT)
            }
            Err(e) => self.refuse(125, e),
        };
    }

    fn refuse(&mut self, code: i32, message: String) -> Result<(), String> {
        let mut message = message;
        truncate(&mut message, ark_pod_spec::agent::MAX_ERROR_MESSAGE);
        self.send(AgentFrame::Message(Reply::Error { code, message }));
        self.flush_until(Instant::now() + HANDSHAKE_TIMEOUT)
    }

    pub(super) fn send(&mut self, f: AgentFrame) {
        f.encode(&mut self.out);
    }

    /// Writes what is pending without blocking; Err when the client is gone.
    pub(super) fn write_some(&mut self) -> Result<(), String> {
        while !self.out.is_empty() {
            match nix::unistd::write(&self.conn, &self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(format!("write to client: {e}")),
            }
        }
        Ok(())
    }

    pub(super) fn flush_until(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            self.write_some()?;
            if self.out.is_empty() {
                return Ok(());
            }
            let mut fds = [PollFd::new(self.conn.as_fd(), PollFlags::POLLOUT)];
            if poll(&mut fds, ms_until(deadline)).map_err(|e| e.to_string())? == 0 {
                return Err("client does not read".into());
            }
        }
    }

    /// Reads what is there into the decoder: Ok(Some(frame)) when one is complete, Ok(None)
    /// when more is needed, Err on EOF or a broken frame.
    pub(super) fn read_some(&mut self) -> Result<Option<ClientFrame>, String> {
        loop {
            let space = self.decoder.space().map_err(|e| e.to_string())?;
            match nix::unistd::read(self.conn.as_raw_fd(), space) {
                Ok(0) => return Err("client closed the connection".into()),
                Ok(n) => self.decoder.filled(n),
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("read from client: {e}")),
            }
            if let Some((kind, body)) = self.decoder.take_frame().map_err(|e| e.to_string())? {
                return ClientFrame::decode(kind, &body)
                    .map(Some)
                    .map_err(|e| e.to_string());
            }
        }
    }

    fn read_request(&mut self, deadline: Instant) -> Result<Request, String> {
        loop {
            match self.read_some()? {
                Some(ClientFrame::Message(m)) => return Ok(m),
                Some(ClientFrame::Stdin(_)) => return Err("stdin before exec".into()),
                None => {}
            }
            let mut fds = [PollFd::new(self.conn.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, ms_until(deadline)).map_err(|e| e.to_string())? == 0 {
                return Err("client too slow".into());
            }
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The app to run in (the named one, or the only one) and its running process.
fn pick_app(pod: &PodInfo, name: Option<&str>) -> Result<(String, i32), String> {
    let name = match name {
        Some(n) => n.to_string(),
        None if pod.plans.len() == 1 => pod.plans[0].name.clone(),
        None => return Err("the pod has several apps: name one".into()),
    };
    if !pod.plans.iter().any(|p| p.name == name) {
        return Err(format!("the pod has no app {name:?}"));
    }
    pod.running
        .iter()
        .find(|(a, _)| *a == name)
        .map(|(a, p)| (a.clone(), *p))
        .ok_or_else(|| format!("app {name:?} is not running"))
}

/// The running process's side of a session.
struct Relay {
    p: Process,
    /// A stdin frame not yet written to the process.
    stdin_pending: Vec<u8>,
    close_stdin_after: bool,
    exit: Option<ExitStatus>,
    wait_asked: bool,
}

impl Relay {
    fn new(p: Process) -> Self {
        for (fd, _) in &p.outputs {
            let _ = set_nonblocking(fd);
        }
        if let Some(fd) = &p.stdin {
            let _ = set_nonblocking(fd);
        }
        Relay {
            p,
            stdin_pending: Vec::new(),
            close_stdin_after: false,
            exit: None,
            wait_asked: false,
        }
    }

    fn kill_group(&self) {
        let _ = killpg(self.p.pid, Signal::SIGKILL);
        let _ = kill(self.p.pid, Signal::SIGKILL);
        if self.exit.is_none() {
            let _ = waitpid(self.p.pid, None);
        }
    }

    fn run(mut self, s: &mut Session) -> Result<(), String> {
        let r = self.relay(s);
        if r.is_err() {
            self.kill_group();
        }
        r
    }

    fn relay(&mut self, s: &mut Session) -> Result<(), String> {
        loop {
            s.write_some()?;
            if self.exit.is_some() && s.out.is_empty() {
                self.drain_after_exit(s)?;
            }
            if let (Some(status), true, true, true) = (
                self.exit,
                self.wait_asked,
                self.p.outputs.is_empty(),
                s.out.is_empty(),
            ) {
                s.send(AgentFrame::Message(Reply::Exited { status }));
                return s.flush_until(Instant::now() + HANDSHAKE_TIMEOUT);
            }
            self.poll_once(s)?;
        }
    }

    fn poll_once(&mut self, s: &mut Session) -> Result<(), String> {
        let mut conn_ev = PollFlags::empty();
        if self.stdin_pending.is_empty() {
            conn_ev |= PollFlags::POLLIN;
        }
        if !s.out.is_empty() {
            conn_ev |= PollFlags::POLLOUT;
        }
        let mut fds = vec![PollFd::new(s.conn.as_fd(), conn_ev)];
        let pidfd_at = fds.len();
        if self.exit.is_none() {
            fds.push(PollFd::new(self.p.pidfd.as_fd(), PollFlags::POLLIN));
        }
        let stdin_at = fds.len();
        let stdin_polled = match &self.p.stdin {
            Some(fd) if !self.stdin_pending.is_empty() => {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                true
            }
            _ => false,
        };
        let outputs_at = fds.len();
        let read_outputs = s.out.is_empty();
        if read_outputs {
            for (fd, _) in &self.p.outputs {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let conn_ready = ready(0);
        let exited = self.exit.is_none() && ready(pidfd_at);
        let stdin_ready = stdin_polled && ready(stdin_at);
        let outputs_ready: Vec<bool> = if read_outputs {
            (0..self.p.outputs.len())
                .map(|i| ready(outputs_at + i))
                .collect()
        } else {
            Vec::new()
        };
        drop(fds);
        for (i, r) in outputs_ready.iter().enumerate().rev() {
            if *r {
                self.read_output(i, s);
            }
        }
        if stdin_ready {
            self.write_stdin();
        }
        if exited {
            self.reap();
        }
        if conn_ready {
            if let Some(f) = s.read_some()? {
                self.on_frame(f)?;
            }
        }
        Ok(())
    }

    /// One read of output `i` into a frame; EOF (or EIO: a pty whose peer is closed) ends it.
    fn read_output(&mut self, i: usize, s: &mut Session) -> bool {
        let mut buf = vec![0u8; MAX_DATA_LEN];
        let (fd, is_err) = &self.p.outputs[i];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(Errno::EIO) => {
                self.p.outputs.remove(i);
                false
            }
            Ok(n) => {
                buf.truncate(n);
                s.send(if *is_err {
                    AgentFrame::Stderr(buf)
                } else {
                    AgentFrame::Stdout(buf)
                });
                true
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => false,
            Err(_) => {
                self.p.outputs.remove(i);
                false
            }
        }
    }

    /// After the exit: what the process wrote is in the pipes already; take what is there and
    /// stop at the first empty read (a background child holding a pipe is not waited for).
    fn drain_after_exit(&mut self, s: &mut Session) -> Result<(), String> {
        while s.out.is_empty() && !self.p.outputs.is_empty() {
            let before = self.p.outputs.len();
            if !self.read_output(0, s) && self.p.outputs.len() == before {
                self.p.outputs.remove(0);
            }
        }
        Ok(())
    }

    fn write_stdin(&mut self) {
        let Some(fd) = &self.p.stdin else {
            self.stdin_pending.clear();
            return;
        };
        match nix::unistd::write(fd, &self.stdin_pending) {
            Ok(n) => {
                self.stdin_pending.drain(..n);
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            // The process closed its stdin: what comes is dropped.
            Err(_) => {
                self.stdin_pending.clear();
                self.p.stdin = None;
            }
        }
        if self.stdin_pending.is_empty() && self.close_stdin_after {
            self.close_stdin();
        }
    }

    fn close_stdin(&mut self) {
        if self.p.pty.is_none() {
            self.p.stdin = None;
        }
    }

    fn reap(&mut self) {
        match waitpid(self.p.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => self.exit = Some(ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                self.exit = Some(ExitStatus::Signal(sig as i32));
            }
            _ => {}
        }
        if self.exit.is_some() {
            self.stdin_pending.clear();
            self.p.stdin = None;
        }
    }

    fn on_frame(&mut self, f: ClientFrame) -> Result<(), String> {
        match f {
            ClientFrame::Stdin(d) => {
                if self.p.stdin.is_some() && !self.close_stdin_after {
                    self.stdin_pending = d;
                }
            }
            ClientFrame::Message(Request::Signal { signal }) => {
                if let (Ok(sig), None) = (Signal::try_from(signal), self.exit) {
                    let _ = kill(self.p.pid, sig);
                }
            }
            ClientFrame::Message(Request::Resize(size)) => {
                if let Some(m) = &self.p.pty {
                    let _ = crate::pty::set_size(m.as_fd(), size);
                }
            }
            ClientFrame::Message(Request::CloseStdin) => {
                if self.p.pty.is_some() && self.p.stdin.is_some() {
                    // A terminal's EOF is a character (VEOF, ^D).
                    self.stdin_pending.push(4);
                }
                self.close_stdin_after = true;
                if self.stdin_pending.is_empty() {
                    self.close_stdin();
                }
            }
            ClientFrame::Message(Request::Wait) => self.wait_asked = true,
            ClientFrame::Message(m) => return Err(format!("unexpected {m:?} after exec")),
        }
        Ok(())
    }
}
