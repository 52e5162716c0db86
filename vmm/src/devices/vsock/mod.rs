//! virtio-vsock (virtio spec 1.2, 5.10) with a hybrid, Unix-socket host side, like Firecracker's:
//! the guest talks AF_VSOCK; the host talks to Unix sockets next to `uds_path`.
//!
//! - guest → host: a guest connect to (CID 2, port P) connects the VMM to `{uds_path}_{P}`.
//! - host → guest: the VMM listens on `uds_path`; a client writes `CONNECT <port>\n`, gets
//!   `OK <local port>\n` once the guest accepted, then the stream carries the bytes.
//!
//! Layout: [`packet`] parses and builds packets in guest memory (pure functions, fuzzable),
//! [`connection`] is the per-connection state machine with credit-based flow control, and
//! [`muxer`] routes packets and host events; this module is the virtio device around them.

pub mod connection;
pub mod muxer;
pub mod packet;

#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vmm_sys_util::timerfd::TimerFd;

use crate::virtio::{device_type, Event, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1};
use muxer::Muxer;
use packet::RxBuffer;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Deadline sweep period while connections wait on a timeout.
const TIMER_PERIOD: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest CID {0} is reserved or out of range (valid: 3..=4294967294)")]
    InvalidCid(u64),
    #[error("binding vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuring vsock socket {path}: {source}")]
    Listener {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating vsock eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("creating vsock timerfd: {0}")]
    TimerFd(#[source] std::io::Error),
}

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    state: VirtioState,
    timer: TimerFd,
    timer_armed: bool,
    muxer: Muxer,
    tx_payload: Vec<u8>,
}

impl Vsock {
    /// Creates the device for a guest with `guest_cid`, listening for host clients on
    /// `uds_path` (which must not exist yet; it is removed again when the device is dropped).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, Error> {
        if !(3..=u64::from(u32::MAX - 1)).contains(&guest_cid) {
            return Err(Error::InvalidCid(guest_cid));
        }
        let listener = UnixListener::bind(uds_path).map_err(|source| Error::Bind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Listener {
                path: uds_path.to_path_buf(),
                source,
            })?;
        let timer = TimerFd::new().map_err(|e| Error::TimerFd(e.into()))?;
        // Read only after epoll reported it, but re-arming can zero its count in between, so
        // it must never block.
        nix::fcntl::fcntl(
            timer.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::TimerFd(e.into()))?;
        // No VIRTIO_VSOCK_F_SEQPACKET: stream sockets only. Config space: guest_cid (le64).
        let state = VirtioState::new(
            "vsock",
            device_type::VSOCK,
            VIRTIO_F_VERSION_1,
            QUEUE_SIZES.to_vec(),
            guest_cid.to_le_bytes().to_vec(),
        )
        .map_err(Error::EventFd)?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            state,
            timer,
            timer_armed: false,
            muxer: Muxer::new(guest_cid, uds_path, listener),
            tx_payload: Vec::new(),
        })
    }

    /// Bounds live connections plus host clients still handshaking (default
    /// [`muxer::DEFAULT_MAX_CONNECTIONS`]); beyond it guest connects get a RST and host clients
    /// are closed.
    pub fn with_max_connections(mut self, max: usize) -> Vsock {
        self.muxer.set_max_connections(max);
        self
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Live connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Serves the tx queue: every chain is parsed, validated and handed to the muxer, then
    /// returned (tx buffers are read-only to the device, so the used length is 0).
    fn process_tx(&mut self) -> bool {
        let Some(a) = self.state.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = a.queues[TX_QUEUE].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match packet::parse_tx(&a.mem, chain, self.guest_cid, &mut self.tx_payload) {
                Ok(hdr) => self.muxer.on_guest_packet(&hdr, &self.tx_payload),
                Err(e) => {
                    tracing::debug!("vsock: dropping guest packet: {e}");
                    self.muxer.on_invalid_packet(&e);
                }
            }
            if let Err(e) = a.queues[TX_QUEUE].add_used(&a.mem, head, 0) {
                tracing::warn!("vsock: tx add_used: {e}");
                break;
            }
            used = true;
        }
        used && a.queues[TX_QUEUE]
            .needs_notification(&a.mem)
            .unwrap_or(true)
    }

    /// Fills guest rx buffers with whatever the muxer owes the guest.
    fn process_rx(&mut self) -> bool {
        let Some(a) = self.state.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = a.queues[RX_QUEUE].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::new(&a.mem, chain) {
                Ok(mut buf) => match self.muxer.fill_rx(&mut buf) {
                    Some(Ok(len)) => len,
                    Some(Err(e)) => {
                        tracing::warn!("vsock: writing rx packet: {e}");
                        0
                    }
                    None => {
                        // Nothing was owed after all: give the buffer back untouched.
                        let q = &mut a.queues[RX_QUEUE];
                        q.set_next_avail(q.next_avail().wrapping_sub(1));
                        break;
                    }
                },
                Err(e) => {
                    tracing::debug!("vsock: unusable rx buffer: {e}");
                    0
                }
            };
            if let Err(e) = a.queues[RX_QUEUE].add_used(&a.mem, head, len) {
                tracing::warn!("vsock: rx add_used: {e}");
                break;
            }
            used = true;
        }
        used && a.queues[RX_QUEUE]
            .needs_notification(&a.mem)
            .unwrap_or(true)
    }

    fn update_timer(&mut self) {
        let needed = self.muxer.has_deadlines();
        if needed && !self.timer_armed {
            match self.timer.reset(TIMER_PERIOD, Some(TIMER_PERIOD)) {
                Ok(()) => self.timer_armed = true,
                Err(e) => tracing::error!("vsock: arming timer: {e}"),
            }
        } else if !needed && self.timer_armed {
            let _ = self.timer.clear();
            self.timer_armed = false;
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Reset: host connections go on the loop's next turn (see `process`).
impl WithVirtioState for Vsock {
    crate::virtio_state_accessors!();

    /// Only whole reads inside the 8-byte config (guest_cid) return data; the rest is zero.
    fn read_device_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| self.state.config_space.get(start..end))
        {
            data.copy_from_slice(src);
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.state.queue_events.init(ops);
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            tracing::error!("vsock: registering timerfd: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let turn = self.state.queue_events.process(&events, ops);
        if turn.reset {
            // Every host stream of the old session goes, before any of its events is handled.
            self.muxer.teardown(ops);
        }
        let fd = events.fd();
        let mut notify = false;
        match turn.event {
            Event::Activate => {
                if self.state.active.is_some() {
                    self.muxer.register_listener(ops);
                }
                // The driver may have queued packets before its eventfds were registered.
                notify |= self.process_tx();
            }
            Event::Queue(TX_QUEUE) => notify |= self.process_tx(),
            // RX: new buffers, served below. EVENT: the device never posts events (there is no
            // migration), so its buffers just stay with us.
            Event::Queue(_) | Event::Stale => {}
            Event::Other if fd == self.timer.as_raw_fd() => {
                let _ = self.timer.wait();
                self.muxer.on_timer(ops);
            }
            Event::Other if fd == self.muxer.listener_fd() => self.muxer.accept(ops),
            Event::Other => self.muxer.on_host_event(fd, events.event_set(), ops),
        }
        notify |= self.process_rx();
        self.muxer.sync(ops);
        self.update_timer();
        if notify {
            if let Some(a) = self.state.active.as_ref() {
                a.signal_used("vsock");
            }
        }
    }
}
