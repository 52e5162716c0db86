//! Ptys made inside a pod: the master comes from the `/dev/ptmx` of the caller's current root
//! (an app's root, whose devpts is an instance of its own), the peer is opened from the master
//! (TIOCGPTPEER, no path lookup in the app's /dev), and the peer becomes the caller's
//! controlling terminal. Shared by `ark enter -t` (the agent) and interactive apps.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use ark_pod_spec::agent::WindowSize;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use rustix::pty::OpenptFlags;

use crate::supervisor::StartError;

/// The message a child sends with the pty master attached.
const PTY_MESSAGE: &[u8] = b"pty";

/// A seqpacket socketpair (close-on-exec) for a child to report its start on: the pty master
/// (tty), then an error line or EOF at exec ([`receive_start`]).
pub fn start_channel() -> Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")
}

/// In the child, in its final root: a pty of `size` from that root's devpts; the master goes
/// to the parent over `chan`, the peer becomes the controlling terminal and fds 0-2.
pub fn open_and_hand_over(size: WindowSize, chan: &OwnedFd) -> Result<()> {
    let (master, peer) = open(size)?;
    sendmsg::<()>(
        chan.as_raw_fd(),
        &[IoSlice::new(PTY_MESSAGE)],
        &[ControlMessage::ScmRights(&[master.as_raw_fd()])],
        MsgFlags::empty(),
        None,
    )
    .context("hand over the pty")?;
    drop(master);
    make_controlling(peer)
}

/// Major and minor of the pty multiplexer (`/dev/ptmx`, `/dev/pts/ptmx`).
const PTMX_DEV: (u32, u32) = (5, 2);

/// A new pty from `/dev/ptmx` in the current root, of size `size`: (master, peer). Refuses a
/// `/dev/ptmx` that is not the pty multiplexer (an app may have put anything there).
pub fn open(size: WindowSize) -> Result<(OwnedFd, OwnedFd)> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags).context("open /dev/ptmx")?;
    let st = rustix::fs::fstat(&master).context("stat /dev/ptmx")?;
    let is_chr =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice;
    let dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if !is_chr || dev != PTMX_DEV {
        bail!("/dev/ptmx is not the pty multiplexer");
    }
    rustix::pty::unlockpt(&master).context("unlockpt")?;
    set_size(master.as_fd(), size)?;
    let peer = rustix::pty::ioctl_tiocgptpeer(&master, flags).context("open the pty's peer")?;
    Ok((master, peer))
}

/// TIOCSWINSZ (the foreground process group gets SIGWINCH).
pub fn set_size(tty: BorrowedFd, size: WindowSize) -> Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(tty, ws).context("set the terminal size")
}

/// A new session whose controlling terminal is `peer`, which becomes stdin, stdout and stderr.
pub fn make_controlling(peer: OwnedFd) -> Result<()> {
    nix::unistd::setsid().context("setsid")?;
    rustix::process::ioctl_tiocsctty(&peer).context("make the pty the controlling terminal")?;
    for fd in 0..=2 {
        nix::unistd::dup2(peer.as_raw_fd(), fd).context("pty as stdio")?;
    }
    Ok(())
}

/// Waits for the child's verdict: EOF (it exec'd), an error line, or (tty) the pty master
/// first. The child is ours, but the bytes are still capped and checked.
pub fn receive_start(chan: &OwnedFd, tty: bool) -> Result<Option<OwnedFd>, StartError> {
    let mut pty = None;
    loop {
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = match recvmsg::<()>(
            chan.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(fail(format!("recvmsg: {e}"))),
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| fail(format!("cmsg: {e}")))? {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: SCM_RIGHTS handed us these new descriptors.
                fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let n = msg.bytes;
        let text = &buf[..n];
        if n == 0 {
            return match (tty, pty) {
                (true, None) => Err(fail("the pty was not made")),
                (_, pty) => Ok(pty),
            };
        }
        if text == PTY_MESSAGE && tty && pty.is_none() && fds.len() == 1 {
            pty = fds.pop();
            continue;
        }
        let text = String::from_utf8_lossy(text);
        let (code, message) = text.split_once(' ').unwrap_or(("125", &text));
        let code = code.parse::<i32>().ok().filter(|c| (126..=127).contains(c));
        return Err(StartError {
            exit_code: code,
            message: message.to_string(),
        });
    }
}

fn fail(message: impl Into<String>) -> StartError {
    StartError {
        exit_code: None,
        message: message.into(),
    }
}
