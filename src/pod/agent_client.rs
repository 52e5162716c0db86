//! The host side of the stage2 agent protocol ([`ark_pod_spec::agent`]) for `ark enter`: the
//! handshake and exec under a deadline, then a poll loop streaming stdin to the agent and its
//! stdout/stderr frames to ours. The agent is hostile: every frame is capped and validated
//! ([`FrameDecoder`], `AgentFrame::decode`), the client holds at most one frame each way (what
//! we cannot write to our stdout stops us reading the agent; what the agent does not read stops
//! us reading our stdin), and anything off-protocol ends `ark enter` with one line.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_pod_spec::agent::{
    AgentFrame, ClientFrame, ExecRequest, FrameDecoder, Reply, Request, WindowSize,
    AGENT_PROTOCOL_VERSION, MAX_DATA_LEN,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// How long the agent may take to answer the handshake and start the process: ns/fly.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// The same in a VM, whose guest may need tens of seconds to fork and exec on a host with
/// software virtualization (kvm_pvm) under load.
pub const VM_REPLY_TIMEOUT: Duration = Duration::from_secs(180);
/// Control messages queued beyond this are dropped (resizes come again on the next SIGWINCH).
const MAX_QUEUED_CONTROL: usize = 4096;

/// How the exchange ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The process ran and ended with this shell code.
    Exited(i32),
    /// The agent refused to run it: ark enter exits with `code` after printing `message`.
    Refused { code: i32, message: String },
}

struct Conn {
    fd: OwnedFd,
    decoder: FrameDecoder,
    out: Vec<u8>,
}

fn poll_ms(deadline: Option<Instant>) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d.saturating_duration_since(Instant::now()).as_millis();
            PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX)).unwrap_or(PollTimeout::MAX)
        }
    }
}

impl Conn {
    fn new(fd: OwnedFd) -> anyhow::Result<Self> {
        set_nonblocking(fd.as_fd())?;
        Ok(Conn {
            fd,
            decoder: FrameDecoder::new(),
            out: Vec::new(),
        })
    }

    fn queue(&mut self, f: ClientFrame) {
        f.encode(&mut self.out);
    }

    fn write_some(&mut self) -> anyhow::Result<()> {
        while !self.out.is_empty() {
            match nix::unistd::write(&self.fd, &self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(e) => bail!("the agent's connection broke: {e}"),
            }
        }
        Ok(())
    }

    /// Reads what is there (never past the current frame): a complete frame, or None.
    fn read_some(&mut self) -> anyhow::Result<Option<AgentFrame>> {
        loop {
            let space = self.decoder.space().context("bad frame from the agent")?;
            match nix::unistd::read(self.fd.as_raw_fd(), space) {
                Ok(0) | Err(Errno::ECONNRESET) => {
                    bail!("the agent closed the connection before the process's exit status")
                }
                Ok(n) => self.decoder.filled(n),
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => bail!("the agent's connection broke: {e}"),
            }
            if let Some((kind, body)) = self
                .decoder
                .take_frame()
                .context("bad frame from the agent")?
            {
                return AgentFrame::decode(kind, &body)
                    .map(Some)
                    .context("bad frame from the agent");
            }
        }
    }

    /// The next message, writing what is queued meanwhile, by `deadline`. Stream frames
    /// before the process started are off-protocol.
    fn reply(&mut self, deadline: Instant, timeout: Duration) -> anyhow::Result<Reply> {
        loop {
            self.write_some()?;
            match self.read_some()? {
                Some(AgentFrame::Message(m)) => return Ok(m),
                Some(_) => bail!("the agent sent output before the process started"),
                None => {}
            }
            let mut ev = PollFlags::POLLIN;
            if !self.out.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            let mut fds = [PollFd::new(self.fd.as_fd(), ev)];
            match poll(&mut fds, poll_ms(Some(deadline))) {
                Ok(0) => bail!("the agent did not answer within {} s", timeout.as_secs()),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => bail!("poll: {e}"),
            }
        }
    }
}

fn set_nonblocking(fd: BorrowedFd) -> anyhow::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).context("F_GETFL")?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).context("F_SETFL")?;
    Ok(())
}

/// Writes all of `data` to our stdout or stderr, waiting while it is full (that is the
/// backpressure: the agent is not read meanwhile).
fn write_all(fd: BorrowedFd, mut data: &[u8]) -> anyhow::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::NONE);
            }
            Err(Errno::EINTR) => {}
            Err(e) => bail!("write the process's output: {e}"),
        }
    }
    Ok(())
}

/// The size of the terminal on our stdin (else stdout), if there is one.
pub fn window_size() -> Option<WindowSize> {
    [0, 1].into_iter().find_map(|fd| {
        // SAFETY: fds 0 and 1 stay open for the whole process.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let ws = rustix::termios::tcgetwinsize(fd).ok()?;
        Some(WindowSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    })
}

/// Runs `req` through the agent on `conn` and relays stdio until the process ends.
pub fn run(conn: OwnedFd, req: ExecRequest, timeout: Duration) -> anyhow::Result<Outcome> {
    // Signals first, so none of them kills us between here and the loop.
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGWINCH,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set.thread_block().context("block signals")?;
    let signals = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;

    let mut conn = Conn::new(conn)?;
    let deadline = Instant::now() + timeout;
    conn.queue(ClientFrame::Message(Request::Hello {
        version: AGENT_PROTOCOL_VERSION,
    }));
    match conn.reply(deadline, timeout)? {
        Reply::Hello { version } if version == AGENT_PROTOCOL_VERSION => {}
        Reply::Hello { version } => {
            bail!("the agent speaks protocol version {version}, not {AGENT_PROTOCOL_VERSION}")
        }
        Reply::Error { code, message } => return Ok(Outcome::Refused { code, message }),
        other => bail!("the agent answered hello with {}", name(&other)),
    }
    let tty = req.tty.is_some();
    let stdin = req.stdin;
    conn.queue(ClientFrame::Message(Request::Exec(req)));
    match conn.reply(deadline, timeout)? {
        Reply::Started { .. } => {}
        Reply::Error { code, message } => return Ok(Outcome::Refused { code, message }),
        other => bail!("the agent answered exec with {}", name(&other)),
    }
    conn.queue(ClientFrame::Message(Request::Wait));
    Relay {
        conn,
        signals,
        tty,
        stdin_open: stdin,
        terminations: 0,
    }
    .run()
    .map(Outcome::Exited)
}

fn name(r: &Reply) -> &'static str {
    match r {
        Reply::Hello { .. } => "hello",
        Reply::Started { .. } => "started",
        Reply::Error { .. } => "error",
        Reply::Exited { .. } => "exited",
        Reply::Done => "done",
    }
}

