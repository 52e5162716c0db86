//! One virtio-rng request: a chain of device-writable buffers filled from getrandom(2).

use std::io::Write;

use virtio_queue::{DescriptorChain, Writer};

use super::MAX_BYTES_PER_REQUEST;
use crate::virtio::GuestMemory;

/// Why one request could not be served (the chain is then returned with used length 0).
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    #[error("request has a device-readable descriptor")]
    ReadableDescriptor,
    #[error("request buffer is not in guest memory: {0}")]
    Memory(virtio_queue::Error),
    #[error("getrandom: {0}")]
    Random(getrandom::Error),
    #[error("writing to guest memory: {0}")]
    Write(std::io::Error),
}

/// Fills one request chain with random bytes and returns the used length.
pub(super) fn fill_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut Vec<u8>,
) -> Result<u32, RequestError> {
    // The spec makes every rng buffer device-writable; a readable one is a confused or hostile
    // driver, and we refuse the whole request rather than guess.
    if chain.clone().any(|d| !d.is_write_only()) {
        return Err(RequestError::ReadableDescriptor);
    }
    let mut writer = Writer::new(mem, chain).map_err(RequestError::Memory)?;
    let len = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
    buf.resize(len, 0);
    getrandom::fill(&mut buf[..len]).map_err(RequestError::Random)?;
    writer.write_all(&buf[..len]).map_err(RequestError::Write)?;
    Ok(u32::try_from(len).expect("len <= MAX_BYTES_PER_REQUEST (64 KiB)"))
}
