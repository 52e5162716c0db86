//! The host side of the stage2 agent protocol ([`ark_pod_spec::agent`]) for `ark enter`: the
//! handshake and exec under a deadline, then a poll loop streaming stdin to the agent and its
//! stdout/stderr frames to ours. The agent is hostile: every frame is capped and validated
//! ([`FrameDecoder`], `AgentFrame::decode`), the client holds at most one frame each way (what
//! we cannot write to our stdout stops us reading the agent; what the agent does not read stops
//! us reading our stdin), and anything off-protocol ends `ark enter` with one line.
//!
//! [`attach`] is the same relay on an `attach` connection (`ark run -t`, `ark attach`): no
//! `exited` (the connection's end is the pty's), and our stdin is scanned for the detach keys
//! ([`DetachKeys`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_pod_spec::agent::{
    AgentFrame, ClientFrame, ExecRequest, FrameDecoder, Reply, Request, WindowSize,
    AGENT_ATTACH_VERSION, AGENT_PROTOCOL_MIN_VERSION, AGENT_PROTOCOL_VERSION, MAX_DATA_LEN,
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
    /// An attach connection: its close (between frames) is the pty's end, not an error.
    close_ends: bool,
    closed: bool,
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
            close_ends: false,
            closed: false,
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
                Ok(0) | Err(Errno::ECONNRESET) if self.close_ends && !self.decoder.partial() => {
                    self.closed = true;
                    return Ok(None);
                }
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

/// The signals the relay takes (through a signalfd, so none of them ends ark with the terminal
/// raw): blocked first, so none kills us between here and the loop.
fn take_signals() -> anyhow::Result<SignalFd> {
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
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("signalfd")
}

/// `hello` in `version` (the lowest with what we need); an agent may answer with that or a
/// newer version we also speak. Some(refusal) if the agent refused.
fn hello(
    conn: &mut Conn,
    version: u32,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<Option<Outcome>> {
    conn.queue(ClientFrame::Message(Request::Hello { version }));
    match conn.reply(deadline, timeout)? {
        Reply::Hello { version: v } if (version..=AGENT_PROTOCOL_VERSION).contains(&v) => Ok(None),
        Reply::Hello { version: v } => {
            bail!("the agent speaks protocol version {v}, not {version}")
        }
        Reply::Error { code, message } => Ok(Some(Outcome::Refused { code, message })),
        other => bail!("the agent answered hello with {}", name(&other)),
    }
}

/// Runs `req` through the agent on `conn` and relays stdio until the process ends.
pub fn run(conn: OwnedFd, req: ExecRequest, timeout: Duration) -> anyhow::Result<Outcome> {
    let signals = take_signals()?;
    let mut conn = Conn::new(conn)?;
    let deadline = Instant::now() + timeout;
    // exec is in every version: the oldest, so an older pod's agent still answers.
    if let Some(refused) = hello(&mut conn, AGENT_PROTOCOL_MIN_VERSION, deadline, timeout)? {
        return Ok(refused);
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
    match Relay::new(conn, signals, tty, stdin, None).run()? {
        RelayEnd::Exited(code) => Ok(Outcome::Exited(code)),
        RelayEnd::Detached | RelayEnd::Closed { .. } => {
            bail!("the agent closed the connection before the process's exit status")
        }
    }
}

/// How an attach ended.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// The detach keys (or a second termination signal): the app keeps running.
    Detached,
    /// The agent closed the connection: the pty ended. `got_output`: whether any of the app's
    /// output came through it.
    Ended { got_output: bool },
    /// The agent refused (the app is not running, has no tty...).
    Refused { code: i32, message: String },
}

/// What [`attach`] does with our terminal.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Forward our stdin (`-i`); without, the app's pty gets no input from us.
    pub stdin: bool,
    /// Detach on this byte sequence in our stdin (empty: never).
    pub detach_keys: DetachKeys,
}

/// Attaches to the pty of app `app` through the agent on `conn` and relays until the pty
/// ends or we detach.
pub fn attach(
    conn: OwnedFd,
    app: Option<String>,
    timeout: Duration,
    o: &AttachOptions,
) -> anyhow::Result<AttachOutcome> {
    let signals = take_signals()?;
    let mut conn = Conn::new(conn)?;
    let deadline = Instant::now() + timeout;
    if let Some(Outcome::Refused { code, message }) =
        hello(&mut conn, AGENT_ATTACH_VERSION, deadline, timeout)?
    {
        return Ok(AttachOutcome::Refused { code, message });
    }
    conn.queue(ClientFrame::Message(Request::Attach { app }));
    match conn.reply(deadline, timeout)? {
        Reply::Attached => {}
        Reply::Error { code, message } => return Ok(AttachOutcome::Refused { code, message }),
        other => bail!("the agent answered attach with {}", name(&other)),
    }
    conn.close_ends = true;
    if let Some(ws) = window_size() {
        conn.queue(ClientFrame::Message(Request::Resize(ws)));
    }
    let scanner = (o.stdin && !o.detach_keys.0.is_empty()).then(|| o.detach_keys.clone());
    match Relay::new(conn, signals, true, o.stdin, scanner).run()? {
        RelayEnd::Detached => Ok(AttachOutcome::Detached),
        RelayEnd::Closed { got_output } => Ok(AttachOutcome::Ended { got_output }),
        RelayEnd::Exited(_) => bail!("the agent sent exited on an attach"),
    }
}

