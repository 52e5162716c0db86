//! Shared input decoding for the fuzz targets: turns fuzz bytes into one virtqueue descriptor
//! chain over a small guest memory, the way a (hostile) driver would present it.
//!
//! Input: `[n: u8]`, then `n` descriptors of `[addr: u16 LE, len: u16 LE, flags: u8, next: u8]`,
//! then payload bytes copied to guest memory at [`PAYLOAD`]. Descriptor addresses are relative to
//! `PAYLOAD` (so most land in memory, some straddle its end); flag bit 7 makes the address
//! `u64::MAX - addr` and bit 6 makes the length `len << 16`, to reach the wrap-around and huge
//! cases. The low 3 flag bits are the virtio NEXT/WRITE/INDIRECT bits.

use virtio_queue::{desc::split::Descriptor, desc::RawDescriptor, DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::virtio::GuestMemory;

pub const MEM_SIZE: usize = 0x1_0000;
pub const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
pub const PAYLOAD: u64 = 0x1000;

fn descriptor(raw: &[u8]) -> RawDescriptor {
    let addr = u64::from(u16::from_le_bytes([raw[0], raw[1]]));
    let len = u32::from(u16::from_le_bytes([raw[2], raw[3]]));
    let flags = raw[4];
    let addr = if flags & 0x80 != 0 {
        u64::MAX - addr
    } else {
        PAYLOAD + addr
    };
    let len = if flags & 0x40 != 0 { len << 16 } else { len };
    RawDescriptor::from(Descriptor::new(
        addr,
        len,
        u16::from(flags & 0x7),
        u16::from(raw[5]),
    ))
}

/// Lays `data` out in a fresh guest memory and hands the device the chain at avail[0].
pub fn with_chain(
    data: &[u8],
    memory: Option<&GuestMemory>,
    f: impl FnOnce(&GuestMemory, DescriptorChain<&GuestMemory>),
) {
    let owned;
    let mem = match memory {
        Some(m) => m,
        None => {
            owned = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
            &owned
        }
    };
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(usize::from(QUEUE_SIZE));
    let Some(table) = rest.get(..n * 6) else {
        return;
    };
    let payload = &rest[n * 6..];
    let payload = &payload[..payload.len().min(MEM_SIZE - PAYLOAD as usize)];
    mem.write_slice(&[0u8; 0x1000], GuestAddress(0)).unwrap();
    mem.write_slice(payload, GuestAddress(PAYLOAD)).unwrap();
    for (i, raw) in table.chunks_exact(6).enumerate() {
        mem.write_obj(descriptor(raw), GuestAddress(DESC_TABLE + 16 * i as u64))
            .unwrap();
    }
    // avail: flags 0, idx 1, ring[0] = head 0.
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);
    if let Some(chain) = queue.pop_descriptor_chain(mem) {
        f(mem, chain);
    }
}
