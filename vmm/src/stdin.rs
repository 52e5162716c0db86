//! Host stdin as guest input: whether it is worth reading, which device gets it, an unbuffered
//! duplicate of fd 0 for the event loop, and raw mode for a terminal.

use std::io::{self, IsTerminal};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::config::{SerialConfig, VmConfig};
use crate::Error;

/// The device that reads host stdin, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StdinTarget {
    /// COM1, when its output is on stdout.
    Serial,
    /// The virtio-console, when it is on stdout and the serial port is not.
    Console,
    None,
}

impl StdinTarget {
    pub(crate) fn for_config(config: &VmConfig) -> StdinTarget {
        if config.serial == SerialConfig::Stdout {
            if is_interactive() {
                return StdinTarget::Serial;
            }
        } else if config.console == Some(SerialConfig::Stdout) && is_interactive() {
            return StdinTarget::Console;
        }
        StdinTarget::None
    }
}

/// stdin is worth reading when it is a terminal or a pipe (not /dev/null or a file).
fn is_interactive() -> bool {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return true;
    }
    // SAFETY: fstat on a valid fd into plain data.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(stdin.as_raw_fd(), &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
    }
}

/// A duplicate of fd 0 for unbuffered reads: std's Stdin buffers, which would hide input from
/// epoll and overfill the serial port's 64-byte receive FIFO.
pub(crate) fn duplicate() -> Result<OwnedFd, Error> {
    io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Io("stdin", e))
}

/// Puts a terminal on stdin into raw mode (keeping ^C as a signal) and restores it on drop.
pub(crate) struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    /// Raw mode if stdin is a terminal; `None` otherwise.
    pub(crate) fn if_terminal() -> Option<RawTerminal> {
        io::stdin().is_terminal().then(RawTerminal::new)
    }

    fn new() -> Self {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr/tcsetattr only read/write it.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            t.c_lflag |= libc::ISIG;
            if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                return RawTerminal(None);
            }
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &t) };
        }
    }
}
