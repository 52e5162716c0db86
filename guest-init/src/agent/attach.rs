//! A tty app's keeper (`ark run -t`, `ark attach`): a process of its own, forked by guest-init
//! when the app starts, that holds the app's pty master for the app's whole life. It copies
//! what the app writes into the app's stdout pipe (so the log records it, as for any app) and
//! to the attached client, if any; it writes the client's stdin frames to the pty, applies its
//! resizes and passes its signals to the app. Agent sessions hand it their connection after
//! `attach` ([`hand_over`]); one client at a time, a new one takes over. A client that goes
//! away (a detach) changes nothing for the app. The keeper ends when the pty does (every
//! holder of its peer is gone), closing the client's connection.
//!
//! Output for a slow client is capped ([`MAX_CLIENT_PENDING`]) and dropped beyond (the log
//! still gets it): no client can stall the app. Until the first client attached, up to
//! [`MAX_BACKLOG`] bytes are kept for it, so `ark run -t sh` shows the first prompt.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ark_pod_spec::agent::{AgentFrame, ClientFrame, Request, MAX_DATA_LEN};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::{fork, ForkResult, Pid};

use super::session::{set_nonblocking, Session};

/// Most output bytes queued for the attached client; beyond, its copy is dropped.
const MAX_CLIENT_PENDING: usize = 1 << 20;
/// Most output bytes kept for the first client, from before it attached.
const MAX_BACKLOG: usize = 64 * 1024;
/// How long the keeper may take to finish at the pod's end, and to flush its last output to
/// the client.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The message a session sends with the client's connection attached.
const ATTACH_MESSAGE: &[u8] = b"attach";

/// A running tty app's keeper, as PID 1 holds it.
pub struct TtyApp {
    pub app: String,
    /// Where sessions send attached connections (inherited by each session process).
    pub attach: OwnedFd,
    keeper: OwnedFd,
}

impl TtyApp {
    /// The pod's end: the keeper copies what is left on the pty, then exits (bounded wait;
    /// after it, SIGKILL).
    pub fn wait_done(self) {
        let mut fds = [PollFd::new(self.keeper.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(FINISH_TIMEOUT.as_millis()).unwrap_or(u16::MAX);
        if !matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0) {
            let _ = rustix::process::pidfd_send_signal(&self.keeper, rustix::process::Signal::KILL);
        }
    }
}

/// Forks the keeper of app `app` (pid `app_pid`) with its pty `master` and the write end of
/// its stdout pipe `log`.
pub fn start_keeper(app: &str, master: OwnedFd, log: OwnedFd, app_pid: Pid) -> Result<TtyApp> {
    let (attach, rx) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")?;
    // SAFETY: guest-init is single-threaded, so the child may run ordinary code after fork.
    match unsafe { fork() }.context("fork the tty keeper")? {
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            drop(attach);
            close_all_but(&[master.as_raw_fd(), log.as_raw_fd(), rx.as_raw_fd(), 0, 1, 2]);
            let code = match Keeper::new(master, log, rx, app_pid) {
                Ok(mut k) => {
                    k.run();
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: leave without running guest-init's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let keeper = rustix::process::Pid::from_raw(child.as_raw())
                .context("keeper pid")
                .and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                        .context("pidfd_open")
                })?;
            Ok(TtyApp {
                app: app.to_string(),
                attach,
                keeper,
            })
        }
    }
}

/// The keeper holds nothing of PID 1's but what it serves (listeners, other apps' pipes).
fn close_all_but(keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if !keep.contains(&fd) {
            // SAFETY: closing descriptors this fresh process inherited and will not use.
            unsafe { libc::close(fd) };
        }
    }
}

/// In a session process: passes the client's connection `conn` to the keeper at `attach`.
pub fn hand_over(attach: RawFd, conn: &OwnedFd) -> Result<(), String> {
    sendmsg::<()>(
        attach,
        &[IoSlice::new(ATTACH_MESSAGE)],
        &[ControlMessage::ScmRights(&[conn.as_raw_fd()])],
        MsgFlags::empty(),
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("hand the connection to the tty keeper: {e}"))
}

struct Keeper {
    master: OwnedFd,
    log: std::fs::File,
    rx: OwnedFd,
    app_pid: Pid,
    client: Option<Session>,
    /// A stdin frame not yet written to the pty.
    stdin_pending: Vec<u8>,
    /// Output from before the first client attached (None once one did).
    backlog: Option<Vec<u8>>,
}

impl Keeper {
    fn new(master: OwnedFd, log: OwnedFd, rx: OwnedFd, app_pid: Pid) -> Result<Self, String> {
        set_nonblocking(&master)?;
        Ok(Keeper {
            master,
            log: std::fs::File::from(log),
            rx,
            app_pid,
            client: None,
            stdin_pending: Vec::new(),
            backlog: Some(Vec::new()),
        })
    }

    fn drop_client(&mut self) {
        self.client = None;
        self.stdin_pending.clear();
    }

