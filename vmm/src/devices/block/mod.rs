//! virtio-block over a raw image file (or host block device), one request queue.
//!
//! Requests are parsed and bounds-checked in [`request`] before the image is touched; the
//! device itself only moves chains between the queue and the parser and signals the guest.

mod disk;
pub mod request;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};

pub use disk::Disk;
use request::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, SECTOR_SIZE, SEG_MAX};

use crate::virtio::{
    device_type, ActivateContext, ActivateError, Event, GuestMemory, Interrupt, InterruptKind,
    QueueEvents, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// `sizeof(struct virtio_blk_config)` up to and including `write_zeroes_may_unmap`.
pub const CONFIG_LEN: usize = 60;
/// Discard granularity in sectors: the usual filesystem block, which is what punching a hole
/// actually frees.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;

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

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<dyn Interrupt>,
}

pub struct Block {
    disk: Disk,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    queue_max_sizes: [u16; 1],
    queue_events: QueueEvents,
    active: Option<Active>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("acked_features", &self.acked_features)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Block {
    pub fn new(path: &Path, read_only: bool) -> Result<Block, Error> {
        Self::with_disk(Disk::open(path, read_only)?)
    }

    pub fn with_disk(disk: Disk) -> Result<Block, Error> {
        let mut avail_features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if disk.read_only() {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            avail_features |= 1 << VIRTIO_BLK_F_FLUSH;
            if disk.supports_discard() {
                avail_features |= 1 << VIRTIO_BLK_F_DISCARD;
            }
            if disk.supports_write_zeroes() {
                avail_features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
            }
        }
        let config = build_config(&disk);
        Ok(Block {
            disk,
            avail_features,
            acked_features: 0,
            config,
            queue_max_sizes: [QUEUE_SIZE],
            queue_events: QueueEvents::new("virtio-blk").map_err(Error::EventFd)?,
            active: None,
        })
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Serves every available chain, then signals the guest if it asked to be.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut used_any = false;
        loop {
            if let Err(e) = active.queue.disable_notification(mem) {
                tracing::warn!(error = %e, "virtio-blk: queue unusable");
                return;
            }
            while let Some(chain) = active.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let used_len = request::handle_chain(mem, chain, &mut self.disk);
                if let Err(e) = active.queue.add_used(mem, head, used_len) {
                    tracing::warn!(error = %e, "virtio-blk: add_used failed");
                    return;
                }
                used_any = true;
            }
            match active.queue.enable_notification(mem) {
                // More chains arrived while notifications were off.
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-blk: queue unusable");
                    break;
                }
            }
        }
        if used_any && active.queue.needs_notification(mem).unwrap_or(true) {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Queue) {
                tracing::warn!(error = %e, "virtio-blk: interrupt failed");
            }
        }
    }
}

fn build_config(disk: &Disk) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put =
        |offset: usize, bytes: &[u8]| c[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &disk.capacity_sectors().to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    put(34, &1u16.to_le_bytes());
    if disk.supports_discard() {
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
        put(44, &DISCARD_ALIGNMENT_SECTORS.to_le_bytes());
    }
    if disk.supports_write_zeroes() {
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &MAX_DISCARD_SEGMENTS.to_le_bytes());
        put(56, &[u8::from(disk.supports_discard())]);
    }
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable: `writeback` needs VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        ctx.check_queue_count(1)?;
        let ActivateContext {
            mem,
            queues,
            queue_events,
            interrupt,
        } = ctx;
        let Some(mut queue) = queues.into_iter().next() else {
            return Err(ActivateError::QueueCount {
                expected: 1,
                actual: 0,
            });
        };
        queue.set_event_idx(self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        self.queue_events.activate(queue_events)
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.queue_events.reset();
        self.acked_features = 0;
        true
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.queue_events.process(&events, ops).event {
            // On activation too: the driver may have queued requests before we were listening.
            Event::Activate | Event::Queue(_) => self.process_queue(),
            Event::Stale | Event::Other => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.queue_events.init(ops);
    }
}
