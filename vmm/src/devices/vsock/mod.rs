//! virtio-vsock (virtio spec 1.2, 5.10) with a hybrid, Unix-socket host side, like Firecracker's:
//! the guest talks AF_VSOCK; the host talks to Unix sockets next to `uds_path`.
//!
//! - guest → host: a guest connect to (CID 2, port P) connects the VMM to `{uds_path}_{P}`.
//! - host → guest: the VMM listens on `uds_path`; a client writes `CONNECT <port>\n`, gets
//!   `OK <local port>\n` once the guest accepted, then the stream carries the bytes.
//!
//! Layout: [`packet`] parses and builds packets in guest memory (pure functions, fuzzable),
//! [`connection`] is the per-connection state machine with credit-based flow control, and
//! [`muxer`] routes packets and host events; [`device`] is the virtio device around them, [`event_handler`] its
//! event-loop hook.

pub mod connection;
mod device;
mod event_handler;
pub mod muxer;
pub mod packet;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use device::Vsock;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
pub(crate) const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Deadline sweep period while connections wait on a timeout.
pub(crate) const TIMER_PERIOD: Duration = Duration::from_millis(250);

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
