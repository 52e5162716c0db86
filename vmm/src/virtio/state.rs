//! The state every virtio device keeps the same way (rust-vmm's `VirtioConfig` +
//! `WithVirtioConfig`): the features it offers and the driver accepted, its queue sizes, its
//! config space, and the queues, memory and interrupt of the live session with their eventfd
//! bookkeeping. A device holds a [`VirtioState`] and implements [`WithVirtioState`]; the
//! transport's [`VirtioDevice`] comes from that, so activation, reset and the feature and config
//! accessors are written once.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueT};

use super::{
    read_config_bytes, ActivateContext, ActivateError, GuestMemory, Interrupt, InterruptKind,
    QueueEvents, VirtioDevice,
};

/// What a device serves between activation and reset.
#[derive(Debug)]
pub struct ActiveQueues {
    pub mem: GuestMemory,
    /// In queue-index order, as many as the device has.
    pub queues: Vec<Queue>,
    pub interrupt: Arc<dyn Interrupt>,
}

impl ActiveQueues {
    /// Serves every available chain of queue `index` with `handle` (which returns the used
    /// length), with guest notifications off while it works, then signals the guest if it
    /// asked to be. `name` prefixes the log lines.
    pub fn serve<F>(&mut self, name: &str, index: usize, mut handle: F)
    where
        F: FnMut(&GuestMemory, DescriptorChain<&GuestMemory>) -> u32,
    {
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        let mem = &self.mem;
        let mut used_any = false;
        loop {
            if let Err(e) = queue.disable_notification(mem) {
                tracing::warn!(error = %e, "{name}: queue unusable");
                return;
            }
            if !use_available(queue, mem, name, &mut handle, &mut used_any) {
                return;
            }
            match queue.enable_notification(mem) {
                // More chains arrived while notifications were off.
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "{name}: queue unusable");
                    break;
                }
            }
        }
        if used_any && queue.needs_notification(mem).unwrap_or(true) {
            if let Err(e) = self.interrupt.trigger(InterruptKind::Queue) {
                tracing::warn!(error = %e, "{name}: interrupt failed");
            }
        }
    }

    /// Serves every available chain of queue `index` with `handle` (which returns the used
    /// length), notifications left as they are; returns whether the driver must hear about
    /// used buffers (the caller signals, once for all its queues).
    pub fn drain<F>(&mut self, name: &str, index: usize, mut handle: F) -> bool
    where
        F: FnMut(&GuestMemory, DescriptorChain<&GuestMemory>) -> u32,
    {
        let Some(queue) = self.queues.get_mut(index) else {
            return false;
        };
        let mut used = false;
        use_available(queue, &self.mem, name, &mut handle, &mut used);
        used && queue.needs_notification(&self.mem).unwrap_or(true)
    }

    /// Fills the guest's buffers on receive queue `index` from `source` while it has something
    /// for the guest: a buffer `source` cannot use goes back used and empty, one it had nothing
    /// for after all goes back to the ring untouched (and filling stops). Returns whether the
    /// driver must hear about used buffers. `name` prefixes the log lines.
    pub fn fill_rx(&mut self, name: &str, index: usize, source: &mut impl RxSource) -> bool {
        let Some(queue) = self.queues.get_mut(index) else {
            return false;
        };
        let mem = &self.mem;
        let mut used_any = false;
        while source.has_pending() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // No buffer: the guest's next rx notify brings us back.
                break;
            };
            let head = chain.head_index();
            let Some(len) = source.fill(mem, chain) else {
                queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                break;
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!("{name}: rx add_used: {e}");
                break;
            }
            used_any = true;
        }
        used_any && queue.needs_notification(mem).unwrap_or(true)
    }

    /// Tells the driver about used buffers (the caller checked it wants to hear).
    pub fn signal_used(&self, name: &str) {
        if let Err(e) = self.interrupt.trigger(InterruptKind::Queue) {
            tracing::warn!("{name}: interrupt: {e}");
        }
    }
}

/// Hands every available chain of `queue` to `handle` and returns it used with the length
/// `handle` gives, setting `used_any` on the way; false when the ring refused a used entry.
fn use_available<F>(
    queue: &mut Queue,
    mem: &GuestMemory,
    name: &str,
    handle: &mut F,
    used_any: &mut bool,
) -> bool
where
    F: FnMut(&GuestMemory, DescriptorChain<&GuestMemory>) -> u32,
{
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let used_len = handle(mem, chain);
        if let Err(e) = queue.add_used(mem, head, used_len) {
            tracing::warn!(error = %e, "{name}: add_used failed");
            return false;
        }
        *used_any = true;
    }
    true
}

