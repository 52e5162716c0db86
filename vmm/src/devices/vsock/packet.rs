//! The virtio-vsock packet (virtio spec 1.2, 5.10.6): a 44-byte little-endian header followed by
//! `len` payload bytes, and the two pure functions that move packets across the guest boundary:
//! [`parse_tx`] (guest → device, every field validated) and [`RxBuffer`] (device → guest).
//!
//! Both treat a descriptor chain as a byte stream (the spec lets the driver split header and
//! payload over descriptors any way it likes), reach guest memory only through virtio-queue's
//! `Reader`/`Writer` (which bounds-check every descriptor against guest memory), and insist on
//! the direction the spec gives each queue: tx buffers device-readable, rx buffers
//! device-writable.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::ByteValued;

use crate::virtio::GuestMemory;

/// Size of the packet header on the wire.
pub const HDR_SIZE: usize = 44;
/// The host's well-known CID.
pub const HOST_CID: u64 = 2;
/// Largest payload we accept from or give to the guest in one packet (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// VIRTIO_VSOCK_TYPE_STREAM, the only socket type this device offers.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// The header exactly as laid out in guest memory (packed, little-endian fields).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct RawHeader {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

// SAFETY: RawHeader is plain old data (integers only, packed, no padding), so any byte pattern
// is a valid value.
unsafe impl ByteValued for RawHeader {}

const _: () = assert!(std::mem::size_of::<RawHeader>() == HDR_SIZE);

/// A decoded packet header (host byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl From<RawHeader> for Header {
    fn from(r: RawHeader) -> Header {
        Header {
            src_cid: u64::from_le(r.src_cid),
            dst_cid: u64::from_le(r.dst_cid),
            src_port: u32::from_le(r.src_port),
            dst_port: u32::from_le(r.dst_port),
            len: u32::from_le(r.len),
            type_: u16::from_le(r.type_),
            op: u16::from_le(r.op),
            flags: u32::from_le(r.flags),
            buf_alloc: u32::from_le(r.buf_alloc),
            fwd_cnt: u32::from_le(r.fwd_cnt),
        }
    }
}

impl From<Header> for RawHeader {
    fn from(h: Header) -> RawHeader {
        RawHeader {
            src_cid: h.src_cid.to_le(),
            dst_cid: h.dst_cid.to_le(),
            src_port: h.src_port.to_le(),
            dst_port: h.dst_port.to_le(),
            len: h.len.to_le(),
            type_: h.type_.to_le(),
            op: h.op.to_le(),
            flags: h.flags.to_le(),
            buf_alloc: h.buf_alloc.to_le(),
            fwd_cnt: h.fwd_cnt.to_le(),
        }
    }
}

/// Why a well-addressed packet (right CIDs) is still invalid. The device answers these with a
/// RST for the connection the header names.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("socket type {0} (only SOCK_STREAM is offered)")]
    Type(u16),
    #[error("unknown op {0}")]
    Op(u16),
    #[error("payload length {0} exceeds the {MAX_PKT_PAYLOAD}-byte maximum")]
    PayloadTooLarge(u32),
    #[error("payload length {len} but the chain holds {available} bytes after the header")]
    PayloadBeyondChain { len: u32, available: usize },
    #[error("op {op} carries a {len}-byte payload (only RW may)")]
    PayloadOnControl { op: u16, len: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("tx chain has a device-writable descriptor")]
    WritableDescriptor,
    #[error("rx chain has a device-readable descriptor")]
    ReadableDescriptor,
    #[error("descriptor outside guest memory: {0}")]
    Memory(virtio_queue::Error),
    #[error("chain holds {0} bytes, less than a {HDR_SIZE}-byte header")]
    ShortChain(usize),
    #[error("guest memory access: {0}")]
    Access(std::io::Error),
    #[error("source CID {0} is not the guest's")]
    SrcCid(u64),
    #[error("destination CID {0} is not the host's")]
    DstCid(u64),
    #[error("packet {src_port}->{dst_port}: {reason}", src_port = hdr.src_port, dst_port = hdr.dst_port)]
    Invalid { hdr: Header, reason: Invalid },
}

