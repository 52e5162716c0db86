//! Keeping inherited file descriptors out of the processes ark starts.
//!
//! Whatever started an ark binary may have left descriptors open without close-on-exec (a shell's
//! `7</`, a leaky supervisor). Every ark binary calls [`cloexec_inherited`] first thing, so those
//! reach no process it execs; fds passed on purpose are then opened (or made inheritable) after
//! that call, one by one. Close-on-exec rather than close: a descriptor the runtime itself
//! relies on before exec (a pod lock, a logging fd) keeps working until then.

use std::io;

/// The first descriptor after stdin, stdout and stderr.
pub const FIRST_NON_STDIO_FD: libc::c_uint = 3;

/// Marks every open fd >= 3 close-on-exec. Call it first in `main()`.
pub fn cloexec_inherited() -> io::Result<()> {
    cloexec_from(FIRST_NON_STDIO_FD)
}

/// [`cloexec_inherited`], or one line on stderr and `Err(125)` (an ark error), the code for
/// `main` to exit with, if the fds cannot be made safe: a binary that cannot keep them from its
/// children must not start any.
pub fn cloexec_inherited_or_report(prog: &str) -> Result<(), i32> {
    cloexec_inherited().map_err(|e| {
        eprintln!("{prog}: marking inherited file descriptors close-on-exec: {e}");
        ark_pod_spec::EXIT_STAGE1_ERROR
    })
}

/// Marks every open fd >= `first` close-on-exec: `close_range(CLOSE_RANGE_CLOEXEC)` (Linux
/// 5.11), else each fd listed in `/proc/self/fd`.
pub fn cloexec_from(first: libc::c_uint) -> io::Result<()> {
    match close_range_cloexec(first) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
            cloexec_listed(first)
        }
        other => other,
    }
}

/// [`cloexec_from`] for the child between `fork` and `exec` (`pre_exec`): async-signal-safe, no
/// allocation. Without `close_range`, walks every fd up to the `RLIMIT_NOFILE` soft limit.
pub fn cloexec_from_in_child(first: libc::c_uint) -> io::Result<()> {
    match close_range_cloexec(first) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we own.
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let last = libc::c_int::try_from(lim.rlim_cur).unwrap_or(libc::c_int::MAX);
            for fd in libc::c_int::try_from(first).unwrap_or(libc::c_int::MAX)..last {
                set_cloexec(fd);
            }
            Ok(())
        }
        other => other,
    }
}

fn close_range_cloexec(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range only changes flags of this process's descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The fallback for kernels without `CLOSE_RANGE_CLOEXEC`: every fd `/proc/self/fd` lists.
fn cloexec_listed(first: libc::c_uint) -> io::Result<()> {
    let fds: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &libc::c_int| libc::c_uint::try_from(*fd).is_ok_and(|fd| fd >= first))
        .collect();
    // The directory's own fd is in the list but closed by now: EBADF there is harmless.
    for fd in fds {
        set_cloexec(fd);
    }
    Ok(())
}

fn set_cloexec(fd: libc::c_int) {
    // SAFETY: F_GETFD/F_SETFD on a number that may not be open just fail with EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn is_cloexec(fd: libc::c_int) -> bool {
        // SAFETY: a flag query.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0, "fd {fd} is not open");
        flags & libc::FD_CLOEXEC != 0
    }

    /// An fd without close-on-exec (as a parent leaves one) at a chosen number.
    fn leaked_fd(at: libc::c_int) -> libc::c_int {
        let f = std::fs::File::open("/").unwrap();
        // SAFETY: dup2 onto a number this test owns; the copy has no close-on-exec.
        assert_eq!(unsafe { libc::dup2(f.as_raw_fd(), at) }, at);
        assert!(!is_cloexec(at));
        at
    }

    #[test]
    fn every_fd_from_three_becomes_cloexec_and_stays_open() {
        let low = leaked_fd(517);
        let high = leaked_fd(1003);
        cloexec_inherited().unwrap();
        assert!(is_cloexec(low) && is_cloexec(high));
        let again = leaked_fd(1004);
        cloexec_listed(FIRST_NON_STDIO_FD).unwrap();
        assert!(is_cloexec(again));
        let third = leaked_fd(1005);
        cloexec_from_in_child(FIRST_NON_STDIO_FD).unwrap();
        assert!(is_cloexec(third));
        for fd in [low, high, again, third] {
            // SAFETY: the test's own descriptors.
            unsafe { libc::close(fd) };
        }
    }
}
