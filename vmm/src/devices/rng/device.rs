//! The virtio-rng device: one queue, no config space.

use virtio_queue::QueueT;

use super::request::fill_chain;
use super::{Error, QUEUE_SIZE};
use crate::virtio::{device_type, VirtioState, WithVirtioState, VIRTIO_F_VERSION_1};

/// The virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    pub(super) state: VirtioState,
    pub(super) buf: Vec<u8>,
}

impl Rng {
    pub fn new() -> Result<Rng, Error> {
        // No config space.
        let state = VirtioState::new(
            "virtio-rng",
            device_type::RNG,
            VIRTIO_F_VERSION_1,
            vec![QUEUE_SIZE],
            Vec::new(),
        )
        .map_err(Error::EventFd)?;
        Ok(Rng {
            state,
            buf: Vec::new(),
        })
    }

    /// Serves every available request; returns how many chains were used.
    pub(super) fn process_queue(&mut self) -> usize {
        let Some(active) = self.state.active.as_mut() else {
            return 0;
        };
        let queue = &mut active.queues[0];
        let mut used = 0;
        while let Some(chain) = queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let len = match fill_chain(&active.mem, chain, &mut self.buf) {
                Ok(len) => len,
                Err(e) => {
                    tracing::warn!("virtio-rng: dropping request: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(&active.mem, head, len) {
                tracing::warn!("virtio-rng: add_used: {e}");
                break;
            }
            used += 1;
        }
        if used > 0 && queue.needs_notification(&active.mem).unwrap_or(true) {
            active.signal_used("virtio-rng");
        }
        used
    }
}

impl WithVirtioState for Rng {
    crate::virtio_state_accessors!();
}
