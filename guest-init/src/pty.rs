//! Ptys made inside a pod: the master comes from the `/dev/ptmx` of the caller's current root
//! (an app's root, whose devpts is an instance of its own), the peer is opened from the master
//! (TIOCGPTPEER, no path lookup in the app's /dev), and the peer becomes the caller's
//! controlling terminal. Shared by `ark enter -t` (the agent) and interactive apps.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use anyhow::{bail, Context, Result};
use ark_pod_spec::agent::WindowSize;
use rustix::pty::OpenptFlags;

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
