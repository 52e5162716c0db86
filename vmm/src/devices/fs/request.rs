//! One virtio-fs request: a FUSE message in the device-readable part of a chain, its reply in
//! the device-writable part (virtio 1.2, 5.11.6).
//!
//! The chain and the FUSE header are checked here; fuse-backend-rs' `Server` then decodes the
//! opcode-specific body with bounded reads (its `Reader` never reads past the chain) and
//! [`super::filter::GuestFs`] checks names and the read-only policy.

use std::io::Write;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader, WriteIn};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemory as _};

use crate::virtio::GuestMemory;

/// FUSE requests carry at most `max_pages` (256) data pages plus a few argument buffers; a
/// longer chain is not one the Linux driver builds.
pub const MAX_CHAIN_DESCRIPTORS: usize = 512;
/// Largest FUSE message accepted: the server's buffer plus one page of headers.
pub const MAX_MESSAGE_LEN: u32 = MAX_BUFFER_SIZE + 0x1000;

const IN_HEADER_LEN: usize = std::mem::size_of::<InHeader>();
const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();

/// Why a chain was refused before reaching the FUSE server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain longer than {MAX_CHAIN_DESCRIPTORS}")]
    ChainTooLong,
    #[error("descriptor outside guest memory")]
    OutsideMemory,
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor chain unusable: {0}")]
    Chain(String),
    #[error("FUSE request shorter than its header")]
    ShortHeader,
    #[error("FUSE header length {len} does not fit the {readable}-byte request")]
    BadLength { len: u32, readable: usize },
    #[error("FUSE WRITE of {size} bytes in a {len}-byte request")]
    BadWriteSize { len: u32, size: u32 },
}

/// Checks the chain's shape and the FUSE header. Returns the header.
pub fn validate(
    mem: &GuestMemory,
    chain: &DescriptorChain<&GuestMemory>,
) -> Result<InHeader, RequestError> {
    let mut seen_writable = false;
    for (count, desc) in chain.clone().enumerate() {
        if count >= MAX_CHAIN_DESCRIPTORS {
            return Err(RequestError::ChainTooLong);
        }
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(RequestError::OutsideMemory);
        }
        if desc.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return Err(RequestError::ReadableAfterWritable);
        }
    }
    let mut reader = Reader::from_descriptor_chain(mem, chain.clone())
        .map_err(|e| RequestError::Chain(e.to_string()))?;
    let readable = reader.available_bytes();
    let header: InHeader = reader.read_obj().map_err(|_| RequestError::ShortHeader)?;
    if (header.len as usize) < IN_HEADER_LEN
        || header.len as usize > readable
        || header.len > MAX_MESSAGE_LEN
    {
        return Err(RequestError::BadLength {
            len: header.len,
            readable,
        });
    }
    // WRITE carries its payload inline: its `size` must be exactly what follows the WriteIn
    // (the server would otherwise write whatever shorter amount the chain holds).
    if header.opcode == Opcode::Write as u32 {
        let write: WriteIn = reader.read_obj().map_err(|_| RequestError::ShortHeader)?;
        let expected =
            (IN_HEADER_LEN + std::mem::size_of::<WriteIn>()) as u64 + u64::from(write.size);
        if u64::from(header.len) != expected {
            return Err(RequestError::BadWriteSize {
                len: header.len,
                size: write.size,
            });
        }
    }
    Ok(header)
}

/// The `unique` of a request whose header was readable (for error replies).
fn unique_of(mem: &GuestMemory, chain: &DescriptorChain<&GuestMemory>) -> u64 {
    Reader::from_descriptor_chain(mem, chain.clone())
        .ok()
        .and_then(|mut r| r.read_obj::<InHeader>().ok())
        .map_or(0, |h| h.unique)
}

/// Writes a bare error reply; returns the used length (0 if the chain has no room for it).
fn reply_error(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    unique: u64,
    errno: i32,
) -> u32 {
    let Ok(writer) = VirtioFsWriter::new(mem, chain) else {
        return 0;
    };
    let mut writer = Writer::from(writer);
    if writer.available_bytes() < OUT_HEADER_LEN {
        return 0;
    }
    let len = u32::try_from(OUT_HEADER_LEN).expect("a 16-byte header");
    let header = OutHeader {
        len,
        error: -errno,
        unique,
    };
    if writer.write_all(header.as_slice()).is_err() || writer.commit(None).is_err() {
        return 0;
    }
    len
}

/// Serves one chain and returns the used length to report (0 when dropped or when the
/// request has no reply, like FORGET).
pub fn handle_chain<F: FileSystem + Sync>(
    server: &Server<F>,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> u32 {
    let header = match validate(mem, &chain) {
        Ok(h) => h,
        Err(
            e @ (RequestError::ShortHeader
            | RequestError::BadLength { .. }
            | RequestError::BadWriteSize { .. }),
        ) => {
            tracing::debug!(error = %e, "virtio-fs: malformed FUSE request");
            let unique = match &e {
                RequestError::BadWriteSize { .. } => unique_of(mem, &chain),
                _ => 0,
            };
            return reply_error(mem, chain, unique, libc::EINVAL);
        }
        Err(e) => {
            tracing::debug!(error = %e, "virtio-fs: dropping malformed chain");
            return 0;
        }
    };
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "virtio-fs: unusable readable buffers");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "virtio-fs: unusable writable buffers");
            return 0;
        }
    };
    match server.handle_message(reader, Writer::from(writer), None, None) {
        Ok(len) => u32::try_from(len).unwrap_or(0),
        Err(e) => {
            tracing::debug!(error = %e, opcode = header.opcode, "virtio-fs: request failed");
            if header.opcode == Opcode::Forget as u32 || header.opcode == Opcode::BatchForget as u32
            {
                0
            } else {
                // Undecodable body: answer so the guest does not wait forever; this overwrites
                // any partial reply.
                reply_error(mem, chain, header.unique, libc::EINVAL)
            }
        }
    }
}
