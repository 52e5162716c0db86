//! The virtio-blk device: its features and config space from the disk, and its queue served
//! through the request parser.

use std::path::Path;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::request::{self, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, SECTOR_SIZE, SEG_MAX};
use super::{Disk, Error, CONFIG_LEN, QUEUE_SIZE};
use crate::virtio::{device_type, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1};

/// Discard granularity in sectors: the usual filesystem block, which is what punching a hole
/// actually frees.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;

pub struct Block {
    disk: Disk,
    pub(super) state: VirtioState,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("acked_features", &self.state.acked_features)
            .field("active", &self.state.active.is_some())
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
        let state = VirtioState::new(
            "virtio-blk",
            device_type::BLOCK,
            avail_features,
            vec![QUEUE_SIZE],
            build_config(&disk).to_vec(),
        )
        .map_err(Error::EventFd)?;
        Ok(Block { disk, state })
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Serves every available chain, then signals the guest if it asked to be.
    pub fn process_queue(&mut self) {
        if let Some(active) = self.state.active.as_mut() {
            let disk = &mut self.disk;
            active.serve("virtio-blk", 0, |mem, chain| {
                request::handle_chain(mem, chain, disk)
            });
        }
    }
}

fn build_config(disk: &Disk) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put =
        |offset: usize, bytes: &[u8]| c[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &disk.capacity_sectors().to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    put(20, &u32::try_from(SECTOR_SIZE).expect("512").to_le_bytes());
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

impl WithVirtioState for Block {
    crate::virtio_state_accessors!();

    // Nothing is writable: `writeback` needs VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
}
