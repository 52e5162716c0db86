//! The pod's network namespace: made in a short-lived thread (unshare affects only the calling
//! thread), kept alive by a bind mount of its nsfs file at `PodLayout::netns()`, so it outlives
//! the stage1 and stage0 can tear it down after a `kill -9`.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::Error;

fn ns_err(path: &Path, what: &'static str) -> impl FnOnce(nix::errno::Errno) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Netns { path, what, source }
}

/// Creates a network namespace with `lo` up, bind-mounted on `path` (a new empty file).
pub fn create(path: &Path) -> Result<(), Error> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(crate::error::io("create netns file", path))?;
    let p: PathBuf = path.into();
    let made = std::thread::spawn(move || -> Result<(), Error> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(ns_err(&p, "unshare"))?;
        loopback_up().map_err(ns_err(&p, "bring up lo"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(ns_err(&p, "bind mount"))
    })
    .join()
    .unwrap_or_else(|_| Err(ns_err(path, "thread")(nix::errno::Errno::EINVAL)));
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unmounts and removes the namespace file; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), Error> {
    loop {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue, // Stacked mounts (a racing set-up): all of them.
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
            Err(e) => return Err(ns_err(path, "unmount")(e)),
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(crate::error::io("remove netns file", path)(e))
        }
        _ => Ok(()),
    }
}

/// Brings `lo` up in the calling thread's network namespace (a new one has it down).
pub fn loopback_up() -> Result<(), nix::errno::Errno> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; the name fits with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = libc::c_char::try_from(*s).expect("the name is ASCII");
    }
    let up = libc::c_short::try_from(libc::IFF_UP).expect("IFF_UP is 1");
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(nix::errno::Errno::last());
        }
        req.ifr_ifru.ifru_flags |= up;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    Ok(())
}
