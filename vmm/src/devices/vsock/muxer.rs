//! The host side of the hybrid vsock: routes guest packets to connections, accepts host clients
//! on the listening Unix socket, and keeps every host fd registered with the event loop for
//! exactly the events its connection can act on.
//!
//! - guest → host: a guest REQUEST for (host CID, port P) makes us connect to `{uds_path}_{P}`;
//!   nothing listening (or the connection limit reached) gets the guest a RST.
//! - host → guest: a client connects to `uds_path` and writes `CONNECT <port>\n`; we send the
//!   guest a REQUEST from a freshly allocated local port and, on its RESPONSE, answer the client
//!   `OK <local port>\n`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use super::connection::{ConnKey, Connection, RxOutcome, State};
use super::packet::{op, Header, PacketError, RxBuffer, HOST_CID, MAX_PKT_PAYLOAD, TYPE_STREAM};

/// Default bound on live connections plus host clients still handshaking.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// RSTs for unknown connections waiting for guest rx buffers; beyond this they are dropped (the
/// guest's own timeouts cover it) so a guest that never returns rx buffers cannot grow us.
pub const MAX_PENDING_RST: usize = 256;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// How long a host client has to send its CONNECT line.
const HOST_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Host-initiated connections get local ports from here up (Firecracker's convention), away from
/// the well-known ports guest services listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Connections accepted per listener event, so one flood cannot monopolise the loop.
const ACCEPTS_PER_EVENT: usize = 64;

/// A host client that connected to `uds_path` but has not sent its CONNECT line yet.
#[derive(Debug)]
struct HostHandshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_registered: bool,
    max_connections: usize,

    conns: HashMap<ConnKey, Connection>,
    conn_by_fd: HashMap<RawFd, ConnKey>,
    /// epoll interest currently registered for each connection's stream.
    registered: HashMap<ConnKey, EventSet>,
    handshakes: HashMap<RawFd, HostHandshake>,

    /// Connections with a packet owed to the guest, served round-robin.
    rxq: VecDeque<ConnKey>,
    in_rxq: HashSet<ConnKey>,
    /// RSTs for packets that match no connection: (local port, peer port).
    rst_queue: VecDeque<ConnKey>,
    /// Connections whose state changed since the last `sync`.
    dirty: HashSet<ConnKey>,

    next_local_port: u32,
    scratch: Vec<u8>,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> Muxer {
        Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            listener_registered: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            conns: HashMap::new(),
            conn_by_fd: HashMap::new(),
            registered: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            in_rxq: HashSet::new(),
            rst_queue: VecDeque::new(),
            dirty: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
            scratch: vec![0; MAX_PKT_PAYLOAD as usize],
        }
    }

    pub fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max;
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn at_limit(&self) -> bool {
        self.conns.len() + self.handshakes.len() >= self.max_connections
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Starts accepting host clients (on device activation).
    pub fn register_listener(&mut self, ops: &mut EventOps) {
        if self.listener_registered {
            return;
        }
        match ops.add(Events::new(&self.listener, EventSet::IN)) {
            Ok(()) => self.listener_registered = true,
            Err(e) => tracing::error!("vsock: registering the listener: {e}"),
        }
    }

    /// Device reset: deregisters and closes every host stream and stops accepting.
    pub fn teardown(&mut self, ops: &mut EventOps) {
        if self.listener_registered {
            let _ = ops.remove(Events::new(&self.listener, EventSet::IN));
            self.listener_registered = false;
        }
        for (key, set) in self.registered.drain() {
            if let Some(conn) = self.conns.get(&key) {
                let _ = ops.remove(Events::new(conn.stream(), set));
            }
        }
        for hs in self.handshakes.values() {
            let _ = ops.remove(Events::new(&hs.stream, EventSet::IN));
        }
        self.handshakes.clear();
        self.conns.clear();
        self.conn_by_fd.clear();
        self.rxq.clear();
        self.in_rxq.clear();
        self.rst_queue.clear();
        self.dirty.clear();
    }

    pub fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rxq.is_empty()
    }

    /// Whether anything waits on a deadline (the device keeps its timer armed while so).
    pub fn has_deadlines(&self) -> bool {
        !self.handshakes.is_empty() || self.conns.values().any(|c| c.deadline.is_some())
    }

    fn push_rst(&mut self, key: ConnKey) {
        if self.rst_queue.len() < MAX_PENDING_RST {
            self.rst_queue.push_back(key);
        }
    }

    /// Records that a connection may have changed: queue it for rx if it owes the guest a
    /// packet, and have `sync` look at its epoll interest.
    fn touch(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get(&key) {
            if conn.has_pending_rx() && self.in_rxq.insert(key) {
                self.rxq.push_back(key);
            }
        }
        self.dirty.insert(key);
    }

    /// Brings epoll registrations in line with what each changed connection needs, and drops
    /// finished connections.
    pub fn sync(&mut self, ops: &mut EventOps) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get(&key) else {
                continue;
            };
            let want = conn.interest();
            let have = self.registered.get(&key).copied();
            let ok = match (have, want) {
                (None, None) => Ok(()),
                (None, Some(set)) => ops.add(Events::new(conn.stream(), set)),
                (Some(a), Some(b)) if a == b => Ok(()),
                (Some(_), Some(set)) => ops.modify(Events::new(conn.stream(), set)),
                (Some(a), None) => ops.remove(Events::new(conn.stream(), a)),
            };
            match ok {
                Ok(()) => match want {
                    Some(set) => {
                        self.registered.insert(key, set);
                    }
                    None => {
                        self.registered.remove(&key);
                    }
                },
                Err(e) => {
                    tracing::warn!("vsock: epoll update for port {}: {e}", key.peer_port);
                }
            }
            if conn.state() == State::Done && !self.registered.contains_key(&key) {
                let fd = conn.raw_fd();
                self.conns.remove(&key);
                self.conn_by_fd.remove(&fd);
                if self.in_rxq.remove(&key) {
                    self.rxq.retain(|k| *k != key);
                }
            }
        }
    }

    // ---- guest → host ----

    /// Handles a packet that `parse_tx` rejected: a well-addressed but invalid packet resets
    /// the connection it names.
    pub fn on_invalid_packet(&mut self, err: &PacketError) {
        if let PacketError::Invalid { hdr, .. } = err {
            let key = ConnKey {
                local_port: hdr.dst_port,
                peer_port: hdr.src_port,
            };
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.kill();
                self.touch(key);
            } else if hdr.op != op::RST {
                self.push_rst(key);
            }
        }
    }

    /// Handles one validated guest packet.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.on_guest_packet(hdr, payload);
                self.touch(key);
            }
            None => match hdr.op {
                op::REQUEST => self.guest_connect(key, hdr),
                // Nothing to reset.
                op::RST => {}
                _ => self.push_rst(key),
            },
        }
    }

    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.at_limit() {
            tracing::warn!(
                "vsock: connection limit reached, refusing guest port {}",
                key.peer_port
            );
            self.push_rst(key);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string().into_vec();
        path.extend_from_slice(format!("_{}", key.local_port).as_bytes());
        let path = PathBuf::from(OsString::from_vec(path));
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let conn = Connection::new_peer_init(key, self.guest_cid, stream, hdr);
                self.conn_by_fd.insert(conn.raw_fd(), key);
                self.conns.insert(key, conn);
                self.touch(key);
            }
            Err(e) => {
                tracing::debug!("vsock: guest connect to {}: {e}", path.display());
                self.push_rst(key);
            }
        }
    }

    // ---- host events ----

    /// The listener is readable: accept host clients (they then send their CONNECT line).
    pub fn accept(&mut self, ops: &mut EventOps) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("vsock: accept: {e}");
                    return;
                }
            };
            if self.at_limit() {
                tracing::warn!("vsock: connection limit reached, refusing a host client");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
                tracing::warn!("vsock: registering a host client: {e}");
                continue;
            }
            self.handshakes.insert(
                stream.as_raw_fd(),
                HostHandshake {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                    deadline: Instant::now() + HOST_HANDSHAKE_TIMEOUT,
                },
            );
        }
    }

    /// Events on a host fd other than the listener.
    pub fn on_host_event(&mut self, fd: RawFd, set: EventSet, ops: &mut EventOps) {
        if self.handshakes.contains_key(&fd) {
            self.on_handshake_event(fd, ops);
        } else if let Some(&key) = self.conn_by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_host_event(set);
                self.touch(key);
            }
        }
    }

    fn on_handshake_event(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        // One byte at a time: whatever follows the newline is payload for the guest and must
        // stay in the socket until the connection is established.
        let done = loop {
            let mut byte = [0u8; 1];
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(_) if hs.line.len() >= MAX_CONNECT_LINE => break Err("CONNECT line too long"),
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break Err("read error"),
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let _ = ops.remove(Events::new(&hs.stream, EventSet::IN));
        let peer_port = match done {
            Ok(port) => port,
            Err(why) => {
                tracing::debug!("vsock: dropping host client: {why}");
                return;
            }
        };
        let Some(local_port) = self.alloc_local_port(peer_port) else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let conn = Connection::new_local_init(key, self.guest_cid, hs.stream);
        self.conn_by_fd.insert(conn.raw_fd(), key);
        self.conns.insert(key, conn);
        self.touch(key);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most max_connections keys are taken, so this finds a port quickly.
        for _ in 0..=self.max_connections {
            let port = self.next_local_port;
            self.next_local_port = if port == u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Timer tick: expire handshakes and connections past their deadline.
    pub fn on_timer(&mut self, ops: &mut EventOps) {
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| hs.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            if let Some(hs) = self.handshakes.remove(&fd) {
                let _ = ops.remove(Events::new(&hs.stream, EventSet::IN));
            }
        }
        let keys: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(&key) {
                tracing::debug!("vsock: port {} timed out", key.peer_port);
                conn.on_deadline(now);
            }
            self.touch(key);
        }
    }

    // ---- host → guest ----

    /// Writes the next packet owed to the guest into `buf`; `None` if nothing is owed (the
    /// buffer is then untouched and can be given back to the queue).
    pub fn fill_rx(&mut self, buf: &mut RxBuffer) -> Option<Result<u32, PacketError>> {
        if let Some(key) = self.rst_queue.pop_front() {
            let hdr = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                len: 0,
                type_: TYPE_STREAM,
                op: op::RST,
                flags: 0,
                buf_alloc: 0,
                fwd_cnt: 0,
            };
            return Some(buf.write(hdr, &[]));
        }
        // Each queued connection gets one look; one that turns out to have nothing (its host
        // stream had no data after all) is skipped.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            self.in_rxq.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let outcome = conn.next_rx(buf, &mut self.scratch);
            self.touch(key);
            match outcome {
                Ok(RxOutcome::Sent(len)) => return Some(Ok(len)),
                Ok(RxOutcome::Nothing) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect(line: &[u8]) -> Result<u32, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "CONNECT line is not UTF-8")?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line
        .strip_prefix("CONNECT ")
        .ok_or("expected CONNECT <port>")?;
    port.trim().parse::<u32>().map_err(|_| "bad CONNECT port")
}

/// Connects to a host Unix socket without blocking the event loop: a listener whose backlog is
/// full refuses (EAGAIN) instead of stalling us.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(std::io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    connect(fd.as_raw_fd(), &addr).map_err(std::io::Error::from)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_line() {
        assert_eq!(parse_connect(b"CONNECT 52"), Ok(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Ok(u32::MAX));
        assert!(parse_connect(b"CONNECT 4294967296").is_err());
        assert!(parse_connect(b"CONNECT").is_err());
        assert!(parse_connect(b"connect 52").is_err());
        assert!(parse_connect(b"CONNECT -1").is_err());
        assert!(parse_connect(b"\xff\xfe").is_err());
    }
}
