//! Parsing and execution of one virtio-blk request (virtio 1.2, 5.2.6).
//!
//! Everything here is guest-controlled input: the chain shape, every descriptor address and
//! length, the header, the sector and the discard segments. [`parse`] checks all of it before
//! the backing file is touched; [`handle_chain`] turns any failure into an error status (when a
//! status byte can be written) or a dropped request.

use std::io::{Seek, SeekFrom};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemory as _};

use super::disk::Disk;
use crate::virtio::GuestMemory;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

// virtio_bindings spells the status codes as u32; they are 0, 1 and 2.
#[allow(clippy::cast_possible_truncation)] // 0
pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
#[allow(clippy::cast_possible_truncation)] // 1
pub const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
#[allow(clippy::cast_possible_truncation)] // 2
pub const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// Data segments per request we advertise (config `seg_max`).
pub const SEG_MAX: u32 = 128;
/// Header + data segments + status; anything longer is not a request a driver honouring
/// `seg_max` sends.
pub const MAX_CHAIN_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Segments per DISCARD / WRITE_ZEROES request (config `max_discard_seg`).
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Sectors per discard segment (config `max_discard_sectors`): 1 GiB keeps one request's
/// fallocate bounded.
pub const MAX_DISCARD_SECTORS: u32 = 1 << (30 - SECTOR_SHIFT);

const HEADER_LEN: usize = 16;
const DISCARD_SEGMENT_LEN: usize = 16;

/// `struct virtio_blk_outhdr`.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
struct RequestHeader {
    request_type: u32,
    ioprio: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
struct DiscardSegment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}
// SAFETY: plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for DiscardSegment {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }
}

/// Why a request was refused before touching the disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("descriptor chain longer than {MAX_CHAIN_DESCRIPTORS}")]
    ChainTooLong,
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor {addr:#x}+{len} outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("no device-writable status byte")]
    NoStatus,
    #[error("request header shorter than {HEADER_LEN} bytes")]
    ShortHeader,
    #[error("guest memory read failed")]
    MemoryRead,
    #[error("data length {0} is not a multiple of the sector size")]
    UnalignedLength(u64),
    #[error("sectors {sector}+{len}B beyond capacity")]
    OutOfRange { sector: u64, len: u64 },
    #[error("data buffers in the wrong direction for the request type")]
    WrongDirection,
    #[error("discard/write-zeroes payload of {0} bytes is malformed")]
    BadDiscardPayload(u64),
    #[error("discard/write-zeroes segment flags {0:#x} not supported")]
    BadDiscardFlags(u32),
    #[error("request type {0:?} not supported by this device")]
    Unsupported(RequestType),
    #[error("write to a read-only disk")]
    ReadOnly,
}

impl ParseError {
    fn status(&self) -> u8 {
        match self {
            ParseError::Unsupported(_) | ParseError::BadDiscardFlags(_) => STATUS_UNSUPP,
            _ => STATUS_IOERR,
        }
    }
}

/// A guest buffer already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// One discard/write-zeroes range, already checked against the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

/// A fully validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    /// Byte offset into the disk (IN/OUT).
    pub offset: u64,
    /// Guest buffers: device-writable for IN/GET_ID, device-readable for OUT.
    pub data: Vec<Segment>,
    pub ranges: Vec<Range>,
    pub status: GuestAddress,
}

/// What the device knows when parsing: the disk geometry and what it advertised.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub capacity_sectors: u64,
    pub read_only: bool,
    pub flush: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Removes the first `n` bytes from `segs`, returning them (copied) if there were enough.
fn take_prefix(mem: &GuestMemory, segs: &mut Vec<Segment>, n: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let seg = segs.first_mut()?;
        // Counted in u32, the type of the guest's descriptor length.
        let take = u32::try_from(n - out.len())
            .unwrap_or(u32::MAX)
            .min(seg.len);
        let mut buf = vec![0u8; take as usize];
        mem.read_slice(&mut buf, seg.addr).ok()?;
        out.extend_from_slice(&buf);
        // `take <= seg.len` and the segment was range-checked, so this cannot overflow.
        seg.addr = seg.addr.unchecked_add(u64::from(take));
        seg.len -= take;
        if seg.len == 0 {
            segs.remove(0);
        }
    }
    Some(out)
}

