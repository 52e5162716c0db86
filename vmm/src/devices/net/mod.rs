//! virtio-net (virtio spec 1.2, 5.1) over a TAP device, one rx and one tx queue.
//!
//! The TAP is opened by the caller (stage1-kvm, in the pod's network namespace) with
//! IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, so each frame on it carries the same 12-byte
//! `virtio_net_hdr_v1` the guest uses: checksum and segmentation offloads pass through
//! unchanged, and the device only copies bytes. [`request`] moves one frame between a
//! descriptor chain and a buffer (pure functions, fuzzable, every length and address checked);
//! [`tap`] is the TAP descriptor and its ioctls; [`device`] is the virtio device (features,
//! config space, the rx/tx paths with their stall and rate-limit states) and [`event_handler`]
//! its event-loop hook.

mod device;
mod event_handler;
pub mod request;
pub mod tap;
#[cfg(test)]
mod tests;

pub use device::{Net, NetStats};
pub use tap::Tap;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_config` up to and including `mtu`: mac[6], status, max_virtqueue_pairs,
/// mtu.
pub const CONFIG_LEN: usize = 12;
/// Smallest MTU an IPv4 host must accept (RFC 791); IPv6 needs 1280.
pub const MIN_MTU: u16 = 68;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening TAP interface {name}: {source}")]
    OpenTap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TAP descriptor {fd}: {source}")]
    DupFd {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("TAP descriptor: {what}: {source}")]
    TapIoctl {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "TAP descriptor is not a TAP opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (flags {0:#x})"
    )]
    NotVnetTap(i32),
    #[error("virtio-net eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("virtio-net rate limiter timerfd: {0}")]
    TimerFd(#[source] std::io::Error),
}