/// One app request (`app_add`, `app_start`, ...: see [`Request`]) on `conn`: the handshake,
/// the request, its `done` or `error`. `Ok(Err((code, message)))` is the agent's refusal.
pub fn app_request(
    conn: OwnedFd,
    req: Request,
    timeout: Duration,
) -> anyhow::Result<Result<(), (i32, String)>> {
    let mut conn = Conn::new(conn)?;
    let deadline = Instant::now() + timeout;
    conn.queue(ClientFrame::Message(Request::Hello {
        version: AGENT_PROTOCOL_VERSION,
    }));
    match conn.reply(deadline, timeout)? {
        Reply::Hello { version } if version == AGENT_PROTOCOL_VERSION => {}
        Reply::Hello { version } => {
            bail!("the agent speaks protocol version {version}, not {AGENT_PROTOCOL_VERSION}")
        }
        Reply::Error { code, message } => return Ok(Err((code, message))),
        other => bail!("the agent answered hello with {}", name(&other)),
    }
    conn.queue(ClientFrame::Message(req));
    match conn.reply(deadline, timeout)? {
        Reply::Done => Ok(Ok(())),
        Reply::Error { code, message } => Ok(Err((code, message))),
        other => bail!("the agent answered an app request with {}", name(&other)),
    }
}

struct Relay {
    conn: Conn,
    signals: SignalFd,
    tty: bool,
    stdin_open: bool,
    terminations: u32,
}

impl Relay {
    fn run(mut self) -> anyhow::Result<i32> {
        // SAFETY: fds 0, 1 and 2 stay open for the whole process.
        let (stdin, stdout, stderr) = unsafe {
            (
                BorrowedFd::borrow_raw(0),
                BorrowedFd::borrow_raw(1),
                BorrowedFd::borrow_raw(2),
            )
        };
        loop {
            self.conn.write_some()?;
            let mut conn_ev = PollFlags::POLLIN;
            if !self.conn.out.is_empty() {
                conn_ev |= PollFlags::POLLOUT;
            }
            let mut fds = vec![
                PollFd::new(self.conn.fd.as_fd(), conn_ev),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            let read_stdin = self.stdin_open && self.conn.out.is_empty();
            if read_stdin {
                fds.push(PollFd::new(stdin, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => bail!("poll: {e}"),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (conn_ready, sig_ready, stdin_ready) = (ready(0), ready(1), read_stdin && ready(2));
            drop(fds);
            if sig_ready {
                self.on_signals()?;
            }
            if stdin_ready {
                self.read_stdin(stdin)?;
            }
            if conn_ready {
                match self.conn.read_some()? {
                    Some(AgentFrame::Stdout(d)) => write_all(stdout, &d)?,
                    Some(AgentFrame::Stderr(d)) => write_all(stderr, &d)?,
                    Some(AgentFrame::Message(Reply::Exited { status })) => {
                        return Ok(status.shell_code())
                    }
                    Some(AgentFrame::Message(other)) => {
                        bail!("the agent sent {} while the process ran", name(&other))
                    }
                    None => {}
                }
            }
        }
    }

    fn read_stdin(&mut self, stdin: BorrowedFd) -> anyhow::Result<()> {
        let mut buf = vec![0u8; MAX_DATA_LEN];
        match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
            Ok(0) => {
                self.stdin_open = false;
                self.conn.queue(ClientFrame::Message(Request::CloseStdin));
            }
            Ok(n) => {
                buf.truncate(n);
                self.conn.queue(ClientFrame::Stdin(buf));
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            Err(e) => {
                self.stdin_open = false;
                self.conn.queue(ClientFrame::Message(Request::CloseStdin));
                tracing::debug!("stdin: {e}");
            }
        }
        Ok(())
    }

    fn control(&mut self, r: Request) {
        if self.conn.out.len() < MAX_QUEUED_CONTROL {
            self.conn.queue(ClientFrame::Message(r));
        }
    }

    /// SIGWINCH: the new size. SIGINT/SIGTERM/SIGHUP/SIGQUIT: passed on to the process (a
    /// terminal's ^C reaches it as a byte instead); the second termination signal ends ark
    /// enter at once, and the dropped connection kills the process.
    fn on_signals(&mut self) -> anyhow::Result<()> {
        while let Some(info) = self.signals.read_signal().context("read signalfd")? {
            let Ok(sig) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) else {
                continue;
            };
            match sig {
                Signal::SIGWINCH => {
                    if let (true, Some(ws)) = (self.tty, window_size()) {
                        self.control(Request::Resize(ws));
                    }
                }
                _ => {
                    self.terminations += 1;
                    if self.terminations > 1 {
                        bail!("interrupted by {sig} twice: the process is killed");
                    }
                    self.control(Request::Signal { signal: sig as i32 });
                }
            }
        }
        Ok(())
    }
}