fn check_range(limits: &Limits, sector: u64, len: u64) -> Result<u64, ParseError> {
    let capacity = limits.capacity_sectors << SECTOR_SHIFT;
    sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|offset| offset.checked_add(len).map(|end| (offset, end)))
        .filter(|&(_, end)| end <= capacity)
        .map(|(offset, _)| offset)
        .ok_or(ParseError::OutOfRange { sector, len })
}

/// Validates a chain into a [`Request`]. On failure, returns the status byte's address when one
/// was found so the caller can still report the error.
pub fn parse(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    limits: &Limits,
) -> Result<Request, (Option<GuestAddress>, ParseError)> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut first_error = None;
    for (count, desc) in chain.enumerate() {
        if count >= MAX_CHAIN_DESCRIPTORS {
            // The status byte is the chain's last; without walking on we cannot find it.
            return Err((None, ParseError::ChainTooLong));
        }
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        let in_memory = mem.check_range(seg.addr, seg.len as usize);
        if !in_memory && first_error.is_none() {
            first_error = Some(ParseError::OutsideMemory {
                addr: seg.addr.raw_value(),
                len: seg.len,
            });
        }
        if desc.is_write_only() {
            // Keep out-of-memory writable descriptors so the status byte position is right;
            // they are never written because parsing fails.
            writable.push((seg, in_memory));
        } else {
            if !writable.is_empty() && first_error.is_none() {
                first_error = Some(ParseError::ReadableAfterWritable);
            }
            readable.push(seg);
        }
    }

    // The status is the last byte of the last non-empty writable descriptor.
    while writable.last().is_some_and(|(s, _)| s.len == 0) {
        writable.pop();
    }
    let status = match writable.last_mut() {
        Some((seg, true)) => {
            seg.len -= 1;
            seg.addr.checked_add(u64::from(seg.len))
        }
        _ => None,
    };
    let Some(status) = status else {
        return Err((None, first_error.unwrap_or(ParseError::NoStatus)));
    };
    if let Some(e) = first_error {
        return Err((Some(status), e));
    }
    let fail = |e| Err((Some(status), e));
    let writable: Vec<Segment> = writable
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| s.len > 0)
        .collect();
    readable.retain(|s| s.len > 0);

    let Some(header) = take_prefix(mem, &mut readable, HEADER_LEN) else {
        return fail(ParseError::ShortHeader);
    };
    let header = match RequestHeader::from_slice(&header) {
        Some(h) => *h,
        None => return fail(ParseError::ShortHeader),
    };
    let request_type = RequestType::from(u32::from_le(header.request_type));
    let sector = u64::from_le(header.sector);

    let mut request = Request {
        request_type,
        offset: 0,
        data: Vec::new(),
        ranges: Vec::new(),
        status,
    };
    match request_type {
        RequestType::In | RequestType::Out => {
            let (data, other) = if request_type == RequestType::In {
                (writable, readable)
            } else {
                if limits.read_only {
                    return fail(ParseError::ReadOnly);
                }
                (readable, writable)
            };
            if !other.is_empty() {
                return fail(ParseError::WrongDirection);
            }
            let len = total_len(&data);
            if len & (SECTOR_SIZE - 1) != 0 {
                return fail(ParseError::UnalignedLength(len));
            }
            request.offset = match check_range(limits, sector, len) {
                Ok(offset) => offset,
                Err(e) => return fail(e),
            };
            request.data = data;
        }
        RequestType::Flush => {
            if !limits.flush {
                return fail(ParseError::Unsupported(request_type));
            }
        }
        RequestType::GetId => {
            if !readable.is_empty() {
                return fail(ParseError::WrongDirection);
            }
            request.data = writable;
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            let advertised = if request_type == RequestType::Discard {
                limits.discard
            } else {
                limits.write_zeroes
            };
            if !advertised || limits.read_only {
                return fail(ParseError::Unsupported(request_type));
            }
            if !writable.is_empty() {
                return fail(ParseError::WrongDirection);
            }
            let len = total_len(&readable);
            let count = len / DISCARD_SEGMENT_LEN as u64;
            if len == 0
                || len & (DISCARD_SEGMENT_LEN as u64 - 1) != 0
                || count > u64::from(MAX_DISCARD_SEGMENTS)
            {
                return fail(ParseError::BadDiscardPayload(len));
            }
            for _ in 0..count {
                let Some(raw) = take_prefix(mem, &mut readable, DISCARD_SEGMENT_LEN) else {
                    return fail(ParseError::MemoryRead);
                };
                let Some(seg) = DiscardSegment::from_slice(&raw).copied() else {
                    return fail(ParseError::MemoryRead);
                };
                let flags = u32::from_le(seg.flags);
                let num_sectors = u32::from_le(seg.num_sectors);
                let allowed_flags = if request_type == RequestType::WriteZeroes {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                } else {
                    0
                };
                if flags & !allowed_flags != 0 {
                    return fail(ParseError::BadDiscardFlags(flags));
                }
                if num_sectors > MAX_DISCARD_SECTORS {
                    return fail(ParseError::BadDiscardPayload(u64::from(num_sectors)));
                }
                let len = u64::from(num_sectors) << SECTOR_SHIFT;
                let offset = match check_range(limits, u64::from_le(seg.sector), len) {
                    Ok(offset) => offset,
                    Err(e) => return fail(e),
                };
                request.ranges.push(Range {
                    offset,
                    len,
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                });
            }
        }
        RequestType::Unsupported(_) => return fail(ParseError::Unsupported(request_type)),
    }
    Ok(request)
}

