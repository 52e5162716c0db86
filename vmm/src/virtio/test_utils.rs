//! Test helpers every device's tests share: an interrupt that counts, guest memory, descriptor
//! chains as a driver writes them, and the used ring as a driver reads it.

use std::sync::atomic::{AtomicUsize, Ordering};

use event_manager::{EventManager, MutEventSubscriber};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{GuestMemory, Interrupt, InterruptKind};

// virtio_bindings spells the descriptor flags as u32; the descriptor field is u16.
#[allow(clippy::cast_possible_truncation)] // 1
pub const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
#[allow(clippy::cast_possible_truncation)] // 2
pub const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// A test buffer's length as the u32 a descriptor or header holds (test buffers are small).
pub fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("test buffers are far below 4 GiB")
}

/// A descriptor index or count as the u16 a queue holds (test queues are small).
pub fn idx16(n: usize) -> u16 {
    u16::try_from(n).expect("test queues are far below 64 Ki entries")
}

/// Counts used-buffer interrupts; a config interrupt fails the test (no device sends one).
#[derive(Debug, Default)]
pub struct CountingInterrupt(pub AtomicUsize);

impl CountingInterrupt {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        assert_eq!(kind, InterruptKind::Queue);
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// `size` bytes of guest memory from address 0.
pub fn memory(size: usize) -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// One chain of (addr, len, device-writable) descriptors meant for table index `first` onwards:
/// each links to the next slot, the last has no NEXT flag.
pub fn chain(first: u16, descs: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, write))| {
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= F_NEXT;
            }
            SplitDescriptor::new(addr, len, flags, first + idx16(i) + 1).into()
        })
        .collect()
}

/// Writes [`chain`]`(first, descs)` into `vq` and publishes it.
pub fn add_chain(vq: &MockSplitQueue<GuestMemory>, first: u16, descs: &[(u64, u32, bool)]) {
    vq.add_desc_chains(&chain(first, descs), first).unwrap();
}

/// The used ring of `vq` as (head, len) pairs, oldest first.
pub fn used(vq: &MockSplitQueue<GuestMemory>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

/// `n` queue-notify eventfds.
pub fn queue_events(n: usize) -> Vec<EventFd> {
    (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect()
}

/// Clones of `events`, as the transport hands them to a device.
pub fn clones(events: &[EventFd]) -> Vec<EventFd> {
    events.iter().map(|e| e.try_clone().unwrap()).collect()
}

/// Runs `mgr` until a turn of `timeout_ms` passes without events.
pub fn run_until_idle<T: MutEventSubscriber>(mgr: &mut EventManager<T>, timeout_ms: i32) {
    while mgr.run_with_timeout(timeout_ms).unwrap() > 0 {}
}
