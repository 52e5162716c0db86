//! One vsock stream connection between a guest socket and a host Unix stream: its state machine
//! and both directions of credit-based flow control.
//!
//! Guest → host: the guest may have at most [`TX_BUF_SIZE`] bytes in flight (our `buf_alloc`);
//! what the host socket does not take at once waits in `tx_buf`, which can therefore never grow
//! beyond that bound. A guest exceeding its credit is reset.
//!
//! Host → guest: nothing is buffered here. Host data is read straight into a guest rx buffer,
//! and only while the guest has advertised credit and has rx buffers available; otherwise the
//! host socket is simply not read (and not polled for input), so the kernel's socket buffer
//! pushes back on the host writer.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use event_manager::EventSet;
use nix::sys::socket::{send, MsgFlags};

use super::packet::{
    op, Header, PacketError, RxBuffer, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Our receive buffer per connection, advertised to the guest as `buf_alloc`.
pub const TX_BUF_SIZE: u32 = 256 * 1024;
/// How long a host-initiated connection waits for the guest's RESPONSE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection the guest fully shut down may take to flush to the host.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// `(host-side port, guest-side port)`: what identifies a connection (the CIDs are fixed).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST pending or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows (possibly half-closed, see the shutdown flags).
    Established,
    /// A RST is owed to the guest; the host stream is already shut down.
    Killed,
    /// Nothing more to do: the muxer drops it.
    Done,
}

/// What `next_rx` produced.
#[derive(Debug)]
pub enum RxOutcome {
    /// A packet of this used length was written to the rx buffer.
    Sent(u32),
    /// Nothing to send (the rx buffer was not touched).
    Nothing,
}

#[derive(Debug)]
pub struct Connection {
    pub key: ConnKey,
    guest_cid: u64,
    stream: UnixStream,
    state: State,

    // Control packets owed to the guest.
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    pending_credit_request: bool,

    /// epoll reported the host stream readable (data, EOF or error) and we have not drained it.
    host_readable: bool,
    /// The host stream hit EOF: the host will send nothing more.
    host_eof: bool,
    /// We shut the host stream's write side (the guest will send nothing more).
    host_write_shut: bool,
    peer_shut_rcv: bool,
    peer_shut_send: bool,

    // Host → guest credit: what the guest told us, and what we sent.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    // Guest → host: bytes written to the host stream, and the value last told to the guest.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    tx_buf: VecDeque<u8>,

    pub deadline: Option<Instant>,
}

impl Connection {
    fn new(key: ConnKey, guest_cid: u64, stream: UnixStream, state: State) -> Connection {
        Connection {
            key,
            guest_cid,
            stream,
            state,
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            pending_credit_request: false,
            host_readable: false,
            host_eof: false,
            host_write_shut: false,
            peer_shut_rcv: false,
            peer_shut_send: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            deadline: None,
        }
    }

    /// A guest REQUEST answered by connecting to a host listener: RESPONSE owed.
    pub fn new_peer_init(key: ConnKey, guest_cid: u64, stream: UnixStream, req: &Header) -> Self {
        let mut c = Connection::new(key, guest_cid, stream, State::Established);
        c.update_peer_credit(req);
        c.pending_response = true;
        c
    }

