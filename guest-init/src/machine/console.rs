//! stdio for a PID 1 started without any.

use std::path::Path;

use nix::mount::MsFlags;
use nix::unistd;

use super::mount_fs;

/// PID 1 of a VM whose root has no `/dev/console` starts without stdin/stdout/stderr: mount
/// devtmpfs and attach them to the console, so guest-init's and the apps' output is seen.
pub fn ensure_console() {
    use nix::fcntl::{fcntl, FcntlArg};
    if fcntl(1, FcntlArg::F_GETFD).is_ok() {
        return;
    }
    let dev = Path::new("/dev");
    if !dev.join("console").exists() {
        let _ = mount_fs(
            "devtmpfs",
            dev,
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        );
    }
    if let Ok(c) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let fd = std::os::fd::IntoRawFd::into_raw_fd(c);
        for target in 0..3 {
            if fd != target {
                let _ = unistd::dup2(fd, target);
            }
        }
        if fd > 2 {
            let _ = unistd::close(fd);
        }
    }
}

/// The console carries only guest-init's own lines once the apps' output goes over vsock:
/// turn off the tty's output processing (LF → CRLF), so a line reaches the host's stderr as
/// written. Not when an app has the console as its terminal.
pub fn plain_output() {
    use nix::sys::termios::{tcgetattr, tcsetattr, OutputFlags, SetArg};
    let stderr = std::io::stderr();
    if let Ok(mut t) = tcgetattr(&stderr) {
        t.output_flags.remove(OutputFlags::OPOST);
        let _ = tcsetattr(&stderr, SetArg::TCSANOW, &t);
    }
}