/// What a device has for the guest's receive buffers (see [`ActiveQueues::fill_rx`]).
pub trait RxSource {
    /// Whether anything waits for a guest buffer.
    fn has_pending(&self) -> bool;
    /// Writes into `chain`: `Some(used length)` (0 for a buffer it cannot use), or `None` when
    /// there was nothing to give after all.
    fn fill(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> Option<u32>;
}

#[derive(Debug)]
pub struct VirtioState {
    /// Names the device in logs and errors ("virtio-blk", ...).
    pub name: &'static str,
    /// One of [`super::device_type`].
    pub device_type: u32,
    pub avail_features: u64,
    /// A subset of `avail_features`; cleared on reset.
    pub acked_features: u64,
    /// Read-only device config space, as the driver reads it.
    pub config_space: Vec<u8>,
    pub queue_max_sizes: Vec<u16>,
    pub queue_events: QueueEvents,
    /// The live session, between activation and reset.
    pub active: Option<ActiveQueues>,
}

impl VirtioState {
    pub fn new(
        name: &'static str,
        device_type: u32,
        avail_features: u64,
        queue_max_sizes: Vec<u16>,
        config_space: Vec<u8>,
    ) -> std::io::Result<VirtioState> {
        Ok(VirtioState {
            name,
            device_type,
            avail_features,
            acked_features: 0,
            config_space,
            queue_max_sizes,
            queue_events: QueueEvents::new(name)?,
            active: None,
        })
    }

    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    /// Takes the session's queues (event_idx as negotiated) and hands their eventfds to the
    /// event loop. Refuses the wrong queue count and a second activation without a reset.
    pub fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        ctx.check_queue_count(self.queue_max_sizes.len())?;
        if self.active.is_some() {
            return Err(ActivateError::Other(format!(
                "{} is already active",
                self.name
            )));
        }
        let ActivateContext {
            mem,
            mut queues,
            queue_events,
            interrupt,
        } = ctx;
        let event_idx = self.has_feature(VIRTIO_RING_F_EVENT_IDX);
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        self.active = Some(ActiveQueues {
            mem,
            queues,
            interrupt,
        });
        self.queue_events.activate(queue_events)
    }

    /// Drops the session: queues, memory, interrupt, accepted features; the loop deregisters
    /// the queue eventfds on its next turn.
    pub fn reset(&mut self) {
        self.active = None;
        self.queue_events.reset();
        self.acked_features = 0;
    }
}

/// What a device model implements to sit behind the transport: access to its
/// [`VirtioState`], and whatever it does differently from the defaults.
pub trait WithVirtioState: Send {
    fn state(&self) -> &VirtioState;
    fn state_mut(&mut self) -> &mut VirtioState;

    /// Reads `config_space` (out-of-range bytes read as zero).
    fn read_device_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.state().config_space, offset, data);
    }

    /// Config space is read-only unless a device says otherwise.
    fn write_device_config(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The two accessors of [`WithVirtioState`] for a device whose state is its `state` field.
#[macro_export]
macro_rules! virtio_state_accessors {
    () => {
        fn state(&self) -> &$crate::virtio::VirtioState {
            &self.state
        }

        fn state_mut(&mut self) -> &mut $crate::virtio::VirtioState {
            &mut self.state
        }
    };
}

impl<T: WithVirtioState> VirtioDevice for T {
    fn device_type(&self) -> u32 {
        self.state().device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.state().queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.state().avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        let state = self.state_mut();
        state.acked_features = features & state.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.read_device_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.write_device_config(offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.state_mut().activate(ctx)
    }

    fn reset(&mut self) -> bool {
        self.state_mut().reset();
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::virtio::test_utils::{self, CountingInterrupt};

    struct Dev {
        state: VirtioState,
    }

    impl WithVirtioState for Dev {
        crate::virtio_state_accessors!();
    }

    fn dev() -> Dev {
        Dev {
            state: VirtioState::new(
                "test-dev",
                super::super::device_type::RNG,
                super::super::VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX,
                vec![16],
                vec![1, 2, 3, 4],
            )
            .unwrap(),
        }
    }

    fn ctx(mem: &GuestMemory, vq: &MockSplitQueue<GuestMemory>) -> ActivateContext {
        ActivateContext {
            mem: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            queue_events: test_utils::queue_events(1),
            interrupt: Arc::new(CountingInterrupt::default()),
        }
    }

    #[test]
    fn the_common_state_negotiates_activates_once_and_resets() {
        let mem = test_utils::memory(0x10_0000);
        let vq = MockSplitQueue::new(&mem, 16);
        let mut d = dev();
        assert_eq!(d.device_type(), super::super::device_type::RNG);
        assert_eq!(d.queue_max_sizes(), &[16]);
        // Only offered features are kept.
        d.set_acked_features(u64::MAX);
        assert_eq!(d.state.acked_features, d.avail_features());
        // Config reads past the end are zero.
        let mut buf = [0xffu8; 4];
        d.read_config(2, &mut buf);
        assert_eq!(buf, [3, 4, 0, 0]);
        d.write_config(0, &[9]);
        d.read_config(0, &mut buf);
        assert_eq!(buf[0], 1, "config space is read-only by default");

        d.activate(ctx(&mem, &vq)).unwrap();
        let active = d.state.active.as_ref().unwrap();
        assert!(active.queues[0].event_idx_enabled(), "EVENT_IDX was acked");
        let again = d.activate(ctx(&mem, &vq)).unwrap_err();
        assert_eq!(
            again.to_string(),
            "device activation: test-dev is already active"
        );

        assert!(d.reset());
        assert!(d.state.active.is_none());
        assert_eq!(d.state.acked_features, 0);
        d.activate(ctx(&mem, &vq)).unwrap();
        assert!(!d.state.active.as_ref().unwrap().queues[0].event_idx_enabled());
    }
}