/// Parses one guest → host (tx queue) chain.
///
/// Returns the validated header; for RW packets the payload (exactly `len` bytes) is copied into
/// `payload`, which is otherwise left empty. Every guest-controlled value is checked: chain
/// direction and memory bounds, header size, CIDs (`src_cid` must be `guest_cid`, `dst_cid` the
/// host), socket type, op, and `len` against both [`MAX_PKT_PAYLOAD`] and the chain's length.
/// Never panics, whatever the chain and memory hold.
pub fn parse_tx(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    guest_cid: u64,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    payload.clear();
    if chain.clone().any(|d| d.is_write_only()) {
        return Err(PacketError::WritableDescriptor);
    }
    let mut reader: Reader = Reader::new(mem, chain).map_err(PacketError::Memory)?;
    if reader.available_bytes() < HDR_SIZE {
        return Err(PacketError::ShortChain(reader.available_bytes()));
    }
    let hdr: Header = reader
        .read_obj::<RawHeader>()
        .map_err(PacketError::Access)?
        .into();
    if hdr.src_cid != guest_cid {
        return Err(PacketError::SrcCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::DstCid(hdr.dst_cid));
    }
    let invalid = |reason| PacketError::Invalid { hdr, reason };
    if hdr.type_ != TYPE_STREAM {
        return Err(invalid(Invalid::Type(hdr.type_)));
    }
    if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op) {
        return Err(invalid(Invalid::Op(hdr.op)));
    }
    if hdr.op != op::RW {
        if hdr.len != 0 {
            return Err(invalid(Invalid::PayloadOnControl {
                op: hdr.op,
                len: hdr.len,
            }));
        }
        return Ok(hdr);
    }
    if hdr.len > MAX_PKT_PAYLOAD {
        return Err(invalid(Invalid::PayloadTooLarge(hdr.len)));
    }
    let len = hdr.len as usize;
    let available = reader.available_bytes();
    if len > available {
        return Err(invalid(Invalid::PayloadBeyondChain {
            len: hdr.len,
            available,
        }));
    }
    payload.resize(len, 0);
    reader
        .read_exact(&mut payload[..])
        .map_err(PacketError::Access)?;
    Ok(hdr)
}

/// A guest rx buffer (one rx queue chain), validated and ready to receive one packet.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

/// virtio-queue's Writer is not Debug: its room is what matters.
impl std::fmt::Debug for RxBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBuffer")
            .field("available_bytes", &self.writer.available_bytes())
            .finish()
    }
}

