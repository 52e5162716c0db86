//! The stage2 agent ([`ark_pod_spec::agent`]): runs processes in running apps for `ark enter`.
//! guest-init listens where the stage2 config says (a vsock port in a VM, a Unix socket in a
//! root-only directory for ns/fly) and, for each connection, forks a session process: it does
//! the handshake, starts the process in the app ([`spawn`]) and relays its stdio
//! ([`session`]). PID 1's loop only accepts; a session that misbehaves or blocks is a process
//! of its own, and the process it started dies with its connection.

pub mod attach;
mod session;
mod spawn;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result};
use ark_pod_spec::AgentTransport;
use nix::sys::socket::{accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
use nix::unistd::{fork, ForkResult};

use crate::app::plan::AppPlan;

/// The agent's listener and what its sessions need to know about the pod.
pub struct Listener {
    pub fd: OwnedFd,
    pub pod_uuid: String,
    pub plans: Vec<AppPlan>,
}

/// What a session needs to know about the pod.
pub struct PodInfo<'a> {
    pub pod_uuid: &'a str,
    pub plans: &'a [AppPlan],
    /// (app, pid) of the apps running now.
    pub running: Vec<(String, i32)>,
    /// (app, the keeper's attach socket) of the apps with a tty.
    pub ttys: Vec<(String, std::os::fd::RawFd)>,
}

/// Listens where `transport` says; without a listener `ark enter` is refused (one line on
/// the console says why).
pub fn listen_on(transport: Option<&AgentTransport>) -> Option<OwnedFd> {
    let t = transport?;
    match bind_listener(t) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("ark-init: agent: {e:#} (ark enter will not work in this pod)");
            None
        }
    }
}

fn bind_listener(t: &AgentTransport) -> Result<OwnedFd> {
    let flags = SockFlag::SOCK_CLOEXEC;
    let fd = match t {
        AgentTransport::Vsock { port } => {
            let fd = socket(AddressFamily::Vsock, SockType::Stream, flags, None)?;
            let addr = nix::sys::socket::VsockAddr::new(libc::VMADDR_CID_ANY, *port);
            bind(fd.as_raw_fd(), &addr).with_context(|| format!("bind vsock port {port}"))?;
            fd
        }
        AgentTransport::Unix { path } => {
            let path = std::path::Path::new(path);
            let dir = path
                .parent()
                .context("agent socket path has no directory")?;
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            // Root only: whoever reaches the socket runs processes in the pod.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod {}", dir.display()))?;
            let _ = std::fs::remove_file(path);
            let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
            let addr = nix::sys::socket::UnixAddr::new(path)?;
            bind(fd.as_raw_fd(), &addr).with_context(|| format!("bind {}", path.display()))?;
            fd
        }
    };
    listen(&fd, Backlog::new(16)?).context("listen")?;
    Ok(fd)
}

/// A vsock peer must be the host (CID 2): with a loopback transport in the guest kernel, an
/// app in the VM could otherwise connect to the agent and run processes as anyone in any app.
/// (ns/fly: the Unix socket is in guest-init's root, which no app's root reaches.)
fn from_the_host(conn: &OwnedFd) -> bool {
    use nix::sys::socket::{getpeername, SockaddrLike, SockaddrStorage};
    match getpeername::<SockaddrStorage>(conn.as_raw_fd()) {
        Ok(addr) => match addr.as_vsock_addr() {
            Some(v) => peer_cid_allowed(v.cid()),
            None => addr.family() == Some(AddressFamily::Unix),
        },
        Err(_) => false,
    }
}

fn peer_cid_allowed(cid: u32) -> bool {
    cid == ark_pod_spec::stage2::VSOCK_HOST_CID
}

/// How long PID 1 waits for a client's `hello` and request: it does that part itself, so an
/// app request is carried out by the process that owns the apps. Only root on the host can
/// connect (vsock from CID 2; a root-only directory for ns/fly), and the wait is bounded.
const PID1_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An app request (`app_add`, ...) for PID 1 to carry out, and the connection to answer on.
pub struct AppRequest {
    pub session: session::Session,
    pub request: ark_pod_spec::agent::Request,
}

impl AppRequest {
    pub fn answer(self, r: std::result::Result<(), String>) {
        self.session.answer(r);
    }
}

/// Accepts one connection and reads its request. `exec` and `attach` get a session process of its own
/// (guest-init reaps it like any other child: it is no app); an app request is returned for
/// the supervisor to carry out.
pub fn accept(listener: &OwnedFd, pod: &PodInfo) -> Option<AppRequest> {
    use ark_pod_spec::agent::Request;
    let fd = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
        // SAFETY: accept4 returned a new descriptor we now own.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(e) => {
            eprintln!("ark-init: agent: accept: {e}");
            return None;
        }
    };
    if !from_the_host(&fd) {
        eprintln!("ark-init: agent: refused a vsock connection from inside the VM");
        return None;
    }
    let (s, version, req) = session::handshake(fd, PID1_HANDSHAKE_TIMEOUT).ok()?;
    let req = match req {
        r @ (Request::Exec(_) | Request::Attach { .. }) => r,
        r @ (Request::AppAdd(_)
        | Request::AppStart { .. }
        | Request::AppStop { .. }
        | Request::AppRemove { .. }) => {
            return Some(AppRequest {
                session: s,
                request: r,
            })
        }
        // Anything else first is off-protocol: the connection is dropped.
        _ => return None,
    };
    // SAFETY: guest-init is single-threaded, so the child may run ordinary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // If guest-init dies, so does the session (and, through its own death signal,
            // the process it started).
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            let code = session::serve(s, version, req, pod);
            // SAFETY: leave without running guest-init's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(e) => eprintln!("ark-init: agent: fork: {e}"),
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_host_may_connect_over_vsock() {
        assert!(super::peer_cid_allowed(2));
        // VMADDR_CID_LOCAL (loopback), and the guest's own CID.
        assert!(!super::peer_cid_allowed(1));
        assert!(!super::peer_cid_allowed(3));
        assert!(!super::peer_cid_allowed(u32::MAX));
    }
}
