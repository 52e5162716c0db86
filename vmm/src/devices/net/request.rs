//! One frame between a descriptor chain and a host buffer (virtio 1.2, 5.1.6).
//!
//! Everything here is guest-controlled input: the chain shape, each descriptor's direction,
//! address and length. A tx chain is only readable descriptors holding a `virtio_net_hdr_v1`
//! and the frame, at most [`MAX_BUFFER_LEN`] bytes in all; an rx chain is only writable
//! descriptors inside guest memory (with room for the whole frame, or with
//! VIRTIO_NET_F_MRG_RXBUF for its share of it). Anything else is refused before a byte moves,
//! and the caller returns the chain to the guest.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory as _};

use crate::virtio::GuestMemory;

/// `sizeof(struct virtio_net_hdr_v1)`: the header of every frame with VIRTIO_F_VERSION_1,
/// whether or not VIRTIO_NET_F_MRG_RXBUF is negotiated.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame either side may send: a 64 KiB GSO packet plus its Ethernet and VLAN
/// headers (what Linux's virtio-net driver and the TAP allow).
pub const MAX_FRAME_LEN: usize = 65550;
/// A frame with its header.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("device-writable descriptor in a tx chain")]
    WritableInTx,
    #[error("device-readable descriptor in an rx chain")]
    ReadableInRx,
    #[error("descriptor {addr:#x}+{len} outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("tx chain of {0} bytes is shorter than the virtio-net header")]
    ShortTx(usize),
    #[error("tx chain longer than {MAX_BUFFER_LEN} bytes")]
    TxTooLong,
    #[error("rx chain of {have} bytes cannot hold a {need}-byte frame")]
    RxTooSmall { have: u64, need: usize },
}

/// Copies the header and frame a tx chain holds into `buf` (cleared first); returns its length.
pub fn read_tx_frame(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut Vec<u8>,
) -> Result<usize, FrameError> {
    buf.clear();
    for desc in chain {
        if desc.is_write_only() {
            return Err(FrameError::WritableInTx);
        }
        let len = desc.len() as usize;
        let start = buf.len();
        if len > MAX_BUFFER_LEN - start {
            return Err(FrameError::TxTooLong);
        }
        buf.resize(start + len, 0);
        mem.read_slice(&mut buf[start..], desc.addr())
            .map_err(|_| FrameError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
    }
    if buf.len() < VNET_HDR_LEN {
        return Err(FrameError::ShortTx(buf.len()));
    }
    Ok(buf.len())
}

/// One writable guest range of an rx chain, checked to lie inside guest memory.
pub type Segment = (GuestAddress, u32);

/// Checks that every descriptor of an rx chain is device-writable and inside guest memory and
/// appends its ranges (zero-length ones left out) to `segs`; returns the chain's capacity.
/// A refused chain leaves `segs` as it was.
pub fn rx_chain_segments(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    segs: &mut Vec<Segment>,
) -> Result<u64, FrameError> {
    let start = segs.len();
    let mut have = 0u64;
    for desc in chain {
        let bad = if !desc.is_write_only() {
            Some(FrameError::ReadableInRx)
        } else if !mem.check_range(desc.addr(), desc.len() as usize) {
            Some(FrameError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })
        } else {
            None
        };
        if let Some(e) = bad {
            segs.truncate(start);
            return Err(e);
        }
        if desc.len() > 0 {
            segs.push((desc.addr(), desc.len()));
        }
        have += u64::from(desc.len());
    }
    Ok(have)
}

/// Writes the start of `data` over `segs` (checked by [`rx_chain_segments`]); returns how many
/// bytes went, `data.len()` or the segments' capacity, whichever is smaller.
pub fn write_segments(
    mem: &GuestMemory,
    segs: &[Segment],
    data: &[u8],
) -> Result<usize, FrameError> {
    let mut rest = data;
    for &(addr, len) in segs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(len as usize);
        // Checked when the chain was taken; a failure now (memory is fixed for the VM's life)
        // is a bug, not input.
        mem.write_slice(&rest[..n], addr)
            .map_err(|_| FrameError::OutsideMemory { addr: addr.0, len })?;
        rest = &rest[n..];
    }
    Ok(data.len() - rest.len())
}

/// Scatters `frame` (header included) over the writable descriptors of an rx chain; returns
/// the used length. Checks the whole chain first, so a refused chain is left untouched.
pub fn write_rx_frame(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    frame: &[u8],
) -> Result<u32, FrameError> {
    let mut segs = Vec::new();
    let have = rx_chain_segments(mem, chain, &mut segs)?;
    if have < frame.len() as u64 {
        return Err(FrameError::RxTooSmall {
            have,
            need: frame.len(),
        });
    }
    let n = write_segments(mem, &segs, frame)?;
    Ok(u32::try_from(n).expect("frames are at most MAX_BUFFER_LEN"))
}

/// Sets the header's `num_buffers`: how many rx chains a frame spans (1 without
/// VIRTIO_NET_F_MRG_RXBUF). `frame` holds at least the header.
pub fn set_num_buffers(frame: &mut [u8], n: u16) {
    if let Some(b) = frame.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
        b.copy_from_slice(&n.to_le_bytes());
    }
}
