//! The control channel (kvm): a vsock port on which the host asks for a stop.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Result;
use ark_pod_spec::{ControlCommand, ControlTransport};

/// Listens where the stage2 config says; without a listener the pod stops by signal only.
pub fn listen(control: Option<&ControlTransport>) -> Option<OwnedFd> {
    match control {
        Some(ControlTransport::Vsock { port }) => match listen_vsock(*port) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "ark-init: control channel on vsock port {port}: {e} (stop by signal only)"
                );
                None
            }
        },
        None => None,
    }
}

fn listen_vsock(port: u32) -> Result<OwnedFd> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
    };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(4)?)?;
    Ok(fd)
}

/// One control connection: read a line, answer `ok` or the error, close.
pub fn accept(listener: &OwnedFd) -> Option<ControlCommand> {
    use nix::sys::socket::{accept4, setsockopt, sockopt, SockFlag};
    let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).ok()?;
    // SAFETY: accept4 returned a new descriptor we now own.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let _ = setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    );
    let mut conn = std::fs::File::from(fd);
    let mut line = String::new();
    BufReader::new(&mut conn).read_line(&mut line).ok()?;
    match ControlCommand::parse(line.trim()) {
        Ok(c) => {
            let _ = conn.write_all(b"ok\n");
            Some(c)
        }
        Err(e) => {
            let _ = writeln!(conn, "error: {e}");
            None
        }
    }
}
