//! virtio-console (virtio spec 1.2, 5.3) with a single port (no MULTIPORT): the guest's
//! transmitq goes to a host `Write`, and bytes from a pollable host fd (pipe, tty, socket) fill
//! the guest's receiveq.
//!
//! Input is read only when the guest has an rx buffer to put it in, one read per readiness
//! report, so nothing is buffered on the host side and the fd never needs O_NONBLOCK (which
//! would leak to whoever shares it, e.g. a terminal).
//!
//! [`device`] is the device, [`request`] moves bytes between chains and the host, and
//! [`event_handler`] is its event-loop hook.

mod device;
mod event_handler;
mod request;
#[cfg(test)]
mod tests;

pub use device::Console;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 64;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// VIRTIO_CONSOLE_F_EMERG_WRITE: the driver may write single characters to config `emerg_wr`
/// before (or without) setting up the queues.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;
/// `struct virtio_console_config`: cols, rows (u16), max_nr_ports, emerg_wr (u32).
const CONFIG_SIZE: u64 = 12;
const EMERG_WR_OFFSET: u64 = 8;
/// At most this much input per rx buffer, and the copy granule for output.
const MAX_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the activation eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}
