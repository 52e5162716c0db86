//! The apps' stdout and stderr: pipes guest-init relays, each stream on its own.
//!
//! - ns/fly ([`Outputs::local`]): to guest-init's own stdout or stderr (what `ark run` was
//!   given) and into the app's log in `/ark/logs` (the pod's `logs/`, bind-mounted).
//! - kvm ([`Outputs::vsock`]): one vsock connection to the host per stream, opened with an
//!   [`OutputHeader`]; the host writes both the terminal and the log. The app's pipe is read
//!   only once what was read before has gone out, so a slow host reader stalls the app on its
//!   full pipe: backpressure end to end, and at most [`CHUNK`] bytes held here per stream.

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use ark_os::applog::LogWriter;
pub use ark_pod_spec::logs::Stream;
use ark_pod_spec::logs::{LogLimits, OutputHeader};
use ark_pod_spec::{guest, OutputTransport};
use nix::poll::PollFlags;

/// Most bytes read from an app's pipe at once, and held while the host takes them.
const CHUNK: usize = 64 * 1024;
/// How long, at the pod's end, guest-init waits for the host to confirm it wrote an
/// output stream out (it closes its side when done).
const HOST_DONE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the apps' output goes, and the pipes being relayed.
pub struct Outputs {
    target: Target,
    pub pipes: Vec<OutputPipe>,
    /// kvm: streams whose pipe ended, waiting for the host to confirm at the pod's end.
    closing: Vec<std::fs::File>,
}

enum Target {
    Local(LogLimits),
    Vsock { cid: u32, port: u32 },
}

impl Outputs {
    pub fn new(transport: Option<&OutputTransport>, limits: LogLimits) -> Self {
        let target = match transport {
            None => Target::Local(limits),
            Some(OutputTransport::Vsock { port, cid }) => Target::Vsock {
                cid: *cid,
                port: *port,
            },
        };
        Outputs {
            target,
            pipes: Vec::new(),
            closing: Vec::new(),
        }
    }

    /// Starts relaying an app's stdout and stderr (the read ends of its pipes).
    pub fn add(&mut self, app: &str, out: OwnedFd, err: OwnedFd) -> Result<()> {
        match &self.target {
            Target::Local(limits) => {
                let log = open_app_log(app, *limits).map(|w| Rc::new(RefCell::new(w)));
                for (fd, stream) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
                    self.pipes
                        .push(OutputPipe::new(fd, stream, Sink::Local(log.clone()))?);
                }
            }
            Target::Vsock { cid, port } => {
                for (fd, stream) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
                    let conn = connect_output(*cid, *port, app, stream)
                        .with_context(|| format!("output channel for {app} {}", stream.as_str()))?;
                    let sink = Sink::Host {
                        conn,
                        pending: Vec::with_capacity(CHUNK),
                        sent: 0,
                    };
                    self.pipes.push(OutputPipe::new(fd, stream, sink)?);
                }
            }
        }
        Ok(())
    }

    /// What each pipe waits for: its app's data, or room on the host connection.
    pub fn poll_fds(&self) -> impl Iterator<Item = (BorrowedFd<'_>, PollFlags)> {
        self.pipes.iter().map(OutputPipe::waits_for)
    }

    /// Relays the pipes marked ready (all of them when `ready` is None); ended ones are
    /// dropped (kvm: their connection waits in `closing` for the host's confirmation).
    pub fn relay(&mut self, ready: Option<&[bool]>) {
        let mut i = 0;
        let mut ended = Vec::new();
        self.pipes.retain_mut(|o| {
            let go = ready.is_none_or(|r| r.get(i).copied().unwrap_or(false));
            i += 1;
            if !go || o.relay() {
                return true;
            }
            ended.push(o.end());
            false
        });
        // Everything was sent before a stream reports its end: say so to the host now, not at
        // the pod's end, so it closes the app's log (a sandbox's app may be removed and added
        // again under its name while the pod runs). The host's close is awaited in `finish`.
        for conn in ended.iter().flatten() {
            let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        }
        self.closing.extend(ended.into_iter().flatten());
    }

    /// The pod's end: what the apps wrote last is passed on (waiting for the host now, as
    /// nothing else is left to do), then each kvm stream is closed and confirmed by the host,
    /// so every byte is out before the pod is reported done. A leftover background process
    /// keeps its pipe open; whatever it has not written by now is not waited for.
    pub fn finish(&mut self) {
        for o in &mut self.pipes {
            o.set_host_blocking();
        }
        self.relay(None);
        for mut o in std::mem::take(&mut self.pipes) {
            self.closing.extend(o.end());
        }
        for conn in std::mem::take(&mut self.closing) {
            wait_host_done(conn);
        }
    }
}

enum Sink {
    /// guest-init's own stdout/stderr and the app's log (shared by its two streams).
    Local(Option<Rc<RefCell<LogWriter>>>),
    /// The host, over vsock: `pending[sent..]` is still to go.
    Host {
        conn: std::fs::File,
        pending: Vec<u8>,
        sent: usize,
    },
    /// The host connection broke: the app's output is read and dropped, so it never blocks.
    Gone,
}

/// The read end of an app's stdout or stderr and where it goes.
pub struct OutputPipe {
    file: std::fs::File,
    stream: Stream,
    sink: Sink,
}