    /// A host client asked (CONNECT) for a guest port: REQUEST owed, RESPONSE awaited.
    pub fn new_local_init(key: ConnKey, guest_cid: u64, stream: UnixStream) -> Self {
        let mut c = Connection::new(key, guest_cid, stream, State::LocalInit);
        c.pending_request = true;
        c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        c
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn raw_fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    /// Drops the connection towards both ends: the host stream is shut now, a RST is owed to the
    /// guest.
    pub fn kill(&mut self) {
        if matches!(self.state, State::Killed | State::Done) {
            return;
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.state = State::Killed;
        self.deadline = None;
        self.tx_buf = VecDeque::new();
    }

    /// The guest reset the connection: no RST owed back.
    fn finish(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.state = State::Done;
        self.deadline = None;
        self.tx_buf = VecDeque::new();
    }

    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        // A guest claiming to have forwarded more than we sent gets no credit, not a huge one.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.peer_shut_rcv
    }

    /// Whether `next_rx` has something to produce.
    pub fn has_pending_rx(&self) -> bool {
        match self.state {
            State::Killed => true,
            State::Done => false,
            State::LocalInit => self.pending_request,
            State::Established => {
                self.pending_response
                    || self.pending_credit_update
                    || self.pending_credit_request
                    || (self.host_readable && self.can_send_data() && self.peer_credit() > 0)
            }
        }
    }

    /// The epoll interest this connection needs now (`None`: not polled at all).
    pub fn interest(&self) -> Option<EventSet> {
        if self.state != State::Established {
            return None;
        }
        let mut set = EventSet::empty();
        if self.can_send_data() && !self.host_readable && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() && !self.host_write_shut {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }

    /// epoll reported events on the host stream.
    pub fn on_host_event(&mut self, set: EventSet) {
        if self.state != State::Established {
            return;
        }
        if set
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            self.host_readable = true;
        }
        if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR)
            && !self.tx_buf.is_empty()
        {
            self.flush_tx();
        }
    }