    fn run(&mut self) {
        loop {
            if let Some(c) = &mut self.client {
                if c.write_some().is_err() {
                    self.drop_client();
                }
            }
            let mut master_ev = PollFlags::POLLIN;
            if !self.stdin_pending.is_empty() {
                master_ev |= PollFlags::POLLOUT;
            }
            let mut fds = vec![
                PollFd::new(self.master.as_fd(), master_ev),
                PollFd::new(self.rx.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(c) = &self.client {
                let mut ev = PollFlags::empty();
                if self.stdin_pending.is_empty() {
                    ev |= PollFlags::POLLIN;
                }
                if !c.out.is_empty() {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.conn.as_fd(), ev));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
            let rev = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .unwrap_or(PollFlags::empty())
            };
            let (master_rev, rx_rev, client_rev) = (rev(0), rev(1), rev(2));
            drop(fds);
            if master_rev.contains(PollFlags::POLLOUT) {
                self.write_stdin();
            }
            if !master_rev.is_empty() && !self.read_master() {
                self.finish();
                return;
            }
            if !rx_rev.is_empty() {
                self.take_client();
            }
            if !client_rev.is_empty() {
                self.read_client();
            }
        }
    }

    /// One read of the pty; false once it ended (EIO: no one holds its peer any more).
    fn read_master(&mut self) -> bool {
        let mut buf = vec![0u8; 16 * 1024];
        match nix::unistd::read(self.master.as_raw_fd(), &mut buf) {
            Ok(0) | Err(Errno::EIO) => false,
            Ok(n) => {
                let data = &buf[..n];
                // The log first; a broken pipe (the pod ending) only stops the log.
                let _ = std::io::Write::write_all(&mut self.log, data);
                match (&mut self.client, &mut self.backlog) {
                    (Some(c), _) if c.out.len() < MAX_CLIENT_PENDING => {
                        c.send(AgentFrame::Stdout(data.to_vec()));
                    }
                    (None, Some(b)) if b.len() + n <= MAX_BACKLOG => b.extend_from_slice(data),
                    _ => {}
                }
                true
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => true,
            Err(_) => false,
        }
    }

    fn write_stdin(&mut self) {
        match nix::unistd::write(&self.master, &self.stdin_pending) {
            Ok(n) => {
                self.stdin_pending.drain(..n);
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            Err(_) => self.stdin_pending.clear(),
        }
    }

    /// A session handed over a connection: it is the client now (the previous one is closed).
    fn take_client(&mut self) {
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let Ok(msg) = recvmsg::<()>(
            self.rx.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) else {
            return;
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(r) = c {
                    // SAFETY: SCM_RIGHTS handed us these new descriptors.
                    fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        if msg.bytes == 0 {
            // Every session and PID 1 closed their ends: only the pod's end does that.
            return;
        }
        if fds.len() != 1 || set_nonblocking(&fds[0]).is_err() {
            return;
        }
        self.drop_client();
        let mut c = Session::new(fds.remove(0));
        if let Some(b) = self.backlog.take() {
            for chunk in b.chunks(MAX_DATA_LEN) {
                c.send(AgentFrame::Stdout(chunk.to_vec()));
            }
        }
        self.client = Some(c);
    }

    /// The client's frames, until one is incomplete or stdin must wait for the pty.
    fn read_client(&mut self) {
        while self.stdin_pending.is_empty() {
            let Some(c) = &mut self.client else { return };
            match c.read_some() {
                Ok(Some(f)) => {
                    if !self.on_frame(f) {
                        self.drop_client();
                        return;
                    }
                }
                Ok(None) => return,
                // Gone (a detach) or off-protocol: either way it is dropped.
                Err(_) => {
                    self.drop_client();
                    return;
                }
            }
        }
    }

    /// One frame from the client; false if it broke the protocol.
    fn on_frame(&mut self, f: ClientFrame) -> bool {
        match f {
            ClientFrame::Stdin(d) => self.stdin_pending = d,
            // A terminal's EOF is a character (VEOF, ^D).
            ClientFrame::Message(Request::CloseStdin) => self.stdin_pending.push(4),
            ClientFrame::Message(Request::Resize(size)) => {
                let _ = crate::pty::set_size(self.master.as_fd(), size);
            }
            ClientFrame::Message(Request::Signal { signal }) => {
                if let Ok(sig) = Signal::try_from(signal) {
                    let _ = kill(self.app_pid, sig);
                }
            }
            // Nothing to wait for here: the pod reports the app's exit.
            ClientFrame::Message(Request::Wait) => {}
            ClientFrame::Message(_) => return false,
        }
        true
    }

    /// The pty ended: what is queued goes to the client (bounded), then its connection closes.
    fn finish(&mut self) {
        let Some(mut c) = self.client.take() else {
            return;
        };
        let _ = c.flush_until(Instant::now() + FINISH_TIMEOUT);
    }
}