impl<'a> RxBuffer<'a> {
    /// Checks the chain is device-writable, inside guest memory and large enough for a header.
    pub fn new(
        mem: &'a GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<RxBuffer<'a>, PacketError> {
        if chain.clone().any(|d| !d.is_write_only()) {
            return Err(PacketError::ReadableDescriptor);
        }
        let writer: Writer = Writer::new(mem, chain).map_err(PacketError::Memory)?;
        if writer.available_bytes() < HDR_SIZE {
            return Err(PacketError::ShortChain(writer.available_bytes()));
        }
        Ok(RxBuffer { writer })
    }

    /// How many payload bytes fit after the header (capped at [`MAX_PKT_PAYLOAD`]).
    pub fn payload_capacity(&self) -> usize {
        (self.writer.available_bytes() - HDR_SIZE).min(MAX_PKT_PAYLOAD as usize)
    }

    /// Writes `hdr` (with `len` set from `payload`) and the payload; returns the used length.
    /// `payload` must fit [`Self::payload_capacity`]. Call at most once per buffer.
    pub fn write(&mut self, mut hdr: Header, payload: &[u8]) -> Result<u32, PacketError> {
        if payload.len() > self.payload_capacity() {
            return Err(PacketError::ShortChain(self.writer.available_bytes()));
        }
        // Bounded by MAX_PKT_PAYLOAD above; refused like a short chain if not.
        let too_long = |_| PacketError::ShortChain(self.writer.available_bytes());
        hdr.len = u32::try_from(payload.len()).map_err(too_long)?;
        let used = u32::try_from(HDR_SIZE + payload.len()).map_err(too_long)?;
        self.writer
            .write_obj(RawHeader::from(hdr))
            .map_err(PacketError::Access)?;
        self.writer
            .write_all(payload)
            .map_err(PacketError::Access)?;
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use crate::virtio::test_utils::{len32, F_NEXT, F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils;

    const CID: u64 = 3;
    const MEM_SIZE: usize = 0x10_0000;

    fn memory() -> GuestMemory {
        test_utils::memory(MEM_SIZE)
    }

    fn hdr(op: u16, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    fn put_hdr(mem: &GuestMemory, addr: u64, h: Header) {
        mem.write_obj(RawHeader::from(h), GuestAddress(addr))
            .unwrap();
    }

    /// Builds one chain of (addr, len, writable) descriptors and parses it as a tx packet.
    fn parse(
        mem: &GuestMemory,
        descs: &[(u64, u32, bool)],
    ) -> Result<(Header, Vec<u8>), PacketError> {
        let vq = MockSplitQueue::new(mem, 16);
        test_utils::add_chain(&vq, 0, descs);
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(mem).unwrap();
        let mut payload = Vec::new();
        parse_tx(mem, chain, CID, &mut payload).map(|h| (h, payload))
    }

    #[test]
    fn header_roundtrip_is_little_endian_44_bytes() {
        let mem = memory();
        let h = Header {
            src_cid: 0x0102030405060708,
            dst_cid: 2,
            src_port: 0x0a0b0c0d,
            dst_port: 5,
            len: 7,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x11223344,
            fwd_cnt: 9,
        };
        put_hdr(&mem, 0x8000, h);
        let mut raw = [0u8; HDR_SIZE];
        mem.read_slice(&mut raw, GuestAddress(0x8000)).unwrap();
        assert_eq!(&raw[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&raw[16..20], &[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(&raw[40..44], &[9, 0, 0, 0]);
        let back: Header = mem
            .read_obj::<RawHeader>(GuestAddress(0x8000))
            .unwrap()
            .into();
        assert_eq!(back, h);
    }

    #[test]
    fn parses_rw_with_header_and_payload_split_any_way() {
        let mem = memory();
        // Header in its own descriptor, payload in a second (Linux 6.1 layout).
        put_hdr(&mem, 0x8000, hdr(op::RW, 5));
        mem.write_slice(b"hello", GuestAddress(0x9000)).unwrap();
        let (h, p) = parse(
            &mem,
            &[(0x8000, len32(HDR_SIZE), false), (0x9000, 5, false)],
        )
        .unwrap();
        assert_eq!(h.op, op::RW);
        assert_eq!(p, b"hello");

        // Header and payload in one descriptor; header split across two.
        put_hdr(&mem, 0xa000, hdr(op::RW, 3));
        mem.write_slice(b"abc", GuestAddress(0xa000 + HDR_SIZE as u64))
            .unwrap();
        let (_, p) = parse(&mem, &[(0xa000, len32(HDR_SIZE) + 3, false)]).unwrap();
        assert_eq!(p, b"abc");
        let (_, p) = parse(
            &mem,
            &[(0xa000, 10, false), (0xa00a, len32(HDR_SIZE) - 7, false)],
        )
        .unwrap();
        assert_eq!(p, b"abc");
    }

    #[test]
    fn rejects_hostile_chains() {
        let mem = memory();
        put_hdr(&mem, 0x8000, hdr(op::REQUEST, 0));
        let h = len32(HDR_SIZE);
        // Outside memory, past its end, wrapping the address space.
        assert!(matches!(
            parse(&mem, &[(0x4000_0000, h, false)]),
            Err(PacketError::Memory(_))
        ));
        assert!(matches!(
            parse(&mem, &[(MEM_SIZE as u64 - 8, h, false)]),
            Err(PacketError::Memory(_))
        ));
        assert!(matches!(
            parse(&mem, &[(u64::MAX - 4, h, false)]),
            Err(PacketError::Memory(_))
        ));
        // Zero-length and short headers.
        assert!(matches!(
            parse(&mem, &[(0x8000, 0, false)]),
            Err(PacketError::ShortChain(0))
        ));
        assert!(matches!(
            parse(&mem, &[(0x8000, h - 1, false)]),
            Err(PacketError::ShortChain(43))
        ));
        // Wrong direction.
        assert!(matches!(
            parse(&mem, &[(0x8000, h, true)]),
            Err(PacketError::WritableDescriptor)
        ));
        assert!(matches!(
            parse(&mem, &[(0x8000, h, false), (0x9000, 8, true)]),
            Err(PacketError::WritableDescriptor)
        ));
        // Good control packet for reference.
        assert!(parse(&mem, &[(0x8000, h, false)]).is_ok());
    }

    #[test]
    fn rejects_bad_header_fields() {
        let mem = memory();
        let h = len32(HDR_SIZE);
        let check = |hd: Header, extra: u32| {
            put_hdr(&mem, 0x8000, hd);
            parse(&mem, &[(0x8000, h + extra, false)])
        };
        let mut bad = hdr(op::REQUEST, 0);
        bad.src_cid = 4;
        assert!(matches!(check(bad, 0), Err(PacketError::SrcCid(4))));
        let mut bad = hdr(op::REQUEST, 0);
        bad.dst_cid = 1;
        assert!(matches!(check(bad, 0), Err(PacketError::DstCid(1))));
        let mut bad = hdr(op::REQUEST, 0);
        bad.src_cid = CID | (1 << 32);
        assert!(matches!(check(bad, 0), Err(PacketError::SrcCid(_))));
        let mut bad = hdr(op::REQUEST, 0);
        bad.type_ = 2;
        assert!(matches!(
            check(bad, 0),
            Err(PacketError::Invalid {
                reason: Invalid::Type(2),
                ..
            })
        ));
        for o in [0u16, 8, 0xffff] {
            assert!(matches!(
                check(hdr(o, 0), 0),
                Err(PacketError::Invalid {
                    reason: Invalid::Op(_),
                    ..
                })
            ));
        }
        assert!(matches!(
            check(hdr(op::RW, MAX_PKT_PAYLOAD + 1), MAX_PKT_PAYLOAD + 1),
            Err(PacketError::Invalid {
                reason: Invalid::PayloadTooLarge(_),
                ..
            })
        ));
        assert!(matches!(
            check(hdr(op::RW, u32::MAX), 16),
            Err(PacketError::Invalid {
                reason: Invalid::PayloadTooLarge(_),
                ..
            })
        ));
        assert!(matches!(
            check(hdr(op::RW, 100), 99),
            Err(PacketError::Invalid {
                reason: Invalid::PayloadBeyondChain {
                    len: 100,
                    available: 99
                },
                ..
            })
        ));
        assert!(matches!(
            check(hdr(op::SHUTDOWN, 4), 4),
            Err(PacketError::Invalid {
                reason: Invalid::PayloadOnControl { .. },
                ..
            })
        ));
        // A max-size payload is fine.
        assert!(check(hdr(op::RW, MAX_PKT_PAYLOAD), MAX_PKT_PAYLOAD).is_ok());
    }

    #[test]
    fn rx_buffer_validates_and_writes() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs: [RawDescriptor; 5] = [
            // chain 0: header + 8-byte payload area, both writable
            SplitDescriptor::new(0x8000, len32(HDR_SIZE), F_WRITE | F_NEXT, 1).into(),
            SplitDescriptor::new(0x9000, 8, F_WRITE, 0).into(),
            // chain 2: readable
            SplitDescriptor::new(0xa000, 64, 0, 0).into(),
            // chain 3: too short
            SplitDescriptor::new(0xb000, 43, F_WRITE, 0).into(),
            // chain 4: outside memory
            SplitDescriptor::new(0x1_0000_0000, 64, F_WRITE, 0).into(),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();

        let mut buf = RxBuffer::new(&mem, q.pop_descriptor_chain(&mem).unwrap()).unwrap();
        assert_eq!(buf.payload_capacity(), 8);
        let mut h = hdr(op::RW, 0);
        h.len = 999; // overwritten from the payload
        assert_eq!(buf.write(h, b"12345").unwrap(), len32(HDR_SIZE) + 5);
        let back: Header = mem
            .read_obj::<RawHeader>(GuestAddress(0x8000))
            .unwrap()
            .into();
        assert_eq!(back.len, 5);
        let mut p = [0u8; 5];
        mem.read_slice(&mut p, GuestAddress(0x9000)).unwrap();
        assert_eq!(&p, b"12345");

        assert!(matches!(
            RxBuffer::new(&mem, q.pop_descriptor_chain(&mem).unwrap()),
            Err(PacketError::ReadableDescriptor)
        ));
        assert!(matches!(
            RxBuffer::new(&mem, q.pop_descriptor_chain(&mem).unwrap()),
            Err(PacketError::ShortChain(43))
        ));
        assert!(matches!(
            RxBuffer::new(&mem, q.pop_descriptor_chain(&mem).unwrap()),
            Err(PacketError::Memory(_))
        ));
    }

    /// Random chains over memory seeded with random and near-valid headers: the parsers never
    /// panic, and whatever `parse_tx` accepts satisfies every documented invariant.
    #[test]
    #[allow(clippy::cast_possible_truncation)] // keeping the low bits of random numbers is the point
    fn random_chains_never_panic_and_accepted_packets_are_valid() {
        let seed = getrandom::u64().unwrap() | 1;
        let mut x = seed;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
        let mut accepted = 0;
        for _ in 0..3000 {
            let mut junk = vec![0u8; 0x4000];
            for b in junk.iter_mut() {
                *b = rnd() as u8;
            }
            mem.write_slice(&junk, GuestAddress(0x8000)).unwrap();
            // Often a plausible header, so the checks past the CIDs get exercised too.
            if rnd() % 2 == 0 {
                let mut h = hdr((rnd() % 9) as u16, (rnd() % 96) as u32);
                if rnd() % 4 == 0 {
                    h.type_ = (rnd() % 3) as u16;
                }
                put_hdr(&mem, 0x8000, h);
            }
            let n = 1 + rnd() % 4;
            let vq = MockSplitQueue::new(&mem, 16);
            let descs: Vec<RawDescriptor> = (0..n)
                .map(|i| {
                    let addr = match rnd() % 8 {
                        0 => rnd(),
                        1 => 0x2_0000 - rnd() % 64,
                        2..=4 if i == 0 => 0x8000,
                        _ => 0x8000 + rnd() % 0x4000,
                    };
                    let len = match rnd() % 8 {
                        0 => rnd() as u32,
                        1..=3 => (HDR_SIZE as u64 + rnd() % 100) as u32,
                        _ => (rnd() % 160) as u32,
                    };
                    let mut flags = if rnd() % 4 == 0 {
                        (rnd() % 8) as u16 & !F_NEXT
                    } else {
                        0
                    };
                    if i + 1 < n {
                        flags |= F_NEXT;
                    }
                    let next = if rnd() % 8 == 0 {
                        (rnd() % 16) as u16
                    } else {
                        i as u16 + 1
                    };
                    SplitDescriptor::new(addr, len, flags, next).into()
                })
                .collect();
            vq.add_desc_chains(&descs, 0).unwrap();
            let mut q: Queue = vq.create_queue().unwrap();
            let Some(chain) = q.pop_descriptor_chain(&mem) else {
                continue;
            };
            let mut payload = Vec::new();
            if let Ok(h) = parse_tx(&mem, chain.clone(), CID, &mut payload) {
                accepted += 1;
                assert_eq!(
                    (h.src_cid, h.dst_cid, h.type_),
                    (CID, HOST_CID, TYPE_STREAM),
                    "seed {seed}"
                );
                assert!(
                    (op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op),
                    "seed {seed}"
                );
                assert_eq!(
                    payload.len(),
                    if h.op == op::RW { h.len as usize } else { 0 }
                );
                assert!(h.len <= MAX_PKT_PAYLOAD, "seed {seed}");
            }
            if let Ok(mut buf) = RxBuffer::new(&mem, chain) {
                let cap = buf.payload_capacity();
                assert!(
                    buf.write(hdr(op::RW, 0), &vec![0; cap]).is_ok(),
                    "seed {seed}"
                );
            }
        }
        assert!(accepted > 0, "no chain was ever accepted (seed {seed})");
    }
}
