//! Moving bytes between virtio-console chains and the host: a tx chain to the output, host
//! input into an rx chain; each chain checked for direction and bounds first.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use super::MAX_CHUNK;
use crate::virtio::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub(super) enum ChainError {
    #[error("descriptor in the wrong direction for this queue")]
    Direction,
    #[error("buffer outside guest memory: {0}")]
    Memory(virtio_queue::Error),
    #[error("guest memory access: {0}")]
    Access(std::io::Error),
    #[error("zero-length rx buffer")]
    Empty,
}

pub(super) fn copy_out(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut Vec<u8>,
    out: &mut dyn Write,
) -> Result<(), ChainError> {
    if chain.clone().any(|d| d.is_write_only()) {
        return Err(ChainError::Direction);
    }
    let mut reader: Reader = Reader::new(mem, chain).map_err(ChainError::Memory)?;
    buf.resize(MAX_CHUNK, 0);
    loop {
        let n = reader.read(&mut buf[..]).map_err(ChainError::Access)?;
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            tracing::warn!("virtio-console: output: {e}");
        }
    }
}

#[derive(Default)]
pub(super) struct InputOutcome {
    /// Used rx buffers the driver must hear about.
    pub(super) notify: bool,
    /// The input ended.
    pub(super) eof: bool,
}

pub(super) enum InputRead {
    Data(u32),
    /// Readiness was stale (someone else drained the fd): wait for the next report.
    Nothing,
    /// End of input, or an error that will not go away.
    Eof,
}

/// Reads once from `input` into the chain.
pub(super) fn fill_in(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut Vec<u8>,
    input: &mut File,
) -> Result<InputRead, ChainError> {
    if chain.clone().any(|d| !d.is_write_only()) {
        return Err(ChainError::Direction);
    }
    let mut writer: Writer = Writer::new(mem, chain).map_err(ChainError::Memory)?;
    let cap = writer.available_bytes().min(MAX_CHUNK);
    if cap == 0 {
        return Err(ChainError::Empty);
    }
    buf.resize(cap, 0);
    let n = loop {
        match input.read(&mut buf[..cap]) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(InputRead::Nothing),
            Err(e) => {
                tracing::warn!("virtio-console: input: {e}");
                return Ok(InputRead::Eof);
            }
        }
    };
    if n == 0 {
        return Ok(InputRead::Eof);
    }
    writer.write_all(&buf[..n]).map_err(ChainError::Access)?;
    Ok(InputRead::Data(u32::try_from(n).expect("n <= MAX_CHUNK")))
}
