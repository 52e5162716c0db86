//! A small synchronous rtnetlink client: the links, addresses, routes and tc rules a pod's
//! network needs, in the calling thread's network namespace (a netlink socket belongs to the
//! namespace it was opened in). stage1-kvm wires a TAP to the CNI veth with it; guest-init
//! configures the guest's NICs with it (no `ip` binary, no async runtime: a static musl PID 1).
//!
//! Messages are built and parsed with `netlink-packet-route`; this module owns the socket, the
//! request/acknowledgement exchange and the checks on every reply datagram (its size, each
//! message's length, the sequence number, a cap on how many messages a dump may return), and
//! names the operation in every error, with the kernel's extended-ack text when it gives one.

mod addr;
mod link;
mod tc;

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use addr::RouteSpec;
pub use link::Link;

/// One reply datagram at most (the kernel sizes dump datagrams to the reader's buffer, up to
/// 32 KiB by default; a larger one is refused as truncated, not half-read).
const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// The most messages one request may answer with (a dump of every link or route in a pod's
/// namespace is a handful; a guest kernel is not expected to have thousands either).
pub const MAX_REPLY_MESSAGES: usize = 4096;
/// A kernel that never answers is a bug, but PID 1 must not hang on it.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// `struct nlmsghdr`.
const NLMSG_HEADER_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op}: {source}{}", ext_ack.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
        /// The kernel's extended-ack message, when it gave one.
        ext_ack: Option<String>,
    },
    #[error("{op}: bad netlink reply: {reason}")]
    BadReply { op: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    fn bad_reply(op: &str, reason: impl Into<String>) -> Self {
        NetlinkError::BadReply {
            op: op.to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// An rtnetlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens (close-on-exec) and binds an rtnetlink socket in the calling thread's network
    /// namespace; it keeps talking to that namespace whatever the thread does later.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // Errors carry the kernel's message and echo only the request's header back.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(
                i64::try_from(REPLY_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
                0,
            ),
        )
        .map_err(|e| NetlinkError::Socket(e.into()))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUFFER_BYTES],
        })
    }

    /// Sends `msg` and waits for its acknowledgement; whatever the kernel sent before it is
    /// returned. `flags` adds to NLM_F_REQUEST|NLM_F_ACK (NLM_F_CREATE|NLM_F_EXCL for a new
    /// object, say).
    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(op, msg, NLM_F_REQUEST | NLM_F_ACK | flags, false)
    }

    /// Sends a dump request and collects every message up to NLMSG_DONE.
    fn dump(&mut self, op: &str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(op, msg, NLM_F_REQUEST | NLM_F_DUMP, true)
    }

    fn exchange(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        let sent = self
            .socket
            .send(&out, 0)
            .map_err(|e| NetlinkError::Kernel {
                op: op.to_string(),
                source: e,
                ext_ack: None,
            })?;
        if sent != out.len() {
            return Err(NetlinkError::bad_reply(op, "request sent short"));
        }

        let mut replies = Vec::new();
        loop {
            let len = self.recv(op)?;
            let mut rest = &self.buf[..len];
            while !rest.is_empty() {
                let (one, tail) = split_message(op, rest)?;
                rest = tail;
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one)
                    .map_err(|e| NetlinkError::bad_reply(op, e.to_string()))?;
                if parsed.header.sequence_number != seq {
                    // A late answer to an earlier request (one that timed out): not ours.
                    continue;
                }
                match parsed.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(replies),
                        None => {}
                        Some(code) => {
                            return Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                                ext_ack: ext_ack_message(one),
                            })
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        if replies.len() >= MAX_REPLY_MESSAGES {
                            return Err(NetlinkError::bad_reply(
                                op,
                                format!("more than {MAX_REPLY_MESSAGES} messages"),
                            ));
                        }
                        replies.push(m);
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(NetlinkError::bad_reply(op, "overrun"))
                    }
                    _ => {}
                }
            }
        }
    }

    /// One datagram into `self.buf`; its true length is checked against the buffer (MSG_TRUNC),
    /// so a reply never is parsed half.
    fn recv(&mut self, op: &str) -> Result<usize> {
        let len = nix::sys::socket::recv(
            self.socket.as_raw_fd(),
            &mut self.buf,
            nix::sys::socket::MsgFlags::MSG_TRUNC,
        )
        .map_err(|e| NetlinkError::Kernel {
            op: format!("{op}: waiting for the reply"),
            source: e.into(),
            ext_ack: None,
        })?;
        if len > self.buf.len() {
            return Err(NetlinkError::bad_reply(
                op,
                format!(
                    "a {len}-byte datagram, more than the {} read",
                    self.buf.len()
                ),
            ));
        }
        Ok(len)
    }
}

/// The first netlink message of `data` and what follows it (after the 4-byte alignment),
/// refusing lengths shorter than a header or longer than the datagram.
fn split_message<'a>(op: &str, data: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    let Some(len_bytes) = data.get(..4) else {
        return Err(NetlinkError::bad_reply(op, "trailing bytes"));
    };
    let len = usize::try_from(u32::from_ne_bytes(len_bytes.try_into().expect("4 bytes")))
        .unwrap_or(usize::MAX);
    if len < NLMSG_HEADER_LEN || len > data.len() {
        return Err(NetlinkError::bad_reply(
            op,
            format!("message length {len} in a {}-byte datagram", data.len()),
        ));
    }
    let next = len.next_multiple_of(4).min(data.len());
    Ok((&data[..len], &data[next..]))
}

/// NLMSGERR_ATTR_MSG from an error message (`nlmsghdr`, `int error`, the echoed request's
/// header — only the header, NLM_F_CAPPED — then the TLVs), if the kernel gave one.
fn ext_ack_message(msg: &[u8]) -> Option<String> {
    let flags = u16::from_ne_bytes(msg.get(6..8)?.try_into().ok()?);
    if flags & NLM_F_ACK_TLVS == 0 || flags & NLM_F_CAPPED == 0 {
        return None;
    }
    let tlvs = msg.get(NLMSG_HEADER_LEN + 4 + NLMSG_HEADER_LEN..)?;
    for nla in netlink_packet_core::NlasIterator::new(tlvs) {
        let nla = nla.ok()?;
        if nla.kind() == NLMSGERR_ATTR_MSG {
            let text = nla.value().split(|b| *b == 0).next()?;
            let text = String::from_utf8_lossy(text).trim().to_string();
            return (!text.is_empty()).then_some(text);
        }
    }
    None
}

#[cfg(test)]
mod tests;