/// A detach sequence (podman's `--detach-keys`): comma-separated `ctrl-<a-z @ [ \\ ] ^ _>` or
/// single characters; `""` disables detaching.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DetachKeys(pub Vec<u8>);

/// podman's default: ctrl-p then ctrl-q.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

impl DetachKeys {
    pub fn parse(spec: &str) -> Result<Self, String> {
        if spec.is_empty() {
            return Ok(DetachKeys(Vec::new()));
        }
        let mut out = Vec::new();
        for key in spec.split(',') {
            let b = key.as_bytes();
            let byte = match b {
                [c] if c.is_ascii() && !c.is_ascii_control() => *c,
                [b'c', b't', b'r', b'l', b'-', c] => match c {
                    b'a'..=b'z' => c - b'a' + 1,
                    b'@' => 0,
                    b'[' => 27,
                    b'\\' => 28,
                    b']' => 29,
                    b'^' => 30,
                    b'_' => 31,
                    _ => return Err(format!("--detach-keys: unknown key {key:?}")),
                },
                _ => return Err(format!("--detach-keys: unknown key {key:?}")),
            };
            out.push(byte);
        }
        Ok(DetachKeys(out))
    }
}

/// Finds the detach sequence in a stream of input chunks; what matched so far is held back
/// and sent after all when the sequence breaks (as podman does).
#[derive(Debug)]
struct DetachScanner {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachScanner {
    /// The bytes of `input` to send on, and whether the sequence completed (what follows it
    /// in `input` is dropped: we are leaving).
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            // The held-back prefix was no detach after all.
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

fn name(r: &Reply) -> &'static str {
    match r {
        Reply::Hello { .. } => "hello",
        Reply::Started { .. } => "started",
        Reply::Attached => "attached",
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
    detach: Option<DetachScanner>,
    detached: bool,
    got_output: bool,
}

/// How the relay ended.
enum RelayEnd {
    Exited(i32),
    Detached,
    Closed { got_output: bool },
}

impl Relay {
    fn new(
        conn: Conn,
        signals: SignalFd,
        tty: bool,
        stdin_open: bool,
        detach: Option<DetachKeys>,
    ) -> Self {
        Relay {
            conn,
            signals,
            tty,
            stdin_open,
            terminations: 0,
            detach: detach.map(|k| DetachScanner {
                keys: k.0,
                matched: 0,
            }),
            detached: false,
            got_output: false,
        }
    }

    fn run(mut self) -> anyhow::Result<RelayEnd> {
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
            if self.detached {
                // What we queued (stdin before the keys) goes out, then the connection closes.
                let _ = self.conn.write_some();
                return Ok(RelayEnd::Detached);
            }
            if conn_ready {
                let frame = self.conn.read_some()?;
                if self.conn.closed {
                    return Ok(RelayEnd::Closed {
                        got_output: self.got_output,
                    });
                }
                match frame {
                    Some(AgentFrame::Stdout(d)) => {
                        self.got_output = true;
                        write_all(stdout, &d)?
                    }
                    Some(AgentFrame::Stderr(d)) => write_all(stderr, &d)?,
                    Some(AgentFrame::Message(Reply::Exited { status })) => {
                        return Ok(RelayEnd::Exited(status.shell_code()))
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
                if let Some(scanner) = &mut self.detach {
                    let (send, detach) = scanner.feed(&buf);
                    buf = send;
                    self.detached = detach;
                }
                if !buf.is_empty() {
                    self.conn.queue(ClientFrame::Stdin(buf));
                }
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
                    if self.terminations > 1 && self.conn.close_ends {
                        // Attached: leaving is a detach; the app keeps running.
                        self.detached = true;
                        return Ok(());
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_as_podman_does() {
        assert_eq!(DetachKeys::parse(DEFAULT_DETACH_KEYS).unwrap().0, [16, 17]);
        assert_eq!(DetachKeys::parse("").unwrap().0, Vec::<u8>::new());
        assert_eq!(
            DetachKeys::parse("ctrl-a,x,ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_")
                .unwrap()
                .0,
            [1, b'x', 0, 27, 28, 29, 30, 31]
        );
        for bad in [
            "ctrl-", "ctrl-A", "ctrl-1", "xy", ",", "ctrl-p,", "\x01", "ctrl-pq",
        ] {
            assert!(DetachKeys::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn scan(keys: &[u8], chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut s = DetachScanner {
            keys: keys.to_vec(),
            matched: 0,
        };
        let mut sent = Vec::new();
        for c in chunks {
            let (out, done) = s.feed(c);
            sent.extend(out);
            if done {
                return (sent, true);
            }
        }
        (sent, false)
    }

    #[test]
    fn detach_sequence_is_found_across_chunks_and_a_broken_one_is_sent_on() {
        assert_eq!(
            scan(&[16, 17], &[b"ab\x10", b"\x11cd"]),
            (b"ab".to_vec(), true)
        );
        assert_eq!(
            scan(&[16, 17], &[b"a\x10b", b"\x10\x10\x11"]),
            (b"a\x10b\x10".to_vec(), true)
        );
        assert_eq!(scan(&[16, 17], &[b"\x10x"]), (b"\x10x".to_vec(), false));
        assert_eq!(scan(&[3], &[b"ab\x03c"]), (b"ab".to_vec(), true));
    }
}
