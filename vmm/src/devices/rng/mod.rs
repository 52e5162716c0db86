//! virtio-rng (virtio spec 1.2, 5.4): one request queue whose write-only buffers the device fills
//! with bytes from the host's getrandom(2).
//!
//! [`device`] is the device, [`request`] fills one chain, [`event_handler`] is its event-loop
//! hook.

mod device;
mod event_handler;
mod request;
#[cfg(test)]
mod tests;

pub use device::Rng;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 64;
/// At most this many random bytes per request: a guest asking for gigabytes gets a short answer
/// (the driver re-asks), so one chain can never stall the event loop.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the activation eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}
