//! virtio-rng driven through a real split queue under a real event loop.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::test_utils::{self, add_chain, run_until_idle, CountingInterrupt};
use crate::virtio::{ActivateContext, ActivateError, GuestMemory, VirtioDevice};

const MEM_SIZE: usize = 0x10_0000;

fn memory() -> GuestMemory {
    test_utils::memory(MEM_SIZE)
}

struct Harness<'a> {
    vq: MockSplitQueue<'a, GuestMemory>,
    mgr: EventManager<Arc<Mutex<Rng>>>,
    notify: EventFd,
    irq: Arc<CountingInterrupt>,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let vq = MockSplitQueue::new(mem, 16);
        let dev = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut mgr = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
        mgr.add_subscriber(dev.clone());
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(CountingInterrupt::default());
        dev.lock()
            .unwrap()
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![vq.create_queue::<Queue>().unwrap()],
                queue_events: vec![notify.try_clone().unwrap()],
                interrupt: irq.clone(),
            })
            .unwrap();
        let mut h = Harness {
            vq,
            mgr,
            notify,
            irq,
        };
        h.run();
        h
    }

    fn run(&mut self) {
        run_until_idle(&mut self.mgr, 50);
    }

    fn kick(&mut self) {
        self.notify.write(1).unwrap();
        self.run();
    }

    fn used(&self) -> Vec<(u32, u32)> {
        test_utils::used(&self.vq)
    }
}

#[test]
fn fills_writable_chain_with_random_bytes() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    // Two descriptors: the device must fill across both.
    add_chain(&h.vq, 0, &[(0x8000, 100, true), (0x9000, 200, true)]);
    h.kick();
    assert_eq!(h.used(), vec![(0, 300)]);
    assert_eq!(h.irq.count(), 1);
    let mut a = [0u8; 100];
    let mut b = [0u8; 200];
    mem.read_slice(&mut a, GuestAddress(0x8000)).unwrap();
    mem.read_slice(&mut b, GuestAddress(0x9000)).unwrap();
    // 300 zero bytes from getrandom: probability 2^-2400.
    assert!(a.iter().chain(b.iter()).any(|&x| x != 0));
}

#[test]
fn caps_request_size() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    add_chain(&h.vq, 0, &[(0x10000, 0x40000, true)]);
    h.kick();
    assert_eq!(
        h.used(),
        vec![(0, crate::virtio::test_utils::len32(MAX_BYTES_PER_REQUEST))]
    );
}

#[test]
fn hostile_chains_get_zero_length_and_do_not_stop_the_queue() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    // Readable descriptor (wrong direction).
    add_chain(&h.vq, 0, &[(0x8000, 64, false)]);
    // Address outside guest memory.
    add_chain(&h.vq, 1, &[(0xdead_0000_0000, 64, true)]);
    // Length running past the end of guest memory.
    add_chain(&h.vq, 2, &[(MEM_SIZE as u64 - 16, 4096, true)]);
    // Address + length overflowing u64.
    add_chain(&h.vq, 3, &[(u64::MAX - 8, 64, true)]);
    // A good one after them still gets served.
    add_chain(&h.vq, 4, &[(0x8000, 32, true)]);
    mem.write_slice(&[0u8; 32], GuestAddress(0x8000)).unwrap();
    h.kick();
    assert_eq!(h.used(), vec![(0, 0), (1, 0), (2, 0), (3, 0), (4, 32)]);
    let mut out = [0u8; 32];
    mem.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
    assert!(out.iter().any(|&x| x != 0));
}

#[test]
fn requests_queued_before_activation_are_served_and_reset_deregisters() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, 16);
    add_chain(&vq, 0, &[(0x8000, 16, true)]);
    let dev = Arc::new(Mutex::new(Rng::new().unwrap()));
    let mut mgr = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
    mgr.add_subscriber(dev.clone());
    let irq = Arc::new(CountingInterrupt::default());
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.lock()
        .unwrap()
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![vq.create_queue::<Queue>().unwrap()],
            queue_events: vec![notify.try_clone().unwrap()],
            interrupt: irq.clone(),
        })
        .unwrap();
    run_until_idle(&mut mgr, 50);
    assert_eq!(vq.used().idx().load(), 1);

    assert!(dev.lock().unwrap().reset());
    run_until_idle(&mut mgr, 50);
    // After reset a notify must not reach the device (its eventfd is deregistered).
    add_chain(&vq, 1, &[(0x8000, 16, true)]);
    notify.write(1).unwrap();
    assert_eq!(
        mgr.run_with_timeout(50).unwrap(),
        0,
        "stale queue eventfd still polled"
    );
    assert_eq!(vq.used().idx().load(), 1);
    assert!(dev.lock().unwrap().state.active.is_none());
}

#[test]
fn activate_rejects_wrong_queue_count() {
    let mem = memory();
    let mut dev = Rng::new().unwrap();
    let err = dev
        .activate(ActivateContext {
            mem,
            queues: vec![],
            queue_events: vec![],
            interrupt: Arc::new(CountingInterrupt::default()),
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { expected: 1, .. }));
}