    /// The deadline passed (connect or close timeout).
    pub fn on_deadline(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.kill();
        }
    }

    /// Handles one validated guest packet addressed to this connection.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if matches!(self.state, State::Killed | State::Done) {
            return;
        }
        if hdr.op == op::RST {
            self.finish();
            return;
        }
        self.update_peer_credit(hdr);
        match (self.state, hdr.op) {
            (State::LocalInit, op::RESPONSE) => {
                self.state = State::Established;
                self.deadline = None;
                // The stream was just accepted and nothing else was written to it, so its send
                // buffer takes this short line whole; anything else means the client is gone.
                let line = format!("OK {}\n", self.key.local_port);
                match send(
                    self.stream.as_raw_fd(),
                    line.as_bytes(),
                    MsgFlags::MSG_NOSIGNAL,
                ) {
                    Ok(n) if n == line.len() => {}
                    _ => self.kill(),
                }
            }
            (State::Established, op::RW) => self.on_guest_data(payload),
            (State::Established, op::CREDIT_UPDATE) => {}
            (State::Established, op::CREDIT_REQUEST) => self.pending_credit_update = true,
            (State::Established, op::SHUTDOWN) => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.progress_shutdown();
            }
            // REQUEST on a live connection, RESPONSE out of place, or anything but a RESPONSE or
            // RST before the handshake completed: a protocol violation.
            _ => self.kill(),
        }
    }

    fn on_guest_data(&mut self, payload: &[u8]) {
        if self.peer_shut_send {
            self.kill();
            return;
        }
        if self.tx_buf.len() + payload.len() > TX_BUF_SIZE as usize {
            tracing::warn!(
                "vsock: guest port {} exceeded its credit",
                self.key.peer_port
            );
            self.kill();
            return;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() && !self.host_write_shut {
            match send(self.stream.as_raw_fd(), payload, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => written = n,
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => {
                    self.kill();
                    return;
                }
            }
        }
        self.fwd_cnt += wrapping_count(written);
        self.tx_buf.extend(&payload[written..]);
        self.maybe_credit_update();
    }

    fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send(self.stream.as_raw_fd(), front, MsgFlags::MSG_NOSIGNAL) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += wrapping_count(n);
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    self.kill();
                    return;
                }
            }
        }
        self.maybe_credit_update();
        self.progress_shutdown();
    }

    /// Tells the guest about freed buffer space once its view of our free space gets low.
    fn maybe_credit_update(&mut self) {
        let unannounced = (self.fwd_cnt - self.last_fwd_cnt_sent).0 as usize;
        let guest_view_free =
            (TX_BUF_SIZE as usize).saturating_sub(self.tx_buf.len() + unannounced);
        if unannounced > 0 && guest_view_free < TX_BUF_SIZE as usize / 2 {
            self.pending_credit_update = true;
        }
    }

    /// Moves half-close / full close forward once the guest's data is flushed.
    fn progress_shutdown(&mut self) {
        if self.state != State::Established {
            return;
        }
        if !self.tx_buf.is_empty() {
            // The guest closed but the host is slow to take the rest: give it a bounded time.
            if self.peer_shut_rcv && self.peer_shut_send && self.deadline.is_none() {
                self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            }
            return;
        }
        if self.peer_shut_send && !self.host_write_shut {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.host_write_shut = true;
        }
        // Guest closed its socket, or both sides are done sending: orderly end, which the
        // guest's stack expects to see acknowledged with a RST.
        if self.peer_shut_send && (self.peer_shut_rcv || self.host_eof) {
            self.kill();
        }
    }

    fn header(&mut self, op: u16, flags: u32) -> Header {
        // Every packet carries our credit, so the guest's view is current after it.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending_credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Produces the next packet owed to the guest into `buf`, reading host data into `scratch`
    /// if that is what is owed.
    pub fn next_rx(
        &mut self,
        buf: &mut RxBuffer,
        scratch: &mut [u8],
    ) -> Result<RxOutcome, PacketError> {
        let control = match self.state {
            State::Done => return Ok(RxOutcome::Nothing),
            State::Killed => {
                self.state = State::Done;
                Some((op::RST, 0))
            }
            State::LocalInit if self.pending_request => {
                self.pending_request = false;
                Some((op::REQUEST, 0))
            }
            State::LocalInit => return Ok(RxOutcome::Nothing),
            State::Established if self.pending_response => {
                self.pending_response = false;
                Some((op::RESPONSE, 0))
            }
            State::Established if self.pending_credit_request => {
                self.pending_credit_request = false;
                Some((op::CREDIT_REQUEST, 0))
            }
            State::Established if self.pending_credit_update => Some((op::CREDIT_UPDATE, 0)),
            State::Established => None,
        };
        if let Some((op, flags)) = control {
            let hdr = self.header(op, flags);
            return buf.write(hdr, &[]).map(RxOutcome::Sent);
        }

        if !(self.host_readable && self.can_send_data()) {
            return Ok(RxOutcome::Nothing);
        }
        let credit = self.peer_credit() as usize;
        let want = credit.min(buf.payload_capacity()).min(scratch.len());
        if want == 0 {
            return Ok(RxOutcome::Nothing);
        }
        match self.stream.read(&mut scratch[..want]) {
            Ok(0) => {
                self.host_readable = false;
                self.host_eof = true;
                if self.peer_shut_send && self.tx_buf.is_empty() {
                    // Both directions finished: close with a RST.
                    self.kill();
                    self.state = State::Done;
                    let hdr = self.header(op::RST, 0);
                    return buf.write(hdr, &[]).map(RxOutcome::Sent);
                }
                let hdr = self.header(op::SHUTDOWN, SHUTDOWN_SEND);
                buf.write(hdr, &[]).map(RxOutcome::Sent)
            }
            Ok(n) => {
                let hdr = self.header(op::RW, 0);
                let sent = buf.write(hdr, &scratch[..n]);
                if sent.is_err() {
                    // Host bytes already consumed cannot be delivered: the stream is broken.
                    self.kill();
                    return sent.map(RxOutcome::Sent);
                }
                self.rx_cnt += wrapping_count(n);
                if self.peer_credit() == 0 {
                    self.pending_credit_request = true;
                }
                sent.map(RxOutcome::Sent)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.host_readable = false;
                Ok(RxOutcome::Nothing)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(RxOutcome::Nothing),
            Err(_) => {
                self.kill();
                self.state = State::Done;
                let hdr = self.header(op::RST, 0);
                buf.write(hdr, &[]).map(RxOutcome::Sent)
            }
        }
    }
}

/// `n` bytes as a step of the virtio-vsock byte counters (fwd_cnt, rx_cnt), which count modulo
/// 2^32: keeping the low 32 bits is the wrap the protocol defines.
#[allow(clippy::cast_possible_truncation)] // modulo 2^32 by definition
fn wrapping_count(n: usize) -> Wrapping<u32> {
    Wrapping(n as u32)
}
