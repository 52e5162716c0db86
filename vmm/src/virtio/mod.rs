//! The contract between the virtio-mmio transport and the device models.
//!
//! Devices are plain structs fed by the event loop (Firecracker's shape):
//! - the transport owns the virtio-mmio registers, negotiates features and queue layout with the
//!   driver, validates every value the guest writes, and on DRIVER_OK calls
//!   [`VirtioDevice::activate`] with the ready queues, the queue-notify eventfds (registered as
//!   KVM ioeventfds) and an [`Interrupt`] to signal used buffers;
//! - a device model keeps what every device keeps (features, queue sizes, config space, the
//!   live session) in a [`VirtioState`] and implements [`WithVirtioState`], from which its
//!   `VirtioDevice` follows (`state.rs`);
//! - each device also implements `event_manager::MutEventSubscriber`; because `activate` and
//!   `reset` have no access to the event loop, a device hands its queue eventfds to a
//!   [`QueueEvents`], which wakes the loop through an activate eventfd and there (de)registers
//!   them; the device registers any backend fds (e.g. vsock Unix sockets) itself;
//! - devices never trust guest memory: every descriptor address and length is checked through
//!   vm-memory (`GuestMemory::checked_*`, `read_obj`, `write_slice`), chains are walked through
//!   virtio-queue's iterators (which bound chain length and loops), and a malformed request is
//!   answered with an error status or dropped, never a panic.

pub mod mmio;
mod queue_events;
mod state;
#[cfg(test)]
pub(crate) mod test_utils;

pub use queue_events::{Event, QueueEvents, Turn};
pub use state::{ActiveQueues, RxSource, VirtioState, WithVirtioState};

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Virtio device IDs (virtio spec 1.2, 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
    pub const FS: u32 = 26;
}

/// VIRTIO_F_VERSION_1: every ark device is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why a device interrupts the driver (virtio-mmio InterruptStatus bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// Used buffers were added to a queue.
    Queue,
    /// The device configuration space changed.
    Config,
}

/// Signals the guest: sets the transport's InterruptStatus bit and raises the device's irq.
pub trait Interrupt: Send + Sync + std::fmt::Debug {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()>;
}

/// Everything a device needs once the driver has set DRIVER_OK.
///
/// The transport (`mmio.rs`) activates a device only when every one of its queues is ready; a
/// failed activation sets DEVICE_NEEDS_RESET. It calls `activate`, `reset`, `read_config` and
/// `write_config` on a vCPU thread (which runs under a seccomp filter: no new fds, no
/// sockets, no thread spawns there; do such work in the event loop after `activate_evt`).
#[derive(Debug)]
pub struct ActivateContext {
    pub mem: GuestMemory,
    /// One per queue, in queue-index order, already validated by the transport (size, alignment,
    /// areas inside guest memory), marked ready, and with event_idx enabled when the driver
    /// accepted VIRTIO_RING_F_EVENT_IDX.
    pub queues: Vec<Queue>,
    /// The eventfd the guest's QueueNotify write for queue `i` signals.
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<dyn Interrupt>,
}

impl ActivateContext {
    /// Refuses a context without exactly `expected` queues and as many queue eventfds.
    pub fn check_queue_count(&self, expected: usize) -> Result<(), ActivateError> {
        for actual in [self.queues.len(), self.queue_events.len()] {
            if actual != expected {
                return Err(ActivateError::QueueCount { expected, actual });
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device needs {expected} queues, driver set up {actual}")]
    QueueCount { expected: usize, actual: usize },
    #[error("{device}: waking the event loop: {source}")]
    Kick {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("device activation: {0}")]
    Other(String),
}

/// A virtio device model behind a virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// One of [`device_type`].
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the device's queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (include [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// Features the driver accepted (a subset of `avail_features`, checked by the transport).
    fn set_acked_features(&mut self, features: u64);
    /// Reads device config space at `offset` (bounds are the device's to check: reads outside it
    /// leave `data` zeroed).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; out-of-range or read-only writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving the queues (see the module docs for how queue events reach the device).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Driver reset: drop queues and in-flight state. Returns false if the device cannot reset,
    /// in which case the transport marks it DEVICE_NEEDS_RESET.
    fn reset(&mut self) -> bool;
}

/// Copies the in-range part of `config` at `offset` into `data`; the rest stays zeroed.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if offset >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - offset);
    data[..n].copy_from_slice(&config[offset..offset + n]);
}