/// Runs a validated request against the disk. Returns the status and the number of bytes
/// written into guest buffers (not counting the status byte).
pub fn execute(mem: &GuestMemory, request: &Request, disk: &mut Disk) -> (u8, u32) {
    let result: std::io::Result<u32> = match request.request_type {
        RequestType::In => read_into_guest(mem, request, disk),
        RequestType::Out => write_from_guest(mem, request, disk).map(|_| 0),
        RequestType::Flush => disk.file().sync_data().map(|_| 0),
        RequestType::GetId => {
            let serial = disk.serial();
            let mut written = 0u32;
            let mut rest = &serial[..];
            for seg in &request.data {
                if rest.is_empty() {
                    break;
                }
                // Counted in u32, the type of the guest's descriptor length.
                let n = u32::try_from(rest.len()).unwrap_or(u32::MAX).min(seg.len);
                if mem.write_slice(&rest[..n as usize], seg.addr).is_err() {
                    return (STATUS_IOERR, written);
                }
                rest = &rest[n as usize..];
                written += n;
            }
            Ok(written)
        }
        RequestType::Discard | RequestType::WriteZeroes => request
            .ranges
            .iter()
            .try_for_each(|r| {
                if request.request_type == RequestType::Discard || r.unmap {
                    disk.punch_hole(r.offset, r.len)
                } else {
                    disk.zero_range(r.offset, r.len)
                }
            })
            .map(|_| 0),
        RequestType::Unsupported(_) => return (STATUS_UNSUPP, 0),
    };
    match result {
        Ok(written) => (STATUS_OK, written),
        Err(e) => {
            tracing::warn!(error = %e, request = ?request.request_type, "virtio-blk I/O failed");
            (STATUS_IOERR, 0)
        }
    }
}

fn read_into_guest(mem: &GuestMemory, request: &Request, disk: &mut Disk) -> std::io::Result<u32> {
    let file = disk.file_mut();
    file.seek(SeekFrom::Start(request.offset))?;
    let mut written = 0u32;
    for seg in &request.data {
        mem.read_exact_volatile_from(seg.addr, file, seg.len as usize)
            .map_err(std::io::Error::other)?;
        // The chain's total length fits in u32 (virtio-queue stops iterating otherwise).
        written = written.saturating_add(seg.len);
    }
    Ok(written)
}

fn write_from_guest(mem: &GuestMemory, request: &Request, disk: &mut Disk) -> std::io::Result<()> {
    let file = disk.file_mut();
    file.seek(SeekFrom::Start(request.offset))?;
    for seg in &request.data {
        mem.write_all_volatile_to(seg.addr, file, seg.len as usize)
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Handles one chain end to end and returns the used length to report (0 when dropped).
pub fn handle_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    disk: &mut Disk,
) -> u32 {
    let limits = disk.limits();
    let (status_addr, status, written) = match parse(mem, chain, &limits) {
        Ok(request) => {
            let (status, written) = execute(mem, &request, disk);
            (request.status, status, written)
        }
        Err((Some(addr), e)) => {
            tracing::debug!(error = %e, "virtio-blk: refusing request");
            (addr, e.status(), 0)
        }
        Err((None, e)) => {
            tracing::debug!(error = %e, "virtio-blk: dropping request without status byte");
            return 0;
        }
    };
    if mem.write_obj(status, status_addr).is_err() {
        return 0;
    }
    written.saturating_add(1)
}

/// `VIRTIO_BLK_ID_BYTES` as a usize.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
