//! Every command's stdout, and what a closed stdout means (`ark list | head -1`): Rust ignores
//! SIGPIPE, so a write to a closed pipe fails with EPIPE, and `println!` panics on it. Commands
//! write through [`stdout`] (`println!` is denied in this module tree by clippy), which returns
//! the error and remembers that the reader is gone; [`super::main`] then ends ark as Go
//! programs such as podman end: killed by SIGPIPE, quietly, after whatever was unwinding (a
//! raw terminal, a lock) has been put back. Writes to other pipes (a fetch child, an agent
//! socket) still fail with an error of their own, not silently.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// ark's stdout; a write that finds its reader gone fails (EPIPE) and is remembered.
pub struct Stdout(io::StdoutLock<'static>);

/// A handle on stdout for one command's output.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn noted<T>(r: io::Result<T>) -> io::Result<T> {
    if let Err(e) = &r {
        if e.kind() == io::ErrorKind::BrokenPipe {
            STDOUT_GONE.store(true, Ordering::Relaxed);
        }
    }
    r
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        noted(self.0.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        noted(self.0.flush())
    }
}

/// Whether a write to stdout found it closed.
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// Ends the process as SIGPIPE's default action would have: no message, and the shell sees
/// 128+13 (a shell prints nothing for it).
pub fn die_of_sigpipe() -> std::process::ExitCode {
    use nix::sys::signal::{raise, signal, SigHandler, Signal};
    // SAFETY: restoring a signal's default disposition installs no handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let _ = raise(Signal::SIGPIPE);
    std::process::ExitCode::from(128 + Signal::SIGPIPE as u8)
}

/// `writeln!` to [`stdout`], `?` on the error.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!($crate::cli::output::stdout(), $($arg)*)?
    }};
}

/// `write!` to [`stdout`], `?` on the error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!($crate::cli::output::stdout(), $($arg)*)?
    }};
}

pub(crate) use {out, outln};
