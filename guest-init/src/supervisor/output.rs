//! The apps' stdout and stderr: pipes guest-init relays to its own stdout/stderr and to
//! each app's log.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Result;
use ark_pod_spec::guest;

/// Which of guest-init's own streams an app's pipe is copied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The read end of an app's stdout or stderr: guest-init copies it to its own stdout or stderr
/// (the terminal of `ark run`, or the VM's console) and appends it to the app's log.
pub struct OutputPipe {
    pub file: std::fs::File,
    stream: Stream,
    log: Option<std::fs::File>,
    /// Output went to the log since its last fdatasync.
    log_unsynced: bool,
}

impl OutputPipe {
    pub fn new(fd: OwnedFd, stream: Stream, log: Option<&std::fs::File>) -> Result<Self> {
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
    pub fn sync_log(&mut self) {
        if let (Some(log), true) = (&self.log, self.log_unsynced) {
            let _ = log.sync_data();
            self.log_unsynced = false;
        }
    }
}

/// Relays the pipes marked ready (all of them when `ready` is None); drops the closed ones.
pub fn relay_outputs(outputs: &mut Vec<OutputPipe>, ready: Option<&[bool]>) {
    let mut i = 0;
    outputs.retain_mut(|o| {
        let go = ready.is_none_or(|r| r.get(i).copied().unwrap_or(false));
        i += 1;
        !go || o.relay()
    });
}

/// `/ark/logs/<app>.log`, appended to; None where the stage1 root is read-only.
pub fn open_app_log(app: &str) -> Option<std::fs::File> {
    std::fs::create_dir_all(guest::LOG_DIR).ok()?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(guest::app_log(app))
        .ok()
}