impl OutputPipe {
    fn new(fd: OwnedFd, stream: Stream, sink: Sink) -> Result<Self> {
        // Non-blocking: a relay takes what is there and returns to the PID 1 loop.
        set_nonblocking(fd.as_fd(), true)?;
        Ok(OutputPipe {
            file: std::fs::File::from(fd),
            stream,
            sink,
        })
    }

    fn waits_for(&self) -> (BorrowedFd<'_>, PollFlags) {
        match &self.sink {
            Sink::Host {
                conn,
                pending,
                sent,
            } if *sent < pending.len() => (conn.as_fd(), PollFlags::POLLOUT),
            _ => (self.file.as_fd(), PollFlags::POLLIN),
        }
    }

    /// Moves what can move now; false once the app's end of the pipe is closed.
    fn relay(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Sink::Host {
                conn,
                pending,
                sent,
            } = &mut self.sink
            {
                if *sent < pending.len() {
                    match conn.write(&pending[*sent..]) {
                        Ok(n) => *sent += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                        Err(e) => {
                            eprintln!(
                                "ark-init: output channel ({}): {e}; further output is dropped",
                                self.stream.as_str()
                            );
                            self.sink = Sink::Gone;
                        }
                    }
                    continue;
                }
                pending.resize(CHUNK, 0);
                *sent = 0;
                let r = self.file.read(pending);
                pending.truncate(*r.as_ref().unwrap_or(&0));
                match r {
                    Ok(0) => return false,
                    Ok(_) => continue,
                    Err(e) => return Self::still_open(&e),
                }
            }
            match self.file.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.deliver(&buf[..n]),
                Err(e) => {
                    if !Self::still_open(&e) {
                        return false;
                    }
                    if e.kind() == ErrorKind::WouldBlock {
                        return true;
                    }
                }
            }
        }
    }

    /// After a read error: whether the pipe may still deliver (EINTR, EAGAIN) or is broken.
    fn still_open(e: &std::io::Error) -> bool {
        matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock)
    }

    /// ns/fly: the log first (it records the output even while the terminal's reader is
    /// stalled, one chunk ahead at most), then the terminal, which may be gone.
    fn deliver(&mut self, data: &[u8]) {
        if let Sink::Local(log) = &self.sink {
            if let Some(log) = log {
                log.borrow_mut().record(self.stream, data);
            }
            let _ = match self.stream {
                Stream::Stdout => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(data).and_then(|()| o.flush())
                }
                Stream::Stderr => std::io::stderr().write_all(data),
            };
        }
    }

    /// At the pod's end nothing else waits: writes to the host may block.
    fn set_host_blocking(&mut self) {
        if let Sink::Host { conn, .. } = &self.sink {
            let _ = set_nonblocking(conn.as_fd(), false);
        }
    }

    /// The stream ended: the log is made durable (ns/fly) or the host connection is handed
    /// back for its close (kvm).
    fn end(&mut self) -> Option<std::fs::File> {
        match std::mem::replace(&mut self.sink, Sink::Gone) {
            Sink::Local(Some(log)) => {
                let mut log = log.borrow_mut();
                log.sync();
                if log.dropped() > 0 {
                    eprintln!(
                        "ark-init: {} bytes of output could not be logged",
                        log.dropped()
                    );
                }
                None
            }
            Sink::Host { conn, .. } => Some(conn),
            Sink::Local(None) | Sink::Gone => None,
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// A connection to the host for one of an app's streams, its header sent.
fn connect_output(cid: u32, port: u32, app: &str, stream: Stream) -> Result<std::fs::File> {
    let mut conn = super::sink::connect_vsock(cid, port)?;
    let header = OutputHeader {
        app: app.into(),
        stream,
    };
    conn.write_all(&header.to_frame())?;
    set_nonblocking(conn.as_fd(), true)?;
    Ok(conn)
}

/// Shuts down our side and waits (bounded) for the host to close its side, which it does
/// once every byte is written out.
fn wait_host_done(conn: std::fs::File) {
    use nix::sys::socket::{setsockopt, shutdown, sockopt, Shutdown};
    use nix::sys::time::{TimeVal, TimeValLike};
    let _ = set_nonblocking(conn.as_fd(), false);
    let secs = i64::try_from(HOST_DONE_TIMEOUT.as_secs()).unwrap_or(60);
    let _ = setsockopt(&conn, sockopt::ReceiveTimeout, &TimeVal::seconds(secs));
    // A stream that ended before the pod was shut down then; the host may have closed it since,
    // which is the confirmation (ENOTCONN from shutdown or read).
    if shutdown(conn.as_raw_fd(), Shutdown::Write) == Err(nix::errno::Errno::ENOTCONN) {
        return;
    }
    let mut byte = [0u8; 64];
    loop {
        match (&conn).read(&mut byte) {
            Ok(0) => return,
            Ok(_) => {} // the host sends nothing; ignore it rather than trust it
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return,
            Err(e) => {
                eprintln!("ark-init: output channel: the host did not confirm: {e}");
                return;
            }
        }
    }
}

/// ns/fly: the app's log in `/ark/logs`; None (and one line) where it cannot be opened.
fn open_app_log(app: &str, limits: LogLimits) -> Option<LogWriter> {
    match LogWriter::open(Path::new(guest::LOG_DIR), app, limits) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!(
                "ark-init: app {app}: log {}: {e}; output is not logged",
                guest::LOG_DIR
            );
            None
        }
    }
}
