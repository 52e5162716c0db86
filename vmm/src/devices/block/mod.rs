//! virtio-block over a raw image file (or host block device), one request queue.
//!
//! Requests are parsed and bounds-checked in [`request`] before the image is touched; the
//! device ([`device`]) only moves chains between the queue and the parser and signals the
//! guest, when its event-loop hook ([`event_handler`]) says so.

mod device;
mod disk;
mod event_handler;
pub mod request;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use device::Block;
pub use disk::Disk;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// `sizeof(struct virtio_blk_config)` up to and including `write_zeroes_may_unmap`.
pub const CONFIG_LEN: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {0} is neither a regular file nor a block device")]
    NotAFile(PathBuf),
    #[error("disk image {path} is locked by another user (another VM?): {source}")]
    Locked {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-blk eventfd: {0}")]
    EventFd(std::io::Error),
}
